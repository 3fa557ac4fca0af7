/*
 * kvrt-bench threads: does decode hold up whatever the thread setting?
 *
 * Decode tokens/s of each model file at -t 1, -t cores (the default), -t 4 x
 * cores, and -t cores beside a competing busy process the bench spawns (one
 * single-threaded spin loop per --busy). Settings are measured round-robin,
 * --reps rounds, and the median of each is reported with its ratio to -t 1
 * of the same run: a shared machine drifts, and a ratio within one run is
 * what can be compared. Criteria (reported, never asserted): every setting at
 * least 0.8x of -t 1, and the default within 10 % of the best setting.
 *
 * A second table finds where splitting work pays: a GEMV-like job over a
 * matrix that stays in cache (rows of F32 dot products), run on the calling
 * thread alone against the pool on every core, for growing sizes. The
 * library keeps work below KVRT_THREADPOOL_MIN_WORK per thread on the caller;
 * this table is the measurement behind that number.
 */
#include "bench_threads.h"

#include "bench.h"
#include "cli.h"
#include "json.h"
#include "table.h"

#include "common/threadpool.h"

#include "kvrt.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

static const char *const PROG = "kvrt-bench threads";

#define MAX_MODELS 8
#define MAX_SETTINGS 12
#define MAX_REPS 101
#define MIN_RATIO 0.8          /* of -t 1, for every setting */
#define DEFAULT_VS_BEST 0.9    /* the default's share of the best setting */

typedef struct threads_opts {
    kvrt_cli_common common;      /* --backend (cpu only) -t --kv-type --block-size -v ... */
    const char *models[MAX_MODELS]; /* owned copies */
    int n_models;
    int32_t extra[MAX_SETTINGS]; /* -t LIST: more thread counts (> 0) */
    int n_extra;
    int32_t cores;               /* 0 = kvrt's default thread count */
    int32_t prompt_len, gen, reps, busy, min_ms;
    bool json, quick, split, decode;
} threads_opts;

/* One row: a thread count, with or without the busy processes. */
typedef struct setting {
    char label[32];
    int32_t threads;             /* 0 = the library's default */
    bool busy;
    bool is_default;
    double tok_s[MAX_REPS];      /* per round */
    double cpu_us[MAX_REPS];     /* process CPU time per decoded token, per round */
    double median, cpu_median;
} setting;

typedef struct model_rows {
    const char *path;
    kvrt_model_info info;
    setting s[MAX_SETTINGS];
    int n;
} model_rows;

typedef struct split_row {
    int64_t work;                /* multiply-adds of the whole job */
    double inline_us, pool_us;   /* medians */
} split_row;

#define MAX_SPLIT 16

typedef struct threads_run {
    threads_opts o;
    int cores;
    model_rows models[MAX_MODELS];
    split_row split[MAX_SPLIT];
    int n_split;
    double load_before[3], load_after[3];
} threads_run;

/* ---- arguments ------------------------------------------------------------------------- */

/* -m FILE[,FILE...], given once or more. */
static bool parse_models(const char *prog, const char *flag, const char *value, void *dst)
{
    threads_opts *o = dst;
    for (const char *p = value;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0 || o->n_models == MAX_MODELS) {
            kvrt_cli_error(prog, "%s: bad list '%s' (at most %d files, comma-separated)", flag, value, MAX_MODELS);
            return false;
        }
        o->models[o->n_models] = strndup(p, len);
        if (!o->models[o->n_models]) {
            kvrt_cli_error(prog, "out of memory");
            return false;
        }
        o->n_models++;
        if (!comma)
            return true;
        p = comma + 1;
    }
}

static void free_opts(threads_opts *o)
{
    for (int i = 0; i < o->n_models; i++)
        free((char *)o->models[i]);
    o->n_models = 0;
}

/* The common flags: the CPU backend only (the pool is what is measured); -t
 * counts are extra rows (0, the default, is one already); the KV type and
 * block size go to the sessions. */
static int apply_common(threads_opts *o)
{
    const kvrt_cli_common *c = &o->common;
    if (c->backend != KVRT_BACKEND_CPU) {
        kvrt_cli_error(PROG, "--backend %s: this benchmark measures the CPU backend's thread pool",
                       kvrt_backend_name(c->backend));
        return KVRT_CLI_USAGE;
    }
    for (int i = 0; i < c->n_threads; i++)
        if (c->threads[i] > 0)
            o->extra[o->n_extra++] = c->threads[i];
    return KVRT_CLI_CONTINUE;
}

