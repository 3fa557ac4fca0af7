/* A single sequence on a paged KV cache: the generate loop of kvrt-run and
 * the teacher-forced evaluation of the golden tests. */
#include "model/model_api_internal.h"

#include "backend/kv_cache_internal.h"
#include "model/prompt_cache.h"

#include <string.h>

struct kvrt_session {
    kvrt_model *model;
    kvrt_session_params p;
    kvrt_kv_cache *cache;  /* every layer's K and V blocks */
    int32_t max_blocks;    /* block table row length: ceil(n_ctx / block_size) */
    int32_t *block_table;  /* [max_blocks], -1 = unassigned or released */
    int32_t blocks_used;   /* blocks the sequence holds */
    int32_t n_assigned;    /* table entries handed a block so far (released ones included) */
    int32_t *free_blocks;  /* [num_blocks] stack of free block ids; the next is on top */
    int32_t n_free;
    int32_t window;        /* the model's sliding window; 0 = none */
    int32_t n_past;
    /* context shift (context_shift on) */
    int32_t sink_blocks;   /* whole blocks kept at the start */
    int32_t *shift_ids;    /* [max_blocks] blocks whose keys a shift turns */
    float *shift_cs;       /* [rope_dim] cos/sin of the shift's angle */
    int32_t n_shifts;
    int64_t n_dropped;
    /* prompt cache on disk (prompt_cache_dir set) */
    kvrt_prompt_cache *pc;
    int32_t *hist;         /* [n_ctx] token id at each position, for the blocks' keys */
    /* host batch arrays, [n_batch] each */
    int32_t *positions, *slots, *logits_idx;
    kvrt_error err;
};

kvrt_session_params kvrt_session_default_params(void)
{
    kvrt_session_params p = {.n_ctx = 0, .block_size = 16, .kv_type = KVRT_DTYPE_F32, .n_batch = 512, .num_blocks = 0,
                             .context_shift = 0, .n_sinks = 4};
    return p;
}

static const kvrt_allocator *sess_alloc(const kvrt_session *s)
{
    return s->model->ctx->alloc;
}

void kvrt_session_destroy(kvrt_session *s)
{
    if (!s)
        return;
    kvrt_kv_cache_destroy(s->cache);
    kvrt_free(sess_alloc(s), s->block_table);
    kvrt_free(sess_alloc(s), s->free_blocks);
    kvrt_free(sess_alloc(s), s->positions);
    kvrt_free(sess_alloc(s), s->slots);
    kvrt_free(sess_alloc(s), s->logits_idx);
    kvrt_free(sess_alloc(s), s->shift_ids);
    kvrt_free(sess_alloc(s), s->shift_cs);
    kvrt_free(sess_alloc(s), s->hist);
    kvrt_prompt_cache_close(s->pc);
    kvrt_free(sess_alloc(s), s);
}

const char *kvrt_session_message(const kvrt_session *s)
{
    return s ? s->err.message : "";
}

static kvrt_status check_params(const kvrt_model *m, kvrt_session_params *p, kvrt_error *err)
{
    if (p->n_ctx == 0)
        p->n_ctx = m->max_context;
    if (p->n_batch == 0)
        p->n_batch = 512;
    if (p->n_ctx < 1 || p->n_ctx > m->max_context)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "n_ctx %d outside [1, %d] (the model was loaded for %d positions)",
                         (int)p->n_ctx, (int)m->max_context, (int)m->max_context);
    KVRT_TRY(kvrt_kv_check_block_size(err, p->block_size));
    KVRT_TRY(kvrt_kv_check_dtype(err, p->kv_type));
    if (p->n_batch < 1 || p->num_blocks < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "n_batch %d, num_blocks %d", (int)p->n_batch,
                         (int)p->num_blocks);
    if (p->context_shift) {
        /* the sinks in whole blocks, and at least one block after them to drop */
        int64_t kept = p->n_sinks < 0 ? -1 : ((int64_t)p->n_sinks + p->block_size - 1) / p->block_size * p->block_size;
        if (kept < 0 || kept + p->block_size > p->n_ctx)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "context shift: %d sink tokens (%lld positions in whole blocks of %d) leave no block to "
                             "drop in a context of %d positions; use fewer sinks or a longer context",
                             (int)p->n_sinks, (long long)kept, (int)p->block_size, (int)p->n_ctx);
    }
    return KVRT_OK;
}

