/* SentencePiece BPE: merges by piece score over UTF-8 characters (see
 * tokenizer.h for the rules). */
#include "model/tokenizer_internal.h"

#include <string.h>

/* One symbol: a span of the normalised text, linked to its neighbours. A symbol
 * merged into its left neighbour gets len 0. */
typedef struct spm_symbol {
    int32_t prev, next; /* symbol indices, -1 at the ends */
    uint32_t start, len;
} spm_symbol;

/* A candidate merge of symbol `left` with its right neighbour into piece `id`,
 * valid while the two spans still add up to `len` bytes. */
typedef struct spm_merge {
    float score;
    int32_t left;
    int32_t id;
    uint32_t len;
} spm_merge;

typedef struct spm_heap {
    spm_merge *items;
    size_t n, cap;
} spm_heap;

/* Higher score first; equal scores: the leftmost pair (SentencePiece's order). */
static bool merge_before(const spm_merge *a, const spm_merge *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(spm_heap *h, spm_merge m)
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

static spm_merge heap_pop(spm_heap *h)
{
    spm_merge top = h->items[0];
    spm_merge last = h->items[--h->n];
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

typedef struct spm_work {
    char *text;        /* normalised text */
    size_t text_len;
    spm_symbol *syms;  /* [n_syms] */
    int32_t n_syms;
    spm_heap heap;
} spm_work;

static const char kvrt_space_mark[3] = {'\xe2', '\x96', '\x81'}; /* U+2581 */

/* Builds the normalised text and the scratch arrays sized for it. */
static kvrt_status work_init(kvrt_tokenizer *tok, const char *text, size_t len, bool prefix, spm_work *w)
{
    size_t spaces = 0;
    for (size_t i = 0; i < len; i++)
        spaces += text[i] == ' ';
    prefix = prefix && len > 0;
    size_t extra = 2 * spaces + (prefix ? 3 : 0);
    size_t total, syms_bytes, heap_bytes;
    if (!kvrt_add_size(len, extra, &total) || total > (size_t)INT32_MAX / 4 ||
        !kvrt_mul_size(total, sizeof(spm_symbol), &syms_bytes) ||
        !kvrt_mul_size(total, 3 * sizeof(spm_merge), &heap_bytes))
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

static void work_free(kvrt_tokenizer *tok, spm_work *w)
{
    kvrt_free(tok->alloc, w->text);
    kvrt_free(tok->alloc, w->syms);
    kvrt_free(tok->alloc, w->heap.items);
}

/* Queues the merge of symbol `left` with its right neighbour if their
 * concatenation (contiguous in the text) is a piece. */
static void try_pair(const kvrt_tokenizer *tok, spm_work *w, int32_t left)
{
    if (left < 0 || w->syms[left].next < 0)
        return;
    const spm_symbol *l = &w->syms[left], *r = &w->syms[l->next];
    uint32_t len = l->len + r->len;
    int32_t id = kvrt_tok_find(tok, w->text + l->start, len);
    if (id < 0 || w->heap.n >= w->heap.cap)
        return;
    spm_merge m = {tok->vocab->scores[id], left, id, len};
    heap_push(&w->heap, m);
}

static void split_and_merge(const kvrt_tokenizer *tok, spm_work *w)
{
    const unsigned char *t = (const unsigned char *)w->text;
    int32_t n = 0;
    for (size_t i = 0; i < w->text_len; n++) {
        uint32_t cl = kvrt_utf8_char_len(t + i, w->text_len - i);
        w->syms[n] = (spm_symbol){n - 1, -1, (uint32_t)i, cl};
        if (n > 0)
            w->syms[n - 1].next = n;
        i += cl;
    }
    w->n_syms = n;
    for (int32_t i = 0; i + 1 < n; i++)
        try_pair(tok, w, i);
    while (w->heap.n > 0) {
        spm_merge m = heap_pop(&w->heap);
        spm_symbol *l = &w->syms[m.left];
        /* Stale: one side changed since the candidate was queued. Equal
         * lengths imply the same span, hence the same piece. */
        if (l->len == 0 || l->next < 0 || l->len + w->syms[l->next].len != m.len)
            continue;
        spm_symbol *r = &w->syms[l->next];
        l->len = m.len;
        l->next = r->next;
        if (r->next >= 0)
            w->syms[r->next].prev = m.left;
        r->len = 0;
        try_pair(tok, w, l->prev);
        try_pair(tok, w, m.left);
    }
}

/* Writes the ids of the final symbols: a piece, else its bytes' pieces, else <unk>. */
static kvrt_status emit_symbols(kvrt_tokenizer *tok, const spm_work *w, kvrt_tok_out *out)
{
    for (int32_t s = w->n_syms > 0 ? 0 : -1; s >= 0; s = w->syms[s].next) {
        const spm_symbol *sym = &w->syms[s];
        int32_t id = kvrt_tok_find(tok, w->text + sym->start, sym->len);
        if (id >= 0) {
            kvrt_tok_emit(out, id);
            continue;
        }
        for (uint32_t k = 0; k < sym->len; k++) {
            unsigned char b = (unsigned char)w->text[sym->start + k];
            if (tok->byte_ids[b] >= 0) {
                kvrt_tok_emit(out, tok->byte_ids[b]);
            } else if (tok->vocab->unk_id >= 0) {
                kvrt_tok_emit(out, tok->vocab->unk_id); /* one <unk> per unknown symbol */
                break;
            } else {
                return kvrt_fail(&tok->err, KVRT_ERR_BAD_TOKENIZER,
                                 "tokenize: byte 0x%02X has no piece, no byte piece and no <unk>", b);
            }
        }
    }
    return KVRT_OK;
}

kvrt_status kvrt_spm_encode(kvrt_tokenizer *tok, const char *text, size_t len, bool prefix_space, kvrt_tok_out *out)
{
    spm_work w = {0};
    kvrt_status s = work_init(tok, text, len, prefix_space, &w);
    if (s == KVRT_OK) {
        split_and_merge(tok, &w);
        s = emit_symbols(tok, &w, out);
    }
    work_free(tok, &w);
    return s;
}