#define INT_OPT(NAME, DST, SEEN, MIN, MAX, HELP)                                                          \
    {.name = (NAME), .kind = KVRT_CLI_KIND_INT32, .dst = (DST), .min = (MIN), .max = (MAX), .meta = "N",  \
     .help = (HELP), .seen = (SEEN)}

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, threads_opts *o)
{
    memset(o, 0, sizeof(*o));
    kvrt_cli_common_init(&o->common, KVRT_DTYPE_F32, MAX_SETTINGS - 4); /* the sessions' default KV type */
    o->common.backend = KVRT_BACKEND_CPU;
    o->prompt_len = 16;
    o->gen = 64;
    o->reps = 5;
    o->busy = 1;
    o->min_ms = 500;
    bool no_split = false, split_only = false, reps_given = false, gen_given = false, min_given = false;
    char cores_help[128];
    snprintf(cores_help, sizeof(cores_help), "what \"cores\" means (default: kvrt's default thread count, %d here)",
             kvrt_threadpool_default_threads());
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_CALL('m', "model", parse_models, o, "LIST",
                      "GGUF / llama2.c files (e.g. models/stories260K.gguf and a\n"
                      "`kvrt-synth --preset 110m` file)"),
        INT_OPT("cores", &o->cores, NULL, 1, 256, cores_help),
        INT_OPT("busy", &o->busy, NULL, 0, 64, "busy processes beside the \"+ busy\" row (default 1)"),
        INT_OPT("prompt-len", &o->prompt_len, NULL, 1, 4096, "tokens before the measured decode (default 16)"),
        INT_OPT("gen", &o->gen, &gen_given, 1, 4096, "decode tokens per pass (default 64)"),
        INT_OPT("min-ms", &o->min_ms, &min_given, 0, 60000,
                "passes per measurement until decode took N ms (default 500)"),
        INT_OPT("reps", &o->reps, &reps_given, 1, MAX_REPS, "rounds over all settings; medians reported (default 5)"),
        KVRT_CLI_BOOL(0, "no-split", &no_split, "skip the split table"),
        KVRT_CLI_BOOL(0, "split-only", &split_only, "only the split table (no -m needed)"),
        KVRT_CLI_BOOL(0, "quick", &o->quick, "few tokens and rounds (seconds; for tests)"),
        KVRT_CLI_BOOL(0, "json", &o->json, "one JSON document on stdout; the tables go to stderr"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-bench threads -m FILE[,FILE...] [-t LIST] [--cores N] [--busy N] [--reps N] [--json]\n"
                 "       kvrt-bench threads --split-only",
        .about = "Decode tokens/s at -t 1, -t cores (the default), -t 4 x cores, and -t cores beside a\n"
                 "busy process the bench spawns; medians of --reps rounds measured round-robin, each as\n"
                 "a ratio to -t 1 of the same run. Then the split table: a cached GEMV-like job on the\n"
                 "calling thread alone vs the pool on every core, by size (where splitting pays).\n"
                 "-t LIST adds thread counts; the backend is the CPU (the pool is what is measured).",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
        .common = &o->common,
    };
    int first;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first);
    if (rc == KVRT_CLI_CONTINUE && !kvrt_cli_common_resolve(PROG, &o->common))
        rc = KVRT_CLI_USAGE;
    if (rc == KVRT_CLI_CONTINUE)
        rc = apply_common(o);
    o->split = !no_split;
    o->decode = !split_only;
    if (rc == KVRT_CLI_CONTINUE && o->decode && o->n_models == 0) {
        kvrt_cli_error(PROG, "-m FILE is needed (or --split-only)");
        rc = KVRT_CLI_USAGE;
    }
    if (o->quick) {
        o->reps = reps_given ? o->reps : 2;
        o->gen = gen_given ? o->gen : 8;
        o->min_ms = min_given ? o->min_ms : 20;
    }
    if (rc != KVRT_CLI_CONTINUE)
        free_opts(o);
    return rc;
}

/* ---- the busy process ------------------------------------------------------------------------ */

