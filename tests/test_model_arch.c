/* The architectures against the double-precision reference (tests/common/
 * ref_model.c): random F32 models of each family and option (llama plain,
 * RoPE scaling linear with rope_freqs, YaRN, Q/K/V biases on llama, qwen2,
 * qwen3 with wide heads, a sliding window with chunked prefill) run on every
 * backend built in. Teacher-forced logits stay within DESIGN.md's 1e-3 of
 * the reference on every backend, every backend generates the same greedy
 * tokens, and each of them is the reference's choice (or the reference's
 * top two are closer than the logit error, said and asserted). */
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
#include "ref_model.h"
#include "test_drivers.h"

#define N_PROMPT 40
#define N_GEN 12
#define N_ALL (N_PROMPT + N_GEN)
#define MAX_ABS 1e-3

typedef struct arch_case {
    const char *name;
    kvrt_arch arch;
    int32_t head_dim;
    kvrt_rope_scaling scaling;
    float scale;
    int32_t orig_ctx;
    bool rope_freqs, bias;
    int32_t window;
} arch_case;

static const arch_case CASES[] = {
    {"llama", KVRT_ARCH_LLAMA, 0, KVRT_ROPE_SCALING_NONE, 0, 0, false, false, 0},
    {"llama linear + rope_freqs", KVRT_ARCH_LLAMA, 0, KVRT_ROPE_SCALING_LINEAR, 4.0f, 0, true, false, 0},
    {"llama yarn", KVRT_ARCH_LLAMA, 0, KVRT_ROPE_SCALING_YARN, 8.0f, 16, false, false, 0},
    {"llama biases + window 9", KVRT_ARCH_LLAMA, 0, KVRT_ROPE_SCALING_NONE, 0, 0, false, true, 9},
    {"qwen2", KVRT_ARCH_QWEN2, 0, KVRT_ROPE_SCALING_NONE, 0, 0, false, false, 0},
    {"qwen3 wide heads", KVRT_ARCH_QWEN3, 32, KVRT_ROPE_SCALING_NONE, 0, 0, false, false, 0},
};

static kvrt_backend_kind KINDS[3];
static int N_KINDS;

static int setup_kinds(void **state)
{
    (void)state;
    kvrt_test_pin_gpu_drivers();
    KINDS[N_KINDS++] = KVRT_BACKEND_CPU;
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    KINDS[N_KINDS++] = KVRT_BACKEND_VULKAN;
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    KINDS[N_KINDS++] = KVRT_BACKEND_OPENCL;
#endif
    return 0;
}

static void write_model(const arch_case *c, const char *path)
{
    kvrt_synth_params p;
    kvrt_synth_preset("tiny", &p);
    p.hp.arch = c->arch;
    p.hp.n_vocab = 300;
    p.hp.n_embd = 64;
    p.hp.n_head = 4;
    p.hp.n_head_kv = 2;
    p.hp.n_ff = 96;
    p.hp.n_layer = 2;
    p.hp.n_ctx_train = 128;
    p.hp.head_dim = c->head_dim;
    p.hp.rope_scaling = c->scaling;
    p.hp.rope_scale = c->scale;
    p.hp.rope_orig_ctx = c->orig_ctx;
    p.hp.sliding_window = c->window;
    p.rope_freqs = c->rope_freqs;
    p.bias = c->bias;
    p.stddev = 0.08f; /* wide logits: greedy choices far from ties */
    p.seed = 1000 + (uint64_t)c->arch * 7 + (uint64_t)c->scaling;
    kvrt_error err;
    if (kvrt_synth_write_file(&p, NULL, path, NULL, &err) != KVRT_OK)
        fail_msg("%s: synth: %s", c->name, err.message);
}

static kvrt_session *open_session(kvrt_model *m, int32_t n_batch)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = N_ALL + 4;
    sp.n_batch = n_batch;
    kvrt_session *s = NULL;
    kvrt_error err;
    if (kvrt_session_create(m, &sp, &s, &err) != KVRT_OK)
        fail_msg("session: %s", err.message);
    return s;
}

static double max_abs(const float *got, const double *want, size_t n)
{
    double mx = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = isfinite(got[i]) ? fabs(got[i] - want[i]) : INFINITY;
        mx = d > mx ? d : mx;
    }
    return mx;
}

