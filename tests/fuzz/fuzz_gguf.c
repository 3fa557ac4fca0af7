/* libFuzzer entry: the GGUF reader and the GGUF -> model file mapping on
 * arbitrary bytes, with and without vocabulary-only files accepted, and the
 * reference dequantizer of every weight type on the matrices of a file that
 * loads (the corpus holds k-quant, iq4 and legacy mixes). Any
 * crash, sanitizer report or leak is a bug; errors are expected. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/quant.h"
#include "model/gguf.h"
#include "model/model_file.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Reads every value the reader hands out, so out-of-bounds pointers show up. */
static uint64_t touch_reader(const kvrt_gguf *g)
{
    uint64_t h = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const kvrt_gguf_kv *kv = &g->kv[i];
        kvrt_gguf_type t = kv->type == KVRT_GGUF_ARRAY ? kv->arr_type : kv->type;
        h += kv->key.len ? (uint8_t)kv->key.ptr[kv->key.len - 1] : 0;
        for (uint64_t k = 0; k < kv->n && k < 64; k++) {
            if (t == KVRT_GGUF_STRING)
                h += kv->strs[k].len ? (uint8_t)kv->strs[k].ptr[kv->strs[k].len - 1] : 0;
            else {
                double d = kvrt_gguf_kv_float(kv, k); /* any bits: NaN and huge values included */
                uint64_t bits;
                memcpy(&bits, &d, sizeof(bits));
                h += bits + (uint64_t)kvrt_gguf_kv_int(kv, k);
            }
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].nbytes)
            h += g->tensors[i].data[0] + g->tensors[i].data[g->tensors[i].nbytes - 1];
    return h;
}

/* Dequantizes the first and last row of a weight (any type kvrt runs, the
 * block formats on fuzzed bytes: scales of any value, NaN included). */
static uint64_t touch_rows(const kvrt_tensor_ref *t)
{
    float *row = malloc((size_t)t->ne[0] * sizeof(float));
    if (!row)
        return 0;
    size_t rb = kvrt_dtype_row_bytes(t->type, t->ne[0]);
    uint64_t h = 0;
    for (int64_t r = 0; r < t->ne[1]; r += t->ne[1] > 1 ? t->ne[1] - 1 : 1) {
        kvrt_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)r * rb, row, t->ne[0]);
        uint32_t bits;
        memcpy(&bits, &row[t->ne[0] - 1], sizeof(bits));
        h += bits;
    }
    free(row);
    return h;
}

static uint64_t touch_model(const kvrt_model_file *mf)
{
    uint64_t h = 0;
    for (int32_t i = 0; i < mf->vocab.n_tokens; i++)
        h += (uint64_t)mf->vocab.piece_lens[i] + (uint8_t)mf->vocab.pieces[i][mf->vocab.piece_lens[i]];
    if (mf->vocab_only)
        return h;
    const kvrt_tensor_ref *t[] = {&mf->w.tok_embd, &mf->w.output, &mf->w.output_norm,
                                  &mf->w.layers[mf->hp.n_layer - 1].ffn_up};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        h += ((const uint8_t *)t[i]->data)[t[i]->nbytes - 1];
    const kvrt_llama_layer *l = &mf->w.layers[0];
    const kvrt_tensor_ref *m[] = {&mf->w.tok_embd, &mf->w.output, &l->wq, &l->wk, &l->wv, &l->wo,
                                  &l->ffn_gate, &l->ffn_down, &l->ffn_up};
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
        h += touch_rows(m[i]);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy, so reading one byte past the input is caught. */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    volatile uint64_t sink = 0;
    kvrt_error err;
    kvrt_gguf *g;
    if (kvrt_gguf_open_memory(copy, size, NULL, &g, &err) == KVRT_OK) {
        sink += touch_reader(g);
        kvrt_gguf_close(g);
    }
    for (int vocab_only_ok = 0; vocab_only_ok < 2; vocab_only_ok++) {
        kvrt_model_file *mf;
        if (kvrt_model_file_load_gguf_memory(copy, size, NULL, vocab_only_ok != 0, &mf, &err) == KVRT_OK) {
            sink += touch_model(mf);
            kvrt_model_file_free(mf);
        } else if (err.message[0] == '\0') {
            __builtin_trap(); /* every failure must say why */
        }
    }
    (void)sink;
    free(copy);
    return 0;
}
