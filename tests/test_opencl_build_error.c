/* OpenCL on PoCL: a kernel the driver rejects gives KVRT_ERR_KERNEL_BUILD with
 * the compiler's log in the message, and the backend recovers.
 *
 * Its own program because of a sanitizer quirk: after PoCL's compiler reports
 * an error, a module it unloaded leaves a stale dynamic-TLS entry, and
 * LeakSanitizer crashes walking it at exit. Not scanning TLS avoids that; kvrt
 * keeps nothing in thread-local storage, so no kvrt leak can hide there. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "backend/opencl/cl_internal.h"
#include "test_opencl_util.h"

const char *__lsan_default_options(void);
const char *__lsan_default_options(void)
{
    return "use_tls=0";
}

static void test_kernel_build_error(void **state)
{
    (void)state;
    kvrt_context *ctx = cl_test_context(0);
    assert_non_null(ctx);
    kvrt_backend *be = ((struct kvrt_context *)ctx)->be;
    kvrt_cl_test_override_source(be, KVRT_CL_PROG_KV,
                                 "__kernel void kv_write(__global float *x) { x[0] = kvrt_undeclared_thing; }\n");
    cl_kernel k;
    assert_int_equal(kvrt_cl_kernel(kvrt_cl(be), KVRT_CL_PROG_KV, KVRT_CL_VARIANT_F32, 0, &k),
                     KVRT_ERR_KERNEL_BUILD);
    assert_null(k);
    const char *msg = kvrt_context_message(ctx);
    assert_non_null(strstr(msg, "kv.cl"));
    assert_non_null(strstr(msg, "build log"));
    assert_non_null(strstr(msg, "kvrt_undeclared_thing")); /* the compiler's own words */

    /* a source that builds but lacks a kernel the backend needs */
    kvrt_cl_test_override_source(be, KVRT_CL_PROG_KV, "__kernel void other(__global float *x) { x[0] = 1.0f; }\n");
    assert_int_equal(kvrt_cl_kernel(kvrt_cl(be), KVRT_CL_PROG_KV, KVRT_CL_VARIANT_F32, 0, &k),
                     KVRT_ERR_KERNEL_BUILD);
    assert_non_null(strstr(kvrt_context_message(ctx), "kv_write"));

    /* the real source builds afterwards */
    kvrt_cl_test_override_source(be, KVRT_CL_PROG_KV, NULL);
    assert_int_equal(kvrt_cl_kernel(kvrt_cl(be), KVRT_CL_PROG_KV, KVRT_CL_VARIANT_F32, 0, &k), KVRT_OK);
    assert_non_null(k);
    kvrt_context_destroy(ctx);
}

int main(void)
{
    cl_test_env();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernel_build_error),
    };
    return cmocka_run_group_tests_name("opencl kernel build errors", tests, NULL, NULL);
}
