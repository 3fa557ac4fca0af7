/* The front door (ops.h): checks, the NULL-entry rule, host timing of
 * backends that run ops at once, then the backend's entry. */
#include "backend/ops.h"

#include "common/quant.h"

#include <math.h>
#include <string.h>

static kvrt_status unsupported(kvrt_backend *be, const char *entry)
{
    return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "%s backend does not implement %s", be->ops->name, entry);
}

/* The failure-injection hook (backend.h): counts the calls of an open step
 * that reach the backend and fails the armed one instead of running it. */
static kvrt_status injected(kvrt_backend *be, const char *entry)
{
    if (!be->step_open)
        return KVRT_OK;
    be->step_calls++;
    if (be->fail_at <= 0 || be->step_calls != be->fail_at)
        return KVRT_OK;
    be->fail_at = 0;
    return kvrt_fail(&be->err, KVRT_ERR_INTERNAL, "%s: failure injected at call %lld of the step (test hook)", entry,
                     (long long)be->step_calls);
}

/* Calls entry `e` of the vtable with the arguments after it, or reports it missing. */
#define OP_CALL(be, e, ...)                                                                          \
    (injected((be), #e) != KVRT_OK ? (be)->err.status                                                \
     : (be)->ops->e                ? (be)->ops->e((be), __VA_ARGS__)                                 \
                                   : unsupported((be), #e))

/* ---- host timing of backends that run ops at once ----------------------------------------- */

static uint64_t timer_start(const kvrt_backend *be)
{
    return be->profiling && be->ops->runs_at_once ? kvrt_profile_now_ns() : 0;
}

/* Counts a successful call of `op` started at t0; returns s. */
static kvrt_status timer_end(kvrt_backend *be, const char *op, uint64_t t0, kvrt_status s)
{
    if (be->profiling && be->ops->runs_at_once && s == KVRT_OK)
        kvrt_profile_add(&be->profile, op, 1, kvrt_profile_now_ns() - t0);
    return s;
}

/* ---- views --------------------------------------------------------------------------------- */

static kvrt_status check_count(kvrt_backend *be, int64_t v, int64_t min, const char *what)
{
    if (v < min)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s %lld < %lld", what, (long long)v, (long long)min);
    return KVRT_OK;
}

/* Bytes spanned by rows x cols elements of elem bytes, rows stride elements
 * apart: ((rows - 1) * stride + cols) * elem, 0 for no rows. False on
 * overflow or negative values. */
static bool span_bytes(int64_t rows, int64_t stride, int64_t cols, size_t elem, size_t *out)
{
    *out = 0;
    if (rows < 0 || stride < 0 || cols < 0)
        return false;
    if (rows == 0)
        return true;
    int64_t last, elems;
    if (!kvrt_mul_i64(rows - 1, stride, &last) || __builtin_add_overflow(last, cols, &elems))
        return false;
    return kvrt_mul_size((size_t)elems, elem, out);
}

/* Where a view's bytes are, comparable between views: host addresses when
 * both are host memory, offsets when both are in one buffer; false when the
 * two views can never share memory. */
static bool view_positions(kvrt_view a, kvrt_view b, uintptr_t *pa, uintptr_t *pb)
{
    const kvrt_buffer_head *ha = kvrt_buffer_head_of(a.buf), *hb = kvrt_buffer_head_of(b.buf);
    if (ha->host && hb->host) {
        *pa = (uintptr_t)ha->host + a.offset;
        *pb = (uintptr_t)hb->host + b.offset;
        return true;
    }
    *pa = a.offset;
    *pb = b.offset;
    return a.buf == b.buf;
}

static bool views_overlap(kvrt_view a, size_t a_bytes, kvrt_view b, size_t b_bytes)
{
    uintptr_t pa, pb;
    if (a_bytes == 0 || b_bytes == 0 || !view_positions(a, b, &pa, &pb))
        return false;
    return pa < pb + b_bytes && pb < pa + a_bytes;
}

/* [offset, offset + bytes) lies in the view's buffer, and the view's first
 * byte (its host address, else its offset) is a multiple of align. */
static kvrt_status check_view(kvrt_backend *be, kvrt_view v, size_t bytes, size_t align, const char *what)
{
    if (!v.buf)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: no buffer", what);
    const kvrt_buffer_head *h = kvrt_buffer_head_of(v.buf);
    if (v.offset > h->size || bytes > h->size - v.offset)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                         "%s: %zu bytes at offset %zu exceed the buffer (%zu bytes)", what, bytes, v.offset,
                         h->size);
    uintptr_t at = h->host ? (uintptr_t)h->host + v.offset : (uintptr_t)v.offset;
    if (at % align != 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: offset %zu is not %zu-byte aligned", what,
                         v.offset, align);
    return KVRT_OK;
}

/* n int32 values. */
static kvrt_status check_ints(kvrt_backend *be, kvrt_view v, int64_t n, const char *what)
{
    size_t bytes;
    if (n < 0 || !kvrt_mul_size((size_t)n, sizeof(int32_t), &bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: size overflows", what);
    return check_view(be, v, bytes, sizeof(int32_t), what);
}

/* A strided F32 matrix [rows][cols] (stride >= cols) and its view. */
static kvrt_status check_rows(kvrt_backend *be, kvrt_view v, int64_t rows, int64_t stride, int64_t cols,
                              const char *what)
{
    if (stride < cols)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: stride %lld < row length %lld", what,
                         (long long)stride, (long long)cols);
    size_t bytes;
    if (!span_bytes(rows, stride, cols, sizeof(float), &bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: size of %lld rows of stride %lld overflows", what,
                         (long long)rows, (long long)stride);
    return check_view(be, v, bytes, sizeof(float), what);
}

static size_t rows_bytes(int64_t rows, int64_t stride, int64_t cols)
{
    size_t b;
    span_bytes(rows, stride, cols, sizeof(float), &b); /* checked by check_rows */
    return b;
}

/* True when two F32 matrices with the same stride interleave without sharing
 * an element (the gate and up halves of one fused row). */
static bool rows_interleave(kvrt_view a, int64_t a_cols, kvrt_view b, int64_t b_cols, int64_t stride)
{
    uintptr_t pa, pb;
    view_positions(a, b, &pa, &pb);
    intptr_t diff = (intptr_t)(pb - pa);
    if (diff % (intptr_t)sizeof(float) != 0)
        return false;
    int64_t d = (int64_t)(diff / (intptr_t)sizeof(float)) % stride;
    if (d < 0)
        d += stride;
    return d >= a_cols && d + b_cols <= stride;
}

/* An output may be exactly an input (same place and stride: element-wise in
 * place), apart from it, or interleaved with it; a partial overlap would
 * read rewritten values. */
static kvrt_status check_alias(kvrt_backend *be, kvrt_view out, int64_t out_stride, kvrt_view in, int64_t in_stride,
                               int64_t rows, int64_t cols, const char *what)
{
    size_t ob = rows_bytes(rows, out_stride, cols), ib = rows_bytes(rows, in_stride, cols);
    uintptr_t po, pi;
    if (view_positions(out, in, &po, &pi) && po == pi && out_stride == in_stride)
        return KVRT_OK;
    if (!views_overlap(out, ob, in, ib))
        return KVRT_OK;
    if (out_stride == in_stride && rows_interleave(out, cols, in, cols, out_stride))
        return KVRT_OK;
    return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                     "%s: output partly overlaps an input (only exact in-place is allowed)", what);
}

/* ---- memory ---------------------------------------------------------------------------------- */

kvrt_status kvrt_op_buffer_create(kvrt_backend *be, size_t size, unsigned flags, kvrt_buffer **out)
{
    if (!out)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "buffer_create: out is NULL");
    *out = NULL;
    if (flags != KVRT_BUFFER_DEVICE && flags != KVRT_BUFFER_HOST_VISIBLE)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "buffer_create: flags %u", flags);
    if (flags == KVRT_BUFFER_DEVICE)
        KVRT_TRY(kvrt_op_check_budget(be, size, "a buffer"));
    return OP_CALL(be, buffer_create, size, flags, out);
}

void kvrt_op_buffer_destroy(kvrt_backend *be, kvrt_buffer *buf)
{
    if (buf)
        be->ops->buffer_destroy(be, buf);
}

kvrt_status kvrt_op_buffer_wrap_host(kvrt_backend *be, void *ptr, size_t size, kvrt_buffer **out)
{
    if (!out)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "buffer_wrap_host: out is NULL");
    *out = NULL;
    if (!ptr && size > 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "buffer_wrap_host: NULL memory of %zu bytes", size);
    return OP_CALL(be, buffer_wrap_host, ptr, size, out);
}

