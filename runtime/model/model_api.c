/* The public model and session API (include/kvrt_model.h). */
#include "backend/kv_layout.h"
#include "model/llama.h"
#include "model/model_api_internal.h"

#include <stdio.h>
#include <string.h>


kvrt_model_params kvrt_model_default_params(void)
{
    kvrt_model_params p;
    memset(&p, 0, sizeof(p));
    return p;
}

/* GGUF files start with the magic "GGUF"; anything else is taken for a llama2.c checkpoint. */
static kvrt_status sniff_gguf(const char *path, bool *is_gguf, kvrt_error *err)
{
    int fd;
    KVRT_TRY(kvrt_open_regular_file(path, "model file", &fd, NULL, err)); /* a FIFO must not block */
    char magic[4] = {0};
    ssize_t n = read(fd, magic, 4);
    close(fd);
    *is_gguf = n == 4 && memcmp(magic, "GGUF", 4) == 0;
    return KVRT_OK;
}

static void forward_progress(void *user, double fraction)
{
    const kvrt_model_params *p = user;
    p->progress(p->progress_user, fraction);
}

static kvrt_status load_file(const kvrt_model_params *p, const kvrt_allocator *alloc, kvrt_model_file **mf,
                             kvrt_error *err)
{
    bool is_gguf = false;
    KVRT_TRY(sniff_gguf(p->path, &is_gguf, err));
    kvrt_load_progress progress = {p->progress ? forward_progress : NULL, (void *)p};
    if (is_gguf) {
        if (p->tokenizer_path)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                             "'%s' is a GGUF file, which carries its own vocabulary: drop the tokenizer path", p->path);
        return kvrt_model_file_load_gguf(p->path, alloc, false, &progress, mf, err);
    }
    return kvrt_model_file_load_llama2c(p->path, p->tokenizer_path, alloc, &progress, mf, err);
}

/* Bytes of one stored K or V value of a KV dtype, its in-block scales
 * included; a dtype kvrt does not store KV in counts as F16 (the session
 * refuses it later, naming it). */
static double kv_value_bytes(kvrt_dtype dtype)
{
    const kvrt_kv_dtype_desc *d = kvrt_kv_dtype(dtype);
    if (!d)
        return 2.0;
    double scales = d->scales == KVRT_KV_SCALES_IN_BLOCK ? (double)d->scale_bytes / d->group : 0.0;
    return d->value_bits / 8.0 + scales;
}

/* What max_context sizes, checked before it is allocated: the RoPE table
 * ([max_context][rope_dim] F32) and the smallest KV cache a session can
 * have (one full sequence in params->kv_type), against what the context may
 * still use (kvrt_context_limits: the budget, or by default the device's
 * heap or the host's available memory, minus what is in use). A file or a
 * flag claiming millions of positions is told so at once, not "out of
 * memory" after seconds of building a table. (The weights are not counted:
 * on the CPU they stay in the mapped file; the engine sizes its pool from
 * what they leave of a budget.) */
