/* Running one engine step: the batch of what the scheduler placed (decodes
 * first), one forward pass through the runner, then sampling, stop rules and
 * the step's metrics. Decisions about what runs are scheduler.c's. */
#include "engine/engine_internal.h"

#include <string.h>

static kvrt_status bm_err(kvrt_engine *e, kvrt_status st)
{
    return kvrt_fail(&e->err, st, "block manager: %s", kvrt_block_manager_message(e->bm));
}

/* Lays out the batch arrays: decodes first, then prefill chunks, each in scheduling order. */
static kvrt_status build_batch(kvrt_engine *e, kvrt_batch *b, kvrt_step_info *info)
{
    int32_t ns = 0, nt = 0, nl = 0;
    for (int pass = 1; pass >= 0; pass--)
        for (int32_t i = 0; i < e->n_sched; i++)
            if (e->sched[i]->sched_decode == pass)
                e->b_order[ns++] = e->sched[i];
    for (int32_t k = 0; k < ns; k++) {
        kvrt_eseq *s = e->b_order[k];
        int32_t n = s->sched_tokens, start = s->num_computed;
        e->b_qsl[k] = nt;
        for (int32_t j = 0; j < n; j++) {
            e->b_tokens[nt + j] = s->tokens[start + j];
            e->b_pos[nt + j] = kvrt_eseq_pos(e, s, start + j); /* context shift: dropped tokens skipped */
            e->b_slots[nt + j] = e->slot_scratch[s->sched_slot_off + j];
        }
        nt += n;
        e->b_seq_lens[k] = kvrt_eseq_pos(e, s, start + n - 1) + 1; /* n >= 1; start + n may end the sinks */
        e->b_bm_seqs[k] = s->bm_seq;
        if (start + n == s->len)
            e->b_logits_idx[nl++] = nt - 1;
        if (s->sched_decode) {
            info->num_decode_seqs++;
            info->decode_tokens += n;
        } else {
            info->prefill_tokens += n;
        }
    }
    e->b_qsl[ns] = nt;
    kvrt_status st = kvrt_bm_block_tables(e->bm, e->b_bm_seqs, ns, e->b_tables, e->max_blocks_per_seq);
    if (st != KVRT_OK)
        return bm_err(e, st);
    /* offload: the leading entries of a sequence may be host slots */
    bool any_host = false;
    for (int32_t k = 0; k < ns; k++) {
        kvrt_bm_seq_info si;
        st = kvrt_bm_get_seq_info(e->bm, e->b_bm_seqs[k], &si);
        if (st != KVRT_OK)
            return bm_err(e, st);
        e->b_n_host[k] = si.num_host;
        any_host = any_host || si.num_host > 0;
    }
    memset(b, 0, sizeof(*b));
    b->num_seqs = ns;
    b->num_decode_seqs = info->num_decode_seqs;
    b->num_tokens = nt;
    b->tokens = e->b_tokens;
    b->positions = e->b_pos;
    b->slot_mapping = e->b_slots;
    b->query_start_loc = e->b_qsl;
    b->seq_lens = e->b_seq_lens;
    b->block_tables = e->b_tables;
    b->max_blocks_per_seq = e->max_blocks_per_seq;
    b->logits_indices = e->b_logits_idx;
    b->num_logits = nl;
    b->n_host = any_host ? e->b_n_host : NULL;
    info->num_seqs = ns;
    info->num_tokens = nt;
    return KVRT_OK;
}

static void record_kv_utilization(kvrt_engine *e)
{
    int64_t stored = 0, capacity = 0, seqs = 0;
    for (int32_t i = 0; i < e->running.n; i++) {
        kvrt_bm_seq_info info;
        if (kvrt_bm_get_seq_info(e->bm, e->running.v[i]->bm_seq, &info) != KVRT_OK)
            continue;
        stored += info.stored_tokens;
        capacity += (int64_t)info.num_blocks * e->p.block_size;
        seqs++;
    }
    double u = capacity ? (double)stored / (double)capacity : 0.0;
    e->m.kv_utilization_last = u;
    e->kv_util_sum += u;
    if (seqs > 0)
        e->kv_util_contig_sum += (double)stored / ((double)seqs * (double)e->p.max_context);
}

