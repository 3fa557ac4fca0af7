/* OpenCL KV pools on PoCL: kv_write through a slot mapping gives the CPU
 * pool's bytes exactly (F32 exact, F16 round-to-nearest-even), block
 * read/write moves blocks between backends, kv_copy_blocks, segmented pools.
 * The special values include F16 rounding ties, subnormals and overflow. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "backend/opencl/cl_internal.h"
#include "common/fp16.h"
#include "test_opencl_util.h"
#include "backend/ops.h"

typedef struct kv_env {
    kvrt_context *cpu_ctx, *cl_ctx;
    kvrt_backend *cpu, *cl;
} kv_env;

static int setup(void **state)
{
    static kv_env env;
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = 1;
    if (kvrt_context_create(&p, &env.cpu_ctx, NULL) != KVRT_OK)
        return -1;
    env.cl_ctx = cl_test_context(0);
    if (!env.cl_ctx)
        return -1;
    env.cpu = ((struct kvrt_context *)env.cpu_ctx)->be;
    env.cl = ((struct kvrt_context *)env.cl_ctx)->be;
    *state = &env;
    return 0;
}

static int teardown(void **state)
{
    kv_env *env = *state;
    kvrt_context_destroy(env->cl_ctx);
    kvrt_context_destroy(env->cpu_ctx);
    return 0;
}

/* Values F16 rounding must get right: ties to even, subnormals, overflow, signed zero. */
static const float special[] = {
    1.00048828125f,  /* 1 + 2^-11: tie, rounds down to 1 */
    1.00146484375f,  /* 1 + 3 * 2^-11: tie, rounds up to 1 + 2^-9 */
    -2.0009765625f,  /* tie at exponent 1 */
    65519.0f,        /* largest that rounds to 65504 */
    65520.0f,        /* rounds to infinity */
    2.98023223876953125e-8f, /* 2^-25: tie between 0 and the smallest subnormal: 0 */
    8.940696716308594e-8f,   /* 1.5 * 2^-24: tie, rounds to 2^-23 */
    -0.0f, 6.103515625e-05f, 3.0517578125e-05f, 0.1f, -1e-3f,
};

/* n_tokens tokens of K/V ([n][n_kv][hd]) with every special value somewhere. */
static void make_kv(float *k, float *v, int64_t n_elems, uint64_t seed)
{
    for (int64_t i = 0; i < n_elems; i++) {
        k[i] = cl_test_uniform(&seed) * 4.0f;
        v[i] = cl_test_uniform(&seed);
    }
    for (size_t i = 0; i < KVRT_ARRAY_LEN(special) && (int64_t)(i * 7 + 3) < n_elems; i++) {
        k[i * 7 + 3] = special[i];
        v[n_elems - 1 - (int64_t)i * 5] = -special[i];
    }
}

static kvrt_buffer *upload(kvrt_backend *be, const void *src, size_t bytes)
{
    kvrt_buffer *b = NULL;
    assert_int_equal(kvrt_op_buffer_create(be, bytes, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, b, 0, src, bytes), KVRT_OK);
    return b;
}

/* The CPU pool as the CPU backend's kv_write leaves it. */
static void cpu_write(kvrt_backend *cpu, kvrt_kv_pool *pool, int32_t layer, const float *k, const float *v,
                      int64_t stride, const int32_t *slots, int32_t n)
{
    const kvrt_kv_pool_desc *d = &pool->desc;
    assert_non_null(cpu->ops->kv_write);
    size_t bytes = (size_t)((n - 1) * stride + d->n_kv_heads * d->head_dim) * 4;
    kvrt_buffer *kb = upload(cpu, k, bytes), *vb = upload(cpu, v, bytes), *sb = upload(cpu, slots, (size_t)n * 4);
    assert_int_equal(kvrt_op_kv_write(cpu, pool, layer, (kvrt_view){kb, 0}, stride, (kvrt_view){vb, 0}, stride,
                                        (kvrt_view){sb, 0}, n),
                     KVRT_OK);
    kvrt_op_buffer_destroy(cpu, kb);
    kvrt_op_buffer_destroy(cpu, vb);
    kvrt_op_buffer_destroy(cpu, sb);
}

/* F16 K bytes are also the RNE conversion of each written value (kvrt_f32_to_fp16), saturated at
 * +-65504, token by token. */
