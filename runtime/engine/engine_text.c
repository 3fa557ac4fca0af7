/* Text of the generated tokens: stop strings matched across token boundaries
 * (and left out of the text), and streaming that only ever hands out whole
 * UTF-8 characters that cannot turn out to belong to a stop string. */
#include "engine/engine_internal.h"

#include <string.h>

kvrt_status kvrt_engine_copy_stop_strings(kvrt_engine *e, kvrt_request *r, const kvrt_request_params *rp)
{
    int32_t n = rp->n_stop_strings;
    r->stop_strings = kvrt_calloc(e->alloc, (size_t)KVRT_MAX(n, 1), sizeof(char *));
    if (!r->stop_strings)
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "stop strings");
    for (int32_t i = 0; i < n; i++) {
        size_t len = strlen(rp->stop_strings[i]);
        r->stop_strings[i] = kvrt_calloc(e->alloc, len + 1, 1);
        if (!r->stop_strings[i])
            return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "stop string of %zu bytes", len);
        memcpy(r->stop_strings[i], rp->stop_strings[i], len + 1);
    }
    return KVRT_OK;
}

static kvrt_status text_reserve(kvrt_engine *e, kvrt_eseq *s, size_t extra)
{
    size_t need = s->text_len + extra + 1;
    if (need <= s->text_cap)
        return KVRT_OK;
    size_t cap = KVRT_MAX(need, 2 * s->text_cap);
    if (!kvrt_grow_array(e->alloc, (void **)&s->text, s->text_len + 1, cap, 1))
        return kvrt_fail(&e->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "sample text of %zu bytes", cap);
    s->text_cap = cap;
    return KVRT_OK;
}

/* Bytes of text[0, n) that end on a UTF-8 character boundary: a lead byte
 * whose continuation bytes have not all arrived is held back. */
static size_t utf8_complete(const char *text, size_t n)
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
    return want > back + 1 ? i - 1 : n; /* incomplete: stop before its lead byte */
}

/* Longest suffix of text[from, n) that is a proper prefix of some stop string. */
static size_t held_for_stop(const kvrt_request *r, const char *text, size_t from, size_t n)
{
    size_t held = 0;
    for (int32_t k = 0; k < r->p.n_stop_strings; k++) {
        const char *stop = r->stop_strings[k];
        size_t sl = strlen(stop);
        for (size_t len = KVRT_MIN(sl - 1, n - from); len > held; len--)
            if (memcmp(text + n - len, stop, len) == 0) {
                held = len;
                break;
            }
    }
    return held;
}

static void send(kvrt_eseq *s, size_t upto, kvrt_finish_reason finish)
{
    const kvrt_request *r = s->req;
    if (r->p.on_text && (upto > s->text_sent || finish != KVRT_FINISH_NONE))
        r->p.on_text(r->p.user, r->id, s->index, s->text + s->text_sent, upto - s->text_sent, finish);
    s->text_sent = KVRT_MAX(s->text_sent, upto);
}

/* Appends the token's text to s->text, however long it is: written in place
 * when it fits the room left, else the room is grown to the length the
 * first call reported and the call repeated. */
static kvrt_status append_token_text(kvrt_engine *e, kvrt_eseq *s, int32_t prev, int32_t tok)
{
    enum { TYPICAL_PIECE = 32 };
    KVRT_TRY(text_reserve(e, s, TYPICAL_PIECE));
    size_t len = 0, room = s->text_cap - s->text_len;
    kvrt_error keep = e->err; /* "too small" is not a failure of this call */
    kvrt_status st = e->runner.iface->token_text(e->runner.self, prev, tok, s->text + s->text_len, room, &len, &e->err);
    if (st == KVRT_ERR_INVALID_ARGUMENT && len + 1 > room) {
        e->err = keep;
        KVRT_TRY(text_reserve(e, s, len));
        room = s->text_cap - s->text_len;
        st = e->runner.iface->token_text(e->runner.self, prev, tok, s->text + s->text_len, room, &len, &e->err);
    }
    if (st != KVRT_OK) {
        s->text[s->text_len] = '\0';
        return st;
    }
    s->text_len += len;
    s->text[s->text_len] = '\0';
    return KVRT_OK;
}

kvrt_status kvrt_engine_text_step(kvrt_engine *e, kvrt_eseq *s, kvrt_finish_reason *why)
{
    if (!e->runner.iface->token_text)
        return KVRT_OK;
    int32_t tok = s->tokens[s->len - 1], prev = s->len >= 2 ? s->tokens[s->len - 2] : -1;
    KVRT_TRY(append_token_text(e, s, prev, tok));
    const kvrt_request *r = s->req;
    /* Text already sent cannot start a match: it was never a prefix of one. */
    size_t first = SIZE_MAX;
    for (int32_t k = 0; k < r->p.n_stop_strings; k++) {
        const char *hit = strstr(s->text + s->text_sent, r->stop_strings[k]);
        if (hit && (size_t)(hit - s->text) < first)
            first = (size_t)(hit - s->text);
    }
    if (first != SIZE_MAX) {
        s->text_len = first;
        s->text[first] = '\0';
        *why = KVRT_FINISH_STOP_STRING;
        return KVRT_OK; /* the rest is flushed when the sample finishes */
    }
    if (*why != KVRT_FINISH_NONE)
        return KVRT_OK;
    size_t safe = s->text_len - held_for_stop(r, s->text, s->text_sent, s->text_len);
    safe = utf8_complete(s->text, safe);
    if (safe > s->text_sent)
        send(s, safe, KVRT_FINISH_NONE);
    return KVRT_OK;
}

void kvrt_engine_text_flush(kvrt_engine *e, kvrt_eseq *s, kvrt_finish_reason why)
{
    (void)e;
    send(s, KVRT_MAX(s->text_len, s->text_sent), why);
}
