/* Model ops on Vulkan (F32 activations): matmul for F32/F16/BF16/Q8_0/Q4_0
 * weights that may span buffer segments (GEMV for decode, tiled GEMM for
 * prefill), rmsnorm, RoPE from the host's cos/sin table, SwiGLU, add, embedding
 * gather, row gather. Each maps its views to segments, then records one
 * dispatch (inside the open step, or as its own step when none is open). */
#include "backend/vulkan/vk_internal.h"
#include "common/quant.h"

#include <string.h>

typedef struct { KVRT_PUSH_OPS } vk_push_ops;

/* Loop trips of one invocation are bounded in every shader (lavapipe stops
 * an invocation's loops, silently, after 65,535 in total; each shader's
 * header gives its bound). Rows that one workgroup walks (rmsnorm, a
 * matmul's inputs) have this many elements at most, and a GEMV lane at
 * most KVRT_VK_GEMV_STEPS steps of one row; grid-stride loops (add, swiglu,
 * rope, embed, gather, kv_write) take at most ~1,024 trips, the grid growing
 * with the size. */
#define KVRT_VK_MAX_ROW (1 << 19)
#define KVRT_VK_GEMV_STEPS 16384
#define KVRT_VK_MAX_OUT_ROWS (1 << 24) /* matmul output rows: bounds the row rounds of a capped grid */

/* Refuses a row longer than the shaders' per-workgroup loops take. */
static kvrt_status vk_row_limit(kvrt_backend *be, const char *op, int64_t n)
{
    if (n <= KVRT_VK_MAX_ROW)
        return KVRT_OK;
    return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "%s: rows of %lld elements exceed the Vulkan limit of %d", op,
                     (long long)n, KVRT_VK_MAX_ROW);
}

/* Bytes of n rows of `row` F32 elements, `stride` apart; false when the
 * shape is negative, overflows, or exceeds what 32-bit word offsets reach. */
static bool vk_span(int64_t n, int64_t stride, int64_t row, int64_t elem, size_t *out)
{
    int64_t last, total;
    if (n <= 0 || row <= 0 || stride < row || stride > UINT32_MAX || !kvrt_mul_i64(n - 1, stride, &last) ||
        __builtin_add_overflow(last, row, &total) || !kvrt_mul_i64(total, elem, &total) ||
        total > (int64_t)UINT32_MAX * 4)
        return false;
    *out = (size_t)total;
    return true;
}

static kvrt_status vk_bad_shape(kvrt_backend *be, const char *op)
{
    return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "%s: bad sizes or strides", op);
}

static kvrt_status vk_record(kvrt_vk_backend *vk, kvrt_vk_pipe_id id, const kvrt_vk_bind *bind,
                             const vk_push_ops *pc, uint64_t gx, uint64_t gy)
{
    if (gx == 0 || gy == 0)
        return KVRT_OK;
    if (gx > UINT32_MAX || gy > UINT32_MAX)
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED, "vulkan: grid too large");
    bool implicit;
    KVRT_TRY(kvrt_vk_acquire(vk, &implicit));
    kvrt_status s = kvrt_vk_dispatch(vk, id, bind, pc, sizeof(*pc), (uint32_t)gx, (uint32_t)gy, 1);
    return kvrt_vk_end_implicit(vk, implicit, s);
}

static uint64_t vk_groups(uint64_t items, const kvrt_vk_backend *vk)
{
    return KVRT_MIN((items + 63) / 64, (uint64_t)vk->caps.max_wg_count[0]);
}

/* Workgroups on x for a grid-stride loop over `items` that prefers at most
 * `cap` of them (more groups along y): the cap gives way once an invocation
 * would take more than 1,024 trips (items / (64 * 1024) groups). */
static uint64_t vk_groups_capped(uint64_t items, uint64_t cap, const kvrt_vk_backend *vk)
{
    return KVRT_MIN(vk_groups(items, vk), KVRT_MAX(cap, (items + 65535) / 65536));
}

/* Weight type -> shader code (weights.glsl); elements per block and bytes
 * per block (1 and the element size for unquantized types). */
