/* kvrt_cpu_gemm (cpu_gemm.c), called directly, in every flavour this CPU runs:
 *
 *  - odd shapes around the register tile (6 x 16) and the cache blocks
 *    (KC = 256, MC = 96, NC = 256), with padded strides whose padding is NaN
 *    (must never be read) and canaries around Y (must never be written);
 *  - against a double reference: NMSE <= 1e-6, max abs <= 1e-4 (DESIGN.md),
 *    and per element the rigorous bound of a k-term float sum;
 *  - Y starts as NaN: the kernel must write it, not accumulate onto it;
 *  - splitting the rows or the tokens over several calls (as thread-pool
 *    tasks do) gives the very same bits;
 *  - NaN and Inf in one token reach that token's outputs only;
 *  - through the backend: no scratch memory is KVRT_ERR_OUT_OF_HOST_MEMORY. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_gemm.h"
#include "cpu_internal.h"
#include "common/quant.h"
#include "ref_ops.h"
#include "backend/ops.h"

#define NMSE_MAX 1e-6
#define MAX_ABS 1e-4
#define CANARY 12345.678f
#define Y_LEAD 5 /* canaries before Y */

typedef struct gemm_case {
    int64_t m, n, k;
    int64_t x_pad, w_pad, y_pad; /* stride minus row length */
} gemm_case;

typedef struct operands {
    gemm_case c;
    float *x, *w; /* [m][k + x_pad], [n][k + w_pad], padding NaN */
    float *y;     /* Y_LEAD canaries, [m][n + y_pad] (padding canaries), Y_LEAD canaries */
    double *want; /* [m][n] */
    double *bound; /* [m][n]: rigorous float summation error bound */
    float *scratch;
} operands;

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes);
    assert_non_null(p);
    return p;
}

static size_t y_total(const gemm_case *c)
{
    return (size_t)(2 * Y_LEAD + c->m * (c->n + c->y_pad));
}

static float *y_at(const operands *o)
{
    return o->y + Y_LEAD;
}

static float *strided_fill(ref_rng *rng, int64_t rows, int64_t cols, int64_t pad, float lo, float hi)
{
    const int64_t stride = cols + pad;
    float *p = xmalloc((size_t)(rows * stride) * sizeof(float));
    for (int64_t r = 0; r < rows; r++) {
        ref_fill(rng, p + r * stride, cols, lo, hi);
        for (int64_t i = cols; i < stride; i++)
            p[r * stride + i] = NAN;
    }
    return p;
}

/* Weights in the range real models have, x like activations. */
static operands operands_new(const gemm_case *c, uint64_t seed)
{
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    operands o = {.c = *c};
    o.x = strided_fill(&rng, c->m, c->k, c->x_pad, -1.0f, 1.0f);
    o.w = strided_fill(&rng, c->n, c->k, c->w_pad, -0.125f, 0.125f);
    o.y = xmalloc(y_total(c) * sizeof(float));
    o.want = xmalloc((size_t)(c->m * c->n) * sizeof(double));
    o.bound = xmalloc((size_t)(c->m * c->n) * sizeof(double));
    /* exactly the documented size, so ASan sees any overrun */
    o.scratch = aligned_alloc(64, KVRT_CPU_GEMM_SCRATCH_FLOATS * sizeof(float));
    assert_non_null(o.scratch);
    /* gamma_{k+1} = (k+1)u / (1 - (k+1)u) covers a k-term sum of rounded products, FMA or not */
    const double u = ldexp(1.0, -24), g = (double)(c->k + 1) * u / (1.0 - (double)(c->k + 1) * u);
    for (int64_t t = 0; t < c->m; t++) {
        for (int64_t j = 0; j < c->n; j++) {
            const float *xr = o.x + t * (c->k + c->x_pad), *wr = o.w + j * (c->k + c->w_pad);
            double s = 0.0, a = 0.0;
            for (int64_t i = 0; i < c->k; i++) {
                s += (double)xr[i] * (double)wr[i];
                a += fabs((double)xr[i] * (double)wr[i]);
            }
            o.want[t * c->n + j] = s;
            o.bound[t * c->n + j] = g * a;
        }
    }
    return o;
}

static void operands_free(operands *o)
{
    free(o->x);
    free(o->w);
    free(o->y);
    free(o->want);
    free(o->bound);
    free(o->scratch);
}

/* Canaries everywhere, NaN where the kernel must write. */
static void y_reset(operands *o)
{
    const gemm_case *c = &o->c;
    for (size_t i = 0; i < y_total(c); i++)
        o->y[i] = CANARY;
    for (int64_t t = 0; t < c->m; t++)
        for (int64_t j = 0; j < c->n; j++)
            y_at(o)[t * (c->n + c->y_pad) + j] = NAN;
}

