/* The standalone paged KV cache and attention API (include/kvrt_attention.h)
 * on top of the backend vtable, plus the backend-neutral argument checks of
 * backend/attn_check.h. Host arrays are wrapped in place where the backend
 * can (CPU) and go through scratch buffers otherwise, so the same calls run
 * on every backend. */
#include "backend/attn_check.h"

#include <math.h>
#include <string.h>

struct kvrt_kv_cache {
    kvrt_context *ctx;
    kvrt_backend *be;
    kvrt_kv_pool *pool;
    kvrt_kv_pool_desc desc;
    size_t block_bytes;
    kvrt_error err; /* message of the last failed call */
};

/* ---- checks shared with the backends ---------------------------------------- */

int kvrt_attn_visible_ranges(int32_t q_lo, int32_t q_hi, int32_t window, int32_t sinks, int32_t ranges[2][2])
{
    int32_t end = q_hi + 1;
    int32_t win_lo = window > 0 && q_lo - window + 1 > 0 ? q_lo - window + 1 : 0;
    int32_t sink_end = sinks < end ? sinks : end;
    if (win_lo <= sink_end) { /* sinks and window touch: one range */
        ranges[0][0] = 0;
        ranges[0][1] = end;
        return 1;
    }
    int n = 0;
    if (sink_end > 0) {
        ranges[n][0] = 0;
        ranges[n++][1] = sink_end;
    }
    ranges[n][0] = win_lo;
    ranges[n++][1] = end;
    return n;
}

kvrt_status kvrt_attn_check_desc(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d)
{
    if (d->num_seqs < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "num_seqs %d < 0", (int)d->num_seqs);
    if (d->n_heads < 1 || d->n_heads % pool->n_kv_heads != 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "n_heads %d is not a positive multiple of n_kv_heads %d",
                         (int)d->n_heads, (int)pool->n_kv_heads);
    if (d->max_blocks_per_seq < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "max_blocks_per_seq %d < 1", (int)d->max_blocks_per_seq);
    if (d->window < 0 || d->sinks < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "window %d and sinks %d must be >= 0",
                         (int)d->window, (int)d->sinks);
    if (!isfinite(d->scale))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "scale %g is not finite", (double)d->scale);
    return KVRT_OK;
}

/* Checks sequence s's table row for the keys visible to queries [q_lo, q_hi]
 * (none when q_lo > q_hi). */
static kvrt_status check_table_row(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                   int32_t s, int32_t seq_len, int32_t q_lo, int32_t q_hi, const int32_t *row)
{
    int64_t capacity = (int64_t)d->max_blocks_per_seq * pool->block_size;
    if (seq_len < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "seq_lens[%d] = %d < 1", (int)s, (int)seq_len);
    if (seq_len > capacity)
        return kvrt_fail(err, KVRT_ERR_CONTEXT_OVERFLOW,
                         "seq_lens[%d] = %d exceeds its block table (%d blocks x %d positions)",
                         (int)s, (int)seq_len, (int)d->max_blocks_per_seq, (int)pool->block_size);
    int32_t n_blocks = (seq_len + pool->block_size - 1) / pool->block_size;
    for (int32_t b = 0; b < n_blocks; b++) {
        if (row[b] != -1 && (row[b] < 0 || row[b] >= pool->num_blocks))
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "block_tables[%d][%d] = %d outside [0, %d) (num_blocks)",
                             (int)s, (int)b, (int)row[b], (int)pool->num_blocks);
    }
    if (q_lo > q_hi)
        return KVRT_OK;
    int32_t ranges[2][2];
    int n = kvrt_attn_visible_ranges(q_lo, q_hi, d->window, d->sinks, ranges);
    for (int r = 0; r < n; r++) {
        for (int32_t b = ranges[r][0] / pool->block_size; b * pool->block_size < ranges[r][1]; b++) {
            if (row[b] == -1)
                return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                                 "block_tables[%d][%d] = -1 but positions %d..%d of sequence %d are visible",
                                 (int)s, (int)b, (int)(b * pool->block_size),
                                 (int)(b * pool->block_size + pool->block_size - 1), (int)s);
        }
    }
    return KVRT_OK;
}

