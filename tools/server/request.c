/* OpenAI request bodies -> srv_params, with every field type- and range-checked.
 *
 * JSON is parsed by cJSON (libcjson-dev). cJSON keeps numbers as doubles and
 * does not check UTF-8, so integers are checked for integrality here and the
 * whole body is checked for UTF-8 before parsing. Unknown fields are ignored
 * (clients send many); known fields with a wrong type or range are a 400
 * naming the field, and OpenAI features the engine does not have
 * (penalties, echo, best_of, logit_bias, top-N logprobs) are refused rather
 * than silently ignored.
 */
#include "server.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_STOP 16
#define MAX_N 16
#define INVALID "invalid_request_error"

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p)
        memcpy(p, s, n + 1);
    return p;
}

static bool oom(srv_error *err)
{
    srv_error_set(err, 500, "server_error", NULL, "out of memory while parsing the request");
    return false;
}

/* A JSON string escape \u0000 would end the C string cJSON gives back early:
 * find one (an unescaped backslash followed by u0000). */
static bool has_nul_escape(const char *s, size_t n)
{
    for (size_t i = 0; i + 5 < n; i++) {
        if (s[i] != '\\')
            continue;
        if (memcmp(s + i + 1, "u0000", 5) == 0)
            return true;
        i++; /* skip the escaped character (\\ included) */
    }
    return false;
}

/* The field, or NULL when absent or null. */
static const cJSON *field(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static bool get_int(const cJSON *obj, const char *name, int64_t lo, int64_t hi, int64_t *out, bool *present,
                    srv_error *err)
{
    const cJSON *v = field(obj, name);
    if (present)
        *present = v != NULL;
    if (!v)
        return true;
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || !isfinite(d) || floor(d) != d) {
        srv_error_set(err, 400, INVALID, name, "'%s' must be an integer", name);
        return false;
    }
    if (d < (double)lo || d > (double)hi) {
        srv_error_set(err, 400, INVALID, name, "'%s' is %.17g; it must be in [%lld, %lld]", name, d, (long long)lo,
                      (long long)hi);
        return false;
    }
    *out = (int64_t)d;
    return true;
}

static bool get_float(const cJSON *obj, const char *name, double lo, double hi, bool lo_open, float *out,
                      srv_error *err)
{
    const cJSON *v = field(obj, name);
    if (!v)
        return true;
    double d = v->valuedouble;
    if (!cJSON_IsNumber(v) || !isfinite(d)) {
        srv_error_set(err, 400, INVALID, name, "'%s' must be a number", name);
        return false;
    }
    if (d < lo || d > hi || (lo_open && d == lo)) {
        srv_error_set(err, 400, INVALID, name, "'%s' is %g; it must be in %c%g, %g]", name, d, lo_open ? '(' : '[',
                      lo, hi);
        return false;
    }
    *out = (float)d;
    return true;
}

static bool get_bool(const cJSON *obj, const char *name, bool *out, srv_error *err)
{
    const cJSON *v = field(obj, name);
    if (!v)
        return true;
    if (!cJSON_IsBool(v)) {
        srv_error_set(err, 400, INVALID, name, "'%s' must be true or false", name);
        return false;
    }
    *out = cJSON_IsTrue(v);
    return true;
}

static bool get_string(const cJSON *obj, const char *name, char **out, srv_error *err)
{
    const cJSON *v = field(obj, name);
    if (!v)
        return true;
    if (!cJSON_IsString(v)) {
        srv_error_set(err, 400, INVALID, name, "'%s' must be a string", name);
        return false;
    }
    return (*out = dup_str(v->valuestring)) != NULL || oom(err);
}

