/* The CPU backend's timed ops table entries (see cpu_profile.h). The CPU runs
 * ops at once, so an op's time is the host wall time of its call. */
#include "cpu_profile.h"

kvrt_status kvrt_cpu_set_profiling(kvrt_backend *be, bool on)
{
    (void)be;
    (void)on;
    return KVRT_OK; /* nothing to prepare: the wrappers read be->profiling */
}

/* Evaluates `call` between two clock reads when profiling is on. */
#define CPU_TIMED(op, call)                                        \
    do {                                                           \
        uint64_t t0_ = kvrt_cpu_prof_start(be);                    \
        return kvrt_cpu_prof_end(be, op, t0_, call);               \
    } while (0)

kvrt_status kvrt_cpu_prof_kv_write(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view k,
                                   int64_t k_stride, kvrt_view v, int64_t v_stride, kvrt_view slot_mapping,
                                   int32_t n_tokens)
{
    CPU_TIMED("kv_write", kvrt_cpu_kv_write(be, pool, layer, k, k_stride, v, v_stride, slot_mapping, n_tokens));
}

kvrt_status kvrt_cpu_prof_attn_decode(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                      kvrt_view q, kvrt_view out, kvrt_view seq_lens, kvrt_view block_tables)
{
    CPU_TIMED("attn_decode", kvrt_cpu_attn_decode(be, pool, layer, d, q, out, seq_lens, block_tables));
}

kvrt_status kvrt_cpu_prof_attn_prefill(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                       kvrt_view q, kvrt_view out, kvrt_view query_start_loc, kvrt_view seq_lens,
                                       kvrt_view block_tables)
{
    CPU_TIMED("attn_prefill",
              kvrt_cpu_attn_prefill(be, pool, layer, d, q, out, query_start_loc, seq_lens, block_tables));
}

kvrt_status kvrt_cpu_prof_matmul(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in,
                                 kvrt_view x, int64_t x_stride, kvrt_view y, int64_t y_stride, int32_t n_tokens)
{
    CPU_TIMED("matmul", kvrt_cpu_matmul(be, wtype, w, n_out, n_in, x, x_stride, y, y_stride, n_tokens));
}

kvrt_status kvrt_cpu_prof_rmsnorm(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w, kvrt_view y,
                                  int64_t y_stride, int32_t n_tokens, int32_t dim, float eps)
{
    CPU_TIMED("rmsnorm", kvrt_cpu_rmsnorm(be, x, x_stride, w, y, y_stride, n_tokens, dim, eps));
}

kvrt_status kvrt_cpu_prof_rope(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                               const kvrt_rope_desc *d)
{
    CPU_TIMED("rope", kvrt_cpu_rope(be, x, positions, cos_sin, d));
}

kvrt_status kvrt_cpu_prof_swiglu(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up,
                                 int64_t up_stride, kvrt_view out, int64_t out_stride, int32_t n_tokens, int32_t dim)
{
    CPU_TIMED("swiglu", kvrt_cpu_swiglu(be, gate, gate_stride, up, up_stride, out, out_stride, n_tokens, dim));
}

kvrt_status kvrt_cpu_prof_add(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n)
{
    CPU_TIMED("add", kvrt_cpu_add(be, a, b, out, n));
}

kvrt_status kvrt_cpu_prof_add_bias(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view b, kvrt_view y,
                                   int64_t y_stride, int32_t n_tokens, int64_t dim)
{
    CPU_TIMED("add_bias", kvrt_cpu_add_bias(be, x, x_stride, b, y, y_stride, n_tokens, dim));
}

kvrt_status kvrt_cpu_prof_embed(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim, kvrt_view ids,
                                int32_t n_tokens, kvrt_view out)
{
    CPU_TIMED("embed", kvrt_cpu_embed(be, wtype, table, dim, ids, n_tokens, out));
}

kvrt_status kvrt_cpu_prof_gather_rows(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx, int32_t n,
                                      kvrt_view dst, int64_t dst_stride, int32_t dim)
{
    CPU_TIMED("gather_rows", kvrt_cpu_gather_rows(be, src, src_stride, idx, n, dst, dst_stride, dim));
}

kvrt_status kvrt_cpu_prof_argmax(kvrt_backend *be, kvrt_view x, int64_t stride, int32_t n_rows, int32_t n_cols,
                                 kvrt_view out)
{
    CPU_TIMED("argmax", kvrt_cpu_argmax(be, x, stride, n_rows, n_cols, out));
}
