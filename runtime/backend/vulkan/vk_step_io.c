/* Uploads and downloads inside an open step (the buffer_upload and
 * buffer_download entries while begin() ... submit() records): they become
 * copies in the step's command buffer through host-visible chunks, so a
 * step's batch arrays and its logits cost no transfer and no wait of their
 * own. An upload is seen by the ops recorded after it and not by those
 * before it; a download reads what the ops recorded before it wrote, and its
 * bytes reach the caller's memory when submit() returns (the memory must stay
 * valid until then). Chunks are bump-allocated per step and kept for the next
 * one; a step that does not fit the current chunks adds one. */
#include "backend/vulkan/vk_internal.h"

#include <string.h>

#define VK_CHUNK_MIN ((size_t)4 << 20)
/* Chunks kept between steps; a step that needed more (a huge prefill's
 * logits) gives the rest back, so pinned host memory does not stay at its peak. */
#define VK_CHUNK_KEEP ((size_t)32 << 20)

typedef struct vk_pending_read {
    void *host;
    const void *from; /* mapped chunk bytes */
    size_t size;
} vk_pending_read;

struct kvrt_vk_step_io {
    kvrt_buffer **chunks; /* [n_chunks], host-visible, one segment each */
    uint32_t n_chunks;
    uint32_t cur;  /* chunk being filled */
    size_t used;   /* bytes of chunk cur taken by this step */
    vk_pending_read *reads; /* [n_reads] of [cap_reads] */
    size_t n_reads, cap_reads;
};

static kvrt_status vk_io_get(kvrt_vk_backend *vk, kvrt_vk_step_io **out)
{
    if (!vk->step_io) {
        vk->step_io = kvrt_calloc(vk->base.alloc, 1, sizeof(*vk->step_io));
        if (!vk->step_io)
            return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: step transfers");
    }
    *out = vk->step_io;
    return KVRT_OK;
}

/* Room for up to `want` bytes in a chunk: sets *chunk and *off, *n = bytes
 * granted (at least one, at most want). Adds a chunk when the current ones
 * are full. */
static kvrt_status vk_io_reserve(kvrt_vk_backend *vk, kvrt_vk_step_io *io, size_t want, kvrt_buffer **chunk,
                                 size_t *off, size_t *n)
{
    /* capacity is the first segment's: a chunk is made as one segment, and
     * nothing past it is ever addressed even if the device split it */
    while (io->cur < io->n_chunks && io->used + 16 > io->chunks[io->cur]->segs[0].size) {
        io->cur++;
        io->used = 0;
    }
    if (io->cur == io->n_chunks) {
        size_t bytes = KVRT_MIN(KVRT_MAX(want, VK_CHUNK_MIN), kvrt_vk_max_segment(vk));
        if (!kvrt_grow_array(vk->base.alloc, (void **)&io->chunks, io->n_chunks, io->n_chunks + 1,
                             sizeof(kvrt_buffer *)))
            return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: step transfer chunks");
        KVRT_TRY(kvrt_vk_buffer_create_seg(vk, bytes, bytes, KVRT_BUFFER_HOST_VISIBLE, &io->chunks[io->n_chunks]));
        io->n_chunks++;
        io->used = 0;
    }
    *chunk = io->chunks[io->cur];
    *off = io->used;
    *n = KVRT_MIN(want, (size_t)(*chunk)->segs[0].size - io->used);
    io->used = (io->used + *n + 15) & ~(size_t)15; /* keeps every piece 16-byte aligned */
    return KVRT_OK;
}

static kvrt_status vk_io_add_read(kvrt_vk_backend *vk, kvrt_vk_step_io *io, void *host, const void *from, size_t n)
{
    if (io->n_reads == io->cap_reads) {
        size_t cap = io->cap_reads ? 2 * io->cap_reads : 16;
        if (!kvrt_grow_array(vk->base.alloc, (void **)&io->reads, io->n_reads, cap, sizeof(vk_pending_read)))
            return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: pending downloads");
        io->cap_reads = cap;
    }
    io->reads[io->n_reads++] = (vk_pending_read){host, from, n};
    return KVRT_OK;
}

