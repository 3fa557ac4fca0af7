/* The backend interface around the backends: registration (interface
 * version, mandatory entries), the front door's rules (a NULL entry is
 * KVRT_ERR_UNSUPPORTED, arguments are checked before a backend sees them,
 * backends that run ops at once are timed on the host), and the KV layout
 * module (dtype descriptors, block bytes with in-block scales, the batch
 * check). Runs on a fake backend defined here, so nothing depends on a device. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ops.h"

/* ---- a fake backend: host buffers, one kernel (add), counts its calls ---- */

struct kvrt_buffer {
    kvrt_buffer_head head;
};

typedef struct fake_backend {
    kvrt_backend base;
    int adds; /* add entry calls that reached the backend */
} fake_backend;

static int g_destroyed; /* backends destroyed (the object is gone by then) */

static void fake_destroy(kvrt_backend *be)
{
    g_destroyed++;
    free(be);
}

static kvrt_status fake_buffer_create(kvrt_backend *be, size_t size, unsigned flags, kvrt_buffer **out)
{
    kvrt_buffer *b = calloc(1, sizeof(*b));
    b->head.size = size;
    b->head.host = calloc(1, size ? size : 1);
    *out = b;
    return KVRT_OK;
}

static void fake_buffer_destroy(kvrt_backend *be, kvrt_buffer *b)
{
    free(b->head.host);
    free(b);
}

static kvrt_status fake_upload(kvrt_backend *be, kvrt_buffer *dst, size_t off, const void *src, size_t size)
{
    memcpy((char *)dst->head.host + off, src, size);
    return KVRT_OK;
}

static kvrt_status fake_download(kvrt_backend *be, kvrt_buffer *src, size_t off, void *dst, size_t size)
{
    memcpy(dst, (char *)src->head.host + off, size);
    return KVRT_OK;
}

static kvrt_status fake_step(kvrt_backend *be)
{
    return KVRT_OK;
}

static void fake_abort(kvrt_backend *be)
{
}

static void fake_limits(kvrt_backend *be, kvrt_context_limits *out)
{
    out->decode_head_dim_max = out->prefill_head_dim_max = INT32_MAX;
    out->max_table_entries = INT64_MAX;
    out->max_seq_len = INT32_MAX;
}

static kvrt_status fake_add(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n)
{
    ((fake_backend *)be)->adds++;
    const float *x = (const float *)((char *)a.buf->head.host + a.offset);
    const float *y = (const float *)((char *)b.buf->head.host + b.offset);
    float *o = (float *)((char *)out.buf->head.host + out.offset);
    for (int64_t i = 0; i < n; i++)
        o[i] = x[i] + y[i];
    return KVRT_OK;
}

static const kvrt_backend_ops fake_ops = {
    .interface_version = KVRT_BACKEND_INTERFACE_VERSION,
    .name = "fake",
    .runs_at_once = true,
    .destroy = fake_destroy,
    .buffer_create = fake_buffer_create,
    .buffer_destroy = fake_buffer_destroy,
    .buffer_upload = fake_upload,
    .buffer_download = fake_download,
    .begin = fake_step,
    .submit = fake_step,
    .abort = fake_abort,
    .limits = fake_limits,
    .add = fake_add,
};

static kvrt_backend *fake_new(const kvrt_backend_ops *ops)
{
    fake_backend *f = calloc(1, sizeof(*f));
    f->base.ops = ops;
    return &f->base;
}

static kvrt_context *fake_context(void)
{
    kvrt_context_params p = kvrt_context_default_params();
    kvrt_context *ctx = NULL;
    assert_int_equal(kvrt_context_adopt(fake_new(&fake_ops), &p, &ctx, NULL), KVRT_OK);
    return ctx;
}

/* ---- registration ---- */

