/*
 * libFuzzer target: the byte-level BPE tokenizer (merges, pre-tokenizers,
 * special tokens) and its vocabulary checks.
 *
 * Input: byte 0 = flags (bit 2: parse special tokens, bit 3: add BOS/EOS), then
 *   flags bit 0 set: the rest is text for a real vocabulary read at start-up
 *     (bit 1: Qwen3's, else GPT-2's, from tests/data/vocab);
 *   flags bit 0 clear: byte 1 picks a pre-tokenizer, byte 2 the number of
 *     extra pieces (low 4 bits) and merges (high 4 bits), byte 3 their types;
 *     then that many '\n'-terminated lines of pieces and of merges ("A B")
 *     over the 256 byte characters, and the rest is the text. Malformed
 *     merges must be refused with a message, never crash.
 * Whatever the input, nothing may crash or leak, every id is inside the
 * vocabulary, and decode(encode(text)) gives the exact bytes back whenever
 * only normal tokens came out (special tokens not parsed).
 */
#include "model/model_file.h"
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kvrt_model_file *g_mf[2];
static kvrt_tokenizer *g_tok[2]; /* built once: 150,000-token maps are slow to rebuild per input */

static void load_real(int which, const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/data/vocab/%s", KVRT_SOURCE_DIR, name);
    kvrt_error err;
    if (kvrt_model_file_load_gguf(path, NULL, true, NULL, &g_mf[which], &err) != KVRT_OK ||
        kvrt_tokenizer_create(&g_mf[which]->vocab, NULL, &g_tok[which], &err) != KVRT_OK) {
        fprintf(stderr, "fuzz_bpe: %s: %s\n", path, err.message);
        abort(); /* the vocabularies are in the repository: a failure here is a bug */
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    load_real(0, "gpt-2-vocab.gguf");
    load_real(1, "qwen3-vocab.gguf");
    return 0;
}

static void check_round_trip(kvrt_tokenizer *tok, const char *text, size_t len, const int32_t *ids, size_t n,
                             unsigned flags)
{
    if (flags & KVRT_TOKENIZE_PARSE_SPECIAL)
        return;
    size_t first = 0, count = n;
    if (flags & KVRT_TOKENIZE_ADD_SPECIAL) { /* BOS / EOS decode to nothing */
        first = n > 0 && ids[0] == kvrt_tokenizer_bos(tok) && kvrt_tokenizer_adds_bos(tok) ? 1 : 0;
        count = n - first;
    }
    for (size_t i = first; i < first + count; i++)
        if (kvrt_tokenizer_type(tok, ids[i]) != KVRT_TOKEN_NORMAL)
            return;
    size_t need = 0, got = 0;
    if (kvrt_tokenizer_decode(tok, ids + first, count, NULL, 0, &need) != KVRT_ERR_INVALID_ARGUMENT)
        abort();
    char *out = malloc(need + 1);
    if (!out || kvrt_tokenizer_decode(tok, ids + first, count, out, need + 1, &got) != KVRT_OK || got != need)
        abort();
    if (got != len || memcmp(out, text, len) != 0)
        abort();
    free(out);
}

static void run_text(kvrt_tokenizer *tok, const char *text, size_t len, unsigned flags)
{
    size_t need = 0, n = 0;
    kvrt_status s = kvrt_tokenizer_encode(tok, text, len, flags, NULL, 0, &need);
    if (s != KVRT_OK && s != KVRT_ERR_INVALID_ARGUMENT)
        return; /* a byte without a token: refused with a message */
    int32_t *ids = malloc((need + 1) * sizeof(int32_t));
    if (!ids)
        return;
    if (kvrt_tokenizer_encode(tok, text, len, flags, ids, need, &n) != KVRT_OK || n != need)
        abort();
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= kvrt_tokenizer_n_tokens(tok))
            abort();
    check_round_trip(tok, text, len, ids, n, flags);
    char piece[4];
    size_t plen;
    for (size_t i = 0; i < n && i < 64; i++) /* small buffers: the too-small path */
        (void)kvrt_tokenizer_token_to_piece(tok, i ? ids[i - 1] : -1, ids[i], piece, sizeof(piece), &plen);
    free(ids);
}

/* ---- synthetic vocabularies ------------------------------------------------------------------ */

enum { MAX_EXTRA = 15, MAX_MERGES = 15 };

