/* GGUF v3 writer. Metadata and tensor infos are collected in memory (they are
 * small); tensor data are streamed to the file afterwards, in the order the
 * tensors were added, so a converter never holds the whole model. */
#include "model/gguf.h"

#include <errno.h>
#include <string.h>

typedef struct wtensor {
    uint64_t offset; /* in the data section */
    uint64_t nbytes;
} wtensor;

struct kvrt_gguf_writer {
    const kvrt_allocator *alloc;
    kvrt_error err;
    uint32_t alignment;
    uint8_t *kv;   /* serialized key/values */
    size_t kv_len, kv_cap;
    uint64_t n_kv;
    uint8_t *ti;   /* serialized tensor infos */
    size_t ti_len, ti_cap;
    wtensor *tensors;
    uint64_t n_tensors, cap_tensors;
    uint64_t data_size; /* bytes of the data section so far (aligned) */
    uint64_t cur;       /* tensor being written */
    uint64_t cur_done;  /* its bytes written so far */
    bool header_written;
};

kvrt_status kvrt_gguf_writer_create(const kvrt_allocator *alloc, uint32_t alignment, kvrt_gguf_writer **out,
                                    kvrt_error *err)
{
    *out = NULL;
    if (alignment == 0)
        alignment = KVRT_GGUF_DEFAULT_ALIGNMENT;
    if ((alignment & (alignment - 1)) != 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: alignment %u is not a power of two",
                         alignment);
    kvrt_gguf_writer *w = kvrt_calloc(alloc, 1, sizeof(*w));
    if (!w)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF writer: no memory");
    w->alloc = alloc;
    w->alignment = alignment;
    *out = w;
    if (alignment != KVRT_GGUF_DEFAULT_ALIGNMENT) {
        kvrt_status s = kvrt_gguf_writer_add_u32(w, "general.alignment", alignment);
        if (s != KVRT_OK) {
            kvrt_error_copy(err, &w->err);
            kvrt_gguf_writer_destroy(w);
            *out = NULL;
            return s;
        }
    }
    return KVRT_OK;
}

void kvrt_gguf_writer_destroy(kvrt_gguf_writer *w)
{
    if (!w)
        return;
    kvrt_free(w->alloc, w->kv);
    kvrt_free(w->alloc, w->ti);
    kvrt_free(w->alloc, w->tensors);
    kvrt_free(w->alloc, w);
}

const kvrt_error *kvrt_gguf_writer_error(const kvrt_gguf_writer *w)
{
    return &w->err;
}

/* ---- growable byte buffers --------------------------------------------------- */

