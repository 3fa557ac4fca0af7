/*
 * kvrt-bench tokenize: tokenizer throughput, and what tokenizing a long
 * prompt costs next to computing it.
 *
 *   kvrt-bench tokenize [--vocab FILE]... [--mb N] [-m FILE] [--prompt-tokens N] [-t N] [--json]
 *
 * The text is N MiB (default 1) of mixed, deterministic text: English
 * prose, source code, numbers, whitespace runs, Chinese, Russian, Arabic
 * and emoji. Each vocabulary (default: the three of tests/data/vocab)
 * tokenizes it whole, best of three: MB/s and tokens/s. With --model (a
 * GGUF, e.g. `kvrt-synth --preset 110m`), the same run also times the
 * prefill of a prompt of --prompt-tokens tokens (default 4096) on the CPU
 * and reports, per vocabulary, the time to tokenize a text of that many
 * tokens as a share of it: the issue asks for under 5 %.
 */
#include "bench_tokenize.h"

#include "bench.h"
#include "cli.h"
#include "json.h"

#include "model/model_file.h"
#include "model/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const PROG = "kvrt-bench tokenize";

#define MAX_VOCABS 8
#define REPS 3

typedef struct tok_opts {
    const char *vocabs[MAX_VOCABS];
    int n_vocabs;
    int64_t mib;
    const char *model;
    int64_t prompt_tokens;
    bool json;
    kvrt_cli_common common; /* the prefill's backend, threads, KV type and block size */
} tok_opts;

/* --vocab FILE, repeatable. */
static bool parse_vocab(const char *prog, const char *flag, const char *value, void *dst)
{
    tok_opts *o = dst;
    if (o->n_vocabs == MAX_VOCABS) {
        kvrt_cli_error(prog, "%s: at most %d", flag, MAX_VOCABS);
        return false;
    }
    o->vocabs[o->n_vocabs++] = value;
    return true;
}

/* Without --vocab: the three of the source tree's tests/data/vocab, when
 * this tool runs beside that tree (an installed copy names its own). */
static int default_vocabs(tok_opts *o)
{
    static const char *const defaults[] = {KVRT_SOURCE_DIR "/tests/data/vocab/qwen3-vocab.gguf",
                                           KVRT_SOURCE_DIR "/tests/data/vocab/gpt-2-vocab.gguf",
                                           KVRT_SOURCE_DIR "/tests/data/vocab/phi-3-vocab.gguf"};
    for (size_t k = 0; k < KVRT_ARRAY_LEN(defaults); k++) {
        FILE *f = fopen(defaults[k], "rb");
        if (!f) {
            kvrt_cli_error(PROG, "no --vocab given and the default vocabularies of the source tree are not "
                                 "here (%s): pass --vocab FILE (any GGUF with a vocabulary)", defaults[k]);
            return KVRT_CLI_USAGE;
        }
        fclose(f);
        o->vocabs[o->n_vocabs++] = defaults[k];
    }
    return KVRT_CLI_CONTINUE;
}

static int parse_args(int argc, char **argv, tok_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->mib = 1;
    o->prompt_tokens = 4096;
    kvrt_cli_common_init(&o->common, KVRT_DTYPE_F32, 1); /* the sessions' default KV type */
    o->common.backend = KVRT_BACKEND_CPU;
    char vocab_help[160];
    snprintf(vocab_help, sizeof(vocab_help), "a GGUF with a vocabulary (repeatable; default: the source tree's\n"
                                             "tests/data/vocab/*)");
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_CALL(0, "vocab", parse_vocab, o, "FILE", vocab_help),
        KVRT_CLI_INT64(0, "mb", &o->mib, 1, 1024, "N", "MiB of text (default 1)"),
        KVRT_CLI_STR('m', "model", &o->model, "FILE",
                     "a GGUF model to time the prefill on (e.g. kvrt-synth --preset 110m)"),
        KVRT_CLI_INT64(0, "prompt-tokens", &o->prompt_tokens, 16, 1 << 20, "N",
                       "prompt length for the prefill comparison (default 4096; k suffix)"),
        KVRT_CLI_BOOL(0, "json", &o->json, "one JSON document on stdout, the table on stderr"),
    };
    kvrt_cli_opt opts_k[KVRT_ARRAY_LEN(opts)];
    memcpy(opts_k, opts, sizeof(opts));
    opts_k[3].flags = KVRT_CLI_K_SUFFIX;
    char about[400];
    snprintf(about, sizeof(about),
             "Tokenizer throughput on N MiB of mixed text (prose, code, numbers, whitespace, Chinese,\n"
             "Russian, Arabic, emoji), best of %d; with --model, tokenizing a prompt of --prompt-tokens\n"
             "tokens as a share of its prefill on that model (--backend, default cpu), in the same run.",
             REPS);
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-bench tokenize [--vocab FILE]... [--mb N] [-m FILE] [--prompt-tokens N] [-t N] [--json]",
        .about = about,
        .opts = opts_k,
        .n_opts = KVRT_ARRAY_LEN(opts_k),
        .common = &o->common,
    };
    int first;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first);
    if (rc == KVRT_CLI_CONTINUE && !kvrt_cli_common_resolve(PROG, &o->common))
        rc = KVRT_CLI_USAGE;
    if (rc == KVRT_CLI_CONTINUE && o->n_vocabs == 0)
        rc = default_vocabs(o);
    return rc;
}

