/* libmicrohttpd glue: the daemon (one thread per connection), routing, the
 * API key, the body size limit, and the handlers of each endpoint.
 *
 * A connection's thread may block in a handler (waiting for a whole
 * response) or in the stream reader (waiting for the next tokens); that is
 * what libmicrohttpd's thread-per-connection mode allows, and it keeps the
 * engine thread free of any network work. */
#include "server.h"

#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef enum route {
    R_NONE = 0, R_PAGE, R_HEALTH, R_MODELS, R_METRICS, R_COMPLETIONS, R_CHAT
} route;

typedef struct route_def {
    const char *path;
    const char *method;
    route r;
    bool api; /* under /v1: needs the API key when one is set */
} route_def;

static const route_def ROUTES[] = {
    {"/", "GET", R_PAGE, false},
    {"/index.html", "GET", R_PAGE, false},
    {"/health", "GET", R_HEALTH, false},
    {"/metrics", "GET", R_METRICS, false},
    {"/v1/models", "GET", R_MODELS, true},
    {"/v1/completions", "POST", R_COMPLETIONS, true},
    {"/v1/chat/completions", "POST", R_CHAT, true},
};

static const route_def NO_ROUTE = {"", "", R_NONE, false};

/* Per-connection request state, from the first call of the handler to the
 * completion notification. */
typedef struct conn_req {
    const route_def *route;
    srv_buf body;
    bool too_big;
    bool answered; /* a response was queued before the body was read */
} conn_req;

/* ---- responses ------------------------------------------------------------------------- */

static void count(srv *s, int status)
{
    pthread_mutex_lock(&s->mu);
    srv_count_http(&s->counters, status);
    pthread_mutex_unlock(&s->mu);
}

/* Sends data (taken over, freed by libmicrohttpd) with a status. */
static enum MHD_Result send_owned(srv *s, struct MHD_Connection *c, int status, const char *type, char *data,
                                  size_t len)
{
    if (!data)
        return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(data);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == MHD_HTTP_TOO_MANY_REQUESTS || status == MHD_HTTP_SERVICE_UNAVAILABLE)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    count(s, status);
    return ret;
}

static enum MHD_Result send_error(srv *s, struct MHD_Connection *c, const srv_error *e)
{
    size_t len = 0;
    char *json = srv_error_json(e, &len);
    if (s->o.verbose)
        fprintf(stderr, "%s: %d %s\n", SRV_PROG, e->status, e->message);
    return send_owned(s, c, e->status, "application/json", json, len);
}

static enum MHD_Result send_json(srv *s, struct MHD_Connection *c, int status, srv_buf *b)
{
    size_t len = b->len;
    return send_owned(s, c, status, "application/json", srv_buf_take(b), len);
}

/* ---- small endpoints ------------------------------------------------------------------------ */

static enum MHD_Result do_page(srv *s, struct MHD_Connection *c)
{
    size_t len = 0;
    const unsigned char *page = srv_page_data(&len);
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)page, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
    /* the page talks only to this server; nothing from anywhere else may run in it */
    MHD_add_response_header(resp, "Content-Security-Policy",
                            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    count(s, MHD_HTTP_OK);
    return ret;
}

static enum MHD_Result do_health(srv *s, struct MHD_Connection *c)
{
    pthread_mutex_lock(&s->mu);
    const char *state = s->stopping ? "stopping" : s->ready ? "ok" : "loading";
    pthread_mutex_unlock(&s->mu);
    srv_buf b = {0};
    srv_buf_printf(&b, "{\"status\":\"%s\"}\n", state);
    return send_json(s, c, strcmp(state, "ok") ? MHD_HTTP_SERVICE_UNAVAILABLE : MHD_HTTP_OK, &b);
}

static enum MHD_Result do_models(srv *s, struct MHD_Connection *c)
{
    srv_buf b = {0};
    /* the served name is checked at start to need no JSON escaping */
    srv_buf_printf(&b,
                   "{\"object\":\"list\",\"data\":[{\"id\":\"%s\",\"object\":\"model\",\"created\":%lld,"
                   "\"owned_by\":\"kvrt\",\"max_model_len\":%d}]}\n",
                   s->model_name, (long long)s->started_at, (int)s->max_context);
    return send_json(s, c, MHD_HTTP_OK, &b);
}

