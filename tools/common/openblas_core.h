/* OpenBLAS picks its kernels ("core") in a library constructor, before main,
 * from OPENBLAS_CORETYPE or cpuid, and Debian's 0.3.21 does not know every
 * CPU: this AMD EPYC (Zen 5) runs as Cooperlake by cpuid, as Prescott under
 * another hypervisor (DESIGN.md field notes), and as whatever an inherited
 * OPENBLAS_CORETYPE says (Haswell on the CI machines). The library uses
 * OpenBLAS only when that core is wider than its own kernels
 * (cpu_fallback/cpu_blas.h). The tools report the core
 * and, when cpuid shows a better one, how to ask for it; they do not set the
 * environment and re-execute themselves: a user who wants the AVX-512
 * kernels sets OPENBLAS_CORETYPE before starting the tool. */
#ifndef KVRT_TOOL_OPENBLAS_CORE_H
#define KVRT_TOOL_OPENBLAS_CORE_H

#include <stddef.h>

/* The core OpenBLAS runs ("SkylakeX"); NULL in a build without OpenBLAS. */
const char *kvrt_tool_openblas_core(void);

/* OpenBLAS's current thread count; 0 in a build without OpenBLAS. */
int kvrt_tool_openblas_threads(void);

/* The best core this CPU supports by cpuid, as an OPENBLAS_CORETYPE value, or
 * NULL when no better one than the current is known (or no OpenBLAS). */
const char *kvrt_tool_openblas_better_core(void);

/* One line for a report: "OpenBLAS core Haswell (OPENBLAS_CORETYPE=SkylakeX
 * would use the AVX-512 kernels)", "... (OPENBLAS_CORETYPE=SkylakeX)" when set,
 * or "no OpenBLAS in this build". */
void kvrt_tool_openblas_describe(char *buf, size_t size);

#endif /* KVRT_TOOL_OPENBLAS_CORE_H */
