/* Context shift as an engine option (issue 18): on every backend a sample
 * of stories260K runs 89 positions (prompt 25 + 64 generated) in a context
 * of 32 (test_context_shift: 10x on a session) and its greedy tokens
 * equal the session's context shift (same sinks, same drops, same kernel);
 * two forked samples share their prompt's blocks, so their shifts copy the
 * shared block before turning it, and a later request served from the
 * prefix cache still gets the unturned bytes (its tokens equal the first's).
 * A sample with blocks in the offload host tier (Vulkan, OpenCL) shifts by
 * recomputing its kept tokens. Bad input: sinks that leave no block to
 * drop, quantized keys on a GPU backend. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/engine_internal.h"
#include "kv/block_manager_internal.h"
#include "kvrt.h"
#include "model/synth.h"
#include "test_models.h"
#include "test_passes.h"

enum { CTX = 32, BS = 8, SINKS = 4, N_PROMPT = 25, N_GEN = 2 * CTX, VOCAB = 512 };

static kvrt_model *load_stories(kvrt_context *ctx, const char *pass)
{
    char path[512];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_model *m = NULL;
    kvrt_error err;
    if (kvrt_model_load(ctx, &mp, &m, &err) != KVRT_OK)
        fail_msg("%s: %s", pass, err.message);
    return m;
}

/* The prompt: BOS and 24 more ids, three whole blocks of 8 and one token (the
 * prefix lookup of len - 1 tokens reaches block 2, which shifts turn). */
static void make_prompt(int32_t *p)
{
    p[0] = 1;
    for (int32_t i = 1; i < N_PROMPT; i++)
        p[i] = (i * 37 + 11) % 500 + 2;
}

/* Greedy tokens of a session with context shift over the same prompt. */
static void session_tokens(kvrt_model *m, const int32_t *prompt, int32_t *out, int32_t *n_shifts)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = CTX;
    sp.block_size = BS;
    sp.context_shift = 1;
    sp.n_sinks = SINKS;
    kvrt_session *s = NULL;
    kvrt_error err;
    if (kvrt_session_create(m, &sp, &s, &err) != KVRT_OK)
        fail_msg("session: %s", err.message);
    float *logits = malloc(VOCAB * sizeof(float));
    assert_non_null(logits);
    assert_int_equal(kvrt_session_eval(s, prompt, N_PROMPT, logits, NULL), KVRT_OK);
    for (int32_t i = 0; i < N_GEN; i++) {
        int32_t best = 0;
        for (int32_t v = 1; v < VOCAB; v++)
            if (logits[v] > logits[best])
                best = v;
        out[i] = best;
        if (i + 1 < N_GEN && kvrt_session_eval(s, &best, 1, logits, NULL) != KVRT_OK)
            fail_msg("session: %s", kvrt_session_message(s));
    }
    kvrt_session_stats ss;
    kvrt_session_get_stats(s, &ss);
    *n_shifts = ss.n_shifts;
    free(logits);
    kvrt_session_destroy(s);
}

static kvrt_engine_params shift_params(void)
{
    kvrt_engine_params ep = kvrt_engine_default_params();
    ep.max_context = CTX;
    ep.block_size = BS;
    ep.num_blocks = 24; /* four samples of four blocks never preempt */
    ep.context_shift = 1;
    ep.n_sinks = SINKS;
    return ep;
}

static int64_t submit(kvrt_engine *e, const int32_t *prompt, int32_t n)
{
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = N_PROMPT;
    rp.max_tokens = N_GEN;
    rp.ignore_eos = 1;
    rp.n = n;
    int64_t id = 0;
    if (kvrt_engine_submit(e, &rp, &id) != KVRT_OK)
        fail_msg("submit: %s", kvrt_engine_message(e));
    return id;
}

