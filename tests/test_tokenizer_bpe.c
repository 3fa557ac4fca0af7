/* Byte-level BPE and special tokens, from the format and the algorithm:
 * GPT-2's byte-to-unicode table, merges by rank (ties leftmost), the
 * pre-tokenizers' splitting of whitespace, digits, contractions and scripts,
 * Llama 3's whole-word rule, special tokens only when asked, BOS/EOS from the
 * file, exact byte round trips, and clear errors for malformed vocabularies.
 * Real vocabularies: tests/data/vocab (GPT-2, Qwen3 BPE; Phi-3 SentencePiece
 * with added control tokens); small ones built here for the merge rules. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/model_file.h"
#include "model/synth.h"
#include "model/tokenizer.h"
#include "model/tokenizer_internal.h"

/* ---- helpers ------------------------------------------------------------------ */

typedef struct loaded {
    kvrt_model_file *mf;
    kvrt_tokenizer *tok;
} loaded;

static void load_vocab(const char *name, loaded *l)
{
    char path[1024];
    kvrt_error err;
    snprintf(path, sizeof(path), "%s/tests/data/vocab/%s", KVRT_SOURCE_DIR, name);
    if (kvrt_model_file_load_gguf(path, NULL, true, NULL, &l->mf, &err) != KVRT_OK)
        fail_msg("%s: %s", path, err.message);
    if (kvrt_tokenizer_create(&l->mf->vocab, NULL, &l->tok, &err) != KVRT_OK)
        fail_msg("%s: %s", path, err.message);
}

static void unload(loaded *l)
{
    kvrt_tokenizer_destroy(l->tok);
    kvrt_model_file_free(l->mf);
}

static int32_t *encode(kvrt_tokenizer *tok, const char *text, size_t len, unsigned flags, size_t *n)
{
    size_t need = 0;
    kvrt_status s = kvrt_tokenizer_encode(tok, text, len, flags, NULL, 0, &need);
    if (s != KVRT_OK && s != KVRT_ERR_INVALID_ARGUMENT)
        fail_msg("encode: %s", kvrt_tokenizer_message(tok));
    int32_t *ids = malloc((need + 1) * sizeof(int32_t));
    assert_non_null(ids);
    assert_int_equal(kvrt_tokenizer_encode(tok, text, len, flags, ids, need, n), KVRT_OK);
    assert_int_equal(*n, need);
    return ids;
}

static char *decode(kvrt_tokenizer *tok, const int32_t *ids, size_t n, size_t *len)
{
    size_t need = 0;
    assert_int_equal(kvrt_tokenizer_decode(tok, ids, n, NULL, 0, &need), KVRT_ERR_INVALID_ARGUMENT);
    char *buf = malloc(need + 1);
    assert_non_null(buf);
    assert_int_equal(kvrt_tokenizer_decode(tok, ids, n, buf, need + 1, len), KVRT_OK);
    return buf;
}

/* The pieces of the ids, joined by '|' (BPE's byte characters as stored). */
static void pieces_of(kvrt_tokenizer *tok, const int32_t *ids, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o < cap; i++) {
        size_t len = 0;
        const char *p = kvrt_tokenizer_piece(tok, ids[i], &len);
        o += (size_t)snprintf(out + o, cap - o, "%s%.*s", i ? "|" : "", (int)len, p);
    }
}

/* Encodes text and compares the pieces with `want` ("a|b|c"). */
static void assert_pieces(kvrt_tokenizer *tok, const char *text, unsigned flags, const char *want)
{
    size_t n = 0;
    int32_t *ids = encode(tok, text, strlen(text), flags, &n);
    char got[4096];
    pieces_of(tok, ids, n, got, sizeof(got));
    if (strcmp(got, want) != 0)
        fail_msg("encode(\"%s\"): pieces '%s', want '%s'", text, got, want);
    free(ids);
}

/* decode(encode(text)) gives the exact bytes back. */
static void assert_round_trip(kvrt_tokenizer *tok, const char *text, size_t len, unsigned flags)
{
    size_t n = 0, back = 0;
    int32_t *ids = encode(tok, text, len, flags, &n);
    char *out = decode(tok, ids, n, &back);
    if (back != len || memcmp(out, text, len) != 0)
        fail_msg("round trip of %zu bytes gave %zu bytes back", len, back);
    free(out);
    free(ids);
}

