/* One cross-backend op test (DESIGN.md "Tests and oracles", in the style of
 * ggml's test-backend-ops with stricter oracles): one table of
 * {op, shape, type, strides, in place, bound} rows, run through the front
 * door on every backend and feature pass this build has (test_passes.c: CPU
 * at 1 and 2 threads, Vulkan with all features and with none, OpenCL).
 *
 * Each row's data and its double reference are made once; every pass is
 * held to the same bound: exact for the ops that only move or convert
 * values (embedding, row gather, add, kv_write bytes), DESIGN.md's NMSE
 * <= 1e-6 and max abs <= 1e-4 (outputs of order 1) for the others. Outputs
 * sit between canaries (and, in place, beside input values that must
 * survive), input row padding holds NaN so a kernel that reads past a row
 * poisons its result, and the CPU at 2 threads must match 1 thread bit for
 * bit. The same bad call is the same error on every pass. CI runs a
 * covering subset of the matmul grid; KVRT_TEST_FULL=1 the whole product.
 * Backend suites keep what one backend alone has (ISA kernels, segments,
 * GEMV/GEMM paths, pipeline variants, interop). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cases.h"
#include "backend/ops.h"
#include "common/fp16.h"
#include "common/quant.h"
#include "ref_kvquant.h"
#include "ref_ops.h"
#include "test_buffers.h"
#include "test_passes.h"

#define NMSE_MAX 1e-6
#define MAX_ABS 1e-4
#define CANARY KVRT_TEST_CANARY


/* ---- the table ------------------------------------------------------------------------------ */

typedef enum op_kind {
    OP_MATMUL, OP_RMSNORM, OP_ROPE, OP_SWIGLU, OP_ADD, OP_EMBED, OP_GATHER, OP_KV_WRITE, OP_ATTENTION
} op_kind;

enum {
    F_IN_PLACE = 1, /* the output overwrites its (first) input */
    F_NEOX = 2,     /* rope: halves instead of adjacent pairs */
    F_NAN_ROW = 4,  /* matmul: a NaN in the last token's x reaches that row of y, and only it */
};

/* One row. Shapes by op:
 *   matmul   y[n][m] = W[m][dim] x[n][dim]      rmsnorm, swiglu  [n][dim]       add  [dim]
 *   rope     [n][m heads][dim], rot dims         embed  n ids into [m][dim]       gather  n of [m][dim]
 *   kv_write n tokens of [m kv heads][dim] into blocks of `rot` positions
 *   attention  the attn_cases.h case `at` (decode or prefill) */
typedef struct op_case {
    op_kind op;
    kvrt_dtype type; /* weights (matmul, embed), KV (kv_write, attention) */
    int32_t n, dim, m, rot;
    int32_t pad;     /* extra floats per strided input row (and output row) */
    unsigned flags;
    bool exact;      /* the bound: bit for bit, or NMSE_MAX / MAX_ABS */
    bool cpu_only;   /* CI runs it on the CPU passes only (the GPUs get a covering subset) */
    struct {
        int32_t head_dim, n_heads, n_kv_heads, block_size, window, sinks, length;
        attn_mode mode;
    } at;
} op_case;

#define MAX_CASES 1024

typedef struct table {
    op_case c[MAX_CASES];
    size_t n;
} table;

static void add(table *t, op_case c)
{
    assert_true(t->n < MAX_CASES);
    t->c[t->n++] = c;
}

static const kvrt_dtype WTYPES[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_BF16, KVRT_DTYPE_Q8_0,
                                    KVRT_DTYPE_Q4_0};

static int32_t block_of(kvrt_dtype t)
{
    return kvrt_dtype_block_values(t);
}

/* Matmul: every type x rows of {64, 172, 288, 768, 2048} values (172, as in
 * stories260K's ffn_down, only unquantized) x {1, 3, 17, 64} tokens, the
 * row counts cycling through odd values. In CI the GPU passes run a subset
 * that keeps every (type, tokens) and every (type, row length) pair; the
 * CPU passes run all of it. */
static void add_matmul_grid(table *t, bool full)
{
    static const int32_t n_ins[] = {64, 172, 288, 768, 2048}, n_toks[] = {1, 3, 17, 64};
    static const int32_t n_outs[] = {1, 37, 67, 131, 259, 13};
    int k = 0;
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(WTYPES); ti++) {
        int j = 0;
        for (size_t ii = 0; ii < KVRT_ARRAY_LEN(n_ins); ii++) {
            if (n_ins[ii] % block_of(WTYPES[ti]) != 0)
                continue;
            for (size_t ni = 0; ni < KVRT_ARRAY_LEN(n_toks); ni++, k++) {
                bool covering = (size_t)j % KVRT_ARRAY_LEN(n_toks) == ni || ii == 0; /* a diagonal, a column */
                add(t, (op_case){OP_MATMUL, WTYPES[ti], n_toks[ni], n_ins[ii],
                                 n_outs[k % (int)KVRT_ARRAY_LEN(n_outs)], 0, 5, 0, false, !full && !covering, {0}});
            }
            j++;
        }
    }
}

/* The types of issue #14: the legacy 4/5-bit types, IQ4 and the k-quants. */
static const kvrt_dtype QTYPES[] = {KVRT_DTYPE_Q4_1, KVRT_DTYPE_Q5_0, KVRT_DTYPE_Q5_1, KVRT_DTYPE_IQ4_NL,
                                    KVRT_DTYPE_Q2_K, KVRT_DTYPE_Q3_K, KVRT_DTYPE_Q4_K, KVRT_DTYPE_Q5_K,
                                    KVRT_DTYPE_Q6_K, KVRT_DTYPE_IQ4_XS};

/* Each of them: rows of 1, 3 and 8 blocks (32, 96, 256 or 256, 768, 2048
 * values) x {1, 3, 17, 64} tokens (GEMV and GEMM paths), odd row counts, a
 * NaN row, embedding rows bit for bit. In CI the GPU passes run a diagonal
 * (every length, every token count once per type); KVRT_TEST_FULL=1 all. */
