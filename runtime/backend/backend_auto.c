/* KVRT_BACKEND_AUTO: which backend and device a context gets when the
 * embedder or user does not name one. Hardware first, because a software
 * driver (lavapipe, SwiftShader, PoCL's CPU device) runs the same kernels on
 * the CPU far slower than kvrt's own CPU backend. */
#include "backend/backend_auto.h"

#include "common/kvrt_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define AUTO_MAX_DEVICES 16

/* Substrings of the names software drivers give their devices. */
static bool is_software_name(const char *name)
{
    static const char *const soft[] = {"llvmpipe", "lavapipe", "softpipe", "swiftshader"};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(soft); i++)
        if (name && strcasestr(name, soft[i]))
            return true;
    return false;
}

bool kvrt_backend_auto_vulkan_hardware(const kvrt_vulkan_device_info *d)
{
    bool gpu_type = d->type && (!strcmp(d->type, "discrete") || !strcmp(d->type, "integrated") ||
                                !strcmp(d->type, "virtual"));
    /* VK_API_VERSION_1_2: variant 0, 1.2.0 */
    return gpu_type && d->api_version >= ((1u << 22) | (2u << 12)) && !is_software_name(d->name);
}

bool kvrt_backend_auto_opencl_hardware(const kvrt_opencl_device_info *d)
{
    return d->is_gpu && !is_software_name(d->name) && !is_software_name(d->platform);
}

/* Appends to a fixed buffer, truncating silently (the reason is for people). */
static void append(char *buf, size_t cap, const char *fmt, ...) KVRT_PRINTF(3, 4);
static void append(char *buf, size_t cap, const char *fmt, ...)
{
    size_t len = strlen(buf);
    if (len + 1 >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + len, cap - len, fmt, ap);
    va_end(ap);
}

/* "; passed over (software, CPU-type or below Vulkan 1.2; chosen only by
 * naming their backend): llvmpipe [vulkan 0], ..." */
static void note_passed_over(const kvrt_vulkan_device_info *vk, int32_t n_vk, const kvrt_opencl_device_info *cl,
                             int32_t n_cl, kvrt_backend_choice *out)
{
    static const char *const head =
        "; passed over (software, CPU-type or below Vulkan 1.2; chosen only by naming their backend): ";
    int n = 0;
    for (int32_t i = 0; i < n_vk; i++)
        if (!kvrt_backend_auto_vulkan_hardware(&vk[i]))
            append(out->reason, sizeof(out->reason), "%s%s [vulkan %d]", n++ ? ", " : head, vk[i].name,
                   (int)vk[i].index);
    for (int32_t i = 0; i < n_cl; i++)
        if (!kvrt_backend_auto_opencl_hardware(&cl[i]))
            append(out->reason, sizeof(out->reason), "%s%s [opencl %d]", n++ ? ", " : head, cl[i].name,
                   (int)cl[i].index);
}

void kvrt_backend_auto_pick(const kvrt_vulkan_device_info *vk, int32_t n_vk, const kvrt_opencl_device_info *cl,
                            int32_t n_cl, kvrt_backend_choice *out)
{
    memset(out, 0, sizeof(*out));
    out->backend = KVRT_BACKEND_CPU;
    out->device_index = -1;
    for (int32_t i = 0; i < n_vk && out->backend == KVRT_BACKEND_CPU; i++) {
        if (!kvrt_backend_auto_vulkan_hardware(&vk[i]))
            continue;
        out->backend = KVRT_BACKEND_VULKAN;
        out->device_index = vk[i].index;
        snprintf(out->device, sizeof(out->device), "%s", vk[i].name);
        snprintf(out->reason, sizeof(out->reason), "the first hardware Vulkan device: %s (%s)", vk[i].name,
                 vk[i].type);
    }
    for (int32_t i = 0; i < n_cl && out->backend == KVRT_BACKEND_CPU; i++) {
        if (!kvrt_backend_auto_opencl_hardware(&cl[i]))
            continue;
        out->backend = KVRT_BACKEND_OPENCL;
        out->device_index = cl[i].index;
        snprintf(out->device, sizeof(out->device), "%s", cl[i].name);
        snprintf(out->reason, sizeof(out->reason), "no hardware Vulkan device; the first hardware OpenCL device: %s (%s)",
                 cl[i].name, cl[i].platform);
    }
    if (out->backend == KVRT_BACKEND_CPU)
        snprintf(out->reason, sizeof(out->reason), "no hardware Vulkan or OpenCL device");
    /* only the lists that were looked at: OpenCL is not listed once Vulkan has a device */
    note_passed_over(vk, n_vk, cl, out->backend == KVRT_BACKEND_VULKAN ? 0 : n_cl, out);
}

/* Devices of one backend; none when it is not built in or has no loader. */
static int32_t list_vulkan(kvrt_vulkan_device_info *d, int32_t max)
{
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    int32_t n = 0;
    if (kvrt_vulkan_list_devices(d, max, &n, NULL) == KVRT_OK)
        return KVRT_MIN(n, max);
#else
    (void)d;
    (void)max;
#endif
    return 0;
}

static int32_t list_opencl(kvrt_opencl_device_info *d, int32_t max)
{
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    int32_t n = 0;
    if (kvrt_opencl_list_devices(d, max, &n, NULL) == KVRT_OK)
        return KVRT_MIN(n, max);
#else
    (void)d;
    (void)max;
#endif
    return 0;
}

kvrt_status kvrt_backend_choose_auto(kvrt_backend_choice *out, kvrt_error *err)
{
    kvrt_error_clear(err);
    if (!out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_backend_choose_auto: out is NULL");
    kvrt_vulkan_device_info vk[AUTO_MAX_DEVICES];
    kvrt_opencl_device_info cl[AUTO_MAX_DEVICES];
    int32_t n_vk = list_vulkan(vk, AUTO_MAX_DEVICES), n_cl = 0;
    bool have_vk = false;
    for (int32_t i = 0; i < n_vk && !have_vk; i++)
        have_vk = kvrt_backend_auto_vulkan_hardware(&vk[i]);
    if (!have_vk) /* opening OpenCL drivers costs time: only when it can matter */
        n_cl = list_opencl(cl, AUTO_MAX_DEVICES);
    kvrt_backend_auto_pick(vk, n_vk, cl, n_cl, out);
    return KVRT_OK;
}
