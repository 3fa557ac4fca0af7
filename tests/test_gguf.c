/* GGUF reader, writer and the GGUF -> model file mapping: a real file written
 * by llama.cpp, round trips of every key type, every malformed-input error,
 * truncation at every offset and allocation failures. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/gguf.h"
#include "model/model_file.h"
#include "model/synth.h"
#include "test_models.h"

/* ---- helpers ------------------------------------------------------------------------ */

static char *model_path(const char *name)
{
    static char buf[4096];
    kvrt_test_require_model(name, buf, sizeof(buf)); /* a missing file fails naming its path */
    return buf;
}

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return b;
}

/* A memory stream the writer can fill. */
typedef struct membuf {
    char *data;
    size_t size;
    FILE *f;
} membuf;

static void mem_open(membuf *m)
{
    m->data = NULL;
    m->size = 0;
    m->f = open_memstream(&m->data, &m->size);
    assert_non_null(m->f);
}

static void mem_close(membuf *m)
{
    assert_int_equal(fclose(m->f), 0);
}

static kvrt_synth_params tiny_params(kvrt_dtype type)
{
    kvrt_synth_params p;
    assert_true(kvrt_synth_preset("tiny", &p));
    p.type = type;
    p.tied_output = true;
    p.seed = 7;
    return p;
}

static membuf tiny_gguf(void)
{
    kvrt_synth_params p = tiny_params(KVRT_DTYPE_F16);
    membuf m;
    mem_open(&m);
    kvrt_error err;
    assert_int_equal(kvrt_synth_write(&p, NULL, m.f, NULL, &err), KVRT_OK);
    mem_close(&m);
    return m;
}

/* Loads exactly `size` bytes from a heap copy of that size, so ASan sees any over-read. */
static kvrt_status load_exact(const void *data, size_t size, bool vocab_only_ok, const kvrt_allocator *alloc,
                              kvrt_error *err)
{
    void *copy = malloc(size ? size : 1);
    assert_non_null(copy);
    memcpy(copy, data, size);
    kvrt_model_file *mf = (kvrt_model_file *)&mf;
    kvrt_error_clear(err);
    kvrt_status s = kvrt_model_file_load_gguf_memory(copy, size, alloc, vocab_only_ok, &mf, err);
    if (s == KVRT_OK) {
        assert_non_null(mf);
        kvrt_model_file_free(mf);
    } else {
        assert_null(mf);
        assert_int_equal(err->status, s);
        assert_true(strlen(err->message) > 0);
    }
    free(copy);
    return s;
}

/* ---- a hand-built llama GGUF with one thing wrong ------------------------------------------ */

typedef struct build_opts {
    kvrt_llama_hparams hp;
    int32_t n_vocab_tokens;  /* tokens in the vocabulary (default hp.n_vocab) */
    const char *skip_tensor; /* omit this tensor */
    const char *mod_tensor;  /* give this tensor mod_type / mod_ne1 */
    uint32_t mod_type;
    int64_t mod_ne0, mod_ne1;
    const char *extra_key;   /* an extra string key (extra_val) or f32 key (extra_f32 when extra_val NULL) */
    const char *extra_val;
    float extra_f32;
    bool no_tensors;
    bool extra_rope_freqs;   /* add a rope_freqs.weight tensor */
} build_opts;

static build_opts default_opts(void)
{
    build_opts o;
    memset(&o, 0, sizeof(o));
    kvrt_synth_params p = tiny_params(KVRT_DTYPE_F32);
    o.hp = p.hp;
    return o;
}

/* Adds the tensor infos; sizes[] gets each tensor's bytes, in order. */
static int add_tensor_infos(kvrt_gguf_writer *w, const build_opts *o, uint64_t *sizes)
{
    int count = 0;
    int32_t n = kvrt_llama_tensor_count(o->hp.n_layer, true);
    for (int32_t i = 0; i < n; i++) {
        char name[64];
        int64_t ne[2];
        uint32_t type = 0;
        kvrt_llama_tensor_desc(&o->hp, true, i, name, sizeof(name), &ne[0], &ne[1]);
        if (o->skip_tensor && !strcmp(name, o->skip_tensor))
            continue;
        if (o->mod_tensor && !strcmp(name, o->mod_tensor)) {
            type = o->mod_type;
            ne[0] = o->mod_ne0 ? o->mod_ne0 : ne[0];
            ne[1] = o->mod_ne1 ? o->mod_ne1 : ne[1];
        }
        uint32_t nd = ne[1] == 1 ? 1 : 2;
        assert_int_equal(kvrt_gguf_writer_add_tensor(w, name, type, nd, ne), KVRT_OK);
        sizes[count++] = kvrt_gguf_tensor_nbytes(type, nd, ne);
    }
    if (o->extra_rope_freqs) {
        int64_t ne[1] = {o->hp.n_embd / o->hp.n_head / 2};
        assert_int_equal(kvrt_gguf_writer_add_tensor(w, "rope_freqs.weight", 0, 1, ne), KVRT_OK);
        sizes[count++] = kvrt_gguf_tensor_nbytes(0, 1, ne);
    }
    return count;
}

