/* The CPU backend's model ops against the double references of
 * tests/common/ref_ops.c, through the backend vtable.
 *
 * Bounds (DESIGN.md correctness contract): NMSE <= 1e-6 against the reference
 * on the same stored weights; max abs error <= 1e-4 with outputs of order 1
 * (weights scaled by 1/sqrt(n_in)); no NaN/Inf. Every output lives inside
 * a buffer of canaries (a NaN bit pattern): anything written outside the output
 * elements, row padding included, fails the test; x padding holds NaN, so a
 * kernel that reads past a row poisons its result. Matmul and the row ops are
 * bitwise identical on 1 and 2 threads (the split depends on shapes only). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops_internal.h"
#include "common/quant.h"
#include "ref_ops.h"

#define NMSE_MAX 1e-6
#define MAX_ABS 1e-4
#define CANARY_BITS 0xfff0deadu /* a NaN: also poisons any stray read */
#define GUARD 37                /* canary floats after every output */

typedef struct fixture {
    kvrt_backend *be[2]; /* 1 and 2 threads */
} fixture;

/* ---- helpers ------------------------------------------------------------------------ */

static kvrt_backend *make_backend(int n_threads)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = n_threads;
    kvrt_backend *be = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_cpu_backend_create(&p, &be, &err), KVRT_OK);
    return be;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->be[0] = make_backend(1);
    f->be[1] = make_backend(2);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < 2; i++)
        f->be[i]->ops->destroy(f->be[i]);
    free(f);
    return 0;
}

static kvrt_view wrap(kvrt_backend *be, void *p, size_t bytes, size_t offset)
{
    kvrt_buffer *b = NULL;
    assert_int_equal(be->ops->buffer_wrap_host(be, p, bytes, &b), KVRT_OK);
    return (kvrt_view){b, offset};
}

static void unwrap(kvrt_backend *be, kvrt_view v)
{
    be->ops->buffer_destroy(be, v.buf);
}

static void *xmalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    assert_non_null(p);
    return p;
}

/* An output area: `off` canary floats, rows x stride, then GUARD canaries. */
typedef struct outbuf {
    float *p;
    size_t total, off;
    int64_t rows, stride, cols;
} outbuf;

static outbuf out_new(size_t off, int64_t rows, int64_t stride, int64_t cols)
{
    outbuf o = {NULL, off + (size_t)(rows > 0 ? (rows - 1) * stride + cols : 0) + GUARD, off, rows, stride, cols};
    o.p = xmalloc(o.total * sizeof(float));
    uint32_t c = CANARY_BITS;
    for (size_t i = 0; i < o.total; i++)
        memcpy(&o.p[i], &c, sizeof(c));
    return o;
}

static float *out_at(const outbuf *o)
{
    return o->p + o->off;
}

/* Every float outside the [rows][cols] output elements still holds the canary. */
static void out_check_canaries(const outbuf *o)
{
    for (size_t i = 0; i < o->total; i++) {
        bool inside = false;
        if (i >= o->off) {
            int64_t e = (int64_t)(i - o->off), r = e / o->stride, c = e % o->stride;
            inside = r < o->rows && c < o->cols;
        }
        uint32_t bits;
        memcpy(&bits, &o->p[i], sizeof(bits));
        if (!inside && bits != CANARY_BITS)
            fail_msg("canary overwritten at float %zu (output starts at %zu, %lld x %lld stride %lld)", i, o->off,
                     (long long)o->rows, (long long)o->cols, (long long)o->stride);
    }
}

static void assert_close(const char *what, const float *got, int64_t got_stride, const double *want,
                         int64_t rows, int64_t cols)
{
    ref_err e = ref_compare(got, got_stride, want, cols, rows, cols);
    if (e.nonfinite != 0 || !(e.nmse <= NMSE_MAX) || !(e.max_abs <= MAX_ABS))
        fail_msg("%s: nmse %.3g (<= %.0e), max abs %.3g (<= %.0e), %lld non-finite", what, e.nmse, NMSE_MAX,
                 e.max_abs, MAX_ABS, (long long)e.nonfinite);
}

static void assert_rows_bitwise_equal(const float *a, const float *b, int64_t rows, int64_t stride, int64_t cols)
{
    for (int64_t r = 0; r < rows; r++)
        assert_memory_equal(a + r * stride, b + r * stride, (size_t)cols * sizeof(float));
}

static void assert_error(kvrt_backend *be, kvrt_status got, kvrt_status want, const char *needle)
{
    assert_int_equal(got, want);
    if (!strstr(be->err.message, needle))
        fail_msg("message \"%s\" does not mention \"%s\"", be->err.message, needle);
}

static const kvrt_dtype all_types[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_BF16, KVRT_DTYPE_Q8_0,
                                       KVRT_DTYPE_Q4_0};

/* Quantized weights [n_out][n_in] of U(-1, 1) / sqrt(n_in); returns the bytes. */
static void *make_weights(ref_rng *rng, kvrt_dtype type, int64_t n_out, int64_t n_in, size_t lead, size_t *bytes)
{
    const size_t row_bytes = kvrt_dtype_row_bytes(type, n_in);
    *bytes = lead + row_bytes * (size_t)n_out;
    char *w = xmalloc(*bytes);
    memset(w, 0xcd, lead);
    float *row = xmalloc((size_t)n_in * sizeof(float));
    const float a = 1.0f / sqrtf((float)n_in);
    for (int64_t o = 0; o < n_out; o++) {
        ref_fill(rng, row, n_in, -a, a);
        kvrt_quantize_row(type, row, w + lead + (size_t)o * row_bytes, n_in);
    }
    free(row);
    return w;
}

