/* CPU paged attention: decode (split-K over partitions of the context, merged
 * by log-sum-exp) and tiled prefill (online softmax), both over the block
 * layout of DESIGN.md, with inner loops picked at run time (AVX2+FMA+F16C or
 * portable C; the library is built without -march). Everything accumulates in
 * F32; F16 KV is converted a run of rows at a time. */
#include "backend/attn_check.h"
#include "common/fp16.h"
#include "cpu_attention.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define KVRT_HAVE_X86 1
#endif

/* Rows of a run are converted/scored together; runs never cross a block, and
 * contiguous runs stop at this length so scratch stays small. */
#define KVRT_CONTIG_RUN 32
/* Query rows (tokens x group heads) per prefill tile. */
#define KVRT_PREFILL_ROWS 64

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

static const kvrt_cpu_attn_kernels kernels_portable = {
    "portable", scores_portable, accum_portable, h2f_portable, f2h_portable,
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

static const kvrt_cpu_attn_kernels kernels_avx2 = {
    "avx2+fma+f16c", scores_avx2, accum_avx2, h2f_avx2, f2h_avx2,
};

static bool cpu_has_avx2(void)
{
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
#endif

int kvrt_cpu_attn_kernels_all(const kvrt_cpu_attn_kernels **out, int max)
{
    int n = 0;
#if defined(KVRT_AVX2)
    if (n < max && cpu_has_avx2())
        out[n++] = &kernels_avx2;
#endif
    if (n < max)
        out[n++] = &kernels_portable;
    return n;
}

const kvrt_cpu_attn_kernels *kvrt_cpu_attn_kernels_get(void)
{
    const kvrt_cpu_attn_kernels *k[2];
    kvrt_cpu_attn_kernels_all(k, 2);
    return k[0];
}

int32_t kvrt_cpu_attn_partition_size(int32_t seq_len)
{
    /* longer partitions for long contexts keep the merge and per-task
     * overhead small; 256 and 512 are multiples of every block size */
    return seq_len <= 4096 ? 256 : 512;
}

/* ---- where the keys live ------------------------------------------------------------------ */

typedef struct kv_src {
    const char *k, *v;
    bool f16;
    int32_t n_kv, hd;
    int32_t run;              /* most rows per run: the block size (paged) or KVRT_CONTIG_RUN */
    const int32_t *tables;    /* paged: [num_seqs][max_blocks]; NULL: contiguous */
    int32_t max_blocks;
    int32_t max_len;          /* contiguous: positions per (sequence, head) */
} kv_src;

/* Byte offset of the keys from position j of (sequence s, head h) and how many
 * consecutive rows (<= want) lie there contiguously. */
static size_t kv_run(const kv_src *src, int32_t s, int32_t h, int32_t j, int32_t want, int32_t *n)
{
    size_t elem = src->f16 ? 2 : 4, row;
    if (src->tables) {
        int32_t bs = src->run, off = j % bs;
        int32_t block = src->tables[(size_t)s * (size_t)src->max_blocks + (size_t)(j / bs)];
        *n = KVRT_MIN(want, bs - off);
        row = ((size_t)block * (size_t)src->n_kv + (size_t)h) * (size_t)bs + (size_t)off;
    } else {
        *n = KVRT_MIN(want, src->run - j % src->run);
        row = ((size_t)s * (size_t)src->n_kv + (size_t)h) * (size_t)src->max_len + (size_t)j;
    }
    return row * (size_t)src->hd * elem;
}

/* F32 rows of a run: in place for F32 KV, converted into tmp for F16. */
static const float *kv_rows(const kv_src *src, const kvrt_cpu_attn_kernels *ker, const char *base, size_t off,
                            int32_t n, float *tmp)
{
    if (!src->f16)
        return (const float *)(const void *)(base + off);
    ker->h2f(tmp, (const uint16_t *)(const void *)(base + off), (int64_t)n * src->hd);
    return tmp;
}

/* ---- scratch: one allocation per call, carved up in order ---------------------------------- */

typedef struct arena {
    size_t size;
    char *base;
} arena;

/* Reserves count * elem bytes (64-byte aligned); with base == NULL only sizes. */
static void *arena_take(arena *a, size_t count, size_t elem, bool *overflow)
{
    size_t bytes;
    if (!kvrt_mul_size(count, elem, &bytes) || !kvrt_add_size(bytes, 63, &bytes) ||
        !kvrt_add_size(a->size, bytes & ~(size_t)63, &bytes)) {
        *overflow = true;
        return NULL;
    }
    void *p = a->base ? a->base + a->size : NULL;
    a->size = bytes;
    return p;
}

/* ---- decode ------------------------------------------------------------------------------- */

typedef struct decode_job {
    kv_src src;
    const kvrt_cpu_attn_kernels *ker;
    const kvrt_attn_desc *d;
    int32_t group;           /* query heads per KV head */
    const float *q;          /* [num_seqs] rows of q_stride */
    float *out;              /* [num_seqs] rows of o_stride */
    const int32_t *seq_lens;
    int32_t *unit_seq;       /* [n_units]: sequence of a (sequence, partition) unit */
    int32_t *unit_part;      /* [n_units]: its partition index */
    int32_t *seq_unit0;      /* [num_seqs]: first unit of the sequence */
    int32_t *seq_units;      /* [num_seqs]: its unit count */
    float *part_ml;          /* [n_units][n_kv][group][2]: partial max, sum */
    float *part_acc;         /* [n_units][n_kv][group][hd]: partial unnormalised outputs */
    float *scratch;          /* [n_threads][scratch_floats] */
    size_t scratch_floats;
    int32_t max_part;        /* largest partition size in the batch */
} decode_job;

/* Scores of the visible keys of partition [p0, p1) for the group's query rows,
 * then softmax numerators in place; returns how many keys. */
static int32_t decode_scores(const decode_job *j, int32_t s, int32_t h, int32_t p0, int32_t p1,
                             const int32_t ranges[2][2], int nr, float *sc, float *tmp, float *ml)
{
    const kv_src *src = &j->src;
    int32_t hd = src->hd, g_n = j->group, nv = 0;
    const float *qg = j->q + (size_t)s * (size_t)j->d->q_stride + (size_t)h * (size_t)g_n * (size_t)hd;
    for (int r = 0; r < nr; r++) {
        int32_t a = KVRT_MAX(ranges[r][0], p0), b = KVRT_MIN(ranges[r][1], p1);
        for (int32_t pos = a, n; pos < b; pos += n) {
            size_t off = kv_run(src, s, h, pos, b - pos, &n);
            const float *kr = kv_rows(src, j->ker, src->k, off, n, tmp);
            j->ker->scores(qg, g_n, kr, n, hd, j->d->scale, sc + nv, j->max_part);
            nv += n;
        }
    }
    for (int32_t g = 0; g < g_n; g++) {
        float *row = sc + (size_t)g * (size_t)j->max_part, m = row[0], l = 0.0f;
        for (int32_t i = 1; i < nv; i++)
            m = row[i] > m ? row[i] : m;
        for (int32_t i = 0; i < nv; i++) {
            row[i] = expf(row[i] - m);
            l += row[i];
        }
        ml[2 * g] = m;
        ml[2 * g + 1] = l;
    }
    return nv;
}

static void decode_values(const decode_job *j, int32_t s, int32_t h, int32_t p0, int32_t p1,
                          const int32_t ranges[2][2], int nr, const float *sc, float *tmp, float *acc)
{
    const kv_src *src = &j->src;
    int32_t hd = src->hd, nv = 0;
    memset(acc, 0, (size_t)j->group * (size_t)hd * sizeof(float));
    for (int r = 0; r < nr; r++) {
        int32_t a = KVRT_MAX(ranges[r][0], p0), b = KVRT_MIN(ranges[r][1], p1);
        for (int32_t pos = a, n; pos < b; pos += n) {
            size_t off = kv_run(src, s, h, pos, b - pos, &n);
            const float *vr = kv_rows(src, j->ker, src->v, off, n, tmp);
            j->ker->accum(sc + nv, j->max_part, j->group, vr, n, hd, acc);
            nv += n;
        }
    }
}

/* One (sequence, partition) unit for one KV head and all its query heads. */
static void decode_task(void *arg, int64_t t, int thread)
{
    const decode_job *j = arg;
    int32_t n_kv = j->src.n_kv, hd = j->src.hd, g_n = j->group;
    int64_t u = t / n_kv;
    int32_t h = (int32_t)(t % n_kv), s = j->unit_seq[u], len = j->seq_lens[s];
    int32_t psize = kvrt_cpu_attn_partition_size(len);
    int32_t p0 = j->unit_part[u] * psize, p1 = KVRT_MIN(p0 + psize, len);
    int32_t ranges[2][2];
    int nr = kvrt_attn_visible_ranges(len - 1, len - 1, j->d->window, j->d->sinks, ranges);

    float *sc = j->scratch + (size_t)thread * j->scratch_floats;   /* [group][max_part] */
    float *tmp = sc + (size_t)g_n * (size_t)j->max_part;          /* [run][hd] */
    float *own_acc = tmp + (size_t)j->src.run * (size_t)hd;       /* [group][hd] */
    float own_ml[2 * 64], *ml = g_n <= 64 ? own_ml : own_acc + (size_t)g_n * (size_t)hd;
    size_t slot = (size_t)u * (size_t)n_kv + (size_t)h;
    bool single = j->seq_units[s] == 1;
    if (!single)
        ml = j->part_ml + slot * (size_t)g_n * 2;
    float *acc = single ? own_acc : j->part_acc + slot * (size_t)g_n * (size_t)hd;

    decode_scores(j, s, h, p0, p1, ranges, nr, sc, tmp, ml);
    decode_values(j, s, h, p0, p1, ranges, nr, sc, tmp, acc);
    if (!single)
        return;
    float *o = j->out + (size_t)s * (size_t)j->d->o_stride + (size_t)h * (size_t)g_n * (size_t)hd;
    for (int32_t g = 0; g < g_n; g++) {
        float l = ml[2 * g + 1];
        for (int32_t d = 0; d < hd; d++)
            o[(size_t)g * (size_t)hd + (size_t)d] = acc[(size_t)g * (size_t)hd + (size_t)d] / l;
    }
}

/* Merges the partitions of one (sequence, KV head) by their log-sum-exp, in
 * partition order. */
static void decode_merge_task(void *arg, int64_t t, int thread)
{
    const decode_job *j = arg;
    int32_t n_kv = j->src.n_kv, hd = j->src.hd, g_n = j->group;
    int32_t s = (int32_t)(t / n_kv), h = (int32_t)(t % n_kv);
    int32_t n_u = j->seq_units[s], u0 = j->seq_unit0[s];
    if (n_u <= 1)
        return;
    float *o = j->out + (size_t)s * (size_t)j->d->o_stride + (size_t)h * (size_t)g_n * (size_t)hd;
    for (int32_t g = 0; g < g_n; g++) {
        float m = -INFINITY, l = 0.0f;
        for (int32_t u = u0; u < u0 + n_u; u++) {
            const float *ml = j->part_ml + (((size_t)u * (size_t)n_kv + (size_t)h) * (size_t)g_n + (size_t)g) * 2;
            m = ml[0] > m ? ml[0] : m;
        }
        float *og = o + (size_t)g * (size_t)hd;
        for (int32_t d = 0; d < hd; d++)
            og[d] = 0.0f;
        for (int32_t u = u0; u < u0 + n_u; u++) {
            size_t slot = ((size_t)u * (size_t)n_kv + (size_t)h) * (size_t)g_n + (size_t)g;
            const float *ml = j->part_ml + slot * 2, *acc = j->part_acc + slot * (size_t)hd;
            float w = expf(ml[0] - m);
            l += ml[1] * w;
            for (int32_t d = 0; d < hd; d++)
                og[d] += acc[d] * w;
        }
        for (int32_t d = 0; d < hd; d++)
            og[d] /= l;
    }
}

/* Counts the units (partitions with a visible key) of every sequence. */
static int64_t decode_plan(const decode_job *j, int32_t num_seqs, bool fill, int32_t *max_part)
{
    int64_t n_units = 0;
    *max_part = 1;
    for (int32_t s = 0; s < num_seqs; s++) {
        int32_t len = j->seq_lens[s], psize = kvrt_cpu_attn_partition_size(len);
        int32_t ranges[2][2];
        int nr = kvrt_attn_visible_ranges(len - 1, len - 1, j->d->window, j->d->sinks, ranges);
        *max_part = KVRT_MAX(*max_part, KVRT_MIN(psize, len));
        if (fill) {
            j->seq_unit0[s] = (int32_t)n_units;
            j->seq_units[s] = 0;
        }
        for (int32_t p = 0; p * psize < len; p++) {
            bool visible = false;
            for (int r = 0; r < nr; r++)
                visible = visible || (ranges[r][0] < (p + 1) * psize && ranges[r][1] > p * psize);
            if (!visible)
                continue;
            if (fill) {
                j->unit_seq[n_units] = s;
                j->unit_part[n_units] = p;
                j->seq_units[s]++;
            }
            n_units++;
        }
    }
    return n_units;
}

/* Runs a decode over any key source; the arguments were checked. */
static kvrt_status decode_run(kvrt_backend *be, const kv_src *src, const kvrt_cpu_attn_kernels *ker,
                              const kvrt_attn_desc *d, const float *q, float *out, const int32_t *seq_lens)
{
    decode_job j;
    memset(&j, 0, sizeof(j));
    j.src = *src;
    j.ker = ker;
    j.d = d;
    j.group = d->n_heads / src->n_kv;
    j.q = q;
    j.out = out;
    j.seq_lens = seq_lens;
    int64_t n_units = decode_plan(&j, d->num_seqs, false, &j.max_part);
    int n_threads = kvrt_cpu(be)->n_threads;
    size_t hd = (size_t)src->hd, g_n = (size_t)j.group, slots = (size_t)n_units * (size_t)src->n_kv;
    j.scratch_floats = g_n * (size_t)j.max_part + (size_t)src->run * hd + g_n * hd + 2 * g_n;
    j.scratch_floats = (j.scratch_floats + 15) & ~(size_t)15;

    arena a = {0, NULL};
    bool overflow = false;
    for (int pass = 0; pass < 2; pass++) {
        a.size = 0;
        j.unit_seq = arena_take(&a, (size_t)n_units, sizeof(int32_t), &overflow);
        j.unit_part = arena_take(&a, (size_t)n_units, sizeof(int32_t), &overflow);
        j.seq_unit0 = arena_take(&a, (size_t)d->num_seqs, sizeof(int32_t), &overflow);
        j.seq_units = arena_take(&a, (size_t)d->num_seqs, sizeof(int32_t), &overflow);
        j.part_ml = arena_take(&a, slots * g_n * 2, sizeof(float), &overflow);
        j.part_acc = arena_take(&a, slots * g_n * hd, sizeof(float), &overflow);
        j.scratch = arena_take(&a, (size_t)n_threads * j.scratch_floats, sizeof(float), &overflow);
        if (pass == 0) {
            a.base = overflow ? NULL : kvrt_alloc(be->alloc, a.size, 64);
            if (!a.base)
                return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                                 "attention decode: cannot allocate %zu bytes of scratch", a.size);
        }
    }
    decode_plan(&j, d->num_seqs, true, &j.max_part);
    kvrt_threadpool_run(kvrt_cpu(be)->pool, (int64_t)slots, decode_task, &j);
    kvrt_threadpool_run(kvrt_cpu(be)->pool, (int64_t)d->num_seqs * src->n_kv, decode_merge_task, &j);
    kvrt_free(be->alloc, a.base);
    return KVRT_OK;
}

/* ---- prefill ---------------------------------------------------------------------------------- */

typedef struct prefill_job {
    kv_src src;
    const kvrt_cpu_attn_kernels *ker;
    const kvrt_attn_desc *d;
    int32_t group;
    int32_t tile_tokens;     /* query tokens per tile */
    const float *q;          /* [num_tokens] rows of q_stride */
    float *out;
    const int32_t *qsl;      /* query_start_loc [num_seqs + 1] */
    const int32_t *seq_lens;
    int32_t *unit_seq;       /* [n_units]: (sequence, tile) units */
    int32_t *unit_tile;
    float *scratch;          /* [n_threads][scratch_floats] */
    size_t scratch_floats;
} prefill_job;

typedef struct prefill_tile {
    int32_t s, h, rows, q_lo; /* q_lo: position of the tile's first query */
    float *qb;                /* [rows][hd] */
    float *sc;                /* [rows][run] */
    float *acc;               /* [rows][hd] */
    float *m, *l;             /* [rows] */
    float *tmp;               /* [run][hd] */
} prefill_tile;

/* Masks one run's scores [rows][n] (keys from pos) and folds them into the
 * running max/sum of each row, leaving softmax numerators in sc. */
static void prefill_softmax(const prefill_job *j, prefill_tile *t, int32_t pos, int32_t n)
{
    int32_t W = j->d->window, S = j->d->sinks, run = j->src.run, hd = j->src.hd;
    for (int32_t r = 0; r < t->rows; r++) {
        int32_t i = t->q_lo + r / j->group;
        float *row = t->sc + (size_t)r * (size_t)run, mx = -INFINITY;
        for (int32_t c = 0; c < n; c++) {
            int32_t key = pos + c;
            bool vis = key <= i && (W == 0 || i - key < W || key < S);
            row[c] = vis ? row[c] : -INFINITY;
            mx = row[c] > mx ? row[c] : mx;
        }
        if (mx == -INFINITY) { /* nothing visible to this query here */
            for (int32_t c = 0; c < n; c++)
                row[c] = 0.0f;
            continue;
        }
        if (mx > t->m[r]) {
            float alpha = expf(t->m[r] - mx); /* 0 on the first visible run */
            float *a = t->acc + (size_t)r * (size_t)hd;
            for (int32_t d = 0; d < hd; d++)
                a[d] *= alpha;
            t->l[r] *= alpha;
            t->m[r] = mx;
        }
        for (int32_t c = 0; c < n; c++) {
            row[c] = expf(row[c] - t->m[r]);
            t->l[r] += row[c];
        }
    }
}

static void prefill_task(void *arg, int64_t task, int thread)
{
    const prefill_job *j = arg;
    const kv_src *src = &j->src;
    int32_t n_kv = src->n_kv, hd = src->hd, g_n = j->group, run = src->run;
    int64_t u = task / n_kv;
    prefill_tile t;
    t.h = (int32_t)(task % n_kv);
    t.s = j->unit_seq[u];
    int32_t q0 = j->qsl[t.s], n_new = j->qsl[t.s + 1] - q0, len = j->seq_lens[t.s];
    int32_t t0 = j->unit_tile[u] * j->tile_tokens, nt = KVRT_MIN(j->tile_tokens, n_new - t0);
    t.rows = nt * g_n;
    t.q_lo = len - n_new + t0;
    t.qb = j->scratch + (size_t)thread * j->scratch_floats;
    t.sc = t.qb + (size_t)t.rows * (size_t)hd;
    t.acc = t.sc + (size_t)t.rows * (size_t)run;
    t.m = t.acc + (size_t)t.rows * (size_t)hd;
    t.l = t.m + t.rows;
    t.tmp = t.l + t.rows;
    for (int32_t tt = 0; tt < nt; tt++) {
        const float *qr = j->q + (size_t)(q0 + t0 + tt) * (size_t)j->d->q_stride + (size_t)t.h * (size_t)g_n * (size_t)hd;
        memcpy(t.qb + (size_t)tt * (size_t)g_n * (size_t)hd, qr, (size_t)g_n * (size_t)hd * sizeof(float));
    }
    memset(t.acc, 0, (size_t)t.rows * (size_t)hd * sizeof(float));
    for (int32_t r = 0; r < t.rows; r++) {
        t.m[r] = -INFINITY;
        t.l[r] = 0.0f;
    }
    int32_t ranges[2][2];
    int nr = kvrt_attn_visible_ranges(t.q_lo, t.q_lo + nt - 1, j->d->window, j->d->sinks, ranges);
    for (int r = 0; r < nr; r++) {
        for (int32_t pos = ranges[r][0], n; pos < ranges[r][1]; pos += n) {
            size_t off = kv_run(src, t.s, t.h, pos, ranges[r][1] - pos, &n);
            const float *kr = kv_rows(src, j->ker, src->k, off, n, t.tmp);
            j->ker->scores(t.qb, t.rows, kr, n, hd, j->d->scale, t.sc, run);
            prefill_softmax(j, &t, pos, n);
            const float *vr = kv_rows(src, j->ker, src->v, off, n, t.tmp);
            j->ker->accum(t.sc, run, t.rows, vr, n, hd, t.acc);
        }
    }
    for (int32_t tt = 0; tt < nt; tt++) {
        float *o = j->out + (size_t)(q0 + t0 + tt) * (size_t)j->d->o_stride + (size_t)t.h * (size_t)g_n * (size_t)hd;
        for (int32_t g = 0; g < g_n; g++) {
            int32_t r = tt * g_n + g;
            for (int32_t d = 0; d < hd; d++)
                o[(size_t)g * (size_t)hd + (size_t)d] = t.acc[(size_t)r * (size_t)hd + (size_t)d] / t.l[r];
        }
    }
}

static kvrt_status prefill_run(kvrt_backend *be, const kv_src *src, const kvrt_attn_desc *d, const float *q,
                               float *out, const int32_t *qsl, const int32_t *seq_lens)
{
    prefill_job j;
    memset(&j, 0, sizeof(j));
    j.src = *src;
    j.ker = kvrt_cpu_attn_kernels_get();
    j.d = d;
    j.group = d->n_heads / src->n_kv;
    j.tile_tokens = KVRT_MAX(1, KVRT_PREFILL_ROWS / j.group);
    j.q = q;
    j.out = out;
    j.qsl = qsl;
    j.seq_lens = seq_lens;
    int64_t n_units = 0;
    for (int32_t s = 0; s < d->num_seqs; s++)
        n_units += (qsl[s + 1] - qsl[s] + j.tile_tokens - 1) / j.tile_tokens;
    if (n_units == 0)
        return KVRT_OK;
    size_t rows = (size_t)j.tile_tokens * (size_t)j.group, hd = (size_t)src->hd;
    j.scratch_floats = rows * (2 * hd + (size_t)src->run + 2) + (size_t)src->run * hd;
    j.scratch_floats = (j.scratch_floats + 15) & ~(size_t)15;
    int n_threads = kvrt_cpu(be)->n_threads;
    arena a = {0, NULL};
    bool overflow = false;
    for (int pass = 0; pass < 2; pass++) {
        a.size = 0;
        j.unit_seq = arena_take(&a, (size_t)n_units, sizeof(int32_t), &overflow);
        j.unit_tile = arena_take(&a, (size_t)n_units, sizeof(int32_t), &overflow);
        j.scratch = arena_take(&a, (size_t)n_threads * j.scratch_floats, sizeof(float), &overflow);
        if (pass == 0) {
            a.base = overflow ? NULL : kvrt_alloc(be->alloc, a.size, 64);
            if (!a.base)
                return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                                 "attention prefill: cannot allocate %zu bytes of scratch", a.size);
        }
    }
    int64_t u = 0;
    for (int32_t s = 0; s < d->num_seqs; s++) {
        for (int32_t t = 0; t * j.tile_tokens < qsl[s + 1] - qsl[s]; t++, u++) {
            j.unit_seq[u] = s;
            j.unit_tile[u] = t;
        }
    }
    kvrt_threadpool_run(kvrt_cpu(be)->pool, n_units * src->n_kv, prefill_task, &j);
    kvrt_free(be->alloc, a.base);
    return KVRT_OK;
}

