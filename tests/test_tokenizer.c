/* SentencePiece-BPE tokenizer: encode/decode on the real llama2.c vocabularies
 * (tok512.bin of stories260K, the 32,000-token Llama-2 tokenizer.bin) and on
 * small synthetic vocabularies, checked against known results, a naive
 * reference implementation in this file, and round trips. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model_file.h"
#include "model/tokenizer.h"
#include "test_models.h"

/* ---- helpers ------------------------------------------------------------------ */

static char *read_model_file(const char *name, size_t *size)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", kvrt_test_models_dir(), name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *d = malloc((size_t)n + 1);
    assert_non_null(d);
    assert_int_equal(fread(d, 1, (size_t)n, f), (size_t)n);
    d[n] = '\0';
    fclose(f);
    *size = (size_t)n;
    return d;
}

typedef struct loaded {
    kvrt_vocab vocab;
    kvrt_tokenizer *tok;
} loaded;

static void load(const char *name, loaded *l)
{
    char path[1024];
    kvrt_error err;
    snprintf(path, sizeof(path), "%s/%s", kvrt_test_models_dir(), name);
    kvrt_status s = kvrt_vocab_load_llama2c(path, 0, NULL, &l->vocab, &err);
    if (s != KVRT_OK)
        fail_msg("%s: %s", path, err.message);
    assert_int_equal(kvrt_tokenizer_create(&l->vocab, NULL, &l->tok, &err), KVRT_OK);
}

static void unload(loaded *l)
{
    kvrt_tokenizer_destroy(l->tok);
    kvrt_vocab_free(NULL, &l->vocab);
}

/* Encodes into a malloc'ed array (checking the size query first). */
static int32_t *encode(kvrt_tokenizer *tok, const char *text, size_t len, bool bos, size_t *n)
{
    size_t need = 0;
    kvrt_status s = kvrt_tokenizer_encode(tok, text, len, bos, NULL, 0, &need);
    assert_true(s == KVRT_OK || s == KVRT_ERR_INVALID_ARGUMENT);
    assert_true(s == KVRT_OK ? need == 0 : need > 0);
    int32_t *ids = malloc((need + 1) * sizeof(int32_t));
    assert_non_null(ids);
    assert_int_equal(kvrt_tokenizer_encode(tok, text, len, bos, ids, need, n), KVRT_OK);
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
    assert_int_equal(*len, need);
    assert_int_equal(buf[need], '\0');
    return buf;
}

/* Parses "1 2 3" into ids; returns the count. */
static size_t parse_ids(const char *s, int32_t *ids, size_t cap)
{
    size_t n = 0;
    char *end;
    for (;;) {
        long v = strtol(s, &end, 10);
        if (end == s)
            break;
        assert_true(n < cap);
        ids[n++] = (int32_t)v;
        s = end;
    }
    return n;
}

static void assert_encodes(kvrt_tokenizer *tok, const char *text, bool bos, const char *expected)
{
    int32_t want[256];
    size_t n_want = parse_ids(expected, want, 256), n = 0;
    int32_t *got = encode(tok, text, strlen(text), bos, &n);
    bool same = n == n_want && memcmp(got, want, n * sizeof(int32_t)) == 0;
    if (!same) {
        fprintf(stderr, "encode(\"%s\"): want %s, got", text, expected);
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", got[i]);
        fprintf(stderr, "\n");
    }
    free(got);
    assert_true(same);
}

static void assert_round_trip(kvrt_tokenizer *tok, const char *text, size_t len)
{
    size_t n = 0, out_len = 0;
    int32_t *ids = encode(tok, text, len, true, &n);
    char *back = decode(tok, ids, n, &out_len);
    assert_int_equal(out_len, len);
    assert_memory_equal(back, text, len);
    free(back);
    free(ids);
}

static void assert_piece(kvrt_tokenizer *tok, int32_t id, const char *piece)
{
    size_t len = 0;
    const char *p = kvrt_tokenizer_piece(tok, id, &len);
    assert_non_null(p);
    assert_int_equal(len, strlen(piece));
    assert_memory_equal(p, piece, len);
}

/* ---- a naive reference: whole-scan BPE with a sorted piece table ----------------- */

typedef struct naive_ref {
    const kvrt_vocab *v;
    int32_t *order; /* ids of mergeable pieces sorted by bytes */
    int32_t n;
} naive_ref;