/* ---- matmul ------------------------------------------------------------------------- */

static void matmul_case(fixture *f, kvrt_dtype type, int64_t n_out, int64_t n_in, int32_t n_tokens, uint64_t seed)
{
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    const size_t w_lead = 64; /* weights at an offset inside their buffer */
    size_t w_bytes;
    void *w = make_weights(&rng, type, n_out, n_in, w_lead, &w_bytes);

    /* x rows inside wider rows (NaN padding), starting 3 floats into the buffer */
    const int64_t x_stride = n_in + 5, x_off = 3;
    const size_t x_total = (size_t)(x_off + n_tokens * x_stride);
    float *x = xmalloc(x_total * sizeof(float));
    for (size_t i = 0; i < x_total; i++)
        x[i] = NAN;
    for (int32_t t = 0; t < n_tokens; t++)
        ref_fill(&rng, x + x_off + t * x_stride, n_in, -1.0f, 1.0f);

    double *want = xmalloc((size_t)n_tokens * (size_t)n_out * sizeof(double));
    ref_matmul(type, (char *)w + w_lead, n_out, n_in, x + x_off, x_stride, n_tokens, want);

    outbuf y[2];
    for (int k = 0; k < 2; k++) {
        kvrt_backend *be = f->be[k];
        y[k] = out_new(7, n_tokens, n_out + 3, n_out);
        kvrt_view wv = wrap(be, w, w_bytes, w_lead);
        kvrt_view xv = wrap(be, x, x_total * sizeof(float), x_off * sizeof(float));
        kvrt_view yv = wrap(be, y[k].p, y[k].total * sizeof(float), y[k].off * sizeof(float));
        kvrt_status s = be->ops->matmul(be, type, wv, n_out, n_in, xv, x_stride, yv, y[k].stride, n_tokens);
        if (s != KVRT_OK)
            fail_msg("matmul failed: %s", be->err.message);
        unwrap(be, wv);
        unwrap(be, xv);
        unwrap(be, yv);
        out_check_canaries(&y[k]);
        char what[128];
        snprintf(what, sizeof(what), "matmul %s n_out %lld n_in %lld n_tokens %d, %d thread(s)",
                 kvrt_dtype_name(type), (long long)n_out, (long long)n_in, (int)n_tokens, k + 1);
        assert_close(what, out_at(&y[k]), y[k].stride, want, n_tokens, n_out);
    }
    /* what we guarantee: the thread count does not change a single bit */
    assert_rows_bitwise_equal(out_at(&y[0]), out_at(&y[1]), n_tokens, y[0].stride, n_out);
    free(y[0].p);
    free(y[1].p);
    free(want);
    free(x);
    free(w);
}

static void test_matmul_all_types_and_shapes(void **state)
{
    fixture *f = *state;
    static const int64_t n_ins[] = {64, 172, 288, 768, 2048};
    static const int32_t n_tokens[] = {1, 3, 17, 64};
    static const int64_t n_outs[] = {1, 37, 67, 131, 259, 13};
    int k = 0;
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(all_types); ti++) {
        for (size_t ii = 0; ii < KVRT_ARRAY_LEN(n_ins); ii++) {
            if (n_ins[ii] % kvrt_dtype_block_values(all_types[ti]) != 0)
                continue; /* 172: F32/F16/BF16 only, as in stories260K's ffn_down */
            for (size_t ni = 0; ni < KVRT_ARRAY_LEN(n_tokens); ni++, k++)
                matmul_case(f, all_types[ti], n_outs[k % KVRT_ARRAY_LEN(n_outs)], n_ins[ii], n_tokens[ni],
                            (uint64_t)k + 1);
        }
    }
}

/* Shapes that make several GEMV tasks and several W tiles per call. */
static void test_matmul_many_tasks(void **state)
{
    fixture *f = *state;
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(all_types); ti++) {
        matmul_case(f, all_types[ti], 600, 64, 17, 100 + ti);  /* 600 rows: 3 tiles of 256 */
        matmul_case(f, all_types[ti], 1031, 256, 1, 200 + ti); /* GEMV over many tasks */
        matmul_case(f, all_types[ti], 300, 2048, 2, 300 + ti); /* 64-row tiles, 5 of them */
    }
}

/* A NaN in one token's x reaches that token's outputs, and only those. */
static void test_matmul_nan_propagates(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[1];
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(all_types); ti++) {
        for (int32_t n_tokens = 1; n_tokens <= 3; n_tokens += 2) {
            ref_rng rng;
            ref_rng_seed(&rng, 7);
            const int64_t n_out = 40, n_in = 64;
            size_t w_bytes;
            void *w = make_weights(&rng, all_types[ti], n_out, n_in, 0, &w_bytes);
            float x[3 * 64], y[3 * 40];
            ref_fill(&rng, x, n_tokens * n_in, -1.0f, 1.0f);
            x[(n_tokens - 1) * n_in + 5] = NAN;
            kvrt_view wv = wrap(be, w, w_bytes, 0), xv = wrap(be, x, sizeof(x), 0), yv = wrap(be, y, sizeof(y), 0);
            assert_int_equal(be->ops->matmul(be, all_types[ti], wv, n_out, n_in, xv, n_in, yv, n_out, n_tokens),
                             KVRT_OK);
            for (int32_t t = 0; t < n_tokens; t++)
                for (int64_t o = 0; o < n_out; o++)
                    assert_true(t == n_tokens - 1 ? isnan(y[t * n_out + o]) : isfinite(y[t * n_out + o]));
            unwrap(be, wv);
            unwrap(be, xv);
            unwrap(be, yv);
            free(w);
        }
    }
}

