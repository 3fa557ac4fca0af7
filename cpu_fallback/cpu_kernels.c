/* Per-row weight kernels: dot products of a weight row with an F32 vector
 * (decode GEMV) and row dequantization (tiled matmul, embedding). The library
 * is compiled for baseline x86-64, so the AVX2/FMA/F16C versions carry a
 * target attribute and are picked at run time; the portable ones run anywhere.
 * Quantized blocks are read in place (GGUF layouts of common/quant.h). */
#include "cpu_ops_internal.h"

#include "common/fp16.h"
#include "common/quant.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define KVRT_CPU_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
#endif

kvrt_cpu_isa kvrt_cpu_best_isa(void)
{
#if KVRT_CPU_HAVE_AVX2_KERNELS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return KVRT_CPU_ISA_AVX2;
#endif
    return KVRT_CPU_ISA_PORTABLE;
}

/* ---- portable C ------------------------------------------------------------------ */

/* Eight independent partial sums keep the FP adds pipelined (and let the
 * compiler use SSE lanes) without reassociation flags. */
static float sum8(const float acc[8])
{
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static float dot_f16_c(const void *w, const float *x, int64_t n)
{
    const uint16_t *h = w;
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += kvrt_fp16_to_f32(h[i + j]) * x[i + j];
    float s = sum8(acc);
    for (; i < n; i++)
        s += kvrt_fp16_to_f32(h[i]) * x[i];
    return s;
}

static float dot_bf16_c(const void *w, const float *x, int64_t n)
{
    const uint16_t *h = w;
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += kvrt_bf16_to_f32(h[i + j]) * x[i + j];
    float s = sum8(acc);
    for (; i < n; i++)
        s += kvrt_bf16_to_f32(h[i]) * x[i];
    return s;
}

static float dot_q8_0_c(const void *w, const float *x, int64_t n)
{
    const kvrt_block_q8_0 *b = w;
    float s = 0.0f;
    for (int64_t k = 0; k < n / KVRT_QK; k++, x += KVRT_QK) {
        float acc[8] = {0};
        for (int j = 0; j < KVRT_QK; j += 8)
            for (int l = 0; l < 8; l++)
                acc[l] += (float)b[k].qs[j + l] * x[j + l];
        s += kvrt_fp16_to_f32(b[k].d) * sum8(acc);
    }
    return s;
}

static float dot_q4_0_c(const void *w, const float *x, int64_t n)
{
    const kvrt_block_q4_0 *b = w;
    float s = 0.0f;
    for (int64_t k = 0; k < n / KVRT_QK; k++, x += KVRT_QK) {
        float acc[8] = {0};
        for (int j = 0; j < KVRT_QK / 2; j += 8) {
            for (int l = 0; l < 8; l++) {
                uint8_t q = b[k].qs[j + l];
                acc[l] += (float)((q & 0x0f) - 8) * x[j + l] + (float)((q >> 4) - 8) * x[j + l + KVRT_QK / 2];
            }
        }
        s += kvrt_fp16_to_f32(b[k].d) * sum8(acc);
    }
    return s;
}

/* The portable dequantizers are the reference ones, one wrapper per type. */
static void dequant_f32_c(const void *w, float *y, int64_t n) { kvrt_dequantize_row(KVRT_DTYPE_F32, w, y, n); }
static void dequant_f16_c(const void *w, float *y, int64_t n) { kvrt_dequantize_row(KVRT_DTYPE_F16, w, y, n); }
static void dequant_bf16_c(const void *w, float *y, int64_t n) { kvrt_dequantize_row(KVRT_DTYPE_BF16, w, y, n); }
static void dequant_q8_0_c(const void *w, float *y, int64_t n) { kvrt_dequantize_row(KVRT_DTYPE_Q8_0, w, y, n); }
static void dequant_q4_0_c(const void *w, float *y, int64_t n) { kvrt_dequantize_row(KVRT_DTYPE_Q4_0, w, y, n); }

/* ---- AVX2 + FMA + F16C -------------------------------------------------------------- */

#if KVRT_CPU_HAVE_AVX2_KERNELS
#define KVRT_AVX2 __attribute__((target("avx2,fma,f16c")))

KVRT_AVX2 static inline float hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

KVRT_AVX2 static inline __m256 load_f16x8(const uint16_t *h)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
}

KVRT_AVX2 static inline __m256 load_bf16x8(const uint16_t *h)
{
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)h));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

