/* A small fork-join thread pool that never busy-waits for long.
 *
 * The calling thread takes part in the work, so a pool of n threads starts
 * n-1 workers. Tasks are claimed dynamically from an atomic counter, so
 * uneven tasks balance themselves. Both sides wait the same way: a short
 * bounded spin (decode issues many small jobs back to back), then a futex
 * sleep. A job's workers are seated: only as many as the job asked for take
 * part, and once the caller has run out of tasks it closes the job, so a
 * worker that wakes late (a loaded or oversubscribed machine) is not waited
 * for. Oversubscription therefore costs wake-ups, never a collapse. */
#ifndef KVRT_THREADPOOL_H
#define KVRT_THREADPOOL_H

#include "common/kvrt_internal.h"

typedef struct kvrt_threadpool kvrt_threadpool;

/* fn(arg, task, thread): thread is in [0, n_threads), unique among concurrently
 * running calls, so it may index per-thread scratch. The caller is thread 0. */
typedef void (*kvrt_task_fn)(void *arg, int64_t task, int thread);

/* The default thread count: the cores the process may run on (its affinity
 * mask, sched_getaffinity), hyper-threads of one core counted once; at least 1. */
int kvrt_threadpool_default_threads(void);

/* n_threads <= 0 means kvrt_threadpool_default_threads(). */
kvrt_status kvrt_threadpool_create(const kvrt_allocator *alloc, int n_threads,
                                   kvrt_threadpool **out, kvrt_error *err);
void kvrt_threadpool_destroy(kvrt_threadpool *pool);
int kvrt_threadpool_size(const kvrt_threadpool *pool);

/* Work (in multiply-adds or values touched, roughly) each thread of a job
 * must get before one more thread joins it. Waking a worker and waiting for
 * it costs microseconds (far more on a loaded machine), while a small model's
 * ops take about as long; below this the caller does the work alone. Measured
 * with `kvrt-bench threads` (the split table: the size at which two threads
 * beat one on a cached GEMV, with margin for a loaded machine; README). */
#define KVRT_THREADPOOL_MIN_WORK ((int64_t)1 << 16)

/* Runs fn for every task in [0, n_tasks) on as many threads as the pool may
 * run at once (see kvrt_threadpool_run_sized) and returns when all are done. For jobs known to be large (benchmarks);
 * ops use kvrt_threadpool_run_sized. Not reentrant: fn must not call
 * kvrt_threadpool_run on the same pool; one caller at a time per pool. */
void kvrt_threadpool_run(kvrt_threadpool *pool, int64_t n_tasks, kvrt_task_fn fn, void *arg);

/* kvrt_threadpool_run on at most min(pool size, cores, n_tasks, work /
 * KVRT_THREADPOOL_MIN_WORK) threads, `work` being the job's total; one thread
 * means a plain loop on the caller (as thread 0) and no worker is woken.
 * `cores` is kvrt_threadpool_default_threads() when the pool was created: a
 * pool larger than that (-t 64 on 2 cores) never runs more threads at once
 * than there are cores, and its other workers sleep. The split into tasks is
 * the caller's: results that depend only on it are the same for any thread
 * count. */
void kvrt_threadpool_run_sized(kvrt_threadpool *pool, int64_t n_tasks, int64_t work, kvrt_task_fn fn, void *arg);

/* Threads kvrt_threadpool_run_sized would use for such a job (>= 1). */
int kvrt_threadpool_threads_for(const kvrt_threadpool *pool, int64_t n_tasks, int64_t work);

/* Jobs so far that woke workers (the rest ran on the caller alone); for
 * tests of the size thresholds. Read it from the thread that runs jobs. */
uint64_t kvrt_threadpool_jobs_shared(const kvrt_threadpool *pool);

#endif /* KVRT_THREADPOOL_H */
