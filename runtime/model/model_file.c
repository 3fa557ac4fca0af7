/* GGUF (architecture llama) -> kvrt_model_file: hyper-parameters, weights
 * (pointers into the mapping, read in place) and the vocabulary, each checked
 * against the others so the forward pass can trust every shape. */
#include "model/model_file_internal.h"
#include "model/gguf.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

/* ---- shared with the llama2.c loader ----------------------------------------- */

kvrt_status kvrt_model_file_new(const kvrt_allocator *alloc, kvrt_model_file **out, kvrt_error *err)
{
    kvrt_model_file *mf = kvrt_calloc(alloc, 1, sizeof(*mf));
    if (!mf)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for the model file");
    mf->alloc = alloc;
    kvrt_vocab_init(&mf->vocab);
    *out = mf;
    return KVRT_OK;
}

kvrt_status kvrt_model_file_alloc_layers(kvrt_model_file *mf, kvrt_error *err)
{
    mf->w.layers = kvrt_calloc(mf->alloc, (size_t)mf->hp.n_layer, sizeof(*mf->w.layers));
    if (!mf->w.layers)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for %d layers", mf->hp.n_layer);
    return KVRT_OK;
}

void kvrt_model_file_free(kvrt_model_file *mf)
{
    if (!mf)
        return;
    kvrt_vocab_free(mf->alloc, &mf->vocab);
    kvrt_free(mf->alloc, mf->w.layers);
    kvrt_free(mf->alloc, mf->owned);
    if (mf->mapping)
        munmap(mf->mapping, mf->mapping_size);
    kvrt_free(mf->alloc, mf);
}

kvrt_status kvrt_llama_hparams_check(kvrt_llama_hparams *hp, kvrt_error *err)
{
    const struct {
        const char *name;
        int32_t v;
    } pos[] = {{"n_vocab", hp->n_vocab}, {"n_embd", hp->n_embd},   {"n_layer", hp->n_layer},
               {"n_ff", hp->n_ff},       {"n_head", hp->n_head},   {"n_head_kv", hp->n_head_kv},
               {"n_ctx_train", hp->n_ctx_train}};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(pos); i++)
        if (pos[i].v <= 0)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "model %s = %d must be positive", pos[i].name, pos[i].v);
    if (hp->n_embd % hp->n_head != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "n_embd %d is not a multiple of n_head %d", hp->n_embd,
                         hp->n_head);
    if (hp->n_head % hp->n_head_kv != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "n_head %d is not a multiple of n_head_kv %d", hp->n_head,
                         hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    if (hp->rope_dim == 0)
        hp->rope_dim = hp->head_dim;
    if (hp->rope_dim < 0 || hp->rope_dim > hp->head_dim || hp->rope_dim % 2 != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "rope dimension count %d must be even and <= head_dim %d",
                         hp->rope_dim, hp->head_dim);
    if (!(hp->rope_freq_base > 0.0f) || !isfinite(hp->rope_freq_base))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "rope freq_base %g must be positive", (double)hp->rope_freq_base);
    if (!(hp->rms_eps > 0.0f) || !isfinite(hp->rms_eps))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "rms epsilon %g must be positive", (double)hp->rms_eps);
    return KVRT_OK;
}

kvrt_status kvrt_tensor_ref_set(kvrt_tensor_ref *t, const char *name, kvrt_dtype type, const void *data,
                                int64_t ne0, int64_t ne1, kvrt_error *err)
{
    int64_t n;
    size_t row = kvrt_dtype_row_bytes(type, ne0);
    if (!kvrt_mul_i64(ne0, ne1, &n) || row == 0 || !kvrt_mul_size(row, (size_t)ne1, &t->nbytes))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s': shape [%lld, %lld] of type %s has no valid size",
                         name, (long long)ne0, (long long)ne1, kvrt_dtype_name(type));
    t->type = type;
    t->data = data;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    return KVRT_OK;
}

static kvrt_status check_one(const kvrt_tensor_ref *t, const char *name, int64_t ne0, int64_t ne1, kvrt_error *err)
{
    if (!t->data)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s' is missing", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]", name,
                         (long long)t->ne[0], (long long)t->ne[1], (long long)ne0, (long long)ne1);
    if (!kvrt_dtype_supported(t->type))
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "tensor '%s' has type %u, which kvrt does not run", name,
                         (unsigned)t->type);
    if (ne1 == 1 && t->type != KVRT_DTYPE_F32)
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "norm tensor '%s' has type %s; kvrt runs f32 norms", name,
                         kvrt_dtype_name(t->type));
    return KVRT_OK;
}

