/* Paged attention on Vulkan: split-K decode (attn_decode + attn_merge) and
 * split-K tiled prefill (attn_prefill + attn_prefill_merge). See the shaders
 * for the work split. */
#include "backend/vulkan/vk_internal.h"

#include <string.h>

typedef struct { KVRT_PUSH_ATTN } vk_push_attn;

/* Keys per split-K partition: constants, so a sequence's partitions depend
 * on its own length only (batch invariance). They also bound the loop
 * iterations of one invocation, which lavapipe caps at 65535 in total. */
#define KVRT_VK_PART_TOKENS 512u
#define KVRT_VK_PREFILL_PART_TOKENS 256u /* a multiple of every key tile */
#define KVRT_VK_DECODE_MAX_QD 1024 /* heads_per_wg * head_dim: bounds an invocation's loops */
#define KVRT_VK_DECODE_MAX_HW 16   /* MAX_HW in attn_decode.comp */
#define KVRT_VK_DECODE_WG 64u      /* keys per tile (WG in attn_decode.comp) */
#define KVRT_VK_DECODE_FIXED 176u  /* FIXED_WORDS in attn_decode.comp: 2 * WG + 3 * MAX_HW */

static kvrt_status vk_attn_common(kvrt_vk_backend *vk, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                  vk_push_attn *pc)
{
    const kvrt_kv_pool_desc *pd = &pool->desc; /* shapes checked by the front door; limits here */
    if (d->q_stride > UINT32_MAX || d->o_stride > UINT32_MAX || pd->head_dim > KVRT_VK_DECODE_MAX_QD)
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED, "attention: strides or head_dim too large");
    memset(pc, 0, sizeof(*pc));
    pc->n_kv_heads = (uint32_t)pd->n_kv_heads;
    pc->head_dim = (uint32_t)pd->head_dim;
    pc->block_size = (uint32_t)pd->block_size;
    pc->num_blocks = (uint32_t)pd->num_blocks;
    pc->blocks_per_seg = pool->blocks_per_seg;
    pc->f16 = pd->dtype == KVRT_DTYPE_F16;
    pc->num_seqs = (uint32_t)d->num_seqs;
    pc->n_heads = (uint32_t)d->n_heads;
    pc->max_blocks = (uint32_t)d->max_blocks_per_seq;
    pc->scale = d->scale;
    pc->window = (uint32_t)d->window;
    pc->sinks = (uint32_t)d->sinks;
    pc->q_stride = (uint32_t)d->q_stride;
    pc->o_stride = (uint32_t)d->o_stride;
    return KVRT_OK;
}

/* Bytes of n token rows of `row` floats, `stride` apart. */
static size_t vk_rows(int64_t n, int64_t stride, int64_t row)
{
    return n <= 0 ? 0 : (size_t)((n - 1) * stride + row) * 4;
}

/* Shared floats attn_decode needs beyond its fixed arrays for hw query heads
 * and key sub-tiles of kt rows (same formulas as the shader): q [hw][ks],
 * acc [hw][D], scores [hw][WG], slice partials [WG], K rows [kt][ks], where
 * ks = S * odd >= D, S slices per dot product (bank-conflict-free padding). */
static uint64_t vk_decode_need(uint32_t D, uint32_t hw, uint32_t kt)
{
    uint32_t s = 1;
    while (kt * hw * s * 2 <= KVRT_VK_DECODE_WG)
        s *= 2;
    uint64_t ks = (uint64_t)s * (((D + s - 1) / s) | 1u);
    return hw * ks + (uint64_t)hw * D + (uint64_t)hw * KVRT_VK_DECODE_WG + KVRT_VK_DECODE_WG + kt * ks;
}

/* Query heads one decode workgroup takes (the largest divisor of the group
 * with hw * D <= MAX_QD: each K/V row is read once for all of them) and the
 * largest power-of-two key sub-tile whose staged rows then fit shared memory.
 * Keys staged per sub-tile with 48 KiB: D <= 128 the whole 64-key tile, D 256
 * 32, D 1024 8; with lavapipe's 32 KiB: D <= 96 64, D 128 32, D 256 16; with
 * Vulkan's minimum 16 KiB: D 128 8 to 16, D 1024 1 (then 64 slices). */
