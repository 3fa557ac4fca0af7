/*
 * libFuzzer target: the llama2.c tokenizer.bin loader and the tokenizer.
 *
 * Input: byte 0 = flags, then
 *   flags bit 0 clear: uint32 LE length L, L bytes of tokenizer.bin (clamped
 *     to what is there), the rest is the text: fuzzes the loader, the
 *     vocabulary checks and the encoder on arbitrary vocabularies;
 *   flags bit 0 set: the rest is the text, tokenized with a real vocabulary
 *     read at start-up (bit 1: tokenizer.bin of Llama-2, else tok512.bin).
 * Bit 2 asks for BOS. Whatever the input, nothing may crash or leak, and
 * decode(encode(text)) must give the text back whenever the vocabulary can
 * represent every byte (see check_round_trip).
 */
#include "model/model_file.h"
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kvrt_vocab g_real[2];
static kvrt_tokenizer *g_real_tok[2]; /* built once: 32,000-token maps are slow to rebuild per input */
static bool g_have_real[2];
static bool g_real_bytes[2]; /* has_all_byte_pieces, computed once */
static bool g_real_space[2]; /* has_space_piece, computed once */

static bool scan_byte_pieces(const kvrt_vocab *v);
static bool scan_space_piece(const kvrt_vocab *v);

static void load_real(int which, const char *name)
{
    const char *dir = getenv("KVRT_TEST_MODELS");
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir && *dir ? dir : KVRT_DEFAULT_MODELS_DIR, name);
    g_have_real[which] = kvrt_vocab_load_llama2c(path, 0, NULL, &g_real[which], NULL) == KVRT_OK &&
                         kvrt_tokenizer_create(&g_real[which], NULL, &g_real_tok[which], NULL) == KVRT_OK;
    if (g_have_real[which]) {
        g_real_bytes[which] = scan_byte_pieces(&g_real[which]);
        g_real_space[which] = scan_space_piece(&g_real[which]);
    } else {
        fprintf(stderr, "fuzz_tokenizer: %s not found; real-vocabulary inputs are skipped\n", path);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    load_real(0, "tok512.bin");
    load_real(1, "tokenizer.bin");
    return 0;
}

static bool scan_byte_pieces(const kvrt_vocab *v)
{
    bool seen[256] = {false};
    int n = 0;
    for (int32_t i = 0; i < v->n_tokens; i++) {
        const char *p = v->pieces[i];
        if (v->types[i] != KVRT_TOKEN_BYTE || v->piece_lens[i] != 6)
            continue;
        unsigned b = (unsigned)strtoul(p + 3, NULL, 16);
        if (b < 256 && !seen[b]) {
            seen[b] = true;
            n++;
        }
    }
    return n == 256;
}

static bool has_all_byte_pieces(const kvrt_vocab *v)
{
    for (int r = 0; r < 2; r++)
        if (v == &g_real[r])
            return g_real_bytes[r];
    return scan_byte_pieces(v);
}

/* Whether some piece is U+2581 alone (by length: a fuzzed piece may hold a
 * NUL after it): then every space has a normal piece.
 * Without one (a fuzzed vocabulary), a space the merges cannot absorb falls
 * back to the byte pieces of U+2581, which decode to U+2581 itself, not a
 * space, as in SentencePiece, llama.cpp and Hugging Face's Llama decoder. */
static bool scan_space_piece(const kvrt_vocab *v)
{
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (v->types[i] == KVRT_TOKEN_NORMAL && v->piece_lens[i] == 3 && memcmp(v->pieces[i], "\xe2\x96\x81", 3) == 0)
            return true;
    return false;
}

static bool has_space_piece(const kvrt_vocab *v)
{
    for (int r = 0; r < 2; r++)
        if (v == &g_real[r])
            return g_real_space[r];
    return scan_space_piece(v);
}

/* The text comes back unless it holds U+2581 (which decodes to a space), a
 * byte has no piece, or a space has none; the one other difference allowed
 * is the encoder's leading U+2581, which stays when it had to fall back to
 * byte pieces (only a normal piece's leading space is dropped after BOS). */
