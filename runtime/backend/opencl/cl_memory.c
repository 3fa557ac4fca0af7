/* OpenCL memory: logical buffers split into segments under
 * CL_DEVICE_MAX_MEM_ALLOC_SIZE (1 GiB on PoCL), the memory budget, and the KV
 * pools (whole blocks per segment, so a block never straddles two cl_mem). */
#include "backend/opencl/cl_internal.h"

#include <string.h>

/* ---- device allocations and the budget ---------------------------------------- */

/* Reserves `bytes` of the budget; KVRT_ERR_OUT_OF_DEVICE_MEMORY when it does not fit. */
static kvrt_status cl_charge(kvrt_cl_backend *cl, uint64_t bytes, const char *what)
{
    if (bytes > cl->budget || cl->used > cl->budget - bytes)
        return kvrt_fail(&cl->base.err, KVRT_ERR_OUT_OF_DEVICE_MEMORY,
                         "opencl: %s of %llu bytes exceeds the memory budget (%llu of %llu bytes in use)", what,
                         (unsigned long long)bytes, (unsigned long long)cl->used, (unsigned long long)cl->budget);
    cl->used += bytes;
    return KVRT_OK;
}

static kvrt_status cl_mem_create(kvrt_cl_backend *cl, size_t bytes, cl_mem *out)
{
    *out = NULL;
    if (cl->fail_alloc_at && --cl->fail_alloc_at == 0)
        return kvrt_fail(&cl->base.err, KVRT_ERR_OUT_OF_DEVICE_MEMORY,
                         "opencl: allocation of %zu bytes failed (injected)", bytes);
    cl_int rc;
    cl_mem m = cl->fn.clCreateBuffer(cl->ctx, CL_MEM_READ_WRITE, bytes, NULL, &rc);
    if (!m)
        return kvrt_cl_fail(cl, rc == CL_SUCCESS ? CL_MEM_OBJECT_ALLOCATION_FAILURE : rc,
                            KVRT_ERR_OUT_OF_DEVICE_MEMORY, "clCreateBuffer");
    *out = m;
    return KVRT_OK;
}

/* Fills a fresh allocation with zeros and waits, so a device that allocates
 * lazily reports running out here, not in the middle of a step. */
static kvrt_status cl_mem_zero(kvrt_cl_backend *cl, cl_mem m, size_t bytes)
{
    const cl_uchar zero = 0;
    cl_int rc = cl->fn.clEnqueueFillBuffer(cl->queue, m, &zero, 1, 0, bytes, 0, NULL, NULL);
    if (rc == CL_SUCCESS)
        rc = cl->fn.clFinish(cl->queue);
    return rc == CL_SUCCESS ? KVRT_OK : kvrt_cl_fail(cl, rc, KVRT_ERR_OUT_OF_DEVICE_MEMORY, "zero fill");
}

/* ---- buffers ----------------------------------------------------------------------- */

void kvrt_cl_buffer_destroy(kvrt_backend *be, kvrt_buffer *b)
{
    if (!b)
        return;
    kvrt_cl_backend *cl = kvrt_cl(be);
    for (int32_t i = 0; i < b->n_segs; i++) {
        if (b->segs[i])
            cl->fn.clReleaseMemObject(b->segs[i]); /* the driver keeps it alive for enqueued work */
    }
    cl->used -= b->head.size;
    kvrt_free(be->alloc, b->segs);
    kvrt_free(be->alloc, b);
}

static size_t cl_seg_len(const kvrt_buffer *b, int32_t i)
{
    return kvrt_cl_seg_len(b, i);
}

