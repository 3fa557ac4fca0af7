/* OpenCL paged attention on PoCL against a double-precision reference
 * (DESIGN.md correctness contract: max abs <= 1e-4, NMSE <= 1e-6, F32 and F16
 * KV alike; the reference reads the stored, F16-rounded values). Decode with
 * several split-K partitions, GQA/MQA, windows with sinks (blocks outside the
 * window released as -1), prefill over a cached prefix + chunk, strided q/out,
 * segmented pools, guard canaries after every output. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "backend/opencl/cl_internal.h"
#include "common/fp16.h"
#include "test_opencl_util.h"
#include "backend/ops.h"

#define MAX_SEQS 4
#define CANARY 12345.678f
#define N_CANARY 64

typedef struct cl_attn_case {
    const char *name;
    int32_t head_dim, n_heads, n_kv_heads, block_size;
    kvrt_dtype dtype;
    int32_t window, sinks;
    bool prefill;
    int32_t num_seqs;
    int32_t seq_lens[MAX_SEQS];
    int32_t n_new[MAX_SEQS]; /* prefill: query tokens per sequence; decode: 1 */
    int32_t pad;             /* extra elements per q/out row (strided views) */
    size_t seg_bytes;        /* segment size for the pool (SIZE_MAX = the device's) */
} cl_attn_case;

static const cl_attn_case cases[] = {
    {"decode f32 gqa, 3 partitions", 64, 8, 2, 16, KVRT_DTYPE_F32, 0, 0, false, 4, {1, 17, 300, 600}, {0}, 0,
     SIZE_MAX},
    {"decode f16 window+sinks, segmented", 128, 4, 4, 32, KVRT_DTYPE_F16, 100, 4, false, 2, {513, 40}, {0}, 5,
     4 * 32 * 128 * 2 * 3},
    {"decode f32 mqa hd80 window", 80, 8, 1, 8, KVRT_DTYPE_F32, 256, 0, false, 2, {257, 3}, {0}, 0, SIZE_MAX},
    {"decode f16 16 heads per kv head", 32, 16, 1, 16, KVRT_DTYPE_F16, 0, 0, false, 1, {1000}, {0}, 3, SIZE_MAX},
    {"prefill f32 prefix + chunk", 64, 8, 2, 16, KVRT_DTYPE_F32, 0, 0, true, 3, {40, 300, 5}, {40, 37, 1}, 0,
     SIZE_MAX},
    {"prefill f16 window+sinks, segmented", 96, 4, 2, 8, KVRT_DTYPE_F16, 50, 4, true, 2, {200, 33}, {70, 33}, 7,
     10 * 8 * 96 * 2 * 2},
    {"prefill f32 hd256", 256, 2, 1, 32, KVRT_DTYPE_F32, 0, 0, true, 1, {70}, {70}, 0, SIZE_MAX},
};

static bool visible(const cl_attn_case *c, int32_t i, int32_t j)
{
    return j <= i && (c->window == 0 || i - j < c->window || j < c->sinks);
}

/* Everything one case needs on the host. */
typedef struct case_data {
    int32_t num_blocks, max_blocks, num_tokens;
    int64_t row, q_stride;            /* row = n_heads * head_dim */
    float *k[MAX_SEQS], *v[MAX_SEQS]; /* [len][n_kv][hd], as written */
    int32_t *tables;                  /* [num_seqs][max_blocks] */
    int32_t qsl[MAX_SEQS + 1];
    float *q;                         /* [num_tokens][q_stride] */
    double *ref;                      /* [num_tokens][row] */
} case_data;

static float stored(const cl_attn_case *c, float x)
{
    return c->dtype == KVRT_DTYPE_F16 ? kvrt_fp16_to_f32(kvrt_f32_to_fp16(x)) : x;
}

