/*
 * Serving engine: continuous batching of many requests over one paged KV cache
 * (DESIGN.md "Engine"). Include through kvrt.h.
 *
 * A request is a prompt (token ids) plus sampling parameters and stop
 * conditions; it yields n >= 1 samples. Each kvrt_engine_step() runs one
 * forward pass over a mixed batch: one new token of every running sequence
 * (decodes, first), then chunks of prompts still to be computed (chunked
 * prefill), under max_batched_tokens tokens and max_seqs sequences. When the
 * KV pool runs out of blocks the most recently admitted sequences are
 * preempted (recomputed later, or swapped to a host tier); an accepted
 * request is never lost or duplicated and, with greedy sampling, finishes
 * with the same tokens as if it had run alone.
 *
 * Ownership: the engine copies everything it keeps from a request (prompt,
 * stop tokens). Token arrays returned in a kvrt_request_output belong to the
 * engine and stay valid until kvrt_engine_release() of that request or the
 * engine's destruction.
 * Threading: one thread at a time per engine (callbacks run inside
 * kvrt_engine_step() / kvrt_engine_cancel() on that thread and must not call
 * back into the engine).
 */
#ifndef KVRT_ENGINE_H
#define KVRT_ENGINE_H

#include "kvrt.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvrt_engine kvrt_engine;

/* KV cache bytes kvrt_engine_create allocates when num_blocks is 0. */
#define KVRT_ENGINE_DEFAULT_KV_BYTES (1024ull * 1024ull * 1024ull)
typedef struct kvrt_model kvrt_model; /* kvrt_model.h */

typedef enum kvrt_preempt_mode {
    KVRT_PREEMPT_RECOMPUTE = 0, /* free the blocks; recompute prompt + generated tokens later */
    KVRT_PREEMPT_SWAP = 1,      /* copy the blocks to the host tier; recompute when it is full */
    /* Before preempting, move running sequences' oldest blocks to a host
     * pool of num_host_blocks (longest sequence first) and keep them
     * running: attention then runs split by tier, the GPU over the device
     * blocks and the CPU over the host ones, merged by log-sum-exp (issue
     * 18). Recompute when the host pool is full. On the CPU backend both
     * tiers are host memory: the pool simply gets num_host_blocks more
     * blocks. Not with a sliding-window model. */
    KVRT_PREEMPT_OFFLOAD = 2
} kvrt_preempt_mode;

/* Returns seconds from any fixed origin, non-decreasing. */
typedef double (*kvrt_clock_fn)(void *user);

typedef struct kvrt_engine_params {
    int32_t max_context;        /* positions per sequence (prompt + generated); 0 = the model's */
    int32_t block_size;         /* 8, 16 (default) or 32 */
    int32_t num_blocks;         /* KV pool blocks; 0 (kvrt_engine_create only): sized automatically, see
                                 * kvrt_engine_create; the size chosen is metrics.blocks_total */
    int32_t num_host_blocks;    /* host-tier blocks for KVRT_PREEMPT_SWAP and _OFFLOAD; 0 = none. A host pool
                                 * larger than the machine's memory is refused, naming the bytes */
    int32_t max_batched_tokens; /* tokens per step (decodes + prefill chunks), default 256 */
    int32_t max_seqs;           /* sequences per step, default 64 */
    int32_t enable_prefix_cache;/* nonzero (default): reuse cached prompt blocks */
    kvrt_preempt_mode preempt_mode;
    kvrt_dtype kv_type;         /* KV cache element type: F32 (default), F16, Q8_0, Q4_0 (head_dim a
                                 * multiple of 32), FP8_E4M3 or FP8_E5M2, every backend;
                                 * K's type, and V's unless kv_type_v_set */
    int32_t eos_id;             /* end-of-sequence token; -1 = none (default; the model's with kvrt_engine_create,
                                 * which also stops at every end-of-generation token: kvrt_token_is_eog) */
    kvrt_clock_fn clock;        /* NULL = CLOCK_MONOTONIC; tests inject their own */
    void *clock_user;
    const kvrt_allocator *allocator; /* NULL = malloc. Must outlive the engine. */
    /* A prefix cache that survives restarts (as kvrt_session_params'):
     * the full blocks of every prompt are written to this folder once
     * computed, and a request admitted later (in this process or another)
     * loads the blocks of its prompt that the in-memory prefix cache does
     * not hold from it, instead of computing them. Engines of
     * kvrt_engine_create only; not with a sliding window. A folder that
     * cannot be used is a warning (kvrt_engine_warning). NULL = off. */
    const char *prompt_cache_dir;
    uint64_t prompt_cache_max_bytes; /* 0 = 1 GiB; least recently used files go first */
    int32_t kv_type_v_set;      /* nonzero: V is stored in kv_type_v, K in kv_type; 0: both in kv_type */
    kvrt_dtype kv_type_v;
    /* Context shift (issue 18, as kvrt_session_params'): nonzero makes a
     * sample that reaches max_context keep going up to its max_tokens. Its
     * first n_sinks tokens (rounded up to whole blocks) stay; half of the
     * full blocks after them (at least one) are dropped and freed, and the
     * keys of the later blocks are turned to their new positions by the
     * backend's RoPE-shift kernel. A kept block shared with another sequence
     * (prefix cache, forked samples) is copied first (copy-on-write), so the
     * others never see it turn; a shifted sequence's blocks leave the prefix
     * cache (their keys no longer match their positions). A sequence with
     * blocks in the offload host tier, or one that must be recomputed after
     * a preemption, is recomputed over its kept tokens at their shifted
     * positions (a fresh run over them; swap keeps the bytes). Refused at
     * create: n_sinks < 0 or leaving no block to drop in max_context
     * (INVALID_ARGUMENT), a sliding-window model (INVALID_ARGUMENT), a
     * backend without a kernel for kv_type's keys (UNSUPPORTED: the GPU
     * backends turn f32 and f16 keys, the CPU every KV type). */
    int32_t context_shift;
    int32_t n_sinks;            /* tokens kept at the start (default 4) */
} kvrt_engine_params;

