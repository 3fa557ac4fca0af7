/* The tools' --profile report (see profile_report.h). */
#include "profile_report.h"

#include "cli.h"
#include "table.h"

#define MAX_OPS 32

bool kvrt_tool_profile_enable(kvrt_context *ctx, const char *prog)
{
    if (kvrt_context_set_profiling(ctx, 1) == KVRT_OK)
        return true;
    kvrt_cli_error(prog, "--profile: %s", kvrt_context_message(ctx));
    return false;
}

/* Entries and their summed time. */
static int32_t read_profile(kvrt_context *ctx, kvrt_profile_entry *e, uint64_t *total_ns)
{
    int32_t n = KVRT_MIN(kvrt_context_profile(ctx, e, MAX_OPS), MAX_OPS);
    *total_ns = 0;
    for (int32_t i = 0; i < n; i++)
        *total_ns += e[i].total_ns;
    return n;
}

static double share(uint64_t ns, uint64_t total_ns)
{
    return total_ns ? 100.0 * (double)ns / (double)total_ns : 0.0;
}

static double mean_us(const kvrt_profile_entry *e)
{
    return e->calls ? (double)e->total_ns * 1e-3 / (double)e->calls : 0.0;
}

void kvrt_tool_profile_print(kvrt_context *ctx, const char *title, FILE *f)
{
    kvrt_profile_entry e[MAX_OPS];
    uint64_t total = 0;
    int32_t n = read_profile(ctx, e, &total);
    fprintf(f, "\n%s\n", title);
    if (n <= 0) {
        fprintf(f, "(no ops were timed)\n");
        return;
    }
    static const char *const hdr[] = {"op", "calls", "total ms", "mean us", "share"};
    kvrt_table t;
    if (!kvrt_table_init(&t, 5, hdr, "lrrrr"))
        return;
    uint64_t calls = 0;
    for (int32_t i = 0; i < n && kvrt_table_row(&t); i++) {
        calls += e[i].calls;
        kvrt_table_cell(&t, "%s", e[i].op);
        kvrt_table_cell(&t, "%llu", (unsigned long long)e[i].calls);
        kvrt_table_cell(&t, "%.3f", (double)e[i].total_ns * 1e-6);
        kvrt_table_cell(&t, "%.1f", mean_us(&e[i]));
        kvrt_table_cell(&t, "%.1f%%", share(e[i].total_ns, total));
    }
    if (kvrt_table_row(&t)) {
        kvrt_table_cell(&t, "total");
        kvrt_table_cell(&t, "%llu", (unsigned long long)calls);
        kvrt_table_cell(&t, "%.3f", (double)total * 1e-6);
        kvrt_table_cell(&t, "%.1f", calls ? (double)total * 1e-3 / (double)calls : 0.0);
        kvrt_table_cell(&t, "100.0%%");
    }
    kvrt_table_print(&t, f);
    kvrt_table_free(&t);
}

void kvrt_tool_profile_json(kvrt_json *j, const char *key, kvrt_context *ctx)
{
    kvrt_profile_entry e[MAX_OPS];
    uint64_t total = 0;
    int32_t n = read_profile(ctx, e, &total);
    kvrt_json_begin_array(j, key);
    for (int32_t i = 0; i < n; i++) {
        kvrt_json_begin_object(j, NULL);
        kvrt_json_str(j, "op", e[i].op);
        kvrt_json_int(j, "calls", (int64_t)e[i].calls);
        kvrt_json_num(j, "total_ms", (double)e[i].total_ns * 1e-6);
        kvrt_json_num(j, "mean_us", mean_us(&e[i]));
        kvrt_json_num(j, "share", share(e[i].total_ns, total) / 100.0);
        kvrt_json_end_object(j);
    }
    kvrt_json_end_array(j);
}
