/*
 * kvrt-tokenize: prints the token ids of a text, like llama.cpp's
 * llama-tokenize.
 *
 *   kvrt-tokenize -m MODEL [-z TOKENIZER] -p TEXT [--pieces] [--no-bos] [--special]
 *
 * stdout is the ids alone, space-separated on one line, BOS first when the
 * vocabulary adds one; with --pieces one "ID<TAB>PIECE" line per token.
 * --special parses special tokens written in the text (llama-tokenize does
 * that by default; its --no-parse-special is kvrt-tokenize's default).
 * MODEL is a GGUF (a vocabulary-only one will do) or a llama2.c checkpoint
 * with its tokenizer.bin given by -z; -z alone works too.
 */
#include "model/model_file.h"
#include "model/tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct tk_args {
    const char *model;
    const char *tokenizer;
    const char *prompt;
    const char *prompt_file;
    bool pieces;
    bool no_bos;
    bool special;
} tk_args;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: kvrt-tokenize -m MODEL [-z TOKENIZER] (-p TEXT | -f FILE) [--pieces] [--no-bos] [--special]\n"
            "       kvrt-tokenize -z TOKENIZER (-p TEXT | -f FILE) [--pieces] [--no-bos] [--special]\n"
            "\n"
            "Prints the token ids of TEXT on one line, space-separated (BOS first when the\n"
            "vocabulary adds one).\n"
            "\n"
            "  -m, --model PATH       GGUF model or vocabulary-only GGUF, or a llama2.c checkpoint (.bin)\n"
            "  -z, --tokenizer PATH   llama2.c tokenizer.bin (needed with a .bin checkpoint)\n"
            "  -p, --prompt TEXT      the text to tokenize (taken as is: no escapes)\n"
            "  -f, --file PATH        read the text from a file ('-' = stdin) instead\n"
            "      --pieces           print one 'ID<TAB>PIECE' line per token (the piece as\n"
            "                         the vocabulary stores it, control bytes escaped)\n"
            "      --no-bos           do not add BOS (nor EOS, where the vocabulary appends one)\n"
            "      --special          special tokens written in the text (such as <|im_start|>)\n"
            "                         become those tokens; without it the text is only text\n"
            "  -h, --help             this help\n");
}

/* 0 = parsed, 1 = --help shown, 2 = usage error (reported). */
static int parse_args(int argc, char **argv, tk_args *a)
{
    memset(a, 0, sizeof(*a));
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        const char **dst = NULL;
        if (!strcmp(s, "-h") || !strcmp(s, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(s, "--pieces")) {
            a->pieces = true;
        } else if (!strcmp(s, "--no-bos")) {
            a->no_bos = true;
        } else if (!strcmp(s, "--special")) {
            a->special = true;
        } else if (!strcmp(s, "-m") || !strcmp(s, "--model")) {
            dst = &a->model;
        } else if (!strcmp(s, "-z") || !strcmp(s, "--tokenizer")) {
            dst = &a->tokenizer;
        } else if (!strcmp(s, "-p") || !strcmp(s, "--prompt")) {
            dst = &a->prompt;
        } else if (!strcmp(s, "-f") || !strcmp(s, "--file")) {
            dst = &a->prompt_file;
        } else {
            fprintf(stderr, "kvrt-tokenize: unknown argument '%s' (see --help)\n", s);
            return 2;
        }
        if (dst) {
            if (i + 1 >= argc) {
                fprintf(stderr, "kvrt-tokenize: %s needs a value\n", s);
                return 2;
            }
            *dst = argv[++i];
        }
    }
    if (!a->model && !a->tokenizer) {
        fprintf(stderr, "kvrt-tokenize: give a model (-m) or a tokenizer (-z) (see --help)\n");
        return 2;
    }
    if (!a->prompt == !a->prompt_file) {
        fprintf(stderr, "kvrt-tokenize: give the text with exactly one of -p and -f\n");
        return 2;
    }
    return 0;
}

/* Reads a whole file (or stdin for "-") into a malloc'ed buffer. */
static char *read_all(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "kvrt-tokenize: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        char *bigger = cap < ((size_t)1 << 40) ? realloc(buf, cap * 2) : NULL;
        if (!bigger) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = bigger;
        cap *= 2;
    }
    bool bad = !buf || ferror(f);
    if (f != stdin)
        fclose(f);
    if (bad) {
        fprintf(stderr, "kvrt-tokenize: cannot read %s\n", path);
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static bool is_gguf(const char *path, bool *yes)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "kvrt-tokenize: cannot open %s: %s\n", path, strerror(errno));
        return false;
    }
    char magic[4] = {0};
    size_t got = fread(magic, 1, 4, f);
    fclose(f);
    *yes = got == 4 && memcmp(magic, "GGUF", 4) == 0;
    return true;
}

/* vocab_size of a llama2.c checkpoint: the 6th int32 of its header (negative
 * when the classifier is not shared). */
