/* Inner loops of the CPU attention kernels, one table per instruction set
 * (portable C, AVX2+FMA+F16C, AVX-512), chosen at run time: the library is
 * built without -march. The decode entries read F16 or F32 rows in place and
 * convert F16 in registers. Every score is one dot product whose order of
 * operations does not depend on how rows are grouped into runs or tiles, and
 * every output lane sums its rows in increasing order, so results are the
 * same bitwise whatever the KV layout (paged blocks or contiguous). */
#include "common/fp16.h"
#include "cpu_attention.h"

#include <math.h>
#include <stdatomic.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVRT_HAVE_X86 1
#endif
#if defined(KVRT_HAVE_X86) && defined(__GNUC__)
#include <cpuid.h>
#endif

#define KVRT_INLINE inline __attribute__((always_inline))

/* ---- portable kernels ---------------------------------------------------------------- */

static inline float dot_portable(const float *restrict a, const float *restrict b, int32_t n)
{
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0}; /* independent lanes the compiler maps to SIMD registers */
    int32_t d = 0;
    for (; d + 8 <= n; d += 8) {
        for (int i = 0; i < 8; i++)
            lane[i] += a[d + i] * b[d + i];
    }
    for (; d < n; d++)
        lane[d & 7] += a[d] * b[d];
    return ((lane[0] + lane[4]) + (lane[1] + lane[5])) + ((lane[2] + lane[6]) + (lane[3] + lane[7]));
}

static void scores_portable(const float *restrict q, int32_t n_q, const float *restrict k, int32_t n, int32_t hd,
                            float scale, float *restrict s, int64_t s_stride)
{
    for (int32_t r = 0; r < n; r++) {
        const float *kr = k + (size_t)r * (size_t)hd;
        for (int32_t g = 0; g < n_q; g++)
            s[g * s_stride + r] = scale * dot_portable(q + (size_t)g * (size_t)hd, kr, hd);
    }
}

static void accum_portable(const float *restrict p, int64_t p_stride, int32_t n_q, const float *restrict v,
                           int32_t n, int32_t hd, float *restrict acc)
{
    for (int32_t r = 0; r < n; r++) {
        const float *vr = v + (size_t)r * (size_t)hd;
        for (int32_t g = 0; g < n_q; g++) {
            float w = p[g * p_stride + r];
            float *y = acc + (size_t)g * (size_t)hd;
            for (int32_t d = 0; d < hd; d++)
                y[d] += w * vr[d];
        }
    }
}

static void h2f_portable(float *restrict dst, const uint16_t *restrict src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = kvrt_fp16_to_f32(src[i]);
}

static void f2h_portable(uint16_t *restrict dst, const float *restrict src, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = kvrt_f32_to_fp16(src[i]);
}


/* The decode entries of the portable table: F16 rows are converted into tmp
 * first, then scored/accumulated as F32 (the conversion is exact). */
static const float *rows_portable(const void *x, bool f16, int32_t n, int32_t hd, float *restrict tmp)
{
    if (!f16)
        return x;
    h2f_portable(tmp, x, (int64_t)n * hd);
    return tmp;
}

static void scores_kv_portable(const float *restrict q, int32_t n_q, const void *k, bool f16, int32_t n, int32_t hd,
                               float scale, float *restrict s, int64_t s_stride, float *restrict tmp)
{
    scores_portable(q, n_q, rows_portable(k, f16, n, hd, tmp), n, hd, scale, s, s_stride);
}

static void accum_kv_portable(const float *restrict p, int64_t p_stride, int32_t n_q, const void *v, bool f16,
                              int32_t n, int32_t hd, float *restrict acc, float *restrict tmp)
{
    accum_portable(p, p_stride, n_q, rows_portable(v, f16, n, hd, tmp), n, hd, acc);
}

static void softmax_portable(float *restrict row, int32_t n, float *m, float *l)
{
    float mx = row[0], sum = 0.0f;
    for (int32_t i = 1; i < n; i++)
        mx = row[i] > mx ? row[i] : mx;
    for (int32_t i = 0; i < n; i++) {
        row[i] = expf(row[i] - mx);
        sum += row[i];
    }
    *m = mx;
    *l = sum;
}

/* Quantized KV groups (kv_layout.h) to F32: q * d is exact in F32 (8 x 11
 * significant bits), so every table gives the same bits. */
/* fp8 KV bytes to F32 (kv_layout.h): E5M2 is the upper byte of an F16;
 * E4M3 moves its bits into an F16 pattern 2^8 too small, NaN apart. */
