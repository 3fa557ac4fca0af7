/*
 * kvrt-bench model: prefill and decode tokens/s of whole models, per weight
 * type and thread count.
 *
 * The models are synthetic (random weights, real shapes: kvrt_synth_write),
 * written one at a time to a temporary folder and deleted after use, or a
 * file the user names. Decode streams every weight once per token, so each
 * decode row also reports the weight bytes it read per second and that rate
 * as a share of the memory bandwidth measured in the same run on the same
 * number of threads (bench.c): the number that says how far the CPU path is
 * from what the memory allows.
 *
 * A second table shows what the KV cache buys: n generation steps done with
 * the cache (one new token per step) against recomputing the whole prefix
 * at every step in an emptied session (the same logits, O(n^2) work).
 */
#include "bench_model.h"

#include "bench.h"
#include "cli.h"
#include "files.h"
#include "json.h"
#include "openblas_core.h"
#include "profile_report.h"
#include "table.h"

#include "kvrt_tool_internal.h"
#include "model/synth.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const PROG = "kvrt-bench model";

#define MAX_LIST 16
#define NAME_MAX_LEN 64

/* Target the issue sets (reported, never asserted). */
#define TARGET_PCT_BANDWIDTH 70.0
#define TARGET_MODEL "110m"

/* --quick: one small model whose rows are multiples of the quant block. */
#define QUICK_MODEL "quick"

typedef struct model_opts {
    kvrt_cli_common common;     /* --backend --device -t --pipeline-cache --kv-type --block-size -v */
    kvrt_backend_kind backend;  /* the common flags' values, resolved (auto chosen) */
    const char *pipeline_cache; /* --pipeline-cache FILE; NULL = none */
    bool json, quick;
    bool profile;                           /* --profile: time per op on the benchmarked contexts */
    bool cpu_compare;                       /* GPU backend: every row again on the CPU backend */
    const char *model_path;                 /* --model FILE, or NULL: synthetic models */
    char presets[MAX_LIST][NAME_MAX_LEN];   /* synthetic shapes (kvrt_synth_preset names) */
    int n_presets;
    kvrt_quant_mix types[MAX_LIST];         /* weight types or presets of the synthetic models */
    int n_types;
    int32_t threads[MAX_LIST];
    int n_threads;
    bool blas[2];                           /* --blas: OpenBLAS on (true) / off per context, in order */
    int n_blas;
    kvrt_dtype kv_type;         /* K's */
    kvrt_dtype kv_type_v;       /* V's */
    int32_t block_size;
    int32_t prompt_len, gen, reps;
    int32_t cache_lens[MAX_LIST];           /* steps of the KV-cache table; none = no table */
    int n_cache_lens;
    char cache_preset[NAME_MAX_LEN];
} model_opts;

/* One (model file, thread count) measurement. */
typedef struct model_result {
    char model[NAME_MAX_LEN];
    kvrt_dtype type;            /* type of most matrices */
    char label[16];             /* the synthetic model's type or preset; the type of most matrices of a file */
    int32_t threads;
    bool blas;                  /* OpenBLAS allowed on the CPU (KVRT_FEATURE_BLAS not disabled) */
    uint64_t n_params;
    uint64_t weight_bytes;      /* the whole file's weights */
    uint64_t bytes_per_token;   /* weights one decode step reads */
    double prefill_s;           /* best time of the prompt, one chunk */
    double decode_s;            /* best time of `gen` single-token steps after it */
    double prefill_proc_s, decode_proc_s; /* least process CPU time (all threads) of each, over the reps */
    bool have_cpu;              /* the same file and tokens on the CPU backend (GPU runs only) */
    double cpu_prefill_s, cpu_decode_s;
    int bw_index;               /* run->bw[] measured on as many threads */
} model_result;

/* The KV-cache table: cumulative times after each listed number of steps. */
typedef struct cache_row {
    int32_t steps;
    double cached_s, recompute_s;
    int64_t recompute_tokens;   /* tokens the recomputing session evaluated */
} cache_row;

typedef struct cache_table {
    bool done;
    char model[NAME_MAX_LEN];
    kvrt_dtype type;
    int32_t threads;
    double max_abs_diff;        /* logits, cached vs recomputed, every step */
    double max_abs_logit;       /* for scale */
    cache_row rows[MAX_LIST];
    int n_rows;
} cache_table;

typedef struct model_run {
    model_opts o;
    const char *device;
    size_t llc;
    kvrt_context *ctxs[MAX_LIST][2];  /* per thread count and --blas mode */
    kvrt_context *cpu_ctxs[MAX_LIST][2]; /* CPU backend, the same; GPU runs with the comparison only */
    kvrt_bench_bw bw[MAX_LIST];
    model_result *res;
    int n_res, cap_res;
    cache_table cache;
} model_run;

/* ---- temporary files (removed on exit, also on Ctrl-C) ----------------------------- */

/* Paths the tools' signal handler (files.c) removes while they are set. */
static char g_tmp_dir[PATH_MAX];
static char g_tmp_file[PATH_MAX];

static void remove_tmp(void)
{
    kvrt_tool_scratch_forget(g_tmp_file);
    kvrt_tool_scratch_forget(g_tmp_dir);
    if (g_tmp_file[0])
        unlink(g_tmp_file);
    if (g_tmp_dir[0])
        rmdir(g_tmp_dir);
}

static kvrt_status make_tmp_dir(kvrt_error *err)
{
    const char *base = getenv("TMPDIR");
    int len = snprintf(g_tmp_dir, sizeof(g_tmp_dir), "%s/kvrt-bench-model-XXXXXX", base && *base ? base : "/tmp");
    if (len < 0 || (size_t)len >= sizeof(g_tmp_dir) - NAME_MAX_LEN || !mkdtemp(g_tmp_dir)) {
        g_tmp_dir[0] = '\0';
        return kvrt_fail(err, KVRT_ERR_IO, "cannot create a temporary folder under %s", base ? base : "/tmp");
    }
    kvrt_tool_scratch_add(g_tmp_file, false);
    kvrt_tool_scratch_add(g_tmp_dir, true);
    return KVRT_OK;
}

/* ---- arguments ---------------------------------------------------------------------- */

/* Splits "a,b,c" into at most MAX_LIST items of < NAME_MAX_LEN bytes. */
static bool split_list(const char *flag, const char *s, char items[MAX_LIST][NAME_MAX_LEN], int *n)
{
    *n = 0;
    for (const char *p = s;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0 || len >= NAME_MAX_LEN || *n == MAX_LIST) {
            kvrt_cli_error(PROG, "%s: bad list '%s' (at most %d items, comma-separated)", flag, s, MAX_LIST);
            return false;
        }
        memcpy(items[*n], p, len);
        items[(*n)++][len] = '\0';
        if (!comma)
            return true;
        p = comma + 1;
    }
}