/* Context shift: scratch for one shift, and a backend that can turn keys. */
static kvrt_status shift_init(kvrt_session *s, kvrt_error *err)
{
    if (!kvrt_kv_cache_can_rope_shift(s->cache))
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "context shift: the %s backend has no rope shift kernel for "
                         "%s KV (the GPU backends turn f32 and f16 keys, the CPU every KV type)",
                         s->model->ctx->be->ops->name, kvrt_dtype_name(s->p.kv_type));
    s->sink_blocks = (s->p.n_sinks + s->p.block_size - 1) / s->p.block_size;
    s->shift_ids = kvrt_calloc(sess_alloc(s), (size_t)s->max_blocks, sizeof(int32_t));
    s->shift_cs = kvrt_calloc(sess_alloc(s), (size_t)s->model->mf->hp.rope_dim, sizeof(float));
    if (!s->shift_ids || !s->shift_cs)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "session: out of host memory");
    return KVRT_OK;
}

static kvrt_status ensure_blocks(kvrt_session *s, int32_t end);

/* The prompt cache: its folder's problems are warnings (kvrt_session_warning). */
static kvrt_status prompt_cache_init(kvrt_session *s, kvrt_error *err)
{
    s->hist = kvrt_calloc(sess_alloc(s), (size_t)s->p.n_ctx, sizeof(int32_t));
    if (!s->hist)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "session: out of host memory");
    uint64_t fp = kvrt_prompt_cache_fingerprint(s->model->mf, kvrt_kv_cache_desc(s->cache));
    return kvrt_prompt_cache_open(s->p.prompt_cache_dir, s->p.prompt_cache_max_bytes, fp, s->p.block_size,
                                  kvrt_kv_cache_slot_bytes(s->cache), sess_alloc(s), &s->pc, err);
}

/* Before an evaluation from an empty cache: the longest run of the prompt's
 * full blocks (never its last token) found in the folder is loaded into the
 * session's first blocks; returns the tokens covered. */
static int32_t prompt_cache_lookup(kvrt_session *s, const int32_t *tokens, int32_t n)
{
    int32_t bs = s->p.block_size, want = KVRT_MIN((n - 1) / bs, s->p.n_ctx / bs);
    if (want < 1 || ensure_blocks(s, want * bs) != KVRT_OK)
        return 0;
    int32_t got = kvrt_prompt_cache_load(s->pc, s->cache, tokens, want, s->block_table);
    memcpy(s->hist, tokens, (size_t)got * (size_t)bs * sizeof(int32_t));
    s->n_past = got * bs;
    return got * bs;
}

/* After an evaluation of several tokens: the full blocks it completed go to
 * the folder (positions still numbered from the first token: no shift yet). */
static void prompt_cache_save(kvrt_session *s, int32_t from_pos)
{
    if (s->n_shifts > 0)
        return;
    kvrt_prompt_cache_store(s->pc, s->cache, s->hist, from_pos / s->p.block_size, s->n_past / s->p.block_size,
                            s->block_table);
}

kvrt_status kvrt_session_create(kvrt_model *m, const kvrt_session_params *params, kvrt_session **out,
                                kvrt_error *err)
{
    kvrt_error_clear(err);
    if (out)
        *out = NULL;
    if (!m || !out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_session_create: model and out are required");
    kvrt_session_params p = params ? *params : kvrt_session_default_params();
    KVRT_TRY(check_params(m, &p, err));
    int32_t max_blocks = (p.n_ctx + p.block_size - 1) / p.block_size;
    int32_t window = m->mf->hp.sliding_window;
    if (p.num_blocks == 0) {
        p.num_blocks = max_blocks;
        /* a sliding window holds at most window - 1 earlier positions and one chunk: a smaller pool */
        if (window > 0)
            p.num_blocks = KVRT_MIN(max_blocks, (window - 1 + p.n_batch + p.block_size - 1) / p.block_size + 1);
    }
    const kvrt_allocator *a = m->ctx->alloc;
    kvrt_session *s = kvrt_calloc(a, 1, sizeof(*s));
    if (!s)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "session: out of host memory");
    s->model = m;
    s->p = p;
    s->max_blocks = max_blocks;
    s->window = window;
    s->block_table = kvrt_calloc(a, (size_t)max_blocks, sizeof(int32_t));
    s->free_blocks = kvrt_calloc(a, (size_t)p.num_blocks, sizeof(int32_t));
    s->positions = kvrt_calloc(a, (size_t)p.n_batch, sizeof(int32_t));
    s->slots = kvrt_calloc(a, (size_t)p.n_batch, sizeof(int32_t));
    s->logits_idx = kvrt_calloc(a, (size_t)p.n_batch, sizeof(int32_t));
    if (!s->block_table || !s->free_blocks || !s->positions || !s->slots || !s->logits_idx) {
        kvrt_session_destroy(s);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "session: out of host memory");
    }
    kvrt_session_reset(s);
    const kvrt_llama_hparams *hp = &m->mf->hp;
    kvrt_kv_cache_params cp = {.n_layers = hp->n_layer, .n_kv_heads = hp->n_head_kv, .head_dim = hp->head_dim,
                               .block_size = p.block_size, .num_blocks = p.num_blocks, .dtype = p.kv_type};
    kvrt_status st = kvrt_kv_cache_create(m->ctx, &cp, &s->cache, err);
    if (st == KVRT_OK && p.context_shift)
        st = shift_init(s, err);
    if (st == KVRT_OK && p.prompt_cache_dir)
        st = prompt_cache_init(s, err);
    if (st != KVRT_OK) {
        kvrt_session_destroy(s);
        return st;
    }
    *out = s;
    return KVRT_OK;
}

