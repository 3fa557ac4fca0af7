/* Paged attention on Vulkan: split-K decode (attn_decode + attn_merge) and
 * split-K tiled prefill (attn_prefill + attn_prefill_merge). See the shaders
 * for the work split. */
#include "backend/vulkan/vk_internal.h"

#include <string.h>

typedef struct { KVRT_PUSH_ATTN } vk_push_attn;

/* Keys per split-K partition: functions of the model and device only, so a
 * sequence's partitions depend on its own length alone (batch invariance).
 * They also bound the loop trips of one invocation, which lavapipe stops,
 * silently, after 65,535 in total: every kernel stays under KVRT_VK_TRIPS
 * (the shaders' headers give each bound). */
#define KVRT_VK_PART_TOKENS 512u
#define KVRT_VK_PREFILL_PART_TOKENS 256u /* halved while over the trip budget; a multiple of every key tile */
#define KVRT_VK_MAX_HEAD_DIM 1024        /* largest head_dim of the attention kernels */
#define KVRT_VK_DECODE_MAX_QD 1024 /* heads_per_wg * head_dim: bounds an invocation's loops */
#define KVRT_VK_DECODE_MAX_HW 16   /* MAX_HW in attn_decode.comp */
#define KVRT_VK_DECODE_WG 64u      /* keys per tile (WG in attn_decode.comp) */
#define KVRT_VK_DECODE_FIXED 176u  /* FIXED_WORDS in attn_decode.comp: 2 * WG + 3 * MAX_HW */

static kvrt_status vk_attn_common(kvrt_vk_backend *vk, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                  vk_push_attn *pc)
{
    const kvrt_kv_pool_desc *pd = &pool->desc; /* shapes checked by the front door; limits here */
    if (pd->head_dim > KVRT_VK_MAX_HEAD_DIM)
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED,
                         "attention: head_dim %d exceeds the Vulkan attention kernels' limit of %d", (int)pd->head_dim,
                         KVRT_VK_MAX_HEAD_DIM);
    if (d->q_stride > UINT32_MAX || d->o_stride > UINT32_MAX)
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED, "attention: strides too large");
    memset(pc, 0, sizeof(*pc));
    pc->n_kv_heads = (uint32_t)pd->n_kv_heads;
    pc->head_dim = (uint32_t)pd->head_dim;
    pc->block_size = (uint32_t)pd->block_size;
    pc->num_blocks = (uint32_t)pd->num_blocks;
    pc->blocks_per_seg = pool->blocks_per_seg;
    pc->k_type = pool->k_type;
    pc->v_type = pool->v_type;
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

/* Most split-K partitions the merge passes (attn_merge, attn_prefill_merge)
 * take per row: their loop trips, 2 (P + 1) + E + 1 + E (P + 1) with
 * E = ceil(D / 64), stay within KVRT_VK_TRIPS. 2,220 at head_dim 1024. */
static uint32_t vk_merge_max_parts(uint32_t D)
{
    uint32_t e = (D + 63) / 64;
    return (KVRT_VK_TRIPS - e - 1) / (e + 2) - 1;
}

/* Refuses sequences longer than the merge takes at this head_dim (exact;
 * the front door already refused what exceeds kvrt_context_limits.max_seq_len,
 * the bound at every head_dim, so this is a backstop). */
static kvrt_status vk_check_parts(kvrt_vk_backend *vk, const char *op, uint32_t parts, uint32_t part_tokens,
                                  uint32_t D)
{
    uint32_t max = vk_merge_max_parts(D);
    if (parts <= max)
        return KVRT_OK;
    return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED,
                     "%s: sequences of up to %llu keys exceed the Vulkan limit of %llu keys per sequence at "
                     "head_dim %u (%u partitions of %u)", op, (unsigned long long)parts * part_tokens,
                     (unsigned long long)max * part_tokens, D, max, part_tokens);
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
    uint64_t parts = (max_ctx + pc.part_tokens - 1) / pc.part_tokens;
    KVRT_TRY(vk_check_parts(vk, "attn_decode", (uint32_t)KVRT_MIN(parts, (uint64_t)UINT32_MAX), pc.part_tokens,
                            pc.head_dim));
    pc.max_parts = (uint32_t)parts;
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

#define KVRT_VK_PREFILL_WG 64u     /* WG in attn_prefill.comp */
#define KVRT_VK_PREFILL_FIXED 320u /* FIXED_WORDS in attn_prefill.comp: 5 * MAX_TILE (64) */

