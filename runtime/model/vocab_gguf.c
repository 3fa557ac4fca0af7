/* GGUF tokenizer keys -> kvrt_vocab: SentencePiece ("llama") and byte-level
 * BPE ("gpt2") vocabularies, their special ids and flags, BPE merges and the
 * chat template. Only copying and key-level checks happen here; what the
 * pieces and merges mean is checked by the tokenizer that uses them. */
#include "model/gguf.h"
#include "model/model_file_internal.h"
#include "model/tokenizer.h"

#include <ctype.h>
#include <string.h>

#define NONE_ID 4294967295u /* GGUF writes this id for "no such token" */

/* A special id: key absent -> def (when inside the vocabulary, else none). */
static kvrt_status vocab_special(const kvrt_gguf *g, const char *key, int32_t def, int32_t n, int32_t *out,
                                 kvrt_error *err)
{
    uint32_t v;
    bool found;
    KVRT_TRY(kvrt_gguf_get_u32(g, key, &v, &found, err));
    if (!found)
        v = def >= 0 && def < n ? (uint32_t)def : NONE_ID;
    if (v == NONE_ID) {
        *out = -1;
        return KVRT_OK;
    }
    if (v >= (uint32_t)n)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "GGUF key '%s' = %u is outside the vocabulary (%d tokens)", key,
                         v, n);
    *out = (int32_t)v;
    return KVRT_OK;
}

static kvrt_status vocab_arrays(const kvrt_gguf *g, const kvrt_gguf_kv **tokens, const kvrt_gguf_kv **scores,
                                const kvrt_gguf_kv **types, kvrt_error *err)
{
    KVRT_TRY(kvrt_gguf_get_arr(g, "tokenizer.ggml.tokens", KVRT_GGUF_STRING, tokens, err));
    if (!*tokens)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "GGUF key 'tokenizer.ggml.tokens' is missing");
    if ((*tokens)->n == 0 || (*tokens)->n > INT32_MAX)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "GGUF vocabulary has %llu tokens",
                         (unsigned long long)(*tokens)->n);
    KVRT_TRY(kvrt_gguf_get_arr(g, "tokenizer.ggml.scores", KVRT_GGUF_F32, scores, err));
    KVRT_TRY(kvrt_gguf_get_arr(g, "tokenizer.ggml.token_type", KVRT_GGUF_TYPE_COUNT, types, err));
    if (*types && (kvrt_gguf_type_size((*types)->arr_type) == 0 || (*types)->arr_type == KVRT_GGUF_F32 ||
                   (*types)->arr_type == KVRT_GGUF_F64))
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "GGUF key 'tokenizer.ggml.token_type' is not an integer array");
    const kvrt_gguf_kv *extra[] = {*scores, *types};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(extra); i++)
        if (extra[i] && extra[i]->n != (*tokens)->n)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "GGUF key '%.*s' has %llu entries for %llu tokens",
                             (int)extra[i]->key.len, extra[i]->key.ptr, (unsigned long long)extra[i]->n,
                             (unsigned long long)(*tokens)->n);
    return KVRT_OK;
}