static kvrt_status buf_put(kvrt_gguf_writer *w, uint8_t **buf, size_t *len, size_t *cap, const void *src, size_t n)
{
    size_t need;
    if (!kvrt_add_size(*len, n, &need))
        return kvrt_fail(&w->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF writer: metadata too large");
    if (need > *cap) {
        size_t nc = *cap ? *cap : 256;
        while (nc < need)
            if (!kvrt_mul_size(nc, 2, &nc))
                return kvrt_fail(&w->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF writer: metadata too large");
        uint8_t *nb = kvrt_alloc(w->alloc, nc, 0);
        if (!nb)
            return kvrt_fail(&w->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF writer: no memory for %zu bytes", nc);
        if (*len)
            memcpy(nb, *buf, *len);
        kvrt_free(w->alloc, *buf);
        *buf = nb;
        *cap = nc;
    }
    if (n)
        memcpy(*buf + *len, src, n);
    *len = need;
    return KVRT_OK;
}

static kvrt_status kv_put(kvrt_gguf_writer *w, const void *src, size_t n)
{
    return buf_put(w, &w->kv, &w->kv_len, &w->kv_cap, src, n);
}

static kvrt_status kv_put_str(kvrt_gguf_writer *w, const char *s, size_t n)
{
    uint64_t len = n;
    KVRT_TRY(kv_put(w, &len, sizeof(len)));
    return kv_put(w, s, n);
}

/* Key and type; on failure the buffer is rolled back by the caller. */
static kvrt_status kv_begin(kvrt_gguf_writer *w, const char *key, kvrt_gguf_type type)
{
    if (w->header_written)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: key '%s' added after the header", key);
    size_t n = strlen(key);
    if (n == 0 || n > KVRT_GGUF_MAX_NAME)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: bad key name length %zu", n);
    KVRT_TRY(kv_put_str(w, key, n));
    uint32_t t = (uint32_t)type;
    return kv_put(w, &t, sizeof(t));
}

static kvrt_status kv_end(kvrt_gguf_writer *w, size_t mark, kvrt_status s)
{
    if (s == KVRT_OK)
        w->n_kv++;
    else
        w->kv_len = mark;
    return s;
}

/* ---- key/values ------------------------------------------------------------------ */

kvrt_status kvrt_gguf_writer_add_scalar(kvrt_gguf_writer *w, const char *key, kvrt_gguf_type type,
                                        const void *value)
{
    size_t es = kvrt_gguf_type_size(type);
    if (es == 0)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: key '%s': %s is not a scalar type", key,
                         kvrt_gguf_type_name(type));
    size_t mark = w->kv_len;
    kvrt_status s = kv_begin(w, key, type);
    if (s == KVRT_OK)
        s = kv_put(w, value, es);
    return kv_end(w, mark, s);
}

kvrt_status kvrt_gguf_writer_add_u32(kvrt_gguf_writer *w, const char *key, uint32_t v)
{
    return kvrt_gguf_writer_add_scalar(w, key, KVRT_GGUF_U32, &v);
}

kvrt_status kvrt_gguf_writer_add_f32(kvrt_gguf_writer *w, const char *key, float v)
{
    return kvrt_gguf_writer_add_scalar(w, key, KVRT_GGUF_F32, &v);
}

kvrt_status kvrt_gguf_writer_add_bool(kvrt_gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return kvrt_gguf_writer_add_scalar(w, key, KVRT_GGUF_BOOL, &b);
}

kvrt_status kvrt_gguf_writer_add_string(kvrt_gguf_writer *w, const char *key, const char *str)
{
    size_t mark = w->kv_len;
    kvrt_status s = kv_begin(w, key, KVRT_GGUF_STRING);
    if (s == KVRT_OK)
        s = kv_put_str(w, str, strlen(str));
    return kv_end(w, mark, s);
}

static kvrt_status array_header(kvrt_gguf_writer *w, const char *key, kvrt_gguf_type elem, uint64_t n)
{
    KVRT_TRY(kv_begin(w, key, KVRT_GGUF_ARRAY));
    uint32_t et = (uint32_t)elem;
    KVRT_TRY(kv_put(w, &et, sizeof(et)));
    return kv_put(w, &n, sizeof(n));
}

kvrt_status kvrt_gguf_writer_add_array(kvrt_gguf_writer *w, const char *key, kvrt_gguf_type elem,
                                       const void *values, uint64_t n)
{
    size_t es = kvrt_gguf_type_size(elem), bytes;
    if (es == 0)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: key '%s': arrays of %s need add_string_array",
                         key, kvrt_gguf_type_name(elem));
    if (n > SIZE_MAX || !kvrt_mul_size(es, (size_t)n, &bytes))
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: key '%s': array too large", key);
    size_t mark = w->kv_len;
    kvrt_status s = array_header(w, key, elem, n);
    if (s == KVRT_OK)
        s = kv_put(w, values, bytes);
    return kv_end(w, mark, s);
}

kvrt_status kvrt_gguf_writer_add_string_array(kvrt_gguf_writer *w, const char *key, const char *const *strs,
                                              const int32_t *lens, uint64_t n)
{
    size_t mark = w->kv_len;
    kvrt_status s = array_header(w, key, KVRT_GGUF_STRING, n);
    for (uint64_t i = 0; i < n && s == KVRT_OK; i++)
        s = kv_put_str(w, strs[i], lens && lens[i] >= 0 ? (size_t)lens[i] : strlen(strs[i]));
    return kv_end(w, mark, s);
}

kvrt_status kvrt_gguf_writer_copy_kv(kvrt_gguf_writer *w, const char *key, const kvrt_gguf_kv *kv)
{
    size_t mark = w->kv_len;
    kvrt_status s;
    if (kv->type != KVRT_GGUF_ARRAY) {
        s = kv_begin(w, key, kv->type);
        if (s == KVRT_OK)
            s = kv->type == KVRT_GGUF_STRING ? kv_put_str(w, kv->strs[0].ptr, (size_t)kv->strs[0].len)
                                             : kv_put(w, kv->data, kvrt_gguf_type_size(kv->type));
        return kv_end(w, mark, s);
    }
    s = array_header(w, key, kv->arr_type, kv->n);
    if (kv->arr_type == KVRT_GGUF_STRING) {
        for (uint64_t i = 0; i < kv->n && s == KVRT_OK; i++)
            s = kv_put_str(w, kv->strs[i].ptr, (size_t)kv->strs[i].len);
    } else if (s == KVRT_OK) {
        /* the reader checked n * size against the file size */
        s = kv_put(w, kv->data, (size_t)kv->n * kvrt_gguf_type_size(kv->arr_type));
    }
    return kv_end(w, mark, s);
}

kvrt_status kvrt_gguf_writer_add_packed_strings(kvrt_gguf_writer *w, const char *key, const char *text,
                                                const uint32_t *offsets, uint64_t n)
{
    size_t mark = w->kv_len;
    kvrt_status s = array_header(w, key, KVRT_GGUF_STRING, n);
    for (uint64_t i = 0; i < n && s == KVRT_OK; i++)
        s = kv_put_str(w, text + offsets[i], (size_t)(offsets[i + 1] - offsets[i]));
    return kv_end(w, mark, s);
}

/* ---- tensors ----------------------------------------------------------------------- */

static uint64_t align_up(uint64_t v, uint64_t a)
{
    return (v + a - 1) / a * a;
}

kvrt_status kvrt_gguf_writer_add_tensor(kvrt_gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                                        const int64_t *ne)
{
    if (w->header_written)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: tensor '%s' added after the header", name);
    size_t nl = strlen(name);
    if (nl == 0 || nl > KVRT_GGUF_MAX_NAME || n_dims == 0 || n_dims > KVRT_GGUF_MAX_DIMS)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: tensor '%s': bad name or %u dims", name,
                         n_dims);
    uint64_t nbytes = kvrt_gguf_tensor_nbytes(type, n_dims, ne);
    if (nbytes == 0)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT,
                         "GGUF writer: tensor '%s': type %u and shape give no valid size", name, type);
    if (w->n_tensors == w->cap_tensors) {
        uint64_t nc = w->cap_tensors ? w->cap_tensors * 2 : 64;
        wtensor *nt = kvrt_calloc(w->alloc, nc, sizeof(*nt));
        if (!nt)
            return kvrt_fail(&w->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "GGUF writer: no memory for tensor infos");
        if (w->n_tensors)
            memcpy(nt, w->tensors, w->n_tensors * sizeof(*nt));
        kvrt_free(w->alloc, w->tensors);
        w->tensors = nt;
        w->cap_tensors = nc;
    }
    size_t mark = w->ti_len;
    uint64_t len = nl, offset = w->data_size;
    kvrt_status s = buf_put(w, &w->ti, &w->ti_len, &w->ti_cap, &len, sizeof(len));
    if (s == KVRT_OK)
        s = buf_put(w, &w->ti, &w->ti_len, &w->ti_cap, name, nl);
    if (s == KVRT_OK)
        s = buf_put(w, &w->ti, &w->ti_len, &w->ti_cap, &n_dims, sizeof(n_dims));
    for (uint32_t d = 0; d < n_dims && s == KVRT_OK; d++)
        s = buf_put(w, &w->ti, &w->ti_len, &w->ti_cap, &ne[d], sizeof(ne[d]));
    if (s == KVRT_OK)
        s = buf_put(w, &w->ti, &w->ti_len, &w->ti_cap, &type, sizeof(type));
    if (s == KVRT_OK)
        s = buf_put(w, &w->ti, &w->ti_len, &w->ti_cap, &offset, sizeof(offset));
    if (s != KVRT_OK) {
        w->ti_len = mark;
        return s;
    }
    w->tensors[w->n_tensors++] = (wtensor){offset, nbytes};
    w->data_size = align_up(offset + nbytes, w->alignment);
    return KVRT_OK;
}

