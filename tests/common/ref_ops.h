/* Double-precision references for the model ops, and the comparison that
 * DESIGN.md's correctness contract is stated in (NMSE, max abs error). They
 * take exactly the stored values (weights through the reference dequantizer
 * of common/quant.c), so only the kernels' accumulation error is measured. */
#ifndef KVRT_TEST_REF_OPS_H
#define KVRT_TEST_REF_OPS_H

#include "common/kvrt_internal.h"

/* ---- deterministic random numbers ---------------------------------------- */

typedef struct ref_rng {
    uint64_t s;
} ref_rng;

void ref_rng_seed(ref_rng *r, uint64_t seed);
uint32_t ref_rng_u32(ref_rng *r);
float ref_uniform(ref_rng *r, float lo, float hi);
void ref_fill(ref_rng *r, float *x, int64_t n, float lo, float hi);

/* ---- references (outputs dense, double) ------------------------------------ */

/* y[t][o] = sum_i W[o][i] x[t][i]; W [n_out] rows of wtype; y [n_tokens][n_out]. */
void ref_matmul(kvrt_dtype wtype, const void *w, int64_t n_out, int64_t n_in, const float *x, int64_t x_stride,
                int32_t n_tokens, double *y);
/* y [n_tokens][dim]. */
void ref_rmsnorm(const float *x, int64_t x_stride, const float *w, int32_t n_tokens, int32_t dim, float eps,
                 double *y);
/* x [n_tokens][stride] with [n_heads][head_dim] per token; y [n_tokens][n_heads * head_dim];
 * cos_sin [max_pos][rot_dim / 2][2]. */
void ref_rope(const float *x, int64_t stride, int32_t n_tokens, int32_t n_heads, int32_t head_dim,
              int32_t rot_dim, int32_t neox, const int32_t *pos, const float *cos_sin, double *y);
/* y [n_tokens][dim]. */
void ref_swiglu(const float *g, int64_t g_stride, const float *u, int64_t u_stride, int32_t n_tokens, int32_t dim,
                double *y);

/* Fills cos_sin [max_pos][rot_dim / 2][2] for theta_i = base^(-2i / rot_dim), in double. */
void ref_rope_table(float *cos_sin, int32_t max_pos, int32_t rot_dim, double base);

/* ---- comparison ------------------------------------------------------------------ */

typedef struct ref_err {
    double nmse;       /* sum (got - want)^2 / sum want^2 (absolute when want is all 0) */
    double max_abs;    /* max |got - want| */
    int64_t nonfinite; /* NaN / Inf values in got */
} ref_err;

ref_err ref_compare(const float *got, int64_t got_stride, const double *want, int64_t want_stride,
                    int64_t rows, int64_t cols);

#endif /* KVRT_TEST_REF_OPS_H */