static enum MHD_Result do_metrics(srv *s, struct MHD_Connection *c)
{
    srv_snapshot *snap = calloc(1, sizeof(*snap));
    srv_error e = {0};
    if (!snap) {
        srv_error_set(&e, 500, "server_error", NULL, "out of memory");
        return send_error(s, c, &e);
    }
    if (!srv_get_snapshot(s, snap)) {
        free(snap);
        srv_error_set(&e, 503, "server_error", NULL, "the engine is not running (loading or stopping)");
        return send_error(s, c, &e);
    }
    srv_buf b = {0};
    bool ok = srv_metrics_format(snap, s->model_name, &b);
    free(snap);
    if (!ok) {
        srv_buf_free(&b);
        srv_error_set(&e, 500, "server_error", NULL, "out of memory");
        return send_error(s, c, &e);
    }
    size_t len = b.len;
    return send_owned(s, c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", srv_buf_take(&b), len);
}

/* ---- completions ------------------------------------------------------------------------------ */

static enum MHD_Result do_generate(srv *s, struct MHD_Connection *c, srv_kind kind, conn_req *cr)
{
    srv_error e = {0};
    srv_params p;
    int32_t max_n = KVRT_MIN(16, s->o.ep.max_seqs);
    /* with --context-shift a completion outlives the context: max_tokens is not bounded by it */
    int32_t max_tokens = s->o.ep.context_shift ? INT32_MAX / 2 : s->max_context;
    if (!srv_params_parse(kind, cr->body.p ? cr->body.p : "", cr->body.len, max_tokens, max_n, &p, &e))
        return send_error(s, c, &e);
    if (p.model && strcmp(p.model, s->model_name) != 0) {
        srv_error_set(&e, 404, "invalid_request_error", "model", "the model '%.100s' does not exist; this server "
                      "serves '%.100s'", p.model, s->model_name);
        e.code = "model_not_found";
        srv_params_free(&p);
        return send_error(s, c, &e);
    }
    srv_req *r = srv_req_new(s, &p);
    if (!r) {
        srv_params_free(&p);
        srv_error_set(&e, 500, "server_error", NULL, "out of memory");
        return send_error(s, c, &e);
    }
    if (srv_req_submit(s, r) == SRV_REQ_FAILED) {
        enum MHD_Result ret = send_error(s, c, &r->err);
        srv_req_unref(s, r);
        return ret;
    }
    if (r->p.stream) {
        struct MHD_Response *resp = srv_stream_response(s, r, c); /* takes our reference */
        if (!resp) {
            srv_req_cancel(s, r);
            srv_req_unref(s, r);
            return MHD_NO;
        }
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        count(s, MHD_HTTP_OK);
        return ret;
    }
    if (!srv_wait_done(s, r, c)) { /* the client left: nothing to answer */
        srv_req_unref(s, r);
        return MHD_NO;
    }
    enum MHD_Result ret;
    if (r->err.status || r->text_lost) {
        if (!r->err.status)
            srv_error_set(&r->err, 500, "server_error", NULL, "out of memory while collecting the text");
        ret = send_error(s, c, &r->err);
    } else {
        size_t len = 0;
        char *body = srv_response_body(s, r, &len);
        ret = send_owned(s, c, MHD_HTTP_OK, "application/json", body, len);
    }
    srv_req_unref(s, r);
    return ret;
}

/* ---- dispatch -------------------------------------------------------------------------------- */

/* Bearer KEY in Authorization, compared in constant time. */
static bool authorized(srv *s, struct MHD_Connection *c, srv_error *e)
{
    if (!s->o.api_key)
        return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
        srv_error_set(e, 401, "authentication_error", NULL,
                      "no API key given: send it as 'Authorization: Bearer KEY'");
        e->code = "invalid_api_key";
        return false;
    }
    const char *key = h + 7;
    while (*key == ' ')
        key++;
    if (!srv_secret_equal(key, strlen(key), s->o.api_key, strlen(s->o.api_key))) {
        srv_error_set(e, 401, "authentication_error", NULL, "the API key is not valid");
        e->code = "invalid_api_key";
        return false;
    }
    return true;
}

/* First call of a request: route it, check the key and the declared size. A
 * response queued here goes out without reading the body. */
