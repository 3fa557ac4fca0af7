/*
 * kvrt-run --chat: a conversation on stdin/stdout over one session.
 *
 * Each user line becomes a message; the conversation is rendered with the
 * model's chat template (or --chat-template), and only the part of the
 * rendering the session has not seen is tokenized and evaluated, so earlier
 * turns are never computed again. After a reply, the session holds the
 * reply's tokens but not the template's end-of-turn marker (generation
 * stops on it without evaluating it): the next turn's new text therefore
 * starts at that marker in the rendering. Message contents stay text (a
 * user writing <|im_end|> does not end a turn); the template's markers
 * become their special tokens.
 */
#include "run_chat.h"

#include "model/chat.h"
#include "model/model_api_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct chat_state {
    const kvrt_run_chat_opts *o;
    kvrt_model *m;
    kvrt_session *s;
    kvrt_sampler *sampler;
    const kvrt_chat_def *def;
    kvrt_chat_message *msgs; /* [n_msgs], contents owned (malloc) */
    size_t n_msgs, cap_msgs;
    size_t seen;             /* bytes of the rendering the session holds */
    float *logits;
    int32_t n_vocab;
    /* the reply being generated */
    char *reply;
    size_t reply_len, reply_cap, shown;
    int32_t prev;
} chat_state;

static int fail(const char *what, const char *msg)
{
    fprintf(stderr, "kvrt-run: %s: %s\n", what, msg);
    return 1;
}

static bool push(chat_state *c, const char *role, const char *content, size_t len)
{
    if (c->n_msgs == c->cap_msgs) {
        size_t cap = c->cap_msgs ? 2 * c->cap_msgs : 8;
        kvrt_chat_message *m = realloc(c->msgs, cap * sizeof(*m));
        if (!m)
            return false;
        c->msgs = m;
        c->cap_msgs = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return false;
    memcpy(copy, content, len);
    copy[len] = '\0';
    c->msgs[c->n_msgs++] = (kvrt_chat_message){role, copy};
    return true;
}

/* Bytes of text[0, n) that end on a UTF-8 character boundary. */
static size_t whole_chars(const char *text, size_t n)
{
    size_t i = n, back = 0;
    while (i > 0 && back < 4 && ((unsigned char)text[i - 1] & 0xC0) == 0x80) {
        i--;
        back++;
    }
    if (i == 0)
        return n;
    unsigned char lead = (unsigned char)text[i - 1];
    size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    return want > back + 1 ? i - 1 : n;
}

/* Each generated token: its text into the reply, whole characters to stdout. */
static int on_token(void *user, int32_t tok)
{
    chat_state *c = user;
    char piece[256];
    size_t len = 0;
    if (kvrt_token_to_text(c->m, c->prev, tok, piece, sizeof(piece), &len) != KVRT_OK)
        len = 0;
    c->prev = tok;
    if (c->reply_len + len + 1 > c->reply_cap) {
        size_t cap = 2 * (c->reply_len + len + 1);
        char *r = realloc(c->reply, cap);
        if (!r)
            return 1; /* stop: the reply so far is kept */
        c->reply = r;
        c->reply_cap = cap;
    }
    memcpy(c->reply + c->reply_len, piece, len);
    c->reply_len += len;
    size_t upto = whole_chars(c->reply, c->reply_len);
    fwrite(c->reply + c->shown, 1, upto - c->shown, stdout);
    fflush(stdout);
    c->shown = upto;
    return 0;
}

/* Renders the conversation (opened for the assistant when gen). */
static kvrt_status render(chat_state *c, bool gen, kvrt_chat_text *t, kvrt_error *err)
{
    return kvrt_chat_render(c->def, c->m->tok, c->msgs, c->n_msgs, gen, NULL, t, err);
}

/* Tokenizes the unseen part of the rendering and evaluates it. */
static int feed(chat_state *c, int turn, bool *full)
{
    kvrt_chat_text t;
    kvrt_error err;
    if (render(c, true, &t, &err) != KVRT_OK)
        return fail("chat template", err.message);
    const char *text = t.text + c->seen;
    size_t len = t.len - c->seen, n_plain = 0;
    size_t(*plain)[2] = calloc(t.n_content + 1, sizeof(*plain));
    for (size_t i = 0; plain && i < t.n_content; i++)
        if (t.content[i][1] > c->seen) { /* contents after the seen part, shifted to it */
            plain[n_plain][0] = t.content[i][0] > c->seen ? t.content[i][0] - c->seen : 0;
            plain[n_plain][1] = t.content[i][1] - c->seen;
            n_plain++;
        }
    unsigned flags = KVRT_TOKENIZE_PARSE_SPECIAL | (c->seen == 0 ? KVRT_TOKENIZE_ADD_SPECIAL : 0u);
    size_t n = 0;
    int32_t *ids = NULL;
    kvrt_status s = plain ? kvrt_tokenizer_encode_plain(c->m->tok, text, len, flags, (const size_t(*)[2])plain, n_plain,
                                                       NULL, 0, &n)
                          : KVRT_ERR_OUT_OF_HOST_MEMORY;
    if (s == KVRT_OK || s == KVRT_ERR_INVALID_ARGUMENT) {
        ids = malloc((n + 1) * sizeof(int32_t));
        s = ids ? kvrt_tokenizer_encode_plain(c->m->tok, text, len, flags, (const size_t(*)[2])plain, n_plain, ids, n,
                                              &n)
                : KVRT_ERR_OUT_OF_HOST_MEMORY;
    }
    int rc = 0;
    kvrt_session_stats st;
    kvrt_session_get_stats(c->s, &st);
    if (s != KVRT_OK) {
        rc = fail("tokenizing the turn", kvrt_tokenizer_message(c->m->tok));
    } else if ((int64_t)st.n_past + (int64_t)n >= st.n_ctx) {
        fprintf(stderr, "kvrt-run: context full: this turn needs %zu more tokens, %d of %d positions are used; "
                        "ending the conversation\n", n, (int)st.n_past, (int)st.n_ctx);
        *full = true;
    } else {
        if (c->o->verbose)
            fprintf(stderr, "kvrt-run: turn %d: prefill %zu tokens (context %d + %zu of %d)\n", turn, n,
                    (int)st.n_past, n, (int)st.n_ctx);
        if (kvrt_session_eval(c->s, ids, (int32_t)n, c->logits, NULL) != KVRT_OK)
            rc = fail("prefill", kvrt_session_message(c->s));
        else
            c->prev = n > 0 ? ids[n - 1] : -1;
    }
    free(ids);
    free(plain);
    kvrt_chat_text_free(NULL, &t);
    return rc;
}

/* After a reply: the session has seen the rendering up to the reply's end marker. */
static int mark_seen(chat_state *c)
{
    kvrt_chat_text t;
    kvrt_error err;
    if (render(c, false, &t, &err) != KVRT_OK)
        return fail("chat template", err.message);
    const char *end = kvrt_chat_end_marker(c->def, c->m->tok);
    size_t el = strlen(end), at = t.len;
    for (size_t i = t.len; i >= el && i > c->seen; i--)
        if (memcmp(t.text + i - el, end, el) == 0) {
            at = i - el;
            break;
        }
    c->seen = at;
    kvrt_chat_text_free(NULL, &t);
    return 0;
}

static int reply(chat_state *c, bool *full)
{
    c->reply_len = c->shown = 0;
    int32_t n_gen = 0;
    kvrt_gen_stop stop;
    kvrt_status s = kvrt_session_generate(c->s, c->sampler, c->logits, c->o->n_predict, c->o->ignore_eos, on_token,
                                          c, &n_gen, &stop);
    fwrite(c->reply + c->shown, 1, c->reply_len - c->shown, stdout);
    printf("\n");
    fflush(stdout);
    if (s != KVRT_OK)
        return fail("generating", kvrt_session_message(c->s));
    if (c->o->verbose)
        fprintf(stderr, "kvrt-run: reply of %d tokens (%s)\n", (int)n_gen,
                stop == KVRT_GEN_STOP_EOG ? "end of turn" : stop == KVRT_GEN_STOP_LENGTH ? "-n reached" : "stopped");
    if (stop == KVRT_GEN_STOP_CONTEXT_FULL) {
        fprintf(stderr, "kvrt-run: context full; ending the conversation\n");
        *full = true;
        return 0;
    }
    if (!push(c, "assistant", c->reply ? c->reply : "", c->reply_len))
        return fail("chat", "out of memory");
    return mark_seen(c);
}

/* One line of stdin without its newline, or NULL at the end. */
static char *read_line(FILE *in, size_t *len)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, in);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    line[n] = '\0';
    *len = (size_t)n;
    return line;
}