/* ---- entries: argument checks ------------------------------------------------------------------ */

/* n_rows rows of `row` floats, stride apart, must fit the view. */
static kvrt_status check_rows(kvrt_backend *be, kvrt_view v, int64_t n_rows, int64_t stride, int64_t row,
                              const char *what)
{
    int64_t elems;
    if (stride < row)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: stride %lld shorter than a row (%lld)",
                         what, (long long)stride, (long long)row);
    if (!kvrt_mul_i64(n_rows - 1, stride, &elems) || elems > INT64_MAX / 8 - row)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: extent overflows", what);
    return kvrt_cpu_check_view(be, v, (size_t)(elems + row) * sizeof(float), what);
}

static kvrt_status check_int_array(kvrt_backend *be, kvrt_view v, int64_t n, const char *what)
{
    size_t bytes;
    if (n < 0 || !kvrt_mul_size((size_t)n, sizeof(int32_t), &bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: size overflows", what);
    return kvrt_cpu_check_view(be, v, bytes, what);
}

static kvrt_status check_common(kvrt_backend *be, const kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                kvrt_view seq_lens, kvrt_view block_tables, const char *what)
{
    const kvrt_kv_pool_desc *pd = &pool->desc;
    if (layer < 0 || layer >= pd->n_layers)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: layer %d outside [0, %d)",
                         what, (int)layer, (int)pd->n_layers);
    KVRT_TRY(kvrt_attn_check_desc(&be->err, pd, d));
    KVRT_TRY(check_int_array(be, seq_lens, d->num_seqs, "seq_lens"));
    int64_t table;
    if (!kvrt_mul_i64(d->num_seqs, d->max_blocks_per_seq, &table))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "block_tables: size overflows");
    return check_int_array(be, block_tables, table, "block_tables");
}

