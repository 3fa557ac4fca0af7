/* Finding and reading the test data (tests/data in the source tree, or
 * $KVRT_TEST_MODELS in tests only). Every helper that opens a file names its
 * path on stderr when it is missing, so a fresh checkout without the data
 * says what is missing instead of a bare "GROUP SETUP" failure. */
#ifndef KVRT_TEST_MODELS_H
#define KVRT_TEST_MODELS_H

#include <stddef.h>
#include <stdint.h>

/* The models folder: $KVRT_TEST_MODELS if set, else the build-time default. */
const char *kvrt_test_models_dir(void);
/* Writes "<models dir>/<name>" into buf. */
void kvrt_test_model_path(const char *name, char *buf, size_t size);
/* Like kvrt_test_model_path, but fails the running cmocka test (naming the
 * path) when the file cannot be read. */
void kvrt_test_require_model(const char *name, char *buf, size_t size);
/* Reads a whole file under the models folder (malloc'd; NULL on failure, with
 * the path named on stderr). */
void *kvrt_test_read_file(const char *name, size_t *size);
/* Reads whitespace-separated integers from a file under the models folder;
 * returns how many were read (-1 if the file is missing, named on stderr). */
int32_t kvrt_test_read_ids(const char *name, int32_t *ids, int32_t capacity);

/* Loads the model file `name` from the models folder on ctx and opens a
 * session of n_ctx tokens on it; fails the running cmocka test on error.
 * Destroy the session, then *model. */
struct kvrt_context;
struct kvrt_model;
struct kvrt_session;
struct kvrt_session *kvrt_test_open_session(struct kvrt_context *ctx, const char *name, int32_t n_ctx,
                                            struct kvrt_model **model);

#endif /* KVRT_TEST_MODELS_H */
