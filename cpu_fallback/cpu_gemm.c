/* Packed, register-blocked F32 GEMM (see cpu_gemm.h for the contract).
 *
 * The classic layering: W rows are packed KC values at a time into panels of
 * NR rows, interleaved by k ([kc][NR]: one aligned vector load per k), X rows
 * into panels of MR rows ([kc][MR]: one broadcast per row per k); a micro-kernel
 * keeps an MR x NR tile of Y in registers across the KC slice. Panels past the
 * edge of X or W are padded with zeros and their results thrown away, so one
 * micro-kernel serves every shape.
 *
 * Summation order: the micro-kernel adds k in order onto the tile it loaded
 * (zeros for the first slice), so blocking never reorders an element's sum. */
#include "cpu_gemm.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define KVRT_GEMM_HAVE_AVX2 1
#include <immintrin.h>
#endif

enum {
    MR = KVRT_CPU_GEMM_MR,
    NR = KVRT_CPU_GEMM_NR,
    KC = KVRT_CPU_GEMM_KC,
    MC = KVRT_CPU_GEMM_MC,
    NC = KVRT_CPU_GEMM_NC,
};

_Static_assert(MC % MR == 0 && NC % NR == 0, "cache blocks hold whole register tiles");

/* c[MR][ldc] (+)= a[kc][MR] * b[kc][NR]; accumulate false: c is only written. */
typedef void (*micro_fn)(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, bool accumulate);

/* ---- packing ---------------------------------------------------------------------- */

/* rows x kc values of src (row stride ld) into ceil(rows / R) panels of
 * [kc][R], rows past the end as zeros. Used for X (R = MR) and W (R = NR). */
static void pack_panels(const float *src, int64_t ld, int64_t rows, int64_t kc, int R, float *dst)
{
    for (int64_t r0 = 0; r0 < rows; r0 += R, dst += kc * R) {
        const int64_t nr = KVRT_MIN((int64_t)R, rows - r0);
        for (int64_t r = 0; r < nr; r++) {
            const float *s = src + (r0 + r) * ld;
            float *d = dst + r;
            for (int64_t p = 0; p < kc; p++)
                d[p * R] = s[p];
        }
        for (int64_t r = nr; r < R; r++)
            for (int64_t p = 0; p < kc; p++)
                dst[p * R + r] = 0.0f;
    }
}

/* ---- portable micro-kernel ------------------------------------------------------------ */

static void micro_c(int64_t kc, const float *a, const float *b, float *c, int64_t ldc, bool accumulate)
{
    float t[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++)
            t[i][j] = accumulate ? c[i * ldc + j] : 0.0f;
    for (int64_t p = 0; p < kc; p++, a += MR, b += NR) {
        for (int i = 0; i < MR; i++) {
            const float ai = a[i];
            for (int j = 0; j < NR; j++)
                t[i][j] += ai * b[j];
        }
    }
    for (int i = 0; i < MR; i++)
        memcpy(c + i * ldc, t[i], sizeof(t[i]));
}

/* ---- AVX2 + FMA micro-kernel ----------------------------------------------------------- */

#if KVRT_GEMM_HAVE_AVX2
#define KVRT_GEMM_AVX2 __attribute__((target("avx2,fma")))

/* 12 accumulators (6 rows x 2 vectors of 8), 2 W loads and 1 broadcast: 15 of
 * the 16 YMM registers; 12 independent FMA chains hide the FMA latency. */