/* Weight types and presets, as kvrt-quantize names them (model/quant_mix.h). */
static bool parse_types(const char *prog, const char *flag, const char *s, void *dst)
{
    model_opts *o = dst;
    char items[MAX_LIST][NAME_MAX_LEN];
    if (!split_list(flag, s, items, &o->n_types))
        return false;
    for (int i = 0; i < o->n_types; i++) {
        if (!kvrt_quant_mix_find(items[i], false, &o->types[i])) {
            kvrt_cli_error(prog, "%s: unknown value '%s' (one of: %s)", flag, items[i], kvrt_quant_mix_names());
            return false;
        }
    }
    return true;
}

/* "on", "off", "on,off" or "off,on". */
static bool parse_blas(const char *prog, const char *flag, const char *s, void *dst)
{
    static const char *const names[] = {"off", "on"};
    model_opts *o = dst;
    char items[MAX_LIST][NAME_MAX_LEN];
    int n;
    if (!split_list(flag, s, items, &n))
        return false;
    if (n > 2 || (n == 2 && strcmp(items[0], items[1]) == 0)) {
        kvrt_cli_error(prog, "%s: on, off, or both once ('%s')", flag, s);
        return false;
    }
    for (int i = 0; i < n; i++) {
        int v = kvrt_cli_choice(prog, flag, items[i], names, 2);
        if (v < 0)
            return false;
        o->blas[i] = v == 1;
    }
    o->n_blas = n;
    return true;
}

static bool check_preset(const char *flag, const char *name)
{
    kvrt_synth_params p;
    if (kvrt_synth_preset(name, &p))
        return true;
    kvrt_cli_error(PROG, "%s: unknown preset '%s' (tiny, 15m, 110m, 1b, 7b)", flag, name);
    return false;
}

static bool parse_presets(const char *prog, const char *flag, const char *s, void *dst)
{
    model_opts *o = dst;
    bool ok = split_list(flag, s, o->presets, &o->n_presets);
    for (int k = 0; ok && k < o->n_presets; k++)
        ok = check_preset(flag, o->presets[k]);
    return ok;
}

static bool parse_cache_lens(const char *prog, const char *flag, const char *s, void *dst)
{
    model_opts *o = dst;
    if (strcmp(s, "none") == 0) {
        o->n_cache_lens = 0;
        return true;
    }
    return kvrt_cli_int_list(prog, flag, s, 1, 1 << 16, true, o->cache_lens, MAX_LIST, &o->n_cache_lens);
}

static bool parse_cache_preset(const char *prog, const char *flag, const char *s, void *dst)
{
    model_opts *o = dst;
    if (!check_preset(flag, s)) /* the presets' names are short: a known one fits */
        return false;
    snprintf(o->cache_preset, NAME_MAX_LEN, "%s", s);
    return true;
}

static void default_opts(model_opts *o)
{
    memset(o, 0, sizeof(*o));
    kvrt_cli_common_init(&o->common, KVRT_DTYPE_F16, MAX_LIST);
    snprintf(o->presets[0], NAME_MAX_LEN, "15m");
    snprintf(o->presets[1], NAME_MAX_LEN, "110m");
    o->n_presets = 2;
    kvrt_quant_mix_find("f32", false, &o->types[0]);
    kvrt_quant_mix_find("f16", false, &o->types[1]);
    kvrt_quant_mix_find("q8_0", false, &o->types[2]);
    o->n_types = 3;
    o->blas[0] = true;
    o->n_blas = 1;
    o->prompt_len = 128;
    o->gen = 64;
    o->reps = 3;
    static const int32_t lens[] = {16, 32, 64, 128, 256};
    memcpy(o->cache_lens, lens, sizeof(lens));
    o->n_cache_lens = (int)KVRT_ARRAY_LEN(lens);
    snprintf(o->cache_preset, NAME_MAX_LEN, "15m");
}

/* --quick replaces whatever the user did not set with a seconds-long run. */
typedef struct given_flags {
    bool preset, prompt, gen, reps, cache_lens, cache_preset;
} given_flags;

static void apply_quick(model_opts *o, const given_flags *g)
{
    if (!o->quick)
        return;
    if (!g->preset) {
        snprintf(o->presets[0], NAME_MAX_LEN, QUICK_MODEL);
        o->n_presets = 1;
    }
    if (!g->cache_preset)
        snprintf(o->cache_preset, NAME_MAX_LEN, QUICK_MODEL);
    if (!g->prompt)
        o->prompt_len = 16;
    if (!g->gen)
        o->gen = 8;
    if (!g->reps)
        o->reps = 2;
    if (!g->cache_lens) {
        static const int32_t lens[] = {4, 8, 16};
        memcpy(o->cache_lens, lens, sizeof(lens));
        o->n_cache_lens = (int)KVRT_ARRAY_LEN(lens);
    }
}

/* The common flags' values for the rest of the benchmark; -t defaults to 1,2
 * on the CPU, and to all cores on a GPU (the host threads hardly matter to
 * it; the CPU it is compared with gets all cores). */
static void apply_common(model_opts *o)
{
    const kvrt_cli_common *c = &o->common;
    o->backend = c->backend;
    o->pipeline_cache = c->pipeline_cache;
    o->kv_type = c->kv_type;
    o->kv_type_v = c->kv_type_v;
    o->block_size = c->block_size;
    if (c->n_threads > 0) {
        memcpy(o->threads, c->threads, sizeof(o->threads));
        o->n_threads = c->n_threads;
    } else if (o->backend == KVRT_BACKEND_CPU) {
        o->threads[0] = 1;
        o->threads[1] = 2;
        o->n_threads = 2;
    } else {
        o->threads[0] = 0;
        o->n_threads = 1;
    }
}

