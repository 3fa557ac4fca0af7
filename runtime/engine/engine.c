/* Serving engine: creation, requests (submit, cancel, outputs), metrics.
 * The scheduler (scheduler.c) decides a step's work, step.c runs it. */
#include "engine/engine_internal.h"

#include <math.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

kvrt_engine_params kvrt_engine_default_params(void)
{
    kvrt_engine_params p;
    memset(&p, 0, sizeof(p));
    p.block_size = 16;
    p.max_batched_tokens = 256;
    p.max_seqs = 64;
    p.enable_prefix_cache = 1;
    p.preempt_mode = KVRT_PREEMPT_RECOMPUTE;
    p.eos_id = -1;
    p.n_sinks = 4;
    return p;
}

kvrt_request_params kvrt_request_default_params(void)
{
    kvrt_request_params p;
    memset(&p, 0, sizeof(p));
    p.max_tokens = 16;
    p.n = 1;
    p.top_p = 1.0f;
    p.repeat_penalty = 1.0f;
    p.repeat_last_n = 64;
    p.add_bos = 1;
    return p;
}

const char *kvrt_finish_reason_name(kvrt_finish_reason reason)
{
    switch (reason) {
    case KVRT_FINISH_NONE: return "running";
    case KVRT_FINISH_LENGTH: return "length";
    case KVRT_FINISH_EOS: return "eos";
    case KVRT_FINISH_STOP_TOKEN: return "stop";
    case KVRT_FINISH_CANCELLED: return "cancelled";
    case KVRT_FINISH_STOP_STRING: return "stop_string";
    case KVRT_FINISH_ERROR: return "error";
    }
    return "?";
}

static double monotonic_seconds(void *user)
{
    (void)user;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double kvrt_engine_now(const kvrt_engine *e)
{
    return e->p.clock(e->p.clock_user);
}

const char *kvrt_engine_message(const kvrt_engine *e)
{
    return e ? e->err.message : "";
}

/* ---- create / destroy ----------------------------------------------------------- */

static void request_free(kvrt_engine *e, kvrt_request *r)
{
    if (!r)
        return;
    if (r->seqs)
        for (int32_t i = 0; i < r->p.n; i++) {
            kvrt_free(e->alloc, r->seqs[i].tokens);
            kvrt_free(e->alloc, r->seqs[i].logprobs);
            kvrt_free(e->alloc, r->seqs[i].text);
            kvrt_sampler_destroy(r->seqs[i].sampler);
        }
    if (r->stop_strings)
        for (int32_t i = 0; i < r->p.n_stop_strings; i++)
            kvrt_free(e->alloc, r->stop_strings[i]);
    kvrt_free(e->alloc, r->stop_strings);
    kvrt_free(e->alloc, r->seqs);
    kvrt_free(e->alloc, r->outs);
    kvrt_free(e->alloc, r->prompt);
    kvrt_free(e->alloc, r->stop_tokens);
    kvrt_free(e->alloc, r);
}

void kvrt_engine_destroy(kvrt_engine *e)
{
    if (!e)
        return;
    const kvrt_allocator *a = e->alloc;
    for (int32_t i = 0; i < e->n_reqs; i++)
        request_free(e, e->reqs[i]);
    kvrt_free(a, e->reqs);
    kvrt_free(a, e->finished_q);
    kvrt_free(a, e->waiting.v);
    kvrt_free(a, e->running.v);
    kvrt_free(a, e->swapped.v);
    void *scratch[] = {e->sched, e->b_tokens, e->b_pos, e->b_slots, e->b_logits_idx, e->b_qsl, e->b_seq_lens,
                       e->b_tables, e->b_bm_seqs, e->b_n_host, e->b_order, e->slot_scratch, e->logits, e->sample_scratch,
                       e->host_tier, e->pairs, e->shift_ids};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(scratch); i++)
        kvrt_free(a, scratch[i]);
    kvrt_series *series[] = {&e->s_ttft, &e->s_tpot, &e->s_e2e, &e->s_queue,
                             &e->s_step_tokens, &e->s_step_seqs, &e->s_step_prefill, &e->s_step_decode,
                             &e->s_step_time};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(series); i++)
        kvrt_series_free(series[i], a);
    kvrt_engine_disk_close(e);
    kvrt_block_manager_destroy(e->bm);
    if (e->runner.iface && e->runner.iface->destroy)
        e->runner.iface->destroy(e->runner.self);
    kvrt_free(a, e);
}

/* Context shift: the sinks in whole blocks must leave a block to drop (as
 * the session's check); the runner must turn keys; a sliding window already
 * bounds the cache (its released blocks leave holes a shift cannot move). */
