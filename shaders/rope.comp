#version 450
// Rotates x in place by the host's cos/sin table: cos_sin[pos][rot_dim/2][2].
// neox 0: adjacent pairs (2i, 2i+1); 1: halves (i, i + rot_dim/2).
// One invocation per (token, head, pair). Positions outside the table leave
// the row as it is (the caller validates positions).
// Loop trips per invocation: the grid is min(total / 64, 65,535) groups and
// total < 2^32 (host), so at most 1,025 (lavapipe stops at 65,535).
// a = x, b = positions, c = cos_sin.
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
layout(local_size_x = 64) in;

void main()
{
    uint half_rot = pc.rot_dim / 2u;
    uint total = pc.n_tokens * pc.n_heads * half_rot;
    uint step = gl_NumWorkGroups.x * 64u;
    for (uint g = gl_GlobalInvocationID.x; g < total; g += step) {
        uint i = g % half_rot;
        uint h = (g / half_rot) % pc.n_heads;
        uint t = g / (half_rot * pc.n_heads);
        int pos = int(bb.w[pc.b_off + t]);
        if (pos < 0 || uint(pos) >= pc.max_pos)
            continue;
        uint cs = pc.c_off + (uint(pos) * half_rot + i) * 2u;
        float c = uintBitsToFloat(bc.w[cs]), s = uintBitsToFloat(bc.w[cs + 1u]);
        uint base = pc.a_off + t * pc.a_stride + h * pc.head_dim;
        uint i0 = pc.neox != 0u ? i : 2u * i;
        uint i1 = pc.neox != 0u ? i + half_rot : 2u * i + 1u;
        float x0 = fa(base + i0), x1 = fa(base + i1);
        ba.w[base + i0] = floatBitsToUint(x0 * c - x1 * s);
        ba.w[base + i1] = floatBitsToUint(x0 * s + x1 * c);
    }
}