/* ---- output ---------------------------------------------------------------------------- */

static kvrt_status put(kvrt_gguf_writer *w, FILE *f, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, f) != n)
        return kvrt_fail(&w->err, KVRT_ERR_IO, "GGUF writer: write failed: %s", strerror(errno));
    return KVRT_OK;
}

static kvrt_status pad(kvrt_gguf_writer *w, FILE *f, uint64_t written)
{
    static const uint8_t zeros[64];
    uint64_t n = align_up(written, w->alignment) - written;
    while (n > 0) {
        size_t k = (size_t)KVRT_MIN(n, sizeof(zeros));
        KVRT_TRY(put(w, f, zeros, k));
        n -= k;
    }
    return KVRT_OK;
}

kvrt_status kvrt_gguf_writer_write_header(kvrt_gguf_writer *w, FILE *f)
{
    if (w->header_written)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: header written twice");
    uint32_t version = 3;
    KVRT_TRY(put(w, f, KVRT_GGUF_MAGIC, 4));
    KVRT_TRY(put(w, f, &version, sizeof(version)));
    KVRT_TRY(put(w, f, &w->n_tensors, sizeof(w->n_tensors)));
    KVRT_TRY(put(w, f, &w->n_kv, sizeof(w->n_kv)));
    KVRT_TRY(put(w, f, w->kv, w->kv_len));
    KVRT_TRY(put(w, f, w->ti, w->ti_len));
    /* Vocabulary-only files end with their metadata; padding only starts a data section. */
    if (w->n_tensors)
        KVRT_TRY(pad(w, f, 24 + w->kv_len + w->ti_len));
    w->header_written = true;
    return KVRT_OK;
}

