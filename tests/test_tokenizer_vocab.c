/* llama2.c tokenizer.bin loader: normalisation into GGUF conventions, and
 * every kind of damaged file (truncation at each offset, corrupt lengths,
 * count mismatches) rejected with KVRT_ERR_BAD_TOKENIZER, never a crash.
 * Plus allocation-failure injection through the embedder allocator. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/model_file.h"
#include "model/tokenizer.h"
#include "test_models.h"

static unsigned char *read_model(const char *name, size_t *size)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", kvrt_test_models_dir(), name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *d = malloc((size_t)n);
    assert_non_null(d);
    assert_int_equal(fread(d, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return d;
}

static void put_i32(unsigned char *p, int32_t v)
{
    memcpy(p, &v, 4); /* the test machine is little-endian, like the files */
}

/* Byte offset of the record of token `index` (its score field). */
static size_t record_offset(const unsigned char *d, int32_t index)
{
    size_t off = 4;
    for (int32_t i = 0; i < index; i++) {
        int32_t len;
        memcpy(&len, d + off + 4, 4);
        off += 8 + (size_t)len;
    }
    return off;
}

static kvrt_status load_mem(const unsigned char *d, size_t size, int32_t expected, kvrt_vocab *v, kvrt_error *err)
{
    kvrt_status s = kvrt_vocab_load_llama2c_memory(d, size, expected, NULL, v, err);
    if (s != KVRT_OK) {
        assert_int_equal(v->n_tokens, 0); /* nothing half-built is left behind */
        assert_null(v->pieces);
    }
    return s;
}

/* tok512.bin normalised equals what llama.cpp's converter wrote into
 * stories260K.gguf (checked offline key by key): U+2581, <s>/</s>, types. */
static void test_tok512_normalised(void **state)
{
    (void)state;
    size_t size;
    unsigned char *d = read_model("tok512.bin", &size);
    kvrt_vocab v;
    kvrt_error err;
    assert_int_equal(load_mem(d, size, 512, &v, &err), KVRT_OK);
    assert_int_equal(v.n_tokens, 512);
    assert_int_equal(v.bos_id, 1);
    assert_int_equal(v.eos_id, 2);
    assert_int_equal(v.unk_id, 0);
    assert_true(v.add_bos && v.add_space_prefix);
    assert_string_equal(v.pieces[0], "<unk>");
    assert_int_equal(v.types[0], KVRT_TOKEN_UNKNOWN);
    assert_string_equal(v.pieces[1], "<s>");
    assert_int_equal(v.piece_lens[1], 3);
    assert_int_equal(v.types[1], KVRT_TOKEN_CONTROL);
    assert_string_equal(v.pieces[2], "</s>");
    assert_int_equal(v.types[2], KVRT_TOKEN_CONTROL);
    for (int b = 0; b < 256; b++) {
        char want[8];
        snprintf(want, sizeof(want), "<0x%02X>", b);
        assert_string_equal(v.pieces[3 + b], want);
        assert_int_equal(v.types[3 + b], KVRT_TOKEN_BYTE);
    }
    assert_string_equal(v.pieces[259], "\xe2\x96\x81t"); /* " t" in the file */
    assert_int_equal(v.piece_lens[259], 4);
    assert_int_equal(v.types[259], KVRT_TOKEN_NORMAL);
    assert_true(v.scores[260] == -1.0f); /* "he" */
    assert_string_equal(v.pieces[410], "\xe2\x96\x81");
    for (int32_t i = 0; i < 512; i++) {
        assert_int_equal((size_t)v.piece_lens[i], strlen(v.pieces[i]));
        assert_null(strchr(v.pieces[i], ' '));
        if (i >= 259)
            assert_int_equal(v.types[i], KVRT_TOKEN_NORMAL);
    }
    /* the same file through the path loader, count unknown */
    kvrt_vocab v2;
    char path[1024];
    snprintf(path, sizeof(path), "%s/tok512.bin", kvrt_test_models_dir());
    assert_int_equal(kvrt_vocab_load_llama2c(path, 0, NULL, &v2, &err), KVRT_OK);
    assert_int_equal(v2.n_tokens, 512);
    for (int32_t i = 0; i < 512; i++) {
        assert_string_equal(v2.pieces[i], v.pieces[i]);
        assert_true(v2.scores[i] == v.scores[i]);
    }
    kvrt_vocab_free(NULL, &v2);
    kvrt_vocab_free(NULL, &v);
    assert_int_equal(v.n_tokens, 0);
    kvrt_vocab_free(NULL, &v); /* twice is harmless */
    free(d);
}

