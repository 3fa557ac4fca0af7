/* kvrt-server: an OpenAI-compatible HTTP server over the serving engine.
 *
 * Threads. GNU libmicrohttpd runs one thread per connection; those threads
 * parse requests, wait, and write responses. Exactly one engine thread owns
 * the context, the model and the engine (the engine is one-thread-at-a-time,
 * include/kvrt_engine.h): it tokenizes and submits requests, runs steps,
 * cancels, and reads the engine's metrics. The two sides meet in `srv`
 * (under srv.mu: the queue of requests to submit, slots, counters) and in
 * each srv_req (under its own mutex: what the engine's callbacks fill - text,
 * tokens, finish reasons - and the connection thread reads). Nothing holds
 * both mutexes at once, and nothing calls into the engine while holding
 * one, because the engine's callbacks take them.
 *
 * Files: kvrt-server.c (flags, start, stop), http.c (libmicrohttpd glue,
 * routing, auth, limits), request.c (OpenAI request JSON -> srv_params),
 * engine_loop.c (the engine thread), sse.c (responses: streamed chunks and
 * whole bodies), metrics.c (Prometheus text), page.c (the embedded chat
 * page), util.c (buffers, UTF-8, errors).
 */
#ifndef KVRT_SERVER_H
#define KVRT_SERVER_H

#include "cli.h" /* kvrt_cli_common: the flags every model-running tool shares */
#include "kvrt.h"
#include "kvrt_engine.h"
#include "common/kvrt_internal.h" /* KVRT_MIN / KVRT_MAX / KVRT_ARRAY_LEN */

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SRV_PROG "kvrt-server"

/* ---- util.c: growable byte buffers, UTF-8, clocks -------------------------------- */

typedef struct srv_buf {
    char *p;     /* NUL-terminated when non-NULL */
    size_t len, cap;
} srv_buf;

bool srv_buf_append(srv_buf *b, const char *s, size_t n);
bool srv_buf_puts(srv_buf *b, const char *s);
bool srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_buf_free(srv_buf *b);
/* Hands the bytes over (the caller frees them); the buffer is empty after. */
char *srv_buf_take(srv_buf *b);

/* True when s[0, n) is well-formed UTF-8 (no overlongs, surrogates or code
 * points past U+10FFFF). */
bool srv_utf8_valid(const char *s, size_t n);
/* Length of the well-formed UTF-8 character at s[0, n), 0 when ill-formed. */
size_t srv_utf8_seq(const unsigned char *s, size_t n);
/* Appends s[0, n) with every ill-formed sequence replaced by U+FFFD, so what
 * goes into a JSON string is always valid UTF-8 (a model can emit stray
 * bytes through byte-fallback tokens). */
bool srv_buf_append_utf8(srv_buf *b, const char *s, size_t n);

double srv_now(void); /* CLOCK_MONOTONIC seconds */
/* Equal length and bytes, in time that depends only on the length of `want`. */
bool srv_secret_equal(const char *given, size_t given_len, const char *want, size_t want_len);

/* ---- options (kvrt-server.c) ----------------------------------------------------- */

typedef struct srv_options {
    const char *model_path, *tokenizer_path, *model_name;
    const char *chat_template; /* --chat-template NAME; NULL = the model file's */
    const char *host;
    int32_t port;
    char *api_key;              /* NULL = no key required (owned: read from a flag or a file) */
    kvrt_cli_common common;     /* --backend --device -t --pipeline-cache --kv-type --block-size -v */
    kvrt_engine_params ep;      /* max_seqs, max_context, block_size, kv_type, ... */
    int32_t max_queue;          /* requests admitted beyond max_seqs before 429 */
    size_t max_body;            /* request body bytes before 413 */
    int32_t max_connections;
    float shutdown_grace;       /* seconds in-flight requests may finish after SIGINT/SIGTERM */
    bool verbose;
} srv_options;

/* ---- requests (request.c) ------------------------------------------------------ */

