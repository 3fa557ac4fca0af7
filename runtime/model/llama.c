/* The Llama forward pass, written once against the backend interface. */
#include "model/llama.h"

#include "backend/ops.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Activations of one step, each its own buffer (backends segment big ones). */
enum {
    ACT_X,      /* [T][n_embd] residual stream */
    ACT_H,      /* [T][n_embd] normed input of a sublayer */
    ACT_Q,      /* [T][n_head*head_dim] */
    ACT_K,      /* [T][n_head_kv*head_dim] */
    ACT_V,      /* [T][n_head_kv*head_dim] */
    ACT_ATT,    /* [T][n_head*head_dim] attention output */
    ACT_O,      /* [T][n_embd] sublayer output */
    ACT_GATE,   /* [T][n_ff] */
    ACT_UP,     /* [T][n_ff] */
    ACT_FF,     /* [T][n_ff] swiglu output */
    ACT_HL,     /* [L][n_embd] normed rows that need logits */
    ACT_LOGITS, /* [L][n_vocab] */
    ACT_COUNT
};

/* Batch arrays on the device (int32), packed one after another in one buffer
 * so a step uploads them with one call (inside the step: see upload_batch). */
enum {
    IDX_TOKENS,     /* [T] */
    IDX_POSITIONS,  /* [T] */
    IDX_SLOTS,      /* [T] */
    IDX_QSL,        /* [S + 1] */
    IDX_SEQ_LENS,   /* [S] */
    IDX_TABLES,     /* [S][max_blocks] */
    IDX_LOGITS,     /* [L] */
    IDX_COUNT
};

typedef struct llama_weight {
    kvrt_buffer *buf;
    kvrt_dtype type;
    int64_t ne[2];
} llama_weight;

typedef struct llama_layer_w {
    llama_weight attn_norm, wq, wk, wv, wo, ffn_norm, ffn_gate, ffn_down, ffn_up;
    llama_weight bq, bk, bv;     /* Q/K/V biases (qwen2); buf NULL when absent */
    llama_weight q_norm, k_norm; /* per-head RMSNorm weights [head_dim] (qwen3); buf NULL when absent */
} llama_layer_w;

typedef struct grow_buffer {
    kvrt_buffer *buf;
    size_t size;
} grow_buffer;

struct kvrt_llama {
    kvrt_backend *be;
    const kvrt_model_file *mf;
    kvrt_llama_hparams hp;
    int32_t max_pos;
    llama_weight tok_embd, output_norm, output;
    llama_layer_w *layers; /* [n_layer] */
    kvrt_buffer *rope_table; /* F32 [max_pos][rope_dim/2][2] */
    grow_buffer act[ACT_COUNT];
    grow_buffer ints;          /* the batch arrays, at idx_off */
    size_t idx_off[IDX_COUNT]; /* int32 elements from the start of ints */
    int32_t *ints_host;        /* packing area, ints_cap elements */
    size_t ints_cap;
};

static const kvrt_allocator *lm_alloc(const kvrt_llama *lm)
{
    return lm->be->alloc;
}

static kvrt_status be_fail(kvrt_backend *be, kvrt_error *err, kvrt_status s, const char *what)
{
    if (s == KVRT_OK)
        return s;
    return kvrt_fail(err, s, "%s: %s", what, be->err.message);
}

/* ---- weights ------------------------------------------------------------------ */

/* `name` is the tensor's GGUF name, for the error of a type the backend has
 * no kernels for (layer < 0: no "blk.N." prefix). */
