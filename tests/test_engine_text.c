/* Engine text and sampling on a scripted runner (no model): the runner's next
 * token is a fixed script (or pseudo-random logits that depend only on the
 * position), and its tokens stand for chosen byte pieces, so the tests know
 * exactly what must be streamed:
 * - stop strings matched across token boundaries, left out of text and stream;
 * - streaming hands out whole UTF-8 characters only;
 * - the engine samples exactly as a standalone kvrt_sampler seeded with
 *   kvrt_engine_seed(seed, sample) (repetition penalty, top-k/p, min-p), and
 *   logprobs are the log-softmax of the raw logits;
 * - text prompts and stop strings need a tokenizer;
 * - a token whose text is longer than any fixed buffer (1,000 bytes) is
 *   streamed whole; a token whose text always fails finishes its sample with
 *   KVRT_FINISH_ERROR after one retry instead of being retried forever;
 * - a text prompt needing more ids than bytes + 4 (three byte pieces per
 *   space in a vocabulary without U+2581) is tokenized whole. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/engine_internal.h"

enum { NV = 16, NPROMPT = 2 };

static const char *const PIECES[NV] = {
    "", "x", "a", "\xC3", "\xA9", " ", "S", "TO", "\xE2\x82", "\xAC", "P", "\xF0\x9F", "\x98", "\x80", "b", "c",
};

typedef struct script_runner {
    const int32_t *script; /* next tokens by generated index; NULL: position-dependent logits */
    int32_t n_script;
    size_t long_len;       /* > 0: token 15's text is this many 'L' bytes */
    int32_t bad_token;     /* > 0: this token's text always fails (BAD_TOKEN) */
    int32_t text_calls;    /* token_text calls for the bad token */
} script_runner;

static float pos_logit(int32_t pos, int32_t v)
{
    uint64_t h = (uint64_t)pos * 0x9E3779B97F4A7C15ull ^ ((uint64_t)v + 1) * 0xC2B2AE3D27D4EB4Full;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    return (float)(h >> 40) / (float)(1u << 24) * 6.0f;
}

/* Logits of the token at position `pos` (the context holds pos tokens). */
static void script_logits(const script_runner *r, int32_t pos, float *out)
{
    int32_t g = pos - NPROMPT;
    for (int32_t v = 0; v < NV; v++)
        out[v] = r->script ? 0.0f : pos_logit(pos, v);
    if (r->script)
        out[g < r->n_script ? r->script[g] : 1] = 10.0f;
}

static kvrt_status sr_forward(void *self, const kvrt_batch *b, float *logits, kvrt_error *err)
{
    (void)err;
    for (int32_t k = 0; k < b->num_logits; k++) {
        int32_t row = b->logits_indices[k], s = 0;
        while (!(b->query_start_loc[s] <= row && row < b->query_start_loc[s + 1]))
            s++;
        script_logits(self, b->seq_lens[s], logits + (size_t)k * NV);
    }
    return KVRT_OK;
}

static kvrt_status sr_copy(void *self, const int32_t (*pairs)[2], int32_t n, kvrt_error *err)
{
    (void)self, (void)pairs, (void)n, (void)err;
    return KVRT_OK;
}

static kvrt_status sr_token_text(void *self, int32_t prev, int32_t token, char *buf, size_t cap, size_t *len,
                                 kvrt_error *err)
{
    (void)prev;
    script_runner *r = self;
    if (token < 0 || token >= NV)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKEN, "token %d", (int)token);
    if (r->bad_token > 0 && token == r->bad_token) {
        r->text_calls++;
        return kvrt_fail(err, KVRT_ERR_BAD_TOKEN, "token %d has no text", (int)token);
    }
    if (r->long_len > 0 && token == 15) { /* as kvrt_token_to_text: the length needed, then the bytes */
        *len = r->long_len;
        if (*len + 1 > cap)
            return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "buffer");
        memset(buf, 'L', *len);
        buf[*len] = '\0';
        return KVRT_OK;
    }
    *len = strlen(PIECES[token]);
    if (*len + 1 > cap)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "buffer");
    memcpy(buf, PIECES[token], *len + 1);
    return KVRT_OK;
}