bool kvrt_op_wraps_host(const kvrt_backend *be)
{
    return be->ops->buffer_wrap_host != NULL;
}

kvrt_status kvrt_op_buffer_for_host(kvrt_backend *be, void *host, size_t size, bool upload, kvrt_buffer **out)
{
    if (kvrt_op_wraps_host(be))
        return kvrt_op_buffer_wrap_host(be, host, size, out);
    KVRT_TRY(kvrt_op_buffer_create(be, size, KVRT_BUFFER_DEVICE, out));
    kvrt_status s = upload ? kvrt_op_buffer_upload(be, *out, 0, host, size) : KVRT_OK;
    if (s != KVRT_OK) {
        kvrt_op_buffer_destroy(be, *out);
        *out = NULL;
    }
    return s;
}

kvrt_status kvrt_op_buffer_upload(kvrt_backend *be, kvrt_buffer *dst, size_t offset, const void *src, size_t size)
{
    KVRT_TRY(check_view(be, (kvrt_view){dst, offset}, size, 1, "upload"));
    if (size == 0)
        return KVRT_OK;
    if (!src)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "upload: source is NULL");
    return OP_CALL(be, buffer_upload, dst, offset, src, size);
}

kvrt_status kvrt_op_buffer_download(kvrt_backend *be, kvrt_buffer *src, size_t offset, void *dst, size_t size)
{
    KVRT_TRY(check_view(be, (kvrt_view){src, offset}, size, 1, "download"));
    if (size == 0)
        return KVRT_OK;
    if (!dst)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "download: destination is NULL");
    return OP_CALL(be, buffer_download, src, offset, dst, size);
}

