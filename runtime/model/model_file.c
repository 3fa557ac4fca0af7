/* GGUF (architecture llama) -> kvrt_model_file: hyper-parameters, weights
 * (pointers into the mapping, read in place) and the vocabulary, each checked
 * against the others so the forward pass can trust every shape. */
#include "model/model_file_internal.h"
#include "model/gguf.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
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

const char *kvrt_arch_name(kvrt_arch arch)
{
    switch (arch) {
    case KVRT_ARCH_LLAMA: return "llama";
    case KVRT_ARCH_QWEN2: return "qwen2";
    case KVRT_ARCH_QWEN3: return "qwen3";
    }
    return "?";
}

static bool positive_finite(float v)
{
    return v > 0.0f && isfinite(v);
}

/* RoPE scaling: zero fields get their defaults, the rest must make sense. */
static kvrt_status check_rope_scaling(kvrt_llama_hparams *hp, kvrt_error *err)
{
    if (hp->rope_scaling < KVRT_ROPE_SCALING_NONE || hp->rope_scaling > KVRT_ROPE_SCALING_YARN)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "RoPE scaling type %d is unknown", (int)hp->rope_scaling);
    if (hp->rope_scale == 0.0f)
        hp->rope_scale = 1.0f;
    if (hp->rope_attn_factor == 0.0f)
        hp->rope_attn_factor = 1.0f;
    if (hp->yarn_beta_fast == 0.0f)
        hp->yarn_beta_fast = 32.0f;
    if (hp->yarn_beta_slow == 0.0f)
        hp->yarn_beta_slow = 1.0f;
    if (hp->rope_orig_ctx == 0)
        hp->rope_orig_ctx = hp->n_ctx_train;
    const struct {
        const char *name;
        float v;
    } f[] = {{"factor", hp->rope_scale},
             {"attn_factor", hp->rope_attn_factor},
             {"YaRN beta_fast", hp->yarn_beta_fast},
             {"YaRN beta_slow", hp->yarn_beta_slow}};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(f); i++)
        if (!positive_finite(f[i].v))
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "RoPE scaling %s %g must be finite and positive", f[i].name,
                             (double)f[i].v);
    if (hp->rope_orig_ctx < 1)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "RoPE scaling original context length %d must be positive",
                         (int)hp->rope_orig_ctx);
    if (hp->sliding_window < 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "sliding window %d must not be negative", (int)hp->sliding_window);
    return KVRT_OK;
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
    if (hp->arch < KVRT_ARCH_LLAMA || hp->arch > KVRT_ARCH_QWEN3)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "architecture %d is unknown", (int)hp->arch);
    if (hp->head_dim < 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "head_dim %d must be positive", (int)hp->head_dim);
    if (hp->head_dim == 0 && hp->n_embd % hp->n_head != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "n_embd %d is not a multiple of n_head %d", hp->n_embd,
                         hp->n_head);
    if (hp->n_head % hp->n_head_kv != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "n_head %d is not a multiple of n_head_kv %d", hp->n_head,
                         hp->n_head_kv);
    if (hp->head_dim == 0)
        hp->head_dim = hp->n_embd / hp->n_head;
    if ((int64_t)hp->head_dim * hp->n_head > INT32_MAX / 2)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "head_dim %d x %d heads is too large", (int)hp->head_dim,
                         (int)hp->n_head);
    if (hp->rope_dim == 0)
        hp->rope_dim = hp->head_dim;
    if (hp->rope_dim < 0 || hp->rope_dim > hp->head_dim || hp->rope_dim % 2 != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "rope dimension count %d must be even and <= head_dim %d",
                         hp->rope_dim, hp->head_dim);
    if (!(hp->rope_freq_base > 0.0f) || !isfinite(hp->rope_freq_base))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "rope freq_base %g must be positive", (double)hp->rope_freq_base);
    if (!(hp->rms_eps > 0.0f) || !isfinite(hp->rms_eps))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "rms epsilon %g must be positive", (double)hp->rms_eps);
    return check_rope_scaling(hp, err);
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