/* ---- the text ------------------------------------------------------------------------------ */

static uint32_t pick(kvrt_bench_rng *r, uint32_t n)
{
    uint32_t k = (uint32_t)((kvrt_bench_rng_f32(r) + 1.0f) * 0.5f * (float)n);
    return k < n ? k : n - 1;
}

/* Appends s to buf[*o .. cap), as far as it fits. */
static void put(char *buf, size_t cap, size_t *o, const char *s)
{
    size_t n = strlen(s);
    if (*o + n > cap)
        n = cap - *o;
    memcpy(buf + *o, s, n);
    *o += n;
}

/* `bytes` of mixed text, the same every run. */
static char *mixed_text(size_t bytes)
{
    static const char *const prose[] = {"the", "model", "runs", "on", "every", "backend", "and", "its", "cache",
                                        "holds", "blocks", "of", "sixteen", "tokens", "while", "we're", "waiting",
                                        "for", "results", "It's", "what", "they'll", "say", "Hello", "world"};
    static const char *const code[] = {"int main(void) {\n", "    return x->y[3] >= 0x7f ? -1 : 2;\n", "}\n",
                                       "for (size_t i = 0; i < n; i++)\n", "\tsum += a[i] * b[i];\n",
                                       "def f(x):\n    return {'k': [1, 2, 3]}\n", "#include <stdio.h>\n"};
    static const char *const other[] = {
        "\xe6\x88\x91\xe6\x83\xb3\xe5\x9c\xa8\xe8\xbf\x99\xe9\x87\x8c\xe5\xb7\xa5\xe4\xbd\x9c\xe3\x80\x82", /* zh */
        "\xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xd0\xbc\xd0\xb8\xd1\x80 ",                     /* ru */
        "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7 \xd8\xa8\xd8\xa7\xd9\x84\xd8\xb9\xd8\xa7\xd9\x84\xd9\x85 ", /* ar */
        "\xf0\x9f\xa6\x99 \xf0\x9f\x9a\x80 \xf0\x9f\x98\xb6\xe2\x80\x8d\xf0\x9f\x8c\xab\xef\xb8\x8f ",     /* emoji */
        "1314151 3.14159 2024-06-01 ", "\n\n", "   ", "\t\t", ", ", ". ", "! ", "? ",
    };
    char *t = malloc(bytes + 1);
    if (!t)
        return NULL;
    kvrt_bench_rng r = {12345};
    size_t o = 0;
    while (o < bytes) {
        uint32_t kind = pick(&r, 10);
        if (kind < 6) {
            put(t, bytes, &o, prose[pick(&r, KVRT_ARRAY_LEN(prose))]);
            put(t, bytes, &o, " ");
        } else if (kind < 8) {
            put(t, bytes, &o, code[pick(&r, KVRT_ARRAY_LEN(code))]);
        } else {
            put(t, bytes, &o, other[pick(&r, KVRT_ARRAY_LEN(other))]);
        }
    }
    /* do not end inside a UTF-8 character */
    while (o > 0 && ((unsigned char)t[o - 1] & 0xC0) == 0x80)
        o--;
    if (o > 0 && (unsigned char)t[o - 1] >= 0xC0)
        o--;
    t[o] = '\0';
    return t;
}

/* ---- measurements ------------------------------------------------------------------------------ */

