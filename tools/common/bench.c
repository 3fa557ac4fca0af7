#include "bench.h"

#include "common/threadpool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

double kvrt_bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double kvrt_bench_process_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0.0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* "32768K" -> bytes; 0 when unreadable. */
static size_t sysfs_cache_size(int index)
{
    char path[96], buf[32];
    snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu0/cache/index%d/size", index);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = 0;
    if (fgets(buf, sizeof(buf), f)) {
        char *end = NULL;
        unsigned long long v = strtoull(buf, &end, 10);
        if (end && (*end == 'K' || *end == 'k'))
            v *= 1024;
        else if (end && *end == 'M')
            v *= 1024 * 1024;
        n = (size_t)v;
    }
    fclose(f);
    return n;
}

/* No core's share of a last-level cache is anywhere near this: a virtual
 * machine here reported a 508 MiB L3 through cpuid (sysconf), which made
 * every bandwidth pass stream 2 x 2 GiB and kvrt-bench take minutes before
 * measuring anything. A larger report is treated as this much. */
#define LLC_MAX_BYTES ((size_t)128 << 20)

size_t kvrt_bench_llc_bytes(void)
{
    size_t best = 0;
    for (int i = 0; i < 8; i++)
        best = KVRT_MAX(best, sysfs_cache_size(i));
#ifdef _SC_LEVEL3_CACHE_SIZE
    if (best == 0) {
        long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
        best = l3 > 0 ? (size_t)l3 : 0;
    }
#endif
    return best ? KVRT_MIN(best, LLC_MAX_BYTES) : (size_t)32 << 20;
}

/* ---- bandwidth -------------------------------------------------------------- */

enum { BW_CHUNK = 1 << 20 }; /* bytes per task: small enough to balance, large enough to stream */

typedef struct bw_job {
    uint64_t *a, *b;   /* a is read (and copied from), b written */
    size_t words;      /* per buffer */
    uint64_t *sink;    /* per task, keeps the sums alive */
    int mode;          /* 0 = first touch, 1 = read, 2 = copy */
} bw_job;

static void bw_task(void *arg, int64_t task, int thread)
{
    (void)thread;
    bw_job *j = arg;
    size_t per = BW_CHUNK / sizeof(uint64_t);
    size_t lo = (size_t)task * per;
    size_t n = KVRT_MIN(per, j->words - lo);
    if (j->mode == 0) {
        /* touch pages from the threads that will read them */
        for (size_t i = 0; i < n; i++)
            j->a[lo + i] = (uint64_t)(lo + i) * 0x9e3779b97f4a7c15ull;
        memset(j->b + lo, 0, n * sizeof(uint64_t));
    } else if (j->mode == 1) {
        /* four independent sums so the loop vectorises and is not latency-bound */
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        const uint64_t *p = j->a + lo;
        size_t i = 0;
        for (; i + 4 <= n; i += 4) {
            s0 += p[i];
            s1 += p[i + 1];
            s2 += p[i + 2];
            s3 += p[i + 3];
        }
        for (; i < n; i++)
            s0 += p[i];
        j->sink[task] = s0 + s1 + s2 + s3;
    } else {
        memcpy(j->b + lo, j->a + lo, n * sizeof(uint64_t));
    }
}

static double bw_pass(kvrt_threadpool *pool, bw_job *j, int64_t n_tasks, int mode)
{
    j->mode = mode;
    double t0 = kvrt_bench_now();
    kvrt_threadpool_run(pool, n_tasks, bw_task, j);
    return kvrt_bench_now() - t0;
}

kvrt_status kvrt_bench_bandwidth(int n_threads, size_t bytes, int passes, kvrt_bench_bw *out, kvrt_error *err)
{
    memset(out, 0, sizeof(*out));
    bytes = KVRT_MAX(bytes, (size_t)BW_CHUNK) / BW_CHUNK * BW_CHUNK;
    passes = KVRT_MAX(passes, 1);
    kvrt_threadpool *pool = NULL;
    KVRT_TRY(kvrt_threadpool_create(NULL, n_threads, &pool, err));
    int64_t n_tasks = (int64_t)(bytes / BW_CHUNK);
    bw_job j = {0};
    j.words = bytes / sizeof(uint64_t);
    j.a = kvrt_alloc(NULL, bytes, 4096);
    j.b = kvrt_alloc(NULL, bytes, 4096);
    j.sink = kvrt_calloc(NULL, (size_t)n_tasks, sizeof(uint64_t));
    kvrt_status st = KVRT_OK;
    if (!j.a || !j.b || !j.sink) {
        st = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "bandwidth buffers: 2 x %zu bytes", bytes);
    } else {
        bw_pass(pool, &j, n_tasks, 0);
        double best_read = 1e30, best_copy = 1e30;
        for (int p = 0; p < passes; p++) {
            best_read = KVRT_MIN(best_read, bw_pass(pool, &j, n_tasks, 1));
            best_copy = KVRT_MIN(best_copy, bw_pass(pool, &j, n_tasks, 2));
        }
        out->read_gbs = (double)bytes / best_read * 1e-9;
        out->copy_gbs = 2.0 * (double)bytes / best_copy * 1e-9;
        out->bytes = bytes;
        out->n_threads = kvrt_threadpool_size(pool);
        out->passes = passes;
    }
    kvrt_free(NULL, j.a);
    kvrt_free(NULL, j.b);
    kvrt_free(NULL, j.sink);
    kvrt_threadpool_destroy(pool);
    return st;
}

/* ---- data ------------------------------------------------------------------- */

static uint64_t splitmix64(kvrt_bench_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float kvrt_bench_rng_f32(kvrt_bench_rng *r)
{
    /* 24 random bits -> [0, 1) exactly representable, then to [-1, 1) */
    return (float)(splitmix64(r) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

void kvrt_bench_rng_fill(kvrt_bench_rng *r, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = kvrt_bench_rng_f32(r);
}
