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

/* KV storage type codes of the K and V pools (program variants, kv_load). */
#define KVRT_CL_KV_F32 0
#define KVRT_CL_KV_F16 1
#define KVRT_CL_KV_Q8_0 2
#define KVRT_CL_KV_Q4_0 3
#define KVRT_CL_KV_FP8_E4M3 4
#define KVRT_CL_KV_FP8_E5M2 5
#define KVRT_CL_KV_TYPES 6

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

/* kv_rope_shift (context shift): offsets in elements. */
typedef struct kvrt_cl_rope_shift_args {
    kvrt_cl_i64 blocks_off; /* int32 elements */
    kvrt_cl_i64 cs_off;     /* F32 elements */
    kvrt_cl_i32 n_blocks;
    kvrt_cl_i32 rot_dim;
    kvrt_cl_i32 neox;
    kvrt_cl_i32 pad0;
} kvrt_cl_rope_shift_args;

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

/* KV storage types of the K and the V pool of a program variant (built with
 * -DKVRT_KV_K=t -DKVRT_KV_V=t; K and V may differ). F16 is storage only:
 * vload_half / vstore_half_rte are core OpenCL 1.2, so no cl_khr_fp16 is
 * needed, and stores round to nearest even like the CPU. q8_0 / q4_0 keep
 * kv_layout.h's layout: a block's rows of values, then its F16 scales; fp8
 * and fp8_e5m2 one byte per value, no scale. */
#if !defined(KVRT_KV_K) || !defined(KVRT_KV_V)
#error "a KV program variant sets KVRT_KV_K and KVRT_KV_V"
#endif

/* Segment arguments of one pool, as kernels declare them: bytes, read
 * through kv_load / kv_load4 by the pool's type. */
#define KV_SEGS(q, name)                                                                                    \
    q uchar *name##0, q uchar *name##1, q uchar *name##2, q uchar *name##3, q uchar *name##4,               \
        q uchar *name##5, q uchar *name##6, q uchar *name##7
