/* K and V in different storage types on the GPU backends: their kv_write,
 * paged decode and tiled prefill take the K type and the V type separately
 * (Vulkan push constants k_type / v_type, OpenCL program variants
 * -DKVRT_KV_K / -DKVRT_KV_V), though a pool has one dtype today. The test
 * gives a pool's K and V their own types through the backends' test hooks
 * (each type's blocks fit the f32 pool's), writes the same host K/V, and
 * holds decode and prefill to the DESIGN.md kernel bound against the double
 * reference fed the values each type stores. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ops.h"
#include "common/fp16.h"
#include "ref_attention.h"
#include "ref_kvquant.h"
#include "test_buffers.h"
#include "test_drivers.h"

#if defined(KVRT_HAVE_VULKAN_BACKEND)
#include "backend/vulkan/vk_backend.h"
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
#include "backend/opencl/cl_internal.h"
#endif

enum { NKV = 2, H = 8, D = 64, BS = 16, NB = 12, NSEQ = 2, MAXB = 6 };

static const int32_t LENS[NSEQ] = {70, 33};  /* context lengths */
static const int32_t NEW[NSEQ] = {21, 33};   /* prefill: the last NEW[s] tokens are the chunk */
static const int32_t TABLES[NSEQ][MAXB] = {{7, 2, 9, 0, 11, -1}, {4, 10, 5, -1, -1, -1}};

typedef kvrt_status (*set_types_fn)(kvrt_backend *be, kvrt_kv_pool *pool, kvrt_dtype k, kvrt_dtype v);

static uint64_t rng = 0x243f6a8885a308d3ull;
static float rnd(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / 8388608.0 - 1.0); /* [-1, 1) */
}

/* The value a pool of type t stores for row x (head_dim D). */
static void stored_row(kvrt_dtype t, const float *x, float *out)
{
    if (ref_kv_quantized(t)) {
        ref_kv_stored_row(t, x, D, out);
        return;
    }
    for (int i = 0; i < D; i++)
        out[i] = t == KVRT_DTYPE_F16 ? kvrt_fp16_to_f32(kvrt_f32_to_fp16_kv(x[i])) : x[i];
}

static void check(const char *what, const float *got, const double *want, size_t n)
{
    double e2 = 0, r2 = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        mx = d > mx || isnan(d) ? d : mx;
        e2 += d * d, r2 += want[i] * want[i];
    }
    double nmse = e2 / (r2 > 0 ? r2 : 1);
    if (!(mx <= 1e-4 && nmse <= 1e-6))
        fail_msg("%s: max abs %.3g, nmse %.3g (bounds 1e-4, 1e-6)", what, mx, nmse);
}