static const kvrt_vocab *g_sort_vocab;

static int cmp_bytes(const char *a, size_t na, const char *b, size_t nb)
{
    int c = memcmp(a, b, na < nb ? na : nb);
    return c ? c : (na > nb) - (na < nb);
}

static int cmp_ids(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    const kvrt_vocab *v = g_sort_vocab;
    int c = cmp_bytes(v->pieces[a], (size_t)v->piece_lens[a], v->pieces[b], (size_t)v->piece_lens[b]);
    return c ? c : (a > b) - (a < b); /* duplicates: lowest id first */
}

static void naive_init(naive_ref *r, const kvrt_vocab *v)
{
    r->v = v;
    r->order = malloc((size_t)v->n_tokens * sizeof(int32_t));
    r->n = 0;
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (v->types[i] == KVRT_TOKEN_NORMAL || v->types[i] == KVRT_TOKEN_USER_DEFINED)
            r->order[r->n++] = i;
    g_sort_vocab = v;
    qsort(r->order, (size_t)r->n, sizeof(int32_t), cmp_ids);
}

static int32_t naive_find(const naive_ref *r, const char *s, size_t n)
{
    int32_t lo = 0, hi = r->n; /* first entry >= s */
    while (lo < hi) {
        int32_t mid = (lo + hi) / 2, id = r->order[mid];
        if (cmp_bytes(r->v->pieces[id], (size_t)r->v->piece_lens[id], s, n) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < r->n) {
        int32_t id = r->order[lo];
        if (cmp_bytes(r->v->pieces[id], (size_t)r->v->piece_lens[id], s, n) == 0)
            return id;
    }
    return -1;
}

/* Symbols as (start, len) over the normalised text; whole scans for the best pair. */
static size_t naive_encode(const naive_ref *r, const char *text, size_t len, int32_t *ids)
{
    char *t = malloc(3 * len + 4);
    size_t tl = 0, *st = malloc((3 * len + 4) * sizeof(size_t)), *ln = malloc((3 * len + 4) * sizeof(size_t));
    if (len > 0 && r->v->add_space_prefix) {
        memcpy(t, "\xe2\x96\x81", 3);
        tl = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(t + tl, "\xe2\x96\x81", 3);
            tl += 3;
        } else {
            t[tl++] = text[i];
        }
    }
    size_t ns = 0;
    for (size_t i = 0; i < tl;) {
        unsigned char c = (unsigned char)t[i];
        size_t need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 1;
        for (size_t k = 1; k < need; k++)
            if (i + k >= tl || ((unsigned char)t[i + k] & 0xC0) != 0x80)
                need = 1;
        st[ns] = i;
        ln[ns++] = need;
        i += need;
    }
    for (;;) {
        float best = 0;
        size_t at = SIZE_MAX;
        for (size_t i = 0; i + 1 < ns; i++) {
            int32_t id = naive_find(r, t + st[i], ln[i] + ln[i + 1]);
            if (id >= 0 && (at == SIZE_MAX || r->v->scores[id] > best)) {
                best = r->v->scores[id];
                at = i;
            }
        }
        if (at == SIZE_MAX)
            break;
        ln[at] += ln[at + 1];
        memmove(st + at + 1, st + at + 2, (ns - at - 2) * sizeof(size_t));
        memmove(ln + at + 1, ln + at + 2, (ns - at - 2) * sizeof(size_t));
        ns--;
    }
    size_t n = 0;
    for (size_t i = 0; i < ns; i++) {
        int32_t id = naive_find(r, t + st[i], ln[i]);
        if (id >= 0) {
            ids[n++] = id;
            continue;
        }
        for (size_t k = 0; k < ln[i]; k++) {
            char bp[8];
            snprintf(bp, sizeof(bp), "<0x%02X>", (unsigned char)t[st[i] + k]);
            int32_t b = -1;
            for (int32_t j = 0; j < r->v->n_tokens && b < 0; j++)
                if (r->v->types[j] == KVRT_TOKEN_BYTE && strcmp(r->v->pieces[j], bp) == 0)
                    b = j;
            ids[n++] = b >= 0 ? b : r->v->unk_id;
        }
    }
    free(t);
    free(st);
    free(ln);
    return n;
}

/* ---- stories260K's tok512 ---------------------------------------------------------- */

