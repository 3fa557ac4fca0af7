/* kvrt-bench serve: serving workloads on the engine, generated from a fixed
 * seed, every request arriving at t = 0 (an offline burst), greedy unless
 * said otherwise, EOS ignored so every request produces exactly the tokens
 * asked for. Lengths are drawn from lognormal distributions
 * (round(exp(mu + sigma * z)), clipped):
 *
 *   sharegpt  skewed lengths like ShareGPT conversations (long tails; medians
 *             scaled down about 3x to fit a 512 context): prompt median 64
 *             (sigma 1.0, [4, 256]), output median 64 (sigma 1.0, [4, 256]).
 *             Run three times: continuous batching; static batching (batches
 *             of max_seqs requests run to completion, nothing admitted until
 *             the batch is done, and a finished slot stays idle in the batch:
 *             it is still computed, as a fixed-shape batch is, until the
 *             longest request ends; only real tokens count) - the reference of
 *             continuous_vs_static_speedup; and "static-shrinking", where
 *             finished requests leave the batch and cost nothing. On the CPU
 *             a step costs about the same per token whatever the batch, so
 *             shrinking static batches lose little; on a GPU, where a step
 *             costs about the same whatever the batch, idle slots cost as in
 *             the fixed-shape case.
 *   sysprompt a shared 256-token system prompt, then a user part (median 24,
 *             sigma 0.5, [4, 64]) and 32 output tokens: prefix cache on vs off.
 *   parallel  n = 4 samples per request (temperature 0.8, top-p 0.95, seeded),
 *             prompt median 48 (sigma 0.5, [8, 128]), 64 tokens per sample;
 *             requests / 4 requests.
 *   burst     prompt 64 + output 128 per request, all at once, the pool sized
 *             for a quarter of max_seqs such requests: forces preemption.
 *             Run three times, one per policy on the same small pool:
 *             recompute ("small-pool"), swap to a host tier and offload
 *             (issue 18: the oldest blocks of running sequences move to a
 *             host pool whose CPU attends over them) with a host tier that
 *             holds every request ("small-pool-swap", "small-pool-offload").
 *             On the CPU backend both of offload's tiers are host memory,
 *             so its pool is simply that much larger.
 *
 * Latencies come from the token callbacks: TTFT = first token - t0, TPOT =
 * (last counted token - first token) / (tokens - 1) per request.
 *
 * --workload FILE replays a recorded workload instead (one request per line:
 * "MAX_TOKENS ID ID ...", greedy, EOS ignored; '#' starts a comment), as
 * tools/kvrt-server-load.py writes it: the offline reference for the HTTP
 * server on the very same requests. --concurrency N keeps N requests in
 * flight (a new one is submitted as one finishes, like N clients that each
 * send their next request when the last answer is in); TTFT is then counted
 * from each request's own submission.
 */
#include "bench_serve.h"

#include "backend/kv_layout.h"
#include "bench.h"
#include "cli.h"
#include "files.h"
#include "json.h"
#include "table.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROG "kvrt-bench serve"

/* KV types of the budget table (--kv-types), and the default budget: F16 KV
 * of this many full contexts, so F16 cannot hold every sequence a step may
 * run and a smaller type visibly holds more. */
#define MAX_KV_TYPES 8
#define BUDGET_CONTEXTS 4

typedef struct kv_pair {
    kvrt_dtype k, v;
} kv_pair;

typedef struct serve_opts {
    kvrt_cli_common common;     /* --backend --device -t --pipeline-cache --kv-type --block-size -v */
    const char *model;
    int32_t requests;
    kvrt_backend_kind backend;  /* the common flags' values, resolved (auto chosen) */
    const char *pipeline_cache; /* --pipeline-cache FILE; NULL = none */
    int n_threads;
    bool json;
    uint64_t seed;
    int32_t block_size;
    kvrt_dtype kv_type;         /* K's */
    kvrt_dtype kv_type_v;       /* V's */
    int32_t max_seqs;
    int32_t max_batched_tokens;
    const char *workload;       /* --workload FILE: replay it instead of the built-in workloads */
    int32_t concurrency;        /* --concurrency N: requests in flight (0 = all at once) */
    const char *prompt_cache;   /* --prompt-cache DIR: the engines' prompt cache folder */
    int64_t prompt_cache_max;   /* MiB */
    kv_pair kv_list[MAX_KV_TYPES]; /* --kv-types: the budget table's rows (K, V) */
    int n_kv_list;
    int64_t kv_budget_mib;      /* --kv-budget; 0: F16 KV of BUDGET_CONTEXTS full contexts */
} serve_opts;

typedef struct wl_req {
    int32_t *prompt;
    int32_t n_prompt, max_tokens, n;
    float temperature, top_p;
    uint64_t seed;
} wl_req;

typedef struct workload {
    wl_req *r;
    int32_t n;
} workload;

typedef enum run_mode { MODE_CONTINUOUS = 0, MODE_STATIC = 1, MODE_STATIC_PADDED = 2 } run_mode;

typedef struct wl_stats {
    const char *name, *mode;
    int32_t requests, samples;
    double seconds, req_s, tok_s;
    int64_t out_tokens, prefill_tokens, preemptions, steps;
    int64_t blocks_offloaded;
    double ttft[3], tpot[3]; /* p50, p95, p99 in seconds */
    double kv_util, kv_util_contig, prefix_hit;
    int32_t kv_blocks;
    double seqs_mean, seqs_max;  /* sequences per step (running concurrently) */
    uint64_t kv_bytes;           /* the pool's bytes */
} wl_stats;

/* Per-run bookkeeping the token callback fills. */
typedef struct run_state {
    const workload *wl;
    int32_t *sample_off;  /* [n + 1] first sample index of each request */
    int32_t *got;         /* [samples] tokens counted per sample */
    double *first, *last; /* [n] */
    double *submitted;    /* [n] submission times (closed-loop replay), or NULL: every request at t0 */
    int64_t *id_to_req;   /* engine ids are 1, 2, ... in submission order */
    int64_t n_ids;
    int64_t counted;
} run_state;

/* ---- arguments ----------------------------------------------------------------- */

