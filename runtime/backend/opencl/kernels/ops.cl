/* Model ops on F32 activations: rmsnorm, RoPE (cos/sin table from the host),
 * SwiGLU, add, embedding gather, row gather, argmax, and GEMV-style matmul
 * over F32/F16 weights. Sums are F32; reductions are work-group trees, so a
 * row's result does not depend on the other rows of the batch. */

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

__kernel void add(__global const float *x, __global const float *y, __global float *o, kvrt_cl_op_args a)
{
    const long i = get_global_id(0);
    if (i < a.n)
        o[a.off[2] + i] = x[a.off[0] + i] + y[a.off[1] + i];
}

/* out[t] = table[ids[t]]. ids are checked by the caller; a row past the table's
 * allocation (a.n elements from its start) is still never read. */
__kernel void embed_f32(__global const float *table, __global const int *ids, __global float *out,
                        kvrt_cl_op_args a)
{
    const int i = get_global_id(0), t = get_global_id(1);
    const long row = ids[a.off[1] + t];
    if (i < a.dim && row >= 0 && (row + 1) * a.dim <= a.n)
        out[a.off[2] + (long)t * a.dim + i] = table[a.off[0] + row * a.dim + i];
}

__kernel void embed_f16(__global const half *table, __global const int *ids, __global float *out,
                        kvrt_cl_op_args a)
{
    const int i = get_global_id(0), t = get_global_id(1);
    const long row = ids[a.off[1] + t];
    if (i < a.dim && row >= 0 && (row + 1) * a.dim <= a.n)
        out[a.off[2] + (long)t * a.dim + i] = vload_half(a.off[0] + row * a.dim + i, table);
}

/* dst[r] = src[idx[r]]; rows past src's allocation (a.n elements) are never read. */
__kernel void gather_rows(__global const float *src, __global const int *idx, __global float *dst,
                          kvrt_cl_op_args a)
{
    const int i = get_global_id(0), r = get_global_id(1);
    const long row = idx[a.off[1] + r];
    if (i < a.dim && row >= 0 && row * a.stride[0] + a.dim <= a.n)
        dst[a.off[2] + (long)r * a.stride[2] + i] = src[a.off[0] + row * a.stride[0] + i];
}

/* Work-group per row: the largest value, lowest index on ties. */
__kernel void argmax(__global const float *x, __global int *out, kvrt_cl_op_args a, __local float *val,
                     __local int *arg)
{
    const int r = get_group_id(0), lid = get_local_id(0), ls = get_local_size(0);
    __global const float *xr = x + a.off[0] + (long)r * a.stride[0];
    float best = -INFINITY;
    int at = -1;
    for (int i = lid; i < a.n; i += ls) {
        if (at < 0 || xr[i] > best) {
            best = xr[i];
            at = i;
        }
    }
    val[lid] = best;
    arg[lid] = at;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int o = ls / 2; o > 0; o >>= 1) {
        if (lid < o) {
            const int j = arg[lid + o];
            if (j >= 0 && (arg[lid] < 0 || val[lid + o] > val[lid] || (val[lid + o] == val[lid] && j < arg[lid]))) {
                val[lid] = val[lid + o];
                arg[lid] = j;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        out[a.off[1] + r] = arg[0] < 0 ? 0 : arg[0];
}

/* Work-group per (output row, token): y[t][o] = dot(W[o], x[t]). */
__kernel void matmul_f32(__global const float *w, __global const float *x, __global float *y, kvrt_cl_op_args a,
                         __local float *red)
{
    const int o = get_group_id(0), t = get_global_id(1), lid = get_local_id(0), ls = get_local_size(0);
    __global const float *wr = w + a.off[0] + (long)o * a.n;
    __global const float *xr = x + a.off[1] + (long)t * a.stride[1];
    float acc = 0.0f;
    for (long i = lid; i < a.n; i += ls)
        acc += wr[i] * xr[i];
    acc = ops_group_sum(red, acc, lid, ls);
    if (lid == 0)
        y[a.off[2] + (long)t * a.stride[2] + o] = acc;
}

__kernel void matmul_f16(__global const half *w, __global const float *x, __global float *y, kvrt_cl_op_args a,
                         __local float *red)
{
    const int o = get_group_id(0), t = get_global_id(1), lid = get_local_id(0), ls = get_local_size(0);
    const long wr = a.off[0] + (long)o * a.n;
    __global const float *xr = x + a.off[1] + (long)t * a.stride[1];
    float acc = 0.0f;
    for (long i = lid; i < a.n; i += ls)
        acc += vload_half(wr + i, w) * xr[i];
    acc = ops_group_sum(red, acc, lid, ls);
    if (lid == 0)
        y[a.off[2] + (long)t * a.stride[2] + o] = acc;
}
