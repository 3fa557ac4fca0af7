/* Picking a token from logits: the engine's minimal sampler (greedy, or
 * temperature with top-k / top-p / min-p), one seeded generator per sample so
 * a sample's draws do not depend on what else runs. The model's kvrt_sampler
 * will replace the body of kvrt_engine_sample. */
#include "engine/engine_internal.h"

#include <math.h>
#include <stdlib.h>

typedef struct candidate {
    float p;    /* logit, then probability */
    int32_t id;
} candidate;

static uint64_t splitmix64_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t kvrt_engine_seed(uint64_t seed, int32_t index)
{
    uint64_t s = seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(index + 1));
    return splitmix64_next(&s);
}

static int cmp_desc(const void *a, const void *b)
{
    const candidate *x = a, *y = b;
    if (x->p != y->p)
        return x->p < y->p ? 1 : -1;
    return (x->id > y->id) - (x->id < y->id);
}

static int32_t argmax(const float *logits, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

kvrt_status kvrt_engine_sample(kvrt_engine *e, kvrt_eseq *s, const float *logits, int32_t *token)
{
    const kvrt_request_params *p = &s->req->p;
    int32_t n = e->runner.n_vocab;
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(logits[i]) && !(isinf(logits[i]) && logits[i] < 0))
            return kvrt_fail(&e->err, KVRT_ERR_INTERNAL, "logit %d is %g", (int)i, (double)logits[i]);
    if (p->temperature <= 0.0f) {
        *token = argmax(logits, n);
        return KVRT_OK;
    }
    candidate *c = (candidate *)(void *)e->sample_scratch; /* 2 floats per entry */
    for (int32_t i = 0; i < n; i++) {
        c[i].p = logits[i] / p->temperature;
        c[i].id = i;
    }
    qsort(c, (size_t)n, sizeof(*c), cmp_desc);
    int32_t keep = p->top_k > 0 ? KVRT_MIN(p->top_k, n) : n;
    double sum = 0.0;
    for (int32_t i = 0; i < keep; i++)
        sum += (c[i].p = (float)exp((double)c[i].p - (double)c[0].p));
    double cum = 0.0;
    int32_t kept = 0;
    for (int32_t i = 0; i < keep; i++) {
        double q = c[i].p / sum;
        if (i > 0 && q < (double)p->min_p * (c[0].p / sum))
            break;
        cum += q;
        kept = i + 1;
        if (cum >= (double)p->top_p)
            break;
    }
    double total = 0.0;
    for (int32_t i = 0; i < kept; i++)
        total += c[i].p;
    double u = (double)(splitmix64_next(&s->rng) >> 11) * (1.0 / 9007199254740992.0) * total;
    int32_t pick = kept - 1;
    for (int32_t i = 0; i < kept; i++) {
        u -= c[i].p;
        if (u < 0.0) {
            pick = i;
            break;
        }
    }
    *token = c[pick].id;
    return KVRT_OK;
}