static void test_tok512_prompt(void **state)
{
    (void)state;
    loaded l;
    load("tok512.bin", &l);
    assert_int_equal(kvrt_tokenizer_n_tokens(l.tok), 512);
    assert_int_equal(kvrt_tokenizer_bos(l.tok), 1);
    assert_int_equal(kvrt_tokenizer_eos(l.tok), 2);
    assert_true(kvrt_tokenizer_adds_bos(l.tok));
    /* prompt_ids.txt of the golden run */
    assert_encodes(l.tok, "Once upon a time", true, "1 403 407 261 378");
    assert_encodes(l.tok, "Once upon a time", false, "403 407 261 378");
    assert_piece(l.tok, 403, "\xe2\x96\x81Once");
    assert_piece(l.tok, 261, "\xe2\x96\x81" "a");
    unload(&l);
}

/* The golden run of stories260K: its decoded text is what run.c printed (plus
 * the final newline run.c adds). A greedy generation need not be the
 * canonical tokenization of its own text; for this run it happens to be (257
 * ids, checked), so re-encoding must give it back too. */
static void test_tok512_golden_text(void **state)
{
    (void)state;
    loaded l;
    load("tok512.bin", &l);
    size_t ids_size, text_size;
    char *ids_txt = read_model_file("golden/stories260K-once/all_ids.txt", &ids_size);
    char *text = read_model_file("golden/stories260K-once/text.txt", &text_size);
    int32_t ids[1024];
    size_t n = parse_ids(ids_txt, ids, 1024), len = 0;
    assert_int_equal(n, 257);
    char *dec = decode(l.tok, ids, n, &len);
    assert_true(text_size >= 1 && text[text_size - 1] == '\n');
    assert_int_equal(len, text_size - 1);
    assert_memory_equal(dec, text, len);
    size_t n2 = 0;
    int32_t *again = encode(l.tok, dec, len, true, &n2);
    assert_int_equal(n2, n);
    assert_memory_equal(again, ids, n * sizeof(int32_t));
    free(again);
    free(dec);
    free(ids_txt);
    free(text);
    unload(&l);
}

/* ~100 KB of text: correct (a newline is no merge target in tok512, so every
 * paragraph after the first tokenizes as "\n" + paragraph does) and fast
 * enough to run in a unit test (the priority queue keeps it O(n log n)). */
static void test_tok512_long_input(void **state)
{
    (void)state;
    loaded l;
    load("tok512.bin", &l);
    for (int32_t id = 0; id < 512; id++)
        if (l.vocab.types[id] == KVRT_TOKEN_NORMAL)
            assert_null(memchr(l.vocab.pieces[id], '\n', (size_t)l.vocab.piece_lens[id]));
    const char *para = "Once upon a time, there was a little girl named Lily. She said, \"I can't find it!\"\n";
    size_t plen = strlen(para), copies = 100000 / plen + 1, len = plen * copies;
    char *text = malloc(len + 1);
    for (size_t i = 0; i < copies; i++)
        memcpy(text + i * plen, para, plen);
    size_t n_first = 0, n_next = 0, n_all = 0;
    int32_t *first = encode(l.tok, para, plen, true, &n_first);
    char *nl_para = malloc(plen + 2);
    nl_para[0] = '\n';
    memcpy(nl_para + 1, para, plen);
    int32_t *next = encode(l.tok, nl_para, plen + 1, false, &n_next);
    assert_true(n_next > 2);
    assert_int_equal(next[0], 410); /* U+2581 alone */
    assert_int_equal(next[1], 13);  /* <0x0A> */
    int32_t *all = encode(l.tok, text, len, true, &n_all);
    assert_int_equal(n_all, n_first + (copies - 1) * (n_next - 2));
    assert_memory_equal(all, first, n_first * sizeof(int32_t));
    for (size_t i = 1; i < copies; i++)
        assert_memory_equal(all + n_first + (i - 1) * (n_next - 2), next + 2, (n_next - 2) * sizeof(int32_t));
    size_t dlen = 0;
    char *back = decode(l.tok, all, n_all, &dlen);
    assert_int_equal(dlen, len);
    assert_memory_equal(back, text, len);
    free(back);
    free(all);
    free(next);
    free(nl_para);
    free(first);
    free(text);
    unload(&l);
}

/* ---- the Llama-2 vocabulary ---------------------------------------------------------- */