int32_t kvrt_llama_layer_slots(const kvrt_llama_hparams *hp, kvrt_llama_layer *l, kvrt_tensor_slot *out)
{
    int64_t q = (int64_t)hp->n_head * hp->head_dim, kv = (int64_t)hp->n_head_kv * hp->head_dim;
    bool qwen2 = hp->arch == KVRT_ARCH_QWEN2, qwen3 = hp->arch == KVRT_ARCH_QWEN3, llama = hp->arch == KVRT_ARCH_LLAMA;
    /* biases: Qwen2 has them; some Llama-architecture files too (read when present) */
    kvrt_tensor_need bias = qwen2 ? KVRT_TENSOR_REQUIRED : llama ? KVRT_TENSOR_OPTIONAL : KVRT_TENSOR_UNUSED;
    kvrt_tensor_need norm = qwen3 ? KVRT_TENSOR_REQUIRED : KVRT_TENSOR_UNUSED;
    const kvrt_tensor_slot all[KVRT_LAYER_SLOTS] = {
        {&l->attn_norm, "attn_norm.weight", hp->n_embd, 1, KVRT_TENSOR_REQUIRED},
        {&l->wq, "attn_q.weight", hp->n_embd, q, KVRT_TENSOR_REQUIRED},
        {&l->wk, "attn_k.weight", hp->n_embd, kv, KVRT_TENSOR_REQUIRED},
        {&l->wv, "attn_v.weight", hp->n_embd, kv, KVRT_TENSOR_REQUIRED},
        {&l->wo, "attn_output.weight", q, hp->n_embd, KVRT_TENSOR_REQUIRED},
        {&l->ffn_norm, "ffn_norm.weight", hp->n_embd, 1, KVRT_TENSOR_REQUIRED},
        {&l->ffn_gate, "ffn_gate.weight", hp->n_embd, hp->n_ff, KVRT_TENSOR_REQUIRED},
        {&l->ffn_down, "ffn_down.weight", hp->n_ff, hp->n_embd, KVRT_TENSOR_REQUIRED},
        {&l->ffn_up, "ffn_up.weight", hp->n_embd, hp->n_ff, KVRT_TENSOR_REQUIRED},
        {&l->bq, "attn_q.bias", q, 1, bias},
        {&l->bk, "attn_k.bias", kv, 1, bias},
        {&l->bv, "attn_v.bias", kv, 1, bias},
        {&l->q_norm, "attn_q_norm.weight", hp->head_dim, 1, norm},
        {&l->k_norm, "attn_k_norm.weight", hp->head_dim, 1, norm},
    };
    memcpy(out, all, sizeof(all));
    return KVRT_LAYER_SLOTS;
}

/* rope_freqs: one divisor per rotated pair, finite and positive. */
static kvrt_status check_rope_freqs(const kvrt_model_file *mf, kvrt_error *err)
{
    const kvrt_tensor_ref *t = &mf->w.rope_freqs;
    if (!t->data)
        return KVRT_OK;
    if (mf->hp.arch != KVRT_ARCH_LLAMA)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor 'rope_freqs.weight' is not used by architecture %s",
                         kvrt_arch_name(mf->hp.arch));
    KVRT_TRY(check_one(t, "rope_freqs.weight", mf->hp.rope_dim / 2, 1, err));
    const float *f = t->data;
    for (int32_t i = 0; i < mf->hp.rope_dim / 2; i++) {
        float v;
        memcpy(&v, f + i, sizeof(v)); /* the mapping need not align it */
        if (!(v > 0.0f) || !isfinite(v))
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "rope_freqs.weight[%d] = %g: factors must be finite and positive",
                             (int)i, (double)v);
    }
    return KVRT_OK;
}

kvrt_status kvrt_model_file_check_weights(const kvrt_model_file *mf, kvrt_error *err)
{
    const kvrt_llama_hparams *hp = &mf->hp;
    const kvrt_llama_weights *w = &mf->w;
    KVRT_TRY(check_one(&w->tok_embd, "token_embd.weight", hp->n_embd, hp->n_vocab, err));
    KVRT_TRY(check_one(&w->output_norm, "output_norm.weight", hp->n_embd, 1, err));
    KVRT_TRY(check_one(&w->output, "output.weight", hp->n_embd, hp->n_vocab, err));
    KVRT_TRY(check_rope_freqs(mf, err));
    for (int32_t i = 0; i < hp->n_layer; i++) {
        kvrt_tensor_slot slots[KVRT_LAYER_SLOTS];
        int32_t n = kvrt_llama_layer_slots(hp, (kvrt_llama_layer *)&w->layers[i], slots);
        for (int32_t k = 0; k < n; k++) {
            char name[96];
            snprintf(name, sizeof(name), "blk.%d.%s", i, slots[k].name);
            if (!slots[k].t->data && slots[k].need != KVRT_TENSOR_REQUIRED)
                continue;
            if (!slots[k].t->data)
                return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s' is missing (architecture %s needs it)", name,
                                 kvrt_arch_name(hp->arch));
            if (slots[k].need == KVRT_TENSOR_UNUSED)
                return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s' is not used by architecture %s", name,
                                 kvrt_arch_name(hp->arch));
            KVRT_TRY(check_one(slots[k].t, name, slots[k].ne0, slots[k].ne1, err));
        }
    }
    return KVRT_OK;
}

