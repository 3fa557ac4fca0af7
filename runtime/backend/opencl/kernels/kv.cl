/* KV writes: k[t], v[t] ([n_kv_heads][head_dim] F32) go to slot_mapping[t]
 * of one layer's pools, each pool in its own type (KVRT_KV_K, KVRT_KV_V).
 * One work-item per (element, token); for a quantized pool the work-item of
 * a group's first element quantizes the whole group of 32 by kv_layout.h's
 * rule, bit for bit the CPU's. */

/* Step 1 of the rule: NaN -> 0 (tested on the bits), clamped to the F16 range. */
inline float kvq_saturate(float x)
{
    if ((as_uint(x) & 0x7fffffffu) > 0x7f800000u)
        return 0.0f;
    return clamp(x, -65504.0f, 65504.0f);
}

/* Step 3: round-to-nearest-even of x / d by the exact midpoints (2q +- 1) * d / 2. */
inline int kvq_round(float x, float d, int lo, int hi)
{
    if (d == 0.0f)
        return 0;
    int q = (int)rint(x * (1.0f / d)); /* within one of the answer */
    const float half_d = 0.5f * d;
    const float up = (float)(2 * q + 1) * half_d, down = (float)(2 * q - 1) * half_d;
    if (x > up || (x == up && (q & 1)))
        q++;
    else if (x < down || (x == down && (q & 1)))
        q--;
    return clamp(q, lo, hi);
}

/* Quantizes the 32 values at x into row `row` of a q8_0 / q4_0 pool segment, group g. */
inline void kvq_write_group(__global uchar *seg, const int t, kvrt_cl_pool_args pa, long row, int g,
                            __global const float *x)
{
    const int q4 = t == KVRT_CL_KV_Q4_0;
    float xs[32], amax = 0.0f;
    for (int i = 0; i < 32; i++) {
        xs[i] = kvq_saturate(x[i]);
        amax = fmax(amax, fabs(xs[i]));
    }
    /* step 2: d = f16(f32(amax * R)), R the F32 constant nearest 1/7 or 1/127 */
    const uint dh = kv_f32_to_f16_bits(amax * (q4 ? 0x1.24924ap-3f : 0x1.020408p-7f));
    const float d = kv_f16_bits_to_f32(dh);
    const long v = kvq_values_at(t, pa, row), s = kvq_scales_at(t, pa, row) + 2 * g;
    if (q4) {
        for (int j = 0; j < 16; j++)
            seg[v + 16 * g + j] = (uchar)((kvq_round(xs[j], d, -8, 7) + 8) | ((kvq_round(xs[j + 16], d, -8, 7) + 8) << 4));
    } else {
        for (int j = 0; j < 32; j++)
            seg[v + 32 * g + j] = (uchar)(char)kvq_round(xs[j], d, -127, 127);
    }
    seg[s] = (uchar)(dh & 0xffu);
    seg[s + 1] = (uchar)(dh >> 8);
}

/* kv_layout.h's fp8 rule on the bits of x, in integers only (no float mode,
 * denormal flushing or rounding of a division can change a byte; the Vulkan
 * shader's fp8_encode): NaN -> the canonical NaN; |x| saturated at the
 * largest value (448, 57344); below 2^(1 - bias) the subnormal grid; |x| *
 * 2^(M - exp) rounded to nearest even from its 24-bit significand; code =
 * (exp + bias - 1) * 2^M + q (a carry moves to the next exponent); x's sign. */
inline uchar kv_fp8_encode(const int t, float x)
{
    const int e4 = t == KVRT_CL_KV_FP8_E4M3;
    const uint u = as_uint(x);
    uint a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return e4 ? 0x7f : 0x7e;
    const uint sign = (u >> 24) & 0x80u;
    const int man = e4 ? 3 : 2, bias = e4 ? 7 : 15;
    a = min(a, e4 ? 0x43e00000u : 0x47600000u); /* 448, 57344: infinities included */
    if (a < 0x00800000u) /* zero or an F32 subnormal: far below half the smallest fp8 subnormal */
        return (uchar)sign;
    const int ea = (int)(a >> 23) - 127, ex = max(ea, 1 - bias);
    const uint sig = (a & 0x7fffffu) | 0x800000u; /* |x| = sig * 2^(ea - 23) */
    const int shift = 23 - man + (ex - ea);       /* q = sig / 2^shift, shift >= 20 */
    uint q = 0u;
    if (shift < 32) {
        const uint half_ = 1u << (shift - 1), rem = sig & ((half_ << 1) - 1u);
        q = sig >> shift;
        if (rem > half_ || (rem == half_ && (q & 1u)))
            q++;
    }
    return (uchar)(sign | ((uint)((ex + bias - 1) << man) + q));
}