static int32_t id_of(kvrt_tokenizer *tok, const char *piece)
{
    int32_t id = kvrt_tok_find(tok, piece, strlen(piece));
    if (id < 0)
        id = kvrt_tokenizer_special_id(tok, piece, strlen(piece));
    if (id < 0)
        fail_msg("no token '%s'", piece);
    return id;
}

/* "Ġ" etc.: GPT-2's characters for bytes, to write expected pieces readably. */
#define SP "\xc4\xa0"  /* U+0120: the space byte */
#define NL "\xc4\x8a"  /* U+010A: the newline byte */

/* ---- GPT-2 ------------------------------------------------------------------------------------------------ */

/* Every byte alone is the token of its character in the table, and comes back. */
static void test_byte_table(void **state)
{
    (void)state;
    loaded l;
    load_vocab("gpt-2-vocab.gguf", &l);
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        size_t n = 0;
        int32_t *ids = encode(l.tok, &c, 1, 0, &n);
        assert_int_equal(n, 1);
        size_t len = 0;
        const char *p = kvrt_tokenizer_piece(l.tok, ids[0], &len);
        /* printable Latin-1 stands for itself, the rest from U+0100 in byte order */
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        unsigned cp = printable ? (unsigned)b : 0;
        if (!printable) {
            cp = 256;
            for (int k = 0; k < b; k++)
                cp += !((k >= 0x21 && k <= 0x7E) || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE));
        }
        char want[3];
        size_t wl = cp < 0x80 ? 1 : 2;
        if (wl == 1) {
            want[0] = (char)cp;
        } else {
            want[0] = (char)(0xC0 | (cp >> 6));
            want[1] = (char)(0x80 | (cp & 0x3F));
        }
        assert_int_equal(len, wl);
        assert_memory_equal(p, want, wl);
        assert_round_trip(l.tok, &c, 1, 0);
        free(ids);
    }
    unload(&l);
}

/* GPT-2's pre-tokenizer: a space joins the word after it, contractions split
 * off, digits run together, whitespace before a word keeps its last space
 * for the word. */
static void test_gpt2_splitting(void **state)
{
    (void)state;
    loaded l;
    load_vocab("gpt-2-vocab.gguf", &l);
    assert_pieces(l.tok, "Hello world", 0, "Hello|" SP "world");
    assert_pieces(l.tok, " Hello world", 0, SP "Hello|" SP "world");
    assert_pieces(l.tok, "   Hello", 0, SP "|" SP "|" SP "Hello"); /* GPT-2 has no merge of two spaces */
    assert_pieces(l.tok, "you'll", 0, "you|'ll");
    assert_pieces(l.tok, "I'm", 0, "I|'m");
    assert_pieces(l.tok, "Hello, world!", 0, "Hello|,|" SP "world|!");
    /* no plain \\s+ alternative: the newline before a letter is a word of its own */
    assert_pieces(l.tok, "a\n\nb", 0, "a|" NL "|" NL "|b");
    /* a digit run with its space is one pre-token; merges then cut it by rank, across the space */
    assert_pieces(l.tok, "year 2024 in 12345678", 0, "year|" SP "2024|" SP "in|" SP "123|45|678");
    size_t n = 0;
    int32_t *ids;
    /* no BOS: the file has no add_bos_token key, and GPT-2 adds none */
    assert_false(kvrt_tokenizer_adds_bos(l.tok));
    ids = encode(l.tok, "x", 1, KVRT_TOKENIZE_ADD_SPECIAL, &n);
    assert_int_equal(n, 1);
    free(ids);
    unload(&l);
}

/* ---- Qwen (pre qwen2) and Llama 3 (pre llama-bpe) ------------------------------------------------------------- */

static void test_qwen2_splitting(void **state)
{
    (void)state;
    loaded l;
    load_vocab("qwen3-vocab.gguf", &l);
    /* every digit alone */
    assert_pieces(l.tok, "1314151", 0, "1|3|1|4|1|5|1");
    /* a non-letter before letters joins them; case-insensitive contractions */
    assert_pieces(l.tok, "y'all", 0, "y|'all");
    assert_pieces(l.tok, "DON'T", 0, "DON|'T");
    /* newlines with the spaces before them, indentation with the next word */
    assert_pieces(l.tok, "a  \n    b", 0, "a|" SP SP NL "|" SP SP SP "|" SP "b");
    assert_false(kvrt_tokenizer_adds_bos(l.tok));
    unload(&l);
}