static kvrt_status weight_load(kvrt_llama *lm, const kvrt_tensor_ref *t, int32_t layer, const char *name,
                               llama_weight *w, kvrt_error *err)
{
    kvrt_backend *be = lm->be;
    if (!kvrt_op_weight_type_ok(be, t->type)) {
        char full[64];
        if (layer >= 0)
            snprintf(full, sizeof(full), "blk.%d.%s", (int)layer, name);
        else
            snprintf(full, sizeof(full), "%s", name);
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED,
                         "tensor '%s' has type %s, which the %s backend does not run (the cpu backend does)", full,
                         kvrt_dtype_name(t->type), be->ops->name);
    }
    w->type = t->type;
    w->ne[0] = t->ne[0];
    w->ne[1] = t->ne[1];
    /* read in place where the backend can: the mapping (or owned bytes) outlives the model */
    kvrt_status s = kvrt_op_buffer_for_host(be, (void *)t->data, t->nbytes, true, &w->buf);
    return be_fail(be, err, s, "loading weights");
}

static void weight_free(kvrt_llama *lm, llama_weight *w)
{
    kvrt_op_buffer_destroy(lm->be, w->buf);
    w->buf = NULL;
}

static kvrt_status load_layer(kvrt_llama *lm, int32_t layer, const kvrt_llama_layer *src, llama_layer_w *dst,
                              kvrt_error *err)
{
    const kvrt_tensor_ref *refs[] = {&src->attn_norm, &src->wq,     &src->wk,       &src->wv,       &src->wo,
                                     &src->ffn_norm,  &src->ffn_gate, &src->ffn_down, &src->ffn_up, &src->bq,
                                     &src->bk,        &src->bv,     &src->q_norm,   &src->k_norm};
    llama_weight *ws[] = {&dst->attn_norm, &dst->wq,       &dst->wk,       &dst->wv,     &dst->wo,
                          &dst->ffn_norm,  &dst->ffn_gate, &dst->ffn_down, &dst->ffn_up, &dst->bq,
                          &dst->bk,        &dst->bv,       &dst->q_norm,   &dst->k_norm};
    static const char *const names[] = {"attn_norm.weight", "attn_q.weight",   "attn_k.weight",  "attn_v.weight",
                                        "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight",
                                        "ffn_down.weight",  "ffn_up.weight",   "attn_q.bias",    "attn_k.bias",
                                        "attn_v.bias",      "attn_q_norm.weight", "attn_k_norm.weight"};
    _Static_assert(KVRT_ARRAY_LEN(names) == KVRT_ARRAY_LEN(refs), "a name per tensor");
    for (size_t i = 0; i < KVRT_ARRAY_LEN(refs); i++)
        if (refs[i]->data) /* the family's optional tensors may be absent */
            KVRT_TRY(weight_load(lm, refs[i], layer, names[i], ws[i], err));
    return KVRT_OK;
}

static void free_layer(kvrt_llama *lm, llama_layer_w *l)
{
    llama_weight *ws[] = {&l->attn_norm, &l->wq,       &l->wk,       &l->wv,     &l->wo,
                          &l->ffn_norm,  &l->ffn_gate, &l->ffn_down, &l->ffn_up, &l->bq,
                          &l->bk,        &l->bv,       &l->q_norm,   &l->k_norm};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(ws); i++)
        weight_free(lm, ws[i]);
}

/* YaRN's correction range: the pair index whose wavelength makes n_rot
 * turns over the original context. */
static double yarn_corr_dim(const kvrt_llama_hparams *hp, double n_rot)
{
    return hp->rope_dim * log(hp->rope_orig_ctx / (n_rot * 2.0 * M_PI)) / (2.0 * log((double)hp->rope_freq_base));
}

/* The angle and magnitude of pair i at position p, after RoPE scaling:
 * linear divides positions by the factor; YaRN interpolates the
 * low-frequency pairs, keeps the high-frequency ones and ramps between
 * (beta_fast .. beta_slow turns), with magnitude 1 + 0.1 ln(factor);
 * rope_freqs divides each pair's frequency (Llama 3.1). */
