/* The attention family on OpenCL: kv_write, paged decode (split-K), tiled
 * prefill. Host side: views to (cl_mem, element offset), local memory and
 * launch shapes; the front door checked the arguments and the step's batch
 * check the arrays' contents. */
#include "backend/opencl/cl_internal.h"

enum { CL_K_KV_WRITE = 0 };
enum { CL_K_DECODE = 0, CL_K_MERGE = 1, CL_K_PREFILL = 2 };

static int cl_variant(const kvrt_kv_pool *pool)
{
    return KVRT_CL_KV_VARIANT(pool->k_type, pool->v_type);
}

static kvrt_cl_pool_args cl_pool_args(const kvrt_kv_pool *pool)
{
    kvrt_cl_pool_args pa = {
        .blocks_per_seg = pool->blocks_per_seg,
        .num_blocks = pool->desc.num_blocks,
        .n_kv_heads = pool->desc.n_kv_heads,
        .block_size = pool->desc.block_size,
        .head_dim = pool->desc.head_dim,
    };
    return pa;
}

/* Appends the KVRT_CL_MAX_KV_SEGS segment arguments of a pool part (unused ones repeat segment 0). */
static int cl_seg_args(const kvrt_cl_pool_part *part, kvrt_cl_arg *args, int n)
{
    for (int i = 0; i < KVRT_CL_MAX_KV_SEGS; i++)
        args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &part->segs[i < part->n_segs ? i : 0]};
    return n;
}

/* Bytes spanned by n rows of `row` elements `stride` apart (F32); false on overflow or a bad stride. */
static bool cl_rows_bytes(int64_t n, int64_t stride, int64_t row, size_t *out)
{
    if (n <= 0) {
        *out = 0;
        return stride >= 0;
    }
    int64_t span;
    if (stride < row || !kvrt_mul_i64(n - 1, stride, &span) || span > INT64_MAX / 4 - row)
        return false;
    *out = (size_t)(span + row) * 4;
    return true;
}

/* Largest power of two <= n (n >= 1). */
static size_t cl_pow2_floor(size_t n)
{
    size_t p = 1;
    while (p * 2 <= n)
        p *= 2;
    return p;
}

/* Work-group size for a kernel: a power of two up to `want`, within the device and kernel limits. */
static size_t cl_local_size(kvrt_cl_backend *cl, cl_kernel k, size_t want)
{
    size_t kmax = 0;
    if (cl->fn.clGetKernelWorkGroupInfo(k, cl->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof(kmax), &kmax, NULL) !=
            CL_SUCCESS ||
        kmax == 0)
        kmax = cl->max_wg;
    return cl_pow2_floor(KVRT_MIN(want, KVRT_MIN(kmax, cl->max_wg)));
}

/* ---- kv_write ---------------------------------------------------------------------- */

kvrt_status kvrt_cl_kv_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view k, int64_t k_stride,
                             kvrt_view v, int64_t v_stride, kvrt_view slot_mapping, int32_t n_tokens)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    const int64_t row = (int64_t)pool->desc.n_kv_heads * pool->desc.head_dim;
    size_t k_bytes, v_bytes;
    if (!cl_rows_bytes(n_tokens, k_stride, row, &k_bytes) || !cl_rows_bytes(n_tokens, v_stride, row, &v_bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                         "opencl: kv_write: strides %lld/%lld below the row length %lld", (long long)k_stride,
                         (long long)v_stride, (long long)row);
    cl_mem km, vm, sm;
    kvrt_cl_kv_write_args a = {.k_stride = k_stride, .v_stride = v_stride, .n_tokens = n_tokens};
    KVRT_TRY(kvrt_cl_resolve(cl, k, k_bytes, 4, "kv_write k", &km, &a.k_off));
    KVRT_TRY(kvrt_cl_resolve(cl, v, v_bytes, 4, "kv_write v", &vm, &a.v_off));
    KVRT_TRY(kvrt_cl_resolve(cl, slot_mapping, (size_t)n_tokens * 4, 4, "kv_write slots", &sm, &a.slot_off));
    cl_kernel kern;
    KVRT_TRY(kvrt_cl_kernel(cl, KVRT_CL_PROG_KV, cl_variant(pool), CL_K_KV_WRITE, &kern));
    kvrt_cl_pool_args pa = cl_pool_args(pool);
    kvrt_cl_arg args[40];
    int n = 0;
    args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &km};
    args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &vm};
    args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &sm};
    n = cl_seg_args(&pool->k[layer], args, n);
    n = cl_seg_args(&pool->v[layer], args, n);
    args[n++] = (kvrt_cl_arg){sizeof(pa), &pa};
    args[n++] = (kvrt_cl_arg){sizeof(a), &a};
    KVRT_TRY(kvrt_cl_set_args(cl, kern, args, n, "kv_write"));
    size_t global[2] = {(size_t)row, (size_t)n_tokens};
    return kvrt_cl_enqueue(cl, kern, 2, global, NULL, "kv_write");
}

