/* AVX-512 row kernels of the types of cpu_quant.h (AVX-512 F/BW/VL/DQ with
 * FMA and F16C, chosen at run time). A group of 16 values is one zmm:
 * bytes zero-extended to 32-bit lanes, nibbles and bit fields one mask or
 * shift away, fifth / third bits merged under a k-mask, iq4 code-book
 * values looked up with one permute of a 16-float table. */
#include "cpu_quant.h"
#include "cpu_quant_planes.h"
#include "cpu_quant_scales.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define KQ512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

/* 16 bytes at p, zero-extended to 16 lanes. */
KQ512 static inline __m512i u8x16(const uint8_t *p)
{
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* The low (hi == 0) or high nibbles of 16 bytes. */
KQ512 static inline __m512i nib16(const uint8_t *p, int hi)
{
    __m512i b = u8x16(p);
    return hi ? _mm512_srli_epi32(b, 4) : _mm512_and_si512(b, _mm512_set1_epi32(0x0f));
}

/* Lanes >> count (a run-time count). */
KQ512 static inline __m512i shr(__m512i v, int count)
{
    return _mm512_srl_epi32(v, _mm_cvtsi32_si128(count));
}

KQ512 static inline __m512 iq4_table(void)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)KVRT_IQ4_VALUES)));
}

static inline uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* ---- levels of group g (16 values) of a block, as floats -------------------------------- */

KQ512 static inline __m512 lv_q4_1(const uint8_t *b, int g, __m512 tab)
{
    (void)tab;
    return _mm512_cvtepi32_ps(nib16(b + 4, g));
}

/* q5_0 (o = 2, offset 16) and q5_1 (o = 4, no offset): the fifth bits are
 * the 16-bit half g of qh, one bit per lane: a k-mask as it stands. */
KQ512 static inline __m512 lv_q5(const uint8_t *b, int g, size_t o, int offset)
{
    const __mmask16 k = (__mmask16)(load_u32(b + o) >> (16 * g));
    __m512i q = nib16(b + o + 4, g);
    q = _mm512_mask_or_epi32(q, k, q, _mm512_set1_epi32(16));
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(offset)));
}

KQ512 static inline __m512 lv_q5_0(const uint8_t *b, int g, __m512 tab)
{
    (void)tab;
    return lv_q5(b, g, 2, 16);
}

KQ512 static inline __m512 lv_q5_1(const uint8_t *b, int g, __m512 tab)
{
    (void)tab;
    return lv_q5(b, g, 4, 0);
}

/* permutexvar reads the low 4 bits of each index lane: no mask needed */
KQ512 static inline __m512 lv_iq4_nl(const uint8_t *b, int g, __m512 tab)
{
    __m512i i = u8x16(b + 2);
    return _mm512_permutexvar_ps(g ? _mm512_srli_epi32(i, 4) : i, tab);
}

KQ512 static inline __m512 lv_iq4_xs(const uint8_t *b, int g, __m512 tab)
{
    __m512i i = u8x16(((const kvrt_block_iq4_xs *)(const void *)b)->qs + 16 * (g / 2));
    return _mm512_permutexvar_ps(g % 2 ? _mm512_srli_epi32(i, 4) : i, tab);
}

/* q4_K / q5_K: sub-block j = g / 2 in the low (even j) or high nibbles of qs[32 (j / 2) ..]. */
KQ512 static inline __m512 lv_q4_K(const uint8_t *b, int g, __m512 tab)
{
    (void)tab;
    const int j = g / 2;
    return _mm512_cvtepi32_ps(nib16(((const kvrt_block_q4_K *)(const void *)b)->qs + 32 * (j / 2) + 16 * (g % 2), j % 2));
}

KQ512 static inline __m512 lv_q5_K(const uint8_t *b, int g, __m512 tab)
{
    (void)tab;
    const kvrt_block_q5_K *q5 = (const void *)b;
    const int j = g / 2;
    __m512i q = nib16(q5->qs + 32 * (j / 2) + 16 * (g % 2), j % 2);
    const __mmask16 k = _mm512_test_epi32_mask(u8x16(q5->qh + 16 * (g % 2)), _mm512_set1_epi32(1 << j));
    return _mm512_cvtepi32_ps(_mm512_mask_or_epi32(q, k, q, _mm512_set1_epi32(16)));
}

