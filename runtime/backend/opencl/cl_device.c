/* The OpenCL backend: loader (dlopen of the ICD loader), device selection,
 * limits, recording (one in-order queue, flushed once per step) and the
 * backend table. */
#include "backend/opencl/cl_internal.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#define KVRT_CL_MAX_DEVICES 64

/* ---- loader ------------------------------------------------------------------ */

kvrt_status kvrt_cl_load(kvrt_cl_fns *fn, kvrt_error *err)
{
    return kvrt_cl_load_named(fn, "libOpenCL.so.1", err);
}

kvrt_status kvrt_cl_load_named(kvrt_cl_fns *fn, const char *lib, kvrt_error *err)
{
    memset(fn, 0, sizeof(*fn));
    /* RTLD_LOCAL: the ICD loader's symbols must not satisfy anyone else's references. */
    fn->lib = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    if (!fn->lib) {
        const char *why = dlerror();
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE,
                         "opencl: cannot open the OpenCL loader %s (%s); install an ICD loader "
                         "(ocl-icd-libopencl1) and a driver",
                         lib, why ? why : "not found");
    }
#define KVRT_CL_RESOLVE(name)                                                                   \
    *(void **)&fn->name = dlsym(fn->lib, #name);                                              \
    if (!fn->name) {                                                                          \
        kvrt_cl_unload(fn);                                                                   \
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE,                                   \
                         "opencl: %s lacks %s (an OpenCL 1.2 loader is required)", lib, #name); \
    }
    KVRT_CL_FUNCS(KVRT_CL_RESOLVE)
#undef KVRT_CL_RESOLVE
    return KVRT_OK;
}

/* The loader stays mapped (dlopen counts references, so reopening it costs
 * nothing): drivers such as PoCL keep worker threads and exit handlers in
 * their code, and unmapping it under them crashes at process exit. */
void kvrt_cl_unload(kvrt_cl_fns *fn)
{
    memset(fn, 0, sizeof(*fn));
}

/* Every code of OpenCL 1.2 to 3.0 and the ICD loader's; numbers, because a
 * 1.2 target's headers do not define the later names. */