/* Element d of a row into a pool of type t (quantized: the group's first element writes it). */
inline void kv_store(__global uchar *seg, const int t, kvrt_cl_pool_args pa, long row, int d,
                     __global const float *x)
{
    if (t == KVRT_CL_KV_FP8_E4M3 || t == KVRT_CL_KV_FP8_E5M2) {
        seg[row * pa.head_dim + d] = kv_fp8_encode(t, x[d]);
    } else if (t == KVRT_CL_KV_F32) {
        ((__global float *)seg)[row * pa.head_dim + d] = x[d];
    } else if (t == KVRT_CL_KV_F16) {
        /* F16 KV saturates (DESIGN.md): beyond +-65504, inf included, stores +-65504; NaN stays NaN */
        const float f = x[d];
        vstore_half_rte(isnan(f) ? f : clamp(f, -65504.0f, 65504.0f), row * pa.head_dim + d, (__global half *)seg);
    } else if (d % 32 == 0) {
        kvq_write_group(seg, t, pa, row, d / 32, x + d);
    }
}

__kernel void kv_write(__global const float *k, __global const float *v, __global const int *slots,
                       KV_SEGS(__global, kp), KV_SEGS(__global, vp), kvrt_cl_pool_args pa,
                       kvrt_cl_kv_write_args a)
{
    const int e = get_global_id(0); /* head * head_dim + d */
    const int t = get_global_id(1);
    if (t >= a.n_tokens || e >= pa.n_kv_heads * pa.head_dim)
        return;
    const int slot = slots[a.slot_off + t];
    /* padding (< 0) is skipped; the host checked every slot against the
     * pool before the step (kvrt_batch_check), the bound only keeps a
     * work-item inside it. */
    if (slot < 0 || slot >= pa.num_blocks * pa.block_size)
        return;
    const int block = slot / pa.block_size;
    const int head = e / pa.head_dim;
    const int d = e - head * pa.head_dim;
    const long row = kv_row(pa, block, head, slot - block * pa.block_size);
    const int seg = (int)(block / pa.blocks_per_seg);
    kv_store(KV_SEG_PICK(kp, seg), KVRT_KV_K, pa, row, d, k + a.k_off + (long)t * a.k_stride + head * pa.head_dim);
    kv_store(KV_SEG_PICK(vp, seg), KVRT_KV_V, pa, row, d, v + a.v_off + (long)t * a.v_stride + head * pa.head_dim);
}

/* Context shift: rotates the stored keys of whole blocks (keys are stored
 * after RoPE) by the pair angles of cs [rot_dim/2][2]. The block ids are
 * distinct and were checked on the host; the host refuses quantized K pools.
 * One work-item per (pair, row of a block, block); F16 goes through F32 and
 * back with kv_write's rounding (nearest even, saturating). */
#pragma OPENCL FP_CONTRACT OFF
inline float shift_load(__global const uchar *seg, long e)
{
    if (KVRT_KV_K == KVRT_CL_KV_F16)
        return vload_half(e, (__global const half *)seg);
    return ((__global const float *)seg)[e];
}

inline void shift_store(__global uchar *seg, long e, float x)
{
    if (KVRT_KV_K == KVRT_CL_KV_F16)
        vstore_half_rte(isnan(x) ? x : clamp(x, -65504.0f, 65504.0f), e, (__global half *)seg);
    else
        ((__global float *)seg)[e] = x;
}

__kernel void kv_rope_shift(__global const int *blocks, __global const float *cs, KV_SEGS(__global, kp),
                            kvrt_cl_pool_args pa, kvrt_cl_rope_shift_args a)
{
    const int i = get_global_id(0);
    const int r = get_global_id(1); /* head * block_size + offset */
    const int bi = get_global_id(2);
    const int half_rot = a.rot_dim / 2;
    if (KVRT_KV_K != KVRT_CL_KV_F32 && KVRT_KV_K != KVRT_CL_KV_F16)
        return;
    if (i >= half_rot || r >= pa.n_kv_heads * pa.block_size || bi >= a.n_blocks)
        return;
    const int block = blocks[a.blocks_off + bi];
    if (block < 0 || block >= pa.num_blocks)
        return;
    const int head = r / pa.block_size;
    const long row = kv_row(pa, block, head, r - head * pa.block_size) * pa.head_dim;
    __global uchar *k = KV_SEG_PICK(kp, (int)(block / pa.blocks_per_seg));
    const long e0 = row + (a.neox ? i : 2 * i), e1 = row + (a.neox ? i + half_rot : 2 * i + 1);
    const float c = cs[a.cs_off + 2 * i], s = cs[a.cs_off + 2 * i + 1];
    const float x0 = shift_load(k, e0), x1 = shift_load(k, e1);
    const float y0 = x0 * c - x1 * s;
    const float y1 = x0 * s + x1 * c;
    shift_store(k, e0, y0);
    shift_store(k, e1, y1);
}
