/* The Vulkan backend: loader, instance, device selection, feature probing,
 * and the backend object with its op table. */
#include "backend/vulkan/vk_internal.h"
#include "kvrt_vulkan.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* volk's loader state is process-wide: initialise it once. */
static pthread_once_t vk_loader_once = PTHREAD_ONCE_INIT;
static VkResult vk_loader_result = VK_ERROR_INITIALIZATION_FAILED;

static void vk_loader_init(void)
{
    vk_loader_result = volkInitialize();
}

static kvrt_status vk_open_loader(kvrt_error *err)
{
    pthread_once(&vk_loader_once, vk_loader_init);
    if (vk_loader_result != VK_SUCCESS)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE,
                         "vulkan: cannot open the Vulkan loader (libvulkan.so.1); install libvulkan1 and a driver");
    uint32_t version = VK_API_VERSION_1_0;
    if (vkEnumerateInstanceVersion)
        vkEnumerateInstanceVersion(&version);
    if (version < VK_API_VERSION_1_2)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: the loader supports Vulkan %u.%u, kvrt needs 1.2",
                         VK_API_VERSION_MAJOR(version), VK_API_VERSION_MINOR(version));
    return KVRT_OK;
}

kvrt_vk_result_str kvrt_vk_result_name(int32_t result)
{
    kvrt_vk_result_str out;
    const char *name = NULL;
#define KVRT_VK_RESULT_CASE(code) \
    case code: name = #code; break;
    switch ((VkResult)result) {
        KVRT_VK_RESULT_CASE(VK_SUCCESS)
        KVRT_VK_RESULT_CASE(VK_NOT_READY)
        KVRT_VK_RESULT_CASE(VK_TIMEOUT)
        KVRT_VK_RESULT_CASE(VK_EVENT_SET)
        KVRT_VK_RESULT_CASE(VK_EVENT_RESET)
        KVRT_VK_RESULT_CASE(VK_INCOMPLETE)
        KVRT_VK_RESULT_CASE(VK_ERROR_OUT_OF_HOST_MEMORY)
        KVRT_VK_RESULT_CASE(VK_ERROR_OUT_OF_DEVICE_MEMORY)
        KVRT_VK_RESULT_CASE(VK_ERROR_INITIALIZATION_FAILED)
        KVRT_VK_RESULT_CASE(VK_ERROR_DEVICE_LOST)
        KVRT_VK_RESULT_CASE(VK_ERROR_MEMORY_MAP_FAILED)
        KVRT_VK_RESULT_CASE(VK_ERROR_LAYER_NOT_PRESENT)
        KVRT_VK_RESULT_CASE(VK_ERROR_EXTENSION_NOT_PRESENT)
        KVRT_VK_RESULT_CASE(VK_ERROR_FEATURE_NOT_PRESENT)
        KVRT_VK_RESULT_CASE(VK_ERROR_INCOMPATIBLE_DRIVER)
        KVRT_VK_RESULT_CASE(VK_ERROR_TOO_MANY_OBJECTS)
        KVRT_VK_RESULT_CASE(VK_ERROR_FORMAT_NOT_SUPPORTED)
        KVRT_VK_RESULT_CASE(VK_ERROR_FRAGMENTED_POOL)
        KVRT_VK_RESULT_CASE(VK_ERROR_UNKNOWN)
        KVRT_VK_RESULT_CASE(VK_ERROR_OUT_OF_POOL_MEMORY)
        KVRT_VK_RESULT_CASE(VK_ERROR_INVALID_EXTERNAL_HANDLE)
        KVRT_VK_RESULT_CASE(VK_ERROR_FRAGMENTATION)
        KVRT_VK_RESULT_CASE(VK_ERROR_INVALID_OPAQUE_CAPTURE_ADDRESS)
        KVRT_VK_RESULT_CASE(VK_PIPELINE_COMPILE_REQUIRED)
        KVRT_VK_RESULT_CASE(VK_ERROR_SURFACE_LOST_KHR)
        KVRT_VK_RESULT_CASE(VK_ERROR_NATIVE_WINDOW_IN_USE_KHR)
        KVRT_VK_RESULT_CASE(VK_SUBOPTIMAL_KHR)
        KVRT_VK_RESULT_CASE(VK_ERROR_OUT_OF_DATE_KHR)
        KVRT_VK_RESULT_CASE(VK_ERROR_INCOMPATIBLE_DISPLAY_KHR)
        KVRT_VK_RESULT_CASE(VK_ERROR_VALIDATION_FAILED_EXT)
        KVRT_VK_RESULT_CASE(VK_ERROR_INVALID_SHADER_NV)
        KVRT_VK_RESULT_CASE(VK_ERROR_NOT_PERMITTED_KHR)
        KVRT_VK_RESULT_CASE(VK_ERROR_FULL_SCREEN_EXCLUSIVE_MODE_LOST_EXT)
        KVRT_VK_RESULT_CASE(VK_THREAD_IDLE_KHR)
        KVRT_VK_RESULT_CASE(VK_THREAD_DONE_KHR)
        KVRT_VK_RESULT_CASE(VK_OPERATION_DEFERRED_KHR)
        KVRT_VK_RESULT_CASE(VK_OPERATION_NOT_DEFERRED_KHR)
    default: break;
    }
#undef KVRT_VK_RESULT_CASE
    if (name)
        snprintf(out.s, sizeof(out.s), "%s", name);
    else
        snprintf(out.s, sizeof(out.s), "VkResult %d", (int)result);
    return out;
}

