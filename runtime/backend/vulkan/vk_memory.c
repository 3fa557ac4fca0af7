/* Device memory of the Vulkan backend: logical buffers split into segments
 * (each within one binding range and one allocation), a memory budget, and
 * host-visible staging for upload and download. */
#include "backend/vulkan/vk_internal.h"

#include <string.h>

#define KVRT_VK_STAGING_BYTES ((size_t)16 << 20)

static size_t vk_limit(const kvrt_vk_backend *vk, uint64_t lim)
{
    if (vk->debug.max_segment_bytes)
        lim = KVRT_MIN(lim, (uint64_t)vk->debug.max_segment_bytes);
    lim &= ~(uint64_t)255; /* keeps segment starts aligned for any binding offset */
    if (lim > SIZE_MAX)
        lim = SIZE_MAX & ~(size_t)255;
    return lim ? (size_t)lim : 256;
}

size_t kvrt_vk_max_segment(const kvrt_vk_backend *vk)
{
    return vk_limit(vk, KVRT_MIN(vk->caps.max_storage_range, vk->caps.max_alloc));
}

size_t kvrt_vk_max_pool_segment(const kvrt_vk_backend *vk)
{
    /* below 4 GiB: 32-bit word indices inside a segment stay exact */
    uint64_t bda_lim = KVRT_MIN(vk->caps.max_alloc, ((uint64_t)4 << 30) - 256);
    return vk->caps.bda ? vk_limit(vk, bda_lim) : kvrt_vk_max_segment(vk);
}

static uint32_t vk_find_type(const VkPhysicalDeviceMemoryProperties *mp, uint32_t bits, VkMemoryPropertyFlags want,
                             VkMemoryPropertyFlags prefer)
{
    uint32_t fallback = UINT32_MAX;
    for (uint32_t i = 0; i < mp->memoryTypeCount; i++) {
        VkMemoryPropertyFlags f = mp->memoryTypes[i].propertyFlags;
        if (!(bits & (1u << i)) || (f & want) != want)
            continue;
        if ((f & prefer) == prefer)
            return i;
        if (fallback == UINT32_MAX)
            fallback = i;
    }
    return fallback;
}

static void vk_segment_free(kvrt_vk_backend *vk, kvrt_vk_segment *s)
{
    if (s->map)
        vk->vk.vkUnmapMemory(vk->device, s->mem);
    if (s->buf)
        vk->vk.vkDestroyBuffer(vk->device, s->buf, NULL);
    if (s->mem) {
        vk->vk.vkFreeMemory(vk->device, s->mem, NULL);
        vk->used -= s->alloc;
    }
    memset(s, 0, sizeof(*s));
}

void kvrt_vk_buffer_free(kvrt_vk_backend *vk, kvrt_buffer *b)
{
    if (!b)
        return;
    for (uint32_t i = 0; b->segs && i < b->n_segs; i++)
        vk_segment_free(vk, &b->segs[i]);
    kvrt_vk_buffer_free(vk, b->addr_table);
    kvrt_free(vk->base.alloc, b->segs);
    kvrt_free(vk->base.alloc, b);
}

