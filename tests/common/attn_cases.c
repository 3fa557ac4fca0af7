/* The shared attention case table: generator, reference, runner, checker. */
#include "attn_cases.h"

#include "common/fp16.h"
#include "ref_attention.h"
#include "ref_kvquant.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ATTN_GUARD 64              /* canary floats after every output */
#define ATTN_CANARY 0x7fa5c0deu    /* a NaN payload no kernel produces */
#define ATTN_BATCH_SEQS 7
#define ATTN_BATCH_MAX_LEN 480     /* crosses the first split-K boundary (256) */
#define ATTN_REF_BUDGET 2.0e8      /* multiply-adds of the reference per case, roughly */

/* ---- seeded random numbers (splitmix64) ----------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_uniform(uint64_t *s, float lo, float hi)
{
    return lo + (hi - lo) * (float)((double)(rng_next(s) >> 40) / 16777216.0);
}

/* Uniform in [lo, hi]. */
static int32_t rng_int(uint64_t *s, int32_t lo, int32_t hi)
{
    return lo + (int32_t)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

/* ---- the grid ------------------------------------------------------------------------ */

static const int32_t grid_hd[] = {64, 80, 96, 128, 256};
static const int32_t grid_heads[][2] = {{4, 4}, {8, 2}, {8, 1}, {32, 8}, {64, 8}};
static const int32_t grid_bs[] = {8, 16, 32};
static const int32_t grid_len[] = {1, 17, 129, 463, 1328, 0 /* batch of 7 random lengths */};
static const int32_t grid_mask[][2] = {{0, 0}, {256, 0}, {256, 4}};
static const kvrt_dtype grid_dtype[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16};
static const attn_mode grid_mode[] = {ATTN_DECODE, ATTN_PREFILL};

#define N_FACTORS 7
static const int factor_size[N_FACTORS] = {5, 5, 3, 6, 3, 2, 2};

/* Query tokens per sequence for a prefill: a chunk that usually starts
 * mid-sequence and mid-block, small enough for the double reference. */
static int32_t chunk_len(uint64_t *rng, int32_t len, int32_t hd, int32_t n_heads)
{
    double per_token = (double)hd * n_heads * len * 2.0;
    int32_t cap = (int32_t)fmin(70.0, fmax(1.0, ATTN_REF_BUDGET / per_token));
    return rng_int(rng, 1, len < cap ? len : cap);
}

void attn_case_make(attn_case *c, int32_t head_dim, int32_t n_heads, int32_t n_kv_heads, int32_t block_size,
                    kvrt_dtype dtype, int32_t window, int32_t sinks, attn_mode mode, int32_t length, uint64_t seed)
{
    memset(c, 0, sizeof(*c));
    c->head_dim = head_dim;
    c->n_heads = n_heads;
    c->n_kv_heads = n_kv_heads;
    c->block_size = block_size;
    c->dtype = dtype;
    c->v_dtype = dtype;
    c->window = window;
    c->sinks = sinks;
    c->mode = mode;
    c->seed = seed;
    uint64_t rng = seed ^ 0x1e57u;
    c->num_seqs = length > 0 ? 1 : ATTN_BATCH_SEQS;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        c->seq_lens[s] = length > 0 ? length : rng_int(&rng, 1, ATTN_BATCH_MAX_LEN);
        c->n_new[s] = mode == ATTN_DECODE ? 1 : chunk_len(&rng, c->seq_lens[s], head_dim, n_heads);
    }
}

static void grid_point(const int v[N_FACTORS], attn_case *c)
{
    uint64_t seed = 0x5eed;
    for (int f = 0; f < N_FACTORS; f++)
        seed = seed * 31 + (uint64_t)v[f] + 1;
    attn_case_make(c, grid_hd[v[0]], grid_heads[v[1]][0], grid_heads[v[1]][1], grid_bs[v[2]], grid_dtype[v[5]],
                   grid_mask[v[4]][0], grid_mask[v[4]][1], grid_mode[v[6]], grid_len[v[3]], seed);
}

/* Index of the pair (factor f value a, factor g value b), f < g, in a 6x6x7x7 bitmap. */
static int pair_index(int f, int a, int g, int b)
{
    return ((f * N_FACTORS + g) * 6 + a) * 6 + b;
}

