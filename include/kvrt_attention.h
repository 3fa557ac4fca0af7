/*
 * Standalone paged KV cache and attention, usable without a model (in the
 * spirit of FlashInfer's paged API). Include through kvrt.h.
 *
 * Layout (the same on every backend, DESIGN.md): per layer one K and one V
 * pool, each [num_blocks][n_kv_heads][block_size][head_dim]. A slot is
 * block_id * block_size + offset. A block table is int32
 * [num_seqs][max_blocks_per_seq], row-major, unused entries -1.
 *
 * Failures: a call that fails (bad input, a limit, an exhausted budget, a
 * device error) leaves the context and the cache usable, as they were
 * before it, apart from its outputs (out, and the slots of a failed write,
 * which hold old or new values); the next call runs normally.
 *
 * Limits (kvrt_context_get_limits in kvrt.h): head_dim per kernel, the
 * widest block table (num_seqs * max_blocks_per_seq), the longest sequence
 * and the attention scratch one call may take; a call beyond one is refused
 * with KVRT_ERR_UNSUPPORTED and a message naming the limit. Scratch and
 * split-K partitions follow the sequences' lengths (seq_lens), not the width
 * of their tables: a table sized for a long context costs only its upload.
 * A cache larger than the memory budget is refused up front.
 *
 * Ownership: the cache belongs to the context it was created from and must be
 * destroyed before it. Every pointer argument is read (or, for outputs,
 * written) only during the call; kvrt keeps no reference to caller memory.
 * Threading: one thread at a time per cache (and per context); the CPU
 * backend parallelises each call internally over the context's thread pool.
 */
#ifndef KVRT_ATTENTION_H
#define KVRT_ATTENTION_H

#include "kvrt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_kv_cache_params {
    int32_t n_layers;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t block_size; /* 8, 16 or 32 */
    int32_t num_blocks;
    kvrt_dtype dtype;   /* KVRT_DTYPE_F32, F16, Q8_0 or Q4_0 (storage only; math is F32). Q8_0 / Q4_0:
                           8 / 4-bit values in groups of 32 along head_dim (a multiple of 32), one
                           F16 scale per group stored after the block's values; the rounding rule
                           is in docs/architecture.md ("Quantized KV"). K's type, and V's unless
                           v_dtype_set */
    int32_t v_dtype_set; /* nonzero: V is stored in v_dtype (keys are more sensitive than values, so
                            K and V may differ; the CPU takes any pair, GPU backends refuse a pair they
                            do not store, naming it). 0 (older callers): V in dtype too */
    kvrt_dtype v_dtype;
} kvrt_kv_cache_params;

typedef struct kvrt_kv_cache kvrt_kv_cache;

/* Allocates every block of every layer up front (zero-filled).
 * Errors: INVALID_ARGUMENT (zero/negative sizes, unsupported block size or
 * dtype), OUT_OF_HOST_MEMORY / OUT_OF_DEVICE_MEMORY. `err` may be NULL. */
KVRT_API kvrt_status kvrt_kv_cache_create(kvrt_context *ctx, const kvrt_kv_cache_params *params,
                                          kvrt_kv_cache **out, kvrt_error *err);
/* NULL is a no-op. */
KVRT_API void kvrt_kv_cache_destroy(kvrt_kv_cache *cache);
/* Message of the last failed call on this cache ("" if none). */
KVRT_API const char *kvrt_kv_cache_message(const kvrt_kv_cache *cache);
/* Bytes of one block of the K pool of one layer: n_kv_heads*block_size*head_dim*elem,
 * plus the scales of quantized types (2 bytes per 32 values). */
KVRT_API size_t kvrt_kv_cache_block_bytes(const kvrt_kv_cache *cache);
/* The same for K (which = 0) or V (which = 1), which differ when their types do; 0 for
 * a NULL cache or another `which`. */
KVRT_API size_t kvrt_kv_cache_pool_block_bytes(const kvrt_kv_cache *cache, int32_t which);

/* Writes the K and V of n_tokens tokens of `layer`:
 * k, v: F32 [n_tokens][n_kv_heads][head_dim] (keys already rotated);
 * slot_mapping: [n_tokens], slot < 0 skips the token (padding).
 * F16 caches round to nearest even; Q8_0 / Q4_0 quantize each group of 32. */
