/* The CPU model ops other than matmul: rmsnorm, RoPE, SwiGLU, add, embedding,
 * row gather, argmax; plus the argument checks and the row-parallel helper
 * they share with cpu_matmul.c. Every op checks all of its views and indices
 * before it writes anything, so a failed call leaves the outputs untouched. */
#include "cpu_ops_internal.h"

#include "common/quant.h"

#include <math.h>
#include <string.h>

#define OPS_MIN_TASK_WORK 32768 /* elements; smaller jobs run on the calling thread */
#define OPS_TASKS_PER_THREAD 4

/* ---- shared checks ---------------------------------------------------------------- */

bool kvrt_cpu_span_bytes(int64_t rows, int64_t stride, int64_t cols, size_t elem, size_t *out)
{
    *out = 0;
    if (rows < 0 || stride < 0 || cols < 0)
        return false;
    if (rows == 0)
        return true;
    int64_t last, elems;
    if (!kvrt_mul_i64(rows - 1, stride, &last) || __builtin_add_overflow(last, cols, &elems))
        return false;
    return kvrt_mul_size((size_t)elems, elem, out);
}

kvrt_status kvrt_cpu_check_array(kvrt_backend *be, kvrt_view v, size_t bytes, size_t align, const char *what)
{
    KVRT_TRY(kvrt_cpu_check_view(be, v, bytes, what));
    if ((uintptr_t)kvrt_cpu_ptr(v) % align != 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: offset %zu is not %zu-byte aligned",
                         what, v.offset, align);
    return KVRT_OK;
}

kvrt_status kvrt_cpu_check_rows(kvrt_backend *be, kvrt_view v, int64_t rows, int64_t stride, int64_t cols,
                                const char *what)
{
    if (stride < cols)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: stride %lld < row length %lld",
                         what, (long long)stride, (long long)cols);
    size_t bytes;
    if (!kvrt_cpu_span_bytes(rows, stride, cols, sizeof(float), &bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: size of %lld rows of stride %lld overflows",
                         what, (long long)rows, (long long)stride);
    return kvrt_cpu_check_array(be, v, bytes, sizeof(float), what);
}

bool kvrt_cpu_ranges_overlap(kvrt_view a, size_t a_bytes, kvrt_view b, size_t b_bytes)
{
    if (a_bytes == 0 || b_bytes == 0)
        return false;
    uintptr_t pa = (uintptr_t)kvrt_cpu_ptr(a), pb = (uintptr_t)kvrt_cpu_ptr(b);
    return pa < pb + b_bytes && pb < pa + a_bytes;
}

static size_t rows_bytes(int64_t rows, int64_t stride, int64_t cols)
{
    size_t b;
    kvrt_cpu_span_bytes(rows, stride, cols, sizeof(float), &b); /* checked by kvrt_cpu_check_rows */
    return b;
}

/* True when two F32 matrices of `rows` rows with the same stride interleave
 * without sharing an element (gate and up halves of one fused row). */
static bool rows_interleave(kvrt_view a, int64_t a_cols, kvrt_view b, int64_t b_cols, int64_t stride)
{
    intptr_t diff = (intptr_t)kvrt_cpu_ptr(b) - (intptr_t)kvrt_cpu_ptr(a);
    if (diff % (intptr_t)sizeof(float) != 0)
        return false;
    int64_t d = (int64_t)(diff / (intptr_t)sizeof(float)) % stride;
    if (d < 0)
        d += stride;
    return d >= a_cols && d + b_cols <= stride;
}

/* An output may be exactly an input (same address and stride: element-wise
 * in place), apart from it, or interleaved with it; a partial overlap would
 * read rewritten values. */
static kvrt_status check_alias(kvrt_backend *be, kvrt_view out, int64_t out_stride, kvrt_view in, int64_t in_stride,
                               int64_t rows, int64_t cols, const char *what)
{
    if (kvrt_cpu_ptr(out) == kvrt_cpu_ptr(in) && out_stride == in_stride)
        return KVRT_OK;
    if (!kvrt_cpu_ranges_overlap(out, rows_bytes(rows, out_stride, cols), in, rows_bytes(rows, in_stride, cols)))
        return KVRT_OK;
    if (out_stride == in_stride && rows_interleave(out, cols, in, cols, out_stride))
        return KVRT_OK;
    return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                     "%s: output partly overlaps an input (only exact in-place is allowed)", what);
}

/* ---- the row-parallel helper ------------------------------------------------------- */

