/* Per-op profiling (kvrt_context_set_profiling): a stories260K prefill +
 * decode on the CPU and on Vulkan (lavapipe, validation layer on) reports
 * every op of the Llama forward with the call count the graph implies and a
 * nonzero time; off accumulates nothing, reset clears, bad arguments get
 * clear errors; Vulkan's query pools grow past one pool within a step;
 * OpenCL says it cannot. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "backend/backend.h"
#include "test_drivers.h"
#include "test_models.h"
#if defined(KVRT_HAVE_VULKAN_BACKEND)
#include "backend/vulkan/vk_backend.h"
#endif

#define MAX_ENTRIES 24

typedef struct expect {
    const char *op;
    int64_t calls;
} expect;

/* Prefill of 5 tokens then one decode token: what the forward records per
 * step (runtime/model/llama.c): the batch arrays' upload; embed; per layer
 * rmsnorm x2, matmul x7 (q k v o gate up down), rope x2, kv_write, one
 * attention, add x2, swiglu; then gather_rows, rmsnorm, matmul for the
 * logits, and their download. Vulkan records the two transfers into the step
 * and times them; on the CPU they are plain copies, not ops. */
static int expected_forward(int32_t L, bool recorded_transfers, expect *e)
{
    const expect x[] = {
        {"upload", 2}, {"download", 2}, {"embed", 2}, {"rmsnorm", 2 * (2 * L + 1)}, {"matmul", 2 * (7 * L + 1)}, {"rope", 4 * L},
        {"kv_write", 2 * L}, {"attn_prefill", L}, {"attn_decode", L}, {"add", 4 * L},
        {"swiglu", 2 * L}, {"gather_rows", 2},
    };
    size_t skip = recorded_transfers ? 0 : 2;
    memcpy(e, x + skip, sizeof(x) - skip * sizeof(x[0]));
    return (int)(KVRT_ARRAY_LEN(x) - skip);
}

static void run_forward(kvrt_context *ctx, int32_t *n_layer)
{
    kvrt_model *m = NULL;
    kvrt_session *s = kvrt_test_open_session(ctx, "stories260K.gguf", 64, &m);
    kvrt_model_info info;
    assert_int_equal(kvrt_model_get_info(m, &info), KVRT_OK);
    *n_layer = info.n_layer;
    static float logits[512 * 4];
    assert_true(info.n_vocab <= 512 * 4);
    const int32_t prompt[5] = {1, 403, 407, 261, 378};
    assert_int_equal(kvrt_session_eval(s, prompt, 5, logits, NULL), KVRT_OK);
    const int32_t next = 300;
    assert_int_equal(kvrt_session_eval(s, &next, 1, logits, NULL), KVRT_OK);
    kvrt_session_destroy(s);
    kvrt_model_destroy(m);
}

static const kvrt_profile_entry *find(const kvrt_profile_entry *e, int32_t n, const char *op)
{
    for (int32_t i = 0; i < n; i++)
        if (strcmp(e[i].op, op) == 0)
            return &e[i];
    return NULL;
}

/* Profiling on: every expected op, exact calls, nonzero times, nothing else, sorted. */
static void check_forward_profile(kvrt_context *ctx, bool recorded_transfers)
{
    kvrt_context_profile_reset(ctx);
    assert_int_equal(kvrt_context_set_profiling(ctx, 1), KVRT_OK);
    int32_t L = 0;
    run_forward(ctx, &L);
    assert_true(L > 0);
    expect ex[16];
    int n_ex = expected_forward(L, recorded_transfers, ex);
    kvrt_profile_entry e[MAX_ENTRIES];
    int32_t n = kvrt_context_profile(ctx, e, MAX_ENTRIES);
    assert_int_equal(n, n_ex);
    for (int i = 0; i < n_ex; i++) {
        const kvrt_profile_entry *got = find(e, n, ex[i].op);
        if (!got)
            fail_msg("op %s missing from the profile", ex[i].op);
        if ((int64_t)got->calls != ex[i].calls)
            fail_msg("op %s: %llu calls, expected %lld", ex[i].op, (unsigned long long)got->calls,
                     (long long)ex[i].calls);
        if (got->total_ns == 0)
            fail_msg("op %s: zero time over %llu calls", ex[i].op, (unsigned long long)got->calls);
    }
    for (int32_t i = 1; i < n; i++)
        assert_true(e[i - 1].total_ns >= e[i].total_ns);

    /* off: a second forward adds nothing */
    assert_int_equal(kvrt_context_set_profiling(ctx, 0), KVRT_OK);
    kvrt_profile_entry before[MAX_ENTRIES];
    memcpy(before, e, sizeof(e));
    run_forward(ctx, &L);
    assert_int_equal(kvrt_context_profile(ctx, e, MAX_ENTRIES), n);
    for (int32_t i = 0; i < n; i++) {
        assert_string_equal(e[i].op, before[i].op);
        assert_int_equal(e[i].calls, before[i].calls);
        assert_int_equal(e[i].total_ns, before[i].total_ns);
    }

    /* a small cap copies the largest entries only and still returns the count */
    kvrt_profile_entry two[3];
    memset(two, 0, sizeof(two));
    assert_int_equal(kvrt_context_profile(ctx, two, 2), n);
    assert_string_equal(two[0].op, e[0].op);
    assert_string_equal(two[1].op, e[1].op);
    assert_null(two[2].op);
    assert_int_equal(kvrt_context_profile(ctx, NULL, 0), n);

    kvrt_context_profile_reset(ctx);
    assert_int_equal(kvrt_context_profile(ctx, e, MAX_ENTRIES), 0);
}

