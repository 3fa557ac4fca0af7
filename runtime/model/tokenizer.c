/* The tokenizer's common part: validation, the piece map, special tokens
 * (parsed from text only when asked), end-of-generation tokens, BOS/EOS and
 * decoding. The encoders are in tokenizer_spm.c and tokenizer_bpe.c. */
#include "model/tokenizer_internal.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Bigger vocabularies than this are surely corrupt, and it keeps the hash
 * table size comfortably inside 32 bits. */
#define KVRT_TOKENIZER_MAX_TOKENS (1 << 28)

/* ---- piece -> id map ------------------------------------------------------- */

/* FNV-1a: short keys, no adversary worth a keyed hash (the vocabulary is fixed). */
static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

/* SentencePiece never builds control, unknown or byte pieces out of text;
 * byte-level BPE looks every piece up (merge parts, whole words). */
static bool in_map(const kvrt_vocab *v, int32_t type)
{
    return v->kind == KVRT_VOCAB_BPE || type == KVRT_TOKEN_NORMAL || type == KVRT_TOKEN_USER_DEFINED;
}

int32_t kvrt_tok_find(const kvrt_tokenizer *tok, const char *s, size_t n)
{
    const kvrt_vocab *v = tok->vocab;
    uint32_t i = hash_bytes(s, n) & tok->slot_mask;
    for (;;) {
        int32_t id = tok->slots[i];
        if (id < 0)
            return -1;
        if ((size_t)v->piece_lens[id] == n && memcmp(v->pieces[id], s, n) == 0)
            return id;
        i = (i + 1) & tok->slot_mask;
    }
}

static kvrt_status map_build(kvrt_tokenizer *tok, kvrt_error *err)
{
    const kvrt_vocab *v = tok->vocab;
    uint32_t size = 16;
    while (size < 2u * (uint32_t)v->n_tokens)
        size *= 2;
    tok->slots = kvrt_alloc(tok->alloc, (size_t)size * sizeof(int32_t), 0);
    if (!tok->slots)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenizer: no memory for a %u-slot piece map", size);
    memset(tok->slots, 0xff, (size_t)size * sizeof(int32_t));
    tok->slot_mask = size - 1;
    for (int32_t id = 0; id < v->n_tokens; id++) {
        if (!in_map(v, v->types[id]))
            continue;
        /* Duplicate pieces: the lowest id wins, so results do not depend on hashing. */
        if (kvrt_tok_find(tok, v->pieces[id], (size_t)v->piece_lens[id]) >= 0)
            continue;
        uint32_t i = hash_bytes(v->pieces[id], (size_t)v->piece_lens[id]) & tok->slot_mask;
        while (tok->slots[i] >= 0)
            i = (i + 1) & tok->slot_mask;
        tok->slots[i] = id;
    }
    return KVRT_OK;
}

uint32_t kvrt_utf8_char_len(const unsigned char *s, size_t n)
{
    size_t need;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        need = 2;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        need = 3;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        need = 4;
    else
        return 1;
    if (need > n)
        return 1;
    for (size_t i = 1; i < need; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 1;
    return (uint32_t)need;
}

/* ---- creation and validation ---------------------------------------------- */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* "<0xNN>" -> NN, or -1. */
static int parse_byte_piece(const char *s, int32_t len)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

static kvrt_status check_special_id(const kvrt_vocab *v, int32_t id, const char *what, kvrt_error *err)
{
    if (id < -1 || id >= v->n_tokens)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: %s id %d outside the %d-token vocabulary",
                         what, id, v->n_tokens);
    return KVRT_OK;
}