/* Llama 3's pre-tokenizer on GPT-2's vocabulary: digits in threes (GPT-2's
 * own runs them together and merges 13|14|151), and a word that is a token
 * whole is taken whole (ignore_merges). */
static void test_llama3_rules(void **state)
{
    (void)state;
    loaded l;
    load_vocab("gpt-2-vocab.gguf", &l);
    assert_pieces(l.tok, "1314151", 0, "13|14|151");
    kvrt_tokenizer_destroy(l.tok);
    snprintf(l.mf->vocab.pre, sizeof(l.mf->vocab.pre), "llama-bpe");
    kvrt_error err;
    assert_int_equal(kvrt_tokenizer_create(&l.mf->vocab, NULL, &l.tok, &err), KVRT_OK);
    assert_pieces(l.tok, "1314151", 0, "131|415|1");
    assert_pieces(l.tok, "33333", 0, "333|33");
    assert_true(kvrt_bpe_pre_adds_bos("llama-bpe"));
    assert_false(kvrt_bpe_pre_adds_bos("qwen2"));
    unload(&l);
}

/* Scripts, emoji (joiners, variation selectors), and bytes that are no UTF-8. */
static void test_round_trips(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "Hello, y'all! How are you \xf0\x9f\x98\x81 ?\xe6\x88\x91\xe6\x83\xb3\xe5\x9c\xa8" "apple1314151",
        "\xd0\xbd\xd0\xb5\xd1\x89\xd0\xbe \xd0\xbd\xd0\xb0 \xd0\x91\xd1\x8a\xd0\xbb\xd0\xb3\xd0\xb0\xd1\x80\xd1\x81\xd0\xba\xd0\xb8", /* Bulgarian */
        "\xe1\x9e\x80\xe1\x9e\xb6\xe1\x9e\x93\xe1\x9f\x8b", /* Khmer with a combining sign */
        "\xf0\x9f\x98\xb6\xe2\x80\x8d\xf0\x9f\x8c\xab\xef\xb8\x8f (emoji joined by ZWJ) \xe2\x9c\x85",
        "\t\t\n \n\n\n  \r\n\xc2\xa0\xe3\x80\x80 end  ",
        "int main(void) { return x->y[3] >= 0x7f ? -1 : 2; }",
    };
    const char *files[] = {"gpt-2-vocab.gguf", "qwen3-vocab.gguf"};
    for (size_t f = 0; f < 2; f++) {
        loaded l;
        load_vocab(files[f], &l);
        for (size_t i = 0; i < KVRT_ARRAY_LEN(texts); i++)
            assert_round_trip(l.tok, texts[i], strlen(texts[i]), 0);
        /* invalid UTF-8, lone continuation bytes, NULs */
        const char bad[] = "a\xff\xfe b\x80\xc3 \xe2\x82 x\x00y\xed\xa0\x80";
        assert_round_trip(l.tok, bad, sizeof(bad) - 1, 0);
        /* every byte value, in a pseudo-random order */
        char all[512];
        for (int i = 0; i < 512; i++)
            all[i] = (char)((i * 167 + 13) & 0xff);
        assert_round_trip(l.tok, all, sizeof(all), 0);
        unload(&l);
    }
}

/* ---- special tokens ------------------------------------------------------------------------------------------ */

static bool contains(const int32_t *ids, size_t n, int32_t id)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