kvrt_status kvrt_model_file_check_weights(const kvrt_model_file *mf, kvrt_error *err)
{
    const kvrt_llama_hparams *hp = &mf->hp;
    const kvrt_llama_weights *w = &mf->w;
    int64_t q = (int64_t)hp->n_head * hp->head_dim, kv = (int64_t)hp->n_head_kv * hp->head_dim;
    KVRT_TRY(check_one(&w->tok_embd, "token_embd.weight", hp->n_embd, hp->n_vocab, err));
    KVRT_TRY(check_one(&w->output_norm, "output_norm.weight", hp->n_embd, 1, err));
    KVRT_TRY(check_one(&w->output, "output.weight", hp->n_embd, hp->n_vocab, err));
    for (int32_t i = 0; i < hp->n_layer; i++) {
        const kvrt_llama_layer *l = &w->layers[i];
        const struct {
            const kvrt_tensor_ref *t;
            const char *name;
            int64_t ne0, ne1;
        } want[] = {
            {&l->attn_norm, "attn_norm", hp->n_embd, 1}, {&l->wq, "attn_q", hp->n_embd, q},
            {&l->wk, "attn_k", hp->n_embd, kv},          {&l->wv, "attn_v", hp->n_embd, kv},
            {&l->wo, "attn_output", q, hp->n_embd},      {&l->ffn_norm, "ffn_norm", hp->n_embd, 1},
            {&l->ffn_gate, "ffn_gate", hp->n_embd, hp->n_ff}, {&l->ffn_down, "ffn_down", hp->n_ff, hp->n_embd},
            {&l->ffn_up, "ffn_up", hp->n_embd, hp->n_ff},
        };
        for (size_t k = 0; k < KVRT_ARRAY_LEN(want); k++) {
            char name[64];
            snprintf(name, sizeof(name), "blk.%d.%s.weight", i, want[k].name);
            KVRT_TRY(check_one(want[k].t, name, want[k].ne0, want[k].ne1, err));
        }
    }
    return KVRT_OK;
}

/* ---- GGUF hyper-parameters ------------------------------------------------------- */

static kvrt_status get_i32(const kvrt_gguf *g, const char *key, int32_t *out, int32_t def, bool required,
                           kvrt_error *err)
{
    uint32_t v;
    bool found;
    KVRT_TRY(kvrt_gguf_get_u32(g, key, &v, &found, err));
    if (!found) {
        if (required)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' is missing", key);
        *out = def;
        return KVRT_OK;
    }
    if (v > INT32_MAX)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' = %u is too large", key, v);
    *out = (int32_t)v;
    return KVRT_OK;
}

static kvrt_status get_f32(const kvrt_gguf *g, const char *key, float *out, float def, kvrt_error *err)
{
    bool found;
    KVRT_TRY(kvrt_gguf_get_f32(g, key, out, &found, err));
    if (!found)
        *out = def;
    return KVRT_OK;
}

/* RoPE scaling changes every position's angle: run it or refuse, never ignore. */
static kvrt_status reject_rope_scaling(const kvrt_gguf *g, kvrt_error *err)
{
    static const char prefix[] = "llama.rope.scaling.";
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const kvrt_gguf_kv *kv = &g->kv[i];
        bool scaling = kv->key.len >= sizeof(prefix) - 1 && memcmp(kv->key.ptr, prefix, sizeof(prefix) - 1) == 0;
        bool linear = kvrt_gguf_str_eq(kv->key, "llama.rope.scale_linear");
        if (!scaling && !linear)
            continue;
        if (kvrt_gguf_str_eq(kv->key, "llama.rope.scaling.type") && kv->type == KVRT_GGUF_STRING &&
            kvrt_gguf_str_eq(kv->strs[0], "none"))
            continue;
        bool is_factor = linear || kvrt_gguf_str_eq(kv->key, "llama.rope.scaling.factor");
        if (is_factor && kv->type != KVRT_GGUF_ARRAY && kv->type != KVRT_GGUF_STRING && kv->type != KVRT_GGUF_BOOL) {
            double f = kvrt_gguf_kv_float(kv, 0);
            if (f == 0.0 || f == 1.0)
                continue;
        }
        if (kv->type == KVRT_GGUF_STRING)
            return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "RoPE scaling is not supported: %.*s = '%.*s'",
                             (int)kv->key.len, kv->key.ptr, (int)KVRT_MIN(kv->strs[0].len, 64), kv->strs[0].ptr);
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "RoPE scaling is not supported: key '%.*s' is set",
                         (int)kv->key.len, kv->key.ptr);
    }
    if (kvrt_gguf_find_tensor(g, "rope_freqs.weight"))
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED,
                         "RoPE scaling is not supported: the file has a 'rope_freqs.weight' tensor");
    return KVRT_OK;
}

