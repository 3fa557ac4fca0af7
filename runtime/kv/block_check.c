/* KV block manager: the invariant checker the tests run after every step.
 * It recomputes everything from the sequence tables, so it shares no
 * incremental state with the code it checks. O(blocks + sequences * table). */
#include "kv/block_manager_internal.h"

#include <stdio.h>
#include <string.h>

typedef struct check_ctx {
    const kvrt_block_manager *bm;
    char *msg;
    size_t msg_size;
    int32_t *refs;      /* [num_blocks] references counted from the tables */
    int32_t *host_refs; /* [num_host_blocks] */
} check_ctx;

static kvrt_status violation(check_ctx *c, const char *fmt, ...) KVRT_PRINTF(2, 3);
static kvrt_status violation(check_ctx *c, const char *fmt, ...)
{
    if (c->msg && c->msg_size) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->msg, c->msg_size, fmt, ap);
        va_end(ap);
    }
    return KVRT_ERR_INTERNAL;
}

static int32_t expected_fill(const kvrt_block_manager *bm, const kvrt_bm_seq *s, int32_t i)
{
    int32_t left = s->seq_len - i * bm->block_size;
    return left >= bm->block_size ? bm->block_size : left;
}

static kvrt_status check_seq(check_ctx *c, const kvrt_bm_seq *s, int32_t id)
{
    const kvrt_block_manager *bm = c->bm;
    if (s->id != id)
        return violation(c, "sequence in slot %d says id %d", (int)id, (int)s->id);
    if (s->seq_len < 0 || (int64_t)s->seq_len > (int64_t)bm->max_blocks_per_seq * bm->block_size)
        return violation(c, "sequence %d: seq_len %d out of range", (int)id, (int)s->seq_len);
    int32_t n = (s->seq_len + bm->block_size - 1) / bm->block_size;
    int32_t none = 0;
    for (int32_t i = 0; i < bm->max_blocks_per_seq; i++) {
        int32_t e = s->table[i];
        if (i >= n) {
            if (e != KVRT_BM_NONE)
                return violation(c, "sequence %d: entry %d = %d past its %d entries", (int)id, (int)i, (int)e, (int)n);
            continue;
        }
        if (e == KVRT_BM_NONE) {
            none++;
            if (expected_fill(bm, s, i) != bm->block_size)
                return violation(c, "sequence %d: partial block %d released", (int)id, (int)i);
            continue;
        }
        bool on_host = s->swapped || i < s->n_host;
        int32_t lim = on_host ? bm->num_host_blocks : bm->num_blocks;
        if (e < 0 || e >= lim)
            return violation(c, "sequence %d: entry %d = %d out of range", (int)id, (int)i, (int)e);
        int32_t fill = on_host ? bm->host[e].fill : bm->blocks[e].fill;
        if (fill != expected_fill(bm, s, i))
            return violation(c, "sequence %d: block %d (entry %d) holds %d tokens, expected %d", (int)id, (int)e,
                             (int)i, (int)fill, (int)expected_fill(bm, s, i));
        if (on_host)
            c->host_refs[e]++;
        else
            c->refs[e]++;
    }
    if (none != s->n_released)
        return violation(c, "sequence %d: %d released entries, n_released %d", (int)id, (int)none, (int)s->n_released);
    return KVRT_OK;
}

static kvrt_status check_seqs(check_ctx *c)
{
    const kvrt_block_manager *bm = c->bm;
    int32_t live = 0;
    for (int32_t i = 0; i < bm->seq_cap; i++) {
        if (!bm->seqs[i])
            continue;
        live++;
        KVRT_TRY(check_seq(c, bm->seqs[i], i));
    }
    if (live != bm->num_seqs || live + bm->seq_num_free_ids != bm->seq_cap)
        return violation(c, "%d live sequences, num_seqs %d, %d free ids of %d", (int)live, (int)bm->num_seqs,
                         (int)bm->seq_num_free_ids, (int)bm->seq_cap);
    for (int32_t k = 0; k < bm->seq_num_free_ids; k++) {
        int32_t id = bm->seq_free_ids[k];
        if (id < 0 || id >= bm->seq_cap || bm->seqs[id])
            return violation(c, "free id stack holds %d, which is in use or out of range", (int)id);
    }
    return KVRT_OK;
}

