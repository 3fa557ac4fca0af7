/* Shared by the CPU model ops (cpu_matmul.c, cpu_ops.c) and their tests:
 * the per-row weight kernels (cpu_kernels.c) in a portable C and an
 * AVX2/FMA/F16C flavour chosen at run time, and the row-parallel helper. */
#ifndef KVRT_CPU_OPS_INTERNAL_H
#define KVRT_CPU_OPS_INTERNAL_H

#include "cpu_internal.h"

/* ---- row kernels ------------------------------------------------------------- */

/* The best flavour this CPU runs (the library is built without -march). */
kvrt_cpu_isa kvrt_cpu_best_isa(void);
/* "portable", "avx2", "avx512". */
const char *kvrt_cpu_isa_name(kvrt_cpu_isa isa);

/* sum_i W[i] * x[i] over one weight row of n values in the row's type;
 * n is a multiple of the type's block. */
typedef float (*kvrt_cpu_dot_fn)(const void *w, const float *x, int64_t n);
/* y[i] = W[i] as F32 for one row of n values. */
typedef void (*kvrt_cpu_dequant_fn)(const void *w, float *y, int64_t n);

/* NULL for unsupported types. */
kvrt_cpu_dot_fn kvrt_cpu_dot_kernel(kvrt_cpu_isa isa, kvrt_dtype type);
/* NULL for unsupported types. */
kvrt_cpu_dequant_fn kvrt_cpu_dequant_kernel(kvrt_cpu_isa isa, kvrt_dtype type);

/* ---- the row-parallel helper ------------------------------------------------------- */

/* Runs fn(arg, begin, end) over [0, n_rows) split into tasks on the backend's
 * pool; runs inline when the work (n_rows * work_per_row) is too small to share.
 * Rows are independent, so the result does not depend on the split. */
typedef void (*kvrt_cpu_rows_fn)(void *arg, int64_t begin, int64_t end);
void kvrt_cpu_for_rows(kvrt_backend *be, int64_t n_rows, int64_t work_per_row, kvrt_cpu_rows_fn fn, void *arg);

#endif /* KVRT_CPU_OPS_INTERNAL_H */