static int new_pairs(const unsigned char *covered, const int v[N_FACTORS])
{
    int n = 0;
    for (int f = 0; f < N_FACTORS; f++)
        for (int g = f + 1; g < N_FACTORS; g++)
            n += !covered[pair_index(f, v[f], g, v[g])];
    return n;
}

/* Relative cost of a point (reference work), to prefer cheap cases on ties. */
static double point_cost(const int v[N_FACTORS])
{
    double len = grid_len[v[3]] ? grid_len[v[3]] : ATTN_BATCH_SEQS * ATTN_BATCH_MAX_LEN / 2;
    return grid_hd[v[0]] * grid_heads[v[1]][0] * len * (v[6] ? 20.0 : 1.0);
}

/* Greedy pairwise cover (AETG style): each step takes, among seeded random
 * candidates that include the first uncovered pair, the one covering the
 * most uncovered pairs (the cheapest on ties). Deterministic. */
static size_t pairwise(attn_case *out, size_t max)
{
    unsigned char covered[N_FACTORS * N_FACTORS * 36];
    memset(covered, 1, sizeof(covered));
    int left = 0;
    for (int f = 0; f < N_FACTORS; f++)
        for (int g = f + 1; g < N_FACTORS; g++)
            for (int a = 0; a < factor_size[f]; a++)
                for (int b = 0; b < factor_size[g]; b++, left++)
                    covered[pair_index(f, a, g, b)] = 0;
    uint64_t rng = 0xc0ffee;
    size_t n = 0;
    while (left > 0) {
        int need[4] = {0, 0, 0, 0};
        for (int f = 0; f < N_FACTORS && !need[3]; f++)
            for (int g = f + 1; g < N_FACTORS && !need[3]; g++)
                for (int a = 0; a < factor_size[f] && !need[3]; a++)
                    for (int b = 0; b < factor_size[g] && !need[3]; b++)
                        if (!covered[pair_index(f, a, g, b)]) {
                            need[0] = f, need[1] = a, need[2] = g, need[3] = b + 1;
                        }
        int best[N_FACTORS], best_new = -1;
        double best_cost = 0;
        for (int cand = 0; cand < 64; cand++) {
            int v[N_FACTORS];
            for (int f = 0; f < N_FACTORS; f++)
                v[f] = rng_int(&rng, 0, factor_size[f] - 1);
            v[need[0]] = need[1];
            v[need[2]] = need[3] - 1;
            int nn = new_pairs(covered, v);
            double cost = point_cost(v);
            if (nn > best_new || (nn == best_new && cost < best_cost)) {
                memcpy(best, v, sizeof(best));
                best_new = nn;
                best_cost = cost;
            }
        }
        for (int f = 0; f < N_FACTORS; f++)
            for (int g = f + 1; g < N_FACTORS; g++)
                covered[pair_index(f, best[f], g, best[g])] = 1;
        left -= best_new;
        if (n < max)
            grid_point(best, &out[n]);
        n++;
    }
    return n;
}

size_t attn_case_grid(bool full, attn_case *out, size_t max)
{
    if (!full)
        return pairwise(out, max);
    size_t n = 0;
    int v[N_FACTORS] = {0};
    for (;;) {
        if (n < max)
            grid_point(v, &out[n]);
        n++;
        int f = N_FACTORS - 1;
        while (f >= 0 && ++v[f] == factor_size[f])
            v[f--] = 0;
        if (f < 0)
            return n;
    }
}

/* ---- large head sizes ------------------------------------------------------------------ */

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* (seq_len, n_new) of the wide-head cases; decode takes seq_len with one
 * query. CI: issue 19's lengths (the boundary at head_dim 768 lay between
 * 126 and 127 keys; 200 keys are two prefill partitions of 128 there); the
 * full sweep adds tile edges and many partitions. */
static const int32_t wide_lens[][2] = {{126, 1}, {127, 1}, {200, 8}};
static const int32_t wide_lens_full[][2] = {{1, 1},   {126, 1},  {127, 1},   {128, 1},   {200, 8},
                                            {256, 1}, {257, 3},  {270, 2},   {513, 40},  {700, 5},
                                            {1100, 1}, {1500, 1}, {2100, 17}};
