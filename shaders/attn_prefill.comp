#version 450
#ifdef KVRT_BDA // pools through buffer device addresses (built twice, see cmake/shaders.cmake)
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
#ifdef KVRT_NARROW // F16 KV through 16-bit storage (KVRT_FEATURE_FP16)
#extension GL_EXT_shader_16bit_storage : require
#endif
// Tiled prefill attention, pass 1 (split-K). A workgroup owns one (query
// tile of tile_q rows of a sequence, query head, key partition of
// part_tokens keys): key tiles of tile_k rows come through the block table
// into shared memory and an online softmax (F32) never materialises the
// score matrix. Each row leaves its partial result:
// scratch[token][head][part] = {acc[hd], m, l}; attn_prefill_merge combines
// them. Causal over cached prefix + chunk. The host dispatches at most
// maxComputeWorkGroupCount[0] query tiles at a time, the first one
// tile_base: a workgroup never takes a second tile.
//
// Dot products: each (row, key) item is split into S slices (slice s takes
// dims s, s+S, ...) when a tile has fewer items than the workgroup has
// invocations (S = 64 / (tile_q * tile_k), tiles are powers of two), so
// every invocation has a share; slice sums are then added pairwise
// (log2 S rounds). Rows of q and K/V are KS = S * odd floats apart: lanes of
// a warp (slice fastest, then key) hit distinct banks, as in attn_decode.
//
// Loop trips of one invocation (lavapipe's gallivm stops every loop of an
// invocation after 65,535 trips in total, silently: the cause of wrong
// prefill results at head_dim >= 768, whose 2-key tiles cost ~head_dim trips
// each, ~1,020 a tile, over up to 128 tiles). Counting each loop's exit as a
// trip, per key tile of BQ x BK with E = ceil(BQ * D / 64):
//   2 (ceil(BK * D / 64) + 1)         stage K, stage V
//   + n + 1 + n (ceil(D / S) + 1)     scores, n = ceil(BQ * BK * S / 64)
//   + (S > 1 ? log2 S + 1 : 0)        slice sums
//   + 2 (BK + 1)                      softmax
//   + E + 1 + E (BK + 1) + 1          accumulate, key loop
// times part_tokens / BK tiles, plus 2 (E + 1) + 4 for q and the result. The
// host evaluates this bound (vk_prefill_trips) and halves part_tokens from
// 256 until it is <= 40,000 for the chosen tiles: head_dim <= 1024 (the
// Vulkan limit, checked by the host) and any shared-memory size from 16 to
// 48 KiB stay under 40,000 with 128-key partitions or more. The context
// length only adds partitions (workgroups), never trips.
// Shared memory: the fixed arrays below (FIXED_WORDS) plus
// [BQ][KS] q | [BQ][D] acc | [BK][KS] K then V | [BQ][BK] p | [64] slice sums,
// sized by the host (vk_prefill_tiles) from SMEM_FLOATS, the device's size.
// b2 = q, b3 = scratch, b4 = seq_lens, b5 = block tables, b6 = query_start_loc.
#define KVRT_ATTN_SHADER
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_ATTN } pc;
#include "kvrt_common.glsl"

#define WG 64u
#define MAX_TILE 64u // largest tile_q and tile_k, checked by the host
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint SMEM_FLOATS = 4096u;
#define FIXED_WORDS (5u * MAX_TILE)
const uint DYN_FLOATS = SMEM_FLOATS - FIXED_WORDS;

shared float smem[DYN_FLOATS];
shared int s_seg[MAX_TILE];  // pool segment of each key of the tile, -1 when absent
shared uint s_row[MAX_TILE]; // its row in the segment (pool_row), for K and V alike
shared float s_m[MAX_TILE], s_l[MAX_TILE], s_alpha[MAX_TILE];

// Stages the tile's K (is_v false) or V rows as F32, row c at o_kv + c * KS.
// Element i of the tile is (key i / D, dim i % D); each step of WG elements
// moves on by (WG / D, WG % D): no division per element.
void stage_rows(bool is_v, uint BK, uint D, uint KS, uint o_kv)
{
    uint tid = gl_LocalInvocationID.x;
    uint c = tid / D, d = tid % D, c_step = WG / D, d_step = WG % D;
    for (uint i = tid; i < BK * D; i += WG) {
        int sg = s_seg[c];
        smem[o_kv + c * KS + d] = sg >= 0 ? pool_load(is_v, uint(sg), s_row[c] + d) : 0.0;
        c += c_step;
        d += d_step;
        if (d >= D) {
            d -= D;
            c++;
        }
    }
}

