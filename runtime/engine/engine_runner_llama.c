/* The real runner: the engine's model interface (engine_internal.h) on top of
 * kvrt_llama_forward and a KV cache object (backend/kv_cache_internal.h), so
 * the engine reaches devices through the cache alone. */
#include "engine/engine_internal.h"

#include "backend/kv_cache_internal.h"
#include "backend/kv_tier.h"
#include "kvrt_model.h"
#include "model/model_api_internal.h"
#include "model/prompt_cache.h"

typedef struct llama_runner {
    kvrt_model *model;
    kvrt_llama *lm;
    kvrt_kv_cache *cache;
    kvrt_kv_tier *tier; /* offload: the host tier that computes; NULL otherwise */
    float *shift_cs;    /* [rope_dim] context shift: cos/sin of the shift's angle */
    const kvrt_allocator *alloc;
} llama_runner;

static kvrt_status cache_fail(llama_runner *r, kvrt_status st, kvrt_error *err)
{
    return st == KVRT_OK ? st : kvrt_fail(err, st, "%s", kvrt_kv_cache_message(r->cache));
}

static kvrt_status lr_forward(void *self, const kvrt_batch *b, float *logits, kvrt_error *err)
{
    llama_runner *r = self;
    return kvrt_llama_forward_tiered(r->lm, kvrt_kv_cache_pool(r->cache), r->tier, b, logits, err);
}

static kvrt_status lr_offload(void *self, const int32_t (*pairs)[2], int32_t n_pairs, kvrt_error *err)
{
    llama_runner *r = self;
    if (!r->tier)
        return kvrt_fail(err, KVRT_ERR_INTERNAL, "offload without a host tier");
    kvrt_status st = kvrt_kv_tier_to_host(r->tier, pairs, n_pairs);
    return st == KVRT_OK ? st : kvrt_fail(err, st, "%s", kvrt_kv_tier_message(r->tier));
}

static void lr_tier_times(void *self, double *device_s, double *host_s)
{
    llama_runner *r = self;
    kvrt_kv_tier_stats st = {0};
    kvrt_kv_tier_get_stats(r->tier, &st);
    *device_s = st.device_attn_s;
    *host_s = st.host_attn_s + st.merge_s;
}

static kvrt_status lr_copy_blocks(void *self, const int32_t (*pairs)[2], int32_t n_pairs, kvrt_error *err)
{
    llama_runner *r = self;
    return cache_fail(r, kvrt_kv_cache_copy_blocks(r->cache, pairs, n_pairs), err);
}

static kvrt_status lr_rope_shift(void *self, const int32_t *blocks, int32_t n_blocks, int32_t delta,
                                 kvrt_error *err)
{
    llama_runner *r = self;
    const kvrt_llama_hparams *hp = kvrt_llama_hparams_of(r->lm);
    kvrt_llama_rope_shift_row(r->lm, delta, r->shift_cs);
    return cache_fail(r, kvrt_kv_cache_rope_shift(r->cache, blocks, n_blocks, r->shift_cs, hp->rope_dim, hp->rope_neox),
                      err);
}

/* Context shift: a backend that cannot turn this KV type's keys says so at
 * create, naming both, not at the first full context. A turn by 0 of block 0
 * (all zeros) runs the kernel once. */
static kvrt_status shift_init(llama_runner *r, const kvrt_engine_params *p, kvrt_error *err)
{
    if (!kvrt_kv_cache_can_rope_shift(r->cache))
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "context shift: the %s backend has no rope shift kernel for "
                         "%s keys (the GPU backends turn f32 and f16 keys, the CPU every KV type)",
                         r->model->ctx->be->ops->name, kvrt_dtype_name(p->kv_type));
    const kvrt_llama_hparams *hp = kvrt_llama_hparams_of(r->lm);
    r->shift_cs = kvrt_calloc(r->alloc, (size_t)KVRT_MAX(hp->rope_dim, 1), sizeof(float));
    if (!r->shift_cs)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "context shift scratch");
    int32_t first = 0;
    return lr_rope_shift(r, &first, 1, 0, err);
}

static kvrt_status lr_read_block(void *self, int32_t block, void *dst, kvrt_error *err)
{
    llama_runner *r = self;
    return cache_fail(r, kvrt_kv_cache_save_block(r->cache, block, dst), err);
}

static kvrt_status lr_write_block(void *self, int32_t block, const void *src, kvrt_error *err)
{
    llama_runner *r = self;
    return cache_fail(r, kvrt_kv_cache_load_block(r->cache, block, src), err);
}