static const kvrt_runner_ops script_ops = {.forward = sr_forward, .copy_blocks = sr_copy,
                                           .token_text = sr_token_text};
static const kvrt_runner_ops bare_ops = {.forward = sr_forward, .copy_blocks = sr_copy};

static kvrt_engine *script_engine(script_runner *r, const kvrt_runner_ops *ops)
{
    kvrt_engine_params p = kvrt_engine_default_params();
    p.num_blocks = 16;
    p.max_context = 64;
    kvrt_runner runner = {.iface = ops, .self = r, .n_vocab = NV};
    kvrt_engine *e = NULL;
    kvrt_error err;
    if (kvrt_engine_create_with_runner(&p, runner, &e, &err) != KVRT_OK)
        fail_msg("%s", err.message);
    return e;
}

typedef struct chunks {
    char text[16][16];
    size_t len[16];
    kvrt_finish_reason fin[16];
    int n;
} chunks;

static void on_text(void *user, int64_t id, int32_t sample, const char *text, size_t len, kvrt_finish_reason fin)
{
    (void)id, (void)sample;
    chunks *c = user;
    assert_true(c->n < 16 && len < 16);
    memcpy(c->text[c->n], text, len);
    c->text[c->n][len] = '\0';
    c->len[c->n] = len;
    c->fin[c->n++] = fin;
}

static void run_script(const int32_t *script, int32_t n_script, int32_t max_tokens, const char *const *stops,
                       int32_t n_stops, chunks *c, kvrt_sample_output *out_copy, char *text_copy)
{
    script_runner r = {.script = script, .n_script = n_script};
    kvrt_engine *e = script_engine(&r, &script_ops);
    int32_t prompt[NPROMPT] = {1, 1};
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = NPROMPT;
    rp.max_tokens = max_tokens;
    rp.stop_strings = stops;
    rp.n_stop_strings = n_stops;
    rp.on_text = on_text;
    rp.user = c;
    int64_t id = 0;
    memset(c, 0, sizeof(*c));
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    while (kvrt_engine_has_work(e))
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    *out_copy = out.samples[0];
    memcpy(text_copy, out.samples[0].text, out.samples[0].text_len + 1);
    out_copy->text = text_copy;
    out_copy->tokens = NULL;
    out_copy->logprobs = NULL;
    kvrt_engine_destroy(e);
}

static void expect_chunks(const chunks *c, const char *const *want, int n_want, kvrt_finish_reason fin)
{
    assert_int_equal(c->n, n_want);
    for (int i = 0; i < n_want; i++) {
        assert_string_equal(c->text[i], want[i]);
        assert_int_equal(c->fin[i], i == n_want - 1 ? fin : KVRT_FINISH_NONE);
    }
}

