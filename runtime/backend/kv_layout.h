/*
 * The KV block layout of DESIGN.md in one place: how each KV dtype is
 * stored (its descriptor), the bytes of a block, the visibility rule of
 * attention, and the checks of pool shapes, block tables, slot mappings and
 * a step's batch arrays. Every validator and size computation reads these;
 * a new KV dtype is one row of the descriptor table in kv_layout.c (plus its
 * loader in each backend and the tools' flag table).
 *
 * Layout: per layer one K and one V pool, [num_blocks][n_kv_heads][block_size]
 * [head_dim] values; a dtype with in-block scales stores them after the
 * values of each block, so one block of one pool is one contiguous byte range.
 * A slot is block_id * block_size + offset; a block table is int32
 * [num_seqs][max_blocks_per_seq], unused entries -1. Query at position i sees
 * key j iff j <= i and (window == 0 or i - j < window or j < sinks).
 */
#ifndef KVRT_KV_LAYOUT_H
#define KVRT_KV_LAYOUT_H

#include "common/kvrt_internal.h"

/* Where a KV dtype keeps its scales. */
typedef enum kvrt_kv_scales {
    KVRT_KV_SCALES_NONE = 0,    /* values only (f32, f16) */
    KVRT_KV_SCALES_IN_BLOCK = 1 /* one scale per `group` values of a head_dim row, after the
                                   block's values: [n_kv_heads][block_size][head_dim / group] */
} kvrt_kv_scales;

/* How one KV dtype is stored. */
typedef struct kvrt_kv_dtype_desc {
    kvrt_dtype dtype;
    uint32_t value_bits;   /* bits of one stored value */
    kvrt_kv_scales scales;
    int32_t group;         /* IN_BLOCK: values per scale; head_dim must be a multiple */
    uint32_t scale_bytes;  /* IN_BLOCK: bytes of one scale */
} kvrt_kv_dtype_desc;

/* The descriptor of a KV dtype; NULL when kvrt does not store KV in it. */
const kvrt_kv_dtype_desc *kvrt_kv_dtype(kvrt_dtype dtype);

/* ---- quantized KV: q8_0 and q4_0 (the rule every backend implements bit for bit) ----
 *
 * A head_dim row is cut into groups of 32 values; each group has one F16
 * scale d, stored after the block's values ([n_kv_heads][block_size]
 * [head_dim / 32] scales, 2 bytes each, little-endian). Per group:
 *   1. each x is saturated: NaN -> 0, then clamped to [-65504, 65504];
 *   2. amax = max |x|; d = f16_rne(f32(amax * R)) with R the F32 constant
 *      nearest to 1/127 (q8_0, 0x1.020408p-7) or 1/7 (q4_0, 0x1.24924ap-3):
 *      one correctly rounded F32 product, then round-to-nearest-even to F16;
 *   3. q = round-to-nearest-even of the exact quotient x / d (0 when d == 0),
 *      clamped to [-127, 127] (q8_0) or [-8, 7] (q4_0). Backends find q
 *      exactly by comparing x with the midpoints (q +- 1/2) * d, which are
 *      exact F32 products, so no division's rounding can change a byte;
 *   4. q8_0 stores q as int8; q4_0 stores q + 8 as a nibble, byte j of a
 *      group holding value j in its low and value j + 16 in its high nibble
 *      (the Q4_0 weight order), 16 bytes per group.
 * Dequantized value: q * d (q8_0) or (nibble - 8) * d (q4_0), in F32. */
#define KVRT_KV_QGROUP 32

/* Byte offsets, inside one block, of row r (= kv head * block_size + position)
 * of a quantized dtype: its values and its first scale. */
static inline size_t kvrt_kv_row_values(const kvrt_kv_dtype_desc *t, int32_t head_dim, size_t r)
{
    return r * (size_t)head_dim * t->value_bits / 8;
}
static inline size_t kvrt_kv_row_scales(const kvrt_kv_dtype_desc *t, int32_t n_kv_heads, int32_t block_size,
                                        int32_t head_dim, size_t r)
{
    size_t rows = (size_t)n_kv_heads * (size_t)block_size;
    return kvrt_kv_row_values(t, head_dim, rows) + r * (size_t)(head_dim / t->group) * t->scale_bytes;
}