/* "stop": a string or a list of strings, none empty. */
static bool parse_stop(const cJSON *root, srv_params *p, srv_error *err)
{
    const cJSON *v = field(root, "stop");
    if (!v)
        return true;
    int n = cJSON_IsString(v) ? 1 : cJSON_IsArray(v) ? cJSON_GetArraySize(v) : -1;
    if (n < 0) {
        srv_error_set(err, 400, INVALID, "stop", "'stop' must be a string or a list of strings");
        return false;
    }
    if (n > MAX_STOP) {
        srv_error_set(err, 400, INVALID, "stop", "'stop' has %d strings; at most %d", n, MAX_STOP);
        return false;
    }
    if (n == 0)
        return true;
    if (!(p->stop = calloc((size_t)n, sizeof(char *))))
        return oom(err);
    for (int i = 0; i < n; i++) {
        const cJSON *s = cJSON_IsString(v) ? v : cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(s) || !s->valuestring[0]) {
            srv_error_set(err, 400, INVALID, "stop", "'stop' strings must be non-empty strings");
            return false;
        }
        if (!(p->stop[i] = dup_str(s->valuestring)))
            return oom(err);
        p->n_stop = i + 1;
    }
    return true;
}

/* "prompt": a string, a list of token ids, or a list holding one string. */
static bool parse_prompt(const cJSON *root, srv_params *p, srv_error *err)
{
    const cJSON *v = field(root, "prompt");
    if (!v) {
        srv_error_set(err, 400, INVALID, "prompt", "'prompt' is required");
        return false;
    }
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(cJSON_GetArrayItem(v, 0)))
        v = cJSON_GetArrayItem(v, 0);
    if (cJSON_IsString(v))
        return (p->prompt = dup_str(v->valuestring)) != NULL || oom(err);
    if (!cJSON_IsArray(v)) {
        srv_error_set(err, 400, INVALID, "prompt", "'prompt' must be a string or a list of token ids");
        return false;
    }
    int n = cJSON_GetArraySize(v);
    if (n == 0) {
        srv_error_set(err, 400, INVALID, "prompt", "'prompt' is an empty list");
        return false;
    }
    if (!(p->prompt_ids = calloc((size_t)n, sizeof(int32_t))))
        return oom(err);
    int i = 0;
    for (const cJSON *t = v->child; t; t = t->next, i++) {
        double d = t->valuedouble;
        if (!cJSON_IsNumber(t) || !isfinite(d) || floor(d) != d || d < 0 || d > INT32_MAX) {
            srv_error_set(err, 400, INVALID, "prompt",
                          cJSON_IsString(t) ? "'prompt' as a list holds one string (batches are not supported)"
                                            : "'prompt' list entry %d is not a token id", i);
            return false;
        }
        p->prompt_ids[i] = (int32_t)d;
    }
    p->n_prompt_ids = n;
    return true;
}

/* A message's content: a string, or a list of {"type": "text", "text": ...} parts (joined). */
static bool message_content(const cJSON *c, int i, char **out, srv_error *err)
{
    if (!c || cJSON_IsString(c))
        return (*out = dup_str(c ? c->valuestring : "")) != NULL || oom(err);
    if (!cJSON_IsArray(c)) {
        srv_error_set(err, 400, INVALID, "messages", "messages[%d].content must be a string or a list of parts", i);
        return false;
    }
    srv_buf b = {0};
    for (const cJSON *part = c->child; part; part = part->next) {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text)) {
            srv_buf_free(&b);
            srv_error_set(err, 400, INVALID, "messages",
                          "messages[%d].content: only {\"type\": \"text\", \"text\": ...} parts are supported", i);
            return false;
        }
        if (!srv_buf_puts(&b, text->valuestring)) {
            srv_buf_free(&b);
            return oom(err);
        }
    }
    *out = srv_buf_take(&b);
    return *out != NULL || oom(err);
}

static bool parse_messages(const cJSON *root, srv_params *p, srv_error *err)
{
    const cJSON *v = field(root, "messages");
    if (!v || !cJSON_IsArray(v) || cJSON_GetArraySize(v) == 0) {
        srv_error_set(err, 400, INVALID, "messages", "'messages' must be a non-empty list");
        return false;
    }
    int n = cJSON_GetArraySize(v);
    if (!(p->messages = calloc((size_t)n, sizeof(srv_message))))
        return oom(err);
    int i = 0;
    for (const cJSON *m = v->child; m; m = m->next, i++) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            srv_error_set(err, 400, INVALID, "messages", "messages[%d] must be an object with a string 'role'", i);
            return false;
        }
        const char *r = role->valuestring;
        if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "developer")) {
            srv_error_set(err, 400, INVALID, "messages",
                          "messages[%d].role '%.40s' is not system, developer, user or assistant", i, r);
            return false;
        }
        p->n_messages = i + 1;
        if (!(p->messages[i].role = dup_str(strcmp(r, "developer") ? r : "system")))
            return oom(err);
        if (!message_content(field(m, "content"), i, &p->messages[i].content, err))
            return false;
    }
    return true;
}

