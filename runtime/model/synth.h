/* Writing standard llama GGUF files: the key set and tensor names that
 * llama.cpp's converters use (shared by kvrt-convert and kvrt-synth), and
 * random-weight models of any shape, streamed to disk tensor by tensor. */
#ifndef KVRT_SYNTH_H
#define KVRT_SYNTH_H

#include "model/gguf.h"
#include "model/model_file.h"
#include "model/quant_mix.h"

/* ---- llama GGUF layout ---------------------------------------------------------- */

/* Which optional tensors a file has: output.weight (untied), rope_freqs.weight,
 * Q/K/V biases, Q/K norms. */
typedef struct kvrt_llama_layout {
    bool with_output, with_rope_freqs, with_bias, with_qk_norm;
} kvrt_llama_layout;

/* The layout of a loaded model (with_output forces output.weight even when tied). */
kvrt_llama_layout kvrt_llama_layout_of(const kvrt_model_file *mf, bool with_output);
/* Tensor count, name and shape ([ne0] x ne1 rows) of tensor `index`, and the
 * loaded model's tensor there: token_embd, output_norm, [output],
 * [rope_freqs], then per layer llama.cpp's nine (attn_q, attn_k, attn_v,
 * attn_output, attn_norm, ffn_gate, ffn_down, ffn_up, ffn_norm), [the three
 * biases], [the two Q/K norms]. */
int32_t kvrt_llama_layout_count(const kvrt_llama_hparams *hp, const kvrt_llama_layout *l);
void kvrt_llama_layout_desc(const kvrt_llama_hparams *hp, const kvrt_llama_layout *l, int32_t index, char *name,
                            size_t name_size, int64_t *ne0, int64_t *ne1);
const kvrt_tensor_ref *kvrt_llama_layout_ref(const kvrt_model_file *mf, const kvrt_llama_layout *l, int32_t index);
kvrt_status kvrt_llama_add_layout_tensors(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp,
                                          const kvrt_llama_layout *l, kvrt_dtype main_type);
/* The same with the per-tensor types of a preset mix (NULL: main_type's rules). */
kvrt_status kvrt_llama_add_layout_tensors_mix(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp,
                                              const kvrt_llama_layout *l, kvrt_dtype main_type,
                                              const kvrt_quant_mix *mix);

/* The same for the plain layout (no rope_freqs, biases or norms). */
/* Number of tensors of a llama model with n_layer layers (output.weight included when untied). */
int32_t kvrt_llama_tensor_count(int32_t n_layer, bool with_output);
/* Name, shape ([ne0] x ne1 rows; ne1 == 1 for norms) of tensor `index` in
 * llama.cpp's order: token_embd, output_norm, [output], then per layer
 * attn_q, attn_k, attn_v, attn_output, attn_norm, ffn_gate, ffn_down, ffn_up, ffn_norm. */
void kvrt_llama_tensor_desc(const kvrt_llama_hparams *hp, bool with_output, int32_t index, char *name,
                            size_t name_size, int64_t *ne0, int64_t *ne1);
/* The weight of mf at that index (same order); NULL if out of range. */
const kvrt_tensor_ref *kvrt_llama_tensor_ref(const kvrt_model_file *mf, bool with_output, int32_t index);
/* The type a tensor gets in a file whose matrices are `main_type`: norms stay
 * F32; a row not a multiple of the quant block stays F16 (F32 for main F32). */
kvrt_dtype kvrt_llama_tensor_type(kvrt_dtype main_type, int64_t ne0, int64_t ne1);
/* The {arch}.* and general.* keys (freq_base only when it is not the default 10000;
 * key_length when heads are not n_embd / n_head wide; RoPE scaling and the sliding window when set). */
