/* What only the Vulkan model ops have (their numbers on every backend are
 * test_backend_ops's): weights, tables and gathered rows across many small
 * buffer segments (buffer device addresses, or one dispatch per segment),
 * a step longer than one descriptor pool, and which rmsnorm variant runs;
 * the validation layer on, once with all device features and once with
 * every KVRT_FEATURE_* disabled. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_buffers.h"
#include "test_drivers.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ops.h"
#include "backend/vulkan/vk_backend.h"
#include "common/fp16.h"
#include "common/quant.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return kvrt_test_vulkan_not_built_main();
}
#else

#define CANARY KVRT_TEST_CANARY
#define N_CANARY KVRT_TEST_N_CANARY

static uint32_t g_disabled;
static kvrt_backend *g_be;
static int g_teardown_failures; /* cmocka does not count failed group teardowns */


static int open_pass(uint32_t disabled)
{
    g_disabled = disabled;
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

static uint64_t g_rng = 88172645463325252ull;

static float rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
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

/* NMSE over the elements where mask (may be NULL) is set. */
static void check_nmse(const char *what, const float *got, const double *ref, size_t n, size_t row, size_t stride)
{
    double e2 = 0, r2 = 0;
    for (size_t i = 0; i < n; i++) {
        size_t gi = i / row * stride + i % row;
        assert_true(isfinite(got[gi]));
        e2 += (got[gi] - ref[i]) * (got[gi] - ref[i]);
        r2 += ref[i] * ref[i];
    }
    double nmse = e2 / (r2 > 0 ? r2 : 1);
    print_message("  %s: nmse %.2e\n", what, nmse);
    assert_true(nmse <= 1e-6);
}

/* Weights [rows][cols] stored as t (GGUF block layouts), from random floats;
 * *deq gets the stored values back as floats (the reference's input). */
static void *make_weights(kvrt_dtype t, int64_t rows, int64_t cols, size_t *bytes, float **deq)
{
    size_t rb = kvrt_dtype_row_bytes(t, cols);
    *bytes = rb * (size_t)rows;
    char *w = malloc(*bytes + 4);
    float *row = malloc(sizeof(float) * (size_t)cols);
    *deq = malloc(sizeof(float) * (size_t)(rows * cols));
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < cols; i++)
            row[i] = rnd();
        kvrt_quantize_row(t, row, w + (size_t)r * rb, cols);
        kvrt_dequantize_row(t, w + (size_t)r * rb, *deq + r * cols, cols);
    }
    free(row);
    return w;
}

/* y = W x on the device against a double reference on the stored values;
 * the weights sit at w_off inside a bigger buffer, as in a model file. */
static void check_matmul(kvrt_dtype t, int64_t n_out, int64_t n_in, size_t w_off)
{
    const int64_t x_stride = n_in + 9, y_stride = n_out + 3;
    const int32_t n_tok = 3;
    size_t wbytes;
    float *deq;
    void *w = make_weights(t, n_out, n_in, &wbytes, &deq);
    float *x = malloc(sizeof(float) * n_tok * x_stride);
    for (int64_t i = 0; i < n_tok * x_stride; i++)
        x[i] = rnd();
    kvrt_buffer *wb = up(NULL, wbytes + w_off);
    assert_int_equal(kvrt_op_buffer_upload(g_be, wb, w_off, w, wbytes), KVRT_OK);
    kvrt_buffer *xb = up(x, sizeof(float) * n_tok * x_stride);
    size_t n_y = (size_t)((n_tok - 1) * y_stride + n_out);
    kvrt_buffer *yb = out_buf(n_y);
    kvrt_view wv = {wb, w_off}, xv = {xb, 0}, yv = {yb, 0};
    assert_int_equal(kvrt_op_matmul(g_be, t, wv, n_out, n_in, xv, x_stride, yv, y_stride, n_tok), KVRT_OK);
    float *y = down(yb, n_y);
    double *ref = malloc(sizeof(double) * n_tok * n_out);
    for (int32_t k = 0; k < n_tok; k++)
        for (int64_t o = 0; o < n_out; o++) {
            double acc = 0;
            for (int64_t i = 0; i < n_in; i++)
                acc += (double)deq[o * n_in + i] * x[k * x_stride + i];
            ref[k * n_out + o] = acc;
        }
    check_nmse(kvrt_dtype_name(t), y, ref, (size_t)(n_tok * n_out), (size_t)n_out, (size_t)y_stride);
    for (int64_t e = n_out; e < y_stride; e++) /* stride gaps untouched */
        assert_int_equal(((uint32_t *)y)[e], CANARY);
    kvrt_op_buffer_destroy(g_be, wb);
    kvrt_op_buffer_destroy(g_be, xb);
    kvrt_op_buffer_destroy(g_be, yb);
    free(w), free(deq), free(x), free(y), free(ref);
}

