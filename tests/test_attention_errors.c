/* Bad input to every public KV cache / attention function and to the CPU
 * backend entries: the status, a message naming the problem, no crash. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "backend/ops.h"
#include "kvrt.h"

enum { KV = 2, HD = 8, BS = 8, NB = 6, H = 4, MB = 3 };

typedef struct fixture {
    kvrt_context *ctx;
    kvrt_kv_cache *cache;
    float q[4][H][HD]; /* room for prefill chunks of up to 4 tokens */
    float out[4][H][HD];
    int32_t seq_lens[2];
    int32_t tables[2][MB];
    kvrt_attention_params p;
} fixture;

static int setup(void **state)
{
    static fixture f;
    memset(&f, 0, sizeof(f));
    kvrt_context_params cp = kvrt_context_default_params();
    cp.n_threads = 2;
    if (kvrt_context_create(&cp, &f.ctx, NULL) != KVRT_OK)
        return -1;
    kvrt_kv_cache_params kp = {2, KV, HD, BS, NB, .dtype = KVRT_DTYPE_F32};
    if (kvrt_kv_cache_create(f.ctx, &kp, &f.cache, NULL) != KVRT_OK)
        return -1;
    float kv[NB * BS][KV][HD];
    int32_t slots[NB * BS];
    for (int t = 0; t < NB * BS; t++) {
        slots[t] = t;
        for (int h = 0; h < KV; h++)
            for (int e = 0; e < HD; e++)
                kv[t][h][e] = 0.01f * (float)(t + h + e);
    }
    if (kvrt_kv_cache_write(f.cache, 0, &kv[0][0][0], &kv[0][0][0], slots, NB * BS) != KVRT_OK)
        return -1;
    for (int s = 0; s < 2; s++)
        for (int h = 0; h < H; h++)
            for (int e = 0; e < HD; e++)
                f.q[s][h][e] = 0.1f * (float)(s - h + e);
    f.seq_lens[0] = 20;
    f.seq_lens[1] = 9;
    const int32_t tables[2][MB] = {{4, 0, 2}, {5, 1, -1}};
    memcpy(f.tables, tables, sizeof(tables));
    kvrt_attention_params p = {H, MB, 0.0f, 0, 0};
    f.p = p;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    kvrt_kv_cache_destroy(f->cache);
    kvrt_context_destroy(f->ctx);
    return 0;
}

#define EXPECT(call, status, needle)                                         \
    do {                                                                     \
        assert_int_equal((call), (status));                                  \
        if (!strstr(kvrt_kv_cache_message(f->cache), (needle)))             \
            print_error("message: %s\n", kvrt_kv_cache_message(f->cache));   \
        assert_non_null(strstr(kvrt_kv_cache_message(f->cache), (needle)));  \
    } while (0)

static kvrt_status decode(fixture *f, const kvrt_attention_params *p)
{
    return kvrt_attention_decode(f->cache, 0, p, 2, &f->q[0][0][0], f->seq_lens, &f->tables[0][0], &f->out[0][0][0]);
}