static kvrt_status check_context_shift(const kvrt_engine_params *p, const kvrt_runner *r, kvrt_error *err)
{
    int64_t kept = p->n_sinks < 0 ? -1 : ((int64_t)p->n_sinks + p->block_size - 1) / p->block_size * p->block_size;
    if (kept < 0 || kept + p->block_size > p->max_context)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "context shift: %d sink tokens (%lld positions in whole blocks of %d) leave no block to "
                         "drop in a context of %d positions; use fewer sinks or a longer context",
                         (int)p->n_sinks, (long long)kept, (int)p->block_size, (int)p->max_context);
    if (r->window > 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "context shift: not with a sliding-window model (window %d): the window already bounds "
                         "what a sequence keeps", (int)r->window);
    if (!r->iface->rope_shift)
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "context shift: the runner cannot turn keys");
    return KVRT_OK;
}

/* This machine's physical memory in bytes (0 when unknown). */
static uint64_t host_memory_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

/* The swap tier is one host allocation (e->host_tier) plus the block
 * manager's slot records: refused before either exists, with the numbers,
 * when it cannot fit (calloc would promise it and the first swap-out would
 * find no memory). */
static kvrt_status check_swap_tier(const kvrt_engine_params *p, const kvrt_runner *r, kvrt_error *err)
{
    uint64_t need = (uint64_t)p->num_host_blocks * (uint64_t)r->block_bytes; /* < 2^31 * a block */
    uint64_t mem = host_memory_bytes();
    if (mem > 0 && need > mem)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                         "swap tier: %d host blocks of %zu bytes need %llu bytes (%.2f GiB), more than the host "
                         "memory of %llu bytes (%.2f GiB)",
                         (int)p->num_host_blocks, r->block_bytes, (unsigned long long)need,
                         (double)need / 1073741824.0, (unsigned long long)mem, (double)mem / 1073741824.0);
    return KVRT_OK;
}

static kvrt_status check_params(const kvrt_engine_params *p, const kvrt_runner *r, kvrt_error *err)
{
    KVRT_TRY(kvrt_kv_check_block_size(err, p->block_size));
    if (p->num_blocks < 1 || p->max_context < 1 || p->max_batched_tokens < 1 || p->max_seqs < 1 ||
        p->num_host_blocks < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "num_blocks %d, max_context %d, max_batched_tokens %d, max_seqs %d must be >= 1 "
                         "(num_host_blocks %d >= 0)",
                         (int)p->num_blocks, (int)p->max_context, (int)p->max_batched_tokens, (int)p->max_seqs,
                         (int)p->num_host_blocks);
    if ((int64_t)p->num_blocks * p->block_size > INT32_MAX || p->max_context > INT32_MAX - p->block_size)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "%d blocks of %d positions overflow int32 slots",
                         (int)p->num_blocks, (int)p->block_size);
    if (p->preempt_mode != KVRT_PREEMPT_RECOMPUTE && p->preempt_mode != KVRT_PREEMPT_SWAP &&
        p->preempt_mode != KVRT_PREEMPT_OFFLOAD)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "unknown preemption mode %d", (int)p->preempt_mode);
    /* num_host_blocks 0 with offload: the runner made both tiers one pool (CPU) */
    if (p->preempt_mode == KVRT_PREEMPT_OFFLOAD && p->num_host_blocks > 0 && (!r->iface->offload || r->window != 0))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "offload needs a runner with a host tier and a model without a sliding window (window %d)",
                         (int)r->window);
    if (p->preempt_mode == KVRT_PREEMPT_SWAP &&
        (p->num_host_blocks < 1 || !r->iface->read_block || !r->iface->write_block || r->block_bytes == 0))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "swap preemption needs num_host_blocks >= 1 and a runner that reads and writes blocks");
    if (p->preempt_mode == KVRT_PREEMPT_SWAP)
        KVRT_TRY(check_swap_tier(p, r, err));
    if (r->n_vocab < 1 || !r->iface->forward || !r->iface->copy_blocks)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "runner without forward/copy_blocks or vocabulary");
    if (p->eos_id >= r->n_vocab)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "eos id %d outside the vocabulary of %d",
                         (int)p->eos_id, (int)r->n_vocab);
    return p->context_shift ? check_context_shift(p, r, err) : KVRT_OK;
}

