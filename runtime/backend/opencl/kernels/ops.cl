/* Model ops on F32 activations: rmsnorm, RoPE (cos/sin table from the host),
 * SwiGLU, add, embedding gather, row gather, and matmul (GEMV for one token,
 * tiles of tokens for many) over F32/F16/BF16/Q8_0/Q4_0 weights. Sums are
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
