/* CPU paged attention: decode (split-K over partitions of the context, merged
 * by log-sum-exp) and tiled prefill (online softmax), both over the block
 * layout of DESIGN.md, with inner loops picked at run time (AVX2+FMA+F16C or
 * portable C; the library is built without -march). Everything accumulates in
 * F32; F16 KV is converted a run of rows at a time. */
#include "common/fp16.h"
#include "cpu_attention.h"

#include <math.h>
#include <string.h>


/* Rows of a run are converted/scored together; runs never cross a block, and
 * contiguous runs stop at this length so scratch stays small. */
#define KVRT_CONTIG_RUN 32
/* Query rows (tokens x group heads) per prefill tile. */
#define KVRT_PREFILL_ROWS 64

int32_t kvrt_cpu_attn_partition_size(int32_t seq_len)
{
    /* longer partitions for long contexts keep the merge and per-task
     * overhead small; 256 and 512 are multiples of every block size */
    return seq_len <= 4096 ? 256 : 512;
}

/* ---- where the keys live ------------------------------------------------------------------ */

/* How K or V is stored: their dtypes may differ. */
typedef struct kv_fmt {
    bool f16;
    kvrt_dtype quant;         /* a quantized dtype (kv_layout.h): rows dequantized a run at a time; F32 otherwise */
    const kvrt_kv_dtype_desc *qt; /* its descriptor */
    size_t block_bytes;       /* quantized: bytes of one block (values, then scales) */
} kv_fmt;

typedef struct kv_src {
    const char *k, *v;
    kv_fmt kf, vf;            /* K's and V's storage */
    size_t block_rows;        /* quantized: n_kv * block_size rows per block */
    int32_t n_kv, hd;
    int32_t run;              /* most rows per run: the block size (paged) or KVRT_CONTIG_RUN */
    const int32_t *tables;    /* paged: [num_seqs][max_blocks]; NULL: contiguous */
    int32_t max_blocks;
    int32_t max_len;          /* contiguous: positions per (sequence, head) */
} kv_src;

/* Index of the pool row of position j of (sequence s, head h) and how many
 * consecutive rows (<= want) follow it in the same block and head. */
static size_t kv_run(const kv_src *src, int32_t s, int32_t h, int32_t j, int32_t want, int32_t *n)
{
    size_t row;
    if (src->tables) {
        int32_t bs = src->run, off = j % bs;
        int32_t block = src->tables[(size_t)s * (size_t)src->max_blocks + (size_t)(j / bs)];
        *n = KVRT_MIN(want, bs - off);
        row = ((size_t)block * (size_t)src->n_kv + (size_t)h) * (size_t)bs + (size_t)off;
    } else {
        *n = KVRT_MIN(want, src->run - j % src->run);
        row = ((size_t)s * (size_t)src->n_kv + (size_t)h) * (size_t)src->max_len + (size_t)j;
    }
    return row;
}

/* K's (values == false) or V's storage and pool. */
static const kv_fmt *kv_fmt_of(const kv_src *src, bool values)
{
    return values ? &src->vf : &src->kf;
}
static const char *kv_base(const kv_src *src, bool values)
{
    return values ? src->v : src->k;
}

/* Address of a pool row's values (quantized: its scales follow the block's values). */
static const char *kv_at(const kv_src *src, const kv_fmt *f, const char *base, size_t row)
{
    if (!f->quant)
        return base + row * (size_t)src->hd * (f->f16 ? 2 : 4);
    size_t blk = row / src->block_rows, r = row % src->block_rows;
    return base + blk * f->block_bytes + kvrt_kv_row_values(f->qt, src->hd, r);
}

/* Bytes of n rows' values (what a prefetch pulls in). */
static size_t kv_run_bytes(const kv_src *src, const kv_fmt *f, int32_t n)
{
    uint32_t bits = f->quant ? f->qt->value_bits : f->f16 ? 16 : 32;
    return (size_t)n * (size_t)src->hd * bits / 8;
}

/* n quantized rows from pool row `row` (one block, one head) dequantized into tmp. */
static const float *kv_dequant(const kv_src *src, const kv_fmt *f, const kvrt_cpu_attn_kernels *ker,
                               const char *base, size_t row, int32_t n, float *tmp)
{
    size_t blk = row / src->block_rows, r = row % src->block_rows;
    const uint8_t *b = (const uint8_t *)base + blk * f->block_bytes;
    const uint8_t *vals = b + kvrt_kv_row_values(f->qt, src->hd, r);
    const uint8_t *sc = f->qt->scales == KVRT_KV_SCALES_IN_BLOCK
                            ? b + kvrt_kv_row_scales(f->qt, src->n_kv, src->run, src->hd, r)
                            : NULL;
    ker->dequant(f->quant, vals, sc, (int64_t)n * (int64_t)src->hd, tmp);
    return tmp;
}

