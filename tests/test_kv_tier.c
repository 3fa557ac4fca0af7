/* The host tier that computes (issue 18, runtime/backend/kv_tier.h): blocks
 * written on the device and moved to a host pool, attention split by tier
 * (the pass's backend over device blocks, the CPU over host blocks) and
 * merged by log-sum-exp, against the double reference and the all-on-device
 * run, on every pass (CPU, Vulkan on lavapipe, OpenCL on PoCL); the _lse
 * entries' log-sum-exp against the reference; moves byte for byte; bad input. */
#include "backend/kv_tier.h"
#include "backend/ops.h"
#include "kvrt_attention.h"
#include "ref_attention.h"
#include "test_passes.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#define N_LAYERS 2
#define N_KV 2
#define N_HEADS 4
#define HD 64
#define BS 16
#define MAXB 48 /* table row: 768 positions */
#define NS 4

/* Lengths and host blocks of the sequences: short, several partitions on
 * every backend (530 > 512), one block, and 88 % of the blocks on the host
 * (CI time: every block is a write per layer, a dispatch on a GPU). */
#define MAX_LEN 530
static const int32_t k_lens[NS] = {37, 150, 17, MAX_LEN};
static const int32_t k_host[NS] = {1, 5, 0, 30};     /* blocks: 3, 10, 2, 34 */
static const int32_t k_new[NS] = {5, 40, 1, 33};     /* prefill: new tokens at the end */

typedef struct seq_data {
    float *k, *v; /* [len][N_KV][HD] by position (F16-exact values) */
} seq_data;

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/* Multiples of 1/1024 in [-1, 1]: exact in F16, so F16 KV stores what the reference reads. */
static float rnd_kv(void)
{
    return (float)((int32_t)(rnd() % 2049) - 1024) / 1024.0f;
}

static float rnd_q(void)
{
    return ((float)(rnd() % 20001) - 10000.0f) / 5000.0f;
}

static void make_data(seq_data *sd)
{
    for (int s = 0; s < NS; s++) {
        size_t n = (size_t)k_lens[s] * N_KV * HD;
        sd[s].k = malloc(n * sizeof(float));
        sd[s].v = malloc(n * sizeof(float));
        assert_non_null(sd[s].k);
        assert_non_null(sd[s].v);
        for (size_t i = 0; i < n; i++) {
            sd[s].k[i] = rnd_kv();
            sd[s].v[i] = rnd_kv();
        }
    }
}

static void free_data(seq_data *sd)
{
    for (int s = 0; s < NS; s++) {
        free(sd[s].k);
        free(sd[s].v);
    }
}

/* Writes one block of sequence s (every layer: layer l gets the data plus l,
 * so layers differ) into device block `blk`. */
static void write_block(kvrt_kv_cache *c, const seq_data *sd, int s, int32_t b, int32_t blk)
{
    int32_t p0 = b * BS, n = KVRT_MIN(BS, k_lens[s] - p0);
    int32_t slots[BS];
    float kk[BS * N_KV * HD], vv[BS * N_KV * HD];
    for (int32_t i = 0; i < n; i++)
        slots[i] = blk * BS + i;
    for (int32_t l = 0; l < N_LAYERS; l++) {
        for (size_t i = 0; i < (size_t)n * N_KV * HD; i++) {
            kk[i] = sd[s].k[(size_t)p0 * N_KV * HD + i] + (float)l;
            vv[i] = sd[s].v[(size_t)p0 * N_KV * HD + i] - (float)l;
        }
        assert_int_equal(kvrt_kv_cache_write(c, l, kk, vv, slots, n), KVRT_OK);
    }
}

/* The tiered layout: blocks are written on a small device pool in order; a
 * sequence's first n_host blocks go to the host as soon as they are full and
 * their device block is reused. tables get host slots then device blocks. */
