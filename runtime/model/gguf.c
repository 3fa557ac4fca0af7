/* GGUF v2/v3 reader: every count, length and offset is checked against the
 * file size before it is used, so a truncated or hostile file gives an error
 * naming what is wrong, never a read outside the bytes. */
#include "model/gguf.h"

#include <errno.h>
#include <float.h>
#include <stdlib.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- ggml tensor types ------------------------------------------------------ */

typedef struct ggml_type_info {
    const char *name;
    int64_t block_values;
    size_t block_bytes;
} ggml_type_info;

/* Ids of the GGUF specification; holes are ids that were removed from ggml. */
static const ggml_type_info ggml_types[] = {
    [0] = {"f32", 1, 4},         [1] = {"f16", 1, 2},          [2] = {"q4_0", 32, 18},
    [3] = {"q4_1", 32, 20},      [6] = {"q5_0", 32, 22},       [7] = {"q5_1", 32, 24},
    [8] = {"q8_0", 32, 34},      [9] = {"q8_1", 32, 36},       [10] = {"q2_K", 256, 84},
    [11] = {"q3_K", 256, 110},   [12] = {"q4_K", 256, 144},    [13] = {"q5_K", 256, 176},
    [14] = {"q6_K", 256, 210},   [15] = {"q8_K", 256, 292},    [16] = {"iq2_xxs", 256, 66},
    [17] = {"iq2_xs", 256, 74},  [18] = {"iq3_xxs", 256, 98},  [19] = {"iq1_s", 256, 50},
    [20] = {"iq4_nl", 32, 18},   [21] = {"iq3_s", 256, 110},   [22] = {"iq2_s", 256, 82},
    [23] = {"iq4_xs", 256, 136}, [24] = {"i8", 1, 1},          [25] = {"i16", 1, 2},
    [26] = {"i32", 1, 4},        [27] = {"i64", 1, 8},         [28] = {"f64", 1, 8},
    [29] = {"iq1_m", 256, 56},   [30] = {"bf16", 1, 2},        [34] = {"tq1_0", 256, 54},
    [35] = {"tq2_0", 256, 66},   [39] = {"mxfp4", 32, 17},
};

const char *kvrt_ggml_type_name(uint32_t type)
{
    return type < KVRT_ARRAY_LEN(ggml_types) ? ggml_types[type].name : NULL;
}

bool kvrt_ggml_type_layout(uint32_t type, int64_t *block_values, size_t *block_bytes)
{
    if (!kvrt_ggml_type_name(type))
        return false;
    *block_values = ggml_types[type].block_values;
    *block_bytes = ggml_types[type].block_bytes;
    return true;
}

uint64_t kvrt_gguf_tensor_nbytes(uint32_t type, uint32_t n_dims, const int64_t *ne)
{
    int64_t bv;
    size_t bb;
    if (!kvrt_ggml_type_layout(type, &bv, &bb) || n_dims > KVRT_GGUF_MAX_DIMS)
        return 0;
    int64_t count = 1;
    for (uint32_t i = 0; i < n_dims; i++)
        if (!kvrt_mul_i64(count, ne[i], &count))
            return 0;
    if (n_dims > 0 && ne[0] % bv != 0)
        return 0;
    int64_t bytes;
    if (!kvrt_mul_i64(count / bv, (int64_t)bb, &bytes))
        return 0;
    return (uint64_t)bytes;
}

/* ---- metadata types ------------------------------------------------------------ */

size_t kvrt_gguf_type_size(kvrt_gguf_type t)
{
    switch (t) {
    case KVRT_GGUF_U8:
    case KVRT_GGUF_I8:
    case KVRT_GGUF_BOOL: return 1;
    case KVRT_GGUF_U16:
    case KVRT_GGUF_I16: return 2;
    case KVRT_GGUF_U32:
    case KVRT_GGUF_I32:
    case KVRT_GGUF_F32: return 4;
    case KVRT_GGUF_U64:
    case KVRT_GGUF_I64:
    case KVRT_GGUF_F64: return 8;
    default: return 0;
    }
}

