/* GGUF quantization (model/quantize.c) at the library level: every key and
 * tensor kept in order, each matrix's bytes exactly the quantizer's output
 * for the input rows whatever the thread count, norms copied byte for byte,
 * and the refusals (non-finite input values, quantized input, types kvrt
 * cannot read, files without the keys the mix rules need). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/quant.h"
#include "model/gguf.h"
#include "model/quantize.h"
#include "model/synth.h"

typedef struct membuf {
    char *data;
    size_t size;
} membuf;

static membuf synth_f32(bool tied)
{
    kvrt_synth_params p;
    assert_true(kvrt_synth_preset("tiny", &p));
    p.hp.n_embd = 256;
    p.hp.n_ff = 96;
    p.hp.n_layer = 2;
    p.hp.n_head = 4;
    p.hp.n_head_kv = 2;
    p.hp.n_vocab = 280;
    p.seed = 3;
    p.tied_output = tied;
    membuf m = {0};
    FILE *f = open_memstream(&m.data, &m.size);
    assert_non_null(f);
    kvrt_error err;
    assert_int_equal(kvrt_synth_write(&p, NULL, f, NULL, &err), KVRT_OK);
    assert_int_equal(fclose(f), 0);
    return m;
}

static kvrt_status quantize(const membuf *in, const char *preset, int threads, bool requant, membuf *out,
                            kvrt_quantize_report *rep, kvrt_error *err)
{
    kvrt_gguf *g;
    assert_int_equal(kvrt_gguf_open_memory(in->data, in->size, NULL, &g, err), KVRT_OK);
    kvrt_quant_mix mix;
    assert_true(kvrt_quant_mix_find(preset, false, &mix));
    kvrt_quantize_params p = {.mix = &mix, .allow_requantize = requant, .n_threads = threads, .stats = true};
    *out = (membuf){0};
    FILE *f = open_memstream(&out->data, &out->size);
    assert_non_null(f);
    kvrt_status s = kvrt_quantize_gguf(g, &p, NULL, f, rep, err);
    assert_int_equal(fclose(f), 0);
    kvrt_gguf_close(g);
    return s;
}

static bool kv_equal(const kvrt_gguf_kv *a, const kvrt_gguf_kv *b)
{
    if (a->type != b->type || a->arr_type != b->arr_type || a->n != b->n)
        return false;
    kvrt_gguf_type t = a->type == KVRT_GGUF_ARRAY ? a->arr_type : a->type;
    if (t == KVRT_GGUF_STRING) {
        for (uint64_t i = 0; i < a->n; i++)
            if (a->strs[i].len != b->strs[i].len || memcmp(a->strs[i].ptr, b->strs[i].ptr, a->strs[i].len))
                return false;
        return true;
    }
    return !memcmp(a->data, b->data, (size_t)a->n * kvrt_gguf_type_size(t));
}

/* Keys, tensor order and shapes kept; matrices are the quantizer's bytes. */
static void check_output(const membuf *in, const membuf *out, const char *preset)
{
    kvrt_gguf *a, *b;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_open_memory(in->data, in->size, NULL, &a, &err), KVRT_OK);
    assert_int_equal(kvrt_gguf_open_memory(out->data, out->size, NULL, &b, &err), KVRT_OK);
    for (uint64_t i = 0; i < a->n_kv; i++) {
        char key[256];
        snprintf(key, sizeof(key), "%.*s", (int)a->kv[i].key.len, a->kv[i].key.ptr);
        const kvrt_gguf_kv *kv = kvrt_gguf_find_kv(b, key);
        if (!kv || !kv_equal(&a->kv[i], kv))
            fail_msg("%s: key %s lost or changed", preset, key);
    }
    kvrt_quant_mix mix;
    assert_true(kvrt_quant_mix_find(preset, false, &mix));
    uint32_t ft, qv;
    assert_int_equal(kvrt_gguf_get_u32(b, "general.file_type", &ft, NULL, &err), KVRT_OK);
    assert_int_equal(kvrt_gguf_get_u32(b, "general.quantization_version", &qv, NULL, &err), KVRT_OK);
    assert_int_equal(ft, mix.file_type);
    assert_int_equal(qv, 2);
    assert_int_equal(a->n_tensors, b->n_tensors);
    for (uint64_t i = 0; i < a->n_tensors; i++) {
        const kvrt_gguf_tensor *ta = &a->tensors[i], *tb = &b->tensors[i];
        assert_true(ta->name.len == tb->name.len && !memcmp(ta->name.ptr, tb->name.ptr, ta->name.len));
        assert_int_equal(ta->n_dims, tb->n_dims);
        assert_memory_equal(ta->ne, tb->ne, sizeof(ta->ne));
        if (tb->type == ta->type) {
            assert_int_equal(ta->nbytes, tb->nbytes);
            assert_memory_equal(ta->data, tb->data, (size_t)ta->nbytes);
            continue;
        }
        const int64_t ne0 = ta->ne[0];
        const size_t rb = kvrt_dtype_row_bytes((kvrt_dtype)tb->type, ne0);
        float *row = malloc((size_t)ne0 * sizeof(float));
        uint8_t *q = malloc(rb);
        for (int64_t r = 0; r < ta->ne[1]; r++) {
            memcpy(row, ta->data + (size_t)r * (size_t)ne0 * sizeof(float), (size_t)ne0 * sizeof(float));
            kvrt_quantize_row((kvrt_dtype)tb->type, row, q, ne0);
            if (memcmp(q, tb->data + (size_t)r * rb, rb))
                fail_msg("%s: tensor %.*s row %lld differs from the quantizer's bytes", preset, (int)ta->name.len,
                         ta->name.ptr, (long long)r);
        }
        free(row);
        free(q);
    }
    kvrt_gguf_close(a);
    kvrt_gguf_close(b);
}

