/* Fork-join thread pool with a bounded spin, then a futex sleep, on both
 * sides (threadpool.h).
 *
 * One job at a time:
 *   caller: writes fn/arg/n_tasks, opens the seat word for the new sequence
 *           number, publishes `seq` and wakes as many sleeping workers as the
 *           job has seats; runs tasks itself; closes the seats (no worker may
 *           join after that) and waits until every seated worker has left.
 *   worker: waits for `seq` to change; takes a seat if the job still has one
 *           open (same sequence, not closed, not full); runs tasks; leaves.
 * A worker that wakes after the caller closed the job finds no seat and goes
 * back to sleep, so the caller only ever waits for workers that hold work.
 * The job's fields stay valid until the last seated worker has left, because
 * the caller does not return before that. */
#include "common/threadpool.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* How long either side spins before it sleeps. Long enough to bridge the
 * serial gap between two ops of a decode step (a norm, a residual add: a few
 * microseconds), short enough that an oversubscribed core is given up quickly. */
#define SPIN_NS 30000
#define SPIN_CHECK_EVERY 32 /* pause instructions between clock reads */

/* Seat word: the job's sequence number in the high 32 bits, SEAT_CLOSED once
 * the caller has run out of tasks, and the seats taken in the low bits. */
#define SEAT_CLOSED ((uint64_t)1 << 31)
#define SEAT_COUNT(w) ((uint32_t)((w) & (SEAT_CLOSED - 1)))
#define SEAT_SEQ(w) ((uint32_t)((w) >> 32))

struct kvrt_threadpool {
    const kvrt_allocator *alloc;
    int n_threads;
    int max_active;     /* min(n_threads, cores the process may run on): threads per job at most */
    pthread_t *workers; /* [n_threads - 1] */
    /* the job: written by the caller before it publishes seq */
    kvrt_task_fn fn;
    void *arg;
    int64_t n_tasks;
    _Atomic uint32_t max_seats; /* read by workers that may be a job late */
    uint64_t jobs_shared;       /* the caller's count of jobs that woke workers */
    /* the fields each side polls, on their own cache lines */
    alignas(64) _Atomic uint32_t seq;   /* futex word of idle workers */
    _Atomic uint32_t sleepers;          /* workers asleep (or about to be) on seq */
    _Atomic int quit;
    alignas(64) _Atomic uint64_t seats;
    alignas(64) _Atomic int64_t next_task;
    alignas(64) _Atomic uint32_t departed; /* futex word of the caller: seated workers that left */
    _Atomic uint32_t caller_asleep;
};

typedef struct worker_start {
    kvrt_threadpool *pool;
    int index;
} worker_start;

/* ---- waiting ---------------------------------------------------------------------------- */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Sleeps while *word == expected (or until a spurious wake-up). */
static void futex_wait(_Atomic uint32_t *word, uint32_t expected)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word, int n)
{
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

/* Spins up to SPIN_NS while *word == value; returns the value last seen. */
static uint32_t spin_while_equal(_Atomic uint32_t *word, uint32_t value)
{
    int64_t deadline = 0;
    for (int i = 0;; i++) {
        uint32_t v = atomic_load_explicit(word, memory_order_acquire);
        if (v != value)
            return v;
        if (i % SPIN_CHECK_EVERY == 0) {
            int64_t t = now_ns();
            if (deadline == 0)
                deadline = t + SPIN_NS;
            else if (t >= deadline)
                return v;
        }
        cpu_relax();
    }
}

/* ---- the worker side ------------------------------------------------------------------------ */

static void run_tasks(kvrt_threadpool *pool, int thread)
{
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&pool->next_task, 1, memory_order_relaxed);
        if (t >= pool->n_tasks)
            return;
        pool->fn(pool->arg, t, thread);
    }
}

/* Waits for a job other than `seen`; returns its sequence number. */
static uint32_t wait_for_job(kvrt_threadpool *pool, uint32_t seen)
{
    uint32_t s = spin_while_equal(&pool->seq, seen);
    while (s == seen && !atomic_load(&pool->quit)) {
        /* announce the sleep before the last look, so a caller that publishes
         * after that look sees a sleeper and wakes us (both seq_cst) */
        atomic_fetch_add(&pool->sleepers, 1);
        if (atomic_load(&pool->seq) == seen && !atomic_load(&pool->quit))
            futex_wait(&pool->seq, seen);
        atomic_fetch_sub(&pool->sleepers, 1);
        s = atomic_load_explicit(&pool->seq, memory_order_acquire);
    }
    return s;
}

