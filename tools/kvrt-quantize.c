/* kvrt-quantize: an F32/F16/BF16 GGUF into a quantized one of a preset mix
 * (model/quant_mix.h) or a single type. Every key and tensor of the input is
 * kept in its order; the output is written beside its target and renamed
 * at the end, and is never the input. */
#include "cli.h"
#include "files.h"
#include "model/gguf.h"
#include "model/quantize.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROG "kvrt-quantize"

typedef struct options {
    const char *in, *out, *type;
    bool pure, allow_requantize, quiet, stats;
    int32_t threads;
} options;

/* KVRT_CLI_CONTINUE: run; else the exit status (0 after --help/--version, 2 usage). */
static int parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof(*o));
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_BOOL(0, "pure", &o->pure, "every matrix in TYPE's base type (no per-tensor rules)"),
        KVRT_CLI_BOOL(0, "allow-requantize", &o->allow_requantize,
                      "accept quantized input matrices: dequantize them first\n"
                      "(a second rounding; a warning says how many)"),
        KVRT_CLI_BOOL(0, "stats", &o->stats,
                      "per output type: the RMSE of the dequantized matrices against\n"
                      "the input, absolute and relative to their RMS (stdout)"),
        KVRT_CLI_INT32('t', "threads", &o->threads, 1, 1024, "N", "threads (default: the cores available)"),
        KVRT_CLI_BOOL('q', "quiet", &o->quiet, "no progress (progress is shown only on a terminal)"),
    };
    char about[1024];
    snprintf(about, sizeof(about),
             "Quantizes the matrices of an F32, F16 or BF16 GGUF. TYPE (case-insensitive) is one of\n"
             "  %s\n"
             "Presets give the sensitive tensors more bits, as llama.cpp's presets of the same\n"
             "names do: output.weight Q6_K; attn_v and ffn_down of some layers (Q4_K_M: Q6_K in the\n"
             "first and last eighth and every third layer between); Q2_K/Q3_K_M also attn_output.\n"
             "Rows a type cannot hold fall back (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,\n"
             "Q2_K/Q3_K/IQ4_XS -> IQ4_NL, else F16). Norms and other vectors stay as they are.",
             kvrt_quant_mix_names());
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = PROG " [options] IN.gguf OUT.gguf TYPE",
        .about = about,
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
        .min_args = 3,
        .max_args = 3,
        .args_hint = "expected IN.gguf OUT.gguf TYPE",
    };
    int first;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    o->in = argv[first];
    o->out = argv[first + 1];
    o->type = argv[first + 2];
    return KVRT_CLI_CONTINUE;
}

static void progress(void *user, int64_t index, int64_t count, const char *name, uint32_t from, uint32_t to)
{
    (void)user;
    const char *fn = kvrt_ggml_type_name(from), *tn = kvrt_ggml_type_name(to);
    fprintf(stderr, "\r\033[K" PROG ": [%4lld/%4lld] %-32s %6s -> %-6s", (long long)index + 1, (long long)count,
            name, fn ? fn : "?", tn ? tn : "?");
    if (index + 1 == count)
        fputc('\n', stderr);
}

static void print_stats(const kvrt_quantize_report *rep)
{
    printf("%-8s %12s %12s %12s\n", "type", "values", "rmse", "rmse/rms");
    for (int t = 0; t < (int)KVRT_ARRAY_LEN(rep->values); t++) {
        if (rep->values[t] == 0)
            continue;
        double rmse = sqrt(rep->err2[t] / (double)rep->values[t]);
        double rms = sqrt(rep->ref2[t] / (double)rep->values[t]);
        printf("%-8s %12lld %12.4e %12.4e\n", kvrt_dtype_name((kvrt_dtype)t), (long long)rep->values[t], rmse,
               rms > 0.0 ? rmse / rms : 0.0);
    }
}

static int run(const options *o, const kvrt_quant_mix *mix)
{
    kvrt_error err;
    kvrt_error_clear(&err);
    kvrt_gguf *in;
    kvrt_status s = kvrt_gguf_open(o->in, NULL, &in, &err);
    if (s != KVRT_OK) {
        fprintf(stderr, PROG ": %s: %s\n", o->in, err.message);
        return 1;
    }
    kvrt_quantize_params qp = {mix, o->allow_requantize, o->threads, o->stats, NULL, NULL};
    if (!o->quiet && isatty(STDERR_FILENO))
        qp.progress = progress;
    kvrt_quantize_report rep;
    s = kvrt_quantize_plan(in, &qp, NULL, &rep, &err);
    if (s == KVRT_OK && rep.n_requantized > 0)
        fprintf(stderr, PROG ": warning: %lld matrices are quantized already; they are dequantized and quantized "
                        "again (a second rounding)\n", (long long)rep.n_requantized);
    /* never the input (by device and inode), a symlink's target replaced, a
     * device written, the temporary removed on SIGINT/SIGTERM/SIGHUP */
    const char *inputs[] = {o->in};
    kvrt_atomic_file af = {0};
    if (s == KVRT_OK && !kvrt_tool_output_open(PROG, o->out, inputs, 1, &af)) {
        kvrt_gguf_close(in);
        return 1;
    }
    if (s == KVRT_OK) {
        s = kvrt_quantize_gguf(in, &qp, NULL, af.f, &rep, &err);
        s = kvrt_tool_output_close(&af, s, &err);
    }
    kvrt_gguf_close(in);
    if (s != KVRT_OK) {
        fprintf(stderr, PROG ": %s: %s\n", kvrt_status_str(s), err.message);
        return 1;
    }
    if (o->stats)
        print_stats(&rep);
    if (!o->quiet)
        fprintf(stderr, PROG ": %s -> %s (%s): %lld tensors, %lld converted (%lld fall-backs), %.2f MiB -> %.2f MiB\n",
                o->in, o->out, mix->name, (long long)rep.n_tensors, (long long)rep.n_converted,
                (long long)rep.n_fallback, rep.in_bytes / 1048576.0, rep.out_bytes / 1048576.0);
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    kvrt_quant_mix mix;
    if (!kvrt_quant_mix_find(o.type, o.pure, &mix)) {
        fprintf(stderr, PROG ": unknown TYPE '%s' (one of: %s)\n", o.type, kvrt_quant_mix_names());
        return 2;
    }
    const char *inputs[] = {o.in};
    if (!kvrt_tool_output_check(PROG, o.out, inputs, 1))
        return 1;
    return run(&o, &mix);
}