kvrt_status kvrt_gguf_writer_write_data(kvrt_gguf_writer *w, FILE *f, const void *data, size_t nbytes)
{
    if (!w->header_written || w->cur >= w->n_tensors)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: tensor data written %s",
                         w->header_written ? "after the last tensor" : "before the header");
    const wtensor *t = &w->tensors[w->cur];
    if (nbytes > t->nbytes - w->cur_done)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT,
                         "GGUF writer: tensor %llu gets %zu bytes, only %llu remain", (unsigned long long)w->cur, nbytes,
                         (unsigned long long)(t->nbytes - w->cur_done));
    KVRT_TRY(put(w, f, data, nbytes));
    w->cur_done += nbytes;
    if (w->cur_done == t->nbytes) {
        KVRT_TRY(pad(w, f, t->nbytes));
        w->cur++;
        w->cur_done = 0;
    }
    return KVRT_OK;
}

kvrt_status kvrt_gguf_writer_finish(kvrt_gguf_writer *w, FILE *f)
{
    if (!w->header_written || w->cur != w->n_tensors)
        return kvrt_fail(&w->err, KVRT_ERR_INVALID_ARGUMENT, "GGUF writer: %llu of %llu tensors written",
                         (unsigned long long)w->cur, (unsigned long long)w->n_tensors);
    if (fflush(f) != 0)
        return kvrt_fail(&w->err, KVRT_ERR_IO, "GGUF writer: flush failed: %s", strerror(errno));
    return KVRT_OK;
}
