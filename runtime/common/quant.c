/* The weight type table and reference conversions between F32 and the
 * weight types of GGUF (the 32-value legacy types here; the others in
 * quant_dequant.c and quant_make.c). */
#include "common/quant.h"
#include "common/fp16.h"

#include <ctype.h>
#include <math.h>
#include <string.h>

const int8_t KVRT_IQ4_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

typedef void (*quant_fn)(const float *src, void *dst, int64_t n);
typedef void (*dequant_fn)(const void *src, float *dst, int64_t n);

static void quantize_q8_0(const float *x, void *dst, int64_t n);
static void quantize_q4_0(const float *x, void *dst, int64_t n);
static void dequantize_q8_0(const void *src, float *dst, int64_t n);
static void dequantize_q4_0(const void *src, float *dst, int64_t n);

/* One row per type kvrt runs. f16_fields: byte offsets of the block's f16
 * scales (checked for NaN/inf at load). */
typedef struct type_info {
    kvrt_dtype type;
    int32_t block_values;
    uint16_t block_bytes;
    uint8_t n_f16_fields;
    uint8_t f16_fields[2];
    quant_fn quant;
    dequant_fn dequant;
} type_info;

static const type_info types[] = {
    {KVRT_DTYPE_F32, 1, 4, 0, {0, 0}, NULL, NULL},
    {KVRT_DTYPE_F16, 1, 2, 0, {0, 0}, NULL, NULL},
    {KVRT_DTYPE_Q4_0, KVRT_QK, 18, 1, {0, 0}, quantize_q4_0, dequantize_q4_0},
    {KVRT_DTYPE_Q4_1, KVRT_QK, 20, 2, {0, 2}, kvrt_quant_q4_1, kvrt_dequant_q4_1},
    {KVRT_DTYPE_Q5_0, KVRT_QK, 22, 1, {0, 0}, kvrt_quant_q5_0, kvrt_dequant_q5_0},
    {KVRT_DTYPE_Q5_1, KVRT_QK, 24, 2, {0, 2}, kvrt_quant_q5_1, kvrt_dequant_q5_1},
    {KVRT_DTYPE_Q8_0, KVRT_QK, 34, 1, {0, 0}, quantize_q8_0, dequantize_q8_0},
    {KVRT_DTYPE_Q2_K, KVRT_QK_K, 84, 2, {80, 82}, kvrt_quant_q2_K, kvrt_dequant_q2_K},
    {KVRT_DTYPE_Q3_K, KVRT_QK_K, 110, 1, {108, 0}, kvrt_quant_q3_K, kvrt_dequant_q3_K},
    {KVRT_DTYPE_Q4_K, KVRT_QK_K, 144, 2, {0, 2}, kvrt_quant_q4_K, kvrt_dequant_q4_K},
    {KVRT_DTYPE_Q5_K, KVRT_QK_K, 176, 2, {0, 2}, kvrt_quant_q5_K, kvrt_dequant_q5_K},
    {KVRT_DTYPE_Q6_K, KVRT_QK_K, 210, 1, {208, 0}, kvrt_quant_q6_K, kvrt_dequant_q6_K},
    {KVRT_DTYPE_IQ4_NL, KVRT_QK, 18, 1, {0, 0}, kvrt_quant_iq4_nl, kvrt_dequant_iq4_nl},
    {KVRT_DTYPE_IQ4_XS, KVRT_QK_K, 136, 1, {0, 0}, kvrt_quant_iq4_xs, kvrt_dequant_iq4_xs},
    {KVRT_DTYPE_BF16, 1, 2, 0, {0, 0}, NULL, NULL},
};

const kvrt_dtype KVRT_WEIGHT_TYPES[] = {
    KVRT_DTYPE_F32,  KVRT_DTYPE_F16,  KVRT_DTYPE_Q4_0,   KVRT_DTYPE_Q4_1, KVRT_DTYPE_Q5_0,
    KVRT_DTYPE_Q5_1, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q2_K,   KVRT_DTYPE_Q3_K, KVRT_DTYPE_Q4_K,
    KVRT_DTYPE_Q5_K, KVRT_DTYPE_Q6_K, KVRT_DTYPE_IQ4_NL, KVRT_DTYPE_IQ4_XS, KVRT_DTYPE_BF16,
};
const int KVRT_N_WEIGHT_TYPES = (int)KVRT_ARRAY_LEN(KVRT_WEIGHT_TYPES);
_Static_assert(KVRT_ARRAY_LEN(KVRT_WEIGHT_TYPES) == KVRT_ARRAY_LEN(types), "one table row per weight type");