/* --kv-types: a comma-separated list of TYPE or K/V (q8_0,q4_0,q8_0/q4_0). */
static bool parse_kv_list(const char *prog, const char *flag, const char *value, void *dst)
{
    serve_opts *o = dst;
    o->n_kv_list = 0;
    char buf[512];
    if ((size_t)snprintf(buf, sizeof(buf), "%s", value) >= sizeof(buf)) {
        kvrt_cli_error(prog, "%s: list longer than %zu characters", flag, sizeof(buf) - 1);
        return false;
    }
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->n_kv_list == MAX_KV_TYPES) {
            kvrt_cli_error(prog, "%s: at most %d entries", flag, MAX_KV_TYPES);
            return false;
        }
        char *slash = strchr(tok, '/');
        if (slash)
            *slash = '\0';
        kv_pair *t = &o->kv_list[o->n_kv_list++];
        if (!kvrt_cli_parse_kv_type(prog, flag, tok, &t->k))
            return false;
        t->v = t->k;
        if (slash && !kvrt_cli_parse_kv_type(prog, flag, slash + 1, &t->v))
            return false;
    }
    if (o->n_kv_list == 0)
        kvrt_cli_error(prog, "%s: empty list", flag);
    return o->n_kv_list > 0;
}

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, serve_opts *o)
{
    *o = (serve_opts){.model = NULL, .requests = 256, .max_seqs = 32, .max_batched_tokens = 256,
                      .prompt_cache_max = 1024};
    kvrt_cli_common_init(&o->common, KVRT_DTYPE_F32, 1);
    o->common.threads[0] = 1; /* the default model is too small to gain from more */
    o->common.backend = KVRT_BACKEND_CPU; /* DESIGN.md: with no arguments, every workload on the CPU */
    int64_t seed = 42;
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_STR('m', "model", &o->model, "PATH",
                     "GGUF or llama2.c model (default: the shipped stories260K.gguf, from models/ here\n"
                     "or the installed share/kvrt/models)"),
        {.name = "requests", .kind = KVRT_CLI_KIND_INT32, .dst = &o->requests, .min = 1, .max = 1 << 20,
         .flags = KVRT_CLI_K_SUFFIX, .meta = "N", .help = "requests per workload (default 256; parallel runs N/4)"},
        KVRT_CLI_BOOL(0, "json", &o->json, "one JSON document on stdout; the table goes to stderr"),
        KVRT_CLI_INT64(0, "seed", &seed, 0, INT64_MAX, "S", "workload generator seed (default 42)"),
        KVRT_CLI_INT32(0, "max-seqs", &o->max_seqs, 1, 4096, "N",
                       "sequences per step and static batch size (default 32)"),
        {.name = "max-batched-tokens", .kind = KVRT_CLI_KIND_INT32, .dst = &o->max_batched_tokens, .min = 1,
         .max = 1 << 20, .flags = KVRT_CLI_K_SUFFIX, .meta = "N", .help = "tokens per step (default 256)"},
        KVRT_CLI_STR(0, "workload", &o->workload, "FILE",
                     "replay FILE's requests (\"MAX_TOKENS ID ID ...\" per line, as\n"
                     "tools/kvrt-server-load.py writes them) instead of the workloads above"),
        KVRT_CLI_INT32(0, "concurrency", &o->concurrency, 0, 1 << 20, "N",
                       "with --workload: N requests in flight, the next submitted as one\n"
                       "finishes (default 0: all at t = 0)"),
        KVRT_CLI_STR(0, "prompt-cache", &o->prompt_cache, "DIR",
                     "every engine keeps its prompts' KV blocks in DIR and loads those it\n"
                     "finds there (a prefix cache that survives restarts)"),
        KVRT_CLI_INT64(0, "prompt-cache-max", &o->prompt_cache_max, 1, INT64_MAX / (1 << 20), "MIB",
                       "size cap of --prompt-cache's files (default 1024 = 1 GiB)"),
        KVRT_CLI_CALL(0, "kv-types", parse_kv_list, o, "LIST",
                      "instead of the workloads above: the sharegpt requests once per KV type\n"
                      "(comma-separated; K/V for a pair, e.g. f16,q8_0,q4_0,fp8,q8_0/q4_0), the\n"
                      "pool sized by --kv-budget for each: concurrent sequences, preemptions and\n"
                      "output tok/s per type in one table (a type that does not fit head_dim is\n"
                      "a row saying so)"),
        KVRT_CLI_INT64(0, "kv-budget", &o->kv_budget_mib, 1, INT64_MAX / (1 << 20), "MIB",
                       "the KV pool's memory for --kv-types, the same for every type (default:\n"
                       "what f16 KV of 4 full contexts takes, so f16 cannot run max_seqs at once)"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-bench serve [--model PATH] [--requests N] [--backend cpu|auto|vulkan|opencl] [-t THREADS]\n"
                 "                        [--json] [--seed S] [--block-size 8|16|32] [--kv-type TYPE]\n"
                 "                        [--max-seqs N] [--max-batched-tokens N] [--pipeline-cache FILE]\n"
                 "                        [--device N|NAME] [-v] [--workload FILE [--concurrency N]]\n"
                 "                        [--kv-types LIST [--kv-budget MIB]]",
        .about = "Runs four serving workloads on the engine (ShareGPT-like skewed lengths, a shared system\n"
                 "prompt, parallel sampling n = 4, a burst larger than the KV pool) and compares continuous\n"
                 "vs static batching, paged vs contiguous KV reservation, prefix cache on vs off.\n"
                 "-t defaults to 1 here: the default model is too small to gain from more threads.",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
        .common = &o->common,
    };
    int first;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    if (!kvrt_cli_common_resolve(PROG, &o->common))
        return KVRT_CLI_USAGE;
    o->backend = o->common.backend;
    o->pipeline_cache = o->common.pipeline_cache;
    o->n_threads = o->common.threads[0];
    o->kv_type = o->common.kv_type;
    o->kv_type_v = o->common.kv_type_v;
    o->block_size = o->common.block_size;
    o->seed = (uint64_t)seed;
    if (o->n_kv_list > 0 && o->workload) {
        kvrt_cli_error(PROG, "--kv-types runs the sharegpt requests: not with --workload");
        return KVRT_CLI_USAGE;
    }
    if (o->kv_budget_mib > 0 && o->n_kv_list == 0) {
        kvrt_cli_error(PROG, "--kv-budget sizes the pools of --kv-types: name the types");
        return KVRT_CLI_USAGE;
    }
    return KVRT_CLI_CONTINUE;
}

/* ---- workloads ---------------------------------------------------------------- */

static double rng_unit(kvrt_bench_rng *r)
{
    return ((double)kvrt_bench_rng_f32(r) + 1.0) * 0.5; /* [0, 1) */
}

/* round(exp(mu + sigma z)) clipped to [lo, hi], z standard normal (Box-Muller). */
static int32_t lognormal(kvrt_bench_rng *r, double median, double sigma, int32_t lo, int32_t hi)
{
    double u1 = 1.0 - rng_unit(r), u2 = rng_unit(r);
    double z = sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
    double x = round(median * exp(sigma * z));
    return (int32_t)KVRT_MAX((double)lo, KVRT_MIN((double)hi, x));
}

typedef struct gen_ctx {
    kvrt_bench_rng rng;
    int32_t n_vocab, bos, max_context;
} gen_ctx;

/* BOS (when the model has one) then random ids past the special ones. */
static void random_tokens(gen_ctx *g, int32_t *dst, int32_t n, bool with_bos)
{
    for (int32_t i = 0; i < n; i++) {
        int32_t lo = KVRT_MIN(3, g->n_vocab - 1);
        dst[i] = lo + (int32_t)(rng_unit(&g->rng) * (double)(g->n_vocab - lo));
    }
    if (with_bos && g->bos >= 0 && n > 0)
        dst[0] = g->bos;
}

static void workload_free(workload *w)
{
    if (w->r)
        for (int32_t i = 0; i < w->n; i++)
            free(w->r[i].prompt);
    free(w->r);
    memset(w, 0, sizeof(*w));
}

static bool workload_alloc(workload *w, int32_t n)
{
    w->r = calloc((size_t)n, sizeof(*w->r));
    w->n = w->r ? n : 0;
    return w->r != NULL;
}

/* Keeps prompt + output inside the context (the lengths are for a 512 context). */
static void fit_context(const gen_ctx *g, int32_t *n_prompt, int32_t *max_tokens)
{
    *n_prompt = KVRT_MIN(*n_prompt, g->max_context / 2);
    *max_tokens = KVRT_MAX(1, KVRT_MIN(*max_tokens, g->max_context - *n_prompt));
}

static bool make_sharegpt(gen_ctx *g, int32_t n, workload *w)
{
    if (!workload_alloc(w, n))
        return false;
    for (int32_t i = 0; i < n; i++) {
        wl_req *q = &w->r[i];
        q->n_prompt = lognormal(&g->rng, 64.0, 1.0, 4, 256);
        q->max_tokens = lognormal(&g->rng, 64.0, 1.0, 4, 256);
        fit_context(g, &q->n_prompt, &q->max_tokens);
        q->n = 1;
        if (!(q->prompt = malloc(sizeof(int32_t) * (size_t)q->n_prompt)))
            return false;
        random_tokens(g, q->prompt, q->n_prompt, true);
    }
    return true;
}

