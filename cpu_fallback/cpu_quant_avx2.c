/* AVX2 row kernels of the types of cpu_quant.h (AVX2 + FMA + F16C, chosen
 * at run time): as the AVX-512 ones, with a group of 16 values in two ymm
 * of 8 lanes; bits merged by shifts instead of k-masks, and the iq4 code
 * book looked up as two 8-float permutes and a blend on index bit 3. */
#include "cpu_quant.h"
#include "cpu_quant_planes.h"
#include "cpu_quant_scales.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define KQ256 __attribute__((target("avx2,fma,f16c")))

/* 8 bytes at p, zero-extended to 8 lanes. */
KQ256 static inline __m256i u8x8(const uint8_t *p)
{
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
}

KQ256 static inline __m256i nib8(const uint8_t *p, int hi)
{
    __m256i b = u8x8(p);
    return hi ? _mm256_srli_epi32(b, 4) : _mm256_and_si256(b, _mm256_set1_epi32(0x0f));
}

KQ256 static inline __m256i shr(__m256i v, int count)
{
    return _mm256_srl_epi32(v, _mm_cvtsi32_si128(count));
}

/* bit `bit` of each lane of v, moved to bit `to` */
KQ256 static inline __m256i bit_to(__m256i v, int bit, int to)
{
    return _mm256_slli_epi32(_mm256_and_si256(shr(v, bit), _mm256_set1_epi32(1)), to);
}

/* The iq4 code book as two halves of 8 floats. */
typedef struct iq4_tab {
    __m256 lo, hi;
} iq4_tab;

KQ256 static inline iq4_tab iq4_table(void)
{
    __m128i v = _mm_loadu_si128((const __m128i *)KVRT_IQ4_VALUES);
    iq4_tab t = {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)),
                 _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)))};
    return t;
}

/* Code-book values of 8 indices (0..15 in the low 4 bits of each lane). */
KQ256 static inline __m256 iq4_lookup(__m256i idx, iq4_tab t)
{
    __m256 a = _mm256_permutevar8x32_ps(t.lo, idx), b = _mm256_permutevar8x32_ps(t.hi, idx);
    return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

static inline uint32_t load_u32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* ---- levels of lanes 8 c .. 8 c + 7 of group g (16 values) of a block --------------------- */

KQ256 static inline __m256 lv_q4_1(const uint8_t *b, int g, int c, iq4_tab t)
{
    (void)t;
    return _mm256_cvtepi32_ps(nib8(b + 4 + 8 * c, g));
}

KQ256 static inline __m256 lv_q5(const uint8_t *b, int g, int c, size_t o, int offset)
{
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i h = _mm256_srlv_epi32(_mm256_set1_epi32((int)(load_u32(b + o) >> (16 * g + 8 * c))), lanes);
    __m256i q = _mm256_or_si256(nib8(b + o + 4 + 8 * c, g),
                                _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(1)), 4));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(offset)));
}

KQ256 static inline __m256 lv_q5_0(const uint8_t *b, int g, int c, iq4_tab t)
{
    (void)t;
    return lv_q5(b, g, c, 2, 16);
}

KQ256 static inline __m256 lv_q5_1(const uint8_t *b, int g, int c, iq4_tab t)
{
    (void)t;
    return lv_q5(b, g, c, 4, 0);
}

KQ256 static inline __m256 lv_iq4_nl(const uint8_t *b, int g, int c, iq4_tab t)
{
    return iq4_lookup(nib8(b + 2 + 8 * c, g), t);
}

KQ256 static inline __m256 lv_iq4_xs(const uint8_t *b, int g, int c, iq4_tab t)
{
    return iq4_lookup(nib8(((const kvrt_block_iq4_xs *)(const void *)b)->qs + 16 * (g / 2) + 8 * c, g % 2), t);
}

