/* F16 KV saturates (DESIGN.md "The block layout"): a K or V value beyond
 * +-65504, infinities included, is stored as +-65504 on every backend, so
 * the backends keep byte-identical blocks on out-of-range input (before, the
 * CPU, Vulkan and OpenCL disagreed: a finite wrong value, NaN, 0). Each
 * backend built in writes the same tokens through the public attention API;
 * the blocks read back must hold exactly the expected F16 bits and be
 * byte-identical across backends (Vulkan also without 16-bit storage, and
 * with an odd head_dim, whose rows share words). NaN stays a NaN (its
 * payload is the driver's: PoCL stores every NaN as 7fff). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp16.h"
#include "kvrt.h"
#include "test_drivers.h"

enum { N_KV_HEADS = 2, BLOCK = 8, N_TOKENS = 8 };

static const float VALUES[] = {0.0f, 1.5f, -2.25f, 6e-8f, 65504.0f, -65504.0f, 65505.0f, 65519.0f,
                               65520.0f, -65520.0f, 70000.0f, -1e6f, 1e30f, -3.4e38f, INFINITY, -INFINITY,
                               NAN, 0.1f, -0.0f, 1000.25f};
#define N_VALUES ((int)(sizeof(VALUES) / sizeof(VALUES[0])))

/* The bits the rule gives: round to nearest even, then saturate. */
static uint16_t expected_bits(float x)
{
    if (x > 65504.0f)
        return 0x7bff;
    if (x < -65504.0f)
        return 0xfbff;
    return kvrt_f32_to_fp16(x);
}

static float value_at(int t, int h, int d, int head_dim, int which)
{
    return VALUES[(t * 7 + h * 3 + d + which * 5 + t * head_dim) % N_VALUES];
}

typedef struct backend_case {
    const char *name;
    kvrt_backend_kind kind;
    uint32_t disabled;
} backend_case;

static const backend_case CASES[] = {
    {"cpu", KVRT_BACKEND_CPU, 0},
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    {"vulkan", KVRT_BACKEND_VULKAN, 0},
    {"vulkan (no 16-bit storage)", KVRT_BACKEND_VULKAN, KVRT_FEATURE_FP16},
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    {"opencl", KVRT_BACKEND_OPENCL, 0},
#endif
};
#define N_CASES ((int)(sizeof(CASES) / sizeof(CASES[0])))

/* Writes N_TOKENS tokens into block 1 on the backend and reads K and V back. */
static void write_and_read(const backend_case *c, int head_dim, uint16_t *k_out, uint16_t *v_out, size_t bytes)
{
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = c->kind;
    cp.n_threads = 1;
    cp.disabled_features = c->disabled;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    if (kvrt_context_create(&cp, &ctx, &err) != KVRT_OK)
        fail_msg("%s is built in but cannot start: %s", c->name, err.message);
    kvrt_kv_cache_params kp = {.n_layers = 1, .n_kv_heads = N_KV_HEADS, .head_dim = head_dim, .block_size = BLOCK,
                               .num_blocks = 3, .dtype = KVRT_DTYPE_F16};
    kvrt_kv_cache *cache = NULL;
    if (kvrt_kv_cache_create(ctx, &kp, &cache, &err) != KVRT_OK)
        fail_msg("%s: cache: %s", c->name, err.message);
    assert_int_equal(kvrt_kv_cache_block_bytes(cache), bytes);
    size_t row = (size_t)N_KV_HEADS * (size_t)head_dim;
    float *k = malloc(N_TOKENS * row * sizeof(float)), *v = malloc(N_TOKENS * row * sizeof(float));
    int32_t slots[N_TOKENS];
    for (int t = 0; t < N_TOKENS; t++) {
        slots[t] = BLOCK + (N_TOKENS - 1 - t); /* block 1, in reverse order */
        for (int h = 0; h < N_KV_HEADS; h++)
            for (int d = 0; d < head_dim; d++) {
                k[(size_t)t * row + (size_t)h * head_dim + d] = value_at(t, h, d, head_dim, 0);
                v[(size_t)t * row + (size_t)h * head_dim + d] = value_at(t, h, d, head_dim, 1);
            }
    }
    if (kvrt_kv_cache_write(cache, 0, k, v, slots, N_TOKENS) != KVRT_OK)
        fail_msg("%s: write: %s", c->name, kvrt_kv_cache_message(cache));
    assert_int_equal(kvrt_kv_cache_read_block(cache, 0, 0, 1, k_out, bytes), KVRT_OK);
    assert_int_equal(kvrt_kv_cache_read_block(cache, 0, 1, 1, v_out, bytes), KVRT_OK);
    free(k);
    free(v);
    kvrt_kv_cache_destroy(cache);
    kvrt_context_destroy(ctx);
}

static int is_nan_bits(uint16_t h)
{
    return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
}

/* Every stored half is the rule's bits (NaN: some NaN). Layout [head][slot][d]. */
static void check_bits(const char *name, const uint16_t *blk, int head_dim, int which)
{
    for (int t = 0; t < N_TOKENS; t++)
        for (int h = 0; h < N_KV_HEADS; h++)
            for (int d = 0; d < head_dim; d++) {
                int off = N_TOKENS - 1 - t;
                uint16_t got = blk[((size_t)h * BLOCK + (size_t)off) * (size_t)head_dim + (size_t)d];
                float x = value_at(t, h, d, head_dim, which);
                if (isnan(x)) {
                    if (!is_nan_bits(got))
                        fail_msg("%s %c token %d head %d d %d: NaN stored as %04x", name, which ? 'V' : 'K', t, h,
                                 d, got);
                    continue;
                }
                if (got != expected_bits(x))
                    fail_msg("%s %c token %d head %d d %d: %g stored as %04x, want %04x", name, which ? 'V' : 'K', t,
                             h, d, (double)x, got, expected_bits(x));
            }
}

static void run_head_dim(int head_dim)
{
    kvrt_test_pin_gpu_drivers();
    size_t bytes = (size_t)N_KV_HEADS * BLOCK * (size_t)head_dim * sizeof(uint16_t);
    uint16_t *k[N_CASES], *v[N_CASES];
    for (int i = 0; i < N_CASES; i++) {
        k[i] = malloc(bytes);
        v[i] = malloc(bytes);
        write_and_read(&CASES[i], head_dim, k[i], v[i], bytes);
        check_bits(CASES[i].name, k[i], head_dim, 0);
        check_bits(CASES[i].name, v[i], head_dim, 1);
        /* byte-identical but for NaN payloads (PoCL stores every NaN as 7fff): checked as NaN above */
        for (size_t e = 0; i > 0 && e < bytes / 2; e++)
            if ((k[i][e] != k[0][e] && !is_nan_bits(k[0][e])) || (v[i][e] != v[0][e] && !is_nan_bits(v[0][e])))
                fail_msg("%s blocks differ from the CPU's (head_dim %d) at half %zu: K %04x vs %04x, V %04x vs %04x",
                         CASES[i].name, head_dim, e, k[i][e], k[0][e], v[i][e], v[0][e]);
        print_message("  %s, head_dim %d: blocks as the rule says\n", CASES[i].name, head_dim);
    }
    for (int i = 0; i < N_CASES; i++) {
        free(k[i]);
        free(v[i]);
    }
}

static void test_even_head_dim(void **state)
{
    (void)state;
    run_head_dim(6);
}

static void test_odd_head_dim(void **state)
{
    (void)state;
    run_head_dim(5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_even_head_dim),
        cmocka_unit_test(test_odd_head_dim),
    };
    return cmocka_run_group_tests_name("kv_f16_saturate", tests, NULL, NULL);
}
