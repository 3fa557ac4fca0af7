/* kvrt-run: generate text with a Llama model on the paged KV cache.
 * Stdout carries only text (the decoded prompt, then the generation);
 * speeds, progress, warnings and errors go to stderr (DESIGN.md). */
#include "kvrt.h"
#include "kvrt_opencl.h"
#include "kvrt_vulkan.h"
#include "cli.h"
#include "files.h"
#include "profile_report.h"
#include "run_chat.h"
#include "token_text.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

typedef struct run_args {
    const char *model, *tokenizer, *prompt, *prompt_file, *dump_logits;
    const char *system, *chat_template; /* --chat */
    const char *prompt_cache;            /* --prompt-cache DIR */
    int64_t prompt_cache_max;            /* MiB */
    char *prompt_text;   /* -f: the file's bytes (owned) */
    size_t prompt_len;
    int32_t n_predict, ctx, batch, sinks;
    bool context_shift;
    bool ignore_eos, truncate, list_devices, profile, chat, special;
    kvrt_cli_common common; /* --backend --device -t --pipeline-cache --kv-type --block-size -v */
    kvrt_sampler_params sp;
    int64_t seed;
} run_args;

static const char *const PROG = "kvrt-run";

/* Returns KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, run_args *a)
{
    memset(a, 0, sizeof(*a));
    a->n_predict = 128;
    a->batch = 512;
    a->sinks = 4;
    a->prompt_cache_max = 1024;
    a->sp = kvrt_sampler_default_params();
    a->seed = -1;
    kvrt_cli_common_init(&a->common, KVRT_DTYPE_F32, 1);
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_STR('m', "model", &a->model, "FILE", "GGUF model, or llama2.c checkpoint (.bin)"),
        KVRT_CLI_STR('z', "tokenizer", &a->tokenizer, "FILE", "llama2.c tokenizer.bin (checkpoints only)"),
        KVRT_CLI_STR('p', "prompt", &a->prompt, "TEXT", "prompt (default: empty = BOS alone)"),
        KVRT_CLI_STR('f', "file", &a->prompt_file, "FILE",
                     "read the prompt from FILE ('-' = stdin), for prompts longer than\n"
                     "a command line allows"),
        KVRT_CLI_BOOL(0, "special", &a->special,
                      "special tokens written in the prompt (such as <|im_start|>) become\n"
                      "those tokens; without it the prompt is only text"),
        KVRT_CLI_BOOL(0, "chat", &a->chat,
                      "a conversation (also -cnv): each stdin line is a user turn in the\n"
                      "model's chat template, each reply goes to stdout; earlier turns\n"
                      "are never computed again (-v: prefill tokens per turn)"),
        KVRT_CLI_STR(0, "system", &a->system, "TEXT", "the conversation's system message (with --chat)"),
        KVRT_CLI_STR(0, "chat-template", &a->chat_template, "NAME",
                     "a built-in template instead of the file's: chatml, llama2, llama3,\n"
                     "mistral-v1, mistral-v3, mistral-v7, phi3, gemma, zephyr, deepseek, ..."),
        KVRT_CLI_INT32('n', "n-predict", &a->n_predict, 0, INT32_MAX, "N", "tokens to generate (default 128)"),
        KVRT_CLI_FLOAT(0, "temp", &a->sp.temperature, -FLT_MAX, FLT_MAX, "T",
                       "temperature, <= 0 = greedy (default 0.8)"),
        KVRT_CLI_INT32(0, "top-k", &a->sp.top_k, 0, INT32_MAX, "N", "(default 40, 0 = off)"),
        {.name = "top-p", .kind = KVRT_CLI_KIND_FLOAT, .dst = &a->sp.top_p, .fmin = 0.0, .fmax = 1.0,
         .flags = KVRT_CLI_ABOVE_MIN, .meta = "P", .help = "in (0, 1] (default 0.95, 1 = off)"},
        KVRT_CLI_FLOAT(0, "min-p", &a->sp.min_p, 0.0, 1.0, "P", "in [0, 1] (default 0.05, 0 = off)"),
        {.name = "repeat-penalty", .kind = KVRT_CLI_KIND_FLOAT, .dst = &a->sp.repeat_penalty, .fmin = 0.0,
         .fmax = FLT_MAX, .flags = KVRT_CLI_ABOVE_MIN, .meta = "R", .help = "(default 1.0 = off)"},
        KVRT_CLI_INT32(0, "repeat-last-n", &a->sp.repeat_last_n, 0, 1 << 20, "N", "(default 64)"),
        KVRT_CLI_INT64('s', "seed", &a->seed, -1, INT64_MAX, "N", "RNG seed (default -1 = from the clock)"),
        {.short_name = 'c', .name = "ctx", .kind = KVRT_CLI_KIND_INT32, .dst = &a->ctx, .min = 1, .max = INT32_MAX,
         .flags = KVRT_CLI_K_SUFFIX, .meta = "N", .help = "context length (default: the model's, capped at 4096)"},
        {.short_name = 'b', .name = "batch-size", .kind = KVRT_CLI_KIND_INT32, .dst = &a->batch, .min = 1,
         .max = 1 << 20, .flags = KVRT_CLI_K_SUFFIX, .meta = "N",
         .help = "prompt tokens per forward (prefill chunk, default 512)"},
        KVRT_CLI_BOOL(0, "list-devices", &a->list_devices, "list the devices of --backend and exit"),
        KVRT_CLI_BOOL(0, "ignore-eos", &a->ignore_eos, "keep generating after end-of-sequence / end-of-turn tokens"),
        KVRT_CLI_BOOL(0, "context-shift", &a->context_shift,
                      "when the context is full, keep the first --sinks tokens, drop the\n"
                      "oldest half of the rest and go on (endless generation)"),
        KVRT_CLI_INT32(0, "sinks", &a->sinks, 0, INT32_MAX, "N",
                       "tokens --context-shift keeps at the start, rounded up to whole\n"
                       "KV blocks (default 4)"),
        KVRT_CLI_STR(0, "prompt-cache", &a->prompt_cache, "DIR",
                     "keep the prompt's KV blocks in DIR (created when missing) and load\n"
                     "them in later runs that start with the same tokens on the same\n"
                     "model, KV type and block size, instead of computing them"),
        KVRT_CLI_INT64(0, "prompt-cache-max", &a->prompt_cache_max, 1, INT64_MAX / (1 << 20), "MIB",
                       "size cap of --prompt-cache's files; the least recently used go\n"
                       "first (default 1024 = 1 GiB)"),
        KVRT_CLI_BOOL(0, "truncate-prompt", &a->truncate, "keep the end of a prompt longer than the context"),
        KVRT_CLI_STR(0, "dump-logits", &a->dump_logits, "FILE",
                     "write float32 logits of every computed position (positions x vocab)"),
        KVRT_CLI_BOOL(0, "profile", &a->profile,
                      "time per op (device time on GPUs); a table on stderr after the run"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-run -m MODEL [options]",
        .about = "Generates text with a Llama-family model (GGUF, or a llama2.c checkpoint with -z).\n"
                 "Stdout carries only text: the decoded prompt, then the generation.",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
        .common = &a->common,
        .args_hint = "the prompt goes after -p, or in a file with -f",
    };
    /* llama.cpp's spelling of --chat */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--") == 0)
            break;
        else if (strcmp(argv[i], "-cnv") == 0)
            argv[i] = (char *)"--chat";
    int first_arg;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first_arg);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    if (!a->model && !a->list_devices) {
        kvrt_cli_error(PROG, "no model given (-m FILE); see --help");
        return KVRT_CLI_USAGE;
    }
    if (a->prompt && a->prompt_file) {
        kvrt_cli_error(PROG, "give the prompt with one of -p and -f, not both");
        return KVRT_CLI_USAGE;
    }
    if (!a->chat && (a->system || a->chat_template)) {
        kvrt_cli_error(PROG, "--system and --chat-template go with --chat");
        return KVRT_CLI_USAGE;
    }
    if (a->chat && (a->prompt || a->prompt_file || a->dump_logits)) {
        kvrt_cli_error(PROG, "--chat reads its turns from stdin: no -p, -f or --dump-logits");
        return KVRT_CLI_USAGE;
    }
    return KVRT_CLI_CONTINUE;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
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

