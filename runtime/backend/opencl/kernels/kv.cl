/* KV writes: k[t], v[t] ([n_kv_heads][head_dim] F32) go to slot_mapping[t]
 * of one layer's pools. One work-item per (element, token). */

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
    const long idx = kv_row_index(pa, block, head, slot - block * pa.block_size) + d;
    const int seg = (int)(block / pa.blocks_per_seg);
    __global kv_t *kdst = KV_SEG_PICK(kp, seg);
    __global kv_t *vdst = KV_SEG_PICK(vp, seg);
    KV_STORE(kdst, idx, k[a.k_off + (long)t * a.k_stride + e]);
    KV_STORE(vdst, idx, v[a.v_off + (long)t * a.v_stride + e]);
}

/* Context shift: rotates the stored keys of whole blocks (keys are stored
 * after RoPE) by the pair angles of cs [rot_dim/2][2]. The block ids are
 * distinct and were checked on the host. One work-item per (pair, row of a
 * block, block); F16 goes through F32 and back with KV_STORE's rounding. */
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
    const long row = kv_row_index(pa, block, head, r - head * pa.block_size);
    __global kv_t *k = KV_SEG_PICK(kp, (int)(block / pa.blocks_per_seg));
    const long e0 = row + (a.neox ? i : 2 * i), e1 = row + (a.neox ? i + half_rot : 2 * i + 1);
    const float c = cs[a.cs_off + 2 * i], s = cs[a.cs_off + 2 * i + 1];
    const float x0 = KV_LOAD(k, e0), x1 = KV_LOAD(k, e1);
    const float y0 = x0 * c - x1 * s;
    const float y1 = x0 * s + x1 * c;
    KV_STORE(k, e0, y0);
    KV_STORE(k, e1, y1);
}
