/* kvrt-convert: llama2.c checkpoint + tokenizer.bin -> standard llama GGUF
 * (the key set, names and value types llama.cpp's converter writes), F32,
 * F16, Q8_0 or Q4_0. llama2.c rotates adjacent pairs like GGUF's llama
 * architecture, so Q/K rows are copied as they are. */
#include "cli.h"
#include "files.h"
#include "model/gguf.h"
#include "model/model_file.h"
#include "model/synth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const PROG = "kvrt-convert";

typedef struct options {
    const char *ckpt, *tok, *out, *name;
    kvrt_dtype type;
    int32_t ctx;
    bool tie, quiet;
} options;

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, options *o)
{
    static const char *const type_names[] = {"f32", "f16", "q8_0", "q4_0", NULL};
    static const kvrt_dtype types[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0};
    *o = (options){.name = "llama", .type = KVRT_DTYPE_F32};
    int type = 0;
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_CHOICE(0, "type", &type, type_names, "T",
                        "weight type: f32 (default), f16, q8_0, q4_0. Norms stay f32; matrices\n"
                        "whose rows are not a multiple of 32 stay f16 in quantized files."),
        KVRT_CLI_STR(0, "name", &o->name, "NAME", "general.name (default \"llama\", as llama.cpp's converter writes)"),
        {.name = "ctx", .kind = KVRT_CLI_KIND_INT32, .dst = &o->ctx, .min = 1, .max = INT32_MAX,
         .flags = KVRT_CLI_K_SUFFIX, .meta = "N", .help = "llama.context_length (default: the checkpoint's seq_len)"},
        KVRT_CLI_BOOL(0, "tie", &o->tie,
                      "omit output.weight when the checkpoint shares its classifier with\n"
                      "the token embedding (default: write it out, as llama.cpp does)"),
        KVRT_CLI_BOOL('q', "quiet", &o->quiet, "no progress on stderr"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-convert [options] CHECKPOINT.bin TOKENIZER.bin OUTPUT.gguf",
        .about = "Converts a llama2.c (run.c) checkpoint and its tokenizer.bin into a llama GGUF.\n"
                 "Progress goes to stderr when it is a terminal; -- ends the options (for file\n"
                 "names that start with '-').",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
        .min_args = 3,
        .max_args = 3,
    };
    int first;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    o->type = types[type];
    o->ckpt = argv[first];
    o->tok = argv[first + 1];
    o->out = argv[first + 2];
    return KVRT_CLI_CONTINUE;
}

int main(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    /* refused before the load: the output must not be an input (device and inode) */
    const char *const inputs[] = {o.ckpt, o.tok};
    if (!kvrt_tool_output_check(PROG, o.out, inputs, 2))
        return 1;
    kvrt_error err;
    kvrt_error_clear(&err);
    kvrt_model_file *mf;
    kvrt_cli_progress ps;
    kvrt_cli_progress_init(&ps, PROG, "loading");
    kvrt_load_progress progress = {kvrt_cli_progress_fn, &ps};
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
    if (!kvrt_tool_output_open(PROG, o.out, inputs, 2, &out)) {
        kvrt_model_file_free(mf);
        return 1;
    }
    kvrt_gguf_export_params ep = {o.type, o.name, o.ctx, !o.tie};
    kvrt_cli_progress_init(&ps, PROG, "writing");
    s = kvrt_llama_export_gguf(mf, &ep, out.f, o.quiet ? NULL : &progress, &err);
    s = kvrt_tool_output_close(&out, s, &err);
    kvrt_model_file_free(mf);
    if (s != KVRT_OK) {
        fprintf(stderr, "kvrt-convert: %s: %s\n", kvrt_status_str(s), err.message);
        return 1;
    }
    return 0;
}