/* Writes a token's text, however long (the buffer grows to fit it). 0, or 1
 * after saying why on stderr. */
static int emit_token(kvrt_model *m, utf8_out *u, int32_t prev, int32_t tok)
{
    static char *buf; /* kept for the next token; freed with the process */
    static size_t cap;
    size_t len = 0;
    kvrt_status s = kvrt_tool_append_token_text(m, prev, tok, &buf, &len, &cap);
    if (s != KVRT_OK) {
        utf8_flush(u);
        fprintf(stderr, "\nkvrt-run: token %d: %s\n", (int)tok,
                s == KVRT_ERR_OUT_OF_HOST_MEMORY ? "no memory for its text" : kvrt_model_message(m));
        return 1;
    }
    utf8_write(u, buf, len);
    return 0;
}

typedef struct run_state {
    run_args *a;
    kvrt_context *ctx;
    kvrt_model *model;
    kvrt_session *sess;
    kvrt_sampler *sampler;
    kvrt_model_info info;
    FILE *dump;          /* dump_file.f, or NULL without --dump-logits */
    kvrt_atomic_file dump_file;
    float *logits;   /* [n_vocab] */
    int32_t *prompt; /* [n_prompt] */
    int32_t n_prompt;
    kvrt_cli_progress progress;
} run_state;

