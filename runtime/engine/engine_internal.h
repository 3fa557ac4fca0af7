/* Internals of the serving engine, shared by runtime/engine sources and the
 * tests. Not installed.
 *
 * Rooms: engine.c creates the engine and keeps its requests; scheduler.c
 * decides each step's work (admission, chunking, preemption); step.c runs
 * the step (one batch, one forward, sampling). The model sits behind a small
 * "runner" interface so the scheduler can be tested with a fake model; the
 * real runner (engine_runner_llama.c) wraps kvrt_llama_forward and a KV cache
 * object, so the engine never touches a backend. */
#ifndef KVRT_ENGINE_INTERNAL_H
#define KVRT_ENGINE_INTERNAL_H

#include "backend/kv_layout.h"
#include "common/kvrt_internal.h"
#include "metrics.h"

/* What the engine needs from a model. Every entry reports failures through
 * `err` and returns its status. Block ids are those of the engine's block
 * manager; the runner's KV pool has exactly num_blocks blocks of block_size. */
typedef struct kvrt_runner_ops {
    /* Runs the batch: writes the new tokens' K/V through slot_mapping, then
     * writes logits [num_logits][n_vocab] of the logits_indices rows. */
    kvrt_status (*forward)(void *self, const kvrt_batch *batch, float *logits, kvrt_error *err);
    /* Copies whole blocks (all layers, K and V): pairs[i] = {src, dst}; done
     * before the call returns (copy-on-write ahead of the next forward). */
    kvrt_status (*copy_blocks)(void *self, const int32_t (*pairs)[2], int32_t n_pairs, kvrt_error *err);
    /* Reads / writes the block_bytes bytes of one block (every layer, K and V)
     * to / from host memory, immediately (swap to the host tier). May be NULL
     * when the runner cannot swap (then swap mode is refused). */
    kvrt_status (*read_block)(void *self, int32_t block, void *dst, kvrt_error *err);
    kvrt_status (*write_block)(void *self, int32_t block, const void *src, kvrt_error *err);
    /* Host tier that computes (KVRT_PREEMPT_OFFLOAD): copies device blocks to
     * host slots, pairs[i] = {device block, host slot}, before the call
     * returns (the device blocks are reused next). The forward then gets
     * batches whose n_host is set. May be NULL (offload refused). */
    kvrt_status (*offload)(void *self, const int32_t (*pairs)[2], int32_t n_pairs, kvrt_error *err);
    /* Context shift: turns the keys of `blocks` (every layer) by `delta`
     * positions with the backend's RoPE-shift kernel, before the call
     * returns. May be NULL (context shift refused). */
    kvrt_status (*rope_shift)(void *self, const int32_t *blocks, int32_t n_blocks, int32_t delta, kvrt_error *err);
    /* Attention seconds per tier so far. May be NULL. */
    void (*tier_times)(void *self, double *device_s, double *host_s);
    /* Tokenizes UTF-8 text (as kvrt_tokenize: *n receives the count needed,
     * INVALID_ARGUMENT when capacity is short). May be NULL (no text prompts). */
    kvrt_status (*tokenize)(void *self, const char *text, size_t len, int add_bos, int32_t *ids, int32_t capacity,
                            int32_t *n, kvrt_error *err);
    /* A conversation in the model's chat template, tokenized (as kvrt_chat_tokenize, with the assistant's
     * turn opened). May be NULL (no chat requests). */
    kvrt_status (*chat_tokenize)(void *self, const char *tmpl, const kvrt_chat_message *messages, int32_t n,
                                 int32_t *ids, int32_t capacity, int32_t *n_ids, kvrt_error *err);
    /* Nonzero when `token` ends generation besides the engine's eos_id (the
     * model's end-of-turn tokens). May be NULL. */
    int (*is_eog)(void *self, int32_t token);
    /* The bytes of `token` after `prev` (as kvrt_token_to_text). May be NULL
     * (then samples have no text and stop strings are refused). */
    kvrt_status (*token_text)(void *self, int32_t prev, int32_t token, char *buf, size_t capacity, size_t *len,
                              kvrt_error *err);
    /* Frees the runner (the engine owns it). May be NULL. */
    void (*destroy)(void *self);
} kvrt_runner_ops;

