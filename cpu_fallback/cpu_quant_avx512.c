/* AVX-512 row kernels of the types of cpu_quant.h (AVX-512 F/BW/VL/DQ with
 * FMA and F16C, chosen at run time). A group of 16 values is one zmm:
 * bytes zero-extended to 32-bit lanes, nibbles and bit fields one mask or
 * shift away, fifth / third bits merged under a k-mask, iq4 code-book
 * values looked up with one permute of a 16-float table. */
#include "cpu_quant.h"
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
#define KERNELS_512(T, BV, SCALES, LV, MINS)                                                              \
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
    }                                                                                                     \
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

KERNELS_512(q4_1, 32, kvrt_qs_dm, lv_q4_1, 1)
KERNELS_512(q5_0, 32, kvrt_qs_d, lv_q5_0, 0)
KERNELS_512(q5_1, 32, kvrt_qs_dm, lv_q5_1, 1)
KERNELS_512(iq4_nl, 32, kvrt_qs_d, lv_iq4_nl, 0)
KERNELS_512(q2_K, 256, kvrt_qs_q2_K, lv_q2_K, 1)
KERNELS_512(q3_K, 256, kvrt_qs_q3_K, lv_q3_K, 0)
KERNELS_512(q4_K, 256, kvrt_qs_q45_K, lv_q4_K, 1)
KERNELS_512(q5_K, 256, kvrt_qs_q45_K, lv_q5_K, 1)
KERNELS_512(q6_K, 256, kvrt_qs_q6_K, lv_q6_K, 0)
KERNELS_512(iq4_xs, 256, kvrt_qs_iq4_xs, lv_iq4_xs, 0)

#define ROW_512(T, TYPE) {TYPE, qdot_##T##_avx512, dequant_##T##_avx512}
const kvrt_cpu_quant_kernels kvrt_cpu_quant_avx512[] = {
    ROW_512(q4_1, KVRT_DTYPE_Q4_1),     ROW_512(q5_0, KVRT_DTYPE_Q5_0), ROW_512(q5_1, KVRT_DTYPE_Q5_1),
    ROW_512(iq4_nl, KVRT_DTYPE_IQ4_NL), ROW_512(q2_K, KVRT_DTYPE_Q2_K), ROW_512(q3_K, KVRT_DTYPE_Q3_K),
    ROW_512(q4_K, KVRT_DTYPE_Q4_K),     ROW_512(q5_K, KVRT_DTYPE_Q5_K), ROW_512(q6_K, KVRT_DTYPE_Q6_K),
    ROW_512(iq4_xs, KVRT_DTYPE_IQ4_XS),
};
const int kvrt_cpu_quant_avx512_count = (int)KVRT_ARRAY_LEN(kvrt_cpu_quant_avx512);

#else /* no x86-64 GCC/clang: no AVX-512 flavour */
const kvrt_cpu_quant_kernels kvrt_cpu_quant_avx512[1];
const int kvrt_cpu_quant_avx512_count = 0;
#endif
