/* Model shapes by name: the one preset table that kvrt-synth (random-weight
 * models), kvrt-mem (KV sizes) and kvrt-bench (attention shapes, synthetic
 * models) read. Shapes of published configurations, plus small ones for
 * quick runs. */
#ifndef KVRT_SHAPES_H
#define KVRT_SHAPES_H

#include "common/kvrt_internal.h"

typedef struct kvrt_model_shape {
    const char *name;  /* "llama-2-7b" */
    const char *alias; /* the short name kvrt-synth has taken ("7b"), or NULL */
    int32_t n_vocab, n_embd, n_layer, n_ff, n_head, n_head_kv;
    int32_t n_ctx;     /* trained context length */
} kvrt_model_shape;

/* The table in its fixed order; *n receives its length. */
const kvrt_model_shape *kvrt_model_shapes(size_t *n);
/* The shape with this name or alias; NULL when there is none. */
const kvrt_model_shape *kvrt_model_shape_find(const char *name);

static inline int32_t kvrt_model_shape_head_dim(const kvrt_model_shape *s)
{
    return s->n_embd / s->n_head;
}

#endif /* KVRT_SHAPES_H */
