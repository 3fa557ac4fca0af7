/* Engine: prefix caching, parallel sampling through fork + copy-on-write,
 * cancel, stop conditions, results, metrics, batch invariance and recovery
 * from a failed forward; with the fake model. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>

#include "kvrt.h"
#include "test_engine_fake.h"

enum { VOCAB = 64 };

/* ---- prefix cache ----------------------------------------------------------------------- */

static void test_prefix_hits_skip_prefill(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 16, 32);
    kvrt_engine_params p = fake_params(&f, 128);
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompt[40];
    fake_prompt(prompt, 40, VOCAB, 3);
    int64_t a = submit_prompt(e, prompt, 40, 6);
    run_all(e, 100);
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.prefix_hit_tokens, 0);
    assert_int_equal(m.blocks_cached, 2); /* the two full prompt blocks (+ none of the 45-token tail) */

    int64_t b = submit_prompt(e, prompt, 40, 6);
    kvrt_step_info info;
    assert_int_equal(kvrt_engine_step(e, &info), KVRT_OK);
    assert_int_equal(info.prefill_tokens, 8); /* 40 - 32 cached */
    run_all(e, 100);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, b, &out), KVRT_OK);
    assert_int_equal(out.n_cached_prompt, 32);
    assert_matches_reference(e, a, prompt, 40, 6);
    assert_matches_reference(e, b, prompt, 40, 6);
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.prefix_lookups, 2);
    assert_int_equal(m.prefix_query_tokens, 78);
    assert_int_equal(m.prefix_hit_tokens, 32);
    assert_true(m.prefix_hit_rate > 0.41 && m.prefix_hit_rate < 0.42);
    assert_int_equal(m.prefill_tokens, 48);

    /* A prompt that is entirely cached still computes its last token. */
    int64_t c = submit_prompt(e, prompt, 32, 2);
    assert_int_equal(kvrt_engine_step(e, &info), KVRT_OK);
    assert_int_equal(info.prefill_tokens, 16); /* at most prompt - 1 is matched: one block */
    run_all(e, 100);
    assert_matches_reference(e, c, prompt, 32, 2);
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* ---- parallel sampling -------------------------------------------------------------------- */