kvrt_status kvrt_op_buffer_copy(kvrt_backend *be, kvrt_buffer *src, size_t src_offset, kvrt_buffer *dst,
                                size_t dst_offset, size_t size)
{
    KVRT_TRY(check_view(be, (kvrt_view){src, src_offset}, size, 1, "copy source"));
    KVRT_TRY(check_view(be, (kvrt_view){dst, dst_offset}, size, 1, "copy destination"));
    if (size == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be); /* copies are ops of a step like the kernels */
    return timer_end(be, "copy", t0, OP_CALL(be, buffer_copy, src, src_offset, dst, dst_offset, size));
}

/* ---- KV pools ---------------------------------------------------------------------------------- */

kvrt_status kvrt_op_kv_pool_create(kvrt_backend *be, const kvrt_kv_pool_desc *desc, kvrt_kv_pool **out)
{
    if (!desc || !out)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "kv_pool_create: %s is NULL", !desc ? "desc" : "out");
    *out = NULL;
    KVRT_TRY(kvrt_kv_check_pool_desc(&be->err, desc));
    if (kvrt_kv_pool_mixed(desc) && !be->ops->kv_mixed_types) {
        char types[48];
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "%s: KV types %s are not supported: this backend stores K and V in one type",
                         be->ops->name, kvrt_kv_pool_types_name(desc, types, sizeof(types)));
    }
    uint64_t bytes = (uint64_t)kvrt_kv_block_bytes_pair(desc) * (uint64_t)desc->num_blocks * (uint64_t)desc->n_layers;
    KVRT_TRY(kvrt_op_check_budget(be, bytes, "a KV pool"));
    return OP_CALL(be, kv_pool_create, desc, out);
}

void kvrt_op_kv_pool_destroy(kvrt_backend *be, kvrt_kv_pool *pool)
{
    if (pool)
        be->ops->kv_pool_destroy(be, pool);
}

static kvrt_status check_pool(kvrt_backend *be, const kvrt_kv_pool *pool, const char *what)
{
    if (!pool)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: no KV pool", what);
    return KVRT_OK;
}

static kvrt_status check_block_io(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                  int32_t block, const void *p, const char *what)
{
    KVRT_TRY(check_pool(be, pool, what));
    const kvrt_kv_pool_desc *d = kvrt_kv_pool_desc_of(pool);
    KVRT_TRY(kvrt_kv_check_layer(&be->err, d, layer));
    if (which != KVRT_KV_K && which != KVRT_KV_V)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: which %d is not 0 (K) or 1 (V)", what, (int)which);
    char name[32];
    snprintf(name, sizeof(name), "%s:", what);
    KVRT_TRY(kvrt_kv_check_block(&be->err, d, block, name));
    if (!p)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: buffer is NULL", what);
    return KVRT_OK;
}

kvrt_status kvrt_op_kv_block_read(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                  int32_t block, void *dst)
{
    KVRT_TRY(check_block_io(be, pool, layer, which, block, dst, "read block"));
    return OP_CALL(be, kv_block_read, pool, layer, which, block, dst);
}

kvrt_status kvrt_op_kv_block_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                   int32_t block, const void *src)
{
    KVRT_TRY(check_block_io(be, pool, layer, which, block, src, "write block"));
    return OP_CALL(be, kv_block_write, pool, layer, which, block, src);
}

kvrt_status kvrt_op_kv_copy_blocks(kvrt_backend *be, kvrt_kv_pool *pool, const int32_t (*pairs)[2], int32_t n_pairs)
{
    if (n_pairs < 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "copy blocks: n_pairs %d < 0", (int)n_pairs);
    if (n_pairs == 0)
        return KVRT_OK;
    if (!pairs)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "copy blocks: src_dst is NULL");
    KVRT_TRY(check_pool(be, pool, "copy blocks"));
    const kvrt_kv_pool_desc *d = kvrt_kv_pool_desc_of(pool);
    for (int32_t i = 0; i < n_pairs; i++) {
        KVRT_TRY(kvrt_kv_check_block(&be->err, d, pairs[i][0], "copy blocks: source"));
        KVRT_TRY(kvrt_kv_check_block(&be->err, d, pairs[i][1], "copy blocks: destination"));
    }
    uint64_t t0 = timer_start(be);
    return timer_end(be, "copy", t0, OP_CALL(be, kv_copy_blocks, pool, pairs, n_pairs));
}

kvrt_status kvrt_op_kv_rope_shift(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view blocks,
                                  int32_t n_blocks, kvrt_view cos_sin, int32_t rot_dim, int32_t neox)
{
    KVRT_TRY(check_pool(be, pool, "rope shift"));
    const kvrt_kv_pool_desc *d = kvrt_kv_pool_desc_of(pool);
    KVRT_TRY(kvrt_kv_check_layer(&be->err, d, layer));
    KVRT_TRY(check_count(be, n_blocks, 0, "rope shift: n_blocks"));
    if (n_blocks > d->num_blocks)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rope shift: %d blocks of a pool of %d",
                         (int)n_blocks, (int)d->num_blocks);
    if (rot_dim < 2 || rot_dim % 2 || rot_dim > d->head_dim || (neox != 0 && neox != 1))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                         "rope shift: rot_dim %d (even, 2..head_dim %d), neox %d (0 or 1)", (int)rot_dim,
                         (int)d->head_dim, (int)neox);
    KVRT_TRY(check_ints(be, blocks, n_blocks, "rope shift: blocks"));
    KVRT_TRY(check_view(be, cos_sin, (size_t)rot_dim * sizeof(float), sizeof(float), "rope shift: cos/sin"));
    if (n_blocks == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "rope_shift", t0,
                     OP_CALL(be, kv_rope_shift, pool, layer, blocks, n_blocks, cos_sin, rot_dim, neox));
}

