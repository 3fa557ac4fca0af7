/* Helpers shared by the OpenCL suites (tests/test_opencl_*.c). */
#ifndef KVRT_TEST_OPENCL_UTIL_H
#define KVRT_TEST_OPENCL_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "backend/backend.h"

/* PoCL's kernel cache goes to the build tree, set before the first OpenCL call. */
static inline void cl_test_env(void)
{
    const char *build = getenv("KVRT_BUILD_DIR");
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/pocl-cache", build ? build : ".");
    mkdir(dir, 0775);
    setenv("POCL_CACHE_DIR", dir, 1);
}

/* An OpenCL context (first device, GPU preferred) with an optional budget. */
static inline kvrt_context *cl_test_context(uint64_t budget)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_OPENCL;
    p.memory_budget = budget;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    kvrt_status s = kvrt_context_create(&p, &ctx, &err);
    if (s != KVRT_OK)
        fprintf(stderr, "opencl context: %s: %s\n", kvrt_status_str(s), err.message);
    return ctx;
}

/* Deterministic pseudo-random numbers (splitmix64). */
static inline uint64_t cl_test_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float cl_test_uniform(uint64_t *state)
{
    return (float)((double)(cl_test_next(state) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

#endif /* KVRT_TEST_OPENCL_UTIL_H */
