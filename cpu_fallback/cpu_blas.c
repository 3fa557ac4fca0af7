/* OpenBLAS for large products (see cpu_blas.h for when and why).
 *
 * OpenBLAS is a kernel here, not a second thread pool: it always runs on one
 * thread (its own workers would spin for tens of milliseconds after every
 * call, on the cores kvrt's pool and the next decode step need), and kvrt's
 * pool splits a product into slices of W rows, one sgemm each. F16/BF16
 * slices are converted to F32 into the thread's scratch just before their
 * sgemm, so the copy is still in L2 when it is read. The slices depend on the
 * shape only, so the result does not depend on the thread count. */
#include "cpu_blas.h"

#if KVRT_HAVE_OPENBLAS
#include <cblas.h>
#include <strings.h>
#endif

#define BLAS_SLICE_BYTES ((int64_t)512 * 1024) /* F32 rows of one slice at most: inside L2 */
#define BLAS_MIN_SLICES 16                      /* slices of a product at least, for the pool's balance */
#define BLAS_ROW_ALIGN 16                       /* slice rows: whole sgemm register tiles */

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

typedef struct blas_job {
    const kvrt_cpu_blas_product *p;
    int64_t rows;       /* W rows per slice (the last may be shorter) */
    float *scratch;     /* [threads][rows][n_in]: converted rows; NULL for F32 */
} blas_job;

/* Y[t][o0 .. o0 + rows) = X * W_slice^T, on this thread. */
static void blas_task(void *arg, int64_t task, int thread)
{
    const blas_job *j = arg;
    const kvrt_cpu_blas_product *p = j->p;
    const int64_t o0 = task * j->rows, rows = KVRT_MIN(j->rows, p->n_out - o0);
    const float *w = (const float *)(p->w + (size_t)o0 * p->row_bytes); /* F32 rows: n_in floats each */
    if (j->scratch) {
        float *tile = j->scratch + (size_t)thread * (size_t)(j->rows * p->n_in); /* [rows][n_in] */
        for (int64_t r = 0; r < rows; r++)
            p->dequant(p->w + (size_t)(o0 + r) * p->row_bytes, tile + r * p->n_in, p->n_in);
        w = tile;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)p->n_tokens, (blasint)rows, (blasint)p->n_in,
                1.0f, p->x, (blasint)p->x_stride, w, (blasint)p->n_in, 0.0f, p->y + o0, (blasint)p->y_stride);
}

/* Rows per slice, from the shape only: at least BLAS_MIN_SLICES slices where
 * the matrix allows, at most BLAS_SLICE_BYTES of F32 each, whole tiles. */
static int64_t slice_rows(int64_t n_out, int64_t n_in)
{
    int64_t by_bytes = BLAS_SLICE_BYTES / (n_in * (int64_t)sizeof(float)) / BLAS_ROW_ALIGN * BLAS_ROW_ALIGN;
    int64_t by_count = (n_out + BLAS_MIN_SLICES - 1) / BLAS_MIN_SLICES;
    by_count = (by_count + BLAS_ROW_ALIGN - 1) / BLAS_ROW_ALIGN * BLAS_ROW_ALIGN;
    return KVRT_MIN(KVRT_MAX(KVRT_MIN(by_bytes, by_count), BLAS_ROW_ALIGN), n_out);
}

kvrt_status kvrt_cpu_blas_matmul(kvrt_backend *be, const kvrt_cpu_blas_product *p)
{
    /* one OpenBLAS thread per call, whoever calls (the count is process-wide) */
    if (openblas_get_num_threads() != 1)
        openblas_set_num_threads(1);
    blas_job j = {p, slice_rows(p->n_out, p->n_in), NULL};
    if (p->wtype != KVRT_DTYPE_F32) {
        size_t floats, bytes;
        if (!kvrt_mul_size((size_t)j.rows, (size_t)p->n_in, &floats) ||
            !kvrt_mul_size(floats, (size_t)kvrt_cpu(be)->n_threads, &floats) ||
            !kvrt_mul_size(floats, sizeof(float), &bytes))
            return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: conversion scratch size overflows");
        j.scratch = kvrt_alloc(be->alloc, bytes, 64);
        if (!j.scratch)
            return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                             "matmul: cannot allocate %zu bytes of F32 rows", bytes);
    }
    kvrt_threadpool_run_sized(kvrt_cpu(be)->pool, (p->n_out + j.rows - 1) / j.rows, p->n_out * p->n_in * p->n_tokens,
                              blas_task, &j);
    kvrt_free(be->alloc, j.scratch);
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