static void test_llama2_known_results(void **state)
{
    (void)state;
    loaded l;
    load("tokenizer.bin", &l);
    assert_int_equal(kvrt_tokenizer_n_tokens(l.tok), 32000);
    /* The pieces behind the ids below, as the vocabulary states them. */
    assert_piece(l.tok, 15043, "\xe2\x96\x81Hello");
    assert_piece(l.tok, 3186, "\xe2\x96\x81world");
    assert_piece(l.tok, 29871, "\xe2\x96\x81");
    assert_piece(l.tok, 259, "\xe2\x96\x81\xe2\x96\x81");
    assert_piece(l.tok, 1678, "\xe2\x96\x81\xe2\x96\x81\xe2\x96\x81");
    assert_piece(l.tok, 13, "<0x0A>");
    /* Runs of U+2581 score -1e9, below every other merge: a space run before a
     * word gives its last space to the word ("▁Hello") and merges the rest
     * last, so " Hello" is ▁ + ▁Hello, not ▁▁ + Hello. */
    assert_true(l.vocab.scores[259] < -1e8f && l.vocab.scores[1678] < -1e8f);
    assert_true(l.vocab.scores[15043] > -1e8f);
    assert_encodes(l.tok, "Hello world", true, "1 15043 3186");
    assert_encodes(l.tok, "Hello world", false, "15043 3186");
    assert_encodes(l.tok, " Hello", false, "29871 15043");
    assert_encodes(l.tok, "  Hello", false, "259 15043");
    assert_encodes(l.tok, "   Hello", false, "1678 15043");
    assert_encodes(l.tok, "    Hello", false, "268 15043");
    assert_encodes(l.tok, "    Hello\n    Hello", false, "268 15043 13 1678 15043");
    assert_encodes(l.tok, "Hello, world!", false, "15043 29892 3186 29991");
    assert_encodes(l.tok, "w048 7tuijk dsdfhu", false, "281 29900 29946 29947 29871 29955 9161 13535 18031 2176 6905");
    assert_encodes(l.tok, "\xd0\xbd\xd0\xb5\xd1\x89\xd0\xbe \xd0\xbd\xd0\xb0 \xd0\x91\xd1\x8a\xd0\xbb\xd0\xb3\xd0\xb0"
                          "\xd1\x80\xd1\x81\xd0\xba\xd0\xb8", /* нещо на Български */
                   false, "1538 4851 665 1386 29713 1305");
    unload(&l);
}

static void test_llama2_spaces_newlines(void **state)
{
    (void)state;
    loaded l;
    load("tokenizer.bin", &l);
    assert_encodes(l.tok, "", true, "1");
    assert_encodes(l.tok, "", false, "");
    assert_encodes(l.tok, " ", false, "259");
    assert_encodes(l.tok, "  ", false, "1678");
    assert_encodes(l.tok, "\n", false, "29871 13");
    assert_encodes(l.tok, "\t", false, "29871 12");
    /* trailing and inner space runs, same -1e9 rule */
    assert_encodes(l.tok, "Hello ", false, "15043 29871");
    assert_encodes(l.tok, "Hello  world", false, "15043 29871 3186");
    assert_encodes(l.tok, "Hello\nworld", false, "15043 13 11526");
    assert_piece(l.tok, 11526, "world");
    const char *cases[] = {"", " ", "  x  ", "\n", "a\n\nb", " Hello", "\t\tTabs\r\n", "end "};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(cases); i++)
        assert_round_trip(l.tok, cases[i], strlen(cases[i]));
    unload(&l);
}

static void test_llama2_unicode_and_bytes(void **state)
{
    (void)state;
    loaded l;
    load("tokenizer.bin", &l);
    /* 🦙 (F0 9F A6 99) is no piece: byte fallback, <0xNN> = 3 + NN */
    assert_encodes(l.tok, " this is \xf0\x9f\xa6\x99.cpp", false, "29871 445 338 29871 243 162 169 156 29889 8223");
    assert_encodes(l.tok, "\xf0\x9f\xa6\x99", true, "1 29871 243 162 169 156");
    /* CJK characters that are pieces of their own */
    assert_encodes(l.tok, "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", false, "29871 30325 30346 30968");
    assert_piece(l.tok, 30325, "\xe6\x97\xa5");
    /* invalid UTF-8: each stray byte is its own symbol and falls back */
    assert_encodes(l.tok, "\xff", false, "29871 258");
    assert_encodes(l.tok, "a\xe4\xbd", false, "263 231 192"); /* truncated 3-byte sequence */
    assert_encodes(l.tok, "\x80x", false, "29871 131 29916");
    const char *cases[] = {"H\xc3\xa9llo caf\xc3\xa9", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", "\xf0\x9f\xa6\x99\xf0\x9f\x98\x80",
                           "\xff\xfe\x00 x", "\xc0\x80\xed\xa0\x80", "a\xe4\xbd", "\xe2\x96", "\x01\x02 \x7f"};
    size_t lens[] = {12, 9, 8, 5, 5, 3, 2, 4};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(cases); i++)
        assert_round_trip(l.tok, cases[i], lens[i]);
    unload(&l);
}

