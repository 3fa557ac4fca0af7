/* Standard llama GGUF layout (keys, tensor names, per-tensor types) and
 * random-weight models streamed to disk. */
#include "model/synth.h"
#include "model/shapes.h"
#include "model/tokenizer.h"
#include "model/model_file_internal.h"

#include <errno.h>
#include <math.h>
#include <string.h>

/* ---- llama GGUF layout ------------------------------------------------------------- */

enum { PER_LAYER = 9, EXTRA_BIAS = 3, EXTRA_NORM = 2 };

kvrt_llama_layout kvrt_llama_layout_of(const kvrt_model_file *mf, bool with_output)
{
    const kvrt_llama_weights *w = &mf->w;
    kvrt_llama_layout l = {.with_output = with_output || w->output.data != w->tok_embd.data,
                           .with_rope_freqs = w->rope_freqs.data != NULL};
    if (mf->hp.n_layer > 0 && w->layers) {
        l.with_bias = w->layers[0].bq.data != NULL;
        l.with_qk_norm = w->layers[0].q_norm.data != NULL;
    }
    return l;
}

static int32_t layout_head(const kvrt_llama_layout *l)
{
    return 2 + (l->with_output ? 1 : 0) + (l->with_rope_freqs ? 1 : 0);
}

static int32_t layout_per_layer(const kvrt_llama_layout *l)
{
    return PER_LAYER + (l->with_bias ? EXTRA_BIAS : 0) + (l->with_qk_norm ? EXTRA_NORM : 0);
}

int32_t kvrt_llama_layout_count(const kvrt_llama_hparams *hp, const kvrt_llama_layout *l)
{
    return layout_head(l) + layout_per_layer(l) * hp->n_layer;
}

/* Slot k of a layer: the 9 of every family in llama.cpp's order, then biases, then Q/K norms. */
static void layer_slot(const kvrt_llama_hparams *hp, const kvrt_llama_layout *l, int32_t k, const char **name,
                       int64_t *ne0, int64_t *ne1)
{
    int64_t d = hp->n_embd, hd = hp->head_dim ? hp->head_dim : hp->n_embd / hp->n_head;
    int64_t q = hp->n_head * hd, kv = hp->n_head_kv * hd;
    static const char *const names[PER_LAYER + EXTRA_BIAS + EXTRA_NORM] = {
        "attn_q.weight",   "attn_k.weight",   "attn_v.weight", "attn_output.weight", "attn_norm.weight",
        "ffn_gate.weight", "ffn_down.weight", "ffn_up.weight", "ffn_norm.weight",    "attn_q.bias",
        "attn_k.bias",     "attn_v.bias",     "attn_q_norm.weight", "attn_k_norm.weight"};
    const int64_t shapes[PER_LAYER + EXTRA_BIAS + EXTRA_NORM][2] = {
        {d, q}, {d, kv}, {d, kv}, {q, d}, {d, 1}, {d, hp->n_ff}, {hp->n_ff, d}, {d, hp->n_ff}, {d, 1},
        {q, 1}, {kv, 1}, {kv, 1}, {hd, 1}, {hd, 1}};
    if (k >= PER_LAYER && !l->with_bias)
        k += EXTRA_BIAS;
    *name = names[k];
    *ne0 = shapes[k][0];
    *ne1 = shapes[k][1];
}

void kvrt_llama_layout_desc(const kvrt_llama_hparams *hp, const kvrt_llama_layout *l, int32_t index, char *name,
                            size_t name_size, int64_t *ne0, int64_t *ne1)
{
    int32_t head = layout_head(l);
    if (index < head) {
        const char *names[4] = {"token_embd.weight", "output_norm.weight", NULL, NULL};
        int32_t k = 2;
        if (l->with_output)
            names[k++] = "output.weight";
        if (l->with_rope_freqs)
            names[k++] = "rope_freqs.weight";
        snprintf(name, name_size, "%s", names[index]);
        bool freqs = !strcmp(names[index], "rope_freqs.weight");
        int32_t rd = hp->rope_dim ? hp->rope_dim : (hp->head_dim ? hp->head_dim : hp->n_embd / hp->n_head);
        *ne0 = freqs ? rd / 2 : hp->n_embd;
        *ne1 = index == 1 || freqs ? 1 : hp->n_vocab;
        return;
    }
    int32_t per = layout_per_layer(l), layer = (index - head) / per;
    const char *slot;
    layer_slot(hp, l, (index - head) % per, &slot, ne0, ne1);
    snprintf(name, name_size, "blk.%d.%s", layer, slot);
}