static void rope_angle(const kvrt_llama_hparams *hp, const float *freq_factors, int32_t i, int32_t p, double *theta,
                       double *mscale)
{
    double extrap = (double)p * pow((double)hp->rope_freq_base, -2.0 * i / (double)hp->rope_dim);
    if (freq_factors)
        extrap /= (double)freq_factors[i];
    double scale = 1.0 / (double)hp->rope_scale;
    *mscale = hp->rope_attn_factor;
    *theta = extrap;
    if (hp->rope_scaling == KVRT_ROPE_SCALING_LINEAR) {
        *theta = extrap * scale;
    } else if (hp->rope_scaling == KVRT_ROPE_SCALING_YARN) {
        double lo = fmax(0.0, floor(yarn_corr_dim(hp, hp->yarn_beta_fast)));
        double hi = fmin(hp->rope_dim - 1.0, ceil(yarn_corr_dim(hp, hp->yarn_beta_slow)));
        double y = (i - lo) / fmax(0.001, hi - lo);
        double keep = 1.0 - fmin(1.0, fmax(0.0, y)); /* 1: extrapolate (high frequency) */
        *theta = extrap * scale * (1.0 - keep) + extrap * keep;
        *mscale *= 1.0 + 0.1 * log((double)hp->rope_scale);
    }
}

/* cos/sin of every (position, pair), computed in double so every backend
 * rotates by exactly the same values (DESIGN.md); RoPE scaling lives here
 * alone, so the kernels need not know it. */
static kvrt_status build_rope_table(kvrt_llama *lm, kvrt_error *err)
{
    int32_t half = lm->hp.rope_dim / 2;
    size_t n = (size_t)lm->max_pos * (size_t)half * 2;
    float *table = kvrt_alloc(lm_alloc(lm), n * sizeof(float), 0);
    float *factors = NULL;
    const kvrt_tensor_ref *rf = &lm->mf->w.rope_freqs;
    if (rf->data && (factors = kvrt_alloc(lm_alloc(lm), (size_t)half * sizeof(float), 0)))
        memcpy(factors, rf->data, (size_t)half * sizeof(float)); /* the mapping need not align it */
    if (!table || (rf->data && !factors)) {
        kvrt_free(lm_alloc(lm), table);
        kvrt_free(lm_alloc(lm), factors);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "RoPE table: out of host memory");
    }
    for (int32_t i = 0; i < half; i++) {
        for (int32_t p = 0; p < lm->max_pos; p++) {
            double angle, mscale;
            rope_angle(&lm->hp, factors, i, p, &angle, &mscale);
            table[((size_t)p * half + i) * 2 + 0] = (float)(cos(angle) * mscale);
            table[((size_t)p * half + i) * 2 + 1] = (float)(sin(angle) * mscale);
        }
    }
    kvrt_free(lm_alloc(lm), factors);
    kvrt_backend *be = lm->be;
    kvrt_status s = kvrt_op_buffer_create(be, n * sizeof(float), KVRT_BUFFER_DEVICE, &lm->rope_table);
    if (s == KVRT_OK)
        s = kvrt_op_buffer_upload(be, lm->rope_table, 0, table, n * sizeof(float));
    kvrt_free(lm_alloc(lm), table);
    return be_fail(be, err, s, "RoPE table");
}

void kvrt_llama_destroy(kvrt_llama *lm)
{
    if (!lm)
        return;
    kvrt_backend *be = lm->be;
    if (lm->layers) {
        for (int32_t l = 0; l < lm->hp.n_layer; l++)
            free_layer(lm, &lm->layers[l]);
    }
    weight_free(lm, &lm->tok_embd);
    weight_free(lm, &lm->output_norm);
    weight_free(lm, &lm->output);
    kvrt_op_buffer_destroy(be, lm->rope_table);
    for (int i = 0; i < ACT_COUNT; i++)
        kvrt_op_buffer_destroy(be, lm->act[i].buf);
    kvrt_op_buffer_destroy(be, lm->ints.buf);
    kvrt_free(lm_alloc(lm), lm->ints_host);
    kvrt_free(lm_alloc(lm), lm->layers);
    kvrt_free(lm_alloc(lm), lm);
}

