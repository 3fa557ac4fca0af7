/* Vulkan matmul across the GEMV (decode) / tiled GEMM (prefill) switch:
 * every weight type, token counts on both sides of the threshold and of the
 * 32-token tile edge, output rows that are not a multiple of the 64-row tile,
 * strided inputs and outputs, weights at an offset and spanning many small
 * segments. Checked against a double reference on the stored weights
 * (DESIGN.md: max abs <= 1e-4, NMSE <= 1e-6), against the GEMV path token by
 * token, for non-finite values and for untouched canaries and stride gaps.
 * Two passes: all device features (segments through buffer device addresses)
 * and every KVRT_FEATURE_* disabled (one dispatch per segment). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_buffers.h"
#include "test_drivers.h"
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ops.h"
#include "backend/vulkan/vk_backend.h"
#include "common/quant.h"
#include "ref_ops.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return kvrt_test_vulkan_not_built_main();
}
#else

#define CANARY KVRT_TEST_CANARY
#define N_CANARY KVRT_TEST_N_CANARY
#define MAX_ABS 1e-4      /* DESIGN.md, vs the double reference */
#define MAX_NMSE 1e-6
#define GEMV_TILED_ABS 1e-4 /* both F32 accumulations, in different orders */

static uint32_t g_disabled;
static kvrt_backend *g_be;
static int g_teardown_failures; /* cmocka does not count failed group teardowns */
static ref_rng g_rng;

static int open_pass(uint32_t disabled)
{
    g_disabled = disabled;
    ref_rng_seed(&g_rng, 20261128u);
    g_be = kvrt_test_vk_open(disabled, 0, 0);
    return g_be ? 0 : -1;
}

static int setup_all(void **state)
{
    return open_pass(0);
}

static int setup_none(void **state)
{
    return open_pass(KVRT_TEST_ALL_FEATURES);
}

static int teardown(void **state)
{
    uint32_t n = kvrt_test_vk_close(g_be);
    g_be = NULL;
    if (n) {
        g_teardown_failures++;
        return -1;
    }
    return 0;
}

static kvrt_buffer *up(const void *data, size_t bytes)
{
    return kvrt_test_up(g_be, data, bytes);
}

static kvrt_buffer *out_buf(size_t n)
{
    return kvrt_test_out_buf(g_be, n);
}

static float *down(kvrt_buffer *b, size_t n)
{
    return kvrt_test_down(g_be, b, n);
}

/* One matmul problem: W [n_out][n_in] of type t at byte w_off of its buffer
 * (w_seg: that buffer's segment size, 0 = device limits), x and y with
 * strides wider than their rows. */
typedef struct gemm_case {
    kvrt_dtype t;
    int64_t n_out, n_in;
    int32_t n_tok;
    size_t w_off;
    size_t w_seg;
    float x_amp; /* x uniform in [-x_amp, x_amp] */
} gemm_case;

/* Weights of random values stored as c->t (GGUF block layouts). */
static void *make_weights(const gemm_case *c, size_t *bytes)
{
    size_t rb = kvrt_dtype_row_bytes(c->t, c->n_in);
    *bytes = rb * (size_t)c->n_out;
    char *w = malloc(*bytes);
    float *row = malloc(sizeof(float) * (size_t)c->n_in);
    for (int64_t r = 0; r < c->n_out; r++) {
        ref_fill(&g_rng, row, c->n_in, -1.0f, 1.0f);
        kvrt_quantize_row(c->t, row, w + (size_t)r * rb, c->n_in);
    }
    free(row);
    return w;
}

/* Tokens also run alone on the GEMV path: both ends and both sides of the
 * first tile edge (all of them would triple the suite's time on lavapipe). */
static bool gemv_token(int32_t k, int32_t n_tok)
{
    return k == 0 || k == n_tok - 1 || k == 31 || k == 32;
}

/* y for all tokens in one call (tiled at and above the threshold), then
 * some tokens alone (the GEMV path) into a second output. */