const kvrt_tensor_ref *kvrt_llama_layout_ref(const kvrt_model_file *mf, const kvrt_llama_layout *l, int32_t index)
{
    const kvrt_llama_weights *w = &mf->w;
    int32_t head = layout_head(l);
    if (index < 0 || index >= kvrt_llama_layout_count(&mf->hp, l))
        return NULL;
    if (index < head) {
        const kvrt_tensor_ref *refs[4] = {&w->tok_embd, &w->output_norm, NULL, NULL};
        int32_t k = 2;
        if (l->with_output)
            refs[k++] = &w->output;
        if (l->with_rope_freqs)
            refs[k++] = &w->rope_freqs;
        return refs[index];
    }
    int32_t per = layout_per_layer(l), k = (index - head) % per;
    const kvrt_llama_layer *y = &w->layers[(index - head) / per];
    if (k >= PER_LAYER && !l->with_bias)
        k += EXTRA_BIAS;
    const kvrt_tensor_ref *refs[PER_LAYER + EXTRA_BIAS + EXTRA_NORM] = {
        &y->wq,       &y->wk,     &y->wv,       &y->wo, &y->attn_norm, &y->ffn_gate, &y->ffn_down,
        &y->ffn_up,   &y->ffn_norm, &y->bq,     &y->bk, &y->bv,        &y->q_norm,   &y->k_norm};
    return refs[k];
}

int32_t kvrt_llama_tensor_count(int32_t n_layer, bool with_output)
{
    return 2 + (with_output ? 1 : 0) + PER_LAYER * n_layer;
}

void kvrt_llama_tensor_desc(const kvrt_llama_hparams *hp, bool with_output, int32_t index, char *name,
                            size_t name_size, int64_t *ne0, int64_t *ne1)
{
    kvrt_llama_layout l = {.with_output = with_output};
    kvrt_llama_layout_desc(hp, &l, index, name, name_size, ne0, ne1);
}

const kvrt_tensor_ref *kvrt_llama_tensor_ref(const kvrt_model_file *mf, bool with_output, int32_t index)
{
    kvrt_llama_layout l = {.with_output = with_output};
    return kvrt_llama_layout_ref(mf, &l, index);
}

kvrt_dtype kvrt_llama_tensor_type(kvrt_dtype main_type, int64_t ne0, int64_t ne1)
{
    if (ne1 == 1 || main_type == KVRT_DTYPE_F32)
        return KVRT_DTYPE_F32;
    if (ne0 % kvrt_dtype_block_values(main_type) != 0)
        return KVRT_DTYPE_F16;
    return main_type;
}