static int fail(const char *what, kvrt_status s, const char *msg)
{
    fprintf(stderr, "kvrt-run: %s: %s (%s)\n", what, msg && *msg ? msg : kvrt_status_str(s), kvrt_status_str(s));
    return 1;
}

/* The backend (--backend auto resolved and said on stderr) and the context. */
static int setup_context(run_state *st)
{
    run_args *a = st->a;
    if (!kvrt_cli_common_resolve(PROG, &a->common))
        return KVRT_CLI_USAGE;
    kvrt_context_params cp = kvrt_context_default_params();
    kvrt_cli_common_context_params(&a->common, &cp);
    kvrt_error err;
    kvrt_status s = kvrt_context_create(&cp, &st->ctx, &err);
    if (s != KVRT_OK)
        return fail("backend", s, err.message);
    if (a->common.verbose)
        fprintf(stderr, "kvrt-run: %s\n", kvrt_context_description(st->ctx));
    if (a->profile && !kvrt_tool_profile_enable(st->ctx, "kvrt-run"))
        return 1;
    return 0;
}

static int setup(run_state *st)
{
    run_args *a = st->a;
    kvrt_error err;
    /* the logits file must not be one of the files read (a model truncated
     * under its own mapping): refused before anything is loaded */
    const char *const inputs[] = {a->model, a->tokenizer, a->common.pipeline_cache, a->prompt_file};
    if (a->dump_logits && !kvrt_tool_output_check(PROG, a->dump_logits, inputs, 4))
        return 1;
    int rc = setup_context(st);
    if (rc)
        return rc;
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = a->model;
    mp.tokenizer_path = a->tokenizer;
    /* loading progress, for files big enough to take a while (and only on a terminal) */
    struct stat sb;
    kvrt_cli_progress_init(&st->progress, PROG, "loading");
    if (stat(a->model, &sb) == 0 && sb.st_size >= ((off_t)256 << 20)) {
        mp.progress = kvrt_cli_progress_fn;
        mp.progress_user = &st->progress;
    }
    mp.max_context = a->ctx;
    mp.kv_type = a->common.kv_type;
    kvrt_status s = kvrt_model_load(st->ctx, &mp, &st->model, &err);
    if (s != KVRT_OK) /* a context too large for memory names the flag that asked for it */
        return fail(a->ctx ? "loading the model for --ctx" : "loading the model", s, err.message);
    kvrt_model_get_info(st->model, &st->info);
    if (a->common.verbose)
        for (int t = 0; t < (int)(sizeof(st->info.tensors_of_type) / sizeof(st->info.tensors_of_type[0])); t++)
            if (st->info.tensors_of_type[t] > 0)
                fprintf(stderr, "kvrt-run: type %6s: %d tensors\n", kvrt_dtype_name((kvrt_dtype)t),
                        st->info.tensors_of_type[t]);
    if (a->ctx > st->info.n_ctx_train)
        fprintf(stderr, "kvrt-run: warning: --ctx %d exceeds the context length the file states (%d)\n", a->ctx,
                st->info.n_ctx_train);
    if (!a->ctx) /* the default: the model's, capped */
        fprintf(stderr, "kvrt-run: context %d positions (%s; --ctx N to change)\n", st->info.max_context,
                st->info.max_context < st->info.n_ctx_train ? "the model's, capped" : "the model's");
    kvrt_session_params sp = kvrt_session_default_params();
    sp.block_size = a->common.block_size;
    sp.kv_type = a->common.kv_type;
    sp.n_batch = a->batch;
    sp.context_shift = a->context_shift;
    sp.n_sinks = a->sinks;
    sp.prompt_cache_dir = a->prompt_cache;
    sp.prompt_cache_max_bytes = (uint64_t)a->prompt_cache_max << 20;
    s = kvrt_session_create(st->model, &sp, &st->sess, &err);
    if (s != KVRT_OK)
        return fail("creating the KV cache", s, err.message);
    if (*kvrt_session_warning(st->sess))
        fprintf(stderr, "kvrt-run: warning: %s\n", kvrt_session_warning(st->sess));
    if (a->seed < 0)
        a->seed = (int64_t)time(NULL);
    st->a->sp.seed = (uint64_t)a->seed;
    s = kvrt_sampler_create(&a->sp, st->info.n_vocab, NULL, &st->sampler, &err);
    if (s != KVRT_OK)
        return fail("sampling options", s, err.message);
    st->logits = malloc((size_t)st->info.n_vocab * sizeof(float));
    if (!st->logits)
        return fail("setup", KVRT_ERR_OUT_OF_HOST_MEMORY, NULL);
    if (a->dump_logits) { /* whole or not at all: a failed run leaves no partial file */
        if (!kvrt_tool_output_open(PROG, a->dump_logits, inputs, 4, &st->dump_file))
            return 1;
        st->dump = st->dump_file.f;
    }
    return 0;
}

