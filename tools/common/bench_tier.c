/*
 * kvrt-bench attn --host-tier: decode attention with a share of every
 * sequence's oldest blocks on the host tier (issue 18), the device backend
 * attending over the rest, the CPU over the host blocks, merged by
 * log-sum-exp, against the same decode with every block on the device, on
 * the same data in the same run. The host share runs 0 to 90 % in steps of
 * 10; each row reports the merged call's time, its ratio to the
 * all-on-device call, the time of each tier and of the merge (the tier's
 * counters), and the largest difference between the two outputs.
 *
 * On lavapipe and PoCL the "device" is this machine's CPU too, so the
 * figures show the mechanism's overheads (two calls, the copies of q and
 * the partial results, the merge), not what a GPU beside a CPU would gain;
 * GPU figures wait for a GPU.
 */
#include "bench_tier.h"

#include "bench.h"
#include "cli.h"
#include "json.h"
#include "table.h"

#include "kvrt_tool_internal.h"
#include "model/shapes.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const PROG = "kvrt-bench attn --host-tier";

typedef struct tier_opts {
    kvrt_cli_common common;
    bool json;
    const char *shape;
    int32_t ctx, batch, reps;
} tier_opts;

typedef struct tier_row {
    int32_t pct, host_blocks;
    double flat_ms, split_ms, device_ms, host_ms, merge_ms, max_diff;
} tier_row;

