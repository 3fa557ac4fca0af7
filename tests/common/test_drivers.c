#include "test_drivers.h"

#include <dlfcn.h>
#include <stddef.h>

void kvrt_test_pin_gpu_drivers(void)
{
    static const char *libs[] = {"libvulkan_lvp.so", "libVkLayer_khronos_validation.so"};
    for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]); i++)
        (void)dlopen(libs[i], RTLD_NOW | RTLD_NODELETE);
}
