/*
 * KV block manager: host-side bookkeeping of a paged KV cache (DESIGN.md "The
 * KV manager"). Include through kvrt.h.
 *
 * The manager never touches KV bytes. It owns a pool of `num_blocks` device
 * blocks of `block_size` token positions, hands out sequence ids, keeps one
 * block table row per sequence and tells the caller which bytes to move: slot
 * mappings for new tokens, (src, dst) copies for copy-on-write, and (from, to)
 * pairs for swapping to and from a host tier. The caller (engine, scheduler or
 * a test) applies them with the kv cache API of kvrt_attention.h.
 *
 * Vocabulary (DESIGN.md):
 *  - A block holds block_size consecutive positions. Table entry i of a
 *    sequence holds positions [i*block_size, (i+1)*block_size). Unused entries
 *    and entries released by a sliding window are -1. A slot is
 *    block_id * block_size + offset.
 *  - used = blocks with ref_cnt > 0; free = ref_cnt 0 (cached ones included);
 *    cached = free blocks that still hold a prefix hash. After every sequence
 *    is freed, used == 0 and free == total.
 *  - Blocks are shared between sequences by fork and by the prefix cache
 *    (ref_cnt counts the sequences holding a block). Appends only ever write
 *    into a sequence's last, partially filled block; when that block is shared
 *    it is first copied (copy-on-write). Full blocks are immutable.
 *
 * Prefix cache: when a block becomes full it is keyed by a 64-bit hash of
 * (previous block's hash, its block_size token ids, the sequence's extra_key)
 * and registered, unless an identical block is registered already. Freed
 * blocks keep their contents and hash, queued in LRU order (least recently
 * freed first; a sequence's later blocks before its earlier ones), until an
 * allocation needs them (an eviction). Blocks without a hash are reused first.
 * Hash collisions never return a wrong block: the manager stores the token ids
 * of every block and, per full block, the exact identity of the block before
 * it (a 64-bit id never reused for different contents), and a lookup compares
 * token ids, extra_key and that parent identity, not just the hash.
 *
 * Naming: kvrt_block_manager_* for the object's lifecycle, kvrt_bm_* (the short
 * form) for everything it does.
 *
 * Errors: every function returns a kvrt_status; the message of the last failed
 * call is kvrt_block_manager_message(). A failed call changes nothing (no
 * block, counter, table or output is modified), except where stated.
 * A NULL manager gives KVRT_ERR_INVALID_ARGUMENT (with no message to read).
 *
 * Ownership: pointer arguments are read or written only during the call; the
 * manager keeps no reference to caller memory (except the allocator, which
 * must outlive it).
 *
 * Threading: a manager may be used by one thread at a time (including the
 * const readers); distinct managers are independent.
 */
#ifndef KVRT_KV_H
#define KVRT_KV_H

#include "kvrt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_block_manager kvrt_block_manager;

typedef struct kvrt_block_manager_params {
    int32_t num_blocks;          /* device blocks in the pool, >= 1 */
    int32_t block_size;          /* token positions per block: 8, 16 or 32 */
    int32_t max_blocks_per_seq;  /* length of a block table row, >= 1 */
    int32_t num_host_blocks;     /* host-tier slots for swapping; 0 = no swapping */
    int32_t enable_prefix_cache; /* nonzero: hash and register full blocks */
    const kvrt_allocator *allocator; /* host memory; NULL = malloc. Must outlive the manager. */
} kvrt_block_manager_params;

/* Defaults: block_size 16, prefix cache on, no host tier, malloc; num_blocks
 * and max_blocks_per_seq are 0 and must be set by the caller. */
KVRT_API kvrt_block_manager_params kvrt_block_manager_default_params(void);

/* Creates a manager; every block and host-slot record is allocated here, up
 * front (later calls allocate only per-sequence records: seq_create, fork).
 * Errors: INVALID_ARGUMENT (params or out NULL, sizes < 1, block_size not 8/16/32,
 * num_host_blocks < 0, num_blocks * block_size or max_blocks_per_seq *
 * block_size beyond INT32_MAX), OUT_OF_HOST_MEMORY. On failure *out = NULL and
 * `err` (may be NULL) holds the message. */
KVRT_API kvrt_status kvrt_block_manager_create(const kvrt_block_manager_params *params,
                                               kvrt_block_manager **out, kvrt_error *err);
/* Frees the manager and every sequence it still holds. NULL is a no-op. */
KVRT_API void kvrt_block_manager_destroy(kvrt_block_manager *bm);
/* Message of the last failed call ("" if none). Valid until the next call on bm. Never NULL. */
KVRT_API const char *kvrt_block_manager_message(const kvrt_block_manager *bm);