/* Reference for query token at position i of sequence s, head h. */
static void reference(const cl_attn_case *c, const case_data *cd, int32_t s, int32_t i, const float *q, double *out)
{
    const int32_t D = c->head_dim, G = c->n_heads / c->n_kv_heads, len = c->seq_lens[s];
    const double scale = 1.0 / sqrt((double)D);
    double *w = malloc(sizeof(double) * (size_t)len);
    assert_non_null(w);
    for (int32_t h = 0; h < c->n_heads; h++) {
        const int32_t kvh = h / G;
        double m = -INFINITY, sum = 0;
        for (int32_t j = 0; j < len; j++) {
            w[j] = -INFINITY;
            if (!visible(c, i, j))
                continue;
            double dot = 0;
            for (int32_t d = 0; d < D; d++)
                dot += (double)q[h * D + d] * stored(c, cd->k[s][((int64_t)j * c->n_kv_heads + kvh) * D + d]);
            w[j] = dot * scale;
            m = fmax(m, w[j]);
        }
        for (int32_t j = 0; j < len; j++) {
            w[j] = w[j] == -INFINITY ? 0 : exp(w[j] - m);
            sum += w[j];
        }
        for (int32_t d = 0; d < D; d++) {
            double acc = 0;
            for (int32_t j = 0; j < len; j++)
                acc += w[j] * stored(c, cd->v[s][((int64_t)j * c->n_kv_heads + kvh) * D + d]);
            out[h * D + d] = acc / sum;
        }
    }
    free(w);
}

static void case_build(const cl_attn_case *c, case_data *cd, uint64_t seed)
{
    memset(cd, 0, sizeof(*cd));
    const int32_t D = c->head_dim, bs = c->block_size;
    cd->row = (int64_t)c->n_heads * D;
    cd->q_stride = cd->row + c->pad;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        cd->max_blocks = KVRT_MAX(cd->max_blocks, (c->seq_lens[s] + bs - 1) / bs + 1); /* a spare column */
        cd->num_blocks += (c->seq_lens[s] + bs - 1) / bs;
        int32_t n_new = c->prefill ? c->n_new[s] : 1;
        cd->qsl[s + 1] = cd->qsl[s] + n_new;
    }
    cd->num_blocks += 3; /* spares no table points to */
    cd->num_tokens = cd->qsl[c->num_seqs];
    /* blocks handed out in a scrambled order: sequence s, column b gets perm[next++] */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)cd->num_blocks);
    assert_non_null(perm);
    for (int32_t i = 0; i < cd->num_blocks; i++)
        perm[i] = i;
    for (int32_t i = cd->num_blocks - 1; i > 0; i--) {
        int32_t j = (int32_t)(cl_test_next(&seed) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    cd->tables = malloc(sizeof(int32_t) * (size_t)(c->num_seqs * cd->max_blocks));
    assert_non_null(cd->tables);
    int32_t next = 0;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        int32_t len = c->seq_lens[s], first_q = len - (cd->qsl[s + 1] - cd->qsl[s]);
        for (int32_t b = 0; b < cd->max_blocks; b++) {
            int32_t *e = &cd->tables[s * cd->max_blocks + b];
            *e = b * bs < len ? perm[next++] : -1;
            /* released by the window: no query of this step sees any key of the block */
            bool needed = false;
            for (int32_t j = b * bs; j < KVRT_MIN(len, (b + 1) * bs); j++)
                needed = needed || visible(c, KVRT_MAX(j, first_q), j) || visible(c, len - 1, j);
            if (!needed)
                *e = -1;
        }
        size_t n = (size_t)len * (size_t)c->n_kv_heads * (size_t)D;
        cd->k[s] = malloc(n * 4);
        cd->v[s] = malloc(n * 4);
        assert_non_null(cd->k[s]);
        assert_non_null(cd->v[s]);
        for (size_t i = 0; i < n; i++) {
            cd->k[s][i] = cl_test_uniform(&seed) * 2.0f;
            cd->v[s][i] = cl_test_uniform(&seed);
        }
    }
    free(perm);
    cd->q = malloc(sizeof(float) * (size_t)(cd->num_tokens * cd->q_stride));
    cd->ref = malloc(sizeof(double) * (size_t)(cd->num_tokens * cd->row));
    assert_non_null(cd->q);
    assert_non_null(cd->ref);
    for (int64_t i = 0; i < cd->num_tokens * cd->q_stride; i++)
        cd->q[i] = cl_test_uniform(&seed);
    for (int32_t s = 0; s < c->num_seqs; s++) {
        int32_t n_new = cd->qsl[s + 1] - cd->qsl[s];
        for (int32_t t = 0; t < n_new; t++) {
            int32_t tok = cd->qsl[s] + t;
            reference(c, cd, s, c->seq_lens[s] - n_new + t, cd->q + tok * cd->q_stride, cd->ref + tok * cd->row);
        }
    }
}

