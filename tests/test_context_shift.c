/* Context shift (issue 18): the rope-shift kernel of every backend against a
 * double reference in every KV type it stores; a session that shifts gives
 * the logits of a fresh run over the kept tokens at their new positions;
 * stories260K generates ten times its context on every backend; sinks that
 * leave no block to drop are a clear error. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend/kv_cache_internal.h"
#include "common/fp16.h"
#include "kvrt.h"
#include "model/synth.h"
#include "test_models.h"
#include "test_passes.h"

/* ---- the kernel against a double reference ------------------------------------------------- */

typedef struct shift_case {
    kvrt_dtype dtype;
    int32_t head_dim, rot_dim, neox, n_kv_heads, block_size;
} shift_case;

static const shift_case CASES[] = {
    {KVRT_DTYPE_F32, 16, 16, 0, 2, 8},  {KVRT_DTYPE_F32, 24, 16, 1, 1, 16}, {KVRT_DTYPE_F16, 16, 16, 0, 2, 8},
    {KVRT_DTYPE_F16, 15, 10, 1, 3, 8},  /* odd head_dim: F16 pairs share 32-bit words with other rows */
    {KVRT_DTYPE_Q8_0, 64, 64, 0, 2, 8}, {KVRT_DTYPE_Q4_0, 32, 32, 1, 2, 16},
};

enum { N_LAYERS = 2, N_BLOCKS = 6 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) /* [0, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* Row r (head * block_size + offset) of a stored block, in F32. */
static void stored_row(const shift_case *c, const uint8_t *blk, int32_t r, float *out)
{
    const kvrt_kv_dtype_desc *qt = kvrt_kv_dtype(c->dtype);
    if (c->dtype == KVRT_DTYPE_F32) {
        memcpy(out, blk + (size_t)r * c->head_dim * 4, (size_t)c->head_dim * 4);
    } else if (c->dtype == KVRT_DTYPE_F16) {
        const uint16_t *h = (const uint16_t *)(const void *)(blk + (size_t)r * c->head_dim * 2);
        for (int32_t d = 0; d < c->head_dim; d++)
            out[d] = kvrt_fp16_to_f32(h[d]);
    } else {
        kvrt_kv_dequantize_row(c->dtype, blk + kvrt_kv_row_values(qt, c->head_dim, (size_t)r),
                               blk + kvrt_kv_row_scales(qt, c->n_kv_heads, c->block_size, c->head_dim, (size_t)r),
                               c->head_dim, out);
    }
}

/* A block of random keys or values, stored by the layout's own rules. */
static void random_block(const shift_case *c, uint8_t *blk, size_t bytes)
{
    const kvrt_kv_dtype_desc *qt = kvrt_kv_dtype(c->dtype);
    float x[64];
    memset(blk, 0, bytes);
    for (int32_t r = 0; r < c->n_kv_heads * c->block_size; r++) {
        for (int32_t d = 0; d < c->head_dim; d++)
            x[d] = (float)(4.0 * urand() - 2.0);
        if (c->dtype == KVRT_DTYPE_F32)
            memcpy(blk + (size_t)r * c->head_dim * 4, x, (size_t)c->head_dim * 4);
        else if (c->dtype == KVRT_DTYPE_F16)
            for (int32_t d = 0; d < c->head_dim; d++)
                ((uint16_t *)(void *)blk)[(size_t)r * c->head_dim + d] = kvrt_f32_to_fp16_kv(x[d]);
        else
            kvrt_kv_quantize_row(c->dtype, x, c->head_dim, blk + kvrt_kv_row_values(qt, c->head_dim, (size_t)r),
                                 blk + kvrt_kv_row_scales(qt, c->n_kv_heads, c->block_size, c->head_dim, (size_t)r));
    }
}

/* The F16 scale of value d of row r in a quantized block (the step of its group). */
static double group_scale(const shift_case *c, const uint8_t *blk, int32_t r, int32_t d)
{
    const kvrt_kv_dtype_desc *qt = kvrt_kv_dtype(c->dtype);
    const uint8_t *s = blk + kvrt_kv_row_scales(qt, c->n_kv_heads, c->block_size, c->head_dim, (size_t)r);
    uint16_t h;
    memcpy(&h, s + (size_t)(d / 32) * 2, 2);
    return kvrt_fp16_to_f32(h);
}

/* Compares a shifted row with the double rotation of the row before: F32
 * within 1e-4; F16 within its rounding (half an F16 ulp) plus F32
 * arithmetic; quantized within half a step of the group's new scale. */
