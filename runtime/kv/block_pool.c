/* KV block manager: lifecycle, the block pool with its LRU free queue, and the
 * prefix-cache registry (hashing, collision-safe lookup, eviction). */
#include "kv/block_manager_internal.h"

#include <string.h>

/* ---- lifecycle ------------------------------------------------------------------ */

kvrt_block_manager_params kvrt_block_manager_default_params(void)
{
    kvrt_block_manager_params p;
    memset(&p, 0, sizeof(p));
    p.block_size = 16;
    p.enable_prefix_cache = 1;
    return p;
}

static kvrt_status check_params(const kvrt_block_manager_params *p, kvrt_error *err)
{
    if (p->block_size != 8 && p->block_size != 16 && p->block_size != 32)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "block_size %d unsupported (8, 16 or 32)",
                         (int)p->block_size);
    if (p->num_blocks < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "num_blocks %d < 1", (int)p->num_blocks);
    if (p->max_blocks_per_seq < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "max_blocks_per_seq %d < 1", (int)p->max_blocks_per_seq);
    if (p->num_host_blocks < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "num_host_blocks %d < 0", (int)p->num_host_blocks);
    /* Slots and sequence lengths are int32 on every backend. */
    if ((int64_t)p->num_blocks * p->block_size > INT32_MAX)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "num_blocks %d * block_size %d exceeds the int32 slot range",
                         (int)p->num_blocks, (int)p->block_size);
    if ((int64_t)p->max_blocks_per_seq * p->block_size > INT32_MAX)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "max_blocks_per_seq %d * block_size %d exceeds the int32 position range",
                         (int)p->max_blocks_per_seq, (int)p->block_size);
    if ((int64_t)p->num_host_blocks * p->block_size > INT32_MAX)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "num_host_blocks %d * block_size %d exceeds the int32 range",
                         (int)p->num_host_blocks, (int)p->block_size);
    return KVRT_OK;
}

static uint32_t bucket_count(int32_t num_blocks)
{
    uint32_t n = 16;
    while (n < (uint32_t)num_blocks && n < (1u << 30))
        n <<= 1;
    return n;
}

static void init_records(kvrt_block_manager *bm)
{
    /* Every block starts free and unhashed, queued in id order. */
    for (int32_t i = 0; i < bm->num_blocks; i++) {
        kvrt_bm_block *b = &bm->blocks[i];
        memset(b, 0, sizeof(*b));
        b->id = i;
        b->prev_free = i > 0 ? i - 1 : KVRT_BM_NONE;
        b->next_free = i + 1 < bm->num_blocks ? i + 1 : KVRT_BM_NONE;
        b->next_hash = KVRT_BM_NONE;
        b->in_free = 1;
    }
    bm->free_head = 0;
    bm->free_tail = bm->num_blocks - 1;
    bm->num_free = bm->num_blocks;
    for (uint32_t i = 0; i < bm->num_buckets; i++)
        bm->buckets[i] = KVRT_BM_NONE;
    /* Pop order 0, 1, 2, ... makes allocations easy to follow in tests. */
    for (int32_t i = 0; i < bm->num_host_blocks; i++)
        bm->host_free[i] = bm->num_host_blocks - 1 - i;
    bm->host_num_free = bm->num_host_blocks;
    bm->hash_mask = UINT64_MAX;
    bm->next_cid = 1;
}

kvrt_status kvrt_block_manager_create(const kvrt_block_manager_params *params, kvrt_block_manager **out,
                                      kvrt_error *err)
{
    kvrt_error_clear(err);
    if (out)
        *out = NULL;
    if (!out || !params)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_block_manager_create: %s is NULL",
                         out ? "params" : "out");
    KVRT_TRY(check_params(params, err));
    const kvrt_allocator *a = params->allocator;
    kvrt_block_manager *bm = kvrt_calloc(a, 1, sizeof(*bm));
    if (!bm)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "kvrt_block_manager_create: out of host memory");
    bm->alloc = a;
    bm->num_blocks = params->num_blocks;
    bm->block_size = params->block_size;
    bm->max_blocks_per_seq = params->max_blocks_per_seq;
    bm->num_host_blocks = params->num_host_blocks;
    bm->prefix_cache = params->enable_prefix_cache != 0;
    bm->num_buckets = bucket_count(params->num_blocks);
    size_t bs = (size_t)params->block_size;
    bm->blocks = kvrt_calloc(a, (size_t)bm->num_blocks, sizeof(kvrt_bm_block));
    bm->tokens = kvrt_calloc(a, (size_t)bm->num_blocks * bs, sizeof(int32_t));
    bm->buckets = kvrt_calloc(a, bm->num_buckets, sizeof(int32_t));
    bm->host = kvrt_calloc(a, (size_t)bm->num_host_blocks, sizeof(kvrt_bm_host_slot));
    bm->host_tokens = kvrt_calloc(a, (size_t)bm->num_host_blocks * bs, sizeof(int32_t));
    bm->host_free = kvrt_calloc(a, (size_t)bm->num_host_blocks, sizeof(int32_t));
    if (!bm->blocks || !bm->tokens || !bm->buckets || !bm->host || !bm->host_tokens || !bm->host_free) {
        kvrt_block_manager_destroy(bm);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                         "kvrt_block_manager_create: out of host memory for %d blocks of %d tokens",
                         (int)params->num_blocks, (int)params->block_size);
    }
    init_records(bm);
    bm->stats.blocks_total = bm->num_blocks;
    bm->stats.host_blocks_total = bm->num_host_blocks;
    *out = bm;
    return KVRT_OK;
}

