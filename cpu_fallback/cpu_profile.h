/* Per-op host wall time for the CPU backend (kvrt_context_set_profiling):
 * the ops table points at these wrappers, which time the real op only when
 * profiling is on (one branch otherwise). */
#ifndef KVRT_CPU_PROFILE_H
#define KVRT_CPU_PROFILE_H

#include "cpu_internal.h"

/* Start of a timed op: the clock when profiling, else 0 (no clock read). */
static inline uint64_t kvrt_cpu_prof_start(const kvrt_backend *be)
{
    return be->profiling ? kvrt_profile_now_ns() : 0;
}

/* End of a timed op: counts a successful call of `op`; returns s. */
static inline kvrt_status kvrt_cpu_prof_end(kvrt_backend *be, const char *op, uint64_t t0, kvrt_status s)
{
    if (be->profiling && s == KVRT_OK)
        kvrt_profile_add(&be->profile, op, 1, kvrt_profile_now_ns() - t0);
    return s;
}

kvrt_status kvrt_cpu_set_profiling(kvrt_backend *be, bool on);

kvrt_status kvrt_cpu_prof_kv_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                                   kvrt_view k, int64_t k_stride, kvrt_view v, int64_t v_stride,
                                   kvrt_view slot_mapping, int32_t n_tokens);
kvrt_status kvrt_cpu_prof_attn_decode(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                      kvrt_view q, kvrt_view out, kvrt_view seq_lens, kvrt_view block_tables);
kvrt_status kvrt_cpu_prof_attn_prefill(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                       kvrt_view q, kvrt_view out, kvrt_view query_start_loc,
                                       kvrt_view seq_lens, kvrt_view block_tables);
kvrt_status kvrt_cpu_prof_matmul(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in,
                                 kvrt_view x, int64_t x_stride, kvrt_view y, int64_t y_stride, int32_t n_tokens);
kvrt_status kvrt_cpu_prof_rmsnorm(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w,
                                  kvrt_view y, int64_t y_stride, int32_t n_tokens, int32_t dim, float eps);
kvrt_status kvrt_cpu_prof_rope(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                               const kvrt_rope_desc *d);
kvrt_status kvrt_cpu_prof_swiglu(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up,
                                 int64_t up_stride, kvrt_view out, int64_t out_stride, int32_t n_tokens, int32_t dim);
kvrt_status kvrt_cpu_prof_add(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n);
kvrt_status kvrt_cpu_prof_add_bias(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view b, kvrt_view y,
                                   int64_t y_stride, int32_t n_tokens, int64_t dim);
kvrt_status kvrt_cpu_prof_embed(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim,
                                kvrt_view ids, int32_t n_tokens, kvrt_view out);
kvrt_status kvrt_cpu_prof_gather_rows(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx,
                                      int32_t n, kvrt_view dst, int64_t dst_stride, int32_t dim);
kvrt_status kvrt_cpu_prof_argmax(kvrt_backend *be, kvrt_view x, int64_t stride, int32_t n_rows, int32_t n_cols,
                                 kvrt_view out);

#endif /* KVRT_CPU_PROFILE_H */
