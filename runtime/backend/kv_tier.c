/* The host tier that computes (kv_tier.h): a CPU backend's KV pool beside a
 * cache's device pool, block moves between them, and attention split by
 * tier and merged by log-sum-exp. */
#include "backend/kv_tier.h"
#include "backend/ops.h"

#include <math.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct kvrt_kv_tier {
    kvrt_backend *dev;          /* the cache's backend */
    kvrt_kv_pool *dev_pool;
    kvrt_kv_pool_desc desc;     /* the device pool's shape */
    kvrt_backend *cpu;          /* the host tier's own CPU backend */
    kvrt_kv_pool *host_pool;
    kvrt_kv_pool_desc host_desc;
    const kvrt_allocator *alloc;
    size_t block_bytes[2];      /* one block of one layer's K [0] and V [1] pool: their types may differ */
    uint8_t *stage;             /* [max of block_bytes]: a block on its way between tiers */
    kvrt_error err;
    kvrt_kv_tier_stats st;
    int32_t *batch_ints;        /* kvrt_kv_tier_device_batch's lengths and tables */
    size_t batch_cap;           /* int32 elements */
    struct kvrt_kv_tier_job *job; /* the forward's host half of the layer in flight (made on first use) */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* This machine's physical memory in bytes (0 when unknown). */
static uint64_t host_memory_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

/* ---- create / destroy ------------------------------------------------------------- */

kvrt_status kvrt_kv_tier_create(kvrt_kv_cache *cache, const kvrt_kv_tier_params *p, kvrt_kv_tier **out,
                                kvrt_error *err)
{
    kvrt_error_clear(err);
    if (!out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "host tier: out is NULL");
    *out = NULL;
    if (!cache || !p)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "host tier: %s is NULL", !cache ? "cache" : "params");
    if (p->num_host_blocks < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "host tier: %d host blocks, need at least 1",
                         (int)p->num_host_blocks);
    if (p->n_threads < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "host tier: n_threads %d < 0", (int)p->n_threads);
    kvrt_backend *dev = kvrt_kv_cache_backend(cache);
    kvrt_kv_pool_desc hd = *kvrt_kv_cache_desc(cache);
    hd.num_blocks = p->num_host_blocks;
    size_t slot = kvrt_kv_cache_slot_bytes(cache);
    uint64_t mem = p->host_memory ? p->host_memory : host_memory_bytes();
    uint64_t need = (uint64_t)slot * (uint64_t)p->num_host_blocks; /* < 2^31 * a slot: no overflow */
    if (mem > 0 && need > mem)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                         "host tier: %d host blocks of %zu bytes need %llu bytes (%.2f GiB), more than the host "
                         "memory of %llu bytes (%.2f GiB)",
                         (int)p->num_host_blocks, slot, (unsigned long long)need, (double)need / 1073741824.0,
                         (unsigned long long)mem, (double)mem / 1073741824.0);
    kvrt_kv_tier *t = kvrt_calloc(dev->alloc, 1, sizeof(*t));
    if (!t)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "host tier: out of host memory");
    t->dev = dev;
    t->dev_pool = kvrt_kv_cache_pool(cache);
    t->desc = *kvrt_kv_cache_desc(cache);
    t->host_desc = hd;
    t->alloc = dev->alloc;
    t->block_bytes[0] = kvrt_kv_block_bytes_which(&t->desc, false);
    t->block_bytes[1] = kvrt_kv_block_bytes_which(&t->desc, true);
    t->st.num_host_blocks = p->num_host_blocks;
    t->st.host_pool_bytes = need;
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = KVRT_BACKEND_CPU;
    cp.n_threads = p->n_threads;
    cp.allocator = dev->alloc;
    kvrt_status s = kvrt_cpu_backend_create(&cp, &t->cpu, err);
    if (s == KVRT_OK) {
        s = kvrt_op_kv_pool_create(t->cpu, &t->host_desc, &t->host_pool);
        if (s != KVRT_OK)
            kvrt_fail(err, s, "host tier: %s", t->cpu->err.message);
    }
    if (s == KVRT_OK && !(t->stage = kvrt_alloc(t->alloc, KVRT_MAX(t->block_bytes[0], t->block_bytes[1]), 64)))
        s = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "host tier: out of host memory");
    if (s != KVRT_OK) {
        kvrt_kv_tier_destroy(t);
        return s;
    }
    *out = t;
    return KVRT_OK;
}