/* Eight signed bytes (in the low half of q) as floats. */
KVRT_AVX2 static inline __m256 i8x8_to_ps(__m128i q)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
}

KVRT_AVX2 static float dot_f16_avx2(const void *w, const float *x, int64_t n)
{
    const uint16_t *h = w;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_f16x8(h + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load_f16x8(h + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_f16x8(h + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_f16x8(h + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(load_f16x8(h + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++)
        s += _cvtsh_ss(h[i]) * x[i];
    return s;
}

KVRT_AVX2 static float dot_bf16_avx2(const void *w, const float *x, int64_t n)
{
    const uint16_t *h = w;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_bf16x8(h + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16x8(h + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_bf16x8(h + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_bf16x8(h + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(load_bf16x8(h + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++)
        s += kvrt_bf16_to_f32(h[i]) * x[i];
    return s;
}

/* sum_j q[j] * x[j] over one Q8_0 block, unscaled. */
KVRT_AVX2 static inline __m256 q8_0_block_avx2(const kvrt_block_q8_0 *b, const float *x)
{
    const __m128i lo = _mm_loadu_si128((const __m128i *)b->qs);
    const __m128i hi = _mm_loadu_si128((const __m128i *)(b->qs + 16));
    __m256 s = _mm256_mul_ps(i8x8_to_ps(lo), _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(i8x8_to_ps(hi), _mm256_loadu_ps(x + 16), s);
    return _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(x + 24), s);
}

/* Two accumulators, so consecutive blocks do not wait on one FMA chain. */
KVRT_AVX2 static float dot_q8_0_avx2(const void *w, const float *x, int64_t n)
{
    const kvrt_block_q8_0 *b = w;
    const int64_t nb = n / KVRT_QK;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t k = 0;
    for (; k + 2 <= nb; k += 2) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[k].d)), q8_0_block_avx2(&b[k], x + k * KVRT_QK), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[k + 1].d)),
                             q8_0_block_avx2(&b[k + 1], x + (k + 1) * KVRT_QK), a1);
    }
    if (k < nb)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[k].d)), q8_0_block_avx2(&b[k], x + k * KVRT_QK), a0);
    return hsum_avx2(_mm256_add_ps(a0, a1));
}

/* The 32 values of a Q4_0 block as signed bytes: lo = values 0..15, hi = 16..31. */
KVRT_AVX2 static inline void q4_0_unpack_avx2(const kvrt_block_q4_0 *b, __m128i *lo, __m128i *hi)
{
    const __m128i m0f = _mm_set1_epi8(0x0f), m8 = _mm_set1_epi8(8);
    const __m128i raw = _mm_loadu_si128((const __m128i *)b->qs);
    *lo = _mm_sub_epi8(_mm_and_si128(raw, m0f), m8);
    *hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m0f), m8);
}

KVRT_AVX2 static inline __m256 q4_0_block_avx2(const kvrt_block_q4_0 *b, const float *x)
{
    __m128i lo, hi;
    q4_0_unpack_avx2(b, &lo, &hi);
    __m256 s = _mm256_mul_ps(i8x8_to_ps(lo), _mm256_loadu_ps(x));
    s = _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(x + 8), s);
    s = _mm256_fmadd_ps(i8x8_to_ps(hi), _mm256_loadu_ps(x + 16), s);
    return _mm256_fmadd_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(x + 24), s);
}

KVRT_AVX2 static float dot_q4_0_avx2(const void *w, const float *x, int64_t n)
{
    const kvrt_block_q4_0 *b = w;
    const int64_t nb = n / KVRT_QK;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t k = 0;
    for (; k + 2 <= nb; k += 2) {
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[k].d)), q4_0_block_avx2(&b[k], x + k * KVRT_QK), a0);
        a1 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[k + 1].d)),
                             q4_0_block_avx2(&b[k + 1], x + (k + 1) * KVRT_QK), a1);
    }
    if (k < nb)
        a0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(b[k].d)), q4_0_block_avx2(&b[k], x + k * KVRT_QK), a0);
    return hsum_avx2(_mm256_add_ps(a0, a1));
}

/* The dequantizers give the same bits as the reference ones: each value is
 * one exact conversion, or one F32 product q * d. */
KVRT_AVX2 static void dequant_f16_avx2(const void *w, float *y, int64_t n)
{
    const uint16_t *h = w;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, load_f16x8(h + i));
    for (; i < n; i++)
        y[i] = _cvtsh_ss(h[i]);
}

