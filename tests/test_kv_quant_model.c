/* Quantized KV on a whole model: teacher-forced logits of each KV type (and
 * K/V pair) against F16 KV (DESIGN.md's reference for storage types), on a
 * synthetic GQA model with head_dim 64, and fp8 on stories260K (head_dim 8:
 * q8_0 / q4_0 need groups of 32 along head_dim and are refused there, naming
 * it; fp8 has no group). Reported per type: NMSE of the logits, max abs,
 * mean KL(F16 || type) of the next-token distribution, top-1 agreement;
 * bounds are the measurements of this test (the same numbers as
 * `kvrt-bench kv`, README) with margin; the numbers are printed. */
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

#include "kvrt.h"
#include "model/synth.h"
#include "test_models.h"

#define N_POS 200

static kvrt_context *CTX;
static kvrt_model *MODEL;
static int32_t IDS[N_POS];
static int32_t N_VOCAB;
static float *REF; /* [N_POS][N_VOCAB], F16 KV */
static char PATH[256];

/* K stored as k, V as v (the same type unless they differ). */
static void teacher_forced_pair(kvrt_model *model, kvrt_dtype k, kvrt_dtype v, float *logits)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = 256;
    sp.n_batch = 64; /* prefill chunks of 64 on a cached prefix: both attention kernels run */
    sp.kv_type = k;
    sp.kv_type_v_set = v != k;
    sp.kv_type_v = v;
    kvrt_session *s = NULL;
    kvrt_error err;
    if (kvrt_session_create(model, &sp, &s, &err) != KVRT_OK)
        fail_msg("session (K %s, V %s): %s", kvrt_dtype_name(k), kvrt_dtype_name(v), err.message);
    assert_int_equal(kvrt_session_eval(s, IDS, N_POS, NULL, logits), KVRT_OK);
    kvrt_session_destroy(s);
}

static void teacher_forced(kvrt_dtype kv, float *logits)
{
    teacher_forced_pair(MODEL, kv, kv, logits);
}

static int setup(void **state)
{
    (void)state;
    kvrt_synth_params p;
    if (!kvrt_synth_preset("tiny-gqa", &p)) /* 512 wide, 8 heads over 2 KV heads: head_dim 64 */
        return -1;
    p.hp.n_layer = 4;
    p.stddev = 0.08f; /* larger than 0.02 so attention is not flat and the logits spread */
    p.seed = 7;
    snprintf(PATH, sizeof(PATH), "/tmp/kvrt-test-kvq-%d.gguf", (int)getpid());
    kvrt_error err;
    if (kvrt_synth_write_file(&p, NULL, PATH, NULL, &err) != KVRT_OK)
        return -1;
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = KVRT_BACKEND_CPU;
    cp.n_threads = 2;
    if (kvrt_context_create(&cp, &CTX, NULL) != KVRT_OK)
        return -1;
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = PATH;
    if (kvrt_model_load(CTX, &mp, &MODEL, &err) != KVRT_OK)
        return -1;
    kvrt_model_info info;
    kvrt_model_get_info(MODEL, &info);
    N_VOCAB = info.n_vocab;
    uint64_t r = 12345;
    for (int i = 0; i < N_POS; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        IDS[i] = 3 + (int32_t)((r >> 33) % (uint64_t)(N_VOCAB - 3));
    }
    REF = malloc((size_t)N_POS * (size_t)N_VOCAB * sizeof(float));
    return REF ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    free(REF);
    kvrt_model_destroy(MODEL);
    kvrt_context_destroy(CTX);
    remove(PATH);
    return 0;
}

typedef struct kvq_stats {
    double nmse, max_abs, kl, agree;
} kvq_stats;