#define INT_OPT(NAME, DST, SEEN, MAX, HELP)                                                               \
    {.name = (NAME), .kind = KVRT_CLI_KIND_INT32, .dst = (DST), .min = 1, .max = (MAX),                   \
     .flags = KVRT_CLI_K_SUFFIX, .meta = "N", .help = (HELP), .seen = (SEEN)}

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, model_opts *o)
{
    given_flags g = {0};
    bool no_cpu_compare = false;
    default_opts(o);
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_BOOL(0, "json", &o->json, "one JSON document on stdout; the tables go to stderr"),
        KVRT_CLI_BOOL(0, "quick", &o->quick, "one small synthetic model, few tokens (seconds; for tests)"),
        KVRT_CLI_STR('m', "model", &o->model_path, "FILE", "benchmark this GGUF / llama2.c file instead of synthetic ones"),
        {.name = "preset", .kind = KVRT_CLI_KIND_CALL, .call = parse_presets, .dst = o, .meta = "LIST",
         .help = "synthetic shapes: tiny, 15m, 110m, 1b, 7b (default 15m,110m)", .seen = &g.preset},
        KVRT_CLI_CALL(0, "type", parse_types, o, "LIST",
                      "synthetic weight types or presets, as kvrt-quantize takes them\n"
                      "(Q4_K_M, Q6_K, q4_K, f16, ...; default f32,f16,q8_0)"),
        INT_OPT("prompt-len", &o->prompt_len, &g.prompt, 1 << 16, "prefill tokens (default 128)"),
        INT_OPT("gen", &o->gen, &g.gen, 1 << 16, "decode tokens (default 64)"),
        INT_OPT("reps", &o->reps, &g.reps, 1000, "repetitions, best reported (default 3)"),
        {.name = "cache-lens", .kind = KVRT_CLI_KIND_CALL, .call = parse_cache_lens, .dst = o, .meta = "LIST",
         .help = "steps of the KV-cache table (default 16,32,64,128,256; none = skip),\n"
                 "run on the 15m shape (--cache-preset), first --type, first -t",
         .seen = &g.cache_lens},
        {.name = "cache-preset", .kind = KVRT_CLI_KIND_CALL, .call = parse_cache_preset, .dst = o, .meta = "P",
         .help = "shape of the KV-cache table (default 15m)", .seen = &g.cache_preset},
        KVRT_CLI_BOOL(0, "no-cpu-compare", &no_cpu_compare,
                      "on vulkan/opencl, do not run every row on the CPU backend too\n"
                      "(by default it does, on the row's threads, and reports speed ratios)"),
        KVRT_CLI_CALL(0, "blas", parse_blas, o, "LIST",
                      "CPU: on (OpenBLAS for products of many tokens, the default), off\n"
                      "(kvrt's own GEMM), or on,off: every row both ways, one after the other"),
        KVRT_CLI_BOOL(0, "profile", &o->profile,
                      "time per op of everything run on --backend (per thread count; device\n"
                      "time on GPUs) as a table, and as \"profile\" in the JSON; rows are\n"
                      "measured with profiling on"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-bench model [--backend auto] [-t LIST] [--json] [--quick] [--model FILE]\n"
                 "                        [--preset LIST] [--type LIST] [--kv-type TYPE] [--block-size N]\n"
                 "                        [--prompt-len N] [--gen N] [--reps N] [--cache-lens LIST|none]\n"
                 "                        [--no-cpu-compare] [--pipeline-cache FILE] [--profile] [--device N|NAME]\n"
                 "                        [--blas on|off|on,off]",
        .about = "Prefill (one chunk of --prompt-len tokens) and decode (--gen tokens after it) tokens/s,\n"
                 "best of --reps, on synthetic random-weight models written to a temporary folder and\n"
                 "deleted afterwards; decode weight traffic as a share of the memory bandwidth measured\n"
                 "in the same run; then generation time with and without the KV cache as the length grows.\n"
                 "-t takes a list (default 1,2; on vulkan/opencl all cores).",
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
    o->cpu_compare = !no_cpu_compare;
    apply_common(o);
    apply_quick(o, &g);
    return KVRT_CLI_CONTINUE;
}

/* ---- models ------------------------------------------------------------------------- */

/* The shape of a preset, or of the --quick model. */
static void synth_params(const char *preset, const kvrt_quant_mix *type, kvrt_synth_params *p)
{
    if (strcmp(preset, QUICK_MODEL) == 0) {
        kvrt_synth_preset("tiny", p);
        p->hp.n_vocab = 512;
        p->hp.n_embd = 64;
        p->hp.n_layer = 2;
        p->hp.n_ff = 128;
        p->hp.n_head = 4;
        p->hp.n_head_kv = 2;
        p->hp.n_ctx_train = 256;
    } else {
        kvrt_synth_preset(preset, p);
    }
    p->type = type->base;
    p->mix = type;
}

/* Prints the writer's progress when the whole percentage changes. */
static void write_progress(void *user, double fraction)
{
    int *last = user, pct = (int)(fraction * 100.0);
    if (pct == *last)
        return;
    *last = pct;
    fprintf(stderr, "\r  writing: %3d%%", pct);
    if (fraction >= 1.0)
        fputc('\n', stderr);
}

static kvrt_status write_synth(const char *preset, const kvrt_quant_mix *type, kvrt_error *err)
{
    kvrt_synth_params p;
    synth_params(preset, type, &p);
    int len = snprintf(g_tmp_file, sizeof(g_tmp_file), "%s/%s-%s.gguf", g_tmp_dir, preset, type->name);
    if (len < 0 || (size_t)len >= sizeof(g_tmp_file)) {
        g_tmp_file[0] = '\0';
        return kvrt_fail(err, KVRT_ERR_IO, "temporary path too long under %s", g_tmp_dir);
    }
    fprintf(stderr, "%s: synthetic %s %s -> %s\n", PROG, preset, type->name, g_tmp_file);
    int last = -1;
    kvrt_load_progress progress = {write_progress, &last};
    FILE *f = fopen(g_tmp_file, "wb");
    if (!f)
        return kvrt_fail(err, KVRT_ERR_IO, "cannot create %s", g_tmp_file);
    /* a percentage that rewrites its line is for terminals, not for logs */
    kvrt_status st = kvrt_synth_write(&p, NULL, f, isatty(STDERR_FILENO) ? &progress : NULL, err);
    if (fclose(f) != 0 && st == KVRT_OK)
        st = kvrt_fail(err, KVRT_ERR_IO, "writing %s failed", g_tmp_file);
    return st;
}

static void remove_synth(void)
{
    if (g_tmp_file[0])
        unlink(g_tmp_file);
    g_tmp_file[0] = '\0';
}

static int32_t max_cache_len(const model_opts *o)
{
    int32_t n = 0;
    for (int i = 0; i < o->n_cache_lens; i++)
        n = KVRT_MAX(n, o->cache_lens[i]);
    return n;
}

static int32_t needed_context(const model_opts *o)
{
    return KVRT_MAX(o->prompt_len + o->gen, max_cache_len(o));
}

static kvrt_status load_model(kvrt_context *ctx, const model_opts *o, const char *path, kvrt_model **m,
                              kvrt_error *err)
{
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    mp.max_context = needed_context(o);
    return kvrt_model_load(ctx, &mp, m, err);
}

static kvrt_status new_session(kvrt_model *m, const model_opts *o, int32_t n_ctx, kvrt_session **s, kvrt_error *err)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_batch = n_ctx; /* every prompt is one chunk */
    sp.kv_type = o->kv_type;
    sp.kv_type_v_set = 1;
    sp.kv_type_v = o->kv_type_v;
    sp.block_size = o->block_size;
    return kvrt_session_create(m, &sp, s, err);
}