static kvrt_status vk_wtype(kvrt_backend *be, kvrt_dtype t, const char *op, uint32_t *code, int64_t *blk,
                            int64_t *blk_bytes)
{
    *blk = 1;
    switch (t) {
    case KVRT_DTYPE_F32: *code = 0, *blk_bytes = 4; return KVRT_OK;
    case KVRT_DTYPE_F16: *code = 1, *blk_bytes = 2; return KVRT_OK;
    case KVRT_DTYPE_BF16: *code = 2, *blk_bytes = 2; return KVRT_OK;
    case KVRT_DTYPE_Q8_0: *code = 3, *blk = 32, *blk_bytes = 34; return KVRT_OK;
    case KVRT_DTYPE_Q4_0: *code = 4, *blk = 32, *blk_bytes = 18; return KVRT_OK;
    default: break;
    }
    /* the types of issue #14, decoded element by element (weights.glsl codes 5..14) */
    static const kvrt_dtype more[] = {KVRT_DTYPE_Q4_1, KVRT_DTYPE_Q5_0, KVRT_DTYPE_Q5_1, KVRT_DTYPE_IQ4_NL,
                                      KVRT_DTYPE_Q2_K, KVRT_DTYPE_Q3_K, KVRT_DTYPE_Q4_K, KVRT_DTYPE_Q5_K,
                                      KVRT_DTYPE_Q6_K, KVRT_DTYPE_IQ4_XS};
    for (uint32_t i = 0; i < KVRT_ARRAY_LEN(more); i++) {
        if (more[i] == t) {
            *code = 5 + i;
            *blk = kvrt_dtype_block_values(t);
            *blk_bytes = (int64_t)kvrt_dtype_block_bytes(t);
            return KVRT_OK;
        }
    }
    return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "vulkan: %s with %s weights is not implemented", op,
                     kvrt_dtype_name(t));
}

/* Bytes of one weight row of n elements; false when n is not a whole number of blocks. */
static bool vk_row_bytes(int64_t n, int64_t blk, int64_t blk_bytes, int64_t *out)
{
    return n > 0 && n % blk == 0 && kvrt_mul_i64(n / blk, blk_bytes, out);
}

/* Rows of buffer `a` (weights, a table, gathered rows) as shaders/weights.glsl
 * reads them: row r starts row_bytes * r after the view and reads row_read
 * bytes; rows [0, n_rows) exist. */
typedef struct vk_rows {
    kvrt_view v;
    size_t row_bytes;
    size_t row_read;
    int64_t n_rows;
} vk_rows;

/* Workgroups on x for `rows` rows in groups of rows_per_group (shaders
 * stride over what the capped grid does not cover); gx when 0. */
static uint64_t vk_row_groups(const kvrt_vk_backend *vk, uint64_t rows, uint32_t rows_per_group, uint64_t gx)
{
    if (!rows_per_group)
        return gx;
    return KVRT_MIN((rows + rows_per_group - 1) / rows_per_group, (uint64_t)vk->caps.max_wg_count[0]);
}

/* Records the op over the rows: one dispatch when they sit in one segment or
 * the device has buffer device addresses (address table at binding 5),
 * otherwise one dispatch per segment over the rows starting in it, with that
 * segment and the next bound. Matmul puts the rows on the grid's x in groups
 * of rows_per_group (0: x is gx, rows are not on the grid). */