/* Records host <-> buffer copies of [off, off + size) through chunks. */
static kvrt_status vk_io_record(kvrt_vk_backend *vk, kvrt_buffer *b, size_t off, char *host, size_t size, bool up)
{
    kvrt_vk_step_io *io = NULL;
    KVRT_TRY(vk_io_get(vk, &io));
    if (vk->base.profiling)
        kvrt_vk_prof_call_named(vk, up ? "upload" : "download");
    kvrt_status st = KVRT_OK;
    while (st == KVRT_OK && size > 0) {
        size_t s = off / b->seg_bytes, so = off - s * b->seg_bytes;
        kvrt_buffer *chunk = NULL;
        size_t co = 0, n = 0;
        st = vk_io_reserve(vk, io, KVRT_MIN(size, b->segs[s].size - so), &chunk, &co, &n);
        if (st != KVRT_OK)
            break;
        char *mapped = (char *)chunk->segs[0].map + co;
        VkBufferCopy region = {.srcOffset = up ? co : so, .dstOffset = up ? so : co, .size = n};
        if (up)
            memcpy(mapped, host, n);
        else if ((st = vk_io_add_read(vk, io, host, mapped, n)) != KVRT_OK)
            break;
        vk->vk.vkCmdCopyBuffer(vk->cmd, up ? chunk->segs[0].buf : b->segs[s].buf,
                               up ? b->segs[s].buf : chunk->segs[0].buf, 1, &region);
        host += n;
        off += n;
        size -= n;
    }
    kvrt_vk_barrier(vk); /* also after a partial transfer: what was recorded stays ordered */
    return st;
}

kvrt_status kvrt_vk_step_upload(kvrt_vk_backend *vk, kvrt_buffer *dst, size_t off, const void *src, size_t size)
{
    KVRT_TRY(kvrt_vk_check_range(vk, dst, off, size, "upload"));
    return size ? vk_io_record(vk, dst, off, (char *)src, size, true) : KVRT_OK;
}

kvrt_status kvrt_vk_step_download(kvrt_vk_backend *vk, kvrt_buffer *src, size_t off, void *dst, size_t size)
{
    KVRT_TRY(kvrt_vk_check_range(vk, src, off, size, "download"));
    return size ? vk_io_record(vk, src, off, dst, size, false) : KVRT_OK;
}

void kvrt_vk_step_io_end(kvrt_vk_backend *vk, bool ran)
{
    kvrt_vk_step_io *io = vk->step_io;
    if (!io)
        return;
    for (size_t i = 0; ran && i < io->n_reads; i++)
        memcpy(io->reads[i].host, io->reads[i].from, io->reads[i].size);
    io->n_reads = 0;
    io->cur = 0;
    io->used = 0;
    size_t kept = 0;
    uint32_t keep = 0;
    while (keep < io->n_chunks && kept + io->chunks[keep]->head.size <= VK_CHUNK_KEEP)
        kept += io->chunks[keep++]->head.size;
    for (uint32_t i = keep; i < io->n_chunks; i++)
        kvrt_vk_buffer_free(vk, io->chunks[i]);
    io->n_chunks = keep;
}

void kvrt_vk_step_io_free(kvrt_vk_backend *vk)
{
    kvrt_vk_step_io *io = vk->step_io;
    if (!io)
        return;
    for (uint32_t i = 0; i < io->n_chunks; i++)
        kvrt_vk_buffer_free(vk, io->chunks[i]);
    kvrt_free(vk->base.alloc, io->chunks);
    kvrt_free(vk->base.alloc, io->reads);
    kvrt_free(vk->base.alloc, io);
    vk->step_io = NULL;
}
