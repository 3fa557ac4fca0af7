/* Regression: F32 and tiled matmuls on several threads must equal one
 * thread's results every time (Debian's serial OpenBLAS sgemm is not
 * reentrant; concurrent calls once corrupted prefill logits now and then),
 * also on far more threads than cores (an oversubscribed pool); and ops too
 * small to split run on the calling thread without waking a worker (the
 * GEMV path once woke the pool for a 64 x 64 matrix). kvrt's own kernels
 * give the same bits for any thread count, so these run with OpenBLAS off;
 * test_cpu_blas covers OpenBLAS (the same bits at a fixed thread count). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "common/quant.h"
#include "backend/ops.h"

#include <unistd.h>

enum { N_OUT = 256, N_IN = 64, N_TOK = 32, REPEATS = 1500, REPEATS_OTHER = 100 };

/* Thread counts compared with 1: 2 (the CI machine's cores, REPEATS times),
 * then an odd count and an oversubscribed one (REPEATS_OTHER times). */
static int thread_counts(int out[3])
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    out[0] = 2;
    out[1] = 3;
    out[2] = 4 * (int)(cpus > 0 ? cpus : 1) + 1;
    return 3;
}

static kvrt_backend *make_cpu(int threads)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = threads;
    p.disabled_features = KVRT_FEATURE_BLAS;
    kvrt_backend *be = NULL;
    assert_int_equal(kvrt_cpu_backend_create(&p, &be, NULL), KVRT_OK);
    return be;
}

static void run_matmul(kvrt_backend *be, kvrt_dtype t, void *w, size_t w_bytes, float *x, float *y)
{
    kvrt_buffer *bw, *bx, *by;
    assert_int_equal(kvrt_op_buffer_wrap_host(be, w, w_bytes, &bw), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(be, x, sizeof(float) * N_TOK * N_IN, &bx), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(be, y, sizeof(float) * N_TOK * N_OUT, &by), KVRT_OK);
    assert_int_equal(kvrt_op_matmul(be, t, (kvrt_view){bw, 0}, N_OUT, N_IN, (kvrt_view){bx, 0}, N_IN,
                                     (kvrt_view){by, 0}, N_OUT, N_TOK), KVRT_OK);
    kvrt_op_buffer_destroy(be, bw);
    kvrt_op_buffer_destroy(be, bx);
    kvrt_op_buffer_destroy(be, by);
}

static void check_type(kvrt_dtype t)
{
    static float wf[N_OUT * N_IN], x[N_TOK * N_IN], ref[N_TOK * N_OUT], y[N_TOK * N_OUT];
    static char w[N_OUT * N_IN * 4];
    srand(5);
    for (int i = 0; i < N_OUT * N_IN; i++)
        wf[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int i = 0; i < N_TOK * N_IN; i++)
        x[i] = (float)rand() / RAND_MAX - 0.5f;
    size_t row = kvrt_dtype_row_bytes(t, N_IN);
    for (int r = 0; r < N_OUT; r++)
        kvrt_quantize_row(t, wf + r * N_IN, w + r * row, N_IN);
    kvrt_backend *one = make_cpu(1);
    run_matmul(one, t, w, row * N_OUT, x, ref);
    int counts[3], n_counts = thread_counts(counts);
    for (int c = 0; c < n_counts; c++) {
        kvrt_backend *many = make_cpu(counts[c]);
        for (int i = 0; i < (c == 0 ? REPEATS : REPEATS_OTHER); i++) {
            memset(y, 0, sizeof(y));
            run_matmul(many, t, w, row * N_OUT, x, y);
            if (memcmp(y, ref, sizeof(y)) != 0)
                fail_msg("%s: %d threads, repeat %d differs from the 1-thread result", kvrt_dtype_name(t),
                         counts[c], i);
        }
        many->ops->destroy(many);
    }
    one->ops->destroy(one);
}

static void test_f32_threads_repeatable(void **state)
{
    (void)state;
    check_type(KVRT_DTYPE_F32);
}

static void test_q8_0_threads_repeatable(void **state)
{
    (void)state;
    check_type(KVRT_DTYPE_Q8_0);
}

/* Single token (decode) on a row long enough that OpenBLAS sgemv would take
 * its shared work buffer: concurrent calls once gave logits off by 2. */