static kvrt_status alloc_scratch(kvrt_engine *e, kvrt_error *err)
{
    const kvrt_allocator *a = e->alloc;
    size_t ms = (size_t)e->p.max_seqs, mt = (size_t)e->p.max_batched_tokens, nv = (size_t)e->runner.n_vocab;
    size_t tables, logits, host = 0;
    if (!kvrt_mul_size(ms, (size_t)e->max_blocks_per_seq, &tables) || !kvrt_mul_size(ms, nv, &logits) ||
        (e->p.preempt_mode == KVRT_PREEMPT_SWAP && e->p.num_host_blocks &&
         !kvrt_mul_size((size_t)e->p.num_host_blocks, e->runner.block_bytes, &host)))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "engine scratch sizes overflow");
    e->sched = kvrt_calloc(a, ms, sizeof(*e->sched));
    e->b_order = kvrt_calloc(a, ms, sizeof(*e->b_order));
    e->b_tokens = kvrt_calloc(a, mt, sizeof(int32_t));
    e->b_pos = kvrt_calloc(a, mt, sizeof(int32_t));
    e->b_slots = kvrt_calloc(a, mt, sizeof(int32_t));
    e->b_logits_idx = kvrt_calloc(a, mt, sizeof(int32_t));
    e->slot_scratch = kvrt_calloc(a, mt, sizeof(int32_t));
    e->b_qsl = kvrt_calloc(a, ms + 1, sizeof(int32_t));
    e->b_seq_lens = kvrt_calloc(a, ms, sizeof(int32_t));
    e->b_bm_seqs = kvrt_calloc(a, ms, sizeof(int32_t));
    e->b_n_host = kvrt_calloc(a, ms, sizeof(int32_t));
    e->b_tables = kvrt_calloc(a, tables, sizeof(int32_t));
    e->logits = kvrt_calloc(a, logits, sizeof(float));
    e->sample_scratch = kvrt_calloc(a, 1, kvrt_sampler_scratch_bytes(e->runner.n_vocab));
    e->host_tier = host ? kvrt_calloc(a, host, 1) : NULL;
    e->pairs = kvrt_calloc(a, (size_t)e->max_blocks_per_seq, sizeof(*e->pairs));
    if (e->p.context_shift) {
        e->sink_tok = (e->p.n_sinks + e->p.block_size - 1) / e->p.block_size * e->p.block_size;
        e->shift_ids = kvrt_calloc(a, (size_t)e->max_blocks_per_seq, sizeof(int32_t));
        if (!e->shift_ids)
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "engine scratch buffers");
    }
    if (!e->sched || !e->b_order || !e->b_tokens || !e->b_pos || !e->b_slots || !e->b_logits_idx ||
        !e->slot_scratch || !e->b_qsl || !e->b_seq_lens || !e->b_bm_seqs || !e->b_n_host || !e->b_tables ||
        !e->logits ||
        !e->sample_scratch || !e->pairs || (host && !e->host_tier))
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "engine scratch buffers");
    return KVRT_OK;
}

kvrt_status kvrt_engine_create_with_runner(const kvrt_engine_params *params, kvrt_runner runner,
                                           kvrt_engine **out, kvrt_error *err)
{
    kvrt_error_clear(err);
    kvrt_status st = KVRT_ERR_INVALID_ARGUMENT;
    if (!out || !runner.iface) {
        st = kvrt_fail(err, st, "kvrt_engine_create: out and a runner are required");
        goto fail_runner;
    }
    *out = NULL;
    kvrt_engine_params p = params ? *params : kvrt_engine_default_params();
    if (!p.clock)
        p.clock = monotonic_seconds;
    st = check_params(&p, &runner, err);
    if (st != KVRT_OK)
        goto fail_runner;
    kvrt_engine *e = kvrt_calloc(p.allocator, 1, sizeof(*e));
    if (!e) {
        st = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "engine record");
        goto fail_runner;
    }
    e->p = p;
    e->alloc = p.allocator;
    e->runner = runner;
    e->next_id = 1;
    e->max_blocks_per_seq = (p.max_context + p.block_size - 1) / p.block_size;

    kvrt_block_manager_params bp = kvrt_block_manager_default_params();
    bp.num_blocks = p.num_blocks;
    bp.block_size = p.block_size;
    bp.max_blocks_per_seq = e->max_blocks_per_seq;
    /* offload keeps its host blocks in the runner's host tier; swap in e->host_tier */
    bp.num_host_blocks = p.preempt_mode != KVRT_PREEMPT_RECOMPUTE ? p.num_host_blocks : 0;
    bp.enable_prefix_cache = p.enable_prefix_cache;
    bp.allocator = p.allocator;
    st = kvrt_block_manager_create(&bp, &e->bm, err);
    if (st == KVRT_OK)
        st = alloc_scratch(e, err);
    if (st == KVRT_OK)
        st = kvrt_engine_disk_open(e, err);
    if (st != KVRT_OK) {
        kvrt_engine_destroy(e);
        return st;
    }
    *out = e;
    return KVRT_OK;

fail_runner:
    if (runner.iface && runner.iface->destroy)
        runner.iface->destroy(runner.self);
    return st;
}

