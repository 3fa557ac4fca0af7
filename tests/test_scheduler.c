/* Scheduler: token budget, decodes first, chunked prefill, fairness,
 * preemption (recompute and swap), admission errors; with the fake model. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "kvrt.h"
#include "test_engine_fake.h"

enum { VOCAB = 64 };

/* ---- budget and decodes first ------------------------------------------------------ */

typedef struct batch_watch {
    kvrt_engine *e;
    int32_t mixed_steps;   /* steps with decodes and prefill together */
    int32_t max_tokens_seen;
} batch_watch;

static void watch_batch(void *user, const kvrt_batch *b)
{
    batch_watch *w = user;
    kvrt_engine *e = w->e;
    assert_true(b->num_tokens <= e->p.max_batched_tokens);
    assert_true(b->num_seqs <= e->p.max_seqs);
    w->max_tokens_seen = KVRT_MAX(w->max_tokens_seen, b->num_tokens);
    int32_t prefill_seqs = b->num_seqs - b->num_decode_seqs;
    for (int32_t s = 0; s < b->num_decode_seqs; s++)
        assert_int_equal(b->query_start_loc[s + 1] - b->query_start_loc[s], 1);
    if (prefill_seqs > 0 && b->num_decode_seqs > 0)
        w->mixed_steps++;
    /* Decodes first: when a prefill chunk got in, every running decode did too
     * (unless the sequence cap was reached). */
    if (prefill_seqs > 0 && b->num_seqs < e->p.max_seqs)
        for (int32_t i = 0; i < e->running.n; i++) {
            const kvrt_eseq *s = e->running.v[i];
            if (s->len > s->req->p.n_prompt && s->num_computed == s->len - 1)
                assert_true(s->sched_tokens == 1);
        }
}

static void test_budget_and_decodes_first(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 8, 200);
    kvrt_engine_params p = fake_params(&f, 128);
    p.max_batched_tokens = 32;
    p.max_seqs = 6;
    kvrt_engine *e = fake_engine(&f, &p);
    batch_watch w = {.e = e};
    f.on_batch = watch_batch;
    f.user = &w;

    int32_t prompts[12][90];
    int64_t ids[12];
    for (int32_t i = 0; i < 12; i++) {
        fake_prompt(prompts[i], 5 + 7 * i, VOCAB, (uint64_t)i);
        ids[i] = submit_prompt(e, prompts[i], 5 + 7 * i, 10 + i);
    }
    run_all(e, 1000);
    for (int32_t i = 0; i < 12; i++)
        assert_matches_reference(e, ids[i], prompts[i], 5 + 7 * i, 10 + i);
    assert_true(w.mixed_steps > 0);
    assert_int_equal(w.max_tokens_seen, 32); /* the budget is used, not just respected */
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* ---- chunked prefill ------------------------------------------------------------------ */

static void test_chunked_prefill(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 16, 32);
    kvrt_engine_params p = fake_params(&f, 256);
    p.max_batched_tokens = 16;
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompt[100];
    fake_prompt(prompt, 100, VOCAB, 42);
    int64_t id = submit_prompt(e, prompt, 100, 3);

    /* 100 = 6 x 16 + 4: seven prefill steps, the seventh yields the first token. */
    for (int32_t step = 0; step < 7; step++) {
        kvrt_step_info info;
        assert_int_equal(kvrt_engine_step(e, &info), KVRT_OK);
        assert_int_equal(info.num_seqs, 1);
        assert_int_equal(info.prefill_tokens, step < 6 ? 16 : 4);
        assert_int_equal(info.decode_tokens, 0);
        kvrt_request_output out;
        assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
        assert_int_equal(out.samples[0].n_tokens, step < 6 ? 0 : 1);
    }
    for (int32_t step = 0; step < 2; step++) {
        kvrt_step_info info;
        assert_int_equal(kvrt_engine_step(e, &info), KVRT_OK);
        assert_int_equal(info.decode_tokens, 1);
        assert_int_equal(info.prefill_tokens, 0);
    }
    assert_false(kvrt_engine_has_work(e));
    assert_matches_reference(e, id, prompt, 100, 3);
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.prefill_tokens, 100);
    assert_int_equal(m.decode_tokens, 2);
    assert_int_equal(m.steps, 9);
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* ---- fairness ------------------------------------------------------------------------- */