static kvrt_status read_arch(const kvrt_gguf *g, kvrt_model_file *mf, bool required, kvrt_error *err)
{
    kvrt_gguf_str arch = {"", 0};
    bool found;
    KVRT_TRY(kvrt_gguf_get_str(g, "general.architecture", &arch, &found, err));
    if (!found) {
        if (required)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key 'general.architecture' is missing");
        return KVRT_OK;
    }
    /* A vocabulary-only file (no weights) tokenizes whatever its architecture. */
    if (!required) {
        snprintf(mf->arch, sizeof(mf->arch), "%.*s", (int)KVRT_MIN(arch.len, sizeof(mf->arch) - 1), arch.ptr);
        return KVRT_OK;
    }
    if (!kvrt_gguf_str_eq(arch, "llama"))
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "model architecture '%.*s' is not supported (only llama)",
                         (int)KVRT_MIN(arch.len, 64), arch.ptr);
    snprintf(mf->arch, sizeof(mf->arch), "llama");
    return KVRT_OK;
}

static kvrt_status read_hparams(const kvrt_gguf *g, kvrt_llama_hparams *hp, kvrt_error *err)
{
    KVRT_TRY(get_i32(g, "llama.context_length", &hp->n_ctx_train, 0, true, err));
    KVRT_TRY(get_i32(g, "llama.embedding_length", &hp->n_embd, 0, true, err));
    KVRT_TRY(get_i32(g, "llama.block_count", &hp->n_layer, 0, true, err));
    KVRT_TRY(get_i32(g, "llama.feed_forward_length", &hp->n_ff, 0, true, err));
    KVRT_TRY(get_i32(g, "llama.attention.head_count", &hp->n_head, 0, true, err));
    KVRT_TRY(get_i32(g, "llama.attention.head_count_kv", &hp->n_head_kv, hp->n_head, false, err));
    KVRT_TRY(get_i32(g, "llama.rope.dimension_count", &hp->rope_dim, 0, false, err));
    KVRT_TRY(get_f32(g, "llama.rope.freq_base", &hp->rope_freq_base, 10000.0f, err));
    KVRT_TRY(get_f32(g, "llama.attention.layer_norm_rms_epsilon", &hp->rms_eps, 1e-5f, err));
    hp->rope_neox = 0;
    if (hp->rope_dim == 0 && kvrt_gguf_find_kv(g, "llama.rope.dimension_count"))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key 'llama.rope.dimension_count' is 0");
    KVRT_TRY(reject_rope_scaling(g, err));
    return kvrt_llama_hparams_check(hp, err);
}

/* ---- GGUF tensors ------------------------------------------------------------------- */

static kvrt_status bind_tensor(const kvrt_gguf *g, const char *name, bool optional, kvrt_tensor_ref *out,
                               kvrt_error *err)
{
    const kvrt_gguf_tensor *t = kvrt_gguf_find_tensor(g, name);
    if (!t) {
        if (optional)
            return KVRT_OK;
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s' is missing", name);
    }
    if (!kvrt_dtype_supported((kvrt_dtype)t->type)) {
        const char *tn = kvrt_ggml_type_name(t->type);
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "tensor '%s' has type %s (ggml type %u), which kvrt does not run",
                         name, tn ? tn : "?", t->type);
    }
    for (uint32_t d = 2; d < KVRT_GGUF_MAX_DIMS; d++)
        if (t->ne[d] != 1)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s' has %u dimensions (dimension %u = %lld), expected 2",
                             name, t->n_dims, d, (long long)t->ne[d]);
    KVRT_TRY(kvrt_tensor_ref_set(out, name, (kvrt_dtype)t->type, t->data, t->ne[0], t->ne[1], err));
    if (out->nbytes != t->nbytes)
        return kvrt_fail(err, KVRT_ERR_INTERNAL, "tensor '%s': size disagreement", name);
    return KVRT_OK;
}

static void report(const kvrt_load_progress *progress, double fraction)
{
    if (progress && progress->fn)
        progress->fn(progress->user, fraction);
}