/* Undoes the forks of samples 1..n-1 of r (a later one failed). */
static void unfork_samples(kvrt_engine *e, kvrt_request *r, int32_t n)
{
    for (int32_t k = 1; k < n; k++) {
        kvrt_seq_list_remove(&e->running, &r->seqs[k]);
        (void)kvrt_bm_seq_free(e->bm, r->seqs[k].bm_seq);
        r->seqs[k].bm_seq = -1;
        r->seqs[k].state = KVRT_SEQ_FINISHED;
    }
}

/* Creates samples 1..n-1 of a request from sample 0, whose prompt is now computed. */
static kvrt_status fork_samples(kvrt_engine *e, kvrt_eseq *parent)
{
    kvrt_request *r = parent->req;
    for (int32_t i = 1; i < r->p.n; i++) {
        kvrt_eseq *c = &r->seqs[i];
        kvrt_status st = kvrt_eseq_reserve(e, c, parent->len);
        if (st != KVRT_OK) {
            unfork_samples(e, r, i);
            return st;
        }
        st = kvrt_bm_seq_fork(e->bm, parent->bm_seq, &c->bm_seq);
        if (st != KVRT_OK) {
            unfork_samples(e, r, i);
            c->bm_seq = -1;
            return bm_err(e, st);
        }
        memcpy(c->tokens, parent->tokens, (size_t)parent->len * sizeof(int32_t));
        c->len = parent->len;
        c->num_computed = parent->num_computed;
        c->shift = parent->shift;
        c->admit_stamp = parent->admit_stamp;
        c->state = KVRT_SEQ_RUNNING;
        c->sched_tokens = 0;
        kvrt_seq_list_insert(&e->running, c, 1);
    }
    r->forked = 1;
    return KVRT_OK;
}

static kvrt_finish_reason stop_reason(const kvrt_engine *e, const kvrt_eseq *s, int32_t token)
{
    const kvrt_request_params *p = &s->req->p;
    if (!p->ignore_eos && e->p.eos_id >= 0 && token == e->p.eos_id)
        return KVRT_FINISH_EOS;
    if (!p->ignore_eos && e->runner.iface->is_eog && e->runner.iface->is_eog(e->runner.self, token))
        return KVRT_FINISH_EOS;
    for (int32_t i = 0; i < p->n_stop_tokens; i++)
        if (p->stop_tokens[i] == token)
            return KVRT_FINISH_STOP_TOKEN;
    if (s->len >= s->cap)
        return KVRT_FINISH_LENGTH;
    return KVRT_FINISH_NONE;
}

/* A sample that failed to emit its next token (or, for a parent, to fork):
 * computed again the first time; at the same token again the error will
 * repeat (NaN logits, a token without text), so it finishes with it instead
 * of looping forever. */
static void emit_failed(kvrt_engine *e, kvrt_eseq *s, kvrt_status st, int32_t *finished)
{
    if (s->failed_len != s->len) {
        s->failed_len = s->len;
        kvrt_sched_requeue(e, s);
        return;
    }
    kvrt_request *r = s->req;
    /* a parent that cannot fork takes its unforked samples with it */
    int32_t last = s->index == 0 && r->p.n > 1 && !r->forked ? r->p.n - 1 : s->index;
    for (int32_t i = s->index; i <= last; i++) {
        kvrt_eseq *t = &r->seqs[i];
        if (t->finish != KVRT_FINISH_NONE)
            continue;
        t->error = st;
        kvrt_engine_finish_seq(e, t, KVRT_FINISH_ERROR, 1);
    }
    *finished += r->n_live == 0;
}

/* Samples the next token of s from a row of logits and applies stop rules. */
static kvrt_status emit(kvrt_engine *e, kvrt_eseq *s, const float *row, double now, int32_t *finished)
{
    int32_t tok = 0;
    KVRT_TRY(kvrt_eseq_reserve(e, s, s->len + 1));
    KVRT_TRY(kvrt_engine_sample(e, s, row, &tok));
    s->tokens[s->len++] = tok;
    e->m.generated_tokens++;
    kvrt_request *r = s->req;
    if (r->t.first_token < 0)
        r->t.first_token = now;
    kvrt_finish_reason why = stop_reason(e, s, tok);
    kvrt_status st = kvrt_engine_text_step(e, s, &why);
    if (st != KVRT_OK) {
        s->len--; /* not kept: the token is sampled again after the recomputation */
        e->m.generated_tokens--;
        return st;
    }
    if (r->p.on_token)
        r->p.on_token(r->p.user, r->id, s->index, tok, why);
    if (why != KVRT_FINISH_NONE) {
        kvrt_engine_finish_seq(e, s, why, 0);
        *finished += r->n_live == 0;
    }
    return KVRT_OK;
}

