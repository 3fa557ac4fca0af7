#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend/backend.h"
#include "test_drivers.h"
#include "test_passes.h"
#include "ref_kvquant.h"

#if defined(KVRT_HAVE_VULKAN_BACKEND)
#include "backend/vulkan/vk_backend.h"
#endif

static const struct {
    const char *name;
    kvrt_backend_kind kind;
    int32_t n_threads;    /* CPU */
    uint32_t disabled;    /* KVRT_FEATURE_* masked */
    int same_bits_as;
    bool quant_kv;
} PASSES[] = {
    /* the thread count changes no bit, OpenBLAS's products included where
     * this machine's core lets kvrt use it (cpu_blas.h) */
    {"cpu/1", KVRT_BACKEND_CPU, 1, 0, -1, true},
    {"cpu/2", KVRT_BACKEND_CPU, 2, 0, 0, true},
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    {"vulkan/all", KVRT_BACKEND_VULKAN, 0, 0, -1, true},
    {"vulkan/none", KVRT_BACKEND_VULKAN, 0, KVRT_TEST_ALL_FEATURES, -1, true},
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    {"opencl", KVRT_BACKEND_OPENCL, 0, 0, -1, true},
#endif
};

_Static_assert(sizeof(PASSES) / sizeof(PASSES[0]) <= KVRT_TEST_MAX_PASSES, "room for every pass");

static kvrt_context *open_pass(size_t i)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = PASSES[i].kind;
    p.n_threads = PASSES[i].n_threads;
    if (PASSES[i].kind == KVRT_BACKEND_CPU)
        p.disabled_features = PASSES[i].disabled;
    kvrt_context *ctx = NULL;
    kvrt_error err = {0};
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    if (PASSES[i].kind == KVRT_BACKEND_VULKAN) { /* the validation layer on */
        kvrt_backend *be = kvrt_test_vk_open(PASSES[i].disabled, 0, 0);
        if (be && kvrt_context_adopt(be, &p, &ctx, &err) == KVRT_OK)
            return ctx;
        fprintf(stderr, "%s: the backend is built in but cannot start: %s\n", PASSES[i].name, err.message);
        return NULL;
    }
#endif
    if (PASSES[i].kind == KVRT_BACKEND_OPENCL) { /* PoCL's kernel cache in the build tree */
        const char *build = getenv("KVRT_BUILD_DIR");
        char dir[1024];
        snprintf(dir, sizeof(dir), "%s/pocl-cache", build ? build : ".");
        mkdir(dir, 0775);
        setenv("POCL_CACHE_DIR", dir, 0);
    }
    if (kvrt_context_create(&p, &ctx, &err) != KVRT_OK)
        fprintf(stderr, "%s: the backend is built in but cannot start: %s\n", PASSES[i].name, err.message);
    return ctx;
}

kvrt_context *kvrt_test_pass_open(int i)
{
    return i >= 0 && (size_t)i < sizeof(PASSES) / sizeof(PASSES[0]) ? open_pass((size_t)i) : NULL;
}

kvrt_test_pass kvrt_test_pass_list[KVRT_TEST_MAX_PASSES];
int kvrt_test_n_passes;

int kvrt_test_passes_setup(void **state)
{
    (void)state;
    kvrt_test_pin_gpu_drivers();
    kvrt_test_pass *out = kvrt_test_pass_list;
    int n = 0;
    for (size_t i = 0; i < sizeof(PASSES) / sizeof(PASSES[0]); i++, n++) {
        out[n].name = PASSES[i].name;
        out[n].same_bits_as = PASSES[i].same_bits_as;
        out[n].quant_kv = PASSES[i].quant_kv;
        out[n].ctx = open_pass(i);
        if (!out[n].ctx) { /* CI has lavapipe and PoCL: a built backend that cannot start fails */
            kvrt_test_n_passes = n;
            kvrt_test_passes_teardown(state);
            return -1;
        }
    }
    kvrt_test_n_passes = n;
    return 0;
}

