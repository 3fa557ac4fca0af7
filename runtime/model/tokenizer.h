/*
 * Tokenizers over the neutral kvrt_vocab of model/model_file.h. Internal API.
 *
 * SentencePiece BPE (GGUF tokenizer.ggml.model "llama", llama2.c
 * tokenizer.bin): prepend a space when the vocabulary asks for it
 * (add_space_prefix) and the text is not empty, write spaces as U+2581,
 * split into UTF-8 characters (a byte that does not start a valid sequence
 * is one symbol), then repeatedly merge the adjacent pair whose
 * concatenation is a vocabulary piece of highest score (ties: leftmost). A
 * final symbol that is no piece is written as its byte pieces <0xNN> (or
 * <unk> where those are missing).
 *
 * Byte-level BPE (tokenizer.ggml.model "gpt2"): the pre-tokenizer named by
 * tokenizer.ggml.pre splits the text into words with its regular
 * expressions (PCRE2, Unicode properties); each word's bytes become the
 * tokens of their characters in GPT-2's byte-to-unicode table, and the
 * adjacent pair with the lowest merge rank is merged until none is left
 * (ties: leftmost). Pre-tokenizers that ignore merges (Llama 3's) take a
 * word that is a token whole. Any bytes encode, invalid UTF-8 included.
 *
 * Special tokens: with KVRT_TOKENIZE_PARSE_SPECIAL, the pieces of control,
 * user-defined and unknown tokens written in the text become those tokens
 * (longest piece first, then left to right, as llama.cpp splits them);
 * without it the text is only ever text. The text between them is encoded
 * as above (SentencePiece adds its leading space to each such stretch).
 * KVRT_TOKENIZE_ADD_SPECIAL adds BOS / EOS as the vocabulary asks.
 *
 * Decoding: SentencePiece: U+2581 -> ' ', byte pieces -> the raw byte; BPE:
 * the table undone, so the exact bytes come back. Control and unknown
 * tokens give nothing, user-defined ones their piece. A SentencePiece piece
 * right after BOS loses its leading space (the space the encoder added), as
 * llama2.c's run.c prints it. So decode(encode(x, ADD_SPECIAL)) == x for any
 * bytes x (SentencePiece: without U+2581 in x).
 *
 * Threading: one thread at a time per tokenizer.
 */
#ifndef KVRT_TOKENIZER_H
#define KVRT_TOKENIZER_H

#include "model/model_file.h"

typedef struct kvrt_tokenizer kvrt_tokenizer;

/* Builds a tokenizer over `vocab`, which it references (not copies): the
 * vocabulary must outlive the tokenizer. Validates the vocabulary (pieces,
 * types, special ids in range, byte pieces well formed; BPE: every merge two
 * tokens that make a token, no merge twice, the byte alphabet present, a
 * known pre-tokenizer whose expressions compile): KVRT_ERR_BAD_TOKENIZER or
 * KVRT_ERR_UNSUPPORTED (unknown pre-tokenizer) with a message otherwise.
 * `alloc` may be NULL. */
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
/* Whether generating `id` ends a turn: EOS, end of turn / message (from
 * their keys, or the usual pieces <|eot_id|>, <|im_end|>, <|end|>,
 * <end_of_turn>, <|endoftext|>, <|eom_id|>, <EOT>), or a token marked with
 * kvrt_tokenizer_mark_eog. False outside the vocabulary. */
bool kvrt_tokenizer_is_eog(const kvrt_tokenizer *tok, int32_t id);
void kvrt_tokenizer_mark_eog(kvrt_tokenizer *tok, int32_t id);
/* Up to cap end-of-generation ids in increasing order into ids; returns how many there are. */
int32_t kvrt_tokenizer_eog_ids(const kvrt_tokenizer *tok, int32_t *ids, int32_t cap);
/* Id of a control, user-defined or unknown token whose piece is exactly
 * s[0..n), else -1 (chat templates look their markers up with this). */
int32_t kvrt_tokenizer_special_id(const kvrt_tokenizer *tok, const char *s, size_t n);
/* The vocabulary piece of `id` as stored (U+2581 for spaces, BPE's byte
 * characters), NUL-terminated, its length in *len (may be NULL); NULL when
 * id is out of range. */
const char *kvrt_tokenizer_piece(const kvrt_tokenizer *tok, int32_t id, size_t *len);
/* Type of `id` after the end-of-turn overrides (KVRT_TOKEN_*), 0 outside the vocabulary. */
int32_t kvrt_tokenizer_type(const kvrt_tokenizer *tok, int32_t id);

/* Whether pre-tokenizer `pre` prepends BOS when the file does not say
 * (Llama 3's does); false for unknown names. */
bool kvrt_bpe_pre_adds_bos(const char *pre);

/* Tokenizes `len` bytes of `text` (any bytes; NULL allowed when len == 0).
 * flags: KVRT_TOKENIZE_ADD_SPECIAL (BOS / EOS as the vocabulary asks),
 * KVRT_TOKENIZE_PARSE_SPECIAL (see above). Writes the ids to
 * ids[0..capacity) and the count to *n_ids. When capacity is too small
 * (ids may then be NULL) returns KVRT_ERR_INVALID_ARGUMENT with *n_ids set
 * to the number needed. KVRT_ERR_BAD_TOKENIZER when a byte has no token to
 * stand for it. */
kvrt_status kvrt_tokenizer_encode(kvrt_tokenizer *tok, const char *text, size_t len, unsigned flags, int32_t *ids,
                                  size_t capacity, size_t *n_ids);

/* kvrt_tokenizer_encode, with the byte ranges plain[i] = {start, end} of the
 * text kept as text even under KVRT_TOKENIZE_PARSE_SPECIAL (a chat
 * message's content inside its template's markers). */
kvrt_status kvrt_tokenizer_encode_plain(kvrt_tokenizer *tok, const char *text, size_t len, unsigned flags,
                                        const size_t (*plain)[2], size_t n_plain, int32_t *ids, size_t capacity,
                                        size_t *n_ids);

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
