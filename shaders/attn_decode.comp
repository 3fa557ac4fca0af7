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
//
// Keys go in tiles of WG. Scores come from shared memory, FlashDecoding
// style: the workgroup first stages KT keys of the tile (tile_k, a power of
// two <= WG chosen by the host to fit shared memory) as F32 rows, element
// i of the sub-tile taken by invocation i % WG. A key's row is head_dim
// consecutive pool elements, and the rows of one (block, kv head) follow each
// other (pool_row), so a warp-wide load reads 32 consecutive elements: 64
// (F16) or 128 (F32) contiguous bytes, one or two 128-byte lines (a third
// piece only where the warp crosses into another block), where one
// invocation per key walking its own row touched 32 lines, one per key, and
// used 2 to 4 bytes of each. V was already read that way (invocation per
// (head, dim), looping over keys); both now take each key's segment and row
// from s_seg/s_row, filled once per tile.
// Then each (key, query head, slice) item sums q.k from shared memory. Rows
// are KS = S * odd floats apart (S slices, interleaved: slice s takes
// dims s, s+S, ...): the lanes of a warp, slice fastest then key, hit banks
// (c * KS + s) mod 32, all distinct; q rows use the same stride, and lanes
// that share a query head read the same word (broadcast). S > 1 only when
// KT * heads_per_wg < WG (large head_dim without GQA), so that every
// invocation has a share of the dot products; partial sums are then added in
// slice order. Both builds (packed words, KVRT_NARROW) run the same F32
// arithmetic in the same order, so their results are bitwise equal.
// Loop iterations of one invocation per 64-key tile: about head_dim (K
// staging) + 2 * hw * head_dim (scores) + hw * head_dim (V) + 2 * WG
// (softmax), with hw * head_dim <= 1024 at most ~4,300 (~35,000 over a
// 512-key partition), plus S per staged key for the slice sums: with
// 16 KiB and head_dim 1024 (KT 1, S 64) ~7,400 a tile, so the host halves
// the partition when KT * hw < 4 (~30,000), below lavapipe's 65535.
// Measured with a trip counter in every loop (each exit counted, as
// lavapipe does), max over a workgroup: 30,903 at 16 KiB, head_dim 1024
// (KT 1, 256-key partition); 28,747 at 32 KiB, head_dim 1024; 27,467 at
// 16 KiB, head_dim 512 with 2 heads a group (hw 2). The host takes
// head_dim <= 1024 and hw * head_dim <= 1024 only; context length adds
// partitions (workgroups), never trips.
#define KVRT_ATTN_SHADER
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_ATTN } pc;
#include "kvrt_common.glsl"

#define WG 64u
#define MAX_HW 16u // heads_per_wg, checked by the host
layout(local_size_x = 64) in;
// Shared floats of the device (host: kvrt_vk_prefill_smem_floats); the fixed
// arrays below take FIXED_WORDS of them, the host sizes tiles from the rest.
layout(constant_id = 0) const uint SMEM_FLOATS = 4096u;
#define FIXED_WORDS (2u * WG + 3u * MAX_HW)
const uint DYN_FLOATS = SMEM_FLOATS - FIXED_WORDS;

// [hw][KS] q (scaled) | [hw][D] acc | [hw][WG] scores then probabilities |
// [WG] slice partial sums | [KT][KS] staged K rows
shared float smem[DYN_FLOATS];
shared int s_seg[WG];         // pool segment of each key of the tile, -1 when invisible
shared uint s_row[WG];        // its row in the segment (pool_row), for K and V alike
shared float s_m[MAX_HW], s_l[MAX_HW], s_alpha[MAX_HW];

