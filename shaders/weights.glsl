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
// 16 bytes: low nibbles are elements 0..15, high nibbles 16..31, minus 8),
// 5..14 the legacy 4/5-bit types, IQ4 and the k-quants (see W_BLOCK_BYTES),
// decoded element by element (w_elem); `precise` keeps a * b - c * d unfused,
// so embed gives the reference dequantizer's floats bit for bit.
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

// Codes 5..14 (issue #14), in the GGUF block layouts (runtime/common/quant.h):
// 5 Q4_1, 6 Q5_0, 7 Q5_1, 8 IQ4_NL (32-value blocks), 9 Q2_K, 10 Q3_K,
// 11 Q4_K, 12 Q5_K, 13 Q6_K, 14 IQ4_XS (256-value super-blocks).
const uint W_BLOCK_BYTES[15] = uint[15](4u, 2u, 2u, 34u, 18u, 20u, 22u, 24u, 18u, 84u, 110u, 144u, 176u, 210u, 136u);
const int IQ4_VALUES[16] = int[16](-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);

uint w_block_values(uint wt) { return wt <= 2u ? 1u : (wt <= 8u ? 32u : 256u); }

// Bytes of one weight row of n elements.
uint w_row_bytes(uint n)
{
    return (n / w_block_values(pc.wtype)) * W_BLOCK_BYTES[pc.wtype];
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

float a_f16(uint b) { return unpackHalf2x16(a_u16(b)).x; }

// Element k (0..31) of 16 bytes of nibbles at view byte b: elements 0..15
// are the low nibbles, 16..31 the high ones.
uint a_nib32(uint b, uint k)
{
    uint q = a_u8(b + (k & 15u));
    return k < 16u ? q & 15u : q >> 4;
}

// Scale and min of sub-block j of the 12 packed 6-bit pairs at view byte sb (q4_K, q5_K).
void a_scale_min_k4(uint sb, uint j, out uint sc, out uint m)
{
    if (j < 4u) {
        sc = a_u8(sb + j) & 63u;
        m = a_u8(sb + j + 4u) & 63u;
    } else {
        sc = (a_u8(sb + j + 4u) & 15u) | ((a_u8(sb + j - 4u) >> 6) << 4);
        m = (a_u8(sb + j + 4u) >> 4) | ((a_u8(sb + j) >> 6) << 4);
    }
}

// Element j of a row of the codes 5..8 at view byte rb (32-value blocks).
float wq32_elem(uint rb, uint j)
{
    uint wt = pc.wtype, k = j & 31u, b = rb + (j >> 5) * W_BLOCK_BYTES[wt];
    float d = a_f16(b);
    if (wt == 5u) { // q4_1: d, m, qs[16]
        precise float r = float(a_nib32(b + 4u, k)) * d + a_f16(b + 2u);
        return r;
    }
    if (wt == 8u) // iq4_nl: d, qs[16]
        return float(IQ4_VALUES[a_nib32(b + 2u, k)]) * d;
    // q5_0: d, qh[4], qs[16]; q5_1: d, m, qh[4], qs[16]
    uint qh = wt == 6u ? 2u : 4u;
    uint q = a_nib32(b + qh + 4u, k) + 16u * ((a_u32_at(b + qh) >> k) & 1u);
    precise float r = wt == 6u ? float(int(q) - 16) * d : float(q) * d + a_f16(b + 2u);
    return r;
}

// Element j of a row of the codes 9..14 at view byte rb (256-value super-blocks).
// Element e of a super-block: half h = e / 128, group g = (e / 32) % 4,
// sub-block s = e / 32, lane l = e % 32.
float wqk_elem(uint rb, uint j)
{
    uint wt = pc.wtype, e = j & 255u, b = rb + (j >> 8) * W_BLOCK_BYTES[wt];
    uint h = e >> 7, g = (e >> 5) & 3u, s = e >> 5, l = e & 31u;
    if (wt == 9u) { // q2_K: scales[16], qs[64], d, dmin
        uint q = (a_u8(b + 16u + 32u * h + l) >> (2u * g)) & 3u;
        uint sc = a_u8(b + (e >> 4));
        precise float r = a_f16(b + 80u) * float(sc & 15u) * float(q) - a_f16(b + 82u) * float(sc >> 4);
        return r;
    }
    if (wt == 10u) { // q3_K: hmask[32], qs[64], scales[12], d
        uint lo = (a_u8(b + 32u + 32u * h + l) >> (2u * g)) & 3u;
        uint hi = (a_u8(b + l) >> s) & 1u;
        uint i = e >> 4;
        uint slo = i < 8u ? a_u8(b + 96u + i) & 15u : a_u8(b + 88u + i) >> 4;
        uint shi = (a_u8(b + 104u + (i & 3u)) >> (2u * (i >> 2))) & 3u;
        return a_f16(b + 108u) * float(int(slo | (shi << 4)) - 32) * float(int(lo + 4u * hi) - 4);
    }
    if (wt == 11u || wt == 12u) { // d, dmin, scales[12], (q5_K: qh[32]), qs[128]
        uint sc, m;
        a_scale_min_k4(b + 4u, s, sc, m);
        uint byte = a_u8(b + (wt == 11u ? 16u : 48u) + 32u * (s >> 1) + l);
        uint q = (s & 1u) != 0u ? byte >> 4 : byte & 15u;
        if (wt == 12u)
            q += 16u * ((a_u8(b + 16u + l) >> s) & 1u);
        precise float r = a_f16(b) * float(sc) * float(q) - a_f16(b + 2u) * float(m);
        return r;
    }
    if (wt == 13u) { // q6_K: ql[128], qh[64], int8 scales[16], d
        uint lo = a_u8(b + 64u * h + 32u * (g & 1u) + l);
        uint q = (g < 2u ? lo & 15u : lo >> 4) | (((a_u8(b + 128u + 32u * h + l) >> (2u * g)) & 3u) << 4);
        int sc = int(a_u8(b + 192u + (e >> 4)) << 24) >> 24;
        return a_f16(b + 208u) * float(sc) * float(int(q) - 32);
    }
    // iq4_xs: d, scales_h, scales_l[4], qs[128]
    uint ls = ((a_u8(b + 4u + (s >> 1)) >> (4u * (s & 1u))) & 15u) | (((a_u16(b + 2u) >> (2u * s)) & 3u) << 4);
    return a_f16(b) * float(int(ls) - 32) * float(IQ4_VALUES[a_nib32(b + 8u + 16u * s, l)]);
}

// Element j of the row that starts at view byte rb (any type).
float w_elem(uint rb, uint j)
{
    if (pc.wtype >= 9u)
        return wqk_elem(rb, j);
    if (pc.wtype >= 5u)
        return wq32_elem(rb, j);
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
