/* The model ops on OpenCL (F32 activations): views to (cl_mem, element
 * offset), the device's 32-bit limits, launch shapes (the front door checked
 * the arguments). Kernels in kernels/ops.cl.
 * Weights and embedding tables may span segments: their buffers get
 * row-aligned segments on first use and the op runs one dispatch per
 * segment's rows. Activations must sit in one segment each. */
#include "backend/opencl/cl_internal.h"

enum {
    CL_K_RMSNORM = 0, CL_K_ROPE, CL_K_SWIGLU, CL_K_ADD, CL_K_GATHER,
    CL_K_EMBED_F32, CL_K_EMBED_F16, CL_K_EMBED_BF16, CL_K_EMBED_Q8_0, CL_K_EMBED_Q4_0,
    CL_K_MATMUL_F32, CL_K_MATMUL_F16, CL_K_MATMUL_BF16, CL_K_MATMUL_Q8_0, CL_K_MATMUL_Q4_0, CL_K_ADD_BIAS,
    CL_K_EMBED_Q, CL_K_MATMUL_Q /* issue #14's types: args.wtype picks the layout */
};

/* Tokens per matmul work-group (MM_TT in ops.cl). */
#define CL_MM_TT 8

/* How the kernels address a weight type: in units of `unit` bytes (float or
 * ushort), `block` values per block of `block_units` units (GGUF layouts). */
typedef struct cl_wtype {
    kvrt_dtype type;
    size_t unit;
    int32_t block;
    int32_t block_units;
    int embed_kernel, matmul_kernel;
} cl_wtype;

static const cl_wtype cl_wtypes[] = {
    {KVRT_DTYPE_F32, 4, 1, 1, CL_K_EMBED_F32, CL_K_MATMUL_F32},
    {KVRT_DTYPE_F16, 2, 1, 1, CL_K_EMBED_F16, CL_K_MATMUL_F16},
    {KVRT_DTYPE_BF16, 2, 1, 1, CL_K_EMBED_BF16, CL_K_MATMUL_BF16},
    {KVRT_DTYPE_Q8_0, 2, 32, 17, CL_K_EMBED_Q8_0, CL_K_MATMUL_Q8_0},
    {KVRT_DTYPE_Q4_0, 2, 32, 9, CL_K_EMBED_Q4_0, CL_K_MATMUL_Q4_0},
    {KVRT_DTYPE_Q4_1, 2, 32, 10, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_Q5_0, 2, 32, 11, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_Q5_1, 2, 32, 12, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_IQ4_NL, 2, 32, 9, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_Q2_K, 2, 256, 42, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_Q3_K, 2, 256, 55, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_Q4_K, 2, 256, 72, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_Q5_K, 2, 256, 88, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_Q6_K, 2, 256, 105, CL_K_EMBED_Q, CL_K_MATMUL_Q},
    {KVRT_DTYPE_IQ4_XS, 2, 256, 68, CL_K_EMBED_Q, CL_K_MATMUL_Q},
};

#define CL_OPS_LOCAL 64

/* Work-group size of the reduction kernels: a power of two up to 64 within the device limit. */
static size_t cl_ops_local(const kvrt_cl_backend *cl)
{
    size_t ls = 1;
    while (ls * 2 <= KVRT_MIN((size_t)CL_OPS_LOCAL, cl->max_wg))
        ls *= 2;
    return ls;
}

static kvrt_status cl_count(kvrt_cl_backend *cl, int64_t n, int64_t min, const char *what)
{
    if (n < min || n > INT32_MAX)
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT, "opencl: %s = %lld outside [%lld, %d]", what,
                         (long long)n, (long long)min, INT32_MAX);
    return KVRT_OK;
}

/* Resolves rows of `row` elements (of elem bytes) `stride` apart; n rows may be 0. */
static kvrt_status cl_rows(kvrt_cl_backend *cl, kvrt_view v, int64_t n, int64_t stride, int64_t row, size_t elem,
                           const char *what, cl_mem *mem, int64_t *off)
{
    int64_t span = 0;
    if (stride < row || (n > 0 && (!kvrt_mul_i64(n - 1, stride, &span) || span > INT64_MAX / 8 - row)))
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT,
                         "opencl: %s: stride %lld below the row length %lld or too large", what, (long long)stride,
                         (long long)row);
    size_t bytes = n > 0 ? (size_t)(span + row) * elem : elem;
    return kvrt_cl_resolve(cl, v, bytes, elem, what, mem, off);
}

