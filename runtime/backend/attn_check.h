/* Backend-neutral checks of one attention call's host-side arrays (block
 * tables, sequence lengths, query ranges, slot mappings) against a KV pool.
 * The standalone API runs them before it hands anything to a device (a GPU
 * kernel cannot report a bad table entry); the CPU backend runs them in its
 * entries. Messages go to `err` and name the offending element. Defined in
 * runtime/backend/kv_cache_api.c. */
#ifndef KVRT_ATTN_CHECK_H
#define KVRT_ATTN_CHECK_H

#include "backend/backend.h"

/* Half-open key ranges [lo, hi) visible to the queries at positions
 * [q_lo, q_hi] (q_lo <= q_hi) with window/sinks: at most two, increasing,
 * disjoint; returns how many. Every key inside them is visible to at least
 * one of the queries. */
int kvrt_attn_visible_ranges(int32_t q_lo, int32_t q_hi, int32_t window, int32_t sinks, int32_t ranges[2][2]);

/* Scalar fields of a descriptor (num_seqs, n_heads vs the pool, block table
 * width, window, sinks, scale). */
kvrt_status kvrt_attn_check_desc(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d);

/* seq_lens: [num_seqs]; block_tables: [num_seqs][max_blocks_per_seq].
 * Errors: seq_len < 1, CONTEXT_OVERFLOW beyond the table, an entry outside
 * [0, num_blocks) other than -1, and -1 where a visible key lives. */
kvrt_status kvrt_attn_check_decode(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                   const int32_t *seq_lens, const int32_t *block_tables);

/* As decode, plus query_start_loc: [num_seqs + 1], starts at 0, non-decreasing,
 * no sequence with more new tokens than its length. */
kvrt_status kvrt_attn_check_prefill(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                    const int32_t *query_start_loc, const int32_t *seq_lens,
                                    const int32_t *block_tables);

/* slots: [n]; each < 0 (skipped) or < num_blocks * block_size. */
kvrt_status kvrt_kv_check_slots(kvrt_error *err, const kvrt_kv_pool_desc *pool, const int32_t *slots, int32_t n);

#endif /* KVRT_ATTN_CHECK_H */