static void test_presets_keep_everything(void **state)
{
    (void)state;
    static const char *const presets[] = {"Q4_K_M", "Q2_K", "Q6_K", "IQ4_XS", "Q5_1"};
    for (int tied = 0; tied < 2; tied++) {
        membuf in = synth_f32(tied != 0);
        for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
            membuf one, two;
            kvrt_quantize_report rep;
            kvrt_error err;
            if (quantize(&in, presets[i], 1, false, &one, &rep, &err) != KVRT_OK)
                fail_msg("%s: %s", presets[i], err.message);
            assert_int_equal(rep.n_converted, 2 * 7 + (tied ? 1 : 2));
            assert_int_equal(quantize(&in, presets[i], 2, false, &two, &rep, &err), KVRT_OK);
            assert_int_equal(one.size, two.size); /* the thread count changes nothing */
            assert_memory_equal(one.data, two.data, one.size);
            check_output(&in, &one, presets[i]);
            free(one.data);
            free(two.data);
        }
        free(in.data);
    }
}

/* --stats: relative RMSE per type in the range of each type's bits. */
static void test_stats(void **state)
{
    (void)state;
    membuf in = synth_f32(false), out;
    kvrt_quantize_report rep;
    kvrt_error err;
    assert_int_equal(quantize(&in, "Q4_K_M", 2, false, &out, &rep, &err), KVRT_OK);
    for (int t = 0; t < 32; t++) {
        if (!rep.values[t])
            continue;
        double rel = sqrt(rep.err2[t] / rep.ref2[t]);
        print_message("%-6s values %lld relative rmse %.4f\n", kvrt_dtype_name((kvrt_dtype)t),
                      (long long)rep.values[t], rel);
        assert_true(rel > 0.0 && rel < 0.1);
    }
    assert_true(rep.values[KVRT_DTYPE_Q4_K] > 0 && rep.values[KVRT_DTYPE_Q6_K] > 0);
    assert_true(sqrt(rep.err2[KVRT_DTYPE_Q6_K] / rep.ref2[KVRT_DTYPE_Q6_K]) <
                sqrt(rep.err2[KVRT_DTYPE_Q4_K] / rep.ref2[KVRT_DTYPE_Q4_K]) / 3.0);
    free(in.data);
    free(out.data);
}

/* Patches float `value` into row `row`, column 7 of tensor `name` of an F32 file. */
static void poke(membuf *m, const char *name, int64_t row, float value)
{
    kvrt_gguf *g;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_open_memory(m->data, m->size, NULL, &g, &err), KVRT_OK);
    const kvrt_gguf_tensor *t = kvrt_gguf_find_tensor(g, name);
    assert_non_null(t);
    size_t at = (size_t)(t->data - (const uint8_t *)m->data) + ((size_t)row * (size_t)t->ne[0] + 7) * sizeof(float);
    kvrt_gguf_close(g);
    memcpy(m->data + at, &value, sizeof(value));
}

