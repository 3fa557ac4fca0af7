/* The CPU backend's internals, shared by its op families (one file each). */
#ifndef KVRT_CPU_INTERNAL_H
#define KVRT_CPU_INTERNAL_H

#include "backend/backend.h"
#include "common/threadpool.h"

struct kvrt_buffer {
    kvrt_buffer_head head; /* host is always set: the bytes are host memory */
    bool owned;            /* false for wrapped caller memory */
};

struct kvrt_kv_pool {
    kvrt_kv_pool_desc desc;
    size_t block_bytes[2]; /* one block of one pool: [0] K, [1] V (their types may differ) */
    void **k;           /* [n_layers] -> [num_blocks][n_kv_heads][block_size][head_dim] */
    void **v;           /* [n_layers] same */
    uint64_t charged;   /* bytes counted in the backend's memory in use */
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
    bool use_blas; /* large products go to OpenBLAS (cpu_blas.h) */
    bool int8_act; /* decode GEMVs round x to int8 where a kernel exists (cpu_quant_q8.c) */
    uint64_t heap;         /* physical memory */
    uint64_t budget;       /* the context's, or what was available at creation */
    uint64_t used;         /* owned buffers and KV pools */
    uint64_t last_scratch; /* bytes of attention scratch the last call took */
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
    return (char *)v.buf->head.host + v.offset;
}

/* The kernel entries: attention family in cpu_attention.c and cpu_kv.c,
 * model ops in cpu_matmul.c and cpu_ops.c. */
KVRT_BACKEND_KERNELS(KVRT_BACKEND_DECLARE, kvrt_cpu_)
kvrt_be_kv_rope_shift_fn kvrt_cpu_kv_rope_shift; /* cpu_kv_shift.c */

#endif /* KVRT_CPU_INTERNAL_H */
