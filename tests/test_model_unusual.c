/* Unusual but legal (or subtly broken) model files, and sizes that would
 * take all memory: each gets the right output or a clear error naming the
 * field, never plausible wrong text or minutes of allocation.
 * - tokenizer.ggml.add_bos_token = false: kvrt_model_info.add_bos is 0 and
 *   neither kvrt_tokenize nor an engine text prompt prepends BOS; with
 *   add_eos_token = true, EOS is appended;
 * - a file stating a context of a million positions loads with the default
 *   capped at KVRT_DEFAULT_MAX_CONTEXT; asking for 2^31 - 1 positions fails
 *   at once naming max_context (and with a memory budget, OUT_OF_DEVICE_MEMORY);
 * - a file whose llama.block_count is smaller than its blk.N tensors is
 *   refused, naming the first unused tensor;
 * - Vulkan checks a KV pool against its heaps before allocating. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kvrt.h"
#include "model/model_file.h"
#include "model/synth.h"
#include "test_drivers.h"
#include "test_models.h"

static char g_dir[64];

static int make_dir(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/kvrt-unusual-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int remove_dir(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

typedef struct variant {
    bool add_bos, add_eos;
    int32_t n_ctx; /* llama.context_length written; 0 = the file's */
} variant;

/* stories260K.gguf rewritten with kvrt's own writer, vocabulary flags and
 * context length changed; returns the path (static). */
static const char *write_variant(const char *name, variant v)
{
    static char out[128];
    char src[4096];
    kvrt_test_require_model("stories260K.gguf", src, sizeof(src));
    kvrt_model_file *mf = NULL;
    kvrt_error err;
    if (kvrt_model_file_load_gguf(src, NULL, false, NULL, &mf, &err) != KVRT_OK)
        fail_msg("%s: %s", src, err.message);
    mf->vocab.add_bos = v.add_bos;
    mf->vocab.add_eos = v.add_eos;
    snprintf(out, sizeof(out), "%s/%s", g_dir, name);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    kvrt_gguf_export_params ep = {KVRT_DTYPE_F32, "llama", v.n_ctx, true};
    if (kvrt_llama_export_gguf(mf, &ep, f, NULL, &err) != KVRT_OK)
        fail_msg("export: %s", err.message);
    assert_int_equal(fclose(f), 0);
    kvrt_model_file_free(mf);
    return out;
}

static kvrt_context *cpu_context(uint64_t budget)
{
    kvrt_context_params cp = kvrt_context_default_params();
    cp.n_threads = 1;
    cp.memory_budget = budget;
    kvrt_context *ctx = NULL;
    assert_int_equal(kvrt_context_create(&cp, &ctx, NULL), KVRT_OK);
    return ctx;
}

static kvrt_model *load(kvrt_context *ctx, const char *path, int32_t max_context, kvrt_status want, kvrt_error *err)
{
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    mp.max_context = max_context;
    kvrt_model *m = NULL;
    kvrt_status s = kvrt_model_load(ctx, &mp, &m, err);
    if (s != want)
        fail_msg("load %s (max_context %d): status %d (want %d): %s", path, (int)max_context, s, want, err->message);
    return m;
}

/* The ids kvrt_tokenize gives "Once upon a time" with add_special = 1. */
static int32_t tokenize(kvrt_model *m, int32_t *ids, int32_t cap)
{
    int32_t n = 0;
    assert_int_equal(kvrt_tokenize(m, "Once upon a time", 16, 1, ids, cap, &n), KVRT_OK);
    return n;
}

/* The prompt an engine makes of the same text (request default: add_bos = 1). */
static int32_t engine_prompt(kvrt_model *m, int32_t *ids, int32_t cap)
{
    kvrt_engine_params ep = kvrt_engine_default_params();
    ep.max_context = 64;
    ep.num_blocks = 8;
    kvrt_engine *e = NULL;
    kvrt_error err;
    if (kvrt_engine_create(m, &ep, &e, &err) != KVRT_OK)
        fail_msg("engine: %s", err.message);
    kvrt_request_params rp = kvrt_request_default_params();
    rp.prompt_text = "Once upon a time";
    rp.max_tokens = 1;
    int64_t id = 0;
    assert_int_equal(kvrt_engine_submit(e, &rp, &id), KVRT_OK);
    kvrt_request_output out;
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    int32_t n = out.n_prompt;
    assert_true(n <= cap);
    /* the prompt is the sample's history before its generated tokens */
    while (kvrt_engine_has_work(e))
        assert_int_equal(kvrt_engine_step(e, NULL), KVRT_OK);
    assert_int_equal(kvrt_engine_get_output(e, id, &out), KVRT_OK);
    memcpy(ids, out.samples[0].tokens - n, (size_t)n * sizeof(int32_t));
    kvrt_engine_destroy(e);
    return n;
}

