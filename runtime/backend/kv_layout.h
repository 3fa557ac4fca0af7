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

/* ---- fp8 KV: fp8 (E4M3) and fp8_e5m2 (the rule every backend implements bit for bit) ----
 *
 * One byte per value, no scale stored: the per-(layer, KV head) scale of
 * K and of V is fixed at 1.0 (docs/architecture.md "FP8 KV" says why).
 * Encoding x (F32) -> byte:
 *   1. NaN -> the canonical positive NaN: 0x7f (E4M3), 0x7e (E5M2);
 *   2. saturate: |x| > max -> max, infinities included (max 448 = 0x7e for
 *      E4M3, which has no infinity; 57344 = 0x7b for E5M2, whose infinity
 *      code is never written), as F16 KV saturates;
 *   3. round-to-nearest-even of |x| onto the type's grid: normals
 *      (1 + m / 2^M) * 2^(e - bias), subnormals m * 2^(1 - bias - M)
 *      (M = 3, bias 7 for E4M3: 2^-9 steps below 2^-6; M = 2, bias 15 for
 *      E5M2: 2^-16 steps below 2^-14); a tie goes to the even mantissa,
 *      below half the smallest subnormal is zero; a carry out of the
 *      mantissa moves to the next exponent;
 *   4. the sign bit is x's (so -0 stays 0x80).
 * Decoding: E5M2 is the upper byte of an F16; E4M3 is that F16 pattern
 * shifted (byte & 0x7f) << 7, times 2^8, with 0x7f/0xff NaN. Exact in F32. */

/* Whether rows of a dtype go through kvrt_kv_quantize_row (q8_0, q4_0, fp8, fp8_e5m2). */
static inline bool kvrt_kv_dtype_quantized(kvrt_dtype t)
{
    return t == KVRT_DTYPE_Q8_0 || t == KVRT_DTYPE_Q4_0 || t == KVRT_DTYPE_FP8_E4M3 || t == KVRT_DTYPE_FP8_E5M2;
}
static inline bool kvrt_kv_dtype_fp8(kvrt_dtype t)
{
    return t == KVRT_DTYPE_FP8_E4M3 || t == KVRT_DTYPE_FP8_E5M2;
}
/* One value by the fp8 rule above, and back. */
uint8_t kvrt_kv_fp8_encode(kvrt_dtype t, float x);
float kvrt_kv_fp8_decode(kvrt_dtype t, uint8_t b);

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

/* Quantizes one head_dim row by the rules above (q8_0, q4_0: head_dim a
 * multiple of 32): values gets head_dim * bits / 8 bytes, scales head_dim /
 * 32 F16 scales (fp8: none; scales is not touched and may be NULL). */
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
    kvrt_dtype dtype;   /* K's dtype (a dtype with a descriptor), and V's unless v_dtype_set */
    bool v_dtype_set;   /* V is stored in v_dtype: K and V may differ. false (a zero-filled field)
                           keeps one type for both, so a desc that names one type means it */
    kvrt_dtype v_dtype;
} kvrt_kv_pool_desc;

/* The dtype of a pool's K (v == false) or V (v == true). */
static inline kvrt_dtype kvrt_kv_pool_dtype(const kvrt_kv_pool_desc *d, bool v)
{
    return v && d->v_dtype_set ? d->v_dtype : d->dtype;
}
/* Whether K and V are stored in different dtypes. */
static inline bool kvrt_kv_pool_mixed(const kvrt_kv_pool_desc *d)
{
    return kvrt_kv_pool_dtype(d, true) != d->dtype;
}
/* "K q8_0 / V f16" (or "q8_0" when both are one type) into buf. */
const char *kvrt_kv_pool_types_name(const kvrt_kv_pool_desc *d, char *buf, size_t size);

/* Bytes of one block of one pool (one layer, K or V), scales included, for a
 * dtype descriptor; 0 when the shape does not fit it (head_dim not a whole
 * number of scale groups). */
size_t kvrt_kv_dtype_block_bytes(const kvrt_kv_dtype_desc *t, int32_t n_kv_heads, int32_t block_size,
                                 int32_t head_dim);
/* The same for a pool's K (checked by kvrt_kv_check_pool_desc); with
 * _which, for its K (v == false) or V (v == true); _pair: K and V together. */
size_t kvrt_kv_block_bytes(const kvrt_kv_pool_desc *desc);
size_t kvrt_kv_block_bytes_which(const kvrt_kv_pool_desc *desc, bool v);
size_t kvrt_kv_block_bytes_pair(const kvrt_kv_pool_desc *desc);

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