/* Every proper prefix of tok512.bin: with the model's count it is always
 * wrong; without a count, only cuts at record boundaries are valid files
 * (holding exactly the tokens before the cut). */
static void test_truncation_every_offset(void **state)
{
    (void)state;
    size_t size;
    unsigned char *d = read_model("tok512.bin", &size);
    size_t next_boundary = 4;
    int32_t tokens_before = 0;
    for (size_t cut = 0; cut < size; cut++) {
        kvrt_vocab v;
        kvrt_error err;
        assert_int_equal(load_mem(d, cut, 512, &v, &err), KVRT_ERR_BAD_TOKENIZER);
        assert_true(strlen(err.message) > 10);
        while (cut > next_boundary) {
            int32_t len;
            memcpy(&len, d + next_boundary + 4, 4);
            next_boundary += 8 + (size_t)len;
            tokens_before++;
        }
        kvrt_status s = load_mem(d, cut, 0, &v, &err);
        if (cut == next_boundary && tokens_before > 0) {
            assert_int_equal(s, KVRT_OK);
            assert_int_equal(v.n_tokens, tokens_before);
            kvrt_vocab_free(NULL, &v);
        } else {
            assert_int_equal(s, KVRT_ERR_BAD_TOKENIZER);
        }
    }
    free(d);
}

/* The 434 KB Llama-2 file at a sample of offsets (a prime stride) and at
 * the end of its last record but one. */
static void test_truncation_llama2_sample(void **state)
{
    (void)state;
    size_t size;
    unsigned char *d = read_model("tokenizer.bin", &size);
    kvrt_vocab v;
    kvrt_error err;
    for (size_t cut = 0; cut < size; cut += 1009)
        assert_int_equal(load_mem(d, cut, 32000, &v, &err), KVRT_ERR_BAD_TOKENIZER);
    size_t last = record_offset(d, 31999);
    assert_int_equal(load_mem(d, last, 32000, &v, &err), KVRT_ERR_BAD_TOKENIZER);
    assert_non_null(strstr(err.message, "31999"));
    assert_int_equal(load_mem(d, last, 0, &v, &err), KVRT_OK);
    assert_int_equal(v.n_tokens, 31999);
    kvrt_vocab_free(NULL, &v);
    assert_int_equal(load_mem(d, size, 32000, &v, &err), KVRT_OK);
    kvrt_vocab_free(NULL, &v);
    free(d);
}

static void expect_bad(const unsigned char *d, size_t size, int32_t expected, const char *needle)
{
    kvrt_vocab v;
    kvrt_error err;
    assert_int_equal(load_mem(d, size, expected, &v, &err), KVRT_ERR_BAD_TOKENIZER);
    assert_int_equal(err.status, KVRT_ERR_BAD_TOKENIZER);
    if (!strstr(err.message, needle))
        fail_msg("message \"%s\" lacks \"%s\"", err.message, needle);
}

static void test_corrupt_fields(void **state)
{
    (void)state;
    size_t size;
    unsigned char *orig = read_model("tok512.bin", &size);
    unsigned char *d = malloc(size + 16);
    size_t rec = record_offset(orig, 300);
    const int32_t bad_lens[] = {-1, INT32_MIN, INT32_MAX, 8 /* > max_token_length 7 */, 6000};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(bad_lens); i++) {
        memcpy(d, orig, size);
        put_i32(d + rec + 4, bad_lens[i]);
        expect_bad(d, size, 512, "token 300");
        expect_bad(d, size, 0, "token 300");
    }
    memcpy(d, orig, size);
    put_i32(d, -5);
    expect_bad(d, size, 0, "max_token_length");
    /* a small max_token_length makes the longer pieces invalid */
    put_i32(d, 2);
    expect_bad(d, size, 0, "max_token_length 2");
    memcpy(d, orig, size);
    uint32_t nan_bits = 0x7fc00000u;
    memcpy(d + rec, &nan_bits, 4);
    expect_bad(d, size, 0, "NaN");
    /* count mismatches both ways, and trailing garbage too short for a record */
    memcpy(d, orig, size);
    expect_bad(d, size, 513, "512 tokens, the model has 513");
    expect_bad(d, size, 100, "more than the model's 100");
    for (size_t extra = 1; extra < 8; extra++) {
        memset(d + size, 0, extra);
        expect_bad(d, size + extra, 0, "truncated");
    }
    /* a whole extra (empty) record is a valid 513th token without a count */
    memset(d + size, 0, 8);
    kvrt_vocab v;
    assert_int_equal(load_mem(d, size + 8, 0, &v, NULL), KVRT_OK);
    assert_int_equal(v.n_tokens, 513);
    assert_int_equal(v.piece_lens[512], 0);
    kvrt_vocab_free(NULL, &v);
    expect_bad(d, 0, 0, "too short");
    expect_bad(d, 4, 0, "no tokens");
    assert_int_equal(kvrt_vocab_load_llama2c_memory(NULL, 10, 0, NULL, &v, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_vocab_load_llama2c_memory(d, size, 0, NULL, NULL, NULL), KVRT_ERR_INVALID_ARGUMENT);
    free(d);
    free(orig);
}