static void add_quant_grid(table *t, bool full)
{
    static const int32_t blocks[] = {1, 3, 8}, n_toks[] = {1, 3, 17, 64}, n_outs[] = {37, 13, 67, 5, 131};
    int k = 0;
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(QTYPES); ti++) {
        kvrt_dtype w = QTYPES[ti];
        int32_t bv = block_of(w);
        for (size_t bi = 0; bi < KVRT_ARRAY_LEN(blocks); bi++) {
            for (size_t ni = 0; ni < KVRT_ARRAY_LEN(n_toks); ni++, k++) {
                bool covering = bi == ni % KVRT_ARRAY_LEN(blocks);
                add(t, (op_case){OP_MATMUL, w, n_toks[ni], blocks[bi] * bv, n_outs[k % (int)KVRT_ARRAY_LEN(n_outs)],
                                 0, 5, 0, false, !full && !covering, {0}});
            }
        }
        add(t, (op_case){OP_MATMUL, w, 3, bv, 40, 0, 5, F_NAN_ROW, false, false, {0}});
        add(t, (op_case){OP_EMBED, w, 6, 2 * bv, 50, 0, 0, 0, true, false, {0}});
    }
}

static size_t build_table(table *t, bool full)
{
    t->n = 0;
    add_matmul_grid(t, full);
    add_quant_grid(t, full);
    for (size_t ti = 0; ti < KVRT_ARRAY_LEN(WTYPES); ti++) {
        kvrt_dtype w = WTYPES[ti];
        bool q = block_of(w) > 1;
        /* shapes that make several GEMV tasks and several W tiles per call */
        add(t, (op_case){OP_MATMUL, w, 17, 64, 600, 0, 5, 0, false, false, {0}});
        add(t, (op_case){OP_MATMUL, w, 1, 256, 1031, 0, 5, 0, false, false, {0}});
        add(t, (op_case){OP_MATMUL, w, 2, 2048, 300, 0, 5, 0, false, false, {0}});
        /* odd rows for the 16-bit types (rows start mid-word), wide strides */
        add(t, (op_case){OP_MATMUL, w, 3, q ? 320 : 301, 37, 0, 9, 0, false, false, {0}});
        for (int32_t n = 1; n <= 3; n += 2)
            add(t, (op_case){OP_MATMUL, w, n, 64, 40, 0, 5, F_NAN_ROW, false, false, {0}});
        add(t, (op_case){OP_EMBED, w, 64, q ? 288 : 172, 50, 0, 0, 0, true, false, {0}});
        add(t, (op_case){OP_EMBED, w, 6, q ? 96 : 70, 50, 0, 0, 0, true, false, {0}});
    }
    static const int32_t norm_dims[] = {64, 172, 260, 2048}, norm_toks[] = {1, 3, 17, 64};
    for (size_t di = 0; di < KVRT_ARRAY_LEN(norm_dims); di++)
        for (size_t ni = 0; ni < KVRT_ARRAY_LEN(norm_toks); ni++)
            for (unsigned f = 0; f <= F_IN_PLACE; f++)
                add(t, (op_case){OP_RMSNORM, KVRT_DTYPE_F32, norm_toks[ni], norm_dims[di], 0, 0, 3 + 7 * (int)f, f,
                                 false, false, {0}});
    for (unsigned neox = 0; neox <= 1; neox++) {
        unsigned f = neox ? F_NEOX : 0;
        add(t, (op_case){OP_ROPE, KVRT_DTYPE_F32, 1, 64, 4, 64, 4, f, false, false, {0}});
        add(t, (op_case){OP_ROPE, KVRT_DTYPE_F32, 17, 64, 4, 32, 4, f, false, false, {0}}); /* partial rotation */
        add(t, (op_case){OP_ROPE, KVRT_DTYPE_F32, 64, 128, 8, 128, 4, f, false, false, {0}});
        add(t, (op_case){OP_ROPE, KVRT_DTYPE_F32, 3, 80, 2, 26, 4, f, false, false, {0}});
        add(t, (op_case){OP_ROPE, KVRT_DTYPE_F32, 4, 16, 3, neox ? 12 : 16, 5, f, false, false, {0}});
    }
    static const int32_t glu_toks[] = {1, 3, 17, 64}, glu_dims[] = {260, 688};
    for (size_t ni = 0; ni < KVRT_ARRAY_LEN(glu_toks); ni++)
        for (size_t di = 0; di < KVRT_ARRAY_LEN(glu_dims); di++)
            for (unsigned f = 0; f <= F_IN_PLACE; f++)
                add(t, (op_case){OP_SWIGLU, KVRT_DTYPE_F32, glu_toks[ni], glu_dims[di], 0, 0, 2, f, false, false,
                                 {0}});
    static const int32_t add_ns[] = {1, 780, 1000, 100003};
    for (size_t ni = 0; ni < KVRT_ARRAY_LEN(add_ns); ni++)
        for (unsigned f = 0; f <= F_IN_PLACE; f++)
            add(t, (op_case){OP_ADD, KVRT_DTYPE_F32, 1, add_ns[ni], 0, 0, 0, f, true, false, {0}});
    add(t, (op_case){OP_GATHER, KVRT_DTYPE_F32, 6, 40, 9, 0, 5, 0, true, false, {0}});
    add(t, (op_case){OP_GATHER, KVRT_DTYPE_F32, 3, 1000, 4, 0, 3, 0, true, false, {0}});
    add(t, (op_case){OP_GATHER, KVRT_DTYPE_F32, 4, 200, 40, 0, 101, 0, true, false, {0}});
    static const int32_t kv_hd[] = {8, 33, 64, 128}, kv_bs[] = {8, 16, 32};
    for (size_t hi = 0; hi < KVRT_ARRAY_LEN(kv_hd); hi++)
        for (int f16 = 0; f16 <= 1; f16++)
            add(t, (op_case){OP_KV_WRITE, f16 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32, 50, kv_hd[hi], 2,
                             kv_bs[(hi + (size_t)f16) % 3], 3, 0, true, false, {0}});
    /* quantized KV: one group, several, an odd count of groups per row */
    static const int32_t kq_hd[] = {32, 64, 96, 128};
    for (size_t hi = 0; hi < KVRT_ARRAY_LEN(kq_hd); hi++)
        for (int q4 = 0; q4 <= 1; q4++)
            add(t, (op_case){OP_KV_WRITE, q4 ? KVRT_DTYPE_Q4_0 : KVRT_DTYPE_Q8_0, 50, kq_hd[hi], 1 + (int32_t)hi % 3,
                             kv_bs[(hi + (size_t)q4) % 3], 3, 0, true, false, {0}});
    /* fp8 KV: any head_dim (8: stories260K; 33: rows that share 32-bit words on Vulkan) */
    static const int32_t kf_hd[] = {8, 33, 64};
    for (size_t hi = 0; hi < KVRT_ARRAY_LEN(kf_hd); hi++)
        for (int e5 = 0; e5 <= 1; e5++)
            add(t, (op_case){OP_KV_WRITE, e5 ? KVRT_DTYPE_FP8_E5M2 : KVRT_DTYPE_FP8_E4M3, 50, kf_hd[hi],
                             1 + (int32_t)hi % 2, kv_bs[(hi + (size_t)e5) % 3], 3, 0, true, false, {0}});
    /* attention: a few rows here; the whole case grid is test_attention_cases */
    add(t, (op_case){OP_ATTENTION, KVRT_DTYPE_F16, .at = {64, 8, 2, 16, 0, 0, 300, ATTN_DECODE}});
    add(t, (op_case){OP_ATTENTION, KVRT_DTYPE_F32, .at = {80, 4, 1, 8, 64, 4, 129, ATTN_DECODE}});
    add(t, (op_case){OP_ATTENTION, KVRT_DTYPE_F32, .at = {128, 8, 8, 32, 0, 0, 0, ATTN_PREFILL}});
    add(t, (op_case){OP_ATTENTION, KVRT_DTYPE_F16, .at = {33, 6, 3, 8, 5, 2, 0, ATTN_PREFILL}});
    return t->n;
}