static membuf build(const build_opts *o)
{
    kvrt_gguf_writer *w;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_writer_create(NULL, 0, &w, &err), KVRT_OK);
    kvrt_vocab v;
    assert_int_equal(kvrt_synth_vocab(NULL, o->n_vocab_tokens ? o->n_vocab_tokens : o->hp.n_vocab, &v, &err),
                     KVRT_OK);
    if (!o->no_tensors)
        assert_int_equal(kvrt_llama_add_hparams(w, &o->hp, "test"), KVRT_OK);
    assert_int_equal(kvrt_llama_add_vocab(w, &v), KVRT_OK);
    kvrt_vocab_free(NULL, &v);
    if (o->extra_key) {
        kvrt_status s = o->extra_val ? kvrt_gguf_writer_add_string(w, o->extra_key, o->extra_val)
                                     : kvrt_gguf_writer_add_f32(w, o->extra_key, o->extra_f32);
        assert_int_equal(s, KVRT_OK);
    }
    uint64_t sizes[64];
    int n = o->no_tensors ? 0 : add_tensor_infos(w, o, sizes);
    membuf m;
    mem_open(&m);
    assert_int_equal(kvrt_gguf_writer_write_header(w, m.f), KVRT_OK);
    for (int i = 0; i < n; i++) {
        void *zeros = calloc(1, (size_t)sizes[i]);
        assert_int_equal(kvrt_gguf_writer_write_data(w, m.f, zeros, (size_t)sizes[i]), KVRT_OK);
        free(zeros);
    }
    assert_int_equal(kvrt_gguf_writer_finish(w, m.f), KVRT_OK);
    kvrt_gguf_writer_destroy(w);
    mem_close(&m);
    return m;
}

static void expect(const build_opts *o, bool vocab_only_ok, kvrt_status want, const char *needle1,
                   const char *needle2)
{
    membuf m = build(o);
    kvrt_error err;
    kvrt_status s = load_exact(m.data, m.size, vocab_only_ok, NULL, &err);
    if (s != want || (needle1 && !strstr(err.message, needle1)) || (needle2 && !strstr(err.message, needle2)))
        fail_msg("status %d (want %d), message '%s' (want '%s' and '%s')", s, want, err.message,
                 needle1 ? needle1 : "", needle2 ? needle2 : "");
    free(m.data);
}

/* ---- the real file --------------------------------------------------------------------------- */