static bool make_sysprompt(gen_ctx *g, int32_t n, workload *w)
{
    enum { SYS = 256 };
    int32_t sys[SYS];
    random_tokens(g, sys, SYS, true);
    if (!workload_alloc(w, n))
        return false;
    for (int32_t i = 0; i < n; i++) {
        wl_req *q = &w->r[i];
        int32_t user = lognormal(&g->rng, 24.0, 0.5, 4, 64);
        q->n_prompt = SYS + user;
        q->max_tokens = 32;
        fit_context(g, &q->n_prompt, &q->max_tokens);
        q->n = 1;
        if (!(q->prompt = malloc(sizeof(int32_t) * (size_t)q->n_prompt)))
            return false;
        memcpy(q->prompt, sys, sizeof(int32_t) * (size_t)KVRT_MIN(SYS, q->n_prompt));
        if (q->n_prompt > SYS)
            random_tokens(g, q->prompt + SYS, q->n_prompt - SYS, false);
    }
    return true;
}

static bool make_parallel(gen_ctx *g, int32_t n, workload *w)
{
    if (!workload_alloc(w, n))
        return false;
    for (int32_t i = 0; i < n; i++) {
        wl_req *q = &w->r[i];
        q->n_prompt = lognormal(&g->rng, 48.0, 0.5, 8, 128);
        q->max_tokens = 64;
        fit_context(g, &q->n_prompt, &q->max_tokens);
        q->n = 4;
        q->temperature = 0.8f;
        q->top_p = 0.95f;
        q->seed = (uint64_t)(rng_unit(&g->rng) * 4294967296.0);
        if (!(q->prompt = malloc(sizeof(int32_t) * (size_t)q->n_prompt)))
            return false;
        random_tokens(g, q->prompt, q->n_prompt, true);
    }
    return true;
}

static bool make_burst(gen_ctx *g, int32_t n, workload *w)
{
    if (!workload_alloc(w, n))
        return false;
    for (int32_t i = 0; i < n; i++) {
        wl_req *q = &w->r[i];
        q->n_prompt = 64;
        q->max_tokens = 128;
        fit_context(g, &q->n_prompt, &q->max_tokens);
        q->n = 1;
        if (!(q->prompt = malloc(sizeof(int32_t) * (size_t)q->n_prompt)))
            return false;
        random_tokens(g, q->prompt, q->n_prompt, true);
    }
    return true;
}

/* ---- running one workload -------------------------------------------------------- */

static void on_token(void *user, int64_t id, int32_t sample, int32_t token, kvrt_finish_reason finish)
{
    (void)finish;
    run_state *rs = user;
    if (token < 0 || id < 1 || id > rs->n_ids)
        return;
    int64_t ri = rs->id_to_req[id - 1];
    const wl_req *q = &rs->wl->r[ri];
    int32_t *got = &rs->got[rs->sample_off[ri] + sample];
    if (*got >= q->max_tokens)
        return; /* padding of a static batch: not output */
    (*got)++;
    rs->counted++;
    double now = kvrt_bench_now();
    if (rs->first[ri] < 0)
        rs->first[ri] = now;
    rs->last[ri] = now;
}

static void progress(bool tty, const char *name, const char *mode, int64_t done, int64_t total)
{
    if (!tty)
        return;
    int width = 30, fill = total ? (int)(width * done / total) : width;
    fprintf(stderr, "\r%-9s %-14s [%.*s%*s] %lld/%lld tokens", name, mode, fill,
            "##############################", width - fill, "", (long long)done, (long long)total);
    if (done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void percentiles(double *v, int32_t n, double out[3])
{
    static const double ps[3] = {50.0, 95.0, 99.0};
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    for (int k = 0; k < 3; k++) {
        if (n == 0) {
            out[k] = 0.0;
            continue;
        }
        double rank = ps[k] / 100.0 * (double)(n - 1);
        int32_t lo = (int32_t)rank, hi = KVRT_MIN(lo + 1, n - 1);
        out[k] = v[lo] + (rank - (double)lo) * (v[hi] - v[lo]);
    }
}

static double engine_clock(void *user)
{
    (void)user;
    return kvrt_bench_now();
}

typedef struct run_cfg {
    const char *name, *mode_name;
    run_mode mode;
    kvrt_engine_params ep;
    bool tty;
    bool quiet; /* no progress, no line */
    int32_t concurrency; /* > 0: closed loop, this many requests in flight */
} run_cfg;

/* Submits requests [from, to) (padded to the longest of them in MODE_STATIC_PADDED). */
static kvrt_status submit_range(kvrt_engine *e, const run_cfg *c, run_state *rs, int32_t from, int32_t to,
                                kvrt_error *err)
{
    int32_t longest = 0;
    for (int32_t i = from; i < to; i++)
        longest = KVRT_MAX(longest, rs->wl->r[i].max_tokens);
    for (int32_t i = from; i < to; i++) {
        const wl_req *q = &rs->wl->r[i];
        kvrt_request_params rp = kvrt_request_default_params();
        rp.prompt = q->prompt;
        rp.n_prompt = q->n_prompt;
        rp.max_tokens = c->mode == MODE_STATIC_PADDED ? KVRT_MIN(longest, c->ep.max_context - q->n_prompt)
                                                      : q->max_tokens;
        rp.max_tokens = KVRT_MAX(rp.max_tokens, q->max_tokens);
        rp.n = q->n;
        rp.temperature = q->temperature;
        rp.top_p = q->top_p > 0.0f ? q->top_p : 1.0f;
        rp.seed = q->seed;
        rp.ignore_eos = 1;
        rp.on_token = on_token;
        rp.user = rs;
        int64_t id = 0;
        kvrt_status st = kvrt_engine_submit(e, &rp, &id);
        if (st != KVRT_OK)
            return kvrt_fail(err, st, "submit request %d: %s", (int)i, kvrt_engine_message(e));
        if (id != rs->n_ids + 1)
            return kvrt_fail(err, KVRT_ERR_INTERNAL, "engine ids are not sequential");
        rs->id_to_req[rs->n_ids++] = i;
    }
    return KVRT_OK;
}

/* Steps until the engine is idle, releasing finished requests. */
static kvrt_status drain(kvrt_engine *e, const run_cfg *c, run_state *rs, int64_t total, kvrt_error *err)
{
    int64_t shown = -1;
    while (kvrt_engine_has_work(e)) {
        kvrt_status st = kvrt_engine_step(e, NULL);
        if (st != KVRT_OK)
            return kvrt_fail(err, st, "step: %s", kvrt_engine_message(e));
        kvrt_request_output out;
        int32_t found = 1;
        while (found) {
            st = kvrt_engine_next_finished(e, &out, &found);
            if (st == KVRT_OK && found)
                st = kvrt_engine_release(e, out.request_id);
            if (st != KVRT_OK)
                return kvrt_fail(err, st, "%s", kvrt_engine_message(e));
        }
        if (rs->counted * 50 / KVRT_MAX(total, 1) != shown) {
            shown = rs->counted * 50 / KVRT_MAX(total, 1);
            progress(c->tty, c->name, c->mode_name, rs->counted, total);
        }
    }
    return KVRT_OK;
}

/* Keeps c->concurrency requests in flight, submitting the next in file order
 * as soon as one finishes, until every request has run. */
static kvrt_status run_closed_loop(kvrt_engine *e, const run_cfg *c, run_state *rs, int64_t total, kvrt_error *err)
{
    const workload *w = rs->wl;
    if (!(rs->submitted = calloc((size_t)KVRT_MAX(w->n, 1), sizeof(double))))
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "submission times");
    int32_t next = 0, in_flight = 0;
    int64_t shown = -1;
    while (next < w->n || kvrt_engine_has_work(e)) {
        for (; in_flight < c->concurrency && next < w->n; next++, in_flight++) {
            rs->submitted[next] = kvrt_bench_now();
            KVRT_TRY(submit_range(e, c, rs, next, next + 1, err));
        }
        kvrt_status st = kvrt_engine_step(e, NULL);
        if (st != KVRT_OK)
            return kvrt_fail(err, st, "step: %s", kvrt_engine_message(e));
        kvrt_request_output out;
        int32_t found = 1;
        while (found) {
            st = kvrt_engine_next_finished(e, &out, &found);
            if (st == KVRT_OK && found) {
                st = kvrt_engine_release(e, out.request_id);
                in_flight--;
            }
            if (st != KVRT_OK)
                return kvrt_fail(err, st, "%s", kvrt_engine_message(e));
        }
        if (rs->counted * 50 / KVRT_MAX(total, 1) != shown) {
            shown = rs->counted * 50 / KVRT_MAX(total, 1);
            progress(c->tty, c->name, c->mode_name, rs->counted, total);
        }
    }
    return KVRT_OK;
}

static void run_state_free(run_state *rs)
{
    free(rs->submitted);
    free(rs->sample_off);
    free(rs->got);
    free(rs->first);
    free(rs->last);
    free(rs->id_to_req);
}

static kvrt_status run_state_init(run_state *rs, const workload *w, int64_t *total, kvrt_error *err)
{
    memset(rs, 0, sizeof(*rs));
    rs->wl = w;
    rs->sample_off = calloc((size_t)w->n + 1, sizeof(int32_t));
    rs->first = calloc((size_t)w->n, sizeof(double));
    rs->last = calloc((size_t)w->n, sizeof(double));
    rs->id_to_req = calloc((size_t)w->n, sizeof(int64_t));
    if (!rs->sample_off || !rs->first || !rs->last || !rs->id_to_req)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "run state");
    *total = 0;
    for (int32_t i = 0; i < w->n; i++) {
        rs->sample_off[i + 1] = rs->sample_off[i] + w->r[i].n;
        rs->first[i] = rs->last[i] = -1.0;
        *total += (int64_t)w->r[i].n * w->r[i].max_tokens;
    }
    rs->got = calloc((size_t)KVRT_MAX(rs->sample_off[w->n], 1), sizeof(int32_t));
    return rs->got ? KVRT_OK : kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "run state");
}

