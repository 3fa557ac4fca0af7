/* Golden tests on real checkpoints (tests/data): greedy tokens equal an
 * independent implementation's exactly, teacher-forced logits within the
 * DESIGN.md bounds, cached decoding equals recomputation. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvrt.h"
#include "test_models.h"

#define N_POS 256 /* positions of the golden run */

typedef struct golden {
    int32_t all_ids[N_POS + 1];
    int32_t n_all;
    int32_t prompt_ids[16];
    int32_t n_prompt;
    float *logits; /* [N_POS][n_vocab] */
    int32_t n_vocab;
} golden;

static golden G;
static kvrt_context *CTX;

typedef struct model_source {
    const char *name;
    const char *file;      /* relative to its folder */
    const char *tokenizer; /* NULL for GGUF */
    int in_repo;           /* 1: models/ of this repository; 0: the shared models */
} model_source;

static const model_source SOURCES[] = {
    {"llama2.c checkpoint", "stories260K.bin", "tok512.bin", 0},
    {"llama.cpp GGUF", "stories260K.gguf", NULL, 0},
    {"kvrt-convert GGUF", "stories260K.gguf", NULL, 1},
};

static kvrt_model *load_source(const model_source *src, int32_t max_context)
{
    char path[1024], tok[1024];
    if (src->in_repo)
        snprintf(path, sizeof(path), "%s/models/%s", KVRT_SOURCE_DIR, src->file);
    else
        kvrt_test_model_path(src->file, path, sizeof(path));
    if (src->tokenizer)
        kvrt_test_model_path(src->tokenizer, tok, sizeof(tok));
    kvrt_model_params p = kvrt_model_default_params();
    p.path = path;
    p.tokenizer_path = src->tokenizer ? tok : NULL;
    p.max_context = max_context;
    kvrt_model *m = NULL;
    kvrt_error err;
    kvrt_status s = kvrt_model_load(CTX, &p, &m, &err);
    if (s != KVRT_OK)
        fail_msg("loading %s (%s): %s", src->name, path, err.message);
    return m;
}

static kvrt_session *new_session(kvrt_model *m, int32_t block_size, kvrt_dtype kv, int32_t n_batch)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = 512;
    sp.block_size = block_size;
    sp.kv_type = kv;
    sp.n_batch = n_batch;
    kvrt_session *s = NULL;
    kvrt_error err;
    if (kvrt_session_create(m, &sp, &s, &err) != KVRT_OK)
        fail_msg("session: %s", err.message);
    return s;
}

static int setup_golden(void **state)
{
    (void)state;
    int32_t ids[1024];
    G.n_all = kvrt_test_read_ids("golden/stories260K-once/all_ids.txt", ids, 1024);
    if (G.n_all != N_POS + 1)
        return -1;
    memcpy(G.all_ids, ids, sizeof(G.all_ids));
    G.n_prompt = kvrt_test_read_ids("golden/stories260K-once/prompt_ids.txt", G.prompt_ids, 16);
    G.n_vocab = 512;
    size_t n = 0;
    G.logits = kvrt_test_read_file("golden/stories260K-once/logits.f32", &n);
    if (!G.logits || n != (size_t)N_POS * G.n_vocab * sizeof(float))
        return -1;
    kvrt_context_params cp = kvrt_context_default_params();
    cp.n_threads = 2;
    return kvrt_context_create(&cp, &CTX, NULL) == KVRT_OK ? 0 : -1;
}

static int teardown_golden(void **state)
{
    (void)state;
    free(G.logits);
    kvrt_context_destroy(CTX);
    return 0;
}

/* Greedy generation from the golden prompt; returns the number of tokens. */
static int32_t greedy_run(kvrt_session *s, int32_t *out, int32_t n_gen)
{
    float *logits = malloc(512 * sizeof(float));
    assert_int_equal(kvrt_session_eval(s, G.prompt_ids, G.n_prompt, logits, NULL), KVRT_OK);
    for (int32_t i = 0; i < n_gen; i++) {
        int32_t best = 0;
        for (int32_t v = 1; v < 512; v++) {
            if (logits[v] > logits[best])
                best = v;
        }
        out[i] = best;
        if (i + 1 < n_gen)
            assert_int_equal(kvrt_session_eval(s, &best, 1, logits, NULL), KVRT_OK);
    }
    free(logits);
    return n_gen;
}

/* Every source x KV type x block size; prefill chunk sizes 1, 7 and
 * whole-prompt rotate so each source sees each chunk size. */
static void test_greedy_tokens_exact(void **state)
{
    (void)state;
    const int32_t block_sizes[] = {8, 16, 32};
    const kvrt_dtype kv_types[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16};
    const int32_t chunks[] = {1, 7, 512};
    int32_t n_gen = N_POS + 1 - G.n_prompt; /* 252 */
    int32_t *gen = malloc((size_t)n_gen * sizeof(int32_t));
    int run = 0;
    for (size_t si = 0; si < sizeof(SOURCES) / sizeof(SOURCES[0]); si++) {
        kvrt_model *m = load_source(&SOURCES[si], 512);
        for (size_t ki = 0; ki < 2; ki++) {
            for (size_t bi = 0; bi < 3; bi++, run++) {
                int32_t chunk = chunks[(bi + ki + si) % 3];
                kvrt_session *s = new_session(m, block_sizes[bi], kv_types[ki], chunk);
                greedy_run(s, gen, n_gen);
                for (int32_t i = 0; i < n_gen; i++) {
                    if (gen[i] != G.all_ids[G.n_prompt + i])
                        fail_msg("%s, KV %s, block %d, chunk %d: token %d is %d, expected %d", SOURCES[si].name,
                                 kvrt_dtype_name(kv_types[ki]), block_sizes[bi], chunk, i, gen[i],
                                 G.all_ids[G.n_prompt + i]);
                }
                kvrt_session_destroy(s);
            }
        }
        kvrt_model_destroy(m);
    }
    free(gen);
}