static void test_add_bos_and_eos_follow_the_file(void **state)
{
    (void)state;
    static const int32_t body[] = {403, 407, 261, 378}; /* "Once upon a time" without BOS */
    const struct {
        variant v;
        int32_t want_bos, want_eos;
    } cases[] = {
        {{true, false, 0}, 1, 0},
        {{false, false, 0}, 0, 0},
        {{true, true, 0}, 1, 1},
        {{false, true, 0}, 0, 1},
    };
    kvrt_context *ctx = cpu_context(0);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        char name[32];
        snprintf(name, sizeof(name), "special-%zu.gguf", c);
        kvrt_error err;
        kvrt_model *m = load(ctx, write_variant(name, cases[c].v), 0, KVRT_OK, &err);
        kvrt_model_info mi;
        assert_int_equal(kvrt_model_get_info(m, &mi), KVRT_OK);
        assert_int_equal(mi.add_bos, cases[c].want_bos);
        assert_int_equal(mi.add_eos, cases[c].want_eos);
        int32_t want[8], nw = 0;
        if (cases[c].want_bos)
            want[nw++] = mi.bos_id;
        for (int i = 0; i < 4; i++)
            want[nw++] = body[i];
        if (cases[c].want_eos)
            want[nw++] = mi.eos_id;
        int32_t ids[16];
        int32_t n = tokenize(m, ids, 16);
        assert_int_equal(n, nw);
        assert_memory_equal(ids, want, (size_t)nw * sizeof(int32_t));
        /* asking for the size first counts the EOS too */
        int32_t need = 0;
        assert_int_equal(kvrt_tokenize(m, "Once upon a time", 16, 1, NULL, 0, &need), KVRT_ERR_INVALID_ARGUMENT);
        assert_int_equal(need, nw);
        n = engine_prompt(m, ids, 16);
        assert_int_equal(n, nw);
        assert_memory_equal(ids, want, (size_t)nw * sizeof(int32_t));
        print_message("  add_bos %d add_eos %d: %d prompt ids, as the file says\n", mi.add_bos, mi.add_eos, n);
        kvrt_model_destroy(m);
    }
    kvrt_context_destroy(ctx);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void test_context_sizes_checked_before_allocation(void **state)
{
    (void)state;
    const char *big = write_variant("million.gguf", (variant){true, false, 1000000});
    kvrt_context *ctx = cpu_context(0);
    kvrt_error err;
    kvrt_model *m = load(ctx, big, 0, KVRT_OK, &err);
    kvrt_model_info mi;
    assert_int_equal(kvrt_model_get_info(m, &mi), KVRT_OK);
    assert_int_equal(mi.n_ctx_train, 1000000);
    assert_int_equal(mi.max_context, KVRT_DEFAULT_MAX_CONTEXT); /* the default is capped */
    kvrt_session *s = NULL;
    assert_int_equal(kvrt_session_create(m, NULL, &s, NULL), KVRT_OK);
    kvrt_session_stats st;
    assert_int_equal(kvrt_session_get_stats(s, &st), KVRT_OK);
    assert_int_equal(st.n_ctx, KVRT_DEFAULT_MAX_CONTEXT);
    kvrt_session_destroy(s);
    kvrt_model_destroy(m);

    /* asked for explicitly, a size beyond memory fails at once, naming the field */
    double t0 = now_s();
    load(ctx, big, INT32_MAX, KVRT_ERR_OUT_OF_HOST_MEMORY, &err);
    double dt = now_s() - t0;
    print_message("  max_context 2^31-1: %s (%.3f s)\n", err.message, dt);
    assert_non_null(strstr(err.message, "max_context 2147483647"));
    assert_non_null(strstr(err.message, "RoPE table"));
    assert_true(dt < 5.0); /* no table was built (that took minutes and gigabytes) */
    /* a file claiming more than fits, used as is (max_context = its own value) */
    kvrt_model_destroy(load(ctx, big, 1000000, KVRT_OK, &err)); /* a million positions do fit here */
    kvrt_context_destroy(ctx);

    /* with a budget: what the weights leave of it */
    ctx = cpu_context(2u << 20);
    char path[4096];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    load(ctx, path, 100000, KVRT_ERR_OUT_OF_HOST_MEMORY, &err); /* the CPU's budget is host memory */
    assert_non_null(strstr(err.message, "max_context 100000"));
    assert_non_null(strstr(err.message, "memory budget"));
    assert_non_null(strstr(err.message, "f32 KV cache")); /* the default KV type is counted */
    kvrt_model_destroy(load(ctx, path, 512, KVRT_OK, &err));
    /* the KV type the sessions will use is what is counted: 2,500 positions
     * of stories260K (5 layers x 4 KV heads x head_dim 8, K and V) take
     * 3.05 MiB of F32 KV, 1.53 MiB of F16 */
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = path;
    mp.max_context = 2500;
    kvrt_model *m2 = NULL;
    assert_int_equal(kvrt_model_load(ctx, &mp, &m2, &err), KVRT_ERR_OUT_OF_HOST_MEMORY);
    mp.kv_type = KVRT_DTYPE_F16;
    assert_int_equal(kvrt_model_load(ctx, &mp, &m2, &err), KVRT_OK);
    kvrt_model_destroy(m2);
    kvrt_context_destroy(ctx);
}