KVRT_API kvrt_engine_params kvrt_engine_default_params(void);

typedef enum kvrt_finish_reason {
    KVRT_FINISH_NONE = 0,       /* still running */
    KVRT_FINISH_LENGTH = 1,     /* max_tokens generated, or the context is full */
    KVRT_FINISH_EOS = 2,        /* EOS or another end-of-generation token (kvrt_token_is_eog) */
    KVRT_FINISH_STOP_TOKEN = 3, /* one of stop_tokens was generated */
    KVRT_FINISH_CANCELLED = 4,
    KVRT_FINISH_STOP_STRING = 5, /* one of stop_strings appeared in the text (not part of it) */
    KVRT_FINISH_ERROR = 6       /* the same sample failed twice at the same token (sampling it or
                                 * turning it into text): kvrt_sample_output.error says why */
} kvrt_finish_reason;

/* "running", "length", "eos", "stop", "cancelled", "stop_string", "error". */
KVRT_API const char *kvrt_finish_reason_name(kvrt_finish_reason reason);

/* Called once per generated token of each sample (sample in [0, n)), and once
 * more with token -1 when a sample is cancelled or ends in an error. finish is KVRT_FINISH_NONE
 * while the sample continues. Tokens already reported are never reported
 * again (not after a preemption either). */
typedef void (*kvrt_token_fn)(void *user, int64_t request_id, int32_t sample, int32_t token,
                              kvrt_finish_reason finish);

/* Streaming text: called with the text a sample has added since the last call,
 * always whole UTF-8 characters (a character split across tokens waits for
 * its last byte) and never a part of a stop string (text that could still
 * become one waits until it cannot). The last call has finish !=
 * KVRT_FINISH_NONE and flushes what was held back (len may be 0). */
typedef void (*kvrt_text_fn)(void *user, int64_t request_id, int32_t sample, const char *text, size_t len,
                             kvrt_finish_reason finish);

typedef struct kvrt_request_params {
    const int32_t *prompt;      /* [n_prompt] token ids, n_prompt >= 1; NULL: prompt_text is tokenized */
    int32_t n_prompt;
    const char *prompt_text;    /* UTF-8, used when prompt is NULL (engines of kvrt_engine_create only) */
    int32_t add_bos;            /* with prompt_text: nonzero (default) adds what the vocabulary asks for
                                 * (BOS when kvrt_model_info.add_bos, EOS when add_eos); 0 none */
    /* A conversation, used when prompt and prompt_text are NULL (engines of kvrt_engine_create only): the
     * prompt is kvrt_chat_tokenize of these messages with the assistant's turn opened. */
    const kvrt_chat_message *messages; /* [n_messages], copied at submit */
    int32_t n_messages;
    const char *chat_template;  /* with messages: NULL = the model file's; else a built-in name */
    int32_t max_tokens;         /* tokens to generate per sample, >= 1 (default 16) */
    int32_t n;                  /* samples, >= 1 (default 1); the prompt is computed once and forked */
    float temperature;          /* <= 0: greedy (argmax, lowest id on ties) */
    int32_t top_k;              /* 0 = off */
    float top_p;                /* 1 = off */
    float min_p;                /* 0 = off */
    float repeat_penalty;       /* 1 = off (default); llama.cpp's rule over the last repeat_last_n tokens */
    int32_t repeat_last_n;      /* default 64; the prompt's tail counts */
    uint64_t seed;              /* sample i draws from its own generator seeded with (seed, i) */
    int32_t ignore_eos;         /* nonzero: the engine's eos_id and end-of-generation tokens do not stop */
    const int32_t *stop_tokens; /* [n_stop_tokens] ids that end a sample (kept in its output) */
    int32_t n_stop_tokens;
    const char *const *stop_strings; /* [n_stop_strings] non-empty UTF-8 strings that end a sample; they are */
    int32_t n_stop_strings;     /* matched across token boundaries and left out of its text */
    int32_t logprobs;           /* nonzero: record each generated token's log-probability */
    kvrt_token_fn on_token;     /* may be NULL */
    kvrt_text_fn on_text;       /* may be NULL */
    void *user;
} kvrt_request_params;

