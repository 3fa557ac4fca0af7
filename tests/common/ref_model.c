/* The double-precision reference forward of a model file (see ref_model.h):
 * plain loops, every intermediate in double, full causal attention over the
 * whole sequence (no KV cache, no blocks). Written from the architectures'
 * definitions, apart from the library's own code. */
#include "ref_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* F32 weight element (r, c) of a [rows][cols] tensor (the mapping need not align it). */
static double wat(const kvrt_tensor_ref *t, int64_t r, int64_t c)
{
    float v;
    memcpy(&v, (const char *)t->data + ((size_t)r * (size_t)t->ne[0] + (size_t)c) * sizeof(float), sizeof(v));
    return v;
}

static double vat(const kvrt_tensor_ref *t, int64_t i)
{
    return wat(t, 0, i);
}

/* y[o] = sum_i W[o][i] x[i] (+ b[o]) */
static void linear(const kvrt_tensor_ref *w, const kvrt_tensor_ref *b, const double *x, double *y)
{
    for (int64_t o = 0; o < w->ne[1]; o++) {
        double acc = b && b->data ? vat(b, o) : 0.0;
        for (int64_t i = 0; i < w->ne[0]; i++)
            acc += wat(w, o, i) * x[i];
        y[o] = acc;
    }
}

static void rmsnorm(const double *x, const kvrt_tensor_ref *w, int64_t n, double eps, double *y)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += x[i] * x[i];
    double inv = 1.0 / sqrt(ss / (double)n + eps);
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i] * inv * vat(w, i);
}

/* The rotation angle and magnitude of pair i at position p, RoPE scaling included. */
static void angle(const kvrt_model_file *mf, int32_t i, int32_t p, double *theta, double *mag)
{
    const kvrt_llama_hparams *hp = &mf->hp;
    double base_freq = pow((double)hp->rope_freq_base, -(2.0 * i) / hp->rope_dim);
    if (mf->w.rope_freqs.data)
        base_freq /= vat(&mf->w.rope_freqs, i);
    double plain = p * base_freq, factor = hp->rope_scale;
    *mag = hp->rope_attn_factor;
    *theta = plain;
    switch (hp->rope_scaling) {
    case KVRT_ROPE_SCALING_NONE:
        *theta = plain;
        break;
    case KVRT_ROPE_SCALING_LINEAR:
        *theta = p / factor * base_freq;
        break;
    case KVRT_ROPE_SCALING_YARN: {
        /* the pair index at which a wavelength fits `turns` times into the original context */
        double turns_fast = hp->yarn_beta_fast, turns_slow = hp->yarn_beta_slow;
        double at_fast = hp->rope_dim * log(hp->rope_orig_ctx / (2.0 * M_PI * turns_fast)) /
                         (2.0 * log((double)hp->rope_freq_base));
        double at_slow = hp->rope_dim * log(hp->rope_orig_ctx / (2.0 * M_PI * turns_slow)) /
                         (2.0 * log((double)hp->rope_freq_base));
        double lo = floor(at_fast) < 0 ? 0 : floor(at_fast);
        double hi = ceil(at_slow) > hp->rope_dim - 1 ? hp->rope_dim - 1 : ceil(at_slow);
        double span = hi - lo < 0.001 ? 0.001 : hi - lo;
        double r = (i - lo) / span;
        double extrapolate = r <= 0 ? 1.0 : r >= 1 ? 0.0 : 1.0 - r;
        *theta = plain / factor * (1.0 - extrapolate) + plain * extrapolate;
        *mag *= 1.0 + 0.1 * log(factor);
        break;
    }
    }
}

/* Rotates the head vectors of one token at position p. */
static void rope(const kvrt_model_file *mf, double *x, int32_t n_heads, int32_t p)
{
    const kvrt_llama_hparams *hp = &mf->hp;
    int32_t half = hp->rope_dim / 2;
    for (int32_t h = 0; h < n_heads; h++) {
        double *v = x + (size_t)h * hp->head_dim;
        for (int32_t i = 0; i < half; i++) {
            double th, mag;
            angle(mf, i, p, &th, &mag);
            int32_t a = hp->rope_neox ? i : 2 * i, b = hp->rope_neox ? i + half : 2 * i + 1;
            double x0 = v[a], x1 = v[b];
            v[a] = (x0 * cos(th) - x1 * sin(th)) * mag;
            v[b] = (x0 * sin(th) + x1 * cos(th)) * mag;
        }
    }
}

