/* Sampler: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeds. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "kvrt.h"

static kvrt_sampler *make(kvrt_sampler_params p, int32_t n_vocab)
{
    kvrt_sampler *s = NULL;
    kvrt_error err;
    if (kvrt_sampler_create(&p, n_vocab, NULL, &s, &err) != KVRT_OK)
        fail_msg("sampler: %s", err.message);
    return s;
}

static kvrt_sampler_params greedy_params(void)
{
    kvrt_sampler_params p = kvrt_sampler_default_params();
    p.temperature = 0.0f;
    return p;
}

static void test_greedy_is_argmax_lowest_on_ties(void **state)
{
    (void)state;
    const float logits[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.9f, 0.0f};
    kvrt_sampler *s = make(greedy_params(), 6);
    int32_t tok = -1;
    assert_int_equal(kvrt_sampler_sample(s, logits, &tok), KVRT_OK);
    assert_int_equal(tok, 1);
    kvrt_sampler_destroy(s);
}

static void test_same_seed_same_tokens(void **state)
{
    (void)state;
    float logits[50];
    for (int i = 0; i < 50; i++)
        logits[i] = (float)sin(i * 0.7) * 2.0f;
    kvrt_sampler_params p = kvrt_sampler_default_params();
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 1234;
    kvrt_sampler *a = make(p, 50), *b = make(p, 50);
    p.seed = 99;
    kvrt_sampler *c = make(p, 50);
    int differs = 0;
    for (int i = 0; i < 200; i++) {
        int32_t ta, tb, tc;
        kvrt_sampler_sample(a, logits, &ta);
        kvrt_sampler_sample(b, logits, &tb);
        kvrt_sampler_sample(c, logits, &tc);
        assert_int_equal(ta, tb);
        differs += ta != tc;
    }
    assert_true(differs > 0); /* another seed gives another sequence */
    kvrt_sampler_destroy(a);
    kvrt_sampler_destroy(b);
    kvrt_sampler_destroy(c);
}

/* Frequencies of 20,000 draws follow softmax(logits / T) (fixed seed). */
static void test_temperature_matches_softmax(void **state)
{
    (void)state;
    const float logits[4] = {1.0f, 0.0f, 2.0f, -1.0f};
    const float temp = 0.7f;
    kvrt_sampler_params p = kvrt_sampler_default_params();
    p.temperature = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 7;
    kvrt_sampler *s = make(p, 4);
    int counts[4] = {0};
    const int n = 20000;
    for (int i = 0; i < n; i++) {
        int32_t t;
        kvrt_sampler_sample(s, logits, &t);
        counts[t]++;
    }
    double z = 0, expect[4];
    for (int i = 0; i < 4; i++)
        z += exp(logits[i] / temp);
    for (int i = 0; i < 4; i++) {
        expect[i] = exp(logits[i] / temp) / z;
        double sd = sqrt(expect[i] * (1 - expect[i]) / n);
        double got = (double)counts[i] / n;
        if (fabs(got - expect[i]) > 5 * sd + 1e-3)
            fail_msg("token %d: frequency %.4f, softmax %.4f", i, got, expect[i]);
    }
    kvrt_sampler_destroy(s);
}

static int draw_support(kvrt_sampler_params p, const float *logits, int32_t n_vocab, int *seen)
{
    kvrt_sampler *s = make(p, n_vocab);
    int distinct = 0;
    for (int i = 0; i < 3000; i++) {
        int32_t t;
        kvrt_sampler_sample(s, logits, &t);
        if (!seen[t]++)
            distinct++;
    }
    kvrt_sampler_destroy(s);
    return distinct;
}

static void test_top_k_top_p_min_p_restrict_support(void **state)
{
    (void)state;
    /* probabilities at T=1: 0.5, 0.25, 0.125, 0.0625, ... */
    float logits[8];
    for (int i = 0; i < 8; i++)
        logits[i] = -(float)i * logf(2.0f);
    kvrt_sampler_params p = kvrt_sampler_default_params();
    p.temperature = 1.0f;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 3;
    int seen[8];

    p.top_k = 3;
    memset(seen, 0, sizeof(seen));
    assert_int_equal(draw_support(p, logits, 8, seen), 3);
    assert_true(seen[0] && seen[1] && seen[2]);

    p.top_k = 0;
    p.top_p = 0.7f; /* 0.5 + 0.25 >= 0.7: two tokens */
    memset(seen, 0, sizeof(seen));
    assert_int_equal(draw_support(p, logits, 8, seen), 2);

    p.top_p = 1.0f;
    p.min_p = 0.2f; /* keeps p >= 0.1: 0.5, 0.25, 0.125 */
    memset(seen, 0, sizeof(seen));
    assert_int_equal(draw_support(p, logits, 8, seen), 3);
    assert_int_equal(seen[3], 0);
}

static void test_repeat_penalty(void **state)
{
    (void)state;
    const float logits[3] = {2.0f, 1.5f, -1.0f};
    kvrt_sampler_params p = greedy_params();
    p.repeat_penalty = 2.0f; /* token 0: 2.0 -> 1.0 < 1.5 */
    p.repeat_last_n = 4;
    kvrt_sampler *s = make(p, 3);
    kvrt_sampler_accept(s, 0);
    int32_t t;
    kvrt_sampler_sample(s, logits, &t);
    assert_int_equal(t, 1);
    kvrt_sampler_destroy(s);
    /* without history the best token wins */
    s = make(p, 3);
    kvrt_sampler_sample(s, logits, &t);
    assert_int_equal(t, 0);
    kvrt_sampler_destroy(s);
}

static void test_bad_parameters(void **state)
{
    (void)state;
    kvrt_sampler *s = (kvrt_sampler *)&s;
    kvrt_error err;
    kvrt_sampler_params p = kvrt_sampler_default_params();
    p.top_p = 0.0f;
    assert_int_equal(kvrt_sampler_create(&p, 10, NULL, &s, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(s);
    assert_non_null(strstr(err.message, "top_p"));
    p = kvrt_sampler_default_params();
    assert_int_equal(kvrt_sampler_create(&p, 0, NULL, &s, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "n_vocab"));
    p.repeat_penalty = 0.0f;
    assert_int_equal(kvrt_sampler_create(&p, 10, NULL, &s, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_sampler_create(NULL, 10, NULL, &s, &err), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_sampler_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_is_argmax_lowest_on_ties),
        cmocka_unit_test(test_same_seed_same_tokens),
        cmocka_unit_test(test_temperature_matches_softmax),
        cmocka_unit_test(test_top_k_top_p_min_p_restrict_support),
        cmocka_unit_test(test_repeat_penalty),
        cmocka_unit_test(test_bad_parameters),
    };
    return cmocka_run_group_tests_name("sampler", tests, NULL, NULL);
}
