#version 450
#ifdef KVRT_BDA // tables spanning segments through buffer device addresses
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
// Row movement, chosen by the specialisation constant OP:
// 0 embed: c[t][d] = float(table[ids[t]][d]) (any weight type), c contiguous;
// 1 gather_rows: c[r * c_stride + d] = a[idx[r] * a_stride + d] (F32).
// One workgroup row per token (y), threads over d. a = table/src (see
// weights.glsl), b = ids/idx, c = out. A token whose row lies outside
// [row_lo, row_hi) belongs to another dispatch (descriptor path).
// Loop trips per invocation: the host's grid (vk_groups_capped) leaves at
// most 1,024 elements of a row to an invocation (lavapipe stops at 65,535).
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
#include "weights.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint OP = 0u;

void main()
{
    uint t = gl_WorkGroupID.y;
    uint id = bb.w[pc.b_off + t];
    if (id < pc.row_lo || id >= pc.row_hi)
        return;
    uint rb = OP == 0u ? id * w_row_bytes(pc.dim) : id * pc.a_stride * 4u;
    a_window(pc.a_off + (rb >> 2));
    uint step = gl_NumWorkGroups.x * 64u;
    for (uint d = gl_GlobalInvocationID.x; d < pc.dim; d += step) {
        float v = OP == 0u ? w_elem(rb, d) : uintBitsToFloat(a_word(pc.a_off + (rb >> 2) + d));
        bc.w[pc.c_off + t * pc.c_stride + d] = floatBitsToUint(v);
    }
}
