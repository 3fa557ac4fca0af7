/* Regression: F32 and tiled matmuls on several threads must equal one
 * thread's results every time (Debian's serial OpenBLAS sgemm is not
 * reentrant; concurrent calls once corrupted prefill logits now and then). */
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

enum { N_OUT = 256, N_IN = 64, N_TOK = 32, REPEATS = 1500 };

static kvrt_backend *make_cpu(int threads)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = threads;
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
    kvrt_backend *one = make_cpu(1), *two = make_cpu(2);
    run_matmul(one, t, w, row * N_OUT, x, ref);
    for (int i = 0; i < REPEATS; i++) {
        memset(y, 0, sizeof(y));
        run_matmul(two, t, w, row * N_OUT, x, y);
        if (memcmp(y, ref, sizeof(y)) != 0)
            fail_msg("%s: repeat %d differs from the 1-thread result", kvrt_dtype_name(t), i);
    }
    one->ops->destroy(one);
    two->ops->destroy(two);
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
    kvrt_backend *one = make_cpu(1), *two = make_cpu(2);
    kvrt_buffer *bw, *bx, *by, *bref;
    assert_int_equal(kvrt_op_buffer_wrap_host(one, w, sizeof(w), &bw), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(one, x, sizeof(x), &bx), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(one, ref, sizeof(ref), &bref), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_wrap_host(one, y, sizeof(y), &by), KVRT_OK);
    kvrt_view vw = {bw, 0}, vx = {bx, 0};
    assert_int_equal(kvrt_op_matmul(one, KVRT_DTYPE_F32, vw, OUT, IN, vx, IN, (kvrt_view){bref, 0}, OUT, 1), KVRT_OK);
    for (int i = 0; i < 300; i++) {
        memset(y, 0, sizeof(y));
        assert_int_equal(kvrt_op_matmul(two, KVRT_DTYPE_F32, vw, OUT, IN, vx, IN, (kvrt_view){by, 0}, OUT, 1),
                         KVRT_OK);
        if (memcmp(y, ref, sizeof(y)) != 0)
            fail_msg("F32 GEMV: repeat %d differs from the 1-thread result", i);
    }
    kvrt_buffer *all[] = {bw, bx, by, bref};
    for (int i = 0; i < 4; i++)
        kvrt_op_buffer_destroy(one, all[i]);
    one->ops->destroy(one);
    two->ops->destroy(two);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_threads_repeatable),
        cmocka_unit_test(test_q8_0_threads_repeatable),
        cmocka_unit_test(test_f32_gemv_threads_repeatable),
    };
    return cmocka_run_group_tests_name("cpu_matmul_threads", tests, NULL, NULL);
}
