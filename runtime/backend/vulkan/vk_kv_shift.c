/* Context shift on Vulkan: the stored keys of whole blocks re-rotated in
 * place (shaders/kv_rope_shift.comp), F32 and F16 pools. */
#include "backend/vulkan/vk_internal.h"

#include <string.h>

typedef struct { KVRT_PUSH_ROPE_SHIFT } vk_push_rope_shift;

kvrt_status kvrt_vk_kv_rope_shift(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view blocks,
                                  int32_t n_blocks, kvrt_view cos_sin, int32_t rot_dim, int32_t neox)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    const kvrt_kv_pool_desc *d = &pool->desc;
    vk_push_rope_shift pc;
    if (d->dtype != KVRT_DTYPE_F32 && d->dtype != KVRT_DTYPE_F16)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "vulkan: rope shift of a %s KV cache: only f32 and f16 here",
                         kvrt_dtype_name(d->dtype));
    memset(&pc, 0, sizeof(pc));
    pc.n_kv_heads = (uint32_t)d->n_kv_heads;
    pc.head_dim = (uint32_t)d->head_dim;
    pc.block_size = (uint32_t)d->block_size;
    pc.num_blocks = (uint32_t)d->num_blocks;
    pc.blocks_per_seg = pool->blocks_per_seg;
    pc.k_type = pool->k_type;
    pc.v_type = pool->v_type;
    pc.n_blocks = (uint32_t)n_blocks;
    pc.rot_dim = (uint32_t)rot_dim;
    pc.neox = (uint32_t)neox;
    kvrt_vk_bind bind = {.buf = {blocks.buf, cos_sin.buf}};
    kvrt_vk_pipe_id pipe = kvrt_vk_pool_bind(pool, layer, KVRT_VK_PIPE_ROPE_SHIFT, &bind);
    KVRT_TRY(kvrt_vk_view_seg(vk, blocks, (size_t)n_blocks * 4, "rope shift blocks", &bind.seg[0], &pc.blocks_off));
    KVRT_TRY(kvrt_vk_view_seg(vk, cos_sin, (size_t)rot_dim * 4, "rope shift cos/sin", &bind.seg[1], &pc.cs_off));
    uint64_t total = (uint64_t)n_blocks * (uint64_t)d->n_kv_heads * (uint64_t)d->block_size * (uint64_t)(rot_dim / 2);
    if (total > UINT32_MAX)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "vulkan: rope shift of %d blocks in one call is too many",
                         (int)n_blocks);
    uint32_t groups = (uint32_t)KVRT_MIN((total + 63) / 64, (uint64_t)vk->caps.max_wg_count[0]);
    bool implicit;
    KVRT_TRY(kvrt_vk_acquire(vk, &implicit));
    kvrt_status s = kvrt_vk_dispatch(vk, pipe, &bind, &pc, sizeof(pc), groups, 1, 1);
    return kvrt_vk_end_implicit(vk, implicit, s);
}
