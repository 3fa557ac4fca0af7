/*
 * The kvrt-* tools' command lines: one getopt_long parser driven by a table
 * of option descriptors, one table of the flags every model-running tool
 * shares (kvrt-run and each kvrt-bench subcommand), strict numbers, and the
 * same exit codes everywhere: 0 ok, 1 failure, 2 usage error.
 *
 * A new tool adopts it in a few lines:
 *
 *     const char *model = NULL;
 *     int32_t n = 16;
 *     bool json = false;
 *     kvrt_cli_common common;
 *     kvrt_cli_common_init(&common, KVRT_DTYPE_F32, 1);
 *     const kvrt_cli_opt opts[] = {
 *         KVRT_CLI_STR('m', "model", &model, "FILE", "the model"),
 *         KVRT_CLI_INT32('n', "count", &n, 1, 1024, "N", "how many (default 16)"),
 *         KVRT_CLI_BOOL(0, "json", &json, "JSON on stdout"),
 *     };
 *     const kvrt_cli_spec spec = {.prog = "kvrt-x", .usage = "kvrt-x -m FILE [options]",
 *                                 .opts = opts, .n_opts = KVRT_ARRAY_LEN(opts), .common = &common};
 *     int first_arg, rc = kvrt_cli_parse(&spec, argc, argv, &first_arg);
 *     if (rc != KVRT_CLI_CONTINUE)
 *         return rc;                        // --help, --version (0) or a usage error (2)
 *     if (!kvrt_cli_common_resolve(spec.prog, &common))
 *         return KVRT_CLI_USAGE;
 *     kvrt_context_params cp = kvrt_context_default_params();
 *     kvrt_cli_common_context_params(&common, &cp);
 *
 * What every tool gets from kvrt_cli_parse: `--name=value` and `--name
 * value`, `-n3` and `-n 3`, `--` ending the options, unambiguous prefixes of
 * long names (getopt_long's rule), -h/--help generated from the table,
 * --version, messages on stderr that name the flag.
 */
#ifndef KVRT_TOOL_CLI_H
#define KVRT_TOOL_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kvrt.h"

#include "common/kvrt_internal.h"

/* Exit codes of every tool. */
#define KVRT_CLI_OK 0
#define KVRT_CLI_FAILURE 1
#define KVRT_CLI_USAGE 2
/* kvrt_cli_parse: parsing succeeded, the tool goes on. */
#define KVRT_CLI_CONTINUE (-1)

/* Longest list a list-valued flag takes (-t 1,2,4 on kvrt-bench model). */
#define KVRT_CLI_MAX_LIST 16

/* ---- option descriptors ------------------------------------------------------- */

typedef enum kvrt_cli_kind {
    KVRT_CLI_KIND_BOOL,   /* no value: *(bool *)dst = true */
    KVRT_CLI_KIND_COUNT,  /* no value: ++*(int *)dst (-v -v) */
    KVRT_CLI_KIND_STR,    /* *(const char **)dst = the value (points into argv) */
    KVRT_CLI_KIND_INT32,  /* *(int32_t *)dst: decimal integer in [min, max] */
    KVRT_CLI_KIND_INT64,  /* *(int64_t *)dst: decimal integer in [min, max] */
    KVRT_CLI_KIND_UINT64, /* *(uint64_t *)dst: decimal integer in [0, 2^64) (seeds) */
    KVRT_CLI_KIND_FLOAT,  /* *(float *)dst: finite number in [fmin, fmax] (no NaN, no inf) */
    KVRT_CLI_KIND_CHOICE, /* *(int *)dst: index of the value in `choices` (NULL-terminated) */
    KVRT_CLI_KIND_CALL    /* call(prog, flag, value, dst): lists, names, presets */
} kvrt_cli_kind;