static void test_fork_shares_prompt_greedy(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 16, 32);
    kvrt_engine_params p = fake_params(&f, 128);
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompt[20];
    fake_prompt(prompt, 20, VOCAB, 11);
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = 20;
    rp.max_tokens = 8;
    rp.n = 4;
    int64_t id = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    kvrt_step_info info;
    assert_int_equal(kvrt_engine_step(e, &info), KVRT_OK);
    kvrt_bm_stats st;
    assert_int_equal(kvrt_bm_get_stats(e->bm, &st), KVRT_OK);
    assert_int_equal(st.blocks_used, 2); /* four samples share the prompt's two blocks */
    assert_int_equal(st.num_seqs, 4);
    assert_int_equal(kvrt_engine_step(e, &info), KVRT_OK);
    assert_int_equal(info.num_decode_seqs, 4);
    run_all(e, 100);

    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.prefill_tokens, 20); /* prompt computed once */
    assert_int_equal(m.cow_copies, 3);      /* the shared partial block, copied by three of four */
    assert_int_equal(f.copies_applied, 3);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_int_equal(out.n_samples, 4);
    int32_t ref[8];
    assert_int_equal(fake_reference(VOCAB, prompt, 20, 8, 128, -1, ref), 8);
    for (int32_t i = 0; i < 4; i++) {
        assert_int_equal(out.samples[i].n_tokens, 8);
        assert_memory_equal(out.samples[i].tokens, ref, sizeof(ref));
    }
    assert_pool_clean(e);

    /* Samples that finish with their first token. */
    rp.n = 3;
    rp.max_tokens = 1;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    run_all(e, 10);
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    for (int32_t i = 0; i < 3; i++) {
        assert_int_equal(out.samples[i].n_tokens, 1);
        assert_int_equal(out.samples[i].tokens[0], ref[0]);
    }
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* n = 4 sampled at temperature 1: returns the samples of the request. */
static void sampled_request(int32_t with_traffic, int32_t out_tokens[4][12])
{
    fake_model f;
    fake_init(&f, VOCAB, 8, 64);
    kvrt_engine_params p = fake_params(&f, 96);
    p.max_batched_tokens = 16;
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompt[21], other[30];
    fake_prompt(prompt, 21, VOCAB, 12);
    fake_prompt(other, 30, VOCAB, 13);
    if (with_traffic)
        for (int32_t i = 0; i < 3; i++)
            submit_prompt(e, other, 30 - i, 9);
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = 21;
    rp.max_tokens = 12;
    rp.n = 4;
    rp.temperature = 1.0f;
    rp.top_k = 20;
    rp.top_p = 0.95f;
    rp.seed = 1234;
    int64_t id = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    run_all(e, 300);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    for (int32_t i = 0; i < 4; i++) {
        assert_int_equal(out.samples[i].n_tokens, 12);
        memcpy(out_tokens[i], out.samples[i].tokens, 12 * sizeof(int32_t));
    }
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

static void test_fork_sampling_is_seeded_and_batch_invariant(void **state)
{
    (void)state;
    int32_t alone[4][12], mixed[4][12];
    sampled_request(0, alone);
    sampled_request(1, mixed);
    assert_memory_equal(alone, mixed, sizeof(alone));
    int distinct = 0;
    for (int32_t i = 1; i < 4; i++)
        distinct += memcmp(alone[0], alone[i], sizeof(alone[0])) != 0;
    assert_true(distinct > 0); /* each sample has its own generator */
}

/* ---- cancel ------------------------------------------------------------------------------- */

typedef struct cancel_log {
    int32_t tokens, cancelled;
} cancel_log;

static void count_tokens(void *user, int64_t id, int32_t sample, int32_t token, kvrt_finish_reason finish)
{
    cancel_log *l = user;
    (void)id;
    (void)sample;
    if (token >= 0)
        l->tokens++;
    if (finish == KVRT_FINISH_CANCELLED) {
        assert_int_equal(token, -1);
        l->cancelled++;
    }
}

static int64_t submit_logged(kvrt_engine *e, const int32_t *prompt, int32_t n_prompt, int32_t max_tokens,
                             int32_t n, cancel_log *log)
{
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = n_prompt;
    rp.max_tokens = max_tokens;
    rp.n = n;
    rp.on_token = count_tokens;
    rp.user = log;
    int64_t id = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    return id;
}

static void assert_cancelled(kvrt_engine *e, int64_t id)
{
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_true(out.finished);
    for (int32_t i = 0; i < out.n_samples; i++)
        assert_int_equal(out.samples[i].finish_reason, KVRT_FINISH_CANCELLED);
}

static void test_cancel_everywhere(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 8, 40);
    kvrt_engine_params p = fake_params(&f, 128);
    p.max_batched_tokens = 16;
    p.max_seqs = 4;
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompt[60];
    fake_prompt(prompt, 60, VOCAB, 21);
    cancel_log lp = {0}, ld = {0}, lw = {0}, lf = {0};

    int64_t prefill = submit_logged(e, prompt, 60, 10, 1, &lp);   /* 4 steps of prefill */
    assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    assert_int_equal(kvrt_engine_cancel(e, prefill), KVRT_OK);   /* mid-prefill */
    assert_cancelled(e, prefill);
    assert_int_equal(lp.cancelled, 1);
    assert_int_equal(lp.tokens, 0);
    assert_pool_clean(e);

    int64_t decode = submit_logged(e, prompt + 10, 9, 30, 1, &ld);
    int64_t forked = submit_logged(e, prompt + 20, 12, 30, 3, &lf);
    for (int32_t i = 0; i < 4; i++)
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    int64_t waiting = submit_logged(e, prompt, 50, 5, 2, &lw); /* not forked yet */
    assert_int_equal(kvrt_engine_cancel(e, decode), KVRT_OK);  /* mid-decode */
    assert_int_equal(kvrt_engine_cancel(e, forked), KVRT_OK);  /* three decoding samples */
    assert_int_equal(kvrt_engine_cancel(e, waiting), KVRT_OK);
    assert_int_equal(kvrt_engine_cancel(e, waiting), KVRT_OK); /* again: nothing to do */
    assert_cancelled(e, decode);
    assert_cancelled(e, forked);
    assert_cancelled(e, waiting);
    assert_true(ld.tokens >= 3);
    assert_int_equal(ld.cancelled, 1);
    assert_int_equal(lf.cancelled, 3);
    assert_int_equal(lw.cancelled, 2);
    assert_false(kvrt_engine_has_work(e));
    assert_pool_clean(e);

    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.requests_cancelled, 4);
    assert_int_equal(m.requests_finished, 0);
    assert_int_equal(m.e2e.count, 0); /* cancelled requests stay out of the latencies */

    /* Finished queue in finishing order, then release. */
    int64_t order[4] = {prefill, decode, forked, waiting};
    for (int32_t i = 0; i < 4; i++) {
        kvrt_request_output out;
        int32_t found = 0;
        assert_int_equal(kvrt_engine_next_finished(e, &out, &found), KVRT_OK);
        assert_int_equal(found, 1);
        assert_int_equal(out.request_id, order[i]);
        assert_int_equal(kvrt_engine_release(e, out.request_id), KVRT_OK);
        assert_int_equal(kvrt_engine_get_output(e, out.request_id, &out), KVRT_ERR_INVALID_ARGUMENT);
    }
    int32_t found = 1;
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_next_finished(e, &out, &found), KVRT_OK);
    assert_int_equal(found, 0);
    assert_int_equal(kvrt_engine_cancel(e, 999), KVRT_ERR_INVALID_ARGUMENT);
    int64_t live = submit_prompt(e, prompt, 5, 3);
    assert_int_equal(kvrt_engine_release(e, live), KVRT_ERR_INVALID_ARGUMENT); /* not finished */
    kvrt_engine_destroy(e); /* with a live request */
    fake_free(&f);
}

