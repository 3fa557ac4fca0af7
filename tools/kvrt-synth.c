/* kvrt-synth: a random-weight llama GGUF of any shape, for tests and
 * benchmarks of models we cannot ship. Tensors are streamed to disk, so a
 * 7B-shaped file needs no more memory than one row. */
#include "cli.h"
#include "files.h"
#include "model/synth.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const PROG = "kvrt-synth";

/* Shape flags: applied over the preset, whatever their order on the command line. */
typedef struct synth_overrides {
    int32_t ints[10];        /* vocab, dim, layers, ff, heads, kv-heads, ctx, head-dim, rope-orig-ctx, sliding-window */
    bool ints_seen[10];
    float rope_base, eps, std, rope_scale;
    bool rope_seen, eps_seen, std_seen, rope_scale_seen;
    int arch, rope_scaling;
    bool arch_seen, rope_scaling_seen;
    bool rope_freqs, bias;
    const char *type;        /* --type: a type or preset (quant_mix.h), resolved once --pure is known */
    bool pure;
    uint64_t seed;
    bool seed_seen;
    bool tied, vocab_only;
} synth_overrides;

static bool parse_type(const char *prog, const char *flag, const char *value, void *dst)
{
    kvrt_quant_mix probe;
    if (kvrt_quant_mix_find(value, false, &probe)) {
        *(const char **)dst = value;
        return true;
    }
    kvrt_cli_error(prog, "%s: unknown value '%s' (one of: %s)", flag, value, kvrt_quant_mix_names());
    return false;
}

static const char *const ARCH_NAMES[] = {"llama", "qwen2", "qwen3", NULL};
static const kvrt_arch ARCHS[] = {KVRT_ARCH_LLAMA, KVRT_ARCH_QWEN2, KVRT_ARCH_QWEN3};
static const char *const ROPE_SCALING_NAMES[] = {"none", "linear", "yarn", NULL}; /* kvrt_rope_scaling order */

static bool parse_preset(const char *prog, const char *flag, const char *value, void *dst)
{
    if (kvrt_synth_preset(value, dst))
        return true;
    kvrt_cli_error(prog, "%s: unknown preset '%s' (tiny, 15m, 110m, 1b, 7b)", flag, value);
    return false;
}

static void apply_overrides(const synth_overrides *ov, kvrt_synth_params *p, kvrt_quant_mix *mix)
{
    int32_t *ints[] = {&p->hp.n_vocab, &p->hp.n_embd,   &p->hp.n_layer,    &p->hp.n_ff,
                       &p->hp.n_head,  &p->hp.n_head_kv, &p->hp.n_ctx_train, &p->hp.head_dim,
                       &p->hp.rope_orig_ctx, &p->hp.sliding_window};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(ints); i++)
        if (ov->ints_seen[i])
            *ints[i] = ov->ints[i];
    if (ov->rope_seen)
        p->hp.rope_freq_base = ov->rope_base;
    if (ov->eps_seen)
        p->hp.rms_eps = ov->eps;
    if (ov->rope_scale_seen)
        p->hp.rope_scale = ov->rope_scale;
    if (ov->arch_seen)
        p->hp.arch = ARCHS[ov->arch];
    if (ov->rope_scaling_seen)
        p->hp.rope_scaling = (kvrt_rope_scaling)ov->rope_scaling;
    p->rope_freqs = ov->rope_freqs;
    p->bias = ov->bias;
    if (ov->std_seen)
        p->stddev = ov->std;
    kvrt_quant_mix_find(ov->type, ov->pure, mix); /* parse_type checked the name */
    p->type = mix->base;
    p->mix = mix;
    if (ov->seed_seen)
        p->seed = ov->seed;
    p->tied_output = ov->tied;
    p->vocab_only = ov->vocab_only;
}

#define SHAPE_OPT(NAME, I, HELP)                                                                              \
    {.name = (NAME), .kind = KVRT_CLI_KIND_INT32, .dst = &ov->ints[I], .min = 1, .max = INT32_MAX, .meta = "N", \
     .help = (HELP), .seen = &ov->ints_seen[I]}