kvrt_status kvrt_vk_result(kvrt_vk_backend *vk, VkResult r, const char *what)
{
    if (r == VK_SUCCESS)
        return KVRT_OK;
    kvrt_status s = KVRT_ERR_INTERNAL;
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY)
        s = KVRT_ERR_OUT_OF_DEVICE_MEMORY;
    else if (r == VK_ERROR_OUT_OF_HOST_MEMORY)
        s = KVRT_ERR_OUT_OF_HOST_MEMORY;
    else if (r == VK_ERROR_DEVICE_LOST)
        s = KVRT_ERR_DEVICE_LOST;
    return kvrt_fail(&vk->base.err, s, "vulkan: %s failed: %s", what, kvrt_vk_result_name(r).s);
}

/* ---- instance ------------------------------------------------------------------ */

static VKAPI_ATTR VkBool32 VKAPI_CALL vk_debug_cb(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                   VkDebugUtilsMessageTypeFlagsEXT types,
                                                   const VkDebugUtilsMessengerCallbackDataEXT *data, void *user)
{
    kvrt_vk_backend *vk = user;
    if (vk->validation_count++ == 0)
        snprintf(vk->validation_first, sizeof(vk->validation_first), "%s", data->pMessage ? data->pMessage : "?");
    return VK_FALSE;
}

static bool vk_has_layer(const char *name)
{
    uint32_t n = 0;
    if (vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || n == 0 || n > 256)
        return false;
    VkLayerProperties props[256];
    if (vkEnumerateInstanceLayerProperties(&n, props) != VK_SUCCESS)
        return false;
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(props[i].layerName, name) == 0)
            return true;
    return false;
}

/* Instance-level entry points dispatch through the loader's trampolines,
 * which serve every instance; loading them again for another instance is harmless. */
static void vk_load_instance(VkInstance inst)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&lock);
    volkLoadInstanceOnly(inst);
    pthread_mutex_unlock(&lock);
}

