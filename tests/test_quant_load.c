/* Files that mix weight types: the per-tensor rules of the presets
 * (model/quant_mix.h), loading a mix with each tensor in its own type, and
 * the bad inputs of quantized files (non-finite scales, rows a type cannot
 * hold, types kvrt does not run, truncated blocks). */
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
#include "model/gguf.h"
#include "model/model_file.h"
#include "model/quant_mix.h"
#include "backend/backend.h"
#include "model/synth.h"
#include "test_drivers.h"

static kvrt_llama_hparams shape(int32_t embd, int32_t ff, int32_t layers, int32_t heads, int32_t kv_heads)
{
    kvrt_synth_params p;
    assert_true(kvrt_synth_preset("tiny", &p));
    p.hp.n_embd = embd;
    p.hp.n_ff = ff;
    p.hp.n_layer = layers;
    p.hp.n_head = heads;
    p.hp.n_head_kv = kv_heads;
    p.hp.n_vocab = 300;
    p.hp.head_dim = embd / heads;
    return p.hp;
}

static kvrt_dtype type_of(const char *preset, const kvrt_llama_hparams *hp, const char *name, int64_t ne0,
                          int64_t ne1, bool tied)
{
    kvrt_quant_mix mix;
    assert_true(kvrt_quant_mix_find(preset, false, &mix));
    return kvrt_quant_mix_type(&mix, hp, name, ne0, ne1, tied);
}

static void layer_name(char *buf, size_t size, int i, const char *what)
{
    snprintf(buf, size, "blk.%d.%s.weight", i, what);
}

