/*
 * Models, tokenization, single-sequence sessions and sampling. Include
 * through kvrt.h.
 *
 * Ownership: a model belongs to the context it was loaded on and must be
 * destroyed before it; a session belongs to its model. kvrt keeps no
 * reference to caller memory after a call returns (paths included).
 * Threading: one thread at a time per context and everything created from it.
 */
#ifndef KVRT_MODEL_H
#define KVRT_MODEL_H

#include "kvrt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- models ----------------------------------------------------------------- */

typedef struct kvrt_model kvrt_model;

typedef struct kvrt_model_params {
    const char *path;           /* GGUF file, or a llama2.c checkpoint (.bin) */
    const char *tokenizer_path; /* llama2.c tokenizer.bin (checkpoints only); may be NULL */
    /* Called now and then while loading; fraction in [0, 1]. May be NULL. */
    void (*progress)(void *user, double fraction);
    void *progress_user;
    int32_t max_context;        /* positions the model will be asked for; 0 = the file's context length,
                                 * capped at KVRT_DEFAULT_MAX_CONTEXT (a file may claim far more than a
                                 * run needs: memory is sized by it) */
    kvrt_dtype kv_type;         /* the KV type sessions will use, so that the up-front memory check
                                 * below counts its bytes (default KVRT_DTYPE_F32, the sessions'
                                 * default); it does not bind what sessions may choose */
} kvrt_model_params;

/* The cap on a default max_context (kvrt_model_params.max_context = 0). */
#define KVRT_DEFAULT_MAX_CONTEXT 4096

KVRT_API kvrt_model_params kvrt_model_default_params(void);

/* Loads a Llama-family model onto the context's backend (weights in backend
 * buffers; on the CPU the GGUF data section is memory-mapped and read in place).
 * What max_context sizes (the RoPE table, and one sequence's KV cache in
 * params->kv_type) is checked before anything is allocated against what the
 * context may still use (kvrt_context_get_limits: memory_budget minus
 * memory_in_use; by default the device's heap or the host's available
 * memory): OUT_OF_HOST_MEMORY on the CPU, OUT_OF_DEVICE_MEMORY on a GPU,
 * naming max_context or the file's context length.
 * Errors: IO, BAD_MODEL, BAD_TOKENIZER, UNSUPPORTED (a tensor type or tokenizer
 * kvrt does not run), OUT_OF_*_MEMORY; the message names the problem. */
KVRT_API kvrt_status kvrt_model_load(kvrt_context *ctx, const kvrt_model_params *params,
                                     kvrt_model **out, kvrt_error *err);
KVRT_API void kvrt_model_destroy(kvrt_model *model);
KVRT_API const char *kvrt_model_message(const kvrt_model *model);

typedef struct kvrt_model_info {
    int32_t n_vocab, n_embd, n_layer, n_ff, n_head, n_head_kv, head_dim;
    int32_t n_ctx_train;  /* as the file states it */
    int32_t bos_id, eos_id; /* -1 when absent */
    int32_t add_bos, add_eos; /* 1 when tokenizing adds BOS / EOS (the file's add_bos_token /
                               * add_eos_token; what KVRT_TOKENIZE_ADD_SPECIAL adds) */
    int32_t max_context;    /* positions a session or engine may use: kvrt_model_params.max_context,
                             * or the file's context length capped at KVRT_DEFAULT_MAX_CONTEXT */
    kvrt_dtype weight_type; /* type of most matrices */
    uint64_t n_params;
    uint64_t weight_bytes;
    char arch[32];
    /* tensors of each type: tensors_of_type[t] for kvrt_dtype value t (all < 32) */
    int32_t tensors_of_type[32];
} kvrt_model_info;

KVRT_API kvrt_status kvrt_model_get_info(const kvrt_model *model, kvrt_model_info *out);

/* Flags of kvrt_tokenize (1 keeps its old meaning "add BOS"). */
#define KVRT_TOKENIZE_ADD_SPECIAL 1u   /* the special tokens the vocabulary asks for, as the file says: BOS
                                        * first when kvrt_model_info.add_bos, EOS last when add_eos (a file
                                        * with add_bos_token = false gets no BOS) */
