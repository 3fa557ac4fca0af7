/* The attention API (include/kvrt_attention.h) after a failure, with tables
 * sized for long contexts, against its limits and budgets, with F16 K/V
 * input, and with large legal shapes, on every pass of test_passes.c (CPU at
 * 1 and 2 threads, Vulkan with all features and none, OpenCL):
 *  - a failure injected at every front-door call after begin() (the
 *    backend's test hook) leaves the context usable: the next call on the
 *    same cache gives the same bits as before the failure;
 *  - 32 sequences of 100 tokens with tables sized for a 128k context give
 *    the same bits as narrow tables, with small attention scratch;
 *  - the limits query, the default memory budget (the heap minus what is in
 *    use), up-front refusal of a 16 TiB cache naming the budget, and an
 *    explicit budget;
 *  - F16 K/V written by slot mapping: stored bytes exactly as given;
 *  - large shapes (head_dim above 1024, a prefill or a table past a limit):
 *    correct or refused with a message naming the limit, and the context
 *    usable afterwards. KVRT_TEST_FULL=1 adds the full-size prefill
 *    (2,049 tokens x 128 heads x 128 dims). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cases.h"
#include "backend/backend.h"
#include "common/fp16.h"
#include "test_drivers.h"
#include "test_passes.h"
#if defined(KVRT_HAVE_VULKAN_BACKEND)
#include "backend/vulkan/vk_backend.h"
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
#include "backend/opencl/cl_internal.h"
#endif
#include "test_models.h"

static bool full_run(void)
{
    const char *f = getenv("KVRT_TEST_FULL");
    return f && f[0] == '1';
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float rng_float(uint64_t *s)
{
    return (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static kvrt_backend *backend_of(kvrt_context *ctx)
{
    return ctx->be;
}

/* ---- a small fixture: one layer, two sequences (40 and 25 tokens) -------------------- */

enum { FX_KV = 2, FX_HEADS = 4, FX_HD = 32, FX_BS = 16, FX_BLOCKS = 16, FX_SEQS = 2, FX_MAXB = 4, FX_NEW = 5 };

typedef struct fixture {
    kvrt_kv_cache *cache;
    int32_t lens[FX_SEQS];
    int32_t tables[FX_SEQS][FX_MAXB];
    int32_t n_tok;
    float *k, *v;      /* [n_tok][FX_KV][FX_HD] */
    int32_t *slots;    /* [n_tok] */
    float qd[FX_SEQS * FX_HEADS * FX_HD];
    float qp[FX_SEQS * FX_NEW * FX_HEADS * FX_HD];
    int32_t qsl[FX_SEQS + 1];
} fixture;

static void fx_open(kvrt_context *ctx, fixture *f)
{
    memset(f, 0, sizeof(*f));
    kvrt_kv_cache_params p = {1, FX_KV, FX_HD, FX_BS, FX_BLOCKS, .dtype = KVRT_DTYPE_F16};
    kvrt_error err;
    if (kvrt_kv_cache_create(ctx, &p, &f->cache, &err) != KVRT_OK)
        fail_msg("fixture cache: %s", err.message);
    f->lens[0] = 40;
    f->lens[1] = 25;
    int32_t next_block = 0;
    f->n_tok = f->lens[0] + f->lens[1];
    f->k = malloc((size_t)f->n_tok * FX_KV * FX_HD * sizeof(float));
    f->v = malloc((size_t)f->n_tok * FX_KV * FX_HD * sizeof(float));
    f->slots = malloc((size_t)f->n_tok * sizeof(int32_t));
    assert_non_null(f->k);
    assert_non_null(f->v);
    assert_non_null(f->slots);
    uint64_t rng = 0x5107;
    int32_t t = 0;
    for (int s = 0; s < FX_SEQS; s++) {
        for (int b = 0; b < FX_MAXB; b++)
            f->tables[s][b] = b * FX_BS < f->lens[s] ? next_block++ : -1;
        for (int32_t j = 0; j < f->lens[s]; j++, t++)
            f->slots[t] = f->tables[s][j / FX_BS] * FX_BS + j % FX_BS;
    }
    for (size_t i = 0; i < (size_t)f->n_tok * FX_KV * FX_HD; i++) {
        f->k[i] = rng_float(&rng);
        f->v[i] = rng_float(&rng);
    }
    for (size_t i = 0; i < KVRT_ARRAY_LEN(f->qd); i++)
        f->qd[i] = rng_float(&rng);
    for (size_t i = 0; i < KVRT_ARRAY_LEN(f->qp); i++)
        f->qp[i] = rng_float(&rng);
    for (int s = 0; s <= FX_SEQS; s++)
        f->qsl[s] = s * FX_NEW;
    assert_int_equal(kvrt_kv_cache_write(f->cache, 0, f->k, f->v, f->slots, f->n_tok), KVRT_OK);
}

