/* KV block manager: swapping a sequence's blocks to the host tier and back.
 * Only bookkeeping moves here; the caller copies the bytes of each pair. */
#include "kv/block_manager_internal.h"

#include <string.h>

static kvrt_status check_swap_args(kvrt_block_manager *bm, int32_t seq, int32_t (*pairs)[2], int32_t max_pairs,
                                   int32_t *n_pairs, const char *fn, bool want_swapped, kvrt_bm_seq **out,
                                   int32_t *out_blocks)
{
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, fn, &s));
    if (!pairs || !n_pairs || max_pairs < 0)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: %s", fn,
                         !pairs ? "pairs is NULL" : !n_pairs ? "n_pairs is NULL" : "max_pairs < 0");
    if (s->n_host > 0)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: sequence %d has blocks offloaded to the host tier",
                         fn, (int)seq);
    if ((s->swapped != 0) != want_swapped)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: sequence %d is %s", fn, (int)seq,
                         s->swapped ? "already swapped out" : "not swapped out");
    int32_t entries = (int32_t)(((int64_t)s->seq_len + bm->block_size - 1) / bm->block_size);
    int32_t blocks = entries - s->n_released;
    if (blocks > max_pairs)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: sequence %d has %d blocks, max_pairs is %d", fn,
                         (int)seq, (int)blocks, (int)max_pairs);
    *out = s;
    *out_blocks = blocks;
    return KVRT_OK;
}

/* One host slot takes a device block's bookkeeping (swap_out, offload). */
static int32_t take_host_slot(kvrt_block_manager *bm, int32_t id)
{
    const kvrt_bm_block *b = &bm->blocks[id];
    const size_t bs = (size_t)bm->block_size;
    int32_t h = bm->host_free[--bm->host_num_free];
    kvrt_bm_host_slot *slot = &bm->host[h];
    slot->in_use = 1;
    slot->fill = b->fill;
    slot->keyed = b->keyed;
    slot->hash = b->hash;
    slot->cid = b->cid;
    slot->parent_cid = b->parent_cid;
    slot->extra = b->extra;
    memcpy(&bm->host_tokens[(size_t)h * bs], &bm->tokens[(size_t)id * bs], bs * sizeof(int32_t));
    return h;
}

kvrt_status kvrt_bm_swap_out(kvrt_block_manager *bm, int32_t seq, int32_t (*pairs)[2], int32_t max_pairs,
                             int32_t *n_pairs)
{
    static const char fn[] = "kvrt_bm_swap_out";
    kvrt_bm_seq *s = NULL;
    int32_t blocks = 0;
    KVRT_TRY(check_swap_args(bm, seq, pairs, max_pairs, n_pairs, fn, false, &s, &blocks));
    if (blocks > bm->host_num_free)
        return kvrt_fail(&bm->err, KVRT_ERR_OUT_OF_BLOCKS,
                         "%s: sequence %d has %d blocks, the host tier has %d free of %d slots", fn, (int)seq,
                         (int)blocks, (int)bm->host_num_free, (int)bm->num_host_blocks);
    int32_t n = 0;
    int32_t entries = (int32_t)(((int64_t)s->seq_len + bm->block_size - 1) / bm->block_size);
    for (int32_t i = 0; i < entries; i++) {
        int32_t id = s->table[i];
        if (id == KVRT_BM_NONE)
            continue;
        int32_t h = take_host_slot(bm, id);
        pairs[n][0] = id;
        pairs[n][1] = h;
        n++;
        s->table[i] = h;
    }
    /* Drop device references last, tail first, as kvrt_bm_seq_free does. */
    for (int32_t k = n - 1; k >= 0; k--)
        kvrt_bm_pool_unref(bm, pairs[k][0]);
    s->swapped = 1;
    bm->stats.blocks_swapped_out += n;
    *n_pairs = n;
    return KVRT_OK;
}

