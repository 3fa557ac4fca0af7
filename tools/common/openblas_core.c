#include "openblas_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if KVRT_HAVE_OPENBLAS
#include <cblas.h>

const char *kvrt_tool_openblas_core(void)
{
    return openblas_get_corename();
}

int kvrt_tool_openblas_threads(void)
{
    return openblas_get_num_threads();
}

/* Cores OpenBLAS already runs well; names as openblas_get_corename() spells them. */
static int core_is(const char *core, const char *const *names)
{
    for (; *names; names++)
        if (strcasecmp(core, *names) == 0)
            return 1;
    return 0;
}

const char *kvrt_tool_openblas_better_core(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    static const char *const avx512_cores[] = {"SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    static const char *const avx2_cores[] = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", NULL};
    const char *core = openblas_get_corename();
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && !core_is(core, avx512_cores))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !core_is(core, avx2_cores))
        return "Haswell";
#endif
    return NULL;
}

#else /* no OpenBLAS in this build */

const char *kvrt_tool_openblas_core(void)
{
    return NULL;
}

int kvrt_tool_openblas_threads(void)
{
    return 0;
}

const char *kvrt_tool_openblas_better_core(void)
{
    return NULL;
}

#endif

void kvrt_tool_openblas_describe(char *buf, size_t size)
{
    const char *core = kvrt_tool_openblas_core(), *env = getenv("OPENBLAS_CORETYPE");
    const char *better = kvrt_tool_openblas_better_core();
    if (!core)
        snprintf(buf, size, "no OpenBLAS in this build");
    else if (env && better)
        snprintf(buf, size, "OpenBLAS core %s (OPENBLAS_CORETYPE=%s; %s would use wider kernels)", core, env,
                 better);
    else if (env)
        snprintf(buf, size, "OpenBLAS core %s (OPENBLAS_CORETYPE=%s)", core, env);
    else if (better)
        snprintf(buf, size, "OpenBLAS core %s (OPENBLAS_CORETYPE=%s would use wider kernels)", core, better);
    else
        snprintf(buf, size, "OpenBLAS core %s", core);
}