static void test_reads_llama_cpp_file(void **state)
{
    (void)state;
    kvrt_gguf *g;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_open(model_path("stories260K.gguf"), NULL, &g, &err), KVRT_OK);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_kv, 19);
    assert_int_equal(g->n_tensors, 48);
    assert_int_equal(g->alignment, 32);
    const struct {
        const char *key;
        uint32_t v;
    } u32s[] = {{"llama.context_length", 128},      {"llama.embedding_length", 64},
                {"llama.feed_forward_length", 172}, {"llama.attention.head_count", 8},
                {"llama.attention.head_count_kv", 4}, {"llama.block_count", 5},
                {"llama.rope.dimension_count", 8},  {"tokenizer.ggml.unknown_token_id", 0},
                {"tokenizer.ggml.bos_token_id", 1}, {"tokenizer.ggml.eos_token_id", 2},
                {"tokenizer.ggml.seperator_token_id", 4294967295u},
                {"tokenizer.ggml.padding_token_id", 4294967295u}};
    for (size_t i = 0; i < sizeof(u32s) / sizeof(u32s[0]); i++) {
        const kvrt_gguf_kv *kv = kvrt_gguf_find_kv(g, u32s[i].key);
        assert_non_null(kv);
        assert_int_equal(kv->type, KVRT_GGUF_U32);
        uint32_t v;
        assert_int_equal(kvrt_gguf_get_u32(g, u32s[i].key, &v, NULL, &err), KVRT_OK);
        assert_int_equal(v, u32s[i].v);
    }
    float eps;
    assert_int_equal(kvrt_gguf_find_kv(g, "llama.attention.layer_norm_rms_epsilon")->type, KVRT_GGUF_F32);
    assert_int_equal(kvrt_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps, NULL, &err), KVRT_OK);
    assert_true(eps == 1e-5f);
    const char *strs[][2] = {{"general.architecture", "llama"}, {"general.name", "llama"},
                             {"tokenizer.ggml.model", "llama"}};
    for (size_t i = 0; i < 3; i++) {
        kvrt_gguf_str s;
        assert_int_equal(kvrt_gguf_get_str(g, strs[i][0], &s, NULL, &err), KVRT_OK);
        assert_true(kvrt_gguf_str_eq(s, strs[i][1]));
    }
    const kvrt_gguf_kv *tokens, *scores, *types;
    assert_int_equal(kvrt_gguf_get_arr(g, "tokenizer.ggml.tokens", KVRT_GGUF_STRING, &tokens, &err), KVRT_OK);
    assert_int_equal(kvrt_gguf_get_arr(g, "tokenizer.ggml.scores", KVRT_GGUF_F32, &scores, &err), KVRT_OK);
    assert_int_equal(kvrt_gguf_get_arr(g, "tokenizer.ggml.token_type", KVRT_GGUF_I32, &types, &err), KVRT_OK);
    assert_int_equal(tokens->n, 512);
    assert_int_equal(scores->n, 512);
    assert_int_equal(types->n, 512);
    assert_true(kvrt_gguf_str_eq(tokens->strs[0], "<unk>"));
    assert_true(kvrt_gguf_str_eq(tokens->strs[1], "<s>"));
    assert_true(kvrt_gguf_str_eq(tokens->strs[3], "<0x00>"));
    assert_true(kvrt_gguf_str_eq(tokens->strs[259], "\xe2\x96\x81t"));
    assert_int_equal(kvrt_gguf_kv_int(types, 0), 2);
    assert_int_equal(kvrt_gguf_kv_int(types, 2), 3);
    assert_int_equal(kvrt_gguf_kv_int(types, 258), 6);
    assert_int_equal(kvrt_gguf_kv_int(types, 259), 1);
    assert_true(kvrt_gguf_kv_float(scores, 261) == -2.0);
    /* a wrong-type request names the key */
    assert_int_equal(kvrt_gguf_get_arr(g, "tokenizer.ggml.scores", KVRT_GGUF_I32, &scores, &err), KVRT_ERR_BAD_MODEL);
    assert_non_null(strstr(err.message, "tokenizer.ggml.scores"));
    assert_int_equal(kvrt_gguf_get_u32(g, "general.name", &(uint32_t){0}, NULL, &err), KVRT_ERR_BAD_MODEL);

    const kvrt_gguf_tensor *t = kvrt_gguf_find_tensor(g, "output.weight");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(t->ne[1], 512);
    assert_int_equal(t->type, 0);
    assert_int_equal(t->offset, 131328);
    assert_int_equal(t->nbytes, 64 * 512 * 4);
    t = kvrt_gguf_find_tensor(g, "blk.4.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->ne[0], 172);
    assert_int_equal(t->ne[1], 64);
    t = kvrt_gguf_find_tensor(g, "blk.2.attn_norm.weight");
    assert_int_equal(t->n_dims, 1);
    assert_int_equal(t->ne[0], 64);
    assert_int_equal(g->data_offset, 14176);
    assert_int_equal(g->data_offset + g->tensors[47].offset + g->tensors[47].nbytes, g->size);
    assert_null(kvrt_gguf_find_tensor(g, "blk.5.attn_q.weight"));
    kvrt_gguf_close(g);
}

static void count_progress(void *user, double fraction)
{
    double *last = user;
    assert_true(fraction >= *last && fraction <= 1.0);
    *last = fraction;
}

static void test_model_file_from_llama_cpp_file(void **state)
{
    (void)state;
    kvrt_model_file *mf;
    kvrt_error err;
    double last = 0.0;
    kvrt_load_progress pr = {count_progress, &last};
    assert_int_equal(kvrt_model_file_load_gguf(model_path("stories260K.gguf"), NULL, false, &pr, &mf, &err), KVRT_OK);
    assert_true(last == 1.0);
    assert_string_equal(mf->arch, "llama");
    assert_int_equal(mf->hp.n_ctx_train, 128);
    assert_int_equal(mf->hp.n_embd, 64);
    assert_int_equal(mf->hp.n_head, 8);
    assert_int_equal(mf->hp.n_head_kv, 4);
    assert_int_equal(mf->hp.head_dim, 8);
    assert_int_equal(mf->hp.rope_dim, 8);
    assert_int_equal(mf->hp.n_vocab, 512);
    assert_true(mf->hp.rope_freq_base == 10000.0f);
    assert_true(mf->hp.rms_eps == 1e-5f);
    assert_false(mf->vocab_only);
    assert_non_null(mf->mapping);
    assert_true(mf->w.output.data != mf->w.tok_embd.data); /* written out, not tied */
    assert_int_equal(mf->w.layers[4].ffn_down.ne[0], 172);
    assert_int_equal(mf->vocab.n_tokens, 512);
    assert_int_equal(mf->vocab.bos_id, 1);
    assert_int_equal(mf->vocab.eos_id, 2);
    assert_int_equal(mf->vocab.unk_id, 0);
    assert_true(mf->vocab.add_bos);
    assert_true(mf->vocab.add_space_prefix);
    assert_string_equal(mf->vocab.pieces[260], "he");
    assert_int_equal(mf->vocab.piece_lens[259], 4);
    assert_int_equal(mf->vocab.types[5], KVRT_TOKEN_BYTE);
    kvrt_model_file_free(mf);
    kvrt_model_file_free(NULL);
}

/* ---- writer round trip ------------------------------------------------------------------------ */