static void test_file_errors(void **state)
{
    (void)state;
    kvrt_vocab v;
    kvrt_error err;
    assert_int_equal(kvrt_vocab_load_llama2c("/nonexistent/tokenizer.bin", 0, NULL, &v, &err), KVRT_ERR_IO);
    assert_non_null(strstr(err.message, "/nonexistent/tokenizer.bin"));
    assert_int_equal(v.n_tokens, 0);
    /* a damaged file on disk: the message names the file */
    char path[] = "/tmp/kvrt_test_tokXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const unsigned char bytes[] = {7, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 'a'};
    assert_int_equal(write(fd, bytes, sizeof(bytes)), (ssize_t)sizeof(bytes));
    close(fd);
    assert_int_equal(kvrt_vocab_load_llama2c(path, 0, NULL, &v, &err), KVRT_ERR_BAD_TOKENIZER);
    assert_non_null(strstr(err.message, path));
    assert_non_null(strstr(err.message, "truncated"));
    unlink(path);
    assert_int_equal(kvrt_vocab_load_llama2c("/tmp", 0, NULL, &v, &err) != KVRT_OK, true);
}

/* ---- allocation failures through the embedder allocator ---------------------------- */

typedef struct counting_alloc {
    long n_allocs, n_live, fail_at; /* fail_at: index of the allocation that fails, -1 none */
} counting_alloc;

static void *ca_alloc(void *user, size_t size, size_t alignment)
{
    counting_alloc *c = user;
    (void)alignment;
    if (c->n_allocs++ == c->fail_at)
        return NULL;
    void *p = malloc(size);
    if (p)
        c->n_live++;
    return p;
}

static void ca_free(void *user, void *p)
{
    counting_alloc *c = user;
    c->n_live--;
    free(p);
}

/* Load + tokenizer + encode + decode with the Nth allocation failing, for
 * every N the whole path makes: always OUT_OF_HOST_MEMORY, nothing leaked. */
static void test_allocation_failures(void **state)
{
    (void)state;
    size_t size;
    unsigned char *d = read_model("tok512.bin", &size);
    counting_alloc c = {0, 0, -1};
    kvrt_allocator a = {ca_alloc, ca_free, &c};
    for (long fail = 0;; fail++) {
        c = (counting_alloc){0, 0, fail};
        kvrt_vocab v;
        kvrt_tokenizer *tok = NULL;
        kvrt_status s = kvrt_vocab_load_llama2c_memory(d, size, 512, &a, &v, NULL);
        if (s == KVRT_OK) {
            s = kvrt_tokenizer_create(&v, &a, &tok, NULL);
            if (s == KVRT_OK) {
                int32_t ids[16];
                size_t n = 0;
                s = kvrt_tokenizer_encode(tok, "Once upon a time", 16, true, ids, 16, &n);
                if (s == KVRT_OK) {
                    assert_int_equal(n, 5);
                    assert_int_equal(ids[4], 378);
                }
                kvrt_tokenizer_destroy(tok);
            }
            kvrt_vocab_free(&a, &v);
        }
        assert_int_equal(c.n_live, 0);
        if (s == KVRT_OK) {
            assert_true(fail > 512); /* every piece is an allocation that had its turn */
            break;
        }
        assert_int_equal(s, KVRT_ERR_OUT_OF_HOST_MEMORY);
    }
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tok512_normalised),
        cmocka_unit_test(test_truncation_every_offset),
        cmocka_unit_test(test_truncation_llama2_sample),
        cmocka_unit_test(test_corrupt_fields),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_allocation_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