#define POSITIVE_OPT(NAME, DST, SEEN, HELP)                                                              \
    {.name = (NAME), .kind = KVRT_CLI_KIND_FLOAT, .dst = (DST), .fmin = 0.0, .fmax = FLT_MAX,             \
     .flags = KVRT_CLI_ABOVE_MIN, .meta = "F", .help = (HELP), .seen = (SEEN)}

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, kvrt_synth_params *p, kvrt_quant_mix *mix, const char **out,
                      const char **vocab_from, bool *quiet)
{
    synth_overrides o, *ov = &o;
    memset(ov, 0, sizeof(*ov));
    ov->type = "F32";
    kvrt_synth_preset("tiny", p);
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_CALL(0, "preset", parse_preset, p, "P",
                      "tiny, 15m (dim 288, 6 layers), 110m (768, 12), 1b (2048, 22, GQA 32/4),\n"
                      "7b (4096, 32); the flags below override it (default: tiny)"),
        SHAPE_OPT("vocab", 0, "vocabulary size"),
        SHAPE_OPT("dim", 1, "embedding width"),
        SHAPE_OPT("layers", 2, "layers"),
        SHAPE_OPT("ff", 3, "feed-forward width"),
        SHAPE_OPT("heads", 4, "query heads"),
        SHAPE_OPT("kv-heads", 5, "KV heads"),
        SHAPE_OPT("ctx", 6, "context length"),
        {.name = "arch", .kind = KVRT_CLI_KIND_CHOICE, .dst = &ov->arch, .choices = ARCH_NAMES, .meta = "A",
         .help = "llama (default), qwen2 (Q/K/V biases, NeoX RoPE), qwen3 (Q/K norms, NeoX RoPE)",
         .seen = &ov->arch_seen},
        SHAPE_OPT("head-dim", 7, "head width when it is not dim / heads (written as key_length)"),
        POSITIVE_OPT("rope-base", &ov->rope_base, &ov->rope_seen, "RoPE frequency base"),
        {.name = "rope-scaling", .kind = KVRT_CLI_KIND_CHOICE, .dst = &ov->rope_scaling,
         .choices = ROPE_SCALING_NAMES, .meta = "S", .help = "none (default), linear or yarn",
         .seen = &ov->rope_scaling_seen},
        POSITIVE_OPT("rope-scale", &ov->rope_scale, &ov->rope_scale_seen, "the RoPE scaling factor"),
        SHAPE_OPT("rope-orig-ctx", 8, "YaRN's original context (default --ctx)"),
        KVRT_CLI_BOOL(0, "rope-freqs", &ov->rope_freqs, "a rope_freqs.weight tensor (Llama 3.1's per-pair divisors; llama)"),
        KVRT_CLI_BOOL(0, "bias", &ov->bias, "Q/K/V biases on a llama model"),
        SHAPE_OPT("sliding-window", 9, "attention window (llama.attention.sliding_window)"),
        POSITIVE_OPT("eps", &ov->eps, &ov->eps_seen, "RMSNorm epsilon"),
        POSITIVE_OPT("std", &ov->std, &ov->std_seen, "standard deviation of the matrices (default 0.02)"),
        KVRT_CLI_CALL(0, "type", parse_type, &ov->type, "T",
                      "weight type or preset, as kvrt-quantize takes it (default F32):\n"
                      "a preset's per-tensor rules unless --pure"),
        KVRT_CLI_BOOL(0, "pure", &ov->pure,
                      "every matrix in the type's base type (rows it cannot hold fall back)"),
        {.name = "seed", .kind = KVRT_CLI_KIND_UINT64, .dst = &ov->seed, .meta = "N",
         .help = "random seed (default 1)", .seen = &ov->seed_seen},
        KVRT_CLI_BOOL(0, "tied", &ov->tied, "no output.weight (classifier shares token_embd)"),
        KVRT_CLI_BOOL(0, "vocab-only", &ov->vocab_only, "keys and vocabulary only, no tensors (for tokenizer tools)"),
        KVRT_CLI_STR(0, "vocab-from", vocab_from, "FILE",
                     "take the vocabulary (and chat template) of a GGUF instead of the\n"
                     "synthetic one; its size sets --vocab"),
        KVRT_CLI_STR('o', "output", out, "FILE", "output file"),
        KVRT_CLI_BOOL('q', "quiet", quiet, "no progress on stderr"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-synth [options] -o OUTPUT.gguf",
        .about = "Writes a llama, qwen2 or qwen3 GGUF with random weights (N(0, 0.02) matrices, norms near 1) and a\n"
                 "small synthetic SentencePiece vocabulary (byte pieces and letter merges).\n"
                 "Progress goes to stderr when it is a terminal.",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
    };
    int first;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    apply_overrides(ov, p, mix);
    if (!*out) {
        kvrt_cli_error(PROG, "no output file (-o FILE); see --help");
        return KVRT_CLI_USAGE;
    }
    return KVRT_CLI_CONTINUE;
}

int main(int argc, char **argv)
{
    kvrt_synth_params p;
    kvrt_quant_mix mix;
    const char *out = NULL, *vocab_from = NULL;
    bool quiet = false;
    int rc = parse_args(argc, argv, &p, &mix, &out, &vocab_from, &quiet);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    kvrt_error err;
    kvrt_error_clear(&err);
    /* refused before anything is read: the output must not be the --vocab-from file */
    const char *const inputs[] = {vocab_from}; /* NULL: skipped */
    if (!kvrt_tool_output_check(PROG, out, inputs, 1))
        return 1;
    kvrt_model_file *vf = NULL;
    if (vocab_from) {
        if (kvrt_model_file_load_gguf(vocab_from, NULL, true, NULL, &vf, &err) != KVRT_OK) {
            kvrt_cli_error(PROG, "%s: %s", vocab_from, err.message);
            return 1;
        }
        p.vocab = &vf->vocab;
    }
    kvrt_cli_progress progress_state;
    kvrt_cli_progress_init(&progress_state, PROG, NULL);
    kvrt_load_progress progress = {kvrt_cli_progress_fn, &progress_state};
    /* atomic, and no temporary left behind if interrupted (GBs for big presets) */
    kvrt_atomic_file af;
    if (!kvrt_tool_output_open(PROG, out, inputs, 1, &af)) {
        kvrt_model_file_free(vf);
        return 1;
    }
    kvrt_status s = kvrt_synth_write(&p, NULL, af.f, quiet ? NULL : &progress, &err);
    s = kvrt_tool_output_close(&af, s, &err);
    kvrt_model_file_free(vf);
    if (s != KVRT_OK) {
        fprintf(stderr, "kvrt-synth: %s: %s\n", kvrt_status_str(s), err.message);
        return 1;
    }
    return 0;
}