kvrt_status kvrt_llama_add_hparams(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp, const char *name)
{
    const char *arch = kvrt_arch_name(hp->arch);
    char k[96];
#define AKEY(rest) (snprintf(k, sizeof(k), "%s.%s", arch, rest), k)
    KVRT_TRY(kvrt_gguf_writer_add_string(w, "general.architecture", arch));
    KVRT_TRY(kvrt_gguf_writer_add_string(w, "general.name", name));
    int32_t natural = hp->n_embd / hp->n_head, hd = hp->head_dim ? hp->head_dim : natural;
    const struct {
        const char *rest;
        int32_t v;
        bool write;
    } ints[] = {
        {"context_length", hp->n_ctx_train, true},
        {"embedding_length", hp->n_embd, true},
        {"feed_forward_length", hp->n_ff, true},
        {"attention.head_count", hp->n_head, true},
        {"attention.head_count_kv", hp->n_head_kv, true},
        {"block_count", hp->n_layer, true},
        {"rope.dimension_count", hp->rope_dim ? hp->rope_dim : hd, true},
        {"attention.key_length", hd, hp->head_dim && (hd != natural || hp->n_embd % hp->n_head != 0)},
        {"attention.value_length", hd, hp->head_dim && (hd != natural || hp->n_embd % hp->n_head != 0)},
        {"attention.sliding_window", hp->sliding_window, hp->sliding_window > 0},
    };
    for (size_t i = 0; i < KVRT_ARRAY_LEN(ints); i++)
        if (ints[i].write)
            KVRT_TRY(kvrt_gguf_writer_add_u32(w, AKEY(ints[i].rest), (uint32_t)ints[i].v));
    KVRT_TRY(kvrt_gguf_writer_add_f32(w, AKEY("attention.layer_norm_rms_epsilon"), hp->rms_eps));
    if (hp->rope_freq_base != 10000.0f)
        KVRT_TRY(kvrt_gguf_writer_add_f32(w, AKEY("rope.freq_base"), hp->rope_freq_base));
    if (hp->rope_scaling != KVRT_ROPE_SCALING_NONE) {
        bool yarn = hp->rope_scaling == KVRT_ROPE_SCALING_YARN;
        KVRT_TRY(kvrt_gguf_writer_add_string(w, AKEY("rope.scaling.type"), yarn ? "yarn" : "linear"));
        KVRT_TRY(kvrt_gguf_writer_add_f32(w, AKEY("rope.scaling.factor"), hp->rope_scale));
        if (yarn && hp->rope_orig_ctx > 0)
            KVRT_TRY(kvrt_gguf_writer_add_u32(w, AKEY("rope.scaling.original_context_length"),
                                              (uint32_t)hp->rope_orig_ctx));
    }
    if (hp->rope_attn_factor != 0.0f && hp->rope_attn_factor != 1.0f)
        KVRT_TRY(kvrt_gguf_writer_add_f32(w, AKEY("rope.scaling.attn_factor"), hp->rope_attn_factor));
#undef AKEY
    return KVRT_OK;
}

kvrt_status kvrt_llama_add_vocab(kvrt_gguf_writer *w, const kvrt_vocab *v)
{
    KVRT_TRY(kvrt_gguf_writer_add_string_array(w, "tokenizer.ggml.tokens", (const char *const *)v->pieces,
                                               v->piece_lens, (uint64_t)v->n_tokens));
    KVRT_TRY(kvrt_gguf_writer_add_array(w, "tokenizer.ggml.scores", KVRT_GGUF_F32, v->scores, (uint64_t)v->n_tokens));
    KVRT_TRY(kvrt_gguf_writer_add_array(w, "tokenizer.ggml.token_type", KVRT_GGUF_I32, v->types,
                                        (uint64_t)v->n_tokens));
    bool bpe = v->kind == KVRT_VOCAB_BPE;
    KVRT_TRY(kvrt_gguf_writer_add_string(w, "tokenizer.ggml.model", bpe ? "gpt2" : "llama"));
    if (bpe) {
        KVRT_TRY(kvrt_gguf_writer_add_string(w, "tokenizer.ggml.pre", v->pre[0] ? v->pre : "default"));
        KVRT_TRY(kvrt_gguf_writer_add_packed_strings(w, "tokenizer.ggml.merges", v->merge_text, v->merge_offsets,
                                                     (uint64_t)v->n_merges));
    }
    const struct {
        const char *key;
        int32_t id;
    } ids[] = {{"tokenizer.ggml.unknown_token_id", v->unk_id}, {"tokenizer.ggml.bos_token_id", v->bos_id},
               {"tokenizer.ggml.eos_token_id", v->eos_id},     {"tokenizer.ggml.eot_token_id", v->eot_id},
               {"tokenizer.ggml.eom_token_id", v->eom_id}};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(ids); i++)
        if (i < 3 || ids[i].id >= 0)
            KVRT_TRY(kvrt_gguf_writer_add_u32(w, ids[i].key, ids[i].id < 0 ? UINT32_MAX : (uint32_t)ids[i].id));
    /* flags are written when they differ from what a reader assumes for this kind */
    if (v->add_bos != (!bpe || kvrt_bpe_pre_adds_bos(v->pre)))
        KVRT_TRY(kvrt_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos));
    if (v->add_eos)
        KVRT_TRY(kvrt_gguf_writer_add_bool(w, "tokenizer.ggml.add_eos_token", true));
    if (v->add_space_prefix != !bpe)
        KVRT_TRY(kvrt_gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", v->add_space_prefix));
    if (v->chat_template)
        KVRT_TRY(kvrt_gguf_writer_add_string(w, "tokenizer.chat_template", v->chat_template));
    return KVRT_OK;
}

