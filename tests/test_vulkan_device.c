/* Vulkan backend on whatever device the loader finds (lavapipe in CI):
 * creation, device listing, the unavailable path, segmented buffers, the
 * memory budget, recording. Every backend runs with the validation layer and
 * must produce no validation message; each test runs once with all device
 * features and once with every KVRT_FEATURE_* bit disabled. */
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
#include "kvrt_vulkan.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return kvrt_test_vulkan_not_built_main();
}
#else


static uint32_t g_disabled;

/* The loader unloads the driver and the validation layer with each instance;
 * pinning them keeps their symbols for LeakSanitizer, whose suppressions
 * (tests/lsan.supp) name those libraries. Not needed for the tests themselves. */

static kvrt_backend *vk_open(uint64_t budget)
{
    kvrt_backend *be = kvrt_test_vk_open(g_disabled, budget, 0);
    assert_non_null(be);
    return be;
}

/* Destroys the backend and asserts the validation layer stayed silent. */
static void vk_close(kvrt_backend *be)
{
    assert_int_equal(kvrt_test_vk_close(be), 0);
}

static void fill_pattern(uint8_t *p, size_t n, uint32_t seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (uint8_t)(x >> 24);
    }
}

static void test_create_describe(void **state)
{
    kvrt_backend *be = vk_open(0);
    assert_int_equal(be->kind, KVRT_BACKEND_VULKAN);
    assert_string_equal(be->ops->name, "vulkan");
    assert_int_equal(be->ops->interface_version, KVRT_BACKEND_INTERFACE_VERSION);
    assert_non_null(strstr(be->description, "vulkan: "));
    kvrt_vulkan_device_info info[8];
    int32_t count = 0;
    assert_int_equal(kvrt_vulkan_list_devices(info, 8, &count, NULL), KVRT_OK);
    assert_true(count >= 1);
    bool named = false;
    for (int32_t i = 0; i < count && i < 8; i++) {
        assert_int_equal(info[i].index, i);
        assert_true(info[i].name[0] != '\0');
        named |= strstr(be->description, info[i].name) != NULL;
    }
    assert_true(named); /* the description names the chosen device */
    /* features: whatever is disabled is not used */
    assert_int_equal(kvrt_vk_features(be) & g_disabled, 0);
    vk_close(be);
    /* the public context path: kvrt_context_create + interop handles */
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_VULKAN;
    p.device_name = info[0].name;
    kvrt_context *ctx = NULL;
    assert_int_equal(kvrt_context_create(&p, &ctx, NULL), KVRT_OK);
    kvrt_vulkan_handles h;
    assert_int_equal(kvrt_vulkan_context_handles(ctx, &h), KVRT_OK);
    assert_non_null(h.instance);
    assert_non_null(h.device);
    assert_non_null(h.queue);
    kvrt_context_destroy(ctx);
}

