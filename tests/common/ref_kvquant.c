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

void ref_kv_stored_row(kvrt_dtype dtype, const float *x, int32_t head_dim, float *out)
{
    for (int32_t g = 0; g < head_dim / 32; g++) {
        int32_t q[32];
        double d = kvrt_fp16_to_f32(ref_group(dtype, x + g * 32, q));
        for (int i = 0; i < 32; i++)
            out[g * 32 + i] = (float)(q[i] * d);
    }
}
