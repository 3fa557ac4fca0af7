/* Chat messages -> prompt text.
 *
 * Interim adapter: the model's own chat template comes with the public
 * kvrt_chat_format() of issue #15, which has not landed yet. Until then the
 * messages are rendered as a plain transcript ("System: ...", "User: ...",
 * "Assistant: ...", ending with "Assistant:" for the reply) and BOS is added,
 * which any base model can continue. When kvrt_chat_format() lands, this
 * file is the only one that changes. */
#include "server.h"

#include <string.h>

bool srv_chat_prompt(srv *s, const srv_params *p, char **text, bool *add_bos, srv_error *err)
{
    (void)s;
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
    *add_bos = true;
    return true;
}
