/* OpenCL backend on PoCL: loader and device selection, kernel build errors,
 * segmented buffers, the memory budget, recording. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "backend/opencl/cl_internal.h"
#include "kvrt_opencl.h"
#include "test_opencl_util.h"
#include "backend/ops.h"

static void test_create_destroy(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    assert_non_null(strstr(kvrt_context_description(ctx), "opencl: "));
    assert_non_null(strstr(kvrt_context_description(ctx), "max alloc"));
    kvrt_opencl_handles h;
    assert_int_equal(kvrt_opencl_context_handles(ctx, &h), KVRT_OK);
    assert_non_null(h.device);
    assert_non_null(h.context);
    assert_non_null(h.queue);
    kvrt_cl_backend *cl = kvrt_cl(((struct kvrt_context *)ctx)->be);
    assert_true(cl->max_alloc > 0);
    assert_true(cl->local_mem > 0);
    assert_true(cl->max_wg >= 1);
    assert_true(cl->budget == cl->global_mem); /* default budget: the device's memory */
    kvrt_context_destroy(ctx);

    /* another backend has no OpenCL handles */
    kvrt_context *cpu = NULL;
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = 1;
    assert_int_equal(kvrt_context_create(&p, &cpu, NULL), KVRT_OK);
    assert_int_equal(kvrt_opencl_context_handles(cpu, &h), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_context_destroy(cpu);
}

static void test_list_devices(void **state)
{
    (void)state;
    int32_t count = -1;
    kvrt_error err;
    assert_int_equal(kvrt_opencl_list_devices(NULL, 0, &count, &err), KVRT_OK);
    assert_true(count >= 1);
    kvrt_opencl_device_info info[4];
    int32_t count2 = -1;
    assert_int_equal(kvrt_opencl_list_devices(info, 4, &count2, &err), KVRT_OK);
    assert_int_equal(count2, count);
    assert_int_equal(info[0].index, 0);
    assert_true(strlen(info[0].name) > 0);
    assert_true(info[0].max_alloc > 0 && info[0].max_alloc <= info[0].global_mem);
    assert_int_equal(kvrt_opencl_list_devices(NULL, 2, &count2, &err), KVRT_ERR_INVALID_ARGUMENT);

    /* selecting the listed device by a piece of its name, in another case */
    char piece[8];
    snprintf(piece, sizeof(piece), "%.6s", info[0].name);
    for (char *c = piece; *c; c++)
        *c = (char)(*c >= 'a' && *c <= 'z' ? *c - 32 : (*c >= 'A' && *c <= 'Z' ? *c + 32 : *c));
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_OPENCL;
    p.device_name = piece;
    kvrt_context *ctx = NULL;
    assert_int_equal(kvrt_context_create(&p, &ctx, &err), KVRT_OK);
    assert_non_null(strstr(kvrt_context_description(ctx), info[0].name));
    kvrt_context_destroy(ctx);
}