static void test_create_errors(void **state)
{
    fixture *f = *state;
    kvrt_kv_cache_params good = {1, KV, HD, BS, NB, .dtype = KVRT_DTYPE_F16};
    kvrt_kv_cache *c = (kvrt_kv_cache *)f; /* must come back NULL */
    kvrt_error err;
    assert_int_equal(kvrt_kv_cache_create(f->ctx, &good, NULL, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "out is NULL"));
    assert_int_equal(kvrt_kv_cache_create(NULL, &good, &c, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(c);
    assert_non_null(strstr(err.message, "ctx is NULL"));
    assert_int_equal(kvrt_kv_cache_create(f->ctx, NULL, &c, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "params is NULL"));
    struct {
        kvrt_kv_cache_params p;
        const char *needle;
    } bad[] = {
        {{0, KV, HD, BS, NB, .dtype = KVRT_DTYPE_F32}, "n_layers 0"},
        {{1, 0, HD, BS, NB, .dtype = KVRT_DTYPE_F32}, "n_kv_heads 0"},
        {{1, KV, -4, BS, NB, .dtype = KVRT_DTYPE_F32}, "head_dim -4"},
        {{1, KV, HD, BS, 0, .dtype = KVRT_DTYPE_F32}, "num_blocks 0"},
        {{1, KV, HD, 12, NB, .dtype = KVRT_DTYPE_F32}, "block_size 12 is not 8, 16 or 32"},
        {{1, KV, HD, 64, NB, .dtype = KVRT_DTYPE_F32}, "block_size 64"},
        {{1, KV, HD, BS, NB, .dtype = KVRT_DTYPE_Q8_0}, "head_dim 8 is not a multiple of 32, which q8_0 KV needs"},
        {{1, KV, 80, BS, NB, .dtype = KVRT_DTYPE_Q4_0}, "head_dim 80 is not a multiple of 32, which q4_0 KV needs"},
        {{1, KV, HD, BS, NB, .dtype = KVRT_DTYPE_BF16}, "dtype bf16"},
        {{1, KV, HD, BS, NB, .dtype = KVRT_DTYPE_F16, .v_dtype_set = 1, .v_dtype = KVRT_DTYPE_Q8_0},
         "V: head_dim 8 is not a multiple of 32, which q8_0 KV needs"},
        {{1, KV, HD, BS, NB, .dtype = KVRT_DTYPE_F16, .v_dtype_set = 1, .v_dtype = KVRT_DTYPE_Q4_K}, "dtype q4_K"},
        {{1, KV, HD, 32, INT32_MAX / 16, .dtype = KVRT_DTYPE_F32}, "overflow"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = (kvrt_kv_cache *)f;
        assert_int_equal(kvrt_kv_cache_create(f->ctx, &bad[i].p, &c, &err), KVRT_ERR_INVALID_ARGUMENT);
        assert_null(c);
        if (!strstr(err.message, bad[i].needle))
            print_error("message: %s\n", err.message);
        assert_non_null(strstr(err.message, bad[i].needle));
        assert_int_equal(kvrt_kv_cache_create(f->ctx, &bad[i].p, &c, NULL), KVRT_ERR_INVALID_ARGUMENT);
    }
    assert_int_equal(kvrt_kv_cache_create(f->ctx, &good, &c, NULL), KVRT_OK); /* err may be NULL */
    assert_string_equal(kvrt_kv_cache_message(c), "");
    kvrt_kv_cache_destroy(c);
    kvrt_kv_cache_destroy(NULL);
    assert_string_equal(kvrt_kv_cache_message(NULL), "");
    assert_int_equal(kvrt_kv_cache_block_bytes(NULL), 0);
}

static void test_write_errors(void **state)
{
    fixture *f = *state;
    float k[2][KV][HD] = {{{0}}}, v[2][KV][HD] = {{{0}}};
    int32_t slots[2] = {3, NB * BS};
    assert_int_equal(kvrt_kv_cache_write(NULL, 0, &k[0][0][0], &v[0][0][0], slots, 1), KVRT_ERR_INVALID_ARGUMENT);
    EXPECT(kvrt_kv_cache_write(f->cache, 2, &k[0][0][0], &v[0][0][0], slots, 1), KVRT_ERR_INVALID_ARGUMENT,
           "layer 2 outside [0, 2)");
    EXPECT(kvrt_kv_cache_write(f->cache, -1, &k[0][0][0], &v[0][0][0], slots, 1), KVRT_ERR_INVALID_ARGUMENT,
           "layer -1");
    EXPECT(kvrt_kv_cache_write(f->cache, 0, &k[0][0][0], &v[0][0][0], slots, -1), KVRT_ERR_INVALID_ARGUMENT,
           "n_tokens -1");
    EXPECT(kvrt_kv_cache_write(f->cache, 0, NULL, &v[0][0][0], slots, 1), KVRT_ERR_INVALID_ARGUMENT, "k is NULL");
    EXPECT(kvrt_kv_cache_write(f->cache, 0, &k[0][0][0], NULL, slots, 1), KVRT_ERR_INVALID_ARGUMENT, "v is NULL");
    EXPECT(kvrt_kv_cache_write(f->cache, 0, &k[0][0][0], &v[0][0][0], NULL, 1), KVRT_ERR_INVALID_ARGUMENT,
           "slot_mapping is NULL");
    /* one bad slot: an error naming it, and the good slot before it not written */
    size_t bb = kvrt_kv_cache_block_bytes(f->cache);
    unsigned char before[KV * BS * HD * 4], after[KV * BS * HD * 4];
    assert_int_equal(kvrt_kv_cache_read_block(f->cache, 0, 0, 0, before, bb), KVRT_OK);
    EXPECT(kvrt_kv_cache_write(f->cache, 0, &k[0][0][0], &v[0][0][0], slots, 2), KVRT_ERR_INVALID_ARGUMENT,
           "slot_mapping[1] = 48 outside the pool");
    assert_int_equal(kvrt_kv_cache_read_block(f->cache, 0, 0, 0, after, bb), KVRT_OK);
    assert_memory_equal(before, after, bb);
    /* zero tokens and all-padding are fine; the message clears on success */
    int32_t pad[2] = {-1, -7};
    assert_int_equal(kvrt_kv_cache_write(f->cache, 0, &k[0][0][0], &v[0][0][0], pad, 2), KVRT_OK);
    assert_string_equal(kvrt_kv_cache_message(f->cache), "");
    assert_int_equal(kvrt_kv_cache_write(f->cache, 0, NULL, NULL, NULL, 0), KVRT_OK);
}

static void test_decode_errors(void **state)
{
    fixture *f = *state;
    kvrt_attention_params p = f->p;
    assert_int_equal(decode(f, &p), KVRT_OK);
    assert_int_equal(kvrt_attention_decode(NULL, 0, &p, 1, &f->q[0][0][0], f->seq_lens, &f->tables[0][0],
                                           &f->out[0][0][0]), KVRT_ERR_INVALID_ARGUMENT);
    EXPECT(decode(f, NULL), KVRT_ERR_INVALID_ARGUMENT, "params is NULL");
    EXPECT(kvrt_attention_decode(f->cache, 5, &p, 2, &f->q[0][0][0], f->seq_lens, &f->tables[0][0],
                                 &f->out[0][0][0]), KVRT_ERR_INVALID_ARGUMENT, "layer 5");
    EXPECT(kvrt_attention_decode(f->cache, 0, &p, -1, &f->q[0][0][0], f->seq_lens, &f->tables[0][0],
                                 &f->out[0][0][0]), KVRT_ERR_INVALID_ARGUMENT, "num_seqs -1");
    EXPECT(kvrt_attention_decode(f->cache, 0, &p, 2, NULL, f->seq_lens, &f->tables[0][0], &f->out[0][0][0]),
           KVRT_ERR_INVALID_ARGUMENT, "q is NULL");
    EXPECT(kvrt_attention_decode(f->cache, 0, &p, 2, &f->q[0][0][0], NULL, &f->tables[0][0], &f->out[0][0][0]),
           KVRT_ERR_INVALID_ARGUMENT, "seq_lens is NULL");
    EXPECT(kvrt_attention_decode(f->cache, 0, &p, 2, &f->q[0][0][0], f->seq_lens, NULL, &f->out[0][0][0]),
           KVRT_ERR_INVALID_ARGUMENT, "block_tables is NULL");
    EXPECT(kvrt_attention_decode(f->cache, 0, &p, 2, &f->q[0][0][0], f->seq_lens, &f->tables[0][0], NULL),
           KVRT_ERR_INVALID_ARGUMENT, "out is NULL");
    assert_int_equal(kvrt_attention_decode(f->cache, 0, &p, 0, NULL, NULL, NULL, NULL), KVRT_OK);

    p.n_heads = 3;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "n_heads 3 is not a positive multiple of n_kv_heads 2");
    p.n_heads = 0;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "n_heads 0");
    p = f->p;
    p.max_blocks_per_seq = 0;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "max_blocks_per_seq 0");
    p = f->p;
    p.window = -2;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "window -2");
    p = f->p;
    p.sinks = -1;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "sinks -1");
    p = f->p;
    p.scale = NAN;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "scale nan is not finite");

    p = f->p;
    f->seq_lens[1] = 0;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "seq_lens[1] = 0 < 1");
    f->seq_lens[1] = MB * BS + 1;
    EXPECT(decode(f, &p), KVRT_ERR_CONTEXT_OVERFLOW, "seq_lens[1] = 25 exceeds its block table (3 blocks x 8");
    f->seq_lens[1] = 9;
    f->tables[0][1] = NB;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "block_tables[0][1] = 6 outside [0, 6)");
    f->tables[0][1] = -5;
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "block_tables[0][1] = -5");
    f->tables[0][1] = -1; /* a visible block released */
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "block_tables[0][1] = -1 but positions 8..15");
    /* ... which is fine once the window hides it: query 19, window 4 sees 16..19 */
    p.window = 4;
    f->tables[0][0] = -1;
    assert_int_equal(decode(f, &p), KVRT_OK);
    p.sinks = 1; /* but the sink lives in block 0 */
    EXPECT(decode(f, &p), KVRT_ERR_INVALID_ARGUMENT, "block_tables[0][0] = -1");
    f->tables[0][0] = 4;
    f->tables[0][1] = 0;
}