/* ---- steps ---------------------------------------------------------------------------------------- */

kvrt_status kvrt_op_begin(kvrt_backend *be)
{
    KVRT_TRY(be->ops->begin(be));
    be->step_open = true;
    be->step_calls = 0;
    return KVRT_OK;
}

kvrt_status kvrt_op_submit(kvrt_backend *be)
{
    kvrt_status s = injected(be, "submit");
    if (s == KVRT_OK)
        s = be->ops->submit(be);
    else
        be->ops->abort(be); /* as a failed submit does: the step is closed */
    be->step_open = false;
    return s;
}

void kvrt_op_abort(kvrt_backend *be)
{
    /* the backend's own state decides (a failed submit already closed it) */
    be->ops->abort(be);
    be->step_open = false;
}

kvrt_status kvrt_op_end_step(kvrt_backend *be, kvrt_status s)
{
    if (s == KVRT_OK)
        return kvrt_op_submit(be);
    kvrt_op_abort(be);
    return s;
}

/* ---- memory and limits -------------------------------------------------------------------------- */

void kvrt_op_limits(kvrt_backend *be, kvrt_context_limits *out)
{
    memset(out, 0, sizeof(*out));
    be->ops->limits(be, out);
}

kvrt_status kvrt_op_check_budget(kvrt_backend *be, uint64_t bytes, const char *what)
{
    kvrt_context_limits l;
    kvrt_op_limits(be, &l);
    if (l.memory_budget == 0 || (l.memory_in_use <= l.memory_budget && bytes <= l.memory_budget - l.memory_in_use))
        return KVRT_OK;
    return kvrt_fail(&be->err,
                     be->kind == KVRT_BACKEND_CPU ? KVRT_ERR_OUT_OF_HOST_MEMORY : KVRT_ERR_OUT_OF_DEVICE_MEMORY,
                     "%s: %s of %llu bytes exceeds the memory budget: %llu of %llu bytes in use, %llu left "
                     "(device heap %llu bytes; kvrt_context_limits.memory_budget)",
                     be->ops->name, what, (unsigned long long)bytes, (unsigned long long)l.memory_in_use,
                     (unsigned long long)l.memory_budget,
                     (unsigned long long)(l.memory_in_use < l.memory_budget ? l.memory_budget - l.memory_in_use : 0),
                     (unsigned long long)l.memory_heap);
}

kvrt_status kvrt_op_save_caches(kvrt_backend *be)
{
    return be->ops->save_caches ? be->ops->save_caches(be) : KVRT_OK;
}

kvrt_status kvrt_op_set_profiling(kvrt_backend *be, bool on)
{
    if (be->ops->set_profiling)
        KVRT_TRY(be->ops->set_profiling(be, on));
    else if (on && !be->ops->runs_at_once)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "%s backend does not support per-op profiling",
                         be->ops->name);
    be->profiling = on;
    return KVRT_OK;
}

/* ---- attention -------------------------------------------------------------------------------------- */

/* A view of `bytes` (q, out, k, v of one call) must fit one device buffer
 * (a bigger one would cross a segment of a GPU buffer). */
static kvrt_status check_buffer_limit(kvrt_backend *be, size_t bytes, const char *what)
{
    kvrt_context_limits l;
    kvrt_op_limits(be, &l);
    if (bytes <= l.max_buffer_bytes)
        return KVRT_OK;
    return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                     "%s: %zu bytes exceed the largest buffer one call can bind, %llu bytes "
                     "(kvrt_context_limits.max_buffer_bytes): fewer tokens per call",
                     what, bytes, (unsigned long long)l.max_buffer_bytes);
}

kvrt_status kvrt_op_kv_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view k, int64_t k_stride,
                             kvrt_view v, int64_t v_stride, kvrt_view slot_mapping, int32_t n_tokens)
{
    KVRT_TRY(check_pool(be, pool, "kv write"));
    const kvrt_kv_pool_desc *pd = kvrt_kv_pool_desc_of(pool);
    KVRT_TRY(kvrt_kv_check_layer(&be->err, pd, layer));
    KVRT_TRY(check_count(be, n_tokens, 0, "kv write: n_tokens"));
    int64_t row = (int64_t)pd->n_kv_heads * pd->head_dim;
    if (k_stride < row || v_stride < row)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                         "kv write: strides k %lld, v %lld shorter than a token's row (%lld)", (long long)k_stride,
                         (long long)v_stride, (long long)row);
    KVRT_TRY(check_rows(be, k, n_tokens, k_stride, row, "kv write: k"));
    KVRT_TRY(check_rows(be, v, n_tokens, v_stride, row, "kv write: v"));
    KVRT_TRY(check_ints(be, slot_mapping, n_tokens, "kv write: slot_mapping"));
    if (n_tokens == 0)
        return KVRT_OK;
    KVRT_TRY(check_buffer_limit(be, rows_bytes(n_tokens, k_stride, row), "kv write: k"));
    KVRT_TRY(check_buffer_limit(be, rows_bytes(n_tokens, v_stride, row), "kv write: v"));
    uint64_t t0 = timer_start(be);
    return timer_end(be, "kv_write", t0, OP_CALL(be, kv_write, pool, layer, k, k_stride, v, v_stride, slot_mapping,
                                                 n_tokens));
}