/* ---- shared by decode and prefill --------------------------------------------------------- */

/* Resolves q, out (rows of n_heads * head_dim) and the int32 arrays common to decode and prefill. */
static kvrt_status cl_attn_views(kvrt_cl_backend *cl, const kvrt_kv_pool *pool, const kvrt_attn_desc *d,
                                 int64_t q_rows, kvrt_view q, kvrt_view out, kvrt_view seq_lens,
                                 kvrt_view block_tables, cl_mem mems[4], kvrt_cl_attn_args *a)
{
    const int64_t row = (int64_t)d->n_heads * pool->desc.head_dim;
    size_t q_bytes, o_bytes;
    if (!cl_rows_bytes(q_rows, d->q_stride, row, &q_bytes) || !cl_rows_bytes(q_rows, d->o_stride, row, &o_bytes))
        return kvrt_fail(&cl->base.err, KVRT_ERR_INVALID_ARGUMENT,
                         "opencl: attention: q/out strides %lld/%lld below the row length %lld",
                         (long long)d->q_stride, (long long)d->o_stride, (long long)row);
    a->q_stride = d->q_stride;
    a->o_stride = d->o_stride;
    a->num_seqs = d->num_seqs;
    a->n_heads = d->n_heads;
    a->max_blocks_per_seq = d->max_blocks_per_seq;
    a->window = d->window;
    a->sinks = d->sinks;
    a->scale = d->scale;
    KVRT_TRY(kvrt_cl_resolve(cl, q, q_bytes, 4, "attention q", &mems[0], &a->q_off));
    KVRT_TRY(kvrt_cl_resolve(cl, out, o_bytes, 4, "attention out", &mems[1], &a->o_off));
    KVRT_TRY(kvrt_cl_resolve(cl, seq_lens, (size_t)d->num_seqs * 4, 4, "seq_lens", &mems[2], &a->seq_lens_off));
    KVRT_TRY(kvrt_cl_resolve(cl, block_tables, (size_t)d->num_seqs * (size_t)d->max_blocks_per_seq * 4, 4,
                             "block_tables", &mems[3], &a->bt_off));
    /* the rest of each segment bounds the rows a prefill kernel may touch */
    size_t q_seg = q.offset / q.buf->seg_bytes, o_seg = out.offset / out.buf->seg_bytes;
    a->q_end = (int64_t)(KVRT_MIN(q.buf->head.size - q_seg * q.buf->seg_bytes, q.buf->seg_bytes) / 4);
    a->o_end = (int64_t)(KVRT_MIN(out.buf->head.size - o_seg * out.buf->seg_bytes, out.buf->seg_bytes) / 4);
    return KVRT_OK;
}

/* ---- decode ---------------------------------------------------------------------------- */

/* Local bytes of a decode work-group of ls items for G query heads per KV
 * head of head_dim D: q, scores, block ids, (max, sum), the reduction, and
 * the V partial sums of the key groups when there are several. */
static size_t cl_decode_local_bytes(size_t ls, int64_t G, int64_t D)
{
    size_t q_l = (size_t)(G * D) * 4, s_l = (size_t)(G * KVRT_CL_DECODE_PART) * 4, blk_l = KVRT_CL_DECODE_PART * 8,
           ml_l = (size_t)G * 8, red = ls * 4;
    const size_t n_chunks = (size_t)(D + 3) / 4, n_kg = KVRT_MAX(ls / n_chunks, (size_t)1);
    const size_t vp_l = n_kg > 1 ? (size_t)KVRT_MIN(G, KVRT_CL_DECODE_GCHUNK) * n_kg * (size_t)D * 4 : 4;
    return q_l + s_l + blk_l + ml_l + red + vp_l;
}