static enum MHD_Result begin(srv *s, struct MHD_Connection *c, const char *url, const char *method, conn_req *cr)
{
    srv_error e = {0};
    bool path_known = false;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(ROUTES); i++)
        if (strcmp(url, ROUTES[i].path) == 0) {
            path_known = true;
            if (strcmp(method, ROUTES[i].method) == 0 ||
                (strcmp(method, "HEAD") == 0 && strcmp(ROUTES[i].method, "GET") == 0))
                cr->route = &ROUTES[i];
        }
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cr->route && path_known)
        srv_error_set(&e, 405, "invalid_request_error", NULL, "method %s is not allowed on %s", method, url);
    else if (!cr->route)
        srv_error_set(&e, 404, "invalid_request_error", NULL, "no such endpoint: %s %s", method, url);
    else if (cr->route->api && !authorized(s, c, &e))
        ;
    else if (cl && strtoull(cl, NULL, 10) > s->o.max_body)
        srv_error_set(&e, 413, "invalid_request_error", NULL, "the request body (%s bytes) is over the limit of %zu",
                      cl, s->o.max_body);
    if (!e.status)
        return MHD_YES;
    cr->answered = true;
    return send_error(s, c, &e);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    srv *s = cls;
    conn_req *cr = *con_cls;
    if (!cr) {
        if (!(cr = calloc(1, sizeof(*cr))))
            return MHD_NO;
        *con_cls = cr;
        pthread_mutex_lock(&s->mu);
        s->open_requests++;
        pthread_mutex_unlock(&s->mu);
        enum MHD_Result ret = begin(s, c, url, method, cr);
        if (cr->answered)
            cr->route = &NO_ROUTE; /* only the body is left to drain */
        return ret;
    }
    if (*upload_size) {
        if (!cr->too_big && cr->body.len + *upload_size <= s->o.max_body)
            cr->too_big = !srv_buf_append(&cr->body, upload, *upload_size);
        else
            cr->too_big = true;
        *upload_size = 0;
        return MHD_YES;
    }
    srv_error e = {0};
    if (cr->too_big) {
        srv_buf_free(&cr->body);
        srv_error_set(&e, 413, "invalid_request_error", NULL, "the request body is over the limit of %zu bytes",
                      s->o.max_body);
        return send_error(s, c, &e);
    }
    switch (cr->route->r) {
    case R_PAGE: return do_page(s, c);
    case R_HEALTH: return do_health(s, c);
    case R_MODELS: return do_models(s, c);
    case R_METRICS: return do_metrics(s, c);
    case R_COMPLETIONS: return do_generate(s, c, SRV_COMPLETION, cr);
    case R_CHAT: return do_generate(s, c, SRV_CHAT, cr);
    case R_NONE: break;
    }
    return MHD_YES; /* an answer was queued in begin() */
}

/* The response went out, or the connection broke: the request is over. */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode why)
{
    (void)c;
    (void)why;
    srv *s = cls;
    conn_req *cr = *con_cls;
    if (!cr)
        return;
    srv_buf_free(&cr->body);
    free(cr);
    *con_cls = NULL;
    pthread_mutex_lock(&s->mu);
    if (--s->open_requests == 0)
        pthread_cond_broadcast(&s->idle_cv);
    pthread_mutex_unlock(&s->mu);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    srv *s = cls;
    if (!s->o.verbose)
        return;
    fprintf(stderr, "%s: libmicrohttpd: ", SRV_PROG);
    vfprintf(stderr, fmt, ap);
}

/* ---- the daemon -------------------------------------------------------------------------- */

bool srv_http_start(srv *s)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", s->o.port);
    int rc = getaddrinfo(s->o.host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "%s: --host %s: %s\n", SRV_PROG, s->o.host, gai_strerror(rc));
        return false;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, /* first, or some go to stderr */
                                 MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->o.max_connections,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        fprintf(stderr, "%s: cannot listen on %s port %d (in use, or not an address of this machine?)\n", SRV_PROG,
                s->o.host, s->o.port);
        return false;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : s->o.port;
    return true;
}

void srv_http_stop(srv *s)
{
    if (s->daemon)
        MHD_stop_daemon(s->daemon);
    s->daemon = NULL;
}
