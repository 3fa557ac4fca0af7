/* Token sampling: greedy, temperature, top-k, top-p, min-p, repetition
 * penalty, with a per-sampler seeded RNG (results never depend on other
 * samplers or on the batch). */
#include "engine/engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct candidate {
    int32_t id;
    float logit;
    float p;
} candidate;

struct kvrt_sampler {
    const kvrt_allocator *alloc;
    kvrt_sampler_params p;
    int32_t n_vocab;
    uint64_t rng;        /* xorshift64* state, never 0 */
    candidate *cand;     /* [n_vocab] scratch; NULL for a shared-scratch sampler */
    int32_t *history;    /* ring of the last repeat_last_n tokens */
    int32_t n_history;
    int32_t history_pos;
};

kvrt_sampler_params kvrt_sampler_default_params(void)
{
    kvrt_sampler_params p = {
        .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f,
        .repeat_penalty = 1.0f, .repeat_last_n = 64, .seed = 0,
    };
    return p;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Uniform in [0, 1) with 24 random bits. */
static float rng_uniform(kvrt_sampler *s)
{
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    uint64_t r = s->rng * 0x2545f4914f6cdd1dull;
    return (float)(r >> 40) / 16777216.0f;
}

size_t kvrt_sampler_scratch_bytes(int32_t n_vocab)
{
    return (size_t)KVRT_MAX(n_vocab, 1) * sizeof(candidate);
}

static kvrt_status sampler_create(const kvrt_sampler_params *params, int32_t n_vocab, const kvrt_allocator *allocator,
                                  bool own_scratch, kvrt_sampler **out, kvrt_error *err)
{
    kvrt_error_clear(err);
    if (out)
        *out = NULL;
    if (!params || !out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_sampler_create: params and out must not be NULL");
    const kvrt_sampler_params *p = params;
    if (n_vocab < 1)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "sampler: n_vocab %d < 1", (int)n_vocab);
    if (isnan(p->temperature) || p->top_k < 0 || !(p->top_p > 0.0f && p->top_p <= 1.0f) ||
        !(p->min_p >= 0.0f && p->min_p <= 1.0f) || !(p->repeat_penalty > 0.0f) || p->repeat_last_n < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "sampler: invalid parameters (temperature %g, top_k %d, top_p %g, min_p %g, "
                         "repeat_penalty %g, repeat_last_n %d)", (double)p->temperature, (int)p->top_k,
                         (double)p->top_p, (double)p->min_p, (double)p->repeat_penalty, (int)p->repeat_last_n);
    kvrt_sampler *s = kvrt_calloc(allocator, 1, sizeof(*s));
    if (s) {
        s->cand = own_scratch ? kvrt_calloc(allocator, (size_t)n_vocab, sizeof(candidate)) : NULL;
        s->history = kvrt_calloc(allocator, (size_t)KVRT_MAX(p->repeat_last_n, 1), sizeof(int32_t));
    }
    if (!s || (own_scratch && !s->cand) || !s->history) {
        if (s) {
            kvrt_free(allocator, s->cand);
            kvrt_free(allocator, s->history);
        }
        kvrt_free(allocator, s);
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "sampler: out of host memory");
    }
    s->alloc = allocator;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->rng = splitmix64(p->seed);
    if (s->rng == 0)
        s->rng = 0x853c49e6748fea9bull;
    *out = s;
    return KVRT_OK;
}

kvrt_status kvrt_sampler_create(const kvrt_sampler_params *params, int32_t n_vocab,
                                const kvrt_allocator *allocator, kvrt_sampler **out, kvrt_error *err)
{
    return sampler_create(params, n_vocab, allocator, true, out, err);
}

kvrt_status kvrt_sampler_create_shared(const kvrt_sampler_params *params, int32_t n_vocab,
                                       const kvrt_allocator *allocator, kvrt_sampler **out, kvrt_error *err)
{
    return sampler_create(params, n_vocab, allocator, false, out, err);
}

void kvrt_sampler_destroy(kvrt_sampler *s)
{
    if (!s)
        return;
    kvrt_free(s->alloc, s->cand);
    kvrt_free(s->alloc, s->history);
    kvrt_free(s->alloc, s);
}

