/* SentencePiece-BPE tokenizer (see tokenizer.h for the rules). */
#include "model/tokenizer.h"

#include <math.h>
#include <string.h>

/* Bigger vocabularies than this are surely corrupt, and it keeps the hash
 * table size comfortably inside 32 bits. */
#define KVRT_TOKENIZER_MAX_TOKENS (1 << 28)

struct kvrt_tokenizer {
    const kvrt_allocator *alloc;
    const kvrt_vocab *vocab;
    kvrt_error err;
    int32_t *slots;        /* [slot_mask + 1] open addressing: piece id, -1 = empty */
    uint32_t slot_mask;
    int32_t byte_ids[256]; /* id of <0xNN>, -1 when the vocabulary lacks it */
};

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

/* Only pieces the encoder may produce by merging live in the map: SentencePiece
 * never builds control, unknown or byte pieces out of text. */
static bool is_mergeable(int32_t type)
{
    return type == KVRT_TOKEN_NORMAL || type == KVRT_TOKEN_USER_DEFINED;
}

static int32_t map_find(const kvrt_tokenizer *tok, const char *s, size_t n)
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
        if (!is_mergeable(v->types[id]))
            continue;
        /* Duplicate pieces: the lowest id wins, so results do not depend on hashing. */
        if (map_find(tok, v->pieces[id], (size_t)v->piece_lens[id]) >= 0)
            continue;
        uint32_t i = hash_bytes(v->pieces[id], (size_t)v->piece_lens[id]) & tok->slot_mask;
        while (tok->slots[i] >= 0)
            i = (i + 1) & tok->slot_mask;
        tok->slots[i] = id;
    }
    return KVRT_OK;
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
    KVRT_TRY(check_special_id(v, v->bos_id, "BOS", err));
    KVRT_TRY(check_special_id(v, v->eos_id, "EOS", err));
    KVRT_TRY(check_special_id(v, v->unk_id, "UNK", err));
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
    for (int b = 0; b < 256; b++)
        tok->byte_ids[b] = -1;
    for (int32_t id = 0; id < vocab->n_tokens; id++) {
        if (vocab->types[id] != KVRT_TOKEN_BYTE)
            continue;
        int b = parse_byte_piece(vocab->pieces[id], vocab->piece_lens[id]);
        if (tok->byte_ids[b] < 0)
            tok->byte_ids[b] = id;
    }
    kvrt_status s = map_build(tok, err);
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
    kvrt_free(tok->alloc, tok->slots);
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

const char *kvrt_tokenizer_piece(const kvrt_tokenizer *tok, int32_t id, size_t *len)
{
    if (id < 0 || id >= tok->vocab->n_tokens)
        return NULL;
    if (len)
        *len = (size_t)tok->vocab->piece_lens[id];
    return tok->vocab->pieces[id];
}

/* ---- encoding --------------------------------------------------------------- */

/* One symbol: a span of the normalised text, linked to its neighbours. A symbol
 * merged into its left neighbour gets len 0. */
typedef struct tok_symbol {
    int32_t prev, next; /* symbol indices, -1 at the ends */
    uint32_t start, len;
} tok_symbol;

/* A candidate merge of symbol `left` with its right neighbour into piece `id`,
 * valid while the two spans still add up to `len` bytes. */
typedef struct tok_merge {
    float score;
    int32_t left;
    int32_t id;
    uint32_t len;
} tok_merge;

typedef struct tok_heap {
    tok_merge *items;
    size_t n, cap;
} tok_heap;

/* Higher score first; equal scores: the leftmost pair (SentencePiece's order). */
static bool merge_before(const tok_merge *a, const tok_merge *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(tok_heap *h, tok_merge m)
{
    size_t i = h->n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!merge_before(&m, &h->items[parent]))
            break;
        h->items[i] = h->items[parent];
        i = parent;
    }
    h->items[i] = m;
}

static tok_merge heap_pop(tok_heap *h)
{
    tok_merge top = h->items[0];
    tok_merge last = h->items[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && merge_before(&h->items[c + 1], &h->items[c]))
            c++;
        if (!merge_before(&h->items[c], &last))
            break;
        h->items[i] = h->items[c];
        i = c;
    }
    if (h->n > 0)
        h->items[i] = last;
    return top;
}

