/* Quantizers of the GGUF block types beyond q8_0/q4_0, kvrt's own: each
 * (sub-)block scale is chosen by trying a few candidate scales, refitting
 * each by least squares on the levels it picks, and keeping the one with
 * the smallest squared error. The k-quants then quantize their sub-block
 * scales against a super-block scale (stored as f16) and pick every level
 * again with the scale the file will really hold, so what a reader
 * dequantizes is what the error was minimised for. */
#include "common/quant.h"
#include "common/fp16.h"

#include <math.h>
#include <string.h>

static inline int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* Round to nearest (ties to even) for |v| < 2^22: adding 1.5 * 2^23 leaves
 * the integer in the low mantissa bits. Inline, unlike lrintf, which the
 * quantizers call for every candidate level. Larger |v| are clamped first. */
static inline int nearest(float v)
{
    v = v < -4194303.0f ? -4194303.0f : v > 4194303.0f ? 4194303.0f : v;
    float t = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &t, sizeof(i));
    return (i & 0x007fffff) - 0x00400000;
}

/* The value of largest magnitude (its sign kept); 0 for an all-zero block. */
static float signed_max(const float *x, int n)
{
    float m = 0.0f;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(m))
            m = x[i];
    return m;
}

/* x[i] ~ s * q[i], q in [lo, hi] with lo = -(hi + 1): returns s (any sign)
 * and the levels. Candidates put the largest magnitude near either end. */
static float fit_symmetric(const float *x, int n, int hi, int8_t *q)
{
    const int lo = -hi - 1;
    const float xm = signed_max(x, n);
    if (xm == 0.0f) {
        memset(q, 0, (size_t)n);
        return 0.0f;
    }
    float best_s = 0.0f, best_err = INFINITY;
    int8_t cand[32];
    for (int c = 0; c < 10; c++) {
        /* xm at level lo + c/3 (c < 6), or at level hi - (c - 6)/3 */
        float level = c < 6 ? (float)lo + (float)c / 3.0f : (float)hi - (float)(c - 6) / 3.0f;
        const float inv = level / xm;
        float sxq = 0.0f, sqq = 0.0f;
        for (int i = 0; i < n; i++) {
            cand[i] = (int8_t)clampi(nearest(x[i] * inv), lo, hi);
            sxq += x[i] * (float)cand[i];
            sqq += (float)(cand[i] * cand[i]);
        }
        if (sqq == 0.0f)
            continue;
        const float s = sxq / sqq;
        float err = 0.0f;
        for (int i = 0; i < n; i++) {
            float e = x[i] - s * (float)cand[i];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err;
            best_s = s;
            memcpy(q, cand, (size_t)n);
        }
    }
    return best_s;
}

/* Squared error of x ~ s * q + b with each q the nearest level in [0, hi]. */
static float affine_err(const float *x, int n, int hi, float s, float b)
{
    const float inv = 1.0f / s;
    float err = 0.0f;
    for (int i = 0; i < n; i++) {
        int q = clampi(nearest((x[i] - b) * inv), 0, hi);
        float e = x[i] - (s * (float)q + b);
        err += e * e;
    }
    return err;
}

/* x[i] ~ s * q[i] + b, q in [0, hi], s >= 0; with nonpos_offset, b <= 0
 * (the k-quants store -b as a non-negative min). Returns s, sets *b. Each
 * candidate step (xmax - xmin) / (hi + delta) picks levels, and (s, b) are
 * refitted by least squares on them, twice. */