/* Takes a seat at job `s` if it still has one. */
static bool take_seat(kvrt_threadpool *pool, uint32_t s)
{
    uint64_t w = atomic_load_explicit(&pool->seats, memory_order_acquire);
    for (;;) {
        if (SEAT_SEQ(w) != s || (w & SEAT_CLOSED) || SEAT_COUNT(w) >= atomic_load_explicit(&pool->max_seats, memory_order_relaxed))
            return false;
        if (atomic_compare_exchange_weak_explicit(&pool->seats, &w, w + 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return true;
    }
}

static void leave_job(kvrt_threadpool *pool)
{
    atomic_fetch_add(&pool->departed, 1); /* seq_cst: ordered before the look at caller_asleep */
    if (atomic_load(&pool->caller_asleep))
        futex_wake(&pool->departed, 1);
}

static void *worker_main(void *p)
{
    kvrt_threadpool *pool = ((worker_start *)p)->pool;
    int index = ((worker_start *)p)->index;
    kvrt_free(pool->alloc, p);
    uint32_t seen = 0;
    for (;;) {
        seen = wait_for_job(pool, seen);
        if (atomic_load(&pool->quit))
            return NULL;
        /* a job already over (a late wake-up) has no seat left: the sequence
         * in the seat word no longer matches */
        if (!take_seat(pool, seen))
            continue;
        run_tasks(pool, index);
        leave_job(pool);
    }
}

/* ---- the caller side --------------------------------------------------------------------------- */

/* Closes the job to newcomers and waits until every seated worker has left. */
static void join_job(kvrt_threadpool *pool)
{
    uint64_t w = atomic_fetch_or_explicit(&pool->seats, SEAT_CLOSED, memory_order_acq_rel);
    const uint32_t seated = SEAT_COUNT(w);
    uint32_t d = atomic_load_explicit(&pool->departed, memory_order_acquire);
    while (d != seated) {
        d = spin_while_equal(&pool->departed, d);
        if (d == seated)
            break;
        atomic_store(&pool->caller_asleep, 1);
        d = atomic_load(&pool->departed);
        if (d != seated)
            futex_wait(&pool->departed, d);
        atomic_store(&pool->caller_asleep, 0);
        d = atomic_load_explicit(&pool->departed, memory_order_acquire);
    }
}

static void run_inline(int64_t n_tasks, kvrt_task_fn fn, void *arg)
{
    for (int64_t t = 0; t < n_tasks; t++)
        fn(arg, t, 0);
}

/* Runs a job on the caller and up to n_workers workers. */
static void run_job(kvrt_threadpool *pool, int64_t n_tasks, int n_workers, kvrt_task_fn fn, void *arg)
{
    pool->fn = fn;
    pool->arg = arg;
    pool->n_tasks = n_tasks;
    atomic_store_explicit(&pool->max_seats, (uint32_t)n_workers, memory_order_relaxed);
    pool->jobs_shared++;
    atomic_store_explicit(&pool->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->departed, 0, memory_order_relaxed);
    const uint32_t s = atomic_load_explicit(&pool->seq, memory_order_relaxed) + 1;
    atomic_store_explicit(&pool->seats, (uint64_t)s << 32, memory_order_relaxed);
    atomic_store(&pool->seq, s); /* seq_cst: publishes the job, ordered before the look at sleepers */
    uint32_t asleep = atomic_load(&pool->sleepers);
    if (asleep > 0)
        futex_wake(&pool->seq, (int)KVRT_MIN(asleep, (uint32_t)n_workers));
    run_tasks(pool, 0);
    join_job(pool);
}

int kvrt_threadpool_threads_for(const kvrt_threadpool *pool, int64_t n_tasks, int64_t work)
{
    int64_t n = KVRT_MIN((int64_t)pool->max_active, n_tasks);
    n = KVRT_MIN(n, work / KVRT_THREADPOOL_MIN_WORK);
    return n > 1 ? (int)n : 1;
}

void kvrt_threadpool_run(kvrt_threadpool *pool, int64_t n_tasks, kvrt_task_fn fn, void *arg)
{
    kvrt_threadpool_run_sized(pool, n_tasks, INT64_MAX, fn, arg);
}

void kvrt_threadpool_run_sized(kvrt_threadpool *pool, int64_t n_tasks, int64_t work, kvrt_task_fn fn, void *arg)
{
    if (n_tasks <= 0)
        return;
    int threads = kvrt_threadpool_threads_for(pool, n_tasks, work);
    if (threads == 1)
        run_inline(n_tasks, fn, arg);
    else
        run_job(pool, n_tasks, threads - 1, fn, arg);
}

/* ---- thread count ---------------------------------------------------------------------------------- */

/* The lowest CPU of a sysfs CPU list ("0-1,8-9") that is also in `set`;
 * -1 when the file cannot be read. */
static int lowest_in_set(const char *path, const cpu_set_t *set, size_t set_size)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int best = -1;
    long lo, hi;
    while (fscanf(f, "%ld", &lo) == 1) {
        hi = lo;
        int c = fgetc(f);
        if (c == '-' && fscanf(f, "%ld", &hi) == 1)
            c = fgetc(f);
        for (long cpu = lo; cpu <= hi && cpu < 65536; cpu++) {
            if (CPU_ISSET_S((size_t)cpu, set_size, set) && (best < 0 || cpu < best))
                best = (int)cpu;
        }
        if (c != ',')
            break;
    }
    fclose(f);
    return best;
}

/* Cores among the CPUs of `set`: a CPU counts unless a lower-numbered
 * hyper-thread of the same core is in the set too. 0 when the topology
 * cannot be read. */
static int count_cores(const cpu_set_t *set, size_t set_size, int max_cpu)
{
    int n = 0;
    for (int cpu = 0; cpu < max_cpu; cpu++) {
        if (!CPU_ISSET_S((size_t)cpu, set_size, set))
            continue;
        char path[96];
        snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list", cpu);
        int lowest = lowest_in_set(path, set, set_size);
        if (lowest < 0)
            return 0;
        n += lowest == cpu;
    }
    return n;
}

int kvrt_threadpool_default_threads(void)
{
    long conf = sysconf(_SC_NPROCESSORS_CONF);
    int max_cpu = conf > 0 ? (int)conf : 1;
    /* the kernel refuses a mask smaller than its own: grow until it fits */
    for (int cap = KVRT_MAX(max_cpu, 64); cap <= (1 << 16); cap *= 2) {
        cpu_set_t *set = CPU_ALLOC((size_t)cap);
        if (!set)
            break;
        size_t size = CPU_ALLOC_SIZE((size_t)cap);
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) != 0) {
            CPU_FREE(set);
            if (errno == EINVAL)
                continue;
            break;
        }
        int cpus = CPU_COUNT_S(size, set);
        int cores = count_cores(set, size, cap);
        CPU_FREE(set);
        int n = cores > 0 ? KVRT_MIN(cores, cpus) : cpus;
        return KVRT_MAX(n, 1);
    }
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

