/* KV block manager: sequences, block tables, appends with copy-on-write,
 * prefix matching and sliding-window release. */
#include "kv/block_manager_internal.h"

#include <string.h>

/* ---- sequence records ------------------------------------------------------------- */

kvrt_status kvrt_bm_lookup_seq(kvrt_block_manager *bm, int32_t seq, const char *fn, kvrt_bm_seq **out)
{
    if (!bm)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (seq < 0 || seq >= bm->seq_cap || !bm->seqs[seq])
        return kvrt_fail(&bm->err, KVRT_ERR_NO_SUCH_SEQUENCE, "%s: no sequence with id %d", fn, (int)seq);
    *out = bm->seqs[seq];
    return KVRT_OK;
}

static kvrt_status need_resident(kvrt_block_manager *bm, const kvrt_bm_seq *s, const char *fn)
{
    if (s->swapped)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT,
                         "%s: sequence %d is swapped out to the host tier; swap it in first", fn, (int)s->id);
    return KVRT_OK;
}

static int32_t num_entries(const kvrt_block_manager *bm, int32_t seq_len)
{
    return (int32_t)(((int64_t)seq_len + bm->block_size - 1) / bm->block_size);
}

/* Makes sure one more id is available, growing the id arrays all-or-nothing. */
static kvrt_status reserve_id(kvrt_block_manager *bm, const char *fn)
{
    if (bm->seq_num_free_ids > 0)
        return KVRT_OK;
    if (bm->seq_cap >= INT32_MAX / 2)
        return kvrt_fail(&bm->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "%s: too many sequences (%d)", fn, (int)bm->seq_cap);
    int32_t cap = bm->seq_cap ? bm->seq_cap * 2 : 16;
    kvrt_bm_seq **seqs = kvrt_calloc(bm->alloc, (size_t)cap, sizeof(*seqs));
    int32_t *ids = kvrt_calloc(bm->alloc, (size_t)cap, sizeof(*ids));
    if (!seqs || !ids) {
        kvrt_free(bm->alloc, seqs);
        kvrt_free(bm->alloc, ids);
        return kvrt_fail(&bm->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "%s: out of host memory for %d sequence ids", fn,
                         (int)cap);
    }
    if (bm->seq_cap)
        memcpy(seqs, bm->seqs, (size_t)bm->seq_cap * sizeof(*seqs));
    /* Lowest new id on top of the stack. */
    for (int32_t i = 0; i < cap - bm->seq_cap; i++)
        ids[i] = cap - 1 - i;
    kvrt_free(bm->alloc, bm->seqs);
    kvrt_free(bm->alloc, bm->seq_free_ids);
    bm->seqs = seqs;
    bm->seq_free_ids = ids;
    bm->seq_num_free_ids = cap - bm->seq_cap;
    bm->seq_cap = cap;
    return KVRT_OK;
}

static kvrt_status new_seq(kvrt_block_manager *bm, const char *fn, kvrt_bm_seq **out)
{
    KVRT_TRY(reserve_id(bm, fn));
    size_t bytes = sizeof(kvrt_bm_seq) + (size_t)bm->max_blocks_per_seq * sizeof(int32_t);
    kvrt_bm_seq *s = kvrt_alloc(bm->alloc, bytes, 0);
    if (!s)
        return kvrt_fail(&bm->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "%s: out of host memory for a sequence", fn);
    memset(s, 0, sizeof(*s));
    for (int32_t i = 0; i < bm->max_blocks_per_seq; i++)
        s->table[i] = KVRT_BM_NONE;
    s->chain_hash = kvrt_bm_root_hash();
    s->id = bm->seq_free_ids[--bm->seq_num_free_ids];
    bm->seqs[s->id] = s;
    bm->num_seqs++;
    *out = s;
    return KVRT_OK;
}

kvrt_status kvrt_bm_seq_create(kvrt_block_manager *bm, uint64_t extra_key, int32_t *out_seq)
{
    if (!bm)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (!out_seq)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_bm_seq_create: out_seq is NULL");
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(new_seq(bm, "kvrt_bm_seq_create", &s));
    s->extra_key = extra_key;
    *out_seq = s->id;
    return KVRT_OK;
}

static void release_host_slot(kvrt_block_manager *bm, int32_t slot)
{
    bm->host[slot].in_use = 0;
    bm->host[slot].keyed = 0;
    bm->host_free[bm->host_num_free++] = slot;
}