/* A child that spins until killed (and dies with the bench). */
static pid_t spawn_busy(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        volatile uint64_t x = 0;
        for (;;)
            x++;
    }
    return pid;
}

static void stop_busy(pid_t *pids, int n)
{
    for (int i = 0; i < n; i++) {
        if (pids[i] > 0) {
            kill(pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
        }
    }
}

/* ---- decode -------------------------------------------------------------------------------------- */

static int32_t argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        best = x[i] > x[best] ? i : best;
    return best;
}

/* A prompt of ids spread over the vocabulary (BOS first), then `gen` greedy
 * steps, again until the decode steps add up to --min-ms: decode tokens/s,
 * and the CPU time all of kvrt's threads spent per decoded token (what a
 * spinning pool wastes shows there, whatever the machine's load). */
static kvrt_status time_decode(kvrt_session *s, const kvrt_model_info *info, const threads_opts *o,
                               float *logits, double *tok_s, double *cpu_us, kvrt_error *err)
{
    int32_t toks[4096];
    for (int32_t i = 0; i < o->prompt_len; i++)
        toks[i] = (int32_t)((7919u * (uint32_t)i + 13u) % (uint32_t)info->n_vocab);
    if (info->bos_id >= 0)
        toks[0] = info->bos_id;
    double spent = 0.0, cpu = 0.0;
    int64_t steps = 0;
    kvrt_status st = KVRT_OK;
    while (st == KVRT_OK && (steps == 0 || spent * 1e3 < o->min_ms)) {
        kvrt_session_reset(s);
        st = kvrt_session_eval(s, toks, o->prompt_len, logits, NULL);
        double c0 = kvrt_bench_process_cpu_s(), t0 = kvrt_bench_now();
        for (int32_t g = 0; st == KVRT_OK && g < o->gen; g++) {
            int32_t tok = argmax(logits, info->n_vocab);
            st = kvrt_session_eval(s, &tok, 1, logits, NULL);
        }
        spent += kvrt_bench_now() - t0;
        cpu += kvrt_bench_process_cpu_s() - c0;
        steps += o->gen;
    }
    if (st != KVRT_OK)
        return kvrt_fail(err, st, "decode: %s", kvrt_session_message(s));
    *tok_s = (double)steps / spent;
    *cpu_us = cpu / (double)steps * 1e6;
    return KVRT_OK;
}

static void add_setting(model_rows *m, const char *label, int32_t threads, bool busy, bool is_default)
{
    setting *s = &m->s[m->n++];
    memset(s, 0, sizeof(*s));
    snprintf(s->label, sizeof(s->label), "%s", label);
    s->threads = threads;
    s->busy = busy;
    s->is_default = is_default;
}

static void plan_settings(const threads_run *run, model_rows *m)
{
    char label[32];
    m->n = 0;
    add_setting(m, "-t 1", 1, false, false);
    /* "cores" is the library's default (-t 0) unless --cores says otherwise */
    snprintf(label, sizeof(label), "-t %d (cores%s)", run->cores, run->o.cores ? "" : ", default");
    add_setting(m, label, run->o.cores ? run->cores : 0, false, !run->o.cores);
    snprintf(label, sizeof(label), "-t %d (4 x cores)", 4 * run->cores);
    add_setting(m, label, 4 * run->cores, false, false);
    snprintf(label, sizeof(label), "-t %d + %d busy", run->cores, run->o.busy);
    add_setting(m, label, run->o.cores ? run->cores : 0, true, false);
    for (int i = 0; i < run->o.n_extra; i++) {
        snprintf(label, sizeof(label), "-t %d", (int)run->o.extra[i]);
        add_setting(m, label, run->o.extra[i], false, false);
    }
}

typedef struct setting_ctx {
    kvrt_context *ctx;
    kvrt_model *model;
    kvrt_session *session;
} setting_ctx;

static void close_setting(setting_ctx *c)
{
    kvrt_session_destroy(c->session);
    kvrt_model_destroy(c->model);
    kvrt_context_destroy(c->ctx);
    memset(c, 0, sizeof(*c));
}

