/* CPU kv write: new tokens' K and V through the slot mapping into the
 * per-layer pools ([num_blocks][n_kv_heads][block_size][head_dim]). */
#include "cpu_attention.h"

#include <string.h>

/* One token's K and V rows (every KV head) into a quantized block: the
 * layout module's rule (kv_layout.h), the one every backend implements. */
static void write_quant(kvrt_kv_pool *pool, int32_t layer, const kvrt_kv_dtype_desc *qt, const float *kr,
                        const float *vr, size_t block, size_t off)
{
    const kvrt_kv_pool_desc *pd = &pool->desc;
    for (int32_t h = 0; h < pd->n_kv_heads; h++) {
        size_t r = (size_t)h * (size_t)pd->block_size + off, at = block * pool->block_bytes;
        size_t vals = at + kvrt_kv_row_values(qt, pd->head_dim, r);
        size_t scales = at + kvrt_kv_row_scales(qt, pd->n_kv_heads, pd->block_size, pd->head_dim, r);
        uint8_t *k = pool->k[layer], *v = pool->v[layer];
        kvrt_kv_quantize_row(pd->dtype, kr + (size_t)h * (size_t)pd->head_dim, pd->head_dim, k + vals, k + scales);
        kvrt_kv_quantize_row(pd->dtype, vr + (size_t)h * (size_t)pd->head_dim, pd->head_dim, v + vals, v + scales);
    }
}

/* F16 KV saturates (DESIGN.md "The block layout"): a value beyond +-65504
 * (inf included) is stored as +-65504, as on Vulkan and OpenCL, so the
 * backends keep byte-identical blocks; NaN stays NaN. Clamped in chunks on
 * the stack, then converted by the kernel set's f2h. */
static void f2h_saturate(const kvrt_cpu_attn_kernels *ker, uint16_t *dst, const float *src, size_t n)
{
    enum { CHUNK = 64 };
    float tmp[CHUNK];
    for (size_t i = 0; i < n; i += CHUNK) {
        size_t m = KVRT_MIN((size_t)CHUNK, n - i);
        for (size_t j = 0; j < m; j++) {
            float x = src[i + j];
            tmp[j] = x > 65504.0f ? 65504.0f : x < -65504.0f ? -65504.0f : x;
        }
        ker->f2h(dst + i, tmp, (int64_t)m);
    }
}

kvrt_status kvrt_cpu_kv_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                              kvrt_view k, int64_t k_stride, kvrt_view v, int64_t v_stride,
                              kvrt_view slot_mapping, int32_t n_tokens)
{
    const kvrt_kv_pool_desc *pd = &pool->desc;
    const int32_t *slots = kvrt_cpu_ptr(slot_mapping);

    const kvrt_cpu_attn_kernels *ker = kvrt_cpu_attn_kernels_get();
    const float *ks = kvrt_cpu_ptr(k), *vs = kvrt_cpu_ptr(v);
    size_t elem = pd->dtype == KVRT_DTYPE_F16 ? 2 : 4;
    const kvrt_kv_dtype_desc *qt = kvrt_kv_dtype(pd->dtype);
    size_t hd = (size_t)pd->head_dim, bs = (size_t)pd->block_size;
    for (int32_t t = 0; t < n_tokens; t++) {
        if (slots[t] < 0)
            continue;
        size_t block = (size_t)slots[t] / bs, off = (size_t)slots[t] % bs;
        if (qt && qt->scales == KVRT_KV_SCALES_IN_BLOCK) {
            write_quant(pool, layer, qt, ks + (size_t)t * (size_t)k_stride, vs + (size_t)t * (size_t)v_stride,
                        block, off);
            continue;
        }
        for (size_t h = 0; h < (size_t)pd->n_kv_heads; h++) {
            size_t at = (((block * (size_t)pd->n_kv_heads + h) * bs) + off) * hd * elem;
            const float *kr = ks + (size_t)t * (size_t)k_stride + h * hd;
            const float *vr = vs + (size_t)t * (size_t)v_stride + h * hd;
            char *kd = (char *)pool->k[layer] + at, *vd = (char *)pool->v[layer] + at;
            if (pd->dtype == KVRT_DTYPE_F16) {
                f2h_saturate(ker, (uint16_t *)(void *)kd, kr, hd);
                f2h_saturate(ker, (uint16_t *)(void *)vd, vr, hd);
            } else {
                memcpy(kd, kr, hd * sizeof(float));
                memcpy(vd, vr, hd * sizeof(float));
            }
        }
    }
    return KVRT_OK;
}
