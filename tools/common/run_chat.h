/* kvrt-run --chat: a conversation over one session (see run_chat.c). */
#ifndef KVRT_TOOL_RUN_CHAT_H
#define KVRT_TOOL_RUN_CHAT_H

#include "kvrt.h"

#include <stdbool.h>

typedef struct kvrt_run_chat_opts {
    const char *system;        /* --system TEXT, or NULL */
    const char *chat_template; /* --chat-template NAME, or NULL: the model file's */
    int32_t n_predict;         /* tokens per reply at most */
    int ignore_eos;
    int verbose;               /* prefill tokens per turn on stderr */
    bool prompt_marks;         /* "> " on stderr before each line (stdin is a terminal) */
} kvrt_run_chat_opts;

/* Reads user lines from stdin until its end, prints each reply on stdout.
 * 0 when the conversation ended (end of input, or a full context: said on
 * stderr), 1 on an error. */
int kvrt_run_chat(kvrt_model *model, kvrt_session *session, kvrt_sampler *sampler, const kvrt_run_chat_opts *o);

#endif /* KVRT_TOOL_RUN_CHAT_H */