kvrt_status kvrt_cl_buffer_create(kvrt_backend *be, size_t size, unsigned flags, kvrt_buffer **out)
{
    *out = NULL;
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_charge(cl, size, "buffer"));
    kvrt_buffer *b = kvrt_calloc(be->alloc, 1, sizeof(*b));
    size_t n_segs = size / cl->seg_bytes + (size % cl->seg_bytes != 0);
    if (b)
        b->segs = kvrt_calloc(be->alloc, KVRT_MAX(n_segs, (size_t)1), sizeof(cl_mem));
    if (!b || !b->segs || n_segs > INT32_MAX) {
        cl->used -= size;
        if (b)
            kvrt_free(be->alloc, b->segs);
        kvrt_free(be->alloc, b);
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "opencl: out of host memory for a buffer");
    }
    b->head.size = size;
    b->seg_bytes = cl->seg_bytes;
    b->n_segs = (int32_t)n_segs;
    for (int32_t i = 0; i < b->n_segs; i++) {
        kvrt_status s = cl_mem_create(cl, cl_seg_len(b, i), &b->segs[i]);
        if (s == KVRT_OK)
            s = cl_mem_zero(cl, b->segs[i], cl_seg_len(b, i));
        if (s != KVRT_OK) {
            kvrt_error keep = be->err;
            kvrt_cl_buffer_destroy(be, b);
            be->err = keep;
            return s;
        }
    }
    *out = b;
    return KVRT_OK;
}

static kvrt_status cl_check_range(kvrt_cl_backend *cl, const kvrt_buffer *b, size_t offset, size_t size,
                                  const char *what)
{
    if (!b)
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT, "opencl: %s: no buffer", what);
    if (offset > b->head.size || size > b->head.size - offset)
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT,
                         "opencl: %s: %zu bytes at offset %zu exceed the buffer (%zu bytes)", what, size, offset,
                         b->head.size);
    return KVRT_OK;
}

/* Calls fn for each piece of [offset, offset + size) that lies in one segment. */
typedef cl_int (*cl_piece_fn)(kvrt_cl_backend *cl, cl_mem m, size_t seg_off, size_t len, size_t done, void *user);

static cl_int cl_for_pieces(kvrt_cl_backend *cl, const kvrt_buffer *b, size_t offset, size_t size, cl_piece_fn fn,
                            void *user)
{
    size_t done = 0;
    while (done < size) {
        size_t pos = offset + done;
        int32_t seg = (int32_t)(pos / b->seg_bytes);
        size_t seg_off = pos % b->seg_bytes;
        size_t len = KVRT_MIN(size - done, cl_seg_len(b, seg) - seg_off);
        cl_int rc = fn(cl, b->segs[seg], seg_off, len, done, user);
        if (rc != CL_SUCCESS)
            return rc;
        done += len;
    }
    return CL_SUCCESS;
}

static cl_int cl_write_piece(kvrt_cl_backend *cl, cl_mem m, size_t seg_off, size_t len, size_t done, void *user)
{
    return cl->fn.clEnqueueWriteBuffer(cl->queue, m, CL_TRUE, seg_off, len, (const char *)user + done, 0, NULL,
                                       NULL);
}

static cl_int cl_read_piece(kvrt_cl_backend *cl, cl_mem m, size_t seg_off, size_t len, size_t done, void *user)
{
    return cl->fn.clEnqueueReadBuffer(cl->queue, m, CL_TRUE, seg_off, len, (char *)user + done, 0, NULL, NULL);
}

/* Uploads and downloads are blocking: on the in-order queue they run after
 * everything recorded before them, and the host memory is free on return. */
kvrt_status kvrt_cl_buffer_upload(kvrt_backend *be, kvrt_buffer *dst, size_t offset, const void *src, size_t size)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_check_range(cl, dst, offset, size, "upload"));
    cl_int rc = cl_for_pieces(cl, dst, offset, size, cl_write_piece, (void *)src);
    return rc == CL_SUCCESS ? KVRT_OK : kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, "upload");
}

kvrt_status kvrt_cl_buffer_download(kvrt_backend *be, kvrt_buffer *src, size_t offset, void *dst, size_t size)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_check_range(cl, src, offset, size, "download"));
    cl_int rc = cl_for_pieces(cl, src, offset, size, cl_read_piece, dst);
    return rc == CL_SUCCESS ? KVRT_OK : kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, "download");
}

typedef struct cl_copy_ctx {
    const kvrt_buffer *dst;
    size_t dst_offset;
} cl_copy_ctx;