/* F32 rows of a run of K (values == false) or V: in place for F32 KV,
 * converted into tmp for F16 and quantized KV. */
static const float *kv_rows(const kv_src *src, bool values, const kvrt_cpu_attn_kernels *ker, size_t row, int32_t n,
                            float *tmp)
{
    const kv_fmt *f = kv_fmt_of(src, values);
    const char *base = kv_base(src, values);
    if (f->quant)
        return kv_dequant(src, f, ker, base, row, n, tmp);
    const char *p = kv_at(src, f, base, row);
    if (!f->f16)
        return (const float *)(const void *)p;
    ker->h2f(tmp, (const uint16_t *)(const void *)p, (int64_t)n * src->hd);
    return tmp;
}

/* A run from pool row `row` (one block, one head) as the decode kernels read
 * it in place: values, and quantized groups' scales. */
static kvrt_cpu_kv_rows kv_rows_at(const kv_src *src, bool values, size_t row)
{
    const kv_fmt *f = kv_fmt_of(src, values);
    const char *base = kv_base(src, values);
    kvrt_cpu_kv_rows x = {f->quant ? f->quant : f->f16 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32, kv_at(src, f, base, row),
                          NULL};
    if (f->quant && f->qt->scales == KVRT_KV_SCALES_IN_BLOCK) {
        size_t blk = row / src->block_rows, r = row % src->block_rows;
        x.scales = (const uint8_t *)base + blk * f->block_bytes +
                   kvrt_kv_row_scales(f->qt, src->n_kv, src->run, src->hd, r);
    }
    return x;
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
    int32_t head_chunk;      /* KV heads per task (any value gives the same numbers) */
    int32_t n_chunks;        /* ceil(n_kv / head_chunk) */
    const float *q;          /* [num_seqs] rows of q_stride */
    float *out;              /* [num_seqs] rows of o_stride */
    float *lse;              /* [num_seqs][n_heads] log-sum-exp of each row, or NULL */
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

/* What one task works on: KV heads [h0, h1) of partition [p0, p1) of sequence s. */
typedef struct decode_unit {
    int32_t s, h0, h1, p0, p1, nr;
    int32_t ranges[2][2];    /* visible keys */
    float *sc;               /* [h1 - h0][group][max_part]: scores, then softmax numerators */
    float *tmp;              /* [run][hd]: F16 rows for tables that convert first */
    float *acc;              /* [h1 - h0][group][hd] */
} decode_unit;

/* Pulls the next run of a head towards the cache while this one is computed:
 * paged runs are short and scattered, which the hardware prefetcher alone
 * does not follow. F32 runs are twice as far ahead in bytes: they go to L2
 * only (measured: into L1 they evict rows still in use). */
static void prefetch_l1(const char *p, size_t bytes)
{
    for (size_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(p + b, 0, 3);
}

static void prefetch_l2(const char *p, size_t bytes)
{
    for (size_t b = 0; b < bytes; b += 64)
        __builtin_prefetch(p + b, 0, 2);
}

static inline void prefetch_run(const char *p, size_t bytes, bool to_l1)
{
    (to_l1 ? prefetch_l1 : prefetch_l2)(p, bytes);
}

/* The F16 scales of n quantized rows from pool row `row` (they sit apart
 * from the values, after the block's values, where the values' prefetch
 * does not reach: measured, a demand miss per run otherwise). */
static void prefetch_scales(const kv_src *src, bool values, size_t row, int32_t n)
{
    kvrt_cpu_kv_rows x = kv_rows_at(src, values, row);
    if (x.scales)
        prefetch_l2((const char *)x.scales, (size_t)n * (size_t)(src->hd / 16));
}

/* Scores (values == false) or accumulates values for one run of n rows of
 * head h from position index idx of the unit. */
static void decode_one_run(const decode_job *j, const decode_unit *t, bool values, int32_t h, int32_t idx, size_t row,
                           int32_t n)
{
    const kv_src *src = &j->src;
    int32_t hd = src->hd, g_n = j->group;
    size_t hl = (size_t)(h - t->h0) * (size_t)g_n;
    float *sc = t->sc + hl * (size_t)j->max_part + (size_t)idx;
    kvrt_cpu_kv_rows rows = kv_rows_at(src, values, row);
    if (!values) {
        const float *qg = j->q + (size_t)t->s * (size_t)j->d->q_stride + (size_t)h * (size_t)g_n * (size_t)hd;
        j->ker->scores_kv(qg, g_n, &rows, n, hd, j->d->scale, sc, j->max_part, t->tmp);
    } else {
        j->ker->accum_kv(sc, j->max_part, g_n, &rows, n, hd, t->acc + hl * (size_t)hd, t->tmp);
    }
}

/* Visits every visible run of the unit once. Paged: block by block, all the
 * unit's heads of a block in turn (one contiguous byte range of the pool).
 * Contiguous: head by head. The order changes no number: each score is its
 * own dot product and each output lane sums its rows in increasing position. */
static void decode_pass(const decode_job *j, const decode_unit *t, bool values)
{
    const kv_src *src = &j->src;
    const kv_fmt *f = kv_fmt_of(src, values);
    const char *base = kv_base(src, values);
    int32_t idx0 = 0;
    for (int r = 0; r < t->nr; r++) {
        int32_t a = KVRT_MAX(t->ranges[r][0], t->p0), b = KVRT_MIN(t->ranges[r][1], t->p1);
        if (a >= b)
            continue;
        if (src->tables) {
            for (int32_t pos = a, n = 0; pos < b; pos += n) {
                for (int32_t h = t->h0; h < t->h1; h++) {
                    size_t off = kv_run(src, t->s, h, pos, b - pos, &n);
                    if (pos + n < b) {
                        int32_t n2;
                        size_t next = kv_run(src, t->s, h, pos + n, b - pos - n, &n2);
                        prefetch_run(kv_at(src, f, base, next), kv_run_bytes(src, f, n2), f->f16);
                        prefetch_scales(src, values, next, n2);
                    }
                    decode_one_run(j, t, values, h, idx0 + pos - a, off, n);
                }
            }
        } else {
            for (int32_t h = t->h0; h < t->h1; h++) {
                for (int32_t pos = a, n; pos < b; pos += n) {
                    size_t off = kv_run(src, t->s, h, pos, b - pos, &n);
                    /* the same look-ahead as paged, so the comparison is fair */
                    prefetch_run(kv_at(src, f, base, off + (size_t)n),
                                 kv_run_bytes(src, f, KVRT_MIN(n, b - pos - n)), f->f16);
                    decode_one_run(j, t, values, h, idx0 + pos - a, off, n);
                }
            }
        }
        idx0 += b - a;
    }
}

/* Softmax numerators in place over the nv scores of each row; ml gets each
 * row's max and sum. */
static void decode_softmax(const decode_job *j, const decode_unit *t, int32_t nv, float *ml)
{
    int32_t rows = (t->h1 - t->h0) * j->group;
    for (int32_t g = 0; g < rows; g++)
        j->ker->softmax(t->sc + (size_t)g * (size_t)j->max_part, nv, &ml[2 * g], &ml[2 * g + 1]);
}

/* One (sequence, partition, chunk of KV heads) task, all query heads of each
 * KV head's group. */
static void decode_task(void *arg, int64_t task, int thread)
{
    const decode_job *j = arg;
    int32_t n_kv = j->src.n_kv, hd = j->src.hd, g_n = j->group;
    int64_t u = task / j->n_chunks;
    decode_unit t;
    t.s = j->unit_seq[u];
    t.h0 = (int32_t)(task % j->n_chunks) * j->head_chunk;
    t.h1 = KVRT_MIN(t.h0 + j->head_chunk, n_kv);
    int32_t len = j->seq_lens[t.s], psize = kvrt_cpu_attn_partition_size(len);
    t.p0 = j->unit_part[u] * psize;
    t.p1 = KVRT_MIN(t.p0 + psize, len);
    t.nr = kvrt_attn_visible_ranges(len - 1, len - 1, j->d->window, j->d->sinks, t.ranges);
    size_t rows = (size_t)(t.h1 - t.h0) * (size_t)g_n;
    t.sc = j->scratch + (size_t)thread * j->scratch_floats;
    t.tmp = t.sc + rows * (size_t)j->max_part;
    float *own_acc = t.tmp + (size_t)j->src.run * (size_t)hd, *own_ml = own_acc + rows * (size_t)hd;
    size_t slot = ((size_t)u * (size_t)n_kv + (size_t)t.h0) * (size_t)g_n;
    bool single = j->seq_units[t.s] == 1;
    float *ml = single ? own_ml : j->part_ml + slot * 2;
    t.acc = single ? own_acc : j->part_acc + slot * (size_t)hd;

    int32_t nv = 0;
    for (int r = 0; r < t.nr; r++)
        nv += KVRT_MAX(0, KVRT_MIN(t.ranges[r][1], t.p1) - KVRT_MAX(t.ranges[r][0], t.p0));
    decode_pass(j, &t, false);
    decode_softmax(j, &t, nv, ml);
    memset(t.acc, 0, rows * (size_t)hd * sizeof(float));
    decode_pass(j, &t, true);
    if (!single)
        return;
    float *o = j->out + (size_t)t.s * (size_t)j->d->o_stride + (size_t)t.h0 * (size_t)g_n * (size_t)hd;
    for (size_t g = 0; g < rows; g++) {
        float l = ml[2 * g + 1];
        for (int32_t d = 0; d < hd; d++)
            o[g * (size_t)hd + (size_t)d] = t.acc[g * (size_t)hd + (size_t)d] / l;
        if (j->lse)
            j->lse[(size_t)t.s * (size_t)j->d->n_heads + (size_t)t.h0 * (size_t)g_n + g] = ml[2 * g] + logf(l);
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
        if (j->lse)
            j->lse[(size_t)s * (size_t)j->d->n_heads + (size_t)h * (size_t)g_n + (size_t)g] = m + logf(l);
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
                              const kvrt_attn_desc *d, const float *q, float *out, float *lse,
                              const int32_t *seq_lens)
{
    decode_job j;
    memset(&j, 0, sizeof(j));
    j.lse = lse;
    j.src = *src;
    j.ker = ker;
    j.d = d;
    j.group = d->n_heads / src->n_kv;
    j.q = q;
    j.out = out;
    j.seq_lens = seq_lens;
    int64_t n_units = decode_plan(&j, d->num_seqs, false, &j.max_part);
    int n_threads = kvrt_cpu(be)->n_threads;
    /* All KV heads of a block in one task reads the pool in long runs; split
     * the heads only as far as the threads need tasks. */
    j.head_chunk = src->n_kv;
    while (j.head_chunk > 1 && n_units * ((src->n_kv + j.head_chunk - 1) / j.head_chunk) < 4 * (int64_t)n_threads)
        j.head_chunk = (j.head_chunk + 1) / 2;
    j.n_chunks = (src->n_kv + j.head_chunk - 1) / j.head_chunk;
    size_t hd = (size_t)src->hd, g_n = (size_t)j.group, slots = (size_t)n_units * (size_t)src->n_kv;
    size_t rows = (size_t)j.head_chunk * g_n;
    j.scratch_floats = rows * ((size_t)j.max_part + hd + 2) + (size_t)src->run * hd;
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
    int64_t work = 0; /* multiply-adds: every visible key of every query head, twice */
    for (int32_t s = 0; s < d->num_seqs; s++)
        work += (int64_t)seq_lens[s] * d->n_heads * src->hd * 2;
    kvrt_threadpool_run_sized(kvrt_cpu(be)->pool, n_units * j.n_chunks, work, decode_task, &j);
    kvrt_threadpool_run_sized(kvrt_cpu(be)->pool, (int64_t)d->num_seqs * src->n_kv, work, decode_merge_task, &j);
    kvrt_cpu(be)->last_scratch = a.size;
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
    float *lse;              /* [num_tokens][n_heads] log-sum-exp of each row, or NULL */
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
            const float *kr = kv_rows(src, false, j->ker, off, n, t.tmp);
            j->ker->scores(t.qb, t.rows, kr, n, hd, j->d->scale, t.sc, run);
            prefill_softmax(j, &t, pos, n);
            const float *vr = kv_rows(src, true, j->ker, off, n, t.tmp);
            j->ker->accum(t.sc, run, t.rows, vr, n, hd, t.acc);
        }
    }
    for (int32_t tt = 0; tt < nt; tt++) {
        float *o = j->out + (size_t)(q0 + t0 + tt) * (size_t)j->d->o_stride + (size_t)t.h * (size_t)g_n * (size_t)hd;
        for (int32_t g = 0; g < g_n; g++) {
            int32_t r = tt * g_n + g;
            for (int32_t d = 0; d < hd; d++)
                o[(size_t)g * (size_t)hd + (size_t)d] = t.acc[(size_t)r * (size_t)hd + (size_t)d] / t.l[r];
            if (j->lse)
                j->lse[(size_t)(q0 + t0 + tt) * (size_t)j->d->n_heads + (size_t)t.h * (size_t)g_n + (size_t)g] =
                    t.m[r] + logf(t.l[r]);
        }
    }
}

static kvrt_status prefill_run(kvrt_backend *be, const kv_src *src, const kvrt_attn_desc *d, const float *q,
                               float *out, float *lse, const int32_t *qsl, const int32_t *seq_lens)
{
    prefill_job j;
    memset(&j, 0, sizeof(j));
    j.lse = lse;
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
    int64_t work = 0; /* multiply-adds, as for decode */
    for (int32_t s = 0; s < d->num_seqs; s++)
        work += (int64_t)(qsl[s + 1] - qsl[s]) * seq_lens[s] * d->n_heads * src->hd * 2;
    kvrt_threadpool_run_sized(kvrt_cpu(be)->pool, n_units * src->n_kv, work, prefill_task, &j);
    kvrt_cpu(be)->last_scratch = a.size;
    kvrt_free(be->alloc, a.base);
    return KVRT_OK;
}

/* ---- entries (the front door checked the views and the batch check the arrays) ------------------- */

/* K's (v == false) or V's storage in a pool. */
static kv_fmt pool_fmt(const kvrt_kv_pool *pool, bool v)
{
    kv_fmt f;
    memset(&f, 0, sizeof(f));
    kvrt_dtype t = kvrt_kv_pool_dtype(&pool->desc, v);
    f.f16 = t == KVRT_DTYPE_F16;
    if (t != KVRT_DTYPE_F32 && t != KVRT_DTYPE_F16) {
        f.quant = t;
        f.qt = kvrt_kv_dtype(t);
        f.block_bytes = pool->block_bytes[v];
    }
    return f;
}

static kv_src paged_src(const kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d, kvrt_view block_tables)
{
    kv_src src;
    memset(&src, 0, sizeof(src));
    src.k = pool->k[layer];
    src.v = pool->v[layer];
    src.kf = pool_fmt(pool, false);
    src.vf = pool_fmt(pool, true);
    src.block_rows = (size_t)pool->desc.n_kv_heads * (size_t)pool->desc.block_size;
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
    const int32_t *lens = kvrt_cpu_ptr(seq_lens);
    kv_src src = paged_src(pool, layer, d, block_tables);
    return decode_run(be, &src, kvrt_cpu_attn_kernels_get(), d, kvrt_cpu_ptr(q), kvrt_cpu_ptr(out), NULL, lens);
}

kvrt_status kvrt_cpu_attn_decode_lse(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                     kvrt_view q, kvrt_view out, kvrt_view lse, kvrt_view seq_lens,
                                     kvrt_view block_tables)
{
    const int32_t *lens = kvrt_cpu_ptr(seq_lens);
    kv_src src = paged_src(pool, layer, d, block_tables);
    return decode_run(be, &src, kvrt_cpu_attn_kernels_get(), d, kvrt_cpu_ptr(q), kvrt_cpu_ptr(out),
                      kvrt_cpu_ptr(lse), lens);
}

kvrt_status kvrt_cpu_attn_prefill(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                  kvrt_view q, kvrt_view out, kvrt_view query_start_loc,
                                  kvrt_view seq_lens, kvrt_view block_tables)
{
    const int32_t *qsl = kvrt_cpu_ptr(query_start_loc), *lens = kvrt_cpu_ptr(seq_lens);
    kv_src src = paged_src(pool, layer, d, block_tables);
    return prefill_run(be, &src, d, kvrt_cpu_ptr(q), kvrt_cpu_ptr(out), NULL, qsl, lens);
}

kvrt_status kvrt_cpu_attn_prefill_lse(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                      kvrt_view q, kvrt_view out, kvrt_view lse, kvrt_view query_start_loc,
                                      kvrt_view seq_lens, kvrt_view block_tables)
{
    const int32_t *qsl = kvrt_cpu_ptr(query_start_loc), *lens = kvrt_cpu_ptr(seq_lens);
    kv_src src = paged_src(pool, layer, d, block_tables);
    return prefill_run(be, &src, d, kvrt_cpu_ptr(q), kvrt_cpu_ptr(out), kvrt_cpu_ptr(lse), qsl, lens);
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
    kvrt_kv_pool_desc pd = {.n_layers = 1, .n_kv_heads = kv->n_kv_heads, .head_dim = kv->head_dim,
                            .block_size = KVRT_CONTIG_RUN, .num_blocks = 1, .dtype = kv->dtype};
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
    src.kf.f16 = src.vf.f16 = kv->dtype == KVRT_DTYPE_F16;
    src.n_kv = kv->n_kv_heads;
    src.hd = kv->head_dim;
    src.run = KVRT_CONTIG_RUN;
    src.max_len = kv->max_len;
    return decode_run(be, &src, kv->kernels ? kv->kernels : kvrt_cpu_attn_kernels_get(), &dd, q, out, NULL,
                      seq_lens);
}
