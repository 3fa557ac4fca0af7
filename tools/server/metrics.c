/* /metrics in Prometheus' text exposition format (version 0.0.4), with
 * vLLM's metric names under a kvrt: prefix, so dashboards written for vLLM
 * need only the prefix changed. Gauges and counters of the KV pool and the
 * prefix cache come from the engine (kvrt_engine_get_metrics, read on the
 * engine thread); latency histograms are kept here, one observation per
 * finished request, with the engine's own definitions of TTFT and TPOT. */
#include "server.h"

#include <math.h>
#include <string.h>

/* Seconds. A tiny model decodes in well under a millisecond, so the buckets
 * start lower than vLLM's. */
static const double TTFT_BOUNDS[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                     1.0,   2.5,    5.0,   10.0, 20.0, 40.0, 80.0};
static const double TPOT_BOUNDS[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                     0.05,   0.1,     0.25,   0.5,   1.0,    2.5,   5.0};
static const double E2E_BOUNDS[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0};

const int SRV_HTTP_CODES[SRV_HTTP_CODES_N] = {200, 400, 401, 404, 405, 413, 429, 500, 503, 0};

static void hist_init(srv_hist *h, const double *bounds, int n)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->n_bounds = n;
}

void srv_counters_init(srv_counters *c)
{
    memset(c, 0, sizeof(*c));
    hist_init(&c->ttft, TTFT_BOUNDS, (int)KVRT_ARRAY_LEN(TTFT_BOUNDS));
    hist_init(&c->tpot, TPOT_BOUNDS, (int)KVRT_ARRAY_LEN(TPOT_BOUNDS));
    hist_init(&c->e2e, E2E_BOUNDS, (int)KVRT_ARRAY_LEN(E2E_BOUNDS));
    hist_init(&c->queue, E2E_BOUNDS, (int)KVRT_ARRAY_LEN(E2E_BOUNDS));
}

void srv_hist_observe(srv_hist *h, double v)
{
    if (!isfinite(v))
        return;
    int i = 0;
    while (i < h->n_bounds && v > h->bounds[i])
        i++;
    h->counts[i]++; /* counts[n_bounds] is the +Inf overflow */
    h->sum += v;
    h->count++;
}

void srv_count_http(srv_counters *c, int status)
{
    int i = 0;
    while (SRV_HTTP_CODES[i] && SRV_HTTP_CODES[i] != status)
        i++;
    c->http[i]++;
}

typedef struct writer {
    srv_buf *b;
    const char *labels; /* model_name="..." */
    bool ok;
} writer;

static void help(writer *w, const char *name, const char *type, const char *text)
{
    w->ok = w->ok && srv_buf_printf(w->b, "# HELP kvrt:%s %s\n# TYPE kvrt:%s %s\n", name, text, name, type);
}

static void value(writer *w, const char *name, const char *type, const char *text, double v)
{
    help(w, name, type, text);
    w->ok = w->ok && srv_buf_printf(w->b, "kvrt:%s{%s} %.17g\n", name, w->labels, v);
}

static void hist(writer *w, const char *name, const char *text, const srv_hist *h)
{
    help(w, name, "histogram", text);
    uint64_t cum = 0;
    for (int i = 0; i <= h->n_bounds && w->ok; i++) {
        cum += h->counts[i];
        if (i < h->n_bounds)
            w->ok = srv_buf_printf(w->b, "kvrt:%s_bucket{%s,le=\"%g\"} %llu\n", name, w->labels, h->bounds[i],
                                   (unsigned long long)cum);
        else
            w->ok = srv_buf_printf(w->b, "kvrt:%s_bucket{%s,le=\"+Inf\"} %llu\n", name, w->labels,
                                   (unsigned long long)cum);
    }
    w->ok = w->ok && srv_buf_printf(w->b, "kvrt:%s_sum{%s} %.17g\nkvrt:%s_count{%s} %llu\n", name, w->labels, h->sum,
                                    name, w->labels, (unsigned long long)h->count);
}

/* model_name="NAME" with the label value escaped as the format asks. */
static bool label(srv_buf *b, const char *model)
{
    bool ok = srv_buf_puts(b, "model_name=\"");
    for (const char *p = model; *p && ok; p++)
        ok = *p == '\\' ? srv_buf_puts(b, "\\\\")
           : *p == '"'  ? srv_buf_puts(b, "\\\"")
           : *p == '\n' ? srv_buf_puts(b, "\\n")
                        : srv_buf_append(b, p, 1);
    return ok && srv_buf_puts(b, "\"");
}