#define KVRT_TOKENIZE_PARSE_SPECIAL 2u /* the pieces of control and user-defined tokens written in the text
                                        * (such as <|im_start|>) become those tokens; without it text is
                                        * only ever text. Chat templates always use it. */

/* Tokenizes `len` bytes of UTF-8 text (any bytes are accepted) with `flags`
 * (KVRT_TOKENIZE_*). Writes up to `capacity` ids; *n_tokens receives the
 * number needed, and the call returns KVRT_ERR_INVALID_ARGUMENT (with
 * *n_tokens set) when capacity is too small: a call with capacity 0 asks for
 * the size. */
KVRT_API kvrt_status kvrt_tokenize(kvrt_model *model, const char *text, size_t len, unsigned flags,
                                   int32_t *ids, int32_t capacity, int32_t *n_tokens);

/* The bytes a token stands for, as a stream of text shows them: byte pieces
 * become their byte, U+2581 a space, control tokens nothing, and the leading
 * space of the first piece after BOS is dropped (prev_token == BOS; -1 at
 * the start). Writes the bytes plus a NUL (capacity counts it); *len receives
 * the byte count without the NUL. Too small a buffer: INVALID_ARGUMENT with
 * *len set to what is needed; an id outside the vocabulary: BAD_TOKEN. */
KVRT_API kvrt_status kvrt_token_to_text(kvrt_model *model, int32_t prev_token, int32_t token,
                                        char *buf, size_t capacity, size_t *len);

/* Whether generating `token` ends a turn: EOS, the end-of-turn and
 * end-of-message tokens (tokenizer.ggml.eot_token_id / eom_token_id, or the
 * usual pieces such as <|eot_id|>, <|im_end|>, <|end|>, <end_of_turn>), and
 * the end marker of the file's chat template. 0 for ids outside the
 * vocabulary and for a model without one. */
KVRT_API int kvrt_token_is_eog(const kvrt_model *model, int32_t token);
/* Up to `capacity` end-of-generation ids, increasing, into ids; *n_ids
 * receives how many there are (INVALID_ARGUMENT when they do not fit). */
KVRT_API kvrt_status kvrt_model_eog_tokens(const kvrt_model *model, int32_t *ids, int32_t capacity,
                                           int32_t *n_ids);

/* ---- chat templates --------------------------------------------------------- */

/* One message of a conversation. */
typedef struct kvrt_chat_message {
    const char *role;    /* "system", "user" or "assistant"; ChatML-style templates (chatml, llama3, phi3,
                          * zephyr) also take other roles of letters, digits and '_' ("tool") */
    const char *content; /* UTF-8, NUL-terminated */
} kvrt_chat_message;

/* The template: NULL (or "") = the one in the model file
 * (tokenizer.chat_template), recognised by its markers; otherwise a
 * built-in name (kvrt_chat_template_names) or a template text to recognise.
 * kvrt has no Jinja engine: each recognised template is rendered by a
 * built-in formatter. A template nothing matches is KVRT_ERR_UNSUPPORTED
 * with a message listing the known names; a model whose file has none,
 * asked for NULL, too. */

/* The built-in formatters' names, NULL-terminated: chatml, llama2,
 * llama2-sys, llama2-sys-bos, llama2-sys-strip, llama3, mistral-v1,
 * mistral-v3, mistral-v3-tekken, mistral-v7, phi3, phi4, gemma, zephyr,
 * vicuna, deepseek, deepseek2, deepseek3. */
KVRT_API const char *const *kvrt_chat_template_names(void);

/* The built-in name `tmpl` resolves to (a static string) in *name. */
KVRT_API kvrt_status kvrt_chat_template_resolve(const kvrt_model *model, const char *tmpl, const char **name);

/* Renders the conversation as the template writes it, ending with the
 * assistant's turn opened when add_generation_prompt. BOS is not written:
 * tokenizing with KVRT_TOKENIZE_ADD_SPECIAL adds it where the vocabulary
 * wants it. Writes the text plus a NUL to buf[0..capacity); *len receives
 * its length without the NUL, and the call returns INVALID_ARGUMENT (with
 * *len set) when it does not fit. INVALID_ARGUMENT also for a role the
 * template has no place for (named in the message). */
KVRT_API kvrt_status kvrt_chat_format(kvrt_model *model, const char *tmpl, const kvrt_chat_message *messages,
                                      size_t n_messages, int add_generation_prompt, char *buf, size_t capacity,
                                      size_t *len);

