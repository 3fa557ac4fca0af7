/*
 * kvrt-bench attn: decode and prefill attention throughput over a grid of
 * model shapes x batch x context.
 *
 * Decode is bandwidth-bound, so each decode cell reports the KV bytes it read
 * per second and that rate as a share of the memory bandwidth measured in the
 * same run, on the same number of threads (bench.c). It also runs the same
 * decode over a contiguous copy of the same K/V bytes, so the price of paging
 * is a ratio measured on one machine at one moment.
 *
 * On a GPU backend the share is taken of a device copy bandwidth measured
 * through the backend interface in the same run (a buffer_copy between two
 * device buffers inside begin/submit, read + write bytes per second), so the
 * comparison is device memory against device memory on any backend.
 *
 * With a KV type other than F16, each decode cell runs again with F16 KV on
 * the same backend and the same data (same coordinates, same generator), so
 * the gain of a quantized type (fewer bytes to read) is a ratio measured in
 * one run: "vs f16" = F16 time / this type's time.
 *
 * Realism: each cell holds as many layers as it takes for the KV of all of
 * them to exceed 4x the last-level cache, and successive calls cycle through
 * the layers, as a model's forward pass does; otherwise small contexts would
 * be served from cache and report more than the memory can deliver.
 */
#include "bench_attn.h"
#include "bench_tier.h"

#include "bench.h"
#include "cli.h"
#include "backend/kv_layout.h"
#include "files.h"
#include "json.h"
#include "openblas_core.h"
#include "table.h"

#include "kvrt_tool_internal.h"
#include "model/shapes.h"
#include "common/fp16.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const char *const PROG = "kvrt-bench attn";

typedef struct attn_shape {
    const char *name;
    int32_t n_heads;
    int32_t n_kv_heads;
    int32_t head_dim;
} attn_shape;

/* Attention shapes of real models (one layer; layers only repeat it), from
 * the shared preset table (model/shapes.h): MHA, and GQA with 4 query heads
 * per KV head. */
static const char *const SHAPES[] = {"llama-2-7b", "llama-3-8b"};
/* --quick: tiny shapes, contexts that are and are not multiples of the block. */
static const char *const QUICK_SHAPES[] = {"tiny-mha", "tiny-gqa"};
static const int32_t CTXS[] = {512, 1024, 2048, 4096, 8192};
static const int32_t BATCHES[] = {1, 4, 16};
static const int32_t QUICK_CTXS[] = {37, 300};
static const int32_t QUICK_BATCHES[] = {1, 3};

/* Targets the issue sets (reported, never asserted). */
#define TARGET_PAGED_VS_CONTIG 0.95
#define TARGET_PCT_BANDWIDTH 60.0
#define TARGET_MIN_CTX 4096

#define MAX_LIST 16

typedef struct attn_opts {
    kvrt_cli_common common;     /* --backend --device -t --pipeline-cache --kv-type --block-size -v */
    kvrt_backend_kind backend;  /* the common flags' values, resolved (auto chosen) */
    const char *pipeline_cache; /* --pipeline-cache FILE; NULL = none */
    int n_threads;           /* 0 = all cores */
    bool json, quick;
    bool cpu_compare;        /* GPU backend: every cell again on the CPU backend */
    kvrt_dtype dtype;
    int32_t block_size;
    int32_t prefill_chunk;   /* query tokens per sequence in a prefill cell; 0 = no prefill */
    int64_t max_kv_bytes;    /* cells whose paged KV (one layer) is larger are skipped */
    double min_time;         /* seconds of timed calls per measurement */
    int min_reps, max_reps;
    attn_shape shapes[4];
    int n_shapes;
    int32_t ctxs[MAX_LIST], batches[MAX_LIST];
    int n_ctx, n_batch;
} attn_opts;

typedef struct attn_result {
    const attn_shape *shape;
    int32_t batch, ctx;
    const char *skipped;     /* reason, or NULL */
    int32_t n_layers;        /* layers the calls cycle through */
    int64_t kv_bytes;        /* K and V bytes one decode call reads (one layer) */
    int reps;
    double paged_s, contig_s; /* best time of one decode call */
    double max_abs_diff;      /* paged vs contiguous outputs */
    bool have_contig;
    int32_t prefill_tokens;   /* per sequence; 0 = not run */
    double prefill_s;
    double prefill_flops;
    bool have_cpu;            /* the same cell on the CPU backend (GPU runs only) */
    double cpu_decode_s, cpu_prefill_s;
    double cpu_max_abs_diff;  /* decode outputs, this backend vs the CPU, same data */
    bool have_f16;            /* the decode cell again with F16 KV (--kv-type other than f16) */
    double f16_decode_s;
    double paged_cpu_s, f16_cpu_s; /* least process CPU time of a call (all threads), this type and F16 */
    int64_t f16_kv_bytes;
} attn_result;

/* ---- arguments ----------------------------------------------------------------- */

static void default_opts(attn_opts *o)
{
    memset(o, 0, sizeof(*o));
    kvrt_cli_common_init(&o->common, KVRT_DTYPE_F16, 1);
    o->cpu_compare = true;
    o->prefill_chunk = 128;
    o->max_kv_bytes = (int64_t)2048 << 20;
    o->min_time = 0.3;
    o->min_reps = 3;
    o->max_reps = 1000;
}

/* The grid of --quick or the full one, unless --ctx/--batch replaced it. */
static void apply_grid(attn_opts *o, bool ctx_given, bool batch_given)
{
    const char *const *names = o->quick ? QUICK_SHAPES : SHAPES;
    o->n_shapes = (int)(o->quick ? KVRT_ARRAY_LEN(QUICK_SHAPES) : KVRT_ARRAY_LEN(SHAPES));
    for (int i = 0; i < o->n_shapes; i++) {
        const kvrt_model_shape *m = kvrt_model_shape_find(names[i]); /* in the table by construction */
        o->shapes[i] = (attn_shape){m->name, m->n_head, m->n_head_kv, kvrt_model_shape_head_dim(m)};
    }
    const int32_t *c = o->quick ? QUICK_CTXS : CTXS, *b = o->quick ? QUICK_BATCHES : BATCHES;
    if (!ctx_given) {
        o->n_ctx = (int)(o->quick ? KVRT_ARRAY_LEN(QUICK_CTXS) : KVRT_ARRAY_LEN(CTXS));
        memcpy(o->ctxs, c, (size_t)o->n_ctx * sizeof(int32_t));
    }
    if (!batch_given) {
        o->n_batch = (int)(o->quick ? KVRT_ARRAY_LEN(QUICK_BATCHES) : KVRT_ARRAY_LEN(BATCHES));
        memcpy(o->batches, b, (size_t)o->n_batch * sizeof(int32_t));
    }
    if (o->quick) {
        o->min_time = 0.0;
        o->min_reps = 2;
        o->max_reps = 2;
        if (o->prefill_chunk > 16)
            o->prefill_chunk = 16;
    }
}

