#version 450
#extension GL_EXT_control_flow_attributes : enable
#ifdef KVRT_BDA // weights spanning segments through buffer device addresses
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
// y[t][o] = sum_i W[o][i] x[t][i] for many tokens (prefill): one workgroup
// of 128 invocations computes a tile of TR = 64 output rows x TT = 32 tokens,
// striding over the row tiles of [row_lo, row_hi). Per step of TK = 32
// inputs (one quant block) it dequantizes the 64 x 32 weight tile and loads
// the 32 x 32 activation tile into shared memory (as vec4s), then each
// invocation accumulates a 4 rows x 4 tokens register micro-tile in F32.
// Each weight is read and dequantized once per 32 tokens instead of once
// per token (matmul.comp). Same push constants and weight addressing
// (weights.glsl) as matmul.comp; each invocation loads one weight row, so it
// selects that row's segment window once per row tile.
// Shared memory: (64 + 32) x 36 floats = 13.5 KiB, under the 16 KiB every
// Vulkan device has. Loop trips per invocation: row tiles x (n_in / 32 x c
// + 2) + 1, c = 1 for codes 0..4 (the inner loops have constant trip counts
// and are unrolled) and 19 for codes 5..14 (load_w8's two 8-element w_elem
// loops, not unrolled: 2 x 9 + 1). The host refuses n_in > 524,288
// (KVRT_VK_MAX_ROW) and more than 2^24 output rows; with the grid capped at
// 65,535 groups and weights under 2^32 bytes, row tiles x n_in / 32 <=
// n_in / 32 + 256: codes 0..4 take at most ~16,700 trips; for codes 5..14
// the host evaluates the bound (vk_tiled_trips) and refuses a call over
// 40,000 (n_in above ~67,000), under lavapipe's 65,535 per invocation.
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
#include "weights.glsl"

#define TR 64u // output rows per tile
#define TT 32u // tokens per tile
#define TK 32u // inputs per step
#define LD 9u // vec4s per shared row, padded so the micro-kernel's reads spread over banks
layout(local_size_x = 128) in; // 16 row lanes x 8 token lanes, 4 x 4 outputs each
shared vec4 s_w[TR * LD]; // [row][k / 4]
shared vec4 s_x[TT * LD]; // [token][k / 4]

// Elements k0 + 8 * part .. + 7 of the row at view byte rb (zero past n).
void load_w8(uint rb, uint k0, uint part, uint n, out float v[8])
{
    uint wt = pc.wtype;
    if (wt == 3u || wt == 4u) {
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
    if (wt <= 2u) { // F32, F16, BF16: unrolled (no trips)
        [[unroll]] for (uint i = 0u; i < 8u; i++) {
            uint j = k0 + 8u * part + i;
            v[i] = j >= n ? 0.0
                 : wt == 0u ? uintBitsToFloat(a_word(pc.a_off + (rb >> 2) + j))
                 : wt == 1u ? unpackHalf2x16(a_u16(rb + 2u * j)).x
                            : uintBitsToFloat(a_u16(rb + 2u * j) << 16);
        }
        return;
    }
    // one call site: w_elem of the types decoded element by element is long
    [[dont_unroll]] for (uint i = 0u; i < 8u; i++) {
        uint j = k0 + 8u * part + i;
        v[i] = j < n ? w_elem(rb, j) : 0.0;
    }
}

// x[j .. j + 3] of one token row; zeros past n and for tokens past the batch.
vec4 load_x4(uint xb, uint j, bool x_ok, uint n)
{
    if (x_ok && j + 3u < n)
        return vec4(fb(xb + j), fb(xb + j + 1u), fb(xb + j + 2u), fb(xb + j + 3u));
    vec4 v = vec4(0.0);
    if (x_ok)
        [[unroll]] for (uint i = 0u; i < 4u; i++)
            v[i] = j + i < n ? fb(xb + j + i) : 0.0;
    return v;
}

void main()
{
    uint tid = gl_LocalInvocationID.x;
    uint n = pc.dim, rbytes = w_row_bytes(n);
    uint t0 = gl_WorkGroupID.y * TT;
    // loaders: weight row lr, elements 16 * lh ..; token xt, elements 8 * xh ..
    uint lr = tid >> 1, lh = tid & 1u;
    uint xt = tid >> 2, xh = tid & 3u;
    // micro-tile: rows tx + 16 i, tokens ty + 8 j
    uint tx = tid & 15u, ty = tid >> 4;
    bool x_ok = t0 + xt < pc.n_tokens;
    uint xb = pc.b_off + (t0 + xt) * pc.b_stride;
    for (uint r0 = pc.row_lo + gl_WorkGroupID.x * TR; r0 < pc.row_hi; r0 += gl_NumWorkGroups.x * TR) {
        uint lo = r0 + lr;
        bool w_ok = lo < pc.row_hi;
        uint rb = lo * rbytes;
        if (w_ok) // the window of the one row this invocation loads
            a_window(pc.a_off + (rb >> 2));
        float acc[4][4];
        [[unroll]] for (uint i = 0u; i < 4u; i++)
            acc[i] = float[4](0.0, 0.0, 0.0, 0.0);
        for (uint k0 = 0u; k0 < n; k0 += TK) {
            [[unroll]] for (uint q = 0u; q < 2u; q++) {
                float v[8] = float[8](0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
                if (w_ok)
                    load_w8(rb, k0, 2u * lh + q, n, v);
                s_w[lr * LD + 4u * lh + 2u * q] = vec4(v[0], v[1], v[2], v[3]);
                s_w[lr * LD + 4u * lh + 2u * q + 1u] = vec4(v[4], v[5], v[6], v[7]);
                s_x[xt * LD + 2u * xh + q] = load_x4(xb, k0 + 8u * xh + 4u * q, x_ok, n);
            }
            barrier();
            // the step's sums first, then into acc: rounding of long rows grows
            // with the n / 32 additions to acc, not with n / 4
            float st[4][4];
            [[unroll]] for (uint i = 0u; i < 4u; i++)
                st[i] = float[4](0.0, 0.0, 0.0, 0.0);
            [[unroll]] for (uint k = 0u; k < TK / 4u; k++) {
                vec4 x[4];
                [[unroll]] for (uint j = 0u; j < 4u; j++)
                    x[j] = s_x[(ty + 8u * j) * LD + k];
                [[unroll]] for (uint i = 0u; i < 4u; i++) {
                    vec4 w = s_w[(tx + 16u * i) * LD + k];
                    [[unroll]] for (uint j = 0u; j < 4u; j++)
                        st[i][j] += dot(w, x[j]);
                }
            }
            [[unroll]] for (uint i = 0u; i < 4u; i++)
                [[unroll]] for (uint j = 0u; j < 4u; j++)
                    acc[i][j] += st[i][j];
            barrier();
        }
        [[unroll]] for (uint j = 0u; j < 4u; j++) {
            uint t = t0 + ty + 8u * j;
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