static kvrt_status prefill(fixture *f, const kvrt_attention_params *p, const int32_t *qsl)
{
    return kvrt_attention_prefill(f->cache, 0, p, 2, qsl, &f->q[0][0][0], f->seq_lens, &f->tables[0][0],
                                  &f->out[0][0][0]);
}

static void test_prefill_errors(void **state)
{
    fixture *f = *state;
    kvrt_attention_params p = f->p;
    const int32_t good[3] = {0, 1, 2};
    assert_int_equal(prefill(f, &p, good), KVRT_OK);
    assert_int_equal(kvrt_attention_prefill(NULL, 0, &p, 2, good, &f->q[0][0][0], f->seq_lens, &f->tables[0][0],
                                            &f->out[0][0][0]), KVRT_ERR_INVALID_ARGUMENT);
    EXPECT(prefill(f, NULL, good), KVRT_ERR_INVALID_ARGUMENT, "params is NULL");
    EXPECT(prefill(f, &p, NULL), KVRT_ERR_INVALID_ARGUMENT, "query_start_loc is NULL");
    const int32_t not_zero[3] = {1, 1, 2}, decreasing[3] = {0, 2, 1}, too_many[3] = {0, 0, 10};
    EXPECT(prefill(f, &p, not_zero), KVRT_ERR_INVALID_ARGUMENT, "query_start_loc[0] = 1");
    EXPECT(prefill(f, &p, decreasing), KVRT_ERR_INVALID_ARGUMENT, "query_start_loc decreases at 1");
    EXPECT(prefill(f, &p, too_many), KVRT_ERR_INVALID_ARGUMENT, "sequence 1 has 10 query tokens but seq_lens[1] = 9");
    EXPECT(kvrt_attention_prefill(f->cache, 0, &p, 2, good, NULL, f->seq_lens, &f->tables[0][0], &f->out[0][0][0]),
           KVRT_ERR_INVALID_ARGUMENT, "q is NULL");
    EXPECT(kvrt_attention_prefill(f->cache, 0, &p, 2, good, &f->q[0][0][0], NULL, &f->tables[0][0],
                                  &f->out[0][0][0]), KVRT_ERR_INVALID_ARGUMENT, "seq_lens is NULL");
    p.n_heads = 5;
    EXPECT(prefill(f, &p, good), KVRT_ERR_INVALID_ARGUMENT, "n_heads 5 is not a positive multiple");
    p = f->p;
    f->seq_lens[0] = 40;
    EXPECT(prefill(f, &p, good), KVRT_ERR_CONTEXT_OVERFLOW, "seq_lens[0] = 40 exceeds");
    f->seq_lens[0] = 20;
    f->tables[1][1] = 77;
    EXPECT(prefill(f, &p, good), KVRT_ERR_INVALID_ARGUMENT, "block_tables[1][1] = 77");
    f->tables[1][1] = 1;
    /* a chunk of 2 tokens at 7..8 of sequence 1 with window 2: block 0 (7) visible */
    const int32_t two[3] = {0, 1, 3};
    p.window = 2;
    f->tables[1][0] = -1;
    EXPECT(prefill(f, &p, two), KVRT_ERR_INVALID_ARGUMENT, "block_tables[1][0] = -1 but positions 0..7");
    f->tables[1][0] = 5;
    assert_int_equal(prefill(f, &p, two), KVRT_OK);
    /* no query tokens at all is a no-op */
    const int32_t none[3] = {0, 0, 0};
    assert_int_equal(kvrt_attention_prefill(f->cache, 0, &p, 2, none, NULL, f->seq_lens, &f->tables[0][0], NULL),
                     KVRT_OK);
}

