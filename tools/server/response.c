/* Response bodies in OpenAI's shapes: whole completions, streamed chunks
 * (one "data: {json}\n\n" server-sent event each), usage and errors.
 *
 * Written by hand into a byte buffer rather than through a JSON tree: the
 * shapes are fixed, a streamed chunk is written for every step of every
 * request, and generated text may hold any byte (a NUL, a stray byte from a
 * byte-fallback token), which json_str() turns into valid JSON and UTF-8
 * (ill-formed bytes become U+FFFD). Chunks are compact, one line each, as
 * line-oriented SSE clients expect. */
#include "server.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static bool json_str(srv_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    bool ok = srv_buf_append(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n && ok;) {
        unsigned char c = u[i];
        const char *esc = NULL;
        char tmp[8];
        size_t k = 1;
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20 || c == 0x7f) {
            snprintf(tmp, sizeof tmp, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
            esc = tmp;
        } else if (c >= 0x80 && !(k = srv_utf8_seq(u + i, n - i))) {
            esc = "\xEF\xBF\xBD"; /* U+FFFD for an ill-formed byte */
            k = 1;
        }
        if (esc) {
            ok = srv_buf_append(b, s + run, i - run) && srv_buf_puts(b, esc);
            run = i + k;
        }
        i += k;
    }
    return ok && srv_buf_append(b, s + run, n - run) && srv_buf_append(b, "\"", 1);
}

static bool json_cstr(srv_buf *b, const char *s)
{
    return s ? json_str(b, s, strlen(s)) : srv_buf_puts(b, "null");
}

/* A log-probability: -inf is written as -9999 (as vLLM does), JSON has no infinities. */
static bool json_logprob(srv_buf *b, float lp)
{
    return srv_buf_printf(b, "%.9g", isfinite(lp) ? (double)lp : -9999.0);
}

const char *srv_finish_name(kvrt_finish_reason f)
{
    switch (f) {
    case KVRT_FINISH_NONE: return NULL;
    case KVRT_FINISH_LENGTH: return "length";
    case KVRT_FINISH_CANCELLED: return "cancelled";
    case KVRT_FINISH_ERROR: return "error"; /* the engine gave up on this sample (kvrt_engine.h) */
    case KVRT_FINISH_EOS:
    case KVRT_FINISH_STOP_TOKEN:
    case KVRT_FINISH_STOP_STRING: return "stop";
    }
    return NULL;
}

int32_t srv_req_completion_tokens(const srv_req *r)
{
    int32_t n = 0;
    for (int32_t i = 0; i < r->p.n; i++)
        n += r->samples[i].n_tokens;
    return n;
}

static bool head(const srv *s, const srv_req *r, const char *object, srv_buf *b)
{
    return srv_buf_printf(b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", r->id, object,
                          (long long)r->created) &&
           json_cstr(b, s->model_name);
}

static bool usage(const srv_req *r, srv_buf *b)
{
    int32_t c = srv_req_completion_tokens(r);
    return srv_buf_printf(b,
                          "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
                          "\"prompt_tokens_details\":{\"cached_tokens\":%d}}",
                          (int)r->n_prompt, (int)c, (int)(r->n_prompt + c), (int)r->n_cached);
}

/* Tokens [from, to) of a sample: completions' {"tokens", "token_logprobs",
 * "top_logprobs", "text_offset"} or chat's {"content": [{"token", "logprob",
 * "bytes", "top_logprobs"}]}. */
static bool logprobs(const srv_req *r, const srv_sample *sm, int32_t from, int32_t to, srv_buf *b)
{
    if (!r->p.logprobs)
        return srv_buf_puts(b, "null");
    to = KVRT_MIN(to, sm->n_lp);
    bool ok = true;
    if (r->p.kind == SRV_CHAT) {
        ok = srv_buf_puts(b, "{\"content\":[");
        for (int32_t t = from; t < to && ok; t++) {
            const char *piece = sm->tok_text.p + sm->tok_off[t];
            size_t len = sm->tok_off[t + 1] - sm->tok_off[t];
            ok = srv_buf_puts(b, t > from ? ",{\"token\":" : "{\"token\":") && json_str(b, piece, len) &&
                 srv_buf_puts(b, ",\"logprob\":") && json_logprob(b, sm->lp[t]) && srv_buf_puts(b, ",\"bytes\":[");
            for (size_t k = 0; k < len && ok; k++)
                ok = srv_buf_printf(b, k ? ",%u" : "%u", (unsigned)(unsigned char)piece[k]);
            ok = ok && srv_buf_puts(b, "],\"top_logprobs\":[]}");
        }
        return ok && srv_buf_puts(b, "]}");
    }
    ok = srv_buf_puts(b, "{\"tokens\":[");
    for (int32_t t = from; t < to && ok; t++)
        ok = (t == from || srv_buf_puts(b, ",")) &&
             json_str(b, sm->tok_text.p + sm->tok_off[t], sm->tok_off[t + 1] - sm->tok_off[t]);
    ok = ok && srv_buf_puts(b, "],\"token_logprobs\":[");
    for (int32_t t = from; t < to && ok; t++)
        ok = (t == from || srv_buf_puts(b, ",")) && json_logprob(b, sm->lp[t]);
    ok = ok && srv_buf_puts(b, "],\"top_logprobs\":null,\"text_offset\":[");
    for (int32_t t = from; t < to && ok; t++)
        ok = srv_buf_printf(b, t == from ? "%u" : ",%u", (unsigned)sm->tok_off[t]);
    return ok && srv_buf_puts(b, "]}");
}