void main()
{
    uint tid = gl_LocalInvocationID.x;
    uint head = gl_WorkGroupID.y;
    uint seq = gl_WorkGroupID.z / pc.max_parts;
    uint part = gl_WorkGroupID.z % pc.max_parts;
    uint D = pc.head_dim, BQ = pc.tile_q, BK = pc.tile_k;
    uint kvh = head / (pc.n_heads / pc.n_kv_heads);
    // slices per dot product and row stride: same formulas as vk_prefill_need
    uint S = BQ * BK >= WG ? 1u : 1u << findMSB(WG / (BQ * BK));
    uint KS = S * (((D + S - 1u) / S) | 1u);
    uint o_q = 0u, o_acc = BQ * KS, o_kv = o_acc + BQ * D, o_p = o_kv + BK * KS, o_part = o_p + BQ * BK;

    uint qs = b6.w[pc.qsl_off + seq];
    uint n_new = b6.w[pc.qsl_off + seq + 1u] - qs;
    uint len = b4.w[pc.seq_lens_off + seq];
    uint q0 = (pc.tile_base + gl_WorkGroupID.x) * BQ;
    if (n_new == 0u || n_new > len || q0 >= n_new)
        return; // uniform: the whole workgroup leaves
    uint nq = min(BQ, n_new - q0);
    uint imin = len - n_new + q0, imax = imin + nq - 1u; // positions of the tile's rows
    uint kbeg = part * pc.part_tokens;
    if (kbeg > imax)
        return; // no key of this partition is causal for the tile; the merge skips it
    uint kend = min(kbeg + pc.part_tokens, imax + 1u);

    for (uint i = tid; i < BQ * D; i += WG) {
        uint r = i / D, d = i % D;
        float q = 0.0;
        if (r < nq)
            q = uintBitsToFloat(b2.w[pc.q_off + (qs + q0 + r) * pc.q_stride + head * D + d]) * pc.scale;
        smem[o_q + r * KS + d] = q;
        smem[o_acc + i] = 0.0;
    }
    if (tid < BQ) {
        s_m[tid] = KVRT_NEG;
        s_l[tid] = 0.0;
    }

    for (uint k0 = kbeg; k0 < kend; k0 += BK) {
        // skip tiles no row of this query tile can see (uniform)
        if (pc.window != 0u && k0 + BK <= imin + 1u - min(pc.window, imin + 1u) && k0 >= pc.sinks)
            continue;
        barrier(); // the previous tile's readers are done
        if (tid < BK) {
            uint j = k0 + tid;
            int sg = -1;
            uint row = 0u;
            // keys past the block table (seq_lens larger than the table) are never read
            if (j < kend && j / pc.block_size < pc.max_blocks) {
                int blk = int(b5.w[pc.bt_off + seq * pc.max_blocks + j / pc.block_size]);
                if (blk >= 0 && uint(blk) < pc.num_blocks) {
                    sg = int(uint(blk) / pc.blocks_per_seg);
                    row = pool_row(uint(blk), kvh, j % pc.block_size);
                }
            }
            s_seg[tid] = sg;
            s_row[tid] = row;
        }
        barrier();
        stage_rows(false, BK, D, KS, o_kv);
        barrier();
        for (uint i = tid; i < BQ * BK * S; i += WG) {
            uint s = i % S, c = (i / S) % BK, r = i / (S * BK);
            bool seen = r < nq && s_seg[c] >= 0 && kvrt_visible(imin + r, k0 + c);
            float acc = 0.0;
            if (seen)
                for (uint d = s; d < D; d += S)
                    acc += smem[o_q + r * KS + d] * smem[o_kv + c * KS + d];
            if (S == 1u)
                smem[o_p + r * BK + c] = seen ? acc : KVRT_NEG;
            else
                smem[o_part + i] = acc; // i < WG when S > 1
        }
        if (S > 1u) { // uniform; BQ * BK * S == WG
            for (uint w = S / 2u; w > 0u; w >>= 1) {
                barrier();
                if (tid % S < w)
                    smem[o_part + tid] += smem[o_part + tid + w];
            }
            barrier();
            if (tid < BQ * BK) {
                uint c = tid % BK, r = tid / BK;
                bool seen = r < nq && s_seg[c] >= 0 && kvrt_visible(imin + r, k0 + c);
                smem[o_p + tid] = seen ? smem[o_part + tid * S] : KVRT_NEG;
            }
        }
        barrier();
        if (tid < BQ) {
            uint r = tid;
            float mold = s_m[r];
            float mnew = mold;
            for (uint c = 0u; c < BK; c++)
                mnew = max(mnew, smem[o_p + r * BK + c]);
            float sum = 0.0;
            for (uint c = 0u; c < BK; c++) {
                float sc = smem[o_p + r * BK + c];
                float p = sc > 0.5 * KVRT_NEG ? exp(sc - mnew) : 0.0;
                smem[o_p + r * BK + c] = p;
                sum += p;
            }
            float alpha = exp(mold - mnew);
            s_alpha[r] = alpha;
            s_l[r] = s_l[r] * alpha + sum;
            s_m[r] = mnew;
        }
        stage_rows(true, BK, D, KS, o_kv); // K's last readers were the scores, before the barrier
        barrier();
        for (uint i = tid; i < BQ * D; i += WG) {
            uint r = i / D, d = i % D;
            float a = smem[o_acc + i] * s_alpha[r];
            for (uint c = 0u; c < BK; c++)
                a += smem[o_p + r * BK + c] * smem[o_kv + c * KS + d];
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
    if (tid < nq) { // nq <= BQ <= WG
        uint base = (((qs + q0 + tid) * pc.n_heads + head) * pc.max_parts + part) * stride;
        b3.w[base + D] = floatBitsToUint(s_m[tid]);
        b3.w[base + D + 1u] = floatBitsToUint(s_l[tid]);
    }
}