/* q6_K: half h, group of 32 gg, lanes 16 (g % 2) ..; low nibbles of ql for
 * gg < 2, high for gg >= 2; high 2 bits at 2 gg of qh. */
KQ512 static inline __m512 lv_q6_K(const uint8_t *b, int g, __m512 tab)
{
    (void)tab;
    const kvrt_block_q6_K *q6 = (const void *)b;
    const int h = g / 8, gg = (g % 8) / 2, l0 = 16 * (g % 2);
    __m512i lo = nib16(q6->ql + 64 * h + 32 * (gg % 2) + l0, gg >= 2);
    __m512i hi = _mm512_and_si512(shr(u8x16(q6->qh + 32 * h + l0), 2 * gg), _mm512_set1_epi32(3));
    __m512i q = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 4));
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(32)));
}

/* q2_K / q3_K: 2-bit fields at bit 2 gg of qs[32 h + lane]. */
KQ512 static inline __m512i two_bits(const uint8_t *qs, int g)
{
    const int h = g / 8, gg = (g % 8) / 2;
    return _mm512_and_si512(shr(u8x16(qs + 32 * h + 16 * (g % 2)), 2 * gg), _mm512_set1_epi32(3));
}

KQ512 static inline __m512 lv_q2_K(const uint8_t *b, int g, __m512 tab)
{
    (void)tab;
    return _mm512_cvtepi32_ps(two_bits(((const kvrt_block_q2_K *)(const void *)b)->qs, g));
}

/* q3_K: level = low 2 bits + 4 * third bit - 4; the third bit of value e is bit e / 32 of hmask[e % 32] */
KQ512 static inline __m512 lv_q3_K(const uint8_t *b, int g, __m512 tab)
{
    (void)tab;
    const kvrt_block_q3_K *q3 = (const void *)b;
    __m512i q = _mm512_sub_epi32(two_bits(q3->qs, g), _mm512_set1_epi32(4));
    const __mmask16 k = _mm512_test_epi32_mask(u8x16(q3->hmask + 16 * (g % 2)), _mm512_set1_epi32(1 << (g / 2)));
    return _mm512_cvtepi32_ps(_mm512_mask_add_epi32(q, k, q, _mm512_set1_epi32(4)));
}

/* ---- the row kernels ----------------------------------------------------------------------- */

/* qdot and dequant of one type: BV values per block, SCALES the group
 * scales, LV the levels, MINS whether mn can be non-zero. Four
 * accumulators keep four FMA chains in flight. */
#define QDOT_512(T, BV, SCALES, LV, MINS)                                                                 \
    KQ512 static float qdot_##T##_avx512(const void *w, const float *x, const float *xs, int64_t n)      \
    {                                                                                                     \
        const uint8_t *p = w;                                                                             \
        const __m512 tab = iq4_table();                                                                   \
        __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()}; \
        float s[16] = {0}, mn[16] = {0}, mins = 0.0f;                                                               \
        for (int64_t k = 0; k < n / (BV); k++, p += sizeof(kvrt_block_##T), x += (BV), xs += (BV) / 16) {  \
            SCALES(p, s, mn);                                                                             \
            for (int g = 0; g < (BV) / 16; g++)                                                           \
                a[g % 4] = _mm512_fmadd_ps(_mm512_set1_ps(s[g]),                                          \
                                           _mm512_mul_ps(LV(p, g, tab), _mm512_loadu_ps(x + 16 * g)), a[g % 4]); \
            if (MINS)                                                                                     \
                for (int g = 0; g < (BV) / 16; g++)                                                       \
                    mins += mn[g] * xs[g];                                                                \
        }                                                                                                 \
        return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]))) - mins; \
    }