static kvrt_status open_setting(const char *path, const threads_opts *o, int32_t threads, setting_ctx *c,
                                kvrt_error *err)
{
    memset(c, 0, sizeof(*c));
    kvrt_context_params cp = kvrt_context_default_params();
    kvrt_cli_common_context_params(&o->common, &cp);
    cp.n_threads = threads;
    KVRT_TRY(kvrt_context_create(&cp, &c->ctx, err));
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    mp.max_context = o->prompt_len + o->gen;
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = o->prompt_len + o->gen;
    sp.kv_type = o->common.kv_type;
    sp.kv_type_v_set = 1;
    sp.kv_type_v = o->common.kv_type_v;
    sp.block_size = o->common.block_size;
    kvrt_status st = kvrt_model_load(c->ctx, &mp, &c->model, err);
    if (st == KVRT_OK)
        st = kvrt_session_create(c->model, &sp, &c->session, err);
    if (st != KVRT_OK)
        close_setting(c);
    return st;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(const double *v, int n)
{
    double tmp[MAX_REPS];
    memcpy(tmp, v, (size_t)n * sizeof(double));
    qsort(tmp, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? tmp[n / 2] : 0.5 * (tmp[n / 2 - 1] + tmp[n / 2]);
}

/* One round: every setting once, in order (the busy processes only around theirs). */
static kvrt_status run_round(const threads_run *run, model_rows *m, setting_ctx *ctxs, float *logits, int rep,
                             kvrt_error *err)
{
    for (int i = 0; i < m->n; i++) {
        setting *s = &m->s[i];
        pid_t busy[64] = {0};
        for (int b = 0; s->busy && b < run->o.busy; b++)
            busy[b] = spawn_busy();
        kvrt_status st =
            time_decode(ctxs[i].session, &m->info, &run->o, logits, &s->tok_s[rep], &s->cpu_us[rep], err);
        stop_busy(busy, s->busy ? run->o.busy : 0);
        KVRT_TRY(st);
    }
    return KVRT_OK;
}

static kvrt_status bench_model_file(threads_run *run, model_rows *m, kvrt_error *err)
{
    setting_ctx ctxs[MAX_SETTINGS];
    memset(ctxs, 0, sizeof(ctxs));
    plan_settings(run, m);
    kvrt_status st = KVRT_OK;
    for (int i = 0; st == KVRT_OK && i < m->n; i++)
        st = open_setting(m->path, &run->o, m->s[i].threads, &ctxs[i], err);
    if (st == KVRT_OK)
        st = kvrt_model_get_info(ctxs[0].model, &m->info);
    float *logits = st == KVRT_OK ? malloc((size_t)m->info.n_vocab * sizeof(float)) : NULL;
    if (st == KVRT_OK && !logits)
        st = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "logits");
    fprintf(stderr, "%s: %s: %d settings x %d rounds of >= %d ms of decode\n", PROG, m->path, m->n,
            (int)run->o.reps, (int)run->o.min_ms);
    if (st == KVRT_OK) { /* warm-up: faults the weights in */
        double ignored[2];
        st = time_decode(ctxs[0].session, &m->info, &run->o, logits, &ignored[0], &ignored[1], err);
    }
    for (int rep = 0; st == KVRT_OK && rep < run->o.reps; rep++)
        st = run_round(run, m, ctxs, logits, rep, err);
    for (int i = 0; i < m->n; i++) {
        m->s[i].median = median(m->s[i].tok_s, run->o.reps);
        m->s[i].cpu_median = median(m->s[i].cpu_us, run->o.reps);
        close_setting(&ctxs[i]);
    }
    free(logits);
    return st;
}

/* ---- the split table ------------------------------------------------------------------------------- */

enum { SPLIT_COLS = 256, SPLIT_MAX_ROWS = 8192 };

typedef struct split_job {
    const float *w; /* [rows][SPLIT_COLS] */
    const float *x; /* [SPLIT_COLS] */
    float *y;       /* [rows] */
    int64_t rows, rows_per_task;
} split_job;

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    for (int i = 0; i < SPLIT_COLS; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float t[8];
    _mm256_storeu_ps(t, _mm256_add_ps(s0, s1));
    return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

static float dot_c(const float *a, const float *b)
{
    float s[4] = {0};
    for (int i = 0; i < SPLIT_COLS; i += 4)
        for (int k = 0; k < 4; k++)
            s[k] += a[i + k] * b[i + k];
    return s[0] + s[1] + s[2] + s[3];
}

static bool g_avx2; /* set once before any job */

static void split_task(void *arg, int64_t task, int thread)
{
    const split_job *j = arg;
    int64_t r0 = task * j->rows_per_task, r1 = KVRT_MIN(r0 + j->rows_per_task, j->rows);
    for (int64_t r = r0; r < r1; r++) {
#if defined(__x86_64__) && defined(__GNUC__)
        if (g_avx2) {
            j->y[r] = dot_avx2(j->w + r * SPLIT_COLS, j->x);
            continue;
        }
#endif
        j->y[r] = dot_c(j->w + r * SPLIT_COLS, j->x);
    }
}

/* Median microseconds of one job, inline and on the pool, calls alternating. */
static void time_split(kvrt_threadpool *pool, split_job *j, int n_calls, split_row *row)
{
    double a[MAX_REPS], b[MAX_REPS];
    int64_t n_tasks = KVRT_MIN(j->rows, 4 * (int64_t)kvrt_threadpool_size(pool));
    j->rows_per_task = (j->rows + n_tasks - 1) / n_tasks;
    n_tasks = (j->rows + j->rows_per_task - 1) / j->rows_per_task;
    n_calls = KVRT_MIN(n_calls, MAX_REPS);
    /* each sample is a batch of calls, so the clock's resolution does not matter */
    int batch = (int)KVRT_MAX(1, 200000 / (j->rows * SPLIT_COLS));
    for (int c = 0; c < n_calls; c++) {
        double t0 = kvrt_bench_now();
        for (int k = 0; k < batch; k++)
            for (int64_t t = 0; t < n_tasks; t++)
                split_task(j, t, 0);
        double t1 = kvrt_bench_now();
        for (int k = 0; k < batch; k++)
            kvrt_threadpool_run(pool, n_tasks, split_task, j);
        double t2 = kvrt_bench_now();
        a[c] = (t1 - t0) / batch * 1e6;
        b[c] = (t2 - t1) / batch * 1e6;
    }
    row->work = j->rows * SPLIT_COLS;
    row->inline_us = median(a, n_calls);
    row->pool_us = median(b, n_calls);
}

static kvrt_status bench_split(threads_run *run, kvrt_error *err)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    g_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    kvrt_threadpool *pool = NULL;
    KVRT_TRY(kvrt_threadpool_create(NULL, run->cores, &pool, err));
    split_job j = {0};
    float *w = malloc(sizeof(float) * SPLIT_MAX_ROWS * SPLIT_COLS), *x = malloc(sizeof(float) * SPLIT_COLS),
          *y = malloc(sizeof(float) * SPLIT_MAX_ROWS);
    kvrt_status st = KVRT_OK;
    if (!w || !x || !y) {
        st = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "split table buffers");
    } else {
        kvrt_bench_rng rng = {7};
        kvrt_bench_rng_fill(&rng, w, (size_t)SPLIT_MAX_ROWS * SPLIT_COLS);
        kvrt_bench_rng_fill(&rng, x, SPLIT_COLS);
        j.w = w, j.x = x, j.y = y;
        fprintf(stderr, "%s: split table on %d thread(s)\n", PROG, run->cores);
        for (int64_t rows = 8; rows <= SPLIT_MAX_ROWS && run->n_split < MAX_SPLIT; rows *= 2) {
            j.rows = rows;
            time_split(pool, &j, run->o.quick ? 5 : 41, &run->split[run->n_split++]);
        }
    }
    free(w);
    free(x);
    free(y);
    kvrt_threadpool_destroy(pool);
    return st;
}