KQ256 static inline __m256 lv_q4_K(const uint8_t *b, int g, int c, iq4_tab t)
{
    (void)t;
    const int j = g / 2;
    return _mm256_cvtepi32_ps(
        nib8(((const kvrt_block_q4_K *)(const void *)b)->qs + 32 * (j / 2) + 16 * (g % 2) + 8 * c, j % 2));
}

KQ256 static inline __m256 lv_q5_K(const uint8_t *b, int g, int c, iq4_tab t)
{
    (void)t;
    const kvrt_block_q5_K *q5 = (const void *)b;
    const int j = g / 2, l0 = 16 * (g % 2) + 8 * c;
    __m256i q = nib8(q5->qs + 32 * (j / 2) + l0, j % 2);
    return _mm256_cvtepi32_ps(_mm256_or_si256(q, bit_to(u8x8(q5->qh + l0), j, 4)));
}

KQ256 static inline __m256 lv_q6_K(const uint8_t *b, int g, int c, iq4_tab t)
{
    (void)t;
    const kvrt_block_q6_K *q6 = (const void *)b;
    const int h = g / 8, gg = (g % 8) / 2, l0 = 16 * (g % 2) + 8 * c;
    __m256i lo = nib8(q6->ql + 64 * h + 32 * (gg % 2) + l0, gg >= 2);
    __m256i hi = _mm256_and_si256(shr(u8x8(q6->qh + 32 * h + l0), 2 * gg), _mm256_set1_epi32(3));
    __m256i q = _mm256_or_si256(lo, _mm256_slli_epi32(hi, 4));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(32)));
}

KQ256 static inline __m256i two_bits(const uint8_t *qs, int g, int c)
{
    const int h = g / 8, gg = (g % 8) / 2;
    return _mm256_and_si256(shr(u8x8(qs + 32 * h + 16 * (g % 2) + 8 * c), 2 * gg), _mm256_set1_epi32(3));
}

KQ256 static inline __m256 lv_q2_K(const uint8_t *b, int g, int c, iq4_tab t)
{
    (void)t;
    return _mm256_cvtepi32_ps(two_bits(((const kvrt_block_q2_K *)(const void *)b)->qs, g, c));
}

KQ256 static inline __m256 lv_q3_K(const uint8_t *b, int g, int c, iq4_tab t)
{
    (void)t;
    const kvrt_block_q3_K *q3 = (const void *)b;
    __m256i q = _mm256_or_si256(two_bits(q3->qs, g, c), bit_to(u8x8(q3->hmask + 16 * (g % 2) + 8 * c), g / 2, 2));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(4)));
}

/* ---- the row kernels ---------------------------------------------------------------------------- */

KQ256 static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* As KERNELS_512 (cpu_quant_avx512.c), two ymm per group. */
#define QDOT_256(T, BV, SCALES, LV, MINS)                                                                 \
    KQ256 static float qdot_##T##_avx2(const void *w, const float *x, const float *xs, int64_t n)        \
    {                                                                                                     \
        const uint8_t *p = w;                                                                             \
        const iq4_tab tab = iq4_table();                                                                  \
        __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()}; \
        float s[16] = {0}, mn[16] = {0}, mins = 0.0f;                                                               \
        for (int64_t k = 0; k < n / (BV); k++, p += sizeof(kvrt_block_##T), x += (BV), xs += (BV) / 16) {  \
            SCALES(p, s, mn);                                                                             \
            for (int g = 0; g < (BV) / 16; g++) {                                                         \
                __m256 d = _mm256_mul_ps(LV(p, g, 0, tab), _mm256_loadu_ps(x + 16 * g));                   \
                d = _mm256_fmadd_ps(LV(p, g, 1, tab), _mm256_loadu_ps(x + 16 * g + 8), d);                 \
                a[g % 4] = _mm256_fmadd_ps(_mm256_set1_ps(s[g]), d, a[g % 4]);                            \
            }                                                                                             \
            if (MINS)                                                                                     \
                for (int g = 0; g < (BV) / 16; g++)                                                       \
                    mins += mn[g] * xs[g];                                                                \
        }                                                                                                 \
        return hsum256(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]))) - mins;     \
    }
