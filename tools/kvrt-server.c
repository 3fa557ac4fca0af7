/* kvrt-server: an OpenAI-compatible HTTP server over the serving engine
 * (tools/server/server.h has the threads and files).
 *
 *   kvrt-server -m MODEL [--host 127.0.0.1] [--port 8080] [--api-key KEY] ...
 *
 * Prints the URL it serves on stdout once listening (the model loads after:
 * /health says "loading" until it is ready); everything else goes to stderr.
 * SIGINT/SIGTERM stop it: new requests get 503 (and /health says
 * "stopping", so a load balancer moves on), in-flight ones get
 * --shutdown-timeout seconds to finish (a second signal cuts that short),
 * then the rest are cancelled and answered, and everything is freed before
 * exit 0. */
#include "cli.h"
#include "server/server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const PREEMPT_MODES[] = {"recompute", "swap", NULL};

/* --max-body: a byte count with an optional k or M suffix (x1024, x1024^2). */
static bool parse_size(const char *prog, const char *flag, const char *s, void *dst)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned long long mult = *end == 'k' || *end == 'K' ? 1024ull : *end == 'M' ? 1048576ull : 1ull;
    if (mult > 1)
        end++;
    if (errno || end == s || *end || s[0] == '-' || v == 0 || v > (1ull << 40) / mult) {
        kvrt_cli_error(prog, "%s: '%s' is not a size in bytes (k and M suffixes allowed, at most 1T)", flag, s);
        return false;
    }
    *(size_t *)dst = (size_t)(v * mult);
    return true;
}