void kvrt_block_manager_destroy(kvrt_block_manager *bm)
{
    if (!bm)
        return;
    const kvrt_allocator *a = bm->alloc;
    for (int32_t i = 0; i < bm->seq_cap; i++)
        kvrt_free(a, bm->seqs[i]);
    kvrt_free(a, bm->seqs);
    kvrt_free(a, bm->seq_free_ids);
    kvrt_free(a, bm->blocks);
    kvrt_free(a, bm->tokens);
    kvrt_free(a, bm->buckets);
    kvrt_free(a, bm->host);
    kvrt_free(a, bm->host_tokens);
    kvrt_free(a, bm->host_free);
    kvrt_free(a, bm);
}

const char *kvrt_block_manager_message(const kvrt_block_manager *bm)
{
    return bm ? bm->err.message : "block manager is NULL";
}

kvrt_status kvrt_bm_get_stats(kvrt_block_manager *bm, kvrt_bm_stats *out)
{
    if (!bm)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (!out)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_bm_get_stats: out is NULL");
    *out = bm->stats;
    out->blocks_used = bm->num_blocks - bm->num_free;
    out->blocks_free = bm->num_free;
    out->blocks_cached = bm->num_cached;
    out->host_blocks_used = bm->num_host_blocks - bm->host_num_free;
    out->num_seqs = bm->num_seqs;
    return KVRT_OK;
}

/* ---- free queue ------------------------------------------------------------------ */

static void queue_remove(kvrt_block_manager *bm, kvrt_bm_block *b)
{
    if (b->prev_free != KVRT_BM_NONE)
        bm->blocks[b->prev_free].next_free = b->next_free;
    else
        bm->free_head = b->next_free;
    if (b->next_free != KVRT_BM_NONE)
        bm->blocks[b->next_free].prev_free = b->prev_free;
    else
        bm->free_tail = b->prev_free;
    b->prev_free = b->next_free = KVRT_BM_NONE;
    b->in_free = 0;
    bm->num_free--;
    if (b->registered)
        bm->num_cached--;
}

static void queue_push(kvrt_block_manager *bm, kvrt_bm_block *b, bool at_tail)
{
    if (at_tail) {
        b->prev_free = bm->free_tail;
        b->next_free = KVRT_BM_NONE;
        if (bm->free_tail != KVRT_BM_NONE)
            bm->blocks[bm->free_tail].next_free = b->id;
        else
            bm->free_head = b->id;
        bm->free_tail = b->id;
    } else {
        b->next_free = bm->free_head;
        b->prev_free = KVRT_BM_NONE;
        if (bm->free_head != KVRT_BM_NONE)
            bm->blocks[bm->free_head].prev_free = b->id;
        else
            bm->free_tail = b->id;
        bm->free_head = b->id;
    }
    b->in_free = 1;
    bm->num_free++;
    if (b->registered)
        bm->num_cached++;
}

/* ---- registry ------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    /* splitmix64's finaliser: every input bit reaches every output bit. */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t kvrt_bm_root_hash(void)
{
    return 0x6b7672745f6b7631ull; /* an arbitrary constant: the "parent" of every first block */
}

uint64_t kvrt_bm_hash_block(const kvrt_block_manager *bm, uint64_t parent_hash, const int32_t *tokens,
                            uint64_t extra)
{
    uint64_t h = mix64(parent_hash ^ 0x9e3779b97f4a7c15ull);
    h = mix64(h ^ mix64(extra + 0x632be59bd9b4e019ull));
    for (int32_t i = 0; i < bm->block_size; i++)
        h = mix64(h ^ ((uint64_t)(uint32_t)tokens[i] + ((uint64_t)i << 32)));
    return h & bm->hash_mask;
}

static uint32_t bucket_of(const kvrt_block_manager *bm, uint64_t hash)
{
    return (uint32_t)(mix64(hash) & (bm->num_buckets - 1));
}

static bool same_key(const kvrt_block_manager *bm, const kvrt_bm_block *b, uint64_t hash, uint64_t parent_cid,
                     uint64_t extra, const int32_t *tokens)
{
    /* The hash only narrows the search; equality of the exact contents decides. */
    return b->hash == hash && b->parent_cid == parent_cid && b->extra == extra &&
           memcmp(&bm->tokens[(size_t)b->id * (size_t)bm->block_size], tokens,
                  (size_t)bm->block_size * sizeof(int32_t)) == 0;
}

