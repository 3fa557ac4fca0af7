/* kvrt-bench kv: what each KV storage type costs in accuracy, on whole
 * models. Every type (or K/V pair) runs the same teacher-forced sequence as
 * F16 KV; the logits of every position are compared: NMSE, max abs, mean
 * KL(f16 || type) of the next-token distribution, top-1 agreement, and the
 * KV bytes against F16. The sequence is seeded pseudo-random token ids (the
 * same ones tests/test_kv_quant_model.c uses), prefilled in chunks of 64 over
 * the cached prefix, so both attention kernels run. A type a model's shape
 * cannot store (q8_0 / q4_0 need head_dim a multiple of 32) is a row saying
 * why, not a failure. */
#include "bench_kv.h"

#include "cli.h"
#include "files.h"
#include "json.h"
#include "table.h"

#include "backend/kv_layout.h"
#include "model/synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const PROG = "kvrt-bench kv";

#define MAX_MODELS 8
#define MAX_TYPES 16
#define KV_CHUNK 64 /* prefill chunk: later chunks attend to a cached prefix */

typedef struct kv_pair {
    kvrt_dtype k, v;
} kv_pair;

typedef struct kv_opts {
    kvrt_cli_common common;
    char *models[MAX_MODELS]; /* files, or "synth": the built-in synthetic model */
    int n_models;
    kv_pair types[MAX_TYPES];
    int n_types;
    int32_t positions;
    bool json;
} kv_opts;

typedef struct kv_row {
    char model[64];
    int32_t head_dim, positions;
    kv_pair t;
    bool ran;
    char why[200];  /* !ran: the library's refusal */
    double nmse, max_abs, kl, top1;
    double bytes_vs_f16; /* 0: the shape does not fit the type */
} kv_row;

/* The default comparison: each type for K and V, then pairs that keep the
 * keys (the sensitive half) more precise than the values. */
static const kv_pair DEFAULT_TYPES[] = {
    {KVRT_DTYPE_F32, KVRT_DTYPE_F32},         {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q8_0},
    {KVRT_DTYPE_Q4_0, KVRT_DTYPE_Q4_0},       {KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E4M3},
    {KVRT_DTYPE_FP8_E5M2, KVRT_DTYPE_FP8_E5M2}, {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0},
    {KVRT_DTYPE_F16, KVRT_DTYPE_Q4_0},        {KVRT_DTYPE_F16, KVRT_DTYPE_FP8_E4M3},
};

static void pair_name(kv_pair t, char *buf, size_t size)
{
    if (t.k == t.v)
        snprintf(buf, size, "%s", kvrt_dtype_name(t.k));
    else
        snprintf(buf, size, "K %s / V %s", kvrt_dtype_name(t.k), kvrt_dtype_name(t.v));
}

/* ---- arguments ---------------------------------------------------------------------------- */

/* A comma-separated list of TYPE or K/V (e.g. q8_0,fp8,q8_0/q4_0). */
static bool parse_types(const char *prog, const char *flag, const char *value, void *dst)
{
    kv_opts *o = dst;
    o->n_types = 0;
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", value);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->n_types == MAX_TYPES) {
            kvrt_cli_error(prog, "%s: at most %d entries", flag, MAX_TYPES);
            return false;
        }
        char *slash = strchr(tok, '/');
        if (slash)
            *slash = '\0';
        kv_pair *t = &o->types[o->n_types++];
        if (!kvrt_cli_parse_kv_type(prog, flag, tok, &t->k))
            return false;
        t->v = t->k;
        if (slash && !kvrt_cli_parse_kv_type(prog, flag, slash + 1, &t->v))
            return false;
    }
    if (o->n_types == 0)
        kvrt_cli_error(prog, "%s: empty list", flag);
    return o->n_types > 0;
}

static bool parse_models(const char *prog, const char *flag, const char *value, void *dst)
{
    kv_opts *o = dst;
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", value);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (o->n_models == MAX_MODELS || !(o->models[o->n_models] = strdup(tok))) {
            kvrt_cli_error(prog, "%s: at most %d models", flag, MAX_MODELS);
            return false;
        }
        o->n_models++;
    }
    return o->n_models > 0;
}

static void free_opts(kv_opts *o)
{
    for (int i = 0; i < o->n_models; i++)
        free(o->models[i]);
    o->n_models = 0;
}