void main()
{
    uint tid = gl_LocalInvocationID.x;
    uint seq = gl_WorkGroupID.z;
    uint part = gl_WorkGroupID.x;
    uint hw = pc.heads_per_wg;
    uint groups = (pc.n_heads / pc.n_kv_heads) / hw;
    uint kvh = gl_WorkGroupID.y / groups;
    uint head0 = kvh * (pc.n_heads / pc.n_kv_heads) + (gl_WorkGroupID.y % groups) * hw;
    uint D = pc.head_dim, KT = pc.tile_k;
    // slices per dot product and row stride: same formula as vk_decode_layout
    uint S = KT * hw >= WG ? 1u : 1u << findMSB(WG / (KT * hw));
    uint KS = S * (((D + S - 1u) / S) | 1u);
    uint o_q = 0u, o_acc = hw * KS, o_p = o_acc + hw * D, o_part = o_p + hw * WG, o_k = o_part + WG;
    // element tid of a sub-tile is (key tid / D, dim tid % D); each step of WG
    // elements moves on by (WG / D, WG % D): no division per element
    uint c_first = tid / D, d_first = tid % D, c_step = WG / D, d_step = WG % D;
    uint len = b4.w[pc.seq_lens_off + seq];
    uint p0 = part * pc.part_tokens;
    if (len == 0u || p0 >= len)
        return; // uniform: the whole workgroup leaves
    uint p1 = min(p0 + pc.part_tokens, len);
    uint qpos = len - 1u;

    for (uint i = tid; i < hw * D; i += WG) {
        uint g = i / D, d = i % D;
        smem[o_q + g * KS + d] =
            uintBitsToFloat(b2.w[pc.q_off + seq * pc.q_stride + (head0 + g) * D + d]) * pc.scale;
        smem[o_acc + i] = 0.0;
    }
    if (tid < hw) {
        s_m[tid] = KVRT_NEG;
        s_l[tid] = 0.0;
    }

    for (uint t0 = p0; t0 < p1; t0 += WG) {
        uint j = t0 + tid;
        int blk = -1;
        // keys past the block table (seq_lens larger than the table) are never read
        if (j < p1 && j / pc.block_size < pc.max_blocks && kvrt_visible(qpos, j)) {
            blk = int(b5.w[pc.bt_off + seq * pc.max_blocks + j / pc.block_size]);
            if (blk < 0 || uint(blk) >= pc.num_blocks)
                blk = -1;
        }
        s_seg[tid] = blk < 0 ? -1 : int(uint(blk) / pc.blocks_per_seg);
        s_row[tid] = blk < 0 ? 0u : pool_row(uint(blk), kvh, j % pc.block_size);
        barrier();
        for (uint c0 = 0u; c0 < WG && t0 + c0 < p1; c0 += KT) { // uniform
            uint c = c_first, d = d_first;
            for (uint i = tid; i < KT * D; i += WG) {
                int sg = s_seg[c0 + c];
                if (sg >= 0)
                    smem[o_k + c * KS + d] = pool_load(false, uint(sg), s_row[c0 + c] + d);
                c += c_step;
                d += d_step;
                if (d >= D) {
                    d -= D;
                    c++;
                }
            }
            barrier();
            for (uint i = tid; i < KT * hw * S; i += WG) {
                uint s = i % S, c = (i / S) % KT, g = i / (S * KT);
                float acc = 0.0;
                if (s_seg[c0 + c] >= 0)
                    for (uint d = s; d < D; d += S)
                        acc += smem[o_q + g * KS + d] * smem[o_k + c * KS + d];
                if (S == 1u)
                    smem[o_p + g * WG + c0 + c] = acc;
                else
                    smem[o_part + i] = acc; // i < WG when S > 1
            }
            barrier();
            if (S > 1u) {
                if (tid < KT * hw) {
                    uint c = tid % KT, g = tid / KT;
                    float acc = 0.0;
                    for (uint s = 0u; s < S; s++)
                        acc += smem[o_part + tid * S + s];
                    smem[o_p + g * WG + c0 + c] = acc;
                }
                barrier();
            }
        }
        if (tid < hw) {
            uint g = tid;
            float mt = KVRT_NEG;
            for (uint c = 0u; c < WG; c++)
                if (s_seg[c] >= 0)
                    mt = max(mt, smem[o_p + g * WG + c]);
            float mnew = max(s_m[g], mt);
            float sum = 0.0;
            for (uint c = 0u; c < WG; c++) {
                float p = s_seg[c] >= 0 ? exp(smem[o_p + g * WG + c] - mnew) : 0.0;
                smem[o_p + g * WG + c] = p;
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
            float a = smem[o_acc + i] * s_alpha[g];
            for (uint c = 0u; c < WG; c++) {
                int sg = s_seg[c];
                if (sg < 0)
                    continue;
                a += smem[o_p + g * WG + c] * pool_load(true, uint(sg), s_row[c] + d);
            }
            smem[o_acc + i] = a;
        }
        barrier();
    }

    uint stride = D + 2u;
    for (uint i = tid; i < hw * D; i += WG) {
        uint g = i / D, d = i % D;
        uint base = ((seq * pc.n_heads + head0 + g) * pc.max_parts + part) * stride;
        b3.w[base + d] = floatBitsToUint(smem[o_acc + i]);
    }
    if (tid < hw) {
        uint base = ((seq * pc.n_heads + head0 + tid) * pc.max_parts + part) * stride;
        b3.w[base + D] = floatBitsToUint(s_m[tid]);
        b3.w[base + D + 1u] = floatBitsToUint(s_l[tid]);
    }
}