static kv_src paged_src(const kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d, kvrt_view block_tables)
{
    kv_src src;
    memset(&src, 0, sizeof(src));
    src.k = pool->k[layer];
    src.v = pool->v[layer];
    src.f16 = pool->desc.dtype == KVRT_DTYPE_F16;
    src.n_kv = pool->desc.n_kv_heads;
    src.hd = pool->desc.head_dim;
    src.run = pool->desc.block_size;
    src.tables = kvrt_cpu_ptr(block_tables);
    src.max_blocks = d->max_blocks_per_seq;
    return src;
}

kvrt_status kvrt_cpu_attn_decode(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                 kvrt_view q, kvrt_view out, kvrt_view seq_lens, kvrt_view block_tables)
{
    KVRT_TRY(check_common(be, pool, layer, d, seq_lens, block_tables, "attention decode"));
    if (d->num_seqs == 0)
        return KVRT_OK;
    int64_t row = (int64_t)d->n_heads * pool->desc.head_dim;
    KVRT_TRY(check_rows(be, q, d->num_seqs, d->q_stride, row, "attention decode: q"));
    KVRT_TRY(check_rows(be, out, d->num_seqs, d->o_stride, row, "attention decode: out"));
    const int32_t *lens = kvrt_cpu_ptr(seq_lens);
    KVRT_TRY(kvrt_attn_check_decode(&be->err, &pool->desc, d, lens, kvrt_cpu_ptr(block_tables)));
    kv_src src = paged_src(pool, layer, d, block_tables);
    return decode_run(be, &src, kvrt_cpu_attn_kernels_get(), d, kvrt_cpu_ptr(q), kvrt_cpu_ptr(out), lens);
}