/* The documented rules on a 12-layer shape (110m-like, rows multiples of 256). */
static void test_preset_rules(void **state)
{
    (void)state;
    const kvrt_llama_hparams hp = shape(768, 2048, 12, 12, 12);
    char n[64];
    /* Q4_K_M: more bits (Q6_K) in layers 0, 3, 6, 9, 10, 11 of 12 for attn_v and ffn_down */
    const bool more[12] = {1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 1, 1};
    for (int i = 0; i < 12; i++) {
        layer_name(n, sizeof(n), i, "attn_v");
        assert_int_equal(type_of("Q4_K_M", &hp, n, 768, 768, false), more[i] ? KVRT_DTYPE_Q6_K : KVRT_DTYPE_Q4_K);
        assert_int_equal(type_of("Q5_K_M", &hp, n, 768, 768, false), more[i] ? KVRT_DTYPE_Q6_K : KVRT_DTYPE_Q5_K);
        assert_int_equal(type_of("Q4_K_S", &hp, n, 768, 768, false), i < 4 ? KVRT_DTYPE_Q5_K : KVRT_DTYPE_Q4_K);
        assert_int_equal(type_of("Q3_K_M", &hp, n, 768, 768, false), i < 2 ? KVRT_DTYPE_Q5_K : KVRT_DTYPE_Q4_K);
        assert_int_equal(type_of("Q2_K", &hp, n, 768, 768, false), KVRT_DTYPE_Q3_K);
        assert_int_equal(type_of("Q5_K_S", &hp, n, 768, 768, false), KVRT_DTYPE_Q5_K);
        layer_name(n, sizeof(n), i, "ffn_down");
        assert_int_equal(type_of("Q4_K_M", &hp, n, 2048, 768, false), more[i] ? KVRT_DTYPE_Q6_K : KVRT_DTYPE_Q4_K);
        assert_int_equal(type_of("Q4_K_S", &hp, n, 2048, 768, false), i < 1 ? KVRT_DTYPE_Q5_K : KVRT_DTYPE_Q4_K);
        assert_int_equal(type_of("Q3_K_M", &hp, n, 2048, 768, false), KVRT_DTYPE_Q4_K); /* 12 / 16 = 0 */
        assert_int_equal(type_of("Q2_K", &hp, n, 2048, 768, false), KVRT_DTYPE_Q3_K);
        layer_name(n, sizeof(n), i, "attn_output");
        assert_int_equal(type_of("Q2_K", &hp, n, 768, 768, false), KVRT_DTYPE_Q3_K);
        assert_int_equal(type_of("Q3_K_M", &hp, n, 768, 768, false), KVRT_DTYPE_Q4_K);
        assert_int_equal(type_of("Q4_K_M", &hp, n, 768, 768, false), KVRT_DTYPE_Q4_K);
        layer_name(n, sizeof(n), i, "attn_q");
        assert_int_equal(type_of("Q2_K", &hp, n, 768, 768, false), KVRT_DTYPE_Q2_K);
        assert_int_equal(type_of("Q6_K", &hp, n, 768, 768, false), KVRT_DTYPE_Q6_K);
        layer_name(n, sizeof(n), i, "attn_norm");
        assert_int_equal(type_of("Q4_K_M", &hp, n, 768, 1, false), KVRT_DTYPE_F32);
    }
    /* the classifier: Q6_K, except in Q8_0 files; the tied embedding takes its place */
    assert_int_equal(type_of("Q4_K_M", &hp, "output.weight", 768, 32000, false), KVRT_DTYPE_Q6_K);
    assert_int_equal(type_of("Q4_0", &hp, "output.weight", 768, 32000, false), KVRT_DTYPE_Q6_K);
    assert_int_equal(type_of("Q8_0", &hp, "output.weight", 768, 32000, false), KVRT_DTYPE_Q8_0);
    assert_int_equal(type_of("Q4_K_M", &hp, "token_embd.weight", 768, 32000, false), KVRT_DTYPE_Q4_K);
    assert_int_equal(type_of("Q4_K_M", &hp, "token_embd.weight", 768, 32000, true), KVRT_DTYPE_Q6_K);
    /* Q3_K_M's first sixteenth of ffn_down, Q2_K's attn_v with GQA 4 */
    const kvrt_llama_hparams deep = shape(2048, 5632, 32, 32, 8);
    layer_name(n, sizeof(n), 1, "ffn_down");
    assert_int_equal(type_of("Q3_K_M", &deep, n, 5632, 2048, false), KVRT_DTYPE_Q5_K);
    layer_name(n, sizeof(n), 2, "ffn_down");
    assert_int_equal(type_of("Q3_K_M", &deep, n, 5632, 2048, false), KVRT_DTYPE_Q4_K);
    layer_name(n, sizeof(n), 5, "attn_v");
    assert_int_equal(type_of("Q2_K", &deep, n, 2048, 512, false), KVRT_DTYPE_Q4_K);
    assert_int_equal(type_of("IQ4_XS", &deep, n, 2048, 512, false), KVRT_DTYPE_Q5_K);
    /* pure: the base type everywhere */
    kvrt_quant_mix mix;
    assert_true(kvrt_quant_mix_find("q4_k_m", true, &mix));
    assert_int_equal(mix.file_type, 15);
    assert_int_equal(kvrt_quant_mix_type(&mix, &hp, "output.weight", 768, 32000, false), KVRT_DTYPE_Q4_K);
    assert_false(kvrt_quant_mix_find("Q4_K_X", false, &mix));
    assert_false(kvrt_quant_mix_find("IQ2_XXS", false, &mix));
}

