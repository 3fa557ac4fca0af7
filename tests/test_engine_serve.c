/* The engine on the real model (stories260K, F32 weights), CPU and OpenCL:
 * - batch invariance: greedy tokens of 32 requests run together (chunked
 *   prefill, mixed steps, preemption forced by a small pool, prefix hits from
 *   a shared prompt prefix, n = 4 forks) equal those of each prompt alone in a
 *   kvrt_session (F32 KV; F16 KV against an F16 session);
 * - cancel mid-prefill and mid-decode returns every block;
 * - admission errors, pool sizing (num_blocks = 0), text prompts and stop
 *   strings on the model's tokenizer. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "test_drivers.h"
#include "kvrt.h"
#include "test_models.h"

typedef struct fixture {
    kvrt_context *ctx;
    kvrt_model *m;
    kvrt_model_info mi;
} fixture;

static void fixture_open(fixture *f, kvrt_backend_kind backend)
{
    kvrt_test_pin_gpu_drivers();
    kvrt_context_params cp = kvrt_context_default_params();
    cp.n_threads = 1;
    cp.backend = backend;
    kvrt_error err;
    if (kvrt_context_create(&cp, &f->ctx, &err) != KVRT_OK)
        fail_msg("%s context: %s", kvrt_backend_name(backend), err.message);
    kvrt_model_params mp = kvrt_model_default_params();
    char path[1024];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    mp.path = path;
    mp.max_context = 256;
    if (kvrt_model_load(f->ctx, &mp, &f->m, &err) != KVRT_OK)
        fail_msg("%s: %s", kvrt_backend_name(backend), err.message);
    assert_int_equal(kvrt_model_get_info(f->m, &f->mi), KVRT_OK);
}

static void fixture_close(fixture *f)
{
    kvrt_model_destroy(f->m);
    kvrt_context_destroy(f->ctx);
}

static void greedy_session(fixture *f, kvrt_dtype kv, const int32_t *p, int32_t n, int32_t gen, int32_t *out)
{
    kvrt_session *s = NULL;
    kvrt_session_params sp = kvrt_session_default_params();
    sp.kv_type = kv;
    assert_int_equal(kvrt_session_create(f->m, &sp, &s, NULL), KVRT_OK);
    float *logits = malloc(sizeof(float) * (size_t)f->mi.n_vocab);
    assert_non_null(logits);
    assert_int_equal(kvrt_session_eval(s, p, n, logits, NULL), KVRT_OK);
    for (int32_t i = 0; i < gen; i++) {
        int32_t best = 0;
        for (int32_t v = 1; v < f->mi.n_vocab; v++)
            if (logits[v] > logits[best])
                best = v;
        out[i] = best;
        if (i + 1 < gen)
            assert_int_equal(kvrt_session_eval(s, &best, 1, logits, NULL), KVRT_OK);
    }
    free(logits);
    kvrt_session_destroy(s);
}

static kvrt_engine *engine_new(fixture *f, kvrt_engine_params *ep)
{
    kvrt_engine *e = NULL;
    kvrt_error err;
    if (kvrt_engine_create(f->m, ep, &e, &err) != KVRT_OK)
        fail_msg("engine: %s", err.message);
    return e;
}

static void assert_pool_back(kvrt_engine *e)
{
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.blocks_used, 0);
    assert_int_equal(m.blocks_free, m.blocks_total);
}

/* ---- batch invariance ---------------------------------------------------------- */

enum { NREQ = 32, GEN = 24, MAXP = 160 };

/* Prompts: a shared story opening (two full blocks) for most, some distinct,
 * one longer than the step's token budget (chunked prefill). */
static void make_prompts(fixture *f, int32_t prompts[NREQ][MAXP], int32_t *lens)
{
    static const char *const shared = "Once upon a time, there was a little girl named Lily. She loved to play "
                                      "outside in the sun with her friends.";
    static const char *const tails[] = {" One day", " Her mom said", " They saw a big", " The dog",
                                        " Lily was happy", " It was a"};
    static const char *const solo[] = {"Tom had a red ball", "The cat sat", "Ben and Mia went to the park",
                                       "A bird"};
    char text[1024];
    for (int i = 0; i < NREQ; i++) {
        if (i % 8 == 7) {
            snprintf(text, sizeof text, "%s", solo[(i / 8) % 4]);
        } else if (i == 5) { /* long: several chunks */
            snprintf(text, sizeof text, "%s%s%s%s", shared, shared, shared, tails[0]);
        } else {
            snprintf(text, sizeof text, "%s%s%s", shared, tails[i % 6], i % 3 ? "" : " and");
        }
        assert_int_equal(kvrt_tokenize(f->m, text, strlen(text), 1, prompts[i], MAXP, &lens[i]), KVRT_OK);
    }
}