static void kv_metrics(writer *w, const kvrt_engine_metrics *m)
{
    double usage = m->blocks_total ? (double)m->blocks_used / (double)m->blocks_total : 0.0;
    value(w, "kv_cache_usage_perc", "gauge", "KV cache usage: used blocks / total blocks (1 = full).", usage);
    value(w, "kv_cache_blocks_total", "gauge", "KV cache blocks in the pool.", m->blocks_total);
    value(w, "kv_cache_blocks_used", "gauge", "KV cache blocks held by sequences (reference count > 0).",
          m->blocks_used);
    value(w, "kv_cache_blocks_free", "gauge", "KV cache blocks free (cached ones included).", m->blocks_free);
    value(w, "kv_cache_blocks_cached", "gauge", "Free KV cache blocks that still hold a prefix-cache entry.",
          m->blocks_cached);
    value(w, "kv_cache_block_size", "gauge", "Token positions per KV cache block.", m->block_size);
    value(w, "kv_cache_bytes", "gauge", "Device bytes of the KV cache pool.", (double)m->kv_bytes);
    value(w, "kv_cache_utilization", "gauge",
          "Tokens stored / capacity of the allocated blocks, mean over steps.", m->kv_utilization_mean);
    value(w, "prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.",
          (double)m->prefix_query_tokens);
    value(w, "prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.",
          (double)m->prefix_hit_tokens);
    value(w, "prefix_cache_hit_rate", "gauge", "Prefix cache hits / queries, in tokens, since start.",
          m->prefix_hit_rate);
    value(w, "kv_cache_evictions_total", "counter", "Cached blocks reused for new data.", (double)m->evictions);
    value(w, "num_preemptions_total", "counter", "Sequences preempted (recomputed or swapped) for lack of blocks.",
          (double)(m->preemptions_recompute + m->preemptions_swap));
    value(w, "engine_steps_total", "counter", "Engine steps (one forward pass each).", (double)m->steps);
}

bool srv_metrics_format(const srv_snapshot *s, const char *model_name, srv_buf *out)
{
    srv_buf lab = {0};
    if (!label(&lab, model_name))
        return false;
    writer w = {out, lab.p, true};
    const srv_counters *c = &s->c;
    value(&w, "num_requests_running", "gauge", "Requests in the engine that have been scheduled.",
          s->requests_running);
    value(&w, "num_requests_waiting", "gauge", "Requests waiting to be scheduled for the first time.",
          s->requests_waiting);
    kv_metrics(&w, &s->m);
    value(&w, "prompt_tokens_total", "counter", "Prompt tokens of submitted requests.", (double)c->prompt_tokens);
    value(&w, "generation_tokens_total", "counter", "Tokens generated.", (double)c->generation_tokens);
    value(&w, "avg_generation_throughput_toks_per_s", "gauge", "Generated tokens per second over the last ~10 s.",
          s->gen_tokens_per_s);
    value(&w, "avg_prompt_throughput_toks_per_s", "gauge", "Prompt tokens computed per second over the last ~10 s.",
          s->prompt_tokens_per_s);
    hist(&w, "time_to_first_token_seconds", "Submission to first generated token.", &c->ttft);
    hist(&w, "time_per_output_token_seconds", "(finish - first token) / (tokens - 1), per request.", &c->tpot);
    hist(&w, "e2e_request_latency_seconds", "Submission to finish.", &c->e2e);
    hist(&w, "request_queue_time_seconds", "Submission to first scheduling.", &c->queue);
    help(&w, "request_success_total", "counter", "Finished samples by finish reason.");
    w.ok = w.ok && srv_buf_printf(out, "kvrt:request_success_total{%s,finished_reason=\"stop\"} %llu\n", lab.p,
                                  (unsigned long long)c->finished_stop) &&
           srv_buf_printf(out, "kvrt:request_success_total{%s,finished_reason=\"length\"} %llu\n", lab.p,
                          (unsigned long long)c->finished_length);
    value(&w, "num_requests_cancelled_total", "counter",
          "Samples cancelled (client disconnected, server stopping, engine failure).", (double)c->finished_cancelled);
    help(&w, "http_requests_total", "counter", "HTTP responses by status code (0 = any other).");
    for (int i = 0; i < SRV_HTTP_CODES_N && w.ok; i++)
        w.ok = srv_buf_printf(out, "kvrt:http_requests_total{%s,code=\"%d\"} %llu\n", lab.p, SRV_HTTP_CODES[i],
                              (unsigned long long)c->http[i]);
    srv_buf_free(&lab);
    return w.ok;
}