typedef struct rows_job {
    kvrt_cpu_rows_fn fn;
    void *arg;
    int64_t n_rows, per_task;
} rows_job;

static void rows_task(void *p, int64_t task, int thread)
{
    const rows_job *j = p;
    int64_t begin = task * j->per_task;
    j->fn(j->arg, begin, KVRT_MIN(begin + j->per_task, j->n_rows));
}

void kvrt_cpu_for_rows(kvrt_backend *be, int64_t n_rows, int64_t work_per_row, kvrt_cpu_rows_fn fn, void *arg)
{
    const int n_threads = kvrt_cpu(be)->n_threads;
    const int64_t work = n_rows * KVRT_MAX(work_per_row, 1);
    if (n_threads <= 1 || n_rows < 2 || work < 2 * OPS_MIN_TASK_WORK) {
        if (n_rows > 0)
            fn(arg, 0, n_rows);
        return;
    }
    int64_t n_tasks = KVRT_MIN((int64_t)n_threads * OPS_TASKS_PER_THREAD, work / OPS_MIN_TASK_WORK);
    n_tasks = KVRT_MIN(KVRT_MAX(n_tasks, 2), n_rows);
    rows_job j = {fn, arg, n_rows, (n_rows + n_tasks - 1) / n_tasks};
    kvrt_threadpool_run(kvrt_cpu(be)->pool, (n_rows + j.per_task - 1) / j.per_task, rows_task, &j);
}

static kvrt_status check_count(kvrt_backend *be, int64_t v, int64_t min, const char *what)
{
    if (v < min)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s %lld < %lld", what, (long long)v, (long long)min);
    return KVRT_OK;
}

/* ---- rmsnorm -------------------------------------------------------------------------- */

typedef struct norm_job {
    const float *x, *w;
    float *y;
    int64_t x_stride, y_stride;
    int32_t dim;
    float eps;
} norm_job;

static void norm_rows(void *arg, int64_t begin, int64_t end)
{
    const norm_job *j = arg;
    for (int64_t t = begin; t < end; t++) {
        const float *x = j->x + t * j->x_stride;
        float *y = j->y + t * j->y_stride;
        double ss = 0.0; /* double: dim up to 1e5 squares sum without drift, cheap next to matmul */
        for (int32_t i = 0; i < j->dim; i++)
            ss += (double)x[i] * x[i];
        const float scale = (float)(1.0 / sqrt(ss / j->dim + j->eps));
        for (int32_t i = 0; i < j->dim; i++)
            y[i] = x[i] * scale * j->w[i];
    }
}

kvrt_status kvrt_cpu_rmsnorm(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w,
                             kvrt_view y, int64_t y_stride, int32_t n_tokens, int32_t dim, float eps)
{
    KVRT_TRY(check_count(be, n_tokens, 0, "rmsnorm: n_tokens"));
    KVRT_TRY(check_count(be, dim, 1, "rmsnorm: dim"));
    if (!(eps >= 0.0f) || isinf(eps))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rmsnorm: eps %g is not a finite value >= 0", eps);
    KVRT_TRY(kvrt_cpu_check_rows(be, x, n_tokens, x_stride, dim, "rmsnorm: x"));
    KVRT_TRY(kvrt_cpu_check_rows(be, y, n_tokens, y_stride, dim, "rmsnorm: y"));
    KVRT_TRY(kvrt_cpu_check_array(be, w, (size_t)dim * sizeof(float), sizeof(float), "rmsnorm: weight"));
    KVRT_TRY(check_alias(be, y, y_stride, x, x_stride, n_tokens, dim, "rmsnorm"));
    if (kvrt_cpu_ranges_overlap(y, rows_bytes(n_tokens, y_stride, dim), w, (size_t)dim * sizeof(float)))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rmsnorm: y overlaps the weight");
    norm_job j = {kvrt_cpu_ptr(x), kvrt_cpu_ptr(w), kvrt_cpu_ptr(y), x_stride, y_stride, dim, eps};
    kvrt_cpu_for_rows(be, n_tokens, dim, norm_rows, &j);
    return KVRT_OK;
}

/* ---- RoPE ----------------------------------------------------------------------------- */

typedef struct rope_job {
    float *x;
    const int32_t *pos;
    const float *cs; /* [max_pos][rot_dim / 2][2] */
    kvrt_rope_desc d;
} rope_job;