kvrt_status kvrt_engine_create(kvrt_model *model, const kvrt_engine_params *params, kvrt_engine **out,
                               kvrt_error *err)
{
    kvrt_error_clear(err);
    if (out)
        *out = NULL;
    if (!model || !out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_engine_create: model and out are required");
    kvrt_engine_params p = params ? *params : kvrt_engine_default_params();
    if (p.preempt_mode == KVRT_PREEMPT_OFFLOAD && p.num_host_blocks < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "offload needs num_host_blocks >= 1 (got %d)",
                         (int)p.num_host_blocks);
    KVRT_TRY(kvrt_kv_check_dtype(err, p.kv_type));
    if (p.kv_type_v_set)
        KVRT_TRY(kvrt_kv_check_dtype(err, p.kv_type_v));
    KVRT_TRY(kvrt_kv_check_block_size(err, p.block_size));
    kvrt_runner runner;
    KVRT_TRY(kvrt_llama_runner_create(model, &p, &runner, err));
    return kvrt_engine_create_with_runner(&p, runner, out, err);
}

/* ---- requests --------------------------------------------------------------------- */

static kvrt_request *find_request(const kvrt_engine *e, int64_t id)
{
    for (int32_t i = 0; i < e->n_reqs; i++)
        if (e->reqs[i]->id == id)
            return e->reqs[i];
    return NULL;
}

static kvrt_status check_request(kvrt_engine *e, const kvrt_request_params *rp)
{
    if (!rp->prompt || rp->n_prompt < 1)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "a request needs a prompt of at least one token");
    if (rp->max_tokens < 1 || rp->n < 1 || rp->n_stop_tokens < 0 || (rp->n_stop_tokens > 0 && !rp->stop_tokens))
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT,
                         "max_tokens %d and n %d must be >= 1; stop tokens %d need an array", (int)rp->max_tokens,
                         (int)rp->n, (int)rp->n_stop_tokens);
    if (rp->top_k < 0 || !(rp->top_p > 0.0f && rp->top_p <= 1.0f) || !(rp->min_p >= 0.0f && rp->min_p <= 1.0f) ||
        !(rp->repeat_penalty > 0.0f) || rp->repeat_last_n < 0 || isnan(rp->temperature))
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "top_k %d < 0, top_p %g not in (0, 1], min_p %g "
                         "not in [0, 1], repeat_penalty %g <= 0, repeat_last_n %d < 0 or temperature NaN",
                         (int)rp->top_k, (double)rp->top_p, (double)rp->min_p, (double)rp->repeat_penalty,
                         (int)rp->repeat_last_n);
    if (rp->n_stop_strings < 0 || (rp->n_stop_strings > 0 && !rp->stop_strings))
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "%d stop strings need an array",
                         (int)rp->n_stop_strings);
    for (int32_t i = 0; i < rp->n_stop_strings; i++)
        if (!rp->stop_strings[i] || !rp->stop_strings[i][0])
            return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "stop string %d is NULL or empty", (int)i);
    if (rp->n_stop_strings > 0 && !e->runner.iface->token_text)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "stop strings need a model with a tokenizer");
    for (int32_t i = 0; i < rp->n_prompt; i++)
        if (rp->prompt[i] < 0 || rp->prompt[i] >= e->runner.n_vocab)
            return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "prompt token %d (at %d) outside the vocabulary "
                             "of %d", (int)rp->prompt[i], (int)i, (int)e->runner.n_vocab);
    if (rp->n_prompt > e->p.max_context)
        return kvrt_fail(&e->err, KVRT_ERR_REQUEST_REJECTED, "prompt of %d tokens is longer than the context "
                         "of %d", (int)rp->n_prompt, (int)e->p.max_context);
    /* One sample alone must fit the pool, or it could never finish. The last
     * token is never fed back, so its K/V is never stored. */
    int64_t cap = KVRT_MIN((int64_t)rp->n_prompt + rp->max_tokens, (int64_t)e->p.max_context);
    if (e->p.context_shift && (int64_t)rp->n_prompt + rp->max_tokens > INT32_MAX)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "prompt %d + max_tokens %d overflow int32",
                         (int)rp->n_prompt, (int)rp->max_tokens);
    int64_t blocks = (cap - 1 + e->p.block_size - 1) / e->p.block_size;
    if (blocks > e->p.num_blocks)
        return kvrt_fail(&e->err, KVRT_ERR_REQUEST_REJECTED, "request needs %lld KV blocks (%lld tokens) but the "
                         "pool has %d", (long long)blocks, (long long)(cap - 1), (int)e->p.num_blocks);
    return KVRT_OK;
}

static kvrt_status grow_ptrs(kvrt_engine *e, void ***v, int32_t n, int32_t *cap)
{
    if (n < *cap)
        return KVRT_OK;
    int32_t c = *cap ? *cap * 2 : 16;
    if (!kvrt_grow_array(e->alloc, (void **)v, (size_t)n, (size_t)c, sizeof(void *)))
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "request list of %d", (int)c);
    *cap = c;
    return KVRT_OK;
}