static bool checkpoint_vocab_size(const char *path, int32_t *n)
{
    FILE *f = fopen(path, "rb");
    int32_t hdr[7];
    size_t got = f ? fread(hdr, sizeof(int32_t), 7, f) : 0;
    if (f)
        fclose(f);
    if (got != 7 || hdr[5] == 0 || hdr[5] == INT32_MIN) {
        fprintf(stderr, "kvrt-tokenize: %s is neither a GGUF nor a llama2.c checkpoint with a vocab_size\n", path);
        return false;
    }
    *n = hdr[5] < 0 ? -hdr[5] : hdr[5];
    return true;
}

/* Loads the vocabulary the arguments name into *vocab, or a model file
 * (GGUF) into *mf whose vocab is then used. */
static bool load_vocab(const tk_args *a, kvrt_vocab *vocab, kvrt_model_file **mf, const kvrt_vocab **use)
{
    kvrt_error err = {0};
    int32_t expected = 0;
    if (a->model) {
        bool gguf = false;
        if (!is_gguf(a->model, &gguf))
            return false;
        if (gguf) {
            if (a->tokenizer) {
                fprintf(stderr, "kvrt-tokenize: -z is for llama2.c checkpoints; %s carries its vocabulary\n",
                        a->model);
                return false;
            }
            if (kvrt_model_file_load_gguf(a->model, NULL, true, NULL, mf, &err) != KVRT_OK) {
                fprintf(stderr, "kvrt-tokenize: %s: %s\n", a->model, err.message);
                return false;
            }
            *use = &(*mf)->vocab;
            return true;
        }
        if (!a->tokenizer) {
            fprintf(stderr, "kvrt-tokenize: %s is a llama2.c checkpoint: give its tokenizer.bin with -z\n",
                    a->model);
            return false;
        }
        if (!checkpoint_vocab_size(a->model, &expected))
            return false;
    }
    if (kvrt_vocab_load_llama2c(a->tokenizer, expected, NULL, vocab, &err) != KVRT_OK) {
        fprintf(stderr, "kvrt-tokenize: %s\n", err.message);
        return false;
    }
    *use = vocab;
    return true;
}

/* A piece on one line: bytes below 0x20, backslash and DEL escaped. */
static void print_piece(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\\')
            fputs("\\\\", stdout);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20 || c == 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
}

static int print_ids(const kvrt_tokenizer *tok, const int32_t *ids, size_t n, bool pieces)
{
    for (size_t i = 0; i < n; i++) {
        if (pieces) {
            size_t len = 0;
            const char *p = kvrt_tokenizer_piece(tok, ids[i], &len);
            printf("%d\t", ids[i]);
            print_piece(p, len);
            putchar('\n');
        } else {
            printf(i ? " %d" : "%d", ids[i]);
        }
    }
    if (!pieces)
        putchar('\n');
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "kvrt-tokenize: cannot write to stdout\n");
        return 1;
    }
    return 0;
}

static int tokenize(const tk_args *a, const kvrt_vocab *vocab)
{
    kvrt_tokenizer *tok = NULL;
    kvrt_error err = {0};
    if (kvrt_tokenizer_create(vocab, NULL, &tok, &err) != KVRT_OK) {
        fprintf(stderr, "kvrt-tokenize: %s\n", err.message);
        return 1;
    }
    size_t len = 0;
    char *file_text = NULL;
    const char *text = a->prompt;
    if (a->prompt_file) {
        file_text = read_all(a->prompt_file, &len);
        text = file_text;
    } else {
        len = strlen(a->prompt);
    }
    int rc = 1;
    if (text) {
        unsigned flags = (a->no_bos ? 0u : KVRT_TOKENIZE_ADD_SPECIAL) | (a->special ? KVRT_TOKENIZE_PARSE_SPECIAL : 0u);
        size_t n = 0;
        kvrt_status s = kvrt_tokenizer_encode(tok, text, len, flags, NULL, 0, &n);
        int32_t *ids = s == KVRT_OK || s == KVRT_ERR_INVALID_ARGUMENT ? malloc((n + 1) * sizeof(int32_t)) : NULL;
        if (ids)
            s = kvrt_tokenizer_encode(tok, text, len, flags, ids, n, &n);
        if (ids && s == KVRT_OK)
            rc = print_ids(tok, ids, n, a->pieces);
        else
            fprintf(stderr, "kvrt-tokenize: %s\n", ids ? kvrt_tokenizer_message(tok) : "out of memory");
        free(ids);
    }
    free(file_text);
    kvrt_tokenizer_destroy(tok);
    return rc;
}

int main(int argc, char **argv)
{
    tk_args a;
    int p = parse_args(argc, argv, &a);
    if (p)
        return p == 1 ? 0 : 2;
    kvrt_vocab vocab;
    kvrt_vocab_init(&vocab);
    kvrt_model_file *mf = NULL;
    const kvrt_vocab *use = NULL;
    int rc = load_vocab(&a, &vocab, &mf, &use) ? tokenize(&a, use) : 1;
    kvrt_model_file_free(mf);
    kvrt_vocab_free(NULL, &vocab);
    return rc;
}