static void dequant_fp8_portable(kvrt_dtype type, const uint8_t *restrict vals, int64_t n, float *restrict out)
{
    for (int64_t i = 0; i < n; i++) {
        uint8_t b = vals[i];
        if (type == KVRT_DTYPE_FP8_E5M2)
            out[i] = kvrt_fp16_to_f32((uint16_t)(b << 8));
        else
            out[i] = (b & 0x7f) == 0x7f ? NAN
                                        : kvrt_fp16_to_f32((uint16_t)(((b & 0x80) << 8) | ((b & 0x7f) << 7))) * 256.0f;
    }
}

static void dequant_portable(kvrt_dtype type, const uint8_t *restrict vals, const uint8_t *restrict scales,
                             int64_t n, float *restrict out)
{
    if (type == KVRT_DTYPE_FP8_E4M3 || type == KVRT_DTYPE_FP8_E5M2) {
        dequant_fp8_portable(type, vals, n, out);
        return;
    }
    for (int64_t g = 0; g < n / 32; g++, out += 32) {
        float d = kvrt_fp16_to_f32((uint16_t)(scales[2 * g] | (scales[2 * g + 1] << 8)));
        if (type == KVRT_DTYPE_Q8_0) {
            const int8_t *q = (const int8_t *)(const void *)(vals + g * 32);
            for (int i = 0; i < 32; i++)
                out[i] = (float)q[i] * d;
        } else {
            const uint8_t *q = vals + g * 16;
            for (int i = 0; i < 16; i++) {
                out[i] = (float)((q[i] & 15) - 8) * d;
                out[i + 16] = (float)((q[i] >> 4) - 8) * d;
            }
        }
    }
}

static const kvrt_cpu_attn_kernels kernels_portable = {
    "portable", scores_portable, accum_portable, h2f_portable, f2h_portable, scores_kv_portable, accum_kv_portable,
    softmax_portable, dequant_portable,
};

/* ---- AVX2 + FMA + F16C kernels --------------------------------------------------------- */

#if defined(KVRT_HAVE_X86) && defined(__GNUC__)
#define KVRT_AVX2 __attribute__((target("avx2,fma,f16c")))

KVRT_AVX2 static inline float hsum_avx2(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

KVRT_AVX2 static inline float dot_avx2(const float *restrict a, const float *restrict b, int32_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int32_t d = 0;
    for (; d + 16 <= n; d += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), s1);
    }
    if (d + 8 <= n) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        d += 8;
    }
    float r = hsum_avx2(_mm256_add_ps(s0, s1));
    for (; d < n; d++)
        r += a[d] * b[d];
    return r;
}

/* Four query rows against one key row: the key is loaded once per 8 lanes. */
KVRT_AVX2 static inline void dot4_avx2(const float *restrict q, int32_t hd, const float *restrict k, float out[4])
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    const float *q0 = q, *q1 = q + hd, *q2 = q + 2 * (size_t)hd, *q3 = q + 3 * (size_t)hd;
    int32_t d = 0;
    for (; d + 8 <= hd; d += 8) {
        __m256 kv = _mm256_loadu_ps(k + d);
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(q0 + d), kv, s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(q1 + d), kv, s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(q2 + d), kv, s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(q3 + d), kv, s3);
    }
    out[0] = hsum_avx2(s0);
    out[1] = hsum_avx2(s1);
    out[2] = hsum_avx2(s2);
    out[3] = hsum_avx2(s3);
    for (; d < hd; d++) {
        out[0] += q0[d] * k[d];
        out[1] += q1[d] * k[d];
        out[2] += q2[d] * k[d];
        out[3] += q3[d] * k[d];
    }
}

KVRT_AVX2 static void scores_avx2(const float *restrict q, int32_t n_q, const float *restrict k, int32_t n,
                                  int32_t hd, float scale, float *restrict s, int64_t s_stride)
{
    for (int32_t r = 0; r < n; r++) {
        const float *kr = k + (size_t)r * (size_t)hd;
        int32_t g = 0;
        for (; g + 4 <= n_q; g += 4) {
            float d4[4];
            dot4_avx2(q + (size_t)g * (size_t)hd, hd, kr, d4);
            for (int i = 0; i < 4; i++)
                s[(g + i) * s_stride + r] = scale * d4[i];
        }
        for (; g < n_q; g++)
            s[g * s_stride + r] = scale * dot_avx2(q + (size_t)g * (size_t)hd, kr, hd);
    }
}

/* Each output lane sums its rows in increasing r (a chain per register), so
 * the result equals the row-by-row order whatever the run length. */