static void rope_rows(void *arg, int64_t begin, int64_t end)
{
    const rope_job *j = arg;
    const int32_t half = j->d.rot_dim / 2;
    /* neox pairs (i, i + half); GGUF llama pairs (2i, 2i + 1) */
    const int32_t step = j->d.neox ? 1 : 2, partner = j->d.neox ? half : 1;
    for (int64_t t = begin; t < end; t++) {
        const float *cs = j->cs + (size_t)j->pos[t] * (size_t)j->d.rot_dim;
        for (int32_t h = 0; h < j->d.n_heads; h++) {
            float *x = j->x + t * j->d.stride + (int64_t)h * j->d.head_dim;
            for (int32_t i = 0; i < half; i++) {
                float *a = x + i * step, *b = a + partner;
                const float c = cs[2 * i], s = cs[2 * i + 1], x0 = *a, x1 = *b;
                *a = x0 * c - x1 * s;
                *b = x0 * s + x1 * c;
            }
        }
    }
}

static kvrt_status rope_check_desc(kvrt_backend *be, const kvrt_rope_desc *d)
{
    KVRT_TRY(check_count(be, d->n_tokens, 0, "rope: n_tokens"));
    KVRT_TRY(check_count(be, d->n_heads, 1, "rope: n_heads"));
    KVRT_TRY(check_count(be, d->head_dim, 1, "rope: head_dim"));
    KVRT_TRY(check_count(be, d->max_pos, 1, "rope: max_pos"));
    if (d->rot_dim <= 0 || d->rot_dim % 2 != 0 || d->rot_dim > d->head_dim)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rope: rot_dim %d must be even and in [2, head_dim %d]",
                         (int)d->rot_dim, (int)d->head_dim);
    if (d->neox != 0 && d->neox != 1)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rope: neox %d is neither 0 nor 1", (int)d->neox);
    return KVRT_OK;
}

kvrt_status kvrt_cpu_rope(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                          const kvrt_rope_desc *d)
{
    if (!d)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rope: no descriptor");
    KVRT_TRY(rope_check_desc(be, d));
    KVRT_TRY(kvrt_cpu_check_rows(be, x, d->n_tokens, d->stride, (int64_t)d->n_heads * d->head_dim, "rope: x"));
    KVRT_TRY(kvrt_cpu_check_array(be, positions, (size_t)d->n_tokens * sizeof(int32_t), sizeof(int32_t),
                                  "rope: positions"));
    KVRT_TRY(kvrt_cpu_check_array(be, cos_sin, (size_t)d->max_pos * (size_t)d->rot_dim * sizeof(float),
                                  sizeof(float), "rope: cos/sin table"));
    const int32_t *pos = kvrt_cpu_ptr(positions);
    for (int32_t t = 0; t < d->n_tokens; t++) {
        if (pos[t] < 0 || pos[t] >= d->max_pos)
            return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                             "rope: position %d of token %d is outside the cos/sin table [0, %d)",
                             (int)pos[t], (int)t, (int)d->max_pos);
    }
    rope_job j = {kvrt_cpu_ptr(x), pos, kvrt_cpu_ptr(cos_sin), *d};
    kvrt_cpu_for_rows(be, d->n_tokens, (int64_t)d->n_heads * d->rot_dim, rope_rows, &j);
    return KVRT_OK;
}

/* ---- SwiGLU ---------------------------------------------------------------------------- */

typedef struct swiglu_job {
    const float *g, *u;
    float *out;
    int64_t g_stride, u_stride, out_stride;
    int32_t dim;
} swiglu_job;

static void swiglu_rows(void *arg, int64_t begin, int64_t end)
{
    const swiglu_job *j = arg;
    for (int64_t t = begin; t < end; t++) {
        const float *g = j->g + t * j->g_stride, *u = j->u + t * j->u_stride;
        float *o = j->out + t * j->out_stride;
        for (int32_t i = 0; i < j->dim; i++)
            o[i] = g[i] / (1.0f + expf(-g[i])) * u[i]; /* exp overflow gives -0: the right limit */
    }
}

kvrt_status kvrt_cpu_swiglu(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up,
                            int64_t up_stride, kvrt_view out, int64_t out_stride, int32_t n_tokens, int32_t dim)
{
    KVRT_TRY(check_count(be, n_tokens, 0, "swiglu: n_tokens"));
    KVRT_TRY(check_count(be, dim, 1, "swiglu: dim"));
    KVRT_TRY(kvrt_cpu_check_rows(be, gate, n_tokens, gate_stride, dim, "swiglu: gate"));
    KVRT_TRY(kvrt_cpu_check_rows(be, up, n_tokens, up_stride, dim, "swiglu: up"));
    KVRT_TRY(kvrt_cpu_check_rows(be, out, n_tokens, out_stride, dim, "swiglu: out"));
    KVRT_TRY(check_alias(be, out, out_stride, gate, gate_stride, n_tokens, dim, "swiglu (gate)"));
    KVRT_TRY(check_alias(be, out, out_stride, up, up_stride, n_tokens, dim, "swiglu (up)"));
    swiglu_job j = {kvrt_cpu_ptr(gate), kvrt_cpu_ptr(up), kvrt_cpu_ptr(out), gate_stride, up_stride, out_stride,
                    dim};
    kvrt_cpu_for_rows(be, n_tokens, dim, swiglu_rows, &j);
    return KVRT_OK;
}