static void fx_close(fixture *f)
{
    kvrt_kv_cache_destroy(f->cache);
    free(f->k);
    free(f->v);
    free(f->slots);
}

static const kvrt_attention_params FX_PARAMS = {.n_heads = FX_HEADS, .max_blocks_per_seq = FX_MAXB};

static kvrt_status fx_decode(fixture *f, float *out)
{
    return kvrt_attention_decode(f->cache, 0, &FX_PARAMS, FX_SEQS, f->qd, f->lens, &f->tables[0][0], out);
}

static kvrt_status fx_prefill(fixture *f, float *out)
{
    return kvrt_attention_prefill(f->cache, 0, &FX_PARAMS, FX_SEQS, f->qsl, f->qp, f->lens, &f->tables[0][0], out);
}

/* Writes the same K/V again: the cache's contents do not change, whether
 * or not a failed write got to store some of them. */
static kvrt_status fx_write(fixture *f, float *out)
{
    (void)out;
    return kvrt_kv_cache_write(f->cache, 0, f->k, f->v, f->slots, f->n_tok);
}

/* Copies a used block onto a spare one (every layer, K and V). */
static kvrt_status fx_copy(fixture *f, float *out)
{
    (void)out;
    const int32_t pairs[1][2] = {{1, FX_BLOCKS - 1}};
    return kvrt_kv_cache_copy_blocks(f->cache, pairs, 1);
}

/* The good calls after a failure give the bits they gave before it. */
static void fx_expect_same(fixture *f, const float *dec0, const float *pre0, const char *pass, const char *what)
{
    float dec[KVRT_ARRAY_LEN(f->qd)], pre[KVRT_ARRAY_LEN(f->qp)];
    if (fx_decode(f, dec) != KVRT_OK || fx_prefill(f, pre) != KVRT_OK)
        fail_msg("%s: after a failure in %s the context is unusable: %s", pass, what, kvrt_kv_cache_message(f->cache));
    assert_memory_equal(dec, dec0, sizeof(dec));
    assert_memory_equal(pre, pre0, sizeof(pre));
}

/* ---- 1. failure never poisons a context --------------------------------------------------- */

static void test_failure_at_every_point_after_begin(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        kvrt_status (*call)(fixture *f, float *out);
    } calls[] = {{"kv write", fx_write}, {"decode", fx_decode}, {"prefill", fx_prefill}, {"copy blocks", fx_copy}};
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        const kvrt_test_pass *pass = &kvrt_test_pass_list[p];
        kvrt_backend *be = backend_of(pass->ctx);
        fixture f;
        fx_open(pass->ctx, &f);
        float dec0[KVRT_ARRAY_LEN(f.qd)], pre0[KVRT_ARRAY_LEN(f.qp)], scratch[KVRT_ARRAY_LEN(f.qp)];
        assert_int_equal(fx_decode(&f, dec0), KVRT_OK);
        assert_int_equal(fx_prefill(&f, pre0), KVRT_OK);
        for (size_t c = 0; c < KVRT_ARRAY_LEN(calls); c++) {
            int64_t points = -1;
            for (int64_t n = 1; n <= 32 && points < 0; n++) {
                be->fail_at = n;
                kvrt_status s = calls[c].call(&f, scratch);
                if (s == KVRT_OK) { /* the call has fewer than n points: the hook never fired */
                    assert_int_equal(be->fail_at, n);
                    be->fail_at = 0;
                    points = n - 1;
                    break;
                }
                assert_int_equal(s, KVRT_ERR_INTERNAL);
                assert_non_null(strstr(kvrt_kv_cache_message(f.cache), "failure injected"));
                assert_false(be->step_open);
                fx_expect_same(&f, dec0, pre0, pass->name, calls[c].name);
            }
            /* at least the op and the submit follow begin() */
            if (points < 2)
                fail_msg("%s: %s: %lld failure points after begin", pass->name, calls[c].name, (long long)points);
            print_message("%s: %s: %lld failure points after begin, each survived\n", pass->name, calls[c].name,
                          (long long)points);
        }
        fx_close(&f);
    }
}

/* A failure in a forward pass (every call of the first step, a prompt, and
 * of the second, a decode) is reported by kvrt_engine_step, and the request
 * then finishes with the tokens of a run without failures (the engine's
 * retry promise). One engine per pass, without the prefix cache, so every
 * request runs the same steps. */
enum { ENG_GEN = 2 };