static void test_unavailable_device(void **state)
{
    (void)state;
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_OPENCL;
    p.device_name = "no-such-device-kvrt";
    kvrt_context *ctx = (kvrt_context *)&p;
    kvrt_error err;
    assert_int_equal(kvrt_context_create(&p, &ctx, &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_null(ctx);
    assert_non_null(strstr(err.message, "no-such-device-kvrt"));
    p.device_name = NULL;
    p.device_index = 999;
    assert_int_equal(kvrt_context_create(&p, &ctx, &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_non_null(strstr(err.message, "999"));
}

/* A loader without a needed entry point, or none at all, is reported, not crashed on. */
static void test_loader_table(void **state)
{
    (void)state;
    kvrt_cl_fns fn;
    kvrt_error err;
    assert_int_equal(kvrt_cl_load(&fn, &err), KVRT_OK);
    assert_non_null(fn.clGetPlatformIDs);
    assert_non_null(fn.clEnqueueNDRangeKernel);
    kvrt_cl_unload(&fn);
    assert_null(fn.lib);
    assert_string_equal(kvrt_cl_error_name(CL_OUT_OF_RESOURCES), "CL_OUT_OF_RESOURCES");
    /* every code by name, OpenCL 2.x/3.0 ones too (a 1.2 build's headers lack them) */
    assert_string_equal(kvrt_cl_error_name(CL_INVALID_EVENT), "CL_INVALID_EVENT");
    assert_string_equal(kvrt_cl_error_name(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST),
                        "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST");
    assert_string_equal(kvrt_cl_error_name(-72), "CL_MAX_SIZE_RESTRICTION_EXCEEDED");
    assert_string_equal(kvrt_cl_error_name(-1001), "CL_PLATFORM_NOT_FOUND_KHR");
    assert_string_equal(kvrt_cl_error_name(-9999), "unknown OpenCL error");

    /* a machine without an OpenCL loader */
    assert_int_equal(kvrt_cl_load_named(&fn, "libkvrt-no-such-opencl.so.1", &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_non_null(strstr(err.message, "libkvrt-no-such-opencl.so.1"));
    assert_null(fn.lib);
    /* a library that is not an OpenCL loader */
    assert_int_equal(kvrt_cl_load_named(&fn, "libm.so.6", &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_non_null(strstr(err.message, "lacks clGetPlatformIDs"));
    assert_null(fn.lib);
}

/* Fills a host model and the device buffer with the same bytes. */
static void fill_pattern(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31u + seed * 7u + (i >> 8));
}

static void test_segmented_buffers(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    kvrt_backend *be = ((struct kvrt_context *)ctx)->be;
    kvrt_cl_test_set_segment_bytes(be, 256);
    kvrt_buffer *a, *b;
    assert_int_equal(kvrt_op_buffer_create(be, 1000, KVRT_BUFFER_DEVICE, &a), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, 1100, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    assert_int_equal(a->n_segs, 4);
    assert_int_equal(b->n_segs, 5);

    unsigned char ha[1000], hb[1100], got[1100], src[1100];
    memset(ha, 0, sizeof(ha)); /* new buffers are zeroed */
    memset(hb, 0, sizeof(hb));
    assert_int_equal(kvrt_op_buffer_download(be, a, 0, got, 1000), KVRT_OK);
    assert_memory_equal(got, ha, 1000);

    fill_pattern(src, sizeof(src), 1);
    assert_int_equal(kvrt_op_buffer_upload(be, a, 100, src, 800), KVRT_OK); /* crosses 3 boundaries */
    memcpy(ha + 100, src, 800);
    fill_pattern(src, sizeof(src), 2);
    assert_int_equal(kvrt_op_buffer_upload(be, b, 0, src, 1100), KVRT_OK);
    memcpy(hb, src, 1100);

    /* copies whose source and destination pieces break at different places */
    assert_int_equal(kvrt_op_buffer_copy(be, a, 37, b, 300, 555), KVRT_OK);
    memcpy(hb + 300, ha + 37, 555);
    assert_int_equal(kvrt_op_buffer_copy(be, b, 10, b, 700, 390), KVRT_OK); /* disjoint, same buffer */
    memmove(hb + 700, hb + 10, 390);
    assert_int_equal(kvrt_op_buffer_copy(be, a, 0, a, 130, 600), KVRT_OK); /* overlapping */
    memmove(ha + 130, ha, 600);

    assert_int_equal(kvrt_op_buffer_download(be, a, 0, got, 1000), KVRT_OK);
    assert_memory_equal(got, ha, 1000);
    assert_int_equal(kvrt_op_buffer_download(be, b, 0, got, 1100), KVRT_OK);
    assert_memory_equal(got, hb, 1100);
    assert_int_equal(kvrt_op_buffer_download(be, b, 250, got, 513), KVRT_OK); /* unaligned window */
    assert_memory_equal(got, hb + 250, 513);

    /* out of range, and a kernel view across a boundary */
    assert_int_equal(kvrt_op_buffer_upload(be, a, 900, src, 101), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_op_buffer_copy(be, a, 0, b, 1000, 101), KVRT_ERR_INVALID_ARGUMENT);
    cl_mem m;
    int64_t off;
    kvrt_cl_backend *cl = kvrt_cl(be);
    assert_int_equal(kvrt_cl_resolve(cl, (kvrt_view){a, 512}, 256, 4, "x", &m, &off), KVRT_OK);
    assert_true(m == a->segs[2]);
    assert_int_equal(off, 0);
    assert_int_equal(kvrt_cl_resolve(cl, (kvrt_view){a, 260}, 16, 4, "x", &m, &off), KVRT_OK);
    assert_int_equal(off, 1);
    assert_int_equal(kvrt_cl_resolve(cl, (kvrt_view){a, 500}, 16, 4, "x", &m, &off), KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(kvrt_context_message(ctx), "segment"));
    assert_int_equal(kvrt_cl_resolve(cl, (kvrt_view){a, 2}, 4, 4, "x", &m, &off), KVRT_ERR_INVALID_ARGUMENT);

    kvrt_op_buffer_destroy(be, a);
    kvrt_op_buffer_destroy(be, b);
    assert_true(cl->used == 0);
    kvrt_context_destroy(ctx);
}

static void test_budget(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(1u << 20);
    assert_non_null(ctx);
    kvrt_backend *be = ((struct kvrt_context *)ctx)->be;
    kvrt_cl_backend *cl = kvrt_cl(be);
    kvrt_buffer *a = NULL, *b = (kvrt_buffer *)ctx;
    assert_int_equal(kvrt_op_buffer_create(be, 600 << 10, KVRT_BUFFER_DEVICE, &a), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, 600 << 10, KVRT_BUFFER_DEVICE, &b), KVRT_ERR_OUT_OF_DEVICE_MEMORY);
    assert_null(b);
    assert_non_null(strstr(kvrt_context_message(ctx), "budget"));
    assert_true(cl->used == 600u << 10);

    /* a KV pool over the budget: 2 layers x K,V x 64 blocks x 4 KiB = 2 MiB */
    kvrt_kv_pool_desc d = {.n_layers = 2, .n_kv_heads = 1, .head_dim = 64, .block_size = 16,
                           .num_blocks = 64, .dtype = KVRT_DTYPE_F32};
    kvrt_kv_pool *pool = (kvrt_kv_pool *)ctx;
    assert_int_equal(kvrt_op_kv_pool_create(be, &d, &pool), KVRT_ERR_OUT_OF_DEVICE_MEMORY);
    assert_null(pool);
    assert_true(cl->used == 600u << 10);

    /* an allocation the device refuses half-way through a pool leaves nothing behind */
    d.num_blocks = 4;
    kvrt_cl_test_fail_alloc(be, 3);
    assert_int_equal(kvrt_op_kv_pool_create(be, &d, &pool), KVRT_ERR_OUT_OF_DEVICE_MEMORY);
    assert_null(pool);
    assert_true(cl->used == 600u << 10);

    /* the context still works, and freed memory is reusable */
    kvrt_op_buffer_destroy(be, a);
    assert_true(cl->used == 0);
    assert_int_equal(kvrt_op_buffer_create(be, 900 << 10, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    unsigned char src[4096], got[4096];
    fill_pattern(src, sizeof(src), 3);
    assert_int_equal(kvrt_op_buffer_upload(be, b, 1000, src, sizeof(src)), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_download(be, b, 1000, got, sizeof(got)), KVRT_OK);
    assert_memory_equal(got, src, sizeof(src));
    kvrt_op_buffer_destroy(be, b);
    assert_int_equal(kvrt_op_kv_pool_create(be, &d, &pool), KVRT_OK);
    assert_true(cl->used == 2u * 2u * 4u * 4096u);
    kvrt_op_kv_pool_destroy(be, pool);
    assert_true(cl->used == 0);
    kvrt_context_destroy(ctx);
}

static void test_recording(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    kvrt_backend *be = ((struct kvrt_context *)ctx)->be;
    assert_int_equal(kvrt_op_submit(be), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_buffer *a, *b;
    assert_int_equal(kvrt_op_buffer_create(be, 4096, KVRT_BUFFER_DEVICE, &a), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, 4096, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    unsigned char src[4096], got[4096];
    fill_pattern(src, sizeof(src), 4);
    assert_int_equal(kvrt_op_buffer_upload(be, a, 0, src, sizeof(src)), KVRT_OK);
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    assert_int_equal(kvrt_op_begin(be), KVRT_ERR_INVALID_ARGUMENT);
    /* recorded in order: b = a, then a's first half over b's second half */
    assert_int_equal(kvrt_op_buffer_copy(be, a, 0, b, 0, 4096), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_copy(be, a, 0, b, 2048, 2048), KVRT_OK);
    assert_int_equal(kvrt_op_submit(be), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_download(be, b, 0, got, sizeof(got)), KVRT_OK);
    assert_memory_equal(got, src, 2048);
    assert_memory_equal(got + 2048, src, 2048);
    kvrt_op_buffer_destroy(be, a);
    kvrt_op_buffer_destroy(be, b);
    kvrt_context_destroy(ctx);
}

static void test_model_ops_unsupported(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    kvrt_backend *be = ((struct kvrt_context *)ctx)->be;
    kvrt_buffer *b;
    assert_int_equal(kvrt_op_buffer_create(be, 4096, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    kvrt_view v = {b, 0};
    /* a weight type without kernels (IQ2_XXS, a grid type) is reported, never emulated */
    assert_int_equal(kvrt_op_matmul(be, (kvrt_dtype)16, v, 4, 256, v, 256, v, 4, 1), KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(kvrt_context_message(ctx), "not supported"));
    assert_int_equal(kvrt_op_embed(be, (kvrt_dtype)16, v, 256, v, 1, v), KVRT_ERR_UNSUPPORTED);
    /* quantized rows must be whole 32-value blocks */
    assert_int_equal(kvrt_op_matmul(be, KVRT_DTYPE_Q8_0, v, 4, 40, v, 40, v, 4, 1), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_context_message(ctx), "blocks"));
    assert_int_equal(kvrt_op_embed(be, KVRT_DTYPE_Q4_0, v, 48, v, 1, v), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_op_buffer_destroy(be, b);
    kvrt_context_destroy(ctx);
}

int main(void)
{
    cl_test_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_destroy),     cmocka_unit_test(test_list_devices),
        cmocka_unit_test(test_unavailable_device), cmocka_unit_test(test_loader_table),
        cmocka_unit_test(test_segmented_buffers),
        cmocka_unit_test(test_budget),             cmocka_unit_test(test_recording),
        cmocka_unit_test(test_model_ops_unsupported),
    };
    return cmocka_run_group_tests_name("opencl backend", tests, NULL, NULL);
}
