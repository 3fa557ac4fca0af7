/* Vulkan model ops vs a double-precision reference on the same stored
 * weights (DESIGN.md: NMSE <= 1e-6; exact where the op only moves values),
 * with strided views, canaries after every output, the validation layer on,
 * once with all device features and once with every KVRT_FEATURE_* disabled. */
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

#include "backend/backend.h"
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
    assert_int_equal(g_be->ops->buffer_upload(g_be, wb, w_off, w, wbytes), KVRT_OK);
    kvrt_buffer *xb = up(x, sizeof(float) * n_tok * x_stride);
    size_t n_y = (size_t)((n_tok - 1) * y_stride + n_out);
    kvrt_buffer *yb = out_buf(n_y);
    kvrt_view wv = {wb, w_off}, xv = {xb, 0}, yv = {yb, 0};
    assert_int_equal(g_be->ops->matmul(g_be, t, wv, n_out, n_in, xv, x_stride, yv, y_stride, n_tok), KVRT_OK);
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
    g_be->ops->buffer_destroy(g_be, wb);
    g_be->ops->buffer_destroy(g_be, xb);
    g_be->ops->buffer_destroy(g_be, yb);
    free(w), free(deq), free(x), free(y), free(ref);
}

static const kvrt_dtype ALL_TYPES[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_BF16, KVRT_DTYPE_Q8_0,
                                       KVRT_DTYPE_Q4_0};

static bool quantized(kvrt_dtype t)
{
    return t == KVRT_DTYPE_Q8_0 || t == KVRT_DTYPE_Q4_0;
}