const char *kvrt_gguf_type_name(kvrt_gguf_type t)
{
    static const char *const names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < KVRT_ARRAY_LEN(names) ? names[t] : "?";
}

/* ---- the cursor: bounds-checked reads ------------------------------------------ */

typedef struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
    kvrt_error *err;
} cursor;

static kvrt_status need(cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL,
                         "GGUF truncated: %s needs %llu bytes at offset %zu, file has %zu", what,
                         (unsigned long long)n, c->pos, c->size);
    return KVRT_OK;
}

static kvrt_status read_bytes(cursor *c, void *dst, size_t n, const char *what)
{
    KVRT_TRY(need(c, n, what));
    memcpy(dst, c->base + c->pos, n);
    c->pos += n;
    return KVRT_OK;
}

static kvrt_status read_u32(cursor *c, uint32_t *v, const char *what)
{
    return read_bytes(c, v, sizeof(*v), what);
}

static kvrt_status read_u64(cursor *c, uint64_t *v, const char *what)
{
    return read_bytes(c, v, sizeof(*v), what);
}

static kvrt_status read_str(cursor *c, kvrt_gguf_str *s, const char *what)
{
    KVRT_TRY(read_u64(c, &s->len, what));
    KVRT_TRY(need(c, s->len, what));
    s->ptr = (const char *)c->base + c->pos;
    c->pos += (size_t)s->len;
    return KVRT_OK;
}

static kvrt_status read_name(cursor *c, kvrt_gguf_str *s, const char *what)
{
    size_t at = c->pos;
    KVRT_TRY(read_str(c, s, what));
    if (s->len == 0 || s->len > KVRT_GGUF_MAX_NAME)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF %s at offset %zu has length %llu (1..%d allowed)", what,
                         at, (unsigned long long)s->len, KVRT_GGUF_MAX_NAME);
    return KVRT_OK;
}

/* ---- key/values ------------------------------------------------------------------ */

static kvrt_status read_strings(kvrt_gguf *g, cursor *c, kvrt_gguf_kv *kv)
{
    /* Each string takes at least its 8-byte length, so this bounds n before allocating. */
    if (kv->n > (c->size - c->pos) / 8)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF key '%.*s': %llu strings cannot fit in the file",
                         (int)kv->key.len, kv->key.ptr, (unsigned long long)kv->n);
    kv->strs = kvrt_calloc(g->alloc, kv->n ? kv->n : 1, sizeof(*kv->strs));
    if (!kv->strs)
        return kvrt_fail(c->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF key '%.*s': no memory for %llu strings",
                         (int)kv->key.len, kv->key.ptr, (unsigned long long)kv->n);
    for (uint64_t i = 0; i < kv->n; i++) {
        if (read_str(c, &kv->strs[i], "string value") != KVRT_OK)
            return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF key '%.*s': string %llu truncated at offset %zu",
                             (int)kv->key.len, kv->key.ptr, (unsigned long long)i, c->pos);
    }
    return KVRT_OK;
}

static kvrt_status read_value(kvrt_gguf *g, cursor *c, kvrt_gguf_kv *kv)
{
    kvrt_gguf_type t = kv->type == KVRT_GGUF_ARRAY ? kv->arr_type : kv->type;
    if (t == KVRT_GGUF_STRING)
        return read_strings(g, c, kv);
    size_t es = kvrt_gguf_type_size(t);
    uint64_t bytes;
    if (!kvrt_mul_size(es, kv->n, &bytes) || bytes > c->size - c->pos)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL,
                         "GGUF key '%.*s': %llu values of type %s at offset %zu run past the end of the file (%zu bytes)",
                         (int)kv->key.len, kv->key.ptr, (unsigned long long)kv->n, kvrt_gguf_type_name(t), c->pos,
                         c->size);
    kv->data = c->base + c->pos;
    c->pos += (size_t)bytes;
    return KVRT_OK;
}