typedef struct vocab_result {
    const char *path;
    char kind[96];
    int32_t n_vocab;
    size_t bytes, tokens;
    double best_s;        /* wall clock */
    double best_cpu_s;    /* this thread's CPU time: what a shared machine's load does not inflate */
    size_t prompt_bytes;  /* text that makes prompt_tokens tokens */
    double prompt_s;      /* best time to tokenize it */
} vocab_result;

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Best wall time of REPS encodes (and the best CPU time in *cpu, may be NULL); -1 on failure. */
static double time_encode(kvrt_tokenizer *tok, const char *text, size_t len, size_t *n_ids, double *cpu)
{
    double best = 1e30, best_cpu = 1e30;
    for (int r = 0; r < REPS; r++) {
        double t0 = kvrt_bench_now(), c0 = thread_cpu_s();
        kvrt_status s = kvrt_tokenizer_encode(tok, text, len, 0, NULL, 0, n_ids);
        double t = kvrt_bench_now() - t0, c = thread_cpu_s() - c0;
        if (s != KVRT_OK && s != KVRT_ERR_INVALID_ARGUMENT)
            return -1;
        best = t < best ? t : best;
        best_cpu = c < best_cpu ? c : best_cpu;
    }
    if (cpu)
        *cpu = best_cpu;
    return best;
}

/* Shortest prefix of text (in 256-byte steps) that makes at least `want` tokens. */
static size_t prefix_for_tokens(kvrt_tokenizer *tok, const char *text, size_t len, size_t want)
{
    size_t lo = 0, hi = len;
    while (hi - lo > 256) {
        size_t mid = (lo + hi) / 2, n = 0;
        while (mid < len && ((unsigned char)text[mid] & 0xC0) == 0x80)
            mid++;
        (void)kvrt_tokenizer_encode(tok, text, mid, 0, NULL, 0, &n);
        if (n >= want)
            hi = mid;
        else
            lo = mid;
    }
    return hi;
}

static bool bench_vocab(const tok_opts *o, const char *text, size_t len, vocab_result *r)
{
    kvrt_model_file *mf = NULL;
    kvrt_tokenizer *tok = NULL;
    kvrt_error err;
    if (kvrt_model_file_load_gguf(r->path, NULL, true, NULL, &mf, &err) != KVRT_OK ||
        kvrt_tokenizer_create(&mf->vocab, NULL, &tok, &err) != KVRT_OK) {
        kvrt_cli_error(PROG, "%s: %s", r->path, err.message);
        kvrt_model_file_free(mf);
        return false;
    }
    snprintf(r->kind, sizeof(r->kind), "%s%s%s", mf->vocab.kind == KVRT_VOCAB_BPE ? "BPE " : "SentencePiece",
             mf->vocab.kind == KVRT_VOCAB_BPE ? "pre " : "", mf->vocab.kind == KVRT_VOCAB_BPE ? mf->vocab.pre : "");
    r->n_vocab = mf->vocab.n_tokens;
    r->bytes = len;
    r->best_s = time_encode(tok, text, len, &r->tokens, &r->best_cpu_s);
    bool ok = r->best_s >= 0;
    if (ok && o->model) {
        size_t n = 0;
        r->prompt_bytes = prefix_for_tokens(tok, text, len, (size_t)o->prompt_tokens);
        r->prompt_s = time_encode(tok, text, r->prompt_bytes, &n, NULL);
    }
    if (!ok)
        kvrt_cli_error(PROG, "%s: %s", r->path, kvrt_tokenizer_message(tok));
    kvrt_tokenizer_destroy(tok);
    kvrt_model_file_free(mf);
    return ok;
}

/* Best of REPS prefills of n tokens in a fresh session; -1 on failure. */
static double time_prefill(const tok_opts *o, int32_t n)
{
    kvrt_context_params cp = kvrt_context_default_params();
    kvrt_cli_common_context_params(&o->common, &cp);
    kvrt_context *ctx = NULL;
    kvrt_model *m = NULL;
    kvrt_session *sess = NULL;
    kvrt_error err;
    double best = -1;
    int32_t *ids = malloc((size_t)n * sizeof(int32_t));
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = o->model;
    mp.max_context = n;
    mp.kv_type = o->common.kv_type;
    kvrt_model_info info;
    if (!ids || kvrt_context_create(&cp, &ctx, &err) != KVRT_OK || kvrt_model_load(ctx, &mp, &m, &err) != KVRT_OK ||
        kvrt_model_get_info(m, &info) != KVRT_OK) {
        kvrt_cli_error(PROG, "%s: %s", o->model, ids ? err.message : "out of memory");
        goto out;
    }
    for (int32_t i = 0; i < n; i++)
        ids[i] = (int32_t)((3 + (uint32_t)i * 2654435761u % 30000u) % (uint32_t)info.n_vocab);
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = n;
    sp.kv_type = o->common.kv_type;
    sp.block_size = o->common.block_size;
    if (kvrt_session_create(m, &sp, &sess, &err) != KVRT_OK) {
        kvrt_cli_error(PROG, "session: %s", err.message);
        goto out;
    }
    for (int r = 0; r < REPS; r++) {
        kvrt_session_reset(sess);
        double t0 = kvrt_bench_now();
        if (kvrt_session_eval(sess, ids, n, NULL, NULL) != KVRT_OK) {
            kvrt_cli_error(PROG, "prefill: %s", kvrt_session_message(sess));
            best = -1;
            goto out;
        }
        double t = kvrt_bench_now() - t0;
        best = best < 0 || t < best ? t : best;
    }
out:
    kvrt_session_destroy(sess);
    kvrt_model_destroy(m);
    kvrt_context_destroy(ctx);
    free(ids);
    return best;
}

