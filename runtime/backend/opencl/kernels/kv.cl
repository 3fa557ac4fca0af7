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

/* Element d of a row into a pool of type t (quantized: the group's first element writes it). */
inline void kv_store(__global uchar *seg, const int t, kvrt_cl_pool_args pa, long row, int d,
                     __global const float *x)
{
    if (t == KVRT_CL_KV_F32) {
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
 * distinct and were checked on the host. One work-item per (pair, row of a
 * block, block); F16 goes through F32 and back with kv_store's rounding
 * (the host refuses the quantized types here). */
inline void kv_shift_store(__global uchar *seg, const int t, long e, float y)
{
    if (t == KVRT_CL_KV_F16)
        vstore_half_rte(isnan(y) ? y : clamp(y, -65504.0f, 65504.0f), e, (__global half *)seg);
    else if (t == KVRT_CL_KV_F32)
        ((__global float *)seg)[e] = y;
}

#pragma OPENCL FP_CONTRACT OFF
__kernel void kv_rope_shift(__global const int *blocks, __global const float *cs, KV_SEGS(__global, kp),
                            kvrt_cl_pool_args pa, kvrt_cl_rope_shift_args a)
{
    const int i = get_global_id(0);
    const int r = get_global_id(1); /* head * block_size + offset */
    const int bi = get_global_id(2);
    const int half_rot = a.rot_dim / 2;
    if (i >= half_rot || r >= pa.n_kv_heads * pa.block_size || bi >= a.n_blocks)
        return;
    const int block = blocks[a.blocks_off + bi];
    if (block < 0 || block >= pa.num_blocks)
        return;
    const int head = r / pa.block_size;
    const long row = kv_row(pa, block, head, r - head * pa.block_size);
    __global uchar *k = KV_SEG_PICK(kp, (int)(block / pa.blocks_per_seg));
    const int d0 = a.neox ? i : 2 * i, d1 = a.neox ? i + half_rot : 2 * i + 1;
    const float c = cs[a.cs_off + 2 * i], s = cs[a.cs_off + 2 * i + 1];
    const float x0 = kv_load(k, KVRT_KV_K, pa, row, d0), x1 = kv_load(k, KVRT_KV_K, pa, row, d1);
    const float y0 = x0 * c - x1 * s;
    const float y1 = x0 * s + x1 * c;
    kv_shift_store(k, KVRT_KV_K, row * pa.head_dim + d0, y0);
    kv_shift_store(k, KVRT_KV_K, row * pa.head_dim + d1, y1);
}