static void test_matmul_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[1];
    ref_rng rng;
    ref_rng_seed(&rng, 3);
    size_t w_bytes;
    void *w = make_weights(&rng, KVRT_DTYPE_Q8_0, 8, 64, 0, &w_bytes);
    float x[2 * 64], y[2 * 8 + 1];
    ref_fill(&rng, x, 128, -1.0f, 1.0f);
    for (size_t i = 0; i < KVRT_ARRAY_LEN(y); i++)
        y[i] = 42.0f;
    kvrt_view wv = wrap(be, w, w_bytes, 0), xv = wrap(be, x, sizeof(x), 0);
    kvrt_view yv = wrap(be, y, 2 * 8 * sizeof(float), 0);
    kvrt_view w_short = wrap(be, w, w_bytes - 1, 0);
    kvrt_view y_odd = wrap(be, (char *)y + 2, 2 * 8 * sizeof(float), 0);
    const kvrt_dtype q8 = KVRT_DTYPE_Q8_0;

    assert_int_equal(be->ops->matmul(be, q8, wv, 8, 64, xv, 64, yv, 8, 2), KVRT_OK);
    assert_error(be, be->ops->matmul(be, q8, w_short, 8, 64, xv, 64, yv, 8, 2), KVRT_ERR_INVALID_ARGUMENT,
                 "matmul: weights");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 64, xv, 64, yv, 8, 3), KVRT_ERR_INVALID_ARGUMENT, "matmul: x");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 64, xv, 64, yv, 9, 2), KVRT_ERR_INVALID_ARGUMENT, "matmul: y");
    assert_error(be, be->ops->matmul(be, q8, wv, 9, 64, xv, 64, yv, 9, 1), KVRT_ERR_INVALID_ARGUMENT, "exceed");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 48, xv, 64, yv, 8, 1), KVRT_ERR_INVALID_ARGUMENT,
                 "not a multiple of the q8_0 block");
    assert_error(be, be->ops->matmul(be, (kvrt_dtype)16, wv, 8, 64, xv, 64, yv, 8, 1), KVRT_ERR_UNSUPPORTED,
                 "not supported");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 64, xv, 63, yv, 8, 1), KVRT_ERR_INVALID_ARGUMENT, "x_stride");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 64, xv, 64, yv, 7, 1), KVRT_ERR_INVALID_ARGUMENT, "y_stride");
    assert_error(be, be->ops->matmul(be, q8, wv, 0, 64, xv, 64, yv, 8, 1), KVRT_ERR_INVALID_ARGUMENT, "bad shape");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 64, xv, 64, yv, 8, -1), KVRT_ERR_INVALID_ARGUMENT, "bad shape");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 64, xv, 64, y_odd, 8, 1), KVRT_ERR_INVALID_ARGUMENT, "aligned");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 64, xv, 64, (kvrt_view){NULL, 0}, 8, 1),
                 KVRT_ERR_INVALID_ARGUMENT, "no buffer");
    assert_error(be, be->ops->matmul(be, q8, wv, 8, 32, xv, 64, kvrt_view_at(xv, 16 * sizeof(float)), 64, 1),
                 KVRT_ERR_INVALID_ARGUMENT, "overlaps x");
    /* F16 weights at an odd byte offset */
    assert_error(be, be->ops->matmul(be, KVRT_DTYPE_F16, kvrt_view_at(wv, 1), 2, 64, xv, 64, yv, 8, 1),
                 KVRT_ERR_INVALID_ARGUMENT, "aligned");
    /* n_tokens 0 is an empty product, not an error */
    assert_int_equal(be->ops->matmul(be, q8, wv, 8, 64, xv, 64, yv, 8, 0), KVRT_OK);
    assert_true(y[16] == 42.0f); /* the float after the output was never written */
    unwrap(be, wv);
    unwrap(be, xv);
    unwrap(be, yv);
    unwrap(be, w_short);
    unwrap(be, y_odd);
    free(w);
}

/* The portable and the AVX2 row kernels (when this CPU has AVX2) directly. */
static void test_row_kernels_each_isa(void **state)
{
    (void)state;
    static const int64_t ns[] = {7, 32, 64, 96, 172, 288, 2048};
    kvrt_cpu_isa isas[2] = {KVRT_CPU_ISA_PORTABLE, kvrt_cpu_best_isa()};
    for (int ii = 0; ii < 2; ii++) {
        for (size_t ti = 0; ti < KVRT_ARRAY_LEN(all_types); ti++) {
            kvrt_dtype type = all_types[ti];
            for (size_t ni = 0; ni < KVRT_ARRAY_LEN(ns); ni++) {
                const int64_t n = ns[ni];
                if (n % kvrt_dtype_block_values(type) != 0)
                    continue;
                ref_rng rng;
                ref_rng_seed(&rng, (uint64_t)(n * 10 + (int64_t)ti));
                size_t bytes;
                void *w = make_weights(&rng, type, 1, n, 0, &bytes);
                float *x = xmalloc((size_t)n * sizeof(float)), *got = xmalloc((size_t)n * sizeof(float));
                float *want = xmalloc((size_t)n * sizeof(float));
                ref_fill(&rng, x, n, -1.0f, 1.0f);
                kvrt_dequantize_row(type, w, want, n);
                kvrt_cpu_dequant_kernel(isas[ii], type)(w, got, n);
                assert_memory_equal(got, want, (size_t)n * sizeof(float)); /* dequantization is exact */
                kvrt_cpu_dot_fn dot = kvrt_cpu_dot_kernel(isas[ii], type);
                assert_non_null(dot);
                {
                    double ref, mag = 0.0;
                    ref_matmul(type, w, 1, n, x, n, 1, &ref);
                    for (int64_t i = 0; i < n; i++)
                        mag += fabs((double)want[i] * x[i]);
                    double err = fabs((double)dot(w, x, n) - ref);
                    if (err > (double)(n / 8 + 16) * 0x1p-24 * mag) /* a sum split over 8 lanes */
                        fail_msg("dot %s n %lld isa %d: error %.3g vs sum|w x| %.3g", kvrt_dtype_name(type),
                                 (long long)n, (int)isas[ii], err, mag);
                }
                free(x);
                free(got);
                free(want);
                free(w);
            }
        }
    }
}

