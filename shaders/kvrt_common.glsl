// Helpers shared by the shaders: the descriptor set every pipeline uses, KV
// pool element access across segments, F16 conversion with round-to-nearest-
// even (the CPU pool's rounding, so F16 blocks are byte-identical).
//
// Bindings: 0 = K pool segments, 1 = V pool segments (KVRT_BDA: their
// address tables), 2..6 = plain buffers.
// Every buffer is an array of 32-bit words; floats are bit casts.
// Segments are indexed with constant indices only (switch), so no descriptor
// indexing feature is needed.

#ifdef KVRT_BDA
// Buffer device addresses: binding 0 (1) holds the K (V) layer's segment base
// addresses, so a pool may have any number of segments, each as large as one
// allocation. Addresses are uvec2 (no 64-bit integer feature needed). The
// shader enables GL_EXT_buffer_reference(_uvec2) right after #version.
layout(buffer_reference, std430, buffer_reference_align = 4) buffer KvrtWords { uint w[]; };
layout(std430, set = 0, binding = 0) buffer KAddr { uvec2 a[]; } kaddr[KVRT_VK_MAX_POOL_SEGS];
layout(std430, set = 0, binding = 1) buffer VAddr { uvec2 a[]; } vaddr[KVRT_VK_MAX_POOL_SEGS];
#else
layout(std430, set = 0, binding = 0) buffer KPool { uint w[]; } kpool[KVRT_VK_MAX_POOL_SEGS];
layout(std430, set = 0, binding = 1) buffer VPool { uint w[]; } vpool[KVRT_VK_MAX_POOL_SEGS];
#endif
layout(std430, set = 0, binding = 2) buffer B2 { uint w[]; } b2;
layout(std430, set = 0, binding = 3) buffer B3 { uint w[]; } b3;
layout(std430, set = 0, binding = 4) buffer B4 { uint w[]; } b4;
layout(std430, set = 0, binding = 5) buffer B5 { uint w[]; } b5;
layout(std430, set = 0, binding = 6) buffer B6 { uint w[]; } b6;

// "minus infinity" that stays finite, so exp() of differences never sees inf - inf
const float KVRT_NEG = -3.0e38;

#ifdef KVRT_BDA
uint kpool_get(uint seg, uint i) { return KvrtWords(kaddr[0].a[seg]).w[i]; }
uint vpool_get(uint seg, uint i) { return KvrtWords(vaddr[0].a[seg]).w[i]; }
void kpool_set(uint seg, uint i, uint v) { KvrtWords(kaddr[0].a[seg]).w[i] = v; }
void vpool_set(uint seg, uint i, uint v) { KvrtWords(vaddr[0].a[seg]).w[i] = v; }
// Replaces the bits `mask` of word i with `bits`, atomically against other
// invocations writing the other half of the same word (F16 with odd head_dim).
void kpool_merge(uint seg, uint i, uint mask, uint bits)
{
    atomicAnd(KvrtWords(kaddr[0].a[seg]).w[i], ~mask);
    atomicOr(KvrtWords(kaddr[0].a[seg]).w[i], bits);
}
void vpool_merge(uint seg, uint i, uint mask, uint bits)
{
    atomicAnd(KvrtWords(vaddr[0].a[seg]).w[i], ~mask);
    atomicOr(KvrtWords(vaddr[0].a[seg]).w[i], bits);
}
#else
#define KVRT_SEG_CASES(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)

uint kpool_get(uint seg, uint i)
{
#define KVRT_C(n) case n: return kpool[n].w[i];
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
    return 0u;
}

uint vpool_get(uint seg, uint i)
{
#define KVRT_C(n) case n: return vpool[n].w[i];
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
    return 0u;
}

void kpool_set(uint seg, uint i, uint v)
{
#define KVRT_C(n) case n: kpool[n].w[i] = v; break;
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
}

void vpool_set(uint seg, uint i, uint v)
{
#define KVRT_C(n) case n: vpool[n].w[i] = v; break;
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
}

void kpool_merge(uint seg, uint i, uint mask, uint bits)
{
#define KVRT_C(n) case n: atomicAnd(kpool[n].w[i], ~mask); atomicOr(kpool[n].w[i], bits); break;
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
}

void vpool_merge(uint seg, uint i, uint mask, uint bits)
{
#define KVRT_C(n) case n: atomicAnd(vpool[n].w[i], ~mask); atomicOr(vpool[n].w[i], bits); break;
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
}
#endif

