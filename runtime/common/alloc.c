/* Host memory through the embedder's allocator (or malloc). */
#include "common/kvrt_internal.h"

#include <stdlib.h>
#include <string.h>

void *kvrt_alloc(const kvrt_allocator *a, size_t size, size_t alignment)
{
    if (alignment == 0)
        alignment = 16;
    if (size == 0)
        size = 1;
    if (a && a->alloc)
        return a->alloc(a->user, size, alignment);
    if (alignment <= 16)
        return malloc(size);
    void *p = NULL;
    if (alignment < sizeof(void *))
        alignment = sizeof(void *);
    if (posix_memalign(&p, alignment, size) != 0)
        return NULL;
    return p;
}

void *kvrt_calloc(const kvrt_allocator *a, size_t count, size_t size)
{
    size_t bytes;
    if (!kvrt_mul_size(count, size, &bytes))
        return NULL;
    void *p = kvrt_alloc(a, bytes, 0);
    if (p)
        memset(p, 0, bytes ? bytes : 1);
    return p;
}

bool kvrt_grow_array(const kvrt_allocator *a, void **p, size_t used, size_t count, size_t elem)
{
    void *n = kvrt_calloc(a, count, elem);
    if (!n)
        return false;
    if (used && *p)
        memcpy(n, *p, used * elem);
    kvrt_free(a, *p);
    *p = n;
    return true;
}

void kvrt_free(const kvrt_allocator *a, void *ptr)
{
    if (!ptr)
        return;
    if (a && a->free)
        a->free(a->user, ptr);
    else
        free(ptr);
}

char *kvrt_strdup(const kvrt_allocator *a, const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = kvrt_alloc(a, n, 1);
    if (d)
        memcpy(d, s, n);
    return d;
}