static int32_t argmax(const float *x, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        best = x[i] > x[best] ? i : best;
    return best;
}

static kvrt_status session_eval(kvrt_session *s, const int32_t *toks, int32_t n, float *logits, kvrt_error *err)
{
    kvrt_status st = kvrt_session_eval(s, toks, n, logits, NULL);
    return st == KVRT_OK ? KVRT_OK : kvrt_fail(err, st, "eval: %s", kvrt_session_message(s));
}

/* BOS, then ids spread over the vocabulary (any ids will do for speed). */
static void make_prompt(const kvrt_model_info *info, int32_t *toks, int32_t n)
{
    kvrt_bench_rng rng = {12345};
    for (int32_t i = 0; i < n; i++) {
        float u = kvrt_bench_rng_f32(&rng) * 0.5f + 0.5f;
        toks[i] = KVRT_MIN((int32_t)(u * (float)info->n_vocab), info->n_vocab - 1);
    }
    if (info->bos_id >= 0)
        toks[0] = info->bos_id;
}

/* ---- throughput --------------------------------------------------------------------- */

/* Prefill the prompt in one chunk, then `gen` greedy single-token steps; best of reps. */
static kvrt_status time_throughput(kvrt_model *m, const model_opts *o, model_result *r, kvrt_error *err)
{
    kvrt_model_info info;
    kvrt_model_get_info(m, &info);
    int32_t *toks = malloc((size_t)o->prompt_len * sizeof(int32_t));
    float *logits = malloc((size_t)info.n_vocab * sizeof(float));
    kvrt_session *s = NULL;
    kvrt_status st = toks && logits ? KVRT_OK : kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "prompt buffers");
    if (st == KVRT_OK)
        st = new_session(m, o, o->prompt_len + o->gen, &s, err);
    if (st == KVRT_OK) {
        make_prompt(&info, toks, o->prompt_len);
        /* warm-up: faults the mapped weights in and wakes the pool */
        st = session_eval(s, toks, o->prompt_len, logits, err);
    }
    r->prefill_s = r->decode_s = r->prefill_proc_s = r->decode_proc_s = 1e30;
    for (int rep = 0; st == KVRT_OK && rep < o->reps; rep++) {
        kvrt_session_reset(s);
        double c0 = kvrt_bench_process_cpu_s(), t0 = kvrt_bench_now();
        st = session_eval(s, toks, o->prompt_len, logits, err);
        double c1 = kvrt_bench_process_cpu_s(), t1 = kvrt_bench_now();
        for (int32_t g = 0; st == KVRT_OK && g < o->gen; g++) {
            int32_t tok = argmax(logits, info.n_vocab);
            st = session_eval(s, &tok, 1, logits, err);
        }
        double c2 = kvrt_bench_process_cpu_s(), t2 = kvrt_bench_now();
        r->prefill_s = KVRT_MIN(r->prefill_s, t1 - t0);
        r->decode_s = KVRT_MIN(r->decode_s, t2 - t1);
        r->prefill_proc_s = KVRT_MIN(r->prefill_proc_s, c1 - c0);
        r->decode_proc_s = KVRT_MIN(r->decode_proc_s, c2 - c1);
    }
    kvrt_session_destroy(s);
    free(toks);
    free(logits);
    return st;
}

static kvrt_status add_result(model_run *run, model_result **out, kvrt_error *err)
{
    if (run->n_res == run->cap_res) {
        int cap = run->cap_res ? 2 * run->cap_res : 16;
        model_result *res = realloc(run->res, (size_t)cap * sizeof(*res));
        if (!res)
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "results");
        run->res = res;
        run->cap_res = cap;
    }
    *out = &run->res[run->n_res++];
    memset(*out, 0, sizeof(**out));
    return KVRT_OK;
}

static double tok_per_s(int32_t n, double s)
{
    return s > 0 ? (double)n / s : NAN;
}

static double decode_gbs(const model_opts *o, const model_result *r)
{
    return (double)r->bytes_per_token * tok_per_s(o->gen, r->decode_s) * 1e-9;
}

static double row_bw(const model_run *run, const model_result *r)
{
    return run->bw[r->bw_index].read_gbs;
}

static double pct_bw(const model_run *run, const model_result *r)
{
    return 100.0 * decode_gbs(&run->o, r) / row_bw(run, r);
}

/* Measures the bandwidth again right before a row: the machine is shared and
 * its bandwidth drifts, so the ratio's denominator is the best seen in the
 * whole run on as many threads (a ratio can only err low). */
static kvrt_status refresh_bandwidth(model_run *run, int ti, kvrt_error *err)
{
    kvrt_bench_bw bw;
    if (run->o.quick)
        return KVRT_OK;
    KVRT_TRY(kvrt_bench_bandwidth(run->o.threads[ti], 4 * run->llc, 2, &bw, err));
    kvrt_bench_bw *best = &run->bw[ti];
    best->read_gbs = KVRT_MAX(best->read_gbs, bw.read_gbs);
    best->copy_gbs = KVRT_MAX(best->copy_gbs, bw.copy_gbs);
    best->passes += bw.passes;
    return KVRT_OK;
}

/* ---- the KV-cache table ------------------------------------------------------------- */

static void compare_logits(cache_table *t, const float *a, const float *b, int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        t->max_abs_diff = (d > t->max_abs_diff || isnan(d)) ? d : t->max_abs_diff;
        t->max_abs_logit = KVRT_MAX(t->max_abs_logit, fabs((double)a[i]));
    }
}

/* One step of each: the cached session takes token `step`, the other recomputes 0..step. */
static kvrt_status cache_step(kvrt_session *cached, kvrt_session *fresh, const int32_t *toks, int32_t step,
                              float *la, float *lb, double *ta, double *tb, kvrt_error *err)
{
    double t0 = kvrt_bench_now();
    KVRT_TRY(session_eval(cached, &toks[step], 1, la, err));
    double t1 = kvrt_bench_now();
    kvrt_session_reset(fresh); /* an empty sequence, as a new session would be, without the allocation */
    KVRT_TRY(session_eval(fresh, toks, step + 1, lb, err));
    double t2 = kvrt_bench_now();
    *ta += t1 - t0;
    *tb += t2 - t1;
    return KVRT_OK;
}

/* Greedy generation from BOS for max(lens) steps, both ways at once; the
 * cumulative times are recorded as each listed length is reached. */