static kvrt_status bind_weights(const kvrt_gguf *g, kvrt_model_file *mf, const kvrt_load_progress *progress,
                                kvrt_error *err)
{
    kvrt_llama_weights *w = &mf->w;
    /* block_count sizes an allocation: check it against the tensors first */
    if ((uint64_t)mf->hp.n_layer > g->n_tensors / 9)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF llama.block_count %d needs %lld tensors, the file has %llu",
                         mf->hp.n_layer, 9LL * mf->hp.n_layer + 2, (unsigned long long)g->n_tensors);
    KVRT_TRY(kvrt_model_file_alloc_layers(mf, err));
    KVRT_TRY(bind_tensor(g, "token_embd.weight", false, &w->tok_embd, err));
    KVRT_TRY(bind_tensor(g, "output_norm.weight", false, &w->output_norm, err));
    KVRT_TRY(bind_tensor(g, "output.weight", true, &w->output, err));
    if (!w->output.data)
        w->output = w->tok_embd; /* tied classifier */
    static const char *const names[] = {"attn_norm", "attn_q",   "attn_k",   "attn_v", "attn_output",
                                        "ffn_norm",  "ffn_gate", "ffn_down", "ffn_up"};
    for (int32_t i = 0; i < mf->hp.n_layer; i++) {
        kvrt_llama_layer *l = &w->layers[i];
        kvrt_tensor_ref *refs[] = {&l->attn_norm, &l->wq,       &l->wk,       &l->wv,    &l->wo,
                                   &l->ffn_norm,  &l->ffn_gate, &l->ffn_down, &l->ffn_up};
        for (size_t k = 0; k < KVRT_ARRAY_LEN(names); k++) {
            char name[64];
            snprintf(name, sizeof(name), "blk.%d.%s.weight", i, names[k]);
            KVRT_TRY(bind_tensor(g, name, false, refs[k], err));
        }
        report(progress, (double)(i + 1) / mf->hp.n_layer);
    }
    mf->main_type = mf->hp.n_layer > 0 ? w->layers[0].wq.type : w->tok_embd.type;
    return kvrt_model_file_check_weights(mf, err);
}

/* ---- loading ---------------------------------------------------------------------------- */

static kvrt_status map_gguf(const kvrt_gguf *g, bool vocab_only_ok, const kvrt_load_progress *progress,
                            kvrt_model_file *mf, kvrt_error *err)
{
    bool vocab_only = g->n_tensors == 0;
    if (vocab_only && !vocab_only_ok)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF file has no tensors (a vocabulary-only file?)");
    KVRT_TRY(read_arch(g, mf, !vocab_only, err));
    KVRT_TRY(kvrt_vocab_read_gguf(g, mf->alloc, &mf->vocab, err));
    mf->vocab_only = vocab_only;
    if (vocab_only) {
        mf->hp.n_vocab = mf->vocab.n_tokens;
        return KVRT_OK;
    }
    mf->hp.n_vocab = mf->vocab.n_tokens;
    KVRT_TRY(read_hparams(g, &mf->hp, err));
    return bind_weights(g, mf, progress, err);
}

static kvrt_status load(kvrt_gguf *g, const kvrt_allocator *alloc, bool vocab_only_ok,
                        const kvrt_load_progress *progress, kvrt_model_file **out, kvrt_error *err)
{
    kvrt_model_file *mf = NULL;
    kvrt_status s = kvrt_model_file_new(alloc, &mf, err);
    if (s == KVRT_OK) {
        s = map_gguf(g, vocab_only_ok, progress, mf, err);
        if (s == KVRT_OK) {
            kvrt_gguf_take_mapping(g, &mf->mapping, &mf->mapping_size);
            *out = mf;
        } else {
            kvrt_model_file_free(mf);
        }
    }
    kvrt_gguf_close(g);
    return s;
}

kvrt_status kvrt_model_file_load_gguf(const char *path, const kvrt_allocator *alloc, bool vocab_only_ok,
                                      const kvrt_load_progress *progress, kvrt_model_file **out, kvrt_error *err)
{
    *out = NULL;
    kvrt_gguf *g;
    kvrt_status s = kvrt_gguf_open(path, alloc, &g, err);
    if (s != KVRT_OK)
        return s;
    s = load(g, alloc, vocab_only_ok, progress, out, err);
    if (s == KVRT_OK)
        report(progress, 1.0);
    return s;
}

kvrt_status kvrt_model_file_load_gguf_memory(const void *data, size_t size, const kvrt_allocator *alloc,
                                             bool vocab_only_ok, kvrt_model_file **out, kvrt_error *err)
{
    *out = NULL;
    kvrt_gguf *g;
    KVRT_TRY(kvrt_gguf_open_memory(data, size, alloc, &g, err));
    return load(g, alloc, vocab_only_ok, NULL, out, err);
}
