#version 450
// Tiled prefill attention, pass 2: each query row merges the partial results
// of the key partitions it can see (positions 0..pos: pos / part_tokens + 1
// partitions, at most max_parts) by their log-sum-exp. One workgroup per
// (query row tile_base + x, head, sequence), threads over head_dim; the host
// dispatches at most maxComputeWorkGroupCount[0] rows at a time.
// Loop trips of one invocation (lavapipe stops an invocation's loops after
// 65,535 in total): with P = max_parts and E = ceil(head_dim / 64),
// 2 (P + 1) + E + 1 + E (P + 1); the host refuses tables that would take it
// past 40,000 (vk_merge_max_parts), e.g. 2,220 partitions at head_dim 1024.
// b2 = scratch, b3 = out, b4 = seq_lens, b5 = lse (when pc.lse_on), b6 = query_start_loc.
#define KVRT_ATTN_SHADER
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_ATTN } pc;
#include "kvrt_common.glsl"
layout(local_size_x = 64) in;

void main()
{
    uint head = gl_WorkGroupID.y, seq = gl_WorkGroupID.z;
    uint D = pc.head_dim, stride = D + 2u;
    uint qs = b6.w[pc.qsl_off + seq];
    uint n_new = b6.w[pc.qsl_off + seq + 1u] - qs;
    uint len = b4.w[pc.seq_lens_off + seq];
    if (n_new == 0u || n_new > len)
        return;
    uint t = pc.tile_base + gl_WorkGroupID.x;
    if (t >= n_new)
        return;
    uint pos = len - n_new + t;
    uint nparts = min(pos / pc.part_tokens + 1u, pc.max_parts);
    uint base = ((qs + t) * pc.n_heads + head) * pc.max_parts * stride;
    float m = KVRT_NEG;
    for (uint p = 0u; p < nparts; p++)
        m = max(m, uintBitsToFloat(b2.w[base + p * stride + D]));
    float l = 0.0;
    for (uint p = 0u; p < nparts; p++)
        l += uintBitsToFloat(b2.w[base + p * stride + D + 1u]) * exp(uintBitsToFloat(b2.w[base + p * stride + D]) - m);
    float inv = l > 0.0 ? 1.0 / l : 0.0;
    // The row's log-sum-exp, for a caller that merges it with other key
    // ranges (the host tier of issue 18); -inf when it saw no key.
    if (pc.lse_on != 0u && gl_LocalInvocationID.x == 0u)
        b5.w[pc.lse_off + (qs + t) * pc.n_heads + head] = l > 0.0 ? floatBitsToUint(m + log(l)) : 0xff800000u;
    for (uint d = gl_LocalInvocationID.x; d < D; d += 64u) {
        float a = 0.0;
        for (uint p = 0u; p < nparts; p++)
            a += uintBitsToFloat(b2.w[base + p * stride + d]) * exp(uintBitsToFloat(b2.w[base + p * stride + D]) - m);
        b3.w[pc.o_off + (qs + t) * pc.o_stride + head * D + d] = floatBitsToUint(a * inv);
    }
}