static int parse(int argc, char **argv, tier_opts *o)
{
    bool host_tier = false;
    kvrt_cli_common_init(&o->common, KVRT_DTYPE_F16, 1);
    o->shape = "llama-3-8b";
    o->ctx = 4096;
    o->batch = 4;
    o->reps = 5;
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_BOOL(0, "host-tier", &host_tier, "this benchmark (decode split by tier vs all on the device)"),
        KVRT_CLI_BOOL(0, "json", &o->json, "one JSON document on stdout; the table goes to stderr"),
        KVRT_CLI_STR(0, "shape", &o->shape, "NAME", "attention shape preset (default llama-3-8b)"),
        KVRT_CLI_INT32(0, "ctx", &o->ctx, 16, 1 << 20, "N", "context of every sequence (default 4096)"),
        KVRT_CLI_INT32(0, "batch", &o->batch, 1, 256, "N", "sequences (default 4)"),
        KVRT_CLI_INT32(0, "reps", &o->reps, 1, 1000, "N", "timed calls per row, best kept (default 5)"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-bench attn --host-tier [--backend auto] [-t THREADS] [--kv-type f16|f32] [--block-size N]\n"
                 "                       [--shape NAME] [--ctx N] [--batch N] [--reps N] [--json] [--device N|NAME]",
        .about = "Decode attention with 0-90 % of each sequence's oldest blocks on the host tier (CPU) and the\n"
                 "rest on the device, merged by log-sum-exp, vs every block on the device (issue 18).",
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
    return KVRT_CLI_CONTINUE;
}

/* Everything one run holds: the all-on-device cache, and per row a small
 * device cache with its host tier. */
typedef struct tier_run {
    const tier_opts *o;
    kvrt_context *ctx;
    int32_t n_heads, n_kv, head_dim, bs, nb; /* nb: blocks per sequence */
    float *k, *v;                             /* one block's K/V: [bs][n_kv][head_dim] */
    float *q, *flat_out, *split_out;          /* [batch][n_heads][head_dim] */
    int32_t *lens, *flat_tables, *tables, *n_host, *slots;
    kvrt_bench_rng rng;
} tier_run;

static double now_s(void)
{
    return kvrt_bench_now();
}

/* Writes block b of sequence s (random, the same bytes for the same (s, b)) into device block blk. */
static kvrt_status put_block(tier_run *r, kvrt_kv_cache *c, int32_t s, int32_t b, int32_t blk, kvrt_error *err)
{
    kvrt_bench_rng g = {(uint64_t)(s * 1000003 + b + 1) * 0x9e3779b97f4a7c15ull};
    size_t n = (size_t)r->bs * (size_t)r->n_kv * (size_t)r->head_dim;
    kvrt_bench_rng_fill(&g, r->k, n);
    kvrt_bench_rng_fill(&g, r->v, n);
    for (int32_t i = 0; i < r->bs; i++)
        r->slots[i] = blk * r->bs + i;
    kvrt_status st = kvrt_kv_cache_write(c, 0, r->k, r->v, r->slots, r->bs);
    return st == KVRT_OK ? st : kvrt_fail(err, st, "%s", kvrt_kv_cache_message(c));
}

static kvrt_status make_cache(tier_run *r, int32_t blocks, kvrt_kv_cache **out, kvrt_error *err)
{
    kvrt_kv_cache_params p = {1, r->n_kv, r->head_dim, r->bs, blocks, .dtype = r->o->common.kv_type};
    return kvrt_kv_cache_create(r->ctx, &p, out, err);
}

static kvrt_status time_flat(tier_run *r, kvrt_kv_cache *c, double *best, kvrt_error *err)
{
    kvrt_attention_params ap = {r->n_heads, r->nb, 0.0f, 0, 0};
    *best = INFINITY;
    for (int i = 0; i <= r->o->reps; i++) { /* the first call warms up */
        double t0 = now_s();
        kvrt_status st = kvrt_attention_decode(c, 0, &ap, r->o->batch, r->q, r->lens, r->flat_tables, r->flat_out);
        if (st != KVRT_OK)
            return kvrt_fail(err, st, "%s", kvrt_kv_cache_message(c));
        if (i > 0)
            *best = fmin(*best, now_s() - t0);
    }
    return KVRT_OK;
}

/* One row: host_n blocks of each sequence on the host. */
static kvrt_status run_row(tier_run *r, int32_t pct, tier_row *row, kvrt_error *err)
{
    const int32_t B = r->o->batch, host_n = KVRT_MIN(r->nb - 1, r->nb * pct / 100);
    row->pct = pct;
    row->host_blocks = host_n;
    int32_t dev_blocks = B * (r->nb - host_n) + 1;
    kvrt_kv_cache *c = NULL;
    kvrt_tool_tier *t = NULL;
    KVRT_TRY(make_cache(r, dev_blocks, &c, err));
    kvrt_status st = kvrt_tool_tier_create(c, KVRT_MAX(1, B * host_n), r->o->common.threads[0], &t, err);
    int32_t next_dev = 1, next_host = 0; /* device block 0 is where host blocks pass through */
    for (int32_t s = 0; st == KVRT_OK && s < B; s++) {
        r->n_host[s] = host_n;
        for (int32_t b = 0; st == KVRT_OK && b < r->nb; b++) {
            int32_t blk = b < host_n ? 0 : next_dev++;
            st = put_block(r, c, s, b, blk, err);
            if (st == KVRT_OK && b < host_n) {
                int32_t pair[1][2] = {{0, next_host}};
                st = kvrt_tool_tier_to_host(t, (const int32_t(*)[2])pair, 1, err);
                blk = next_host++;
            }
            r->tables[s * r->nb + b] = blk;
        }
    }
    double best = INFINITY, d0 = 0, h0 = 0, m0 = 0, d1 = 0, h1 = 0, m1 = 0;
    for (int i = 0; st == KVRT_OK && i <= r->o->reps; i++) {
        if (i == 1)
            kvrt_tool_tier_times(t, &d0, &h0, &m0);
        double t0 = now_s();
        st = kvrt_tool_tier_decode(t, 0, r->n_heads, r->nb, B, r->q, r->lens, r->tables, r->n_host, r->split_out,
                                   err);
        if (i > 0)
            best = fmin(best, now_s() - t0);
    }
    if (st == KVRT_OK) {
        kvrt_tool_tier_times(t, &d1, &h1, &m1);
        row->split_ms = 1e3 * best;
        row->device_ms = 1e3 * (d1 - d0) / r->o->reps; /* means over the timed calls */
        row->host_ms = 1e3 * (h1 - h0) / r->o->reps;
        row->merge_ms = 1e3 * (m1 - m0) / r->o->reps;
        size_t n = (size_t)B * (size_t)r->n_heads * (size_t)r->head_dim;
        row->max_diff = 0;
        for (size_t i = 0; i < n; i++)
            row->max_diff = fmax(row->max_diff, fabs((double)r->split_out[i] - (double)r->flat_out[i]));
    }
    kvrt_tool_tier_destroy(t);
    kvrt_kv_cache_destroy(c);
    return st;
}

static kvrt_status run_all(tier_run *r, tier_row *rows, kvrt_error *err)
{
    const int32_t B = r->o->batch;
    size_t qn = (size_t)B * (size_t)r->n_heads * (size_t)r->head_dim;
    size_t blk = (size_t)r->bs * (size_t)r->n_kv * (size_t)r->head_dim;
    r->k = malloc(blk * sizeof(float));
    r->v = malloc(blk * sizeof(float));
    r->q = malloc(qn * sizeof(float));
    r->flat_out = malloc(qn * sizeof(float));
    r->split_out = malloc(qn * sizeof(float));
    r->lens = malloc((size_t)B * sizeof(int32_t));
    r->n_host = malloc((size_t)B * sizeof(int32_t));
    r->slots = malloc((size_t)r->bs * sizeof(int32_t));
    r->flat_tables = malloc((size_t)B * (size_t)r->nb * sizeof(int32_t));
    r->tables = malloc((size_t)B * (size_t)r->nb * sizeof(int32_t));
    if (!r->k || !r->v || !r->q || !r->flat_out || !r->split_out || !r->lens || !r->n_host || !r->slots ||
        !r->flat_tables || !r->tables)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "benchmark arrays");
    kvrt_bench_rng_fill(&r->rng, r->q, qn);
    for (int32_t s = 0; s < B; s++)
        r->lens[s] = r->o->ctx;
    kvrt_kv_cache *flat = NULL;
    KVRT_TRY(make_cache(r, B * r->nb, &flat, err));
    kvrt_status st = KVRT_OK;
    for (int32_t s = 0; st == KVRT_OK && s < B; s++)
        for (int32_t b = 0; st == KVRT_OK && b < r->nb; b++) {
            r->flat_tables[s * r->nb + b] = s * r->nb + b;
            st = put_block(r, flat, s, b, s * r->nb + b, err);
        }
    double flat_s = 0;
    if (st == KVRT_OK)
        st = time_flat(r, flat, &flat_s, err);
    kvrt_kv_cache_destroy(flat);
    for (int32_t i = 0; st == KVRT_OK && i < 10; i++) {
        fprintf(stderr, "%s: %d %% of the blocks on the host\n", PROG, 10 * i);
        st = run_row(r, 10 * i, &rows[i], err);
        rows[i].flat_ms = 1e3 * flat_s;
    }
    return st;
}