/* Rows that are not a multiple of 256 (Qwen2-0.5B's 896, 4864 is fine): the fall-backs. */
static void test_fallbacks(void **state)
{
    (void)state;
    const kvrt_llama_hparams hp = shape(896, 4864, 24, 14, 2);
    char n[64];
    layer_name(n, sizeof(n), 5, "attn_q");
    assert_int_equal(type_of("Q4_K_M", &hp, n, 896, 896, false), KVRT_DTYPE_Q5_0);
    assert_int_equal(type_of("Q5_K_M", &hp, n, 896, 896, false), KVRT_DTYPE_Q5_1);
    assert_int_equal(type_of("Q6_K", &hp, n, 896, 896, false), KVRT_DTYPE_Q8_0);
    assert_int_equal(type_of("Q2_K", &hp, n, 896, 896, false), KVRT_DTYPE_IQ4_NL);
    assert_int_equal(type_of("Q3_K_M", &hp, n, 896, 896, false), KVRT_DTYPE_IQ4_NL);
    assert_int_equal(type_of("IQ4_XS", &hp, n, 896, 896, false), KVRT_DTYPE_IQ4_NL);
    layer_name(n, sizeof(n), 4, "ffn_down"); /* (4 - 24/8) % 3 != 2 */
    assert_int_equal(type_of("Q4_K_M", &hp, n, 4864, 896, false), KVRT_DTYPE_Q4_K);
    layer_name(n, sizeof(n), 5, "ffn_down");
    assert_int_equal(type_of("Q4_K_M", &hp, n, 4864, 896, false), KVRT_DTYPE_Q6_K);
    layer_name(n, sizeof(n), 0, "ffn_down");
    assert_int_equal(type_of("Q4_K_M", &hp, n, 4864, 896, false), KVRT_DTYPE_Q6_K);
    assert_int_equal(type_of("Q4_K_M", &hp, "output.weight", 896, 151936, false), KVRT_DTYPE_Q8_0);
    /* rows of 100: not even a 32-value block */
    assert_int_equal(kvrt_quant_fallback(KVRT_DTYPE_Q4_K, 100), KVRT_DTYPE_F16);
    assert_int_equal(kvrt_quant_fallback(KVRT_DTYPE_Q4_0, 100), KVRT_DTYPE_F16);
    assert_int_equal(kvrt_quant_fallback(KVRT_DTYPE_Q4_0, 96), KVRT_DTYPE_Q4_0);
    assert_int_equal(kvrt_quant_fallback(KVRT_DTYPE_IQ4_XS, 96), KVRT_DTYPE_IQ4_NL);
}

/* ---- files ------------------------------------------------------------------------- */

typedef struct membuf {
    char *data;
    size_t size;
} membuf;

static const kvrt_llama_hparams *small_shape(void)
{
    /* rows of 256 (k-quants) and ffn_down rows of 96 (fall-backs), GQA 4 */
    static kvrt_llama_hparams hp;
    hp = shape(256, 96, 3, 4, 1);
    return &hp;
}

static membuf synth_mix(const char *preset, bool tied)
{
    kvrt_synth_params p;
    assert_true(kvrt_synth_preset("tiny", &p));
    p.hp = *small_shape();
    p.seed = 11;
    p.tied_output = tied;
    kvrt_quant_mix mix;
    assert_true(kvrt_quant_mix_find(preset, false, &mix));
    p.mix = &mix;
    p.type = mix.base;
    membuf m = {0};
    FILE *f = open_memstream(&m.data, &m.size);
    assert_non_null(f);
    kvrt_error err;
    if (kvrt_synth_write(&p, NULL, f, NULL, &err) != KVRT_OK)
        fail_msg("synth %s: %s", preset, err.message);
    assert_int_equal(fclose(f), 0);
    return m;
}