static int parse_args(int argc, char **argv, kv_opts *o)
{
    memset(o, 0, sizeof(*o));
    kvrt_cli_common_init(&o->common, KVRT_DTYPE_F16, 1);
    o->common.backend = KVRT_BACKEND_CPU; /* the quantized KV types run there */
    o->positions = 200;
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_CALL('m', "model", parse_models, o, "LIST",
                      "models, comma-separated: GGUF / llama2.c files, or synth (a random\n"
                      "tiny-gqa model, 4 layers, head_dim 64). Default: synth and the shipped\n"
                      "stories260K.gguf"),
        KVRT_CLI_CALL(0, "types", parse_types, o, "LIST",
                      "KV types to compare with f16, comma-separated; K/V for a pair\n"
                      "(default f32,q8_0,q4_0,fp8,fp8_e5m2,q8_0/q4_0,f16/q4_0,f16/fp8);\n"
                      "--kv-type / --kv-type-k / --kv-type-v name one instead"),
        {.name = "positions", .kind = KVRT_CLI_KIND_INT32, .dst = &o->positions, .min = 2, .max = 8192,
         .meta = "N", .help = "teacher-forced positions (default 200; at most the model's context)"},
        KVRT_CLI_BOOL(0, "json", &o->json, "one JSON document on stdout; the table goes to stderr"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-bench kv [-m LIST] [--types LIST] [--positions N] [--json]",
        .about = "Teacher-forced logits of each KV type against f16 KV, per model: NMSE, max abs,\n"
                 "mean KL(f16 || type) of the next-token distribution, top-1 agreement, KV bytes.",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
        .common = &o->common,
    };
    int first;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first);
    if (rc == KVRT_CLI_CONTINUE && !kvrt_cli_common_resolve(PROG, &o->common))
        rc = KVRT_CLI_USAGE;
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    if (o->common.kv_type != KVRT_DTYPE_F16 || o->common.kv_type_v != KVRT_DTYPE_F16) { /* one pair named */
        o->types[0] = (kv_pair){o->common.kv_type, o->common.kv_type_v};
        o->n_types = 1;
    } else if (o->n_types == 0) {
        memcpy(o->types, DEFAULT_TYPES, sizeof(DEFAULT_TYPES));
        o->n_types = (int)KVRT_ARRAY_LEN(DEFAULT_TYPES);
    }
    return KVRT_CLI_CONTINUE;
}

/* ---- one model ------------------------------------------------------------------------------ */

/* Writes the synthetic model of tests/test_kv_quant_model.c to path. */
static kvrt_status write_synth(const char *path, kvrt_error *err)
{
    kvrt_synth_params p;
    if (!kvrt_synth_preset("tiny-gqa", &p))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "no tiny-gqa preset");
    p.hp.n_layer = 4;
    p.stddev = 0.08f; /* attention that is not flat, logits that spread */
    p.seed = 7;
    return kvrt_synth_write_file(&p, NULL, path, NULL, err);
}

/* Logits of every position, [n][n_vocab], with K/V stored as t. */
static kvrt_status teacher_forced(kvrt_model *m, const kv_opts *o, kv_pair t, const int32_t *ids, int32_t n,
                                  float *logits, kvrt_error *err)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = n;
    sp.n_batch = KV_CHUNK;
    sp.block_size = o->common.block_size;
    sp.kv_type = t.k;
    sp.kv_type_v_set = 1;
    sp.kv_type_v = t.v;
    kvrt_session *s = NULL;
    KVRT_TRY(kvrt_session_create(m, &sp, &s, err));
    kvrt_status st = kvrt_session_eval(s, ids, n, NULL, logits);
    if (st != KVRT_OK)
        kvrt_fail(err, st, "%s", kvrt_session_message(s));
    kvrt_session_destroy(s);
    return st;
}

/* The measures of kv_row between the reference logits a and b. */
static void compare(const float *a, const float *b, int32_t n, int32_t n_vocab, kv_row *r)
{
    double e2 = 0, r2 = 0;
    r->max_abs = r->kl = r->top1 = 0;
    for (int32_t p = 0; p < n; p++) {
        const float *x = a + (size_t)p * (size_t)n_vocab, *y = b + (size_t)p * (size_t)n_vocab;
        double mx = -INFINITY, my = -INFINITY, zx = 0, zy = 0, kl = 0;
        int32_t bx = 0, by = 0;
        for (int32_t v = 0; v < n_vocab; v++) {
            double d = fabs((double)x[v] - y[v]);
            r->max_abs = isfinite(d) && d <= r->max_abs ? r->max_abs : d; /* NaN shows */
            e2 += d * d, r2 += (double)x[v] * x[v];
            bx = x[v] > x[bx] ? v : bx, by = y[v] > y[by] ? v : by;
            mx = fmax(mx, x[v]), my = fmax(my, y[v]);
        }
        for (int32_t v = 0; v < n_vocab; v++)
            zx += exp(x[v] - mx), zy += exp(y[v] - my);
        for (int32_t v = 0; v < n_vocab; v++) { /* sum p log(p / q), in log space */
            double lp = x[v] - mx - log(zx), lq = y[v] - my - log(zy);
            kl += exp(lp) * (lp - lq);
        }
        r->kl += kl / n;
        r->top1 += (bx == by) / (double)n;
    }
    r->nmse = r2 > 0 ? e2 / r2 : 0;
}

