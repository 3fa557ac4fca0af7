/* Transfers inside an open Vulkan step (backend.h: buffer_upload and
 * buffer_download between begin() and submit()): an upload is seen by the
 * ops recorded after it and not by those before it, a download reads what
 * the ops before it wrote and fills the caller's memory when submit()
 * returns; transfers larger than one staging chunk and buffers of many
 * segments work; and a model forward costs exactly one queue submission
 * (batch arrays, every op and the logits in one command buffer). Validation
 * layer on. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_drivers.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ops.h"
#include "backend/vulkan/vk_backend.h"
#include "test_models.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return kvrt_test_vulkan_not_built_main();
}
#else

static kvrt_backend *g_be;

static int setup(void **state)
{
    g_be = kvrt_test_vk_open(0, 0, 0);
    return g_be ? 0 : -1;
}

static int teardown(void **state)
{
    uint32_t n = kvrt_test_vk_close(g_be);
    g_be = NULL;
    return n ? -1 : 0;
}

static kvrt_buffer *make(size_t floats)
{
    kvrt_buffer *b = NULL;
    assert_int_equal(kvrt_op_buffer_create(g_be, floats * sizeof(float), KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    return b;
}

static void fill(float *x, size_t n, float base)
{
    for (size_t i = 0; i < n; i++)
        x[i] = base + (float)(i % 1000);
}

/* begin; add(a, b) -> o1; upload a; add(a, b) -> o2; download o1, o2; submit. */
static void test_order_inside_step(void **state)
{
    enum { N = 4096 };
    const kvrt_backend_ops *ops = g_be->ops;
    kvrt_buffer *a = make(N), *b = make(N), *o1 = make(N), *o2 = make(N);
    static float a1[N], a2[N], bv[N], r1[N], r2[N];
    fill(a1, N, 1.0f), fill(a2, N, 5000.0f), fill(bv, N, 0.5f);
    assert_int_equal(ops->buffer_upload(g_be, a, 0, a1, sizeof(a1)), KVRT_OK); /* between steps: now */
    assert_int_equal(ops->buffer_upload(g_be, b, 0, bv, sizeof(bv)), KVRT_OK);
    uint64_t submits = kvrt_vk_submit_count(g_be);
    kvrt_view av = {a, 0}, bw = {b, 0}, v1 = {o1, 0}, v2 = {o2, 0};
    assert_int_equal(ops->begin(g_be), KVRT_OK);
    assert_int_equal(ops->add(g_be, av, bw, v1, N), KVRT_OK);
    assert_int_equal(ops->buffer_upload(g_be, a, 0, a2, sizeof(a2)), KVRT_OK);
    memset(a2, 0, sizeof(a2)); /* recorded uploads own a copy: the caller may reuse its memory */
    assert_int_equal(ops->add(g_be, av, bw, v2, N), KVRT_OK);
    assert_int_equal(ops->buffer_download(g_be, o1, 0, r1, sizeof(r1)), KVRT_OK);
    assert_int_equal(ops->buffer_download(g_be, o2, 0, r2, sizeof(r2)), KVRT_OK);
    assert_int_equal(ops->submit(g_be), KVRT_OK);
    assert_int_equal(kvrt_vk_submit_count(g_be) - submits, 1);
    fill(a2, N, 5000.0f);
    for (size_t i = 0; i < N; i++) {
        if (r1[i] != a1[i] + bv[i] || r2[i] != a2[i] + bv[i])
            fail_msg("element %zu: %g and %g, expected %g and %g", i, r1[i], r2[i], a1[i] + bv[i], a2[i] + bv[i]);
    }
    kvrt_buffer *bufs[] = {a, b, o1, o2};
    for (size_t i = 0; i < 4; i++)
        ops->buffer_destroy(g_be, bufs[i]);
}

/* The same order for host-visible (mapped) buffers: inside a step they are
 * transferred by the step too, not copied at once. */