static void batch_invariance(kvrt_backend_kind backend, kvrt_dtype kv)
{
    fixture f;
    fixture_open(&f, backend);
    static int32_t prompts[NREQ][MAXP], ref[NREQ][GEN];
    int32_t lens[NREQ];
    make_prompts(&f, prompts, lens);
    for (int i = 0; i < NREQ; i++)
        greedy_session(&f, kv, prompts[i], lens[i], GEN, ref[i]);

    kvrt_engine_params ep = kvrt_engine_default_params();
    ep.kv_type = kv;
    ep.block_size = 16;
    ep.num_blocks = 48; /* ~4-6 blocks per sample, 44 samples: preemption */
    ep.max_batched_tokens = 48;
    ep.max_seqs = 24;
    kvrt_engine *e = engine_new(&f, &ep);
    int64_t ids[NREQ];
    for (int i = 0; i < NREQ; i++) {
        kvrt_request_params rp = kvrt_request_default_params();
        rp.prompt = prompts[i];
        rp.n_prompt = lens[i];
        rp.max_tokens = GEN;
        rp.ignore_eos = 1;
        rp.n = i % 8 == 2 ? 4 : 1;
        assert_int_equal(kvrt_engine_submit(e, &rp, &ids[i]), KVRT_OK);
    }
    int mixed = 0, chunks_at_budget = 0;
    while (kvrt_engine_has_work(e)) {
        kvrt_step_info si;
        if (kvrt_engine_step(e, &si) != KVRT_OK)
            fail_msg("step: %s", kvrt_engine_message(e));
        mixed += si.decode_tokens > 0 && si.prefill_tokens > 0;
        chunks_at_budget += si.prefill_tokens > 0 && si.num_tokens == ep.max_batched_tokens;
    }
    for (int i = 0; i < NREQ; i++) {
        kvrt_request_output out;
        assert_int_equal(kvrt_engine_get_output(e, ids[i], &out), KVRT_OK);
        assert_true(out.finished);
        assert_int_equal(out.n_samples, i % 8 == 2 ? 4 : 1);
        for (int k = 0; k < out.n_samples; k++) {
            assert_int_equal(out.samples[k].n_tokens, GEN);
            for (int t = 0; t < GEN; t++)
                if (out.samples[k].tokens[t] != ref[i][t])
                    fail_msg("%s %s: req %d sample %d token %d: %d vs alone %d", kvrt_backend_name(backend),
                             kvrt_dtype_name(kv), i, k, t, out.samples[k].tokens[t], ref[i][t]);
        }
    }
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_true(m.preemptions_recompute > 0);
    assert_true(m.prefix_hit_tokens >= 32);
    assert_true(m.cow_copies > 0 || m.preemptions_recompute > 0);
    assert_true(mixed > 0);
    assert_true(chunks_at_budget > 0);
    for (int i = 0; i < NREQ; i++)
        assert_int_equal(kvrt_engine_release(e, ids[i]), KVRT_OK);
    assert_pool_back(e);
    kvrt_engine_destroy(e);
    fixture_close(&f);
}

static void test_batch_invariance_cpu_f32(void **s)
{
    (void)s;
    batch_invariance(KVRT_BACKEND_CPU, KVRT_DTYPE_F32);
}

static void test_batch_invariance_cpu_f16(void **s)
{
    (void)s;
    batch_invariance(KVRT_BACKEND_CPU, KVRT_DTYPE_F16);
}

#if defined(KVRT_HAVE_OPENCL_BACKEND)
static void test_batch_invariance_opencl_f32(void **s)
{
    (void)s;
    batch_invariance(KVRT_BACKEND_OPENCL, KVRT_DTYPE_F32);
}

#endif
#if defined(KVRT_HAVE_VULKAN_BACKEND)
static void test_batch_invariance_vulkan_f32(void **s)
{
    (void)s;
    batch_invariance(KVRT_BACKEND_VULKAN, KVRT_DTYPE_F32);
}
#endif

/* ---- cancellation ---------------------------------------------------------------- */

