/* The thread pool (runtime/common/threadpool.c):
 *
 *  - every task runs exactly once, and two tasks running at the same time
 *    never share a thread index, for pools from 1 thread to far more threads
 *    than cores (oversubscribed), over thousands of jobs of every size;
 *  - results are bitwise the same for any thread count;
 *  - a job below the size threshold runs on the calling thread alone;
 *  - idle workers sleep: an idle pool uses (almost) no CPU time, measured
 *    with getrusage, and its threads are in the sleeping state;
 *  - a caller waiting for a slow worker sleeps too (its own CPU time);
 *  - the default thread count follows the process's affinity mask.
 * No assertion depends on how fast anything runs. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/threadpool.h"

enum { MAX_TASKS = 257, MAX_POOL = 65 };

static int online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static kvrt_threadpool *make_pool(int n)
{
    kvrt_threadpool *pool = NULL;
    assert_int_equal(kvrt_threadpool_create(NULL, n, &pool, NULL), KVRT_OK);
    assert_int_equal(kvrt_threadpool_size(pool), n);
    return pool;
}

/* ---- every task once, thread indices exclusive -------------------------------------------- */

typedef struct count_job {
    _Atomic int runs[MAX_TASKS];
    _Atomic int busy[MAX_POOL];     /* per thread index: a task is running on it */
    _Atomic int clashes;            /* a task started on an index already busy */
    _Atomic int bad_index;
    int n_threads;
    float out[MAX_TASKS];
} count_job;

static void count_task(void *arg, int64_t task, int thread)
{
    count_job *j = arg;
    if (thread < 0 || thread >= j->n_threads) {
        atomic_fetch_add(&j->bad_index, 1);
        return;
    }
    if (atomic_exchange(&j->busy[thread], 1) != 0)
        atomic_fetch_add(&j->clashes, 1);
    atomic_fetch_add(&j->runs[task], 1);
    /* a little float work whose bits depend on the task alone */
    float s = 0.0f;
    for (int i = 1; i <= 200 + (int)(task % 7) * 50; i++)
        s += 1.0f / ((float)i + (float)task);
    j->out[task] = s;
    atomic_store(&j->busy[thread], 0);
}

static void run_jobs(int n_threads, float *first_out)
{
    kvrt_threadpool *pool = make_pool(n_threads);
    static count_job j;
    for (int job = 0; job < 600; job++) {
        int64_t n_tasks = 1 + (job * 37) % (MAX_TASKS - 1);
        memset(&j, 0, sizeof(j));
        j.n_threads = n_threads;
        if (job % 3 == 0)
            kvrt_threadpool_run(pool, n_tasks, count_task, &j);
        else /* every size class: inline, a few threads, all */
            kvrt_threadpool_run_sized(pool, n_tasks, (int64_t)(job % 5) * KVRT_THREADPOOL_MIN_WORK, count_task, &j);
        for (int64_t t = 0; t < n_tasks; t++)
            if (atomic_load(&j.runs[t]) != 1)
                fail_msg("%d threads, job %d: task %lld ran %d times", n_threads, job, (long long)t,
                         atomic_load(&j.runs[t]));
        assert_int_equal(atomic_load(&j.clashes), 0);
        assert_int_equal(atomic_load(&j.bad_index), 0);
        if (job == 599)
            memcpy(first_out, j.out, sizeof(j.out));
    }
    kvrt_threadpool_destroy(pool);
}

static void test_every_task_once_any_pool_size(void **state)
{
    (void)state;
    const int oversubscribed = KVRT_MIN(4 * online_cpus() + 1, MAX_POOL - 1);
    const int sizes[] = {1, 2, 3, 8, oversubscribed, MAX_POOL - 1};
    float ref[MAX_TASKS], out[MAX_TASKS];
    run_jobs(1, ref);
    for (size_t i = 1; i < KVRT_ARRAY_LEN(sizes); i++) {
        run_jobs(sizes[i], out);
        assert_memory_equal(out, ref, sizeof(ref)); /* the same bits whatever the thread count */
    }
}

/* ---- small work stays on the caller -------------------------------------------------------- */

typedef struct caller_job {
    pthread_t caller;
    _Atomic int elsewhere; /* tasks that ran off the calling thread or not as thread 0 */
} caller_job;

static void caller_task(void *arg, int64_t task, int thread)
{
    caller_job *j = arg;
    if (thread != 0 || !pthread_equal(pthread_self(), j->caller))
        atomic_fetch_add(&j->elsewhere, 1);
}

static void test_small_work_stays_on_caller(void **state)
{
    (void)state;
    kvrt_threadpool *pool = make_pool(4);
    caller_job j = {pthread_self(), 0};
    const int cores = kvrt_threadpool_default_threads(), at_once = KVRT_MIN(4, cores);
    assert_int_equal(kvrt_threadpool_threads_for(pool, 64, KVRT_THREADPOOL_MIN_WORK - 1), 1);
    assert_int_equal(kvrt_threadpool_threads_for(pool, 64, 2 * KVRT_THREADPOOL_MIN_WORK), KVRT_MIN(2, cores));
    assert_int_equal(kvrt_threadpool_threads_for(pool, 64, INT64_MAX), at_once); /* never more than the cores */
    assert_int_equal(kvrt_threadpool_threads_for(pool, 3, INT64_MAX), KVRT_MIN(3, cores));
    assert_int_equal(kvrt_threadpool_threads_for(pool, 1, INT64_MAX), 1);
    for (int i = 0; i < 200; i++)
        kvrt_threadpool_run_sized(pool, 64, 2 * KVRT_THREADPOOL_MIN_WORK - 1, caller_task, &j);
    assert_int_equal(atomic_load(&j.elsewhere), 0);
    assert_int_equal(kvrt_threadpool_jobs_shared(pool), 0);
    kvrt_threadpool_run_sized(pool, 64, 2 * KVRT_THREADPOOL_MIN_WORK, caller_task, &j);
    assert_int_equal(kvrt_threadpool_jobs_shared(pool), cores > 1 ? 1 : 0);
    kvrt_threadpool_destroy(pool);
}