KVRT_API kvrt_request_params kvrt_request_default_params(void);

/* Times in seconds of the engine's clock; -1 for events that did not happen. */
typedef struct kvrt_request_timing {
    double arrival;       /* kvrt_engine_submit */
    double first_scheduled;
    double first_token;
    double finished;
} kvrt_request_timing;

typedef struct kvrt_sample_output {
    const int32_t *tokens;  /* generated ids (EOS / stop token included) */
    int32_t n_tokens;
    kvrt_finish_reason finish_reason;
    const float *logprobs;  /* [n_tokens] log p of each token under the model's distribution (raw
                             * logits, before penalties and temperature); NULL unless requested */
    const char *text;       /* the generated text (NUL-terminated; a stop string and what followed it
                             * left out); "" when the engine has no tokenizer */
    size_t text_len;
    kvrt_status error;      /* KVRT_FINISH_ERROR: the failure (the step that gave up returned it, with
                             * kvrt_engine_message saying more); KVRT_OK otherwise */
} kvrt_sample_output;

typedef struct kvrt_request_output {
    int64_t request_id;
    int32_t finished;            /* every sample has a finish reason */
    int32_t n_samples;
    const kvrt_sample_output *samples; /* [n_samples] */
    int32_t n_prompt;
    int32_t n_cached_prompt;     /* prompt tokens found in the prefix cache at first admission */
    int32_t n_preemptions;
    kvrt_request_timing timing;
} kvrt_request_output;

/* Creates an engine that runs `model` (which must outlive it) on its context.
 * num_blocks == 0 sizes the pool: when the context has a memory_budget, the
 * KV cache gets what the weights and a step's activations leave of it
 * (OUT_OF_DEVICE_MEMORY if that is less than one full context); otherwise
 * the smaller of max_seqs full contexts and KVRT_ENGINE_DEFAULT_KV_BYTES, but
 * at least one full context. The metrics report the resulting kv_bytes.
 * Errors: INVALID_ARGUMENT, OUT_OF_*_MEMORY. */
KVRT_API kvrt_status kvrt_engine_create(kvrt_model *model, const kvrt_engine_params *params,
                                        kvrt_engine **out, kvrt_error *err);
/* Frees the engine, every request it holds included. NULL is a no-op. */
KVRT_API void kvrt_engine_destroy(kvrt_engine *engine);
/* Message of the last failed call ("" if none). Never NULL. */
KVRT_API const char *kvrt_engine_message(const kvrt_engine *engine);
/* The last warning (the prompt cache folder switched off, and why); "" when none. */
KVRT_API const char *kvrt_engine_warning(const kvrt_engine *engine);

/* Queues a request; *request_id (> 0) names it from now on. Errors:
 * INVALID_ARGUMENT (bad parameters, token id outside the vocabulary),
 * REQUEST_REJECTED (it can never run: prompt longer than the context, or one
 * sample needs more KV blocks than the whole pool), OUT_OF_HOST_MEMORY. */
KVRT_API kvrt_status kvrt_engine_submit(kvrt_engine *engine, const kvrt_request_params *params,
                                        int64_t *request_id);

/* Aborts a request wherever it is (waiting, prefilling, decoding, swapped
 * out): its blocks go back to the pool, its samples finish with
 * KVRT_FINISH_CANCELLED (those already finished keep their reason). A finished
 * request is left as it is. Errors: INVALID_ARGUMENT (unknown or released id). */
KVRT_API kvrt_status kvrt_engine_cancel(kvrt_engine *engine, int64_t request_id);

/* What one step did. */
typedef struct kvrt_step_info {
    int32_t num_seqs;        /* sequences in the batch */
    int32_t num_decode_seqs; /* of which decodes (first in the batch) */
    int32_t num_tokens;      /* decode_tokens + prefill_tokens */
    int32_t decode_tokens;
    int32_t prefill_tokens;  /* prompt chunks and recomputation */
    int32_t num_preempted;   /* sequences preempted while scheduling this step */
    int32_t num_finished;    /* requests that finished this step */
} kvrt_step_info;