static void case_free(const cl_attn_case *c, case_data *cd)
{
    for (int32_t s = 0; s < c->num_seqs; s++) {
        free(cd->k[s]);
        free(cd->v[s]);
    }
    free(cd->tables);
    free(cd->q);
    free(cd->ref);
}

static kvrt_buffer *upload(kvrt_backend *be, const void *src, size_t bytes)
{
    kvrt_buffer *b = NULL;
    assert_int_equal(kvrt_op_buffer_create(be, bytes, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, b, 0, src, bytes), KVRT_OK);
    return b;
}

/* Writes every sequence's K/V through kv_write (slots of released blocks are -1). */
static void write_kv(kvrt_backend *be, kvrt_kv_pool *pool, const cl_attn_case *c, const case_data *cd)
{
    const int32_t bs = c->block_size;
    const int64_t row = (int64_t)c->n_kv_heads * c->head_dim;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        int32_t len = c->seq_lens[s];
        int32_t *slots = malloc(sizeof(int32_t) * (size_t)len);
        assert_non_null(slots);
        for (int32_t j = 0; j < len; j++) {
            int32_t blk = cd->tables[s * cd->max_blocks + j / bs];
            slots[j] = blk < 0 ? -1 : blk * bs + j % bs;
        }
        kvrt_buffer *kb = upload(be, cd->k[s], (size_t)(len * row) * 4);
        kvrt_buffer *vb = upload(be, cd->v[s], (size_t)(len * row) * 4);
        kvrt_buffer *sb = upload(be, slots, (size_t)len * 4);
        assert_int_equal(kvrt_op_kv_write(be, pool, 1, (kvrt_view){kb, 0}, row, (kvrt_view){vb, 0}, row,
                                           (kvrt_view){sb, 0}, len),
                         KVRT_OK);
        kvrt_op_buffer_destroy(be, kb);
        kvrt_op_buffer_destroy(be, vb);
        kvrt_op_buffer_destroy(be, sb);
        free(slots);
    }
}

/* Runs sequences [first, first + count) in one recorded step; returns the
 * output rows [num_tokens of those sequences][o_stride] (caller frees). */
static float *attend(kvrt_backend *be, kvrt_kv_pool *pool, const cl_attn_case *c, const case_data *cd,
                     int32_t first, int32_t count)
{
    const int32_t t0 = cd->qsl[first], nt = cd->qsl[first + count] - t0;
    const int64_t o_stride = cd->row + 2 * c->pad + 1;
    kvrt_attn_desc d = {.num_seqs = count, .n_heads = c->n_heads, .max_blocks_per_seq = cd->max_blocks,
                        .scale = (float)(1.0 / sqrt((double)c->head_dim)), .window = c->window, .sinks = c->sinks,
                        .q_stride = cd->q_stride, .o_stride = o_stride, .num_tokens = nt};
    int32_t qsl[MAX_SEQS + 1], lens[MAX_SEQS];
    for (int32_t s = 0; s <= count; s++)
        qsl[s] = cd->qsl[first + s] - t0;
    memcpy(lens, c->seq_lens + first, sizeof(int32_t) * (size_t)count);
    /* q sits 16 bytes into its buffer; out is followed by canaries */
    const size_t q_bytes = (size_t)(nt * cd->q_stride) * 4, o_len = (size_t)(nt * o_stride) + N_CANARY;
    kvrt_buffer *qb, *ob;
    assert_int_equal(kvrt_op_buffer_create(be, q_bytes + 16, KVRT_BUFFER_DEVICE, &qb), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, qb, 16, cd->q + t0 * cd->q_stride, q_bytes), KVRT_OK);
    float *out = malloc(o_len * 4);
    assert_non_null(out);
    for (size_t i = 0; i < o_len; i++)
        out[i] = CANARY;
    ob = upload(be, out, o_len * 4);
    kvrt_buffer *lb = upload(be, lens, (size_t)count * 4), *qslb = upload(be, qsl, (size_t)(count + 1) * 4);
    kvrt_buffer *tb = upload(be, cd->tables + first * cd->max_blocks, (size_t)(count * cd->max_blocks) * 4);
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    kvrt_status s = c->prefill ? kvrt_op_attn_prefill(be, pool, 1, &d, (kvrt_view){qb, 16}, (kvrt_view){ob, 0},
                                                       (kvrt_view){qslb, 0}, (kvrt_view){lb, 0}, (kvrt_view){tb, 0})
                               : kvrt_op_attn_decode(be, pool, 1, &d, (kvrt_view){qb, 16}, (kvrt_view){ob, 0},
                                                      (kvrt_view){lb, 0}, (kvrt_view){tb, 0});
    if (s != KVRT_OK)
        fail_msg("%s: %s", c->name, be->err.message);
    assert_int_equal(kvrt_op_submit(be), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_download(be, ob, 0, out, o_len * 4), KVRT_OK);
    for (size_t i = (size_t)(nt * o_stride); i < o_len; i++)
        assert_true(out[i] == CANARY);
    for (int32_t t = 0; t < nt; t++) { /* the padding between rows is not written either */
        for (int64_t e = cd->row; e < o_stride; e++)
            assert_true(out[t * o_stride + e] == CANARY);
    }
    kvrt_op_buffer_destroy(be, qb);
    kvrt_op_buffer_destroy(be, ob);
    kvrt_op_buffer_destroy(be, lb);
    kvrt_op_buffer_destroy(be, qslb);
    kvrt_op_buffer_destroy(be, tb);
    return out;
}

