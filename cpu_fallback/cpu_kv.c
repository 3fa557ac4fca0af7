/* CPU kv write: new tokens' K and V through the slot mapping into the
 * per-layer pools ([num_blocks][n_kv_heads][block_size][head_dim]). */
#include "cpu_attention.h"

#include <string.h>

/* One token's K or V rows (every KV head) into a quantized block (q8_0,
 * q4_0 with their in-block scales; fp8 values alone): the layout module's
 * rule (kv_layout.h), the one every backend implements. */
static void write_quant(const kvrt_kv_pool_desc *pd, const kvrt_kv_dtype_desc *qt, uint8_t *pool_base,
                        size_t block_bytes, const float *x, size_t block, size_t off)
{
    for (int32_t h = 0; h < pd->n_kv_heads; h++) {
        size_t r = (size_t)h * (size_t)pd->block_size + off, at = block * block_bytes;
        size_t vals = at + kvrt_kv_row_values(qt, pd->head_dim, r);
        uint8_t *scales = qt->scales == KVRT_KV_SCALES_IN_BLOCK
                              ? pool_base + at + kvrt_kv_row_scales(qt, pd->n_kv_heads, pd->block_size, pd->head_dim, r)
                              : NULL;
        kvrt_kv_quantize_row(qt->dtype, x + (size_t)h * (size_t)pd->head_dim, pd->head_dim, pool_base + vals, scales);
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

/* One token's K or V rows (every KV head) at (block, off) of a pool of dtype t. */
static void write_rows(const kvrt_cpu_attn_kernels *ker, const kvrt_kv_pool_desc *pd, kvrt_dtype t, char *base,
                       size_t block_bytes, const float *x, size_t block, size_t off)
{
    const kvrt_kv_dtype_desc *qt = kvrt_kv_dtype(t);
    if (kvrt_kv_dtype_quantized(t)) {
        write_quant(pd, qt, (uint8_t *)base, block_bytes, x, block, off);
        return;
    }
    size_t hd = (size_t)pd->head_dim, bs = (size_t)pd->block_size, elem = t == KVRT_DTYPE_F16 ? 2 : 4;
    for (size_t h = 0; h < (size_t)pd->n_kv_heads; h++) {
        char *dst = base + (((block * (size_t)pd->n_kv_heads + h) * bs) + off) * hd * elem;
        if (t == KVRT_DTYPE_F16)
            f2h_saturate(ker, (uint16_t *)(void *)dst, x + h * hd, hd);
        else
            memcpy(dst, x + h * hd, hd * sizeof(float));
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
    size_t bs = (size_t)pd->block_size;
    for (int32_t t = 0; t < n_tokens; t++) {
        if (slots[t] < 0)
            continue;
        size_t block = (size_t)slots[t] / bs, off = (size_t)slots[t] % bs;
        write_rows(ker, pd, pd->dtype, pool->k[layer], pool->block_bytes[0], ks + (size_t)t * (size_t)k_stride,
                   block, off);
        write_rows(ker, pd, kvrt_kv_pool_dtype(pd, true), pool->v[layer], pool->block_bytes[1],
                   vs + (size_t)t * (size_t)v_stride, block, off);
    }
    return KVRT_OK;
}