static void run_rows(const operands *o, kvrt_cpu_isa isa, int64_t t0, int64_t m, int64_t j0, int64_t n)
{
    const gemm_case *c = &o->c;
    const int64_t xs = c->k + c->x_pad, ws = c->k + c->w_pad, ys = c->n + c->y_pad;
    kvrt_cpu_gemm(isa, m, n, c->k, o->x + t0 * xs, xs, o->w + j0 * ws, ws, y_at(o) + t0 * ys + j0, ys, o->scratch);
}

static void check_canaries(const operands *o, const char *what)
{
    const gemm_case *c = &o->c;
    const int64_t ys = c->n + c->y_pad;
    for (int64_t i = 0; i < Y_LEAD; i++)
        if (o->y[i] != CANARY || y_at(o)[c->m * ys + i] != CANARY)
            fail_msg("%s: canary around Y overwritten", what);
    for (int64_t t = 0; t < c->m; t++)
        for (int64_t j = c->n; j < ys; j++)
            if (y_at(o)[t * ys + j] != CANARY)
                fail_msg("%s: row padding overwritten at token %lld, column %lld", what, (long long)t, (long long)j);
}

static void check_accuracy(const operands *o, const char *what)
{
    const gemm_case *c = &o->c;
    const int64_t ys = c->n + c->y_pad;
    check_canaries(o, what);
    ref_err e = ref_compare(y_at(o), ys, o->want, c->n, c->m, c->n);
    if (e.nonfinite != 0 || !(e.nmse <= NMSE_MAX) || !(e.max_abs <= MAX_ABS))
        fail_msg("%s: nmse %.3g (<= %.0e), max abs %.3g (<= %.0e), %lld non-finite", what, e.nmse, NMSE_MAX,
                 e.max_abs, MAX_ABS, (long long)e.nonfinite);
    for (int64_t t = 0; t < c->m; t++) {
        for (int64_t j = 0; j < c->n; j++) {
            const double err = fabs((double)y_at(o)[t * ys + j] - o->want[t * c->n + j]);
            if (!(err <= o->bound[t * c->n + j]))
                fail_msg("%s: [%lld][%lld] error %.3g above the summation bound %.3g", what, (long long)t,
                         (long long)j, err, o->bound[t * c->n + j]);
        }
    }
}

static int isas(kvrt_cpu_isa out[2])
{
    out[0] = KVRT_CPU_ISA_PORTABLE;
    if (kvrt_cpu_best_isa() == KVRT_CPU_ISA_AVX2) {
        out[1] = KVRT_CPU_ISA_AVX2;
        return 2;
    }
    return 1;
}

static const char *isa_name(kvrt_cpu_isa isa)
{
    return isa == KVRT_CPU_ISA_AVX2 ? "avx2" : "portable";
}

static void case_name(char *buf, size_t size, const gemm_case *c, kvrt_cpu_isa isa)
{
    snprintf(buf, size, "%s m %lld n %lld k %lld (pads %lld/%lld/%lld)", isa_name(isa), (long long)c->m,
             (long long)c->n, (long long)c->k, (long long)c->x_pad, (long long)c->w_pad, (long long)c->y_pad);
}

/* ---- tests --------------------------------------------------------------------------- */

/* Around every tile and block edge; n_in of real models (64, 172, 288, 768, 2048). */
static const gemm_case shapes[] = {
    {1, 1, 1, 0, 0, 0},       {2, 3, 5, 1, 2, 3},       {6, 16, 64, 0, 0, 0},     {7, 17, 64, 3, 1, 2},
    {5, 15, 172, 4, 0, 1},    {13, 33, 255, 0, 5, 0},   {12, 32, 256, 1, 1, 1},   {11, 31, 257, 2, 0, 7},
    {3, 40, 288, 0, 3, 0},    {97, 20, 100, 1, 0, 3},   {96, 256, 64, 0, 0, 0},   {17, 257, 96, 5, 5, 5},
    {130, 300, 40, 0, 1, 0},  {4, 100, 768, 8, 0, 0},   {2, 67, 2048, 0, 0, 11},  {19, 48, 513, 1, 2, 3},
};

static void test_shapes_against_reference(void **state)
{
    (void)state;
    kvrt_cpu_isa isa[2];
    const int n_isa = isas(isa);
    for (size_t s = 0; s < KVRT_ARRAY_LEN(shapes); s++) {
        operands o = operands_new(&shapes[s], 1000 + s);
        for (int v = 0; v < n_isa; v++) {
            char what[128];
            case_name(what, sizeof(what), &shapes[s], isa[v]);
            y_reset(&o);
            run_rows(&o, isa[v], 0, o.c.m, 0, o.c.n);
            check_accuracy(&o, what);
        }
        operands_free(&o);
    }
}

