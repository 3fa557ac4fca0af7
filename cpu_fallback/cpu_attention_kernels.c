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
#include <string.h>

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
static inline float fp8_to_f32(kvrt_dtype type, uint8_t b)
{
    if (type == KVRT_DTYPE_FP8_E5M2)
        return kvrt_fp16_to_f32((uint16_t)(b << 8));
    return (b & 0x7f) == 0x7f ? NAN : kvrt_fp16_to_f32((uint16_t)(((b & 0x80) << 8) | ((b & 0x7f) << 7))) * 256.0f;
}

static void dequant_fp8_portable(kvrt_dtype type, const uint8_t *restrict vals, int64_t n, float *restrict out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = fp8_to_f32(type, vals[i]);
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

/* The decode entries of the portable table: rows other than F32 are
 * converted into tmp first (exactly), then scored/accumulated as F32. */
static const float *rows_portable(const kvrt_cpu_kv_rows *x, int32_t n, int32_t hd, float *restrict tmp)
{
    int64_t count = (int64_t)n * hd;
    if (x->dtype == KVRT_DTYPE_F32)
        return x->vals;
    if (x->dtype == KVRT_DTYPE_F16)
        h2f_portable(tmp, x->vals, count);
    else
        dequant_portable(x->dtype, x->vals, x->scales, count, tmp);
    return tmp;
}

static void scores_kv_portable(const float *restrict q, int32_t n_q, const kvrt_cpu_kv_rows *k, int32_t n,
                               int32_t hd, float scale, float *restrict s, int64_t s_stride, float *restrict tmp)
{
    scores_portable(q, n_q, rows_portable(k, n, hd, tmp), n, hd, scale, s, s_stride);
}

static void accum_kv_portable(const float *restrict p, int64_t p_stride, int32_t n_q, const kvrt_cpu_kv_rows *v,
                              int32_t n, int32_t hd, float *restrict acc, float *restrict tmp)
{
    accum_portable(p, p_stride, n_q, rows_portable(v, n, hd, tmp), n, hd, acc);
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


/* ---- AVX2 decode: rows converted in registers, tiles of rows x query heads ---- */

/* The KV formats the decode reads in place. Each is a constant in the
 * inlined tiles, so every format gets its own loops. */
enum { FMT_F32, FMT_F16, FMT_Q8, FMT_Q4, FMT_E4M3, FMT_E5M2 };

/* A run of rows in the tiles: row r's values at v + r * rb, its F16 scales
 * (q8_0 / q4_0) at sc + r * sb. */
typedef struct rows_x86 {
    const char *v;
    const uint8_t *sc;
    size_t rb, sb;
} rows_x86;

static int fmt_of(kvrt_dtype t)
{
    switch (t) {
    case KVRT_DTYPE_F16: return FMT_F16;
    case KVRT_DTYPE_Q8_0: return FMT_Q8;
    case KVRT_DTYPE_Q4_0: return FMT_Q4;
    case KVRT_DTYPE_FP8_E4M3: return FMT_E4M3;
    case KVRT_DTYPE_FP8_E5M2: return FMT_E5M2;
    default: return FMT_F32;
    }
}

static rows_x86 rows_x86_of(const kvrt_cpu_kv_rows *k, int32_t hd)
{
    int fmt = fmt_of(k->dtype);
    size_t bits = fmt == FMT_F32 ? 32 : fmt == FMT_F16 ? 16 : fmt == FMT_Q4 ? 4 : 8;
    rows_x86 x = {k->vals, k->scales, (size_t)hd * bits / 8, (size_t)(hd / 32) * 2};
    return x;
}

/* The rows from row r on. */
static KVRT_INLINE rows_x86 rows_from(rows_x86 x, int32_t r)
{
    x.v += (size_t)r * x.rb;
    x.sc = x.sc ? x.sc + (size_t)r * x.sb : NULL;
    return x;
}

/* Every format on one switch of a constant: M(FMT) is the call. */
#define KVRT_FMT_DISPATCH(fmt, M)                                                                                      \
    switch (fmt) {                                                                                                     \
    case FMT_F16: M(FMT_F16); break;                                                                                   \
    case FMT_Q8: M(FMT_Q8); break;                                                                                     \
    case FMT_Q4: M(FMT_Q4); break;                                                                                     \
    case FMT_E4M3: M(FMT_E4M3); break;                                                                                 \
    case FMT_E5M2: M(FMT_E5M2); break;                                                                                 \
    default: M(FMT_F32); break;                                                                                        \
    }

/* The F16 scale of element i of row r (q8_0 / q4_0). */
KVRT_AVX2 static KVRT_INLINE float scale_x86(const rows_x86 *x, int32_t r, int32_t i)
{
    uint16_t h;
    memcpy(&h, x->sc + (size_t)r * x->sb + (size_t)(i / 32) * 2, 2);
    return _cvtsh_ss(h);
}

/* Element i of row r as F32: the value dequant gives, bit for bit. */
KVRT_AVX2 static KVRT_INLINE float ld1_x86(int fmt, const rows_x86 *x, int32_t r, int32_t i)
{
    const char *row = x->v + (size_t)r * x->rb;
    const uint8_t *u = (const uint8_t *)row;
    switch (fmt) {
    case FMT_F16: return _cvtsh_ss(((const uint16_t *)(const void *)row)[i]);
    case FMT_Q8: return (float)(int8_t)u[i] * scale_x86(x, r, i);
    case FMT_Q4: {
        uint8_t b = u[(i & ~31) / 2 + (i & 15)];
        return (float)(((i & 16) ? b >> 4 : b & 15) - 8) * scale_x86(x, r, i);
    }
    case FMT_E4M3: /* as fp8_to_f32, through F16C */
        return (u[i] & 0x7f) == 0x7f ? NAN : _cvtsh_ss((uint16_t)(((u[i] & 0x80) << 8) | ((u[i] & 0x7f) << 7))) * 256.0f;
    case FMT_E5M2: return _cvtsh_ss((uint16_t)(u[i] << 8));
    default: return ((const float *)(const void *)row)[i];
    }
}

/* E4M3 codes (u16 lanes) to the F16 pattern 2^8 too small (dequant_fp8_portable);
 * the NaN codes become 0xffff, an F16 NaN. */
KVRT_AVX2 static KVRT_INLINE __m128i e4m3_f16_x8(__m128i b)
{
    __m128i mag = _mm_and_si128(b, _mm_set1_epi16(0x7f));
    __m128i h = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8), _mm_slli_epi16(mag, 7));
    return _mm_or_si128(h, _mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7f)));
}