/* "512,4k,8192" -> contexts in [1, 2^20]. */
static bool parse_ctxs(const char *prog, const char *flag, const char *value, void *dst)
{
    attn_opts *o = dst;
    return kvrt_cli_int_list(prog, flag, value, 1, 1 << 20, true, o->ctxs, MAX_LIST, &o->n_ctx);
}

static bool parse_batches(const char *prog, const char *flag, const char *value, void *dst)
{
    attn_opts *o = dst;
    return kvrt_cli_int_list(prog, flag, value, 1, 1024, true, o->batches, MAX_LIST, &o->n_batch);
}

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, attn_opts *o)
{
    bool ctx_given = false, batch_given = false, no_cpu_compare = false;
    int32_t max_kv_mib = 2048, min_time_ms = 300;
    default_opts(o);
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_BOOL(0, "json", &o->json, "one JSON document on stdout; the table goes to stderr"),
        KVRT_CLI_BOOL(0, "quick", &o->quick, "a tiny grid (seconds; for tests)"),
        {.name = "ctx", .kind = KVRT_CLI_KIND_CALL, .call = parse_ctxs, .dst = o, .meta = "LIST",
         .help = "contexts (default 512,1024,2048,4096,8192; 4k = 4096)", .seen = &ctx_given},
        {.name = "batch", .kind = KVRT_CLI_KIND_CALL, .call = parse_batches, .dst = o, .meta = "LIST",
         .help = "batch sizes (default 1,4,16)", .seen = &batch_given},
        {.name = "prefill-chunk", .kind = KVRT_CLI_KIND_INT32, .dst = &o->prefill_chunk, .min = 0, .max = 1 << 16,
         .flags = KVRT_CLI_K_SUFFIX, .meta = "N",
         .help = "new tokens per sequence in the prefill cells (default 128; 0 = none)"},
        KVRT_CLI_INT32(0, "max-kv-mib", &max_kv_mib, 1, 1 << 24, "N",
                       "skip cells whose KV of one layer exceeds N MiB (default 2048)"),
        KVRT_CLI_INT32(0, "min-time-ms", &min_time_ms, 0, 600000, "N",
                       "timed milliseconds per measurement (default 300)"),
        KVRT_CLI_BOOL(0, "no-cpu-compare", &no_cpu_compare,
                      "on vulkan/opencl, do not run every cell on the CPU backend too\n"
                      "(by default it does, on -t threads, and reports the speed ratios)"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-bench attn [--backend auto] [-t THREADS] [--json] [--kv-type f16|f32|q8_0|q4_0] [--quick]\n"
                 "                       [--ctx N,N,...] [--batch N,N,...] [--block-size 8|16|32]\n"
                 "                       [--prefill-chunk N] [--max-kv-mib N] [--min-time-ms N] [--no-cpu-compare]\n"
                 "                       [--pipeline-cache FILE] [--device N|NAME] [-v]",
        .about = "Decode and prefill attention throughput over model shapes (llama-2-7b: 32 q / 32 KV\n"
                 "heads, llama-3-8b: 32 q / 8 KV heads, head_dim 128) x batch x context, with the KV-read\n"
                 "rate as a share of the memory bandwidth measured in the same run, and paged vs\n"
                 "contiguous KV layout on the same data (contiguous comparison: cpu only). With a\n"
                 "--kv-type other than f16, every decode cell runs again with f16 KV on the same\n"
                 "backend and data: KV GB/s and time vs f16 in the same run.",
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
    o->dtype = o->common.kv_type;
    if (o->common.kv_type_v != o->dtype) { /* its pools and contiguous baseline hold one type */
        kvrt_cli_error(PROG, "--kv-type-k %s and --kv-type-v %s differ: kvrt-bench attn measures one KV type "
                       "(kvrt-bench model and kv take a pair)", kvrt_dtype_name(o->dtype),
                       kvrt_dtype_name(o->common.kv_type_v));
        return KVRT_CLI_USAGE;
    }
    o->block_size = o->common.block_size;
    o->cpu_compare = !no_cpu_compare;
    o->max_kv_bytes = (int64_t)max_kv_mib << 20;
    o->min_time = (double)min_time_ms * 1e-3;
    apply_grid(o, ctx_given, batch_given);
    return KVRT_CLI_CONTINUE;
}

/* ---- one cell ------------------------------------------------------------------ */

/* Everything one (shape, batch, context) cell allocates. */
typedef struct attn_cell {
    const attn_opts *o;
    const attn_shape *shape;
    int32_t batch, ctx, blocks_per_seq, n_layers;
    kvrt_kv_cache *cache;
    int32_t *tables;   /* [batch][blocks_per_seq], a shuffled permutation of the pool */
    int32_t *seq_lens; /* [batch] */
    void **ck, **cv;   /* [n_layers] -> [batch][n_kv_heads][ctx][head_dim] contiguous copies */
    float *q;          /* [max(batch, batch * prefill)][n_heads][head_dim] */
    float *out_paged, *out_contig;
    kvrt_bench_rng rng;
} attn_cell;

static size_t elem_size(kvrt_dtype t)
{
    return t == KVRT_DTYPE_F16 ? 2 : 4;
}

/* Bytes of one head's row of head_dim values in the pool, scales of
 * quantized types included; 0 when the type does not fit head_dim. */
static int64_t kv_row_bytes(kvrt_dtype t, int32_t head_dim)
{
    return (int64_t)kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(t), 1, 1, head_dim);
}

/* Decode cells run with F16 KV too when the type is another one. */
static bool f16_compared(const attn_opts *o)
{
    return o->dtype != KVRT_DTYPE_F16;
}

/* Quantized KV (q8_0, q4_0, fp8) has no contiguous decode to compare with
 * (paged only): the contiguous decode holds F32 or F16. */
static bool kv_quantized(kvrt_dtype t)
{
    return t != KVRT_DTYPE_F32 && t != KVRT_DTYPE_F16;
}

static void cell_free(attn_cell *c)
{
    kvrt_kv_cache_destroy(c->cache);
    for (int32_t l = 0; l < c->n_layers; l++) {
        if (c->ck)
            free(c->ck[l]);
        if (c->cv)
            free(c->cv[l]);
    }
    free(c->ck);
    free(c->cv);
    free(c->tables);
    free(c->seq_lens);
    free(c->q);
    free(c->out_paged);
    free(c->out_contig);
    memset(c, 0, sizeof(*c));
}