static float fit_affine(const float *x, int n, int hi, bool nonpos_offset, float *b_out)
{
    float xmin = x[0], xmax = x[0];
    for (int i = 1; i < n; i++) {
        xmin = x[i] < xmin ? x[i] : xmin;
        xmax = x[i] > xmax ? x[i] : xmax;
    }
    if (nonpos_offset && xmin > 0.0f)
        xmin = 0.0f;
    if (xmax <= xmin) {
        *b_out = xmin;
        return 0.0f;
    }
    float best_s = (xmax - xmin) / (float)hi, best_b = xmin;
    float best_err = affine_err(x, n, hi, best_s, best_b);
    for (int c = 0; c < 6; c++) {
        float s = (xmax - xmin) / ((float)hi + 0.25f * (float)(c - 2)), b = xmin;
        for (int iter = 0; iter < 2; iter++) {
            const float inv = 1.0f / s;
            double sq = 0, sqq = 0, sx = 0, sxq = 0;
            for (int i = 0; i < n; i++) {
                int q = clampi(nearest((x[i] - b) * inv), 0, hi);
                sq += q, sqq += (double)q * q, sx += x[i], sxq += (double)x[i] * q;
            }
            double det = sqq * n - sq * sq;
            if (det <= 0.0)
                break;
            double ns = (sxq * n - sq * sx) / det, nb = (sqq * sx - sq * sxq) / det;
            if (nonpos_offset && nb > 0.0) { /* the best offset is positive: pin it at 0 */
                nb = 0.0;
                ns = sxq / sqq;
            }
            if (!(ns > 0.0))
                break;
            s = (float)ns, b = (float)nb;
            float err = affine_err(x, n, hi, s, b);
            if (err < best_err)
                best_err = err, best_s = s, best_b = b;
        }
    }
    *b_out = best_b;
    return best_s;
}

/* Index of the code-book value nearest to v. */
static int iq4_index(float v)
{
    int best = 0;
    float bd = fabsf(v - KVRT_IQ4_VALUES[0]);
    for (int k = 1; k < 16; k++) {
        float dd = fabsf(v - KVRT_IQ4_VALUES[k]);
        if (dd < bd)
            bd = dd, best = k;
    }
    return best;
}

/* x[i] ~ s * KVRT_IQ4_VALUES[idx[i]] for n values: returns s. */
static float fit_iq4(const float *x, int n, uint8_t *idx)
{
    const float xm = signed_max(x, n);
    if (xm == 0.0f) {
        memset(idx, 8, (size_t)n); /* value 1 * 0 */
        return 0.0f;
    }
    float best_s = 0.0f;
    double best_err = INFINITY;
    uint8_t cand[32];
    for (int c = 0; c < 26; c++) {
        /* xm near either end of the code book: -127 (c < 13) or 113 */
        float end = c < 13 ? (float)KVRT_IQ4_VALUES[0] + 2.0f * (float)(c - 6)
                           : (float)KVRT_IQ4_VALUES[15] + 2.0f * (float)(c - 19);
        float s0 = xm / end;
        double sxk = 0, skk = 0;
        for (int i = 0; i < n; i++) {
            cand[i] = (uint8_t)iq4_index(x[i] / s0);
            float k = KVRT_IQ4_VALUES[cand[i]];
            sxk += (double)x[i] * k, skk += (double)k * k;
        }
        float s = (float)(sxk / skk);
        double err = 0.0;
        for (int i = 0; i < n; i++) {
            double e = (double)x[i] - (double)s * KVRT_IQ4_VALUES[cand[i]];
            err += e * e;
        }
        if (err < best_err) {
            best_err = err, best_s = s;
            memcpy(idx, cand, (size_t)n);
        }
    }
    return best_s;
}

/* f16 round trip of a scale: what a reader will multiply by. */
static float as_f16(float v, uint16_t *out)
{
    *out = kvrt_f32_to_fp16(v);
    return kvrt_fp16_to_f32(*out);
}

static void put_nib32(uint8_t qs[16], int j, int v)
{
    if (j < 16)
        qs[j] = (uint8_t)((qs[j] & 0xf0) | v);
    else
        qs[j - 16] = (uint8_t)((qs[j - 16] & 0x0f) | (v << 4));
}

/* ---- 32-value types ---------------------------------------------------------------- */