/* One (K type, V type) pair on one backend: write, decode, prefill. */
static void run_pair(kvrt_backend *be, const char *name, set_types_fn set_types, kvrt_dtype kt, kvrt_dtype vt)
{
    char what[128];
    kvrt_kv_pool_desc pd = {1, NKV, D, BS, NB, .dtype = KVRT_DTYPE_F32};
    kvrt_kv_pool *pool;
    assert_int_equal(kvrt_op_kv_pool_create(be, &pd, &pool), KVRT_OK);
    if (set_types(be, pool, kt, vt) != KVRT_OK)
        fail_msg("%s: %s", name, be->err.message);
    /* every position of both sequences: K/V rows [token][NKV][D], slots from the tables */
    int32_t n_tok = LENS[0] + LENS[1];
    float *k = malloc((size_t)n_tok * NKV * D * sizeof(float)), *v = malloc((size_t)n_tok * NKV * D * sizeof(float));
    float *ks = malloc((size_t)n_tok * NKV * D * sizeof(float)), *vs = malloc((size_t)n_tok * NKV * D * sizeof(float));
    int32_t slots[70 + 33];
    assert_non_null(k), assert_non_null(v), assert_non_null(ks), assert_non_null(vs);
    for (int32_t s = 0, t = 0; s < NSEQ; s++)
        for (int32_t p = 0; p < LENS[s]; p++, t++) {
            slots[t] = TABLES[s][p / BS] * BS + p % BS;
            for (int32_t e = 0; e < NKV * D; e++)
                k[(size_t)t * NKV * D + e] = 2.0f * rnd(), v[(size_t)t * NKV * D + e] = 2.0f * rnd();
            for (int32_t h = 0; h < NKV; h++) {
                size_t at = ((size_t)t * NKV + h) * D;
                stored_row(kt, k + at, ks + at);
                stored_row(vt, v + at, vs + at);
            }
        }
    kvrt_buffer *kb = kvrt_test_up(be, k, (size_t)n_tok * NKV * D * 4), *vb = kvrt_test_up(be, v, (size_t)n_tok * NKV * D * 4);
    kvrt_buffer *sb = kvrt_test_up(be, slots, sizeof(slots));
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    kvrt_status st = kvrt_op_kv_write(be, pool, 0, (kvrt_view){kb, 0}, NKV * D, (kvrt_view){vb, 0}, NKV * D,
                                      (kvrt_view){sb, 0}, n_tok);
    assert_int_equal(kvrt_op_end_step(be, st), KVRT_OK);

    /* queries: the prefill chunks' rows; decode takes each sequence's last one */
    int32_t qsl[NSEQ + 1] = {0, NEW[0], NEW[0] + NEW[1]};
    int32_t n_q = qsl[NSEQ];
    float *q = malloc((size_t)n_q * H * D * sizeof(float)), *qd = malloc((size_t)NSEQ * H * D * sizeof(float));
    double *want = malloc((size_t)n_q * H * D * sizeof(double)), *want_d = malloc((size_t)NSEQ * H * D * sizeof(double));
    assert_non_null(q), assert_non_null(qd), assert_non_null(want), assert_non_null(want_d);
    for (size_t i = 0; i < (size_t)n_q * H * D; i++)
        q[i] = rnd();
    ref_attn_shape sh = {H, NKV, D, 0, 0, 1.0 / sqrt((double)D)};
    for (int32_t s = 0, t0 = 0; s < NSEQ; t0 += LENS[s], s++) {
        const float *qs = q + (size_t)qsl[s] * H * D;
        ref_attention_chunk(&sh, qs, LENS[s], NEW[s], ks + (size_t)t0 * NKV * D, vs + (size_t)t0 * NKV * D,
                            want + (size_t)qsl[s] * H * D);
        memcpy(qd + (size_t)s * H * D, qs + (size_t)(NEW[s] - 1) * H * D, (size_t)H * D * sizeof(float));
        ref_attention_chunk(&sh, qd + (size_t)s * H * D, LENS[s], 1, ks + (size_t)t0 * NKV * D,
                            vs + (size_t)t0 * NKV * D, want_d + (size_t)s * H * D);
    }
    kvrt_buffer *qb = kvrt_test_up(be, q, (size_t)n_q * H * D * 4), *qdb = kvrt_test_up(be, qd, (size_t)NSEQ * H * D * 4);
    kvrt_buffer *lb = kvrt_test_up(be, LENS, sizeof(LENS)), *tb = kvrt_test_up(be, TABLES, sizeof(TABLES));
    kvrt_buffer *qlb = kvrt_test_up(be, qsl, sizeof(qsl));
    kvrt_buffer *ob = kvrt_test_out_buf(be, (size_t)n_q * H * D), *odb = kvrt_test_out_buf(be, (size_t)NSEQ * H * D);
    kvrt_attn_desc ad = {NSEQ, H, MAXB, (float)sh.scale, 0, 0, H * D, H * D, NSEQ, 70};
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    st = kvrt_op_attn_decode(be, pool, 0, &ad, (kvrt_view){qdb, 0}, (kvrt_view){odb, 0}, (kvrt_view){lb, 0},
                             (kvrt_view){tb, 0});
    if (st == KVRT_OK) {
        ad.num_tokens = n_q;
        st = kvrt_op_attn_prefill(be, pool, 0, &ad, (kvrt_view){qb, 0}, (kvrt_view){ob, 0}, (kvrt_view){qlb, 0},
                                  (kvrt_view){lb, 0}, (kvrt_view){tb, 0});
    }
    if (kvrt_op_end_step(be, st) != KVRT_OK)
        fail_msg("%s: %s", name, be->err.message);
    float *got_d = kvrt_test_down(be, odb, (size_t)NSEQ * H * D), *got = kvrt_test_down(be, ob, (size_t)n_q * H * D);
    snprintf(what, sizeof(what), "%s decode, %s K, %s V", name, kvrt_dtype_name(kt), kvrt_dtype_name(vt));
    check(what, got_d, want_d, (size_t)NSEQ * H * D);
    snprintf(what, sizeof(what), "%s prefill, %s K, %s V", name, kvrt_dtype_name(kt), kvrt_dtype_name(vt));
    check(what, got, want, (size_t)n_q * H * D);
    kvrt_buffer *bufs[] = {kb, vb, sb, qb, qdb, lb, tb, qlb, ob, odb};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        kvrt_op_buffer_destroy(be, bufs[i]);
    kvrt_op_kv_pool_destroy(be, pool);
    free(k), free(v), free(ks), free(vs), free(q), free(qd), free(want), free(want_d), free(got), free(got_d);
}

