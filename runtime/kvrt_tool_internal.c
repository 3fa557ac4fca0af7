/* The tools' internal API (kvrt_tool_internal.h), on the library's insides. */
#include "kvrt_tool_internal.h"

#include "backend/kv_tier.h"
#include "backend/ops.h"
#include "cpu_attention.h"
#include "model/model_api_internal.h"

#include <math.h>

uint64_t kvrt_tool_decode_weight_bytes(const kvrt_model *model)
{
    const kvrt_model_file *mf = model->mf;
    const kvrt_tensor_ref *emb = &mf->w.tok_embd;
    uint64_t n = mf->w.output_norm.nbytes + mf->w.output.nbytes;
    if (mf->w.output.data != emb->data && emb->ne[1] > 0)
        n += emb->nbytes / (uint64_t)emb->ne[1];
    for (int32_t l = 0; l < mf->hp.n_layer; l++) {
        const kvrt_llama_layer *L = &mf->w.layers[l];
        n += L->attn_norm.nbytes + L->wq.nbytes + L->wk.nbytes + L->wv.nbytes + L->wo.nbytes + L->ffn_norm.nbytes +
             L->ffn_gate.nbytes + L->ffn_down.nbytes + L->ffn_up.nbytes;
    }
    return n;
}

const char *kvrt_tool_cpu_attn_kernels(void)
{
    return kvrt_cpu_attn_kernels_get()->name;
}

kvrt_status kvrt_tool_contig_decode(kvrt_context *ctx, const kvrt_tool_contig_kv *kv, int32_t num_seqs,
                                    int32_t n_heads, const float *q, const int32_t *seq_lens, float *out,
                                    kvrt_error *err)
{
    kvrt_backend *be = ctx->be;
    if (be->kind != KVRT_BACKEND_CPU)
        return kvrt_fail(err, KVRT_ERR_UNSUPPORTED, "contiguous decode runs on the CPU backend only");
    kvrt_cpu_contig_kv ck = {.dtype = kv->dtype, .n_kv_heads = kv->n_kv_heads, .head_dim = kv->head_dim,
                             .max_len = kv->max_len, .k = kv->k, .v = kv->v, .kernels = NULL};
    kvrt_attn_desc d = {.num_seqs = num_seqs, .n_heads = n_heads, .max_blocks_per_seq = 1, /* no table */
                        .scale = (float)(1.0 / sqrt((double)kv->head_dim)), /* the attention API's for scale 0 */
                        .q_stride = (int64_t)n_heads * kv->head_dim, .o_stride = (int64_t)n_heads * kv->head_dim};
    kvrt_status st = kvrt_cpu_attn_decode_contiguous(be, &ck, &d, q, seq_lens, out);
    return st == KVRT_OK ? st : kvrt_fail(err, st, "contiguous decode: %s", be->err.message);
}

kvrt_status kvrt_tool_device_copy_gbs(kvrt_context *ctx, size_t bytes, int passes, double *gbs, kvrt_error *err)
{
    kvrt_backend *be = ctx->be;
    kvrt_buffer *a = NULL, *b = NULL;
    kvrt_status st = kvrt_op_buffer_create(be, bytes, KVRT_BUFFER_DEVICE, &a);
    if (st == KVRT_OK)
        st = kvrt_op_buffer_create(be, bytes, KVRT_BUFFER_DEVICE, &b);
    double best = 0;
    for (int p = 0; st == KVRT_OK && p <= passes; p++) {
        st = kvrt_op_begin(be);
        if (st != KVRT_OK)
            break;
        uint64_t t0 = kvrt_profile_now_ns();
        st = kvrt_op_buffer_copy(be, p % 2 ? b : a, 0, p % 2 ? a : b, 0, bytes);
        st = kvrt_op_end_step(be, st);
        double t = (double)(kvrt_profile_now_ns() - t0) * 1e-9;
        if (st == KVRT_OK && p > 0 && t > 0)
            best = fmax(best, 2.0 * (double)bytes / t * 1e-9); /* the first pass warms up */
    }
    if (st != KVRT_OK)
        kvrt_fail(err, st, "device copy bandwidth: %s", be->err.message);
    kvrt_op_buffer_destroy(be, b);
    kvrt_op_buffer_destroy(be, a);
    *gbs = best;
    return st;
}

/* ---- the host tier (kvrt-bench attn --host-tier) ---------------------------------------- */

kvrt_status kvrt_tool_tier_create(kvrt_kv_cache *cache, int32_t host_blocks, int32_t n_threads,
                                  kvrt_tool_tier **out, kvrt_error *err)
{
    kvrt_kv_tier_params p = {.num_host_blocks = host_blocks, .n_threads = n_threads};
    return kvrt_kv_tier_create(cache, &p, out, err);
}

void kvrt_tool_tier_destroy(kvrt_tool_tier *t)
{
    kvrt_kv_tier_destroy(t);
}

kvrt_status kvrt_tool_tier_to_host(kvrt_tool_tier *t, const int32_t (*pairs)[2], int32_t n_pairs, kvrt_error *err)
{
    kvrt_status s = kvrt_kv_tier_to_host(t, pairs, n_pairs);
    return s == KVRT_OK ? s : kvrt_fail(err, s, "%s", kvrt_kv_tier_message(t));
}

kvrt_status kvrt_tool_tier_decode(kvrt_tool_tier *t, int32_t layer, int32_t n_heads, int32_t max_blocks_per_seq,
                                  int32_t num_seqs, const float *q, const int32_t *seq_lens, const int32_t *tables,
                                  const int32_t *n_host, float *out, kvrt_error *err)
{
    kvrt_attn_desc d = {.num_seqs = num_seqs, .n_heads = n_heads, .max_blocks_per_seq = max_blocks_per_seq};
    kvrt_status s = kvrt_kv_tier_attn_decode(t, layer, &d, q, seq_lens, tables, n_host, out);
    return s == KVRT_OK ? s : kvrt_fail(err, s, "%s", kvrt_kv_tier_message(t));
}

void kvrt_tool_tier_times(const kvrt_tool_tier *t, double *device_s, double *host_s, double *merge_s)
{
    kvrt_kv_tier_stats st;
    kvrt_kv_tier_get_stats(t, &st);
    *device_s = st.device_attn_s;
    *host_s = st.host_attn_s;
    *merge_s = st.merge_s;
}
