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

#endif /* KVRT_TEST_MODELS_H */