kvrt_status kvrt_attn_check_decode(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                   const int32_t *seq_lens, const int32_t *block_tables)
{
    KVRT_TRY(kvrt_attn_check_desc(err, pool, d));
    for (int32_t s = 0; s < d->num_seqs; s++) {
        int32_t len = seq_lens[s];
        KVRT_TRY(check_table_row(err, pool, d, s, len, len - 1, len - 1,
                                 block_tables + (size_t)s * (size_t)d->max_blocks_per_seq));
    }
    return KVRT_OK;
}

kvrt_status kvrt_attn_check_prefill(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                    const int32_t *query_start_loc, const int32_t *seq_lens,
                                    const int32_t *block_tables)
{
    KVRT_TRY(kvrt_attn_check_desc(err, pool, d));
    if (query_start_loc[0] != 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "query_start_loc[0] = %d, must be 0",
                         (int)query_start_loc[0]);
    for (int32_t s = 0; s < d->num_seqs; s++) {
        int64_t n_new = (int64_t)query_start_loc[s + 1] - query_start_loc[s];
        int32_t len = seq_lens[s];
        if (n_new < 0)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "query_start_loc decreases at %d (%d -> %d)",
                             (int)s, (int)query_start_loc[s], (int)query_start_loc[s + 1]);
        if (n_new > len)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "sequence %d has %lld query tokens but seq_lens[%d] = %d",
                             (int)s, (long long)n_new, (int)s, (int)len);
        KVRT_TRY(check_table_row(err, pool, d, s, len, len - (int32_t)n_new, len - 1,
                                 block_tables + (size_t)s * (size_t)d->max_blocks_per_seq));
    }
    return KVRT_OK;
}

kvrt_status kvrt_kv_check_slots(kvrt_error *err, const kvrt_kv_pool_desc *pool, const int32_t *slots, int32_t n)
{
    int64_t n_slots = (int64_t)pool->num_blocks * pool->block_size;
    for (int32_t t = 0; t < n; t++) {
        if (slots[t] >= n_slots)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "slot_mapping[%d] = %d outside the pool (%lld slots = %d blocks x %d)",
                             (int)t, (int)slots[t], (long long)n_slots, (int)pool->num_blocks,
                             (int)pool->block_size);
    }
    return KVRT_OK;
}

/* ---- host arrays as backend buffers -------------------------------------------- */

typedef struct host_arg {
    kvrt_buffer *buf;
    void *host;
    size_t size;
    bool is_out;
} host_arg;

/* Wraps (or, for backends without host wrapping, uploads) `size` bytes of
 * caller memory for the duration of one call. */
static kvrt_status host_arg_begin(kvrt_kv_cache *c, host_arg *a, const void *host, size_t size, bool is_out)
{
    kvrt_backend *be = c->be;
    a->host = (void *)host; /* wrapped inputs are only read */
    a->size = size;
    a->is_out = is_out;
    a->buf = NULL;
    kvrt_status s;
    if (be->ops->buffer_wrap_host)
        return be->ops->buffer_wrap_host(be, a->host, size, &a->buf);
    s = be->ops->buffer_create(be, size, KVRT_BUFFER_DEVICE, &a->buf);
    if (s == KVRT_OK && !is_out)
        s = be->ops->buffer_upload(be, a->buf, 0, host, size);
    return s;
}

/* Downloads an output (when the call succeeded and it was not wrapped) and
 * releases the buffer; returns the first failure. */
static kvrt_status host_arg_end(kvrt_kv_cache *c, host_arg *a, kvrt_status s)
{
    kvrt_backend *be = c->be;
    if (!a->buf)
        return s;
    if (s == KVRT_OK && a->is_out && !be->ops->buffer_wrap_host)
        s = be->ops->buffer_download(be, a->buf, 0, a->host, a->size);
    be->ops->buffer_destroy(be, a->buf);
    a->buf = NULL;
    return s;
}

static kvrt_view host_view(const host_arg *a)
{
    kvrt_view v = {a->buf, 0};
    return v;
}