static void test_unavailable(void **state)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_VULKAN;
    p.device_name = "no-such-gpu-xyz";
    kvrt_backend *be = (kvrt_backend *)&p;
    kvrt_error err;
    assert_int_equal(kvrt_vulkan_backend_create(&p, &be, &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_null(be);
    assert_non_null(strstr(err.message, "no-such-gpu-xyz"));
    p.device_name = NULL;
    p.device_index = 99;
    assert_int_equal(kvrt_vulkan_backend_create(&p, &be, &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_non_null(strstr(err.message, "index 99"));
    int32_t count = -1;
    assert_int_equal(kvrt_vulkan_list_devices(NULL, 0, &count, NULL), KVRT_OK);
    assert_true(count >= 1);
    assert_int_equal(kvrt_vulkan_list_devices(NULL, 2, &count, &err), KVRT_ERR_INVALID_ARGUMENT);
}

/* Round trips through buffers of several segments, at offsets that straddle
 * segment boundaries, plus a recorded copy across them. */
static void test_segmented_round_trip(void **state)
{
    kvrt_backend *be = vk_open(0);
    kvrt_vk_set_max_segment(be, 4096);
    const size_t size = 4096 * 5 + 100;
    uint8_t *src = malloc(size), *dst = malloc(size);
    assert_non_null(src);
    assert_non_null(dst);
    fill_pattern(src, size, 1);
    kvrt_buffer *a, *b;
    assert_int_equal(kvrt_op_buffer_create(be, size, KVRT_BUFFER_DEVICE, &a), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, size, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, a, 0, src, size), KVRT_OK);
    memset(dst, 0, size);
    assert_int_equal(kvrt_op_buffer_download(be, a, 0, dst, size), KVRT_OK);
    assert_memory_equal(src, dst, size);
    /* a piece straddling two boundaries, at odd offsets */
    fill_pattern(src, 9000, 2);
    assert_int_equal(kvrt_op_buffer_upload(be, a, 4000, src, 9000), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_download(be, a, 4000, dst, 9000), KVRT_OK);
    assert_memory_equal(src, dst, 9000);
    /* recorded copy with different segment phases on each side */
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_copy(be, a, 4000, b, 3001, 9000), KVRT_OK);
    assert_int_equal(kvrt_op_submit(be), KVRT_OK);
    memset(dst, 0, size);
    assert_int_equal(kvrt_op_buffer_download(be, b, 3001, dst, 9000), KVRT_OK);
    assert_memory_equal(src, dst, 9000);
    /* out of range and misuse are errors with messages, not crashes */
    assert_int_equal(kvrt_op_buffer_upload(be, a, size - 10, src, 11), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "exceed"));
    assert_int_equal(kvrt_op_submit(be), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    assert_int_equal(kvrt_op_begin(be), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_op_submit(be), KVRT_OK);
    kvrt_op_buffer_destroy(be, a);
    kvrt_op_buffer_destroy(be, b);
    kvrt_op_buffer_destroy(be, NULL);
    free(src);
    free(dst);
    vk_close(be);
}

/* One real buffer larger than lavapipe's 128 MiB binding limit, at device limits. */
static void test_big_buffer(void **state)
{
    kvrt_backend *be = vk_open(0);
    const size_t size = ((size_t)129 << 20) + 12;
    uint8_t *src = malloc(size), *dst = malloc(size);
    assert_non_null(src);
    assert_non_null(dst);
    fill_pattern(src, size, 3);
    kvrt_buffer *a;
    assert_int_equal(kvrt_op_buffer_create(be, size, KVRT_BUFFER_DEVICE, &a), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, a, 0, src, size), KVRT_OK);
    memset(dst, 0, size);
    assert_int_equal(kvrt_op_buffer_download(be, a, 0, dst, size), KVRT_OK);
    assert_memory_equal(src, dst, size);
    kvrt_op_buffer_destroy(be, a);
    free(src);
    free(dst);
    vk_close(be);
}

