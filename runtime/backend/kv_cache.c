/* The KV cache object: the standalone paged KV cache and attention API
 * (include/kvrt_attention.h) and the internals the session and the engine use
 * (kv_cache_internal.h), through the front door (ops.h). Host arrays are
 * checked against the layout (kv_layout.h) before they go anywhere, then
 * wrapped in place where the backend can (CPU) or go through scratch buffers
 * otherwise, so the same calls run, and fail, alike on every backend. */
#include "backend/kv_cache_internal.h"
#include "backend/ops.h"
#include "common/fp16.h"

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

/* ---- host arrays as backend buffers -------------------------------------------- */

typedef struct host_arg {
    const void *host; /* caller memory; outputs are written back */
    size_t size;
    bool is_out;
    kvrt_buffer *buf;
} host_arg;

/* Wraps (or, for backends without host wrapping, uploads) each caller array
 * for the duration of one call; stops at the first failure. */
static kvrt_status host_args_begin(kvrt_kv_cache *c, host_arg *a, int n)
{
    for (int i = 0; i < n; i++)
        KVRT_TRY(kvrt_op_buffer_for_host(c->be, (void *)a[i].host, a[i].size, !a[i].is_out, &a[i].buf));
    return KVRT_OK;
}

/* Downloads the outputs (when the call succeeded and they were not wrapped)
 * and releases every buffer; returns the first failure. */
static kvrt_status host_args_end(kvrt_kv_cache *c, host_arg *a, int n, kvrt_status s)
{
    kvrt_backend *be = c->be;
    for (int i = n - 1; i >= 0; i--) {
        if (!a[i].buf)
            continue;
        if (s == KVRT_OK && a[i].is_out && !kvrt_op_wraps_host(be))
            s = kvrt_op_buffer_download(be, a[i].buf, 0, (void *)a[i].host, a[i].size);
        kvrt_op_buffer_destroy(be, a[i].buf);
        a[i].buf = NULL;
    }
    return s;
}

static kvrt_view host_view(const host_arg *a)
{
    kvrt_view v = {a->buf, 0};
    return v;
}

/* Closes the step of one call: submitted when its op was recorded, else
 * dropped (kvrt_op_end_step), so a failure leaves the context as it was. */
static kvrt_status step_end(kvrt_kv_cache *c, bool begun, kvrt_status s)
{
    return begun ? kvrt_op_end_step(c->be, s) : s;
}

/* Copies the backend's message into the cache after a failed backend call. */
static kvrt_status from_backend(kvrt_kv_cache *c, kvrt_status s)
{
    if (s != KVRT_OK)
        kvrt_error_copy(&c->err, &c->be->err);
    return s;
}

/* ---- create / destroy ------------------------------------------------------------- */

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
    kvrt_kv_pool_desc desc = {params->n_layers, params->n_kv_heads, params->head_dim, params->block_size,
                              params->num_blocks, params->dtype};
    kvrt_error why;
    kvrt_status s = kvrt_kv_check_block_size(&why, desc.block_size);
    if (s == KVRT_OK)
        s = kvrt_kv_check_dtype(&why, desc.dtype);
    if (s == KVRT_OK)
        s = kvrt_kv_check_pool_desc(&why, &desc);
    if (s != KVRT_OK)
        return kvrt_fail(err, s, "kv cache: %s", why.message);
    kvrt_backend *be = ctx->be;
    kvrt_kv_cache *c = kvrt_calloc(ctx->alloc, 1, sizeof(*c));
    if (!c)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "kvrt_kv_cache_create: out of host memory");
    c->ctx = ctx;
    c->be = be;
    c->desc = desc;
    c->block_bytes = kvrt_kv_block_bytes(&c->desc);
    s = kvrt_op_kv_pool_create(be, &c->desc, &c->pool);
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
    kvrt_op_kv_pool_destroy(cache->be, cache->pool);
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
    return kvrt_kv_check_layer(&c->err, &c->desc, layer);
}