static kvrt_request *request_build(kvrt_engine *e, const kvrt_request_params *rp)
{
    const kvrt_allocator *a = e->alloc;
    kvrt_request *r = kvrt_calloc(a, 1, sizeof(*r));
    if (!r)
        return NULL;
    r->p = *rp;
    r->prompt = kvrt_calloc(a, (size_t)rp->n_prompt, sizeof(int32_t));
    r->stop_tokens = kvrt_calloc(a, (size_t)rp->n_stop_tokens, sizeof(int32_t));
    r->seqs = kvrt_calloc(a, (size_t)rp->n, sizeof(kvrt_eseq));
    r->outs = kvrt_calloc(a, (size_t)rp->n, sizeof(kvrt_sample_output));
    if (!r->prompt || !r->stop_tokens || !r->seqs || !r->outs) {
        request_free(e, r);
        return NULL;
    }
    memcpy(r->prompt, rp->prompt, (size_t)rp->n_prompt * sizeof(int32_t));
    if (rp->n_stop_tokens)
        memcpy(r->stop_tokens, rp->stop_tokens, (size_t)rp->n_stop_tokens * sizeof(int32_t));
    r->p.prompt = r->prompt;
    r->p.stop_tokens = r->stop_tokens;
    r->p.prompt_text = NULL; /* caller memory: not kept */
    r->p.messages = NULL;
    r->p.n_messages = 0;
    r->p.chat_template = NULL;
    r->p.stop_strings = NULL;
    if (kvrt_engine_copy_stop_strings(e, r, rp) != KVRT_OK) {
        request_free(e, r);
        return NULL;
    }
    /* with context shift a sample outlives its context: its tokens are all kept (the output) */
    int32_t cap = (int32_t)KVRT_MIN((int64_t)rp->n_prompt + rp->max_tokens,
                                    e->p.context_shift ? (int64_t)INT32_MAX : (int64_t)e->p.max_context);
    int32_t room = KVRT_MIN(cap, e->p.max_context + 1); /* the rest on demand (kvrt_eseq_reserve) */
    for (int32_t i = 0; i < rp->n; i++) {
        kvrt_eseq *s = &r->seqs[i];
        s->req = r;
        s->index = i;
        s->bm_seq = -1;
        s->cap = cap;
        s->room = room;
        s->tokens = kvrt_calloc(a, (size_t)room, sizeof(int32_t));
        s->logprobs = rp->logprobs ? kvrt_calloc(a, (size_t)room, sizeof(float)) : NULL;
        s->text_cap = 64;
        s->text = kvrt_calloc(a, s->text_cap, 1);
        if (!s->tokens || (rp->logprobs && !s->logprobs) || !s->text || kvrt_engine_sampler_init(e, s) != KVRT_OK) {
            request_free(e, r);
            return NULL;
        }
        memcpy(s->tokens, rp->prompt, (size_t)rp->n_prompt * sizeof(int32_t));
        s->len = rp->n_prompt;
        s->failed_len = -1;
        /* Samples 1..n-1 are forked from sample 0 once its prompt is computed. */
        s->state = i == 0 ? KVRT_SEQ_WAITING : KVRT_SEQ_FINISHED;
    }
    r->n_live = rp->n;
    r->t.first_scheduled = r->t.first_token = r->t.finished = -1.0;
    return r;
}

/* A text prompt: tokenized with the model's tokenizer, then submitted as ids. */
static kvrt_status submit_text(kvrt_engine *e, const kvrt_request_params *rp, int64_t *request_id)
{
    if (!e->runner.iface->tokenize)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "text prompts need a model with a tokenizer");
    size_t len = strlen(rp->prompt_text);
    /* How many ids the text needs, asked first: a byte may need several (a
     * space in a vocabulary without U+2581 is three byte pieces). */
    int32_t n = 0;
    kvrt_error keep = e->err;
    kvrt_status st = e->runner.iface->tokenize(e->runner.self, rp->prompt_text, len, rp->add_bos, NULL, 0, &n,
                                             &e->err);
    if (st != KVRT_OK && !(st == KVRT_ERR_INVALID_ARGUMENT && n > 0))
        return st;
    e->err = keep; /* "no room" was the question, not a failure */
    int32_t cap = KVRT_MAX(n, 1);
    int32_t *ids = kvrt_calloc(e->alloc, (size_t)cap, sizeof(int32_t));
    if (!ids)
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "prompt of %zu bytes (%d tokens)", len, (int)n);
    st = e->runner.iface->tokenize(e->runner.self, rp->prompt_text, len, rp->add_bos, ids, cap, &n, &e->err);
    if (st == KVRT_OK) {
        kvrt_request_params q = *rp;
        q.prompt = ids;
        q.n_prompt = n;
        q.prompt_text = NULL;
        st = kvrt_engine_submit(e, &q, request_id);
    }
    kvrt_free(e->alloc, ids);
    return st;
}