static void test_special_tokens(void **state)
{
    (void)state;
    loaded l;
    load_vocab("qwen3-vocab.gguf", &l);
    const char *text = "<|im_start|>user\nhi <think>x</think><|im_end|>";
    int32_t start = id_of(l.tok, "<|im_start|>"), end = id_of(l.tok, "<|im_end|>"), think = id_of(l.tok, "<think>");
    size_t n = 0;
    /* parsed when asked: control (<|im_start|>) and user-defined (<think>) alike */
    int32_t *ids = encode(l.tok, text, strlen(text), KVRT_TOKENIZE_PARSE_SPECIAL, &n);
    assert_int_equal(ids[0], start);
    assert_int_equal(ids[n - 1], end);
    assert_true(contains(ids, n, think));
    assert_int_equal(ids[1], id_of(l.tok, "user"));
    free(ids);
    /* never by default: the text is text, and comes back whole */
    ids = encode(l.tok, text, strlen(text), 0, &n);
    assert_false(contains(ids, n, start) || contains(ids, n, end) || contains(ids, n, think));
    free(ids);
    assert_round_trip(l.tok, text, strlen(text), 0);
    /* decoding: control tokens give nothing, user-defined ones their text */
    int32_t seq[] = {start, think, end};
    size_t len = 0;
    char *out = decode(l.tok, seq, 3, &len);
    assert_string_equal(out, "<think>");
    free(out);
    /* end of generation: EOS (<|im_end|>) and the end-of-text piece */
    assert_true(kvrt_tokenizer_is_eog(l.tok, end));
    assert_true(kvrt_tokenizer_is_eog(l.tok, id_of(l.tok, "<|endoftext|>")));
    assert_false(kvrt_tokenizer_is_eog(l.tok, start));
    unload(&l);
}

/* Phi-3 (SentencePiece): its added tokens eat the whitespace after them,
 * and the text after a special token gets SentencePiece's leading space. */
static void test_phi3_special(void **state)
{
    (void)state;
    loaded l;
    load_vocab("phi-3-vocab.gguf", &l);
    const char *text = "<|user|>\nHello<|end|>\n<|assistant|>";
    size_t n = 0;
    int32_t *ids = encode(l.tok, text, strlen(text), KVRT_TOKENIZE_ADD_SPECIAL | KVRT_TOKENIZE_PARSE_SPECIAL, &n);
    int32_t want[] = {1, id_of(l.tok, "<|user|>"), id_of(l.tok, "\xe2\x96\x81Hello"), id_of(l.tok, "<|end|>"),
                      id_of(l.tok, "<|assistant|>")};
    assert_int_equal(n, KVRT_ARRAY_LEN(want));
    assert_memory_equal(ids, want, sizeof(want));
    free(ids);
    /* BOS from the file (add_bos_token true), no EOS (add_eos_token false) */
    assert_true(kvrt_tokenizer_adds_bos(l.tok));
    ids = encode(l.tok, "Hi", 2, KVRT_TOKENIZE_ADD_SPECIAL, &n);
    assert_int_equal(ids[0], 1);
    assert_int_not_equal(ids[n - 1], kvrt_tokenizer_eos(l.tok));
    free(ids);
    assert_true(kvrt_tokenizer_is_eog(l.tok, id_of(l.tok, "<|end|>")));
    assert_true(kvrt_tokenizer_is_eog(l.tok, id_of(l.tok, "<|endoftext|>")));
    unload(&l);
}

/* ---- small vocabularies: the merge rules and malformed files ------------------------------------------------- */

enum { MAX_EXTRA = 16, MAX_MERGES = 16 };

typedef struct tiny {
    kvrt_vocab v;
    char *pieces[256 + MAX_EXTRA];
    int32_t lens[256 + MAX_EXTRA];
    float scores[256 + MAX_EXTRA];
    int32_t types[256 + MAX_EXTRA];
    char store[256 + MAX_EXTRA][32];
    char merge_text[512];
    uint32_t offsets[MAX_MERGES + 1];
} tiny;

