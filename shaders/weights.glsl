// Weights and tables that may span buffer segments (matmul, embed, gather).
// Include after ops_common.glsl. Offsets are global words from the start of
// the logical buffer (pc.a_off is the view's); segments hold pc.seg_words
// words each. A row never exceeds one segment, so it lies in a "window" of
// two consecutive segments; a_window() picks the window of a row, a_word()
// reads a word inside it.
//   descriptor path: the dispatch covers rows that start in one segment:
//     binding 2 = that segment, binding 5 = the next one, pc.win_base = its
//     first global word;
//   KVRT_BDA: binding 5 holds the buffer's segment base addresses (uvec2,
//     one extra entry repeating the last), so one dispatch covers all rows.
// Weight types (pc.wtype): 0 F32, 1 F16, 2 BF16 (two per word, low first),
// 3 Q8_0 (34-byte blocks: f16 d, int8 q[32]), 4 Q4_0 (18-byte blocks: f16 d,
// 16 bytes: low nibbles are elements 0..15, high nibbles 16..31, minus 8).
// Blocks are read through 32-bit words: no 8/16-bit storage feature needed.

#ifdef KVRT_BDA
layout(buffer_reference, std430, buffer_reference_align = 4) buffer KvrtWords { uint w[]; };
layout(std430, set = 0, binding = 5) readonly buffer BT { uvec2 a[]; } bt;
uvec2 g_addr0, g_addr1;
#else
layout(std430, set = 0, binding = 5) buffer BN { uint w[]; } bn;
#endif
uint g_win_base;

// Selects the window of the row that starts at global word gw.
void a_window(uint gw)
{
#ifdef KVRT_BDA
    uint s = gw / pc.seg_words;
    g_win_base = s * pc.seg_words;
    g_addr0 = bt.a[s];
    g_addr1 = bt.a[s + 1u];
#else
    g_win_base = pc.win_base;
#endif
}

uint a_word(uint gw)
{
    uint r = gw - g_win_base;
#ifdef KVRT_BDA
    return r < pc.seg_words ? KvrtWords(g_addr0).w[r] : KvrtWords(g_addr1).w[r - pc.seg_words];
#else
    return r < pc.seg_words ? ba.w[r] : bn.w[r - pc.seg_words];
#endif
}

// Bytes of one weight row of n elements.
uint w_row_bytes(uint n)
{
    if (pc.wtype == 0u)
        return n * 4u;
    if (pc.wtype <= 2u)
        return n * 2u;
    return (n / 32u) * (pc.wtype == 3u ? 34u : 18u);
}

// Byte b of the view (rows are 2-byte aligned, so a 16-bit value never
// straddles two words).
uint a_u16(uint b) { return (a_word(pc.a_off + (b >> 2)) >> ((b & 2u) * 8u)) & 0xffffu; }
uint a_u8(uint b) { return (a_word(pc.a_off + (b >> 2)) >> ((b & 3u) * 8u)) & 0xffu; }

// Four bytes starting at view byte b (b even), as one little-endian word.
uint a_u32_at(uint b)
{
    uint w0 = a_word(pc.a_off + (b >> 2));
    if ((b & 3u) == 0u)
        return w0;
    uint w1 = a_word(pc.a_off + (b >> 2) + 1u);
    return (w0 >> 16) | (w1 << 16);
}

// Element j of the row that starts at view byte rb (any type).
float w_elem(uint rb, uint j)
{
    if (pc.wtype == 0u)
        return uintBitsToFloat(a_word(pc.a_off + (rb >> 2) + j));
    if (pc.wtype <= 2u) {
        uint h = a_u16(rb + 2u * j);
        return pc.wtype == 1u ? unpackHalf2x16(h).x : uintBitsToFloat(h << 16);
    }
    uint blk = j / 32u, k = j % 32u;
    if (pc.wtype == 3u) {
        uint b = rb + blk * 34u;
        float d = unpackHalf2x16(a_u16(b)).x;
        return float(int(a_u8(b + 2u + k) << 24) >> 24) * d;
    }
    uint b = rb + blk * 18u;
    float d = unpackHalf2x16(a_u16(b)).x;
    uint q = a_u8(b + 2u + (k & 15u));
    return float(int(k < 16u ? (q & 15u) : (q >> 4)) - 8) * d;
}

// sum_j W[block blk of the row at rb][j] * x[x0 + j] over one 32-element
// quant block, reading whole words.
float w_block_dot(uint rb, uint blk, uint x0)
{
    bool q8 = pc.wtype == 3u;
    uint b = rb + blk * (q8 ? 34u : 18u);
    float d = unpackHalf2x16(a_u16(b)).x;
    float s = 0.0;
    if (q8) {
        for (uint i = 0u; i < 8u; i++) {
            uint w = a_u32_at(b + 2u + 4u * i);
            for (uint k = 0u; k < 4u; k++)
                s += float(int(w << (24u - 8u * k)) >> 24) * fb(x0 + 4u * i + k);
        }
    } else {
        for (uint i = 0u; i < 4u; i++) {
            uint w = a_u32_at(b + 2u + 4u * i);
            for (uint k = 0u; k < 4u; k++) {
                uint q = (w >> (8u * k)) & 0xffu;
                s += float(int(q & 15u) - 8) * fb(x0 + 4u * i + k);
                s += float(int(q >> 4) - 8) * fb(x0 + 16u + 4u * i + k);
            }
        }
    }
    return s * d;
}
