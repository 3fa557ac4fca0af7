/* Group scales of the block types of cpu_quant.h, shared by every
 * flavour's kernels: per group of 16 values, s and mn with
 * value = s * level - mn, each computed as the reference dequantizer
 * (common/quant_dequant.c) computes it, so dequantized values match it
 * bit for bit. Plain C (the scale fields are few per block). */
#ifndef KVRT_CPU_QUANT_SCALES_H
#define KVRT_CPU_QUANT_SCALES_H

#include "common/fp16.h"
#include "common/quant.h"

#include <string.h>


static inline void kvrt_qs_q2_K(const void *blk, float *s, float *mn)
{
    const kvrt_block_q2_K *b = blk;
    const float d = kvrt_fp16_to_f32(b->d), dmin = kvrt_fp16_to_f32(b->dmin);
    for (int g = 0; g < 16; g++) {
        s[g] = d * (float)(b->scales[g] & 0x0f);
        mn[g] = dmin * (float)(b->scales[g] >> 4);
    }
}

static inline void kvrt_qs_q3_K(const void *blk, float *s, float *mn)
{
    const kvrt_block_q3_K *b = blk;
    const float d = kvrt_fp16_to_f32(b->d);
    int8_t sc[16];
    kvrt_q3k_scales(b->scales, sc);
    for (int g = 0; g < 16; g++) {
        s[g] = d * (float)sc[g];
        mn[g] = 0.0f;
    }
}

/* q4_K and q5_K share the block head (d, dmin, scales). */
static inline void kvrt_qs_q45_K(const void *blk, float *s, float *mn)
{
    const kvrt_block_q4_K *b = blk;
    const float d = kvrt_fp16_to_f32(b->d), dmin = kvrt_fp16_to_f32(b->dmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        kvrt_q4k_scale_min(b->scales, j, &sc, &m);
        s[2 * j] = s[2 * j + 1] = d * (float)sc;
        mn[2 * j] = mn[2 * j + 1] = dmin * (float)m;
    }
}

static inline void kvrt_qs_q6_K(const void *blk, float *s, float *mn)
{
    const kvrt_block_q6_K *b = blk;
    const float d = kvrt_fp16_to_f32(b->d);
    for (int g = 0; g < 16; g++) {
        s[g] = d * (float)b->scales[g];
        mn[g] = 0.0f;
    }
}

static inline void kvrt_qs_iq4_xs(const void *blk, float *s, float *mn)
{
    const kvrt_block_iq4_xs *b = blk;
    const float d = kvrt_fp16_to_f32(b->d);
    for (int j = 0; j < 8; j++) {
        int ls = ((b->scales_l[j / 2] >> (4 * (j % 2))) & 0x0f) | (((b->scales_h >> (2 * j)) & 3) << 4);
        s[2 * j] = s[2 * j + 1] = d * (float)(ls - 32);
        mn[2 * j] = mn[2 * j + 1] = 0.0f;
    }
}

/* 32-value blocks: f16 d first; q4_1 and q5_1 then hold f16 m (value d q + m). */
static inline void kvrt_qs_d(const void *blk, float *s, float *mn)
{
    uint16_t d;
    memcpy(&d, blk, sizeof(d));
    s[0] = s[1] = kvrt_fp16_to_f32(d);
    mn[0] = mn[1] = 0.0f;
}

static inline void kvrt_qs_dm(const void *blk, float *s, float *mn)
{
    uint16_t h[2];
    memcpy(h, blk, sizeof(h));
    s[0] = s[1] = kvrt_fp16_to_f32(h[0]);
    mn[0] = mn[1] = -kvrt_fp16_to_f32(h[1]);
}

#endif /* KVRT_CPU_QUANT_SCALES_H */
