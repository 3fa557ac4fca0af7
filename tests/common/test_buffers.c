#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>

#include "backend/ops.h"
#include "test_buffers.h"

kvrt_buffer *kvrt_test_up(kvrt_backend *be, const void *data, size_t bytes)
{
    kvrt_buffer *b = NULL;
    assert_int_equal(kvrt_op_buffer_create(be, bytes, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    if (data)
        assert_int_equal(kvrt_op_buffer_upload(be, b, 0, data, bytes), KVRT_OK);
    return b;
}

kvrt_buffer *kvrt_test_out_buf(kvrt_backend *be, size_t n)
{
    uint32_t *c = malloc((n + KVRT_TEST_N_CANARY) * 4);
    assert_non_null(c);
    for (size_t i = 0; i < n + KVRT_TEST_N_CANARY; i++)
        c[i] = KVRT_TEST_CANARY;
    kvrt_buffer *b = kvrt_test_up(be, c, (n + KVRT_TEST_N_CANARY) * 4);
    free(c);
    return b;
}

float *kvrt_test_down(kvrt_backend *be, kvrt_buffer *b, size_t n)
{
    uint32_t *h = malloc((n + KVRT_TEST_N_CANARY) * 4);
    assert_non_null(h);
    assert_int_equal(kvrt_op_buffer_download(be, b, 0, h, (n + KVRT_TEST_N_CANARY) * 4), KVRT_OK);
    for (size_t i = 0; i < KVRT_TEST_N_CANARY; i++)
        assert_int_equal(h[n + i], KVRT_TEST_CANARY);
    return (float *)h;
}