/* ---- one row's data: inputs, the output's place, the reference ------------------------------------ */

#define MAX_IN 3

typedef struct op_data {
    void *in[MAX_IN];        /* the bytes of each input buffer */
    size_t in_bytes[MAX_IN];
    size_t in_off[MAX_IN];   /* where the op's view starts */
    int n_in;
    /* the output: rows x cols floats, stride apart, `off` floats into its
     * buffer, which is input 0 in place and a buffer of canaries otherwise */
    int64_t rows, cols, stride, off;
    size_t out_floats;       /* the output buffer's floats (canaries after it not counted) */
    double *ref;             /* [rows][cols] */
    int64_t nan_row;         /* a row that must be all NaN; -1 none */
    char name[128];
} op_data;

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    assert_non_null(p);
    return p;
}

static void fill_nan(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
}

/* Weights [rows][cols] in type t of U(-1, 1) / sqrt(cols) (outputs of order 1) after `lead` bytes. */
static void *make_weights(ref_rng *rng, kvrt_dtype t, int64_t rows, int64_t cols, size_t lead, size_t *bytes)
{
    size_t rb = kvrt_dtype_row_bytes(t, cols);
    *bytes = lead + rb * (size_t)rows;
    char *w = xmalloc(*bytes);
    memset(w, 0xcd, lead);
    float *row = xmalloc((size_t)cols * sizeof(float));
    float a = 1.0f / sqrtf((float)cols);
    for (int64_t r = 0; r < rows; r++) {
        ref_fill(rng, row, cols, -a, a);
        kvrt_quantize_row(t, row, w + lead + (size_t)r * rb, cols);
    }
    free(row);
    return w;
}

/* Rows of `cols` floats in U(lo, hi), `stride` apart after `off` floats; NaN elsewhere. */
static float *make_rows(ref_rng *rng, int64_t rows, int64_t cols, int64_t stride, int64_t off, float lo, float hi,
                        size_t *bytes)
{
    size_t n = (size_t)(off + rows * stride);
    float *x = xmalloc(n * sizeof(float));
    fill_nan(x, n);
    for (int64_t r = 0; r < rows; r++)
        ref_fill(rng, x + off + r * stride, cols, lo, hi);
    *bytes = n * sizeof(float);
    return x;
}

static void set_in(op_data *o, int i, void *data, size_t bytes, size_t off)
{
    o->in[i] = data;
    o->in_bytes[i] = bytes;
    o->in_off[i] = off;
    o->n_in = KVRT_MAX(o->n_in, i + 1);
}

static void set_out(op_data *o, int64_t rows, int64_t cols, int64_t stride, int64_t off)
{
    o->rows = rows;
    o->cols = cols;
    o->stride = stride;
    o->off = off;
    o->out_floats = (size_t)(off + (rows - 1) * stride + cols);
    o->ref = xmalloc((size_t)(rows * cols) * sizeof(double));
}

static void build_matmul(const op_case *c, ref_rng *rng, op_data *o)
{
    size_t wb, xb;
    void *w = make_weights(rng, c->type, c->m, c->dim, 64, &wb); /* at an offset, as in a model file */
    int64_t xs = c->dim + c->pad;
    float *x = make_rows(rng, c->n, c->dim, xs, 3, -1.0f, 1.0f, &xb);
    if (c->flags & F_NAN_ROW)
        x[3 + (c->n - 1) * xs + 5] = NAN;
    set_in(o, 0, w, wb, 64);
    set_in(o, 1, x, xb, 3 * sizeof(float));
    set_out(o, c->n, c->m, c->m + 3, 7);
    ref_matmul(c->type, (char *)w + 64, c->m, c->dim, x + 3, xs, c->n, o->ref);
    o->nan_row = c->flags & F_NAN_ROW ? c->n - 1 : -1;
}

static kvrt_status run_matmul(kvrt_backend *be, const op_case *c, const kvrt_view *v, kvrt_view out, int64_t stride)
{
    return kvrt_op_matmul(be, c->type, v[0], c->m, c->dim, v[1], c->dim + c->pad, out, stride, c->n);
}

static void build_rmsnorm(const op_case *c, ref_rng *rng, op_data *o)
{
    size_t xb;
    int64_t xs = c->dim + c->pad;
    float *x = make_rows(rng, c->n, c->dim, xs, 0, -2.0f, 2.0f, &xb);
    float *w = xmalloc((size_t)c->dim * sizeof(float));
    ref_fill(rng, w, c->dim, 0.5f, 1.5f);
    set_in(o, 0, x, xb, 0);
    set_in(o, 1, w, (size_t)c->dim * sizeof(float), 0);
    if (c->flags & F_IN_PLACE)
        set_out(o, c->n, c->dim, xs, 0);
    else
        set_out(o, c->n, c->dim, c->dim + 1, 5);
    ref_rmsnorm(x, xs, w, c->n, c->dim, 1e-5f, o->ref);
}