void kvrt_kv_tier_destroy(kvrt_kv_tier *t)
{
    if (!t)
        return;
    if (t->cpu) {
        kvrt_op_kv_pool_destroy(t->cpu, t->host_pool);
        t->cpu->ops->destroy(t->cpu);
    }
    kvrt_free(t->alloc, t->stage);
    kvrt_free(t->alloc, t->batch_ints);
    kvrt_free(t->alloc, t->job);
    kvrt_free(t->alloc, t);
}

const char *kvrt_kv_tier_message(const kvrt_kv_tier *t)
{
    return t ? t->err.message : "";
}

void kvrt_kv_tier_get_stats(const kvrt_kv_tier *t, kvrt_kv_tier_stats *out)
{
    if (t && out)
        *out = t->st;
}

size_t kvrt_kv_tier_slot_bytes(const kvrt_kv_tier *t)
{
    return (size_t)t->desc.n_layers * (t->block_bytes[0] + t->block_bytes[1]);
}

/* ---- moves ------------------------------------------------------------------------- */

static kvrt_status from(kvrt_kv_tier *t, kvrt_backend *be, kvrt_status s)
{
    if (s != KVRT_OK)
        kvrt_error_copy(&t->err, &be->err);
    return s;
}

static kvrt_status from_err(kvrt_error *err, kvrt_backend *be, kvrt_status s)
{
    if (s != KVRT_OK)
        kvrt_error_copy(err, &be->err);
    return s;
}

/* One block, every layer, K and V, from one pool to another through the stage. */
static kvrt_status move_block(kvrt_kv_tier *t, kvrt_backend *sb, kvrt_kv_pool *sp, int32_t src, kvrt_backend *db,
                              kvrt_kv_pool *dp, int32_t dst)
{
    for (int32_t l = 0; l < t->desc.n_layers; l++) {
        for (int w = 0; w < 2; w++) {
            KVRT_TRY(from(t, sb, kvrt_op_kv_block_read(sb, sp, l, (kvrt_kv_which)w, src, t->stage)));
            KVRT_TRY(from(t, db, kvrt_op_kv_block_write(db, dp, l, (kvrt_kv_which)w, dst, t->stage)));
        }
    }
    return KVRT_OK;
}

static kvrt_status check_pairs(kvrt_kv_tier *t, const int32_t (*pairs)[2], int32_t n, const char *fn)
{
    if (n < 0 || (n > 0 && !pairs))
        return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT, "%s: %s", fn, n < 0 ? "n_pairs < 0" : "pairs is NULL");
    return KVRT_OK;
}

kvrt_status kvrt_kv_tier_to_host(kvrt_kv_tier *t, const int32_t (*pairs)[2], int32_t n_pairs)
{
    kvrt_error_clear(&t->err);
    KVRT_TRY(check_pairs(t, pairs, n_pairs, "kvrt_kv_tier_to_host"));
    for (int32_t i = 0; i < n_pairs; i++) {
        KVRT_TRY(move_block(t, t->dev, t->dev_pool, pairs[i][0], t->cpu, t->host_pool, pairs[i][1]));
        t->st.blocks_to_host++;
        t->st.bytes_to_host += kvrt_kv_tier_slot_bytes(t);
    }
    return KVRT_OK;
}

