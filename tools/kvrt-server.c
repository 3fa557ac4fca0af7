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
#include "openblas_core.h"
#include "server/server.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvrt-server -m MODEL [options]\n"
            "\n"
            "Serves a model over HTTP with OpenAI's API (POST /v1/completions, /v1/chat/completions,\n"
            "GET /v1/models), GET /health, GET /metrics (Prometheus) and a chat page at /.\n"
            "\n"
            "  -m, --model FILE          GGUF model, or llama2.c checkpoint (.bin, with -z)\n"
            "  -z, --tokenizer FILE      llama2.c tokenizer.bin (checkpoints only)\n"
            "      --model-name NAME     name clients use in \"model\" (default: the file name without\n"
            "                            its extension)\n"
            "      --host ADDR           address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)\n"
            "      --port N              TCP port (default 8080; 0 = any free port)\n"
            "      --api-key KEY         require 'Authorization: Bearer KEY' on /v1/* (also from the\n"
            "                            KVRT_API_KEY environment variable)\n"
            "      --api-key-file FILE   the same, the key read from the first line of FILE\n"
            "      --backend NAME        cpu (default), vulkan or opencl\n"
            "      --device N|NAME       GPU device index or name\n"
            "  -t, --threads N           CPU threads (default: all cores)\n"
            "      --pipeline-cache FILE load compiled GPU pipelines from FILE, save new ones there\n"
            "  -c, --ctx N               context length per sequence (default: the model's)\n"
            "      --max-seqs N          sequences per engine step (default 64)\n"
            "      --max-batched-tokens N  tokens per engine step (default 256)\n"
            "      --kv-type TYPE        f32 (default) or f16\n"
            "      --block-size N        KV block size 8, 16 (default) or 32\n"
            "      --num-blocks N        KV blocks (default 0: max-seqs full contexts, at most 1 GiB)\n"
            "      --no-prefix-cache     do not reuse cached prompt blocks\n"
            "      --preempt MODE        recompute (default) or swap, when blocks run out\n"
            "      --host-blocks N       host-tier blocks for --preempt swap\n"
            "      --max-queue N         requests admitted beyond --max-seqs before 429 (default 256)\n"
            "      --max-body BYTES      largest request body, k/M suffixes (default 1M)\n"
            "      --max-connections N   open connections at once (default 512)\n"
            "      --shutdown-timeout S  seconds in-flight requests may finish on SIGINT/SIGTERM\n"
            "                            (default 5; then they are cancelled)\n"
            "  -v, --verbose             log errors and details on stderr\n"
            "  -h, --help                this text\n"
            "      --version             the version\n"
            "\n"
            "exit status: 0 stopped by a signal, 1 failure, 2 usage error\n");
}

enum {
    OPT_MODEL_NAME = 256, OPT_HOST, OPT_PORT, OPT_API_KEY, OPT_API_KEY_FILE, OPT_BACKEND, OPT_DEVICE,
    OPT_PIPELINE_CACHE, OPT_MAX_SEQS, OPT_MAX_BATCHED, OPT_KV_TYPE, OPT_BLOCK_SIZE, OPT_NUM_BLOCKS,
    OPT_NO_PREFIX, OPT_PREEMPT, OPT_HOST_BLOCKS, OPT_MAX_QUEUE, OPT_MAX_BODY, OPT_MAX_CONN, OPT_SHUTDOWN,
    OPT_VERSION
};