static void print_rows(const tier_run *r, const tier_row *rows, FILE *f)
{
    static const char *const head[] = {"host %", "host blocks/seq", "all-device ms", "split ms", "split / all",
                                       "device ms", "host ms", "merge ms", "max |diff|"};
    kvrt_table t;
    if (!kvrt_table_init(&t, (int)KVRT_ARRAY_LEN(head), head, NULL))
        return;
    for (int i = 0; i < 10; i++) {
        const tier_row *w = &rows[i];
        if (!kvrt_table_row(&t))
            break;
        kvrt_table_cell(&t, "%d", (int)w->pct);
        kvrt_table_cell(&t, "%d / %d", (int)w->host_blocks, (int)r->nb);
        kvrt_table_cell(&t, "%.3f", w->flat_ms);
        kvrt_table_cell(&t, "%.3f", w->split_ms);
        kvrt_table_cell(&t, "%.2f", w->split_ms / w->flat_ms);
        kvrt_table_cell(&t, "%.3f", w->device_ms);
        kvrt_table_cell(&t, "%.3f", w->host_ms);
        kvrt_table_cell(&t, "%.3f", w->merge_ms);
        kvrt_table_cell(&t, "%.1e", w->max_diff);
    }
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
}

static void print_json(const tier_run *r, const tier_row *rows, FILE *f)
{
    kvrt_json j;
    kvrt_json_init(&j, f);
    kvrt_json_begin_object(&j, NULL);
    kvrt_json_str(&j, "benchmark", "attn-host-tier");
    kvrt_json_str(&j, "device", kvrt_context_description(r->ctx));
    kvrt_json_str(&j, "shape", r->o->shape);
    kvrt_json_str(&j, "kv_type", kvrt_dtype_name(r->o->common.kv_type));
    kvrt_json_int(&j, "ctx", r->o->ctx);
    kvrt_json_int(&j, "batch", r->o->batch);
    kvrt_json_int(&j, "block_size", r->bs);
    kvrt_json_begin_array(&j, "rows");
    for (int i = 0; i < 10; i++) {
        const tier_row *w = &rows[i];
        kvrt_json_begin_object(&j, NULL);
        kvrt_json_int(&j, "host_pct", w->pct);
        kvrt_json_int(&j, "host_blocks_per_seq", w->host_blocks);
        kvrt_json_num(&j, "all_device_ms", w->flat_ms);
        kvrt_json_num(&j, "split_ms", w->split_ms);
        kvrt_json_num(&j, "split_vs_all_device", w->split_ms / w->flat_ms);
        kvrt_json_num(&j, "device_ms", w->device_ms);
        kvrt_json_num(&j, "host_ms", w->host_ms);
        kvrt_json_num(&j, "merge_ms", w->merge_ms);
        kvrt_json_num(&j, "max_abs_diff", w->max_diff);
        kvrt_json_end_object(&j);
    }
    kvrt_json_end_array(&j);
    kvrt_json_end_object(&j);
    fputc('\n', f);
}