static void test_order_host_visible(void **state)
{
    enum { N = 64 };
    const kvrt_backend_ops *ops = g_be->ops;
    kvrt_buffer *a, *o1, *o2;
    assert_int_equal(ops->buffer_create(g_be, N * sizeof(float), KVRT_BUFFER_HOST_VISIBLE, &a), KVRT_OK);
    assert_int_equal(ops->buffer_create(g_be, N * sizeof(float), KVRT_BUFFER_HOST_VISIBLE, &o1), KVRT_OK);
    assert_int_equal(ops->buffer_create(g_be, N * sizeof(float), KVRT_BUFFER_HOST_VISIBLE, &o2), KVRT_OK);
    float one[N], hundred[N], r1[N], r2[N];
    for (int i = 0; i < N; i++)
        one[i] = 1.0f, hundred[i] = 100.0f;
    assert_int_equal(ops->buffer_upload(g_be, a, 0, one, sizeof(one)), KVRT_OK);
    kvrt_view av = {a, 0}, v1 = {o1, 0}, v2 = {o2, 0};
    assert_int_equal(ops->begin(g_be), KVRT_OK);
    assert_int_equal(ops->add(g_be, av, av, v1, N), KVRT_OK);
    assert_int_equal(ops->buffer_download(g_be, o1, 0, r1, sizeof(r1)), KVRT_OK);
    assert_int_equal(ops->buffer_upload(g_be, a, 0, hundred, sizeof(hundred)), KVRT_OK);
    assert_int_equal(ops->add(g_be, av, av, v2, N), KVRT_OK);
    assert_int_equal(ops->buffer_download(g_be, o2, 0, r2, sizeof(r2)), KVRT_OK);
    assert_int_equal(ops->submit(g_be), KVRT_OK);
    for (int i = 0; i < N; i++) {
        if (r1[i] != 2.0f || r2[i] != 200.0f)
            fail_msg("element %d: %g and %g, expected 2 and 200", i, r1[i], r2[i]);
    }
    ops->buffer_destroy(g_be, a), ops->buffer_destroy(g_be, o1), ops->buffer_destroy(g_be, o2);
}

/* 6 MiB each way in one step (more than one 4 MiB staging chunk), through a
 * buffer of 1 MiB segments, then the same again (chunks are reused). */
static void test_large_and_segmented(void **state)
{
    const size_t n = (size_t)6 << 18; /* floats: 6 MiB */
    const kvrt_backend_ops *ops = g_be->ops;
    kvrt_vk_set_max_segment(g_be, (size_t)1 << 20);
    kvrt_buffer *big = make(n);
    kvrt_vk_set_max_segment(g_be, 0);
    float *src = malloc(n * sizeof(float)), *dst = malloc(n * sizeof(float));
    assert_non_null(src);
    assert_non_null(dst);
    for (int rep = 0; rep < 2; rep++) {
        for (size_t i = 0; i < n; i++)
            src[i] = (float)(i * 7 + (size_t)rep);
        memset(dst, 0xff, n * sizeof(float));
        assert_int_equal(ops->begin(g_be), KVRT_OK);
        /* offset 12 bytes: pieces start mid-segment */
        assert_int_equal(ops->buffer_upload(g_be, big, 12, src, (n - 3) * sizeof(float)), KVRT_OK);
        assert_int_equal(ops->buffer_download(g_be, big, 12, dst, (n - 3) * sizeof(float)), KVRT_OK);
        assert_int_equal(ops->submit(g_be), KVRT_OK);
        assert_memory_equal(dst, src, (n - 3) * sizeof(float));
    }
    /* a range past the end is refused inside a step too, and the step still closes */
    assert_int_equal(ops->begin(g_be), KVRT_OK);
    assert_int_equal(ops->buffer_download(g_be, big, 8, dst, n * sizeof(float)), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(ops->submit(g_be), KVRT_OK);
    ops->buffer_destroy(g_be, big);
    free(src), free(dst);
}

/* Prefill of a prompt, then decode steps: one submission each. */
static void test_forward_is_one_submit(void **state)
{
    kvrt_context ctx = {.be = g_be};
    kvrt_model *m = NULL;
    kvrt_session *s = kvrt_test_open_session(&ctx, "stories260K.gguf", 64, &m);
    static float logits[4096];
    const int32_t prompt[6] = {1, 403, 407, 261, 378, 300};
    uint64_t before = kvrt_vk_submit_count(g_be);
    assert_int_equal(kvrt_session_eval(s, prompt, 6, logits, NULL), KVRT_OK);
    assert_int_equal(kvrt_vk_submit_count(g_be) - before, 1);
    for (int32_t t = 0; t < 3; t++) {
        before = kvrt_vk_submit_count(g_be);
        const int32_t next = 300 + t;
        assert_int_equal(kvrt_session_eval(s, &next, 1, logits, NULL), KVRT_OK);
        assert_int_equal(kvrt_vk_submit_count(g_be) - before, 1);
    }
    kvrt_session_destroy(s);
    kvrt_model_destroy(m);
}

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_inside_step),
        cmocka_unit_test(test_order_host_visible),
        cmocka_unit_test(test_large_and_segmented),
        cmocka_unit_test(test_forward_is_one_submit),
    };
    return cmocka_run_group_tests_name("vulkan_step", tests, setup, teardown);
}
#endif /* KVRT_HAVE_VULKAN_BACKEND */