kvrt_status kvrt_bm_seq_free(kvrt_block_manager *bm, int32_t seq)
{
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, "kvrt_bm_seq_free", &s));
    /* Last blocks first: a sequence's tail is the least likely prefix of a
     * future prompt, so it should be evicted before its head. */
    for (int32_t i = num_entries(bm, s->seq_len) - 1; i >= 0; i--) {
        int32_t b = s->table[i];
        if (b == KVRT_BM_NONE)
            continue;
        if (s->swapped || i < s->n_host)
            release_host_slot(bm, b);
        else
            kvrt_bm_pool_unref(bm, b);
    }
    bm->seqs[seq] = NULL;
    bm->seq_free_ids[bm->seq_num_free_ids++] = seq;
    bm->num_seqs--;
    kvrt_free(bm->alloc, s);
    return KVRT_OK;
}

kvrt_status kvrt_bm_seq_fork(kvrt_block_manager *bm, int32_t parent, int32_t *out_child)
{
    kvrt_bm_seq *p = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, parent, "kvrt_bm_seq_fork", &p));
    if (!out_child)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_bm_seq_fork: out_child is NULL");
    KVRT_TRY(need_resident(bm, p, "kvrt_bm_seq_fork"));
    if (p->n_host > 0) /* host slots have one owner each */
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT,
                         "kvrt_bm_seq_fork: sequence %d has %d blocks offloaded to the host tier", (int)p->id,
                         (int)p->n_host);
    kvrt_bm_seq *c = NULL;
    KVRT_TRY(new_seq(bm, "kvrt_bm_seq_fork", &c));
    int32_t id = c->id;
    memcpy(c, p, sizeof(*c) + (size_t)bm->max_blocks_per_seq * sizeof(int32_t));
    c->id = id;
    for (int32_t i = 0; i < num_entries(bm, c->seq_len); i++) {
        if (c->table[i] != KVRT_BM_NONE)
            kvrt_bm_pool_ref(bm, c->table[i]);
    }
    *out_child = id;
    return KVRT_OK;
}

kvrt_status kvrt_bm_get_seq_info(kvrt_block_manager *bm, int32_t seq, kvrt_bm_seq_info *out)
{
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, "kvrt_bm_get_seq_info", &s));
    if (!out)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_bm_get_seq_info: out is NULL");
    int32_t n = num_entries(bm, s->seq_len);
    out->seq_len = s->seq_len;
    /* Released blocks are always full, so each one removes block_size positions. */
    out->stored_tokens = s->seq_len - s->n_released * bm->block_size;
    out->num_entries = n;
    out->num_blocks = n - s->n_released;
    out->swapped = s->swapped;
    out->extra_key = s->extra_key;
    out->num_host = s->n_host;
    return KVRT_OK;
}

kvrt_status kvrt_bm_block_tables(kvrt_block_manager *bm, const int32_t *seqs, int32_t n_seqs, int32_t *tables,
                                 int32_t row_len)
{
    if (!bm)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (n_seqs < 0 || row_len < 1 || (n_seqs > 0 && (!seqs || !tables)))
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT,
                         "kvrt_bm_block_tables: bad arguments (n_seqs %d, row_len %d, seqs %s, tables %s)",
                         (int)n_seqs, (int)row_len, seqs ? "set" : "NULL", tables ? "set" : "NULL");
    /* Validate every row before writing any. */
    for (int32_t r = 0; r < n_seqs; r++) {
        kvrt_bm_seq *s = NULL;
        KVRT_TRY(kvrt_bm_lookup_seq(bm, seqs[r], "kvrt_bm_block_tables", &s));
        KVRT_TRY(need_resident(bm, s, "kvrt_bm_block_tables"));
        if (num_entries(bm, s->seq_len) > row_len)
            return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT,
                             "kvrt_bm_block_tables: sequence %d has %d entries, row_len is %d", (int)s->id,
                             (int)num_entries(bm, s->seq_len), (int)row_len);
    }
    for (int32_t r = 0; r < n_seqs; r++) {
        const kvrt_bm_seq *s = bm->seqs[seqs[r]];
        int32_t n = num_entries(bm, s->seq_len);
        int32_t *row = tables + (size_t)r * (size_t)row_len;
        memcpy(row, s->table, (size_t)n * sizeof(int32_t));
        for (int32_t i = n; i < row_len; i++)
            row[i] = KVRT_BM_NONE;
    }
    return KVRT_OK;
}