static void test_block_errors(void **state)
{
    fixture *f = *state;
    unsigned char buf[KV * BS * HD * 4];
    size_t bb = sizeof(buf);
    assert_int_equal(kvrt_kv_cache_block_bytes(f->cache), bb);
    EXPECT(kvrt_kv_cache_read_block(f->cache, 2, 0, 0, buf, bb), KVRT_ERR_INVALID_ARGUMENT, "layer 2");
    EXPECT(kvrt_kv_cache_read_block(f->cache, 0, 2, 0, buf, bb), KVRT_ERR_INVALID_ARGUMENT, "which 2");
    EXPECT(kvrt_kv_cache_read_block(f->cache, 0, 0, NB, buf, bb), KVRT_ERR_INVALID_ARGUMENT, "block 6 outside");
    EXPECT(kvrt_kv_cache_read_block(f->cache, 0, 0, -1, buf, bb), KVRT_ERR_INVALID_ARGUMENT, "block -1");
    EXPECT(kvrt_kv_cache_read_block(f->cache, 0, 0, 0, NULL, bb), KVRT_ERR_INVALID_ARGUMENT, "buffer is NULL");
    EXPECT(kvrt_kv_cache_read_block(f->cache, 0, 0, 0, buf, bb - 1), KVRT_ERR_INVALID_ARGUMENT,
           "smaller than a block");
    EXPECT(kvrt_kv_cache_write_block(f->cache, 0, 1, 99, buf, bb), KVRT_ERR_INVALID_ARGUMENT, "write block: block 99");
    EXPECT(kvrt_kv_cache_write_block(f->cache, 0, 1, 0, buf, 10), KVRT_ERR_INVALID_ARGUMENT, "10 bytes");
    assert_int_equal(kvrt_kv_cache_read_block(NULL, 0, 0, 0, buf, bb), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_kv_cache_write_block(NULL, 0, 0, 0, buf, bb), KVRT_ERR_INVALID_ARGUMENT);
    const int32_t pairs[2][2] = {{0, 1}, {2, NB}};
    EXPECT(kvrt_kv_cache_copy_blocks(f->cache, pairs, 2), KVRT_ERR_INVALID_ARGUMENT, "destination block 6");
    const int32_t neg[1][2] = {{-3, 1}};
    EXPECT(kvrt_kv_cache_copy_blocks(f->cache, neg, 1), KVRT_ERR_INVALID_ARGUMENT, "source block -3");
    EXPECT(kvrt_kv_cache_copy_blocks(f->cache, NULL, 1), KVRT_ERR_INVALID_ARGUMENT, "src_dst is NULL");
    EXPECT(kvrt_kv_cache_copy_blocks(f->cache, pairs, -1), KVRT_ERR_INVALID_ARGUMENT, "n_pairs -1");
    assert_int_equal(kvrt_kv_cache_copy_blocks(f->cache, NULL, 0), KVRT_OK);
    assert_int_equal(kvrt_kv_cache_copy_blocks(NULL, pairs, 1), KVRT_ERR_INVALID_ARGUMENT);
}