static kvrt_status time_cache_table(kvrt_model *m, const model_opts *o, cache_table *t, kvrt_error *err)
{
    kvrt_model_info info;
    kvrt_model_get_info(m, &info);
    int32_t n = needed_context(o);
    int32_t *toks = malloc((size_t)n * sizeof(int32_t));
    float *la = malloc((size_t)info.n_vocab * sizeof(float)), *lb = malloc((size_t)info.n_vocab * sizeof(float));
    kvrt_session *cached = NULL, *fresh = NULL;
    kvrt_status st = toks && la && lb ? KVRT_OK : kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "cache table buffers");
    if (st == KVRT_OK)
        st = new_session(m, o, n, &cached, err);
    if (st == KVRT_OK)
        st = new_session(m, o, n, &fresh, err);
    int32_t max_steps = max_cache_len(o);
    double ta = 0.0, tb = 0.0;
    int64_t recomputed = 0;
    if (st == KVRT_OK)
        make_prompt(&info, toks, 1);
    for (int32_t step = 0; st == KVRT_OK && step < max_steps; step++) {
        st = cache_step(cached, fresh, toks, step, la, lb, &ta, &tb, err);
        if (st != KVRT_OK)
            break;
        recomputed += step + 1;
        compare_logits(t, la, lb, info.n_vocab);
        if (step + 1 < n)
            toks[step + 1] = argmax(la, info.n_vocab);
        for (int i = 0; i < o->n_cache_lens; i++) {
            if (o->cache_lens[i] != step + 1)
                continue;
            cache_row *row = &t->rows[i];
            row->steps = step + 1;
            row->cached_s = ta;
            row->recompute_s = tb;
            row->recompute_tokens = recomputed;
        }
    }
    t->n_rows = o->n_cache_lens;
    t->done = st == KVRT_OK;
    kvrt_session_destroy(cached);
    kvrt_session_destroy(fresh);
    free(toks);
    free(la);
    free(lb);
    return st;
}

/* ---- one model file ------------------------------------------------------------------ */

/* The same file, prompt and steps on the CPU backend, for the speed ratios of a GPU row. */
static kvrt_status time_on_cpu(kvrt_context *cpu, const model_opts *o, const char *path, model_result *r,
                               kvrt_error *err)
{
    kvrt_model *m = NULL;
    model_result c;
    memset(&c, 0, sizeof(c));
    fprintf(stderr, "%s: the same on the CPU backend\n", PROG);
    kvrt_status st = load_model(cpu, o, path, &m, err);
    if (st == KVRT_OK)
        st = time_throughput(m, o, &c, err);
    if (st == KVRT_OK) {
        r->cpu_prefill_s = c.prefill_s;
        r->cpu_decode_s = c.decode_s;
        r->have_cpu = true;
    }
    kvrt_model_destroy(m);
    return st;
}

/* Throughput of one thread count and --blas mode (when `throughput`), and
 * the KV-cache table (when `do_cache`: the first of them; the table compares
 * algorithms, not thread counts, and one thread is the least disturbed on a
 * shared machine). */
static kvrt_status bench_config(model_run *run, const char *path, const char *name, const char *label,
                                bool throughput, bool do_cache, int ti, int bi, kvrt_error *err)
{
    const model_opts *o = &run->o;
    if (!throughput && !do_cache)
        return KVRT_OK;
    kvrt_model *m = NULL;
    kvrt_status st = load_model(run->ctxs[ti][bi], o, path, &m, err);
    kvrt_model_info info;
    if (st == KVRT_OK)
        st = kvrt_model_get_info(m, &info);
    model_result *r = NULL;
    if (st == KVRT_OK && throughput) {
        fprintf(stderr, "%s: %s %s, %d thread(s), OpenBLAS %s: prefill %d + decode %d tokens, best of %d\n", PROG,
                name, kvrt_dtype_name(info.weight_type), (int)o->threads[ti], o->blas[bi] ? "on" : "off",
                (int)o->prompt_len, (int)o->gen, (int)o->reps);
        st = add_result(run, &r, err);
    }
    if (r) {
        snprintf(r->model, NAME_MAX_LEN, "%s", name);
        r->type = info.weight_type;
        snprintf(r->label, sizeof(r->label), "%s", label ? label : kvrt_dtype_name(info.weight_type));
        r->threads = o->threads[ti];
        r->blas = o->blas[bi];
        r->n_params = info.n_params;
        r->weight_bytes = info.weight_bytes;
        r->bytes_per_token = kvrt_tool_decode_weight_bytes(m);
        r->bw_index = ti;
        st = refresh_bandwidth(run, ti, err);
        if (st == KVRT_OK)
            st = time_throughput(m, o, r, err);
        if (st == KVRT_OK && run->cpu_ctxs[ti][bi])
            st = time_on_cpu(run->cpu_ctxs[ti][bi], o, path, r, err);
    }
    if (st == KVRT_OK && do_cache) {
        cache_table *t = &run->cache;
        fprintf(stderr, "%s: KV cache table on %s %s, %d thread(s), up to %d steps\n", PROG, name,
                kvrt_dtype_name(info.weight_type), (int)o->threads[ti], (int)max_cache_len(o));
        snprintf(t->model, NAME_MAX_LEN, "%s", name);
        t->type = info.weight_type;
        t->threads = o->threads[ti];
        st = time_cache_table(m, o, t, err);
    }
    kvrt_model_destroy(m);
    return st;
}

/* Every thread count and --blas mode in turn. */
static kvrt_status bench_file(model_run *run, const char *path, const char *name, const char *label,
                              bool throughput, bool cache, kvrt_error *err)
{
    const model_opts *o = &run->o;
    kvrt_status st = KVRT_OK;
    for (int ti = 0; st == KVRT_OK && ti < o->n_threads; ti++)
        for (int bi = 0; st == KVRT_OK && bi < o->n_blas; bi++)
            st = bench_config(run, path, name, label, throughput, cache && ti == 0 && bi == 0, ti, bi, err);
    return st;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* Every synthetic model in turn (written, measured, deleted); the KV-cache
 * table rides on its model when that is in the grid, else gets its own file. */
static kvrt_status bench_all(model_run *run, kvrt_error *err)
{
    const model_opts *o = &run->o;
    bool want_cache = o->n_cache_lens > 0, cache_done = false;
    if (o->model_path)
        return bench_file(run, o->model_path, base_name(o->model_path), NULL, true, want_cache, err);
    KVRT_TRY(make_tmp_dir(err));
    kvrt_status st = KVRT_OK;
    for (int pi = 0; st == KVRT_OK && pi < o->n_presets; pi++) {
        for (int ti = 0; st == KVRT_OK && ti < o->n_types; ti++) {
            bool cache = want_cache && ti == 0 && strcmp(o->presets[pi], o->cache_preset) == 0;
            st = write_synth(o->presets[pi], &o->types[ti], err);
            if (st == KVRT_OK)
                st = bench_file(run, g_tmp_file, o->presets[pi], o->types[ti].name, true, cache, err);
            cache_done |= cache;
            remove_synth();
        }
    }
    if (st == KVRT_OK && want_cache && !cache_done) {
        st = write_synth(o->cache_preset, &o->types[0], err);
        if (st == KVRT_OK)
            st = bench_file(run, g_tmp_file, o->cache_preset, o->types[0].name, false, true, err);
        remove_synth();
    }
    return st;
}

/* ---- reporting ----------------------------------------------------------------------- */

/* Speed of this backend over the CPU's on the same row (> 1: faster). */
static double vs_cpu(double cpu_s, double s)
{
    return s > 0 ? cpu_s / s : NAN;
}

static bool cpu_compared(const model_run *run)
{
    return run->o.backend != KVRT_BACKEND_CPU && run->o.cpu_compare;
}

static double mib(uint64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0);
}