/* Every sample produced exactly its tokens; latencies and rates into *s. */
static kvrt_status collect(const run_state *rs, double t0, double t1, wl_stats *s, kvrt_error *err)
{
    const workload *w = rs->wl;
    double *ttft = calloc((size_t)w->n, sizeof(double)), *tpot = calloc((size_t)w->n, sizeof(double));
    if (!ttft || !tpot) {
        free(ttft);
        free(tpot);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "latencies");
    }
    int32_t n_tpot = 0;
    for (int32_t i = 0; i < w->n; i++) {
        for (int32_t k = rs->sample_off[i]; k < rs->sample_off[i + 1]; k++)
            if (rs->got[k] != w->r[i].max_tokens) {
                free(ttft);
                free(tpot);
                return kvrt_fail(err, KVRT_ERR_INTERNAL, "%s: request %d sample %d produced %d of %d tokens",
                                 s->name, (int)i, (int)(k - rs->sample_off[i]), (int)rs->got[k],
                                 (int)w->r[i].max_tokens);
            }
        ttft[i] = rs->first[i] - (rs->submitted ? rs->submitted[i] : t0);
        if (w->r[i].max_tokens > 1)
            tpot[n_tpot++] = (rs->last[i] - rs->first[i]) / (double)(w->r[i].max_tokens - 1);
    }
    percentiles(ttft, w->n, s->ttft);
    percentiles(tpot, n_tpot, s->tpot);
    free(ttft);
    free(tpot);
    s->requests = w->n;
    s->samples = rs->sample_off[w->n];
    s->out_tokens = rs->counted;
    s->seconds = t1 - t0;
    s->req_s = s->seconds > 0 ? w->n / s->seconds : 0.0;
    s->tok_s = s->seconds > 0 ? (double)rs->counted / s->seconds : 0.0;
    return KVRT_OK;
}

static kvrt_status run_workload(kvrt_model *model, const workload *w, const run_cfg *c, wl_stats *s,
                                kvrt_error *err)
{
    memset(s, 0, sizeof(*s));
    s->name = c->name;
    s->mode = c->mode_name;
    run_state rs;
    int64_t total = 0;
    kvrt_engine *e = NULL;
    kvrt_status st = run_state_init(&rs, w, &total, err);
    if (st == KVRT_OK)
        st = kvrt_engine_create(model, &c->ep, &e, err);
    if (st == KVRT_OK && *kvrt_engine_warning(e))
        fprintf(stderr, "%s: warning: %s\n", PROG, kvrt_engine_warning(e));
    double t0 = kvrt_bench_now();
    if (st == KVRT_OK && c->mode == MODE_CONTINUOUS && c->concurrency > 0) {
        st = run_closed_loop(e, c, &rs, total, err);
    } else if (st == KVRT_OK && c->mode == MODE_CONTINUOUS) {
        st = submit_range(e, c, &rs, 0, w->n, err);
        if (st == KVRT_OK)
            st = drain(e, c, &rs, total, err);
    }
    for (int32_t b = 0; st == KVRT_OK && c->mode != MODE_CONTINUOUS && b < w->n; b += c->ep.max_seqs) {
        st = submit_range(e, c, &rs, b, KVRT_MIN(w->n, b + c->ep.max_seqs), err);
        if (st == KVRT_OK)
            st = drain(e, c, &rs, total, err);
    }
    double t1 = kvrt_bench_now();
    kvrt_engine_metrics m;
    if (st == KVRT_OK)
        st = kvrt_engine_get_metrics(e, &m);
    if (st == KVRT_OK && rs.counted != total) /* every policy must finish every request */
        st = kvrt_fail(err, KVRT_ERR_INTERNAL, "%s %s: %lld of %lld tokens", c->name, c->mode_name,
                       (long long)rs.counted, (long long)total);
    if (st == KVRT_OK && m.blocks_used != 0)
        st = kvrt_fail(err, KVRT_ERR_INTERNAL, "%s: %d KV blocks still used after the run", c->name,
                       (int)m.blocks_used);
    if (st == KVRT_OK)
        st = collect(&rs, t0, t1, s, err);
    if (st == KVRT_OK && c->ep.prompt_cache_dir)
        fprintf(stderr, "%s: %s: prompt cache folder: %lld prompt tokens loaded, %lld blocks written%s%s\n", PROG,
                c->name, (long long)m.disk_hit_tokens, (long long)m.disk_written_blocks,
                *kvrt_engine_warning(e) ? "; " : "", kvrt_engine_warning(e));
    if (st == KVRT_OK) {
        s->kv_util = m.kv_utilization_mean;
        s->kv_util_contig = m.kv_utilization_contiguous_mean;
        s->prefix_hit = m.prefix_hit_rate;
        s->prefill_tokens = m.prefill_tokens;
        s->preemptions = m.preemptions_recompute + m.preemptions_swap;
        s->steps = m.steps;
        s->kv_blocks = m.blocks_total;
        s->kv_bytes = m.kv_bytes;
        s->seqs_mean = m.step_seqs.mean;
        s->seqs_max = m.step_seqs.max;
        s->blocks_offloaded = m.blocks_offloaded;
        if (!c->tty && !c->quiet)
            fprintf(stderr, "%s: %s %s: %d requests in %.2f s\n", PROG, c->name, c->mode_name, (int)w->n,
                    s->seconds);
    }
    kvrt_engine_destroy(e);
    run_state_free(&rs);
    return st;
}

