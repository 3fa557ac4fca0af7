/* The public chat-template and end-of-generation API (include/kvrt_model.h). */
#include "model/chat.h"
#include "model/model_api_internal.h"

#include <string.h>

/* The template's end marker ends generation: marked when the template is used. */
static void mark_end(kvrt_model *m, const kvrt_chat_def *def)
{
    const char *end = kvrt_chat_end_marker(def, m->tok);
    int32_t id = kvrt_tokenizer_special_id(m->tok, end, strlen(end));
    if (id >= 0)
        kvrt_tokenizer_mark_eog(m->tok, id);
}

void kvrt_model_chat_init(kvrt_model *m)
{
    const kvrt_chat_def *def = NULL;
    if (m->tok && kvrt_chat_find(NULL, m->mf->vocab.chat_template, &def, NULL) == KVRT_OK)
        mark_end(m, def);
}

static kvrt_status find(kvrt_model *m, const char *tmpl, const kvrt_chat_def **def)
{
    if (!m->tok)
        return kvrt_fail(&m->err, KVRT_ERR_BAD_TOKENIZER, "the model has no vocabulary (pass a tokenizer file)");
    KVRT_TRY(kvrt_chat_find(tmpl, m->mf->vocab.chat_template, def, &m->err));
    mark_end(m, *def);
    return KVRT_OK;
}

kvrt_status kvrt_chat_template_resolve(const kvrt_model *model, const char *tmpl, const char **name)
{
    if (!model || !name)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_model *m = (kvrt_model *)model; /* only its message is written */
    const kvrt_chat_def *def;
    KVRT_TRY(kvrt_chat_find(tmpl, m->mf->vocab.chat_template, &def, &m->err));
    *name = kvrt_chat_name(def);
    return KVRT_OK;
}

kvrt_status kvrt_chat_format(kvrt_model *m, const char *tmpl, const kvrt_chat_message *messages, size_t n_messages,
                             int add_generation_prompt, char *buf, size_t capacity, size_t *len)
{
    if (!m)
        return KVRT_ERR_INVALID_ARGUMENT;
    if ((!buf && capacity > 0) || !len)
        return kvrt_fail(&m->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_chat_format: invalid arguments");
    *len = 0;
    const kvrt_chat_def *def;
    KVRT_TRY(find(m, tmpl, &def));
    kvrt_chat_text t;
    KVRT_TRY(kvrt_chat_render(def, m->tok, messages, n_messages, add_generation_prompt != 0, m->ctx->alloc, &t,
                              &m->err));
    *len = t.len;
    kvrt_status s = KVRT_OK;
    if (t.len >= capacity)
        s = kvrt_fail(&m->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_chat_format: %zu bytes and a NUL do not fit in %zu",
                      t.len, capacity);
    else
        memcpy(buf, t.text, t.len + 1);
    kvrt_chat_text_free(m->ctx->alloc, &t);
    return s;
}

kvrt_status kvrt_chat_tokenize(kvrt_model *m, const char *tmpl, const kvrt_chat_message *messages, size_t n_messages,
                               int add_generation_prompt, int32_t *ids, int32_t capacity, int32_t *n_tokens)
{
    if (!m)
        return KVRT_ERR_INVALID_ARGUMENT;
    if ((!ids && capacity > 0) || capacity < 0 || !n_tokens)
        return kvrt_fail(&m->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_chat_tokenize: invalid arguments");
    *n_tokens = 0;
    const kvrt_chat_def *def;
    KVRT_TRY(find(m, tmpl, &def));
    kvrt_chat_text t;
    KVRT_TRY(kvrt_chat_render(def, m->tok, messages, n_messages, add_generation_prompt != 0, m->ctx->alloc, &t,
                              &m->err));
    size_t n = 0;
    kvrt_status s = kvrt_tokenizer_encode_plain(m->tok, t.text, t.len,
                                                KVRT_TOKENIZE_ADD_SPECIAL | KVRT_TOKENIZE_PARSE_SPECIAL,
                                                (const size_t(*)[2])t.content, t.n_content, ids, (size_t)capacity, &n);
    kvrt_chat_text_free(m->ctx->alloc, &t);
    if (n > INT32_MAX)
        return kvrt_fail(&m->err, KVRT_ERR_INVALID_ARGUMENT, "the conversation needs more than 2^31 tokens");
    *n_tokens = (int32_t)n;
    if (s != KVRT_OK)
        return kvrt_fail(&m->err, s, "%s", kvrt_tokenizer_message(m->tok));
    return KVRT_OK;
}

int kvrt_token_is_eog(const kvrt_model *m, int32_t token)
{
    return m && m->tok && kvrt_tokenizer_is_eog(m->tok, token);
}

kvrt_status kvrt_model_eog_tokens(const kvrt_model *m, int32_t *ids, int32_t capacity, int32_t *n_ids)
{
    if (!m || (!ids && capacity > 0) || capacity < 0 || !n_ids)
        return KVRT_ERR_INVALID_ARGUMENT;
    *n_ids = m->tok ? kvrt_tokenizer_eog_ids(m->tok, ids, capacity) : 0;
    return *n_ids > capacity ? KVRT_ERR_INVALID_ARGUMENT : KVRT_OK;
}