static void engine_run(kvrt_backend *be, kvrt_engine *e, const int32_t *prompt, int32_t n_prompt, int64_t arm_step,
                       int64_t fail_at, int32_t out[ENG_GEN], bool *fired)
{
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt = prompt;
    rp.n_prompt = n_prompt;
    rp.max_tokens = ENG_GEN;
    rp.ignore_eos = 1;
    int64_t id;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    *fired = false;
    for (int64_t step = 0; kvrt_engine_has_work(e); step++) {
        if (step == arm_step)
            be->fail_at = fail_at;
        kvrt_status s = kvrt_engine_step(e, NULL);
        if (s != KVRT_OK) {
            if (s != KVRT_ERR_INTERNAL || !strstr(kvrt_engine_message(e), "failure injected"))
                fail_msg("step %lld, call %lld: %s", (long long)step, (long long)fail_at, kvrt_engine_message(e));
            assert_false(be->step_open);
            *fired = true;
        }
        assert_true(step < 16);
    }
    be->fail_at = 0;
    kvrt_request_output o;
    assert_int_equal(kvrt_engine_get_output(e, id, &o), KVRT_OK);
    assert_int_equal(o.samples[0].n_tokens, ENG_GEN);
    memcpy(out, o.samples[0].tokens, ENG_GEN * sizeof(int32_t));
    assert_int_equal(kvrt_engine_release(e, id), KVRT_OK);
}

static void test_engine_step_survives_failures(void **state)
{
    (void)state;
    char path[1024];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        const kvrt_test_pass *pass = &kvrt_test_pass_list[p];
        kvrt_backend *be = pass->ctx->be;
        kvrt_model_params mp = kvrt_model_default_params();
        mp.path = path;
        mp.max_context = 64;
        kvrt_model *m = NULL;
        kvrt_error err;
        if (kvrt_model_load(pass->ctx, &mp, &m, &err) != KVRT_OK)
            fail_msg("%s: %s", pass->name, err.message);
        kvrt_engine_params ep = kvrt_engine_default_params();
        ep.num_blocks = 16;
        ep.block_size = 16;
        ep.max_context = 64;
        ep.enable_prefix_cache = 0;
        kvrt_engine *e = NULL;
        if (kvrt_engine_create(m, &ep, &e, &err) != KVRT_OK)
            fail_msg("%s: engine: %s", pass->name, err.message);
        int32_t prompt[32], n_prompt = 0;
        assert_int_equal(kvrt_tokenize(m, "Once upon a time", 16, 1, prompt, 32, &n_prompt), KVRT_OK);
        int32_t ref[ENG_GEN], got[ENG_GEN];
        bool fired;
        engine_run(be, e, prompt, n_prompt, -1, 0, ref, &fired);
        /* the prompt step: every point on the first pass of each backend,
         * every 5th on its feature variants; the decode step (the same calls
         * but its attention): every point on the CPU, every 3rd (which meets
         * every kind of call over the layers) on the GPUs (CI time) */
        bool variant = pass->same_bits_as >= 0 || strcmp(pass->name, "vulkan/none") == 0;
        bool gpu = be->kind != KVRT_BACKEND_CPU;
        for (int64_t step = 0; step < 2; step++) {
            int64_t n = 1, stride = variant ? 5 : step == 1 && gpu ? 3 : 1;
            for (;; n += stride) {
                engine_run(be, e, prompt, n_prompt, step, n, got, &fired);
                assert_memory_equal(got, ref, sizeof(ref));
                if (!fired)
                    break;
                assert_true(n < 4096);
            }
            print_message("%s: engine step %lld: failures injected up to call %lld after begin, each retried to "
                          "the same tokens\n", pass->name, (long long)step, (long long)n);
            assert_true(n > 10); /* a forward of five layers records dozens of calls */
        }
        kvrt_engine_destroy(e);
        kvrt_model_destroy(m);
    }
}

/* ---- 2. scratch follows seq_lens --------------------------------------------------------- */

enum { SC_SEQS = 32, SC_LEN = 100, SC_KV = 2, SC_HEADS = 4, SC_HD = 64, SC_BS = 16, SC_NEW = 4 };
#define SC_WIDE (131072 / SC_BS) /* a 128k context per row */
#define SC_NARROW ((SC_LEN + SC_BS - 1) / SC_BS)

