#version 450
#ifdef KVRT_BDA // pools through buffer device addresses (built twice, see cmake/shaders.cmake)
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
#ifdef KVRT_NARROW // F16 KV through 16-bit storage (KVRT_FEATURE_FP16)
#extension GL_EXT_shader_16bit_storage : require
#endif
// Tiled prefill attention, pass 1 (split-K). A workgroup owns one (sequence,
// query head, key partition of part_tokens keys) and walks that sequence's
// query tiles (tile_q rows, striding by n_tile_groups workgroups); for each,
// key tiles of tile_k rows come through the block table into shared memory
// and an online softmax (F32) never materialises the score matrix. Each row
// leaves its partial result: scratch[token][head][part] = {acc[hd], m, l};
// attn_prefill_merge combines them. Causal over cached prefix + chunk.
// Bounded key partitions also keep every invocation far below lavapipe's
// 65535 loop iterations per invocation (gallivm's loop limiter, shared by all
// loops of a shader: past it, loops silently stop).
// Tile sizes are push constants chosen by the host from SMEM_FLOATS, which
// the host sets from the device's shared memory size.
// b2 = q, b3 = scratch, b4 = seq_lens, b5 = block tables, b6 = query_start_loc.
#define KVRT_ATTN_SHADER
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_ATTN } pc;
#include "kvrt_common.glsl"

#define WG 64u
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint SMEM_FLOATS = 4096u;

// [tile_q*D] q (scaled) | [tile_q*D] acc | [tile_k*D] K then V | [tile_q*tile_k] p | [tile_k] blk | m | l | alpha
shared float smem[SMEM_FLOATS];

void main()
{
    uint tid = gl_LocalInvocationID.x;
    uint head = gl_WorkGroupID.y;
    uint seq = gl_WorkGroupID.z / pc.max_parts;
    uint part = gl_WorkGroupID.z % pc.max_parts;
    uint D = pc.head_dim, BQ = pc.tile_q, BK = pc.tile_k;
    uint kvh = head / (pc.n_heads / pc.n_kv_heads);
    uint o_q = 0u, o_acc = BQ * D, o_kv = 2u * BQ * D, o_p = o_kv + BK * D;
    uint o_blk = o_p + BQ * BK, o_m = o_blk + BK, o_l = o_m + BQ, o_a = o_l + BQ;

    uint qs = b6.w[pc.qsl_off + seq];
    uint n_new = b6.w[pc.qsl_off + seq + 1u] - qs;
    uint len = b4.w[pc.seq_lens_off + seq];
    if (n_new == 0u || n_new > len)
        return;
    uint first = len - n_new; // position of the chunk's first query

    for (uint qt = gl_WorkGroupID.x; qt * BQ < n_new; qt += pc.n_tile_groups) {
        uint q0 = qt * BQ;
        uint nq = min(BQ, n_new - q0);
        for (uint i = tid; i < BQ * D; i += WG) {
            uint r = i / D, d = i % D;
            float q = 0.0;
            if (r < nq)
                q = uintBitsToFloat(b2.w[pc.q_off + (qs + q0 + r) * pc.q_stride + head * D + d]) * pc.scale;
            smem[o_q + i] = q;
            smem[o_acc + i] = 0.0;
        }
        if (tid < BQ) {
            smem[o_m + tid] = KVRT_NEG;
            smem[o_l + tid] = 0.0;
        }
        uint imin = first + q0, imax = first + q0 + nq - 1u;
        uint kbeg = part * pc.part_tokens;
        if (kbeg > imax)
            continue; // uniform: no key of this partition is causal for the tile
        uint kend = min(kbeg + pc.part_tokens, imax + 1u);
        barrier();
        for (uint k0 = kbeg; k0 < kend; k0 += BK) {
            // skip tiles no row of this query tile can see (uniform)
            if (pc.window != 0u && k0 + BK <= imin + 1u - min(pc.window, imin + 1u) && k0 >= pc.sinks)
                continue;
            barrier();
            if (tid < BK) {
                uint j = k0 + tid;
                int blk = -1;
                if (j < kend && j / pc.block_size < pc.max_blocks) {
                    blk = int(b5.w[pc.bt_off + seq * pc.max_blocks + j / pc.block_size]);
                    if (blk < 0 || uint(blk) >= pc.num_blocks)
                        blk = -1;
                }
                smem[o_blk + tid] = float(blk);
            }
            barrier();
            for (uint i = tid; i < BK * D; i += WG) {
                uint c = i / D, d = i % D;
                int blk = int(smem[o_blk + c]);
                float k = 0.0;
                if (blk >= 0)
                    k = pool_load(false, uint(blk) / pc.blocks_per_seg,
                                  pool_row(uint(blk), kvh, (k0 + c) % pc.block_size) + d);
                smem[o_kv + i] = k;
            }
            barrier();
            for (uint i = tid; i < BQ * BK; i += WG) {
                uint r = i / BK, c = i % BK;
                uint j = k0 + c;
                float s = KVRT_NEG;
                if (r < nq && int(smem[o_blk + c]) >= 0 && kvrt_visible(imin + r, j)) {
                    s = 0.0;
                    for (uint d = 0u; d < D; d++)
                        s += smem[o_q + r * D + d] * smem[o_kv + c * D + d];
                }
                smem[o_p + i] = s;
            }
            barrier();
            if (tid < BQ) {
                uint r = tid;
                float mold = smem[o_m + r];
                float mnew = mold;
                for (uint c = 0u; c < BK; c++)
                    mnew = max(mnew, smem[o_p + r * BK + c]);
                float sum = 0.0;
                for (uint c = 0u; c < BK; c++) {
                    float s = smem[o_p + r * BK + c];
                    float p = s > 0.5 * KVRT_NEG ? exp(s - mnew) : 0.0;
                    smem[o_p + r * BK + c] = p;
                    sum += p;
                }
                float alpha = exp(mold - mnew);
                smem[o_a + r] = alpha;
                smem[o_l + r] = smem[o_l + r] * alpha + sum;
                smem[o_m + r] = mnew;
            }
            barrier();
            for (uint i = tid; i < BK * D; i += WG) {
                uint c = i / D, d = i % D;
                int blk = int(smem[o_blk + c]);
                float v = 0.0;
                if (blk >= 0)
                    v = pool_load(true, uint(blk) / pc.blocks_per_seg,
                                  pool_row(uint(blk), kvh, (k0 + c) % pc.block_size) + d);
                smem[o_kv + i] = v;
            }
            barrier();
            for (uint i = tid; i < BQ * D; i += WG) {
                uint r = i / D, d = i % D;
                float a = smem[o_acc + i] * smem[o_a + r];
                for (uint c = 0u; c < BK; c++)
                    a += smem[o_p + r * BK + c] * smem[o_kv + c * D + d];
                smem[o_acc + i] = a;
            }
        }
        barrier();
        uint stride = D + 2u;
        for (uint i = tid; i < nq * D; i += WG) {
            uint r = i / D, d = i % D;
            uint base = (((qs + q0 + r) * pc.n_heads + head) * pc.max_parts + part) * stride;
            b3.w[base + d] = floatBitsToUint(smem[o_acc + i]);
        }
        for (uint r = tid; r < nq; r += WG) {
            uint base = (((qs + q0 + r) * pc.n_heads + head) * pc.max_parts + part) * stride;
            b3.w[base + D] = floatBitsToUint(smem[o_m + r]);
            b3.w[base + D + 1u] = floatBitsToUint(smem[o_l + r]);
        }
        barrier();
    }
}
