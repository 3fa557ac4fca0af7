#version 450
#extension GL_EXT_control_flow_attributes : enable
#ifdef KVRT_BDA // weights spanning segments through buffer device addresses
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
#ifdef KVRT_SUBGROUP // row sums with subgroup arithmetic
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
// y[t][o] = sum_i W[o][i] x[t][i] for few tokens (decode GEMV).
// A workgroup of 64 invocations handles R rows at once, L = 64 / R lanes per
// row, and TT = 4 tokens (gl_WorkGroupID.y picks the token chunk): each
// weight is read once for all tokens of the chunk, F32 sums per token.
// Lanes of a row stride over it so that neighbouring lanes read
// neighbouring words (F32, and F16/BF16 pairs, 4 strides per step) or
// neighbouring 32-element quant blocks (Q8_0: 9 words, Q4_0: 5 words each,
// loaded once and decoded in registers; the other quant types element by
// element through w_elem, weights.glsl).
//   portable: L from the row length (gemv_lanes; kvrt_vk_matmul sizes the
//     grid with the same rule), per-row sums through shared memory (one
//     barrier per round of R rows);
//   KVRT_SUBGROUP: one subgroup per row (L = subgroup size, R = subgroups
//     per workgroup), sums with subgroupAdd, no shared memory, no barriers.
// Workgroups stride over the rows [row_lo, row_hi) of this dispatch. Loop
// trips per invocation (lavapipe stops an invocation's loops after 65,535
// in total): row rounds x (steps + L + 3), steps = n / (32 L) blocks or
// n / (4 L) words (n / (8 L) F16/BF16); inner loops are unrolled, except
// the 32-element loop of codes 5..14 (w_elem), whose steps count 34 trips
// each. The host refuses rows whose lane takes more than 16,384 steps so
// counted (KVRT_VK_GEMV_STEPS; n 524,288 F32 with lavapipe's 8-lane
// subgroups, ~123,000 for codes 5..14) and more than 2^24 output rows; with
// the grid capped at 65,535 groups and weights under 2^32 bytes, rounds x
// steps <= steps + ~3,400 and rounds x (L + 3) <= ~16,700: at most ~37,000
// trips.
// a = W [n_out][n_in] (see weights.glsl), b = x, c = y.
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
#include "weights.glsl"
layout(local_size_x = 64) in;

#define TT 4u // tokens per workgroup

// Lanes per row (portable build): a power of two in [4, 64] giving each
// lane about three steps of the row (a quant block or 4 strided words).
uint gemv_lanes(uint n)
{
    uint steps = pc.wtype >= 3u ? n / 32u : (pc.wtype == 0u ? n / 4u : n / 8u);
    uint l = 4u;
    while (l < 64u && 3u * l < steps)
        l *= 2u;
    return l;
}

// Q8_0 block at view byte b (even): 34 bytes = the 9 words from b / 4 on;
// when b % 4 == 0 the int8s start mid-word and are realigned.
void dot_q8(uint b, uint xi, uint nt, uint xb[TT], inout float acc[TT])
{
    uint g = pc.a_off + (b >> 2);
    uint v[9];
    [[unroll]] for (uint j = 0u; j < 9u; j++)
        v[j] = a_word(g + j);
    bool hi = (b & 2u) != 0u;
    float d = unpackHalf2x16(hi ? v[0] >> 16 : v[0]).x;
    float q[32];
    [[unroll]] for (uint i = 0u; i < 8u; i++) {
        uint w = hi ? v[i + 1u] : (v[i] >> 16) | (v[i + 1u] << 16);
        [[unroll]] for (uint k = 0u; k < 4u; k++)
            q[4u * i + k] = float(int(w << (24u - 8u * k)) >> 24);
    }
    [[unroll]] for (uint t = 0u; t < TT; t++) {
        if (t < nt) {
            float s = 0.0;
            [[unroll]] for (uint j = 0u; j < 32u; j++)
                s += q[j] * fb(xb[t] + xi + j);
            acc[t] += s * d;
        }
    }
}

// Q4_0 block at view byte b (even): 18 bytes = the 5 words from b / 4 on.
void dot_q4(uint b, uint xi, uint nt, uint xb[TT], inout float acc[TT])
{
    uint g = pc.a_off + (b >> 2);
    uint v[5];
    [[unroll]] for (uint j = 0u; j < 5u; j++)
        v[j] = a_word(g + j);
    bool hi = (b & 2u) != 0u;
    float d = unpackHalf2x16(hi ? v[0] >> 16 : v[0]).x;
    float q[32];
    [[unroll]] for (uint i = 0u; i < 4u; i++) {
        uint w = hi ? v[i + 1u] : (v[i] >> 16) | (v[i + 1u] << 16);
        [[unroll]] for (uint k = 0u; k < 4u; k++) {
            uint byte = (w >> (8u * k)) & 0xffu;
            q[4u * i + k] = float(int(byte & 15u) - 8);
            q[16u + 4u * i + k] = float(int(byte >> 4) - 8);
        }
    }
    [[unroll]] for (uint t = 0u; t < TT; t++) {
        if (t < nt) {
            float s = 0.0;
            [[unroll]] for (uint j = 0u; j < 32u; j++)
                s += q[j] * fb(xb[t] + xi + j);
            acc[t] += s * d;
        }
    }
}