kvrt_status kvrt_cl_attn_decode(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                kvrt_view q, kvrt_view out, kvrt_view seq_lens, kvrt_view block_tables)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    kvrt_cl_attn_args a = {0};
    cl_mem mems[4];
    KVRT_TRY(cl_attn_views(cl, pool, d, d->num_seqs, q, out, seq_lens, block_tables, mems, &a));
    const int64_t D = pool->desc.head_dim, G = d->n_heads / pool->desc.n_kv_heads;
    const int64_t cap = d->max_seq_len; /* partitions follow the real lengths, not the table */
    a.max_parts = (int32_t)((cap + KVRT_CL_DECODE_PART - 1) / KVRT_CL_DECODE_PART);

    cl_kernel kern, merge;
    KVRT_TRY(kvrt_cl_kernel(cl, KVRT_CL_PROG_ATTN, cl_variant(pool), CL_K_DECODE, &kern));
    size_t ls = cl_local_size(cl, kern, 64);
    size_t q_l = (size_t)(G * D) * 4, s_l = (size_t)(G * KVRT_CL_DECODE_PART) * 4, blk_l = KVRT_CL_DECODE_PART * 8,
           ml_l = (size_t)G * 8, red = ls * 4;
    /* V partial sums of the key groups (as the kernel splits them), when there are several */
    const size_t n_chunks = (size_t)(D + 3) / 4, n_kg = KVRT_MAX(ls / n_chunks, (size_t)1);
    const size_t vp_l = n_kg > 1 ? (size_t)KVRT_MIN(G, KVRT_CL_DECODE_GCHUNK) * n_kg * (size_t)D * 4 : 4;
    if (cl_decode_local_bytes(ls, G, D) > cl->local_mem)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "opencl: decode attention with %lld query heads per KV head and head dim %lld needs %zu "
                         "bytes of local memory; the device has %llu",
                         (long long)G, (long long)D, cl_decode_local_bytes(ls, G, D),
                         (unsigned long long)cl->local_mem);

    /* split-K scratch: partial outputs [num_seqs][n_heads][max_parts][D], then (max, sum) pairs */
    cl_mem part = NULL;
    if (a.max_parts > 1) {
        int64_t slots = (int64_t)d->num_seqs * d->n_heads * a.max_parts;
        a.part_ml_off = slots * D;
        kvrt_buffer *scratch;
        KVRT_TRY(kvrt_cl_scratch(cl, (size_t)(slots * (D + 2)) * 4, &scratch));
        int64_t off;
        KVRT_TRY(kvrt_cl_resolve(cl, (kvrt_view){scratch, 0}, (size_t)(slots * (D + 2)) * 4, 4, "decode scratch",
                                 &part, &off));
    }
    kvrt_cl_pool_args pa = cl_pool_args(pool);
    kvrt_cl_arg args[40];
    int n = 0;
    for (int i = 0; i < 4; i++)
        args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &mems[i]};
    n = cl_seg_args(&pool->k[layer], args, n);
    n = cl_seg_args(&pool->v[layer], args, n);
    args[n++] = (kvrt_cl_arg){sizeof(cl_mem), part ? &part : NULL};
    args[n++] = (kvrt_cl_arg){sizeof(pa), &pa};
    args[n++] = (kvrt_cl_arg){sizeof(a), &a};
    args[n++] = (kvrt_cl_arg){q_l, NULL};
    args[n++] = (kvrt_cl_arg){s_l, NULL};
    args[n++] = (kvrt_cl_arg){blk_l, NULL};
    args[n++] = (kvrt_cl_arg){ml_l, NULL};
    args[n++] = (kvrt_cl_arg){red, NULL};
    args[n++] = (kvrt_cl_arg){vp_l, NULL};
    KVRT_TRY(kvrt_cl_set_args(cl, kern, args, n, "attn_decode"));
    size_t global[3] = {(size_t)a.max_parts * ls, (size_t)pool->desc.n_kv_heads, (size_t)d->num_seqs};
    size_t local[3] = {ls, 1, 1};
    KVRT_TRY(kvrt_cl_enqueue(cl, kern, 3, global, local, "attn_decode"));
    if (a.max_parts == 1)
        return KVRT_OK;

    KVRT_TRY(kvrt_cl_kernel(cl, KVRT_CL_PROG_ATTN, cl_variant(pool), CL_K_MERGE, &merge));
    kvrt_cl_arg margs[] = {
        {sizeof(cl_mem), &mems[1]}, {sizeof(cl_mem), &mems[2]}, {sizeof(cl_mem), &part},
        {sizeof(pa), &pa},          {sizeof(a), &a},
    };
    KVRT_TRY(kvrt_cl_set_args(cl, merge, margs, (int)KVRT_ARRAY_LEN(margs), "attn_decode_merge"));
    size_t mglobal[3] = {(size_t)D, (size_t)d->n_heads, (size_t)d->num_seqs};
    return kvrt_cl_enqueue(cl, merge, 3, mglobal, NULL, "attn_decode_merge");
}

/* ---- prefill ---------------------------------------------------------------------------- */