KVRT_GEMM_AVX2 static void micro_avx2(int64_t kc, const float *a, const float *b, float *c, int64_t ldc,
                                      bool accumulate)
{
    __m256 c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51;
    if (accumulate) {
        c00 = _mm256_loadu_ps(c + 0 * ldc), c01 = _mm256_loadu_ps(c + 0 * ldc + 8);
        c10 = _mm256_loadu_ps(c + 1 * ldc), c11 = _mm256_loadu_ps(c + 1 * ldc + 8);
        c20 = _mm256_loadu_ps(c + 2 * ldc), c21 = _mm256_loadu_ps(c + 2 * ldc + 8);
        c30 = _mm256_loadu_ps(c + 3 * ldc), c31 = _mm256_loadu_ps(c + 3 * ldc + 8);
        c40 = _mm256_loadu_ps(c + 4 * ldc), c41 = _mm256_loadu_ps(c + 4 * ldc + 8);
        c50 = _mm256_loadu_ps(c + 5 * ldc), c51 = _mm256_loadu_ps(c + 5 * ldc + 8);
    } else {
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = _mm256_setzero_ps();
    }
    for (int64_t p = 0; p < kc; p++, a += MR, b += NR) {
        const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
        __m256 ai = _mm256_broadcast_ss(a + 0);
        c00 = _mm256_fmadd_ps(ai, b0, c00), c01 = _mm256_fmadd_ps(ai, b1, c01);
        ai = _mm256_broadcast_ss(a + 1);
        c10 = _mm256_fmadd_ps(ai, b0, c10), c11 = _mm256_fmadd_ps(ai, b1, c11);
        ai = _mm256_broadcast_ss(a + 2);
        c20 = _mm256_fmadd_ps(ai, b0, c20), c21 = _mm256_fmadd_ps(ai, b1, c21);
        ai = _mm256_broadcast_ss(a + 3);
        c30 = _mm256_fmadd_ps(ai, b0, c30), c31 = _mm256_fmadd_ps(ai, b1, c31);
        ai = _mm256_broadcast_ss(a + 4);
        c40 = _mm256_fmadd_ps(ai, b0, c40), c41 = _mm256_fmadd_ps(ai, b1, c41);
        ai = _mm256_broadcast_ss(a + 5);
        c50 = _mm256_fmadd_ps(ai, b0, c50), c51 = _mm256_fmadd_ps(ai, b1, c51);
    }
    _mm256_storeu_ps(c + 0 * ldc, c00), _mm256_storeu_ps(c + 0 * ldc + 8, c01);
    _mm256_storeu_ps(c + 1 * ldc, c10), _mm256_storeu_ps(c + 1 * ldc + 8, c11);
    _mm256_storeu_ps(c + 2 * ldc, c20), _mm256_storeu_ps(c + 2 * ldc + 8, c21);
    _mm256_storeu_ps(c + 3 * ldc, c30), _mm256_storeu_ps(c + 3 * ldc + 8, c31);
    _mm256_storeu_ps(c + 4 * ldc, c40), _mm256_storeu_ps(c + 4 * ldc + 8, c41);
    _mm256_storeu_ps(c + 5 * ldc, c50), _mm256_storeu_ps(c + 5 * ldc + 8, c51);
}

/* 8 rows of 8 floats (r[i] = row i) to 8 columns (r[j] = column j). */
KVRT_GEMM_AVX2 static inline void transpose8_avx2(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
}

/* pack_panels for W (R = NR): whole panels go through 8 x 8 register
 * transposes, which is most of the packing time saved (the scalar copy
 * touches one float of 16 rows per step); the edges take the scalar path. */
KVRT_GEMM_AVX2 static void pack_w_avx2(const float *src, int64_t ld, int64_t rows, int64_t kc, float *dst)
{
    const int64_t full = rows / NR * NR, kc8 = kc / 8 * 8;
    for (int64_t r0 = 0; r0 < full; r0 += NR, dst += kc * NR) {
        for (int64_t p = 0; p < kc8; p += 8) {
            for (int h = 0; h < NR; h += 8) {
                __m256 v[8];
                for (int i = 0; i < 8; i++)
                    v[i] = _mm256_loadu_ps(src + (r0 + h + i) * ld + p);
                transpose8_avx2(v);
                for (int q = 0; q < 8; q++)
                    _mm256_store_ps(dst + (p + q) * NR + h, v[q]);
            }
        }
        for (int64_t r = 0; r < NR; r++)
            for (int64_t p = kc8; p < kc; p++)
                dst[p * NR + r] = src[(r0 + r) * ld + p];
    }
    if (full < rows)
        pack_panels(src + full * ld, ld, rows - full, kc, NR, dst);
}