kvrt_dtype kvrt_llama_tensor_type_mix(const kvrt_quant_mix *mix, kvrt_dtype main_type, const kvrt_llama_hparams *hp,
                                      const char *name, int64_t ne0, int64_t ne1, bool with_output)
{
    if (!mix)
        return kvrt_llama_tensor_type(main_type, ne0, ne1);
    return kvrt_quant_mix_type(mix, hp, name, ne0, ne1, !with_output);
}

kvrt_status kvrt_llama_add_tensors_mix(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp, kvrt_dtype main_type,
                                       const kvrt_quant_mix *mix, bool with_output)
{
    kvrt_llama_layout l = {.with_output = with_output};
    return kvrt_llama_add_layout_tensors_mix(w, hp, &l, main_type, mix);
}

kvrt_status kvrt_llama_add_layout_tensors(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp,
                                          const kvrt_llama_layout *l, kvrt_dtype main_type)
{
    return kvrt_llama_add_layout_tensors_mix(w, hp, l, main_type, NULL);
}

kvrt_status kvrt_llama_add_layout_tensors_mix(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp,
                                              const kvrt_llama_layout *l, kvrt_dtype main_type,
                                              const kvrt_quant_mix *mix)
{
    int32_t n = kvrt_llama_layout_count(hp, l);
    for (int32_t i = 0; i < n; i++) {
        char name[64];
        int64_t ne[2];
        kvrt_llama_layout_desc(hp, l, i, name, sizeof(name), &ne[0], &ne[1]);
        kvrt_dtype t = kvrt_llama_tensor_type_mix(mix, main_type, hp, name, ne[0], ne[1], l->with_output);
        KVRT_TRY(kvrt_gguf_writer_add_tensor(w, name, (uint32_t)t, ne[1] == 1 ? 1 : 2, ne));
    }
    return KVRT_OK;
}

kvrt_status kvrt_llama_add_tensors(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp, kvrt_dtype main_type,
                                   bool with_output)
{
    return kvrt_llama_add_tensors_mix(w, hp, main_type, NULL, with_output);
}

/* ---- export of a loaded model -------------------------------------------------------------- */

static kvrt_status export_tensor(kvrt_gguf_writer *w, FILE *f, const kvrt_tensor_ref *src, kvrt_dtype type,
                                 float *row, void *qrow)
{
    size_t rb = kvrt_dtype_row_bytes(type, src->ne[0]), sb = kvrt_dtype_row_bytes(src->type, src->ne[0]);
    const uint8_t *p = src->data;
    for (int64_t r = 0; r < src->ne[1]; r++) {
        const void *out = p + (size_t)r * sb;
        if (src->type != type) {
            kvrt_dequantize_row(src->type, p + (size_t)r * sb, row, src->ne[0]);
            kvrt_quantize_row(type, row, qrow, src->ne[0]);
            out = qrow;
        }
        KVRT_TRY(kvrt_gguf_writer_write_data(w, f, out, rb));
    }
    return KVRT_OK;
}