static size_t cl_round_up(size_t n, size_t m)
{
    return (n + m - 1) / m * m;
}

/* Gets the kernel, sets three buffers, the argument block and optional local arrays, enqueues. */
static kvrt_status cl_run(kvrt_cl_backend *cl, int kernel, cl_mem m[3], const kvrt_cl_op_args *a,
                          const size_t *locals, int n_locals, int dims, const size_t *global, const size_t *local,
                          const char *what)
{
    cl_kernel k;
    KVRT_TRY(kvrt_cl_kernel(cl, KVRT_CL_PROG_OPS, KVRT_CL_VARIANT_F32, kernel, &k));
    kvrt_cl_arg args[6] = {{sizeof(cl_mem), &m[0]}, {sizeof(cl_mem), &m[1]}, {sizeof(cl_mem), &m[2]},
                           {sizeof(*a), a}};
    int n = 4;
    for (int i = 0; i < n_locals; i++)
        args[n++] = (kvrt_cl_arg){locals[i], NULL};
    KVRT_TRY(kvrt_cl_set_args(cl, k, args, n, what));
    return kvrt_cl_enqueue(cl, k, dims, global, local, what);
}

kvrt_status kvrt_cl_rmsnorm(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w, kvrt_view y,
                            int64_t y_stride, int32_t n_tokens, int32_t dim, float eps)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_count(cl, n_tokens, 0, "rmsnorm: n_tokens"));
    KVRT_TRY(cl_count(cl, dim, 1, "rmsnorm: dim"));
    kvrt_cl_op_args a = {.stride = {x_stride, 0, y_stride}, .rows = n_tokens, .dim = dim, .eps = eps};
    cl_mem m[3];
    KVRT_TRY(cl_rows(cl, x, n_tokens, x_stride, dim, 4, "rmsnorm: x", &m[0], &a.off[0]));
    KVRT_TRY(cl_rows(cl, w, 1, dim, dim, 4, "rmsnorm: weight", &m[1], &a.off[1]));
    KVRT_TRY(cl_rows(cl, y, n_tokens, y_stride, dim, 4, "rmsnorm: y", &m[2], &a.off[2]));
    size_t ls = cl_ops_local(cl), locals[1] = {ls * 4};
    size_t global[1] = {(size_t)n_tokens * ls};
    return cl_run(cl, CL_K_RMSNORM, m, &a, locals, 1, 1, global, &ls, "rmsnorm");
}

kvrt_status kvrt_cl_rope(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                         const kvrt_rope_desc *d)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    kvrt_cl_op_args a = {.stride = {d->stride}, .rows = d->n_tokens, .n_heads = d->n_heads,
                         .head_dim = d->head_dim, .rot_dim = d->rot_dim, .neox = d->neox, .max_pos = d->max_pos};
    cl_mem m[3];
    KVRT_TRY(cl_rows(cl, x, d->n_tokens, d->stride, (int64_t)d->n_heads * d->head_dim, 4, "rope: x", &m[0],
                     &a.off[0]));
    KVRT_TRY(cl_rows(cl, positions, 1, d->n_tokens, KVRT_MAX(d->n_tokens, 1), 4, "rope: positions", &m[1],
                     &a.off[1]));
    KVRT_TRY(cl_rows(cl, cos_sin, d->max_pos, d->rot_dim, d->rot_dim, 4, "rope: cos/sin table", &m[2],
                     &a.off[2]));
    size_t global[3] = {(size_t)d->rot_dim / 2, (size_t)d->n_heads, (size_t)d->n_tokens};
    return cl_run(cl, CL_K_ROPE, m, &a, NULL, 0, 3, global, NULL, "rope");
}

