/* Context shift on OpenCL: the stored keys of whole blocks re-rotated in
 * place (kernels/kv.cl kv_rope_shift), F32 and F16 pools. */
#include "backend/opencl/cl_internal.h"

enum { CL_K_KV_ROPE_SHIFT = 1 }; /* index in the kv.cl program (cl_program.c) */

kvrt_status kvrt_cl_kv_rope_shift(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view blocks,
                                  int32_t n_blocks, kvrt_view cos_sin, int32_t rot_dim, int32_t neox)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    const kvrt_kv_pool_desc *d = &pool->desc;
    cl_mem bm, cm;
    if (d->dtype != KVRT_DTYPE_F32 && d->dtype != KVRT_DTYPE_F16)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "opencl: rope shift of a %s KV cache: only f32 and f16 here",
                         kvrt_dtype_name(d->dtype));
    kvrt_cl_rope_shift_args a = {.n_blocks = n_blocks, .rot_dim = rot_dim, .neox = neox};
    KVRT_TRY(kvrt_cl_resolve(cl, blocks, (size_t)n_blocks * 4, 4, "rope shift blocks", &bm, &a.blocks_off));
    KVRT_TRY(kvrt_cl_resolve(cl, cos_sin, (size_t)rot_dim * 4, 4, "rope shift cos/sin", &cm, &a.cs_off));
    cl_kernel kern;
    int variant = KVRT_CL_KV_VARIANT(pool->k_type, pool->v_type);
    KVRT_TRY(kvrt_cl_kernel(cl, KVRT_CL_PROG_KV, variant, CL_K_KV_ROPE_SHIFT, &kern));
    kvrt_cl_pool_args pa = {.blocks_per_seg = pool->blocks_per_seg, .num_blocks = d->num_blocks,
                            .n_kv_heads = d->n_kv_heads, .block_size = d->block_size, .head_dim = d->head_dim};
    kvrt_cl_arg args[16];
    int n = 0;
    args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &bm};
    args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &cm};
    const kvrt_cl_pool_part *part = &pool->k[layer];
    for (int i = 0; i < KVRT_CL_MAX_KV_SEGS; i++) /* unused segments repeat segment 0 */
        args[n++] = (kvrt_cl_arg){sizeof(cl_mem), &part->segs[i < part->n_segs ? i : 0]};
    args[n++] = (kvrt_cl_arg){sizeof(pa), &pa};
    args[n++] = (kvrt_cl_arg){sizeof(a), &a};
    KVRT_TRY(kvrt_cl_set_args(cl, kern, args, n, "kv_rope_shift"));
    size_t global[3] = {(size_t)(rot_dim / 2), (size_t)d->n_kv_heads * (size_t)d->block_size, (size_t)n_blocks};
    return kvrt_cl_enqueue(cl, kern, 3, global, NULL, "kv_rope_shift");
}
