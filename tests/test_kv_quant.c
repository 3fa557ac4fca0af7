/* Quantized KV (q8_0, q4_0) beyond the kernels' case table
 * (test_attention_cases, test_backend_ops): the layout module's quantizer
 * against the independent reference (tests/common/ref_kvquant.c) on random
 * and edge rows, block bytes with the scales, and the byte movers (block
 * copy, read/write for swap) carrying quantized blocks unchanged on every
 * backend built in: attention over a copied or swapped-in block gives the
 * same bits as over the original. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/kv_layout.h"
#include "common/fp16.h"
#include "engine/engine_internal.h"
#include "kvrt.h"
#include "ref_kvquant.h"
#include "test_drivers.h"

static const kvrt_dtype QTYPES[] = {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float rnd(float lo, float hi)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return lo + (hi - lo) * (float)((rng_state >> 40) / 16777216.0);
}

/* The library's rule and the double reference give the same bytes on rows of
 * every magnitude, with ties, zeros, NaN and out-of-range values mixed in. */
static void test_quantizer_matches_reference(void **state)
{
    (void)state;
    enum { HD = 256 };
    float x[HD];
    uint8_t vals[HD], want_vals[HD], sc[HD / 32 * 2];
    uint16_t want_sc[HD / 32];
    for (int t = 0; t < 2; t++) {
        for (int iter = 0; iter < 4000; iter++) {
            float mag = powf(2.0f, rnd(-30.0f, 20.0f));
            for (int i = 0; i < HD; i++)
                x[i] = rnd(-mag, mag);
            if (iter % 3 == 0) /* exact ties of x / d: small integers times a power of two */
                for (int i = 0; i < HD; i++)
                    x[i] = ldexpf((float)((int)rnd(-255.0f, 255.0f)) * 0.5f, (int)rnd(-20.0f, 8.0f) * (i < 64));
            if (iter % 7 == 0)
                x[iter % HD] = iter % 2 ? NAN : INFINITY, x[(iter + 5) % HD] = -1e30f, x[(iter + 9) % HD] = 0.0f;
            if (iter % 11 == 0)
                for (int i = 32; i < 64; i++)
                    x[i] = 0.0f; /* a zero group: scale 0 */
            kvrt_kv_quantize_row(QTYPES[t], x, HD, vals, sc);
            ref_kv_quantize_row(QTYPES[t], x, HD, want_vals, want_sc);
            size_t vb = QTYPES[t] == KVRT_DTYPE_Q4_0 ? HD / 2 : HD;
            if (memcmp(vals, want_vals, vb) != 0)
                fail_msg("%s row %d: values differ from the reference", kvrt_dtype_name(QTYPES[t]), iter);
            for (int g = 0; g < HD / 32; g++)
                assert_int_equal(sc[2 * g] | (sc[2 * g + 1] << 8), want_sc[g]);
            float back[HD], want[HD];
            kvrt_kv_dequantize_row(QTYPES[t], vals, sc, HD, back);
            ref_kv_stored_row(QTYPES[t], x, HD, want);
            assert_memory_equal(back, want, sizeof(back));
        }
    }
}

/* Ties go to even, NaN to 0, values beyond F16 saturate; a group's largest
 * magnitude maps to +-127 (q8_0) / +-7 (q4_0). */
static void test_rounding_rule(void **state)
{
    (void)state;
    float x[32] = {127.0f, 2.5f, 3.5f, -2.5f, -0.5f, 0.5f, 1.5f, NAN};
    uint8_t v[32], sc[2];
    kvrt_kv_quantize_row(KVRT_DTYPE_Q8_0, x, 32, v, sc);
    assert_int_equal(sc[0] | (sc[1] << 8), 0x3c00); /* scale 1.0 */
    const int8_t want[] = {127, 2, 4, -2, 0, 0, 2, 0};
    for (int i = 0; i < 8; i++)
        assert_int_equal((int8_t)v[i], want[i]);
    float y[32] = {-7.0f, 2.5f, 3.5f, 6.5f, -1e30f};
    kvrt_kv_quantize_row(KVRT_DTYPE_Q4_0, y, 32, v, sc);
    /* -1e30 saturates to -65504: scale f16(65504 / 7) = 9360, everything else rounds to 0 or -7 */
    assert_int_equal(sc[0] | (sc[1] << 8), kvrt_f32_to_fp16(65504.0f * (1.0f / 7.0f)));
    assert_int_equal(v[4] & 15, 8 - 7);
    assert_int_equal(v[0] & 15, 8);
}

/* fp8 edge values, bit for bit (docs/architecture.md "FP8 KV"): ties to
 * the even mantissa at every scale, subnormals, saturation (infinities
 * included), signed zero, NaN to the canonical NaN. */
