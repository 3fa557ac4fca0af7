/* Model ops on F32 activations: rmsnorm, RoPE (cos/sin table from the host),
 * SwiGLU, add, embedding gather, row gather, and matmul (GEMV for one token,
 * tiles of tokens for many) over F32/F16/BF16/Q8_0/Q4_0 weights and the
 * legacy 4/5-bit, IQ4 and k-quant types (embed_q, matmul_q). Sums are
 * F32; reductions are work-group trees, so a row's result does not depend
 * on the other rows of the batch. */

/* Tree sum over the work-group (ls a power of two); every work-item gets it. */
inline float ops_group_sum(__local float *red, float x, int lid, int ls)
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

/* Work-group per token: y = x / sqrt(mean(x^2) + eps) * w. */
__kernel void rmsnorm(__global const float *x, __global const float *w, __global float *y, kvrt_cl_op_args a,
                      __local float *red)
{
    const int t = get_group_id(0), lid = get_local_id(0), ls = get_local_size(0);
    __global const float *xr = x + a.off[0] + (long)t * a.stride[0];
    __global float *yr = y + a.off[2] + (long)t * a.stride[2];
    float ss = 0.0f;
    for (int i = lid; i < a.dim; i += ls)
        ss += xr[i] * xr[i];
    ss = ops_group_sum(red, ss, lid, ls);
    const float scale = 1.0f / sqrt(ss / (float)a.dim + a.eps);
    for (int i = lid; i < a.dim; i += ls)
        yr[i] = xr[i] * scale * w[a.off[1] + i];
}

/* Work-item per (pair, head, token); positions outside the table are left alone (the host checks them). */
__kernel void rope(__global float *x, __global const int *pos, __global const float *cs, kvrt_cl_op_args a)
{
    const int i = get_global_id(0), h = get_global_id(1), t = get_global_id(2);
    const int n_pairs = a.rot_dim / 2;
    if (i >= n_pairs)
        return;
    const int p = pos[a.off[1] + t];
    if (p < 0 || p >= a.max_pos)
        return;
    __global float *xr = x + a.off[0] + (long)t * a.stride[0] + (long)h * a.head_dim;
    const int ia = a.neox ? i : 2 * i, ib = a.neox ? i + n_pairs : 2 * i + 1;
    const float c = cs[a.off[2] + (long)p * a.rot_dim + 2 * i], s = cs[a.off[2] + (long)p * a.rot_dim + 2 * i + 1];
    const float x0 = xr[ia], x1 = xr[ib];
    xr[ia] = x0 * c - x1 * s;
    xr[ib] = x0 * s + x1 * c;
}

__kernel void swiglu(__global const float *g, __global const float *u, __global float *o, kvrt_cl_op_args a)
{
    const int i = get_global_id(0), t = get_global_id(1);
    if (i >= a.dim)
        return;
    const float gv = g[a.off[0] + (long)t * a.stride[0] + i];
    o[a.off[2] + (long)t * a.stride[2] + i] = gv / (1.0f + exp(-gv)) * u[a.off[1] + (long)t * a.stride[1] + i];
}

/* y[t][i] = x[t][i] + b[i]: a bias row on every token (b's stride is 0). */
__kernel void add_bias(__global const float *x, __global const float *b, __global float *y, kvrt_cl_op_args a)
{
    const int i = get_global_id(0), t = get_global_id(1);
    if (i >= a.dim)
        return;
    y[a.off[2] + (long)t * a.stride[2] + i] = x[a.off[0] + (long)t * a.stride[0] + i] + b[a.off[1] + i];
}

__kernel void add(__global const float *x, __global const float *y, __global float *o, kvrt_cl_op_args a)
{
    const long i = get_global_id(0);
    if (i < a.n)
        o[a.off[2] + i] = x[a.off[0] + i] + y[a.off[1] + i];
}

/* ---- weights in GGUF layouts ----------------------------------------------------
 * F32 rows are floats; F16 and BF16 rows are ushorts; a Q8_0 block is 17
 * ushorts (f16 scale, 32 int8), a Q4_0 block 9 ushorts (f16 scale, 16 bytes:
 * low nibbles are values 0..15, high nibbles 16..31, value (q - 8) * scale).
 * Quantized blocks are read through ushort / uchar pointers, so only 2-byte
 * alignment is needed (a 34- or 18-byte block is never 4-byte aligned). */

inline float w_bf16(ushort h)
{
    return as_float((uint)h << 16);
}

