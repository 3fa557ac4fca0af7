/*
 * kvrt-mem: how much memory a KV cache takes.
 *
 *   bytes = 2 (K and V) x layers x kv_heads x tokens x batch x bytes_per_row
 *
 * where a row is one head's head_dim values: head_dim x 4 (f32), x 2 (f16),
 * head_dim + scales (q8_0), head_dim / 2 + scales (q4_0), head_dim (fp8,
 * fp8_e5m2: their scale is fixed at 1, nothing stored); q8_0 / q4_0 keep one
 * 2-byte F16 scale per 32 values inside the block, counted here. K and V
 * may have different types (--kv-type-k, --kv-type-v).
 *
 * plus what paging costs (the unfilled tail of each sequence's last block), how
 * the number of KV heads (MHA / GQA / MQA) changes the total for the same model
 * shape, and the total over a range of context lengths.
 *
 *   kvrt-mem --preset llama-2-7b --ctx 4096 [--batch 1] [--kv-type f16] [--block-size 16]
 *   kvrt-mem --layers 32 --heads 32 --kv-heads 8 --head-dim 128 --ctx 8k
 *   kvrt-mem --preset llama-2-7b --budget 8GiB [--batch 4] [--ctx 4096]
 *
 * With --budget, a table per KV type (scales included): the longest context
 * whose paged pool fits the budget at --batch, and how many --ctx sequences
 * fit it.
 */
#include "cli.h"
#include "table.h"

#include "backend/kv_layout.h"
#include "model/shapes.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const PROG = "kvrt-mem";

typedef struct mem_shape {
    const char *name;
    int64_t layers;
    int64_t heads;    /* query heads */
    int64_t kv_heads;
    int64_t head_dim;
} mem_shape;

/* Context lengths of the table (the requested one is added when missing). */
static const int64_t TABLE_CTX[] = {512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072};

typedef struct mem_opts {
    mem_shape shape;
    int64_t ctx;
    int64_t batch;
    int64_t block_size;
    kvrt_dtype dtype;    /* K's */
    kvrt_dtype v_dtype;  /* V's */
    char kv_type[40];    /* "f16", or "K q8_0 / V f16" when they differ */
    int64_t budget;      /* --budget in bytes; 0 = none */
} mem_opts;

/* A preset of the shared shape table (model/shapes.h), by name or alias. */
static bool find_preset(const char *name, mem_shape *out)
{
    const kvrt_model_shape *m = kvrt_model_shape_find(name);
    if (!m)
        return false;
    *out = (mem_shape){m->name, m->n_layer, m->n_head, m->n_head_kv, kvrt_model_shape_head_dim(m)};
    return true;
}

static void unknown_preset(const char *name)
{
    fprintf(stderr, "%s: unknown preset '%s'; presets:", PROG, name);
    size_t n_presets;
    const kvrt_model_shape *presets = kvrt_model_shapes(&n_presets);
    for (size_t i = 0; i < n_presets; i++)
        fprintf(stderr, " %s", presets[i].name);
    fputc('\n', stderr);
}

/* Bytes of one head's row of head_dim values in the KV layout, scales
 * included (kv_layout.c's block bytes for one row); 0 when the type does not
 * fit head_dim (quantized types need a multiple of 32). */
static int64_t row_bytes(kvrt_dtype dtype, int64_t head_dim)
{
    if (head_dim > INT32_MAX)
        return 0;
    return (int64_t)kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(dtype), 1, 1, (int32_t)head_dim);
}

/* Bytes of one K row plus one V row. */
static int64_t pair_row_bytes(const mem_opts *o, int64_t head_dim)
{
    return row_bytes(o->dtype, head_dim) + row_bytes(o->v_dtype, head_dim);
}

/* Bytes of K and V for `tokens` tokens of one sequence; false on overflow. */
static bool kv_bytes(const mem_shape *s, const mem_opts *o, int64_t tokens, int64_t *out)
{
    int64_t b = 1;
    return kvrt_mul_i64(b, s->layers, &b) && kvrt_mul_i64(b, s->kv_heads, &b) &&
           kvrt_mul_i64(b, pair_row_bytes(o, s->head_dim), &b) && kvrt_mul_i64(b, tokens, out);
}