typedef struct kvrt_runner {
    const kvrt_runner_ops *iface;
    void *self;
    int32_t n_vocab;
    size_t block_bytes; /* one block, all layers, K and V: one host-tier slot */
    uint64_t kv_bytes;  /* device bytes of the pool (reported in the metrics) */
    int32_t window;     /* the model's sliding window; 0 = none. Blocks before it are released. */
    uint64_t kv_fingerprint; /* model file + KV layout (prompt_cache.h); 0 = no prompt cache folder */
} kvrt_runner;

/* Creates an engine on a runner; the engine owns the runner from the call on
 * (it is destroyed even when creation fails). Used by kvrt_engine_create and
 * by the tests. */
kvrt_status kvrt_engine_create_with_runner(const kvrt_engine_params *params, kvrt_runner runner,
                                           kvrt_engine **out, kvrt_error *err);
/* The real runner on a model (engine_runner_llama.c): completes p from the
 * model (max_context, eos_id; num_blocks 0: sized from the context's memory
 * budget) and creates the KV cache. */
/* The block manager's extra key of the engine's sequences: the KV type's
 * part of every prefix-cache key (scheduler.c). */
uint64_t kvrt_engine_prefix_extra_key(kvrt_dtype k_type, kvrt_dtype v_type);
kvrt_status kvrt_llama_runner_create(kvrt_model *model, kvrt_engine_params *p, kvrt_runner *out, kvrt_error *err);

/* ---- records ------------------------------------------------------------------ */

typedef enum kvrt_seq_state {
    KVRT_SEQ_WAITING = 0,  /* no blocks; prompt (+ generated) to compute */
    KVRT_SEQ_RUNNING = 1,  /* holds blocks, scheduled every step it fits */
    KVRT_SEQ_SWAPPED = 2,  /* blocks on the host tier */
    KVRT_SEQ_FINISHED = 3
} kvrt_seq_state;

typedef struct kvrt_request kvrt_request;

/* One sample of a request: the unit the scheduler moves around. */
typedef struct kvrt_eseq {
    kvrt_request *req;
    int32_t index;          /* sample index in the request */
    kvrt_seq_state state;
    int32_t bm_seq;         /* block manager sequence, -1 when none */
    int32_t *tokens;        /* [room] prompt then generated ids */
    int32_t len;            /* tokens known */
    int32_t cap;            /* n_prompt + max_tokens, at most max_context unless the context shifts */
    int32_t room;           /* entries of tokens (and logprobs): grown on demand up to cap, since
                             * a shifting sample's max_tokens may be far beyond what it reaches */
    int32_t num_computed;   /* tokens whose K/V is in the cache (tokens[0, num_computed), the dropped
                             * ones of a context shift counted as computed) */
    int32_t shift;          /* context shift: tokens[sink_tok, sink_tok + shift) were dropped from the
                             * cache; token i >= sink_tok + shift sits at position i - shift */
    uint64_t admit_stamp;   /* order of (re)admission: preemption victims are the highest */
    kvrt_sampler *sampler;  /* its own seeded generator and penalty history (kvrt_engine_seed(seed, index)) */
    float *logprobs;        /* [cap] when requested: entry i is that of tokens[i] (generated ones only) */
    char *text;             /* generated text so far [text_cap], NUL-terminated */
    size_t text_len, text_cap;
    size_t text_sent;       /* bytes given to on_text */
    kvrt_finish_reason finish;
    kvrt_status error;      /* why it finished with KVRT_FINISH_ERROR */
    int32_t failed_len;     /* len when emitting its next token last failed; -1 never */
    /* this step */
    int32_t sched_tokens;   /* tokens scheduled, 0 when not in the batch */
    int32_t sched_slot_off; /* where its slots are in slot_scratch */
    int32_t sched_decode;   /* scheduled as a decode (one token after its prompt) */
} kvrt_eseq;

struct kvrt_request {
    int64_t id;
    uint64_t arrival_order;
    kvrt_request_params p;  /* prompt / stop_tokens point at copies below */
    int32_t *prompt;
    int32_t *stop_tokens;
    char **stop_strings;    /* [p.n_stop_strings] copies */
    int32_t forked;         /* n > 1: children exist */
    int32_t n_live;         /* samples not finished */
    int32_t n_cached_prompt;
    int32_t n_preemptions;
    int32_t looked_up;      /* the prefix cache was consulted for it once */
    int32_t queued_finished;/* in the finished queue */
    int32_t disk_from;      /* prompt blocks held at first admission (memory or folder); -1 = stored */
    kvrt_request_timing t;
    kvrt_eseq *seqs;        /* [p.n] */
    kvrt_sample_output *outs; /* [p.n], refreshed on read */
};

