/* KV block manager: context shift (issue 18). A sequence that reached its
 * context drops whole blocks after its sink blocks; the blocks after the
 * dropped ones move down the table and their keys are turned by the caller
 * (keys are stored after RoPE), so they must be the sequence's own: shared
 * ones are copied first, and none of them stays in the prefix cache. Only
 * bookkeeping here; the caller copies and turns the bytes. */
#include "kv/block_manager_internal.h"

#include <string.h>

/* A kept block whose bytes are about to turn: ours alone and out of the
 * prefix cache (its key names the tokens at their old positions). */
static void make_private(kvrt_block_manager *bm, kvrt_bm_seq *s, int32_t entry, int32_t (*copies)[2],
                         int32_t *n_copies)
{
    int32_t src = s->table[entry];
    kvrt_bm_block *b = &bm->blocks[src];
    if (b->ref_cnt > 1) {
        int32_t dst = kvrt_bm_pool_take(bm); /* fresh: unkeyed, unregistered */
        size_t bs = (size_t)bm->block_size;
        memcpy(&bm->tokens[(size_t)dst * bs], &bm->tokens[(size_t)src * bs], bs * sizeof(int32_t));
        bm->blocks[dst].fill = b->fill;
        kvrt_bm_pool_unref(bm, src); /* stays >= 1: it was shared */
        s->table[entry] = dst;
        copies[*n_copies][0] = src;
        copies[*n_copies][1] = dst;
        (*n_copies)++;
        bm->stats.cow_copies++;
        return;
    }
    kvrt_bm_unregister(bm, src);
    b->keyed = 0;
    b->hash = 0;
    b->cid = b->parent_cid = b->extra = 0;
}

kvrt_status kvrt_bm_shift(kvrt_block_manager *bm, int32_t seq, int32_t keep, int32_t drop, int32_t *turn,
                          int32_t *n_turn, int32_t (*copies)[2], int32_t *n_copies)
{
    static const char fn[] = "kvrt_bm_shift";
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, fn, &s));
    if (!turn || !n_turn || !copies || !n_copies)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: NULL output", fn);
    if (s->swapped || s->n_host > 0 || s->n_released > 0)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: sequence %d is %s", fn, (int)seq,
                         s->swapped ? "swapped out" : s->n_host > 0 ? "partly in the host tier"
                                                                    : "window-released");
    const int32_t bs = bm->block_size;
    int32_t full = s->seq_len / bs, entries = (s->seq_len + bs - 1) / bs;
    if (keep < 0 || drop < 1 || keep + drop > full)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT,
                         "%s: keep %d and drop %d blocks do not fit the %d full blocks of sequence %d", fn, (int)keep,
                         (int)drop, (int)full, (int)seq);
    /* all or nothing: the copies need blocks; dropping ours frees some first */
    int32_t shared = 0, freed = 0;
    for (int32_t i = keep + drop; i < entries; i++)
        shared += bm->blocks[s->table[i]].ref_cnt > 1;
    for (int32_t i = keep; i < keep + drop; i++)
        freed += bm->blocks[s->table[i]].ref_cnt == 1;
    if (shared > bm->num_free + freed)
        return kvrt_fail(&bm->err, KVRT_ERR_OUT_OF_BLOCKS,
                         "%s: sequence %d shares %d kept blocks; copying them needs %d, %d free of %d", fn, (int)seq,
                         (int)shared, (int)shared, (int)(bm->num_free + freed), (int)bm->num_blocks);
    /* later blocks first: the dropped ones are the least likely prefix of a future prompt */
    for (int32_t i = keep + drop - 1; i >= keep; i--)
        kvrt_bm_pool_unref(bm, s->table[i]);
    *n_copies = 0;
    *n_turn = 0;
    for (int32_t i = keep + drop; i < entries; i++) {
        make_private(bm, s, i, copies, n_copies);
        turn[(*n_turn)++] = s->table[i];
    }
    memmove(s->table + keep, s->table + keep + drop, (size_t)(entries - keep - drop) * sizeof(int32_t));
    for (int32_t i = entries - drop; i < entries; i++)
        s->table[i] = KVRT_BM_NONE;
    s->seq_len -= drop * bs;
    s->shifted = 1;
    return KVRT_OK;
}