/* ---- idle workers sleep ----------------------------------------------------------------------- */

static double rusage_s(int who)
{
    struct rusage ru;
    assert_int_equal(getrusage(who, &ru), 0);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + 1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* CPU seconds of every thread of the process but the calling one. */
static double others_cpu_s(void)
{
    return rusage_s(RUSAGE_SELF) - rusage_s(RUSAGE_THREAD);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void spin_task(void *arg, int64_t task, int thread)
{
    volatile float s = 0.0f;
    for (int i = 0; i < 20000; i++)
        s += (float)i;
}

/* Threads of this process (other than the caller) in state R (running or runnable). */
static int running_threads(void)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    pid_t self = (pid_t)syscall(SYS_gettid);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == self)
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[len] = '\0';
        const char *paren = strrchr(buf, ')'); /* "tid (name) S ..." */
        n += paren && paren[1] == ' ' && paren[2] == 'R';
    }
    closedir(d);
    return n;
}

static void test_idle_pool_sleeps(void **state)
{
    (void)state;
    const int n = KVRT_MAX(4, online_cpus() + 2); /* oversubscribed, as a spinning pool is at its worst */
    kvrt_threadpool *pool = make_pool(n);
    for (int i = 0; i < 50; i++)
        kvrt_threadpool_run(pool, 4 * n, spin_task, NULL); /* wakes every worker */
    sleep_ms(20);                                       /* past the bounded spin */
    double before = others_cpu_s();
    sleep_ms(300);
    double used = others_cpu_s() - before;
    /* n - 1 spinning workers would use up to (n - 1) x 0.3 s; sleeping ones nothing */
    if (used > 0.03)
        fail_msg("%d idle workers used %.3f s of CPU in 0.3 s", n - 1, used);
    assert_int_equal(running_threads(), 0);
    kvrt_threadpool_destroy(pool);
}

/* The caller runs out of tasks while a worker holds a long one: it must
 * sleep, not spin, until the worker is done. */
typedef struct slow_job {
    _Atomic int worker_started;
    bool shared; /* the job is run on two threads (a second core exists) */
} slow_job;

static void slow_task(void *arg, int64_t task, int thread)
{
    slow_job *j = arg;
    if (thread != 0) {
        atomic_store(&j->worker_started, 1);
        sleep_ms(500);
        return;
    }
    for (int i = 0; j->shared && i < 5000 && !atomic_load(&j->worker_started); i++) /* up to 5 s */
        sleep_ms(1);
}

static void test_waiting_caller_sleeps(void **state)
{
    (void)state;
    kvrt_threadpool *pool = make_pool(2);
    slow_job j = {0, kvrt_threadpool_threads_for(pool, 2, INT64_MAX) == 2};
    double before = rusage_s(RUSAGE_THREAD);
    kvrt_threadpool_run(pool, 2, slow_task, &j);
    double used = rusage_s(RUSAGE_THREAD) - before;
    /* one core: both tasks ran on the caller, and no worker ever started */
    assert_int_equal(atomic_load(&j.worker_started), j.shared ? 1 : 0);
    /* a spinning caller burns the whole wait (still over 0.05 s at 10 runnable threads per core) */
    if (used > 0.02)
        fail_msg("the caller used %.3f s of CPU waiting 0.5 s for a worker", used);
    kvrt_threadpool_destroy(pool);
}

/* ---- default thread count ------------------------------------------------------------------------- */

static void test_default_threads_follow_affinity(void **state)
{
    (void)state;
    cpu_set_t all, one;
    assert_int_equal(sched_getaffinity(0, sizeof(all), &all), 0);
    int n = kvrt_threadpool_default_threads();
    assert_true(n >= 1 && n <= CPU_COUNT(&all));
    int first = 0;
    while (!CPU_ISSET(first, &all))
        first++;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    assert_int_equal(sched_setaffinity(0, sizeof(one), &one), 0);
    int pinned = kvrt_threadpool_default_threads();
    kvrt_threadpool *pool = NULL;
    kvrt_status st = kvrt_threadpool_create(NULL, 0, &pool, NULL);
    assert_int_equal(sched_setaffinity(0, sizeof(all), &all), 0); /* restore before asserting */
    assert_int_equal(pinned, 1);
    assert_int_equal(st, KVRT_OK);
    assert_int_equal(kvrt_threadpool_size(pool), 1);
    kvrt_threadpool_destroy(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_task_once_any_pool_size),
        cmocka_unit_test(test_small_work_stays_on_caller),
        cmocka_unit_test(test_idle_pool_sleeps),
        cmocka_unit_test(test_waiting_caller_sleeps),
        cmocka_unit_test(test_default_threads_follow_affinity),
    };
    return cmocka_run_group_tests_name("threadpool", tests, NULL, NULL);
}
