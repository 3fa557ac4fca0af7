/* TEMPORARY STUB (gguf branch): stands in for the tokenizer helper's
 * runtime/model/vocab_llama2c.c until it lands on main, so the loaders and
 * kvrt-convert link and can be tested. DELETE this file after merging main. */
#include "model/model_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kvrt_vocab_free(const kvrt_allocator *alloc, kvrt_vocab *v)
{
    if (!v)
        return;
    if (v->pieces)
        for (int32_t i = 0; i < v->n_tokens; i++)
            kvrt_free(alloc, v->pieces[i]);
    kvrt_free(alloc, v->pieces);
    kvrt_free(alloc, v->piece_lens);
    kvrt_free(alloc, v->scores);
    kvrt_free(alloc, v->types);
    memset(v, 0, sizeof(*v));
    v->bos_id = v->eos_id = v->unk_id = -1;
}

static char *normalise(const kvrt_allocator *alloc, const char *s, int32_t len, int32_t *out_len)
{
    if (len == 5 && memcmp(s, "\n<s>\n", 5) == 0)
        s += 1, len = 3;
    else if (len == 6 && memcmp(s, "\n</s>\n", 6) == 0)
        s += 1, len = 4;
    char *p = kvrt_alloc(alloc, (size_t)len * 3 + 1, 1);
    if (!p)
        return NULL;
    int32_t n = 0;
    for (int32_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            p[n++] = (char)0xe2, p[n++] = (char)0x96, p[n++] = (char)0x81;
        } else {
            p[n++] = s[i];
        }
    }
    p[n] = '\0';
    *out_len = n;
    return p;
}

kvrt_status kvrt_vocab_load_llama2c_memory(const void *data, size_t size, int32_t expected_n_tokens,
                                           const kvrt_allocator *alloc, kvrt_vocab *out, kvrt_error *err)
{
    memset(out, 0, sizeof(*out));
    out->bos_id = out->eos_id = out->unk_id = -1;
    const uint8_t *b = data;
    size_t pos = 4;
    if (expected_n_tokens <= 0 || size < 4)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin: bad size");
    int32_t n = expected_n_tokens;
    out->pieces = kvrt_calloc(alloc, (size_t)n, sizeof(char *));
    out->piece_lens = kvrt_calloc(alloc, (size_t)n, sizeof(int32_t));
    out->scores = kvrt_calloc(alloc, (size_t)n, sizeof(float));
    out->types = kvrt_calloc(alloc, (size_t)n, sizeof(int32_t));
    out->n_tokens = n;
    if (!out->pieces || !out->piece_lens || !out->scores || !out->types) {
        kvrt_vocab_free(alloc, out);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenizer.bin: no memory");
    }
    for (int32_t i = 0; i < n; i++) {
        int32_t len;
        if (size - pos < 8) {
            kvrt_vocab_free(alloc, out);
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin truncated at token %d", i);
        }
        memcpy(&out->scores[i], b + pos, 4);
        memcpy(&len, b + pos + 4, 4);
        pos += 8;
        if (len < 0 || (size_t)len > size - pos) {
            kvrt_vocab_free(alloc, out);
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin truncated at token %d", i);
        }
        out->pieces[i] = normalise(alloc, (const char *)b + pos, len, &out->piece_lens[i]);
        pos += (size_t)len;
        if (!out->pieces[i]) {
            kvrt_vocab_free(alloc, out);
            return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenizer.bin: no memory");
        }
        const char *p = out->pieces[i];
        if (i == 0)
            out->types[i] = KVRT_TOKEN_UNKNOWN;
        else if (strcmp(p, "<s>") == 0 || strcmp(p, "</s>") == 0)
            out->types[i] = KVRT_TOKEN_CONTROL;
        else if (out->piece_lens[i] == 6 && strncmp(p, "<0x", 3) == 0 && p[5] == '>')
            out->types[i] = KVRT_TOKEN_BYTE;
        else
            out->types[i] = KVRT_TOKEN_NORMAL;
    }
    out->unk_id = 0;
    out->bos_id = 1;
    out->eos_id = 2;
    out->add_bos = true;
    out->add_space_prefix = true;
    return KVRT_OK;
}

kvrt_status kvrt_vocab_load_llama2c(const char *path, int32_t expected_n_tokens, const kvrt_allocator *alloc,
                                    kvrt_vocab *out, kvrt_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return kvrt_fail(err, KVRT_ERR_IO, "cannot open '%s'", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    size_t got = buf ? fread(buf, 1, (size_t)(n > 0 ? n : 0), f) : 0;
    fclose(f);
    kvrt_status s = kvrt_vocab_load_llama2c_memory(buf, got, expected_n_tokens, alloc, out, err);
    free(buf);
    return s;
}
