/* What only the OpenCL model ops have (their numbers on every backend are
 * test_backend_ops's): weights and embedding tables across segments cut
 * under CL_DEVICE_MAX_MEM_ALLOC_SIZE, against the double references of
 * tests/common/ref_ops.c (NMSE <= 1e-6, max abs <= 1e-4), outputs between
 * canaries. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "backend/opencl/cl_internal.h"
#include "common/fp16.h"
#include "common/quant.h"
#include "ref_ops.h"
#include "test_opencl_util.h"
#include "backend/ops.h"

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
    assert_int_equal(kvrt_op_buffer_create(g_be, bytes, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(g_be, b, 0, src, bytes), KVRT_OK);
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
    size_t len = kvrt_buffer_head_of(b)->size / 4;
    float *h = malloc(len * 4);
    assert_non_null(h);
    assert_int_equal(kvrt_op_buffer_download(g_be, b, 0, h, len * 4), KVRT_OK);
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

/* Random weights stored as `wt` (rows quantized like GGUF); n_in a multiple of the block. */
static void *make_weights(kvrt_dtype wt, int64_t n_out, int64_t n_in, uint64_t seed, size_t *bytes)
{
    ref_rng r;
    ref_rng_seed(&r, seed);
    size_t row = kvrt_dtype_row_bytes(wt, n_in);
    assert_true(row > 0);
    float *wf = malloc((size_t)n_in * 4);
    unsigned char *w = malloc(row * (size_t)n_out);
    assert_non_null(wf);
    assert_non_null(w);
    const float bound = 1.0f / sqrtf((float)n_in);
    for (int64_t o = 0; o < n_out; o++) {
        ref_fill(&r, wf, n_in, -bound, bound);
        kvrt_quantize_row(wt, wf, w + (size_t)o * row, n_in);
    }
    free(wf);
    *bytes = row * (size_t)n_out;
    return w;
}

/* seg_bytes: segment size of the weight buffer (SIZE_MAX: the device's), so a
 * weight can span segments whose boundaries cut its rows. */
static void run_matmul_seg(kvrt_dtype wt, int64_t n_out, int64_t n_in, int32_t n_tokens, size_t seg_bytes)
{
    ref_rng r;
    ref_rng_seed(&r, (uint64_t)(n_out * 31 + n_in + wt));
    const int64_t xs = n_in + 5, ys = n_out + 3;
    size_t w_bytes;
    void *w = make_weights(wt, n_out, n_in, (uint64_t)(n_out * 7 + n_in + wt), &w_bytes);
    float *x = malloc((size_t)(n_tokens * xs) * 4);
    double *want = malloc((size_t)(n_tokens * n_out) * 8);
    assert_non_null(x);
    assert_non_null(want);
    ref_fill(&r, x, n_tokens * xs, -1.0f, 1.0f);
    ref_matmul(wt, w, n_out, n_in, x, xs, n_tokens, want);
    kvrt_cl_test_set_segment_bytes(g_be, seg_bytes);
    kvrt_buffer *wb = dev(w, w_bytes);
    kvrt_cl_test_set_segment_bytes(g_be, SIZE_MAX);
    if (seg_bytes != SIZE_MAX)
        assert_true(wb->n_segs > 2);
    kvrt_buffer *xb = dev(x, (size_t)(n_tokens * xs) * 4), *yb = dev_out(n_tokens * ys);
    assert_int_equal(kvrt_op_matmul(g_be, wt, (kvrt_view){wb, 0}, n_out, n_in, (kvrt_view){xb, 0}, xs,
                                       (kvrt_view){yb, 0}, ys, n_tokens),
                     KVRT_OK);
    if (seg_bytes != SIZE_MAX) /* re-segmented on first use: whole rows per segment */
        assert_int_equal(wb->seg_bytes % kvrt_dtype_row_bytes(wt, n_in), 0);
    float *y = fetch(yb, n_tokens, n_out, ys);
    char what[64];
    snprintf(what, sizeof(what), "matmul %s %lldx%lld t%d%s", kvrt_dtype_name(wt), (long long)n_out,
             (long long)n_in, (int)n_tokens, seg_bytes != SIZE_MAX ? " seg" : "");
    expect_close(what, y, ys, want, n_tokens, n_out);
    kvrt_op_buffer_destroy(g_be, wb);
    kvrt_op_buffer_destroy(g_be, xb);
    kvrt_op_buffer_destroy(g_be, yb);
    free(w);
    free(x);
    free(want);
    free(y);
}

