/* Vulkan paged attention over the shared case table (tests/common/attn_cases:
 * the pairwise cover of the DESIGN.md grid, the same double reference the CPU
 * is held to), through the public kvrt_kv_cache / kvrt_attention API on a
 * Vulkan context, plus long and odd cases. Validation layer on; once with all
 * device features (buffer device addresses) and once with none (descriptors). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_drivers.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cases.h"
#include "backend/backend.h"
#include "backend/vulkan/vk_backend.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return kvrt_test_vulkan_not_built_main();
}
#else


static uint32_t g_disabled;
static uint32_t g_max_shared; /* 0 = the device's; else less shared memory for the attention tiles */
static int32_t g_wide_max_len; /* longest wide-head context a pass runs (CI time: the first pass takes all) */


/* A public context around a Vulkan backend created with the validation layer. */
static kvrt_context *vk_ctx(void)
{
    kvrt_context *ctx = kvrt_calloc(NULL, 1, sizeof(*ctx));
    assert_non_null(ctx);
    ctx->be = kvrt_test_vk_open(g_disabled, 0, g_max_shared);
    assert_non_null(ctx->be);
    return ctx;
}

static void vk_ctx_close(kvrt_context *ctx)
{
    uint32_t n = kvrt_test_vk_close(ctx->be);
    kvrt_free(NULL, ctx);
    assert_int_equal(n, 0);
}

static void run_case(kvrt_context *ctx, const attn_case *c)
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
}

static void test_grid(void **state)
{
    const char *full_env = getenv("KVRT_TEST_FULL");
    bool full = full_env && strcmp(full_env, "1") == 0;
    size_t n = attn_case_grid(full, NULL, 0);
    attn_case *cases = calloc(n, sizeof(*cases));
    assert_non_null(cases);
    assert_int_equal(attn_case_grid(full, cases, n), n);
    kvrt_context *ctx = vk_ctx();
    for (size_t i = 0; i < n; i++)
        run_case(ctx, &cases[i]);
    print_message("%zu attention cases (%s) within max abs %.0e, nmse %.0e; %s\n", n,
                  full ? "full product" : "pairwise cover", ATTN_MAX_ABS_ERR, ATTN_MAX_NMSE,
                  kvrt_context_description(ctx));
    vk_ctx_close(ctx);
    free(cases);
}

/* Many split-K partitions, windows that release most of the table, head dims
 * off any vector width (odd ones with F16 share words between rows). */
static void test_long_and_odd(void **state)
{
    kvrt_context *ctx = vk_ctx();
    attn_case c;
    attn_case_make(&c, 64, 8, 2, 16, KVRT_DTYPE_F16, 0, 0, ATTN_DECODE, 3000, 11); /* 6 partitions of 512 */
    run_case(ctx, &c);
    attn_case_make(&c, 128, 4, 1, 32, KVRT_DTYPE_F32, 300, 7, ATTN_DECODE, 2000, 12);
    run_case(ctx, &c);
    attn_case_make(&c, 64, 4, 4, 8, KVRT_DTYPE_F32, 64, 4, ATTN_PREFILL, 600, 13);
    run_case(ctx, &c);
    const int32_t odd_hd[] = {8, 16, 20, 33};
    for (size_t i = 0; i < 4; i++) {
        attn_case_make(&c, odd_hd[i], 6, 3, 8, i % 2 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32, 1 + (int32_t)i, 2,
                       ATTN_DECODE, 0, 20 + i);
        run_case(ctx, &c);
        c.mode = ATTN_PREFILL;
        for (int32_t s = 0; s < c.num_seqs; s++)
            c.n_new[s] = c.seq_lens[s] < 30 ? c.seq_lens[s] : 30;
        run_case(ctx, &c);
    }
    vk_ctx_close(ctx);
}

/* Large head sizes (attn_case_wide): from head_dim 768 on, prefill used to
 * return wrong numbers with status OK on lavapipe. */
static void test_wide_heads(void **state)
{
    const char *full_env = getenv("KVRT_TEST_FULL");
    bool full = full_env && strcmp(full_env, "1") == 0;
    size_t n = attn_case_wide(full, NULL, 0);
    attn_case *cases = calloc(n, sizeof(*cases));
    assert_non_null(cases);
    assert_int_equal(attn_case_wide(full, cases, n), n);
    kvrt_context *ctx = vk_ctx();
    size_t ran = 0;
    for (size_t i = 0; i < n; i++) {
        if (full || cases[i].seq_lens[0] <= g_wide_max_len) {
            run_case(ctx, &cases[i]);
            ran++;
        }
    }
    print_message("%zu of %zu wide-head attention cases; %s\n", ran, n, kvrt_context_description(ctx));
    vk_ctx_close(ctx);
    free(cases);
}

static int pass_all(void **state)
{
    g_disabled = 0;
    g_max_shared = 0;
    g_wide_max_len = INT32_MAX;
    return 0;
}

static int pass_none(void **state)
{
    g_disabled = KVRT_TEST_ALL_FEATURES;
    g_max_shared = 0;
    g_wide_max_len = 200;
    return 0;
}

/* The 16 KiB of shared memory every Vulkan device has: one-row tiles and
 * dot products split 64 ways at head_dim 1024. */
static int pass_small_shared(void **state)
{
    g_disabled = 0;
    g_max_shared = 16 * 1024;
    g_wide_max_len = 200;
    return 0;
}

#define BOTH(t) cmocka_unit_test_setup(t, pass_all), cmocka_unit_test_setup(t, pass_none)

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        BOTH(test_grid),
        BOTH(test_long_and_odd),
        BOTH(test_wide_heads),
        cmocka_unit_test_setup(test_wide_heads, pass_small_shared),
    };
    return cmocka_run_group_tests_name("vulkan_attn_cases", tests, NULL, NULL);
}
#endif /* KVRT_HAVE_VULKAN_BACKEND */