/* One step writing n_tokens checked rows. */
static kvrt_status write_piece(kvrt_kv_cache *cache, int32_t layer, const float *k, const float *v,
                               const int32_t *slot_mapping, int32_t n_tokens)
{
    int64_t row = (int64_t)cache->desc.n_kv_heads * cache->desc.head_dim;
    size_t kv_bytes = (size_t)n_tokens * (size_t)row * sizeof(float);
    host_arg a[] = {{k, kv_bytes, false, NULL}, {v, kv_bytes, false, NULL},
                    {slot_mapping, (size_t)n_tokens * sizeof(int32_t), false, NULL}};
    kvrt_status s = host_args_begin(cache, a, 3);
    bool begun = s == KVRT_OK && (s = kvrt_op_begin(cache->be)) == KVRT_OK;
    if (begun)
        s = kvrt_op_kv_write(cache->be, cache->pool, layer, host_view(&a[0]), row, host_view(&a[1]), row,
                             host_view(&a[2]), n_tokens);
    s = step_end(cache, begun, s);
    return from_backend(cache, host_args_end(cache, a, 3, s));
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
    KVRT_TRY(kvrt_kv_check_slots(&cache->err, &cache->desc, slot_mapping, n_tokens));
    /* in pieces whose K or V fits one device buffer: a write has no limit of its own */
    int64_t row = (int64_t)cache->desc.n_kv_heads * cache->desc.head_dim;
    kvrt_context_limits l;
    kvrt_op_limits(cache->be, &l);
    uint64_t fit = l.max_buffer_bytes / ((uint64_t)row * sizeof(float));
    int32_t per = (int32_t)KVRT_MAX((uint64_t)1, KVRT_MIN(fit, (uint64_t)n_tokens));
    kvrt_status s = KVRT_OK;
    for (int32_t t0 = 0; s == KVRT_OK && t0 < n_tokens; t0 += per)
        s = write_piece(cache, layer, k + (size_t)t0 * (size_t)row, v + (size_t)t0 * (size_t)row, slot_mapping + t0,
                        KVRT_MIN(per, n_tokens - t0));
    return s;
}

/* F16 K/V go through the F32 path: every F16 value (infinities included) is
 * exactly an F32 value, and every backend rounds F32 to F16 to nearest even,
 * which gives the same F16 back, so an F16 cache stores the bits given and
 * an F32 cache their exact values, on every backend. Converted in pieces of
 * at most this many floats per array, so host memory stays small. */
#define KVRT_KV_WRITE_CHUNK_FLOATS ((size_t)1 << 20)

