/* Per-row weight kernels: dot products of a weight row with an F32 vector
 * (decode GEMV) and row dequantization (tiled matmul, embedding). The library
 * is compiled for baseline x86-64, so the AVX2/FMA/F16C versions carry a
 * target attribute and are picked at run time; the portable ones run anywhere.
 * Quantized blocks are read in place (GGUF layouts of common/quant.h). */
#include "cpu_ops_internal.h"
#include "cpu_quant.h"

#include "common/fp16.h"
#include "common/quant.h"

#include <stdatomic.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define KVRT_CPU_HAVE_AVX2_KERNELS 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#if KVRT_CPU_HAVE_AVX2_KERNELS
/* The OS saves the opmask and the upper ZMM state (XCR0 bits 5-7, with
 * SSE and AVX state, bits 1-2): without it AVX-512 instructions fault. */
static bool os_saves_zmm(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE))
        return false;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6) == 0xe6;
}
#endif

static kvrt_cpu_isa detect_isa(void)
{
#if KVRT_CPU_HAVE_AVX2_KERNELS
    /* __builtin_cpu_supports also checks that the OS saves YMM state; clang
     * does not know "f16c" there, so that bit comes from cpuid leaf 1. */
    unsigned a, b, c, d;
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __get_cpuid(1, &a, &b, &c, &d) &&
          (c & bit_F16C)))
        return KVRT_CPU_ISA_PORTABLE;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && os_saves_zmm())
        return KVRT_CPU_ISA_AVX512;
    return KVRT_CPU_ISA_AVX2;
#endif
    return KVRT_CPU_ISA_PORTABLE;
}

const char *kvrt_cpu_isa_name(kvrt_cpu_isa isa)
{
    static const char *const names[] = {"portable", "avx2", "avx512"};
    return (unsigned)isa < KVRT_ARRAY_LEN(names) ? names[isa] : "?";
}

/* A memo of a property of the machine, not a setting: cpuid traps to the
 * hypervisor in a VM (measured 25 us a call here), too slow for every op of
 * every decode step. Threads racing on the first call store the same value. */
kvrt_cpu_isa kvrt_cpu_best_isa(void)
{
    static _Atomic int memo = -1;
    int isa = atomic_load_explicit(&memo, memory_order_relaxed);
    if (isa < 0) {
        isa = (int)detect_isa();
        atomic_store_explicit(&memo, isa, memory_order_relaxed);
    }
    return (kvrt_cpu_isa)isa;
}

/* ---- portable C ------------------------------------------------------------------ */

/* Eight independent partial sums keep the FP adds pipelined (and let the
 * compiler use SSE lanes) without reassociation flags. */
static float sum8(const float acc[8])
{
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static float dot_f32_c(const void *w, const float *x, int64_t n)
{
    const float *f = w;
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += f[i + j] * x[i + j];
    float s = sum8(acc);
    for (; i < n; i++)
        s += f[i] * x[i];
    return s;
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

/* Eight signed bytes at p as floats (one load-and-extend, one convert). */
KVRT_AVX2 static inline __m256 load_i8x8(const int8_t *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

KVRT_AVX2 static float dot_f32_avx2(const void *w, const float *x, int64_t n)
{
    const float *f = w;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(f + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(f + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(f + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(f + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(f + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++)
        s += f[i] * x[i];
    return s;
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
    __m256 s0 = _mm256_mul_ps(load_i8x8(b->qs), _mm256_loadu_ps(x));
    __m256 s1 = _mm256_mul_ps(load_i8x8(b->qs + 8), _mm256_loadu_ps(x + 8));
    s0 = _mm256_fmadd_ps(load_i8x8(b->qs + 16), _mm256_loadu_ps(x + 16), s0);
    s1 = _mm256_fmadd_ps(load_i8x8(b->qs + 24), _mm256_loadu_ps(x + 24), s1);
    return _mm256_add_ps(s0, s1);
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

/* Values j..j+7 (low nibbles of bytes j..j+7) and j+16..j+23 (their high
 * nibbles) of a Q4_0 block, j = 0 or 8, as floats: zero-extending the bytes to
 * 32-bit lanes first leaves each nibble one mask or shift away. */
KVRT_AVX2 static inline void q4_0_unpack8_avx2(const uint8_t *qs, __m256 *lo, __m256 *hi)
{
    const __m256i m0f = _mm256_set1_epi32(0x0f), m8 = _mm256_set1_epi32(8);
    const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    *lo = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(q, m0f), m8));
    *hi = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(q, 4), m8));
}

KVRT_AVX2 static inline __m256 q4_0_block_avx2(const kvrt_block_q4_0 *b, const float *x)
{
    __m256 a, c, d, e;
    q4_0_unpack8_avx2(b->qs, &a, &c);
    q4_0_unpack8_avx2(b->qs + 8, &d, &e);
    __m256 s0 = _mm256_mul_ps(a, _mm256_loadu_ps(x));
    __m256 s1 = _mm256_mul_ps(d, _mm256_loadu_ps(x + 8));
    s0 = _mm256_fmadd_ps(c, _mm256_loadu_ps(x + 16), s0);
    s1 = _mm256_fmadd_ps(e, _mm256_loadu_ps(x + 24), s1);
    return _mm256_add_ps(s0, s1);
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
        for (int j = 0; j < KVRT_QK; j += 8)
            _mm256_storeu_ps(y + j, _mm256_mul_ps(load_i8x8(b[k].qs + j), d));
    }
}

KVRT_AVX2 static void dequant_q4_0_avx2(const void *w, float *y, int64_t n)
{
    const kvrt_block_q4_0 *b = w;
    for (int64_t k = 0; k < n / KVRT_QK; k++, y += KVRT_QK) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[k].d));
        for (int j = 0; j < KVRT_QK / 2; j += 8) {
            __m256 lo, hi;
            q4_0_unpack8_avx2(b[k].qs + j, &lo, &hi);
            _mm256_storeu_ps(y + j, _mm256_mul_ps(lo, d));
            _mm256_storeu_ps(y + j + 16, _mm256_mul_ps(hi, d));
        }
    }
}
#endif /* KVRT_CPU_HAVE_AVX2_KERNELS */