kvrt_status kvrt_llama_add_hparams(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp, const char *name);
/* tokenizer.ggml.* keys of a SentencePiece ("llama") vocabulary. */
kvrt_status kvrt_llama_add_vocab(kvrt_gguf_writer *w, const kvrt_vocab *v);
/* The type of a tensor in a file of a preset mix (mix != NULL, see
 * quant_mix.h) or, with mix NULL, of matrices `main_type` (as above). */
kvrt_dtype kvrt_llama_tensor_type_mix(const kvrt_quant_mix *mix, kvrt_dtype main_type, const kvrt_llama_hparams *hp,
                                      const char *name, int64_t ne0, int64_t ne1, bool with_output);
/* Adds every tensor info (after the keys). */
kvrt_status kvrt_llama_add_tensors(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp, kvrt_dtype main_type,
                                   bool with_output);
/* The same with the types of a preset mix (NULL: as above). */
kvrt_status kvrt_llama_add_tensors_mix(kvrt_gguf_writer *w, const kvrt_llama_hparams *hp, kvrt_dtype main_type,
                                       const kvrt_quant_mix *mix, bool with_output);

/* Writes a loaded model as a llama GGUF whose matrices are `type` (rows
 * converted one at a time; the source may be any type kvrt runs). name:
 * general.name; n_ctx: llama.context_length (0 = the model's); with_output:
 * write output.weight even when the classifier is tied. */
typedef struct kvrt_gguf_export_params {
    kvrt_dtype type;
    const char *name;
    int32_t n_ctx;
    bool with_output;
} kvrt_gguf_export_params;
kvrt_status kvrt_llama_export_gguf(const kvrt_model_file *mf, const kvrt_gguf_export_params *p, FILE *f,
                                   const kvrt_load_progress *progress, kvrt_error *err);

/* ---- synthetic models ---------------------------------------------------------------- */

typedef struct kvrt_synth_params {
    kvrt_llama_hparams hp; /* n_vocab, n_embd, n_layer, n_ff, n_head, n_head_kv, n_ctx_train (+ optional rope/eps) */
    kvrt_dtype type;       /* matrices: any type kvrt runs */
    uint64_t seed;
    bool tied_output;      /* no output.weight */
    float stddev;          /* of the matrices; 0 = 0.02 */
    bool vocab_only;       /* keys and vocabulary, no tensors (a tokenizer-only file) */
    const kvrt_quant_mix *mix; /* per-tensor types of a preset (general.file_type too); NULL: `type` */
    const kvrt_vocab *vocab; /* a real vocabulary to write (its size sets hp.n_vocab); NULL = the synthetic one */
    bool rope_freqs;       /* write rope_freqs.weight (llama; per-pair divisors rising from 1 to 8) */
    bool bias;             /* Q/K/V biases on a llama model (qwen2 always has them) */
} kvrt_synth_params;

/* The tensors a synthetic model gets: hp.arch's family tensors and the options above. */
kvrt_llama_layout kvrt_synth_layout(const kvrt_synth_params *p);

/* A shape of the preset table (model/shapes.h) by name or alias: "tiny" (a
 * few KB), "15m", "110m", "1b", "7b", "llama-3-8b", ... False when unknown. */
bool kvrt_synth_preset(const char *name, kvrt_synth_params *out);
/* Builds the synthetic vocabulary: <unk>, <s>, </s>, 256 byte pieces, then
 * U+2581 and letter strings that merge from shorter ones; n_tokens >= 3. */
kvrt_status kvrt_synth_vocab(const kvrt_allocator *alloc, int32_t n_tokens, kvrt_vocab *out, kvrt_error *err);
/* Writes the model to `f`, one row in memory at a time. */
kvrt_status kvrt_synth_write(const kvrt_synth_params *p, const kvrt_allocator *alloc, FILE *f,
                             const kvrt_load_progress *progress, kvrt_error *err);
kvrt_status kvrt_synth_write_file(const kvrt_synth_params *p, const kvrt_allocator *alloc, const char *path,
                                  const kvrt_load_progress *progress, kvrt_error *err);

#endif /* KVRT_SYNTH_H */