/* One source piece may still cross destination segments: split it again. */
static cl_int cl_copy_piece(kvrt_cl_backend *cl, cl_mem src, size_t src_off, size_t len, size_t done, void *user)
{
    const cl_copy_ctx *c = user;
    size_t moved = 0;
    while (moved < len) {
        size_t pos = c->dst_offset + done + moved;
        int32_t seg = (int32_t)(pos / c->dst->seg_bytes);
        size_t seg_off = pos % c->dst->seg_bytes;
        size_t n = KVRT_MIN(len - moved, cl_seg_len(c->dst, seg) - seg_off);
        cl_int rc = cl->fn.clEnqueueCopyBuffer(cl->queue, src, c->dst->segs[seg], src_off + moved, seg_off, n, 0,
                                               NULL, NULL);
        if (rc != CL_SUCCESS)
            return rc;
        moved += n;
    }
    return CL_SUCCESS;
}

/* Overlapping ranges of one buffer (memmove semantics) go through the host. */
static kvrt_status cl_copy_overlapping(kvrt_cl_backend *cl, kvrt_buffer *b, size_t src_offset, size_t dst_offset,
                                      size_t size)
{
    void *tmp = kvrt_alloc(cl->base.alloc, size, 0);
    if (!tmp)
        return kvrt_fail(&cl->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "opencl: copy: out of host memory");
    kvrt_status s = kvrt_cl_buffer_download(&cl->base, b, src_offset, tmp, size);
    if (s == KVRT_OK)
        s = kvrt_cl_buffer_upload(&cl->base, b, dst_offset, tmp, size);
    kvrt_free(cl->base.alloc, tmp);
    return s;
}

kvrt_status kvrt_cl_buffer_copy(kvrt_backend *be, kvrt_buffer *src, size_t src_offset, kvrt_buffer *dst,
                                size_t dst_offset, size_t size)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_check_range(cl, src, src_offset, size, "copy source"));
    KVRT_TRY(cl_check_range(cl, dst, dst_offset, size, "copy destination"));
    if (size == 0 || (src == dst && src_offset == dst_offset))
        return KVRT_OK;
    if (src == dst && src_offset < dst_offset + size && dst_offset < src_offset + size)
        return cl_copy_overlapping(cl, src, src_offset, dst_offset, size);
    cl_copy_ctx c = {dst, dst_offset};
    cl_int rc = cl_for_pieces(cl, src, src_offset, size, cl_copy_piece, &c);
    if (rc != CL_SUCCESS)
        return kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, "copy");
    return kvrt_cl_after_enqueue(cl, "copy");
}

kvrt_status kvrt_cl_resolve(kvrt_cl_backend *cl, kvrt_view v, size_t bytes, size_t elem, const char *what,
                            cl_mem *mem, int64_t *elem_off)
{
    KVRT_TRY(cl_check_range(cl, v.buf, v.offset, bytes, what));
    if (v.offset % elem != 0)
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT, "opencl: %s: offset %zu is not a multiple of %zu",
                         what, v.offset, elem);
    if (v.buf->n_segs == 0)
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT, "opencl: %s: empty buffer", what);
    int32_t seg = (int32_t)KVRT_MIN(v.offset / v.buf->seg_bytes, (size_t)v.buf->n_segs - 1);
    size_t seg_off = v.offset - (size_t)seg * v.buf->seg_bytes;
    if (bytes > cl_seg_len(v.buf, seg) - seg_off)
        return kvrt_fail(&cl->base.err, KVRT_ERR_UNSUPPORTED,
                         "opencl: %s: %zu bytes at offset %zu cross a %zu-byte segment boundary of the buffer", what,
                         bytes, v.offset, v.buf->seg_bytes);
    *mem = v.buf->segs[seg];
    *elem_off = (int64_t)(seg_off / elem);
    return KVRT_OK;
}

/* True when rows [first + i * pitch, + need) for i < n each lie in one segment. */
static bool cl_rows_fit(const kvrt_buffer *b, size_t first, int64_t n, size_t pitch, size_t need)
{
    if (n <= 0 || b->n_segs <= 1)
        return true;
    size_t last_end = first + (size_t)(n - 1) * pitch + need;
    if (first / b->seg_bytes == (last_end - 1) / b->seg_bytes)
        return true; /* all in one segment */
    return b->seg_bytes % pitch == 0 && first % pitch == 0;
}

