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
            "  --arch A          llama (default), qwen2 (Q/K/V biases, NeoX RoPE), qwen3 (Q/K norms, NeoX RoPE)\n"
            "  --head-dim N      head width when it is not dim / heads (written as key_length)\n"
            "  --rope-scaling S  none (default), linear or yarn, with --rope-scale F (the factor)\n"
            "                    and --rope-orig-ctx N (YaRN's original context; default --ctx)\n"
            "  --rope-freqs      a rope_freqs.weight tensor (Llama 3.1's per-pair divisors; llama)\n"
            "  --bias            Q/K/V biases on a llama model\n"
            "  --sliding-window N  attention window (llama.attention.sliding_window)\n"
            "  --type T          f32 (default), f16, bf16, q8_0, q4_0\n"
            "  --seed N          random seed (default 1)\n"
            "  --std F           standard deviation of the matrices (default 0.02)\n"
            "  --tied            no output.weight (classifier shares token_embd)\n"
            "  --vocab-only      keys and vocabulary only, no tensors (for tokenizer tools)\n"
            "  --vocab-from FILE take the vocabulary (and chat template) of a GGUF instead of the\n"
            "                    synthetic one; its size sets --vocab\n"
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

static bool parse_type(const char *s, kvrt_dtype *t)
{
    static const kvrt_dtype all[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16, KVRT_DTYPE_BF16, KVRT_DTYPE_Q8_0,
                                     KVRT_DTYPE_Q4_0};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(all); i++)
        if (strcmp(s, kvrt_dtype_name(all[i])) == 0) {
            *t = all[i];
            return true;
        }
    return false;
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
    if (!strcmp(a, "--head-dim"))
        return parse_int(v, &p->hp.head_dim);
    if (!strcmp(a, "--rope-scale"))
        return parse_float(v, &p->hp.rope_scale);
    if (!strcmp(a, "--rope-orig-ctx"))
        return parse_int(v, &p->hp.rope_orig_ctx);
    if (!strcmp(a, "--sliding-window"))
        return parse_int(v, &p->hp.sliding_window);
    if (!strcmp(a, "--arch")) {
        static const kvrt_arch archs[] = {KVRT_ARCH_LLAMA, KVRT_ARCH_QWEN2, KVRT_ARCH_QWEN3};
        for (size_t i = 0; i < KVRT_ARRAY_LEN(archs); i++)
            if (!strcmp(v, kvrt_arch_name(archs[i]))) {
                p->hp.arch = archs[i];
                return true;
            }
        return false;
    }
    if (!strcmp(a, "--rope-scaling")) {
        static const char *const names[] = {"none", "linear", "yarn"};
        for (int i = 0; i < 3; i++)
            if (!strcmp(v, names[i])) {
                p->hp.rope_scaling = (kvrt_rope_scaling)i;
                return true;
            }
        return false;
    }
    if (!strcmp(a, "--eps"))
        return parse_float(v, &p->hp.rms_eps);
    if (!strcmp(a, "--std"))
        return parse_float(v, &p->stddev);
    if (!strcmp(a, "--type"))
        return parse_type(v, &p->type);
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
    const char *out = NULL, *vocab_from = NULL;
    bool quiet = false;
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
        } else if (!strcmp(a, "--vocab-only")) {
            p.vocab_only = true;
        } else if (!strcmp(a, "--rope-freqs")) {
            p.rope_freqs = true;
        } else if (!strcmp(a, "--bias")) {
            p.bias = true;
        } else if (i + 1 >= argc) {
            fprintf(stderr, "kvrt-synth: '%s' needs a value or is unknown (see --help)\n", a);
            return 2;
        } else if (!strcmp(a, "-o")) {
            out = argv[++i];
        } else if (!strcmp(a, "--vocab-from")) {
            vocab_from = argv[++i];
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
    kvrt_error err;
    kvrt_error_clear(&err);
    kvrt_model_file *vf = NULL;
    if (vocab_from) {
        if (kvrt_model_file_load_gguf(vocab_from, NULL, true, NULL, &vf, &err) != KVRT_OK) {
            fprintf(stderr, "kvrt-synth: %s: %s\n", vocab_from, err.message);
            return 1;
        }
        p.vocab = &vf->vocab;
    }
    int last_pct = -1;
    kvrt_load_progress progress = {progress_fn, &last_pct};
    kvrt_status s = kvrt_synth_write_file(&p, NULL, out, quiet ? NULL : &progress, &err);
    kvrt_model_file_free(vf);
    if (s != KVRT_OK) {
        fprintf(stderr, "kvrt-synth: %s: %s\n", kvrt_status_str(s), err.message);
        return 1;
    }
    return 0;
}