static kvrt_status lr_tokenize(void *self, const char *text, size_t len, int add_bos, int32_t *ids,
                               int32_t capacity, int32_t *n, kvrt_error *err)
{
    llama_runner *r = self;
    kvrt_status st = kvrt_tokenize(r->model, text, len, add_bos, ids, capacity, n);
    return st == KVRT_OK ? KVRT_OK : kvrt_fail(err, st, "tokenizer: %s", kvrt_model_message(r->model));
}

static kvrt_status lr_chat_tokenize(void *self, const char *tmpl, const kvrt_chat_message *messages, int32_t n,
                                    int32_t *ids, int32_t capacity, int32_t *n_ids, kvrt_error *err)
{
    llama_runner *r = self;
    kvrt_status st = kvrt_chat_tokenize(r->model, tmpl, messages, (size_t)n, 1, ids, capacity, n_ids);
    return st == KVRT_OK ? KVRT_OK : kvrt_fail(err, st, "chat: %s", kvrt_model_message(r->model));
}

static int lr_is_eog(void *self, int32_t token)
{
    llama_runner *r = self;
    return kvrt_token_is_eog(r->model, token);
}

static kvrt_status lr_token_text(void *self, int32_t prev, int32_t token, char *buf, size_t capacity, size_t *len,
                                 kvrt_error *err)
{
    llama_runner *r = self;
    kvrt_status st = kvrt_token_to_text(r->model, prev, token, buf, capacity, len);
    return st == KVRT_OK ? KVRT_OK : kvrt_fail(err, st, "token %d to text: %s", (int)token,
                                                kvrt_model_message(r->model));
}

static void lr_destroy(void *self)
{
    llama_runner *r = self;
    if (!r)
        return;
    kvrt_kv_tier_destroy(r->tier);
    kvrt_kv_cache_destroy(r->cache);
    kvrt_free(r->alloc, r->shift_cs);
    kvrt_free(r->alloc, r);
}

static const kvrt_runner_ops llama_runner_ops = {
    .forward = lr_forward,
    .offload = lr_offload,
    .tier_times = lr_tier_times,
    .rope_shift = lr_rope_shift,
    .copy_blocks = lr_copy_blocks,
    .read_block = lr_read_block,
    .write_block = lr_write_block,
    .tokenize = lr_tokenize,
    .chat_tokenize = lr_chat_tokenize,
    .is_eog = lr_is_eog,
    .token_text = lr_token_text,
    .destroy = lr_destroy,
};

/* Bytes of the activations of a step of max_batched_tokens tokens and
 * max_seqs logits rows (the forward's workspace, grown by half as it is). */
static uint64_t activation_bytes(const kvrt_llama_hparams *hp, const kvrt_engine_params *p)
{
    uint64_t q = (uint64_t)hp->n_head * hp->head_dim, kv = (uint64_t)hp->n_head_kv * hp->head_dim;
    uint64_t per_token = 3ull * hp->n_embd + 2 * q + 2 * kv + 3ull * hp->n_ff;
    uint64_t per_logit = (uint64_t)hp->n_embd + (uint64_t)hp->n_vocab;
    uint64_t floats = per_token * (uint64_t)p->max_batched_tokens + per_logit * (uint64_t)p->max_seqs;
    return floats * sizeof(float) * 3 / 2;
}

/* num_blocks == 0: with a memory budget on the context, the KV pool gets what
 * the weights and activations leave (as vLLM's memory utilisation does);
 * without one, max_seqs full contexts capped at KVRT_ENGINE_DEFAULT_KV_BYTES.
 * Either way at least one full context, or an error saying what is missing. */
static kvrt_status size_pool(kvrt_model *model, const kvrt_model_info *mi, const kvrt_llama_hparams *hp,
                             kvrt_engine_params *p, size_t block_all, kvrt_error *err)
{
    int64_t per_seq = (p->max_context + p->block_size - 1) / p->block_size;
    int64_t blocks;
    uint64_t budget = model->ctx->memory_budget;
    if (budget > 0) {
        uint64_t fixed = mi->weight_bytes + activation_bytes(hp, p);
        uint64_t left = budget > fixed ? budget - fixed : 0;
        blocks = (int64_t)KVRT_MIN(left / block_all, (uint64_t)INT32_MAX);
        if (blocks < per_seq)
            return kvrt_fail(err, KVRT_ERR_OUT_OF_DEVICE_MEMORY,
                             "memory budget %llu bytes: weights %llu + activations %llu leave %llu for the KV "
                             "cache; one %d-token context needs %llu",
                             (unsigned long long)budget, (unsigned long long)mi->weight_bytes,
                             (unsigned long long)activation_bytes(hp, p), (unsigned long long)left,
                             (int)p->max_context, (unsigned long long)per_seq * block_all);
    } else {
        int64_t want = per_seq * KVRT_MAX(p->max_seqs, 1);
        int64_t cap = (int64_t)(KVRT_ENGINE_DEFAULT_KV_BYTES / block_all);
        blocks = KVRT_MAX(KVRT_MIN(want, cap), per_seq);
    }
    p->num_blocks = (int32_t)KVRT_MIN(blocks, INT32_MAX / p->block_size);
    return KVRT_OK;
}