inline float w_half(__global const ushort *p)
{
    return vload_half(0, (__global const half *)p);
}

/* Value i of a quantized row starting at ushort r. */
inline float q8_0_at(__global const ushort *w, long r, int i)
{
    __global const ushort *b = w + r + (long)(i / 32) * 17;
    return w_half(b) * (float)((__global const char *)(b + 1))[i % 32];
}

inline float q4_0_at(__global const ushort *w, long r, int i)
{
    __global const ushort *b = w + r + (long)(i / 32) * 9;
    const int k = i % 32;
    const uchar q = ((__global const uchar *)(b + 1))[k % 16];
    return w_half(b) * (float)((int)(k < 16 ? (q & 15) : (q >> 4)) - 8);
}

/* ---- the types of issue #14 (embed_q, matmul_q: a.wtype is the ggml type id) ----
 * Element i of a row starting at ushort r, decoded element by element in the
 * GGUF block layouts (runtime/common/quant.h): 32-value blocks q4_1 (3), q5_0
 * (6), q5_1 (7), iq4_nl (20); 256-value super-blocks q2_K (10) .. q6_K (14),
 * iq4_xs (23). Block sizes are even, so f16 fields are ushort-aligned. */
/* unfused a * b - c * d, so embed gives the reference dequantizer's floats bit for bit */
#pragma OPENCL FP_CONTRACT OFF

__constant int IQ4_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

inline float q_f16(__global const uchar *b)
{
    return vload_half(0, (__global const half *)b);
}

/* Element k (0..31) of 16 bytes of nibbles: low nibbles 0..15, high 16..31. */
inline int q_nib32(__global const uchar *qs, int k)
{
    const uchar q = qs[k & 15];
    return k < 16 ? (q & 15) : (q >> 4);
}

inline int q_block_bytes(int wt)
{
    switch (wt) {
    case 3: return 20;
    case 6: return 22;
    case 7: return 24;
    case 20: return 18;
    case 10: return 84;
    case 11: return 110;
    case 12: return 144;
    case 13: return 176;
    case 14: return 210;
    default: return 136; /* 23 iq4_xs */
    }
}

inline float q32_at(__global const uchar *b, int wt, int k)
{
    const float d = q_f16(b);
    if (wt == 3) /* q4_1: d, m, qs[16] */
        return (float)q_nib32(b + 4, k) * d + q_f16(b + 2);
    if (wt == 20) /* iq4_nl: d, qs[16] */
        return (float)IQ4_VALUES[q_nib32(b + 2, k)] * d;
    /* q5_0: d, qh[4], qs[16]; q5_1: d, m, qh[4], qs[16] */
    __global const uchar *qh = b + (wt == 6 ? 2 : 4);
    const int q = q_nib32(qh + 4, k) + 16 * ((qh[k / 8] >> (k % 8)) & 1);
    return wt == 6 ? (float)(q - 16) * d : (float)q * d + q_f16(b + 2);
}

/* Element e of a super-block: half h = e / 128, group g = (e / 32) % 4,
 * sub-block s = e / 32, lane l = e % 32. */
inline float qk_at(__global const uchar *b, int wt, int e)
{
    const int h = e / 128, g = (e / 32) % 4, s = e / 32, l = e % 32;
    if (wt == 10) { /* q2_K: scales[16], qs[64], d, dmin */
        const int q = (b[16 + 32 * h + l] >> (2 * g)) & 3;
        const uchar sc = b[e / 16];
        return q_f16(b + 80) * (float)(sc & 15) * (float)q - q_f16(b + 82) * (float)(sc >> 4);
    }
    if (wt == 11) { /* q3_K: hmask[32], qs[64], scales[12], d */
        const int lo = (b[32 + 32 * h + l] >> (2 * g)) & 3, hi = (b[l] >> s) & 1, i = e / 16;
        const int slo = i < 8 ? (b[96 + i] & 15) : (b[88 + i] >> 4);
        const int shi = (b[104 + i % 4] >> (2 * (i / 4))) & 3;
        return q_f16(b + 108) * (float)((slo | (shi << 4)) - 32) * (float)(lo + 4 * hi - 4);
    }
    if (wt == 12 || wt == 13) { /* d, dmin, scales[12], (q5_K: qh[32]), qs[128] */
        __global const uchar *sb = b + 4;
        int sc, m;
        if (s < 4) {
            sc = sb[s] & 63;
            m = sb[s + 4] & 63;
        } else {
            sc = (sb[s + 4] & 15) | ((sb[s - 4] >> 6) << 4);
            m = (sb[s + 4] >> 4) | ((sb[s] >> 6) << 4);
        }
        const uchar byte = b[(wt == 12 ? 16 : 48) + 32 * (s / 2) + l];
        int q = s % 2 ? byte >> 4 : byte & 15;
        if (wt == 13)
            q += 16 * ((b[16 + l] >> s) & 1);
        return q_f16(b) * (float)sc * (float)q - q_f16(b + 2) * (float)m;
    }
    if (wt == 14) { /* q6_K: ql[128], qh[64], int8 scales[16], d */
        const uchar lo = b[64 * h + 32 * (g % 2) + l];
        const int q = (g < 2 ? lo & 15 : lo >> 4) | (((b[128 + 32 * h + l] >> (2 * g)) & 3) << 4);
        return q_f16(b + 208) * (float)((__global const char *)b)[192 + e / 16] * (float)(q - 32);
    }
    /* iq4_xs: d, scales_h, scales_l[4], qs[128] */
    const int sh = b[2] | (b[3] << 8);
    const int ls = ((b[4 + s / 2] >> (4 * (s % 2))) & 15) | (((sh >> (2 * s)) & 3) << 4);
    return q_f16(b) * (float)(ls - 32) * (float)IQ4_VALUES[q_nib32(b + 8 + 16 * s, l)];
}

