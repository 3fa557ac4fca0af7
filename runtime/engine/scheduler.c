/* The scheduler decides a step's work: running decodes first, then chunks of
 * partially computed prompts, then swapped-out and waiting sequences, under a
 * token budget and a sequence cap; it preempts the most recently admitted
 * sequences when blocks run out. step.c runs what it placed. */
#include "engine/engine_internal.h"

#include <string.h>

/* ---- ordered lists ---------------------------------------------------------------- */

static int seq_before(const kvrt_eseq *a, const kvrt_eseq *b, int by_admission)
{
    uint64_t ka = by_admission ? a->admit_stamp : a->req->arrival_order;
    uint64_t kb = by_admission ? b->admit_stamp : b->req->arrival_order;
    if (ka != kb)
        return ka < kb;
    return a->index < b->index;
}

kvrt_status kvrt_seq_list_reserve(kvrt_engine *e, kvrt_seq_list *l, int32_t cap)
{
    if (cap <= l->cap)
        return KVRT_OK;
    cap = KVRT_MAX(cap, 2 * l->cap);
    if (!kvrt_grow_array(e->alloc, (void **)&l->v, (size_t)l->n, (size_t)cap, sizeof(*l->v)))
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "sequence list of %d", (int)cap);
    l->cap = cap;
    return KVRT_OK;
}

/* Never fails: submit reserved room for every live sequence in every list. */
void kvrt_seq_list_insert(kvrt_seq_list *l, kvrt_eseq *s, int by_admission)
{
    int32_t at = l->n;
    while (at > 0 && seq_before(s, l->v[at - 1], by_admission))
        at--;
    memmove(l->v + at + 1, l->v + at, (size_t)(l->n - at) * sizeof(*l->v));
    l->v[at] = s;
    l->n++;
}

void kvrt_seq_list_remove(kvrt_seq_list *l, const kvrt_eseq *s)
{
    for (int32_t i = 0; i < l->n; i++)
        if (l->v[i] == s) {
            memmove(l->v + i, l->v + i + 1, (size_t)(l->n - i - 1) * sizeof(*l->v));
            l->n--;
            return;
        }
}

/* ---- preemption ------------------------------------------------------------------- */

static int32_t free_blocks(kvrt_engine *e)
{
    kvrt_bm_stats st;
    (void)kvrt_bm_get_stats(e->bm, &st);
    return st.blocks_free;
}

static kvrt_status bm_err(kvrt_engine *e, kvrt_status st)
{
    return kvrt_fail(&e->err, st, "block manager: %s", kvrt_block_manager_message(e->bm));
}

/* ---- context shift ---------------------------------------------------------------- */

/* Blocks a shift drops when `kv` positions are computed: half of the full
 * blocks after the sinks, at least one (the session's rule, so both give
 * the same tokens). create checked that one is always there. */
static int32_t shift_drop(const kvrt_engine *e, int32_t kv)
{
    int32_t droppable = kv / e->p.block_size - e->sink_tok / e->p.block_size;
    return KVRT_MAX(1, droppable / 2);
}

static void count_shift(kvrt_engine *e, kvrt_eseq *s, int32_t drop)
{
    s->shift += drop * e->p.block_size;
    e->m.context_shifts++;
    e->m.shift_dropped_tokens += (int64_t)drop * e->p.block_size;
}

/* A sequence to be computed again whose tokens no longer fit the context
 * shifts before it is computed: nothing is cached, so only its tokens move. */
static void shift_waiting(kvrt_engine *e, kvrt_eseq *s)
{
    while (e->p.context_shift && s->len - s->shift > e->p.max_context)
        count_shift(e, s, shift_drop(e, s->len - 1 - s->shift));
}

/* Drops whatever K/V a sequence holds (device or host) and queues it to be
 * computed again: the way back from any failure, and recompute preemption. */
void kvrt_sched_requeue(kvrt_engine *e, kvrt_eseq *s)
{
    if (s->state == KVRT_SEQ_RUNNING)
        kvrt_seq_list_remove(&e->running, s);
    else if (s->state == KVRT_SEQ_SWAPPED)
        kvrt_seq_list_remove(&e->swapped, s);
    else if (s->state == KVRT_SEQ_WAITING)
        kvrt_seq_list_remove(&e->waiting, s);
    if (s->bm_seq >= 0)
        (void)kvrt_bm_seq_free(e->bm, s->bm_seq); /* cannot fail for a live id */
    s->bm_seq = -1;
    s->num_computed = 0;
    s->sched_tokens = 0;
    s->state = KVRT_SEQ_WAITING;
    shift_waiting(e, s);
    kvrt_seq_list_insert(&e->waiting, s, 0);
}