const char *kvrt_cl_error_name(cl_int code)
{
    static const struct {
        cl_int code;
        const char *name;
    } names[] = {
        {0, "CL_SUCCESS"},
        {-1, "CL_DEVICE_NOT_FOUND"},
        {-2, "CL_DEVICE_NOT_AVAILABLE"},
        {-3, "CL_COMPILER_NOT_AVAILABLE"},
        {-4, "CL_MEM_OBJECT_ALLOCATION_FAILURE"},
        {-5, "CL_OUT_OF_RESOURCES"},
        {-6, "CL_OUT_OF_HOST_MEMORY"},
        {-7, "CL_PROFILING_INFO_NOT_AVAILABLE"},
        {-8, "CL_MEM_COPY_OVERLAP"},
        {-9, "CL_IMAGE_FORMAT_MISMATCH"},
        {-10, "CL_IMAGE_FORMAT_NOT_SUPPORTED"},
        {-11, "CL_BUILD_PROGRAM_FAILURE"},
        {-12, "CL_MAP_FAILURE"},
        {-13, "CL_MISALIGNED_SUB_BUFFER_OFFSET"},
        {-14, "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST"},
        {-15, "CL_COMPILE_PROGRAM_FAILURE"},
        {-16, "CL_LINKER_NOT_AVAILABLE"},
        {-17, "CL_LINK_PROGRAM_FAILURE"},
        {-18, "CL_DEVICE_PARTITION_FAILED"},
        {-19, "CL_KERNEL_ARG_INFO_NOT_AVAILABLE"},
        {-30, "CL_INVALID_VALUE"},
        {-31, "CL_INVALID_DEVICE_TYPE"},
        {-32, "CL_INVALID_PLATFORM"},
        {-33, "CL_INVALID_DEVICE"},
        {-34, "CL_INVALID_CONTEXT"},
        {-35, "CL_INVALID_QUEUE_PROPERTIES"},
        {-36, "CL_INVALID_COMMAND_QUEUE"},
        {-37, "CL_INVALID_HOST_PTR"},
        {-38, "CL_INVALID_MEM_OBJECT"},
        {-39, "CL_INVALID_IMAGE_FORMAT_DESCRIPTOR"},
        {-40, "CL_INVALID_IMAGE_SIZE"},
        {-41, "CL_INVALID_SAMPLER"},
        {-42, "CL_INVALID_BINARY"},
        {-43, "CL_INVALID_BUILD_OPTIONS"},
        {-44, "CL_INVALID_PROGRAM"},
        {-45, "CL_INVALID_PROGRAM_EXECUTABLE"},
        {-46, "CL_INVALID_KERNEL_NAME"},
        {-47, "CL_INVALID_KERNEL_DEFINITION"},
        {-48, "CL_INVALID_KERNEL"},
        {-49, "CL_INVALID_ARG_INDEX"},
        {-50, "CL_INVALID_ARG_VALUE"},
        {-51, "CL_INVALID_ARG_SIZE"},
        {-52, "CL_INVALID_KERNEL_ARGS"},
        {-53, "CL_INVALID_WORK_DIMENSION"},
        {-54, "CL_INVALID_WORK_GROUP_SIZE"},
        {-55, "CL_INVALID_WORK_ITEM_SIZE"},
        {-56, "CL_INVALID_GLOBAL_OFFSET"},
        {-57, "CL_INVALID_EVENT_WAIT_LIST"},
        {-58, "CL_INVALID_EVENT"},
        {-59, "CL_INVALID_OPERATION"},
        {-60, "CL_INVALID_GL_OBJECT"},
        {-61, "CL_INVALID_BUFFER_SIZE"},
        {-62, "CL_INVALID_MIP_LEVEL"},
        {-63, "CL_INVALID_GLOBAL_WORK_SIZE"},
        {-64, "CL_INVALID_PROPERTY"},
        {-65, "CL_INVALID_IMAGE_DESCRIPTOR"},
        {-66, "CL_INVALID_COMPILER_OPTIONS"},
        {-67, "CL_INVALID_LINKER_OPTIONS"},
        {-68, "CL_INVALID_DEVICE_PARTITION_COUNT"},
        {-69, "CL_INVALID_PIPE_SIZE"},
        {-70, "CL_INVALID_DEVICE_QUEUE"},
        {-71, "CL_INVALID_SPEC_ID"},
        {-72, "CL_MAX_SIZE_RESTRICTION_EXCEEDED"},
        {-1001, "CL_PLATFORM_NOT_FOUND_KHR"},
    };
    for (size_t i = 0; i < KVRT_ARRAY_LEN(names); i++)
        if (names[i].code == code)
            return names[i].name;
    return "unknown OpenCL error";
}

kvrt_status kvrt_cl_fail(kvrt_cl_backend *cl, cl_int code, kvrt_status fallback, const char *what)
{
    kvrt_status s = fallback;
    if (code == CL_MEM_OBJECT_ALLOCATION_FAILURE || code == CL_OUT_OF_RESOURCES)
        s = KVRT_ERR_OUT_OF_DEVICE_MEMORY;
    else if (code == CL_OUT_OF_HOST_MEMORY)
        s = KVRT_ERR_OUT_OF_HOST_MEMORY;
    const char *name = kvrt_cl_error_name(code);
    if (strncmp(name, "CL_", 3) != 0) /* unknown: the number is all there is */
        return kvrt_fail(&cl->base.err, s, "opencl: %s failed: %s %d", what, name, (int)code);
    return kvrt_fail(&cl->base.err, s, "opencl: %s failed: %s", what, name);
}

/* ---- devices ------------------------------------------------------------------ */

typedef struct cl_dev_ref {
    cl_platform_id platform;
    cl_device_id device;
} cl_dev_ref;