/* The key from the first line of a file (a key on the command line shows in `ps`). */
static char *read_key_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        kvrt_cli_error(SRV_PROG, "--api-key-file %s: %s", path, strerror(errno));
        return NULL;
    }
    char *line = NULL, *key = NULL; /* any length: a fixed buffer would cut a long key short */
    size_t cap = 0;
    if (getline(&line, &cap, f) >= 0) {
        line[strcspn(line, "\r\n")] = '\0';
        key = line[0] ? strdup(line) : NULL;
    }
    free(line);
    fclose(f);
    if (!key)
        kvrt_cli_error(SRV_PROG, "--api-key-file %s: the first line is empty", path);
    return key;
}

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, srv_options *o)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = 8080;
    o->ep = kvrt_engine_default_params();
    o->max_queue = 256;
    o->max_body = 1u << 20;
    o->max_connections = 512;
    o->shutdown_grace = 5;
    kvrt_cli_common_init(&o->common, KVRT_DTYPE_F32, 1);
    const char *api_key = NULL, *api_key_file = NULL;
    bool no_prefix_cache = false, context_shift = false;
    int preempt = 0;
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_STR('m', "model", &o->model_path, "FILE", "GGUF model, or llama2.c checkpoint (.bin, with -z)"),
        KVRT_CLI_STR('z', "tokenizer", &o->tokenizer_path, "FILE", "llama2.c tokenizer.bin (checkpoints only)"),
        KVRT_CLI_STR(0, "model-name", &o->model_name, "NAME",
                     "the name clients use in \"model\" (default: the file name\nwithout its extension)"),
        KVRT_CLI_STR(0, "chat-template", &o->chat_template, "NAME",
                     "chat template for /v1/chat/completions (default: the model file's;\n"
                     "a model without one gets a plain transcript)"),
        KVRT_CLI_STR(0, "host", &o->host, "ADDR", "address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)"),
        KVRT_CLI_INT32(0, "port", &o->port, 0, 65535, "N", "TCP port (default 8080; 0 = any free port)"),
        KVRT_CLI_STR(0, "api-key", &api_key, "KEY",
                     "require 'Authorization: Bearer KEY' on /v1/* (also from\nthe KVRT_API_KEY environment variable)"),
        KVRT_CLI_STR(0, "api-key-file", &api_key_file, "FILE", "the same, the key read from FILE's first line"),
        {.short_name = 'c', .name = "ctx", .kind = KVRT_CLI_KIND_INT32, .dst = &o->ep.max_context, .min = 1,
         .max = INT32_MAX / 2, .flags = KVRT_CLI_K_SUFFIX, .meta = "N",
         .help = "context length per sequence (default: the model's)"},
        KVRT_CLI_INT32(0, "max-seqs", &o->ep.max_seqs, 1, 4096, "N", "sequences per engine step (default 64)"),
        {.name = "max-batched-tokens", .kind = KVRT_CLI_KIND_INT32, .dst = &o->ep.max_batched_tokens, .min = 1,
         .max = 1 << 20, .flags = KVRT_CLI_K_SUFFIX, .meta = "N", .help = "tokens per engine step (default 256)"},
        KVRT_CLI_INT32(0, "num-blocks", &o->ep.num_blocks, 0, INT32_MAX, "N",
                       "KV blocks (default 0: max-seqs full contexts, at most 1 GiB)"),
        KVRT_CLI_BOOL(0, "no-prefix-cache", &no_prefix_cache, "do not reuse cached prompt blocks"),
        KVRT_CLI_CHOICE(0, "preempt", &preempt, PREEMPT_MODES, "MODE",
                        "recompute (default) or swap, when KV blocks run out"),
        KVRT_CLI_INT32(0, "host-blocks", &o->ep.num_host_blocks, 0, INT32_MAX, "N",
                       "host-tier blocks for --preempt swap"),
        KVRT_CLI_BOOL(0, "context-shift", &context_shift,
                      "a completion that fills the context keeps going: the first --sinks\n"
                      "tokens stay, the oldest blocks after them are dropped"),
        KVRT_CLI_INT32(0, "sinks", &o->ep.n_sinks, 0, INT32_MAX, "N",
                       "tokens --context-shift keeps at the start, rounded up to whole\nblocks (default 4)"),
        KVRT_CLI_INT32(0, "max-queue", &o->max_queue, 0, 1 << 20, "N",
                       "requests admitted beyond --max-seqs before 429 (default 256)"),
        KVRT_CLI_CALL(0, "max-body", parse_size, &o->max_body, "BYTES",
                      "largest request body, k/M suffixes (default 1M)"),
        KVRT_CLI_INT32(0, "max-connections", &o->max_connections, 1, 1 << 16, "N",
                       "open connections at once (default 512)"),
        KVRT_CLI_FLOAT(0, "shutdown-timeout", &o->shutdown_grace, 0.0, 3600.0, "S",
                       "seconds in-flight requests may finish on SIGINT/SIGTERM\n(default 5; then they are "
                       "cancelled)"),
    };
    const kvrt_cli_spec spec = {
        .prog = SRV_PROG,
        .usage = "kvrt-server -m MODEL [options]",
        .about = "Serves a model over HTTP with OpenAI's API (POST /v1/completions, /v1/chat/completions,\n"
                 "GET /v1/models), GET /health, GET /metrics (Prometheus) and a chat page at /.\n"
                 "Prints the URL on stdout once listening; stops cleanly on SIGINT/SIGTERM.",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
        .common = &o->common,
    };
    int first_arg;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first_arg);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    if (!o->model_path) {
        kvrt_cli_error(SRV_PROG, "no model given (-m FILE); see --help");
        return KVRT_CLI_USAGE;
    }
    if (api_key && api_key_file) {
        kvrt_cli_error(SRV_PROG, "give the key with one of --api-key and --api-key-file, not both");
        return KVRT_CLI_USAGE;
    }
    o->ep.kv_type = o->common.kv_type;
    o->ep.kv_type_v_set = 1;
    o->ep.kv_type_v = o->common.kv_type_v;
    o->ep.block_size = o->common.block_size;
    o->ep.enable_prefix_cache = !no_prefix_cache;
    o->ep.context_shift = context_shift;
    o->ep.preempt_mode = preempt ? KVRT_PREEMPT_SWAP : KVRT_PREEMPT_RECOMPUTE;
    o->verbose = o->common.verbose > 0;
    const char *env = getenv("KVRT_API_KEY");
    if (api_key_file && !(o->api_key = read_key_file(api_key_file)))
        return KVRT_CLI_USAGE;
    if (!o->api_key && (api_key || (env && *env)) && !(o->api_key = strdup(api_key ? api_key : env)))
        return KVRT_CLI_FAILURE;
    if (!kvrt_cli_common_resolve(SRV_PROG, &o->common))
        return KVRT_CLI_USAGE;
    return KVRT_CLI_CONTINUE;
}

/* The served name: --model-name, else the file name without folders and extension. */
static bool set_model_name(srv *s)
{
    const char *name = s->o.model_name;
    if (!name) {
        const char *base = strrchr(s->o.model_path, '/');
        base = base ? base + 1 : s->o.model_path;
        size_t n = strlen(base);
        const char *dot = strrchr(base, '.');
        if (dot && dot != base && (!strcmp(dot, ".gguf") || !strcmp(dot, ".bin")))
            n = (size_t)(dot - base);
        snprintf(s->model_name, sizeof s->model_name, "%.*s", (int)n, base);
    } else {
        snprintf(s->model_name, sizeof s->model_name, "%s", name);
    }
    for (const unsigned char *p = (const unsigned char *)s->model_name; *p; p++)
        if (*p < 0x20 || *p >= 0x7f || *p == '"' || *p == '\\') {
            kvrt_cli_error(SRV_PROG, "the model name '%s' must be printable ASCII without quotes or backslashes "
                           "(use --model-name)", s->model_name);
            return false;
        }
    if (!s->model_name[0]) {
        kvrt_cli_error(SRV_PROG, "the model name is empty (use --model-name)");
        return false;
    }
    return true;
}