/* Creates an instance; vk (may be NULL for listing) gets the debug messenger. */
static kvrt_status vk_create_instance(kvrt_vk_backend *vk, bool validation, VkInstance *out, kvrt_error *err)
{
    static const char *layer = "VK_LAYER_KHRONOS_validation";
    static const char *ext = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
    VkApplicationInfo app = {.sType = VK_STRUCTURE_TYPE_APPLICATION_INFO, .pApplicationName = "kvrt",
                             .pEngineName = "kvrt", .apiVersion = VK_API_VERSION_1_2};
    VkValidationFeatureEnableEXT enables[] = {VK_VALIDATION_FEATURE_ENABLE_SYNCHRONIZATION_VALIDATION_EXT};
    VkValidationFeaturesEXT vf = {.sType = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT,
                                  .enabledValidationFeatureCount = 1, .pEnabledValidationFeatures = enables};
    VkInstanceCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, .pApplicationInfo = &app};
    if (validation) {
        if (!vk_has_layer(layer))
            return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: validation requested but %s is not installed",
                             layer);
        ci.enabledLayerCount = 1;
        ci.ppEnabledLayerNames = &layer;
        ci.enabledExtensionCount = 1;
        ci.ppEnabledExtensionNames = &ext;
        ci.pNext = &vf;
    }
    VkResult r = vkCreateInstance(&ci, NULL, out);
    if (r != VK_SUCCESS)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: vkCreateInstance failed: %s",
                         kvrt_vk_result_name(r).s);
    vk_load_instance(*out);
    if (validation && vk) {
        VkDebugUtilsMessengerCreateInfoEXT mi = {
            .sType = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT,
            .messageSeverity = VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT |
                               VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT,
            .messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                           VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT,
            .pfnUserCallback = vk_debug_cb, .pUserData = vk};
        PFN_vkCreateDebugUtilsMessengerEXT create =
            (PFN_vkCreateDebugUtilsMessengerEXT)vkGetInstanceProcAddr(*out, "vkCreateDebugUtilsMessengerEXT");
        vk->destroy_messenger =
            (PFN_vkDestroyDebugUtilsMessengerEXT)vkGetInstanceProcAddr(*out, "vkDestroyDebugUtilsMessengerEXT");
        r = create && vk->destroy_messenger ? create(*out, &mi, NULL, &vk->messenger) : VK_ERROR_EXTENSION_NOT_PRESENT;
        if (r != VK_SUCCESS) {
            vkDestroyInstance(*out, NULL);
            *out = VK_NULL_HANDLE;
            return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: cannot create the debug messenger: %s",
                             kvrt_vk_result_name(r).s);
        }
    }
    return KVRT_OK;
}

/* ---- devices ------------------------------------------------------------------- */

#define KVRT_VK_MAX_DEVICES 16

static const char *vk_type_name(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return "discrete";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return "virtual";
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return "cpu";
    default: return "other";
    }
}

static int vk_type_rank(VkPhysicalDeviceType t)
{
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 4;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 3;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_CPU: return 1;
    default: return 0;
    }
}

static kvrt_status vk_enum_devices(VkInstance inst, VkPhysicalDevice *devs, uint32_t *n, kvrt_error *err)
{
    *n = KVRT_VK_MAX_DEVICES;
    VkResult r = vkEnumeratePhysicalDevices(inst, n, devs);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: vkEnumeratePhysicalDevices failed: %s",
                         kvrt_vk_result_name(r).s);
    return KVRT_OK;
}