static kvrt_status read_kv(kvrt_gguf *g, cursor *c, kvrt_gguf_kv *kv, uint64_t index)
{
    char what[64];
    snprintf(what, sizeof(what), "key %llu", (unsigned long long)index);
    KVRT_TRY(read_name(c, &kv->key, what));
    uint32_t t;
    if (read_u32(c, &t, "value type") != KVRT_OK)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF key '%.*s': value type truncated at offset %zu",
                         (int)kv->key.len, kv->key.ptr, c->pos);
    if (t >= KVRT_GGUF_TYPE_COUNT)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF key '%.*s': unknown value type %u", (int)kv->key.len,
                         kv->key.ptr, t);
    kv->type = (kvrt_gguf_type)t;
    kv->n = 1;
    if (kv->type == KVRT_GGUF_ARRAY) {
        uint32_t et;
        if (read_u32(c, &et, "array type") != KVRT_OK || read_u64(c, &kv->n, "array length") != KVRT_OK)
            return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF key '%.*s': array header truncated at offset %zu",
                             (int)kv->key.len, kv->key.ptr, c->pos);
        if (et >= KVRT_GGUF_TYPE_COUNT || et == KVRT_GGUF_ARRAY)
            return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF key '%.*s': unsupported array element type %u",
                             (int)kv->key.len, kv->key.ptr, et);
        kv->arr_type = (kvrt_gguf_type)et;
    }
    return read_value(g, c, kv);
}

/* ---- tensor infos ---------------------------------------------------------------- */

static kvrt_status read_tensor_info(cursor *c, kvrt_gguf_tensor *t, uint64_t index)
{
    char what[64];
    snprintf(what, sizeof(what), "tensor name %llu", (unsigned long long)index);
    KVRT_TRY(read_name(c, &t->name, what));
    int nl = (int)t->name.len;
    const char *nm = t->name.ptr;
    if (read_u32(c, &t->n_dims, "n_dims") != KVRT_OK)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF tensor '%.*s': n_dims truncated", nl, nm);
    if (t->n_dims == 0 || t->n_dims > KVRT_GGUF_MAX_DIMS)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF tensor '%.*s': %u dimensions (1..%d allowed)", nl, nm,
                         t->n_dims, KVRT_GGUF_MAX_DIMS);
    int64_t count = 1;
    for (uint32_t d = 0; d < KVRT_GGUF_MAX_DIMS; d++) {
        uint64_t v = 1;
        if (d < t->n_dims && read_u64(c, &v, "dimension") != KVRT_OK)
            return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF tensor '%.*s': dimensions truncated", nl, nm);
        if (v > (uint64_t)INT64_MAX || !kvrt_mul_i64(count, (int64_t)v, &count))
            return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL,
                             "GGUF tensor '%.*s': dimension %u = %llu makes the element count overflow", nl, nm, d,
                             (unsigned long long)v);
        t->ne[d] = (int64_t)v;
    }
    if (read_u32(c, &t->type, "type") != KVRT_OK || read_u64(c, &t->offset, "offset") != KVRT_OK)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF tensor '%.*s': type/offset truncated", nl, nm);
    int64_t bv;
    size_t bb;
    if (!kvrt_ggml_type_layout(t->type, &bv, &bb))
        return kvrt_fail(c->err, KVRT_ERR_UNSUPPORTED, "GGUF tensor '%.*s': unknown tensor type id %u", nl, nm,
                         t->type);
    if (t->ne[0] % bv != 0)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL,
                         "GGUF tensor '%.*s': row length %lld is not a multiple of the %s block (%lld)", nl, nm,
                         (long long)t->ne[0], kvrt_ggml_type_name(t->type), (long long)bv);
    t->nbytes = kvrt_gguf_tensor_nbytes(t->type, t->n_dims, t->ne);
    if (t->nbytes == 0 && count != 0)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF tensor '%.*s': byte size overflows", nl, nm);
    return KVRT_OK;
}

