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
#include "cli.h"
#include "model/model_file.h"
#include "model/tokenizer.h"
#include "files.h"

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

static const char *const PROG = "kvrt-tokenize";

/* KVRT_CLI_CONTINUE, or the exit status after --help/--version or a usage error. */
static int parse_args(int argc, char **argv, tk_args *a)
{
    memset(a, 0, sizeof(*a));
    const kvrt_cli_opt opts[] = {
        KVRT_CLI_STR('m', "model", &a->model, "PATH",
                     "GGUF model or vocabulary-only GGUF, or a llama2.c checkpoint (.bin)"),
        KVRT_CLI_STR('z', "tokenizer", &a->tokenizer, "PATH", "llama2.c tokenizer.bin (needed with a .bin checkpoint)"),
        KVRT_CLI_STR('p', "prompt", &a->prompt, "TEXT", "the text to tokenize (taken as is: no escapes)"),
        KVRT_CLI_STR('f', "file", &a->prompt_file, "PATH",
                     "read the text from a file ('-' = stdin) instead, for texts longer\n"
                     "than a command line allows"),
        KVRT_CLI_BOOL(0, "pieces", &a->pieces,
                      "print one 'ID<TAB>PIECE' line per token (the piece as\n"
                      "the vocabulary stores it, control bytes escaped)"),
        KVRT_CLI_BOOL(0, "no-bos", &a->no_bos, "do not add BOS (nor EOS, where the vocabulary appends one)"),
        KVRT_CLI_BOOL(0, "special", &a->special,
                      "special tokens written in the text (such as <|im_start|>)\n"
                      "become those tokens; without it the text is only text"),
    };
    const kvrt_cli_spec spec = {
        .prog = PROG,
        .usage = "kvrt-tokenize -m MODEL [-z TOKENIZER] (-p TEXT | -f FILE) [--pieces] [--no-bos] [--special]\n"
                 "       kvrt-tokenize -z TOKENIZER (-p TEXT | -f FILE) [--pieces] [--no-bos] [--special]",
        .about = "Prints the token ids of TEXT on one line, space-separated (BOS first when the\n"
                 "vocabulary adds one).",
        .opts = opts,
        .n_opts = KVRT_ARRAY_LEN(opts),
        .args_hint = "the text goes after -p, or in a file with -f",
    };
    int first_arg;
    int rc = kvrt_cli_parse(&spec, argc, argv, &first_arg);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    if (!a->model && !a->tokenizer) {
        kvrt_cli_error(PROG, "give a model (-m) or a tokenizer (-z) (see --help)");
        return KVRT_CLI_USAGE;
    }
    if (!a->prompt == !a->prompt_file) {
        kvrt_cli_error(PROG, "give the text with exactly one of -p and -f");
        return KVRT_CLI_USAGE;
    }
    return KVRT_CLI_CONTINUE;
}

static bool is_gguf(const char *path, bool *yes)
{
    FILE *f = kvrt_tool_open_input("kvrt-tokenize", "model or vocabulary", path); /* a FIFO must not block */
    if (!f)
        return false;
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
    FILE *f = kvrt_tool_open_input("kvrt-tokenize", "checkpoint", path);
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
        file_text = kvrt_cli_read_file(PROG, a->prompt_file, &len);
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
    if (p != KVRT_CLI_CONTINUE)
        return p;
    kvrt_vocab vocab;
    kvrt_vocab_init(&vocab);
    kvrt_model_file *mf = NULL;
    const kvrt_vocab *use = NULL;
    int rc = load_vocab(&a, &vocab, &mf, &use) ? tokenize(&a, use) : 1;
    kvrt_model_file_free(mf);
    kvrt_vocab_free(NULL, &vocab);
    return rc;
}