/* Random byte strings and random UTF-8 text: round trips, and the heap-based
 * encoder agrees with the naive whole-scan reference, on both vocabularies. */
static void check_random(const char *file, int iters)
{
    loaded l;
    load(file, &l);
    naive_ref ref;
    naive_init(&ref, &l.vocab);
    static const char *const alphabet[] = {"a", "e", "t", "h", " ", " ", "\n", "o", "n", "s", "\xc3\xa9",
                                           "\xe6\x97\xa5", "\xf0\x9f\xa6\x99", "\xd0\xbd", "!", "\xff", "\x80"};
    uint32_t seed = 12345;
    char text[256];
    int32_t want[1024];
    for (int it = 0; it < iters; it++) {
        size_t len = 0;
        int nsym = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 40;
        for (int k = 0; k < nsym; k++) {
            seed = seed * 1103515245u + 12345u;
            if (it % 3 == 0) { /* raw bytes, avoiding U+2581 (it decodes to a space) */
                text[len++] = (char)(seed >> 16);
                if (len >= 3 && memcmp(text + len - 3, "\xe2\x96\x81", 3) == 0)
                    len--;
            } else {
                const char *s = alphabet[(seed >> 16) % KVRT_ARRAY_LEN(alphabet)];
                size_t sl = strlen(s);
                memcpy(text + len, s, sl);
                len += sl;
            }
        }
        assert_round_trip(l.tok, text, len);
        size_t n = 0;
        int32_t *got = encode(l.tok, text, len, false, &n);
        size_t n_want = naive_encode(&ref, text, len, want);
        assert_int_equal(n, n_want);
        assert_memory_equal(got, want, n * sizeof(int32_t));
        free(got);
    }
    free(ref.order);
    unload(&l);
}

static void test_random_tok512(void **state)
{
    (void)state;
    check_random("tok512.bin", 400);
    check_random("tok512_aidreams.bin", 200);
}

static void test_random_llama2(void **state)
{
    (void)state;
    check_random("tokenizer.bin", 200);
}

/* A long Llama-2 input mixing scripts, against the round trip and the
 * reference on its first part. */
static void test_llama2_long_input(void **state)
{
    (void)state;
    loaded l;
    load("tokenizer.bin", &l);
    const char *para = "Hello world, \xd0\xbd\xd0\xb5\xd1\x89\xd0\xbe \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\xa6\x99 caf\xc3\xa9.\n";
    size_t plen = strlen(para), copies = 100000 / plen + 1, len = plen * copies, n = 0, dlen = 0;
    char *text = malloc(len);
    for (size_t i = 0; i < copies; i++)
        memcpy(text + i * plen, para, plen);
    int32_t *ids = encode(l.tok, text, len, true, &n);
    assert_true(n > copies * 10);
    char *back = decode(l.tok, ids, n, &dlen);
    assert_int_equal(dlen, len);
    assert_memory_equal(back, text, len);
    free(back);
    free(ids);
    free(text);
    unload(&l);
}

/* ---- decoding rules --------------------------------------------------------------- */

static void assert_piece_text(kvrt_tokenizer *tok, int32_t prev, int32_t id, const char *want, size_t want_len)
{
    char buf[64];
    size_t len = 99;
    assert_int_equal(kvrt_tokenizer_token_to_piece(tok, prev, id, buf, sizeof(buf), &len), KVRT_OK);
    assert_int_equal(len, want_len);
    assert_memory_equal(buf, want, want_len);
    assert_int_equal(buf[len], '\0');
}

