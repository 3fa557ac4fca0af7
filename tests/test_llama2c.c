/* llama2.c checkpoint loader: the same weights as the GGUF loader gives for
 * the same model (llama.cpp's own conversion of stories260K, and a GGUF
 * written by kvrt for the MHA model aidreams260K), header and size errors,
 * truncation, untied classifiers, allocation failures. */
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

static char *model_path(const char *name)
{
    static char bufs[4][4096];
    static int next;
    char *b = bufs[next++ % 4];
    if (*name)
        kvrt_test_require_model(name, b, 4096); /* a missing file fails naming its path */
    else
        kvrt_test_model_path(name, b, 4096);
    return b;
}

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 64);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return b;
}

static char tmp_path[64];

static const char *write_tmp(const void *data, size_t size)
{
    snprintf(tmp_path, sizeof(tmp_path), "/tmp/kvrt_test_l2c_XXXXXX");
    int fd = mkstemp(tmp_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, data, size), (ssize_t)size);
    close(fd);
    return tmp_path;
}

static void assert_same_tensor(const kvrt_tensor_ref *a, const kvrt_tensor_ref *b, const char *what)
{
    if (a->type != b->type || a->ne[0] != b->ne[0] || a->ne[1] != b->ne[1] || a->nbytes != b->nbytes ||
        memcmp(a->data, b->data, a->nbytes) != 0)
        fail_msg("tensor %s differs", what);
}

/* Every weight byte-equal, and the hyper-parameters except the context length. */
static void assert_same_model(const kvrt_model_file *a, const kvrt_model_file *b)
{
    kvrt_llama_hparams ha = a->hp, hb = b->hp;
    ha.n_ctx_train = hb.n_ctx_train = 0;
    ha.rope_orig_ctx = hb.rope_orig_ctx = 0; /* defaults to the context length (no YaRN here) */
    assert_memory_equal(&ha, &hb, sizeof(ha));
    int32_t n = kvrt_llama_tensor_count(a->hp.n_layer, true);
    for (int32_t i = 0; i < n; i++) {
        char name[64];
        int64_t ne0, ne1;
        kvrt_llama_tensor_desc(&a->hp, true, i, name, sizeof(name), &ne0, &ne1);
        const kvrt_tensor_ref *ta = kvrt_llama_tensor_ref(a, true, i), *tb = kvrt_llama_tensor_ref(b, true, i);
        assert_int_equal(ta->ne[0], ne0);
        assert_int_equal(ta->ne[1], ne1);
        assert_same_tensor(ta, tb, name);
    }
}

static void assert_same_vocab(const kvrt_vocab *a, const kvrt_vocab *b)
{
    assert_int_equal(a->n_tokens, b->n_tokens);
    for (int32_t i = 0; i < a->n_tokens; i++) {
        assert_int_equal(a->piece_lens[i], b->piece_lens[i]);
        assert_memory_equal(a->pieces[i], b->pieces[i], (size_t)a->piece_lens[i] + 1);
        assert_memory_equal(&a->scores[i], &b->scores[i], sizeof(float));
        assert_int_equal(a->types[i], b->types[i]);
    }
    assert_int_equal(a->bos_id, b->bos_id);
    assert_int_equal(a->eos_id, b->eos_id);
    assert_int_equal(a->unk_id, b->unk_id);
}

static void test_stories_same_as_llama_cpp_gguf(void **state)
{
    (void)state;
    kvrt_model_file *l2c, *gguf;
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_llama2c(model_path("stories260K.bin"), model_path("tok512.bin"), NULL, NULL,
                                                  &l2c, &err),
                     KVRT_OK);
    assert_int_equal(kvrt_model_file_load_gguf(model_path("stories260K.gguf"), NULL, false, NULL, &gguf, &err),
                     KVRT_OK);
    assert_int_equal(l2c->hp.n_ctx_train, 512); /* the real trained length */
    assert_int_equal(gguf->hp.n_ctx_train, 128);
    assert_int_equal(l2c->hp.n_head_kv, 4);
    assert_int_equal(l2c->hp.n_ff, 172);
    assert_true(l2c->w.output.data == l2c->w.tok_embd.data); /* shared classifier */
    assert_string_equal(l2c->arch, "llama");
    assert_int_equal(l2c->main_type, KVRT_DTYPE_F32);
    assert_same_model(l2c, gguf);
    assert_same_vocab(&l2c->vocab, &gguf->vocab);
    kvrt_model_file_free(l2c);
    kvrt_model_file_free(gguf);
}