static void test_cancel_swapped(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 8, 12);
    kvrt_engine_params p = fake_params(&f, 64);
    p.preempt_mode = KVRT_PREEMPT_SWAP;
    p.num_host_blocks = 16;
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompt[16];
    fake_prompt(prompt, 16, VOCAB, 8);
    int64_t ids[3];
    for (int32_t i = 0; i < 3; i++)
        ids[i] = submit_prompt(e, prompt, 16 - i, 24);
    int32_t steps = 0;
    while (e->swapped.n == 0) {
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
        assert_true(++steps < 100);
    }
    kvrt_bm_stats st;
    assert_int_equal(kvrt_bm_get_stats(e->bm, &st), KVRT_OK);
    assert_true(st.host_blocks_used > 0);
    int64_t victim = e->swapped.v[0]->req->id;
    assert_int_equal(kvrt_engine_cancel(e, victim), KVRT_OK);
    assert_cancelled(e, victim);
    assert_int_equal(kvrt_bm_get_stats(e->bm, &st), KVRT_OK);
    assert_int_equal(st.host_blocks_used, 0);
    run_all(e, 200);
    for (int32_t i = 0; i < 3; i++)
        if (ids[i] != victim)
            assert_matches_reference(e, ids[i], prompt, 16 - i, 24);
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* ---- stop conditions ----------------------------------------------------------------------- */

