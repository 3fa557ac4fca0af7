/* KV pools on Vulkan: per layer one K and one V logical buffer in the
 * DESIGN.md block layout, segmented at whole blocks so a block never crosses
 * a segment; raw block read/write, block copies and kv_write. */
#include "backend/vulkan/vk_internal.h"

#include <string.h>

void kvrt_vk_kv_pool_destroy(kvrt_backend *be, kvrt_kv_pool *pool)
{
    if (!pool)
        return;
    kvrt_vk_backend *vk = kvrt_vk(be);
    kvrt_buffer **lists[] = {pool->k, pool->v, pool->k_addr, pool->v_addr};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(lists); i++) {
        for (int32_t l = 0; lists[i] && l < pool->desc.n_layers; l++)
            kvrt_vk_buffer_free(vk, lists[i][l]);
        kvrt_free(be->alloc, lists[i]);
    }
    kvrt_free(be->alloc, pool);
}

/* The shaders' code of a KV storage type (kvrt_push.h); -1 for one they do not read. */
static int vk_kv_type_code(kvrt_dtype t)
{
    switch (t) {
    case KVRT_DTYPE_F32: return KVRT_KV_T_F32;
    case KVRT_DTYPE_F16: return KVRT_KV_T_F16;
    case KVRT_DTYPE_Q8_0: return KVRT_KV_T_Q8_0;
    case KVRT_DTYPE_Q4_0: return KVRT_KV_T_Q4_0;
    case KVRT_DTYPE_FP8_E4M3: return KVRT_KV_T_FP8_E4M3;
    case KVRT_DTYPE_FP8_E5M2: return KVRT_KV_T_FP8_E5M2;
    default: return -1;
    }
}

static kvrt_status vk_check_desc(kvrt_vk_backend *vk, const kvrt_kv_pool_desc *d)
{
    /* the shaders read and write these (kv_write, attn_*: pool_load, write_unit), K and V each by its type */
    for (int w = 0; w < 2; w++) {
        kvrt_dtype t = kvrt_kv_pool_dtype(d, w == 1);
        if (vk_kv_type_code(t) < 0)
            return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED,
                             "vulkan: KV type %s is not supported (f32, f16, q8_0, q4_0, fp8, fp8_e5m2)",
                             kvrt_dtype_name(t));
        if (kvrt_kv_block_bytes_which(d, w == 1) % 4)
            return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED,
                             "vulkan: a %s KV block of %zu bytes is not a whole number of 32-bit words (block size %d)",
                             kvrt_dtype_name(t), kvrt_kv_block_bytes_which(d, w == 1), (int)d->block_size);
    }
    return KVRT_OK;
}

/* Zero-fills every segment of a buffer (a block read before any write holds zeros). */
static kvrt_status vk_fill_zero(kvrt_vk_backend *vk, kvrt_buffer *b)
{
    VkCommandBuffer cb;
    KVRT_TRY(kvrt_vk_oneshot_begin(vk, &cb));
    for (uint32_t i = 0; i < b->n_segs; i++)
        vk->vk.vkCmdFillBuffer(cb, b->segs[i].buf, 0, VK_WHOLE_SIZE, 0);
    return kvrt_vk_oneshot_run(vk);
}

/* One pool layer (K or V): zeroed segments, and with buffer device addresses
 * a small table of their base addresses for the shaders. */
static kvrt_status vk_layer_create(kvrt_vk_backend *vk, size_t bytes, size_t seg_bytes, kvrt_buffer **out,
                                   kvrt_buffer **addr)
{
    KVRT_TRY(kvrt_vk_buffer_create_seg(vk, bytes, seg_bytes, KVRT_BUFFER_DEVICE, out));
    KVRT_TRY(vk_fill_zero(vk, *out));
    if (!addr)
        return KVRT_OK;
    kvrt_buffer *b = *out;
    VkDeviceAddress *a = kvrt_calloc(vk->base.alloc, b->n_segs, sizeof(*a));
    if (!a)
        return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory");
    for (uint32_t i = 0; i < b->n_segs; i++)
        a[i] = b->segs[i].addr; /* little-endian uvec2 in the shader */
    kvrt_status s = kvrt_vk_buffer_create_seg(vk, b->n_segs * sizeof(*a), 0, KVRT_BUFFER_DEVICE, addr);
    if (s == KVRT_OK)
        s = kvrt_vk_upload(vk, *addr, 0, a, b->n_segs * sizeof(*a));
    kvrt_free(vk->base.alloc, a);
    return s;
}

/* The whole pool against the memory budget, or without one the device's
 * device-local heaps, before anything is allocated (as the CPU and OpenCL
 * backends do): a pool that cannot fit fails at once with numbers instead of
 * after allocating and zero-filling most of it. */