/* Moves a sequence's blocks to the host tier; KVRT_ERR_OUT_OF_BLOCKS when the
 * tier is full (nothing changed). */
static kvrt_status swap_out(kvrt_engine *e, kvrt_eseq *s)
{
    int32_t n = 0;
    kvrt_status st = kvrt_bm_swap_out(e->bm, s->bm_seq, e->pairs, e->max_blocks_per_seq, &n);
    if (st == KVRT_ERR_OUT_OF_BLOCKS)
        return st;
    if (st != KVRT_OK)
        return bm_err(e, st);
    /* The device blocks may be reused by the next allocation: copy them now. */
    for (int32_t i = 0; i < n; i++) {
        st = e->runner.iface->read_block(e->runner.self, e->pairs[i][0],
                                       e->host_tier + (size_t)e->pairs[i][1] * e->runner.block_bytes, &e->err);
        if (st != KVRT_OK) {
            kvrt_sched_requeue(e, s); /* its K/V did not reach the host */
            return st;
        }
    }
    return KVRT_OK;
}

/* Offload policy: moves the oldest computed blocks of running sequences to
 * the host tier, the sequence whose blocks free the most device blocks
 * first, until `want` device blocks are free or nothing more can move. A
 * sequence keeps running with its host blocks. Blocks shared with other
 * sequences (prefix cache, forked samples) free nothing when they move (the
 * others keep them): they move only as a host copy on the way to blocks of
 * the sequence's own (kvrt_bm_offload_plan), and a sequence whose movable
 * blocks are all shared is left alone. One that will still fork keeps its
 * blocks (host slots have one owner; kvrt_bm_seq_fork refuses them). */
static kvrt_status offload_blocks(kvrt_engine *e, int32_t want)
{
    while (free_blocks(e) < want) {
        kvrt_bm_stats bs;
        (void)kvrt_bm_get_stats(e->bm, &bs);
        int32_t host_free = bs.host_blocks_total - bs.host_blocks_used;
        kvrt_eseq *best = NULL;
        int32_t best_gain = 0, best_end = 0;
        for (int32_t i = 0; i < e->running.n && host_free > 0; i++) {
            kvrt_eseq *v = e->running.v[i];
            if (v->req->p.n > 1 && !v->req->forked)
                continue;
            int32_t end = kvrt_eseq_pos(e, v, v->num_computed) / e->p.block_size; /* full blocks written */
            int32_t mv = 0, gain = 0;
            if (kvrt_bm_offload_plan(e->bm, v->bm_seq, end, INT32_MAX, host_free, &mv, &gain) == KVRT_OK &&
                gain > best_gain) {
                best = v;
                best_gain = gain;
                best_end = end;
            }
        }
        if (!best)
            return KVRT_OK;
        int32_t n = 0, k = 0, gain = 0;
        kvrt_status st = kvrt_bm_offload_plan(e->bm, best->bm_seq, best_end, want - free_blocks(e), host_free, &k,
                                              &gain);
        if (st == KVRT_OK)
            st = kvrt_bm_offload(e->bm, best->bm_seq, best_end, k, e->pairs, e->max_blocks_per_seq, &n);
        if (st != KVRT_OK)
            return bm_err(e, st);
        st = e->runner.iface->offload(e->runner.self, (const int32_t(*)[2])e->pairs, n, &e->err);
        if (st != KVRT_OK) {
            kvrt_sched_requeue(e, best); /* its K/V did not all reach the host */
            return st;
        }
        e->m.offload_bytes += (uint64_t)n * e->runner.block_bytes;
    }
    return KVRT_OK;
}

static kvrt_status preempt(kvrt_engine *e, kvrt_eseq *s)
{
    s->req->n_preemptions++;
    e->preempted_now++;
    if (e->p.preempt_mode == KVRT_PREEMPT_SWAP) {
        kvrt_status st = swap_out(e, s);
        if (st == KVRT_OK) {
            kvrt_seq_list_remove(&e->running, s);
            s->state = KVRT_SEQ_SWAPPED;
            e->m.preemptions_swap++;
            kvrt_seq_list_insert(&e->swapped, s, 0);
            return KVRT_OK;
        }
        if (st != KVRT_ERR_OUT_OF_BLOCKS)
            return st;
        /* Host tier full: recompute instead. */
    }
    kvrt_sched_requeue(e, s);
    e->m.preemptions_recompute++;
    return KVRT_OK;
}

/* The most recently admitted running sequence admitted after `s` that is not
 * in this step's batch; NULL when there is none. */