/* ---- appending -------------------------------------------------------------------- */

/* Blocks an append of n tokens needs; CONTEXT_OVERFLOW past the table. */
static kvrt_status count_needed(kvrt_block_manager *bm, const kvrt_bm_seq *s, int32_t n, const char *fn,
                                int32_t *out_new, bool *out_cow)
{
    int64_t new_len = (int64_t)s->seq_len + n;
    int64_t entries = (new_len + bm->block_size - 1) / bm->block_size;
    if (entries > bm->max_blocks_per_seq)
        return kvrt_fail(&bm->err, KVRT_ERR_CONTEXT_OVERFLOW,
                         "%s: sequence %d would reach %lld tokens, more than max_blocks_per_seq %d * block_size %d",
                         fn, (int)s->id, (long long)new_len, (int)bm->max_blocks_per_seq, (int)bm->block_size);
    int32_t have = num_entries(bm, s->seq_len);
    bool partial = s->seq_len % bm->block_size != 0;
    *out_cow = n > 0 && partial && bm->blocks[s->table[have - 1]].ref_cnt > 1;
    *out_new = (int32_t)entries - have;
    return KVRT_OK;
}

kvrt_status kvrt_bm_blocks_needed(kvrt_block_manager *bm, int32_t seq, int32_t n_tokens, int32_t *out)
{
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, "kvrt_bm_blocks_needed", &s));
    if (!out || n_tokens < 0)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_bm_blocks_needed: %s",
                         out ? "n_tokens < 0" : "out is NULL");
    KVRT_TRY(need_resident(bm, s, "kvrt_bm_blocks_needed"));
    int32_t n_new = 0;
    bool cow = false;
    KVRT_TRY(count_needed(bm, s, n_tokens, "kvrt_bm_blocks_needed", &n_new, &cow));
    *out = n_new + (cow ? 1 : 0);
    return KVRT_OK;
}

/* Copy-on-write of the sequence's shared, partial last block. */
static void copy_last_block(kvrt_block_manager *bm, kvrt_bm_seq *s, kvrt_bm_append_result *res)
{
    int32_t idx = num_entries(bm, s->seq_len) - 1;
    int32_t src = s->table[idx];
    int32_t dst = kvrt_bm_pool_take(bm);
    size_t bs = (size_t)bm->block_size;
    memcpy(&bm->tokens[(size_t)dst * bs], &bm->tokens[(size_t)src * bs], bs * sizeof(int32_t));
    bm->blocks[dst].fill = bm->blocks[src].fill;
    kvrt_bm_pool_unref(bm, src); /* stays >= 1: it was shared */
    s->table[idx] = dst;
    res->n_copies = 1;
    res->copies[0][0] = src;
    res->copies[0][1] = dst;
    bm->stats.cow_copies++;
}

kvrt_status kvrt_bm_append(kvrt_block_manager *bm, int32_t seq, const int32_t *tokens, int32_t n_tokens,
                           int32_t *slot_mapping, kvrt_bm_append_result *res)
{
    static const char fn[] = "kvrt_bm_append";
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, fn, &s));
    if (n_tokens < 0 || (n_tokens > 0 && !tokens))
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: %s", fn,
                         n_tokens < 0 ? "n_tokens < 0" : "tokens is NULL");
    KVRT_TRY(need_resident(bm, s, fn));
    int32_t n_new = 0;
    bool cow = false;
    KVRT_TRY(count_needed(bm, s, n_tokens, fn, &n_new, &cow));
    int32_t need = n_new + (cow ? 1 : 0);
    if (need > bm->num_free)
        return kvrt_fail(&bm->err, KVRT_ERR_OUT_OF_BLOCKS,
                         "%s: sequence %d needs %d blocks for %d tokens, %d free of %d", fn, (int)seq, (int)need,
                         (int)n_tokens, (int)bm->num_free, (int)bm->num_blocks);

    kvrt_bm_append_result r = {0, {{KVRT_BM_NONE, KVRT_BM_NONE}}, need};
    if (cow)
        copy_last_block(bm, s, &r);
    int32_t first = num_entries(bm, s->seq_len);
    for (int32_t i = 0; i < n_new; i++)
        s->table[first + i] = kvrt_bm_pool_take(bm);

    const int32_t bs = bm->block_size;
    for (int32_t t = 0; t < n_tokens; t++) {
        int32_t pos = s->seq_len + t;
        int32_t id = s->table[pos / bs];
        kvrt_bm_block *b = &bm->blocks[id];
        bm->tokens[(size_t)id * (size_t)bs + (size_t)b->fill] = tokens[t];
        if (slot_mapping)
            slot_mapping[t] = id * bs + pos % bs;
        if (++b->fill == bs && bm->prefix_cache && !s->shifted) {
            kvrt_bm_seal_block(bm, id, s->chain_hash, s->chain_cid, s->extra_key);
            s->chain_hash = b->hash;
            s->chain_cid = b->cid;
        }
    }
    s->seq_len += n_tokens;
    if (res)
        *res = r;
    return KVRT_OK;
}

