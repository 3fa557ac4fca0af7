/*
 * Push-constant layouts shared by the GLSL shaders and the C side of the
 * Vulkan backend. Every field is a 4-byte scalar, so std430 (GLSL push
 * constants) and C agree on offsets; vk_pipelines.c checks sizes with
 * _Static_assert. Offsets into buffers are in 32-bit words, relative to the
 * bound segment (views must be 4-byte aligned).
 *
 * GLSL: layout(push_constant) uniform P { KVRT_PUSH_KV_WRITE } pc;
 * C:    typedef struct { KVRT_PUSH_KV_WRITE } kvrt_push_kv_write;
 */
#ifndef KVRT_PUSH_H
#define KVRT_PUSH_H

#ifndef GL_core_profile
#include <stdint.h>
typedef uint32_t kvrt_u32;
typedef int32_t kvrt_i32;
typedef float kvrt_f32;
#else
#define kvrt_u32 uint
#define kvrt_i32 int
#define kvrt_f32 float
#endif

/* Most segments a K or V pool layer may span on the descriptor path. */
#define KVRT_VK_MAX_POOL_SEGS 8

/* Fields every pool-reading shader needs to find element e of a layer's pool. */
#define KVRT_PUSH_POOL_FIELDS                                                      \
    kvrt_u32 n_kv_heads;                                                           \
    kvrt_u32 head_dim;                                                             \
    kvrt_u32 block_size;                                                           \
    kvrt_u32 num_blocks;                                                           \
    kvrt_u32 blocks_per_seg; /* whole blocks per segment */                        \
    kvrt_u32 k_type;         /* KV storage of the K pool: KVRT_KV_T_* below */     \
    kvrt_u32 v_type;         /* of the V pool (K and V may differ) */

/* KV storage types of a pool (k_type, v_type): F32; F16 (two halves per
 * word); q8_0 and q4_0 (kv_layout.h: values, then the block's F16 scales);
 * fp8 E4M3 and E5M2 (kv_layout.h: one byte per value, four per word, no scale). */
#define KVRT_KV_T_F32 0
#define KVRT_KV_T_F16 1
#define KVRT_KV_T_Q8_0 2
#define KVRT_KV_T_Q4_0 3
#define KVRT_KV_T_FP8_E4M3 4
#define KVRT_KV_T_FP8_E5M2 5

/* kv_write: one invocation per (token, kv head, unit of a head row: an F32 element,
 * an F16 word or element, a quantized group of 32, an fp8 word or element) of K, then of V */
#define KVRT_PUSH_KV_WRITE                                                         \
    KVRT_PUSH_POOL_FIELDS                                                          \
    kvrt_u32 n_tokens;                                                             \
    kvrt_u32 k_off;      /* words */                                               \
    kvrt_u32 k_stride;   /* elements between tokens */                             \
    kvrt_u32 v_off;                                                                \
    kvrt_u32 v_stride;                                                             \
    kvrt_u32 slot_off;

/* kv_rope_shift: one invocation per (block, kv head, offset, pair) */
#define KVRT_PUSH_ROPE_SHIFT                                                       \
    KVRT_PUSH_POOL_FIELDS                                                          \
    kvrt_u32 n_blocks;                                                             \
    kvrt_u32 rot_dim;                                                              \
    kvrt_u32 neox;                                                                 \
    kvrt_u32 blocks_off; /* words into b2 */                                       \
    kvrt_u32 cs_off;     /* words into b3 */

/* decode attention, pass 1: one workgroup per (partition, kv head x head group, seq) */
#define KVRT_PUSH_ATTN                                                             \
    KVRT_PUSH_POOL_FIELDS                                                          \
    kvrt_u32 num_seqs;                                                             \
    kvrt_u32 n_heads;                                                              \
    kvrt_u32 heads_per_wg;   /* query heads of one group handled by one workgroup */ \
    kvrt_u32 max_blocks;     /* block table row length */                          \
    kvrt_f32 scale;                                                                \
    kvrt_u32 window;                                                               \
    kvrt_u32 sinks;                                                                \
    kvrt_u32 q_off;                                                                \
    kvrt_u32 q_stride;                                                             \
    kvrt_u32 o_off;                                                                \
    kvrt_u32 o_stride;                                                             \
    kvrt_u32 seq_lens_off;                                                         \
    kvrt_u32 bt_off;                                                               \
    kvrt_u32 qsl_off;        /* prefill: query_start_loc */                        \
    kvrt_u32 part_tokens;    /* decode: tokens per split-K partition */            \
    kvrt_u32 max_parts;      /* decode: partitions per (seq, head) in scratch */   \
    kvrt_u32 tile_q;         /* prefill: query rows per tile */                    \
    kvrt_u32 tile_k;         /* prefill: key rows per tile */                      \
    kvrt_u32 tile_base;      /* prefill: first query tile (merge: row) of the dispatch */ \
    kvrt_u32 lse_off;        /* merges: word offset of lse [rows][n_heads] */      \
    kvrt_u32 lse_on;         /* merges: 1 = also write each row's log-sum-exp */

/* model ops: a, b, c are the bindings 2..4 (word offsets, element strides) */
#define KVRT_PUSH_OPS                                                              \
    kvrt_u32 n_tokens;   /* rows */                                                \
    kvrt_u32 dim;        /* row length (matmul: n_in) */                           \
    kvrt_u32 n_out;      /* matmul: output rows; add: element count */            \
    kvrt_u32 wtype;      /* 0 F32 1 F16 2 BF16 3 Q8_0 4 Q4_0 (matmul, embed) */ \
    kvrt_u32 a_off;                                                                \
    kvrt_u32 a_stride;                                                             \
    kvrt_u32 b_off;                                                                \
    kvrt_u32 b_stride;                                                             \
    kvrt_u32 c_off;                                                                \
    kvrt_u32 c_stride;                                                             \
    kvrt_f32 eps;                                                                  \
    kvrt_u32 n_heads;    /* rope */                                                \
    kvrt_u32 head_dim;                                                             \
    kvrt_u32 rot_dim;                                                              \
    kvrt_u32 neox;                                                                 \
    kvrt_u32 max_pos;                                                              \
    kvrt_u32 seg_words;  /* a (weights.glsl): words per segment */               \
    kvrt_u32 win_base;   /* a, descriptor path: first word of the bound window */ \
    kvrt_u32 row_lo;     /* rows of a this dispatch covers */                     \
    kvrt_u32 row_hi;

#endif /* KVRT_PUSH_H */