kvrt_status kvrt_kv_cache_write_typed(kvrt_kv_cache *cache, int32_t layer, kvrt_dtype src_type, const void *k,
                                      const void *v, const int32_t *slot_mapping, int32_t n_tokens)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (src_type == KVRT_DTYPE_F32)
        return kvrt_kv_cache_write(cache, layer, k, v, slot_mapping, n_tokens);
    kvrt_error_clear(&cache->err);
    if (src_type != KVRT_DTYPE_F16)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "kv write: K/V type %s (%d) is not f32 or f16",
                         kvrt_dtype_name(src_type), (int)src_type);
    if (n_tokens <= 0 || !k || !v || !slot_mapping) /* the F32 path reports these before reading any */
        return kvrt_kv_cache_write(cache, layer, k, v, slot_mapping, n_tokens);
    /* every argument checked before the first piece is written */
    KVRT_TRY(check_layer(cache, layer));
    KVRT_TRY(kvrt_kv_check_slots(&cache->err, &cache->desc, slot_mapping, n_tokens));
    size_t row = (size_t)cache->desc.n_kv_heads * (size_t)cache->desc.head_dim;
    int32_t per = (int32_t)KVRT_MAX((size_t)1, KVRT_MIN(KVRT_KV_WRITE_CHUNK_FLOATS / row, (size_t)n_tokens));
    float *buf = kvrt_alloc(cache->ctx->alloc, 2 * (size_t)per * row * sizeof(float), 64);
    if (!buf)
        return kvrt_fail(&cache->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "kv write: out of host memory");
    const uint16_t *kh = k, *vh = v;
    kvrt_status s = KVRT_OK;
    for (int32_t t0 = 0; s == KVRT_OK && t0 < n_tokens; t0 += per) {
        int32_t n = KVRT_MIN(per, n_tokens - t0);
        for (size_t i = 0; i < (size_t)n * row; i++) {
            buf[i] = kvrt_fp16_to_f32(kh[(size_t)t0 * row + i]);
            buf[(size_t)per * row + i] = kvrt_fp16_to_f32(vh[(size_t)t0 * row + i]);
        }
        s = kvrt_kv_cache_write(cache, layer, buf, buf + (size_t)per * row, slot_mapping + t0, n);
    }
    kvrt_free(cache->ctx->alloc, buf);
    return s;
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
    KVRT_TRY(kvrt_attn_check_decode(&cache->err, &cache->desc, &d, seq_lens, block_tables));
    d.max_seq_len = kvrt_attn_max_len(seq_lens, num_seqs);
    size_t qo_bytes = (size_t)num_seqs * (size_t)d.q_stride * sizeof(float);
    size_t table_bytes = (size_t)num_seqs * (size_t)d.max_blocks_per_seq * sizeof(int32_t);
    host_arg a[] = {{q, qo_bytes, false, NULL}, {out, qo_bytes, true, NULL},
                    {seq_lens, (size_t)num_seqs * sizeof(int32_t), false, NULL},
                    {block_tables, table_bytes, false, NULL}};
    kvrt_status s = host_args_begin(cache, a, 4);
    bool begun = s == KVRT_OK && (s = kvrt_op_begin(cache->be)) == KVRT_OK;
    if (begun)
        s = kvrt_op_attn_decode(cache->be, cache->pool, layer, &d, host_view(&a[0]), host_view(&a[1]),
                                host_view(&a[2]), host_view(&a[3]));
    s = step_end(cache, begun, s);
    return from_backend(cache, host_args_end(cache, a, 4, s));
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
    if (query_start_loc[0] != 0)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "query_start_loc[0] = %d, must be 0",
                         (int)query_start_loc[0]);
    KVRT_TRY(kvrt_attn_check_prefill(&cache->err, &cache->desc, &d, query_start_loc, seq_lens, block_tables));
    d.max_seq_len = kvrt_attn_max_len(seq_lens, num_seqs);
    int32_t num_tokens = query_start_loc[num_seqs];
    if (num_tokens == 0)
        return KVRT_OK;
    if (!q || !out)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "attention prefill: %s is NULL",
                         !q ? "q" : "out");
    d.num_tokens = num_tokens;
    size_t qo_bytes = (size_t)num_tokens * (size_t)d.q_stride * sizeof(float);
    size_t table_bytes = (size_t)num_seqs * (size_t)d.max_blocks_per_seq * sizeof(int32_t);
    host_arg a[] = {{q, qo_bytes, false, NULL}, {out, qo_bytes, true, NULL},
                    {query_start_loc, ((size_t)num_seqs + 1) * sizeof(int32_t), false, NULL},
                    {seq_lens, (size_t)num_seqs * sizeof(int32_t), false, NULL},
                    {block_tables, table_bytes, false, NULL}};
    kvrt_status s = host_args_begin(cache, a, 5);
    bool begun = s == KVRT_OK && (s = kvrt_op_begin(cache->be)) == KVRT_OK;
    if (begun)
        s = kvrt_op_attn_prefill(cache->be, cache->pool, layer, &d, host_view(&a[0]), host_view(&a[1]),
                                 host_view(&a[2]), host_view(&a[3]), host_view(&a[4]));
    s = step_end(cache, begun, s);
    return from_backend(cache, host_args_end(cache, a, 5, s));
}

/* ---- whole blocks (the front door checks layers, blocks and pairs) ------------------------------ */

kvrt_status kvrt_kv_cache_copy_blocks(kvrt_kv_cache *cache, const int32_t (*src_dst)[2], int32_t n_pairs)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&cache->err);
    if (n_pairs == 0)
        return KVRT_OK;
    kvrt_status s = kvrt_op_begin(cache->be);
    bool begun = s == KVRT_OK;
    if (begun)
        s = kvrt_op_kv_copy_blocks(cache->be, cache->pool, src_dst, n_pairs);
    return from_backend(cache, step_end(cache, begun, s));
}

static kvrt_status check_block_size(kvrt_kv_cache *c, const void *ptr, size_t size, const char *what)
{
    if (ptr && size < c->block_bytes)
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
    KVRT_TRY(check_block_size(cache, dst, dst_size, "read block"));
    return from_backend(cache, kvrt_op_kv_block_read(cache->be, cache->pool, layer, (kvrt_kv_which)which, block,
                                                     dst));
}

kvrt_status kvrt_kv_cache_write_block(kvrt_kv_cache *cache, int32_t layer, int32_t which, int32_t block,
                                      const void *src, size_t src_size)
{
    if (!cache)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&cache->err);
    KVRT_TRY(check_block_size(cache, src, src_size, "write block"));
    return from_backend(cache, kvrt_op_kv_block_write(cache->be, cache->pool, layer, (kvrt_kv_which)which, block,
                                                      src));
}

/* ---- for the session and the engine (kv_cache_internal.h) ----------------------------------- */

kvrt_kv_pool *kvrt_kv_cache_pool(kvrt_kv_cache *cache)
{
    return cache->pool;
}