static uint64_t vk_device_local_bytes(VkPhysicalDevice pd)
{
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(pd, &mp);
    uint64_t total = 0;
    for (uint32_t i = 0; i < mp.memoryHeapCount; i++)
        if (mp.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
            total += mp.memoryHeaps[i].size;
    return total;
}

kvrt_status kvrt_vulkan_list_devices(kvrt_vulkan_device_info *out, int32_t max, int32_t *count, kvrt_error *err)
{
    kvrt_error_clear(err);
    if (!count || max < 0 || (max > 0 && !out))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_vulkan_list_devices: bad arguments");
    *count = 0;
    KVRT_TRY(vk_open_loader(err));
    VkInstance inst;
    KVRT_TRY(vk_create_instance(NULL, false, &inst, err));
    VkPhysicalDevice devs[KVRT_VK_MAX_DEVICES];
    uint32_t n;
    kvrt_status s = vk_enum_devices(inst, devs, &n, err);
    for (uint32_t i = 0; s == KVRT_OK && i < n; i++) {
        if ((int32_t)i < max) {
            VkPhysicalDeviceProperties p;
            vkGetPhysicalDeviceProperties(devs[i], &p);
            kvrt_vulkan_device_info *d = &out[i];
            memset(d, 0, sizeof(*d));
            d->index = (int32_t)i;
            snprintf(d->name, sizeof(d->name), "%s", p.deviceName);
            d->type = vk_type_name(p.deviceType);
            d->api_version = p.apiVersion;
            d->device_local_bytes = vk_device_local_bytes(devs[i]);
        }
    }
    if (s == KVRT_OK)
        *count = (int32_t)n;
    vkDestroyInstance(inst, NULL);
    return s;
}

static kvrt_status vk_pick_device(kvrt_vk_backend *vk, const kvrt_context_params *p, kvrt_error *err)
{
    VkPhysicalDevice devs[KVRT_VK_MAX_DEVICES];
    uint32_t n;
    KVRT_TRY(vk_enum_devices(vk->instance, devs, &n, err));
    if (n == 0)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: no Vulkan device found");
    int best = -1, best_rank = -1;
    for (uint32_t i = 0; i < n; i++) {
        VkPhysicalDeviceProperties props;
        vkGetPhysicalDeviceProperties(devs[i], &props);
        bool match;
        if (p->device_name && p->device_name[0])
            match = strstr(props.deviceName, p->device_name) != NULL;
        else if (p->device_index >= 0)
            match = (int32_t)i == p->device_index;
        else
            match = true;
        if (match && vk_type_rank(props.deviceType) > best_rank) {
            best = (int)i;
            best_rank = vk_type_rank(props.deviceType);
        }
    }
    if (best < 0) {
        if (p->device_name && p->device_name[0])
            return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: no device name contains \"%s\" (%u devices)",
                             p->device_name, n);
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: device index %d outside [0, %u)",
                         (int)p->device_index, n);
    }
    vk->phys = devs[best];
    return KVRT_OK;
}

/* Reads limits and optional features; masks those the params disable. */
static kvrt_status vk_probe(kvrt_vk_backend *vk, uint32_t disabled, kvrt_error *err)
{
    VkPhysicalDeviceSubgroupProperties sg = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SUBGROUP_PROPERTIES};
    VkPhysicalDeviceMaintenance3Properties m3 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES,
                                                 .pNext = &sg};
    VkPhysicalDeviceProperties2 p2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &m3};
    vkGetPhysicalDeviceProperties2(vk->phys, &p2);
    const VkPhysicalDeviceLimits *lim = &p2.properties.limits;
    snprintf(vk->device_name, sizeof(vk->device_name), "%s", p2.properties.deviceName);
    kvrt_vk_caps *c = &vk->caps;
    c->api_version = p2.properties.apiVersion;
    if (c->api_version < VK_API_VERSION_1_2)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: %s supports Vulkan %u.%u, kvrt needs 1.2",
                         vk->device_name, VK_API_VERSION_MAJOR(c->api_version), VK_API_VERSION_MINOR(c->api_version));
    c->max_storage_range = lim->maxStorageBufferRange;
    c->max_alloc = m3.maxMemoryAllocationSize;
    c->storage_align = lim->minStorageBufferOffsetAlignment;
    c->shared_bytes = lim->maxComputeSharedMemorySize;
    memcpy(c->max_wg_count, lim->maxComputeWorkGroupCount, sizeof(c->max_wg_count));
    if (vk->debug.max_groups_x && vk->debug.max_groups_x < c->max_wg_count[0])
        c->max_wg_count[0] = vk->debug.max_groups_x;
    c->subgroup_size = sg.subgroupSize;
    c->subgroup_ops = (sg.supportedStages & VK_SHADER_STAGE_COMPUTE_BIT) ? sg.supportedOperations : 0;

    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES};
    VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                                            .pNext = &f12};
    VkPhysicalDeviceFeatures2 f2 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &f11};
    vkGetPhysicalDeviceFeatures2(vk->phys, &f2);
    bool no_fp16 = disabled & KVRT_FEATURE_FP16, no_int8 = disabled & KVRT_FEATURE_INT8;
    c->fp16_arith = f12.shaderFloat16 && !no_fp16;
    c->storage16 = f11.storageBuffer16BitAccess && !no_fp16;
    c->int8_arith = f12.shaderInt8 && !no_int8;
    c->storage8 = f12.storageBuffer8BitAccess && !no_int8;
    c->bda = f12.bufferDeviceAddress && !(disabled & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS);
    bool subgroups = c->subgroup_size > 0 && (c->subgroup_ops & VK_SUBGROUP_FEATURE_ARITHMETIC_BIT) &&
                     !(disabled & KVRT_FEATURE_SUBGROUPS);
    if (!subgroups)
        c->subgroup_ops = 0;
    c->features = (c->bda ? KVRT_FEATURE_BUFFER_DEVICE_ADDRESS : 0) |
                  (c->fp16_arith && c->storage16 ? KVRT_FEATURE_FP16 : 0) |
                  (c->int8_arith && c->storage8 ? KVRT_FEATURE_INT8 : 0) | (subgroups ? KVRT_FEATURE_SUBGROUPS : 0);
    return KVRT_OK;
}