static int64_t ceil_div(int64_t a, int64_t b)
{
    return a / b + (a % b != 0);
}

static double gib(int64_t bytes)
{
    return (double)bytes / (1024.0 * 1024.0 * 1024.0);
}

static double gb(int64_t bytes)
{
    return (double)bytes / 1e9;
}

/* "2.00 GiB (2.15 GB)"; small sizes keep three significant digits instead of 0.00. */
static void fmt_total(char *buf, size_t n, int64_t bytes)
{
    if (gb(bytes) >= 0.1 || bytes == 0)
        snprintf(buf, n, "%.2f GiB (%.2f GB)", gib(bytes), gb(bytes));
    else
        snprintf(buf, n, "%.3g GiB (%.3g GB)", gib(bytes), gb(bytes));
}

/* Binary units for per-token and per-block sizes: "512 KiB", "1.25 KiB". */
static void fmt_bin(char *buf, size_t n, int64_t bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < KVRT_ARRAY_LEN(units)) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, n, u == 0 ? "%.0f %s" : "%.4g %s", v, units[u]);
}

/* Table cells: two decimals, or three significant digits below 0.01 (tiny models). */
static void cell_size(kvrt_table *tab, double v)
{
    kvrt_table_cell(tab, (v >= 0.01 || v == 0.0) ? "%.2f" : "%.3g", v);
}

static const char *attn_kind(const mem_shape *s)
{
    return s->kv_heads == s->heads ? "MHA" : s->kv_heads == 1 ? "MQA" : "GQA";
}

/* Checks the resolved shape; false after printing the reason. */
static bool check_shape(const mem_shape *s)
{
    if (s->layers <= 0 || s->heads <= 0 || s->head_dim <= 0) {
        kvrt_cli_error(PROG, "the model shape is incomplete: give --preset, or --layers, --heads and "
                             "--head-dim (or --dim)");
        return false;
    }
    if (s->kv_heads > s->heads || s->heads % s->kv_heads != 0) {
        kvrt_cli_error(PROG, "--kv-heads %" PRId64 " must divide --heads %" PRId64, s->kv_heads, s->heads);
        return false;
    }
    return true;
}

/* Shape flags given on the command line; -1 = not given. */
typedef struct shape_flags {
    int64_t layers, heads, kv_heads, head_dim, dim;
} shape_flags;

static bool resolve_shape(const char *preset, const shape_flags *f, mem_shape *s)
{
    memset(s, 0, sizeof(*s));
    s->name = "custom";
    if (preset && !find_preset(preset, s)) {
        unknown_preset(preset);
        return false;
    }
    if (f->layers >= 0)
        s->layers = f->layers;
    if (f->heads >= 0) {
        s->heads = f->heads;
        if (f->kv_heads < 0 && !preset)
            s->kv_heads = f->heads;
    }
    if (f->kv_heads >= 0)
        s->kv_heads = f->kv_heads;
    if (f->head_dim >= 0)
        s->head_dim = f->head_dim;
    if (f->dim >= 0) {
        if (s->heads <= 0 || f->dim % s->heads != 0) {
            kvrt_cli_error(PROG, "--dim %" PRId64 " is not a multiple of the number of heads (%" PRId64 ")",
                           f->dim, s->heads);
            return false;
        }
        if (f->head_dim >= 0 && f->head_dim != f->dim / s->heads) {
            kvrt_cli_error(PROG, "--dim %" PRId64 " / %" PRId64 " heads disagrees with --head-dim %" PRId64,
                           f->dim, s->heads, f->head_dim);
            return false;
        }
        s->head_dim = f->dim / s->heads;
    }
    if (preset && (f->layers >= 0 || f->heads >= 0 || f->kv_heads >= 0 || f->head_dim >= 0 || f->dim >= 0))
        s->name = "custom (from preset)";
    return check_shape(s);
}