/* Keys are more sensitive than values: the pairs a user would pick, and their mirror images. */
static const kvrt_dtype PAIRS[][2] = {
    {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0}, {KVRT_DTYPE_Q4_0, KVRT_DTYPE_Q8_0}, {KVRT_DTYPE_F16, KVRT_DTYPE_Q8_0},
    {KVRT_DTYPE_Q8_0, KVRT_DTYPE_F16},  {KVRT_DTYPE_F32, KVRT_DTYPE_Q4_0},
};

static void run_pairs(kvrt_backend *be, const char *name, set_types_fn set_types)
{
    for (size_t i = 0; i < sizeof(PAIRS) / sizeof(PAIRS[0]); i++)
        run_pair(be, name, set_types, PAIRS[i][0], PAIRS[i][1]);
    /* a type whose blocks do not fit the pool is refused */
    kvrt_kv_pool_desc pd = {1, NKV, D, BS, NB, .dtype = KVRT_DTYPE_Q8_0};
    kvrt_kv_pool *pool;
    assert_int_equal(kvrt_op_kv_pool_create(be, &pd, &pool), KVRT_OK);
    assert_int_equal(set_types(be, pool, KVRT_DTYPE_Q8_0, KVRT_DTYPE_F16), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_op_kv_pool_destroy(be, pool);
}

#if defined(KVRT_HAVE_VULKAN_BACKEND)
/* Every feature, then none (the word-only path runs either way). */
static void test_vulkan(void **state)
{
    (void)state;
    const uint32_t masks[] = {0, KVRT_TEST_ALL_FEATURES};
    for (int m = 0; m < 2; m++) {
        kvrt_backend *be = kvrt_test_vk_open(masks[m], 0, 0);
        assert_non_null(be); /* CI has lavapipe */
        run_pairs(be, m ? "vulkan/none" : "vulkan/all", kvrt_vk_test_kv_types);
        assert_int_equal(kvrt_test_vk_close(be), 0); /* no validation message */
    }
}
#endif

#if defined(KVRT_HAVE_OPENCL_BACKEND)
static void test_opencl(void **state)
{
    (void)state;
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_OPENCL;
    kvrt_context *ctx;
    kvrt_error err;
    if (kvrt_context_create(&p, &ctx, &err) != KVRT_OK) /* CI has PoCL */
        fail_msg("opencl: %s", err.message);
    run_pairs(ctx->be, "opencl", kvrt_cl_test_kv_types);
    kvrt_context_destroy(ctx);
}
#endif

int main(void)
{
#if !defined(KVRT_HAVE_VULKAN_BACKEND) && !defined(KVRT_HAVE_OPENCL_BACKEND)
    return kvrt_test_vulkan_not_built_main(); /* no GPU backend built: Vulkan reports itself unavailable */
#endif
    kvrt_test_pin_gpu_drivers();
    /* OpenCL first: with PoCL started after the Vulkan instances were
     * destroyed, LeakSanitizer's exit scan crashed on a dynamic TLS block of
     * an unloaded module (ASan build, reproducible); this order scans clean. */
    const struct CMUnitTest tests[] = {
#if defined(KVRT_HAVE_OPENCL_BACKEND)
        cmocka_unit_test(test_opencl),
#endif
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        cmocka_unit_test(test_vulkan),
#endif
    };
    return cmocka_run_group_tests_name("separate K and V types on the GPU backends", tests, NULL, NULL);
}