/* ---- output -------------------------------------------------------------------- */

enum {
    W_SHARE_CONT, W_SHARE_STATIC, W_SHARE_SHRINK, W_SYS_ON, W_SYS_OFF, W_PARALLEL, W_BURST, W_BURST_SWAP,
    W_BURST_OFFLOAD, W_COUNT
};

typedef struct serve_run {
    serve_opts o;
    const char *device;
    int32_t max_context;
    kvrt_engine_params ep;
    wl_stats st[W_COUNT];
} serve_run;

static double ratio(double a, double b)
{
    return b > 0 ? a / b : 0.0;
}

/* "q8_0", or "K q8_0 / V q4_0" when the types differ. */
static const char *kv_pair_name(kv_pair t, char *buf, size_t size)
{
    if (t.k == t.v)
        snprintf(buf, size, "%s", kvrt_dtype_name(t.k));
    else
        snprintf(buf, size, "K %s / V %s", kvrt_dtype_name(t.k), kvrt_dtype_name(t.v));
    return buf;
}

/* kv_type (K's, as before), and kv_type_k / kv_type_v where they differ. */
static void json_kv_types(kvrt_json *j, kv_pair t)
{
    kvrt_json_str(j, "kv_type", kvrt_dtype_name(t.k));
    if (t.k != t.v) {
        kvrt_json_str(j, "kv_type_k", kvrt_dtype_name(t.k));
        kvrt_json_str(j, "kv_type_v", kvrt_dtype_name(t.v));
    }
}

static void print_table(const serve_run *r, FILE *f)
{
    static const char *const headers[] = {"workload", "mode", "reqs", "req/s", "out tok/s", "TTFT ms p50/p95/p99",
                                          "TPOT ms p50/p95/p99", "KV util", "prefix hit", "preempt"};
    kvrt_table t;
    if (!kvrt_table_init(&t, 10, headers, "llrrrrrrrr"))
        return;
    for (int i = 0; i < W_COUNT; i++) {
        const wl_stats *s = &r->st[i];
        if (!kvrt_table_row(&t))
            break;
        kvrt_table_cell(&t, "%s", s->name);
        kvrt_table_cell(&t, "%s", s->mode);
        kvrt_table_cell(&t, "%d", (int)s->requests);
        kvrt_table_cell(&t, "%.2f", s->req_s);
        kvrt_table_cell(&t, "%.0f", s->tok_s);
        kvrt_table_cell(&t, "%.1f/%.1f/%.1f", 1e3 * s->ttft[0], 1e3 * s->ttft[1], 1e3 * s->ttft[2]);
        kvrt_table_cell(&t, "%.2f/%.2f/%.2f", 1e3 * s->tpot[0], 1e3 * s->tpot[1], 1e3 * s->tpot[2]);
        kvrt_table_cell(&t, "%.1f %%", 100.0 * s->kv_util);
        kvrt_table_cell(&t, "%.1f %%", 100.0 * s->prefix_hit);
        kvrt_table_cell(&t, "%lld", (long long)s->preemptions);
    }
    char kv[64];
    fprintf(f, "%s: %s, model %s, KV %s, block size %d, max_seqs %d, max_batched_tokens %d, seed %llu\n", PROG,
            r->device, r->o.model, kv_pair_name((kv_pair){r->o.kv_type, r->o.kv_type_v}, kv, sizeof(kv)),
            (int)r->o.block_size, (int)r->o.max_seqs, (int)r->o.max_batched_tokens, (unsigned long long)r->o.seed);
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
    const wl_stats *st = r->st;
    fprintf(f, "\ncontinuous vs static batching (sharegpt): %.2fx output tokens/s (vs shrinking static batches: "
            "%.2fx)\n", ratio(st[W_SHARE_CONT].tok_s, st[W_SHARE_STATIC].tok_s),
            ratio(st[W_SHARE_CONT].tok_s, st[W_SHARE_SHRINK].tok_s));
    fprintf(f, "KV utilization (sharegpt): paged %.1f %% vs contiguous max-context (%d) reservation %.1f %%\n",
            100.0 * st[W_SHARE_CONT].kv_util, (int)r->max_context, 100.0 * st[W_SHARE_CONT].kv_util_contig);
    fprintf(f, "prefix cache (sysprompt): prefill tokens computed %lld on vs %lld off; TTFT p50 %.1f ms vs %.1f ms\n",
            (long long)st[W_SYS_ON].prefill_tokens, (long long)st[W_SYS_OFF].prefill_tokens, 1e3 * st[W_SYS_ON].ttft[0],
            1e3 * st[W_SYS_OFF].ttft[0]);
}

static void json_triple(kvrt_json *j, const char *key, const double v[3])
{
    kvrt_json_begin_object(j, key);
    kvrt_json_num(j, "p50", 1e3 * v[0]);
    kvrt_json_num(j, "p95", 1e3 * v[1]);
    kvrt_json_num(j, "p99", 1e3 * v[2]);
    kvrt_json_end_object(j);
}

/* The fields that say what ran, first in both JSON reports. */
static void json_run_fields(kvrt_json *j, const serve_run *r)
{
    kvrt_json_str(j, "tool", "kvrt-bench");
    kvrt_json_str(j, "bench", "serve");
    kvrt_json_str(j, "model", r->o.model);
    kvrt_json_str(j, "backend", kvrt_backend_name(r->o.backend));
    kvrt_json_str(j, "device", r->device);
    kvrt_json_int(j, "threads", r->o.n_threads > 0 ? r->o.n_threads : sysconf(_SC_NPROCESSORS_ONLN));
    kvrt_json_int(j, "seed", (int64_t)r->o.seed);
    kvrt_json_int(j, "requests", r->o.requests);
    kvrt_json_int(j, "block_size", r->o.block_size);
}

static void print_json(const serve_run *r, FILE *f)
{
    kvrt_json j;
    kvrt_json_init(&j, f);
    kvrt_json_begin_object(&j, NULL);
    json_run_fields(&j, r);
    json_kv_types(&j, (kv_pair){r->o.kv_type, r->o.kv_type_v});
    kvrt_json_int(&j, "max_context", r->max_context);
    kvrt_json_int(&j, "max_seqs", r->o.max_seqs);
    kvrt_json_int(&j, "max_batched_tokens", r->o.max_batched_tokens);
    kvrt_json_begin_array(&j, "workloads");
    for (int i = 0; i < W_COUNT; i++) {
        const wl_stats *s = &r->st[i];
        kvrt_json_begin_object(&j, NULL);
        kvrt_json_str(&j, "name", s->name);
        kvrt_json_str(&j, "mode", s->mode);
        kvrt_json_int(&j, "requests", s->requests);
        kvrt_json_int(&j, "samples", s->samples);
        kvrt_json_num(&j, "seconds", s->seconds);
        kvrt_json_num(&j, "requests_per_s", s->req_s);
        kvrt_json_int(&j, "output_tokens", s->out_tokens);
        kvrt_json_num(&j, "output_tokens_per_s", s->tok_s);
        json_triple(&j, "ttft_ms", s->ttft);
        json_triple(&j, "tpot_ms", s->tpot);
        kvrt_json_num(&j, "kv_utilization", s->kv_util);
        kvrt_json_num(&j, "contiguous_kv_utilization", s->kv_util_contig);
        kvrt_json_num(&j, "prefix_hit_rate", s->prefix_hit);
        kvrt_json_int(&j, "prefill_tokens", s->prefill_tokens);
        kvrt_json_int(&j, "preemptions", s->preemptions);
        kvrt_json_int(&j, "steps", s->steps);
        kvrt_json_int(&j, "kv_blocks", s->kv_blocks);
        kvrt_json_int(&j, "blocks_offloaded", s->blocks_offloaded);
        kvrt_json_end_object(&j);
    }
    kvrt_json_end_array(&j);
    const wl_stats *st = r->st;
    kvrt_json_num(&j, "continuous_vs_static_speedup", ratio(st[W_SHARE_CONT].tok_s, st[W_SHARE_STATIC].tok_s));
    kvrt_json_num(&j, "continuous_vs_shrinking_static_speedup",
                  ratio(st[W_SHARE_CONT].tok_s, st[W_SHARE_SHRINK].tok_s));
    kvrt_json_num(&j, "kv_utilization", st[W_SHARE_CONT].kv_util);
    kvrt_json_num(&j, "contiguous_kv_utilization", st[W_SHARE_CONT].kv_util_contig);
    kvrt_json_begin_object(&j, "prefix_cache");
    kvrt_json_int(&j, "prefill_tokens_on", st[W_SYS_ON].prefill_tokens);
    kvrt_json_int(&j, "prefill_tokens_off", st[W_SYS_OFF].prefill_tokens);
    kvrt_json_num(&j, "ttft_p50_ms_on", 1e3 * st[W_SYS_ON].ttft[0]);
    kvrt_json_num(&j, "ttft_p50_ms_off", 1e3 * st[W_SYS_OFF].ttft[0]);
    kvrt_json_num(&j, "hit_rate_on", st[W_SYS_ON].prefix_hit);
    kvrt_json_end_object(&j);
    kvrt_json_end_object(&j);
    fputc('\n', f);
}

