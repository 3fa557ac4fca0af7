#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "kvrt.h"
#include "test_models.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Says which data file is missing and where it was looked for. */
static void report_missing(const char *path, int err)
{
    fprintf(stderr, "test data %s: %s (the suites read tests/data in the source tree, or $KVRT_TEST_MODELS)\n",
            path, strerror(err));
}

kvrt_session *kvrt_test_open_session(kvrt_context *ctx, const char *name, int32_t n_ctx, kvrt_model **model)
{
    char path[4096];
    kvrt_test_require_model(name, path, sizeof(path));
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_error err;
    if (kvrt_model_load(ctx, &mp, model, &err) != KVRT_OK)
        fail_msg("load %s: %s", path, err.message);
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = n_ctx;
    kvrt_session *s = NULL;
    if (kvrt_session_create(*model, &sp, &s, &err) != KVRT_OK)
        fail_msg("session on %s: %s", path, err.message);
    return s;
}

const char *kvrt_test_models_dir(void)
{
    const char *env = getenv("KVRT_TEST_MODELS");
    return env && *env ? env : KVRT_DEFAULT_MODELS_DIR;
}

void kvrt_test_model_path(const char *name, char *buf, size_t size)
{
    snprintf(buf, size, "%s/%s", kvrt_test_models_dir(), name);
}

void kvrt_test_require_model(const char *name, char *buf, size_t size)
{
    kvrt_test_model_path(name, buf, size);
    if (access(buf, R_OK) != 0) {
        int e = errno;
        report_missing(buf, e);
        fail_msg("test data %s: %s", buf, strerror(e));
    }
}

void *kvrt_test_read_file(const char *name, size_t *size)
{
    char path[4096];
    kvrt_test_model_path(name, path, sizeof(path));
    FILE *f = fopen(path, "rb");
    if (!f) {
        report_missing(path, errno);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *data = n >= 0 ? malloc((size_t)n + 1) : NULL;
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    if (data && size)
        *size = (size_t)n;
    return data;
}

int32_t kvrt_test_read_ids(const char *name, int32_t *ids, int32_t capacity)
{
    char path[4096];
    kvrt_test_model_path(name, path, sizeof(path));
    FILE *f = fopen(path, "r");
    if (!f) {
        report_missing(path, errno);
        return -1;
    }
    int32_t n = 0;
    int v;
    while (n < capacity && fscanf(f, "%d", &v) == 1)
        ids[n++] = v;
    fclose(f);
    return n;
}
