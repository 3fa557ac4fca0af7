/* Reference conversions between F32 and the weight types of GGUF. */
#include "common/quant.h"
#include "common/fp16.h"

#include <math.h>
#include <string.h>

bool kvrt_dtype_supported(kvrt_dtype type)
{
    return kvrt_dtype_block_values(type) != 0;
}

int32_t kvrt_dtype_block_values(kvrt_dtype type)
{
    switch (type) {
    case KVRT_DTYPE_F32:
    case KVRT_DTYPE_F16:
    case KVRT_DTYPE_BF16: return 1;
    case KVRT_DTYPE_Q8_0:
    case KVRT_DTYPE_Q4_0: return KVRT_QK;
    }
    return 0;
}

size_t kvrt_dtype_block_bytes(kvrt_dtype type)
{
    switch (type) {
    case KVRT_DTYPE_F32: return 4;
    case KVRT_DTYPE_F16:
    case KVRT_DTYPE_BF16: return 2;
    case KVRT_DTYPE_Q8_0: return sizeof(kvrt_block_q8_0);
    case KVRT_DTYPE_Q4_0: return sizeof(kvrt_block_q4_0);
    }
    return 0;
}

size_t kvrt_dtype_row_bytes(kvrt_dtype type, int64_t n)
{
    int32_t bv = kvrt_dtype_block_values(type);
    if (bv == 0 || n < 0 || n % bv != 0)
        return 0;
    size_t bytes;
    if (!kvrt_mul_size((size_t)(n / bv), kvrt_dtype_block_bytes(type), &bytes))
        return 0;
    return bytes;
}

static void quantize_q8_0(const float *x, kvrt_block_q8_0 *y, int64_t n)
{
    for (int64_t b = 0; b < n / KVRT_QK; b++, x += KVRT_QK) {
        float amax = 0.0f;
        for (int j = 0; j < KVRT_QK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = kvrt_f32_to_fp16(d);
        for (int j = 0; j < KVRT_QK; j++)
            y[b].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quantize_q4_0(const float *x, kvrt_block_q4_0 *y, int64_t n)
{
    for (int64_t b = 0; b < n / KVRT_QK; b++, x += KVRT_QK) {
        float amax = 0.0f, max = 0.0f; /* max keeps the sign of the largest magnitude */
        for (int j = 0; j < KVRT_QK; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = kvrt_f32_to_fp16(d);
        for (int j = 0; j < KVRT_QK / 2; j++) {
            int lo = (int)(x[j] * id + 8.5f);
            int hi = (int)(x[j + KVRT_QK / 2] * id + 8.5f);
            lo = lo > 15 ? 15 : lo;
            hi = hi > 15 ? 15 : hi;
            y[b].qs[j] = (uint8_t)(lo | (hi << 4));
        }
    }
}

void kvrt_quantize_row(kvrt_dtype type, const float *src, void *dst, int64_t n)
{
    switch (type) {
    case KVRT_DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case KVRT_DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = kvrt_f32_to_fp16(src[i]);
        break;
    case KVRT_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = kvrt_f32_to_bf16(src[i]);
        break;
    case KVRT_DTYPE_Q8_0: quantize_q8_0(src, dst, n); break;
    case KVRT_DTYPE_Q4_0: quantize_q4_0(src, dst, n); break;
    }
}

void kvrt_dequantize_row(kvrt_dtype type, const void *src, float *dst, int64_t n)
{
    switch (type) {
    case KVRT_DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case KVRT_DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = kvrt_fp16_to_f32(((const uint16_t *)src)[i]);
        break;
    case KVRT_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = kvrt_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case KVRT_DTYPE_Q8_0: {
        const kvrt_block_q8_0 *b = src;
        for (int64_t k = 0; k < n / KVRT_QK; k++) {
            float d = kvrt_fp16_to_f32(b[k].d);
            for (int j = 0; j < KVRT_QK; j++)
                dst[k * KVRT_QK + j] = (float)b[k].qs[j] * d;
        }
        break;
    }
    case KVRT_DTYPE_Q4_0: {
        const kvrt_block_q4_0 *b = src;
        for (int64_t k = 0; k < n / KVRT_QK; k++) {
            float d = kvrt_fp16_to_f32(b[k].d);
            for (int j = 0; j < KVRT_QK / 2; j++) {
                dst[k * KVRT_QK + j] = (float)((b[k].qs[j] & 0x0f) - 8) * d;
                dst[k * KVRT_QK + j + KVRT_QK / 2] = (float)((b[k].qs[j] >> 4) - 8) * d;
            }
        }
        break;
    }
    }
}