/* ---- prefix cache lookup ------------------------------------------------------------- */

kvrt_status kvrt_bm_match_prefix(kvrt_block_manager *bm, int32_t seq, const int32_t *tokens, int32_t n_tokens,
                                 int32_t *n_matched)
{
    static const char fn[] = "kvrt_bm_match_prefix";
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, fn, &s));
    if (!n_matched || n_tokens < 0 || (n_tokens > 0 && !tokens))
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: %s", fn,
                         !n_matched ? "n_matched is NULL" : n_tokens < 0 ? "n_tokens < 0" : "tokens is NULL");
    KVRT_TRY(need_resident(bm, s, fn));
    if (s->seq_len != 0)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT,
                         "%s: sequence %d already holds %d tokens; match a prefix before appending", fn, (int)seq,
                         (int)s->seq_len);
    *n_matched = 0;
    if (!bm->prefix_cache)
        return KVRT_OK;
    const int32_t bs = bm->block_size;
    int32_t max_blocks = KVRT_MIN(n_tokens / bs, bm->max_blocks_per_seq);
    int32_t k = 0;
    for (; k < max_blocks; k++) {
        const int32_t *toks = tokens + (size_t)k * (size_t)bs;
        uint64_t h = kvrt_bm_hash_block(bm, s->chain_hash, toks, s->extra_key);
        int32_t id = kvrt_bm_registry_find(bm, h, s->chain_cid, s->extra_key, toks);
        if (id == KVRT_BM_NONE)
            break;
        /* Adopting as we go keeps the chain state in the sequence itself. */
        kvrt_bm_pool_ref(bm, id);
        s->table[k] = id;
        s->chain_hash = h;
        s->chain_cid = bm->blocks[id].cid;
    }
    s->seq_len = k * bs;
    bm->stats.prefix_lookups++;
    bm->stats.prefix_query_tokens += n_tokens;
    bm->stats.prefix_hit_tokens += (int64_t)k * bs;
    bm->stats.prefix_hit_blocks += k;
    *n_matched = k * bs;
    return KVRT_OK;
}

/* ---- sliding window ------------------------------------------------------------------ */

kvrt_status kvrt_bm_release_before(kvrt_block_manager *bm, int32_t seq, int32_t pos, int32_t sinks,
                                   int32_t *n_released)
{
    static const char fn[] = "kvrt_bm_release_before";
    kvrt_bm_seq *s = NULL;
    KVRT_TRY(kvrt_bm_lookup_seq(bm, seq, fn, &s));
    if (pos < 0 || sinks < 0)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: %s %d < 0", fn, pos < 0 ? "pos" : "sinks",
                         (int)(pos < 0 ? pos : sinks));
    KVRT_TRY(need_resident(bm, s, fn));
    if (s->n_host > 0)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "%s: sequence %d has blocks offloaded to the host tier",
                         fn, (int)seq);
    const int32_t bs = bm->block_size;
    int32_t end = KVRT_MIN(pos, s->seq_len) / bs; /* blocks [0, end) lie entirely before pos */
    int32_t first = (int32_t)(((int64_t)sinks + bs - 1) / bs); /* blocks before it hold a sink */
    int32_t released = 0;
    for (int32_t i = first; i < end; i++) {
        if (s->table[i] == KVRT_BM_NONE)
            continue;
        kvrt_bm_pool_unref(bm, s->table[i]);
        s->table[i] = KVRT_BM_NONE;
        released++;
    }
    s->n_released += released;
    if (n_released)
        *n_released = released;
    return KVRT_OK;
}