static kvrt_status vk_record_rows(kvrt_vk_backend *vk, kvrt_vk_pipe_id id, kvrt_vk_pipe_id bda_id, const char *op,
                                  kvrt_vk_bind *bind, vk_push_ops *pc, const vk_rows *r, uint32_t rows_per_group,
                                  uint64_t gx, uint64_t gy)
{
    kvrt_buffer *b = r->v.buf;
    size_t span;
    if (!b || r->n_rows <= 0 || !kvrt_mul_size((size_t)(r->n_rows - 1), r->row_bytes, &span) ||
        __builtin_add_overflow(span, r->row_read, &span) || r->v.offset > b->head.size ||
        span > b->head.size - r->v.offset)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INVALID_ARGUMENT, "%s: rows exceed the buffer (%zu bytes)", op,
                         b ? b->head.size : 0);
    if (r->v.offset % 4 || r->row_bytes % 2)
        return kvrt_fail(&vk->base.err, KVRT_ERR_INVALID_ARGUMENT, "%s: offset %zu is not 4-byte aligned", op,
                         r->v.offset);
    /* 32-bit word indices from the buffer start; a row plus one word of look-ahead within a segment */
    if ((r->v.offset + span) / 4 >= UINT32_MAX || span > UINT32_MAX || r->row_read + 4 > b->seg_bytes ||
        r->row_bytes > b->seg_bytes)
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED, "%s: %zu-byte rows over %zu bytes exceed what %zu-byte "
                         "segments address", op, r->row_read, span, b->seg_bytes);
    pc->a_off = (uint32_t)(r->v.offset / 4);
    pc->seg_words = (uint32_t)(b->seg_bytes / 4);
    size_t s0 = r->v.offset / b->seg_bytes, s1 = (r->v.offset + span - 1) / b->seg_bytes;
    bool implicit;
    KVRT_TRY(kvrt_vk_acquire(vk, &implicit));
    kvrt_status st = KVRT_OK;
    if (s0 != s1 && vk->caps.bda) {
        kvrt_buffer *table;
        st = kvrt_vk_addr_table(vk, b, &table);
        bind->buf[0] = NULL;
        bind->buf[3] = table;
        bind->seg[3] = 0;
        pc->row_lo = 0;
        pc->row_hi = (uint32_t)r->n_rows;
        uint64_t x = vk_row_groups(vk, (uint64_t)r->n_rows, rows_per_group, gx);
        if (st == KVRT_OK)
            st = kvrt_vk_dispatch(vk, bda_id, bind, pc, sizeof(*pc), (uint32_t)x, (uint32_t)gy, 1);
        return kvrt_vk_end_implicit(vk, implicit, st);
    }
    for (size_t s = s0; st == KVRT_OK && s <= s1; s++) {
        /* rows whose first byte lies in segment s */
        size_t lo = s * b->seg_bytes, hi = lo + b->seg_bytes;
        size_t r_lo = lo <= r->v.offset ? 0 : (lo - r->v.offset + r->row_bytes - 1) / r->row_bytes;
        size_t r_hi = KVRT_MIN((size_t)r->n_rows, (hi - r->v.offset + r->row_bytes - 1) / r->row_bytes);
        if (r_lo >= r_hi)
            continue;
        bind->buf[0] = b;
        bind->seg[0] = (uint32_t)s;
        bind->buf[3] = b;
        bind->seg[3] = (uint32_t)KVRT_MIN(s + 1, (size_t)b->n_segs - 1);
        pc->win_base = (uint32_t)(lo / 4);
        pc->row_lo = (uint32_t)r_lo;
        pc->row_hi = (uint32_t)r_hi;
        uint64_t x = vk_row_groups(vk, (uint64_t)(r_hi - r_lo), rows_per_group, gx);
        st = kvrt_vk_dispatch(vk, id, bind, pc, sizeof(*pc), (uint32_t)x, (uint32_t)gy, 1);
    }
    return kvrt_vk_end_implicit(vk, implicit, st);
}

/* Tile of shaders/matmul_tiled.comp (its TR x TT), and the fewest tokens
 * that take it. Against the first GEMV (one row per workgroup) the tiled
 * shader won from 2 tokens on lavapipe (768 x 768 Q8_0: 46 vs 68 ms; 4
 * tokens 49 vs 149 ms). The GEMV now reads each weight once per 4 tokens,
 * which moves the break-even up; 4 keeps one- to three-sequence decode on
 * the GEMV's row-parallel grid, which fills a large GPU that a handful of
 * 64-row tiles would leave idle. Both points want measuring on a GPU. */
#define VK_GEMM_ROWS 64u
#define VK_GEMM_TOKENS 32u
#define VK_GEMM_MIN_TOKENS 4

/* Tokens per GEMV workgroup (TT of shaders/matmul.comp). */
#define VK_GEMV_TOKENS 4u

/* Rows per GEMV workgroup, as shaders/matmul.comp splits its 64 invocations:
 * one subgroup per row with subgroup arithmetic, otherwise gemv_lanes()
 * lanes per row. A mismatch would only cost speed (the shader strides over
 * rows). */
