/* Paged attention on every backend and feature pass (test_passes.c) over
 * the shared case table (tests/common/attn_cases.h): the pairwise cover of
 * DESIGN.md's grid by default, the full product with KVRT_TEST_FULL=1, then
 * long contexts (many split-K partitions), odd head sizes and windows that
 * release most of the table, and wide heads (head_dim 512 to 1024, issue
 * 19). Each case's data and double reference are made once and every pass
 * is held to max abs <= 1e-4, NMSE <= 1e-6 with its output's canaries
 * intact; the CPU at 2 threads matches 1 thread bit for bit. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cases.h"
#include "test_passes.h"

static double g_worst_abs[KVRT_TEST_MAX_PASSES], g_worst_nmse[KVRT_TEST_MAX_PASSES];

static void run_case(const attn_case *c)
{
    kvrt_test_attn_case_everywhere(c, g_worst_abs, g_worst_nmse);
}

static void report(const char *what, size_t n)
{
    for (int p = 0; p < kvrt_test_n_passes; p++)
        print_message("%s: %zu cases on %s, worst max abs %.2e, worst nmse %.2e\n", what, n,
                      kvrt_test_pass_list[p].name, g_worst_abs[p], g_worst_nmse[p]);
    memset(g_worst_abs, 0, sizeof(g_worst_abs));
    memset(g_worst_nmse, 0, sizeof(g_worst_nmse));
}

static void test_grid(void **state)
{
    (void)state;
    const char *full_env = getenv("KVRT_TEST_FULL");
    bool full = full_env && strcmp(full_env, "1") == 0;
    size_t n = attn_case_grid(full, NULL, 0);
    attn_case *cases = calloc(n, sizeof(*cases));
    assert_non_null(cases);
    assert_int_equal(attn_case_grid(full, cases, n), n);
    for (size_t i = 0; i < n; i++)
        run_case(&cases[i]);
    report(full ? "full product" : "pairwise cover", n);
    free(cases);
}

/* Contexts with many split-K partitions, small and odd head dims, windows
 * that release most of the table, a whole prompt in one prefill. */
static void test_long_and_odd_cases(void **state)
{
    (void)state;
    size_t n = 0;
    attn_case c;
    attn_case_make(&c, 64, 8, 2, 16, KVRT_DTYPE_F16, 0, 0, ATTN_DECODE, 5000, 11); /* 10 partitions of 512 */
    run_case(&c), n++;
    attn_case_make(&c, 128, 4, 1, 32, KVRT_DTYPE_F32, 300, 7, ATTN_DECODE, 3000, 12);
    run_case(&c), n++;
    attn_case_make(&c, 64, 4, 4, 8, KVRT_DTYPE_F32, 64, 4, ATTN_PREFILL, 900, 13);
    run_case(&c), n++;
    /* head dims off the vector width (odd ones with F16 share words between
     * rows), window 1 and up (each query sees itself and the sinks) */
    const int32_t odd_hd[] = {8, 16, 20, 33};
    for (size_t i = 0; i < 4; i++) {
        attn_case_make(&c, odd_hd[i], 6, 3, 8, i % 2 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32, 1 + (int32_t)i, 2,
                       ATTN_DECODE, 0, 20 + i);
        run_case(&c), n++;
        c.mode = ATTN_PREFILL;
        for (int32_t s = 0; s < c.num_seqs; s++)
            c.n_new[s] = c.seq_lens[s] < 30 ? c.seq_lens[s] : 30;
        run_case(&c), n++;
    }
    attn_case_make(&c, 96, 8, 2, 16, KVRT_DTYPE_F16, 0, 0, ATTN_PREFILL, 150, 30);
    c.n_new[0] = 150; /* every position a query */
    run_case(&c), n++;
    report("long and odd", n);
}

/* Large head sizes (attn_case_wide): head_dim 512, 576, 768 and 1024,
 * prefill and decode, at contexts on both sides of where Vulkan prefill used
 * to return wrong numbers with status OK (issue 19: from head_dim 768 at
 * 127 keys); KVRT_TEST_FULL=1 adds head sizes, lengths up to 2,100 keys
 * (many split-K partitions), F16, GQA and windows. */
static void test_wide_heads(void **state)
{
    (void)state;
    const char *full_env = getenv("KVRT_TEST_FULL");
    bool full = full_env && strcmp(full_env, "1") == 0;
    size_t n = attn_case_wide(full, NULL, 0);
    attn_case *cases = calloc(n, sizeof(*cases));
    assert_non_null(cases);
    assert_int_equal(attn_case_wide(full, cases, n), n);
    for (size_t i = 0; i < n; i++)
        run_case(&cases[i]);
    report(full ? "wide heads (full sweep)" : "wide heads", n);
    free(cases);
}

/* One row of a KV-type table: a case shape run once per KV type. */
typedef struct kv_case {
    int32_t hd, n_heads, n_kv, bs, window, sinks, len;
    attn_mode mode;
} kv_case;