static int tokenize_prompt(run_state *st)
{
    const char *text = st->a->prompt_text;
    size_t len = st->a->prompt_len;
    int32_t n = 0;
    unsigned flags = KVRT_TOKENIZE_ADD_SPECIAL | (st->a->special ? KVRT_TOKENIZE_PARSE_SPECIAL : 0u);
    kvrt_status s = kvrt_tokenize(st->model, text, len, flags, NULL, 0, &n);
    if (s != KVRT_OK && n == 0)
        return fail("tokenizing the prompt", s, kvrt_model_message(st->model));
    st->prompt = malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    if (!st->prompt)
        return fail("tokenizing", KVRT_ERR_OUT_OF_HOST_MEMORY, NULL);
    s = kvrt_tokenize(st->model, text, len, flags, st->prompt, n, &st->n_prompt);
    if (s != KVRT_OK)
        return fail("tokenizing the prompt", s, kvrt_model_message(st->model));
    if (st->n_prompt == 0) { /* a vocabulary without BOS and an empty prompt */
        fprintf(stderr, "kvrt-run: the prompt is empty and the vocabulary has no BOS token\n");
        return 1;
    }
    kvrt_session_stats stats;
    kvrt_session_get_stats(st->sess, &stats);
    if (st->n_prompt > stats.n_ctx && !st->a->context_shift) {
        if (!st->a->truncate) {
            fprintf(stderr, "kvrt-run: the prompt has %d tokens, more than the context (%d); use a larger --ctx "
                    "or --truncate-prompt\n", (int)st->n_prompt, (int)stats.n_ctx);
            return 1;
        }
        /* keep the end of the prompt, and its BOS when it has one and there is
         * room for a prompt token after it (with --ctx 1, the last token) */
        int32_t keep = stats.n_ctx;
        int32_t head = keep >= 2 && st->info.bos_id >= 0 && st->prompt[0] == st->info.bos_id ? 1 : 0;
        int32_t drop = st->n_prompt - keep;
        memmove(st->prompt + head, st->prompt + head + drop, (size_t)(keep - head) * sizeof(int32_t));
        fprintf(stderr, "kvrt-run: warning: prompt truncated to its last %d tokens%s\n", (int)(keep - head),
                head ? " after BOS" : "");
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
        if (emit_token(st->model, &out, i > 0 ? st->prompt[i - 1] : -1, st->prompt[i]))
            return 1;
        kvrt_sampler_accept(st->sampler, st->prompt[i]);
    }
    float *all = NULL;
    if (st->dump && !(all = malloc((size_t)st->n_prompt * st->info.n_vocab * sizeof(float))))
        return fail("dump", KVRT_ERR_OUT_OF_HOST_MEMORY, NULL);
    double t0 = now_s();
    kvrt_status s = kvrt_session_eval(st->sess, st->prompt, st->n_prompt, st->logits, all);
    double t_prompt = now_s() - t0;
    int rc = s != KVRT_OK ? fail("prompt", s, kvrt_session_message(st->sess)) : dump_rows(st, all, st->n_prompt);
    if (rc == 0 && a->prompt_cache) {
        kvrt_session_stats ps;
        kvrt_session_get_stats(st->sess, &ps);
        if (ps.n_warnings > 0 && *kvrt_session_warning(st->sess))
            fprintf(stderr, "kvrt-run: warning: %s\n", kvrt_session_warning(st->sess));
        fprintf(stderr, "kvrt-run: prompt cache: %lld of %d prompt tokens loaded, %lld blocks written\n",
                (long long)ps.prompt_cache_hit_tokens, (int)st->n_prompt, (long long)ps.prompt_cache_written_blocks);
    }
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
        if (kvrt_token_is_eog(st->model, tok) && !a->ignore_eos)
            break;
        if (emit_token(st->model, &out, prev, tok))
            return 1;
        prev = tok;
        if (++n_gen == a->n_predict)
            break; /* the last token needs no forward */
        kvrt_session_get_stats(st->sess, &stats);
        if (stats.n_past >= stats.n_ctx && !a->context_shift) {
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
            (int)stats.blocks_used, (int)stats.blocks_total, (int)stats.block_size, kvrt_dtype_name(a->common.kv_type),
            stats.kv_bytes / 1048576.0, (int)stats.n_past);
    if (a->context_shift)
        fprintf(stderr, "kvrt-run: context shifts: %d (%lld tokens dropped)\n", (int)stats.n_shifts,
                (long long)stats.n_dropped);
    if (a->profile)
        kvrt_tool_profile_print(st->ctx, "kvrt-run: time per op (prompt and generation)", stderr);
    return 0;
}

