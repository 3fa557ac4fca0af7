/*
 * What a model loader produces: hyper-parameters, weight tensors (host bytes,
 * memory-mapped or owned) and the vocabulary, independent of the file format
 * (GGUF or llama2.c). The forward pass and the tokenizer read only this.
 */
#ifndef KVRT_MODEL_FILE_H
#define KVRT_MODEL_FILE_H

#include "common/kvrt_internal.h"
#include "common/quant.h"

/* A weight in the file: ne[0] is the row length (contiguous), ne[1] the number
 * of rows (GGUF order). 1-D tensors have ne[1] == 1. Quantized types keep the
 * GGUF block layouts (Q8_0: 32 values per 34-byte block; Q4_0: 32 per 18). */
typedef struct kvrt_tensor_ref {
    kvrt_dtype type;
    const void *data; /* host bytes: into the mapping, or owned by the model file */
    size_t nbytes;
    int64_t ne[2];
} kvrt_tensor_ref;

/* The architectures kvrt runs: one graph with per-family options. */
typedef enum kvrt_arch {
    KVRT_ARCH_LLAMA = 0, /* Llama 2/3.x, Mistral, TinyLlama, SmolLM: adjacent-pair RoPE */
    KVRT_ARCH_QWEN2 = 1, /* Qwen2/2.5: Q/K/V biases, NeoX RoPE */
    KVRT_ARCH_QWEN3 = 2  /* Qwen3: per-head RMSNorm on Q and K before RoPE, NeoX RoPE */
} kvrt_arch;

/* RoPE scaling ({arch}.rope.scaling.type). */
typedef enum kvrt_rope_scaling {
    KVRT_ROPE_SCALING_NONE = 0,
    KVRT_ROPE_SCALING_LINEAR = 1, /* positions divided by the factor */
    KVRT_ROPE_SCALING_YARN = 2    /* YaRN: interpolation ramped over dimensions, magnitude corrected */
} kvrt_rope_scaling;

typedef struct kvrt_llama_hparams {
    kvrt_arch arch;
    int32_t n_vocab;
    int32_t n_embd;      /* dim */
    int32_t n_layer;
    int32_t n_ff;        /* hidden_dim of the FFN */
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;    /* {arch}.attention.key_length, else n_embd / n_head */
    int32_t n_ctx_train; /* as the file states it (may be smaller than trained, see DESIGN) */
    int32_t rope_dim;    /* rotated dims per head (== head_dim unless the file says otherwise) */
    int32_t rope_neox;   /* 0: adjacent pairs (llama); 1: halves (qwen2, qwen3) */
    float rope_freq_base; /* default 10000 */
    float rms_eps;        /* default 1e-5 */
    /* RoPE scaling; zero fields take the defaults kvrt_llama_hparams_check fills in */
    kvrt_rope_scaling rope_scaling;
    float rope_scale;        /* the factor (1 = none) */
    float rope_attn_factor;  /* magnitude factor on cos/sin (default 1) */
    int32_t rope_orig_ctx;   /* YaRN: the context the model was trained at (default n_ctx_train) */
    float yarn_beta_fast, yarn_beta_slow; /* YaRN's ramp ends (32, 1) */
    int32_t sliding_window;  /* attention window (llama.attention.sliding_window); 0 = none */
} kvrt_llama_hparams;

typedef struct kvrt_llama_layer {
    kvrt_tensor_ref attn_norm; /* [n_embd] */
    kvrt_tensor_ref wq;        /* [n_embd] x n_head*head_dim rows */
    kvrt_tensor_ref wk;        /* [n_embd] x n_head_kv*head_dim rows */
    kvrt_tensor_ref wv;        /* [n_embd] x n_head_kv*head_dim rows */
    kvrt_tensor_ref wo;        /* [n_head*head_dim] x n_embd rows */
    kvrt_tensor_ref ffn_norm;  /* [n_embd] */
    kvrt_tensor_ref ffn_gate;  /* [n_embd] x n_ff rows  (w1) */
    kvrt_tensor_ref ffn_down;  /* [n_ff] x n_embd rows  (w2) */
    kvrt_tensor_ref ffn_up;    /* [n_embd] x n_ff rows  (w3) */
    /* per family; data NULL when absent */
    kvrt_tensor_ref bq;        /* [n_head*head_dim] F32 (qwen2; optional for llama) */
    kvrt_tensor_ref bk;        /* [n_head_kv*head_dim] F32 */
    kvrt_tensor_ref bv;        /* [n_head_kv*head_dim] F32 */
    kvrt_tensor_ref q_norm;    /* [head_dim] F32 (qwen3) */
    kvrt_tensor_ref k_norm;    /* [head_dim] F32 (qwen3) */
} kvrt_llama_layer;

typedef struct kvrt_llama_weights {
    kvrt_tensor_ref tok_embd;    /* [n_embd] x n_vocab rows */
    kvrt_tensor_ref output_norm; /* [n_embd] */
    kvrt_tensor_ref output;      /* [n_embd] x n_vocab rows; == tok_embd when tied */
    kvrt_tensor_ref rope_freqs;  /* [rope_dim / 2] F32 per-dimension frequency divisors (Llama 3.1); optional */
    kvrt_llama_layer *layers;    /* [n_layer] */
} kvrt_llama_weights;

/* SentencePiece token types (GGUF tokenizer.ggml.token_type). */
enum {
    KVRT_TOKEN_NORMAL = 1,
    KVRT_TOKEN_UNKNOWN = 2,
    KVRT_TOKEN_CONTROL = 3,
    KVRT_TOKEN_USER_DEFINED = 4,
    KVRT_TOKEN_UNUSED = 5,
    KVRT_TOKEN_BYTE = 6
};