static kvrt_status run_rmsnorm(kvrt_backend *be, const op_case *c, const kvrt_view *v, kvrt_view out, int64_t stride)
{
    return kvrt_op_rmsnorm(be, v[0], c->dim + c->pad, v[1], out, stride, c->n, c->dim, 1e-5f);
}

#define ROPE_MAX_POS 300

static void build_rope(const op_case *c, ref_rng *rng, op_data *o)
{
    int64_t width = (int64_t)c->m * c->dim, xs = width + c->pad;
    size_t xb;
    float *x = make_rows(rng, c->n, width, xs, 2, -1.0f, 1.0f, &xb);
    int32_t *pos = xmalloc((size_t)c->n * sizeof(int32_t));
    for (int32_t t = 0; t < c->n; t++)
        pos[t] = t == 0 ? ROPE_MAX_POS - 1 : (int32_t)(ref_rng_u32(rng) % ROPE_MAX_POS);
    float *cs = xmalloc((size_t)ROPE_MAX_POS * (size_t)c->rot * sizeof(float));
    ref_rope_table(cs, ROPE_MAX_POS, c->rot, 10000.0);
    set_in(o, 0, x, xb, 2 * sizeof(float));
    set_in(o, 1, pos, (size_t)c->n * sizeof(int32_t), 0);
    set_in(o, 2, cs, (size_t)ROPE_MAX_POS * (size_t)c->rot * sizeof(float), 0);
    set_out(o, c->n, width, xs, 2); /* in place: rope rotates x */
    ref_rope(x + 2, xs, c->n, c->m, c->dim, c->rot, (c->flags & F_NEOX) != 0, pos, cs, o->ref);
}

static kvrt_status run_rope(kvrt_backend *be, const op_case *c, const kvrt_view *v, kvrt_view out, int64_t stride)
{
    kvrt_rope_desc d = {c->n, c->m, c->dim, c->rot, (c->flags & F_NEOX) != 0, ROPE_MAX_POS, stride};
    return kvrt_op_rope(be, out, v[1], v[2], &d);
}

/* Gate and up side by side in one fused row, as a gate/up matmul writes them. */
static void build_swiglu(const op_case *c, ref_rng *rng, op_data *o)
{
    int64_t fs = 2 * (int64_t)c->dim;
    size_t fb;
    float *f = make_rows(rng, c->n, fs, fs, 0, -8.0f, 8.0f, &fb);
    f[0] = -100.0f; /* exp(100) overflows: silu must still be -0, not NaN */
    f[1] = 100.0f;
    set_in(o, 0, f, fb, 0);
    if (c->flags & F_IN_PLACE)
        set_out(o, c->n, c->dim, fs, 0); /* over the gate half */
    else
        set_out(o, c->n, c->dim, c->dim + c->pad, 1);
    ref_swiglu(f, fs, f + c->dim, fs, c->n, c->dim, o->ref);
}

static kvrt_status run_swiglu(kvrt_backend *be, const op_case *c, const kvrt_view *v, kvrt_view out, int64_t stride)
{
    int64_t fs = 2 * (int64_t)c->dim;
    return kvrt_op_swiglu(be, v[0], fs, kvrt_view_at(v[0], (size_t)c->dim * sizeof(float)), fs, out, stride, c->n,
                          c->dim);
}

static void build_add(const op_case *c, ref_rng *rng, op_data *o)
{
    size_t ab, bb;
    float *a = make_rows(rng, 1, c->dim, c->dim, 0, -1.0f, 1.0f, &ab);
    float *b = make_rows(rng, 1, c->dim, c->dim, 0, -1.0f, 1.0f, &bb);
    set_in(o, 0, a, ab, 0);
    set_in(o, 1, b, bb, 0);
    set_out(o, 1, c->dim, c->dim, c->flags & F_IN_PLACE ? 0 : 3);
    for (int32_t i = 0; i < c->dim; i++)
        o->ref[i] = (double)(a[i] + b[i]); /* one rounding: exact */
}

static kvrt_status run_add(kvrt_backend *be, const op_case *c, const kvrt_view *v, kvrt_view out, int64_t stride)
{
    return kvrt_op_add(be, v[0], v[1], out, c->dim);
}

static void build_embed(const op_case *c, ref_rng *rng, op_data *o)
{
    size_t tb, rb = kvrt_dtype_row_bytes(c->type, c->dim);
    void *tab = make_weights(rng, c->type, c->m, c->dim, 32, &tb);
    int32_t *ids = xmalloc((size_t)c->n * sizeof(int32_t));
    for (int32_t t = 0; t < c->n; t++) /* the first and the last row, then any */
        ids[t] = t < 2 ? t * (c->m - 1) : (int32_t)(ref_rng_u32(rng) % (uint32_t)c->m);
    set_in(o, 0, tab, tb, 32);
    set_in(o, 1, ids, (size_t)c->n * sizeof(int32_t), 0);
    set_out(o, c->n, c->dim, c->dim, 4);
    float *row = xmalloc((size_t)c->dim * sizeof(float));
    for (int32_t t = 0; t < c->n; t++) { /* exactly the stored values */
        kvrt_dequantize_row(c->type, (char *)tab + 32 + (size_t)ids[t] * rb, row, c->dim);
        for (int32_t i = 0; i < c->dim; i++)
            o->ref[(size_t)t * c->dim + i] = row[i];
    }
    free(row);
}

static kvrt_status run_embed(kvrt_backend *be, const op_case *c, const kvrt_view *v, kvrt_view out, int64_t stride)
{
    return kvrt_op_embed(be, c->type, v[0], c->dim, v[1], c->n, out);
}

static void build_gather(const op_case *c, ref_rng *rng, op_data *o)
{
    int64_t ss = c->dim + c->pad;
    size_t sb;
    float *src = make_rows(rng, c->m, c->dim, ss, 0, -1.0f, 1.0f, &sb);
    sb -= (size_t)c->pad * sizeof(float); /* the last row ends the buffer */
    int32_t *idx = xmalloc((size_t)c->n * sizeof(int32_t));
    for (int32_t i = 0; i < c->n; i++) /* the last row, the first, repeats */
        idx[i] = i == 0 ? c->m - 1 : i == 1 ? 0 : (int32_t)(ref_rng_u32(rng) % (uint32_t)c->m);
    set_in(o, 0, src, sb, 0);
    set_in(o, 1, idx, (size_t)c->n * sizeof(int32_t), 0);
    set_out(o, c->n, c->dim, c->dim + 5, 2);
    for (int32_t i = 0; i < c->n; i++)
        for (int32_t e = 0; e < c->dim; e++)
            o->ref[(size_t)i * c->dim + e] = src[idx[i] * ss + e];
}