typedef struct synth {
    kvrt_vocab v;
    char *pieces[256 + MAX_EXTRA];
    int32_t lens[256 + MAX_EXTRA];
    float scores[256 + MAX_EXTRA];
    int32_t types[256 + MAX_EXTRA];
    char bytes[256][3];
    uint32_t offsets[MAX_MERGES + 1];
} synth;

/* Next '\n'-terminated line of data[*o .. size): its start and length, or false. */
static bool next_line(const uint8_t *data, size_t size, size_t *o, const char **line, size_t *len)
{
    const uint8_t *nl = *o < size ? memchr(data + *o, '\n', size - *o) : NULL;
    if (!nl)
        return false;
    *line = (const char *)data + *o;
    *len = (size_t)(nl - (data + *o));
    *o = (size_t)(nl - data) + 1;
    return true;
}

static void run_synthetic(const uint8_t *data, size_t size, unsigned flags)
{
    static const char *const pres[] = {"gpt-2", "llama-bpe", "qwen2", "smollm", "deepseek-llm", "default",
                                       "deepseek-coder", "falcon", "deepseek-v3", "tekken"};
    if (size < 4)
        return;
    synth *s = calloc(1, sizeof(*s));
    char *merge_text = malloc(size);
    if (!s || !merge_text) {
        free(s);
        free(merge_text);
        return;
    }
    kvrt_vocab_init(&s->v);
    int n_extra = data[2] & 15, n_merges = data[2] >> 4, next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        unsigned cp = printable ? (unsigned)b : (unsigned)next++;
        if (cp < 0x80) {
            s->bytes[b][0] = (char)cp;
        } else {
            s->bytes[b][0] = (char)(0xC0 | (cp >> 6));
            s->bytes[b][1] = (char)(0x80 | (cp & 0x3F));
        }
        s->pieces[b] = s->bytes[b];
        s->lens[b] = (int32_t)strlen(s->bytes[b]);
        s->types[b] = KVRT_TOKEN_NORMAL;
    }
    size_t o = 4;
    int n = 256;
    const char *line;
    size_t len;
    static const int32_t kinds[4] = {KVRT_TOKEN_NORMAL, KVRT_TOKEN_NORMAL, KVRT_TOKEN_USER_DEFINED, KVRT_TOKEN_CONTROL};
    char *copies[MAX_EXTRA] = {0};
    for (int i = 0; i < n_extra && next_line(data, size, &o, &line, &len); i++, n++) {
        copies[i] = malloc(len + 1);
        if (!copies[i])
            goto out;
        memcpy(copies[i], line, len);
        copies[i][len] = '\0';
        s->pieces[n] = copies[i];
        s->lens[n] = (int32_t)len;
        s->types[n] = kinds[(data[3] >> (2 * (i % 4))) & 3];
    }
    uint32_t mo = 0;
    int m = 0;
    for (; m < n_merges && next_line(data, size, &o, &line, &len); m++) {
        s->offsets[m] = mo;
        memcpy(merge_text + mo, line, len);
        mo += (uint32_t)len;
    }
    s->offsets[m] = mo;
    s->v.kind = KVRT_VOCAB_BPE;
    s->v.n_tokens = n;
    s->v.pieces = s->pieces;
    s->v.piece_lens = s->lens;
    s->v.scores = s->scores;
    s->v.types = s->types;
    s->v.n_merges = m;
    s->v.merge_text = merge_text;
    s->v.merge_offsets = s->offsets;
    snprintf(s->v.pre, sizeof(s->v.pre), "%s", pres[data[1] % (sizeof(pres) / sizeof(pres[0]))]);
    kvrt_tokenizer *tok = NULL;
    kvrt_error err;
    if (kvrt_tokenizer_create(&s->v, NULL, &tok, &err) == KVRT_OK) {
        run_text(tok, (const char *)data + o, size - o, flags);
        kvrt_tokenizer_destroy(tok);
    } else if (err.message[0] == '\0') {
        abort(); /* every refusal says why */
    }
out:
    for (int i = 0; i < MAX_EXTRA; i++)
        free(copies[i]);
    free(merge_text);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t f = data[0];
    unsigned flags = ((f & 4) ? KVRT_TOKENIZE_PARSE_SPECIAL : 0u) | ((f & 8) ? KVRT_TOKENIZE_ADD_SPECIAL : 0u);
    if (f & 1)
        run_text(g_tok[(f & 2) ? 1 : 0], (const char *)data + 1, size - 1, flags);
    else
        run_synthetic(data, size, flags);
    return 0;
}
