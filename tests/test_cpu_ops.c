/* What only the CPU backend has: its row kernels in each instruction set
 * (portable C and AVX2/FMA/F16C) against the reference, and the front door's
 * checks on caller memory it wraps in place (host addresses: alignment,
 * overlaps between separately wrapped views). The ops' numbers on every
 * backend, 1 and 2 CPU threads bit for bit, are test_backend_ops's. */
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
#include "backend/ops.h"

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
    assert_int_equal(kvrt_op_buffer_wrap_host(be, p, bytes, &b), KVRT_OK);
    return (kvrt_view){b, offset};
}

static void unwrap(kvrt_backend *be, kvrt_view v)
{
    kvrt_op_buffer_destroy(be, v.buf);
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

    assert_int_equal(kvrt_op_matmul(be, q8, wv, 8, 64, xv, 64, yv, 8, 2), KVRT_OK);
    assert_error(be, kvrt_op_matmul(be, q8, w_short, 8, 64, xv, 64, yv, 8, 2), KVRT_ERR_INVALID_ARGUMENT,
                 "matmul: weights");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 64, xv, 64, yv, 8, 3), KVRT_ERR_INVALID_ARGUMENT, "matmul: x");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 64, xv, 64, yv, 9, 2), KVRT_ERR_INVALID_ARGUMENT, "matmul: y");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 9, 64, xv, 64, yv, 9, 1), KVRT_ERR_INVALID_ARGUMENT, "exceed");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 48, xv, 64, yv, 8, 1), KVRT_ERR_INVALID_ARGUMENT,
                 "not a multiple of the q8_0 block");
    assert_error(be, kvrt_op_matmul(be, (kvrt_dtype)16, wv, 8, 64, xv, 64, yv, 8, 1), KVRT_ERR_UNSUPPORTED,
                 "not supported");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 64, xv, 63, yv, 8, 1), KVRT_ERR_INVALID_ARGUMENT, "x_stride");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 64, xv, 64, yv, 7, 1), KVRT_ERR_INVALID_ARGUMENT, "y_stride");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 0, 64, xv, 64, yv, 8, 1), KVRT_ERR_INVALID_ARGUMENT, "bad shape");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 64, xv, 64, yv, 8, -1), KVRT_ERR_INVALID_ARGUMENT, "bad shape");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 64, xv, 64, y_odd, 8, 1), KVRT_ERR_INVALID_ARGUMENT, "aligned");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 64, xv, 64, (kvrt_view){NULL, 0}, 8, 1),
                 KVRT_ERR_INVALID_ARGUMENT, "no buffer");
    assert_error(be, kvrt_op_matmul(be, q8, wv, 8, 32, xv, 64, kvrt_view_at(xv, 16 * sizeof(float)), 64, 1),
                 KVRT_ERR_INVALID_ARGUMENT, "overlaps x");
    /* F16 weights at an odd byte offset */
    assert_error(be, kvrt_op_matmul(be, KVRT_DTYPE_F16, kvrt_view_at(wv, 1), 2, 64, xv, 64, yv, 8, 1),
                 KVRT_ERR_INVALID_ARGUMENT, "aligned");
    /* n_tokens 0 is an empty product, not an error */
    assert_int_equal(kvrt_op_matmul(be, q8, wv, 8, 64, xv, 64, yv, 8, 0), KVRT_OK);
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

