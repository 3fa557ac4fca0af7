/* Engine metrics helpers: a growable series of samples and its summary
 * (mean, percentiles), and the JSON form of kvrt_engine_metrics. Not installed. */
#ifndef KVRT_ENGINE_METRICS_H
#define KVRT_ENGINE_METRICS_H

#include "common/kvrt_internal.h"

typedef struct kvrt_series {
    double *v;
    int64_t n, cap;
} kvrt_series;

/* Appends x; KVRT_ERR_OUT_OF_HOST_MEMORY (series unchanged) when it cannot grow. */
kvrt_status kvrt_series_push(kvrt_series *s, const kvrt_allocator *a, double x);
void kvrt_series_free(kvrt_series *s, const kvrt_allocator *a);

/* The p-th percentile (0..100) of n values sorted ascending, linear
 * interpolation between the closest ranks (rank = p/100 * (n-1)). 0 for n = 0. */
double kvrt_percentile_sorted(const double *sorted, int64_t n, double p);

/* Summarises a series (count, mean, p50/p95/p99, max); uses `scratch`
 * [s->n] for sorting (may be NULL only when s->n is 0). */
kvrt_summary kvrt_series_summary(const kvrt_series *s, double *scratch);

/* JSON of the metrics into buf; see kvrt_engine_metrics_json. */
kvrt_status kvrt_metrics_to_json(const kvrt_engine_metrics *m, char *buf, size_t capacity, size_t *len,
                                 kvrt_error *err);

#endif /* KVRT_ENGINE_METRICS_H */