static kvrt_status vocab_fill(const kvrt_gguf_kv *tokens, const kvrt_gguf_kv *scores, const kvrt_gguf_kv *types,
                              const kvrt_allocator *alloc, kvrt_vocab *v, kvrt_error *err)
{
    int32_t n = (int32_t)tokens->n;
    v->pieces = kvrt_calloc(alloc, (size_t)n, sizeof(*v->pieces));
    v->piece_lens = kvrt_calloc(alloc, (size_t)n, sizeof(*v->piece_lens));
    v->scores = kvrt_calloc(alloc, (size_t)n, sizeof(*v->scores));
    v->types = kvrt_calloc(alloc, (size_t)n, sizeof(*v->types));
    v->n_tokens = n;
    if (!v->pieces || !v->piece_lens || !v->scores || !v->types)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for a vocabulary of %d tokens", n);
    for (int32_t i = 0; i < n; i++) {
        kvrt_gguf_str s = tokens->strs[i];
        if (s.len > INT32_MAX - 1)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "token %d is %llu bytes long", i, (unsigned long long)s.len);
        char *p = kvrt_alloc(alloc, (size_t)s.len + 1, 1);
        if (!p)
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for token %d", i);
        memcpy(p, s.ptr, (size_t)s.len);
        p[s.len] = '\0';
        v->pieces[i] = p;
        v->piece_lens[i] = (int32_t)s.len;
        v->scores[i] = scores ? (float)kvrt_gguf_kv_float(scores, (uint64_t)i) : 0.0f;
        int64_t t = types ? kvrt_gguf_kv_int(types, (uint64_t)i) : KVRT_TOKEN_NORMAL;
        if (t < KVRT_TOKEN_NORMAL || t > KVRT_TOKEN_BYTE)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "token %d has unknown type %lld", i, (long long)t);
        v->types[i] = (int32_t)t;
    }
    return KVRT_OK;
}

/* tokenizer.ggml.merges into one block of text plus offsets. */
static kvrt_status vocab_merges(const kvrt_gguf *g, const kvrt_allocator *alloc, kvrt_vocab *v, kvrt_error *err)
{
    const kvrt_gguf_kv *m;
    KVRT_TRY(kvrt_gguf_get_arr(g, "tokenizer.ggml.merges", KVRT_GGUF_STRING, &m, err));
    if (!m)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER,
                         "GGUF key 'tokenizer.ggml.merges' is missing (a byte-level BPE vocabulary needs it)");
    if (m->n > INT32_MAX - 1)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "GGUF vocabulary has %llu merges", (unsigned long long)m->n);
    uint64_t total = 0;
    for (uint64_t i = 0; i < m->n; i++)
        total += m->strs[i].len; /* each <= the file size: no overflow */
    if (total > UINT32_MAX - 1)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "GGUF merges hold %llu bytes, more than 4 GiB",
                         (unsigned long long)total);
    v->n_merges = (int32_t)m->n;
    v->merge_text = kvrt_alloc(alloc, (size_t)total + 1, 1);
    v->merge_offsets = kvrt_calloc(alloc, (size_t)m->n + 1, sizeof(uint32_t));
    if (!v->merge_text || !v->merge_offsets)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for %llu merges", (unsigned long long)m->n);
    uint32_t o = 0;
    for (uint64_t i = 0; i < m->n; i++) {
        v->merge_offsets[i] = o;
        memcpy(v->merge_text + o, m->strs[i].ptr, (size_t)m->strs[i].len);
        o += (uint32_t)m->strs[i].len;
    }
    v->merge_offsets[m->n] = o;
    v->merge_text[o] = '\0';
    return KVRT_OK;
}

static kvrt_status vocab_strings(const kvrt_gguf *g, const kvrt_allocator *alloc, kvrt_vocab *v, kvrt_error *err)
{
    kvrt_gguf_str s;
    bool found;
    KVRT_TRY(kvrt_gguf_get_str(g, "tokenizer.ggml.pre", &s, &found, err));
    if (found) {
        if (s.len >= sizeof(v->pre) || memchr(s.ptr, '\0', (size_t)s.len))
            return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "pre-tokenizer '%.*s' is unknown", (int)KVRT_MIN(s.len, 64),
                             s.ptr);
        memcpy(v->pre, s.ptr, (size_t)s.len);
        v->pre[s.len] = '\0';
    }
    KVRT_TRY(kvrt_gguf_get_str(g, "tokenizer.chat_template", &s, &found, err));
    if (found) {
        v->chat_template = kvrt_alloc(alloc, (size_t)s.len + 1, 1);
        if (!v->chat_template)
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory for a %llu-byte chat template",
                             (unsigned long long)s.len);
        memcpy(v->chat_template, s.ptr, (size_t)s.len);
        v->chat_template[s.len] = '\0';
    }
    /* Phi-3's added tokens strip the whitespace after them (see model_file.h). */
    KVRT_TRY(kvrt_gguf_get_str(g, "general.name", &s, &found, err));
    if (found) {
        char name[128];
        size_t n = KVRT_MIN((size_t)s.len, sizeof(name) - 1);
        for (size_t i = 0; i < n; i++)
            name[i] = (char)tolower((unsigned char)s.ptr[i]);
        name[n] = '\0';
        v->special_rstrip = v->kind == KVRT_VOCAB_SPM && (strstr(name, "phi-3") || strstr(name, "phi3"));
    }
    return KVRT_OK;
}

