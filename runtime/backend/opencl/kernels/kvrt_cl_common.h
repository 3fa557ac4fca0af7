/*
 * Definitions shared by the OpenCL host code (C) and the kernels (OpenCL C):
 * limits and the argument blocks passed by value to the kernels. The host
 * prepends this file to every program source, so both sides see one layout.
 * Only 64-bit integers first, then 32-bit ones, then floats: the layout is
 * then the same under both compilers without packing pragmas.
 */
#ifndef KVRT_CL_COMMON_H
#define KVRT_CL_COMMON_H

#ifdef __OPENCL_VERSION__
typedef long kvrt_cl_i64;
typedef int kvrt_cl_i32;
#else
#include <stdint.h>
typedef int64_t kvrt_cl_i64;
typedef int32_t kvrt_cl_i32;
#endif

/* A KV pool of one layer (K or V) spans at most this many segments
 * (cl_mem objects, each under CL_DEVICE_MAX_MEM_ALLOC_SIZE). Kernels take
 * them as separate arguments; unused ones repeat segment 0. */
#define KVRT_CL_MAX_KV_SEGS 8

/* Decode split-K: keys per partition. A constant, so the partition count of
 * a sequence depends on its own context length only (batch invariance). */
#define KVRT_CL_DECODE_PART 256

/* Query heads of one group kept in registers at a time by the decode kernel. */
#define KVRT_CL_DECODE_GCHUNK 8

/* Where the blocks of a pool live: block b is block (b % blocks_per_seg) of
 * segment b / blocks_per_seg. */
typedef struct kvrt_cl_pool_args {
    kvrt_cl_i64 blocks_per_seg;
    kvrt_cl_i32 num_blocks;
    kvrt_cl_i32 n_kv_heads;
    kvrt_cl_i32 block_size;
    kvrt_cl_i32 head_dim;
} kvrt_cl_pool_args;

/* kv_write: offsets and strides in elements (int32 elements for slots). */
typedef struct kvrt_cl_kv_write_args {
    kvrt_cl_i64 k_off, k_stride;
    kvrt_cl_i64 v_off, v_stride;
    kvrt_cl_i64 slot_off;
    kvrt_cl_i32 n_tokens;
    kvrt_cl_i32 pad0;
} kvrt_cl_kv_write_args;

/* Decode and prefill attention. */
typedef struct kvrt_cl_attn_args {
    kvrt_cl_i64 q_off, q_stride;   /* F32 elements */
    kvrt_cl_i64 o_off, o_stride;
    kvrt_cl_i64 seq_lens_off;      /* int32 elements */
    kvrt_cl_i64 bt_off;
    kvrt_cl_i64 qsl_off;           /* prefill: query_start_loc */
    kvrt_cl_i64 q_end, o_end;      /* elements of q's / out's segment: rows past it are not touched */
    kvrt_cl_i64 part_ml_off;       /* decode scratch: (max, sum) pairs follow the partial outputs */
    kvrt_cl_i64 lse_off;           /* want_lse: F32 elements of lse [rows][n_heads] */
    kvrt_cl_i32 num_seqs;
    kvrt_cl_i32 n_heads;
    kvrt_cl_i32 max_blocks_per_seq;
    kvrt_cl_i32 window;
    kvrt_cl_i32 sinks;
    kvrt_cl_i32 max_parts;         /* decode: partitions per (seq, head) in the scratch */
    kvrt_cl_i32 tile;              /* prefill: queries and keys per tile */
    kvrt_cl_i32 max_tiles;         /* prefill: query tiles per sequence in the grid */
    float scale;
    kvrt_cl_i32 want_lse;          /* 1: also write each row's log-sum-exp (the tier split, issue 18) */
} kvrt_cl_attn_args;

/* Model ops (ops.cl): views in argument order, offsets and strides in elements. */
typedef struct kvrt_cl_op_args {
    kvrt_cl_i64 off[4];
    kvrt_cl_i64 stride[4];
    kvrt_cl_i64 n;         /* add: elements; matmul: n_in */
    kvrt_cl_i32 rows;      /* tokens / rows */
    kvrt_cl_i32 dim;       /* row length; matmul: n_out */
    kvrt_cl_i32 n_heads;   /* rope */
    kvrt_cl_i32 head_dim;
    kvrt_cl_i32 rot_dim;
    kvrt_cl_i32 neox;
    kvrt_cl_i32 max_pos;
    float eps;             /* rmsnorm */
    kvrt_cl_i32 wtype;     /* embed_q, matmul_q: the weight type (kvrt_dtype / ggml type id) */
} kvrt_cl_op_args;

#ifdef __OPENCL_VERSION__
/* ---- kernel side only ---- */

/* KV storage type of this program variant (built with -DKVRT_KV_F16=0|1).
 * F16 is storage only: vload_half / vstore_half_rte are core OpenCL 1.2, so
 * no cl_khr_fp16 is needed, and stores round to nearest even like the CPU. */
#if KVRT_KV_F16
typedef half kv_t;
#define KV_LOAD(p, i) vload_half((i), (p))
/* F16 KV saturates (DESIGN.md): beyond +-65504, inf included, stores +-65504; NaN stays NaN */
#define KV_STORE(p, i, x) vstore_half_rte(isnan(x) ? (x) : clamp((x), -65504.0f, 65504.0f), (i), (p))
#define KV_LOAD4(p, i) vload_half4(0, (p) + (i))
#else
typedef float kv_t;
#define KV_LOAD(p, i) ((p)[(i)])
#define KV_STORE(p, i, x) ((p)[(i)] = (x))
#define KV_LOAD4(p, i) vload4(0, (p) + (i))
#endif

/* Segment arguments of one pool, as kernels declare them. */
#define KV_SEGS(q, name)                                                                                    \
    q kv_t *name##0, q kv_t *name##1, q kv_t *name##2, q kv_t *name##3, q kv_t *name##4, q kv_t *name##5,    \
        q kv_t *name##6, q kv_t *name##7
#define KV_SEG_PICK(name, seg)                                                                              \
    ((seg) < 4 ? ((seg) < 2 ? ((seg) == 0 ? name##0 : name##1) : ((seg) == 2 ? name##2 : name##3))          \
               : ((seg) < 6 ? ((seg) == 4 ? name##4 : name##5) : ((seg) == 6 ? name##6 : name##7)))

/* Element index, inside its segment, of row (block, head, offset) of a pool. */
inline long kv_row_index(kvrt_cl_pool_args pa, int block, int head, int off)
{
    long b = (long)block % pa.blocks_per_seg;
    return ((b * pa.n_kv_heads + head) * pa.block_size + off) * (long)pa.head_dim;
}
#endif /* __OPENCL_VERSION__ */

#endif /* KVRT_CL_COMMON_H */