/* The 256 byte characters (ids 0..255 = bytes), then `extra` pieces, then merges. */
static void tiny_init(tiny *t, const char *const *extra, int n_extra, const char *const *merges, int n_merges,
                      const char *pre)
{
    memset(t, 0, sizeof(*t));
    kvrt_vocab_init(&t->v);
    int next = 256;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        unsigned cp = printable ? (unsigned)b : (unsigned)next++;
        char *s = t->store[b];
        if (cp < 0x80) {
            s[0] = (char)cp;
        } else {
            s[0] = (char)(0xC0 | (cp >> 6));
            s[1] = (char)(0x80 | (cp & 0x3F));
        }
    }
    for (int i = 0; i < n_extra; i++)
        snprintf(t->store[256 + i], sizeof(t->store[0]), "%s", extra[i]);
    int n = 256 + n_extra;
    for (int i = 0; i < n; i++) {
        t->pieces[i] = t->store[i];
        t->lens[i] = (int32_t)strlen(t->store[i]);
        t->types[i] = KVRT_TOKEN_NORMAL;
    }
    uint32_t o = 0;
    for (int i = 0; i < n_merges; i++) {
        t->offsets[i] = o;
        size_t ml = strlen(merges[i]);
        memcpy(t->merge_text + o, merges[i], ml);
        o += (uint32_t)ml;
    }
    t->offsets[n_merges] = o;
    t->v.kind = KVRT_VOCAB_BPE;
    t->v.n_tokens = n;
    t->v.pieces = t->pieces;
    t->v.piece_lens = t->lens;
    t->v.scores = t->scores;
    t->v.types = t->types;
    t->v.n_merges = n_merges;
    t->v.merge_text = t->merge_text;
    t->v.merge_offsets = t->offsets;
    snprintf(t->v.pre, sizeof(t->v.pre), "%s", pre);
}

static kvrt_tokenizer *tiny_tok(tiny *t)
{
    kvrt_tokenizer *tok = NULL;
    kvrt_error err;
    if (kvrt_tokenizer_create(&t->v, NULL, &tok, &err) != KVRT_OK)
        fail_msg("tiny vocabulary: %s", err.message);
    return tok;
}

/* Lowest rank first, whatever the order of the text; equal ranks leftmost. */
static void test_merge_order(void **state)
{
    (void)state;
    tiny t;
    const char *extra[] = {"ab", "bc", "abc", "aa"};
    const char *bc_first[] = {"b c", "a b", "a bc", "a a"};
    tiny_init(&t, extra, 4, bc_first, 4, "gpt-2");
    kvrt_tokenizer *tok = tiny_tok(&t);
    assert_pieces(tok, "abc", 0, "abc");   /* b c (rank 0), then a bc */
    assert_pieces(tok, "ab", 0, "ab");
    assert_pieces(tok, "aaa", 0, "aa|a");  /* the same merge twice: leftmost first */
    assert_pieces(tok, "abab", 0, "ab|ab");
    kvrt_tokenizer_destroy(tok);
    const char *ab_first[] = {"a b", "b c", "a bc", "a a"};
    tiny_init(&t, extra, 4, ab_first, 4, "gpt-2");
    tok = tiny_tok(&t);
    assert_pieces(tok, "abc", 0, "ab|c"); /* a b first leaves no bc; there is no merge "ab c" */
    kvrt_tokenizer_destroy(tok);
}

/* Llama 3 takes a word that is a token whole, even with no merge leading to it. */
static void test_ignore_merges(void **state)
{
    (void)state;
    tiny t;
    const char *extra[] = {"xyz"};
    tiny_init(&t, extra, 1, NULL, 0, "gpt-2");
    kvrt_tokenizer *tok = tiny_tok(&t);
    assert_pieces(tok, "xyz", 0, "x|y|z");
    kvrt_tokenizer_destroy(tok);
    tiny_init(&t, extra, 1, NULL, 0, "llama-bpe");
    tok = tiny_tok(&t);
    assert_pieces(tok, "xyz", 0, "xyz");
    assert_pieces(tok, "xyzw", 0, "x|y|z|w");
    kvrt_tokenizer_destroy(tok);
}

static void expect_create_error(tiny *t, kvrt_status want, const char *needle)
{
    kvrt_tokenizer *tok = (kvrt_tokenizer *)1;
    kvrt_error err;
    assert_int_equal(kvrt_tokenizer_create(&t->v, NULL, &tok, &err), want);
    assert_null(tok);
    if (!strstr(err.message, needle))
        fail_msg("message '%s' does not name '%s'", err.message, needle);
}