int32_t kvrt_bm_registry_find(const kvrt_block_manager *bm, uint64_t hash, uint64_t parent_cid, uint64_t extra,
                              const int32_t *tokens)
{
    for (int32_t id = bm->buckets[bucket_of(bm, hash)]; id != KVRT_BM_NONE; id = bm->blocks[id].next_hash) {
        if (same_key(bm, &bm->blocks[id], hash, parent_cid, extra, tokens))
            return id;
    }
    return KVRT_BM_NONE;
}

static void registry_remove(kvrt_block_manager *bm, kvrt_bm_block *b)
{
    int32_t *link = &bm->buckets[bucket_of(bm, b->hash)];
    while (*link != KVRT_BM_NONE && *link != b->id)
        link = &bm->blocks[*link].next_hash;
    if (*link == b->id)
        *link = b->next_hash;
    b->next_hash = KVRT_BM_NONE;
    b->registered = 0;
    if (b->in_free)
        bm->num_cached--;
}

void kvrt_bm_unregister(kvrt_block_manager *bm, int32_t id)
{
    if (bm->blocks[id].registered)
        registry_remove(bm, &bm->blocks[id]);
}

void kvrt_bm_registry_add_unique(kvrt_block_manager *bm, int32_t id)
{
    kvrt_bm_block *b = &bm->blocks[id];
    if (!bm->prefix_cache || !b->keyed || b->registered)
        return;
    const int32_t *toks = &bm->tokens[(size_t)id * (size_t)bm->block_size];
    if (kvrt_bm_registry_find(bm, b->hash, b->parent_cid, b->extra, toks) != KVRT_BM_NONE)
        return; /* an identical block already serves lookups */
    uint32_t k = bucket_of(bm, b->hash);
    b->next_hash = bm->buckets[k];
    bm->buckets[k] = id;
    b->registered = 1;
    if (b->in_free)
        bm->num_cached++;
}

void kvrt_bm_seal_block(kvrt_block_manager *bm, int32_t id, uint64_t parent_hash, uint64_t parent_cid,
                        uint64_t extra)
{
    kvrt_bm_block *b = &bm->blocks[id];
    const int32_t *toks = &bm->tokens[(size_t)id * (size_t)bm->block_size];
    b->hash = kvrt_bm_hash_block(bm, parent_hash, toks, extra);
    b->parent_cid = parent_cid;
    b->extra = extra;
    b->keyed = 1;
    /* A duplicate shares the registered block's identity, so blocks that
     * follow it can be found through the registered chain. */
    int32_t twin = kvrt_bm_registry_find(bm, b->hash, parent_cid, extra, toks);
    if (twin != KVRT_BM_NONE) {
        b->cid = bm->blocks[twin].cid;
        return;
    }
    b->cid = bm->next_cid++;
    kvrt_bm_registry_add_unique(bm, id);
}

kvrt_status kvrt_bm_reset_prefix_cache(kvrt_block_manager *bm)
{
    if (!bm)
        return KVRT_ERR_INVALID_ARGUMENT;
    for (int32_t i = 0; i < bm->num_blocks; i++) {
        if (bm->blocks[i].registered)
            registry_remove(bm, &bm->blocks[i]);
    }
    return KVRT_OK;
}

/* ---- allocation -------------------------------------------------------------------- */

int32_t kvrt_bm_pool_take(kvrt_block_manager *bm)
{
    int32_t id = bm->free_head;
    kvrt_bm_block *b = &bm->blocks[id];
    queue_remove(bm, b);
    if (b->registered) {
        registry_remove(bm, b);
        bm->stats.evictions++;
    }
    b->ref_cnt = 1;
    b->fill = 0;
    b->keyed = 0;
    b->hash = 0;
    b->cid = b->parent_cid = b->extra = 0;
    bm->stats.allocations++;
    return id;
}

void kvrt_bm_pool_unref(kvrt_block_manager *bm, int32_t id)
{
    kvrt_bm_block *b = &bm->blocks[id];
    if (--b->ref_cnt == 0) {
        /* Cached blocks go to the tail (evicted last); plain free blocks to the
         * head, so they are reused before any cached contents are lost. */
        queue_push(bm, b, b->registered != 0);
    }
}

void kvrt_bm_pool_ref(kvrt_block_manager *bm, int32_t id)
{
    kvrt_bm_block *b = &bm->blocks[id];
    if (b->ref_cnt++ == 0)
        queue_remove(bm, b);
}

kvrt_status kvrt_bm_debug_set_hash_bits(kvrt_block_manager *bm, int bits)
{
    if (!bm)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (bits < 1 || bits > 64)
        return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "hash bits %d outside 1..64", bits);
    for (int32_t i = 0; i < bm->num_blocks; i++) {
        if (bm->blocks[i].keyed)
            return kvrt_fail(&bm->err, KVRT_ERR_INVALID_ARGUMENT, "hash bits can change only before any block is full");
    }
    bm->hash_mask = bits == 64 ? UINT64_MAX : ((1ull << bits) - 1);
    return KVRT_OK;
}