kvrt_status kvrt_cl_align_rows(kvrt_cl_backend *cl, kvrt_buffer *b, size_t first, int64_t n, size_t pitch,
                               size_t need, const char *what)
{
    if (cl_rows_fit(b, first, n, pitch, need))
        return KVRT_OK;
    size_t seg = b->seg_bytes / pitch * pitch;
    if (seg == 0 || first % pitch != 0)
        return kvrt_fail(&cl->base.err, KVRT_ERR_UNSUPPORTED,
                         "opencl: %s: rows of %zu bytes from offset %zu cannot be kept inside allocations of "
                         "%zu bytes",
                         what, pitch, first, b->seg_bytes);
    /* New segments of whole rows, filled by device copies; the old ones are
     * released (the driver keeps them until the copies ran). The copy is
     * transient, so it is not charged to the budget. */
    size_t n_segs = b->head.size / seg + (b->head.size % seg != 0);
    kvrt_buffer nb = {.head.size = b->head.size, .seg_bytes = seg, .n_segs = 0};
    nb.segs = n_segs <= INT32_MAX ? kvrt_calloc(cl->base.alloc, n_segs, sizeof(cl_mem)) : NULL;
    if (!nb.segs)
        return kvrt_fail(&cl->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "opencl: %s: out of host memory", what);
    kvrt_status s = KVRT_OK;
    for (size_t i = 0; i < n_segs && s == KVRT_OK; i++) {
        s = cl_mem_create(cl, kvrt_cl_seg_len(&(kvrt_buffer){.head.size = b->head.size, .seg_bytes = seg}, (int32_t)i),
                          &nb.segs[i]);
        if (s == KVRT_OK)
            nb.n_segs++;
    }
    if (s == KVRT_OK) {
        cl_copy_ctx c = {&nb, 0};
        cl_int rc = cl_for_pieces(cl, b, 0, b->head.size, cl_copy_piece, &c);
        if (rc != CL_SUCCESS)
            s = kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, "re-segmenting copy");
    }
    cl_mem *drop = s == KVRT_OK ? b->segs : nb.segs;
    int32_t n_drop = s == KVRT_OK ? b->n_segs : nb.n_segs;
    for (int32_t i = 0; i < n_drop; i++)
        cl->fn.clReleaseMemObject(drop[i]);
    kvrt_free(cl->base.alloc, drop);
    if (s == KVRT_OK) {
        b->segs = nb.segs;
        b->n_segs = nb.n_segs;
        b->seg_bytes = seg;
    }
    return s;
}

kvrt_status kvrt_cl_scratch(kvrt_cl_backend *cl, size_t bytes, kvrt_buffer **out)
{
    if (bytes > cl->seg_bytes)
        return kvrt_fail(&cl->base.err, KVRT_ERR_UNSUPPORTED,
                         "opencl: attention scratch of %zu bytes exceeds the largest per call, %zu bytes (one buffer "
                         "segment; kvrt_context_limits.max_scratch_bytes): fewer tokens or sequences per call",
                         bytes, cl->seg_bytes);
    if (!cl->scratch || cl->scratch->head.size < bytes) {
        kvrt_cl_buffer_destroy(&cl->base, cl->scratch);
        cl->scratch = NULL;
        KVRT_TRY(kvrt_cl_buffer_create(&cl->base, bytes, KVRT_BUFFER_DEVICE, &cl->scratch));
    }
    *out = cl->scratch;
    return KVRT_OK;
}

/* ---- KV pools ------------------------------------------------------------------------ */