/* Length of the UTF-8 character at s (n bytes left); 1 for a byte that does
 * not start a complete, well-formed sequence, so any input splits cleanly. */
static uint32_t utf8_char_len(const unsigned char *s, size_t n)
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

typedef struct tok_work {
    char *text;        /* normalised text */
    size_t text_len;
    tok_symbol *syms;  /* [n_syms] */
    int32_t n_syms;
    tok_heap heap;
} tok_work;

static const char kvrt_space_mark[3] = {'\xe2', '\x96', '\x81'}; /* U+2581 */

/* Builds the normalised text and the scratch arrays sized for it. */
static kvrt_status work_init(kvrt_tokenizer *tok, const char *text, size_t len, tok_work *w)
{
    size_t spaces = 0;
    for (size_t i = 0; i < len; i++)
        spaces += text[i] == ' ';
    bool prefix = tok->vocab->add_space_prefix && len > 0;
    size_t extra = 2 * spaces + (prefix ? 3 : 0);
    size_t total, syms_bytes, heap_bytes;
    if (!kvrt_add_size(len, extra, &total) || total > (size_t)INT32_MAX / 4 ||
        !kvrt_mul_size(total, sizeof(tok_symbol), &syms_bytes) ||
        !kvrt_mul_size(total, 3 * sizeof(tok_merge), &heap_bytes))
        return kvrt_fail(&tok->err, KVRT_ERR_INVALID_ARGUMENT, "tokenize: text of %zu bytes is too long", len);
    w->text = kvrt_alloc(tok->alloc, total, 1);
    w->syms = kvrt_alloc(tok->alloc, syms_bytes, 0);
    w->heap.items = kvrt_alloc(tok->alloc, heap_bytes, 0);
    w->heap.cap = 3 * total;
    w->heap.n = 0;
    if (!w->text || !w->syms || !w->heap.items)
        return kvrt_fail(&tok->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "tokenize: no memory for %zu bytes of text", len);
    size_t o = 0;
    if (prefix) {
        memcpy(w->text, kvrt_space_mark, 3);
        o = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(w->text + o, kvrt_space_mark, 3);
            o += 3;
        } else {
            w->text[o++] = text[i];
        }
    }
    w->text_len = o;
    return KVRT_OK;
}

static void work_free(kvrt_tokenizer *tok, tok_work *w)
{
    kvrt_free(tok->alloc, w->text);
    kvrt_free(tok->alloc, w->syms);
    kvrt_free(tok->alloc, w->heap.items);
}

/* Queues the merge of symbol `left` with its right neighbour if their
 * concatenation (contiguous in the text) is a piece. */
static void try_pair(const kvrt_tokenizer *tok, tok_work *w, int32_t left)
{
    if (left < 0 || w->syms[left].next < 0)
        return;
    const tok_symbol *l = &w->syms[left], *r = &w->syms[l->next];
    uint32_t len = l->len + r->len;
    int32_t id = map_find(tok, w->text + l->start, len);
    if (id < 0 || w->heap.n >= w->heap.cap)
        return;
    tok_merge m = {tok->vocab->scores[id], left, id, len};
    heap_push(&w->heap, m);
}

static void split_and_merge(const kvrt_tokenizer *tok, tok_work *w)
{
    const unsigned char *t = (const unsigned char *)w->text;
    int32_t n = 0;
    for (size_t i = 0; i < w->text_len; n++) {
        uint32_t cl = utf8_char_len(t + i, w->text_len - i);
        w->syms[n] = (tok_symbol){n - 1, -1, (uint32_t)i, cl};
        if (n > 0)
            w->syms[n - 1].next = n;
        i += cl;
    }
    w->n_syms = n;
    for (int32_t i = 0; i + 1 < n; i++)
        try_pair(tok, w, i);
    while (w->heap.n > 0) {
        tok_merge m = heap_pop(&w->heap);
        tok_symbol *l = &w->syms[m.left];
        /* Stale: one side changed since the candidate was queued. Equal
         * lengths imply the same span, hence the same piece. */
        if (l->len == 0 || l->next < 0 || l->len + w->syms[l->next].len != m.len)
            continue;
        tok_symbol *r = &w->syms[l->next];
        l->len = m.len;
        l->next = r->next;
        if (r->next >= 0)
            w->syms[r->next].prev = m.left;
        r->len = 0;
        try_pair(tok, w, l->prev);
        try_pair(tok, w, m.left);
    }
}