static void test_round_trip_every_type(void **state)
{
    (void)state;
    kvrt_gguf_writer *w;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_writer_create(NULL, 64, &w, &err), KVRT_OK);
    uint8_t u8 = 250;
    int8_t i8 = -100;
    uint16_t u16 = 65000;
    int16_t i16 = -32000;
    uint32_t u32 = 4000000000u;
    int32_t i32 = -2000000000;
    float f32 = 3.25f;
    uint8_t b = 1;
    uint64_t u64 = 18000000000000000000ull;
    int64_t i64 = -9000000000000000000ll;
    double f64 = -1.0e300;
    const void *vals[] = {&u8, &i8, &u16, &i16, &u32, &i32, &f32, &b, NULL, NULL, &u64, &i64, &f64};
    char key[32];
    for (int t = 0; t < KVRT_GGUF_TYPE_COUNT; t++) {
        if (!vals[t])
            continue;
        snprintf(key, sizeof(key), "s.%s", kvrt_gguf_type_name(t));
        assert_int_equal(kvrt_gguf_writer_add_scalar(w, key, t, vals[t]), KVRT_OK);
        uint8_t arr[3 * 8];
        size_t es = kvrt_gguf_type_size(t);
        for (int k = 0; k < 3; k++)
            memcpy(arr + k * es, vals[t], es);
        snprintf(key, sizeof(key), "a.%s", kvrt_gguf_type_name(t));
        assert_int_equal(kvrt_gguf_writer_add_array(w, key, t, arr, 3), KVRT_OK);
    }
    assert_int_equal(kvrt_gguf_writer_add_string(w, "s.string", "h\xc3\xa9llo"), KVRT_OK);
    const char *strs[] = {"", "a", "\xe2\x96\x81the"};
    assert_int_equal(kvrt_gguf_writer_add_string_array(w, "a.string", strs, NULL, 3), KVRT_OK);
    assert_int_equal(kvrt_gguf_writer_add_array(w, "a.empty", KVRT_GGUF_I32, NULL, 0), KVRT_OK);
    assert_int_equal(kvrt_gguf_writer_add_scalar(w, "bad", KVRT_GGUF_STRING, "x"), KVRT_ERR_INVALID_ARGUMENT);
    int64_t ne_a[2] = {32, 3}, ne_b[1] = {5};
    assert_int_equal(kvrt_gguf_writer_add_tensor(w, "q", KVRT_DTYPE_Q8_0, 2, ne_a), KVRT_OK);
    assert_int_equal(kvrt_gguf_writer_add_tensor(w, "f", KVRT_DTYPE_F32, 1, ne_b), KVRT_OK);
    int64_t ne_bad[2] = {31, 1};
    assert_int_equal(kvrt_gguf_writer_add_tensor(w, "x", KVRT_DTYPE_Q4_0, 2, ne_bad), KVRT_ERR_INVALID_ARGUMENT);
    membuf m;
    mem_open(&m);
    assert_int_equal(kvrt_gguf_writer_write_header(w, m.f), KVRT_OK);
    uint8_t qdata[3 * 34];
    for (size_t i = 0; i < sizeof(qdata); i++)
        qdata[i] = (uint8_t)i;
    float fdata[5] = {1, 2, 3, 4, 5};
    assert_int_equal(kvrt_gguf_writer_finish(w, m.f), KVRT_ERR_INVALID_ARGUMENT); /* nothing written yet */
    assert_int_equal(kvrt_gguf_writer_write_data(w, m.f, qdata, 40), KVRT_OK);   /* in pieces */
    assert_int_equal(kvrt_gguf_writer_write_data(w, m.f, qdata + 40, sizeof(qdata) - 40), KVRT_OK);
    assert_int_equal(kvrt_gguf_writer_write_data(w, m.f, fdata, 24), KVRT_ERR_INVALID_ARGUMENT); /* too many */
    assert_int_equal(kvrt_gguf_writer_write_data(w, m.f, fdata, sizeof(fdata)), KVRT_OK);
    assert_int_equal(kvrt_gguf_writer_finish(w, m.f), KVRT_OK);
    kvrt_gguf_writer_destroy(w);
    mem_close(&m);

    kvrt_gguf *g;
    assert_int_equal(kvrt_gguf_open_memory(m.data, m.size, NULL, &g, &err), KVRT_OK);
    assert_int_equal(g->alignment, 64);
    assert_int_equal(g->n_kv, 1 + 2 * 11 + 3);
    for (int t = 0; t < KVRT_GGUF_TYPE_COUNT; t++) {
        if (!vals[t])
            continue;
        size_t es = kvrt_gguf_type_size(t);
        snprintf(key, sizeof(key), "s.%s", kvrt_gguf_type_name(t));
        const kvrt_gguf_kv *kv = kvrt_gguf_find_kv(g, key);
        assert_non_null(kv);
        assert_int_equal(kv->type, t);
        assert_memory_equal(kv->data, vals[t], es);
        snprintf(key, sizeof(key), "a.%s", kvrt_gguf_type_name(t));
        kv = kvrt_gguf_find_kv(g, key);
        assert_int_equal(kv->type, KVRT_GGUF_ARRAY);
        assert_int_equal(kv->arr_type, t);
        assert_int_equal(kv->n, 3);
        assert_memory_equal(kv->data + 2 * es, vals[t], es);
    }
    assert_int_equal(kvrt_gguf_kv_int(kvrt_gguf_find_kv(g, "s.i64"), 0), i64);
    assert_true(kvrt_gguf_kv_uint(kvrt_gguf_find_kv(g, "s.u64"), 0) == u64);
    assert_true(kvrt_gguf_kv_float(kvrt_gguf_find_kv(g, "a.f64"), 1) == f64);
    assert_int_equal(kvrt_gguf_kv_int(kvrt_gguf_find_kv(g, "a.i16"), 2), i16);
    bool bv = false;
    assert_int_equal(kvrt_gguf_get_bool(g, "s.bool", &bv, NULL, &err), KVRT_OK);
    assert_true(bv);
    uint32_t got;
    assert_int_equal(kvrt_gguf_get_u32(g, "s.i32", &got, NULL, &err), KVRT_ERR_BAD_MODEL); /* negative */
    assert_int_equal(kvrt_gguf_get_u32(g, "s.u16", &got, NULL, &err), KVRT_OK);
    assert_int_equal(got, u16);
    bool found = true;
    assert_int_equal(kvrt_gguf_get_u32(g, "nope", &got, &found, &err), KVRT_OK);
    assert_false(found);
    assert_int_equal(kvrt_gguf_get_u32(g, "nope", &got, NULL, &err), KVRT_ERR_BAD_MODEL);
    kvrt_gguf_str s;
    assert_int_equal(kvrt_gguf_get_str(g, "s.string", &s, NULL, &err), KVRT_OK);
    assert_true(kvrt_gguf_str_eq(s, "h\xc3\xa9llo"));
    const kvrt_gguf_kv *sa = kvrt_gguf_find_kv(g, "a.string");
    assert_int_equal(sa->n, 3);
    for (int k = 0; k < 3; k++)
        assert_true(kvrt_gguf_str_eq(sa->strs[k], strs[k]));
    assert_int_equal(kvrt_gguf_find_kv(g, "a.empty")->n, 0);
    const kvrt_gguf_tensor *tq = kvrt_gguf_find_tensor(g, "q"), *tf = kvrt_gguf_find_tensor(g, "f");
    assert_int_equal(g->data_offset % 64, 0);
    assert_int_equal(tq->offset, 0);
    assert_int_equal(tf->offset, 128); /* 102 bytes padded to 64 */
    assert_memory_equal(tq->data, qdata, sizeof(qdata));
    assert_memory_equal(tf->data, fdata, sizeof(fdata));
    kvrt_gguf_close(g);
    free(m.data);
}

