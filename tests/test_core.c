/* Core API: version, status strings, error reporting, contexts. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "kvrt.h"

static void test_version(void **state)
{
    (void)state;
    assert_int_equal(kvrt_version_number(), KVRT_VERSION_NUMBER);
    assert_string_equal(kvrt_version(), "0.1.0");
}

static void test_status_strings_are_distinct(void **state)
{
    (void)state;
    const kvrt_status all[] = {
        KVRT_OK, KVRT_ERR_INVALID_ARGUMENT, KVRT_ERR_UNSUPPORTED, KVRT_ERR_OUT_OF_HOST_MEMORY, KVRT_ERR_IO,
        KVRT_ERR_INTERNAL, KVRT_ERR_OUT_OF_BLOCKS, KVRT_ERR_CONTEXT_OVERFLOW, KVRT_ERR_NO_SUCH_SEQUENCE,
        KVRT_ERR_BAD_MODEL, KVRT_ERR_BAD_TOKENIZER, KVRT_ERR_BAD_TOKEN, KVRT_ERR_BACKEND_UNAVAILABLE,
        KVRT_ERR_OUT_OF_DEVICE_MEMORY, KVRT_ERR_KERNEL_BUILD, KVRT_ERR_DEVICE_LOST, KVRT_ERR_REQUEST_REJECTED,
        KVRT_ERR_CANCELLED};
    size_t n = sizeof(all) / sizeof(all[0]);
    for (size_t i = 0; i < n; i++) {
        assert_string_not_equal(kvrt_status_str(all[i]), "unknown status");
        for (size_t j = 0; j < i; j++)
            assert_string_not_equal(kvrt_status_str(all[i]), kvrt_status_str(all[j]));
    }
    assert_string_equal(kvrt_status_str((kvrt_status)12345), "unknown status");
}

static void test_cpu_context(void **state)
{
    (void)state;
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = 2;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_context_create(&p, &ctx, &err), KVRT_OK);
    assert_non_null(ctx);
    assert_non_null(strstr(kvrt_context_description(ctx), "cpu: 2 threads"));
    kvrt_context_destroy(ctx);
    kvrt_context_destroy(NULL);
}

static void test_context_bad_arguments(void **state)
{
    (void)state;
    kvrt_context_params p = kvrt_context_default_params();
    kvrt_context *ctx = (kvrt_context *)&p; /* must be reset to NULL */
    kvrt_error err;
    p.n_threads = -3;
    assert_int_equal(kvrt_context_create(&p, &ctx, &err), KVRT_ERR_INVALID_ARGUMENT);
    assert_null(ctx);
    assert_int_equal(err.status, KVRT_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(err.message, "n_threads"));
    p.n_threads = 1;
    p.backend = (kvrt_backend_kind)77;
    assert_int_equal(kvrt_context_create(&p, &ctx, NULL), KVRT_ERR_INVALID_ARGUMENT);
    assert_int_equal(kvrt_context_create(&p, NULL, &err), KVRT_ERR_INVALID_ARGUMENT);
}

static void test_backend_names(void **state)
{
    (void)state;
    kvrt_backend_kind k;
    assert_int_equal(kvrt_backend_parse("vulkan", &k), KVRT_OK);
    assert_int_equal(k, KVRT_BACKEND_VULKAN);
    assert_int_equal(kvrt_backend_parse("cuda", &k), KVRT_ERR_INVALID_ARGUMENT);
    assert_string_equal(kvrt_backend_name(KVRT_BACKEND_OPENCL), "opencl");
    assert_string_equal(kvrt_dtype_name(KVRT_DTYPE_Q8_0), "q8_0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_status_strings_are_distinct),
        cmocka_unit_test(test_cpu_context),
        cmocka_unit_test(test_context_bad_arguments),
        cmocka_unit_test(test_backend_names),
    };
    return cmocka_run_group_tests_name("core", tests, NULL, NULL);
}