/* q4_1 and q5_1: x ~ d * q + m, q in [0, hi]. qh NULL for q4_1. */
static void quant_affine32(const float *x, uint16_t *dd, uint16_t *mm, uint8_t *qh, uint8_t qs[16], int hi)
{
    float b;
    float s = fit_affine(x, KVRT_QK, hi, false, &b);
    float d = as_f16(s, dd), m = as_f16(b, mm);
    uint32_t h = 0;
    memset(qs, 0, 16);
    for (int j = 0; j < KVRT_QK; j++) {
        int q = d != 0.0f ? clampi(nearest((x[j] - m) / d), 0, hi) : 0;
        put_nib32(qs, j, q & 15);
        h |= (uint32_t)(q >> 4) << j;
    }
    if (qh)
        memcpy(qh, &h, 4);
}

void kvrt_quant_q4_1(const float *src, void *dst, int64_t n)
{
    kvrt_block_q4_1 *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK; k++)
        quant_affine32(src + k * KVRT_QK, &y[k].d, &y[k].m, NULL, y[k].qs, 15);
}

void kvrt_quant_q5_1(const float *src, void *dst, int64_t n)
{
    kvrt_block_q5_1 *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK; k++)
        quant_affine32(src + k * KVRT_QK, &y[k].d, &y[k].m, y[k].qh, y[k].qs, 31);
}

void kvrt_quant_q5_0(const float *src, void *dst, int64_t n)
{
    kvrt_block_q5_0 *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK; k++) {
        const float *x = src + k * KVRT_QK;
        int8_t q[KVRT_QK];
        float d = as_f16(fit_symmetric(x, KVRT_QK, 15, q), &y[k].d);
        uint32_t h = 0;
        memset(y[k].qs, 0, sizeof(y[k].qs));
        for (int j = 0; j < KVRT_QK; j++) {
            int u = (d != 0.0f ? clampi(nearest(x[j] / d), -16, 15) : 0) + 16;
            put_nib32(y[k].qs, j, u & 15);
            h |= (uint32_t)(u >> 4) << j;
        }
        memcpy(y[k].qh, &h, 4);
    }
}

/* Code-book indices of 32 values for scale d (stored as iq4_nl nibbles). */
static void iq4_pack32(const float *x, float d, uint8_t qs[16])
{
    memset(qs, 0, 16);
    for (int j = 0; j < 32; j++)
        put_nib32(qs, j, d != 0.0f ? iq4_index(x[j] / d) : 8);
}

void kvrt_quant_iq4_nl(const float *src, void *dst, int64_t n)
{
    kvrt_block_iq4_nl *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK; k++) {
        const float *x = src + k * KVRT_QK;
        uint8_t idx[KVRT_QK];
        float d = as_f16(fit_iq4(x, KVRT_QK, idx), &y[k].d);
        iq4_pack32(x, d, y[k].qs);
    }
}

/* ---- super-blocks of 256 -------------------------------------------------------------- */

/* Quantizes n_sub non-negative sub-block values v against a super scale
 * stored as f16 in *dd: out[j] = round(v[j] / d) in [0, qmax]. Returns d. */
static float super_unsigned(const float *v, int n_sub, int qmax, uint16_t *dd, uint8_t *out)
{
    float vmax = 0.0f;
    for (int j = 0; j < n_sub; j++)
        vmax = fmaxf(vmax, v[j]);
    float d = as_f16(vmax / (float)qmax, dd);
    for (int j = 0; j < n_sub; j++)
        out[j] = (uint8_t)(d > 0.0f ? clampi(nearest(v[j] / d), 0, qmax) : 0);
    return d;
}

/* As super_unsigned for signed sub-block scales: out[j] in [-(qmax + 1), qmax]. */
static float super_signed(const float *v, int n_sub, int qmax, uint16_t *dd, int *out)
{
    float vm = signed_max(v, n_sub);
    float d = as_f16(vm / (float)(-qmax - 1), dd);
    for (int j = 0; j < n_sub; j++)
        out[j] = d != 0.0f ? clampi(nearest(v[j] / d), -qmax - 1, qmax) : 0;
    return d;
}