/* ---- rmsnorm ------------------------------------------------------------------------- */

static void test_rmsnorm(void **state)
{
    fixture *f = *state;
    static const int32_t dims[] = {64, 172, 2048};
    static const int32_t toks[] = {1, 17, 64};
    const float eps = 1e-5f;
    for (size_t di = 0; di < KVRT_ARRAY_LEN(dims); di++) {
        for (size_t ti = 0; ti < KVRT_ARRAY_LEN(toks); ti++) {
            const int32_t dim = dims[di], n = toks[ti];
            const int64_t xs = dim + 3;
            ref_rng rng;
            ref_rng_seed(&rng, (uint64_t)(dim + n));
            float *x = xmalloc((size_t)(n * xs) * sizeof(float)), *w = xmalloc((size_t)dim * sizeof(float));
            ref_fill(&rng, x, n * xs, -2.0f, 2.0f);
            ref_fill(&rng, w, dim, 0.5f, 1.5f);
            double *want = xmalloc((size_t)n * (size_t)dim * sizeof(double));
            ref_rmsnorm(x, xs, w, n, dim, eps, want);
            outbuf y[2];
            for (int k = 0; k < 2; k++) {
                kvrt_backend *be = f->be[k];
                y[k] = out_new(5, n, dim + 1, dim);
                kvrt_view xv = wrap(be, x, (size_t)(n * xs) * sizeof(float), 0);
                kvrt_view wv = wrap(be, w, (size_t)dim * sizeof(float), 0);
                kvrt_view yv = wrap(be, y[k].p, y[k].total * sizeof(float), y[k].off * sizeof(float));
                assert_int_equal(be->ops->rmsnorm(be, xv, xs, wv, yv, y[k].stride, n, dim, eps), KVRT_OK);
                out_check_canaries(&y[k]);
                assert_close("rmsnorm", out_at(&y[k]), y[k].stride, want, n, dim);
                /* in place: y is x */
                float *xc = xmalloc((size_t)(n * xs) * sizeof(float));
                memcpy(xc, x, (size_t)(n * xs) * sizeof(float));
                kvrt_view xcv = wrap(be, xc, (size_t)(n * xs) * sizeof(float), 0);
                assert_int_equal(be->ops->rmsnorm(be, xcv, xs, wv, xcv, xs, n, dim, eps), KVRT_OK);
                for (int32_t t = 0; t < n; t++) {
                    assert_memory_equal(xc + t * xs, out_at(&y[k]) + t * y[k].stride, (size_t)dim * sizeof(float));
                    assert_memory_equal(xc + t * xs + dim, x + t * xs + dim, 3 * sizeof(float)); /* padding kept */
                }
                unwrap(be, xv);
                unwrap(be, wv);
                unwrap(be, yv);
                unwrap(be, xcv);
                free(xc);
            }
            assert_rows_bitwise_equal(out_at(&y[0]), out_at(&y[1]), n, y[0].stride, dim);
            free(y[0].p);
            free(y[1].p);
            free(want);
            free(x);
            free(w);
        }
    }
}

static void test_rmsnorm_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[0];
    float x[2 * 16] = {0}, w[16] = {0}, y[2 * 16];
    kvrt_view xv = wrap(be, x, sizeof(x), 0), wv = wrap(be, w, sizeof(w), 0), yv = wrap(be, y, sizeof(y), 0);
    assert_error(be, be->ops->rmsnorm(be, xv, 16, wv, yv, 16, 3, 16, 1e-5f), KVRT_ERR_INVALID_ARGUMENT,
                 "rmsnorm: x");
    assert_error(be, be->ops->rmsnorm(be, xv, 16, wv, yv, 16, 2, 17, 1e-5f), KVRT_ERR_INVALID_ARGUMENT,
                 "stride 16 < row length 17");
    assert_error(be, be->ops->rmsnorm(be, xv, 16, wv, wv, 16, 1, 16, 1e-5f), KVRT_ERR_INVALID_ARGUMENT,
                 "y overlaps the weight");
    assert_error(be, be->ops->rmsnorm(be, xv, 16, wv, yv, 16, 2, 0, 1e-5f), KVRT_ERR_INVALID_ARGUMENT,
                 "rmsnorm: dim");
    assert_error(be, be->ops->rmsnorm(be, xv, 16, wv, yv, 16, 2, 16, -1.0f), KVRT_ERR_INVALID_ARGUMENT, "eps");
    assert_error(be, be->ops->rmsnorm(be, xv, 16, kvrt_view_at(wv, 4), yv, 16, 2, 16, 1e-5f),
                 KVRT_ERR_INVALID_ARGUMENT, "rmsnorm: weight");
    assert_error(be, be->ops->rmsnorm(be, xv, 16, wv, kvrt_view_at(xv, 8 * sizeof(float)), 16, 1, 16, 1e-5f),
                 KVRT_ERR_INVALID_ARGUMENT, "partly overlaps");
    unwrap(be, xv);
    unwrap(be, wv);
    unwrap(be, yv);
}