/* A shuffled block table, so the paged run really chases scattered blocks. */
static void make_tables(attn_cell *c)
{
    int32_t n = c->batch * c->blocks_per_seq;
    for (int32_t i = 0; i < n; i++)
        c->tables[i] = i;
    for (int32_t i = n - 1; i > 0; i--) {
        int32_t j = (int32_t)((kvrt_bench_rng_f32(&c->rng) * 0.5f + 0.5f) * (float)(i + 1));
        j = KVRT_MIN(j, i);
        int32_t t = c->tables[i];
        c->tables[i] = c->tables[j];
        c->tables[j] = t;
    }
    for (int32_t s = 0; s < c->batch; s++)
        c->seq_lens[s] = c->ctx;
}

/* Writes random K/V for every token of every sequence into every layer
 * (the same values in each: the data does not change the speed). */
static kvrt_status fill_cache(attn_cell *c, kvrt_error *err)
{
    enum { CHUNK = 64 };
    const attn_shape *sh = c->shape;
    size_t row = (size_t)sh->n_kv_heads * (size_t)sh->head_dim;
    float *k = malloc(CHUNK * row * sizeof(float)), *v = malloc(CHUNK * row * sizeof(float));
    int32_t slots[CHUNK];
    kvrt_status st = (k && v) ? KVRT_OK : kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "K/V staging");
    for (int32_t s = 0; st == KVRT_OK && s < c->batch; s++) {
        for (int32_t t0 = 0; st == KVRT_OK && t0 < c->ctx; t0 += CHUNK) {
            int32_t n = KVRT_MIN(CHUNK, c->ctx - t0);
            kvrt_bench_rng_fill(&c->rng, k, (size_t)n * row);
            kvrt_bench_rng_fill(&c->rng, v, (size_t)n * row);
            for (int32_t t = 0; t < n; t++) {
                int32_t pos = t0 + t;
                slots[t] = c->tables[s * c->blocks_per_seq + pos / c->o->block_size] * c->o->block_size +
                           pos % c->o->block_size;
            }
            for (int32_t l = 0; st == KVRT_OK && l < c->n_layers; l++) {
                st = kvrt_kv_cache_write(c->cache, l, k, v, slots, n);
                if (st != KVRT_OK)
                    kvrt_fail(err, st, "kv write: %s", kvrt_kv_cache_message(c->cache));
            }
        }
    }
    free(k);
    free(v);
    return st;
}

/* Memory for the contiguous layout, on huge pages like the CPU backend's KV
 * pools, so the comparison measures the layout and not the page size. */
static void *alloc_like_pool(size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    void *p = NULL;
    if (posix_memalign(&p, huge, bytes) != 0)
        return NULL;
    madvise(p, bytes & ~(huge - 1), MADV_HUGEPAGE); /* advice only */
    return p;
}

/* Copies the cache's bytes block by block into [seq][kv_head][pos][head_dim]:
 * the contiguous run reads exactly the values the paged run reads. */
static kvrt_status make_contiguous(attn_cell *c, kvrt_error *err)
{
    const attn_shape *sh = c->shape;
    size_t es = elem_size(c->o->dtype), bs = (size_t)c->o->block_size, hd = (size_t)sh->head_dim;
    size_t head_bytes = bs * hd * es; /* one KV head of one block */
    size_t block_bytes = kvrt_kv_cache_block_bytes(c->cache);
    size_t layer_bytes = (size_t)c->batch * (size_t)sh->n_kv_heads * (size_t)c->ctx * hd * es;
    unsigned char *blk = malloc(block_bytes);
    if (!blk)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "block staging");
    kvrt_status st = KVRT_OK;
    for (int32_t l = 0; st == KVRT_OK && l < c->n_layers; l++) {
        for (int which = 0; st == KVRT_OK && which < 2; which++) {
            unsigned char *dst = alloc_like_pool(layer_bytes);
            (which ? c->cv : c->ck)[l] = dst;
            if (!dst) {
                st = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "contiguous KV: %zu bytes", layer_bytes);
                break;
            }
            for (int32_t s = 0; st == KVRT_OK && s < c->batch; s++) {
                for (int32_t b = 0; b < c->blocks_per_seq; b++) {
                    st = kvrt_kv_cache_read_block(c->cache, l, which, c->tables[s * c->blocks_per_seq + b], blk,
                                                  block_bytes);
                    if (st != KVRT_OK) {
                        kvrt_fail(err, st, "read block: %s", kvrt_kv_cache_message(c->cache));
                        break;
                    }
                    size_t n_pos = KVRT_MIN(bs, (size_t)(c->ctx - b * c->o->block_size));
                    for (int32_t h = 0; h < sh->n_kv_heads; h++) {
                        size_t off = (((size_t)s * (size_t)sh->n_kv_heads + (size_t)h) * (size_t)c->ctx +
                                      (size_t)b * bs) * hd * es;
                        memcpy(dst + off, blk + (size_t)h * head_bytes, n_pos * hd * es);
                    }
                }
            }
        }
    }
    free(blk);
    return st;
}

/* Bytes of one layer of the paged pool (K and V). */
static int64_t pool_layer_bytes(const attn_opts *o, const attn_shape *sh, int32_t batch, int32_t ctx)
{
    int64_t blocks = (int64_t)batch * ((ctx + o->block_size - 1) / o->block_size);
    return 2 * blocks * o->block_size * sh->n_kv_heads * kv_row_bytes(o->dtype, sh->head_dim);
}

/* `contig`: also copy the K/V into contiguous buffers (CPU backend only).
 * The data depend on the shape, batch and context alone, so two cells of the
 * same coordinates on two backends hold the same K/V and queries. */