void ref_model_logits(const kvrt_model_file *mf, const int32_t *ids, int32_t n, double *logits)
{
    const kvrt_llama_hparams *hp = &mf->hp;
    const int64_t d = hp->n_embd, hd = hp->head_dim, nq = (int64_t)hp->n_head * hd, nkv = (int64_t)hp->n_head_kv * hd;
    const int64_t ff = hp->n_ff;
    double *x = calloc((size_t)n * d, sizeof(double)), *h = calloc((size_t)d, sizeof(double));
    double *q = calloc((size_t)n * nq, sizeof(double)), *k = calloc((size_t)n * nkv, sizeof(double));
    double *v = calloc((size_t)n * nkv, sizeof(double)), *att = calloc((size_t)nq, sizeof(double));
    double *o = calloc((size_t)d, sizeof(double)), *g = calloc((size_t)ff, sizeof(double));
    double *u = calloc((size_t)ff, sizeof(double)), *sc = calloc((size_t)n, sizeof(double));
    for (int32_t t = 0; t < n; t++)
        for (int64_t i = 0; i < d; i++)
            x[(size_t)t * d + i] = wat(&mf->w.tok_embd, ids[t], i);
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const kvrt_llama_layer *L = &mf->w.layers[l];
        for (int32_t t = 0; t < n; t++) {
            rmsnorm(x + (size_t)t * d, &L->attn_norm, d, hp->rms_eps, h);
            linear(&L->wq, &L->bq, h, q + (size_t)t * nq);
            linear(&L->wk, &L->bk, h, k + (size_t)t * nkv);
            linear(&L->wv, &L->bv, h, v + (size_t)t * nkv);
            if (L->q_norm.data) { /* per head, before the rotation */
                for (int32_t hh = 0; hh < hp->n_head; hh++)
                    rmsnorm(q + (size_t)t * nq + hh * hd, &L->q_norm, hd, hp->rms_eps, q + (size_t)t * nq + hh * hd);
                for (int32_t hh = 0; hh < hp->n_head_kv; hh++)
                    rmsnorm(k + (size_t)t * nkv + hh * hd, &L->k_norm, hd, hp->rms_eps,
                            k + (size_t)t * nkv + hh * hd);
            }
            rope(mf, q + (size_t)t * nq, hp->n_head, t);
            rope(mf, k + (size_t)t * nkv, hp->n_head_kv, t);
        }
        for (int32_t t = 0; t < n; t++) {
            for (int32_t hh = 0; hh < hp->n_head; hh++) {
                int32_t kh = hh / (hp->n_head / hp->n_head_kv);
                const double *qv = q + (size_t)t * nq + hh * hd;
                double mx = -INFINITY, sum = 0.0;
                for (int32_t j = 0; j <= t; j++) {
                    bool seen = hp->sliding_window == 0 || t - j < hp->sliding_window;
                    double s = -INFINITY;
                    if (seen) {
                        s = 0.0;
                        for (int64_t e = 0; e < hd; e++)
                            s += qv[e] * k[(size_t)j * nkv + kh * hd + e];
                        s /= sqrt((double)hd);
                    }
                    sc[j] = s;
                    mx = s > mx ? s : mx;
                }
                for (int32_t j = 0; j <= t; j++) {
                    sc[j] = isinf(sc[j]) ? 0.0 : exp(sc[j] - mx);
                    sum += sc[j];
                }
                for (int64_t e = 0; e < hd; e++) {
                    double acc = 0.0;
                    for (int32_t j = 0; j <= t; j++)
                        acc += sc[j] * v[(size_t)j * nkv + kh * hd + e];
                    att[hh * hd + e] = acc / sum;
                }
            }
            linear(&L->wo, NULL, att, o);
            for (int64_t i = 0; i < d; i++)
                x[(size_t)t * d + i] += o[i];
            rmsnorm(x + (size_t)t * d, &L->ffn_norm, d, hp->rms_eps, h);
            linear(&L->ffn_gate, NULL, h, g);
            linear(&L->ffn_up, NULL, h, u);
            for (int64_t i = 0; i < ff; i++)
                g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            linear(&L->ffn_down, NULL, g, o);
            for (int64_t i = 0; i < d; i++)
                x[(size_t)t * d + i] += o[i];
        }
    }
    for (int32_t t = 0; t < n; t++) {
        rmsnorm(x + (size_t)t * d, &mf->w.output_norm, d, hp->rms_eps, h);
        linear(&mf->w.output, NULL, h, logits + (size_t)t * hp->n_vocab);
    }
    free(x), free(h), free(q), free(k), free(v), free(att), free(o), free(g), free(u), free(sc);
}