#define DEQUANT_512(T, BV, SCALES, LV)                                                                    \
    KQ512 static void dequant_##T##_avx512(const void *w, float *y, int64_t n)                            \
    {                                                                                                     \
        const uint8_t *p = w;                                                                             \
        const __m512 tab = iq4_table();                                                                   \
        float s[16] = {0}, mn[16] = {0};                                                                            \
        for (int64_t k = 0; k < n / (BV); k++, p += sizeof(kvrt_block_##T), y += (BV)) {                   \
            SCALES(p, s, mn);                                                                             \
            for (int g = 0; g < (BV) / 16; g++)                                                           \
                _mm512_storeu_ps(y + 16 * g, _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(s[g]), LV(p, g, tab)), \
                                                           _mm512_set1_ps(mn[g])));                       \
        }                                                                                                 \
    }

#define KERNELS_512(T, BV, SCALES, LV, MINS) QDOT_512(T, BV, SCALES, LV, MINS) DEQUANT_512(T, BV, SCALES, LV)

KERNELS_512(q4_1, 32, kvrt_qs_dm, lv_q4_1, 1)
KERNELS_512(q5_0, 32, kvrt_qs_d, lv_q5_0, 0)
KERNELS_512(q5_1, 32, kvrt_qs_dm, lv_q5_1, 1)
KERNELS_512(iq4_nl, 32, kvrt_qs_d, lv_iq4_nl, 0)
/* the k-quants: dot products by the plane kernels below */
DEQUANT_512(q2_K, 256, kvrt_qs_q2_K, lv_q2_K)
DEQUANT_512(q3_K, 256, kvrt_qs_q3_K, lv_q3_K)
DEQUANT_512(q4_K, 256, kvrt_qs_q45_K, lv_q4_K)
DEQUANT_512(q5_K, 256, kvrt_qs_q45_K, lv_q5_K)
DEQUANT_512(q6_K, 256, kvrt_qs_q6_K, lv_q6_K)
KERNELS_512(iq4_xs, 256, kvrt_qs_iq4_xs, lv_iq4_xs, 0)


/* ---- plane kernels of q4_K, q5_K, q6_K (cpu_quant_planes.h) ---------------------------------- */

/* (t & mant) | bits of 1.0f: the w-bit level at the top of the mantissa, i.e. 1 + q / 2^w */
KQ512 static inline __m512 one_plus(__m512i t, __m512i mant)
{
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(t, mant, _mm512_set1_epi32(0x3f800000), 0xea));
}

/* p shifted left by s bits (right by -s); s a constant once inlined */
KQ512 static inline __m512i shift_to(__m512i p, const int s)
{
    return s >= 0 ? _mm512_slli_epi32(p, (unsigned)s) : _mm512_srli_epi32(p, (unsigned)-s);
}

/* sum over the 4 bytes b of plane p of (1 + q / 2^w) * xp[16 b ..], q the
 * w bits at bit o of each byte (garbage above and below): per lane, 4 values
 * of the lane's group. One FMA chain: the planes of a block are
 * independent of each other. */
KQ512 static inline __m512 plane_dot_at(__m512i p, const int w, const int o, const float *xp)
{
    const __m512i m = _mm512_set1_epi32(((1 << w) - 1) << (23 - w));
    __m512 a = _mm512_mul_ps(one_plus(shift_to(p, 23 - w - o), m), _mm512_loadu_ps(xp));
    a = _mm512_fmadd_ps(one_plus(shift_to(p, 15 - w - o), m), _mm512_loadu_ps(xp + 16), a);
    a = _mm512_fmadd_ps(one_plus(shift_to(p, 7 - w - o), m), _mm512_loadu_ps(xp + 32), a);
    return _mm512_fmadd_ps(one_plus(shift_to(p, -1 - w - o), m), _mm512_loadu_ps(xp + 48), a);
}

KQ512 static inline __m512 plane_dot(__m512i p, const int w, const float *xp)
{
    return plane_dot_at(p, w, 0, xp);
}

/* bits of a where m is set, else of b */
KQ512 static inline __m512i select_bits(__m512i m, __m512i a, __m512i b)
{
    return _mm512_ternarylogic_epi32(m, a, b, 0xca);
}