kvrt_status kvrt_llama_create(kvrt_backend *be, const kvrt_model_file *mf, int32_t max_pos,
                              kvrt_llama **out, kvrt_error *err)
{
    *out = NULL;
    if (mf->vocab_only)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "the file holds a vocabulary only, no weights");
    if (max_pos < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "max_pos %d < 1", (int)max_pos);
    if (mf->hp.rope_dim < 2 || mf->hp.rope_dim % 2 || mf->hp.rope_dim > mf->hp.head_dim)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "RoPE dimension %d invalid for head_dim %d",
                         (int)mf->hp.rope_dim, (int)mf->hp.head_dim);
    kvrt_llama *lm = kvrt_calloc(be->alloc, 1, sizeof(*lm));
    if (!lm)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "model: out of host memory");
    lm->be = be;
    lm->mf = mf;
    lm->hp = mf->hp;
    lm->max_pos = max_pos;
    lm->layers = kvrt_calloc(be->alloc, (size_t)mf->hp.n_layer, sizeof(*lm->layers));
    kvrt_status s = lm->layers ? KVRT_OK : kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "model: out of host memory");
    if (s == KVRT_OK)
        s = weight_load(lm, &mf->w.tok_embd, -1, "token_embd.weight", &lm->tok_embd, err);
    if (s == KVRT_OK)
        s = weight_load(lm, &mf->w.output_norm, -1, "output_norm.weight", &lm->output_norm, err);
    if (s == KVRT_OK)
        s = weight_load(lm, &mf->w.output, -1, "output.weight", &lm->output, err);
    for (int32_t l = 0; s == KVRT_OK && l < mf->hp.n_layer; l++)
        s = load_layer(lm, l, &mf->w.layers[l], &lm->layers[l], err);
    if (s == KVRT_OK)
        s = build_rope_table(lm, err);
    if (s != KVRT_OK) {
        kvrt_llama_destroy(lm);
        return s;
    }
    *out = lm;
    return KVRT_OK;
}

const kvrt_llama_hparams *kvrt_llama_hparams_of(const kvrt_llama *lm)
{
    return &lm->hp;
}

int32_t kvrt_llama_max_pos(const kvrt_llama *lm)
{
    return lm->max_pos;
}

/* ---- workspace ------------------------------------------------------------------ */

static kvrt_status grow(kvrt_llama *lm, grow_buffer *g, size_t bytes, kvrt_error *err)
{
    if (bytes == 0)
        bytes = 4;
    if (g->buf && g->size >= bytes)
        return KVRT_OK;
    kvrt_backend *be = lm->be;
    kvrt_op_buffer_destroy(be, g->buf);
    g->buf = NULL;
    g->size = 0;
    size_t want = bytes + bytes / 2; /* grow geometrically: fewer reallocations as batches vary */
    KVRT_TRY(be_fail(be, err, kvrt_op_buffer_create(be, want, KVRT_BUFFER_DEVICE, &g->buf), "workspace"));
    g->size = want;
    return KVRT_OK;
}

static kvrt_status reserve_activations(kvrt_llama *lm, int32_t n_tokens, int32_t n_logits, kvrt_error *err)
{
    const kvrt_llama_hparams *hp = &lm->hp;
    size_t t = (size_t)n_tokens, f = sizeof(float);
    size_t q_dim = (size_t)hp->n_head * hp->head_dim, kv_dim = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t bytes[ACT_COUNT] = {
        [ACT_X] = t * hp->n_embd * f,   [ACT_H] = t * hp->n_embd * f,  [ACT_Q] = t * q_dim * f,
        [ACT_K] = t * kv_dim * f,       [ACT_V] = t * kv_dim * f,      [ACT_ATT] = t * q_dim * f,
        [ACT_O] = t * hp->n_embd * f,   [ACT_GATE] = t * hp->n_ff * f, [ACT_UP] = t * hp->n_ff * f,
        [ACT_FF] = t * hp->n_ff * f,    [ACT_HL] = (size_t)n_logits * hp->n_embd * f,
        [ACT_LOGITS] = (size_t)n_logits * hp->n_vocab * f,
    };
    for (int i = 0; i < ACT_COUNT; i++)
        KVRT_TRY(grow(lm, &lm->act[i], bytes[i], err));
    return KVRT_OK;
}