/* KV bytes of a pair against F16 at this head_dim (0: the shape does not fit). */
static double bytes_vs_f16(kv_pair t, int32_t head_dim)
{
    size_t k = kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(t.k), 1, 1, head_dim);
    size_t v = kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(t.v), 1, 1, head_dim);
    return k && v ? (double)(k + v) / (4.0 * head_dim) : 0.0;
}

/* Every type on one loaded model: rows appended at rows[*n_rows]. */
static kvrt_status run_model(kvrt_model *m, const char *name, const kv_opts *o, kv_row *rows, int *n_rows,
                             kvrt_error *err)
{
    kvrt_model_info mi;
    KVRT_TRY(kvrt_model_get_info(m, &mi));
    int32_t n = KVRT_MIN(o->positions, mi.max_context);
    size_t cells = (size_t)n * (size_t)mi.n_vocab;
    int32_t *ids = malloc((size_t)n * sizeof(int32_t));
    float *ref = malloc(cells * sizeof(float)), *got = malloc(cells * sizeof(float));
    kvrt_status st = ids && ref && got ? KVRT_OK : kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "logits");
    uint64_t r = 12345; /* the ids of tests/test_kv_quant_model.c */
    for (int32_t i = 0; st == KVRT_OK && i < n; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = 3 + (int32_t)((r >> 33) % (uint64_t)(mi.n_vocab - 3));
    }
    if (st == KVRT_OK)
        st = teacher_forced(m, o, (kv_pair){KVRT_DTYPE_F16, KVRT_DTYPE_F16}, ids, n, ref, err);
    for (int i = 0; st == KVRT_OK && i < o->n_types; i++) {
        kv_row *row = &rows[(*n_rows)++];
        memset(row, 0, sizeof(*row));
        snprintf(row->model, sizeof(row->model), "%s", name);
        row->head_dim = mi.head_dim;
        row->positions = n;
        row->t = o->types[i];
        row->bytes_vs_f16 = bytes_vs_f16(row->t, mi.head_dim);
        kvrt_error why = {KVRT_OK, ""};
        kvrt_status s = teacher_forced(m, o, row->t, ids, n, got, &why);
        if (s == KVRT_OK) {
            row->ran = true;
            compare(ref, got, n, mi.n_vocab, row);
        } else if (s == KVRT_ERR_INVALID_ARGUMENT || s == KVRT_ERR_UNSUPPORTED) { /* the shape or backend */
            snprintf(row->why, sizeof(row->why), "%s", why.message);
        } else {
            st = kvrt_fail(err, s, "%s KV: %s", kvrt_dtype_name(row->t.k), why.message);
        }
    }
    free(ids), free(ref), free(got);
    return st;
}

/* Loads model i (writing the synthetic one first) and runs it. */
static kvrt_status run_one(kvrt_context *ctx, const kv_opts *o, const char *spec, kv_row *rows, int *n_rows,
                           kvrt_error *err)
{
    char synth[64], name[64];
    const char *path = spec;
    bool is_synth = strcmp(spec, "synth") == 0;
    if (is_synth) {
        snprintf(synth, sizeof(synth), "/tmp/kvrt-bench-kv-%d.gguf", (int)getpid());
        kvrt_tool_scratch_add(synth, false);
        KVRT_TRY(write_synth(synth, err));
        path = synth;
        snprintf(name, sizeof(name), "synth tiny-gqa x4");
    } else {
        const char *slash = strrchr(spec, '/');
        snprintf(name, sizeof(name), "%s", slash ? slash + 1 : spec);
    }
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_model *m = NULL;
    kvrt_status st = kvrt_model_load(ctx, &mp, &m, err);
    if (st == KVRT_OK)
        st = run_model(m, name, o, rows, n_rows, err);
    kvrt_model_destroy(m);
    if (is_synth) {
        remove(synth);
        kvrt_tool_scratch_forget(synth);
    }
    return st;
}

/* ---- report ----------------------------------------------------------------------------------- */

