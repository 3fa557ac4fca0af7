/* kvrt-run: generate text with a Llama model on the paged KV cache.
 * Stdout carries only text (the decoded prompt, then the generation);
 * speeds, progress, warnings and errors go to stderr (DESIGN.md). */
#include "kvrt.h"
#include "kvrt_opencl.h"
#include "kvrt_vulkan.h"
#include "profile_report.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct run_args {
    const char *model, *tokenizer, *prompt, *backend, *device, *dump_logits, *pipeline_cache;
    int n_predict, threads, ctx, block_size, batch, verbose, ignore_eos, truncate, list_devices, profile;
    kvrt_dtype kv_type;
    kvrt_sampler_params sp;
    long long seed;
} run_args;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvrt-run -m MODEL [options]\n"
            "\n"
            "Generates text with a Llama-family model (GGUF, or a llama2.c checkpoint with -z).\n"
            "\n"
            "  -m, --model FILE        GGUF model, or llama2.c checkpoint (.bin)\n"
            "  -z, --tokenizer FILE    llama2.c tokenizer.bin (checkpoints only)\n"
            "  -p, --prompt TEXT       prompt (default: empty = BOS alone)\n"
            "  -n, --n-predict N       tokens to generate (default 128)\n"
            "      --temp T            temperature, <= 0 = greedy (default 0.8)\n"
            "      --top-k N           (default 40, 0 = off)\n"
            "      --top-p P           (default 0.95, 1 = off)\n"
            "      --min-p P           (default 0.05, 0 = off)\n"
            "      --repeat-penalty R  (default 1.0 = off)\n"
            "      --repeat-last-n N   (default 64)\n"
            "  -s, --seed N            RNG seed (default -1 = from the clock)\n"
            "  -t, --threads N         CPU threads (default: all cores)\n"
            "  -c, --ctx N             context length (default: the model's)\n"
            "  -b, --batch-size N      prompt tokens per forward (prefill chunk, default 512)\n"
            "      --block-size N      KV block size 8, 16 or 32 (default 16)\n"
            "      --kv-type TYPE      f32 or f16 (default f32)\n"
            "      --backend NAME      cpu, vulkan or opencl (default cpu)\n"
            "      --device N|NAME     GPU device index or name\n"
            "      --list-devices      list the devices of --backend and exit\n"
            "      --pipeline-cache FILE  load compiled GPU pipelines from FILE, save new ones there\n"
            "      --ignore-eos        keep generating after end-of-sequence\n"
            "      --truncate-prompt   keep the end of a prompt longer than the context\n"
            "      --dump-logits FILE  write float32 logits of every computed position (positions x vocab)\n"
            "      --profile           time per op (device time on GPUs); a table on stderr after the run\n"
            "  -v, --verbose           more detail on stderr\n"
            "  -h, --help              this text\n");
}