static void test_scratch_follows_seq_lens(void **state)
{
    (void)state;
    const size_t row = (size_t)SC_KV * SC_HD, qrow = (size_t)SC_HEADS * SC_HD;
    int32_t *wide = malloc((size_t)SC_SEQS * SC_WIDE * sizeof(int32_t));
    int32_t narrow[SC_SEQS * SC_NARROW], lens[SC_SEQS], qsl[SC_SEQS + 1], *slots = malloc(SC_SEQS * SC_LEN * 4);
    float *k = malloc(SC_SEQS * SC_LEN * row * 4), *v = malloc(SC_SEQS * SC_LEN * row * 4);
    float *qd = malloc(SC_SEQS * qrow * 4), *qp = malloc(SC_SEQS * SC_NEW * qrow * 4);
    float *o1 = malloc(SC_SEQS * SC_NEW * qrow * 4), *o2 = malloc(SC_SEQS * SC_NEW * qrow * 4);
    assert_true(wide && slots && k && v && qd && qp && o1 && o2);
    uint64_t rng = 0x5c7a;
    for (int s = 0; s < SC_SEQS; s++) {
        lens[s] = SC_LEN;
        qsl[s] = s * SC_NEW;
        for (int b = 0; b < SC_WIDE; b++) /* past the length: garbage, which must never be read */
            wide[(size_t)s * SC_WIDE + b] = b < SC_NARROW ? s * SC_NARROW + b : INT32_MAX - b;
        for (int b = 0; b < SC_NARROW; b++)
            narrow[s * SC_NARROW + b] = s * SC_NARROW + b;
        for (int j = 0; j < SC_LEN; j++)
            slots[s * SC_LEN + j] = (s * SC_NARROW + j / SC_BS) * SC_BS + j % SC_BS;
    }
    qsl[SC_SEQS] = SC_SEQS * SC_NEW;
    for (size_t i = 0; i < SC_SEQS * SC_LEN * row; i++) {
        k[i] = rng_float(&rng);
        v[i] = rng_float(&rng);
    }
    for (size_t i = 0; i < SC_SEQS * qrow; i++)
        qd[i] = rng_float(&rng);
    for (size_t i = 0; i < SC_SEQS * SC_NEW * qrow; i++)
        qp[i] = rng_float(&rng);
    kvrt_attention_params pw = {.n_heads = SC_HEADS, .max_blocks_per_seq = SC_WIDE};
    kvrt_attention_params pn = {.n_heads = SC_HEADS, .max_blocks_per_seq = SC_NARROW};
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        /* a context of its own: GPU scratch grows and is kept, so earlier tests must not have grown it */
        kvrt_context *ctx = kvrt_test_pass_open(p);
        assert_non_null(ctx);
        const char *name = kvrt_test_pass_list[p].name;
        kvrt_kv_cache_params cp = {1, SC_KV, SC_HD, SC_BS, SC_SEQS * SC_NARROW, .dtype = KVRT_DTYPE_F16};
        kvrt_kv_cache *c = NULL;
        assert_int_equal(kvrt_kv_cache_create(ctx, &cp, &c, NULL), KVRT_OK);
        assert_int_equal(kvrt_kv_cache_write(c, 0, k, v, slots, SC_SEQS * SC_LEN), KVRT_OK);
        kvrt_status s = kvrt_attention_decode(c, 0, &pw, SC_SEQS, qd, lens, wide, o1);
        if (s != KVRT_OK)
            fail_msg("%s: decode with 128k tables: %s", name, kvrt_kv_cache_message(c));
        assert_int_equal(kvrt_attention_decode(c, 0, &pn, SC_SEQS, qd, lens, narrow, o2), KVRT_OK);
        assert_memory_equal(o1, o2, SC_SEQS * qrow * 4);
        s = kvrt_attention_prefill(c, 0, &pw, SC_SEQS, qsl, qp, lens, wide, o1);
        if (s != KVRT_OK)
            fail_msg("%s: prefill with 128k tables: %s", name, kvrt_kv_cache_message(c));
        assert_int_equal(kvrt_attention_prefill(c, 0, &pn, SC_SEQS, qsl, qp, lens, narrow, o2), KVRT_OK);
        assert_memory_equal(o1, o2, SC_SEQS * SC_NEW * qrow * 4);
        kvrt_context_limits l;
        assert_int_equal(kvrt_context_get_limits(ctx, &l), KVRT_OK);
        /* partitions by the 100-token lengths: tens of KiB (a 128k table would take 8.6 MB for the decode,
         * 69 MB for the prefill) */
        print_message("%s: attention scratch %llu bytes\n", name, (unsigned long long)l.scratch_bytes);
        assert_true(l.scratch_bytes <= (1u << 20));
        kvrt_kv_cache_destroy(c);
        kvrt_context_destroy(ctx);
    }
    free(wide);
    free(slots);
    free(k);
    free(v);
    free(qd);
    free(qp);
    free(o1);
    free(o2);
}

/* ---- 3. limits and budgets ---------------------------------------------------------------- */

static bool names_budget(const char *msg, uint64_t bytes)
{
    char num[32];
    snprintf(num, sizeof(num), "%llu", (unsigned long long)bytes);
    return strstr(msg, "memory budget") && strstr(msg, num) && strstr(msg, "in use");
}