int kvrt_run_chat(kvrt_model *m, kvrt_session *s, kvrt_sampler *sampler, const kvrt_run_chat_opts *o)
{
    chat_state c = {.o = o, .m = m, .s = s, .sampler = sampler, .prev = -1};
    kvrt_model_info info;
    kvrt_model_get_info(m, &info);
    kvrt_error err;
    if (!m->tok)
        return fail("chat", "the model has no vocabulary");
    if (kvrt_chat_find(o->chat_template, m->mf->vocab.chat_template, &c.def, &err) != KVRT_OK)
        return fail("chat template", err.message);
    const char *name = NULL;
    kvrt_chat_template_resolve(m, kvrt_chat_name(c.def), &name); /* marks its end marker as end of generation */
    if (o->verbose)
        fprintf(stderr, "kvrt-run: chat template %s\n", kvrt_chat_name(c.def));
    c.logits = malloc((size_t)info.n_vocab * sizeof(float));
    int rc = c.logits ? 0 : fail("chat", "out of memory");
    if (!rc && o->system && !push(&c, "system", o->system, strlen(o->system)))
        rc = fail("chat", "out of memory");
    bool full = false;
    for (int turn = 1; !rc && !full; turn++) {
        if (o->prompt_marks)
            fprintf(stderr, "> ");
        size_t len = 0;
        char *line = read_line(stdin, &len);
        if (!line)
            break;
        if (len == 0) {
            free(line);
            turn--;
            continue;
        }
        bool ok = push(&c, "user", line, len);
        free(line);
        if (!ok)
            rc = fail("chat", "out of memory");
        if (!rc)
            rc = feed(&c, turn, &full);
        if (!rc && !full)
            rc = reply(&c, &full);
    }
    for (size_t i = 0; i < c.n_msgs; i++)
        free((char *)c.msgs[i].content);
    free(c.msgs);
    free(c.reply);
    free(c.logits);
    return rc;
}