static bool vk_decode_tiles(uint32_t smem, uint32_t group, uint32_t D, uint32_t *hw, uint32_t *kt)
{
    if (smem <= KVRT_VK_DECODE_FIXED)
        return false;
    for (uint32_t h = KVRT_MIN(group, KVRT_VK_DECODE_MAX_HW); h >= 1; h--) {
        if (group % h || (uint64_t)h * D > KVRT_VK_DECODE_MAX_QD)
            continue;
        for (uint32_t k = KVRT_VK_DECODE_WG; k >= 1; k /= 2) {
            if (vk_decode_need(D, h, k) <= smem - KVRT_VK_DECODE_FIXED) {
                *hw = h;
                *kt = k;
                return true;
            }
        }
    }
    return false;
}

kvrt_status kvrt_vk_attn_decode(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                kvrt_view q, kvrt_view out, kvrt_view seq_lens, kvrt_view block_tables)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    vk_push_attn pc;
    KVRT_TRY(vk_attn_common(vk, pool, layer, d, &pc));
    if (d->num_seqs == 0)
        return KVRT_OK;
    int64_t row = (int64_t)d->n_heads * pool->desc.head_dim;
    uint64_t max_ctx = (uint64_t)d->max_seq_len; /* partitions follow the real lengths, not the table */
    uint32_t group = (uint32_t)(d->n_heads / pool->desc.n_kv_heads);
    if (!vk_decode_tiles(kvrt_vk_prefill_smem_floats(vk), group, pc.head_dim, &pc.heads_per_wg, &pc.tile_k))
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "attn_decode: head_dim %u does not fit shared memory",
                         pc.head_dim);
    /* A sub-tile of fewer than 4 (key, head) items splits each dot product
     * into up to 64 slices, whose sums cost invocation 0 up to 64 iterations
     * a key: half-size partitions keep it near 30,000 loop iterations, well
     * under lavapipe's cap. The choice depends on the model and device only,
     * so partitions still depend on a sequence's own length alone. */
    pc.part_tokens = pc.tile_k * pc.heads_per_wg < 4 ? KVRT_VK_PART_TOKENS / 2 : KVRT_VK_PART_TOKENS;
    pc.max_parts = (uint32_t)((max_ctx + pc.part_tokens - 1) / pc.part_tokens);
    uint64_t scratch = (uint64_t)d->num_seqs * (uint64_t)d->n_heads * pc.max_parts * (pc.head_dim + 2u) * 4u;
    if (scratch / 4 > UINT32_MAX) /* the shaders index it in 32-bit words */
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "attn_decode: scratch of %llu bytes exceeds 32-bit indexing",
                         (unsigned long long)scratch);

    kvrt_vk_bind bind = {.buf = {q.buf, NULL, seq_lens.buf, block_tables.buf, NULL}};
    kvrt_vk_pipe_id pipe = kvrt_vk_pool_bind(pool, layer, KVRT_VK_PIPE_ATTN_DECODE, &bind);
    KVRT_TRY(kvrt_vk_view_seg(vk, q, vk_rows(d->num_seqs, d->q_stride, row), "attn_decode q", &bind.seg[0],
                              &pc.q_off));
    uint32_t o_seg;
    KVRT_TRY(kvrt_vk_view_seg(vk, out, vk_rows(d->num_seqs, d->o_stride, row), "attn_decode out", &o_seg, &pc.o_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, seq_lens, (size_t)d->num_seqs * 4, "attn_decode seq_lens", &bind.seg[2],
                              &pc.seq_lens_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, block_tables, (size_t)d->num_seqs * (size_t)d->max_blocks_per_seq * 4,
                              "attn_decode block_tables", &bind.seg[3], &pc.bt_off));
    bool implicit;
    KVRT_TRY(kvrt_vk_acquire(vk, &implicit));
    kvrt_status s = kvrt_vk_scratch_reserve(vk, (size_t)scratch);
    if (s == KVRT_OK) {
        bind.buf[1] = vk->scratch;
        s = kvrt_vk_dispatch(vk, pipe, &bind, &pc, sizeof(pc), pc.max_parts,
                             (uint32_t)pool->desc.n_kv_heads * (group / pc.heads_per_wg), (uint32_t)d->num_seqs);
    }
    if (s == KVRT_OK) {
        kvrt_vk_bind mb = {.buf = {NULL, out.buf, seq_lens.buf, NULL, vk->scratch},
                           .seg = {0, o_seg, bind.seg[2], 0, 0}};
        s = kvrt_vk_dispatch(vk, KVRT_VK_PIPE_ATTN_MERGE, &mb, &pc, sizeof(pc), (uint32_t)d->n_heads,
                             (uint32_t)d->num_seqs, 1);
    }
    return kvrt_vk_end_implicit(vk, implicit, s);
}

