/* An embedder's own Vulkan device: the test creates the instance, device and
 * queue through the system loader (dlopen, as an application would with its
 * own loader), hands them to kvrt_vulkan_context_create_from_handles, runs a
 * KV write, a block read and decode attention through the public standalone
 * API against a hand-computed case, destroys the context and checks its
 * device is still alive. The validation layer (when installed) watches the
 * whole run and must stay silent. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dlfcn.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "kvrt.h"
#include "kvrt_vulkan.h"
#include "test_drivers.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return 0; /* kvrt_vulkan.h exists only in Vulkan builds */
}
#else

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

/* The embedder's side: its loader, its objects, its entry points. */
typedef struct embedder {
    void *lib;
    PFN_vkGetInstanceProcAddr gipa;
    VkInstance inst;
    VkDebugUtilsMessengerEXT messenger;
    VkPhysicalDevice phys;
    VkDevice dev;
    VkQueue queue;
    uint32_t family;
    uint32_t declared; /* KVRT_FEATURE_* enabled on dev */
    PFN_vkDestroyInstance destroy_instance;
    PFN_vkDestroyDebugUtilsMessengerEXT destroy_messenger;
    PFN_vkGetDeviceProcAddr gdpa;
} embedder;

static uint32_t g_validation_count;
static char g_validation_first[512];

static VKAPI_ATTR VkBool32 VKAPI_CALL on_validation(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                    VkDebugUtilsMessageTypeFlagsEXT types,
                                                    const VkDebugUtilsMessengerCallbackDataEXT *data, void *user)
{
    if (g_validation_count++ == 0)
        snprintf(g_validation_first, sizeof(g_validation_first), "%s", data->pMessage ? data->pMessage : "?");
    return VK_FALSE;
}

#define GIPA(e, inst, name) ((PFN_##name)(e)->gipa((inst), #name))
#define GDPA(e, name) ((PFN_##name)(e)->gdpa((e)->dev, #name))

static bool has_validation_layer(const embedder *e)
{
    PFN_vkEnumerateInstanceLayerProperties enum_layers = GIPA(e, NULL, vkEnumerateInstanceLayerProperties);
    VkLayerProperties props[128];
    uint32_t n = 128;
    if (!enum_layers || enum_layers(&n, props) < 0)
        return false;
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(props[i].layerName, "VK_LAYER_KHRONOS_validation") == 0)
            return true;
    return false;
}

static void create_instance(embedder *e)
{
    static const char *layer = "VK_LAYER_KHRONOS_validation";
    static const char *ext = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    bool validation = has_validation_layer(e);
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .apiVersion = VK_API_VERSION_1_2};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app,
                               .enabledLayerCount = validation, .ppEnabledLayerNames = &layer,
                               .enabledExtensionCount = validation, .ppEnabledExtensionNames = &ext};
    assert_int_equal(GIPA(e, NULL, vkCreateInstance)(&ci, NULL, &e->inst), VK_SUCCESS);
    e->destroy_instance = GIPA(e, e->inst, vkDestroyInstance);
    if (validation) {
        VkDebugUtilsMessengerCreateInfoEXT mi = {
            .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
            .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                               VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
            .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT,
            .pfnUserCallback = on_validation};
        e->destroy_messenger = GIPA(e, e->inst, vkDestroyDebugUtilsMessengerEXT);
        assert_int_equal(GIPA(e, e->inst, vkCreateDebugUtilsMessengerEXT)(e->inst, &mi, NULL, &e->messenger),
                         VK_SUCCESS);
    }
}

/* The first device with a compute family; `optional` enables (and declares)
 * buffer device address, fp16 and int8 where the device has them. */
static void create_device(embedder *e, bool optional)
{
    VkPhysicalDevice devs[8];
    uint32_t n = 8;
    VkResult r = GIPA(e, e->inst, vkEnumeratePhysicalDevices)(e->inst, &n, devs);
    assert_true(r == VK_SUCCESS || r == VK_INCOMPLETE);
    assert_true(n >= 1);
    e->phys = devs[0];
    VkQueueFamilyProperties qf[16];
    uint32_t nq = 16;
    GIPA(e, e->inst, vkGetPhysicalDeviceQueueFamilyProperties)(e->phys, &nq, qf);
    e->family = UINT32_MAX;
    for (uint32_t i = 0; i < nq && e->family == UINT32_MAX; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT)
            e->family = i;
    assert_true(e->family != UINT32_MAX);

    VkPhysicalDeviceVulkan12Features has12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    VkPhysicalDeviceVulkan11Features has11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                                              .pNext = &has12};
    VkPhysicalDeviceFeatures2 has = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &has11};
    GIPA(e, e->inst, vkGetPhysicalDeviceFeatures2)(e->phys, &has);
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                                            .pNext = &f12};
    e->declared = 0;
    if (optional && has12.bufferDeviceAddress) {
        f12.bufferDeviceAddress = VK_TRUE;
        e->declared |= KVRT_FEATURE_BUFFER_DEVICE_ADDRESS;
    }
    if (optional && has12.shaderFloat16 && has11.storageBuffer16BitAccess) {
        f12.shaderFloat16 = f11.storageBuffer16BitAccess = VK_TRUE;
        e->declared |= KVRT_FEATURE_FP16;
    }
    if (optional && has12.shaderInt8 && has12.storageBuffer8BitAccess) {
        f12.shaderInt8 = f12.storageBuffer8BitAccess = VK_TRUE;
        e->declared |= KVRT_FEATURE_INT8;
    }
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
                                   .queueFamilyIndex = e->family, .queueCount = 1, .pQueuePriorities = &prio};
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = &f11,
                              .queueCreateInfoCount = 1, .pQueueCreateInfos = &qci};
    assert_int_equal(GIPA(e, e->inst, vkCreateDevice)(e->phys, &dci, NULL, &e->dev), VK_SUCCESS);
    e->gdpa = GIPA(e, e->inst, vkGetDeviceProcAddr);
    GDPA(e, vkGetDeviceQueue)(e->dev, e->family, 0, &e->queue);
}

