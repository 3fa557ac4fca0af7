/*
 * SentencePiece-BPE tokenizer of the Llama family (GGUF tokenizer.ggml.model
 * "llama", llama2.c tokenizer.bin), over the neutral kvrt_vocab of
 * model/model_file.h. Internal API.
 *
 * Encoding: prepend a space when the vocabulary asks for it (add_space_prefix)
 * and the text is not empty, write spaces as U+2581, split into UTF-8
 * characters (a byte that does not start a valid sequence is one symbol),
 * then repeatedly merge the adjacent pair whose concatenation is a vocabulary
 * piece of highest score (ties: leftmost). A final symbol that is no piece is
 * written as its byte pieces <0xNN> (or <unk> where those are missing).
 *
 * Decoding: U+2581 -> ' ', byte pieces -> the raw byte, control tokens ->
 * nothing; a normal piece right after BOS loses its leading space (the space
 * the encoder added), as llama2.c's run.c prints it. So
 * decode(encode(x, add_bos=true)) == x for any bytes x without U+2581.
 */
#ifndef KVRT_TOKENIZER_H
#define KVRT_TOKENIZER_H

#include "model/model_file.h"

typedef struct kvrt_tokenizer kvrt_tokenizer;

/* Builds a tokenizer over `vocab`, which it references (not copies): the
 * vocabulary must outlive the tokenizer. Validates the vocabulary (pieces,
 * types, BOS/EOS/UNK ids in range, byte pieces well formed):
 * KVRT_ERR_BAD_TOKENIZER with a message otherwise. `alloc` may be NULL. */
kvrt_status kvrt_tokenizer_create(const kvrt_vocab *vocab, const kvrt_allocator *alloc, kvrt_tokenizer **out,
                                  kvrt_error *err);
/* NULL is a no-op. */
void kvrt_tokenizer_destroy(kvrt_tokenizer *tok);
/* Message of the last failed call ("" if none). */
const char *kvrt_tokenizer_message(const kvrt_tokenizer *tok);

int32_t kvrt_tokenizer_n_tokens(const kvrt_tokenizer *tok);
int32_t kvrt_tokenizer_bos(const kvrt_tokenizer *tok); /* -1 when absent */
int32_t kvrt_tokenizer_eos(const kvrt_tokenizer *tok); /* -1 when absent */
/* Whether the vocabulary wants BOS prepended (and has one). */
bool kvrt_tokenizer_adds_bos(const kvrt_tokenizer *tok);
/* The vocabulary piece of `id` as stored (U+2581 for spaces), NUL-terminated,
 * its length in *len (may be NULL); NULL when id is out of range. */
const char *kvrt_tokenizer_piece(const kvrt_tokenizer *tok, int32_t id, size_t *len);

/* Tokenizes `len` bytes of `text` (any bytes; NULL allowed when len == 0).
 * add_bos prepends BOS when the vocabulary has one. Writes the ids to
 * ids[0..capacity) and the count to *n_ids. When capacity is too small
 * (ids may then be NULL) returns KVRT_ERR_INVALID_ARGUMENT with *n_ids set
 * to the number needed. KVRT_ERR_BAD_TOKENIZER when a byte has neither a
 * byte piece nor <unk> to stand for it. */
kvrt_status kvrt_tokenizer_encode(kvrt_tokenizer *tok, const char *text, size_t len, bool add_bos, int32_t *ids,
                                  size_t capacity, size_t *n_ids);

/* The bytes token `id` adds to the text when it follows `prev` (-1 at the
 * start of a sequence): see the decoding rules above. Writes them plus a NUL
 * to buf[0..capacity) and their count (without the NUL) to *len. Too small a
 * buffer: KVRT_ERR_INVALID_ARGUMENT with *len set to what is needed (+1 for
 * the NUL is the caller's). Bad id: KVRT_ERR_BAD_TOKEN. */
kvrt_status kvrt_tokenizer_token_to_piece(kvrt_tokenizer *tok, int32_t prev, int32_t id, char *buf,
                                          size_t capacity, size_t *len);

/* The text of a whole sequence (token_to_piece of each id after its
 * predecessor), plus a NUL, same buffer contract as token_to_piece. The text
 * may contain NUL bytes (from <0x00>): use *len. */
kvrt_status kvrt_tokenizer_decode(kvrt_tokenizer *tok, const int32_t *ids, size_t n_ids, char *buf,
                                  size_t capacity, size_t *len);

#endif /* KVRT_TOKENIZER_H */
