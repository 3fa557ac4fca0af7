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
    uint32_t queue_family; /* family of `queue`; must support compute */
    /* KVRT_FEATURE_* bits: for kvrt_vulkan_context_create_from_handles, the
     * optional features the device was created with (see there); from
     * kvrt_vulkan_context_handles, the features kvrt uses on the context. */
    uint32_t enabled_features;
} kvrt_vulkan_handles;

/* The Vulkan objects of a Vulkan context (from kvrt_context_create with
 * KVRT_BACKEND_VULKAN, or the embedder's own from
 * kvrt_vulkan_context_create_from_handles); kvrt's own live until
 * kvrt_context_destroy. KVRT_ERR_INVALID_ARGUMENT for another backend. */
KVRT_API kvrt_status kvrt_vulkan_context_handles(const kvrt_context *ctx, kvrt_vulkan_handles *out);

/* Creates a Vulkan context on the embedder's own instance, device and queue,
 * so kvrt shares a device with a renderer or another runtime.
 *
 * Ownership and lifetime: kvrt never destroys the instance or the device; the
 * embedder keeps them alive until kvrt_context_destroy (which waits for
 * kvrt's work on the queue and frees everything kvrt created on the device)
 * and destroys them itself afterwards.
 *
 * Requirements: the handles come from the system Vulkan loader
 * (libvulkan.so.1), which kvrt opens at run time; the instance was created
 * with apiVersion >= 1.2 and the physical device supports Vulkan 1.2;
 * `device` was created from `physical_device` with `queue` taken from
 * `queue_family`, a family with compute. No device feature is required beyond
 * Vulkan 1.2 core.
 *
 * Optional features: Vulkan cannot report which features a VkDevice was
 * created with, so kvrt uses an optional feature only when the embedder sets
 * its bit in handles->enabled_features (and the device supports it, and
 * params->disabled_features does not clear it); a bit set for a feature that
 * was not enabled is undefined behaviour on the device. The bits stand for:
 *   KVRT_FEATURE_BUFFER_DEVICE_ADDRESS  bufferDeviceAddress (Vulkan 1.2):
 *       KV pools and weights larger than one storage binding;
 *   KVRT_FEATURE_FP16  shaderFloat16 and storageBuffer16BitAccess: F16 KV
 *       read and written as halves;
 *   KVRT_FEATURE_INT8  shaderInt8 and storageBuffer8BitAccess: probed and
 *       reported, not used by any kernel yet;
 *   KVRT_FEATURE_SUBGROUPS  needs no device feature (core subgroup
 *       properties): used whenever the device supports it, the bit is ignored.
 * kvrt_vulkan_context_handles reports what kvrt ended up using.
 *
 * Threading: kvrt submits to `queue` from the thread that calls into the
 * context; the embedder must not use that queue at the same time, or must
 * serialise its own submissions with kvrt's calls (Vulkan requires external
 * synchronisation of a queue). Other queues of the device are free to use.
 *
 * params may be NULL (defaults); its backend, device_index and device_name
 * are ignored; memory_budget, disabled_features, allocator and
 * pipeline_cache_path apply.
 * Errors: KVRT_ERR_INVALID_ARGUMENT (a NULL handle, a queue family without
 * compute), KVRT_ERR_BACKEND_UNAVAILABLE (no loader, device below Vulkan 1.2),
 * with a message in err (may be NULL). */
KVRT_API kvrt_status kvrt_vulkan_context_create_from_handles(const kvrt_vulkan_handles *handles,
                                                             const kvrt_context_params *params, kvrt_context **out,
                                                             kvrt_error *err);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_VULKAN_H */