KVRT_AVX2 static void accum_avx2(const float *restrict p, int64_t p_stride, int32_t n_q, const float *restrict v,
                                 int32_t n, int32_t hd, float *restrict acc)
{
    for (int32_t g = 0; g < n_q; g++) {
        const float *pg = p + g * p_stride;
        float *y = acc + (size_t)g * (size_t)hd;
        int32_t d = 0;
        for (; d + 32 <= hd; d += 32) {
            __m256 a0 = _mm256_loadu_ps(y + d), a1 = _mm256_loadu_ps(y + d + 8);
            __m256 a2 = _mm256_loadu_ps(y + d + 16), a3 = _mm256_loadu_ps(y + d + 24);
            for (int32_t r = 0; r < n; r++) {
                const float *vr = v + (size_t)r * (size_t)hd + d;
                __m256 w = _mm256_broadcast_ss(pg + r);
                a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr), a0);
                a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 8), a1);
                a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 16), a2);
                a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(vr + 24), a3);
            }
            _mm256_storeu_ps(y + d, a0);
            _mm256_storeu_ps(y + d + 8, a1);
            _mm256_storeu_ps(y + d + 16, a2);
            _mm256_storeu_ps(y + d + 24, a3);
        }
        for (; d + 8 <= hd; d += 8) {
            __m256 a0 = _mm256_loadu_ps(y + d);
            for (int32_t r = 0; r < n; r++)
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(pg + r), _mm256_loadu_ps(v + (size_t)r * (size_t)hd + d), a0);
            _mm256_storeu_ps(y + d, a0);
        }
        for (; d < hd; d++) {
            float a = y[d];
            for (int32_t r = 0; r < n; r++)
                a += pg[r] * v[(size_t)r * (size_t)hd + d];
            y[d] = a;
        }
    }
}

KVRT_AVX2 static void h2f_avx2(float *restrict dst, const uint16_t *restrict src, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(src + i))));
    for (; i < n; i++)
        dst[i] = _cvtsh_ss(src[i]);
}

KVRT_AVX2 static void f2h_avx2(uint16_t *restrict dst, const float *restrict src, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++)
        dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}


/* ---- AVX2 decode: F16 converted in registers, tiles of rows x query heads ---- */

/* 8 elements of a row from element i: F16 converted, or F32. */
KVRT_AVX2 static KVRT_INLINE __m256 ld8_avx2(const char *row, int32_t i, bool f16)
{
    if (f16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * (size_t)i)));
    return _mm256_loadu_ps((const float *)(const void *)row + i);
}

KVRT_AVX2 static KVRT_INLINE float ld1_x86(const char *row, int32_t i, bool f16)
{
    if (f16)
        return _cvtsh_ss(((const uint16_t *)(const void *)row)[i]);
    return ((const float *)(const void *)row)[i];
}

/* a * b + c rounded once, spelled out so no compiler choice changes it. */
KVRT_AVX2 static KVRT_INLINE float fma1_x86(float a, float b, float c)
{
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
}

/* out[i] = scale * hsum_avx2(a[i]) for 8 registers at once: the same
 * additions in the same order (halves, then lanes i + 2, then i + 1), done
 * on transposed registers, so a row scored in a tile and a row scored alone
 * agree bitwise. */
KVRT_AVX2 static KVRT_INLINE void hsum8_avx2(const __m256 a[8], float scale, float out[8])
{
    __m256 p[4], y[2];
    for (int k = 0; k < 4; k++) /* [a(2k) lo+hi | a(2k+1) lo+hi] */
        p[k] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * k], a[2 * k + 1], 0x20),
                             _mm256_permute2f128_ps(a[2 * k], a[2 * k + 1], 0x31));
    for (int k = 0; k < 2; k++) /* per 128-bit lane: lanes i + 2 of two registers */
        y[k] = _mm256_add_ps(_mm256_shuffle_ps(p[2 * k], p[2 * k + 1], 0x44),
                             _mm256_shuffle_ps(p[2 * k], p[2 * k + 1], 0xEE));
    __m256 f = _mm256_add_ps(_mm256_shuffle_ps(y[0], y[1], 0x88), _mm256_shuffle_ps(y[0], y[1], 0xDD));
    float t[8];
    _mm256_storeu_ps(t, _mm256_mul_ps(f, _mm256_set1_ps(scale)));
    for (int l = 0; l < 2; l++) /* f[4 l + j] holds a[2 j + l] */
        for (int j = 0; j < 4; j++)
            out[2 * j + l] = t[4 * l + j];
}

/* Scores of R rows x G query heads (R * G <= 8 chains): one accumulator per
 * score over 8-lane chunks, a fixed horizontal sum, then the scalar tail. */
