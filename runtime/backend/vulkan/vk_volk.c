/* volk (Debian's libvulkan-volk-dev) compiled into kvrt: the Vulkan loader is
 * opened at run time, so kvrt starts on machines without Vulkan. Its global
 * function pointers are hidden in libkvrt.so and renamed kvrt_volk_* (see
 * cmake/volk_rename.cmake) so libkvrt.a cannot collide with an embedder's
 * volk or libvulkan either; device-level calls go through per-device
 * VolkDeviceTables. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wshadow"
#endif
#include "kvrt_volk_names.h"
#include <volk.c>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