#define KV_SEG_PICK(name, seg)                                                                              \
    ((seg) < 4 ? ((seg) < 2 ? ((seg) == 0 ? name##0 : name##1) : ((seg) == 2 ? name##2 : name##3))          \
               : ((seg) < 6 ? ((seg) == 4 ? name##4 : name##5) : ((seg) == 6 ? name##6 : name##7)))

/* F32 value of IEEE binary16 bits, exact for subnormals too. */
inline float kv_f16_bits_to_f32(uint h)
{
    const uint m = h & 0x3ffu, e = (h >> 10) & 0x1fu;
    const float v = e == 0u ? (float)m * 0x1p-24f : as_float(((e + 112u) << 23) | (m << 13));
    return (h & 0x8000u) ? -v : v; /* e == 31 (inf, NaN) is never a stored scale */
}

/* IEEE binary16 bits of f, round to nearest even (the algorithm of fp16.h and
 * of the Vulkan shaders), saturating at +-65504 as F16 KV does. */
inline uint kv_f32_to_f16_bits(float f)
{
    uint u = as_uint(f);
    const uint sign = (u >> 16) & 0x8000u;
    uint a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return sign | 0x7e00u | ((a >> 13) & 0x3ffu);
    if (a >= 0x477ff000u)
        return sign | 0x7bffu;
    if (a < 0x38800000u)
        return sign | (as_uint(as_float(a) + 0.5f) - 0x3f000000u);
    a += 0xc8000fffu + ((a >> 13) & 1u);
    return sign | (a >> 13);
}

/* Quantized pools: bytes of a row's values, and where row `row` (inside its
 * segment) of a pool of type t starts and keeps its scales. */
inline long kvq_row_bytes(const int t, kvrt_cl_pool_args pa)
{
    return t == KVRT_CL_KV_Q4_0 ? pa.head_dim / 2 : pa.head_dim;
}
inline long kvq_values_at(const int t, kvrt_cl_pool_args pa, long row)
{
    const long rpb = (long)pa.n_kv_heads * pa.block_size, lb = row / rpb;
    return lb * rpb * (kvq_row_bytes(t, pa) + pa.head_dim / 16) + (row - lb * rpb) * kvq_row_bytes(t, pa);
}
inline long kvq_scales_at(const int t, kvrt_cl_pool_args pa, long row)
{
    const long rpb = (long)pa.n_kv_heads * pa.block_size, lb = row / rpb;
    return lb * rpb * (kvq_row_bytes(t, pa) + pa.head_dim / 16) + rpb * kvq_row_bytes(t, pa) +
           (row - lb * rpb) * (pa.head_dim / 32) * 2;
}
inline float kvq_scale(__global const uchar *seg, const int t, kvrt_cl_pool_args pa, long row, int d)
{
    const long at = kvq_scales_at(t, pa, row) + (d / 32) * 2; /* little-endian F16 */
    return kv_f16_bits_to_f32(seg[at] | ((uint)seg[at + 1] << 8));
}

/* F32 value of an fp8 byte (kv_layout.h), exact: E4M3 (bias 7, 3 mantissa
 * bits, S.1111.111 NaN, no infinity) or E5M2 (the upper byte of an F16). */
inline float kv_fp8_to_f32(const int t, uint b)
{
    const int e4 = t == KVRT_CL_KV_FP8_E4M3;
    const uint m = e4 ? b & 7u : b & 3u, e = e4 ? (b >> 3) & 15u : (b >> 2) & 31u;
    float v;
    if (e4 && (b & 0x7fu) == 0x7fu)
        v = as_float(0x7fc00000u);
    else if (!e4 && e == 31u)
        v = as_float(m == 0u ? 0x7f800000u : 0x7fc00000u);
    else if (e == 0u) /* subnormal: m * 2^-9 (E4M3), m * 2^-16 (E5M2) */
        v = (float)m * (e4 ? 0x1p-9f : 0x1p-16f);
    else
        v = as_float(e4 ? ((e + 120u) << 23) | (m << 20) : ((e + 112u) << 23) | (m << 21));
    return (b & 0x80u) ? -v : v;
}

/* Value d of row `row` of a pool of type t (a compile-time constant, so one
 * branch is left), in F32: dequantized values are q * scale, exact. */
inline float kv_load(__global const uchar *seg, const int t, kvrt_cl_pool_args pa, long row, int d)
{
    if (t == KVRT_CL_KV_F32)
        return ((__global const float *)seg)[row * pa.head_dim + d];
    if (t == KVRT_CL_KV_F16)
        return vload_half(row * pa.head_dim + d, (__global const half *)seg);
    if (t == KVRT_CL_KV_FP8_E4M3 || t == KVRT_CL_KV_FP8_E5M2)
        return kv_fp8_to_f32(t, seg[row * pa.head_dim + d]);
    const float sc = kvq_scale(seg, t, pa, row, d);
    const long v = kvq_values_at(t, pa, row);
    if (t == KVRT_CL_KV_Q8_0)
        return (float)(char)seg[v + d] * sc;
    const uint b = seg[v + (d / 32) * 16 + (d & 15)]; /* value j low nibble, j + 16 high */
    return (float)((int)((d & 16) ? b >> 4 : b & 15u) - 8) * sc;
}

/* Values d..d+3 of a row (d a multiple of 4, d + 4 <= head_dim: one group). */
inline float4 kv_load4(__global const uchar *seg, const int t, kvrt_cl_pool_args pa, long row, int d)
{
    if (t == KVRT_CL_KV_F32)
        return vload4(0, (__global const float *)seg + row * pa.head_dim + d);
    if (t == KVRT_CL_KV_F16)
        return vload_half4(0, (__global const half *)seg + row * pa.head_dim + d);
    if (t == KVRT_CL_KV_FP8_E4M3 || t == KVRT_CL_KV_FP8_E5M2) {
        const uchar4 b = vload4(0, seg + row * pa.head_dim + d);
        return (float4)(kv_fp8_to_f32(t, b.x), kv_fp8_to_f32(t, b.y), kv_fp8_to_f32(t, b.z), kv_fp8_to_f32(t, b.w));
    }
    const float sc = kvq_scale(seg, t, pa, row, d);
    const long v = kvq_values_at(t, pa, row);
    if (t == KVRT_CL_KV_Q8_0)
        return convert_float4(vload4(0, (__global const char *)seg + v + d)) * sc;
    const uint4 b = convert_uint4(vload4(0, seg + v + (d / 32) * 16 + (d & 15)));
    return (convert_float4(convert_int4((d & 16) ? b >> 4 : b & 15u)) - 8.0f) * sc;
}

/* Row (block, head, offset) of a pool, counted inside its segment. */
inline long kv_row(kvrt_cl_pool_args pa, int block, int head, int off)
{
    long b = (long)block % pa.blocks_per_seg;
    return (b * pa.n_kv_heads + head) * pa.block_size + off;
}
#endif /* __OPENCL_VERSION__ */

#endif /* KVRT_CL_COMMON_H */