/* ---- add -------------------------------------------------------------------------------- */

#define ADD_CHUNK 16384 /* elements per row of the parallel split */

typedef struct add_job {
    const float *a, *b;
    float *out;
    int64_t n;
} add_job;

static void add_rows(void *arg, int64_t begin, int64_t end)
{
    const add_job *j = arg;
    const int64_t lo = begin * ADD_CHUNK, hi = KVRT_MIN(end * ADD_CHUNK, j->n);
    for (int64_t i = lo; i < hi; i++)
        j->out[i] = j->a[i] + j->b[i];
}

kvrt_status kvrt_cpu_add(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n)
{
    KVRT_TRY(check_count(be, n, 0, "add: n"));
    size_t bytes;
    if (!kvrt_mul_size((size_t)n, sizeof(float), &bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "add: n %lld overflows", (long long)n);
    KVRT_TRY(kvrt_cpu_check_array(be, a, bytes, sizeof(float), "add: a"));
    KVRT_TRY(kvrt_cpu_check_array(be, b, bytes, sizeof(float), "add: b"));
    KVRT_TRY(kvrt_cpu_check_array(be, out, bytes, sizeof(float), "add: out"));
    KVRT_TRY(check_alias(be, out, n, a, n, 1, n, "add (a)"));
    KVRT_TRY(check_alias(be, out, n, b, n, 1, n, "add (b)"));
    add_job j = {kvrt_cpu_ptr(a), kvrt_cpu_ptr(b), kvrt_cpu_ptr(out), n};
    kvrt_cpu_for_rows(be, (n + ADD_CHUNK - 1) / ADD_CHUNK, ADD_CHUNK, add_rows, &j);
    return KVRT_OK;
}

/* ---- embedding ----------------------------------------------------------------------------- */

typedef struct embed_job {
    const char *table;
    size_t row_bytes;
    const int32_t *ids;
    float *out;
    int64_t dim;
    kvrt_cpu_dequant_fn dequant;
} embed_job;

static void embed_rows(void *arg, int64_t begin, int64_t end)
{
    const embed_job *j = arg;
    for (int64_t t = begin; t < end; t++)
        j->dequant(j->table + (size_t)j->ids[t] * j->row_bytes, j->out + t * j->dim, j->dim);
}

kvrt_status kvrt_cpu_embed(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim,
                           kvrt_view ids, int32_t n_tokens, kvrt_view out)
{
    if (!kvrt_dtype_supported(wtype))
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "embed: table type %s (%d) is not supported",
                         kvrt_dtype_name(wtype), (int)wtype);
    KVRT_TRY(check_count(be, n_tokens, 0, "embed: n_tokens"));
    KVRT_TRY(check_count(be, dim, 1, "embed: dim"));
    const size_t row_bytes = kvrt_dtype_row_bytes(wtype, dim);
    if (row_bytes == 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "embed: dim %lld is not a multiple of the %s block (%d)",
                         (long long)dim, kvrt_dtype_name(wtype), (int)kvrt_dtype_block_values(wtype));
    KVRT_TRY(kvrt_cpu_check_array(be, table, row_bytes, wtype == KVRT_DTYPE_F32 ? 4 : 2, "embed: table"));
    KVRT_TRY(kvrt_cpu_check_array(be, ids, (size_t)n_tokens * sizeof(int32_t), sizeof(int32_t), "embed: ids"));
    KVRT_TRY(kvrt_cpu_check_rows(be, out, n_tokens, dim, dim, "embed: out"));
    /* The op has no row count: the rows are what the view holds (the caller
     * checks ids against the vocabulary; this keeps reads inside the buffer). */
    const int64_t n_rows = (int64_t)((table.buf->size - table.offset) / row_bytes);
    const int32_t *id = kvrt_cpu_ptr(ids);
    for (int32_t t = 0; t < n_tokens; t++) {
        if (id[t] < 0 || id[t] >= n_rows)
            return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                             "embed: token id %d (token %d) is outside the table's %lld rows",
                             (int)id[t], (int)t, (long long)n_rows);
    }
    embed_job j = {kvrt_cpu_ptr(table), row_bytes, id, kvrt_cpu_ptr(out), dim,
                   kvrt_cpu_dequant_kernel(kvrt_cpu(be)->isa, wtype)};
    kvrt_cpu_for_rows(be, n_tokens, dim, embed_rows, &j);
    return KVRT_OK;
}

