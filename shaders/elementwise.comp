#version 450
// Element-wise ops, chosen by the specialisation constant OP:
// 0 add: c[i] = a[i] + b[i], i < n_out (contiguous; c may alias a or b);
// 1 swiglu: c[t][i] = silu(a[t][i]) * b[t][i], rows of dim with strides;
// 2 bias: c[t][i] = a[t][i] + b[i] (b_stride 0), rows of dim with strides.
// Loop trips per invocation: the host's grid (vk_groups, vk_groups_capped)
// leaves at most 1,024 elements to an invocation for any size below 2^32
// (lavapipe stops an invocation's loops at 65,535).
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint OP = 0u;

void main()
{
    uint step = gl_NumWorkGroups.x * 64u;
    if (OP == 0u) {
        for (uint i = gl_GlobalInvocationID.x; i < pc.n_out; i += step)
            bc.w[pc.c_off + i] = floatBitsToUint(fa(pc.a_off + i) + fb(pc.b_off + i));
    } else {
        uint t = gl_WorkGroupID.y;
        for (uint i = gl_GlobalInvocationID.x; i < pc.dim; i += step) {
            float g = fa(pc.a_off + t * pc.a_stride + i);
            float u = fb(pc.b_off + t * pc.b_stride + i);
            bc.w[pc.c_off + t * pc.c_stride + i] = floatBitsToUint(OP == 1u ? g / (1.0 + exp(-g)) * u : g + u);
        }
    }
}