static void logit_errors(const float *a, const float *b, size_t n, double *max_abs, double *mean_abs)
{
    double mx = 0, sum = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!isfinite(a[i]))
            d = INFINITY;
        mx = d > mx ? d : mx;
        sum += d;
    }
    *max_abs = mx;
    *mean_abs = sum / (double)n;
}

/* Feed the reference ids, compare every position's logits (DESIGN.md bounds). */
static void test_teacher_forced_logits(void **state)
{
    (void)state;
    float *logits = malloc((size_t)N_POS * 512 * sizeof(float));
    for (size_t si = 0; si < 2; si++) {
        kvrt_model *m = load_source(&SOURCES[si], 512);
        for (int kv = 0; kv < 2; kv++) {
            kvrt_dtype t = kv ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32;
            kvrt_session *s = new_session(m, 16, t, 64);
            assert_int_equal(kvrt_session_eval(s, G.all_ids, N_POS, NULL, logits), KVRT_OK);
            double mx, mean;
            logit_errors(logits, G.logits, (size_t)N_POS * 512, &mx, &mean);
            print_message("%s, KV %s: teacher-forced logits max abs %.3g, mean abs %.3g\n", SOURCES[si].name,
                          kvrt_dtype_name(t), mx, mean);
            if (t == KVRT_DTYPE_F32)
                assert_true(mx <= 1e-3);
            else
                assert_true(mx <= 0.1 && mean <= 5e-3);
            kvrt_session_destroy(s);
        }
        kvrt_model_destroy(m);
    }
    free(logits);
}

/* Logits of decoding with the paged cache equal logits of recomputing the
 * whole prefix from scratch, within 1e-4. */
static void test_cached_equals_recomputed(void **state)
{
    (void)state;
    const int32_t probes[] = {0, 1, 5, 17, 64, 130, 255};
    kvrt_model *m = load_source(&SOURCES[0], 512);
    float *cached = malloc((size_t)N_POS * 512 * sizeof(float));
    float fresh[512];
    kvrt_session *s = new_session(m, 8, KVRT_DTYPE_F32, 1); /* one token per step: pure decode */
    assert_int_equal(kvrt_session_eval(s, G.all_ids, N_POS, NULL, cached), KVRT_OK);
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        int32_t p = probes[i];
        kvrt_session *r = new_session(m, 32, KVRT_DTYPE_F32, 512);
        assert_int_equal(kvrt_session_eval(r, G.all_ids, p + 1, fresh, NULL), KVRT_OK);
        double mx, mean;
        logit_errors(cached + (size_t)p * 512, fresh, 512, &mx, &mean);
        if (mx > 1e-4)
            fail_msg("position %d: cached vs recomputed max abs %.3g > 1e-4", p, mx);
        kvrt_session_destroy(r);
    }
    kvrt_session_destroy(s);
    free(cached);
    kvrt_model_destroy(m);
}

/* A second, MHA model (group size 1, context 128): chunked prefill, block
 * sizes and KV caching must not change its greedy tokens. */
static void test_aidreams_mha_consistent(void **state)
{
    (void)state;
    model_source src = {"aidreams260K", "aidreams260K.bin", "tok512_aidreams.bin", 0};
    kvrt_model *m = load_source(&src, 0);
    kvrt_model_info info;
    kvrt_model_get_info(m, &info);
    assert_int_equal(info.n_head, info.n_head_kv);
    int32_t ref[100], got[100];
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = 512; /* beyond the 128 positions the model was loaded for: refused */
    kvrt_session *a = NULL, *b = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_session_create(m, &sp, &a, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(a);
    assert_non_null(strstr(err.message, "n_ctx"));
    sp.n_ctx = 0;
    sp.block_size = 8;
    assert_int_equal(kvrt_session_create(m, &sp, &a, NULL), KVRT_OK);
    sp.block_size = 32;
    sp.n_batch = 3;
    assert_int_equal(kvrt_session_create(m, &sp, &b, NULL), KVRT_OK);
    greedy_run(a, ref, 100);
    greedy_run(b, got, 100);
    assert_memory_equal(ref, got, sizeof(ref));
    kvrt_session_destroy(a);
    kvrt_session_destroy(b);
    kvrt_model_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_tokens_exact),
        cmocka_unit_test(test_teacher_forced_logits),
        cmocka_unit_test(test_cached_equals_recomputed),
        cmocka_unit_test(test_aidreams_mha_consistent),
    };
    return cmocka_run_group_tests_name("model_golden", tests, setup_golden, teardown_golden);
}