/* Writes mf as an F32 llama GGUF in memory with the converter's helpers. */
static char *to_gguf(const kvrt_model_file *mf, size_t *size)
{
    char *data = NULL;
    FILE *f = open_memstream(&data, size);
    kvrt_gguf_writer *w;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_writer_create(NULL, 0, &w, &err), KVRT_OK);
    assert_int_equal(kvrt_llama_add_hparams(w, &mf->hp, "test"), KVRT_OK);
    assert_int_equal(kvrt_llama_add_vocab(w, &mf->vocab), KVRT_OK);
    assert_int_equal(kvrt_llama_add_tensors(w, &mf->hp, KVRT_DTYPE_F32, true), KVRT_OK);
    assert_int_equal(kvrt_gguf_writer_write_header(w, f), KVRT_OK);
    for (int32_t i = 0; i < kvrt_llama_tensor_count(mf->hp.n_layer, true); i++) {
        const kvrt_tensor_ref *t = kvrt_llama_tensor_ref(mf, true, i);
        assert_int_equal(kvrt_gguf_writer_write_data(w, f, t->data, t->nbytes), KVRT_OK);
    }
    assert_int_equal(kvrt_gguf_writer_finish(w, f), KVRT_OK);
    kvrt_gguf_writer_destroy(w);
    fclose(f);
    return data;
}

static void test_aidreams_mha_round_trip(void **state)
{
    (void)state;
    kvrt_model_file *l2c, *gguf;
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_llama2c(model_path("aidreams260K.bin"), model_path("tok512_aidreams.bin"),
                                                  NULL, NULL, &l2c, &err),
                     KVRT_OK);
    assert_int_equal(l2c->hp.n_head, 4);
    assert_int_equal(l2c->hp.n_head_kv, 4);
    assert_int_equal(l2c->hp.n_layer, 4);
    assert_int_equal(l2c->hp.n_embd, 64);
    assert_int_equal(l2c->hp.n_ctx_train, 128);
    assert_int_equal(l2c->hp.head_dim, 16);
    size_t size;
    char *bytes = to_gguf(l2c, &size);
    assert_int_equal(kvrt_model_file_load_gguf_memory(bytes, size, NULL, false, &gguf, &err), KVRT_OK);
    assert_int_equal(gguf->hp.n_ctx_train, 128);
    assert_same_model(l2c, gguf);
    assert_same_vocab(&l2c->vocab, &gguf->vocab);
    kvrt_model_file_free(gguf);
    kvrt_model_file_free(l2c);
    free(bytes);
}

static kvrt_status load_bytes(const void *data, size_t size, kvrt_error *err)
{
    kvrt_model_file *mf = (kvrt_model_file *)&mf;
    kvrt_error_clear(err);
    kvrt_status s = kvrt_model_file_load_llama2c(write_tmp(data, size), NULL, NULL, NULL, &mf, err);
    unlink(tmp_path);
    if (s == KVRT_OK) {
        assert_int_equal(mf->vocab.n_tokens, 0); /* no tokenizer given */
        kvrt_model_file_free(mf);
    } else {
        assert_null(mf);
        assert_int_equal(err->status, s);
        assert_true(strlen(err->message) > 0);
    }
    return s;
}

static void test_truncation_and_size(void **state)
{
    (void)state;
    size_t size;
    uint8_t *b = read_all(model_path("stories260K.bin"), &size);
    kvrt_error err;
    assert_int_equal(load_bytes(b, size, &err), KVRT_OK);
    size_t lens[] = {0, 1, 27, 28, 29, 32, 4096, 131100, size / 2, size - 4, size - 1};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
        if (load_bytes(b, lens[i], &err) != KVRT_ERR_BAD_MODEL)
            fail_msg("truncated at %zu: %s", lens[i], err.message);
    for (size_t len = 28; len < size; len += 65521)
        assert_int_equal(load_bytes(b, len, &err), KVRT_ERR_BAD_MODEL);
    assert_int_equal(load_bytes(b, size - 4, &err), KVRT_ERR_BAD_MODEL);
    assert_non_null(strstr(err.message, "truncated"));
    memset(b + size, 0, 8); /* trailing bytes the header does not explain */
    assert_int_equal(load_bytes(b, size + 8, &err), KVRT_ERR_BAD_MODEL);
    assert_non_null(strstr(err.message, "header implies"));
    kvrt_model_file *mf;
    assert_int_equal(kvrt_model_file_load_llama2c("/nonexistent/x.bin", NULL, NULL, NULL, &mf, &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "/nonexistent/x.bin"));
    free(b);
}

