/* KV pools whose K and V have their own storage types (and the fp8 types)
 * on every backend: CPU, Vulkan (lavapipe, all features and none) and
 * OpenCL (PoCL). For each (K type, V type) pair the same host K/V go
 * through kv_write on each backend; the blocks (K blocks and V blocks, each
 * sized by its own type) must be byte-identical to the CPU's, block copies
 * must move both pools' bytes unchanged, and paged decode and tiled prefill
 * are held to the DESIGN.md kernel bound against the double reference fed
 * the values each type stores. fp8 and fp8_e5m2 also write rows of edge
 * values (ties, subnormals, beyond the largest value, -0, infinities, NaN)
 * that must give exactly the bytes of kv_layout.h's rule. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/kv_layout.h"
#include "backend/ops.h"
#include "common/fp16.h"
#include "ref_attention.h"
#include "ref_kvquant.h"
#include "test_buffers.h"
#include "test_drivers.h"

#if defined(KVRT_HAVE_VULKAN_BACKEND)
#include "backend/vulkan/vk_backend.h"
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
#include "backend/opencl/cl_internal.h"
#endif

enum { NKV = 2, H = 8, D = 64, BS = 16, NB = 12, NSEQ = 2, MAXB = 6 };

static const int32_t LENS[NSEQ] = {70, 33};  /* context lengths */
static const int32_t NEW[NSEQ] = {21, 33};   /* prefill: the last NEW[s] tokens are the chunk */
static const int32_t TABLES[NSEQ][MAXB] = {{7, 2, 9, 0, 11, -1}, {4, 10, 5, -1, -1, -1}};
#define N_TOK (70 + 33)

/* Keys are more sensitive than values: the pairs a user would pick, their
 * mirror images, and each fp8 type alone and beside the others. */
static const kvrt_dtype PAIRS[][2] = {
    {KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q4_0},         {KVRT_DTYPE_Q4_0, KVRT_DTYPE_Q8_0},
    {KVRT_DTYPE_F16, KVRT_DTYPE_Q8_0},          {KVRT_DTYPE_Q8_0, KVRT_DTYPE_F16},
    {KVRT_DTYPE_F32, KVRT_DTYPE_Q4_0},          {KVRT_DTYPE_F16, KVRT_DTYPE_F32},
    {KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E4M3}, {KVRT_DTYPE_FP8_E5M2, KVRT_DTYPE_FP8_E5M2},
    {KVRT_DTYPE_Q8_0, KVRT_DTYPE_FP8_E4M3},     {KVRT_DTYPE_FP8_E5M2, KVRT_DTYPE_F16},
    {KVRT_DTYPE_F32, KVRT_DTYPE_FP8_E5M2},
};

static kvrt_backend *CPU;
static kvrt_context *CPU_CTX;

/* The backend's segment limit for what it allocates next (0: its own), so
 * pools span several segments; NULL on the CPU. */
typedef void (*set_segment_fn)(kvrt_backend *be, size_t bytes);

/* K/V rows of every position of both sequences ([token][NKV][D]), what each
 * type stores of them, and their slots from the tables. */
typedef struct kv_data {
    float k[N_TOK * NKV * D], v[N_TOK * NKV * D];
    float ks[N_TOK * NKV * D], vs[N_TOK * NKV * D];
    int32_t slots[N_TOK];
} kv_data;

static uint64_t rng;
static float rnd(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / 8388608.0 - 1.0); /* [-1, 1) */
}

static void make_data(kvrt_dtype kt, kvrt_dtype vt, kv_data *d)
{
    rng = 0x243f6a8885a308d3ull;
    for (int32_t s = 0, t = 0; s < NSEQ; s++)
        for (int32_t p = 0; p < LENS[s]; p++, t++) {
            d->slots[t] = TABLES[s][p / BS] * BS + p % BS;
            for (int32_t e = 0; e < NKV * D; e++)
                d->k[t * NKV * D + e] = 2.0f * rnd(), d->v[t * NKV * D + e] = 2.0f * rnd();
            for (int32_t h = 0; h < NKV; h++) {
                size_t at = ((size_t)t * NKV + h) * D;
                ref_kv_stored_row(kt, d->k + at, D, d->ks + at);
                ref_kv_stored_row(vt, d->v + at, D, d->vs + at);
            }
        }
}