static void test_registration_checks_version_and_entries(void **state)
{
    (void)state;
    kvrt_context_params p = kvrt_context_default_params();
    kvrt_context *ctx = (kvrt_context *)&p;
    kvrt_error err;
    kvrt_backend_ops old = fake_ops;
    old.interface_version = KVRT_BACKEND_INTERFACE_VERSION - 1;
    g_destroyed = 0;
    assert_int_equal(kvrt_context_adopt(fake_new(&old), &p, &ctx, &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_null(ctx);
    assert_non_null(strstr(err.message, "fake backend implements interface version 2; this kvrt needs 3"));
    assert_int_equal(g_destroyed, 1); /* a refused backend is not leaked */
    kvrt_backend_ops no_submit = fake_ops;
    no_submit.submit = NULL;
    assert_int_equal(kvrt_context_adopt(fake_new(&no_submit), &p, &ctx, &err), KVRT_ERR_BACKEND_UNAVAILABLE);
    assert_non_null(strstr(err.message, "mandatory entry submit"));
    assert_int_equal(g_destroyed, 2);
    ctx = fake_context();
    assert_non_null(ctx);
    kvrt_context_destroy(ctx);
    assert_int_equal(g_destroyed, 3);
}

/* ---- the front door ---- */

static void test_null_entry_is_unsupported(void **state)
{
    (void)state;
    kvrt_context *ctx = fake_context();
    kvrt_backend *be = ctx->be;
    kvrt_buffer *b;
    assert_int_equal(kvrt_op_buffer_create(be, 256, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    kvrt_view v = {b, 0};
    assert_int_equal(kvrt_op_rmsnorm(be, v, 8, v, kvrt_view_at(v, 128), 8, 1, 8, 1e-5f), KVRT_ERR_UNSUPPORTED);
    assert_string_equal(kvrt_context_message(ctx), "fake backend does not implement rmsnorm");
    assert_int_equal(kvrt_op_matmul(be, KVRT_DTYPE_F32, v, 2, 8, v, 8, kvrt_view_at(v, 128), 2, 1),
                     KVRT_ERR_UNSUPPORTED);
    kvrt_buffer *wrapped = b; /* a failed call leaves NULL, never a stale buffer */
    assert_int_equal(kvrt_op_buffer_wrap_host(be, b, 4, &wrapped), KVRT_ERR_UNSUPPORTED);
    assert_null(wrapped);
    assert_int_equal(kvrt_op_save_caches(be), KVRT_OK); /* nothing to save */
    kvrt_kv_pool *pool = NULL;
    kvrt_kv_pool_desc pd = {1, 1, 8, 8, 4, .dtype = KVRT_DTYPE_F32};
    assert_int_equal(kvrt_op_kv_pool_create(be, &pd, &pool), KVRT_ERR_UNSUPPORTED);
    /* a bad shape is reported as bad before the missing entry */
    pd.block_size = 0;
    assert_int_equal(kvrt_op_kv_pool_create(be, &pd, &pool), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_context_message(ctx), "block_size 0"));
    kvrt_op_buffer_destroy(be, b);
    kvrt_context_destroy(ctx);
}

/* Bad arguments never reach the backend; good ones do, timed on the host. */
static void test_checked_then_called_and_timed(void **state)
{
    (void)state;
    kvrt_context *ctx = fake_context();
    kvrt_backend *be = ctx->be;
    fake_backend *f = (fake_backend *)be;
    kvrt_buffer *b;
    assert_int_equal(kvrt_op_buffer_create(be, 64 * sizeof(float), KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    float x[64];
    for (int i = 0; i < 64; i++)
        x[i] = (float)i;
    assert_int_equal(kvrt_op_buffer_upload(be, b, 0, x, sizeof(x)), KVRT_OK);
    kvrt_view a = {b, 0}, o = {b, 32 * sizeof(float)};
    assert_int_equal(kvrt_op_add(be, a, a, o, 33), KVRT_ERR_INVALID_ARGUMENT); /* out runs past the buffer */
    assert_non_null(strstr(kvrt_context_message(ctx), "add: out"));
    assert_int_equal(kvrt_op_add(be, a, a, kvrt_view_at(a, 4), 16), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_context_message(ctx), "partly overlaps"));
    assert_int_equal(kvrt_op_add(be, a, kvrt_view_at(a, 2), o, 4), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_context_message(ctx), "aligned"));
    assert_int_equal(kvrt_op_buffer_upload(be, b, 250, x, 8), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(f->adds, 0);
    assert_int_equal(kvrt_op_add(be, a, a, a, 0), KVRT_OK); /* empty: nothing to run */
    assert_int_equal(f->adds, 0);

    assert_int_equal(kvrt_context_set_profiling(ctx, 1), KVRT_OK); /* no entry needed: the front door times it */
    assert_int_equal(kvrt_op_add(be, a, a, o, 32), KVRT_OK);
    assert_int_equal(kvrt_op_add(be, o, o, o, 32), KVRT_OK); /* exactly in place */
    assert_int_equal(f->adds, 2);
    kvrt_profile_entry e[4];
    assert_int_equal(kvrt_context_profile(ctx, e, 4), 1);
    assert_string_equal(e[0].op, "add");
    assert_int_equal(e[0].calls, 2);
    float got[32];
    assert_int_equal(kvrt_op_buffer_download(be, b, 32 * sizeof(float), got, sizeof(got)), KVRT_OK);
    for (int i = 0; i < 32; i++)
        assert_true(got[i] == 4.0f * (float)i);
    assert_int_equal(kvrt_context_set_profiling(ctx, 0), KVRT_OK);
    assert_int_equal(kvrt_op_add(be, a, a, o, 32), KVRT_OK);
    assert_int_equal(kvrt_context_profile(ctx, e, 4), 1);
    assert_int_equal(e[0].calls, 2); /* off: not counted */
    kvrt_op_buffer_destroy(be, b);
    kvrt_context_destroy(ctx);
}

/* A recording backend without a profiling entry cannot time its ops. */
static void test_profiling_needs_an_entry_when_recorded(void **state)
{
    (void)state;
    kvrt_backend_ops recorded = fake_ops;
    recorded.runs_at_once = false;
    kvrt_context_params p = kvrt_context_default_params();
    kvrt_context *ctx;
    assert_int_equal(kvrt_context_adopt(fake_new(&recorded), &p, &ctx, NULL), KVRT_OK);
    assert_int_equal(kvrt_context_set_profiling(ctx, 1), KVRT_ERR_UNSUPPORTED);
    assert_int_equal(kvrt_context_set_profiling(ctx, 0), KVRT_OK);
    kvrt_context_destroy(ctx);
}

/* ---- the KV layout module ---- */

static void test_kv_dtypes_and_block_bytes(void **state)
{
    (void)state;
    assert_non_null(kvrt_kv_dtype(KVRT_DTYPE_F32));
    assert_non_null(kvrt_kv_dtype(KVRT_DTYPE_F16));
    assert_non_null(kvrt_kv_dtype(KVRT_DTYPE_Q8_0));
    assert_non_null(kvrt_kv_dtype(KVRT_DTYPE_Q4_0));
    assert_null(kvrt_kv_dtype(KVRT_DTYPE_BF16)); /* a weight type only */
    kvrt_kv_pool_desc d = {2, 4, 64, 16, 10, .dtype = KVRT_DTYPE_F16};
    assert_int_equal(kvrt_kv_block_bytes(&d), 4 * 16 * 64 * 2);
    d.dtype = KVRT_DTYPE_F32;
    assert_int_equal(kvrt_kv_block_bytes(&d), 4 * 16 * 64 * 4);
    /* a dtype with in-block scales (q8_0 KV): values, then one
     * 2-byte scale per 32 values of every row */
    kvrt_kv_dtype_desc q8 = {KVRT_DTYPE_Q8_0, 8, KVRT_KV_SCALES_IN_BLOCK, 32, 2};
    assert_int_equal(kvrt_kv_dtype_block_bytes(&q8, 4, 16, 64), 4 * 16 * 64 + 4 * 16 * 2 * 2);
    assert_int_equal(kvrt_kv_dtype_block_bytes(&q8, 4, 16, 48), 0); /* not whole groups */
    kvrt_kv_dtype_desc q4 = {KVRT_DTYPE_Q4_0, 4, KVRT_KV_SCALES_IN_BLOCK, 32, 2};
    assert_int_equal(kvrt_kv_dtype_block_bytes(&q4, 1, 8, 32), 8 * 16 + 8 * 2);
    kvrt_error err;
    assert_int_equal(kvrt_kv_check_dtype(&err, KVRT_DTYPE_BF16), KVRT_ERR_INVALID_ARGUMENT);
    assert_string_equal(err.message, "dtype bf16 is not supported as a KV type (f32, f16, q8_0, q4_0, fp8, fp8_e5m2)");
    kvrt_kv_pool_desc huge = {4, 1 << 20, 1 << 20, 32, INT32_MAX / 32, .dtype = KVRT_DTYPE_F32};
    assert_int_equal(kvrt_kv_check_pool_desc(&err, &huge), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "overflow"));
}

static void test_visibility_rule(void **state)
{
    (void)state;
    /* query 10, window 4, sinks 2: keys 0, 1 and 7..10 */
    for (int32_t j = 0; j <= 12; j++)
        assert_int_equal(kvrt_kv_visible(10, j, 4, 2), j < 2 || (j >= 7 && j <= 10));
    int32_t r[2][2];
    assert_int_equal(kvrt_attn_visible_ranges(10, 10, 4, 2, r), 2);
    assert_int_equal(r[0][0], 0);
    assert_int_equal(r[0][1], 2);
    assert_int_equal(r[1][0], 7);
    assert_int_equal(r[1][1], 11);
    assert_int_equal(kvrt_attn_visible_ranges(3, 5, 0, 0, r), 1);
    assert_int_equal(r[0][1], 6);
}

/* One step's batch is checked as a whole, every error named. */
static void test_batch_check(void **state)
{
    (void)state;
    kvrt_kv_pool_desc pd = {1, 2, 8, 8, 4, .dtype = KVRT_DTYPE_F32};
    /* a decode (sequence 0, 9 long) then a prefill of 3 tokens (sequence 1, 3 long) */
    int32_t tokens[4] = {1, 2, 3, 4}, pos[4] = {8, 0, 1, 2}, slots[4] = {16, 0, 1, 2};
    int32_t qsl[3] = {0, 1, 4}, lens[2] = {9, 3}, tables[2][2] = {{1, 2}, {0, -1}}, logits[2] = {0, 3};
    kvrt_batch b = {2, 1, 4, tokens, pos, slots, qsl, lens, &tables[0][0], 2, logits, 2, NULL};
    kvrt_error err;
    assert_int_equal(kvrt_batch_num_decodes(&b), 1);
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_OK);
    slots[2] = 32;
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "slot_mapping[2] = 32 outside the pool"));
    slots[2] = 1;
    tables[0][1] = 4;
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "block_tables[0][1] = 4 outside [0, 4)"));
    tables[0][1] = 2;
    tables[1][0] = -1;
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "block_tables[1][0] = -1 but positions 0..7 of sequence 1 are visible"));
    tables[1][0] = 0;
    lens[0] = 17;
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_ERR_CONTEXT_OVERFLOW);
    lens[0] = 9;
    logits[1] = 4;
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "logits index 4 outside [0, 4)"));
    logits[1] = 3;
    qsl[2] = 3;
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "query_start_loc must run from 0 to num_tokens"));
    qsl[2] = 4;
    b.num_decode_seqs = 2; /* sequence 1 has three new tokens */
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "2 decodes, but only the first 1"));
    b.num_decode_seqs = 1;
    assert_int_equal(kvrt_batch_check(&err, &pd, 3, &b), KVRT_ERR_INVALID_ARGUMENT); /* heads % kv heads */
    assert_int_equal(kvrt_batch_check(&err, &pd, 4, &b), KVRT_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registration_checks_version_and_entries),
        cmocka_unit_test(test_null_entry_is_unsupported),
        cmocka_unit_test(test_checked_then_called_and_timed),
        cmocka_unit_test(test_profiling_needs_an_entry_when_recorded),
        cmocka_unit_test(test_kv_dtypes_and_block_bytes),
        cmocka_unit_test(test_visibility_rule),
        cmocka_unit_test(test_batch_check),
    };
    return cmocka_run_group_tests_name("front door", tests, NULL, NULL);
}