KVRT_AVX2 static KVRT_INLINE void sc_tile_avx2(const float *restrict q, int G, const char *k, size_t rb, int R,
                                               bool f16, int32_t hd, float scale, float *restrict s, int64_t ss)
{
    __m256 acc[8];
    for (int i = 0; i < R * G; i++)
        acc[i] = _mm256_setzero_ps();
    int32_t d = 0;
    for (; d + 8 <= hd; d += 8) {
        __m256 qv[4];
        for (int g = 0; g < G; g++)
            qv[g] = _mm256_loadu_ps(q + (size_t)g * (size_t)hd + d);
        for (int r = 0; r < R; r++) {
            __m256 kv = ld8_avx2(k + (size_t)r * rb, d, f16);
            for (int g = 0; g < G; g++)
                acc[r * G + g] = _mm256_fmadd_ps(qv[g], kv, acc[r * G + g]);
        }
    }
    if (R * G == 8 && d == hd) {
        float t[8];
        hsum8_avx2(acc, scale, t);
        for (int r = 0; r < R; r++)
            for (int g = 0; g < G; g++)
                s[g * ss + r] = t[r * G + g];
        return;
    }
    for (int r = 0; r < R; r++) {
        for (int g = 0; g < G; g++) {
            float t = hsum_avx2(acc[r * G + g]);
            for (int32_t e = d; e < hd; e++)
                t = fma1_x86(q[(size_t)g * (size_t)hd + e], ld1_x86(k + (size_t)r * rb, e, f16), t);
            s[g * ss + r] = scale * t;
        }
    }
}