static void test_budget_oom(void **state)
{
    const size_t mib = 1 << 20;
    kvrt_backend *be = vk_open(mib);
    kvrt_buffer *a = NULL, *b = (kvrt_buffer *)&a;
    assert_int_equal(kvrt_op_buffer_create(be, mib / 2, KVRT_BUFFER_DEVICE, &a), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, 3 * mib / 4, KVRT_BUFFER_DEVICE, &b), KVRT_ERR_OUT_OF_DEVICE_MEMORY);
    assert_null(b);
    assert_non_null(strstr(be->err.message, "budget"));
    /* a pool whose later layers do not fit: fails whole, frees what it took */
    kvrt_kv_pool_desc d = {.n_layers = 6, .n_kv_heads = 2, .head_dim = 64, .block_size = 16, .num_blocks = 8,
                           .dtype = KVRT_DTYPE_F32}; /* 64 KiB per pool, 768 KiB in all */
    kvrt_kv_pool *pool = (kvrt_kv_pool *)&a;
    assert_int_equal(kvrt_op_kv_pool_create(be, &d, &pool), KVRT_ERR_OUT_OF_DEVICE_MEMORY);
    assert_null(pool);
    /* segmented buffers fail whole too */
    kvrt_vk_set_max_segment(be, 64 * 1024);
    assert_int_equal(kvrt_op_buffer_create(be, mib, KVRT_BUFFER_DEVICE, &b), KVRT_ERR_OUT_OF_DEVICE_MEMORY);
    kvrt_vk_set_max_segment(be, 0);
    kvrt_op_buffer_destroy(be, a);
    /* everything was given back: nearly the whole budget is available again */
    assert_int_equal(kvrt_op_buffer_create(be, 15 * mib / 16, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    uint8_t in[256], out[256];
    fill_pattern(in, sizeof(in), 4);
    assert_int_equal(kvrt_op_buffer_upload(be, b, 1000, in, sizeof(in)), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_download(be, b, 1000, out, sizeof(out)), KVRT_OK);
    assert_memory_equal(in, out, sizeof(in));
    kvrt_op_buffer_destroy(be, b);
    d.n_layers = 2;
    assert_int_equal(kvrt_op_kv_pool_create(be, &d, &pool), KVRT_OK);
    kvrt_op_kv_pool_destroy(be, pool);
    vk_close(be);
}

static void test_host_visible(void **state)
{
    kvrt_backend *be = vk_open(0);
    kvrt_buffer *h;
    assert_int_equal(kvrt_op_buffer_create(be, 4096, KVRT_BUFFER_HOST_VISIBLE, &h), KVRT_OK);
    uint8_t *p = kvrt_buffer_head_of(h)->host;
    assert_non_null(p);
    fill_pattern(p, 4096, 5);
    uint8_t out[4096];
    assert_int_equal(kvrt_op_buffer_download(be, h, 0, out, sizeof(out)), KVRT_OK);
    assert_memory_equal(p, out, sizeof(out));
    kvrt_op_buffer_destroy(be, h);
    vk_close(be);
}

/* Two live backends (separate instances and devices, one without validation)
 * used in turn: each keeps its own device entry points and state. */
static void test_two_backends(void **state)
{
    kvrt_backend *a = vk_open(0);
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_VULKAN;
    kvrt_backend *b = NULL;
    assert_int_equal(kvrt_vulkan_backend_create(&p, &b, NULL), KVRT_OK);
    uint8_t in[2][1000], out[1000];
    fill_pattern(in[0], sizeof(in[0]), 10);
    fill_pattern(in[1], sizeof(in[1]), 11);
    kvrt_buffer *ba, *bb;
    assert_int_equal(kvrt_op_buffer_create(a, 1000, KVRT_BUFFER_DEVICE, &ba), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(b, 1000, KVRT_BUFFER_DEVICE, &bb), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(a, ba, 0, in[0], 1000), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(b, bb, 0, in[1], 1000), KVRT_OK);
    assert_int_equal(kvrt_op_begin(a), KVRT_OK);
    assert_int_equal(kvrt_op_begin(b), KVRT_OK); /* both steps open at once */
    assert_int_equal(kvrt_op_submit(b), KVRT_OK);
    assert_int_equal(kvrt_op_submit(a), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_download(a, ba, 0, out, 1000), KVRT_OK);
    assert_memory_equal(out, in[0], 1000);
    kvrt_op_buffer_destroy(a, ba);
    vk_close(a); /* the other device keeps working after this one is gone */
    assert_int_equal(kvrt_op_buffer_download(b, bb, 0, out, 1000), KVRT_OK);
    assert_memory_equal(out, in[1], 1000);
    kvrt_op_buffer_destroy(b, bb);
    b->ops->destroy(b);
}

static int pass_all(void **state)
{
    g_disabled = 0;
    return 0;
}

static int pass_none(void **state)
{
    g_disabled = KVRT_TEST_ALL_FEATURES;
    return 0;
}

#define BOTH(t) cmocka_unit_test_setup(t, pass_all), cmocka_unit_test_setup(t, pass_none)

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        BOTH(test_create_describe),
        cmocka_unit_test(test_unavailable),
        BOTH(test_segmented_round_trip),
        BOTH(test_big_buffer),
        BOTH(test_budget_oom),
        BOTH(test_host_visible),
        cmocka_unit_test(test_two_backends),
    };
    return cmocka_run_group_tests_name("vulkan_device", tests, NULL, NULL);
}
#endif /* KVRT_HAVE_VULKAN_BACKEND */