/* ---- selection ---------------------------------------------------------------------- */

kvrt_cpu_dot_fn kvrt_cpu_dot_kernel(kvrt_cpu_isa isa, kvrt_dtype type)
{
#if KVRT_CPU_HAVE_AVX2_KERNELS
    if (isa >= KVRT_CPU_ISA_AVX2) {
        switch (type) {
        case KVRT_DTYPE_F16: return dot_f16_avx2;
        case KVRT_DTYPE_BF16: return dot_bf16_avx2;
        case KVRT_DTYPE_Q8_0: return dot_q8_0_avx2;
        case KVRT_DTYPE_Q4_0: return dot_q4_0_avx2;
        case KVRT_DTYPE_F32: return dot_f32_avx2;
        default: return NULL; /* the types of cpu_quant.h: kvrt_cpu_quant_kernels_get */
        }
    }
#endif
    switch (type) {
    case KVRT_DTYPE_F16: return dot_f16_c;
    case KVRT_DTYPE_BF16: return dot_bf16_c;
    case KVRT_DTYPE_Q8_0: return dot_q8_0_c;
    case KVRT_DTYPE_Q4_0: return dot_q4_0_c;
    case KVRT_DTYPE_F32: return dot_f32_c;
    default: return NULL; /* the types of cpu_quant.h: kvrt_cpu_quant_kernels_get */
    }
}

kvrt_cpu_dequant_fn kvrt_cpu_dequant_kernel(kvrt_cpu_isa isa, kvrt_dtype type)
{
#if KVRT_CPU_HAVE_AVX2_KERNELS
    if (isa >= KVRT_CPU_ISA_AVX2) {
        switch (type) {
        case KVRT_DTYPE_F32: return dequant_f32_c; /* memcpy is already as fast as it gets */
        case KVRT_DTYPE_F16: return dequant_f16_avx2;
        case KVRT_DTYPE_BF16: return dequant_bf16_avx2;
        case KVRT_DTYPE_Q8_0: return dequant_q8_0_avx2;
        case KVRT_DTYPE_Q4_0: return dequant_q4_0_avx2;
        default: break;
        }
    }
#endif
    switch (type) {
    case KVRT_DTYPE_F32: return dequant_f32_c;
    case KVRT_DTYPE_F16: return dequant_f16_c;
    case KVRT_DTYPE_BF16: return dequant_bf16_c;
    case KVRT_DTYPE_Q8_0: return dequant_q8_0_c;
    case KVRT_DTYPE_Q4_0: return dequant_q4_0_c;
    default: break;
    }
    const kvrt_cpu_quant_kernels *k = kvrt_cpu_quant_kernels_get(isa, type);
    return k ? k->dequant : NULL;
}
