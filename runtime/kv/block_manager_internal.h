/* Internals of the KV block manager, shared by the runtime/kv sources and the tests
 * (which read the records directly and run the invariant checker). Not installed. */
#ifndef KVRT_BLOCK_MANAGER_INTERNAL_H
#define KVRT_BLOCK_MANAGER_INTERNAL_H

#include "common/kvrt_internal.h"

#define KVRT_BM_NONE (-1)

/* One device block. Its token ids live in bm->tokens[id * block_size ...]. */
typedef struct kvrt_bm_block {
    int32_t id;
    int32_t ref_cnt;     /* sequences whose table holds this block */
    uint64_t hash;       /* prefix hash; meaningful once full (prefix cache on) */
    int32_t prev_free;   /* free queue links (LRU order), KVRT_BM_NONE at the ends */
    int32_t next_free;
    int32_t next_hash;   /* next block of the same hash bucket (registered blocks only) */
    int32_t fill;        /* token positions written, 0..block_size */
    uint8_t in_free;     /* on the free queue (exactly when ref_cnt == 0) */
    uint8_t registered;  /* in the prefix-cache table */
    uint8_t keyed;       /* hash/cid/parent_cid/extra are set (full, prefix cache on) */
    uint64_t cid;        /* identity of the exact contents (token chain + extra); never reused */
    uint64_t parent_cid; /* cid of the block before it in its sequence; 0 for the first block */
    uint64_t extra;      /* extra_key of the sequence that filled it */
} kvrt_bm_block;

/* One host-tier slot: a swapped-out block's bookkeeping travels with it. */
typedef struct kvrt_bm_host_slot {
    int32_t fill;
    uint8_t in_use;
    uint8_t keyed;
    uint64_t hash, cid, parent_cid, extra;
} kvrt_bm_host_slot;

typedef struct kvrt_bm_seq {
    int32_t id;
    int32_t seq_len;      /* positions appended or matched */
    int32_t n_released;   /* table entries set to -1 by a sliding window */
    uint8_t swapped;      /* table holds host slots instead of device blocks */
    int32_t n_host;       /* resident: leading entries offloaded to host slots (kvrt_bm_offload) */
    uint8_t shifted;      /* context-shifted (kvrt_bm_shift): its new full blocks are never sealed */
    uint64_t extra_key;
    uint64_t chain_hash;  /* hash of the last full block (root seed when none) */
    uint64_t chain_cid;   /* cid of the last full block (0 when none) */
    int32_t table[];      /* [max_blocks_per_seq] */
} kvrt_bm_seq;

struct kvrt_block_manager {
    const kvrt_allocator *alloc;
    kvrt_error err;
    int32_t num_blocks, block_size, max_blocks_per_seq, num_host_blocks;
    bool prefix_cache;

    kvrt_bm_block *blocks;      /* [num_blocks] */
    int32_t *tokens;            /* [num_blocks][block_size] token ids written into each block */
    int32_t free_head, free_tail;
    int32_t num_free;           /* blocks on the free queue (ref_cnt 0) */
    int32_t num_cached;         /* free blocks still registered */

    int32_t *buckets;           /* [num_buckets] head block of each hash chain */
    uint32_t num_buckets;       /* power of two */
    uint64_t hash_mask;         /* all ones; tests narrow it to force collisions */
    uint64_t next_cid;

    kvrt_bm_host_slot *host;    /* [num_host_blocks] */
    int32_t *host_tokens;       /* [num_host_blocks][block_size] */
    int32_t *host_free;         /* [num_host_blocks] stack of free slots */
    int32_t host_num_free;

    kvrt_bm_seq **seqs;         /* [seq_cap] NULL for unused ids */
    int32_t *seq_free_ids;      /* [seq_cap] stack of unused ids */
    int32_t seq_cap, seq_num_free_ids, num_seqs;

    kvrt_bm_stats stats;        /* event counters; the gauges are filled on read */
};

/* ---- pool (block_pool.c) ---------------------------------------------------- */

/* Takes the LRU head of the free queue (evicting its hash); the caller checked num_free. */
int32_t kvrt_bm_pool_take(kvrt_block_manager *bm);
/* Drops one reference; at 0 the block joins the free queue (tail if registered, else head). */
void kvrt_bm_pool_unref(kvrt_block_manager *bm, int32_t id);
/* Adds one reference to a block already in use or cached (leaves the free queue at 0). */
void kvrt_bm_pool_ref(kvrt_block_manager *bm, int32_t id);

/* Hash of a full block from its parent's hash, its tokens and extra_key. */
uint64_t kvrt_bm_hash_block(const kvrt_block_manager *bm, uint64_t parent_hash, const int32_t *tokens,
                            uint64_t extra);
uint64_t kvrt_bm_root_hash(void);
/* Registered block with exactly this key, or KVRT_BM_NONE. */
int32_t kvrt_bm_registry_find(const kvrt_block_manager *bm, uint64_t hash, uint64_t parent_cid, uint64_t extra,
                              const int32_t *tokens);
/* Gives a newly full block its key and registers it unless an identical block is registered. */
void kvrt_bm_seal_block(kvrt_block_manager *bm, int32_t id, uint64_t parent_hash, uint64_t parent_cid,
                        uint64_t extra);
/* Registers a keyed full block unless an identical one is registered. */
void kvrt_bm_registry_add_unique(kvrt_block_manager *bm, int32_t id);
/* Takes a block out of the prefix-cache table (no-op when it is not in it). */
void kvrt_bm_unregister(kvrt_block_manager *bm, int32_t id);

/* ---- sequences (block_manager.c) -------------------------------------------- */

/* Validates bm and seq; sets the message and returns the failure status. */
kvrt_status kvrt_bm_lookup_seq(kvrt_block_manager *bm, int32_t seq, const char *fn, kvrt_bm_seq **out);

/* ---- test hooks ---------------------------------------------------------------- */

/* Keeps only the low `bits` bits (1..64) of every hash, so tests can force
 * collisions. Only while no block is keyed (right after create). */
kvrt_status kvrt_bm_debug_set_hash_bits(kvrt_block_manager *bm, int bits);

/* Checks every invariant: refcounts equal the number of table entries holding
 * each block, the free queue links exactly the ref_cnt-0 blocks, registered
 * blocks are full, keyed, unique and in their bucket, host slots are owned by
 * exactly one swapped sequence, fills match sequence lengths, counters agree.
 * KVRT_OK, or KVRT_ERR_INTERNAL with the first violation in msg. */
kvrt_status kvrt_bm_check_invariants(const kvrt_block_manager *bm, char *msg, size_t msg_size);

#endif /* KVRT_BLOCK_MANAGER_INTERNAL_H */