static kvq_stats compare(const float *a /* reference */, const float *b)
{
    kvq_stats st = {0, 0, 0, 0};
    double e2 = 0, r2 = 0;
    for (int p = 0; p < N_POS; p++) {
        const float *x = a + (size_t)p * (size_t)N_VOCAB, *y = b + (size_t)p * (size_t)N_VOCAB;
        double mx = -INFINITY, my = -INFINITY, zx = 0, zy = 0, kl = 0;
        int bx = 0, by = 0;
        for (int v = 0; v < N_VOCAB; v++) {
            double d = fabs((double)x[v] - y[v]);
            st.max_abs = isfinite(d) && d <= st.max_abs ? st.max_abs : d;
            e2 += d * d, r2 += (double)x[v] * x[v];
            bx = x[v] > x[bx] ? v : bx, by = y[v] > y[by] ? v : by;
            mx = fmax(mx, x[v]), my = fmax(my, y[v]);
        }
        for (int v = 0; v < N_VOCAB; v++)
            zx += exp(x[v] - mx), zy += exp(y[v] - my);
        for (int v = 0; v < N_VOCAB; v++) { /* sum p log(p / q) in log space */
            double lp = x[v] - mx - log(zx), lq = y[v] - my - log(zy);
            kl += exp(lp) * (lp - lq);
        }
        st.kl += kl / N_POS;
        st.agree += (bx == by) / (double)N_POS;
    }
    st.nmse = e2 / r2;
    return st;
}

/* K as k and V as v against the reference logits ref of `model`, held to
 * bounds measured on that model with margin; returns the measures. */
static kvq_stats check_pair_on(kvrt_model *model, const float *ref, kvrt_dtype k, kvrt_dtype v, double nmse_bound,
                               double max_bound, double kl_bound, double agree_min)
{
    float *logits = malloc((size_t)N_POS * (size_t)N_VOCAB * sizeof(float));
    assert_non_null(logits);
    teacher_forced_pair(model, k, v, logits);
    kvq_stats st = compare(ref, logits);
    print_message("K %s / V %s vs f16 KV (%d positions): nmse %.3g (bound %g), max abs %.3g (bound %g), "
                  "KL %.3g (bound %g), top-1 %.3f (min %g)\n", kvrt_dtype_name(k), kvrt_dtype_name(v), N_POS,
                  st.nmse, nmse_bound, st.max_abs, max_bound, st.kl, kl_bound, st.agree, agree_min);
    assert_true(st.nmse <= nmse_bound);
    assert_true(st.max_abs <= max_bound);
    assert_true(st.kl <= kl_bound);
    assert_true(st.agree >= agree_min);
    free(logits);
    return st;
}

/* One KV type against F16 KV on the synthetic model (margin: x3 to x10 room
 * on the error measures, a few positions on top-1). */
static kvq_stats check_type(kvrt_dtype kv, double nmse_bound, double max_bound, double kl_bound, double agree_min)
{
    return check_pair_on(MODEL, REF, kv, kv, nmse_bound, max_bound, kl_bound, agree_min);
}

static void test_kv_types_vs_f16(void **state)
{
    (void)state;
    teacher_forced(KVRT_DTYPE_F16, REF);
    check_type(KVRT_DTYPE_F32, 1e-5, 0.05, 1e-5, 0.98);
    /* measured: f32 2.1e-6 / 0.014 / 3.3e-6 / 1.000; q8_0 1.3e-3 / 0.38 / 2.0e-3 / 0.975;
     * q4_0 0.32 / 4.8 / 0.50 / 0.355. A random model at stddev 0.08 amplifies
     * KV error (F16 rounding alone gives NMSE 2e-6 here); q4_0's error is
     * ~18x q8_0's in amplitude (scale amax/7 vs amax/127), ~300x in NMSE, as
     * measured, which is the check that the two types run the same code. */
    kvq_stats q8 = check_type(KVRT_DTYPE_Q8_0, 4e-3, 1.0, 6e-3, 0.93);
    check_type(KVRT_DTYPE_Q4_0, 0.8, 10.0, 1.2, 0.25);
    /* fp8, scale 1 (measured 3.4e-2 / 1.79 / 5.2e-2 / 0.745): E4M3's 3
     * mantissa bits are a relative step of 2^-4 against q8_0's ~amax/254, so
     * ~25x q8_0's NMSE here; fp8_e5m2 (1.2e-1 / 3.29 / 0.19 / 0.510) has one
     * mantissa bit less, ~4x E4M3's NMSE. Bounds x3 on NMSE and KL, ~x2 on
     * max abs, top-1 less ~0.1; the order between them is asserted too. */
    kvq_stats e4 = check_type(KVRT_DTYPE_FP8_E4M3, 0.1, 4.0, 0.15, 0.65);
    kvq_stats e5 = check_type(KVRT_DTYPE_FP8_E5M2, 0.35, 7.0, 0.6, 0.40);
    assert_true(q8.nmse < e4.nmse && e4.nmse < e5.nmse);
}

