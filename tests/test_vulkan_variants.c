/* Feature variants of the Vulkan shaders compute what the portable builds
 * compute. Each pass opens a context with a different feature mask, so the
 * pipelines pick different builds of the same source:
 *   portable     every optional feature off, pools and weights through descriptors;
 *   narrow       16-bit storage (F16 KV loaded and stored as halves), descriptors;
 *   all          16-bit storage, subgroup reductions, buffer device addresses;
 *   portable bda buffer device addresses only.
 * KV blocks and attention outputs must be bitwise equal to the portable pass
 * (the variants change how values are loaded, not the arithmetic); matmul
 * with subgroup reductions sums in another order, so it is compared within a
 * tolerance, and bitwise where the reduction is the portable one. Each pass
 * also checks which variant actually ran. On lavapipe (pinned, as in CI)
 * every feature is present, so every variant runs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_drivers.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cases.h"
#include "backend/ops.h"
#include "backend/vulkan/vk_backend.h"
#include "common/quant.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return kvrt_test_vulkan_not_built_main();
}
#else

typedef struct variant_pass {
    const char *name;
    uint32_t disabled;
} variant_pass;

static const variant_pass g_passes[] = {
    {"portable", KVRT_TEST_ALL_FEATURES},
    {"narrow", KVRT_FEATURE_BUFFER_DEVICE_ADDRESS | KVRT_FEATURE_SUBGROUPS | KVRT_FEATURE_INT8},
    {"all", 0},
    {"portable bda", KVRT_FEATURE_FP16 | KVRT_FEATURE_SUBGROUPS | KVRT_FEATURE_INT8},
};
#define N_PASSES (sizeof(g_passes) / sizeof(g_passes[0]))

/* A context around a backend with the validation layer on (it also checks
 * that each variant's SPIR-V capabilities match the features kvrt enabled). */
static kvrt_context *open_ctx(const variant_pass *p)
{
    kvrt_context *ctx = calloc(1, sizeof(*ctx));
    assert_non_null(ctx);
    ctx->be = kvrt_test_vk_open(p->disabled, 0, 0);
    if (!ctx->be)
        fail_msg("vulkan backend (%s)", p->name);
    /* lavapipe has every optional feature: the variants must really run there */
    if (strstr(ctx->be->description, "llvmpipe"))
        assert_int_equal(kvrt_vk_features(ctx->be), KVRT_TEST_ALL_FEATURES & ~p->disabled);
    return ctx;
}

static void close_ctx(kvrt_context *ctx)
{
    uint32_t n = kvrt_test_vk_close(ctx->be);
    free(ctx);
    assert_int_equal(n, 0);
}

/* The pipeline `name` ran with exactly the variant the pass allows. */
static void check_variant(kvrt_context *ctx, const char *name, uint32_t variant_features)
{
    uint32_t used = ~0u;
    if (!kvrt_vk_pipeline_variant(ctx->be, name, &used))
        fail_msg("pipeline %s never ran", name);
    uint32_t expect = (kvrt_vk_features(ctx->be) & variant_features) == variant_features ? variant_features : 0;
    if (used != expect)
        fail_msg("pipeline %s: variant needing 0x%x ran, expected 0x%x", name, used, expect);
}

/* ---- attention and KV writes ---- */

typedef struct attn_result {
    float *out;           /* [num_tokens][n_heads][hd] */
    unsigned char *blocks; /* every block of the last layer: K then V */
    size_t block_bytes;
} attn_result;