/* Appends id to the output (counting past the capacity). */
static void emit(int32_t id, int32_t *ids, size_t capacity, size_t *n)
{
    if (*n < capacity)
        ids[*n] = id;
    (*n)++;
}

/* Writes the ids of the final symbols: a piece, else its bytes' pieces, else <unk>. */
static kvrt_status emit_symbols(kvrt_tokenizer *tok, const tok_work *w, int32_t *ids, size_t capacity, size_t *n)
{
    for (int32_t s = w->n_syms > 0 ? 0 : -1; s >= 0; s = w->syms[s].next) {
        const tok_symbol *sym = &w->syms[s];
        int32_t id = map_find(tok, w->text + sym->start, sym->len);
        if (id >= 0) {
            emit(id, ids, capacity, n);
            continue;
        }
        for (uint32_t k = 0; k < sym->len; k++) {
            unsigned char b = (unsigned char)w->text[sym->start + k];
            if (tok->byte_ids[b] >= 0) {
                emit(tok->byte_ids[b], ids, capacity, n);
            } else if (tok->vocab->unk_id >= 0) {
                emit(tok->vocab->unk_id, ids, capacity, n); /* one <unk> per unknown symbol */
                break;
            } else {
                return kvrt_fail(&tok->err, KVRT_ERR_BAD_TOKENIZER,
                                 "tokenize: byte 0x%02X has no piece, no byte piece and no <unk>", b);
            }
        }
    }
    return KVRT_OK;
}

kvrt_status kvrt_tokenizer_encode(kvrt_tokenizer *tok, const char *text, size_t len, bool add_bos, int32_t *ids,
                                  size_t capacity, size_t *n_ids)
{
    if (!tok || !n_ids || (!text && len > 0) || (!ids && capacity > 0))
        return kvrt_fail(tok ? &tok->err : NULL, KVRT_ERR_INVALID_ARGUMENT, "tokenize: NULL argument");
    *n_ids = 0;
    size_t n = 0;
    if (add_bos && tok->vocab->bos_id >= 0)
        emit(tok->vocab->bos_id, ids, capacity, &n);
    tok_work w = {0};
    kvrt_status s = work_init(tok, text, len, &w);
    if (s == KVRT_OK) {
        split_and_merge(tok, &w);
        s = emit_symbols(tok, &w, ids, capacity, &n);
    }
    work_free(tok, &w);
    if (s != KVRT_OK)
        return s;
    *n_ids = n;
    if (n > capacity)
        return kvrt_fail(&tok->err, KVRT_ERR_INVALID_ARGUMENT, "tokenize: %zu ids do not fit in %zu", n,
                         capacity);
    return KVRT_OK;
}

/* ---- decoding --------------------------------------------------------------- */

/* Writes token id's text after prev into dst[*o..cap) (counting past cap). */
static void piece_text(const kvrt_tokenizer *tok, int32_t prev, int32_t id, char *dst, size_t cap, size_t *o)
{
    const kvrt_vocab *v = tok->vocab;
    int32_t type = v->types[id];
    if (type == KVRT_TOKEN_CONTROL)
        return;
    if (type == KVRT_TOKEN_BYTE) {
        if (*o < cap)
            dst[*o] = (char)parse_byte_piece(v->pieces[id], v->piece_lens[id]);
        (*o)++;
        return;
    }
    const char *p = v->pieces[id];
    size_t n = (size_t)v->piece_lens[id];
    /* The encoder's added space: dropped after BOS, as run.c prints it. */
    bool drop_space = prev >= 0 && prev == v->bos_id && v->add_space_prefix && type != KVRT_TOKEN_UNKNOWN;
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
        if (*o < cap)
            dst[*o] = c;
        (*o)++;
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