static const char *pair_name(kvrt_dtype kt, kvrt_dtype vt, char *buf, size_t size)
{
    snprintf(buf, size, "K %s / V %s", kvrt_dtype_name(kt), kvrt_dtype_name(vt));
    return buf;
}

static kvrt_kv_pool_desc pair_desc(kvrt_dtype kt, kvrt_dtype vt, int32_t num_blocks)
{
    return (kvrt_kv_pool_desc){.n_layers = 1, .n_kv_heads = NKV, .head_dim = D, .block_size = BS,
                               .num_blocks = num_blocks, .dtype = kt, .v_dtype_set = true, .v_dtype = vt};
}

/* A pool of the pair (with set_seg: in segments of about 5 of the larger
 * of its K and V blocks, so K and V parts of different block sizes each
 * span 3), every block zeroed through block_write (so blocks the test does
 * not fill compare equal too), then n rows of k/v at slots. */
static kvrt_kv_pool *write_pool(kvrt_backend *be, set_segment_fn set_seg, const char *name,
                                const kvrt_kv_pool_desc *pd, const float *k, const float *v, const int32_t *slots,
                                int32_t n)
{
    kvrt_kv_pool *pool;
    size_t kbb = kvrt_kv_block_bytes_which(pd, false), vbb = kvrt_kv_block_bytes_which(pd, true);
    if (set_seg)
        set_seg(be, (5 * (kbb > vbb ? kbb : vbb) + 255) / 256 * 256);
    kvrt_status cs = kvrt_op_kv_pool_create(be, pd, &pool);
    if (set_seg)
        set_seg(be, 0);
    if (cs != KVRT_OK)
        fail_msg("%s: %s", name, be->err.message);
    uint8_t *zero = calloc(1, kbb + vbb);
    assert_non_null(zero);
    for (int32_t b = 0; b < pd->num_blocks; b++)
        for (int w = 0; w < 2; w++)
            assert_int_equal(kvrt_op_kv_block_write(be, pool, 0, (kvrt_kv_which)w, b, zero), KVRT_OK);
    free(zero);
    size_t bytes = (size_t)n * NKV * D * sizeof(float);
    kvrt_buffer *kb = kvrt_test_up(be, k, bytes), *vb = kvrt_test_up(be, v, bytes);
    kvrt_buffer *sb = kvrt_test_up(be, slots, (size_t)n * sizeof(int32_t));
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    kvrt_status st = kvrt_op_kv_write(be, pool, 0, (kvrt_view){kb, 0}, NKV * D, (kvrt_view){vb, 0}, NKV * D,
                                      (kvrt_view){sb, 0}, n);
    if (kvrt_op_end_step(be, st) != KVRT_OK)
        fail_msg("%s: kv_write: %s", name, be->err.message);
    kvrt_op_buffer_destroy(be, kb);
    kvrt_op_buffer_destroy(be, vb);
    kvrt_op_buffer_destroy(be, sb);
    return pool;
}

/* Every block of the K (w = 0) or V (w = 1) pool: [num_blocks][block bytes of its type]. */
static uint8_t *read_pool(kvrt_backend *be, kvrt_kv_pool *pool, const kvrt_kv_pool_desc *pd, int w)
{
    size_t bb = kvrt_kv_block_bytes_which(pd, w == 1);
    uint8_t *out = malloc(bb * (size_t)pd->num_blocks);
    assert_non_null(out);
    for (int32_t b = 0; b < pd->num_blocks; b++)
        if (kvrt_op_kv_block_read(be, pool, 0, (kvrt_kv_which)w, b, out + (size_t)b * bb) != KVRT_OK)
            fail_msg("block read: %s", be->err.message);
    return out;
}