KVRT_AVX2 static KVRT_INLINE void scores_kv_avx2_t(const float *restrict q, int32_t n_q, const char *k, bool f16,
                                                   int32_t n, int32_t hd, float scale, float *restrict s, int64_t ss)
{
    size_t rb = (size_t)hd * (f16 ? 2 : 4);
    for (int32_t g = 0; g < n_q;) {
        const float *qg = q + (size_t)g * (size_t)hd;
        float *sg = s + g * ss;
        int32_t r = 0;
        if (n_q - g >= 4) {
            for (; r + 2 <= n; r += 2)
                sc_tile_avx2(qg, 4, k + (size_t)r * rb, rb, 2, f16, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx2(qg, 4, k + (size_t)r * rb, rb, 1, f16, hd, scale, sg + r, ss);
            g += 4;
        } else if (n_q - g >= 2) {
            for (; r + 4 <= n; r += 4)
                sc_tile_avx2(qg, 2, k + (size_t)r * rb, rb, 4, f16, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx2(qg, 2, k + (size_t)r * rb, rb, 1, f16, hd, scale, sg + r, ss);
            g += 2;
        } else {
            for (; r + 8 <= n; r += 8)
                sc_tile_avx2(qg, 1, k + (size_t)r * rb, rb, 8, f16, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx2(qg, 1, k + (size_t)r * rb, rb, 1, f16, hd, scale, sg + r, ss);
            g += 1;
        }
    }
}

KVRT_AVX2 static void scores_kv_avx2(const float *restrict q, int32_t n_q, const void *k, bool f16, int32_t n,
                                     int32_t hd, float scale, float *restrict s, int64_t s_stride, float *restrict tmp)
{
    (void)tmp;
    if (f16)
        scores_kv_avx2_t(q, n_q, k, true, n, hd, scale, s, s_stride);
    else
        scores_kv_avx2_t(q, n_q, k, false, n, hd, scale, s, s_stride);
}

/* acc[g][d .. d + 8 * DC) += sum_r p[g][r] * v[r][...] for G heads, each
 * lane a chain in increasing r; the values are converted once per row. */
KVRT_AVX2 static KVRT_INLINE void acc_tile_avx2(const float *restrict p, int64_t ps, int G, const char *v, size_t rb,
                                                int32_t n, int DC, int32_t d, bool f16, float *restrict acc,
                                                int32_t hd)
{
    __m256 a[8];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < DC; c++)
            a[g * DC + c] = _mm256_loadu_ps(acc + (size_t)g * (size_t)hd + d + 8 * c);
    for (int32_t r = 0; r < n; r++) {
        const char *vr = v + (size_t)r * rb;
        __m256 w[4];
        for (int g = 0; g < G; g++)
            w[g] = _mm256_broadcast_ss(p + g * ps + r);
        for (int c = 0; c < DC; c++) {
            __m256 x = ld8_avx2(vr, d + 8 * c, f16);
            for (int g = 0; g < G; g++)
                a[g * DC + c] = _mm256_fmadd_ps(w[g], x, a[g * DC + c]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int c = 0; c < DC; c++)
            _mm256_storeu_ps(acc + (size_t)g * (size_t)hd + d + 8 * c, a[g * DC + c]);
}

KVRT_AVX2 static KVRT_INLINE void acc_heads_avx2(const float *restrict p, int64_t ps, int G, const char *v,
                                                 size_t rb, int32_t n, bool f16, float *restrict acc, int32_t hd)
{
    int DC = 8 / G, d = 0;
    if (G == 3)
        DC = 2;
    for (; d + 8 * DC <= hd; d += 8 * DC)
        acc_tile_avx2(p, ps, G, v, rb, n, DC, d, f16, acc, hd);
    for (; d + 8 <= hd; d += 8)
        acc_tile_avx2(p, ps, G, v, rb, n, 1, d, f16, acc, hd);
    for (; d < hd; d++) {
        for (int g = 0; g < G; g++) {
            float t = acc[(size_t)g * (size_t)hd + d];
            for (int32_t r = 0; r < n; r++)
                t = fma1_x86(p[g * ps + r], ld1_x86(v + (size_t)r * rb, d, f16), t);
            acc[(size_t)g * (size_t)hd + d] = t;
        }
    }
}

KVRT_AVX2 static KVRT_INLINE void accum_kv_avx2_t(const float *restrict p, int64_t ps, int32_t n_q, const char *v,
                                                  bool f16, int32_t n, int32_t hd, float *restrict acc)
{
    size_t rb = (size_t)hd * (f16 ? 2 : 4);
    for (int32_t g = 0; g < n_q;) {
        int G = n_q - g >= 4 ? 4 : n_q - g >= 2 ? 2 : 1;
        const float *pg = p + g * ps;
        float *ag = acc + (size_t)g * (size_t)hd;
        if (G == 4)
            acc_heads_avx2(pg, ps, 4, v, rb, n, f16, ag, hd);
        else if (G == 2)
            acc_heads_avx2(pg, ps, 2, v, rb, n, f16, ag, hd);
        else
            acc_heads_avx2(pg, ps, 1, v, rb, n, f16, ag, hd);
        g += G;
    }
}

KVRT_AVX2 static void accum_kv_avx2(const float *restrict p, int64_t p_stride, int32_t n_q, const void *v, bool f16,
                                    int32_t n, int32_t hd, float *restrict acc, float *restrict tmp)
{
    (void)tmp;
    if (f16)
        accum_kv_avx2_t(p, p_stride, n_q, v, true, n, hd, acc);
    else
        accum_kv_avx2_t(p, p_stride, n_q, v, false, n, hd, acc);
}

/* exp(x) for x <= 0 in 8 lanes: x = k ln2 + r with |r| <= ln2 / 2, a degree-6
 * Taylor polynomial for exp(r) (relative error ~1e-7), times 2^k built in the
 * exponent bits. Inputs below -87 give exp(-87) ~ 1.6e-38 instead of a
 * subnormal, far below anything a softmax sum can see. */
KVRT_AVX2 static KVRT_INLINE __m256 exp_avx2(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145752f), x); /* ln2 split in two for accuracy */
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

KVRT_AVX2 static void softmax_avx2(float *restrict row, int32_t n, float *m, float *l)
{
    int32_t i = 0;
    __m256 vm = _mm256_set1_ps(row[0]);
    for (; i + 8 <= n; i += 8)
        vm = _mm256_max_ps(vm, _mm256_loadu_ps(row + i));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float mx = _mm_cvtss_f32(h);
    for (; i < n; i++)
        mx = row[i] > mx ? row[i] : mx;
    __m256 bm = _mm256_set1_ps(mx), vs = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(row + i), bm));
        _mm256_storeu_ps(row + i, e);
        vs = _mm256_add_ps(vs, e);
    }
    if (i < n) { /* the tail through the same polynomial; lanes past n masked to 0 */
        float pad[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int32_t rest = n - i;
        for (int32_t c = 0; c < rest; c++)
            pad[c] = row[i + c];
        __m256 live = _mm256_cmp_ps(_mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_ps((float)rest), _CMP_LT_OQ);
        __m256 e = _mm256_and_ps(exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(pad), bm)), live);
        _mm256_storeu_ps(pad, e);
        for (int32_t c = 0; c < rest; c++)
            row[i + c] = pad[c];
        vs = _mm256_add_ps(vs, e);
    }
    *m = mx;
    *l = hsum_avx2(vs);
}

