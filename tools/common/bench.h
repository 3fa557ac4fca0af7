/* Shared pieces of the kvrt-bench subcommands: a monotonic clock, the size of
 * the last-level cache, and a STREAM-like memory bandwidth measurement run on
 * the same number of threads as the kernels it is compared with. */
#ifndef KVRT_TOOL_BENCH_H
#define KVRT_TOOL_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "common/kvrt_internal.h"

/* Seconds on a monotonic clock. */
double kvrt_bench_now(void);

/* CPU seconds used so far by every thread of this process (getrusage; child
 * processes not counted). On a shared machine a rate from the wall clock
 * measures the machine's load as much as the code; this does not. */
double kvrt_bench_process_cpu_s(void);

/* Bytes of the last-level cache (sysfs, then sysconf; 32 MiB if unknown). */
size_t kvrt_bench_llc_bytes(void);

typedef struct kvrt_bench_bw {
    double read_gbs;  /* best pass of a read-only sum over the buffer, 1e9 bytes/s */
    double copy_gbs;  /* best pass of a copy, counting read + write bytes (STREAM's rule) */
    size_t bytes;     /* size of each buffer */
    int n_threads;
    int passes;
} kvrt_bench_bw;

/* Measures with n_threads threads (<= 0: all cores) over two buffers of
 * `bytes` each (choose >= 4x the LLC so caches do not help), best of `passes`.
 * Errors: OUT_OF_HOST_MEMORY, or the thread pool's. */
kvrt_status kvrt_bench_bandwidth(int n_threads, size_t bytes, int passes, kvrt_bench_bw *out, kvrt_error *err);

/* A small deterministic generator (splitmix64) for benchmark data. */
typedef struct kvrt_bench_rng {
    uint64_t state;
} kvrt_bench_rng;

/* Uniform in [-1, 1). */
float kvrt_bench_rng_f32(kvrt_bench_rng *r);
void kvrt_bench_rng_fill(kvrt_bench_rng *r, float *dst, size_t n);

#endif /* KVRT_TOOL_BENCH_H */