#define DEQUANT_256(T, BV, SCALES, LV)                                                                    \
    KQ256 static void dequant_##T##_avx2(const void *w, float *y, int64_t n)                              \
    {                                                                                                     \
        const uint8_t *p = w;                                                                             \
        const iq4_tab tab = iq4_table();                                                                  \
        float s[16] = {0}, mn[16] = {0};                                                                            \
        for (int64_t k = 0; k < n / (BV); k++, p += sizeof(kvrt_block_##T), y += (BV)) {                   \
            SCALES(p, s, mn);                                                                             \
            for (int g = 0; g < (BV) / 16; g++)                                                           \
                for (int c = 0; c < 2; c++)                                                               \
                    _mm256_storeu_ps(y + 16 * g + 8 * c,                                                  \
                                     _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(s[g]), LV(p, g, c, tab)), \
                                                   _mm256_set1_ps(mn[g])));                               \
        }                                                                                                 \
    }

#define KERNELS_256(T, BV, SCALES, LV, MINS) QDOT_256(T, BV, SCALES, LV, MINS) DEQUANT_256(T, BV, SCALES, LV)

KERNELS_256(q4_1, 32, kvrt_qs_dm, lv_q4_1, 1)
KERNELS_256(q5_0, 32, kvrt_qs_d, lv_q5_0, 0)
KERNELS_256(q5_1, 32, kvrt_qs_dm, lv_q5_1, 1)
KERNELS_256(iq4_nl, 32, kvrt_qs_d, lv_iq4_nl, 0)
KERNELS_256(q2_K, 256, kvrt_qs_q2_K, lv_q2_K, 1)
KERNELS_256(q3_K, 256, kvrt_qs_q3_K, lv_q3_K, 0)
/* q4_K, q5_K, q6_K: dot products by the plane kernels below */
DEQUANT_256(q4_K, 256, kvrt_qs_q45_K, lv_q4_K)
DEQUANT_256(q5_K, 256, kvrt_qs_q45_K, lv_q5_K)
DEQUANT_256(q6_K, 256, kvrt_qs_q6_K, lv_q6_K)
KERNELS_256(iq4_xs, 256, kvrt_qs_iq4_xs, lv_iq4_xs, 0)


/* ---- plane kernels of q4_K, q5_K, q6_K (cpu_quant_planes.h) --------------------------------------
 * As the AVX-512 ones, each 64-byte chunk as two ymm halves of 8 lanes
 * (half h reads lanes 8 h .. 8 h + 7 of the activation order), so a
 * half's levels all belong to one q4_K / q5_K sub-block. */

/* (t & mant) | bits of 1.0f */
KQ256 static inline __m256 one_plus(__m256i t, __m256i mant)
{
    return _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(t, mant), _mm256_set1_epi32(0x3f800000)));
}

/* sum over the 4 bytes b of a plane half of (1 + q / 2^w) * xp[16 b ..] */
KQ256 static inline __m256 plane_dot(__m256i p, const int w, const float *xp)
{
    const __m256i m = _mm256_set1_epi32(((1 << w) - 1) << (23 - w));
    __m256 a = _mm256_mul_ps(one_plus(_mm256_slli_epi32(p, 23 - w), m), _mm256_loadu_ps(xp));
    __m256 c = _mm256_mul_ps(one_plus(_mm256_slli_epi32(p, 7 - w), m), _mm256_loadu_ps(xp + 32));
    a = _mm256_fmadd_ps(one_plus(_mm256_slli_epi32(p, 15 - w), m), _mm256_loadu_ps(xp + 16), a);
    c = _mm256_fmadd_ps(one_plus(_mm256_srli_epi32(p, w + 1), m), _mm256_loadu_ps(xp + 48), c);
    return _mm256_add_ps(a, c);
}

/* low nibbles of q with the bits of h above them */
KQ256 static inline __m256i merge_nib(__m256i q, __m256i h)
{
    const __m256i nib = _mm256_set1_epi32(0x0f0f0f0f);
    return _mm256_or_si256(_mm256_and_si256(q, nib), _mm256_andnot_si256(nib, h));
}