/* Copies the backend's message into the cache after a failed backend call. */
static kvrt_status from_backend(kvrt_kv_cache *c, kvrt_status s)
{
    if (s != KVRT_OK)
        kvrt_error_copy(&c->err, &c->be->err);
    return s;
}

/* ---- create / destroy ------------------------------------------------------------- */

static kvrt_status check_params(const kvrt_kv_cache_params *p, kvrt_error *err)
{
    if (p->n_layers < 1 || p->n_kv_heads < 1 || p->head_dim < 1 || p->num_blocks < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "kv cache: n_layers %d, n_kv_heads %d, head_dim %d, num_blocks %d must all be >= 1",
                         (int)p->n_layers, (int)p->n_kv_heads, (int)p->head_dim, (int)p->num_blocks);
    if (p->block_size != 8 && p->block_size != 16 && p->block_size != 32)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kv cache: block_size %d is not 8, 16 or 32",
                         (int)p->block_size);
    if (p->dtype != KVRT_DTYPE_F32 && p->dtype != KVRT_DTYPE_F16)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kv cache: dtype %s is not supported (f32, f16)",
                         kvrt_dtype_name(p->dtype));
    /* every position of every block must stay addressable by an int32 slot */
    if ((int64_t)p->num_blocks * p->block_size > INT32_MAX)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kv cache: %d blocks x %d positions overflow int32 slots",
                         (int)p->num_blocks, (int)p->block_size);
    size_t bytes = (size_t)p->n_kv_heads, total;
    if (!kvrt_mul_size(bytes, (size_t)p->head_dim, &bytes) || !kvrt_mul_size(bytes, (size_t)p->block_size, &bytes) ||
        !kvrt_mul_size(bytes, 4, &bytes) || !kvrt_mul_size(bytes, (size_t)p->num_blocks, &total) ||
        !kvrt_mul_size(total, (size_t)p->n_layers * 2, &total))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kv cache: size overflows");
    return KVRT_OK;
}

kvrt_status kvrt_kv_cache_create(kvrt_context *ctx, const kvrt_kv_cache_params *params, kvrt_kv_cache **out,
                                 kvrt_error *err)
{
    kvrt_error_clear(err);
    if (!out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_kv_cache_create: out is NULL");
    *out = NULL;
    if (!ctx || !params)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_kv_cache_create: %s is NULL",
                         !ctx ? "ctx" : "params");
    KVRT_TRY(check_params(params, err));
    kvrt_backend *be = ctx->be;
    if (!be->ops->kv_pool_create) {
        kvrt_backend_unsupported(be, "kv_pool_create");
        return kvrt_error_copy(err, &be->err);
    }
    kvrt_kv_cache *c = kvrt_calloc(ctx->alloc, 1, sizeof(*c));
    if (!c)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "kvrt_kv_cache_create: out of host memory");
    c->ctx = ctx;
    c->be = be;
    c->desc.n_layers = params->n_layers;
    c->desc.n_kv_heads = params->n_kv_heads;
    c->desc.head_dim = params->head_dim;
    c->desc.block_size = params->block_size;
    c->desc.num_blocks = params->num_blocks;
    c->desc.dtype = params->dtype;
    c->block_bytes = kvrt_kv_block_bytes(&c->desc);
    kvrt_status s = be->ops->kv_pool_create(be, &c->desc, &c->pool);
    if (s != KVRT_OK) {
        kvrt_error_copy(err, &be->err);
        kvrt_free(ctx->alloc, c);
        return s;
    }
    *out = c;
    return KVRT_OK;
}

void kvrt_kv_cache_destroy(kvrt_kv_cache *cache)
{
    if (!cache)
        return;
    cache->be->ops->kv_pool_destroy(cache->be, cache->pool);
    kvrt_free(cache->ctx->alloc, cache);
}

const char *kvrt_kv_cache_message(const kvrt_kv_cache *cache)
{
    return cache ? cache->err.message : "";
}

size_t kvrt_kv_cache_block_bytes(const kvrt_kv_cache *cache)
{
    return cache ? cache->block_bytes : 0;
}

/* ---- K/V writes -------------------------------------------------------------------- */