static void test_limits_and_default_budget(void **state)
{
    (void)state;
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        const kvrt_test_pass *pass = &kvrt_test_pass_list[p];
        kvrt_context_limits l0, l1;
        assert_int_equal(kvrt_context_get_limits(pass->ctx, &l0), KVRT_OK);
        assert_int_equal(kvrt_context_get_limits(NULL, &l0), KVRT_ERR_INVALID_ARGUMENT);
        assert_int_equal(kvrt_context_get_limits(pass->ctx, NULL), KVRT_ERR_INVALID_ARGUMENT);
        print_message("%s: heap %llu, budget %llu, in use %llu, buffer %llu, head_dim decode %d prefill %d, "
                      "table %lld, scratch %llu\n", pass->name, (unsigned long long)l0.memory_heap,
                      (unsigned long long)l0.memory_budget, (unsigned long long)l0.memory_in_use,
                      (unsigned long long)l0.max_buffer_bytes, (int)l0.decode_head_dim_max,
                      (int)l0.prefill_head_dim_max, (long long)l0.max_table_entries,
                      (unsigned long long)l0.max_scratch_bytes);
        /* the default budget: the heap, less what was in use */
        assert_true(l0.memory_heap > 0);
        assert_true(l0.memory_budget > 0 && l0.memory_budget <= l0.memory_heap);
        assert_true(l0.decode_head_dim_max >= 256 && l0.prefill_head_dim_max >= 256);
        /* sequences: Vulkan's merge passes walk the partitions in loops that lavapipe
         * caps (issue 19): ~341,000 keys there at every head_dim */
        assert_true(l0.max_table_entries >= (1 << 20) && l0.max_seq_len >= (1 << 18));
        assert_true(l0.max_scratch_bytes >= (1u << 20) && l0.max_buffer_bytes >= (1u << 20));

        /* 16 TiB of KV: refused before anything is allocated, with the numbers */
        kvrt_kv_cache_params big = {32, 8, 128, 16, 1 << 22, .dtype = KVRT_DTYPE_F32};
        const uint64_t big_bytes = 1ull << 44;
        kvrt_kv_cache *c = NULL;
        kvrt_error err;
        kvrt_status s = kvrt_kv_cache_create(pass->ctx, &big, &c, &err);
        assert_int_equal(s, pass->ctx->be->kind == KVRT_BACKEND_CPU ? KVRT_ERR_OUT_OF_HOST_MEMORY
                                                                     : KVRT_ERR_OUT_OF_DEVICE_MEMORY);
        assert_null(c);
        if (!names_budget(err.message, big_bytes))
            fail_msg("%s: %s", pass->name, err.message);
        assert_int_equal(kvrt_context_get_limits(pass->ctx, &l1), KVRT_OK);
        assert_true(l1.memory_in_use == l0.memory_in_use);

        /* what a cache takes is counted, and given back */
        kvrt_kv_cache_params small = {2, 2, 64, 16, 64, .dtype = KVRT_DTYPE_F32};
        assert_int_equal(kvrt_kv_cache_create(pass->ctx, &small, &c, NULL), KVRT_OK);
        assert_int_equal(kvrt_context_get_limits(pass->ctx, &l1), KVRT_OK);
        assert_true(l1.memory_in_use >= l0.memory_in_use + 2u * 2u * 64u * 2u * 16u * 64u * 4u);
        kvrt_kv_cache_destroy(c);
        assert_int_equal(kvrt_context_get_limits(pass->ctx, &l1), KVRT_OK);
        assert_true(l1.memory_in_use == l0.memory_in_use);

        /* and the context still works */
        fixture f;
        fx_open(pass->ctx, &f);
        float out[KVRT_ARRAY_LEN(f.qd)];
        assert_int_equal(fx_decode(&f, out), KVRT_OK);
        fx_close(&f);
    }
}

/* A context of `kind` with an explicit budget (Vulkan with the validation layer). */
static kvrt_context *open_with_budget(kvrt_backend_kind kind, uint64_t budget)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = kind;
    p.n_threads = 1;
    p.memory_budget = budget;
    kvrt_context *ctx = NULL;
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    if (kind == KVRT_BACKEND_VULKAN) {
        kvrt_backend *be = kvrt_test_vk_open(0, budget, 0);
        assert_non_null(be);
        assert_int_equal(kvrt_context_adopt(be, &p, &ctx, NULL), KVRT_OK);
        return ctx;
    }
#endif
    assert_int_equal(kvrt_context_create(&p, &ctx, NULL), KVRT_OK);
    return ctx;
}

