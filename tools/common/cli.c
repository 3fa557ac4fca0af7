#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- values ------------------------------------------------------------------------ */

void kvrt_cli_error(const char *prog, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

bool kvrt_cli_flag(int argc, char **argv, int *i, const char *flag, const char **value, const char *prog)
{
    if (strcmp(argv[*i], flag) != 0)
        return false;
    if (*i + 1 >= argc) {
        kvrt_cli_error(prog, "%s: missing value", flag);
        *value = NULL;
        return true;
    }
    *i += 1;
    *value = argv[*i];
    return true;
}

bool kvrt_cli_int(const char *prog, const char *flag, const char *s, int64_t min, int64_t max,
                  bool allow_k, int64_t *out)
{
    if (!s || !*s) {
        kvrt_cli_error(prog, "%s: empty number", flag);
        return false;
    }
    errno = 0;
    char *end = NULL;
    /* strtoll skips leading spaces; a value with them was not meant as a number */
    long long v = isspace((unsigned char)s[0]) ? 0 : strtoll(s, &end, 10);
    bool bad = isspace((unsigned char)s[0]) || end == s;
    int64_t mult = 1;
    if (!bad && allow_k && (*end == 'k' || *end == 'K')) {
        mult = 1024;
        end++;
    }
    if (bad || *end != '\0') {
        kvrt_cli_error(prog, "%s: '%s' is not a number", flag, s);
        return false;
    }
    int64_t value;
    if (errno == ERANGE || __builtin_mul_overflow((int64_t)v, mult, &value) || value < min || value > max) {
        kvrt_cli_error(prog, "%s: %s is out of range [%lld, %lld]", flag, s, (long long)min, (long long)max);
        return false;
    }
    *out = value;
    return true;
}

/* Unsigned 64-bit, all of it: strtoull would take "-1" as 2^64 - 1. */
static bool cli_u64(const char *prog, const char *flag, const char *s, uint64_t *out)
{
    errno = 0;
    char *end = NULL;
    unsigned long long v = isdigit((unsigned char)s[0]) ? strtoull(s, &end, 10) : 0;
    if (!isdigit((unsigned char)s[0]) || *end != '\0') {
        kvrt_cli_error(prog, "%s: '%s' is not a number", flag, s);
        return false;
    }
    if (errno == ERANGE) {
        kvrt_cli_error(prog, "%s: %s is out of range [0, %llu]", flag, s, (unsigned long long)UINT64_MAX);
        return false;
    }
    *out = v;
    return true;
}

bool kvrt_cli_float(const char *prog, const char *flag, const char *s, double min, double max, bool above_min,
                    double *out)
{
    errno = 0;
    char *end = NULL;
    /* hex floats, "inf" and "nan" are what strtod takes beyond plain decimals */
    bool bad = !s || !*s || isspace((unsigned char)s[0]) || strpbrk(s, "xXnN") != NULL;
    double v = bad ? 0.0 : strtod(s, &end);
    if (bad || end == s || *end != '\0' || !isfinite(v) || errno == ERANGE) {
        kvrt_cli_error(prog, "%s: '%s' is not a finite number", flag, s ? s : "");
        return false;
    }
    if (v < min || v > max || (above_min && v == min)) {
        if (max >= FLT_MAX && min > -FLT_MAX) /* bounded below only */
            kvrt_cli_error(prog, "%s: %s is out of range (must be %s %g)", flag, s, above_min ? ">" : ">=", min);
        else if (min <= -FLT_MAX)
            kvrt_cli_error(prog, "%s: %s is out of range (at most %g)", flag, s, max);
        else
            kvrt_cli_error(prog, "%s: %s is out of range %s%g, %g]", flag, s, above_min ? "(" : "[", min, max);
        return false;
    }
    *out = v;
    return true;
}

int kvrt_cli_choice(const char *prog, const char *flag, const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    fprintf(stderr, "%s: %s: unknown value '%s' (one of:", prog, flag, s);
    for (int i = 0; i < n; i++)
        fprintf(stderr, "%s %s", i ? "," : "", names[i]);
    fprintf(stderr, ")\n");
    return -1;
}

bool kvrt_cli_int_list(const char *prog, const char *flag, const char *s, int64_t min, int64_t max, bool allow_k,
                       int32_t *vals, int max_n, int *n)
{
    char item[32];
    *n = 0;
    for (const char *p = s;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len == 0 || len >= sizeof(item) || *n == max_n) {
            if (max_n == 1)
                kvrt_cli_error(prog, "%s: takes one number, not '%s'", flag, s);
            else
                kvrt_cli_error(prog, "%s: bad list '%s' (at most %d numbers, comma-separated)", flag, s, max_n);
            return false;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        int64_t v;
        if (!kvrt_cli_int(prog, flag, item, min, max, allow_k, &v))
            return false;
        vals[(*n)++] = (int32_t)v;
        if (!comma)
            return true;
        p = comma + 1;
    }
}

/* ---- the common flags ------------------------------------------------------------------ */

/* The library's bounds: the thread pool takes up to 1024 workers, the KV cache
 * 8-, 16- or 32-token blocks (kvrt_block_manager_create and the sessions). */
#define CLI_MAX_THREADS 1024
static const char *const BLOCK_SIZES[] = {"8", "16", "32", NULL};
static const char *const KV_TYPES[] = {"f32", "f16", "q8_0", "q4_0", "fp8", "fp8_e5m2", NULL};
static const kvrt_dtype KV_TYPE_IDS[] = {KVRT_DTYPE_F32,  KVRT_DTYPE_F16,      KVRT_DTYPE_Q8_0,
                                         KVRT_DTYPE_Q4_0, KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E5M2};

void kvrt_cli_common_init(kvrt_cli_common *c, kvrt_dtype kv_type, int max_threads)
{
    memset(c, 0, sizeof(*c));
    c->backend = KVRT_BACKEND_AUTO;
    c->device_index = -1;
    c->max_threads = KVRT_MAX(1, KVRT_MIN(max_threads, KVRT_CLI_MAX_LIST));
    c->kv_type = kv_type;
    c->block_size = 16;
}

static bool parse_backend(const char *prog, const char *flag, const char *value, void *dst)
{
    if (kvrt_backend_parse(value, dst) == KVRT_OK)
        return true;
    kvrt_cli_error(prog, "%s: unknown backend '%s' (auto, cpu, vulkan, opencl)", flag, value);
    return false;
}

/* An index when the value is an integer (strictly: 4294967296 is not 0),
 * else a name the backend matches against its devices. */
static bool parse_device(const char *prog, const char *flag, const char *value, void *dst)
{
    kvrt_cli_common *c = dst;
    if (!*value) {
        kvrt_cli_error(prog, "%s: empty device (an index or a name)", flag);
        return false;
    }
    size_t digits = strspn(value + (value[0] == '-' || value[0] == '+'), "0123456789");
    c->device = value;
    c->device_index = -1;
    c->device_name = NULL;
    if (digits > 0 && digits == strlen(value + (value[0] == '-' || value[0] == '+'))) {
        int64_t v;
        if (!kvrt_cli_int(prog, flag, value, 0, INT32_MAX, false, &v))
            return false;
        c->device_index = (int32_t)v;
    } else {
        c->device_name = value;
    }
    return true;
}

static bool parse_threads(const char *prog, const char *flag, const char *value, void *dst)
{
    kvrt_cli_common *c = dst;
    return kvrt_cli_int_list(prog, flag, value, 0, CLI_MAX_THREADS, false, c->threads, c->max_threads,
                             &c->n_threads);
}

bool kvrt_cli_parse_kv_type(const char *prog, const char *flag, const char *value, void *dst)
{
    int t = kvrt_cli_choice(prog, flag, value, KV_TYPES, (int)KVRT_ARRAY_LEN(KV_TYPE_IDS));
    if (t >= 0)
        *(kvrt_dtype *)dst = KV_TYPE_IDS[t];
    return t >= 0;
}

bool kvrt_cli_parse_block_size(const char *prog, const char *flag, const char *value, void *dst)
{
    for (int i = 0; BLOCK_SIZES[i]; i++) {
        if (strcmp(value, BLOCK_SIZES[i]) == 0) {
            *(int32_t *)dst = (int32_t)atoi(value);
            return true;
        }
    }
    kvrt_cli_error(prog, "%s: use 8, 16 or 32 (KV block size in tokens), not '%s'", flag, value);
    return false;
}

/* --kv-type-k / --kv-type-v: a type, and that it was given (it then wins over --kv-type). */
static bool parse_kv_type_k(const char *prog, const char *flag, const char *value, void *dst)
{
    kvrt_cli_common *c = dst;
    return (c->kv_type_k_given = kvrt_cli_parse_kv_type(prog, flag, value, &c->kv_type_k_flag));
}
static bool parse_kv_type_v(const char *prog, const char *flag, const char *value, void *dst)
{
    kvrt_cli_common *c = dst;
    return (c->kv_type_v_given = kvrt_cli_parse_kv_type(prog, flag, value, &c->kv_type_v_flag));
}

enum { N_COMMON = 9 };

/* The table itself: the same names, help and bounds in every tool. */
static size_t common_table(kvrt_cli_common *c, kvrt_cli_opt out[N_COMMON])
{
    const bool list = c->max_threads > 1;
    const kvrt_cli_opt t[N_COMMON] = {
        KVRT_CLI_CALL(0, "backend", parse_backend, &c->backend, "NAME",
                      c->backend == KVRT_BACKEND_CPU
                          ? "cpu (default), auto, vulkan or opencl. auto: the first hardware Vulkan\n"
                            "device, else a hardware OpenCL device, else the CPU; software drivers\n"
                            "(lavapipe, PoCL's CPU device) only when their backend is named"
                          : "auto (default), cpu, vulkan or opencl. auto: the first hardware Vulkan\n"
                            "device, else a hardware OpenCL device, else the CPU; software drivers\n"
                            "(lavapipe, PoCL's CPU device) only when their backend is named"),
        KVRT_CLI_CALL(0, "device", parse_device, c, "N|NAME",
                      "device of --backend vulkan/opencl: index or part of its name"),
        KVRT_CLI_CALL('t', "threads", parse_threads, c, list ? "LIST" : "N",
                      list ? "CPU thread counts, comma-separated (0 = all available cores)"
                           : "CPU threads (0 = all available cores)"),
        KVRT_CLI_STR(0, "pipeline-cache", &c->pipeline_cache, "FILE",
                     "load compiled GPU pipelines from FILE, save new ones there"),
        KVRT_CLI_CALL(0, "kv-type", kvrt_cli_parse_kv_type, &c->kv_type, "TYPE",
                      c->kv_type == KVRT_DTYPE_F16
                          ? "KV cache type of K and V: f16 (default), f32, q8_0 or q4_0 (8/4-bit\n"
                            "groups of 32 with an F16 scale each; head_dim a multiple of 32), fp8\n"
                            "(E4M3) or fp8_e5m2 (8-bit floats, saturating, scale 1; any head_dim)"
                          : "KV cache type of K and V: f32 (default), f16, q8_0 or q4_0 (8/4-bit\n"
                            "groups of 32 with an F16 scale each; head_dim a multiple of 32), fp8\n"
                            "(E4M3) or fp8_e5m2 (8-bit floats, saturating, scale 1; any head_dim)"),
        KVRT_CLI_CALL(0, "kv-type-k", parse_kv_type_k, c, "TYPE",
                      "KV type of the keys alone (wins over --kv-type; keys are the sensitive half)"),
        KVRT_CLI_CALL(0, "kv-type-v", parse_kv_type_v, c, "TYPE",
                      "KV type of the values alone (wins over --kv-type)"),
        KVRT_CLI_CALL(0, "block-size", kvrt_cli_parse_block_size, &c->block_size, "N",
                      "tokens per KV block: 8, 16 (default) or 32"),
        {.short_name = 'v', .name = "verbose", .kind = KVRT_CLI_KIND_COUNT, .dst = &c->verbose,
         .help = "more detail on stderr"},
    };
    memcpy(out, t, sizeof(t));
    return N_COMMON;
}

/* -v: the settings the common flags resolved to, one line on stderr. */
static void common_describe(const char *prog, const kvrt_cli_common *c)
{
    fprintf(stderr, "%s: backend %s, device %s, threads ", prog, kvrt_backend_name(c->backend),
            c->device ? c->device : c->device_index >= 0 ? c->choice.device : "(default)");
    for (int i = 0; i < KVRT_MAX(c->n_threads, 1); i++)
        fprintf(stderr, i ? ",%d" : "%d", (int)c->threads[i]);
    char kv[40];
    if (c->kv_type_v != c->kv_type)
        snprintf(kv, sizeof(kv), "K %s / V %s", kvrt_dtype_name(c->kv_type), kvrt_dtype_name(c->kv_type_v));
    else
        snprintf(kv, sizeof(kv), "%s", kvrt_dtype_name(c->kv_type));
    fprintf(stderr, "%s, KV %s, block size %d, pipeline cache %s\n", c->threads[0] == 0 ? " (all cores)" : "", kv,
            (int)c->block_size, c->pipeline_cache ? c->pipeline_cache : "none");
}

void kvrt_cli_common_kv_types(kvrt_cli_common *c)
{
    c->kv_type_v = c->kv_type_v_given ? c->kv_type_v_flag : c->kv_type;
    if (c->kv_type_k_given)
        c->kv_type = c->kv_type_k_flag;
    c->kv_type_k_given = c->kv_type_v_given = false; /* resolved once */
}

bool kvrt_cli_common_resolve(const char *prog, kvrt_cli_common *c)
{
    kvrt_cli_common_kv_types(c);
    if (c->backend == KVRT_BACKEND_AUTO) {
        kvrt_error err;
        if (kvrt_backend_choose_auto(&c->choice, &err) != KVRT_OK) {
            kvrt_cli_error(prog, "--backend auto: %s", err.message);
            return false;
        }
        c->backend = c->choice.backend;
        c->device_index = c->choice.device_index;
        fprintf(stderr, "%s: backend auto: %s%s%s (%s)\n", prog, kvrt_backend_name(c->backend),
                c->choice.device[0] ? " " : "", c->choice.device, c->choice.reason);
    }
    if (c->verbose)
        common_describe(prog, c);
    return true;
}

void kvrt_cli_common_context_params(const kvrt_cli_common *c, kvrt_context_params *cp)
{
    cp->backend = c->backend;
    cp->device_index = c->device_index;
    cp->device_name = c->device_name;
    cp->n_threads = c->threads[0];
    cp->pipeline_cache_path = c->pipeline_cache;
}

/* ---- --help and --version ------------------------------------------------------------------ */

#define HELP_COLUMN 26

static void print_opt(const kvrt_cli_opt *o, FILE *f)
{
    if (!o->help)
        return;
    char head[96];
    int n = snprintf(head, sizeof(head), "  %c%c%s--%s%s%s", o->short_name ? '-' : ' ',
                     o->short_name ? o->short_name : ' ', o->short_name ? ", " : "  ", o->name, o->meta ? " " : "",
                     o->meta ? o->meta : "");
    fputs(head, f);
    if (n >= HELP_COLUMN - 1)
        fprintf(f, "\n%*s", HELP_COLUMN, "");
    else
        fprintf(f, "%*s", HELP_COLUMN - n, "");
    for (const char *p = o->help; *p; p++) {
        fputc(*p, f);
        if (*p == '\n')
            fprintf(f, "%*s", HELP_COLUMN, "");
    }
    fputc('\n', f);
}

void kvrt_cli_print_help(const kvrt_cli_spec *spec, FILE *f)
{
    fprintf(f, "usage: %s\n", spec->usage);
    if (spec->about)
        fprintf(f, "\n%s\n", spec->about);
    fprintf(f, "\noptions:\n");
    for (size_t i = 0; i < spec->n_opts; i++)
        print_opt(&spec->opts[i], f);
    if (spec->common) {
        kvrt_cli_opt common[N_COMMON];
        size_t n = common_table(spec->common, common);
        for (size_t i = 0; i < n; i++)
            print_opt(&common[i], f);
    }
    const kvrt_cli_opt help = {.short_name = 'h', .name = "help", .help = "this text"};
    const kvrt_cli_opt version = {.name = "version", .help = "the version, then exit"};
    print_opt(&help, f);
    print_opt(&version, f);
    if (spec->epilog)
        fprintf(f, "\n%s\n", spec->epilog);
    fprintf(f, "\nexit status: 0 ok, 1 failure, 2 usage error\n");
}

void kvrt_cli_print_version(const char *prog)
{
    printf("%s (kvrt) %s\n", prog, kvrt_version());
}

/* ---- parsing ------------------------------------------------------------------------------- */

/* getopt_long's `val` of the table's i-th option (long names without a short one). */
#define VAL_BASE 1000
#define VAL_VERSION 999

typedef struct cli_table {
    const kvrt_cli_spec *spec;
    kvrt_cli_opt common[N_COMMON];
    size_t n_common;
    size_t n;                 /* tool options + common options */
    struct option *longopts;  /* [n + 3]: + help, version, terminator */
    char *shortopts;          /* ":" + "x:" per short option + "h" */
} cli_table;

static const kvrt_cli_opt *table_opt(const cli_table *t, size_t i)
{
    return i < t->spec->n_opts ? &t->spec->opts[i] : &t->common[i - t->spec->n_opts];
}

static bool takes_value(const kvrt_cli_opt *o)
{
    return o->kind != KVRT_CLI_KIND_BOOL && o->kind != KVRT_CLI_KIND_COUNT;
}

static bool table_build(cli_table *t, const kvrt_cli_spec *spec)
{
    memset(t, 0, sizeof(*t));
    t->spec = spec;
    t->n_common = spec->common ? common_table(spec->common, t->common) : 0;
    t->n = spec->n_opts + t->n_common;
    t->longopts = calloc(t->n + 3, sizeof(struct option));
    t->shortopts = calloc(2 * t->n + 4, 1);
    if (!t->longopts || !t->shortopts) {
        kvrt_cli_error(spec->prog, "out of memory");
        return false;
    }
    char *s = t->shortopts;
    *s++ = ':'; /* a missing value returns ':' instead of '?' */
    for (size_t i = 0; i < t->n; i++) {
        const kvrt_cli_opt *o = table_opt(t, i);
        bool arg = takes_value(o);
        t->longopts[i] = (struct option){o->name, arg ? required_argument : no_argument, NULL,
                                         o->short_name ? o->short_name : (int)(VAL_BASE + i)};
        if (o->short_name) {
            *s++ = o->short_name;
            if (arg)
                *s++ = ':';
        }
    }
    *s++ = 'h';
    t->longopts[t->n] = (struct option){"help", no_argument, NULL, 'h'};
    t->longopts[t->n + 1] = (struct option){"version", no_argument, NULL, VAL_VERSION};
    return true;
}

static void table_free(cli_table *t)
{
    free(t->longopts);
    free(t->shortopts);
}

/* The option getopt_long returned (`val`), or NULL. */
static const kvrt_cli_opt *table_find(const cli_table *t, int val)
{
    if (val >= VAL_BASE && (size_t)(val - VAL_BASE) < t->n)
        return table_opt(t, (size_t)(val - VAL_BASE));
    for (size_t i = 0; val > 0 && val < 256 && i < t->n; i++)
        if (table_opt(t, i)->short_name == val)
            return table_opt(t, i);
    return NULL;
}

static bool apply(const char *prog, const kvrt_cli_opt *o, const char *value)
{
    char flag[64];
    snprintf(flag, sizeof(flag), "--%s", o->name);
    int64_t i64;
    double d;
    switch (o->kind) {
    case KVRT_CLI_KIND_BOOL: *(bool *)o->dst = true; break;
    case KVRT_CLI_KIND_COUNT: ++*(int *)o->dst; break;
    case KVRT_CLI_KIND_STR: *(const char **)o->dst = value; break;
    case KVRT_CLI_KIND_INT32:
    case KVRT_CLI_KIND_INT64:
        if (!kvrt_cli_int(prog, flag, value, o->min, o->max, o->flags & KVRT_CLI_K_SUFFIX, &i64))
            return false;
        if (o->kind == KVRT_CLI_KIND_INT32)
            *(int32_t *)o->dst = (int32_t)i64;
        else
            *(int64_t *)o->dst = i64;
        break;
    case KVRT_CLI_KIND_UINT64:
        if (!cli_u64(prog, flag, value, o->dst))
            return false;
        break;
    case KVRT_CLI_KIND_FLOAT:
        if (!kvrt_cli_float(prog, flag, value, o->fmin, o->fmax, o->flags & KVRT_CLI_ABOVE_MIN, &d))
            return false;
        *(float *)o->dst = (float)d;
        break;
    case KVRT_CLI_KIND_CHOICE: {
        int n = 0;
        while (o->choices[n])
            n++;
        int k = kvrt_cli_choice(prog, flag, value, o->choices, n);
        if (k < 0)
            return false;
        *(int *)o->dst = k;
        break;
    }
    case KVRT_CLI_KIND_CALL:
        if (!o->call(prog, flag, value, o->dst))
            return false;
        break;
    }
    if (o->seen)
        *o->seen = true;
    return true;
}

/* An unknown, ambiguous or misused option; `arg` is the argv element. */
static void report_bad_option(const cli_table *t, int optopt_val, const char *arg)
{
    const char *prog = t->spec->prog;
    const kvrt_cli_opt *o = table_find(t, optopt_val);
    if (o && o->short_name == optopt_val && strncmp(arg, "--", 2) != 0) {
        kvrt_cli_error(prog, "option '-%c' is misused (see --help)", optopt_val);
    } else if (o) {
        kvrt_cli_error(prog, "--%s takes no value (see --help)", o->name);
    } else if (optopt_val > 0 && optopt_val < 256) {
        kvrt_cli_error(prog, "unknown option '-%c' (see --help)", optopt_val);
    } else {
        /* a long name that is unknown, or a prefix of several */
        size_t len = strcspn(arg + 2, "=");
        int matches = 0;
        for (size_t i = 0; strncmp(arg, "--", 2) == 0 && i < t->n; i++)
            matches += strncmp(table_opt(t, i)->name, arg + 2, len) == 0;
        if (matches > 1) {
            fprintf(stderr, "%s: option '%.*s' is ambiguous (", prog, (int)len + 2, arg);
            for (size_t i = 0, k = 0; i < t->n; i++)
                if (strncmp(table_opt(t, i)->name, arg + 2, len) == 0)
                    fprintf(stderr, "%s--%s", k++ ? ", " : "", table_opt(t, i)->name);
            fprintf(stderr, ")\n");
        } else
            kvrt_cli_error(prog, "unknown option '%s' (see --help)", arg);
    }
}

/* Rules between the common flags, checked once all are parsed. */
static bool common_check(const char *prog, const kvrt_cli_common *c)
{
    if (c->device && c->backend == KVRT_BACKEND_AUTO) {
        kvrt_cli_error(prog, "--device picks a device of a named backend: add --backend vulkan or "
                             "--backend opencl");
        return false;
    }
    if (c->device && c->backend == KVRT_BACKEND_CPU)
        fprintf(stderr, "%s: warning: --device is for GPU backends; the cpu backend ignores it\n", prog);
    return true;
}

static int parse_loop(const cli_table *t, int argc, char **argv)
{
    const kvrt_cli_spec *spec = t->spec;
    optind = 0; /* glibc: 0 restarts the scan from scratch, even after an earlier parse */
    opterr = 0; /* our messages, not getopt's */
    for (;;) {
        int prev = optind ? optind : 1;
        int c = getopt_long(argc, argv, t->shortopts, t->longopts, NULL);
        if (c == -1)
            return KVRT_CLI_CONTINUE;
        if (c == 'h') {
            kvrt_cli_print_help(spec, stdout);
            return KVRT_CLI_OK;
        }
        if (c == VAL_VERSION) {
            kvrt_cli_print_version(spec->prog);
            return KVRT_CLI_OK;
        }
        /* the element getopt just read: optind has moved past it */
        const char *arg = argv[optind > prev ? optind - 1 : prev];
        if (c == ':') {
            const kvrt_cli_opt *o = table_find(t, optopt);
            kvrt_cli_error(spec->prog, "--%s: missing value", o ? o->name : "?");
            return KVRT_CLI_USAGE;
        }
        const kvrt_cli_opt *o = c == '?' ? NULL : table_find(t, c);
        if (!o) {
            report_bad_option(t, optopt, arg);
            return KVRT_CLI_USAGE;
        }
        if (!apply(spec->prog, o, optarg))
            return KVRT_CLI_USAGE;
    }
}

int kvrt_cli_parse(const kvrt_cli_spec *spec, int argc, char **argv, int *first_arg)
{
    cli_table t;
    int rc = table_build(&t, spec) ? parse_loop(&t, argc, argv) : KVRT_CLI_USAGE;
    table_free(&t);
    if (rc != KVRT_CLI_CONTINUE)
        return rc;
    int n_args = argc - optind;
    *first_arg = optind;
    if (n_args > spec->max_args) {
        kvrt_cli_error(spec->prog, "unexpected argument '%s'%s%s (see --help)", argv[optind + spec->max_args],
                       spec->args_hint ? "; " : "", spec->args_hint ? spec->args_hint : "");
        return KVRT_CLI_USAGE;
    }
    if (n_args < spec->min_args) {
        kvrt_cli_error(spec->prog, "%d argument%s missing (see --help)", spec->min_args - n_args,
                       spec->min_args - n_args == 1 ? "" : "s");
        return KVRT_CLI_USAGE;
    }
    if (spec->common && !common_check(spec->prog, spec->common))
        return KVRT_CLI_USAGE;
    return KVRT_CLI_CONTINUE;
}

/* ---- files and progress ----------------------------------------------------------------------- */

char *kvrt_cli_read_file(const char *prog, const char *path, size_t *len)
{
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        kvrt_cli_error(prog, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, f);
        if (n < cap - 1)
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
    bool failed = !buf || ferror(f);
    int saved = errno;
    if (!is_stdin)
        fclose(f);
    if (failed) {
        kvrt_cli_error(prog, "cannot read %s: %s", path, buf ? strerror(saved) : "out of memory");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

void kvrt_cli_progress_init(kvrt_cli_progress *p, const char *prog, const char *what)
{
    p->prog = prog;
    p->what = what;
    p->last = -1;
    p->enabled = isatty(STDERR_FILENO) == 1;
}

void kvrt_cli_progress_fn(void *user, double fraction)
{
    kvrt_cli_progress *p = user;
    int pct = (int)(fraction * 100.0);
    pct = pct < 0 ? 0 : pct > 100 ? 100 : pct;
    if (!p->enabled || pct == p->last)
        return;
    p->last = pct;
    fprintf(stderr, "\r%s: %s%s%3d%%%s", p->prog, p->what ? p->what : "", p->what ? " " : "", pct,
            pct == 100 ? "\n" : "");
    fflush(stderr);
}