/* Thread-pool tasks take slices of W rows (and could take slices of tokens):
 * any split must give the bits of the single call. */
static void test_split_is_bitwise_identical(void **state)
{
    (void)state;
    static const gemm_case c = {29, 83, 300, 1, 2, 3};
    static const int64_t row_cuts[] = {1, 7, 16, 33, 82};
    static const int64_t token_cuts[] = {1, 5, 6, 13, 28};
    kvrt_cpu_isa isa[2];
    const int n_isa = isas(isa);
    operands o = operands_new(&c, 77);
    const size_t y_bytes = y_total(&c) * sizeof(float);
    float *whole = xmalloc(y_bytes);
    for (int v = 0; v < n_isa; v++) {
        y_reset(&o);
        run_rows(&o, isa[v], 0, c.m, 0, c.n);
        memcpy(whole, o.y, y_bytes);
        for (size_t i = 0; i < KVRT_ARRAY_LEN(row_cuts); i++) {
            y_reset(&o);
            run_rows(&o, isa[v], 0, c.m, 0, row_cuts[i]);
            run_rows(&o, isa[v], 0, c.m, row_cuts[i], c.n - row_cuts[i]);
            if (memcmp(whole, o.y, y_bytes) != 0)
                fail_msg("%s: rows split at %lld change the result", isa_name(isa[v]), (long long)row_cuts[i]);
        }
        for (size_t i = 0; i < KVRT_ARRAY_LEN(token_cuts); i++) {
            y_reset(&o);
            run_rows(&o, isa[v], 0, token_cuts[i], 0, c.n);
            run_rows(&o, isa[v], token_cuts[i], c.m - token_cuts[i], 0, c.n);
            if (memcmp(whole, o.y, y_bytes) != 0)
                fail_msg("%s: tokens split at %lld change the result", isa_name(isa[v]), (long long)token_cuts[i]);
        }
    }
    free(whole);
    operands_free(&o);
}

/* The two flavours differ only by FMA rounding: close, each within the bound. */
static void test_flavours_agree(void **state)
{
    (void)state;
    static const gemm_case c = {37, 70, 600, 0, 0, 0};
    kvrt_cpu_isa isa[2];
    const int n_isa = isas(isa);
    operands o = operands_new(&c, 99);
    const size_t n_y = y_total(&c);
    float *first = xmalloc(n_y * sizeof(float));
    for (int v = 0; v < n_isa; v++) {
        y_reset(&o);
        run_rows(&o, isa[v], 0, c.m, 0, c.n);
        check_accuracy(&o, isa_name(isa[v]));
        if (v == 0) {
            memcpy(first, o.y, n_y * sizeof(float));
            continue;
        }
        for (size_t i = 0; i < n_y; i++)
            if (!(fabsf(first[i] - o.y[i]) <= 1e-4f))
                fail_msg("avx2 and portable differ by %g at %zu", (double)fabsf(first[i] - o.y[i]), i);
    }
    free(first);
    operands_free(&o);
}

/* A NaN in one token and an Inf in another reach their own rows only. */
static void test_nonfinite_stays_in_its_token(void **state)
{
    (void)state;
    static const gemm_case c = {9, 35, 300, 2, 0, 1};
    kvrt_cpu_isa isa[2];
    const int n_isa = isas(isa);
    operands o = operands_new(&c, 5);
    const int64_t xs = c.k + c.x_pad, ys = c.n + c.y_pad;
    o.x[2 * xs + 270] = NAN;      /* token 2, in the second KC slice */
    o.x[7 * xs + 3] = INFINITY;   /* token 7: one infinite term, so +-Inf wherever w != 0 */
    for (int v = 0; v < n_isa; v++) {
        y_reset(&o);
        run_rows(&o, isa[v], 0, c.m, 0, c.n);
        check_canaries(&o, isa_name(isa[v]));
        for (int64_t t = 0; t < c.m; t++) {
            for (int64_t j = 0; j < c.n; j++) {
                const float got = y_at(&o)[t * ys + j];
                if (t == 2 && !isnan(got))
                    fail_msg("%s: NaN lost at [2][%lld]", isa_name(isa[v]), (long long)j);
                if (t == 7 && o.w[j * (c.k + c.w_pad) + 3] != 0.0f && !isinf(got))
                    fail_msg("%s: Inf lost at [7][%lld]", isa_name(isa[v]), (long long)j);
                if (t != 2 && t != 7 && !isfinite(got))
                    fail_msg("%s: non-finite leaked into token %lld", isa_name(isa[v]), (long long)t);
            }
        }
    }
    operands_free(&o);
}