static void print_table(const kv_row *rows, int n, FILE *f)
{
    static const char *const hdr[] = {"model", "head_dim", "KV type", "bytes vs f16", "logits NMSE", "max abs",
                                      "mean KL", "top-1", "positions"};
    kvrt_table t;
    kvrt_table_init(&t, 9, hdr, "lrlrrrrrr");
    for (int i = 0; i < n && kvrt_table_row(&t); i++) {
        const kv_row *r = &rows[i];
        char name[48];
        pair_name(r->t, name, sizeof(name));
        kvrt_table_cell(&t, "%s", r->model);
        kvrt_table_cell(&t, "%d", (int)r->head_dim);
        kvrt_table_cell(&t, "%s", name);
        if (r->bytes_vs_f16 > 0)
            kvrt_table_cell(&t, "%.3f", r->bytes_vs_f16);
        else
            kvrt_table_cell(&t, "-");
        if (!r->ran) {
            for (int c = 0; c < 4; c++)
                kvrt_table_cell(&t, "refused");
            kvrt_table_cell(&t, "-");
            continue;
        }
        kvrt_table_cell(&t, "%.2e", r->nmse);
        kvrt_table_cell(&t, "%.3g", r->max_abs);
        kvrt_table_cell(&t, "%.2e", r->kl);
        kvrt_table_cell(&t, "%.3f", r->top1);
        kvrt_table_cell(&t, "%d", (int)r->positions);
    }
    fprintf(f, "KV types against f16 KV, teacher-forced (seeded token ids, prefill chunks of %d):\n", KV_CHUNK);
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
    for (int i = 0; i < n; i++) { /* why each refused row was refused */
        char name[48];
        pair_name(rows[i].t, name, sizeof(name));
        if (!rows[i].ran)
            fprintf(f, "  %s, %s: %s\n", rows[i].model, name, rows[i].why);
    }
}

static void print_json(const kv_row *rows, int n, FILE *f)
{
    kvrt_json j;
    kvrt_json_init(&j, f);
    kvrt_json_begin_object(&j, NULL);
    kvrt_json_str(&j, "tool", "kvrt-bench");
    kvrt_json_str(&j, "bench", "kv");
    kvrt_json_str(&j, "kvrt_version", kvrt_version());
    kvrt_json_str(&j, "reference", "f16");
    kvrt_json_begin_array(&j, "rows");
    for (int i = 0; i < n; i++) {
        const kv_row *r = &rows[i];
        kvrt_json_begin_object(&j, NULL);
        kvrt_json_str(&j, "model", r->model);
        kvrt_json_int(&j, "head_dim", r->head_dim);
        kvrt_json_str(&j, "k_type", kvrt_dtype_name(r->t.k));
        kvrt_json_str(&j, "v_type", kvrt_dtype_name(r->t.v));
        kvrt_json_bool(&j, "ran", r->ran);
        kvrt_json_str(&j, "refused", r->ran ? NULL : r->why);
        kvrt_json_num(&j, "kv_bytes_vs_f16", r->bytes_vs_f16);
        if (r->ran) {
            kvrt_json_int(&j, "positions", r->positions);
            kvrt_json_num(&j, "logits_nmse", r->nmse);
            kvrt_json_num(&j, "logits_max_abs", r->max_abs);
            kvrt_json_num(&j, "mean_kl", r->kl);
            kvrt_json_num(&j, "top1_agreement", r->top1);
        }
        kvrt_json_end_object(&j);
    }
    kvrt_json_end_array(&j);
    kvrt_json_end_object(&j);
    fputc('\n', f);
}

int kvrt_bench_kv_main(int argc, char **argv)
{
    kv_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc != KVRT_CLI_CONTINUE) {
        free_opts(&o);
        return rc;
    }
    char shipped[4096];
    if (o.n_models == 0) {
        o.models[o.n_models++] = strdup("synth");
        const char *p = kvrt_tool_shipped_model(shipped, sizeof(shipped));
        if (p)
            o.models[o.n_models++] = strdup(p);
    }
    kv_row *rows = calloc((size_t)o.n_models * MAX_TYPES, sizeof(kv_row));
    kvrt_context_params cp = kvrt_context_default_params();
    kvrt_cli_common_context_params(&o.common, &cp);
    kvrt_context *ctx = NULL;
    kvrt_error err = {KVRT_OK, ""};
    kvrt_status st = rows ? kvrt_context_create(&cp, &ctx, &err)
                          : kvrt_fail(&err, KVRT_ERR_OUT_OF_HOST_MEMORY, "out of memory");
    int n_rows = 0;
    for (int i = 0; st == KVRT_OK && i < o.n_models; i++) {
        if (!o.models[i]) {
            st = kvrt_fail(&err, KVRT_ERR_OUT_OF_HOST_MEMORY, "out of memory");
            break;
        }
        st = run_one(ctx, &o, o.models[i], rows, &n_rows, &err);
        if (st != KVRT_OK)
            kvrt_cli_error(PROG, "%s: %s", o.models[i], err.message);
    }
    if (st == KVRT_OK) {
        print_table(rows, n_rows, o.json ? stderr : stdout);
        if (o.json)
            print_json(rows, n_rows, stdout);
    } else if (!rows || !ctx) {
        kvrt_cli_error(PROG, "%s", err.message);
    }
    kvrt_context_destroy(ctx);
    free(rows);
    free_opts(&o);
    return st == KVRT_OK ? 0 : KVRT_CLI_FAILURE;
}