void kvrt_sampler_accept(kvrt_sampler *s, int32_t token)
{
    if (!s || s->p.repeat_last_n == 0)
        return;
    s->history[s->history_pos] = token;
    s->history_pos = (s->history_pos + 1) % s->p.repeat_last_n;
    if (s->n_history < s->p.repeat_last_n)
        s->n_history++;
}

static int cmp_candidate_desc(const void *a, const void *b)
{
    const candidate *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id); /* stable order: lower id first */
}

static void apply_repeat_penalty(kvrt_sampler *s, candidate *c)
{
    if (s->p.repeat_penalty == 1.0f)
        return;
    /* penalise each token once, however often it repeats: .p marks the done
     * ones (it is only computed later, by the softmax) */
    for (int32_t i = 0; i < s->n_history; i++) {
        int32_t t = s->history[i];
        if (t < 0 || t >= s->n_vocab || c[t].p != 0.0f)
            continue;
        c[t].p = 1.0f;
        float *l = &c[t].logit;
        *l = *l > 0.0f ? *l / s->p.repeat_penalty : *l * s->p.repeat_penalty;
    }
}

/* Softmax over the first n (sorted) candidates into .p; returns n. */
static void softmax_sorted(candidate *c, int32_t n, float temperature)
{
    float max = c[0].logit, sum = 0.0f;
    for (int32_t i = 0; i < n; i++) {
        c[i].p = expf((c[i].logit - max) / temperature);
        sum += c[i].p;
    }
    for (int32_t i = 0; i < n; i++)
        c[i].p /= sum;
}

static int32_t truncate_candidates(const kvrt_sampler_params *p, candidate *c, int32_t n)
{
    if (p->top_k > 0 && p->top_k < n)
        n = p->top_k;
    if (p->min_p > 0.0f) {
        int32_t keep = 1;
        while (keep < n && c[keep].p >= p->min_p * c[0].p)
            keep++;
        n = keep;
    }
    if (p->top_p < 1.0f) {
        float cum = 0.0f;
        int32_t keep = 0;
        while (keep < n) {
            cum += c[keep].p;
            keep++;
            if (cum >= p->top_p)
                break;
        }
        n = keep;
    }
    return n;
}

kvrt_status kvrt_sampler_sample(kvrt_sampler *s, const float *logits, int32_t *token)
{
    return kvrt_sampler_sample_with(s, logits, s ? s->cand : NULL, token);
}

kvrt_status kvrt_sampler_sample_with(kvrt_sampler *s, const float *logits, void *scratch, int32_t *token)
{
    if (!s || !logits || !token || !scratch)
        return KVRT_ERR_INVALID_ARGUMENT;
    candidate *c = scratch;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        if (isnan(logits[i])) /* a broken forward must not turn into token 0 */
            return KVRT_ERR_INVALID_ARGUMENT;
        c[i].id = i;
        c[i].logit = logits[i];
        c[i].p = 0.0f;
    }
    apply_repeat_penalty(s, c);
    int32_t chosen;
    if (s->p.temperature <= 0.0f) {
        /* greedy: argmax of the (penalised) logits, lowest id on ties */
        chosen = 0;
        for (int32_t i = 1; i < s->n_vocab; i++) {
            if (c[i].logit > c[chosen].logit)
                chosen = i;
        }
    } else {
        qsort(c, (size_t)s->n_vocab, sizeof(*c), cmp_candidate_desc);
        softmax_sorted(c, s->n_vocab, s->p.temperature);
        int32_t n = truncate_candidates(&s->p, c, s->n_vocab);
        float total = 0.0f;
        for (int32_t i = 0; i < n; i++)
            total += c[i].p;
        float r = rng_uniform(s) * total, cum = 0.0f;
        chosen = c[n - 1].id;
        for (int32_t i = 0; i < n; i++) {
            cum += c[i].p;
            if (r < cum) {
                chosen = c[i].id;
                break;
            }
        }
    }
    *token = chosen;
    kvrt_sampler_accept(s, chosen);
    return KVRT_OK;
}