/* OpenAI features the engine does not implement: refused unless left at their defaults. */
static bool refuse_unsupported(const cJSON *root, srv_error *err)
{
    static const char *const zero_nums[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < sizeof zero_nums / sizeof *zero_nums; i++) {
        const cJSON *v = field(root, zero_nums[i]);
        if (v && (!cJSON_IsNumber(v) || v->valuedouble != 0.0)) {
            srv_error_set(err, 400, INVALID, zero_nums[i],
                          "'%s' is not supported (use 'repeat_penalty', llama.cpp's rule)", zero_nums[i]);
            return false;
        }
    }
    const cJSON *v = field(root, "echo");
    if (v && !cJSON_IsFalse(v)) {
        srv_error_set(err, 400, INVALID, "echo", "'echo' is not supported");
        return false;
    }
    v = field(root, "logit_bias");
    if (v && (!cJSON_IsObject(v) || v->child)) {
        srv_error_set(err, 400, INVALID, "logit_bias", "'logit_bias' is not supported");
        return false;
    }
    v = field(root, "suffix");
    if (v && (!cJSON_IsString(v) || v->valuestring[0])) {
        srv_error_set(err, 400, INVALID, "suffix", "'suffix' is not supported");
        return false;
    }
    v = field(root, "tools");
    if (v && (!cJSON_IsArray(v) || v->child)) {
        srv_error_set(err, 400, INVALID, "tools", "'tools' (function calling) is not supported");
        return false;
    }
    return true;
}

/* logprobs: an integer for completions (0 = the chosen token's; more asks for
 * top-N alternatives, which the engine does not record), a boolean plus
 * top_logprobs for chat. */
static bool parse_logprobs(const cJSON *root, srv_kind kind, srv_params *p, srv_error *err)
{
    int64_t top = 0;
    bool present = false;
    if (kind == SRV_COMPLETION) {
        if (!get_int(root, "logprobs", 0, 20, &top, &present, err))
            return false;
        p->logprobs = present;
    } else {
        if (!get_bool(root, "logprobs", &p->logprobs, err) ||
            !get_int(root, "top_logprobs", 0, 20, &top, NULL, err))
            return false;
    }
    if (top > 0) {
        srv_error_set(err, 400, INVALID, kind == SRV_COMPLETION ? "logprobs" : "top_logprobs",
                      "top-%d alternatives are not recorded by the engine; ask for %s to get each chosen "
                      "token's log-probability", (int)top, kind == SRV_COMPLETION ? "logprobs: 0" : "logprobs: true");
        return false;
    }
    return true;
}

