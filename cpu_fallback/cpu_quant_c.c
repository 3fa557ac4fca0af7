/* Portable row kernels of the types of cpu_quant.h (plain C, any CPU), the
 * per-block group scales every flavour shares, and the kernel selection. */
#include "cpu_quant.h"
#include "cpu_quant_planes.h"
#include "cpu_quant_scales.h"

#include "common/fp16.h"
#include "common/quant.h"

#include <string.h>

void kvrt_cpu_quant_scales(kvrt_dtype type, const void *block, float *s, float *mn)
{
    switch (type) {
    case KVRT_DTYPE_Q2_K: kvrt_qs_q2_K(block, s, mn); break;
    case KVRT_DTYPE_Q3_K: kvrt_qs_q3_K(block, s, mn); break;
    case KVRT_DTYPE_Q4_K:
    case KVRT_DTYPE_Q5_K: kvrt_qs_q45_K(block, s, mn); break;
    case KVRT_DTYPE_Q6_K: kvrt_qs_q6_K(block, s, mn); break;
    case KVRT_DTYPE_IQ4_XS: kvrt_qs_iq4_xs(block, s, mn); break;
    case KVRT_DTYPE_Q4_1:
    case KVRT_DTYPE_Q5_1: kvrt_qs_dm(block, s, mn); break;
    default: kvrt_qs_d(block, s, mn); break; /* q5_0, iq4_nl */
    }
}

void kvrt_cpu_xsum16(const float *x, int64_t n, float *xsum16)
{
    for (int64_t k = 0; k < n / 16; k++, x += 16) {
        float a[4] = {0};
        for (int j = 0; j < 16; j += 4)
            for (int l = 0; l < 4; l++)
                a[l] += x[j + l];
        xsum16[k] = (a[0] + a[1]) + (a[2] + a[3]);
    }
}

/* xs per block: q4_K / q5_K the 8 sub-block sums of x twice (the scales'
 * and the mins' lanes of the kernels' block head), q6_K 1.5 times the 16
 * group sums (the 96 X of 64 F - 96 X over the 64 of the scales). */
static void xprep_planes(const float *x, int64_t n, float *xp, float *xs, int q6)
{
    kvrt_cpu_xsum16(x, n, xs);
    for (int64_t k = 0; k < n / 256; k++, xs += 16) {
        float g16[16];
        memcpy(g16, xs, sizeof(g16));
        for (int g = 0; g < 16; g++)
            xs[g] = q6 ? 1.5f * g16[g] : g16[2 * (g % 8)] + g16[2 * (g % 8) + 1];
    }
    for (int64_t k = 0; k < n / 256; k++, x += 256, xp += 256)
        for (int c = 0; c < 2; c++)
            for (int p = 0; p < 2; p++)
                for (int b = 0; b < 4; b++)
                    for (int L = 0; L < 16; L++)
                        xp[128 * c + 64 * p + 16 * b + L] = x[kvrt_plane_value(q6, c, p, b, L)];
}

void kvrt_cpu_xprep_q45_K(const float *x, int64_t n, float *xp, float *xs)
{
    xprep_planes(x, n, xp, xs, 0);
}

void kvrt_cpu_xprep_q6_K(const float *x, int64_t n, float *xp, float *xs)
{
    xprep_planes(x, n, xp, xs, 1);
}

/* q2_K: x sums as they are; q3_K: 1.5 times (the 12 X of 8 F - 12 X over the 8 of the scales). */
static void xprep_2bit(const float *x, int64_t n, float *xp, float *xs, float sum_factor)
{
    kvrt_cpu_xsum16(x, n, xs);
    for (int64_t g = 0; g < n / 16; g++)
        xs[g] *= sum_factor;
    for (int64_t k = 0; k < n / 256; k++, x += 256, xp += 256)
        for (int f = 0; f < 4; f++)
            for (int b = 0; b < 4; b++)
                for (int L = 0; L < 16; L++)
                    xp[64 * f + 16 * b + L] = x[kvrt_plane_value2(f, b, L)];
}

void kvrt_cpu_xprep_q2_K(const float *x, int64_t n, float *xp, float *xs)
{
    xprep_2bit(x, n, xp, xs, 1.0f);
}

void kvrt_cpu_xprep_q3_K(const float *x, int64_t n, float *xp, float *xs)
{
    xprep_2bit(x, n, xp, xs, 1.5f);
}

/* ---- levels of one group of 16 values ------------------------------------------------ */