static kvrt_status check_layer(kvrt_kv_cache *c, int32_t layer)
{
    if (layer < 0 || layer >= c->desc.n_layers)
        return kvrt_fail(&c->err, KVRT_ERR_INVALID_ARGUMENT, "layer %d outside [0, %d)",
                         (int)layer, (int)c->desc.n_layers);
    return KVRT_OK;
}

static kvrt_status need_entry(kvrt_kv_cache *c, bool present, const char *name)
{
    if (!present)
        return from_backend(c, kvrt_backend_unsupported(c->be, name));
    return KVRT_OK;
}

kvrt_status kvrt_kv_cache_write(kvrt_kv_cache *cache, int32_t layer, const float *k, const float *v,
                                const int32_t *slot_mapping, int32_t n_tokens)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&cache->err);
    KVRT_TRY(check_layer(cache, layer));
    if (n_tokens < 0)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "kv write: n_tokens %d < 0", (int)n_tokens);
    if (n_tokens == 0)
        return KVRT_OK;
    if (!k || !v || !slot_mapping)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "kv write: %s is NULL",
                         !k ? "k" : !v ? "v" : "slot_mapping");
    KVRT_TRY(need_entry(cache, cache->be->ops->kv_write != NULL, "kv_write"));
    KVRT_TRY(kvrt_kv_check_slots(&cache->err, &cache->desc, slot_mapping, n_tokens));
    int64_t row = (int64_t)cache->desc.n_kv_heads * cache->desc.head_dim;
    size_t kv_bytes = (size_t)n_tokens * (size_t)row * sizeof(float);
    host_arg ak, av, as;
    memset(&av, 0, sizeof(av));
    memset(&as, 0, sizeof(as));
    kvrt_status s = host_arg_begin(cache, &ak, k, kv_bytes, false);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &av, v, kv_bytes, false);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &as, slot_mapping, (size_t)n_tokens * sizeof(int32_t), false);
    if (s == KVRT_OK)
        s = cache->be->ops->begin(cache->be);
    if (s == KVRT_OK)
        s = cache->be->ops->kv_write(cache->be, cache->pool, layer, host_view(&ak), row, host_view(&av), row,
                                     host_view(&as), n_tokens);
    if (s == KVRT_OK)
        s = cache->be->ops->submit(cache->be);
    s = host_arg_end(cache, &as, s);
    s = host_arg_end(cache, &av, s);
    s = host_arg_end(cache, &ak, s);
    return from_backend(cache, s);
}

/* ---- attention --------------------------------------------------------------------- */

static kvrt_status make_desc(kvrt_kv_cache *c, int32_t layer, const kvrt_attention_params *p, int32_t num_seqs,
                             kvrt_attn_desc *d)
{
    if (!p)
        return kvrt_fail(&c->err, KVRT_ERR_INVALID_ARGUMENT, "attention: params is NULL");
    KVRT_TRY(check_layer(c, layer));
    memset(d, 0, sizeof(*d));
    d->num_seqs = num_seqs;
    d->n_heads = p->n_heads;
    d->max_blocks_per_seq = p->max_blocks_per_seq;
    d->scale = p->scale != 0.0f ? p->scale : (float)(1.0 / sqrt((double)c->desc.head_dim));
    d->window = p->window;
    d->sinks = p->sinks;
    d->q_stride = (int64_t)p->n_heads * c->desc.head_dim;
    d->o_stride = d->q_stride;
    return kvrt_attn_check_desc(&c->err, &c->desc, d);
}

