/* The OpenBLAS path of the CPU matmul (cpu_fallback/cpu_blas.c):
 *
 *  - F32, F16 and BF16 products against the double reference (DESIGN.md:
 *    NMSE <= 1e-6), with padded strides whose padding must never be written,
 *    and F16 weights spanning several conversion tiles;
 *  - the same bits on every repeat at a fixed thread count (1, 2, 3, and
 *    more than the cores), while a pool and OpenBLAS take turns;
 *  - the backend uses OpenBLAS exactly when its core is wider than kvrt's
 *    kernels (ctest runs this suite with the inherited OPENBLAS_CORETYPE and
 *    once more with the core cpuid picks: test_cpu_blas_cpuid_core);
 *  - dispatch, whatever the core: through the backend a product of
 *    KVRT_BLAS_MIN_TOKENS tokens or more is OpenBLAS's (the same bits as
 *    calling it directly), fewer is kvrt's own GEMM (the same bits as with
 *    OpenBLAS disabled), and KVRT_FEATURE_BLAS turns it off;
 *  - a build without OpenBLAS reports KVRT_ERR_UNSUPPORTED and never uses it. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu_blas.h"
#include "cpu_internal.h"
#include "common/quant.h"
#include "ref_ops.h"

#define NMSE_MAX 1e-6
#define CANARY 12345.678f

static kvrt_backend *make_cpu(int threads, uint32_t disabled)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = threads;
    p.disabled_features = disabled;
    kvrt_backend *be = NULL;
    assert_int_equal(kvrt_cpu_backend_create(&p, &be, NULL), KVRT_OK);
    return be;
}

/* One product's operands: weights of a type, padded x and y. */
typedef struct product {
    kvrt_dtype type;
    int64_t n_out, n_in, x_stride, y_stride;
    int32_t n_tokens;
    char *w;
    size_t w_bytes;
    float *x, *y;
    double *ref; /* [n_tokens][n_out] */
} product;

static void make_product(product *p, kvrt_dtype type, int64_t n_out, int64_t n_in, int32_t n_tokens, uint64_t seed)
{
    memset(p, 0, sizeof(*p));
    p->type = type;
    p->n_out = n_out;
    p->n_in = n_in;
    p->n_tokens = n_tokens;
    p->x_stride = n_in + 3;
    p->y_stride = n_out + 5;
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    size_t row = kvrt_dtype_row_bytes(type, n_in);
    p->w_bytes = row * (size_t)n_out;
    p->w = aligned_alloc(64, (p->w_bytes + 63) / 64 * 64);
    float *wf = malloc(sizeof(float) * (size_t)n_in);
    assert_non_null(p->w);
    assert_non_null(wf);
    for (int64_t r = 0; r < n_out; r++) {
        ref_fill(&rng, wf, n_in, -0.5f, 0.5f);
        kvrt_quantize_row(type, wf, p->w + (size_t)r * row, n_in);
    }
    free(wf);
    p->x = malloc(sizeof(float) * (size_t)(n_tokens * p->x_stride));
    p->y = malloc(sizeof(float) * (size_t)(n_tokens * p->y_stride));
    p->ref = malloc(sizeof(double) * (size_t)(n_tokens * n_out));
    assert_non_null(p->x);
    assert_non_null(p->y);
    assert_non_null(p->ref);
    ref_fill(&rng, p->x, n_tokens * p->x_stride, -1.0f, 1.0f);
    ref_matmul(type, p->w, n_out, n_in, p->x, p->x_stride, n_tokens, p->ref);
}

static void free_product(product *p)
{
    free(p->w);
    free(p->x);
    free(p->y);
    free(p->ref);
}

static void fill_y(product *p)
{
    for (int64_t i = 0; i < p->n_tokens * p->y_stride; i++)
        p->y[i] = CANARY;
}