/* ---- malformed input ---------------------------------------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

/* Offset of a tensor info's name in the header (the name's 8-byte length precedes it). */
static size_t find_name(const membuf *m, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 8; i + n <= m->size; i++)
        if (!memcmp(m->data + i, name, n) && m->data[i - 8] == (char)n)
            return i;
    fail_msg("name %s not found", name);
    return 0;
}

static void expect_bytes(const membuf *m, kvrt_status want, const char *needle)
{
    kvrt_error err;
    kvrt_status s = load_exact(m->data, m->size, false, NULL, &err);
    if (s != want || (needle && !strstr(err.message, needle)))
        fail_msg("status %d (want %d), message '%s' (want '%s')", s, want, err.message, needle ? needle : "");
}

static void test_header_errors(void **state)
{
    (void)state;
    membuf m = build(&(build_opts){.hp = default_opts().hp});
    expect_bytes(&m, KVRT_OK, NULL);
    uint8_t *b = (uint8_t *)m.data;
    memcpy(b, "GGUG", 4);
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "not a GGUF file");
    memcpy(b, "GGUF", 4);
    put_u32(b + 4, 1);
    expect_bytes(&m, KVRT_ERR_UNSUPPORTED, "version 1");
    put_u32(b + 4, 0x03000000);
    expect_bytes(&m, KVRT_ERR_UNSUPPORTED, "big-endian");
    put_u32(b + 4, 2); /* v2 has the v3 layout */
    expect_bytes(&m, KVRT_OK, NULL);
    put_u32(b + 4, 3);
    uint64_t nt, nk;
    memcpy(&nt, b + 8, 8);
    memcpy(&nk, b + 16, 8);
    put_u64(b + 8, UINT64_MAX / 2);
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "cannot fit");
    put_u64(b + 8, nt);
    put_u64(b + 16, nk + 1); /* one more key than present: runs into the tensor infos */
    assert_int_not_equal(load_exact(m.data, m.size, false, NULL, &(kvrt_error){0}), KVRT_OK);
    put_u64(b + 16, nk);

    /* tensor infos: the field after the name is n_dims, then ne[], type, offset */
    size_t at = find_name(&m, "blk.0.attn_q.weight") + strlen("blk.0.attn_q.weight");
    uint8_t saved[64];
    memcpy(saved, b + at, sizeof(saved));
    put_u32(b + at, 5);
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "5 dimensions");
    memcpy(b + at, saved, sizeof(saved));
    put_u64(b + at + 4, 1ull << 62); /* ne0 * ne1 overflows */
    put_u64(b + at + 12, 1ull << 62);
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "overflow");
    memcpy(b + at, saved, sizeof(saved));
    put_u32(b + at + 20, 12); /* q4_K: row 8 not a multiple of 256 */
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "q4_K");
    put_u32(b + at + 20, 1000);
    expect_bytes(&m, KVRT_ERR_UNSUPPORTED, "unknown tensor type id 1000");
    memcpy(b + at, saved, sizeof(saved));
    put_u64(b + at + 24, 1ull << 40); /* offset outside the file */
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "blk.0.attn_q.weight");
    put_u64(b + at + 24, UINT64_MAX - 31); /* offset + size overflows */
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "outside the file");
    put_u64(b + at + 24, 4); /* misaligned */
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "alignment");
    memcpy(b + at, saved, sizeof(saved));
    /* a duplicate tensor name */
    size_t other = find_name(&m, "blk.0.attn_k.weight");
    b[other + 11] = 'q';
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "appears twice");
    b[other + 11] = 'k';
    expect_bytes(&m, KVRT_OK, NULL);
    free(m.data);
}