static uint64_t vk_cdiv(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}

/* Slices per dot product of attn_prefill for tq x tk tiles (powers of two). */
static uint32_t vk_prefill_slices(uint32_t tq, uint32_t tk)
{
    return tq * tk >= KVRT_VK_PREFILL_WG ? 1 : KVRT_VK_PREFILL_WG / (tq * tk);
}

/* Shared floats attn_prefill needs beyond its fixed arrays (same formulas
 * as the shader): q [tq][ks], acc [tq][D], K/V [tk][ks], p [tq][tk] and
 * WG slice sums when dot products are split, ks = S * odd >= D. */
static uint64_t vk_prefill_need(uint32_t D, uint32_t tq, uint32_t tk)
{
    uint32_t s = vk_prefill_slices(tq, tk);
    uint64_t ks = (uint64_t)s * ((vk_cdiv(D, s)) | 1u);
    return tq * ks + (uint64_t)tq * D + tk * ks + (uint64_t)tq * tk + (s > 1 ? KVRT_VK_PREFILL_WG : 0);
}

/* Loop trips of one attn_prefill invocation over a partition of `part`
 * keys, every loop's exit counted as a trip (the bound in the shader's
 * header; invocation 0 takes the most). */
static uint64_t vk_prefill_trips(uint32_t D, uint32_t tq, uint32_t tk, uint32_t part)
{
    const uint64_t wg = KVRT_VK_PREFILL_WG;
    uint64_t s = vk_prefill_slices(tq, tk), e = vk_cdiv((uint64_t)tq * D, wg);
    uint64_t n = vk_cdiv((uint64_t)tq * tk * s, wg), log2s = 0;
    while ((1ull << log2s) < s)
        log2s++;
    uint64_t tile = 2 * (vk_cdiv((uint64_t)tk * D, wg) + 1)   /* stage K and V */
                    + n + 1 + n * (vk_cdiv(D, s) + 1)          /* scores */
                    + (s > 1 ? log2s + 1 : 0)                  /* slice sums */
                    + 2 * ((uint64_t)tk + 1)                   /* softmax */
                    + e + 1 + e * ((uint64_t)tk + 1) + 1;      /* accumulate, key loop */
    return vk_cdiv(part, tk) * tile + 2 * (e + 1) + 4;
}

/* Tile sizes from the shared memory the prefill shader has (floats): the
 * widest key tile, then the tallest query tile, that fit; query tiles at
 * least as tall as key tiles are wide where possible. Then the partition:
 * 256 keys, halved until an invocation's trips fit KVRT_VK_TRIPS (128 keys
 * for some head sizes above 128 with 32 KiB or more, e.g. 673 to 776 on
 * lavapipe's 32 KiB; never with 16 KiB). */