/* A conversation: rendered in the chat template and tokenized, then submitted as ids. */
static kvrt_status submit_chat(kvrt_engine *e, const kvrt_request_params *rp, int64_t *request_id)
{
    if (!e->runner.iface->chat_tokenize)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "chat requests need a model with a tokenizer");
    if (rp->n_messages < 1)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "a chat request needs at least one message, not %d",
                         (int)rp->n_messages);
    int32_t n = 0;
    kvrt_status st = e->runner.iface->chat_tokenize(e->runner.self, rp->chat_template, rp->messages, rp->n_messages,
                                                  NULL, 0, &n, &e->err);
    if (st != KVRT_OK && st != KVRT_ERR_INVALID_ARGUMENT)
        return st;
    if (st != KVRT_OK && n == 0)
        return st; /* a bad message, not a short buffer */
    int32_t *ids = kvrt_calloc(e->alloc, (size_t)KVRT_MAX(n, 1), sizeof(int32_t));
    if (!ids)
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "chat prompt of %d tokens", (int)n);
    st = e->runner.iface->chat_tokenize(e->runner.self, rp->chat_template, rp->messages, rp->n_messages, ids, n, &n,
                                      &e->err);
    if (st == KVRT_OK) {
        kvrt_request_params q = *rp;
        q.prompt = ids;
        q.n_prompt = n;
        q.messages = NULL;
        q.n_messages = 0;
        st = kvrt_engine_submit(e, &q, request_id);
    }
    kvrt_free(e->alloc, ids);
    return st;
}

kvrt_status kvrt_engine_submit(kvrt_engine *e, const kvrt_request_params *rp, int64_t *request_id)
{
    if (!e)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (!rp || !request_id)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_engine_submit: params and request_id required");
    *request_id = 0;
    if (!rp->prompt && rp->prompt_text)
        return submit_text(e, rp, request_id);
    if (!rp->prompt && rp->messages)
        return submit_chat(e, rp, request_id);
    kvrt_status st = check_request(e, rp);
    if (st != KVRT_OK) {
        if (st == KVRT_ERR_REQUEST_REJECTED)
            e->m.requests_rejected++;
        return st;
    }
    KVRT_TRY(grow_ptrs(e, (void ***)&e->reqs, e->n_reqs, &e->cap_reqs));
    /* Reserve room in the finished queue now so finishing never fails. */
    KVRT_TRY(grow_ptrs(e, (void ***)&e->finished_q, e->n_reqs, &e->cap_finished_q));
    kvrt_request *r = request_build(e, rp);
    if (!r)
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "request of %d tokens, n = %d", (int)rp->n_prompt,
                         (int)rp->n);
    int32_t live = e->n_seqs_live + rp->n;
    if ((st = kvrt_seq_list_reserve(e, &e->waiting, live)) != KVRT_OK ||
        (st = kvrt_seq_list_reserve(e, &e->running, live)) != KVRT_OK ||
        (st = kvrt_seq_list_reserve(e, &e->swapped, live)) != KVRT_OK) {
        request_free(e, r);
        return st;
    }
    e->n_seqs_live = live;
    r->id = e->next_id++;
    r->arrival_order = e->next_arrival++;
    r->t.arrival = kvrt_engine_now(e);
    kvrt_seq_list_insert(&e->waiting, &r->seqs[0], 0);
    e->reqs[e->n_reqs++] = r;
    e->m.requests_submitted++;
    *request_id = r->id;
    return KVRT_OK;
}

static void record_latencies(kvrt_engine *e, const kvrt_request *r)
{
    const kvrt_request_timing *t = &r->t;
    int32_t most = 0;
    for (int32_t i = 0; i < r->p.n; i++)
        most = KVRT_MAX(most, r->seqs[i].len - r->p.n_prompt);
    /* A failed push only loses one sample of a statistic: not worth failing a step. */
    (void)kvrt_series_push(&e->s_e2e, e->alloc, t->finished - t->arrival);
    if (t->first_scheduled >= 0)
        (void)kvrt_series_push(&e->s_queue, e->alloc, t->first_scheduled - t->arrival);
    if (t->first_token >= 0)
        (void)kvrt_series_push(&e->s_ttft, e->alloc, t->first_token - t->arrival);
    if (most > 1)
        (void)kvrt_series_push(&e->s_tpot, e->alloc, (t->finished - t->first_token) / (double)(most - 1));
}

static void request_maybe_done(kvrt_engine *e, kvrt_request *r)
{
    if (r->n_live > 0 || r->queued_finished)
        return;
    r->t.finished = kvrt_engine_now(e);
    int cancelled = 0;
    for (int32_t i = 0; i < r->p.n; i++)
        cancelled |= r->seqs[i].finish == KVRT_FINISH_CANCELLED;
    if (cancelled) {
        e->m.requests_cancelled++;
    } else {
        e->m.requests_finished++;
        record_latencies(e, r);
    }
    r->queued_finished = 1;
    e->finished_q[e->n_finished_q++] = r; /* room reserved at submit */
}