static void test_stop_string_across_tokens_and_utf8(void **state)
{
    (void)state;
    /* a, é (2 tokens), ' ', S, TO, € (2 tokens), S, TO, P, a, a: "aé STO€STOPaa" */
    static const int32_t script[] = {2, 3, 4, 5, 6, 7, 8, 9, 6, 7, 10, 2, 2};
    static const char *const stops[] = {"STOP", "zz"};
    chunks c;
    kvrt_sample_output out;
    char text[256];
    run_script(script, 13, 13, stops, 2, &c, &out, text);
    assert_int_equal(out.finish_reason, KVRT_FINISH_STOP_STRING);
    assert_int_equal(out.n_tokens, 11); /* through P */
    assert_string_equal(out.text, "a\xC3\xA9 STO\xE2\x82\xAC");
    /* é waits for its second byte, "S"/"STO" wait while they could become
     * "STOP", € waits for its last byte, and "STOP" is never streamed */
    static const char *const want[] = {"a", "\xC3\xA9", " ", "STO", "\xE2\x82\xAC", ""};
    expect_chunks(&c, want, 6, KVRT_FINISH_STOP_STRING);

    /* no stop string: everything streams, and the length limit flushes */
    run_script(script, 13, 13, NULL, 0, &c, &out, text);
    assert_int_equal(out.finish_reason, KVRT_FINISH_LENGTH);
    assert_string_equal(out.text, "a\xC3\xA9 STO\xE2\x82\xAC" "STOPaa");
    static const char *const want_all[] = {"a", "\xC3\xA9", " ", "S", "TO", "\xE2\x82\xAC", "S", "TO", "P",
                                           "a", "a"}; /* the last one comes with the finish */
    expect_chunks(&c, want_all, 11, KVRT_FINISH_LENGTH);

    /* a 4-byte character in three tokens, cut by the length limit inside the next one */
    static const int32_t emoji[] = {11, 12, 13, 2, 11, 12};
    run_script(emoji, 6, 6, NULL, 0, &c, &out, text);
    static const char *const want_emoji[] = {"\xF0\x9F\x98\x80", "a", "\xF0\x9F\x98"};
    expect_chunks(&c, want_emoji, 3, KVRT_FINISH_LENGTH); /* the incomplete tail is flushed at the end */

    /* a stop string that starts inside held text and completes two tokens later */
    static const int32_t later[] = {2, 6, 6, 7, 10, 2};
    static const char *const stop2[] = {"STOP"};
    run_script(later, 6, 6, stop2, 1, &c, &out, text);
    assert_string_equal(out.text, "aS");
    static const char *const want_later[] = {"a", "S", ""};
    expect_chunks(&c, want_later, 3, KVRT_FINISH_STOP_STRING);
}

static void test_sampling_matches_standalone_sampler(void **state)
{
    (void)state;
    script_runner r = {0};
    kvrt_engine *e = script_engine(&r, &script_ops);
    int32_t prompt[NPROMPT] = {3, 5};
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = NPROMPT;
    rp.max_tokens = 24;
    rp.n = 3;
    rp.temperature = 0.9f;
    rp.top_k = 10;
    rp.top_p = 0.9f;
    rp.min_p = 0.05f;
    rp.repeat_penalty = 1.6f;
    rp.repeat_last_n = 6;
    rp.seed = 1234;
    rp.logprobs = 1;
    int64_t id = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    while (kvrt_engine_has_work(e))
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    int distinct = 0;
    for (int32_t i = 0; i < 3; i++) {
        kvrt_sampler_params sp = kvrt_sampler_default_params();
        sp.temperature = rp.temperature;
        sp.top_k = rp.top_k;
        sp.top_p = rp.top_p;
        sp.min_p = rp.min_p;
        sp.repeat_penalty = rp.repeat_penalty;
        sp.repeat_last_n = rp.repeat_last_n;
        sp.seed = kvrt_engine_seed(rp.seed, i);
        kvrt_sampler *smp = NULL;
        assert_int_equal(kvrt_sampler_create(&sp, NV, NULL, &smp, NULL), KVRT_OK);
        kvrt_sampler_accept(smp, prompt[0]);
        kvrt_sampler_accept(smp, prompt[1]);
        assert_int_equal(out.samples[i].n_tokens, 24);
        for (int32_t t = 0; t < 24; t++) {
            float logits[NV];
            script_logits(&r, NPROMPT + t, logits);
            int32_t tok = -1;
            assert_int_equal(kvrt_sampler_sample(smp, logits, &tok), KVRT_OK);
            assert_int_equal(out.samples[i].tokens[t], tok);
            double mx = logits[0], sum = 0.0;
            for (int v = 1; v < NV; v++)
                mx = fmax(mx, logits[v]);
            for (int v = 0; v < NV; v++)
                sum += exp(logits[v] - mx);
            assert_float_equal(out.samples[i].logprobs[t], logits[tok] - mx - log(sum), 1e-5);
        }
        kvrt_sampler_destroy(smp);
        distinct += i > 0 && memcmp(out.samples[0].tokens, out.samples[i].tokens, 24 * sizeof(int32_t)) != 0;
    }
    assert_true(distinct > 0);
    kvrt_engine_destroy(e);
}

