/* Vulkan KV pools and paged attention against the CPU pool's bytes and a
 * double-precision reference (DESIGN.md correctness contract: max abs 1e-4,
 * NMSE 1e-6, F32 and F16 KV alike). Pools span several buffer segments (a
 * small segment limit set through the test hook). Every backend runs with the
 * validation layer and must stay silent; each test runs once with all
 * features and once with every KVRT_FEATURE_* bit disabled. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_drivers.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ops.h"
#include "backend/vulkan/vk_backend.h"
#include "common/fp16.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return kvrt_test_vulkan_not_built_main();
}
#else

#define CANARY 0x7fc0dead /* a NaN pattern no kernel writes */
#define N_CANARY 64

static uint32_t g_disabled;
static uint32_t g_max_shared; /* 0 = the device's; else the tiles a 16 KiB device gets */

/* The loader unloads the driver and the validation layer with each instance;
 * pinning them keeps their symbols for LeakSanitizer, whose suppressions
 * (tests/lsan.supp) name those libraries. Not needed for the tests themselves. */

static kvrt_backend *vk_open(void)
{
    kvrt_backend *be = kvrt_test_vk_open(g_disabled, 0, g_max_shared);
    assert_non_null(be);
    return be;
}

static void vk_close(kvrt_backend *be)
{
    assert_int_equal(kvrt_test_vk_close(be), 0);
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float rng_float(uint64_t *s) /* [-1, 1) */
{
    return (float)((double)(rng_next(s) >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

static void shuffle(int32_t *a, int32_t n, uint64_t *s)
{
    for (int32_t i = n - 1; i > 0; i--) {
        int32_t j = (int32_t)(rng_next(s) % (uint64_t)(i + 1)), t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static kvrt_buffer *dev_buf(kvrt_backend *be, const void *data, size_t bytes)
{
    kvrt_buffer *b;
    assert_int_equal(kvrt_op_buffer_create(be, bytes, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    if (data)
        assert_int_equal(kvrt_op_buffer_upload(be, b, 0, data, bytes), KVRT_OK);
    return b;
}

static int32_t g_seg_blocks; /* blocks per pool segment; 0 = a third of the pool */

/* Pool with a segment limit that splits each layer into several segments. */
static kvrt_kv_pool *make_pool(kvrt_backend *be, const kvrt_kv_pool_desc *d)
{
    size_t bb = kvrt_kv_block_bytes(d);
    size_t per = g_seg_blocks ? (size_t)g_seg_blocks : ((size_t)d->num_blocks + 2) / 3;
    kvrt_vk_set_max_segment(be, bb * per);
    kvrt_kv_pool *pool;
    kvrt_status s = kvrt_op_kv_pool_create(be, d, &pool);
    kvrt_vk_set_max_segment(be, 0);
    if (s != KVRT_OK)
        fail_msg("kv_pool_create: %s", be->err.message);
    return pool;
}

/* ---- byte identity with the CPU pool ------------------------------------------------ */

/* Values that probe F16 rounding: ties (to even), subnormals, overflow. */
static float special_value(int i)
{
    static const float v[] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, -(2.0f + 0x1p-10f), 0x1p-25f * 3,
                              0x1p-24f, 0x1p-26f, 65504.0f, 65520.0f, -70000.0f, 0.0f, -0.0f, 0x1.ffep-15f};
    return v[i % (int)KVRT_ARRAY_LEN(v)];
}

/* Writes the same K/V rows through the CPU pool (its kv_write when it has one,
 * else the layout and fp16.h rounding by hand) and returns its layer bytes. */
static void cpu_reference_blocks(const kvrt_kv_pool_desc *d, int32_t layer, const float *k, const float *v,
                                 int64_t stride, const int32_t *slots, int32_t n, uint8_t *kb, uint8_t *vb)
{
    size_t bb = kvrt_kv_block_bytes(d);
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = 1;
    kvrt_backend *cpu;
    assert_int_equal(kvrt_cpu_backend_create(&p, &cpu, NULL), KVRT_OK);
    kvrt_kv_pool *pool;
    assert_int_equal(kvrt_op_kv_pool_create(cpu, d, &pool), KVRT_OK);
    if (cpu->ops->kv_write) {
        kvrt_buffer *kbuf, *vbuf, *sbuf;
        size_t rows = ((size_t)(n - 1) * (size_t)stride + (size_t)d->n_kv_heads * (size_t)d->head_dim) * 4;
        assert_int_equal(kvrt_op_buffer_wrap_host(cpu, (void *)k, rows, &kbuf), KVRT_OK);
        assert_int_equal(kvrt_op_buffer_wrap_host(cpu, (void *)v, rows, &vbuf), KVRT_OK);
        assert_int_equal(kvrt_op_buffer_wrap_host(cpu, (void *)slots, (size_t)n * 4, &sbuf), KVRT_OK);
        kvrt_view kv = {kbuf, 0}, vv = {vbuf, 0}, sv = {sbuf, 0};
        assert_int_equal(kvrt_op_kv_write(cpu, pool, layer, kv, stride, vv, stride, sv, n), KVRT_OK);
        kvrt_op_buffer_destroy(cpu, kbuf);
        kvrt_op_buffer_destroy(cpu, vbuf);
        kvrt_op_buffer_destroy(cpu, sbuf);
    } else {
        uint8_t *blk = malloc(bb);
        for (int w = 0; w < 2; w++) {
            const float *src = w ? v : k;
            for (int32_t b = 0; b < d->num_blocks; b++) {
                assert_int_equal(kvrt_op_kv_block_read(cpu, pool, layer, (kvrt_kv_which)w, b, blk), KVRT_OK);
                for (int32_t t = 0; t < n; t++) {
                    if (slots[t] < 0 || slots[t] / d->block_size != b)
                        continue;
                    for (int32_t h = 0; h < d->n_kv_heads; h++)
                        for (int32_t e = 0; e < d->head_dim; e++) {
                            size_t idx = ((size_t)h * d->block_size + slots[t] % d->block_size) * d->head_dim + e;
                            float x = src[t * stride + h * d->head_dim + e];
                            if (d->dtype == KVRT_DTYPE_F16) {
                                uint16_t hv = kvrt_f32_to_fp16(x);
                                memcpy(blk + idx * 2, &hv, 2);
                            } else {
                                memcpy(blk + idx * 4, &x, 4);
                            }
                        }
                }
                assert_int_equal(kvrt_op_kv_block_write(cpu, pool, layer, (kvrt_kv_which)w, b, blk), KVRT_OK);
            }
        }
        free(blk);
    }
    for (int32_t b = 0; b < d->num_blocks; b++) {
        assert_int_equal(kvrt_op_kv_block_read(cpu, pool, layer, KVRT_KV_K, b, kb + b * bb), KVRT_OK);
        assert_int_equal(kvrt_op_kv_block_read(cpu, pool, layer, KVRT_KV_V, b, vb + b * bb), KVRT_OK);
    }
    kvrt_op_kv_pool_destroy(cpu, pool);
    cpu->ops->destroy(cpu);
}

static void check_kv_bytes(kvrt_dtype dtype, int32_t head_dim)
{
    kvrt_backend *be = vk_open();
    kvrt_kv_pool_desc d = {.n_layers = 2, .n_kv_heads = 2, .head_dim = head_dim, .block_size = 8,
                           .num_blocks = 12, .dtype = dtype};
    const int32_t n = 45, row = d.n_kv_heads * d.head_dim, stride = row + 3;
    uint64_t rs = 7 + (uint64_t)dtype;
    int32_t slots[45], perm[96];
    for (int32_t i = 0; i < 96; i++)
        perm[i] = i;
    shuffle(perm, 96, &rs);
    for (int32_t t = 0; t < n; t++)
        slots[t] = t % 9 == 4 ? -1 : perm[t]; /* some padding rows */
    float *k = calloc((size_t)n * stride, 4), *v = calloc((size_t)n * stride, 4);
    for (int32_t i = 0; i < n * stride; i++) {
        k[i] = i % 5 == 0 ? special_value(i / 5) : rng_float(&rs) * 3.0f;
        v[i] = i % 7 == 0 ? special_value(i / 7 + 3) : rng_float(&rs);
    }
    kvrt_kv_pool *pool = make_pool(be, &d);
    kvrt_buffer *kb = dev_buf(be, k, (size_t)n * stride * 4), *vb = dev_buf(be, v, (size_t)n * stride * 4);
    kvrt_buffer *sb = dev_buf(be, slots, sizeof(slots));
    kvrt_view kv = {kb, 0}, vv = {vb, 0}, sv = {sb, 0};
    assert_int_equal(kvrt_op_kv_write(be, pool, 1, kv, stride, vv, stride, sv, n), KVRT_OK);

    size_t bb = kvrt_kv_block_bytes(&d), lb = bb * (size_t)d.num_blocks;
    uint8_t *ck = malloc(lb), *cv = malloc(lb), *got = malloc(bb), *zero = calloc(1, bb);
    cpu_reference_blocks(&d, 1, k, v, stride, slots, n, ck, cv);
    for (int32_t b = 0; b < d.num_blocks; b++) {
        assert_int_equal(kvrt_op_kv_block_read(be, pool, 1, KVRT_KV_K, b, got), KVRT_OK);
        assert_memory_equal(got, ck + b * bb, bb);
        assert_int_equal(kvrt_op_kv_block_read(be, pool, 1, KVRT_KV_V, b, got), KVRT_OK);
        assert_memory_equal(got, cv + b * bb, bb);
        assert_int_equal(kvrt_op_kv_block_read(be, pool, 0, KVRT_KV_K, b, got), KVRT_OK);
        assert_memory_equal(got, zero, bb); /* the other layer is untouched */
    }

    /* block copies: a chain (7 is written, then read), across segments */
    const int32_t pairs[][2] = {{1, 7}, {3, 11}, {7, 2}, {10, 0}};
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    assert_int_equal(kvrt_op_kv_copy_blocks(be, pool, pairs, 4), KVRT_OK);
    assert_int_equal(kvrt_op_submit(be), KVRT_OK);
    for (int i = 0; i < 4; i++) {
        memcpy(ck + pairs[i][1] * bb, ck + pairs[i][0] * bb, bb);
        memcpy(cv + pairs[i][1] * bb, cv + pairs[i][0] * bb, bb);
    }
    for (int32_t b = 0; b < d.num_blocks; b++) {
        assert_int_equal(kvrt_op_kv_block_read(be, pool, 1, KVRT_KV_K, b, got), KVRT_OK);
        assert_memory_equal(got, ck + b * bb, bb);
        assert_int_equal(kvrt_op_kv_block_read(be, pool, 1, KVRT_KV_V, b, got), KVRT_OK);
        assert_memory_equal(got, cv + b * bb, bb);
    }
    /* raw block write + read back; bad indices are errors */
    memset(got, 0x5a, bb);
    assert_int_equal(kvrt_op_kv_block_write(be, pool, 0, KVRT_KV_V, 11, got), KVRT_OK);
    memset(got, 0, bb);
    assert_int_equal(kvrt_op_kv_block_read(be, pool, 0, KVRT_KV_V, 11, got), KVRT_OK);
    for (size_t i = 0; i < bb; i++)
        assert_int_equal(got[i], 0x5a);
    assert_int_equal(kvrt_op_kv_block_read(be, pool, 2, KVRT_KV_V, 0, got), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_op_kv_block_read(be, pool, 0, KVRT_KV_V, 12, got), KVRT_ERR_INVALID_ARGUMENT);
    const int32_t bad[][2] = {{0, 12}};
    assert_int_equal(kvrt_op_kv_copy_blocks(be, pool, bad, 1), KVRT_ERR_INVALID_ARGUMENT);

    kvrt_op_buffer_destroy(be, kb);
    kvrt_op_buffer_destroy(be, vb);
    kvrt_op_buffer_destroy(be, sb);
    kvrt_op_kv_pool_destroy(be, pool);
    free(k), free(v), free(ck), free(cv), free(got), free(zero);
    vk_close(be);
}

static void test_kv_bytes_f32(void **state)
{
    check_kv_bytes(KVRT_DTYPE_F32, 16);
    check_kv_bytes(KVRT_DTYPE_F32, 33);
}

static void test_kv_bytes_f16(void **state)
{
    check_kv_bytes(KVRT_DTYPE_F16, 16);
    check_kv_bytes(KVRT_DTYPE_F16, 33); /* rows share words: halves merged atomically */
}

/* ---- attention vs a double reference ------------------------------------------------- */

typedef struct vcase {
    int32_t head_dim, n_heads, n_kv_heads, block_size;
    kvrt_dtype dtype;
    int32_t window, sinks;
    bool prefill;
    int32_t num_seqs;
    int32_t len[4];
    int32_t n_new[4]; /* prefill: query tokens per sequence (decode: 1) */
} vcase;

static bool visible(const vcase *c, int32_t i, int32_t j)
{
    return j <= i && (c->window == 0 || i - j < c->window || j < c->sinks);
}

/* out[n_new][n_heads][hd] for the last n_new positions of one sequence. */
static void reference(const vcase *c, const float *q, int64_t q_stride, int32_t len, int32_t n_new, const float *k,
                      const float *v, float scale, double *out)
{
    int32_t D = c->head_dim, g = c->n_heads / c->n_kv_heads, kr = c->n_kv_heads * D;
    double *p = malloc(sizeof(double) * (size_t)len);
    for (int32_t t = 0; t < n_new; t++) {
        int32_t i = len - n_new + t;
        for (int32_t h = 0; h < c->n_heads; h++) {
            const float *qh = q + t * q_stride + h * D;
            int32_t kh = h / g;
            double m = -INFINITY, l = 0;
            for (int32_t j = 0; j <= i; j++) {
                if (!visible(c, i, j))
                    continue;
                double s = 0;
                for (int32_t e = 0; e < D; e++)
                    s += (double)qh[e] * k[j * kr + kh * D + e];
                p[j] = s * scale;
                m = p[j] > m ? p[j] : m;
            }
            for (int32_t j = 0; j <= i; j++)
                if (visible(c, i, j))
                    l += exp(p[j] - m);
            for (int32_t e = 0; e < D; e++) {
                double a = 0;
                for (int32_t j = 0; j <= i; j++)
                    if (visible(c, i, j))
                        a += exp(p[j] - m) * v[j * kr + kh * D + e];
                out[((size_t)t * c->n_heads + h) * D + e] = a / l;
            }
        }
    }
    free(p);
}

static float stored(kvrt_dtype dt, float x)
{
    return dt == KVRT_DTYPE_F16 ? kvrt_fp16_to_f32(kvrt_f32_to_fp16(x)) : x;
}

static void run_case(kvrt_backend *be, const vcase *c, uint64_t seed)
{
    int32_t D = c->head_dim, kr = c->n_kv_heads * D, qr = c->n_heads * D, bs = c->block_size;
    int64_t q_stride = qr + 8, o_stride = qr + 4;
    int32_t max_blocks = 0, total_blocks = 0, n_rows = 0, n_q = 0;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        int32_t nb = (c->len[s] + bs - 1) / bs;
        max_blocks = nb > max_blocks ? nb : max_blocks;
        total_blocks += nb;
        n_rows += c->len[s];
        n_q += c->prefill ? c->n_new[s] : 1;
    }
    max_blocks += 1; /* unused tail entries stay -1 */
    kvrt_kv_pool_desc pd = {.n_layers = 2, .n_kv_heads = c->n_kv_heads, .head_dim = D, .block_size = bs,
                            .num_blocks = total_blocks + 3, .dtype = c->dtype};
    uint64_t rs = seed;
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)pd.num_blocks);
    for (int32_t i = 0; i < pd.num_blocks; i++)
        perm[i] = i;
    shuffle(perm, pd.num_blocks, &rs);
    int32_t *tables = malloc(sizeof(int32_t) * (size_t)(c->num_seqs * max_blocks));
    int32_t *slots = malloc(sizeof(int32_t) * (size_t)n_rows);
    float *k = malloc(sizeof(float) * (size_t)n_rows * kr), *v = malloc(sizeof(float) * (size_t)n_rows * kr);
    float *q = calloc((size_t)n_q * q_stride, sizeof(float));
    int32_t seq_lens[4], qsl[5] = {0};
    int32_t used = 0, row = 0;
    for (int32_t s = 0; s < c->num_seqs; s++) {
        int32_t nb = (c->len[s] + bs - 1) / bs, first_q = c->len[s] - (c->prefill ? c->n_new[s] : 1);
        seq_lens[s] = c->len[s];
        qsl[s + 1] = qsl[s] + (c->prefill ? c->n_new[s] : 1);
        for (int32_t b = 0; b < max_blocks; b++) {
            int32_t id = b < nb ? perm[used + b] : -1;
            /* blocks no query of this step can see are released (-1), as a windowed KV manager does */
            if (id >= 0 && c->window && (b + 1) * bs - 1 < first_q - c->window + 1 && b * bs >= c->sinks)
                id = -1;
            tables[s * max_blocks + b] = id;
        }
        for (int32_t j = 0; j < c->len[s]; j++, row++) {
            slots[row] = perm[used + j / bs] * bs + j % bs;
            for (int32_t e = 0; e < kr; e++) {
                k[row * kr + e] = rng_float(&rs);
                v[row * kr + e] = rng_float(&rs);
            }
        }
        used += nb;
    }
    for (int32_t i = 0; i < n_q * q_stride; i++)
        q[i] = rng_float(&rs) * 2.0f;

    float scale = 1.0f / sqrtf((float)D);
    double *ref = malloc(sizeof(double) * (size_t)n_q * qr);
    float *ks = malloc(sizeof(float) * (size_t)n_rows * kr), *vs = malloc(sizeof(float) * (size_t)n_rows * kr);
    for (int32_t i = 0; i < n_rows * kr; i++) {
        ks[i] = stored(c->dtype, k[i]);
        vs[i] = stored(c->dtype, v[i]);
    }
    for (int32_t s = 0, r0 = 0; s < c->num_seqs; r0 += c->len[s], s++)
        reference(c, q + qsl[s] * q_stride, q_stride, c->len[s], qsl[s + 1] - qsl[s], ks + (size_t)r0 * kr,
                  vs + (size_t)r0 * kr, scale, ref + (size_t)qsl[s] * qr);

    /* device side: one step records the K/V write and the attention together */
    kvrt_kv_pool *pool = make_pool(be, &pd);
    size_t out_bytes = ((size_t)(n_q - 1) * o_stride + qr) * 4;
    uint32_t *out_host = malloc(out_bytes + N_CANARY * 4);
    for (size_t i = 0; i < out_bytes / 4 + N_CANARY; i++)
        out_host[i] = CANARY;
    kvrt_buffer *kb = dev_buf(be, k, (size_t)n_rows * kr * 4), *vb = dev_buf(be, v, (size_t)n_rows * kr * 4);
    kvrt_buffer *sb = dev_buf(be, slots, (size_t)n_rows * 4), *qb = dev_buf(be, q, (size_t)n_q * q_stride * 4);
    kvrt_buffer *ob = dev_buf(be, out_host, out_bytes + N_CANARY * 4);
    kvrt_buffer *lb = dev_buf(be, seq_lens, (size_t)c->num_seqs * 4);
    kvrt_buffer *tb = dev_buf(be, tables, (size_t)c->num_seqs * max_blocks * 4);
    kvrt_buffer *qlb = dev_buf(be, qsl, (size_t)(c->num_seqs + 1) * 4);
    kvrt_attn_desc ad = {.num_seqs = c->num_seqs, .n_heads = c->n_heads, .max_blocks_per_seq = max_blocks,
                         .scale = scale, .window = c->window, .sinks = c->sinks, .q_stride = q_stride,
                         .o_stride = o_stride, .num_tokens = n_q};
    kvrt_view kv = {kb, 0}, vv = {vb, 0}, sv = {sb, 0}, qv = {qb, 0}, ov = {ob, 0}, lv = {lb, 0}, tv = {tb, 0};
    kvrt_view qlv = {qlb, 0};
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    assert_int_equal(kvrt_op_kv_write(be, pool, 1, kv, kr, vv, kr, sv, n_rows), KVRT_OK);
    kvrt_status st = c->prefill ? kvrt_op_attn_prefill(be, pool, 1, &ad, qv, ov, qlv, lv, tv)
                                : kvrt_op_attn_decode(be, pool, 1, &ad, qv, ov, lv, tv);
    if (st != KVRT_OK)
        fail_msg("attention: %s", be->err.message);
    assert_int_equal(kvrt_op_submit(be), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_download(be, ob, 0, out_host, out_bytes + N_CANARY * 4), KVRT_OK);

    double max_abs = 0, err2 = 0, ref2 = 0;
    for (int32_t t = 0; t < n_q; t++) {
        for (int32_t e = 0; e < qr; e++) {
            float o;
            memcpy(&o, &out_host[t * o_stride + e], 4);
            double r = ref[(size_t)t * qr + e], diff = fabs((double)o - r);
            if (!isfinite(o))
                fail_msg("non-finite output at token %d, element %d", (int)t, (int)e);
            max_abs = diff > max_abs ? diff : max_abs;
            err2 += diff * diff;
            ref2 += r * r;
        }
        for (int64_t e = qr; t + 1 < n_q && e < o_stride; e++) /* stride gaps stay untouched */
            assert_int_equal(out_host[t * o_stride + e], CANARY);
    }
    for (size_t i = 0; i < N_CANARY; i++)
        assert_int_equal(out_host[out_bytes / 4 + i], CANARY);
    double nmse = err2 / (ref2 > 0 ? ref2 : 1);
    print_message("  %s %s hd=%d h=%d/%d bs=%d W=%d S=%d: max abs %.2e, nmse %.2e\n",
                  c->prefill ? "prefill" : "decode", c->dtype == KVRT_DTYPE_F16 ? "f16" : "f32", (int)D,
                  (int)c->n_heads, (int)c->n_kv_heads, (int)bs, (int)c->window, (int)c->sinks, max_abs, nmse);
    assert_true(max_abs <= 1e-4);
    assert_true(nmse <= 1e-6);

    kvrt_buffer *bufs[] = {kb, vb, sb, qb, ob, lb, tb, qlb};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(bufs); i++)
        kvrt_op_buffer_destroy(be, bufs[i]);
    kvrt_op_kv_pool_destroy(be, pool);
    free(perm), free(tables), free(slots), free(k), free(v), free(q), free(ref), free(ks), free(vs);
    free(out_host);
}

static const vcase decode_cases[] = {
    {64, 4, 4, 16, KVRT_DTYPE_F32, 0, 0, false, 3, {1, 17, 100}, {0}},
    {128, 8, 2, 8, KVRT_DTYPE_F16, 0, 0, false, 2, {1100, 33}, {0}}, /* three split-K partitions */
    {16, 8, 1, 32, KVRT_DTYPE_F32, 40, 4, false, 2, {200, 9}, {0}},
    {256, 8, 1, 16, KVRT_DTYPE_F16, 0, 0, false, 1, {70}, {0}},      /* head group split over workgroups */
    {80, 4, 2, 16, KVRT_DTYPE_F32, 64, 0, false, 1, {600}, {0}},     /* a partition with no visible key */
    {96, 6, 3, 8, KVRT_DTYPE_F16, 100, 8, false, 2, {531, 512}, {0}},
    /* K sub-tiles smaller than the 64-key tile and dot products split in
     * slices (key tiles x heads per workgroup < 64; sub-tile sizes for 32 KiB
     * of shared memory, lavapipe): MHA D 128 (32 keys, 2 slices), odd D 161
     * (32 keys, slices of 81 and 80 dims) with a window whose sub-tiles are
     * partly invisible, D 256 (16 keys, 4 slices), D 512 with GQA (8 keys,
     * 2 heads, 4 slices), D 1024 (4 keys, 16 slices); lengths off the tile. */
    {128, 4, 4, 16, KVRT_DTYPE_F16, 0, 0, false, 2, {700, 64}, {0}},
    {161, 3, 3, 8, KVRT_DTYPE_F16, 50, 3, false, 2, {530, 77}, {0}},
    {256, 2, 2, 8, KVRT_DTYPE_F32, 0, 0, false, 1, {300}, {0}},
    {512, 4, 2, 16, KVRT_DTYPE_F16, 0, 0, false, 1, {150}, {0}},
    {1024, 1, 1, 16, KVRT_DTYPE_F32, 0, 0, false, 1, {90}, {0}},
};

static const vcase prefill_cases[] = {
    {64, 4, 2, 16, KVRT_DTYPE_F32, 0, 0, true, 2, {50, 70}, {50, 20}},
    {256, 4, 1, 8, KVRT_DTYPE_F16, 0, 0, true, 1, {40}, {40}},
    {16, 2, 1, 32, KVRT_DTYPE_F32, 16, 3, true, 2, {100, 5}, {60, 1}},
    {96, 6, 2, 16, KVRT_DTYPE_F16, 0, 0, true, 2, {200, 31}, {130, 31}},
    {128, 8, 8, 16, KVRT_DTYPE_F32, 48, 0, true, 1, {150}, {70}},
    /* long cached prefixes: more loop iterations than lavapipe runs in one
     * invocation unless the key range is split (found by the shared table) */
    {80, 8, 2, 32, KVRT_DTYPE_F32, 0, 0, true, 1, {1328}, {62}},
    {64, 8, 2, 32, KVRT_DTYPE_F16, 0, 0, true, 1, {4000}, {16}},
};

static void test_decode(void **state)
{
    kvrt_backend *be = vk_open();
    for (size_t i = 0; i < KVRT_ARRAY_LEN(decode_cases); i++)
        run_case(be, &decode_cases[i], 100 + i);
    vk_close(be);
}

static void test_prefill(void **state)
{
    kvrt_backend *be = vk_open();
    for (size_t i = 0; i < KVRT_ARRAY_LEN(prefill_cases); i++)
        run_case(be, &prefill_cases[i], 200 + i);
    vk_close(be);
}

/* More segments than descriptors can bind: buffer device addresses reach
 * them all; without the feature the pool is refused with a clear message. */
static void test_many_segments(void **state)
{
    kvrt_backend *be = vk_open();
    static const vcase cases[] = {
        {64, 4, 2, 8, KVRT_DTYPE_F16, 0, 0, false, 2, {130, 61}, {0}},
        {32, 4, 1, 16, KVRT_DTYPE_F32, 0, 0, true, 1, {150}, {90}},
    };
    if (kvrt_vk_features(be) & KVRT_FEATURE_BUFFER_DEVICE_ADDRESS) {
        g_seg_blocks = 2; /* 14 to 15 segments per layer */
        for (size_t i = 0; i < KVRT_ARRAY_LEN(cases); i++)
            run_case(be, &cases[i], 300 + i);
        g_seg_blocks = 0;
    } else {
        kvrt_kv_pool_desc d = {.n_layers = 1, .n_kv_heads = 2, .head_dim = 64, .block_size = 8, .num_blocks = 30,
                               .dtype = KVRT_DTYPE_F32};
        kvrt_vk_set_max_segment(be, 2 * kvrt_kv_block_bytes(&d));
        kvrt_kv_pool *pool = (kvrt_kv_pool *)&d;
        assert_int_equal(kvrt_op_kv_pool_create(be, &d, &pool), KVRT_ERR_UNSUPPORTED);
        assert_null(pool);
        assert_non_null(strstr(be->err.message, "buffer device addresses"));
        kvrt_vk_set_max_segment(be, 0);
    }
    vk_close(be);
}

/* What the kernels cannot bound by their shape is refused, naming the limit:
 * head_dim above 1024, sequences longer than the merge passes take (their
 * loops walk the partitions: kvrt_context_limits.max_seq_len, the bound at
 * every head_dim). */
static void test_limits(void **state)
{
    kvrt_backend *be = vk_open();
    kvrt_context_limits l;
    kvrt_op_limits(be, &l);
    print_message("  head_dim <= %d (decode), %d (prefill); sequences <= %lld keys\n", (int)l.decode_head_dim_max,
                  (int)l.prefill_head_dim_max, (long long)l.max_seq_len);
    assert_int_equal(l.decode_head_dim_max, 1024);
    assert_int_equal(l.prefill_head_dim_max, 1024);
    /* long contexts fit; the 1.28M keys below do not */
    assert_true(l.max_seq_len >= 256 * 1024 && l.max_seq_len < 1280000);
    const int32_t hds[] = {1025, 2048, 1024};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(hds); i++) {
        kvrt_kv_pool_desc pd = {.n_layers = 1, .n_kv_heads = 1, .head_dim = hds[i], .block_size = 16,
                                .num_blocks = 6, .dtype = KVRT_DTYPE_F32};
        kvrt_kv_pool *pool = make_pool(be, &pd);
        /* head_dim 1024: a table of 80,000 blocks (1.28M keys), over 2,220 partitions */
        int32_t max_blocks = hds[i] == 1024 ? 80000 : 1;
        int32_t *table = calloc((size_t)max_blocks, sizeof(int32_t)), lens[1] = {1}, qsl[2] = {0, 1};
        float *q = calloc((size_t)hds[i], sizeof(float));
        kvrt_buffer *qb = dev_buf(be, q, (size_t)hds[i] * 4), *ob = dev_buf(be, NULL, (size_t)hds[i] * 4);
        kvrt_buffer *tb = dev_buf(be, table, (size_t)max_blocks * 4), *lb = dev_buf(be, lens, 4);
        kvrt_buffer *qlb = dev_buf(be, qsl, 8);
        kvrt_attn_desc ad = {.num_seqs = 1, .n_heads = 1, .max_blocks_per_seq = max_blocks, .scale = 1.0f,
                             .q_stride = hds[i], .o_stride = hds[i], .num_tokens = 1};
        kvrt_view qv = {qb, 0}, ov = {ob, 0}, tv = {tb, 0}, lv = {lb, 0}, qlv = {qlb, 0};
        const char *named = hds[i] == 1024 ? "max_seq_len" : "limit of 1024";
        assert_int_equal(kvrt_op_attn_decode(be, pool, 0, &ad, qv, ov, lv, tv), KVRT_ERR_UNSUPPORTED);
        assert_non_null(strstr(be->err.message, named));
        assert_int_equal(kvrt_op_attn_prefill(be, pool, 0, &ad, qv, ov, qlv, lv, tv), KVRT_ERR_UNSUPPORTED);
        assert_non_null(strstr(be->err.message, named));
        kvrt_op_buffer_destroy(be, qb);
        kvrt_op_buffer_destroy(be, ob);
        kvrt_op_buffer_destroy(be, tb);
        kvrt_op_buffer_destroy(be, lb);
        kvrt_op_buffer_destroy(be, qlb);
        kvrt_op_kv_pool_destroy(be, pool);
        free(table);
        free(q);
    }
    vk_close(be);
}

/* More query tiles (and rows) than a dispatch may have workgroups on x:
 * prefill splits its passes into several dispatches, each workgroup still
 * taking one tile; with maxComputeWorkGroupCount[0] lowered to 3. */
static void test_split_dispatch(void **state)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_VULKAN;
    p.disabled_features = g_disabled;
    p.pipeline_cache_path = kvrt_test_pipeline_cache();
    kvrt_vk_debug_params dbg = {.validation = true, .max_groups_x = 3};
    kvrt_backend *be = NULL;
    kvrt_error err;
    if (kvrt_vk_backend_create_ex(&p, &dbg, &be, &err) != KVRT_OK)
        fail_msg("vulkan backend: %s", err.message);
    static const vcase cases[] = {
        {256, 4, 2, 16, KVRT_DTYPE_F32, 0, 0, true, 2, {150, 40}, {100, 33}},
        {768, 2, 1, 16, KVRT_DTYPE_F16, 0, 0, true, 1, {300}, {30}},
    };
    for (size_t i = 0; i < KVRT_ARRAY_LEN(cases); i++)
        run_case(be, &cases[i], 400 + i);
    vk_close(be);
}

/* Wide heads with the 16 KiB of shared memory every Vulkan device has
 * (lavapipe's 32 KiB runs them in test_attention_cases): one-row query tiles,
 * key tiles of 1 to 4 and dot products split up to 64 ways, at contexts
 * around issue 19's boundary (127 keys at head_dim 768). */
static void test_wide_heads(void **state)
{
    kvrt_backend *be = vk_open();
    static const vcase cases[] = {
        {512, 2, 1, 16, KVRT_DTYPE_F32, 0, 0, true, 1, {200}, {8}},
        {576, 2, 1, 16, KVRT_DTYPE_F16, 0, 0, true, 1, {127}, {1}},
        {768, 2, 1, 16, KVRT_DTYPE_F32, 0, 0, true, 2, {127, 200}, {1, 8}},
        {768, 2, 1, 16, KVRT_DTYPE_F32, 0, 0, false, 2, {127, 200}, {0}},
        {1024, 2, 1, 16, KVRT_DTYPE_F16, 0, 0, true, 2, {126, 200}, {1, 8}},
        {1024, 4, 2, 16, KVRT_DTYPE_F32, 100, 4, false, 1, {300}, {0}},
    };
    for (size_t i = 0; i < KVRT_ARRAY_LEN(cases); i++)
        run_case(be, &cases[i], 500 + i);
    vk_close(be);
}

static int pass_all(void **state)
{
    g_disabled = 0;
    g_max_shared = 0;
    return 0;
}

static int pass_none(void **state)
{
    g_disabled = KVRT_TEST_ALL_FEATURES;
    g_max_shared = 0;
    return 0;
}

/* The 16 KiB of shared memory every Vulkan device has: smaller key
 * sub-tiles, split dot products and query tiles than on lavapipe's 32 KiB. */
static int pass_small_shared(void **state)
{
    g_disabled = 0;
    g_max_shared = 16 * 1024;
    return 0;
}

#define BOTH(t) cmocka_unit_test_setup(t, pass_all), cmocka_unit_test_setup(t, pass_none)

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        BOTH(test_kv_bytes_f32),
        BOTH(test_kv_bytes_f16),
        BOTH(test_decode),
        BOTH(test_prefill),
        cmocka_unit_test_setup(test_decode, pass_small_shared),
        cmocka_unit_test_setup(test_prefill, pass_small_shared),
        cmocka_unit_test_setup(test_wide_heads, pass_small_shared),
        BOTH(test_many_segments),
        cmocka_unit_test_setup(test_limits, pass_all),
        BOTH(test_split_dispatch),
    };
    return cmocka_run_group_tests_name("vulkan_attention", tests, NULL, NULL);
}
#endif /* KVRT_HAVE_VULKAN_BACKEND */
