/* CPU kv write: new tokens' K and V through the slot mapping into the
 * per-layer pools ([num_blocks][n_kv_heads][block_size][head_dim]). */
#include "cpu_attention.h"

#include <string.h>

kvrt_status kvrt_cpu_kv_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                              kvrt_view k, int64_t k_stride, kvrt_view v, int64_t v_stride,
                              kvrt_view slot_mapping, int32_t n_tokens)
{
    const kvrt_kv_pool_desc *pd = &pool->desc;
    const int32_t *slots = kvrt_cpu_ptr(slot_mapping);

    const kvrt_cpu_attn_kernels *ker = kvrt_cpu_attn_kernels_get();
    const float *ks = kvrt_cpu_ptr(k), *vs = kvrt_cpu_ptr(v);
    size_t elem = pd->dtype == KVRT_DTYPE_F16 ? 2 : 4;
    size_t hd = (size_t)pd->head_dim, bs = (size_t)pd->block_size;
    for (int32_t t = 0; t < n_tokens; t++) {
        if (slots[t] < 0)
            continue;
        size_t block = (size_t)slots[t] / bs, off = (size_t)slots[t] % bs;
        for (size_t h = 0; h < (size_t)pd->n_kv_heads; h++) {
            size_t at = (((block * (size_t)pd->n_kv_heads + h) * bs) + off) * hd * elem;
            const float *kr = ks + (size_t)t * (size_t)k_stride + h * hd;
            const float *vr = vs + (size_t)t * (size_t)v_stride + h * hd;
            char *kd = (char *)pool->k[layer] + at, *vd = (char *)pool->v[layer] + at;
            if (pd->dtype == KVRT_DTYPE_F16) {
                ker->f2h((uint16_t *)(void *)kd, kr, (int64_t)hd);
                ker->f2h((uint16_t *)(void *)vd, vr, (int64_t)hd);
            } else {
                memcpy(kd, kr, hd * sizeof(float));
                memcpy(vd, vr, hd * sizeof(float));
            }
        }
    }
    return KVRT_OK;
}