static void test_decode_rules(void **state)
{
    (void)state;
    loaded l;
    load("tok512.bin", &l);
    assert_piece_text(l.tok, -1, 403, " Once", 5);
    assert_piece_text(l.tok, 1, 403, "Once", 4);   /* the encoder's space, after BOS */
    assert_piece_text(l.tok, 403, 407, " upon", 5);
    assert_piece_text(l.tok, 1, 410, "", 0);       /* U+2581 alone after BOS */
    assert_piece_text(l.tok, 1, 3 + ' ', " ", 1);  /* byte pieces are raw bytes, never dropped */
    assert_piece_text(l.tok, -1, 3 + 0xE2, "\xe2", 1);
    assert_piece_text(l.tok, -1, 3, "\0", 1);
    assert_piece_text(l.tok, 403, 1, "", 0);       /* control tokens print nothing */
    assert_piece_text(l.tok, 403, 2, "", 0);
    assert_piece_text(l.tok, 1, 0, "<unk>", 5);
    char buf[8];
    size_t len = 0;
    assert_int_equal(kvrt_tokenizer_token_to_piece(l.tok, -1, 512, buf, sizeof(buf), &len), KVRT_ERR_BAD_TOKEN);
    assert_non_null(strstr(kvrt_tokenizer_message(l.tok), "512"));
    assert_int_equal(kvrt_tokenizer_token_to_piece(l.tok, -1, -1, buf, sizeof(buf), &len), KVRT_ERR_BAD_TOKEN);
    /* " Once" needs 5 bytes and the NUL */
    assert_int_equal(kvrt_tokenizer_token_to_piece(l.tok, -1, 403, buf, 5, &len), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(len, 5);
    int32_t seq[] = {1, 403, 407, 2, 1, 403};
    char text[64];
    assert_int_equal(kvrt_tokenizer_decode(l.tok, seq, 6, text, sizeof(text), &len), KVRT_OK);
    assert_string_equal(text, "Once uponOnce");
    int32_t bad[] = {1, 600};
    assert_int_equal(kvrt_tokenizer_decode(l.tok, bad, 2, text, sizeof(text), &len), KVRT_ERR_BAD_TOKEN);
    unload(&l);
}

static void test_encode_buffer_contract(void **state)
{
    (void)state;
    loaded l;
    load("tok512.bin", &l);
    int32_t ids[8] = {0};
    size_t n = 0;
    assert_int_equal(kvrt_tokenizer_encode(l.tok, "Once upon a time", 16, true, ids, 3, &n),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(n, 5);
    assert_non_null(strstr(kvrt_tokenizer_message(l.tok), "5"));
    assert_int_equal(kvrt_tokenizer_encode(l.tok, "Once upon a time", 16, true, ids, 5, &n), KVRT_OK);
    assert_int_equal(n, 5);
    assert_int_equal(ids[4], 378);
    assert_int_equal(kvrt_tokenizer_encode(l.tok, NULL, 0, true, ids, 8, &n), KVRT_OK);
    assert_int_equal(n, 1);
    assert_int_equal(kvrt_tokenizer_encode(l.tok, NULL, 3, true, ids, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_tokenizer_encode(l.tok, "x", 1, true, NULL, 8, &n), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_tokenizer_encode(l.tok, "x", 1, true, ids, 8, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(kvrt_tokenizer_piece(l.tok, 512, NULL));
    assert_null(kvrt_tokenizer_piece(l.tok, -1, NULL));
    unload(&l);
}

/* ---- synthetic vocabularies -------------------------------------------------------- */

typedef struct synth {
    kvrt_vocab v;
    char *pieces[16];
    int32_t lens[16];
    float scores[16];
    int32_t types[16];
} synth;

static void synth_init(synth *s, const char *const *pieces, const float *scores, const int32_t *types, int32_t n)
{
    memset(s, 0, sizeof(*s));
    for (int32_t i = 0; i < n; i++) {
        s->pieces[i] = (char *)pieces[i];
        s->lens[i] = (int32_t)strlen(pieces[i]);
        s->scores[i] = scores[i];
        s->types[i] = types[i];
    }
    kvrt_vocab_init(&s->v);
    s->v.n_tokens = n;
    s->v.pieces = s->pieces;
    s->v.piece_lens = s->lens;
    s->v.scores = s->scores;
    s->v.types = s->types;
}

/* Merge order: highest score first, ties leftmost. */
static void test_merge_order(void **state)
{
    (void)state;
    const char *p[] = {"a", "b", "ab", "ba", "<unk>"};
    float eq[] = {0, 0, -1, -1, 0};
    int32_t t[] = {1, 1, 1, 1, 2};
    synth s;
    synth_init(&s, p, eq, t, 5);
    s.v.unk_id = 4;
    kvrt_tokenizer *tok = NULL;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, NULL), KVRT_OK);
    assert_encodes(tok, "aba", false, "2 0");
    assert_encodes(tok, "bab", false, "3 1");
    assert_encodes(tok, "abc", false, "2 4"); /* no byte pieces: <unk> */
    assert_encodes(tok, "", true, "");       /* no BOS in this vocabulary */
    assert_false(kvrt_tokenizer_adds_bos(tok));
    kvrt_tokenizer_destroy(tok);
    float ba_first[] = {0, 0, -2, -1, 0};
    synth_init(&s, p, ba_first, t, 5);
    s.v.unk_id = 4;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, NULL), KVRT_OK);
    assert_encodes(tok, "aba", false, "0 3");
    assert_encodes(tok, "abab", false, "0 3 1"); /* ba (pos 1) first; "aba", "bab" are no pieces */
    kvrt_tokenizer_destroy(tok);
    s.v.unk_id = -1;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, NULL), KVRT_OK);
    size_t n = 0;
    int32_t ids[8];
    assert_int_equal(kvrt_tokenizer_encode(tok, "c", 1, false, ids, 8, &n), KVRT_ERR_BAD_TOKENIZER);
    assert_non_null(strstr(kvrt_tokenizer_message(tok), "0x63"));
    kvrt_tokenizer_destroy(tok);
}