static void build_tiered(kvrt_kv_cache *dev, kvrt_kv_tier *tier, const seq_data *sd, const int32_t *n_host,
                         int32_t *tables)
{
    int32_t next_dev = 0, next_host = 0, spare = -1;
    for (int s = 0; s < NS; s++) {
        int32_t nb = (k_lens[s] + BS - 1) / BS;
        for (int32_t b = 0; b < MAXB; b++)
            tables[s * MAXB + b] = -1;
        for (int32_t b = 0; b < nb; b++) {
            if (b < n_host[s]) {
                if (spare < 0)
                    spare = next_dev++;
                write_block(dev, sd, s, b, spare);
                int32_t pair[1][2] = {{spare, next_host}};
                assert_int_equal(kvrt_kv_tier_to_host(tier, (const int32_t(*)[2])pair, 1), KVRT_OK);
                tables[s * MAXB + b] = next_host++;
            } else {
                write_block(dev, sd, s, b, next_dev);
                tables[s * MAXB + b] = next_dev++;
            }
        }
    }
}

/* Every block on the device, in order. */
static void build_flat(kvrt_kv_cache *dev, const seq_data *sd, int32_t *tables)
{
    int32_t next = 0;
    for (int s = 0; s < NS; s++) {
        for (int32_t b = 0; b < MAXB; b++)
            tables[s * MAXB + b] = -1;
        for (int32_t b = 0; b < (k_lens[s] + BS - 1) / BS; b++) {
            write_block(dev, sd, s, b, next);
            tables[s * MAXB + b] = next++;
        }
    }
}

/* The double reference of layer 1 for the last n_new[s] tokens of each sequence. */
static void reference(const seq_data *sd, const float *q, const int32_t *n_new, double *out)
{
    ref_attn_shape sh = {N_HEADS, N_KV, HD, 0, 0, 1.0 / sqrt((double)HD)};
    size_t row = (size_t)N_HEADS * HD, r = 0;
    for (int s = 0; s < NS; s++) {
        size_t n = (size_t)k_lens[s] * N_KV * HD;
        float *k = malloc(n * sizeof(float)), *v = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) {
            k[i] = sd[s].k[i] + 1.0f;
            v[i] = sd[s].v[i] - 1.0f;
        }
        ref_attention_chunk(&sh, q + r * row, k_lens[s], n_new[s], k, v, out + r * row);
        r += (size_t)n_new[s];
        free(k);
        free(v);
    }
}

static void check_close(const char *what, const float *got, const double *want, size_t n)
{
    double max_abs = 0, err = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        max_abs = d > max_abs ? d : max_abs;
        err += d * d;
        ref += want[i] * want[i];
    }
    double nmse = ref > 0 ? err / ref : err;
    print_message("  %-34s max abs %.2e  NMSE %.2e\n", what, max_abs, nmse);
    assert_true(max_abs <= 1e-4);
    assert_true(nmse <= 1e-6);
}

static kvrt_kv_cache *make_cache(kvrt_context *ctx, kvrt_dtype dt, int32_t num_blocks)
{
    kvrt_kv_cache_params p = {N_LAYERS, N_KV, HD, BS, num_blocks, .dtype = dt};
    kvrt_kv_cache *c = NULL;
    kvrt_error err;
    kvrt_status s = kvrt_kv_cache_create(ctx, &p, &c, &err);
    if (s != KVRT_OK)
        print_error("kv cache: %s\n", err.message);
    assert_int_equal(s, KVRT_OK);
    return c;
}

static kvrt_kv_tier *make_tier(kvrt_kv_cache *c, int32_t host_blocks)
{
    kvrt_kv_tier_params tp = {host_blocks, 1, 0};
    kvrt_kv_tier *t = NULL;
    kvrt_error err;
    kvrt_status s = kvrt_kv_tier_create(c, &tp, &t, &err);
    if (s != KVRT_OK)
        print_error("host tier: %s\n", err.message);
    assert_int_equal(s, KVRT_OK);
    return t;
}

/* Decode and prefill, split by tier on a small device pool, against the
 * reference and the all-on-device run of the same pass. */