static kvrt_status vk_segment_create(kvrt_vk_backend *vk, size_t bytes, unsigned flags, kvrt_vk_segment *s)
{
    VkBufferCreateInfo bi = {.sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO, .size = (bytes + 15) & ~(size_t)15,
                             .usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
                                      VK_BUFFER_USAGE_TRANSFER_DST_BIT |
                                      (vk->caps.bda ? VK_BUFFER_USAGE_SHADER_DEVICE_ADDRESS_BIT : 0),
                             .sharingMode = VK_SHARING_MODE_EXCLUSIVE};
    VkResult r = vk->vk.vkCreateBuffer(vk->device, &bi, NULL, &s->buf);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkCreateBuffer");
    VkMemoryRequirements req;
    vk->vk.vkGetBufferMemoryRequirements(vk->device, s->buf, &req);
    bool host = flags & KVRT_BUFFER_HOST_VISIBLE;
    VkPhysicalDeviceMemoryProperties mp;
    vkGetPhysicalDeviceMemoryProperties(vk->phys, &mp);
    uint32_t type = host ? vk_find_type(&mp, req.memoryTypeBits,
                                        VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                                        VK_MEMORY_PROPERTY_HOST_CACHED_BIT)
                         : vk_find_type(&mp, req.memoryTypeBits, 0, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    if (type == UINT32_MAX)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INTERNAL, "vulkan: no memory type for a %s buffer",
                         host ? "host-visible" : "device");
    if (!host && vk->budget && (vk->used > vk->budget || req.size > vk->budget - vk->used))
        return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_DEVICE_MEMORY,
                         "vulkan: %llu more bytes would exceed the memory budget (%llu of %llu used; "
                         "kvrt_context_limits.memory_budget)",
                         (unsigned long long)req.size, (unsigned long long)vk->used, (unsigned long long)vk->budget);
    VkMemoryAllocateFlagsInfo fi = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_FLAGS_INFO,
                                     .flags = VK_MEMORY_ALLOCATE_DEVICE_ADDRESS_BIT};
    VkMemoryAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO, .pNext = vk->caps.bda ? &fi : NULL,
                               .allocationSize = req.size, .memoryTypeIndex = type};
    r = vk->vk.vkAllocateMemory(vk->device, &ai, NULL, &s->mem);
    if (r != VK_SUCCESS) {
        s->mem = VK_NULL_HANDLE;
        if (r == VK_ERROR_OUT_OF_HOST_MEMORY)
            r = VK_ERROR_OUT_OF_DEVICE_MEMORY; /* lavapipe's device memory is host memory */
        return kvrt_vk_result(vk, r, "vkAllocateMemory");
    }
    s->alloc = host ? 0 : req.size;
    vk->used += s->alloc;
    r = vk->vk.vkBindBufferMemory(vk->device, s->buf, s->mem, 0);
    if (r == VK_SUCCESS && host)
        r = vk->vk.vkMapMemory(vk->device, s->mem, 0, VK_WHOLE_SIZE, 0, &s->map);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, host ? "vkMapMemory" : "vkBindBufferMemory");
    s->size = bytes;
    if (vk->caps.bda) {
        VkBufferDeviceAddressInfo ai2 = {.sType = VK_STRUCTURE_TYPE_BUFFER_DEVICE_ADDRESS_INFO, .buffer = s->buf};
        s->addr = vk->vk.vkGetBufferDeviceAddress(vk->device, &ai2);
    }
    return KVRT_OK;
}

kvrt_status kvrt_vk_buffer_create_seg(kvrt_vk_backend *vk, size_t size, size_t seg_bytes, unsigned flags,
                                      kvrt_buffer **out)
{
    *out = NULL;
    /* an explicit segment size (KV pools) may reach one allocation when the
     * shaders address it through buffer device addresses */
    size_t max_seg = seg_bytes ? kvrt_vk_max_pool_segment(vk) : kvrt_vk_max_segment(vk);
    if (seg_bytes == 0 || seg_bytes > max_seg)
        seg_bytes = max_seg;
    size_t n = size == 0 ? 1 : (size - 1) / seg_bytes + 1;
    if (n > UINT32_MAX)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INVALID_ARGUMENT, "vulkan: buffer of %zu bytes is too large", size);
    kvrt_buffer *b = kvrt_calloc(vk->base.alloc, 1, sizeof(*b));
    kvrt_vk_segment *segs = b ? kvrt_calloc(vk->base.alloc, n, sizeof(*segs)) : NULL;
    if (!segs) {
        kvrt_free(vk->base.alloc, b);
        return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory");
    }
    b->head.size = size;
    b->seg_bytes = seg_bytes;
    b->n_segs = (uint32_t)n;
    b->flags = flags;
    b->segs = segs;
    for (size_t i = 0; i < n; i++) {
        size_t bytes = i + 1 < n ? seg_bytes : size - i * seg_bytes;
        kvrt_status s = vk_segment_create(vk, bytes ? bytes : 4, flags, &segs[i]);
        if (s != KVRT_OK) {
            kvrt_vk_buffer_free(vk, b); /* frees the segments made so far: used is back where it was */
            return s;
        }
    }
    b->head.host = n == 1 ? segs[0].map : NULL;
    *out = b;
    return KVRT_OK;
}

