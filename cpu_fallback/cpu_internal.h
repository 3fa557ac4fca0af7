/* The CPU backend's internals, shared by its op families (one file each). */
#ifndef KVRT_CPU_INTERNAL_H
#define KVRT_CPU_INTERNAL_H

#include "backend/backend.h"
#include "common/threadpool.h"

struct kvrt_buffer {
    void *ptr;
    size_t size;
    bool owned; /* false for wrapped caller memory */
};

struct kvrt_kv_pool {
    kvrt_kv_pool_desc desc;
    size_t block_bytes; /* one block of one pool */
    void **k;           /* [n_layers] -> [num_blocks][n_kv_heads][block_size][head_dim] */
    void **v;           /* [n_layers] same */
};

/* Kernel flavours, each a superset of the one before (a flavour's tables
 * fall back to the one below for types it has no kernel of). */
typedef enum kvrt_cpu_isa {
    KVRT_CPU_ISA_PORTABLE = 0, /* plain C: any x86-64 (or other) CPU */
    KVRT_CPU_ISA_AVX2 = 1,     /* AVX2 + FMA + F16C */
    KVRT_CPU_ISA_AVX512 = 2    /* + AVX-512 F/BW/VL/DQ */
} kvrt_cpu_isa;

typedef struct kvrt_cpu_backend {
    kvrt_backend base;
    kvrt_threadpool *pool;
    int n_threads;
    kvrt_cpu_isa isa; /* flavour of the matmul and embedding kernels: the CPU's best unless capped */
} kvrt_cpu_backend;

/* Caps the flavour the matmul and embedding kernels use (tests run every
 * flavour this CPU has through the whole op); returns the one in effect. */
kvrt_cpu_isa kvrt_cpu_backend_cap_isa(kvrt_backend *be, kvrt_cpu_isa cap);

static inline kvrt_cpu_backend *kvrt_cpu(kvrt_backend *be)
{
    return (kvrt_cpu_backend *)be;
}

/* Host address of a view. */
static inline void *kvrt_cpu_ptr(kvrt_view v)
{
    return (char *)v.buf->ptr + v.offset;
}

/* Checks that [offset, offset + bytes) of a view lies inside its buffer. */
kvrt_status kvrt_cpu_check_view(kvrt_backend *be, kvrt_view v, size_t bytes, const char *what);

/* ---- attention family (cpu_attention.c, cpu_kv.c) ---- */
kvrt_status kvrt_cpu_kv_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                              kvrt_view k, int64_t k_stride, kvrt_view v, int64_t v_stride,
                              kvrt_view slot_mapping, int32_t n_tokens);
kvrt_status kvrt_cpu_attn_decode(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                 kvrt_view q, kvrt_view out, kvrt_view seq_lens, kvrt_view block_tables);
kvrt_status kvrt_cpu_attn_prefill(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                  kvrt_view q, kvrt_view out, kvrt_view query_start_loc,
                                  kvrt_view seq_lens, kvrt_view block_tables);

/* ---- model op family (cpu_matmul.c, cpu_ops.c) ---- */
kvrt_status kvrt_cpu_matmul(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in,
                            kvrt_view x, int64_t x_stride, kvrt_view y, int64_t y_stride, int32_t n_tokens);
kvrt_status kvrt_cpu_rmsnorm(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w,
                             kvrt_view y, int64_t y_stride, int32_t n_tokens, int32_t dim, float eps);
kvrt_status kvrt_cpu_rope(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                          const kvrt_rope_desc *d);
kvrt_status kvrt_cpu_swiglu(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up,
                            int64_t up_stride, kvrt_view out, int64_t out_stride, int32_t n_tokens, int32_t dim);
kvrt_status kvrt_cpu_add(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n);
kvrt_status kvrt_cpu_embed(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim,
                           kvrt_view ids, int32_t n_tokens, kvrt_view out);
kvrt_status kvrt_cpu_gather_rows(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx,
                                 int32_t n, kvrt_view dst, int64_t dst_stride, int32_t dim);
kvrt_status kvrt_cpu_argmax(kvrt_backend *be, kvrt_view x, int64_t stride, int32_t n_rows, int32_t n_cols,
                            kvrt_view out);

#endif /* KVRT_CPU_INTERNAL_H */