static void test_model_errors(void **state)
{
    (void)state;
    build_opts o = default_opts();
    expect(&o, false, KVRT_OK, NULL, NULL);

    o = default_opts();
    o.skip_tensor = "blk.0.ffn_up.weight";
    expect(&o, false, KVRT_ERR_BAD_MODEL, "blk.0.ffn_up.weight", "missing");
    o.skip_tensor = "output.weight"; /* absent classifier = tied: fine */
    expect(&o, false, KVRT_OK, NULL, NULL);

    o = default_opts();
    o.mod_tensor = "blk.0.attn_k.weight";
    o.mod_ne1 = 8;
    expect(&o, false, KVRT_ERR_BAD_MODEL, "blk.0.attn_k.weight", "[8, 8], expected [8, 4]");
    o.mod_tensor = "token_embd.weight";
    o.mod_ne1 = 100;
    expect(&o, false, KVRT_ERR_BAD_MODEL, "token_embd.weight", "expected [8, 262]");
    o.mod_tensor = "blk.0.ffn_norm.weight";
    o.mod_ne1 = 0;
    o.mod_type = KVRT_DTYPE_F16;
    expect(&o, false, KVRT_ERR_UNSUPPORTED, "blk.0.ffn_norm.weight", "f16");

    /* k-quants and iq4 load; the grid types and TQ are refused naming type and tensor */
    o = default_opts();
    o.hp.n_embd = 256;
    o.hp.n_head = 2;
    o.hp.n_head_kv = 2;
    o.mod_tensor = "blk.0.attn_q.weight";
    static const uint32_t runs[] = {3, 6, 7, 10, 11, 12, 13, 14, 20, 23};
    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
        o.mod_type = runs[i];
        expect(&o, false, KVRT_OK, NULL, NULL);
    }
    static const struct {
        uint32_t id;
        const char *name;
    } refused[] = {{16, "iq2_xxs"}, {17, "iq2_xs"}, {18, "iq3_xxs"}, {19, "iq1_s"}, {21, "iq3_s"},
                   {22, "iq2_s"},   {29, "iq1_m"},  {34, "tq1_0"},   {35, "tq2_0"}, {15, "q8_K"}};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        o.mod_type = refused[i].id;
        expect(&o, false, KVRT_ERR_UNSUPPORTED, "blk.0.attn_q.weight", refused[i].name);
    }

    o = default_opts();
    o.hp.n_head = 3; /* 8 % 3 */
    expect(&o, false, KVRT_ERR_BAD_MODEL, "n_embd 8 is not a multiple of n_head 3", NULL);
    o = default_opts();
    o.hp.n_head = 4;
    o.hp.n_head_kv = 3;
    expect(&o, false, KVRT_ERR_BAD_MODEL, "n_head 4 is not a multiple of n_head_kv 3", NULL);

    o = default_opts();
    o.extra_key = "llama.rope.scaling.type";
    o.extra_val = "longrope";
    expect(&o, false, KVRT_ERR_UNSUPPORTED, "longrope", "none, linear, yarn");
    o.extra_val = "linear"; /* supported since the architectures work; its numbers: test_model_arch */
    expect(&o, false, KVRT_OK, NULL, NULL);
    o.extra_key = "llama.rope.scaling.factor";
    o.extra_val = NULL;
    o.extra_f32 = -4.0f;
    expect(&o, false, KVRT_ERR_BAD_MODEL, "factor -4 must be positive", NULL);
    o = default_opts();
    o.extra_rope_freqs = true;
    /* Llama 3.1's per-pair divisors are read now; zeros are refused (the rest: test_model_arch) */
    expect(&o, false, KVRT_ERR_BAD_MODEL, "rope_freqs.weight[0] = 0", "finite and positive");

    o = default_opts();
    o.n_vocab_tokens = 300; /* vocabulary larger than token_embd */
    expect(&o, false, KVRT_ERR_BAD_MODEL, "token_embd.weight", NULL);
}

