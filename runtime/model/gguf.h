/*
 * GGUF v2/v3 reader and v3 writer (internal; used by the model loader, the
 * tools and the tests).
 *
 * The reader parses the header, every metadata key/value and every tensor
 * info, checking each count, length, offset and size against the file size
 * with overflow-checked 64-bit arithmetic. Strings and values point into the
 * file bytes (memory-mapped, or the caller's buffer for the memory variant):
 * they are not NUL-terminated and numeric values are unaligned, so read them
 * through the accessors below.
 */
#ifndef KVRT_GGUF_H
#define KVRT_GGUF_H

#include "common/kvrt_internal.h"

#include <stdio.h>

#define KVRT_GGUF_MAGIC "GGUF"
#define KVRT_GGUF_DEFAULT_ALIGNMENT 32
#define KVRT_GGUF_MAX_DIMS 4
#define KVRT_GGUF_MAX_NAME 65535 /* longest key or tensor name we accept */

/* Metadata value types (values as in the GGUF specification). */
typedef enum kvrt_gguf_type {
    KVRT_GGUF_U8 = 0,
    KVRT_GGUF_I8 = 1,
    KVRT_GGUF_U16 = 2,
    KVRT_GGUF_I16 = 3,
    KVRT_GGUF_U32 = 4,
    KVRT_GGUF_I32 = 5,
    KVRT_GGUF_F32 = 6,
    KVRT_GGUF_BOOL = 7,
    KVRT_GGUF_STRING = 8,
    KVRT_GGUF_ARRAY = 9,
    KVRT_GGUF_U64 = 10,
    KVRT_GGUF_I64 = 11,
    KVRT_GGUF_F64 = 12,
    KVRT_GGUF_TYPE_COUNT
} kvrt_gguf_type;

/* A string inside the file: not NUL-terminated. */
typedef struct kvrt_gguf_str {
    const char *ptr;
    uint64_t len; /* <= the file size */
} kvrt_gguf_str;

typedef struct kvrt_gguf_kv {
    kvrt_gguf_str key;
    kvrt_gguf_type type;     /* KVRT_GGUF_ARRAY for arrays */
    kvrt_gguf_type arr_type; /* element type of an array */
    uint64_t n;              /* array length; 1 for scalars */
    const uint8_t *data;     /* scalar or numeric array elements, little-endian, unaligned */
    kvrt_gguf_str *strs;     /* [n] a string value or the elements of a string array */
} kvrt_gguf_kv;

typedef struct kvrt_gguf_tensor {
    kvrt_gguf_str name; /* first member: the sorted name index points at it */
    uint32_t n_dims;
    int64_t ne[KVRT_GGUF_MAX_DIMS]; /* unused dims are 1 */
    uint32_t type;                  /* ggml type id (kvrt_dtype values where kvrt runs it) */
    uint64_t offset;                /* from the start of the data section */
    uint64_t nbytes;
    const uint8_t *data;            /* inside the file bytes */
} kvrt_gguf_tensor;

typedef struct kvrt_gguf {
    const kvrt_allocator *alloc;
    const uint8_t *base; /* file bytes */
    size_t size;
    void *mapping;       /* owned mmap, or NULL for the memory variant */
    size_t mapping_size;
    uint32_t version;
    uint64_t n_kv;
    uint64_t n_tensors;
    kvrt_gguf_kv *kv;           /* [n_kv] */
    kvrt_gguf_tensor *tensors;  /* [n_tensors] */
    const kvrt_gguf_str **tensor_index; /* [n_tensors] names sorted, for lookups */
    uint64_t alignment;
    uint64_t data_offset;       /* start of the data section in the file */
} kvrt_gguf;

/* Opens and validates a GGUF file, memory-mapped. Errors: IO, BAD_MODEL
 * (naming what is wrong), UNSUPPORTED (version, tensor type id kvrt cannot
 * size), OUT_OF_HOST_MEMORY. */
kvrt_status kvrt_gguf_open(const char *path, const kvrt_allocator *alloc, kvrt_gguf **out, kvrt_error *err);
/* The same on caller bytes, which must outlive the reader. */
kvrt_status kvrt_gguf_open_memory(const void *data, size_t size, const kvrt_allocator *alloc, kvrt_gguf **out,
                                  kvrt_error *err);
void kvrt_gguf_close(kvrt_gguf *g);
/* Hands the mapping over to the caller (who munmaps it); the reader's
 * pointers stay valid until then. */
void kvrt_gguf_take_mapping(kvrt_gguf *g, void **mapping, size_t *size);

/* ---- lookups ---------------------------------------------------------------- */

const kvrt_gguf_kv *kvrt_gguf_find_kv(const kvrt_gguf *g, const char *key);
const kvrt_gguf_tensor *kvrt_gguf_find_tensor(const kvrt_gguf *g, const char *name);
bool kvrt_gguf_str_eq(kvrt_gguf_str s, const char *c);

/* Typed getters. A missing key gives KVRT_OK with *found = false (found may
 * be NULL when the caller treats absence as an error itself); a key of the wrong type or a value that does
 * not fit gives BAD_MODEL naming the key. Integer getters accept any integer
 * type whose value fits. */
