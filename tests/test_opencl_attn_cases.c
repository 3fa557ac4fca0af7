/* OpenCL paged attention on PoCL over the shared case table
 * (tests/common/attn_cases.h: the pairwise cover by default, the full product
 * with KVRT_TEST_FULL=1), through the standalone attention API, against the
 * double reference: max abs <= 1e-4, NMSE <= 1e-6, canaries intact. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cases.h"
#include "test_opencl_util.h"

static void run_case(kvrt_context *ctx, const attn_case *c, double *worst_abs, double *worst_nmse)
{
    char name[256], msg[512];
    attn_case_name(c, name, sizeof(name));
    attn_case_data d;
    assert_true(attn_case_build(c, &d));
    attn_check r;
    bool ok = attn_case_run(ctx, &d, NULL, &r, msg, sizeof(msg));
    if (!ok || getenv("KVRT_TEST_VERBOSE"))
        print_error("%s %s: %s\n", ok ? "ok" : "FAIL", name, msg);
    attn_case_free(&d);
    assert_true(ok);
    *worst_abs = r.max_abs > *worst_abs ? r.max_abs : *worst_abs;
    *worst_nmse = r.nmse > *worst_nmse ? r.nmse : *worst_nmse;
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
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    double worst_abs = 0, worst_nmse = 0;
    for (size_t i = 0; i < n; i++)
        run_case(ctx, &cases[i], &worst_abs, &worst_nmse);
    print_message("%zu attention cases (%s) on OpenCL: worst max abs %.2e, worst nmse %.2e\n", n,
                  full ? "full product" : "pairwise cover", worst_abs, worst_nmse);
    kvrt_context_destroy(ctx);
    free(cases);
}

/* Many split-K partitions, odd head dims, windows releasing most of the table. */
static void test_long_and_odd_cases(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    double worst_abs = 0, worst_nmse = 0;
    attn_case c;
    attn_case_make(&c, 64, 8, 2, 16, KVRT_DTYPE_F16, 0, 0, ATTN_DECODE, 3000, 11); /* 12 partitions */
    run_case(ctx, &c, &worst_abs, &worst_nmse);
    attn_case_make(&c, 128, 4, 1, 32, KVRT_DTYPE_F32, 300, 7, ATTN_DECODE, 2000, 12);
    run_case(ctx, &c, &worst_abs, &worst_nmse);
    attn_case_make(&c, 64, 4, 4, 8, KVRT_DTYPE_F32, 64, 4, ATTN_PREFILL, 600, 13);
    run_case(ctx, &c, &worst_abs, &worst_nmse);
    const int32_t odd_hd[] = {8, 20, 33};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(odd_hd); i++) {
        attn_case_make(&c, odd_hd[i], 6, 3, 8, i % 2 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32, 1 + (int32_t)i, 2,
                       i % 2 ? ATTN_PREFILL : ATTN_DECODE, 0, 20 + i);
        run_case(ctx, &c, &worst_abs, &worst_nmse);
    }
    print_message("long and odd cases on OpenCL: worst max abs %.2e, worst nmse %.2e\n", worst_abs, worst_nmse);
    kvrt_context_destroy(ctx);
}

/* Large head sizes (attn_case_wide). */
static void test_wide_heads(void **state)
{
    (void)state;
    const char *full_env = getenv("KVRT_TEST_FULL");
    bool full = full_env && strcmp(full_env, "1") == 0;
    size_t n = attn_case_wide(full, NULL, 0);
    attn_case *cases = calloc(n, sizeof(*cases));
    assert_non_null(cases);
    assert_int_equal(attn_case_wide(full, cases, n), n);
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    double worst_abs = 0, worst_nmse = 0;
    for (size_t i = 0; i < n; i++)
        run_case(ctx, &cases[i], &worst_abs, &worst_nmse);
    print_message("%zu wide-head attention cases on OpenCL: worst max abs %.2e, worst nmse %.2e\n", n, worst_abs,
                  worst_nmse);
    kvrt_context_destroy(ctx);
    free(cases);
}

int main(void)
{
    cl_test_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_long_and_odd_cases),
        cmocka_unit_test(test_wide_heads),
    };
    return cmocka_run_group_tests_name("opencl attention cases", tests, NULL, NULL);
}