#ifdef KVRT_NARROW
// 16-bit views of the same pool segments (KVRT_FEATURE_FP16: 16-bit storage):
// F16 KV elements load and store one at a time, with no unpacking and no
// atomics for a lone half. The shader enables GL_EXT_shader_16bit_storage.
#ifdef KVRT_BDA
layout(buffer_reference, std430, buffer_reference_align = 2) buffer KvrtHalves { uint16_t h[]; };
uint kpool_half(uint seg, uint e) { return uint(KvrtHalves(kaddr[0].a[seg]).h[e]); }
uint vpool_half(uint seg, uint e) { return uint(KvrtHalves(vaddr[0].a[seg]).h[e]); }
void kpool_set_half(uint seg, uint e, uint bits) { KvrtHalves(kaddr[0].a[seg]).h[e] = uint16_t(bits); }
void vpool_set_half(uint seg, uint e, uint bits) { KvrtHalves(vaddr[0].a[seg]).h[e] = uint16_t(bits); }
#else
layout(std430, set = 0, binding = 0) buffer KPoolH { uint16_t h[]; } kpoolh[KVRT_VK_MAX_POOL_SEGS];
layout(std430, set = 0, binding = 1) buffer VPoolH { uint16_t h[]; } vpoolh[KVRT_VK_MAX_POOL_SEGS];

uint kpool_half(uint seg, uint e)
{
#define KVRT_C(n) case n: return uint(kpoolh[n].h[e]);
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
    return 0u;
}

uint vpool_half(uint seg, uint e)
{
#define KVRT_C(n) case n: return uint(vpoolh[n].h[e]);
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
    return 0u;
}

void kpool_set_half(uint seg, uint e, uint bits)
{
#define KVRT_C(n) case n: kpoolh[n].h[e] = uint16_t(bits); break;
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
}

void vpool_set_half(uint seg, uint e, uint bits)
{
#define KVRT_C(n) case n: vpoolh[n].h[e] = uint16_t(bits); break;
    switch (seg) { KVRT_SEG_CASES(KVRT_C) }
#undef KVRT_C
}
#endif
#endif

// Element index, inside its segment, of (block, kv head, offset in block, dim 0).
uint pool_row(uint blk, uint h, uint off)
{
    uint lb = blk % pc.blocks_per_seg;
    return ((lb * pc.n_kv_heads + h) * pc.block_size + off) * pc.head_dim;
}

// The storage type of the K or V pool (KVRT_KV_T_*): K and V may differ.
uint pool_type(bool is_v) { return is_v ? pc.v_type : pc.k_type; }
uint pool_word(bool is_v, uint seg, uint i) { return is_v ? vpool_get(seg, i) : kpool_get(seg, i); }

// F32 value of IEEE binary16 bits, exact for subnormals too (a device that
// flushes them in unpackHalf2x16 would change a quantized scale).
float f16_bits_to_f32(uint h)
{
    uint m = h & 0x3ffu, e = (h >> 10) & 0x1fu;
    float v = e == 0u ? float(m) * (1.0 / 16777216.0) : uintBitsToFloat(((e + 112u) << 23) | (m << 13));
    return (h & 0x8000u) != 0u ? -v : v; // e == 31 (inf, NaN) is never a stored scale
}

// Bytes of a quantized block (kv_layout.h): rows of head_dim values (8 or 4
// bits each), then one 2-byte scale per 32 values of every row. Segments
// hold whole blocks and the host refuses blocks that are not whole words.
uint pool_q_row_bytes(bool q4) { return q4 ? pc.head_dim / 2u : pc.head_dim; }
uint pool_q_block_bytes(bool q4)
{
    uint rows = pc.n_kv_heads * pc.block_size;
    return rows * (pool_q_row_bytes(q4) + pc.head_dim / 16u);
}