static void test_cancel_returns_every_block(void **s)
{
    (void)s;
    fixture f;
    fixture_open(&f, KVRT_BACKEND_CPU);
    int32_t prompts[NREQ][MAXP], lens[NREQ];
    make_prompts(&f, prompts, lens);
    kvrt_engine_params ep = kvrt_engine_default_params();
    ep.num_blocks = 64;
    ep.max_batched_tokens = 16; /* the long prompt takes many steps */
    kvrt_engine *e = engine_new(&f, &ep);
    kvrt_engine_metrics m0;
    assert_int_equal(kvrt_engine_get_metrics(e, &m0), KVRT_OK);
    int64_t id_prefill = 0, id_decode = 0;
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompts[5]; /* the long one */
    rp.n_prompt = lens[5];
    rp.max_tokens = 40;
    rp.ignore_eos = 1;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id_prefill), KVRT_OK);
    rp.prompt = prompts[0];
    rp.n_prompt = lens[0];
    rp.n = 4;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id_decode), KVRT_OK);
    kvrt_request_output out;
    /* one step: the long prompt is part-way through its prefill */
    assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    assert_int_equal(kvrt_engine_get_output(e, id_prefill, &out), KVRT_OK);
    assert_int_equal(out.samples[0].n_tokens, 0);
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_true(m.blocks_used > 0);
    assert_int_equal(kvrt_engine_cancel(e, id_prefill), KVRT_OK);
    /* the other decodes a few tokens (forked), then is cancelled */
    for (int i = 0; i < 40; i++) {
        assert_int_equal(kvrt_engine_get_output(e, id_decode, &out), KVRT_OK);
        if (out.samples[3].n_tokens >= 3)
            break;
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    }
    assert_true(out.samples[3].n_tokens >= 3 && !out.finished);
    assert_int_equal(kvrt_engine_cancel(e, id_decode), KVRT_OK);
    assert_int_equal(kvrt_engine_get_output(e, id_decode, &out), KVRT_OK);
    for (int k = 0; k < 4; k++)
        assert_int_equal(out.samples[k].finish_reason, KVRT_FINISH_CANCELLED);
    assert_false(kvrt_engine_has_work(e));
    assert_pool_back(e);
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.blocks_total, m0.blocks_total);
    assert_int_equal(m.requests_cancelled, 2);
    assert_int_equal(kvrt_engine_release(e, id_prefill), KVRT_OK);
    assert_int_equal(kvrt_engine_release(e, id_decode), KVRT_OK);
    kvrt_engine_destroy(e);
    fixture_close(&f);
}

/* ---- admission and parameters ------------------------------------------------------ */

static void test_admission_errors_and_pool_sizing(void **s)
{
    (void)s;
    fixture f;
    fixture_open(&f, KVRT_BACKEND_CPU);
    kvrt_engine_params ep = kvrt_engine_default_params();
    kvrt_engine *e = NULL;
    kvrt_error err;
    ep.kv_type = KVRT_DTYPE_Q8_0;
    assert_int_equal(kvrt_engine_create(f.m, &ep, &e, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "KV type"));
    ep = kvrt_engine_default_params();
    ep.block_size = 12;
    assert_int_equal(kvrt_engine_create(f.m, &ep, &e, &err), KVRT_ERR_INVALID_ARGUMENT);
    ep = kvrt_engine_default_params();
    ep.max_context = 1000; /* beyond the model's 256 */
    assert_int_equal(kvrt_engine_create(f.m, &ep, &e, &err), KVRT_ERR_INVALID_ARGUMENT);

    /* num_blocks = 0: max_seqs full contexts (far below the default KV budget here) */
    ep = kvrt_engine_default_params();
    ep.max_seqs = 8;
    ep.kv_type = KVRT_DTYPE_F16;
    e = engine_new(&f, &ep);
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.blocks_total, 8 * (256 / 16));
    uint64_t per_block = 2ull * (uint64_t)f.mi.n_layer * 16u * (uint64_t)f.mi.n_head_kv * (uint64_t)f.mi.head_dim * 2u;
    assert_true(m.kv_bytes == (uint64_t)m.blocks_total * per_block);
    kvrt_engine_destroy(e);

    ep = kvrt_engine_default_params();
    ep.num_blocks = 4; /* 64 positions */
    e = engine_new(&f, &ep);
    int32_t prompt[300];
    for (int i = 0; i < 300; i++)
        prompt[i] = 1 + i % 100;
    kvrt_request_params rp = kvrt_request_default_params();
    int64_t id = 0;
    rp.prompt = prompt;
    rp.n_prompt = 257;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_REQUEST_REJECTED);
    assert_non_null(strstr(kvrt_engine_message(e), "longer than the context"));
    rp.n_prompt = 40;
    rp.max_tokens = 40; /* 79 positions > 64 */
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_REQUEST_REJECTED);
    assert_non_null(strstr(kvrt_engine_message(e), "KV blocks"));
    rp.max_tokens = 8;
    prompt[3] = f.mi.n_vocab;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_INVALID_ARGUMENT);
    prompt[3] = 5;
    rp.repeat_penalty = 0.0f;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_INVALID_ARGUMENT);
    rp.repeat_penalty = 1.1f;
    const char *bad_stops[] = {"ok", ""};
    rp.stop_strings = bad_stops;
    rp.n_stop_strings = 2;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_INVALID_ARGUMENT);
    rp.n_stop_strings = 1;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    assert_true(id > 0);
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.requests_rejected, 2);
    assert_int_equal(m.requests_submitted, 1);
    while (kvrt_engine_has_work(e))
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    assert_pool_back(e);
    kvrt_engine_destroy(e);
    fixture_close(&f);
}