/* q4_K / q5_K block head: [2^w d sc_0..7, dmin m_0..7] as floats. */
KQ512 static inline __m512 q45_head(const kvrt_block_q4_K *b, float two_w)
{
    uint32_t u[3], dd;
    memcpy(u, b->scales, sizeof(u));
    memcpy(&dd, b, sizeof(dd)); /* d, dmin */
    /* sub-blocks 0..3: 6 low bits of bytes 0..3 (scales) and 4..7 (mins); 4..7: a nibble of bytes
     * 8..11 with the top two bits of bytes 0..3 / 4..7 above it */
    const uint64_t sc = (u[0] & 0x3f3f3f3fu) | (uint64_t)((u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u)) << 32;
    const uint64_t mn =
        (u[1] & 0x3f3f3f3fu) | (uint64_t)(((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u)) << 32;
    const __m512 ddv = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi32_si128((int)dd)));
    const __m512 f = _mm512_mul_ps(
        _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), ddv),
        _mm512_setr_ps(two_w, two_w, two_w, two_w, two_w, two_w, two_w, two_w, 1, 1, 1, 1, 1, 1, 1, 1));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_set_epi64x((long long)mn, (long long)sc))), f);
}

/* Per lane L of plane (c, p): the sub-block of q4_K / q5_K (kvrt_plane_value / 32) */
KQ512 static inline __m512i groups_q45(int c, int p)
{
    const int a = 4 * c + p, e = a + 2;
    return _mm512_setr_epi32(a, a, a, a, a, a, a, a, e, e, e, e, e, e, e, e);
}

/* ... and the group of 16 of q6_K (kvrt_plane_value / 16). */
KQ512 static inline __m512i groups_q6(int c, int p)
{
    const int g = 8 * c + 4 * p;
    return _mm512_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1, g + 2, g + 2, g + 2, g + 2, g + 3, g + 3, g + 3,
                             g + 3);
}

KQ512 static float qdot_q4_K_planes(const void *w, const float *xp, const float *xs, int64_t n)
{
    const kvrt_block_q4_K *b = w;
    const __m512i g00 = groups_q45(0, 0), g01 = groups_q45(0, 1);
    const __m512i g10 = groups_q45(1, 0), g11 = groups_q45(1, 1);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), corr = _mm512_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, b++, xp += 256, xs += 16) {
        const __m512 head = q45_head(b, 16.0f);
        const __m512i q0 = _mm512_loadu_si512(b->qs), q1 = _mm512_loadu_si512(b->qs + 64);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(g00, head), plane_dot(q0, 4, xp), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(g01, head), plane_dot(_mm512_srli_epi32(q0, 4), 4, xp + 64), acc1);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(g10, head), plane_dot(q1, 4, xp + 128), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(g11, head), plane_dot(_mm512_srli_epi32(q1, 4), 4, xp + 192), acc1);
        corr = _mm512_fmadd_ps(head, _mm512_loadu_ps(xs), corr); /* xs: sub-block sums, twice */
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(corr);
}

KQ512 static float qdot_q5_K_planes(const void *w, const float *xp, const float *xs, int64_t n)
{
    const kvrt_block_q5_K *b = w;
    const __m512i g00 = groups_q45(0, 0), g01 = groups_q45(0, 1);
    const __m512i g10 = groups_q45(1, 0), g11 = groups_q45(1, 1);
    /* the fifth bits of sub-blocks 4 c + 2 half (+ 1 for the high plane) at bit 0 (1) of each byte */
    const __m512i sh0 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i sh1 = _mm512_add_epi32(sh0, _mm512_set1_epi32(4)), nib = _mm512_set1_epi32(0x0f0f0f0f);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), corr = _mm512_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, b++, xp += 256, xs += 16) {
        const __m512 head = q45_head((const kvrt_block_q4_K *)(const void *)b, 32.0f);
        const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->qh));
        for (int c = 0; c < 2; c++) {
            const __m512i q = _mm512_loadu_si512(b->qs + 64 * c), h = _mm512_srlv_epi32(qh, c ? sh1 : sh0);
            const __m512i lo = select_bits(nib, q, _mm512_slli_epi32(h, 4));
            const __m512i hi = select_bits(nib, _mm512_srli_epi32(q, 4), _mm512_slli_epi32(h, 3));
            acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(c ? g10 : g00, head), plane_dot(lo, 5, xp + 128 * c), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(c ? g11 : g01, head), plane_dot(hi, 5, xp + 128 * c + 64),
                                   acc1);
        }
        corr = _mm512_fmadd_ps(head, _mm512_loadu_ps(xs), corr); /* xs: sub-block sums, twice */
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(corr);
}