int kvrt_test_passes_teardown(void **state)
{
    (void)state;
    kvrt_test_pass *p = kvrt_test_pass_list;
    int n = kvrt_test_n_passes;
    uint32_t messages = 0;
    for (int i = 0; i < n; i++) {
        if (!p[i].ctx)
            continue;
#if defined(KVRT_HAVE_VULKAN_BACKEND)
        if (p[i].ctx->be->kind == KVRT_BACKEND_VULKAN) {
            char first[512];
            uint32_t m = kvrt_vk_validation_messages(p[i].ctx->be, first, sizeof(first));
            if (m)
                fprintf(stderr, "%s: %u validation messages, first: %s\n", p[i].name, m, first);
            messages += m;
        }
#endif
        kvrt_context_destroy(p[i].ctx);
        p[i].ctx = NULL;
    }
    kvrt_test_n_passes = 0;
    return messages == 0 ? 0 : -1;
}

/* Whether a pass must refuse a case's KV types: q8_0 / q4_0 where it has
 * no quantized KV (every backend stores fp8, fp8_e5m2 and mixed K/V pairs). */
static bool must_refuse(const kvrt_test_pass *pass, const attn_case *c)
{
    return (ref_kv_quantized(c->dtype) || ref_kv_quantized(c->v_dtype)) && !pass->quant_kv;
}

/* A pass without the case's KV types refuses the cache: UNSUPPORTED, naming
 * the types and the backend, never a pool it would fill with garbage. */
static void check_refused(const kvrt_test_pass *pass, const attn_case_data *d, const char *name)
{
    kvrt_kv_cache *cache = NULL;
    kvrt_error err = {0};
    kvrt_status s = attn_case_upload(pass->ctx, d, 2, &cache, &err);
    kvrt_kv_cache_destroy(cache);
    const char *backend = kvrt_backend_name(pass->ctx->be->kind);
    /* a mixed pair is named whole ("K q8_0 / V f16"), one type by its name */
    bool named = strstr(err.message, kvrt_dtype_name(d->c.dtype)) && strstr(err.message, kvrt_dtype_name(d->c.v_dtype));
    if (s != KVRT_ERR_UNSUPPORTED || !named || !strstr(err.message, backend))
        fail_msg("%s on %s: expected UNSUPPORTED naming its KV types and %s, got %s: %s", name, pass->name, backend,
                 kvrt_status_str(s), err.message);
}

void kvrt_test_attn_case_everywhere(const attn_case *c, double *worst_abs, double *worst_nmse)
{
    char name[256], msg[512];
    attn_case_name(c, name, sizeof(name));
    attn_case_data d;
    assert_true(attn_case_build(c, &d));
    size_t n = attn_case_out_len(&d);
    float *out[KVRT_TEST_MAX_PASSES] = {0};
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        const kvrt_test_pass *pass = &kvrt_test_pass_list[p];
        out[p] = malloc(n * sizeof(float) + 1);
        assert_non_null(out[p]);
        attn_check r;
        if (must_refuse(pass, c)) {
            check_refused(pass, &d, name);
            continue;
        }
        bool ok = attn_case_run(pass->ctx, &d, out[p], &r, msg, sizeof(msg));
        if (!ok || getenv("KVRT_TEST_VERBOSE"))
            print_error("%s %s on %s: %s\n", ok ? "ok" : "FAIL", name, pass->name, msg);
        assert_true(ok);
        if (worst_abs && r.max_abs > worst_abs[p])
            worst_abs[p] = r.max_abs;
        if (worst_nmse && r.nmse > worst_nmse[p])
            worst_nmse[p] = r.nmse;
        if (pass->same_bits_as >= 0 && memcmp(out[p], out[pass->same_bits_as], n * sizeof(float)) != 0)
            fail_msg("%s: %s and %s differ in some bit", name, kvrt_test_pass_list[pass->same_bits_as].name,
                     pass->name);
    }
    for (int p = 0; p < kvrt_test_n_passes; p++)
        free(out[p]);
    attn_case_free(&d);
}