/* 8 elements of row r from element i (a multiple of 8) as F32, converted in
 * registers: int8 / 4-bit values times their scale (exact), fp8 through F16. */
KVRT_AVX2 static KVRT_INLINE __m256 ld8_avx2(int fmt, const rows_x86 *x, int32_t r, int32_t i)
{
    const char *row = x->v + (size_t)r * x->rb;
    switch (fmt) {
    case FMT_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * (size_t)i)));
    case FMT_Q8: {
        __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(row + i));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_set1_ps(scale_x86(x, r, i)));
    }
    case FMT_Q4: { /* group of 32 in 16 bytes: value j low nibble of byte j, value j + 16 its high nibble */
        __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(row + (i & ~31) / 2 + (i & 15)));
        b = _mm_and_si128((i & 16) ? _mm_srli_epi16(b, 4) : b, _mm_set1_epi8(15));
        __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(b), _mm256_set1_epi32(8));
        return _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(scale_x86(x, r, i)));
    }
    case FMT_E4M3: {
        __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)(row + i)));
        return _mm256_mul_ps(_mm256_cvtph_ps(e4m3_f16_x8(b)), _mm256_set1_ps(256.0f));
    }
    case FMT_E5M2: {
        __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(const void *)(row + i)));
        return _mm256_cvtph_ps(_mm_slli_epi16(b, 8));
    }
    default: return _mm256_loadu_ps((const float *)(const void *)row + i);
    }
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
KVRT_AVX2 static KVRT_INLINE void sc_tile_avx2(const float *restrict q, int G, int fmt, rows_x86 k, int R, int32_t hd,
                                               float scale, float *restrict s, int64_t ss)
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
            __m256 kv = ld8_avx2(fmt, &k, r, d);
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
                t = fma1_x86(q[(size_t)g * (size_t)hd + e], ld1_x86(fmt, &k, r, e), t);
            s[g * ss + r] = scale * t;
        }
    }
}