/* Steps until no work is left, at most `limit` steps (a retry loop fails the
 * test instead of hanging it); returns the steps that reported an error. */
static int run_bounded(kvrt_engine *e, int limit)
{
    int errors = 0, steps = 0;
    while (kvrt_engine_has_work(e)) {
        if (++steps > limit)
            fail_msg("still working after %d steps (a retry loop?)", limit);
        errors += kvrt_engine_step(e, NULL) != KVRT_OK;
    }
    return errors;
}

typedef struct long_text {
    char *text;
    size_t len;
} long_text;

static void on_long_text(void *user, int64_t id, int32_t sample, const char *text, size_t len,
                         kvrt_finish_reason fin)
{
    (void)id, (void)sample, (void)fin;
    long_text *t = user;
    t->text = realloc(t->text, t->len + len + 1);
    memcpy(t->text + t->len, text, len);
    t->len += len;
    t->text[t->len] = '\0';
}

static void test_long_token_text(void **state)
{
    (void)state;
    static const int32_t script[] = {2, 15, 14, 15};
    script_runner r = {.script = script, .n_script = 4, .long_len = 1000};
    kvrt_engine *e = script_engine(&r, &script_ops);
    int32_t prompt[NPROMPT] = {1, 1};
    long_text streamed = {0};
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = NPROMPT;
    rp.max_tokens = 4;
    rp.on_text = on_long_text;
    rp.user = &streamed;
    int64_t id = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    assert_int_equal(run_bounded(e, 50), 0);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_int_equal(out.samples[0].finish_reason, KVRT_FINISH_LENGTH);
    assert_int_equal(out.samples[0].n_tokens, 4);
    assert_int_equal((int)out.samples[0].text_len, 2 + 2 * 1000);
    const char *t = out.samples[0].text;
    assert_int_equal(t[0], 'a');
    for (int i = 1; i <= 1000; i++)
        assert_int_equal(t[i], 'L');
    assert_int_equal(t[1001], 'b');
    assert_int_equal((int)streamed.len, 2002);
    assert_memory_equal(streamed.text, t, 2002);
    free(streamed.text);
    kvrt_engine_destroy(e);
}

typedef struct token_log {
    int32_t last_token;
    kvrt_finish_reason last_fin;
    int calls;
} token_log;

static void on_token_log(void *user, int64_t id, int32_t sample, int32_t token, kvrt_finish_reason fin)
{
    (void)id, (void)sample;
    token_log *l = user;
    l->last_token = token;
    l->last_fin = fin;
    l->calls++;
}

static void test_repeating_error_finishes_the_request(void **state)
{
    (void)state;
    static const int32_t script[] = {2, 14, 7, 2};
    script_runner r = {.script = script, .n_script = 4, .bad_token = 7};
    kvrt_engine *e = script_engine(&r, &script_ops);
    int32_t prompt[NPROMPT] = {1, 1};
    token_log log = {0};
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = NPROMPT;
    rp.max_tokens = 8;
    rp.on_token = on_token_log;
    rp.user = &log;
    int64_t id = 0, other = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    rp.on_token = NULL;
    /* a request beside it that never reaches the bad token goes on unharmed */
    rp.max_tokens = 2;
    assert_int_equal(kvrt_engine_submit(e, &rp, &other), KVRT_OK);
    int errors = run_bounded(e, 50);
    assert_int_equal(errors, 2); /* the failure, then the same failure again: given up */
    assert_int_equal(r.text_calls, 2);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_true(out.finished);
    assert_int_equal(out.samples[0].finish_reason, KVRT_FINISH_ERROR);
    assert_int_equal(out.samples[0].error, KVRT_ERR_BAD_TOKEN);
    assert_string_equal(kvrt_finish_reason_name(KVRT_FINISH_ERROR), "error");
    assert_int_equal(out.samples[0].n_tokens, 2); /* a, b: the bad token is not kept */
    assert_string_equal(out.samples[0].text, "ab");
    assert_int_equal(log.last_token, -1);
    assert_int_equal(log.last_fin, KVRT_FINISH_ERROR);
    assert_int_equal(kvrt_engine_get_output(e, other, &out), KVRT_OK);
    assert_int_equal(out.samples[0].finish_reason, KVRT_FINISH_LENGTH);
    assert_int_equal(out.samples[0].error, KVRT_OK);
    kvrt_engine_destroy(e);
}

