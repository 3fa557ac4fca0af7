/* kvrt-synth: a random-weight llama GGUF of any shape, for tests and
 * benchmarks of models we cannot ship. Tensors are streamed to disk, so a
 * 7B-shaped file needs no more memory than one row. */
#include "model/synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvrt-synth [options] -o OUTPUT.gguf\n"
            "\n"
            "Writes a llama GGUF with random weights (N(0, 0.02) matrices, norms near 1) and a\n"
            "small synthetic SentencePiece vocabulary (byte pieces and letter merges).\n"
            "\n"
            "options:\n"
            "  --preset P        tiny, 15m (dim 288, 6 layers), 110m (768, 12), 1b (2048, 22, GQA 32/4),\n"
            "                    7b (4096, 32); the flags below override it (default: tiny)\n"
            "  --vocab N --dim N --layers N --ff N --heads N --kv-heads N --ctx N\n"
            "  --rope-base F --eps F\n"
            "  --type T          weight type or preset, as kvrt-quantize takes it (default F32):\n"
            "                    a preset's per-tensor rules unless --pure\n"
            "  --pure            every matrix in the type's base type (rows it cannot hold fall back)\n"
            "  --seed N          random seed (default 1)\n"
            "  --std F           standard deviation of the matrices (default 0.02)\n"
            "  --tied            no output.weight (classifier shares token_embd)\n"
            "  --vocab-only      keys and vocabulary only, no tensors (for tokenizer tools)\n"
            "  -o FILE           output file\n"
            "  -q, --quiet       no progress on stderr\n"
            "  -h, --help        this text\n");
}

static bool parse_int(const char *s, int32_t *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v <= 0 || v > INT32_MAX)
        return false;
    *out = (int32_t)v;
    return true;
}

static bool parse_float(const char *s, float *out)
{
    char *end;
    float v = strtof(s, &end);
    if (*end || end == s || !(v > 0.0f))
        return false;
    *out = v;
    return true;
}

/* The preset or type named by --type (quant_mix.h), resolved after --pure is known. */
static const char *type_name = "F32";
static kvrt_quant_mix mix;

static bool parse_type(const char *s)
{
    type_name = s;
    return kvrt_quant_mix_find(s, false, &mix);
}

static bool set_option(kvrt_synth_params *p, const char *a, const char *v)
{
    int32_t *ints[] = {&p->hp.n_vocab, &p->hp.n_embd,   &p->hp.n_layer,    &p->hp.n_ff,
                       &p->hp.n_head,  &p->hp.n_head_kv, &p->hp.n_ctx_train};
    static const char *const int_names[] = {"--vocab", "--dim", "--layers", "--ff", "--heads", "--kv-heads", "--ctx"};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(int_names); i++)
        if (!strcmp(a, int_names[i]))
            return parse_int(v, ints[i]);
    if (!strcmp(a, "--rope-base"))
        return parse_float(v, &p->hp.rope_freq_base);
    if (!strcmp(a, "--eps"))
        return parse_float(v, &p->hp.rms_eps);
    if (!strcmp(a, "--std"))
        return parse_float(v, &p->stddev);
    if (!strcmp(a, "--type"))
        return parse_type(v);
    if (!strcmp(a, "--seed")) {
        char *end;
        p->seed = strtoull(v, &end, 10);
        return *end == '\0' && end != v;
    }
    return false;
}

/* Prints only when the whole percentage changes. */
static void progress_fn(void *user, double fraction)
{
    int *last = user, pct = (int)(fraction * 100.0);
    if (pct == *last)
        return;
    *last = pct;
    fprintf(stderr, "\rkvrt-synth: %3d%%", pct);
    if (fraction >= 1.0)
        fputc('\n', stderr);
}

int main(int argc, char **argv)
{
    kvrt_synth_params p;
    kvrt_synth_preset("tiny", &p);
    const char *out = NULL;
    bool quiet = false, pure = false;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--preset") && !kvrt_synth_preset(argv[i + 1], &p)) {
            fprintf(stderr, "kvrt-synth: unknown preset '%s' (tiny, 15m, 110m, 1b, 7b)\n", argv[i + 1]);
            return 2;
        }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            quiet = true;
        } else if (!strcmp(a, "--tied")) {
            p.tied_output = true;
        } else if (!strcmp(a, "--pure")) {
            pure = true;
        } else if (!strcmp(a, "--vocab-only")) {
            p.vocab_only = true;
        } else if (i + 1 >= argc) {
            fprintf(stderr, "kvrt-synth: '%s' needs a value or is unknown (see --help)\n", a);
            return 2;
        } else if (!strcmp(a, "-o")) {
            out = argv[++i];
        } else if (!strcmp(a, "--preset")) {
            i++; /* applied before the other flags, so they override it */
        } else if (!set_option(&p, a, argv[i + 1])) {
            fprintf(stderr, "kvrt-synth: bad option or value: %s %s (see --help)\n", a, argv[i + 1]);
            return 2;
        } else {
            i++;
        }
    }
    if (!out) {
        usage(stderr);
        return 2;
    }
    kvrt_quant_mix_find(type_name, pure, &mix);
    p.type = mix.base;
    p.mix = &mix;
    kvrt_error err;
    kvrt_error_clear(&err);
    int last_pct = -1;
    kvrt_load_progress progress = {progress_fn, &last_pct};
    kvrt_status s = kvrt_synth_write_file(&p, NULL, out, quiet ? NULL : &progress, &err);
    if (s != KVRT_OK) {
        fprintf(stderr, "kvrt-synth: %s: %s\n", kvrt_status_str(s), err.message);
        return 1;
    }
    return 0;
}