/* Quantizes one head_dim row (a multiple of 32) by the rule above:
 * values gets head_dim * bits / 8 bytes, scales head_dim / 32 F16 scales. */
void kvrt_kv_quantize_row(kvrt_dtype dtype, const float *x, int32_t head_dim, uint8_t *values, uint8_t *scales);
/* The stored row back in F32. */
void kvrt_kv_dequantize_row(kvrt_dtype dtype, const uint8_t *values, const uint8_t *scales, int32_t head_dim,
                            float *out);

/* Shape of a KV pool: every layer's K and V pools. */
typedef struct kvrt_kv_pool_desc {
    int32_t n_layers;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t block_size; /* 8, 16 or 32 through the public API */
    int32_t num_blocks;
    kvrt_dtype dtype;   /* a dtype with a descriptor */
} kvrt_kv_pool_desc;

/* Bytes of one block of one pool (one layer, K or V), scales included, for a
 * dtype descriptor; 0 when the shape does not fit it (head_dim not a whole
 * number of scale groups). */
size_t kvrt_kv_dtype_block_bytes(const kvrt_kv_dtype_desc *t, int32_t n_kv_heads, int32_t block_size,
                                 int32_t head_dim);
/* The same for a pool (checked by kvrt_kv_check_pool_desc). */
size_t kvrt_kv_block_bytes(const kvrt_kv_pool_desc *desc);

/* The settings a cache, a session or an engine takes from its caller: the
 * block sizes kvrt promises (8, 16, 32), a dtype with a descriptor. */
kvrt_status kvrt_kv_check_block_size(kvrt_error *err, int32_t block_size);
kvrt_status kvrt_kv_check_dtype(kvrt_error *err, kvrt_dtype dtype);
/* A whole pool shape, as a backend receives it: positive sizes (any block
 * size: tests use small ones), a dtype with a descriptor (UNSUPPORTED
 * otherwise), int32 slots for every position, and a total size (both pools
 * of every layer) that fits. */
kvrt_status kvrt_kv_check_pool_desc(kvrt_error *err, const kvrt_kv_pool_desc *desc);
/* block in [0, num_blocks); what names it in the message ("source", ...). */
kvrt_status kvrt_kv_check_block(kvrt_error *err, const kvrt_kv_pool_desc *desc, int32_t block, const char *what);
/* layer in [0, n_layers). */
kvrt_status kvrt_kv_check_layer(kvrt_error *err, const kvrt_kv_pool_desc *desc, int32_t layer);

/* ---- attention over the layout ------------------------------------------------ */

/* Shape and options of one attention call. */
typedef struct kvrt_attn_desc {
    int32_t num_seqs;
    int32_t n_heads;            /* query heads; a multiple of the pool's n_kv_heads */
    int32_t max_blocks_per_seq; /* row length of the block table */
    float scale;                /* softmax scale, usually 1/sqrt(head_dim) */
    int32_t window;             /* sliding window W; 0 = none */
    int32_t sinks;              /* first S positions always visible */
    int64_t q_stride;           /* elements between consecutive tokens of q */
    int64_t o_stride;           /* elements between consecutive tokens of out */
    int32_t num_tokens;         /* prefill: token rows q and out hold (>= query_start_loc[num_seqs]);
                                   decode: ignored (one row per sequence) */
    int32_t max_seq_len;        /* the longest seq_lens[s] of the call, found by whoever checked them on
                                   the host: split-K partitions and scratch follow it, never the table
                                   width; 0 = unknown, the front door takes the table's capacity */
} kvrt_attn_desc;

/* The longest of n sequence lengths (0 for none). */
int32_t kvrt_attn_max_len(const int32_t *seq_lens, int32_t n);

