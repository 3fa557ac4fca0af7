/*
 * Vulkan-specific parts of the kvrt API: device listing and the handles of a
 * context's Vulkan objects, for embedders that share the device. Present only
 * in builds with the Vulkan backend (-DKVRT_VULKAN=ON). No Vulkan header is
 * needed: handles are passed as void * (dispatchable handles are pointers).
 */
#ifndef KVRT_VULKAN_H
#define KVRT_VULKAN_H

#include "kvrt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_vulkan_device_info {
    int32_t index;            /* what kvrt_context_params.device_index takes */
    char name[256];
    const char *type;         /* "discrete", "integrated", "virtual", "cpu", "other" (static) */
    uint32_t api_version;     /* VK_MAKE_API_VERSION encoding */
    uint64_t device_local_bytes;
} kvrt_vulkan_device_info;

/* Lists the Vulkan devices: writes up to `max` entries to `out` (may be NULL
 * when max is 0) and the number of devices to *count. Opens the Vulkan loader
 * for the call. KVRT_ERR_BACKEND_UNAVAILABLE (message in err, may be NULL)
 * when there is no loader; zero devices is not an error. Thread-safe. */
KVRT_API kvrt_status kvrt_vulkan_list_devices(kvrt_vulkan_device_info *out, int32_t max, int32_t *count,
                                              kvrt_error *err);

typedef struct kvrt_vulkan_handles {
    void *instance;        /* VkInstance */
    void *physical_device; /* VkPhysicalDevice */
    void *device;          /* VkDevice */
    void *queue;           /* VkQueue kvrt submits to */
    uint32_t queue_family;
} kvrt_vulkan_handles;

/* The Vulkan objects of a context created with KVRT_BACKEND_VULKAN; they stay
 * owned by kvrt and live until kvrt_context_destroy. KVRT_ERR_INVALID_ARGUMENT
 * for another backend. */
KVRT_API kvrt_status kvrt_vulkan_context_handles(const kvrt_context *ctx, kvrt_vulkan_handles *out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_VULKAN_H */