static const struct option LONG_OPTS[] = {
    {"model", required_argument, NULL, 'm'},
    {"tokenizer", required_argument, NULL, 'z'},
    {"model-name", required_argument, NULL, OPT_MODEL_NAME},
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"api-key", required_argument, NULL, OPT_API_KEY},
    {"api-key-file", required_argument, NULL, OPT_API_KEY_FILE},
    {"backend", required_argument, NULL, OPT_BACKEND},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"threads", required_argument, NULL, 't'},
    {"pipeline-cache", required_argument, NULL, OPT_PIPELINE_CACHE},
    {"ctx", required_argument, NULL, 'c'},
    {"max-seqs", required_argument, NULL, OPT_MAX_SEQS},
    {"max-batched-tokens", required_argument, NULL, OPT_MAX_BATCHED},
    {"kv-type", required_argument, NULL, OPT_KV_TYPE},
    {"block-size", required_argument, NULL, OPT_BLOCK_SIZE},
    {"num-blocks", required_argument, NULL, OPT_NUM_BLOCKS},
    {"no-prefix-cache", no_argument, NULL, OPT_NO_PREFIX},
    {"preempt", required_argument, NULL, OPT_PREEMPT},
    {"host-blocks", required_argument, NULL, OPT_HOST_BLOCKS},
    {"max-queue", required_argument, NULL, OPT_MAX_QUEUE},
    {"max-body", required_argument, NULL, OPT_MAX_BODY},
    {"max-connections", required_argument, NULL, OPT_MAX_CONN},
    {"shutdown-timeout", required_argument, NULL, OPT_SHUTDOWN},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

/* A byte count with an optional k or M suffix (x1024, x1024^2). */
static bool parse_size(const char *flag, const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned long long mult = *end == 'k' || *end == 'K' ? 1024ull : *end == 'M' ? 1048576ull : 1ull;
    if (mult > 1)
        end++;
    if (errno || end == s || *end || s[0] == '-' || v == 0 || v > (1ull << 40) / mult) {
        kvrt_cli_error(SRV_PROG, "%s: '%s' is not a size in bytes (k and M suffixes allowed, at most 1T)", flag, s);
        return false;
    }
    *out = (size_t)(v * mult);
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
    char line[1024];
    char *key = NULL;
    if (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        key = line[0] ? strdup(line) : NULL;
    }
    fclose(f);
    if (!key)
        kvrt_cli_error(SRV_PROG, "--api-key-file %s: the first line is empty", path);
    return key;
}

static bool int_opt(const char *flag, const char *v, int64_t lo, int64_t hi, int64_t *out)
{
    return kvrt_cli_int(SRV_PROG, flag, v, lo, hi, true, out);
}