/* Rewrites the u32 value of `key` in a GGUF file (a key written by kvrt's writer). */
static void patch_u32(const char *path, const char *key, uint32_t from, uint32_t to)
{
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    unsigned char *d = malloc((size_t)n);
    assert_int_equal(fread(d, 1, (size_t)n, f), (size_t)n);
    size_t kl = strlen(key);
    long at = -1;
    for (long i = 0; i + (long)kl + 8 <= n && at < 0; i++)
        if (memcmp(d + i, key, kl) == 0)
            at = i + (long)kl;
    assert_true(at >= 0);
    uint32_t type, value;
    memcpy(&type, d + at, 4);
    memcpy(&value, d + at + 4, 4);
    assert_int_equal(type, 4); /* GGUF uint32 */
    assert_int_equal(value, from);
    memcpy(d + at + 4, &to, 4);
    rewind(f);
    assert_int_equal(fwrite(d, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    free(d);
}

static void test_unused_tensors_are_an_error(void **state)
{
    (void)state;
    const char *path = write_variant("four-of-five.gguf", (variant){true, false, 0});
    patch_u32(path, "llama.block_count", 5, 4);
    kvrt_context *ctx = cpu_context(0);
    kvrt_error err;
    load(ctx, path, 0, KVRT_ERR_BAD_MODEL, &err);
    print_message("  %s\n", err.message);
    assert_non_null(strstr(err.message, "blk.4."));
    assert_non_null(strstr(err.message, "block_count 4"));
    kvrt_context_destroy(ctx);
}

static void test_vulkan_pool_checked_against_heaps(void **state)
{
    (void)state;
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    kvrt_test_pin_gpu_drivers();
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = KVRT_BACKEND_VULKAN;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    if (kvrt_context_create(&cp, &ctx, &err) != KVRT_OK)
        fail_msg("vulkan is built in but cannot start: %s", err.message);
    /* 32 layers x 2 x 2^31 / 2 blocks of 8 KiB: far beyond any heap */
    kvrt_kv_cache_params kp = {.n_layers = 32, .n_kv_heads = 8, .head_dim = 128, .block_size = 16,
                               .num_blocks = 1 << 20, .dtype = KVRT_DTYPE_F32};
    kvrt_kv_cache *cache = NULL;
    double t0 = now_s();
    kvrt_status s = kvrt_kv_cache_create(ctx, &kp, &cache, &err);
    double dt = now_s() - t0;
    print_message("  %s (%.3f s)\n", err.message, dt);
    assert_int_equal(s, KVRT_ERR_OUT_OF_DEVICE_MEMORY);
    /* refused up front by the default budget (the device heap minus what is in use) */
    assert_non_null(strstr(err.message, "exceeds the memory budget"));
    assert_true(dt < 5.0);
    /* a model's context is checked against the device too, before its RoPE
     * table is built: 10^9 positions of stories260K need 1.2 TB of F32 KV */
    char path[4096];
    kvrt_test_require_model("stories260K.gguf", path, sizeof(path));
    t0 = now_s();
    assert_null(load(ctx, path, 1000000000, KVRT_ERR_OUT_OF_DEVICE_MEMORY, &err));
    dt = now_s() - t0;
    print_message("  %s (%.3f s)\n", err.message, dt);
    assert_non_null(strstr(err.message, "device's memory"));
    assert_true(dt < 5.0);
    kvrt_context_destroy(ctx);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_bos_and_eos_follow_the_file),
        cmocka_unit_test(test_context_sizes_checked_before_allocation),
        cmocka_unit_test(test_unused_tensors_are_an_error),
        cmocka_unit_test(test_vulkan_pool_checked_against_heaps),
    };
    return cmocka_run_group_tests_name("model_unusual", tests, make_dir, remove_dir);
}