/* "--preset NAME: model shape ...: llama-2-7b llama-2-13b ..." for --help. */
static void preset_help(char *buf, size_t n)
{
    size_t len = (size_t)snprintf(buf, n, "model shape (shape flags override its fields):\n");
    size_t n_presets;
    const kvrt_model_shape *presets = kvrt_model_shapes(&n_presets);
    for (size_t i = 0; i < n_presets && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%s", presets[i].name,
                                i + 1 == n_presets ? "" : i % 5 == 4 ? ",\n" : ", ");
}

#define SHAPE_OPT(NAME, DST, HELP)                                                                     \
    {.name = (NAME), .kind = KVRT_CLI_KIND_INT64, .dst = (DST), .min = 1, .max = dims, .meta = "N", \
     .help = (HELP)}

/* --budget: a size with an optional unit, binary (k, m, g, t, KiB ... TiB)
 * or decimal (KB ... TB), e.g. 8G, 24GiB, 80GB, 1.5t; into *(int64_t *)dst. */
static bool parse_budget(const char *prog, const char *flag, const char *value, void *dst)
{
    static const struct {
        const char *unit;
        double mul;
    } U[] = {{"", 1.0},          {"b", 1.0},         {"k", 1024.0},      {"kib", 1024.0},  {"kb", 1e3},
             {"m", 1048576.0},   {"mib", 1048576.0}, {"mb", 1e6},        {"g", 1073741824.0},
             {"gib", 1073741824.0}, {"gb", 1e9},    {"t", 1099511627776.0}, {"tib", 1099511627776.0},
             {"tb", 1e12}};
    char *end;
    double v = strtod(value, &end);
    char unit[8];
    size_t n = strlen(end);
    for (size_t i = 0; i < n && i + 1 < sizeof(unit); i++)
        unit[i] = (char)(end[i] >= 'A' && end[i] <= 'Z' ? end[i] - 'A' + 'a' : end[i]);
    unit[n < sizeof(unit) ? n : sizeof(unit) - 1] = '\0';
    for (size_t i = 0; end != value && n < sizeof(unit) && i < KVRT_ARRAY_LEN(U); i++) {
        double bytes = v * U[i].mul;
        if (strcmp(unit, U[i].unit) == 0 && bytes >= 1.0 && bytes < 4e18) {
            *(int64_t *)dst = (int64_t)bytes;
            return true;
        }
    }
    kvrt_cli_error(prog, "%s: '%s' is not a size of at least 1 byte (e.g. 8G, 24GiB, 80GB)", flag, value);
    return false;
}

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, mem_opts *o)
{
    const char *preset = NULL;
    shape_flags f = {-1, -1, -1, -1, -1};
    const kvrt_dtype unset = (kvrt_dtype)-1; /* --kv-type-k / -v not given */
    kvrt_dtype kv_type = KVRT_DTYPE_F16, k_type = unset, v_type = unset;
    int32_t block_size = 16;
    o->ctx = -1;
    o->batch = 1;
    o->budget = 0;
    const int64_t big = (int64_t)1 << 40, dims = (int64_t)1 << 20;
    char presets[512];
    preset_help(presets, sizeof(presets));
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_STR(0, "preset", &preset, "NAME", presets),
        {.name = "ctx", .kind = KVRT_CLI_KIND_INT64, .dst = &o->ctx, .min = 1, .max = big, .flags = KVRT_CLI_K_SUFFIX,
         .meta = "N", .help = "tokens per sequence (a k suffix multiplies by 1024: 4k = 4096)"},
        {.name = "batch", .kind = KVRT_CLI_KIND_INT64, .dst = &o->batch, .min = 1, .max = dims,
         .flags = KVRT_CLI_K_SUFFIX, .meta = "B", .help = "sequences (default 1)"},
        KVRT_CLI_CALL(0, "kv-type", kvrt_cli_parse_kv_type, &kv_type, "T",
                      "f16 (default), f32, q8_0, q4_0 (scales included), fp8 or fp8_e5m2; K and V"),
        KVRT_CLI_CALL(0, "kv-type-k", kvrt_cli_parse_kv_type, &k_type, "T", "K's type alone (wins over --kv-type)"),
        KVRT_CLI_CALL(0, "kv-type-v", kvrt_cli_parse_kv_type, &v_type, "T", "V's type alone (wins over --kv-type)"),
        KVRT_CLI_CALL(0, "budget", parse_budget, &o->budget, "SIZE",
                      "memory for the KV pool (8G, 24GiB, 80GB): the context lengths that fit it\n"
                      "for every KV type, scales included (--ctx optional then)"),
        KVRT_CLI_CALL(0, "block-size", kvrt_cli_parse_block_size, &block_size, "S",
                      "tokens per KV block: 8, 16 (default) or 32"),
        SHAPE_OPT("layers", &f.layers, "layers"),
        SHAPE_OPT("heads", &f.heads, "query heads"),
        SHAPE_OPT("kv-heads", &f.kv_heads, "KV heads (default: --heads)"),
        SHAPE_OPT("head-dim", &f.head_dim, "dimension of one head"),
        SHAPE_OPT("dim", &f.dim, "model width (head_dim = dim / heads)"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-mem --preset NAME --ctx N [options]\n"
                 "       kvrt-mem --layers L --heads H [--kv-heads KV] (--head-dim D | --dim DIM) --ctx N [options]",
        .about = "KV cache size: 2 x layers x kv_heads x tokens x batch x bytes per head_dim row\n"
                 "(q8_0 / q4_0 rows count their F16 scales, one per 32 values).\n"
                 "Prints the total in GiB and GB, the waste of paged blocks, MHA vs GQA vs MQA\n"
                 "for the same model shape, and the total for context lengths 512 .. 128k.",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
    };
    int first;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    bool k_given = k_type != unset, v_given = v_type != unset;
    o->dtype = k_given ? k_type : kv_type;
    o->v_dtype = v_given ? v_type : kv_type;
    if (o->dtype == o->v_dtype)
        snprintf(o->kv_type, sizeof(o->kv_type), "%s", kvrt_dtype_name(o->dtype));
    else
        snprintf(o->kv_type, sizeof(o->kv_type), "K %s / V %s", kvrt_dtype_name(o->dtype),
                 kvrt_dtype_name(o->v_dtype));
    o->block_size = block_size;
    if (!resolve_shape(preset, &f, &o->shape))
        return KVRT_CLI_USAGE;
    for (int w = 0; w < 2; w++) {
        kvrt_dtype t = w ? o->v_dtype : o->dtype;
        if (row_bytes(t, o->shape.head_dim) == 0) {
            kvrt_cli_error(PROG, "--kv-type%s %s: head_dim %" PRId64 " is not a multiple of 32 (one scale per 32 values)",
                           (w ? v_given : k_given) ? (w ? "-v" : "-k") : "", kvrt_dtype_name(t), o->shape.head_dim);
            return KVRT_CLI_USAGE;
        }
    }
    if (o->ctx < 0 && o->budget == 0) {
        kvrt_cli_error(PROG, "--ctx is required (tokens per sequence), or --budget");
        return KVRT_CLI_USAGE;
    }
    return KVRT_CLI_CONTINUE;
}