static void test_matmul_segmented(void **state)
{
    (void)state;
    run_matmul_seg(KVRT_DTYPE_F32, 50, 100, 2, 1000);        /* 400-byte rows, 1000-byte segments */
    run_matmul_seg(KVRT_DTYPE_Q8_0, 40, 96, 9, 512);         /* 102-byte rows */
    run_matmul_seg(KVRT_DTYPE_Q4_0, 37, 64, 1, 256);         /* 36-byte rows */
    run_matmul_seg(KVRT_DTYPE_BF16, 21, 70, 3, 768 + 256);   /* 140-byte rows */
    run_matmul_seg(KVRT_DTYPE_Q5_1, 40, 64, 3, 256);         /* 48-byte rows */
    run_matmul_seg(KVRT_DTYPE_Q4_K, 37, 256, 9, 1024);       /* 144-byte rows */
    run_matmul_seg(KVRT_DTYPE_Q6_K, 21, 512, 1, 1024);       /* 420-byte rows */
    run_matmul_seg(KVRT_DTYPE_Q3_K, 19, 256, 2, 512);        /* 110-byte rows */
}

static void run_embed(kvrt_dtype wt, int64_t rows, int64_t dim, size_t seg_bytes)
{
    size_t bytes;
    void *table = make_weights(wt, rows, dim, (uint64_t)(rows + dim + wt), &bytes);
    size_t row_bytes = bytes / (size_t)rows;
    const int32_t n = 6;
    int32_t ids[6] = {(int32_t)rows - 1, 0, 3, 3, (int32_t)rows / 2, 1};
    kvrt_cl_test_set_segment_bytes(g_be, seg_bytes);
    kvrt_buffer *tb = dev(table, bytes);
    kvrt_cl_test_set_segment_bytes(g_be, SIZE_MAX);
    kvrt_buffer *ib = dev(ids, sizeof(ids)), *ob = dev_out(n * dim);
    if (wt == KVRT_DTYPE_F32) { /* gather_rows over the same (possibly segmented) rows, first use */
        kvrt_buffer *gb = dev_out(n * (dim + 2));
        assert_int_equal(kvrt_op_gather_rows(g_be, (kvrt_view){tb, 0}, dim, (kvrt_view){ib, 0}, n,
                                                (kvrt_view){gb, 0}, dim + 2, (int32_t)dim - 1),
                         KVRT_OK);
        float *g = fetch(gb, n, dim - 1, dim + 2);
        for (int t = 0; t < n; t++)
            assert_memory_equal(g + t * (dim + 2), (const float *)table + ids[t] * dim, (size_t)(dim - 1) * 4);
        free(g);
        kvrt_op_buffer_destroy(g_be, gb);
    }
    assert_int_equal(kvrt_op_embed(g_be, wt, (kvrt_view){tb, 0}, dim, (kvrt_view){ib, 0}, n, (kvrt_view){ob, 0}),
                     KVRT_OK);
    float *o = fetch(ob, n, dim, dim), *want = malloc((size_t)dim * 4);
    assert_non_null(want);
    for (int t = 0; t < n; t++) {
        kvrt_dequantize_row(wt, (const unsigned char *)table + (size_t)ids[t] * row_bytes, want, dim);
        for (int64_t i = 0; i < dim; i++) {
            if (o[t * dim + i] != want[i])
                fail_msg("embed %s: row %d value %lld: %g != %g", kvrt_dtype_name(wt), (int)ids[t], (long long)i,
                         (double)o[t * dim + i], (double)want[i]);
        }
    }
    free(o);
    free(want);
    free(table);
    kvrt_op_buffer_destroy(g_be, tb);
    kvrt_op_buffer_destroy(g_be, ib);
    kvrt_op_buffer_destroy(g_be, ob);
}

static void test_embed_types(void **state)
{
    (void)state;
    const kvrt_dtype types[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_BF16, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(types); i++) {
        run_embed(types[i], 11, 64, SIZE_MAX);
        run_embed(types[i], 23, 96, 700); /* a table over several segments that cut rows */
    }
    /* issue #14's types: 22-, 136- and 210-byte blocks over segments */
    run_embed(KVRT_DTYPE_Q5_0, 23, 96, 300);
    run_embed(KVRT_DTYPE_IQ4_XS, 23, 256, 700);
    run_embed(KVRT_DTYPE_Q6_K, 23, 256, 1000);
}

int main(void)
{
    cl_test_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_segmented),
        cmocka_unit_test(test_embed_types),
    };
    return cmocka_run_group_tests_name("opencl ops", tests, setup, teardown);
}