kvrt_status kvrt_cpu_attn_prefill(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                  kvrt_view q, kvrt_view out, kvrt_view query_start_loc,
                                  kvrt_view seq_lens, kvrt_view block_tables)
{
    KVRT_TRY(check_common(be, pool, layer, d, seq_lens, block_tables, "attention prefill"));
    if (d->num_seqs == 0)
        return KVRT_OK;
    KVRT_TRY(check_int_array(be, query_start_loc, (int64_t)d->num_seqs + 1, "query_start_loc"));
    const int32_t *qsl = kvrt_cpu_ptr(query_start_loc), *lens = kvrt_cpu_ptr(seq_lens);
    KVRT_TRY(kvrt_attn_check_prefill(&be->err, &pool->desc, d, qsl, lens, kvrt_cpu_ptr(block_tables)));
    int32_t num_tokens = qsl[d->num_seqs];
    if (num_tokens == 0)
        return KVRT_OK;
    int64_t row = (int64_t)d->n_heads * pool->desc.head_dim;
    KVRT_TRY(check_rows(be, q, num_tokens, d->q_stride, row, "attention prefill: q"));
    KVRT_TRY(check_rows(be, out, num_tokens, d->o_stride, row, "attention prefill: out"));
    kv_src src = paged_src(pool, layer, d, block_tables);
    return prefill_run(be, &src, d, kvrt_cpu_ptr(q), kvrt_cpu_ptr(out), qsl, lens);
}