static void run_attention(const variant_pass *p, const attn_case_data *d, attn_result *r)
{
    kvrt_context *ctx = open_ctx(p);
    /* segments of a few blocks: pool loads and stores cross segments (at
     * most 8 of them on the descriptor path) */
    size_t elem = d->c.dtype == KVRT_DTYPE_F16 ? 2 : 4;
    size_t block_bytes = (size_t)d->c.n_kv_heads * d->c.block_size * d->c.head_dim * elem;
    size_t per_seg = ((size_t)d->num_blocks + 5) / 6;
    kvrt_vk_set_max_segment(ctx->be, (per_seg * block_bytes + 255) / 256 * 256);
    kvrt_kv_cache *cache = NULL;
    kvrt_error err;
    kvrt_kv_cache_params cp = {2, d->c.n_kv_heads, d->c.head_dim, d->c.block_size, d->num_blocks, .dtype = d->c.dtype};
    if (kvrt_kv_cache_create(ctx, &cp, &cache, &err) != KVRT_OK)
        fail_msg("%s: cache: %s", p->name, err.message);
    kvrt_vk_set_max_segment(ctx->be, 0); /* the op's own buffers stay whole */
    if (kvrt_kv_cache_write(cache, 1, d->k_write, d->v_write, d->slot_mapping, d->n_write) != KVRT_OK)
        fail_msg("%s: write: %s", p->name, kvrt_kv_cache_message(cache));
    assert_int_equal(kvrt_kv_cache_block_bytes(cache), block_bytes);
    r->block_bytes = block_bytes;
    r->out = calloc(attn_case_out_len(d), sizeof(float));
    r->blocks = malloc(block_bytes * 2 * (size_t)d->num_blocks);
    assert_non_null(r->out);
    assert_non_null(r->blocks);
    bool canaries = false;
    if (attn_case_attend(cache, d, 1, 0, d->c.num_seqs, r->out, &canaries) != KVRT_OK)
        fail_msg("%s: attend: %s", p->name, kvrt_kv_cache_message(cache));
    assert_true(canaries);
    for (int32_t which = 0; which < 2; which++)
        for (int32_t b = 0; b < d->num_blocks; b++)
            assert_int_equal(kvrt_kv_cache_read_block(cache, 1, which, b,
                                                      r->blocks + ((size_t)which * d->num_blocks + b) * block_bytes,
                                                      block_bytes),
                             KVRT_OK);
    attn_check chk = attn_case_check(d, r->out);
    if (!attn_check_ok(&chk))
        fail_msg("%s: max abs %.3g nmse %.3g non-finite %lld", p->name, chk.max_abs, chk.nmse,
                 (long long)chk.n_nonfinite);
    bool bda = !(p->disabled & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS) &&
               (kvrt_vk_features(ctx->be) & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS);
    check_variant(ctx, bda ? "kv_write (bda)" : "kv_write", KVRT_FEATURE_FP16);
    const char *attn = d->c.mode == ATTN_DECODE ? (bda ? "attn_decode (bda)" : "attn_decode")
                                                : (bda ? "attn_prefill (bda)" : "attn_prefill");
    check_variant(ctx, attn, KVRT_FEATURE_FP16);
    kvrt_kv_cache_destroy(cache);
    close_ctx(ctx);
}

static void attention_case(attn_mode mode, int32_t head_dim, int32_t window, int32_t sinks, uint64_t seed)
{
    attn_case c;
    /* 8 query heads over 2 KV heads, F16 KV, lengths crossing blocks and partitions */
    attn_case_make(&c, head_dim, 8, 2, 8, KVRT_DTYPE_F16, window, sinks, mode, 0, seed);
    if (mode == ATTN_PREFILL)
        for (int32_t s = 0; s < c.num_seqs; s++)
            c.n_new[s] = c.seq_lens[s] < 40 ? c.seq_lens[s] : 40;
    char name[160];
    attn_case_name(&c, name, sizeof(name));
    attn_case_data d;
    assert_true(attn_case_build(&c, &d));
    attn_result base;
    run_attention(&g_passes[0], &d, &base);
    size_t n_out = attn_case_out_len(&d), n_bytes = base.block_bytes * 2 * (size_t)d.num_blocks;
    for (size_t i = 1; i < N_PASSES; i++) {
        attn_result r;
        run_attention(&g_passes[i], &d, &r);
        if (memcmp(r.blocks, base.blocks, n_bytes) != 0)
            fail_msg("%s: %s pass stored different KV bytes than the portable pass", name, g_passes[i].name);
        if (memcmp(r.out, base.out, n_out * sizeof(float)) != 0)
            fail_msg("%s: %s pass output differs from the portable pass", name, g_passes[i].name);
        free(r.out), free(r.blocks);
    }
    free(base.out), free(base.blocks);
    attn_case_free(&d);
}

static void test_decode_f16(void **state)
{
    attention_case(ATTN_DECODE, 64, 0, 0, 11);
    /* odd head_dim: rows share 32-bit words, so kv_write stores lone halves */
    attention_case(ATTN_DECODE, 33, 24, 3, 12);
}

static void test_prefill_f16(void **state)
{
    attention_case(ATTN_PREFILL, 64, 0, 0, 13);
    attention_case(ATTN_PREFILL, 33, 24, 3, 14);
}

/* ---- matmul ---- */

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static float rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

enum { MM_OUT = 150, MM_IN = 320, MM_TOK = 3 };

/* y = W x through the backend's matmul; `spread` puts the weights in
 * segments of a few rows, so they reach the shader through the BDA table or
 * one dispatch per segment. */