/* ---- counters -------------------------------------------------------------- */

typedef struct kvrt_bm_stats {
    int32_t blocks_total;       /* num_blocks */
    int32_t blocks_used;        /* ref_cnt > 0 */
    int32_t blocks_free;        /* ref_cnt == 0, cached included; used + free == total */
    int32_t blocks_cached;      /* free blocks that still hold a prefix hash */
    int32_t host_blocks_total;  /* num_host_blocks */
    int32_t host_blocks_used;   /* host slots holding a swapped-out block */
    int32_t num_seqs;           /* live sequences (resident or swapped out) */
    int64_t prefix_lookups;     /* kvrt_bm_match_prefix calls with the prefix cache on */
    int64_t prefix_query_tokens;/* tokens passed to those calls */
    int64_t prefix_hit_tokens;  /* tokens they covered */
    int64_t prefix_hit_blocks;  /* blocks they adopted */
    int64_t evictions;          /* cached blocks whose hash was dropped to reuse the block */
    int64_t cow_copies;         /* copy-on-write copies reported by kvrt_bm_append */
    int64_t blocks_swapped_out; /* (device, host) pairs reported by kvrt_bm_swap_out */
    int64_t blocks_swapped_in;  /* (host, device) pairs reported by kvrt_bm_swap_in */
    int64_t allocations;        /* blocks taken from the free queue (appends, CoW, swap-in) */
    int64_t blocks_offloaded;   /* (device, host) pairs reported by kvrt_bm_offload */
} kvrt_bm_stats;

/* Fills *out. Errors: INVALID_ARGUMENT (NULL). */
KVRT_API kvrt_status kvrt_bm_get_stats(kvrt_block_manager *bm, kvrt_bm_stats *out);

/* ---- sequences ------------------------------------------------------------- */

/* Creates an empty sequence and returns its id (>= 0) in *out_seq. extra_key
 * is mixed into every block hash of the sequence: give sequences whose KV for
 * the same tokens differs (another LoRA adapter, model, ...) different keys.
 * Ids of freed sequences are reused. Errors: INVALID_ARGUMENT (out_seq NULL),
 * OUT_OF_HOST_MEMORY. */
KVRT_API kvrt_status kvrt_bm_seq_create(kvrt_block_manager *bm, uint64_t extra_key, int32_t *out_seq);

/* Frees a sequence (resident or swapped out): drops its reference on each of
 * its blocks, host slots are returned. Blocks reaching ref_cnt 0 join the free
 * queue; those with a prefix hash stay cached at its tail. The id becomes
 * invalid. Errors: NO_SUCH_SEQUENCE. */
KVRT_API kvrt_status kvrt_bm_seq_free(kvrt_block_manager *bm, int32_t seq);

/* Creates a child sharing every block of `parent` (each ref_cnt + 1), with
 * the same tokens, length and extra_key. The first append into a shared,
 * partially filled last block copies it (see kvrt_bm_append).
 * Errors: NO_SUCH_SEQUENCE, INVALID_ARGUMENT (out_child NULL, parent swapped
 * out), OUT_OF_HOST_MEMORY. */
KVRT_API kvrt_status kvrt_bm_seq_fork(kvrt_block_manager *bm, int32_t parent, int32_t *out_child);

typedef struct kvrt_bm_seq_info {
    int32_t seq_len;        /* positions appended or matched so far (the context length) */
    int32_t stored_tokens;  /* positions whose KV the sequence still holds (seq_len minus window-released blocks) */
    int32_t num_entries;    /* block table entries in use: ceil(seq_len / block_size), -1 entries included */
    int32_t num_blocks;     /* entries that hold a block (device block, or host slot when swapped) */
    int32_t swapped;        /* 1 when swapped out to the host tier */
    uint64_t extra_key;
    int32_t num_host;       /* resident: leading entries offloaded to host slots (kvrt_bm_offload) */
} kvrt_bm_seq_info;

/* Fills *out. Errors: NO_SUCH_SEQUENCE, INVALID_ARGUMENT (out NULL). */
KVRT_API kvrt_status kvrt_bm_get_seq_info(kvrt_block_manager *bm, int32_t seq, kvrt_bm_seq_info *out);

/* Copies the block table rows of n_seqs sequences into `tables`, int32
 * [n_seqs][row_len] row-major (DESIGN.md layout; pass row_len =
 * max_blocks_per_seq for the canonical shape); entries past a sequence's
 * num_entries are -1. Errors: INVALID_ARGUMENT (NULL arrays, n_seqs < 0,
 * row_len < 1, a sequence with more entries than row_len, a swapped-out
 * sequence), NO_SUCH_SEQUENCE. On error nothing is written. */