static void check_y(const product *p, const char *what)
{
    ref_err e = ref_compare(p->y, p->y_stride, p->ref, p->n_out, p->n_tokens, p->n_out);
    if (e.nonfinite || e.nmse > NMSE_MAX)
        fail_msg("%s %s %lldx%lld, %d tokens: NMSE %.3g, %lld non-finite", what, kvrt_dtype_name(p->type),
                 (long long)p->n_out, (long long)p->n_in, (int)p->n_tokens, e.nmse, (long long)e.nonfinite);
    for (int32_t t = 0; t < p->n_tokens; t++)
        for (int64_t o = p->n_out; o < p->y_stride; o++)
            if (p->y[t * p->y_stride + o] != CANARY)
                fail_msg("%s: padding of y row %d written", what, (int)t);
}

/* Straight into cpu_blas.c, whatever the dispatch would decide. */
static kvrt_status blas_direct(kvrt_backend *be, product *p)
{
    const kvrt_cpu_blas_product bp = {p->type, p->w, kvrt_dtype_row_bytes(p->type, p->n_in), p->n_out, p->n_in,
                                      p->x, p->x_stride, p->y, p->y_stride, p->n_tokens,
                                      kvrt_cpu_dequant_kernel(kvrt_cpu_best_isa(), p->type)};
    fill_y(p);
    return kvrt_cpu_blas_matmul(be, &bp);
}

/* Through the backend's matmul entry (checks, dispatch). */
static void backend_matmul(kvrt_backend *be, product *p)
{
    kvrt_buffer *bw, *bx, *by;
    assert_int_equal(be->ops->buffer_wrap_host(be, p->w, p->w_bytes, &bw), KVRT_OK);
    assert_int_equal(be->ops->buffer_wrap_host(be, p->x, sizeof(float) * (size_t)(p->n_tokens * p->x_stride), &bx),
                     KVRT_OK);
    assert_int_equal(be->ops->buffer_wrap_host(be, p->y, sizeof(float) * (size_t)(p->n_tokens * p->y_stride), &by),
                     KVRT_OK);
    fill_y(p);
    assert_int_equal(be->ops->matmul(be, p->type, (kvrt_view){bw, 0}, p->n_out, p->n_in, (kvrt_view){bx, 0},
                                     p->x_stride, (kvrt_view){by, 0}, p->y_stride, p->n_tokens),
                     KVRT_OK);
    be->ops->buffer_destroy(be, bw);
    be->ops->buffer_destroy(be, bx);
    be->ops->buffer_destroy(be, by);
}

#if KVRT_HAVE_OPENBLAS

static void test_blas_against_reference(void **state)
{
    (void)state;
    /* n_out 2100 x n_in 1024 of F16 spans three 4 MiB conversion tiles */
    static const struct {
        kvrt_dtype type;
        int64_t n_out, n_in;
        int32_t n_tokens;
    } cases[] = {{KVRT_DTYPE_F32, 64, 64, 32},     {KVRT_DTYPE_F32, 300, 96, 33},  {KVRT_DTYPE_F32, 17, 250, 70},
                 {KVRT_DTYPE_F16, 2100, 1024, 33}, {KVRT_DTYPE_F16, 64, 32, 40},   {KVRT_DTYPE_BF16, 130, 288, 35},
                 {KVRT_DTYPE_BF16, 1, 64, 32}};
    kvrt_backend *be = make_cpu(2, 0);
    for (size_t i = 0; i < KVRT_ARRAY_LEN(cases); i++) {
        product p;
        make_product(&p, cases[i].type, cases[i].n_out, cases[i].n_in, cases[i].n_tokens, 100 + i);
        assert_int_equal(blas_direct(be, &p), KVRT_OK);
        check_y(&p, "OpenBLAS");
        free_product(&p);
    }
    be->ops->destroy(be);
}

/* The same bits on every repeat at a fixed thread count, the pool's jobs in between. */
static void test_blas_repeatable_per_thread_count(void **state)
{
    (void)state;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    const int counts[] = {1, 2, 3, 4 * (int)(cpus > 0 ? cpus : 1) + 1};
    product p;
    make_product(&p, KVRT_DTYPE_F16, 700, 512, 48, 7);
    float *first = malloc(sizeof(float) * (size_t)(p.n_tokens * p.y_stride));
    assert_non_null(first);
    for (size_t c = 0; c < KVRT_ARRAY_LEN(counts); c++) {
        kvrt_backend *be = make_cpu(counts[c], 0);
        for (int rep = 0; rep < 30; rep++) {
            assert_int_equal(blas_direct(be, &p), KVRT_OK);
            if (rep == 0)
                memcpy(first, p.y, sizeof(float) * (size_t)(p.n_tokens * p.y_stride));
            else if (memcmp(first, p.y, sizeof(float) * (size_t)(p.n_tokens * p.y_stride)) != 0)
                fail_msg("%d threads: repeat %d differs from the first", counts[c], rep);
        }
        check_y(&p, "OpenBLAS repeat");
        be->ops->destroy(be);
    }
    free(first);
    free_product(&p);
}