static bool finish_field(srv_buf *b, kvrt_finish_reason f)
{
    const char *name = srv_finish_name(f);
    return name ? srv_buf_printf(b, ",\"finish_reason\":\"%s\"}", name) : srv_buf_puts(b, ",\"finish_reason\":null}");
}

char *srv_response_body(const srv *s, const srv_req *r, size_t *len)
{
    srv_buf b = {0};
    bool chat = r->p.kind == SRV_CHAT;
    bool ok = head(s, r, chat ? "chat.completion" : "text_completion", &b) && srv_buf_puts(&b, ",\"choices\":[");
    for (int32_t i = 0; i < r->p.n && ok; i++) {
        const srv_sample *sm = &r->samples[i];
        ok = srv_buf_printf(&b, "%s{\"index\":%d,", i ? "," : "", (int)i) &&
             srv_buf_puts(&b, chat ? "\"message\":{\"role\":\"assistant\",\"content\":" : "\"text\":") &&
             json_str(&b, sm->text.p ? sm->text.p : "", sm->text.len) && srv_buf_puts(&b, chat ? "}," : ",") &&
             srv_buf_puts(&b, "\"logprobs\":") && logprobs(r, sm, 0, sm->n_lp, &b) && finish_field(&b, sm->finish);
    }
    ok = ok && srv_buf_puts(&b, "],") && usage(r, &b) && srv_buf_puts(&b, "}\n");
    if (!ok) {
        srv_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return srv_buf_take(&b);
}

bool srv_stream_chunk(const srv *s, const srv_req *r, int32_t i, const char *text, size_t len, int32_t lp_from,
                      int32_t lp_to, kvrt_finish_reason finish, bool first, srv_buf *out)
{
    const srv_sample *sm = &r->samples[i];
    bool chat = r->p.kind == SRV_CHAT;
    bool ok = srv_buf_puts(out, "data: ") && head(s, r, chat ? "chat.completion.chunk" : "text_completion", out) &&
              srv_buf_printf(out, ",\"choices\":[{\"index\":%d,", (int)i);
    if (chat) {
        ok = ok && srv_buf_puts(out, "\"delta\":{");
        if (first)
            ok = ok && srv_buf_puts(out, "\"role\":\"assistant\"");
        if (len > 0 || (first && finish == KVRT_FINISH_NONE))
            ok = ok && srv_buf_puts(out, first ? ",\"content\":" : "\"content\":") && json_str(out, text, len);
        ok = ok && srv_buf_puts(out, "},");
    } else {
        ok = ok && srv_buf_puts(out, "\"text\":") && json_str(out, text, len) && srv_buf_puts(out, ",");
    }
    ok = ok && srv_buf_puts(out, "\"logprobs\":") &&
         (lp_to > lp_from ? logprobs(r, sm, lp_from, lp_to, out) : srv_buf_puts(out, "null")) &&
         finish_field(out, finish) && srv_buf_puts(out, "]");
    if (r->p.include_usage)
        ok = ok && srv_buf_puts(out, ",\"usage\":null");
    return ok && srv_buf_puts(out, "}\n\n");
}

bool srv_stream_usage(const srv *s, const srv_req *r, srv_buf *out)
{
    bool chat = r->p.kind == SRV_CHAT;
    return srv_buf_puts(out, "data: ") && head(s, r, chat ? "chat.completion.chunk" : "text_completion", out) &&
           srv_buf_puts(out, ",\"choices\":[],") && usage(r, out) && srv_buf_puts(out, "}\n\n");
}

char *srv_error_json(const srv_error *e, size_t *len)
{
    srv_buf b = {0};
    bool ok = srv_buf_puts(&b, "{\"error\":{\"message\":") && json_cstr(&b, e->message) &&
              srv_buf_puts(&b, ",\"type\":") && json_cstr(&b, e->type ? e->type : "server_error") &&
              srv_buf_puts(&b, ",\"param\":") && json_cstr(&b, e->param[0] ? e->param : NULL) &&
              srv_buf_puts(&b, ",\"code\":") && json_cstr(&b, e->code) && srv_buf_puts(&b, "}}\n");
    if (!ok) {
        srv_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    return srv_buf_take(&b);
}