/* ---- --workload FILE ------------------------------------------------------------- */

/* One request per line, "MAX_TOKENS ID ID ..."; '#' starts a comment. */
static kvrt_status read_workload(const char *path, const gen_ctx *g, workload *w, kvrt_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return kvrt_fail(err, KVRT_ERR_IO, "--workload %s: cannot open it", path);
    char *line = NULL;
    size_t cap = 0;
    int32_t n = 0, n_cap = 0, lineno = 0;
    kvrt_status st = KVRT_OK;
    while (st == KVRT_OK && getline(&line, &cap, f) >= 0) {
        lineno++;
        char *p = line, *end;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '#' || *p == '\n' || *p == '\0')
            continue;
        if (n == n_cap) {
            n_cap = n_cap ? 2 * n_cap : 256;
            wl_req *r = realloc(w->r, (size_t)n_cap * sizeof(*r));
            if (!r) {
                st = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "--workload: %d requests", (int)n_cap);
                break;
            }
            w->r = r;
        }
        wl_req *q = &w->r[n];
        memset(q, 0, sizeof(*q));
        w->n = ++n;
        q->n = 1;
        long v = strtol(p, &end, 10);
        q->max_tokens = (int32_t)v;
        q->prompt = malloc(strlen(p) / 2 * sizeof(int32_t) + sizeof(int32_t));
        if (!q->prompt) {
            st = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "--workload: line %d", (int)lineno);
            break;
        }
        for (p = end; (v = strtol(p, &end, 10)), end != p; p = end) {
            if (v < 0 || v >= g->n_vocab) {
                st = kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "--workload %s:%d: token %ld outside the vocabulary "
                               "of %d", path, (int)lineno, v, (int)g->n_vocab);
                break;
            }
            q->prompt[q->n_prompt++] = (int32_t)v;
        }
        while (st == KVRT_OK && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
            p++;
        if (st == KVRT_OK && (*p || q->max_tokens < 1 || q->n_prompt < 1 ||
                              (int64_t)q->n_prompt + q->max_tokens > g->max_context))
            st = kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "--workload %s:%d: want \"MAX_TOKENS ID ...\" with "
                           "max_tokens >= 1, a prompt, and both within the context of %d", path, (int)lineno,
                           (int)g->max_context);
    }
    free(line);
    fclose(f);
    if (st == KVRT_OK && n == 0)
        st = kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "--workload %s: no requests", path);
    return st;
}

static void print_replay(const serve_run *r, const wl_stats *s, FILE *table, FILE *json)
{
    char kv[64];
    fprintf(table, "%s: %s, model %s, KV %s, block size %d, max_seqs %d, max_batched_tokens %d\n", PROG, r->device,
            r->o.model, kv_pair_name((kv_pair){r->o.kv_type, r->o.kv_type_v}, kv, sizeof(kv)), (int)r->o.block_size,
            (int)r->o.max_seqs, (int)r->o.max_batched_tokens);
    fprintf(table, "%s (%s): %d requests in %.2f s, %.2f req/s, %.0f output tok/s, TTFT ms p50/p95/p99 "
            "%.1f/%.1f/%.1f, TPOT ms p50/p95/p99 %.2f/%.2f/%.2f, KV util %.1f %%, prefix hit %.1f %%, "
            "%lld preemptions\n", s->name, s->mode, (int)s->requests, s->seconds, s->req_s, s->tok_s,
            1e3 * s->ttft[0], 1e3 * s->ttft[1], 1e3 * s->ttft[2], 1e3 * s->tpot[0], 1e3 * s->tpot[1],
            1e3 * s->tpot[2], 100.0 * s->kv_util, 100.0 * s->prefix_hit, (long long)s->preemptions);
    if (!json)
        return;
    kvrt_json j;
    kvrt_json_init(&j, json);
    kvrt_json_begin_object(&j, NULL);
    kvrt_json_str(&j, "tool", "kvrt-bench");
    kvrt_json_str(&j, "bench", "serve");
    kvrt_json_str(&j, "workload_file", r->o.workload);
    kvrt_json_int(&j, "concurrency", r->o.concurrency);
    kvrt_json_str(&j, "model", r->o.model);
    kvrt_json_str(&j, "device", r->device);
    json_kv_types(&j, (kv_pair){r->o.kv_type, r->o.kv_type_v});
    kvrt_json_int(&j, "max_context", r->max_context);
    kvrt_json_int(&j, "max_seqs", r->o.max_seqs);
    kvrt_json_int(&j, "requests", s->requests);
    kvrt_json_num(&j, "seconds", s->seconds);
    kvrt_json_num(&j, "requests_per_s", s->req_s);
    kvrt_json_int(&j, "output_tokens", s->out_tokens);
    kvrt_json_num(&j, "output_tokens_per_s", s->tok_s);
    json_triple(&j, "ttft_ms", s->ttft);
    json_triple(&j, "tpot_ms", s->tpot);
    kvrt_json_num(&j, "kv_utilization", s->kv_util);
    kvrt_json_num(&j, "prefix_hit_rate", s->prefix_hit);
    kvrt_json_int(&j, "preemptions", s->preemptions);
    kvrt_json_end_object(&j);
    fputc('\n', json);
}

static kvrt_status run_replay(kvrt_model *model, serve_run *r, gen_ctx *g, kvrt_error *err)
{
    workload w;
    memset(&w, 0, sizeof(w));
    kvrt_status st = read_workload(r->o.workload, g, &w, err);
    run_cfg c = {.name = "file", .mode_name = r->o.concurrency > 0 ? "closed-loop" : "continuous", .ep = r->ep,
                 .tty = isatty(fileno(stderr)) != 0, .mode = MODE_CONTINUOUS, .concurrency = r->o.concurrency};
    wl_stats s;
    /* warm-up (not reported), as for the built-in workloads */
    workload warm = {.r = w.r, .n = KVRT_MIN(w.n, 8)};
    run_cfg wc = c;
    wc.tty = false;
    wc.quiet = true;
    if (st == KVRT_OK)
        st = run_workload(model, &warm, &wc, &s, err);
    if (st == KVRT_OK)
        st = run_workload(model, &w, &c, &s, err);
    if (st == KVRT_OK)
        print_replay(r, &s, r->o.json ? stderr : stdout, r->o.json ? stdout : NULL);
    workload_free(&w);
    return st;
}

