/* KVRT_BACKEND_AUTO: the rule on made-up device lists (hardware Vulkan
 * first, then hardware OpenCL, then the CPU; software drivers never), the
 * choice on this machine, contexts created with it; and the GPU APIs' error
 * codes printed by name. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "backend/backend_auto.h"
#include "kvrt.h"
#include "test_drivers.h"
#if defined(KVRT_HAVE_VULKAN_BACKEND)
#include "backend/vulkan/vk_backend.h"
#endif

#define VK_1_2 ((1u << 22) | (2u << 12))
#define VK_1_1 ((1u << 22) | (1u << 12))

static kvrt_vulkan_device_info vk_dev(int32_t index, const char *name, const char *type, uint32_t api)
{
    kvrt_vulkan_device_info d;
    memset(&d, 0, sizeof(d));
    d.index = index;
    snprintf(d.name, sizeof(d.name), "%s", name);
    d.type = type;
    d.api_version = api;
    return d;
}

static kvrt_opencl_device_info cl_dev(int32_t index, const char *name, const char *platform, int is_gpu)
{
    kvrt_opencl_device_info d;
    memset(&d, 0, sizeof(d));
    d.index = index;
    snprintf(d.name, sizeof(d.name), "%s", name);
    snprintf(d.platform, sizeof(d.platform), "%s", platform);
    d.is_gpu = is_gpu;
    return d;
}

/* The devices this project has met: what auto may choose and what it may not. */
static void test_classify(void **state)
{
    (void)state;
    kvrt_vulkan_device_info v;
    v = vk_dev(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "cpu", VK_1_2);
    assert_false(kvrt_backend_auto_vulkan_hardware(&v));
    v = vk_dev(0, "SwiftShader Device (Subzero)", "cpu", VK_1_2);
    assert_false(kvrt_backend_auto_vulkan_hardware(&v));
    v = vk_dev(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "integrated", VK_1_2); /* a lying type: the name decides */
    assert_false(kvrt_backend_auto_vulkan_hardware(&v));
    v = vk_dev(0, "NVIDIA GeForce RTX 3060", "discrete", VK_1_2);
    assert_true(kvrt_backend_auto_vulkan_hardware(&v));
    v = vk_dev(0, "Intel(R) UHD Graphics 620 (KBL GT2)", "integrated", VK_1_2 + 5);
    assert_true(kvrt_backend_auto_vulkan_hardware(&v));
    v = vk_dev(0, "Virtio-GPU Venus", "virtual", VK_1_2);
    assert_true(kvrt_backend_auto_vulkan_hardware(&v));
    v = vk_dev(0, "AMD RADV HAWAII", "discrete", VK_1_1); /* kvrt needs Vulkan 1.2 */
    assert_false(kvrt_backend_auto_vulkan_hardware(&v));
    v = vk_dev(0, "odd", "other", VK_1_2);
    assert_false(kvrt_backend_auto_vulkan_hardware(&v));

    kvrt_opencl_device_info c;
    c = cl_dev(0, "pthread-skylake-avx512-AMD EPYC", "Portable Computing Language", 0);
    assert_false(kvrt_backend_auto_opencl_hardware(&c));
    c = cl_dev(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "rusticl", 1);
    assert_false(kvrt_backend_auto_opencl_hardware(&c));
    c = cl_dev(0, "NVIDIA GeForce RTX 3060", "NVIDIA CUDA", 1);
    assert_true(kvrt_backend_auto_opencl_hardware(&c));
    c = cl_dev(0, "Intel(R) Xeon(R) CPU", "Intel(R) OpenCL", 0); /* a CPU runtime: kvrt's own CPU backend instead */
    assert_false(kvrt_backend_auto_opencl_hardware(&c));
}

static void test_pick_order(void **state)
{
    (void)state;
    kvrt_backend_choice ch;
    /* software only (this project's CI): the CPU, naming what was passed over */
    kvrt_vulkan_device_info soft_vk[] = {vk_dev(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "cpu", VK_1_2)};
    kvrt_opencl_device_info soft_cl[] = {cl_dev(0, "pthread-haswell", "Portable Computing Language", 0)};
    kvrt_backend_auto_pick(soft_vk, 1, soft_cl, 1, &ch);
    assert_int_equal(ch.backend, KVRT_BACKEND_CPU);
    assert_int_equal(ch.device_index, -1);
    assert_string_equal(ch.device, "");
    assert_non_null(strstr(ch.reason, "no hardware Vulkan or OpenCL device"));
    assert_non_null(strstr(ch.reason, "llvmpipe (LLVM 15.0.6, 256 bits) [vulkan 0]"));
    assert_non_null(strstr(ch.reason, "pthread-haswell [opencl 0]"));

    /* nothing at all */
    kvrt_backend_auto_pick(NULL, 0, NULL, 0, &ch);
    assert_int_equal(ch.backend, KVRT_BACKEND_CPU);
    assert_string_equal(ch.reason, "no hardware Vulkan or OpenCL device");

    /* a hardware Vulkan device after a software one: its own index, ahead of a hardware OpenCL GPU */
    kvrt_vulkan_device_info vk[] = {vk_dev(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "cpu", VK_1_2),
                                    vk_dev(1, "AMD Radeon RX 6600 (RADV NAVI23)", "discrete", VK_1_2),
                                    vk_dev(2, "Intel(R) UHD Graphics", "integrated", VK_1_2)};
    kvrt_opencl_device_info cl[] = {cl_dev(0, "gfx1032", "AMD Accelerated Parallel Processing", 1)};
    kvrt_backend_auto_pick(vk, 3, cl, 1, &ch);
    assert_int_equal(ch.backend, KVRT_BACKEND_VULKAN);
    assert_int_equal(ch.device_index, 1); /* the first hardware one, not the "best" */
    assert_string_equal(ch.device, "AMD Radeon RX 6600 (RADV NAVI23)");
    assert_non_null(strstr(ch.reason, "the first hardware Vulkan device"));

    /* no hardware Vulkan: the first hardware OpenCL device */
    kvrt_opencl_device_info cl2[] = {cl_dev(0, "pthread-haswell", "Portable Computing Language", 0),
                                      cl_dev(1, "NVIDIA GeForce RTX 3060", "NVIDIA CUDA", 1)};
    kvrt_backend_auto_pick(soft_vk, 1, cl2, 2, &ch);
    assert_int_equal(ch.backend, KVRT_BACKEND_OPENCL);
    assert_int_equal(ch.device_index, 1);
    assert_string_equal(ch.device, "NVIDIA GeForce RTX 3060");
    assert_non_null(strstr(ch.reason, "llvmpipe"));

    /* an old GPU below Vulkan 1.2 does not hide a usable OpenCL one */
    kvrt_vulkan_device_info old_vk[] = {vk_dev(0, "AMD RADV HAWAII", "discrete", VK_1_1)};
    kvrt_backend_auto_pick(old_vk, 1, cl, 1, &ch);
    assert_int_equal(ch.backend, KVRT_BACKEND_OPENCL);
    assert_int_equal(ch.device_index, 0);
}