/* ---- row gather ---------------------------------------------------------------------------------- */

kvrt_status kvrt_cpu_gather_rows(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx,
                                 int32_t n, kvrt_view dst, int64_t dst_stride, int32_t dim)
{
    KVRT_TRY(check_count(be, n, 0, "gather_rows: n"));
    KVRT_TRY(check_count(be, dim, 1, "gather_rows: dim"));
    KVRT_TRY(kvrt_cpu_check_rows(be, src, 1, src_stride, dim, "gather_rows: src"));
    KVRT_TRY(kvrt_cpu_check_array(be, idx, (size_t)n * sizeof(int32_t), sizeof(int32_t), "gather_rows: idx"));
    KVRT_TRY(kvrt_cpu_check_rows(be, dst, n, dst_stride, dim, "gather_rows: dst"));
    /* rows of src inside its buffer: the last one needs dim elements, the others stride */
    const int64_t avail = (int64_t)((src.buf->size - src.offset) / sizeof(float));
    const int64_t n_rows = (avail - dim) / src_stride + 1;
    const int32_t *ix = kvrt_cpu_ptr(idx);
    for (int32_t i = 0; i < n; i++) {
        if (ix[i] < 0 || ix[i] >= n_rows)
            return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                             "gather_rows: index %d (entry %d) is outside the source's %lld rows",
                             (int)ix[i], (int)i, (long long)n_rows);
    }
    if (kvrt_cpu_ranges_overlap(dst, rows_bytes(n, dst_stride, dim), src, (size_t)avail * sizeof(float)))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "gather_rows: dst overlaps src");
    const float *s = kvrt_cpu_ptr(src);
    float *d = kvrt_cpu_ptr(dst);
    for (int32_t i = 0; i < n; i++) /* a copy: memory-bound, no gain from threads at these sizes */
        memcpy(d + (int64_t)i * dst_stride, s + (int64_t)ix[i] * src_stride, (size_t)dim * sizeof(float));
    return KVRT_OK;
}

/* ---- argmax ---------------------------------------------------------------------------------------- */

typedef struct argmax_job {
    const float *x;
    int64_t stride;
    int32_t n_cols;
    int32_t *out;
} argmax_job;

/* NaN never wins (every comparison with it is false); the first of equal
 * maxima wins; a row with no number at all (all NaN) gives 0. */
static void argmax_rows(void *arg, int64_t begin, int64_t end)
{
    const argmax_job *j = arg;
    for (int64_t r = begin; r < end; r++) {
        const float *x = j->x + r * j->stride;
        int32_t best = -1;
        float best_v = 0.0f;
        for (int32_t c = 0; c < j->n_cols; c++) {
            if (isnan(x[c]))
                continue;
            if (best < 0 || x[c] > best_v) {
                best = c;
                best_v = x[c];
            }
        }
        j->out[r] = best < 0 ? 0 : best;
    }
}

kvrt_status kvrt_cpu_argmax(kvrt_backend *be, kvrt_view x, int64_t stride, int32_t n_rows, int32_t n_cols,
                            kvrt_view out)
{
    KVRT_TRY(check_count(be, n_rows, 0, "argmax: n_rows"));
    KVRT_TRY(check_count(be, n_cols, 1, "argmax: n_cols"));
    KVRT_TRY(kvrt_cpu_check_rows(be, x, n_rows, stride, n_cols, "argmax: x"));
    KVRT_TRY(kvrt_cpu_check_array(be, out, (size_t)n_rows * sizeof(int32_t), sizeof(int32_t), "argmax: out"));
    if (kvrt_cpu_ranges_overlap(out, (size_t)n_rows * sizeof(int32_t), x, rows_bytes(n_rows, stride, n_cols)))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "argmax: out overlaps x");
    argmax_job j = {kvrt_cpu_ptr(x), stride, n_cols, kvrt_cpu_ptr(out)};
    kvrt_cpu_for_rows(be, n_rows, n_cols, argmax_rows, &j);
    return KVRT_OK;
}
