/* Engine metrics: sample series, percentiles, JSON. */
#include "engine/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

kvrt_status kvrt_series_push(kvrt_series *s, const kvrt_allocator *a, double x)
{
    if (s->n == s->cap) {
        int64_t cap = s->cap ? s->cap * 2 : 64;
        double *v = kvrt_calloc(a, (size_t)cap, sizeof(double));
        if (!v)
            return KVRT_ERR_OUT_OF_HOST_MEMORY;
        if (s->n)
            memcpy(v, s->v, (size_t)s->n * sizeof(double));
        kvrt_free(a, s->v);
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return KVRT_OK;
}

void kvrt_series_free(kvrt_series *s, const kvrt_allocator *a)
{
    kvrt_free(a, s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

double kvrt_percentile_sorted(const double *sorted, int64_t n, double p)
{
    if (n <= 0)
        return 0.0;
    if (p <= 0.0)
        return sorted[0];
    if (p >= 100.0)
        return sorted[n - 1];
    double rank = p / 100.0 * (double)(n - 1);
    int64_t lo = (int64_t)rank;
    double frac = rank - (double)lo;
    if (lo + 1 >= n)
        return sorted[n - 1];
    return sorted[lo] + frac * (sorted[lo + 1] - sorted[lo]);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

kvrt_summary kvrt_series_summary(const kvrt_series *s, double *scratch)
{
    kvrt_summary r;
    memset(&r, 0, sizeof(r));
    r.count = s->n;
    if (s->n == 0)
        return r;
    memcpy(scratch, s->v, (size_t)s->n * sizeof(double));
    qsort(scratch, (size_t)s->n, sizeof(double), cmp_double);
    double sum = 0.0;
    for (int64_t i = 0; i < s->n; i++)
        sum += scratch[i];
    r.mean = sum / (double)s->n;
    r.p50 = kvrt_percentile_sorted(scratch, s->n, 50.0);
    r.p95 = kvrt_percentile_sorted(scratch, s->n, 95.0);
    r.p99 = kvrt_percentile_sorted(scratch, s->n, 99.0);
    r.max = scratch[s->n - 1];
    return r;
}

/* Appends printf output to a buffer that may be too small; counts what it needs. */
typedef struct json_out {
    char *buf;
    size_t cap, len;
} json_out;

static void put(json_out *o, const char *fmt, ...) KVRT_PRINTF(2, 3);
static void put(json_out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = o->len < o->cap ? o->cap - o->len : 0;
    int n = vsnprintf(room ? o->buf + o->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0)
        o->len += (size_t)n;
}

static void put_summary(json_out *o, const char *name, const kvrt_summary *s, int last)
{
    put(o, "\"%s\":{\"count\":%lld,\"mean\":%.9g,\"p50\":%.9g,\"p95\":%.9g,\"p99\":%.9g,\"max\":%.9g}%s", name,
        (long long)s->count, s->mean, s->p50, s->p95, s->p99, s->max, last ? "" : ",");
}

kvrt_status kvrt_metrics_to_json(const kvrt_engine_metrics *m, char *buf, size_t capacity, size_t *len,
                                 kvrt_error *err)
{
    json_out o = {.buf = buf, .cap = capacity, .len = 0};
    put(&o, "{\"block_size\":%d,\"kv_bytes\":%llu,", (int)m->block_size, (unsigned long long)m->kv_bytes);
    put(&o, "\"blocks\":{\"total\":%d,\"used\":%d,\"free\":%d,\"cached\":%d,\"host_total\":%d,\"host_used\":%d},",
        (int)m->blocks_total, (int)m->blocks_used, (int)m->blocks_free, (int)m->blocks_cached,
        (int)m->host_blocks_total, (int)m->host_blocks_used);
    put(&o, "\"kv_utilization\":%.9g,\"kv_utilization_last\":%.9g,\"contiguous_kv_utilization\":%.9g,",
        m->kv_utilization_mean, m->kv_utilization_last, m->kv_utilization_contiguous_mean);
    put(&o, "\"prefix\":{\"lookups\":%lld,\"query_tokens\":%lld,\"hit_tokens\":%lld,\"hit_rate\":%.9g},",
        (long long)m->prefix_lookups, (long long)m->prefix_query_tokens, (long long)m->prefix_hit_tokens,
        m->prefix_hit_rate);
    put(&o, "\"evictions\":%lld,\"cow_copies\":%lld,\"blocks_swapped_out\":%lld,\"blocks_swapped_in\":%lld,",
        (long long)m->evictions, (long long)m->cow_copies, (long long)m->blocks_swapped_out,
        (long long)m->blocks_swapped_in);
    put(&o, "\"preemptions\":{\"recompute\":%lld,\"swap\":%lld},", (long long)m->preemptions_recompute,
        (long long)m->preemptions_swap);
    put(&o, "\"offload\":{\"blocks\":%lld,\"bytes\":%llu,\"attn_device_s\":%.9g,\"attn_host_s\":%.9g},",
        (long long)m->blocks_offloaded, (unsigned long long)m->offload_bytes, m->attn_device_s, m->attn_host_s);
    put(&o, "\"context_shift\":{\"shifts\":%lld,\"dropped_tokens\":%lld},", (long long)m->context_shifts,
        (long long)m->shift_dropped_tokens);
    put(&o, "\"requests\":{\"submitted\":%lld,\"rejected\":%lld,\"finished\":%lld,\"cancelled\":%lld},",
        (long long)m->requests_submitted, (long long)m->requests_rejected, (long long)m->requests_finished,
        (long long)m->requests_cancelled);
    put(&o, "\"steps\":%lld,\"prefill_tokens\":%lld,\"decode_tokens\":%lld,\"generated_tokens\":%lld,",
        (long long)m->steps, (long long)m->prefill_tokens, (long long)m->decode_tokens,
        (long long)m->generated_tokens);
    put_summary(&o, "step_tokens", &m->step_tokens, 0);
    put_summary(&o, "step_seqs", &m->step_seqs, 0);
    put_summary(&o, "step_prefill_tokens", &m->step_prefill_tokens, 0);
    put_summary(&o, "step_decode_tokens", &m->step_decode_tokens, 0);
    put_summary(&o, "step_time_s", &m->step_time, 0);
    put(&o, "\"prefill_time_s\":%.9g,\"decode_time_s\":%.9g,", m->prefill_time_s, m->decode_time_s);
    put_summary(&o, "ttft_s", &m->ttft, 0);
    put_summary(&o, "tpot_s", &m->tpot, 0);
    put_summary(&o, "e2e_s", &m->e2e, 0);
    put_summary(&o, "queue_s", &m->queue, 1);
    put(&o, "}");
    if (len)
        *len = o.len;
    if (o.len >= capacity)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "metrics JSON needs %zu bytes, buffer has %zu",
                         o.len + 1, capacity);
    return KVRT_OK;
}
