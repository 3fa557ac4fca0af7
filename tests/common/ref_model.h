/* A double-precision reference forward of a whole model (tests only): the
 * oracle the architecture suite checks every backend against. F32 weights. */
#ifndef KVRT_REF_MODEL_H
#define KVRT_REF_MODEL_H

#include "model/model_file.h"

/* Logits [n][n_vocab] of every position of ids (teacher-forced, causal,
 * positions 0..n-1), for any family kvrt runs: biases, Q/K norms, NeoX or
 * adjacent-pair RoPE, RoPE scaling (none, linear, YaRN, rope_freqs), the
 * sliding window. */
void ref_model_logits(const kvrt_model_file *mf, const int32_t *ids, int32_t n, double *logits);

#endif /* KVRT_REF_MODEL_H */