/* Affine k-quants (q2_K, q4_K, q5_K): sub-block scales and mins. */
static void fit_subblocks_affine(const float *x, int n_sub, int sub, int hi, float *scales, float *mins)
{
    for (int j = 0; j < n_sub; j++) {
        float b;
        scales[j] = fit_affine(x + j * sub, sub, hi, true, &b);
        mins[j] = -b;
    }
}

void kvrt_quant_q2_K(const float *src, void *dst, int64_t n)
{
    kvrt_block_q2_K *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, src += KVRT_QK_K) {
        float scales[16], mins[16];
        uint8_t sc[16], mq[16];
        fit_subblocks_affine(src, 16, 16, 3, scales, mins);
        float d = super_unsigned(scales, 16, 15, &y[k].d, sc);
        float dmin = super_unsigned(mins, 16, 15, &y[k].dmin, mq);
        memset(y[k].qs, 0, sizeof(y[k].qs));
        for (int e = 0; e < KVRT_QK_K; e++) {
            int j = e / 16;
            float s = d * (float)sc[j], m = dmin * (float)mq[j];
            int q = s > 0.0f ? clampi(nearest((src[e] + m) / s), 0, 3) : 0;
            y[k].qs[32 * (e / 128) + e % 32] |= (uint8_t)(q << (2 * ((e % 128) / 32)));
        }
        for (int j = 0; j < 16; j++)
            y[k].scales[j] = (uint8_t)(sc[j] | (mq[j] << 4));
    }
}

void kvrt_quant_q3_K(const float *src, void *dst, int64_t n)
{
    kvrt_block_q3_K *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, src += KVRT_QK_K) {
        float scales[16];
        int8_t q[16];
        int ls[16];
        for (int j = 0; j < 16; j++)
            scales[j] = fit_symmetric(src + 16 * j, 16, 3, q);
        float d = super_signed(scales, 16, 31, &y[k].d, ls);
        memset(y[k].scales, 0, sizeof(y[k].scales));
        for (int j = 0; j < 16; j++) {
            int u = ls[j] + 32;
            if (j < 8)
                y[k].scales[j] |= (uint8_t)(u & 15);
            else
                y[k].scales[j - 8] |= (uint8_t)((u & 15) << 4);
            y[k].scales[8 + j % 4] |= (uint8_t)((u >> 4) << (2 * (j / 4)));
        }
        memset(y[k].qs, 0, sizeof(y[k].qs));
        memset(y[k].hmask, 0, sizeof(y[k].hmask));
        for (int e = 0; e < KVRT_QK_K; e++) {
            float s = d * (float)ls[e / 16];
            int u = (s != 0.0f ? clampi(nearest(src[e] / s), -4, 3) : 0) + 4;
            y[k].qs[32 * (e / 128) + e % 32] |= (uint8_t)((u & 3) << (2 * ((e % 128) / 32)));
            y[k].hmask[e % 32] |= (uint8_t)((u >> 2) << (e / 32));
        }
    }
}

/* Packs 8 6-bit scales and mins as kvrt_q4k_scale_min reads them. */
static void pack_q4k_scales(const uint8_t sc[8], const uint8_t m[8], uint8_t s[12])
{
    memset(s, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] |= sc[j];
            s[j + 4] |= m[j];
        } else {
            s[j + 4] = (uint8_t)((sc[j] & 15) | ((m[j] & 15) << 4));
            s[j - 4] |= (uint8_t)((sc[j] >> 4) << 6);
            s[j] |= (uint8_t)((m[j] >> 4) << 6);
        }
    }
}

