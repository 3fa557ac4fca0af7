#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "backend/backend.h"
#include "test_drivers.h"

#include <dlfcn.h>
#include <stdio.h>
#include <sys/stat.h>

#if defined(KVRT_HAVE_VULKAN_BACKEND)
#include "backend/vulkan/vk_backend.h"
#endif

#ifndef KVRT_TEST_CACHE_DIR
#error "CMakeLists.txt defines KVRT_TEST_CACHE_DIR for the test helpers"
#endif

const char *kvrt_test_pipeline_cache(void)
{
    (void)mkdir(KVRT_TEST_CACHE_DIR, 0777); /* EEXIST is the usual case; a real failure only disables the cache */
    return KVRT_TEST_CACHE_DIR "/vulkan-pipelines.bin";
}

#if defined(KVRT_HAVE_VULKAN_BACKEND)
kvrt_backend *kvrt_test_vk_open(uint32_t disabled, uint64_t memory_budget, uint32_t max_shared_bytes)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_VULKAN;
    p.disabled_features = disabled;
    p.memory_budget = memory_budget;
    p.pipeline_cache_path = kvrt_test_pipeline_cache();
    kvrt_vk_debug_params dbg = {.validation = true, .max_shared_bytes = max_shared_bytes};
    kvrt_backend *be = NULL;
    kvrt_error err;
    if (kvrt_vk_backend_create_ex(&p, &dbg, &be, &err) != KVRT_OK) {
        fprintf(stderr, "vulkan backend: %s\n", err.message);
        return NULL;
    }
    return be;
}

uint32_t kvrt_test_vk_close(kvrt_backend *be)
{
    char first[512];
    uint32_t n = kvrt_vk_validation_messages(be, first, sizeof(first));
    be->ops->destroy(be);
    if (n)
        fprintf(stderr, "%u validation messages, first: %s\n", n, first);
    return n;
}
#endif

void kvrt_test_pin_gpu_drivers(void)
{
    static const char *libs[] = {"libvulkan_lvp.so", "libVkLayer_khronos_validation.so"};
    for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]); i++)
        (void)dlopen(libs[i], RTLD_NOW | RTLD_NODELETE);
}

static void test_vulkan_not_built(void **state)
{
    (void)state;
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_VULKAN;
    kvrt_backend *be = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_vulkan_backend_create(&p, &be, &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_null(be);
    assert_non_null(strstr(err.message, "Vulkan"));
}

int kvrt_test_vulkan_not_built_main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_vulkan_not_built)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