KQ256 static inline __m256i load256(const uint8_t *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* q4_K / q5_K block head: 2^w d sc_j in sc[j], dmin m_j in mn[j]. */
KQ256 static inline void q45_head(const kvrt_block_q4_K *b, float two_w, __m256 *sc, __m256 *mn)
{
    uint32_t u[3];
    memcpy(u, b->scales, sizeof(u));
    /* as the AVX-512 q45_head */
    const __m128i s = _mm_setr_epi32((int)(u[0] & 0x3f3f3f3f), (int)((u[2] & 0x0f0f0f0f) | ((u[0] >> 2) & 0x30303030)),
                                     0, 0);
    const __m128i m = _mm_setr_epi32((int)(u[1] & 0x3f3f3f3f),
                                     (int)(((u[2] >> 4) & 0x0f0f0f0f) | ((u[1] >> 2) & 0x30303030)), 0, 0);
    *sc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(s)), _mm256_set1_ps(_cvtsh_ss(b->d) * two_w));
    *mn = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(m)), _mm256_set1_ps(_cvtsh_ss(b->dmin)));
}

/* lane j of v in every lane */
KQ256 static inline __m256 lane(__m256 v, int j)
{
    return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(j));
}

/* Plane halves lo / hi of q4_K (qh NULL) or q5_K chunk c, half h, into acc. */
KQ256 __attribute__((always_inline)) static inline void q45_chunk(const uint8_t *qs, const uint8_t *qh, int c, int h, __m256 sc, const float *xp,
                                   __m256 *acc0, __m256 *acc1)
{
    const __m256i q = load256(qs + 64 * c + 32 * h);
    __m256i lo = q, hi = _mm256_srli_epi32(q, 4);
    const int j = 4 * c + 2 * h, w = qh ? 5 : 4; /* the sub-blocks j (lo) and j + 1 (hi) */
    if (qh) {
        const __m256i fifth = _mm256_srli_epi32(load256(qh), j); /* bit j of each byte at bit 0 */
        lo = merge_nib(lo, _mm256_slli_epi32(fifth, 4));
        hi = merge_nib(hi, _mm256_slli_epi32(fifth, 3));
    }
    const float *x = xp + 128 * c + 8 * h;
    *acc0 = _mm256_fmadd_ps(lane(sc, j), plane_dot(lo, w, x), *acc0);
    *acc1 = _mm256_fmadd_ps(lane(sc, j + 1), plane_dot(hi, w, x + 64), *acc1);
}

KQ256 __attribute__((always_inline)) static inline float q45_planes(const uint8_t *p, size_t block_bytes, size_t qs_off, int q5, const float *xp,
                                     const float *xs, int64_t n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), corr = _mm256_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, p += block_bytes, xp += 256, xs += 16) {
        __m256 sc, mn;
        q45_head((const kvrt_block_q4_K *)(const void *)p, q5 ? 32.0f : 16.0f, &sc, &mn);
        const uint8_t *qh = q5 ? ((const kvrt_block_q5_K *)(const void *)p)->qh : NULL;
        for (int c = 0; c < 2; c++)
            for (int h = 0; h < 2; h++)
                q45_chunk(p + qs_off, qh, c, h, sc, xp, &acc0, &acc1);
        corr = _mm256_fmadd_ps(sc, _mm256_loadu_ps(xs), corr); /* xs: sub-block sums of x, twice */
        corr = _mm256_fmadd_ps(mn, _mm256_loadu_ps(xs + 8), corr);
    }
    return hsum256(_mm256_add_ps(acc0, acc1)) - hsum256(corr);
}

KQ256 static float qdot_q4_K_planes(const void *w, const float *xp, const float *xs, int64_t n)
{
    return q45_planes(w, sizeof(kvrt_block_q4_K), offsetof(kvrt_block_q4_K, qs), 0, xp, xs, n);
}