void kvrt_cl_kv_pool_destroy(kvrt_backend *be, kvrt_kv_pool *pool)
{
    if (!pool)
        return;
    kvrt_cl_backend *cl = kvrt_cl(be);
    for (int32_t l = 0; l < pool->desc.n_layers; l++) {
        for (int w = 0; w < 2; w++) {
            kvrt_cl_pool_part *part = w == 0 ? (pool->k ? &pool->k[l] : NULL) : (pool->v ? &pool->v[l] : NULL);
            for (int32_t i = 0; part && i < part->n_segs; i++) {
                if (part->segs[i])
                    cl->fn.clReleaseMemObject(part->segs[i]);
            }
        }
    }
    cl->used -= pool->bytes;
    kvrt_free(be->alloc, pool->k);
    kvrt_free(be->alloc, pool->v);
    kvrt_free(be->alloc, pool);
}

/* Allocates one layer's K or V pool: blocks_per_seg whole blocks per segment. */
static kvrt_status cl_pool_part_create(kvrt_cl_backend *cl, const kvrt_kv_pool *pool, kvrt_kv_which which,
                                       kvrt_cl_pool_part *part)
{
    int64_t left = pool->desc.num_blocks;
    while (left > 0) {
        int64_t n = KVRT_MIN(left, pool->blocks_per_seg);
        size_t bytes = (size_t)n * pool->block_bytes[which == KVRT_KV_V];
        KVRT_TRY(cl_mem_create(cl, bytes, &part->segs[part->n_segs]));
        part->n_segs++;
        KVRT_TRY(cl_mem_zero(cl, part->segs[part->n_segs - 1], bytes));
        left -= n;
    }
    return KVRT_OK;
}

/* The kernels' code of a KV storage type (KVRT_CL_KV_*); -1 for one they do not read. */
static int cl_kv_type_code(kvrt_dtype t)
{
    switch (t) {
    case KVRT_DTYPE_F32: return KVRT_CL_KV_F32;
    case KVRT_DTYPE_F16: return KVRT_CL_KV_F16;
    case KVRT_DTYPE_Q8_0: return KVRT_CL_KV_Q8_0;
    case KVRT_DTYPE_Q4_0: return KVRT_CL_KV_Q4_0;
    case KVRT_DTYPE_FP8_E4M3: return KVRT_CL_KV_FP8_E4M3;
    case KVRT_DTYPE_FP8_E5M2: return KVRT_CL_KV_FP8_E5M2;
    default: return -1;
    }
}

kvrt_status kvrt_cl_kv_pool_create(kvrt_backend *be, const kvrt_kv_pool_desc *d, kvrt_kv_pool **out)
{
    *out = NULL;
    kvrt_cl_backend *cl = kvrt_cl(be);
    /* the kernels' variants read and write these (kv.cl, attention.cl: kv_store, kv_load), K and V each by its type */
    int type[2];
    for (int w = 0; w < 2; w++) {
        type[w] = cl_kv_type_code(kvrt_kv_pool_dtype(d, w == 1));
        if (type[w] < 0)
            return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                             "opencl: KV type %s is not supported (f32, f16, q8_0, q4_0, fp8, fp8_e5m2)",
                             kvrt_dtype_name(kvrt_kv_pool_dtype(d, w == 1)));
    }
    /* the front door checked the sizes (kvrt_kv_check_pool_desc); K and V blocks may differ in
     * size, both parts keep the same blocks per segment, sized by the larger */
    size_t kbb = kvrt_kv_block_bytes_which(d, false), vbb = kvrt_kv_block_bytes_which(d, true);
    size_t block_bytes = KVRT_MAX(kbb, vbb), layer_bytes = block_bytes * (size_t)d->num_blocks;
    size_t total = (kbb + vbb) * (size_t)d->num_blocks * (size_t)d->n_layers;
    int64_t per_seg = (int64_t)(cl->seg_bytes / block_bytes);
    /* kernels keep a key's row inside its segment in an int */
    per_seg = KVRT_MIN(per_seg, (int64_t)INT32_MAX / ((int64_t)d->n_kv_heads * d->block_size));
    if (per_seg == 0 || (d->num_blocks + per_seg - 1) / per_seg > KVRT_CL_MAX_KV_SEGS)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "opencl: one layer's KV pool (%zu bytes) needs more than %d allocations of at most %zu bytes",
                         layer_bytes, KVRT_CL_MAX_KV_SEGS, cl->seg_bytes);
    KVRT_TRY(cl_charge(cl, total, "KV pool"));
    kvrt_kv_pool *pool = kvrt_calloc(be->alloc, 1, sizeof(*pool));
    if (!pool) {
        cl->used -= total;
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "opencl: out of host memory for a KV pool");
    }
    pool->desc = *d;
    pool->block_bytes[0] = kbb;
    pool->block_bytes[1] = vbb;
    pool->blocks_per_seg = per_seg;
    pool->k_type = type[0];
    pool->v_type = type[1];
    pool->bytes = total;
    pool->k = kvrt_calloc(be->alloc, (size_t)d->n_layers, sizeof(kvrt_cl_pool_part));
    pool->v = kvrt_calloc(be->alloc, (size_t)d->n_layers, sizeof(kvrt_cl_pool_part));
    kvrt_status s = pool->k && pool->v ? KVRT_OK
                                       : kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "opencl: out of host memory");
    for (int32_t l = 0; l < d->n_layers && s == KVRT_OK; l++) {
        s = cl_pool_part_create(cl, pool, KVRT_KV_K, &pool->k[l]);
        if (s == KVRT_OK)
            s = cl_pool_part_create(cl, pool, KVRT_KV_V, &pool->v[l]);
    }
    if (s != KVRT_OK) {
        kvrt_error keep = be->err;
        kvrt_cl_kv_pool_destroy(be, pool);
        be->err = keep;
        return s;
    }
    *out = pool;
    return KVRT_OK;
}