static void check_row(const shift_case *c, const float *before, const float *after, const float *cs,
                      const uint8_t *blk_after, int32_t r, double *err2, double *ref2, double *worst)
{
    double ref[64];
    for (int32_t d = 0; d < c->head_dim; d++)
        ref[d] = before[d];
    int32_t half = c->rot_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        int32_t i0 = c->neox ? i : 2 * i, i1 = c->neox ? i + half : 2 * i + 1;
        double x0 = before[i0], x1 = before[i1];
        ref[i0] = x0 * cs[2 * i] - x1 * cs[2 * i + 1];
        ref[i1] = x0 * cs[2 * i + 1] + x1 * cs[2 * i];
    }
    for (int32_t d = 0; d < c->head_dim; d++) {
        double e = fabs(after[d] - ref[d]), bound;
        if (c->dtype == KVRT_DTYPE_F32)
            bound = 1e-4;
        else if (c->dtype == KVRT_DTYPE_F16)
            bound = fabs(ref[d]) * 0x1p-11 + 0x1p-25 + 1e-6;
        else
            bound = 0.5 * group_scale(c, blk_after, r, d) * (1.0 + 1e-3) + 1e-6;
        if (!(e <= bound))
            fail_msg("%s head_dim %d: row %d dim %d is %.9g, reference %.9g (bound %.3g)", kvrt_dtype_name(c->dtype),
                     (int)c->head_dim, (int)r, (int)d, after[d], ref[d], bound);
        *err2 += e * e;
        *ref2 += ref[d] * ref[d];
        *worst = e > *worst ? e : *worst;
    }
}