static void check_round_trip(kvrt_tokenizer *tok, const kvrt_vocab *v, const char *text, size_t len,
                             const int32_t *ids, size_t n, bool bos)
{
    if (!has_all_byte_pieces(v) || memmem(text, len, "\xe2\x96\x81", 3))
        return;
    if ((memchr(text, ' ', len) || v->add_space_prefix) && !has_space_piece(v))
        return;
    /* llama2.c fixes BOS at id 1; in a fuzzed vocabulary that may be a normal
     * piece, which the encoder can produce and the decoder takes for BOS. */
    if (v->bos_id >= 0 && v->types[v->bos_id] != KVRT_TOKEN_CONTROL)
        return;
    size_t need = 0;
    if (kvrt_tokenizer_decode(tok, ids, n, NULL, 0, &need) != KVRT_ERR_INVALID_ARGUMENT)
        abort();
    char *out = malloc(need + 1);
    size_t got = 0;
    if (!out || kvrt_tokenizer_decode(tok, ids, n, out, need + 1, &got) != KVRT_OK || got != need)
        abort();
    size_t first = bos && v->bos_id >= 0 ? 1 : 0;
    bool prefix_kept = len > 0 && v->add_space_prefix && (first == 0 || v->types[ids[first]] == KVRT_TOKEN_BYTE);
    if (prefix_kept) {
        /* with no BOS the first normal piece keeps its space too */
        const char *lead = first == 0 && v->types[ids[0]] != KVRT_TOKEN_BYTE ? " " : "\xe2\x96\x81";
        size_t ll = strlen(lead);
        if (got != len + ll || memcmp(out, lead, ll) != 0 || memcmp(out + ll, text, len) != 0)
            abort();
    } else if (got != len || memcmp(out, text, len) != 0) {
        abort();
    }
    free(out);
}

/* tok: a tokenizer over v, or NULL to build (and destroy) one here. */
static void run_text(const kvrt_vocab *v, kvrt_tokenizer *tok, const char *text, size_t len, bool bos)
{
    kvrt_tokenizer *own = NULL;
    if (!tok && kvrt_tokenizer_create(v, NULL, &own, NULL) != KVRT_OK)
        return;
    if (!tok)
        tok = own;
    size_t need = 0, n = 0;
    kvrt_status s = kvrt_tokenizer_encode(tok, text, len, bos, NULL, 0, &need);
    int32_t *ids = malloc((need + 1) * sizeof(int32_t));
    if (ids && (s == KVRT_OK || s == KVRT_ERR_INVALID_ARGUMENT) &&
        kvrt_tokenizer_encode(tok, text, len, bos, ids, need, &n) == KVRT_OK) {
        if (n != need)
            abort();
        for (size_t i = 0; i < n; i++)
            if (ids[i] < 0 || ids[i] >= v->n_tokens)
                abort();
        check_round_trip(tok, v, text, len, ids, n, bos);
        char piece[8];
        size_t plen;
        for (size_t i = 0; i < n && i < 64; i++) /* small buffers: the too-small path */
            (void)kvrt_tokenizer_token_to_piece(tok, i ? ids[i - 1] : -1, ids[i], piece, sizeof(piece), &plen);
    }
    free(ids);
    kvrt_tokenizer_destroy(own);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    bool bos = (flags & 4) != 0;
    if (flags & 1) {
        int which = (flags & 2) ? 1 : 0;
        if (g_have_real[which])
            run_text(&g_real[which], g_real_tok[which], (const char *)data + 1, size - 1, bos);
        return 0;
    }
    if (size < 5)
        return 0;
    uint32_t vlen = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16 | (uint32_t)data[4] << 24;
    size_t rest = size - 5;
    size_t vl = vlen < rest ? vlen : rest;
    kvrt_vocab v;
    if (kvrt_vocab_load_llama2c_memory(data + 5, vl, 0, NULL, &v, NULL) != KVRT_OK)
        return 0;
    run_text(&v, NULL, (const char *)data + 5 + vl, rest - vl, bos);
    kvrt_vocab_free(NULL, &v);
    return 0;
}