/* Smallest job from which the pool is faster at every larger size; 0 if never. */
static int64_t split_crossover(const threads_run *run)
{
    int64_t cross = 0;
    for (int i = run->n_split - 1; i >= 0; i--) {
        if (run->split[i].pool_us >= run->split[i].inline_us)
            break;
        cross = run->split[i].work;
    }
    return cross;
}

/* ---- reporting ----------------------------------------------------------------------------------------- */

typedef struct verdict {
    double min_ratio;     /* worst setting / -t 1 */
    double default_share; /* default / best */
} verdict;

static verdict judge(const model_rows *m)
{
    verdict v = {INFINITY, NAN};
    double best = 0.0, def = NAN;
    for (int i = 0; i < m->n; i++) {
        v.min_ratio = KVRT_MIN(v.min_ratio, m->s[i].median / m->s[0].median);
        best = KVRT_MAX(best, m->s[i].median);
        if (m->s[i].is_default && !m->s[i].busy)
            def = m->s[i].median;
    }
    v.default_share = def / best;
    return v;
}

static void print_decode_table(const threads_run *run, FILE *f)
{
    static const char *const hdr[] = {"model", "setting", "decode t/s (median)", "min", "max", "vs -t 1",
                                      "CPU us/token"};
    kvrt_table t;
    kvrt_table_init(&t, 7, hdr, "llrrrrr");
    for (int mi = 0; mi < run->o.n_models; mi++) {
        const model_rows *m = &run->models[mi];
        for (int i = 0; i < m->n && kvrt_table_row(&t); i++) {
            const setting *s = &m->s[i];
            double lo = s->tok_s[0], hi = s->tok_s[0];
            for (int r = 1; r < run->o.reps; r++)
                lo = KVRT_MIN(lo, s->tok_s[r]), hi = KVRT_MAX(hi, s->tok_s[r]);
            const char *slash = strrchr(m->path, '/');
            kvrt_table_cell(&t, "%s", slash ? slash + 1 : m->path);
            kvrt_table_cell(&t, "%s", s->label);
            kvrt_table_cell(&t, "%.1f", s->median);
            kvrt_table_cell(&t, "%.1f", lo);
            kvrt_table_cell(&t, "%.1f", hi);
            kvrt_table_cell(&t, "%.2f", s->median / m->s[0].median);
            kvrt_table_cell(&t, "%.1f", s->cpu_median);
        }
    }
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
    for (int mi = 0; mi < run->o.n_models; mi++) {
        verdict v = judge(&run->models[mi]);
        fprintf(f, "%s: worst setting %.2f x of -t 1 (criterion >= %.1f: %s); default %.0f %% of the best "
                   "(criterion >= %.0f %%: %s)\n",
                run->models[mi].path, v.min_ratio, MIN_RATIO, v.min_ratio >= MIN_RATIO ? "met" : "MISSED",
                100.0 * v.default_share, 100.0 * DEFAULT_VS_BEST,
                v.default_share >= DEFAULT_VS_BEST ? "met" : "MISSED");
    }
}

