#version 450
#extension GL_EXT_control_flow_attributes : enable
#ifdef KVRT_BDA // weights spanning segments through buffer device addresses
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
// y[t][o] = sum_i W[o][i] x[t][i] for many tokens (prefill): one workgroup
// computes a tile of TR output rows x TT tokens, striding over the row tiles
// of [row_lo, row_hi). Per step of TK = 32 inputs (one quant block) the
// workgroup dequantizes the TR x TK weight tile and loads the TT x TK
// activation tile into shared memory, then each invocation accumulates a
// 4 rows x 2 tokens register micro-tile in F32. Each weight is thus read and
// dequantized once per TT tokens instead of once per token (matmul.comp).
// Same push constants and weight addressing (weights.glsl) as matmul.comp.
// Shared memory: (TR + TT) x 33 floats = 12.4 KiB, under the 16 KiB every
// Vulkan device has. Loop trips per invocation: row tiles (1 unless the grid
// is capped) x n_in / 32 steps; the inner loops have constant trip counts and
// are unrolled, which keeps lavapipe's 65,535-iteration loop limit out of
// reach for n_in up to ~2M.
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
#include "weights.glsl"

#define TR 64u // output rows per tile
#define TT 32u // tokens per tile
#define TK 32u // inputs per step
#define LD 33u // padded shared row: the micro-kernel's column reads hit distinct banks
layout(local_size_x = 256) in;
shared float s_w[TR * LD]; // [row][k]
shared float s_x[TT * LD]; // [token][k]

// Elements k0 + 8 * part .. + 7 of the row at view byte rb (zero past n).
void load_w8(uint rb, uint k0, uint part, uint n, out float v[8])
{
    uint wt = pc.wtype;
    if (wt >= 3u) {
        bool q8 = wt == 3u;
        uint b = rb + (k0 / 32u) * (q8 ? 34u : 18u);
        float d = unpackHalf2x16(a_u16(b)).x;
        // Q8_0: bytes 8 * part ..; Q4_0: elements 0..15 are the low nibbles
        // of bytes 0..15, 16..31 the high nibbles
        uint q0 = b + 2u + (q8 ? 8u * part : 8u * (part & 1u));
        uint w[2];
        w[0] = a_u32_at(q0);
        w[1] = a_u32_at(q0 + 4u);
        uint sh = 4u * (part >> 1);
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            uint byte = (w[i >> 2] >> (8u * (i & 3u))) & 0xffu;
            v[i] = q8 ? float(int(byte << 24) >> 24) * d : float(int((byte >> sh) & 15u) - 8) * d;
        }
        return;
    }
    [[unroll]] for (uint i = 0u; i < 8u; i++) {
        uint j = k0 + 8u * part + i;
        v[i] = j < n ? w_elem(rb, j) : 0.0;
    }
}

void main()
{
    uint tid = gl_LocalInvocationID.x;
    uint n = pc.dim, rbytes = w_row_bytes(n);
    uint t0 = gl_WorkGroupID.y * TT;
    // loaders: weight row lr, elements 8 * lp ..; token xt, elements 4 * xp ..
    uint lr = tid >> 2, lp = tid & 3u;
    uint xt = tid >> 3, xp = tid & 7u;
    // micro-tile: rows tx + 16 i, tokens ty + 16 j
    uint tx = tid & 15u, ty = tid >> 4;
    bool x_ok = t0 + xt < pc.n_tokens;
    uint xb = pc.b_off + (t0 + xt) * pc.b_stride;
    for (uint r0 = pc.row_lo + gl_WorkGroupID.x * TR; r0 < pc.row_hi; r0 += gl_NumWorkGroups.x * TR) {
        uint lo = r0 + lr;
        bool w_ok = lo < pc.row_hi;
        uint rb = lo * rbytes;
        if (w_ok)
            a_window(pc.a_off + (rb >> 2));
        float acc[4][2];
        [[unroll]] for (uint i = 0u; i < 4u; i++)
            acc[i][0] = acc[i][1] = 0.0;
        for (uint k0 = 0u; k0 < n; k0 += TK) {
            float v[8];
            if (w_ok)
                load_w8(rb, k0, lp, n, v);
            [[unroll]] for (uint i = 0u; i < 8u; i++)
                s_w[lr * LD + 8u * lp + i] = w_ok ? v[i] : 0.0;
            [[unroll]] for (uint i = 0u; i < 4u; i++) {
                uint j = k0 + 4u * xp + i;
                s_x[xt * LD + 4u * xp + i] = x_ok && j < n ? fb(xb + j) : 0.0;
            }
            barrier();
            [[unroll]] for (uint k = 0u; k < TK; k++) {
                float x0 = s_x[ty * LD + k], x1 = s_x[(ty + 16u) * LD + k];
                [[unroll]] for (uint i = 0u; i < 4u; i++) {
                    float w = s_w[(tx + 16u * i) * LD + k];
                    acc[i][0] += w * x0;
                    acc[i][1] += w * x1;
                }
            }
            barrier();
        }
        [[unroll]] for (uint j = 0u; j < 2u; j++) {
            uint t = t0 + ty + 16u * j;
            if (t >= pc.n_tokens)
                continue;
            [[unroll]] for (uint i = 0u; i < 4u; i++) {
                uint o = r0 + tx + 16u * i;
                if (o < pc.row_hi)
                    bc.w[pc.c_off + t * pc.c_stride + o] = floatBitsToUint(acc[i][j]);
            }
        }
    }
}