/* ---- --kv-types: one memory budget, one row per KV type ---------------------------- */

typedef struct budget_row {
    kv_pair t;
    int64_t block_bytes;   /* one block, every layer, K and V; 0: the type does not fit head_dim */
    int32_t blocks;        /* the budget / block_bytes */
    const char *skipped;   /* why the row did not run, or NULL */
    wl_stats s;
} budget_row;

/* Bytes of one block of every layer's K and V stored as t (0: head_dim does not fit). */
static int64_t budget_block_bytes(const kvrt_model_info *mi, int32_t block_size, kv_pair t)
{
    size_t k = kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(t.k), mi->n_head_kv, block_size, mi->head_dim);
    size_t v = kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(t.v), mi->n_head_kv, block_size, mi->head_dim);
    return k && v ? (int64_t)mi->n_layer * (int64_t)(k + v) : 0;
}

/* The sharegpt requests once per type, each pool holding what the budget
 * buys in that type's blocks; everything else the same. */
static kvrt_status run_budget(kvrt_model *model, serve_run *r, gen_ctx *g, budget_row *rows, int64_t *budget,
                              kvrt_error *err)
{
    kvrt_model_info mi;
    KVRT_TRY(kvrt_model_get_info(model, &mi));
    int32_t bs = r->ep.block_size, per_ctx = (r->max_context + bs - 1) / bs;
    int64_t f16_block = budget_block_bytes(&mi, bs, (kv_pair){KVRT_DTYPE_F16, KVRT_DTYPE_F16});
    *budget = r->o.kv_budget_mib > 0 ? r->o.kv_budget_mib << 20 : f16_block * per_ctx * BUDGET_CONTEXTS;
    workload w;
    memset(&w, 0, sizeof(w));
    if (!make_sharegpt(g, r->o.requests, &w))
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "workload of %d requests", (int)r->o.requests);
    int32_t need = 1; /* blocks of the longest request: the pool must hold one */
    for (int32_t i = 0; i < w.n; i++)
        need = KVRT_MAX(need, (w.r[i].n_prompt + w.r[i].max_tokens + bs - 1) / bs);
    kvrt_status st = KVRT_OK;
    bool warm = false;
    for (int i = 0; st == KVRT_OK && i < r->o.n_kv_list; i++) {
        budget_row *b = &rows[i];
        b->t = r->o.kv_list[i];
        b->block_bytes = budget_block_bytes(&mi, bs, b->t);
        b->blocks = b->block_bytes > 0 ? (int32_t)KVRT_MIN(*budget / b->block_bytes, INT32_MAX) : 0;
        if (b->block_bytes == 0) {
            b->skipped = "head_dim not a multiple of 32";
            continue;
        }
        if (b->blocks < need) {
            b->skipped = "budget below one request";
            continue;
        }
        run_cfg c = {.name = "sharegpt", .mode_name = "continuous", .ep = r->ep, .tty = isatty(fileno(stderr)) != 0,
                     .mode = MODE_CONTINUOUS};
        c.ep.kv_type = b->t.k;
        c.ep.kv_type_v_set = 1;
        c.ep.kv_type_v = b->t.v;
        c.ep.num_blocks = b->blocks;
        if (!warm) { /* warm-up (not reported): the first forwards fault in weights and scratch */
            workload ww = {.r = w.r, .n = KVRT_MIN(w.n, 8)};
            run_cfg wc = c;
            wc.tty = false;
            wc.quiet = true;
            wl_stats ws;
            st = run_workload(model, &ww, &wc, &ws, err);
            warm = true;
        }
        if (st == KVRT_OK)
            st = run_workload(model, &w, &c, &b->s, err);
    }
    workload_free(&w);
    return st;
}

static void print_budget(const serve_run *r, const budget_row *rows, int64_t budget, FILE *f)
{
    static const char *const headers[] = {"KV type", "block bytes", "blocks", "tokens", "seqs mean/max", "preempt",
                                          "out tok/s", "TPOT ms p50", "KV util", "vs first"};
    kvrt_table t;
    if (!kvrt_table_init(&t, 10, headers, "lrrrrrrrrr"))
        return;
    for (int i = 0; i < r->o.n_kv_list; i++) {
        const budget_row *b = &rows[i];
        char kv[64];
        if (!kvrt_table_row(&t))
            break;
        kvrt_table_cell(&t, "%s", kv_pair_name(b->t, kv, sizeof(kv)));
        if (b->skipped) {
            kvrt_table_cell(&t, "%s", b->skipped);
            continue;
        }
        kvrt_table_cell(&t, "%lld", (long long)b->block_bytes);
        kvrt_table_cell(&t, "%d", (int)b->blocks);
        kvrt_table_cell(&t, "%lld", (long long)b->blocks * r->ep.block_size);
        kvrt_table_cell(&t, "%.1f/%.0f", b->s.seqs_mean, b->s.seqs_max);
        kvrt_table_cell(&t, "%lld", (long long)b->s.preemptions);
        kvrt_table_cell(&t, "%.0f", b->s.tok_s);
        kvrt_table_cell(&t, "%.2f", 1e3 * b->s.tpot[0]);
        kvrt_table_cell(&t, "%.1f %%", 100.0 * b->s.kv_util);
        kvrt_table_cell(&t, "%.2f", rows[0].skipped ? 0.0 : ratio(b->s.tok_s, rows[0].s.tok_s));
    }
    fprintf(f, "%s: %s, model %s, KV budget %.2f MiB for every type, block size %d, max_seqs %d, "
            "max_batched_tokens %d, %d sharegpt requests, seed %llu\n", PROG, r->device, r->o.model,
            (double)budget / 1048576.0, (int)r->o.block_size, (int)r->o.max_seqs, (int)r->o.max_batched_tokens,
            (int)r->o.requests, (unsigned long long)r->o.seed);
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
    fprintf(f, "\nseqs = sequences per step (running at once); vs first = out tok/s / the first row's\n");
}

static void print_budget_json(const serve_run *r, const budget_row *rows, int64_t budget, FILE *f)
{
    kvrt_json j;
    kvrt_json_init(&j, f);
    kvrt_json_begin_object(&j, NULL);
    json_run_fields(&j, r);
    kvrt_json_int(&j, "max_context", r->max_context);
    kvrt_json_int(&j, "max_seqs", r->o.max_seqs);
    kvrt_json_int(&j, "max_batched_tokens", r->o.max_batched_tokens);
    kvrt_json_int(&j, "kv_budget_bytes", budget);
    kvrt_json_begin_array(&j, "kv_types");
    for (int i = 0; i < r->o.n_kv_list; i++) {
        const budget_row *b = &rows[i];
        kvrt_json_begin_object(&j, NULL);
        kvrt_json_str(&j, "kv_type_k", kvrt_dtype_name(b->t.k));
        kvrt_json_str(&j, "kv_type_v", kvrt_dtype_name(b->t.v));
        kvrt_json_int(&j, "block_bytes", b->block_bytes);
        kvrt_json_int(&j, "blocks", b->blocks);
        if (b->skipped) {
            kvrt_json_str(&j, "skipped", b->skipped);
        } else {
            kvrt_json_num(&j, "seqs_per_step_mean", b->s.seqs_mean);
            kvrt_json_num(&j, "seqs_per_step_max", b->s.seqs_max);
            kvrt_json_int(&j, "preemptions", b->s.preemptions);
            kvrt_json_int(&j, "output_tokens", b->s.out_tokens);
            kvrt_json_num(&j, "seconds", b->s.seconds);
            kvrt_json_num(&j, "output_tokens_per_s", b->s.tok_s);
            json_triple(&j, "ttft_ms", b->s.ttft);
            json_triple(&j, "tpot_ms", b->s.tpot);
            kvrt_json_num(&j, "kv_utilization", b->s.kv_util);
            kvrt_json_int(&j, "kv_bytes", (int64_t)b->s.kv_bytes);
            kvrt_json_int(&j, "steps", b->s.steps);
        }
        kvrt_json_end_object(&j);
    }
    kvrt_json_end_array(&j);
    kvrt_json_end_object(&j);
    fputc('\n', f);
}