kvrt_status kvrt_kv_tier_to_device(kvrt_kv_tier *t, const int32_t (*pairs)[2], int32_t n_pairs)
{
    kvrt_error_clear(&t->err);
    KVRT_TRY(check_pairs(t, pairs, n_pairs, "kvrt_kv_tier_to_device"));
    for (int32_t i = 0; i < n_pairs; i++) {
        KVRT_TRY(move_block(t, t->cpu, t->host_pool, pairs[i][0], t->dev, t->dev_pool, pairs[i][1]));
        t->st.blocks_to_device++;
        t->st.bytes_to_device += kvrt_kv_tier_slot_bytes(t);
    }
    return KVRT_OK;
}

/* ---- the merge --------------------------------------------------------------------- */

void kvrt_kv_tier_merge(float *o1, float *lse1, const float *o2, const float *lse2, int64_t n, int32_t n_heads,
                        int32_t head_dim)
{
    for (int64_t r = 0; r < n * n_heads; r++) {
        float l1 = lse1[r], l2 = lse2[r];
        float *a = o1 + r * head_dim;
        const float *b = o2 + r * head_dim;
        if (l2 == -INFINITY)
            continue;
        if (l1 == -INFINITY) {
            memcpy(a, b, (size_t)head_dim * sizeof(float));
            lse1[r] = l2;
            continue;
        }
        /* in double: the weights of two partial sums, as split-K merges them */
        double m = l1 > l2 ? l1 : l2, w1 = exp((double)l1 - m), w2 = exp((double)l2 - m), inv = 1.0 / (w1 + w2);
        for (int32_t d = 0; d < head_dim; d++)
            a[d] = (float)((w1 * a[d] + w2 * b[d]) * inv);
        lse1[r] = (float)(m + log(w1 + w2));
    }
}

/* ---- host arrays on a backend (as the attention API passes them) ---------------------- */

typedef struct arg {
    void *host;
    size_t size;
    bool is_out;
    kvrt_buffer *buf;
} arg;

static kvrt_status args_begin(kvrt_backend *be, arg *a, int n)
{
    for (int i = 0; i < n; i++)
        KVRT_TRY(kvrt_op_buffer_for_host(be, a[i].host, a[i].size, !a[i].is_out, &a[i].buf));
    return KVRT_OK;
}

static kvrt_status args_end(kvrt_backend *be, arg *a, int n, kvrt_status s)
{
    for (int i = n - 1; i >= 0; i--) {
        if (!a[i].buf)
            continue;
        if (s == KVRT_OK && a[i].is_out && !kvrt_op_wraps_host(be))
            s = kvrt_op_buffer_download(be, a[i].buf, 0, a[i].host, a[i].size);
        kvrt_op_buffer_destroy(be, a[i].buf);
        a[i].buf = NULL;
    }
    return s;
}

static kvrt_view v_of(const arg *a)
{
    kvrt_view v = {a->buf, 0};
    return v;
}

/* One attention call with lse on one tier: decode when qsl is NULL. Rows of
 * q/out/lse: d->num_seqs (decode) or d->num_tokens (prefill). */
static kvrt_status tier_call(kvrt_error *err, kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                             const kvrt_attn_desc *d, const float *q, float *out, float *lse, const int32_t *qsl,
                             const int32_t *lens, const int32_t *tables)
{
    int64_t rows = qsl ? d->num_tokens : d->num_seqs;
    size_t qo = (size_t)rows * (size_t)d->q_stride * sizeof(float);
    arg a[] = {{(void *)q, qo, false, NULL},
               {out, qo, true, NULL},
               {lse, (size_t)rows * (size_t)d->n_heads * sizeof(float), true, NULL},
               {(void *)lens, (size_t)d->num_seqs * sizeof(int32_t), false, NULL},
               {(void *)tables, (size_t)d->num_seqs * (size_t)d->max_blocks_per_seq * sizeof(int32_t), false, NULL},
               {(void *)qsl, ((size_t)d->num_seqs + 1) * sizeof(int32_t), false, NULL}};
    int n = qsl ? 6 : 5;
    kvrt_status s = args_begin(be, a, n);
    bool begun = s == KVRT_OK && (s = kvrt_op_begin(be)) == KVRT_OK;
    if (begun && qsl)
        s = kvrt_op_attn_prefill_lse(be, pool, layer, d, v_of(&a[0]), v_of(&a[1]), v_of(&a[2]), v_of(&a[5]),
                                     v_of(&a[3]), v_of(&a[4]));
    else if (begun)
        s = kvrt_op_attn_decode_lse(be, pool, layer, d, v_of(&a[0]), v_of(&a[1]), v_of(&a[2]), v_of(&a[3]),
                                    v_of(&a[4]));
    if (begun)
        s = kvrt_op_end_step(be, s);
    return from_err(err, be, args_end(be, a, n, s));
}

