/* Finding and reading the shared test models (../shared/models, or
 * $KVRT_TEST_MODELS in tests only). */
#ifndef KVRT_TEST_MODELS_H
#define KVRT_TEST_MODELS_H

#include <stddef.h>
#include <stdint.h>

/* The models folder: $KVRT_TEST_MODELS if set, else the build-time default. */
const char *kvrt_test_models_dir(void);
/* Writes "<models dir>/<name>" into buf. */
void kvrt_test_model_path(const char *name, char *buf, size_t size);
/* Reads a whole file under the models folder (malloc'd; NULL on failure). */
void *kvrt_test_read_file(const char *name, size_t *size);
/* Reads whitespace-separated integers from a file under the models folder;
 * returns how many were read (-1 if the file is missing). */
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