/* One backend: teacher-forced logits of `ids` vs the reference, then greedy tokens after the prompt. */
static void run_backend(const arch_case *c, const char *path, kvrt_backend_kind kind, const int32_t *ids,
                        const double *ref, int32_t *gen)
{
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = kind;
    cp.n_threads = 2;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    if (kvrt_context_create(&cp, &ctx, &err) != KVRT_OK) /* CI has lavapipe and PoCL: no skipping */
        fail_msg("the %s backend is built in but cannot start: %s", kvrt_backend_name(kind), err.message);
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_model *m = NULL;
    if (kvrt_model_load(ctx, &mp, &m, &err) != KVRT_OK)
        fail_msg("%s on %s: %s", c->name, kvrt_backend_name(kind), err.message);
    int32_t nv = 300;
    /* prefill in chunks of 7: several chunks, and a window that slides between them */
    kvrt_session *s = open_session(m, 7);
    float *all = malloc((size_t)N_PROMPT * nv * sizeof(float)), *last = malloc((size_t)nv * sizeof(float));
    assert_int_equal(kvrt_session_eval(s, ids, N_PROMPT, last, all), KVRT_OK);
    double err_prompt = max_abs(all, ref, (size_t)N_PROMPT * nv);
    if (err_prompt > MAX_ABS)
        fail_msg("%s on %s: prompt logits %.3g from the reference", c->name, kvrt_backend_name(kind), err_prompt);
    kvrt_sampler_params spp = kvrt_sampler_default_params();
    spp.temperature = 0;
    kvrt_sampler *smp = NULL;
    assert_int_equal(kvrt_sampler_create(&spp, nv, NULL, &smp, NULL), KVRT_OK);
    for (int32_t i = 0; i < N_GEN; i++) {
        assert_int_equal(kvrt_sampler_sample(smp, last, &gen[i]), KVRT_OK);
        assert_int_equal(kvrt_session_eval(s, &gen[i], 1, last, NULL), KVRT_OK);
    }
    kvrt_session_stats st;
    kvrt_session_get_stats(s, &st);
    if (c->window > 0) /* blocks before the window went back to the pool */
        assert_true(st.blocks_used * st.block_size < N_ALL);
    fprintf(stderr, "%-26s %-6s prompt logits within %.2g of the reference; %d KV blocks held\n", c->name,
            kvrt_backend_name(kind), err_prompt, (int)st.blocks_used);
    kvrt_sampler_destroy(smp);
    kvrt_session_destroy(s);
    free(all);
    free(last);
    kvrt_model_destroy(m);
    kvrt_context_destroy(ctx);
}

static void test_architectures(void **state)
{
    (void)state;
    char path[64];
    snprintf(path, sizeof(path), "/tmp/kvrt_test_arch_%d.gguf", (int)getpid());
    for (size_t k = 0; k < KVRT_ARRAY_LEN(CASES); k++) {
        const arch_case *c = &CASES[k];
        write_model(c, path);
        kvrt_model_file *mf = NULL;
        kvrt_error err;
        if (kvrt_model_file_load_gguf(path, NULL, false, NULL, &mf, &err) != KVRT_OK)
            fail_msg("%s: %s", c->name, err.message);
        int32_t ids[N_ALL];
        for (int32_t i = 0; i < N_PROMPT; i++)
            ids[i] = 3 + (int32_t)((uint32_t)(i * 2654435761u + (uint32_t)k * 97u) % 290u);
        int32_t nv = mf->hp.n_vocab;
        double *ref = malloc((size_t)N_ALL * nv * sizeof(double));
        ref_model_logits(mf, ids, N_PROMPT, ref);
        if (c->scaling != KVRT_ROPE_SCALING_NONE || c->rope_freqs || c->window) {
            /* the option matters: the reference without it is far from the reference with it */
            kvrt_llama_hparams keep = mf->hp;
            kvrt_tensor_ref freqs = mf->w.rope_freqs;
            mf->hp.rope_scaling = KVRT_ROPE_SCALING_NONE;
            mf->hp.rope_attn_factor = 1.0f;
            mf->hp.sliding_window = 0;
            mf->w.rope_freqs.data = NULL;
            double *plain = malloc((size_t)N_PROMPT * nv * sizeof(double)), diff = 0.0;
            ref_model_logits(mf, ids, N_PROMPT, plain);
            for (size_t i = 0; i < (size_t)N_PROMPT * nv; i++)
                diff = fmax(diff, fabs(plain[i] - ref[i]));
            assert_true(diff > 100 * MAX_ABS);
            free(plain);
            mf->hp = keep;
            mf->w.rope_freqs = freqs;
        }
        int32_t gen[3][N_GEN];
        for (int b = 0; b < N_KINDS; b++)
            run_backend(c, path, KINDS[b], ids, ref, gen[b]);
        for (int b = 1; b < N_KINDS; b++)
            if (memcmp(gen[b], gen[0], sizeof(gen[0])) != 0)
                fail_msg("%s: %s generates other greedy tokens than the CPU", c->name, kvrt_backend_name(KINDS[b]));
        /* the generated tokens against the reference on the whole sequence */
        memcpy(ids + N_PROMPT, gen[0], sizeof(gen[0]));
        ref_model_logits(mf, ids, N_ALL, ref);
        for (int32_t i = 0; i < N_GEN; i++) {
            const double *row = ref + (size_t)(N_PROMPT - 1 + i) * nv;
            int32_t best = 0, second = -1;
            for (int32_t v = 1; v < nv; v++)
                if (row[v] > row[best]) {
                    second = best;
                    best = v;
                } else if (second < 0 || row[v] > row[second]) {
                    second = v;
                }
            if (best != gen[0][i] && row[best] - row[gen[0][i]] > 2 * MAX_ABS)
                fail_msg("%s: token %d is %d, the reference picks %d by %.3g", c->name, (int)i, (int)gen[0][i],
                         (int)best, row[best] - row[gen[0][i]]);
        }
        free(ref);
        kvrt_model_file_free(mf);
        unlink(path);
    }
}

