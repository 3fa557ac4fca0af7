/* Debian's OpenBLAS 0.3.21 picks its kernels ("core") in a library
 * constructor, before main, and misidentifies some AVX-512 CPUs (an AMD EPYC
 * here runs as Prescott or Haswell, several times slower than SkylakeX; see
 * DESIGN.md field notes). Setting OPENBLAS_CORETYPE inside the process is too
 * late, so a tool re-executes itself with it set. Tools only: a library must
 * not do this. */
#ifndef KVRT_TOOL_OPENBLAS_CORE_H
#define KVRT_TOOL_OPENBLAS_CORE_H

/* The core OpenBLAS runs ("SkylakeX"). */
const char *kvrt_tool_openblas_core(void);

/* The best core this CPU supports by cpuid, as an OPENBLAS_CORETYPE value, or
 * NULL when no better one than the current is known. */
const char *kvrt_tool_openblas_better_core(void);

/* When OPENBLAS_CORETYPE is unset and cpuid shows a better core than the one
 * in use, re-executes the program (/proc/self/exe, same argv) with it set.
 * Returns only when no re-exec was needed or it failed (the run then goes on
 * with the slower core). */
void kvrt_tool_openblas_reexec(char **argv);

#endif /* KVRT_TOOL_OPENBLAS_CORE_H */