inline float q_at(__global const ushort *w, long r, long i, int wt)
{
    __global const uchar *row = (__global const uchar *)(w + r);
    const int bytes = q_block_bytes(wt);
    if (wt == 3 || wt == 6 || wt == 7 || wt == 20)
        return q32_at(row + (i / 32) * bytes, wt, (int)(i % 32));
    return qk_at(row + (i / 256) * bytes, wt, (int)(i % 256));
}

/* out[t] = table[ids[t]] for the rows of this launch: a table spanning
 * segments is embedded one segment at a time, rows [stride[3], stride[3] + n)
 * starting at element off[0] of this segment, stride[0] elements apart. ids
 * are checked by the caller; ids of other segments are left to their launch. */
#define EMBED_KERNEL(name, T, AT)                                                                               \
    __kernel void name(__global const T *table, __global const int *ids, __global float *out, kvrt_cl_op_args a) \
    {                                                                                                            \
        const int i = get_global_id(0), t = get_global_id(1);                                                    \
        const long row = (long)ids[a.off[1] + t] - a.stride[3];                                                  \
        if (i < a.dim && row >= 0 && row < a.n) {                                                                \
            const long r = a.off[0] + row * a.stride[0];                                                         \
            out[a.off[2] + (long)t * a.dim + i] = AT;                                                            \
        }                                                                                                        \
    }

EMBED_KERNEL(embed_f32, float, table[r + i])
EMBED_KERNEL(embed_f16, ushort, w_half(table + r + i))
EMBED_KERNEL(embed_bf16, ushort, w_bf16(table[r + i]))
EMBED_KERNEL(embed_q8_0, ushort, q8_0_at(table, r, i))
EMBED_KERNEL(embed_q4_0, ushort, q4_0_at(table, r, i))
EMBED_KERNEL(embed_q, ushort, q_at(table, r, i, a.wtype))

/* dst[r] = src[idx[r]], one segment of src rows per launch (as embed): rows
 * [stride[3], stride[3] + n) start at element off[0], stride[0] apart. */
__kernel void gather_rows(__global const float *src, __global const int *idx, __global float *dst,
                          kvrt_cl_op_args a)
{
    const int i = get_global_id(0), r = get_global_id(1);
    const long row = (long)idx[a.off[1] + r] - a.stride[3];
    if (i < a.dim && row >= 0 && row < a.n)
        dst[a.off[2] + (long)r * a.stride[2] + i] = src[a.off[0] + row * a.stride[0] + i];
}

/* ---- matmul ----------------------------------------------------------------------
 * Work-group per (output row, tile of MM_TT tokens): each weight value is read
 * once per tile and multiplied into up to MM_TT token rows (one token: a
 * GEMV; a prompt: MM_TT times less weight traffic). Work-items stride over the
 * row (dense types: values; quantized types: 32-value blocks), then the MM_TT
 * partial sums are reduced as trees. Sums are F32. The row length a.n is a
 * multiple of 32 for quantized types (checked by the host). */
#define MM_TT 8

