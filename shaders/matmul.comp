#version 450
// y[t][o] = sum_i W[o][i] x[t][i] (GEMV per token). One workgroup per
// (output row, token), striding over rows when there are more than workgroups; 64 threads split the row, F32 partial sums, tree reduction.
// a = W [n_out][n_in] (F32/F16/BF16), b = x, c = y.
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
layout(local_size_x = 64) in;
shared float s_sum[64];

void main()
{
    uint t = gl_WorkGroupID.y, tid = gl_LocalInvocationID.x;
    uint n = pc.dim;
    for (uint o = gl_WorkGroupID.x; o < pc.n_out; o += gl_NumWorkGroups.x) {
        float acc = 0.0;
        for (uint i = tid; i < n; i += 64u)
            acc += weight_a(pc.a_off, o * n + i) * fb(pc.b_off + t * pc.b_stride + i);
        s_sum[tid] = acc;
        barrier();
        for (uint s = 32u; s > 0u; s >>= 1) {
            if (tid < s)
                s_sum[tid] += s_sum[tid + s];
            barrier();
        }
        if (tid == 0u)
            bc.w[pc.c_off + t * pc.c_stride + o] = floatBitsToUint(s_sum[0]);
        barrier();
    }
}