static void test_malformed(void **state)
{
    (void)state;
    tiny t;
    const char *extra[] = {"ab", "bc"};
    const char *part_missing[] = {"a b", "a zz"};
    tiny_init(&t, extra, 2, part_missing, 2, "gpt-2");
    expect_create_error(&t, KVRT_ERR_BAD_TOKENIZER, "'zz' is not a token");
    const char *dup[] = {"a b", "b c", "a b"};
    tiny_init(&t, extra, 2, dup, 3, "gpt-2");
    expect_create_error(&t, KVRT_ERR_BAD_TOKENIZER, "merge 2 ('a b') repeats merge 0");
    const char *no_space[] = {"ab"};
    tiny_init(&t, extra, 2, no_space, 1, "gpt-2");
    expect_create_error(&t, KVRT_ERR_BAD_TOKENIZER, "not two pieces");
    const char *no_result[] = {"c a"};
    tiny_init(&t, extra, 2, no_result, 1, "gpt-2");
    expect_create_error(&t, KVRT_ERR_BAD_TOKENIZER, "merged piece 'ca' is not a token");
    /* unknown pre-tokenizer: named, with the known ones */
    tiny_init(&t, extra, 2, NULL, 0, "llama-42");
    expect_create_error(&t, KVRT_ERR_UNSUPPORTED, "pre-tokenizer 'llama-42' is unknown");
    expect_create_error(&t, KVRT_ERR_UNSUPPORTED, "qwen2");
    /* no byte alphabet: a SentencePiece-looking vocabulary declared gpt2 */
    tiny_init(&t, extra, 2, NULL, 0, "gpt-2");
    t.pieces['q'] = (char *)"<0x71>";
    t.lens['q'] = 6;
    expect_create_error(&t, KVRT_ERR_BAD_TOKENIZER, "no token for byte 0x71");
    /* an expression that does not compile: the offset and PCRE2's reason */
    kvrt_error err;
    assert_int_equal(kvrt_bpe_check_expression("[\\p{L}+", &err), KVRT_ERR_BAD_TOKENIZER);
    assert_non_null(strstr(err.message, "does not compile at offset"));
    assert_int_equal(kvrt_bpe_check_expression("\\p{L}+", &err), KVRT_OK);
}

/* A byte the vocabulary has no token for (vocabularies leave out bytes no
 * UTF-8 text holds): an error naming it, not a silent drop. */
static void test_missing_byte(void **state)
{
    (void)state;
    tiny t;
    tiny_init(&t, NULL, 0, NULL, 0, "gpt-2");
    t.pieces[0xF8] = (char *)"\xe2\x98\x83"; /* no longer the character of byte 0xF8 */
    t.lens[0xF8] = 3;
    kvrt_tokenizer *tok = tiny_tok(&t);
    int32_t ids[8];
    size_t n = 0;
    assert_int_equal(kvrt_tokenizer_encode(tok, "a\xf8", 2, 0, ids, 8, &n), KVRT_ERR_BAD_TOKENIZER);
    assert_non_null(strstr(kvrt_tokenizer_message(tok), "0xF8"));
    kvrt_tokenizer_destroy(tok);
}

/* add_bos / add_eos as the vocabulary says, only with ADD_SPECIAL. */
static void test_bos_eos_flags(void **state)
{
    (void)state;
    tiny t;
    const char *extra[] = {"<s>", "</s>"};
    tiny_init(&t, extra, 2, NULL, 0, "gpt-2");
    t.types[256] = t.types[257] = KVRT_TOKEN_CONTROL;
    t.v.bos_id = 256;
    t.v.eos_id = 257;
    t.v.add_bos = true;
    t.v.add_eos = true;
    kvrt_tokenizer *tok = tiny_tok(&t);
    int32_t ids[8];
    size_t n = 0;
    assert_int_equal(kvrt_tokenizer_encode(tok, "a", 1, KVRT_TOKENIZE_ADD_SPECIAL, ids, 8, &n), KVRT_OK);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 256);
    assert_int_equal(ids[1], 'a');
    assert_int_equal(ids[2], 257);
    assert_int_equal(kvrt_tokenizer_encode(tok, "a", 1, 0, ids, 8, &n), KVRT_OK);
    assert_int_equal(n, 1);
    /* "</s>" in the text is text unless asked */
    assert_int_equal(kvrt_tokenizer_encode(tok, "</s>", 4, 0, ids, 8, &n), KVRT_OK);
    assert_int_equal(n, 4);
    assert_int_equal(kvrt_tokenizer_encode(tok, "</s>", 4, KVRT_TOKENIZE_PARSE_SPECIAL, ids, 8, &n), KVRT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 257);
    assert_true(kvrt_tokenizer_is_eog(tok, 257));
    kvrt_tokenizer_destroy(tok);
}

