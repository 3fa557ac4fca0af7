/* The on-disk Vulkan pipeline cache (kvrt_context_params.pipeline_cache_path):
 * a fresh path gets a file whose header names this device (checked through
 * the Vulkan API, not kvrt's own code); a reload seeds the cache from it; a
 * truncated, garbage, foreign, empty, oversized or directory "file" is
 * ignored and ops still give exact results. A save replaces only a kvrt cache
 * (its trailer's magic: other devices' caches, damaged bodies): anything else
 * at the path (a model named by mistake, a FIFO, a directory) is left byte
 * for byte as it was and the save reports KVRT_ERR_IO. A symlink keeps
 * pointing at the new cache. An unwritable location reports KVRT_ERR_IO and
 * keeps the cache for a later save. Each case runs a small `add` op, the
 * one pipeline it needs, in its own folder under the build tree. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include "test_drivers.h"
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/ops.h"

#if !defined(KVRT_HAVE_VULKAN_BACKEND)
int main(void)
{
    return kvrt_test_vulkan_not_built_main();
}
#else

#include "backend/vulkan/vk_backend.h"
#include "kvrt_vulkan.h"

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

#define TRAILER 24 /* kvrt's checksum trailer after the driver's data */

static char g_dir[4096]; /* this run's folder */

static void path_in(char *out, size_t size, const char *name)
{
    int n = snprintf(out, size, "%s/%s", g_dir, name);
    assert_true(n > 0 && (size_t)n < size);
}

static kvrt_context *open_ctx(const char *cache_path)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.backend = KVRT_BACKEND_VULKAN;
    p.pipeline_cache_path = cache_path;
    kvrt_context *ctx = NULL;
    kvrt_error err;
    if (kvrt_context_create(&p, &ctx, &err) != KVRT_OK)
        fail_msg("vulkan context: %s", err.message);
    return ctx;
}

static kvrt_vk_pcache_stats stats_of(kvrt_context *ctx)
{
    kvrt_vk_pcache_stats st;
    kvrt_vk_pipeline_cache_stats(ctx->be, &st);
    return st;
}

