/* OpenCL model ops on PoCL against the double references of
 * tests/common/ref_ops.c (DESIGN.md: NMSE <= 1e-6, max abs <= 1e-4 with
 * outputs of order 1). Outputs sit between canaries (a NaN pattern) that must
 * survive; strided rows leave their padding alone. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "backend/opencl/cl_internal.h"
#include "common/fp16.h"
#include "ref_ops.h"
#include "test_opencl_util.h"

#define CANARY_BITS 0xfff0deadu
#define GUARD 37

static kvrt_backend *g_be;
static kvrt_context *g_ctx;

static int setup(void **state)
{
    (void)state;
    g_ctx = cl_test_context(0);
    if (!g_ctx)
        return -1;
    g_be = ((struct kvrt_context *)g_ctx)->be;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kvrt_context_destroy(g_ctx);
    return 0;
}

static kvrt_buffer *dev(const void *src, size_t bytes)
{
    kvrt_buffer *b = NULL;
    assert_int_equal(g_be->ops->buffer_create(g_be, bytes, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    assert_int_equal(g_be->ops->buffer_upload(g_be, b, 0, src, bytes), KVRT_OK);
    return b;
}

/* A device output of n floats followed by GUARD canaries, all canaries at first. */
static kvrt_buffer *dev_out(int64_t n)
{
    size_t len = (size_t)n + GUARD;
    uint32_t *c = malloc(len * 4);
    assert_non_null(c);
    for (size_t i = 0; i < len; i++)
        c[i] = CANARY_BITS;
    kvrt_buffer *b = dev(c, len * 4);
    free(c);
    return b;
}

/* Downloads rows x cols (stride apart) and checks every float outside them is still a canary. */
static float *fetch(kvrt_buffer *b, int64_t rows, int64_t cols, int64_t stride)
{
    size_t len = b->size / 4;
    float *h = malloc(len * 4);
    assert_non_null(h);
    assert_int_equal(g_be->ops->buffer_download(g_be, b, 0, h, len * 4), KVRT_OK);
    for (size_t i = 0; i < len; i++) {
        int64_t r = (int64_t)i / stride, c = (int64_t)i % stride;
        uint32_t bits;
        memcpy(&bits, &h[i], 4);
        if (!(r < rows && c < cols) && bits != CANARY_BITS)
            fail_msg("float %zu outside the output was written", i);
    }
    return h;
}

static void expect_close(const char *what, const float *got, int64_t stride, const double *want, int64_t rows,
                         int64_t cols)
{
    ref_err e = ref_compare(got, stride, want, cols, rows, cols);
    print_message("  %-22s nmse %.2e  max abs %.2e\n", what, e.nmse, e.max_abs);
    if (e.nonfinite || e.nmse > 1e-6 || e.max_abs > 1e-4)
        fail_msg("%s: nmse %.3e, max abs %.3e, %lld non-finite", what, e.nmse, e.max_abs, (long long)e.nonfinite);
}

static void run_matmul(kvrt_dtype wt, int64_t n_out, int64_t n_in, int32_t n_tokens)
{
    ref_rng r;
    ref_rng_seed(&r, (uint64_t)(n_out * 31 + n_in + wt));
    const int64_t xs = n_in + 5, ys = n_out + 3;
    float *wf = malloc((size_t)(n_out * n_in) * 4), *x = malloc((size_t)(n_tokens * xs) * 4);
    uint16_t *wh = malloc((size_t)(n_out * n_in) * 2);
    double *want = malloc((size_t)(n_tokens * n_out) * 8);
    const float bound = 1.0f / sqrtf((float)n_in);
    ref_fill(&r, wf, n_out * n_in, -bound, bound);
    ref_fill(&r, x, n_tokens * xs, -1.0f, 1.0f);
    for (int64_t i = 0; i < n_out * n_in; i++)
        wh[i] = kvrt_f32_to_fp16(wf[i]);
    const void *w = wt == KVRT_DTYPE_F16 ? (const void *)wh : (const void *)wf;
    ref_matmul(wt, w, n_out, n_in, x, xs, n_tokens, want);
    kvrt_buffer *wb = dev(w, (size_t)(n_out * n_in) * (wt == KVRT_DTYPE_F16 ? 2 : 4));
    kvrt_buffer *xb = dev(x, (size_t)(n_tokens * xs) * 4), *yb = dev_out(n_tokens * ys);
    assert_int_equal(g_be->ops->matmul(g_be, wt, (kvrt_view){wb, 0}, n_out, n_in, (kvrt_view){xb, 0}, xs,
                                       (kvrt_view){yb, 0}, ys, n_tokens),
                     KVRT_OK);
    float *y = fetch(yb, n_tokens, n_out, ys);
    expect_close(wt == KVRT_DTYPE_F16 ? "matmul f16" : "matmul f32", y, ys, want, n_tokens, n_out);
    g_be->ops->buffer_destroy(g_be, wb);
    g_be->ops->buffer_destroy(g_be, xb);
    g_be->ops->buffer_destroy(g_be, yb);
    free(wf);
    free(wh);
    free(x);
    free(want);
    free(y);
}

