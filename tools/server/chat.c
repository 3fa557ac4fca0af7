/* Chat messages -> prompt tokens.
 *
 * The model's own template (tokenizer.chat_template, or --chat-template NAME)
 * renders the conversation through kvrt_chat_tokenize: the template's markers
 * become special tokens while the messages' contents stay text, so a client
 * that writes "<|im_end|>" cannot end a turn. A model with no template (base
 * models such as stories260K) gets a plain transcript instead ("System: ...",
 * "User: ...", ending with "Assistant:"), which any base model can continue;
 * the server says which at start. */
#include "server.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool srv_chat_resolve(srv *s)
{
    const char *tmpl = s->o.chat_template;
    const char *name = NULL;
    if (kvrt_chat_template_resolve(s->model, tmpl, &name) == KVRT_OK) {
        s->chat_template = name;
        return true;
    }
    if (tmpl && *tmpl) {
        fprintf(stderr, "%s: --chat-template: %s\n", SRV_PROG, kvrt_model_message(s->model));
        return false;
    }
    s->chat_template = NULL;
    fprintf(stderr, "%s: the model has no chat template it knows (%s); chat requests get a plain transcript\n",
            SRV_PROG, kvrt_model_message(s->model));
    return true;
}

static bool transcript_text(const srv_params *p, char **text, srv_error *err)
{
    srv_buf b = {0};
    bool ok = true;
    for (int32_t i = 0; i < p->n_messages && ok; i++) {
        const srv_message *m = &p->messages[i];
        const char *who = !strcmp(m->role, "system") ? "System" : !strcmp(m->role, "user") ? "User" : "Assistant";
        ok = srv_buf_printf(&b, "%s: %s\n", who, m->content);
    }
    ok = ok && srv_buf_puts(&b, "Assistant:");
    if (!ok) {
        srv_buf_free(&b);
        srv_error_set(err, 500, "server_error", NULL, "out of memory while formatting the chat");
        return false;
    }
    *text = srv_buf_take(&b);
    return true;
}

static bool template_tokens(srv *s, const srv_params *p, int32_t **ids, int32_t *n, srv_error *err)
{
    kvrt_chat_message *msgs = calloc((size_t)p->n_messages, sizeof(*msgs));
    if (!msgs) {
        srv_error_set(err, 500, "server_error", NULL, "out of memory");
        return false;
    }
    for (int32_t i = 0; i < p->n_messages; i++)
        msgs[i] = (kvrt_chat_message){p->messages[i].role, p->messages[i].content};
    int32_t need = 0;
    kvrt_status st = kvrt_chat_tokenize(s->model, s->chat_template, msgs, (size_t)p->n_messages, 1, NULL, 0, &need);
    if (st == KVRT_OK || need > 0) {
        *ids = malloc((size_t)(need > 0 ? need : 1) * sizeof(int32_t));
        st = *ids ? kvrt_chat_tokenize(s->model, s->chat_template, msgs, (size_t)p->n_messages, 1, *ids, need, n)
                  : KVRT_ERR_OUT_OF_HOST_MEMORY;
    }
    free(msgs);
    if (st != KVRT_OK) {
        /* a role the template has no place for, or text the vocabulary cannot encode */
        srv_error_set(err, st == KVRT_ERR_OUT_OF_HOST_MEMORY ? 500 : 400,
                      st == KVRT_ERR_OUT_OF_HOST_MEMORY ? "server_error" : "invalid_request_error", "messages",
                      "the chat cannot be formatted with template %s: %s", s->chat_template,
                      kvrt_model_message(s->model));
        return false;
    }
    return true;
}

bool srv_chat_tokens(srv *s, const srv_params *p, int32_t **ids, int32_t *n, srv_error *err)
{
    if (s->chat_template)
        return template_tokens(s, p, ids, n, err);
    char *text = NULL;
    bool ok = transcript_text(p, &text, err) && srv_tokenize(s, text, true, ids, n, err);
    free(text);
    return ok;
}
