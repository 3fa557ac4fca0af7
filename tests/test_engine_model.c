/* The engine on the real model (stories260K, F32, CPU): greedy tokens of
 * several requests batched together under KV pressure (recompute and swap
 * preemption, n = 3 through fork + copy-on-write, mixed decode/prefill steps)
 * equal those of a kvrt_session running each prompt alone. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kvrt.h"
#include "test_models.h"

static void greedy_session(kvrt_model *m, int32_t n_vocab, const int32_t *p, int32_t n, int32_t gen, int32_t *out)
{
    kvrt_session *s = NULL;
    kvrt_session_params sp = kvrt_session_default_params();
    assert_int_equal(kvrt_session_create(m, &sp, &s, NULL), KVRT_OK);
    float *logits = malloc(sizeof(float) * (size_t)n_vocab);
    assert_int_equal(kvrt_session_eval(s, p, n, logits, NULL), KVRT_OK);
    for (int32_t i = 0; i < gen; i++) {
        int32_t best = 0;
        for (int32_t v = 1; v < n_vocab; v++)
            if (logits[v] > logits[best])
                best = v;
        out[i] = best;
        if (i + 1 < gen)
            assert_int_equal(kvrt_session_eval(s, &best, 1, logits, NULL), KVRT_OK);
    }
    free(logits);
    kvrt_session_destroy(s);
}

static void run(int mode)
{
    kvrt_context_params cp = kvrt_context_default_params();
    cp.n_threads = 1;
    kvrt_context *ctx = NULL;
    assert_int_equal(kvrt_context_create(&cp, &ctx, NULL), KVRT_OK);
    kvrt_model_params mp = kvrt_model_default_params();
    char path[1024];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    mp.path = path;
    mp.max_context = 256;
    kvrt_model *m = NULL;
    kvrt_error err;
    if (kvrt_model_load(ctx, &mp, &m, &err) != KVRT_OK)
        fail_msg("%s", err.message);
    kvrt_model_info mi;
    kvrt_model_get_info(m, &mi);
    const char *texts[] = {"Once upon a time", "The little dog", "Lily and Ben went to the park", "One day", "Tom had a red ball and"};
    enum { NR = 5, GEN = 40 };
    int32_t prompts[NR][64], lens[NR], ref[NR][GEN];
    for (int i = 0; i < NR; i++) {
        assert_int_equal(kvrt_tokenize(m, texts[i], strlen(texts[i]), 1, prompts[i], 64, &lens[i]), KVRT_OK);
        greedy_session(m, mi.n_vocab, prompts[i], lens[i], GEN, ref[i]);
    }
    kvrt_engine_params ep = kvrt_engine_default_params();
    ep.num_blocks = 16; /* 256 positions for 5 x ~50: forces preemption */
    ep.block_size = 16;
    ep.max_batched_tokens = 24;
    ep.preempt_mode = mode ? KVRT_PREEMPT_SWAP : KVRT_PREEMPT_RECOMPUTE;
    ep.num_host_blocks = mode ? 32 : 0;
    kvrt_engine *e = NULL;
    if (kvrt_engine_create(m, &ep, &e, &err) != KVRT_OK)
        fail_msg("%s", err.message);
    int64_t ids[NR];
    for (int i = 0; i < NR; i++) {
        kvrt_request_params rp = kvrt_request_default_params();
        rp.prompt = prompts[i];
        rp.n_prompt = lens[i];
        rp.max_tokens = GEN;
        rp.ignore_eos = 1;
        rp.n = i == 0 ? 3 : 1;
        assert_int_equal(kvrt_engine_submit(e, &rp, &ids[i]), KVRT_OK);
    }
    int steps = 0;
    while (kvrt_engine_has_work(e)) {
        if (kvrt_engine_step(e, NULL) != KVRT_OK)
            fail_msg("step: %s", kvrt_engine_message(e));
        steps++;
    }
    for (int i = 0; i < NR; i++) {
        kvrt_request_output out;
        assert_int_equal(kvrt_engine_get_output(e, ids[i], &out), KVRT_OK);
        for (int k = 0; k < out.n_samples; k++) {
            assert_int_equal(out.samples[k].n_tokens, GEN);
            for (int t = 0; t < GEN; t++)
                if (out.samples[k].tokens[t] != ref[i][t])
                    fail_msg("req %d sample %d token %d: %d vs session %d", i, k, t, out.samples[k].tokens[t], ref[i][t]);
        }
    }
    char json[4096];
    assert_int_equal(kvrt_engine_metrics_json(e, json, sizeof json, NULL), KVRT_OK);
    fprintf(stderr, "mode %d steps %d: %s\n", mode, steps, json);
    kvrt_engine_destroy(e);
    kvrt_model_destroy(m);
    kvrt_context_destroy(ctx);
}
static void test_recompute(void **s) { (void)s; run(0); }
static void test_swap(void **s) { (void)s; run(1); }
int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_recompute), cmocka_unit_test(test_swap)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