/* The backend's per-call limits (kvrt_context_limits), each refusal naming its limit. */
static kvrt_status check_attention_limits(kvrt_backend *be, const kvrt_kv_pool_desc *pd, const kvrt_attn_desc *d,
                                          int64_t table, bool decode, const char *what)
{
    kvrt_context_limits l;
    kvrt_op_limits(be, &l);
    int32_t hd_max = decode ? l.decode_head_dim_max : l.prefill_head_dim_max;
    if (pd->head_dim > hd_max)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "%s: head_dim %d exceeds the %s backend's limit of %d (kvrt_context_limits.%s_head_dim_max)",
                         what, (int)pd->head_dim, be->ops->name, (int)hd_max, decode ? "decode" : "prefill");
    if (table > l.max_table_entries)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "%s: a block table of %lld entries (%d sequences x %d blocks) exceeds the widest table per "
                         "call, %lld entries (kvrt_context_limits.max_table_entries)",
                         what, (long long)table, (int)d->num_seqs, (int)d->max_blocks_per_seq,
                         (long long)l.max_table_entries);
    if (d->max_seq_len > l.max_seq_len)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "%s: a sequence of %d positions exceeds the longest per call, %lld "
                         "(kvrt_context_limits.max_seq_len)",
                         what, (int)d->max_seq_len, (long long)l.max_seq_len);
    return KVRT_OK;
}

/* A copy of d whose max_seq_len is known: the table's capacity when the
 * caller left it 0 (or gave more than the table holds). */
static kvrt_attn_desc with_max_len(const kvrt_kv_pool *pool, const kvrt_attn_desc *d)
{
    kvrt_attn_desc c = *d;
    int64_t cap = (int64_t)d->max_blocks_per_seq * kvrt_kv_pool_desc_of(pool)->block_size;
    if (c.max_seq_len <= 0 || c.max_seq_len > cap)
        c.max_seq_len = (int32_t)KVRT_MIN(cap, (int64_t)INT32_MAX);
    return c;
}

/* What decode and prefill share: layer, descriptor, lengths and tables, and
 * the q/out rows (n_rows of n_heads * head_dim). */
static kvrt_status check_attention(kvrt_backend *be, const kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                   int64_t n_rows, kvrt_view q, kvrt_view out, kvrt_view seq_lens,
                                   kvrt_view block_tables, bool decode, const char *what)
{
    KVRT_TRY(check_pool(be, pool, what));
    const kvrt_kv_pool_desc *pd = kvrt_kv_pool_desc_of(pool);
    if (!d)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: no descriptor", what);
    if (layer < 0 || layer >= pd->n_layers)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: layer %d outside [0, %d)", what, (int)layer,
                         (int)pd->n_layers);
    KVRT_TRY(kvrt_attn_check_desc(&be->err, pd, d));
    KVRT_TRY(check_ints(be, seq_lens, d->num_seqs, "seq_lens"));
    int64_t table;
    if (!kvrt_mul_i64(d->num_seqs, d->max_blocks_per_seq, &table))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "block_tables: size overflows");
    KVRT_TRY(check_ints(be, block_tables, table, "block_tables"));
    if (d->num_seqs == 0)
        return KVRT_OK;
    KVRT_TRY(check_attention_limits(be, pd, d, table, decode, what));
    char name[64];
    int64_t row = (int64_t)d->n_heads * pd->head_dim;
    snprintf(name, sizeof(name), "%s: q", what);
    KVRT_TRY(check_rows(be, q, n_rows, d->q_stride, row, name));
    snprintf(name, sizeof(name), "%s: out", what);
    KVRT_TRY(check_rows(be, out, n_rows, d->o_stride, row, name));
    if (views_overlap(q, rows_bytes(n_rows, d->q_stride, row), out, rows_bytes(n_rows, d->o_stride, row)))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: out overlaps q", what);
    snprintf(name, sizeof(name), "%s: q", what);
    KVRT_TRY(check_buffer_limit(be, rows_bytes(n_rows, d->q_stride, row), name));
    snprintf(name, sizeof(name), "%s: out", what);
    return check_buffer_limit(be, rows_bytes(n_rows, d->o_stride, row), name);
}

/* What every attention entry checks first: d with the pool's max_len filled
 * in (into *known), then check_attention; a prefill also its
 * query_start_loc. *skip: nothing to compute (no sequence, or a prefill of
 * no token). */
static kvrt_status attention_checks(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc **d,
                                    kvrt_attn_desc *known, kvrt_view q, kvrt_view out, kvrt_view query_start_loc,
                                    kvrt_view seq_lens, kvrt_view block_tables, bool decode, bool *skip)
{
    if (*d && pool) {
        *known = with_max_len(pool, *d);
        *d = known;
    }
    const kvrt_attn_desc *a = *d;
    int64_t rows = !a ? 0 : decode ? a->num_seqs : a->num_tokens;
    KVRT_TRY(check_attention(be, pool, layer, a, rows, q, out, seq_lens, block_tables, decode,
                             decode ? "attention decode" : "attention prefill"));
    *skip = a->num_seqs == 0;
    if (*skip || decode)
        return KVRT_OK;
    KVRT_TRY(check_ints(be, query_start_loc, (int64_t)a->num_seqs + 1, "query_start_loc"));
    *skip = a->num_tokens == 0;
    return KVRT_OK;
}