/* ---- the split ---------------------------------------------------------------------- */

/* Scratch of one split call, one allocation. */
typedef struct split {
    int32_t *dev_lens, *dev_tables;   /* [num_seqs], [num_seqs][max_blocks] */
    int32_t *host_lens, *host_tables; /* [n_host_rows], [n_host_rows][max_blocks] */
    int32_t *host_row_of;             /* [n_host_rows]: the q/out row each host row merges into */
    float *dev_lse;                   /* [rows][n_heads] */
    float *host_q, *host_out, *host_lse;
    int32_t n_host_rows;
    void *mem;
} split;

/* Checks n_host against the lengths and the mask; *n_rows receives the host
 * rows (decode: sequences with host blocks; prefill: their new tokens). */
static kvrt_status check_split(kvrt_kv_tier *t, const kvrt_attn_desc *d, const int32_t *qsl, const int32_t *lens,
                               const int32_t *n_host, int32_t *n_rows)
{
    const int32_t bs = t->desc.block_size;
    int64_t rows = 0;
    for (int32_t s = 0; s < d->num_seqs; s++) {
        int32_t nh = n_host ? n_host[s] : 0, n_new = qsl ? qsl[s + 1] - qsl[s] : 1;
        if (nh == 0)
            continue;
        if (nh < 0 || nh > d->max_blocks_per_seq)
            return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT, "host tier: n_host[%d] = %d outside [0, %d]", (int)s,
                             (int)nh, (int)d->max_blocks_per_seq);
        if (d->window != 0 || d->sinks != 0)
            return kvrt_fail(&t->err, KVRT_ERR_UNSUPPORTED,
                             "host tier: attention split by tier needs window 0 and sinks 0 (window %d, sinks %d)",
                             (int)d->window, (int)d->sinks);
        if ((int64_t)nh * bs > (int64_t)lens[s] - n_new)
            return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT,
                             "host tier: sequence %d has %d host blocks (%lld positions), but its new tokens start "
                             "at position %d",
                             (int)s, (int)nh, (long long)nh * bs, (int)(lens[s] - n_new));
        rows += n_new;
    }
    if (rows > INT32_MAX)
        return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT, "host tier: %lld host rows", (long long)rows);
    *n_rows = (int32_t)rows;
    return KVRT_OK;
}

static kvrt_status split_alloc(kvrt_kv_tier *t, split *sp, const kvrt_attn_desc *d, int64_t rows)
{
    size_t mb = (size_t)d->max_blocks_per_seq, H = (size_t)d->n_heads, row = (size_t)d->q_stride;
    size_t nh = (size_t)sp->n_host_rows;
    size_t ints = (size_t)d->num_seqs * (1 + mb) + nh * (2 + mb);
    size_t floats = (size_t)rows * H + nh * (2 * row + H);
    size_t bytes = ints * sizeof(int32_t) + floats * sizeof(float) + 64;
    sp->mem = kvrt_alloc(t->alloc, bytes, 64);
    if (!sp->mem)
        return kvrt_fail(&t->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "host tier: cannot allocate %zu bytes", bytes);
    float *f = sp->mem; /* floats first: they need the alignment */
    sp->dev_lse = f;
    f += (size_t)rows * H;
    sp->host_q = f;
    f += nh * row;
    sp->host_out = f;
    f += nh * row;
    sp->host_lse = f;
    f += nh * H;
    int32_t *i = (int32_t *)(void *)f;
    sp->dev_lens = i;
    i += d->num_seqs;
    sp->dev_tables = i;
    i += (size_t)d->num_seqs * mb;
    sp->host_lens = i;
    i += nh;
    sp->host_tables = i;
    i += nh * mb;
    sp->host_row_of = i;
    return KVRT_OK;
}