/* Nibble of value 16 * g + l (g 0 or 1) of a 16-byte iq4_nl / q4_0-style array. */
static inline int nib(const uint8_t *qs, int g, int l)
{
    return g ? qs[l] >> 4 : qs[l] & 0x0f;
}

static uint32_t qh32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static void levels(kvrt_dtype type, const uint8_t *blk, int g, int32_t lev[16])
{
    switch (type) {
    case KVRT_DTYPE_Q4_1:
        for (int l = 0; l < 16; l++)
            lev[l] = nib(blk + 4, g, l);
        return;
    case KVRT_DTYPE_Q5_0:
    case KVRT_DTYPE_Q5_1: {
        const size_t o = type == KVRT_DTYPE_Q5_0 ? 2 : 4; /* qh after d (and m) */
        const uint32_t h = qh32(blk + o) >> (16 * g);
        for (int l = 0; l < 16; l++)
            lev[l] = nib(blk + o + 4, g, l) + (int)(((h >> l) & 1) << 4) - (type == KVRT_DTYPE_Q5_0 ? 16 : 0);
        return;
    }
    case KVRT_DTYPE_IQ4_NL:
        for (int l = 0; l < 16; l++)
            lev[l] = KVRT_IQ4_VALUES[nib(blk + 2, g, l)];
        return;
    case KVRT_DTYPE_IQ4_XS: {
        const kvrt_block_iq4_xs *b = (const void *)blk;
        for (int l = 0; l < 16; l++)
            lev[l] = KVRT_IQ4_VALUES[nib(b->qs + 16 * (g / 2), g % 2, l)];
        return;
    }
    case KVRT_DTYPE_Q4_K:
    case KVRT_DTYPE_Q5_K: {
        /* sub-block j = g / 2 sits in the low (even j) or high (odd j) nibbles of qs[32 (j / 2) + lane] */
        const int j = g / 2, lane0 = 16 * (g % 2);
        const uint8_t *qs = type == KVRT_DTYPE_Q4_K ? ((const kvrt_block_q4_K *)(const void *)blk)->qs
                                                    : ((const kvrt_block_q5_K *)(const void *)blk)->qs;
        for (int l = 0; l < 16; l++) {
            uint8_t byte = qs[32 * (j / 2) + lane0 + l];
            lev[l] = j % 2 ? byte >> 4 : byte & 0x0f;
            if (type == KVRT_DTYPE_Q5_K)
                lev[l] += ((((const kvrt_block_q5_K *)(const void *)blk)->qh[lane0 + l] >> j) & 1) << 4;
        }
        return;
    }
    case KVRT_DTYPE_Q6_K: {
        const kvrt_block_q6_K *b = (const void *)blk;
        const int h = g / 8, gg = (g % 8) / 2, lane0 = 16 * (g % 2);
        for (int l = 0; l < 16; l++) {
            uint8_t lo = b->ql[64 * h + 32 * (gg % 2) + lane0 + l];
            int q = (gg < 2 ? lo & 0x0f : lo >> 4) | (((b->qh[32 * h + lane0 + l] >> (2 * gg)) & 3) << 4);
            lev[l] = q - 32;
        }
        return;
    }
    case KVRT_DTYPE_Q2_K:
    case KVRT_DTYPE_Q3_K: {
        const int h = g / 8, gg = (g % 8) / 2, lane0 = 16 * (g % 2);
        const uint8_t *qs = type == KVRT_DTYPE_Q2_K ? ((const kvrt_block_q2_K *)(const void *)blk)->qs
                                                    : ((const kvrt_block_q3_K *)(const void *)blk)->qs;
        for (int l = 0; l < 16; l++) {
            lev[l] = (qs[32 * h + lane0 + l] >> (2 * gg)) & 3;
            if (type == KVRT_DTYPE_Q3_K)
                lev[l] += 4 * ((((const kvrt_block_q3_K *)(const void *)blk)->hmask[lane0 + l] >> (4 * h + gg)) & 1) - 4;
        }
        return;
    }
    default: memset(lev, 0, 16 * sizeof(*lev)); return;
    }
}

/* ---- the row kernels, generic over the type -------------------------------------------- */