/* Runs every case of the table in each of the two types (seeds seed + i +
 * 100 * type); returns the number of cases run. */
static size_t run_kv_table(const kv_case *cases, size_t n_cases, const kvrt_dtype types[2], size_t seed)
{
    size_t n = 0;
    for (size_t t = 0; t < 2; t++) {
        for (size_t i = 0; i < n_cases; i++, n++) {
            attn_case c;
            attn_case_make(&c, cases[i].hd, cases[i].n_heads, cases[i].n_kv, cases[i].bs, types[t],
                           cases[i].window, cases[i].sinks, cases[i].mode, cases[i].len, seed + i + 100 * t);
            run_case(&c);
        }
    }
    return n;
}

/* Quantized KV (q8_0, q4_0): kernels against the double reference fed the
 * same dequantized values (tests/common/ref_kvquant.c), so the bound is the
 * same as for F32/F16 KV. Head dims multiples of 32 (the scale group), GQA
 * and MHA, every block size, a window with sinks, split-K partitions, a
 * batch of random lengths, decode and prefill. */
static void test_quantized_kv(void **state)
{
    (void)state;
    static const kv_case cases[] = {
        {64, 8, 2, 16, 0, 0, 300, ATTN_DECODE},   {128, 4, 4, 8, 0, 0, 0, ATTN_DECODE},
        {32, 6, 3, 32, 40, 3, 129, ATTN_DECODE},  {96, 8, 1, 16, 0, 0, 1100, ATTN_DECODE},
        {64, 8, 2, 16, 0, 0, 0, ATTN_PREFILL},    {128, 4, 1, 8, 64, 4, 200, ATTN_PREFILL},
        {32, 2, 2, 32, 0, 0, 77, ATTN_PREFILL},
    };
    static const kvrt_dtype types[2] = {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0};
    report("quantized KV", run_kv_table(cases, sizeof(cases) / sizeof(cases[0]), types, 40));
}

/* K and V in different types (keys are the sensitive half), against the
 * double reference fed each half's stored values, on every pass. Small
 * cases: the kernels are the single-type ones, reached per half. CI runs
 * the pairs (a, a + 1) and (a, a + 3) of f32, f16, q8_0, q4_0, fp8,
 * fp8_e5m2 (each type twice as K and twice as V: OpenCL builds a program per
 * pair, slow under ASan on a cold PoCL cache); KVRT_TEST_FULL=1 every ordered
 * pair that differs. */
static void test_mixed_kv(void **state)
{
    (void)state;
    static const kvrt_dtype T[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0,
                                   KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E5M2};
    const char *full_env = getenv("KVRT_TEST_FULL");
    bool full = full_env && strcmp(full_env, "1") == 0;
    size_t n = 0;
    for (size_t a = 0; a < 6; a++) {
        for (size_t b = 0; b < 6; b++) {
            if (a == b || (!full && b != (a + 1) % 6 && b != (a + 3) % 6))
                continue;
            attn_case c;
            attn_mode mode = n % 2 ? ATTN_PREFILL : ATTN_DECODE;
            attn_case_make(&c, n % 3 ? 64 : 32, 4, 2, n % 2 ? 16 : 8, T[a], 0, 0, mode, n % 4 ? 70 : 600,
                           500 + n);
            c.v_dtype = T[b];
            run_case(&c), n++;
        }
    }
    report("mixed K/V types", n);
}

/* fp8 (E4M3) and fp8_e5m2 KV: as the quantized cases, plus head sizes
 * that are not a multiple of 32 (fp8 has no group: stories260K's 8, 80);
 * the case values (uniform in [-1, 1]) reach E4M3's subnormals. */
static void test_fp8_kv(void **state)
{
    (void)state;
    static const kv_case cases[] = {
        {64, 8, 2, 16, 0, 0, 300, ATTN_DECODE}, {8, 4, 4, 8, 0, 0, 0, ATTN_DECODE},
        {80, 8, 1, 32, 40, 3, 1100, ATTN_DECODE}, {64, 8, 2, 16, 0, 0, 0, ATTN_PREFILL},
        {8, 2, 1, 8, 64, 4, 200, ATTN_PREFILL},  {128, 4, 4, 16, 0, 0, 77, ATTN_PREFILL},
    };
    static const kvrt_dtype types[2] = {KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E5M2};
    report("fp8 KV", run_kv_table(cases, sizeof(cases) / sizeof(cases[0]), types, 700));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_long_and_odd_cases),
        cmocka_unit_test(test_wide_heads),
        cmocka_unit_test(test_quantized_kv),
        cmocka_unit_test(test_mixed_kv),
        cmocka_unit_test(test_fp8_kv),
    };
    return cmocka_run_group_tests_name("attention cases", tests, kvrt_test_passes_setup, kvrt_test_passes_teardown);
}