static kvrt_status check_vocab(const kvrt_vocab *v, kvrt_error *err)
{
    if (v->kind != KVRT_VOCAB_SPM && v->kind != KVRT_VOCAB_BPE)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: unknown vocabulary kind %d", (int)v->kind);
    if (v->n_tokens <= 0)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: empty vocabulary");
    if (v->n_tokens > KVRT_TOKENIZER_MAX_TOKENS)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: %d tokens is more than the %d supported",
                         v->n_tokens, KVRT_TOKENIZER_MAX_TOKENS);
    if (!v->pieces || !v->piece_lens || !v->scores || !v->types)
        return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: vocabulary arrays missing");
    for (int32_t id = 0; id < v->n_tokens; id++) {
        if (!v->pieces[id] || v->piece_lens[id] < 0)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: token %d has no piece", id);
        if (v->types[id] < KVRT_TOKEN_NORMAL || v->types[id] > KVRT_TOKEN_BYTE)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: token %d has unknown type %d", id,
                             v->types[id]);
        if (isnan(v->scores[id]))
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: token %d has a NaN score", id);
        if (v->types[id] == KVRT_TOKEN_BYTE && parse_byte_piece(v->pieces[id], v->piece_lens[id]) < 0)
            return kvrt_fail(err, KVRT_ERR_BAD_TOKENIZER, "tokenizer: byte token %d is not of the form <0xNN>",
                             id);
    }
    const struct {
        int32_t id;
        const char *what;
    } ids[] = {{v->bos_id, "BOS"}, {v->eos_id, "EOS"}, {v->unk_id, "UNK"}, {v->eot_id, "EOT"}, {v->eom_id, "EOM"}};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(ids); i++)
        KVRT_TRY(check_special_id(v, ids[i].id, ids[i].what, err));
    return KVRT_OK;
}

/* End of generation: the vocabulary's ids, and the pieces models end their
 * turns with, which older files do not name. Those are made control tokens
 * (some files type them as normal), as llama.cpp does. */
static void find_eog(kvrt_tokenizer *tok)
{
    static const char *const ends[] = {"<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
                                       "<|endoftext|>", "<|eom_id|>", "<EOT>"};
    const kvrt_vocab *v = tok->vocab;
    const int32_t keyed[] = {v->eos_id, v->eot_id, v->eom_id};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(keyed); i++)
        if (keyed[i] >= 0)
            tok->eog[keyed[i]] = 1;
    for (int32_t id = 0; id < v->n_tokens; id++)
        for (size_t k = 0; k < KVRT_ARRAY_LEN(ends); k++)
            if ((size_t)v->piece_lens[id] == strlen(ends[k]) && memcmp(v->pieces[id], ends[k], strlen(ends[k])) == 0) {
                tok->eog[id] = 1;
                tok->types[id] = KVRT_TOKEN_CONTROL;
            }
}

static bool is_special_type(int32_t type)
{
    return type == KVRT_TOKEN_CONTROL || type == KVRT_TOKEN_USER_DEFINED || type == KVRT_TOKEN_UNKNOWN;
}

typedef struct special_key {
    int32_t len, id;
} special_key;