static void run_kernel_case(kvrt_context *ctx, const char *pass, const shift_case *c, bool quant_kv)
{
    kvrt_kv_cache_params p = {.n_layers = N_LAYERS, .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim,
                              .block_size = c->block_size, .num_blocks = N_BLOCKS, .dtype = c->dtype};
    kvrt_kv_cache *cache = NULL;
    kvrt_error err;
    kvrt_status s = kvrt_kv_cache_create(ctx, &p, &cache, &err);
    bool quant = c->dtype == KVRT_DTYPE_Q8_0 || c->dtype == KVRT_DTYPE_Q4_0;
    if (quant && !quant_kv) { /* a pass without quantized KV refuses the pool, and says so */
        assert_int_equal(s, KVRT_ERR_UNSUPPORTED);
        assert_non_null(strstr(err.message, kvrt_dtype_name(c->dtype)));
        return;
    }
    if (s != KVRT_OK)
        fail_msg("%s: cache: %s", pass, err.message);
    if (quant && kvrt_context_backend(ctx) != KVRT_BACKEND_CPU) { /* GPU kernels turn F32/F16 keys only */
        const int32_t one[] = {1};
        float cs1[64] = {1.0f, 0.0f};
        assert_int_equal(kvrt_kv_cache_rope_shift(cache, one, 1, cs1, 2, 0), KVRT_ERR_UNSUPPORTED);
        assert_non_null(strstr(kvrt_kv_cache_message(cache), kvrt_dtype_name(c->dtype)));
        kvrt_kv_cache_destroy(cache);
        return;
    }
    size_t bb = kvrt_kv_cache_block_bytes(cache), total = (size_t)N_LAYERS * 2 * N_BLOCKS * bb;
    uint8_t *before = malloc(total), *after = malloc(total);
    for (int32_t l = 0; l < N_LAYERS; l++)
        for (int w = 0; w < 2; w++)
            for (int32_t b = 0; b < N_BLOCKS; b++) {
                uint8_t *blk = before + (((size_t)l * 2 + (size_t)w) * N_BLOCKS + (size_t)b) * bb;
                random_block(c, blk, bb);
                assert_int_equal(kvrt_kv_cache_write_block(cache, l, w, b, blk, bb), KVRT_OK);
            }
    float cs[64];
    for (int32_t i = 0; i < c->rot_dim / 2; i++) { /* any angles: a shift by -d turns pair i by -d * theta_i */
        double a = (urand() * 2.0 - 1.0) * 3.2;
        cs[2 * i] = (float)cos(a);
        cs[2 * i + 1] = (float)sin(a);
    }
    const int32_t blocks[] = {4, 1, 3};
    assert_int_equal(kvrt_kv_cache_rope_shift(cache, blocks, 3, cs, c->rot_dim, c->neox), KVRT_OK);
    for (int32_t l = 0; l < N_LAYERS; l++)
        for (int w = 0; w < 2; w++)
            for (int32_t b = 0; b < N_BLOCKS; b++)
                assert_int_equal(kvrt_kv_cache_read_block(
                                     cache, l, w, b, after + (((size_t)l * 2 + (size_t)w) * N_BLOCKS + (size_t)b) * bb,
                                     bb),
                                 KVRT_OK);
    double err2 = 0, ref2 = 0, worst = 0;
    float rb[64], ra[64];
    for (int32_t l = 0; l < N_LAYERS; l++)
        for (int w = 0; w < 2; w++)
            for (int32_t b = 0; b < N_BLOCKS; b++) {
                size_t at = (((size_t)l * 2 + (size_t)w) * N_BLOCKS + (size_t)b) * bb;
                bool turned = w == 0 && (b == 4 || b == 1 || b == 3);
                if (!turned) { /* V, and keys of blocks not listed: not a byte changed */
                    if (memcmp(before + at, after + at, bb) != 0)
                        fail_msg("%s %s: layer %d %s block %d changed", pass, kvrt_dtype_name(c->dtype), (int)l,
                                 w ? "V" : "K", (int)b);
                    continue;
                }
                for (int32_t r = 0; r < c->n_kv_heads * c->block_size; r++) {
                    stored_row(c, before + at, r, rb);
                    stored_row(c, after + at, r, ra);
                    check_row(c, rb, ra, cs, after + at, r, &err2, &ref2, &worst);
                }
            }
    double nmse = err2 / ref2, nmse_bound = c->dtype == KVRT_DTYPE_Q4_0 ? 2e-2 : quant ? 1e-4 : 1e-6;
    if (!(nmse <= nmse_bound))
        fail_msg("%s %s: NMSE %.3g > %.3g", pass, kvrt_dtype_name(c->dtype), nmse, nmse_bound);
    fprintf(stderr, "%-12s %-5s head_dim %2d rot %2d neox %d: max abs %.2g, NMSE %.2g\n", pass,
            kvrt_dtype_name(c->dtype), (int)c->head_dim, (int)c->rot_dim, (int)c->neox, worst, nmse);
    /* bad block lists: refused before anything moves */
    const int32_t twice[] = {2, 2}, outside[] = {N_BLOCKS};
    assert_int_equal(kvrt_kv_cache_rope_shift(cache, twice, 2, cs, c->rot_dim, c->neox), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_kv_cache_message(cache), "twice"));
    assert_int_equal(kvrt_kv_cache_rope_shift(cache, outside, 1, cs, c->rot_dim, c->neox), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_kv_cache_read_block(cache, 0, 0, 2, before, bb), KVRT_OK);
    assert_memory_equal(before, after + ((size_t)2) * bb, bb);
    free(before);
    free(after);
    kvrt_kv_cache_destroy(cache);
}

static void test_kernel_vs_reference(void **state)
{
    (void)state;
    for (int p = 0; p < kvrt_test_n_passes; p++)
        for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++)
            run_kernel_case(kvrt_test_pass_list[p].ctx, kvrt_test_pass_list[p].name, &CASES[i],
                            kvrt_test_pass_list[p].quant_kv);
}

/* ---- a shifted session equals a fresh run over the kept tokens -------------------------------- */

/* With one layer, a token's K and V depend only on the token and its
 * position (no earlier layer mixes the context in), so after a shift the
 * cache must hold exactly what a fresh run over the kept tokens, at their
 * new positions, computes; the next logits must then agree within the
 * teacher-forced bounds (DESIGN.md): F32 KV 1e-3, F16 KV 0.1. */
enum { CTX = 32, BS = 8, SINKS = 4, N_STREAM = 100, VOCAB = 300 };

static void write_one_layer_model(const char *path)
{
    kvrt_synth_params p;
    kvrt_synth_preset("tiny", &p);
    p.hp.n_vocab = VOCAB;
    p.hp.n_embd = 64;
    p.hp.n_head = 4;
    p.hp.n_head_kv = 2;
    p.hp.n_ff = 96;
    p.hp.n_layer = 1;
    p.hp.n_ctx_train = 128;
    p.stddev = 0.08f;
    p.seed = 18;
    kvrt_error err;
    if (kvrt_synth_write_file(&p, NULL, path, NULL, &err) != KVRT_OK)
        fail_msg("synth: %s", err.message);
}