static const int32_t wide_hd[] = {512, 576, 768, 1024};
static const int32_t wide_hd_full[] = {512, 576, 640, 665, 705, 768, 896, 1000, 1024};

size_t attn_case_wide(bool full, attn_case *out, size_t max)
{
    const int32_t *hd = full ? wide_hd_full : wide_hd;
    const int32_t(*lens)[2] = full ? wide_lens_full : wide_lens;
    size_t n_hd = full ? N_OF(wide_hd_full) : N_OF(wide_hd), n_len = full ? N_OF(wide_lens_full) : N_OF(wide_lens);
    size_t n = 0;
    for (size_t h = 0; h < n_hd; h++)
        for (size_t l = 0; l < n_len; l++)
            for (int v = 0; v < (full ? 4 : 1); v++) /* F32; full adds F16, GQA 8/2, window 100 + sinks 4 */
                for (int m = 0; m < 2; m++, n++) {
                    if (n >= max)
                        continue;
                    attn_mode mode = m ? ATTN_DECODE : ATTN_PREFILL;
                    attn_case_make(&out[n], hd[h], v == 2 ? 8 : 2, v == 2 ? 2 : 1, 16,
                                   v == 1 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32, v == 3 ? 100 : 0, v == 3 ? 4 : 0, mode,
                                   lens[l][0], 0x19u + n);
                    out[n].n_new[0] = mode == ATTN_DECODE ? 1 : lens[l][1];
                }
    return n;
}

void attn_case_name(const attn_case *c, char *buf, size_t size)
{
    char types[32];
    if (c->v_dtype != c->dtype)
        snprintf(types, sizeof(types), "K %s/V %s", kvrt_dtype_name(c->dtype), kvrt_dtype_name(c->v_dtype));
    else
        snprintf(types, sizeof(types), "%s", kvrt_dtype_name(c->dtype));
    int at = snprintf(buf, size, "%s %s hd=%d h=%d/%d bs=%d W=%d S=%d%s lens=[",
                      c->mode == ATTN_DECODE ? "decode" : "prefill", types, (int)c->head_dim,
                      (int)c->n_heads, (int)c->n_kv_heads, (int)c->block_size, (int)c->window, (int)c->sinks,
                      c->in_order_blocks ? " in-order" : "");
    for (int32_t s = 0; s < c->num_seqs && at > 0 && (size_t)at < size; s++)
        at += snprintf(buf + at, size - (size_t)at, "%s%d/%d", s ? " " : "", (int)c->n_new[s], (int)c->seq_lens[s]);
    if (at > 0 && (size_t)at < size)
        snprintf(buf + at, size - (size_t)at, "]");
}

/* ---- building a case --------------------------------------------------------------------- */

/* Releases (sets to -1) the table entries whose keys no query of the chunk sees. */
static void release_hidden_blocks(const attn_case *c, int32_t s, int32_t *row)
{
    ref_attn_shape sh = {c->n_heads, c->n_kv_heads, c->head_dim, c->window, c->sinks, 1.0};
    int32_t len = c->seq_lens[s], bs = c->block_size;
    for (int32_t b = 0; b * bs < len; b++) {
        bool seen = false;
        for (int32_t j = b * bs; j < (b + 1) * bs && j < len && !seen; j++)
            for (int32_t i = len - c->n_new[s]; i < len && !seen; i++)
                seen = ref_attn_visible(&sh, i, j);
        if (!seen)
            row[b] = -1;
    }
}

