#version 450
// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w. One workgroup per token; may run
// in place (each thread writes only the elements it read).
// Loop trips per invocation: 2 (ceil(dim / 64) + 1) + the sum's (7, or the
// subgroup count + 1): at most ~16,460, the host refusing dim > 524,288
// (KVRT_VK_MAX_ROW), under lavapipe's 65,535 per invocation.
// a = x, b = w, c = y.
// Built twice: portable and -DKVRT_SUBGROUP (see reduce.glsl).
#ifdef KVRT_SUBGROUP
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
layout(local_size_x = 64) in;
#include "reduce.glsl"

void main()
{
    uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    float acc = 0.0;
    for (uint i = tid; i < pc.dim; i += 64u) {
        float x = fa(pc.a_off + t * pc.a_stride + i);
        acc += x * x;
    }
    float inv = inversesqrt(wg_sum(acc, tid) / float(pc.dim) + pc.eps);
    for (uint i = tid; i < pc.dim; i += 64u)
        bc.w[pc.c_off + t * pc.c_stride + i] =
            floatBitsToUint(fa(pc.a_off + t * pc.a_stride + i) * inv * fb(pc.b_off + i));
}