/* --list-devices: one line per device on stdout, as --device takes them;
 * each line starts with `indent`. */
enum { MAX_DEVICES = 64 };

static int list_vulkan(const char *indent)
{
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    kvrt_vulkan_device_info d[MAX_DEVICES];
    kvrt_error err;
    int32_t n = 0;
    if (kvrt_vulkan_list_devices(d, MAX_DEVICES, &n, &err) != KVRT_OK)
        return fail("listing Vulkan devices", err.status, err.message);
    for (int32_t i = 0; i < n && i < MAX_DEVICES; i++)
        printf("%s%d: %s (%s, %.1f GiB device-local)\n", indent, (int)d[i].index, d[i].name, d[i].type,
               d[i].device_local_bytes / 1073741824.0);
    return 0;
#else
    (void)indent;
    kvrt_cli_error(PROG, "--backend vulkan: kvrt was built without Vulkan (configure with -DKVRT_VULKAN=ON)");
    return 1;
#endif
}

static int list_opencl(const char *indent)
{
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    kvrt_opencl_device_info d[MAX_DEVICES];
    kvrt_error err;
    int32_t n = 0;
    if (kvrt_opencl_list_devices(d, MAX_DEVICES, &n, &err) != KVRT_OK)
        return fail("listing OpenCL devices", err.status, err.message);
    for (int32_t i = 0; i < n && i < MAX_DEVICES; i++)
        printf("%s%d: %s (%s, %s, %.1f GiB)\n", indent, (int)d[i].index, d[i].name, d[i].platform,
               d[i].is_gpu ? "gpu" : "not a gpu", d[i].global_mem / 1073741824.0);
    return 0;
#else
    (void)indent;
    kvrt_cli_error(PROG, "--backend opencl: kvrt was built without OpenCL (configure with -DKVRT_OPENCL=ON)");
    return 1;
#endif
}