static void print_header(const model_run *run, FILE *f)
{
    char blas[160];
    kvrt_tool_openblas_describe(blas, sizeof(blas));
    fprintf(f, "kvrt-bench model: %s; %s\n", run->device, blas);
    for (int i = 0; i < run->o.n_threads; i++)
        fprintf(f, "memory bandwidth (%d thread(s), 2 x %zu MiB, LLC %zu MiB, best of %d passes in this run): read %.2f GB/s, copy %.2f GB/s\n",
                run->bw[i].n_threads, run->bw[i].bytes >> 20, run->llc >> 20, run->bw[i].passes, run->bw[i].read_gbs,
                run->bw[i].copy_gbs);
    char kv[64]; /* "q8_0", or "K q8_0 / V q4_0" when they differ */
    if (run->o.kv_type == run->o.kv_type_v)
        snprintf(kv, sizeof(kv), "%s", kvrt_dtype_name(run->o.kv_type));
    else
        snprintf(kv, sizeof(kv), "K %s / V %s", kvrt_dtype_name(run->o.kv_type), kvrt_dtype_name(run->o.kv_type_v));
    fprintf(f, "prefill: %d tokens in one chunk; decode: %d tokens after it; best of %d; KV %s; "
               "%% bw = weight bytes per token x decode tokens/s / read bandwidth on as many threads; "
               "CPU ms = least process CPU time (all threads) of a prefill, of a decode token\n\n",
            (int)run->o.prompt_len, (int)run->o.gen, (int)run->o.reps, kv);
    if (cpu_compared(run))
        fprintf(f, "every row also ran on the CPU backend on as many threads, same file and tokens: "
                   "vs cpu = CPU time / %s time (> 1: %s is faster)\n\n",
                kvrt_backend_name(run->o.backend), kvrt_backend_name(run->o.backend));
}

static void print_table(const model_run *run, FILE *f)
{
    static const char *const hdr[] = {"model", "type", "params M", "weights MiB", "read/token MiB", "threads",
                                      "blas", "prefill t/s", "decode t/s", "weight GB/s", "% bw", "prefill CPU ms",
                                      "decode CPU ms/t", "cpu prefill t/s", "cpu decode t/s", "prefill vs cpu",
                                      "decode vs cpu"};
    bool cmp = cpu_compared(run);
    kvrt_table t;
    kvrt_table_init(&t, cmp ? 17 : 13, hdr, "llrrrrlrrrrrrrrrr");
    for (int i = 0; i < run->n_res; i++) {
        const model_result *r = &run->res[i];
        if (!kvrt_table_row(&t))
            break;
        kvrt_table_cell(&t, "%s", r->model);
        kvrt_table_cell(&t, "%s", r->label);
        kvrt_table_cell(&t, "%.1f", (double)r->n_params * 1e-6);
        kvrt_table_cell(&t, "%.1f", mib(r->weight_bytes));
        kvrt_table_cell(&t, "%.1f", mib(r->bytes_per_token));
        kvrt_table_cell(&t, "%d", (int)r->threads);
        kvrt_table_cell(&t, "%s", r->blas ? "on" : "off");
        kvrt_table_cell(&t, "%.1f", tok_per_s(run->o.prompt_len, r->prefill_s));
        kvrt_table_cell(&t, "%.2f", tok_per_s(run->o.gen, r->decode_s));
        kvrt_table_cell(&t, "%.2f", decode_gbs(&run->o, r));
        kvrt_table_cell(&t, "%.1f", pct_bw(run, r));
        kvrt_table_cell(&t, "%.1f", r->prefill_proc_s * 1e3);
        kvrt_table_cell(&t, "%.2f", r->decode_proc_s * 1e3 / run->o.gen);
        if (r->have_cpu) {
            kvrt_table_cell(&t, "%.1f", tok_per_s(run->o.prompt_len, r->cpu_prefill_s));
            kvrt_table_cell(&t, "%.2f", tok_per_s(run->o.gen, r->cpu_decode_s));
            kvrt_table_cell(&t, "%.2f", vs_cpu(r->cpu_prefill_s, r->prefill_s));
            kvrt_table_cell(&t, "%.2f", vs_cpu(r->cpu_decode_s, r->decode_s));
        }
    }
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
}

static void print_cache_table(const cache_table *c, FILE *f)
{
    static const char *const hdr[] = {"steps", "cached ms", "recompute ms", "recompute/cached", "tokens cached",
                                      "tokens recomputed"};
    fprintf(f, "\nKV cache: %s %s, %d thread(s); greedy steps from BOS, cached = one new token per step, recompute = "
               "the whole prefix per step in an emptied session; max |logit diff| %.3g (max |logit| %.3g)\n\n",
            c->model, kvrt_dtype_name(c->type), (int)c->threads, c->max_abs_diff, c->max_abs_logit);
    kvrt_table t;
    kvrt_table_init(&t, 6, hdr, NULL);
    for (int i = 0; i < c->n_rows; i++) {
        const cache_row *r = &c->rows[i];
        if (!kvrt_table_row(&t))
            break;
        kvrt_table_cell(&t, "%d", (int)r->steps);
        kvrt_table_cell(&t, "%.2f", r->cached_s * 1e3);
        kvrt_table_cell(&t, "%.2f", r->recompute_s * 1e3);
        kvrt_table_cell(&t, "%.2f", r->recompute_s / r->cached_s);
        kvrt_table_cell(&t, "%d", (int)r->steps);
        kvrt_table_cell(&t, "%lld", (long long)r->recompute_tokens);
    }
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
}

/* Worst and best decode share of bandwidth on the target model. */
typedef struct model_summary {
    double min_pct, max_pct;
    int n;
} model_summary;

static model_summary summarize(const model_run *run)
{
    model_summary s = {NAN, NAN, 0};
    for (int i = 0; i < run->n_res; i++) {
        const model_result *r = &run->res[i];
        if (strcmp(r->model, TARGET_MODEL) != 0)
            continue;
        double p = pct_bw(run, r);
        s.min_pct = (s.n == 0 || p < s.min_pct) ? p : s.min_pct;
        s.max_pct = (s.n == 0 || p > s.max_pct) ? p : s.max_pct;
        s.n++;
    }
    return s;
}