static void test_fairness_no_starvation(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 8, 64);
    kvrt_engine_params p = fake_params(&f, 128);
    p.max_seqs = 2;
    p.max_batched_tokens = 64;
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t long_prompt[10], shorts[40][6];
    fake_prompt(long_prompt, 10, VOCAB, 1000);
    int64_t long_id = submit_prompt(e, long_prompt, 10, 60);
    int64_t ids[40];
    int32_t steps = 0;
    kvrt_request_output out;
    for (;;) {
        if (steps < 40) {
            fake_prompt(shorts[steps], 6, VOCAB, (uint64_t)steps + 2000);
            ids[steps] = submit_prompt(e, shorts[steps], 6, 2);
        }
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
        steps++;
        assert_int_equal(kvrt_engine_get_output(e, long_id, &out), KVRT_OK);
        if (out.finished)
            break;
        assert_true(steps < 100);
    }
    /* The long request kept its slot while short ones streamed in: one
     * prefill step, then one decode per step. */
    assert_int_equal(steps, 60);
    assert_matches_reference(e, long_id, long_prompt, 10, 60);
    steps += run_all(e, 1000);
    /* Short requests start in arrival order (FCFS) and all finish. */
    double prev = -1.0;
    for (int32_t i = 0; i < 40; i++) {
        assert_int_equal(kvrt_engine_get_output(e, ids[i], &out), KVRT_OK);
        assert_true(out.finished);
        assert_true(out.timing.first_scheduled >= prev);
        prev = out.timing.first_scheduled;
        assert_matches_reference(e, ids[i], shorts[i], 6, 2);
    }
    assert_true(steps < 200);
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

/* ---- preemption ------------------------------------------------------------------------- */

typedef struct stream_log {
    int32_t tokens[8][64];
    int32_t n[8];
    int32_t finishes[8];
} stream_log;

static void log_token(void *user, int64_t id, int32_t sample, int32_t token, kvrt_finish_reason finish)
{
    stream_log *l = user;
    assert_int_equal(sample, 0);
    assert_true(id >= 1 && id <= 8);
    if (token >= 0)
        l->tokens[id - 1][l->n[id - 1]++] = token;
    if (finish != KVRT_FINISH_NONE)
        l->finishes[id - 1]++;
}

/* Three requests of 40 tokens, 5 blocks each alone, on 12 blocks. */
static void run_pressure(kvrt_preempt_mode mode, int32_t host_blocks, kvrt_engine_metrics *m_out,
                         fake_model *f_out)
{
    fake_model f;
    fake_init(&f, VOCAB, 8, 12);
    kvrt_engine_params p = fake_params(&f, 64);
    p.preempt_mode = mode;
    p.num_host_blocks = host_blocks;
    kvrt_engine *e = fake_engine(&f, &p);
    stream_log log;
    memset(&log, 0, sizeof(log));
    int32_t prompts[3][16];
    int64_t ids[3];
    for (int32_t i = 0; i < 3; i++) {
        fake_prompt(prompts[i], 16, VOCAB, (uint64_t)i + 77);
        kvrt_request_params rp = kvrt_request_default_params();
        rp.prompt = prompts[i];
        rp.n_prompt = 16;
        rp.max_tokens = 24;
        rp.on_token = log_token;
        rp.user = &log;
        assert_int_equal(kvrt_engine_submit(e, &rp, &ids[i]), KVRT_OK);
    }
    int32_t steps = 0, first_victim_checked = 0;
    while (kvrt_engine_has_work(e)) {
        kvrt_step_info info;
        assert_int_equal(kvrt_engine_step(e, &info), KVRT_OK);
        assert_true(++steps < 500);
        if (info.num_preempted > 0 && !first_victim_checked) {
            /* The most recently admitted request goes first. */
            const kvrt_seq_list *l = mode == KVRT_PREEMPT_SWAP && e->swapped.n ? &e->swapped : &e->waiting;
            assert_int_equal(l->n, 1);
            assert_int_equal(l->v[0]->req->id, ids[2]);
            first_victim_checked = 1;
        }
        kvrt_bm_stats st;
        assert_int_equal(kvrt_bm_get_stats(e->bm, &st), KVRT_OK);
        assert_true(st.blocks_used <= st.blocks_total);
    }
    assert_true(first_victim_checked);
    for (int32_t i = 0; i < 3; i++) {
        assert_matches_reference(e, ids[i], prompts[i], 16, 24);
        kvrt_request_output out;
        assert_int_equal(kvrt_engine_get_output(e, ids[i], &out), KVRT_OK);
        /* Streamed exactly once each, despite preemption. */
        assert_int_equal(log.n[i], out.samples[0].n_tokens);
        assert_memory_equal(log.tokens[i], out.samples[0].tokens, (size_t)log.n[i] * sizeof(int32_t));
        assert_int_equal(log.finishes[i], 1);
        assert_int_equal(out.samples[0].finish_reason, KVRT_FINISH_LENGTH);
        if (i == 0)
            assert_int_equal(out.n_preemptions, 0); /* the oldest is never preempted */
    }
    assert_pool_clean(e);
    assert_int_equal(kvrt_engine_get_metrics(e, m_out), KVRT_OK);
    kvrt_engine_destroy(e);
    *f_out = f;
    fake_free(&f);
}