/* ---- GGUF hyper-parameters ------------------------------------------------------- */

/* "{arch}.{rest}" */
static const char *akey(const kvrt_model_file *mf, const char *rest, char *buf, size_t size)
{
    snprintf(buf, size, "%s.%s", mf->arch, rest);
    return buf;
}

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
    else if (!isfinite(*out))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' = %g is not finite", key, (double)*out);
    return KVRT_OK;
}

/* RoPE scaling changes every position's angle: run it or refuse, never ignore. */
static kvrt_status read_rope_scaling(const kvrt_gguf *g, kvrt_model_file *mf, kvrt_error *err)
{
    kvrt_llama_hparams *hp = &mf->hp;
    char k[96];
    kvrt_gguf_str type = {"", 0};
    bool found;
    KVRT_TRY(kvrt_gguf_get_str(g, akey(mf, "rope.scaling.type", k, sizeof(k)), &type, &found, err));
    float factor = 0.0f;
    KVRT_TRY(get_f32(g, akey(mf, "rope.scaling.factor", k, sizeof(k)), &factor, 0.0f, err));
    if (factor == 0.0f) /* the older key */
        KVRT_TRY(get_f32(g, akey(mf, "rope.scale_linear", k, sizeof(k)), &factor, 0.0f, err));
    if (!found || kvrt_gguf_str_eq(type, "linear"))
        hp->rope_scaling = factor == 0.0f || factor == 1.0f ? KVRT_ROPE_SCALING_NONE : KVRT_ROPE_SCALING_LINEAR;
    else if (kvrt_gguf_str_eq(type, "none"))
        hp->rope_scaling = KVRT_ROPE_SCALING_NONE;
    else if (kvrt_gguf_str_eq(type, "yarn"))
        hp->rope_scaling = KVRT_ROPE_SCALING_YARN;
    else
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "RoPE scaling '%.*s' (%s) is not supported (none, linear, yarn)",
                         (int)KVRT_MIN(type.len, 64), type.ptr, k);
    if (factor < 0.0f)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "RoPE scaling factor %g must be positive", (double)factor);
    hp->rope_scale = hp->rope_scaling == KVRT_ROPE_SCALING_NONE ? 1.0f : factor;
    if (hp->rope_scaling == KVRT_ROPE_SCALING_YARN && factor == 0.0f)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "YaRN RoPE scaling needs '%s'",
                         akey(mf, "rope.scaling.factor", k, sizeof(k)));
    KVRT_TRY(get_f32(g, akey(mf, "rope.scaling.attn_factor", k, sizeof(k)), &hp->rope_attn_factor, 1.0f, err));
    if (kvrt_gguf_find_kv(g, akey(mf, "rope.scaling.attn_factor", k, sizeof(k))) && !(hp->rope_attn_factor > 0.0f))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' = %g must be positive", k, (double)hp->rope_attn_factor);
    KVRT_TRY(get_i32(g, akey(mf, "rope.scaling.original_context_length", k, sizeof(k)), &hp->rope_orig_ctx,
                     hp->n_ctx_train, false, err));
    if (hp->rope_orig_ctx <= 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' must be positive", k);
    if (kvrt_gguf_find_kv(g, akey(mf, "rope.scaling.yarn_log_multiplier", k, sizeof(k))))
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "RoPE scaling: key '%s' (DeepSeek-2's YaRN) is not supported", k);
    return KVRT_OK;
}

/* general.architecture -> the family; a vocabulary-only file tokenizes whatever its architecture. */
static kvrt_status read_arch(const kvrt_gguf *g, kvrt_model_file *mf, bool required, kvrt_error *err)
{
    static const struct {
        const char *name;
        kvrt_arch arch;
    } known[] = {{"llama", KVRT_ARCH_LLAMA}, {"qwen2", KVRT_ARCH_QWEN2}, {"qwen3", KVRT_ARCH_QWEN3}};
    kvrt_gguf_str arch = {"", 0};
    bool found;
    KVRT_TRY(kvrt_gguf_get_str(g, "general.architecture", &arch, &found, err));
    if (!found) {
        if (required)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key 'general.architecture' is missing");
        return KVRT_OK;
    }
    if (!required) {
        snprintf(mf->arch, sizeof(mf->arch), "%.*s", (int)KVRT_MIN(arch.len, sizeof(mf->arch) - 1), arch.ptr);
        return KVRT_OK;
    }
    for (size_t i = 0; i < KVRT_ARRAY_LEN(known); i++)
        if (kvrt_gguf_str_eq(arch, known[i].name)) {
            mf->hp.arch = known[i].arch;
            snprintf(mf->arch, sizeof(mf->arch), "%s", known[i].name);
            return KVRT_OK;
        }
    return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "model architecture '%.*s' is not supported (llama, qwen2, qwen3)",
                     (int)KVRT_MIN(arch.len, 64), arch.ptr);
}