static void test_blas_dispatch(void **state)
{
    (void)state;
    kvrt_backend *on = make_cpu(2, 0), *off = make_cpu(2, KVRT_FEATURE_BLAS);
    const bool used = kvrt_cpu(on)->use_blas;
    assert_false(kvrt_cpu(off)->use_blas);
    assert_true(strstr(off->description, "disabled") != NULL);
    /* used exactly when the core is wider than kvrt's kernels (cpu_blas.h) */
    assert_int_equal(used, kvrt_cpu_blas_usable(kvrt_cpu_best_isa()));
    assert_true(strstr(on->description, used ? "tokens" : "unused") != NULL);
    /* the dispatch itself, whatever this machine's core: as if it were wider */
    kvrt_cpu(on)->use_blas = true;
    const kvrt_dtype types[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_BF16, KVRT_DTYPE_Q8_0};
    const int32_t tokens[] = {KVRT_BLAS_MIN_TOKENS - 1, KVRT_BLAS_MIN_TOKENS, KVRT_BLAS_MIN_TOKENS + 9};
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(types); ti++) {
        for (size_t k = 0; k < KVRT_ARRAY_LEN(tokens); k++) {
            product p;
            make_product(&p, types[ti], 96, 128, tokens[k], 40 + k);
            size_t bytes = sizeof(float) * (size_t)(p.n_tokens * p.y_stride);
            float *own = malloc(bytes), *blas = malloc(bytes);
            assert_non_null(own);
            assert_non_null(blas);
            backend_matmul(off, &p);
            check_y(&p, "kvrt's GEMM");
            memcpy(own, p.y, bytes);
            bool to_blas = kvrt_cpu_blas_wanted(true, types[ti], tokens[k]);
            if (to_blas) {
                assert_int_equal(blas_direct(on, &p), KVRT_OK);
                memcpy(blas, p.y, bytes);
            }
            backend_matmul(on, &p);
            check_y(&p, "dispatch");
            if (memcmp(p.y, to_blas ? blas : own, bytes) != 0)
                fail_msg("%s, %d tokens: the backend did not take the %s path", kvrt_dtype_name(types[ti]),
                         (int)tokens[k], to_blas ? "OpenBLAS" : "kvrt GEMM");
            free(own);
            free(blas);
            free_product(&p);
        }
    }
    on->ops->destroy(on);
    off->ops->destroy(off);
}

#else /* no OpenBLAS in this build */

static void test_no_blas_build(void **state)
{
    (void)state;
    kvrt_backend *be = make_cpu(2, 0);
    assert_false(kvrt_cpu(be)->use_blas);
    assert_null(kvrt_cpu_blas_core());
    assert_false(kvrt_cpu_blas_usable(kvrt_cpu_best_isa()));
    product p;
    make_product(&p, KVRT_DTYPE_F32, 64, 64, 64, 1);
    assert_int_equal(blas_direct(be, &p), KVRT_ERR_UNSUPPORTED);
    backend_matmul(be, &p); /* kvrt's own GEMM */
    check_y(&p, "kvrt's GEMM");
    free_product(&p);
    be->ops->destroy(be);
}

#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
#if KVRT_HAVE_OPENBLAS
        cmocka_unit_test(test_blas_against_reference),
        cmocka_unit_test(test_blas_repeatable_per_thread_count),
        cmocka_unit_test(test_blas_dispatch),
#else
        cmocka_unit_test(test_no_blas_build),
#endif
    };
    return cmocka_run_group_tests_name("cpu_blas", tests, NULL, NULL);
}
