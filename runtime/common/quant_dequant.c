/* Reference dequantizers of the GGUF block types beyond q8_0/q4_0: they
 * define where each bit of a block goes, and every kernel of every backend
 * is tested against them. Written element by element from the format:
 * readability over speed. */
#include "common/quant.h"
#include "common/fp16.h"

#include <string.h>

/* The 4-bit index of element j (0..31) of a 16-byte nibble array: the low
 * nibbles hold elements 0..15, the high nibbles 16..31. */
static inline int nib32(const uint8_t qs[16], int j)
{
    return j < 16 ? qs[j] & 0x0f : qs[j - 16] >> 4;
}

static inline uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v)); /* little-endian hosts only, as the rest of the reader */
    return v;
}

void kvrt_dequant_q4_1(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q4_1 *b = src;
    for (int64_t k = 0; k < n / KVRT_QK; k++, dst += KVRT_QK) {
        float d = kvrt_fp16_to_f32(b[k].d), m = kvrt_fp16_to_f32(b[k].m);
        for (int j = 0; j < KVRT_QK; j++)
            dst[j] = (float)nib32(b[k].qs, j) * d + m;
    }
}

void kvrt_dequant_q5_0(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q5_0 *b = src;
    for (int64_t k = 0; k < n / KVRT_QK; k++, dst += KVRT_QK) {
        float d = kvrt_fp16_to_f32(b[k].d);
        uint32_t qh = load_u32(b[k].qh);
        for (int j = 0; j < KVRT_QK; j++)
            dst[j] = (float)(nib32(b[k].qs, j) + (int)(((qh >> j) & 1) << 4) - 16) * d;
    }
}

void kvrt_dequant_q5_1(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q5_1 *b = src;
    for (int64_t k = 0; k < n / KVRT_QK; k++, dst += KVRT_QK) {
        float d = kvrt_fp16_to_f32(b[k].d), m = kvrt_fp16_to_f32(b[k].m);
        uint32_t qh = load_u32(b[k].qh);
        for (int j = 0; j < KVRT_QK; j++)
            dst[j] = (float)(nib32(b[k].qs, j) + (int)(((qh >> j) & 1) << 4)) * d + m;
    }
}

void kvrt_dequant_iq4_nl(const void *src, float *dst, int64_t n)
{
    const kvrt_block_iq4_nl *b = src;
    for (int64_t k = 0; k < n / KVRT_QK; k++, dst += KVRT_QK) {
        float d = kvrt_fp16_to_f32(b[k].d);
        for (int j = 0; j < KVRT_QK; j++)
            dst[j] = (float)KVRT_IQ4_VALUES[nib32(b[k].qs, j)] * d;
    }
}

/* q2_K, q3_K and q6_K store low bits in 128-value halves: within half h,
 * element r (0..127) is group g = r / 32 and lane l = r % 32; the 2-bit
 * fields of a group sit at bit 2g of the half's 32 bytes, byte l. Scales
 * are per 16 values, in element order (index e / 16). */
void kvrt_dequant_q2_K(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q2_K *b = src;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, dst += KVRT_QK_K) {
        float d = kvrt_fp16_to_f32(b[k].d), dmin = kvrt_fp16_to_f32(b[k].dmin);
        for (int e = 0; e < KVRT_QK_K; e++) {
            int h = e / 128, g = (e % 128) / 32, l = e % 32;
            int q = (b[k].qs[32 * h + l] >> (2 * g)) & 3;
            uint8_t s = b[k].scales[e / 16];
            dst[e] = d * (float)(s & 0x0f) * (float)q - dmin * (float)(s >> 4);
        }
    }
}

/* q3_K: value = d * scale * (low 2 bits + 4 * third bit - 4); the third bit
 * of element e is bit e / 32 of hmask[e % 32]. */
