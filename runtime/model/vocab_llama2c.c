/*
 * llama2.c tokenizer.bin -> kvrt_vocab in GGUF conventions.
 *
 * The file: int32 max_token_length, then per token float32 score, int32 len
 * and len bytes (no NUL), little-endian. It has no token count (run.c takes
 * vocab_size from the checkpoint) and no token types, writes spaces as ' '
 * and BOS/EOS as "\n<s>\n" / "\n</s>\n". We restore what SentencePiece's
 * model (and so a GGUF of the same vocabulary) says: U+2581, "<s>"/"</s>",
 * types normal/unknown/control/byte.
 *
 * Ownership (kvrt_vocab_free): each piece and each array is its own
 * allocation from the given allocator.
 */
#include "model/model_file.h"

#include <math.h>
#include <stdio.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

/* Far beyond any real vocabulary (Llama 3: 128,256); also bounds the work a
 * corrupt file can ask for. */
#define KVRT_LLAMA2C_MAX_TOKENS (1 << 24)
/* Reading a whole tokenizer.bin into memory: refuse what cannot be one. */
#define KVRT_LLAMA2C_MAX_FILE ((size_t)1 << 30)
/* Real pieces are a few dozen bytes; this keeps the normalised length (up to
 * 3x) far inside int32. */
#define KVRT_LLAMA2C_MAX_PIECE (1 << 16)

static uint32_t read_u32le(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static int32_t read_i32le(const unsigned char *p)
{
    uint32_t u = read_u32le(p);
    int32_t v;
    memcpy(&v, &u, sizeof(v));
    return v;
}

static float read_f32le(const unsigned char *p)
{
    uint32_t u = read_u32le(p);
    float v;
    memcpy(&v, &u, sizeof(v));
    return v;
}

/* One token record located in the file. */
typedef struct l2c_record {
    float score;
    const unsigned char *bytes;
    int32_t len;
} l2c_record;

/* Reads the record at *off, checking every field; advances *off. */
static kvrt_status read_record(const unsigned char *d, size_t size, size_t *off, int32_t index, int32_t max_len,
                               l2c_record *r, kvrt_error *err)
{
    size_t at = *off;
    if (size - at < 8)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin: truncated in the header of token %d (byte %zu)",
                         index, at);
    r->score = read_f32le(d + at);
    r->len = read_i32le(d + at + 4);
    if (isnan(r->score))
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin: token %d (byte %zu) has a NaN score", index,
                         at);
    if (r->len < 0 || r->len > max_len || r->len > KVRT_LLAMA2C_MAX_PIECE)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER,
                         "tokenizer.bin: token %d (byte %zu) has length %d, outside 0..%d (max_token_length %d)",
                         index, at, r->len, KVRT_MIN(max_len, KVRT_LLAMA2C_MAX_PIECE), max_len);
    if (size - at - 8 < (size_t)r->len)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER,
                         "tokenizer.bin: truncated in token %d (byte %zu): %d bytes announced, %zu left", index, at,
                         r->len, size - at - 8);
    r->bytes = d + at + 8;
    *off = at + 8 + (size_t)r->len;
    return KVRT_OK;
}

/* First pass: validates the whole file and counts its tokens. */
static kvrt_status scan_file(const unsigned char *d, size_t size, int32_t expected, int32_t *n_out, kvrt_error *err)
{
    if (size < 4)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin: %zu bytes, too short for its header", size);
    if (memcmp(d, "GGUF", 4) == 0)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER,
                         "this is a GGUF file, not a llama2.c tokenizer.bin: give it as the model (-m), "
                         "it carries its own vocabulary");
    int32_t max_len = read_i32le(d);
    if (max_len < 0)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin: max_token_length %d is negative", max_len);
    size_t off = 4;
    int32_t n = 0;
    while (off < size) {
        if (expected > 0 && n == expected)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER,
                             "tokenizer.bin: more than the model's %d tokens (byte %zu of %zu)", expected, off, size);
        if (n == KVRT_LLAMA2C_MAX_TOKENS)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin: more than %d tokens",
                             KVRT_LLAMA2C_MAX_TOKENS);
        l2c_record r = {0};
        KVRT_TRY(read_record(d, size, &off, n, max_len, &r, err));
        n++;
    }
    if (n == 0)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin: no tokens");
    if (expected > 0 && n != expected)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer.bin: %d tokens, the model has %d", n, expected);
    *n_out = n;
    return KVRT_OK;
}