/* Longest first; equal lengths by id, so the order does not depend on qsort. */
static int special_cmp(const void *a, const void *b)
{
    const special_key *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static kvrt_status find_specials(kvrt_tokenizer *tok, kvrt_error *err)
{
    const kvrt_vocab *v = tok->vocab;
    int32_t n = 0;
    for (int32_t id = 0; id < v->n_tokens; id++)
        n += is_special_type(tok->types[id]) && v->piece_lens[id] > 0;
    special_key *keys = kvrt_calloc(tok->alloc, (size_t)KVRT_MAX(n, 1), sizeof(*keys));
    tok->special = kvrt_calloc(tok->alloc, (size_t)KVRT_MAX(n, 1), sizeof(int32_t));
    if (!keys || !tok->special) {
        kvrt_free(tok->alloc, keys);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenizer: no memory for %d special tokens", n);
    }
    n = 0;
    for (int32_t id = 0; id < v->n_tokens; id++)
        if (is_special_type(tok->types[id]) && v->piece_lens[id] > 0)
            keys[n++] = (special_key){v->piece_lens[id], id};
    qsort(keys, (size_t)n, sizeof(*keys), special_cmp);
    for (int32_t i = 0; i < n; i++)
        tok->special[i] = keys[i].id;
    tok->n_special = n;
    kvrt_free(tok->alloc, keys);
    return KVRT_OK;
}

static kvrt_status build(kvrt_tokenizer *tok, kvrt_error *err)
{
    const kvrt_vocab *v = tok->vocab;
    tok->types = kvrt_calloc(tok->alloc, (size_t)v->n_tokens, sizeof(int32_t));
    tok->eog = kvrt_calloc(tok->alloc, (size_t)v->n_tokens, 1);
    if (!tok->types || !tok->eog)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenizer: no memory");
    memcpy(tok->types, v->types, (size_t)v->n_tokens * sizeof(int32_t));
    find_eog(tok);
    KVRT_TRY(find_specials(tok, err));
    KVRT_TRY(map_build(tok, err));
    for (int b = 0; b < 256; b++)
        tok->byte_ids[b] = -1;
    if (v->kind == KVRT_VOCAB_BPE)
        return kvrt_bpe_create(tok, err);
    for (int32_t id = 0; id < v->n_tokens; id++) {
        if (v->types[id] != KVRT_TOKEN_BYTE)
            continue;
        int b = parse_byte_piece(v->pieces[id], v->piece_lens[id]);
        if (tok->byte_ids[b] < 0)
            tok->byte_ids[b] = id;
    }
    return KVRT_OK;
}

kvrt_status kvrt_tokenizer_create(const kvrt_vocab *vocab, const kvrt_allocator *alloc, kvrt_tokenizer **out,
                                  kvrt_error *err)
{
    if (!out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "tokenizer: out is NULL");
    *out = NULL;
    if (!vocab)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "tokenizer: vocab is NULL");
    KVRT_TRY(check_vocab(vocab, err));
    kvrt_tokenizer *tok = kvrt_calloc(alloc, 1, sizeof(*tok));
    if (!tok)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenizer: no memory");
    tok->alloc = alloc;
    tok->vocab = vocab;
    kvrt_error_clear(&tok->err);
    kvrt_status s = build(tok, err);
    if (s != KVRT_OK) {
        kvrt_tokenizer_destroy(tok);
        return s;
    }
    *out = tok;
    return KVRT_OK;
}

void kvrt_tokenizer_destroy(kvrt_tokenizer *tok)
{
    if (!tok)
        return;
    kvrt_bpe_destroy(tok);
    kvrt_free(tok->alloc, tok->slots);
    kvrt_free(tok->alloc, tok->types);
    kvrt_free(tok->alloc, tok->eog);
    kvrt_free(tok->alloc, tok->special);
    kvrt_free(tok->alloc, tok);
}

const char *kvrt_tokenizer_message(const kvrt_tokenizer *tok)
{
    return tok ? tok->err.message : "";
}

int32_t kvrt_tokenizer_n_tokens(const kvrt_tokenizer *tok)
{
    return tok->vocab->n_tokens;
}

int32_t kvrt_tokenizer_bos(const kvrt_tokenizer *tok)
{
    return tok->vocab->bos_id;
}

int32_t kvrt_tokenizer_eos(const kvrt_tokenizer *tok)
{
    return tok->vocab->eos_id;
}

bool kvrt_tokenizer_adds_bos(const kvrt_tokenizer *tok)
{
    return tok->vocab->add_bos && tok->vocab->bos_id >= 0;
}

bool kvrt_tokenizer_is_eog(const kvrt_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->vocab->n_tokens && tok->eog[id];
}

void kvrt_tokenizer_mark_eog(kvrt_tokenizer *tok, int32_t id)
{
    if (id >= 0 && id < tok->vocab->n_tokens)
        tok->eog[id] = 1;
}

int32_t kvrt_tokenizer_eog_ids(const kvrt_tokenizer *tok, int32_t *ids, int32_t cap)
{
    int32_t n = 0;
    for (int32_t id = 0; id < tok->vocab->n_tokens; id++)
        if (tok->eog[id]) {
            if (n < cap)
                ids[n] = id;
            n++;
        }
    return n;
}

int32_t kvrt_tokenizer_special_id(const kvrt_tokenizer *tok, const char *s, size_t n)
{
    const kvrt_vocab *v = tok->vocab;
    for (int32_t i = 0; i < tok->n_special; i++) {
        int32_t id = tok->special[i];
        if ((size_t)v->piece_lens[id] == n && memcmp(v->pieces[id], s, n) == 0)
            return id;
    }
    return -1;
}