kvrt_status kvrt_cl_swiglu(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up, int64_t up_stride,
                           kvrt_view out, int64_t out_stride, int32_t n_tokens, int32_t dim)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_count(cl, n_tokens, 0, "swiglu: n_tokens"));
    KVRT_TRY(cl_count(cl, dim, 1, "swiglu: dim"));
    kvrt_cl_op_args a = {.stride = {gate_stride, up_stride, out_stride}, .rows = n_tokens, .dim = dim};
    cl_mem m[3];
    KVRT_TRY(cl_rows(cl, gate, n_tokens, gate_stride, dim, 4, "swiglu: gate", &m[0], &a.off[0]));
    KVRT_TRY(cl_rows(cl, up, n_tokens, up_stride, dim, 4, "swiglu: up", &m[1], &a.off[1]));
    KVRT_TRY(cl_rows(cl, out, n_tokens, out_stride, dim, 4, "swiglu: out", &m[2], &a.off[2]));
    size_t global[2] = {(size_t)dim, (size_t)n_tokens};
    return cl_run(cl, CL_K_SWIGLU, m, &a, NULL, 0, 2, global, NULL, "swiglu");
}

kvrt_status kvrt_cl_add(kvrt_backend *be, kvrt_view x, kvrt_view y, kvrt_view out, int64_t n)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    if (n < 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "opencl: add: n %lld < 0", (long long)n);
    if (n == 0)
        return KVRT_OK;
    kvrt_cl_op_args a = {.n = n};
    cl_mem m[3];
    KVRT_TRY(cl_rows(cl, x, 1, n, n, 4, "add: a", &m[0], &a.off[0]));
    KVRT_TRY(cl_rows(cl, y, 1, n, n, 4, "add: b", &m[1], &a.off[1]));
    KVRT_TRY(cl_rows(cl, out, 1, n, n, 4, "add: out", &m[2], &a.off[2]));
    size_t global[1] = {cl_round_up((size_t)n, CL_OPS_LOCAL)};
    return cl_run(cl, CL_K_ADD, m, &a, NULL, 0, 1, global, NULL, "add");
}

kvrt_status kvrt_cl_add_bias(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view b, kvrt_view y,
                             int64_t y_stride, int32_t n_tokens, int64_t dim)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    kvrt_cl_op_args a = {.stride = {x_stride, 0, y_stride}, .rows = n_tokens, .dim = (int32_t)dim};
    cl_mem m[3];
    KVRT_TRY(cl_rows(cl, x, n_tokens, x_stride, dim, 4, "add_bias: x", &m[0], &a.off[0]));
    KVRT_TRY(cl_rows(cl, b, 1, dim, dim, 4, "add_bias: b", &m[1], &a.off[1]));
    KVRT_TRY(cl_rows(cl, y, n_tokens, y_stride, dim, 4, "add_bias: y", &m[2], &a.off[2]));
    size_t global[2] = {(size_t)dim, (size_t)n_tokens};
    return cl_run(cl, CL_K_ADD_BIAS, m, &a, NULL, 0, 2, global, NULL, "add_bias");
}

/* The weight type's addressing, and units per row of n values (a whole number of blocks). */
static kvrt_status cl_wtype_row(kvrt_cl_backend *cl, kvrt_dtype type, int64_t n, const char *what,
                                const cl_wtype **out, int64_t *row_units)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(cl_wtypes); i++) {
        if (cl_wtypes[i].type != type)
            continue;
        if (n % cl_wtypes[i].block != 0)
            return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT,
                             "opencl: %s: rows of %lld %s values are not a whole number of %d-value blocks", what,
                             (long long)n, kvrt_dtype_name(type), (int)cl_wtypes[i].block);
        *out = &cl_wtypes[i];
        *row_units = n / cl_wtypes[i].block * cl_wtypes[i].block_units;
        return KVRT_OK;
    }
    return kvrt_fail(&cl->base.err, KVRT_ERR_UNSUPPORTED,
                     "opencl: %s: %s weights are not supported", what,
                     kvrt_dtype_name(type));
}

/* A run of rows of a segmented view that lie in one segment. */
typedef struct cl_row_run {
    cl_mem mem;
    int64_t off;   /* in units, of the run's first row inside its segment */
    int64_t count; /* rows in the run (>= 1) */
} cl_row_run;

/* The run starting at row r of n rows (`pitch` bytes apart, `need` bytes each,
 * units of `unit` bytes) at view v; the buffer's rows were aligned first. */