typedef enum srv_kind { SRV_COMPLETION = 0, SRV_CHAT = 1 } srv_kind;

typedef struct srv_message {
    char *role;
    char *content;
} srv_message;

/* One OpenAI request, validated and owned (every string a copy). */
typedef struct srv_params {
    srv_kind kind;
    char *model;               /* as the client named it; NULL = the served model */
    char *prompt;              /* completion text prompt (NULL with prompt_ids or messages) */
    int32_t *prompt_ids;       /* completion prompt given as token ids */
    int32_t n_prompt_ids;
    srv_message *messages;     /* chat */
    int32_t n_messages;
    int32_t max_tokens;        /* 0 = not given (the endpoint's default) */
    float temperature, top_p, min_p, repeat_penalty;
    int32_t top_k;
    bool seed_set;
    uint64_t seed;
    char **stop;
    int32_t n_stop;
    int32_t n;
    bool logprobs;             /* each generated token's log-probability */
    bool stream, include_usage, ignore_eos;
} srv_params;

/* An OpenAI-style error: HTTP status, "type", the offending parameter. */
typedef struct srv_error {
    int status;                /* 0 = none */
    const char *type;          /* "invalid_request_error", ... */
    const char *code;          /* may be NULL */
    char param[48];            /* "" = none */
    char message[384];
} srv_error;

