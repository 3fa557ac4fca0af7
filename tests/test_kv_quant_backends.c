/* Quantized KV on every backend built in (Vulkan on lavapipe, OpenCL on PoCL
 * in CI), on a whole model: greedy tokens of each KV type and (K, V) type
 * pair are the same on the CPU, Vulkan and OpenCL. Two models: a synthetic
 * one (F32 weights, head_dim 64: two scale groups per row, GQA 4 over 2) for
 * every type, and stories260K (head_dim 8: no q8_0 / q4_0, whose groups of
 * 32 do not fit it) for the float types and pairs. The prompt is prefilled
 * in chunks on a cached prefix (the prefill kernel with a block table) and
 * the generation crosses blocks (the decode kernel). Each backend computes
 * its own K/V, so their last bits differ; the test prints, per type and
 * backend, the smallest top-2 logit gap of the CPU's run, the margin the
 * tokens had. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvrt.h"
#include "model/synth.h"
#include "test_drivers.h"
#include "test_models.h"

#define N_PROMPT 21 /* prefilled in chunks of 8: 8, 8, 5 */
#define N_GEN 40    /* greedy tokens: positions 21..60, across blocks of 16 */

typedef struct backend_run {
    kvrt_backend_kind kind;
    kvrt_context *ctx;
    kvrt_model *model;       /* the synthetic model */
    kvrt_model *stories;     /* stories260K */
} backend_run;

static backend_run RUNS[3];
static int N_RUNS;
static char PATH[256], STORIES[512];

static kvrt_model *load(backend_run *r, const char *path)
{
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_model *m;
    kvrt_error err;
    if (kvrt_model_load(r->ctx, &mp, &m, &err) != KVRT_OK)
        fail_msg("loading %s on %s: %s", path, kvrt_backend_name(r->kind), err.message);
    return m;
}

static void add_backend(kvrt_backend_kind kind)
{
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = kind;
    cp.n_threads = 2;
    backend_run *r = &RUNS[N_RUNS];
    kvrt_error err;
    /* CI has lavapipe and PoCL: a backend that is built in but cannot start fails */
    if (kvrt_context_create(&cp, &r->ctx, &err) != KVRT_OK)
        fail_msg("the %s backend is built in but cannot start: %s", kvrt_backend_name(kind), err.message);
    r->kind = kind;
    r->model = load(r, PATH);
    r->stories = load(r, STORIES);
    N_RUNS++;
}

static int setup(void **state)
{
    (void)state;
    kvrt_synth_params p;
    if (!kvrt_synth_preset("tiny-gqa", &p))
        return -1;
    p.hp.n_embd = 256; /* 4 heads of 64 over 2 KV heads */
    p.hp.n_head = 4;
    p.hp.n_head_kv = 2;
    p.hp.n_ff = 512;
    p.hp.n_layer = 2;
    p.stddev = 0.08f; /* attention that is not flat, logits that spread (as test_kv_quant_model) */
    p.seed = 11;
    snprintf(PATH, sizeof(PATH), "/tmp/kvrt-test-kvqb-%d.gguf", (int)getpid());
    kvrt_error err;
    if (kvrt_synth_write_file(&p, NULL, PATH, NULL, &err) != KVRT_OK) {
        fprintf(stderr, "synth: %s\n", err.message);
        return -1;
    }
    kvrt_test_require_model("stories260K.gguf", STORIES, sizeof(STORIES));
    kvrt_test_pin_gpu_drivers();
    add_backend(KVRT_BACKEND_CPU);
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    add_backend(KVRT_BACKEND_VULKAN);
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    add_backend(KVRT_BACKEND_OPENCL);
#endif
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_RUNS; i++) {
        kvrt_model_destroy(RUNS[i].stories);
        kvrt_model_destroy(RUNS[i].model);
        kvrt_context_destroy(RUNS[i].ctx);
    }
    remove(PATH);
    return 0;
}

/* Index of the largest of n logits; *gap = its lead over the second. */
static int32_t argmax_gap(const float *x, int32_t n, float *gap)
{
    int32_t best = 0, second = -1;
    for (int32_t v = 1; v < n; v++) {
        if (x[v] > x[best])
            second = best, best = v;
        else if (second < 0 || x[v] > x[second])
            second = v;
    }
    *gap = x[best] - x[second];
    return best;
}

static int32_t n_vocab(kvrt_model *m)
{
    kvrt_model_info info;
    kvrt_model_get_info(m, &info);
    return info.n_vocab;
}

/* Prompt in chunks of 8, then N_GEN greedy tokens with K stored as k and V
 * as v; the smallest top-2 gap seen. */