/* A tokenizer that spells every space as three byte tokens (a vocabulary
 * without U+2581): ids 5, 5, 5 per space, 2 per other byte; BOS 1. */
static kvrt_status sr_tokenize(void *self, const char *text, size_t len, int add_bos, int32_t *ids, int32_t cap,
                               int32_t *n, kvrt_error *err)
{
    (void)self;
    int32_t k = 0;
    if (add_bos) {
        if (k < cap)
            ids[k] = 1;
        k++;
    }
    for (size_t i = 0; i < len; i++)
        for (int j = 0; j < (text[i] == ' ' ? 3 : 1); j++) {
            if (k < cap)
                ids[k] = text[i] == ' ' ? 5 : 2;
            k++;
        }
    *n = k;
    return k > cap ? kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "%d ids do not fit in %d", (int)k, (int)cap) : KVRT_OK;
}

static void test_text_prompt_sized_by_the_tokenizer(void **state)
{
    (void)state;
    static const kvrt_runner_ops ops = {.forward = sr_forward, .copy_blocks = sr_copy, .token_text = sr_token_text,
                                        .tokenize = sr_tokenize};
    script_runner r = {0};
    kvrt_engine *e = script_engine(&r, &ops);
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt_text = "a b c d e f g h"; /* 15 bytes, 29 ids with BOS: more than 15 + 4 */
    rp.max_tokens = 1;
    int64_t id = 0;
    if (kvrt_engine_submit(e, &rp, &id) != KVRT_OK)
        fail_msg("submit: %s", kvrt_engine_message(e));
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_int_equal(out.n_prompt, 1 + 8 + 7 * 3);
    assert_int_equal(run_bounded(e, 20), 0);
    kvrt_engine_destroy(e);
}

static void test_text_needs_a_tokenizer(void **state)
{
    (void)state;
    script_runner r = {0};
    kvrt_engine *e = script_engine(&r, &bare_ops);
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt_text = "hello";
    int64_t id = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_engine_message(e), "tokenizer"));
    int32_t prompt[1] = {2};
    const char *stops[] = {"a"};
    rp.prompt = prompt;
    rp.n_prompt = 1;
    rp.stop_strings = stops;
    rp.n_stop_strings = 1;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_engine_message(e), "tokenizer"));
    rp.n_stop_strings = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    while (kvrt_engine_has_work(e))
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_int_equal(out.samples[0].n_tokens, 16);
    assert_int_equal((int)out.samples[0].text_len, 0); /* no tokenizer, no text */
    assert_string_equal(out.samples[0].text, "");
    assert_null(out.samples[0].logprobs);
    kvrt_engine_destroy(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_string_across_tokens_and_utf8),
        cmocka_unit_test(test_sampling_matches_standalone_sampler),
        cmocka_unit_test(test_text_needs_a_tokenizer),
        cmocka_unit_test(test_long_token_text),
        cmocka_unit_test(test_repeating_error_finishes_the_request),
        cmocka_unit_test(test_text_prompt_sized_by_the_tokenizer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
