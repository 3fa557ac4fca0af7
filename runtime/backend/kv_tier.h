/*
 * The host tier that computes (issue 18): a KV pool in host memory with the
 * device pool's block layout, owned by a CPU backend of its own, beside a
 * KV cache object's device pool. Blocks move between the two byte for byte
 * (the layout is the same everywhere), and attention over a sequence whose
 * oldest blocks live on the host runs split by tier: the cache's backend
 * over the device-resident blocks, the CPU backend over the host-resident
 * ones, each with its rows' log-sum-exp, merged exactly as split-K
 * partitions are.
 *
 * A sequence's block table keeps DESIGN.md's format; n_host[s] says how many
 * of its leading entries are host slots (ids in [0, num_host_blocks)) rather
 * than device blocks. Host blocks are always a prefix of whole blocks that
 * end before the step's first new token, so each tier sees a contiguous key
 * range: the device tier gets the table shifted by n_host entries and the
 * length shortened by n_host * block_size (attention reads keys after RoPE,
 * so only the mask cares about positions: causality and the window are
 * relative and survive the shift), the host tier a table of n_host entries
 * that every query sees whole. Sinks, and a window that could hide host
 * keys, are refused while blocks are on the host.
 *
 * On a CPU cache both tiers are host memory: the split still runs (two CPU
 * pools), which is what the engine avoids by not offloading there.
 * One thread at a time, like the cache it sits beside; inside a call the
 * host half runs on a thread of its own while the device half runs.
 */
#ifndef KVRT_KV_TIER_H
#define KVRT_KV_TIER_H

#include "backend/kv_cache_internal.h"

typedef struct kvrt_kv_tier kvrt_kv_tier;

typedef struct kvrt_kv_tier_params {
    int32_t num_host_blocks; /* host slots, >= 1 */
    int32_t n_threads;       /* CPU threads of the host tier's attention; 0 = the process's cores */
    /* Host memory the pool must fit in, bytes; 0 = this machine's physical
     * memory. A larger pool is refused before anything is allocated. */
    uint64_t host_memory;
} kvrt_kv_tier_params;

/* Counters (what the issue asks to see). Times are host wall-clock seconds. */
typedef struct kvrt_kv_tier_stats {
    int32_t num_host_blocks;
    uint64_t host_pool_bytes;
    int64_t blocks_to_host, blocks_to_device; /* blocks moved */
    uint64_t bytes_to_host, bytes_to_device;  /* bytes moved (every layer, K and V) */
    int64_t split_calls;                      /* attention calls that ran split */
    double device_attn_s, host_attn_s, merge_s;
} kvrt_kv_tier_stats;

/* Creates the host pool beside `cache` (same layers, heads, block size and
 * KV type). KVRT_ERR_OUT_OF_HOST_MEMORY, naming the bytes, when the pool
 * exceeds host memory; INVALID_ARGUMENT for a count below 1. */
kvrt_status kvrt_kv_tier_create(kvrt_kv_cache *cache, const kvrt_kv_tier_params *p, kvrt_kv_tier **out,
                                kvrt_error *err);
void kvrt_kv_tier_destroy(kvrt_kv_tier *t);
const char *kvrt_kv_tier_message(const kvrt_kv_tier *t);
void kvrt_kv_tier_get_stats(const kvrt_kv_tier *t, kvrt_kv_tier_stats *out);
/* Bytes of one slot (every layer, K and V). */
size_t kvrt_kv_tier_slot_bytes(const kvrt_kv_tier *t);

/* Moves whole blocks (every layer, K and V), immediately:
 * to_host pairs[i] = {device block, host slot}; to_device {host slot, device block}. */
kvrt_status kvrt_kv_tier_to_host(kvrt_kv_tier *t, const int32_t (*pairs)[2], int32_t n_pairs);
kvrt_status kvrt_kv_tier_to_device(kvrt_kv_tier *t, const int32_t (*pairs)[2], int32_t n_pairs);

/* Decode attention over host arrays, as kvrt_attention_decode, with
 * n_host [num_seqs] (NULL = none on the host). d: num_seqs, n_heads,
 * max_blocks_per_seq, scale (0 = 1/sqrt(head_dim)), window, sinks; strides
 * are n_heads * head_dim.
 * q, out: [num_seqs][n_heads][head_dim]. */
kvrt_status kvrt_kv_tier_attn_decode(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d, const float *q,
                                     const int32_t *seq_lens, const int32_t *block_tables, const int32_t *n_host,
                                     float *out);
/* Prefill attention, as kvrt_attention_prefill, with n_host as above (the
 * host blocks end before each sequence's first new token). */
kvrt_status kvrt_kv_tier_attn_prefill(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d,
                                      const int32_t *query_start_loc, const float *q, const int32_t *seq_lens,
                                      const int32_t *block_tables, const int32_t *n_host, float *out);

/* A step's batch whose n_host is set, as the model's forward runs it:
 * *dev is b with seq_lens and block_tables of the device tier (each
 * sequence shifted past its host blocks; positions stay absolute, and the
 * mask only looks at them relative to each other), in the tier's scratch,
 * valid until the next call; the host rows are checked against the host
 * pool. dev->n_host is NULL. */
kvrt_status kvrt_kv_tier_device_batch(kvrt_kv_tier *t, const kvrt_batch *b, kvrt_batch *dev);
/* The host half of one layer of that step: q, att [num_tokens][n_heads *
 * head_dim] and lse [num_tokens][n_heads] are host copies of the device
 * half's query, output and log-sum-exp (run on *dev with the _lse
 * entries); the CPU attends each token of a sequence with host blocks over
 * them and merges into att. d: n_heads and scale. */
kvrt_status kvrt_kv_tier_host_layer(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d, const kvrt_batch *b,
                                    const float *q, float *att, float *lse);
/* The same in two halves, so the CPU works while the device does: begin
 * copies the host rows of q and starts the CPU on them on a thread of its
 * own (*job NULL when the batch has none; q may be reused at once); end
 * waits for it and, when att is given, merges into att / lse as
 * host_layer does (att NULL: the device half failed; the job is only
 * waited for). Every begin that set *job needs its end. */
typedef struct kvrt_kv_tier_job kvrt_kv_tier_job;
kvrt_status kvrt_kv_tier_host_begin(kvrt_kv_tier *t, int32_t layer, const kvrt_attn_desc *d, const kvrt_batch *b,
                                    const float *q, kvrt_kv_tier_job **job);
kvrt_status kvrt_kv_tier_host_end(kvrt_kv_tier *t, kvrt_kv_tier_job *job, float *att, float *lse);

/* The forward times the device half (its attention and the transfers of
 * its rows) and adds it here. */
void kvrt_kv_tier_add_device_time(kvrt_kv_tier *t, double seconds);

/* Merges two partial results of the same rows over disjoint key ranges:
 * o1 = (w1 o1 + w2 o2) / (w1 + w2), w = exp(lse - max), in place in o1 and
 * lse1. Rows: [n][n_heads][head_dim] and [n][n_heads]; a side whose lse is
 * -inf (no key) contributes nothing. */
void kvrt_kv_tier_merge(float *o1, float *lse1, const float *o2, const float *lse2, int64_t n, int32_t n_heads,
                        int32_t head_dim);

#endif /* KVRT_KV_TIER_H */