/* Local bytes of a prefill work-group with tiles of t queries and t keys. */
static size_t cl_prefill_local_bytes(size_t t, size_t head_dim)
{
    return (4 * t * head_dim + t * t + 3 * t) * 4 + t * 8;
}

kvrt_status kvrt_cl_attn_prefill(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                 kvrt_view q, kvrt_view out, kvrt_view query_start_loc, kvrt_view seq_lens,
                                 kvrt_view block_tables)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    kvrt_cl_attn_args a = {0};
    cl_mem mems[5];
    KVRT_TRY(cl_attn_views(cl, pool, d, d->num_tokens, q, out, seq_lens, block_tables, mems, &a));
    KVRT_TRY(kvrt_cl_resolve(cl, query_start_loc, ((size_t)d->num_seqs + 1) * 4, 4, "query_start_loc", &mems[4],
                             &a.qsl_off));
    const size_t D = (size_t)pool->desc.head_dim;
    /* tile size from the device's local memory (keep a little for the driver) */
    size_t t = 32;
    while (t > 1 && cl_prefill_local_bytes(t, D) + 1024 > cl->local_mem)
        t /= 2;
    if (cl_prefill_local_bytes(t, D) > cl->local_mem)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "opencl: prefill attention with head dim %zu does not fit %llu bytes of local memory", D,
                         (unsigned long long)cl->local_mem);
    const int64_t cap = d->max_seq_len; /* key tiles follow the real lengths, not the table */
    a.tile = (int32_t)t;
    a.max_tiles = (int32_t)((cap + (int64_t)t - 1) / (int64_t)t);

    cl_kernel kern;
    KVRT_TRY(kvrt_cl_kernel(cl, KVRT_CL_PROG_ATTN, cl_variant(pool), CL_K_PREFILL, &kern));
    size_t ls = cl_local_size(cl, kern, 64);
    kvrt_cl_pool_args pa = cl_pool_args(pool);
    kvrt_cl_arg args[40];
    int n = 0;
    for (int i = 0; i < 5; i++)
        args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &mems[i]};
    n = cl_seg_args(&pool->k[layer], args, n);
    n = cl_seg_args(&pool->v[layer], args, n);
    args[n++] = (kvrt_cl_arg){sizeof(pa), &pa};
    args[n++] = (kvrt_cl_arg){sizeof(a), &a};
    for (int i = 0; i < 4; i++)
        args[n++] = (kvrt_cl_arg){t * D * 4, NULL}; /* q, k, v, o tiles */
    args[n++] = (kvrt_cl_arg){t * t * 4, NULL};
    args[n++] = (kvrt_cl_arg){3 * t * 4, NULL};
    args[n++] = (kvrt_cl_arg){t * 8, NULL};
    KVRT_TRY(kvrt_cl_set_args(cl, kern, args, n, "attn_prefill"));
    size_t global[3] = {(size_t)a.max_tiles * ls, (size_t)d->n_heads, (size_t)d->num_seqs};
    size_t local[3] = {ls, 1, 1};
    return kvrt_cl_enqueue(cl, kern, 3, global, local, "attn_prefill");
}

/* ---- limits ------------------------------------------------------------------------------ */

void kvrt_cl_limits(kvrt_backend *be, kvrt_context_limits *out)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    out->memory_heap = cl->global_mem;
    out->memory_budget = cl->budget;
    out->memory_in_use = cl->used;
    out->max_buffer_bytes = cl->seg_bytes;
    /* the local memory the kernels' smallest tiles need (MHA: one query head per KV head) */
    if (cl->attn_head_dim_max[0] == 0) { /* device constants: worked out once */
        size_t ls = cl_pow2_floor(KVRT_MIN((size_t)64, cl->max_wg));
        for (int32_t D = 1; D <= 65536 && cl_decode_local_bytes(ls, 1, D) <= cl->local_mem; D++)
            cl->attn_head_dim_max[0] = D;
        for (int32_t D = 1; D <= 65536 && cl_prefill_local_bytes(1, (size_t)D) <= cl->local_mem; D++)
            cl->attn_head_dim_max[1] = D;
    }
    out->decode_head_dim_max = cl->attn_head_dim_max[0];
    out->prefill_head_dim_max = cl->attn_head_dim_max[1];
    out->max_table_entries = (int64_t)KVRT_MIN(cl->seg_bytes / 4, (size_t)INT32_MAX); /* one segment, int offsets */
    out->max_seq_len = INT32_MAX;
    out->max_scratch_bytes = cl->seg_bytes;
    out->scratch_bytes = cl->scratch ? cl->scratch->head.size : 0;
}
