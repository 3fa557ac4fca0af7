/* Double-precision references for the model ops (see ref_ops.h). Written
 * for clarity, not speed: plain loops straight from the formulas. */
#include "ref_ops.h"

#include "common/quant.h"

#include <math.h>
#include <stdlib.h>

void ref_rng_seed(ref_rng *r, uint64_t seed)
{
    r->s = seed * 0x9E3779B97F4A7C15ull + 1;
}

uint32_t ref_rng_u32(ref_rng *r)
{
    /* xorshift64* */
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return (uint32_t)((r->s * 0x2545F4914F6CDD1Dull) >> 32);
}

float ref_uniform(ref_rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)((ref_rng_u32(r) >> 8) * (1.0 / 16777216.0));
}

void ref_fill(ref_rng *r, float *x, int64_t n, float lo, float hi)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = ref_uniform(r, lo, hi);
}

void ref_matmul(kvrt_dtype wtype, const void *w, int64_t n_out, int64_t n_in, const float *x, int64_t x_stride,
                int32_t n_tokens, double *y)
{
    const size_t row_bytes = kvrt_dtype_row_bytes(wtype, n_in);
    float *row = malloc((size_t)n_in * sizeof(float));
    if (!row)
        abort(); /* test helper: no recovery from a failed malloc */
    for (int64_t o = 0; o < n_out; o++) {
        kvrt_dequantize_row(wtype, (const char *)w + (size_t)o * row_bytes, row, n_in);
        for (int32_t t = 0; t < n_tokens; t++) {
            double s = 0.0;
            for (int64_t i = 0; i < n_in; i++)
                s += (double)row[i] * (double)x[t * x_stride + i];
            y[(int64_t)t * n_out + o] = s;
        }
    }
    free(row);
}

void ref_rmsnorm(const float *x, int64_t x_stride, const float *w, int32_t n_tokens, int32_t dim, float eps,
                 double *y)
{
    for (int32_t t = 0; t < n_tokens; t++) {
        const float *xt = x + t * x_stride;
        double ss = 0.0;
        for (int32_t i = 0; i < dim; i++)
            ss += (double)xt[i] * xt[i];
        double inv = 1.0 / sqrt(ss / dim + (double)eps);
        for (int32_t i = 0; i < dim; i++)
            y[(int64_t)t * dim + i] = xt[i] * inv * w[i];
    }
}

void ref_rope(const float *x, int64_t stride, int32_t n_tokens, int32_t n_heads, int32_t head_dim,
              int32_t rot_dim, int32_t neox, const int32_t *pos, const float *cos_sin, double *y)
{
    const int64_t width = (int64_t)n_heads * head_dim;
    for (int32_t t = 0; t < n_tokens; t++) {
        const float *cs = cos_sin + (int64_t)pos[t] * rot_dim;
        for (int32_t h = 0; h < n_heads; h++) {
            const float *xh = x + t * stride + (int64_t)h * head_dim;
            double *yh = y + t * width + (int64_t)h * head_dim;
            for (int32_t d = 0; d < head_dim; d++)
                yh[d] = xh[d];
            for (int32_t i = 0; i < rot_dim / 2; i++) {
                int32_t a = neox ? i : 2 * i, b = neox ? i + rot_dim / 2 : 2 * i + 1;
                double c = cs[2 * i], s = cs[2 * i + 1];
                yh[a] = xh[a] * c - xh[b] * s;
                yh[b] = xh[a] * s + xh[b] * c;
            }
        }
    }
}

void ref_swiglu(const float *g, int64_t g_stride, const float *u, int64_t u_stride, int32_t n_tokens, int32_t dim,
                double *y)
{
    for (int32_t t = 0; t < n_tokens; t++) {
        for (int32_t i = 0; i < dim; i++) {
            double gv = g[t * g_stride + i];
            y[(int64_t)t * dim + i] = gv / (1.0 + exp(-gv)) * u[t * u_stride + i];
        }
    }
}

void ref_rope_table(float *cos_sin, int32_t max_pos, int32_t rot_dim, double base)
{
    for (int32_t p = 0; p < max_pos; p++) {
        for (int32_t i = 0; i < rot_dim / 2; i++) {
            double angle = p * pow(base, -2.0 * i / rot_dim);
            cos_sin[((int64_t)p * (rot_dim / 2) + i) * 2] = (float)cos(angle);
            cos_sin[((int64_t)p * (rot_dim / 2) + i) * 2 + 1] = (float)sin(angle);
        }
    }
}

ref_err ref_compare(const float *got, int64_t got_stride, const double *want, int64_t want_stride,
                    int64_t rows, int64_t cols)
{
    ref_err e = {0.0, 0.0, 0};
    double num = 0.0, den = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++) {
            float g = got[r * got_stride + c];
            double w = want[r * want_stride + c];
            if (!isfinite(g)) {
                e.nonfinite++;
                continue;
            }
            double d = (double)g - w;
            num += d * d;
            den += w * w;
            e.max_abs = fmax(e.max_abs, fabs(d));
        }
    }
    e.nmse = den > 0.0 ? num / den : num;
    return e;
}