static void test_explicit_budget(void **state)
{
    (void)state;
    kvrt_backend_kind kinds[3];
    int n = 0;
    kinds[n++] = KVRT_BACKEND_CPU;
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    kinds[n++] = KVRT_BACKEND_VULKAN;
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    kinds[n++] = KVRT_BACKEND_OPENCL;
#endif
    const uint64_t budget = 8u << 20;
    for (int i = 0; i < n; i++) {
        kvrt_context *ctx = open_with_budget(kinds[i], budget);
        kvrt_context_limits l;
        assert_int_equal(kvrt_context_get_limits(ctx, &l), KVRT_OK);
        assert_true(l.memory_budget == budget);
        /* 16 MiB of KV in an 8 MiB budget */
        kvrt_kv_cache_params p = {4, 2, 64, 16, 256, .dtype = KVRT_DTYPE_F32};
        kvrt_kv_cache *c = NULL;
        kvrt_error err;
        assert_int_not_equal(kvrt_kv_cache_create(ctx, &p, &c, &err), KVRT_OK);
        if (!names_budget(err.message, 16u << 20))
            fail_msg("%s: %s", kvrt_backend_name(kinds[i]), err.message);
        p.num_blocks = 32; /* 2 MiB fits */
        assert_int_equal(kvrt_kv_cache_create(ctx, &p, &c, NULL), KVRT_OK);
        fixture f;
        fx_open(ctx, &f);
        float out[KVRT_ARRAY_LEN(f.qd)];
        assert_int_equal(fx_decode(&f, out), KVRT_OK);
        fx_close(&f);
        kvrt_kv_cache_destroy(c);
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        if (kinds[i] == KVRT_BACKEND_VULKAN)
            assert_int_equal(kvrt_vk_validation_messages(ctx->be, NULL, 0), 0);
#endif
        kvrt_context_destroy(ctx);
    }
}

/* ---- 4. K/V written from F16 ---------------------------------------------------------------- */

enum { H_KV = 2, H_HD = 13, H_BS = 8, H_BLOCKS = 4, H_TOK = 21 };

static void test_kv_write_from_f16(void **state)
{
    (void)state;
    const size_t row = (size_t)H_KV * H_HD, n = (size_t)H_TOK * row;
    uint16_t kh[H_TOK * H_KV * H_HD], vh[H_TOK * H_KV * H_HD];
    int32_t slots[H_TOK];
    uint64_t rng = 0xf16;
    static const uint16_t special[] = {0x0000, 0x8000, 0x0001, 0x83ff, 0x7bff, 0xfbff, 0x7c00, 0xfc00, 0x3c00, 0x0400};
    for (size_t i = 0; i < n; i++) {
        uint16_t a = (uint16_t)rng_next(&rng), b = (uint16_t)rng_next(&rng);
        /* finite values everywhere (exponent 31 is inf/NaN), and the edge cases (+-inf too) at the start */
        kh[i] = i < KVRT_ARRAY_LEN(special) ? special[i] : ((a & 0x7c00) == 0x7c00 ? (uint16_t)(a & 0xbfff) : a);
        vh[i] = (b & 0x7c00) == 0x7c00 ? (uint16_t)(b & 0xbfff) : b;
    }
    /* a shuffled slot for each token, one padding row */
    for (int t = 0; t < H_TOK; t++)
        slots[t] = (t * 7 + 3) % (H_BLOCKS * H_BS);
    slots[5] = -1;
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        const kvrt_test_pass *pass = &kvrt_test_pass_list[p];
        for (int f16 = 0; f16 < 2; f16++) {
            kvrt_kv_cache_params cp = {1, H_KV, H_HD, H_BS, H_BLOCKS, .dtype = f16 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32};
            kvrt_kv_cache *c = NULL;
            assert_int_equal(kvrt_kv_cache_create(pass->ctx, &cp, &c, NULL), KVRT_OK);
            assert_int_equal(kvrt_kv_cache_write_typed(c, 0, KVRT_DTYPE_BF16, kh, vh, slots, H_TOK),
                             KVRT_ERR_INVALID_ARGUMENT);
            assert_non_null(strstr(kvrt_kv_cache_message(c), "bf16"));
            assert_int_equal(kvrt_kv_cache_write_typed(c, 0, KVRT_DTYPE_F16, kh, vh, slots, H_TOK), KVRT_OK);
            size_t bb = kvrt_kv_cache_block_bytes(c), elem = f16 ? 2 : 4;
            for (int which = 0; which < 2; which++) {
                const uint16_t *src = which ? vh : kh;
                for (int b = 0; b < H_BLOCKS; b++) {
                    unsigned char got[H_KV * H_BS * H_HD * 4], want[H_KV * H_BS * H_HD * 4];
                    assert_true(bb <= sizeof(got));
                    memset(want, 0, bb); /* blocks start zero-filled */
                    for (int t = 0; t < H_TOK; t++) {
                        if (slots[t] < 0 || slots[t] / H_BS != b)
                            continue;
                        for (int h = 0; h < H_KV; h++)
                            for (int d = 0; d < H_HD; d++) {
                                size_t at = (((size_t)h * H_BS + (size_t)(slots[t] % H_BS)) * H_HD + (size_t)d) * elem;
                                uint16_t x = src[(size_t)t * row + (size_t)h * H_HD + (size_t)d];
                                float fx = kvrt_fp16_to_f32(x);
                                /* an F16 cache saturates whatever the input type: +-inf is
                                 * stored as +-65504 (DESIGN.md, the block layout) */
                                if (f16 && (x & 0x7fff) == 0x7c00)
                                    x = (uint16_t)(x & 0x8000) | 0x7bff;
                                memcpy(want + at, f16 ? (const void *)&x : (const void *)&fx, elem);
                            }
                    }
                    assert_int_equal(kvrt_kv_cache_read_block(c, 0, which, b, got, sizeof(got)), KVRT_OK);
                    if (memcmp(got, want, bb) != 0)
                        fail_msg("%s: %s cache, %s block %d: stored bytes differ from the F16 input", pass->name,
                                 f16 ? "f16" : "f32", which ? "V" : "K", b);
                }
            }
            kvrt_kv_cache_destroy(c);
        }
    }
}