/* out = a + b on the device (builds the "add" pipeline), compared exactly. */
static void run_add(kvrt_context *ctx)
{
    enum { N = 100 };
    kvrt_backend *be = ctx->be;
    float a[N], b[N], out[N];
    for (int i = 0; i < N; i++) {
        a[i] = (float)i * 0.25f - 7.0f;
        b[i] = (float)(i * i % 13) - 3.5f;
    }
    kvrt_buffer *ba, *bb, *bo;
    assert_int_equal(kvrt_op_buffer_create(be, sizeof(a), KVRT_BUFFER_DEVICE, &ba), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, sizeof(b), KVRT_BUFFER_DEVICE, &bb), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_create(be, sizeof(out), KVRT_BUFFER_DEVICE, &bo), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, ba, 0, a, sizeof(a)), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_upload(be, bb, 0, b, sizeof(b)), KVRT_OK);
    assert_int_equal(kvrt_op_begin(be), KVRT_OK);
    assert_int_equal(kvrt_op_add(be, (kvrt_view){ba, 0}, (kvrt_view){bb, 0}, (kvrt_view){bo, 0}, N), KVRT_OK);
    assert_int_equal(kvrt_op_submit(be), KVRT_OK);
    assert_int_equal(kvrt_op_buffer_download(be, bo, 0, out, sizeof(out)), KVRT_OK);
    for (int i = 0; i < N; i++)
        assert_true(out[i] == a[i] + b[i]); /* sums of small dyadic values: exact */
    kvrt_op_buffer_destroy(be, ba);
    kvrt_op_buffer_destroy(be, bb);
    kvrt_op_buffer_destroy(be, bo);
}

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    assert_true(len >= 0);
    rewind(f);
    uint8_t *d = malloc((size_t)len + 1);
    assert_int_equal(fread(d, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return d;
}

static void write_all(const char *path, const void *d, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(d, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* This device's properties, asked of the Vulkan loader directly. */
static void device_props(kvrt_context *ctx, VkPhysicalDeviceProperties *props)
{
    kvrt_vulkan_handles h;
    assert_int_equal(kvrt_vulkan_context_handles(ctx, &h), KVRT_OK);
    void *lib = dlopen("libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    assert_non_null(lib);
    PFN_vkGetInstanceProcAddr gipa = (PFN_vkGetInstanceProcAddr)dlsym(lib, "vkGetInstanceProcAddr");
    assert_non_null(gipa);
    PFN_vkGetPhysicalDeviceProperties get =
        (PFN_vkGetPhysicalDeviceProperties)gipa((VkInstance)h.instance, "vkGetPhysicalDeviceProperties");
    assert_non_null(get);
    get((VkPhysicalDevice)h.physical_device, props);
    dlclose(lib);
}

/* The file holds a VkPipelineCacheHeaderVersionOne for this device, then the trailer. */
static size_t check_file_header(kvrt_context *ctx, const char *path)
{
    VkPhysicalDeviceProperties props;
    device_props(ctx, &props);
    size_t n;
    uint8_t *d = read_all(path, &n);
    assert_true(n >= 32 + TRAILER);
    assert_true(le32(d) >= 32 && le32(d) <= n - TRAILER);
    assert_int_equal(le32(d + 4), VK_PIPELINE_CACHE_HEADER_VERSION_ONE);
    assert_int_equal(le32(d + 8), props.vendorID);
    assert_int_equal(le32(d + 12), props.deviceID);
    assert_memory_equal(d + 16, props.pipelineCacheUUID, VK_UUID_SIZE);
    free(d);
    return n;
}

/* A context on `path` accepts the file (the library's own oracle for the trailer). */
static void check_accepted(const char *path)
{
    kvrt_context *ctx = open_ctx(path);
    kvrt_vk_pcache_stats st = stats_of(ctx);
    if (st.ignored)
        fail_msg("%s ignored: %s", path, st.ignored);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(st.loaded_bytes, (size_t)sb.st_size - TRAILER);
    kvrt_context_destroy(ctx);
}

/* Makes a valid cache file at `path` through a context. */
static void make_good(const char *path)
{
    kvrt_context *ctx = open_ctx(path);
    run_add(ctx);
    kvrt_context_destroy(ctx); /* saves */
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
}

static void test_fresh_save_and_reload(void **state)
{
    char path[4200];
    path_in(path, sizeof(path), "fresh.bin");
    kvrt_context *ctx = open_ctx(path);
    kvrt_vk_pcache_stats st = stats_of(ctx);
    assert_true(st.enabled);
    assert_string_equal(st.ignored, "missing");
    assert_int_equal(st.loaded_bytes, 0);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK); /* nothing created yet: no file */
    assert_int_not_equal(access(path, F_OK), 0);
    run_add(ctx);
    assert_int_equal(stats_of(ctx).created, 1);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK);
    assert_int_equal(stats_of(ctx).writes, 1);
    size_t n = check_file_header(ctx, path);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK); /* nothing new since: no write */
    assert_int_equal(stats_of(ctx).writes, 1);
    kvrt_context_destroy(ctx);

    /* Reload: the driver gets the data, the op still works, and building only
     * what the file already held leaves it as it was. */
    ctx = open_ctx(path);
    st = stats_of(ctx);
    assert_null(st.ignored);
    assert_int_equal(st.loaded_bytes, n - TRAILER);
    run_add(ctx);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK);
    st = stats_of(ctx);
    print_message("  reload: %zu bytes of driver data, %u writes, %u unchanged saves\n", st.loaded_bytes,
                  st.writes, st.unchanged);
    assert_int_equal(st.writes + st.unchanged, 1);
    assert_int_equal(st.unchanged, 1); /* the driver's data equals the file's: not rewritten */
    kvrt_context_destroy(ctx);
    check_accepted(path);
}

typedef enum bad_kind { BAD_TRUNCATED_HEADER, BAD_TRUNCATED_TAIL, BAD_GARBAGE, BAD_UUID, BAD_EMPTY, BAD_VERSION,
                        BAD_HEADER_LEN, BAD_BODY_BIT, BAD_HUGE } bad_kind;