static void embedder_open(embedder *e, bool optional)
{
    memset(e, 0, sizeof(*e));
    g_validation_count = 0; /* each test judges its own run */
    kvrt_test_pin_gpu_drivers();
    e->lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    assert_non_null(e->lib);
    e->gipa = (PFN_vkGetInstanceProcAddr)dlsym(e->lib, "vkGetInstanceProcAddr");
    assert_non_null(e->gipa);
    create_instance(e);
    create_device(e, optional);
}

/* After kvrt is gone: the device and queue still work (an empty submit with
 * a fence completes), then the embedder tears down its own objects. */
static void embedder_close(embedder *e)
{
    assert_int_equal(GDPA(e, vkDeviceWaitIdle)(e->dev), VK_SUCCESS);
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    VkFence fence;
    assert_int_equal(GDPA(e, vkCreateFence)(e->dev, &fci, NULL, &fence), VK_SUCCESS);
    assert_int_equal(GDPA(e, vkQueueSubmit)(e->queue, 0, NULL, fence), VK_SUCCESS);
    assert_int_equal(GDPA(e, vkWaitForFences)(e->dev, 1, &fence, VK_TRUE, UINT64_C(10000000000)), VK_SUCCESS);
    GDPA(e, vkDestroyFence)(e->dev, fence, NULL);
    GDPA(e, vkDestroyDevice)(e->dev, NULL);
    if (e->messenger)
        e->destroy_messenger(e->inst, e->messenger, NULL);
    e->destroy_instance(e->inst, NULL);
    dlclose(e->lib);
    if (g_validation_count)
        fail_msg("%u validation messages, first: %s", g_validation_count, g_validation_first);
}

static kvrt_vulkan_handles handles_of(const embedder *e)
{
    kvrt_vulkan_handles h = {.instance = e->inst, .physical_device = e->phys, .device = e->dev,
                             .queue = e->queue, .queue_family = e->family, .enabled_features = e->declared};
    return h;
}

/* One sequence of two tokens in block 1 (head_dim 2, one head, scale 1):
 * k0 = (1, 0), k1 = (0, 1), v0 = (1, 2), v1 = (3, 4), q = (0, ln 3):
 * scores 0 and ln 3, weights 1/4 and 3/4, out = (2.5, 3.5). Every value is
 * exact in F16, so both storage types give the same answer. */
static void run_attention(kvrt_context *ctx, kvrt_dtype dtype)
{
    kvrt_kv_cache_params cp = {.n_layers = 1, .n_kv_heads = 1, .head_dim = 2, .block_size = 8, .num_blocks = 2,
                               .dtype = dtype};
    kvrt_kv_cache *cache = NULL;
    kvrt_error err;
    if (kvrt_kv_cache_create(ctx, &cp, &cache, &err) != KVRT_OK)
        fail_msg("kv cache: %s", err.message);
    const float k[4] = {1, 0, 0, 1}, v[4] = {1, 2, 3, 4};
    const int32_t slots[2] = {8, 9};
    if (kvrt_kv_cache_write(cache, 0, k, v, slots, 2) != KVRT_OK)
        fail_msg("write: %s", kvrt_kv_cache_message(cache));

    size_t bb = kvrt_kv_cache_block_bytes(cache);
    assert_int_equal(bb, 8 * 2 * (dtype == KVRT_DTYPE_F16 ? 2 : 4));
    uint8_t raw[64];
    assert_int_equal(kvrt_kv_cache_read_block(cache, 0, 1, 1, raw, bb), KVRT_OK);
    for (int i = 0; i < 16; i++) { /* [block_size][head_dim]: the two tokens, then zeros */
        float x;
        if (dtype == KVRT_DTYPE_F16) {
            uint16_t h;
            memcpy(&h, raw + 2 * i, 2);
            x = h == 0 ? 0.0f : ldexpf((float)(1024 + (h & 0x3ff)), ((h >> 10) & 0x1f) - 25);
        } else {
            memcpy(&x, raw + 4 * i, 4);
        }
        assert_true(x == (i < 4 ? v[i] : 0.0f));
    }

    kvrt_attention_params ap = {.n_heads = 1, .max_blocks_per_seq = 1, .scale = 1.0f};
    const float q[2] = {0.0f, logf(3.0f)};
    const int32_t seq_lens[1] = {2}, table[1] = {1};
    float out[2] = {-1, -1};
    if (kvrt_attention_decode(cache, 0, &ap, 1, q, seq_lens, table, out) != KVRT_OK)
        fail_msg("decode: %s", kvrt_kv_cache_message(cache));
    assert_float_equal(out[0], 2.5f, 1e-5f);
    assert_float_equal(out[1], 3.5f, 1e-5f);
    kvrt_kv_cache_destroy(cache);
}