static kvrt_status export_all(const kvrt_model_file *mf, const kvrt_gguf_export_params *p, kvrt_gguf_writer *w,
                              FILE *f, const kvrt_load_progress *progress, float *row, void *qrow)
{
    kvrt_llama_hparams hp = mf->hp;
    if (p->n_ctx > 0)
        hp.n_ctx_train = p->n_ctx;
    kvrt_llama_layout l = kvrt_llama_layout_of(mf, p->with_output);
    KVRT_TRY(kvrt_llama_add_hparams(w, &hp, p->name ? p->name : "llama"));
    KVRT_TRY(kvrt_llama_add_vocab(w, &mf->vocab));
    KVRT_TRY(kvrt_llama_add_layout_tensors(w, &hp, &l, p->type));
    KVRT_TRY(kvrt_gguf_writer_write_header(w, f));
    int32_t n = kvrt_llama_layout_count(&hp, &l);
    for (int32_t i = 0; i < n; i++) {
        const kvrt_tensor_ref *t = kvrt_llama_layout_ref(mf, &l, i);
        KVRT_TRY(export_tensor(w, f, t, kvrt_llama_tensor_type(p->type, t->ne[0], t->ne[1]), row, qrow));
        if (progress && progress->fn)
            progress->fn(progress->user, (double)(i + 1) / n);
    }
    return kvrt_gguf_writer_finish(w, f);
}

kvrt_status kvrt_llama_export_gguf(const kvrt_model_file *mf, const kvrt_gguf_export_params *p, FILE *f,
                                   const kvrt_load_progress *progress, kvrt_error *err)
{
    if (mf->vocab_only || !mf->w.layers)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "export: the model has no weights");
    if (!kvrt_dtype_supported(p->type))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "export: type %d is not supported", (int)p->type);
    const kvrt_llama_hparams *hp = &mf->hp;
    int64_t max_row = KVRT_MAX(KVRT_MAX((int64_t)hp->n_embd, (int64_t)hp->n_ff), (int64_t)hp->n_head * hp->head_dim);
    float *row = kvrt_calloc(mf->alloc, (size_t)max_row, sizeof(float));
    void *qrow = kvrt_calloc(mf->alloc, (size_t)max_row, sizeof(float));
    kvrt_gguf_writer *w = NULL;
    kvrt_status s = kvrt_gguf_writer_create(mf->alloc, 0, &w, err);
    if (s == KVRT_OK && (!row || !qrow))
        s = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "export: no memory for a row of %lld values",
                      (long long)max_row);
    if (s == KVRT_OK) {
        s = export_all(mf, p, w, f, progress, row, qrow);
        if (s != KVRT_OK)
            kvrt_error_copy(err, kvrt_gguf_writer_error(w));
    }
    kvrt_gguf_writer_destroy(w);
    kvrt_free(mf->alloc, row);
    kvrt_free(mf->alloc, qrow);
    return s;
}

/* ---- synthetic models ------------------------------------------------------------------- */

bool kvrt_synth_preset(const char *name, kvrt_synth_params *out)
{
    const kvrt_model_shape *m = kvrt_model_shape_find(name);
    if (!m)
        return false;
    memset(out, 0, sizeof(*out));
    out->hp.n_vocab = m->n_vocab;
    out->hp.n_embd = m->n_embd;
    out->hp.n_layer = m->n_layer;
    out->hp.n_ff = m->n_ff;
    out->hp.n_head = m->n_head;
    out->hp.n_head_kv = m->n_head_kv;
    out->hp.n_ctx_train = m->n_ctx;
    out->hp.rope_freq_base = 10000.0f;
    out->hp.rms_eps = 1e-5f;
    out->type = KVRT_DTYPE_F32;
    out->seed = 1;
    return true;
}