static kvrt_status cell_create(attn_cell *c, kvrt_context *ctx, const attn_opts *o, const attn_shape *sh,
                               int32_t batch, int32_t ctx_len, size_t llc, bool contig, kvrt_error *err)
{
    memset(c, 0, sizeof(*c));
    c->o = o;
    c->shape = sh;
    c->batch = batch;
    c->ctx = ctx_len;
    c->blocks_per_seq = (ctx_len + o->block_size - 1) / o->block_size;
    c->rng.state = 0x6b7672742d62656eull ^ ((uint64_t)batch << 32) ^ (uint64_t)ctx_len;
    int64_t layer = pool_layer_bytes(o, sh, batch, ctx_len);
    int64_t want = (int64_t)(4 * llc);
    c->n_layers = (int32_t)KVRT_MIN((want + layer - 1) / layer, o->quick ? 2 : 64);
    kvrt_kv_cache_params p = {1, sh->n_kv_heads, sh->head_dim, o->block_size, batch * c->blocks_per_seq, .dtype = o->dtype};
    p.n_layers = c->n_layers;
    KVRT_TRY(kvrt_kv_cache_create(ctx, &p, &c->cache, err));
    int32_t max_tok = batch * KVRT_MAX(1, KVRT_MIN(o->prefill_chunk, ctx_len));
    size_t q_elems = (size_t)KVRT_MAX(batch, max_tok) * (size_t)sh->n_heads * (size_t)sh->head_dim;
    c->tables = calloc((size_t)batch * (size_t)c->blocks_per_seq, sizeof(int32_t));
    c->seq_lens = calloc((size_t)batch, sizeof(int32_t));
    c->ck = calloc((size_t)c->n_layers, sizeof(void *));
    c->cv = calloc((size_t)c->n_layers, sizeof(void *));
    c->q = malloc(q_elems * sizeof(float));
    c->out_paged = malloc(q_elems * sizeof(float));
    c->out_contig = malloc(q_elems * sizeof(float));
    if (!c->tables || !c->seq_lens || !c->ck || !c->cv || !c->q || !c->out_paged || !c->out_contig)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "benchmark arrays");
    kvrt_bench_rng_fill(&c->rng, c->q, q_elems);
    make_tables(c);
    KVRT_TRY(fill_cache(c, err));
    if (contig)
        KVRT_TRY(make_contiguous(c, err));
    return KVRT_OK;
}

/* ---- timing ---------------------------------------------------------------------- */

typedef kvrt_status (*attn_call_fn)(attn_cell *c, kvrt_context *ctx, int32_t layer, kvrt_error *err);

static kvrt_attention_params attn_params(const attn_cell *c)
{
    kvrt_attention_params p;
    memset(&p, 0, sizeof(p));
    p.n_heads = c->shape->n_heads;
    p.max_blocks_per_seq = c->blocks_per_seq;
    return p;
}

static kvrt_status call_paged_decode(attn_cell *c, kvrt_context *ctx, int32_t layer, kvrt_error *err)
{
    kvrt_attention_params p = attn_params(c);
    kvrt_status st = kvrt_attention_decode(c->cache, layer, &p, c->batch, c->q, c->seq_lens, c->tables,
                                           c->out_paged);
    return st == KVRT_OK ? st : kvrt_fail(err, st, "paged decode: %s", kvrt_kv_cache_message(c->cache));
}

static kvrt_status call_contig_decode(attn_cell *c, kvrt_context *ctx, int32_t layer, kvrt_error *err)
{
    const attn_shape *sh = c->shape;
    kvrt_tool_contig_kv kv = {c->o->dtype, sh->n_kv_heads, sh->head_dim, c->ctx, c->ck[layer], c->cv[layer]};
    return kvrt_tool_contig_decode(ctx, &kv, c->batch, sh->n_heads, c->q, c->seq_lens, c->out_contig, err);
}

/* Chunked prefill: each sequence's last `chunk` tokens attend to its cached prefix and to each other. */
static kvrt_status call_prefill(attn_cell *c, kvrt_context *ctx, int32_t layer, kvrt_error *err)
{
    int32_t chunk = KVRT_MIN(c->o->prefill_chunk, c->ctx);
    int32_t qsl[1025];
    for (int32_t s = 0; s <= c->batch; s++)
        qsl[s] = s * chunk;
    kvrt_attention_params p = attn_params(c);
    kvrt_status st = kvrt_attention_prefill(c->cache, layer, &p, c->batch, qsl, c->q, c->seq_lens, c->tables,
                                            c->out_paged);
    return st == KVRT_OK ? st : kvrt_fail(err, st, "prefill: %s", kvrt_kv_cache_message(c->cache));
}

/* Best time of one call, cycling through the layers: one untimed call, then
 * at least min_reps timed calls and at least min_time seconds in all; a
 * single timed call when the untimed one alone took longer than min_time
 * (large prefill cells: repeating them would only cost minutes). best_cpu
 * (or NULL): the least process CPU time of a call, all threads, which other
 * work on a shared machine does not inflate the way it does wall time. */
static kvrt_status time_calls_cpu(attn_cell *c, kvrt_context *ctx, attn_call_fn fn, double *best, double *best_cpu,
                                  int *reps, kvrt_error *err)
{
    double t0 = kvrt_bench_now();
    KVRT_TRY(fn(c, ctx, 0, err));
    bool slow = c->o->min_time > 0 && kvrt_bench_now() - t0 > c->o->min_time;
    int min_reps = slow ? 1 : c->o->min_reps;
    double total = 0.0, cpu_best = 1e30;
    *best = 1e30;
    int r = 0;
    while (r < c->o->max_reps && (r < min_reps || total < c->o->min_time)) {
        double c1 = kvrt_bench_process_cpu_s(), t1 = kvrt_bench_now();
        KVRT_TRY(fn(c, ctx, (int32_t)((r + 1) % c->n_layers), err));
        double dt = kvrt_bench_now() - t1, dc = kvrt_bench_process_cpu_s() - c1;
        *best = KVRT_MIN(*best, dt);
        cpu_best = KVRT_MIN(cpu_best, dc);
        total += dt;
        r++;
    }
    *reps = r;
    if (best_cpu)
        *best_cpu = cpu_best;
    return KVRT_OK;
}

static kvrt_status time_calls(attn_cell *c, kvrt_context *ctx, attn_call_fn fn, double *best, int *reps,
                              kvrt_error *err)
{
    return time_calls_cpu(c, ctx, fn, best, NULL, reps, err);
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        m = (d > m || isnan(d)) ? d : m;
    }
    return m;
}

/* Multiply-adds of QK^T and PV for queries at positions ctx-chunk .. ctx-1, causal. */
static double prefill_flops(const attn_shape *sh, int32_t batch, int32_t ctx, int32_t chunk)
{
    double keys = (double)chunk * (double)ctx - (double)chunk * (double)(chunk - 1) / 2.0;
    return 4.0 * (double)batch * keys * (double)sh->n_heads * (double)sh->head_dim;
}

/* The cell again on the CPU backend (`gpu` is the device cell, still alive):
 * decode and prefill times, and the decode outputs of both on the same layer. */
