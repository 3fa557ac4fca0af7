/* Picking a token from logits through the library's kvrt_sampler: one sampler
 * per sample (its own seeded generator and penalty history), all sharing the
 * engine's candidate scratch, so a sample's draws never depend on what else
 * runs in the batch. */
#include "engine/engine_internal.h"

#include <math.h>

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

kvrt_status kvrt_engine_sampler_init(kvrt_engine *e, kvrt_eseq *s)
{
    const kvrt_request_params *p = &s->req->p;
    kvrt_sampler_params sp = kvrt_sampler_default_params();
    sp.temperature = p->temperature;
    sp.top_k = p->top_k;
    sp.top_p = p->top_p;
    sp.min_p = p->min_p;
    sp.repeat_penalty = p->repeat_penalty;
    sp.repeat_last_n = p->repeat_last_n;
    sp.seed = kvrt_engine_seed(p->seed, s->index);
    KVRT_TRY(kvrt_sampler_create_shared(&sp, e->runner.n_vocab, e->alloc, &s->sampler, &e->err));
    /* The penalty looks at the prompt's tail too (as llama.cpp's does). */
    for (int32_t i = KVRT_MAX(0, p->n_prompt - p->repeat_last_n); i < p->n_prompt; i++)
        kvrt_sampler_accept(s->sampler, p->prompt[i]);
    return KVRT_OK;
}

/* log softmax of the raw logits at `token`. */
static float log_prob(const float *logits, int32_t n, int32_t token)
{
    float max = logits[0];
    for (int32_t i = 1; i < n; i++)
        max = logits[i] > max ? logits[i] : max;
    double sum = 0.0;
    for (int32_t i = 0; i < n; i++)
        sum += exp((double)logits[i] - (double)max);
    return (float)((double)logits[token] - (double)max - log(sum));
}

kvrt_status kvrt_engine_sample(kvrt_engine *e, kvrt_eseq *s, const float *logits, int32_t *token)
{
    int32_t n = e->runner.n_vocab;
    for (int32_t i = 0; i < n; i++)
        if (!isfinite(logits[i]) && !(isinf(logits[i]) && logits[i] < 0))
            return kvrt_fail(&e->err, KVRT_ERR_INTERNAL, "logit %d is %g", (int)i, (double)logits[i]);
    kvrt_status st = kvrt_sampler_sample_with(s->sampler, logits, e->sample_scratch, token);
    if (st != KVRT_OK)
        return kvrt_fail(&e->err, st, "sampler failed");
    if (s->logprobs)
        s->logprobs[s->len] = log_prob(logits, n, *token);
    return KVRT_OK;
}
