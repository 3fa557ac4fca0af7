#version 450
#ifdef KVRT_BDA // pools through buffer device addresses (built twice, see cmake/shaders.cmake)
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
#ifdef KVRT_NARROW // F16 KV through 16-bit storage (KVRT_FEATURE_FP16)
#extension GL_EXT_shader_16bit_storage : require
#endif
// Writes token K/V rows into the pools at their slots (slot < 0: padding).
// b2 = k, b3 = v, b4 = slot_mapping. One invocation per (token, kv head, word or element).
// Loop trips per invocation: the grid is min(total / 64, 65,535) groups and
// total < 2^32 (host), so at most 1,025 (lavapipe stops at 65,535).
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_KV_WRITE } pc;
#include "kvrt_common.glsl"
layout(local_size_x = 64) in;

void main()
{
    // F16 rows of even length are whole words; odd ones share words between
    // rows, so each element merges its half atomically (KVRT_NARROW: stores
    // its half alone)
    bool pairs = pc.f16 != 0u && (pc.head_dim & 1u) == 0u;
    bool halves = pc.f16 != 0u && !pairs;
    uint words = pairs ? pc.head_dim / 2u : pc.head_dim;
    uint total = pc.n_tokens * pc.n_kv_heads * words;
    uint step = gl_NumWorkGroups.x * 64u;
    for (uint g = gl_GlobalInvocationID.x; g < total; g += step) {
        uint wd = g % words;
        uint h = (g / words) % pc.n_kv_heads;
        uint t = g / (words * pc.n_kv_heads);
        int slot = int(b4.w[pc.slot_off + t]);
        if (slot < 0 || uint(slot) >= pc.num_blocks * pc.block_size)
            continue;
        uint blk = uint(slot) / pc.block_size;
        uint seg = blk / pc.blocks_per_seg;
        uint row = pool_row(blk, h, uint(slot) % pc.block_size);
        uint kb = pc.k_off + t * pc.k_stride + h * pc.head_dim;
        uint vb = pc.v_off + t * pc.v_stride + h * pc.head_dim;
        if (halves) {
            uint e = row + wd;
#ifdef KVRT_NARROW
            kpool_set_half(seg, e, f32_to_f16_rne(uintBitsToFloat(b2.w[kb + wd])));
            vpool_set_half(seg, e, f32_to_f16_rne(uintBitsToFloat(b3.w[vb + wd])));
            continue;
#endif
            uint sh = 16u * (e & 1u);
            kpool_merge(seg, e >> 1, 0xffffu << sh, f32_to_f16_rne(uintBitsToFloat(b2.w[kb + wd])) << sh);
            vpool_merge(seg, e >> 1, 0xffffu << sh, f32_to_f16_rne(uintBitsToFloat(b3.w[vb + wd])) << sh);
        } else if (pairs) {
            uint d = 2u * wd;
            uint kw = f32_to_f16_rne(uintBitsToFloat(b2.w[kb + d])) |
                      (f32_to_f16_rne(uintBitsToFloat(b2.w[kb + d + 1u])) << 16);
            uint vw = f32_to_f16_rne(uintBitsToFloat(b3.w[vb + d])) |
                      (f32_to_f16_rne(uintBitsToFloat(b3.w[vb + d + 1u])) << 16);
            kpool_set(seg, (row + d) >> 1, kw);
            vpool_set(seg, (row + d) >> 1, vw);
        } else {
            kpool_set(seg, row + wd, b2.w[kb + wd]);
            vpool_set(seg, row + wd, b3.w[vb + wd]);
        }
    }
}