/* A list of sequences kept in a fixed order. */
typedef struct kvrt_seq_list {
    kvrt_eseq **v;
    int32_t n, cap;
} kvrt_seq_list;

struct kvrt_engine {
    kvrt_engine_params p;
    const kvrt_allocator *alloc;
    kvrt_error err;
    kvrt_runner runner;
    kvrt_block_manager *bm;
    int32_t max_blocks_per_seq;

    kvrt_request **reqs;    /* live requests (not released), submission order */
    int32_t n_reqs, cap_reqs;
    int64_t next_id;
    int32_t n_seqs_live;    /* samples of unreleased requests: the lists' reserved room */
    uint64_t next_arrival, next_admit;
    kvrt_request **finished_q; /* finished, not yet taken */
    int32_t n_finished_q, cap_finished_q;

    kvrt_seq_list waiting;  /* FCFS: (arrival, sample index) */
    kvrt_seq_list running;  /* admission order (admit_stamp, sample index) */
    kvrt_seq_list swapped;  /* (arrival, sample index) */

    /* step scratch */
    kvrt_eseq **sched;      /* [max_seqs] scheduled this step, in scheduling order */
    int32_t n_sched;
    int32_t *b_tokens, *b_pos, *b_slots, *b_logits_idx; /* [max_batched_tokens] */
    int32_t *b_qsl;         /* [max_seqs + 1] */
    int32_t *b_seq_lens;    /* [max_seqs] */
    int32_t *b_tables;      /* [max_seqs][max_blocks_per_seq] */
    int32_t *b_bm_seqs;     /* [max_seqs] */
    int32_t *b_n_host;      /* [max_seqs] host-tier entries of each sequence (offload) */
    kvrt_eseq **b_order;    /* [max_seqs] batch order */
    int32_t *slot_scratch;  /* [max_batched_tokens] */
    float *logits;          /* [max_seqs][n_vocab] */
    void *sample_scratch;   /* kvrt_sampler_scratch_bytes(n_vocab) shared by every sampler */
    uint8_t *host_tier;     /* [num_host_blocks][block_bytes] */
    int32_t (*pairs)[2];    /* [max_blocks_per_seq] swap pairs */
    int32_t sched_tokens_total; /* tokens scheduled so far this step */
    int32_t preempted_now;  /* sequences preempted while scheduling this step */

    kvrt_engine_metrics m;  /* counters; gauges and summaries filled on read */
    kvrt_series s_ttft, s_tpot, s_e2e, s_queue;
    kvrt_series s_step_tokens, s_step_seqs, s_step_prefill, s_step_decode, s_step_time;
    double kv_util_sum, kv_util_contig_sum;
    struct kvrt_prompt_cache *disk; /* prompt_cache_dir's folder (engine_disk.c), NULL = none */
    int32_t *disk_table;    /* [max_blocks_per_seq] */
    int32_t sink_tok;       /* context shift: the sink tokens in whole blocks */
    int32_t *shift_ids;     /* [max_blocks_per_seq] blocks a shift turns; NULL without context shift */
};

/* Context shift: the cache position of token i (outside the dropped gap). */
static inline int32_t kvrt_eseq_pos(const kvrt_engine *e, const kvrt_eseq *s, int32_t i)
{
    return s->shift > 0 && i >= e->sink_tok ? i - s->shift : i;
}

/* Tokens that can be computed next in one run of positions: a recomputed
 * shifted sequence computes its sinks, then skips the dropped tokens. */
static inline int32_t kvrt_eseq_todo(const kvrt_engine *e, const kvrt_eseq *s)
{
    if (s->shift > 0 && s->num_computed < e->sink_tok)
        return e->sink_tok - s->num_computed;
    return s->len - s->num_computed;
}

/* Steps over the dropped tokens once the sinks are computed. */
static inline void kvrt_eseq_skip_dropped(const kvrt_engine *e, kvrt_eseq *s)
{
    if (s->shift > 0 && s->num_computed == e->sink_tok)
        s->num_computed += s->shift;
}

/* ---- engine.c ------------------------------------------------------------------- */
double kvrt_engine_now(const kvrt_engine *e);
/* Marks a sample finished, reports it, frees its blocks. */
void kvrt_engine_finish_seq(kvrt_engine *e, kvrt_eseq *s, kvrt_finish_reason why, int32_t report_token);

