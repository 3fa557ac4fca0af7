/* GPU drivers under LeakSanitizer. */
#ifndef KVRT_TEST_DRIVERS_H
#define KVRT_TEST_DRIVERS_H

/* The Vulkan loader unloads the driver (lavapipe) and the validation layer
 * with each instance; at exit LeakSanitizer then cannot name the module of
 * their leaks, and tests/lsan.supp (which names those libraries) cannot
 * suppress them. Pinning the modules keeps their symbols. Call once before
 * the first context; harmless where the libraries are absent. */
void kvrt_test_pin_gpu_drivers(void);

#endif /* KVRT_TEST_DRIVERS_H */
