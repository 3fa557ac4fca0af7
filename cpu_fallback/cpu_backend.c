/* The CPU backend: buffers are host memory, ops run at once on kvrt's own
 * thread pool (serial OpenBLAS inside each task), KV pools in the DESIGN.md layout. */
#include "cpu_internal.h"
#include "cpu_ops_internal.h"
#include "cpu_profile.h"

#include <cblas.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define KVRT_CPU_ALIGN 64
#define KVRT_HUGE_PAGE ((size_t)2 << 20)

kvrt_status kvrt_cpu_check_view(kvrt_backend *be, kvrt_view v, size_t bytes, const char *what)
{
    if (!v.buf)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: no buffer", what);
    if (v.offset > v.buf->size || bytes > v.buf->size - v.offset)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                         "%s: %zu bytes at offset %zu exceed the buffer (%zu bytes)",
                         what, bytes, v.offset, v.buf->size);
    return KVRT_OK;
}

/* ---- memory ---------------------------------------------------------------- */

static kvrt_status cpu_buffer_create(kvrt_backend *be, size_t size, unsigned flags, kvrt_buffer **out)
{
    *out = NULL;
    kvrt_buffer *b = kvrt_calloc(be->alloc, 1, sizeof(*b));
    void *p = b ? kvrt_alloc(be->alloc, size, KVRT_CPU_ALIGN) : NULL;
    if (!p) {
        kvrt_free(be->alloc, b);
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "cpu: cannot allocate a %zu-byte buffer", size);
    }
    b->ptr = p;
    b->size = size;
    b->owned = true;
    *out = b;
    return KVRT_OK;
}

static void cpu_buffer_destroy(kvrt_backend *be, kvrt_buffer *b)
{
    if (!b)
        return;
    if (b->owned)
        kvrt_free(be->alloc, b->ptr);
    kvrt_free(be->alloc, b);
}

static kvrt_status cpu_buffer_wrap_host(kvrt_backend *be, void *ptr, size_t size, kvrt_buffer **out)
{
    *out = NULL;
    kvrt_buffer *b = kvrt_calloc(be->alloc, 1, sizeof(*b));
    if (!b)
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "cpu: out of host memory");
    b->ptr = ptr;
    b->size = size;
    *out = b;
    return KVRT_OK;
}

static void *cpu_buffer_host_ptr(kvrt_backend *be, kvrt_buffer *b)
{
    return b->ptr;
}

static kvrt_status cpu_buffer_upload(kvrt_backend *be, kvrt_buffer *dst, size_t offset, const void *src, size_t size)
{
    kvrt_view v = {dst, offset};
    KVRT_TRY(kvrt_cpu_check_view(be, v, size, "upload"));
    if (size)
        memcpy(kvrt_cpu_ptr(v), src, size);
    return KVRT_OK;
}

static kvrt_status cpu_buffer_download(kvrt_backend *be, kvrt_buffer *src, size_t offset, void *dst, size_t size)
{
    kvrt_view v = {src, offset};
    KVRT_TRY(kvrt_cpu_check_view(be, v, size, "download"));
    if (size)
        memcpy(dst, kvrt_cpu_ptr(v), size);
    return KVRT_OK;
}

static kvrt_status cpu_buffer_copy(kvrt_backend *be, kvrt_buffer *src, size_t src_offset,
                                   kvrt_buffer *dst, size_t dst_offset, size_t size)
{
    kvrt_view s = {src, src_offset}, d = {dst, dst_offset};
    KVRT_TRY(kvrt_cpu_check_view(be, s, size, "copy source"));
    KVRT_TRY(kvrt_cpu_check_view(be, d, size, "copy destination"));
    if (size)
        memmove(kvrt_cpu_ptr(d), kvrt_cpu_ptr(s), size);
    return KVRT_OK;
}

/* ---- KV pools ---------------------------------------------------------------- */

static void cpu_kv_pool_destroy(kvrt_backend *be, kvrt_kv_pool *pool)
{
    if (!pool)
        return;
    for (int32_t l = 0; l < pool->desc.n_layers; l++) {
        if (pool->k)
            kvrt_free(be->alloc, pool->k[l]);
        if (pool->v)
            kvrt_free(be->alloc, pool->v[l]);
    }
    kvrt_free(be->alloc, pool->k);
    kvrt_free(be->alloc, pool->v);
    kvrt_free(be->alloc, pool);
}

/* Zeroed pool memory (a block read before it is written holds zeros, not old
 * data). Big pools are aligned to and advised onto huge pages: decode reads
 * blocks scattered over the pool, and 4 KiB pages cost a TLB miss per block. */