kvrt_status kvrt_vk_view_seg(kvrt_vk_backend *vk, kvrt_view v, size_t bytes, const char *what, uint32_t *seg,
                             uint32_t *word_off)
{
    if (!v.buf)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INVALID_ARGUMENT, "%s: no buffer", what);
    const kvrt_buffer *b = v.buf;
    if (v.offset > b->head.size || bytes > b->head.size - v.offset)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INVALID_ARGUMENT,
                         "%s: %zu bytes at offset %zu exceed the buffer (%zu bytes)", what, bytes, v.offset,
                         b->head.size);
    if (v.offset % 4)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INVALID_ARGUMENT, "%s: offset %zu is not 4-byte aligned", what,
                         v.offset);
    size_t s = v.offset / b->seg_bytes, off = v.offset - s * b->seg_bytes;
    if (bytes > b->segs[s].size - off)
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED,
                         "%s: %zu bytes at offset %zu cross a %zu-byte buffer segment", what, bytes, v.offset,
                         b->seg_bytes);
    if (off / 4 > UINT32_MAX)
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED, "%s: offset too large", what);
    *seg = (uint32_t)s;
    *word_off = (uint32_t)(off / 4);
    return KVRT_OK;
}

kvrt_status kvrt_vk_addr_table(kvrt_vk_backend *vk, kvrt_buffer *b, kvrt_buffer **out)
{
    if (!b->addr_table) {
        /* one extra entry repeats the last segment: a row's window is [s, s + 1] */
        size_t n = (size_t)b->n_segs + 1;
        uint32_t *a = kvrt_alloc(vk->base.alloc, n * 2 * sizeof(uint32_t), 0);
        if (!a)
            return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory");
        for (size_t i = 0; i < n; i++) {
            VkDeviceAddress ad = b->segs[KVRT_MIN(i, (size_t)b->n_segs - 1)].addr;
            a[2 * i] = (uint32_t)ad;
            a[2 * i + 1] = (uint32_t)(ad >> 32);
        }
        kvrt_buffer *t;
        kvrt_status s = kvrt_vk_buffer_create_seg(vk, n * 8, 0, KVRT_BUFFER_DEVICE, &t);
        if (s == KVRT_OK) {
            s = kvrt_vk_upload(vk, t, 0, a, n * 8);
            if (s != KVRT_OK)
                kvrt_vk_buffer_free(vk, t);
        }
        kvrt_free(vk->base.alloc, a);
        KVRT_TRY(s);
        b->addr_table = t;
    }
    *out = b->addr_table;
    return KVRT_OK;
}

size_t kvrt_vk_max_scratch(const kvrt_vk_backend *vk)
{
    size_t m = 1 << 16; /* scratch grows in powers of two from 64 KiB, inside one segment */
    while (m * 2 <= kvrt_vk_max_segment(vk) && m * 2 > m)
        m *= 2;
    return m;
}

kvrt_status kvrt_vk_scratch_reserve(kvrt_vk_backend *vk, size_t bytes)
{
    if (vk->scratch && vk->scratch->head.size >= bytes)
        return KVRT_OK;
    size_t want = 1 << 16;
    while (want < bytes && want < ((size_t)1 << 62))
        want *= 2;
    if (want > kvrt_vk_max_segment(vk))
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED,
                         "vulkan: attention scratch of %zu bytes exceeds the largest per call, %zu bytes (one buffer "
                         "segment; kvrt_context_limits.max_scratch_bytes): fewer tokens or sequences per call",
                         bytes, kvrt_vk_max_scratch(vk));
    kvrt_buffer *nb;
    KVRT_TRY(kvrt_vk_buffer_create_seg(vk, want, 0, KVRT_BUFFER_DEVICE, &nb));
    if (vk->scratch && vk->recording) {
        size_t i = 0;
        while (i < KVRT_ARRAY_LEN(vk->retired) && vk->retired[i])
            i++;
        if (i == KVRT_ARRAY_LEN(vk->retired)) {
            kvrt_vk_buffer_free(vk, nb);
            return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED,
                             "vulkan: attention scratch grew too often in one step; submit and retry");
        }
        vk->retired[i] = vk->scratch;
    } else {
        kvrt_vk_buffer_free(vk, vk->scratch);
    }
    vk->scratch = nb;
    return KVRT_OK;
}