static kvrt_status vocab_flags(const kvrt_gguf *g, kvrt_vocab *v, kvrt_error *err)
{
    bool spm = v->kind == KVRT_VOCAB_SPM;
    int32_t n = v->n_tokens;
    /* SentencePiece's fixed ids when the file names none; BPE files always name theirs. */
    KVRT_TRY(vocab_special(g, "tokenizer.ggml.bos_token_id", spm ? 1 : -1, n, &v->bos_id, err));
    KVRT_TRY(vocab_special(g, "tokenizer.ggml.eos_token_id", spm ? 2 : -1, n, &v->eos_id, err));
    KVRT_TRY(vocab_special(g, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, n, &v->unk_id, err));
    KVRT_TRY(vocab_special(g, "tokenizer.ggml.eot_token_id", -1, n, &v->eot_id, err));
    KVRT_TRY(vocab_special(g, "tokenizer.ggml.eom_token_id", -1, n, &v->eom_id, err));
    bool found;
    v->add_bos = spm || kvrt_bpe_pre_adds_bos(v->pre);
    v->add_eos = false;
    v->add_space_prefix = spm;
    KVRT_TRY(kvrt_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &v->add_bos, &found, err));
    KVRT_TRY(kvrt_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &v->add_eos, &found, err));
    KVRT_TRY(kvrt_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &v->add_space_prefix, &found, err));
    return KVRT_OK; /* add_bos without a BOS id adds nothing (kvrt_tokenizer_adds_bos) */
}

static kvrt_status read_all(const kvrt_gguf *g, const kvrt_allocator *alloc, kvrt_vocab *v, kvrt_error *err)
{
    kvrt_gguf_str model;
    bool found;
    KVRT_TRY(kvrt_gguf_get_str(g, "tokenizer.ggml.model", &model, &found, err));
    if (!found)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "GGUF key 'tokenizer.ggml.model' is missing");
    if (kvrt_gguf_str_eq(model, "llama"))
        v->kind = KVRT_VOCAB_SPM;
    else if (kvrt_gguf_str_eq(model, "gpt2"))
        v->kind = KVRT_VOCAB_BPE;
    else
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED,
                         "tokenizer model '%.*s' is not supported (llama = SentencePiece, gpt2 = byte-level BPE)",
                         (int)KVRT_MIN(model.len, 64), model.ptr);
    const kvrt_gguf_kv *tokens, *scores, *types;
    KVRT_TRY(vocab_arrays(g, &tokens, &scores, &types, err));
    KVRT_TRY(vocab_fill(tokens, scores, types, alloc, v, err));
    if (v->kind == KVRT_VOCAB_BPE)
        KVRT_TRY(vocab_merges(g, alloc, v, err));
    KVRT_TRY(vocab_strings(g, alloc, v, err));
    return vocab_flags(g, v, err);
}

kvrt_status kvrt_vocab_read_gguf(const kvrt_gguf *g, const kvrt_allocator *alloc, kvrt_vocab *v, kvrt_error *err)
{
    kvrt_vocab_init(v);
    kvrt_status s = read_all(g, alloc, v, err);
    if (s != KVRT_OK)
        kvrt_vocab_free(alloc, v);
    return s;
}
