/* GGUF -> GGUF quantization (quantize.h): keys copied, tensors converted
 * chunk by chunk of rows on a thread pool, in file order. */
#include "model/quantize.h"

#include "common/quant.h"
#include "common/threadpool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define QZ_CHUNK_VALUES ((int64_t)1 << 22) /* values per chunk of rows: 16 MiB of F32 */
#define QZ_NAME_MAX 512

/* ---- the plan -------------------------------------------------------------------------- */

/* The shape the mix rules need, from the architecture's keys. */
static kvrt_status read_hparams(const kvrt_gguf *g, kvrt_llama_hparams *hp, kvrt_error *err)
{
    memset(hp, 0, sizeof(*hp));
    kvrt_gguf_str arch;
    bool found;
    KVRT_TRY(kvrt_gguf_get_str(g, "general.architecture", &arch, &found, err));
    if (!found || arch.len == 0 || arch.len > 64)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "quantize: the file has no general.architecture");
    char key[128];
    const struct {
        const char *suffix;
        int32_t *out;
        bool required;
    } keys[] = {{"block_count", &hp->n_layer, true},
                {"attention.head_count", &hp->n_head, true},
                {"attention.head_count_kv", &hp->n_head_kv, false}};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(keys); i++) {
        uint32_t v = 0;
        snprintf(key, sizeof(key), "%.*s.%s", (int)arch.len, arch.ptr, keys[i].suffix);
        KVRT_TRY(kvrt_gguf_get_u32(g, key, &v, &found, err));
        if (!found && keys[i].required)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "quantize: the file has no %s", key);
        if (v > INT32_MAX)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "quantize: %s = %u is too large", key, v);
        *keys[i].out = (int32_t)v;
    }
    if (hp->n_head_kv == 0)
        hp->n_head_kv = hp->n_head;
    return KVRT_OK;
}

/* A C string copy of a tensor name (names with a NUL byte are refused). */
static kvrt_status tensor_name(const kvrt_gguf_tensor *t, char *buf, kvrt_error *err)
{
    if (t->name.len >= QZ_NAME_MAX || memchr(t->name.ptr, '\0', (size_t)t->name.len))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "quantize: tensor name '%.*s' is too long or holds a NUL byte",
                         (int)KVRT_MIN(t->name.len, 64), t->name.ptr);
    memcpy(buf, t->name.ptr, (size_t)t->name.len);
    buf[t->name.len] = '\0';
    return KVRT_OK;
}

/* Matrices (2 dimensions or more, "*.weight") are converted; vectors,
 * biases and other tensors are copied as they are. */
static bool is_matrix(const kvrt_gguf_tensor *t, const char *name)
{
    size_t n = strlen(name);
    return t->n_dims >= 2 && t->ne[1] > 1 && n > 7 && !strcmp(name + n - 7, ".weight");
}

static bool is_plain(uint32_t type)
{
    return type == KVRT_DTYPE_F32 || type == KVRT_DTYPE_F16 || type == KVRT_DTYPE_BF16;
}