static kvrt_eseq *pick_victim(kvrt_engine *e, const kvrt_eseq *s)
{
    for (int32_t i = e->running.n - 1; i >= 0; i--) {
        kvrt_eseq *v = e->running.v[i];
        if (v == s || !seq_before(s, v, 1))
            return NULL;
        if (v->sched_tokens == 0)
            return v;
    }
    return NULL;
}

/* Context shift of a running sequence whose next token has no position
 * left (the session's shift: same blocks dropped, same kernel). Its kept
 * shared blocks are copied first (kvrt_bm_shift); when that needs blocks
 * the pool lacks, younger sequences are preempted, or this one. A sequence
 * with blocks in the host tier is recomputed over its kept tokens instead
 * (host slots are never turned). *gone = 1 when it left the running list. */
static kvrt_status shift_running(kvrt_engine *e, kvrt_eseq *s, int *gone)
{
    *gone = 0;
    int32_t bs = e->p.block_size, drop = shift_drop(e, kvrt_eseq_pos(e, s, s->num_computed));
    kvrt_bm_seq_info info;
    kvrt_status st = kvrt_bm_get_seq_info(e->bm, s->bm_seq, &info);
    if (st != KVRT_OK)
        return bm_err(e, st);
    if (info.num_host > 0) {
        kvrt_sched_requeue(e, s); /* shifts its tokens (shift_waiting) */
        *gone = 1;
        return KVRT_OK;
    }
    int32_t n_turn = 0, n_copies = 0;
    for (;;) {
        st = kvrt_bm_shift(e->bm, s->bm_seq, e->sink_tok / bs, drop, e->shift_ids, &n_turn, e->pairs, &n_copies);
        if (st == KVRT_OK)
            break;
        if (st != KVRT_ERR_OUT_OF_BLOCKS)
            return bm_err(e, st);
        kvrt_eseq *victim = pick_victim(e, s);
        KVRT_TRY(preempt(e, victim ? victim : s));
        if (!victim) {
            *gone = 1;
            return KVRT_OK;
        }
    }
    count_shift(e, s, drop);
    if (n_copies > 0)
        st = e->runner.iface->copy_blocks(e->runner.self, (const int32_t(*)[2])e->pairs, n_copies, &e->err);
    if (st == KVRT_OK && n_turn > 0)
        st = e->runner.iface->rope_shift(e->runner.self, e->shift_ids, n_turn, -drop * bs, &e->err);
    if (st != KVRT_OK) {
        kvrt_sched_requeue(e, s); /* its cache is half turned: computed again from its kept tokens */
        *gone = 1;
    }
    return st;
}

/* Before placing a decode: shifts the context when its next position is past it. */
static kvrt_status shift_if_full(kvrt_engine *e, kvrt_eseq *s, int *gone)
{
    *gone = 0;
    if (!e->p.context_shift || kvrt_eseq_pos(e, s, s->num_computed) < e->p.max_context)
        return KVRT_OK;
    return shift_running(e, s, gone);
}

/* ---- placing one sequence in the batch -------------------------------------------- */

static int32_t blocks_for(kvrt_engine *e, const kvrt_eseq *s, int32_t n, kvrt_status *st)
{
    int32_t need = 0;
    *st = kvrt_bm_blocks_needed(e->bm, s->bm_seq, n, &need);
    return need;
}

/* Appends the chunk to the block manager (copy-on-write applied at once) and
 * enters the sequence in the step. */
static kvrt_status place(kvrt_engine *e, kvrt_eseq *s, int32_t n, int32_t *budget)
{
    int32_t off = e->sched_tokens_total;
    kvrt_bm_append_result res;
    kvrt_status st = kvrt_bm_append(e->bm, s->bm_seq, s->tokens + s->num_computed, n, e->slot_scratch + off, &res);
    if (st != KVRT_OK)
        return bm_err(e, st);
    if (res.n_copies > 0) {
        st = e->runner.iface->copy_blocks(e->runner.self, (const int32_t(*)[2])res.copies, res.n_copies, &e->err);
        if (st != KVRT_OK) {
            kvrt_sched_requeue(e, s);
            return st;
        }
    }
    s->sched_tokens = n;
    s->sched_slot_off = off;
    s->sched_decode = s->len > s->req->p.n_prompt && s->num_computed == s->len - 1;
    e->sched[e->n_sched++] = s;
    e->sched_tokens_total += n;
    *budget -= n;
    if (s->req->t.first_scheduled < 0)
        s->req->t.first_scheduled = kvrt_engine_now(e);
    return KVRT_OK;
}