kvrt_status kvrt_llama_runner_create(kvrt_model *model, kvrt_engine_params *p, kvrt_runner *out, kvrt_error *err)
{
    if (p->max_context == 0)
        p->max_context = model->max_context;
    if (p->max_context < 1 || p->max_context > model->max_context)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "max_context %d outside [1, %d] (the model's)",
                         (int)p->max_context, (int)model->max_context);
    kvrt_model_info mi;
    KVRT_TRY(kvrt_model_get_info(model, &mi));
    if (p->eos_id < 0)
        p->eos_id = mi.eos_id;
    const kvrt_llama_hparams *hp = kvrt_llama_hparams_of(model->lm);
    kvrt_kv_pool_desc d1 = {.n_layers = hp->n_layer, .n_kv_heads = hp->n_head_kv, .head_dim = hp->head_dim,
                            .block_size = p->block_size, .num_blocks = 1, .dtype = p->kv_type,
                            .v_dtype_set = p->kv_type_v_set != 0, .v_dtype = p->kv_type_v};
    kvrt_error why;
    char types[48];
    if (kvrt_kv_check_pool_desc(&why, &d1) != KVRT_OK) /* e.g. a head_dim quantized KV cannot group */
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "KV type %s: %s",
                         kvrt_kv_pool_types_name(&d1, types, sizeof(types)), why.message);
    size_t block_all = (size_t)hp->n_layer * kvrt_kv_block_bytes_pair(&d1); /* one block, every layer, K and V */
    if (p->num_blocks == 0)
        KVRT_TRY(size_pool(model, &mi, hp, p, block_all, err));
    /* offload on the CPU: both tiers are host memory, so they are one pool */
    bool one_tier = p->preempt_mode == KVRT_PREEMPT_OFFLOAD && kvrt_context_backend(model->ctx) == KVRT_BACKEND_CPU;
    if (one_tier) {
        if (p->num_host_blocks > INT32_MAX / p->block_size - p->num_blocks)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "%d + %d blocks overflow int32 slots",
                             (int)p->num_blocks, (int)p->num_host_blocks);
        p->num_blocks += p->num_host_blocks;
        p->num_host_blocks = 0;
    }
    llama_runner *r = kvrt_calloc(model->ctx->alloc, 1, sizeof(*r));
    if (!r)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "engine runner");
    r->model = model;
    r->lm = model->lm;
    r->alloc = model->ctx->alloc;
    kvrt_kv_cache_params cp = {.n_layers = hp->n_layer, .n_kv_heads = hp->n_head_kv, .head_dim = hp->head_dim,
                               .block_size = p->block_size, .num_blocks = p->num_blocks, .dtype = p->kv_type,
                               .v_dtype_set = p->kv_type_v_set, .v_dtype = p->kv_type_v};
    kvrt_status st = kvrt_kv_cache_create(model->ctx, &cp, &r->cache, &why);
    if (st != KVRT_OK) {
        kvrt_fail(err, st, "KV pool of %d blocks: %s", (int)p->num_blocks, why.message);
        lr_destroy(r);
        return st;
    }
    if (p->context_shift) {
        st = shift_init(r, p, err);
        if (st != KVRT_OK) {
            lr_destroy(r);
            return st;
        }
    }
    if (p->preempt_mode == KVRT_PREEMPT_OFFLOAD && p->num_host_blocks > 0) {
        kvrt_kv_tier_params tp = {.num_host_blocks = p->num_host_blocks};
        st = kvrt_kv_tier_create(r->cache, &tp, &r->tier, err);
        if (st != KVRT_OK) {
            lr_destroy(r);
            return st;
        }
    }
    *out = (kvrt_runner){.iface = &llama_runner_ops, .self = r, .n_vocab = hp->n_vocab,
                         .block_bytes = kvrt_kv_cache_slot_bytes(r->cache),
                         .kv_bytes = kvrt_kv_cache_device_bytes(r->cache), .window = hp->sliding_window,
                         .kv_fingerprint = kvrt_prompt_cache_fingerprint(model->mf, kvrt_kv_cache_desc(r->cache))};
    return KVRT_OK;
}
