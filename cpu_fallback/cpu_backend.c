/* The CPU backend: buffers are host memory, ops run at once on kvrt's own
 * thread pool (large products through OpenBLAS where it measured faster,
 * cpu_blas.h; the front door times them), KV pools in the DESIGN.md layout. */
#include "cpu_blas.h"
#include "cpu_internal.h"
#include "cpu_ops_internal.h"

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define KVRT_CPU_ALIGN 64
#define KVRT_HUGE_PAGE ((size_t)2 << 20)

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
    b->head = (kvrt_buffer_head){size, p};
    b->owned = true;
    kvrt_cpu(be)->used += size;
    *out = b;
    return KVRT_OK;
}

static void cpu_buffer_destroy(kvrt_backend *be, kvrt_buffer *b)
{
    if (!b)
        return;
    if (b->owned) {
        kvrt_free(be->alloc, b->head.host);
        kvrt_cpu(be)->used -= b->head.size;
    }
    kvrt_free(be->alloc, b);
}

static kvrt_status cpu_buffer_wrap_host(kvrt_backend *be, void *ptr, size_t size, kvrt_buffer **out)
{
    *out = NULL;
    kvrt_buffer *b = kvrt_calloc(be->alloc, 1, sizeof(*b));
    if (!b)
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "cpu: out of host memory");
    b->head = (kvrt_buffer_head){size, ptr};
    *out = b;
    return KVRT_OK;
}

static kvrt_status cpu_buffer_upload(kvrt_backend *be, kvrt_buffer *dst, size_t offset, const void *src, size_t size)
{
    memcpy(kvrt_cpu_ptr((kvrt_view){dst, offset}), src, size);
    return KVRT_OK;
}

static kvrt_status cpu_buffer_download(kvrt_backend *be, kvrt_buffer *src, size_t offset, void *dst, size_t size)
{
    memcpy(dst, kvrt_cpu_ptr((kvrt_view){src, offset}), size);
    return KVRT_OK;
}

static kvrt_status cpu_buffer_copy(kvrt_backend *be, kvrt_buffer *src, size_t src_offset,
                                   kvrt_buffer *dst, size_t dst_offset, size_t size)
{
    memmove(kvrt_cpu_ptr((kvrt_view){dst, dst_offset}), kvrt_cpu_ptr((kvrt_view){src, src_offset}), size);
    return KVRT_OK;
}

/* ---- KV pools ---------------------------------------------------------------- */

/* Bytes of every layer's K and V of a pool (checked by the front door). */
static uint64_t cpu_pool_bytes(const kvrt_kv_pool_desc *d)
{
    return (uint64_t)kvrt_kv_block_bytes_pair(d) * (uint64_t)d->num_blocks * (uint64_t)d->n_layers;
}

static void cpu_kv_pool_destroy(kvrt_backend *be, kvrt_kv_pool *pool)
{
    if (!pool)
        return;
    kvrt_cpu(be)->used -= pool->charged;
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
    /* the kernels read and write these, K and V in any pair (cpu_kv.c, cpu_attention.c) */
    for (int w = 0; w < 2; w++) {
        kvrt_dtype t = kvrt_kv_pool_dtype(d, w == 1);
        if (t != KVRT_DTYPE_F32 && t != KVRT_DTYPE_F16 && !kvrt_kv_dtype_quantized(t))
            return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                             "cpu: KV type %s (%s) is not supported (f32, f16, q8_0, q4_0, fp8, fp8_e5m2)",
                             kvrt_dtype_name(t), w ? "V" : "K");
    }
    /* the front door checked the sizes (kvrt_kv_check_pool_desc) */
    size_t block_bytes[2] = {kvrt_kv_block_bytes_which(d, false), kvrt_kv_block_bytes_which(d, true)};
    size_t layer_bytes[2] = {block_bytes[0] * (size_t)d->num_blocks, block_bytes[1] * (size_t)d->num_blocks};
    size_t total = (size_t)cpu_pool_bytes(d);
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
    pool->block_bytes[0] = block_bytes[0];
    pool->block_bytes[1] = block_bytes[1];
    pool->k = kvrt_calloc(be->alloc, (size_t)d->n_layers, sizeof(void *));
    pool->v = kvrt_calloc(be->alloc, (size_t)d->n_layers, sizeof(void *));
    if (!pool->k || !pool->v)
        goto oom;
    for (int32_t l = 0; l < d->n_layers; l++) {
        pool->k[l] = alloc_pool_memory(be, layer_bytes[0]);
        pool->v[l] = alloc_pool_memory(be, layer_bytes[1]);
        if (!pool->k[l] || !pool->v[l])
            goto oom;
    }
    pool->charged = cpu_pool_bytes(d);
    kvrt_cpu(be)->used += pool->charged;
    *out = pool;
    return KVRT_OK;
oom:
    cpu_kv_pool_destroy(be, pool);
    return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY,
                     "cpu: cannot allocate the KV pool (%d layers x %zu + %zu bytes)", (int)d->n_layers,
                     layer_bytes[0], layer_bytes[1]);
}

static char *cpu_block_ptr(kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which, int32_t block)
{
    char *base = which == KVRT_KV_K ? pool->k[layer] : pool->v[layer];
    return base + (size_t)block * pool->block_bytes[which == KVRT_KV_V];
}

