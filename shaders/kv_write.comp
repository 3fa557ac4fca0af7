#version 450
#ifdef KVRT_BDA // pools through buffer device addresses (built twice, see cmake/shaders.cmake)
#extension GL_EXT_buffer_reference : require
#extension GL_EXT_buffer_reference_uvec2 : require
#endif
#ifdef KVRT_NARROW // F16 KV through 16-bit storage (KVRT_FEATURE_FP16)
#extension GL_EXT_shader_16bit_storage : require
#endif
// Writes token K/V rows into the pools at their slots (slot < 0: padding).
// b2 = k, b3 = v, b4 = slot_mapping. K and V have their own storage types
// (pc.k_type, pc.v_type): each (token, kv head) row splits into the units of
// its pool's type, K's units first, then V's, and one invocation takes one
// unit at a time: an F32 element; an F16 word (even head_dim) or element;
// a quantized group of 32 values (q8_0, q4_0: kv_layout.h's rule, bit for
// bit the CPU's, through 32-bit words only); an fp8 word of 4 values (head_dim
// a multiple of 4: rows start on words) or a lone value merged into its word.
// Loop trips per invocation: the host splits a call into dispatches of at
// most 64 units per invocation (65,535 groups of 64), and a unit costs at
// most ~70 trips (a quantized group: 32 loads, 32 roundings, 8 stores), so
// at most ~4,500 (lavapipe stops at 65,535).
#include "kvrt_push.h"
layout(push_constant) uniform P { KVRT_PUSH_KV_WRITE } pc;
#include "kvrt_common.glsl"
layout(local_size_x = 64) in;

bool is_fp8(uint t) { return t == uint(KVRT_KV_T_FP8_E4M3) || t == uint(KVRT_KV_T_FP8_E5M2); }

// Units of one (token, kv head) row of a pool of type t.
uint row_units(uint t)
{
    if (t == uint(KVRT_KV_T_Q8_0) || t == uint(KVRT_KV_T_Q4_0))
        return pc.head_dim / 32u;
    if (is_fp8(t))
        return (pc.head_dim & 3u) == 0u ? pc.head_dim / 4u : pc.head_dim;
    return t == uint(KVRT_KV_T_F16) && (pc.head_dim & 1u) == 0u ? pc.head_dim / 2u : pc.head_dim;
}

float src(bool is_v, uint i) { return uintBitsToFloat(is_v ? b3.w[i] : b2.w[i]); }
void pool_put(bool is_v, uint seg, uint i, uint w)
{
    if (is_v)
        vpool_set(seg, i, w);
    else
        kpool_set(seg, i, w);
}
void pool_merge(bool is_v, uint seg, uint i, uint mask, uint bits)
{
    if (is_v)
        vpool_merge(seg, i, mask, bits);
    else
        kpool_merge(seg, i, mask, bits);
}

// Step 1 of the rule: NaN -> 0 (tested on the bits, which no fast-math
// folding removes), then clamped to the F16 range.
float kvq_saturate(float x)
{
    if ((floatBitsToUint(x) & 0x7fffffffu) > 0x7f800000u)
        return 0.0;
    return clamp(x, -65504.0, 65504.0);
}

// Step 3: round-to-nearest-even of x / d, found by comparing x with the exact
// midpoints (2q +- 1) * d / 2, so the estimate's rounding never shows.
int kvq_round(float x, float d, int lo, int hi)
{
    if (d == 0.0)
        return 0;
    int q = int(roundEven(x * (1.0 / d))); // within one of the answer
    float half_d = 0.5 * d;
    float up = float(2 * q + 1) * half_d, down = float(2 * q - 1) * half_d;
    if (x > up || (x == up && (q & 1) != 0))
        q++;
    else if (x < down || (x == down && (q & 1) != 0))
        q--;
    return clamp(q, lo, hi);
}

// Quantizes group g of the row at src index sb into block row rb of block
// lb (local to segment seg): 32 (q8_0) or 16 (q4_0) value bytes, whole words
// (rows and groups start on 16-byte boundaries of a whole-word block), and
// the 2-byte scale merged atomically into a word it may share with the next.
void write_group(bool is_v, bool q4, uint seg, uint lb, uint rb, uint g, uint sb)
{
    float xs[32];
    float amax = 0.0;
    for (uint i = 0u; i < 32u; i++) {
        xs[i] = kvq_saturate(src(is_v, sb + g * 32u + i));
        amax = max(amax, abs(xs[i]));
    }
    // step 2: d = f16(f32(amax * R)), R the F32 constant nearest 1/7 or 1/127
    uint dh = f32_to_f16_rne(amax * (q4 ? uintBitsToFloat(0x3e124925u) : uintBitsToFloat(0x3c010204u)));
    float d = f16_bits_to_f32(dh);
    uint rpb = pc.n_kv_heads * pc.block_size, rowb = pool_q_row_bytes(q4);
    uint base = lb * pool_q_block_bytes(q4);
    uint vw = (base + rb * rowb + g * (q4 ? 16u : 32u)) >> 2u; // first value word
    if (q4) {
        for (uint w = 0u; w < 4u; w++) { // byte j: value j | value j + 16 << 4
            uint word = 0u;
            for (uint k = 0u; k < 4u; k++) {
                uint j = 4u * w + k;
                uint lo = uint(kvq_round(xs[j], d, -8, 7) + 8), hi = uint(kvq_round(xs[j + 16u], d, -8, 7) + 8);
                word |= (lo | (hi << 4u)) << (8u * k);
            }
            pool_put(is_v, seg, vw + w, word);
        }
    } else {
        for (uint w = 0u; w < 8u; w++) {
            uint word = 0u;
            for (uint k = 0u; k < 4u; k++)
                word |= (uint(kvq_round(xs[4u * w + k], d, -127, 127)) & 0xffu) << (8u * k);
            pool_put(is_v, seg, vw + w, word);
        }
    }
    uint sc = base + rpb * rowb + (rb * (pc.head_dim / 32u) + g) * 2u; // even
    uint sh = (sc & 2u) * 8u;
    pool_merge(is_v, seg, sc >> 2u, 0xffffu << sh, dh << sh);
}

