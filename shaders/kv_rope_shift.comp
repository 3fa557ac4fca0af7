#version 450
#ifdef KVRT_BDA // pools through buffer device addresses (built twice, see cmake/shaders.cmake)
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
// Context shift: rotates the stored keys of whole blocks (keys are stored
// after RoPE) by the pair angles of cos_sin [rot_dim/2][2]. b2 = block ids
// (int32, distinct, checked on the host), b3 = cos_sin. One invocation per
// (block, kv head, offset, pair); F16 halves are merged atomically, since
// pairs may share 32-bit words with other pairs (NeoX, odd head_dim).
// Loop trips per invocation: the grid is min(total / 64, 65,535) groups and
// total < 2^32 (host), so at most 1,025 (lavapipe stops at 65,535).
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_ROPE_SHIFT } pc;
#include "kvrt_common.glsl"
layout(local_size_x = 64) in;

float key_load(uint seg, uint e)
{
    if (pc.k_type != uint(KVRT_KV_T_F16))
        return uintBitsToFloat(kpool_get(seg, e));
    vec2 h = unpackHalf2x16(kpool_get(seg, e >> 1));
    return (e & 1u) != 0u ? h.y : h.x;
}

void key_store(uint seg, uint e, float x)
{
    if (pc.k_type != uint(KVRT_KV_T_F16)) {
        kpool_set(seg, e, floatBitsToUint(x));
        return;
    }
    uint sh = 16u * (e & 1u);
    kpool_merge(seg, e >> 1, 0xffffu << sh, f32_to_f16_rne(x) << sh);
}

void main()
{
    uint half_rot = pc.rot_dim / 2u;
    uint rows = pc.n_kv_heads * pc.block_size; // rows of one block
    uint total = pc.n_blocks * rows * half_rot;
    uint step = gl_NumWorkGroups.x * 64u;
    for (uint g = gl_GlobalInvocationID.x; g < total; g += step) {
        uint i = g % half_rot;
        uint r = (g / half_rot) % rows;
        uint bi = g / (half_rot * rows);
        int blk = int(b2.w[pc.blocks_off + bi]);
        if (blk < 0 || uint(blk) >= pc.num_blocks)
            continue;
        uint seg = uint(blk) / pc.blocks_per_seg;
        uint row = pool_row(uint(blk), r / pc.block_size, r % pc.block_size);
        uint e0 = row + (pc.neox != 0u ? i : 2u * i);
        uint e1 = row + (pc.neox != 0u ? i + half_rot : 2u * i + 1u);
        float c = uintBitsToFloat(b3.w[pc.cs_off + 2u * i]), s = uintBitsToFloat(b3.w[pc.cs_off + 2u * i + 1u]);
        float x0 = key_load(seg, e0), x1 = key_load(seg, e1);
        precise float y0 = x0 * c - x1 * s;
        precise float y1 = x0 * s + x1 * c;
        key_store(seg, e0, y0);
        key_store(seg, e1, y1);
    }
}