/* ---- text prompts and stop strings ---------------------------------------------------- */

typedef struct text_sink {
    char buf[4096];
    size_t len;
    int calls, finals;
    kvrt_finish_reason last;
} text_sink;

static void on_text(void *user, int64_t id, int32_t sample, const char *text, size_t len, kvrt_finish_reason fin)
{
    (void)id;
    (void)sample;
    text_sink *t = user;
    assert_true(t->len + len < sizeof t->buf);
    memcpy(t->buf + t->len, text, len);
    t->len += len;
    t->calls++;
    t->finals += fin != KVRT_FINISH_NONE;
    t->last = fin;
}

static void generate_text(fixture *f, const char *const *stops, int32_t n_stops, text_sink *sink,
                          kvrt_request_output *out, kvrt_engine **ep_out)
{
    kvrt_engine_params ep = kvrt_engine_default_params();
    ep.num_blocks = 32;
    kvrt_engine *e = engine_new(f, &ep);
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt_text = "Once upon a time";
    rp.max_tokens = 60;
    rp.ignore_eos = 1;
    rp.stop_strings = stops;
    rp.n_stop_strings = n_stops;
    rp.on_text = on_text;
    rp.user = sink;
    rp.logprobs = 1;
    int64_t id = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    while (kvrt_engine_has_work(e))
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    assert_int_equal(kvrt_engine_get_output(e, id, out), KVRT_OK);
    *ep_out = e;
}

/* A context with a memory budget: the KV pool gets what the weights and the
 * activations leave (DESIGN.md), and a budget too small for one context is a
 * clear OUT_OF_DEVICE_MEMORY. */
static void test_pool_from_memory_budget(void **s)
{
    (void)s;
    kvrt_context_params cp = kvrt_context_default_params();
    cp.n_threads = 1;
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/stories260K.gguf", KVRT_SOURCE_DIR);
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    uint64_t budgets[2] = {64ull << 20, 16ull << 20};
    uint64_t kv_bytes[2] = {0, 0}, block_bytes = 0;
    for (int b = 0; b < 2; b++) {
        cp.memory_budget = budgets[b];
        kvrt_context *ctx = NULL;
        kvrt_model *m = NULL;
        assert_int_equal(kvrt_context_create(&cp, &ctx, NULL), KVRT_OK);
        assert_int_equal(kvrt_model_load(ctx, &mp, &m, NULL), KVRT_OK);
        kvrt_engine_params ep = kvrt_engine_default_params();
        kvrt_engine *e = NULL;
        assert_int_equal(kvrt_engine_create(m, &ep, &e, NULL), KVRT_OK);
        kvrt_engine_metrics met;
        assert_int_equal(kvrt_engine_get_metrics(e, &met), KVRT_OK);
        kv_bytes[b] = met.kv_bytes;
        block_bytes = met.kv_bytes / (uint64_t)met.blocks_total;
        assert_true(met.kv_bytes < budgets[b]);
        kvrt_engine_destroy(e);
        kvrt_model_destroy(m);
        kvrt_context_destroy(ctx);
    }
    /* the larger budget's extra memory all went to the KV cache (to within a block) */
    assert_true(kv_bytes[0] - kv_bytes[1] + block_bytes >= budgets[0] - budgets[1]);
    assert_true(kv_bytes[0] - kv_bytes[1] <= budgets[0] - budgets[1] + block_bytes);

    cp.memory_budget = 600u << 10; /* less than the weights (1.2 MB) */
    mp.max_context = 64;           /* (a context whose own KV cache and RoPE table fit it) */
    kvrt_context *ctx = NULL;
    kvrt_model *m = NULL;
    assert_int_equal(kvrt_context_create(&cp, &ctx, NULL), KVRT_OK);
    assert_int_equal(kvrt_model_load(ctx, &mp, &m, NULL), KVRT_OK);
    kvrt_engine_params ep = kvrt_engine_default_params();
    kvrt_engine *e = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_engine_create(m, &ep, &e, &err), KVRT_ERR_OUT_OF_DEVICE_MEMORY);
    assert_null(e);
    assert_non_null(strstr(err.message, "memory budget"));
    kvrt_model_destroy(m);
    kvrt_context_destroy(ctx);
}