static kvrt_status read_hparams(const kvrt_gguf *g, kvrt_model_file *mf, kvrt_error *err)
{
    kvrt_llama_hparams *hp = &mf->hp;
    char k[96];
    KVRT_TRY(get_i32(g, akey(mf, "context_length", k, sizeof(k)), &hp->n_ctx_train, 0, true, err));
    KVRT_TRY(get_i32(g, akey(mf, "embedding_length", k, sizeof(k)), &hp->n_embd, 0, true, err));
    KVRT_TRY(get_i32(g, akey(mf, "block_count", k, sizeof(k)), &hp->n_layer, 0, true, err));
    KVRT_TRY(get_i32(g, akey(mf, "feed_forward_length", k, sizeof(k)), &hp->n_ff, 0, true, err));
    KVRT_TRY(get_i32(g, akey(mf, "attention.head_count", k, sizeof(k)), &hp->n_head, 0, true, err));
    KVRT_TRY(get_i32(g, akey(mf, "attention.head_count_kv", k, sizeof(k)), &hp->n_head_kv, hp->n_head, false, err));
    int32_t key_len = 0, value_len = 0;
    KVRT_TRY(get_i32(g, akey(mf, "attention.key_length", k, sizeof(k)), &key_len, 0, false, err));
    KVRT_TRY(get_i32(g, akey(mf, "attention.value_length", k, sizeof(k)), &value_len, key_len, false, err));
    if (key_len != value_len)
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "key length %d differs from value length %d", (int)key_len,
                         (int)value_len);
    if (kvrt_gguf_find_kv(g, akey(mf, "attention.key_length", k, sizeof(k))) && key_len <= 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' = %d must be positive", k, (int)key_len);
    hp->head_dim = key_len;
    KVRT_TRY(get_i32(g, akey(mf, "rope.dimension_count", k, sizeof(k)), &hp->rope_dim, 0, false, err));
    if (hp->rope_dim == 0 && kvrt_gguf_find_kv(g, k))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' is 0", k);
    KVRT_TRY(get_f32(g, akey(mf, "rope.freq_base", k, sizeof(k)), &hp->rope_freq_base, 10000.0f, err));
    KVRT_TRY(get_f32(g, akey(mf, "attention.layer_norm_rms_epsilon", k, sizeof(k)), &hp->rms_eps, 1e-5f, err));
    KVRT_TRY(get_i32(g, akey(mf, "attention.sliding_window", k, sizeof(k)), &hp->sliding_window, 0, false, err));
    if (hp->sliding_window == 0 && kvrt_gguf_find_kv(g, k))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF key '%s' is 0", k);
    /* NeoX rotation (halves) is the families' own: no key chooses it */
    hp->rope_neox = hp->arch == KVRT_ARCH_LLAMA ? 0 : 1;
    KVRT_TRY(read_rope_scaling(g, mf, err));
    return kvrt_llama_hparams_check(hp, err);
}

/* ---- GGUF tensors ------------------------------------------------------------------- */

/* A NaN or infinite block scale would turn whole rows of outputs into NaN
 * on every backend: refused at load, naming the tensor and block. Reading
 * the scales touches every page of the tensor once; with the pages already
 * cached that is the cost of their first-touch faults, which the first
 * forward pass would pay anyway (docs/architecture.md). */
static kvrt_status check_scales(const kvrt_tensor_ref *t, const char *name, kvrt_error *err)
{
    int64_t bad;
    if (kvrt_dtype_row_scales_finite(t->type, t->data, t->ne[0] * t->ne[1], &bad))
        return KVRT_OK;
    int64_t per_row = t->ne[0] / kvrt_dtype_block_values(t->type);
    return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s' (%s): block %lld of row %lld has a NaN or infinite scale",
                     name, kvrt_dtype_name(t->type), (long long)(bad % per_row), (long long)(bad / per_row));
}