static void test_preempt_recompute(void **state)
{
    (void)state;
    kvrt_engine_metrics m;
    fake_model f;
    run_pressure(KVRT_PREEMPT_RECOMPUTE, 0, &m, &f);
    assert_true(m.preemptions_recompute > 0);
    assert_int_equal(m.preemptions_swap, 0);
    assert_int_equal(m.requests_finished, 3);
}

static void test_preempt_swap(void **state)
{
    (void)state;
    kvrt_engine_metrics m;
    fake_model f;
    run_pressure(KVRT_PREEMPT_SWAP, 16, &m, &f);
    assert_true(m.preemptions_swap > 0);
    assert_int_equal(m.preemptions_recompute, 0);
    assert_true(m.blocks_swapped_out > 0);
    assert_int_equal(m.blocks_swapped_in, m.blocks_swapped_out);
    assert_int_equal(f.blocks_read, m.blocks_swapped_out);
    assert_int_equal(f.blocks_written, m.blocks_swapped_in);
}

static void test_preempt_swap_tier_full_recomputes(void **state)
{
    (void)state;
    kvrt_engine_metrics m;
    fake_model f;
    run_pressure(KVRT_PREEMPT_SWAP, 2, &m, &f);
    assert_true(m.preemptions_recompute > 0);
}

/* Many requests with shared prefixes on a small pool, both preemption modes:
 * every request ends with exactly its solo tokens. */
static void stress(kvrt_preempt_mode mode, int32_t prefix_cache)
{
    fake_model f;
    fake_init(&f, VOCAB, 8, 20);
    kvrt_engine_params p = fake_params(&f, 80);
    p.preempt_mode = mode;
    p.num_host_blocks = mode == KVRT_PREEMPT_SWAP ? 12 : 0;
    p.max_batched_tokens = 24;
    p.max_seqs = 5;
    p.enable_prefix_cache = prefix_cache;
    kvrt_engine *e = fake_engine(&f, &p);
    enum { N = 24 };
    int32_t prompts[N][48], lens[N], max_toks[N];
    int64_t ids[N];
    uint64_t h = 99;
    for (int32_t i = 0; i < N; i++) {
        h = fake_mix(h, (uint64_t)i);
        lens[i] = 1 + (int32_t)(h % 40);
        max_toks[i] = 1 + (int32_t)((h >> 20) % 30);
        fake_prompt(prompts[i], lens[i], VOCAB, (uint64_t)(i % 3)); /* three families share prefixes */
        if (i % 2)
            prompts[i][lens[i] - 1] = (int32_t)(1 + i % (VOCAB - 1));
        ids[i] = submit_prompt(e, prompts[i], lens[i], max_toks[i]);
        if (i % 4 == 3)
            assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    }
    run_all(e, 2000);
    for (int32_t i = 0; i < N; i++)
        assert_matches_reference(e, ids[i], prompts[i], lens[i], max_toks[i]);
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_true(m.preemptions_recompute + m.preemptions_swap > 0);
    if (prefix_cache)
        assert_true(m.prefix_hit_tokens > 0);
    else
        assert_int_equal(m.prefix_hit_tokens, 0);
    assert_pool_clean(e);
    kvrt_engine_destroy(e);
    fake_free(&f);
}

