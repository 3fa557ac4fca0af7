/*
 * A prefix cache that survives restarts (issue 18): full KV blocks of prompts
 * in a folder, one file per block, named by the block's prefix hash chain,
 * which starts from a fingerprint of the model file (sampled contents and
 * shape), the KV type, the block size and the block layout. A later process
 * that sees the same prefix loads the blocks instead of prefilling them.
 *
 * Files are written whole or not at all (atomic_file.c). Each carries its
 * key, its parent's key, its tokens, the fingerprint and checksums of header
 * and payload; a file that is truncated, corrupt, foreign or of another
 * model is never trusted: it is ignored and replaced when the block is
 * computed again. Several processes may share a folder (renames are atomic,
 * readers verify). The folder's *.kvb files are kept under a size cap by
 * deleting the least recently used (a hit touches the file's mtime).
 *
 * Problems with the folder (not a folder, not writable, full) are warnings,
 * never errors: the cache switches itself off (all of it, or writing) and
 * says why in kvrt_prompt_cache_warning(); the run goes on without it.
 */
#ifndef KVRT_PROMPT_CACHE_H
#define KVRT_PROMPT_CACHE_H

#include "backend/kv_cache_internal.h"
#include "model/model_file.h"

typedef struct kvrt_prompt_cache kvrt_prompt_cache;

/* Default size cap: 1 GiB. */
#define KVRT_PROMPT_CACHE_DEFAULT_MAX (1024ull * 1024ull * 1024ull)

typedef struct kvrt_prompt_cache_stats {
    int64_t hit_blocks;     /* blocks loaded from files */
    int64_t written_blocks; /* files written */
    int64_t rejected_files; /* files found but not trusted (corrupt, truncated, foreign, other model) */
    int64_t evicted_files;  /* files deleted by the size cap */
    int32_t n_warnings;     /* warnings so far; the last one in kvrt_prompt_cache_warning */
} kvrt_prompt_cache_stats;

/* Fingerprint of a model file (sampled tensor bytes, shapes, hyperparameters)
 * and a KV cache's layout (type, block size, heads, head_dim, layers, bytes
 * of a block): two runs share files only when all of it agrees. */
uint64_t kvrt_prompt_cache_fingerprint(const kvrt_model_file *mf, const kvrt_kv_pool_desc *desc);

/* Opens (creating it when missing) the folder `dir`. Always returns an
 * object (NULL only when host memory is short: OUT_OF_HOST_MEMORY); when
 * the folder cannot be used the object is off and its warning says why.
 * max_bytes 0 = KVRT_PROMPT_CACHE_DEFAULT_MAX. */
kvrt_status kvrt_prompt_cache_open(const char *dir, uint64_t max_bytes, uint64_t fingerprint, int32_t block_size,
                                   size_t slot_bytes, const kvrt_allocator *alloc, kvrt_prompt_cache **out,
                                   kvrt_error *err);
void kvrt_prompt_cache_close(kvrt_prompt_cache *pc);

/* Loads the longest run of blocks of tokens[0 .. n_blocks * block_size) found
 * in the folder into cache blocks blocks[0], blocks[1], ... in order; returns
 * how many were loaded (stops at the first missing or untrusted file). */
int32_t kvrt_prompt_cache_load(kvrt_prompt_cache *pc, kvrt_kv_cache *cache, const int32_t *tokens, int32_t n_blocks,
                               const int32_t *blocks);

/* Writes blocks[first .. n_blocks) (holding tokens[0 .. n_blocks *
 * block_size), all full) that the folder lacks, then applies the size cap.
 * Failures become warnings (a full disk or a folder that turned read-only
 * stops writing for the rest of the run). */
void kvrt_prompt_cache_store(kvrt_prompt_cache *pc, kvrt_kv_cache *cache, const int32_t *tokens, int32_t first,
                             int32_t n_blocks, const int32_t *blocks);

/* Whether the cache is in use (false after a warning that switched it off). */
bool kvrt_prompt_cache_active(const kvrt_prompt_cache *pc);
/* The last warning ("" when none). Never NULL. */
const char *kvrt_prompt_cache_warning(const kvrt_prompt_cache *pc);
void kvrt_prompt_cache_get_stats(const kvrt_prompt_cache *pc, kvrt_prompt_cache_stats *out);

/* Test hook: the next write fails as if write() returned errno `err` (0 = off). */
void kvrt_prompt_cache_debug_fail_write(kvrt_prompt_cache *pc, int err);

#endif /* KVRT_PROMPT_CACHE_H */