static kvrt_status bind_tensor(const kvrt_gguf *g, const kvrt_model_file *mf, const char *name, bool optional,
                               kvrt_tensor_ref *out, int64_t *bound, kvrt_error *err)
{
    const kvrt_gguf_tensor *t = kvrt_gguf_find_tensor(g, name);
    if (!t) {
        if (optional)
            return KVRT_OK;
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "tensor '%s' is missing (architecture %s needs it)", name,
                         mf->arch);
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
    (*bound)++;
    return check_scales(out, name, err);
}

static void report(const kvrt_load_progress *progress, double fraction)
{
    if (progress && progress->fn)
        progress->fn(progress->user, fraction);
}

/* Every tensor of the file must be one the architecture uses: name the first that is not. */
static kvrt_status check_all_used(const kvrt_gguf *g, const kvrt_model_file *mf, int64_t bound, kvrt_error *err)
{
    if ((uint64_t)bound == g->n_tensors)
        return KVRT_OK;
    char name[96];
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const kvrt_gguf_str n = g->tensors[i].name;
        snprintf(name, sizeof(name), "%.*s", (int)KVRT_MIN(n.len, sizeof(name) - 1), n.ptr);
        bool used = !strcmp(name, "token_embd.weight") || !strcmp(name, "output_norm.weight") ||
                    (!strcmp(name, "output.weight") && mf->w.output.data != mf->w.tok_embd.data) ||
                    (!strcmp(name, "rope_freqs.weight") && mf->w.rope_freqs.data);
        int layer = -1, used_len = 0;
        if (!used && sscanf(name, "blk.%d.%n", &layer, &used_len) == 1 && layer >= 0 && layer < mf->hp.n_layer) {
            kvrt_tensor_slot slots[KVRT_LAYER_SLOTS];
            kvrt_llama_layer_slots(&mf->hp, &mf->w.layers[layer], slots);
            for (int k = 0; k < KVRT_LAYER_SLOTS && !used; k++)
                used = slots[k].t->data && !strcmp(name + used_len, slots[k].name);
        }
        if (!used)
            return kvrt_fail(err, KVRT_ERR_BAD_MODEL,
                             "tensor '%s' is not used by architecture %s with %s.block_count %d: the file is "
                             "inconsistent or of another family", name, mf->arch, mf->arch, (int)mf->hp.n_layer);
    }
    return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "the file has %llu tensors, architecture %s uses %lld",
                     (unsigned long long)g->n_tensors, mf->arch, (long long)bound);
}

static kvrt_status bind_weights(const kvrt_gguf *g, kvrt_model_file *mf, const kvrt_load_progress *progress,
                                kvrt_error *err)
{
    kvrt_llama_weights *w = &mf->w;
    /* block_count sizes an allocation: check it against the tensors first */
    if ((uint64_t)mf->hp.n_layer > g->n_tensors / 9)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "GGUF %s.block_count %d needs %lld tensors, the file has %llu",
                         mf->arch, mf->hp.n_layer, 9LL * mf->hp.n_layer + 2, (unsigned long long)g->n_tensors);
    KVRT_TRY(kvrt_model_file_alloc_layers(mf, err));
    int64_t bound = 0;
    KVRT_TRY(bind_tensor(g, mf, "token_embd.weight", false, &w->tok_embd, &bound, err));
    KVRT_TRY(bind_tensor(g, mf, "output_norm.weight", false, &w->output_norm, &bound, err));
    KVRT_TRY(bind_tensor(g, mf, "output.weight", true, &w->output, &bound, err));
    KVRT_TRY(bind_tensor(g, mf, "rope_freqs.weight", true, &w->rope_freqs, &bound, err));
    if (!w->output.data)
        w->output = w->tok_embd; /* tied classifier */
    for (int32_t i = 0; i < mf->hp.n_layer; i++) {
        kvrt_tensor_slot slots[KVRT_LAYER_SLOTS];
        int32_t n = kvrt_llama_layer_slots(&mf->hp, &w->layers[i], slots);
        for (int32_t k = 0; k < n; k++) {
            if (slots[k].need == KVRT_TENSOR_UNUSED)
                continue; /* check_all_used names it if the file has it */
            char name[96];
            snprintf(name, sizeof(name), "blk.%d.%s", i, slots[k].name);
            KVRT_TRY(bind_tensor(g, mf, name, slots[k].need == KVRT_TENSOR_OPTIONAL, slots[k].t, &bound, err));
        }
        report(progress, (double)(i + 1) / mf->hp.n_layer);
    }
    mf->main_type = mf->hp.n_layer > 0 ? w->layers[0].wq.type : w->tok_embd.type;
    KVRT_TRY(check_all_used(g, mf, bound, err));
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
    KVRT_TRY(read_hparams(g, mf, err));
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
