/* Paged attention (DESIGN.md "Kernels"): decode with split-K over fixed-size
 * partitions merged by log-sum-exp, and tiled prefill with an online softmax.
 * Query at position i sees key j iff j <= i and (W == 0 or i - j < W or j < S).
 * K/V may be F16, q8_0 or q4_0 in storage (each its own type, dequantized
 * on the fly by kv_load); every sum is F32. */

#define NEG_INF (-INFINITY)

inline bool attn_visible(int i, int j, int window, int sinks)
{
    return j <= i && (window == 0 || i - j < window || j < sinks);
}

/* Context length clamped to what the block table can address, so a bad
 * seq_lens entry cannot send a kernel past its scratch or the table. */
inline int attn_seq_len(__global const int *seq_lens, kvrt_cl_pool_args pa, kvrt_cl_attn_args a, int s)
{
    return min(seq_lens[a.seq_lens_off + s], a.max_blocks_per_seq * pa.block_size);
}

/* Block holding key j of sequence s, or -1 when the table has none there. */
inline int attn_block(__global const int *bt, kvrt_cl_pool_args pa, kvrt_cl_attn_args a, int s, int j)
{
    const int b = bt[a.bt_off + (long)s * a.max_blocks_per_seq + j / pa.block_size];
    return b >= 0 && b < pa.num_blocks ? b : -1;
}

