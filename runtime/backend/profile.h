/* Per-op profiling tables (kvrt_context_set_profiling): each backend adds
 * (op, calls, nanoseconds) as it learns them; the context reads them out.
 * Op names are static strings ("matmul", "attn_decode", ...), the same on
 * every backend. Not installed. */
#ifndef KVRT_PROFILE_H
#define KVRT_PROFILE_H

#include "kvrt.h"

#include <stdint.h>

/* Distinct op names one table holds; later names fold into the last slot,
 * "other" (the vtable has fewer ops than this). */
#define KVRT_PROFILE_MAX_OPS 24

typedef struct kvrt_profile {
    int32_t n;
    kvrt_profile_entry e[KVRT_PROFILE_MAX_OPS];
} kvrt_profile;

/* Adds `calls` calls taking `ns` nanoseconds to op `op` (a static string). */
void kvrt_profile_add(kvrt_profile *p, const char *op, uint64_t calls, uint64_t ns);
/* Monotonic host clock in nanoseconds. */
uint64_t kvrt_profile_now_ns(void);

#endif /* KVRT_PROFILE_H */