static kvrt_status run_cpu_cell(kvrt_context *cpu, attn_cell *gpu, size_t llc, attn_result *r, kvrt_error *err)
{
    const attn_opts *o = gpu->o;
    attn_cell c;
    int reps;
    kvrt_status st = cell_create(&c, cpu, o, r->shape, r->batch, r->ctx, llc, false, err);
    if (st == KVRT_OK)
        st = time_calls(&c, cpu, call_paged_decode, &r->cpu_decode_s, &reps, err);
    if (st == KVRT_OK && r->prefill_tokens > 0)
        st = time_calls(&c, cpu, call_prefill, &r->cpu_prefill_s, &reps, err);
    if (st == KVRT_OK)
        st = call_paged_decode(&c, cpu, 0, err);
    if (st == KVRT_OK)
        st = call_paged_decode(gpu, NULL, 0, err);
    if (st == KVRT_OK) {
        size_t n = (size_t)r->batch * (size_t)r->shape->n_heads * (size_t)r->shape->head_dim;
        r->cpu_max_abs_diff = max_abs_diff(gpu->out_paged, c.out_paged, n);
        r->have_cpu = true;
    }
    cell_free(&c);
    return st;
}

/* Rounds of "this type, then F16" timings: on a machine shared with other
 * work, each side's best over interleaved rounds sees the same background,
 * so "vs f16" measures the KV type rather than when it ran. */
#define F16_ROUNDS 3

/* The decode cell with this type (c) and again with F16 KV, same backend and
 * data, timed in alternating rounds: the type's time and the baseline of "vs f16". */
static kvrt_status time_vs_f16(attn_cell *c, kvrt_context *ctx, size_t llc, attn_result *r, kvrt_error *err)
{
    attn_opts f16 = *c->o;
    f16.dtype = KVRT_DTYPE_F16;
    attn_cell fc;
    kvrt_status st = cell_create(&fc, ctx, &f16, r->shape, r->batch, r->ctx, llc, false, err);
    r->paged_s = r->f16_decode_s = r->paged_cpu_s = r->f16_cpu_s = 1e30;
    for (int round = 0; round < F16_ROUNDS && st == KVRT_OK; round++) {
        double t = 1e30, tc = 1e30;
        int reps = 0;
        st = time_calls_cpu(c, ctx, call_paged_decode, &t, &tc, &reps, err);
        r->paged_s = KVRT_MIN(r->paged_s, t);
        r->paged_cpu_s = KVRT_MIN(r->paged_cpu_s, tc);
        r->reps += reps;
        if (st == KVRT_OK)
            st = time_calls_cpu(&fc, ctx, call_paged_decode, &t, &tc, &reps, err);
        r->f16_decode_s = KVRT_MIN(r->f16_decode_s, t);
        r->f16_cpu_s = KVRT_MIN(r->f16_cpu_s, tc);
    }
    r->f16_kv_bytes = 2 * (int64_t)r->batch * r->ctx * r->shape->n_kv_heads * kv_row_bytes(KVRT_DTYPE_F16,
                                                                                            r->shape->head_dim);
    r->have_f16 = st == KVRT_OK;
    cell_free(&fc);
    return st;
}

/* `cpu`: a CPU context to run the cell on as well, or NULL. */
static kvrt_status run_cell(kvrt_context *ctx, kvrt_context *cpu, const attn_opts *o, size_t llc, attn_result *r,
                            kvrt_error *err)
{
    const attn_shape *sh = r->shape;
    r->kv_bytes = 2 * (int64_t)r->batch * r->ctx * sh->n_kv_heads * kv_row_bytes(o->dtype, sh->head_dim);
    if (kv_row_bytes(o->dtype, sh->head_dim) == 0) {
        r->skipped = "head_dim not a multiple of 32 (quantized KV)";
        return KVRT_OK;
    }
    if (pool_layer_bytes(o, sh, r->batch, r->ctx) > o->max_kv_bytes) {
        r->skipped = "KV of one layer above --max-kv-mib";
        return KVRT_OK;
    }
    attn_cell c;
    bool contig = o->backend == KVRT_BACKEND_CPU && !kv_quantized(o->dtype);
    kvrt_status st = cell_create(&c, ctx, o, sh, r->batch, r->ctx, llc, contig, err);
    r->n_layers = c.n_layers;
    if (st == KVRT_OK && f16_compared(o))
        st = time_vs_f16(&c, ctx, llc, r, err);
    else if (st == KVRT_OK)
        st = time_calls(&c, ctx, call_paged_decode, &r->paged_s, &r->reps, err);
    if (st == KVRT_OK && contig) {
        int reps;
        st = time_calls(&c, ctx, call_contig_decode, &r->contig_s, &reps, err);
        /* the same layer through both layouts: the outputs should agree */
        if (st == KVRT_OK)
            st = call_paged_decode(&c, ctx, 0, err);
        if (st == KVRT_OK)
            st = call_contig_decode(&c, ctx, 0, err);
        if (st == KVRT_OK) {
            size_t n = (size_t)r->batch * (size_t)sh->n_heads * (size_t)sh->head_dim;
            r->max_abs_diff = max_abs_diff(c.out_paged, c.out_contig, n);
            r->have_contig = true;
        }
    }
    if (st == KVRT_OK && o->prefill_chunk > 0) {
        int reps;
        r->prefill_tokens = KVRT_MIN(o->prefill_chunk, r->ctx);
        st = time_calls(&c, ctx, call_prefill, &r->prefill_s, &reps, err);
        r->prefill_flops = prefill_flops(sh, r->batch, r->ctx, r->prefill_tokens);
    }
    if (st == KVRT_OK && cpu)
        st = run_cpu_cell(cpu, &c, llc, r, err);
    cell_free(&c);
    return st;
}

/* ---- reporting --------------------------------------------------------------------- */

typedef struct attn_run {
    attn_opts o;
    kvrt_bench_bw bw;
    size_t llc;
    const char *device;
    const char *kernels;
    int n_threads;
    attn_result *res;
    int n_res;
    double dev_copy_gbs;   /* buffer_copy through the backend: read + write bytes per second */
    size_t dev_copy_bytes; /* size of each of the two device buffers */
    int dev_copy_passes;
} attn_run;

static double gbs(int64_t bytes, double s)
{
    return s > 0 ? (double)bytes / s * 1e-9 : NAN;
}

/* The bandwidth decode is compared with: host reads on the CPU, device copies elsewhere. */
static double ref_bw(const attn_run *run)
{
    return run->o.backend == KVRT_BACKEND_CPU ? run->bw.read_gbs : run->dev_copy_gbs;
}

static double pct_bw(const attn_run *run, const attn_result *r)
{
    return 100.0 * gbs(r->kv_bytes, r->paged_s) / ref_bw(run);
}