static void print_split_table(const threads_run *run, FILE *f)
{
    static const char *const hdr[] = {"job (multiply-adds)", "per thread", "1 thread us", "pool us", "pool speed-up"};
    kvrt_table t;
    kvrt_table_init(&t, 5, hdr, NULL);
    for (int i = 0; i < run->n_split && kvrt_table_row(&t); i++) {
        const split_row *r = &run->split[i];
        kvrt_table_cell(&t, "%lld", (long long)r->work);
        kvrt_table_cell(&t, "%lld", (long long)(r->work / run->cores));
        kvrt_table_cell(&t, "%.2f", r->inline_us);
        kvrt_table_cell(&t, "%.2f", r->pool_us);
        kvrt_table_cell(&t, "%.2f", r->inline_us / r->pool_us);
    }
    fprintf(f, "\nsplit: a cached F32 GEMV (%d columns) on the caller alone vs the pool on %d thread(s), "
               "medians; kvrt splits from %lld multiply-adds per thread (KVRT_THREADPOOL_MIN_WORK)\n\n",
            SPLIT_COLS, run->cores, (long long)KVRT_THREADPOOL_MIN_WORK);
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
    int64_t cross = split_crossover(run);
    if (cross > 0)
        fprintf(f, "the pool is faster from %lld multiply-adds (%lld per thread) on\n", (long long)cross,
                (long long)(cross / run->cores));
    else
        fprintf(f, "the pool was not faster at any measured size\n");
}