kvrt_status kvrt_cpu_attn_decode_contiguous(kvrt_backend *be, const kvrt_cpu_contig_kv *kv, const kvrt_attn_desc *d,
                                            const float *q, const int32_t *seq_lens, float *out)
{
    if (!kv || !d || !kv->k || !kv->v || (d->num_seqs > 0 && (!q || !seq_lens || !out)))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "contiguous decode: NULL argument");
    if (kv->dtype != KVRT_DTYPE_F32 && kv->dtype != KVRT_DTYPE_F16)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "contiguous decode: KV type %s (f32, f16)",
                         kvrt_dtype_name(kv->dtype));
    if (kv->n_kv_heads < 1 || kv->head_dim < 1 || kv->max_len < 1)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "contiguous decode: n_kv_heads %d, head_dim %d, "
                         "max_len %d must be >= 1", (int)kv->n_kv_heads, (int)kv->head_dim, (int)kv->max_len);
    kvrt_kv_pool_desc pd = {1, kv->n_kv_heads, kv->head_dim, KVRT_CONTIG_RUN, 1, kv->dtype};
    kvrt_attn_desc dd = *d;
    dd.max_blocks_per_seq = 1; /* no table */
    KVRT_TRY(kvrt_attn_check_desc(&be->err, &pd, &dd));
    int64_t row = (int64_t)d->n_heads * kv->head_dim;
    if (d->q_stride < row || d->o_stride < row)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "contiguous decode: strides shorter than a row");
    for (int32_t s = 0; s < d->num_seqs; s++) {
        if (seq_lens[s] < 1 || seq_lens[s] > kv->max_len)
            return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "contiguous decode: seq_lens[%d] = %d outside [1, %d]",
                             (int)s, (int)seq_lens[s], (int)kv->max_len);
    }
    if (d->num_seqs == 0)
        return KVRT_OK;
    kv_src src;
    memset(&src, 0, sizeof(src));
    src.k = kv->k;
    src.v = kv->v;
    src.f16 = kv->dtype == KVRT_DTYPE_F16;
    src.n_kv = kv->n_kv_heads;
    src.hd = kv->head_dim;
    src.run = KVRT_CONTIG_RUN;
    src.max_len = kv->max_len;
    return decode_run(be, &src, kv->kernels ? kv->kernels : kvrt_cpu_attn_kernels_get(), &dd, q, out, seq_lens);
}
