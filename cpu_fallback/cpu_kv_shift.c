/* CPU context shift: re-rotates the stored keys of whole blocks (keys are
 * stored after RoPE), one head row at a time, in every KV type the CPU
 * stores. F32 rotates in place; F16 and the quantized types go through F32
 * and back by the same rules kv_write uses (F16: round to nearest even,
 * saturating; q8_0/q4_0: kvrt_kv_quantize_row), so a shifted block is
 * byte-for-byte what kv_write would store for the rotated values. */
#include "cpu_internal.h"

#include "common/fp16.h"

#include <string.h>

/* Rotates row[0..rot_dim) by cos_sin [rot_dim/2][2]: pairs (2i, 2i+1), or
 * (i, i + rot_dim/2) for NeoX. */
static void rotate_row(float *row, const float *cs, int32_t rot_dim, int32_t neox)
{
    int32_t half = rot_dim / 2;
    for (int32_t i = 0; i < half; i++) {
        int32_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        float c = cs[2 * i], s = cs[2 * i + 1];
        float x0 = row[i0], x1 = row[i1];
        row[i0] = x0 * c - x1 * s;
        row[i1] = x0 * s + x1 * c;
    }
}

/* One row (block b, row r = head * block_size + offset) of a layer's K pool. */
static void shift_row(kvrt_kv_pool *pool, uint8_t *k, size_t b, size_t r, const float *cs, int32_t rot_dim,
                      int32_t neox, float *tmp)
{
    const kvrt_kv_pool_desc *pd = &pool->desc;
    size_t hd = (size_t)pd->head_dim, at = b * pool->block_bytes;
    const kvrt_kv_dtype_desc *qt = kvrt_kv_dtype(pd->dtype);
    if (pd->dtype == KVRT_DTYPE_F32) {
        rotate_row((float *)(void *)(k + at) + r * hd, cs, rot_dim, neox);
    } else if (pd->dtype == KVRT_DTYPE_F16) {
        uint16_t *h = (uint16_t *)(void *)(k + at) + r * hd;
        for (size_t d = 0; d < hd; d++)
            tmp[d] = kvrt_fp16_to_f32(h[d]);
        rotate_row(tmp, cs, rot_dim, neox);
        for (size_t d = 0; d < hd; d++)
            h[d] = kvrt_f32_to_fp16_kv(tmp[d]);
    } else {
        uint8_t *vals = k + at + kvrt_kv_row_values(qt, pd->head_dim, r);
        uint8_t *scales = k + at + kvrt_kv_row_scales(qt, pd->n_kv_heads, pd->block_size, pd->head_dim, r);
        kvrt_kv_dequantize_row(pd->dtype, vals, scales, pd->head_dim, tmp);
        rotate_row(tmp, cs, rot_dim, neox);
        kvrt_kv_quantize_row(pd->dtype, tmp, pd->head_dim, vals, scales);
    }
}

kvrt_status kvrt_cpu_kv_rope_shift(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view blocks,
                                   int32_t n_blocks, kvrt_view cos_sin, int32_t rot_dim, int32_t neox)
{
    const kvrt_kv_pool_desc *pd = &pool->desc;
    const kvrt_kv_dtype_desc *qt = kvrt_kv_dtype(pd->dtype);
    if (pd->dtype != KVRT_DTYPE_F32 && pd->dtype != KVRT_DTYPE_F16 &&
        !(qt && qt->scales == KVRT_KV_SCALES_IN_BLOCK))
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "cpu: rope shift of KV type %s is not supported",
                         kvrt_dtype_name(pd->dtype));
    float *tmp = kvrt_alloc(be->alloc, (size_t)pd->head_dim * sizeof(float), 0);
    if (!tmp)
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "cpu: rope shift: out of host memory");
    const int32_t *ids = kvrt_cpu_ptr(blocks);
    const float *cs = kvrt_cpu_ptr(cos_sin);
    uint8_t *k = pool->k[layer];
    size_t rows = (size_t)pd->n_kv_heads * (size_t)pd->block_size; /* rows of one block: [n_kv_heads][block_size] */
    for (int32_t i = 0; i < n_blocks; i++)
        for (size_t r = 0; r < rows; r++)
            shift_row(pool, k, (size_t)ids[i], r, cs, rot_dim, neox, tmp);
    kvrt_free(be->alloc, tmp);
    return KVRT_OK;
}