const kvrt_kv_pool_desc *kvrt_kv_cache_desc(const kvrt_kv_cache *cache)
{
    return &cache->desc;
}

size_t kvrt_kv_cache_slot_bytes(const kvrt_kv_cache *cache)
{
    return 2 * (size_t)cache->desc.n_layers * cache->block_bytes;
}

uint64_t kvrt_kv_cache_device_bytes(const kvrt_kv_cache *cache)
{
    return (uint64_t)cache->desc.num_blocks * kvrt_kv_cache_slot_bytes(cache);
}

/* Host-tier layout of one block: for each layer, K then V, block_bytes each. */
kvrt_status kvrt_kv_cache_save_block(kvrt_kv_cache *cache, int32_t block, void *dst)
{
    kvrt_error_clear(&cache->err);
    uint8_t *p = dst;
    for (int32_t l = 0; l < cache->desc.n_layers; l++) {
        for (int w = 0; w < 2; w++, p += cache->block_bytes)
            KVRT_TRY(from_backend(cache, kvrt_op_kv_block_read(cache->be, cache->pool, l, (kvrt_kv_which)w, block, p)));
    }
    return KVRT_OK;
}

kvrt_status kvrt_kv_cache_load_block(kvrt_kv_cache *cache, int32_t block, const void *src)
{
    kvrt_error_clear(&cache->err);
    const uint8_t *p = src;
    for (int32_t l = 0; l < cache->desc.n_layers; l++) {
        for (int w = 0; w < 2; w++, p += cache->block_bytes)
            KVRT_TRY(from_backend(cache, kvrt_op_kv_block_write(cache->be, cache->pool, l, (kvrt_kv_which)w, block,
                                                                p)));
    }
    return KVRT_OK;
}

bool kvrt_kv_cache_can_rope_shift(const kvrt_kv_cache *cache)
{
    /* the GPU kernels turn F32 and F16 keys; the CPU every KV type it stores */
    bool plain = cache->desc.dtype == KVRT_DTYPE_F32 || cache->desc.dtype == KVRT_DTYPE_F16;
    return cache->be->ops->kv_rope_shift != NULL && (plain || cache->be->kind == KVRT_BACKEND_CPU);
}

/* Context shift: the block ids are host memory here, so they are checked
 * here (in range, distinct: a block turned twice would be wrong), once,
 * before they go to the backend with the cos/sin row. */
kvrt_status kvrt_kv_cache_rope_shift(kvrt_kv_cache *cache, const int32_t *blocks, int32_t n_blocks,
                                     const float *cos_sin, int32_t rot_dim, int32_t neox)
{
    kvrt_error_clear(&cache->err);
    if (n_blocks == 0)
        return KVRT_OK;
    if (n_blocks < 0 || !blocks || !cos_sin || rot_dim < 2 || rot_dim % 2)
        return kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "rope shift: %d blocks, rot_dim %d", (int)n_blocks,
                         (int)rot_dim);
    uint8_t *seen = kvrt_calloc(cache->ctx->alloc, (size_t)cache->desc.num_blocks, 1);
    if (!seen)
        return kvrt_fail(&cache->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "rope shift: out of host memory");
    kvrt_status s = KVRT_OK;
    for (int32_t i = 0; i < n_blocks && s == KVRT_OK; i++) {
        s = kvrt_kv_check_block(&cache->err, &cache->desc, blocks[i], "rope shift");
        if (s == KVRT_OK && seen[blocks[i]]++)
            s = kvrt_fail(&cache->err, KVRT_ERR_INVALID_ARGUMENT, "rope shift: block %d listed twice", (int)blocks[i]);
    }
    kvrt_free(cache->ctx->alloc, seen);
    KVRT_TRY(s);
    host_arg a[] = {{blocks, (size_t)n_blocks * sizeof(int32_t), false, NULL},
                    {cos_sin, (size_t)rot_dim * sizeof(float), false, NULL}};
    s = host_args_begin(cache, a, 2);
    bool begun = s == KVRT_OK && (s = kvrt_op_begin(cache->be)) == KVRT_OK;
    for (int32_t l = 0; begun && s == KVRT_OK && l < cache->desc.n_layers; l++)
        s = kvrt_op_kv_rope_shift(cache->be, cache->pool, l, host_view(&a[0]), n_blocks, host_view(&a[1]), rot_dim,
                                  neox);
    s = step_end(cache, begun, s);
    return from_backend(cache, host_args_end(cache, a, 2, s));
}