static void print_json(const threads_run *run, FILE *out)
{
    kvrt_json j;
    kvrt_json_init(&j, out);
    kvrt_json_begin_object(&j, NULL);
    kvrt_json_str(&j, "tool", "kvrt-bench");
    kvrt_json_str(&j, "bench", "threads");
    kvrt_json_str(&j, "kvrt_version", kvrt_version());
    kvrt_json_int(&j, "cores", run->cores);
    kvrt_json_int(&j, "default_threads", kvrt_threadpool_default_threads());
    kvrt_json_int(&j, "busy_processes", run->o.busy);
    kvrt_json_int(&j, "reps", run->o.reps);
    kvrt_json_int(&j, "gen", run->o.gen);
    kvrt_json_num(&j, "loadavg_before", run->load_before[0]);
    kvrt_json_num(&j, "loadavg_after", run->load_after[0]);
    kvrt_json_begin_array(&j, "models");
    for (int mi = 0; run->o.decode && mi < run->o.n_models; mi++) {
        const model_rows *m = &run->models[mi];
        verdict v = judge(m);
        kvrt_json_begin_object(&j, NULL);
        kvrt_json_str(&j, "path", m->path);
        kvrt_json_begin_array(&j, "settings");
        for (int i = 0; i < m->n; i++) {
            kvrt_json_begin_object(&j, NULL);
            kvrt_json_str(&j, "label", m->s[i].label);
            kvrt_json_int(&j, "threads", m->s[i].threads ? m->s[i].threads : run->cores);
            kvrt_json_bool(&j, "busy", m->s[i].busy);
            kvrt_json_bool(&j, "default", m->s[i].is_default);
            kvrt_json_num(&j, "decode_tok_s_median", m->s[i].median);
            kvrt_json_num(&j, "vs_t1", m->s[i].median / m->s[0].median);
            kvrt_json_num(&j, "cpu_us_per_token_median", m->s[i].cpu_median);
            kvrt_json_end_object(&j);
        }
        kvrt_json_end_array(&j);
        kvrt_json_num(&j, "min_ratio_vs_t1", v.min_ratio);
        kvrt_json_num(&j, "default_vs_best", v.default_share);
        kvrt_json_bool(&j, "min_ratio_met", v.min_ratio >= MIN_RATIO);
        kvrt_json_bool(&j, "default_met", v.default_share >= DEFAULT_VS_BEST);
        kvrt_json_end_object(&j);
    }
    kvrt_json_end_array(&j);
    kvrt_json_begin_array(&j, "split");
    for (int i = 0; i < run->n_split; i++) {
        kvrt_json_begin_object(&j, NULL);
        kvrt_json_int(&j, "work", run->split[i].work);
        kvrt_json_num(&j, "inline_us", run->split[i].inline_us);
        kvrt_json_num(&j, "pool_us", run->split[i].pool_us);
        kvrt_json_end_object(&j);
    }
    kvrt_json_end_array(&j);
    kvrt_json_int(&j, "split_crossover_work", split_crossover(run));
    kvrt_json_int(&j, "min_work_per_thread", KVRT_THREADPOOL_MIN_WORK);
    kvrt_json_end_object(&j);
}

static void report(const threads_run *run)
{
    FILE *f = run->o.json ? stderr : stdout;
    fprintf(f, "kvrt-bench threads: %d core(s) (kvrt's default thread count %d); load average %.2f before, "
               "%.2f after; %d busy process(es) beside the busy row; medians of %d rounds\n\n",
            run->cores, kvrt_threadpool_default_threads(), run->load_before[0], run->load_after[0], run->o.busy,
            run->o.reps);
    if (run->o.decode)
        print_decode_table(run, f);
    if (run->o.split)
        print_split_table(run, f);
    if (run->o.json)
        print_json(run, stdout);
}

int kvrt_bench_threads_main(int argc, char **argv)
{
    threads_run *run = calloc(1, sizeof(*run));
    if (!run) {
        kvrt_cli_error(PROG, "out of memory");
        return 1;
    }
    int rc = parse_args(argc, argv, &run->o);
    if (rc != KVRT_CLI_CONTINUE) {
        free(run);
        return rc;
    }
    run->cores = run->o.cores ? run->o.cores : kvrt_threadpool_default_threads();
    getloadavg(run->load_before, 3);
    kvrt_error err = {KVRT_OK, ""};
    kvrt_status st = KVRT_OK;
    for (int mi = 0; run->o.decode && st == KVRT_OK && mi < run->o.n_models; mi++) {
        run->models[mi].path = run->o.models[mi];
        st = bench_model_file(run, &run->models[mi], &err);
    }
    if (st == KVRT_OK && run->o.split)
        st = bench_split(run, &err);
    getloadavg(run->load_after, 3);
    if (st == KVRT_OK)
        report(run);
    else
        kvrt_cli_error(PROG, "%s", err.message);
    free_opts(&run->o);
    free(run);
    return st == KVRT_OK ? 0 : 1;
}