kvrt_status kvrt_attention_decode(kvrt_kv_cache *cache, int32_t layer, const kvrt_attention_params *params,
                                  int32_t num_seqs, const float *q, const int32_t *seq_lens,
                                  const int32_t *block_tables, float *out)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&cache->err);
    kvrt_attn_desc d;
    KVRT_TRY(make_desc(cache, layer, params, num_seqs, &d));
    if (num_seqs == 0)
        return KVRT_OK;
    if (!q || !seq_lens || !block_tables || !out)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "attention decode: %s is NULL",
                         !q ? "q" : !seq_lens ? "seq_lens" : !block_tables ? "block_tables" : "out");
    KVRT_TRY(need_entry(cache, cache->be->ops->attn_decode != NULL, "attn_decode"));
    KVRT_TRY(kvrt_attn_check_decode(&cache->err, &cache->desc, &d, seq_lens, block_tables));
    size_t qo_bytes = (size_t)num_seqs * (size_t)d.q_stride * sizeof(float);
    size_t table_bytes = (size_t)num_seqs * (size_t)d.max_blocks_per_seq * sizeof(int32_t);
    host_arg aq, ao, al, at;
    memset(&ao, 0, sizeof(ao));
    memset(&al, 0, sizeof(al));
    memset(&at, 0, sizeof(at));
    kvrt_status s = host_arg_begin(cache, &aq, q, qo_bytes, false);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &ao, out, qo_bytes, true);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &al, seq_lens, (size_t)num_seqs * sizeof(int32_t), false);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &at, block_tables, table_bytes, false);
    if (s == KVRT_OK)
        s = cache->be->ops->begin(cache->be);
    if (s == KVRT_OK)
        s = cache->be->ops->attn_decode(cache->be, cache->pool, layer, &d, host_view(&aq), host_view(&ao),
                                        host_view(&al), host_view(&at));
    if (s == KVRT_OK)
        s = cache->be->ops->submit(cache->be);
    s = host_arg_end(cache, &at, s);
    s = host_arg_end(cache, &al, s);
    s = host_arg_end(cache, &ao, s);
    s = host_arg_end(cache, &aq, s);
    return from_backend(cache, s);
}

kvrt_status kvrt_attention_prefill(kvrt_kv_cache *cache, int32_t layer, const kvrt_attention_params *params,
                                   int32_t num_seqs, const int32_t *query_start_loc, const float *q,
                                   const int32_t *seq_lens, const int32_t *block_tables, float *out)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&cache->err);
    kvrt_attn_desc d;
    KVRT_TRY(make_desc(cache, layer, params, num_seqs, &d));
    if (num_seqs == 0)
        return KVRT_OK;
    if (!query_start_loc || !seq_lens || !block_tables)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "attention prefill: %s is NULL",
                         !query_start_loc ? "query_start_loc" : !seq_lens ? "seq_lens" : "block_tables");
    KVRT_TRY(need_entry(cache, cache->be->ops->attn_prefill != NULL, "attn_prefill"));
    KVRT_TRY(kvrt_attn_check_prefill(&cache->err, &cache->desc, &d, query_start_loc, seq_lens, block_tables));
    int32_t num_tokens = query_start_loc[num_seqs];
    if (num_tokens == 0)
        return KVRT_OK;
    if (!q || !out)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "attention prefill: %s is NULL",
                         !q ? "q" : "out");
    size_t qo_bytes = (size_t)num_tokens * (size_t)d.q_stride * sizeof(float);
    size_t table_bytes = (size_t)num_seqs * (size_t)d.max_blocks_per_seq * sizeof(int32_t);
    host_arg aq, ao, aqs, al, at;
    memset(&ao, 0, sizeof(ao));
    memset(&aqs, 0, sizeof(aqs));
    memset(&al, 0, sizeof(al));
    memset(&at, 0, sizeof(at));
    kvrt_status s = host_arg_begin(cache, &aq, q, qo_bytes, false);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &ao, out, qo_bytes, true);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &aqs, query_start_loc, ((size_t)num_seqs + 1) * sizeof(int32_t), false);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &al, seq_lens, (size_t)num_seqs * sizeof(int32_t), false);
    if (s == KVRT_OK)
        s = host_arg_begin(cache, &at, block_tables, table_bytes, false);
    if (s == KVRT_OK)
        s = cache->be->ops->begin(cache->be);
    if (s == KVRT_OK)
        s = cache->be->ops->attn_prefill(cache->be, cache->pool, layer, &d, host_view(&aq), host_view(&ao),
                                         host_view(&aqs), host_view(&al), host_view(&at));
    if (s == KVRT_OK)
        s = cache->be->ops->submit(cache->be);
    s = host_arg_end(cache, &at, s);
    s = host_arg_end(cache, &al, s);
    s = host_arg_end(cache, &aqs, s);
    s = host_arg_end(cache, &ao, s);
    s = host_arg_end(cache, &aq, s);
    return from_backend(cache, s);
}

