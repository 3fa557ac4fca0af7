/* Helpers of the GPU backend suites: drivers under LeakSanitizer, feature masks,
 * builds without a backend. */
#ifndef KVRT_TEST_DRIVERS_H
#define KVRT_TEST_DRIVERS_H

#include <stdint.h>

/* The Vulkan loader unloads the driver (lavapipe) and the validation layer
 * with each instance; at exit LeakSanitizer then cannot name the module of
 * their leaks, and tests/lsan.supp (which names those libraries) cannot
 * suppress them. Pinning the modules keeps their symbols. Call once before
 * the first context; harmless where the libraries are absent. */
void kvrt_test_pin_gpu_drivers(void);

/* Every KVRT_FEATURE_* bit: what the GPU tests' portable-path pass disables. */
#define KVRT_TEST_ALL_FEATURES                                                                      \
    (KVRT_FEATURE_BUFFER_DEVICE_ADDRESS | KVRT_FEATURE_FP16 | KVRT_FEATURE_INT8 | KVRT_FEATURE_SUBGROUPS)

/* main() of a Vulkan test suite in a build without Vulkan (-DKVRT_VULKAN=OFF):
 * one test asserting the backend reports itself unavailable with a message. */
int kvrt_test_vulkan_not_built_main(void);

/* A Vulkan backend for the suites: validation layer (with synchronization
 * validation) on, the shared pipeline cache, `disabled` KVRT_FEATURE_* bits
 * masked, a device memory budget (0 = none), the shared memory the
 * attention tiles may use capped (0 = the device's). NULL, with the reason on stderr, when it cannot be made. Only in
 * builds with the Vulkan backend. */
struct kvrt_backend;
struct kvrt_backend *kvrt_test_vk_open(uint32_t disabled, uint64_t memory_budget, uint32_t max_shared_bytes);
/* Destroys it; returns the number of validation messages it reported (the
 * first goes to stderr). */
uint32_t kvrt_test_vk_close(struct kvrt_backend *be);

/* The Vulkan pipeline cache file the GPU suites share, in the build tree
 * (DESIGN.md: caches stay in the build tree); its folder is created. */
const char *kvrt_test_pipeline_cache(void);

#endif /* KVRT_TEST_DRIVERS_H */