/* q4_K (qh NULL, hi 15) and q5_K (hi 31). */
static void quant_q45_K(const float *x, uint16_t *dd, uint16_t *ddmin, uint8_t scales[12], uint8_t *qh,
                        uint8_t qs[128], int hi)
{
    float sub_scales[8], sub_mins[8];
    uint8_t sc[8], mq[8];
    fit_subblocks_affine(x, 8, 32, hi, sub_scales, sub_mins);
    float d = super_unsigned(sub_scales, 8, 63, dd, sc);
    float dmin = super_unsigned(sub_mins, 8, 63, ddmin, mq);
    pack_q4k_scales(sc, mq, scales);
    memset(qs, 0, 128);
    if (qh)
        memset(qh, 0, 32);
    for (int e = 0; e < KVRT_QK_K; e++) {
        int j = e / 32, l = e % 32;
        float s = d * (float)sc[j], m = dmin * (float)mq[j];
        int q = s > 0.0f ? clampi(nearest((x[e] + m) / s), 0, hi) : 0;
        qs[32 * (j / 2) + l] |= (uint8_t)((q & 15) << (4 * (j % 2)));
        if (qh)
            qh[l] |= (uint8_t)((q >> 4) << j);
    }
}

void kvrt_quant_q4_K(const float *src, void *dst, int64_t n)
{
    kvrt_block_q4_K *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++)
        quant_q45_K(src + k * KVRT_QK_K, &y[k].d, &y[k].dmin, y[k].scales, NULL, y[k].qs, 15);
}

void kvrt_quant_q5_K(const float *src, void *dst, int64_t n)
{
    kvrt_block_q5_K *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++)
        quant_q45_K(src + k * KVRT_QK_K, &y[k].d, &y[k].dmin, y[k].scales, y[k].qh, y[k].qs, 31);
}

void kvrt_quant_q6_K(const float *src, void *dst, int64_t n)
{
    kvrt_block_q6_K *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, src += KVRT_QK_K) {
        float scales[16];
        int8_t q[16];
        int ls[16];
        for (int j = 0; j < 16; j++)
            scales[j] = fit_symmetric(src + 16 * j, 16, 31, q);
        float d = super_signed(scales, 16, 127, &y[k].d, ls);
        for (int j = 0; j < 16; j++)
            y[k].scales[j] = (int8_t)ls[j];
        memset(y[k].ql, 0, sizeof(y[k].ql));
        memset(y[k].qh, 0, sizeof(y[k].qh));
        for (int e = 0; e < KVRT_QK_K; e++) {
            int h = e / 128, g = (e % 128) / 32, l = e % 32;
            float s = d * (float)ls[e / 16];
            int u = (s != 0.0f ? clampi(nearest(src[e] / s), -32, 31) : 0) + 32;
            y[k].ql[64 * h + 32 * (g % 2) + l] |= (uint8_t)((u & 15) << (g < 2 ? 0 : 4));
            y[k].qh[32 * h + l] |= (uint8_t)((u >> 4) << (2 * g));
        }
    }
}

void kvrt_quant_iq4_xs(const float *src, void *dst, int64_t n)
{
    kvrt_block_iq4_xs *y = dst;
    for (int64_t k = 0; k < n / KVRT_QK_K; k++, src += KVRT_QK_K) {
        float scales[8];
        uint8_t idx[32];
        int ls[8];
        for (int s = 0; s < 8; s++)
            scales[s] = fit_iq4(src + 32 * s, 32, idx);
        float d = super_signed(scales, 8, 31, &y[k].d, ls);
        y[k].scales_h = 0;
        memset(y[k].scales_l, 0, sizeof(y[k].scales_l));
        for (int s = 0; s < 8; s++) {
            int u = ls[s] + 32;
            y[k].scales_l[s / 2] |= (uint8_t)((u & 15) << (4 * (s % 2)));
            y[k].scales_h |= (uint16_t)((u >> 4) << (2 * s));
            iq4_pack32(src + 32 * s, d * (float)ls[s], y[k].qs + 16 * s);
        }
    }
}
