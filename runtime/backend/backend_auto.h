/* The KVRT_BACKEND_AUTO rule on given device lists, so tests can check it
 * with devices this machine does not have (kvrt_backend_choose_auto lists the
 * real ones and calls kvrt_backend_auto_pick). */
#ifndef KVRT_BACKEND_AUTO_H
#define KVRT_BACKEND_AUTO_H

#include <stdbool.h>

#include "kvrt.h"
#include "kvrt_opencl.h"
#include "kvrt_vulkan.h"

/* A Vulkan device auto may choose: a discrete, integrated or virtual GPU
 * that supports Vulkan 1.2 and is not a software rasterizer by name
 * (lavapipe reports itself as a CPU-type device; the name check catches
 * software drivers that claim another type). */
bool kvrt_backend_auto_vulkan_hardware(const kvrt_vulkan_device_info *d);

/* An OpenCL device auto may choose: a GPU-type device that is not a software
 * driver by name (PoCL's CPU device is CPU-type; rusticl on llvmpipe is not). */
bool kvrt_backend_auto_opencl_hardware(const kvrt_opencl_device_info *d);

/* The first hardware Vulkan device, else the first hardware OpenCL device,
 * else the CPU; `reason` names the software devices passed over. Either list
 * may be empty (n = 0, pointer NULL). */
void kvrt_backend_auto_pick(const kvrt_vulkan_device_info *vk, int32_t n_vk, const kvrt_opencl_device_info *cl,
                            int32_t n_cl, kvrt_backend_choice *out);

#endif /* KVRT_BACKEND_AUTO_H */