static bool srv_init(srv *s)
{
    s->started_at = (int64_t)time(NULL);
    srv_counters_init(&s->counters);
    pthread_condattr_init(&s->cv_attr);
    pthread_condattr_setclock(&s->cv_attr, CLOCK_MONOTONIC);
    return pthread_mutex_init(&s->mu, NULL) == 0 && pthread_cond_init(&s->engine_cv, &s->cv_attr) == 0 &&
           pthread_cond_init(&s->snap_cv, &s->cv_attr) == 0 && pthread_cond_init(&s->idle_cv, &s->cv_attr) == 0;
}

static void srv_fini(srv *s)
{
    pthread_cond_destroy(&s->engine_cv);
    pthread_cond_destroy(&s->snap_cv);
    pthread_cond_destroy(&s->idle_cv);
    pthread_condattr_destroy(&s->cv_attr);
    pthread_mutex_destroy(&s->mu);
    free(s->o.api_key);
}

/* Waits up to `seconds` for no request in flight; a signal cuts it short. */
static void wait_idle(srv *s, const sigset_t *sigs, double seconds)
{
    double until = srv_now() + seconds;
    struct timespec poll_ts = {0, 50 * 1000000L};
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int64_t n = s->inflight;
        pthread_mutex_unlock(&s->mu);
        if (n == 0 || srv_now() >= until || sigtimedwait(sigs, NULL, &poll_ts) > 0)
            return;
    }
}

static void shut_down(srv *s, const sigset_t *sigs)
{
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    int64_t n = s->inflight;
    pthread_mutex_unlock(&s->mu);
    fprintf(stderr, "%s: stopping: %lld requests in flight, %.0f s to finish\n", SRV_PROG, (long long)n,
            s->o.shutdown_grace);
    wait_idle(s, sigs, s->o.shutdown_grace);
    pthread_mutex_lock(&s->mu);
    s->cancel_all = true;
    s->wake++;
    pthread_cond_signal(&s->engine_cv);
    while (s->inflight > 0 && !s->engine_gone)
        pthread_cond_wait(&s->idle_cv, &s->mu);
    /* every request is answered; let the connections write their last bytes (a
     * slow reader gets 10 s) before the daemon closes them */
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += 10;
    while (s->open_requests > 0 && pthread_cond_timedwait(&s->idle_cv, &s->mu, &until) == 0)
        ;
    pthread_mutex_unlock(&s->mu);
    srv_engine_stop(s);
    srv_http_stop(s);
}

static pthread_t main_thread;

/* The threaded OpenBLAS starts its workers in a library constructor, before
 * main can block SIGINT/SIGTERM for them: a signal the kernel hands to one of
 * them is passed on to the main thread, which blocks it, so sigwait takes it
 * (the default action would kill the process mid-shutdown). */
static void forward_to_main(int sig)
{
    int saved = errno;
    pthread_kill(main_thread, sig);
    errno = saved;
}

int main(int argc, char **argv)
{
    /* Signals go to sigwait() below, never to a handler: block them before
     * any thread starts (--backend auto's device probe starts driver threads
     * already), so every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    main_thread = pthread_self();
    struct sigaction forward = {.sa_handler = forward_to_main};
    sigemptyset(&forward.sa_mask);
    sigaction(SIGINT, &forward, NULL);
    sigaction(SIGTERM, &forward, NULL);
    signal(SIGPIPE, SIG_IGN);
    static srv s; /* big (the metrics snapshot); one per process */
    int rc = parse_args(argc, argv, &s.o);
    if (rc != KVRT_CLI_CONTINUE) {
        free(s.o.api_key);
        return rc;
    }
    if (!set_model_name(&s) || !srv_init(&s)) {
        free(s.o.api_key);
        return 1;
    }
    if (!srv_http_start(&s)) {
        srv_fini(&s);
        return 1;
    }
    bool v6 = strchr(s.o.host, ':') != NULL;
    printf("http://%s%s%s:%d/\n", v6 ? "[" : "", s.o.host, v6 ? "]" : "", s.port);
    fflush(stdout);
    fprintf(stderr, "%s: listening on http://%s%s%s:%d/, loading %s\n", SRV_PROG, v6 ? "[" : "", s.o.host,
            v6 ? "]" : "", s.port, s.o.model_path);
    if (!srv_engine_open(&s) || !srv_engine_start(&s)) {
        srv_http_stop(&s);
        srv_engine_close(&s);
        srv_fini(&s);
        return 1;
    }
    pthread_mutex_lock(&s.mu);
    s.ready = true;
    pthread_mutex_unlock(&s.mu);
    fprintf(stderr, "%s: ready: model '%s', context %d, up to %d sequences%s\n", SRV_PROG, s.model_name,
            (int)s.max_context, (int)s.o.ep.max_seqs, s.o.api_key ? ", API key required" : "");
    int sig;
    while (sigwait(&sigs, &sig) != 0)
        ;
    fprintf(stderr, "%s: %s received\n", SRV_PROG, sig == SIGINT ? "SIGINT" : "SIGTERM");
    shut_down(&s, &sigs);
    srv_engine_close(&s);
    srv_fini(&s);
    fprintf(stderr, "%s: stopped\n", SRV_PROG);
    return 0;
}