static int parse_int(const char *flag, const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "kvrt-run: %s expects an integer in [%lld, %lld], got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *flag, const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || *end || end == s || v != v) {
        fprintf(stderr, "kvrt-run: %s expects a number, got '%s'\n", flag, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* Returns 0 on success, 1 after --help, -1 on a usage error. */
static int parse_args(int argc, char **argv, run_args *a)
{
    memset(a, 0, sizeof(*a));
    a->prompt = "";
    a->backend = "cpu";
    a->n_predict = 128;
    a->block_size = 16;
    a->batch = 512;
    a->kv_type = KVRT_DTYPE_F32;
    a->sp = kvrt_sampler_default_params();
    a->seed = -1;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(f, "-v") || !strcmp(f, "--verbose")) { a->verbose = 1; continue; }
        if (!strcmp(f, "--ignore-eos")) { a->ignore_eos = 1; continue; }
        if (!strcmp(f, "--truncate-prompt")) { a->truncate = 1; continue; }
        if (!strcmp(f, "--list-devices")) { a->list_devices = 1; continue; }
        if (!strcmp(f, "--profile")) { a->profile = 1; continue; }
        if (f[0] != '-') {
            fprintf(stderr, "kvrt-run: unexpected argument '%s' (the prompt goes after -p); see --help\n", f);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "kvrt-run: option '%s' is unknown or needs a value; see --help\n", f);
            return -1;
        }
        const char *v = argv[++i];
        long long n;
        int rc = 0;
        if (!strcmp(f, "-m") || !strcmp(f, "--model")) a->model = v;
        else if (!strcmp(f, "-z") || !strcmp(f, "--tokenizer")) a->tokenizer = v;
        else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) a->prompt = v;
        else if (!strcmp(f, "--backend")) a->backend = v;
        else if (!strcmp(f, "--device")) a->device = v;
        else if (!strcmp(f, "--pipeline-cache")) a->pipeline_cache = v;
        else if (!strcmp(f, "--dump-logits")) a->dump_logits = v;
        else if (!strcmp(f, "-n") || !strcmp(f, "--n-predict")) { rc = parse_int(f, v, 0, INT_MAX, &n); a->n_predict = (int)n; }
        else if (!strcmp(f, "-t") || !strcmp(f, "--threads")) { rc = parse_int(f, v, 1, 1024, &n); a->threads = (int)n; }
        else if (!strcmp(f, "-c") || !strcmp(f, "--ctx")) { rc = parse_int(f, v, 1, INT_MAX, &n); a->ctx = (int)n; }
        else if (!strcmp(f, "-b") || !strcmp(f, "--batch-size")) { rc = parse_int(f, v, 1, 1 << 20, &n); a->batch = (int)n; }
        else if (!strcmp(f, "--block-size")) { rc = parse_int(f, v, 1, 1024, &n); a->block_size = (int)n; }
        else if (!strcmp(f, "--top-k")) { rc = parse_int(f, v, 0, INT_MAX, &n); a->sp.top_k = (int32_t)n; }
        else if (!strcmp(f, "--repeat-last-n")) { rc = parse_int(f, v, 0, 1 << 20, &n); a->sp.repeat_last_n = (int32_t)n; }
        else if (!strcmp(f, "-s") || !strcmp(f, "--seed")) rc = parse_int(f, v, -1, LLONG_MAX, &a->seed);
        else if (!strcmp(f, "--temp")) rc = parse_float(f, v, &a->sp.temperature);
        else if (!strcmp(f, "--top-p")) rc = parse_float(f, v, &a->sp.top_p);
        else if (!strcmp(f, "--min-p")) rc = parse_float(f, v, &a->sp.min_p);
        else if (!strcmp(f, "--repeat-penalty")) rc = parse_float(f, v, &a->sp.repeat_penalty);
        else if (!strcmp(f, "--kv-type")) {
            if (!strcmp(v, "f32")) a->kv_type = KVRT_DTYPE_F32;
            else if (!strcmp(v, "f16")) a->kv_type = KVRT_DTYPE_F16;
            else { fprintf(stderr, "kvrt-run: --kv-type must be f32 or f16, got '%s'\n", v); rc = -1; }
        } else {
            fprintf(stderr, "kvrt-run: unknown option '%s'; see --help\n", f);
            return -1;
        }
        if (rc)
            return -1;
    }
    if (!a->model && !a->list_devices) {
        fprintf(stderr, "kvrt-run: no model given (-m FILE); see --help\n");
        return -1;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Loading progress, for files big enough to take a while. */
static void show_progress(void *user, double fraction)
{
    int *last = user, pct = (int)(fraction * 100.0 + 0.5);
    if (pct == *last)
        return;
    *last = pct;
    fprintf(stderr, "\rkvrt-run: loading %3d%%%s", pct, pct >= 100 ? "\n" : "");
}

/* Streams bytes to stdout, holding back an incomplete UTF-8 sequence so only
 * whole characters are written. */
typedef struct utf8_out {
    char pending[8];
    int n_pending;
} utf8_out;

static int utf8_expected_len(unsigned char c)
{
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) return 2;
    if ((c & 0xf0) == 0xe0) return 3;
    if ((c & 0xf8) == 0xf0) return 4;
    return 1; /* stray continuation or invalid lead: pass through */
}

static void utf8_write(utf8_out *u, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        u->pending[u->n_pending++] = s[i];
        int want = utf8_expected_len((unsigned char)u->pending[0]);
        bool cont_ok = u->n_pending == 1 || ((unsigned char)s[i] & 0xc0) == 0x80;
        if (!cont_ok) { /* broken sequence: flush what we have, restart with this byte */
            fwrite(u->pending, 1, (size_t)u->n_pending - 1, stdout);
            u->pending[0] = s[i];
            u->n_pending = 1;
            want = utf8_expected_len((unsigned char)s[i]);
        }
        if (u->n_pending >= want) {
            fwrite(u->pending, 1, (size_t)u->n_pending, stdout);
            u->n_pending = 0;
        }
    }
    fflush(stdout);
}