static void check_case(kvrt_backend *be, const cl_attn_case *c, uint64_t seed)
{
    case_data cd;
    case_build(c, &cd, seed);
    kvrt_kv_pool_desc pd = {.n_layers = 2, .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim,
                            .block_size = c->block_size, .num_blocks = cd.num_blocks, .dtype = c->dtype};
    kvrt_kv_pool *pool;
    kvrt_cl_test_set_segment_bytes(be, c->seg_bytes);
    assert_int_equal(kvrt_op_kv_pool_create(be, &pd, &pool), KVRT_OK);
    kvrt_cl_test_set_segment_bytes(be, SIZE_MAX);
    if (c->seg_bytes != SIZE_MAX) {
        assert_true(pool->k[1].n_segs > 1);
        print_message("  %s: %d segments per pool\n", c->name, (int)pool->k[1].n_segs);
    }
    write_kv(be, pool, c, &cd);

    float *out = attend(be, pool, c, &cd, 0, c->num_seqs);
    const int64_t o_stride = cd.row + 2 * c->pad + 1;
    double max_abs = 0, err2 = 0, ref2 = 0;
    for (int32_t t = 0; t < cd.num_tokens; t++) {
        for (int64_t e = 0; e < cd.row; e++) {
            double o = out[t * o_stride + e], r = cd.ref[t * cd.row + e];
            if (!isfinite(o))
                fail_msg("%s: token %d element %lld is not finite", c->name, (int)t, (long long)e);
            max_abs = fmax(max_abs, fabs(o - r));
            err2 += (o - r) * (o - r);
            ref2 += r * r;
        }
    }
    double nmse = err2 / ref2;
    print_message("  %-40s max abs %.2e  nmse %.2e\n", c->name, max_abs, nmse);
    if (!(max_abs <= 1e-4 && nmse <= 1e-6))
        fail_msg("%s: max abs %.3e, nmse %.3e beyond 1e-4 / 1e-6", c->name, max_abs, nmse);

    /* batch invariance: the last sequence alone gives the same bits */
    if (c->num_seqs > 1) {
        int32_t last = c->num_seqs - 1, nt = cd.qsl[last + 1] - cd.qsl[last];
        float *alone = attend(be, pool, c, &cd, last, 1);
        for (int32_t t = 0; t < nt; t++)
            assert_memory_equal(alone + t * o_stride, out + (cd.qsl[last] + t) * o_stride, (size_t)cd.row * 4);
        free(alone);
    }
    free(out);
    kvrt_op_kv_pool_destroy(be, pool);
    case_free(c, &cd);
}

static void test_attention_cases(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    kvrt_backend *be = ((struct kvrt_context *)ctx)->be;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(cases); i++)
        check_case(be, &cases[i], 1000 + i);
    kvrt_context_destroy(ctx);
}