/* Both pools byte for byte against another backend's (the CPU's). */
static void check_same_bytes(const char *what, kvrt_backend *be, kvrt_kv_pool *pool, kvrt_backend *ref_be,
                             kvrt_kv_pool *ref, const kvrt_kv_pool_desc *pd)
{
    for (int w = 0; w < 2; w++) {
        size_t bb = kvrt_kv_block_bytes_which(pd, w == 1);
        uint8_t *got = read_pool(be, pool, pd, w), *want = read_pool(ref_be, ref, pd, w);
        for (size_t i = 0; i < bb * (size_t)pd->num_blocks; i++)
            if (got[i] != want[i])
                fail_msg("%s: %s block %zu byte %zu is 0x%02x, the CPU's 0x%02x", what, w ? "V" : "K", i / bb,
                         i % bb, got[i], want[i]);
        free(got), free(want);
    }
}

static void check_close(const char *what, const float *got, const double *want, size_t n)
{
    double e2 = 0, r2 = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        mx = d > mx || isnan(d) ? d : mx;
        e2 += d * d, r2 += want[i] * want[i];
    }
    double nmse = e2 / (r2 > 0 ? r2 : 1);
    if (!(mx <= 1e-4 && nmse <= 1e-6))
        fail_msg("%s: max abs %.3g, nmse %.3g (bounds 1e-4, 1e-6)", what, mx, nmse);
}

/* Decode (each sequence's last token) and prefill (the last NEW[s] tokens)
 * over the written pool, against the double reference on the stored values. */
static void check_attention(kvrt_backend *be, const char *what, kvrt_kv_pool *pool, const kv_data *d)
{
    int32_t qsl[NSEQ + 1] = {0, NEW[0], NEW[0] + NEW[1]};
    int32_t n_q = qsl[NSEQ];
    float *q = malloc((size_t)n_q * H * D * sizeof(float)), *qd = malloc((size_t)NSEQ * H * D * sizeof(float));
    double *want = malloc((size_t)n_q * H * D * sizeof(double)), *want_d = malloc((size_t)NSEQ * H * D * sizeof(double));
    assert_non_null(q), assert_non_null(qd), assert_non_null(want), assert_non_null(want_d);
    for (size_t i = 0; i < (size_t)n_q * H * D; i++)
        q[i] = rnd();
    ref_attn_shape sh = {H, NKV, D, 0, 0, 1.0 / sqrt((double)D)};
    for (int32_t s = 0, t0 = 0; s < NSEQ; t0 += LENS[s], s++) {
        const float *qs = q + (size_t)qsl[s] * H * D;
        ref_attention_chunk(&sh, qs, LENS[s], NEW[s], d->ks + (size_t)t0 * NKV * D, d->vs + (size_t)t0 * NKV * D,
                            want + (size_t)qsl[s] * H * D);
        memcpy(qd + (size_t)s * H * D, qs + (size_t)(NEW[s] - 1) * H * D, (size_t)H * D * sizeof(float));
        ref_attention_chunk(&sh, qd + (size_t)s * H * D, LENS[s], 1, d->ks + (size_t)t0 * NKV * D,
                            d->vs + (size_t)t0 * NKV * D, want_d + (size_t)s * H * D);
    }
    kvrt_buffer *qb = kvrt_test_up(be, q, (size_t)n_q * H * D * 4), *qdb = kvrt_test_up(be, qd, (size_t)NSEQ * H * D * 4);
    kvrt_buffer *lb = kvrt_test_up(be, LENS, sizeof(LENS)), *tb = kvrt_test_up(be, TABLES, sizeof(TABLES));
    kvrt_buffer *qlb = kvrt_test_up(be, qsl, sizeof(qsl));
    kvrt_buffer *ob = kvrt_test_out_buf(be, (size_t)n_q * H * D), *odb = kvrt_test_out_buf(be, (size_t)NSEQ * H * D);
    kvrt_attn_desc ad = {NSEQ, H, MAXB, (float)sh.scale, 0, 0, H * D, H * D, NSEQ, 70};
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    kvrt_status st = kvrt_op_attn_decode(be, pool, 0, &ad, (kvrt_view){qdb, 0}, (kvrt_view){odb, 0},
                                         (kvrt_view){lb, 0}, (kvrt_view){tb, 0});
    if (st == KVRT_OK) {
        ad.num_tokens = n_q;
        st = kvrt_op_attn_prefill(be, pool, 0, &ad, (kvrt_view){qb, 0}, (kvrt_view){ob, 0}, (kvrt_view){qlb, 0},
                                  (kvrt_view){lb, 0}, (kvrt_view){tb, 0});
    }
    if (kvrt_op_end_step(be, st) != KVRT_OK)
        fail_msg("%s: %s", what, be->err.message);
    float *got_d = kvrt_test_down(be, odb, (size_t)NSEQ * H * D), *got = kvrt_test_down(be, ob, (size_t)n_q * H * D);
    char buf[160];
    snprintf(buf, sizeof(buf), "%s decode", what);
    check_close(buf, got_d, want_d, (size_t)NSEQ * H * D);
    snprintf(buf, sizeof(buf), "%s prefill", what);
    check_close(buf, got, want, (size_t)n_q * H * D);
    kvrt_buffer *bufs[] = {qb, qdb, lb, tb, qlb, ob, odb};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        kvrt_op_buffer_destroy(be, bufs[i]);
    free(q), free(qd), free(want), free(want_d), free(got), free(got_d);
}