static kvrt_status vk_check_pool_fits(kvrt_vk_backend *vk, const kvrt_kv_pool_desc *d)
{
    double total = (double)d->n_layers * (double)d->num_blocks * (double)kvrt_kv_block_bytes_pair(d);
    double limit;
    const char *what;
    if (vk->budget) {
        limit = vk->budget > vk->used ? (double)(vk->budget - vk->used) : 0.0;
        what = "what is left of the memory budget";
    } else {
        VkPhysicalDeviceMemoryProperties mp;
        vkGetPhysicalDeviceMemoryProperties(vk->phys, &mp);
        limit = 0.0;
        for (uint32_t i = 0; i < mp.memoryHeapCount; i++)
            if (mp.memoryHeaps[i].flags & VK_MEMORY_HEAP_DEVICE_LOCAL_BIT)
                limit += (double)mp.memoryHeaps[i].size;
        what = "the device's device-local memory";
    }
    if (limit > 0.0 && total > limit)
        return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_DEVICE_MEMORY,
                         "vulkan: a KV pool of %.2f GiB (%d blocks of %d positions, %d layers) exceeds %s "
                         "(%.2f GiB); use a shorter context or fewer blocks",
                         total / 1073741824.0, (int)d->num_blocks, (int)d->block_size, (int)d->n_layers, what,
                         limit / 1073741824.0);
    return KVRT_OK;
}

kvrt_status kvrt_vk_kv_pool_create(kvrt_backend *be, const kvrt_kv_pool_desc *d, kvrt_kv_pool **out)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    *out = NULL;
    KVRT_TRY(vk_check_desc(vk, d));
    KVRT_TRY(vk_check_pool_fits(vk, d));
    /* K and V blocks may differ in size (their types); both pools keep the same blocks per
     * segment, sized by the larger, so a block id names one segment index in each */
    size_t kbb = kvrt_kv_block_bytes_which(d, false), vbb = kvrt_kv_block_bytes_which(d, true);
    size_t block_bytes = KVRT_MAX(kbb, vbb);
    bool bda = vk->caps.bda;
    size_t per_seg = kvrt_vk_max_pool_segment(vk) / block_bytes;
    /* the shaders index a segment's elements (pool_row) in 32 bits: 4-bit values make more elements than bytes */
    per_seg = KVRT_MIN(per_seg, (size_t)UINT32_MAX / ((size_t)d->n_kv_heads * (size_t)d->block_size * (size_t)d->head_dim));
    if (per_seg == 0)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "vulkan: one KV block (%zu bytes) exceeds a buffer segment",
                         block_bytes);
    per_seg = KVRT_MIN(per_seg, (size_t)d->num_blocks);
    size_t n_segs = ((size_t)d->num_blocks + per_seg - 1) / per_seg;
    if (!bda && n_segs > KVRT_VK_MAX_POOL_SEGS)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "vulkan: a KV layer of %zu bytes needs %zu segments of %zu bytes; at most %d are bound "
                         "without buffer device addresses", block_bytes * (size_t)d->num_blocks, n_segs,
                         per_seg * block_bytes, KVRT_VK_MAX_POOL_SEGS);
    kvrt_kv_pool *pool = kvrt_calloc(be->alloc, 1, sizeof(*pool));
    if (!pool)
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory");
    pool->desc = *d;
    pool->block_bytes[0] = kbb;
    pool->block_bytes[1] = vbb;
    pool->blocks_per_seg = (uint32_t)per_seg;
    pool->k_type = (uint32_t)vk_kv_type_code(d->dtype);
    pool->v_type = (uint32_t)vk_kv_type_code(kvrt_kv_pool_dtype(d, true));
    pool->bda = bda;
    size_t n = (size_t)d->n_layers;
    pool->k = kvrt_calloc(be->alloc, n, sizeof(*pool->k));
    pool->v = kvrt_calloc(be->alloc, n, sizeof(*pool->v));
    if (bda) {
        pool->k_addr = kvrt_calloc(be->alloc, n, sizeof(*pool->k_addr));
        pool->v_addr = kvrt_calloc(be->alloc, n, sizeof(*pool->v_addr));
    }
    kvrt_status s = pool->k && pool->v && (!bda || (pool->k_addr && pool->v_addr))
                        ? KVRT_OK
                        : kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory");
    for (int32_t l = 0; s == KVRT_OK && l < d->n_layers; l++) {
        s = vk_layer_create(vk, kbb * (size_t)d->num_blocks, per_seg * kbb, &pool->k[l], bda ? &pool->k_addr[l] : NULL);
        if (s == KVRT_OK)
            s = vk_layer_create(vk, vbb * (size_t)d->num_blocks, per_seg * vbb, &pool->v[l],
                                bda ? &pool->v_addr[l] : NULL);
    }
    if (s != KVRT_OK) {
        kvrt_vk_kv_pool_destroy(be, pool);
        return s;
    }
    *out = pool;
    return KVRT_OK;
}

