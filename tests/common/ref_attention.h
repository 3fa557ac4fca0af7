/* Naive double-precision attention reference (DESIGN.md correctness
 * contract): reads exactly the K/V values it is given (for F16 KV, the
 * F16-rounded values) and computes every score, softmax and weighted sum in
 * double. Backend-neutral; shared by every backend's attention tests. */
#ifndef KVRT_REF_ATTENTION_H
#define KVRT_REF_ATTENTION_H

#include <stdint.h>

typedef struct ref_attn_shape {
    int32_t n_heads;    /* query heads, a multiple of n_kv_heads */
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t window;     /* 0 = none */
    int32_t sinks;
    double scale;
} ref_attn_shape;

/* Query at position i sees key j iff j <= i and (window == 0 or i - j < window or j < sinks). */
int ref_attn_visible(const ref_attn_shape *sh, int32_t i, int32_t j);

/* One query token of one sequence at position `pos`:
 * q: [n_heads][head_dim]; k, v: [>= pos + 1][n_kv_heads][head_dim] (the
 * sequence's keys by position); out: [n_heads][head_dim]. Query head h reads
 * KV head h / (n_heads / n_kv_heads). */
void ref_attention_query(const ref_attn_shape *sh, const float *q, int32_t pos, const float *k, const float *v,
                         double *out);

/* The last n_new tokens of a sequence of length seq_len (positions
 * seq_len - n_new .. seq_len - 1): q, out: [n_new][n_heads][head_dim].
 * Decode is n_new = 1. */
void ref_attention_chunk(const ref_attn_shape *sh, const float *q, int32_t seq_len, int32_t n_new,
                         const float *k, const float *v, double *out);

#endif /* KVRT_REF_ATTENTION_H */