static kvrt_session *open_session(kvrt_model *m, kvrt_dtype kv, int shift, int32_t n_ctx)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = n_ctx;
    sp.block_size = BS;
    sp.kv_type = kv;
    sp.n_batch = 7; /* several chunks, some of which straddle a shift */
    sp.context_shift = shift;
    sp.n_sinks = SINKS;
    kvrt_session *s = NULL;
    kvrt_error err;
    if (kvrt_session_create(m, &sp, &s, &err) != KVRT_OK)
        fail_msg("session: %s", err.message);
    return s;
}

static double max_diff(const float *a, const float *b, int32_t n)
{
    double mx = 0;
    for (int32_t i = 0; i < n; i++) {
        double d = isfinite(a[i]) && isfinite(b[i]) ? fabs((double)a[i] - b[i]) : INFINITY;
        mx = d > mx ? d : mx;
    }
    return mx;
}

static void test_shift_equals_fresh_run(void **state)
{
    (void)state;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/kvrt_test_ctxshift_%d.gguf", (int)getpid());
    write_one_layer_model(path);
    int32_t stream[N_STREAM], kept[CTX];
    for (int32_t i = 0; i < N_STREAM; i++)
        stream[i] = 3 + (int32_t)(urand() * (VOCAB - 3));
    float *shifted = malloc(VOCAB * sizeof(float)), *fresh = malloc(VOCAB * sizeof(float));
    const kvrt_dtype kvs[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16};
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        kvrt_model_params mp = kvrt_model_default_params();
        mp.path = path;
        kvrt_model *m = NULL;
        kvrt_error err;
        if (kvrt_model_load(kvrt_test_pass_list[p].ctx, &mp, &m, &err) != KVRT_OK)
            fail_msg("%s: %s", kvrt_test_pass_list[p].name, err.message);
        for (size_t k = 0; k < 2; k++) {
            /* a first shift inside the prompt, then one token at a time through several more */
            kvrt_session *s = open_session(m, kvs[k], 1, CTX);
            int32_t checked = 0;
            double worst = 0;
            for (int32_t n = 0; n < N_STREAM;) {
                int32_t c = n == 0 ? 40 : 1;
                assert_int_equal(kvrt_session_eval(s, stream + n, c, shifted, NULL), KVRT_OK);
                n += c;
                kvrt_session_stats st;
                kvrt_session_get_stats(s, &st);
                if (st.n_shifts == 0 || (n % 9 != 0 && n != N_STREAM))
                    continue;
                /* the cache holds the sinks and the newest n_past - sinks tokens */
                int32_t sink = BS, tail = st.n_past - sink;
                memcpy(kept, stream, (size_t)sink * sizeof(int32_t));
                memcpy(kept + sink, stream + n - tail, (size_t)tail * sizeof(int32_t));
                kvrt_session *f = open_session(m, kvs[k], 0, CTX);
                assert_int_equal(kvrt_session_eval(f, kept, st.n_past, fresh, NULL), KVRT_OK);
                kvrt_session_destroy(f);
                double d = max_diff(shifted, fresh, VOCAB), bound = kvs[k] == KVRT_DTYPE_F32 ? 1e-3 : 0.1;
                if (!(d <= bound))
                    fail_msg("%s %s: after %d tokens (%d shifts) the logits are %.3g from a fresh run (bound %.3g)",
                             kvrt_test_pass_list[p].name, kvrt_dtype_name(kvs[k]), (int)n, (int)st.n_shifts, d,
                             bound);
                worst = d > worst ? d : worst;
                checked++;
            }
            kvrt_session_stats st;
            kvrt_session_get_stats(s, &st);
            assert_true(st.n_shifts >= 4);
            assert_true(checked >= 5);
            fprintf(stderr, "%-12s %-4s %d shifts, %d checks: logits within %.2g of a fresh run\n",
                    kvrt_test_pass_list[p].name, kvrt_dtype_name(kvs[k]), (int)st.n_shifts, (int)checked, worst);
            kvrt_session_destroy(s);
        }
        kvrt_model_destroy(m);
    }
    unlink(path);
    free(shifted);
    free(fresh);
}

/* ---- endless generation on stories260K, every backend ---------------------------------------- */

