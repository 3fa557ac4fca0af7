/* Reference quantized KV (ref_kvquant.h). */
#include "ref_kvquant.h"

#include "common/fp16.h"

#include <math.h>

bool ref_kv_quantized(kvrt_dtype dtype)
{
    return dtype == KVRT_DTYPE_Q8_0 || dtype == KVRT_DTYPE_Q4_0;
}

/* One group of 32: its F16 scale and its integers q in [lo, hi]. */
static uint16_t ref_group(kvrt_dtype dtype, const float *x, int32_t q[32])
{
    bool q4 = dtype == KVRT_DTYPE_Q4_0;
    double xs[32], amax = 0.0;
    for (int i = 0; i < 32; i++) {
        double v = isnan(x[i]) ? 0.0 : x[i];
        xs[i] = fmin(fmax(v, -65504.0), 65504.0);
        amax = fmax(amax, fabs(xs[i]));
    }
    /* the F32 constant nearest 1/7 or 1/127; a double product of two floats is exact */
    double r = (double)(q4 ? 1.0f / 7.0f : 1.0f / 127.0f);
    uint16_t dh = kvrt_f32_to_fp16((float)(amax * r));
    double d = kvrt_fp16_to_f32(dh);
    int lo = q4 ? -8 : -127, hi = q4 ? 7 : 127;
    for (int i = 0; i < 32; i++) {
        double n = d == 0.0 ? 0.0 : nearbyint(xs[i] / d); /* ties to even (default rounding mode) */
        q[i] = (int32_t)fmin(fmax(n, lo), hi);
    }
    return dh;
}

void ref_kv_quantize_row(kvrt_dtype dtype, const float *x, int32_t head_dim, uint8_t *values, uint16_t *scales)
{
    for (int32_t g = 0; g < head_dim / 32; g++) {
        int32_t q[32];
        scales[g] = ref_group(dtype, x + g * 32, q);
        for (int i = 0; i < 32; i++) {
            if (dtype == KVRT_DTYPE_Q8_0)
                values[g * 32 + i] = (uint8_t)(int8_t)q[i];
            else if (i < 16)
                values[g * 16 + i] = (uint8_t)((q[i] + 8) | ((q[i + 16] + 8) << 4));
        }
    }
}

bool ref_kv_fp8(kvrt_dtype dtype)
{
    return dtype == KVRT_DTYPE_FP8_E4M3 || dtype == KVRT_DTYPE_FP8_E5M2;
}

/* The value of a positive fp8 code, from the format's definition in double. */
static double ref_fp8_value(bool e4, int code)
{
    int man = e4 ? 3 : 2, bias = e4 ? 7 : 15, e = code >> man, m = code & ((1 << man) - 1);
    return e == 0 ? ldexp(m, 1 - bias - man) : ldexp(1.0 + ldexp(m, -man), e - bias);
}

uint8_t ref_fp8_encode(kvrt_dtype dtype, float x)
{
    bool e4 = dtype == KVRT_DTYPE_FP8_E4M3;
    if (isnan(x))
        return e4 ? 0x7f : 0x7e;
    int top = e4 ? 0x7e : 0x7b; /* the largest finite code: saturation */
    double a = fmin(fabs((double)x), ref_fp8_value(e4, top)); /* saturating, infinities too */
    /* the nearest of every finite code by search; a tie keeps the even code
     * (the even mantissa); beyond the largest code, the largest */
    int best = 0;
    for (int c = 1; c <= top; c++) {
        double dc = fabs(ref_fp8_value(e4, c) - a), db = fabs(ref_fp8_value(e4, best) - a);
        if (dc < db || (dc == db && c % 2 == 0))
            best = c;
    }
    return (uint8_t)((signbit(x) ? 0x80 : 0) | best);
}

double ref_fp8_decode(kvrt_dtype dtype, uint8_t b)
{
    bool e4 = dtype == KVRT_DTYPE_FP8_E4M3;
    int code = b & 0x7f;
    if (!e4 && code == 0x7c) /* E5M2 keeps F16's infinity (read, never written) */
        return b & 0x80 ? -INFINITY : INFINITY;
    if (code > (e4 ? 0x7e : 0x7c))
        return NAN;
    return (b & 0x80 ? -1.0 : 1.0) * ref_fp8_value(e4, code);
}

void ref_kv_stored_row(kvrt_dtype dtype, const float *x, int32_t head_dim, float *out)
{
    if (ref_kv_fp8(dtype)) {
        for (int32_t i = 0; i < head_dim; i++)
            out[i] = (float)ref_fp8_decode(dtype, ref_fp8_encode(dtype, x[i]));
        return;
    }
    if (dtype == KVRT_DTYPE_F32 || dtype == KVRT_DTYPE_F16) { /* F16 saturates (DESIGN.md), NaN stays NaN */
        for (int32_t i = 0; i < head_dim; i++) {
            float v = x[i] > 65504.0f ? 65504.0f : x[i] < -65504.0f ? -65504.0f : x[i];
            out[i] = dtype == KVRT_DTYPE_F32 ? x[i] : kvrt_fp16_to_f32(kvrt_f32_to_fp16(v));
        }
        return;
    }
    for (int32_t g = 0; g < head_dim / 32; g++) {
        int32_t q[32];
        double d = kvrt_fp16_to_f32(ref_group(dtype, x + g * 32, q));
        for (int i = 0; i < 32; i++)
            out[g * 32 + i] = (float)(q[i] * d);
    }
}
