/* A model larger than one OpenCL allocation, made small: a synthetic llama
 * (runtime/model/synth.h) is loaded on OpenCL with the segment size lowered
 * by the test hook, so the token embedding, the LM head and every matrix span
 * many segments whose boundaries cut rows, and each layer's K and V pools
 * span 8 segments. A prompt (logits of every token: the token-tiled matmul)
 * and a few decode steps (GEMV) must give the CPU backend's logits:
 * max abs 1e-5 and NMSE 1e-9 with logits of order 0.4, for F32, F16, Q8_0
 * and Q4_0 weights alike: both backends sum in F32 over the same stored
 * values, only the order of the sums differs (measured on PoCL: ~1e-6 and
 * ~2e-13). */
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

#include "backend/opencl/cl_internal.h"
#include "kvrt.h"
#include "model/model_api_internal.h"
#include "model/synth.h"
#include "test_opencl_util.h"

#define N_PROMPT 21
#define N_DECODE 4
#define N_CTX 96
#define BLOCK 16
#define N_BLOCKS 24 /* more blocks than the context needs: 3 per segment, 8 segments */
#define SEG_BYTES 6144 /* 3 F32 KV blocks (2 KV heads x 16 x 16 x 4 bytes each) */

static kvrt_synth_params synth_params(kvrt_dtype type)
{
    kvrt_synth_params p = {0};
    p.hp.n_vocab = 1024; /* F32 table and head: 256 KiB each, ~43 segments */
    p.hp.n_embd = 64;
    p.hp.n_layer = 2;
    p.hp.n_ff = 128;
    p.hp.n_head = 4;
    p.hp.n_head_kv = 2;
    p.hp.n_ctx_train = N_CTX;
    p.hp.head_dim = 16;
    p.hp.rope_dim = 16;
    p.hp.rope_freq_base = 10000.0f;
    p.hp.rms_eps = 1e-5f;
    p.type = type;
    p.seed = 4242;
    p.tied_output = false;
    p.stddev = 0.05f;
    return p;
}

typedef struct run {
    kvrt_context *ctx;
    kvrt_model *model;
    kvrt_session *session;
} run;

static void run_open(run *r, kvrt_backend_kind kind, const char *path, size_t seg_bytes)
{
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = kind;
    cp.n_threads = 1;
    kvrt_error err;
    if (kvrt_context_create(&cp, &r->ctx, &err) != KVRT_OK)
        fail_msg("%s context: %s", kvrt_backend_name(kind), err.message);
    kvrt_backend *be = ((struct kvrt_context *)r->ctx)->be;
    if (seg_bytes)
        kvrt_cl_test_set_segment_bytes(be, seg_bytes); /* weights, rope table and KV pool */
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    mp.max_context = N_CTX;
    if (kvrt_model_load(r->ctx, &mp, &r->model, &err) != KVRT_OK)
        fail_msg("%s model: %s", kvrt_backend_name(kind), err.message);
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = N_CTX;
    sp.block_size = BLOCK;
    sp.num_blocks = N_BLOCKS;
    sp.n_batch = 64;
    if (kvrt_session_create(r->model, &sp, &r->session, &err) != KVRT_OK)
        fail_msg("%s session: %s", kvrt_backend_name(kind), err.message);
    if (seg_bytes) {
        kvrt_cl_test_set_segment_bytes(be, SIZE_MAX); /* activations in one segment each */
        const kvrt_kv_pool *pool = kvrt_session_kv_pool(r->session);
        assert_int_equal(pool->k[0].n_segs, N_BLOCKS / 3);
        assert_int_equal(pool->v[1].n_segs, N_BLOCKS / 3);
    }
}

static void run_close(run *r)
{
    kvrt_session_destroy(r->session);
    kvrt_model_destroy(r->model);
    kvrt_context_destroy(r->ctx);
}

static void compare(const char *what, const float *got, const float *want, size_t n)
{
    double num = 0, den = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = isfinite(got[i]) ? fabs((double)got[i] - want[i]) : INFINITY;
        mx = d > mx ? d : mx;
        num += d * d;
        den += (double)want[i] * want[i];
    }
    double nmse = den > 0 ? num / den : num;
    print_message("  %-28s max abs %.2e  nmse %.2e  (|logits| ~ %.2f)\n", what, mx, nmse, sqrt(den / (double)n));
    if (!(mx <= 1e-5 && nmse <= 1e-9))
        fail_msg("%s: max abs %.3e, nmse %.3e", what, mx, nmse);
}

static void check_type(kvrt_dtype type)
{
    char path[] = "/tmp/kvrt-cl-big-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    kvrt_synth_params sp = synth_params(type);
    kvrt_error err;
    if (kvrt_synth_write_file(&sp, NULL, path, NULL, &err) != KVRT_OK)
        fail_msg("synth: %s", err.message);

    run cpu, cl;
    run_open(&cpu, KVRT_BACKEND_CPU, path, 0);
    run_open(&cl, KVRT_BACKEND_OPENCL, path, SEG_BYTES);
    remove(path);

    const int32_t V = sp.hp.n_vocab;
    int32_t ids[N_PROMPT + N_DECODE];
    for (int i = 0; i < N_PROMPT + N_DECODE; i++)
        ids[i] = (int32_t)((i * 389 + 7) % V);
    float *want = malloc((size_t)N_PROMPT * V * 4), *got = malloc((size_t)N_PROMPT * V * 4);
    assert_non_null(want);
    assert_non_null(got);
    assert_int_equal(kvrt_session_eval(cpu.session, ids, N_PROMPT, NULL, want), KVRT_OK);
    if (kvrt_session_eval(cl.session, ids, N_PROMPT, NULL, got) != KVRT_OK)
        fail_msg("opencl prompt: %s", kvrt_session_message(cl.session));
    char what[64];
    snprintf(what, sizeof(what), "%s prompt (%d tokens)", kvrt_dtype_name(type), N_PROMPT);
    compare(what, got, want, (size_t)N_PROMPT * V);
    for (int i = 0; i < N_DECODE; i++) {
        const int32_t *tok = &ids[N_PROMPT + i];
        assert_int_equal(kvrt_session_eval(cpu.session, tok, 1, want, NULL), KVRT_OK);
        assert_int_equal(kvrt_session_eval(cl.session, tok, 1, got, NULL), KVRT_OK);
        snprintf(what, sizeof(what), "%s decode step %d", kvrt_dtype_name(type), i + 1);
        compare(what, got, want, (size_t)V);
    }
    free(want);
    free(got);
    run_close(&cl);
    run_close(&cpu);
}

static void test_big_f32(void **state)
{
    (void)state;
    check_type(KVRT_DTYPE_F32);
}

static void test_big_f16(void **state)
{
    (void)state;
    check_type(KVRT_DTYPE_F16);
}

static void test_big_q8_0(void **state)
{
    (void)state;
    check_type(KVRT_DTYPE_Q8_0);
}

static void test_big_q4_0(void **state)
{
    (void)state;
    check_type(KVRT_DTYPE_Q4_0);
}

int main(void)
{
    cl_test_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_big_f32),
        cmocka_unit_test(test_big_f16),
        cmocka_unit_test(test_big_q8_0),
        cmocka_unit_test(test_big_q4_0),
    };
    return cmocka_run_group_tests_name("opencl model larger than an allocation", tests, NULL, NULL);
}