static void test_matmul(void **state)
{
    (void)state;
    run_matmul(KVRT_DTYPE_F32, 67, 300, 3);
    run_matmul(KVRT_DTYPE_F16, 40, 172, 5); /* stories260K's odd ffn_down row length */
    run_matmul(KVRT_DTYPE_F32, 1, 1, 1);
}

static void test_rmsnorm_swiglu_add(void **state)
{
    (void)state;
    ref_rng r;
    ref_rng_seed(&r, 5);
    const int32_t n = 4, dim = 200;
    const int64_t s = dim + 7;
    float x[4 * 207], u[4 * 207], w[200];
    ref_fill(&r, x, n * s, -2.0f, 2.0f);
    ref_fill(&r, u, n * s, -2.0f, 2.0f);
    ref_fill(&r, w, dim, 0.5f, 1.5f);
    x[3] = 30.0f; /* a large gate: silu saturates */
    x[4] = -30.0f;
    double want[4 * 207];
    kvrt_buffer *xb = dev(x, sizeof(x)), *ub = dev(u, sizeof(u)), *wb = dev(w, sizeof(w));

    kvrt_buffer *yb = dev_out(n * s);
    ref_rmsnorm(x, s, w, n, dim, 1e-5f, want);
    assert_int_equal(g_be->ops->rmsnorm(g_be, (kvrt_view){xb, 0}, s, (kvrt_view){wb, 0}, (kvrt_view){yb, 0}, s, n,
                                        dim, 1e-5f),
                     KVRT_OK);
    float *y = fetch(yb, n, dim, s);
    expect_close("rmsnorm", y, s, want, n, dim);
    free(y);
    g_be->ops->buffer_destroy(g_be, yb);

    yb = dev_out(n * s);
    ref_swiglu(x, s, u, s, n, dim, want);
    assert_int_equal(g_be->ops->swiglu(g_be, (kvrt_view){xb, 0}, s, (kvrt_view){ub, 0}, s, (kvrt_view){yb, 0}, s, n,
                                       dim),
                     KVRT_OK);
    y = fetch(yb, n, dim, s);
    expect_close("swiglu", y, s, want, n, dim);
    free(y);
    g_be->ops->buffer_destroy(g_be, yb);

    /* add in place, from an offset view */
    assert_int_equal(g_be->ops->add(g_be, (kvrt_view){xb, 8}, (kvrt_view){ub, 0}, (kvrt_view){xb, 8}, 500), KVRT_OK);
    float got[4 * 207];
    assert_int_equal(g_be->ops->buffer_download(g_be, xb, 0, got, sizeof(got)), KVRT_OK);
    for (int i = 0; i < n * s; i++)
        assert_true(got[i] == (i >= 2 && i < 502 ? x[i] + u[i - 2] : x[i]));
    assert_int_equal(g_be->ops->rmsnorm(g_be, (kvrt_view){xb, 0}, s, (kvrt_view){wb, 0}, (kvrt_view){xb, 0}, s, n,
                                        dim, -1.0f),
                     KVRT_ERR_INVALID_ARGUMENT);
    g_be->ops->buffer_destroy(g_be, xb);
    g_be->ops->buffer_destroy(g_be, ub);
    g_be->ops->buffer_destroy(g_be, wb);
}

static void test_rope(void **state)
{
    (void)state;
    enum { T = 5, H = 3, HD = 16, MAXP = 64 };
    const int64_t s = H * HD + 4;
    ref_rng r;
    ref_rng_seed(&r, 9);
    float x[T * (H * HD + 4)], cs[MAXP * HD];
    int32_t pos[T] = {0, 1, 7, 63, 20};
    ref_fill(&r, x, T * s, -1.0f, 1.0f);
    for (int neox = 0; neox < 2; neox++) {
        const int32_t rot = neox ? HD : HD - 4; /* partial rotation too */
        ref_rope_table(cs, MAXP, rot, 10000.0);
        double want[T * H * HD];
        ref_rope(x, s, T, H, HD, rot, neox, pos, cs, want);
        kvrt_buffer *xb = dev(x, sizeof(x)), *pb = dev(pos, sizeof(pos)), *cb = dev(cs, (size_t)(MAXP * rot) * 4);
        kvrt_rope_desc d = {.n_tokens = T, .n_heads = H, .head_dim = HD, .rot_dim = rot, .neox = neox,
                            .max_pos = MAXP, .stride = s};
        assert_int_equal(g_be->ops->rope(g_be, (kvrt_view){xb, 0}, (kvrt_view){pb, 0}, (kvrt_view){cb, 0}, &d),
                         KVRT_OK);
        float got[T * (H * HD + 4)];
        assert_int_equal(g_be->ops->buffer_download(g_be, xb, 0, got, sizeof(got)), KVRT_OK);
        for (int t = 0; t < T; t++) { /* the row padding is untouched */
            for (int e = H * HD; e < s; e++)
                assert_true(got[t * s + e] == x[t * s + e]);
        }
        expect_close(neox ? "rope neox" : "rope adjacent, partial", got, s, want, T, H * HD);
        d.rot_dim = 3;
        assert_int_equal(g_be->ops->rope(g_be, (kvrt_view){xb, 0}, (kvrt_view){pb, 0}, (kvrt_view){cb, 0}, &d),
                         KVRT_ERR_INVALID_ARGUMENT);
        g_be->ops->buffer_destroy(g_be, xb);
        g_be->ops->buffer_destroy(g_be, pb);
        g_be->ops->buffer_destroy(g_be, cb);
    }
}