static void run_split(kvrt_context *ctx, const char *name, kvrt_dtype dt, bool prefill)
{
    seq_data sd[NS];
    make_data(sd);
    int32_t n_new[NS], qsl[NS + 1] = {0}, total_blocks = 0, host_blocks = 0;
    for (int s = 0; s < NS; s++) {
        n_new[s] = prefill ? k_new[s] : 1;
        qsl[s + 1] = qsl[s] + n_new[s];
        total_blocks += (k_lens[s] + BS - 1) / BS;
        host_blocks += k_host[s];
    }
    int32_t rows = qsl[NS];
    size_t row = (size_t)N_HEADS * HD;
    float *q = malloc((size_t)rows * row * sizeof(float));
    float *out = calloc((size_t)rows * row, sizeof(float)), *flat = calloc((size_t)rows * row, sizeof(float));
    double *want = malloc((size_t)rows * row * sizeof(double));
    for (size_t i = 0; i < (size_t)rows * row; i++)
        q[i] = rnd_q();
    reference(sd, q, n_new, want);

    /* deliberately small: the device blocks of the split, plus the one every host block passed through */
    kvrt_kv_cache *small = make_cache(ctx, dt, total_blocks - host_blocks + 1);
    kvrt_kv_tier *tier = make_tier(small, host_blocks);
    int32_t tables[NS * MAXB], flat_tables[NS * MAXB];
    build_tiered(small, tier, sd, k_host, tables);
    kvrt_attn_desc d = {.num_seqs = NS, .n_heads = N_HEADS, .max_blocks_per_seq = MAXB,
                        .scale = (float)(1.0 / sqrt((double)HD))};
    kvrt_status s = prefill ? kvrt_kv_tier_attn_prefill(tier, 1, &d, qsl, q, k_lens, tables, k_host, out)
                            : kvrt_kv_tier_attn_decode(tier, 1, &d, q, k_lens, tables, k_host, out);
    if (s != KVRT_OK)
        print_error("%s: %s\n", name, kvrt_kv_tier_message(tier));
    assert_int_equal(s, KVRT_OK);

    kvrt_kv_cache *big = make_cache(ctx, dt, total_blocks);
    build_flat(big, sd, flat_tables);
    kvrt_attention_params ap = {N_HEADS, MAXB, 0.0f, 0, 0};
    s = prefill ? kvrt_attention_prefill(big, 1, &ap, NS, qsl, q, k_lens, flat_tables, flat)
                : kvrt_attention_decode(big, 1, &ap, NS, q, k_lens, flat_tables, flat);
    assert_int_equal(s, KVRT_OK);

    char what[96];
    snprintf(what, sizeof(what), "%s %s %s split", name, kvrt_dtype_name(dt), prefill ? "prefill" : "decode");
    check_close(what, out, want, (size_t)rows * row);
    double max_diff = 0;
    for (size_t i = 0; i < (size_t)rows * row; i++)
        max_diff = fmax(max_diff, fabs((double)out[i] - (double)flat[i]));
    print_message("  %-34s max abs vs all-on-device %.2e\n", "", max_diff);
    assert_true(max_diff <= 1e-4);

    kvrt_kv_tier_stats st;
    kvrt_kv_tier_get_stats(tier, &st);
    assert_int_equal(st.blocks_to_host, host_blocks);
    assert_int_equal(st.bytes_to_host, (uint64_t)host_blocks * kvrt_kv_tier_slot_bytes(tier));
    assert_int_equal(st.split_calls, 1);
    assert_true(st.device_attn_s > 0 && st.host_attn_s > 0);

    kvrt_kv_tier_destroy(tier);
    kvrt_kv_cache_destroy(small);
    kvrt_kv_cache_destroy(big);
    free(q);
    free(out);
    free(flat);
    free(want);
    free_data(sd);
}

/* F32 and F16 KV, decode and prefill, on every pass. In CI (time: a case's
 * first run on a GPU pass compiles its pipelines, seconds on lavapipe) the
 * second pass of a backend (cpu/2: cpu/1's bits; vulkan/none: the shaders
 * without device features, whose attention test_attention_cases covers)
 * runs F32 decode alone and the first pass all four; KVRT_TEST_FULL=1 runs
 * all four everywhere. */
static void test_split_every_pass(void **state)
{
    (void)state;
    const char *full = getenv("KVRT_TEST_FULL");
    for (int i = 0; i < kvrt_test_n_passes; i++) {
        kvrt_context *ctx = kvrt_test_pass_list[i].ctx;
        const char *name = kvrt_test_pass_list[i].name;
        bool second = kvrt_test_pass_list[i].same_bits_as >= 0 || strcmp(name, "vulkan/none") == 0;
        run_split(ctx, name, KVRT_DTYPE_F32, false);
        if (second && !(full && strcmp(full, "1") == 0))
            continue;
        run_split(ctx, name, KVRT_DTYPE_F32, true);
        run_split(ctx, name, KVRT_DTYPE_F16, false);
        run_split(ctx, name, KVRT_DTYPE_F16, true);
    }
}

