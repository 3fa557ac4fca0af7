/* The weight layout the "plane" kernels of q4_K, q5_K and q6_K unpack
 * (cpu_quant_avx512.c, cpu_quant_avx2.c), and the activation order that
 * goes with it (kvrt_cpu_xprep_*, cpu_quant_c.c).
 *
 * A chunk is 64 weight bytes (q4_K/q5_K: qs[64 c ..], q6_K: ql[64 c ..],
 * c = 0, 1) read as 16 32-bit lanes L. Two "planes" are made of it, each
 * one level per byte: p = 0 from the low nibbles, p = 1 from the high ones
 * (with the fifth bit of q5_K or the high two bits of q6_K merged in). Byte
 * b of every lane of a plane is one vector of 16 levels, so 16 levels cost
 * a shift and a mask, not a widening shuffle. Those 16 levels belong to
 * block values that are 4 apart, so the activations are reordered once per
 * GEMV to match: position 128 c + 64 p + 16 b + L of a block holds the
 * value plane_value(c, p, b, L).
 *
 * A level q of w bits becomes the float 1 + q / 2^w by placing its bits
 * under the exponent of 1.0 (no int-to-float conversion); with F the sum of
 * those floats times x over a scale group and X the plain sum of x there,
 * sum(q x) = 2^w (F - X), so the kernels fold the X terms into the
 * per-group correction they already make for the mins. */
#ifndef KVRT_CPU_QUANT_PLANES_H
#define KVRT_CPU_QUANT_PLANES_H

/* Lane L's byte b is byte 4 (L % 8) + b of the half L / 8 of the chunk. */
static inline int kvrt_plane_value(int q6, int c, int p, int b, int L)
{
    const int half = L / 8, l = 4 * (L % 8) + b; /* l: 0..31 */
    if (q6) /* q6_K: ql[l] and ql[l + 32] of half c; low nibbles are quarters 0/1, high ones 2/3 */
        return 128 * c + 32 * (half + 2 * p) + l;
    /* q4_K / q5_K: qs[32 s + l] holds sub-block 2 s (low nibble) and 2 s + 1 (high), s = 2 c + half */
    return 32 * (4 * c + 2 * half + p) + l;
}

/* q2_K / q3_K: the 64 bytes of qs are one chunk with four 2-bit fields f
 * per byte (q3_K's third bits merged above each in turn); field f of byte b
 * of lane L is value 128 (L / 8) + 32 f + 4 (L % 8) + b of the block, read
 * from position 64 f + 16 b + L of the activation order. */
static inline int kvrt_plane_value2(int f, int b, int L)
{
    return 128 * (L / 8) + 32 * f + 4 * (L % 8) + b;
}

#endif /* KVRT_CPU_QUANT_PLANES_H */