/* Places every tensor inside the data section and checks it fits the file. */
static kvrt_status place_tensors(kvrt_gguf *g, kvrt_error *err)
{
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        kvrt_gguf_tensor *t = &g->tensors[i];
        int nl = (int)t->name.len;
        if (t->offset % g->alignment != 0)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF tensor '%.*s': offset %llu is not a multiple of the alignment %llu",
                             nl, t->name.ptr, (unsigned long long)t->offset, (unsigned long long)g->alignment);
        uint64_t start, end;
        if (__builtin_add_overflow(g->data_offset, t->offset, &start) ||
            __builtin_add_overflow(start, t->nbytes, &end) || end > g->size)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL,
                             "GGUF tensor '%.*s': data at offset %llu + %llu bytes lies outside the file (%zu bytes, data section at %llu)",
                             nl, t->name.ptr, (unsigned long long)t->offset, (unsigned long long)t->nbytes, g->size,
                             (unsigned long long)g->data_offset);
        t->data = g->base + start;
    }
    return KVRT_OK;
}

static int str_cmp(const void *pa, const void *pb)
{
    const kvrt_gguf_str *a = *(const kvrt_gguf_str *const *)pa, *b = *(const kvrt_gguf_str *const *)pb;
    int c = memcmp(a->ptr, b->ptr, (size_t)KVRT_MIN(a->len, b->len));
    return c ? c : (a->len < b->len ? -1 : a->len > b->len);
}

/* Duplicates would make lookups ambiguous. Sorted, so a hostile file with
 * many names cannot make this quadratic. `stride` steps over the records. */
static kvrt_status check_unique(const kvrt_gguf *g, const void *first, size_t stride, uint64_t n, const char *what,
                                const kvrt_gguf_str ***sorted, kvrt_error *err)
{
    const kvrt_gguf_str **v = kvrt_calloc(g->alloc, n ? n : 1, sizeof(*v));
    if (!v)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF: no memory to check %s names", what);
    for (uint64_t i = 0; i < n; i++)
        v[i] = (const kvrt_gguf_str *)((const uint8_t *)first + i * stride);
    qsort(v, n, sizeof(*v), str_cmp);
    kvrt_status s = KVRT_OK;
    for (uint64_t i = 1; i < n && s == KVRT_OK; i++)
        if (str_cmp(&v[i - 1], &v[i]) == 0)
            s = kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF %s '%.*s' appears twice", what, (int)v[i]->len, v[i]->ptr);
    if (sorted && s == KVRT_OK)
        *sorted = v;
    else
        kvrt_free(g->alloc, v);
    return s;
}

/* Keeps the sorted tensor names for lookups by name (binary search). */
static kvrt_status check_duplicates(kvrt_gguf *g, kvrt_error *err)
{
    KVRT_TRY(check_unique(g, &g->kv[0].key, sizeof(g->kv[0]), g->n_kv, "key", NULL, err));
    return check_unique(g, &g->tensors[0].name, sizeof(g->tensors[0]), g->n_tensors, "tensor", &g->tensor_index,
                        err);
}

static kvrt_status read_alignment(kvrt_gguf *g, kvrt_error *err)
{
    g->alignment = KVRT_GGUF_DEFAULT_ALIGNMENT;
    const kvrt_gguf_kv *kv = kvrt_gguf_find_kv(g, "general.alignment");
    if (!kv)
        return KVRT_OK;
    if (kv->type != KVRT_GGUF_U32)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key 'general.alignment' has type %s, expected u32",
                         kvrt_gguf_type_name(kv->type));
    uint64_t a = kvrt_gguf_kv_uint(kv, 0);
    if (a == 0 || (a & (a - 1)) != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF general.alignment %llu is not a power of two",
                         (unsigned long long)a);
    g->alignment = a;
    return KVRT_OK;
}