/* Block copies (CoW, swap-in order: a chain reads a block an earlier pair
 * wrote) move both pools' bytes unchanged, each by its own block size. */
static void check_copies(kvrt_backend *be, const char *what, kvrt_kv_pool *pool, const kvrt_kv_pool_desc *pd)
{
    static const int32_t COPIES[][2] = {{7, 1}, {1, 3}, {11, 6}};
    uint8_t *before[2] = {read_pool(be, pool, pd, 0), read_pool(be, pool, pd, 1)};
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    kvrt_status st = kvrt_op_kv_copy_blocks(be, pool, COPIES, 3);
    if (kvrt_op_end_step(be, st) != KVRT_OK)
        fail_msg("%s: copy: %s", what, be->err.message);
    for (int w = 0; w < 2; w++) {
        size_t bb = kvrt_kv_block_bytes_which(pd, w == 1);
        uint8_t *after = read_pool(be, pool, pd, w);
        for (int32_t b = 0; b < NB; b++) {
            int32_t from = b == 1 || b == 3 ? 7 : b == 6 ? 11 : b;
            if (memcmp(after + (size_t)b * bb, before[w] + (size_t)from * bb, bb) != 0)
                fail_msg("%s: %s block %d after the copies is not block %d", what, w ? "V" : "K", (int)b, (int)from);
        }
        free(after), free(before[w]);
    }
}

/* Every pair on one backend: bytes as the CPU's, attention, copies. */
static void run_pairs(kvrt_backend *be, set_segment_fn set_seg, const char *name)
{
    kv_data *d = malloc(sizeof(*d));
    assert_non_null(d);
    for (size_t i = 0; i < sizeof(PAIRS) / sizeof(PAIRS[0]); i++) {
        kvrt_dtype kt = PAIRS[i][0], vt = PAIRS[i][1];
        char pn[48], what[96];
        snprintf(what, sizeof(what), "%s, %s", name, pair_name(kt, vt, pn, sizeof(pn)));
        make_data(kt, vt, d);
        kvrt_kv_pool_desc pd = pair_desc(kt, vt, NB);
        kvrt_kv_pool *pool = write_pool(be, set_seg, what, &pd, d->k, d->v, d->slots, N_TOK);
        if (be != CPU) {
            kvrt_kv_pool *ref = write_pool(CPU, NULL, "cpu", &pd, d->k, d->v, d->slots, N_TOK);
            check_same_bytes(what, be, pool, CPU, ref, &pd);
            kvrt_op_kv_pool_destroy(CPU, ref);
        }
        check_attention(be, what, pool, d);
        check_copies(be, what, pool, &pd);
        kvrt_op_kv_pool_destroy(be, pool);
    }
    free(d);
}

