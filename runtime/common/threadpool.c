/* Fork-join thread pool: workers spin briefly after a job (decode issues many
 * small jobs back to back), then sleep on a condition variable. */
#include "common/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#define KVRT_SPIN_ITERS 20000

struct kvrt_threadpool {
    const kvrt_allocator *alloc;
    int n_threads;
    pthread_t *workers; /* [n_threads - 1] */
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    _Atomic uint64_t generation; /* bumped once per job */
    _Atomic int64_t next_task;
    _Atomic int64_t done_tasks;
    _Atomic int active_workers; /* workers still inside the current job */
    int64_t n_tasks;
    kvrt_task_fn fn;
    void *arg;
    _Atomic int quit;
};

typedef struct worker_start {
    kvrt_threadpool *pool;
    int index;
} worker_start;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_tasks(kvrt_threadpool *pool, int thread)
{
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&pool->next_task, 1, memory_order_relaxed);
        if (t >= pool->n_tasks)
            break;
        pool->fn(pool->arg, t, thread);
        atomic_fetch_add_explicit(&pool->done_tasks, 1, memory_order_release);
    }
}

static void *worker_main(void *p)
{
    kvrt_threadpool *pool = ((worker_start *)p)->pool;
    int index = ((worker_start *)p)->index;
    kvrt_free(pool->alloc, p);
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        for (int i = 0; gen == seen && i < KVRT_SPIN_ITERS; i++) {
            cpu_relax();
            gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool->mutex);
            while ((gen = atomic_load(&pool->generation)) == seen && !atomic_load(&pool->quit))
                pthread_cond_wait(&pool->wake, &pool->mutex);
            pthread_mutex_unlock(&pool->mutex);
        }
        if (atomic_load(&pool->quit))
            return NULL;
        seen = gen;
        run_tasks(pool, index);
        atomic_fetch_sub_explicit(&pool->active_workers, 1, memory_order_acq_rel);
    }
}

kvrt_status kvrt_threadpool_create(const kvrt_allocator *alloc, int n_threads,
                                   kvrt_threadpool **out, kvrt_error *err)
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 1024)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "n_threads %d is more than 1024", n_threads);
    kvrt_threadpool *pool = kvrt_calloc(alloc, 1, sizeof(*pool));
    if (!pool)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "thread pool: out of host memory");
    pool->alloc = alloc;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    if (n_threads > 1) {
        pool->workers = kvrt_calloc(alloc, (size_t)n_threads - 1, sizeof(pthread_t));
        if (!pool->workers) {
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
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->quit, 1);
    atomic_fetch_add(&pool->generation, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads; i++)
        pthread_join(pool->workers[i - 1], NULL);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->mutex);
    kvrt_free(pool->alloc, pool->workers);
    kvrt_free(pool->alloc, pool);
}

int kvrt_threadpool_size(const kvrt_threadpool *pool)
{
    return pool->n_threads;
}

void kvrt_threadpool_run(kvrt_threadpool *pool, int64_t n_tasks, kvrt_task_fn fn, void *arg)
{
    if (n_tasks <= 0)
        return;
    if (pool->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++)
            fn(arg, t, 0);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    pool->n_tasks = n_tasks;
    atomic_store_explicit(&pool->next_task, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->done_tasks, 0, memory_order_relaxed);
    atomic_store_explicit(&pool->active_workers, pool->n_threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    run_tasks(pool, 0);
    /* Wait until every worker has left the job, so the next job cannot race
     * with a worker still reading this one's fn/arg/n_tasks. */
    while (atomic_load_explicit(&pool->active_workers, memory_order_acquire) > 0)
        cpu_relax();
}

void kvrt_threadpool_run_sized(kvrt_threadpool *pool, int64_t n_tasks, int64_t work, kvrt_task_fn fn, void *arg)
{
    if (work >= KVRT_THREADPOOL_MIN_WORK) {
        kvrt_threadpool_run(pool, n_tasks, fn, arg);
        return;
    }
    for (int64_t t = 0; t < n_tasks; t++)
        fn(arg, t, 0);
}