/* Work-group reductions; every work-item gets the result. ls is a power of two. */
inline float group_max(__local float *red, float x, int lid, int ls)
{
    red[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int o = ls / 2; o > 0; o >>= 1) {
        if (lid < o)
            red[lid] = fmax(red[lid], red[lid + o]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float group_sum(__local float *red, float x, int lid, int ls)
{
    red[lid] = x;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int o = ls / 2; o > 0; o >>= 1) {
        if (lid < o)
            red[lid] += red[lid + o];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/* Output d of head h: to out with one partition, else to the partition's scratch row. */
inline void decode_store(__global float *out, __global float *part, kvrt_cl_attn_args a, int s, int h, int p,
                         int n_parts, int D, int d, float o)
{
    if (n_parts == 1)
        out[a.o_off + (long)s * a.o_stride + (long)h * D + d] = o;
    else
        part[(((long)s * a.n_heads + h) * a.max_parts + p) * D + d] = o;
}

/* ---- decode ------------------------------------------------------------------------
 * Work-group (partition, kv head, sequence) with all G query heads of the
 * group. Partition p covers keys [p * PART, (p + 1) * PART) of the context.
 * With one partition the result goes straight to out; otherwise each
 * partition writes its normalised output and (max, sum) to the scratch and
 * attn_decode_merge combines them. */
__kernel void attn_decode(__global const float *q, __global float *out, __global const int *seq_lens,
                          __global const int *bt, KV_SEGS(__global const, kp), KV_SEGS(__global const, vp),
                          __global float *part, kvrt_cl_pool_args pa, kvrt_cl_attn_args a,
                          __local float *q_l,   /* [G][D] */
                          __local float *s_l,   /* [G][PART]: scores, then probabilities */
                          __local int *blk_l,   /* [PART][2]: segment (-1 = masked) and row of each key */
                          __local float *ml_l,  /* [G][2]: max, sum */
                          __local float *red,   /* [local size] */
                          __local float *vp_l)  /* [min(G, GCHUNK)][n_kg][D]: V partial sums */
{
    const int p = get_group_id(0);
    const int kvh = get_global_id(1);
    const int s = get_global_id(2);
    const int lid = get_local_id(0), ls = get_local_size(0);
    const int D = pa.head_dim, G = a.n_heads / pa.n_kv_heads;
    const int L = attn_seq_len(seq_lens, pa, a, s);
    const int n_parts = (L + KVRT_CL_DECODE_PART - 1) / KVRT_CL_DECODE_PART;
    if (L <= 0 || p >= n_parts)
        return; /* the whole work-group leaves together */
    const int i = L - 1;
    const int j0 = p * KVRT_CL_DECODE_PART, n = min(L - j0, KVRT_CL_DECODE_PART);
    const long q_row = a.q_off + (long)s * a.q_stride + (long)kvh * G * D;

    for (int e = lid; e < G * D; e += ls)
        q_l[e] = q[q_row + e];
    barrier(CLK_LOCAL_MEM_FENCE);

    /* key jj: its segment (-1 = masked) and its row inside the segment, kept
     * for the V pass so no work-item divides per (key, d) */
    for (int jj = lid; jj < n; jj += ls) {
        const int j = j0 + jj;
        const int blk = attn_visible(i, j, a.window, a.sinks) ? attn_block(bt, pa, a, s, j) : -1;
        if (blk < 0) {
            blk_l[2 * jj] = -1;
            for (int g = 0; g < G; g++)
                s_l[g * KVRT_CL_DECODE_PART + jj] = NEG_INF;
            continue;
        }
        const int seg = (int)(blk / pa.blocks_per_seg);
        const int row = (int)(((long)blk % pa.blocks_per_seg * pa.n_kv_heads + kvh) * pa.block_size + j % pa.block_size);
        blk_l[2 * jj] = seg;
        blk_l[2 * jj + 1] = row;
        __global const uchar *kseg = KV_SEG_PICK(kp, seg);
        for (int g0 = 0; g0 < G; g0 += KVRT_CL_DECODE_GCHUNK) {
            float acc[KVRT_CL_DECODE_GCHUNK];
            const int ng = min(G - g0, KVRT_CL_DECODE_GCHUNK);
            for (int g = 0; g < KVRT_CL_DECODE_GCHUNK; g++)
                acc[g] = 0.0f;
            int d = 0;
            for (; d + 4 <= D; d += 4) { /* 4-wide loads: fewer conversions and address computations */
                const float4 k4 = kv_load4(kseg, KVRT_KV_K, pa, row, d);
                for (int g = 0; g < ng; g++)
                    acc[g] += dot(vload4(0, q_l + (g0 + g) * D + d), k4);
            }
            for (; d < D; d++) {
                const float kd = kv_load(kseg, KVRT_KV_K, pa, row, d);
                for (int g = 0; g < ng; g++)
                    acc[g] += q_l[(g0 + g) * D + d] * kd;
            }
            for (int g = 0; g < ng; g++)
                s_l[(g0 + g) * KVRT_CL_DECODE_PART + jj] = acc[g] * a.scale;
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    for (int g = 0; g < G; g++) {
        __local float *sg = s_l + g * KVRT_CL_DECODE_PART;
        float m = NEG_INF;
        for (int jj = lid; jj < n; jj += ls)
            m = fmax(m, sg[jj]);
        m = group_max(red, m, lid, ls);
        float sum = 0.0f;
        for (int jj = lid; jj < n; jj += ls) {
            const float e = m == NEG_INF ? 0.0f : exp(sg[jj] - m);
            sg[jj] = e;
            sum += e;
        }
        sum = group_sum(red, sum, lid, ls);
        if (lid == 0) {
            ml_l[2 * g] = m;
            ml_l[2 * g + 1] = sum;
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    /* V pass: a work-item owns 4 consecutive d (a 4-wide load per key) and one
     * of n_kg key groups; with several key groups their partial sums meet in
     * vp_l ([GCHUNK][n_kg][D], n_kg * D <= 4 * ls) and are added up there. */
    const int n_chunks = (D + 3) / 4, n_kg = max(ls / n_chunks, 1), units = n_chunks * n_kg;
    for (int g0 = 0; g0 < G; g0 += KVRT_CL_DECODE_GCHUNK) {
        const int ng = min(G - g0, KVRT_CL_DECODE_GCHUNK);
        float4 acc[KVRT_CL_DECODE_GCHUNK];
        for (int u = lid; u < units; u += ls) {
            const int c = u % n_chunks, kg = u / n_chunks, d0 = 4 * c;
            for (int g = 0; g < KVRT_CL_DECODE_GCHUNK; g++)
                acc[g] = (float4)(0.0f);
            for (int jj = kg; jj < n; jj += n_kg) {
                const int seg = blk_l[2 * jj];
                if (seg < 0)
                    continue;
                __global const uchar *vseg = KV_SEG_PICK(vp, seg);
                const long vrow = blk_l[2 * jj + 1];
                float4 v4;
                if (d0 + 4 <= D) {
                    v4 = kv_load4(vseg, KVRT_KV_V, pa, vrow, d0);
                } else { /* F32/F16 only: quantized head_dims are multiples of 32 */
                    v4 = (float4)(kv_load(vseg, KVRT_KV_V, pa, vrow, d0),
                                  d0 + 1 < D ? kv_load(vseg, KVRT_KV_V, pa, vrow, d0 + 1) : 0.0f,
                                  d0 + 2 < D ? kv_load(vseg, KVRT_KV_V, pa, vrow, d0 + 2) : 0.0f, 0.0f);
                }
                for (int g = 0; g < ng; g++)
                    acc[g] += s_l[(g0 + g) * KVRT_CL_DECODE_PART + jj] * v4;
            }
            if (n_kg == 1) {
                for (int g = 0; g < ng; g++) {
                    const float l = ml_l[2 * (g0 + g) + 1];
                    const float4 o = l > 0.0f ? acc[g] / l : (float4)(0.0f);
                    const float ov[4] = {o.x, o.y, o.z, o.w};
                    for (int k = 0; k < 4 && d0 + k < D; k++)
                        decode_store(out, part, a, s, kvh * G + g0 + g, p, n_parts, D, d0 + k, ov[k]);
                }
            } else { /* units <= ls: this is the work-item's only unit */
                for (int g = 0; g < ng; g++) {
                    const float av[4] = {acc[g].x, acc[g].y, acc[g].z, acc[g].w};
                    for (int k = 0; k < 4 && d0 + k < D; k++)
                        vp_l[(g * n_kg + kg) * D + d0 + k] = av[k];
                }
            }
        }
        if (n_kg > 1) {
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int e = lid; e < ng * D; e += ls) {
                const int g = e / D, d = e - g * D;
                float sum = 0.0f;
                for (int kg = 0; kg < n_kg; kg++)
                    sum += vp_l[(g * n_kg + kg) * D + d];
                const float l = ml_l[2 * (g0 + g) + 1];
                decode_store(out, part, a, s, kvh * G + g0 + g, p, n_parts, D, d, l > 0.0f ? sum / l : 0.0f);
            }
            barrier(CLK_LOCAL_MEM_FENCE); /* vp_l is reused by the next chunk of heads */
        }
    }
    if (n_parts > 1 && lid == 0) {
        for (int g = 0; g < G; g++) {
            const long idx = ((long)s * a.n_heads + kvh * G + g) * a.max_parts + p;
            part[a.part_ml_off + 2 * idx] = ml_l[2 * g];
            part[a.part_ml_off + 2 * idx + 1] = ml_l[2 * g + 1];
        }
    }
}

/* One work-item per (d, query head, sequence): out = sum_p w_p o_p / sum_p w_p
 * with w_p = sum_p * exp(max_p - max). */
__kernel void attn_decode_merge(__global float *out, __global const int *seq_lens, __global const float *part,
                                kvrt_cl_pool_args pa, kvrt_cl_attn_args a)
{
    const int d = get_global_id(0), h = get_global_id(1), s = get_global_id(2);
    if (d >= pa.head_dim)
        return;
    const int L = attn_seq_len(seq_lens, pa, a, s);
    const int n_parts = (L + KVRT_CL_DECODE_PART - 1) / KVRT_CL_DECODE_PART;
    if (n_parts <= 1)
        return; /* written by attn_decode */
    const long base = ((long)s * a.n_heads + h) * a.max_parts;
    float m = NEG_INF;
    for (int p = 0; p < n_parts; p++) {
        if (part[a.part_ml_off + 2 * (base + p) + 1] > 0.0f)
            m = fmax(m, part[a.part_ml_off + 2 * (base + p)]);
    }
    float num = 0.0f, den = 0.0f;
    for (int p = 0; p < n_parts; p++) {
        const float l = part[a.part_ml_off + 2 * (base + p) + 1];
        if (l > 0.0f) {
            const float w = l * exp(part[a.part_ml_off + 2 * (base + p)] - m);
            num += w * part[(base + p) * pa.head_dim + d];
            den += w;
        }
    }
    out[a.o_off + (long)s * a.o_stride + (long)h * pa.head_dim + d] = den > 0.0f ? num / den : 0.0f;
}

/* ---- prefill -------------------------------------------------------------------------
 * Work-group (query tile, query head, sequence): T queries of one head against
 * key tiles of T keys, K/V tiles in local memory, online softmax. The grid
 * covers the most tiles a sequence can have; surplus work-groups leave. */
__kernel void attn_prefill(__global const float *q, __global float *out, __global const int *seq_lens,
                           __global const int *bt, __global const int *qsl, KV_SEGS(__global const, kp),
                           KV_SEGS(__global const, vp), kvrt_cl_pool_args pa, kvrt_cl_attn_args a,
                           __local float *q_l,   /* [T][D] */
                           __local float *k_l,   /* [T][D] */
                           __local float *v_l,   /* [T][D] */
                           __local float *o_l,   /* [T][D]: unnormalised output */
                           __local float *s_l,   /* [T][T]: scores, then probabilities */
                           __local float *st_l,  /* [3][T]: running max, running sum, rescale */
                           __local int *kb_l)    /* [T][2]: segment (-1 = none) and row of each key of the tile */
{
    const int tile = get_group_id(0);
    const int h = get_global_id(1);
    const int s = get_global_id(2);
    const int lid = get_local_id(0), ls = get_local_size(0);
    const int D = pa.head_dim, T = a.tile, kvh = h / (a.n_heads / pa.n_kv_heads);
    const int q_start = qsl[a.qsl_off + s];
    const int n_new = qsl[a.qsl_off + s + 1] - q_start;
    const int L = attn_seq_len(seq_lens, pa, a, s);
    const int t0 = tile * T;
    if (n_new <= 0 || t0 >= n_new || n_new > L)
        return;
    const int nq = min(T, n_new - t0);
    const int pos0 = L - n_new + t0, last = pos0 + nq - 1;
    const long q_base = a.q_off + (long)(q_start + t0) * a.q_stride + (long)h * D;
    const long o_base = a.o_off + (long)(q_start + t0) * a.o_stride + (long)h * D;
    /* rows past the segment (more tokens than the buffer holds) are not touched */
    const bool rows_ok = q_base + (long)(nq - 1) * a.q_stride + D <= a.q_end &&
                         o_base + (long)(nq - 1) * a.o_stride + D <= a.o_end;
    if (!rows_ok)
        return;

    for (int e = lid; e < T * D; e += ls) {
        const int qi = e / D;
        q_l[e] = qi < nq ? q[q_base + (long)qi * a.q_stride + (e - qi * D)] : 0.0f;
        o_l[e] = 0.0f;
    }
    for (int qi = lid; qi < T; qi += ls) {
        st_l[qi] = NEG_INF;
        st_l[T + qi] = 0.0f;
    }
    barrier(CLK_LOCAL_MEM_FENCE);

    for (int k0 = 0; k0 <= last; k0 += T) {
        /* a tile past the window of every query of this tile (and past the sinks) is skipped */
        if (a.window > 0 && k0 >= a.sinks && pos0 - (k0 + T - 1) >= a.window)
            continue;
        for (int kj = lid; kj < T; kj += ls) {
            const int j = k0 + kj;
            /* key j is needed if some query of the tile sees it; the first that could is max(j, pos0) */
            const bool needed = j <= last && attn_visible(max(j, pos0), j, a.window, a.sinks);
            const int blk = needed ? attn_block(bt, pa, a, s, j) : -1;
            /* segment (-1 = none) and row inside it, once per key rather than per element */
            kb_l[2 * kj] = blk < 0 ? -1 : (int)(blk / pa.blocks_per_seg);
            kb_l[2 * kj + 1] = blk < 0 ? 0
                                       : (int)(((long)blk % pa.blocks_per_seg * pa.n_kv_heads + kvh) * pa.block_size +
                                               j % pa.block_size);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = lid; e < T * D; e += ls) {
            const int kj = e / D, d = e - kj * D;
            const int seg = kb_l[2 * kj];
            float kv = 0.0f, vv = 0.0f;
            if (seg >= 0) {
                const long r = kb_l[2 * kj + 1];
                kv = kv_load(KV_SEG_PICK(kp, seg), KVRT_KV_K, pa, r, d);
                vv = kv_load(KV_SEG_PICK(vp, seg), KVRT_KV_V, pa, r, d);
            }
            k_l[e] = kv;
            v_l[e] = vv;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = lid; e < T * T; e += ls) {
            const int qi = e / T, kj = e - qi * T;
            const int j = k0 + kj;
            float sc = NEG_INF;
            if (qi < nq && kb_l[2 * kj] >= 0 && attn_visible(pos0 + qi, j, a.window, a.sinks)) {
                float acc = 0.0f;
                int d = 0;
                for (; d + 4 <= D; d += 4)
                    acc += dot(vload4(0, q_l + qi * D + d), vload4(0, k_l + kj * D + d));
                for (; d < D; d++)
                    acc += q_l[qi * D + d] * k_l[kj * D + d];
                sc = acc * a.scale;
            }
            s_l[e] = sc;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int qi = lid; qi < T; qi += ls) {
            const float m_old = st_l[qi];
            float m = m_old;
            for (int kj = 0; kj < T; kj++)
                m = fmax(m, s_l[qi * T + kj]);
            float sum = 0.0f;
            for (int kj = 0; kj < T; kj++) {
                const float e = m == NEG_INF ? 0.0f : exp(s_l[qi * T + kj] - m);
                s_l[qi * T + kj] = e;
                sum += e;
            }
            const float alpha = m == NEG_INF ? 1.0f : exp(m_old - m);
            st_l[qi] = m;
            st_l[T + qi] = st_l[T + qi] * alpha + sum;
            st_l[2 * T + qi] = alpha;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int e = lid; e < T * D; e += ls) {
            const int qi = e / D, d = e - qi * D;
            float acc = o_l[e] * st_l[2 * T + qi];
            for (int kj = 0; kj < T; kj++)
                acc += s_l[qi * T + kj] * v_l[kj * D + d];
            o_l[e] = acc;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    for (int e = lid; e < nq * D; e += ls) {
        const int qi = e / D;
        const float l = st_l[T + qi];
        out[o_base + (long)qi * a.o_stride + (e - qi * D)] = l > 0.0f ? o_l[e] / l : 0.0f;
    }
}