static void test_fp8_edges(void **state)
{
    (void)state;
    static const struct {
        kvrt_dtype t;
        float x;
        uint8_t want;
    } E[] = {
        {KVRT_DTYPE_FP8_E4M3, 0.0f, 0x00},        {KVRT_DTYPE_FP8_E4M3, -0.0f, 0x80},
        {KVRT_DTYPE_FP8_E4M3, 1.0f, 0x38},        {KVRT_DTYPE_FP8_E4M3, -1.0f, 0xb8},
        {KVRT_DTYPE_FP8_E4M3, 1.0625f, 0x38},     /* tie 1 / 1.125: even mantissa 0 */
        {KVRT_DTYPE_FP8_E4M3, 1.1875f, 0x3a},     /* tie 1.125 / 1.25: even mantissa 2 */
        {KVRT_DTYPE_FP8_E4M3, 1.0625001f, 0x39},  /* just above the tie */
        {KVRT_DTYPE_FP8_E4M3, 448.0f, 0x7e},      {KVRT_DTYPE_FP8_E4M3, 464.0f, 0x7e},
        {KVRT_DTYPE_FP8_E4M3, 1e30f, 0x7e},       {KVRT_DTYPE_FP8_E4M3, INFINITY, 0x7e},
        {KVRT_DTYPE_FP8_E4M3, -INFINITY, 0xfe},   {KVRT_DTYPE_FP8_E4M3, NAN, 0x7f},
        {KVRT_DTYPE_FP8_E4M3, -NAN, 0x7f},        {KVRT_DTYPE_FP8_E4M3, 0x1p-6f, 0x08}, /* smallest normal */
        {KVRT_DTYPE_FP8_E4M3, 0x1p-9f, 0x01},     /* smallest subnormal */
        {KVRT_DTYPE_FP8_E4M3, 0x1p-10f, 0x00},    /* tie 0 / 2^-9: even, zero */
        {KVRT_DTYPE_FP8_E4M3, 0x1.8p-10f, 0x01},  {KVRT_DTYPE_FP8_E4M3, 0x3p-10f, 0x02}, /* tie 1 / 2: 2 */
        {KVRT_DTYPE_FP8_E4M3, 0x7p-9f, 0x07},     /* largest subnormal */
        {KVRT_DTYPE_FP8_E4M3, 0xfp-10f, 0x08},    /* tie 7 / 8 subnormal steps: carries into the normals */
        {KVRT_DTYPE_FP8_E4M3, 0x1p-149f, 0x00},   {KVRT_DTYPE_FP8_E4M3, 15.5f, 0x58}, /* tie 15 / 16: 16 */
        {KVRT_DTYPE_FP8_E5M2, 1.0f, 0x3c},        {KVRT_DTYPE_FP8_E5M2, 1.125f, 0x3c}, /* tie: even */
        {KVRT_DTYPE_FP8_E5M2, 1.375f, 0x3e},      {KVRT_DTYPE_FP8_E5M2, 57344.0f, 0x7b},
        {KVRT_DTYPE_FP8_E5M2, 65504.0f, 0x7b},    {KVRT_DTYPE_FP8_E5M2, INFINITY, 0x7b},
        {KVRT_DTYPE_FP8_E5M2, -INFINITY, 0xfb},   {KVRT_DTYPE_FP8_E5M2, NAN, 0x7e},
        {KVRT_DTYPE_FP8_E5M2, 0x1p-16f, 0x01},    {KVRT_DTYPE_FP8_E5M2, 0x1p-17f, 0x00},
        {KVRT_DTYPE_FP8_E5M2, 0x1p-14f, 0x04},    {KVRT_DTYPE_FP8_E5M2, -0.0f, 0x80},
    };
    for (size_t i = 0; i < sizeof(E) / sizeof(E[0]); i++) {
        uint8_t got = kvrt_kv_fp8_encode(E[i].t, E[i].x);
        if (got != E[i].want || ref_fp8_encode(E[i].t, E[i].x) != E[i].want)
            fail_msg("%s %a: 0x%02x (reference 0x%02x), want 0x%02x", kvrt_dtype_name(E[i].t), (double)E[i].x, got,
                     ref_fp8_encode(E[i].t, E[i].x), E[i].want);
    }
}

/* Every code decodes to the format's value (NaN codes to NaN) and encodes
 * back to itself; every F16 value and random floats of every magnitude
 * encode as the reference does. */