static void run_pass(bool optional)
{
    embedder e;
    embedder_open(&e, optional);
    kvrt_vulkan_handles h = handles_of(&e);
    kvrt_context *ctx = NULL;
    kvrt_error err;
    if (kvrt_vulkan_context_create_from_handles(&h, NULL, &ctx, &err) != KVRT_OK)
        fail_msg("from handles: %s", err.message);
    assert_non_null(strstr(kvrt_context_description(ctx), "vulkan: "));

    kvrt_vulkan_handles got;
    assert_int_equal(kvrt_vulkan_context_handles(ctx, &got), KVRT_OK);
    assert_ptr_equal(got.instance, e.inst);
    assert_ptr_equal(got.physical_device, e.phys);
    assert_ptr_equal(got.device, e.dev);
    assert_ptr_equal(got.queue, e.queue);
    assert_int_equal(got.queue_family, e.family);
    /* never a feature the device was not created with */
    assert_int_equal(got.enabled_features & ~(e.declared | KVRT_FEATURE_SUBGROUPS), 0);

    run_attention(ctx, KVRT_DTYPE_F32);
    run_attention(ctx, KVRT_DTYPE_F16);
    kvrt_context_destroy(ctx);
    embedder_close(&e);
}

static void test_plain_device(void **state)
{
    run_pass(false);
}

static void test_device_with_optional_features(void **state)
{
    run_pass(true);
}

/* A declared feature is used; params->disabled_features still wins. */
static void test_declared_and_disabled(void **state)
{
    embedder e;
    embedder_open(&e, true);
    kvrt_vulkan_handles h = handles_of(&e);
    kvrt_context *ctx = NULL;
    kvrt_vulkan_handles got;
    if (e.declared & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS) {
        assert_int_equal(kvrt_vulkan_context_create_from_handles(&h, NULL, &ctx, NULL), KVRT_OK);
        assert_int_equal(kvrt_vulkan_context_handles(ctx, &got), KVRT_OK);
        assert_true(got.enabled_features & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS);
        kvrt_context_destroy(ctx);
    }
    kvrt_context_params p = kvrt_context_default_params();
    p.disabled_features = KVRT_FEATURE_BUFFER_DEVICE_ADDRESS | KVRT_FEATURE_FP16;
    assert_int_equal(kvrt_vulkan_context_create_from_handles(&h, &p, &ctx, NULL), KVRT_OK);
    assert_int_equal(kvrt_vulkan_context_handles(ctx, &got), KVRT_OK);
    assert_int_equal(got.enabled_features & p.disabled_features, 0);
    run_attention(ctx, KVRT_DTYPE_F16);
    kvrt_context_destroy(ctx);
    embedder_close(&e);
}

static void expect_invalid(const kvrt_vulkan_handles *h, const char *needle)
{
    kvrt_context *ctx = (kvrt_context *)&ctx;
    kvrt_error err;
    assert_int_equal(kvrt_vulkan_context_create_from_handles(h, NULL, &ctx, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(ctx);
    if (!strstr(err.message, needle))
        fail_msg("message \"%s\" lacks \"%s\"", err.message, needle);
}

static void test_invalid_handles(void **state)
{
    expect_invalid(NULL, "handles is NULL");
    embedder e;
    embedder_open(&e, false);
    kvrt_vulkan_handles h = handles_of(&e);
    h.device = NULL;
    expect_invalid(&h, "device is NULL");
    h = handles_of(&e);
    h.queue = NULL;
    expect_invalid(&h, "queue is NULL");
    h = handles_of(&e);
    h.instance = NULL;
    expect_invalid(&h, "instance is NULL");
    h = handles_of(&e);
    h.queue_family = 1000;
    expect_invalid(&h, "queue family 1000");
    h = handles_of(&e);
    assert_int_equal(kvrt_vulkan_context_create_from_handles(&h, NULL, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
    embedder_close(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_device),
        cmocka_unit_test(test_device_with_optional_features),
        cmocka_unit_test(test_declared_and_disabled),
        cmocka_unit_test(test_invalid_handles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
#endif