static kvrt_status run_gather(kvrt_backend *be, const op_case *c, const kvrt_view *v, kvrt_view out, int64_t stride)
{
    return kvrt_op_gather_rows(be, v[0], c->dim + c->pad, v[1], c->n, out, stride, c->dim);
}

typedef void (*build_fn)(const op_case *c, ref_rng *rng, op_data *o);
typedef kvrt_status (*run_fn)(kvrt_backend *be, const op_case *c, const kvrt_view *in, kvrt_view out,
                              int64_t out_stride);

static const struct {
    const char *name;
    build_fn build;
    run_fn run;
} OPS[] = {
    [OP_MATMUL] = {"matmul", build_matmul, run_matmul},
    [OP_RMSNORM] = {"rmsnorm", build_rmsnorm, run_rmsnorm},
    [OP_ROPE] = {"rope", build_rope, run_rope},
    [OP_SWIGLU] = {"swiglu", build_swiglu, run_swiglu},
    [OP_ADD] = {"add", build_add, run_add},
    [OP_EMBED] = {"embed", build_embed, run_embed},
    [OP_GATHER] = {"gather_rows", build_gather, run_gather},
};

static void data_free(op_data *o)
{
    for (int i = 0; i < o->n_in; i++)
        free(o->in[i]);
    free(o->ref);
}

/* ---- running a row of model ops on every pass ------------------------------------------------------ */

static bool in_place(const op_case *c)
{
    return c->op == OP_ROPE || (c->flags & F_IN_PLACE);
}

/* Runs the op as one step; returns the output buffer's floats (caller frees). */
static uint32_t *run_on(kvrt_backend *be, const op_case *c, const op_data *o)
{
    kvrt_buffer *b[MAX_IN] = {0};
    kvrt_view v[MAX_IN];
    for (int i = 0; i < o->n_in; i++) {
        b[i] = kvrt_test_up(be, o->in[i], o->in_bytes[i]);
        v[i] = (kvrt_view){b[i], o->in_off[i]};
    }
    size_t n = in_place(c) ? o->in_bytes[0] / sizeof(float) : o->out_floats;
    kvrt_buffer *ob = in_place(c) ? b[0] : kvrt_test_out_buf(be, o->out_floats);
    kvrt_view out = {ob, (size_t)o->off * sizeof(float)};
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    kvrt_status st = OPS[c->op].run(be, c, v, out, o->stride);
    assert_int_equal(kvrt_op_submit(be), KVRT_OK);
    if (st != KVRT_OK)
        fail_msg("%s: %s", o->name, be->err.message);
    uint32_t *h = (uint32_t *)(in_place(c) ? xmalloc(n * sizeof(float)) : kvrt_test_down(be, ob, n));
    if (in_place(c))
        assert_int_equal(kvrt_op_buffer_download(be, ob, 0, h, n * sizeof(float)), KVRT_OK);
    for (int i = 0; i < o->n_in; i++)
        kvrt_op_buffer_destroy(be, b[i]);
    if (!in_place(c))
        kvrt_op_buffer_destroy(be, ob);
    return h;
}

static bool is_output(const op_data *o, size_t i)
{
    if ((int64_t)i < o->off)
        return false;
    int64_t e = (int64_t)i - o->off, r = e / o->stride, col = e % o->stride;
    return r < o->rows && col < o->cols;
}

/* Everything outside the output elements kept its bytes (canaries, or the
 * untouched input in place); the outputs meet the row's bound. */
static void check_output(const op_case *c, const op_data *o, const uint32_t *h, const char *pass)
{
    size_t n = in_place(c) ? o->in_bytes[0] / sizeof(float) : o->out_floats;
    const uint32_t *orig = in_place(c) ? o->in[0] : NULL;
    for (size_t i = 0; i < n; i++) {
        if (!is_output(o, i) && h[i] != (orig ? orig[i] : CANARY))
            fail_msg("%s on %s: float %zu outside the output was written", o->name, pass, i);
    }
    float *got = xmalloc((size_t)(o->rows * o->cols) * sizeof(float));
    for (int64_t r = 0; r < o->rows; r++)
        memcpy(got + r * o->cols, (const float *)(const void *)h + o->off + r * o->stride,
               (size_t)o->cols * sizeof(float));
    int64_t rows = o->rows;
    if (o->nan_row >= 0) { /* that row all NaN, the others compared */
        for (int64_t e = 0; e < o->cols; e++)
            if (!isnan(got[o->nan_row * o->cols + e]))
                fail_msg("%s on %s: a NaN in x did not reach output %lld", o->name, pass, (long long)e);
        rows = o->nan_row;
    }
    if (c->exact) {
        for (int64_t e = 0; e < rows * o->cols; e++)
            if (got[e] != (float)o->ref[e] && !(isnan(got[e]) && isnan(o->ref[e])))
                fail_msg("%s on %s: element %lld is %.9g, not %.9g", o->name, pass, (long long)e, got[e],
                         o->ref[e]);
    } else if (rows > 0) {
        ref_err e = ref_compare(got, o->cols, o->ref, o->cols, rows, o->cols);
        if (e.nonfinite != 0 || !(e.nmse <= NMSE_MAX) || !(e.max_abs <= MAX_ABS))
            fail_msg("%s on %s: nmse %.3g (<= %.0e), max abs %.3g (<= %.0e), %lld non-finite", o->name, pass, e.nmse,
                     NMSE_MAX, e.max_abs, MAX_ABS, (long long)e.nonfinite);
    }
    if (c->op == OP_ROPE) { /* dims past rot_dim stay exactly as they were */
        const float *x = o->in[0];
        for (int64_t t = 0; t < o->rows; t++)
            for (int32_t hh = 0; hh < c->m; hh++)
                for (int32_t d = c->rot; d < c->dim; d++) {
                    int64_t at = o->off + t * o->stride + (int64_t)hh * c->dim + d;
                    assert_memory_equal(&h[at], &x[at], sizeof(float));
                }
    }
    free(got);
}