void srv_error_set(srv_error *e, int status, const char *type, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Parses a request body. false with *err filled (status 400) on malformed
 * JSON, wrong types, out-of-range values (max_tokens beyond max_context, n
 * beyond max_n), invalid UTF-8. */
bool srv_params_parse(srv_kind kind, const char *body, size_t len, int32_t max_context, int32_t max_n,
                      srv_params *out, srv_error *err);
void srv_params_free(srv_params *p);

/* ---- the request shared by a connection and the engine thread --------------------- */

typedef enum srv_req_state {
    SRV_REQ_QUEUED = 0,   /* waiting for the engine thread to submit it */
    SRV_REQ_RUNNING = 1,  /* in the engine */
    SRV_REQ_DONE = 2,     /* finished (every sample has a finish reason) */
    SRV_REQ_FAILED = 3    /* refused at submission: see err */
} srv_req_state;

typedef struct srv_sample {
    srv_buf text;              /* streamed text (the engine's on_text, whole UTF-8 characters) */
    size_t *cuts;              /* [n_cuts] where each on_text piece ends in text (streams only) */
    int32_t n_cuts, cap_cuts;
    int32_t n_tokens;
    kvrt_finish_reason finish; /* NONE while running */
    /* with logprobs: one entry per generated token */
    float *lp;
    uint32_t *tok_off;         /* [n_lp + 1] offsets of each token's text in tok_text */
    srv_buf tok_text;
    int32_t n_lp, cap_lp;
} srv_sample;

typedef struct srv srv;

typedef struct srv_req {
    srv *s;
    srv_params p;
    char id[48];
    int64_t created;           /* Unix seconds */
    pthread_mutex_t mu;        /* guards what follows, except the fields marked engine thread only */
    int refs;                  /* connection + engine thread */
    srv_req_state state;
    srv_error err;             /* SRV_REQ_FAILED */
    bool cancel;               /* the client went away: the engine thread cancels it */
    bool cancel_sent;          /* engine thread only: kvrt_engine_cancel was called */
    bool cancel_now;           /* engine thread only: to cancel in this iteration */
    int32_t last_prompt_token; /* engine thread only: the token before the first generated one */
    bool waiting;              /* engine thread only: not scheduled yet (for /metrics) */
    bool text_lost;            /* out of memory while appending streamed text: the response is an error */
    bool counted;              /* holds a slot of srv.inflight (set under srv.mu before queueing) */
    int64_t eid;               /* engine request id */
    int32_t n_prompt, n_cached;
    srv_sample *samples;       /* [p.n] */
    uint64_t version;          /* bumped on every change the connection may want */
    pthread_cond_t cv;
    struct srv_req *next;      /* submit queue / engine thread's active list */
} srv_req;

/* ---- metrics (metrics.c) ----------------------------------------------------------- */

#define SRV_HIST_MAX 20
#define SRV_HTTP_CODES_N 10
extern const int SRV_HTTP_CODES[SRV_HTTP_CODES_N]; /* 200, 400, ..., 0 = any other */

typedef struct srv_hist {
    int n_bounds;
    const double *bounds;      /* upper bounds; +Inf implied */
    uint64_t counts[SRV_HIST_MAX + 1];
    double sum;
    uint64_t count;
} srv_hist;

void srv_hist_observe(srv_hist *h, double v);

typedef struct srv_counters {
    srv_hist ttft, tpot, e2e, queue;
    uint64_t finished_stop, finished_length, finished_cancelled;
    uint64_t prompt_tokens, generation_tokens;
    uint64_t http[SRV_HTTP_CODES_N]; /* responses by status, as SRV_HTTP_CODES lists them */
} srv_counters;

void srv_counters_init(srv_counters *c);
void srv_count_http(srv_counters *c, int status);

/* What /metrics shows: the engine's view (read on the engine thread) plus the
 * server's own counters. */
typedef struct srv_snapshot {
    kvrt_engine_metrics m;
    int32_t requests_running, requests_waiting;
    double gen_tokens_per_s, prompt_tokens_per_s;
    srv_counters c;
    int64_t inflight;
} srv_snapshot;

/* Writes Prometheus text exposition format. */
bool srv_metrics_format(const srv_snapshot *s, const char *model_name, srv_buf *out);

/* ---- the server ------------------------------------------------------------------------ */

struct MHD_Daemon;

#define SRV_RATE_WINDOW 32

struct srv {
    srv_options o;
    char model_name[256];
    int32_t max_context;       /* after loading */
    int32_t n_vocab;
    struct MHD_Daemon *daemon;
    int port;                  /* bound port */
    int64_t started_at;        /* Unix seconds */

    /* engine thread's own (no lock): created by kvrt-server.c, used only there */
    kvrt_context *ctx;
    kvrt_model *model;
    const char *chat_template; /* the built-in formatter chat requests use; NULL = plain transcript */
    kvrt_engine *engine;
    pthread_t engine_thread;
    bool engine_started;
    srv_req *active;           /* submitted, not finished */
    uint64_t gen_total, prefill_total; /* tokens generated / prefilled so far (for the rates) */
    uint64_t seed_counter;
    struct { double t; uint64_t gen, prompt; } rate[SRV_RATE_WINDOW];
    int rate_n, rate_head;

    pthread_mutex_t mu;
    pthread_condattr_t cv_attr; /* CLOCK_MONOTONIC, for every timed wait */
    pthread_cond_t engine_cv;  /* wakes the engine thread */
    pthread_cond_t snap_cv;    /* a new metrics snapshot */
    pthread_cond_t idle_cv;    /* inflight or open_requests dropped to 0 */
    /* under mu */
    bool ready;                /* model loaded */
    bool stopping;             /* refuse new work (503) */
    bool cancel_all;           /* cancel everything in flight */
    bool engine_exit;          /* engine thread: leave */
    bool engine_gone;          /* engine thread has left */
    uint64_t wake;             /* bumped with every signal of engine_cv (nothing is lost while it works) */
    srv_req *submit_head, *submit_tail;
    int64_t inflight;          /* requests holding a slot (queued or running) */
    int64_t open_requests;     /* HTTP requests between their first byte and their response's last */
    uint64_t snap_wanted, snap_done;
    srv_snapshot snap;
    srv_counters counters;
    int32_t requests_running, requests_waiting;
    uint64_t req_counter;
};

/* ---- engine_loop.c ---------------------------------------------------------------- */

/* Loads the model and creates the engine (before the engine thread starts). */
bool srv_engine_open(srv *s);
void srv_engine_close(srv *s);
bool srv_engine_start(srv *s);
/* Asks the engine thread to leave once idle (or after cancelling everything
 * when cancel_all is set) and joins it. */
void srv_engine_stop(srv *s);

/* Creates a request holding one reference for the caller. */
srv_req *srv_req_new(srv *s, srv_params *p); /* takes ownership of *p's contents */
void srv_req_unref(srv *s, srv_req *r);
/* Queues r for the engine thread and waits until it is submitted or refused.
 * Returns r->state (RUNNING or FAILED; DONE when it finished meanwhile). */
srv_req_state srv_req_submit(srv *s, srv_req *r);
/* Marks r to be cancelled (the engine thread does it); no-op when finished. */
void srv_req_cancel(srv *s, srv_req *r);
/* Takes a slot for a new request: false when the queue is full (429) or the
 * server is not accepting work (*why says which). */
typedef enum srv_admit { SRV_ADMIT_OK = 0, SRV_ADMIT_FULL, SRV_ADMIT_LOADING, SRV_ADMIT_STOPPING } srv_admit;
srv_admit srv_admit_request(srv *s);
/* Asks the engine thread for a fresh snapshot and copies it. false when the
 * engine is gone. */
bool srv_get_snapshot(srv *s, srv_snapshot *out);

/* ---- sse.c: responses -------------------------------------------------------------- */

/* The whole (non-streamed) response body of a finished request. */
char *srv_response_body(const srv *s, const srv_req *r, size_t *len);
/* One streamed event for sample i from text [from, to) and tokens [lp_from,
 * lp_to); with finish it carries finish_reason. Appended to out as "data: ...\n\n". */
bool srv_stream_chunk(const srv *s, const srv_req *r, int32_t i, const char *text, size_t len, int32_t lp_from,
                      int32_t lp_to, kvrt_finish_reason finish, bool first, srv_buf *out);
bool srv_stream_usage(const srv *s, const srv_req *r, srv_buf *out);
/* {"error": {...}} */
char *srv_error_json(const srv_error *e, size_t *len);
const char *srv_finish_name(kvrt_finish_reason f);
int32_t srv_req_completion_tokens(const srv_req *r);

/* ---- sse.c: waiting from a connection's thread ----------------------------------------- */

struct MHD_Connection;
struct MHD_Response;

/* True when the client closed or reset the connection. */
bool srv_conn_gone(struct MHD_Connection *c);
/* Waits until r is done; false (r cancelled) when the client went away first. */
bool srv_wait_done(srv *s, srv_req *r, struct MHD_Connection *c);
/* A text/event-stream response that follows r until data: [DONE]; it takes
 * the caller's reference to r and cancels r if the client goes away. */
struct MHD_Response *srv_stream_response(srv *s, srv_req *r, struct MHD_Connection *c);

/* ---- http.c ------------------------------------------------------------------------- */

bool srv_http_start(srv *s);
void srv_http_stop(srv *s);

/* ---- chat.c ---------------------------------------------------------------------------------- */

/* The prompt text of a chat request (engine thread; owned by *text) and
 * whether BOS goes first. */
/* Picks the chat template at load (--chat-template, else the model's; a model
 * with none gets the plain transcript); false after an unknown --chat-template. */
bool srv_chat_resolve(srv *s);
/* The chat request's messages as prompt tokens (owned by *ids). */
bool srv_chat_tokens(srv *s, const srv_params *p, int32_t **ids, int32_t *n, srv_error *err);
/* Tokenizes text on the engine thread (the model is one-thread-at-a-time). */
bool srv_tokenize(srv *s, const char *text, bool add_bos, int32_t **ids, int32_t *n, srv_error *err);

/* ---- page.c ------------------------------------------------------------------------- */

const unsigned char *srv_page_data(size_t *len);

#endif /* KVRT_SERVER_H */