/* The _lse entries' log-sum-exp against ln sum_j exp(scale q.k_j) in double. */
static void test_lse_every_pass(void **state)
{
    (void)state;
    seq_data sd[NS];
    make_data(sd);
    int32_t total = 0;
    for (int s = 0; s < NS; s++)
        total += (k_lens[s] + BS - 1) / BS;
    float q[NS * N_HEADS * HD];
    for (size_t i = 0; i < KVRT_ARRAY_LEN(q); i++)
        q[i] = rnd_q();
    double want[NS * N_HEADS];
    for (int s = 0; s < NS; s++) {
        for (int h = 0; h < N_HEADS; h++) {
            int kvh = h / (N_HEADS / N_KV);
            double m = -INFINITY, sc[MAX_LEN];
            for (int32_t j = 0; j < k_lens[s]; j++) {
                double dot = 0;
                for (int d = 0; d < HD; d++)
                    dot += (double)q[(s * N_HEADS + h) * HD + d] *
                           (double)(sd[s].k[((size_t)j * N_KV + kvh) * HD + d] + 1.0f);
                sc[j] = dot / sqrt((double)HD);
                m = fmax(m, sc[j]);
            }
            double sum = 0;
            for (int32_t j = 0; j < k_lens[s]; j++)
                sum += exp(sc[j] - m);
            want[s * N_HEADS + h] = m + log(sum);
        }
    }
    for (int i = 0; i < kvrt_test_n_passes; i++) {
        kvrt_context *ctx = kvrt_test_pass_list[i].ctx;
        kvrt_kv_cache *c = make_cache(ctx, KVRT_DTYPE_F32, total);
        int32_t tables[NS * MAXB];
        build_flat(c, sd, tables);
        kvrt_kv_tier *tier = make_tier(c, 1);
        /* no host blocks: the split is the device call alone, and its lse is
         * what the merge would read; read it through the front door directly */
        kvrt_backend *be = kvrt_kv_cache_backend(c);
        float out[NS * N_HEADS * HD], lse[NS * N_HEADS];
        kvrt_buffer *bq, *bo, *bl, *bs, *bt;
        assert_int_equal(kvrt_op_buffer_for_host(be, q, sizeof(q), true, &bq), KVRT_OK);
        assert_int_equal(kvrt_op_buffer_for_host(be, out, sizeof(out), false, &bo), KVRT_OK);
        assert_int_equal(kvrt_op_buffer_for_host(be, lse, sizeof(lse), false, &bl), KVRT_OK);
        assert_int_equal(kvrt_op_buffer_for_host(be, (void *)k_lens, sizeof(k_lens), true, &bs), KVRT_OK);
        assert_int_equal(kvrt_op_buffer_for_host(be, tables, sizeof(tables), true, &bt), KVRT_OK);
        kvrt_attn_desc d = {.num_seqs = NS, .n_heads = N_HEADS, .max_blocks_per_seq = MAXB,
                            .scale = (float)(1.0 / sqrt((double)HD)), .q_stride = N_HEADS * HD,
                            .o_stride = N_HEADS * HD, .max_seq_len = MAX_LEN};
        assert_int_equal(kvrt_op_begin(be), KVRT_OK);
        kvrt_status s = kvrt_op_attn_decode_lse(be, kvrt_kv_cache_pool(c), 1, &d, (kvrt_view){bq, 0},
                                                (kvrt_view){bo, 0}, (kvrt_view){bl, 0}, (kvrt_view){bs, 0},
                                                (kvrt_view){bt, 0});
        assert_int_equal(kvrt_op_end_step(be, s), KVRT_OK);
        if (!kvrt_op_wraps_host(be))
            assert_int_equal(kvrt_op_buffer_download(be, bl, 0, lse, sizeof(lse)), KVRT_OK);
        double worst = 0;
        for (int r = 0; r < NS * N_HEADS; r++)
            worst = fmax(worst, fabs((double)lse[r] - want[r]));
        print_message("  %-10s decode lse max abs %.2e\n", kvrt_test_pass_list[i].name, worst);
        assert_true(worst <= 1e-4);
        /* lse overlapping out is refused by the front door */
        assert_int_equal(kvrt_op_attn_decode_lse(be, kvrt_kv_cache_pool(c), 1, &d, (kvrt_view){bq, 0},
                                                 (kvrt_view){bo, 0}, (kvrt_view){bo, 64}, (kvrt_view){bs, 0},
                                                 (kvrt_view){bt, 0}),
                         KVRT_ERR_INVALID_ARGUMENT);
        kvrt_op_buffer_destroy(be, bq);
        kvrt_op_buffer_destroy(be, bo);
        kvrt_op_buffer_destroy(be, bl);
        kvrt_op_buffer_destroy(be, bs);
        kvrt_op_buffer_destroy(be, bt);
        kvrt_kv_tier_destroy(tier);
        kvrt_kv_cache_destroy(c);
    }
    free_data(sd);
}

