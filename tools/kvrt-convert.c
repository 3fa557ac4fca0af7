/* kvrt-convert: llama2.c checkpoint + tokenizer.bin -> standard llama GGUF
 * (the key set, names and value types llama.cpp's converter writes), F32,
 * F16, Q8_0 or Q4_0. llama2.c rotates adjacent pairs like GGUF's llama
 * architecture, so Q/K rows are copied as they are. */
#include "model/gguf.h"
#include "model/model_file.h"
#include "model/synth.h"
#include "files.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvrt-convert [options] CHECKPOINT.bin TOKENIZER.bin OUTPUT.gguf\n"
            "\n"
            "Converts a llama2.c (run.c) checkpoint and its tokenizer.bin into a llama GGUF.\n"
            "\n"
            "options:\n"
            "  --type T     weight type: f32 (default), f16, q8_0, q4_0. Norms stay f32; matrices\n"
            "               whose rows are not a multiple of 32 stay f16 in quantized files.\n"
            "  --name NAME  general.name (default \"llama\", as llama.cpp's converter writes)\n"
            "  --ctx N      llama.context_length (default: the checkpoint's seq_len)\n"
            "  --tie        omit output.weight when the checkpoint shares its classifier with\n"
            "               the token embedding (default: write it out, as llama.cpp does)\n"
            "  -q, --quiet  no progress on stderr\n"
            "  -h, --help   this text\n");
}

typedef struct options {
    const char *ckpt, *tok, *out, *name;
    kvrt_dtype type;
    int32_t ctx;
    bool tie, quiet;
} options;

static bool parse_type(const char *s, kvrt_dtype *t)
{
    static const struct {
        const char *name;
        kvrt_dtype t;
    } types[] = {{"f32", KVRT_DTYPE_F32}, {"f16", KVRT_DTYPE_F16}, {"q8_0", KVRT_DTYPE_Q8_0}, {"q4_0", KVRT_DTYPE_Q4_0}};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(types); i++)
        if (strcmp(s, types[i].name) == 0) {
            *t = types[i].t;
            return true;
        }
    return false;
}

/* 0 ok, 1 error, 2 help printed. */
static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.name = "llama", .type = KVRT_DTYPE_F32};
    const char *pos[3];
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 2;
        } else if (!strcmp(a, "--type") && has_val) {
            if (!parse_type(argv[++i], &o->type)) {
                fprintf(stderr, "kvrt-convert: unknown --type '%s' (f32, f16, q8_0, q4_0)\n", argv[i]);
                return 1;
            }
        } else if (!strcmp(a, "--name") && has_val) {
            o->name = argv[++i];
        } else if (!strcmp(a, "--ctx") && has_val) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v <= 0 || v > INT32_MAX) {
                fprintf(stderr, "kvrt-convert: --ctx needs a positive integer, not '%s'\n", argv[i]);
                return 1;
            }
            o->ctx = (int32_t)v;
        } else if (!strcmp(a, "--tie")) {
            o->tie = true;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            o->quiet = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "kvrt-convert: unknown option or missing value: '%s' (see --help)\n", a);
            return 1;
        } else if (npos < 3) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "kvrt-convert: too many arguments (see --help)\n");
            return 1;
        }
    }
    if (npos != 3) {
        usage(stderr);
        return 1;
    }
    o->ckpt = pos[0];
    o->tok = pos[1];
    o->out = pos[2];
    return 0;
}

typedef struct progress_state {
    const char *what;
    int last;
} progress_state;

/* Prints only when the whole percentage changes. */
static void progress_fn(void *user, double fraction)
{
    progress_state *ps = user;
    int pct = (int)(fraction * 100.0);
    if (pct == ps->last)
        return;
    ps->last = pct;
    fprintf(stderr, "\rkvrt-convert: %s %3d%%", ps->what, pct);
    if (fraction >= 1.0)
        fputc('\n', stderr);
}

int main(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc == 2 ? 0 : 2;
    /* refused before the load: the output must not be an input (device and inode) */
    const char *const inputs[] = {o.ckpt, o.tok};
    if (!kvrt_tool_output_check("kvrt-convert", o.out, inputs, 2))
        return 1;
    kvrt_error err;
    kvrt_error_clear(&err);
    kvrt_model_file *mf;
    progress_state ps = {"loading", -1};
    kvrt_load_progress progress = {progress_fn, &ps};
    kvrt_status s = kvrt_model_file_load_llama2c(o.ckpt, o.tok, NULL, o.quiet ? NULL : &progress, &mf, &err);
    if (s != KVRT_OK) {
        fprintf(stderr, "kvrt-convert: %s: %s\n", kvrt_status_str(s), err.message);
        return 1;
    }
    if (!o.quiet)
        fprintf(stderr, "kvrt-convert: dim %d, layers %d, heads %d/%d, ff %d, vocab %d, seq_len %d -> %s\n",
                mf->hp.n_embd, mf->hp.n_layer, mf->hp.n_head, mf->hp.n_head_kv, mf->hp.n_ff, mf->hp.n_vocab,
                mf->hp.n_ctx_train, kvrt_dtype_name(o.type));
    /* written beside the target and renamed at the end, so a failed or
     * interrupted write leaves an existing file as it was */
    kvrt_atomic_file out;
    kvrt_error_clear(&err);
    if (!kvrt_tool_output_open("kvrt-convert", o.out, inputs, 2, &out)) {
        kvrt_model_file_free(mf);
        return 1;
    }
    kvrt_gguf_export_params ep = {o.type, o.name, o.ctx, !o.tie};
    ps = (progress_state){"writing", -1};
    s = kvrt_llama_export_gguf(mf, &ep, out.f, o.quiet ? NULL : &progress, &err);
    s = kvrt_tool_output_close(&out, s, &err);
    kvrt_model_file_free(mf);
    if (s != KVRT_OK) {
        fprintf(stderr, "kvrt-convert: %s: %s\n", kvrt_status_str(s), err.message);
        return 1;
    }
    return 0;
}