kvrt_status kvrt_session_reset(kvrt_session *s)
{
    if (!s)
        return KVRT_ERR_INVALID_ARGUMENT;
    for (int32_t i = 0; i < s->max_blocks; i++)
        s->block_table[i] = -1;
    /* blocks come off the stack in order 0, 1, 2, ... (see kvrt_session_adopt) */
    for (int32_t i = 0; i < s->p.num_blocks; i++)
        s->free_blocks[i] = s->p.num_blocks - 1 - i;
    s->n_free = s->p.num_blocks;
    s->blocks_used = 0;
    s->n_assigned = 0;
    s->n_past = 0;
    s->n_shifts = 0; /* positions count from the first token again (the prompt cache's keys) */
    s->n_dropped = 0;
    return KVRT_OK;
}

/* A sliding window: blocks wholly before position `pos` go back to the pool. */
static void release_before(kvrt_session *s, int32_t pos)
{
    for (int32_t b = 0; b < s->n_assigned && (b + 1) * s->p.block_size <= pos; b++)
        if (s->block_table[b] >= 0) {
            s->free_blocks[s->n_free++] = s->block_table[b];
            s->block_table[b] = -1;
            s->blocks_used--;
        }
}

/* Makes sure blocks exist for positions [0, end) (but those released);
 * all or nothing. One sequence owns the whole pool. */
static kvrt_status ensure_blocks(kvrt_session *s, int32_t end)
{
    int32_t need = (end + s->p.block_size - 1) / s->p.block_size;
    if (need - s->n_assigned > s->n_free)
        return kvrt_fail(&s->err, KVRT_ERR_OUT_OF_BLOCKS,
                         "%d positions need %d more KV blocks of %d; the pool has %d free of %d", (int)end,
                         (int)(need - s->n_assigned), (int)s->p.block_size, (int)s->n_free, (int)s->p.num_blocks);
    for (; s->n_assigned < need; s->n_assigned++) {
        s->block_table[s->n_assigned] = s->free_blocks[--s->n_free];
        s->blocks_used++;
    }
    return KVRT_OK;
}

/* Context shift: makes room for `need` more positions. The sink blocks stay;
 * `drop` blocks after them (half of the full ones, more if `need` asks) go
 * back to the pool; the later ones move down by drop blocks and their keys
 * turn by -drop * block_size positions (keys are stored after RoPE; values
 * do not depend on the position). Turning first and renumbering after keeps
 * the session as it was when the kernel fails, unless it failed half-way
 * (a device that ran some layers), which resets the session. */