static const kvrt_dtype ALL_TYPES[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_BF16, KVRT_DTYPE_Q8_0,
                                       KVRT_DTYPE_Q4_0};

/* Embedding rows of every type convert exactly (the dequantizer's values). */
static void check_embed(kvrt_dtype t, int32_t n_rows, int32_t dim, size_t t_off)
{
    int32_t ids[6] = {3, n_rows - 1, 0, 3, n_rows / 2, n_rows / 3};
    const int32_t n_tok = 6;
    size_t bytes;
    float *deq;
    void *tab = make_weights(t, n_rows, dim, &bytes, &deq);
    kvrt_buffer *tb = up(NULL, bytes + t_off), *ib = up(ids, sizeof(ids)), *ob = out_buf((size_t)n_tok * dim);
    assert_int_equal(kvrt_op_buffer_upload(g_be, tb, t_off, tab, bytes), KVRT_OK);
    kvrt_view tv = {tb, t_off}, iv = {ib, 0}, ov = {ob, 0};
    assert_int_equal(kvrt_op_embed(g_be, t, tv, dim, iv, n_tok, ov), KVRT_OK);
    float *o = down(ob, (size_t)n_tok * dim);
    for (int32_t k = 0; k < n_tok; k++)
        assert_memory_equal(o + k * dim, deq + (size_t)ids[k] * dim, sizeof(float) * (size_t)dim);
    kvrt_op_buffer_destroy(g_be, tb);
    kvrt_op_buffer_destroy(g_be, ib);
    kvrt_op_buffer_destroy(g_be, ob);
    free(tab), free(deq), free(o);
}

/* gather_rows from a src of `rows` rows of `stride` floats. */
static void check_gather(int32_t rows, int64_t stride, int32_t cols)
{
    float *x = malloc(sizeof(float) * rows * stride);
    for (int64_t i = 0; i < rows * stride; i++)
        x[i] = rnd();
    int32_t idx[4] = {rows - 1, 0, rows / 2, rows - 1};
    kvrt_buffer *xb = up(x, sizeof(float) * rows * stride), *ib = up(idx, sizeof(idx));
    kvrt_buffer *gb = out_buf((size_t)4 * cols);
    kvrt_view xv = {xb, 0}, iv = {ib, 0}, gv = {gb, 0};
    assert_int_equal(kvrt_op_gather_rows(g_be, xv, stride, iv, 4, gv, cols, cols), KVRT_OK);
    float *g = down(gb, (size_t)4 * cols);
    for (int32_t r = 0; r < 4; r++)
        assert_memory_equal(g + r * cols, x + idx[r] * stride, sizeof(float) * cols);
    kvrt_op_buffer_destroy(g_be, xb);
    kvrt_op_buffer_destroy(g_be, ib);
    kvrt_op_buffer_destroy(g_be, gb);
    free(x), free(g);
}

/* Weights, tables and gathered rows spanning many small segments (rows
 * straddle segment boundaries): buffer device addresses in the all-features
 * pass, one dispatch per segment in the other. */
static void test_spanning_segments(void **state)
{
    kvrt_vk_set_max_segment(g_be, 4096);
    for (size_t ti = 0; ti < 5; ti++) {
        check_matmul(ALL_TYPES[ti], 61, 96, 512); /* F32: 23 KiB, 6 segments */
        check_embed(ALL_TYPES[ti], 90, 64, 256);
    }
    /* issue #14's types: odd-sized blocks (22, 110, 210 bytes) cut by the segments */
    static const kvrt_dtype more[] = {KVRT_DTYPE_Q5_0, KVRT_DTYPE_Q3_K, KVRT_DTYPE_Q6_K};
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(more); ti++) {
        int32_t n_in = kvrt_dtype_block_values(more[ti]) == 256 ? 256 : 96;
        check_matmul(more[ti], 151, n_in, 512);
        if (n_in < 256) /* 6 output rows of 256 floats would not fit one 4 KiB activation segment */
            check_embed(more[ti], 90, n_in, 256);
    }
    check_gather(40, 301, 200); /* 48 KiB of 1204-byte rows */
    kvrt_vk_set_max_segment(g_be, 0);
}

/* The subgroup-reduction rmsnorm runs exactly when the pass allows it and
 * the device has it; the no-features pass runs the portable one (the
 * numbers of both are test_backend_ops's). */