static kvrt_status vk_create_device(kvrt_vk_backend *vk, kvrt_error *err)
{
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(vk->phys, &nq, NULL);
    VkQueueFamilyProperties qf[32];
    nq = KVRT_MIN(nq, 32u);
    vkGetPhysicalDeviceQueueFamilyProperties(vk->phys, &nq, qf);
    uint32_t fam = UINT32_MAX;
    for (uint32_t i = 0; i < nq && fam == UINT32_MAX; i++)
        if (qf[i].queueFlags & VK_QUEUE_COMPUTE_BIT)
            fam = i;
    if (fam == UINT32_MAX)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: %s has no compute queue", vk->device_name);
    vk->queue_family = fam;
    float prio = 1.0f;
    VkDeviceQueueCreateInfo qci = {.sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO, .queueFamilyIndex = fam,
                                   .queueCount = 1, .pQueuePriorities = &prio};
    /* Enable exactly the optional features kvrt may use (masked ones stay off). */
    const kvrt_vk_caps *c = &vk->caps;
    VkPhysicalDeviceVulkan12Features f12 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_2_FEATURES,
                                            .shaderFloat16 = c->fp16_arith, .shaderInt8 = c->int8_arith,
                                            .storageBuffer8BitAccess = c->storage8,
                                            .bufferDeviceAddress = c->bda};
    VkPhysicalDeviceVulkan11Features f11 = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_VULKAN_1_1_FEATURES,
                                            .pNext = &f12, .storageBuffer16BitAccess = c->storage16};
    VkDeviceCreateInfo dci = {.sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO, .pNext = &f11,
                              .queueCreateInfoCount = 1, .pQueueCreateInfos = &qci};
    VkResult r = vkCreateDevice(vk->phys, &dci, NULL, &vk->device);
    if (r != VK_SUCCESS)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "vulkan: vkCreateDevice on %s failed: %s",
                         vk->device_name, kvrt_vk_result_name(r).s);
    volkLoadDeviceTable(&vk->vk, vk->device);
    vk->vk.vkGetDeviceQueue(vk->device, fam, 0, &vk->queue);
    return KVRT_OK;
}

/* ---- the backend object ------------------------------------------------------------ */