/* ---- upload / download ----------------------------------------------------------- */

kvrt_status kvrt_vk_check_range(kvrt_vk_backend *vk, const kvrt_buffer *b, size_t off, size_t size, const char *what)
{
    if (!b)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INVALID_ARGUMENT, "%s: no buffer", what);
    if (off > b->head.size || size > b->head.size - off)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INVALID_ARGUMENT,
                         "%s: %zu bytes at offset %zu exceed the buffer (%zu bytes)", what, size, off,
                         b->head.size);
    return KVRT_OK;
}

/* Moves bytes between host memory and a buffer now, one piece (inside one
 * segment, at most the staging size) at a time. */
static kvrt_status vk_transfer(kvrt_vk_backend *vk, kvrt_buffer *b, size_t off, void *host, size_t size, bool up)
{
    KVRT_TRY(kvrt_vk_check_range(vk, b, off, size, up ? "upload" : "download"));
    char *h = host;
    while (size > 0) {
        size_t s = off / b->seg_bytes, so = off - s * b->seg_bytes;
        size_t n = KVRT_MIN(size, b->segs[s].size - so);
        kvrt_vk_segment *seg = &b->segs[s];
        if (seg->map) {
            if (up)
                memcpy((char *)seg->map + so, h, n);
            else
                memcpy(h, (char *)seg->map + so, n);
        } else {
            n = KVRT_MIN(n, (size_t)vk->staging->segs[0].size);
            void *st = vk->staging->segs[0].map;
            if (up)
                memcpy(st, h, n);
            VkCommandBuffer cb;
            KVRT_TRY(kvrt_vk_oneshot_begin(vk, &cb));
            VkBufferCopy region = {.srcOffset = up ? 0 : so, .dstOffset = up ? so : 0, .size = n};
            vk->vk.vkCmdCopyBuffer(cb, up ? vk->staging->segs[0].buf : seg->buf,
                                   up ? seg->buf : vk->staging->segs[0].buf, 1, &region);
            KVRT_TRY(kvrt_vk_oneshot_run(vk));
            if (!up)
                memcpy(h, st, n);
        }
        h += n;
        off += n;
        size -= n;
    }
    return KVRT_OK;
}

kvrt_status kvrt_vk_upload(kvrt_vk_backend *vk, kvrt_buffer *dst, size_t offset, const void *src, size_t size)
{
    return vk_transfer(vk, dst, offset, (void *)src, size, true);
}

kvrt_status kvrt_vk_download(kvrt_vk_backend *vk, kvrt_buffer *src, size_t offset, void *dst, size_t size)
{
    return vk_transfer(vk, src, offset, dst, size, false);
}