const char *kvrt_tokenizer_piece(const kvrt_tokenizer *tok, int32_t id, size_t *len)
{
    if (id < 0 || id >= tok->vocab->n_tokens)
        return NULL;
    if (len)
        *len = (size_t)tok->vocab->piece_lens[id];
    return tok->vocab->pieces[id];
}

int32_t kvrt_tokenizer_type(const kvrt_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->vocab->n_tokens ? tok->types[id] : 0;
}

/* ---- encoding --------------------------------------------------------------- */

/* A special token found in the text. */
typedef struct special_hit {
    size_t start, len;
    int32_t id;
} special_hit;

static int hit_cmp(const void *a, const void *b)
{
    const special_hit *x = a, *y = b;
    return (x->start > y->start) - (x->start < y->start);
}

/* Phi-3's added tokens eat the whitespace after them, except these (see model_file.h). */
static bool strips_right(const kvrt_tokenizer *tok, int32_t id)
{
    static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
    const kvrt_vocab *v = tok->vocab;
    if (!v->special_rstrip)
        return false;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(keep); i++)
        if ((size_t)v->piece_lens[id] == strlen(keep[i]) && memcmp(v->pieces[id], keep[i], strlen(keep[i])) == 0)
            return false;
    return true;
}

/* Special tokens in the text, llama.cpp's way: longest piece first, each
 * taking its occurrences left to right where no longer one was found. */