static kvrt_status read_header(kvrt_gguf *g, cursor *c)
{
    char magic[4];
    if (c->size < 4 + 4 + 8 + 8)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF file too small (%zu bytes) for a header", c->size);
    KVRT_TRY(read_bytes(c, magic, 4, "magic"));
    if (memcmp(magic, KVRT_GGUF_MAGIC, 4) != 0)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "not a GGUF file (magic %02x %02x %02x %02x)",
                         (uint8_t)magic[0], (uint8_t)magic[1], (uint8_t)magic[2], (uint8_t)magic[3]);
    KVRT_TRY(read_u32(c, &g->version, "version"));
    if (g->version != 2 && g->version != 3)
        return kvrt_fail(c->err, KVRT_ERR_UNSUPPORTED, "GGUF version %u is not supported (2 and 3 are%s)",
                         g->version, g->version > 0xffff ? "; a big-endian file?" : "");
    KVRT_TRY(read_u64(c, &g->n_tensors, "tensor count"));
    KVRT_TRY(read_u64(c, &g->n_kv, "key count"));
    /* Smallest key/value is 8+1+4+1 bytes and smallest tensor info 8+1+4+8+4+8:
     * counts beyond that cannot be honest, so reject before allocating. */
    size_t left = c->size - c->pos;
    if (g->n_kv > left / 14 || g->n_tensors > left / 33)
        return kvrt_fail(c->err, KVRT_ERR_BAD_MODEL, "GGUF counts (%llu keys, %llu tensors) cannot fit in %zu bytes",
                         (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors, c->size);
    return KVRT_OK;
}

static kvrt_status parse(kvrt_gguf *g, kvrt_error *err)
{
    cursor c = {g->base, g->size, 0, err};
    KVRT_TRY(read_header(g, &c));
    g->kv = kvrt_calloc(g->alloc, g->n_kv ? g->n_kv : 1, sizeof(*g->kv));
    g->tensors = kvrt_calloc(g->alloc, g->n_tensors ? g->n_tensors : 1, sizeof(*g->tensors));
    if (!g->kv || !g->tensors)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF: no memory for %llu keys and %llu tensors",
                         (unsigned long long)g->n_kv, (unsigned long long)g->n_tensors);
    for (uint64_t i = 0; i < g->n_kv; i++)
        KVRT_TRY(read_kv(g, &c, &g->kv[i], i));
    for (uint64_t i = 0; i < g->n_tensors; i++)
        KVRT_TRY(read_tensor_info(&c, &g->tensors[i], i));
    KVRT_TRY(check_duplicates(g, err));
    KVRT_TRY(read_alignment(g, err));
    uint64_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    g->data_offset = c.pos + pad; /* cannot overflow: pos <= size and alignment <= 2^31 */
    return place_tensors(g, err);
}

/* ---- open / close ----------------------------------------------------------------- */

static kvrt_status open_common(kvrt_gguf *g, kvrt_gguf **out, kvrt_error *err)
{
    kvrt_status s = parse(g, err);
    if (s != KVRT_OK) {
        kvrt_gguf_close(g);
        return s;
    }
    *out = g;
    return KVRT_OK;
}

kvrt_status kvrt_gguf_open_memory(const void *data, size_t size, const kvrt_allocator *alloc, kvrt_gguf **out,
                                  kvrt_error *err)
{
    *out = NULL;
    if (!data && size)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "GGUF: NULL data");
    kvrt_gguf *g = kvrt_calloc(alloc, 1, sizeof(*g));
    if (!g)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF: no memory for the reader");
    g->alloc = alloc;
    g->base = data;
    g->size = size;
    return open_common(g, out, err);
}

kvrt_status kvrt_gguf_open(const char *path, const kvrt_allocator *alloc, kvrt_gguf **out, kvrt_error *err)
{
    *out = NULL;
    int fd;
    uint64_t file_size;
    KVRT_TRY(kvrt_open_regular_file(path, "GGUF file", &fd, &file_size, err));
    if (file_size > SIZE_MAX) {
        close(fd);
        return kvrt_fail(err, KVRT_ERR_IO, "'%s' is too large to map", path);
    }
    size_t size = (size_t)file_size;
    void *map = NULL;
    if (size > 0) {
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return kvrt_fail(err, KVRT_ERR_IO, "cannot map '%s' (%zu bytes): %s", path, size, strerror(e));
        }
    }
    close(fd);
    kvrt_gguf *g = kvrt_calloc(alloc, 1, sizeof(*g));
    if (!g) {
        if (map)
            munmap(map, size);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF: no memory for the reader");
    }
    g->alloc = alloc;
    g->base = map;
    g->size = size;
    g->mapping = map;
    g->mapping_size = size;
    static const uint8_t empty[1];
    if (!map)
        g->base = empty;
    return open_common(g, out, err);
}