/* ---- scratch allocation failure, through the backend ------------------------------------ */

/* Refuses blocks of at least `limit` bytes (the matmul scratch) while armed;
 * small ones (buffer records) pass. */
typedef struct refusing_alloc {
    size_t limit;
    int refused;
} refusing_alloc;

static void *refusing_alloc_fn(void *user, size_t size, size_t alignment)
{
    refusing_alloc *r = user;
    if (size >= r->limit) {
        r->refused++;
        return NULL;
    }
    return aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
}

static void refusing_free_fn(void *user, void *ptr)
{
    (void)user;
    free(ptr);
}

static void test_scratch_failure_is_reported(void **state)
{
    (void)state;
    enum { N_OUT = 64, N_IN = 64, N_TOK = 4 };
    refusing_alloc r = {.limit = (size_t)-1};
    const kvrt_allocator alloc = {refusing_alloc_fn, refusing_free_fn, &r};
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = 2;
    p.allocator = &alloc;
    kvrt_backend *be = NULL;
    assert_int_equal(kvrt_cpu_backend_create(&p, &be, NULL), KVRT_OK);
    static float w[N_OUT * N_IN], x[N_TOK * N_IN], y[N_TOK * N_OUT];
    static char wq[2][N_OUT * N_IN * sizeof(float)]; /* the weights as F32 and as Q8_0 */
    static const kvrt_dtype types[] = {KVRT_DTYPE_F32, KVRT_DTYPE_Q8_0};
    for (size_t i = 0; i < N_OUT * N_IN; i++)
        w[i] = (float)(i % 7) * 0.01f;
    for (size_t i = 0; i < N_TOK * N_IN; i++)
        x[i] = 1.0f;
    kvrt_buffer *bw[2], *bx, *by;
    for (size_t t = 0; t < KVRT_ARRAY_LEN(types); t++) {
        const size_t row = kvrt_dtype_row_bytes(types[t], N_IN);
        for (int o = 0; o < N_OUT; o++)
            kvrt_quantize_row(types[t], w + o * N_IN, wq[t] + o * row, N_IN);
        assert_int_equal(kvrt_op_buffer_wrap_host(be, wq[t], sizeof(wq[t]), &bw[t]), KVRT_OK);
    }
    assert_int_equal(kvrt_op_buffer_wrap_host(be, x, sizeof(x), &bx), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(be, y, sizeof(y), &by), KVRT_OK);
    for (size_t t = 0; t < KVRT_ARRAY_LEN(types); t++) {
        r.limit = KVRT_CPU_GEMM_SCRATCH_FLOATS * sizeof(float); /* below 2 threads' scratch */
        r.refused = 0;
        for (size_t i = 0; i < N_TOK * N_OUT; i++)
            y[i] = CANARY;
        kvrt_status s = kvrt_op_matmul(be, types[t], (kvrt_view){bw[t], 0}, N_OUT, N_IN, (kvrt_view){bx, 0}, N_IN,
                                        (kvrt_view){by, 0}, N_OUT, N_TOK);
        assert_int_equal(s, KVRT_ERR_OUT_OF_HOST_MEMORY);
        assert_int_equal(r.refused, 1);
        assert_non_null(strstr(be->err.message, "scratch"));
        for (size_t i = 0; i < N_TOK * N_OUT; i++)
            assert_true(y[i] == CANARY);
        r.limit = (size_t)-1; /* the same call succeeds once memory is there */
        assert_int_equal(kvrt_op_matmul(be, types[t], (kvrt_view){bw[t], 0}, N_OUT, N_IN, (kvrt_view){bx, 0}, N_IN,
                                         (kvrt_view){by, 0}, N_OUT, N_TOK),
                         KVRT_OK);
        for (size_t i = 0; i < N_TOK * N_OUT; i++) /* x is all ones: every token gets W's row sums, ~1.9 */
            assert_true(y[i] == y[i % N_OUT] && fabsf(y[i] - (float)(3 * N_IN) * 0.01f) < 0.5f);
    }
    kvrt_op_buffer_destroy(be, bw[0]);
    kvrt_op_buffer_destroy(be, bw[1]);
    kvrt_op_buffer_destroy(be, bx);
    kvrt_op_buffer_destroy(be, by);
    be->ops->destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shapes_against_reference),
        cmocka_unit_test(test_split_is_bitwise_identical),
        cmocka_unit_test(test_flavours_agree),
        cmocka_unit_test(test_nonfinite_stays_in_its_token),
        cmocka_unit_test(test_scratch_failure_is_reported),
    };
    return cmocka_run_group_tests_name("cpu_gemm", tests, NULL, NULL);
}