static void run_matmul(const variant_pass *p, kvrt_dtype type, const void *w, size_t w_bytes, const float *x,
                       bool spread, float *y)
{
    kvrt_context *ctx = open_ctx(p);
    kvrt_backend *be = ctx->be;
    if (spread)
        kvrt_vk_set_max_segment(be, (kvrt_dtype_row_bytes(type, MM_IN) * 16 + 255) / 256 * 256);
    kvrt_buffer *wb, *xb, *yb;
    assert_int_equal(kvrt_op_buffer_create(be, w_bytes, 0, &wb), KVRT_OK);
    kvrt_vk_set_max_segment(be, 0);
    assert_int_equal(kvrt_op_buffer_create(be, sizeof(float) * MM_TOK * MM_IN, 0, &xb), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, sizeof(float) * MM_TOK * MM_OUT, 0, &yb), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, wb, 0, w, w_bytes), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, xb, 0, x, sizeof(float) * MM_TOK * MM_IN), KVRT_OK);
    kvrt_view wv = {wb, 0}, xv = {xb, 0}, yv = {yb, 0};
    if (kvrt_op_matmul(be, type, wv, MM_OUT, MM_IN, xv, MM_IN, yv, MM_OUT, MM_TOK) != KVRT_OK)
        fail_msg("%s: matmul: %s", p->name, be->err.message);
    assert_int_equal(kvrt_op_buffer_download(be, yb, 0, y, sizeof(float) * MM_TOK * MM_OUT), KVRT_OK);
    bool bda = spread && (kvrt_vk_features(be) & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS);
    check_variant(ctx, bda ? "matmul (bda)" : "matmul", KVRT_FEATURE_SUBGROUPS);
    kvrt_op_buffer_destroy(be, wb), kvrt_op_buffer_destroy(be, xb), kvrt_op_buffer_destroy(be, yb);
    close_ctx(ctx);
}

static void matmul_type(kvrt_dtype type, bool spread)
{
    size_t row = kvrt_dtype_row_bytes(type, MM_IN), w_bytes = row * MM_OUT;
    float *wf = malloc(sizeof(float) * MM_IN), *x = malloc(sizeof(float) * MM_TOK * MM_IN);
    unsigned char *w = malloc(w_bytes);
    float *base = malloc(sizeof(float) * MM_TOK * MM_OUT), *y = malloc(sizeof(float) * MM_TOK * MM_OUT);
    assert_true(wf && x && w && base && y);
    for (int32_t o = 0; o < MM_OUT; o++) {
        for (int32_t i = 0; i < MM_IN; i++)
            wf[i] = rnd();
        kvrt_quantize_row(type, wf, w + (size_t)o * row, MM_IN);
    }
    for (int32_t i = 0; i < MM_TOK * MM_IN; i++)
        x[i] = rnd();
    run_matmul(&g_passes[0], type, w, w_bytes, x, spread, base);
    double max_ref = 0;
    for (int32_t i = 0; i < MM_TOK * MM_OUT; i++) {
        assert_true(isfinite(base[i]));
        max_ref = fmax(max_ref, fabs(base[i]));
    }
    assert_true(max_ref > 0.5);
    for (size_t p = 1; p < N_PASSES; p++) {
        run_matmul(&g_passes[p], type, w, w_bytes, x, spread, y);
        bool sg = !(g_passes[p].disabled & KVRT_FEATURE_SUBGROUPS);
        for (int32_t i = 0; i < MM_TOK * MM_OUT; i++) {
            /* the same sum in another order: a few ulps of the row's magnitude */
            double tol = sg ? 1e-6 * max_ref * sqrt((double)MM_IN) : 0.0;
            if (!(fabs((double)y[i] - base[i]) <= tol))
                fail_msg("%s %s%s: y[%d] = %.9g, portable %.9g", kvrt_dtype_name(type), g_passes[p].name,
                         spread ? " (segmented)" : "", i, y[i], base[i]);
        }
    }
    free(wf), free(x), free(w), free(base), free(y);
}

static void test_matmul(void **state)
{
    const kvrt_dtype types[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        matmul_type(types[t], false);
        matmul_type(types[t], true);
    }
}

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_f16),
        cmocka_unit_test(test_prefill_f16),
        cmocka_unit_test(test_matmul),
    };
    return cmocka_run_group_tests_name("vulkan_variants", tests, NULL, NULL);
}
#endif /* KVRT_HAVE_VULKAN_BACKEND */