kvrt_status kvrt_quantize_plan(const kvrt_gguf *in, const kvrt_quantize_params *p, uint32_t *out_types,
                               kvrt_quantize_report *rep, kvrt_error *err)
{
    memset(rep, 0, sizeof(*rep));
    kvrt_llama_hparams hp;
    KVRT_TRY(read_hparams(in, &hp, err));
    const bool tied = kvrt_gguf_find_tensor(in, "output.weight") == NULL;
    rep->n_tensors = (int64_t)in->n_tensors;
    for (uint64_t i = 0; i < in->n_tensors; i++) {
        const kvrt_gguf_tensor *t = &in->tensors[i];
        char name[QZ_NAME_MAX];
        KVRT_TRY(tensor_name(t, name, err));
        uint32_t to = t->type;
        rep->in_bytes += t->nbytes;
        if (is_matrix(t, name)) {
            if (!kvrt_dtype_supported((kvrt_dtype)t->type))
                return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "quantize: tensor '%s' has type %s, which kvrt cannot read",
                                 name, kvrt_ggml_type_name(t->type) ? kvrt_ggml_type_name(t->type) : "?");
            kvrt_dtype want = kvrt_quant_mix_type(p->mix, &hp, name, t->ne[0], t->ne[1], tied);
            to = (uint32_t)want;
            if (want != t->type) {
                if (!is_plain(t->type) && !p->allow_requantize)
                    return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                                     "quantize: tensor '%s' is %s already; quantize the F32/F16/BF16 original, "
                                     "or allow requantizing (a second rounding)",
                                     name, kvrt_dtype_name((kvrt_dtype)t->type));
                rep->n_converted++;
                rep->n_requantized += !is_plain(t->type);
            }
            kvrt_quant_mix pure = *p->mix;
            pure.rule = KVRT_MIX_PURE;
            kvrt_dtype base = kvrt_quant_mix_type(&pure, &hp, name, t->ne[0], t->ne[1], tied);
            rep->n_fallback += base != p->mix->base;
        }
        rep->out_bytes += kvrt_gguf_tensor_nbytes(to, t->n_dims, t->ne);
        if (out_types)
            out_types[i] = to;
    }
    return KVRT_OK;
}

/* ---- conversion --------------------------------------------------------------------------- */

typedef struct qz_job {
    const uint8_t *src;      /* rows of the input tensor */
    size_t src_row, dst_row; /* bytes per row */
    uint8_t *dst;
    kvrt_dtype from, to;
    int64_t ne0, row0;       /* row length; index of the chunk's first row */
    float *scratch;          /* [n_threads][2 * ne0]: the row, its round trip */
    int64_t bad_row;         /* first row with a non-finite value, or -1 (lowest wins) */
    double *sums;            /* with stats: [n_threads][2] squared error, squared input */
} qz_job;

/* Squared error of the row's round trip and its squared values (stats). */
static void qz_measure(qz_job *j, const float *row, float *back, const uint8_t *q, int thread)
{
    kvrt_dequantize_row(j->to, q, back, j->ne0);
    double e2 = 0.0, r2 = 0.0;
    for (int64_t k = 0; k < j->ne0; k++) {
        double d = (double)back[k] - row[k];
        e2 += d * d;
        r2 += (double)row[k] * row[k];
    }
    j->sums[2 * thread] += e2;
    j->sums[2 * thread + 1] += r2;
}

static void qz_row(void *arg, int64_t r, int thread)
{
    qz_job *j = arg;
    float *row = j->scratch + (size_t)thread * 2 * (size_t)j->ne0;
    kvrt_dequantize_row(j->from, j->src + (size_t)r * j->src_row, row, j->ne0);
    for (int64_t k = 0; k < j->ne0; k++) {
        if (!isfinite(row[k])) {
            /* record the lowest such row; races only ever lower it */
            int64_t seen = __atomic_load_n(&j->bad_row, __ATOMIC_RELAXED);
            while ((seen < 0 || r < seen) &&
                   !__atomic_compare_exchange_n(&j->bad_row, &seen, r, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                ;
            return;
        }
    }
    kvrt_quantize_row(j->to, row, j->dst + (size_t)r * j->dst_row, j->ne0);
    if (j->sums)
        qz_measure(j, row, row + j->ne0, j->dst + (size_t)r * j->dst_row, thread);
}

/* Converts and writes one tensor, a chunk of rows at a time. */
static kvrt_status qz_tensor(kvrt_gguf_writer *w, FILE *f, kvrt_threadpool *pool, const kvrt_gguf_tensor *t,
                             const char *name, kvrt_dtype to, uint8_t *dst, float *scratch, double *sums,
                             kvrt_quantize_report *rep, kvrt_error *err)
{
    const int64_t ne0 = t->ne[0], rows = (int64_t)(t->nbytes / kvrt_dtype_row_bytes((kvrt_dtype)t->type, ne0));
    const int64_t chunk = KVRT_MAX(QZ_CHUNK_VALUES / ne0, 1);
    qz_job j = {.src_row = kvrt_dtype_row_bytes((kvrt_dtype)t->type, ne0),
                .dst_row = kvrt_dtype_row_bytes(to, ne0),
                .dst = dst,
                .from = (kvrt_dtype)t->type,
                .to = to,
                .ne0 = ne0,
                .scratch = scratch,
                .sums = sums};
    const int n_threads = kvrt_threadpool_size(pool);
    if (sums)
        memset(sums, 0, 2 * (size_t)n_threads * sizeof(double));
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t n = KVRT_MIN(chunk, rows - r0);
        j.src = t->data + (size_t)r0 * j.src_row;
        j.row0 = r0;
        j.bad_row = -1;
        kvrt_threadpool_run_sized(pool, n, n * ne0 * 64, qz_row, &j);
        if (j.bad_row >= 0)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "quantize: tensor '%s' row %lld holds a NaN or infinite value",
                             name, (long long)(r0 + j.bad_row));
        if (kvrt_gguf_writer_write_data(w, f, dst, (size_t)n * j.dst_row) != KVRT_OK)
            return kvrt_error_copy(err, kvrt_gguf_writer_error(w));
    }
    if (sums && (unsigned)to < KVRT_ARRAY_LEN(rep->values)) {
        rep->values[to] += rows * ne0;
        for (int k = 0; k < n_threads; k++) {
            rep->err2[to] += sums[2 * k];
            rep->ref2[to] += sums[2 * k + 1];
        }
    }
    return KVRT_OK;
}