static void name_case(const op_case *c, op_data *o)
{
    snprintf(o->name, sizeof(o->name), "%s %s n %d dim %d m %d rot %d pad %d%s%s%s", OPS[c->op].name,
             kvrt_dtype_name(c->type), (int)c->n, (int)c->dim, (int)c->m, (int)c->rot, (int)c->pad,
             c->flags & F_IN_PLACE ? " in place" : "", c->flags & F_NEOX ? " neox" : "",
             c->flags & F_NAN_ROW ? " nan row" : "");
}

static void run_model_op(const op_case *c, uint64_t seed)
{
    op_data o;
    memset(&o, 0, sizeof(o));
    o.nan_row = -1;
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    name_case(c, &o);
    OPS[c->op].build(c, &rng, &o); /* the data and the reference, once */
    uint32_t *out[KVRT_TEST_MAX_PASSES] = {0};
    size_t n = in_place(c) ? o.in_bytes[0] / sizeof(float) : o.out_floats;
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        if (c->cpu_only && kvrt_test_pass_list[p].ctx->be->kind != KVRT_BACKEND_CPU)
            continue;
        out[p] = run_on(kvrt_test_pass_list[p].ctx->be, c, &o);
        check_output(c, &o, out[p], kvrt_test_pass_list[p].name);
        int same = kvrt_test_pass_list[p].same_bits_as;
        if (same >= 0 && memcmp(out[p], out[same], n * sizeof(float)) != 0)
            fail_msg("%s: %s and %s differ in some bit", o.name, kvrt_test_pass_list[same].name,
                     kvrt_test_pass_list[p].name);
    }
    for (int p = 0; p < kvrt_test_n_passes; p++)
        free(out[p]);
    data_free(&o);
}

/* ---- kv_write: the pool's bytes, the same on every pass ------------------------------------------------ */

static float special_value(int i) /* ties to even, subnormals, saturation past 65504 */
{
    static const float v[] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, -(2.0f + 0x1p-10f), 0x1p-25f * 3,
                              0x1p-24f, 0x1p-26f, 65504.0f, 65520.0f, -70000.0f, 0.0f, -0.0f, 0x1.ffep-15f};
    return v[i % (int)KVRT_ARRAY_LEN(v)];
}

/* Quantized rows: the first group of k's first row spells out ties (x / d
 * exactly halfway: to even), NaN (stored as 0) and values beyond F16
 * (saturated); the second group is all zero (scale 0). */
static void quant_special_rows(const op_case *c, float *k)
{
    const float unit = c->type == KVRT_DTYPE_Q4_0 ? 7.0f : 127.0f; /* amax giving scale 1 */
    const float tie[] = {unit, 2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 1.5f, -1.5f, NAN, 0.0f, -0.0f, 4.5f};
    for (int i = 0; i < 32; i++)
        k[i] = i < (int)KVRT_ARRAY_LEN(tie) ? tie[i] : (float)(i % 9) - 4.0f;
    for (int i = 32; i < 64 && i < c->m * c->dim; i++) /* the next group: row 0's second group or head 1's first */
        k[i] = 0.0f;
    if (c->n > 1) { /* token 1: beyond F16 in both directions and inf */
        float *r = k + (size_t)c->m * (size_t)c->dim + (size_t)c->pad;
        r[0] = 1e30f, r[1] = -INFINITY, r[2] = 70000.0f, r[3] = -65504.0f, r[4] = 1.0f;
    }
}

/* Where a quantized row's values and scales go in the reference pool, and what they are. */
static void quant_want(const op_case *c, const kvrt_kv_pool_desc *d, size_t bb, const float *x, int32_t slot,
                       uint8_t *pool)
{
    size_t rows = (size_t)d->n_kv_heads * (size_t)d->block_size, hd = (size_t)c->dim;
    size_t vbytes = c->type == KVRT_DTYPE_Q4_0 ? hd / 2 : hd;
    for (int32_t h = 0; h < c->m; h++) {
        size_t r = (size_t)h * (size_t)d->block_size + (size_t)(slot % d->block_size);
        uint8_t *blk = pool + (size_t)(slot / d->block_size) * bb;
        uint16_t sc[8];
        ref_kv_quantize_row(c->type, x + (size_t)h * hd, c->dim, blk + r * vbytes, sc);
        for (size_t g = 0; g < hd / 32; g++) { /* little-endian F16 scales after all values */
            blk[rows * vbytes + (r * (hd / 32) + g) * 2] = (uint8_t)(sc[g] & 0xff);
            blk[rows * vbytes + (r * (hd / 32) + g) * 2 + 1] = (uint8_t)(sc[g] >> 8);
        }
    }
}