kvrt_vk_pipe_id kvrt_vk_pool_bind(const kvrt_kv_pool *pool, int32_t layer, kvrt_vk_pipe_id id, kvrt_vk_bind *bind)
{
    if (!pool->bda) {
        bind->kpool = pool->k[layer];
        bind->vpool = pool->v[layer];
        return id;
    }
    bind->kpool = pool->k_addr[layer];
    bind->vpool = pool->v_addr[layer];
    switch (id) {
    case KVRT_VK_PIPE_KV_WRITE: return KVRT_VK_PIPE_KV_WRITE_BDA;
    case KVRT_VK_PIPE_ROPE_SHIFT: return KVRT_VK_PIPE_ROPE_SHIFT_BDA;
    case KVRT_VK_PIPE_ATTN_DECODE: return KVRT_VK_PIPE_ATTN_DECODE_BDA;
    case KVRT_VK_PIPE_ATTN_PREFILL: return KVRT_VK_PIPE_ATTN_PREFILL_BDA;
    default: return id;
    }
}

static kvrt_buffer *vk_pool_buf(kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which)
{
    return which == KVRT_KV_K ? pool->k[layer] : pool->v[layer];
}

kvrt_status kvrt_vk_kv_block_read(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                  int32_t block, void *dst)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    size_t bb = pool->block_bytes[which == KVRT_KV_V];
    return kvrt_vk_download(vk, vk_pool_buf(pool, layer, which), (size_t)block * bb, dst, bb);
}

kvrt_status kvrt_vk_kv_block_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                   int32_t block, const void *src)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    size_t bb = pool->block_bytes[which == KVRT_KV_V];
    return kvrt_vk_upload(vk, vk_pool_buf(pool, layer, which), (size_t)block * bb, src, bb);
}

/* One block of a layer's K or V pool part b, whose blocks are bb bytes. */
static void vk_copy_block(kvrt_vk_backend *vk, kvrt_kv_pool *pool, kvrt_buffer *b, size_t bb, int32_t src,
                          int32_t dst)
{
    uint32_t ss = (uint32_t)src / pool->blocks_per_seg, ds = (uint32_t)dst / pool->blocks_per_seg;
    VkBufferCopy r = {.srcOffset = (VkDeviceSize)((uint32_t)src % pool->blocks_per_seg) * bb,
                      .dstOffset = (VkDeviceSize)((uint32_t)dst % pool->blocks_per_seg) * bb,
                      .size = bb};
    vk->vk.vkCmdCopyBuffer(vk->cmd, b->segs[ss].buf, b->segs[ds].buf, 1, &r);
}

kvrt_status kvrt_vk_kv_copy_blocks(kvrt_backend *be, kvrt_kv_pool *pool, const int32_t (*pairs)[2], int32_t n)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    bool implicit;
    KVRT_TRY(kvrt_vk_acquire(vk, &implicit));
    for (int32_t i = 0; i < n; i++) {
        if (pairs[i][0] == pairs[i][1])
            continue;
        /* pairs run in order, like the CPU's: a pair that reads or writes a block an
         * earlier pair wrote waits for it */
        for (int32_t j = 0; j < i; j++) {
            if (pairs[j][1] == pairs[i][0] || pairs[j][1] == pairs[i][1] || pairs[j][0] == pairs[i][1]) {
                kvrt_vk_barrier(vk);
                break;
            }
        }
        for (int32_t l = 0; l < pool->desc.n_layers; l++) {
            vk_copy_block(vk, pool, pool->k[l], pool->block_bytes[0], pairs[i][0], pairs[i][1]);
            vk_copy_block(vk, pool, pool->v[l], pool->block_bytes[1], pairs[i][0], pairs[i][1]);
        }
    }
    kvrt_vk_barrier(vk);
    return kvrt_vk_end_implicit(vk, implicit, KVRT_OK);
}

/* Fills the pool part of a push-constant block. */
#define VK_POOL_PUSH(pc, pool)                                              \
    do {                                                                    \
        (pc).n_kv_heads = (uint32_t)(pool)->desc.n_kv_heads;                \
        (pc).head_dim = (uint32_t)(pool)->desc.head_dim;                    \
        (pc).block_size = (uint32_t)(pool)->desc.block_size;                \
        (pc).num_blocks = (uint32_t)(pool)->desc.num_blocks;                \
        (pc).blocks_per_seg = (pool)->blocks_per_seg;                       \
        (pc).k_type = (pool)->k_type;                                       \
        (pc).v_type = (pool)->v_type;                                       \
    } while (0)