/* Tokenizer families (GGUF tokenizer.ggml.model). */
typedef enum kvrt_vocab_kind {
    KVRT_VOCAB_SPM = 0, /* "llama": SentencePiece BPE over scores, U+2581 for spaces, <0xNN> byte pieces */
    KVRT_VOCAB_BPE = 1  /* "gpt2": byte-level BPE over ranked merges, pre-tokenizer regexes */
} kvrt_vocab_kind;

/* The vocabulary in GGUF conventions. SentencePiece: pieces use U+2581 for
 * spaces, BOS/EOS are "<s>"/"</s>", byte pieces "<0xNN>" have type BYTE (a
 * llama2.c tokenizer.bin is normalised into this form by its loader).
 * Byte-level BPE: pieces are bytes written through GPT-2's byte-to-unicode
 * table (a space is U+0120), merges "A B" ranked by their order. */
typedef struct kvrt_vocab {
    kvrt_vocab_kind kind;
    int32_t n_tokens;
    char **pieces;       /* [n_tokens] NUL-terminated UTF-8 */
    int32_t *piece_lens; /* [n_tokens] bytes, without the NUL */
    float *scores;       /* [n_tokens] merge priority (higher merges first; SPM) */
    int32_t *types;      /* [n_tokens] KVRT_TOKEN_* */
    int32_t bos_id, eos_id, unk_id; /* -1 when absent */
    int32_t eot_id, eom_id;         /* end of turn / end of message; -1 when absent */
    bool add_bos;        /* tokenize prepends BOS */
    bool add_eos;        /* kvrt_tokenize(KVRT_TOKENIZE_ADD_SPECIAL) appends EOS
                          * (tokenizer.ggml.add_eos_token; default false) */
    bool add_space_prefix; /* SentencePiece adds a leading space (default true; false for BPE) */
    /* Whitespace after a special token is dropped when it is parsed from text
     * (Phi-3's added tokens are declared rstrip; GGUF has no key for it, so
     * the loader sets this from general.name, as llama.cpp does). */
    bool special_rstrip;
    char pre[64];        /* BPE: tokenizer.ggml.pre, "" when the file has none */
    int32_t n_merges;    /* BPE: tokenizer.ggml.merges, merge i = merge_text[merge_offsets[i] .. [i + 1]) */
    char *merge_text;
    uint32_t *merge_offsets; /* [n_merges + 1] */
    char *chat_template; /* tokenizer.chat_template (NUL-terminated) or NULL */
} kvrt_vocab;

typedef struct kvrt_model_file {
    const kvrt_allocator *alloc;
    char arch[32];              /* "llama" */
    kvrt_llama_hparams hp;
    kvrt_llama_weights w;       /* all zero when vocab_only */
    kvrt_vocab vocab;
    bool vocab_only;            /* a tokenizer-only GGUF (no tensors) */
    kvrt_dtype main_type;       /* type of most matrices, for display */
    /* storage */
    void *mapping;              /* mmap of the file, or NULL */
    size_t mapping_size;
    void *owned;                /* heap bytes the tensors point into, or NULL */
} kvrt_model_file;

typedef struct kvrt_load_progress {
    /* Called now and then while reading big files; fraction in [0, 1]. May be NULL. */
    void (*fn)(void *user, double fraction);
    void *user;
} kvrt_load_progress;

/* "llama", "qwen2", "qwen3". */
const char *kvrt_arch_name(kvrt_arch arch);

/* GGUF v2/v3 file, architecture llama, qwen2 or qwen3. vocab_only_ok: accept a file with no
 * tensors (tokenizer-only). Errors: IO, BAD_MODEL (naming the key/tensor),
 * BAD_TOKENIZER, UNSUPPORTED (tensor type or tokenizer model kvrt does not run). */
kvrt_status kvrt_model_file_load_gguf(const char *path, const kvrt_allocator *alloc, bool vocab_only_ok,
                                      const kvrt_load_progress *progress, kvrt_model_file **out, kvrt_error *err);
/* GGUF from memory (fuzzing, tests): the bytes must outlive the model file. */
kvrt_status kvrt_model_file_load_gguf_memory(const void *data, size_t size, const kvrt_allocator *alloc,
                                             bool vocab_only_ok, kvrt_model_file **out, kvrt_error *err);
/* llama2.c run.c checkpoint plus its tokenizer.bin (tokenizer_path may be NULL:
 * then the vocabulary is empty and only token ids can be used). */
kvrt_status kvrt_model_file_load_llama2c(const char *checkpoint_path, const char *tokenizer_path,
                                         const kvrt_allocator *alloc, const kvrt_load_progress *progress,
                                         kvrt_model_file **out, kvrt_error *err);
/* A llama2.c tokenizer.bin alone into a vocabulary (used by the above). */
kvrt_status kvrt_vocab_load_llama2c(const char *path, int32_t expected_n_tokens, const kvrt_allocator *alloc,
                                    kvrt_vocab *out, kvrt_error *err);
kvrt_status kvrt_vocab_load_llama2c_memory(const void *data, size_t size, int32_t expected_n_tokens,
                                           const kvrt_allocator *alloc, kvrt_vocab *out, kvrt_error *err);
/* An empty vocabulary: everything zero, every special id -1. */
void kvrt_vocab_init(kvrt_vocab *vocab);
/* Frees what the vocabulary owns and initialises it again. */
void kvrt_vocab_free(const kvrt_allocator *alloc, kvrt_vocab *vocab);
void kvrt_model_file_free(kvrt_model_file *mf);

/* Element sizes and block layouts of the types: see common/quant.h. */

#endif /* KVRT_MODEL_FILE_H */