/* Fills the device tier's tables and lengths (each sequence shifted past its
 * host blocks) and the host rows (decode: one per sequence with host blocks;
 * prefill: one per new token of such a sequence, a decode over the host
 * keys, all of which every query of the chunk sees). */
static void split_fill(kvrt_kv_tier *t, split *sp, const kvrt_attn_desc *d, const int32_t *qsl, const float *q,
                       const int32_t *lens, const int32_t *tables, const int32_t *n_host)
{
    const int32_t bs = t->desc.block_size, mb = d->max_blocks_per_seq;
    const size_t row = (size_t)d->q_stride;
    int32_t r = 0;
    for (int32_t s = 0; s < d->num_seqs; s++) {
        int32_t nh = n_host ? n_host[s] : 0;
        const int32_t *tr = tables + (size_t)s * (size_t)mb;
        int32_t *dt = sp->dev_tables + (size_t)s * (size_t)mb;
        for (int32_t k = 0; k < mb; k++)
            dt[k] = k + nh < mb ? tr[k + nh] : -1;
        sp->dev_lens[s] = lens[s] - nh * bs;
        if (nh == 0)
            continue;
        int32_t r0 = qsl ? qsl[s] : s, r1 = qsl ? qsl[s + 1] : s + 1;
        for (int32_t x = r0; x < r1; x++, r++) {
            int32_t *ht = sp->host_tables + (size_t)r * (size_t)mb;
            for (int32_t k = 0; k < mb; k++)
                ht[k] = k < nh ? tr[k] : -1;
            sp->host_lens[r] = nh * bs;
            sp->host_row_of[r] = x;
            memcpy(sp->host_q + (size_t)r * row, q + (size_t)x * row, row * sizeof(float));
        }
    }
}

/* ---- the host half on its own thread, while the device half runs ------------------------ */

/* The host half of one call or layer: its rows (in sp) and, once started,
 * the thread that runs them on the CPU backend. */
struct kvrt_kv_tier_job {
    kvrt_kv_tier *t;
    int32_t layer;
    kvrt_attn_desc hd;    /* the host rows' decode */
    split sp;
    int32_t n_heads;
    kvrt_status status;   /* the thread's result */
    kvrt_error err;       /* its message (the caller's thread never shares t->err with it) */
    double seconds;
    pthread_t thread;
    bool started;
};

static void *job_main(void *p)
{
    kvrt_kv_tier_job *j = p;
    kvrt_kv_tier *t = j->t;
    double t0 = now_s();
    j->status = tier_call(&j->err, t->cpu, t->host_pool, j->layer, &j->hd, j->sp.host_q, j->sp.host_out,
                          j->sp.host_lse, NULL, j->sp.host_lens, j->sp.host_tables);
    j->seconds = now_s() - t0;
    return NULL;
}

/* Starts the host rows of sp (filled by split_fill) on a thread of their
 * own; without a thread (none could be made) they run here. */