/* Longest special piece first, then left to right (llama.cpp's order). */
static void test_special_priority(void **state)
{
    (void)state;
    tiny t;
    const char *extra[] = {"<a>", "<a><b>", "b>x"};
    tiny_init(&t, extra, 3, NULL, 0, "gpt-2");
    t.types[256] = t.types[257] = t.types[258] = KVRT_TOKEN_USER_DEFINED;
    kvrt_tokenizer *tok = tiny_tok(&t);
    /* <a><b> wins over <a>; then b>x finds nothing left unclaimed in "<a><b>x" */
    assert_pieces(tok, "<a><b>x<a>", KVRT_TOKENIZE_PARSE_SPECIAL, "<a><b>|x|<a>");
    kvrt_tokenizer_destroy(tok);
}

/* A BPE vocabulary written back (kvrt's GGUF writer, as an exported model
 * carries it) reads the same and tokenizes the same. */
static void test_export_round_trip(void **state)
{
    (void)state;
    loaded l;
    load_vocab("qwen3-vocab.gguf", &l);
    kvrt_gguf_writer *w = NULL;
    assert_int_equal(kvrt_gguf_writer_create(NULL, 0, &w, NULL), KVRT_OK);
    assert_int_equal(kvrt_llama_add_vocab(w, &l.mf->vocab), KVRT_OK);
    FILE *f = tmpfile();
    assert_non_null(f);
    assert_int_equal(kvrt_gguf_writer_write_header(w, f), KVRT_OK);
    assert_int_equal(kvrt_gguf_writer_finish(w, f), KVRT_OK);
    kvrt_gguf_writer_destroy(w);
    long size = ftell(f);
    char *bytes = malloc((size_t)size);
    assert_non_null(bytes);
    rewind(f);
    assert_int_equal(fread(bytes, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    kvrt_model_file *back = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_gguf_memory(bytes, (size_t)size, NULL, true, &back, &err), KVRT_OK);
    const kvrt_vocab *a = &l.mf->vocab, *b = &back->vocab;
    assert_int_equal(b->kind, KVRT_VOCAB_BPE);
    assert_string_equal(b->pre, a->pre);
    assert_int_equal(b->n_merges, a->n_merges);
    assert_int_equal(b->merge_offsets[b->n_merges], a->merge_offsets[a->n_merges]);
    assert_memory_equal(b->merge_text, a->merge_text, a->merge_offsets[a->n_merges]);
    assert_int_equal(b->eos_id, a->eos_id);
    assert_int_equal(b->add_bos, a->add_bos);
    assert_string_equal(b->chat_template, a->chat_template);
    kvrt_tokenizer *tok = NULL;
    assert_int_equal(kvrt_tokenizer_create(b, NULL, &tok, &err), KVRT_OK);
    const char *text = "Export me: 12 \xe6\x88\x91 <|im_end|>";
    size_t n1 = 0, n2 = 0;
    int32_t *x = encode(l.tok, text, strlen(text), KVRT_TOKENIZE_PARSE_SPECIAL, &n1);
    int32_t *y = encode(tok, text, strlen(text), KVRT_TOKENIZE_PARSE_SPECIAL, &n2);
    assert_int_equal(n1, n2);
    assert_memory_equal(x, y, n1 * sizeof(int32_t));
    free(x);
    free(y);
    kvrt_tokenizer_destroy(tok);
    kvrt_model_file_free(back);
    free(bytes);
    unload(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_table),      cmocka_unit_test(test_gpt2_splitting),
        cmocka_unit_test(test_qwen2_splitting), cmocka_unit_test(test_llama3_rules),
        cmocka_unit_test(test_round_trips),     cmocka_unit_test(test_special_tokens),
        cmocka_unit_test(test_phi3_special),    cmocka_unit_test(test_merge_order),
        cmocka_unit_test(test_ignore_merges),   cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_missing_byte),    cmocka_unit_test(test_bos_eos_flags),
        cmocka_unit_test(test_special_priority), cmocka_unit_test(test_export_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