static void test_ten_contexts_of_stories260k(void **state)
{
    (void)state;
    char path[512];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    enum { N_CTX = 32, N_GEN = 10 * N_CTX };
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        /* once per backend: cpu/2 computes cpu/1's bits, and the kernel test
         * covers Vulkan's feature-less shaders (CI time) */
        if (kvrt_test_pass_list[p].same_bits_as >= 0 || strcmp(kvrt_test_pass_list[p].name, "vulkan/none") == 0)
            continue;
        kvrt_model_params mp = kvrt_model_default_params();
        mp.path = path;
        kvrt_model *m = NULL;
        kvrt_error err;
        if (kvrt_model_load(kvrt_test_pass_list[p].ctx, &mp, &m, &err) != KVRT_OK)
            fail_msg("%s: %s", kvrt_test_pass_list[p].name, err.message);
        kvrt_session *s = open_session(m, KVRT_DTYPE_F32, 1, N_CTX);
        kvrt_sampler_params spp = kvrt_sampler_default_params();
        spp.temperature = 0;
        kvrt_sampler *smp = NULL;
        assert_int_equal(kvrt_sampler_create(&spp, 512, NULL, &smp, NULL), KVRT_OK);
        float *logits = malloc(512 * sizeof(float));
        int32_t bos = 1, n_gen = 0;
        kvrt_gen_stop stop;
        assert_int_equal(kvrt_session_eval(s, &bos, 1, logits, NULL), KVRT_OK);
        kvrt_status st = kvrt_session_generate(s, smp, logits, N_GEN, 1, NULL, NULL, &n_gen, &stop);
        if (st != KVRT_OK)
            fail_msg("%s: %s", kvrt_test_pass_list[p].name, kvrt_session_message(s));
        assert_int_equal(n_gen, N_GEN);
        assert_int_equal(stop, KVRT_GEN_STOP_LENGTH);
        kvrt_session_stats ss;
        kvrt_session_get_stats(s, &ss);
        assert_true(ss.n_past <= N_CTX);
        assert_true(ss.n_dropped + ss.n_past == N_GEN + 1); /* every token either kept or dropped */
        assert_true(ss.blocks_used <= N_CTX / BS);
        for (int32_t i = 0; i < 512; i++)
            assert_true(isfinite(logits[i]));
        fprintf(stderr, "%-12s %d tokens in a context of %d: %d shifts, %lld dropped\n", kvrt_test_pass_list[p].name,
                (int)n_gen, N_CTX, (int)ss.n_shifts, (long long)ss.n_dropped);
        free(logits);
        kvrt_sampler_destroy(smp);
        kvrt_session_destroy(s);
        kvrt_model_destroy(m);
    }
}

/* ---- bad input ------------------------------------------------------------------------------- */

static void test_sinks_must_leave_a_block(void **state)
{
    (void)state;
    char path[512];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_model *m = NULL;
    assert_int_equal(kvrt_model_load(kvrt_test_pass_list[0].ctx, &mp, &m, NULL), KVRT_OK);
    const struct {
        int32_t sinks;
        kvrt_status want;
    } rows[] = {{32, KVRT_ERR_INVALID_ARGUMENT}, {40, KVRT_ERR_INVALID_ARGUMENT},
                {25, KVRT_ERR_INVALID_ARGUMENT}, /* 32 in whole blocks of 8 */
                {-1, KVRT_ERR_INVALID_ARGUMENT}, {24, KVRT_OK}, {0, KVRT_OK}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        kvrt_session_params sp = kvrt_session_default_params();
        sp.n_ctx = 32;
        sp.block_size = 8;
        sp.context_shift = 1;
        sp.n_sinks = rows[i].sinks;
        kvrt_session *s = NULL;
        kvrt_error err = {0};
        assert_int_equal(kvrt_session_create(m, &sp, &s, &err), rows[i].want);
        if (rows[i].want != KVRT_OK) {
            assert_null(s);
            assert_non_null(strstr(err.message, "sink"));
        }
        kvrt_session_destroy(s);
    }
    /* without context shift the context still ends: CONTEXT_OVERFLOW, as before */
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = 16;
    kvrt_session *s = NULL;
    assert_int_equal(kvrt_session_create(m, &sp, &s, NULL), KVRT_OK);
    int32_t ids[17] = {1};
    assert_int_equal(kvrt_session_eval(s, ids, 17, NULL, NULL), KVRT_ERR_CONTEXT_OVERFLOW);
    kvrt_session_destroy(s);
    kvrt_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel_vs_reference),
        cmocka_unit_test(test_shift_equals_fresh_run),
        cmocka_unit_test(test_ten_contexts_of_stories260k),
        cmocka_unit_test(test_sinks_must_leave_a_block),
    };
    return cmocka_run_group_tests(tests, kvrt_test_passes_setup, kvrt_test_passes_teardown);
}