static void vk_destroy(kvrt_backend *be)
{
    if (!be)
        return;
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (vk->device) {
        /* A borrowed device may be busy on the embedder's other queues:
         * wait for kvrt's queue only. */
        if (vk->borrowed)
            vk->vk.vkQueueWaitIdle(vk->queue);
        else
            vk->vk.vkDeviceWaitIdle(vk->device);
        kvrt_vk_pipelines_finish(vk);
        kvrt_vk_memory_finish(vk);
        kvrt_vk_dispatch_finish(vk);
        if (!vk->borrowed)
            vk->vk.vkDestroyDevice(vk->device, NULL);
    }
    if (vk->messenger)
        vk->destroy_messenger(vk->instance, vk->messenger, NULL);
    if (vk->instance && !vk->borrowed)
        vkDestroyInstance(vk->instance, NULL);
    kvrt_free(be->alloc, vk);
}

static kvrt_status vk_buffer_create(kvrt_backend *be, size_t size, unsigned flags, kvrt_buffer **out)
{
    return kvrt_vk_buffer_create_seg(kvrt_vk(be), size, 0, flags, out);
}

static void vk_buffer_destroy(kvrt_backend *be, kvrt_buffer *b)
{
    kvrt_vk_buffer_free(kvrt_vk(be), b);
}

/* Inside an open step, transfers are recorded into it (vk_step_io.c), also
 * for host-visible buffers, so they keep their place among the step's ops;
 * otherwise they run now. */
static kvrt_status vk_buffer_upload(kvrt_backend *be, kvrt_buffer *dst, size_t off, const void *src, size_t size)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (vk->recording)
        return kvrt_vk_step_upload(vk, dst, off, src, size);
    return kvrt_vk_upload(vk, dst, off, src, size);
}

static kvrt_status vk_buffer_download(kvrt_backend *be, kvrt_buffer *src, size_t off, void *dst, size_t size)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (vk->recording)
        return kvrt_vk_step_download(vk, src, off, dst, size);
    return kvrt_vk_download(vk, src, off, dst, size);
}

static const kvrt_backend_ops vk_ops = {
    .interface_version = KVRT_BACKEND_INTERFACE_VERSION,
    .name = "vulkan",
    .weight_types = KVRT_WEIGHT_TYPES_ALL,
    .kv_mixed_types = true, /* k_type / v_type: the shaders take each pool's own */
    .destroy = vk_destroy,
    .buffer_create = vk_buffer_create,
    .buffer_destroy = vk_buffer_destroy,
    .buffer_wrap_host = NULL,
    .buffer_upload = vk_buffer_upload,
    .buffer_download = vk_buffer_download,
    .buffer_copy = kvrt_vk_buffer_copy,
    .kv_pool_create = kvrt_vk_kv_pool_create,
    .kv_pool_destroy = kvrt_vk_kv_pool_destroy,
    .kv_block_read = kvrt_vk_kv_block_read,
    .kv_block_write = kvrt_vk_kv_block_write,
    .kv_copy_blocks = kvrt_vk_kv_copy_blocks,
    .begin = kvrt_vk_begin,
    .submit = kvrt_vk_submit,
    .abort = kvrt_vk_abort,
    .limits = kvrt_vk_limits,
    KVRT_BACKEND_KERNELS(KVRT_BACKEND_ENTRY, kvrt_vk_)
    .save_caches = kvrt_vk_save_caches,
    .set_profiling = kvrt_vk_set_profiling,
    .kv_rope_shift = kvrt_vk_kv_rope_shift,
};

static void vk_describe(kvrt_vk_backend *vk)
{
    const kvrt_vk_caps *c = &vk->caps;
    snprintf(vk->base.description, sizeof(vk->base.description),
             "vulkan: %.96s (Vulkan %u.%u), storage range %llu MiB, shared %u KiB, subgroup %u%s%s%s%s",
             vk->device_name, VK_API_VERSION_MAJOR(c->api_version), VK_API_VERSION_MINOR(c->api_version),
             (unsigned long long)(c->max_storage_range >> 20), c->shared_bytes >> 10, c->subgroup_size,
             c->features & KVRT_FEATURE_FP16 ? ", fp16" : "", c->features & KVRT_FEATURE_INT8 ? ", int8" : "",
             c->features & KVRT_FEATURE_SUBGROUPS ? ", subgroup ops" : "",
             c->features & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS ? ", bda" : "");
}