/* Tile sizes from the shared memory the prefill shader has (floats):
 * 2*tq*D (q, acc) + tk*D (K/V) + tq*tk (p) + tk (blocks) + 3*tq (m, l, alpha). */
static bool vk_prefill_tiles(uint32_t smem, uint32_t D, uint32_t *tq, uint32_t *tk)
{
    static const uint32_t kt[] = {64, 32, 16, 8, 4, 2, 1};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(kt); i++) {
        for (uint32_t q = 64; q >= 1; q /= 2) {
            uint64_t need = 2ull * q * D + (uint64_t)kt[i] * D + (uint64_t)q * kt[i] + kt[i] + 3ull * q;
            /* keep query tiles at least as tall as key tiles are wide where possible */
            if (need <= smem && (q >= kt[i] || q * 2 > 64 || kt[i] == 1)) {
                *tq = q;
                *tk = kt[i];
                return true;
            }
        }
    }
    return false;
}

kvrt_status kvrt_vk_attn_prefill(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                 kvrt_view q, kvrt_view out, kvrt_view query_start_loc, kvrt_view seq_lens,
                                 kvrt_view block_tables)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    vk_push_attn pc;
    KVRT_TRY(vk_attn_common(vk, pool, layer, d, &pc));
    if (d->num_seqs == 0)
        return KVRT_OK;
    if (!vk_prefill_tiles(kvrt_vk_prefill_smem_floats(vk), pc.head_dim, &pc.tile_q, &pc.tile_k))
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "attn_prefill: head_dim %u does not fit shared memory",
                         pc.head_dim);
    int64_t row = (int64_t)d->n_heads * pool->desc.head_dim;
    /* The token count lives on the device; the q buffer bounds it. */
    if (!q.buf || q.offset > q.buf->head.size)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "attn_prefill: bad q view");
    uint64_t max_tokens = (q.buf->head.size - q.offset) / 4 >= (uint64_t)row
                              ? ((q.buf->head.size - q.offset) / 4 - (uint64_t)row) / (uint64_t)d->q_stride + 1
                              : 0;
    if (max_tokens == 0)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "attn_prefill: q holds no token row");
    if (d->num_tokens > 0) /* the rows the call has (the front door checked q holds them): scratch follows them */
        max_tokens = KVRT_MIN(max_tokens, (uint64_t)d->num_tokens);
    uint64_t tiles = (max_tokens + pc.tile_q - 1) / pc.tile_q;
    /* one query tile per workgroup: with the 256-key partitions this bounds the
     * loop iterations of an invocation (below lavapipe's 65535) */
    pc.n_tile_groups = (uint32_t)KVRT_MIN(tiles, (uint64_t)vk->caps.max_wg_count[0]);
    uint64_t max_ctx = (uint64_t)d->max_seq_len; /* partitions follow the real lengths, not the table */
    pc.part_tokens = KVRT_VK_PREFILL_PART_TOKENS;
    pc.max_parts = (uint32_t)((max_ctx + pc.part_tokens - 1) / pc.part_tokens);
    uint64_t scratch = max_tokens * (uint64_t)d->n_heads * pc.max_parts * (pc.head_dim + 2u) * 4u;
    if (scratch > SIZE_MAX / 2 || (uint64_t)d->num_seqs * pc.max_parts > vk->caps.max_wg_count[2])
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED,
                         "attn_prefill: %d sequences x %u partitions of %u keys exceed the device's %u workgroups "
                         "per dispatch (maxComputeWorkGroupCount[2]): fewer sequences per call",
                         (int)d->num_seqs, pc.max_parts, pc.part_tokens, vk->caps.max_wg_count[2]);
    kvrt_vk_bind bind = {.buf = {q.buf, NULL, seq_lens.buf, block_tables.buf, query_start_loc.buf}};
    kvrt_vk_pipe_id pipe = kvrt_vk_pool_bind(pool, layer, KVRT_VK_PIPE_ATTN_PREFILL, &bind);
    KVRT_TRY(kvrt_vk_view_seg(vk, q, vk_rows((int64_t)max_tokens, d->q_stride, row), "attn_prefill q", &bind.seg[0],
                              &pc.q_off));
    /* out must hold as many rows as q can (the kernel writes only real tokens) */
    if (!out.buf || out.offset > out.buf->head.size)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "attn_prefill: bad out view");
    uint32_t o_seg;
    KVRT_TRY(kvrt_vk_view_seg(vk, out, vk_rows(1, d->o_stride, row), "attn_prefill out", &o_seg, &pc.o_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, seq_lens, (size_t)d->num_seqs * 4, "attn_prefill seq_lens", &bind.seg[2],
                              &pc.seq_lens_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, block_tables, (size_t)d->num_seqs * (size_t)d->max_blocks_per_seq * 4,
                              "attn_prefill block_tables", &bind.seg[3], &pc.bt_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, query_start_loc, ((size_t)d->num_seqs + 1) * 4, "attn_prefill query_start_loc",
                              &bind.seg[4], &pc.qsl_off));
    bool implicit;
    KVRT_TRY(kvrt_vk_acquire(vk, &implicit));
    kvrt_status s = kvrt_vk_scratch_reserve(vk, (size_t)scratch);
    if (s == KVRT_OK) {
        bind.buf[1] = vk->scratch;
        s = kvrt_vk_dispatch(vk, pipe, &bind, &pc, sizeof(pc), pc.n_tile_groups, (uint32_t)d->n_heads,
                             (uint32_t)d->num_seqs * pc.max_parts);
    }
    if (s == KVRT_OK) {
        kvrt_vk_bind mb = {.buf = {vk->scratch, out.buf, seq_lens.buf, NULL, query_start_loc.buf},
                           .seg = {0, o_seg, bind.seg[2], 0, bind.seg[4]}};
        pc.n_tile_groups = (uint32_t)KVRT_MIN(max_tokens, (uint64_t)vk->caps.max_wg_count[0]);
        s = kvrt_vk_dispatch(vk, KVRT_VK_PIPE_ATTN_PREFILL_MERGE, &mb, &pc, sizeof(pc), pc.n_tile_groups,
                             (uint32_t)d->n_heads, (uint32_t)d->num_seqs);
    }
    return kvrt_vk_end_implicit(vk, implicit, s);
}