static bool bytes_equal(const l2c_record *r, const char *s)
{
    size_t n = strlen(s);
    return (size_t)r->len == n && memcmp(r->bytes, s, n) == 0;
}

static bool is_hex_upper(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

/* SentencePiece writes byte pieces as <0xNN>, upper-case hex. */
static bool is_byte_piece(const l2c_record *r)
{
    const unsigned char *b = r->bytes;
    return r->len == 6 && memcmp(b, "<0x", 3) == 0 && is_hex_upper(b[3]) && is_hex_upper(b[4]) && b[5] == '>';
}

/* Normalises one record into vocab slot i (piece, length, type, score). */
static kvrt_status store_token(const l2c_record *r, int32_t i, const kvrt_allocator *alloc, kvrt_vocab *v,
                               kvrt_error *err)
{
    const char *special = NULL;
    int32_t type = KVRT_TOKEN_NORMAL;
    if (bytes_equal(r, "\n<s>\n")) {
        special = "<s>";
        type = KVRT_TOKEN_CONTROL;
    } else if (bytes_equal(r, "\n</s>\n")) {
        special = "</s>";
        type = KVRT_TOKEN_CONTROL;
    } else if (bytes_equal(r, "<unk>")) {
        type = KVRT_TOKEN_UNKNOWN;
    } else if (is_byte_piece(r)) {
        type = KVRT_TOKEN_BYTE;
    }
    size_t n;
    if (special) {
        n = strlen(special);
    } else {
        n = (size_t)r->len;
        for (int32_t k = 0; k < r->len; k++)
            n += r->bytes[k] == ' ' ? 2 : 0; /* ' ' (1 byte) -> U+2581 (3 bytes) */
    }
    char *p = kvrt_alloc(alloc, n + 1, 1);
    if (!p)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenizer.bin: no memory for token %d", i);
    if (special) {
        memcpy(p, special, n);
    } else {
        size_t o = 0;
        for (int32_t k = 0; k < r->len; k++) {
            if (r->bytes[k] == ' ') {
                memcpy(p + o, "\xe2\x96\x81", 3);
                o += 3;
            } else {
                p[o++] = (char)r->bytes[k];
            }
        }
    }
    p[n] = '\0';
    v->pieces[i] = p;
    v->piece_lens[i] = (int32_t)n; /* <= 3 * KVRT_LLAMA2C_MAX_PIECE */
    v->types[i] = type;
    v->scores[i] = r->score;
    return KVRT_OK;
}

static kvrt_status fill_vocab(const unsigned char *d, size_t size, int32_t n, const kvrt_allocator *alloc,
                              kvrt_vocab *v, kvrt_error *err)
{
    v->n_tokens = n;
    v->pieces = kvrt_calloc(alloc, (size_t)n, sizeof(char *));
    v->piece_lens = kvrt_calloc(alloc, (size_t)n, sizeof(int32_t));
    v->scores = kvrt_calloc(alloc, (size_t)n, sizeof(float));
    v->types = kvrt_calloc(alloc, (size_t)n, sizeof(int32_t));
    if (!v->pieces || !v->piece_lens || !v->scores || !v->types)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenizer.bin: no memory for %d tokens", n);
    int32_t max_len = read_i32le(d);
    size_t off = 4;
    for (int32_t i = 0; i < n; i++) {
        l2c_record r = {0};
        KVRT_TRY(read_record(d, size, &off, i, max_len, &r, err));
        KVRT_TRY(store_token(&r, i, alloc, v, err));
    }
    /* Fixed ids, as run.c has them. */
    v->unk_id = 0;
    v->bos_id = n > 1 ? 1 : -1;
    v->eos_id = n > 2 ? 2 : -1;
    v->add_bos = true;
    v->add_eos = false;
    v->add_space_prefix = true;
    return KVRT_OK;
}

kvrt_status kvrt_vocab_load_llama2c_memory(const void *data, size_t size, int32_t expected_n_tokens,
                                           const kvrt_allocator *alloc, kvrt_vocab *out, kvrt_error *err)
{
    if (!out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "tokenizer.bin: out is NULL");
    kvrt_vocab_init(out);
    if (!data && size > 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "tokenizer.bin: data is NULL");
    const unsigned char *d = data;
    int32_t n = 0;
    KVRT_TRY(scan_file(d, size, expected_n_tokens, &n, err));
    kvrt_status s = fill_vocab(d, size, n, alloc, out, err);
    if (s != KVRT_OK)
        kvrt_vocab_free(alloc, out);
    return s;
}

/* Reads a whole file into an allocation of *size bytes. */
static kvrt_status read_file(const char *path, const kvrt_allocator *alloc, void **data, size_t *size,
                             kvrt_error *err)
{
    *data = NULL;
    int fd;
    uint64_t end;
    KVRT_TRY(kvrt_open_regular_file(path, "tokenizer", &fd, &end, err)); /* a FIFO must not block */
    kvrt_status s = KVRT_OK;
    if (end > KVRT_LLAMA2C_MAX_FILE) {
        s = kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer %s: %llu bytes is too big for a tokenizer.bin", path,
                      (unsigned long long)end);
    } else {
        *size = (size_t)end;
        *data = kvrt_alloc(alloc, *size, 0);
        if (!*data)
            s = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "no memory to read tokenizer %s", path);
        for (size_t got = 0; s == KVRT_OK && got < *size;) {
            ssize_t r = read(fd, (char *)*data + got, *size - got);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                s = kvrt_fail(err, KVRT_ERR_IO, "cannot read tokenizer %s", path);
            else
                got += (size_t)r;
        }
    }
    close(fd);
    if (s != KVRT_OK) {
        kvrt_free(alloc, *data);
        *data = NULL;
    }
    return s;
}

