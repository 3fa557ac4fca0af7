#version 450
// y[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w. One workgroup per token; may run
// in place (each thread writes only the elements it read).
// a = x, b = w, c = y.
// Built twice: the portable sum goes through shared memory; with
// -DKVRT_SUBGROUP each subgroup sums its lanes with subgroupAdd and only the
// per-subgroup partials meet in shared memory (one barrier instead of seven).
#ifdef KVRT_SUBGROUP
#extension GL_KHR_shader_subgroup_arithmetic : require
#endif
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
layout(local_size_x = 64) in;
shared float s_sum[64]; // portable: one per thread; subgroup: one per subgroup

float row_sum(float acc, uint tid)
{
#ifdef KVRT_SUBGROUP
    float part = subgroupAdd(acc);
    if (subgroupElect())
        s_sum[gl_SubgroupID] = part;
    barrier();
    // every thread adds the few partials itself: no second barrier needed
    float total = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; s++)
        total += s_sum[s];
    return total;
#else
    s_sum[tid] = acc;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (tid < s)
            s_sum[tid] += s_sum[tid + s];
        barrier();
    }
    return s_sum[0];
#endif
}

void main()
{
    uint t = gl_WorkGroupID.x, tid = gl_LocalInvocationID.x;
    float acc = 0.0;
    for (uint i = tid; i < pc.dim; i += 64u) {
        float x = fa(pc.a_off + t * pc.a_stride + i);
        acc += x * x;
    }
    float inv = inversesqrt(row_sum(acc, tid) / float(pc.dim) + pc.eps);
    for (uint i = tid; i < pc.dim; i += 64u)
        bc.w[pc.c_off + t * pc.c_stride + i] =
            floatBitsToUint(fa(pc.a_off + t * pc.a_stride + i) * inv * fb(pc.b_off + i));
}