static bool alloc_arrays(attn_case_data *d, size_t kv_total)
{
    const attn_case *c = &d->c;
    size_t kv_row = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t q_row = (size_t)c->n_heads * (size_t)c->head_dim;
    d->k_write = malloc((size_t)d->n_write * kv_row * sizeof(float));
    d->v_write = malloc((size_t)d->n_write * kv_row * sizeof(float));
    d->slot_mapping = malloc((size_t)d->n_write * sizeof(int32_t));
    d->k_stored = malloc(kv_total * kv_row * sizeof(float));
    d->v_stored = malloc(kv_total * kv_row * sizeof(float));
    d->seq_kv_offset = malloc((size_t)c->num_seqs * sizeof(size_t));
    d->seq_lens = malloc((size_t)c->num_seqs * sizeof(int32_t));
    d->query_start_loc = malloc(((size_t)c->num_seqs + 1) * sizeof(int32_t));
    d->block_tables = malloc((size_t)c->num_seqs * (size_t)d->max_blocks * sizeof(int32_t));
    d->q = malloc((size_t)d->num_tokens * q_row * sizeof(float));
    d->ref = malloc((size_t)d->num_tokens * q_row * sizeof(double));
    return d->k_write && d->v_write && d->slot_mapping && d->k_stored && d->v_stored && d->seq_kv_offset &&
           d->seq_lens && d->query_start_loc && d->block_tables && d->q && d->ref;
}

/* Sizes: blocks, table width, tokens, write rows (one padding row per 5). */
static size_t plan(attn_case_data *d, int32_t *blocks_used)
{
    const attn_case *c = &d->c;
    size_t kv_total = 0;
    *blocks_used = 0;
    d->max_blocks = 1;
    d->num_tokens = 0;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        int32_t nb = (c->seq_lens[s] + c->block_size - 1) / c->block_size;
        *blocks_used += nb;
        d->max_blocks = nb + 1 > d->max_blocks ? nb + 1 : d->max_blocks; /* one spare -1 column */
        d->num_tokens += c->n_new[s];
        kv_total += (size_t)c->seq_lens[s];
    }
    d->num_blocks = *blocks_used + 3;
    d->n_write = (int32_t)(kv_total + kv_total / 5 + 1);
    return kv_total;
}

/* Block ids in the order the sequences take them. */
static int32_t *block_order(const attn_case *c, int32_t num_blocks)
{
    int32_t *ids = malloc((size_t)num_blocks * sizeof(int32_t));
    if (!ids)
        return NULL;
    for (int32_t i = 0; i < num_blocks; i++)
        ids[i] = i;
    uint64_t rng = c->seed ^ 0xb10c5u;
    for (int32_t i = num_blocks - 1; i > 0 && !c->in_order_blocks; i--) {
        int32_t j = rng_int(&rng, 0, i), t = ids[i];
        ids[i] = ids[j];
        ids[j] = t;
    }
    return ids;
}

static void fill_kv(attn_case_data *d, const int32_t *ids)
{
    const attn_case *c = &d->c;
    size_t kv_row = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    uint64_t rng = c->seed;
    int32_t w = 0, next_block = 0;
    size_t kv_at = 0;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        int32_t *row = d->block_tables + (size_t)s * (size_t)d->max_blocks;
        for (int32_t b = 0; b < d->max_blocks; b++)
            row[b] = b * c->block_size < c->seq_lens[s] ? ids[next_block++] : -1;
        d->seq_lens[s] = c->seq_lens[s];
        d->seq_kv_offset[s] = kv_at * kv_row;
        for (int32_t j = 0; j < c->seq_lens[s]; j++, kv_at++) {
            if (w % 6 == 5) { /* a padding row the write must skip */
                d->slot_mapping[w] = -1;
                for (size_t e = 0; e < kv_row; e++)
                    d->k_write[(size_t)w * kv_row + e] = d->v_write[(size_t)w * kv_row + e] = NAN;
                w++;
            }
            d->slot_mapping[w] = row[j / c->block_size] * c->block_size + j % c->block_size;
            for (size_t e = 0; e < kv_row; e++) {
                float kx = rng_uniform(&rng, -1.0f, 1.0f), vx = rng_uniform(&rng, -1.0f, 1.0f);
                d->k_write[(size_t)w * kv_row + e] = kx;
                d->v_write[(size_t)w * kv_row + e] = vx;
            }
            for (int32_t h = 0; h < c->n_kv_heads; h++) { /* whole rows: quantized types group them */
                size_t at = (size_t)h * (size_t)c->head_dim;
                ref_kv_stored_row(c->dtype, d->k_write + (size_t)w * kv_row + at, c->head_dim,
                                  d->k_stored + kv_at * kv_row + at);
                ref_kv_stored_row(c->v_dtype, d->v_write + (size_t)w * kv_row + at, c->head_dim,
                                  d->v_stored + kv_at * kv_row + at);
            }
            w++;
        }
    }
    d->n_write = w;
}

