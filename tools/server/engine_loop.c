/* The engine thread: the only thread that touches the context, the model and
 * the engine. It takes requests from the submit queue, tokenizes and submits
 * them, runs steps while there is work, cancels what connections gave up,
 * publishes each request's progress for its connection, and answers metrics
 * snapshots. A request's fields are shared under its own mutex (r->mu), so
 * 64 streams do not queue on one lock; srv.mu guards the server-wide state
 * (submit queue, slots, counters). No code holds both at once. */
#include "server.h"
#include "token_text.h"

#include "kvrt_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- requests ----------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

srv_req *srv_req_new(srv *s, srv_params *p)
{
    srv_req *r = calloc(1, sizeof(*r));
    srv_sample *samples = r ? calloc((size_t)p->n, sizeof(srv_sample)) : NULL;
    if (!samples) {
        free(r);
        return NULL;
    }
    r->p = *p;
    memset(p, 0, sizeof(*p));
    r->samples = samples;
    r->s = s;
    r->refs = 1;
    r->waiting = true;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, &s->cv_attr);
    pthread_mutex_lock(&s->mu);
    uint64_t n = ++s->req_counter;
    pthread_mutex_unlock(&s->mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->created = (int64_t)ts.tv_sec;
    snprintf(r->id, sizeof r->id, "%s-%016llx", r->p.kind == SRV_CHAT ? "chatcmpl" : "cmpl",
             (unsigned long long)mix64(n ^ ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec));
    return r;
}

