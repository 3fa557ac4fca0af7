#version 450
// out[r] = index of the largest value of row r, lowest index on ties (NaNs
// never win). One workgroup per row. a = x, c = out (int32).
// Loop trips per invocation: ceil(dim / 64) + 1 + 7: at most ~8,200, the
// host refusing dim > 524,288 (KVRT_VK_MAX_ROW), under lavapipe's 65,535.
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
layout(local_size_x = 64) in;
shared float s_v[64];
shared uint s_i[64];

void main()
{
    uint r = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    float best = 0.0;
    uint bi = 0xffffffffu;
    for (uint i = tid; i < pc.dim; i += 64u) {
        float v = fa(pc.a_off + r * pc.a_stride + i);
        if (!isnan(v) && (bi == 0xffffffffu || v > best)) {
            best = v;
            bi = i;
        }
    }
    s_v[tid] = best;
    s_i[tid] = bi;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (tid < s) {
            uint oi = s_i[tid + s];
            float ov = s_v[tid + s];
            bool take = oi != 0xffffffffu &&
                        (s_i[tid] == 0xffffffffu || ov > s_v[tid] || (ov == s_v[tid] && oi < s_i[tid]));
            if (take) {
                s_v[tid] = ov;
                s_i[tid] = oi;
            }
        }
        barrier();
    }
    if (tid == 0u)
        bc.w[pc.c_off + r] = s_i[0] == 0xffffffffu ? 0u : s_i[0];
}