static kvrt_status run_budget_report(kvrt_model *model, serve_run *r, gen_ctx *g, kvrt_error *err)
{
    budget_row rows[MAX_KV_TYPES];
    memset(rows, 0, sizeof(rows));
    int64_t budget = 0;
    KVRT_TRY(run_budget(model, r, g, rows, &budget, err));
    print_budget(r, rows, budget, r->o.json ? stderr : stdout);
    if (r->o.json)
        print_budget_json(r, rows, budget, stdout);
    return KVRT_OK;
}

/* ---- main ------------------------------------------------------------------------ */

static kvrt_status run_all(kvrt_model *model, serve_run *r, gen_ctx *g, kvrt_error *err)
{
    workload w[4];
    memset(w, 0, sizeof(w));
    int32_t n = r->o.requests;
    kvrt_status st = KVRT_OK;
    if (!make_sharegpt(g, n, &w[0]) || !make_sysprompt(g, n, &w[1]) || !make_parallel(g, KVRT_MAX(1, n / 4), &w[2]) ||
        !make_burst(g, n, &w[3]))
        st = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "workloads of %d requests", (int)n);
    bool tty = isatty(fileno(stderr)) != 0;
    run_cfg c[W_COUNT];
    const workload *wl[W_COUNT] = {&w[0], &w[0], &w[0], &w[1], &w[1], &w[2], &w[3], &w[3], &w[3]};
    static const char *const names[W_COUNT] = {"sharegpt", "sharegpt", "sharegpt", "sysprompt", "sysprompt",
                                               "parallel", "burst", "burst", "burst"};
    static const char *const modes[W_COUNT] = {"continuous", "static", "static-shrinking", "prefix-cache-on",
                                               "prefix-cache-off", "n=4", "small-pool", "small-pool-swap",
                                               "small-pool-offload"};
    for (int i = 0; i < W_COUNT; i++) {
        c[i] = (run_cfg){.name = names[i], .mode_name = modes[i], .ep = r->ep, .tty = tty,
                         .mode = i == W_SHARE_STATIC ? MODE_STATIC_PADDED : i == W_SHARE_SHRINK ? MODE_STATIC
                                                                                                    : MODE_CONTINUOUS};
    }
    c[W_SYS_OFF].ep.enable_prefix_cache = 0;
    /* burst: the pool holds a quarter of a full step's sequences at their full length */
    int32_t bs = r->ep.block_size;
    int32_t per_req = w[3].n ? (w[3].r[0].n_prompt + w[3].r[0].max_tokens + bs - 1) / bs : 1;
    c[W_BURST].ep.num_blocks = per_req * KVRT_MAX(1, KVRT_MIN(n, r->ep.max_seqs) / 4);
    for (int i = W_BURST_SWAP; i <= W_BURST_OFFLOAD; i++) {
        c[i].ep.num_blocks = c[W_BURST].ep.num_blocks;
        c[i].ep.num_host_blocks = per_req * KVRT_MAX(1, w[3].n); /* the host tier holds every request */
        c[i].ep.preempt_mode = i == W_BURST_SWAP ? KVRT_PREEMPT_SWAP : KVRT_PREEMPT_OFFLOAD;
    }
    /* Warm-up (not reported): the first forwards fault in weights and scratch. */
    workload warm = {.r = w[0].r, .n = KVRT_MIN(w[0].n, 8)};
    run_cfg wc = c[W_SHARE_CONT];
    wc.tty = false;
    wc.quiet = true;
    wc.mode_name = "warm-up";
    wl_stats ws;
    if (st == KVRT_OK)
        st = run_workload(model, &warm, &wc, &ws, err);
    for (int i = 0; st == KVRT_OK && i < W_COUNT; i++)
        st = run_workload(model, wl[i], &c[i], &r->st[i], err);
    for (int i = 0; i < 4; i++)
        workload_free(&w[i]);
    return st;
}

int kvrt_bench_serve_main(int argc, char **argv)
{
    serve_run r;
    memset(&r, 0, sizeof(r));
    int rc = parse_args(argc, argv, &r.o);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    char shipped[4096];
    if (!r.o.model && !(r.o.model = kvrt_tool_shipped_model(shipped, sizeof(shipped)))) {
        kvrt_cli_error(PROG, "no --model given, and the shipped stories260K.gguf is neither in models/ here "
                       "nor installed beside this tool (%s from its folder): pass --model FILE", KVRT_BIN_TO_MODELS);
        return KVRT_CLI_USAGE;
    }
    kvrt_error err = {KVRT_OK, ""};
    kvrt_context_params cp = kvrt_context_default_params();
    kvrt_cli_common_context_params(&r.o.common, &cp);
    kvrt_context *ctx = NULL;
    kvrt_model *model = NULL;
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = r.o.model;
    mp.max_context = 512;
    kvrt_status st = kvrt_context_create(&cp, &ctx, &err);
    kvrt_model_info mi;
    if (st == KVRT_OK) {
        kvrt_model_params probe = mp;
        probe.max_context = 0; /* the file's; then at most 512 */
        st = kvrt_model_load(ctx, &probe, &model, &err);
        if (st == KVRT_OK)
            st = kvrt_model_get_info(model, &mi);
        if (st == KVRT_OK && mi.n_ctx_train > 512) {
            kvrt_model_destroy(model);
            model = NULL;
            st = kvrt_model_load(ctx, &mp, &model, &err);
        }
    }
    if (st == KVRT_OK) {
        r.device = kvrt_context_description(ctx);
        r.max_context = KVRT_MIN(512, mi.n_ctx_train > 0 ? mi.n_ctx_train : 512);
        r.ep = kvrt_engine_default_params();
        r.ep.max_context = r.max_context;
        r.ep.block_size = r.o.block_size;
        r.ep.kv_type = r.o.kv_type;
        r.ep.kv_type_v_set = 1;
        r.ep.kv_type_v = r.o.kv_type_v;
        r.ep.max_seqs = r.o.max_seqs;
        r.ep.max_batched_tokens = r.o.max_batched_tokens;
        r.ep.num_blocks = 0; /* max_seqs full contexts */
        r.ep.clock = engine_clock;
        r.ep.prompt_cache_dir = r.o.prompt_cache;
        r.ep.prompt_cache_max_bytes = (uint64_t)r.o.prompt_cache_max << 20;
        gen_ctx g = {.rng = {r.o.seed}, .n_vocab = mi.n_vocab, .bos = mi.bos_id, .max_context = r.max_context};
        st = r.o.workload ? run_replay(model, &r, &g, &err)
             : r.o.n_kv_list > 0 ? run_budget_report(model, &r, &g, &err)
                                 : run_all(model, &r, &g, &err);
    }
    if (st == KVRT_OK && (r.o.workload || r.o.n_kv_list > 0)) {
        /* printed by run_replay / run_budget_report */
    } else if (st == KVRT_OK) {
        FILE *table = r.o.json ? stderr : stdout;
        print_table(&r, table);
        if (r.o.json)
            print_json(&r, stdout);
    } else {
        kvrt_cli_error(PROG, "%s", err.message);
    }
    kvrt_model_destroy(model);
    kvrt_tool_save_caches(PROG, ctx);
    kvrt_context_destroy(ctx);
    return st == KVRT_OK ? 0 : 1;
}