/* ---- 5. large legal shapes: correct, or refused naming a limit; usable after ------------------ */

typedef struct big_case {
    const char *what;
    int32_t head_dim, n_heads, n_kv_heads, len, n_new;
    attn_mode mode;
} big_case;

/* Runs c on ctx: OK within the bounds, or UNSUPPORTED / out of memory with a
 * message naming a limit of kvrt_context_limits; then a good call works. */
static void big_case_run(kvrt_context *ctx, const char *pass, const attn_case_data *d, const char *what)
{
    size_t n = attn_case_out_len(d);
    float *out = malloc(n * sizeof(float));
    assert_non_null(out);
    kvrt_kv_cache *cache = NULL;
    kvrt_error err;
    kvrt_status s = attn_case_upload(ctx, d, 1, &cache, &err);
    const char *msg = err.message;
    if (s == KVRT_OK) {
        bool canaries = true;
        s = attn_case_attend(cache, d, 0, 0, d->c.num_seqs, out, &canaries);
        msg = kvrt_kv_cache_message(cache);
        assert_true(canaries);
    }
    if (s == KVRT_OK) {
        attn_check r = attn_case_check(d, out);
        if (!attn_check_ok(&r))
            fail_msg("%s: %s: OK with wrong numbers: max abs %g, NMSE %g", pass, what, r.max_abs, r.nmse);
        print_message("%s: %s: correct (max abs %.2g, NMSE %.2g)\n", pass, what, r.max_abs, r.nmse);
    } else {
        if ((s != KVRT_ERR_UNSUPPORTED && s != KVRT_ERR_OUT_OF_DEVICE_MEMORY && s != KVRT_ERR_OUT_OF_HOST_MEMORY) ||
            !strstr(msg, "kvrt_context_limits."))
            fail_msg("%s: %s: refused without naming a limit (%s): %s", pass, what, kvrt_status_str(s), msg);
        print_message("%s: %s: refused: %s\n", pass, what, msg);
    }
    kvrt_kv_cache_destroy(cache);
    fixture f;
    fx_open(ctx, &f);
    float dec[KVRT_ARRAY_LEN(f.qd)];
    assert_int_equal(fx_decode(&f, dec), KVRT_OK);
    fx_close(&f);
    free(out);
}

static void big_cases_on(kvrt_context *ctx, const char *pass, const big_case *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        attn_case c;
        attn_case_make(&c, cases[i].head_dim, cases[i].n_heads, cases[i].n_kv_heads, 16, KVRT_DTYPE_F32, 0, 0,
                       cases[i].mode, cases[i].len, 0xb16 + i);
        c.n_new[0] = cases[i].mode == ATTN_DECODE ? 1 : cases[i].n_new;
        c.in_order_blocks = true;
        attn_case_data d;
        assert_true(attn_case_build(&c, &d));
        big_case_run(ctx, pass, &d, cases[i].what);
        attn_case_free(&d);
    }
}

static void test_large_shapes(void **state)
{
    (void)state;
    /* head_dim above Vulkan's 1024; a prefill of the full size behind KVRT_TEST_FULL */
    static const big_case ci[] = {
        {"decode head_dim 1040", 1040, 2, 1, 40, 1, ATTN_DECODE},
        {"prefill head_dim 1040", 1040, 2, 1, 40, 8, ATTN_PREFILL},
        {"decode head_dim 2048", 2048, 1, 1, 20, 1, ATTN_DECODE},
    };
    static const big_case full[] = {
        {"prefill 2049 tokens x 128 heads x 128 dims", 128, 128, 128, 2049, 2049, ATTN_PREFILL},
    };
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        const kvrt_test_pass *pass = &kvrt_test_pass_list[p];
        big_cases_on(pass->ctx, pass->name, ci, KVRT_ARRAY_LEN(ci));
        if (full_run())
            big_cases_on(pass->ctx, pass->name, full, KVRT_ARRAY_LEN(full));
    }
}

/* The same limits at CI size: GPU contexts whose buffers are cut to 1 MiB
 * segments, so a 300-token prefill's scratch and a 40 x 8192 block table
 * pass them, as 2,049 x 128 x 128 does at the devices' own 128 MiB. */