/* Every quantity printed, computed once with overflow checks. */
typedef struct mem_totals {
    int64_t per_token;      /* bytes of one token, all layers, K and V */
    int64_t per_seq;        /* ctx tokens */
    int64_t total;          /* ctx tokens x batch */
    int64_t blocks_per_seq; /* ceil(ctx / block_size) */
    int64_t waste_tokens;   /* unused slots of one sequence's last block */
    int64_t block_bytes;    /* one block, all layers, K and V */
    int64_t pool_blocks;    /* blocks_per_seq x batch */
    int64_t pool_bytes;
    int64_t waste_bytes;    /* pool_bytes - total */
} mem_totals;

static bool compute(const mem_opts *o, mem_totals *t)
{
    const mem_shape *s = &o->shape;
    t->blocks_per_seq = ceil_div(o->ctx, o->block_size);
    t->waste_tokens = t->blocks_per_seq * o->block_size - o->ctx;
    return kv_bytes(s, o, 1, &t->per_token) && kv_bytes(s, o, o->ctx, &t->per_seq) &&
           kvrt_mul_i64(t->per_seq, o->batch, &t->total) &&
           kv_bytes(s, o, o->block_size, &t->block_bytes) &&
           kvrt_mul_i64(t->blocks_per_seq, o->batch, &t->pool_blocks) &&
           kvrt_mul_i64(t->pool_blocks, t->block_bytes, &t->pool_bytes) &&
           (t->waste_bytes = t->pool_bytes - t->total) >= 0;
}