/* ---- files that must be refused, each with the reason named ----------------------------------------------- */

typedef struct bad_file {
    kvrt_llama_hparams hp;      /* the keys */
    kvrt_llama_hparams shapes;  /* the tensors' shapes (usually the same) */
    kvrt_llama_layout layout;
    const char *arch_string;    /* general.architecture override, or NULL */
    float freq_value;           /* rope_freqs entries */
    const char *extra_key;      /* one more key: a string value ... */
    const char *extra_str;
    float extra_f32;            /* ... or this float when extra_str is NULL */
} bad_file;

static bad_file base_file(kvrt_arch arch)
{
    kvrt_synth_params p;
    kvrt_synth_preset("tiny", &p);
    p.hp.arch = arch;
    bad_file b = {.hp = p.hp, .shapes = p.hp, .layout = {.with_output = true}, .freq_value = 1.0f};
    b.layout.with_bias = arch == KVRT_ARCH_QWEN2;
    b.layout.with_qk_norm = arch == KVRT_ARCH_QWEN3;
    return b;
}

/* Writes the file with kvrt's writer: keys of b->hp, tensors of b->shapes and b->layout. */
static void write_bad(const bad_file *b, const char *path)
{
    kvrt_gguf_writer *w = NULL;
    assert_int_equal(kvrt_gguf_writer_create(NULL, 0, &w, NULL), KVRT_OK);
    kvrt_vocab v;
    assert_int_equal(kvrt_synth_vocab(NULL, b->hp.n_vocab, &v, NULL), KVRT_OK);
    assert_int_equal(kvrt_llama_add_hparams(w, &b->hp, "bad"), KVRT_OK);
    if (b->arch_string) { /* a second general.architecture would be a duplicate key: rebuild the writer */
        kvrt_gguf_writer_destroy(w);
        assert_int_equal(kvrt_gguf_writer_create(NULL, 0, &w, NULL), KVRT_OK);
        assert_int_equal(kvrt_gguf_writer_add_string(w, "general.architecture", b->arch_string), KVRT_OK);
    }
    if (b->extra_key && b->extra_str)
        assert_int_equal(kvrt_gguf_writer_add_string(w, b->extra_key, b->extra_str), KVRT_OK);
    else if (b->extra_key)
        assert_int_equal(kvrt_gguf_writer_add_f32(w, b->extra_key, b->extra_f32), KVRT_OK);
    assert_int_equal(kvrt_llama_add_vocab(w, &v), KVRT_OK);
    assert_int_equal(kvrt_llama_add_layout_tensors(w, &b->shapes, &b->layout, KVRT_DTYPE_F32), KVRT_OK);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(kvrt_gguf_writer_write_header(w, f), KVRT_OK);
    int32_t n = kvrt_llama_layout_count(&b->shapes, &b->layout);
    for (int32_t i = 0; i < n; i++) {
        char name[64];
        int64_t ne0, ne1;
        kvrt_llama_layout_desc(&b->shapes, &b->layout, i, name, sizeof(name), &ne0, &ne1);
        float val = strcmp(name, "rope_freqs.weight") == 0 ? b->freq_value : 0.5f;
        for (int64_t k = 0; k < ne0 * ne1; k++)
            assert_int_equal(kvrt_gguf_writer_write_data(w, f, &val, sizeof(val)), KVRT_OK);
    }
    assert_int_equal(kvrt_gguf_writer_finish(w, f), KVRT_OK);
    fclose(f);
    kvrt_gguf_writer_destroy(w);
    kvrt_vocab_free(NULL, &v);
}