static kvrt_status qz_header(const kvrt_gguf *in, const kvrt_quantize_params *p, const uint32_t *types,
                             kvrt_gguf_writer *w, FILE *f, kvrt_error *err)
{
    char key[KVRT_GGUF_MAX_NAME + 1];
    for (uint64_t i = 0; i < in->n_kv; i++) {
        const kvrt_gguf_kv *kv = &in->kv[i];
        if (memchr(kv->key.ptr, '\0', (size_t)kv->key.len))
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "quantize: a key name holds a NUL byte");
        memcpy(key, kv->key.ptr, (size_t)kv->key.len);
        key[kv->key.len] = '\0';
        if (!strcmp(key, "general.file_type") || !strcmp(key, "general.quantization_version") ||
            !strcmp(key, "general.alignment"))
            continue; /* written below, or by the writer */
        if (kvrt_gguf_writer_copy_kv(w, key, kv) != KVRT_OK)
            return kvrt_error_copy(err, kvrt_gguf_writer_error(w));
    }
    if (kvrt_gguf_writer_add_u32(w, "general.quantization_version", 2) != KVRT_OK ||
        kvrt_gguf_writer_add_u32(w, "general.file_type", p->mix->file_type) != KVRT_OK)
        return kvrt_error_copy(err, kvrt_gguf_writer_error(w));
    for (uint64_t i = 0; i < in->n_tensors; i++) {
        const kvrt_gguf_tensor *t = &in->tensors[i];
        char name[QZ_NAME_MAX];
        KVRT_TRY(tensor_name(t, name, err));
        if (kvrt_gguf_writer_add_tensor(w, name, types[i], t->n_dims, t->ne) != KVRT_OK)
            return kvrt_error_copy(err, kvrt_gguf_writer_error(w));
    }
    if (kvrt_gguf_writer_write_header(w, f) != KVRT_OK)
        return kvrt_error_copy(err, kvrt_gguf_writer_error(w));
    return KVRT_OK;
}

/* Bytes of the largest chunk any tensor converts, and its longest row. */
static void qz_sizes(const kvrt_gguf *in, const uint32_t *types, size_t *chunk_bytes, int64_t *max_ne0)
{
    *chunk_bytes = 0;
    *max_ne0 = 1;
    for (uint64_t i = 0; i < in->n_tensors; i++) {
        const kvrt_gguf_tensor *t = &in->tensors[i];
        if (types[i] == t->type)
            continue;
        const int64_t ne0 = t->ne[0], chunk = KVRT_MAX(QZ_CHUNK_VALUES / ne0, 1);
        *chunk_bytes = KVRT_MAX(*chunk_bytes, (size_t)chunk * kvrt_dtype_row_bytes((kvrt_dtype)types[i], ne0));
        *max_ne0 = KVRT_MAX(*max_ne0, ne0);
    }
}