/* As dequant_fp8_portable, 8 values at a time through F16C (the same bits). */
KVRT_AVX2 static void dequant_fp8_avx2(kvrt_dtype type, const uint8_t *restrict vals, int64_t n, float *restrict out)
{
    const bool e5 = type == KVRT_DTYPE_FP8_E5M2;
    const __m128i low7 = _mm_set1_epi16(0x7f), sign = _mm_set1_epi16(0x80);
    const __m256 two8 = _mm256_set1_ps(256.0f), nan = _mm256_set1_ps(NAN);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)(vals + i)));
        if (e5) {
            _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_slli_epi16(b, 8)));
            continue;
        }
        __m128i mag = _mm_and_si128(b, low7);
        __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, sign), 8), _mm_slli_epi16(mag, 7));
        __m256 x = _mm256_mul_ps(_mm256_cvtph_ps(h), two8);
        __m256 is_nan = _mm256_castsi256_ps(_mm256_cvtepi16_epi32(_mm_cmpeq_epi16(mag, low7)));
        _mm256_storeu_ps(out + i, _mm256_blendv_ps(x, nan, is_nan));
    }
    dequant_fp8_portable(type, vals + i, n - i, out + i);
}

KVRT_AVX2 static void dequant_avx2(kvrt_dtype type, const uint8_t *restrict vals, const uint8_t *restrict scales,
                                   int64_t n, float *restrict out)
{
    if (type == KVRT_DTYPE_FP8_E4M3 || type == KVRT_DTYPE_FP8_E5M2) {
        dequant_fp8_avx2(type, vals, n, out);
        return;
    }
    const __m128i low4 = _mm_set1_epi8(15), eight = _mm_set1_epi8(8);
    for (int64_t g = 0; g < n / 32; g++, out += 32) {
        __m256 d = _mm256_set1_ps(_cvtsh_ss((uint16_t)(scales[2 * g] | (scales[2 * g + 1] << 8))));
        __m128i a, b; /* values 0..15 and 16..31 as int8 */
        if (type == KVRT_DTYPE_Q8_0) {
            a = _mm_loadu_si128((const __m128i *)(const void *)(vals + g * 32));
            b = _mm_loadu_si128((const __m128i *)(const void *)(vals + g * 32 + 16));
        } else {
            __m128i q = _mm_loadu_si128((const __m128i *)(const void *)(vals + g * 16));
            a = _mm_sub_epi8(_mm_and_si128(q, low4), eight);
            b = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(q, 4), low4), eight);
        }
        _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(a)), d));
        _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))), d));
        _mm256_storeu_ps(out + 16, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), d));
        _mm256_storeu_ps(out + 24, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8))), d));
    }
}

static const kvrt_cpu_attn_kernels kernels_avx2 = {
    "avx2+fma+f16c", scores_avx2, accum_avx2, h2f_avx2, f2h_avx2, scores_kv_avx2, accum_kv_avx2, softmax_avx2,
    dequant_avx2,
};

#define KVRT_AVX512 __attribute__((target("avx512f,avx512dq,avx2,fma,f16c")))

/* ---- AVX-512 decode: the same tiles, 16 lanes and 32 registers ---- */

/* 16 elements of a row from element i: F16 converted, or F32. */
KVRT_AVX512 static KVRT_INLINE __m512 ld16_avx512(const char *row, int32_t i, bool f16)
{
    if (f16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * (size_t)i)));
    return _mm512_loadu_ps((const float *)(const void *)row + i);
}

/* A fixed order: the two 256-bit halves, then as hsum_avx2. */
KVRT_AVX512 static KVRT_INLINE float hsum_avx512(__m512 v)
{
    __m256 x = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    return hsum_avx2(x);
}

/* out[i] = scale * hsum_avx512(a[i]) for 16 registers at once, as hsum8_avx2. */
KVRT_AVX512 static KVRT_INLINE void hsum16_avx512(const __m512 a[16], float scale, float out[16])
{
    __m512 p[8], u[4], y[2];
    for (int k = 0; k < 8; k++) /* [a(2k) halves added | a(2k+1) halves added] */
        p[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * k], a[2 * k + 1], 0xEE));
    for (int k = 0; k < 4; k++) /* one register's 4 partial sums per 128-bit lane */
        u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * k], p[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(p[2 * k], p[2 * k + 1], 0xDD));
    for (int k = 0; k < 2; k++)
        y[k] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0x44),
                             _mm512_shuffle_ps(u[2 * k], u[2 * k + 1], 0xEE));
    __m512 f = _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], 0x88), _mm512_shuffle_ps(y[0], y[1], 0xDD));
    float t[16];
    _mm512_storeu_ps(t, _mm512_mul_ps(f, _mm512_set1_ps(scale)));
    for (int l = 0; l < 4; l++) /* f[4 l + j] holds a[4 j + l] */
        for (int j = 0; j < 4; j++)
            out[4 * j + l] = t[4 * l + j];
}