#endif /* KVRT_GEMM_HAVE_AVX2 */

/* ---- driver ------------------------------------------------------------------------------ */

static void pack_w(bool avx2, const float *src, int64_t ld, int64_t rows, int64_t kc, float *dst)
{
#if KVRT_GEMM_HAVE_AVX2
    if (avx2) {
        pack_w_avx2(src, ld, rows, kc, dst);
        return;
    }
#endif
    (void)avx2;
    pack_panels(src, ld, rows, kc, NR, dst);
}

/* One register tile of Y; an edge tile goes through a full-size buffer so the
 * micro-kernel never touches Y outside [mr][nr]. */
static void tile(micro_fn micro, int64_t kc, const float *a, const float *b, float *c, int64_t ldc, int64_t mr,
                 int64_t nr, bool accumulate)
{
    if (mr == MR && nr == NR) {
        micro(kc, a, b, c, ldc, accumulate);
        return;
    }
    float t[MR * NR] __attribute__((aligned(32)));
    if (accumulate) {
        memset(t, 0, sizeof(t)); /* the lanes past the edge are computed too, then dropped */
        for (int64_t i = 0; i < mr; i++)
            memcpy(t + i * NR, c + i * ldc, (size_t)nr * sizeof(float));
    }
    micro(kc, a, b, t, NR, accumulate);
    for (int64_t i = 0; i < mr; i++)
        memcpy(c + i * ldc, t + i * NR, (size_t)nr * sizeof(float));
}

/* Y[mc][nc] (+)= packed X block * packed W block over one KC slice. */
static void macro(micro_fn micro, int64_t mc, int64_t nc, int64_t kc, const float *pa, const float *pb, float *y,
                  int64_t y_stride, bool accumulate)
{
    for (int64_t j = 0; j < nc; j += NR) {
        const float *b = pb + (j / NR) * kc * NR;
        for (int64_t i = 0; i < mc; i += MR)
            tile(micro, kc, pa + (i / MR) * kc * MR, b, y + i * y_stride + j, y_stride, KVRT_MIN((int64_t)MR, mc - i),
                 KVRT_MIN((int64_t)NR, nc - j), accumulate);
    }
}

void kvrt_cpu_gemm(kvrt_cpu_isa isa, int64_t m, int64_t n, int64_t k, const float *x, int64_t x_stride,
                   const float *w, int64_t w_stride, float *y, int64_t y_stride, float *scratch)
{
    micro_fn micro = micro_c;
    bool avx2 = false;
#if KVRT_GEMM_HAVE_AVX2
    if (isa >= KVRT_CPU_ISA_AVX2)
        micro = micro_avx2, avx2 = true;
#else
    (void)isa;
#endif
    float *pa = scratch;           /* [MC / MR][KC][MR] */
    float *pb = scratch + MC * KC; /* [NC / NR][KC][NR] */
    for (int64_t j0 = 0; j0 < n; j0 += NC) {
        const int64_t nc = KVRT_MIN((int64_t)NC, n - j0);
        for (int64_t p0 = 0; p0 < k; p0 += KC) {
            const int64_t kc = KVRT_MIN((int64_t)KC, k - p0);
            pack_w(avx2, w + j0 * w_stride + p0, w_stride, nc, kc, pb);
            for (int64_t i0 = 0; i0 < m; i0 += MC) {
                const int64_t mc = KVRT_MIN((int64_t)MC, m - i0);
                /* scalar: for 6 rows it measured faster than register transposes */
                pack_panels(x + i0 * x_stride + p0, x_stride, mc, kc, MR, pa);
                macro(micro, mc, nc, kc, pa, pb, y + i0 * y_stride + j0, y_stride, p0 > 0);
            }
        }
    }
}