int kvrt_bench_attn_tier_main(int argc, char **argv)
{
    tier_opts o;
    memset(&o, 0, sizeof(o));
    int rc = parse(argc, argv, &o);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    const kvrt_model_shape *sh = kvrt_model_shape_find(o.shape);
    if (!sh) {
        kvrt_cli_error(PROG, "unknown shape '%s'", o.shape);
        return 2;
    }
    tier_run r;
    memset(&r, 0, sizeof(r));
    r.o = &o;
    r.n_heads = sh->n_head;
    r.n_kv = sh->n_head_kv;
    r.head_dim = kvrt_model_shape_head_dim(sh);
    r.bs = o.common.block_size;
    r.nb = (o.ctx + r.bs - 1) / r.bs;
    o.ctx = r.nb * r.bs; /* whole blocks: every host share is a whole number of them */
    r.rng = (kvrt_bench_rng){0x5eed};
    kvrt_error err = {KVRT_OK, ""};
    kvrt_context_params cp = kvrt_context_default_params();
    kvrt_cli_common_context_params(&o.common, &cp);
    if (kvrt_context_create(&cp, &r.ctx, &err) != KVRT_OK) {
        kvrt_cli_error(PROG, "%s", err.message);
        return 1;
    }
    fprintf(stderr, "%s: %s; %s, %d sequences of %d positions, blocks of %d\n", PROG,
            kvrt_context_description(r.ctx), o.shape, (int)o.batch, (int)o.ctx, (int)r.bs);
    tier_row rows[10];
    memset(rows, 0, sizeof(rows));
    kvrt_status st = run_all(&r, rows, &err);
    if (st == KVRT_OK) {
        print_rows(&r, rows, o.json ? stderr : stdout);
        if (o.json)
            print_json(&r, rows, stdout);
    } else {
        kvrt_cli_error(PROG, "%s", err.message);
    }
    void *arrays[] = {r.k, r.v, r.q, r.flat_out, r.split_out, r.lens, r.n_host, r.slots, r.flat_tables, r.tables};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(arrays); i++)
        free(arrays[i]);
    kvrt_context_destroy(r.ctx);
    return st == KVRT_OK ? 0 : 1;
}