void kvrt_engine_finish_seq(kvrt_engine *e, kvrt_eseq *s, kvrt_finish_reason why, int32_t report_token)
{
    kvrt_request *r = s->req;
    if (s->state == KVRT_SEQ_WAITING)
        kvrt_seq_list_remove(&e->waiting, s);
    else if (s->state == KVRT_SEQ_RUNNING)
        kvrt_seq_list_remove(&e->running, s);
    else if (s->state == KVRT_SEQ_SWAPPED)
        kvrt_seq_list_remove(&e->swapped, s);
    if (s->bm_seq >= 0)
        (void)kvrt_bm_seq_free(e->bm, s->bm_seq); /* cannot fail for a live id */
    s->bm_seq = -1;
    s->state = KVRT_SEQ_FINISHED;
    s->finish = why;
    s->sched_tokens = 0;
    r->n_live--;
    if (r->p.on_token && report_token)
        r->p.on_token(r->p.user, r->id, s->index,
                      why == KVRT_FINISH_CANCELLED || why == KVRT_FINISH_ERROR ? -1 : s->tokens[s->len - 1], why);
    kvrt_engine_text_flush(e, s, why);
    request_maybe_done(e, r);
}

kvrt_status kvrt_engine_cancel(kvrt_engine *e, int64_t request_id)
{
    if (!e)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_request *r = find_request(e, request_id);
    if (!r)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "no request %lld", (long long)request_id);
    if (r->n_live == 0)
        return KVRT_OK;
    /* Samples not forked yet will never be: they finish with the request. */
    if (!r->forked) {
        for (int32_t i = 1; i < r->p.n; i++) {
            r->seqs[i].finish = KVRT_FINISH_CANCELLED;
            if (r->p.on_token)
                r->p.on_token(r->p.user, r->id, i, -1, KVRT_FINISH_CANCELLED);
            if (r->p.on_text)
                r->p.on_text(r->p.user, r->id, i, "", 0, KVRT_FINISH_CANCELLED);
        }
        r->n_live = 1;
    }
    for (int32_t i = 0; i < r->p.n; i++)
        if (r->seqs[i].finish == KVRT_FINISH_NONE)
            kvrt_engine_finish_seq(e, &r->seqs[i], KVRT_FINISH_CANCELLED, 1);
    return KVRT_OK;
}

int32_t kvrt_engine_has_work(const kvrt_engine *e)
{
    return e && (e->waiting.n > 0 || e->running.n > 0 || e->swapped.n > 0);
}

/* Room for n tokens (and their logprobs) in s, doubling up to its cap. */
kvrt_status kvrt_eseq_reserve(kvrt_engine *e, kvrt_eseq *s, int32_t n)
{
    if (n <= s->room)
        return KVRT_OK;
    int32_t room = (int32_t)KVRT_MIN((int64_t)s->cap, KVRT_MAX((int64_t)n, 2 * (int64_t)s->room));
    if (n > room || !kvrt_grow_array(e->alloc, (void **)&s->tokens, (size_t)s->len, (size_t)room, sizeof(int32_t)) ||
        (s->logprobs &&
         !kvrt_grow_array(e->alloc, (void **)&s->logprobs, (size_t)s->len, (size_t)room, sizeof(float))))
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "room for %d tokens of a sample", (int)n);
    s->room = room;
    return KVRT_OK;
}

static void fill_output(const kvrt_request *r, kvrt_request_output *out)
{
    for (int32_t i = 0; i < r->p.n; i++) {
        const kvrt_eseq *s = &r->seqs[i];
        int32_t gen = s->len - r->p.n_prompt;
        r->outs[i].tokens = s->tokens + r->p.n_prompt;
        r->outs[i].n_tokens = gen;
        r->outs[i].finish_reason = s->finish;
        r->outs[i].logprobs = s->logprobs ? s->logprobs + r->p.n_prompt : NULL;
        r->outs[i].text = s->text;
        r->outs[i].text_len = s->text_len;
        r->outs[i].error = s->error;
    }
    memset(out, 0, sizeof(*out));
    out->request_id = r->id;
    out->finished = r->n_live == 0;
    out->n_samples = r->p.n;
    out->samples = r->outs;
    out->n_prompt = r->p.n_prompt;
    out->n_cached_prompt = r->n_cached_prompt;
    out->n_preemptions = r->n_preemptions;
    out->timing = r->t;
}

kvrt_status kvrt_engine_get_output(kvrt_engine *e, int64_t request_id, kvrt_request_output *out)
{
    if (!e)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_request *r = find_request(e, request_id);
    if (!r || !out)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "no request %lld (or out NULL)",
                         (long long)request_id);
    fill_output(r, out);
    return KVRT_OK;
}