static kvrt_status check_context_memory(kvrt_context *ctx, const kvrt_model_file *mf,
                                        const kvrt_model_params *params, int32_t max_context, kvrt_error *err)
{
    const kvrt_llama_hparams *hp = &mf->hp;
    double rope = (double)max_context * (double)KVRT_MAX(hp->rope_dim, 0) * sizeof(float);
    double kv = 2.0 * hp->n_layer * (double)hp->n_head_kv * (double)hp->head_dim * (double)max_context *
                kv_value_bytes(params->kv_type);
    kvrt_context_limits lim;
    if (kvrt_context_get_limits(ctx, &lim) != KVRT_OK || lim.memory_budget == 0)
        return KVRT_OK;
    double limit = lim.memory_budget > lim.memory_in_use ? (double)(lim.memory_budget - lim.memory_in_use) : 0.0;
    if (rope + kv <= limit)
        return KVRT_OK;
    bool cpu = kvrt_context_backend(ctx) == KVRT_BACKEND_CPU;
    const char *what = ctx->memory_budget ? "what the memory budget leaves"
                       : cpu              ? "the host memory available"
                                          : "what the device's memory leaves";
    return kvrt_fail(err, cpu ? KVRT_ERR_OUT_OF_HOST_MEMORY : KVRT_ERR_OUT_OF_DEVICE_MEMORY,
                     "%s %d needs %.2f GiB (RoPE table %.2f GiB, one sequence's %s KV cache %.2f GiB), more than "
                     "%s (%.2f GiB); ask for a shorter context%s",
                     params->max_context > 0 ? "max_context" : "the file's context length (llama.context_length)",
                     (int)max_context, (rope + kv) / 1073741824.0, rope / 1073741824.0,
                     kvrt_dtype_name(params->kv_type), kv / 1073741824.0, what, limit / 1073741824.0,
                     params->kv_type == KVRT_DTYPE_F32 ? " or a smaller KV type" : "");
}

kvrt_status kvrt_model_load(kvrt_context *ctx, const kvrt_model_params *params, kvrt_model **out, kvrt_error *err)
{
    kvrt_error_clear(err);
    if (out)
        *out = NULL;
    if (!ctx || !params || !out || !params->path)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_model_load: ctx, params, params->path and out are required");
    if (params->max_context < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "max_context %d < 0", (int)params->max_context);
    kvrt_model *m = kvrt_calloc(ctx->alloc, 1, sizeof(*m));
    if (!m)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "kvrt_model_load: out of host memory");
    m->ctx = ctx;
    kvrt_status s = load_file(params, ctx->alloc, &m->mf, err);
    if (s == KVRT_OK && m->mf->vocab.n_tokens > 0)
        s = kvrt_tokenizer_create(&m->mf->vocab, ctx->alloc, &m->tok, err);
    if (s == KVRT_OK)
        kvrt_model_chat_init(m);
    if (s == KVRT_OK) {
        m->max_context = params->max_context > 0 ? params->max_context
                                                  : KVRT_MIN(m->mf->hp.n_ctx_train, KVRT_DEFAULT_MAX_CONTEXT);
        s = check_context_memory(ctx, m->mf, params, m->max_context, err);
    }
    if (s == KVRT_OK)
        s = kvrt_llama_create(ctx->be, m->mf, m->max_context, &m->lm, err);
    if (s != KVRT_OK) {
        kvrt_model_destroy(m);
        return s;
    }
    *out = m;
    return KVRT_OK;
}

void kvrt_model_destroy(kvrt_model *m)
{
    if (!m)
        return;
    kvrt_llama_destroy(m->lm);
    kvrt_tokenizer_destroy(m->tok);
    kvrt_model_file_free(m->mf);
    kvrt_free(m->ctx->alloc, m);
}

const char *kvrt_model_message(const kvrt_model *m)
{
    return m ? m->err.message : "";
}

static uint64_t tensor_values(const kvrt_tensor_ref *t)
{
    return (uint64_t)t->ne[0] * (uint64_t)t->ne[1];
}

static void count_type(kvrt_model_info *out, const kvrt_tensor_ref *t)
{
    if ((unsigned)t->type < KVRT_ARRAY_LEN(out->tensors_of_type))
        out->tensors_of_type[t->type]++;
}