/* Renders and tokenizes in one step, as a server should: the template's
 * markers (such as <|im_start|>) become their special tokens, while the
 * messages' contents are always text, so a user who writes "<|im_end|>"
 * cannot end a turn; BOS/EOS as the vocabulary asks. Buffer contract as
 * kvrt_tokenize. */
KVRT_API kvrt_status kvrt_chat_tokenize(kvrt_model *model, const char *tmpl, const kvrt_chat_message *messages,
                                        size_t n_messages, int add_generation_prompt, int32_t *ids,
                                        int32_t capacity, int32_t *n_tokens);

/* ---- single-sequence sessions ---------------------------------------------- */

typedef struct kvrt_session kvrt_session;

typedef struct kvrt_session_params {
    int32_t n_ctx;      /* positions; 0 = the model's max_context */
    int32_t block_size; /* 8, 16 (default) or 32 */
    kvrt_dtype kv_type; /* F32 (default), F16, Q8_0 / Q4_0 (head_dim a multiple of 32), FP8_E4M3 or
                         * FP8_E5M2; every backend */
    int32_t n_batch;    /* tokens per forward when evaluating a prompt (prefill chunk); 0 = 512 */
    int32_t num_blocks; /* KV pool size; 0 = enough for n_ctx */
    /* Context shift (endless generation, the StreamingLLM recipe): nonzero
     * lets kvrt_session_eval go past n_ctx. When the tokens to evaluate do
     * not fit, the first n_sinks positions are kept (rounded up to whole
     * blocks), the oldest blocks after them are dropped (half of those
     * blocks, or more when the chunk needs it) and the kept keys are
     * re-rotated to their new positions. n_sinks + one block must fit in
     * n_ctx (INVALID_ARGUMENT at create otherwise). */
    int32_t context_shift;
    int32_t n_sinks;    /* default 4 */
    /* A prefix cache that survives restarts: full KV blocks of prompts are
     * written to this folder (created when missing) and a later session,
     * in this process or another, that evaluates the same prefix on the
     * same model file, KV type and block size loads them instead of
     * computing them. Blocks are looked up when a session with nothing in
     * its cache evaluates two or more tokens without logits_all (the last
     * token is always computed: it needs logits), and written after
     * evaluations of two or more tokens (prompts, chat turns), until a
     * context shift (never with a sliding window). A folder that cannot be
     * used (not a folder, not writable, full) is a warning
     * (kvrt_session_warning), never an error.
     * NULL = off. The folder's cache files are kept under
     * prompt_cache_max_bytes (0 = 1 GiB) by deleting the least recently used. */
    const char *prompt_cache_dir;
    uint64_t prompt_cache_max_bytes;
    int32_t kv_type_v_set; /* nonzero: V is stored in kv_type_v, K in kv_type; 0: both in kv_type */
    kvrt_dtype kv_type_v;
} kvrt_session_params;

KVRT_API kvrt_session_params kvrt_session_default_params(void);

KVRT_API kvrt_status kvrt_session_create(kvrt_model *model, const kvrt_session_params *params,
                                         kvrt_session **out, kvrt_error *err);
KVRT_API void kvrt_session_destroy(kvrt_session *session);
KVRT_API const char *kvrt_session_message(const kvrt_session *session);
/* The last warning of the session (its prompt cache switched off or stopped
 * writing, and why); "" when none. kvrt_session_stats.n_warnings counts them. */
KVRT_API const char *kvrt_session_warning(const kvrt_session *session);

/* Appends n tokens to the sequence, runs them through the model in chunks of
 * n_batch (paged KV cache, tiled prefill / paged decode attention) and writes
 * the logits of the last token to `logits` [n_vocab] (may be NULL), or of every
 * token to `logits_all` [n][n_vocab] (may be NULL). Errors: BAD_TOKEN (id out of
 * range), CONTEXT_OVERFLOW (beyond n_ctx without context_shift), OUT_OF_BLOCKS;
 * the session is left as it was before the failing chunk (a failed context
 * shift resets it, and says so). With context_shift, tokens past n_ctx shift
 * the context first (n_past then counts the positions kept, not every token). */