/* ---- whole blocks -------------------------------------------------------------------- */

static kvrt_status check_block(kvrt_kv_cache *c, int32_t block, const char *what)
{
    if (block < 0 || block >= c->desc.num_blocks)
        return kvrt_fail(&c->err, KVRT_ERR_INVALID_ARGUMENT, "%s block %d outside [0, %d)",
                         what, (int)block, (int)c->desc.num_blocks);
    return KVRT_OK;
}

kvrt_status kvrt_kv_cache_copy_blocks(kvrt_kv_cache *cache, const int32_t (*src_dst)[2], int32_t n_pairs)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&cache->err);
    if (n_pairs < 0)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "copy blocks: n_pairs %d < 0", (int)n_pairs);
    if (n_pairs == 0)
        return KVRT_OK;
    if (!src_dst)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "copy blocks: src_dst is NULL");
    for (int32_t i = 0; i < n_pairs; i++) {
        KVRT_TRY(check_block(cache, src_dst[i][0], "copy blocks: source"));
        KVRT_TRY(check_block(cache, src_dst[i][1], "copy blocks: destination"));
    }
    KVRT_TRY(need_entry(cache, cache->be->ops->kv_copy_blocks != NULL, "kv_copy_blocks"));
    kvrt_backend *be = cache->be;
    kvrt_status s = be->ops->begin(be);
    if (s == KVRT_OK)
        s = be->ops->kv_copy_blocks(be, cache->pool, src_dst, n_pairs);
    if (s == KVRT_OK)
        s = be->ops->submit(be);
    return from_backend(cache, s);
}

static kvrt_status check_block_io(kvrt_kv_cache *c, int32_t layer, int32_t which, int32_t block,
                                  const void *ptr, size_t size, const char *what)
{
    KVRT_TRY(check_layer(c, layer));
    if (which != 0 && which != 1)
        return kvrt_fail(&c->err, KVRT_ERR_INVALID_ARGUMENT, "%s: which %d is not 0 (K) or 1 (V)",
                         what, (int)which);
    if (block < 0 || block >= c->desc.num_blocks)
        return kvrt_fail(&c->err, KVRT_ERR_INVALID_ARGUMENT, "%s: block %d outside [0, %d)",
                         what, (int)block, (int)c->desc.num_blocks);
    if (!ptr)
        return kvrt_fail(&c->err, KVRT_ERR_INVALID_ARGUMENT, "%s: buffer is NULL", what);
    if (size < c->block_bytes)
        return kvrt_fail(&c->err, KVRT_ERR_INVALID_ARGUMENT, "%s: buffer of %zu bytes is smaller than a block (%zu)",
                         what, size, c->block_bytes);
    return KVRT_OK;
}

kvrt_status kvrt_kv_cache_read_block(kvrt_kv_cache *cache, int32_t layer, int32_t which, int32_t block,
                                     void *dst, size_t dst_size)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&cache->err);
    KVRT_TRY(check_block_io(cache, layer, which, block, dst, dst_size, "read block"));
    KVRT_TRY(need_entry(cache, cache->be->ops->kv_block_read != NULL, "kv_block_read"));
    return from_backend(cache, cache->be->ops->kv_block_read(cache->be, cache->pool, layer, (kvrt_kv_which)which,
                                                             block, dst));
}

kvrt_status kvrt_kv_cache_write_block(kvrt_kv_cache *cache, int32_t layer, int32_t which, int32_t block,
                                      const void *src, size_t src_size)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&cache->err);
    KVRT_TRY(check_block_io(cache, layer, which, block, src, src_size, "write block"));
    KVRT_TRY(need_entry(cache, cache->be->ops->kv_block_write != NULL, "kv_block_write"));
    return from_backend(cache, cache->be->ops->kv_block_write(cache->be, cache->pool, layer, (kvrt_kv_which)which,
                                                              block, src));
}