/* ---- fp8 edge values --------------------------------------------------------------------- */

/* Values around every finite code of an fp8 type: the code's value, its F32
 * neighbours, the midpoint to the next code (a tie) and the midpoint's
 * neighbours, both signs; then values beyond the largest, infinities, NaNs
 * of both signs, -0, the smallest F32 subnormal. Fills up to cap. */
static int32_t fp8_edges(kvrt_dtype t, float *x, int32_t cap)
{
    int32_t n = 0;
#define PUT(val)                                                                                                   \
    do {                                                                                                         \
        if (n < cap)                                                                                             \
            x[n++] = (val);                                                                                      \
    } while (0)
    for (int c = 0; c < 0x80; c++) {
        double v = ref_fp8_decode(t, (uint8_t)c), next = ref_fp8_decode(t, (uint8_t)(c + 1));
        if (isnan(v) || isinf(v))
            continue;
        float mid = isnan(next) || isinf(next) ? (float)(v * 1.0625) : (float)((v + next) / 2); /* exact */
        float vals[] = {(float)v, nextafterf((float)v, INFINITY), mid, nextafterf(mid, 0.0f),
                        nextafterf(mid, INFINITY)};
        for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
            PUT(vals[i]);
            PUT(-vals[i]);
        }
    }
    float special[] = {-0.0f, 0.0f, INFINITY, -INFINITY, NAN, -NAN, FLT_MAX, -FLT_MAX, 1e30f, -1e30f,
                       FLT_TRUE_MIN, -FLT_TRUE_MIN, 449.0f, 464.0f, 480.0f, 57344.0f, 61440.0f, 65504.0f};
    for (size_t i = 0; i < sizeof(special) / sizeof(special[0]); i++)
        PUT(special[i]);
#undef PUT
    return n;
}

/* K in fp8 (E4M3), V in fp8_e5m2, rows of each type's edge values: every
 * byte is kv_layout.h's rule (the library's encoder, itself tested against
 * a search of all codes in test_kv_quant) and the CPU's. */
static void run_fp8_edges(kvrt_backend *be, set_segment_fn set_seg, const char *name)
{
    enum { ENB = 4, ETOK = ENB * BS, EN = ETOK * NKV * D };
    float *k = malloc(EN * sizeof(float)), *v = malloc(EN * sizeof(float));
    int32_t slots[ETOK];
    assert_non_null(k), assert_non_null(v);
    int32_t nk = fp8_edges(KVRT_DTYPE_FP8_E4M3, k, EN), nv = fp8_edges(KVRT_DTYPE_FP8_E5M2, v, EN);
    for (int32_t i = nk; i < EN; i++)
        k[i] = k[i % nk] * 0.5f; /* fill the rest: halves of the edges, more subnormals */
    for (int32_t i = nv; i < EN; i++)
        v[i] = v[i % nv] * 0.5f;
    for (int32_t t = 0; t < ETOK; t++)
        slots[t] = (t * 5) % ETOK; /* 5 is coprime with ETOK: every slot once, out of order */
    kvrt_kv_pool_desc pd = pair_desc(KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E5M2, ENB);
    char what[64];
    snprintf(what, sizeof(what), "%s, fp8 edge values", name);
    kvrt_kv_pool *pool = write_pool(be, set_seg, what, &pd, k, v, slots, ETOK);
    for (int w = 0; w < 2; w++) {
        const float *x = w ? v : k;
        kvrt_dtype t = w ? KVRT_DTYPE_FP8_E5M2 : KVRT_DTYPE_FP8_E4M3;
        uint8_t *got = read_pool(be, pool, &pd, w);
        for (int32_t tok = 0; tok < ETOK; tok++)
            for (int32_t h = 0; h < NKV; h++)
                for (int32_t i = 0; i < D; i++) {
                    float xv = x[((size_t)tok * NKV + h) * D + i];
                    int32_t blk = slots[tok] / BS, off = slots[tok] % BS;
                    uint8_t g = got[(((size_t)blk * NKV + h) * BS + off) * D + i];
                    uint8_t want = kvrt_kv_fp8_encode(t, xv);
                    if (g != want)
                        fail_msg("%s: %s of %a (%g) is 0x%02x, the rule gives 0x%02x", what, kvrt_dtype_name(t),
                                 (double)xv, (double)xv, g, want);
                }
        free(got);
    }
    if (be != CPU) {
        kvrt_kv_pool *ref = write_pool(CPU, NULL, "cpu", &pd, k, v, slots, ETOK);
        check_same_bytes(what, be, pool, CPU, ref, &pd);
        kvrt_op_kv_pool_destroy(CPU, ref);
    }
    kvrt_op_kv_pool_destroy(be, pool);
    free(k), free(v);
}