kvrt_status kvrt_vocab_load_llama2c(const char *path, int32_t expected_n_tokens, const kvrt_allocator *alloc,
                                    kvrt_vocab *out, kvrt_error *err)
{
    if (!out || !path)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "tokenizer.bin: NULL argument");
    kvrt_vocab_init(out);
    void *data = NULL;
    size_t size = 0;
    KVRT_TRY(read_file(path, alloc, &data, &size, err));
    kvrt_status s = kvrt_vocab_load_llama2c_memory(data, size, expected_n_tokens, alloc, out, err);
    kvrt_free(alloc, data);
    if (s == KVRT_ERR_BAD_TOKENIZER && err) {
        /* Name the file: "tokenizer.bin: ..." alone does not say which. */
        char msg[KVRT_ERROR_MESSAGE_MAX];
        snprintf(msg, sizeof(msg), "%s", err->message);
        kvrt_fail(err, s, "%s (%s)", msg, path);
    }
    return s;
}

void kvrt_vocab_free(const kvrt_allocator *alloc, kvrt_vocab *vocab)
{
    if (!vocab)
        return;
    if (vocab->pieces)
        for (int32_t i = 0; i < vocab->n_tokens; i++)
            kvrt_free(alloc, vocab->pieces[i]);
    kvrt_free(alloc, vocab->pieces);
    kvrt_free(alloc, vocab->piece_lens);
    kvrt_free(alloc, vocab->scores);
    kvrt_free(alloc, vocab->types);
    kvrt_free(alloc, vocab->merge_text);
    kvrt_free(alloc, vocab->merge_offsets);
    kvrt_free(alloc, vocab->chat_template);
    kvrt_vocab_init(vocab);
}

void kvrt_vocab_init(kvrt_vocab *vocab)
{
    memset(vocab, 0, sizeof(*vocab));
    vocab->bos_id = vocab->eos_id = vocab->unk_id = vocab->eot_id = vocab->eom_id = -1;
}