/* Packs the batch arrays into the host area (grown as needed) and records
 * where each one starts. */
static kvrt_status pack_batch(kvrt_llama *lm, const kvrt_batch *b, size_t *total, kvrt_error *err)
{
    size_t T = (size_t)b->num_tokens, S = (size_t)b->num_seqs;
    const struct {
        const int32_t *src;
        size_t n;
    } parts[IDX_COUNT] = {
        [IDX_TOKENS] = {b->tokens, T},
        [IDX_POSITIONS] = {b->positions, T},
        [IDX_SLOTS] = {b->slot_mapping, T},
        [IDX_QSL] = {b->query_start_loc, S + 1},
        [IDX_SEQ_LENS] = {b->seq_lens, S},
        [IDX_TABLES] = {b->block_tables, S * (size_t)b->max_blocks_per_seq},
        [IDX_LOGITS] = {b->logits_indices, (size_t)b->num_logits},
    };
    size_t n = 0;
    for (int i = 0; i < IDX_COUNT; i++)
        n += parts[i].n;
    if (n > lm->ints_cap) {
        size_t want = n + n / 2;
        int32_t *p = kvrt_alloc(lm_alloc(lm), want * sizeof(int32_t), _Alignof(int32_t));
        if (!p)
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "batch arrays: %zu ints", want);
        kvrt_free(lm_alloc(lm), lm->ints_host);
        lm->ints_host = p;
        lm->ints_cap = want;
    }
    size_t at = 0;
    for (int i = 0; i < IDX_COUNT; i++) {
        lm->idx_off[i] = at;
        if (parts[i].n)
            memcpy(lm->ints_host + at, parts[i].src, parts[i].n * sizeof(int32_t));
        at += parts[i].n;
    }
    *total = n;
    return KVRT_OK;
}

/* ---- batch checks ------------------------------------------------------------------ */

/* The whole step, once, before anything goes up: the layout's part (slots,
 * tables, lengths, query rows, logits rows) and the model's (ids, positions,
 * the pool's shape). */
static kvrt_status check_batch(const kvrt_llama *lm, const kvrt_kv_pool *pool, const kvrt_batch *b, kvrt_error *err)
{
    const kvrt_kv_pool_desc *pd = kvrt_kv_pool_desc_of(pool);
    if (pd->n_layers != lm->hp.n_layer || pd->n_kv_heads != lm->hp.n_head_kv || pd->head_dim != lm->hp.head_dim)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "KV pool of %d layers x %d KV heads x %d does not fit the model (%d x %d x %d)",
                         (int)pd->n_layers, (int)pd->n_kv_heads, (int)pd->head_dim, (int)lm->hp.n_layer,
                         (int)lm->hp.n_head_kv, (int)lm->hp.head_dim);
    KVRT_TRY(kvrt_batch_check_window(err, pd, lm->hp.n_head, lm->hp.sliding_window, b));
    for (int32_t t = 0; t < b->num_tokens; t++) {
        if (b->tokens[t] < 0 || b->tokens[t] >= lm->hp.n_vocab)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKEN, "token id %d at batch row %d is outside the vocabulary [0, %d)",
                             (int)b->tokens[t], (int)t, (int)lm->hp.n_vocab);
        if (b->positions[t] < 0 || b->positions[t] >= lm->max_pos)
            return kvrt_fail(err, KVRT_ERR_CONTEXT_OVERFLOW, "position %d at batch row %d is outside [0, %d)",
                             (int)b->positions[t], (int)t, (int)lm->max_pos);
    }
    return KVRT_OK;
}

/* ---- the forward pass --------------------------------------------------------------- */

static kvrt_view act(kvrt_llama *lm, int which)
{
    return (kvrt_view){lm->act[which].buf, 0};
}

static kvrt_view idx(kvrt_llama *lm, int which, size_t first)
{
    return (kvrt_view){lm->ints.buf, (lm->idx_off[which] + first) * sizeof(int32_t)};
}

