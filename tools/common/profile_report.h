/* The tools' --profile report: a context's per-op times as a text table or
 * as a JSON member. */
#ifndef KVRT_TOOL_PROFILE_REPORT_H
#define KVRT_TOOL_PROFILE_REPORT_H

#include <stdio.h>

#include "json.h"
#include "kvrt.h"

/* Turns profiling on; false after printing "PROG: --profile: <why>" on stderr. */
bool kvrt_tool_profile_enable(kvrt_context *ctx, const char *prog);
/* | op | calls | total ms | mean us | share | (largest total first, a total row last). */
void kvrt_tool_profile_print(kvrt_context *ctx, const char *title, FILE *f);
/* "key": [{"op", "calls", "total_ms", "mean_us", "share"}, ...] */
void kvrt_tool_profile_json(kvrt_json *j, const char *key, kvrt_context *ctx);

#endif /* KVRT_TOOL_PROFILE_REPORT_H */