static void print_summary(const mem_opts *o, const mem_totals *t)
{
    const mem_shape *s = &o->shape;
    char a[64], b[64];
    printf("model:          %s: %" PRId64 " layers, %" PRId64 " heads, %" PRId64 " KV heads (%s), head_dim %" PRId64
           "\n",
           s->name, s->layers, s->heads, s->kv_heads, attn_kind(s), s->head_dim);
    fmt_bin(a, sizeof(a), t->per_token);
    int64_t row = row_bytes(o->dtype, s->head_dim), vrow = row_bytes(o->v_dtype, s->head_dim);
    if (o->dtype == o->v_dtype) {
        printf("KV type:        %s (%" PRId64 " bytes per row of %" PRId64 " values, %.2f bits per value)\n",
               o->kv_type, row, s->head_dim, 8.0 * (double)row / (double)s->head_dim);
        printf("per token:      %s (%" PRId64 " bytes = 2 x %" PRId64 " layers x %" PRId64 " KV heads x %" PRId64
               " bytes per row)\n", a, t->per_token, s->layers, s->kv_heads, row);
    } else {
        printf("KV type:        %s (%" PRId64 " + %" PRId64 " bytes per K and V row of %" PRId64
               " values, %.2f bits per value)\n", o->kv_type, row, vrow, s->head_dim,
               4.0 * (double)(row + vrow) / (double)s->head_dim);
        printf("per token:      %s (%" PRId64 " bytes = %" PRId64 " layers x %" PRId64 " KV heads x (%" PRId64
               " + %" PRId64 ") bytes per K and V row)\n", a, t->per_token, s->layers, s->kv_heads, row, vrow);
    }
    printf("tokens:         %" PRId64 " per sequence x batch %" PRId64 "\n", o->ctx, o->batch);
    fmt_total(b, sizeof(b), t->total);
    printf("KV cache total: %s = %" PRId64 " bytes\n", b, t->total);
}

static void print_blocks(const mem_opts *o, const mem_totals *t)
{
    char a[64], b[64];
    int64_t last_fill = o->block_size - t->waste_tokens;
    printf("\npaged blocks (block size %" PRId64 "):\n", o->block_size);
    fmt_bin(a, sizeof(a), t->block_bytes);
    printf("  block:              %s (%" PRId64 " bytes, all layers, K and V)\n", a, t->block_bytes);
    printf("  blocks per seq:     %" PRId64 " (last block holds %" PRId64 " of %" PRId64 " tokens)\n",
           t->blocks_per_seq, last_fill, o->block_size);
    printf("  waste per seq:      %" PRId64 " tokens = %" PRId64 " bytes\n", t->waste_tokens,
           t->waste_tokens * t->per_token);
    fmt_total(b, sizeof(b), t->pool_bytes);
    printf("  pool:               %" PRId64 " blocks = %s = %" PRId64 " bytes\n", t->pool_blocks, b, t->pool_bytes);
    printf("  waste total:        %" PRId64 " tokens = %" PRId64 " bytes (%.2f %% of the pool)\n",
           t->waste_tokens * o->batch, t->waste_bytes,
           t->pool_bytes ? 100.0 * (double)t->waste_bytes / (double)t->pool_bytes : 0.0);
}

/* MHA (a KV head per query head), GQA (the model's own groups, or 8 KV heads
 * for an MHA model), MQA (one KV head): the same layers, heads and head_dim. */