static void expect_refused(const bad_file *b, kvrt_status want, const char *needle)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/kvrt_test_arch_bad_%d.gguf", (int)getpid());
    write_bad(b, path);
    kvrt_model_file *mf = (kvrt_model_file *)1;
    kvrt_error err;
    kvrt_status st = kvrt_model_file_load_gguf(path, NULL, false, NULL, &mf, &err);
    unlink(path);
    if (st == KVRT_OK) {
        kvrt_model_file_free(mf);
        fail_msg("accepted a file that should fail with '%s'", needle);
    }
    assert_null(mf);
    if (st != want || !strstr(err.message, needle))
        fail_msg("status %d '%s', want %d naming '%s'", (int)st, err.message, (int)want, needle);
}

static void test_arch_errors(void **state)
{
    (void)state;
    bad_file b = base_file(KVRT_ARCH_QWEN2);
    b.layout.with_bias = false;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "tensor 'blk.0.attn_q.bias' is missing (architecture qwen2 needs it)");
    b = base_file(KVRT_ARCH_QWEN3);
    b.layout.with_bias = true;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "tensor 'blk.0.attn_q.bias' is not used by architecture qwen3");
    b = base_file(KVRT_ARCH_QWEN3);
    b.layout.with_qk_norm = false;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "'blk.0.attn_q_norm.weight' is missing");
    b = base_file(KVRT_ARCH_LLAMA);
    b.layout.with_qk_norm = true;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "'blk.0.attn_q_norm.weight' is not used by architecture llama");
    b = base_file(KVRT_ARCH_QWEN2);
    b.layout.with_rope_freqs = true;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "'rope_freqs.weight' is not used by architecture qwen2");
    /* rope_freqs: one factor per rotated pair, each finite and positive */
    b = base_file(KVRT_ARCH_LLAMA);
    b.layout.with_rope_freqs = true;
    b.shapes.rope_dim = 2; /* one factor where head_dim / 2 = 2 are needed */
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "tensor 'rope_freqs.weight' has shape [1, 1], expected [2, 1]");
    b = base_file(KVRT_ARCH_LLAMA);
    b.layout.with_rope_freqs = true;
    b.freq_value = 0.0f;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "factors must be finite and positive");
    b.freq_value = NAN;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "factors must be finite and positive");
    /* bias shapes */
    b = base_file(KVRT_ARCH_QWEN2);
    b.shapes.n_head_kv = 2; /* K/V tensors (and biases) twice as wide as the keys say */
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "tensor 'blk.0.attn_k.weight' has shape");
    /* scaling keys */
    b = base_file(KVRT_ARCH_LLAMA);
    b.extra_key = "llama.rope.scaling.type";
    b.extra_str = "longrope";
    expect_refused(&b, KVRT_ERR_UNSUPPORTED, "RoPE scaling 'longrope'");
    b.extra_key = "llama.rope.scaling.factor";
    b.extra_str = NULL;
    b.extra_f32 = -2.0f;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "factor -2 must be positive");
    b.extra_f32 = INFINITY;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "GGUF key 'llama.rope.scaling.factor' = inf");
    b = base_file(KVRT_ARCH_LLAMA);
    b.hp.rope_scaling = KVRT_ROPE_SCALING_YARN;
    b.hp.rope_scale = 4.0f;
    b.extra_key = "llama.rope.scaling.attn_factor";
    b.extra_f32 = 0.0f;
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "rope.scaling.attn_factor' = 0 must be positive");
    b = base_file(KVRT_ARCH_LLAMA);
    b.extra_key = "llama.attention.value_length";
    b.extra_str = NULL;
    b.extra_f32 = 0; /* wrong type for a length: named */
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "llama.attention.value_length");
    /* other architectures are named */
    b = base_file(KVRT_ARCH_LLAMA);
    b.arch_string = "gemma2";
    expect_refused(&b, KVRT_ERR_UNSUPPORTED, "model architecture 'gemma2' is not supported");
    /* a key the family needs */
    b = base_file(KVRT_ARCH_QWEN3);
    b.arch_string = "qwen3"; /* keys rebuilt without the hparams: context_length is missing */
    expect_refused(&b, KVRT_ERR_BAD_MODEL, "GGUF key 'qwen3.context_length' is missing");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_architectures),
        cmocka_unit_test(test_arch_errors),
    };
    return cmocka_run_group_tests(tests, setup_kinds, NULL);
}