bool attn_case_build(const attn_case *c, attn_case_data *d)
{
    memset(d, 0, sizeof(*d));
    d->c = *c;
    d->scale = (float)(1.0 / sqrt((double)c->head_dim));
    int32_t blocks_used;
    size_t kv_total = plan(d, &blocks_used);
    int32_t *ids = block_order(c, d->num_blocks);
    if (!ids || !alloc_arrays(d, kv_total)) {
        free(ids);
        attn_case_free(d);
        return false;
    }
    fill_kv(d, ids);
    free(ids);
    size_t q_row = (size_t)c->n_heads * (size_t)c->head_dim;
    uint64_t rng = c->seed ^ 0x9u;
    /* |q| up to 3: scores spread over a few units, so the softmax is not flat */
    for (size_t i = 0; i < (size_t)d->num_tokens * q_row; i++)
        d->q[i] = rng_uniform(&rng, -3.0f, 3.0f);
    ref_attn_shape sh = {c->n_heads, c->n_kv_heads, c->head_dim, c->window, c->sinks, (double)d->scale};
    d->query_start_loc[0] = 0;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        d->query_start_loc[s + 1] = d->query_start_loc[s] + c->n_new[s];
        size_t at = (size_t)d->query_start_loc[s] * q_row;
        ref_attention_chunk(&sh, d->q + at, c->seq_lens[s], c->n_new[s], d->k_stored + d->seq_kv_offset[s],
                            d->v_stored + d->seq_kv_offset[s], d->ref + at);
        if (c->window > 0)
            release_hidden_blocks(c, s, d->block_tables + (size_t)s * (size_t)d->max_blocks);
    }
    return true;
}

void attn_case_free(attn_case_data *d)
{
    free(d->k_write);
    free(d->v_write);
    free(d->slot_mapping);
    free(d->k_stored);
    free(d->v_stored);
    free(d->seq_kv_offset);
    free(d->seq_lens);
    free(d->query_start_loc);
    free(d->block_tables);
    free(d->q);
    free(d->ref);
    memset(d, 0, sizeof(*d));
}

size_t attn_case_out_len(const attn_case_data *d)
{
    return (size_t)d->num_tokens * (size_t)d->c.n_heads * (size_t)d->c.head_dim;
}

/* ---- running on a context ------------------------------------------------------------------- */

kvrt_status attn_case_upload(kvrt_context *ctx, const attn_case_data *d, int32_t n_layers, kvrt_kv_cache **out,
                             kvrt_error *err)
{
    kvrt_kv_cache_params p = {.n_layers = n_layers, .n_kv_heads = d->c.n_kv_heads, .head_dim = d->c.head_dim,
                              .block_size = d->c.block_size, .num_blocks = d->num_blocks, .dtype = d->c.dtype,
                              .v_dtype_set = d->c.v_dtype != d->c.dtype, .v_dtype = d->c.v_dtype};
    kvrt_status s = kvrt_kv_cache_create(ctx, &p, out, err);
    if (s != KVRT_OK)
        return s;
    s = kvrt_kv_cache_write(*out, n_layers - 1, d->k_write, d->v_write, d->slot_mapping, d->n_write);
    if (s != KVRT_OK && err) {
        err->status = s;
        snprintf(err->message, sizeof(err->message), "%s", kvrt_kv_cache_message(*out));
    }
    if (s != KVRT_OK) {
        kvrt_kv_cache_destroy(*out);
        *out = NULL;
    }
    return s;
}