static uint32_t vk_gemv_rows(const kvrt_vk_backend *vk, uint32_t wtype, int64_t n_in)
{
    if (vk->caps.features & KVRT_FEATURE_SUBGROUPS)
        return vk->caps.subgroup_size && vk->caps.subgroup_size < 64 ? 64 / vk->caps.subgroup_size : 1;
    int64_t steps = wtype >= 3 ? n_in / 32 : (wtype == 0 ? n_in / 4 : n_in / 8);
    uint32_t lanes = 4;
    while (lanes < 64 && 3 * (int64_t)lanes < steps)
        lanes *= 2;
    return 64 / lanes;
}

/* Steps of the longest lane of a GEMV row (row_partial in matmul.comp:
 * quant blocks, or 4 strided words / word pairs, per step). */
static int64_t vk_gemv_steps(const kvrt_vk_backend *vk, uint32_t wtype, int64_t n_in)
{
    int64_t lanes = 64 / vk_gemv_rows(vk, wtype, n_in);
    int64_t units = wtype >= 3 ? n_in / 32 : (wtype == 0 ? n_in : n_in / 2);
    int64_t per_step = wtype >= 3 ? lanes : 4 * lanes;
    int64_t steps = (units + per_step - 1) / per_step;
    /* codes 5..14 (w_elem): a step is a loop over the block's 32 elements,
     * not unrolled, so it counts as its 34 trips */
    return wtype >= 5 ? steps * 34 : steps;
}

/* Loop trips of one matmul_tiled invocation (the bound in its header): row
 * tile rounds x (steps of 32 inputs x trips a step + 2) + 1. A step takes
 * 1 trip with the unrolled loads of codes 0..4 and 19 with the two 8-element
 * loops of codes 5..14 (w_elem, not unrolled). Codes 0..4 stay under ~16,700
 * at any shape the weights' 32-bit offsets allow; codes 5..14 reach
 * KVRT_VK_TRIPS near 67,000 inputs. */
static uint64_t vk_tiled_trips(const kvrt_vk_backend *vk, uint32_t wtype, int64_t n_in, int64_t n_out)
{
    uint64_t tiles = ((uint64_t)n_out + VK_GEMM_ROWS - 1) / VK_GEMM_ROWS;
    uint64_t rounds = (tiles + vk->caps.max_wg_count[0] - 1) / vk->caps.max_wg_count[0];
    uint64_t steps = ((uint64_t)n_in + 31) / 32;
    return rounds * (steps * (wtype >= 5 ? 19 : 1) + 2) + 1;
}