/* q6_K: level q - 32 of q in 0..63, so sum(level x) = 64 F - 96 X per group. */
KQ512 static float qdot_q6_K_planes(const void *w, const float *xp, const float *xs, int64_t n)
{
    const kvrt_block_q6_K *b = w;
    const __m512i g00 = groups_q6(0, 0), g01 = groups_q6(0, 1);
    const __m512i g10 = groups_q6(1, 0), g11 = groups_q6(1, 1), nib = _mm512_set1_epi32(0x0f0f0f0f);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), corr = _mm512_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, b++, xp += 256, xs += 16) {
        const __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)b->scales))),
                                       _mm512_set1_ps(64.0f * _cvtsh_ss(b->d)));
        corr = _mm512_fmadd_ps(s, _mm512_loadu_ps(xs), corr); /* xs: 1.5 xsum16 */
        for (int c = 0; c < 2; c++) {
            /* the high bits of ql[l] at bits 0-1 (4-5) of byte l for the low (high) plane, those of
             * ql[l + 32] two bits up: shifted down in the upper half */
            __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * c)));
            h = _mm512_mask_srli_epi32(h, 0xff00, h, 2);
            const __m512i q = _mm512_loadu_si512(b->ql + 64 * c);
            const __m512i lo = select_bits(nib, q, _mm512_slli_epi32(h, 4));
            const __m512i hi = select_bits(nib, _mm512_srli_epi32(q, 4), h);
            acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(c ? g10 : g00, s), plane_dot(lo, 6, xp + 128 * c), acc0);
            acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(c ? g11 : g01, s), plane_dot(hi, 6, xp + 128 * c + 64), acc1);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(corr);
}

/* q2_K / q3_K (kvrt_plane_value2): field f's levels in lane L are group
 * 8 (L / 8) + 2 f + (L % 8) / 4. */
KQ512 static inline __m512i groups_2bit(int f)
{
    const int g = 2 * f, e = g + 8;
    return _mm512_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1, e, e, e, e, e + 1, e + 1, e + 1, e + 1);
}

/* q2_K: level q (2 bits) = 4 (F - X) per group; s = 4 d sc, corr (4 d sc + dmin m) xsum16. */
KQ512 static float qdot_q2_K_planes(const void *w, const float *xp, const float *xs, int64_t n)
{
    const kvrt_block_q2_K *b = w;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), corr = _mm512_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, b++, xp += 256, xs += 16) {
        const __m512i sm = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)b->scales));
        const __m512 s = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(sm, _mm512_set1_epi32(15))),
                                       _mm512_set1_ps(4.0f * _cvtsh_ss(b->d)));
        const __m512 mn = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(sm, 4)), _mm512_set1_ps(_cvtsh_ss(b->dmin)));
        corr = _mm512_fmadd_ps(_mm512_add_ps(s, mn), _mm512_loadu_ps(xs), corr);
        const __m512i q = _mm512_loadu_si512(b->qs);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(groups_2bit(0), s), plane_dot_at(q, 2, 0, xp), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(groups_2bit(1), s), plane_dot_at(q, 2, 2, xp + 64), acc1);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(groups_2bit(2), s), plane_dot_at(q, 2, 4, xp + 128), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(groups_2bit(3), s), plane_dot_at(q, 2, 6, xp + 192), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(corr);
}

/* The 16 scales of a q3_K block (-32..31) as floats times f: low 4 bits
 * from the nibbles of bytes 0..7 (scale i: byte i % 8, high nibble for
 * i >= 8), high 2 bits from bits 2 (i / 4) of byte 8 + i % 4. */
