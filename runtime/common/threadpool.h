/* A small fork-join thread pool. The calling thread takes part in the work,
 * so a pool of n threads starts n-1 workers. Tasks are claimed dynamically from
 * an atomic counter, so uneven tasks balance themselves. */
#ifndef KVRT_THREADPOOL_H
#define KVRT_THREADPOOL_H

#include "common/kvrt_internal.h"

typedef struct kvrt_threadpool kvrt_threadpool;

/* fn(arg, task, thread): thread is in [0, n_threads), unique among concurrently
 * running calls, so it may index per-thread scratch. */
typedef void (*kvrt_task_fn)(void *arg, int64_t task, int thread);

/* n_threads <= 0 means the number of online cores. */
kvrt_status kvrt_threadpool_create(const kvrt_allocator *alloc, int n_threads,
                                   kvrt_threadpool **out, kvrt_error *err);
void kvrt_threadpool_destroy(kvrt_threadpool *pool);
int kvrt_threadpool_size(const kvrt_threadpool *pool);

/* Runs fn for every task in [0, n_tasks) and returns when all are done.
 * Not reentrant: fn must not call kvrt_threadpool_run on the same pool. */
void kvrt_threadpool_run(kvrt_threadpool *pool, int64_t n_tasks, kvrt_task_fn fn, void *arg);

/* Work (in multiply-adds or bytes touched, roughly) below which a job runs
 * on the calling thread: waking a worker costs microseconds, and far more on
 * a loaded machine, while a tiny model's ops take less. */
#define KVRT_THREADPOOL_MIN_WORK ((int64_t)1 << 16)

/* kvrt_threadpool_run, or a plain loop on the calling thread (as thread 0)
 * when `work` is below KVRT_THREADPOOL_MIN_WORK. */
void kvrt_threadpool_run_sized(kvrt_threadpool *pool, int64_t n_tasks, int64_t work, kvrt_task_fn fn, void *arg);

#endif /* KVRT_THREADPOOL_H */