kvrt_status kvrt_vk_matmul(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in, kvrt_view x,
                           int64_t x_stride, kvrt_view y, int64_t y_stride, int32_t n_tokens)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    vk_push_ops pc;
    memset(&pc, 0, sizeof(pc));
    int64_t blk = 1, blk_bytes = 4, row = 0;
    KVRT_TRY(vk_wtype(be, wtype, "matmul", &pc.wtype, &blk, &blk_bytes));
    if (n_tokens == 0)
        return KVRT_OK;
    size_t xb, yb;
    if (n_tokens < 0 || n_out <= 0 || n_out > UINT32_MAX || !vk_row_bytes(n_in, blk, blk_bytes, &row) ||
        !vk_span(n_tokens, x_stride, n_in, 4, &xb) || !vk_span(n_tokens, y_stride, n_out, 4, &yb))
        return vk_bad_shape(be, "matmul");
    KVRT_TRY(vk_row_limit(be, "matmul", n_in));
    if (n_out > KVRT_VK_MAX_OUT_ROWS)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "matmul: %lld output rows exceed the Vulkan limit of %d",
                         (long long)n_out, KVRT_VK_MAX_OUT_ROWS);
    /* prefill: tiles of VK_GEMM_ROWS x VK_GEMM_TOKENS (matmul_tiled.comp);
     * decode and short chunks: workgroups of a few rows x VK_GEMV_TOKENS */
    bool tiled = n_tokens >= VK_GEMM_MIN_TOKENS;
    if (!tiled && vk_gemv_steps(vk, pc.wtype, n_in) > KVRT_VK_GEMV_STEPS)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "matmul: rows of %lld inputs exceed what this device's GEMV lanes take (%d steps a lane)",
                         (long long)n_in, KVRT_VK_GEMV_STEPS);
    if (tiled && vk_tiled_trips(vk, pc.wtype, n_in, n_out) > KVRT_VK_TRIPS)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "matmul: %lld x %lld %s weights exceed the Vulkan tiled kernel's limit of %u loop trips an "
                         "invocation", (long long)n_out, (long long)n_in, kvrt_dtype_name(wtype), KVRT_VK_TRIPS);
    uint64_t tok = tiled ? VK_GEMM_TOKENS : VK_GEMV_TOKENS;
    uint64_t gy = ((uint64_t)n_tokens + tok - 1) / tok;
    if (gy > vk->caps.max_wg_count[1])
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "vulkan: matmul of %d tokens exceeds the grid", n_tokens);
    kvrt_vk_bind bind = {.buf = {w.buf, x.buf, y.buf}};
    KVRT_TRY(kvrt_vk_view_seg(vk, x, xb, "matmul x", &bind.seg[1], &pc.b_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, y, yb, "matmul y", &bind.seg[2], &pc.c_off));
    pc.n_tokens = (uint32_t)n_tokens;
    pc.dim = (uint32_t)n_in;
    pc.n_out = (uint32_t)n_out;
    pc.b_stride = (uint32_t)x_stride;
    pc.c_stride = (uint32_t)y_stride;
    vk_rows r = {w, (size_t)row, (size_t)row, n_out};
    if (tiled)
        return vk_record_rows(vk, KVRT_VK_PIPE_MATMUL_TILED, KVRT_VK_PIPE_MATMUL_TILED_BDA, "matmul weights", &bind,
                              &pc, &r, VK_GEMM_ROWS, 0, gy);
    return vk_record_rows(vk, KVRT_VK_PIPE_MATMUL, KVRT_VK_PIPE_MATMUL_BDA, "matmul weights", &bind, &pc, &r,
                          vk_gemv_rows(vk, pc.wtype, n_in), 0, gy);
}

kvrt_status kvrt_vk_rmsnorm(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w, kvrt_view y,
                            int64_t y_stride, int32_t n_tokens, int32_t dim, float eps)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (n_tokens == 0)
        return KVRT_OK;
    size_t xb, wb, yb;
    if (n_tokens < 0 || !vk_span(n_tokens, x_stride, dim, 4, &xb) || !vk_span(1, dim, dim, 4, &wb) ||
        !vk_span(n_tokens, y_stride, dim, 4, &yb))
        return vk_bad_shape(be, "rmsnorm");
    KVRT_TRY(vk_row_limit(be, "rmsnorm", dim));
    vk_push_ops pc;
    memset(&pc, 0, sizeof(pc));
    kvrt_vk_bind bind = {.buf = {x.buf, w.buf, y.buf}};
    KVRT_TRY(kvrt_vk_view_seg(vk, x, xb, "rmsnorm x", &bind.seg[0], &pc.a_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, w, wb, "rmsnorm w", &bind.seg[1], &pc.b_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, y, yb, "rmsnorm y", &bind.seg[2], &pc.c_off));
    pc.n_tokens = (uint32_t)n_tokens;
    pc.dim = (uint32_t)dim;
    pc.a_stride = (uint32_t)x_stride;
    pc.c_stride = (uint32_t)y_stride;
    pc.eps = eps;
    return vk_record(vk, KVRT_VK_PIPE_RMSNORM, &bind, &pc, (uint64_t)n_tokens, 1);
}