static void test_text_prompt_and_stop_strings(void **s)
{
    (void)s;
    fixture f;
    fixture_open(&f, KVRT_BACKEND_CPU);
    /* the whole text first, no stop strings */
    text_sink full;
    memset(&full, 0, sizeof full);
    kvrt_request_output out;
    kvrt_engine *e = NULL;
    generate_text(&f, NULL, 0, &full, &out, &e);
    assert_int_equal(out.samples[0].n_tokens, 60);
    assert_int_equal(out.samples[0].finish_reason, KVRT_FINISH_LENGTH);
    assert_int_equal(full.finals, 1);
    assert_int_equal((int)full.len, (int)out.samples[0].text_len);
    assert_memory_equal(full.buf, out.samples[0].text, full.len);
    /* the text is the tokens' pieces, one after the other */
    char joined[4096];
    size_t jl = 0;
    int32_t prompt[16], np = 0;
    assert_int_equal(kvrt_tokenize(f.m, "Once upon a time", 16, 1, prompt, 16, &np), KVRT_OK);
    int32_t prev = prompt[np - 1];
    size_t boundary[64];
    for (int i = 0; i < out.samples[0].n_tokens; i++) {
        size_t l = 0;
        assert_int_equal(kvrt_token_to_text(f.m, prev, out.samples[0].tokens[i], joined + jl, sizeof joined - jl, &l),
                         KVRT_OK);
        jl += l;
        boundary[i] = jl;
        prev = out.samples[0].tokens[i];
        assert_true(out.samples[0].logprobs[i] <= 0.0f && out.samples[0].logprobs[i] > -30.0f);
    }
    assert_int_equal((int)jl, (int)full.len);
    assert_memory_equal(joined, full.buf, jl);
    /* a stop string straddling a token boundary (2 bytes each side), first seen there */
    joined[jl] = '\0';
    char stop[8];
    int at = -1;
    for (int i = 5; i < 59 && at < 0; i++) {
        if (boundary[i - 1] - boundary[i - 2] < 2 || boundary[i] - boundary[i - 1] < 2)
            continue;
        memcpy(stop, joined + boundary[i - 1] - 2, 4);
        stop[4] = '\0';
        if (strstr(joined, stop) == joined + boundary[i - 1] - 2)
            at = i;
    }
    assert_true(at > 0);
    size_t expect = boundary[at - 1] - 2;
    char full_text[4096];
    memcpy(full_text, joined, jl);
    kvrt_engine_destroy(e);

    text_sink cut;
    memset(&cut, 0, sizeof cut);
    const char *stops[] = {"no such text anywhere", stop};
    generate_text(&f, stops, 2, &cut, &out, &e);
    assert_int_equal(out.samples[0].finish_reason, KVRT_FINISH_STOP_STRING);
    assert_int_equal((int)out.samples[0].text_len, (int)expect);
    assert_memory_equal(out.samples[0].text, full_text, expect);
    assert_int_equal((int)cut.len, (int)expect); /* nothing of the stop string was streamed */
    assert_memory_equal(cut.buf, full_text, expect);
    assert_int_equal(cut.finals, 1);
    assert_int_equal(cut.last, KVRT_FINISH_STOP_STRING);
    assert_int_equal(out.samples[0].n_tokens, at + 1); /* the token completing the stop string is kept */
    kvrt_engine_destroy(e);
    fixture_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_invariance_cpu_f32),
        cmocka_unit_test(test_batch_invariance_cpu_f16),
#if defined(KVRT_HAVE_OPENCL_BACKEND)
        cmocka_unit_test(test_batch_invariance_opencl_f32),
#endif
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        cmocka_unit_test(test_batch_invariance_vulkan_f32),
#endif
        cmocka_unit_test(test_cancel_returns_every_block),
        cmocka_unit_test(test_admission_errors_and_pool_sizing),
        cmocka_unit_test(test_pool_from_memory_budget),
        cmocka_unit_test(test_text_prompt_and_stop_strings),
    };
    const char *only = getenv("KVRT_TEST_FILTER"); /* e.g. "*opencl*" */
    if (only && *only)
        cmocka_set_test_filter(only);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