static inline float qdot_c(kvrt_dtype type, const void *w, const float *x, const float *xs, int64_t n)
{
    const int32_t bv = kvrt_dtype_block_values(type);
    const size_t bb = kvrt_dtype_block_bytes(type);
    const uint8_t *p = w;
    float s[16] = {0}, mn[16] = {0}, total = 0.0f, mins = 0.0f;
    int32_t lev[16];
    for (int64_t k = 0; k < n / bv; k++, p += bb) {
        kvrt_cpu_quant_scales(type, p, s, mn);
        for (int g = 0; g < bv / 16; g++, x += 16, xs++) {
            levels(type, p, g, lev);
            float a[4] = {0};
            for (int l = 0; l < 16; l += 4)
                for (int i = 0; i < 4; i++)
                    a[i] += (float)lev[l + i] * x[l + i];
            total += s[g] * ((a[0] + a[1]) + (a[2] + a[3]));
            mins += mn[g] * xs[0];
        }
    }
    return total - mins;
}

static inline void dequant_c(kvrt_dtype type, const void *w, float *y, int64_t n)
{
    const int32_t bv = kvrt_dtype_block_values(type);
    const size_t bb = kvrt_dtype_block_bytes(type);
    const uint8_t *p = w;
    float s[16] = {0}, mn[16] = {0};
    int32_t lev[16];
    for (int64_t k = 0; k < n / bv; k++, p += bb) {
        kvrt_cpu_quant_scales(type, p, s, mn);
        for (int g = 0; g < bv / 16; g++, y += 16) {
            levels(type, p, g, lev);
            for (int l = 0; l < 16; l++)
                y[l] = s[g] * (float)lev[l] - mn[g];
        }
    }
}

#define KERNELS_C(T, TYPE)                                                                    \
    static float qdot_##T##_c(const void *w, const float *x, const float *xs, int64_t n)     \
    {                                                                                         \
        return qdot_c(TYPE, w, x, xs, n);                                                     \
    }                                                                                         \
    static void dequant_##T##_c(const void *w, float *y, int64_t n)                           \
    {                                                                                         \
        dequant_c(TYPE, w, y, n);                                                             \
    }

KERNELS_C(q4_1, KVRT_DTYPE_Q4_1)
KERNELS_C(q5_0, KVRT_DTYPE_Q5_0)
KERNELS_C(q5_1, KVRT_DTYPE_Q5_1)
KERNELS_C(iq4_nl, KVRT_DTYPE_IQ4_NL)
KERNELS_C(q2_K, KVRT_DTYPE_Q2_K)
KERNELS_C(q3_K, KVRT_DTYPE_Q3_K)
KERNELS_C(q4_K, KVRT_DTYPE_Q4_K)
KERNELS_C(q5_K, KVRT_DTYPE_Q5_K)
KERNELS_C(q6_K, KVRT_DTYPE_Q6_K)
KERNELS_C(iq4_xs, KVRT_DTYPE_IQ4_XS)

#define ROW_C(T, TYPE) {TYPE, qdot_##T##_c, dequant_##T##_c, NULL}
const kvrt_cpu_quant_kernels kvrt_cpu_quant_c[] = {
    ROW_C(q4_1, KVRT_DTYPE_Q4_1),     ROW_C(q5_0, KVRT_DTYPE_Q5_0), ROW_C(q5_1, KVRT_DTYPE_Q5_1),
    ROW_C(iq4_nl, KVRT_DTYPE_IQ4_NL), ROW_C(q2_K, KVRT_DTYPE_Q2_K), ROW_C(q3_K, KVRT_DTYPE_Q3_K),
    ROW_C(q4_K, KVRT_DTYPE_Q4_K),     ROW_C(q5_K, KVRT_DTYPE_Q5_K), ROW_C(q6_K, KVRT_DTYPE_Q6_K),
    ROW_C(iq4_xs, KVRT_DTYPE_IQ4_XS),
};
const int kvrt_cpu_quant_c_count = (int)KVRT_ARRAY_LEN(kvrt_cpu_quant_c);

static const kvrt_cpu_quant_kernels *find(const kvrt_cpu_quant_kernels *t, int n, kvrt_dtype type)
{
    for (int i = 0; i < n; i++)
        if (t[i].type == type)
            return &t[i];
    return NULL;
}

const kvrt_cpu_quant_kernels *kvrt_cpu_quant_kernels_get(kvrt_cpu_isa isa, kvrt_dtype type)
{
    const kvrt_cpu_quant_kernels *k = NULL;
    if (isa >= KVRT_CPU_ISA_AVX512)
        k = find(kvrt_cpu_quant_avx512, kvrt_cpu_quant_avx512_count, type);
    if (!k && isa >= KVRT_CPU_ISA_AVX2)
        k = find(kvrt_cpu_quant_avx2, kvrt_cpu_quant_avx2_count, type);
    if (!k)
        k = find(kvrt_cpu_quant_c, kvrt_cpu_quant_c_count, type);
    return k;
}