/* Every preset's file loads with each tensor in the type the rules give it. */
static void test_mix_loads(void **state)
{
    (void)state;
    static const char *const presets[] = {"Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q6_K",   "Q8_0", "Q4_0",
                                          "Q3_K_M", "Q2_K",   "Q4_1",   "Q5_0",   "Q5_1",   "IQ4_NL", "IQ4_XS"};
    for (size_t pi = 0; pi < sizeof(presets) / sizeof(presets[0]); pi++) {
        for (int tied = 0; tied < 2; tied++) {
            membuf m = synth_mix(presets[pi], tied != 0);
            kvrt_model_file *mf;
            kvrt_error err;
            if (kvrt_model_file_load_gguf_memory(m.data, m.size, NULL, false, &mf, &err) != KVRT_OK)
                fail_msg("%s: %s", presets[pi], err.message);
            kvrt_quant_mix mix;
            assert_true(kvrt_quant_mix_find(presets[pi], false, &mix));
            int32_t n = kvrt_llama_tensor_count(mf->hp.n_layer, !tied);
            int distinct = 0;
            kvrt_dtype seen[8];
            for (int32_t i = 0; i < n; i++) {
                char name[64];
                int64_t ne0, ne1;
                kvrt_llama_tensor_desc(&mf->hp, !tied, i, name, sizeof(name), &ne0, &ne1);
                const kvrt_tensor_ref *t = kvrt_llama_tensor_ref(mf, !tied, i);
                kvrt_dtype want = kvrt_quant_mix_type(&mix, &mf->hp, name, ne0, ne1, tied != 0);
                if (t->type != want)
                    fail_msg("%s: %s loaded as %s, want %s", presets[pi], name, kvrt_dtype_name(t->type),
                             kvrt_dtype_name(want));
                int k = 0;
                while (k < distinct && seen[k] != t->type)
                    k++;
                if (k == distinct && distinct < 8)
                    seen[distinct++] = t->type;
            }
            assert_true(distinct >= 2); /* f32 norms and the base type at least */
            kvrt_model_file_free(mf);
            free(m.data);
        }
    }
}

/* kvrt_model_get_info counts the tensors of each type (what kvrt-run -v prints). */
static void test_info_type_counts(void **state)
{
    (void)state;
    membuf m = synth_mix("Q4_K_M", false);
    char path[] = "/tmp/kvrt_test_quant_load_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, m.data, m.size), (ssize_t)m.size);
    close(fd);
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = KVRT_BACKEND_CPU;
    kvrt_context *ctx;
    kvrt_error err;
    assert_int_equal(kvrt_context_create(&cp, &ctx, &err), KVRT_OK);
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_model *model;
    if (kvrt_model_load(ctx, &mp, &model, &err) != KVRT_OK)
        fail_msg("load: %s", err.message);
    kvrt_model_info info;
    assert_int_equal(kvrt_model_get_info(model, &info), KVRT_OK);
    /* 3 layers: norms 2 x 3 + 1 f32; "more bits" in layer 2 only: attn_v q6_K, ffn_down
     * q6_K -> q8_0 (rows of 96); layers 0, 1 ffn_down q4_K -> q5_0; output q6_K; the rest q4_K */
    assert_int_equal(info.tensors_of_type[KVRT_DTYPE_F32], 7);
    assert_int_equal(info.tensors_of_type[KVRT_DTYPE_Q6_K], 2);
    assert_int_equal(info.tensors_of_type[KVRT_DTYPE_Q8_0], 1);
    assert_int_equal(info.tensors_of_type[KVRT_DTYPE_Q5_0], 2);
    assert_int_equal(info.tensors_of_type[KVRT_DTYPE_Q4_K], 18);
    kvrt_model_destroy(model);
    kvrt_context_destroy(ctx);
    unlink(path);
    free(m.data);
}

/* The rule itself, on the CPU backend with its weight types cut to the
 * base set: the first tensor of a type it lacks is named at load. */
static void test_backend_type_set_refuses(void **state)
{
    (void)state;
    membuf m = synth_mix("Q4_K_M", false);
    char path[] = "/tmp/kvrt_test_quant_set_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, m.data, m.size), (ssize_t)m.size);
    close(fd);
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = KVRT_BACKEND_CPU;
    kvrt_context *ctx;
    kvrt_error err;
    assert_int_equal(kvrt_context_create(&cp, &ctx, &err), KVRT_OK);
    const kvrt_backend_ops *full = ctx->be->ops;
    kvrt_backend_ops base = *full;
    base.weight_types = KVRT_WEIGHT_TYPES_BASE;
    ctx->be->ops = &base;
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_model *model = NULL;
    assert_int_equal(kvrt_model_load(ctx, &mp, &model, &err), KVRT_ERR_UNSUPPORTED);
    assert_null(model);
    if (!strstr(err.message, "'token_embd.weight'") || !strstr(err.message, "q4_K") ||
        !strstr(err.message, "cpu backend"))
        fail_msg("message lacks tensor, type or backend: %s", err.message);
    ctx->be->ops = full; /* the full set loads */
    assert_int_equal(kvrt_model_load(ctx, &mp, &model, &err), KVRT_OK);
    kvrt_model_destroy(model);
    kvrt_context_destroy(ctx);
    unlink(path);
    free(m.data);
}