void kvrt_dequant_q3_K(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q3_K *b = src;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, dst += KVRT_QK_K) {
        float d = kvrt_fp16_to_f32(b[k].d);
        int8_t sc[16];
        kvrt_q3k_scales(b[k].scales, sc);
        for (int e = 0; e < KVRT_QK_K; e++) {
            int h = e / 128, g = (e % 128) / 32, l = e % 32;
            int lo = (b[k].qs[32 * h + l] >> (2 * g)) & 3;
            int hi = (b[k].hmask[l] >> (e / 32)) & 1;
            dst[e] = d * (float)sc[e / 16] * (float)(lo + 4 * hi - 4);
        }
    }
}

/* q4_K / q5_K: 8 sub-blocks of 32; sub-blocks 2p and 2p+1 share the 32
 * bytes qs[32p ..]: low nibbles for 2p, high nibbles for 2p+1. q5_K's fifth
 * bit of element e is bit e / 32 of qh[e % 32]. */
void kvrt_dequant_q4_K(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q4_K *b = src;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, dst += KVRT_QK_K) {
        float d = kvrt_fp16_to_f32(b[k].d), dmin = kvrt_fp16_to_f32(b[k].dmin);
        for (int e = 0; e < KVRT_QK_K; e++) {
            int s = e / 32, l = e % 32;
            uint8_t sc, m;
            kvrt_q4k_scale_min(b[k].scales, s, &sc, &m);
            uint8_t byte = b[k].qs[32 * (s / 2) + l];
            int q = s % 2 ? byte >> 4 : byte & 0x0f;
            dst[e] = d * (float)sc * (float)q - dmin * (float)m;
        }
    }
}

void kvrt_dequant_q5_K(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q5_K *b = src;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, dst += KVRT_QK_K) {
        float d = kvrt_fp16_to_f32(b[k].d), dmin = kvrt_fp16_to_f32(b[k].dmin);
        for (int e = 0; e < KVRT_QK_K; e++) {
            int s = e / 32, l = e % 32;
            uint8_t sc, m;
            kvrt_q4k_scale_min(b[k].scales, s, &sc, &m);
            uint8_t byte = b[k].qs[32 * (s / 2) + l];
            int q = (s % 2 ? byte >> 4 : byte & 0x0f) + 16 * ((b[k].qh[l] >> s) & 1);
            dst[e] = d * (float)sc * (float)q - dmin * (float)m;
        }
    }
}

/* q6_K: value = d * scale * (q - 32), q 6 bits. In half h, group g, lane l:
 * the low 4 bits are the low (g < 2) or high (g >= 2) nibble of
 * ql[64h + 32(g % 2) + l], the high 2 bits are bits 2g of qh[32h + l]. */
void kvrt_dequant_q6_K(const void *src, float *dst, int64_t n)
{
    const kvrt_block_q6_K *b = src;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, dst += KVRT_QK_K) {
        float d = kvrt_fp16_to_f32(b[k].d);
        for (int e = 0; e < KVRT_QK_K; e++) {
            int h = e / 128, g = (e % 128) / 32, l = e % 32;
            uint8_t lo = b[k].ql[64 * h + 32 * (g % 2) + l];
            int q = (g < 2 ? lo & 0x0f : lo >> 4) | (((b[k].qh[32 * h + l] >> (2 * g)) & 3) << 4);
            dst[e] = d * (float)b[k].scales[e / 16] * (float)(q - 32);
        }
    }
}

/* iq4_xs: 8 sub-blocks of 32 with 6-bit scales (offset 32): low 4 bits in
 * scales_l (sub-block s in nibble s % 2 of byte s / 2), high 2 bits at bit
 * 2s of scales_h; each sub-block's 16 bytes are laid out as an iq4_nl block. */
void kvrt_dequant_iq4_xs(const void *src, float *dst, int64_t n)
{
    const kvrt_block_iq4_xs *b = src;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++) {
        float d = kvrt_fp16_to_f32(b[k].d);
        for (int s = 0; s < 8; s++, dst += 32) {
            int ls = ((b[k].scales_l[s / 2] >> (4 * (s % 2))) & 0x0f) | (((b[k].scales_h >> (2 * s)) & 3) << 4);
            float dl = d * (float)(ls - 32);
            for (int j = 0; j < 32; j++)
                dst[j] = dl * (float)KVRT_IQ4_VALUES[nib32(b[k].qs + 16 * s, j)];
        }
    }
}