static void test_vocab_only(void **state)
{
    (void)state;
    build_opts o = default_opts();
    o.no_tensors = true;
    expect(&o, false, KVRT_ERR_BAD_MODEL, "no tensors", NULL);
    membuf m = build(&o);
    kvrt_model_file *mf;
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_gguf_memory(m.data, m.size, NULL, true, &mf, &err), KVRT_OK);
    assert_true(mf->vocab_only);
    assert_int_equal(mf->vocab.n_tokens, 262);
    assert_null(mf->w.layers);
    assert_string_equal(mf->vocab.pieces[3], "<0x00>");
    assert_string_equal(mf->vocab.pieces[259], "\xe2\x96\x81");
    assert_string_equal(mf->vocab.pieces[260], "a");
    assert_string_equal(mf->vocab.pieces[261], "\xe2\x96\x81" "a");
    kvrt_model_file_free(mf);
    free(m.data);
}

static void test_tokenizer_errors(void **state)
{
    (void)state;
    /* Other tokenizer models are rejected by name: patch "llama" in the model value. */
    membuf m = build(&(build_opts){.hp = default_opts().hp});
    size_t at = find_name(&m, "tokenizer.ggml.model") + strlen("tokenizer.ggml.model") + 4 + 8;
    assert_memory_equal(m.data + at, "llama", 5);
    memcpy(m.data + at, "gpt2x", 5);
    expect_bytes(&m, KVRT_ERR_UNSUPPORTED, "gpt2x");
    memcpy(m.data + at, "llama", 5);
    /* the architecture too */
    at = find_name(&m, "general.architecture") + strlen("general.architecture") + 4 + 8;
    memcpy(m.data + at, "bert!", 5);
    expect_bytes(&m, KVRT_ERR_UNSUPPORTED, "bert!");
    memcpy(m.data + at, "llama", 5);
    /* a BOS id outside the vocabulary; 4294967295 means none */
    at = find_name(&m, "tokenizer.ggml.bos_token_id") + strlen("tokenizer.ggml.bos_token_id") + 4;
    put_u32((uint8_t *)m.data + at, 5000);
    expect_bytes(&m, KVRT_ERR_BAD_TOKENIZER, "bos_token_id");
    put_u32((uint8_t *)m.data + at, 4294967295u);
    kvrt_model_file *mf;
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_gguf_memory(m.data, m.size, NULL, false, &mf, &err), KVRT_OK);
    assert_int_equal(mf->vocab.bos_id, -1);
    kvrt_model_file_free(mf);
    /* a layer count far beyond the tensors fails before anything is sized by it */
    at = find_name(&m, "llama.block_count") + strlen("llama.block_count") + 4;
    put_u32((uint8_t *)m.data + at, 2000000000u);
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "block_count");
    put_u32((uint8_t *)m.data + at, 0);
    expect_bytes(&m, KVRT_ERR_BAD_MODEL, "n_layer = 0");
    put_u32((uint8_t *)m.data + at, 1);
    /* a token type outside 1..6 */
    at = find_name(&m, "tokenizer.ggml.token_type") + strlen("tokenizer.ggml.token_type") + 4 + 4 + 8;
    put_u32((uint8_t *)m.data + at + 4 * 10, 9);
    expect_bytes(&m, KVRT_ERR_BAD_TOKENIZER, "token 10");
    free(m.data);
}

