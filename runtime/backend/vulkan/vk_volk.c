/* volk (Debian's libvulkan-volk-dev) compiled into kvrt: the Vulkan loader is
 * opened at run time, so kvrt starts on machines without Vulkan. Its global
 * function pointers stay hidden (the library is built with hidden
 * visibility); device-level calls go through per-device VolkDeviceTables. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wshadow"
#endif
#include <volk.c>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