static const struct {
    const char *name;
    const char *reason; /* what kvrt reports it ignored the file for */
    bool kvrt_cache;    /* the trailer's magic is intact: a save replaces it */
} g_bad[] = {
    [BAD_TRUNCATED_HEADER] = {"truncated-header", "truncated", false},
    [BAD_TRUNCATED_TAIL] = {"truncated-tail", "corrupt (checksum)", false},
    [BAD_GARBAGE] = {"garbage", "bad header length", false},
    [BAD_UUID] = {"wrong-uuid", "made by another device or driver", true},
    [BAD_EMPTY] = {"empty", "truncated", false},
    [BAD_VERSION] = {"wrong-version", "unknown header version", true},
    [BAD_HEADER_LEN] = {"header-len", "bad header length", true},
    [BAD_BODY_BIT] = {"flipped-bit", "corrupt (checksum)", true},
    [BAD_HUGE] = {"huge", "too large", false},
};

/* Writes the bad variant `k` of the good file `good` (n bytes) to `path`. */
static void write_bad(bad_kind k, const uint8_t *good, size_t n, const char *path)
{
    uint8_t *d = malloc(n + 300);
    memcpy(d, good, n);
    size_t len = n;
    switch (k) {
    case BAD_TRUNCATED_HEADER: len = 20; break;
    case BAD_TRUNCATED_TAIL: len = n - 1; break;
    case BAD_GARBAGE:
        len = 300;
        for (size_t i = 0; i < len; i++)
            d[i] = (uint8_t)(i * 151u + 89u);
        break;
    case BAD_UUID: d[16] ^= 0x5a; break;
    case BAD_EMPTY: len = 0; break;
    case BAD_VERSION: d[4] = 7; break;
    case BAD_HEADER_LEN: d[0] = 0xff; d[1] = 0xff; break;
    case BAD_BODY_BIT: /* the last byte of the driver's entries, or of the checksum when it wrote only a header */
        d[n > 32 + TRAILER ? n - TRAILER - 1 : n - 1] ^= 0x01;
        break;
    case BAD_HUGE: break;
    }
    write_all(path, d, len);
    free(d);
    if (k == BAD_HUGE) /* sparse: past the 256 MiB read limit without using the disk */
        assert_int_equal(truncate(path, (off_t)257 << 20), 0);
}

/* Saving onto `path` fails with KVRT_ERR_IO naming it, and leaves it as it was. */
static void check_not_replaced(kvrt_context *ctx, const char *path, const uint8_t *before, size_t n)
{
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_ERR_IO);
    assert_non_null(strstr(kvrt_context_message(ctx), path));
    assert_non_null(strstr(kvrt_context_message(ctx), "not saved"));
    assert_int_equal(stats_of(ctx).writes, 0);
    size_t m;
    uint8_t *after = read_all(path, &m);
    assert_int_equal(m, n);
    assert_memory_equal(after, before, n);
    free(after);
}

static void test_bad_files_are_ignored_and_only_caches_replaced(void **state)
{
    char good_path[4200], path[4200];
    path_in(good_path, sizeof(good_path), "good.bin");
    make_good(good_path);
    size_t n;
    uint8_t *good = read_all(good_path, &n);
    for (size_t k = 0; k < sizeof(g_bad) / sizeof(g_bad[0]); k++) {
        path_in(path, sizeof(path), g_bad[k].name);
        write_bad((bad_kind)k, good, n, path);
        kvrt_context *ctx = open_ctx(path);
        kvrt_vk_pcache_stats st = stats_of(ctx);
        print_message("  %s: ignored (%s)\n", g_bad[k].name, st.ignored ? st.ignored : "not ignored!");
        assert_non_null(st.ignored);
        /* a driver that stores only the header leaves no checksummed body to cut into */
        const char *want = k == BAD_TRUNCATED_TAIL && n - 1 < 32 + TRAILER ? "truncated" : g_bad[k].reason;
        assert_string_equal(st.ignored, want);
        assert_int_equal(st.loaded_bytes, 0);
        run_add(ctx);
        if (g_bad[k].kvrt_cache) {
            assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK);
            assert_int_equal(stats_of(ctx).writes, 1);
            check_file_header(ctx, path);
            kvrt_context_destroy(ctx);
            check_accepted(path);
        } else if (k != BAD_HUGE) { /* huge is sparse: its size is compared below */
            size_t m;
            uint8_t *before = read_all(path, &m);
            check_not_replaced(ctx, path, before, m);
            kvrt_context_destroy(ctx); /* its silent save is refused the same way */
            size_t m2;
            uint8_t *after = read_all(path, &m2);
            assert_int_equal(m2, m);
            assert_memory_equal(after, before, m);
            free(after);
            free(before);
        } else {
            assert_int_equal(kvrt_context_save_caches(ctx), KVRT_ERR_IO);
            kvrt_context_destroy(ctx);
            struct stat sb;
            assert_int_equal(stat(path, &sb), 0);
            assert_int_equal(sb.st_size, (off_t)257 << 20);
        }
    }
    free(good);
}