KQ512 static inline __m512 q3_scales(const uint8_t *sc, float f)
{
    uint64_t lo8;
    uint32_t hi4;
    memcpy(&lo8, sc, sizeof(lo8));
    memcpy(&hi4, sc + 8, sizeof(hi4));
    const __m512i lo = _mm512_cvtepu8_epi32(
        _mm_set_epi64x((long long)((lo8 >> 4) & 0x0f0f0f0f0f0f0f0full), (long long)(lo8 & 0x0f0f0f0f0f0f0f0full)));
    const __m512i sh = _mm512_setr_epi32(0, 8, 16, 24, 2, 10, 18, 26, 4, 12, 20, 28, 6, 14, 22, 30);
    const __m512i hi = _mm512_and_si512(_mm512_srlv_epi32(_mm512_set1_epi32((int)hi4), sh), _mm512_set1_epi32(3));
    const __m512i v = _mm512_sub_epi32(_mm512_or_si512(lo, _mm512_slli_epi32(hi, 4)), _mm512_set1_epi32(32));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(f));
}

/* q3_K: q = 2 low bits | third bit << 2, level q - 4 = 8 F - 12 X per group;
 * s = 8 d sc, corr s * 1.5 xsum16 (xprep's sums). */
KQ512 static float qdot_q3_K_planes(const void *w, const float *xp, const float *xs, int64_t n)
{
    const kvrt_block_q3_K *b = w;
    const __m512i low2 = _mm512_set1_epi32(0x03030303);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), corr = _mm512_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, b++, xp += 256, xs += 16) {
        const __m512 s = q3_scales(b->scales, 8.0f * _cvtsh_ss(b->d));
        corr = _mm512_fmadd_ps(s, _mm512_loadu_ps(xs), corr);
        const __m512i q = _mm512_loadu_si512(b->qs);
        /* third bits of field f at bit f (4 + f in the upper half) of hmask[l] */
        __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)b->hmask));
        h = _mm512_mask_srli_epi32(h, 0xff00, h, 4);
        /* field f's 3 bits at bits 0..2 of each byte: the two low bits shifted down, bit f of h moved to 2 */
        const __m512i f0 = select_bits(low2, q, _mm512_slli_epi32(h, 2));
        const __m512i f1 = select_bits(low2, _mm512_srli_epi32(q, 2), _mm512_slli_epi32(h, 1));
        const __m512i f2 = select_bits(low2, _mm512_srli_epi32(q, 4), h);
        const __m512i f3 = select_bits(low2, _mm512_srli_epi32(q, 6), _mm512_srli_epi32(h, 1));
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(groups_2bit(0), s), plane_dot(f0, 3, xp), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(groups_2bit(1), s), plane_dot(f1, 3, xp + 64), acc1);
        acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(groups_2bit(2), s), plane_dot(f2, 3, xp + 128), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(groups_2bit(3), s), plane_dot(f3, 3, xp + 192), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - _mm512_reduce_add_ps(corr);
}

#define ROW_512(T, TYPE) {TYPE, qdot_##T##_avx512, dequant_##T##_avx512, NULL}
#define ROW_512P(T, TYPE, XPREP) {TYPE, qdot_##T##_planes, dequant_##T##_avx512, XPREP}
const kvrt_cpu_quant_kernels kvrt_cpu_quant_avx512[] = {
    ROW_512(q4_1, KVRT_DTYPE_Q4_1),     ROW_512(q5_0, KVRT_DTYPE_Q5_0), ROW_512(q5_1, KVRT_DTYPE_Q5_1),
    ROW_512(iq4_nl, KVRT_DTYPE_IQ4_NL), ROW_512P(q2_K, KVRT_DTYPE_Q2_K, kvrt_cpu_xprep_q2_K),
    ROW_512P(q3_K, KVRT_DTYPE_Q3_K, kvrt_cpu_xprep_q3_K),
    ROW_512P(q4_K, KVRT_DTYPE_Q4_K, kvrt_cpu_xprep_q45_K),
    ROW_512P(q5_K, KVRT_DTYPE_Q5_K, kvrt_cpu_xprep_q45_K),
    ROW_512P(q6_K, KVRT_DTYPE_Q6_K, kvrt_cpu_xprep_q6_K),
    ROW_512(iq4_xs, KVRT_DTYPE_IQ4_XS),
};
const int kvrt_cpu_quant_avx512_count = (int)KVRT_ARRAY_LEN(kvrt_cpu_quant_avx512);

#else /* no x86-64 GCC/clang: no AVX-512 flavour */
const kvrt_cpu_quant_kernels kvrt_cpu_quant_avx512[1];
const int kvrt_cpu_quant_avx512_count = 0;
#endif