/* Every device of every platform, in the order of kvrt_opencl_list_devices. */
static int32_t cl_enumerate(const kvrt_cl_fns *fn, cl_dev_ref *out, int32_t max)
{
    cl_platform_id plats[16];
    cl_uint n_plats = 0;
    if (fn->clGetPlatformIDs(KVRT_ARRAY_LEN(plats), plats, &n_plats) != CL_SUCCESS)
        return 0;
    n_plats = KVRT_MIN(n_plats, (cl_uint)KVRT_ARRAY_LEN(plats));
    int32_t n = 0;
    for (cl_uint p = 0; p < n_plats; p++) {
        cl_device_id devs[KVRT_CL_MAX_DEVICES];
        cl_uint n_devs = 0;
        if (fn->clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, KVRT_CL_MAX_DEVICES, devs, &n_devs) != CL_SUCCESS)
            continue;
        for (cl_uint d = 0; d < KVRT_MIN(n_devs, (cl_uint)KVRT_CL_MAX_DEVICES) && n < max; d++)
            out[n++] = (cl_dev_ref){plats[p], devs[d]};
    }
    return n;
}

static void cl_device_string(const kvrt_cl_fns *fn, cl_device_id d, cl_device_info what, char *buf, size_t len)
{
    buf[0] = '\0';
    if (fn->clGetDeviceInfo(d, what, len, buf, NULL) != CL_SUCCESS)
        snprintf(buf, len, "?");
    buf[len - 1] = '\0';
}

static uint64_t cl_device_u64(const kvrt_cl_fns *fn, cl_device_id d, cl_device_info what)
{
    cl_ulong v = 0;
    fn->clGetDeviceInfo(d, what, sizeof(v), &v, NULL);
    return v;
}

static bool cl_device_has_extension(const kvrt_cl_fns *fn, cl_device_id d, const char *ext)
{
    char exts[4096];
    cl_device_string(fn, d, CL_DEVICE_EXTENSIONS, exts, sizeof(exts));
    size_t n = strlen(ext);
    for (const char *p = strstr(exts, ext); p; p = strstr(p + 1, ext)) {
        if ((p == exts || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
            return true;
    }
    return false;
}

static void cl_fill_info(const kvrt_cl_fns *fn, const cl_dev_ref *r, int32_t index, kvrt_opencl_device_info *info)
{
    memset(info, 0, sizeof(*info));
    info->index = index;
    if (fn->clGetPlatformInfo(r->platform, CL_PLATFORM_NAME, sizeof(info->platform), info->platform, NULL) !=
        CL_SUCCESS)
        snprintf(info->platform, sizeof(info->platform), "?");
    info->platform[sizeof(info->platform) - 1] = '\0';
    cl_device_string(fn, r->device, CL_DEVICE_NAME, info->name, sizeof(info->name));
    cl_device_type type = 0;
    fn->clGetDeviceInfo(r->device, CL_DEVICE_TYPE, sizeof(type), &type, NULL);
    info->is_gpu = (type & CL_DEVICE_TYPE_GPU) != 0;
    info->global_mem = cl_device_u64(fn, r->device, CL_DEVICE_GLOBAL_MEM_SIZE);
    info->max_alloc = cl_device_u64(fn, r->device, CL_DEVICE_MAX_MEM_ALLOC_SIZE);
    info->local_mem = cl_device_u64(fn, r->device, CL_DEVICE_LOCAL_MEM_SIZE);
    info->has_fp16 = cl_device_has_extension(fn, r->device, "cl_khr_fp16");
}

kvrt_status kvrt_opencl_list_devices(kvrt_opencl_device_info *out, int32_t max, int32_t *count, kvrt_error *err)
{
    kvrt_error_clear(err);
    if (!count || max < 0 || (max > 0 && !out))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_opencl_list_devices: bad arguments");
    *count = 0;
    kvrt_cl_fns fn;
    KVRT_TRY(kvrt_cl_load(&fn, err));
    cl_dev_ref refs[KVRT_CL_MAX_DEVICES];
    int32_t n = cl_enumerate(&fn, refs, KVRT_CL_MAX_DEVICES);
    for (int32_t i = 0; i < n && i < max; i++)
        cl_fill_info(&fn, &refs[i], i, &out[i]);
    *count = n;
    kvrt_cl_unload(&fn);
    return KVRT_OK;
}

/* Picks a device: by name substring (case-insensitive), else by index, else the first GPU, else the first. */
static kvrt_status cl_select(kvrt_cl_backend *cl, const kvrt_context_params *p, kvrt_error *err)
{
    cl_dev_ref refs[KVRT_CL_MAX_DEVICES];
    int32_t n = cl_enumerate(&cl->fn, refs, KVRT_CL_MAX_DEVICES);
    if (n == 0)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE,
                         "opencl: no OpenCL platform or device found (install a driver, e.g. pocl-opencl-icd)");
    int32_t pick = -1;
    kvrt_opencl_device_info info;
    if (p->device_name && p->device_name[0]) {
        for (int32_t i = 0; i < n && pick < 0; i++) {
            cl_fill_info(&cl->fn, &refs[i], i, &info);
            if (strcasestr(info.name, p->device_name) || strcasestr(info.platform, p->device_name))
                pick = i;
        }
        if (pick < 0)
            return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE,
                             "opencl: no device matches the name \"%s\" (%d device%s present)", p->device_name,
                             (int)n, n == 1 ? "" : "s");
    } else if (p->device_index >= 0) {
        if (p->device_index >= n)
            return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "opencl: device index %d out of range (%d device%s)",
                             (int)p->device_index, (int)n, n == 1 ? "" : "s");
        pick = p->device_index;
    } else {
        for (int32_t i = 0; i < n && pick < 0; i++) {
            cl_fill_info(&cl->fn, &refs[i], i, &info);
            if (info.is_gpu)
                pick = i;
        }
        if (pick < 0)
            pick = 0;
    }
    cl_fill_info(&cl->fn, &refs[pick], pick, &info);
    cl->platform = refs[pick].platform;
    cl->device = refs[pick].device;
    cl->max_alloc = info.max_alloc;
    cl->global_mem = info.global_mem;
    cl->local_mem = info.local_mem;
    cl->has_fp16 = info.has_fp16 && !(p->disabled_features & KVRT_FEATURE_FP16);
    size_t wg = 1;
    cl->fn.clGetDeviceInfo(cl->device, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof(wg), &wg, NULL);
    cl->max_wg = wg ? wg : 1;
    snprintf(cl->base.description, sizeof(cl->base.description),
             "opencl: %.100s (%.60s), %.1f GiB, max alloc %.2f GiB, %llu KiB local%s", info.name, info.platform,
             (double)info.global_mem / (1u << 30), (double)info.max_alloc / (1u << 30),
             (unsigned long long)(info.local_mem >> 10), cl->has_fp16 ? ", fp16" : "");
    return KVRT_OK;
}