/* Whether the query at position i sees the key at position j. */
static inline bool kvrt_kv_visible(int32_t i, int32_t j, int32_t window, int32_t sinks)
{
    return j <= i && (window == 0 || i - j < window || j < sinks);
}

/* Half-open key ranges [lo, hi) visible to the queries at positions
 * [q_lo, q_hi] (q_lo <= q_hi): at most two, increasing, disjoint; returns how
 * many. Every key inside them is visible to at least one of the queries. */
int kvrt_attn_visible_ranges(int32_t q_lo, int32_t q_hi, int32_t window, int32_t sinks, int32_t ranges[2][2]);

/* Scalar fields of a descriptor (num_seqs, n_heads vs the pool, block table
 * width, window, sinks, scale). */
kvrt_status kvrt_attn_check_desc(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d);

/* seq_lens: [num_seqs]; block_tables: [num_seqs][max_blocks_per_seq].
 * Errors: seq_len < 1, CONTEXT_OVERFLOW beyond the table, an entry outside
 * [0, num_blocks) other than -1, and -1 where a visible key lives. */
kvrt_status kvrt_attn_check_decode(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                   const int32_t *seq_lens, const int32_t *block_tables);

/* As decode, plus query_start_loc: [num_seqs + 1], absolute token rows (>= 0; the
 * prefills of a mixed batch start after its decodes), non-decreasing,
 * no sequence with more new tokens than its length. */
kvrt_status kvrt_attn_check_prefill(kvrt_error *err, const kvrt_kv_pool_desc *pool, const kvrt_attn_desc *d,
                                    const int32_t *query_start_loc, const int32_t *seq_lens,
                                    const int32_t *block_tables);

/* slots: [n]; each < 0 (skipped) or < num_blocks * block_size. */
kvrt_status kvrt_kv_check_slots(kvrt_error *err, const kvrt_kv_pool_desc *pool, const int32_t *slots, int32_t n);

/* ---- one step's batch (DESIGN.md) ------------------------------------------------ */

/* Host arrays of a step, as the engine, the session and the model pass them.
 * The first num_decode_seqs sequences have one new token each and run paged
 * decode attention; the rest run tiled prefill attention. */
typedef struct kvrt_batch {
    int32_t num_seqs;
    int32_t num_decode_seqs;        /* leading sequences that are decodes */
    int32_t num_tokens;
    const int32_t *tokens;          /* [num_tokens] */
    const int32_t *positions;       /* [num_tokens] */
    const int32_t *slot_mapping;    /* [num_tokens] */
    const int32_t *query_start_loc; /* [num_seqs + 1] */
    const int32_t *seq_lens;        /* [num_seqs] context incl. this step's tokens */
    const int32_t *block_tables;    /* [num_seqs][max_blocks_per_seq] */
    int32_t max_blocks_per_seq;
    const int32_t *logits_indices;  /* [num_logits] token rows that need logits */
    int32_t num_logits;
    /* [num_seqs] leading table entries that are host-tier slots (issue 18,
     * backend/kv_tier.h); NULL = every block on the device. */
    const int32_t *n_host;
} kvrt_batch;

/* Leading sequences with exactly one new token: the most a batch may run as decodes. */
int32_t kvrt_batch_num_decodes(const kvrt_batch *b);

/* Checks a step's batch against a pool once, before any of it goes to a
 * device: counts, decodes of one token, query_start_loc from 0 to
 * num_tokens, logits rows, every slot, and every table row and length as the
 * step's attention will read them (the model's heads, no window or sinks:
 * n_heads as in kvrt_attn_desc). Token ids and positions are the model's to
 * check. */
kvrt_status kvrt_batch_check(kvrt_error *err, const kvrt_kv_pool_desc *pool, int32_t n_heads, const kvrt_batch *b);
/* The same for a model with a sliding window: blocks before a query's window may be released (-1). */
kvrt_status kvrt_batch_check_window(kvrt_error *err, const kvrt_kv_pool_desc *pool, int32_t n_heads, int32_t window,
                                    const kvrt_batch *b);

#endif /* KVRT_KV_LAYOUT_H */