static kvrt_status check_free_queue(check_ctx *c)
{
    const kvrt_block_manager *bm = c->bm;
    int32_t count = 0, cached = 0, prev = KVRT_BM_NONE;
    for (int32_t id = bm->free_head; id != KVRT_BM_NONE; id = bm->blocks[id].next_free) {
        if (id < 0 || id >= bm->num_blocks || ++count > bm->num_blocks)
            return violation(c, "free queue broken at block %d (cycle or bad link)", (int)id);
        const kvrt_bm_block *b = &bm->blocks[id];
        if (b->prev_free != prev)
            return violation(c, "free queue: block %d prev %d, expected %d", (int)id, (int)b->prev_free, (int)prev);
        if (!b->in_free || b->ref_cnt != 0)
            return violation(c, "free queue holds block %d with ref_cnt %d", (int)id, (int)b->ref_cnt);
        cached += b->registered;
        prev = id;
    }
    if (prev != bm->free_tail)
        return violation(c, "free queue tail %d, walk ended at %d", (int)bm->free_tail, (int)prev);
    if (count != bm->num_free || cached != bm->num_cached)
        return violation(c, "free queue has %d blocks (%d cached), counters say %d (%d)", (int)count, (int)cached,
                         (int)bm->num_free, (int)bm->num_cached);
    return KVRT_OK;
}

static kvrt_status check_blocks(check_ctx *c)
{
    const kvrt_block_manager *bm = c->bm;
    int32_t zero = 0;
    for (int32_t id = 0; id < bm->num_blocks; id++) {
        const kvrt_bm_block *b = &bm->blocks[id];
        if (b->id != id)
            return violation(c, "block record %d says id %d", (int)id, (int)b->id);
        if (b->ref_cnt != c->refs[id])
            return violation(c, "block %d: ref_cnt %d, but %d tables hold it", (int)id, (int)b->ref_cnt,
                             (int)c->refs[id]);
        if ((b->ref_cnt == 0) != (b->in_free != 0))
            return violation(c, "block %d: ref_cnt %d, in_free %d", (int)id, (int)b->ref_cnt, (int)b->in_free);
        zero += b->ref_cnt == 0;
        if (b->fill < 0 || b->fill > bm->block_size)
            return violation(c, "block %d: fill %d", (int)id, (int)b->fill);
        if (b->keyed && (b->fill != bm->block_size || !bm->prefix_cache))
            return violation(c, "block %d keyed but not full (fill %d)", (int)id, (int)b->fill);
        if (b->registered && !b->keyed)
            return violation(c, "block %d registered without a key", (int)id);
    }
    if (zero != bm->num_free)
        return violation(c, "%d blocks with ref_cnt 0, num_free %d", (int)zero, (int)bm->num_free);
    return KVRT_OK;
}

static kvrt_status check_registry(check_ctx *c)
{
    const kvrt_block_manager *bm = c->bm;
    const size_t bs = (size_t)bm->block_size;
    int32_t in_buckets = 0, registered = 0;
    for (uint32_t k = 0; k < bm->num_buckets; k++) {
        for (int32_t id = bm->buckets[k]; id != KVRT_BM_NONE; id = bm->blocks[id].next_hash) {
            if (id < 0 || id >= bm->num_blocks || ++in_buckets > bm->num_blocks)
                return violation(c, "hash bucket %u broken at %d", (unsigned)k, (int)id);
            const kvrt_bm_block *b = &bm->blocks[id];
            if (!b->registered)
                return violation(c, "block %d in a bucket but not registered", (int)id);
            /* No other registered block may have the same exact key. */
            for (int32_t o = b->next_hash; o != KVRT_BM_NONE; o = bm->blocks[o].next_hash) {
                const kvrt_bm_block *d = &bm->blocks[o];
                if (d->hash == b->hash && d->parent_cid == b->parent_cid && d->extra == b->extra &&
                    memcmp(&bm->tokens[(size_t)id * bs], &bm->tokens[(size_t)o * bs], bs * sizeof(int32_t)) == 0)
                    return violation(c, "blocks %d and %d registered with the same key", (int)id, (int)o);
            }
        }
    }
    for (int32_t id = 0; id < bm->num_blocks; id++)
        registered += bm->blocks[id].registered;
    if (registered != in_buckets)
        return violation(c, "%d blocks registered, %d in buckets", (int)registered, (int)in_buckets);
    for (int32_t id = 0; id < bm->num_blocks; id++) {
        const kvrt_bm_block *b = &bm->blocks[id];
        if (b->registered && kvrt_bm_registry_find(bm, b->hash, b->parent_cid, b->extra,
                                                   &bm->tokens[(size_t)id * bs]) != id)
            return violation(c, "registered block %d not found by its own key", (int)id);
    }
    return KVRT_OK;
}