static kvrt_view wview(const llama_weight *w)
{
    return (kvrt_view){w->buf, 0};
}

typedef struct step {
    kvrt_llama *lm;
    kvrt_backend *be;
    kvrt_kv_pool *pool;
    const kvrt_batch *b;
    int32_t n_decode; /* leading decode sequences */
} step;

static kvrt_status step_matmul(step *st, const llama_weight *w, kvrt_view x, kvrt_view y, int32_t n_tokens)
{
    return kvrt_op_matmul(st->be, w->type, wview(w), w->ne[1], w->ne[0], x, w->ne[0], y, w->ne[1], n_tokens);
}

static kvrt_status step_attention(step *st, int32_t layer)
{
    kvrt_llama *lm = st->lm;
    const kvrt_batch *b = st->b;
    int64_t q_dim = (int64_t)lm->hp.n_head * lm->hp.head_dim;
    kvrt_attn_desc d = {
        .n_heads = lm->hp.n_head,
        .max_blocks_per_seq = b->max_blocks_per_seq,
        .scale = (float)(1.0 / sqrt((double)lm->hp.head_dim)),
        .window = lm->hp.sliding_window,
        .q_stride = q_dim,
        .o_stride = q_dim,
        .num_tokens = b->num_tokens,
    };
    if (st->n_decode > 0) {
        d.num_seqs = st->n_decode;
        d.max_seq_len = kvrt_attn_max_len(b->seq_lens, st->n_decode);
        KVRT_TRY(kvrt_op_attn_decode(st->be, st->pool, layer, &d, act(lm, ACT_Q), act(lm, ACT_ATT),
                                      idx(lm, IDX_SEQ_LENS, 0), idx(lm, IDX_TABLES, 0)));
    }
    if (st->n_decode < b->num_seqs) {
        /* query_start_loc keeps absolute token rows, so q and out stay at row 0 */
        int32_t first = st->n_decode;
        d.num_seqs = b->num_seqs - first;
        d.max_seq_len = kvrt_attn_max_len(b->seq_lens + first, d.num_seqs);
        KVRT_TRY(kvrt_op_attn_prefill(st->be, st->pool, layer, &d, act(lm, ACT_Q), act(lm, ACT_ATT),
                                       idx(lm, IDX_QSL, first), idx(lm, IDX_SEQ_LENS, first),
                                       idx(lm, IDX_TABLES, (size_t)first * b->max_blocks_per_seq)));
    }
    return KVRT_OK;
}

static kvrt_status step_rope(step *st, int which, int32_t n_heads)
{
    kvrt_llama *lm = st->lm;
    kvrt_rope_desc d = {
        .n_tokens = st->b->num_tokens,
        .n_heads = n_heads,
        .head_dim = lm->hp.head_dim,
        .rot_dim = lm->hp.rope_dim,
        .neox = lm->hp.rope_neox,
        .max_pos = lm->max_pos,
        .stride = (int64_t)n_heads * lm->hp.head_dim,
    };
    return kvrt_op_rope(st->be, act(lm, which), idx(lm, IDX_POSITIONS, 0), (kvrt_view){lm->rope_table, 0}, &d);
}

/* y[t] += b (Q/K/V biases); nothing when the layer has none. */
static kvrt_status step_bias(step *st, const llama_weight *b, int which, int64_t dim)
{
    if (!b->buf)
        return KVRT_OK;
    kvrt_view x = act(st->lm, which);
    return kvrt_op_add_bias(st->be, x, dim, wview(b), x, dim, st->b->num_tokens, dim);
}