/* auto: every backend built in, then what auto picks among them. */
static int list_all(kvrt_cli_common *c)
{
    printf("cpu:\n  0: cpu (%ld threads)\n", sysconf(_SC_NPROCESSORS_ONLN));
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    printf("vulkan:\n");
    if (list_vulkan("  "))
        printf("  (none: no Vulkan loader)\n");
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    printf("opencl:\n");
    if (list_opencl("  "))
        printf("  (none: no OpenCL loader)\n");
#endif
    kvrt_error err;
    if (kvrt_backend_choose_auto(&c->choice, &err) != KVRT_OK)
        return fail("--backend auto", err.status, err.message);
    printf("auto: %s%s%s (%s)\n", kvrt_backend_name(c->choice.backend), c->choice.device[0] ? " " : "",
           c->choice.device, c->choice.reason);
    return 0;
}

static int list_devices(kvrt_cli_common *c)
{
    switch (c->backend) {
    case KVRT_BACKEND_CPU: printf("0: cpu (%ld threads)\n", sysconf(_SC_NPROCESSORS_ONLN)); return 0;
    case KVRT_BACKEND_VULKAN: return list_vulkan("");
    case KVRT_BACKEND_OPENCL: return list_opencl("");
    case KVRT_BACKEND_AUTO: return list_all(c);
    }
    return KVRT_CLI_USAGE;
}

/* The prompt's bytes, from -p or -f (a file or stdin), into a->prompt_text. */
static int read_prompt(run_args *a)
{
    if (a->prompt_file) {
        a->prompt_text = kvrt_cli_read_file(PROG, a->prompt_file, &a->prompt_len);
        return a->prompt_text ? 0 : 1;
    }
    const char *p = a->prompt ? a->prompt : "";
    a->prompt_len = strlen(p);
    a->prompt_text = malloc(a->prompt_len + 1);
    if (!a->prompt_text)
        return fail("prompt", KVRT_ERR_OUT_OF_HOST_MEMORY, NULL);
    memcpy(a->prompt_text, p, a->prompt_len + 1);
    return 0;
}

int main(int argc, char **argv)
{
    run_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    if (a.list_devices)
        return list_devices(&a.common);
    run_state st;
    memset(&st, 0, sizeof(st));
    st.a = &a;
    rc = a.chat ? 0 : read_prompt(&a);
    if (!rc)
        rc = setup(&st);
    if (!rc && a.chat) {
        kvrt_run_chat_opts co = {.system = a.system, .chat_template = a.chat_template, .n_predict = a.n_predict,
                                 .ignore_eos = a.ignore_eos, .verbose = a.common.verbose, .prompt_marks = isatty(0)};
        rc = kvrt_run_chat(st.model, st.sess, st.sampler, &co);
    } else {
        if (!rc)
            rc = tokenize_prompt(&st);
        if (!rc)
            rc = generate(&st);
    }
    kvrt_error err;
    if (st.dump && kvrt_tool_output_close(&st.dump_file, rc ? KVRT_ERR_IO : KVRT_OK, &err) != KVRT_OK && !rc)
        rc = fail("writing the logits file", err.status, err.message);
    free(st.logits);
    free(st.prompt);
    free(a.prompt_text);
    kvrt_sampler_destroy(st.sampler);
    kvrt_session_destroy(st.sess);
    kvrt_model_destroy(st.model);
    /* a cache that cannot be saved costs the next start time, not this run's output */
    kvrt_tool_save_caches(PROG, st.ctx);
    kvrt_context_destroy(st.ctx);
    return rc;
}