/* The case: --pipeline-cache naming the model. The model survives. */
static void test_model_at_path_is_kept(void **state)
{
    char path[4200];
    path_in(path, sizeof(path), "model.gguf");
    uint8_t model[4096];
    memcpy(model, "GGUF", 4);
    for (size_t i = 4; i < sizeof(model); i++)
        model[i] = (uint8_t)(i * 7u + 1u);
    write_all(path, model, sizeof(model));
    kvrt_context *ctx = open_ctx(path);
    run_add(ctx);
    check_not_replaced(ctx, path, model, sizeof(model));
    print_message("  save: %s\n", kvrt_context_message(ctx));
    kvrt_context_destroy(ctx);
    size_t m;
    uint8_t *after = read_all(path, &m);
    assert_int_equal(m, sizeof(model));
    assert_memory_equal(after, model, m);
    free(after);
}

/* A symlink to a cache: the cache it names is replaced, the link stays a link. */
static void test_symlink_target_replaced(void **state)
{
    char target[4200], link[4200];
    path_in(target, sizeof(target), "linked-cache.bin");
    path_in(link, sizeof(link), "cache-link");
    assert_int_equal(symlink("linked-cache.bin", link), 0);
    kvrt_context *ctx = open_ctx(link);
    assert_string_equal(stats_of(ctx).ignored, "missing");
    run_add(ctx);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK); /* a dangling link is written through */
    kvrt_context_destroy(ctx);
    struct stat sb;
    assert_int_equal(lstat(link, &sb), 0);
    assert_true(S_ISLNK(sb.st_mode));
    check_accepted(target);
    check_accepted(link);
}

/* No leftover "<name>.tmp-*" in the run's folder. */
static void check_no_temp_files(const char *name)
{
    DIR *dir = opendir(g_dir);
    assert_non_null(dir);
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "%s.tmp-", name);
    for (struct dirent *e; (e = readdir(dir));)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0)
            fail_msg("temporary file %s left behind", e->d_name);
    closedir(dir);
}

static void test_directory_at_path(void **state)
{
    char path[4200];
    path_in(path, sizeof(path), "a-directory");
    assert_int_equal(mkdir(path, 0777), 0);
    kvrt_context *ctx = open_ctx(path);
    assert_string_equal(stats_of(ctx).ignored, "not a regular file");
    run_add(ctx);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_ERR_IO);
    print_message("  save: %s\n", kvrt_context_message(ctx));
    assert_non_null(strstr(kvrt_context_message(ctx), path));
    run_add(ctx); /* the context is unharmed */
    kvrt_context_destroy(ctx); /* its silent save fails the same way */
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    check_no_temp_files("a-directory");
}

/* A FIFO at the path: opening it for reading must not block context
 * creation (the alarm fails the test instead of hanging CI); it is ignored
 * and left a FIFO: the save is refused. */