static void job_start(kvrt_kv_tier *t, kvrt_kv_tier_job *j, int32_t layer, const kvrt_attn_desc *d)
{
    j->t = t;
    j->layer = layer;
    j->n_heads = d->n_heads;
    j->hd = *d;
    j->hd.num_seqs = j->sp.n_host_rows;
    j->hd.num_tokens = 0;
    j->hd.max_seq_len = kvrt_attn_max_len(j->sp.host_lens, j->sp.n_host_rows);
    j->status = KVRT_OK;
    kvrt_error_clear(&j->err);
    j->started = j->sp.n_host_rows > 0 && pthread_create(&j->thread, NULL, job_main, j) == 0;
    if (!j->started && j->sp.n_host_rows > 0)
        job_main(j);
}

/* Waits for the host rows; when out is given and both halves succeeded,
 * merges them into out / lse (the device half's rows of the whole batch).
 * Frees the job's scratch either way; the host half's status. */
static kvrt_status job_finish(kvrt_kv_tier_job *j, float *out, float *lse)
{
    kvrt_kv_tier *t = j->t;
    if (j->started)
        pthread_join(j->thread, NULL);
    j->started = false;
    kvrt_status s = j->status;
    if (s != KVRT_OK)
        kvrt_error_copy(&t->err, &j->err);
    if (s == KVRT_OK && out && j->sp.n_host_rows > 0) {
        double t0 = now_s();
        const size_t row = (size_t)j->hd.q_stride, H = (size_t)j->n_heads;
        for (int32_t r = 0; r < j->sp.n_host_rows; r++) {
            size_t x = (size_t)j->sp.host_row_of[r];
            kvrt_kv_tier_merge(out + x * row, lse + x * H, j->sp.host_out + (size_t)r * row,
                               j->sp.host_lse + (size_t)r * H, 1, j->n_heads, t->desc.head_dim);
        }
        t->st.split_calls++;
        t->st.host_attn_s += j->seconds;
        t->st.merge_s += now_s() - t0;
    }
    kvrt_free(t->alloc, j->sp.mem);
    j->sp.mem = NULL;
    return s;
}

static kvrt_status split_run(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d, const int32_t *qsl,
                             const float *q, const int32_t *lens, const int32_t *tables, const int32_t *n_host,
                             float *out)
{
    kvrt_kv_tier_job job;
    memset(&job, 0, sizeof(job));
    split sp;
    memset(&sp, 0, sizeof(sp));
    KVRT_TRY(check_split(t, d, qsl, lens, n_host, &sp.n_host_rows));
    int64_t rows = qsl ? qsl[d->num_seqs] : d->num_seqs;
    KVRT_TRY(split_alloc(t, &sp, d, rows));
    split_fill(t, &sp, d, qsl, q, lens, tables, n_host);
    kvrt_attn_desc dd = *d;
    kvrt_status s = qsl ? kvrt_attn_check_prefill(&t->err, &t->desc, &dd, qsl, sp.dev_lens, sp.dev_tables)
                        : kvrt_attn_check_decode(&t->err, &t->desc, &dd, sp.dev_lens, sp.dev_tables);
    kvrt_attn_desc hd = *d;
    hd.num_seqs = sp.n_host_rows;
    hd.num_tokens = 0;
    if (s == KVRT_OK && sp.n_host_rows > 0)
        s = kvrt_attn_check_decode(&t->err, &t->host_desc, &hd, sp.host_lens, sp.host_tables);
    (void)hd;
    if (s != KVRT_OK) {
        kvrt_free(t->alloc, sp.mem);
        return s;
    }
    /* the CPU starts on the host rows, then the device runs its half at the same time */
    job.sp = sp;
    job_start(t, &job, layer, d);
    double t0 = now_s();
    dd.max_seq_len = kvrt_attn_max_len(sp.dev_lens, d->num_seqs);
    dd.num_tokens = (int32_t)(qsl ? rows : 0);
    kvrt_error dev_err;
    kvrt_error_clear(&dev_err);
    s = tier_call(&dev_err, t->dev, t->dev_pool, layer, &dd, q, out, sp.dev_lse, qsl, sp.dev_lens, sp.dev_tables);
    double t1 = now_s();
    kvrt_status hs = job_finish(&job, s == KVRT_OK ? out : NULL, sp.dev_lse);
    if (s != KVRT_OK)
        return kvrt_fail(&t->err, s, "%s", dev_err.message);
    t->st.device_attn_s += t1 - t0;
    return hs;
}

