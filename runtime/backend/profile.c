/* Per-op profiling: the backend-neutral table and the public calls. */
#include "backend/ops.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

void kvrt_profile_add(kvrt_profile *p, const char *op, uint64_t calls, uint64_t ns)
{
    int32_t i = 0;
    while (i < p->n && strcmp(p->e[i].op, op) != 0)
        i++;
    if (i == p->n) {
        if (p->n == KVRT_PROFILE_MAX_OPS) {
            i = KVRT_PROFILE_MAX_OPS - 1;
            p->e[i].op = "other";
        } else {
            p->e[p->n++] = (kvrt_profile_entry){.op = op};
        }
    }
    p->e[i].calls += calls;
    p->e[i].total_ns += ns;
}

uint64_t kvrt_profile_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

kvrt_status kvrt_context_set_profiling(kvrt_context *ctx, int on)
{
    if (!ctx || !ctx->be)
        return KVRT_ERR_INVALID_ARGUMENT;
    return kvrt_op_set_profiling(ctx->be, on != 0);
}

/* Largest total first; ties by name, so the order is stable. */
static int profile_cmp(const void *a, const void *b)
{
    const kvrt_profile_entry *x = a, *y = b;
    if (x->total_ns != y->total_ns)
        return x->total_ns < y->total_ns ? 1 : -1;
    return strcmp(x->op, y->op);
}

int32_t kvrt_context_profile(kvrt_context *ctx, kvrt_profile_entry *out, int32_t cap)
{
    if (!ctx || !ctx->be)
        return -1;
    kvrt_backend *be = ctx->be;
    if (cap < 0 || (cap > 0 && !out)) {
        kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_context_profile: %s",
                  cap < 0 ? "cap < 0" : "out is NULL");
        return -1;
    }
    kvrt_profile sorted = be->profile;
    qsort(sorted.e, (size_t)sorted.n, sizeof(sorted.e[0]), profile_cmp);
    if (cap > 0)
        memcpy(out, sorted.e, (size_t)KVRT_MIN(cap, sorted.n) * sizeof(sorted.e[0]));
    return sorted.n;
}

void kvrt_context_profile_reset(kvrt_context *ctx)
{
    if (ctx && ctx->be)
        memset(&ctx->be->profile, 0, sizeof(ctx->be->profile));
}