static void synth_vocab_free(const kvrt_allocator *alloc, kvrt_vocab *v)
{
    if (v->pieces)
        for (int32_t i = 0; i < v->n_tokens; i++)
            kvrt_free(alloc, v->pieces[i]);
    kvrt_free(alloc, v->pieces);
    kvrt_free(alloc, v->piece_lens);
    kvrt_free(alloc, v->scores);
    kvrt_free(alloc, v->types);
    kvrt_vocab_init(v);
}

/* Piece i of the synthetic vocabulary into buf; returns its type. */
static int32_t synth_piece(int32_t i, char *buf, size_t size)
{
    if (i < 3) {
        static const char *const special[] = {"<unk>", "<s>", "</s>"};
        snprintf(buf, size, "%s", special[i]);
        return i == 0 ? KVRT_TOKEN_UNKNOWN : KVRT_TOKEN_CONTROL;
    }
    if (i < 3 + 256) {
        snprintf(buf, size, "<0x%02X>", i - 3);
        return KVRT_TOKEN_BYTE;
    }
    int32_t k = i - 259;
    if (k == 0) {
        snprintf(buf, size, "\xe2\x96\x81");
        return KVRT_TOKEN_NORMAL;
    }
    /* k = 1, 2, ...: letter strings a..z, aa..zz, ... (bijective base 26),
     * odd k plain, even k with a leading U+2581: every one merges from shorter ones. */
    int32_t m = (k + 1) / 2, n = 0;
    char letters[16];
    for (; m > 0 && n < (int32_t)sizeof(letters); m = (m - 1) / 26)
        letters[n++] = (char)('a' + (m - 1) % 26);
    size_t o = 0;
    if (k % 2 == 0)
        o += (size_t)snprintf(buf, size, "\xe2\x96\x81");
    for (int32_t j = n - 1; j >= 0 && o + 1 < size; j--)
        buf[o++] = letters[j];
    buf[o] = '\0';
    return KVRT_TOKEN_NORMAL;
}

kvrt_status kvrt_synth_vocab(const kvrt_allocator *alloc, int32_t n_tokens, kvrt_vocab *v, kvrt_error *err)
{
    kvrt_vocab_init(v);
    if (n_tokens < 3)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "synthetic vocabulary needs at least 3 tokens, not %d",
                         n_tokens);
    v->n_tokens = n_tokens;
    v->pieces = kvrt_calloc(alloc, (size_t)n_tokens, sizeof(*v->pieces));
    v->piece_lens = kvrt_calloc(alloc, (size_t)n_tokens, sizeof(*v->piece_lens));
    v->scores = kvrt_calloc(alloc, (size_t)n_tokens, sizeof(*v->scores));
    v->types = kvrt_calloc(alloc, (size_t)n_tokens, sizeof(*v->types));
    if (!v->pieces || !v->piece_lens || !v->scores || !v->types) {
        synth_vocab_free(alloc, v);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for %d tokens", n_tokens);
    }
    for (int32_t i = 0; i < n_tokens; i++) {
        char buf[32];
        v->types[i] = synth_piece(i, buf, sizeof(buf));
        v->scores[i] = i < 259 ? 0.0f : -(float)(i - 259);
        v->pieces[i] = kvrt_strdup(alloc, buf);
        if (!v->pieces[i]) {
            synth_vocab_free(alloc, v);
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for token %d", i);
        }
        v->piece_lens[i] = (int32_t)strlen(buf);
    }
    v->unk_id = 0;
    v->bos_id = 1;
    v->eos_id = 2;
    v->add_bos = true;
    v->add_space_prefix = true;
    return KVRT_OK;
}