static void assert_block_rne(kvrt_backend *cl, kvrt_kv_pool *pool, int32_t layer, const float *k, int64_t stride,
                             const int32_t *slots, int32_t n)
{
    const kvrt_kv_pool_desc *d = &pool->desc;
    if (d->dtype != KVRT_DTYPE_F16)
        return;
    size_t bb = kvrt_kv_block_bytes(d);
    uint16_t *blk = malloc(bb);
    assert_non_null(blk);
    int checked = 0;
    for (int32_t t = 0; t < n; t++) {
        if (slots[t] < 0)
            continue;
        int32_t b = slots[t] / d->block_size, off = slots[t] % d->block_size;
        assert_int_equal(kvrt_op_kv_block_read(cl, pool, layer, KVRT_KV_K, b, blk), KVRT_OK);
        for (int32_t h = 0; h < d->n_kv_heads; h++) {
            for (int32_t i = 0; i < d->head_dim; i++) {
                float x = k[t * stride + h * d->head_dim + i]; /* F16 KV saturates (DESIGN.md) */
                uint16_t want = x > 65504.0f ? 0x7bff : x < -65504.0f ? 0xfbff : kvrt_f32_to_fp16(x);
                assert_int_equal(blk[(h * d->block_size + off) * d->head_dim + i], want);
                checked++;
            }
        }
    }
    assert_true(checked > 0);
    free(blk);
}

/* Every block of every layer, K and V, byte for byte. */
static void assert_pools_equal(kv_env *env, kvrt_kv_pool *a, kvrt_kv_pool *b)
{
    size_t bb = kvrt_kv_block_bytes(&a->desc);
    unsigned char *x = malloc(bb), *y = malloc(bb);
    assert_non_null(x);
    assert_non_null(y);
    for (int32_t l = 0; l < a->desc.n_layers; l++) {
        for (int w = 0; w < 2; w++) {
            for (int32_t blk = 0; blk < a->desc.num_blocks; blk++) {
                assert_int_equal(kvrt_op_kv_block_read(env->cpu, a, l, (kvrt_kv_which)w, blk, x), KVRT_OK);
                assert_int_equal(kvrt_op_kv_block_read(env->cl, b, l, (kvrt_kv_which)w, blk, y), KVRT_OK);
                if (memcmp(x, y, bb) != 0)
                    fail_msg("layer %d %s block %d differs", (int)l, w ? "V" : "K", (int)blk);
            }
        }
    }
    free(x);
    free(y);
}