static void test_refusals(void **state)
{
    (void)state;
    kvrt_quantize_report rep;
    kvrt_error err;
    membuf out;
    /* a NaN or an infinity in a matrix: named with its row */
    membuf in = synth_f32(false);
    poke(&in, "blk.1.ffn_up.weight", 37, NAN);
    assert_int_equal(quantize(&in, "Q4_K_M", 2, false, &out, &rep, &err), KVRT_ERR_BAD_MODEL);
    assert_non_null(strstr(err.message, "blk.1.ffn_up.weight' row 37"));
    free(out.data);
    free(in.data);
    in = synth_f32(false);
    poke(&in, "token_embd.weight", 0, -INFINITY);
    assert_int_equal(quantize(&in, "Q8_0", 1, false, &out, &rep, &err), KVRT_ERR_BAD_MODEL);
    assert_non_null(strstr(err.message, "token_embd.weight' row 0"));
    free(out.data);
    free(in.data);
    /* quantized input: refused without allow_requantize */
    in = synth_f32(false);
    membuf q;
    assert_int_equal(quantize(&in, "Q4_K_M", 1, false, &q, &rep, &err), KVRT_OK);
    assert_int_equal(quantize(&q, "Q5_K_M", 1, false, &out, &rep, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "is q4_K already"));
    free(out.data);
    assert_int_equal(quantize(&q, "Q5_K_M", 1, true, &out, &rep, &err), KVRT_OK);
    assert_true(rep.n_requantized > 0);
    free(out.data);
    /* the same preset again converts nothing: a copy */
    assert_int_equal(quantize(&q, "Q4_K_M", 1, false, &out, &rep, &err), KVRT_OK);
    assert_int_equal(rep.n_converted, 0);
    free(out.data);
    free(q.data);
    free(in.data);
}

/* A file without general.architecture or block_count, and a matrix of a type kvrt cannot read. */
static void test_bad_files(void **state)
{
    (void)state;
    kvrt_error err;
    kvrt_gguf_writer *w;
    const int64_t ne[2] = {256, 4};
    for (int which = 0; which < 3; which++) {
        assert_int_equal(kvrt_gguf_writer_create(NULL, 0, &w, &err), KVRT_OK);
        if (which > 0)
            assert_int_equal(kvrt_gguf_writer_add_string(w, "general.architecture", "llama"), KVRT_OK);
        if (which > 1) {
            assert_int_equal(kvrt_gguf_writer_add_u32(w, "llama.block_count", 1), KVRT_OK);
            assert_int_equal(kvrt_gguf_writer_add_u32(w, "llama.attention.head_count", 1), KVRT_OK);
        }
        assert_int_equal(kvrt_gguf_writer_add_tensor(w, "blk.0.attn_q.weight", 16 /* iq2_xxs */, 2, ne), KVRT_OK);
        membuf m = {0};
        FILE *f = open_memstream(&m.data, &m.size);
        assert_int_equal(kvrt_gguf_writer_write_header(w, f), KVRT_OK);
        size_t nb = (size_t)kvrt_gguf_tensor_nbytes(16, 2, ne);
        void *zeros = calloc(1, nb);
        assert_int_equal(kvrt_gguf_writer_write_data(w, f, zeros, nb), KVRT_OK);
        assert_int_equal(kvrt_gguf_writer_finish(w, f), KVRT_OK);
        kvrt_gguf_writer_destroy(w);
        fclose(f);
        free(zeros);
        membuf out;
        kvrt_quantize_report rep;
        kvrt_status s = quantize(&m, "Q4_K_M", 1, true, &out, &rep, &err);
        const char *want[] = {"general.architecture", "llama.block_count", "iq2_xxs"};
        assert_int_equal(s, which == 2 ? KVRT_ERR_UNSUPPORTED : KVRT_ERR_BAD_MODEL);
        if (!strstr(err.message, want[which]))
            fail_msg("message '%s' lacks '%s'", err.message, want[which]);
        free(out.data);
        free(m.data);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_presets_keep_everything),
        cmocka_unit_test(test_stats),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_bad_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