/* Schedules and runs one step; *info (may be NULL) says what it did. With no
 * work it returns KVRT_OK and an all-zero info. On failure of the model the
 * step's requests are left to be retried (nothing is lost). A sample whose
 * next token cannot be sampled or turned into text is computed again once;
 * failing again at the same token it finishes with KVRT_FINISH_ERROR (an
 * error that repeats is never retried forever), and that step returns the
 * error. */
KVRT_API kvrt_status kvrt_engine_step(kvrt_engine *engine, kvrt_step_info *info);

/* Nonzero while some request is waiting, running or swapped out. */
KVRT_API int32_t kvrt_engine_has_work(const kvrt_engine *engine);

/* The current state of a request (finished or not). While it is not
 * finished, its arrays (tokens, logprobs, text) grow as it runs: they are
 * valid until the next kvrt_engine_step. Errors: INVALID_ARGUMENT. */
KVRT_API kvrt_status kvrt_engine_get_output(kvrt_engine *engine, int64_t request_id, kvrt_request_output *out);

/* Takes the next finished request not taken yet (in finishing order) into
 * *out and sets *found to 1; *found = 0 when there is none. */
KVRT_API kvrt_status kvrt_engine_next_finished(kvrt_engine *engine, kvrt_request_output *out, int32_t *found);

/* Forgets a finished request (its output arrays become invalid). Errors:
 * INVALID_ARGUMENT (unknown id, or not finished: cancel it first). */
KVRT_API kvrt_status kvrt_engine_release(kvrt_engine *engine, int64_t request_id);

/* ---- metrics ------------------------------------------------------------------ */

typedef struct kvrt_summary {
    int64_t count;
    double mean, p50, p95, p99, max; /* 0 when count is 0; percentiles interpolate linearly between ranks */
} kvrt_summary;

typedef struct kvrt_engine_metrics {
    /* KV pool, now */
    int32_t blocks_total, blocks_used, blocks_free, blocks_cached;
    int32_t block_size;
    uint64_t kv_bytes;        /* device bytes of the whole pool (0 when the runner does not say) */
    int32_t host_blocks_total, host_blocks_used;
    /* KV utilization: tokens stored / capacity of the allocated blocks, after each step */
    double kv_utilization_mean, kv_utilization_last;
    /* the same stored tokens over a contiguous max_context reservation per running sequence, mean over steps */
    double kv_utilization_contiguous_mean;
    /* prefix cache, over admissions (tokens offered = prompt - 1 per first admission) */
    int64_t prefix_lookups, prefix_query_tokens, prefix_hit_tokens;
    double prefix_hit_rate;   /* hit tokens / query tokens */
    int64_t evictions, cow_copies, blocks_swapped_out, blocks_swapped_in;
    int64_t preemptions_recompute, preemptions_swap;
    /* requests */
    int64_t requests_submitted, requests_rejected, requests_finished, requests_cancelled;
    /* steps */
    int64_t steps, prefill_tokens, decode_tokens, generated_tokens;
    kvrt_summary step_tokens, step_seqs, step_prefill_tokens, step_decode_tokens;
    kvrt_summary step_time;   /* seconds per step (batch building + forward pass) */
    /* seconds spent on prefill and on decode; a mixed step is split by its token counts */
    double prefill_time_s, decode_time_s;
    /* per request latencies (seconds), over finished, not cancelled requests */
    kvrt_summary ttft, tpot, e2e, queue;
    /* host tier that computes (KVRT_PREEMPT_OFFLOAD): blocks moved to the host
     * while their sequence kept running, the bytes moved, and attention
     * seconds per tier (device: the device half with its transfers; host:
     * the CPU's half and the merge; the halves overlap); blocks per tier
     * are blocks_used and host_blocks_used */
    int64_t blocks_offloaded;
    uint64_t offload_bytes;
    double attn_device_s, attn_host_s;
    /* the prompt cache folder (prompt_cache_dir) */
    int64_t disk_hit_tokens, disk_written_blocks;
    /* context shift: shifts done, tokens dropped from sequences' caches */
    int64_t context_shifts, shift_dropped_tokens;
} kvrt_engine_metrics;

KVRT_API kvrt_status kvrt_engine_get_metrics(kvrt_engine *engine, kvrt_engine_metrics *out);

/* Writes the metrics as one JSON object into buf (NUL-terminated when
 * capacity > 0); *len (may be NULL) receives the length needed without the
 * NUL. INVALID_ARGUMENT when it does not fit (then *len says how much). */
KVRT_API kvrt_status kvrt_engine_metrics_json(kvrt_engine *engine, char *buf, size_t capacity, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* KVRT_ENGINE_H */