static void run_write_case(kv_env *env, kvrt_dtype dtype, int32_t block_size, int32_t head_dim, size_t seg_bytes)
{
    const int32_t n_kv = 2, num_blocks = 12, n_tokens = 50;
    kvrt_kv_pool_desc d = {.n_layers = 2, .n_kv_heads = n_kv, .head_dim = head_dim, .block_size = block_size,
                           .num_blocks = num_blocks, .dtype = dtype};
    kvrt_cl_test_set_segment_bytes(env->cl, seg_bytes);
    kvrt_kv_pool *cpu_pool, *cl_pool;
    assert_int_equal(kvrt_op_kv_pool_create(env->cpu, &d, &cpu_pool), KVRT_OK);
    assert_int_equal(kvrt_op_kv_pool_create(env->cl, &d, &cl_pool), KVRT_OK);
    kvrt_cl_test_set_segment_bytes(env->cl, SIZE_MAX);

    /* rows padded to a stride, slots scattered over every block, some padding */
    const int64_t row = (int64_t)n_kv * head_dim, stride = row + 3;
    float *k = calloc((size_t)(n_tokens * stride), 4), *v = calloc((size_t)(n_tokens * stride), 4);
    int32_t slots[50];
    assert_non_null(k);
    assert_non_null(v);
    make_kv(k, v, n_tokens * stride, 7u + (uint64_t)dtype);
    uint64_t seed = 99;
    int32_t cap = num_blocks * block_size;
    for (int32_t t = 0; t < n_tokens; t++)
        slots[t] = (t % 9 == 4) ? -1 : (int32_t)((t * 37 + (int32_t)(cl_test_next(&seed) % 3)) % cap);
    for (int32_t t = 1; t < n_tokens; t++) { /* distinct slots: the order of duplicates is not specified */
        for (int32_t u = 0; u < t; u++) {
            if (slots[t] >= 0 && slots[t] == slots[u])
                slots[t] = -1;
        }
    }
    cpu_write(env->cpu, cpu_pool, 1, k, v, stride, slots, n_tokens);

    kvrt_backend *cl = env->cl;
    size_t bytes = (size_t)((n_tokens - 1) * stride + row) * 4;
    kvrt_buffer *kb = upload(cl, k, bytes), *vb = upload(cl, v, bytes), *sb = upload(cl, slots, sizeof(slots));
    assert_int_equal(kvrt_op_kv_write(cl, cl_pool, 1, (kvrt_view){kb, 0}, stride, (kvrt_view){vb, 0}, stride,
                                       (kvrt_view){sb, 0}, n_tokens),
                     KVRT_OK);
    assert_pools_equal(env, cpu_pool, cl_pool);
    assert_block_rne(cl, cl_pool, 1, k, stride, slots, n_tokens);

    /* bad arguments change nothing */
    assert_int_equal(kvrt_op_kv_write(cl, cl_pool, 2, (kvrt_view){kb, 0}, stride, (kvrt_view){vb, 0}, stride,
                                       (kvrt_view){sb, 0}, n_tokens),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_op_kv_write(cl, cl_pool, 0, (kvrt_view){kb, 0}, row - 1, (kvrt_view){vb, 0}, stride,
                                       (kvrt_view){sb, 0}, n_tokens),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_op_kv_write(cl, cl_pool, 0, (kvrt_view){kb, 4}, stride, (kvrt_view){vb, 0}, stride,
                                       (kvrt_view){sb, 0}, n_tokens),
                     KVRT_ERR_INVALID_ARGUMENT); /* k runs past its buffer */
    /* a slot past the pool is an error of the host check, before anything goes to the device
     * (a kernel could only skip it): through the KV cache API, nothing written */
    int32_t bad_slots[50];
    memcpy(bad_slots, slots, sizeof(bad_slots));
    bad_slots[n_tokens - 1] = cap;
    kvrt_kv_cache_params cp = {d.n_layers, d.n_kv_heads, d.head_dim, d.block_size, d.num_blocks, .dtype = d.dtype};
    kvrt_kv_cache *cache;
    assert_int_equal(kvrt_kv_cache_create(env->cl_ctx, &cp, &cache, NULL), KVRT_OK);
    assert_int_equal(kvrt_kv_cache_write(cache, 0, k, v, bad_slots, n_tokens), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_kv_cache_message(cache), "slot_mapping[49]"));
    unsigned char *zero = calloc(1, kvrt_kv_cache_block_bytes(cache)), *got = malloc(kvrt_kv_cache_block_bytes(cache));
    for (int32_t blk = 0; blk < d.num_blocks; blk++) {
        assert_int_equal(kvrt_kv_cache_read_block(cache, 0, 0, blk, got, kvrt_kv_cache_block_bytes(cache)), KVRT_OK);
        assert_memory_equal(got, zero, kvrt_kv_cache_block_bytes(cache));
    }
    free(zero);
    free(got);
    kvrt_kv_cache_destroy(cache);
    assert_pools_equal(env, cpu_pool, cl_pool); /* nothing was written */

    /* copy-on-write copies: chains run in order, across segments */
    const int32_t pairs[][2] = {{0, 11}, {5, 2}, {2, 7}, {3, 3}, {10, 1}};
    assert_int_equal(kvrt_op_kv_copy_blocks(env->cpu, cpu_pool, pairs, 5), KVRT_OK);
    assert_int_equal(kvrt_op_begin(cl), KVRT_OK);
    assert_int_equal(kvrt_op_kv_copy_blocks(cl, cl_pool, pairs, 5), KVRT_OK);
    assert_int_equal(kvrt_op_submit(cl), KVRT_OK);
    assert_pools_equal(env, cpu_pool, cl_pool);
    const int32_t bad[][2] = {{0, 1}, {1, 12}};
    assert_int_equal(kvrt_op_kv_copy_blocks(cl, cl_pool, bad, 2), KVRT_ERR_INVALID_ARGUMENT);
    assert_pools_equal(env, cpu_pool, cl_pool);

    /* a block moves between backends as raw bytes */
    size_t bb = kvrt_kv_block_bytes(&d);
    unsigned char *blk = malloc(bb);
    assert_non_null(blk);
    assert_int_equal(kvrt_op_kv_block_read(cl, cl_pool, 1, KVRT_KV_V, 7, blk), KVRT_OK);
    assert_int_equal(kvrt_op_kv_block_write(env->cpu, cpu_pool, 0, KVRT_KV_K, 9, blk), KVRT_OK);
    assert_int_equal(kvrt_op_kv_block_write(cl, cl_pool, 0, KVRT_KV_K, 9, blk), KVRT_OK);
    assert_pools_equal(env, cpu_pool, cl_pool);
    assert_int_equal(kvrt_op_kv_block_read(cl, cl_pool, 0, KVRT_KV_K, num_blocks, blk), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_op_kv_block_write(cl, cl_pool, -1, KVRT_KV_K, 0, blk), KVRT_ERR_INVALID_ARGUMENT);
    free(blk);

    kvrt_op_buffer_destroy(cl, kb);
    kvrt_op_buffer_destroy(cl, vb);
    kvrt_op_buffer_destroy(cl, sb);
    kvrt_op_kv_pool_destroy(cl, cl_pool);
    kvrt_op_kv_pool_destroy(env->cpu, cpu_pool);
    free(k);
    free(v);
}