static kvrt_status find_hits(kvrt_tokenizer *tok, const char *text, size_t len, const size_t (*plain)[2],
                             size_t n_plain, special_hit **hits, size_t *n_hits)
{
    const kvrt_vocab *v = tok->vocab;
    uint8_t *taken = kvrt_calloc(tok->alloc, KVRT_MAX(len, 1), 1);
    /* ranges that must stay text count as taken: no special token may overlap them */
    for (size_t i = 0; taken && i < n_plain; i++)
        if (plain[i][0] < plain[i][1] && plain[i][1] <= len)
            memset(taken + plain[i][0], 1, plain[i][1] - plain[i][0]);
    size_t cap = 16, n = 0;
    special_hit *h = kvrt_alloc(tok->alloc, cap * sizeof(*h), 0);
    kvrt_status s = KVRT_OK;
    if (!taken || !h)
        s = kvrt_fail(&tok->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenize: no memory for %zu bytes of text", len);
    for (int32_t k = 0; k < tok->n_special && s == KVRT_OK; k++) {
        int32_t id = tok->special[k];
        size_t pl = (size_t)v->piece_lens[id];
        for (size_t pos = 0; pos + pl <= len && s == KVRT_OK;) {
            const char *p = memmem(text + pos, len - pos, v->pieces[id], pl);
            if (!p)
                break;
            size_t at = (size_t)(p - text);
            bool free_span = memchr(taken + at, 1, pl) == NULL;
            if (!free_span) {
                pos = at + 1;
                continue;
            }
            if (n == cap) {
                if (!kvrt_grow_array(tok->alloc, (void **)&h, n, cap * 2, sizeof(*h))) {
                    s = kvrt_fail(&tok->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenize: no memory for special tokens");
                    break;
                }
                cap *= 2;
            }
            h[n++] = (special_hit){at, pl, id};
            memset(taken + at, 1, pl);
            pos = at + pl;
        }
    }
    kvrt_free(tok->alloc, taken);
    if (s != KVRT_OK) {
        kvrt_free(tok->alloc, h);
        return s;
    }
    qsort(h, n, sizeof(*h), hit_cmp);
    *hits = h;
    *n_hits = n;
    return KVRT_OK;
}

/* A stretch of plain text. SentencePiece adds its leading space to a stretch
 * that starts the text or follows a special token, as llama.cpp does. */
static kvrt_status encode_text(kvrt_tokenizer *tok, const char *text, size_t len, bool after_special,
                               kvrt_tok_out *out)
{
    if (len == 0)
        return KVRT_OK;
    if (tok->vocab->kind == KVRT_VOCAB_BPE)
        return kvrt_bpe_encode(tok, text, len, out);
    return kvrt_spm_encode(tok, text, len, tok->vocab->add_space_prefix && after_special, out);
}

static kvrt_status encode_special(kvrt_tokenizer *tok, const char *text, size_t len, const size_t (*plain)[2],
                                  size_t n_plain, kvrt_tok_out *out)
{
    special_hit *hits = NULL;
    size_t n_hits = 0;
    KVRT_TRY(find_hits(tok, text, len, plain, n_plain, &hits, &n_hits));
    kvrt_status s = KVRT_OK;
    size_t pos = 0;
    bool after_special = true, strip = false;
    for (size_t i = 0; i <= n_hits && s == KVRT_OK; i++) {
        size_t end = i < n_hits ? hits[i].start : len;
        while (strip && pos < end && isspace((unsigned char)text[pos]))
            pos++;
        if (end > pos) {
            s = encode_text(tok, text + pos, end - pos, after_special, out);
            after_special = false;
        }
        if (i < n_hits) {
            kvrt_tok_emit(out, hits[i].id);
            after_special = true;
            strip = strips_right(tok, hits[i].id);
            pos = hits[i].start + hits[i].len;
        }
    }
    kvrt_free(tok->alloc, hits);
    return s;
}

kvrt_status kvrt_tokenizer_encode(kvrt_tokenizer *tok, const char *text, size_t len, unsigned flags, int32_t *ids,
                                  size_t capacity, size_t *n_ids)
{
    return kvrt_tokenizer_encode_plain(tok, text, len, flags, NULL, 0, ids, capacity, n_ids);
}

kvrt_status kvrt_tokenizer_encode_plain(kvrt_tokenizer *tok, const char *text, size_t len, unsigned flags,
                                        const size_t (*plain)[2], size_t n_plain, int32_t *ids, size_t capacity,
                                        size_t *n_ids)
{
    if (!tok || !n_ids || (!text && len > 0) || (!ids && capacity > 0) || (!plain && n_plain > 0))
        return kvrt_fail(tok ? &tok->err : NULL, KVRT_ERR_INVALID_ARGUMENT, "tokenize: NULL argument");
    *n_ids = 0;
    const kvrt_vocab *v = tok->vocab;
    kvrt_tok_out out = {ids, capacity, 0};
    bool add_special = (flags & KVRT_TOKENIZE_ADD_SPECIAL) != 0;
    if (add_special && v->add_bos && v->bos_id >= 0)
        kvrt_tok_emit(&out, v->bos_id);
    kvrt_status s;
    if ((flags & KVRT_TOKENIZE_PARSE_SPECIAL) && tok->n_special > 0 && len > 0)
        s = encode_special(tok, text, len, plain, n_plain, &out);
    else
        s = encode_text(tok, text, len, true, &out);
    if (s != KVRT_OK)
        return s;
    if (add_special && v->add_eos && v->eos_id >= 0)
        kvrt_tok_emit(&out, v->eos_id);
    *n_ids = out.n;
    if (out.n > capacity)
        return kvrt_fail(&tok->err, KVRT_ERR_INVALID_ARGUMENT, "tokenize: %zu ids do not fit in %zu", out.n,
                         capacity);
    return KVRT_OK;
}

/* ---- decoding --------------------------------------------------------------- */

static const char kvrt_space_mark[3] = {'\xe2', '\x96', '\x81'}; /* U+2581 */

static void put_bytes(const char *p, size_t n, char *dst, size_t cap, size_t *o)
{
    if (*o < cap)
        memcpy(dst + *o, p, KVRT_MIN(n, cap - *o));
    *o += n;
}

/* A SentencePiece piece with U+2581 as spaces; the encoder's added space
 * is dropped after BOS, as run.c prints it. */
static void spm_text(const kvrt_tokenizer *tok, int32_t prev, int32_t id, char *dst, size_t cap, size_t *o)
{
    const kvrt_vocab *v = tok->vocab;
    const char *p = v->pieces[id];
    size_t n = (size_t)v->piece_lens[id];
    bool drop_space = prev >= 0 && prev == v->bos_id && v->add_space_prefix && tok->types[id] != KVRT_TOKEN_UNKNOWN;
    for (size_t i = 0; i < n;) {
        char c = p[i];
        size_t step = 1;
        if (i + 3 <= n && memcmp(p + i, kvrt_space_mark, 3) == 0) {
            c = ' ';
            step = 3;
        }
        i += step;
        if (drop_space && c == ' ' && i == step)
            continue;
        put_bytes(&c, 1, dst, cap, o);
    }
}

/* Writes token id's text after prev into dst[*o..cap) (counting past cap). */
static void piece_text(const kvrt_tokenizer *tok, int32_t prev, int32_t id, char *dst, size_t cap, size_t *o)
{
    const kvrt_vocab *v = tok->vocab;
    int32_t type = tok->types[id];
    if (type == KVRT_TOKEN_CONTROL)
        return;
    if (type == KVRT_TOKEN_BYTE) {
        int b = parse_byte_piece(v->pieces[id], v->piece_lens[id]);
        char c = (char)b;
        put_bytes(&c, 1, dst, cap, o);
        return;
    }
    if (type == KVRT_TOKEN_USER_DEFINED) { /* added tokens are text as written */
        put_bytes(v->pieces[id], (size_t)v->piece_lens[id], dst, cap, o);
        return;
    }
    if (v->kind == KVRT_VOCAB_SPM) {
        spm_text(tok, prev, id, dst, cap, o);
        return;
    }
    if (type == KVRT_TOKEN_NORMAL) {
        size_t n;
        const char *b = kvrt_bpe_token_bytes(tok, id, &n);
        put_bytes(b, n, dst, cap, o);
    }
}

/* Common tail of the decoders: NUL-terminate or report the size needed. */
static kvrt_status finish_text(kvrt_tokenizer *tok, char *buf, size_t capacity, size_t o, size_t *len)
{
    *len = o;
    if (o >= capacity)
        return kvrt_fail(&tok->err, KVRT_ERR_INVALID_ARGUMENT, "detokenize: %zu bytes and a NUL do not fit in %zu",
                         o, capacity);
    buf[o] = '\0';
    return KVRT_OK;
}

kvrt_status kvrt_tokenizer_token_to_piece(kvrt_tokenizer *tok, int32_t prev, int32_t id, char *buf,
                                          size_t capacity, size_t *len)
{
    if (!tok || !len || (!buf && capacity > 0))
        return kvrt_fail(tok ? &tok->err : NULL, KVRT_ERR_INVALID_ARGUMENT, "detokenize: NULL argument");
    *len = 0;
    if (id < 0 || id >= tok->vocab->n_tokens)
        return kvrt_fail(&tok->err, KVRT_ERR_BAD_TOKEN, "detokenize: token %d outside the %d-token vocabulary",
                         id, tok->vocab->n_tokens);
    size_t o = 0;
    piece_text(tok, prev, id, buf, capacity, &o);
    return finish_text(tok, buf, capacity, o, len);
}

kvrt_status kvrt_tokenizer_decode(kvrt_tokenizer *tok, const int32_t *ids, size_t n_ids, char *buf,
                                  size_t capacity, size_t *len)
{
    if (!tok || !len || (!ids && n_ids > 0) || (!buf && capacity > 0))
        return kvrt_fail(tok ? &tok->err : NULL, KVRT_ERR_INVALID_ARGUMENT, "detokenize: NULL argument");
    *len = 0;
    size_t o = 0;
    int32_t prev = -1;
    for (size_t i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->vocab->n_tokens)
            return kvrt_fail(&tok->err, KVRT_ERR_BAD_TOKEN,
                             "detokenize: token %d (at %zu) outside the %d-token vocabulary", ids[i], i,
                             tok->vocab->n_tokens);
        piece_text(tok, prev, ids[i], buf, capacity, &o);
        prev = ids[i];
    }
    return finish_text(tok, buf, capacity, o, len);
}