static void run_kv_write(const op_case *c, uint64_t seed)
{
    kvrt_kv_pool_desc d = {2, c->m, c->dim, c->rot, 12, .dtype = c->type};
    bool quant = ref_kv_quantized(c->type), fp8 = ref_kv_fp8(c->type);
    size_t bb = kvrt_kv_block_bytes(&d), elem = fp8 ? 1 : c->type == KVRT_DTYPE_F16 ? 2 : 4;
    int64_t row = (int64_t)c->m * c->dim, stride = row + c->pad;
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    size_t xb;
    float *k = make_rows(&rng, c->n, row, stride, 0, -3.0f, 3.0f, &xb), *v = make_rows(&rng, c->n, row, stride, 0,
                                                                                          -3.0f, 3.0f, &xb);
    for (int32_t i = 0; i < 40 && i < row && !quant; i++)
        k[i] = special_value(i);
    if (quant)
        quant_special_rows(c, k);
    /* fp8: ties of both formats (to even, across a subnormal's carry into the normals, half the
     * smallest subnormal), beyond the largest value, NaN, -inf, -0 (test_kv_mixed_types: every code) */
    static const float fp8_special[] = {1.0625f, 1.1875f, 0x1p-10f, 0x1.8p-9f, 464.0f, 0x1p-17f, 0x1.8p-16f, NAN,
                                        -INFINITY, -0.0f, 1.125f, 0x1.ep-7f, -0x1.ep-7f, 61440.0f, 0x1.cp-15f};
    for (int32_t i = 0; fp8 && i < (int32_t)KVRT_ARRAY_LEN(fp8_special) && i < row; i++)
        k[i] = fp8_special[i];
    int32_t cap = d.num_blocks * d.block_size, *slots = xmalloc((size_t)c->n * sizeof(int32_t));
    for (int32_t t = 0; t < c->n; t++) { /* scattered, distinct, some padding */
        slots[t] = t % 9 == 4 ? -1 : (int32_t)((t * 37 + (int32_t)(ref_rng_u32(&rng) % 3)) % cap);
        for (int32_t u = 0; u < t; u++)
            slots[t] = slots[t] >= 0 && slots[t] == slots[u] ? -1 : slots[t];
    }
    /* the reference: layer 1's blocks ([block][head][position][dim]); layer 0 stays zero */
    uint8_t *want = xmalloc(2 * bb * (size_t)d.num_blocks), *got = xmalloc(2 * bb * (size_t)d.num_blocks);
    memset(want, 0, 2 * bb * (size_t)d.num_blocks);
    for (int w = 0; w < 2 && quant; w++)
        for (int32_t t = 0; t < c->n; t++)
            if (slots[t] >= 0)
                quant_want(c, &d, bb, (w ? v : k) + t * stride, slots[t], want + (size_t)w * bb * (size_t)d.num_blocks);
    for (int w = 0; w < 2 && !quant; w++)
        for (int32_t t = 0; t < c->n; t++)
            for (int64_t e = 0; slots[t] >= 0 && e < row; e++) {
                int64_t h = e / c->dim, blk = slots[t] / d.block_size, off = slots[t] % d.block_size;
                size_t at = (size_t)w * bb * (size_t)d.num_blocks + (size_t)blk * bb +
                            ((size_t)(h * d.block_size + off) * (size_t)c->dim + (size_t)(e % c->dim)) * elem;
                float x = (w ? v : k)[t * stride + e];
                uint16_t half = kvrt_f32_to_fp16_kv(x); /* round to nearest even, saturate */
                uint8_t byte = fp8 ? ref_fp8_encode(c->type, x) : 0; /* the search over all codes */
                memcpy(want + at, fp8 ? (void *)&byte : elem == 2 ? (void *)&half : (void *)&x, elem);
            }
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        kvrt_backend *be = kvrt_test_pass_list[p].ctx->be;
        kvrt_kv_pool *pool;
        kvrt_status made = kvrt_op_kv_pool_create(be, &d, &pool);
        if (quant && !kvrt_test_pass_list[p].quant_kv) { /* refused by name, never garbage */
            if (made != KVRT_ERR_UNSUPPORTED || !strstr(be->err.message, kvrt_dtype_name(c->type)))
                fail_msg("%s pool on %s: expected UNSUPPORTED naming the type, got %s: %s", kvrt_dtype_name(c->type),
                         kvrt_test_pass_list[p].name, kvrt_status_str(made), be->err.message);
            continue;
        }
        assert_int_equal(made, KVRT_OK);
        kvrt_buffer *kb = kvrt_test_up(be, k, xb), *vb = kvrt_test_up(be, v, xb);
        kvrt_buffer *sb = kvrt_test_up(be, slots, (size_t)c->n * sizeof(int32_t));
        assert_int_equal(kvrt_op_begin(be), KVRT_OK);
        kvrt_status st = kvrt_op_kv_write(be, pool, 1, (kvrt_view){kb, 0}, stride, (kvrt_view){vb, 0}, stride,
                                          (kvrt_view){sb, 0}, c->n);
        assert_int_equal(kvrt_op_submit(be), KVRT_OK);
        if (st != KVRT_OK)
            fail_msg("kv_write on %s: %s", kvrt_test_pass_list[p].name, be->err.message);
        uint8_t *other = xmalloc(bb);
        for (int32_t l = 0; l < 2; l++)
            for (int w = 0; w < 2; w++)
                for (int32_t blk = 0; blk < d.num_blocks; blk++) {
                    uint8_t *at = got + (size_t)w * bb * (size_t)d.num_blocks + (size_t)blk * bb;
                    assert_int_equal(kvrt_op_kv_block_read(be, pool, l, (kvrt_kv_which)w, blk, l ? at : other),
                                     KVRT_OK);
                    for (size_t i = 0; l == 0 && i < bb; i++)
                        assert_int_equal(other[i], 0); /* the other layer */
                }
        free(other);
        if (memcmp(got, want, 2 * bb * (size_t)d.num_blocks) != 0)
            fail_msg("kv_write %s hd %d bs %d on %s: the pool's bytes differ from the layout's",
                     kvrt_dtype_name(c->type), (int)c->dim, (int)c->rot, kvrt_test_pass_list[p].name);
        kvrt_op_buffer_destroy(be, kb);
        kvrt_op_buffer_destroy(be, vb);
        kvrt_op_buffer_destroy(be, sb);
        kvrt_op_kv_pool_destroy(be, pool);
    }
    free(k), free(v), free(slots), free(want), free(got);
}

/* ---- attention rows: attn_cases.h data and reference, once ------------------------------------------- */

static void run_attention(const op_case *c, uint64_t seed)
{
    attn_case ac;
    attn_case_make(&ac, c->at.head_dim, c->at.n_heads, c->at.n_kv_heads, c->at.block_size, c->type, c->at.window,
                   c->at.sinks, c->at.mode, c->at.length, seed);
    kvrt_test_attn_case_everywhere(&ac, NULL, NULL);
}

/* ---- tests --------------------------------------------------------------------------------------------- */

static void test_op_table(void **state)
{
    (void)state;
    const char *full_env = getenv("KVRT_TEST_FULL");
    bool full = full_env && strcmp(full_env, "1") == 0;
    static table t;
    size_t n = build_table(&t, full);
    size_t per_op[OP_ATTENTION + 1] = {0}, cpu_only = 0;
    for (size_t i = 0; i < n; i++) {
        const op_case *c = &t.c[i];
        cpu_only += c->cpu_only;
        uint64_t seed = 1000 + i;
        if (c->op == OP_KV_WRITE)
            run_kv_write(c, seed);
        else if (c->op == OP_ATTENTION)
            run_attention(c, seed);
        else
            run_model_op(c, seed);
        per_op[c->op]++;
    }
    print_message("%zu rows (%s; %zu on the CPU only) on %d passes: matmul %zu, rmsnorm %zu, rope %zu, swiglu %zu, "
                  "add %zu, embed %zu, gather_rows %zu, kv_write %zu, attention %zu\n", n,
                  full ? "full product" : "CI subset", cpu_only, kvrt_test_n_passes,
                  per_op[OP_MATMUL], per_op[OP_RMSNORM], per_op[OP_ROPE], per_op[OP_SWIGLU], per_op[OP_ADD],
                  per_op[OP_EMBED], per_op[OP_GATHER], per_op[OP_KV_WRITE], per_op[OP_ATTENTION]);
}