static bool parse_sampling(const cJSON *root, srv_params *p, int32_t max_context, int32_t max_n, srv_error *err)
{
    int64_t v = 0;
    bool present = false;
    const char *mt = field(root, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if (!get_int(root, mt, -(1ll << 53), 1ll << 53, &v, &present, err))
        return false;
    if (present && (v < 1 || v > max_context)) {
        srv_error_set(err, 400, INVALID, mt, "'%s' is %lld; it must be in [1, %d] (the context)", mt, (long long)v,
                      (int)max_context);
        return false;
    }
    p->max_tokens = present ? (int32_t)v : 0;
    if (!get_float(root, "temperature", 0.0, 2.0, false, &p->temperature, err) ||
        !get_float(root, "top_p", 0.0, 1.0, true, &p->top_p, err) ||
        !get_float(root, "min_p", 0.0, 1.0, false, &p->min_p, err) ||
        !get_float(root, "repeat_penalty", 0.0, 10.0, true, &p->repeat_penalty, err))
        return false;
    v = 0;
    if (!get_int(root, "top_k", -1, INT32_MAX, &v, NULL, err))
        return false;
    p->top_k = v < 0 ? 0 : (int32_t)v; /* -1 = off, as vLLM takes it */
    /* seeds up to 2^53 are exact in a JSON double; negative ones wrap as in C */
    if (!get_int(root, "seed", -(1ll << 53), 1ll << 53, &v, &p->seed_set, err))
        return false;
    p->seed = (uint64_t)v;
    v = 1;
    if (!get_int(root, "n", 1, max_n, &v, NULL, err))
        return false;
    p->n = (int32_t)v;
    v = p->n;
    if (!get_int(root, "best_of", p->n, p->n, &v, NULL, err))
        return false;
    return true;
}

static bool parse_root(const cJSON *root, srv_kind kind, int32_t max_context, int32_t max_n, srv_params *p,
                       srv_error *err)
{
    if (!cJSON_IsObject(root)) {
        srv_error_set(err, 400, INVALID, NULL, "the request body must be a JSON object");
        return false;
    }
    if (!get_string(root, "model", &p->model, err) || !refuse_unsupported(root, err))
        return false;
    if (kind == SRV_COMPLETION ? !parse_prompt(root, p, err) : !parse_messages(root, p, err))
        return false;
    if (!parse_sampling(root, p, max_context, max_n, err) || !parse_stop(root, p, err) ||
        !parse_logprobs(root, kind, p, err) || !get_bool(root, "stream", &p->stream, err) ||
        !get_bool(root, "ignore_eos", &p->ignore_eos, err))
        return false;
    const cJSON *so = field(root, "stream_options");
    if (so && !cJSON_IsObject(so)) {
        srv_error_set(err, 400, INVALID, "stream_options", "'stream_options' must be an object");
        return false;
    }
    if (so && !get_bool(so, "include_usage", &p->include_usage, err))
        return false;
    const cJSON *user = field(root, "user");
    if (user && !cJSON_IsString(user)) {
        srv_error_set(err, 400, INVALID, "user", "'user' must be a string");
        return false;
    }
    return true;
}

bool srv_params_parse(srv_kind kind, const char *body, size_t len, int32_t max_context, int32_t max_n,
                      srv_params *p, srv_error *err)
{
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    p->temperature = 1.0f; /* OpenAI's defaults */
    p->top_p = 1.0f;
    p->repeat_penalty = 1.0f;
    p->n = 1;
    if (!srv_utf8_valid(body, len)) {
        srv_error_set(err, 400, INVALID, NULL, "the request body is not valid UTF-8");
        return false;
    }
    if (memchr(body, '\0', len) || has_nul_escape(body, len)) {
        srv_error_set(err, 400, INVALID, NULL, "the request body holds a NUL character");
        return false;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root) {
        size_t at = end && end >= body && end <= body + len ? (size_t)(end - body) : 0;
        srv_error_set(err, 400, INVALID, NULL, "the request body is not valid JSON (near byte %zu)", at);
        return false;
    }
    /* nothing but whitespace may follow the value */
    for (; end && end < body + len; end++)
        if (!strchr(" \t\r\n", *end)) {
            cJSON_Delete(root);
            srv_error_set(err, 400, INVALID, NULL, "the request body has data after the JSON value (byte %zu)",
                          (size_t)(end - body));
            return false;
        }
    bool ok = parse_root(root, kind, max_context, max_n, p, err);
    cJSON_Delete(root);
    if (!ok)
        srv_params_free(p);
    return ok;
}

void srv_params_free(srv_params *p)
{
    free(p->model);
    free(p->prompt);
    free(p->prompt_ids);
    for (int32_t i = 0; i < p->n_messages; i++) {
        free(p->messages[i].role);
        free(p->messages[i].content);
    }
    free(p->messages);
    for (int32_t i = 0; i < p->n_stop; i++)
        free(p->stop[i]);
    free(p->stop);
    memset(p, 0, sizeof(*p));
}
