#include "openblas_core.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *kvrt_tool_openblas_core(void)
{
    return openblas_get_corename();
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

void kvrt_tool_openblas_reexec(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE")) /* set by the user, or by our own re-exec */
        return;
    const char *better = kvrt_tool_openblas_better_core();
    if (!better || setenv("OPENBLAS_CORETYPE", better, 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* exec failed: go on as we are */
}