/* Bits of kvrt_cli_opt.flags. */
enum {
    KVRT_CLI_K_SUFFIX = 1u << 0,  /* integers: a k/K suffix multiplies by 1024 ("4k" = 4096) */
    KVRT_CLI_ABOVE_MIN = 1u << 1  /* floats: fmin itself is refused (> fmin, not >= fmin) */
};

/* Parses one value of a KVRT_CLI_KIND_CALL option into dst; on a bad value
 * prints "PROG: FLAG: ..." on stderr and returns false. */
typedef bool (*kvrt_cli_call_fn)(const char *prog, const char *flag, const char *value, void *dst);

typedef struct kvrt_cli_opt {
    char short_name;     /* 'm' for -m; 0 = none */
    const char *name;    /* "model" for --model; required */
    kvrt_cli_kind kind;
    void *dst;           /* where the value goes; its type is the kind's */
    const char *meta;    /* the value's name in --help ("FILE", "N"); NULL for BOOL and COUNT */
    const char *help;    /* --help text; '\n' continues on an indented line; NULL = hidden */
    int64_t min, max;    /* INT32, INT64 */
    double fmin, fmax;   /* FLOAT */
    const char *const *choices; /* CHOICE */
    kvrt_cli_call_fn call;      /* CALL */
    unsigned flags;      /* KVRT_CLI_K_SUFFIX, KVRT_CLI_ABOVE_MIN */
    bool *seen;          /* optional: set to true when the flag is given */
} kvrt_cli_opt;

/* Descriptors for the usual cases (any field can also be set by name). */
#define KVRT_CLI_BOOL(S, NAME, DST, HELP) \
    {.short_name = (S), .name = (NAME), .kind = KVRT_CLI_KIND_BOOL, .dst = (DST), .help = (HELP)}
#define KVRT_CLI_STR(S, NAME, DST, META, HELP) \
    {.short_name = (S), .name = (NAME), .kind = KVRT_CLI_KIND_STR, .dst = (DST), .meta = (META), .help = (HELP)}
#define KVRT_CLI_INT32(S, NAME, DST, MIN, MAX, META, HELP)                                          \
    {.short_name = (S), .name = (NAME), .kind = KVRT_CLI_KIND_INT32, .dst = (DST), .min = (MIN), .max = (MAX), \
     .meta = (META), .help = (HELP)}
#define KVRT_CLI_INT64(S, NAME, DST, MIN, MAX, META, HELP)                                          \
    {.short_name = (S), .name = (NAME), .kind = KVRT_CLI_KIND_INT64, .dst = (DST), .min = (MIN), .max = (MAX), \
     .meta = (META), .help = (HELP)}
#define KVRT_CLI_FLOAT(S, NAME, DST, FMIN, FMAX, META, HELP)                                           \
    {.short_name = (S), .name = (NAME), .kind = KVRT_CLI_KIND_FLOAT, .dst = (DST), .fmin = (FMIN),      \
     .fmax = (FMAX), .meta = (META), .help = (HELP)}
#define KVRT_CLI_CHOICE(S, NAME, DST, CHOICES, META, HELP)                                          \
    {.short_name = (S), .name = (NAME), .kind = KVRT_CLI_KIND_CHOICE, .dst = (DST), .choices = (CHOICES), \
     .meta = (META), .help = (HELP)}
#define KVRT_CLI_CALL(S, NAME, FN, DST, META, HELP)                                                       \
    {.short_name = (S), .name = (NAME), .kind = KVRT_CLI_KIND_CALL, .call = (FN), .dst = (DST), .meta = (META), \
     .help = (HELP)}

/* ---- the common flags ---------------------------------------------------------- */

/* --backend --device -t --pipeline-cache --kv-type[-k|-v] --block-size
 * --int8-activations -v: one
 * table, one set of bounds, for kvrt-run and every kvrt-bench subcommand. */