static void test_f32_gemv_threads_repeatable(void **state)
{
    (void)state;
    enum { OUT = 512, IN = 2048 };
    static float w[OUT * IN], x[IN], ref[OUT], y[OUT];
    srand(9);
    for (int i = 0; i < OUT * IN; i++)
        w[i] = (float)rand() / RAND_MAX - 0.5f;
    for (int i = 0; i < IN; i++)
        x[i] = (float)rand() / RAND_MAX - 0.5f;
    kvrt_backend *one = make_cpu(1);
    kvrt_buffer *bw, *bx, *by, *bref;
    assert_int_equal(kvrt_op_buffer_wrap_host(one, w, sizeof(w), &bw), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(one, x, sizeof(x), &bx), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(one, ref, sizeof(ref), &bref), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(one, y, sizeof(y), &by), KVRT_OK);
    kvrt_view vw = {bw, 0}, vx = {bx, 0};
    assert_int_equal(kvrt_op_matmul(one, KVRT_DTYPE_F32, vw, OUT, IN, vx, IN, (kvrt_view){bref, 0}, OUT, 1), KVRT_OK);
    int counts[3], n_counts = thread_counts(counts);
    for (int c = 0; c < n_counts; c++) {
        kvrt_backend *many = make_cpu(counts[c]);
        for (int i = 0; i < (c == 0 ? 300 : REPEATS_OTHER); i++) {
            memset(y, 0, sizeof(y));
            assert_int_equal(kvrt_op_matmul(many, KVRT_DTYPE_F32, vw, OUT, IN, vx, IN, (kvrt_view){by, 0}, OUT, 1),
                             KVRT_OK);
            if (memcmp(y, ref, sizeof(y)) != 0)
                fail_msg("F32 GEMV: %d threads, repeat %d differs from the 1-thread result", counts[c], i);
        }
        many->ops->destroy(many);
    }
    kvrt_buffer *all[] = {bw, bx, by, bref};
    for (int i = 0; i < 4; i++)
        kvrt_op_buffer_destroy(one, all[i]);
    one->ops->destroy(one);
}

/* Ops of a small model (stories260K: dim 64, hidden 172, vocab 512) on a
 * 4-thread backend wake no worker; one large enough to share does. */
static void test_small_ops_stay_on_caller(void **state)
{
    (void)state;
    enum { DIM = 64, BIG = 1024, TOK = 2 };
    static float w[BIG * BIG], x[TOK * BIG], y[TOK * BIG];
    static char q[BIG * BIG];
    for (int i = 0; i < BIG * BIG; i++)
        w[i] = (float)((i * 7) % 13) * 0.01f;
    for (int i = 0; i < TOK * BIG; i++)
        x[i] = (float)((i * 5) % 11) * 0.1f;
    for (int r = 0; r < 512; r++)
        kvrt_quantize_row(KVRT_DTYPE_Q8_0, w + r * DIM, q + r * kvrt_dtype_row_bytes(KVRT_DTYPE_Q8_0, DIM), DIM);
    kvrt_backend *be = make_cpu(4);
    kvrt_threadpool *pool = kvrt_cpu(be)->pool;
    kvrt_buffer *bw, *bq, *bx, *by;
    assert_int_equal(kvrt_op_buffer_wrap_host(be, w, sizeof(w), &bw), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(be, q, sizeof(q), &bq), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(be, x, sizeof(x), &bx), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(be, y, sizeof(y), &by), KVRT_OK);
    kvrt_view vw = {bw, 0}, vq = {bq, 0}, vx = {bx, 0}, vy = {by, 0};
    const int32_t outs[] = {DIM, 172, 512};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(outs); i++) {
        for (int32_t tok = 1; tok <= TOK; tok++) { /* GEMV, then the GEMM paths */
            assert_int_equal(kvrt_op_matmul(be, KVRT_DTYPE_F32, vw, outs[i], DIM, vx, DIM, vy, outs[i], tok), KVRT_OK);
            assert_int_equal(kvrt_op_matmul(be, KVRT_DTYPE_Q8_0, vq, outs[i], DIM, vx, DIM, vy, outs[i], tok),
                             KVRT_OK);
        }
    }
    assert_int_equal(kvrt_op_rmsnorm(be, vx, DIM, vw, vy, DIM, TOK, DIM, 1e-5f), KVRT_OK);
    assert_int_equal(kvrt_op_swiglu(be, vx, DIM, vw, DIM, vy, DIM, TOK, DIM), KVRT_OK);
    assert_int_equal(kvrt_op_add(be, vx, vw, vy, TOK * DIM), KVRT_OK);
    assert_int_equal(kvrt_threadpool_jobs_shared(pool), 0);
    /* a 1024 x 1024 GEMV (4 MiB of weights) is worth sharing, where there is a second core */
    assert_int_equal(kvrt_op_matmul(be, KVRT_DTYPE_F32, vw, BIG, BIG, vx, BIG, vy, BIG, 1), KVRT_OK);
    assert_int_equal(kvrt_threadpool_jobs_shared(pool), kvrt_threadpool_default_threads() > 1 ? 1 : 0);
    kvrt_buffer *all[] = {bw, bq, bx, by};
    for (int i = 0; i < 4; i++)
        kvrt_op_buffer_destroy(be, all[i]);
    be->ops->destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_threads_repeatable),
        cmocka_unit_test(test_q8_0_threads_repeatable),
        cmocka_unit_test(test_f32_gemv_threads_repeatable),
        cmocka_unit_test(test_small_ops_stay_on_caller),
    };
    return cmocka_run_group_tests_name("cpu_matmul_threads", tests, NULL, NULL);
}