/* Advances every sequence of the batch and samples where a row came back.
 * A failure (fork out of host memory, unusable logits) sends that sequence
 * back to be computed again and is reported after the others are done. */
static kvrt_status consume_logits(kvrt_engine *e, const kvrt_batch *b, kvrt_step_info *info)
{
    double now = kvrt_engine_now(e);
    kvrt_status first = KVRT_OK;
    int32_t row = 0;
    for (int32_t k = 0; k < b->num_seqs; k++) {
        kvrt_eseq *s = e->b_order[k];
        int32_t n = s->sched_tokens;
        s->sched_tokens = 0;
        s->num_computed += n;
        kvrt_eseq_skip_dropped(e, s);
        if (e->disk && s->shift == 0) /* a shifted sequence's blocks are not its prompt's */
            kvrt_engine_disk_after_step(e, s);
        /* a sliding window: blocks no later query can see go back to the pool */
        if (e->runner.window > 0 && s->bm_seq >= 0)
            (void)kvrt_bm_release_before(e->bm, s->bm_seq,
                                         KVRT_MAX(0, kvrt_eseq_pos(e, s, s->num_computed) - e->runner.window + 1), 0,
                                         NULL);
        if (s->num_computed != s->len)
            continue;
        const float *logits = e->logits + (size_t)row++ * (size_t)e->runner.n_vocab;
        kvrt_request *r = s->req;
        int32_t fork_now = r->p.n > 1 && !r->forked;
        kvrt_status st = fork_now ? fork_samples(e, s) : KVRT_OK;
        if (st != KVRT_OK) {
            emit_failed(e, s, st, &info->num_finished);
            first = first == KVRT_OK ? st : first;
            continue;
        }
        for (int32_t i = fork_now ? 0 : s->index; i <= (fork_now ? r->p.n - 1 : s->index); i++) {
            kvrt_eseq *t = &r->seqs[i];
            st = emit(e, t, logits, now, &info->num_finished);
            if (st != KVRT_OK) {
                emit_failed(e, t, st, &info->num_finished);
                first = first == KVRT_OK ? st : first;
            }
        }
    }
    return first;
}

/* A step is one forward pass, so its time cannot be measured per part: a
 * mixed step's time is split between prefill and decode by their token
 * counts (pure steps are counted whole). */
static void record_step_time(kvrt_engine *e, const kvrt_step_info *info, double seconds)
{
    (void)kvrt_series_push(&e->s_step_time, e->alloc, seconds);
    if (info->num_tokens > 0) {
        double prefill_share = (double)info->prefill_tokens / (double)info->num_tokens;
        e->m.prefill_time_s += seconds * prefill_share;
        e->m.decode_time_s += seconds * (1.0 - prefill_share);
    }
}

kvrt_status kvrt_step_run(kvrt_engine *e, kvrt_step_info *info)
{
    kvrt_batch b;
    double t0 = kvrt_engine_now(e);
    kvrt_status st = build_batch(e, &b, info);
    if (st == KVRT_OK)
        st = e->runner.iface->forward(e->runner.self, &b, e->logits, &e->err);
    if (st != KVRT_OK) {
        kvrt_sched_recover(e);
        return st;
    }
    record_step_time(e, info, kvrt_engine_now(e) - t0);
    e->m.steps++;
    e->m.prefill_tokens += info->prefill_tokens;
    e->m.decode_tokens += info->decode_tokens;
    const kvrt_allocator *a = e->alloc;
    (void)kvrt_series_push(&e->s_step_tokens, a, info->num_tokens);
    (void)kvrt_series_push(&e->s_step_seqs, a, info->num_seqs);
    (void)kvrt_series_push(&e->s_step_prefill, a, info->prefill_tokens);
    (void)kvrt_series_push(&e->s_step_decode, a, info->decode_tokens);
    record_kv_utilization(e);
    return consume_logits(e, &b, info);
}

kvrt_status kvrt_engine_step(kvrt_engine *e, kvrt_step_info *info)
{
    if (!e)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_step_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof(*info));
    if (!kvrt_engine_has_work(e))
        return KVRT_OK;
    kvrt_status st = kvrt_sched_schedule(e, info);
    if (st != KVRT_OK) {
        kvrt_sched_recover(e);
        return st;
    }
    if (e->n_sched == 0)
        return KVRT_OK;
    return kvrt_step_run(e, info);
}