void kvrt_gguf_take_mapping(kvrt_gguf *g, void **mapping, size_t *size)
{
    *mapping = g->mapping;
    *size = g->mapping_size;
    g->mapping = NULL;
    g->mapping_size = 0;
}

void kvrt_gguf_close(kvrt_gguf *g)
{
    if (!g)
        return;
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++)
            kvrt_free(g->alloc, g->kv[i].strs);
    kvrt_free(g->alloc, g->kv);
    kvrt_free(g->alloc, g->tensors);
    kvrt_free(g->alloc, g->tensor_index);
    if (g->mapping)
        munmap(g->mapping, g->mapping_size);
    kvrt_free(g->alloc, g);
}

/* ---- lookups ------------------------------------------------------------------------- */

bool kvrt_gguf_str_eq(kvrt_gguf_str s, const char *c)
{
    size_t n = strlen(c);
    return s.len == n && memcmp(s.ptr, c, n) == 0;
}

const kvrt_gguf_kv *kvrt_gguf_find_kv(const kvrt_gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key.ptr && kvrt_gguf_str_eq(g->kv[i].key, key))
            return &g->kv[i];
    return NULL;
}

const kvrt_gguf_tensor *kvrt_gguf_find_tensor(const kvrt_gguf *g, const char *name)
{
    if (!g->tensor_index)
        return NULL;
    kvrt_gguf_str key = {name, strlen(name)};
    const kvrt_gguf_str *kp = &key;
    const kvrt_gguf_str **hit = bsearch(&kp, g->tensor_index, g->n_tensors, sizeof(*hit), str_cmp);
    /* the name is the first member of its tensor record */
    return hit ? (const kvrt_gguf_tensor *)(const void *)*hit : NULL;
}

int64_t kvrt_gguf_kv_int(const kvrt_gguf_kv *kv, uint64_t i)
{
    kvrt_gguf_type t = kv->type == KVRT_GGUF_ARRAY ? kv->arr_type : kv->type;
    const uint8_t *p = kv->data + i * kvrt_gguf_type_size(t);
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
    } v;
    memcpy(&v, p, kvrt_gguf_type_size(t));
    switch (t) {
    case KVRT_GGUF_U8:
    case KVRT_GGUF_BOOL: return v.u8;
    case KVRT_GGUF_I8: return v.i8;
    case KVRT_GGUF_U16: return v.u16;
    case KVRT_GGUF_I16: return v.i16;
    case KVRT_GGUF_U32: return v.u32;
    case KVRT_GGUF_I32: return v.i32;
    case KVRT_GGUF_U64: return v.u64 > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v.u64;
    case KVRT_GGUF_I64: return v.i64;
    default: return 0;
    }
}

uint64_t kvrt_gguf_kv_uint(const kvrt_gguf_kv *kv, uint64_t i)
{
    kvrt_gguf_type t = kv->type == KVRT_GGUF_ARRAY ? kv->arr_type : kv->type;
    if (t == KVRT_GGUF_U64) {
        uint64_t v;
        memcpy(&v, kv->data + i * 8, 8);
        return v;
    }
    int64_t v = kvrt_gguf_kv_int(kv, i);
    return v < 0 ? 0 : (uint64_t)v;
}

double kvrt_gguf_kv_float(const kvrt_gguf_kv *kv, uint64_t i)
{
    kvrt_gguf_type t = kv->type == KVRT_GGUF_ARRAY ? kv->arr_type : kv->type;
    if (t == KVRT_GGUF_F32) {
        float f;
        memcpy(&f, kv->data + i * 4, 4);
        return f;
    }
    if (t == KVRT_GGUF_F64) {
        double d;
        memcpy(&d, kv->data + i * 8, 8);
        return d;
    }
    if (t == KVRT_GGUF_U64)
        return (double)kvrt_gguf_kv_uint(kv, i);
    return (double)kvrt_gguf_kv_int(kv, i);
}

/* ---- typed getters ---------------------------------------------------------------------- */

static bool is_int_type(kvrt_gguf_type t)
{
    return t <= KVRT_GGUF_I32 || t == KVRT_GGUF_U64 || t == KVRT_GGUF_I64;
}

