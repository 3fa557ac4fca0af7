/* The KV cache object (kv_cache.c) as the session, the engine and the model
 * use it: every device action on KV (pools, block copies, moves to and from
 * a host tier) goes through it, never through the backend vtable. */
#ifndef KVRT_KV_CACHE_INTERNAL_H
#define KVRT_KV_CACHE_INTERNAL_H

#include "backend/backend.h"

/* Its pool, for the model's forward pass. */
kvrt_kv_pool *kvrt_kv_cache_pool(kvrt_kv_cache *cache);
const kvrt_kv_pool_desc *kvrt_kv_cache_desc(const kvrt_kv_cache *cache);

/* Bytes of one block of every layer, K and V: one host-tier slot. */
size_t kvrt_kv_cache_slot_bytes(const kvrt_kv_cache *cache);
/* Device bytes of the whole pool. */
uint64_t kvrt_kv_cache_device_bytes(const kvrt_kv_cache *cache);

/* Copies block `block` of every layer (per layer K, then V) to host memory
 * of kvrt_kv_cache_slot_bytes(), or back; immediately. Errors name the
 * cache's message. */
kvrt_status kvrt_kv_cache_save_block(kvrt_kv_cache *cache, int32_t block, void *dst);
kvrt_status kvrt_kv_cache_load_block(kvrt_kv_cache *cache, int32_t block, const void *src);

/* Context shift: rotates the stored keys of blocks[n_blocks] (distinct
 * ids, every layer, KV head and position of each) by the pair angles of
 * cos_sin (F32 [rot_dim/2][2]: cos and sin of the angle to add), as RoPE
 * does (neox: halves), in one step. KVRT_ERR_UNSUPPORTED where the backend
 * cannot (named in the message). */
bool kvrt_kv_cache_can_rope_shift(const kvrt_kv_cache *cache);
kvrt_status kvrt_kv_cache_rope_shift(kvrt_kv_cache *cache, const int32_t *blocks, int32_t n_blocks,
                                     const float *cos_sin, int32_t rot_dim, int32_t neox);

#endif /* KVRT_KV_CACHE_INTERNAL_H */