/* A one-row view of q that sits across a segment boundary is refused, not read past. */
static void test_attention_bad_views(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    kvrt_backend *be = ((struct kvrt_context *)ctx)->be;
    kvrt_kv_pool_desc pd = {.n_layers = 1, .n_kv_heads = 1, .head_dim = 64, .block_size = 16, .num_blocks = 4,
                            .dtype = KVRT_DTYPE_F32};
    kvrt_kv_pool *pool;
    assert_int_equal(kvrt_op_kv_pool_create(be, &pd, &pool), KVRT_OK);
    kvrt_buffer *b;
    kvrt_cl_test_set_segment_bytes(be, 1024);
    assert_int_equal(kvrt_op_buffer_create(be, 4096, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    kvrt_cl_test_set_segment_bytes(be, SIZE_MAX);
    kvrt_attn_desc d = {.num_seqs = 1, .n_heads = 2, .max_blocks_per_seq = 4, .scale = 0.125f,
                        .q_stride = 128, .o_stride = 128};
    kvrt_view q = {b, 768}, out = {b, 2048}, lens = {b, 3072}, bt = {b, 3200};
    assert_int_equal(kvrt_op_attn_decode(be, pool, 0, &d, q, out, lens, bt), KVRT_ERR_UNSUPPORTED);
    assert_int_equal(kvrt_op_attn_decode(be, pool, 1, &d, out, out, lens, bt), KVRT_ERR_INVALID_ARGUMENT);
    d.window = -1;
    assert_int_equal(kvrt_op_attn_decode(be, pool, 0, &d, out, out, lens, bt), KVRT_ERR_INVALID_ARGUMENT);
    d.window = 0;
    d.q_stride = 100; /* shorter than a row */
    assert_int_equal(kvrt_op_attn_prefill(be, pool, 0, &d, out, out, lens, lens, bt), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_op_buffer_destroy(be, b);
    kvrt_op_kv_pool_destroy(be, pool);
    kvrt_context_destroy(ctx);
}

/* Bad lengths and table entries cannot be reported by a kernel: the
 * attention API checks the host arrays once, before anything goes to the
 * device (kv_layout.h), so nothing runs and the output keeps its canaries. */
static void test_attention_bad_tables(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    kvrt_kv_cache_params cp = {.n_layers = 1, .n_kv_heads = 1, .head_dim = 16, .block_size = 8, .num_blocks = 4,
                               .dtype = KVRT_DTYPE_F32};
    kvrt_kv_cache *cache;
    assert_int_equal(kvrt_kv_cache_create(ctx, &cp, &cache, NULL), KVRT_OK);
    enum { NQ = 40 * 16 };
    float qv[NQ], out[NQ];
    for (int i = 0; i < NQ; i++) {
        qv[i] = (float)(i % 7) * 0.1f;
        out[i] = CANARY;
    }
    kvrt_attention_params p = {.n_heads = 1, .max_blocks_per_seq = 4, .scale = 0.25f};
    /* [0] seq_len, [1..4] table, [5..6] query_start_loc */
    const int32_t bad[][7] = {
        {20, 0, 1, 4, -1, 0, 20},  /* entry past the pool */
        {20, 0, -1, 2, -1, 0, 20}, /* -1 where a visible key lives */
        {40, 0, 1, 2, 3, 0, 40},   /* longer than the table */
        {0, 0, 1, 2, 3, 0, 0},     /* empty sequence */
    };
    for (size_t c = 0; c < KVRT_ARRAY_LEN(bad); c++) {
        assert_int_not_equal(kvrt_attention_decode(cache, 0, &p, 1, qv, &bad[c][0], &bad[c][1], out), KVRT_OK);
        if (bad[c][0] > 0) /* prefill of the whole sequence */
            assert_int_not_equal(kvrt_attention_prefill(cache, 0, &p, 1, &bad[c][5], qv, &bad[c][0], &bad[c][1], out),
                                 KVRT_OK);
    }
    assert_int_equal(kvrt_attention_decode(cache, 0, &p, 1, qv, &bad[0][0], &bad[0][1], out),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_kv_cache_message(cache), "block_tables[0][2] = 4 outside [0, 4)"));
    for (int i = 0; i < NQ; i++)
        assert_true(out[i] == CANARY); /* nothing ran */
    const int32_t good[7] = {20, 0, 1, 2, -1, 0, 20};
    assert_int_equal(kvrt_attention_decode(cache, 0, &p, 1, qv, &good[0], &good[1], out), KVRT_OK);
    assert_true(out[0] != CANARY);
    kvrt_kv_cache_destroy(cache);
    kvrt_context_destroy(ctx);
}

int main(void)
{
    cl_test_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention_cases),
        cmocka_unit_test(test_attention_bad_views),
        cmocka_unit_test(test_attention_bad_tables),
    };
    return cmocka_run_group_tests_name("opencl attention", tests, NULL, NULL);
}