/* splitmix64: tiny, seedable, good enough for weights. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_normal(uint64_t *s)
{
    double u1 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = (double)(rng_next(s) >> 11) / 9007199254740992.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static kvrt_status write_tensor(kvrt_gguf_writer *w, FILE *f, const kvrt_synth_params *p, const char *name,
                                int64_t ne0, int64_t ne1, uint64_t *rng, float *row, void *qrow)
{
    kvrt_dtype t = kvrt_llama_tensor_type_mix(p->mix, p->type, &p->hp, name, ne0, ne1, !p->tied_output);
    size_t rb = kvrt_dtype_row_bytes(t, ne0);
    float sd = p->stddev > 0.0f ? p->stddev : 0.02f;
    bool bias = strstr(name, ".bias") != NULL, freqs = !strcmp(name, "rope_freqs.weight");
    for (int64_t r = 0; r < ne1; r++) {
        /* Norm weights near 1 keep activations at the scale RMSNorm gives them; biases are
         * larger than the products they join (so they matter); rope_freqs rise from 1 to
         * 8 over the pairs, as Llama 3.1's do from high to low frequencies. */
        for (int64_t j = 0; j < ne0; j++)
            row[j] = freqs  ? 1.0f + 7.0f * (float)j / (float)KVRT_MAX(ne0 - 1, 1)
                     : bias ? 0.5f * rng_normal(rng)
                     : ne1 == 1 ? 1.0f + 0.1f * rng_normal(rng)
                                : sd * rng_normal(rng);
        kvrt_quantize_row(t, row, qrow, ne0);
        if (kvrt_gguf_writer_write_data(w, f, qrow, rb) != KVRT_OK)
            return kvrt_gguf_writer_error(w)->status;
    }
    return KVRT_OK;
}

kvrt_llama_layout kvrt_synth_layout(const kvrt_synth_params *p)
{
    kvrt_llama_layout l = {.with_output = !p->tied_output,
                           .with_rope_freqs = p->rope_freqs,
                           .with_bias = p->hp.arch == KVRT_ARCH_QWEN2 || (p->hp.arch == KVRT_ARCH_LLAMA && p->bias),
                           .with_qk_norm = p->hp.arch == KVRT_ARCH_QWEN3};
    return l;
}

static kvrt_status synth_body(const kvrt_synth_params *p, kvrt_gguf_writer *w, FILE *f, float *row, void *qrow,
                              const kvrt_load_progress *progress)
{
    kvrt_llama_layout l = kvrt_synth_layout(p);
    int32_t n = p->vocab_only ? 0 : kvrt_llama_layout_count(&p->hp, &l);
    uint64_t rng = p->seed;
    for (int32_t i = 0; i < n; i++) {
        char name[64];
        int64_t ne0, ne1;
        kvrt_llama_layout_desc(&p->hp, &l, i, name, sizeof(name), &ne0, &ne1);
        KVRT_TRY(write_tensor(w, f, p, name, ne0, ne1, &rng, row, qrow));
        if (progress && progress->fn)
            progress->fn(progress->user, (double)(i + 1) / n);
    }
    return kvrt_gguf_writer_finish(w, f);
}

static kvrt_status synth_header(const kvrt_synth_params *p, const kvrt_vocab *v, kvrt_gguf_writer *w, FILE *f)
{
    /* Phi-3's whitespace rule for its special tokens has no key of its own:
     * readers (kvrt, llama.cpp) take it from general.name, so keep it there. */
    KVRT_TRY(kvrt_llama_add_hparams(w, &p->hp, v->special_rstrip ? "kvrt-synth phi3" : "kvrt-synth"));
    KVRT_TRY(kvrt_llama_add_vocab(w, v));
    if (p->mix)
        KVRT_TRY(kvrt_gguf_writer_add_u32(w, "general.file_type", p->mix->file_type));
    if (!p->vocab_only) {
        kvrt_llama_layout l = kvrt_synth_layout(p);
        KVRT_TRY(kvrt_llama_add_layout_tensors_mix(w, &p->hp, &l, p->type, p->mix));
    }
    return kvrt_gguf_writer_write_header(w, f);
}

/* Refuses shapes no machine can hold before anything is allocated or written:
 * a vocabulary above 2^24 pieces (each is a string in memory), more than 4096
 * layers (every tensor's info is held in memory until the header is out), or F32
 * weights above 2^40 bytes (1 TiB; a 70B-parameter model is 280 GB). */