static void test_fp8_matches_reference(void **state)
{
    (void)state;
    const kvrt_dtype T[] = {KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E5M2};
    for (int t = 0; t < 2; t++) {
        for (int c = 0; c < 256; c++) {
            float got = kvrt_kv_fp8_decode(T[t], (uint8_t)c);
            double want = ref_fp8_decode(T[t], (uint8_t)c);
            if (isnan(want)) {
                assert_true(isnan(got));
                continue;
            }
            assert_true((double)got == want);
            if (T[t] == KVRT_DTYPE_FP8_E5M2 && isinf(want))
                continue; /* E5M2's infinity codes are read, never written (saturation) */
            assert_int_equal(kvrt_kv_fp8_encode(T[t], got), c);
        }
        for (uint32_t h = 0; h < 65536; h++) {
            float x = kvrt_fp16_to_f32((uint16_t)h);
            assert_int_equal(kvrt_kv_fp8_encode(T[t], x), ref_fp8_encode(T[t], x));
        }
        for (int i = 0; i < 20000; i++) {
            float x = ldexpf(rnd(-1.0f, 1.0f), (int)rnd(-30.0f, 20.0f));
            assert_int_equal(kvrt_kv_fp8_encode(T[t], x), ref_fp8_encode(T[t], x));
        }
        /* a row through the layout module, and its F32 values */
        float row[40], back[40], want[40];
        uint8_t v[40];
        for (int i = 0; i < 40; i++)
            row[i] = rnd(-600.0f, 600.0f) * (i % 3 ? 1e-3f : 1.0f);
        kvrt_kv_quantize_row(T[t], row, 40, v, NULL);
        kvrt_kv_dequantize_row(T[t], v, NULL, 40, back);
        ref_kv_stored_row(T[t], row, 40, want);
        assert_memory_equal(back, want, sizeof(back));
    }
}

static void test_block_bytes(void **state)
{
    (void)state;
    /* 2 heads x 16 positions x 128 values: 4096 bytes of q8_0 + 2 x 16 x 4 scales of 2 bytes */
    assert_int_equal(kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(KVRT_DTYPE_Q8_0), 2, 16, 128), 4096 + 256);
    assert_int_equal(kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(KVRT_DTYPE_Q4_0), 2, 16, 128), 2048 + 256);
    assert_int_equal(kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(KVRT_DTYPE_Q4_0), 2, 16, 80), 0);
    /* fp8: one byte per value, no scale (fixed at 1), any head_dim */
    assert_int_equal(kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(KVRT_DTYPE_FP8_E4M3), 2, 16, 80), 2 * 16 * 80);
    assert_int_equal(kvrt_kv_dtype_block_bytes(kvrt_kv_dtype(KVRT_DTYPE_FP8_E5M2), 1, 8, 8), 64);
    kvrt_kv_pool_desc d = {1, 2, 96, 16, 4, .dtype = KVRT_DTYPE_Q4_0};
    kvrt_error err;
    assert_int_equal(kvrt_kv_check_pool_desc(&err, &d), KVRT_OK);
    d.head_dim = 100;
    assert_int_equal(kvrt_kv_check_pool_desc(&err, &d), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "head_dim 100"));
}

/* Block copy and read/write (swap out to the host, back in elsewhere) move
 * quantized blocks unchanged: bytes and attention over them. */