/* Per-head RMSNorm (Qwen3's Q/K norm): the rows are heads, head_dim long. */
static kvrt_status step_head_norm(step *st, const llama_weight *w, int which, int32_t n_heads)
{
    if (!w->buf)
        return KVRT_OK;
    kvrt_llama *lm = st->lm;
    int32_t hd = lm->hp.head_dim;
    /* a row per head: in pieces of at most 32768 rows, inside any device's grid limits */
    int32_t per_call = KVRT_MAX(1, 32768 / n_heads);
    for (int32_t t = 0; t < st->b->num_tokens; t += per_call) {
        int32_t n = KVRT_MIN(per_call, st->b->num_tokens - t);
        kvrt_view x = kvrt_view_at(act(lm, which), (size_t)t * n_heads * hd * sizeof(float));
        KVRT_TRY(kvrt_op_rmsnorm(st->be, x, hd, wview(w), x, hd, n * n_heads, hd, lm->hp.rms_eps));
    }
    return KVRT_OK;
}

static kvrt_status step_layer(step *st, int32_t l)
{
    kvrt_llama *lm = st->lm;
    const kvrt_llama_hparams *hp = &lm->hp;
    const llama_layer_w *w = &lm->layers[l];
    kvrt_backend *be = st->be;
    int32_t T = st->b->num_tokens;
    int64_t kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;

    /* attention sublayer */
    KVRT_TRY(kvrt_op_rmsnorm(be, act(lm, ACT_X), hp->n_embd, wview(&w->attn_norm), act(lm, ACT_H), hp->n_embd, T,
                          hp->n_embd, hp->rms_eps));
    KVRT_TRY(step_matmul(st, &w->wq, act(lm, ACT_H), act(lm, ACT_Q), T));
    KVRT_TRY(step_matmul(st, &w->wk, act(lm, ACT_H), act(lm, ACT_K), T));
    KVRT_TRY(step_matmul(st, &w->wv, act(lm, ACT_H), act(lm, ACT_V), T));
    KVRT_TRY(step_bias(st, &w->bq, ACT_Q, (int64_t)hp->n_head * hp->head_dim));
    KVRT_TRY(step_bias(st, &w->bk, ACT_K, kv_dim));
    KVRT_TRY(step_bias(st, &w->bv, ACT_V, kv_dim));
    KVRT_TRY(step_head_norm(st, &w->q_norm, ACT_Q, hp->n_head));
    KVRT_TRY(step_head_norm(st, &w->k_norm, ACT_K, hp->n_head_kv));
    KVRT_TRY(step_rope(st, ACT_Q, hp->n_head));
    KVRT_TRY(step_rope(st, ACT_K, hp->n_head_kv));
    KVRT_TRY(kvrt_op_kv_write(be, st->pool, l, act(lm, ACT_K), kv_dim, act(lm, ACT_V), kv_dim,
                           idx(lm, IDX_SLOTS, 0), T));
    KVRT_TRY(step_attention(st, l));
    KVRT_TRY(step_matmul(st, &w->wo, act(lm, ACT_ATT), act(lm, ACT_O), T));
    KVRT_TRY(kvrt_op_add(be, act(lm, ACT_X), act(lm, ACT_O), act(lm, ACT_X), (int64_t)T * hp->n_embd));

    /* feed-forward sublayer */
    KVRT_TRY(kvrt_op_rmsnorm(be, act(lm, ACT_X), hp->n_embd, wview(&w->ffn_norm), act(lm, ACT_H), hp->n_embd, T,
                          hp->n_embd, hp->rms_eps));
    KVRT_TRY(step_matmul(st, &w->ffn_gate, act(lm, ACT_H), act(lm, ACT_GATE), T));
    KVRT_TRY(step_matmul(st, &w->ffn_up, act(lm, ACT_H), act(lm, ACT_UP), T));
    KVRT_TRY(kvrt_op_swiglu(be, act(lm, ACT_GATE), hp->n_ff, act(lm, ACT_UP), hp->n_ff, act(lm, ACT_FF), hp->n_ff, T,
                         hp->n_ff));
    KVRT_TRY(step_matmul(st, &w->ffn_down, act(lm, ACT_FF), act(lm, ACT_O), T));
    KVRT_TRY(kvrt_op_add(be, act(lm, ACT_X), act(lm, ACT_O), act(lm, ACT_X), (int64_t)T * hp->n_embd));
    return KVRT_OK;
}