static kvrt_context *open_small_segments(kvrt_backend_kind kind)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = kind;
    kvrt_context *ctx = NULL;
    const size_t seg = 1u << 20;
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    if (kind == KVRT_BACKEND_VULKAN) {
        kvrt_vk_debug_params dbg = {.validation = true, .max_segment_bytes = seg};
        kvrt_backend *be = NULL;
        assert_int_equal(kvrt_vk_backend_create_ex(&p, &dbg, &be, NULL), KVRT_OK);
        assert_int_equal(kvrt_context_adopt(be, &p, &ctx, NULL), KVRT_OK);
        return ctx;
    }
#endif
    assert_int_equal(kvrt_context_create(&p, &ctx, NULL), KVRT_OK);
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    if (kind == KVRT_BACKEND_OPENCL)
        kvrt_cl_test_set_segment_bytes(ctx->be, seg);
#endif
    return ctx;
}

static void test_limits_at_ci_size(void **state)
{
    (void)state;
    static const big_case cases[] = {
        {"prefill 300 tokens x 8 heads x 64 dims", 64, 8, 2, 300, 300, ATTN_PREFILL},
        {"decode 1300 keys x 8 heads", 64, 8, 2, 1300, 1, ATTN_DECODE},
        /* K and V of 1.4 MB: the cache writes them in pieces that fit a buffer */
        {"decode 700 keys x 8 KV heads", 64, 8, 8, 700, 1, ATTN_DECODE},
        {"prefill 600 tokens x 8 heads x 64 dims", 64, 8, 8, 600, 600, ATTN_PREFILL},
    };
    kvrt_backend_kind kinds[3];
    int n = 0;
    kinds[n++] = KVRT_BACKEND_CPU;
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    kinds[n++] = KVRT_BACKEND_VULKAN;
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    kinds[n++] = KVRT_BACKEND_OPENCL;
#endif
    for (int i = 0; i < n; i++) {
        kvrt_context *ctx = open_small_segments(kinds[i]);
        char name[64];
        snprintf(name, sizeof(name), "%s/1MiB-segments", kvrt_backend_name(kinds[i]));
        big_cases_on(ctx, name, cases, KVRT_ARRAY_LEN(cases));
        /* a table wider than one segment holds: refused naming it, or run */
        kvrt_context_limits l;
        assert_int_equal(kvrt_context_get_limits(ctx, &l), KVRT_OK);
        fixture f;
        fx_open(ctx, &f);
        enum { W = 8192, NS = 40 };
        int32_t *tables = malloc((size_t)NS * W * sizeof(int32_t)), lens[NS];
        float *q = calloc((size_t)NS * FX_HEADS * FX_HD, sizeof(float)), *out = malloc((size_t)NS * FX_HEADS * FX_HD * 4);
        assert_true(tables && q && out);
        for (int s = 0; s < NS; s++) {
            lens[s] = f.lens[s % FX_SEQS];
            for (int b = 0; b < W; b++)
                tables[(size_t)s * W + b] = b < FX_MAXB ? f.tables[s % FX_SEQS][b] : -1;
        }
        kvrt_attention_params ap = {.n_heads = FX_HEADS, .max_blocks_per_seq = W};
        kvrt_status s = kvrt_attention_decode(f.cache, 0, &ap, NS, q, lens, tables, out);
        if ((int64_t)NS * W > l.max_table_entries) {
            assert_int_equal(s, KVRT_ERR_UNSUPPORTED);
            assert_non_null(strstr(kvrt_kv_cache_message(f.cache), "kvrt_context_limits.max_table_entries"));
            print_message("%s: %d x %d table: refused: %s\n", name, NS, W, kvrt_kv_cache_message(f.cache));
        } else {
            assert_int_equal(s, KVRT_OK);
        }
        float dec[KVRT_ARRAY_LEN(f.qd)];
        assert_int_equal(fx_decode(&f, dec), KVRT_OK);
        free(tables);
        free(q);
        free(out);
        fx_close(&f);
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        if (kinds[i] == KVRT_BACKEND_VULKAN)
            assert_int_equal(kvrt_vk_validation_messages(ctx->be, NULL, 0), 0);
#endif
        kvrt_context_destroy(ctx);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scratch_follows_seq_lens),
        cmocka_unit_test(test_failure_at_every_point_after_begin),
        cmocka_unit_test(test_engine_step_survives_failures),
        cmocka_unit_test(test_limits_and_default_budget),
        cmocka_unit_test(test_explicit_budget),
        cmocka_unit_test(test_kv_write_from_f16),
        cmocka_unit_test(test_large_shapes),
        cmocka_unit_test(test_limits_at_ci_size),
    };
    return cmocka_run_group_tests(tests, kvrt_test_passes_setup, kvrt_test_passes_teardown);
}