kvrt_status kvrt_op_attn_decode(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                kvrt_view q, kvrt_view out, kvrt_view seq_lens, kvrt_view block_tables)
{
    kvrt_attn_desc known;
    bool skip;
    KVRT_TRY(attention_checks(be, pool, layer, &d, &known, q, out, (kvrt_view){0}, seq_lens, block_tables, true,
                              &skip));
    if (skip)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "attn_decode", t0, OP_CALL(be, attn_decode, pool, layer, d, q, out, seq_lens, block_tables));
}

kvrt_status kvrt_op_attn_prefill(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                 kvrt_view q, kvrt_view out, kvrt_view query_start_loc, kvrt_view seq_lens,
                                 kvrt_view block_tables)
{
    kvrt_attn_desc known;
    bool skip;
    KVRT_TRY(attention_checks(be, pool, layer, &d, &known, q, out, query_start_loc, seq_lens, block_tables, false,
                              &skip));
    if (skip)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "attn_prefill", t0,
                     OP_CALL(be, attn_prefill, pool, layer, d, q, out, query_start_loc, seq_lens, block_tables));
}

/* The lse rows of the _lse entries: F32 [rows][n_heads], inside their
 * buffer, overlapping neither q nor out. */
static kvrt_status check_lse(kvrt_backend *be, const kvrt_kv_pool *pool, const kvrt_attn_desc *d, int64_t rows,
                             kvrt_view q, kvrt_view out, kvrt_view lse, const char *what)
{
    char name[64];
    snprintf(name, sizeof(name), "%s: lse", what);
    KVRT_TRY(check_rows(be, lse, rows, d->n_heads, d->n_heads, name));
    size_t lb = rows_bytes(rows, d->n_heads, d->n_heads);
    int64_t row = (int64_t)d->n_heads * kvrt_kv_pool_desc_of(pool)->head_dim;
    if (views_overlap(lse, lb, q, rows_bytes(rows, d->q_stride, row)) ||
        views_overlap(lse, lb, out, rows_bytes(rows, d->o_stride, row)))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: lse overlaps q or out", what);
    return check_buffer_limit(be, lb, name);
}

kvrt_status kvrt_op_attn_decode_lse(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                    kvrt_view q, kvrt_view out, kvrt_view lse, kvrt_view seq_lens,
                                    kvrt_view block_tables)
{
    kvrt_attn_desc known;
    bool skip;
    KVRT_TRY(attention_checks(be, pool, layer, &d, &known, q, out, (kvrt_view){0}, seq_lens, block_tables, true,
                              &skip));
    if (skip)
        return KVRT_OK;
    KVRT_TRY(check_lse(be, pool, d, d->num_seqs, q, out, lse, "attention decode"));
    uint64_t t0 = timer_start(be);
    return timer_end(be, "attn_decode", t0,
                     OP_CALL(be, attn_decode_lse, pool, layer, d, q, out, lse, seq_lens, block_tables));
}

kvrt_status kvrt_op_attn_prefill_lse(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                     kvrt_view q, kvrt_view out, kvrt_view lse, kvrt_view query_start_loc,
                                     kvrt_view seq_lens, kvrt_view block_tables)
{
    kvrt_attn_desc known;
    bool skip;
    KVRT_TRY(attention_checks(be, pool, layer, &d, &known, q, out, query_start_loc, seq_lens, block_tables, false,
                              &skip));
    if (skip)
        return KVRT_OK;
    KVRT_TRY(check_lse(be, pool, d, d->num_tokens, q, out, lse, "attention prefill"));
    uint64_t t0 = timer_start(be);
    return timer_end(be, "attn_prefill", t0,
                     OP_CALL(be, attn_prefill_lse, pool, layer, d, q, out, lse, query_start_loc, seq_lens,
                             block_tables));
}

/* ---- model ops ------------------------------------------------------------------------------------------ */

/* Weight and table rows: F32 read as floats, the other types as 16-bit words. */
bool kvrt_op_weight_type_ok(const kvrt_backend *be, kvrt_dtype t)
{
    if (!kvrt_dtype_supported(t) || (unsigned)t >= 64)
        return false;
    uint64_t set = be->ops->weight_types ? be->ops->weight_types : KVRT_WEIGHT_TYPES_BASE;
    return (set & KVRT_WEIGHT_BIT(t)) != 0;
}

/* Types kvrt does not know, or that this backend has no kernels for. */
static kvrt_status check_weight_type(kvrt_backend *be, kvrt_dtype t, const char *what)
{
    if (!kvrt_dtype_supported(t))
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "%s type %s (%d) is not supported", what,
                         kvrt_dtype_name(t), (int)t);
    if (!kvrt_op_weight_type_ok(be, t))
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "%s type %s is not supported on the %s backend", what,
                         kvrt_dtype_name(t), be->ops->name);
    return KVRT_OK;
}

