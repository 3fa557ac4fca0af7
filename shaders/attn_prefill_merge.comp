#version 450
// Tiled prefill attention, pass 2: each query row merges the partial results
// of the key partitions it can see (positions 0..pos: pos / part_tokens + 1
// partitions) by their log-sum-exp. One workgroup per (tile group, head,
// sequence), rows strided like pass 1, threads over head_dim.
// b2 = scratch, b3 = out, b4 = seq_lens, b6 = query_start_loc.
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
    uint first = len - n_new;
    for (uint t = gl_WorkGroupID.x; t < n_new; t += pc.n_tile_groups) {
        uint pos = first + t;
        uint nparts = min(pos / pc.part_tokens + 1u, pc.max_parts);
        uint base = ((qs + t) * pc.n_heads + head) * pc.max_parts * stride;
        float m = KVRT_NEG;
        for (uint p = 0u; p < nparts; p++)
            m = max(m, uintBitsToFloat(b2.w[base + p * stride + D]));
        float l = 0.0;
        for (uint p = 0u; p < nparts; p++)
            l += uintBitsToFloat(b2.w[base + p * stride + D + 1u]) *
                 exp(uintBitsToFloat(b2.w[base + p * stride + D]) - m);
        float inv = l > 0.0 ? 1.0 / l : 0.0;
        for (uint d = gl_LocalInvocationID.x; d < D; d += 64u) {
            float a = 0.0;
            for (uint p = 0u; p < nparts; p++)
                a += uintBitsToFloat(b2.w[base + p * stride + d]) *
                     exp(uintBitsToFloat(b2.w[base + p * stride + D]) - m);
            b3.w[pc.o_off + (qs + t) * pc.o_stride + head * D + d] = floatBitsToUint(a * inv);
        }
    }
}
