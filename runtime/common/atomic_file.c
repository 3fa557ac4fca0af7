/* Writing a file whole or not at all: the bytes go to a temporary file beside
 * the target, renamed over it only when everything was written. A failed
 * write leaves an existing target untouched, and a target that is also an
 * input (a memory-mapped model converted onto itself) is never truncated
 * while it is being read. */
#include "common/kvrt_internal.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

kvrt_status kvrt_atomic_file_open(const char *path, kvrt_atomic_file *af, kvrt_error *err)
{
    af->f = NULL;
    af->path = path;
    /* unique per process and per call, so two threads saving one path never
     * share a temporary; opened exclusively, so a file someone else made (or
     * one a crashed run with the same pid left) is skipped, never clobbered */
    static atomic_ulong serial;
    for (int attempt = 0; attempt < 64; attempt++) {
        unsigned long k = atomic_fetch_add(&serial, 1);
        int n = snprintf(af->tmp, sizeof(af->tmp), "%s.tmp-%ld-%lu", path, (long)getpid(), k);
        if (n < 0 || (size_t)n >= sizeof(af->tmp))
            return kvrt_fail(err, KVRT_ERR_IO, "output path '%s' is too long", path);
        af->f = fopen(af->tmp, "wbx");
        if (af->f)
            return KVRT_OK;
        if (errno != EEXIST)
            break;
    }
    return kvrt_fail(err, KVRT_ERR_IO, "cannot create '%s': %s", af->tmp, strerror(errno));
}

kvrt_status kvrt_atomic_file_close(kvrt_atomic_file *af, kvrt_status status, kvrt_error *err)
{
    if (!af->f)
        return status;
    if (fclose(af->f) != 0 && status == KVRT_OK)
        status = kvrt_fail(err, KVRT_ERR_IO, "cannot write '%s': %s", af->tmp, strerror(errno));
    af->f = NULL;
    if (status == KVRT_OK && rename(af->tmp, af->path) != 0)
        status = kvrt_fail(err, KVRT_ERR_IO, "cannot rename '%s' to '%s': %s", af->tmp, af->path, strerror(errno));
    if (status != KVRT_OK)
        remove(af->tmp);
    return status;
}