/* K and V apart: pairs measured at (NMSE / max abs / KL / top-1) K q8_0 /
 * V q4_0 9.9e-2 / 3.91 / 0.157 / 0.600; K f16 / V q4_0 9.8e-2 / 3.83 / 0.156
 * / 0.590; K f16 / V fp8 8.0e-3 / 1.01 / 1.3e-2 / 0.870. Bounds as above. On
 * this random model V's rounding dominates (q8_0 keys add nothing over f16
 * keys); keeping K exact makes fp8 values ~4x better than fp8 for both. */
static void test_kv_pairs_vs_f16(void **state)
{
    (void)state;
    teacher_forced(KVRT_DTYPE_F16, REF);
    check_pair_on(MODEL, REF, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0, 0.3, 8.0, 0.5, 0.48);
    kvq_stats f16_q4 = check_pair_on(MODEL, REF, KVRT_DTYPE_F16, KVRT_DTYPE_Q4_0, 0.3, 8.0, 0.5, 0.48);
    kvq_stats f16_fp8 = check_pair_on(MODEL, REF, KVRT_DTYPE_F16, KVRT_DTYPE_FP8_E4M3, 0.025, 2.5, 0.04, 0.80);
    assert_true(f16_fp8.nmse < f16_q4.nmse);
}

/* stories260K (head_dim 8): fp8 runs, the 32-group types are refused naming
 * head_dim. Measured: fp8 7.9e-4 / 2.98 / 2.6e-2 / 0.870; fp8_e5m2 2.5e-3 /
 * 4.67 / 7.1e-2 / 0.780; K f16 / V fp8 2.5e-5 / 0.30 / 6.9e-4 / 0.975 (this
 * trained model's error comes from its keys). Bounds x3-4 on NMSE and KL,
 * ~x2 on max abs, top-1 less ~0.08. */
static void test_stories260k_fp8(void **state)
{
    (void)state;
    char path[1024];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    mp.max_context = 256; /* the file says 128; it was trained at 512 */
    kvrt_model *m = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_model_load(CTX, &mp, &m, &err), KVRT_OK);
    kvrt_model_info info;
    kvrt_model_get_info(m, &info);
    assert_int_equal(info.head_dim, 8);
    int32_t saved_vocab = N_VOCAB;
    N_VOCAB = info.n_vocab; /* compare() reads it; the ids below fit either vocabulary */
    int32_t ids_saved[N_POS];
    memcpy(ids_saved, IDS, sizeof(IDS));
    uint64_t r = 12345; /* the ids kvrt-bench kv uses */
    for (int i = 0; i < N_POS; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        IDS[i] = 3 + (int32_t)((r >> 33) % (uint64_t)(N_VOCAB - 3));
    }
    float *ref = malloc((size_t)N_POS * (size_t)N_VOCAB * sizeof(float));
    assert_non_null(ref);
    teacher_forced_pair(m, KVRT_DTYPE_F16, KVRT_DTYPE_F16, ref);
    check_pair_on(m, ref, KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E4M3, 3e-3, 6.0, 0.08, 0.78);
    check_pair_on(m, ref, KVRT_DTYPE_FP8_E5M2, KVRT_DTYPE_FP8_E5M2, 8e-3, 9.0, 0.2, 0.68);
    check_pair_on(m, ref, KVRT_DTYPE_F16, KVRT_DTYPE_FP8_E4M3, 1e-4, 1.0, 3e-3, 0.94);
    kvrt_session_params sp = kvrt_session_default_params();
    sp.kv_type = KVRT_DTYPE_Q8_0;
    kvrt_session *s = NULL;
    assert_int_equal(kvrt_session_create(m, &sp, &s, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(s);
    assert_non_null(strstr(err.message, "head_dim 8 is not a multiple of 32"));
    free(ref);
    memcpy(IDS, ids_saved, sizeof(IDS));
    N_VOCAB = saved_vocab;
    kvrt_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_types_vs_f16),
        cmocka_unit_test(test_kv_pairs_vs_f16),
        cmocka_unit_test(test_stories260k_fp8),
    };
    return cmocka_run_group_tests_name("quantized KV on a model", tests, setup, teardown);
}