static kvrt_vk_backend *vk_alloc(const kvrt_context_params *params, const kvrt_vk_debug_params *debug)
{
    kvrt_vk_backend *vk = kvrt_calloc(params->allocator, 1, sizeof(*vk));
    if (!vk)
        return NULL;
    vk->base.ops = &vk_ops;
    vk->base.kind = KVRT_BACKEND_VULKAN;
    vk->base.alloc = params->allocator;
    if (debug)
        vk->debug = *debug;
    vk->budget = params->memory_budget;
    vk->pcache.path_arg = params->pipeline_cache_path; /* copied by kvrt_vk_pcache_init */
    return vk;
}

/* What follows device creation (own or borrowed); destroys vk on failure. */
static kvrt_status vk_finish_create(kvrt_vk_backend *vk, kvrt_status s, kvrt_backend **out, kvrt_error *err)
{
    if (s == KVRT_OK && (s = kvrt_vk_dispatch_init(vk)) != KVRT_OK)
        kvrt_error_copy(err, &vk->base.err);
    if (s == KVRT_OK && (s = kvrt_vk_memory_init(vk)) != KVRT_OK)
        kvrt_error_copy(err, &vk->base.err);
    if (s == KVRT_OK && (s = kvrt_vk_pipelines_init(vk)) != KVRT_OK)
        kvrt_error_copy(err, &vk->base.err);
    if (s != KVRT_OK) {
        vk_destroy(&vk->base);
        return s;
    }
    vk_describe(vk);
    *out = &vk->base;
    return KVRT_OK;
}

kvrt_status kvrt_vk_backend_create_ex(const kvrt_context_params *params, const kvrt_vk_debug_params *debug,
                                      kvrt_backend **out, kvrt_error *err)
{
    *out = NULL;
    KVRT_TRY(vk_open_loader(err));
    kvrt_vk_backend *vk = vk_alloc(params, debug);
    if (!vk)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan backend: out of host memory");
    kvrt_status s = vk_create_instance(vk, vk->debug.validation, &vk->instance, err);
    if (s == KVRT_OK)
        s = vk_pick_device(vk, params, err);
    if (s == KVRT_OK)
        s = vk_probe(vk, params->disabled_features, err);
    if (s == KVRT_OK)
        s = vk_create_device(vk, err);
    return vk_finish_create(vk, s, out, err);
}

/* ---- the embedder's device ------------------------------------------------------ */

static kvrt_status vk_check_handles(const kvrt_vulkan_handles *h, kvrt_error *err)
{
    static const char *fn = "kvrt_vulkan_context_create_from_handles";
    if (!h)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "%s: handles is NULL", fn);
    const char *missing = !h->instance ? "instance" : !h->physical_device ? "physical_device"
                        : !h->device ? "device" : !h->queue ? "queue" : NULL;
    if (missing)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "%s: handles->%s is NULL", fn, missing);
    return KVRT_OK;
}

/* Takes the embedder's objects (never destroyed) and loads the device's entry points. */
static kvrt_status vk_adopt(kvrt_vk_backend *vk, const kvrt_vulkan_handles *h, kvrt_error *err)
{
    vk->borrowed = true;
    vk->instance = (VkInstance)h->instance;
    vk->phys = (VkPhysicalDevice)h->physical_device;
    vk_load_instance(vk->instance);
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(vk->phys, &nq, NULL);
    VkQueueFamilyProperties qf[32];
    nq = KVRT_MIN(nq, 32u);
    vkGetPhysicalDeviceQueueFamilyProperties(vk->phys, &nq, qf);
    if (h->queue_family >= nq || !(qf[h->queue_family].queueFlags & VK_QUEUE_COMPUTE_BIT))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "kvrt_vulkan_context_create_from_handles: queue family %u %s", h->queue_family,
                         h->queue_family >= nq ? "does not exist" : "has no compute");
    volkLoadDeviceTable(&vk->vk, (VkDevice)h->device);
    vk->device = (VkDevice)h->device;
    vk->queue = (VkQueue)h->queue;
    vk->queue_family = h->queue_family;
    return KVRT_OK;
}