static void check_case(const gemm_case *c)
{
    const int64_t xs = c->n_in + 5, ys = c->n_out + 3;
    size_t wbytes;
    void *w = make_weights(c, &wbytes);
    float *x = malloc(sizeof(float) * (size_t)(c->n_tok * xs));
    ref_fill(&g_rng, x, c->n_tok * xs, -c->x_amp, c->x_amp);
    kvrt_buffer *xb = up(x, sizeof(float) * (size_t)(c->n_tok * xs));
    size_t n_y = (size_t)((c->n_tok - 1) * ys + c->n_out);
    kvrt_buffer *yb = out_buf(n_y), *gb = out_buf(n_y);
    kvrt_vk_set_max_segment(g_be, c->w_seg); /* the weights only: x and y views need one segment */
    kvrt_buffer *wb = up(NULL, wbytes + c->w_off);
    kvrt_vk_set_max_segment(g_be, 0);
    assert_int_equal(kvrt_op_buffer_upload(g_be, wb, c->w_off, w, wbytes), KVRT_OK);
    kvrt_view wv = {wb, c->w_off}, xv = {xb, 0};
    assert_int_equal(kvrt_op_matmul(g_be, c->t, wv, c->n_out, c->n_in, xv, xs, (kvrt_view){yb, 0}, ys, c->n_tok),
                     KVRT_OK);
    assert_int_equal(kvrt_op_begin(g_be), KVRT_OK);
    for (int32_t k = 0; k < c->n_tok; k++) {
        if (!gemv_token(k, c->n_tok))
            continue;
        kvrt_view xk = {xb, sizeof(float) * (size_t)(k * xs)}, gk = {gb, sizeof(float) * (size_t)(k * ys)};
        assert_int_equal(kvrt_op_matmul(g_be, c->t, wv, c->n_out, c->n_in, xk, xs, gk, ys, 1), KVRT_OK);
    }
    assert_int_equal(kvrt_op_submit(g_be), KVRT_OK);
    float *y = down(yb, n_y), *g = down(gb, n_y);

    double *want = malloc(sizeof(double) * (size_t)(c->n_tok * c->n_out));
    ref_matmul(c->t, w, c->n_out, c->n_in, x, xs, c->n_tok, want);
    ref_err e = ref_compare(y, ys, want, c->n_out, c->n_tok, c->n_out);
    double gap = 0, eg_max = 0;
    int64_t eg_nonfinite = 0;
    for (int32_t k = 0; k < c->n_tok; k++) {
        if (gemv_token(k, c->n_tok)) {
            ref_err eg = ref_compare(g + k * ys, ys, want + k * c->n_out, c->n_out, 1, c->n_out);
            eg_max = fmax(eg_max, eg.max_abs);
            eg_nonfinite += eg.nonfinite;
            for (int64_t o = 0; o < c->n_out; o++)
                gap = fmax(gap, fabs((double)y[k * ys + o] - g[k * ys + o]));
        }
        for (int64_t o = c->n_out; k + 1 < c->n_tok && o < ys; o++) /* stride gaps untouched */
            assert_int_equal(((uint32_t *)y)[k * ys + o], CANARY);
    }
    print_message("  %-4s %3" PRId64 " x %3" PRId64 " x %2d tok%s: nmse %.1e max %.1e, gemv max %.1e, gap %.1e\n",
                  kvrt_dtype_name(c->t), c->n_out, c->n_in, c->n_tok, c->w_seg ? " (segments)" : "", e.nmse,
                  e.max_abs, eg_max, gap);
    assert_int_equal(e.nonfinite, 0);
    assert_int_equal(eg_nonfinite, 0);
    assert_true(e.nmse <= MAX_NMSE && e.max_abs <= MAX_ABS);
    assert_true(eg_max <= MAX_ABS);
    assert_true(gap <= GEMV_TILED_ABS);
    kvrt_op_buffer_destroy(g_be, wb);
    kvrt_op_buffer_destroy(g_be, xb);
    kvrt_op_buffer_destroy(g_be, yb);
    kvrt_op_buffer_destroy(g_be, gb);
    free(w), free(x), free(y), free(g), free(want);
}

static const kvrt_dtype ALL_TYPES[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_BF16, KVRT_DTYPE_Q8_0,
                                       KVRT_DTYPE_Q4_0};
/* around the GEMV/tiled threshold (4 tokens) and the 32-token tile */
static const int32_t TOKENS[] = {1, 3, 4, 7, 9, 31, 33, 64, 70};

static bool tiled_created(const char *name)
{
    uint32_t f;
    return kvrt_vk_pipeline_variant(g_be, name, &f);
}

/* Single-token calls (decode) stay on GEMV; a prefill-sized batch takes
 * the tiled pipeline. Runs first in each pass, on a fresh backend. */
static void test_path_choice(void **state)
{
    gemm_case c = {KVRT_DTYPE_Q8_0, 67, 64, 1, 0, 0, 1.0f};
    check_case(&c);
    assert_false(tiled_created("matmul_tiled"));
    c.n_tok = 40;
    check_case(&c);
    assert_true(tiled_created("matmul_tiled"));
    assert_false(tiled_created("matmul_tiled (bda)"));
}