static void bad_arguments(kvrt_context *ctx)
{
    assert_int_equal(kvrt_context_set_profiling(NULL, 1), KVRT_ERR_INVALID_ARGUMENT);
    kvrt_profile_entry e[2];
    assert_int_equal(kvrt_context_profile(NULL, e, 2), -1);
    kvrt_context_profile_reset(NULL); /* a no-op */
    assert_int_equal(kvrt_context_profile(ctx, e, -1), -1);
    assert_non_null(strstr(kvrt_context_message(ctx), "cap < 0"));
    assert_int_equal(kvrt_context_profile(ctx, NULL, 2), -1);
    assert_non_null(strstr(kvrt_context_message(ctx), "out is NULL"));
}

static void test_cpu(void **state)
{
    (void)state;
    kvrt_context_params cp = kvrt_context_default_params();
    cp.n_threads = 1;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    if (kvrt_context_create(&cp, &ctx, &err) != KVRT_OK)
        fail_msg("cpu context: %s", err.message);
    /* off by default: nothing accumulates */
    int32_t L;
    run_forward(ctx, &L);
    assert_int_equal(kvrt_context_profile(ctx, NULL, 0), 0);
    check_forward_profile(ctx, false);
    bad_arguments(ctx);
    kvrt_context_destroy(ctx);
}

#if defined(KVRT_HAVE_VULKAN_BACKEND)
/* A context around a backend made with the validation layer on. */
static kvrt_backend *vk_open(kvrt_context *ctx)
{
    kvrt_backend *be = kvrt_test_vk_open(0, 0, 0);
    assert_non_null(be);
    *ctx = (kvrt_context){.be = be};
    return be;
}

static void test_vulkan_forward(void **state)
{
    (void)state;
    kvrt_context ctx;
    kvrt_backend *be = vk_open(&ctx);
    int32_t L;
    run_forward(&ctx, &L);
    assert_int_equal(kvrt_context_profile(&ctx, NULL, 0), 0);
    check_forward_profile(&ctx, true);
    bad_arguments(&ctx);
    assert_int_equal(kvrt_test_vk_close(be), 0);
}

/* More stamps in one step than one query pool holds; a copy is its own op;
 * a standalone op (its own implicit step) is timed too; profiling cannot
 * change while a step is open. */
static void test_vulkan_many_ops(void **state)
{
    (void)state;
    kvrt_context ctx;
    kvrt_backend *be = vk_open(&ctx);
    const kvrt_backend_ops *o = be->ops;
    enum { N = 64, N_ADDS = 600 };
    kvrt_buffer *a, *b;
    assert_int_equal(o->buffer_create(be, N * 4, KVRT_BUFFER_DEVICE, &a), KVRT_OK);
    assert_int_equal(o->buffer_create(be, N * 4, KVRT_BUFFER_DEVICE, &b), KVRT_OK);
    float ones[N], got[N];
    for (int i = 0; i < N; i++)
        ones[i] = 1.0f;
    assert_int_equal(o->buffer_upload(be, a, 0, ones, sizeof(ones)), KVRT_OK);
    assert_int_equal(o->buffer_upload(be, b, 0, ones, sizeof(ones)), KVRT_OK);
    assert_int_equal(kvrt_context_set_profiling(&ctx, 1), KVRT_OK);

    assert_int_equal(o->begin(be), KVRT_OK);
    assert_int_equal(kvrt_context_set_profiling(&ctx, 0), KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(kvrt_context_message(&ctx), "step is open"));
    for (int i = 0; i < N_ADDS; i++) /* b += a */
        assert_int_equal(o->add(be, (kvrt_view){b, 0}, (kvrt_view){a, 0}, (kvrt_view){b, 0}, N), KVRT_OK);
    assert_int_equal(o->buffer_copy(be, b, 0, a, 0, sizeof(ones)), KVRT_OK);
    assert_int_equal(o->submit(be), KVRT_OK);
    assert_int_equal(o->add(be, (kvrt_view){a, 0}, (kvrt_view){a, 0}, (kvrt_view){a, 0}, N), KVRT_OK);
    assert_int_equal(o->buffer_download(be, a, 0, got, sizeof(got)), KVRT_OK);
    assert_true(got[0] == 2.0f * (1.0f + N_ADDS)); /* the work itself ran as recorded */

    kvrt_profile_entry e[MAX_ENTRIES];
    assert_int_equal(kvrt_context_profile(&ctx, e, MAX_ENTRIES), 2);
    const kvrt_profile_entry *add = find(e, 2, "add"), *copy = find(e, 2, "copy");
    assert_non_null(add);
    assert_non_null(copy);
    assert_int_equal(add->calls, N_ADDS + 1);
    assert_int_equal(copy->calls, 1);
    assert_true(add->total_ns > 0);
    assert_true(copy->total_ns > 0);

    o->buffer_destroy(be, a);
    o->buffer_destroy(be, b);
    assert_int_equal(kvrt_test_vk_close(be), 0);
}
#endif

#if defined(KVRT_HAVE_OPENCL_BACKEND)
static void test_opencl_unsupported(void **state)
{
    (void)state;
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = KVRT_BACKEND_OPENCL;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    if (kvrt_context_create(&cp, &ctx, &err) != KVRT_OK)
        fail_msg("opencl context: %s", err.message);
    assert_int_equal(kvrt_context_set_profiling(ctx, 1), KVRT_ERR_UNSUPPORTED);
    assert_non_null(strstr(kvrt_context_message(ctx), "profiling"));
    assert_int_equal(kvrt_context_profile(ctx, NULL, 0), 0);
    kvrt_context_destroy(ctx);
}
#endif

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu),
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        cmocka_unit_test(test_vulkan_forward),
        cmocka_unit_test(test_vulkan_many_ops),
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
        cmocka_unit_test(test_opencl_unsupported),
#endif
    };
    return cmocka_run_group_tests_name("profile", tests, NULL, NULL);
}