/* ---- limits ---------------------------------------------------------------------------- */

/* The largest head_dim (up to KVRT_VK_DECODE_MAX_QD) a kernel's tiles fit,
 * without GQA (more query heads per KV head only share K/V rows). */
static int32_t vk_head_dim_max(kvrt_vk_backend *vk, bool decode)
{
    uint32_t smem = kvrt_vk_prefill_smem_floats(vk), hw, kt, tq, tk;
    for (uint32_t D = KVRT_VK_DECODE_MAX_QD; D >= 1; D--) {
        if (decode ? vk_decode_tiles(smem, 1, D, &hw, &kt) : vk_prefill_tiles(smem, D, &tq, &tk))
            return (int32_t)D;
    }
    return 0;
}

void kvrt_vk_limits(kvrt_backend *be, kvrt_context_limits *out)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (vk->attn_head_dim_max[0] == 0) { /* device constants: worked out once */
        vk->attn_head_dim_max[0] = vk_head_dim_max(vk, true);
        vk->attn_head_dim_max[1] = vk_head_dim_max(vk, false);
    }
    out->memory_heap = vk->heap;
    out->memory_budget = vk->budget;
    out->memory_in_use = vk->used;
    out->max_buffer_bytes = kvrt_vk_max_segment(vk);
    out->decode_head_dim_max = vk->attn_head_dim_max[0];
    out->prefill_head_dim_max = vk->attn_head_dim_max[1];
    /* a table is one binding of one segment, indexed in 32-bit words */
    out->max_table_entries = (int64_t)KVRT_MIN(kvrt_vk_max_segment(vk) / 4, (size_t)UINT32_MAX);
    out->max_seq_len = INT32_MAX;
    out->max_scratch_bytes = kvrt_vk_max_scratch(vk);
    out->scratch_bytes = vk->scratch ? vk->scratch->head.size : 0;
}