/* ---- recording ------------------------------------------------------------------ */

kvrt_status kvrt_cl_after_enqueue(kvrt_cl_backend *cl, const char *what)
{
    if (cl->recording)
        return KVRT_OK;
    cl_int rc = cl->fn.clFinish(cl->queue);
    return rc == CL_SUCCESS ? KVRT_OK : kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, what);
}

static kvrt_status cl_begin(kvrt_backend *be)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    if (cl->recording)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "opencl: begin() while already recording");
    cl->recording = true;
    return KVRT_OK;
}

static kvrt_status cl_submit(kvrt_backend *be)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    if (!cl->recording)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "opencl: submit() without begin()");
    cl->recording = false;
    cl_int rc = cl->fn.clFlush(cl->queue);
    if (rc == CL_SUCCESS)
        rc = cl->fn.clFinish(cl->queue);
    return rc == CL_SUCCESS ? KVRT_OK : kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, "submit");
}

/* The queue cannot take back what was enqueued: it runs to the end here,
 * so no caller memory (recorded downloads) is written after the call; the
 * step's results are the caller's to ignore. */
static void cl_abort(kvrt_backend *be)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    if (!cl->recording)
        return;
    cl->recording = false;
    cl->fn.clFinish(cl->queue);
}

/* ---- the backend ------------------------------------------------------------------ */

static void cl_destroy(kvrt_backend *be)
{
    if (!be)
        return;
    kvrt_cl_backend *cl = kvrt_cl(be);
    if (cl->queue)
        cl->fn.clFinish(cl->queue);
    kvrt_cl_buffer_destroy(be, cl->scratch);
    kvrt_cl_programs_release(cl);
    if (cl->queue)
        cl->fn.clReleaseCommandQueue(cl->queue);
    if (cl->ctx)
        cl->fn.clReleaseContext(cl->ctx);
    kvrt_cl_unload(&cl->fn);
    kvrt_free(be->alloc, cl);
}