KVRT_API kvrt_status kvrt_session_eval(kvrt_session *session, const int32_t *tokens, int32_t n,
                                       float *logits, float *logits_all);
/* Forgets every token (blocks returned to the pool). */
KVRT_API kvrt_status kvrt_session_reset(kvrt_session *session);

typedef struct kvrt_session_stats {
    int32_t n_past;         /* tokens in the cache */
    int32_t n_ctx;
    int32_t blocks_used;
    int32_t blocks_total;
    int32_t block_size;
    uint64_t kv_bytes;      /* bytes of the whole KV pool */
    int32_t n_shifts;       /* context shifts since creation or the last reset */
    int64_t n_dropped;      /* tokens the context shifts dropped */
    int64_t prompt_cache_hit_tokens;   /* positions loaded from the prompt cache folder */
    int64_t prompt_cache_written_blocks; /* block files written to it */
    int32_t n_warnings;
} kvrt_session_stats;

KVRT_API kvrt_status kvrt_session_get_stats(const kvrt_session *session, kvrt_session_stats *out);

/* ---- sampling ----------------------------------------------------------------- */

typedef struct kvrt_sampler_params {
    float temperature;    /* <= 0 (negative included): greedy (argmax, lowest id on ties) */
    int32_t top_k;        /* 0 = off */
    float top_p;          /* 1 = off */
    float min_p;          /* 0 = off: drop tokens with p < min_p * p_max */
    float repeat_penalty; /* 1 = off; llama.cpp's rule: logit > 0 ? logit / r : logit * r */
    int32_t repeat_last_n;/* tokens of history the penalty looks at */
    uint64_t seed;
} kvrt_sampler_params;

KVRT_API kvrt_sampler_params kvrt_sampler_default_params(void);

typedef struct kvrt_sampler kvrt_sampler;

KVRT_API kvrt_status kvrt_sampler_create(const kvrt_sampler_params *params, int32_t n_vocab,
                                         const kvrt_allocator *allocator, kvrt_sampler **out, kvrt_error *err);
KVRT_API void kvrt_sampler_destroy(kvrt_sampler *sampler);
/* Picks a token from logits [n_vocab] (not modified) and records it in the
 * penalty history. Deterministic for a given seed and call sequence.
 * KVRT_ERR_INVALID_ARGUMENT for NULL arguments or a NaN logit (a broken
 * forward pass, never silently token 0). */
KVRT_API kvrt_status kvrt_sampler_sample(kvrt_sampler *sampler, const float *logits, int32_t *token);
/* Records a token (e.g. of the prompt) in the penalty history without sampling. */
KVRT_API void kvrt_sampler_accept(kvrt_sampler *sampler, int32_t token);

/* ---- generating on a session ----------------------------------------------------- */

/* Why kvrt_session_generate stopped. */
typedef enum kvrt_gen_stop {
    KVRT_GEN_STOP_EOG = 1,          /* an end-of-generation token was sampled (kvrt_token_is_eog; not appended) */
    KVRT_GEN_STOP_LENGTH = 2,       /* max_tokens tokens were generated */
    KVRT_GEN_STOP_CONTEXT_FULL = 3, /* the last token was generated, but the session has no room for it */
    KVRT_GEN_STOP_CALLBACK = 4      /* on_token asked to stop */
} kvrt_gen_stop;

/* Called with each generated token; nonzero stops after it. */
typedef int (*kvrt_gen_token_fn)(void *user, int32_t token);

/* Generates after the session's last evaluated token: samples from `logits`
 * ([n_vocab], that token's logits as kvrt_session_eval wrote them; updated
 * as generation goes), then appends each token to the session and evaluates
 * it, until one of kvrt_gen_stop. Every token except an end-of-generation
 * one is passed to on_token (may be NULL) and is in the session when the
 * call returns, but for CONTEXT_FULL's last one. ignore_eog: end-of-generation
 * tokens are generated like any other. *n_generated counts the tokens passed
 * to on_token. */
KVRT_API kvrt_status kvrt_session_generate(kvrt_session *session, kvrt_sampler *sampler, float *logits,
                                           int32_t max_tokens, int ignore_eog, kvrt_gen_token_fn on_token, void *user,
                                           int32_t *n_generated, kvrt_gen_stop *stop);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_MODEL_H */