KVRT_AVX2 static void dequant_bf16_avx2(const void *w, float *y, int64_t n)
{
    const uint16_t *h = w;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, load_bf16x8(h + i));
    for (; i < n; i++)
        y[i] = kvrt_bf16_to_f32(h[i]);
}

KVRT_AVX2 static void dequant_q8_0_avx2(const void *w, float *y, int64_t n)
{
    const kvrt_block_q8_0 *b = w;
    for (int64_t k = 0; k < n / KVRT_QK; k++, y += KVRT_QK) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[k].d));
        const __m128i lo = _mm_loadu_si128((const __m128i *)b[k].qs);
        const __m128i hi = _mm_loadu_si128((const __m128i *)(b[k].qs + 16));
        _mm256_storeu_ps(y, _mm256_mul_ps(i8x8_to_ps(lo), d));
        _mm256_storeu_ps(y + 8, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), d));
        _mm256_storeu_ps(y + 16, _mm256_mul_ps(i8x8_to_ps(hi), d));
        _mm256_storeu_ps(y + 24, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), d));
    }
}

KVRT_AVX2 static void dequant_q4_0_avx2(const void *w, float *y, int64_t n)
{
    const kvrt_block_q4_0 *b = w;
    for (int64_t k = 0; k < n / KVRT_QK; k++, y += KVRT_QK) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[k].d));
        __m128i lo, hi;
        q4_0_unpack_avx2(&b[k], &lo, &hi);
        _mm256_storeu_ps(y, _mm256_mul_ps(i8x8_to_ps(lo), d));
        _mm256_storeu_ps(y + 8, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(lo, 8)), d));
        _mm256_storeu_ps(y + 16, _mm256_mul_ps(i8x8_to_ps(hi), d));
        _mm256_storeu_ps(y + 24, _mm256_mul_ps(i8x8_to_ps(_mm_srli_si128(hi, 8)), d));
    }
}
#endif /* KVRT_CPU_HAVE_AVX2_KERNELS */

/* ---- selection ---------------------------------------------------------------------- */

kvrt_cpu_dot_fn kvrt_cpu_dot_kernel(kvrt_cpu_isa isa, kvrt_dtype type)
{
#if KVRT_CPU_HAVE_AVX2_KERNELS
    if (isa == KVRT_CPU_ISA_AVX2) {
        switch (type) {
        case KVRT_DTYPE_F16: return dot_f16_avx2;
        case KVRT_DTYPE_BF16: return dot_bf16_avx2;
        case KVRT_DTYPE_Q8_0: return dot_q8_0_avx2;
        case KVRT_DTYPE_Q4_0: return dot_q4_0_avx2;
        case KVRT_DTYPE_F32: return NULL;
        }
        return NULL;
    }
#endif
    switch (type) {
    case KVRT_DTYPE_F16: return dot_f16_c;
    case KVRT_DTYPE_BF16: return dot_bf16_c;
    case KVRT_DTYPE_Q8_0: return dot_q8_0_c;
    case KVRT_DTYPE_Q4_0: return dot_q4_0_c;
    case KVRT_DTYPE_F32: return NULL;
    }
    return NULL;
}

kvrt_cpu_dequant_fn kvrt_cpu_dequant_kernel(kvrt_cpu_isa isa, kvrt_dtype type)
{
#if KVRT_CPU_HAVE_AVX2_KERNELS
    if (isa == KVRT_CPU_ISA_AVX2) {
        switch (type) {
        case KVRT_DTYPE_F32: return dequant_f32_c; /* memcpy is already as fast as it gets */
        case KVRT_DTYPE_F16: return dequant_f16_avx2;
        case KVRT_DTYPE_BF16: return dequant_bf16_avx2;
        case KVRT_DTYPE_Q8_0: return dequant_q8_0_avx2;
        case KVRT_DTYPE_Q4_0: return dequant_q4_0_avx2;
        }
        return NULL;
    }
#endif
    switch (type) {
    case KVRT_DTYPE_F32: return dequant_f32_c;
    case KVRT_DTYPE_F16: return dequant_f16_c;
    case KVRT_DTYPE_BF16: return dequant_bf16_c;
    case KVRT_DTYPE_Q8_0: return dequant_q8_0_c;
    case KVRT_DTYPE_Q4_0: return dequant_q4_0_c;
    }
    return NULL;
}