/* ---- RoPE ------------------------------------------------------------------------------ */

static void rope_case(fixture *f, int32_t n_tokens, int32_t n_heads, int32_t head_dim, int32_t rot_dim, int32_t neox)
{
    const int32_t max_pos = 300;
    const int64_t width = (int64_t)n_heads * head_dim, stride = width + 4;
    ref_rng rng;
    ref_rng_seed(&rng, (uint64_t)(n_tokens * 1000 + head_dim + rot_dim + neox));
    float *cs = xmalloc((size_t)max_pos * (size_t)rot_dim * sizeof(float));
    ref_rope_table(cs, max_pos, rot_dim, 10000.0);
    int32_t *pos = xmalloc((size_t)n_tokens * sizeof(int32_t));
    for (int32_t t = 0; t < n_tokens; t++)
        pos[t] = t == 0 ? max_pos - 1 : (int32_t)(ref_rng_u32(&rng) % max_pos);
    outbuf x0 = out_new(2, n_tokens, stride, width); /* the input, canaries in the padding */
    for (int32_t t = 0; t < n_tokens; t++)
        ref_fill(&rng, out_at(&x0) + t * stride, width, -1.0f, 1.0f);
    double *want = xmalloc((size_t)(n_tokens * width) * sizeof(double));
    ref_rope(out_at(&x0), stride, n_tokens, n_heads, head_dim, rot_dim, neox, pos, cs, want);
    kvrt_rope_desc d = {n_tokens, n_heads, head_dim, rot_dim, neox, max_pos, stride};
    outbuf x[2];
    for (int k = 0; k < 2; k++) {
        kvrt_backend *be = f->be[k];
        x[k] = x0;
        x[k].p = xmalloc(x0.total * sizeof(float));
        memcpy(x[k].p, x0.p, x0.total * sizeof(float));
        kvrt_view xv = wrap(be, x[k].p, x[k].total * sizeof(float), x[k].off * sizeof(float));
        kvrt_view pv = wrap(be, pos, (size_t)n_tokens * sizeof(int32_t), 0);
        kvrt_view cv = wrap(be, cs, (size_t)max_pos * (size_t)rot_dim * sizeof(float), 0);
        assert_int_equal(be->ops->rope(be, xv, pv, cv, &d), KVRT_OK);
        out_check_canaries(&x[k]);
        char what[96];
        snprintf(what, sizeof(what), "rope neox %d head_dim %d rot_dim %d", (int)neox, (int)head_dim, (int)rot_dim);
        assert_close(what, out_at(&x[k]), stride, want, n_tokens, width);
        /* dims past rot_dim are left exactly as they were */
        for (int32_t t = 0; t < n_tokens; t++)
            for (int32_t h = 0; h < n_heads; h++) {
                int64_t o = t * stride + (int64_t)h * head_dim + rot_dim;
                assert_memory_equal(out_at(&x[k]) + o, out_at(&x0) + o, (size_t)(head_dim - rot_dim) * sizeof(float));
            }
        unwrap(be, xv);
        unwrap(be, pv);
        unwrap(be, cv);
    }
    assert_rows_bitwise_equal(out_at(&x[0]), out_at(&x[1]), n_tokens, stride, width);
    free(x[0].p);
    free(x[1].p);
    free(x0.p);
    free(want);
    free(pos);
    free(cs);
}

static void test_rope(void **state)
{
    fixture *f = *state;
    for (int32_t neox = 0; neox <= 1; neox++) {
        rope_case(f, 1, 4, 64, 64, neox);
        rope_case(f, 17, 4, 64, 32, neox);   /* partial rotation */
        rope_case(f, 64, 8, 128, 128, neox); /* big enough to split over threads */
        rope_case(f, 3, 2, 80, 26, neox);
    }
}

static void test_rope_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[1];
    float x[2 * 8], cs[4 * 8];
    int32_t pos[2] = {1, 4};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(x); i++)
        x[i] = (float)i;
    ref_rope_table(cs, 4, 8, 10000.0);
    kvrt_view xv = wrap(be, x, sizeof(x), 0), pv = wrap(be, pos, sizeof(pos), 0), cv = wrap(be, cs, sizeof(cs), 0);
    kvrt_rope_desc d = {2, 1, 8, 8, 0, 4, 8};
    assert_error(be, be->ops->rope(be, xv, pv, cv, &d), KVRT_ERR_INVALID_ARGUMENT,
                 "position 4 of token 1 is outside the cos/sin table [0, 4)");
    for (size_t i = 0; i < KVRT_ARRAY_LEN(x); i++)
        assert_true(x[i] == (float)i); /* nothing rotated before the error */
    pos[1] = -1;
    assert_error(be, be->ops->rope(be, xv, pv, cv, &d), KVRT_ERR_INVALID_ARGUMENT, "position -1");
    pos[1] = 2;
    kvrt_rope_desc bad = d;
    bad.rot_dim = 7;
    assert_error(be, be->ops->rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "rot_dim 7");
    bad = d;
    bad.rot_dim = 10;
    assert_error(be, be->ops->rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "rot_dim 10");
    bad = d;
    bad.max_pos = 5;
    assert_error(be, be->ops->rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "cos/sin table");
    bad = d;
    bad.n_tokens = 3;
    assert_error(be, be->ops->rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "rope: x");
    bad = d;
    bad.neox = 2;
    assert_error(be, be->ops->rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "neox");
    assert_error(be, be->ops->rope(be, xv, pv, cv, NULL), KVRT_ERR_INVALID_ARGUMENT, "descriptor");
    assert_int_equal(be->ops->rope(be, xv, pv, cv, &d), KVRT_OK);
    unwrap(be, xv);
    unwrap(be, pv);
    unwrap(be, cv);
}