static void expect_tokens(kvrt_engine *e, int64_t id, const int32_t *want, const char *pass, const char *what)
{
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_true(out.finished);
    for (int32_t k = 0; k < out.n_samples; k++) {
        assert_int_equal(out.samples[k].finish_reason, KVRT_FINISH_LENGTH);
        assert_int_equal(out.samples[k].n_tokens, N_GEN);
        for (int32_t t = 0; t < N_GEN; t++)
            if (out.samples[k].tokens[t] != want[t])
                fail_msg("%s %s sample %d: token %d is %d, the session's %d", pass, what, (int)k, (int)t,
                         (int)out.samples[k].tokens[t], (int)want[t]);
    }
}

static int skip_pass(int p)
{
    /* once per backend: cpu/2 computes cpu/1's bits; vulkan/none runs vulkan's kernels */
    return kvrt_test_pass_list[p].same_bits_as >= 0 || strcmp(kvrt_test_pass_list[p].name, "vulkan/none") == 0;
}

/* Runs steps until the engine has done `n` (all when n < 0), checking the
 * block manager's invariants after each. */
static void run_steps(kvrt_engine *e, const char *pass, int n)
{
    char msg[256];
    for (int i = 0; (n < 0 || i < n) && kvrt_engine_has_work(e); i++) {
        if (kvrt_engine_step(e, NULL) != KVRT_OK)
            fail_msg("%s: step: %s", pass, kvrt_engine_message(e));
        if (kvrt_bm_check_invariants(e->bm, msg, sizeof(msg)) != KVRT_OK)
            fail_msg("%s: %s", pass, msg);
    }
}

/* Three requests of the same prompt side by side (CI time: one pass of
 * steps): A alone first, so its prompt blocks are cached; B (two forked
 * samples) then shares blocks 0-2 with A and the cache, so the shifts that
 * keep block 2 copy it before turning it, and the last holder turns it in
 * place after taking it out of the cache; C comes once every first shift is
 * done, finds blocks 0 and 1 in the cache but not the turned block 2. Every
 * sample gives the session's tokens, shift for shift. */
static void test_engine_equals_session(void **state)
{
    (void)state;
    int32_t prompt[N_PROMPT], want[N_GEN];
    make_prompt(prompt);
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        if (skip_pass(p))
            continue;
        const char *pass = kvrt_test_pass_list[p].name;
        kvrt_model *m = load_stories(kvrt_test_pass_list[p].ctx, pass);
        int32_t sess_shifts = 0;
        session_tokens(m, prompt, want, &sess_shifts);
        assert_true(sess_shifts >= 3);
        kvrt_engine_params ep = shift_params();
        kvrt_engine *e = NULL;
        kvrt_error err;
        if (kvrt_engine_create(m, &ep, &e, &err) != KVRT_OK)
            fail_msg("%s: %s", pass, err.message);
        int64_t a = submit(e, prompt, 1);
        run_steps(e, pass, 1); /* A's prompt is computed and cached */
        int64_t b = submit(e, prompt, 2);
        run_steps(e, pass, CTX); /* every sample has shifted once */
        kvrt_engine_metrics m0;
        assert_int_equal(kvrt_engine_get_metrics(e, &m0), KVRT_OK);
        assert_true(m0.context_shifts >= 3);
        assert_true(m0.cow_copies >= 2); /* block 2 copied by the first two shifts that kept it */
        assert_true(m0.prefix_hit_tokens >= 3 * BS);
        int64_t c = submit(e, prompt, 1);
        run_steps(e, pass, -1);
        expect_tokens(e, a, want, pass, "alone");
        expect_tokens(e, b, want, pass, "forked");
        expect_tokens(e, c, want, pass, "cached");
        kvrt_engine_metrics m1;
        assert_int_equal(kvrt_engine_get_metrics(e, &m1), KVRT_OK);
        assert_int_equal(m1.context_shifts, 4 * sess_shifts);
        assert_int_equal(m1.prefix_hit_tokens, m0.prefix_hit_tokens + 2 * BS); /* block 2 left the cache */
        assert_int_equal(m1.blocks_used, 0);
        fprintf(stderr, "%-12s %d tokens in a context of %d: %lld shifts, %lld dropped, %lld copies\n", pass,
                (int)N_GEN, CTX, (long long)m1.context_shifts, (long long)m1.shift_dropped_tokens,
                (long long)m1.cow_copies);
        kvrt_engine_destroy(e);
        kvrt_model_destroy(m);
    }
}