/* Where one block of one layer's K or V pool lives. */
static cl_mem cl_block_at(const kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which, int32_t block,
                          size_t *offset)
{
    const kvrt_cl_pool_part *part = which == KVRT_KV_K ? &pool->k[layer] : &pool->v[layer];
    *offset = (size_t)(block % pool->blocks_per_seg) * pool->block_bytes[which == KVRT_KV_V];
    return part->segs[block / pool->blocks_per_seg];
}

kvrt_status kvrt_cl_kv_block_read(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                  int32_t block, void *dst)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    size_t off;
    cl_mem m = cl_block_at(pool, layer, which, block, &off);
    size_t bb = pool->block_bytes[which == KVRT_KV_V];
    cl_int rc = cl->fn.clEnqueueReadBuffer(cl->queue, m, CL_TRUE, off, bb, dst, 0, NULL, NULL);
    return rc == CL_SUCCESS ? KVRT_OK : kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, "KV block read");
}

kvrt_status kvrt_cl_kv_block_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                   int32_t block, const void *src)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    size_t off;
    cl_mem m = cl_block_at(pool, layer, which, block, &off);
    size_t bb = pool->block_bytes[which == KVRT_KV_V];
    cl_int rc = cl->fn.clEnqueueWriteBuffer(cl->queue, m, CL_TRUE, off, bb, src, 0, NULL, NULL);
    return rc == CL_SUCCESS ? KVRT_OK : kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, "KV block write");
}

kvrt_status kvrt_cl_kv_copy_blocks(kvrt_backend *be, kvrt_kv_pool *pool, const int32_t (*pairs)[2], int32_t n)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    for (int32_t l = 0; l < pool->desc.n_layers; l++) {
        for (int32_t i = 0; i < n; i++) {
            if (pairs[i][0] == pairs[i][1])
                continue;
            for (int w = 0; w < 2; w++) {
                size_t src_off, dst_off;
                cl_mem src = cl_block_at(pool, l, (kvrt_kv_which)w, pairs[i][0], &src_off);
                cl_mem dst = cl_block_at(pool, l, (kvrt_kv_which)w, pairs[i][1], &dst_off);
                cl_int rc = cl->fn.clEnqueueCopyBuffer(cl->queue, src, dst, src_off, dst_off, pool->block_bytes[w], 0,
                                                       NULL, NULL);
                if (rc != CL_SUCCESS)
                    return kvrt_cl_fail(cl, rc, KVRT_ERR_DEVICE_LOST, "KV block copy");
            }
        }
    }
    return kvrt_cl_after_enqueue(cl, "KV block copy");
}
