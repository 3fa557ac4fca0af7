#version 450
#ifdef KVRT_BDA // pools through buffer device addresses (built twice, see cmake/shaders.cmake)
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
#ifdef KVRT_NARROW // F16 KV through 16-bit storage (KVRT_FEATURE_FP16)
#extension GL_EXT_shader_16bit_storage : require
#endif
// Paged decode attention, pass 1 (split-K). One workgroup owns one
// (sequence, KV head, group of query heads, partition of part_tokens keys):
// it reads each K/V row of its partition once for all its query heads, keeps
// an online softmax in F32 and writes the unnormalised partial result plus
// its running max and sum: scratch[seq][head][part] = {acc[head_dim], m, l}.
// b2 = q, b3 = scratch, b4 = seq_lens, b5 = block tables.
#define KVRT_ATTN_SHADER
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_ATTN } pc;
#include "kvrt_common.glsl"

#define WG 64u
#define MAX_QD 1024u // heads_per_wg * head_dim, checked by the host
layout(local_size_x = 64) in;

shared float s_q[MAX_QD];     // [hw][head_dim], pre-scaled
shared float s_acc[MAX_QD];   // [hw][head_dim]
shared float s_p[MAX_QD];     // [hw][WG] scores, then probabilities
shared int s_blk[WG];         // block of each key of the tile, -1 when invisible
shared float s_m[32], s_l[32], s_alpha[32];

void main()
{
    uint tid = gl_LocalInvocationID.x;
    uint seq = gl_WorkGroupID.z;
    uint part = gl_WorkGroupID.x;
    uint hw = pc.heads_per_wg;
    uint groups = (pc.n_heads / pc.n_kv_heads) / hw;
    uint kvh = gl_WorkGroupID.y / groups;
    uint head0 = kvh * (pc.n_heads / pc.n_kv_heads) + (gl_WorkGroupID.y % groups) * hw;
    uint D = pc.head_dim;
    uint len = b4.w[pc.seq_lens_off + seq];
    uint p0 = part * pc.part_tokens;
    if (len == 0u || p0 >= len)
        return; // uniform: the whole workgroup leaves
    uint p1 = min(p0 + pc.part_tokens, len);
    uint qpos = len - 1u;

    for (uint i = tid; i < hw * D; i += WG) {
        uint g = i / D, d = i % D;
        s_q[i] = uintBitsToFloat(b2.w[pc.q_off + seq * pc.q_stride + (head0 + g) * D + d]) * pc.scale;
        s_acc[i] = 0.0;
    }
    if (tid < hw) {
        s_m[tid] = KVRT_NEG;
        s_l[tid] = 0.0;
    }
    barrier();

    for (uint t0 = p0; t0 < p1; t0 += WG) {
        uint j = t0 + tid;
        int blk = -1;
        // keys past the block table (seq_lens larger than the table) are never read
        if (j < p1 && j / pc.block_size < pc.max_blocks && kvrt_visible(qpos, j)) {
            blk = int(b5.w[pc.bt_off + seq * pc.max_blocks + j / pc.block_size]);
            if (blk < 0 || uint(blk) >= pc.num_blocks)
                blk = -1;
        }
        s_blk[tid] = blk;
        if (blk >= 0) {
            uint seg = uint(blk) / pc.blocks_per_seg;
            uint row = pool_row(uint(blk), kvh, j % pc.block_size);
            for (uint g = 0u; g < hw; g++) {
                float s = 0.0;
                for (uint d = 0u; d < D; d++)
                    s += s_q[g * D + d] * pool_load(false, seg, row + d);
                s_p[g * WG + tid] = s;
            }
        }
        barrier();
        if (tid < hw) {
            uint g = tid;
            float mt = KVRT_NEG;
            for (uint c = 0u; c < WG; c++)
                if (s_blk[c] >= 0)
                    mt = max(mt, s_p[g * WG + c]);
            float mnew = max(s_m[g], mt);
            float sum = 0.0;
            for (uint c = 0u; c < WG; c++) {
                float p = s_blk[c] >= 0 ? exp(s_p[g * WG + c] - mnew) : 0.0;
                s_p[g * WG + c] = p;
                sum += p;
            }
            float alpha = exp(s_m[g] - mnew);
            s_alpha[g] = alpha;
            s_l[g] = s_l[g] * alpha + sum;
            s_m[g] = mnew;
        }
        barrier();
        for (uint i = tid; i < hw * D; i += WG) {
            uint g = i / D, d = i % D;
            float a = s_acc[i] * s_alpha[g];
            for (uint c = 0u; c < WG; c++) {
                int b = s_blk[c];
                if (b < 0)
                    continue;
                uint jj = t0 + c;
                uint e = pool_row(uint(b), kvh, jj % pc.block_size) + d;
                a += s_p[g * WG + c] * pool_load(true, uint(b) / pc.blocks_per_seg, e);
            }
            s_acc[i] = a;
        }
        barrier();
    }

    uint stride = D + 2u;
    for (uint i = tid; i < hw * D; i += WG) {
        uint g = i / D, d = i % D;
        uint base = ((seq * pc.n_heads + head0 + g) * pc.max_parts + part) * stride;
        b3.w[base + d] = floatBitsToUint(s_acc[i]);
    }
    if (tid < hw) {
        uint base = ((seq * pc.n_heads + head0 + tid) * pc.max_parts + part) * stride;
        b3.w[base + D] = floatBitsToUint(s_m[tid]);
        b3.w[base + D + 1u] = floatBitsToUint(s_l[tid]);
    }
}