KVRT_AVX2 static KVRT_INLINE void scores_kv_avx2_t(const float *restrict q, int32_t n_q, int fmt, rows_x86 k,
                                                   int32_t n, int32_t hd, float scale, float *restrict s, int64_t ss)
{
    for (int32_t g = 0; g < n_q;) {
        const float *qg = q + (size_t)g * (size_t)hd;
        float *sg = s + g * ss;
        int32_t r = 0;
        if (n_q - g >= 4) {
            for (; r + 2 <= n; r += 2)
                sc_tile_avx2(qg, 4, fmt, rows_from(k, r), 2, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx2(qg, 4, fmt, rows_from(k, r), 1, hd, scale, sg + r, ss);
            g += 4;
        } else if (n_q - g >= 2) {
            for (; r + 4 <= n; r += 4)
                sc_tile_avx2(qg, 2, fmt, rows_from(k, r), 4, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx2(qg, 2, fmt, rows_from(k, r), 1, hd, scale, sg + r, ss);
            g += 2;
        } else {
            for (; r + 8 <= n; r += 8)
                sc_tile_avx2(qg, 1, fmt, rows_from(k, r), 8, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx2(qg, 1, fmt, rows_from(k, r), 1, hd, scale, sg + r, ss);
            g += 1;
        }
    }
}

KVRT_AVX2 static void scores_kv_avx2(const float *restrict q, int32_t n_q, const kvrt_cpu_kv_rows *k, int32_t n,
                                     int32_t hd, float scale, float *restrict s, int64_t s_stride, float *restrict tmp)
{
    (void)tmp;
    rows_x86 x = rows_x86_of(k, hd);
#define KVRT_SC(F) scores_kv_avx2_t(q, n_q, F, x, n, hd, scale, s, s_stride)
    KVRT_FMT_DISPATCH(fmt_of(k->dtype), KVRT_SC)
#undef KVRT_SC
}

/* acc[g][d .. d + 8 * DC) += sum_r p[g][r] * v[r][...] for G heads, each
 * lane a chain in increasing r; the values are converted once per row. */
KVRT_AVX2 static KVRT_INLINE void acc_tile_avx2(const float *restrict p, int64_t ps, int G, int fmt, rows_x86 v,
                                                int32_t n, int DC, int32_t d, float *restrict acc, int32_t hd)
{
    __m256 a[8];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < DC; c++)
            a[g * DC + c] = _mm256_loadu_ps(acc + (size_t)g * (size_t)hd + d + 8 * c);
    for (int32_t r = 0; r < n; r++) {
        __m256 w[4];
        for (int g = 0; g < G; g++)
            w[g] = _mm256_broadcast_ss(p + g * ps + r);
        for (int c = 0; c < DC; c++) {
            __m256 x = ld8_avx2(fmt, &v, r, d + 8 * c);
            for (int g = 0; g < G; g++)
                a[g * DC + c] = _mm256_fmadd_ps(w[g], x, a[g * DC + c]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int c = 0; c < DC; c++)
            _mm256_storeu_ps(acc + (size_t)g * (size_t)hd + d + 8 * c, a[g * DC + c]);
}

KVRT_AVX2 static KVRT_INLINE void acc_heads_avx2(const float *restrict p, int64_t ps, int G, int fmt, rows_x86 v,
                                                 int32_t n, float *restrict acc, int32_t hd)
{
    int DC = 8 / G, d = 0;
    if (G == 3)
        DC = 2;
    for (; d + 8 * DC <= hd; d += 8 * DC)
        acc_tile_avx2(p, ps, G, fmt, v, n, DC, d, acc, hd);
    for (; d + 8 <= hd; d += 8)
        acc_tile_avx2(p, ps, G, fmt, v, n, 1, d, acc, hd);
    for (; d < hd; d++) {
        for (int g = 0; g < G; g++) {
            float t = acc[(size_t)g * (size_t)hd + d];
            for (int32_t r = 0; r < n; r++)
                t = fma1_x86(p[g * ps + r], ld1_x86(fmt, &v, r, d), t);
            acc[(size_t)g * (size_t)hd + d] = t;
        }
    }
}

KVRT_AVX2 static KVRT_INLINE void accum_kv_avx2_t(const float *restrict p, int64_t ps, int32_t n_q, int fmt,
                                                  rows_x86 v, int32_t n, int32_t hd, float *restrict acc)
{
    for (int32_t g = 0; g < n_q;) {
        int G = n_q - g >= 4 ? 4 : n_q - g >= 2 ? 2 : 1;
        const float *pg = p + g * ps;
        float *ag = acc + (size_t)g * (size_t)hd;
        if (G == 4)
            acc_heads_avx2(pg, ps, 4, fmt, v, n, ag, hd);
        else if (G == 2)
            acc_heads_avx2(pg, ps, 2, fmt, v, n, ag, hd);
        else
            acc_heads_avx2(pg, ps, 1, fmt, v, n, ag, hd);
        g += G;
    }
}

KVRT_AVX2 static void accum_kv_avx2(const float *restrict p, int64_t p_stride, int32_t n_q, const kvrt_cpu_kv_rows *v,
                                    int32_t n, int32_t hd, float *restrict acc, float *restrict tmp)
{
    (void)tmp;
    rows_x86 x = rows_x86_of(v, hd);
#define KVRT_AC(F) accum_kv_avx2_t(p, p_stride, n_q, F, x, n, hd, acc)
    KVRT_FMT_DISPATCH(fmt_of(v->dtype), KVRT_AC)
#undef KVRT_AC
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

/* 16 elements of row r from element i (a multiple of 16) as F32, as ld8_avx2. */
KVRT_AVX512 static KVRT_INLINE __m512 ld16_avx512(int fmt, const rows_x86 *x, int32_t r, int32_t i)
{
    const char *row = x->v + (size_t)r * x->rb;
    switch (fmt) {
    case FMT_F16: return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(row + 2 * (size_t)i)));
    case FMT_Q8: {
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(row + i));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), _mm512_set1_ps(scale_x86(x, r, i)));
    }
    case FMT_Q4: { /* the low nibbles of the group's 16 bytes, or their high ones */
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(row + (i & ~31) / 2));
        b = _mm_and_si128((i & 16) ? _mm_srli_epi16(b, 4) : b, _mm_set1_epi8(15));
        __m512i v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(b), _mm512_set1_epi32(8));
        return _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(scale_x86(x, r, i)));
    }
    case FMT_E4M3: {
        __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(row + i)));
        __m256i mag = _mm256_and_si256(b, _mm256_set1_epi16(0x7f));
        __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8),
                                    _mm256_slli_epi16(mag, 7));
        h = _mm256_or_si256(h, _mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7f))); /* NaN codes: 0xffff */
        return _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f));
    }
    case FMT_E5M2: {
        __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(row + i)));
        return _mm512_cvtph_ps(_mm256_slli_epi16(b, 8));
    }
    default: return _mm512_loadu_ps((const float *)(const void *)row + i);
    }
}