static void test_header_errors(void **state)
{
    (void)state;
    size_t size;
    uint8_t *b = read_all(model_path("stories260K.bin"), &size);
    int32_t h[7];
    memcpy(h, b, sizeof(h));
    kvrt_error err;
    const struct {
        int field;
        int32_t value;
        const char *needle;
    } cases[] = {
        {0, -64, "inconsistent"},           /* dim */
        {3, 7, "inconsistent"},             /* 64 % 7 */
        {4, 3, "n_head 8 is not a multiple of n_head_kv 3"},
        {4, 0, "n_head_kv = 0"},
        {2, 0, "n_layer = 0"},
        {1, -5, "n_ff = -5"},
        {6, 0, "n_ctx_train = 0"},
        {5, INT32_MIN, "inconsistent"},
        {5, 1 << 30, "truncated"},           /* vocab far larger than the file */
        {2, 1 << 30, "truncated"},           /* layers */
        {0, 1 << 30, "is too large"},        /* dim: head_dim x heads checked in 64 bits */
        {5, -512, "truncated"},              /* untied: wcls missing */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memcpy(b, h, sizeof(h));
        memcpy(b + 4 * cases[i].field, &cases[i].value, 4);
        if (cases[i].field == 0 && cases[i].value == 1 << 30) {
            int32_t heads = 1 << 20;
            memcpy(b + 12, &heads, 4);
            memcpy(b + 16, &heads, 4);
        }
        kvrt_status s = load_bytes(b, size, &err);
        if (s != KVRT_ERR_BAD_MODEL || !strstr(err.message, cases[i].needle))
            fail_msg("case %zu: status %d '%s' (want '%s')", i, s, err.message, cases[i].needle);
    }
    free(b);
}

static void test_untied_classifier(void **state)
{
    (void)state;
    size_t size;
    uint8_t *b0 = read_all(model_path("stories260K.bin"), &size);
    size_t cls = 512 * 64 * sizeof(float);
    uint8_t *b = malloc(size + cls);
    memcpy(b, b0, size);
    for (size_t i = 0; i < cls / 4; i++) {
        float v = (float)i * 0.001f;
        memcpy(b + size + 4 * i, &v, 4);
    }
    int32_t vocab = -512;
    memcpy(b + 20, &vocab, 4);
    kvrt_model_file *mf;
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_llama2c(write_tmp(b, size + cls), model_path("tok512.bin"), NULL, NULL, &mf,
                                                  &err),
                     KVRT_OK);
    unlink(tmp_path);
    assert_int_equal(mf->hp.n_vocab, 512);
    assert_true(mf->w.output.data != mf->w.tok_embd.data);
    assert_memory_equal(mf->w.output.data, b + size, cls);
    assert_memory_equal(mf->w.tok_embd.data, b + 28, cls);
    assert_int_equal(mf->vocab.n_tokens, 512);
    kvrt_model_file_free(mf);
    free(b);
    free(b0);
}

typedef struct failing_alloc {
    int fail_at, count, live;
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
    ((failing_alloc *)user)->live--;
    free(p);
}

static void test_allocation_failures(void **state)
{
    (void)state;
    for (int k = 0;; k++) {
        failing_alloc fa = {k, 0, 0};
        kvrt_allocator a = {fa_alloc, fa_free, &fa};
        kvrt_model_file *mf;
        kvrt_error err;
        kvrt_status s = kvrt_model_file_load_llama2c(model_path("stories260K.bin"), model_path("tok512.bin"), &a,
                                                     NULL, &mf, &err);
        if (s == KVRT_OK) {
            assert_true(k >= 2);
            kvrt_model_file_free(mf);
            assert_int_equal(fa.live, 0);
            break;
        }
        assert_int_equal(fa.live, 0);
        if (s != KVRT_ERR_OUT_OF_HOST_MEMORY)
            fail_msg("allocation %d failing gave %d '%s'", k, s, err.message);
        if (k > 5000)
            fail_msg("never succeeded");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stories_same_as_llama_cpp_gguf),
        cmocka_unit_test(test_aidreams_mha_round_trip),
        cmocka_unit_test(test_truncation_and_size),
        cmocka_unit_test(test_header_errors),
        cmocka_unit_test(test_untied_classifier),
        cmocka_unit_test(test_allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
