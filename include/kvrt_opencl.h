/*
 * OpenCL backend extras: device listing (for --list-devices) and the
 * OpenCL handles of a context, for applications that share the device with
 * kvrt. Handles are returned as void * so this header needs no OpenCL headers;
 * cast them to cl_platform_id, cl_device_id, cl_context, cl_command_queue.
 * kvrt keeps ownership: do not release them; they live as long as the context.
 */
#ifndef KVRT_OPENCL_H
#define KVRT_OPENCL_H

#include "kvrt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_opencl_device_info {
    int32_t index;          /* the value of kvrt_context_params.device_index that selects it */
    char platform[128];     /* CL_PLATFORM_NAME */
    char name[128];         /* CL_DEVICE_NAME */
    int32_t is_gpu;         /* CL_DEVICE_TYPE_GPU */
    uint64_t global_mem;    /* CL_DEVICE_GLOBAL_MEM_SIZE */
    uint64_t max_alloc;     /* CL_DEVICE_MAX_MEM_ALLOC_SIZE */
    uint64_t local_mem;     /* CL_DEVICE_LOCAL_MEM_SIZE */
    int32_t has_fp16;       /* cl_khr_fp16 */
} kvrt_opencl_device_info;

/* Lists the OpenCL devices of every platform, in selection-index order.
 * Writes up to `max` entries into `out` (may be NULL when max is 0) and the
 * total count into *count. KVRT_ERR_BACKEND_UNAVAILABLE (with a message) when
 * the OpenCL loader cannot be opened; no platform gives count 0 and KVRT_OK.
 * `err` may be NULL. Thread-safe. */
KVRT_API kvrt_status kvrt_opencl_list_devices(kvrt_opencl_device_info *out, int32_t max, int32_t *count,
                                              kvrt_error *err);

typedef struct kvrt_opencl_handles {
    void *platform;   /* cl_platform_id */
    void *device;     /* cl_device_id */
    void *context;    /* cl_context */
    void *queue;      /* cl_command_queue (in order) */
} kvrt_opencl_handles;

/* The handles of an OpenCL context; KVRT_ERR_INVALID_ARGUMENT for another backend. */
KVRT_API kvrt_status kvrt_opencl_context_handles(const kvrt_context *ctx, kvrt_opencl_handles *out);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_OPENCL_H */