static kvrt_status qz_body(const kvrt_gguf *in, const kvrt_quantize_params *p, const uint32_t *types,
                           kvrt_gguf_writer *w, FILE *f, kvrt_threadpool *pool, uint8_t *dst, float *scratch,
                           double *sums, kvrt_quantize_report *rep, kvrt_error *err)
{
    for (uint64_t i = 0; i < in->n_tensors; i++) {
        const kvrt_gguf_tensor *t = &in->tensors[i];
        char name[QZ_NAME_MAX];
        KVRT_TRY(tensor_name(t, name, err));
        if (p->progress)
            p->progress(p->user, (int64_t)i, (int64_t)in->n_tensors, name, t->type, types[i]);
        if (types[i] == t->type) {
            if (kvrt_gguf_writer_write_data(w, f, t->data, (size_t)t->nbytes) != KVRT_OK)
                return kvrt_error_copy(err, kvrt_gguf_writer_error(w));
            continue;
        }
        KVRT_TRY(qz_tensor(w, f, pool, t, name, (kvrt_dtype)types[i], dst, scratch, sums, rep, err));
    }
    if (kvrt_gguf_writer_finish(w, f) != KVRT_OK)
        return kvrt_error_copy(err, kvrt_gguf_writer_error(w));
    return KVRT_OK;
}

kvrt_status kvrt_quantize_gguf(const kvrt_gguf *in, const kvrt_quantize_params *p, const kvrt_allocator *alloc,
                               FILE *out, kvrt_quantize_report *rep, kvrt_error *err)
{
    uint32_t *types = kvrt_calloc(alloc, (size_t)in->n_tensors + 1, sizeof(uint32_t));
    if (!types)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "quantize: no memory for %llu tensors",
                         (unsigned long long)in->n_tensors);
    kvrt_status s = kvrt_quantize_plan(in, p, types, rep, err);
    kvrt_threadpool *pool = NULL;
    kvrt_gguf_writer *w = NULL;
    uint8_t *dst = NULL;
    float *scratch = NULL;
    double *sums = NULL;
    if (s == KVRT_OK)
        s = kvrt_threadpool_create(alloc, p->n_threads, &pool, err);
    if (s == KVRT_OK)
        s = kvrt_gguf_writer_create(alloc, (uint32_t)in->alignment, &w, err);
    if (s == KVRT_OK) {
        size_t chunk_bytes, scratch_floats;
        int64_t max_ne0;
        qz_sizes(in, types, &chunk_bytes, &max_ne0);
        dst = kvrt_alloc(alloc, chunk_bytes + 1, 64);
        if (kvrt_mul_size((size_t)kvrt_threadpool_size(pool), 2 * (size_t)max_ne0, &scratch_floats))
            scratch = kvrt_calloc(alloc, scratch_floats, sizeof(float));
        if (p->stats)
            sums = kvrt_calloc(alloc, 2 * (size_t)kvrt_threadpool_size(pool), sizeof(double));
        if (!dst || !scratch || (p->stats && !sums))
            s = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "quantize: no memory for a chunk of %zu bytes",
                          chunk_bytes);
    }
    if (s == KVRT_OK)
        s = qz_header(in, p, types, w, out, err);
    if (s == KVRT_OK)
        s = qz_body(in, p, types, w, out, pool, dst, scratch, sums, rep, err);
    kvrt_free(alloc, sums);
    kvrt_free(alloc, scratch);
    kvrt_free(alloc, dst);
    kvrt_gguf_writer_destroy(w);
    kvrt_threadpool_destroy(pool);
    kvrt_free(alloc, types);
    return s;
}