KVRT_API kvrt_status kvrt_kv_cache_write(kvrt_kv_cache *cache, int32_t layer, const float *k, const float *v,
                                         const int32_t *slot_mapping, int32_t n_tokens);
/* The same with K and V in src_type: KVRT_DTYPE_F32 (as above) or
 * KVRT_DTYPE_F16 (IEEE half, uint16_t [n_tokens][n_kv_heads][head_dim]).
 * F16 into an F16 cache stores the given bits (NaN payloads may come out
 * quieted), F16 into an F32 cache their exact values; the stored bytes are
 * the same on every backend. Other types: INVALID_ARGUMENT. */
KVRT_API kvrt_status kvrt_kv_cache_write_typed(kvrt_kv_cache *cache, int32_t layer, kvrt_dtype src_type,
                                               const void *k, const void *v, const int32_t *slot_mapping,
                                               int32_t n_tokens);

/* Options of an attention call. Query at position i sees key j iff j <= i and
 * (window == 0 or i - j < window or j < sinks). Sequence s reads only the
 * first ceil(seq_lens[s] / block_size) entries of its table row: entries
 * past its length are ignored (never read or checked), and inside it -1 is
 * allowed only for blocks no query of the call can see (released by a
 * window). */
typedef struct kvrt_attention_params {
    int32_t n_heads;            /* query heads, a multiple of n_kv_heads (GQA/MQA) */
    int32_t max_blocks_per_seq; /* row length of block_tables */
    float scale;                /* softmax scale; 0 = 1/sqrt(head_dim) */
    int32_t window;             /* sliding window; 0 = none */
    int32_t sinks;              /* attention sinks: first `sinks` positions always visible */
} kvrt_attention_params;

/* Decode: one query token per sequence, at position seq_lens[s] - 1 (its K/V
 * already written). q, out: F32 [num_seqs][n_heads][head_dim];
 * seq_lens: [num_seqs] (>= 1); block_tables: [num_seqs][max_blocks_per_seq]. */
KVRT_API kvrt_status kvrt_attention_decode(kvrt_kv_cache *cache, int32_t layer, const kvrt_attention_params *params,
                                           int32_t num_seqs, const float *q, const int32_t *seq_lens,
                                           const int32_t *block_tables, float *out);

/* Prefill: sequence s contributes the query tokens [query_start_loc[s],
 * query_start_loc[s+1]), the last tokens of its context, at positions
 * seq_lens[s] - n_new .. seq_lens[s] - 1 (their K/V already written). They
 * attend to the cached prefix and causally to each other.
 * q, out: F32 [num_tokens][n_heads][head_dim], num_tokens = query_start_loc[num_seqs];
 * query_start_loc: [num_seqs + 1], non-decreasing, starting at 0. */
KVRT_API kvrt_status kvrt_attention_prefill(kvrt_kv_cache *cache, int32_t layer, const kvrt_attention_params *params,
                                            int32_t num_seqs, const int32_t *query_start_loc, const float *q,
                                            const int32_t *seq_lens, const int32_t *block_tables, float *out);

/* Copies whole blocks (every layer, K and V): src_dst[i] = {src, dst}, as
 * reported by the block manager's copy-on-write. */
KVRT_API kvrt_status kvrt_kv_cache_copy_blocks(kvrt_kv_cache *cache, const int32_t (*src_dst)[2], int32_t n_pairs);

/* Raw bytes of one block of one pool, kvrt_kv_cache_block_bytes() long, in
 * the layout above: for swapping to a host tier and for moving blocks between
 * backends (valid there without conversion). which: 0 = K, 1 = V. */
KVRT_API kvrt_status kvrt_kv_cache_read_block(kvrt_kv_cache *cache, int32_t layer, int32_t which, int32_t block,
                                              void *dst, size_t dst_size);
KVRT_API kvrt_status kvrt_kv_cache_write_block(kvrt_kv_cache *cache, int32_t layer, int32_t which, int32_t block,
                                               const void *src, size_t src_size);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_ATTENTION_H */