/* An allocator that records the largest single request. */
static void *largest_alloc(void *user, size_t size, size_t alignment)
{
    size_t *largest = user;
    if (size > *largest)
        *largest = size;
    void *p = NULL;
    return posix_memalign(&p, alignment < sizeof(void *) ? sizeof(void *) : alignment, size) == 0 ? p : NULL;
}

static void largest_free(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

/* With context shift a request may ask for ~2^30 tokens (kvrt-server takes
 * max_tokens up to INT32_MAX / 2): its samples' token and logprob arrays
 * grow as they fill instead of being allocated for max_tokens up front
 * (n = 4 with logprobs would have been 32 GiB). CPU only: host memory. */
static void test_huge_max_tokens(void **state)
{
    (void)state;
    int32_t prompt[N_PROMPT];
    make_prompt(prompt);
    kvrt_model *m = load_stories(kvrt_test_pass_list[0].ctx, kvrt_test_pass_list[0].name);
    size_t largest = 0;
    kvrt_allocator a = {largest_alloc, largest_free, &largest};
    kvrt_engine_params ep = shift_params();
    ep.allocator = &a;
    kvrt_engine *e = NULL;
    kvrt_error err;
    if (kvrt_engine_create(m, &ep, &e, &err) != KVRT_OK)
        fail_msg("%s", err.message);
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = N_PROMPT;
    rp.max_tokens = INT32_MAX / 2;
    rp.ignore_eos = 1;
    rp.n = 4;
    rp.logprobs = 1;
    int64_t id = 0;
    if (kvrt_engine_submit(e, &rp, &id) != KVRT_OK)
        fail_msg("submit: %s", kvrt_engine_message(e));
    run_steps(e, "cpu", 3 * CTX); /* past several shifts and array doublings */
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_false(out.finished);
    for (int32_t k = 0; k < out.n_samples; k++)
        assert_true(out.samples[k].n_tokens >= 2 * CTX);
    assert_true(largest < (size_t)64 << 20);
    assert_int_equal(kvrt_engine_cancel(e, id), KVRT_OK);
    run_steps(e, "cpu", -1);
    kvrt_engine_destroy(e);
    kvrt_model_destroy(m);
}

/* Offload (one GPU pass, OpenCL first: the scheduler's path is the same on
 * each, and test_engine_offload runs the tiers on both): the device pool
 * holds 5 blocks, so two samples move their oldest blocks to the host; one
 * that must shift with blocks there is recomputed over its kept tokens.
 * Every sample reaches max_tokens and every block comes back. */
static int gpu_pass(void)
{
    int found = -1;
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        kvrt_backend_kind k = kvrt_context_backend(kvrt_test_pass_list[p].ctx);
        if (k == KVRT_BACKEND_OPENCL)
            return p;
        if (k != KVRT_BACKEND_CPU && found < 0)
            found = p;
    }
    return found;
}

static void test_shift_with_host_tier(void **state)
{
    (void)state;
    int32_t prompt[N_PROMPT];
    make_prompt(prompt);
    int ran = 0;
    for (int p = gpu_pass(); p >= 0; p = -1) {
        const char *pass = kvrt_test_pass_list[p].name;
        kvrt_model *m = load_stories(kvrt_test_pass_list[p].ctx, pass);
        kvrt_engine_params ep = shift_params();
        ep.num_blocks = 5;
        ep.enable_prefix_cache = 0;
        ep.preempt_mode = KVRT_PREEMPT_OFFLOAD;
        ep.num_host_blocks = 8;
        kvrt_engine *e = NULL;
        kvrt_error err;
        if (kvrt_engine_create(m, &ep, &e, &err) != KVRT_OK)
            fail_msg("%s: %s", pass, err.message);
        int64_t id = submit(e, prompt, 2);
        run_steps(e, pass, -1);
        kvrt_request_output out;
        assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
        for (int32_t k = 0; k < out.n_samples; k++) {
            assert_int_equal(out.samples[k].finish_reason, KVRT_FINISH_LENGTH);
            assert_int_equal(out.samples[k].n_tokens, N_GEN);
        }
        kvrt_engine_metrics mt;
        assert_int_equal(kvrt_engine_get_metrics(e, &mt), KVRT_OK);
        fprintf(stderr, "%-12s offload: %lld blocks offloaded, %lld shifts, %lld recomputed\n", pass,
                (long long)mt.blocks_offloaded, (long long)mt.context_shifts, (long long)mt.preemptions_recompute);
        assert_true(mt.blocks_offloaded > 0);
        assert_true(mt.context_shifts >= 2 * 3);
        assert_int_equal(mt.blocks_used, 0);
        assert_int_equal(mt.host_blocks_used, 0);
        kvrt_engine_destroy(e);
        kvrt_model_destroy(m);
        ran++;
    }
    if (ran == 0)
        fprintf(stderr, "no GPU backend in this build: the host tier is the CPU pool itself\n");
}