static void *alloc_pool_memory(kvrt_backend *be, size_t bytes)
{
    bool huge = bytes >= KVRT_HUGE_PAGE;
    void *p = kvrt_alloc(be->alloc, bytes, huge ? KVRT_HUGE_PAGE : KVRT_CPU_ALIGN);
    if (!p)
        return NULL;
#if defined(MADV_HUGEPAGE)
    if (huge)
        madvise(p, bytes & ~(KVRT_HUGE_PAGE - 1), MADV_HUGEPAGE); /* advice only: failure is harmless */
#endif
    memset(p, 0, bytes);
    return p;
}

static kvrt_status cpu_kv_pool_create(kvrt_backend *be, const kvrt_kv_pool_desc *d, kvrt_kv_pool **out)
{
    *out = NULL;
    if (d->dtype != KVRT_DTYPE_F32 && d->dtype != KVRT_DTYPE_F16)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "cpu: KV type %s is not supported (f32, f16)",
                         kvrt_dtype_name(d->dtype));
    size_t block_bytes = kvrt_kv_block_bytes(d), layer_bytes, total;
    if (!kvrt_mul_size(block_bytes, (size_t)d->num_blocks, &layer_bytes) ||
        !kvrt_mul_size(layer_bytes, 2 * (size_t)d->n_layers, &total))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "cpu: KV pool size overflows");
    /* zero-filled up front: a pool beyond the machine's memory would push it into
     * swap or the OOM killer long before failing, so refuse it with numbers */
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page > 0 && total / (size_t)page >= (size_t)pages)
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                         "cpu: a KV pool of %.1f GiB (%d blocks of %d positions) exceeds this machine's %.1f GiB "
                         "of memory; use a shorter context or fewer blocks",
                         total / 1073741824.0, (int)d->num_blocks, (int)d->block_size,
                         (double)pages * (double)page / 1073741824.0);
    kvrt_kv_pool *pool = kvrt_calloc(be->alloc, 1, sizeof(*pool));
    if (!pool)
        goto oom;
    pool->desc = *d;
    pool->block_bytes = block_bytes;
    pool->k = kvrt_calloc(be->alloc, (size_t)d->n_layers, sizeof(void *));
    pool->v = kvrt_calloc(be->alloc, (size_t)d->n_layers, sizeof(void *));
    if (!pool->k || !pool->v)
        goto oom;
    for (int32_t l = 0; l < d->n_layers; l++) {
        pool->k[l] = alloc_pool_memory(be, layer_bytes);
        pool->v[l] = alloc_pool_memory(be, layer_bytes);
        if (!pool->k[l] || !pool->v[l])
            goto oom;
    }
    *out = pool;
    return KVRT_OK;
oom:
    cpu_kv_pool_destroy(be, pool);
    return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                     "cpu: cannot allocate the KV pool (%d layers x 2 x %zu bytes)", (int)d->n_layers, layer_bytes);
}

static kvrt_status cpu_check_block(kvrt_backend *be, const kvrt_kv_pool *pool, int32_t layer, int32_t block)
{
    if (layer < 0 || layer >= pool->desc.n_layers)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "layer %d outside [0, %d)",
                         (int)layer, (int)pool->desc.n_layers);
    if (block < 0 || block >= pool->desc.num_blocks)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "block %d outside [0, %d)",
                         (int)block, (int)pool->desc.num_blocks);
    return KVRT_OK;
}

static char *cpu_block_ptr(kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which, int32_t block)
{
    char *base = which == KVRT_KV_K ? pool->k[layer] : pool->v[layer];
    return base + (size_t)block * pool->block_bytes;
}

static kvrt_status cpu_kv_block_read(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                     int32_t block, void *dst)
{
    KVRT_TRY(cpu_check_block(be, pool, layer, block));
    memcpy(dst, cpu_block_ptr(pool, layer, which, block), pool->block_bytes);
    return KVRT_OK;
}

static kvrt_status cpu_kv_block_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                      int32_t block, const void *src)
{
    KVRT_TRY(cpu_check_block(be, pool, layer, block));
    memcpy(cpu_block_ptr(pool, layer, which, block), src, pool->block_bytes);
    return KVRT_OK;
}

static kvrt_status cpu_kv_copy_blocks(kvrt_backend *be, kvrt_kv_pool *pool, const int32_t (*pairs)[2], int32_t n)
{
    for (int32_t i = 0; i < n; i++) {
        KVRT_TRY(cpu_check_block(be, pool, 0, pairs[i][0]));
        KVRT_TRY(cpu_check_block(be, pool, 0, pairs[i][1]));
    }
    for (int32_t l = 0; l < pool->desc.n_layers; l++) {
        for (int32_t i = 0; i < n; i++) {
            for (int w = 0; w < 2; w++) {
                memcpy(cpu_block_ptr(pool, l, (kvrt_kv_which)w, pairs[i][1]),
                       cpu_block_ptr(pool, l, (kvrt_kv_which)w, pairs[i][0]), pool->block_bytes);
            }
        }
    }
    return KVRT_OK;
}