kvrt_status kvrt_engine_next_finished(kvrt_engine *e, kvrt_request_output *out, int32_t *found)
{
    if (!e)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (!out || !found)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_engine_next_finished: out and found required");
    *found = 0;
    if (e->n_finished_q == 0)
        return KVRT_OK;
    kvrt_request *r = e->finished_q[0];
    memmove(e->finished_q, e->finished_q + 1, (size_t)(e->n_finished_q - 1) * sizeof(*e->finished_q));
    e->n_finished_q--;
    fill_output(r, out);
    *found = 1;
    return KVRT_OK;
}

kvrt_status kvrt_engine_release(kvrt_engine *e, int64_t request_id)
{
    if (!e)
        return KVRT_ERR_INVALID_ARGUMENT;
    int32_t at = -1;
    for (int32_t i = 0; i < e->n_reqs && at < 0; i++)
        if (e->reqs[i]->id == request_id)
            at = i;
    if (at < 0)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "no request %lld", (long long)request_id);
    kvrt_request *r = e->reqs[at];
    if (r->n_live > 0)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "request %lld is not finished: cancel it first",
                         (long long)request_id);
    for (int32_t i = 0; i < e->n_finished_q; i++)
        if (e->finished_q[i] == r) {
            memmove(e->finished_q + i, e->finished_q + i + 1,
                    (size_t)(e->n_finished_q - i - 1) * sizeof(*e->finished_q));
            e->n_finished_q--;
            break;
        }
    memmove(e->reqs + at, e->reqs + at + 1, (size_t)(e->n_reqs - at - 1) * sizeof(*e->reqs));
    e->n_reqs--;
    e->n_seqs_live -= r->p.n;
    request_free(e, r);
    return KVRT_OK;
}

/* ---- metrics -------------------------------------------------------------------- */

kvrt_status kvrt_engine_get_metrics(kvrt_engine *e, kvrt_engine_metrics *out)
{
    if (!e)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (!out)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_engine_get_metrics: out is NULL");
    kvrt_bm_stats bs;
    KVRT_TRY(kvrt_bm_get_stats(e->bm, &bs));
    kvrt_engine_metrics m = e->m;
    m.blocks_total = bs.blocks_total;
    m.blocks_used = bs.blocks_used;
    m.blocks_free = bs.blocks_free;
    m.blocks_cached = bs.blocks_cached;
    m.block_size = e->p.block_size;
    m.kv_bytes = e->runner.kv_bytes;
    m.host_blocks_total = bs.host_blocks_total;
    m.host_blocks_used = bs.host_blocks_used;
    m.evictions = bs.evictions;
    m.cow_copies = bs.cow_copies;
    m.blocks_swapped_out = bs.blocks_swapped_out;
    m.blocks_swapped_in = bs.blocks_swapped_in;
    m.blocks_offloaded = bs.blocks_offloaded;
    if (e->runner.iface->tier_times)
        e->runner.iface->tier_times(e->runner.self, &m.attn_device_s, &m.attn_host_s);
    kvrt_engine_disk_metrics(e, &m);
    m.kv_utilization_mean = m.steps ? e->kv_util_sum / (double)m.steps : 0.0;
    m.kv_utilization_contiguous_mean = m.steps ? e->kv_util_contig_sum / (double)m.steps : 0.0;
    m.prefix_hit_rate = m.prefix_query_tokens ? (double)m.prefix_hit_tokens / (double)m.prefix_query_tokens : 0.0;

    const kvrt_series *series[] = {&e->s_ttft, &e->s_tpot, &e->s_e2e, &e->s_queue,
                                   &e->s_step_tokens, &e->s_step_seqs, &e->s_step_prefill, &e->s_step_decode,
                                   &e->s_step_time};
    kvrt_summary *dst[] = {&m.ttft, &m.tpot, &m.e2e, &m.queue,
                           &m.step_tokens, &m.step_seqs, &m.step_prefill_tokens, &m.step_decode_tokens,
                           &m.step_time};
    int64_t most = 1;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(series); i++)
        most = KVRT_MAX(most, series[i]->n);
    double *scratch = kvrt_calloc(e->alloc, (size_t)most, sizeof(double));
    if (!scratch)
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "metrics scratch of %lld", (long long)most);
    for (size_t i = 0; i < KVRT_ARRAY_LEN(series); i++)
        *dst[i] = kvrt_series_summary(series[i], scratch);
    kvrt_free(e->alloc, scratch);
    *out = m;
    return KVRT_OK;
}

kvrt_status kvrt_engine_metrics_json(kvrt_engine *e, char *buf, size_t capacity, size_t *len)
{
    if (!e)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (!buf && capacity > 0)
        return kvrt_fail(&e->err, KVRT_ERR_INVALID_ARGUMENT, "metrics JSON: buf NULL with capacity %zu", capacity);
    kvrt_engine_metrics m;
    KVRT_TRY(kvrt_engine_get_metrics(e, &m));
    return kvrt_metrics_to_json(&m, buf, capacity, len, &e->err);
}