/* Fits up to n tokens of a resident sequence: preempts younger unscheduled
 * sequences when allowed, else shrinks the chunk. *fit receives what fits (0: none). */
static kvrt_status fit_tokens(kvrt_engine *e, kvrt_eseq *s, int32_t n, int may_preempt, int32_t *fit)
{
    kvrt_status st = KVRT_OK;
    for (;;) {
        int32_t need = blocks_for(e, s, n, &st);
        if (st != KVRT_OK)
            return bm_err(e, st);
        if (need <= free_blocks(e))
            break;
        if (may_preempt && e->p.preempt_mode == KVRT_PREEMPT_OFFLOAD) {
            KVRT_TRY(offload_blocks(e, need));
            if (need <= free_blocks(e))
                break;
        }
        kvrt_eseq *victim = may_preempt ? pick_victim(e, s) : NULL;
        if (!victim)
            break;
        KVRT_TRY(preempt(e, victim));
    }
    while (n > 0) {
        int32_t need = blocks_for(e, s, n, &st);
        if (st != KVRT_OK)
            return bm_err(e, st);
        if (need <= free_blocks(e))
            break;
        n--;
    }
    *fit = n;
    return KVRT_OK;
}

static int room(const kvrt_engine *e, int32_t budget)
{
    return budget > 0 && e->n_sched < e->p.max_seqs;
}

static int is_decode(const kvrt_eseq *s)
{
    return s->len > s->req->p.n_prompt && s->num_computed == s->len - 1;
}

/* Phase A: running sequences of one kind (decodes or partial prefills), in admission order. */
static kvrt_status schedule_running(kvrt_engine *e, int decodes, int32_t *budget)
{
    int32_t i = 0;
    while (i < e->running.n && room(e, *budget)) {
        kvrt_eseq *s = e->running.v[i];
        if (s->sched_tokens > 0 || is_decode(s) != decodes) {
            i++;
            continue;
        }
        int gone = 0;
        KVRT_TRY(shift_if_full(e, s, &gone));
        if (gone)
            continue; /* preempted: the list moved up */
        int32_t fit = 0;
        KVRT_TRY(fit_tokens(e, s, KVRT_MIN(kvrt_eseq_todo(e, s), *budget), 1, &fit));
        if (fit > 0) {
            KVRT_TRY(place(e, s, fit, budget));
            i++;
        } else if (decodes) {
            /* Nobody younger to take blocks from: step aside for the older ones. */
            KVRT_TRY(preempt(e, s));
        } else {
            i++;
        }
    }
    return KVRT_OK;
}

/* Phase B: swapped-out sequences come back in arrival order while they fit. */
static kvrt_status schedule_swapped(kvrt_engine *e, int32_t *budget)
{
    while (e->swapped.n > 0 && room(e, *budget)) {
        kvrt_eseq *s = e->swapped.v[0];
        kvrt_bm_seq_info info;
        if (kvrt_bm_get_seq_info(e->bm, s->bm_seq, &info) != KVRT_OK)
            return bm_err(e, KVRT_ERR_INTERNAL);
        int32_t n = KVRT_MIN(kvrt_eseq_todo(e, s), *budget);
        int32_t entries = (kvrt_eseq_pos(e, s, s->num_computed) + n + e->p.block_size - 1) / e->p.block_size;
        if (info.num_blocks + KVRT_MAX(0, entries - info.num_entries) > free_blocks(e))
            break;
        int32_t np = 0;
        kvrt_status st = kvrt_bm_swap_in(e->bm, s->bm_seq, e->pairs, e->max_blocks_per_seq, &np);
        if (st != KVRT_OK)
            return bm_err(e, st);
        for (int32_t k = 0; k < np; k++) {
            st = e->runner.iface->write_block(e->runner.self, e->pairs[k][1],
                                            e->host_tier + (size_t)e->pairs[k][0] * e->runner.block_bytes, &e->err);
            if (st != KVRT_OK) {
                kvrt_sched_requeue(e, s);
                return st;
            }
        }
        kvrt_seq_list_remove(&e->swapped, s);
        s->state = KVRT_SEQ_RUNNING;
        s->admit_stamp = e->next_admit++;
        kvrt_seq_list_insert(&e->running, s, 1);
        int gone = 0;
        KVRT_TRY(shift_if_full(e, s, &gone));
        if (gone)
            break; /* the pool is short: nothing more comes back this step */
        int32_t fit = 0;
        KVRT_TRY(fit_tokens(e, s, n, 0, &fit));
        if (fit > 0)
            KVRT_TRY(place(e, s, fit, budget));
    }
    return KVRT_OK;
}