static void test_fifo_at_path(void **state)
{
    char path[4200];
    path_in(path, sizeof(path), "a-fifo");
    assert_int_equal(mkfifo(path, 0666), 0);
    alarm(60);
    kvrt_context *ctx = open_ctx(path);
    alarm(0);
    assert_string_equal(stats_of(ctx).ignored, "not a regular file");
    run_add(ctx);
    alarm(60); /* nor may the save block on it */
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_ERR_IO);
    assert_non_null(strstr(kvrt_context_message(ctx), "not a regular file"));
    kvrt_context_destroy(ctx);
    alarm(0);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(S_ISFIFO(sb.st_mode)); /* never replaced by a regular file */
    check_no_temp_files("a-fifo");
}

static void test_unwritable_location(void **state)
{
    char sub[4200], path[4300];
    path_in(sub, sizeof(sub), "not-yet");
    snprintf(path, sizeof(path), "%s/cache.bin", sub);
    kvrt_context *ctx = open_ctx(path);
    assert_string_equal(stats_of(ctx).ignored, "missing");
    run_add(ctx);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_ERR_IO);
    print_message("  save: %s\n", kvrt_context_message(ctx));
    assert_non_null(strstr(kvrt_context_message(ctx), "cache.bin"));
    assert_int_equal(stats_of(ctx).writes, 0);
    /* nothing is lost: once the folder exists, the same cache saves */
    assert_int_equal(mkdir(sub, 0777), 0);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK);
    assert_int_equal(stats_of(ctx).writes, 1);
    check_file_header(ctx, path);
    kvrt_context_destroy(ctx);
    check_accepted(path);

    /* below a regular file: cannot even be opened for reading */
    char file[4200], below[4300];
    path_in(file, sizeof(file), "plain-file");
    write_all(file, "x", 1);
    snprintf(below, sizeof(below), "%s/cache.bin", file);
    ctx = open_ctx(below);
    assert_string_equal(stats_of(ctx).ignored, "cannot be opened");
    run_add(ctx);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_ERR_IO);
    kvrt_context_destroy(ctx);
}

static void test_no_cache(void **state)
{
    kvrt_context *ctx = open_ctx(NULL);
    assert_false(stats_of(ctx).enabled);
    run_add(ctx);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK);
    assert_int_equal(stats_of(ctx).writes, 0);
    kvrt_context_destroy(ctx);

    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = 1;
    p.pipeline_cache_path = "/nonexistent-dir/never-written.bin"; /* the CPU backend has no cache */
    assert_int_equal(kvrt_context_create(&p, &ctx, NULL), KVRT_OK);
    assert_int_equal(kvrt_context_save_caches(ctx), KVRT_OK);
    kvrt_context_destroy(ctx);
    assert_int_equal(kvrt_context_save_caches(NULL), KVRT_ERR_INVALID_ARGUMENT);
}

/* Removes the run's folder (one level of files and folders). */
static int remove_dir(void **state)
{
    DIR *dir = opendir(g_dir);
    if (!dir)
        return 0;
    char p[4600];
    for (struct dirent *e; (e = readdir(dir));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(p, sizeof(p), "%s/%s", g_dir, e->d_name);
        if (remove(p) != 0) { /* a folder with one file inside (not-yet/cache.bin) */
            char q[4700];
            snprintf(q, sizeof(q), "%s/cache.bin", p);
            remove(q);
            remove(p);
        }
    }
    closedir(dir);
    return rmdir(g_dir);
}

int main(void)
{
    kvrt_test_pin_gpu_drivers();
    (void)kvrt_test_pipeline_cache(); /* creates the build tree's cache folder */
    snprintf(g_dir, sizeof(g_dir), "%s/pcache-test-XXXXXX", KVRT_TEST_CACHE_DIR);
    if (!mkdtemp(g_dir)) {
        fprintf(stderr, "cannot create a folder under %s\n", KVRT_TEST_CACHE_DIR);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fresh_save_and_reload),
        cmocka_unit_test(test_bad_files_are_ignored_and_only_caches_replaced),
        cmocka_unit_test(test_model_at_path_is_kept),
        cmocka_unit_test(test_symlink_target_replaced),
        cmocka_unit_test(test_directory_at_path),
        cmocka_unit_test(test_fifo_at_path),
        cmocka_unit_test(test_unwritable_location),
        cmocka_unit_test(test_no_cache),
    };
    return cmocka_run_group_tests(tests, NULL, remove_dir);
}
#endif