static kvrt_status cpu_kv_block_read(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                     int32_t block, void *dst)
{
    memcpy(dst, cpu_block_ptr(pool, layer, which, block), pool->block_bytes[which == KVRT_KV_V]);
    return KVRT_OK;
}

static kvrt_status cpu_kv_block_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                      int32_t block, const void *src)
{
    memcpy(cpu_block_ptr(pool, layer, which, block), src, pool->block_bytes[which == KVRT_KV_V]);
    return KVRT_OK;
}

static kvrt_status cpu_kv_copy_blocks(kvrt_backend *be, kvrt_kv_pool *pool, const int32_t (*pairs)[2], int32_t n)
{
    for (int32_t l = 0; l < pool->desc.n_layers; l++) {
        for (int32_t i = 0; i < n; i++) {
            for (int w = 0; w < 2; w++) {
                memcpy(cpu_block_ptr(pool, l, (kvrt_kv_which)w, pairs[i][1]),
                       cpu_block_ptr(pool, l, (kvrt_kv_which)w, pairs[i][0]), pool->block_bytes[w]);
            }
        }
    }
    return KVRT_OK;
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

/* Ops ran as they were called: nothing is left to drop. */
static void cpu_abort(kvrt_backend *be)
{
}

/* What the kernel reports available now (MemAvailable: free memory plus
 * what the page cache would give back), else the free pages; 0 if neither. */
static uint64_t cpu_available_bytes(void)
{
    uint64_t kib = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[128];
        unsigned long long v;
        while (fgets(line, sizeof(line), f)) {
            if (sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
                kib = v;
                break;
            }
        }
        fclose(f);
    }
    if (kib > 0)
        return kib * 1024u;
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

static void cpu_limits(kvrt_backend *be, kvrt_context_limits *out)
{
    const kvrt_cpu_backend *cpu = kvrt_cpu(be);
    out->memory_heap = cpu->heap;
    out->memory_budget = cpu->budget;
    out->memory_in_use = cpu->used;
    out->max_buffer_bytes = SIZE_MAX;
    /* the kernels take any head size and length the layout can index */
    out->decode_head_dim_max = INT32_MAX;
    out->prefill_head_dim_max = INT32_MAX;
    out->max_table_entries = INT64_MAX;
    out->max_seq_len = INT32_MAX;
    out->max_scratch_bytes = SIZE_MAX;
    out->scratch_bytes = cpu->last_scratch;
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
    .runs_at_once = true,
    .weight_types = KVRT_WEIGHT_TYPES_ALL,
    .kv_mixed_types = true,
    .destroy = cpu_destroy,
    .buffer_create = cpu_buffer_create,
    .buffer_destroy = cpu_buffer_destroy,
    .buffer_wrap_host = cpu_buffer_wrap_host,
    .buffer_upload = cpu_buffer_upload,
    .buffer_download = cpu_buffer_download,
    .buffer_copy = cpu_buffer_copy,
    .kv_pool_create = cpu_kv_pool_create,
    .kv_pool_destroy = cpu_kv_pool_destroy,
    .kv_block_read = cpu_kv_block_read,
    .kv_block_write = cpu_kv_block_write,
    .kv_copy_blocks = cpu_kv_copy_blocks,
    .begin = cpu_begin,
    .submit = cpu_submit,
    .abort = cpu_abort,
    .limits = cpu_limits,
    KVRT_BACKEND_KERNELS(KVRT_BACKEND_ENTRY, kvrt_cpu_)
    .kv_rope_shift = kvrt_cpu_kv_rope_shift,
};

kvrt_cpu_isa kvrt_cpu_backend_cap_isa(kvrt_backend *be, kvrt_cpu_isa cap)
{
    kvrt_cpu_isa best = kvrt_cpu_best_isa();
    kvrt_cpu(be)->isa = cap < best ? cap : best;
    return kvrt_cpu(be)->isa;
}

/* "cpu: 2 threads, OpenBLAS SkylakeX from 32 tokens", or why OpenBLAS is not used. */
static void describe(kvrt_cpu_backend *cpu, uint32_t disabled)
{
    const char *core = kvrt_cpu_blas_core();
    char blas[96];
    if (!core)
        snprintf(blas, sizeof(blas), "no OpenBLAS");
    else if (cpu->use_blas)
        snprintf(blas, sizeof(blas), "OpenBLAS %s from %d tokens", core, KVRT_BLAS_MIN_TOKENS);
    else if (disabled & KVRT_FEATURE_BLAS)
        snprintf(blas, sizeof(blas), "OpenBLAS %s disabled", core);
    else
        snprintf(blas, sizeof(blas), "OpenBLAS %s unused (no wider than kvrt's kernels)", core);
    snprintf(cpu->base.description, sizeof(cpu->base.description), "cpu: %d thread%s, %s", cpu->n_threads,
             cpu->n_threads == 1 ? "" : "s", blas);
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
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
    cpu->heap = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
    cpu->budget = params->memory_budget ? params->memory_budget : cpu_available_bytes();
    cpu->isa = kvrt_cpu_best_isa();
    cpu->use_blas = !(params->disabled_features & KVRT_FEATURE_BLAS) && kvrt_cpu_blas_usable(kvrt_cpu_best_isa());
    cpu->int8_act = params->int8_activations != 0;
    describe(cpu, params->disabled_features);
    *out = &cpu->base;
    return KVRT_OK;
}
