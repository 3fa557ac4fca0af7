/* Device buffers for op tests on any backend: uploads, outputs guarded by
 * canaries (DESIGN.md: lavapipe is kind to out-of-bounds writes, so tests
 * check the words after every output), checked downloads. Each helper fails
 * the running cmocka test on error. */
#ifndef KVRT_TEST_BUFFERS_H
#define KVRT_TEST_BUFFERS_H

#include <stddef.h>
#include <stdint.h>

#define KVRT_TEST_CANARY 0x7fc0beefu /* a NaN no kernel produces */
#define KVRT_TEST_N_CANARY 16

struct kvrt_backend;
struct kvrt_buffer;

/* A device buffer of `bytes`, holding `data` when it is not NULL. */
struct kvrt_buffer *kvrt_test_up(struct kvrt_backend *be, const void *data, size_t bytes);
/* n floats followed by KVRT_TEST_N_CANARY words, every word KVRT_TEST_CANARY. */
struct kvrt_buffer *kvrt_test_out_buf(struct kvrt_backend *be, size_t n);
/* The first n floats (malloc'd), after checking the canaries behind them. */
float *kvrt_test_down(struct kvrt_backend *be, struct kvrt_buffer *b, size_t n);

#endif /* KVRT_TEST_BUFFERS_H */