static kvrt_status vk_backend_from_handles(const kvrt_vulkan_handles *h, const kvrt_context_params *params,
                                           kvrt_backend **out, kvrt_error *err)
{
    *out = NULL;
    KVRT_TRY(vk_check_handles(h, err));
    KVRT_TRY(vk_open_loader(err));
    kvrt_vk_backend *vk = vk_alloc(params, NULL);
    if (!vk)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan backend: out of host memory");
    /* Optional features the embedder did not declare count as disabled
     * (Vulkan cannot tell what a device was created with); subgroup
     * operations need no device feature. */
    const uint32_t optional = KVRT_FEATURE_BUFFER_DEVICE_ADDRESS | KVRT_FEATURE_FP16 | KVRT_FEATURE_INT8;
    uint32_t disabled = params->disabled_features | (optional & ~h->enabled_features);
    kvrt_status s = vk_adopt(vk, h, err);
    if (s == KVRT_OK)
        s = vk_probe(vk, disabled, err);
    return vk_finish_create(vk, s, out, err);
}

kvrt_status kvrt_vulkan_context_create_from_handles(const kvrt_vulkan_handles *handles,
                                                    const kvrt_context_params *params, kvrt_context **out,
                                                    kvrt_error *err)
{
    kvrt_error_clear(err);
    if (!out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_vulkan_context_create_from_handles: out is NULL");
    *out = NULL;
    kvrt_context_params p = params ? *params : kvrt_context_default_params();
    p.backend = KVRT_BACKEND_VULKAN;
    kvrt_context *ctx = kvrt_calloc(p.allocator, 1, sizeof(*ctx));
    if (!ctx)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                         "kvrt_vulkan_context_create_from_handles: out of host memory");
    ctx->alloc = p.allocator;
    ctx->memory_budget = p.memory_budget;
    kvrt_status s = vk_backend_from_handles(handles, &p, &ctx->be, err);
    if (s != KVRT_OK) {
        kvrt_free(p.allocator, ctx);
        return s;
    }
    *out = ctx;
    return KVRT_OK;
}

kvrt_status kvrt_vulkan_backend_create(const kvrt_context_params *params, kvrt_backend **out, kvrt_error *err)
{
    return kvrt_vk_backend_create_ex(params, NULL, out, err);
}

uint32_t kvrt_vk_validation_messages(kvrt_backend *be, char *first, size_t first_size)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (first && first_size)
        snprintf(first, first_size, "%s", vk->validation_first);
    return vk->validation_count;
}

uint32_t kvrt_vk_features(kvrt_backend *be)
{
    return kvrt_vk(be)->caps.features;
}

kvrt_status kvrt_vulkan_context_handles(const kvrt_context *ctx, kvrt_vulkan_handles *out)
{
    if (!ctx || !out || !ctx->be || ctx->be->kind != KVRT_BACKEND_VULKAN)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_vk_backend *vk = kvrt_vk(ctx->be);
    out->instance = vk->instance;
    out->physical_device = vk->phys;
    out->device = vk->device;
    out->queue = vk->queue;
    out->queue_family = vk->queue_family;
    out->enabled_features = vk->caps.features;
    return KVRT_OK;
}

void kvrt_vk_set_max_segment(kvrt_backend *be, size_t bytes)
{
    kvrt_vk(be)->debug.max_segment_bytes = bytes;
}