/* The table covers every kernel entry of the vtable. */
static void test_table_covers_every_entry(void **state)
{
    (void)state;
    static table t;
    build_table(&t, false);
    bool seen[OP_ATTENTION + 1] = {0};
    bool types[KVRT_ARRAY_LEN(WTYPES)] = {0}, decode = false, prefill = false;
    for (size_t i = 0; i < t.n; i++) {
        seen[t.c[i].op] = true;
        for (size_t k = 0; k < KVRT_ARRAY_LEN(WTYPES); k++)
            types[k] |= t.c[i].op == OP_MATMUL && t.c[i].type == WTYPES[k];
        decode |= t.c[i].op == OP_ATTENTION && t.c[i].at.mode == ATTN_DECODE;
        prefill |= t.c[i].op == OP_ATTENTION && t.c[i].at.mode == ATTN_PREFILL;
    }
    for (int op = 0; op <= OP_ATTENTION; op++)
        assert_true(seen[op]);
    for (size_t k = 0; k < KVRT_ARRAY_LEN(WTYPES); k++)
        assert_true(types[k]);
    assert_true(decode && prefill);
    size_t gpu_full = 0, gpu_ci = 0;
    build_table(&t, true);
    for (size_t i = 0; i < t.n; i++)
        gpu_full += !t.c[i].cpu_only;
    build_table(&t, false);
    for (size_t i = 0; i < t.n; i++)
        gpu_ci += !t.c[i].cpu_only;
    assert_true(gpu_full > gpu_ci); /* KVRT_TEST_FULL=1 runs more on the GPUs */
}

/* The same bad call is the same error, message included, on every pass:
 * the front door answers before any backend sees it. */
static void test_same_bad_call_same_error(void **state)
{
    (void)state;
    enum { N_BAD = 10 };
    kvrt_status first_st[N_BAD];
    char first[N_BAD][KVRT_ERROR_MESSAGE_MAX];
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        kvrt_backend *be = kvrt_test_pass_list[p].ctx->be;
        kvrt_buffer *b = kvrt_test_up(be, NULL, 4096);
        kvrt_view v = {b, 0};
        kvrt_kv_pool_desc pd = {1, 2, 16, 8, 4, .dtype = KVRT_DTYPE_F32};
        kvrt_kv_pool *pool;
        assert_int_equal(kvrt_op_kv_pool_create(be, &pd, &pool), KVRT_OK);
        kvrt_attn_desc ad = {.num_seqs = 1, .n_heads = 3, .max_blocks_per_seq = 2, .scale = 0.25f, .q_stride = 48,
                             .o_stride = 48};
        kvrt_rope_desc rd = {2, 1, 8, 7, 0, 4, 8};
        const int32_t pairs[1][2] = {{0, 4}};
        for (int i = 0; i < N_BAD; i++) {
            kvrt_status st = KVRT_OK;
            switch (i) {
            case 0: st = kvrt_op_matmul(be, KVRT_DTYPE_Q8_0, v, 4, 40, v, 40, kvrt_view_at(v, 2048), 4, 1); break;
            case 1: st = kvrt_op_matmul(be, (kvrt_dtype)16, v, 4, 256, v, 256, kvrt_view_at(v, 2048), 4, 1); break;
            case 2: /* y inside the weights */
                st = kvrt_op_matmul(be, KVRT_DTYPE_F32, v, 8, 64, kvrt_view_at(v, 2048), 64, kvrt_view_at(v, 1024), 8,
                                    1);
                break;
            case 3: st = kvrt_op_rmsnorm(be, v, 16, kvrt_view_at(v, 2048), kvrt_view_at(v, 32), 16, 2, 16, 1e-5f);
                break;
            case 4: st = kvrt_op_rope(be, v, kvrt_view_at(v, 1024), kvrt_view_at(v, 2048), &rd); break;
            case 5: st = kvrt_op_kv_write(be, pool, 0, v, 30, v, 32, kvrt_view_at(v, 2048), 1); break;
            case 6: st = kvrt_op_attn_decode(be, pool, 0, &ad, v, kvrt_view_at(v, 1024), v, v); break;
            case 7: st = kvrt_op_add(be, v, v, kvrt_view_at(v, 4000), 100); break;
            case 8: st = kvrt_op_kv_copy_blocks(be, pool, pairs, 1); break;
            default: st = kvrt_op_embed(be, KVRT_DTYPE_Q4_0, v, 48, v, 1, kvrt_view_at(v, 2048)); break;
            }
            assert_int_not_equal(st, KVRT_OK);
            if (p == 0) {
                first_st[i] = st;
                snprintf(first[i], sizeof(first[i]), "%s", be->err.message);
            } else {
                assert_int_equal(st, first_st[i]);
                if (strcmp(first[i], be->err.message) != 0)
                    fail_msg("bad call %d: \"%s\" on %s, \"%s\" on %s", i, first[i], kvrt_test_pass_list[0].name,
                             be->err.message, kvrt_test_pass_list[p].name);
            }
        }
        kvrt_op_kv_pool_destroy(be, pool);
        kvrt_op_buffer_destroy(be, b);
    }
    assert_int_equal(first_st[1], KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(first[0], "rows are whole blocks"));
    assert_non_null(strstr(first[2], "matmul: y overlaps the weights"));
    assert_non_null(strstr(first[3], "partly overlaps"));
    assert_non_null(strstr(first[4], "rot_dim 7"));
    assert_non_null(strstr(first[5], "strides"));
    assert_non_null(strstr(first[6], "n_heads 3"));
    assert_non_null(strstr(first[7], "add: out"));
    assert_non_null(strstr(first[8], "destination block 4"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_covers_every_entry),
        cmocka_unit_test(test_same_bad_call_same_error),
        cmocka_unit_test(test_op_table),
    };
    return cmocka_run_group_tests_name("backend ops", tests, kvrt_test_passes_setup, kvrt_test_passes_teardown);
}