static void test_alignment_key(void **state)
{
    (void)state;
    kvrt_gguf_writer *w;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_writer_create(NULL, 24, &w, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(w);
    assert_int_equal(kvrt_gguf_writer_create(NULL, 16, &w, &err), KVRT_OK);
    membuf m;
    mem_open(&m);
    assert_int_equal(kvrt_gguf_writer_write_header(w, m.f), KVRT_OK);
    assert_int_equal(kvrt_gguf_writer_finish(w, m.f), KVRT_OK);
    kvrt_gguf_writer_destroy(w);
    mem_close(&m);
    kvrt_gguf *g;
    assert_int_equal(kvrt_gguf_open_memory(m.data, m.size, NULL, &g, &err), KVRT_OK);
    assert_int_equal(g->alignment, 16);
    kvrt_gguf_close(g);
    size_t at = find_name(&m, "general.alignment") + strlen("general.alignment") + 4;
    put_u32((uint8_t *)m.data + at, 24);
    assert_int_equal(kvrt_gguf_open_memory(m.data, m.size, NULL, &g, &err), KVRT_ERR_BAD_MODEL);
    assert_non_null(strstr(err.message, "power of two"));
    put_u32((uint8_t *)m.data + at, 0);
    assert_int_equal(kvrt_gguf_open_memory(m.data, m.size, NULL, &g, &err), KVRT_ERR_BAD_MODEL);
    free(m.data);
}

/* ---- truncation -------------------------------------------------------------------------------- */

static void test_truncation_every_offset_tiny(void **state)
{
    (void)state;
    membuf m = tiny_gguf();
    assert_true(m.size > 4000 && m.size < 20000);
    kvrt_error err;
    assert_int_equal(load_exact(m.data, m.size, false, NULL, &err), KVRT_OK);
    for (size_t len = 0; len < m.size; len++) {
        for (int vo = 0; vo < 2; vo++) {
            kvrt_status s = load_exact(m.data, len, vo, NULL, &err);
            if (s != KVRT_ERR_BAD_MODEL)
                fail_msg("truncated at %zu (vocab_only_ok %d): status %d '%s'", len, vo, s, err.message);
        }
    }
    free(m.data);
}

static void test_truncation_sample_stories(void **state)
{
    (void)state;
    size_t size;
    uint8_t *b = read_all(model_path("stories260K.gguf"), &size);
    kvrt_error err;
    assert_int_equal(load_exact(b, size, false, NULL, &err), KVRT_OK);
    size_t lens[] = {0, 3, 4, 7, 8, 23, 24, 25, 14151, 14152, 14175, 14176, 14177, 131072, size / 2, size - 1};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        assert_int_equal(load_exact(b, lens[i], false, NULL, &err), KVRT_ERR_BAD_MODEL);
    for (size_t len = 1; len < size; len += 7919) /* a prime stride through header and data */
        assert_int_equal(load_exact(b, len, false, NULL, &err), KVRT_ERR_BAD_MODEL);
    for (size_t len = 24; len < 14176; len += 37)
        assert_int_equal(load_exact(b, len, false, NULL, &err), KVRT_ERR_BAD_MODEL);
    /* through the mmap path too */
    char path[] = "/tmp/kvrt_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, b, size / 3), (ssize_t)(size / 3));
    close(fd);
    kvrt_model_file *mf;
    assert_int_equal(kvrt_model_file_load_gguf(path, NULL, false, NULL, &mf, &err), KVRT_ERR_BAD_MODEL);
    assert_non_null(strstr(err.message, "outside the file"));
    assert_int_equal(truncate(path, 0), 0);
    assert_int_equal(kvrt_model_file_load_gguf(path, NULL, false, NULL, &mf, &err), KVRT_ERR_BAD_MODEL);
    unlink(path);
    assert_int_equal(kvrt_model_file_load_gguf(path, NULL, false, NULL, &mf, &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, path));
    free(b);
}

/* ---- allocation failures ------------------------------------------------------------------------- */

typedef struct failing_alloc {
    int fail_at; /* the allocation index that fails; -1 never */
    int count;
    int live;
} failing_alloc;

static void *fa_alloc(void *user, size_t size, size_t alignment)
{
    failing_alloc *fa = user;
    if (fa->count++ == fa->fail_at)
        return NULL;
    void *p = NULL;
    if (posix_memalign(&p, alignment < sizeof(void *) ? sizeof(void *) : alignment, size) != 0)
        return NULL;
    fa->live++;
    return p;
}

static void fa_free(void *user, void *p)
{
    failing_alloc *fa = user;
    fa->live--;
    free(p);
}

static void test_allocation_failures(void **state)
{
    (void)state;
    membuf m = tiny_gguf();
    int n_ok = 0;
    for (int k = 0;; k++) {
        failing_alloc fa = {k, 0, 0};
        kvrt_allocator a = {fa_alloc, fa_free, &fa};
        kvrt_error err;
        kvrt_status s = load_exact(m.data, m.size, false, &a, &err);
        assert_int_equal(fa.live, 0); /* nothing leaked, whatever failed */
        if (s == KVRT_OK) {
            n_ok = k;
            break;
        }
        if (s != KVRT_ERR_OUT_OF_HOST_MEMORY)
            fail_msg("allocation %d failing gave status %d '%s'", k, s, err.message);
    }
    assert_true(n_ok > 5); /* reader, model, layers, vocabulary arrays, pieces */
    free(m.data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reads_llama_cpp_file),
        cmocka_unit_test(test_model_file_from_llama_cpp_file),
        cmocka_unit_test(test_round_trip_every_type),
        cmocka_unit_test(test_header_errors),
        cmocka_unit_test(test_model_errors),
        cmocka_unit_test(test_vocab_only),
        cmocka_unit_test(test_tokenizer_errors),
        cmocka_unit_test(test_alignment_key),
        cmocka_unit_test(test_truncation_every_offset_tiny),
        cmocka_unit_test(test_truncation_sample_stories),
        cmocka_unit_test(test_allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
