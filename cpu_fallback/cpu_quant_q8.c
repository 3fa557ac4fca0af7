/* The opt-in int8-activation decode GEMV (kvrt_context_params.
 * int8_activations): the activation vector is rounded once per GEMV to int8
 * per block of 256 values with an F32 scale (kvrt_cpu_q8k: llama.cpp's
 * Q8_K layout as a fact of the format, kvrt's own code), and each row is an
 * integer dot product of its levels with those bytes, scaled per block.
 * Not DESIGN.md's F32 contract: the rounding of x is the error, and the
 * tests hold it against a reference that rounds x the same way.
 *
 * Types: q4_K and q6_K (the bulk of Q4_K_M, Q6_K and Q5_K_M files). Kernels:
 * portable C, and AVX-512 VNNI (vpdpbusd: 64 unsigned levels times 64
 * signed activations per instruction, summed in fours into 16 lanes). */
#include "cpu_quant.h"

#include "common/fp16.h"
#include "common/quant.h"

#include <math.h>
#include <string.h>

void kvrt_cpu_q8k_quantize(const float *x, int64_t n, kvrt_cpu_q8k *y)
{
    for (int64_t k = 0; k < n / 256; k++, x += 256, y++) {
        float amax = 0.0f;
        for (int i = 0; i < 256; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        y->d = amax / 127.0f;
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int i = 16 * g; i < 16 * g + 16; i++) {
                const long q = lrintf(x[i] * inv); /* |q| <= 127 by construction */
                y->qs[i] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
                sum += y->qs[i];
            }
            y->bsums[g] = (int16_t)sum;
        }
    }
}

/* ---- portable ------------------------------------------------------------------------------ */

static float q8dot_q4_K_c(const void *w, const kvrt_cpu_q8k *a, int64_t n)
{
    const kvrt_block_q4_K *b = w;
    float sum = 0.0f;
    for (int64_t k = 0; k < n / 256; k++, b++, a++) {
        int32_t isum = 0, imin = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            kvrt_q4k_scale_min(b->scales, j, &sc, &m);
            const uint8_t *qs = b->qs + 32 * (j / 2);
            int32_t dot = 0;
            for (int l = 0; l < 32; l++)
                dot += (j % 2 ? qs[l] >> 4 : qs[l] & 0x0f) * a->qs[32 * j + l];
            isum += sc * dot;
            imin += m * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
        }
        sum += a->d * (kvrt_fp16_to_f32(b->d) * (float)isum - kvrt_fp16_to_f32(b->dmin) * (float)imin);
    }
    return sum;
}

static float q8dot_q6_K_c(const void *w, const kvrt_cpu_q8k *a, int64_t n)
{
    const kvrt_block_q6_K *b = w;
    float sum = 0.0f;
    for (int64_t k = 0; k < n / 256; k++, b++, a++) {
        int32_t isum = 0;
        for (int g = 0; g < 16; g++) {
            const int h = g / 8, gg = (g % 8) / 2, l0 = 16 * (g % 2);
            int32_t dot = 0;
            for (int l = l0; l < l0 + 16; l++) {
                const uint8_t lo = b->ql[64 * h + 32 * (gg % 2) + l];
                const int q = (gg < 2 ? lo & 0x0f : lo >> 4) | (((b->qh[32 * h + l] >> (2 * gg)) & 3) << 4);
                dot += (q - 32) * a->qs[16 * g + l - l0];
            }
            isum += b->scales[g] * dot;
        }
        sum += a->d * kvrt_fp16_to_f32(b->d) * (float)isum;
    }
    return sum;
}

/* ---- AVX-512 VNNI -------------------------------------------------------------------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#define KQVNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define HAVE_VNNI_KERNELS 1

/* 32 bytes at p (lanes 0..7) and at p + 64 (lanes 8..15) */
KQVNNI static inline __m512i two_halves(const int8_t *p)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p)),
                              _mm256_loadu_si256((const __m256i *)(p + 64)), 1);
}

/* q4_K: qs[64 c ..] holds sub-blocks 4 c (low nibbles, bytes 0..31), 4 c + 1 (high), 4 c + 2 and
 * 4 c + 3 (bytes 32..63); per lane, the dot of 4 levels with 4 activations, times its sub-block's
 * scale, summed as integers; the mins from the activations' group sums. */