KVRT_API kvrt_status kvrt_bm_block_tables(kvrt_block_manager *bm, const int32_t *seqs, int32_t n_seqs,
                                          int32_t *tables, int32_t row_len);

/* ---- appending tokens ------------------------------------------------------ */

/* Number of blocks kvrt_bm_append(seq, n_tokens) would take from the pool:
 * the new blocks plus one when the last block is shared and partial (its
 * copy-on-write). Compare with kvrt_bm_stats.blocks_free. Errors:
 * NO_SUCH_SEQUENCE, INVALID_ARGUMENT (out NULL, n_tokens < 0, swapped out),
 * CONTEXT_OVERFLOW (the sequence would exceed max_blocks_per_seq). */
KVRT_API kvrt_status kvrt_bm_blocks_needed(kvrt_block_manager *bm, int32_t seq, int32_t n_tokens, int32_t *out);

/* What an append did besides writing the slot mapping. `copies` has the
 * shape kvrt_kv_cache_copy_blocks() takes: pass (res.copies, res.n_copies). */
typedef struct kvrt_bm_append_result {
    int32_t n_copies;      /* 0 or 1: copy-on-write of the shared last block */
    int32_t copies[1][2];  /* {src, dst} block ids; the caller copies the KV bytes before writing new tokens */
    int32_t n_new_blocks;  /* blocks taken from the pool, the copy's destination included */
} kvrt_bm_append_result;

/* Appends n_tokens tokens (ids in tokens[n_tokens], used to hash blocks that
 * become full) to a resident sequence. All-or-nothing: the needed blocks are
 * allocated (LRU head of the free queue first, evicting a cached hash if it
 * holds one) and slot_mapping[i] (may be NULL) receives the slot of token i.
 * When the sequence's last block is partially filled and shared, it is copied
 * first and the copy reported in *res (may be NULL). tokens may be NULL when
 * n_tokens is 0. Errors: NO_SUCH_SEQUENCE, INVALID_ARGUMENT (n_tokens < 0,
 * tokens NULL, sequence swapped out), CONTEXT_OVERFLOW (beyond
 * max_blocks_per_seq blocks), OUT_OF_BLOCKS (fewer free blocks than needed;
 * nothing changes, counters included). */
KVRT_API kvrt_status kvrt_bm_append(kvrt_block_manager *bm, int32_t seq, const int32_t *tokens, int32_t n_tokens,
                                    int32_t *slot_mapping, kvrt_bm_append_result *res);

/* ---- prefix cache ---------------------------------------------------------- */

/* For an empty resident sequence, adopts the longest run of cached full
 * blocks whose token ids (and extra_key) match tokens[0 .. n_tokens) from the
 * start: each adopted block's ref_cnt + 1 (leaving the free queue if it was
 * 0). *n_matched receives the tokens covered, a multiple of block_size, and
 * the sequence's length becomes that; the caller then appends the rest.
 * Pass at most n_prompt - 1 tokens: the last prompt token must always be
 * computed, because the model needs its logits (DESIGN.md). With the prefix
 * cache disabled it matches nothing and counts nothing. Errors:
 * NO_SUCH_SEQUENCE, INVALID_ARGUMENT (n_matched NULL, tokens NULL with
 * n_tokens > 0, n_tokens < 0, sequence not empty or swapped out). */
KVRT_API kvrt_status kvrt_bm_match_prefix(kvrt_block_manager *bm, int32_t seq, const int32_t *tokens,
                                          int32_t n_tokens, int32_t *n_matched);

/* Drops every registered prefix hash (cached blocks become plain free blocks;
 * blocks in use keep their contents but are no longer found by lookups).
 * Errors: none besides a NULL manager. */
KVRT_API kvrt_status kvrt_bm_reset_prefix_cache(kvrt_block_manager *bm);

/* ---- sliding window ---------------------------------------------------------- */

/* Releases the blocks of a resident sequence that lie entirely before
 * position `pos` (clamped to seq_len), except blocks holding any of the
 * first `sinks` positions: their table entries become -1 and their
 * references are dropped. For a window W, a query at position i needs keys
 * j > i - W, so pass pos = max(0, i - W + 1) for the earliest query still to run.
 * *n_released (may be NULL) receives the number of blocks released.
 * Errors: NO_SUCH_SEQUENCE, INVALID_ARGUMENT (pos < 0, sinks < 0, swapped out). */
KVRT_API kvrt_status kvrt_bm_release_before(kvrt_block_manager *bm, int32_t seq, int32_t pos, int32_t sinks,
                                            int32_t *n_released);

/* ---- context shift ------------------------------------------------------------- */

