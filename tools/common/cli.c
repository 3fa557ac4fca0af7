#include "cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    long long v = strtoll(s, &end, 10);
    bool bad = errno != 0 || end == s;
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
    if (__builtin_mul_overflow((int64_t)v, mult, &value) || value < min || value > max) {
        kvrt_cli_error(prog, "%s: %s is out of range [%lld, %lld]", flag, s, (long long)min, (long long)max);
        return false;
    }
    *out = value;
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
