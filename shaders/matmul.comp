#version 450
#ifdef KVRT_BDA // weights spanning segments through buffer device addresses
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
#ifdef KVRT_SUBGROUP // row sums with subgroup arithmetic (see reduce.glsl)
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
// y[t][o] = sum_i W[o][i] x[t][i] (GEMV per token). One workgroup per
// (output row, token), striding over the rows [row_lo, row_hi) of this
// dispatch; 64 threads split the row (quant types: one 32-element block per
// thread step), F32 partial sums, one workgroup reduction (reduce.glsl).
// a = W [n_out][n_in] (see weights.glsl), b = x, c = y.
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
#include "weights.glsl"
layout(local_size_x = 64) in;
#include "reduce.glsl"

void main()
{
    uint t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint n = pc.dim, xb = pc.b_off + t * pc.b_stride;
    uint rbytes = w_row_bytes(n);
    for (uint o = pc.row_lo + gl_WorkGroupID.x; o < pc.row_hi; o += gl_NumWorkGroups.x) {
        uint rb = o * rbytes;
        a_window(pc.a_off + (rb >> 2));
        float acc = 0.0;
        if (pc.wtype >= 3u) {
            for (uint k = tid; k < n / 32u; k += 64u)
                acc += w_block_dot(rb, k, xb + k * 32u);
        } else {
            for (uint i = tid; i < n; i += 64u)
                acc += w_elem(rb, i) * fb(xb + i);
        }
        float sum = wg_sum(acc, tid);
        if (tid == 0u)
            bc.w[pc.c_off + t * pc.c_stride + o] = floatBitsToUint(sum);
        barrier();
    }
}