static kvrt_status check_synth_size(const kvrt_llama_hparams *hp, kvrt_error *err)
{
    const int64_t max_vocab = (int64_t)1 << 24, max_bytes = (int64_t)1 << 40;
    if (hp->n_layer > 4096)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "%d layers: more than 4096", (int)hp->n_layer);
    if (hp->n_vocab > max_vocab)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "vocabulary of %d tokens: more than 2^24",
                         (int)hp->n_vocab);
    int64_t q = (int64_t)hp->n_head * hp->head_dim, kv = (int64_t)hp->n_head_kv * hp->head_dim, layer, total;
    int64_t per_layer = 2 * q + 2 * kv + 3 * (int64_t)hp->n_ff; /* rows of n_embd values (wo counted as q) */
    bool ok = kvrt_mul_i64(per_layer, hp->n_embd, &layer) && kvrt_mul_i64(layer, hp->n_layer, &total) &&
              !__builtin_add_overflow(total, 2 * (int64_t)hp->n_vocab * hp->n_embd, &total) &&
              kvrt_mul_i64(total, 4, &total) && total <= max_bytes;
    if (!ok)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "dim %d, ff %d, %d layers, vocab %d: the weights would exceed 1 TiB",
                         (int)hp->n_embd, (int)hp->n_ff, (int)hp->n_layer, (int)hp->n_vocab);
    return KVRT_OK;
}

kvrt_status kvrt_synth_write(const kvrt_synth_params *p, const kvrt_allocator *alloc, FILE *f,
                             const kvrt_load_progress *progress, kvrt_error *err)
{
    kvrt_synth_params own = *p;
    if (p->vocab)
        own.hp.n_vocab = p->vocab->n_tokens;
    p = &own;
    kvrt_llama_hparams hp = p->hp;
    if (kvrt_llama_hparams_check(&hp, err) != KVRT_OK)
        return err ? (err->status = KVRT_ERR_INVALID_ARGUMENT) : KVRT_ERR_INVALID_ARGUMENT;
    if (!kvrt_dtype_supported(p->mix ? p->mix->base : p->type))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "synthetic model type %d is not supported", (int)p->type);
    KVRT_TRY(check_synth_size(&hp, err));
    int64_t max_row = KVRT_MAX(KVRT_MAX((int64_t)hp.n_embd, (int64_t)hp.n_ff), (int64_t)hp.n_head * hp.head_dim);
    kvrt_vocab v;
    kvrt_vocab_init(&v);
    if (!p->vocab)
        KVRT_TRY(kvrt_synth_vocab(alloc, hp.n_vocab, &v, err));
    kvrt_gguf_writer *w = NULL;
    float *row = kvrt_calloc(alloc, (size_t)max_row, sizeof(float));
    void *qrow = kvrt_calloc(alloc, (size_t)max_row, sizeof(float));
    kvrt_status s = kvrt_gguf_writer_create(alloc, 0, &w, err);
    if (s == KVRT_OK && (!row || !qrow))
        s = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for a row of %lld values", (long long)max_row);
    if (s == KVRT_OK) {
        s = synth_header(p, p->vocab ? p->vocab : &v, w, f);
        if (s == KVRT_OK)
            s = synth_body(p, w, f, row, qrow, progress);
        if (s != KVRT_OK)
            kvrt_error_copy(err, kvrt_gguf_writer_error(w));
    }
    kvrt_gguf_writer_destroy(w);
    kvrt_free(alloc, row);
    kvrt_free(alloc, qrow);
    synth_vocab_free(alloc, &v);
    return s;
}

kvrt_status kvrt_synth_write_file(const kvrt_synth_params *p, const kvrt_allocator *alloc, const char *path,
                                  const kvrt_load_progress *progress, kvrt_error *err)
{
    kvrt_atomic_file af;
    KVRT_TRY(kvrt_atomic_file_open(path, NULL, &af, err));
    kvrt_status s = kvrt_synth_write(p, alloc, af.f, progress, err);
    return kvrt_atomic_file_close(&af, s, err);
}
