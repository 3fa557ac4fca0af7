/* OpenBLAS for the CPU matmul's large products (cpu_blas.c).
 *
 * Only where it was measured faster (README "OpenBLAS, decided by
 * measurement"): F32 weights, and F16/BF16 rows converted to F32 a tile at a
 * time, when a product has at least KVRT_BLAS_MIN_TOKENS tokens. Single
 * tokens (decode) stay on kvrt's GEMV, which streams the weights faster.
 *
 * OpenBLAS is called from the calling thread only, and parallelises inside
 * itself on as many threads as kvrt's pool would use for the same work (its
 * thread count is process-wide: set before each call when it differs). Its
 * kernels are chosen when the library loads, from OPENBLAS_CORETYPE or cpuid
 * (a library must not set the environment): kvrt uses it only when that core
 * is wider than kvrt's own AVX2 kernels (AVX-512), and its own GEMM otherwise.
 * Results are deterministic for a fixed thread count (measured: the AVX-512
 * cores give the same bits for 1, 2 and 3 threads; Haswell's differ). */
#ifndef KVRT_CPU_BLAS_H
#define KVRT_CPU_BLAS_H

#include "cpu_ops_internal.h"

#ifndef KVRT_BLAS_MIN_TOKENS
#define KVRT_BLAS_MIN_TOKENS 32
#endif

/* The OpenBLAS core in use ("SkylakeX"), or NULL in a build without OpenBLAS. */
const char *kvrt_cpu_blas_core(void);

/* Whether kvrt would give products to OpenBLAS on this machine (built with
 * it, and its core wider than the kernels of `isa`). */
bool kvrt_cpu_blas_usable(kvrt_cpu_isa isa);

/* Whether a product of this type and token count goes to OpenBLAS; never a
 * single token, whatever KVRT_BLAS_MIN_TOKENS says (sgemv-like products ran
 * at a fifth of kvrt's GEMV). */
static inline bool kvrt_cpu_blas_wanted(bool usable, kvrt_dtype wtype, int32_t n_tokens)
{
    return usable && n_tokens >= KVRT_BLAS_MIN_TOKENS && n_tokens > 1 &&
           (wtype == KVRT_DTYPE_F32 || wtype == KVRT_DTYPE_F16 || wtype == KVRT_DTYPE_BF16);
}

/* A checked product y[t][o] = sum_i W[o][i] * x[t][i] (cpu_matmul.c's
 * arguments) through OpenBLAS; KVRT_ERR_UNSUPPORTED in a build without it. */
typedef struct kvrt_cpu_blas_product {
    kvrt_dtype wtype;
    const char *w; /* [n_out] rows of row_bytes */
    size_t row_bytes;
    int64_t n_out, n_in;
    const float *x; /* [n_tokens][x_stride] */
    int64_t x_stride;
    float *y; /* [n_tokens][y_stride] */
    int64_t y_stride;
    int32_t n_tokens;
    kvrt_cpu_dequant_fn dequant; /* F16/BF16 rows to F32 */
} kvrt_cpu_blas_product;

kvrt_status kvrt_cpu_blas_matmul(kvrt_backend *be, const kvrt_cpu_blas_product *p);

#endif /* KVRT_CPU_BLAS_H */