static void report(const tok_opts *o, const vocab_result *r, int n, double prefill_s)
{
    FILE *f = o->json ? stderr : stdout;
    fprintf(f, "%-24s %-18s %7s %8s %10s %8s %9s", "vocabulary", "tokenizer", "tokens", "text MiB", "MB/s", "Mtok/s",
            "MB/s cpu");
    if (o->model)
        fprintf(f, " %10s %12s %8s", "prompt ms", "prefill ms", "share");
    fprintf(f, "\n");
    for (int i = 0; i < n; i++) {
        const char *base = strrchr(r[i].path, '/');
        fprintf(f, "%-24s %-18s %7d %8.2f %10.2f %8.3f %9.2f", base ? base + 1 : r[i].path, r[i].kind, r[i].n_vocab,
                r[i].bytes / 1048576.0, r[i].bytes / r[i].best_s / 1e6, r[i].tokens / r[i].best_s / 1e6,
                r[i].bytes / r[i].best_cpu_s / 1e6);
        if (o->model)
            fprintf(f, " %10.3f %12.1f %7.2g%%", r[i].prompt_s * 1e3, prefill_s * 1e3,
                    100.0 * r[i].prompt_s / prefill_s);
        fprintf(f, "\n");
    }
    if (o->model)
        fprintf(f, "prompt of %lld tokens; prefill on %s (%s, best of %d); target: tokenizing under 5%% of it\n",
                (long long)o->prompt_tokens, o->model, kvrt_backend_name(o->common.backend), REPS);
    if (!o->json)
        return;
    kvrt_json j;
    kvrt_json_init(&j, stdout);
    kvrt_json_begin_object(&j, NULL);
    kvrt_json_int(&j, "text_bytes", (int64_t)r[0].bytes);
    if (o->model) {
        kvrt_json_str(&j, "model", o->model);
        kvrt_json_int(&j, "prompt_tokens", o->prompt_tokens);
        kvrt_json_num(&j, "prefill_s", prefill_s);
    }
    kvrt_json_begin_array(&j, "vocabularies");
    for (int i = 0; i < n; i++) {
        kvrt_json_begin_object(&j, NULL);
        kvrt_json_str(&j, "path", r[i].path);
        kvrt_json_str(&j, "tokenizer", r[i].kind);
        kvrt_json_int(&j, "tokens", (int64_t)r[i].tokens);
        kvrt_json_num(&j, "mb_per_s", r[i].bytes / r[i].best_s / 1e6);
        kvrt_json_num(&j, "mb_per_cpu_s", r[i].bytes / r[i].best_cpu_s / 1e6);
        kvrt_json_num(&j, "tokens_per_s", r[i].tokens / r[i].best_s);
        if (o->model) {
            kvrt_json_num(&j, "prompt_tokenize_s", r[i].prompt_s);
            kvrt_json_num(&j, "prompt_share_of_prefill", r[i].prompt_s / prefill_s);
        }
        kvrt_json_end_object(&j);
    }
    kvrt_json_end_array(&j);
    kvrt_json_end_object(&j);
    printf("\n");
}

int kvrt_bench_tokenize_main(int argc, char **argv)
{
    tok_opts o;
    int p = parse_args(argc, argv, &o);
    if (p != KVRT_CLI_CONTINUE)
        return p;
    size_t len = (size_t)o.mib << 20;
    char *text = mixed_text(len);
    if (!text) {
        kvrt_cli_error(PROG, "out of memory");
        return 1;
    }
    len = strlen(text);
    vocab_result r[MAX_VOCABS];
    memset(r, 0, sizeof(r));
    int rc = 0;
    for (int i = 0; i < o.n_vocabs && !rc; i++) {
        r[i].path = o.vocabs[i];
        rc = bench_vocab(&o, text, len, &r[i]) ? 0 : 1;
    }
    double prefill = 0;
    if (!rc && o.model) {
        prefill = time_prefill(&o, (int32_t)o.prompt_tokens);
        rc = prefill > 0 ? 0 : 1;
    }
    if (!rc)
        report(&o, r, o.n_vocabs, prefill);
    free(text);
    return rc;
}
