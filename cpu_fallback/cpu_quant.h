/* CPU row kernels of the types beyond F32/F16/BF16/Q8_0/Q4_0 (q4_1, q5_0,
 * q5_1, iq4_nl, the k-quants, iq4_xs): one file per instruction set
 * (cpu_quant_c.c, cpu_quant_avx2.c, cpu_quant_avx512.c), reached through
 * the selection in cpu_kernels.c. Per-type kernel code stays here, apart
 * from the matmul dispatch (cpu_matmul.c).
 *
 * Every block is read as groups of 16 consecutive values: integer levels
 * (offsets applied: q - 32 for q6_K, code-book values for iq4) times a
 * group scale s, minus a group min mn (value = s * level - mn; mn is 0
 * except for the types with mins: q2_K, q4_K, q5_K, q4_1, q5_1). The
 * dequantizers evaluate exactly that, which is the reference's order, so
 * they give the reference's bits. The dot products use
 *     sum_i w_i x_i = sum_g s_g * sum(level * x) - sum_g mn_g * xsum16[g],
 * with the group sums of x (xsum16) computed once per GEMV, not per row.
 *
 * The AVX2 / AVX-512 kernels of q4_K, q5_K and q6_K, and the AVX-512 ones
 * of q2_K and q3_K ("plane" kernels) read
 * the activations in their own order: within each 256-value block, the
 * order in which they unpack the weights (one byte of every 32-bit lane of
 * 64 weight bytes at a time, cpu_quant_planes.h). Their xprep writes that
 * order and the sums these kernels use once per GEMV, and qdot is then
 * called with them in place of x and xsum16. */
#ifndef KVRT_CPU_QUANT_H
#define KVRT_CPU_QUANT_H

#include "cpu_ops_internal.h"

/* sum_i W[i] x[i] over one row of n values; xsum16[k] = sum of x[16k .. 16k + 15]. */
typedef float (*kvrt_cpu_qdot_fn)(const void *w, const float *x, const float *xsum16, int64_t n);
/* What a kernel's qdot reads in place of x and xsum16 (n a multiple of the
 * block): xp[n] = x reordered, xs[n / 16] = the group sums it wants. */
typedef void (*kvrt_cpu_xprep_fn)(const float *x, int64_t n, float *xp, float *xs);

typedef struct kvrt_cpu_quant_kernels {
    kvrt_dtype type;
    kvrt_cpu_qdot_fn qdot;
    kvrt_cpu_dequant_fn dequant;
    kvrt_cpu_xprep_fn xprep; /* NULL: qdot reads x as it is */
} kvrt_cpu_quant_kernels;

/* The kernels of each flavour, one row per type (tables only: the AVX ones
 * are called after the CPU was checked). */
extern const kvrt_cpu_quant_kernels kvrt_cpu_quant_c[];
extern const int kvrt_cpu_quant_c_count;
extern const kvrt_cpu_quant_kernels kvrt_cpu_quant_avx2[];
extern const int kvrt_cpu_quant_avx2_count;
extern const kvrt_cpu_quant_kernels kvrt_cpu_quant_avx512[];
extern const int kvrt_cpu_quant_avx512_count;

/* The kernels of `type` for `isa` (the best flavour at or below it); NULL
 * for the types of cpu_kernels.c. */
const kvrt_cpu_quant_kernels *kvrt_cpu_quant_kernels_get(kvrt_cpu_isa isa, kvrt_dtype type);

/* xsum16[k] = sum of x[16k .. 16k + 15], n a multiple of 16. */
void kvrt_cpu_xsum16(const float *x, int64_t n, float *xsum16);

/* The activation orders of the plane kernels (cpu_quant_planes.h): q4_K
 * and q5_K share one, q6_K has its own, q2_K and q3_K share one (with
 * different sums). */
void kvrt_cpu_xprep_q45_K(const float *x, int64_t n, float *xp, float *xs);
void kvrt_cpu_xprep_q6_K(const float *x, int64_t n, float *xp, float *xs);
void kvrt_cpu_xprep_q2_K(const float *x, int64_t n, float *xp, float *xs);
void kvrt_cpu_xprep_q3_K(const float *x, int64_t n, float *xp, float *xs);

/* The scales of one block: s[g] and mn[g] per group of 16 values (2 groups
 * for 32-value blocks, 16 for 256); shared by every flavour. */
void kvrt_cpu_quant_scales(kvrt_dtype type, const void *block, float *s, float *mn);

/* ---- int8 activations (opt-in, cpu_quant_q8.c) ---------------------------------------- */

/* 256 activations rounded to int8: x[i] ~ d * qs[i]; bsums[g] = sum of qs[16 g .. 16 g + 15]. */
typedef struct kvrt_cpu_q8k {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
} kvrt_cpu_q8k;

/* y[n / 256] from x[n], n a multiple of 256: d = max |x| / 127, qs = round(x / d). */
void kvrt_cpu_q8k_quantize(const float *x, int64_t n, kvrt_cpu_q8k *y);

/* sum_i W[i] (d qs[i]) over one row of n values. */
typedef float (*kvrt_cpu_q8dot_fn)(const void *w, const kvrt_cpu_q8k *x, int64_t n);

/* The int8-activation kernel of `type` for `isa`: AVX-512 VNNI where the CPU
 * has it, portable C for the portable flavour; NULL (the F32 path) for the
 * other types and for AVX2 / AVX-512 without VNNI, whose F32 plane kernels
 * are faster than portable int8 ones. */
kvrt_cpu_q8dot_fn kvrt_cpu_q8dot_kernel(kvrt_cpu_isa isa, kvrt_dtype type);

#endif /* KVRT_CPU_QUANT_H */