static bool vk_prefill_tiles(uint32_t smem, uint32_t D, uint32_t *tq, uint32_t *tk, uint32_t *part)
{
    static const uint32_t kt[] = {64, 32, 16, 8, 4, 2, 1};
    if (smem <= KVRT_VK_PREFILL_FIXED)
        return false;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(kt); i++) {
        for (uint32_t q = 64; q >= 1; q /= 2) {
            if (vk_prefill_need(D, q, kt[i]) > smem - KVRT_VK_PREFILL_FIXED || (q < kt[i] && q * 2 <= 64 && kt[i] > 1))
                continue;
            uint32_t p = KVRT_VK_PREFILL_PART_TOKENS;
            while (vk_prefill_trips(D, q, kt[i], p) > KVRT_VK_TRIPS && p / 2 >= 64)
                p /= 2;
            if (vk_prefill_trips(D, q, kt[i], p) > KVRT_VK_TRIPS)
                continue;
            *tq = q;
            *tk = kt[i];
            *part = p;
            return true;
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
    if (!vk_prefill_tiles(kvrt_vk_prefill_smem_floats(vk), pc.head_dim, &pc.tile_q, &pc.tile_k, &pc.part_tokens))
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
    uint64_t max_ctx = (uint64_t)d->max_seq_len; /* partitions follow the real lengths, not the table */
    uint64_t parts = (max_ctx + pc.part_tokens - 1) / pc.part_tokens;
    KVRT_TRY(vk_check_parts(vk, "attn_prefill", (uint32_t)KVRT_MIN(parts, (uint64_t)UINT32_MAX), pc.part_tokens,
                            pc.head_dim));
    pc.max_parts = (uint32_t)parts;
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
    /* one query tile (merge: one row) per workgroup, never a second: the
     * dispatches cover tiles [tile_base, tile_base + max_wg_count[0]) */
    uint64_t step = vk->caps.max_wg_count[0];
    for (uint64_t t = 0; s == KVRT_OK && t < tiles; t += step) {
        bind.buf[1] = vk->scratch;
        pc.tile_base = (uint32_t)t;
        s = kvrt_vk_dispatch(vk, pipe, &bind, &pc, sizeof(pc), (uint32_t)KVRT_MIN(tiles - t, step),
                             (uint32_t)d->n_heads, (uint32_t)d->num_seqs * pc.max_parts);
    }
    kvrt_vk_bind mb = {.buf = {vk->scratch, out.buf, seq_lens.buf, NULL, query_start_loc.buf},
                       .seg = {0, o_seg, bind.seg[2], 0, bind.seg[4]}};
    for (uint64_t t = 0; s == KVRT_OK && t < max_tokens; t += step) {
        pc.tile_base = (uint32_t)t;
        s = kvrt_vk_dispatch(vk, KVRT_VK_PIPE_ATTN_PREFILL_MERGE, &mb, &pc, sizeof(pc),
                             (uint32_t)KVRT_MIN(max_tokens - t, step), (uint32_t)d->n_heads, (uint32_t)d->num_seqs);
    }
    return kvrt_vk_end_implicit(vk, implicit, s);
}

/* ---- limits ---------------------------------------------------------------------------- */

/* The largest head_dim (up to KVRT_VK_MAX_HEAD_DIM) a kernel's tiles fit,
 * without GQA (more query heads per KV head only share K/V rows). */
static int32_t vk_head_dim_max(kvrt_vk_backend *vk, bool decode)
{
    uint32_t smem = kvrt_vk_prefill_smem_floats(vk), hw, kt, tq, tk, part;
    for (uint32_t D = KVRT_VK_MAX_HEAD_DIM; D >= 1; D--) {
        if (decode ? vk_decode_tiles(smem, 1, D, &hw, &kt) : vk_prefill_tiles(smem, D, &tq, &tk, &part))
            return (int32_t)D;
    }
    return 0;
}

/* The longest sequence the merge passes take at every head_dim up to the
 * kernels' limits: partitions (vk_merge_max_parts) times the smallest
 * partition at that head_dim, decode's 256 keys or prefill's from its tiles
 * (128 at some head sizes). The per-call check (vk_check_parts) is exact
 * for the call's head_dim; this is the one number kvrt_context_limits has
 * (e.g. ~341,000 keys on lavapipe, at head_dim 776). */
static int64_t vk_max_seq_len(kvrt_vk_backend *vk, int32_t hd_max)
{
    uint32_t smem = kvrt_vk_prefill_smem_floats(vk), tq, tk, part;
    int64_t best = INT32_MAX;
    for (uint32_t D = 1; D <= (uint32_t)hd_max; D++) {
        uint32_t p = KVRT_VK_PART_TOKENS / 2;
        if (vk_prefill_tiles(smem, D, &tq, &tk, &part))
            p = KVRT_MIN(p, part);
        best = KVRT_MIN(best, (int64_t)vk_merge_max_parts(D) * p);
    }
    return best;
}

void kvrt_vk_limits(kvrt_backend *be, kvrt_context_limits *out)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (vk->attn_head_dim_max[0] == 0) { /* device constants: worked out once */
        vk->attn_head_dim_max[0] = vk_head_dim_max(vk, true);
        vk->attn_head_dim_max[1] = vk_head_dim_max(vk, false);
        vk->attn_max_seq_len =
            vk_max_seq_len(vk, KVRT_MAX(vk->attn_head_dim_max[0], vk->attn_head_dim_max[1]));
    }
    out->memory_heap = vk->heap;
    out->memory_budget = vk->budget;
    out->memory_in_use = vk->used;
    out->max_buffer_bytes = kvrt_vk_max_segment(vk);
    out->decode_head_dim_max = vk->attn_head_dim_max[0];
    out->prefill_head_dim_max = vk->attn_head_dim_max[1];
    /* a table is one binding of one segment, indexed in 32-bit words */
    out->max_table_entries = (int64_t)KVRT_MIN(kvrt_vk_max_segment(vk) / 4, (size_t)UINT32_MAX);
    out->max_seq_len = vk->attn_max_seq_len;
    out->max_scratch_bytes = kvrt_vk_max_scratch(vk);
    out->scratch_bytes = vk->scratch ? vk->scratch->head.size : 0;
}