/* The descriptor's fields the caller sets; strides follow the heads. */
static kvrt_status tier_desc(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d, kvrt_attn_desc *out)
{
    if (!d)
        return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT, "host tier: no descriptor");
    KVRT_TRY(kvrt_kv_check_layer(&t->err, &t->desc, layer));
    *out = *d;
    out->q_stride = (int64_t)d->n_heads * t->desc.head_dim;
    out->o_stride = out->q_stride;
    out->num_tokens = 0;
    out->max_seq_len = 0;
    if (out->scale == 0.0f) /* as the attention API: 1/sqrt(head_dim) */
        out->scale = (float)(1.0 / sqrt((double)t->desc.head_dim));
    return kvrt_attn_check_desc(&t->err, &t->desc, out);
}

kvrt_status kvrt_kv_tier_attn_decode(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d, const float *q,
                                     const int32_t *seq_lens, const int32_t *block_tables, const int32_t *n_host,
                                     float *out)
{
    if (!t)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&t->err);
    kvrt_attn_desc dd;
    KVRT_TRY(tier_desc(t, layer, d, &dd));
    if (dd.num_seqs == 0)
        return KVRT_OK;
    if (!q || !seq_lens || !block_tables || !out)
        return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT, "host tier decode: %s is NULL",
                         !q ? "q" : !seq_lens ? "seq_lens" : !block_tables ? "block_tables" : "out");
    for (int32_t s = 0; s < dd.num_seqs; s++)
        if (seq_lens[s] < 1)
            return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT, "host tier decode: seq_lens[%d] = %d", (int)s,
                             (int)seq_lens[s]);
    return split_run(t, layer, &dd, NULL, q, seq_lens, block_tables, n_host, out);
}

kvrt_status kvrt_kv_tier_attn_prefill(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d,
                                      const int32_t *query_start_loc, const float *q, const int32_t *seq_lens,
                                      const int32_t *block_tables, const int32_t *n_host, float *out)
{
    if (!t)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&t->err);
    kvrt_attn_desc dd;
    KVRT_TRY(tier_desc(t, layer, d, &dd));
    if (dd.num_seqs == 0)
        return KVRT_OK;
    if (!query_start_loc || !q || !seq_lens || !block_tables || !out)
        return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT, "host tier prefill: a NULL array");
    if (query_start_loc[0] != 0)
        return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT, "host tier prefill: query_start_loc[0] = %d, must be 0",
                         (int)query_start_loc[0]);
    for (int32_t s = 0; s < dd.num_seqs; s++) {
        int32_t n_new = query_start_loc[s + 1] - query_start_loc[s];
        if (n_new < 0 || n_new > seq_lens[s])
            return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT,
                             "host tier prefill: sequence %d has %d new tokens and length %d", (int)s, (int)n_new,
                             (int)seq_lens[s]);
    }
    if (query_start_loc[dd.num_seqs] == 0)
        return KVRT_OK;
    return split_run(t, layer, &dd, query_start_loc, q, seq_lens, block_tables, n_host, out);
}

/* ---- a step's batch (the model's forward) ------------------------------------------ */