typedef struct kvrt_cli_common {
    kvrt_backend_kind backend;  /* --backend auto|cpu|vulkan|opencl; AUTO unless given */
    const char *device;         /* --device as given; NULL = none */
    int32_t device_index;       /* --device N: N; else -1 */
    const char *device_name;    /* --device NAME (anything not an integer): NAME; else NULL */
    int32_t threads[KVRT_CLI_MAX_LIST]; /* -t: thread counts in [0, 1024]; 0 = all available cores */
    int n_threads;              /* counts given (0 = -t not given; threads[0] is then 0) */
    int max_threads;            /* counts one -t takes: 1, or a list up to KVRT_CLI_MAX_LIST */
    const char *pipeline_cache; /* --pipeline-cache FILE; NULL = none */
    kvrt_dtype kv_type;         /* --kv-type f32|f16|q8_0|q4_0|fp8|fp8_e5m2 (K and V); the tool's default unless
                                   given. After kvrt_cli_common_resolve: K's type (--kv-type-k wins) */
    kvrt_dtype kv_type_v;       /* after kvrt_cli_common_resolve: V's type (--kv-type-v, else --kv-type) */
    kvrt_dtype kv_type_k_flag, kv_type_v_flag; /* --kv-type-k, --kv-type-v as given */
    bool kv_type_k_given, kv_type_v_given;
    int32_t block_size;         /* --block-size 8|16|32 (the KV cache's rule); 16 unless given */
    int verbose;                /* -v, --verbose: times given */
    bool int8_activations;      /* --int8-activations: kvrt_context_params.int8_activations */
    kvrt_backend_choice choice; /* what --backend auto chose (kvrt_cli_common_resolve) */
} kvrt_cli_common;

/* The common table's parsers of --kv-type (into a kvrt_dtype: f32, f16, q8_0 or q4_0) and
 * --block-size (into an int32_t: 8, 16 or 32, the KV cache's rule), for tools
 * that take these two flags without the others (kvrt-mem). */
bool kvrt_cli_parse_kv_type(const char *prog, const char *flag, const char *value, void *dst);
bool kvrt_cli_parse_block_size(const char *prog, const char *flag, const char *value, void *dst);

/* Defaults: backend auto, no device, -t unset (all cores), no pipeline cache,
 * `kv_type`, block size 16; -t takes up to `max_threads` comma-separated counts.
 * A tool may change a default before kvrt_cli_parse (threads[0], or backend
 * = KVRT_BACKEND_CPU where its results are defined on the CPU); --help shows it. */
void kvrt_cli_common_init(kvrt_cli_common *c, kvrt_dtype kv_type, int max_threads);

/* --backend auto: asks the library (kvrt_backend_choose_auto), replaces AUTO
 * by its choice and prints it on stderr ("PROG: backend auto: cpu (no
 * hardware Vulkan or OpenCL device; ...)"). With -v, then prints the
 * settings the common flags resolved to. False after a reported error. */
bool kvrt_cli_common_resolve(const char *prog, kvrt_cli_common *c);
/* --kv-type, --kv-type-k, --kv-type-v into kv_type (K) and kv_type_v (V),
 * whatever their order (kvrt_cli_common_resolve does it first). */
void kvrt_cli_common_kv_types(kvrt_cli_common *c);

/* Backend, device, the first -t count and the pipeline cache into a
 * context's parameters (after kvrt_cli_common_resolve). */
void kvrt_cli_common_context_params(const kvrt_cli_common *c, kvrt_context_params *cp);

/* ---- parsing --------------------------------------------------------------------- */

typedef struct kvrt_cli_spec {
    const char *prog;          /* "kvrt-run", "kvrt-bench attn": the prefix of every message */
    const char *usage;         /* printed after "usage: "; several lines allowed */
    const char *about;         /* --help paragraph before the options; may be NULL */
    const kvrt_cli_opt *opts;  /* the tool's own options */
    size_t n_opts;
    kvrt_cli_common *common;   /* non-NULL: the common flags too, parsed into it */
    const char *epilog;        /* --help text after the options; may be NULL */
    int min_args, max_args;    /* positional arguments accepted */
    const char *args_hint;     /* added to "unexpected argument" messages; may be NULL */
} kvrt_cli_spec;