/* ---- scheduler.c ---------------------------------------------------------------- */
kvrt_status kvrt_eseq_reserve(kvrt_engine *e, kvrt_eseq *s, int32_t n);
kvrt_status kvrt_seq_list_reserve(kvrt_engine *e, kvrt_seq_list *l, int32_t cap);
/* Inserts in order (by admission stamp, else by arrival); room must be reserved. */
void kvrt_seq_list_insert(kvrt_seq_list *l, kvrt_eseq *s, int by_admission);
void kvrt_seq_list_remove(kvrt_seq_list *l, const kvrt_eseq *s);
/* Picks this step's work (may preempt) into e->sched; fills info's counts. */
kvrt_status kvrt_sched_schedule(kvrt_engine *e, kvrt_step_info *info);
/* Undoes a failed step: drops the prefix cache, recomputes what was placed. */
void kvrt_sched_recover(kvrt_engine *e);
/* Drops whatever K/V a sequence holds and queues it to be computed again. */
void kvrt_sched_requeue(kvrt_engine *e, kvrt_eseq *s);

/* ---- engine_disk.c: the prompt cache folder ---------------------------------------- */
kvrt_status kvrt_engine_disk_open(kvrt_engine *e, kvrt_error *err);
void kvrt_engine_disk_close(kvrt_engine *e);
/* At admission, after the in-memory prefix match (`matched` tokens, whole
 * blocks): appends and loads the prompt's next blocks found in the folder;
 * returns the tokens now held. */
int32_t kvrt_engine_disk_extend(kvrt_engine *e, kvrt_eseq *s, int32_t matched);
/* After a step: a prompt that is now computed has its full blocks written. */
void kvrt_engine_disk_after_step(kvrt_engine *e, kvrt_eseq *s);
void kvrt_engine_disk_metrics(const kvrt_engine *e, kvrt_engine_metrics *m);

/* ---- step.c --------------------------------------------------------------------- */
/* Builds the batch of e->sched (decodes first) and runs it; samples. */
kvrt_status kvrt_step_run(kvrt_engine *e, kvrt_step_info *info);

/* ---- engine_sample.c ------------------------------------------------------------- */
/* Creates the sample's kvrt_sampler (seeded with kvrt_engine_seed(seed,
 * index), the prompt's tail in its penalty history). */
kvrt_status kvrt_engine_sampler_init(kvrt_engine *e, kvrt_eseq *s);
/* The one place a token is picked from a row of logits: the sample's own
 * kvrt_sampler (so the pick never depends on the batch); records its
 * log-probability when the request asked for it. */
kvrt_status kvrt_engine_sample(kvrt_engine *e, kvrt_eseq *s, const float *logits, int32_t *token);
uint64_t kvrt_engine_seed(uint64_t seed, int32_t index);

/* ---- sampler.c (internal) ---------------------------------------------------------- */
/* A sampler without its own candidate scratch: the engine shares one among
 * all its samples (one thread at a time), so a sample costs O(repeat_last_n). */
kvrt_status kvrt_sampler_create_shared(const kvrt_sampler_params *params, int32_t n_vocab,
                                       const kvrt_allocator *allocator, kvrt_sampler **out, kvrt_error *err);
size_t kvrt_sampler_scratch_bytes(int32_t n_vocab);
kvrt_status kvrt_sampler_sample_with(kvrt_sampler *s, const float *logits, void *scratch, int32_t *token);

/* ---- engine_text.c ------------------------------------------------------------------ */
/* Copies and checks a request's stop strings (INVALID_ARGUMENT: empty or
 * without a tokenizer). */
kvrt_status kvrt_engine_copy_stop_strings(kvrt_engine *e, kvrt_request *r, const kvrt_request_params *rp);
/* Appends the text of s's newest token, looks for stop strings and streams
 * what is safe; *why becomes KVRT_FINISH_STOP_STRING on a match. */
kvrt_status kvrt_engine_text_step(kvrt_engine *e, kvrt_eseq *s, kvrt_finish_reason *why);
/* Gives on_text the rest of the text with the finish reason. */
void kvrt_engine_text_flush(kvrt_engine *e, kvrt_eseq *s, kvrt_finish_reason why);

#endif /* KVRT_ENGINE_INTERNAL_H */