/* ---- SwiGLU and add ------------------------------------------------------------------- */

static void test_swiglu(void **state)
{
    fixture *f = *state;
    static const int32_t toks[] = {1, 17, 64};
    const int32_t dim = 688;
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(toks); ti++) {
        const int32_t n = toks[ti];
        ref_rng rng;
        ref_rng_seed(&rng, (uint64_t)n);
        /* gate and up side by side in one fused row, as a gate/up matmul writes them */
        const int64_t fs = 2 * dim;
        float *fused = xmalloc((size_t)(n * fs) * sizeof(float));
        ref_fill(&rng, fused, n * fs, -8.0f, 8.0f);
        fused[0] = -100.0f; /* exp(100) overflows: silu must still be -0, not NaN */
        fused[1] = 100.0f;
        double *want = xmalloc((size_t)(n * dim) * sizeof(double));
        ref_swiglu(fused, fs, fused + dim, fs, n, dim, want);
        outbuf o[2];
        for (int k = 0; k < 2; k++) {
            kvrt_backend *be = f->be[k];
            o[k] = out_new(1, n, dim + 2, dim);
            kvrt_view fv = wrap(be, fused, (size_t)(n * fs) * sizeof(float), 0);
            kvrt_view ov = wrap(be, o[k].p, o[k].total * sizeof(float), o[k].off * sizeof(float));
            assert_int_equal(be->ops->swiglu(be, fv, fs, kvrt_view_at(fv, (size_t)dim * sizeof(float)), fs, ov,
                                             o[k].stride, n, dim),
                             KVRT_OK);
            out_check_canaries(&o[k]);
            assert_close("swiglu", out_at(&o[k]), o[k].stride, want, n, dim);
            /* in place over the gate half */
            float *copy = xmalloc((size_t)(n * fs) * sizeof(float));
            memcpy(copy, fused, (size_t)(n * fs) * sizeof(float));
            kvrt_view cv = wrap(be, copy, (size_t)(n * fs) * sizeof(float), 0);
            assert_int_equal(
                be->ops->swiglu(be, cv, fs, kvrt_view_at(cv, (size_t)dim * sizeof(float)), fs, cv, fs, n, dim),
                KVRT_OK);
            for (int32_t t = 0; t < n; t++)
                assert_memory_equal(copy + t * fs, out_at(&o[k]) + t * o[k].stride, (size_t)dim * sizeof(float));
            unwrap(be, fv);
            unwrap(be, ov);
            unwrap(be, cv);
            free(copy);
        }
        assert_rows_bitwise_equal(out_at(&o[0]), out_at(&o[1]), n, o[0].stride, dim);
        free(o[0].p);
        free(o[1].p);
        free(want);
        free(fused);
    }
}

static void test_add(void **state)
{
    fixture *f = *state;
    static const int64_t ns[] = {1, 1000, 100003};
    for (size_t ni = 0; ni < KVRT_ARRAY_LEN(ns); ni++) {
        const int64_t n = ns[ni];
        ref_rng rng;
        ref_rng_seed(&rng, (uint64_t)n);
        float *a = xmalloc((size_t)n * sizeof(float)), *b = xmalloc((size_t)n * sizeof(float));
        ref_fill(&rng, a, n, -1.0f, 1.0f);
        ref_fill(&rng, b, n, -1.0f, 1.0f);
        for (int k = 0; k < 2; k++) {
            kvrt_backend *be = f->be[k];
            outbuf o = out_new(3, 1, n, n);
            kvrt_view av = wrap(be, a, (size_t)n * sizeof(float), 0), bv = wrap(be, b, (size_t)n * sizeof(float), 0);
            kvrt_view ov = wrap(be, o.p, o.total * sizeof(float), o.off * sizeof(float));
            assert_int_equal(be->ops->add(be, av, bv, ov, n), KVRT_OK);
            out_check_canaries(&o);
            for (int64_t i = 0; i < n; i++)
                assert_true(out_at(&o)[i] == a[i] + b[i]); /* one rounding: exact match */
            /* in place: out is a */
            float *ac = xmalloc((size_t)n * sizeof(float));
            memcpy(ac, a, (size_t)n * sizeof(float));
            kvrt_view acv = wrap(be, ac, (size_t)n * sizeof(float), 0);
            assert_int_equal(be->ops->add(be, acv, bv, acv, n), KVRT_OK);
            assert_memory_equal(ac, out_at(&o), (size_t)n * sizeof(float));
            assert_error(be, be->ops->add(be, av, bv, ov, n + GUARD + 1), KVRT_ERR_INVALID_ARGUMENT, "add: a");
            if (n > 1)
                assert_error(be, be->ops->add(be, acv, bv, kvrt_view_at(acv, 4), n - 1), KVRT_ERR_INVALID_ARGUMENT,
                             "partly overlaps");
            assert_error(be, be->ops->add(be, av, bv, ov, -1), KVRT_ERR_INVALID_ARGUMENT, "add: n");
            unwrap(be, av);
            unwrap(be, bv);
            unwrap(be, ov);
            unwrap(be, acv);
            free(ac);
            free(o.p);
        }
        free(a);
        free(b);
    }
}