kvrt_status kvrt_bm_swap_in(kvrt_block_manager *bm, int32_t seq, int32_t (*pairs)[2], int32_t max_pairs,
                            int32_t *n_pairs)
{
    static const char fn[] = "kvrt_bm_swap_in";
    kvrt_bm_seq *s = NULL;
    int32_t blocks = 0;
    KVRT_TRY(check_swap_args(bm, seq, pairs, max_pairs, n_pairs, fn, true, &s, &blocks));
    if (blocks > bm->num_free)
        return kvrt_fail(&bm->err, KVRT_ERR_OUT_OF_BLOCKS, "%s: sequence %d needs %d blocks, %d free of %d", fn,
                         (int)seq, (int)blocks, (int)bm->num_free, (int)bm->num_blocks);
    const size_t bs = (size_t)bm->block_size;
    int32_t n = 0;
    int32_t entries = (int32_t)(((int64_t)s->seq_len + bm->block_size - 1) / bm->block_size);
    for (int32_t i = 0; i < entries; i++) {
        int32_t h = s->table[i];
        if (h == KVRT_BM_NONE)
            continue;
        int32_t id = kvrt_bm_pool_take(bm);
        kvrt_bm_block *b = &bm->blocks[id];
        const kvrt_bm_host_slot *slot = &bm->host[h];
        b->fill = slot->fill;
        b->keyed = slot->keyed;
        b->hash = slot->hash;
        b->cid = slot->cid;
        b->parent_cid = slot->parent_cid;
        b->extra = slot->extra;
        memcpy(&bm->tokens[(size_t)id * bs], &bm->host_tokens[(size_t)h * bs], bs * sizeof(int32_t));
        kvrt_bm_registry_add_unique(bm, id);
        bm->host[h].in_use = 0;
        bm->host[h].keyed = 0;
        bm->host_free[bm->host_num_free++] = h;
        pairs[n][0] = h;
        pairs[n][1] = id;
        n++;
        s->table[i] = id;
    }
    s->swapped = 0;
    bm->stats.blocks_swapped_in += n;
    *n_pairs = n;
    return KVRT_OK;
}

/* The checks kvrt_bm_offload_plan and kvrt_bm_offload share: a resident sequence and an end
 * inside its full blocks. */
static kvrt_status lookup_offload_seq(kvrt_block_manager *bm, int32_t seq, int32_t end, bool bad_args,
                                      const char *fn, kvrt_bm_seq **out)
{
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, fn, &s));
    if (bad_args)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: bad arguments", fn);
    if (s->swapped)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: sequence %d is swapped out", fn, (int)seq);
    if (end < 0 || end > s->seq_len / bm->block_size)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: end %d outside the %d full blocks of sequence %d",
                         fn, (int)end, (int)(s->seq_len / bm->block_size), (int)seq);
    *out = s;
    return KVRT_OK;
}

kvrt_status kvrt_bm_offload_plan(kvrt_block_manager *bm, int32_t seq, int32_t end, int32_t want, int32_t max_move,
                                 int32_t *n_move, int32_t *n_freed)
{
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(lookup_offload_seq(bm, seq, end, !n_move || !n_freed || max_move < 0, "kvrt_bm_offload_plan", &s));
    int32_t moved = 0, freed = 0;
    *n_move = *n_freed = 0;
    for (int32_t i = s->n_host; i < end && moved < max_move && freed < want; i++) {
        int32_t id = s->table[i];
        if (id == KVRT_BM_NONE)
            break; /* window-released: kvrt_bm_offload refuses it */
        moved++;
        if (bm->blocks[id].ref_cnt == 1) {
            freed++;
            *n_move = moved;
            *n_freed = freed;
        }
    }
    return KVRT_OK;
}

kvrt_status kvrt_bm_offload(kvrt_block_manager *bm, int32_t seq, int32_t end, int32_t max_blocks,
                            int32_t (*pairs)[2], int32_t max_pairs, int32_t *n_pairs)
{
    static const char fn[] = "kvrt_bm_offload";
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(lookup_offload_seq(bm, seq, end, !pairs || !n_pairs || max_pairs < 0 || max_blocks < 0, fn, &s));
    int32_t n = KVRT_MAX(0, KVRT_MIN(max_blocks, end - s->n_host));
    if (n > max_pairs)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: %d blocks, max_pairs is %d", fn, (int)n,
                         (int)max_pairs);
    for (int32_t i = s->n_host; i < s->n_host + n; i++)
        if (s->table[i] == KVRT_BM_NONE)
            return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: sequence %d has released entries", fn,
                             (int)seq);
    if (n > bm->host_num_free)
        return kvrt_fail(&bm->err, KVRT_ERR_OUT_OF_BLOCKS, "%s: %d blocks, the host tier has %d free of %d slots",
                         fn, (int)n, (int)bm->host_num_free, (int)bm->num_host_blocks);
    for (int32_t k = 0; k < n; k++) {
        int32_t i = s->n_host + k, id = s->table[i];
        pairs[k][0] = id;
        pairs[k][1] = take_host_slot(bm, id);
        s->table[i] = pairs[k][1];
    }
    /* Device references last: a block shared with another sequence stays
     * there, one that was only ours joins the free queue (still cached). */
    for (int32_t k = n - 1; k >= 0; k--)
        kvrt_bm_pool_unref(bm, pairs[k][0]);
    s->n_host += n;
    bm->stats.blocks_offloaded += n;
    *n_pairs = n;
    return KVRT_OK;
}
