/* What the tokenizer's parts share: the object itself, the output buffer and
 * the two encoders (SentencePiece in tokenizer_spm.c, byte-level BPE in
 * tokenizer_bpe.c). tokenizer.c holds what is common: the piece map,
 * special tokens, end-of-generation tokens and decoding. */
#ifndef KVRT_TOKENIZER_INTERNAL_H
#define KVRT_TOKENIZER_INTERNAL_H

#include "model/tokenizer.h"

typedef struct kvrt_bpe kvrt_bpe;

struct kvrt_tokenizer {
    const kvrt_allocator *alloc;
    const kvrt_vocab *vocab;
    kvrt_error err;
    int32_t *slots;        /* [slot_mask + 1] open addressing: piece id, -1 = empty */
    uint32_t slot_mask;
    int32_t byte_ids[256]; /* SPM: id of <0xNN>; BPE: id of byte b's character; -1 when absent */
    int32_t *types;        /* [n_tokens] the vocabulary's types, end-of-turn texts made CONTROL */
    uint8_t *eog;          /* [n_tokens] nonzero: generating this token ends the turn */
    int32_t *special;      /* [n_special] control, user-defined and unknown ids, longest piece first */
    int32_t n_special;
    kvrt_bpe *bpe;         /* byte-level BPE state; NULL for SentencePiece */
};

/* Ids written to ids[0..cap); n counts past cap, so a too-small buffer
 * still learns the size it needs. */
typedef struct kvrt_tok_out {
    int32_t *ids;
    size_t cap, n;
} kvrt_tok_out;

static inline void kvrt_tok_emit(kvrt_tok_out *o, int32_t id)
{
    if (o->n < o->cap)
        o->ids[o->n] = id;
    o->n++;
}

/* Id of the piece s[0..n), or -1. SentencePiece: normal and user-defined
 * pieces only (the ones merging can produce); BPE: every piece. Duplicate
 * pieces: the lowest id. */
int32_t kvrt_tok_find(const kvrt_tokenizer *tok, const char *s, size_t n);

/* Length of the UTF-8 character at s (n >= 1 bytes left); 1 for a byte that
 * does not start a complete, well-formed sequence. */
uint32_t kvrt_utf8_char_len(const unsigned char *s, size_t n);

/* SentencePiece: one stretch of text (no special tokens in it), with a
 * leading space added when prefix_space. */
kvrt_status kvrt_spm_encode(kvrt_tokenizer *tok, const char *text, size_t len, bool prefix_space, kvrt_tok_out *out);

/* Byte-level BPE: state built from the vocabulary's merges and pre-tokenizer
 * (BAD_TOKENIZER / UNSUPPORTED with a message naming the problem). */
kvrt_status kvrt_bpe_create(kvrt_tokenizer *tok, kvrt_error *err);
void kvrt_bpe_destroy(kvrt_tokenizer *tok);
kvrt_status kvrt_bpe_encode(kvrt_tokenizer *tok, const char *text, size_t len, kvrt_tok_out *out);
/* Compiles one pre-tokenizer expression as the tokenizer does (UTF, Unicode
 * properties, invalid UTF-8 allowed in subjects): BAD_TOKENIZER naming the
 * offset and PCRE2's reason when it does not compile. */
kvrt_status kvrt_bpe_check_expression(const char *pattern, kvrt_error *err);
/* The bytes a normal BPE token stands for (the byte-to-unicode table undone). */
const char *kvrt_bpe_token_bytes(const kvrt_tokenizer *tok, int32_t id, size_t *len);

#endif /* KVRT_TOKENIZER_INTERNAL_H */