/* Recorded: copies across segment boundaries of either side. */
kvrt_status kvrt_vk_buffer_copy(kvrt_backend *be, kvrt_buffer *src, size_t src_off, kvrt_buffer *dst, size_t dst_off,
                                size_t size)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    KVRT_TRY(kvrt_vk_check_range(vk, src, src_off, size, "copy source"));
    KVRT_TRY(kvrt_vk_check_range(vk, dst, dst_off, size, "copy destination"));
    if (src == dst && src_off < dst_off + size && dst_off < src_off + size && src_off != dst_off)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "copy: overlapping ranges in one buffer");
    if (size == 0 || (src == dst && src_off == dst_off))
        return KVRT_OK;
    bool implicit;
    KVRT_TRY(kvrt_vk_acquire(vk, &implicit));
    while (size > 0) {
        size_t ss = src_off / src->seg_bytes, so = src_off - ss * src->seg_bytes;
        size_t ds = dst_off / dst->seg_bytes, doff = dst_off - ds * dst->seg_bytes;
        size_t n = KVRT_MIN(size, KVRT_MIN(src->segs[ss].size - so, dst->segs[ds].size - doff));
        VkBufferCopy region = {.srcOffset = so, .dstOffset = doff, .size = n};
        vk->vk.vkCmdCopyBuffer(vk->cmd, src->segs[ss].buf, dst->segs[ds].buf, 1, &region);
        src_off += n;
        dst_off += n;
        size -= n;
    }
    kvrt_vk_barrier(vk);
    return kvrt_vk_end_implicit(vk, implicit, KVRT_OK);
}

static bool vk_has_memory_budget(VkPhysicalDevice pd)
{
    VkExtensionProperties ext[256];
    uint32_t n = KVRT_ARRAY_LEN(ext);
    VkResult r = vkEnumerateDeviceExtensionProperties(pd, NULL, &n, ext);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE)
        return false;
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(ext[i].extensionName, VK_EXT_MEMORY_BUDGET_EXTENSION_NAME) == 0)
            return true;
    return false;
}

/* The default budget: the largest device-local heap, less what is in use
 * there (the driver's heapBudget, which counts other processes, where it
 * has VK_EXT_memory_budget). Without it a request past the heap would go on
 * committing host memory on software drivers (lavapipe reports 2 GiB). */
static void vk_default_budget(kvrt_vk_backend *vk)
{
    VkPhysicalDeviceMemoryBudgetPropertiesEXT mb = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT};
    bool has_budget = vk_has_memory_budget(vk->phys);
    VkPhysicalDeviceMemoryProperties2 mp = {.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2,
                                            .pNext = has_budget ? &mb : NULL};
    vkGetPhysicalDeviceMemoryProperties2(vk->phys, &mp);
    uint64_t heap = 0, avail = 0;
    for (uint32_t i = 0; i < mp.memoryProperties.memoryHeapCount; i++) {
        const VkMemoryHeap *h = &mp.memoryProperties.memoryHeaps[i];
        if (!(h->flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT) || h->size <= heap)
            continue;
        heap = h->size;
        avail = has_budget && mb.heapBudget[i] > 0 ? KVRT_MIN(mb.heapBudget[i], h->size) : h->size;
    }
    vk->heap = heap;
    if (vk->budget == 0)
        vk->budget = avail ? avail : UINT64_MAX; /* a device with no device-local heap: nothing to go by */
}

kvrt_status kvrt_vk_memory_init(kvrt_vk_backend *vk)
{
    vk_default_budget(vk);
    KVRT_TRY(kvrt_vk_buffer_create_seg(vk, KVRT_VK_STAGING_BYTES, 0, KVRT_BUFFER_HOST_VISIBLE, &vk->staging));
    uint64_t budget = vk->budget;
    vk->budget = 0; /* the dummy binding is kvrt's own, not the caller's */
    kvrt_status s = kvrt_vk_buffer_create_seg(vk, 256, 0, KVRT_BUFFER_DEVICE, &vk->dummy);
    vk->budget = budget;
    if (s == KVRT_OK) {
        vk->used -= vk->dummy->segs[0].alloc;
        vk->dummy->segs[0].alloc = 0;
    }
    return s;
}

void kvrt_vk_memory_finish(kvrt_vk_backend *vk)
{
    kvrt_vk_step_io_free(vk);
    kvrt_vk_buffer_free(vk, vk->staging);
    kvrt_vk_buffer_free(vk, vk->scratch);
    for (size_t i = 0; i < KVRT_ARRAY_LEN(vk->retired); i++)
        kvrt_vk_buffer_free(vk, vk->retired[i]);
    kvrt_vk_buffer_free(vk, vk->dummy);
}