static void test_bad_input(void **state)
{
    (void)state;
    kvrt_model *m = load_stories(kvrt_test_pass_list[0].ctx, kvrt_test_pass_list[0].name);
    const struct {
        int32_t sinks;
        kvrt_status want;
    } rows[] = {{32, KVRT_ERR_INVALID_ARGUMENT}, {25, KVRT_ERR_INVALID_ARGUMENT}, /* 32 in whole blocks of 8 */
                {-1, KVRT_ERR_INVALID_ARGUMENT}, {24, KVRT_OK}, {0, KVRT_OK}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        kvrt_engine_params ep = shift_params();
        ep.n_sinks = rows[i].sinks;
        kvrt_engine *e = NULL;
        kvrt_error err = {0};
        assert_int_equal(kvrt_engine_create(m, &ep, &e, &err), rows[i].want);
        if (rows[i].want != KVRT_OK) {
            assert_null(e);
            assert_non_null(strstr(err.message, "sink"));
        }
        kvrt_engine_destroy(e);
    }
    kvrt_model_destroy(m);
    /* GPU backends turn f32 and f16 keys only: quantized keys are refused by
     * name (a synthetic model whose head_dim of 32 q8_0 can group) */
    char path[64];
    snprintf(path, sizeof(path), "/tmp/kvrt_test_engine_shift_%d.gguf", (int)getpid());
    kvrt_synth_params sy;
    kvrt_synth_preset("tiny", &sy);
    sy.hp.n_embd = 64;
    sy.hp.n_head = 2;
    sy.hp.n_head_kv = 2;
    sy.hp.n_layer = 1;
    sy.hp.n_ctx_train = 64;
    kvrt_error serr;
    if (kvrt_synth_write_file(&sy, NULL, path, NULL, &serr) != KVRT_OK)
        fail_msg("synth: %s", serr.message);
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        if (skip_pass(p) || kvrt_context_backend(kvrt_test_pass_list[p].ctx) == KVRT_BACKEND_CPU)
            continue;
        kvrt_model_params mp = kvrt_model_default_params();
        mp.path = path;
        assert_int_equal(kvrt_model_load(kvrt_test_pass_list[p].ctx, &mp, &m, NULL), KVRT_OK);
        kvrt_engine_params ep = shift_params();
        ep.kv_type = KVRT_DTYPE_Q8_0;
        kvrt_engine *e = NULL;
        kvrt_error err = {0};
        kvrt_status st = kvrt_engine_create(m, &ep, &e, &err);
        fprintf(stderr, "%s: %s\n", kvrt_test_pass_list[p].name, err.message);
        assert_int_equal(st, KVRT_ERR_UNSUPPORTED);
        assert_null(e);
        assert_non_null(strstr(err.message, "q8_0"));
        kvrt_model_destroy(m);
    }
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_engine_equals_session),
        cmocka_unit_test(test_shift_with_host_tier),
        cmocka_unit_test(test_huge_max_tokens),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, kvrt_test_passes_setup, kvrt_test_passes_teardown);
}
