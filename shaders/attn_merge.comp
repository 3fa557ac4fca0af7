#version 450
// Paged decode attention, pass 2: merges a (sequence, query head)'s partial
// results by their log-sum-exp. The partition count follows from the
// sequence's own length only, so results do not depend on the batch.
// b2 = lse (when pc.lse_on), b3 = out, b4 = seq_lens, b6 = scratch. One workgroup per (head, seq).
// Loop trips of one invocation (lavapipe stops an invocation's loops after
// 65,535 in total): with P = max_parts and E = ceil(head_dim / 64),
// 2 (P + 1) + E + 1 + E (P + 1); the host refuses tables that would take it
// past 40,000 (vk_merge_max_parts), e.g. 2,220 partitions at head_dim 1024.
#define KVRT_ATTN_SHADER
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_ATTN } pc;
#include "kvrt_common.glsl"
layout(local_size_x = 64) in;

void main()
{
    uint head = gl_WorkGroupID.x;
    uint seq = gl_WorkGroupID.y;
    uint D = pc.head_dim;
    uint stride = D + 2u;
    uint len = b4.w[pc.seq_lens_off + seq];
    uint nparts = min((len + pc.part_tokens - 1u) / pc.part_tokens, pc.max_parts);
    uint base = (seq * pc.n_heads + head) * pc.max_parts * stride;
    float m = KVRT_NEG;
    for (uint p = 0u; p < nparts; p++)
        m = max(m, uintBitsToFloat(b6.w[base + p * stride + D]));
    float l = 0.0;
    for (uint p = 0u; p < nparts; p++)
        l += uintBitsToFloat(b6.w[base + p * stride + D + 1u]) *
             exp(uintBitsToFloat(b6.w[base + p * stride + D]) - m);
    float inv = l > 0.0 ? 1.0 / l : 0.0;
    // The row's log-sum-exp, for a caller that merges it with other key
    // ranges (the host tier of issue 18); -inf when it saw no key.
    if (pc.lse_on != 0u && gl_LocalInvocationID.x == 0u)
        b2.w[pc.lse_off + seq * pc.n_heads + head] = l > 0.0 ? floatBitsToUint(m + log(l)) : 0xff800000u;
    for (uint d = gl_LocalInvocationID.x; d < D; d += 64u) {
        float a = 0.0;
        for (uint p = 0u; p < nparts; p++)
            a += uintBitsToFloat(b6.w[base + p * stride + d]) *
                 exp(uintBitsToFloat(b6.w[base + p * stride + D]) - m);
        b3.w[pc.o_off + seq * pc.o_stride + head * D + d] = floatBitsToUint(a * inv);
    }
}