static void run_all(kvrt_backend *be, set_segment_fn set_seg, const char *name)
{
    run_pairs(be, set_seg, name);
    run_fp8_edges(be, set_seg, name);
}

static void test_cpu(void **state)
{
    (void)state;
    run_all(CPU, NULL, "cpu");
}

#if defined(KVRT_HAVE_VULKAN_BACKEND)
/* Every feature, then none (the word-only path runs either way). */
static void test_vulkan(void **state)
{
    (void)state;
    const uint32_t masks[] = {0, KVRT_TEST_ALL_FEATURES};
    for (int m = 0; m < 2; m++) {
        kvrt_backend *be = kvrt_test_vk_open(masks[m], 0, 0);
        assert_non_null(be); /* CI has lavapipe */
        run_all(be, kvrt_vk_set_max_segment, m ? "vulkan/none" : "vulkan/all");
        assert_int_equal(kvrt_test_vk_close(be), 0); /* no validation message */
    }
}
#endif

#if defined(KVRT_HAVE_OPENCL_BACKEND)
/* 0 restores the device's own limit (its largest allocation). */
static void cl_set_segment(kvrt_backend *be, size_t bytes)
{
    kvrt_cl_test_set_segment_bytes(be, bytes ? bytes : SIZE_MAX);
}

static void test_opencl(void **state)
{
    (void)state;
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_OPENCL;
    kvrt_context *ctx;
    kvrt_error err;
    if (kvrt_context_create(&p, &ctx, &err) != KVRT_OK) /* CI has PoCL */
        fail_msg("opencl: %s", err.message);
    run_all(ctx->be, cl_set_segment, "opencl");
    kvrt_context_destroy(ctx);
}
#endif

static int setup(void **state)
{
    (void)state;
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_CPU;
    p.n_threads = 2;
    kvrt_error err;
    if (kvrt_context_create(&p, &CPU_CTX, &err) != KVRT_OK) {
        fprintf(stderr, "cpu: %s\n", err.message);
        return -1;
    }
    CPU = CPU_CTX->be;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    kvrt_context_destroy(CPU_CTX);
    return 0;
}

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    /* OpenCL first: with PoCL started after the Vulkan instances were
     * destroyed, LeakSanitizer's exit scan crashed on a dynamic TLS block of
     * an unloaded module (ASan build, reproducible); this order scans clean. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu),
#if defined(KVRT_HAVE_OPENCL_BACKEND)
        cmocka_unit_test(test_opencl),
#endif
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        cmocka_unit_test(test_vulkan),
#endif
    };
    return cmocka_run_group_tests_name("separate K and V types and fp8 KV on every backend", tests, setup, teardown);
}