static kvrt_status step_logits(step *st)
{
    kvrt_llama *lm = st->lm;
    const kvrt_llama_hparams *hp = &lm->hp;
    const kvrt_batch *b = st->b;
    if (b->num_logits == 0)
        return KVRT_OK;
    KVRT_TRY(kvrt_op_gather_rows(st->be, act(lm, ACT_X), hp->n_embd, idx(lm, IDX_LOGITS, 0), b->num_logits,
                                  act(lm, ACT_HL), hp->n_embd, hp->n_embd));
    KVRT_TRY(kvrt_op_rmsnorm(st->be, act(lm, ACT_HL), hp->n_embd, wview(&lm->output_norm), act(lm, ACT_HL),
                              hp->n_embd, b->num_logits, hp->n_embd, hp->rms_eps));
    return step_matmul(st, &lm->output, act(lm, ACT_HL), act(lm, ACT_LOGITS), b->num_logits);
}

/* One upload of every batch array, the step's first command: GPU backends
 * record it into the step (no transfer of its own to wait for). */
static kvrt_status upload_batch(kvrt_llama *lm, size_t n_ints)
{
    kvrt_backend *be = lm->be;
    return kvrt_op_buffer_upload(be, lm->ints.buf, 0, lm->ints_host, n_ints * sizeof(int32_t));
}

kvrt_status kvrt_llama_forward(kvrt_llama *lm, kvrt_kv_pool *pool, const kvrt_batch *b, float *logits,
                               kvrt_error *err)
{
    kvrt_backend *be = lm->be;
    KVRT_TRY(check_batch(lm, pool, b, err));
    KVRT_TRY(reserve_activations(lm, b->num_tokens, b->num_logits, err));
    size_t n_ints = 0;
    KVRT_TRY(pack_batch(lm, b, &n_ints, err));
    KVRT_TRY(grow(lm, &lm->ints, n_ints * sizeof(int32_t), err));

    step st = {.lm = lm, .be = be, .pool = pool, .b = b, .n_decode = b->num_decode_seqs};
    kvrt_status s = kvrt_op_begin(be);
    if (s == KVRT_OK)
        s = upload_batch(lm, n_ints);
    if (s == KVRT_OK)
        s = kvrt_op_embed(be, lm->tok_embd.type, wview(&lm->tok_embd), lm->hp.n_embd, idx(lm, IDX_TOKENS, 0),
                       b->num_tokens, act(lm, ACT_X));
    for (int32_t l = 0; s == KVRT_OK && l < lm->hp.n_layer; l++)
        s = step_layer(&st, l);
    if (s == KVRT_OK)
        s = step_logits(&st);
    /* the step's last command: GPU backends record the copy, and the
     * logits arrive when submit() returns */
    if (s == KVRT_OK && b->num_logits > 0)
        s = kvrt_op_buffer_download(be, lm->act[ACT_LOGITS].buf, 0, logits,
                                 (size_t)b->num_logits * lm->hp.n_vocab * sizeof(float));
    s = kvrt_op_end_step(be, s); /* submitted, or dropped after a failure: never left open */
    return be_fail(be, err, s, "forward");
}

void kvrt_llama_rope_shift_row(const kvrt_llama *lm, int32_t delta, float *cos_sin)
{
    int32_t half = lm->hp.rope_dim / 2;
    const kvrt_tensor_ref *rf = &lm->mf->w.rope_freqs;
    int32_t p = delta < 0 ? -delta : delta;
    for (int32_t i = 0; i < half; i++) {
        float factor = 1.0f;
        if (rf->data) /* the mapping need not align it */
            memcpy(&factor, (const char *)rf->data + (size_t)i * sizeof(float), sizeof(float));
        double angle, mscale;
        rope_angle(&lm->hp, NULL, i, p, &angle, &mscale);
        angle /= (double)factor; /* the angle is linear in each pair's frequency too */
        cos_sin[2 * i + 0] = (float)cos(angle);
        cos_sin[2 * i + 1] = (float)(delta < 0 ? -sin(angle) : sin(angle));
    }
}