/* Copies are ops of a step like the kernels: timed as "copy" when profiling. */
static kvrt_status cpu_buffer_copy_op(kvrt_backend *be, kvrt_buffer *src, size_t src_offset, kvrt_buffer *dst,
                                      size_t dst_offset, size_t size)
{
    uint64_t t0 = kvrt_cpu_prof_start(be);
    return kvrt_cpu_prof_end(be, "copy", t0, cpu_buffer_copy(be, src, src_offset, dst, dst_offset, size));
}

static kvrt_status cpu_kv_copy_blocks_op(kvrt_backend *be, kvrt_kv_pool *pool, const int32_t (*pairs)[2], int32_t n)
{
    uint64_t t0 = kvrt_cpu_prof_start(be);
    return kvrt_cpu_prof_end(be, "copy", t0, cpu_kv_copy_blocks(be, pool, pairs, n));
}

/* ---- recording ----------------------------------------------------------------- */

static kvrt_status cpu_begin(kvrt_backend *be)
{
    return KVRT_OK;
}

static kvrt_status cpu_submit(kvrt_backend *be)
{
    return KVRT_OK;
}

static void cpu_destroy(kvrt_backend *be)
{
    if (!be)
        return;
    kvrt_threadpool_destroy(kvrt_cpu(be)->pool);
    kvrt_free(be->alloc, be);
}

static const kvrt_backend_ops cpu_ops = {
    .interface_version = KVRT_BACKEND_INTERFACE_VERSION,
    .name = "cpu",
    .destroy = cpu_destroy,
    .buffer_create = cpu_buffer_create,
    .buffer_destroy = cpu_buffer_destroy,
    .buffer_wrap_host = cpu_buffer_wrap_host,
    .buffer_host_ptr = cpu_buffer_host_ptr,
    .buffer_upload = cpu_buffer_upload,
    .buffer_download = cpu_buffer_download,
    .buffer_copy = cpu_buffer_copy_op,
    .kv_pool_create = cpu_kv_pool_create,
    .kv_pool_destroy = cpu_kv_pool_destroy,
    .kv_block_read = cpu_kv_block_read,
    .kv_block_write = cpu_kv_block_write,
    .kv_copy_blocks = cpu_kv_copy_blocks_op,
    .begin = cpu_begin,
    .submit = cpu_submit,

    /* attention family */
    .kv_write = kvrt_cpu_prof_kv_write,
    .attn_decode = kvrt_cpu_prof_attn_decode,
    .attn_prefill = kvrt_cpu_prof_attn_prefill,

    /* model op family */
    .matmul = kvrt_cpu_prof_matmul,
    .rmsnorm = kvrt_cpu_prof_rmsnorm,
    .rope = kvrt_cpu_prof_rope,
    .swiglu = kvrt_cpu_prof_swiglu,
    .add = kvrt_cpu_prof_add,
    .embed = kvrt_cpu_prof_embed,
    .gather_rows = kvrt_cpu_prof_gather_rows,
    .argmax = kvrt_cpu_prof_argmax,

    .set_profiling = kvrt_cpu_set_profiling, /* host wall time per op (cpu_profile.c) */
};

kvrt_cpu_isa kvrt_cpu_backend_cap_isa(kvrt_backend *be, kvrt_cpu_isa cap)
{
    kvrt_cpu_isa best = kvrt_cpu_best_isa();
    kvrt_cpu(be)->isa = cap < best ? cap : best;
    return kvrt_cpu(be)->isa;
}

kvrt_status kvrt_cpu_backend_create(const kvrt_context_params *params, kvrt_backend **out, kvrt_error *err)
{
    *out = NULL;
    kvrt_cpu_backend *cpu = kvrt_calloc(params->allocator, 1, sizeof(*cpu));
    if (!cpu)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "cpu backend: out of host memory");
    cpu->base.ops = &cpu_ops;
    cpu->base.kind = KVRT_BACKEND_CPU;
    cpu->base.alloc = params->allocator;
    kvrt_status s = kvrt_threadpool_create(params->allocator, params->n_threads, &cpu->pool, err);
    if (s != KVRT_OK) {
        kvrt_free(params->allocator, cpu);
        return s;
    }
    cpu->n_threads = kvrt_threadpool_size(cpu->pool);
    cpu->isa = kvrt_cpu_best_isa();
    snprintf(cpu->base.description, sizeof(cpu->base.description), "cpu: %d thread%s, OpenBLAS %s",
             cpu->n_threads, cpu->n_threads == 1 ? "" : "s", openblas_get_corename());
    *out = &cpu->base;
    return KVRT_OK;
}