static void utf8_flush(utf8_out *u)
{
    fwrite(u->pending, 1, (size_t)u->n_pending, stdout);
    u->n_pending = 0;
    fflush(stdout);
}

static void emit_token(kvrt_model *m, utf8_out *u, int32_t prev, int32_t tok)
{
    char buf[256];
    size_t len = 0;
    if (kvrt_token_to_text(m, prev, tok, buf, sizeof(buf), &len) == KVRT_OK)
        utf8_write(u, buf, len);
}

typedef struct run_state {
    run_args *a;
    kvrt_context *ctx;
    kvrt_model *model;
    kvrt_session *sess;
    kvrt_sampler *sampler;
    kvrt_model_info info;
    FILE *dump;
    float *logits;   /* [n_vocab] */
    int32_t *prompt; /* [n_prompt] */
    int32_t n_prompt;
} run_state;

static int fail(const char *what, kvrt_status s, const char *msg)
{
    fprintf(stderr, "kvrt-run: %s: %s (%s)\n", what, msg && *msg ? msg : kvrt_status_str(s), kvrt_status_str(s));
    return 1;
}

static int setup(run_state *st)
{
    run_args *a = st->a;
    kvrt_error err;
    kvrt_context_params cp = kvrt_context_default_params();
    if (kvrt_backend_parse(a->backend, &cp.backend) != KVRT_OK) {
        fprintf(stderr, "kvrt-run: unknown backend '%s' (cpu, vulkan, opencl)\n", a->backend);
        return 2;
    }
    cp.n_threads = a->threads;
    cp.pipeline_cache_path = a->pipeline_cache;
    if (a->device && cp.backend == KVRT_BACKEND_CPU)
        fprintf(stderr, "kvrt-run: warning: --device is for GPU backends; the cpu backend ignores it\n");
    if (a->device) {
        char *end;
        long idx = strtol(a->device, &end, 10);
        if (*end == '\0')
            cp.device_index = (int32_t)idx;
        else
            cp.device_name = a->device;
    }
    kvrt_status s = kvrt_context_create(&cp, &st->ctx, &err);
    if (s != KVRT_OK)
        return fail("backend", s, err.message);
    if (a->verbose)
        fprintf(stderr, "kvrt-run: %s\n", kvrt_context_description(st->ctx));
    if (a->profile && !kvrt_tool_profile_enable(st->ctx, "kvrt-run"))
        return 1;
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = a->model;
    mp.tokenizer_path = a->tokenizer;
    struct stat sb;
    static int last_pct = -1;
    if (stat(a->model, &sb) == 0 && sb.st_size >= ((off_t)256 << 20)) {
        mp.progress = show_progress;
        mp.progress_user = &last_pct;
    }
    mp.max_context = a->ctx;
    s = kvrt_model_load(st->ctx, &mp, &st->model, &err);
    if (s != KVRT_OK)
        return fail("loading the model", s, err.message);
    kvrt_model_get_info(st->model, &st->info);
    if (a->verbose)
        for (int t = 0; t < (int)(sizeof(st->info.tensors_of_type) / sizeof(st->info.tensors_of_type[0])); t++)
            if (st->info.tensors_of_type[t] > 0)
                fprintf(stderr, "kvrt-run: type %6s: %d tensors\n", kvrt_dtype_name((kvrt_dtype)t),
                        st->info.tensors_of_type[t]);
    if (a->ctx > st->info.n_ctx_train)
        fprintf(stderr, "kvrt-run: warning: --ctx %d exceeds the context length the file states (%d)\n", a->ctx,
                st->info.n_ctx_train);
    kvrt_session_params sp = kvrt_session_default_params();
    sp.block_size = a->block_size;
    sp.kv_type = a->kv_type;
    sp.n_batch = a->batch;
    s = kvrt_session_create(st->model, &sp, &st->sess, &err);
    if (s != KVRT_OK)
        return fail("creating the KV cache", s, err.message);
    if (a->seed < 0)
        a->seed = (long long)time(NULL);
    st->a->sp.seed = (uint64_t)a->seed;
    s = kvrt_sampler_create(&a->sp, st->info.n_vocab, NULL, &st->sampler, &err);
    if (s != KVRT_OK)
        return fail("sampling options", s, err.message);
    st->logits = malloc((size_t)st->info.n_vocab * sizeof(float));
    if (!st->logits)
        return fail("setup", KVRT_ERR_OUT_OF_HOST_MEMORY, NULL);
    if (a->dump_logits && !(st->dump = fopen(a->dump_logits, "wb"))) {
        fprintf(stderr, "kvrt-run: cannot write '%s': %s\n", a->dump_logits, strerror(errno));
        return 1;
    }
    return 0;
}