/* Speed of this backend over the CPU's on the same cell (> 1: faster). */
static double vs_cpu(double cpu_s, double s)
{
    return s > 0 ? cpu_s / s : NAN;
}

/* A baseline's time over this time (> 1: this one is faster). */
static double speedup(double base_s, double s)
{
    return s > 0 ? base_s / s : NAN;
}

static bool cpu_compared(const attn_run *run)
{
    return run->o.backend != KVRT_BACKEND_CPU && run->o.cpu_compare;
}

/* The contiguous columns (CPU runs), or the CPU comparison ones (GPU runs). */
static void layout_or_cpu_cells(const attn_result *r, kvrt_table *t)
{
    if (r->have_contig) {
        kvrt_table_cell(t, "%.2f", gbs(r->kv_bytes, r->contig_s));
        kvrt_table_cell(t, "%.3f", r->contig_s / r->paged_s);
    } else if (r->have_cpu) {
        kvrt_table_cell(t, "%.3f", r->cpu_decode_s * 1e3);
        kvrt_table_cell(t, "%.2f", vs_cpu(r->cpu_decode_s, r->paged_s));
    } else { /* the contiguous decode runs on the CPU only */
        kvrt_table_cell(t, "n/a");
        kvrt_table_cell(t, "n/a");
    }
}

static void print_table(const attn_run *run, FILE *f)
{
    bool cmp = cpu_compared(run), f16 = f16_compared(&run->o);
    /* the F16 columns follow "% bw" (present on every cell that ran) */
    const char *hdr[20] = {"model", "kv", "batch", "ctx", "decode ms", "KV GB/s", "% bw"};
    int n = 7;
    if (f16)
        hdr[n++] = "f16 ms", hdr[n++] = "f16 GB/s", hdr[n++] = "vs f16", hdr[n++] = "vs f16 cpu";
    static const char *const tail[] = {"contig GB/s", "paged/contig", "prefill tok", "prefill ms", "GFLOP/s"};
    static const char *const tail_cpu[] = {"cpu dec ms", "dec vs cpu", "prefill tok", "prefill ms", "GFLOP/s",
                                           "cpu pre ms", "pre vs cpu"};
    for (int i = 0; i < (cmp ? 7 : 5); i++)
        hdr[n++] = cmp ? tail_cpu[i] : tail[i];
    kvrt_table t;
    kvrt_table_init(&t, n, hdr, "llrrrrrrrrrrrrrrrrrr");
    for (int i = 0; i < run->n_res; i++) {
        const attn_result *r = &run->res[i];
        if (!kvrt_table_row(&t))
            break;
        kvrt_table_cell(&t, "%s", r->shape->name);
        kvrt_table_cell(&t, "%s", kvrt_dtype_name(run->o.dtype));
        kvrt_table_cell(&t, "%d", (int)r->batch);
        kvrt_table_cell(&t, "%d", (int)r->ctx);
        if (r->skipped) {
            kvrt_table_cell(&t, "skipped");
            continue;
        }
        kvrt_table_cell(&t, "%.3f", r->paged_s * 1e3);
        kvrt_table_cell(&t, "%.2f", gbs(r->kv_bytes, r->paged_s));
        kvrt_table_cell(&t, "%.1f", pct_bw(run, r));
        if (f16) {
            kvrt_table_cell(&t, "%.3f", r->f16_decode_s * 1e3);
            kvrt_table_cell(&t, "%.2f", gbs(r->f16_kv_bytes, r->f16_decode_s));
            kvrt_table_cell(&t, "%.2f", speedup(r->f16_decode_s, r->paged_s));
            kvrt_table_cell(&t, "%.2f", speedup(r->f16_cpu_s, r->paged_cpu_s));
        }
        layout_or_cpu_cells(r, &t);
        if (r->prefill_tokens > 0) {
            kvrt_table_cell(&t, "%d", (int)r->prefill_tokens);
            kvrt_table_cell(&t, "%.3f", r->prefill_s * 1e3);
            kvrt_table_cell(&t, "%.2f", r->prefill_flops / r->prefill_s * 1e-9);
            if (r->have_cpu) {
                kvrt_table_cell(&t, "%.3f", r->cpu_prefill_s * 1e3);
                kvrt_table_cell(&t, "%.2f", vs_cpu(r->cpu_prefill_s, r->prefill_s));
            }
        }
    }
    char blas[160];
    kvrt_tool_openblas_describe(blas, sizeof(blas));
    fprintf(f, "kvrt-bench attn: %s; attention kernels %s; %s (not used by attention)\n", run->device, run->kernels,
            blas);
    fprintf(f, "memory bandwidth (%d threads, 2 x %zu MiB, LLC %zu MiB, best of %d): read %.2f GB/s, copy %.2f GB/s\n",
            run->bw.n_threads, run->bw.bytes >> 20, run->llc >> 20, run->bw.passes, run->bw.read_gbs,
            run->bw.copy_gbs);
    fprintf(f, "device copy through the backend (2 x %zu MiB, best of %d): %.2f GB/s read + write\n",
            run->dev_copy_bytes >> 20, run->dev_copy_passes, run->dev_copy_gbs);
    if (cpu_compared(run))
        fprintf(f, "every cell also ran on the CPU backend (%d threads) on the same data: cpu ms = its best call, "
                   "vs cpu = CPU time / %s time (> 1: %s is faster)\n",
                run->n_threads, kvrt_backend_name(run->o.backend), kvrt_backend_name(run->o.backend));
    if (f16)
        fprintf(f, "every decode cell also ran with f16 KV on %s on the same data, in %d alternating rounds "
                   "(each side's best): vs f16 = f16 time / %s time (> 1: %s KV is faster); vs f16 cpu = the same with the "
                   "least process CPU time of a call (all threads; not inflated by other work on the machine)\n",
                kvrt_backend_name(run->o.backend), F16_ROUNDS, kvrt_dtype_name(run->o.dtype),
                kvrt_dtype_name(run->o.dtype));
    fprintf(f, "%% bw is taken of the %s\n", run->o.backend == KVRT_BACKEND_CPU ? "host read bandwidth"
                                                                              : "device copy bandwidth");
    fprintf(f, "decode: best call out of >= %.0f ms of calls, layers cycled so KV exceeds 4x LLC; paged/contig = contiguous time / "
               "paged time; %% bw = KV-read rate / the bandwidth named above\n\n",
            run->o.min_time * 1e3);
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
}

/* Worst ratios against the targets. */
typedef struct attn_summary {
    double min_ratio;        /* paged vs contiguous, all cells */
    double min_pct_long;     /* % of bandwidth, contexts >= TARGET_MIN_CTX */
    double mean_ratio;
} attn_summary;

