/* Small argument helpers shared by the kvrt-* tools. Tools print usage errors
 * on stderr and exit with KVRT_CLI_USAGE (2), like most Unix tools. */
#ifndef KVRT_TOOL_CLI_H
#define KVRT_TOOL_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "common/kvrt_internal.h"

#define KVRT_CLI_USAGE 2 /* exit code of a usage error */

/* Prints "PROG: message" on stderr, newline added. */
void kvrt_cli_error(const char *prog, const char *fmt, ...) KVRT_PRINTF(2, 3);

/* True when argv[*i] is `flag`; then *value is its argument (argv[*i + 1]) and
 * *i advances past it. A flag at the end of argv prints "missing value" and
 * sets *value to NULL (the caller reports a usage error). */
bool kvrt_cli_flag(int argc, char **argv, int *i, const char *flag, const char **value, const char *prog);

/* Parses a decimal integer in [min, max] with an optional k/K suffix (x1024,
 * "4k" = 4096) when allow_k. On failure prints "PROG: FLAG: ..." and returns false. */
bool kvrt_cli_int(const char *prog, const char *flag, const char *s, int64_t min, int64_t max,
                  bool allow_k, int64_t *out);

/* Matches s against names[0..n): index, or -1 after printing
 * "PROG: FLAG: unknown value 'x' (one of: a, b, c)". */
int kvrt_cli_choice(const char *prog, const char *flag, const char *s, const char *const *names, int n);

#endif /* KVRT_TOOL_CLI_H */