/* Scores of R rows x G query heads (R * G <= 16 chains): one accumulator per
 * score over 16-lane chunks, a fixed horizontal sum, then the scalar tail. */
KVRT_AVX512 static KVRT_INLINE void sc_tile_avx512(const float *restrict q, int G, const char *k, size_t rb, int R,
                                                   bool f16, int32_t hd, float scale, float *restrict s, int64_t ss)
{
    __m512 acc[16];
    for (int i = 0; i < R * G; i++)
        acc[i] = _mm512_setzero_ps();
    int32_t d = 0;
    for (; d + 16 <= hd; d += 16) {
        __m512 qv[4];
        for (int g = 0; g < G; g++)
            qv[g] = _mm512_loadu_ps(q + (size_t)g * (size_t)hd + d);
        for (int r = 0; r < R; r++) {
            __m512 kv = ld16_avx512(k + (size_t)r * rb, d, f16);
            for (int g = 0; g < G; g++)
                acc[r * G + g] = _mm512_fmadd_ps(qv[g], kv, acc[r * G + g]);
        }
    }
    if (R * G == 16 && d == hd) {
        float t[16];
        hsum16_avx512(acc, scale, t);
        for (int r = 0; r < R; r++)
            for (int g = 0; g < G; g++)
                s[g * ss + r] = t[r * G + g];
        return;
    }
    for (int r = 0; r < R; r++) {
        for (int g = 0; g < G; g++) {
            float t = hsum_avx512(acc[r * G + g]);
            for (int32_t e = d; e < hd; e++)
                t = fma1_x86(q[(size_t)g * (size_t)hd + e], ld1_x86(k + (size_t)r * rb, e, f16), t);
            s[g * ss + r] = scale * t;
        }
    }
}

