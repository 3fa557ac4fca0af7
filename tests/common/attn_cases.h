/* One table of attention cases for every backend's tests (DESIGN.md "Tests
 * and oracles"): a generator that builds a case's data (seeded random K/V/Q,
 * a batch of sequences, blocks in shuffled non-contiguous order, block tables,
 * slot mappings), the double reference computed once per case, and a runner
 * + checker that go through the public API of include/kvrt_attention.h on any
 * context, so the Vulkan and OpenCL tests call the same functions. */
#ifndef KVRT_ATTN_CASES_H
#define KVRT_ATTN_CASES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvrt.h"

#define ATTN_MAX_SEQS 8
/* DESIGN.md correctness contract, F32 and F16 KV alike. */
#define ATTN_MAX_ABS_ERR 1e-4
#define ATTN_MAX_NMSE 1e-6

typedef enum attn_mode { ATTN_DECODE = 0, ATTN_PREFILL = 1 } attn_mode;

typedef struct attn_case {
    int32_t head_dim;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t block_size;
    kvrt_dtype dtype;            /* K's type (F32, F16 or a quantized KV type), and V's... */
    kvrt_dtype v_dtype;          /* ...unless this differs (attn_case_make sets it to dtype) */
    int32_t window;              /* 0 = none */
    int32_t sinks;
    attn_mode mode;
    int32_t num_seqs;            /* <= ATTN_MAX_SEQS */
    int32_t seq_lens[ATTN_MAX_SEQS];
    int32_t n_new[ATTN_MAX_SEQS]; /* query tokens per sequence (decode: 1) */
    bool in_order_blocks;        /* blocks 0, 1, 2, ... instead of a shuffled assignment */
    uint64_t seed;               /* K/V/Q values; block order and chunking use their own streams */
} attn_case;

/* The grid: head_dim {64,80,96,128,256} x (q,kv heads)
 * {(4,4),(8,2),(8,1),(32,8),(64,8)} x block {8,16,32} x length
 * {1,17,129,463,1328, batch of 7 random} x mask {none, window 256,
 * window 256 + sinks 4} x {f32,f16} x {decode, prefill}. full = the whole
 * product; otherwise a deterministic pairwise covering subset (every pair of
 * factor values appears in some case). Returns the number of cases (all of
 * them; at most max are stored). */
size_t attn_case_grid(bool full, attn_case *out, size_t max);
/* Large head sizes (issue 19: Vulkan prefill returned wrong numbers with
 * status OK from head_dim 768, where a key tile's loops ran past lavapipe's
 * 65,535 trips an invocation): head_dim {512, 576, 768, 1024}, 2 query heads
 * over 1 KV head, block 16, F32, prefill of the last n_new tokens and decode,
 * at the contexts of the issue (126, 127, 200 keys), around the old
 * boundary. full = a wider sweep (more head sizes, lengths up to
 * 2,100, F16, GQA 8/2, window 100 with 4 sinks). Returns the number of cases
 * (at most max stored). */
size_t attn_case_wide(bool full, attn_case *out, size_t max);
/* Fills a case for one grid point (lengths and chunks drawn from the seed). */
void attn_case_make(attn_case *c, int32_t head_dim, int32_t n_heads, int32_t n_kv_heads, int32_t block_size,
                    kvrt_dtype dtype, int32_t window, int32_t sinks, attn_mode mode, int32_t length, uint64_t seed);
/* "decode f16 hd=128 h=32/8 bs=16 W=256 S=4 lens=[...]". */
void attn_case_name(const attn_case *c, char *buf, size_t size);

typedef struct attn_case_data {
    attn_case c;
    float scale;
    int32_t num_blocks;           /* pool size: the blocks used plus spares */
    int32_t max_blocks;           /* block table row length */
    int32_t num_tokens;           /* query tokens in the batch */
    int32_t n_write;              /* rows of the K/V write, padding included */
    float *k_write, *v_write;     /* [n_write][n_kv][hd]: what the test writes (unrounded) */
    int32_t *slot_mapping;        /* [n_write]; -1 for padding rows */
    float *k_stored, *v_stored;   /* per sequence [len][n_kv][hd], the values the pool holds */
    size_t *seq_kv_offset;        /* [num_seqs]: start of each sequence in k_stored/v_stored (floats) */
    int32_t *seq_lens;            /* [num_seqs] */
    int32_t *query_start_loc;     /* [num_seqs + 1] */
    int32_t *block_tables;        /* [num_seqs][max_blocks], -1 unused or released by the window */
    float *q;                     /* [num_tokens][n_heads][hd] */
    double *ref;                  /* [num_tokens][n_heads][hd] */
} attn_case_data;

/* Builds a case's data and its reference. false on out of memory. */
bool attn_case_build(const attn_case *c, attn_case_data *d);
void attn_case_free(attn_case_data *d);
/* Floats of one output: num_tokens * n_heads * head_dim. */
size_t attn_case_out_len(const attn_case_data *d);

/* Creates a cache on ctx holding the case's K/V (one write call through the
 * slot mapping, padding rows skipped). n_layers >= 1: the data goes to the
 * last layer, the others stay zero, so a wrong layer index shows. */
kvrt_status attn_case_upload(kvrt_context *ctx, const attn_case_data *d, int32_t n_layers, kvrt_kv_cache **out,
                             kvrt_error *err);

/* Runs decode or prefill over sequences [first, first + count) of the batch
 * (their own rows of q, seq_lens, tables); writes their outputs into out at
 * the same token rows as a full run would. The output buffer the API sees is
 * followed by guard canaries; *canaries_ok tells whether they survived. */
kvrt_status attn_case_attend(kvrt_kv_cache *cache, const attn_case_data *d, int32_t layer, int32_t first,
                             int32_t count, float *out, bool *canaries_ok);

typedef struct attn_check {
    double max_abs;  /* over finite values */
    double nmse;     /* sum (out - ref)^2 / sum ref^2 */
    int64_t n_nonfinite;
    int64_t worst;   /* index of the largest error */
} attn_check;

/* Compares out ([num_tokens][n_heads][hd]) with the reference. */
attn_check attn_case_check(const attn_case_data *d, const float *out);
/* Within the DESIGN.md bounds and no NaN/Inf. */
bool attn_check_ok(const attn_check *r);

/* Upload + full-batch attention + check in one call; out may be NULL.
 * Returns false (with a message in msg) when any step fails. */
bool attn_case_run(kvrt_context *ctx, const attn_case_data *d, float *out, attn_check *res, char *msg,
                   size_t msg_size);

#endif /* KVRT_ATTN_CASES_H */
