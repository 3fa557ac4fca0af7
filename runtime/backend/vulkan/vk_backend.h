/* Internal entry points of the Vulkan backend that need no Vulkan headers:
 * creation with debug options (validation layer, small segments) and the
 * validation message counter, for tests and tools. Not installed. */
#ifndef KVRT_VK_BACKEND_H
#define KVRT_VK_BACKEND_H

#include "backend/backend.h"

typedef struct kvrt_vk_debug_params {
    bool validation;          /* enable VK_LAYER_KHRONOS_validation (+ sync validation) */
    size_t max_segment_bytes; /* 0 = device limits; else a smaller segment size (tests) */
    uint32_t max_shared_bytes; /* 0 = device limit; else less shared memory for the attention
                                  tiles (tests: the 16 KiB every Vulkan device has) */
    uint32_t max_groups_x;     /* 0 = device limit; else a smaller maxComputeWorkGroupCount[0]
                                  (tests: dispatch splits and grid strides with small data) */
} kvrt_vk_debug_params;

/* kvrt_vulkan_backend_create with debug options; debug may be NULL. */
kvrt_status kvrt_vk_backend_create_ex(const kvrt_context_params *params, const kvrt_vk_debug_params *debug,
                                      kvrt_backend **out, kvrt_error *err);

/* Validation messages (warnings and errors) seen so far; the first is copied to `first`. */
uint32_t kvrt_vk_validation_messages(kvrt_backend *be, char *first, size_t first_size);

/* Changes the segment limit for buffers and pools created from now on
 * (0 = device limits): tests cross segment boundaries with small data. */
void kvrt_vk_set_max_segment(kvrt_backend *be, size_t bytes);

/* Queue submissions so far: steps and immediate transfers (each one waits). */
uint64_t kvrt_vk_submit_count(kvrt_backend *be);

/* KVRT_FEATURE_* bits the backend uses (present and not disabled). */
uint32_t kvrt_vk_features(kvrt_backend *be);

/* Whether the pipeline `name` (e.g. "rmsnorm") has been created; if so sets
 * *features to the KVRT_FEATURE_* bits its chosen variant needs (0: portable). */
bool kvrt_vk_pipeline_variant(kvrt_backend *be, const char *name, uint32_t *features);

/* What the pipeline cache file did on this backend. */
typedef struct kvrt_vk_pcache_stats {
    bool enabled;        /* a path was given */
    size_t loaded_bytes; /* driver data accepted from the file at creation (0: started empty) */
    const char *ignored; /* why the file was not used ("missing", "truncated", ...); NULL otherwise (static) */
    uint32_t created;    /* pipelines created */
    uint32_t writes;     /* times the file was written */
    uint32_t unchanged;  /* saves skipped: the driver's data equalled the file's */
} kvrt_vk_pcache_stats;

void kvrt_vk_pipeline_cache_stats(kvrt_backend *be, kvrt_vk_pcache_stats *out);

/* The name of a VkResult ("VK_ERROR_DEVICE_LOST"), for messages; a code
 * this build does not know gives "VkResult <number>". Returned by value so no
 * buffer is shared: use it inside one expression, kvrt_vk_result_name(r).s. */
typedef struct kvrt_vk_result_str {
    char s[48];
} kvrt_vk_result_str;
kvrt_vk_result_str kvrt_vk_result_name(int32_t result);

#endif /* KVRT_VK_BACKEND_H */