static void test_embed_gather_argmax(void **state)
{
    (void)state;
    enum { ROWS = 10, DIM = 24, N = 4 };
    ref_rng r;
    ref_rng_seed(&r, 13);
    float table[ROWS * DIM];
    uint16_t table_h[ROWS * DIM];
    ref_fill(&r, table, ROWS * DIM, -3.0f, 3.0f);
    for (int i = 0; i < ROWS * DIM; i++)
        table_h[i] = kvrt_f32_to_fp16(table[i]);
    int32_t ids[N] = {9, 0, 4, 4};
    kvrt_buffer *ib = dev(ids, sizeof(ids));
    for (int f16 = 0; f16 < 2; f16++) {
        kvrt_buffer *tb = f16 ? dev(table_h, sizeof(table_h)) : dev(table, sizeof(table));
        kvrt_buffer *ob = dev_out(N * DIM);
        assert_int_equal(g_be->ops->embed(g_be, f16 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32, (kvrt_view){tb, 0}, DIM,
                                          (kvrt_view){ib, 0}, N, (kvrt_view){ob, 0}),
                         KVRT_OK);
        float *o = fetch(ob, N, DIM, DIM);
        for (int t = 0; t < N; t++) {
            for (int i = 0; i < DIM; i++) {
                float want = f16 ? kvrt_fp16_to_f32(table_h[ids[t] * DIM + i]) : table[ids[t] * DIM + i];
                assert_true(o[t * DIM + i] == want);
            }
        }
        free(o);
        g_be->ops->buffer_destroy(g_be, tb);
        g_be->ops->buffer_destroy(g_be, ob);
    }

    /* gather rows 9, 0, 4, 4 of a strided table into strided rows */
    kvrt_buffer *tb = dev(table, sizeof(table)), *gb = dev_out(N * (DIM + 2));
    assert_int_equal(g_be->ops->gather_rows(g_be, (kvrt_view){tb, 0}, DIM, (kvrt_view){ib, 0}, N, (kvrt_view){gb, 0},
                                            DIM + 2, DIM - 1),
                     KVRT_OK);
    float *g = fetch(gb, N, DIM - 1, DIM + 2);
    for (int t = 0; t < N; t++) {
        for (int i = 0; i < DIM - 1; i++)
            assert_true(g[t * (DIM + 2) + i] == table[ids[t] * DIM + i]);
    }
    free(g);

    /* argmax per row of the table, lowest index on ties */
    table[3 * DIM + 5] = 50.0f;
    table[3 * DIM + 17] = 50.0f;
    table[7 * DIM + 23] = 60.0f;
    assert_int_equal(g_be->ops->buffer_upload(g_be, tb, 0, table, sizeof(table)), KVRT_OK);
    kvrt_buffer *ab = dev_out(ROWS);
    assert_int_equal(g_be->ops->argmax(g_be, (kvrt_view){tb, 0}, DIM, ROWS, DIM, (kvrt_view){ab, 0}), KVRT_OK);
    float *af = fetch(ab, 1, ROWS, ROWS + GUARD);
    int32_t am[ROWS];
    memcpy(am, af, sizeof(am));
    for (int row = 0; row < ROWS; row++) {
        int best = 0;
        for (int i = 1; i < DIM; i++)
            best = table[row * DIM + i] > table[row * DIM + best] ? i : best;
        assert_int_equal(am[row], best);
    }
    assert_int_equal(am[3], 5);
    assert_int_equal(am[7], 23);
    free(af);
    g_be->ops->buffer_destroy(g_be, ab);
    g_be->ops->buffer_destroy(g_be, tb);
    g_be->ops->buffer_destroy(g_be, gb);
    g_be->ops->buffer_destroy(g_be, ib);
}

int main(void)
{
    cl_test_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_rmsnorm_swiglu_add),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_embed_gather_argmax),
    };
    return cmocka_run_group_tests_name("opencl ops", tests, setup, teardown);
}
