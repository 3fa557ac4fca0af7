/* kvrt's own F32 GEMM for the multi-token matmul path:
 *
 *     Y[t][o] = sum_i X[t][i] * W[o][i]
 *
 * X is [m][k] (row stride x_stride), W is [n][k] (row stride w_stride), Y is
 * [m][n] (row stride y_stride). It calls no library and holds no lock, so
 * every thread-pool task can run one on its own slice of W rows (Debian's
 * serial OpenBLAS sgemm is not reentrant).
 *
 * Each element is one FMA (or multiply-add) chain over i = 0..k-1 in order,
 * whatever the blocking or the split of rows between calls: the result of an
 * element depends on its X row, its W row and the ISA only, so splitting the
 * work over any number of threads gives the same bits. */
#ifndef KVRT_CPU_GEMM_H
#define KVRT_CPU_GEMM_H

#include "cpu_ops_internal.h"

/* Register tile: MR rows of X by NR rows of W per micro-kernel call. */
#define KVRT_CPU_GEMM_MR 6
#define KVRT_CPU_GEMM_NR 16
/* Cache blocks: a KC x NR panel of W stays in L1 while MC rows of X (in L2)
 * stream past it; NC W rows are packed per KC slice. */
#define KVRT_CPU_GEMM_KC 256
#define KVRT_CPU_GEMM_MC 96
#define KVRT_CPU_GEMM_NC 256

/* Floats of scratch one kvrt_cpu_gemm call needs, for any shape: the packed
 * X block and the packed W block. */
#define KVRT_CPU_GEMM_SCRATCH_FLOATS \
    ((size_t)KVRT_CPU_GEMM_MC * KVRT_CPU_GEMM_KC + (size_t)KVRT_CPU_GEMM_KC * KVRT_CPU_GEMM_NC)

/* Y = X * W^T as above; m, n, k >= 1, strides >= k (X, W) and >= n (Y).
 * scratch: KVRT_CPU_GEMM_SCRATCH_FLOATS floats, 32-byte aligned, owned by
 * the calling thread. Y may hold anything before (it is not read first);
 * Y must not overlap X, W or scratch. */
void kvrt_cpu_gemm(kvrt_cpu_isa isa, int64_t m, int64_t n, int64_t k, const float *x, int64_t x_stride,
                   const float *w, int64_t w_stride, float *y, int64_t y_stride, float *scratch);

#endif /* KVRT_CPU_GEMM_H */