static void test_rmsnorm_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[0];
    float x[2 * 16] = {0}, w[16] = {0}, y[2 * 16];
    kvrt_view xv = wrap(be, x, sizeof(x), 0), wv = wrap(be, w, sizeof(w), 0), yv = wrap(be, y, sizeof(y), 0);
    assert_error(be, kvrt_op_rmsnorm(be, xv, 16, wv, yv, 16, 3, 16, 1e-5f), KVRT_ERR_INVALID_ARGUMENT,
                 "rmsnorm: x");
    assert_error(be, kvrt_op_rmsnorm(be, xv, 16, wv, yv, 16, 2, 17, 1e-5f), KVRT_ERR_INVALID_ARGUMENT,
                 "stride 16 < row length 17");
    assert_error(be, kvrt_op_rmsnorm(be, xv, 16, wv, wv, 16, 1, 16, 1e-5f), KVRT_ERR_INVALID_ARGUMENT,
                 "y overlaps the weight");
    assert_error(be, kvrt_op_rmsnorm(be, xv, 16, wv, yv, 16, 2, 0, 1e-5f), KVRT_ERR_INVALID_ARGUMENT,
                 "rmsnorm: dim");
    assert_error(be, kvrt_op_rmsnorm(be, xv, 16, wv, yv, 16, 2, 16, -1.0f), KVRT_ERR_INVALID_ARGUMENT, "eps");
    assert_error(be, kvrt_op_rmsnorm(be, xv, 16, kvrt_view_at(wv, 4), yv, 16, 2, 16, 1e-5f),
                 KVRT_ERR_INVALID_ARGUMENT, "rmsnorm: weight");
    assert_error(be, kvrt_op_rmsnorm(be, xv, 16, wv, kvrt_view_at(xv, 8 * sizeof(float)), 16, 1, 16, 1e-5f),
                 KVRT_ERR_INVALID_ARGUMENT, "partly overlaps");
    unwrap(be, xv);
    unwrap(be, wv);
    unwrap(be, yv);
}

/* ---- RoPE ------------------------------------------------------------------------------ */

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
    /* positions are a batch array: the step checks them once (test_model_backends) */
    pos[1] = 2;
    kvrt_rope_desc bad = d;
    bad.rot_dim = 7;
    assert_error(be, kvrt_op_rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "rot_dim 7");
    for (size_t i = 0; i < KVRT_ARRAY_LEN(x); i++)
        assert_true(x[i] == (float)i); /* nothing rotated before the error */
    bad = d;
    bad.rot_dim = 10;
    assert_error(be, kvrt_op_rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "rot_dim 10");
    bad = d;
    bad.max_pos = 5;
    assert_error(be, kvrt_op_rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "cos/sin table");
    bad = d;
    bad.n_tokens = 3;
    assert_error(be, kvrt_op_rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "rope: x");
    bad = d;
    bad.neox = 2;
    assert_error(be, kvrt_op_rope(be, xv, pv, cv, &bad), KVRT_ERR_INVALID_ARGUMENT, "neox");
    assert_error(be, kvrt_op_rope(be, xv, pv, cv, NULL), KVRT_ERR_INVALID_ARGUMENT, "descriptor");
    assert_int_equal(kvrt_op_rope(be, xv, pv, cv, &d), KVRT_OK);
    unwrap(be, xv);
    unwrap(be, pv);
    unwrap(be, cv);
}

/* ---- SwiGLU and add ------------------------------------------------------------------- */

/* add's errors (its numbers are test_backend_ops's). */
static void test_add_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[1];
    const int64_t n = 1000;
    float *a = xmalloc((size_t)n * sizeof(float)), *b = xmalloc((size_t)n * sizeof(float));
    outbuf o = out_new(3, 1, n, n);
    kvrt_view av = wrap(be, a, (size_t)n * sizeof(float), 0), bv = wrap(be, b, (size_t)n * sizeof(float), 0);
    kvrt_view ov = wrap(be, o.p, o.total * sizeof(float), o.off * sizeof(float));
    assert_error(be, kvrt_op_add(be, av, bv, ov, n + GUARD + 1), KVRT_ERR_INVALID_ARGUMENT, "add: a");
    assert_error(be, kvrt_op_add(be, av, bv, kvrt_view_at(av, 4), n - 1), KVRT_ERR_INVALID_ARGUMENT,
                 "partly overlaps");
    assert_error(be, kvrt_op_add(be, av, bv, ov, -1), KVRT_ERR_INVALID_ARGUMENT, "add: n");
    out_check_canaries(&o); /* nothing was written */
    unwrap(be, av);
    unwrap(be, bv);
    unwrap(be, ov);
    free(o.p);
    free(a);
    free(b);
}