static kvrt_status shift_context(kvrt_session *s, int32_t need)
{
    int32_t bs = s->p.block_size, full = s->n_past / bs;
    int32_t droppable = full - s->sink_blocks;
    int32_t short_by = need - (s->p.n_ctx - s->n_past);
    int32_t drop = KVRT_MAX(KVRT_MAX(1, droppable / 2), (short_by + bs - 1) / bs);
    if (drop > droppable)
        return kvrt_fail(&s->err, KVRT_ERR_CONTEXT_OVERFLOW,
                         "context shift: %d tokens do not fit even after dropping every block after the %d sink "
                         "positions (context %d)", (int)need, (int)(s->sink_blocks * bs), (int)s->p.n_ctx);
    int32_t n_ids = 0;
    for (int32_t b = s->sink_blocks + drop; b < s->n_assigned; b++)
        if (s->block_table[b] >= 0)
            s->shift_ids[n_ids++] = s->block_table[b];
    const kvrt_llama_hparams *hp = &s->model->mf->hp;
    kvrt_llama_rope_shift_row(s->model->lm, -drop * bs, s->shift_cs);
    kvrt_status st = kvrt_kv_cache_rope_shift(s->cache, s->shift_ids, n_ids, s->shift_cs, hp->rope_dim, hp->rope_neox);
    if (st != KVRT_OK) {
        kvrt_fail(&s->err, st, "context shift failed, the session was reset: %s", kvrt_kv_cache_message(s->cache));
        kvrt_session_reset(s);
        return st;
    }
    for (int32_t b = s->sink_blocks; b < s->sink_blocks + drop; b++)
        if (s->block_table[b] >= 0) {
            s->free_blocks[s->n_free++] = s->block_table[b];
            s->blocks_used--;
        }
    memmove(s->block_table + s->sink_blocks, s->block_table + s->sink_blocks + drop,
            (size_t)(s->n_assigned - s->sink_blocks - drop) * sizeof(int32_t));
    for (int32_t b = s->n_assigned - drop; b < s->n_assigned; b++)
        s->block_table[b] = -1;
    s->n_assigned -= drop;
    s->n_past -= drop * bs;
    s->n_shifts++;
    s->n_dropped += (int64_t)drop * bs;
    return KVRT_OK;
}

static kvrt_status eval_chunk(kvrt_session *s, const int32_t *tokens, int32_t n, bool want_all, float *logits)
{
    if (s->window > 0) /* the chunk's first query sees keys from n_past - window + 1 on */
        release_before(s, s->n_past - s->window + 1);
    KVRT_TRY(ensure_blocks(s, s->n_past + n));
    int32_t bs = s->p.block_size;
    for (int32_t i = 0; i < n; i++) {
        int32_t pos = s->n_past + i;
        s->positions[i] = pos;
        s->slots[i] = s->block_table[pos / bs] * bs + pos % bs;
        s->logits_idx[i] = i;
    }
    int32_t qsl[2] = {0, n};
    int32_t seq_len = s->n_past + n;
    kvrt_batch b = {
        .num_seqs = 1, .num_decode_seqs = n == 1, .num_tokens = n, .tokens = tokens, .positions = s->positions,
        .slot_mapping = s->slots, .query_start_loc = qsl, .seq_lens = &seq_len, .block_tables = s->block_table,
        .max_blocks_per_seq = s->max_blocks,
        .logits_indices = want_all ? s->logits_idx : s->logits_idx + (n - 1),
        .num_logits = logits ? (want_all ? n : 1) : 0,
    };
    KVRT_TRY(kvrt_llama_forward(s->model->lm, kvrt_kv_cache_pool(s->cache), &b, logits, &s->err));
    if (s->hist && s->n_shifts == 0)
        memcpy(s->hist + s->n_past, tokens, (size_t)n * sizeof(int32_t));
    s->n_past += n;
    return KVRT_OK;
}

kvrt_status kvrt_session_eval(kvrt_session *s, const int32_t *tokens, int32_t n, float *logits, float *logits_all)
{
    if (!s)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_error_clear(&s->err);
    if (n < 1 || !tokens)
        return kvrt_fail(&s->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_session_eval: need at least one token (n = %d)",
                         (int)n);
    if (!s->p.context_shift && n > s->p.n_ctx - s->n_past)
        return kvrt_fail(&s->err, KVRT_ERR_CONTEXT_OVERFLOW,
                         "%d tokens do not fit: %d of the context's %d positions are used", (int)n, (int)s->n_past,
                         (int)s->p.n_ctx);
    int32_t n_vocab = s->model->mf->hp.n_vocab;
    for (int32_t i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return kvrt_fail(&s->err, KVRT_ERR_BAD_TOKEN, "token id %d (input %d) is outside the vocabulary [0, %d)",
                             (int)tokens[i], (int)i, (int)n_vocab);
    }
    int32_t start = s->n_past, done = 0;
    if (s->pc && n >= 2 && s->n_past == 0 && !logits_all && kvrt_prompt_cache_active(s->pc))
        start = done = prompt_cache_lookup(s, tokens, n);
    /* with context shift a chunk fits after the largest shift: the sinks and a partial block stay */
    int32_t max_chunk = s->p.context_shift ? s->p.n_ctx - s->sink_blocks * s->p.block_size - s->p.block_size + 1
                                           : s->p.n_batch;
    while (done < n) {
        int32_t c = KVRT_MIN(KVRT_MIN(s->p.n_batch, max_chunk), n - done);
        if (s->p.context_shift && c > s->p.n_ctx - s->n_past)
            KVRT_TRY(shift_context(s, c));
        bool last = done + c == n;
        float *dst = logits_all ? logits_all + (size_t)done * n_vocab : (last ? logits : NULL);
        KVRT_TRY(eval_chunk(s, tokens + done, c, logits_all != NULL, dst));
        if (last && logits && logits_all)
            memcpy(logits, logits_all + (size_t)(n - 1) * n_vocab, (size_t)n_vocab * sizeof(float));
        done += c;
    }
    if (s->pc && n >= 2)
        prompt_cache_save(s, start);
    return KVRT_OK;
}