/* A block moved to the host and back is the same bytes, on every pass, for
 * one KV type and for K/V pairs whose V blocks are larger than K's (the
 * stage holds the larger) and smaller. */
static void test_moves_round_trip(void **state)
{
    (void)state;
    static const kvrt_dtype TYPES[][2] = {{KVRT_DTYPE_F16, KVRT_DTYPE_F16},
                                          {KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_F32},
                                          {KVRT_DTYPE_F32, KVRT_DTYPE_Q4_0}};
    seq_data sd[NS];
    make_data(sd);
    for (int i = 0; i < kvrt_test_n_passes; i++) {
        for (size_t ti = 0; ti < sizeof(TYPES) / sizeof(TYPES[0]); ti++) {
            kvrt_kv_cache_params p = {N_LAYERS, N_KV, HD, BS, 4, .dtype = TYPES[ti][0],
                                      .v_dtype_set = TYPES[ti][0] != TYPES[ti][1], .v_dtype = TYPES[ti][1]};
            kvrt_kv_cache *c = NULL;
            assert_int_equal(kvrt_kv_cache_create(kvrt_test_pass_list[i].ctx, &p, &c, NULL), KVRT_OK);
            kvrt_kv_tier *tier = make_tier(c, 3);
            write_block(c, sd, 1, 2, 0);
            size_t bbw[2] = {kvrt_kv_cache_pool_block_bytes(c, 0), kvrt_kv_cache_pool_block_bytes(c, 1)};
            size_t bb = KVRT_MAX(bbw[0], bbw[1]);
            uint8_t *a = malloc(bb), *b = malloc(bb);
            int32_t out_pair[1][2] = {{0, 2}}, back[1][2] = {{2, 3}};
            assert_int_equal(kvrt_kv_tier_to_host(tier, (const int32_t(*)[2])out_pair, 1), KVRT_OK);
            assert_int_equal(kvrt_kv_tier_to_device(tier, (const int32_t(*)[2])back, 1), KVRT_OK);
            for (int32_t l = 0; l < N_LAYERS; l++) {
                for (int w = 0; w < 2; w++) {
                    assert_int_equal(kvrt_kv_cache_read_block(c, l, w, 0, a, bbw[w]), KVRT_OK);
                    assert_int_equal(kvrt_kv_cache_read_block(c, l, w, 3, b, bbw[w]), KVRT_OK);
                    assert_memory_equal(a, b, bbw[w]);
                }
            }
            kvrt_kv_tier_stats st;
            kvrt_kv_tier_get_stats(tier, &st);
            assert_int_equal(st.blocks_to_host, 1);
            assert_int_equal(st.blocks_to_device, 1);
            assert_int_equal(st.bytes_to_device, N_LAYERS * (bbw[0] + bbw[1]));
            assert_int_equal(kvrt_kv_tier_slot_bytes(tier), N_LAYERS * (bbw[0] + bbw[1]));
            /* a host slot outside the pool is refused, naming the block */
            int32_t bad[1][2] = {{0, 3}};
            assert_int_equal(kvrt_kv_tier_to_host(tier, (const int32_t(*)[2])bad, 1), KVRT_ERR_INVALID_ARGUMENT);
            if (ti == 0)
                print_message("  %-10s bad slot: %s\n", kvrt_test_pass_list[i].name, kvrt_kv_tier_message(tier));
            free(a);
            free(b);
            kvrt_kv_tier_destroy(tier);
            kvrt_kv_cache_destroy(c);
        }
    }
    free_data(sd);
}

