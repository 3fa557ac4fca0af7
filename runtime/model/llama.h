/*
 * The Llama forward pass on a backend: weights in backend buffers, a workspace
 * of activations, and one entry point that runs a whole step's batch (prefill
 * chunks and decodes of many sequences, DESIGN.md "One step's batch"),
 * through the front door (backend/ops.h).
 */
#ifndef KVRT_LLAMA_H
#define KVRT_LLAMA_H

#include "backend/backend.h"
#include "model/model_file.h"

typedef struct kvrt_llama kvrt_llama;

/* Uploads (or, on the CPU, wraps in place) the weights of `mf`, which must
 * outlive the returned object. max_pos bounds the RoPE table. */
kvrt_status kvrt_llama_create(kvrt_backend *be, const kvrt_model_file *mf, int32_t max_pos,
                              kvrt_llama **out, kvrt_error *err);
void kvrt_llama_destroy(kvrt_llama *lm);
const kvrt_llama_hparams *kvrt_llama_hparams_of(const kvrt_llama *lm);
int32_t kvrt_llama_max_pos(const kvrt_llama *lm);

/* Runs the batch (kv_layout.h): K/V of the new tokens are written into
 * `pool` (through the slot mapping), logits of the logits_indices rows go to
 * `logits` [num_logits][n_vocab] (host). The whole batch is checked once,
 * before anything goes to the device: token ids, positions, slots, tables,
 * lengths, logits rows, and the pool's shape against the model. */
kvrt_status kvrt_llama_forward(kvrt_llama *lm, kvrt_kv_pool *pool, const kvrt_batch *batch, float *logits,
                               kvrt_error *err);

/* Context shift: cos/sin [rope_dim/2][2] of the rotation that moves a key
 * stored at any position p to p + delta. RoPE's angle is linear in the
 * position under every scaling kvrt applies, so this is the angle of
 * position |delta| (negated for a negative delta), computed in double, with
 * magnitude 1 (YaRN's magnitude is already in the stored key). */
void kvrt_llama_rope_shift_row(const kvrt_llama *lm, int32_t delta, float *cos_sin);

#endif /* KVRT_LLAMA_H */