static int tokenize_prompt(run_state *st)
{
    size_t len = strlen(st->a->prompt);
    int32_t n = 0;
    kvrt_status s = kvrt_tokenize(st->model, st->a->prompt, len, 1, NULL, 0, &n);
    if (s != KVRT_OK && n == 0)
        return fail("tokenizing the prompt", s, kvrt_model_message(st->model));
    st->prompt = malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    if (!st->prompt)
        return fail("tokenizing", KVRT_ERR_OUT_OF_HOST_MEMORY, NULL);
    s = kvrt_tokenize(st->model, st->a->prompt, len, 1, st->prompt, n, &st->n_prompt);
    if (s != KVRT_OK)
        return fail("tokenizing the prompt", s, kvrt_model_message(st->model));
    if (st->n_prompt == 0) { /* a vocabulary without BOS and an empty prompt */
        fprintf(stderr, "kvrt-run: the prompt is empty and the vocabulary has no BOS token\n");
        return 1;
    }
    kvrt_session_stats stats;
    kvrt_session_get_stats(st->sess, &stats);
    if (st->n_prompt > stats.n_ctx) {
        if (!st->a->truncate) {
            fprintf(stderr, "kvrt-run: the prompt has %d tokens, more than the context (%d); use a larger --ctx "
                    "or --truncate-prompt\n", (int)st->n_prompt, (int)stats.n_ctx);
            return 1;
        }
        int32_t keep = stats.n_ctx; /* keep BOS and the end of the prompt */
        int32_t drop = st->n_prompt - keep;
        memmove(st->prompt + 1, st->prompt + 1 + drop, (size_t)(keep - 1) * sizeof(int32_t));
        fprintf(stderr, "kvrt-run: warning: prompt truncated to its last %d tokens\n", (int)keep - 1);
        st->n_prompt = keep;
    }
    return 0;
}

static int dump_rows(run_state *st, const float *rows, int32_t n)
{
    if (st->dump && fwrite(rows, sizeof(float) * (size_t)st->info.n_vocab, (size_t)n, st->dump) != (size_t)n) {
        fprintf(stderr, "kvrt-run: writing %s failed\n", st->a->dump_logits);
        return 1;
    }
    return 0;
}

static int generate(run_state *st)
{
    run_args *a = st->a;
    utf8_out out = {{0}, 0};
    for (int32_t i = 0; i < st->n_prompt; i++) {
        emit_token(st->model, &out, i > 0 ? st->prompt[i - 1] : -1, st->prompt[i]);
        kvrt_sampler_accept(st->sampler, st->prompt[i]);
    }
    float *all = NULL;
    if (st->dump && !(all = malloc((size_t)st->n_prompt * st->info.n_vocab * sizeof(float))))
        return fail("dump", KVRT_ERR_OUT_OF_HOST_MEMORY, NULL);
    double t0 = now_s();
    kvrt_status s = kvrt_session_eval(st->sess, st->prompt, st->n_prompt, st->logits, all);
    double t_prompt = now_s() - t0;
    int rc = s != KVRT_OK ? fail("prompt", s, kvrt_session_message(st->sess)) : dump_rows(st, all, st->n_prompt);
    free(all);
    if (rc)
        return rc;
    int32_t prev = st->prompt[st->n_prompt - 1], n_gen = 0;
    double t_first = 0, t1 = now_s();
    kvrt_session_stats stats;
    while (n_gen < a->n_predict) {
        int32_t tok;
        if (kvrt_sampler_sample(st->sampler, st->logits, &tok) != KVRT_OK) {
            utf8_flush(&out);
            fprintf(stderr, "\nkvrt-run: the model produced NaN logits; stopping\n");
            return 1;
        }
        if (n_gen == 0)
            t_first = now_s() - t0;
        if (tok == st->info.eos_id && !a->ignore_eos)
            break;
        emit_token(st->model, &out, prev, tok);
        prev = tok;
        if (++n_gen == a->n_predict)
            break; /* the last token needs no forward */
        kvrt_session_get_stats(st->sess, &stats);
        if (stats.n_past >= stats.n_ctx) {
            utf8_flush(&out);
            fprintf(stderr, "\nkvrt-run: context full (%d positions); stopping\n", (int)stats.n_ctx);
            break;
        }
        s = kvrt_session_eval(st->sess, &tok, 1, st->logits, NULL);
        if (s != KVRT_OK)
            return fail("decode", s, kvrt_session_message(st->sess));
        if (dump_rows(st, st->logits, 1))
            return 1;
    }
    double t_gen = now_s() - t1;
    utf8_flush(&out);
    printf("\n");
    fflush(stdout);
    kvrt_session_get_stats(st->sess, &stats);
    fprintf(stderr, "\nkvrt-run: prompt %d tokens in %.3f s (%.1f tok/s), time to first token %.1f ms\n",
            (int)st->n_prompt, t_prompt, st->n_prompt / (t_prompt > 0 ? t_prompt : 1e-9), t_first * 1e3);
    fprintf(stderr, "kvrt-run: generated %d tokens in %.3f s (%.1f tok/s)\n", (int)n_gen, t_gen,
            n_gen > 1 && t_gen > 0 ? (n_gen - 1) / t_gen : 0.0);
    fprintf(stderr, "kvrt-run: KV cache: %d of %d blocks used (block size %d, %s, %.2f MiB pool), %d positions\n",
            (int)stats.blocks_used, (int)stats.blocks_total, (int)stats.block_size, kvrt_dtype_name(a->kv_type),
            stats.kv_bytes / 1048576.0, (int)stats.n_past);
    if (a->profile)
        kvrt_tool_profile_print(st->ctx, "kvrt-run: time per op (prompt and generation)", stderr);
    return 0;
}