// Partial sums of lane `lane` of L over the row at view byte rb, per token.
void row_partial(uint rb, uint lane, uint L, uint nt, uint xb[TT], inout float acc[TT])
{
    uint n = pc.dim, wt = pc.wtype;
    if (wt >= 5u) {
        // the types of issue #14: 32-value steps decoded element by element
        for (uint k = lane; k < n / 32u; k += L) {
            float part[TT] = float[TT](0.0, 0.0, 0.0, 0.0);
            for (uint j = k * 32u; j < k * 32u + 32u; j++) {
                float w = w_elem(rb, j);
                [[unroll]] for (uint t = 0u; t < TT; t++)
                    if (t < nt)
                        part[t] += w * fb(xb[t] + j);
            }
            [[unroll]] for (uint t = 0u; t < TT; t++)
                acc[t] += part[t];
        }
        return;
    }
    if (wt >= 3u) {
        uint bs = wt == 3u ? 34u : 18u;
        for (uint k = lane; k < n / 32u; k += L) {
            if (wt == 3u)
                dot_q8(rb + k * bs, k * 32u, nt, xb, acc);
            else
                dot_q4(rb + k * bs, k * 32u, nt, xb, acc);
        }
        return;
    }
    if (wt == 0u) {
        uint g = pc.a_off + (rb >> 2);
        for (uint j0 = lane; j0 < n; j0 += 4u * L) {
            [[unroll]] for (uint s = 0u; s < 4u; s++) {
                uint j = j0 + s * L;
                if (j < n) {
                    float w = uintBitsToFloat(a_word(g + j));
                    [[unroll]] for (uint t = 0u; t < TT; t++)
                        if (t < nt)
                            acc[t] += w * fb(xb[t] + j);
                }
            }
        }
        return;
    }
    // F16 / BF16: pairs of elements, one (possibly realigned) word each
    uint np = n / 2u;
    for (uint p0 = lane; p0 < np; p0 += 4u * L) {
        [[unroll]] for (uint s = 0u; s < 4u; s++) {
            uint p = p0 + s * L;
            if (p < np) {
                uint w = a_u32_at(rb + 4u * p);
                vec2 f = wt == 1u ? unpackHalf2x16(w) : vec2(uintBitsToFloat(w << 16), uintBitsToFloat(w & 0xffff0000u));
                [[unroll]] for (uint t = 0u; t < TT; t++)
                    if (t < nt)
                        acc[t] += f.x * fb(xb[t] + 2u * p) + f.y * fb(xb[t] + 2u * p + 1u);
            }
        }
    }
    if ((n & 1u) != 0u && lane == 0u) {
        float w = w_elem(rb, n - 1u);
        [[unroll]] for (uint t = 0u; t < TT; t++)
            if (t < nt)
                acc[t] += w * fb(xb[t] + n - 1u);
    }
}

#ifndef KVRT_SUBGROUP
shared float s_part[TT * 64u]; // [token][invocation]
#endif

void main()
{
    uint t0 = gl_WorkGroupID.y * TT;
    uint nt = min(TT, pc.n_tokens - t0);
    uint xb[TT];
    [[unroll]] for (uint t = 0u; t < TT; t++)
        xb[t] = pc.b_off + (t0 + t) * pc.b_stride;
    uint rbytes = w_row_bytes(pc.dim);
#ifdef KVRT_SUBGROUP
    // lanes counted rather than taken from gl_SubgroupSize: a partial
    // subgroup still covers its row
    uint lane = subgroupExclusiveAdd(1u), L = subgroupAdd(1u);
    uint R = gl_NumSubgroups;
    for (uint o = pc.row_lo + gl_WorkGroupID.x * R + gl_SubgroupID; o < pc.row_hi; o += gl_NumWorkGroups.x * R) {
        uint rb = o * rbytes;
        a_window(pc.a_off + (rb >> 2));
        float acc[TT] = float[TT](0.0, 0.0, 0.0, 0.0);
        row_partial(rb, lane, L, nt, xb, acc);
        [[unroll]] for (uint t = 0u; t < TT; t++) {
            float sum = subgroupAdd(acc[t]);
            if (lane == 0u && t < nt)
                bc.w[pc.c_off + (t0 + t) * pc.c_stride + o] = floatBitsToUint(sum);
        }
    }
#else
    uint tid = gl_LocalInvocationID.x;
    uint L = gemv_lanes(pc.dim), R = 64u / L;
    uint slot = tid / L, lane = tid % L;
    // every invocation runs every round (barriers), rows past the end idle
    for (uint base = pc.row_lo + gl_WorkGroupID.x * R; base < pc.row_hi; base += gl_NumWorkGroups.x * R) {
        uint o = base + slot;
        float acc[TT] = float[TT](0.0, 0.0, 0.0, 0.0);
        if (o < pc.row_hi) {
            uint rb = o * rbytes;
            a_window(pc.a_off + (rb >> 2));
            row_partial(rb, lane, L, nt, xb, acc);
        }
        [[unroll]] for (uint t = 0u; t < TT; t++)
            s_part[t * 64u + tid] = acc[t];
        barrier();
        // lane t of the row sums token t (L >= 4 = TT)
        if (o < pc.row_hi && lane < nt) {
            float sum = 0.0;
            for (uint j = 0u; j < L; j++)
                sum += s_part[lane * 64u + slot * L + j];
            bc.w[pc.c_off + (t0 + lane) * pc.c_stride + o] = floatBitsToUint(sum);
        }
        barrier();
    }
#endif
}