static size_t weight_align(kvrt_dtype t)
{
    return t == KVRT_DTYPE_F32 ? 4 : 2;
}

kvrt_status kvrt_op_matmul(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in, kvrt_view x,
                           int64_t x_stride, kvrt_view y, int64_t y_stride, int32_t n_tokens)
{
    KVRT_TRY(check_weight_type(be, wtype, "matmul: weight"));
    if (n_out <= 0 || n_in <= 0 || n_tokens < 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: bad shape n_out %lld, n_in %lld, n_tokens %d",
                         (long long)n_out, (long long)n_in, (int)n_tokens);
    const int32_t bv = kvrt_dtype_block_values(wtype);
    if (n_in % bv != 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT,
                         "matmul: n_in %lld is not a multiple of the %s block (%d values): rows are whole blocks",
                         (long long)n_in, kvrt_dtype_name(wtype), (int)bv);
    if (x_stride < n_in)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: x_stride %lld < n_in %lld",
                         (long long)x_stride, (long long)n_in);
    if (y_stride < n_out)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: y_stride %lld < n_out %lld",
                         (long long)y_stride, (long long)n_out);
    size_t w_bytes;
    if (!kvrt_mul_size(kvrt_dtype_row_bytes(wtype, n_in), (size_t)n_out, &w_bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: weight size overflows");
    KVRT_TRY(check_view(be, w, w_bytes, weight_align(wtype), "matmul: weights"));
    KVRT_TRY(check_rows(be, x, n_tokens, x_stride, n_in, "matmul: x"));
    KVRT_TRY(check_rows(be, y, n_tokens, y_stride, n_out, "matmul: y"));
    size_t y_bytes = rows_bytes(n_tokens, y_stride, n_out);
    if (views_overlap(x, rows_bytes(n_tokens, x_stride, n_in), y, y_bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: y overlaps x (not supported in place)");
    if (views_overlap(w, w_bytes, y, y_bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: y overlaps the weights");
    if (n_tokens == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "matmul", t0, OP_CALL(be, matmul, wtype, w, n_out, n_in, x, x_stride, y, y_stride, n_tokens));
}

kvrt_status kvrt_op_rmsnorm(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w, kvrt_view y,
                            int64_t y_stride, int32_t n_tokens, int32_t dim, float eps)
{
    KVRT_TRY(check_count(be, n_tokens, 0, "rmsnorm: n_tokens"));
    KVRT_TRY(check_count(be, dim, 1, "rmsnorm: dim"));
    if (!(eps >= 0.0f) || isinf(eps))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rmsnorm: eps %g is not a finite value >= 0",
                         (double)eps);
    KVRT_TRY(check_rows(be, x, n_tokens, x_stride, dim, "rmsnorm: x"));
    KVRT_TRY(check_rows(be, y, n_tokens, y_stride, dim, "rmsnorm: y"));
    KVRT_TRY(check_view(be, w, (size_t)dim * sizeof(float), sizeof(float), "rmsnorm: weight"));
    KVRT_TRY(check_alias(be, y, y_stride, x, x_stride, n_tokens, dim, "rmsnorm"));
    if (views_overlap(y, rows_bytes(n_tokens, y_stride, dim), w, (size_t)dim * sizeof(float)))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rmsnorm: y overlaps the weight");
    if (n_tokens == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "rmsnorm", t0, OP_CALL(be, rmsnorm, x, x_stride, w, y, y_stride, n_tokens, dim, eps));
}

static kvrt_status check_rope_desc(kvrt_backend *be, const kvrt_rope_desc *d)
{
    if (!d)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rope: no descriptor");
    KVRT_TRY(check_count(be, d->n_tokens, 0, "rope: n_tokens"));
    KVRT_TRY(check_count(be, d->n_heads, 1, "rope: n_heads"));
    KVRT_TRY(check_count(be, d->head_dim, 1, "rope: head_dim"));
    KVRT_TRY(check_count(be, d->max_pos, 1, "rope: max_pos"));
    if (d->rot_dim <= 0 || d->rot_dim % 2 != 0 || d->rot_dim > d->head_dim)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rope: rot_dim %d must be even and in [2, head_dim %d]",
                         (int)d->rot_dim, (int)d->head_dim);
    if (d->neox != 0 && d->neox != 1)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rope: neox %d is neither 0 nor 1", (int)d->neox);
    return KVRT_OK;
}

kvrt_status kvrt_op_rope(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                         const kvrt_rope_desc *d)
{
    KVRT_TRY(check_rope_desc(be, d));
    KVRT_TRY(check_rows(be, x, d->n_tokens, d->stride, (int64_t)d->n_heads * d->head_dim, "rope: x"));
    KVRT_TRY(check_ints(be, positions, d->n_tokens, "rope: positions"));
    size_t table;
    if (!kvrt_mul_size((size_t)d->max_pos, (size_t)d->rot_dim * sizeof(float), &table))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "rope: cos/sin table size overflows");
    KVRT_TRY(check_view(be, cos_sin, table, sizeof(float), "rope: cos/sin table"));
    if (d->n_tokens == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "rope", t0, OP_CALL(be, rope, x, positions, cos_sin, d));
}

kvrt_status kvrt_op_swiglu(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up, int64_t up_stride,
                           kvrt_view out, int64_t out_stride, int32_t n_tokens, int32_t dim)
{
    KVRT_TRY(check_count(be, n_tokens, 0, "swiglu: n_tokens"));
    KVRT_TRY(check_count(be, dim, 1, "swiglu: dim"));
    KVRT_TRY(check_rows(be, gate, n_tokens, gate_stride, dim, "swiglu: gate"));
    KVRT_TRY(check_rows(be, up, n_tokens, up_stride, dim, "swiglu: up"));
    KVRT_TRY(check_rows(be, out, n_tokens, out_stride, dim, "swiglu: out"));
    KVRT_TRY(check_alias(be, out, out_stride, gate, gate_stride, n_tokens, dim, "swiglu (gate)"));
    KVRT_TRY(check_alias(be, out, out_stride, up, up_stride, n_tokens, dim, "swiglu (up)"));
    if (n_tokens == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "swiglu", t0,
                     OP_CALL(be, swiglu, gate, gate_stride, up, up_stride, out, out_stride, n_tokens, dim));
}

kvrt_status kvrt_op_add(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n)
{
    KVRT_TRY(check_count(be, n, 0, "add: n"));
    size_t bytes;
    if (!kvrt_mul_size((size_t)n, sizeof(float), &bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "add: n %lld overflows", (long long)n);
    KVRT_TRY(check_view(be, a, bytes, sizeof(float), "add: a"));
    KVRT_TRY(check_view(be, b, bytes, sizeof(float), "add: b"));
    KVRT_TRY(check_view(be, out, bytes, sizeof(float), "add: out"));
    KVRT_TRY(check_alias(be, out, n, a, n, 1, n, "add (a)"));
    KVRT_TRY(check_alias(be, out, n, b, n, 1, n, "add (b)"));
    if (n == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "add", t0, OP_CALL(be, add, a, b, out, n));
}

kvrt_status kvrt_op_add_bias(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view b, kvrt_view y,
                             int64_t y_stride, int32_t n_tokens, int64_t dim)
{
    KVRT_TRY(check_count(be, n_tokens, 0, "add_bias: n_tokens"));
    KVRT_TRY(check_count(be, dim, 1, "add_bias: dim"));
    if (dim > INT32_MAX)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "add_bias: dim %lld above 2^31", (long long)dim);
    KVRT_TRY(check_rows(be, x, n_tokens, x_stride, dim, "add_bias: x"));
    KVRT_TRY(check_rows(be, y, n_tokens, y_stride, dim, "add_bias: y"));
    KVRT_TRY(check_view(be, b, (size_t)dim * sizeof(float), sizeof(float), "add_bias: b"));
    KVRT_TRY(check_alias(be, y, y_stride, x, x_stride, n_tokens, dim, "add_bias (x)"));
    KVRT_TRY(check_alias(be, y, y_stride, b, dim, 1, dim, "add_bias (b)"));
    if (n_tokens == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "add_bias", t0, OP_CALL(be, add_bias, x, x_stride, b, y, y_stride, n_tokens, dim));
}

kvrt_status kvrt_op_embed(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim, kvrt_view ids,
                          int32_t n_tokens, kvrt_view out)
{
    KVRT_TRY(check_weight_type(be, wtype, "embed: table"));
    KVRT_TRY(check_count(be, n_tokens, 0, "embed: n_tokens"));
    KVRT_TRY(check_count(be, dim, 1, "embed: dim"));
    const size_t row_bytes = kvrt_dtype_row_bytes(wtype, dim);
    if (row_bytes == 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "embed: dim %lld is not a multiple of the %s block (%d)",
                         (long long)dim, kvrt_dtype_name(wtype), (int)kvrt_dtype_block_values(wtype));
    /* the table's row count is not passed: every whole row after the view is one */
    KVRT_TRY(check_view(be, table, row_bytes, weight_align(wtype), "embed: table"));
    KVRT_TRY(check_ints(be, ids, n_tokens, "embed: ids"));
    KVRT_TRY(check_rows(be, out, n_tokens, dim, dim, "embed: out"));
    if (n_tokens == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "embed", t0, OP_CALL(be, embed, wtype, table, dim, ids, n_tokens, out));
}

kvrt_status kvrt_op_gather_rows(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx, int32_t n,
                                kvrt_view dst, int64_t dst_stride, int32_t dim)
{
    KVRT_TRY(check_count(be, n, 0, "gather_rows: n"));
    KVRT_TRY(check_count(be, dim, 1, "gather_rows: dim"));
    KVRT_TRY(check_rows(be, src, 1, src_stride, dim, "gather_rows: src"));
    KVRT_TRY(check_ints(be, idx, n, "gather_rows: idx"));
    KVRT_TRY(check_rows(be, dst, n, dst_stride, dim, "gather_rows: dst"));
    /* the source's rows are every row after the view */
    size_t tail = kvrt_buffer_head_of(src.buf)->size - src.offset;
    if (views_overlap(dst, rows_bytes(n, dst_stride, dim), src, tail))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "gather_rows: dst overlaps src");
    if (n == 0)
        return KVRT_OK;
    uint64_t t0 = timer_start(be);
    return timer_end(be, "gather_rows", t0, OP_CALL(be, gather_rows, src, src_stride, idx, n, dst, dst_stride, dim));
}