/* Bad input: a host pool larger than host memory is refused up front with
 * the numbers; host blocks that reach the new tokens, a window or sinks
 * with host blocks, a host slot outside the pool. */
static void test_bad_input(void **state)
{
    (void)state;
    kvrt_context *ctx = kvrt_test_pass_list[0].ctx;
    kvrt_kv_cache *c = make_cache(ctx, KVRT_DTYPE_F32, 8);
    kvrt_kv_tier *t = NULL;
    kvrt_error err;
    kvrt_kv_tier_params tp = {INT32_MAX, 1, 0}; /* 2^31 slots of 32 KiB: 64 TiB */
    assert_int_equal(kvrt_kv_tier_create(c, &tp, &t, &err), KVRT_ERR_OUT_OF_HOST_MEMORY);
    assert_null(t);
    print_message("  %s\n", err.message);
    assert_non_null(strstr(err.message, "70368744144896 bytes")); /* 2^31 - 1 slots of 32768 bytes */
    assert_non_null(strstr(err.message, "host memory"));
    kvrt_kv_tier_params small = {4, 1, 4 * 32768 - 1}; /* one byte short */
    assert_int_equal(kvrt_kv_tier_create(c, &small, &t, &err), KVRT_ERR_OUT_OF_HOST_MEMORY);
    assert_non_null(strstr(err.message, "131072 bytes"));
    small.host_memory = 4 * 32768;
    assert_int_equal(kvrt_kv_tier_create(c, &small, &t, &err), KVRT_OK);
    kvrt_kv_tier_params none = {0, 1, 0};
    kvrt_kv_tier *t2 = NULL;
    assert_int_equal(kvrt_kv_tier_create(c, &none, &t2, &err), KVRT_ERR_INVALID_ARGUMENT);

    int32_t lens[1] = {40}, n_host[1] = {3}, table[MAXB];
    for (int i = 0; i < MAXB; i++)
        table[i] = -1;
    table[0] = 0, table[1] = 1, table[2] = 2;
    float q[N_HEADS * HD] = {0}, out[N_HEADS * HD];
    kvrt_attn_desc d = {.num_seqs = 1, .n_heads = N_HEADS, .max_blocks_per_seq = MAXB, .scale = 0.125f};
    /* 3 host blocks = 48 positions, but the query sits at 39 */
    assert_int_equal(kvrt_kv_tier_attn_decode(t, 0, &d, q, lens, table, n_host, out), KVRT_ERR_INVALID_ARGUMENT);
    print_message("  %s\n", kvrt_kv_tier_message(t));
    n_host[0] = 2;
    d.window = 8;
    assert_int_equal(kvrt_kv_tier_attn_decode(t, 0, &d, q, lens, table, n_host, out), KVRT_ERR_UNSUPPORTED);
    d.window = 0;
    d.sinks = 4;
    assert_int_equal(kvrt_kv_tier_attn_decode(t, 0, &d, q, lens, table, n_host, out), KVRT_ERR_UNSUPPORTED);
    d.sinks = 0;
    table[1] = 4; /* host slot 4 of 4 */
    assert_int_equal(kvrt_kv_tier_attn_decode(t, 0, &d, q, lens, table, n_host, out), KVRT_ERR_INVALID_ARGUMENT);
    table[1] = 1;
    assert_int_equal(kvrt_kv_tier_attn_decode(t, 0, &d, q, lens, table, n_host, out), KVRT_OK);
    kvrt_kv_tier_destroy(t);
    kvrt_kv_cache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_moves_round_trip),
        cmocka_unit_test(test_lse_every_pass),
        cmocka_unit_test(test_split_every_pass),
    };
    return cmocka_run_group_tests(tests, kvrt_test_passes_setup, kvrt_test_passes_teardown);
}