KQVNNI static float q8dot_q4_K_vnni(const void *w, const kvrt_cpu_q8k *a, int64_t n)
{
    const kvrt_block_q4_K *b = w;
    const __m512i nib = _mm512_set1_epi8(0x0f);
    __m512 acc = _mm512_setzero_ps();
    __m256 accm = _mm256_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, b++, a++) {
        uint32_t u[3];
        memcpy(u, b->scales, sizeof(u));
        /* as q45_head of cpu_quant_avx512.c: 8 scales, 8 mins */
        const uint64_t sc = (u[0] & 0x3f3f3f3fu) | (uint64_t)((u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u)) << 32;
        const uint64_t mn =
            (u[1] & 0x3f3f3f3fu) | (uint64_t)(((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u)) << 32;
        const __m512i sc16 = _mm512_cvtepu8_epi32(_mm_cvtsi64_si128((long long)sc)); /* lanes 0..7 */
        __m512i isum = _mm512_setzero_si512();
        for (int c = 0; c < 2; c++) {
            const __m512i q = _mm512_loadu_si512(b->qs + 64 * c);
            const __m512i lo = _mm512_and_si512(q, nib), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), nib);
            const __m512i dlo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, two_halves(a->qs + 128 * c));
            const __m512i dhi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, two_halves(a->qs + 128 * c + 32));
            const int s = 4 * c, e = s + 2;
            const __m512i ilo = _mm512_setr_epi32(s, s, s, s, s, s, s, s, e, e, e, e, e, e, e, e);
            const __m512i ihi = _mm512_add_epi32(ilo, _mm512_set1_epi32(1));
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dlo, _mm512_permutexvar_epi32(ilo, sc16)));
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dhi, _mm512_permutexvar_epi32(ihi, sc16)));
        }
        /* m_j (bsums[2 j] + bsums[2 j + 1]) in 8 lanes */
        const __m128i m8 = _mm_cvtsi64_si128((long long)mn);
        const __m256i mpairs = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
        const __m256i imin = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), mpairs);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(a->d * _cvtsh_ss(b->d)), acc);
        accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(imin), _mm256_set1_ps(a->d * _cvtsh_ss(b->dmin)), accm);
    }
    __m128 m4 = _mm_add_ps(_mm256_castps256_ps128(accm), _mm256_extractf128_ps(accm, 1));
    m4 = _mm_add_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_add_ss(m4, _mm_movehdup_ps(m4));
    return _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(m4);
}

/* q6_K: half h's 6-bit levels as bytes in value order (low nibbles of ql[64 h ..] with qh's bit
 * pairs 0-1 / 2-3 above them: values 128 h + 0..63; high nibbles with pairs 4-5 / 6-7: the next
 * 64); level q - 32 = dot(q, x) - 32 bsum per group of 16. */
KQVNNI static float q8dot_q6_K_vnni(const void *w, const kvrt_cpu_q8k *a, int64_t n)
{
    const kvrt_block_q6_K *b = w;
    const __m512i nib = _mm512_set1_epi8(0x0f), six = _mm512_set1_epi8(0x3f);
    const __m512i g4 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    __m512 acc = _mm512_setzero_ps();
    __m256 accc = _mm256_setzero_ps();
    for (int64_t k = 0; k < n / 256; k++, b++, a++) {
        const __m128i s8 = _mm_loadu_si128((const __m128i *)b->scales);
        const __m512i sc = _mm512_cvtepi8_epi32(s8);
        __m512i isum = _mm512_setzero_si512();
        for (int h = 0; h < 2; h++) {
            __m512i hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qh + 32 * h)));
            hb = _mm512_mask_srli_epi32(hb, 0xff00, hb, 2); /* ql[l + 32]'s pairs two bits up */
            const __m512i q = _mm512_loadu_si512(b->ql + 64 * h);
            const __m512i lo =
                _mm512_and_si512(_mm512_ternarylogic_epi32(nib, q, _mm512_slli_epi32(hb, 4), 0xca), six);
            const __m512i hi =
                _mm512_and_si512(_mm512_ternarylogic_epi32(nib, _mm512_srli_epi32(q, 4), hb, 0xca), six);
            const __m512i dlo = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(a->qs + 128 * h));
            const __m512i dhi =
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, _mm512_loadu_si512(a->qs + 128 * h + 64));
            const __m512i glo = _mm512_add_epi32(g4, _mm512_set1_epi32(8 * h));
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dlo, _mm512_permutexvar_epi32(glo, sc)));
            isum = _mm512_add_epi32(
                isum, _mm512_mullo_epi32(dhi, _mm512_permutexvar_epi32(_mm512_add_epi32(glo, _mm512_set1_epi32(4)), sc)));
        }
        /* 32 sum_g sc_g bsums_g */
        const __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)a->bsums), _mm256_cvtepi8_epi16(s8));
        const float d = a->d * _cvtsh_ss(b->d);
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d), acc);
        accc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(corr), _mm256_set1_ps(32.0f * d), accc);
    }
    __m128 c4 = _mm_add_ps(_mm256_castps256_ps128(accc), _mm256_extractf128_ps(accc, 1));
    c4 = _mm_add_ps(c4, _mm_movehl_ps(c4, c4));
    c4 = _mm_add_ss(c4, _mm_movehdup_ps(c4));
    return _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(c4);
}

static bool cpu_has_vnni(void)
{
    return __builtin_cpu_supports("avx512vnni");
}
#else
#define HAVE_VNNI_KERNELS 0
#endif

kvrt_cpu_q8dot_fn kvrt_cpu_q8dot_kernel(kvrt_cpu_isa isa, kvrt_dtype type)
{
#if HAVE_VNNI_KERNELS
    if (isa >= KVRT_CPU_ISA_AVX512 && cpu_has_vnni()) {
        if (type == KVRT_DTYPE_Q4_K)
            return q8dot_q4_K_vnni;
        if (type == KVRT_DTYPE_Q6_K)
            return q8dot_q6_K_vnni;
    }
#endif
    /* AVX2 (or AVX-512 without VNNI): the F32 plane kernels are faster than the portable int8 ones */
    if (isa != KVRT_CPU_ISA_PORTABLE)
        return NULL;
    if (type == KVRT_DTYPE_Q4_K)
        return q8dot_q4_K_c;
    if (type == KVRT_DTYPE_Q6_K)
        return q8dot_q6_K_c;
    return NULL;
}