/* One option; false on a usage error. */
static bool apply_opt(srv_options *o, int c, const char *v)
{
    int64_t n = 0;
    static const char *const kv_types[] = {"f32", "f16"};
    static const char *const preempt[] = {"recompute", "swap"};
    int k;
    switch (c) {
    case 'm': o->model_path = v; return true;
    case 'z': o->tokenizer_path = v; return true;
    case OPT_MODEL_NAME: o->model_name = v; return true;
    case OPT_HOST: o->host = v; return true;
    case OPT_PORT: return int_opt("--port", v, 0, 65535, &n) && ((o->port = (int)n), true);
    case OPT_API_KEY:
        free(o->api_key);
        return (o->api_key = strdup(v)) != NULL;
    case OPT_API_KEY_FILE:
        free(o->api_key);
        return (o->api_key = read_key_file(v)) != NULL;
    case OPT_BACKEND:
        if (kvrt_backend_parse(v, &o->backend) == KVRT_OK)
            return true;
        kvrt_cli_error(SRV_PROG, "--backend: unknown backend '%s' (cpu, vulkan, opencl)", v);
        return false;
    case OPT_DEVICE: o->device = v; return true;
    case 't': return int_opt("--threads", v, 0, 4096, &n) && ((o->threads = (int)n), true);
    case OPT_PIPELINE_CACHE: o->pipeline_cache = v; return true;
    case 'c': return int_opt("--ctx", v, 1, INT32_MAX / 2, &n) && ((o->ep.max_context = (int32_t)n), true);
    case OPT_MAX_SEQS: return int_opt("--max-seqs", v, 1, 4096, &n) && ((o->ep.max_seqs = (int32_t)n), true);
    case OPT_MAX_BATCHED:
        return int_opt("--max-batched-tokens", v, 1, 1 << 20, &n) && ((o->ep.max_batched_tokens = (int32_t)n), true);
    case OPT_KV_TYPE:
        if ((k = kvrt_cli_choice(SRV_PROG, "--kv-type", v, kv_types, 2)) < 0)
            return false;
        o->ep.kv_type = k ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32;
        return true;
    case OPT_BLOCK_SIZE:
        if (!int_opt("--block-size", v, 8, 32, &n) || (n != 8 && n != 16 && n != 32)) {
            kvrt_cli_error(SRV_PROG, "--block-size: use 8, 16 or 32");
            return false;
        }
        o->ep.block_size = (int32_t)n;
        return true;
    case OPT_NUM_BLOCKS: return int_opt("--num-blocks", v, 0, INT32_MAX, &n) && ((o->ep.num_blocks = (int32_t)n), true);
    case OPT_NO_PREFIX: o->ep.enable_prefix_cache = 0; return true;
    case OPT_PREEMPT:
        if ((k = kvrt_cli_choice(SRV_PROG, "--preempt", v, preempt, 2)) < 0)
            return false;
        o->ep.preempt_mode = k ? KVRT_PREEMPT_SWAP : KVRT_PREEMPT_RECOMPUTE;
        return true;
    case OPT_HOST_BLOCKS:
        return int_opt("--host-blocks", v, 0, INT32_MAX, &n) && ((o->ep.num_host_blocks = (int32_t)n), true);
    case OPT_MAX_QUEUE: return int_opt("--max-queue", v, 0, 1 << 20, &n) && ((o->max_queue = (int32_t)n), true);
    case OPT_MAX_BODY: return parse_size("--max-body", v, &o->max_body);
    case OPT_MAX_CONN:
        return int_opt("--max-connections", v, 1, 1 << 16, &n) && ((o->max_connections = (int32_t)n), true);
    case OPT_SHUTDOWN:
        return int_opt("--shutdown-timeout", v, 0, 3600, &n) && ((o->shutdown_grace = (double)n), true);
    case 'v': o->verbose = true; return true;
    }
    kvrt_cli_error(SRV_PROG, "see --help");
    return false;
}

/* 0 ok, 1 printed help or version, 2 usage error. */
static int parse_args(int argc, char **argv, srv_options *o)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = 8080;
    o->backend = KVRT_BACKEND_CPU;
    o->ep = kvrt_engine_default_params();
    o->max_queue = 256;
    o->max_body = 1u << 20;
    o->max_connections = 512;
    o->shutdown_grace = 5.0;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:z:t:c:vh", LONG_OPTS, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 1;
        }
        if (c == OPT_VERSION) {
            printf("kvrt-server %s\n", kvrt_version());
            return 1;
        }
        if (c == '?' || c == ':') {
            kvrt_cli_error(SRV_PROG, c == ':' ? "option '%s' needs a value; see --help" : "unknown option '%s'; see --help",
                           argv[optind - 1]);
            return KVRT_CLI_USAGE;
        }
        if (!apply_opt(o, c, optarg))
            return KVRT_CLI_USAGE;
    }
    if (optind < argc) {
        kvrt_cli_error(SRV_PROG, "unexpected argument '%s'; see --help", argv[optind]);
        return KVRT_CLI_USAGE;
    }
    if (!o->model_path) {
        kvrt_cli_error(SRV_PROG, "no model given (-m FILE); see --help");
        return KVRT_CLI_USAGE;
    }
    const char *env = getenv("KVRT_API_KEY");
    if (!o->api_key && env && *env && !(o->api_key = strdup(env)))
        return 1;
    return 0;
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

int main(int argc, char **argv)
{
    kvrt_tool_openblas_reexec(argv);
    static srv s; /* big (the metrics snapshot); one per process */
    int rc = parse_args(argc, argv, &s.o);
    if (rc) {
        free(s.o.api_key);
        return rc == 1 ? 0 : rc;
    }
    if (!set_model_name(&s) || !srv_init(&s)) {
        free(s.o.api_key);
        return 1;
    }
    /* Signals go to sigtimedwait() below, never to a handler: block them before
     * any thread starts, so every thread inherits the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
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