static void greedy(const backend_run *r, kvrt_model *model, kvrt_dtype k, kvrt_dtype v, const int32_t *prompt,
                   int32_t *out, float *min_gap)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = 128;
    sp.block_size = 16;
    sp.n_batch = 8;
    sp.kv_type = k;
    sp.kv_type_v_set = v != k;
    sp.kv_type_v = v;
    kvrt_session *s = NULL;
    kvrt_error err;
    if (kvrt_session_create(model, &sp, &s, &err) != KVRT_OK)
        fail_msg("session (K %s, V %s) on %s: %s", kvrt_dtype_name(k), kvrt_dtype_name(v),
                 kvrt_backend_name(r->kind), err.message);
    int32_t nv = n_vocab(model);
    float *logits = malloc((size_t)nv * sizeof(float));
    assert_non_null(logits);
    assert_int_equal(kvrt_session_eval(s, prompt, N_PROMPT, logits, NULL), KVRT_OK);
    *min_gap = INFINITY;
    for (int i = 0; i < N_GEN; i++) {
        float gap;
        out[i] = argmax_gap(logits, nv, &gap);
        *min_gap = fminf(*min_gap, gap);
        if (i + 1 < N_GEN)
            assert_int_equal(kvrt_session_eval(s, &out[i], 1, logits, NULL), KVRT_OK);
    }
    free(logits);
    kvrt_session_destroy(s);
}

/* Each (K, V) pair of types (the first: the baseline the others are counted
 * against) on every backend: the CPU's tokens on each. */
static void same_on_every_backend(bool stories, const kvrt_dtype (*pairs)[2], size_t n_pairs)
{
    int32_t nv = n_vocab(stories ? RUNS[0].stories : RUNS[0].model);
    int32_t prompt[N_PROMPT];
    uint64_t x = 4242;
    for (int i = 0; i < N_PROMPT; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        prompt[i] = 3 + (int32_t)((x >> 33) % (uint64_t)(nv - 3));
    }
    int32_t base_tokens[N_GEN];
    for (size_t t = 0; t < n_pairs; t++) {
        kvrt_dtype kt = pairs[t][0], vt = pairs[t][1];
        int32_t want[N_GEN], got[N_GEN];
        float gap;
        greedy(&RUNS[0], stories ? RUNS[0].stories : RUNS[0].model, kt, vt, prompt, want, &gap);
        int distinct = 0, differ = 0;
        for (int i = 0; i < N_GEN; i++) {
            int seen = 0;
            for (int j = 0; j < i; j++)
                seen |= want[j] == want[i];
            distinct += !seen;
            differ += t > 0 && want[i] != base_tokens[i];
        }
        if (t == 0)
            memcpy(base_tokens, want, sizeof(want));
        print_message("%s, K %s / V %s: %d distinct tokens, %d of %d differ from K %s / V %s, smallest top-2 gap "
                      "on the CPU %.3g\n", stories ? "stories260K" : "synthetic", kvrt_dtype_name(kt),
                      kvrt_dtype_name(vt), distinct, differ, N_GEN, kvrt_dtype_name(pairs[0][0]),
                      kvrt_dtype_name(pairs[0][1]), (double)gap);
        assert_true(distinct >= 8); /* a generation that is not one token repeated */
        for (int b = 1; b < N_RUNS; b++) {
            float g;
            greedy(&RUNS[b], stories ? RUNS[b].stories : RUNS[b].model, kt, vt, prompt, got, &g);
            for (int i = 0; i < N_GEN; i++)
                if (got[i] != want[i])
                    fail_msg("K %s / V %s: token %d is %d on %s, %d on the CPU", kvrt_dtype_name(kt),
                             kvrt_dtype_name(vt), i, got[i], kvrt_backend_name(RUNS[b].kind), want[i]);
        }
    }
}

static void test_greedy_same_on_every_backend(void **state)
{
    (void)state;
    static const kvrt_dtype PAIRS[][2] = {
        {KVRT_DTYPE_F32, KVRT_DTYPE_F32},   {KVRT_DTYPE_F16, KVRT_DTYPE_F16},   {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q8_0},
        {KVRT_DTYPE_Q4_0, KVRT_DTYPE_Q4_0}, {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0},
        {KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E4M3}, {KVRT_DTYPE_Q8_0, KVRT_DTYPE_FP8_E4M3},
    };
    same_on_every_backend(false, PAIRS, sizeof(PAIRS) / sizeof(PAIRS[0]));
}

/* stories260K (the golden model): the types its head_dim of 8 takes. */
static void test_stories_same_on_every_backend(void **state)
{
    (void)state;
    static const kvrt_dtype PAIRS[][2] = {
        {KVRT_DTYPE_F32, KVRT_DTYPE_F32},
        {KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E4M3},
        {KVRT_DTYPE_FP8_E5M2, KVRT_DTYPE_FP8_E5M2},
        {KVRT_DTYPE_F16, KVRT_DTYPE_FP8_E4M3},
    };
    same_on_every_backend(true, PAIRS, sizeof(PAIRS) / sizeof(PAIRS[0]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_same_on_every_backend),
        cmocka_unit_test(test_stories_same_on_every_backend),
    };
    return cmocka_run_group_tests_name("quantized KV on every backend", tests, setup, teardown);
}