kvrt_status kvrt_vk_rope(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                         const kvrt_rope_desc *d)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (d->n_tokens == 0)
        return KVRT_OK;
    size_t xb, pb, cb;
    int64_t row = (int64_t)d->n_heads * d->head_dim;
    if (d->n_tokens < 0 || d->n_heads <= 0 || d->head_dim <= 0 || d->rot_dim <= 0 || d->rot_dim % 2 ||
        d->rot_dim > d->head_dim || d->max_pos <= 0 || !vk_span(d->n_tokens, d->stride, row, 4, &xb) ||
        !vk_span(d->n_tokens, 1, 1, 4, &pb) || !vk_span(d->max_pos, d->rot_dim, d->rot_dim, 4, &cb))
        return vk_bad_shape(be, "rope");
    vk_push_ops pc;
    memset(&pc, 0, sizeof(pc));
    kvrt_vk_bind bind = {.buf = {x.buf, positions.buf, cos_sin.buf}};
    KVRT_TRY(kvrt_vk_view_seg(vk, x, xb, "rope x", &bind.seg[0], &pc.a_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, positions, pb, "rope positions", &bind.seg[1], &pc.b_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, cos_sin, cb, "rope cos_sin", &bind.seg[2], &pc.c_off));
    pc.n_tokens = (uint32_t)d->n_tokens;
    pc.a_stride = (uint32_t)d->stride;
    pc.n_heads = (uint32_t)d->n_heads;
    pc.head_dim = (uint32_t)d->head_dim;
    pc.rot_dim = (uint32_t)d->rot_dim;
    pc.neox = d->neox != 0;
    pc.max_pos = (uint32_t)d->max_pos;
    uint64_t total = (uint64_t)d->n_tokens * (uint64_t)d->n_heads * (uint64_t)(d->rot_dim / 2);
    if (total > UINT32_MAX)
        return vk_bad_shape(be, "rope");
    return vk_record(vk, KVRT_VK_PIPE_ROPE, &bind, &pc, vk_groups(total, vk), 1);
}

kvrt_status kvrt_vk_swiglu(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up, int64_t up_stride,
                           kvrt_view out, int64_t out_stride, int32_t n_tokens, int32_t dim)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (n_tokens == 0)
        return KVRT_OK;
    size_t gb, ub, ob;
    if (n_tokens < 0 || !vk_span(n_tokens, gate_stride, dim, 4, &gb) || !vk_span(n_tokens, up_stride, dim, 4, &ub) ||
        !vk_span(n_tokens, out_stride, dim, 4, &ob))
        return vk_bad_shape(be, "swiglu");
    vk_push_ops pc;
    memset(&pc, 0, sizeof(pc));
    kvrt_vk_bind bind = {.buf = {gate.buf, up.buf, out.buf}};
    KVRT_TRY(kvrt_vk_view_seg(vk, gate, gb, "swiglu gate", &bind.seg[0], &pc.a_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, up, ub, "swiglu up", &bind.seg[1], &pc.b_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, out, ob, "swiglu out", &bind.seg[2], &pc.c_off));
    pc.n_tokens = (uint32_t)n_tokens;
    pc.dim = (uint32_t)dim;
    pc.a_stride = (uint32_t)gate_stride;
    pc.b_stride = (uint32_t)up_stride;
    pc.c_stride = (uint32_t)out_stride;
    return vk_record(vk, KVRT_VK_PIPE_SWIGLU, &bind, &pc, vk_groups_capped((uint64_t)dim, 256, vk),
                     (uint64_t)n_tokens);
}

kvrt_status kvrt_vk_add(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (n == 0)
        return KVRT_OK;
    size_t bytes;
    if (!vk_span(1, n, n, 4, &bytes))
        return vk_bad_shape(be, "add");
    vk_push_ops pc;
    memset(&pc, 0, sizeof(pc));
    kvrt_vk_bind bind = {.buf = {a.buf, b.buf, out.buf}};
    KVRT_TRY(kvrt_vk_view_seg(vk, a, bytes, "add a", &bind.seg[0], &pc.a_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, b, bytes, "add b", &bind.seg[1], &pc.b_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, out, bytes, "add out", &bind.seg[2], &pc.c_off));
    pc.n_out = (uint32_t)n;
    return vk_record(vk, KVRT_VK_PIPE_ADD, &bind, &pc, vk_groups((uint64_t)n, vk), 1);
}