/* --list-devices: one line per device on stdout, as --device takes them. */
static int list_devices(const char *backend)
{
    enum { MAX_DEVICES = 64 };
    if (!strcmp(backend, "cpu")) {
        printf("0: cpu (%ld threads)\n", sysconf(_SC_NPROCESSORS_ONLN));
        return 0;
    }
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    if (!strcmp(backend, "vulkan")) {
        kvrt_vulkan_device_info d[MAX_DEVICES];
        kvrt_error err;
        int32_t n = 0;
        if (kvrt_vulkan_list_devices(d, MAX_DEVICES, &n, &err) != KVRT_OK)
            return fail("listing Vulkan devices", err.status, err.message);
        for (int32_t i = 0; i < n && i < MAX_DEVICES; i++)
            printf("%d: %s (%s, %.1f GiB device-local)\n", (int)d[i].index, d[i].name, d[i].type,
                   d[i].device_local_bytes / 1073741824.0);
        return 0;
    }
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    if (!strcmp(backend, "opencl")) {
        kvrt_opencl_device_info d[MAX_DEVICES];
        kvrt_error err;
        int32_t n = 0;
        if (kvrt_opencl_list_devices(d, MAX_DEVICES, &n, &err) != KVRT_OK)
            return fail("listing OpenCL devices", err.status, err.message);
        for (int32_t i = 0; i < n && i < MAX_DEVICES; i++)
            printf("%d: %s (%s, %s, %.1f GiB)\n", (int)d[i].index, d[i].name, d[i].platform,
                   d[i].is_gpu ? "gpu" : "not a gpu", d[i].global_mem / 1073741824.0);
        return 0;
    }
#endif
    fprintf(stderr, "kvrt-run: backend '%s' is unknown or not built in (cpu, vulkan, opencl)\n", backend);
    return 2;
}

int main(int argc, char **argv)
{
    run_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc > 0 ? 0 : 2;
    if (a.list_devices)
        return list_devices(a.backend);
    run_state st;
    memset(&st, 0, sizeof(st));
    st.a = &a;
    rc = setup(&st);
    if (!rc)
        rc = tokenize_prompt(&st);
    if (!rc)
        rc = generate(&st);
    if (st.dump && fclose(st.dump) != 0 && !rc)
        rc = fail("closing the logits file", KVRT_ERR_IO, NULL);
    free(st.logits);
    free(st.prompt);
    kvrt_sampler_destroy(st.sampler);
    kvrt_session_destroy(st.sess);
    kvrt_model_destroy(st.model);
    /* a cache that cannot be saved costs the next start time, not this run's output */
    if (st.ctx && kvrt_context_save_caches(st.ctx) != KVRT_OK)
        fprintf(stderr, "kvrt-run: warning: pipeline cache not saved: %s\n", kvrt_context_message(st.ctx));
    kvrt_context_destroy(st.ctx);
    return rc;
}
