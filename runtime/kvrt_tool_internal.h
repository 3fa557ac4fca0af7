/* What the tools reach beyond the public API (include/), declared in one
 * place, so that no tool includes a backend's internals or looks inside a
 * kvrt_context. Besides this header a tool may use runtime/common (errors,
 * checked arithmetic, F16 conversions, the thread pool) and the model-file
 * readers and writers it works on (runtime/model: gguf.h, model_file.h,
 * synth.h, tokenizer.h) and the model-shape presets (model/shapes.h). Not
 * installed. */
#ifndef KVRT_TOOL_INTERNAL_H
#define KVRT_TOOL_INTERNAL_H

#include "kvrt.h"

#include <stddef.h>
#include <stdint.h>

/* Weight bytes one decode step reads: every layer matrix and norm, the final
 * norm and the classifier, and one row of the embedding (all of it when it
 * is tied to the classifier). */
uint64_t kvrt_tool_decode_weight_bytes(const kvrt_model *model);

/* The CPU attention kernels this machine runs ("avx512", "avx2+fma+f16c",
 * "portable"). */
const char *kvrt_tool_cpu_attn_kernels(void);

/* A KV layout without blocks: sequence s, KV head h, position j at
 * ((s * n_kv_heads + h) * max_len + j) * head_dim elements from k (and v). */
typedef struct kvrt_tool_contig_kv {
    kvrt_dtype dtype; /* F32 or F16 */
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t max_len;  /* positions reserved per (sequence, head) */
    const void *k;    /* [num_seqs][n_kv_heads][max_len][head_dim] */
    const void *v;
} kvrt_tool_contig_kv;

/* Decode attention over the contiguous layout on a CPU context, with the
 * paged decode's loops, partitions and threads (the benchmark's "paged vs
 * contiguous on the same data"): q, out [num_seqs][n_heads][head_dim],
 * scale 1/sqrt(head_dim), seq_lens[s] <= max_len. */
kvrt_status kvrt_tool_contig_decode(kvrt_context *ctx, const kvrt_tool_contig_kv *kv, int32_t num_seqs,
                                    int32_t n_heads, const float *q, const int32_t *seq_lens, float *out,
                                    kvrt_error *err);

/* Device copy bandwidth of the context's backend: one copy of `bytes`
 * between two device buffers per step, timed around the step; the best of
 * `passes` after a warm-up, in GB/s (read + write). */
kvrt_status kvrt_tool_device_copy_gbs(kvrt_context *ctx, size_t bytes, int passes, double *gbs, kvrt_error *err);

/* The host tier that computes (issue 18, backend/kv_tier.h), for
 * kvrt-bench attn --host-tier: a host pool of host_blocks beside `cache`,
 * moves of whole blocks to it ({device block, host slot}), and decode
 * attention split by tier (n_host[s] leading table entries are host slots;
 * scale 1/sqrt(head_dim)). Times are the tier's counters, in seconds. */
typedef struct kvrt_kv_tier kvrt_tool_tier;
kvrt_status kvrt_tool_tier_create(kvrt_kv_cache *cache, int32_t host_blocks, int32_t n_threads,
                                  kvrt_tool_tier **out, kvrt_error *err);
void kvrt_tool_tier_destroy(kvrt_tool_tier *t);
kvrt_status kvrt_tool_tier_to_host(kvrt_tool_tier *t, const int32_t (*pairs)[2], int32_t n_pairs, kvrt_error *err);
kvrt_status kvrt_tool_tier_decode(kvrt_tool_tier *t, int32_t layer, int32_t n_heads, int32_t max_blocks_per_seq,
                                  int32_t num_seqs, const float *q, const int32_t *seq_lens, const int32_t *tables,
                                  const int32_t *n_host, float *out, kvrt_error *err);
void kvrt_tool_tier_times(const kvrt_tool_tier *t, double *device_s, double *host_s, double *merge_s);

#endif /* KVRT_TOOL_INTERNAL_H */