static void req_free(srv_req *r)
{
    for (int32_t i = 0; i < r->p.n; i++) {
        srv_sample *sm = &r->samples[i];
        srv_buf_free(&sm->text);
        srv_buf_free(&sm->tok_text);
        free(sm->cuts);
        free(sm->lp);
        free(sm->tok_off);
    }
    free(r->samples);
    srv_params_free(&r->p);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

void srv_req_unref(srv *s, srv_req *r)
{
    (void)s;
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    bool last = --r->refs == 0;
    pthread_mutex_unlock(&r->mu);
    if (last)
        req_free(r);
}

/* Under mu: wakes the engine thread. */
static void wake_engine(srv *s)
{
    s->wake++;
    pthread_cond_signal(&s->engine_cv);
}

/* Engine thread, no lock held: the request reached its end (done or
 * refused); its slot is free. r->err is written before this call. */
static void req_settle(srv *s, srv_req *r, srv_req_state state)
{
    /* the slot first: a client that has its answer may send the next request at once */
    if (r->counted) { /* set before the request was queued, under srv.mu */
        r->counted = false;
        pthread_mutex_lock(&s->mu);
        if (--s->inflight == 0)
            pthread_cond_broadcast(&s->idle_cv);
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_lock(&r->mu);
    r->state = state;
    r->version++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

srv_req_state srv_req_submit(srv *s, srv_req *r)
{
    pthread_mutex_lock(&s->mu);
    int64_t limit = (int64_t)s->o.ep.max_seqs + s->o.max_queue;
    if (!s->ready)
        srv_error_set(&r->err, 503, "server_error", NULL, "the model is still loading");
    else if (s->stopping || s->engine_gone)
        srv_error_set(&r->err, 503, "server_error", NULL, "the server is shutting down");
    else if (s->inflight >= limit)
        srv_error_set(&r->err, 429, "rate_limit_error", NULL,
                      "too many requests in flight (%lld: %d running and a queue of %d); retry later",
                      (long long)s->inflight, (int)s->o.ep.max_seqs, (int)s->o.max_queue);
    if (r->err.status) {
        r->state = SRV_REQ_FAILED;
        pthread_mutex_unlock(&s->mu);
        return SRV_REQ_FAILED;
    }
    s->inflight++;
    r->counted = true;
    r->refs++; /* the engine thread's (nobody else holds r yet) */
    r->next = NULL;
    if (s->submit_tail)
        s->submit_tail->next = r;
    else
        s->submit_head = r;
    s->submit_tail = r;
    wake_engine(s);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&r->mu);
    while (r->state == SRV_REQ_QUEUED)
        pthread_cond_wait(&r->cv, &r->mu);
    srv_req_state st = r->state;
    pthread_mutex_unlock(&r->mu);
    return st;
}

void srv_req_cancel(srv *s, srv_req *r)
{
    pthread_mutex_lock(&r->mu);
    bool wake = r->state == SRV_REQ_RUNNING && !r->cancel;
    r->cancel = true;
    pthread_mutex_unlock(&r->mu);
    if (wake) {
        pthread_mutex_lock(&s->mu);
        wake_engine(s);
        pthread_mutex_unlock(&s->mu);
    }
}

bool srv_get_snapshot(srv *s, srv_snapshot *out)
{
    pthread_mutex_lock(&s->mu);
    bool ok = s->ready && !s->engine_gone;
    if (ok) {
        uint64_t want = ++s->snap_wanted;
        wake_engine(s);
        while (s->snap_done < want && !s->engine_gone)
            pthread_cond_wait(&s->snap_cv, &s->mu);
        ok = s->snap_done >= want;
        if (ok)
            *out = s->snap;
    }
    pthread_mutex_unlock(&s->mu);
    return ok;
}

/* ---- engine callbacks (engine thread, inside step / cancel) -------------------------------- */

static void on_text(void *user, int64_t id, int32_t sample, const char *text, size_t len, kvrt_finish_reason finish)
{
    (void)id;
    (void)finish; /* published after the step, with the token counts and log-probabilities */
    srv_req *r = user;
    if (len == 0)
        return;
    srv_sample *sm = &r->samples[sample];
    pthread_mutex_lock(&r->mu);
    if (!srv_buf_append(&sm->text, text, len))
        r->text_lost = true;
    if (r->p.stream && !r->text_lost) {
        if (sm->n_cuts == sm->cap_cuts) {
            int32_t cap = sm->cap_cuts ? 2 * sm->cap_cuts : 64;
            size_t *cuts = realloc(sm->cuts, (size_t)cap * sizeof(size_t));
            if (cuts) {
                sm->cuts = cuts;
                sm->cap_cuts = cap;
            }
        }
        if (sm->n_cuts < sm->cap_cuts)
            sm->cuts[sm->n_cuts++] = sm->text.len;
        else
            r->text_lost = true;
    }
    pthread_mutex_unlock(&r->mu);
}

/* ---- submitting -------------------------------------------------------------------------- */

/* Tokenizes text on the engine thread (the model is one-thread-at-a-time). */
bool srv_tokenize(srv *s, const char *text, bool add_bos, int32_t **ids, int32_t *n, srv_error *err)
{
    size_t len = strlen(text);
    int32_t need = 0;
    kvrt_status st = kvrt_tokenize(s->model, text, len, add_bos, NULL, 0, &need);
    if (st != KVRT_OK && need == 0) {
        srv_error_set(err, 400, "invalid_request_error", "prompt", "the prompt cannot be tokenized: %s",
                      kvrt_model_message(s->model));
        return false;
    }
    *ids = malloc((size_t)(need > 0 ? need : 1) * sizeof(int32_t));
    if (!*ids || kvrt_tokenize(s->model, text, len, add_bos, *ids, need, n) != KVRT_OK) {
        srv_error_set(err, 500, "server_error", NULL, "tokenizing the prompt failed: %s",
                      kvrt_model_message(s->model));
        return false;
    }
    return true;
}

/* The prompt as token ids (owned by *ids) and its checks against the context. */
static bool build_prompt(srv *s, srv_req *r, int32_t **ids, int32_t *n, srv_error *err)
{
    const srv_params *p = &r->p;
    const char *param = p->kind == SRV_CHAT ? "messages" : "prompt";
    if (p->prompt_ids) {
        for (int32_t i = 0; i < p->n_prompt_ids; i++)
            if (p->prompt_ids[i] >= s->n_vocab) {
                srv_error_set(err, 400, "invalid_request_error", "prompt",
                              "prompt token %d (at %d) is outside the vocabulary of %d", (int)p->prompt_ids[i],
                              (int)i, (int)s->n_vocab);
                return false;
            }
        if (!(*ids = malloc((size_t)p->n_prompt_ids * sizeof(int32_t)))) {
            srv_error_set(err, 500, "server_error", NULL, "out of memory");
            return false;
        }
        memcpy(*ids, p->prompt_ids, (size_t)p->n_prompt_ids * sizeof(int32_t));
        *n = p->n_prompt_ids;
    } else if (p->kind == SRV_CHAT) {
        if (!srv_chat_tokens(s, p, ids, n, err))
            return false;
    } else if (!srv_tokenize(s, p->prompt, true, ids, n, err)) {
        return false;
    }
    if (*n == 0) {
        srv_error_set(err, 400, "invalid_request_error", param,
                      "the prompt is empty and the vocabulary has no BOS token");
        return false;
    }
    if (*n >= s->max_context) {
        srv_error_set(err, 400, "invalid_request_error", param,
                      "the prompt has %d tokens; the context is %d, which leaves no room to generate", (int)*n,
                      (int)s->max_context);
        err->code = "context_length_exceeded";
        return false;
    }
    if (p->max_tokens > 0 && (int64_t)*n + p->max_tokens > s->max_context && !s->o.ep.context_shift) {
        srv_error_set(err, 400, "invalid_request_error", "max_tokens",
                      "the prompt (%d tokens) plus max_tokens (%d) is more than the context (%d)", (int)*n,
                      (int)p->max_tokens, (int)s->max_context);
        err->code = "context_length_exceeded";
        return false;
    }
    return true;
}

static void submit_one(srv *s, srv_req *r)
{
    srv_error err = {0};
    int32_t *ids = NULL, n = 0;
    int64_t eid = 0;
    bool ok = build_prompt(s, r, &ids, &n, &err);
    if (ok) {
        const srv_params *p = &r->p;
        kvrt_request_params rp = kvrt_request_default_params();
        rp.prompt = ids;
        rp.n_prompt = n;
        /* completions default to 16 tokens (OpenAI's), chat to the rest of the context */
        int32_t room = s->max_context - n;
        rp.max_tokens = p->max_tokens > 0 ? p->max_tokens : p->kind == SRV_CHAT ? room : KVRT_MIN(16, room);
        rp.n = p->n;
        rp.temperature = p->temperature;
        rp.top_k = p->top_k;
        rp.top_p = p->top_p;
        rp.min_p = p->min_p;
        rp.repeat_penalty = p->repeat_penalty;
        rp.seed = p->seed_set ? p->seed : mix64(++s->seed_counter ^ (uint64_t)(srv_now() * 1e9));
        rp.ignore_eos = p->ignore_eos;
        rp.stop_strings = (const char *const *)p->stop;
        rp.n_stop_strings = p->n_stop;
        rp.logprobs = p->logprobs;
        rp.on_text = on_text;
        rp.user = r;
        kvrt_status st = kvrt_engine_submit(s->engine, &rp, &eid);
        if (st != KVRT_OK) {
            ok = false;
            bool client = st == KVRT_ERR_INVALID_ARGUMENT || st == KVRT_ERR_REQUEST_REJECTED;
            srv_error_set(&err, client ? 400 : 500, client ? "invalid_request_error" : "server_error", NULL,
                          "%s", kvrt_engine_message(s->engine));
        }
    }
    if (ok) {
        r->last_prompt_token = ids[n - 1];
        pthread_mutex_lock(&r->mu);
        r->eid = eid;
        r->n_prompt = n;
        r->state = SRV_REQ_RUNNING;
        r->version++;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_mutex_lock(&s->mu);
        s->counters.prompt_tokens += (uint64_t)n;
        pthread_mutex_unlock(&s->mu);
    } else {
        r->err = err;
        req_settle(s, r, SRV_REQ_FAILED);
    }
    if (ok) {
        r->next = s->active;
        s->active = r;
    } else {
        srv_req_unref(s, r); /* the engine thread's reference */
    }
    free(ids);
}

/* ---- publishing progress --------------------------------------------------------------------- */

/* Under r->mu: appends the log-probabilities and token texts the sample gained. */
static void add_logprobs(srv *s, srv_req *r, srv_sample *sm, const kvrt_sample_output *so)
{
    if (!so->logprobs || so->n_tokens <= sm->n_lp)
        return;
    if (so->n_tokens > sm->cap_lp) {
        int32_t cap = KVRT_MAX(so->n_tokens, 2 * sm->cap_lp);
        float *lp = realloc(sm->lp, (size_t)cap * sizeof(float));
        if (lp)
            sm->lp = lp;
        uint32_t *off = realloc(sm->tok_off, ((size_t)cap + 1) * sizeof(uint32_t));
        if (off)
            sm->tok_off = off;
        if (!lp || !off) {
            r->text_lost = true;
            return;
        }
        sm->cap_lp = cap;
    }
    for (int32_t t = sm->n_lp; t < so->n_tokens; t++) {
        int32_t prev = t > 0 ? so->tokens[t - 1] : r->last_prompt_token;
        sm->tok_off[t] = (uint32_t)sm->tok_text.len;
        /* appended in place, however long the piece (srv_buf keeps its NUL) */
        if (kvrt_tool_append_token_text(s->model, prev, so->tokens[t], &sm->tok_text.p, &sm->tok_text.len,
                                        &sm->tok_text.cap) != KVRT_OK)
            r->text_lost = true;
        sm->lp[t] = so->logprobs[t];
        sm->tok_off[t + 1] = (uint32_t)sm->tok_text.len;
    }
    sm->n_lp = so->n_tokens;
}

/* Copies what the engine has for r (token counts, finish reasons,
 * log-probabilities) to where its connection reads it; returns the tokens
 * generated since the last call. */
static uint64_t publish(srv *s, srv_req *r)
{
    kvrt_request_output out;
    uint64_t gained = 0;
    if (kvrt_engine_get_output(s->engine, r->eid, &out) != KVRT_OK)
        return 0;
    r->waiting = out.timing.first_scheduled < 0; /* engine thread only */
    pthread_mutex_lock(&r->mu);
    for (int32_t i = 0; i < out.n_samples && i < r->p.n; i++) {
        srv_sample *sm = &r->samples[i];
        const kvrt_sample_output *so = &out.samples[i];
        if (r->p.logprobs)
            add_logprobs(s, r, sm, so);
        if (so->n_tokens > sm->n_tokens)
            gained += (uint64_t)(so->n_tokens - sm->n_tokens);
        sm->n_tokens = so->n_tokens;
        sm->finish = so->finish_reason;
    }
    r->n_cached = out.n_cached_prompt;
    r->version++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return gained;
}

/* Publishes every active request; counts what they generated. */
static void publish_all(srv *s)
{
    uint64_t gained = 0;
    for (srv_req *r = s->active; r; r = r->next)
        gained += publish(s, r);
    if (!gained)
        return;
    s->gen_total += gained;
    pthread_mutex_lock(&s->mu);
    s->counters.generation_tokens += gained;
    pthread_mutex_unlock(&s->mu);
}

/* Under mu: the latency histograms, as the engine defines its latencies. */
static void observe(srv *s, const kvrt_request_output *out)
{
    const kvrt_request_timing *t = &out->timing;
    srv_counters *c = &s->counters;
    int32_t most = 0;
    bool cancelled = false;
    for (int32_t i = 0; i < out->n_samples; i++) {
        kvrt_finish_reason f = out->samples[i].finish_reason;
        most = KVRT_MAX(most, out->samples[i].n_tokens);
        cancelled |= f == KVRT_FINISH_CANCELLED || f == KVRT_FINISH_ERROR;
        if (f == KVRT_FINISH_LENGTH)
            c->finished_length++;
        else if (f == KVRT_FINISH_CANCELLED || f == KVRT_FINISH_ERROR) /* the metric counts engine failures */
            c->finished_cancelled++;
        else
            c->finished_stop++;
    }
    if (cancelled)
        return;
    srv_hist_observe(&c->e2e, t->finished - t->arrival);
    if (t->first_scheduled >= 0)
        srv_hist_observe(&c->queue, t->first_scheduled - t->arrival);
    if (t->first_token >= 0)
        srv_hist_observe(&c->ttft, t->first_token - t->arrival);
    if (most > 1)
        srv_hist_observe(&c->tpot, (t->finished - t->first_token) / (double)(most - 1));
}

static srv_req *unlink_active(srv *s, int64_t eid)
{
    for (srv_req **pp = &s->active; *pp; pp = &(*pp)->next)
        if ((*pp)->eid == eid) {
            srv_req *r = *pp;
            *pp = r->next;
            r->next = NULL;
            return r;
        }
    return NULL;
}

/* Takes every finished request out of the engine and hands it to its connection. */
static void collect_finished(srv *s)
{
    for (;;) {
        kvrt_request_output out;
        int32_t found = 0;
        if (kvrt_engine_next_finished(s->engine, &out, &found) != KVRT_OK || !found)
            return;
        srv_req *r = unlink_active(s, out.request_id);
        if (!r) { /* not ours: cannot happen, but never leak it */
            kvrt_engine_release(s->engine, out.request_id);
            continue;
        }
        uint64_t gained = publish(s, r);
        s->gen_total += gained;
        pthread_mutex_lock(&r->mu);
        if (!r->p.stream) /* the engine's own text; streams keep what on_text gave, and the tests compare both */
            for (int32_t i = 0; i < out.n_samples && i < r->p.n; i++) {
                srv_buf *b = &r->samples[i].text;
                b->len = 0;
                if (!srv_buf_append(b, out.samples[i].text, out.samples[i].text_len))
                    r->text_lost = true;
            }
        pthread_mutex_unlock(&r->mu);
        pthread_mutex_lock(&s->mu);
        s->counters.generation_tokens += gained;
        observe(s, &out);
        pthread_mutex_unlock(&s->mu);
        req_settle(s, r, SRV_REQ_DONE);
        kvrt_engine_release(s->engine, out.request_id);
        srv_req_unref(s, r);
    }
}

/* ---- the loop ------------------------------------------------------------------------------ */

static void rate_push(srv *s, double now)
{
    int at = s->rate_head;
    s->rate[at].t = now;
    s->rate[at].gen = s->gen_total;
    s->rate[at].prompt = s->prefill_total;
    s->rate_head = (at + 1) % SRV_RATE_WINDOW;
    if (s->rate_n < SRV_RATE_WINDOW)
        s->rate_n++;
}

/* Tokens per second over about the last ten seconds. */
static void rates(const srv *s, double now, double *gen, double *prompt)
{
    *gen = *prompt = 0.0;
    int best = -1;
    for (int k = 0; k < s->rate_n; k++) {
        int i = (s->rate_head - s->rate_n + k + SRV_RATE_WINDOW) % SRV_RATE_WINDOW; /* oldest first */
        if (best < 0 || s->rate[i].t <= now - 10.0)
            best = i;
    }
    if (best < 0 || now - s->rate[best].t <= 0.0)
        return;
    double dt = now - s->rate[best].t;
    *gen = (double)(s->gen_total - s->rate[best].gen) / dt;
    *prompt = (double)(s->prefill_total - s->rate[best].prompt) / dt;
}

static void make_snapshot(srv *s)
{
    srv_snapshot snap;
    memset(&snap, 0, sizeof(snap));
    if (kvrt_engine_get_metrics(s->engine, &snap.m) != KVRT_OK)
        fprintf(stderr, "%s: metrics: %s\n", SRV_PROG, kvrt_engine_message(s->engine));
    double now = srv_now();
    rate_push(s, now);
    rates(s, now, &snap.gen_tokens_per_s, &snap.prompt_tokens_per_s);
    pthread_mutex_lock(&s->mu);
    for (const srv_req *r = s->active; r; r = r->next) {
        if (r->waiting)
            snap.requests_waiting++;
        else
            snap.requests_running++;
    }
    for (const srv_req *r = s->submit_head; r; r = r->next)
        snap.requests_waiting++;
    snap.c = s->counters;
    snap.inflight = s->inflight;
    s->snap = snap;
    s->snap_done = s->snap_wanted;
    pthread_cond_broadcast(&s->snap_cv);
    pthread_mutex_unlock(&s->mu);
}

/* Marks what to cancel: what connections gave up, or everything. */
static void mark_cancels(srv *s, bool cancel_all)
{
    for (srv_req *r = s->active; r; r = r->next) {
        pthread_mutex_lock(&r->mu);
        if (cancel_all && !r->cancel && !r->err.status)
            srv_error_set(&r->err, 503, "server_error", NULL, "the server is shutting down");
        r->cancel_now = (r->cancel || cancel_all) && !r->cancel_sent;
        pthread_mutex_unlock(&r->mu);
    }
}

/* After repeated step failures nothing will finish: every request ends with a 500. */
static void fail_everything(srv *s, const char *why)
{
    for (srv_req *r = s->active; r; r = r->next) {
        pthread_mutex_lock(&r->mu);
        if (!r->err.status)
            srv_error_set(&r->err, 500, "server_error", NULL, "the engine failed: %s", why);
        r->cancel_now = !r->cancel_sent;
        pthread_mutex_unlock(&r->mu);
    }
}

static void run_cancels(srv *s)
{
    for (srv_req *r = s->active; r; r = r->next)
        if (r->cancel_now) {
            r->cancel_now = false;
            r->cancel_sent = true;
            kvrt_engine_cancel(s->engine, r->eid); /* cannot fail for a live id */
        }
}

static void *engine_main(void *arg)
{
    srv *s = arg;
    uint64_t seen = 0;
    int failures = 0;
    double last_rate = 0.0;
    for (;;) {
        bool work = kvrt_engine_has_work(s->engine);
        pthread_mutex_lock(&s->mu);
        if (!work && s->wake == seen && !s->engine_exit) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_nsec += 500000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&s->engine_cv, &s->mu, &ts);
        }
        seen = s->wake;
        bool cancel_all = s->cancel_all, leave = s->engine_exit, snap = s->snap_wanted != s->snap_done;
        srv_req *subs = s->submit_head;
        s->submit_head = s->submit_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        mark_cancels(s, cancel_all);

        while (subs) {
            srv_req *r = subs;
            subs = r->next;
            r->next = NULL;
            if (cancel_all) {
                srv_error_set(&r->err, 503, "server_error", NULL, "the server is shutting down");
                req_settle(s, r, SRV_REQ_FAILED);
                srv_req_unref(s, r);
            } else {
                submit_one(s, r);
            }
        }
        run_cancels(s);
        if (kvrt_engine_has_work(s->engine)) {
            kvrt_step_info info;
            if (kvrt_engine_step(s->engine, &info) != KVRT_OK) {
                fprintf(stderr, "%s: step failed: %s\n", SRV_PROG, kvrt_engine_message(s->engine));
                if (++failures >= 3) {
                    fail_everything(s, kvrt_engine_message(s->engine));
                    run_cancels(s);
                    failures = 0;
                }
            } else {
                failures = 0;
                s->prefill_total += (uint64_t)info.prefill_tokens;
            }
        }
        publish_all(s);
        collect_finished(s);
        double now = srv_now();
        if (now - last_rate >= 0.5) {
            rate_push(s, now);
            last_rate = now;
        }
        if (snap)
            make_snapshot(s);
        if (leave && !s->active && !kvrt_engine_has_work(s->engine))
            break;
    }
    pthread_mutex_lock(&s->mu);
    s->engine_gone = true;
    srv_req *subs = s->submit_head;
    s->submit_head = s->submit_tail = NULL;
    pthread_cond_broadcast(&s->snap_cv);
    pthread_mutex_unlock(&s->mu);
    while (subs) { /* queued after the last look: refused */
        srv_req *r = subs;
        subs = r->next;
        srv_error_set(&r->err, 503, "server_error", NULL, "the server is shutting down");
        req_settle(s, r, SRV_REQ_FAILED);
        srv_req_unref(s, r);
    }
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static bool report(const char *what, kvrt_status st, const char *msg)
{
    fprintf(stderr, "%s: %s: %s (%s)\n", SRV_PROG, what, msg && *msg ? msg : kvrt_status_str(st),
            kvrt_status_str(st));
    return false;
}

bool srv_engine_open(srv *s)
{
    const srv_options *o = &s->o;
    kvrt_error err;
    kvrt_context_params cp = kvrt_context_default_params();
    kvrt_cli_common_context_params(&o->common, &cp);
    kvrt_status st = kvrt_context_create(&cp, &s->ctx, &err);
    if (st != KVRT_OK)
        return report("backend", st, err.message);
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = o->model_path;
    mp.tokenizer_path = o->tokenizer_path;
    mp.max_context = o->ep.max_context;
    mp.kv_type = o->ep.kv_type;
    if ((st = kvrt_model_load(s->ctx, &mp, &s->model, &err)) != KVRT_OK)
        return report("loading the model", st, err.message);
    kvrt_model_info info;
    kvrt_model_get_info(s->model, &info);
    s->n_vocab = info.n_vocab;
    s->max_context = o->ep.max_context > 0 ? o->ep.max_context : info.n_ctx_train;
    if (!srv_chat_resolve(s))
        return false;
    if ((st = kvrt_engine_create(s->model, &o->ep, &s->engine, &err)) != KVRT_OK)
        return report("creating the engine", st, err.message);
    if (o->verbose) {
        kvrt_engine_metrics m;
        kvrt_engine_get_metrics(s->engine, &m);
        fprintf(stderr, "%s: %s; %s, context %d, %d KV blocks of %d (%.1f MiB)\n", SRV_PROG,
                kvrt_context_description(s->ctx), info.arch, (int)s->max_context, (int)m.blocks_total,
                (int)m.block_size, (double)m.kv_bytes / 1048576.0);
    }
    return true;
}

void srv_engine_close(srv *s)
{
    kvrt_engine_destroy(s->engine);
    kvrt_model_destroy(s->model);
    if (s->ctx && kvrt_context_save_caches(s->ctx) != KVRT_OK)
        fprintf(stderr, "%s: warning: pipeline cache not saved: %s\n", SRV_PROG, kvrt_context_message(s->ctx));
    kvrt_context_destroy(s->ctx);
    s->engine = NULL;
    s->model = NULL;
    s->ctx = NULL;
}

bool srv_engine_start(srv *s)
{
    if (pthread_create(&s->engine_thread, NULL, engine_main, s) != 0) {
        fprintf(stderr, "%s: cannot start the engine thread\n", SRV_PROG);
        return false;
    }
    s->engine_started = true;
    return true;
}

void srv_engine_stop(srv *s)
{
    if (!s->engine_started)
        return;
    pthread_mutex_lock(&s->mu);
    s->engine_exit = true;
    wake_engine(s);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->engine_thread, NULL);
    s->engine_started = false;
}