/* 32 elements of row r from element i (a multiple of 32) as F32 in two
 * registers, the same values as two ld16_avx512: a q8_0 / q4_0 group with its
 * scale fetched once (q4_0: nib * d - 8 d in one FMA, exact as (nib - 8) * d is). */
KVRT_AVX512 static KVRT_INLINE void ld32_avx512(int fmt, const rows_x86 *x, int32_t r, int32_t i, __m512 *x0,
                                                __m512 *x1)
{
    const char *row = x->v + (size_t)r * x->rb;
    if (fmt == FMT_Q8) {
        __m512 d = _mm512_set1_ps(scale_x86(x, r, i));
        __m128i b0 = _mm_loadu_si128((const __m128i *)(const void *)(row + i));
        __m128i b1 = _mm_loadu_si128((const __m128i *)(const void *)(row + i + 16));
        *x0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b0)), d);
        *x1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b1)), d);
    } else if (fmt == FMT_Q4) {
        /* the group's 16 values (n - 8) * d as a table, looked up by each lane's
         * low 4 bits (vpermps ignores the rest): the low nibbles as they come,
         * the high ones shifted down; every entry exact, as in dequant */
        const __m512 centred = _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
        __m512 table = _mm512_mul_ps(centred, _mm512_set1_ps(scale_x86(x, r, i)));
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(row + i / 2)));
        *x0 = _mm512_permutexvar_ps(b, table);
        *x1 = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
    } else {
        *x0 = ld16_avx512(fmt, x, r, i);
        *x1 = ld16_avx512(fmt, x, r, i + 16);
    }
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
KVRT_AVX512 static KVRT_INLINE void sc_tile_avx512(const float *restrict q, int G, int fmt, rows_x86 k, int R,
                                                   int32_t hd, float scale, float *restrict s, int64_t ss)
{
    __m512 acc[16];
    for (int i = 0; i < R * G; i++)
        acc[i] = _mm512_setzero_ps();
    int32_t d = 0;
    for (; d + 32 <= hd; d += 32) { /* per accumulator: chunk d, then d + 16, as in the 16-lane loop */
        __m512 q0[4], q1[4];
        for (int g = 0; g < G; g++) {
            q0[g] = _mm512_loadu_ps(q + (size_t)g * (size_t)hd + d);
            q1[g] = _mm512_loadu_ps(q + (size_t)g * (size_t)hd + d + 16);
        }
        for (int r = 0; r < R; r++) {
            __m512 k0, k1;
            ld32_avx512(fmt, &k, r, d, &k0, &k1);
            for (int g = 0; g < G; g++)
                acc[r * G + g] = _mm512_fmadd_ps(q1[g], k1, _mm512_fmadd_ps(q0[g], k0, acc[r * G + g]));
        }
    }
    for (; d + 16 <= hd; d += 16) {
        __m512 qv[4];
        for (int g = 0; g < G; g++)
            qv[g] = _mm512_loadu_ps(q + (size_t)g * (size_t)hd + d);
        for (int r = 0; r < R; r++) {
            __m512 kv = ld16_avx512(fmt, &k, r, d);
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
                t = fma1_x86(q[(size_t)g * (size_t)hd + e], ld1_x86(fmt, &k, r, e), t);
            s[g * ss + r] = scale * t;
        }
    }
}