static void test_rmsnorm_variant(void **state)
{
    const int32_t n_tok = 3, dim = 260;
    float *x = malloc(sizeof(float) * n_tok * dim), *w = malloc(sizeof(float) * dim);
    for (int64_t i = 0; i < n_tok * dim; i++)
        x[i] = rnd();
    for (int32_t i = 0; i < dim; i++)
        w[i] = rnd();
    kvrt_buffer *xb = up(x, sizeof(float) * n_tok * dim), *wb = up(w, sizeof(float) * dim);
    kvrt_buffer *yb = out_buf((size_t)n_tok * dim);
    kvrt_view xv = {xb, 0}, wv = {wb, 0}, yv = {yb, 0};
    assert_int_equal(kvrt_op_rmsnorm(g_be, xv, dim, wv, yv, dim, n_tok, dim, 1e-5f), KVRT_OK);
    free(down(yb, (size_t)n_tok * dim));
    uint32_t variant = ~0u;
    assert_true(kvrt_vk_pipeline_variant(g_be, "rmsnorm", &variant));
    assert_int_equal(variant, kvrt_vk_features(g_be) & KVRT_FEATURE_SUBGROUPS);
    if (g_disabled & KVRT_FEATURE_SUBGROUPS)
        assert_int_equal(variant, 0);
    else if (!variant)
        fprintf(stderr, "note: device lacks subgroup arithmetic; rmsnorm ran the portable variant\n");
    kvrt_op_buffer_destroy(g_be, xb);
    kvrt_op_buffer_destroy(g_be, wb);
    kvrt_op_buffer_destroy(g_be, yb);
    free(x), free(w);
}

/* Rows one workgroup walks are bounded (lavapipe stops an invocation's loops
 * after 65,535 trips, and the results are then silently wrong): at the limit
 * of 524,288 elements rmsnorm and the GEMV (16,384 steps a lane with
 * lavapipe's 8-lane subgroups, its tightest bound) are right; one more is
 * refused with UNSUPPORTED, by the tiled matmul too (~16,400 trips at the
 * limit, not run here: 2 s on lavapipe). */
static void test_loop_bounds(void **state)
{
    const int64_t n = 1 << 19;
    float *x = malloc(sizeof(float) * (size_t)(4 * n + 4)), *w = malloc(sizeof(float) * (size_t)(2 * n + 1));
    double ref[2];
    assert_true(x && w);
    for (int64_t i = 0; i < 4 * n + 4; i++)
        x[i] = rnd();
    for (int64_t i = 0; i < 2 * n + 1; i++)
        w[i] = rnd();
    kvrt_buffer *xb = up(x, sizeof(float) * (size_t)(4 * n + 4)), *wb = up(w, sizeof(float) * (size_t)(2 * n + 1));
    kvrt_buffer *yb = out_buf((size_t)n);
    kvrt_view xv = {xb, 0}, wv = {wb, 0}, yv = {yb, 0};

    assert_int_equal(kvrt_op_rmsnorm(g_be, xv, n, wv, yv, n, 1, (int32_t)n, 1e-5f), KVRT_OK);
    float *y = down(yb, (size_t)n);
    double ss = 0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    double inv = 1.0 / sqrt(ss / (double)n + 1e-5), e2 = 0, r2 = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = x[i] * inv * w[i];
        e2 += (y[i] - r) * (y[i] - r);
        r2 += r * r;
    }
    print_message("  rmsnorm of %lld: nmse %.2e\n", (long long)n, e2 / r2);
    assert_true(e2 / r2 <= 1e-6);

    /* y[o] = W[o] . x, 2 rows, 1 token (GEMV) */
    kvrt_buffer *mb = out_buf(2);
    kvrt_view mv = {mb, 0};
    assert_int_equal(kvrt_op_matmul(g_be, KVRT_DTYPE_F32, wv, 2, n, xv, n, mv, 2, 1), KVRT_OK);
    float *mm = down(mb, 2);
    for (int32_t o = 0; o < 2; o++) {
        ref[o] = 0;
        for (int64_t i = 0; i < n; i++)
            ref[o] += (double)w[o * n + i] * x[i];
    }
    check_nmse("matmul (GEMV) at the row limit", mm, ref, 2, 2, 2);

    /* one element more: refused, naming the limit */
    assert_int_equal(kvrt_op_rmsnorm(g_be, xv, n + 1, wv, yv, n + 1, 1, (int32_t)n + 1, 1e-5f),
                     KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(g_be->err.message, "524288"));
    for (int32_t tok = 1; tok <= 4; tok += 3)
        assert_int_equal(kvrt_op_matmul(g_be, KVRT_DTYPE_F32, wv, 1, n + 1, xv, n + 1, yv, 1, tok),
                         KVRT_ERR_UNSUPPORTED);
    kvrt_op_buffer_destroy(g_be, xb);
    kvrt_op_buffer_destroy(g_be, wb);
    kvrt_op_buffer_destroy(g_be, yb);
    kvrt_op_buffer_destroy(g_be, mb);
    free(x), free(w), free(y), free(mm);
}