static void test_swiglu_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[0];
    float g[2 * 8] = {0}, u[2 * 8] = {0}, o[2 * 8];
    kvrt_view gv = wrap(be, g, sizeof(g), 0), uv = wrap(be, u, sizeof(u), 0), ov = wrap(be, o, sizeof(o), 0);
    assert_error(be, be->ops->swiglu(be, gv, 8, uv, 8, kvrt_view_at(ov, 4), 8, 2, 8), KVRT_ERR_INVALID_ARGUMENT,
                 "swiglu: out");
    assert_error(be, be->ops->swiglu(be, gv, 8, uv, 9, ov, 8, 2, 8), KVRT_ERR_INVALID_ARGUMENT, "swiglu: up");
    assert_error(be, be->ops->swiglu(be, gv, 8, uv, 8, kvrt_view_at(gv, 4), 8, 1, 8), KVRT_ERR_INVALID_ARGUMENT,
                 "partly overlaps");
    assert_error(be, be->ops->swiglu(be, gv, 8, uv, 8, ov, 8, 2, 0), KVRT_ERR_INVALID_ARGUMENT, "swiglu: dim");
    unwrap(be, gv);
    unwrap(be, uv);
    unwrap(be, ov);
}

/* ---- embed, gather_rows, argmax --------------------------------------------------------- */

static void test_embed(void **state)
{
    fixture *f = *state;
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(all_types); ti++) {
        const kvrt_dtype type = all_types[ti];
        const int64_t dim = type == KVRT_DTYPE_Q8_0 || type == KVRT_DTYPE_Q4_0 ? 288 : 172;
        const int64_t n_rows = 50;
        const int32_t n = 64;
        ref_rng rng;
        ref_rng_seed(&rng, 11 + ti);
        size_t bytes;
        const size_t lead = 32;
        void *table = make_weights(&rng, type, n_rows, dim, lead, &bytes);
        int32_t ids[64];
        for (int32_t t = 0; t < n; t++)
            ids[t] = t < 2 ? (int32_t)(t * (n_rows - 1)) : (int32_t)(ref_rng_u32(&rng) % n_rows);
        const size_t row_bytes = kvrt_dtype_row_bytes(type, dim);
        float *want = xmalloc((size_t)(n * dim) * sizeof(float));
        for (int32_t t = 0; t < n; t++)
            kvrt_dequantize_row(type, (char *)table + lead + (size_t)ids[t] * row_bytes, want + t * dim, dim);
        for (int k = 0; k < 2; k++) {
            kvrt_backend *be = f->be[k];
            outbuf o = out_new(4, n, dim, dim);
            kvrt_view tv = wrap(be, table, bytes, lead), iv = wrap(be, ids, sizeof(ids), 0);
            kvrt_view ov = wrap(be, o.p, o.total * sizeof(float), o.off * sizeof(float));
            assert_int_equal(be->ops->embed(be, type, tv, dim, iv, n, ov), KVRT_OK);
            out_check_canaries(&o);
            assert_memory_equal(out_at(&o), want, (size_t)(n * dim) * sizeof(float)); /* exactly the stored values */
            ids[5] = (int32_t)n_rows; /* one past the table's last row */
            assert_error(be, be->ops->embed(be, type, tv, dim, iv, n, ov), KVRT_ERR_INVALID_ARGUMENT,
                         "token id 50 (token 5) is outside the table's 50 rows");
            ids[5] = -2;
            assert_error(be, be->ops->embed(be, type, tv, dim, iv, n, ov), KVRT_ERR_INVALID_ARGUMENT, "token id -2");
            ids[5] = 0;
            assert_error(be, be->ops->embed(be, type, tv, dim, iv, n + 1, ov), KVRT_ERR_INVALID_ARGUMENT,
                         "embed: ids");
            unwrap(be, tv);
            unwrap(be, iv);
            unwrap(be, ov);
            free(o.p);
            ids[5] = (int32_t)(ref_rng_u32(&rng) % n_rows);
            kvrt_dequantize_row(type, (char *)table + lead + (size_t)ids[5] * row_bytes, want + 5 * dim, dim);
        }
        free(want);
        free(table);
    }
    kvrt_backend *be = f->be[0];
    char raw[64] = {0};
    int32_t id = 0;
    float out[64];
    kvrt_view tv = wrap(be, raw, sizeof(raw), 0), iv = wrap(be, &id, sizeof(id), 0), ov = wrap(be, out, sizeof(out), 0);
    assert_error(be, be->ops->embed(be, (kvrt_dtype)16, tv, 32, iv, 1, ov), KVRT_ERR_UNSUPPORTED, "not supported");
    assert_error(be, be->ops->embed(be, KVRT_DTYPE_Q4_0, tv, 40, iv, 1, ov), KVRT_ERR_INVALID_ARGUMENT,
                 "not a multiple of the q4_0 block");
    assert_error(be, be->ops->embed(be, KVRT_DTYPE_F32, tv, 17, iv, 1, ov), KVRT_ERR_INVALID_ARGUMENT,
                 "embed: table");
    unwrap(be, tv);
    unwrap(be, iv);
    unwrap(be, ov);
}

