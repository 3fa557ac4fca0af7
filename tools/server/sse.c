/* Waiting on a request from its connection's thread: the server-sent-event
 * stream (a libmicrohttpd content reader that blocks until the engine thread
 * has something new) and the wait for a whole response. Both look at the
 * client's socket while they wait, so a client that goes away mid-request
 * gets its request cancelled and its KV blocks freed within ~100 ms, even
 * when nothing is being written to it (a long prefill, a queue). */
#include "server.h"

#include <errno.h>
#include <microhttpd.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define POLL_MS 100

/* True when the peer closed or reset the connection. */
bool srv_conn_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* Under r->mu: waits up to POLL_MS for r->version to move past *seen. */
static void wait_change(srv_req *r, pthread_mutex_t *mu, uint64_t seen)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += POLL_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (r->version == seen)
        pthread_cond_timedwait(&r->cv, mu, &ts);
}

bool srv_wait_done(srv *s, srv_req *r, struct MHD_Connection *c)
{
    double checked = srv_now();
    pthread_mutex_lock(&r->mu);
    while (r->state == SRV_REQ_RUNNING) {
        wait_change(r, &r->mu, r->version);
        /* the request changes every step: look at the socket by the clock, not on timeouts */
        if (r->state == SRV_REQ_RUNNING && srv_now() - checked >= POLL_MS * 1e-3) {
            pthread_mutex_unlock(&r->mu);
            if (srv_conn_gone(c)) {
                srv_req_cancel(s, r);
                return false;
            }
            checked = srv_now();
            pthread_mutex_lock(&r->mu);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return true;
}

/* ---- the event stream -------------------------------------------------------------------- */

typedef struct sse_sample {
    int32_t cuts_sent;
    int32_t lp_sent;
    bool started, finished;
} sse_sample;

typedef struct srv_stream {
    srv *s;
    srv_req *r;
    struct MHD_Connection *conn;
    srv_buf out;        /* events formatted, not yet handed to libmicrohttpd */
    size_t out_pos;
    uint64_t seen;
    double checked;     /* when the socket was last looked at */
    bool done;          /* [DONE] is in out */
    sse_sample *samples;
} srv_stream;

/* Under r->mu: the events of sample i not sent yet: one per piece of text
 * the engine handed out (one token's worth, usually), as OpenAI streams,
 * even when this connection fell behind and writes several at once. New
 * log-probabilities ride on the first of them; the finish reason on the last. */
static bool format_sample(srv_stream *st, int32_t i)
{
    const srv_req *r = st->r;
    const srv_sample *sm = &r->samples[i];
    sse_sample *ss = &st->samples[i];
    int32_t lp_to = r->p.logprobs ? sm->n_lp : 0;
    kvrt_finish_reason f = sm->finish;
    bool ok = true;
    if (ss->cuts_sent == sm->n_cuts) {
        /* no text: an event only for log-probabilities, the finish, or chat's opening role */
        if (lp_to == ss->lp_sent && f == KVRT_FINISH_NONE && (ss->started || r->p.kind != SRV_CHAT))
            return true;
        ok = srv_stream_chunk(st->s, r, i, "", 0, ss->lp_sent, lp_to, f, !ss->started, &st->out);
    }
    for (int32_t c = ss->cuts_sent; c < sm->n_cuts && ok; c++) {
        size_t from = c ? sm->cuts[c - 1] : 0, to = sm->cuts[c];
        bool last = c + 1 == sm->n_cuts;
        ok = srv_stream_chunk(st->s, r, i, sm->text.p + from, to - from, ss->lp_sent, c == ss->cuts_sent ? lp_to : 0,
                              last ? f : KVRT_FINISH_NONE, !ss->started, &st->out);
        ss->started = true;
    }
    ss->started = true;
    ss->cuts_sent = sm->n_cuts;
    ss->lp_sent = lp_to;
    ss->finished = f != KVRT_FINISH_NONE;
    return ok;
}

/* Under r->mu: formats every event the request has that was not sent yet. */
static bool format_new(srv_stream *st)
{
    const srv *s = st->s;
    const srv_req *r = st->r;
    bool ok = true;
    for (int32_t i = 0; i < r->p.n && ok; i++)
        if (!st->samples[i].finished)
            ok = format_sample(st, i);
    if (!ok || (r->state != SRV_REQ_DONE && !r->text_lost))
        return ok;
    if (r->err.status || r->text_lost) {
        srv_error e = r->err;
        if (!e.status)
            srv_error_set(&e, 500, "server_error", NULL, "out of memory while streaming");
        size_t len = 0;
        char *json = srv_error_json(&e, &len);
        ok = json && srv_buf_puts(&st->out, "data: ") && srv_buf_append(&st->out, json, len) &&
             srv_buf_puts(&st->out, "\n");
        free(json);
    } else if (r->p.include_usage) {
        ok = srv_stream_usage(s, r, &st->out);
    }
    st->done = true;
    return ok && srv_buf_puts(&st->out, "data: [DONE]\n\n");
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    srv_stream *st = cls;
    srv *s = st->s;
    for (;;) {
        if (st->out_pos < st->out.len) {
            size_t n = KVRT_MIN(max, st->out.len - st->out_pos);
            memcpy(buf, st->out.p + st->out_pos, n);
            st->out_pos += n;
            return (ssize_t)n;
        }
        st->out.len = st->out_pos = 0;
        if (st->done)
            return MHD_CONTENT_READER_END_OF_STREAM;
        pthread_mutex_lock(&st->r->mu);
        if (st->r->version == st->seen && st->r->state == SRV_REQ_RUNNING)
            wait_change(st->r, &st->r->mu, st->seen);
        bool moved = st->r->version != st->seen || st->r->state != SRV_REQ_RUNNING;
        st->seen = st->r->version;
        bool ok = !moved || format_new(st);
        pthread_mutex_unlock(&st->r->mu);
        if (!ok) {
            srv_req_cancel(s, st->r);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        /* writes fail once the client is gone, but nothing is written during a long prefill or in the queue */
        if (srv_now() - st->checked >= POLL_MS * 1e-3) {
            if (srv_conn_gone(st->conn)) {
                srv_req_cancel(s, st->r);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            st->checked = srv_now();
        }
    }
}

/* libmicrohttpd is done with the response (sent, or the client went away). */
static void stream_free(void *cls)
{
    srv_stream *st = cls;
    srv_req_cancel(st->s, st->r); /* no-op when it finished */
    srv_req_unref(st->s, st->r);
    srv_buf_free(&st->out);
    free(st->samples);
    free(st);
}

struct MHD_Response *srv_stream_response(srv *s, srv_req *r, struct MHD_Connection *c)
{
    srv_stream *st = calloc(1, sizeof(*st));
    if (st)
        st->samples = calloc((size_t)r->p.n, sizeof(sse_sample));
    if (!st || !st->samples) {
        free(st);
        return NULL;
    }
    st->s = s;
    st->r = r; /* takes the caller's reference */
    st->conn = c;
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, st,
                                                                  stream_free);
    if (!resp) {
        free(st->samples);
        free(st);
        return NULL;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return resp;
}