kvrt_status kvrt_kv_tier_device_batch(kvrt_kv_tier *t, const kvrt_batch *b, kvrt_batch *dev)
{
    kvrt_error_clear(&t->err);
    *dev = *b;
    dev->n_host = NULL;
    if (!b->n_host || b->num_seqs == 0)
        return KVRT_OK;
    size_t S = (size_t)b->num_seqs, mb = (size_t)b->max_blocks_per_seq, need = S * (1 + mb);
    if (need > t->batch_cap) {
        int32_t *p = kvrt_alloc(t->alloc, need * sizeof(int32_t), _Alignof(int32_t));
        if (!p)
            return kvrt_fail(&t->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "host tier: batch of %zu ints", need);
        kvrt_free(t->alloc, t->batch_ints);
        t->batch_ints = p;
        t->batch_cap = need;
    }
    kvrt_attn_desc d = {.num_seqs = b->num_seqs, .max_blocks_per_seq = b->max_blocks_per_seq};
    int32_t n_rows = 0;
    KVRT_TRY(check_split(t, &d, b->query_start_loc, b->seq_lens, b->n_host, &n_rows));
    int32_t *lens = t->batch_ints, *tables = lens + S;
    const int32_t bs = t->desc.block_size;
    for (size_t s = 0; s < S; s++) {
        int32_t nh = b->n_host[s];
        const int32_t *tr = b->block_tables + s * mb;
        for (size_t k = 0; k < mb; k++)
            tables[s * mb + k] = k + (size_t)nh < mb ? tr[k + (size_t)nh] : -1;
        lens[s] = b->seq_lens[s] - nh * bs;
        /* host entries: slots of the host pool */
        for (int32_t k = 0; k < nh; k++)
            if (tr[k] < 0 || tr[k] >= t->host_desc.num_blocks)
                return kvrt_fail(&t->err, KVRT_ERR_INVALID_ARGUMENT,
                                 "host tier: sequence %d, entry %d: host slot %d outside [0, %d)", (int)s, (int)k,
                                 (int)tr[k], (int)t->host_desc.num_blocks);
    }
    dev->seq_lens = lens;
    dev->block_tables = tables;
    return KVRT_OK;
}

kvrt_status kvrt_kv_tier_host_begin(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d, const kvrt_batch *b,
                                    const float *q, kvrt_kv_tier_job **out)
{
    kvrt_error_clear(&t->err);
    *out = NULL;
    if (!b->n_host)
        return KVRT_OK;
    kvrt_attn_desc dd = {.num_seqs = b->num_seqs, .n_heads = d->n_heads, .max_blocks_per_seq = b->max_blocks_per_seq,
                         .scale = d->scale};
    dd.q_stride = (int64_t)d->n_heads * t->desc.head_dim;
    dd.o_stride = dd.q_stride;
    if (!t->job && !(t->job = kvrt_calloc(t->alloc, 1, sizeof(*t->job))))
        return kvrt_fail(&t->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "host tier: out of host memory");
    kvrt_kv_tier_job *j = t->job;
    memset(j, 0, sizeof(*j));
    KVRT_TRY(check_split(t, &dd, b->query_start_loc, b->seq_lens, b->n_host, &j->sp.n_host_rows));
    if (j->sp.n_host_rows == 0)
        return KVRT_OK;
    KVRT_TRY(split_alloc(t, &j->sp, &dd, 0));
    split_fill(t, &j->sp, &dd, b->query_start_loc, q, b->seq_lens, b->block_tables, b->n_host);
    job_start(t, j, layer, &dd);
    *out = j;
    return KVRT_OK;
}

kvrt_status kvrt_kv_tier_host_end(kvrt_kv_tier *t, kvrt_kv_tier_job *job, float *att, float *lse)
{
    if (!job)
        return KVRT_OK;
    (void)t;
    return job_finish(job, att, lse);
}

kvrt_status kvrt_kv_tier_host_layer(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d, const kvrt_batch *b,
                                    const float *q, float *att, float *lse)
{
    kvrt_kv_tier_job *job = NULL;
    KVRT_TRY(kvrt_kv_tier_host_begin(t, layer, d, b, q, &job));
    return kvrt_kv_tier_host_end(t, job, att, lse);
}

void kvrt_kv_tier_add_device_time(kvrt_kv_tier *t, double seconds)
{
    t->st.device_attn_s += seconds;
}