static void test_gather_rows(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[1];
    const int32_t dim = 40, rows = 9, n = 6;
    const int64_t ss = 45;
    float src[(9 - 1) * 45 + 40];
    ref_rng rng;
    ref_rng_seed(&rng, 5);
    ref_fill(&rng, src, (int64_t)KVRT_ARRAY_LEN(src), -1.0f, 1.0f);
    int32_t idx[6] = {8, 0, 3, 3, 8, 1};
    outbuf o = out_new(2, n, dim + 5, dim);
    kvrt_view sv = wrap(be, src, sizeof(src), 0), iv = wrap(be, idx, sizeof(idx), 0);
    kvrt_view ov = wrap(be, o.p, o.total * sizeof(float), o.off * sizeof(float));
    assert_int_equal(be->ops->gather_rows(be, sv, ss, iv, n, ov, o.stride, dim), KVRT_OK);
    out_check_canaries(&o);
    for (int32_t i = 0; i < n; i++)
        assert_memory_equal(out_at(&o) + i * o.stride, src + idx[i] * ss, (size_t)dim * sizeof(float));
    idx[2] = rows;
    assert_error(be, be->ops->gather_rows(be, sv, ss, iv, n, ov, o.stride, dim), KVRT_ERR_INVALID_ARGUMENT,
                 "index 9 (entry 2) is outside the source's 9 rows");
    idx[2] = -1;
    assert_error(be, be->ops->gather_rows(be, sv, ss, iv, n, ov, o.stride, dim), KVRT_ERR_INVALID_ARGUMENT,
                 "index -1");
    idx[2] = 0;
    assert_error(be, be->ops->gather_rows(be, sv, ss, iv, n, ov, dim - 1, dim), KVRT_ERR_INVALID_ARGUMENT,
                 "gather_rows: dst");
    assert_error(be, be->ops->gather_rows(be, sv, ss, iv, n, kvrt_view_at(sv, 4), ss, dim),
                 KVRT_ERR_INVALID_ARGUMENT, "dst overlaps src");
    unwrap(be, sv);
    unwrap(be, iv);
    unwrap(be, ov);
    free(o.p);
}

static void test_argmax(void **state)
{
    fixture *f = *state;
    const int32_t n_cols = 32000, n_rows = 6;
    const int64_t stride = n_cols + 16;
    float *x = xmalloc((size_t)(n_rows * stride) * sizeof(float));
    ref_rng rng;
    ref_rng_seed(&rng, 9);
    ref_fill(&rng, x, n_rows * stride, -10.0f, 10.0f);
    int32_t expect[6];
    for (int32_t r = 0; r < 4; r++) { /* a unique or tied maximum at a random place, NaNs around */
        float *row = x + r * stride;
        expect[r] = 1 + (int32_t)(ref_rng_u32(&rng) % (uint32_t)(n_cols - 2));
        row[expect[r]] = 11.0f;
        if (r % 2 == 1)
            row[expect[r] + 1 + (int32_t)(ref_rng_u32(&rng) % (uint32_t)(n_cols - expect[r] - 1))] = 11.0f;
        row[(expect[r] + 7) % n_cols] = NAN;
        row[0] = r == 2 ? NAN : row[0];
        row[n_cols] = 100.0f; /* padding past the row must not count */
    }
    for (int32_t c = 0; c < n_cols; c++) {
        x[4 * stride + c] = NAN; /* all NaN: 0 */
        x[5 * stride + c] = -INFINITY; /* all -inf: the first */
    }
    expect[4] = 0;
    expect[5] = 0;
    for (int k = 0; k < 2; k++) {
        kvrt_backend *be = f->be[k];
        int32_t out[7] = {-5, -5, -5, -5, -5, -5, -5};
        kvrt_view xv = wrap(be, x, (size_t)(n_rows * stride) * sizeof(float), 0), ov = wrap(be, out, sizeof(out), 0);
        assert_int_equal(be->ops->argmax(be, xv, stride, n_rows, n_cols, ov), KVRT_OK);
        for (int32_t r = 0; r < n_rows; r++)
            assert_int_equal(out[r], expect[r]);
        assert_int_equal(out[6], -5);
        assert_error(be, be->ops->argmax(be, xv, stride, 7, n_cols, ov), KVRT_ERR_INVALID_ARGUMENT, "argmax: x");
        assert_error(be, be->ops->argmax(be, xv, stride, n_rows, 0, ov), KVRT_ERR_INVALID_ARGUMENT, "n_cols");
        assert_error(be, be->ops->argmax(be, xv, stride, n_rows, n_cols, kvrt_view_at(ov, 8)),
                     KVRT_ERR_INVALID_ARGUMENT, "argmax: out");
        unwrap(be, xv);
        unwrap(be, ov);
    }
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_kernels_each_isa),
        cmocka_unit_test(test_matmul_all_types_and_shapes),
        cmocka_unit_test(test_matmul_many_tasks),
        cmocka_unit_test(test_matmul_nan_propagates),
        cmocka_unit_test(test_matmul_bad_input),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rmsnorm_bad_input),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_bad_input),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_swiglu_bad_input),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_gather_rows),
        cmocka_unit_test(test_argmax),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