static kvrt_status cl_row_run_at(kvrt_cl_backend *cl, kvrt_view v, int64_t r, int64_t n, size_t pitch, size_t need,
                                 size_t unit, const char *what, cl_row_run *run)
{
    const kvrt_buffer *b = v.buf;
    size_t pos = v.offset + (size_t)r * pitch;
    int32_t seg = (int32_t)(pos / b->seg_bytes);
    size_t seg_off = pos - (size_t)seg * b->seg_bytes, avail = kvrt_cl_seg_len(b, seg) - seg_off;
    int64_t fit = avail >= need ? (int64_t)((avail - need) / pitch) + 1 : 0;
    if (fit == 0)
        return kvrt_fail(&cl->base.err, KVRT_ERR_INTERNAL, "opencl: %s: row %lld crosses a segment boundary", what,
                         (long long)r);
    run->mem = b->segs[seg];
    run->off = (int64_t)(seg_off / unit);
    run->count = KVRT_MIN(fit, n - r);
    return KVRT_OK;
}

/* Checks rows of a weight / table view and aligns its buffer's segments to them. */
static kvrt_status cl_rows_prepare(kvrt_cl_backend *cl, kvrt_view v, int64_t n, size_t pitch, size_t need,
                                   size_t unit, const char *what)
{
    size_t bytes = n > 0 ? (size_t)(n - 1) * pitch + need : unit;
    if (!v.buf)
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT, "opencl: %s: no buffer", what);
    if (v.offset > v.buf->head.size || bytes > v.buf->head.size - v.offset || v.offset % unit != 0)
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT,
                         "opencl: %s: %zu bytes at offset %zu exceed the buffer (%zu bytes) or are misaligned", what,
                         bytes, v.offset, v.buf->head.size);
    return kvrt_cl_align_rows(cl, v.buf, v.offset, n, pitch, need, what);
}

/* Launches an embed-style kernel (table rows addressed by an index array)
 * once per segment of rows; each launch handles the ids that fall in it. */
static kvrt_status cl_run_row_gather(kvrt_cl_backend *cl, int kernel, kvrt_view table, int64_t n_rows, size_t pitch,
                                     size_t need, size_t unit, cl_mem m[3], kvrt_cl_op_args *a, size_t *global,
                                     const char *what)
{
    KVRT_TRY(cl_rows_prepare(cl, table, n_rows, pitch, need, unit, what));
    cl_row_run run = {0};
    for (int64_t r = 0; r < n_rows; r += run.count) {
        KVRT_TRY(cl_row_run_at(cl, table, r, n_rows, pitch, need, unit, what, &run));
        m[0] = run.mem;
        a->off[0] = run.off;
        a->stride[3] = r;
        a->n = run.count;
        KVRT_TRY(cl_run(cl, kernel, m, a, NULL, 0, 2, global, NULL, what));
    }
    return KVRT_OK;
}

kvrt_status kvrt_cl_embed(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim, kvrt_view ids,
                          int32_t n_tokens, kvrt_view out)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_count(cl, n_tokens, 0, "embed: n_tokens"));
    KVRT_TRY(cl_count(cl, dim, 1, "embed: dim"));
    const cl_wtype *wt = NULL;
    int64_t row_units = 0;
    KVRT_TRY(cl_wtype_row(cl, wtype, dim, "embed", &wt, &row_units));
    size_t pitch = (size_t)row_units * wt->unit;
    if (!table.buf || table.offset > table.buf->head.size)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "opencl: embed: bad table view");
    /* the table's row count is not passed: every whole row of the buffer after the view */
    int64_t n_rows = (int64_t)((table.buf->head.size - table.offset) / pitch);
    if (n_rows < 1)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "opencl: embed: the table holds no row of %lld values",
                         (long long)dim);
    kvrt_cl_op_args a = {.stride = {row_units}, .rows = n_tokens, .dim = (int32_t)dim, .wtype = (int32_t)wtype};
    cl_mem m[3];
    KVRT_TRY(cl_rows(cl, ids, 1, n_tokens, KVRT_MAX(n_tokens, 1), 4, "embed: ids", &m[1], &a.off[1]));
    KVRT_TRY(cl_rows(cl, out, n_tokens, dim, dim, 4, "embed: out", &m[2], &a.off[2]));
    size_t global[2] = {(size_t)dim, (size_t)n_tokens};
    return cl_run_row_gather(cl, wt->embed_kernel, table, n_rows, pitch, pitch, wt->unit, m, &a, global, "embed");
}