/* ---- create / destroy ------------------------------------------------------------------------------- */

kvrt_status kvrt_threadpool_create(const kvrt_allocator *alloc, int n_threads,
                                   kvrt_threadpool **out, kvrt_error *err)
{
    *out = NULL;
    if (n_threads <= 0)
        n_threads = kvrt_threadpool_default_threads();
    if (n_threads > 1024)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "n_threads %d is more than 1024", n_threads);
    kvrt_threadpool *pool = kvrt_alloc(alloc, sizeof(*pool), alignof(kvrt_threadpool));
    if (!pool)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "thread pool: out of host memory");
    memset(pool, 0, sizeof(*pool));
    pool->alloc = alloc;
    pool->n_threads = n_threads;
    /* more threads than cores cannot run at once: a job wakes at most one per
     * core, and the others sleep (their spinning would only steal the cores) */
    pool->max_active = KVRT_MIN(n_threads, kvrt_threadpool_default_threads());
    if (n_threads > 1) {
        pool->workers = kvrt_calloc(alloc, (size_t)n_threads - 1, sizeof(pthread_t));
        if (!pool->workers) {
            pool->n_threads = 1;
            kvrt_threadpool_destroy(pool);
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "thread pool: out of host memory");
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker_start *ws = kvrt_alloc(alloc, sizeof(*ws), 0);
        if (ws) {
            ws->pool = pool;
            ws->index = i;
        }
        if (!ws || pthread_create(&pool->workers[i - 1], NULL, worker_main, ws) != 0) {
            kvrt_free(alloc, ws);
            pool->n_threads = i; /* only workers [1, i) exist */
            kvrt_threadpool_destroy(pool);
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "thread pool: cannot start thread %d", i);
        }
    }
    *out = pool;
    return KVRT_OK;
}

void kvrt_threadpool_destroy(kvrt_threadpool *pool)
{
    if (!pool)
        return;
    atomic_store(&pool->quit, 1);
    atomic_fetch_add(&pool->seq, 1);
    futex_wake(&pool->seq, INT32_MAX);
    for (int i = 1; i < pool->n_threads; i++)
        pthread_join(pool->workers[i - 1], NULL);
    kvrt_free(pool->alloc, pool->workers);
    kvrt_free(pool->alloc, pool);
}

int kvrt_threadpool_size(const kvrt_threadpool *pool)
{
    return pool->n_threads;
}

uint64_t kvrt_threadpool_jobs_shared(const kvrt_threadpool *pool)
{
    return pool->jobs_shared;
}