static kvrt_status find_scalar(const kvrt_gguf *g, const char *key, const kvrt_gguf_kv **kv, bool *found,
                               kvrt_error *err)
{
    *kv = kvrt_gguf_find_kv(g, key);
    if (found)
        *found = *kv != NULL;
    if (!*kv)
        return found ? KVRT_OK : kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' is missing", key);
    if ((*kv)->type == KVRT_GGUF_ARRAY)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' is an array, expected a single value", key);
    return KVRT_OK;
}

kvrt_status kvrt_gguf_get_u32(const kvrt_gguf *g, const char *key, uint32_t *out, bool *found, kvrt_error *err)
{
    const kvrt_gguf_kv *kv;
    KVRT_TRY(find_scalar(g, key, &kv, found, err));
    if (!kv)
        return KVRT_OK;
    if (!is_int_type(kv->type))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' has type %s, expected an integer", key,
                         kvrt_gguf_type_name(kv->type));
    uint64_t v = kvrt_gguf_kv_uint(kv, 0);
    if (kvrt_gguf_kv_int(kv, 0) < 0 || v > UINT32_MAX)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' = %lld does not fit in u32", key,
                         (long long)kvrt_gguf_kv_int(kv, 0));
    *out = (uint32_t)v;
    return KVRT_OK;
}

kvrt_status kvrt_gguf_get_f32(const kvrt_gguf *g, const char *key, float *out, bool *found, kvrt_error *err)
{
    const kvrt_gguf_kv *kv;
    KVRT_TRY(find_scalar(g, key, &kv, found, err));
    if (!kv)
        return KVRT_OK;
    if (kv->type == KVRT_GGUF_STRING || kv->type == KVRT_GGUF_BOOL)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' has type %s, expected a number", key,
                         kvrt_gguf_type_name(kv->type));
    double d = kvrt_gguf_kv_float(kv, 0);
    if (d > FLT_MAX || d < -FLT_MAX)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' = %g does not fit in f32", key, d);
    *out = (float)d;
    return KVRT_OK;
}

kvrt_status kvrt_gguf_get_bool(const kvrt_gguf *g, const char *key, bool *out, bool *found, kvrt_error *err)
{
    const kvrt_gguf_kv *kv;
    KVRT_TRY(find_scalar(g, key, &kv, found, err));
    if (!kv)
        return KVRT_OK;
    if (kv->type != KVRT_GGUF_BOOL)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' has type %s, expected bool", key,
                         kvrt_gguf_type_name(kv->type));
    *out = kv->data[0] != 0;
    return KVRT_OK;
}

kvrt_status kvrt_gguf_get_str(const kvrt_gguf *g, const char *key, kvrt_gguf_str *out, bool *found,
                              kvrt_error *err)
{
    const kvrt_gguf_kv *kv;
    KVRT_TRY(find_scalar(g, key, &kv, found, err));
    if (!kv)
        return KVRT_OK;
    if (kv->type != KVRT_GGUF_STRING)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' has type %s, expected string", key,
                         kvrt_gguf_type_name(kv->type));
    *out = kv->strs[0];
    return KVRT_OK;
}

kvrt_status kvrt_gguf_get_arr(const kvrt_gguf *g, const char *key, kvrt_gguf_type elem, const kvrt_gguf_kv **out,
                              kvrt_error *err)
{
    const kvrt_gguf_kv *kv = kvrt_gguf_find_kv(g, key);
    *out = kv;
    if (!kv)
        return KVRT_OK;
    if (kv->type != KVRT_GGUF_ARRAY || (elem != KVRT_GGUF_TYPE_COUNT && kv->arr_type != elem))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' has type %s%s%s, expected an array of %s", key,
                         kvrt_gguf_type_name(kv->type), kv->type == KVRT_GGUF_ARRAY ? " of " : "",
                         kv->type == KVRT_GGUF_ARRAY ? kvrt_gguf_type_name(kv->arr_type) : "",
                         elem == KVRT_GGUF_TYPE_COUNT ? "anything" : kvrt_gguf_type_name(elem));
    return KVRT_OK;
}