static attn_summary summarize(const attn_run *run)
{
    attn_summary s = {NAN, NAN, NAN};
    double sum = 0.0;
    int n = 0;
    for (int i = 0; i < run->n_res; i++) {
        const attn_result *r = &run->res[i];
        if (r->skipped)
            continue;
        if (r->have_contig) {
            double ratio = r->contig_s / r->paged_s;
            s.min_ratio = (n == 0 || ratio < s.min_ratio) ? ratio : s.min_ratio;
            sum += ratio;
            n++;
        }
        if (r->ctx >= TARGET_MIN_CTX) {
            double p = pct_bw(run, r);
            s.min_pct_long = (isnan(s.min_pct_long) || p < s.min_pct_long) ? p : s.min_pct_long;
        }
    }
    s.mean_ratio = n ? sum / n : NAN;
    return s;
}

static void print_summary(const attn_run *run, FILE *f)
{
    attn_summary s = summarize(run);
    fprintf(f, "\ntargets: paged/contig >= %.2f: ", TARGET_PAGED_VS_CONTIG);
    if (isnan(s.min_ratio))
        fprintf(f, "not measured; ");
    else
        fprintf(f, "worst %.3f, mean %.3f (%s); ", s.min_ratio, s.mean_ratio,
                s.min_ratio >= TARGET_PAGED_VS_CONTIG ? "met" : "missed");
    fprintf(f, "KV read >= %.0f %% of bandwidth at ctx >= %d: ", TARGET_PCT_BANDWIDTH, TARGET_MIN_CTX);
    if (isnan(s.min_pct_long))
        fprintf(f, "no such cells\n");
    else
        fprintf(f, "worst %.1f %% (%s)\n", s.min_pct_long, s.min_pct_long >= TARGET_PCT_BANDWIDTH ? "met" : "missed");
}

/* The CPU comparison of a GPU cell; null fields when it did not run. */
static void json_cpu(kvrt_json *j, const attn_result *r)
{
    bool pre = r->have_cpu && r->prefill_tokens > 0;
    kvrt_json_num(j, "cpu_decode_ms", r->have_cpu ? r->cpu_decode_s * 1e3 : NAN);
    kvrt_json_num(j, "vs_cpu_decode", r->have_cpu ? vs_cpu(r->cpu_decode_s, r->paged_s) : NAN);
    kvrt_json_num(j, "cpu_prefill_ms", pre ? r->cpu_prefill_s * 1e3 : NAN);
    kvrt_json_num(j, "vs_cpu_prefill", pre ? vs_cpu(r->cpu_prefill_s, r->prefill_s) : NAN);
    kvrt_json_num(j, "cpu_max_abs_diff", r->have_cpu ? r->cpu_max_abs_diff : NAN);
}

static void json_result(kvrt_json *j, const attn_run *run, const attn_result *r)
{
    kvrt_json_begin_object(j, NULL);
    kvrt_json_str(j, "model", r->shape->name);
    kvrt_json_int(j, "n_heads", r->shape->n_heads);
    kvrt_json_int(j, "n_kv_heads", r->shape->n_kv_heads);
    kvrt_json_int(j, "head_dim", r->shape->head_dim);
    kvrt_json_int(j, "batch", r->batch);
    kvrt_json_int(j, "ctx", r->ctx);
    kvrt_json_str(j, "skipped", r->skipped);
    if (!r->skipped) {
        kvrt_json_int(j, "layers_cycled", r->n_layers);
        kvrt_json_int(j, "kv_bytes_per_call", r->kv_bytes);
        kvrt_json_begin_object(j, "decode");
        kvrt_json_int(j, "reps", r->reps);
        kvrt_json_num(j, "paged_ms", r->paged_s * 1e3);
        kvrt_json_num(j, "kv_read_gbs", gbs(r->kv_bytes, r->paged_s));
        kvrt_json_num(j, "pct_bandwidth", pct_bw(run, r));
        kvrt_json_num(j, "contiguous_ms", r->have_contig ? r->contig_s * 1e3 : NAN);
        kvrt_json_num(j, "contiguous_gbs", r->have_contig ? gbs(r->kv_bytes, r->contig_s) : NAN);
        kvrt_json_num(j, "paged_vs_contiguous", r->have_contig ? r->contig_s / r->paged_s : NAN);
        kvrt_json_num(j, "max_abs_diff", r->have_contig ? r->max_abs_diff : NAN);
        /* the same cell with F16 KV (kv_type other than f16), null otherwise */
        kvrt_json_num(j, "f16_ms", r->have_f16 ? r->f16_decode_s * 1e3 : NAN);
        kvrt_json_num(j, "f16_kv_read_gbs", r->have_f16 ? gbs(r->f16_kv_bytes, r->f16_decode_s) : NAN);
        kvrt_json_num(j, "vs_f16", r->have_f16 ? speedup(r->f16_decode_s, r->paged_s) : NAN);
        kvrt_json_num(j, "cpu_ms", r->have_f16 ? r->paged_cpu_s * 1e3 : NAN);
        kvrt_json_num(j, "f16_cpu_ms", r->have_f16 ? r->f16_cpu_s * 1e3 : NAN);
        kvrt_json_num(j, "vs_f16_cpu", r->have_f16 ? speedup(r->f16_cpu_s, r->paged_cpu_s) : NAN);
        kvrt_json_end_object(j);
        json_cpu(j, r);
        if (r->prefill_tokens > 0) {
            kvrt_json_begin_object(j, "prefill");
            kvrt_json_int(j, "tokens_per_seq", r->prefill_tokens);
            kvrt_json_num(j, "ms", r->prefill_s * 1e3);
            kvrt_json_num(j, "tokens_per_s", (double)r->prefill_tokens * r->batch / r->prefill_s);
            kvrt_json_num(j, "gflops", r->prefill_flops / r->prefill_s * 1e-9);
            kvrt_json_end_object(j);
        } else {
            kvrt_json_str(j, "prefill", NULL);
        }
    }
    kvrt_json_end_object(j);
}

