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