static void test_stress_recompute(void **state)
{
    (void)state;
    stress(KVRT_PREEMPT_RECOMPUTE, 1);
    stress(KVRT_PREEMPT_RECOMPUTE, 0);
}

static void test_stress_swap(void **state)
{
    (void)state;
    stress(KVRT_PREEMPT_SWAP, 1);
    stress(KVRT_PREEMPT_SWAP, 0);
}

/* ---- admission ------------------------------------------------------------------------------ */

static void test_admission_errors(void **state)
{
    (void)state;
    fake_model f;
    fake_init(&f, VOCAB, 8, 4); /* 32 positions in the pool */
    kvrt_engine_params p = fake_params(&f, 48);
    kvrt_engine *e = fake_engine(&f, &p);
    int32_t prompt[60];
    fake_prompt(prompt, 60, VOCAB, 5);
    kvrt_request_params rp = kvrt_request_default_params();
    int64_t id = 123;

    rp.prompt = prompt;
    rp.n_prompt = 49; /* longer than the context */
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_REQUEST_REJECTED);
    assert_int_equal(id, 0);
    assert_non_null(strstr(kvrt_engine_message(e), "longer than the context"));

    rp.n_prompt = 20;
    rp.max_tokens = 20; /* 39 stored tokens: 5 blocks > 4 */
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_ERR_REQUEST_REJECTED);
    assert_non_null(strstr(kvrt_engine_message(e), "KV blocks"));
    rp.max_tokens = 13; /* 32 tokens: exactly the pool */
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    assert_true(id > 0);

    kvrt_request_params bad = rp;
    bad.n_prompt = 0;
    assert_int_equal(kvrt_engine_submit(e, &bad, &id), KVRT_ERR_INVALID_ARGUMENT);
    bad = rp;
    bad.n = 0;
    assert_int_equal(kvrt_engine_submit(e, &bad, &id), KVRT_ERR_INVALID_ARGUMENT);
    bad = rp;
    bad.max_tokens = 0;
    assert_int_equal(kvrt_engine_submit(e, &bad, &id), KVRT_ERR_INVALID_ARGUMENT);
    bad = rp;
    bad.top_p = 0.0f;
    assert_int_equal(kvrt_engine_submit(e, &bad, &id), KVRT_ERR_INVALID_ARGUMENT);
    int32_t bad_prompt[2] = {3, VOCAB};
    bad = rp;
    bad.prompt = bad_prompt;
    bad.n_prompt = 2;
    assert_int_equal(kvrt_engine_submit(e, &bad, &id), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_engine_message(e), "vocabulary"));
    assert_int_equal(kvrt_engine_submit(e, NULL, &id), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_engine_submit(NULL, &rp, &id), KVRT_ERR_INVALID_ARGUMENT);

    /* The accepted one runs to completion with the whole pool. */
    run_all(e, 100);
    kvrt_engine_metrics m;
    assert_int_equal(kvrt_engine_get_metrics(e, &m), KVRT_OK);
    assert_int_equal(m.requests_rejected, 2);
    assert_int_equal(m.requests_submitted, 1);
    assert_int_equal(m.requests_finished, 1);
    assert_pool_clean(e);
    kvrt_engine_destroy(e);

    /* Engine parameters. */
    kvrt_engine *none = (kvrt_engine *)&f;
    kvrt_error err;
    kvrt_engine_params q = fake_params(&f, 48);
    q.block_size = 12;
    assert_int_equal(kvrt_engine_create_with_runner(&q, fake_runner(&f), &none, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(none);
    q = fake_params(&f, 48);
    q.preempt_mode = KVRT_PREEMPT_SWAP; /* no host tier */
    assert_int_equal(kvrt_engine_create_with_runner(&q, fake_runner(&f), &none, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "num_host_blocks"));
    fake_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_budget_and_decodes_first),
        cmocka_unit_test(test_chunked_prefill),
        cmocka_unit_test(test_fairness_no_starvation),
        cmocka_unit_test(test_preempt_recompute),
        cmocka_unit_test(test_preempt_swap),
        cmocka_unit_test(test_preempt_swap_tier_full_recomputes),
        cmocka_unit_test(test_stress_recompute),
        cmocka_unit_test(test_stress_swap),
        cmocka_unit_test(test_admission_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