kvrt_status kvrt_cl_gather_rows(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx, int32_t n,
                                kvrt_view dst, int64_t dst_stride, int32_t dim)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_count(cl, n, 0, "gather_rows: n"));
    KVRT_TRY(cl_count(cl, dim, 1, "gather_rows: dim"));
    if (src_stride < dim || src_stride > INT32_MAX)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "opencl: gather_rows: src stride %lld below dim %d",
                         (long long)src_stride, (int)dim);
    if (!src.buf || src.offset > src.buf->head.size || src.buf->head.size - src.offset < (size_t)dim * 4)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "opencl: gather_rows: src holds no row");
    size_t pitch = (size_t)src_stride * 4, need = (size_t)dim * 4;
    int64_t n_rows = (int64_t)((src.buf->head.size - src.offset - need) / pitch) + 1;
    kvrt_cl_op_args a = {.stride = {src_stride, 0, dst_stride}, .rows = n, .dim = dim};
    cl_mem m[3];
    KVRT_TRY(cl_rows(cl, idx, 1, n, KVRT_MAX(n, 1), 4, "gather_rows: idx", &m[1], &a.off[1]));
    KVRT_TRY(cl_rows(cl, dst, n, dst_stride, dim, 4, "gather_rows: dst", &m[2], &a.off[2]));
    size_t global[2] = {(size_t)dim, (size_t)n};
    return cl_run_row_gather(cl, CL_K_GATHER, src, n_rows, pitch, need, 4, m, &a, global, "gather_rows");
}

/* A weight spanning segments runs as one dispatch per run of rows in one
 * segment (its buffer's segments are made row-aligned on first use). */
kvrt_status kvrt_cl_matmul(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in,
                           kvrt_view x, int64_t x_stride, kvrt_view y, int64_t y_stride, int32_t n_tokens)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    KVRT_TRY(cl_count(cl, n_out, 1, "matmul: n_out"));
    KVRT_TRY(cl_count(cl, n_in, 1, "matmul: n_in"));
    KVRT_TRY(cl_count(cl, n_tokens, 0, "matmul: n_tokens"));
    const cl_wtype *wt = NULL;
    int64_t row_units = 0;
    KVRT_TRY(cl_wtype_row(cl, wtype, n_in, "matmul", &wt, &row_units));
    const size_t pitch = (size_t)row_units * wt->unit;
    kvrt_cl_op_args a = {.stride = {row_units, x_stride, y_stride}, .n = n_in, .rows = n_tokens,
                         .wtype = (int32_t)wtype};
    cl_mem m[3];
    KVRT_TRY(cl_rows_prepare(cl, w, n_out, pitch, pitch, wt->unit, "matmul: weight"));
    KVRT_TRY(cl_rows(cl, x, n_tokens, x_stride, n_in, 4, "matmul: x", &m[1], &a.off[1]));
    KVRT_TRY(cl_rows(cl, y, n_tokens, y_stride, n_out, 4, "matmul: y", &m[2], &a.off[2]));
    const int64_t y_off = a.off[2];
    size_t ls = cl_ops_local(cl), locals[1] = {CL_MM_TT * ls * 4}, local[2] = {ls, 1};
    cl_row_run run = {0};
    for (int64_t o = 0; o < n_out; o += run.count) {
        KVRT_TRY(cl_row_run_at(cl, w, o, n_out, pitch, pitch, wt->unit, "matmul: weight", &run));
        m[0] = run.mem;
        a.off[0] = run.off;
        a.off[2] = y_off + o;
        a.dim = (int32_t)run.count;
        size_t global[2] = {(size_t)run.count * ls, ((size_t)n_tokens + CL_MM_TT - 1) / CL_MM_TT};
        KVRT_TRY(cl_run(cl, wt->matmul_kernel, m, &a, locals, 1, 2, global, local, "matmul"));
    }
    return KVRT_OK;
}