inline void mm_reduce_store(__local float *red, float *acc, int nt, __global float *y, kvrt_cl_op_args a, int o,
                            int t0)
{
    const int lid = get_local_id(0), ls = get_local_size(0);
    for (int t = 0; t < MM_TT; t++)
        red[t * ls + lid] = acc[t];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = ls / 2; h > 0; h >>= 1) {
        if (lid < h) {
            for (int t = 0; t < MM_TT; t++)
                red[t * ls + lid] += red[t * ls + lid + h];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        for (int t = 0; t < nt; t++)
            y[a.off[2] + (long)(t0 + t) * a.stride[2] + o] = red[t * ls];
    }
}

/* Dense types: work-item per value (coalesced). */
#define MATMUL_DENSE(name, T, AT)                                                                                 \
    __kernel void name(__global const T *w, __global const float *x, __global float *y, kvrt_cl_op_args a,        \
                       __local float *red)                                                                        \
    {                                                                                                             \
        const int o = get_group_id(0), t0 = get_group_id(1) * MM_TT, lid = get_local_id(0), ls = get_local_size(0); \
        const int nt = min(MM_TT, a.rows - t0);                                                                   \
        const long r = a.off[0] + (long)o * a.stride[0];                                                          \
        __global const float *xr = x + a.off[1] + (long)t0 * a.stride[1];                                         \
        float acc[MM_TT];                                                                                         \
        for (int t = 0; t < MM_TT; t++)                                                                           \
            acc[t] = 0.0f;                                                                                        \
        for (long i = lid; i < a.n; i += ls) {                                                                    \
            const float wv = AT;                                                                                  \
            for (int t = 0; t < MM_TT; t++) {                                                                     \
                if (t < nt)                                                                                       \
                    acc[t] += wv * xr[(long)t * a.stride[1] + i];                                                 \
            }                                                                                                     \
        }                                                                                                         \
        mm_reduce_store(red, acc, nt, y, a, o, t0);                                                               \
    }

MATMUL_DENSE(matmul_f32, float, w[r + i])
MATMUL_DENSE(matmul_f16, ushort, w_half(w + r + i))
MATMUL_DENSE(matmul_bf16, ushort, w_bf16(w[r + i]))
MATMUL_DENSE(matmul_q, ushort, q_at(w, r, i, a.wtype)) /* issue #14's types, value by value */

/* Quantized types: work-item per 32-value block; QV(k) is value k of block b. */
#define MATMUL_QUANT(name, BU, QV)                                                                                \
    __kernel void name(__global const ushort *w, __global const float *x, __global float *y, kvrt_cl_op_args a,   \
                       __local float *red)                                                                        \
    {                                                                                                             \
        const int o = get_group_id(0), t0 = get_group_id(1) * MM_TT, lid = get_local_id(0), ls = get_local_size(0); \
        const int nt = min(MM_TT, a.rows - t0);                                                                   \
        __global const ushort *wr = w + a.off[0] + (long)o * a.stride[0];                                         \
        __global const float *xr = x + a.off[1] + (long)t0 * a.stride[1];                                         \
        float acc[MM_TT];                                                                                         \
        for (int t = 0; t < MM_TT; t++)                                                                           \
            acc[t] = 0.0f;                                                                                        \
        const int nb = (int)(a.n / 32);                                                                           \
        for (int b = lid; b < nb; b += ls) {                                                                      \
            __global const ushort *blk = wr + (long)b * BU;                                                       \
            __global const uchar *qs = (__global const uchar *)(blk + 1);                                         \
            const float d = w_half(blk);                                                                          \
            float part[MM_TT];                                                                                    \
            for (int t = 0; t < MM_TT; t++)                                                                       \
                part[t] = 0.0f;                                                                                   \
            for (int k = 0; k < 32; k++) {                                                                        \
                const float qv = QV;                                                                              \
                for (int t = 0; t < MM_TT; t++) {                                                                 \
                    if (t < nt)                                                                                   \
                        part[t] += qv * xr[(long)t * a.stride[1] + b * 32 + k];                                   \
                }                                                                                                 \
            }                                                                                                     \
            for (int t = 0; t < MM_TT; t++)                                                                       \
                acc[t] += d * part[t];                                                                            \
        }                                                                                                         \
        mm_reduce_store(red, acc, nt, y, a, o, t0);                                                               \
    }

MATMUL_QUANT(matmul_q8_0, 17, (float)((__global const char *)qs)[k])
MATMUL_QUANT(matmul_q4_0, 9, (float)((int)(k < 16 ? (qs[k] & 15) : (qs[k - 16] >> 4)) - 8))