typedef struct { KVRT_PUSH_KV_WRITE } vk_push_kv_write;

/* Units of one (token, kv head) row of a pool of shader type t (row_units in kv_write.comp). */
static uint64_t vk_row_units(uint32_t t, uint32_t head_dim)
{
    if (t == KVRT_KV_T_Q8_0 || t == KVRT_KV_T_Q4_0)
        return head_dim / KVRT_KV_QGROUP;
    if (t == KVRT_KV_T_FP8_E4M3 || t == KVRT_KV_T_FP8_E5M2)
        return head_dim % 4 == 0 ? head_dim / 4 : head_dim;
    return t == KVRT_KV_T_F16 && head_dim % 2 == 0 ? head_dim / 2 : head_dim;
}

/* Bytes spanned by n rows of `row` elements, `stride` apart (F32). */
static bool vk_rows_bytes(int64_t n, int64_t stride, int64_t row, size_t *out)
{
    int64_t last, total;
    if (n <= 0 || stride < row || !kvrt_mul_i64(n - 1, stride, &last) || __builtin_add_overflow(last, row, &total) ||
        !kvrt_mul_i64(total, 4, &total) || total > UINT32_MAX * (int64_t)4)
        return false;
    *out = (size_t)total;
    return true;
}

kvrt_status kvrt_vk_kv_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view k, int64_t k_stride,
                             kvrt_view v, int64_t v_stride, kvrt_view slot_mapping, int32_t n_tokens)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    int64_t row = (int64_t)pool->desc.n_kv_heads * pool->desc.head_dim;
    size_t kb, vb;
    if (!vk_rows_bytes(n_tokens, k_stride, row, &kb) || !vk_rows_bytes(n_tokens, v_stride, row, &vb))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "kv_write: bad strides (k %lld, v %lld, row %lld)",
                         (long long)k_stride, (long long)v_stride, (long long)row);
    vk_push_kv_write pc;
    memset(&pc, 0, sizeof(pc));
    VK_POOL_PUSH(pc, pool);
    pc.n_tokens = (uint32_t)n_tokens;
    pc.k_stride = (uint32_t)k_stride;
    pc.v_stride = (uint32_t)v_stride;
    kvrt_vk_bind bind = {.buf = {k.buf, v.buf, slot_mapping.buf}};
    kvrt_vk_pipe_id pipe = kvrt_vk_pool_bind(pool, layer, KVRT_VK_PIPE_KV_WRITE, &bind);
    KVRT_TRY(kvrt_vk_view_seg(vk, k, kb, "kv_write k", &bind.seg[0], &pc.k_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, v, vb, "kv_write v", &bind.seg[1], &pc.v_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, slot_mapping, (size_t)n_tokens * 4, "kv_write slot_mapping", &bind.seg[2],
                              &pc.slot_off));
    /* units per token (write_unit in kv_write.comp): K's and V's, each by its own type */
    uint64_t per_token = (uint64_t)pc.n_kv_heads * (vk_row_units(pc.k_type, pc.head_dim) +
                                                    vk_row_units(pc.v_type, pc.head_dim));
    /* at most 64 units per invocation in one dispatch (the shader's loop trips) */
    uint64_t max_units = (uint64_t)vk->caps.max_wg_count[0] * 64u * 64u;
    uint32_t chunk = (uint32_t)KVRT_MAX(1, KVRT_MIN((uint64_t)n_tokens, max_units / per_token));
    if ((uint64_t)chunk * per_token > UINT32_MAX)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "kv_write: a token row of %llu units is too long",
                         (unsigned long long)per_token);
    bool implicit;
    KVRT_TRY(kvrt_vk_acquire(vk, &implicit));
    kvrt_status s = KVRT_OK;
    for (uint32_t t0 = 0; s == KVRT_OK && t0 < (uint32_t)n_tokens; t0 += chunk) {
        vk_push_kv_write cp = pc;
        cp.n_tokens = KVRT_MIN(chunk, (uint32_t)n_tokens - t0);
        cp.k_off += t0 * cp.k_stride; /* inside the views checked above */
        cp.v_off += t0 * cp.v_stride;
        cp.slot_off += t0;
        uint64_t total = (uint64_t)cp.n_tokens * per_token;
        uint32_t groups = (uint32_t)KVRT_MIN((total + 63) / 64, (uint64_t)vk->caps.max_wg_count[0]);
        s = kvrt_vk_dispatch(vk, pipe, &bind, &cp, sizeof(cp), groups, 1, 1);
    }
    return kvrt_vk_end_implicit(vk, implicit, s);
}