/* The cache changes the work, never the answer: beyond rounding (prefill and
 * decode kernels sum in different orders, through every layer), a kernel is wrong. */
static bool cache_logits_agree(const cache_table *c)
{
    return c->max_abs_diff <= 1e-3 * KVRT_MAX(1.0, c->max_abs_logit);
}

static void print_summary(const model_run *run, FILE *f)
{
    model_summary s = summarize(run);
    if (run->cache.done && !cache_logits_agree(&run->cache))
        fprintf(f, "\nWARNING: cached and recomputed logits differ by %.3g: a kernel computes a wrong answer\n",
                run->cache.max_abs_diff);
    fprintf(f, "\ntarget: %s decode >= %.0f %% of bandwidth: ", TARGET_MODEL, TARGET_PCT_BANDWIDTH);
    if (s.n == 0)
        fprintf(f, "not measured (no %s rows)\n", TARGET_MODEL);
    else
        fprintf(f, "worst %.1f %%, best %.1f %% (%s)\n", s.min_pct, s.max_pct,
                s.min_pct >= TARGET_PCT_BANDWIDTH ? "met" : s.max_pct >= TARGET_PCT_BANDWIDTH ? "met by some" : "missed");
}

static void json_result(kvrt_json *j, const model_run *run, const model_result *r)
{
    const model_opts *o = &run->o;
    kvrt_json_begin_object(j, NULL);
    kvrt_json_str(j, "model", r->model);
    kvrt_json_str(j, "type", r->label);
    kvrt_json_int(j, "threads", r->threads);
    kvrt_json_bool(j, "blas", r->blas);
    kvrt_json_int(j, "n_params", (int64_t)r->n_params);
    kvrt_json_int(j, "weight_bytes", (int64_t)r->weight_bytes);
    kvrt_json_int(j, "weight_bytes_per_token", (int64_t)r->bytes_per_token);
    kvrt_json_begin_object(j, "prefill");
    kvrt_json_int(j, "tokens", o->prompt_len);
    kvrt_json_num(j, "ms", r->prefill_s * 1e3);
    kvrt_json_num(j, "tokens_per_s", tok_per_s(o->prompt_len, r->prefill_s));
    kvrt_json_num(j, "process_cpu_ms", r->prefill_proc_s * 1e3);
    kvrt_json_end_object(j);
    kvrt_json_begin_object(j, "decode");
    kvrt_json_int(j, "tokens", o->gen);
    kvrt_json_num(j, "ms", r->decode_s * 1e3);
    kvrt_json_num(j, "tokens_per_s", tok_per_s(o->gen, r->decode_s));
    kvrt_json_num(j, "process_cpu_ms", r->decode_proc_s * 1e3);
    kvrt_json_num(j, "weight_gbs", decode_gbs(o, r));
    kvrt_json_num(j, "bandwidth_gbs", row_bw(run, r));
    kvrt_json_num(j, "pct_bandwidth", pct_bw(run, r));
    kvrt_json_end_object(j);
    /* the CPU comparison of a GPU row; null when it did not run */
    kvrt_json_num(j, "cpu_prefill_ms", r->have_cpu ? r->cpu_prefill_s * 1e3 : NAN);
    kvrt_json_num(j, "cpu_decode_ms", r->have_cpu ? r->cpu_decode_s * 1e3 : NAN);
    kvrt_json_num(j, "vs_cpu_prefill", r->have_cpu ? vs_cpu(r->cpu_prefill_s, r->prefill_s) : NAN);
    kvrt_json_num(j, "vs_cpu_decode", r->have_cpu ? vs_cpu(r->cpu_decode_s, r->decode_s) : NAN);
    kvrt_json_end_object(j);
}

static void json_cache_table(kvrt_json *j, const cache_table *c)
{
    if (!c->done) {
        kvrt_json_str(j, "kv_cache_scaling", NULL);
        return;
    }
    kvrt_json_begin_object(j, "kv_cache_scaling");
    kvrt_json_str(j, "model", c->model);
    kvrt_json_str(j, "type", kvrt_dtype_name(c->type));
    kvrt_json_int(j, "threads", c->threads);
    kvrt_json_num(j, "max_abs_logit_diff", c->max_abs_diff);
    kvrt_json_num(j, "max_abs_logit", c->max_abs_logit);
    kvrt_json_bool(j, "logits_agree", cache_logits_agree(c));
    kvrt_json_begin_array(j, "rows");
    for (int i = 0; i < c->n_rows; i++) {
        const cache_row *r = &c->rows[i];
        kvrt_json_begin_object(j, NULL);
        kvrt_json_int(j, "steps", r->steps);
        kvrt_json_num(j, "cached_ms", r->cached_s * 1e3);
        kvrt_json_num(j, "recompute_ms", r->recompute_s * 1e3);
        kvrt_json_num(j, "recompute_vs_cached", r->recompute_s / r->cached_s);
        kvrt_json_int(j, "cached_tokens", r->steps);
        kvrt_json_int(j, "recompute_tokens", r->recompute_tokens);
        kvrt_json_end_object(j);
    }
    kvrt_json_end_array(j);
    kvrt_json_end_object(j);
}

static void json_bandwidth(kvrt_json *j, const model_run *run)
{
    kvrt_json_begin_array(j, "memory_bandwidth");
    for (int i = 0; i < run->o.n_threads; i++) {
        kvrt_json_begin_object(j, NULL);
        kvrt_json_int(j, "threads", run->bw[i].n_threads);
        kvrt_json_num(j, "read_gbs", run->bw[i].read_gbs);
        kvrt_json_num(j, "copy_gbs", run->bw[i].copy_gbs);
        kvrt_json_int(j, "buffer_bytes", (int64_t)run->bw[i].bytes);
        kvrt_json_int(j, "llc_bytes", (int64_t)run->llc);
        kvrt_json_int(j, "passes", run->bw[i].passes);
        kvrt_json_end_object(j);
    }
    kvrt_json_end_array(j);
}