/* Every backend built in loads a mix and runs it (the numbers are
 * test_model_kquant's): no type of a preset is left to the CPU. */
static void expect_loads_on(kvrt_backend_kind kind, const char *path)
{
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = kind;
    kvrt_context *ctx;
    kvrt_error err;
    if (kvrt_context_create(&cp, &ctx, &err) != KVRT_OK) /* CI has lavapipe and PoCL: no skip */
        fail_msg("the %s backend is built in but cannot start: %s", kvrt_backend_name(kind), err.message);
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    kvrt_model *model = NULL;
    if (kvrt_model_load(ctx, &mp, &model, &err) != KVRT_OK)
        fail_msg("%s: %s", kvrt_backend_name(kind), err.message);
    kvrt_session *s = NULL;
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = 64;
    assert_int_equal(kvrt_session_create(model, &sp, &s, &err), KVRT_OK);
    int32_t ids[3] = {1, 7, 9};
    float *logits = malloc(300 * sizeof(float));
    assert_non_null(logits);
    assert_int_equal(kvrt_session_eval(s, ids, 3, logits, NULL), KVRT_OK);
    for (int v = 0; v < 300; v++)
        assert_true(isfinite(logits[v]));
    free(logits);
    kvrt_session_destroy(s);
    kvrt_model_destroy(model);
    kvrt_context_destroy(ctx);
}

static void test_gpu_backends_load_mixes(void **state)
{
    (void)state;
    static const char *const presets[] = {"Q4_K_M", "Q2_K", "IQ4_XS", "Q5_1"};
    kvrt_test_pin_gpu_drivers();
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
        membuf m = synth_mix(presets[i], false);
        char path[] = "/tmp/kvrt_test_quant_gpu_XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, m.data, m.size), (ssize_t)m.size);
        close(fd);
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        expect_loads_on(KVRT_BACKEND_VULKAN, path);
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
        expect_loads_on(KVRT_BACKEND_OPENCL, path);
#endif
        unlink(path);
        free(m.data);
    }
}

/* Byte offset in the file of tensor `name`'s data. */
static size_t tensor_offset(const membuf *m, const char *name, uint32_t *type)
{
    kvrt_gguf *g;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_open_memory(m->data, m->size, NULL, &g, &err), KVRT_OK);
    const kvrt_gguf_tensor *t = kvrt_gguf_find_tensor(g, name);
    assert_non_null(t);
    size_t off = (size_t)(t->data - (const uint8_t *)m->data);
    *type = t->type;
    kvrt_gguf_close(g);
    return off;
}

static void expect_load_error(const membuf *m, size_t size, kvrt_status want, const char *n1, const char *n2)
{
    void *copy = malloc(size);
    assert_non_null(copy);
    memcpy(copy, m->data, size);
    kvrt_model_file *mf;
    kvrt_error err;
    kvrt_status s = kvrt_model_file_load_gguf_memory(copy, size, NULL, false, &mf, &err);
    if (s != want || (n1 && !strstr(err.message, n1)) || (n2 && !strstr(err.message, n2)))
        fail_msg("status %d (want %d): '%s' (want '%s', '%s')", s, want, err.message, n1 ? n1 : "", n2 ? n2 : "");
    if (s == KVRT_OK)
        kvrt_model_file_free(mf);
    free(copy);
}

/* A NaN or infinite scale in any scale field of any k-quant is refused at
 * load, naming the tensor, block and row. */