kvrt_status kvrt_vk_add_bias(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view b, kvrt_view y,
                             int64_t y_stride, int32_t n_tokens, int64_t dim)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (n_tokens == 0)
        return KVRT_OK;
    size_t xb, bb, yb;
    if (n_tokens < 0 || dim < 1 || dim > UINT32_MAX || !vk_span(n_tokens, x_stride, dim, 4, &xb) ||
        !vk_span(1, dim, dim, 4, &bb) || !vk_span(n_tokens, y_stride, dim, 4, &yb))
        return vk_bad_shape(be, "add_bias");
    vk_push_ops pc;
    memset(&pc, 0, sizeof(pc));
    kvrt_vk_bind bind = {.buf = {x.buf, b.buf, y.buf}};
    KVRT_TRY(kvrt_vk_view_seg(vk, x, xb, "add_bias x", &bind.seg[0], &pc.a_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, b, bb, "add_bias b", &bind.seg[1], &pc.b_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, y, yb, "add_bias y", &bind.seg[2], &pc.c_off));
    pc.n_tokens = (uint32_t)n_tokens;
    pc.dim = (uint32_t)dim;
    pc.a_stride = (uint32_t)x_stride;
    pc.b_stride = 0; /* the one bias row for every token */
    pc.c_stride = (uint32_t)y_stride;
    return vk_record(vk, KVRT_VK_PIPE_ADD_BIAS, &bind, &pc, vk_groups_capped((uint64_t)dim, 256, vk),
                     (uint64_t)n_tokens);
}

/* The rest of a buffer from a view on: tables whose row count the op does not get. */
static size_t vk_tail(kvrt_view v)
{
    return v.buf && v.offset <= v.buf->head.size ? v.buf->head.size - v.offset : 0;
}

static kvrt_status vk_rows_op(kvrt_vk_backend *vk, kvrt_vk_pipe_id id, kvrt_vk_pipe_id bda_id, const char *op,
                              vk_push_ops *pc, const vk_rows *src, kvrt_view idx, kvrt_view dst, size_t dst_bytes,
                              int32_t n)
{
    if (n > (int32_t)vk->caps.max_wg_count[1])
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED, "vulkan: %s of %d rows exceeds the grid", op, n);
    kvrt_vk_bind bind = {.buf = {src->v.buf, idx.buf, dst.buf}};
    KVRT_TRY(kvrt_vk_view_seg(vk, idx, (size_t)n * 4, op, &bind.seg[1], &pc->b_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, dst, dst_bytes, op, &bind.seg[2], &pc->c_off));
    return vk_record_rows(vk, id, bda_id, op, &bind, pc, src, 0, vk_groups_capped(pc->dim, 64, vk), (uint64_t)n);
}

kvrt_status kvrt_vk_embed(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim, kvrt_view ids,
                          int32_t n_tokens, kvrt_view out)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    vk_push_ops pc;
    memset(&pc, 0, sizeof(pc));
    int64_t blk = 1, blk_bytes = 4, row = 0;
    KVRT_TRY(vk_wtype(be, wtype, "embed", &pc.wtype, &blk, &blk_bytes));
    if (n_tokens == 0)
        return KVRT_OK;
    size_t ob;
    if (n_tokens < 0 || !vk_row_bytes(dim, blk, blk_bytes, &row) || !vk_span(n_tokens, dim, dim, 4, &ob))
        return vk_bad_shape(be, "embed");
    pc.dim = (uint32_t)dim;
    pc.c_stride = (uint32_t)dim;
    vk_rows r = {table, (size_t)row, (size_t)row, (int64_t)(vk_tail(table) / (size_t)row)};
    return vk_rows_op(vk, KVRT_VK_PIPE_EMBED, KVRT_VK_PIPE_EMBED_BDA, "embed", &pc, &r, ids, out, ob, n_tokens);
}

kvrt_status kvrt_vk_gather_rows(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx, int32_t n,
                                kvrt_view dst, int64_t dst_stride, int32_t dim)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (n == 0)
        return KVRT_OK;
    size_t db, sb;
    if (n < 0 || !vk_span(n, dst_stride, dim, 4, &db) || !vk_span(1, src_stride, dim, 4, &sb))
        return vk_bad_shape(be, "gather_rows");
    vk_push_ops pc;
    memset(&pc, 0, sizeof(pc));
    pc.dim = (uint32_t)dim;
    pc.a_stride = (uint32_t)src_stride;
    pc.c_stride = (uint32_t)dst_stride;
    size_t tail = vk_tail(src), row = (size_t)src_stride * 4;
    vk_rows r = {src, row, sb, tail < sb ? 0 : (int64_t)((tail - sb) / row + 1)};
    return vk_rows_op(vk, KVRT_VK_PIPE_GATHER, KVRT_VK_PIPE_GATHER_BDA, "gather_rows", &pc, &r, idx, dst, db, n);
}
