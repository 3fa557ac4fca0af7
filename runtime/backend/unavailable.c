/* Factories of GPU backends that are not part of this build. */
#include "backend/backend.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
kvrt_status kvrt_vulkan_backend_create(const kvrt_context_params *params, kvrt_backend **out, kvrt_error *err)
{
    *out = NULL;
    return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE,
                     "kvrt was built without Vulkan (configure with -DKVRT_VULKAN=ON)");
}
#endif

#if !defined(KVRT_HAVE_OPENCL_BACKEND)
kvrt_status kvrt_opencl_backend_create(const kvrt_context_params *params, kvrt_backend **out, kvrt_error *err)
{
    *out = NULL;
    return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE,
                     "kvrt was built without OpenCL (configure with -DKVRT_OPENCL=ON)");
}
#endif