static void test_nonfinite_scale_refused(void **state)
{
    (void)state;
    static const struct {
        const char *preset, *tensor;
        size_t field; /* byte offset of an f16 scale inside the block */
    } cases[] = {
        {"Q4_K_M", "blk.1.ffn_gate.weight", 0}, {"Q4_K_M", "blk.1.ffn_gate.weight", 2},
        {"Q4_K_M", "output.weight", 208},       {"Q2_K", "blk.0.attn_q.weight", 82},
        {"Q2_K", "blk.0.attn_output.weight", 108},   {"Q5_K_M", "blk.1.attn_q.weight", 2},
        {"Q2_K", "blk.1.ffn_down.weight", 0},   {"IQ4_XS", "blk.2.ffn_up.weight", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        membuf m = synth_mix(cases[i].preset, false);
        expect_load_error(&m, m.size, KVRT_OK, NULL, NULL);
        uint32_t type;
        size_t off = tensor_offset(&m, cases[i].tensor, &type);
        const size_t bb = kvrt_dtype_block_bytes((kvrt_dtype)type);
        /* block 1 of row 2 of a tensor whose rows are ne0 long */
        kvrt_gguf *g;
        kvrt_error err;
        assert_int_equal(kvrt_gguf_open_memory(m.data, m.size, NULL, &g, &err), KVRT_OK);
        int64_t ne0 = kvrt_gguf_find_tensor(g, cases[i].tensor)->ne[0];
        kvrt_gguf_close(g);
        int64_t blocks = ne0 / kvrt_dtype_block_values((kvrt_dtype)type);
        int64_t blk = blocks > 1 ? 1 : 0;
        size_t at = off + (size_t)(2 * blocks + blk) * bb + cases[i].field;
        const uint16_t nan16 = 0x7e00, inf16 = 0xfc00;
        memcpy(m.data + at, i % 2 ? &nan16 : &inf16, 2);
        char where[64];
        snprintf(where, sizeof(where), "block %lld of row 2", (long long)blk);
        expect_load_error(&m, m.size, KVRT_ERR_BAD_MODEL, cases[i].tensor, where);
        free(m.data);
    }
}

/* A tensor info whose row length its type cannot hold. */
static void test_row_length_refused(void **state)
{
    (void)state;
    membuf m = synth_mix("Q4_K_M", false);
    /* the info of blk.0.attn_q.weight: name, n_dims, ne[0] = 256 -> 128 */
    const char *name = "blk.0.attn_q.weight";
    char *p = NULL;
    for (size_t i = 0; !p && i + strlen(name) <= m.size; i++)
        if (!memcmp(m.data + i, name, strlen(name)))
            p = m.data + i;
    assert_non_null(p);
    uint64_t ne0;
    memcpy(&ne0, p + strlen(name) + 4, 8);
    assert_int_equal(ne0, 256);
    ne0 = 128;
    memcpy(p + strlen(name) + 4, &ne0, 8);
    expect_load_error(&m, m.size, KVRT_ERR_BAD_MODEL, name, "not a multiple of the q4_K block (256)");
    free(m.data);
}

/* Truncated anywhere inside the k-quant data: an error naming a tensor, never a read past the end. */
static void test_truncated_blocks(void **state)
{
    (void)state;
    membuf m = synth_mix("Q2_K", true);
    uint32_t type;
    size_t start = tensor_offset(&m, "token_embd.weight", &type);
    for (size_t cut = start; cut < m.size; cut += 1 + (m.size - start) / 300)
        expect_load_error(&m, cut, KVRT_ERR_BAD_MODEL, "GGUF tensor", "outside the file");
    expect_load_error(&m, m.size - 1, KVRT_ERR_BAD_MODEL, "GGUF tensor", "outside the file");
    free(m.data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preset_rules),          cmocka_unit_test(test_fallbacks),
        cmocka_unit_test(test_mix_loads),             cmocka_unit_test(test_info_type_counts),
        cmocka_unit_test(test_nonfinite_scale_refused), cmocka_unit_test(test_row_length_refused),
        cmocka_unit_test(test_truncated_blocks),      cmocka_unit_test(test_backend_type_set_refuses),
        cmocka_unit_test(test_gpu_backends_load_mixes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
