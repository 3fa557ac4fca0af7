/* The tools' internal API (kvrt_tool_internal.h), on the library's insides. */
#include "kvrt_tool_internal.h"

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