kvrt_status kvrt_model_get_info(const kvrt_model *m, kvrt_model_info *out)
{
    if (!m || !out)
        return KVRT_ERR_INVALID_ARGUMENT;
    const kvrt_model_file *mf = m->mf;
    const kvrt_llama_hparams *hp = &mf->hp;
    memset(out, 0, sizeof(*out));
    out->n_vocab = hp->n_vocab;
    out->n_embd = hp->n_embd;
    out->n_layer = hp->n_layer;
    out->n_ff = hp->n_ff;
    out->n_head = hp->n_head;
    out->n_head_kv = hp->n_head_kv;
    out->head_dim = hp->head_dim;
    out->n_ctx_train = hp->n_ctx_train;
    out->bos_id = mf->vocab.n_tokens > 0 ? mf->vocab.bos_id : -1;
    out->eos_id = mf->vocab.n_tokens > 0 ? mf->vocab.eos_id : -1;
    out->add_bos = m->tok && kvrt_tokenizer_adds_bos(m->tok);
    out->add_eos = m->tok && mf->vocab.add_eos && mf->vocab.eos_id >= 0;
    out->max_context = m->max_context;
    out->weight_type = mf->main_type;
    snprintf(out->arch, sizeof(out->arch), "%s", mf->arch);
    const kvrt_tensor_ref *global[] = {&mf->w.tok_embd, &mf->w.output_norm, &mf->w.output};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(global); i++) {
        if (i == 2 && mf->w.output.data == mf->w.tok_embd.data)
            continue; /* tied classifier: counted once */
        out->n_params += tensor_values(global[i]);
        out->weight_bytes += global[i]->nbytes;
        count_type(out, global[i]);
    }
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const kvrt_llama_layer *L = &mf->w.layers[l];
        const kvrt_tensor_ref *ts[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo,
                                       &L->ffn_norm, &L->ffn_gate, &L->ffn_down, &L->ffn_up};
        for (size_t i = 0; i < KVRT_ARRAY_LEN(ts); i++) {
            out->n_params += tensor_values(ts[i]);
            out->weight_bytes += ts[i]->nbytes;
            count_type(out, ts[i]);
        }
    }
    return KVRT_OK;
}

kvrt_status kvrt_tokenize(kvrt_model *m, const char *text, size_t len, unsigned flags, int32_t *ids,
                          int32_t capacity, int32_t *n_tokens)
{
    if (!m)
        return KVRT_ERR_INVALID_ARGUMENT;
    if ((!text && len) || (!ids && capacity > 0) || capacity < 0 || !n_tokens ||
        (flags & ~(KVRT_TOKENIZE_ADD_SPECIAL | KVRT_TOKENIZE_PARSE_SPECIAL)))
        return kvrt_fail(&m->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_tokenize: invalid arguments");
    if (!m->tok)
        return kvrt_fail(&m->err, KVRT_ERR_BAD_TOKENIZER, "the model has no vocabulary (pass a tokenizer file)");
    size_t n = 0;
    kvrt_status s = kvrt_tokenizer_encode(m->tok, text, len, flags, ids, (size_t)capacity, &n);
    if (n > INT32_MAX)
        return kvrt_fail(&m->err, KVRT_ERR_INVALID_ARGUMENT, "the text needs more than 2^31 tokens");
    *n_tokens = (int32_t)n;
    if (s != KVRT_OK)
        return kvrt_fail(&m->err, s, "%s", kvrt_tokenizer_message(m->tok));
    if (n > (size_t)capacity)
        return kvrt_fail(&m->err, KVRT_ERR_INVALID_ARGUMENT, "tokenize: %zu ids do not fit in %d", n, (int)capacity);
    return KVRT_OK;
}

kvrt_status kvrt_token_to_text(kvrt_model *m, int32_t prev_token, int32_t token, char *buf, size_t capacity,
                               size_t *len)
{
    if (!m)
        return KVRT_ERR_INVALID_ARGUMENT;
    if ((!buf && capacity > 0) || !len)
        return kvrt_fail(&m->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_token_to_text: invalid arguments");
    if (!m->tok)
        return kvrt_fail(&m->err, KVRT_ERR_BAD_TOKENIZER, "the model has no vocabulary (pass a tokenizer file)");
    kvrt_status s = kvrt_tokenizer_token_to_piece(m->tok, prev_token, token, buf, capacity, len);
    if (s != KVRT_OK)
        return kvrt_fail(&m->err, s, "%s", kvrt_tokenizer_message(m->tok));
    return KVRT_OK;
}