/* Every type x token count; output rows 67/130/13 (partial 64-row tiles)
 * and inputs 64/96/320 (several 32-element steps) in rotation. */
static void test_types_tokens(void **state)
{
    static const int64_t OUTS[] = {67, 130, 13}, INS[] = {64, 96, 320};
    int i = 0;
    for (size_t ti = 0; ti < 5; ti++) {
        for (size_t k = 0; k < sizeof(TOKENS) / sizeof(TOKENS[0]); k++, i++) {
            gemm_case c = {ALL_TYPES[ti], OUTS[i % 3], INS[(i / 3) % 3], TOKENS[k], 256, 0, 1.0f};
            check_case(&c);
        }
    }
}

/* 16-bit rows of an odd length start mid-word, and the last 32-input step is
 * partial; F32 too (n_in is not a multiple of 32 for unquantized types). */
static void test_unaligned_rows(void **state)
{
    for (size_t ti = 0; ti < 3; ti++) {
        gemm_case c = {ALL_TYPES[ti], 65, 301, 33, 4, 0, 1.0f};
        check_case(&c);
    }
}

/* Rows as long as a large model's FFN (16,384 inputs: 512 steps of 32), with
 * activations of a normalised model's size (outputs of order 1, where the
 * absolute tolerance is meaningful). */
static void test_long_rows(void **state)
{
    gemm_case c = {KVRT_DTYPE_Q4_0, 67, 16384, 33, 0, 0, 0.05f};
    check_case(&c);
    c.t = KVRT_DTYPE_F16;
    c.n_tok = 9;
    check_case(&c);
}

/* Weights over many 4 KiB segments, rows straddling segment boundaries: the
 * all-features pass reads them through buffer device addresses (one
 * dispatch), the other binds two segments per dispatch, whose rows start
 * mid-tile. */
static void test_spanning_segments(void **state)
{
    for (size_t ti = 0; ti < 5; ti++) {
        /* F32 49 KiB (13 segments), 16-bit 24 KiB, Q8_0 43 KiB, Q4_0 23 KiB */
        gemm_case c = {ALL_TYPES[ti], 130, ti >= 3 ? 320 : 96, ti % 2 ? 70 : 33, 512, 4096, 1.0f};
        check_case(&c);
    }
    bool bda = (kvrt_vk_features(g_be) & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS) != 0;
    if (g_disabled)
        assert_false(bda);
    assert_true(tiled_created("matmul_tiled (bda)") == bda);
}

/* GEMV (1-3 tokens) edges of its row grouping: a workgroup takes 1 to 16
 * rows (lanes per row from the row length, or one subgroup per row), so row
 * counts of 1 and primes, rows short (lanes idle) and long (several strides
 * per lane), odd 16-bit rows starting mid-word, quant blocks of both word
 * alignments, and 2-3 tokens sharing each weight read; on segments, row
 * counts per segment are not multiples of the rows per workgroup. */
static void test_gemv_edges(void **state)
{
    for (size_t ti = 0; ti < 5; ti++) {
        bool q = ti >= 3;
        gemm_case c = {ALL_TYPES[ti], 1, 288, 2, 0, 0, 1.0f};
        check_case(&c);
        c = (gemm_case){ALL_TYPES[ti], 37, q ? 800 : 301, 3, 4, 0, 1.0f};
        check_case(&c);
        c = (gemm_case){ALL_TYPES[ti], 131, q ? 768 : 1030, 2, 0, 0, 1.0f};
        check_case(&c);
        c = (gemm_case){ALL_TYPES[ti], 97, q ? 352 : 98, 2 + (int32_t)(ti % 2), 512, 4096, 1.0f};
        check_case(&c);
    }
}

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_path_choice),
        cmocka_unit_test(test_types_tokens),
        cmocka_unit_test(test_unaligned_rows),
        cmocka_unit_test(test_long_rows),
        cmocka_unit_test(test_spanning_segments),
        cmocka_unit_test(test_gemv_edges),
    };
    int fails = cmocka_run_group_tests_name("vulkan_gemm (all features)", tests, setup_all, teardown);
    fails += cmocka_run_group_tests_name("vulkan_gemm (no optional features)", tests, setup_none, teardown);
    return fails + g_teardown_failures;
}
#endif /* KVRT_HAVE_VULKAN_BACKEND */