static void print_variants(const mem_opts *o, const mem_totals *t)
{
    const mem_shape *s = &o->shape;
    int64_t gqa = s->kv_heads;
    if (gqa == s->heads || gqa == 1)
        gqa = (s->heads > 8 && s->heads % 8 == 0) ? 8 : (s->heads % 2 == 0 ? s->heads / 2 : 1);
    struct {
        const char *name;
        int64_t kv;
    } v[] = {{"MHA", s->heads}, {"GQA", gqa}, {"MQA", 1}};
    static const char *const hdr[] = {"variant", "KV heads", "q heads/KV head", "per token", "total GiB",
                                      "total GB", "vs MHA", "model"};
    kvrt_table tab;
    kvrt_table_init(&tab, 8, hdr, "lrrrrrrl");
    int64_t mha_total = 0;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(v); i++) {
        if (i > 0 && (v[i].kv >= s->heads || (i == 1 && v[i].kv <= 1)))
            continue; /* too few heads for three distinct variants */
        mem_shape vs = *s;
        vs.kv_heads = v[i].kv;
        int64_t per_tok, tot;
        if (!kv_bytes(&vs, o, 1, &per_tok) || !kvrt_mul_i64(per_tok, o->ctx * o->batch, &tot))
            continue; /* cannot be larger than the MHA total, which was checked */
        if (i == 0)
            mha_total = tot;
        char a[32];
        fmt_bin(a, sizeof(a), per_tok);
        if (!kvrt_table_row(&tab))
            break;
        kvrt_table_cell(&tab, "%s", v[i].name);
        kvrt_table_cell(&tab, "%" PRId64, v[i].kv);
        kvrt_table_cell(&tab, "%" PRId64, s->heads / v[i].kv);
        kvrt_table_cell(&tab, "%s", a);
        cell_size(&tab, gib(tot));
        cell_size(&tab, gb(tot));
        kvrt_table_cell(&tab, "%.3fx", mha_total ? (double)tot / (double)mha_total : 0.0);
        kvrt_table_cell(&tab, "%s", v[i].kv == s->kv_heads ? "<- this" : "");
    }
    printf("\nattention variants (%" PRId64 " layers, %" PRId64 " heads, head_dim %" PRId64 ", %" PRId64
           " tokens x batch %" PRId64 ", %s):\n",
           s->layers, s->heads, s->head_dim, o->ctx, o->batch, o->kv_type);
    kvrt_table_print(&tab, stdout);
    kvrt_table_free(&tab);
    (void)t;
}

static void context_row(kvrt_table *tab, const mem_opts *o, int64_t ctx)
{
    mem_opts c = *o;
    c.ctx = ctx;
    mem_totals t;
    if (!compute(&c, &t) || !kvrt_table_row(tab))
        return;
    kvrt_table_cell(tab, "%" PRId64 "%s", ctx, ctx == o->ctx ? " *" : "");
    cell_size(tab, gib(t.per_seq));
    cell_size(tab, gib(t.total));
    cell_size(tab, gb(t.total));
    kvrt_table_cell(tab, "%" PRId64, t.blocks_per_seq);
    cell_size(tab, gib(t.pool_bytes));
}

static void print_contexts(const mem_opts *o)
{
    static const char *const hdr[] = {"context", "GiB per seq", "total GiB", "total GB", "blocks/seq",
                                      "pool GiB"};
    kvrt_table tab;
    kvrt_table_init(&tab, 6, hdr, "rrrrrr");
    bool done = false;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(TABLE_CTX); i++) {
        if (!done && o->ctx <= TABLE_CTX[i]) {
            if (o->ctx < TABLE_CTX[i])
                context_row(&tab, o, o->ctx);
            done = true;
        }
        context_row(&tab, o, TABLE_CTX[i]);
    }
    if (!done)
        context_row(&tab, o, o->ctx);
    printf("\ncontext lengths (batch %" PRId64 ", %s, block size %" PRId64 "; * = requested):\n", o->batch,
           o->kv_type, o->block_size);
    kvrt_table_print(&tab, stdout);
    kvrt_table_free(&tab);
}