/* The prefix cache's extra key: anything besides the tokens that changes a
 * block's bytes. The KV types do (a q4_0 block is not an f16 block; K q8_0
 * with V f16 is neither), so K's and V's are both part of the key even
 * though one engine holds one pair today: a cache shared or persisted
 * across types can never hand back the wrong bytes. Types are < 256. */
uint64_t kvrt_engine_prefix_extra_key(kvrt_dtype k_type, kvrt_dtype v_type)
{
    return 0x6b76747970650000ull ^ (uint64_t)k_type ^ ((uint64_t)v_type << 8); /* "kvtype" */
}

/* Admits the head of the waiting queue if its first chunk fits; *admitted = 0 otherwise. */
static kvrt_status admit_one(kvrt_engine *e, kvrt_eseq *s, int32_t *budget, int *admitted)
{
    *admitted = 0;
    kvrt_status st = kvrt_bm_seq_create(e->bm, kvrt_engine_prefix_extra_key(e->p.kv_type, e->p.kv_type_v_set ? e->p.kv_type_v : e->p.kv_type), &s->bm_seq);
    if (st != KVRT_OK)
        return bm_err(e, st);
    int32_t matched = 0;
    /* The last known token is always computed: its logits pick the next one.
     * A shifted sequence looks up its sinks only (its later tokens sit at
     * other positions than in any prompt). */
    int32_t lookup = s->shift > 0 ? KVRT_MIN(s->len - 1, e->sink_tok) : s->len - 1;
    st = kvrt_bm_match_prefix(e->bm, s->bm_seq, s->tokens, lookup, &matched);
    int32_t fit = 0;
    if (st == KVRT_OK && e->disk && s->shift == 0)
        matched = kvrt_engine_disk_extend(e, s, matched);
    if (st == KVRT_OK) {
        s->num_computed = matched;
        kvrt_eseq_skip_dropped(e, s);
        st = fit_tokens(e, s, KVRT_MIN(kvrt_eseq_todo(e, s), *budget), 0, &fit);
    } else {
        st = bm_err(e, st);
    }
    if (st != KVRT_OK || fit == 0) {
        (void)kvrt_bm_seq_free(e->bm, s->bm_seq);
        s->bm_seq = -1;
        s->num_computed = 0;
        return st;
    }
    if (e->p.enable_prefix_cache) {
        e->m.prefix_lookups++;
        e->m.prefix_query_tokens += s->len - 1;
        e->m.prefix_hit_tokens += matched;
    }
    if (!s->req->looked_up) {
        s->req->looked_up = 1;
        s->req->n_cached_prompt = matched;
        s->req->disk_from = matched / e->p.block_size;
    }
    kvrt_seq_list_remove(&e->waiting, s);
    s->state = KVRT_SEQ_RUNNING;
    s->admit_stamp = e->next_admit++;
    kvrt_seq_list_insert(&e->running, s, 1);
    *admitted = 1;
    return place(e, s, fit, budget);
}

kvrt_status kvrt_sched_schedule(kvrt_engine *e, kvrt_step_info *info)
{
    int32_t budget = e->p.max_batched_tokens;
    e->n_sched = 0;
    e->sched_tokens_total = 0;
    e->preempted_now = 0;
    for (int32_t i = 0; i < e->running.n; i++)
        e->running.v[i]->sched_tokens = 0;

    KVRT_TRY(schedule_running(e, 1, &budget));
    KVRT_TRY(schedule_running(e, 0, &budget));
    /* After a preemption nothing new comes in this step (it would only be
     * preempted again); swapped-out sequences are older than waiting ones. */
    if (e->preempted_now == 0)
        KVRT_TRY(schedule_swapped(e, &budget));
    if (e->preempted_now == 0 && e->swapped.n == 0) {
        int admitted = 1;
        while (admitted && e->waiting.n > 0 && room(e, budget))
            KVRT_TRY(admit_one(e, e->waiting.v[0], &budget, &admitted));
    }
    info->num_preempted = e->preempted_now;
    return KVRT_OK;
}

/* ---- recovery ------------------------------------------------------------------- */

/* A failed step may have left registered blocks without their K/V: drop the
 * prefix cache and recompute every sequence the step had placed. */
void kvrt_sched_recover(kvrt_engine *e)
{
    (void)kvrt_bm_reset_prefix_cache(e->bm);
    for (int32_t i = 0; i < e->n_sched; i++)
        kvrt_sched_requeue(e, e->sched[i]);
    e->n_sched = 0;
}
