#version 450
// Row movement, chosen by the specialisation constant OP:
// 0 embed: c[t][d] = float(table[ids[t]][d]) (wtype F32/F16/BF16), c contiguous;
// 1 gather_rows: c[r * c_stride + d] = a[idx[r] * a_stride + d] (F32).
// One workgroup row per token (y), threads over d. a = table/src, b = ids/idx, c = out.
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_OPS } pc;
#include "ops_common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint OP = 0u;

void main()
{
    uint t = gl_WorkGroupID.y;
    uint id = bb.w[pc.b_off + t];
    uint step = gl_NumWorkGroups.x * 64u;
    for (uint d = gl_GlobalInvocationID.x; d < pc.dim; d += step) {
        float v = OP == 0u ? weight_a(pc.a_off, id * pc.dim + d) : fa(pc.a_off + id * pc.a_stride + d);
        bc.w[pc.c_off + t * pc.c_stride + d] = floatBitsToUint(v);
    }
}