kvrt_status attn_case_attend(kvrt_kv_cache *cache, const attn_case_data *d, int32_t layer, int32_t first,
                             int32_t count, float *out, bool *canaries_ok)
{
    const attn_case *c = &d->c;
    size_t q_row = (size_t)c->n_heads * (size_t)c->head_dim;
    int32_t t0 = d->query_start_loc[first], nt = d->query_start_loc[first + count] - t0;
    size_t n_out = (size_t)nt * q_row;
    float *buf = malloc((n_out + ATTN_GUARD) * sizeof(float));
    int32_t *qsl = malloc(((size_t)count + 1) * sizeof(int32_t));
    if (!buf || !qsl) {
        free(buf);
        free(qsl);
        return KVRT_ERR_OUT_OF_HOST_MEMORY;
    }
    for (size_t i = 0; i < n_out; i++)
        buf[i] = NAN; /* an output the kernel forgets shows as non-finite */
    uint32_t canary = ATTN_CANARY;
    for (size_t i = 0; i < ATTN_GUARD; i++)
        memcpy(&buf[n_out + i], &canary, sizeof(canary));
    for (int32_t s = 0; s <= count; s++)
        qsl[s] = d->query_start_loc[first + s] - t0;
    kvrt_attention_params p = {c->n_heads, d->max_blocks, d->scale, c->window, c->sinks};
    const int32_t *tables = d->block_tables + (size_t)first * (size_t)d->max_blocks;
    kvrt_status s = c->mode == ATTN_DECODE
        ? kvrt_attention_decode(cache, layer, &p, count, d->q + (size_t)t0 * q_row, d->seq_lens + first, tables, buf)
        : kvrt_attention_prefill(cache, layer, &p, count, qsl, d->q + (size_t)t0 * q_row, d->seq_lens + first,
                                 tables, buf);
    *canaries_ok = true;
    for (size_t i = 0; i < ATTN_GUARD; i++)
        *canaries_ok = *canaries_ok && memcmp(&buf[n_out + i], &canary, sizeof(canary)) == 0;
    memcpy(out + (size_t)t0 * q_row, buf, n_out * sizeof(float));
    free(buf);
    free(qsl);
    return s;
}

attn_check attn_case_check(const attn_case_data *d, const float *out)
{
    attn_check r = {0.0, 0.0, 0, -1};
    double err2 = 0.0, ref2 = 0.0;
    size_t n = attn_case_out_len(d);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i])) {
            r.n_nonfinite++;
            continue;
        }
        double e = fabs((double)out[i] - d->ref[i]);
        if (e > r.max_abs || r.worst < 0) {
            r.max_abs = e > r.max_abs ? e : r.max_abs;
            r.worst = (int64_t)i;
        }
        err2 += e * e;
        ref2 += d->ref[i] * d->ref[i];
    }
    r.nmse = ref2 > 0 ? err2 / ref2 : err2;
    return r;
}

bool attn_check_ok(const attn_check *r)
{
    return r->n_nonfinite == 0 && r->max_abs <= ATTN_MAX_ABS_ERR && r->nmse <= ATTN_MAX_NMSE;
}

bool attn_case_run(kvrt_context *ctx, const attn_case_data *d, float *out, attn_check *res, char *msg,
                   size_t msg_size)
{
    kvrt_error err;
    kvrt_kv_cache *cache = NULL;
    float *own = out ? out : malloc(attn_case_out_len(d) * sizeof(float) + 1);
    bool canaries = false, ok = false;
    if (!own) {
        snprintf(msg, msg_size, "out of host memory");
        return false;
    }
    if (attn_case_upload(ctx, d, 2, &cache, &err) != KVRT_OK) {
        snprintf(msg, msg_size, "upload: %s", err.message);
    } else if (attn_case_attend(cache, d, 1, 0, d->c.num_seqs, own, &canaries) != KVRT_OK) {
        snprintf(msg, msg_size, "attention: %s", kvrt_kv_cache_message(cache));
    } else if (!canaries) {
        snprintf(msg, msg_size, "guard canaries after the output were overwritten");
    } else {
        *res = attn_case_check(d, own);
        ok = attn_check_ok(res);
        snprintf(msg, msg_size, "max abs %.3g (bound %.0e), nmse %.3g (bound %.0e), %lld non-finite",
                 res->max_abs, ATTN_MAX_ABS_ERR, res->nmse, ATTN_MAX_NMSE, (long long)res->n_nonfinite);
    }
    kvrt_kv_cache_destroy(cache);
    if (!out)
        free(own);
    return ok;
}
