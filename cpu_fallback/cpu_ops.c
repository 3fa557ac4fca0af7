/* The CPU model ops other than matmul: rmsnorm, RoPE, SwiGLU, add, embedding,
 * row gather; plus the row-parallel helper they share with cpu_matmul.c.
 * The front door (backend/ops.c) checked every view and count; the batch
 * check (kvrt_batch_check) the indices the int arrays hold. */
#include "cpu_ops_internal.h"

#include "common/quant.h"

#include <math.h>
#include <string.h>

#define OPS_TASKS_PER_THREAD 4 /* rows are independent: a few tasks per thread balance the split */

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
    if (n_rows <= 0)
        return;
    kvrt_threadpool *pool = kvrt_cpu(be)->pool;
    const int64_t work = n_rows * KVRT_MAX(work_per_row, 1);
    /* the pool's size threshold decides, as for every op: small work stays on the caller */
    const int threads = kvrt_threadpool_threads_for(pool, n_rows, work);
    if (threads == 1) {
        fn(arg, 0, n_rows);
        return;
    }
    const int64_t n_tasks = KVRT_MIN((int64_t)threads * OPS_TASKS_PER_THREAD, n_rows);
    rows_job j = {fn, arg, n_rows, (n_rows + n_tasks - 1) / n_tasks};
    kvrt_threadpool_run_sized(pool, (n_rows + j.per_task - 1) / j.per_task, work, rows_task, &j);
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

kvrt_status kvrt_cpu_rope(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                          const kvrt_rope_desc *d)
{
    const int32_t *pos = kvrt_cpu_ptr(positions);
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
    add_job j = {kvrt_cpu_ptr(a), kvrt_cpu_ptr(b), kvrt_cpu_ptr(out), n};
    kvrt_cpu_for_rows(be, (n + ADD_CHUNK - 1) / ADD_CHUNK, ADD_CHUNK, add_rows, &j);
    return KVRT_OK;
}

/* ---- bias ---------------------------------------------------------------------------------- */

typedef struct bias_job {
    const float *x, *b;
    float *y;
    int64_t x_stride, y_stride, dim;
} bias_job;

static void bias_rows(void *arg, int64_t begin, int64_t end)
{
    const bias_job *j = arg;
    for (int64_t t = begin; t < end; t++) {
        const float *x = j->x + t * j->x_stride;
        float *y = j->y + t * j->y_stride;
        for (int64_t i = 0; i < j->dim; i++)
            y[i] = x[i] + j->b[i];
    }
}

kvrt_status kvrt_cpu_add_bias(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view b, kvrt_view y,
                              int64_t y_stride, int32_t n_tokens, int64_t dim)
{
    bias_job j = {kvrt_cpu_ptr(x), kvrt_cpu_ptr(b), kvrt_cpu_ptr(y), x_stride, y_stride, dim};
    kvrt_cpu_for_rows(be, n_tokens, dim, bias_rows, &j);
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
    const size_t row_bytes = kvrt_dtype_row_bytes(wtype, dim);
    const int32_t *id = kvrt_cpu_ptr(ids);
    embed_job j = {kvrt_cpu_ptr(table), row_bytes, id, kvrt_cpu_ptr(out), dim,
                   kvrt_cpu_dequant_kernel(kvrt_cpu(be)->isa, wtype)};
    kvrt_cpu_for_rows(be, n_tokens, dim, embed_rows, &j);
    return KVRT_OK;
}

/* ---- row gather ---------------------------------------------------------------------------------- */

kvrt_status kvrt_cpu_gather_rows(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx,
                                 int32_t n, kvrt_view dst, int64_t dst_stride, int32_t dim)
{
    const int32_t *ix = kvrt_cpu_ptr(idx);
    const float *s = kvrt_cpu_ptr(src);
    float *d = kvrt_cpu_ptr(dst);
    for (int32_t i = 0; i < n; i++) /* a copy: memory-bound, no gain from threads at these sizes */
        memcpy(d + (int64_t)i * dst_stride, s + (int64_t)ix[i] * src_stride, (size_t)dim * sizeof(float));
    return KVRT_OK;
}