static const type_info *info(kvrt_dtype type)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(types); i++)
        if (types[i].type == type)
            return &types[i];
    return NULL;
}

bool kvrt_dtype_supported(kvrt_dtype type)
{
    return info(type) != NULL;
}

int32_t kvrt_dtype_block_values(kvrt_dtype type)
{
    const type_info *t = info(type);
    return t ? t->block_values : 0;
}

size_t kvrt_dtype_block_bytes(kvrt_dtype type)
{
    const type_info *t = info(type);
    return t ? t->block_bytes : 0;
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

bool kvrt_dtype_from_name(const char *name, kvrt_dtype *out)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(types); i++) {
        const char *tn = kvrt_dtype_name(types[i].type);
        size_t k = 0;
        while (tn[k] && name[k] && tolower((unsigned char)tn[k]) == tolower((unsigned char)name[k]))
            k++;
        if (!tn[k] && !name[k]) {
            *out = types[i].type;
            return true;
        }
    }
    return false;
}

bool kvrt_dtype_row_scales_finite(kvrt_dtype type, const void *row, int64_t n, int64_t *bad_block)
{
    const type_info *t = info(type);
    if (!t || t->n_f16_fields == 0)
        return true;
    const uint8_t *p = row;
    for (int64_t b = 0; b < n / t->block_values; b++, p += t->block_bytes) {
        for (int f = 0; f < t->n_f16_fields; f++) {
            uint16_t h;
            memcpy(&h, p + t->f16_fields[f], sizeof(h));
            if ((h & 0x7c00) == 0x7c00) { /* exponent all ones: inf or NaN */
                *bad_block = b;
                return false;
            }
        }
    }
    return true;
}

/* ---- q8_0 and q4_0 ------------------------------------------------------------ */

static void quantize_q8_0(const float *x, void *dst, int64_t n)
{
    kvrt_block_q8_0 *y = dst;
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

static void quantize_q4_0(const float *x, void *dst, int64_t n)
{
    kvrt_block_q4_0 *y = dst;
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

static void dequantize_q8_0(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q8_0 *b = src;
    for (int64_t k = 0; k < n / KVRT_QK; k++) {
        float d = kvrt_fp16_to_f32(b[k].d);
        for (int j = 0; j < KVRT_QK; j++)
            dst[k * KVRT_QK + j] = (float)b[k].qs[j] * d;
    }
}

static void dequantize_q4_0(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q4_0 *b = src;
    for (int64_t k = 0; k < n / KVRT_QK; k++) {
        float d = kvrt_fp16_to_f32(b[k].d);
        for (int j = 0; j < KVRT_QK / 2; j++) {
            dst[k * KVRT_QK + j] = (float)((b[k].qs[j] & 0x0f) - 8) * d;
            dst[k * KVRT_QK + j + KVRT_QK / 2] = (float)((b[k].qs[j] >> 4) - 8) * d;
        }
    }
}

/* ---- row dispatch ------------------------------------------------------------- */

void kvrt_quantize_row(kvrt_dtype type, const float *src, void *dst, int64_t n)
{
    switch (type) {
    case KVRT_DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case KVRT_DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = kvrt_f32_to_fp16(src[i]);
        return;
    case KVRT_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = kvrt_f32_to_bf16(src[i]);
        return;
    default: {
        const type_info *t = info(type);
        if (t && t->quant)
            t->quant(src, dst, n);
    }
    }
}

void kvrt_dequantize_row(kvrt_dtype type, const void *src, float *dst, int64_t n)
{
    switch (type) {
    case KVRT_DTYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case KVRT_DTYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = kvrt_fp16_to_f32(((const uint16_t *)src)[i]);
        return;
    case KVRT_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = kvrt_bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    default: {
        const type_info *t = info(type);
        if (t && t->dequant)
            t->dequant(src, dst, n);
    }
    }
}
