/* OpenBLAS for large products (see cpu_blas.h for when and why).
 *
 * F32 weights go to one sgemm. F16/BF16 weights are converted to F32 a tile
 * of rows at a time (the conversion on kvrt's pool, then one sgemm per tile,
 * both from this thread), so the F32 copy never exceeds BLAS_TILE_BYTES. The
 * tile size depends on the shape only. */
#include "cpu_blas.h"

#if KVRT_HAVE_OPENBLAS
#include <cblas.h>
#include <strings.h>
#endif

#define BLAS_TILE_BYTES ((int64_t)4 << 20) /* F32 rows converted per sgemm: a few sgemm blocks */
#define BLAS_TILE_MIN_ROWS 64
#define CONVERT_ROWS_PER_TASK 16

#if KVRT_HAVE_OPENBLAS

const char *kvrt_cpu_blas_core(void)
{
    return openblas_get_corename();
}

/* Cores (as openblas_get_corename() spells them) whose sgemm kernels use
 * AVX-512: wider than kvrt's AVX2 GEMM. Measured on this EPYC (README): with
 * Cooperlake OpenBLAS took 36-38 % less CPU time than kvrt's GEMM for 64-128
 * token F32 prefills; with Haswell (AVX2, as kvrt) it was within +-8 % either
 * way, and its results then change with the thread count, so it is not used. */
static bool core_is_wider(const char *core)
{
    static const char *const wide[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    for (size_t i = 0; core && i < KVRT_ARRAY_LEN(wide); i++)
        if (strcasecmp(core, wide[i]) == 0)
            return true;
    return false;
}

bool kvrt_cpu_blas_usable(kvrt_cpu_isa isa)
{
    /* on a CPU without AVX2 kvrt runs portable C, which any OpenBLAS core beats */
    return isa == KVRT_CPU_ISA_PORTABLE || core_is_wider(openblas_get_corename());
}

typedef struct convert_job {
    const kvrt_cpu_blas_product *p;
    int64_t o0, rows;
    float *tile; /* [rows][n_in] */
} convert_job;

static void convert_task(void *arg, int64_t task, int thread)
{
    const convert_job *j = arg;
    const int64_t r0 = task * CONVERT_ROWS_PER_TASK, r1 = KVRT_MIN(r0 + CONVERT_ROWS_PER_TASK, j->rows);
    const int64_t n_in = j->p->n_in;
    for (int64_t r = r0; r < r1; r++)
        j->p->dequant(j->p->w + (size_t)(j->o0 + r) * j->p->row_bytes, j->tile + r * n_in, n_in);
}

/* Y[t][o0 .. o0 + rows) = X * W_rows^T */
static void sgemm_rows(const kvrt_cpu_blas_product *p, const float *w, int64_t o0, int64_t rows)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)p->n_tokens, (blasint)rows, (blasint)p->n_in,
                1.0f, p->x, (blasint)p->x_stride, w, (blasint)p->n_in, 0.0f, p->y + o0, (blasint)p->y_stride);
}

kvrt_status kvrt_cpu_blas_matmul(kvrt_backend *be, const kvrt_cpu_blas_product *p)
{
    kvrt_threadpool *pool = kvrt_cpu(be)->pool;
    /* as many threads as kvrt's pool would run this work on (never more than the cores) */
    const int threads = kvrt_threadpool_threads_for(pool, p->n_out, p->n_out * p->n_in * p->n_tokens);
    if (openblas_get_num_threads() != threads)
        openblas_set_num_threads(threads);
    if (p->wtype == KVRT_DTYPE_F32) {
        sgemm_rows(p, (const float *)p->w, 0, p->n_out);
        return KVRT_OK;
    }
    int64_t rows = KVRT_MAX(BLAS_TILE_BYTES / (p->n_in * (int64_t)sizeof(float)), BLAS_TILE_MIN_ROWS);
    rows = KVRT_MIN(rows / 16 * 16, p->n_out);
    size_t bytes;
    if (!kvrt_mul_size((size_t)rows * sizeof(float), (size_t)p->n_in, &bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: conversion tile size overflows");
    float *tile = kvrt_alloc(be->alloc, bytes, 64);
    if (!tile)
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "matmul: cannot allocate %zu bytes of F32 rows",
                         bytes);
    for (int64_t o0 = 0; o0 < p->n_out; o0 += rows) {
        convert_job j = {p, o0, KVRT_MIN(rows, p->n_out - o0), tile};
        kvrt_threadpool_run_sized(pool, (j.rows + CONVERT_ROWS_PER_TASK - 1) / CONVERT_ROWS_PER_TASK,
                                  j.rows * p->n_in, convert_task, &j);
        sgemm_rows(p, tile, o0, j.rows);
    }
    kvrt_free(be->alloc, tile);
    return KVRT_OK;
}

#else /* no OpenBLAS in this build */

const char *kvrt_cpu_blas_core(void)
{
    return NULL;
}

bool kvrt_cpu_blas_usable(kvrt_cpu_isa isa)
{
    return false;
}

kvrt_status kvrt_cpu_blas_matmul(kvrt_backend *be, const kvrt_cpu_blas_product *p)
{
    return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "matmul: this build has no OpenBLAS");
}

#endif