KQ256 static float qdot_q5_K_planes(const void *w, const float *xp, const float *xs, int64_t n)
{
    return q45_planes(w, sizeof(kvrt_block_q5_K), offsetof(kvrt_block_q5_K, qs), 1, xp, xs, n);
}

/* q6_K: sum(level x) = 64 F - 96 X per group (level q - 32). Half h of
 * chunk c holds groups 8 c + 2 (h + 2 p) (lanes 0-3) and the next (4-7). */
KQ256 static float qdot_q6_K_planes(const void *w, const float *xp, const float *xs, int64_t n)
{
    const kvrt_block_q6_K *b = w;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), corr = _mm256_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, b++, xp += 256, xs += 16) {
        const __m128i s8 = _mm_loadu_si128((const __m128i *)b->scales);
        const __m256 d = _mm256_set1_ps(64.0f * _cvtsh_ss(b->d));
        const __m256 s[2] = {_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s8)), d),
                             _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s8, 8))), d)};
        corr = _mm256_fmadd_ps(s[0], _mm256_loadu_ps(xs), corr); /* xs: 1.5 xsum16 */
        corr = _mm256_fmadd_ps(s[1], _mm256_loadu_ps(xs + 8), corr);
        for (int c = 0; c < 2; c++)
            for (int h = 0; h < 2; h++) {
                /* bits 0-1 (4-5) of qh[l] for ql[l]; two bits up for ql[l + 32] */
                const __m256i hb = _mm256_srli_epi32(load256(b->qh + 32 * c), 2 * h);
                const __m256i q = load256(b->ql + 64 * c + 32 * h);
                const __m256i lo = merge_nib(q, _mm256_slli_epi32(hb, 4)), hi = merge_nib(_mm256_srli_epi32(q, 4), hb);
                const int g = 2 * h; /* lo: groups 8 c + g, + 1; hi: 8 c + g + 4, + 5 */
                const __m256i ilo = _mm256_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1);
                const float *x = xp + 128 * c + 8 * h;
                acc0 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s[c], ilo), plane_dot(lo, 6, x), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s[c], _mm256_add_epi32(ilo, _mm256_set1_epi32(4))),
                                       plane_dot(hi, 6, x + 64), acc1);
            }
    }
    return hsum256(_mm256_add_ps(acc0, acc1)) - hsum256(corr);
}

#define ROW_256(T, TYPE) {TYPE, qdot_##T##_avx2, dequant_##T##_avx2, NULL}
#define ROW_256P(T, TYPE, XPREP) {TYPE, qdot_##T##_planes, dequant_##T##_avx2, XPREP}
const kvrt_cpu_quant_kernels kvrt_cpu_quant_avx2[] = {
    ROW_256(q4_1, KVRT_DTYPE_Q4_1),     ROW_256(q5_0, KVRT_DTYPE_Q5_0), ROW_256(q5_1, KVRT_DTYPE_Q5_1),
    ROW_256(iq4_nl, KVRT_DTYPE_IQ4_NL), ROW_256(q2_K, KVRT_DTYPE_Q2_K), ROW_256(q3_K, KVRT_DTYPE_Q3_K),
    ROW_256P(q4_K, KVRT_DTYPE_Q4_K, kvrt_cpu_xprep_q45_K),
    ROW_256P(q5_K, KVRT_DTYPE_Q5_K, kvrt_cpu_xprep_q45_K),
    ROW_256P(q6_K, KVRT_DTYPE_Q6_K, kvrt_cpu_xprep_q6_K),
    ROW_256(iq4_xs, KVRT_DTYPE_IQ4_XS),
};
const int kvrt_cpu_quant_avx2_count = (int)KVRT_ARRAY_LEN(kvrt_cpu_quant_avx2);

#else /* no x86-64 GCC/clang: no AVX2 flavour */
const kvrt_cpu_quant_kernels kvrt_cpu_quant_avx2[1];
const int kvrt_cpu_quant_avx2_count = 0;
#endif