static void test_swiglu_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[0];
    float g[2 * 8] = {0}, u[2 * 8] = {0}, o[2 * 8];
    kvrt_view gv = wrap(be, g, sizeof(g), 0), uv = wrap(be, u, sizeof(u), 0), ov = wrap(be, o, sizeof(o), 0);
    assert_error(be, kvrt_op_swiglu(be, gv, 8, uv, 8, kvrt_view_at(ov, 4), 8, 2, 8), KVRT_ERR_INVALID_ARGUMENT,
                 "swiglu: out");
    assert_error(be, kvrt_op_swiglu(be, gv, 8, uv, 9, ov, 8, 2, 8), KVRT_ERR_INVALID_ARGUMENT, "swiglu: up");
    assert_error(be, kvrt_op_swiglu(be, gv, 8, uv, 8, kvrt_view_at(gv, 4), 8, 1, 8), KVRT_ERR_INVALID_ARGUMENT,
                 "partly overlaps");
    assert_error(be, kvrt_op_swiglu(be, gv, 8, uv, 8, ov, 8, 2, 0), KVRT_ERR_INVALID_ARGUMENT, "swiglu: dim");
    unwrap(be, gv);
    unwrap(be, uv);
    unwrap(be, ov);
}

/* ---- embed, gather_rows: errors (their numbers are test_backend_ops's) ----------- */

static void test_embed_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[0];
    float table[50 * 32] = {0};
    int32_t ids[4] = {0, 49, 7, 7};
    float out[5 * 32];
    kvrt_view tv = wrap(be, table, sizeof(table), 0), iv = wrap(be, ids, sizeof(ids), 0);
    kvrt_view ov = wrap(be, out, sizeof(out), 0);
    assert_int_equal(kvrt_op_embed(be, KVRT_DTYPE_F32, tv, 32, iv, 4, ov), KVRT_OK);
    assert_error(be, kvrt_op_embed(be, KVRT_DTYPE_F32, tv, 32, iv, 5, ov), KVRT_ERR_INVALID_ARGUMENT, "embed: ids");
    assert_error(be, kvrt_op_embed(be, (kvrt_dtype)16, tv, 32, iv, 1, ov), KVRT_ERR_UNSUPPORTED, "not supported");
    assert_error(be, kvrt_op_embed(be, KVRT_DTYPE_Q4_0, tv, 40, iv, 1, ov), KVRT_ERR_INVALID_ARGUMENT,
                 "not a multiple of the q4_0 block");
    kvrt_view short_table = wrap(be, table, 64, 0);
    assert_error(be, kvrt_op_embed(be, KVRT_DTYPE_F32, short_table, 17, iv, 1, ov), KVRT_ERR_INVALID_ARGUMENT,
                 "embed: table");
    unwrap(be, tv);
    unwrap(be, iv);
    unwrap(be, ov);
    unwrap(be, short_table);
}

static void test_gather_bad_input(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = f->be[1];
    const int32_t dim = 40, n = 6; /* 9 source rows */
    const int64_t ss = 45;
    float src[(9 - 1) * 45 + 40] = {0};
    int32_t idx[6] = {8, 0, 3, 3, 8, 1};
    outbuf o = out_new(2, n, dim + 5, dim);
    kvrt_view sv = wrap(be, src, sizeof(src), 0), iv = wrap(be, idx, sizeof(idx), 0);
    kvrt_view ov = wrap(be, o.p, o.total * sizeof(float), o.off * sizeof(float));
    assert_error(be, kvrt_op_gather_rows(be, sv, ss, iv, n, ov, dim - 1, dim), KVRT_ERR_INVALID_ARGUMENT,
                 "gather_rows: dst");
    assert_error(be, kvrt_op_gather_rows(be, sv, ss, iv, n, kvrt_view_at(sv, 4), ss, dim),
                 KVRT_ERR_INVALID_ARGUMENT, "dst overlaps src");
    out_check_canaries(&o); /* nothing was written */
    unwrap(be, sv);
    unwrap(be, iv);
    unwrap(be, ov);
    free(o.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_kernels_each_isa),
        cmocka_unit_test(test_matmul_bad_input),
        cmocka_unit_test(test_rmsnorm_bad_input),
        cmocka_unit_test(test_rope_bad_input),
        cmocka_unit_test(test_add_bad_input),
        cmocka_unit_test(test_swiglu_bad_input),
        cmocka_unit_test(test_embed_bad_input),
        cmocka_unit_test(test_gather_bad_input),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