/* The front door checks the views and strides of a backend entry (CPU here). */
static void test_backend_view_checks(void **state)
{
    fixture *f = *state;
    kvrt_backend *be = ((struct kvrt_context *)f->ctx)->be;
    kvrt_kv_pool_desc pd = {1, KV, HD, BS, NB, .dtype = KVRT_DTYPE_F32};
    kvrt_kv_pool *pool = NULL;
    assert_int_equal(kvrt_op_kv_pool_create(be, &pd, &pool), KVRT_OK);
    kvrt_buffer *small = NULL, *big = NULL;
    assert_int_equal(kvrt_op_buffer_create(be, 16, KVRT_BUFFER_DEVICE, &small), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, 4096, KVRT_BUFFER_DEVICE, &big), KVRT_OK);
    memset(kvrt_buffer_head_of(big)->host, 0, 4096);
    int32_t *ints = kvrt_buffer_head_of(big)->host;
    ints[0] = 5; /* seq_lens[0] at offset 0; table row at offset 64 */
    ints[16] = 1;
    kvrt_view vs = {small, 0}, vb = {big, 0}, lens = {big, 0}, table = {big, 64}, q = {big, 1024};
    kvrt_attn_desc d = {1, H, 1, 0.5f, 0, 0, H * HD, H * HD, 1, 0};
    assert_int_equal(kvrt_op_attn_decode(be, pool, 0, &d, q, kvrt_view_at(vb, 2048), lens, table), KVRT_OK);
    assert_int_equal(kvrt_op_attn_decode(be, pool, 0, &d, vs, kvrt_view_at(vb, 2048), lens, table),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "q: 128 bytes at offset 0 exceed the buffer (16 bytes)"));
    assert_int_equal(kvrt_op_attn_decode(be, pool, 0, &d, q, kvrt_view_at(vb, 4000), lens, table),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "out"));
    d.q_stride = H * HD - 1;
    assert_int_equal(kvrt_op_attn_decode(be, pool, 0, &d, q, kvrt_view_at(vb, 2048), lens, table),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "stride 31 < row length 32"));
    d.q_stride = H * HD;
    d.num_seqs = 2000; /* the seq_lens array would not fit */
    assert_int_equal(kvrt_op_attn_decode(be, pool, 0, &d, q, vb, lens, table), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "seq_lens"));
    d.num_seqs = 1;
    assert_int_equal(kvrt_op_attn_prefill(be, pool, 0, &d, q, vb, kvrt_view_at(vs, 12), lens, table),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "query_start_loc"));
    assert_int_equal(kvrt_op_attn_decode(be, pool, 1, &d, q, vb, lens, table), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "layer 1"));
    assert_int_equal(kvrt_op_kv_write(be, pool, 0, vs, KV * HD, vb, KV * HD, table, 1), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "kv write: k"));
    assert_int_equal(kvrt_op_kv_write(be, pool, 0, vb, KV * HD - 2, vb, KV * HD, table, 1),
                     KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(be->err.message, "strides"));
    kvrt_op_buffer_destroy(be, small);
    kvrt_op_buffer_destroy(be, big);
    kvrt_op_kv_pool_destroy(be, pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_write_errors),
        cmocka_unit_test(test_decode_errors),
        cmocka_unit_test(test_prefill_errors),
        cmocka_unit_test(test_block_errors),
        cmocka_unit_test(test_backend_view_checks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