static void test_bad_vocab(void **state)
{
    (void)state;
    const char *p[] = {"<unk>", "<s>", "</s>", "<0x41>", "x"};
    float sc[] = {0, 0, 0, 0, -1};
    int32_t t[] = {2, 3, 3, 6, 1};
    synth s;
    kvrt_tokenizer *tok = (kvrt_tokenizer *)&s;
    kvrt_error err;
    synth_init(&s, p, sc, t, 5);
    s.v.bos_id = 5;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, &err), KVRT_ERR_BAD_TOKENIZER);
    assert_null(tok);
    assert_non_null(strstr(err.message, "BOS"));
    s.v.bos_id = 1;
    s.v.eos_id = -7;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, &err), KVRT_ERR_BAD_TOKENIZER);
    s.v.eos_id = 2;
    s.types[4] = 9;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, &err), KVRT_ERR_BAD_TOKENIZER);
    assert_non_null(strstr(err.message, "type"));
    s.types[4] = 1;
    s.pieces[3] = (char *)"<0xG1>";
    s.lens[3] = 6;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, &err), KVRT_ERR_BAD_TOKENIZER);
    s.pieces[3] = (char *)"<0x41>";
    s.scores[4] = 0.0f / 0.0f;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, &err), KVRT_ERR_BAD_TOKENIZER);
    s.scores[4] = -1;
    s.v.n_tokens = 0;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, &err), KVRT_ERR_BAD_TOKENIZER);
    s.v.n_tokens = 5;
    assert_int_equal(kvrt_tokenizer_create(NULL, NULL, &tok, &err), KVRT_ERR_INVALID_ARGUMENT);
    /* valid now: one byte piece only, the rest goes to <unk> */
    s.v.add_bos = true;
    s.v.unk_id = 0;
    assert_int_equal(kvrt_tokenizer_create(&s.v, NULL, &tok, &err), KVRT_OK);
    assert_encodes(tok, "xAxB", true, "1 4 3 4 0");
    kvrt_tokenizer_destroy(tok);
    kvrt_tokenizer_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tok512_prompt),
        cmocka_unit_test(test_tok512_golden_text),
        cmocka_unit_test(test_tok512_long_input),
        cmocka_unit_test(test_llama2_known_results),
        cmocka_unit_test(test_llama2_spaces_newlines),
        cmocka_unit_test(test_llama2_unicode_and_bytes),
        cmocka_unit_test(test_random_tok512),
        cmocka_unit_test(test_random_llama2),
        cmocka_unit_test(test_llama2_long_input),
        cmocka_unit_test(test_decode_rules),
        cmocka_unit_test(test_encode_buffer_contract),
        cmocka_unit_test(test_merge_order),
        cmocka_unit_test(test_bad_vocab),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