/* The real lists: the choice is the rule applied to them. On this project's
 * machines (lavapipe, PoCL's CPU device) that is the CPU. */
static void test_this_machine(void **state)
{
    (void)state;
    kvrt_backend_choice ch, expect;
    assert_int_equal(kvrt_backend_choose_auto(NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_backend_choose_auto(&ch, NULL), KVRT_OK);
    kvrt_vulkan_device_info vk[16];
    kvrt_opencl_device_info cl[16];
    int32_t n_vk = 0, n_cl = 0;
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    if (kvrt_vulkan_list_devices(vk, 16, &n_vk, NULL) != KVRT_OK)
        n_vk = 0;
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    if (kvrt_opencl_list_devices(cl, 16, &n_cl, NULL) != KVRT_OK)
        n_cl = 0;
#endif
    kvrt_backend_auto_pick(vk, n_vk < 16 ? n_vk : 16, cl, n_cl < 16 ? n_cl : 16, &expect);
    assert_int_equal(ch.backend, expect.backend);
    assert_int_equal(ch.device_index, expect.device_index);
    bool hardware = false;
    for (int32_t i = 0; i < n_vk && i < 16; i++)
        hardware |= kvrt_backend_auto_vulkan_hardware(&vk[i]);
    for (int32_t i = 0; i < n_cl && i < 16; i++)
        hardware |= kvrt_backend_auto_opencl_hardware(&cl[i]);
    if (!hardware) {
        assert_int_equal(ch.backend, KVRT_BACKEND_CPU);
        printf("auto on this machine: cpu (%s)\n", ch.reason);
    }
}

static void test_context_auto(void **state)
{
    (void)state;
    kvrt_backend_kind k;
    assert_int_equal(kvrt_backend_parse("auto", &k), KVRT_OK);
    assert_int_equal(k, KVRT_BACKEND_AUTO);
    assert_string_equal(kvrt_backend_name(KVRT_BACKEND_AUTO), "auto");

    kvrt_backend_choice ch;
    assert_int_equal(kvrt_backend_choose_auto(&ch, NULL), KVRT_OK);
    kvrt_context_params p = kvrt_context_default_params();
    assert_int_equal(p.backend, KVRT_BACKEND_CPU); /* the library's default stays explicit */
    p.backend = KVRT_BACKEND_AUTO;
    p.n_threads = 1;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_context_create(&p, &ctx, &err), KVRT_OK);
    assert_int_equal(kvrt_context_backend(ctx), ch.backend);
    assert_int_not_equal(kvrt_context_backend(ctx), KVRT_BACKEND_AUTO);
    kvrt_context_destroy(ctx);

    /* a device needs a named backend */
    p.device_index = 0;
    ctx = (kvrt_context *)&p;
    assert_int_equal(kvrt_context_create(&p, &ctx, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(ctx);
    assert_non_null(strstr(err.message, "named backend"));
    p.device_index = -1;
    p.device_name = "llvmpipe";
    assert_int_equal(kvrt_context_create(&p, &ctx, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_context_backend(NULL), KVRT_BACKEND_CPU);
}

#if defined(KVRT_HAVE_VULKAN_BACKEND)
/* Messages name VkResult codes ("VK_ERROR_DEVICE_LOST"), not numbers. */
static void test_vk_result_names(void **state)
{
    (void)state;
    assert_string_equal(kvrt_vk_result_name(0).s, "VK_SUCCESS");
    assert_string_equal(kvrt_vk_result_name(-4).s, "VK_ERROR_DEVICE_LOST");
    assert_string_equal(kvrt_vk_result_name(-2).s, "VK_ERROR_OUT_OF_DEVICE_MEMORY");
    assert_string_equal(kvrt_vk_result_name(-1000069000).s, "VK_ERROR_OUT_OF_POOL_MEMORY");
    assert_string_equal(kvrt_vk_result_name(-13).s, "VK_ERROR_UNKNOWN");
    assert_string_equal(kvrt_vk_result_name(-77777).s, "VkResult -77777");
}
#endif

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify),     cmocka_unit_test(test_pick_order),
        cmocka_unit_test(test_this_machine), cmocka_unit_test(test_context_auto),
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        cmocka_unit_test(test_vk_result_names),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