KVRT_AVX512 static KVRT_INLINE void scores_kv_avx512_t(const float *restrict q, int32_t n_q, const char *k, bool f16,
                                                       int32_t n, int32_t hd, float scale, float *restrict s, int64_t ss)
{
    size_t rb = (size_t)hd * (f16 ? 2 : 4);
    for (int32_t g = 0; g < n_q;) {
        const float *qg = q + (size_t)g * (size_t)hd;
        float *sg = s + g * ss;
        int32_t r = 0;
        if (n_q - g >= 4) {
            for (; r + 4 <= n; r += 4)
                sc_tile_avx512(qg, 4, k + (size_t)r * rb, rb, 4, f16, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx512(qg, 4, k + (size_t)r * rb, rb, 1, f16, hd, scale, sg + r, ss);
            g += 4;
        } else if (n_q - g >= 2) {
            for (; r + 8 <= n; r += 8)
                sc_tile_avx512(qg, 2, k + (size_t)r * rb, rb, 8, f16, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx512(qg, 2, k + (size_t)r * rb, rb, 1, f16, hd, scale, sg + r, ss);
            g += 2;
        } else {
            for (; r + 16 <= n; r += 16)
                sc_tile_avx512(qg, 1, k + (size_t)r * rb, rb, 16, f16, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx512(qg, 1, k + (size_t)r * rb, rb, 1, f16, hd, scale, sg + r, ss);
            g += 1;
        }
    }
}

KVRT_AVX512 static void scores_kv_avx512(const float *restrict q, int32_t n_q, const void *k, bool f16, int32_t n,
                                         int32_t hd, float scale, float *restrict s, int64_t s_stride, float *restrict tmp)
{
    (void)tmp;
    if (f16)
        scores_kv_avx512_t(q, n_q, k, true, n, hd, scale, s, s_stride);
    else
        scores_kv_avx512_t(q, n_q, k, false, n, hd, scale, s, s_stride);
}

/* As acc_tile_avx2 with 16-lane chunks. */
KVRT_AVX512 static KVRT_INLINE void acc_tile_avx512(const float *restrict p, int64_t ps, int G, const char *v, size_t rb,
                                                    int32_t n, int DC, int32_t d, bool f16, float *restrict acc,
                                                    int32_t hd)
{
    __m512 a[16];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < DC; c++)
            a[g * DC + c] = _mm512_loadu_ps(acc + (size_t)g * (size_t)hd + d + 16 * c);
    for (int32_t r = 0; r < n; r++) {
        const char *vr = v + (size_t)r * rb;
        __m512 w[4];
        for (int g = 0; g < G; g++)
            w[g] = _mm512_set1_ps(p[g * ps + r]);
        for (int c = 0; c < DC; c++) {
            __m512 x = ld16_avx512(vr, d + 16 * c, f16);
            for (int g = 0; g < G; g++)
                a[g * DC + c] = _mm512_fmadd_ps(w[g], x, a[g * DC + c]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int c = 0; c < DC; c++)
            _mm512_storeu_ps(acc + (size_t)g * (size_t)hd + d + 16 * c, a[g * DC + c]);
}

KVRT_AVX512 static KVRT_INLINE void acc_heads_avx512(const float *restrict p, int64_t ps, int G, const char *v,
                                                     size_t rb, int32_t n, bool f16, float *restrict acc, int32_t hd)
{
    int DC = G == 4 ? 4 : 8, d = 0;
    for (; d + 16 * DC <= hd; d += 16 * DC)
        acc_tile_avx512(p, ps, G, v, rb, n, DC, d, f16, acc, hd);
    for (; d + 16 <= hd; d += 16)
        acc_tile_avx512(p, ps, G, v, rb, n, 1, d, f16, acc, hd);
    for (; d < hd; d++) {
        for (int g = 0; g < G; g++) {
            float t = acc[(size_t)g * (size_t)hd + d];
            for (int32_t r = 0; r < n; r++)
                t = fma1_x86(p[g * ps + r], ld1_x86(v + (size_t)r * rb, d, f16), t);
            acc[(size_t)g * (size_t)hd + d] = t;
        }
    }
}

KVRT_AVX512 static KVRT_INLINE void accum_kv_avx512_t(const float *restrict p, int64_t ps, int32_t n_q, const char *v,
                                                      bool f16, int32_t n, int32_t hd, float *restrict acc)
{
    size_t rb = (size_t)hd * (f16 ? 2 : 4);
    for (int32_t g = 0; g < n_q;) {
        int G = n_q - g >= 4 ? 4 : n_q - g >= 2 ? 2 : 1;
        const float *pg = p + g * ps;
        float *ag = acc + (size_t)g * (size_t)hd;
        if (G == 4)
            acc_heads_avx512(pg, ps, 4, v, rb, n, f16, ag, hd);
        else if (G == 2)
            acc_heads_avx512(pg, ps, 2, v, rb, n, f16, ag, hd);
        else
            acc_heads_avx512(pg, ps, 1, v, rb, n, f16, ag, hd);
        g += G;
    }
}

KVRT_AVX512 static void accum_kv_avx512(const float *restrict p, int64_t p_stride, int32_t n_q, const void *v, bool f16,
                                        int32_t n, int32_t hd, float *restrict acc, float *restrict tmp)
{
    (void)tmp;
    if (f16)
        accum_kv_avx512_t(p, p_stride, n_q, v, true, n, hd, acc);
    else
        accum_kv_avx512_t(p, p_stride, n_q, v, false, n, hd, acc);
}

static const kvrt_cpu_attn_kernels kernels_avx512 = {
    "avx512", scores_avx2, accum_avx2, h2f_avx2, f2h_avx2, scores_kv_avx512, accum_kv_avx512, softmax_avx2,
    dequant_avx2,
};


/* F16C is bit 29 of ECX in CPUID leaf 1 (read directly: not every compiler
 * accepts "f16c" in __builtin_cpu_supports). */
static bool cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29)) != 0;
}

static bool cpu_has_avx2(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_has_f16c();
}

static bool cpu_has_avx512(void)
{
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
}
#endif

int kvrt_cpu_attn_kernels_all(const kvrt_cpu_attn_kernels **out, int max)
{
    int n = 0;
#if defined(KVRT_AVX2)
    if (n < max && cpu_has_avx512())
        out[n++] = &kernels_avx512;
    if (n < max && cpu_has_avx2())
        out[n++] = &kernels_avx2;
#endif
    if (n < max)
        out[n++] = &kernels_portable;
    return n;
}

const kvrt_cpu_attn_kernels *kvrt_cpu_attn_kernels_get(void)
{
    /* CPUID traps to the hypervisor in a VM: ask once per process */
    static _Atomic(const kvrt_cpu_attn_kernels *) best;
    const kvrt_cpu_attn_kernels *b = atomic_load_explicit(&best, memory_order_relaxed);
    if (!b) {
        const kvrt_cpu_attn_kernels *k[4];
        kvrt_cpu_attn_kernels_all(k, 4);
        b = k[0];
        atomic_store_explicit(&best, b, memory_order_relaxed);
    }
    return b;
}