/* Parses argv[1..argc) with getopt_long (argv is permuted: options first).
 * Returns KVRT_CLI_CONTINUE with the positional arguments in
 * argv[*first_arg..argc), or the tool's exit status: 0 after -h/--help or
 * --version (printed on stdout), KVRT_CLI_USAGE after a message on stderr
 * (unknown option, missing or bad value, wrong number of arguments, --device
 * with --backend auto). Not thread-safe (getopt's state is global). */
int kvrt_cli_parse(const kvrt_cli_spec *spec, int argc, char **argv, int *first_arg);

/* The --help text of a spec. */
void kvrt_cli_print_help(const kvrt_cli_spec *spec, FILE *f);

/* "PROG (kvrt) 0.1.0" on stdout. */
void kvrt_cli_print_version(const char *prog);

/* ---- values ---------------------------------------------------------------------- */

/* Prints "PROG: message" on stderr, newline added. */
void kvrt_cli_error(const char *prog, const char *fmt, ...) KVRT_PRINTF(2, 3);

/* Strict decimal integer in [min, max]: no sign games, no spaces, no trailing
 * junk; a k/K suffix (x1024, "4k" = 4096) when allow_k. On failure prints
 * "PROG: FLAG: ..." and returns false. */
bool kvrt_cli_int(const char *prog, const char *flag, const char *s, int64_t min, int64_t max,
                  bool allow_k, int64_t *out);

/* Strict finite number in [min, max] (min excluded when above_min); NaN, inf,
 * hex floats and trailing junk are refused. Prints and returns false on failure. */
bool kvrt_cli_float(const char *prog, const char *flag, const char *s, double min, double max, bool above_min,
                    double *out);

/* Matches s against names[0..n): index, or -1 after printing
 * "PROG: FLAG: unknown value 'x' (one of: a, b, c)". */
int kvrt_cli_choice(const char *prog, const char *flag, const char *s, const char *const *names, int n);

/* "1,2,4k" into vals[0..*n), each a kvrt_cli_int in [min, max]; at most
 * `max_n` items (<= KVRT_CLI_MAX_LIST). Prints and returns false on failure. */
bool kvrt_cli_int_list(const char *prog, const char *flag, const char *s, int64_t min, int64_t max, bool allow_k,
                       int32_t *vals, int max_n, int *n);

/* Old argv walker, kept for tools not yet on kvrt_cli_parse: true when
 * argv[*i] is `flag`; then *value is argv[*i + 1] (NULL, with a message, at
 * the end of argv) and *i advances past it. */
bool kvrt_cli_flag(int argc, char **argv, int *i, const char *flag, const char **value, const char *prog);

/* ---- files and progress ------------------------------------------------------------- */

/* Reads a whole file, or stdin for "-", into a malloc'ed NUL-terminated
 * buffer (*len excludes the NUL): prompts longer than a command line allows.
 * NULL after printing "PROG: PATH: reason". */
char *kvrt_cli_read_file(const char *prog, const char *path, size_t *len);

/* Whole-percent progress on stderr ("\rPROG: WHAT  42%"), only when stderr
 * is a terminal: redirected to a file or pipe, it prints nothing. Pass
 * kvrt_cli_progress_fn with a kvrt_cli_progress as its user pointer wherever
 * the library takes a progress callback. */
typedef struct kvrt_cli_progress {
    const char *prog;
    const char *what; /* "loading", "writing"; NULL = none */
    int last;         /* last percentage printed, -1 = none */
    bool enabled;     /* stderr is a terminal */
} kvrt_cli_progress;

void kvrt_cli_progress_init(kvrt_cli_progress *p, const char *prog, const char *what);
void kvrt_cli_progress_fn(void *user, double fraction);

#endif /* KVRT_TOOL_CLI_H */
