/* The opt-in on-disk pipeline cache: one VkPipelineCache per context, filled
 * from params->pipeline_cache_path at creation and written back atomically.
 *
 * File = the driver's vkGetPipelineCacheData bytes, then a kvrt trailer
 * (magic, data length, FNV-1a 64 of the data, little-endian). Drivers are
 * only required to reject a foreign header; a body damaged on disk could
 * crash them, so kvrt checks the header against this device and the
 * checksum itself and hands the driver only data it wrote. Anything wrong
 * with the file means "start empty", never an error. */
#include "backend/vulkan/vk_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PCACHE_MAX_FILE ((size_t)256 << 20) /* bigger files are ignored, not read */
#define PCACHE_HEADER_BYTES 32               /* VkPipelineCacheHeaderVersionOne */
#define PCACHE_TRAILER_BYTES 24
static const char pcache_magic[8] = {'k', 'v', 'r', 't', 'P', 'C', '0', '1'};

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_le64(const uint8_t *p)
{
    return (uint64_t)get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t pcache_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

/* Why `file` (n bytes) cannot seed this device's cache; NULL when it can.
 * The driver data is file[0, n - trailer). */
static const char *pcache_check(const kvrt_vk_backend *vk, const uint8_t *file, size_t n)
{
    if (n < PCACHE_HEADER_BYTES + PCACHE_TRAILER_BYTES)
        return "truncated";
    size_t data = n - PCACHE_TRAILER_BYTES;
    uint32_t header_bytes = get_le32(file);
    if (header_bytes < PCACHE_HEADER_BYTES || header_bytes > data)
        return "bad header length";
    if (get_le32(file + 4) != VK_PIPELINE_CACHE_HEADER_VERSION_ONE)
        return "unknown header version";
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(vk->phys, &props);
    if (get_le32(file + 8) != props.vendorID || get_le32(file + 12) != props.deviceID ||
        memcmp(file + 16, props.pipelineCacheUUID, VK_UUID_SIZE) != 0)
        return "made by another device or driver";
    const uint8_t *t = file + data;
    if (memcmp(t, pcache_magic, sizeof(pcache_magic)) != 0 || get_le64(t + 8) != data ||
        get_le64(t + 16) != pcache_hash(file, data))
        return "corrupt (checksum)";
    return NULL;
}

/* Reads the whole file into *out (kvrt_free it); NULL + a reason when it
 * is missing, not a regular file, too big or unreadable. */
static const char *pcache_read(kvrt_vk_backend *vk, uint8_t **out, size_t *n)
{
    *out = NULL;
    /* O_NONBLOCK: a FIFO (or a device) at the path must not block context
     * creation; regular files read the same either way */
    int fd = open(vk->pcache.path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return errno == ENOENT ? "missing" : "cannot be opened";
    struct stat st;
    const char *why = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        why = "not a regular file";
    else if ((uint64_t)st.st_size > PCACHE_MAX_FILE)
        why = "too large";
    else if (!(*out = kvrt_alloc(vk->base.alloc, (size_t)st.st_size, 0)))
        why = "no memory to read it";
    size_t got = 0;
    while (!why && got < (size_t)st.st_size) {
        ssize_t r = read(fd, *out + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            why = "unreadable";
        else
            got += (size_t)r;
    }
    close(fd);
    if (why) {
        kvrt_free(vk->base.alloc, *out);
        *out = NULL;
        return why;
    }
    *n = got;
    return NULL;
}

static VkResult pcache_create(kvrt_vk_backend *vk, const void *data, size_t n)
{
    VkPipelineCacheCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO,
                                    .initialDataSize = n, .pInitialData = data};
    return vk->vk.vkCreatePipelineCache(vk->device, &ci, NULL, &vk->pcache.cache);
}

kvrt_status kvrt_vk_pcache_init(kvrt_vk_backend *vk)
{
    kvrt_vk_pcache *pc = &vk->pcache;
    const char *arg = pc->path_arg;
    pc->path_arg = NULL;
    if (!arg || !arg[0])
        return KVRT_OK; /* no file: pipelines are created without a cache, as before */
    if (!(pc->path = kvrt_strdup(vk->base.alloc, arg)))
        return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory");
    pc->stats.enabled = true;
    uint8_t *file = NULL;
    size_t n = 0;
    const char *why = pcache_read(vk, &file, &n);
    if (!why)
        why = pcache_check(vk, file, n);
    VkResult r = VK_ERROR_INITIALIZATION_FAILED;
    if (!why) {
        size_t data = n - PCACHE_TRAILER_BYTES;
        r = pcache_create(vk, file, data);
        if (r == VK_SUCCESS) {
            pc->file_bytes = data;
            pc->file_hash = get_le64(file + data + 16);
            pc->stats.loaded_bytes = data;
        } else {
            why = "rejected by the driver";
        }
    }
    kvrt_free(vk->base.alloc, file);
    pc->stats.ignored = why;
    if (r != VK_SUCCESS)
        r = pcache_create(vk, NULL, 0);
    if (r != VK_SUCCESS) {
        pc->cache = VK_NULL_HANDLE;
        return kvrt_vk_result(vk, r, "vkCreatePipelineCache");
    }
    return KVRT_OK;
}

/* The driver's current data, in a kvrt_alloc'd buffer. */
static kvrt_status pcache_get_data(kvrt_vk_backend *vk, uint8_t **out, size_t *n)
{
    *out = NULL;
    /* the size can grow between the two calls if another thread creates
     * pipelines; a context is single-threaded, so once is enough */
    VkResult r = vk->vk.vkGetPipelineCacheData(vk->device, vk->pcache.cache, n, NULL);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkGetPipelineCacheData");
    if (*n > PCACHE_MAX_FILE - PCACHE_TRAILER_BYTES)
        return kvrt_fail(&vk->base.err, KVRT_ERR_IO, "vulkan: pipeline cache of %zu bytes exceeds the %zu MiB limit",
                         *n, PCACHE_MAX_FILE >> 20);
    if (!(*out = kvrt_alloc(vk->base.alloc, *n, 0)))
        return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory");
    r = vk->vk.vkGetPipelineCacheData(vk->device, vk->pcache.cache, n, *out);
    if (r != VK_SUCCESS) { /* VK_INCOMPLETE included: never write a partial cache */
        kvrt_free(vk->base.alloc, *out);
        *out = NULL;
        return kvrt_vk_result(vk, r == VK_INCOMPLETE ? VK_ERROR_UNKNOWN : r, "vkGetPipelineCacheData");
    }
    return KVRT_OK;
}

/* Whether the file at `path` may be replaced by a cache: only when it is
 * missing or already a kvrt cache (the magic in its trailer), so a path that
 * names a model, a tokenizer or anything else by mistake is never destroyed.
 * NULL when it may; otherwise what the file is. */
static const char *pcache_foreign(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return errno == ENOENT ? NULL : "unreadable";
    struct stat st;
    uint8_t tail[PCACHE_TRAILER_BYTES];
    const char *why = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        why = "not a regular file";
    else if (st.st_size < PCACHE_HEADER_BYTES + PCACHE_TRAILER_BYTES ||
             pread(fd, tail, sizeof(tail), st.st_size - PCACHE_TRAILER_BYTES) != (ssize_t)sizeof(tail) ||
             memcmp(tail, pcache_magic, sizeof(pcache_magic)) != 0)
        why = "not a kvrt pipeline cache";
    close(fd);
    return why;
}

static kvrt_status pcache_write(kvrt_vk_backend *vk, const uint8_t *data, size_t n, uint64_t hash)
{
    const char *foreign = pcache_foreign(vk->pcache.path);
    if (foreign)
        return kvrt_fail(&vk->base.err, KVRT_ERR_IO,
                         "vulkan: pipeline cache '%s' is %s; left as it is, the cache is not saved", vk->pcache.path,
                         foreign);
    uint8_t trailer[PCACHE_TRAILER_BYTES];
    memcpy(trailer, pcache_magic, sizeof(pcache_magic));
    put_le64(trailer + 8, n);
    put_le64(trailer + 16, hash);
    kvrt_atomic_file af;
    KVRT_TRY(kvrt_atomic_file_open(vk->pcache.path, NULL, &af, &vk->base.err));
    kvrt_status s = KVRT_OK;
    if (fwrite(data, 1, n, af.f) != n || fwrite(trailer, 1, sizeof(trailer), af.f) != sizeof(trailer))
        s = kvrt_fail(&vk->base.err, KVRT_ERR_IO, "cannot write '%s': %s", af.tmp, strerror(errno));
    return kvrt_atomic_file_close(&af, s, &vk->base.err);
}

kvrt_status kvrt_vk_save_caches(kvrt_backend *be)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    kvrt_vk_pcache *pc = &vk->pcache;
    if (!pc->path || !pc->cache || !pc->dirty)
        return KVRT_OK;
    uint8_t *data;
    size_t n;
    KVRT_TRY(pcache_get_data(vk, &data, &n));
    uint64_t hash = pcache_hash(data, n);
    kvrt_status s = KVRT_OK;
    if (n == pc->file_bytes && hash == pc->file_hash) {
        pc->stats.unchanged++; /* every pipeline came from the file */
    } else {
        s = pcache_write(vk, data, n, hash);
        if (s == KVRT_OK) {
            pc->file_bytes = n;
            pc->file_hash = hash;
            pc->stats.writes++;
        }
    }
    kvrt_free(vk->base.alloc, data);
    if (s == KVRT_OK)
        pc->dirty = false; /* a failed save stays dirty: a later call retries */
    return s;
}

void kvrt_vk_pcache_finish(kvrt_vk_backend *vk)
{
    kvrt_vk_pcache *pc = &vk->pcache;
    if (pc->cache) {
        /* best effort: destroy cannot report; keep the context's last message */
        kvrt_error keep = vk->base.err;
        (void)kvrt_vk_save_caches(&vk->base);
        vk->base.err = keep;
        vk->vk.vkDestroyPipelineCache(vk->device, pc->cache, NULL);
        pc->cache = VK_NULL_HANDLE;
    }
    kvrt_free(vk->base.alloc, pc->path);
    pc->path = NULL;
}

void kvrt_vk_pipeline_cache_stats(kvrt_backend *be, kvrt_vk_pcache_stats *out)
{
    *out = kvrt_vk(be)->pcache.stats;
}