static void test_eos_and_stop_tokens(void **state)
{
    (void)state;
    int32_t prompt[12], ref[20];
    fake_prompt(prompt, 12, VOCAB, 31);
    assert_int_equal(fake_reference(VOCAB, prompt, 12, 20, 128, -1, ref), 20);
    /* The first position whose token did not occur before it. */
    int32_t k = 1;
    for (;; k++) {
        int seen = 0;
        for (int32_t j = 0; j < k; j++)
            seen |= ref[j] == ref[k];
        if (!seen)
            break;
    }
    assert_true(k < 20);
    for (int32_t mode = 0; mode < 3; mode++) {
        fake_model f;
        fake_init(&f, VOCAB, 8, 16);
        kvrt_engine_params p = fake_params(&f, 128);
        p.eos_id = mode == 2 ? -1 : ref[k];
        kvrt_engine *e = fake_engine(&f, &p);
        kvrt_request_params rp = kvrt_request_default_params();
        rp.prompt = prompt;
        rp.n_prompt = 12;
        rp.max_tokens = 20;
        rp.ignore_eos = mode == 1;
        int32_t stop[2] = {VOCAB - 1 == ref[k] ? 0 : VOCAB - 1, ref[k]};
        if (mode == 2) {
            rp.stop_tokens = stop;
            rp.n_stop_tokens = 2;
        }
        int64_t id = 0;
        assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
        run_all(e, 100);
        kvrt_request_output out;
        assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
        int32_t want = mode == 1 ? 20 : k + 1;
        assert_int_equal(out.samples[0].n_tokens, want);
        assert_memory_equal(out.samples[0].tokens, ref, (size_t)want * sizeof(int32_t));
        kvrt_finish_reason why[3] = {KVRT_FINISH_EOS, KVRT_FINISH_LENGTH, KVRT_FINISH_STOP_TOKEN};
        assert_int_equal(out.samples[0].finish_reason, why[mode]);
        assert_pool_clean(e);
        kvrt_engine_destroy(e);
        fake_free(&f);
    }
    assert_string_equal(kvrt_finish_reason_name(KVRT_FINISH_STOP_TOKEN), "stop");

    /* The context ends a sample too. */
    fake_model f;
    fake_init(&f, VOCAB, 8, 16);
    kvrt_engine_params p = fake_params(&f, 16);
    kvrt_engine *e = fake_engine(&f, &p);
    int64_t id = submit_prompt(e, prompt, 12, 100);
    run_all(e, 100);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_int_equal(out.samples[0].n_tokens, 4);
    assert_int_equal(out.samples[0].finish_reason, KVRT_FINISH_LENGTH);
    assert_matches_reference(e, id, prompt, 12, 100);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* ---- metrics ------------------------------------------------------------------------------- */

static void test_percentiles_known_set(void **state)
{
    (void)state;
    kvrt_series s = {0};
    for (int32_t i = 0; i < 100; i++) /* 1..100 in a scrambled order */
        assert_int_equal(kvrt_series_push(&s, NULL, (double)(1 + (i * 37) % 100)), KVRT_OK);
    double scratch[100];
    kvrt_summary sum = kvrt_series_summary(&s, scratch);
    assert_int_equal(sum.count, 100);
    assert_true(fabs(sum.mean - 50.5) < 1e-12);
    assert_true(fabs(sum.p50 - 50.5) < 1e-12);
    assert_true(fabs(sum.p95 - 95.05) < 1e-9);
    assert_true(fabs(sum.p99 - 99.01) < 1e-9);
    assert_true(sum.max == 100.0);
    kvrt_series_free(&s, NULL);
    kvrt_series empty = {0};
    sum = kvrt_series_summary(&empty, NULL);
    assert_int_equal(sum.count, 0);
    assert_true(sum.p99 == 0.0);
    double one = 7.0;
    assert_true(kvrt_percentile_sorted(&one, 1, 99.0) == 7.0);
}

static void test_request_latencies_and_json(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 16, 8);
    kvrt_engine_params p = fake_params(&f, 64);
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompt[10];
    fake_prompt(prompt, 10, VOCAB, 4);
    int64_t id = submit_prompt(e, prompt, 10, 5);
    run_all(e, 10);
    /* The fake clock advances 10 ms per forward plus 1 ms per token: the
     * prompt step takes 20 ms, each decode 11 ms. */
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    assert_true(fabs(out.timing.first_token - 0.020) < 1e-12);
    assert_true(fabs(out.timing.finished - 0.064) < 1e-12);
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.ttft.count, 1);
    assert_true(fabs(m.ttft.p50 - 0.020) < 1e-12);
    assert_true(fabs(m.tpot.p99 - 0.011) < 1e-12);
    assert_true(fabs(m.e2e.mean - 0.064) < 1e-12);
    assert_true(fabs(m.queue.max) < 1e-12);
    /* Stored 10..14 tokens in one 16-position block over five steps. */
    assert_true(fabs(m.kv_utilization_mean - 12.0 / 16.0) < 1e-12);
    assert_true(fabs(m.kv_utilization_last - 14.0 / 16.0) < 1e-12);
    assert_int_equal(m.step_tokens.count, 5);
    assert_true(m.step_tokens.max == 10.0);
    assert_true(m.step_decode_tokens.p50 == 1.0);
    assert_int_equal(m.generated_tokens, 5);
    /* step times: the prompt step (20 ms) is prefill, the four decodes (11 ms) decode */
    assert_int_equal(m.step_time.count, 5);
    assert_true(fabs(m.step_time.max - 0.020) < 1e-12);
    assert_true(fabs(m.step_time.p50 - 0.011) < 1e-12);
    assert_true(fabs(m.prefill_time_s - 0.020) < 1e-12);
    assert_true(fabs(m.decode_time_s - 0.044) < 1e-12);
    assert_int_equal(m.blocks_total, 8);
    assert_int_equal(m.blocks_used, 0);

    size_t need = 0;
    char small[16];
    assert_int_equal(kvrt_engine_metrics_json(e, small, sizeof(small), &need), KVRT_ERR_INVALID_ARGUMENT);
    assert_true(need > sizeof(small));
    char *json = malloc(need + 1);
    size_t len = 0;
    assert_int_equal(kvrt_engine_metrics_json(e, json, need + 1, &len), KVRT_OK);
    assert_int_equal(len, need);
    assert_int_equal(strlen(json), len);
    assert_true(json[0] == '{' && json[len - 1] == '}');
    int depth = 0;
    for (size_t i = 0; i < len; i++) {
        depth += json[i] == '{';
        depth -= json[i] == '}';
        assert_true(depth >= (i + 1 < len ? 1 : 0));
    }
    assert_int_equal(depth, 0);
    assert_non_null(strstr(json, "\"kv_utilization\":0.75,"));
    assert_non_null(strstr(json, "\"ttft_s\":{\"count\":1,"));
    assert_non_null(strstr(json, "\"prefill_time_s\":0.02,\"decode_time_s\":0.044,"));
    assert_null(strstr(json, "nan"));
    free(json);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* ---- batch invariance ---------------------------------------------------------------------- */