kvrt_status kvrt_gguf_get_u32(const kvrt_gguf *g, const char *key, uint32_t *out, bool *found, kvrt_error *err);
kvrt_status kvrt_gguf_get_f32(const kvrt_gguf *g, const char *key, float *out, bool *found, kvrt_error *err);
kvrt_status kvrt_gguf_get_bool(const kvrt_gguf *g, const char *key, bool *out, bool *found, kvrt_error *err);
kvrt_status kvrt_gguf_get_str(const kvrt_gguf *g, const char *key, kvrt_gguf_str *out, bool *found,
                              kvrt_error *err);
/* An array of the given element type (or KVRT_GGUF_TYPE_COUNT for any). */
kvrt_status kvrt_gguf_get_arr(const kvrt_gguf *g, const char *key, kvrt_gguf_type elem, const kvrt_gguf_kv **out,
                              kvrt_error *err);

/* Element i of a numeric array or the scalar (i = 0), converted. */
int64_t kvrt_gguf_kv_int(const kvrt_gguf_kv *kv, uint64_t i); /* integers and bool; u64 clamps at INT64_MAX */
uint64_t kvrt_gguf_kv_uint(const kvrt_gguf_kv *kv, uint64_t i);
double kvrt_gguf_kv_float(const kvrt_gguf_kv *kv, uint64_t i); /* any numeric type */

/* Bytes of one value of a fixed-size type; 0 for STRING/ARRAY/invalid. */
size_t kvrt_gguf_type_size(kvrt_gguf_type t);
const char *kvrt_gguf_type_name(kvrt_gguf_type t);

/* ---- ggml tensor types -------------------------------------------------------- */

/* Name ("q4_K") of a ggml type id; NULL when the id is unknown. */
const char *kvrt_ggml_type_name(uint32_t type);
/* Values per block and bytes per block of a ggml type id; false when unknown. */
bool kvrt_ggml_type_layout(uint32_t type, int64_t *block_values, size_t *block_bytes);

/* ---- writer (GGUF v3) ----------------------------------------------------------- */

typedef struct kvrt_gguf_writer kvrt_gguf_writer;

/* alignment: 0 = 32 (general.alignment is written only when it differs). */
kvrt_status kvrt_gguf_writer_create(const kvrt_allocator *alloc, uint32_t alignment, kvrt_gguf_writer **out,
                                    kvrt_error *err);
void kvrt_gguf_writer_destroy(kvrt_gguf_writer *w);
/* Message of the last failed call. */
const kvrt_error *kvrt_gguf_writer_error(const kvrt_gguf_writer *w);

/* Scalars: `value` points at one value of the type (bool: one byte 0/1). */
kvrt_status kvrt_gguf_writer_add_scalar(kvrt_gguf_writer *w, const char *key, kvrt_gguf_type type,
                                        const void *value);
kvrt_status kvrt_gguf_writer_add_u32(kvrt_gguf_writer *w, const char *key, uint32_t v);
kvrt_status kvrt_gguf_writer_add_f32(kvrt_gguf_writer *w, const char *key, float v);
kvrt_status kvrt_gguf_writer_add_bool(kvrt_gguf_writer *w, const char *key, bool v);
kvrt_status kvrt_gguf_writer_add_string(kvrt_gguf_writer *w, const char *key, const char *s);
/* Numeric array of n values of `elem` (host little-endian layout). */
kvrt_status kvrt_gguf_writer_add_array(kvrt_gguf_writer *w, const char *key, kvrt_gguf_type elem,
                                       const void *values, uint64_t n);
/* String array; lens (bytes, >= 0) may be NULL (then strlen). */
kvrt_status kvrt_gguf_writer_add_string_array(kvrt_gguf_writer *w, const char *key, const char *const *strs,
                                              const int32_t *lens, uint64_t n);
/* A key/value as the reader holds it (any type, arrays included), under `key`. */
kvrt_status kvrt_gguf_writer_copy_kv(kvrt_gguf_writer *w, const char *key, const kvrt_gguf_kv *kv);
/* String array packed as one text: string i is text[offsets[i] .. offsets[i + 1]). */
kvrt_status kvrt_gguf_writer_add_packed_strings(kvrt_gguf_writer *w, const char *key, const char *text,
                                                const uint32_t *offsets, uint64_t n);
/* Tensor info; ne[0] is the row length. Data are written later, in this order. */
kvrt_status kvrt_gguf_writer_add_tensor(kvrt_gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                                        const int64_t *ne);
/* Writes header, metadata and tensor infos (after every add). */
kvrt_status kvrt_gguf_writer_write_header(kvrt_gguf_writer *w, FILE *f);
/* Writes the next tensor's bytes (nbytes must be its size) and its padding;
 * may be called in pieces: the tensor is complete when its size is reached. */
kvrt_status kvrt_gguf_writer_write_data(kvrt_gguf_writer *w, FILE *f, const void *data, size_t nbytes);
/* Checks that every tensor was written and flushes. */
kvrt_status kvrt_gguf_writer_finish(kvrt_gguf_writer *w, FILE *f);
/* Bytes of a tensor of this type and shape; 0 on overflow or bad shape. */
uint64_t kvrt_gguf_tensor_nbytes(uint32_t type, uint32_t n_dims, const int64_t *ne);

#endif /* KVRT_GGUF_H */