static void print_json(const attn_run *run, FILE *f)
{
    kvrt_json j;
    kvrt_json_init(&j, f);
    kvrt_json_begin_object(&j, NULL);
    kvrt_json_str(&j, "tool", "kvrt-bench");
    kvrt_json_str(&j, "bench", "attn");
    kvrt_json_str(&j, "kvrt_version", kvrt_version());
    kvrt_json_str(&j, "backend", kvrt_backend_name(run->o.backend));
    kvrt_json_str(&j, "device", run->device);
    kvrt_json_int(&j, "threads", run->n_threads);
    kvrt_json_str(&j, "openblas_core", kvrt_tool_openblas_core());
    kvrt_json_str(&j, "openblas_coretype_env", getenv("OPENBLAS_CORETYPE"));
    kvrt_json_str(&j, "attn_kernels", run->kernels);
    kvrt_json_str(&j, "kv_type", kvrt_dtype_name(run->o.dtype));
    kvrt_json_int(&j, "block_size", run->o.block_size);
    kvrt_json_bool(&j, "quick", run->o.quick);
    kvrt_json_num(&j, "min_time_ms", run->o.min_time * 1e3);
    kvrt_json_begin_object(&j, "memory_bandwidth");
    kvrt_json_num(&j, "read_gbs", run->bw.read_gbs);
    kvrt_json_num(&j, "copy_gbs", run->bw.copy_gbs);
    kvrt_json_int(&j, "buffer_bytes", (int64_t)run->bw.bytes);
    kvrt_json_int(&j, "llc_bytes", (int64_t)run->llc);
    kvrt_json_int(&j, "threads", run->bw.n_threads);
    kvrt_json_int(&j, "passes", run->bw.passes);
    kvrt_json_end_object(&j);
    kvrt_json_begin_object(&j, "device_copy_bandwidth");
    kvrt_json_num(&j, "gbs", run->dev_copy_gbs); /* read + write bytes per second */
    kvrt_json_int(&j, "buffer_bytes", (int64_t)run->dev_copy_bytes);
    kvrt_json_int(&j, "passes", run->dev_copy_passes);
    kvrt_json_end_object(&j);
    kvrt_json_bool(&j, "cpu_compare", cpu_compared(run));
    kvrt_json_str(&j, "pct_bandwidth_of", run->o.backend == KVRT_BACKEND_CPU ? "memory_bandwidth.read_gbs"
                                                                           : "device_copy_bandwidth.gbs");
    kvrt_json_begin_array(&j, "results");
    for (int i = 0; i < run->n_res; i++)
        json_result(&j, run, &run->res[i]);
    kvrt_json_end_array(&j);
    attn_summary s = summarize(run);
    kvrt_json_begin_object(&j, "summary");
    kvrt_json_num(&j, "min_paged_vs_contiguous", s.min_ratio);
    kvrt_json_num(&j, "mean_paged_vs_contiguous", s.mean_ratio);
    kvrt_json_num(&j, "min_pct_bandwidth_long_ctx", s.min_pct_long);
    kvrt_json_num(&j, "target_paged_vs_contiguous", TARGET_PAGED_VS_CONTIG);
    kvrt_json_num(&j, "target_pct_bandwidth", TARGET_PCT_BANDWIDTH);
    kvrt_json_int(&j, "target_min_ctx", TARGET_MIN_CTX);
    kvrt_json_end_object(&j);
    kvrt_json_end_object(&j);
}

/* ---- main -------------------------------------------------------------------------- */

static kvrt_status run_grid(kvrt_context *ctx, kvrt_context *cpu, attn_run *run, kvrt_error *err)
{
    const attn_opts *o = &run->o;
    int total = o->n_shapes * o->n_batch * o->n_ctx;
    run->res = calloc((size_t)total, sizeof(attn_result));
    if (!run->res)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "results");
    for (int si = 0; si < o->n_shapes; si++) {
        for (int bi = 0; bi < o->n_batch; bi++) {
            for (int ci = 0; ci < o->n_ctx; ci++) {
                attn_result *r = &run->res[run->n_res++];
                r->shape = &o->shapes[si];
                r->batch = o->batches[bi];
                r->ctx = o->ctxs[ci];
                fprintf(stderr, "[%d/%d] %s batch %d ctx %d\n", run->n_res, total, r->shape->name, (int)r->batch,
                        (int)r->ctx);
                KVRT_TRY(run_cell(ctx, cpu, o, run->llc, r, err));
            }
        }
    }
    return KVRT_OK;
}

int kvrt_bench_attn_main(int argc, char **argv)
{
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
        if (strcmp(argv[i], "--host-tier") == 0) /* the host tier's own table (bench_tier.c) */
            return kvrt_bench_attn_tier_main(argc, argv);
    attn_run run;
    memset(&run, 0, sizeof(run));
    int rc = parse_args(argc, argv, &run.o);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    kvrt_error err = {KVRT_OK, ""};
    kvrt_context_params cp = kvrt_context_default_params();
    kvrt_cli_common_context_params(&run.o.common, &cp);
    kvrt_context *ctx = NULL, *cpu = NULL;
    if (kvrt_context_create(&cp, &ctx, &err) != KVRT_OK) {
        kvrt_cli_error(PROG, "%s", err.message);
        return 1;
    }
    if (cpu_compared(&run)) {
        cp.backend = KVRT_BACKEND_CPU; /* same -t: all cores unless given */
        if (kvrt_context_create(&cp, &cpu, &err) != KVRT_OK) {
            kvrt_cli_error(PROG, "CPU backend for the comparison: %s", err.message);
            kvrt_context_destroy(ctx);
            return 1;
        }
    }
    run.device = kvrt_context_description(ctx);
    run.kernels = run.o.backend == KVRT_BACKEND_CPU ? kvrt_tool_cpu_attn_kernels() : "-";
    run.llc = kvrt_bench_llc_bytes();
    fprintf(stderr, "%s: %s; measuring memory bandwidth\n", PROG, run.device);
    kvrt_status st = kvrt_bench_bandwidth(run.o.n_threads, 4 * run.llc, run.o.quick ? 2 : 5, &run.bw, &err);
    run.n_threads = run.bw.n_threads;
    run.dev_copy_bytes = KVRT_MAX(4 * run.llc, (size_t)(run.o.quick ? 64 : 256) << 20);
    run.dev_copy_passes = run.o.quick ? 2 : 5;
    if (st == KVRT_OK)
        st = kvrt_tool_device_copy_gbs(ctx, run.dev_copy_bytes, run.dev_copy_passes, &run.dev_copy_gbs, &err);
    if (st == KVRT_OK)
        st = run_grid(ctx, cpu, &run, &err);
    if (st == KVRT_OK) {
        FILE *table = run.o.json ? stderr : stdout;
        print_table(&run, table);
        print_summary(&run, table);
        if (run.o.json)
            print_json(&run, stdout);
    } else {
        kvrt_cli_error(PROG, "%s", err.message);
    }
    free(run.res);
    kvrt_tool_save_caches(PROG, ctx);
    kvrt_context_destroy(cpu);
    kvrt_context_destroy(ctx);
    return st == KVRT_OK ? 0 : 1;
}