const char *kvrt_session_warning(const kvrt_session *s)
{
    return s ? kvrt_prompt_cache_warning(s->pc) : "";
}

kvrt_status kvrt_session_get_stats(const kvrt_session *s, kvrt_session_stats *out)
{
    if (!s || !out)
        return KVRT_ERR_INVALID_ARGUMENT;
    out->n_past = s->n_past;
    out->n_ctx = s->p.n_ctx;
    out->blocks_used = s->blocks_used;
    out->blocks_total = s->p.num_blocks;
    out->block_size = s->p.block_size;
    out->kv_bytes = kvrt_kv_cache_device_bytes(s->cache);
    out->n_shifts = s->n_shifts;
    out->n_dropped = s->n_dropped;
    kvrt_prompt_cache_stats ps;
    kvrt_prompt_cache_get_stats(s->pc, &ps);
    out->prompt_cache_hit_tokens = ps.hit_blocks * s->p.block_size;
    out->prompt_cache_written_blocks = ps.written_blocks;
    out->n_warnings = ps.n_warnings;
    return KVRT_OK;
}

kvrt_kv_pool *kvrt_session_kv_pool(kvrt_session *s)
{
    return kvrt_kv_cache_pool(s->cache);
}

kvrt_status kvrt_session_adopt(kvrt_session *s, int32_t n_past)
{
    if (n_past < 0 || n_past > s->p.n_ctx)
        return kvrt_fail(&s->err, KVRT_ERR_INVALID_ARGUMENT, "adopt: n_past %d outside [0, %d]", (int)n_past,
                         (int)s->p.n_ctx);
    kvrt_session_reset(s);
    KVRT_TRY(ensure_blocks(s, n_past));
    s->n_past = n_past;
    return KVRT_OK;
}

kvrt_status kvrt_session_generate(kvrt_session *s, kvrt_sampler *sampler, float *logits, int32_t max_tokens,
                                  int ignore_eog, kvrt_gen_token_fn on_token, void *user, int32_t *n_generated,
                                  kvrt_gen_stop *stop)
{
    if (!s)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (!sampler || !logits || max_tokens < 0 || !n_generated || !stop)
        return kvrt_fail(&s->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_session_generate: invalid arguments");
    *n_generated = 0;
    *stop = KVRT_GEN_STOP_LENGTH;
    while (*n_generated < max_tokens) {
        int32_t tok;
        kvrt_status st = kvrt_sampler_sample(sampler, logits, &tok);
        if (st != KVRT_OK)
            return kvrt_fail(&s->err, st, "sampling failed (NaN logits?)");
        if (!ignore_eog && kvrt_token_is_eog(s->model, tok)) {
            *stop = KVRT_GEN_STOP_EOG;
            return KVRT_OK;
        }
        (*n_generated)++;
        int keep_going = on_token ? !on_token(user, tok) : 1;
        if (s->n_past >= s->p.n_ctx && !s->p.context_shift) { /* reported, but there is no room to evaluate it */
            *stop = KVRT_GEN_STOP_CONTEXT_FULL;
            return KVRT_OK;
        }
        KVRT_TRY(kvrt_session_eval(s, &tok, 1, logits, NULL));
        if (!keep_going) {
            *stop = KVRT_GEN_STOP_CALLBACK;
            return KVRT_OK;
        }
    }
    return KVRT_OK;
}

struct kvrt_prompt_cache *kvrt_session_debug_prompt_cache(kvrt_session *s)
{
    return s->pc;
}