static void run_requests(int32_t first, int32_t count, int32_t tokens[32][24], int32_t lens[32])
{
    fake_model f;
    fake_init(&f, VOCAB, 16, 160);
    kvrt_engine_params p = fake_params(&f, 128);
    p.max_seqs = 32;
    p.max_batched_tokens = 128;
    kvrt_engine *e = fake_engine(&f, &p);
    int64_t ids[32];
    for (int32_t i = first; i < first + count; i++) {
        int32_t prompt[64];
        int32_t n = 3 + (i * 13) % 60;
        fake_prompt(prompt, n, VOCAB, (uint64_t)i + 500);
        kvrt_request_params rp = kvrt_request_default_params();
        rp.prompt = prompt;
        rp.n_prompt = n;
        rp.max_tokens = 24;
        rp.temperature = i % 2 ? 0.7f : 0.0f; /* half greedy, half seeded sampling */
        rp.min_p = 0.05f;
        rp.seed = (uint64_t)i;
        assert_int_equal(kvrt_engine_submit(e, &rp, &ids[i]), KVRT_OK);
    }
    run_all(e, 500);
    for (int32_t i = first; i < first + count; i++) {
        kvrt_request_output out;
        assert_int_equal(kvrt_engine_get_output(e, ids[i], &out), KVRT_OK);
        lens[i] = out.samples[0].n_tokens;
        memcpy(tokens[i], out.samples[0].tokens, (size_t)lens[i] * sizeof(int32_t));
    }
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

static void test_batch_invariance_32(void **state)
{
    (void)state;
    int32_t together[32][24], alone[32][24], lt[32], la[32];
    run_requests(0, 32, together, lt);
    for (int32_t i = 0; i < 32; i++)
        run_requests(i, 1, alone, la);
    for (int32_t i = 0; i < 32; i++) {
        assert_int_equal(lt[i], 24);
        assert_int_equal(la[i], 24);
        assert_memory_equal(together[i], alone[i], 24 * sizeof(int32_t));
        if (i % 2 == 0) { /* greedy ones also equal the engine-free reference */
            int32_t prompt[64], ref[24];
            int32_t n = 3 + (i * 13) % 60;
            fake_prompt(prompt, n, VOCAB, (uint64_t)i + 500);
            assert_int_equal(fake_reference(VOCAB, prompt, n, 24, 128, -1, ref), 24);
            assert_memory_equal(together[i], ref, sizeof(ref));
        }
    }
}

/* ---- a failing forward ------------------------------------------------------------------------ */

static void test_failed_forward_loses_nothing(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 8, 40);
    kvrt_engine_params p = fake_params(&f, 96);
    p.max_batched_tokens = 16;
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompts[3][30];
    int64_t ids[3];
    for (int32_t i = 0; i < 3; i++) {
        fake_prompt(prompts[i], 30, VOCAB, 40 + (uint64_t)(i > 0)); /* two share a prompt */
        ids[i] = submit_prompt(e, prompts[i], 30, 10);
    }
    f.fail_at_forward = 3;
    int32_t failures = 0, steps = 0;
    while (kvrt_engine_has_work(e)) {
        kvrt_status st = kvrt_engine_step(e, NULL);
        if (st != KVRT_OK) {
            assert_int_equal(st, KVRT_ERR_DEVICE_LOST);
            assert_non_null(strstr(kvrt_engine_message(e), "device lost"));
            failures++;
        }
        assert_true(++steps < 200);
    }
    assert_int_equal(failures, 1);
    for (int32_t i = 0; i < 3; i++)
        assert_matches_reference(e, ids[i], prompts[i], 30, 10);
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* Runs to the end, tolerating device failures; returns how many steps failed. */
static int32_t run_tolerant(kvrt_engine *e)
{
    int32_t failures = 0, steps = 0;
    while (kvrt_engine_has_work(e)) {
        if (kvrt_engine_step(e, NULL) != KVRT_OK)
            failures++;
        assert_true(++steps < 500);
    }
    return failures;
}

static void test_failed_copies_and_swaps_lose_nothing(void **state)
{
    (void)state;
    for (int32_t which = 0; which < 3; which++) {
        fake_model f;
        fake_init(&f, VOCAB, 8, 12);
        kvrt_engine_params p = fake_params(&f, 64);
        p.preempt_mode = KVRT_PREEMPT_SWAP;
        p.num_host_blocks = 16;
        kvrt_engine *e = fake_engine(&f, &p);
        f.fail_at_copy = which == 0 ? 2 : 0;
        f.fail_at_read = which == 1 ? 2 : 0;
        f.fail_at_write = which == 2 ? 1 : 0;
        int32_t prompt[20];
        fake_prompt(prompt, 20, VOCAB, 60);
        kvrt_request_params rp = kvrt_request_default_params();
        rp.prompt = prompt;
        rp.n_prompt = 20;
        rp.max_tokens = 20;
        rp.n = 3; /* copy-on-write, and swapping under pressure */
        int64_t id = 0;
        assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
        int64_t other = submit_prompt(e, prompt + 3, 17, 20);
        assert_int_equal(run_tolerant(e), 1);
        kvrt_request_output out;
        assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
        int32_t ref[20];
        assert_int_equal(fake_reference(VOCAB, prompt, 20, 20, 64, -1, ref), 20);
        for (int32_t i = 0; i < 3; i++) {
            assert_int_equal(out.samples[i].n_tokens, 20);
            assert_memory_equal(out.samples[i].tokens, ref, sizeof(ref));
        }
        assert_matches_reference(e, other, prompt + 3, 17, 20);
        assert_pool_clean(e);
        kvrt_engine_destroy(e);
        fake_free(&f);
    }
}

static void test_create_without_model(void **state)
{
    (void)state;
    kvrt_engine *e = (kvrt_engine *)state;
    kvrt_error err;
    /* Without a model: rejected (or unsupported while the model runner is not built in). */
    kvrt_status st = kvrt_engine_create(NULL, NULL, &e, &err);
    assert_true(st == KVRT_ERR_INVALID_ARGUMENT || st == KVRT_ERR_UNSUPPORTED);
    assert_int_equal(err.status, st);
    assert_null(e);
    assert_true(err.message[0] != '\0');
    kvrt_engine_destroy(NULL);
    assert_string_equal(kvrt_engine_message(NULL), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefix_hits_skip_prefill),
        cmocka_unit_test(test_fork_shares_prompt_greedy),
        cmocka_unit_test(test_fork_sampling_is_seeded_and_batch_invariant),
        cmocka_unit_test(test_cancel_everywhere),
        cmocka_unit_test(test_cancel_swapped),
        cmocka_unit_test(test_eos_and_stop_tokens),
        cmocka_unit_test(test_percentiles_known_set),
        cmocka_unit_test(test_request_latencies_and_json),
        cmocka_unit_test(test_batch_invariance_32),
        cmocka_unit_test(test_failed_forward_loses_nothing),
        cmocka_unit_test(test_failed_copies_and_swaps_lose_nothing),
        cmocka_unit_test(test_create_without_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
