/* Naive double-precision attention: every score of a query, then a
 * max-subtracted softmax and the weighted sum of V, all in double. */
#include "ref_attention.h"

#include <math.h>
#include <stdlib.h>

int ref_attn_visible(const ref_attn_shape *sh, int32_t i, int32_t j)
{
    return j <= i && (sh->window == 0 || i - j < sh->window || j < sh->sinks);
}

void ref_attention_query(const ref_attn_shape *sh, const float *q, int32_t pos, const float *k, const float *v,
                         double *out)
{
    int32_t hd = sh->head_dim, group = sh->n_heads / sh->n_kv_heads;
    size_t kv_row = (size_t)sh->n_kv_heads * (size_t)hd;
    double *p = malloc(((size_t)pos + 1) * sizeof(double));
    if (!p)
        abort(); /* test code: out of memory is fatal */
    for (int32_t h = 0; h < sh->n_heads; h++) {
        const float *qh = q + (size_t)h * (size_t)hd;
        size_t kv_off = (size_t)(h / group) * (size_t)hd;
        double m = -INFINITY, l = 0.0;
        for (int32_t j = 0; j <= pos; j++) {
            if (!ref_attn_visible(sh, pos, j))
                continue;
            const float *kj = k + (size_t)j * kv_row + kv_off;
            double s = 0.0;
            for (int32_t d = 0; d < hd; d++)
                s += (double)qh[d] * (double)kj[d];
            p[j] = s * sh->scale;
            m = p[j] > m ? p[j] : m;
        }
        double *o = out + (size_t)h * (size_t)hd;
        for (int32_t d = 0; d < hd; d++)
            o[d] = 0.0;
        for (int32_t j = 0; j <= pos; j++) {
            if (!ref_attn_visible(sh, pos, j))
                continue;
            double w = exp(p[j] - m);
            const float *vj = v + (size_t)j * kv_row + kv_off;
            l += w;
            for (int32_t d = 0; d < hd; d++)
                o[d] += w * (double)vj[d];
        }
        for (int32_t d = 0; d < hd; d++)
            o[d] /= l;
    }
    free(p);
}

void ref_attention_chunk(const ref_attn_shape *sh, const float *q, int32_t seq_len, int32_t n_new,
                         const float *k, const float *v, double *out)
{
    size_t row = (size_t)sh->n_heads * (size_t)sh->head_dim;
    for (int32_t t = 0; t < n_new; t++)
        ref_attention_query(sh, q + (size_t)t * row, seq_len - n_new + t, k, v, out + (size_t)t * row);
}