// kv_layout.h's fp8 rule on the bits of x, in integers only (no device
// float mode, denormal flushing or rounding of a division can change a
// byte): NaN -> the canonical NaN; |x| saturated at the largest value (448,
// 57344); below 2^(1 - bias) the subnormal grid; |x| * 2^(M - exp) rounded
// to nearest even from its 24-bit significand; code = (exp + bias - 1) * 2^M
// + q (a carry moves to the next exponent); x's sign bit.
uint fp8_encode(bool e4, float x)
{
    uint u = floatBitsToUint(x), a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return e4 ? 0x7fu : 0x7eu;
    uint sign = (u >> 24) & 0x80u;
    int man = e4 ? 3 : 2, bias = e4 ? 7 : 15;
    a = min(a, e4 ? 0x43e00000u : 0x47600000u); // 448, 57344: infinities included
    if (a < 0x00800000u) // zero or an F32 subnormal: far below half the smallest fp8 subnormal
        return sign;
    int ea = int(a >> 23) - 127;                 // exponent of |x|
    int ex = max(ea, 1 - bias);                  // the grid's exponent
    uint sig = (a & 0x7fffffu) | 0x800000u;      // |x| = sig * 2^(ea - 23)
    int shift = 23 - man + (ex - ea);            // q = sig / 2^shift, shift >= 20
    uint q = 0u;
    if (shift < 32) {
        uint half_ = 1u << uint(shift - 1), rem = sig & ((half_ << 1u) - 1u);
        q = sig >> uint(shift);
        if (rem > half_ || (rem == half_ && (q & 1u) != 0u))
            q++;
    }
    return sign | (uint((ex + bias - 1) << man) + q);
}

// Writes unit u (a word of 4 values, or value u when head_dim is not a
// multiple of 4) of a row of an fp8 pool: elements from e0 (pool_row).
void write_fp8(bool is_v, bool e4, uint seg, uint e0, uint u, uint sb)
{
    if ((pc.head_dim & 3u) == 0u) {
        uint word = 0u;
        for (uint k = 0u; k < 4u; k++)
            word |= fp8_encode(e4, src(is_v, sb + 4u * u + k)) << (8u * k);
        pool_put(is_v, seg, (e0 >> 2u) + u, word);
        return;
    }
    uint e = e0 + u, sh = 8u * (e & 3u); // rows share words: each value merges its byte
    pool_merge(is_v, seg, e >> 2u, 0xffu << sh, fp8_encode(e4, src(is_v, sb + u)) << sh);
}

// Writes unit u of head h's row of token t into its pool.
void write_unit(bool is_v, uint t, uint h, uint u)
{
    int slot = int(b4.w[pc.slot_off + t]);
    if (slot < 0 || uint(slot) >= pc.num_blocks * pc.block_size)
        return;
    uint ty = pool_type(is_v);
    uint blk = uint(slot) / pc.block_size, off = uint(slot) % pc.block_size;
    uint seg = blk / pc.blocks_per_seg;
    uint sb = (is_v ? pc.v_off + t * pc.v_stride : pc.k_off + t * pc.k_stride) + h * pc.head_dim;
    if (ty == uint(KVRT_KV_T_Q8_0) || ty == uint(KVRT_KV_T_Q4_0)) {
        uint lb = blk % pc.blocks_per_seg;
        write_group(is_v, ty == uint(KVRT_KV_T_Q4_0), seg, lb, h * pc.block_size + off, u, sb);
        return;
    }
    uint row = pool_row(blk, h, off);
    if (is_fp8(ty)) {
        write_fp8(is_v, ty == uint(KVRT_KV_T_FP8_E4M3), seg, row, u, sb);
        return;
    }
    if (ty == uint(KVRT_KV_T_F32)) {
        pool_put(is_v, seg, row + u, floatBitsToUint(src(is_v, sb + u)));
    } else if ((pc.head_dim & 1u) == 0u) { // F16 rows of even length are whole words
        uint d = 2u * u;
        pool_put(is_v, seg, (row + d) >> 1,
                 f32_to_f16_rne(src(is_v, sb + d)) | (f32_to_f16_rne(src(is_v, sb + d + 1u)) << 16));
    } else { // odd ones share words between rows: each element merges its half (KVRT_NARROW: stores it alone)
        uint e = row + u;
        uint bits = f32_to_f16_rne(src(is_v, sb + u));
#ifdef KVRT_NARROW
        if (is_v)
            vpool_set_half(seg, e, bits);
        else
            kpool_set_half(seg, e, bits);
        return;
#endif
        uint sh = 16u * (e & 1u);
        pool_merge(is_v, seg, e >> 1, 0xffffu << sh, bits << sh);
    }
}

void main()
{
    uint uk = row_units(pc.k_type), uv = row_units(pc.v_type), per = uk + uv;
    uint total = pc.n_tokens * pc.n_kv_heads * per;
    uint step = gl_NumWorkGroups.x * 64u;
    for (uint g = gl_GlobalInvocationID.x; g < total; g += step) {
        uint u = g % per, th = g / per;
        bool is_v = u >= uk;
        write_unit(is_v, th / pc.n_kv_heads, th % pc.n_kv_heads, is_v ? u - uk : u);
    }
}