/* One row of the budget table: KV types k and v. */
static void budget_row(kvrt_table *tab, const mem_opts *o, kvrt_dtype k, kvrt_dtype v, int64_t f16_ctx)
{
    mem_opts c = *o;
    c.dtype = k;
    c.v_dtype = v;
    char name[40];
    if (k == v)
        snprintf(name, sizeof(name), "%s", kvrt_dtype_name(k));
    else
        snprintf(name, sizeof(name), "K %s / V %s", kvrt_dtype_name(k), kvrt_dtype_name(v));
    int64_t per_token, block, per_seq_block;
    if (!kvrt_table_row(tab))
        return;
    kvrt_table_cell(tab, "%s", name);
    if (row_bytes(k, o->shape.head_dim) == 0 || row_bytes(v, o->shape.head_dim) == 0) {
        kvrt_table_cell(tab, "-");
        kvrt_table_cell(tab, "head_dim %" PRId64 " not a multiple of 32", o->shape.head_dim);
        for (int i = 0; i < 2; i++)
            kvrt_table_cell(tab, "-");
        return;
    }
    if (!kv_bytes(&o->shape, &c, 1, &per_token) || !kv_bytes(&o->shape, &c, o->block_size, &block) ||
        !kvrt_mul_i64(block, o->batch, &per_seq_block))
        return;
    int64_t ctx = o->budget / per_seq_block * o->block_size; /* whole blocks per sequence */
    char a[32];
    fmt_bin(a, sizeof(a), per_token);
    kvrt_table_cell(tab, "%s", a);
    kvrt_table_cell(tab, "%" PRId64, ctx);
    kvrt_table_cell(tab, "%.2fx", f16_ctx > 0 ? (double)ctx / (double)f16_ctx : 0.0);
    int64_t seq_bytes;
    if (o->ctx > 0 && kvrt_mul_i64(ceil_div(o->ctx, o->block_size), block, &seq_bytes))
        kvrt_table_cell(tab, "%" PRId64, o->budget / seq_bytes);
    else
        kvrt_table_cell(tab, "-");
}

/* The context lengths that fit --budget, per KV type (and the requested pair). */
static void print_budget(const mem_opts *o)
{
    static const kvrt_dtype T[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0,
                                   KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E5M2};
    char seqs[48];
    if (o->ctx > 0)
        snprintf(seqs, sizeof(seqs), "seqs of %" PRId64, o->ctx);
    else
        snprintf(seqs, sizeof(seqs), "seqs of --ctx");
    const char *hdr[] = {"KV type", "per token", "context", "vs f16", seqs};
    kvrt_table tab;
    kvrt_table_init(&tab, 5, hdr, "lrrrr");
    mem_opts f16 = *o;
    f16.dtype = f16.v_dtype = KVRT_DTYPE_F16;
    int64_t f16_block = 0, f16_ctx = 0;
    if (kv_bytes(&o->shape, &f16, o->block_size, &f16_block) && kvrt_mul_i64(f16_block, o->batch, &f16_block))
        f16_ctx = o->budget / f16_block * o->block_size;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(T); i++)
        budget_row(&tab, o, T[i], T[i], f16_ctx);
    if (o->dtype != o->v_dtype)
        budget_row(&tab, o, o->dtype, o->v_dtype, f16_ctx);
    char b[64];
    fmt_total(b, sizeof(b), o->budget);
    printf("\ncontext lengths that fit a KV pool of %s (batch %" PRId64 ", block size %" PRId64
           "; whole blocks, scales included):\n", b, o->batch, o->block_size);
    kvrt_table_print(&tab, stdout);
    kvrt_table_free(&tab);
}

int main(int argc, char **argv)
{
    mem_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    if (o.ctx < 0) { /* --budget alone */
        print_budget(&o);
        return fflush(stdout) == 0 && !ferror(stdout) ? 0 : KVRT_CLI_FAILURE;
    }
    mem_totals t;
    if (!compute(&o, &t)) {
        kvrt_cli_error(PROG, "the KV cache size overflows 64 bits; check the numbers");
        return KVRT_CLI_USAGE;
    }
    print_summary(&o, &t);
    print_blocks(&o, &t);
    print_variants(&o, &t);
    print_contexts(&o);
    if (o.budget > 0)
        print_budget(&o);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        kvrt_cli_error(PROG, "cannot write to stdout");
        return KVRT_CLI_FAILURE;
    }
    return 0;
}
