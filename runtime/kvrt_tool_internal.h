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

#endif /* KVRT_TOOL_INTERNAL_H */