static kvrt_status check_host(check_ctx *c)
{
    const kvrt_block_manager *bm = c->bm;
    int32_t used = 0;
    for (int32_t h = 0; h < bm->num_host_blocks; h++) {
        if (c->host_refs[h] > 1)
            return violation(c, "host slot %d owned by %d sequences", (int)h, (int)c->host_refs[h]);
        if (c->host_refs[h] != bm->host[h].in_use)
            return violation(c, "host slot %d: in_use %d, owners %d", (int)h, (int)bm->host[h].in_use,
                             (int)c->host_refs[h]);
        used += bm->host[h].in_use;
    }
    if (used + bm->host_num_free != bm->num_host_blocks)
        return violation(c, "%d host slots used + %d free != %d", (int)used, (int)bm->host_num_free,
                         (int)bm->num_host_blocks);
    for (int32_t k = 0; k < bm->host_num_free; k++) {
        int32_t h = bm->host_free[k];
        if (h < 0 || h >= bm->num_host_blocks || bm->host[h].in_use)
            return violation(c, "host free stack holds %d, in use or out of range", (int)h);
    }
    return KVRT_OK;
}

static kvrt_status check_all(check_ctx *c)
{
    KVRT_TRY(check_seqs(c));
    KVRT_TRY(check_blocks(c));
    KVRT_TRY(check_free_queue(c));
    KVRT_TRY(check_registry(c));
    KVRT_TRY(check_host(c));
    const kvrt_bm_stats *st = &c->bm->stats;
    if (st->evictions > st->allocations || st->cow_copies > st->allocations ||
        st->blocks_swapped_in > st->allocations || st->prefix_hit_tokens > st->prefix_query_tokens)
        return violation(c, "event counters inconsistent (allocations %lld, evictions %lld, cow %lld, "
                            "swapped in %lld, hits %lld of %lld tokens)",
                         (long long)st->allocations, (long long)st->evictions, (long long)st->cow_copies,
                         (long long)st->blocks_swapped_in, (long long)st->prefix_hit_tokens,
                         (long long)st->prefix_query_tokens);
    return KVRT_OK;
}

kvrt_status kvrt_bm_check_invariants(const kvrt_block_manager *bm, char *msg, size_t msg_size)
{
    if (msg && msg_size)
        msg[0] = '\0';
    if (!bm)
        return KVRT_ERR_INVALID_ARGUMENT;
    check_ctx c = {bm, msg, msg_size, NULL, NULL};
    /* Scratch comes from malloc, not the manager's allocator, so checking
     * never consumes a fault-injection test's allocation count. */
    c.refs = kvrt_calloc(NULL, (size_t)bm->num_blocks, sizeof(int32_t));
    c.host_refs = kvrt_calloc(NULL, (size_t)bm->num_host_blocks, sizeof(int32_t));
    kvrt_status s = (c.refs && c.host_refs) ? check_all(&c) : violation(&c, "checker out of memory");
    kvrt_free(NULL, c.refs);
    kvrt_free(NULL, c.host_refs);
    return s;
}