static const kvrt_backend_ops cl_ops = {
    .interface_version = KVRT_BACKEND_INTERFACE_VERSION,
    .name = "opencl",
    .weight_types = KVRT_WEIGHT_TYPES_ALL,
    .kv_mixed_types = true, /* program variants per (K type, V type) pair */
    .destroy = cl_destroy,
    .buffer_create = kvrt_cl_buffer_create,
    .buffer_destroy = kvrt_cl_buffer_destroy,
    .buffer_wrap_host = NULL,
    .buffer_upload = kvrt_cl_buffer_upload,
    .buffer_download = kvrt_cl_buffer_download,
    .buffer_copy = kvrt_cl_buffer_copy,
    .kv_pool_create = kvrt_cl_kv_pool_create,
    .kv_pool_destroy = kvrt_cl_kv_pool_destroy,
    .kv_block_read = kvrt_cl_kv_block_read,
    .kv_block_write = kvrt_cl_kv_block_write,
    .kv_copy_blocks = kvrt_cl_kv_copy_blocks,
    .begin = cl_begin,
    .submit = cl_submit,
    .abort = cl_abort,
    .limits = kvrt_cl_limits,
    KVRT_BACKEND_KERNELS(KVRT_BACKEND_ENTRY, kvrt_cl_)
    .kv_rope_shift = kvrt_cl_kv_rope_shift,
};

static kvrt_status cl_open_device(kvrt_cl_backend *cl, const kvrt_context_params *p, kvrt_error *err)
{
    KVRT_TRY(kvrt_cl_load(&cl->fn, err));
    KVRT_TRY(cl_select(cl, p, err));
    cl_int rc;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)cl->platform, 0};
    cl->ctx = cl->fn.clCreateContext(props, 1, &cl->device, NULL, NULL, &rc);
    if (!cl->ctx)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "opencl: clCreateContext failed: %s",
                         kvrt_cl_error_name(rc));
    cl->queue = cl->fn.clCreateCommandQueue(cl->ctx, cl->device, 0, &rc); /* in order */
    if (!cl->queue)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "opencl: clCreateCommandQueue failed: %s",
                         kvrt_cl_error_name(rc));
    return KVRT_OK;
}

kvrt_status kvrt_opencl_backend_create(const kvrt_context_params *p, kvrt_backend **out, kvrt_error *err)
{
    *out = NULL;
    kvrt_cl_backend *cl = kvrt_calloc(p->allocator, 1, sizeof(*cl));
    if (!cl)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "opencl backend: out of host memory");
    cl->base.ops = &cl_ops;
    cl->base.kind = KVRT_BACKEND_OPENCL;
    cl->base.alloc = p->allocator;
    cl->disabled_features = p->disabled_features;
    kvrt_status s = cl_open_device(cl, p, err);
    if (s != KVRT_OK) {
        cl_destroy(&cl->base);
        return s;
    }
    cl->budget = p->memory_budget ? p->memory_budget : cl->global_mem;
    cl->seg_bytes = (size_t)KVRT_MIN(cl->max_alloc, (uint64_t)SIZE_MAX) & ~(size_t)255;
    if (cl->seg_bytes == 0)
        cl->seg_bytes = 256;
    *out = &cl->base;
    return KVRT_OK;
}

kvrt_status kvrt_opencl_context_handles(const kvrt_context *ctx, kvrt_opencl_handles *out)
{
    if (!ctx || !out || !ctx->be || ctx->be->kind != KVRT_BACKEND_OPENCL)
        return KVRT_ERR_INVALID_ARGUMENT;
    const kvrt_cl_backend *cl = (const kvrt_cl_backend *)ctx->be;
    out->platform = cl->platform;
    out->device = cl->device;
    out->context = cl->ctx;
    out->queue = cl->queue;
    return KVRT_OK;
}

/* ---- test hooks ---- */

void kvrt_cl_test_set_segment_bytes(kvrt_backend *be, size_t bytes)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    bytes &= ~(size_t)255;
    cl->seg_bytes = KVRT_MAX((size_t)256, (size_t)KVRT_MIN((uint64_t)bytes, cl->max_alloc));
}

void kvrt_cl_test_fail_alloc(kvrt_backend *be, uint64_t nth)
{
    kvrt_cl(be)->fail_alloc_at = nth;
}