// Element e (pool_row + dim) of a q8_0 / q4_0 pool, dequantized: q * scale
// in F32 (exact: an 8-bit integer times an F16), as the CPU computes it.
// Words only, so no int8/16-bit storage feature is needed.
float pool_load_q(bool is_v, bool q4, uint seg, uint e)
{
    uint D = pc.head_dim, rpb = pc.n_kv_heads * pc.block_size;
    uint r = e / D, d = e - r * D;        // row in the segment, dim
    uint lb = r / rpb, rb = r - lb * rpb; // block in the segment, row in the block
    uint rowb = pool_q_row_bytes(q4);
    uint base = lb * pool_q_block_bytes(q4);
    uint g = d >> 5u, j = d & 31u;
    uint sb = base + rpb * rowb + (rb * (D >> 5u) + g) * 2u; // even: never crosses a word
    float scale = f16_bits_to_f32((pool_word(is_v, seg, sb >> 2u) >> ((sb & 2u) * 8u)) & 0xffffu);
    int q;
    if (q4) { // byte j of a group: value j low nibble, value j + 16 high nibble
        uint b = base + rb * rowb + g * 16u + (j & 15u);
        uint byte = (pool_word(is_v, seg, b >> 2u) >> ((b & 3u) * 8u)) & 0xffu;
        q = int(j < 16u ? (byte & 15u) : (byte >> 4u)) - 8;
    } else {
        uint b = base + rb * rowb + d;
        q = bitfieldExtract(int(pool_word(is_v, seg, b >> 2u)), int((b & 3u) * 8u), 8); // sign-extended
    }
    return float(q) * scale;
}

// F32 value of an fp8 byte (kv_layout.h), exact: E4M3 (bias 7, 3 mantissa
// bits, S.1111.111 NaN, no infinity) or E5M2 (the upper byte of an F16).
float fp8_to_f32(bool e4, uint b)
{
    uint m = e4 ? b & 7u : b & 3u, e = e4 ? (b >> 3) & 15u : (b >> 2) & 31u;
    float v;
    if (e4 && (b & 0x7fu) == 0x7fu)
        v = uintBitsToFloat(0x7fc00000u);
    else if (!e4 && e == 31u)
        v = uintBitsToFloat(m == 0u ? 0x7f800000u : 0x7fc00000u);
    else if (e == 0u) // subnormal: m * 2^-9 (E4M3), m * 2^-16 (E5M2)
        v = float(m) * (e4 ? 1.0 / 512.0 : 1.0 / 65536.0);
    else
        v = uintBitsToFloat(e4 ? ((e + 120u) << 23) | (m << 20) : ((e + 112u) << 23) | (m << 21));
    return (b & 0x80u) != 0u ? -v : v;
}

// Element e of an fp8 pool: byte e of the segment (no scales), from its word.
float pool_load_fp8(bool is_v, bool e4, uint seg, uint e)
{
    return fp8_to_f32(e4, (pool_word(is_v, seg, e >> 2u) >> ((e & 3u) * 8u)) & 0xffu);
}

float pool_load(bool is_v, uint seg, uint e)
{
    uint t = pool_type(is_v);
    if (t == uint(KVRT_KV_T_FP8_E4M3) || t == uint(KVRT_KV_T_FP8_E5M2))
        return pool_load_fp8(is_v, t == uint(KVRT_KV_T_FP8_E4M3), seg, e);
    if (t == uint(KVRT_KV_T_Q8_0) || t == uint(KVRT_KV_T_Q4_0))
        return pool_load_q(is_v, t == uint(KVRT_KV_T_Q4_0), seg, e);
    if (t == uint(KVRT_KV_T_F16)) {
#ifdef KVRT_NARROW
        return unpackHalf2x16(is_v ? vpool_half(seg, e) : kpool_half(seg, e)).x;
#endif
        uint w = pool_word(is_v, seg, e >> 1);
        vec2 h = unpackHalf2x16(w);
        return (e & 1u) != 0u ? h.y : h.x;
    }
    return uintBitsToFloat(pool_word(is_v, seg, e));
}

// IEEE binary16 bits of f, round to nearest even (the algorithm of fp16.h),
// saturating at +-65504 as F16 KV does on every backend.
uint f32_to_f16_rne(float f)
{
    uint u = floatBitsToUint(f);
    uint sign = (u >> 16) & 0x8000u;
    uint a = u & 0x7fffffffu;
    if (a > 0x7f800000u) // NaN stays NaN (quiet)
        return sign | 0x7e00u | ((a >> 13) & 0x3ffu);
    if (a >= 0x477ff000u) // rounds past 65504, inf included: saturates (DESIGN.md, F16 KV)
        return sign | 0x7bffu;
    if (a < 0x38800000u) {
        float x = uintBitsToFloat(a) + 0.5;
        return sign | (floatBitsToUint(x) - 0x3f000000u);
    }
    uint odd = (a >> 13) & 1u;
    a += 0xc8000fffu + odd;
    return sign | (a >> 13);
}

#ifdef KVRT_ATTN_SHADER
// Query at position i sees key j (DESIGN.md): j <= i and (W == 0 or i - j < W or j < S).
bool kvrt_visible(uint i, uint j)
{
    return j <= i && (pc.window == 0u || i - j < pc.window || j < pc.sinks);
}
#endif