static void print_json(const model_run *run, FILE *f)
{
    const model_opts *o = &run->o;
    kvrt_json j;
    kvrt_json_init(&j, f);
    kvrt_json_begin_object(&j, NULL);
    kvrt_json_str(&j, "tool", "kvrt-bench");
    kvrt_json_str(&j, "bench", "model");
    kvrt_json_str(&j, "kvrt_version", kvrt_version());
    kvrt_json_str(&j, "backend", kvrt_backend_name(o->backend));
    kvrt_json_str(&j, "device", run->device);
    kvrt_json_str(&j, "openblas_core", kvrt_tool_openblas_core());
    kvrt_json_str(&j, "openblas_coretype_env", getenv("OPENBLAS_CORETYPE"));
    kvrt_json_int(&j, "openblas_threads", kvrt_tool_openblas_threads());
    kvrt_json_str(&j, "model_file", o->model_path);
    kvrt_json_bool(&j, "quick", o->quick);
    kvrt_json_bool(&j, "cpu_compare", cpu_compared(run));
    kvrt_json_str(&j, "kv_type", kvrt_dtype_name(o->kv_type)); /* K's; both named where they differ */
    if (o->kv_type != o->kv_type_v) {
        kvrt_json_str(&j, "kv_type_k", kvrt_dtype_name(o->kv_type));
        kvrt_json_str(&j, "kv_type_v", kvrt_dtype_name(o->kv_type_v));
    }
    kvrt_json_int(&j, "prompt_len", o->prompt_len);
    kvrt_json_int(&j, "gen", o->gen);
    kvrt_json_int(&j, "reps", o->reps);
    json_bandwidth(&j, run);
    kvrt_json_begin_array(&j, "results");
    for (int i = 0; i < run->n_res; i++)
        json_result(&j, run, &run->res[i]);
    kvrt_json_end_array(&j);
    json_cache_table(&j, &run->cache);
    model_summary s = summarize(run);
    if (o->profile) {
        kvrt_json_begin_array(&j, "profile");
        for (int i = 0; i < o->n_threads; i++) {
            for (int b = 0; b < o->n_blas; b++) {
                kvrt_json_begin_object(&j, NULL);
                kvrt_json_int(&j, "threads", o->threads[i]);
                kvrt_json_bool(&j, "blas", o->blas[b]);
                kvrt_tool_profile_json(&j, "ops", run->ctxs[i][b]);
                kvrt_json_end_object(&j);
            }
        }
        kvrt_json_end_array(&j);
    }
    kvrt_json_begin_object(&j, "summary");
    kvrt_json_str(&j, "target_model", TARGET_MODEL);
    kvrt_json_num(&j, "target_pct_bandwidth", TARGET_PCT_BANDWIDTH);
    kvrt_json_num(&j, "min_pct_bandwidth_target_model", s.min_pct);
    kvrt_json_num(&j, "max_pct_bandwidth_target_model", s.max_pct);
    kvrt_json_end_object(&j);
    kvrt_json_end_object(&j);
}

/* ---- main ----------------------------------------------------------------------------- */

/* --model is opened (and a FIFO or a directory refused) before the
 * bandwidth is measured for seconds: a bad path fails at once. */
static kvrt_status check_model_file(const model_opts *o, kvrt_error *err)
{
    if (!o->model_path)
        return KVRT_OK;
    int fd = -1;
    KVRT_TRY(kvrt_open_regular_file(o->model_path, "model", &fd, NULL, err));
    close(fd);
    return KVRT_OK;
}

/* A context (and a CPU one for the comparison) per thread count and --blas
 * mode, and a bandwidth measurement per thread count; a count of 0 (all
 * cores) becomes the number measured with. */
static kvrt_status setup(model_run *run, kvrt_error *err)
{
    model_opts *o = &run->o;
    run->llc = kvrt_bench_llc_bytes();
    for (int i = 0; i < o->n_threads; i++) {
        for (int b = 0; b < o->n_blas; b++) {
            kvrt_context_params cp = kvrt_context_default_params();
            kvrt_cli_common_context_params(&o->common, &cp);
            cp.n_threads = o->threads[i];
            cp.disabled_features |= o->blas[b] ? 0 : KVRT_FEATURE_BLAS;
            KVRT_TRY(kvrt_context_create(&cp, &run->ctxs[i][b], err));
            if (o->profile && kvrt_context_set_profiling(run->ctxs[i][b], 1) != KVRT_OK)
                return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "--profile: %s", kvrt_context_message(run->ctxs[i][b]));
            if (cpu_compared(run)) {
                cp.backend = KVRT_BACKEND_CPU;
                if (kvrt_context_create(&cp, &run->cpu_ctxs[i][b], err) != KVRT_OK) {
                    char msg[KVRT_ERROR_MESSAGE_MAX]; /* kvrt_fail must not read the buffer it writes */
                    snprintf(msg, sizeof(msg), "%s", err->message);
                    return kvrt_fail(err, err->status, "CPU backend for the comparison: %s", msg);
                }
            }
            fprintf(stderr, "%s: %s\n", PROG, kvrt_context_description(run->ctxs[i][b]));
        }
        run->device = kvrt_context_description(run->ctxs[0][0]);
        fprintf(stderr, "%s: measuring memory bandwidth on %d thread(s)\n", PROG, (int)o->threads[i]);
        KVRT_TRY(kvrt_bench_bandwidth(o->threads[i], 4 * run->llc, o->quick ? 2 : 5, &run->bw[i], err));
        o->threads[i] = run->bw[i].n_threads;
    }
    return KVRT_OK;
}

static void report(const model_run *run)
{
    FILE *table = run->o.json ? stderr : stdout;
    print_header(run, table);
    print_table(run, table);
    if (run->cache.done)
        print_cache_table(&run->cache, table);
    print_summary(run, table);
    for (int i = 0; run->o.profile && i < run->o.n_threads; i++) {
        for (int b = 0; b < run->o.n_blas; b++) {
            char title[112];
            snprintf(title, sizeof(title), "time per op, %s backend, %d thread(s), OpenBLAS %s:",
                     kvrt_backend_name(run->o.backend), (int)run->o.threads[i], run->o.blas[b] ? "on" : "off");
            kvrt_tool_profile_print(run->ctxs[i][b], title, table);
        }
    }
    if (run->o.json)
        print_json(run, stdout);
}

int kvrt_bench_model_main(int argc, char **argv)
{
    model_run run;
    memset(&run, 0, sizeof(run));
    int rc = parse_args(argc, argv, &run.o);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    kvrt_error err = {KVRT_OK, ""};
    kvrt_status st = check_model_file(&run.o, &err);
    if (st == KVRT_OK)
        st = setup(&run, &err);
    if (st == KVRT_OK)
        st = bench_all(&run, &err);
    remove_tmp();
    if (st == KVRT_OK)
        report(&run);
    else
        kvrt_cli_error(PROG, "%s", err.message);
    free(run.res);
    for (int i = 0; i < run.o.n_threads; i++) {
        for (int b = 0; b < 2; b++) {
            kvrt_tool_save_caches(PROG, run.ctxs[i][b]);
            kvrt_context_destroy(run.cpu_ctxs[i][b]);
            kvrt_context_destroy(run.ctxs[i][b]);
        }
    }
    return st == KVRT_OK ? 0 : 1;
}