static void test_matmul(void **state)
{
    for (size_t ti = 0; ti < 5; ti++) /* odd rows for the 16-bit types: rows start mid-word */
        check_matmul(ALL_TYPES[ti], 37, quantized(ALL_TYPES[ti]) ? 320 : 301, 256);
    /* a quant row that is not a whole number of blocks is refused, not misread */
    kvrt_view none = {NULL, 0};
    assert_int_equal(g_be->ops->matmul(g_be, KVRT_DTYPE_Q8_0, none, 4, 40, none, 40, none, 4, 1),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(g_be->ops->matmul(g_be, (kvrt_dtype)12 /* GGUF Q4_K */, none, 4, 256, none, 256, none, 4, 1),
                     KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(g_be->err.message, "not implemented"));
}

/* Embedding rows of every type convert exactly (the dequantizer's values). */
static void check_embed(kvrt_dtype t, int32_t n_rows, int32_t dim, size_t t_off)
{
    int32_t ids[6] = {3, n_rows - 1, 0, 3, n_rows / 2, n_rows / 3};
    const int32_t n_tok = 6;
    size_t bytes;
    float *deq;
    void *tab = make_weights(t, n_rows, dim, &bytes, &deq);
    kvrt_buffer *tb = up(NULL, bytes + t_off), *ib = up(ids, sizeof(ids)), *ob = out_buf((size_t)n_tok * dim);
    assert_int_equal(g_be->ops->buffer_upload(g_be, tb, t_off, tab, bytes), KVRT_OK);
    kvrt_view tv = {tb, t_off}, iv = {ib, 0}, ov = {ob, 0};
    assert_int_equal(g_be->ops->embed(g_be, t, tv, dim, iv, n_tok, ov), KVRT_OK);
    float *o = down(ob, (size_t)n_tok * dim);
    for (int32_t k = 0; k < n_tok; k++)
        assert_memory_equal(o + k * dim, deq + (size_t)ids[k] * dim, sizeof(float) * (size_t)dim);
    g_be->ops->buffer_destroy(g_be, tb);
    g_be->ops->buffer_destroy(g_be, ib);
    g_be->ops->buffer_destroy(g_be, ob);
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
    assert_int_equal(g_be->ops->gather_rows(g_be, xv, stride, iv, 4, gv, cols, cols), KVRT_OK);
    float *g = down(gb, (size_t)4 * cols);
    for (int32_t r = 0; r < 4; r++)
        assert_memory_equal(g + r * cols, x + idx[r] * stride, sizeof(float) * cols);
    g_be->ops->buffer_destroy(g_be, xb);
    g_be->ops->buffer_destroy(g_be, ib);
    g_be->ops->buffer_destroy(g_be, gb);
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
    check_gather(40, 301, 200); /* 48 KiB of 1204-byte rows */
    kvrt_vk_set_max_segment(g_be, 0);
}

static void test_norm_swiglu_add(void **state)
{
    const int32_t n_tok = 3, dim = 260;
    const int64_t stride = 270;
    float *x = malloc(sizeof(float) * n_tok * stride), *w = malloc(sizeof(float) * dim);
    float *g = malloc(sizeof(float) * n_tok * stride);
    for (int64_t i = 0; i < n_tok * stride; i++) {
        x[i] = rnd() * 3;
        g[i] = rnd() * 4;
    }
    for (int32_t i = 0; i < dim; i++)
        w[i] = rnd();
    kvrt_buffer *xb = up(x, sizeof(float) * n_tok * stride), *wb = up(w, sizeof(float) * dim);
    kvrt_buffer *gb = up(g, sizeof(float) * n_tok * stride);
    size_t n_y = (size_t)((n_tok - 1) * dim + dim);
    kvrt_buffer *yb = out_buf(n_y), *sb = out_buf(n_y), *ab = out_buf(n_y);
    kvrt_view xv = {xb, 0}, wv = {wb, 0}, yv = {yb, 0}, gv = {gb, 0}, sv = {sb, 0}, av = {ab, 0};
    /* one step: rmsnorm -> swiglu(gate, normed) -> add(swiglu, normed), dependent dispatches */
    assert_int_equal(g_be->ops->begin(g_be), KVRT_OK);
    assert_int_equal(g_be->ops->rmsnorm(g_be, xv, stride, wv, yv, dim, n_tok, dim, 1e-5f), KVRT_OK);
    assert_int_equal(g_be->ops->swiglu(g_be, gv, stride, yv, dim, sv, dim, n_tok, dim), KVRT_OK);
    assert_int_equal(g_be->ops->add(g_be, sv, yv, av, (int64_t)n_tok * dim), KVRT_OK);
    assert_int_equal(g_be->ops->submit(g_be), KVRT_OK);
    float *y = down(yb, n_y), *s = down(sb, n_y), *a = down(ab, n_y);
    double *ry = malloc(sizeof(double) * n_y), *rs = malloc(sizeof(double) * n_y), *ra = malloc(sizeof(double) * n_y);
    for (int32_t t = 0; t < n_tok; t++) {
        double ss = 0;
        for (int32_t i = 0; i < dim; i++)
            ss += (double)x[t * stride + i] * x[t * stride + i];
        double inv = 1.0 / sqrt(ss / dim + 1e-5);
        for (int32_t i = 0; i < dim; i++) {
            size_t k = (size_t)t * dim + i;
            ry[k] = x[t * stride + i] * inv * w[i];
            double gg = g[t * stride + i];
            rs[k] = gg / (1 + exp(-gg)) * y[k]; /* on the stored normed values */
            ra[k] = (double)s[k] + y[k];
        }
    }
    check_nmse("rmsnorm", y, ry, n_y, (size_t)dim, (size_t)dim);
    /* the subgroup-reduction variant runs exactly when the pass allows it and
     * the device has it; the no-features pass must run the portable one */
    uint32_t variant = ~0u;
    assert_true(kvrt_vk_pipeline_variant(g_be, "rmsnorm", &variant));
    assert_int_equal(variant, kvrt_vk_features(g_be) & KVRT_FEATURE_SUBGROUPS);
    if (g_disabled & KVRT_FEATURE_SUBGROUPS)
        assert_int_equal(variant, 0);
    else if (!variant)
        fprintf(stderr, "note: device lacks subgroup arithmetic; rmsnorm ran the portable variant\n");
    check_nmse("swiglu", s, rs, n_y, (size_t)dim, (size_t)dim);
    check_nmse("add", a, ra, n_y, (size_t)dim, (size_t)dim);
    /* in place: rmsnorm x -> x */
    assert_int_equal(g_be->ops->rmsnorm(g_be, xv, stride, wv, xv, stride, n_tok, dim, 1e-5f), KVRT_OK);
    float *xi = malloc(sizeof(float) * n_tok * stride);
    assert_int_equal(g_be->ops->buffer_download(g_be, xb, 0, xi, sizeof(float) * n_tok * stride), KVRT_OK);
    check_nmse("rmsnorm in place", xi, ry, n_y, (size_t)dim, (size_t)stride);
    kvrt_buffer *bufs[] = {xb, wb, gb, yb, sb, ab};
    for (size_t i = 0; i < 6; i++)
        g_be->ops->buffer_destroy(g_be, bufs[i]);
    free(x), free(w), free(g), free(y), free(s), free(a), free(ry), free(rs), free(ra), free(xi);
}

static void test_rope(void **state)
{
    const int32_t n_tok = 4, n_heads = 3, hd = 16, max_pos = 64;
    const int64_t stride = n_heads * hd + 5;
    for (int neox = 0; neox < 2; neox++) {
        int32_t rot = neox ? 12 : 16;
        float *cs = malloc(sizeof(float) * max_pos * rot);
        for (int32_t p = 0; p < max_pos; p++)
            for (int32_t i = 0; i < rot / 2; i++) {
                double ang = p * pow(10000.0, -2.0 * i / rot);
                cs[(p * rot / 2 + i) * 2] = (float)cos(ang);
                cs[(p * rot / 2 + i) * 2 + 1] = (float)sin(ang);
            }
        int32_t pos[4] = {0, 5, 63, 17};
        float *x = malloc(sizeof(float) * n_tok * stride);
        for (int64_t i = 0; i < n_tok * stride; i++)
            x[i] = rnd();
        kvrt_buffer *xb = up(x, sizeof(float) * n_tok * stride), *pb = up(pos, sizeof(pos));
        kvrt_buffer *cb = up(cs, sizeof(float) * max_pos * rot);
        kvrt_view xv = {xb, 0}, pv = {pb, 0}, cv = {cb, 0};
        kvrt_rope_desc d = {.n_tokens = n_tok, .n_heads = n_heads, .head_dim = hd, .rot_dim = rot, .neox = neox,
                            .max_pos = max_pos, .stride = stride};
        assert_int_equal(g_be->ops->rope(g_be, xv, pv, cv, &d), KVRT_OK);
        float *got = malloc(sizeof(float) * n_tok * stride);
        assert_int_equal(g_be->ops->buffer_download(g_be, xb, 0, got, sizeof(float) * n_tok * stride), KVRT_OK);
        size_t n = (size_t)n_tok * n_heads * hd;
        double *ref = malloc(sizeof(double) * n);
        for (int32_t t = 0; t < n_tok; t++)
            for (int32_t h = 0; h < n_heads; h++) {
                const float *r = x + t * stride + h * hd;
                double *o = ref + ((size_t)t * n_heads + h) * hd;
                for (int32_t e = 0; e < hd; e++)
                    o[e] = r[e]; /* dims past rot_dim stay as they are */
                for (int32_t i = 0; i < rot / 2; i++) {
                    int32_t i0 = neox ? i : 2 * i, i1 = neox ? i + rot / 2 : 2 * i + 1;
                    double c = cs[(pos[t] * rot / 2 + i) * 2], s = cs[(pos[t] * rot / 2 + i) * 2 + 1];
                    o[i0] = r[i0] * c - r[i1] * s;
                    o[i1] = r[i0] * s + r[i1] * c;
                }
            }
        check_nmse(neox ? "rope neox" : "rope", got, ref, n, (size_t)n_heads * hd, (size_t)stride);
        for (int32_t t = 0; t + 1 < n_tok; t++) /* stride gaps untouched */
            for (int64_t e = n_heads * hd; e < stride; e++)
                assert_true(got[t * stride + e] == x[t * stride + e]);
        g_be->ops->buffer_destroy(g_be, xb);
        g_be->ops->buffer_destroy(g_be, pb);
        g_be->ops->buffer_destroy(g_be, cb);
        free(cs), free(x), free(got), free(ref);
    }
}

static void test_embed_gather_argmax(void **state)
{
    for (size_t ti = 0; ti < 5; ti++) /* a gather converts exactly */
        check_embed(ALL_TYPES[ti], 50, quantized(ALL_TYPES[ti]) ? 96 : 70, 0);
    /* gather_rows and argmax (lowest index on ties) on one logits matrix */
    const int32_t cols = 1000, rows = 4;
    const int64_t stride = 1003;
    float *x = malloc(sizeof(float) * rows * stride);
    for (int64_t i = 0; i < rows * stride; i++)
        x[i] = rnd();
    x[0 * stride + 700] = 5.0f, x[0 * stride + 900] = 5.0f; /* tie: 700 wins */
    x[1 * stride + 999] = 7.0f;
    x[2 * stride + 0] = 3.0f;
    x[3 * stride + 333] = 2.0f, x[3 * stride + 64] = 2.0f, x[3 * stride + 65] = 2.0f; /* 64 */
    int32_t idx[3] = {3, 0, 3};
    kvrt_buffer *xb = up(x, sizeof(float) * rows * stride), *ib = up(idx, sizeof(idx));
    kvrt_buffer *gb = out_buf((size_t)3 * cols), *ab = out_buf(rows);
    kvrt_view xv = {xb, 0}, iv = {ib, 0}, gv = {gb, 0}, av = {ab, 0};
    assert_int_equal(g_be->ops->gather_rows(g_be, xv, stride, iv, 3, gv, cols, cols), KVRT_OK);
    assert_int_equal(g_be->ops->argmax(g_be, xv, stride, rows, cols, av), KVRT_OK);
    float *g = down(gb, (size_t)3 * cols);
    for (int32_t r = 0; r < 3; r++)
        assert_memory_equal(g + r * cols, x + idx[r] * stride, sizeof(float) * cols);
    int32_t *am = (int32_t *)down(ab, rows);
    assert_int_equal(am[0], 700);
    assert_int_equal(am[1], 999);
    assert_int_equal(am[2], 0);
    assert_int_equal(am[3], 64);
    g_be->ops->buffer_destroy(g_be, xb);
    g_be->ops->buffer_destroy(g_be, ib);
    g_be->ops->buffer_destroy(g_be, gb);
    g_be->ops->buffer_destroy(g_be, ab);
    free(x), free(g), free(am);
}

/* Rows one workgroup walks are bounded (lavapipe stops an invocation's loops
 * after 65,535 trips, and the results are then silently wrong): at the limit
 * of 524,288 elements rmsnorm, argmax and the GEMV (16,384 steps a lane with
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
    x[n - 1] = 9.0f; /* argmax: the row's last element */
    kvrt_buffer *xb = up(x, sizeof(float) * (size_t)(4 * n + 4)), *wb = up(w, sizeof(float) * (size_t)(2 * n + 1));
    kvrt_buffer *yb = out_buf((size_t)n), *ab = out_buf(1);
    kvrt_view xv = {xb, 0}, wv = {wb, 0}, yv = {yb, 0}, av = {ab, 0};

    assert_int_equal(g_be->ops->rmsnorm(g_be, xv, n, wv, yv, n, 1, (int32_t)n, 1e-5f), KVRT_OK);
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
    assert_int_equal(g_be->ops->argmax(g_be, xv, n, 1, (int32_t)n, av), KVRT_OK);
    int32_t *am = (int32_t *)down(ab, 1);
    assert_int_equal(am[0], n - 1);

    /* y[o] = W[o] . x, 2 rows, 1 token (GEMV) */
    kvrt_buffer *mb = out_buf(2);
    kvrt_view mv = {mb, 0};
    assert_int_equal(g_be->ops->matmul(g_be, KVRT_DTYPE_F32, wv, 2, n, xv, n, mv, 2, 1), KVRT_OK);
    float *mm = down(mb, 2);
    for (int32_t o = 0; o < 2; o++) {
        ref[o] = 0;
        for (int64_t i = 0; i < n; i++)
            ref[o] += (double)w[o * n + i] * x[i];
    }
    check_nmse("matmul (GEMV) at the row limit", mm, ref, 2, 2, 2);

    /* one element more: refused, naming the limit */
    assert_int_equal(g_be->ops->rmsnorm(g_be, xv, n + 1, wv, yv, n + 1, 1, (int32_t)n + 1, 1e-5f),
                     KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(g_be->err.message, "524288"));
    assert_int_equal(g_be->ops->argmax(g_be, xv, n + 1, 1, (int32_t)n + 1, av), KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(g_be->err.message, "524288"));
    for (int32_t tok = 1; tok <= 4; tok += 3)
        assert_int_equal(g_be->ops->matmul(g_be, KVRT_DTYPE_F32, wv, 1, n + 1, xv, n + 1, yv, 1, tok),
                         KVRT_ERR_UNSUPPORTED);
    g_be->ops->buffer_destroy(g_be, xb);
    g_be->ops->buffer_destroy(g_be, wb);
    g_be->ops->buffer_destroy(g_be, yb);
    g_be->ops->buffer_destroy(g_be, ab);
    g_be->ops->buffer_destroy(g_be, mb);
    free(x), free(w), free(y), free(am), free(mm);
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
    assert_int_equal(g_be->ops->begin(g_be), KVRT_OK);
    for (int i = 0; i < steps; i++)
        assert_int_equal(g_be->ops->add(g_be, xv, av, xv, n), KVRT_OK); /* x += a, in place */
    assert_int_equal(g_be->ops->add(g_be, bad, av, xv, n - 1), KVRT_ERR_INVALID_ARGUMENT); /* misaligned */
    assert_non_null(strstr(g_be->err.message, "aligned"));
    assert_int_equal(g_be->ops->submit(g_be), KVRT_OK);
    float *x = malloc(sizeof(float) * n);
    assert_int_equal(g_be->ops->buffer_download(g_be, xb, 0, x, sizeof(float) * n), KVRT_OK);
    for (int64_t i = 0; i < n; i++)
        assert_true(x[i] == (float)((i % 7) * (steps + 1))); /* small integers: exact */
    g_be->ops->buffer_destroy(g_be, ab);
    g_be->ops->buffer_destroy(g_be, xb);
    free(one), free(x);
}

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_norm_swiglu_add),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_embed_gather_argmax),
        cmocka_unit_test(test_long_step),
        cmocka_unit_test(test_loop_bounds),
        cmocka_unit_test(test_spanning_segments),
    };
    int fails = cmocka_run_group_tests_name("vulkan_ops (all features)", tests, setup_all, teardown);
    fails += cmocka_run_group_tests_name("vulkan_ops (no optional features)", tests, setup_none, teardown);
    return fails + g_teardown_failures;
}
#endif /* KVRT_HAVE_VULKAN_BACKEND */