/* The quant types decoded element by element (codes 5..14) loop over each
 * block's elements: the tiled matmul's steps cost 19 trips, so the host
 * bounds n_in near 67,000 (vk_tiled_trips). Q4_K, one row: at 263 blocks
 * of 256 the tiled (4 tokens) and GEMV (1 token) products are right; at 264
 * the tiled one is refused naming the limit. */
static void test_loop_bounds_quant(void **state)
{
    const int64_t ok = 263 * 256, over = 264 * 256;
    size_t wbytes;
    float *deq, *x = malloc(sizeof(float) * (size_t)(4 * over));
    assert_non_null(x);
    void *w = make_weights(KVRT_DTYPE_Q4_K, 1, over, &wbytes, &deq);
    for (int64_t i = 0; i < 4 * over; i++)
        x[i] = rnd();
    kvrt_buffer *wb = up(w, wbytes), *xb = up(x, sizeof(float) * (size_t)(4 * over)), *yb = out_buf(4);
    kvrt_view wv = {wb, 0}, xv = {xb, 0}, yv = {yb, 0};
    /* the first 263 blocks of the row are a row of 67,328 on their own */
    double ref[4];
    for (int32_t t = 0; t < 4; t++) {
        ref[t] = 0;
        for (int64_t i = 0; i < ok; i++)
            ref[t] += (double)deq[i] * x[t * ok + i];
    }
    for (int32_t tok = 1; tok <= 4; tok += 3) {
        assert_int_equal(kvrt_op_matmul(g_be, KVRT_DTYPE_Q4_K, wv, 1, ok, xv, ok, yv, 1, tok), KVRT_OK);
        float *y = down(yb, 4);
        check_nmse(tok == 1 ? "Q4_K GEMV of 67,328" : "Q4_K tiled of 67,328", y, ref, (size_t)tok, 1, 1);
        free(y);
    }
    assert_int_equal(kvrt_op_matmul(g_be, KVRT_DTYPE_Q4_K, wv, 1, over, xv, over, yv, 1, 4), KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(g_be->err.message, "loop trips"));
    kvrt_op_buffer_destroy(g_be, wb);
    kvrt_op_buffer_destroy(g_be, xb);
    kvrt_op_buffer_destroy(g_be, yb);
    free(w), free(deq), free(x);
}

/* A long step: more dispatches than one descriptor pool holds, each reading
 * the previous one's output; a bad call inside the step fails alone. */
static void test_long_step(void **state)
{
    const int64_t n = 1000;
    const int steps = 150;
    float *one = malloc(sizeof(float) * n);
    for (int64_t i = 0; i < n; i++)
        one[i] = (float)(i % 7);
    kvrt_buffer *ab = up(one, sizeof(float) * n), *xb = up(one, sizeof(float) * n);
    kvrt_view av = {ab, 0}, xv = {xb, 0}, bad = {xb, 2};
    assert_int_equal(kvrt_op_begin(g_be), KVRT_OK);
    for (int i = 0; i < steps; i++)
        assert_int_equal(kvrt_op_add(g_be, xv, av, xv, n), KVRT_OK); /* x += a, in place */
    assert_int_equal(kvrt_op_add(g_be, bad, av, xv, n - 1), KVRT_ERR_INVALID_ARGUMENT); /* misaligned */
    assert_non_null(strstr(g_be->err.message, "aligned"));
    assert_int_equal(kvrt_op_submit(g_be), KVRT_OK);
    float *x = malloc(sizeof(float) * n);
    assert_int_equal(kvrt_op_buffer_download(g_be, xb, 0, x, sizeof(float) * n), KVRT_OK);
    for (int64_t i = 0; i < n; i++)
        assert_true(x[i] == (float)((i % 7) * (steps + 1))); /* small integers: exact */
    kvrt_op_buffer_destroy(g_be, ab);
    kvrt_op_buffer_destroy(g_be, xb);
    free(one), free(x);
}

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_variant),
        cmocka_unit_test(test_long_step),
        cmocka_unit_test(test_loop_bounds),
        cmocka_unit_test(test_loop_bounds_quant),
        cmocka_unit_test(test_spanning_segments),
    };
    int fails = cmocka_run_group_tests_name("vulkan_ops (all features)", tests, setup_all, teardown);
    fails += cmocka_run_group_tests_name("vulkan_ops (no optional features)", tests, setup_none, teardown);
    return fails + g_teardown_failures;
}
#endif /* KVRT_HAVE_VULKAN_BACKEND */