static void blocks_move_unchanged(kvrt_backend_kind kind)
{
    enum { L = 2, KV = 2, HD = 64, BS = 16, NB = 8, H = 4, N = 40 };
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = kind;
    kvrt_context *ctx;
    kvrt_error err;
    if (kvrt_context_create(&cp, &ctx, &err) != KVRT_OK) /* CI has lavapipe and PoCL: built in means it starts */
        fail_msg("%s: %s", kvrt_backend_name(kind), err.message);
    /* one type, then K and V apart: each pool its own block size, on every backend */
    static const kvrt_dtype pairs_kv[][2] = {
        {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q8_0},     {KVRT_DTYPE_Q4_0, KVRT_DTYPE_Q4_0},
        {KVRT_DTYPE_Q8_0, KVRT_DTYPE_F16},      {KVRT_DTYPE_F16, KVRT_DTYPE_Q4_0},
        {KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_Q4_0}, {KVRT_DTYPE_FP8_E5M2, KVRT_DTYPE_FP8_E5M2},
    };
    for (int t = 0; t < (int)(sizeof(pairs_kv) / sizeof(pairs_kv[0])); t++) {
        kvrt_kv_cache_params kp = {L, KV, HD, BS, NB, .dtype = pairs_kv[t][0],
                                   .v_dtype_set = pairs_kv[t][0] != pairs_kv[t][1], .v_dtype = pairs_kv[t][1]};
        kvrt_kv_cache *c;
        assert_int_equal(kvrt_kv_cache_create(ctx, &kp, &c, NULL), KVRT_OK);
        size_t bbw[2];
        for (int w = 0; w < 2; w++) {
            kvrt_dtype dt = pairs_kv[t][w];
            bool scaled = dt == KVRT_DTYPE_Q8_0 || dt == KVRT_DTYPE_Q4_0; /* fp8: no scale */
            size_t bits = dt == KVRT_DTYPE_F16 ? 16 : dt == KVRT_DTYPE_Q4_0 ? 4 : 8;
            bbw[w] = (size_t)KV * BS * HD * bits / 8 + (scaled ? (size_t)KV * BS * (HD / 32) * 2 : 0);
            assert_int_equal(kvrt_kv_cache_pool_block_bytes(c, w), bbw[w]);
        }
        assert_int_equal(kvrt_kv_cache_block_bytes(c), bbw[0]);
        assert_int_equal(kvrt_kv_cache_pool_block_bytes(c, 2), 0);
        size_t bb = KVRT_MAX(bbw[0], bbw[1]);
        static float k[N][KV][HD], v[N][KV][HD], q[H][HD], out[3][H][HD];
        int32_t slots[N];
        for (int i = 0; i < N; i++) {
            slots[i] = i; /* blocks 0, 1 and part of 2 */
            for (int h = 0; h < KV; h++)
                for (int e = 0; e < HD; e++)
                    k[i][h][e] = rnd(-2, 2), v[i][h][e] = rnd(-2, 2);
        }
        for (int h = 0; h < H; h++)
            for (int e = 0; e < HD; e++)
                q[h][e] = rnd(-1, 1);
        for (int l = 0; l < L; l++)
            assert_int_equal(kvrt_kv_cache_write(c, l, &k[0][0][0], &v[0][0][0], slots, N), KVRT_OK);
        /* copy blocks 0..2 to 5..7; swap block 1 out and into block 4 */
        const int32_t pairs[3][2] = {{0, 5}, {1, 6}, {2, 7}};
        assert_int_equal(kvrt_kv_cache_copy_blocks(c, pairs, 3), KVRT_OK);
        uint8_t *a = malloc(bb), *b = malloc(bb);
        assert_non_null(a), assert_non_null(b);
        for (int l = 0; l < L; l++)
            for (int w = 0; w < 2; w++) {
                /* a buffer one byte short of this pool's block is refused */
                assert_int_equal(kvrt_kv_cache_read_block(c, l, w, 1, a, bbw[w] - 1), KVRT_ERR_INVALID_ARGUMENT);
                assert_int_equal(kvrt_kv_cache_read_block(c, l, w, 1, a, bbw[w]), KVRT_OK);
                assert_int_equal(kvrt_kv_cache_write_block(c, l, w, 4, a, bbw[w]), KVRT_OK);
                for (int p = 0; p < 3; p++) {
                    assert_int_equal(kvrt_kv_cache_read_block(c, l, w, pairs[p][0], a, bb), KVRT_OK);
                    assert_int_equal(kvrt_kv_cache_read_block(c, l, w, pairs[p][1], b, bb), KVRT_OK);
                    assert_memory_equal(a, b, bbw[w]);
                }
            }
        free(a), free(b);
        const int32_t tables[3][3] = {{0, 1, 2}, {5, 6, 7}, {0, 4, 2}};
        int32_t len = N;
        kvrt_attention_params p = {H, 3, 0.0f, 0, 0};
        for (int s = 0; s < 3; s++)
            assert_int_equal(kvrt_attention_decode(c, 1, &p, 1, &q[0][0], &len, tables[s], &out[s][0][0]), KVRT_OK);
        assert_memory_equal(out[0], out[1], sizeof(out[0]));
        assert_memory_equal(out[0], out[2], sizeof(out[0]));
        kvrt_kv_cache_destroy(c);
    }
    kvrt_context_destroy(ctx);
}

static void test_blocks_move_unchanged(void **state)
{
    (void)state;
    kvrt_test_pin_gpu_drivers();
    blocks_move_unchanged(KVRT_BACKEND_CPU);
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    blocks_move_unchanged(KVRT_BACKEND_VULKAN);
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    blocks_move_unchanged(KVRT_BACKEND_OPENCL);
#endif
}

/* The prefix cache's key has the KV type in it. */
static void test_prefix_key_has_kv_type(void **state)
{
    (void)state;
    const kvrt_dtype t[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0};
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < i; j++)
            assert_true(kvrt_engine_prefix_extra_key(t[i], t[i]) != kvrt_engine_prefix_extra_key(t[j], t[j]));
    /* both halves are in it: every (K, V) pair has its own key */
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < i; j++)
            assert_true(kvrt_engine_prefix_extra_key(t[i / 4], t[i % 4]) !=
                        kvrt_engine_prefix_extra_key(t[j / 4], t[j % 4]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantizer_matches_reference),
        cmocka_unit_test(test_rounding_rule),
        cmocka_unit_test(test_fp8_edges),
        cmocka_unit_test(test_fp8_matches_reference),
        cmocka_unit_test(test_block_bytes),
        cmocka_unit_test(test_blocks_move_unchanged),
        cmocka_unit_test(test_prefix_key_has_kv_type),
    };
    return cmocka_run_group_tests_name("quantized KV", tests, NULL, NULL);
}