/* Context shift of a resident sequence (issue 18): keeps table entries
 * [0, keep), drops the `drop` full blocks after them (references released)
 * and moves the later entries down by `drop`; seq_len shrinks by drop *
 * block_size. The moved entries are the blocks whose keys the caller turns
 * by -drop * block_size positions: turn[0 .. *n_turn) (at most
 * max_blocks_per_seq). They become the sequence's own first: a shared one
 * is copied to a fresh block, copies[0 .. *n_copies) = {src, dst}, which the
 * caller copies before turning; an own one leaves the prefix cache. The
 * sequence's later full blocks are never registered (their keys would name
 * tokens at other positions). All or nothing. Errors: NO_SUCH_SEQUENCE,
 * INVALID_ARGUMENT (NULL outputs, swapped out, blocks in the host tier or
 * window-released, keep < 0, drop < 1, keep + drop past the full blocks),
 * OUT_OF_BLOCKS (the copies need more blocks than are free once the
 * dropped ones are; nothing changed). */
KVRT_API kvrt_status kvrt_bm_shift(kvrt_block_manager *bm, int32_t seq, int32_t keep, int32_t drop, int32_t *turn,
                                   int32_t *n_turn, int32_t (*copies)[2], int32_t *n_copies);

/* ---- swapping to the host tier ------------------------------------------------- */

/* Moves every block of a resident sequence to host slots: pairs[i] = {device
 * block, host slot} (the caller copies the bytes before the device block is
 * reused, i.e. before its next call that allocates), *n_pairs their number.
 * The device references are dropped. A swapped-out sequence keeps its length
 * and can only be freed, inspected or swapped in. All-or-nothing: OUT_OF_BLOCKS
 * when the host tier has fewer free slots than the sequence has blocks.
 * Errors: NO_SUCH_SEQUENCE, INVALID_ARGUMENT (NULL pointers, already swapped
 * out, max_pairs smaller than the sequence's num_blocks), OUT_OF_BLOCKS. */
KVRT_API kvrt_status kvrt_bm_swap_out(kvrt_block_manager *bm, int32_t seq, int32_t (*pairs)[2], int32_t max_pairs,
                                      int32_t *n_pairs);

/* Offloads a resident sequence's oldest blocks to the host tier while it
 * keeps running (issue 18): table entries [num_host, num_host + n) become
 * host slots, n = min(max_blocks, end - num_host) with `end` the entries
 * the caller knows are computed (at most seq_len / block_size: full blocks
 * only). Host blocks are always a prefix of the table; kvrt_bm_block_tables
 * reports their slots in the first num_host entries. pairs[i] = {device
 * block, host slot}: the caller copies the bytes before the device blocks
 * are reused. A sequence with offloaded blocks can be appended to, freed
 * and inspected, not forked, swapped or window-released. Errors:
 * NO_SUCH_SEQUENCE, INVALID_ARGUMENT (NULL pointers, swapped out, end past
 * the full blocks, max_pairs too small), OUT_OF_BLOCKS (host tier has
 * fewer free slots than n; nothing changed). */
KVRT_API kvrt_status kvrt_bm_offload(kvrt_block_manager *bm, int32_t seq, int32_t end, int32_t max_blocks,
                                     int32_t (*pairs)[2], int32_t max_pairs, int32_t *n_pairs);

/* Plans a kvrt_bm_offload: *n_move (<= max_move) of the resident
 * sequence's entries [num_host, end) to move so that `want` device blocks go
 * free, or as many as moving all of them frees; *n_freed the blocks it
 * frees. A block shared with another sequence (prefix cache, fork) moves as
 * a host copy of this sequence's own but frees nothing, so it only moves to
 * reach the blocks after it (host blocks are a prefix of the table); moving
 * stops at the last block that frees one. Errors: as kvrt_bm_offload's. */
KVRT_API kvrt_status kvrt_bm_offload_plan(kvrt_block_manager *bm, int32_t seq, int32_t end, int32_t want,
                                          int32_t max_move, int32_t *n_move, int32_t *n_freed);

/* Brings a swapped-out sequence back: allocates one device block per host
 * slot, pairs[i] = {host slot, device block} (the caller copies the bytes),
 * host slots are released. Full blocks are registered in the prefix cache
 * again unless an identical block is. All-or-nothing: OUT_OF_BLOCKS when the
 * pool has fewer free blocks than needed. Errors: NO_SUCH_SEQUENCE,
 * INVALID_ARGUMENT (NULL pointers, not swapped out, max_pairs too small),
 * OUT_OF_BLOCKS. */
KVRT_API kvrt_status kvrt_bm_swap_in(kvrt_block_manager *bm, int32_t seq, int32_t (*pairs)[2], int32_t max_pairs,
                                     int32_t *n_pairs);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_KV_H */