static void test_write_f32(void **state)
{
    run_write_case(*state, KVRT_DTYPE_F32, 16, 64, SIZE_MAX);
}

static void test_write_f16(void **state)
{
    run_write_case(*state, KVRT_DTYPE_F16, 8, 80, SIZE_MAX);
}

/* Pools in 3, 4 and 6 segments (whole blocks per segment). */
static void test_write_segmented(void **state)
{
    kv_env *env = *state;
    run_write_case(env, KVRT_DTYPE_F32, 16, 64, 4 * 2 * 16 * 64 * 4);  /* 4 blocks per segment */
    run_write_case(env, KVRT_DTYPE_F16, 32, 16, 3 * 2 * 32 * 16 * 2 + 100); /* 3 per segment, 4 segments */
    run_write_case(env, KVRT_DTYPE_F32, 8, 32, 2 * 2 * 8 * 32 * 4);   /* 2 per segment, 6 segments */
}

static void test_pool_limits(void **state)
{
    kv_env *env = *state;
    kvrt_backend *cl = env->cl;
    kvrt_kv_pool_desc d = {.n_layers = 1, .n_kv_heads = 1, .head_dim = 64, .block_size = 16, .num_blocks = 5,
                           .dtype = KVRT_DTYPE_F32};
    kvrt_kv_pool *pool = (kvrt_kv_pool *)env;
    /* one block per segment: 8 segments are taken, 9 are more than a kernel takes */
    kvrt_cl_test_set_segment_bytes(cl, 16 * 64 * 4);
    d.num_blocks = KVRT_CL_MAX_KV_SEGS;
    assert_int_equal(kvrt_op_kv_pool_create(cl, &d, &pool), KVRT_OK);
    assert_int_equal(pool->k[0].n_segs, KVRT_CL_MAX_KV_SEGS);
    kvrt_op_kv_pool_destroy(cl, pool);
    d.num_blocks = KVRT_CL_MAX_KV_SEGS + 1;
    assert_int_equal(kvrt_op_kv_pool_create(cl, &d, &pool), KVRT_ERR_UNSUPPORTED);
    assert_null(pool);
    assert_non_null(strstr(kvrt_context_message(env->cl_ctx), "allocations"));
    kvrt_cl_test_set_segment_bytes(cl, SIZE_MAX);
    d.block_size = 0;
    assert_int_equal(kvrt_op_kv_pool_create(cl, &d, &pool), KVRT_ERR_INVALID_ARGUMENT);
    d.block_size = 16;
    d.dtype = KVRT_DTYPE_BF16; /* not a KV type */
    assert_int_equal(kvrt_op_kv_pool_create(cl, &d, &pool), KVRT_ERR_UNSUPPORTED);
    assert_true(kvrt_cl(cl)->used == 0);
}

int main(void)
{
    cl_test_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_f32),
        cmocka_unit_test(test_write_f16),
        cmocka_unit_test(test_write_segmented),
        cmocka_unit_test(test_pool_limits),
    };
    return cmocka_run_group_tests_name("opencl kv", tests, setup, teardown);
}
