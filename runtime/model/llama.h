/*
 * The Llama forward pass on a backend: weights in backend buffers, a workspace
 * of activations, and one entry point that runs a whole step's batch (prefill
 * chunks and decodes of many sequences, DESIGN.md "One step's batch").
 */
#ifndef KVRT_LLAMA_H
#define KVRT_LLAMA_H

#include "backend/backend.h"
#include "model/model_file.h"

/* One step's batch, host arrays (DESIGN.md). Sequences whose query count is 1
 * and that come first (num_seqs_decode of them) run paged decode attention;
 * the rest run tiled prefill attention. */
typedef struct kvrt_batch {
    int32_t num_seqs;
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
} kvrt_batch;

typedef struct kvrt_llama kvrt_llama;

/* Uploads (or, on the CPU, wraps in place) the weights of `mf`, which must
 * outlive the returned object. max_pos bounds the RoPE table. */
kvrt_status kvrt_llama_create(kvrt_backend *be, const kvrt_model_file *mf, int32_t max_pos,
                              kvrt_llama **out, kvrt_error *err);
void kvrt_llama_destroy(kvrt_llama *lm);
const kvrt_llama_hparams *kvrt_llama_hparams_of(const kvrt_llama *lm);
int32_t kvrt_llama_max_pos(const kvrt_llama *lm);

/* Runs the batch: K/V of the new tokens are written into `pool` (through the
 * slot mapping), logits of the logits_indices rows go to `logits`
 * [num_logits][n_vocab] (host). Checks token ids, positions and table shapes. */
kvrt_status kvrt_llama_forward(kvrt_llama *lm, kvrt_kv_pool *pool, const kvrt_batch *batch, float *logits,
                               kvrt_error *err);

#endif /* KVRT_LLAMA_H */