KVRT_AVX512 static KVRT_INLINE void scores_kv_avx512_t(const float *restrict q, int32_t n_q, int fmt, rows_x86 k,
                                                       int32_t n, int32_t hd, float scale, float *restrict s, int64_t ss)
{
    for (int32_t g = 0; g < n_q;) {
        const float *qg = q + (size_t)g * (size_t)hd;
        float *sg = s + g * ss;
        int32_t r = 0;
        if (n_q - g >= 4) {
            for (; r + 4 <= n; r += 4)
                sc_tile_avx512(qg, 4, fmt, rows_from(k, r), 4, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx512(qg, 4, fmt, rows_from(k, r), 1, hd, scale, sg + r, ss);
            g += 4;
        } else if (n_q - g >= 2) {
            for (; r + 8 <= n; r += 8)
                sc_tile_avx512(qg, 2, fmt, rows_from(k, r), 8, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx512(qg, 2, fmt, rows_from(k, r), 1, hd, scale, sg + r, ss);
            g += 2;
        } else {
            for (; r + 16 <= n; r += 16)
                sc_tile_avx512(qg, 1, fmt, rows_from(k, r), 16, hd, scale, sg + r, ss);
            for (; r < n; r++)
                sc_tile_avx512(qg, 1, fmt, rows_from(k, r), 1, hd, scale, sg + r, ss);
            g += 1;
        }
    }
}

KVRT_AVX512 static void scores_kv_avx512(const float *restrict q, int32_t n_q, const kvrt_cpu_kv_rows *k, int32_t n,
                                         int32_t hd, float scale, float *restrict s, int64_t s_stride,
                                         float *restrict tmp)
{
    (void)tmp;
    rows_x86 x = rows_x86_of(k, hd);
#define KVRT_SC(F) scores_kv_avx512_t(q, n_q, F, x, n, hd, scale, s, s_stride)
    KVRT_FMT_DISPATCH(fmt_of(k->dtype), KVRT_SC)
#undef KVRT_SC
}

/* As acc_tile_avx2 with 16-lane chunks. */
KVRT_AVX512 static KVRT_INLINE void acc_tile_avx512(const float *restrict p, int64_t ps, int G, int fmt, rows_x86 v,
                                                    int32_t n, int DC, int32_t d, float *restrict acc, int32_t hd)
{
    __m512 a[16];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < DC; c++)
            a[g * DC + c] = _mm512_loadu_ps(acc + (size_t)g * (size_t)hd + d + 16 * c);
    for (int32_t r = 0; r < n; r++) {
        __m512 w[4];
        for (int g = 0; g < G; g++)
            w[g] = _mm512_set1_ps(p[g * ps + r]);
        for (int c = 0; c + 2 <= DC; c += 2) { /* pairs of chunks: a q8_0 / q4_0 group per pair (d is a multiple of 32) */
            __m512 x0, x1;
            ld32_avx512(fmt, &v, r, d + 16 * c, &x0, &x1);
            for (int g = 0; g < G; g++) {
                a[g * DC + c] = _mm512_fmadd_ps(w[g], x0, a[g * DC + c]);
                a[g * DC + c + 1] = _mm512_fmadd_ps(w[g], x1, a[g * DC + c + 1]);
            }
        }
        if (DC & 1) { /* the last chunk of an odd count */
            __m512 x = ld16_avx512(fmt, &v, r, d + 16 * (DC - 1));
            for (int g = 0; g < G; g++)
                a[g * DC + DC - 1] = _mm512_fmadd_ps(w[g], x, a[g * DC + DC - 1]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int c = 0; c < DC; c++)
            _mm512_storeu_ps(acc + (size_t)g * (size_t)hd + d + 16 * c, a[g * DC + c]);
}

KVRT_AVX512 static KVRT_INLINE void acc_heads_avx512(const float *restrict p, int64_t ps, int G, int fmt, rows_x86 v,
                                                     int32_t n, float *restrict acc, int32_t hd)
{
    int DC = G == 4 ? 4 : 8, d = 0;
    for (; d + 16 * DC <= hd; d += 16 * DC)
        acc_tile_avx512(p, ps, G, fmt, v, n, DC, d, acc, hd);
    for (; d + 16 <= hd; d += 16)
        acc_tile_avx512(p, ps, G, fmt, v, n, 1, d, acc, hd);
    for (; d < hd; d++) {
        for (int g = 0; g < G; g++) {
            float t = acc[(size_t)g * (size_t)hd + d];
            for (int32_t r = 0; r < n; r++)
                t = fma1_x86(p[g * ps + r], ld1_x86(fmt, &v, r, d), t);
            acc[(size_t)g * (size_t)hd + d] = t;
        }
    }
}

KVRT_AVX512 static KVRT_INLINE void accum_kv_avx512_t(const float *restrict p, int64_t ps, int32_t n_q, int fmt,
                                                      rows_x86 v, int32_t n, int32_t hd, float *restrict acc)
{
    for (int32_t g = 0; g < n_q;) {
        int G = n_q - g >= 4 ? 4 : n_q - g >= 2 ? 2 : 1;
        const float *pg = p + g * ps;
        float *ag = acc + (size_t)g * (size_t)hd;
        if (G == 4)
            acc_heads_avx512(pg, ps, 4, fmt, v, n, ag, hd);
        else if (G == 2)
            acc_heads_avx512(pg, ps, 2, fmt, v, n, ag, hd);
        else
            acc_heads_avx512(pg, ps, 1, fmt, v, n, ag, hd);
        g += G;
    }
}

KVRT_AVX512 static void accum_kv_avx512(const float *restrict p, int64_t p_stride, int32_t n_q,
                                        const kvrt_cpu_kv_rows *v, int32_t n, int32_t hd, float *restrict acc,
                                        float *restrict tmp)
{
    (void)tmp;
    rows_x86 x = rows_x86_of(v, hd);
#define KVRT_AC(F) accum_kv_avx512_t(p, p_stride, n_q, F, x, n, hd, acc)
    KVRT_FMT_DISPATCH(fmt_of(v->dtype), KVRT_AC)
#undef KVRT_AC
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
