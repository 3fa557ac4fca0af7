/* The prompt cache on disk (issue 18): logits identical whether a prompt's
 * blocks were computed or loaded, on every backend; corrupt, truncated,
 * foreign and other-model files ignored and replaced; the size cap deletes
 * the least recently used; a folder that is a file, or a full disk, is a
 * warning and the run goes on. (Not writable and several processes at once:
 * tests/cli/prompt_cache.sh.) */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvrt.h"
#include "model/model_api_internal.h"
#include "model/prompt_cache.h"
#include "model/synth.h"
#include "test_models.h"
#include "test_passes.h"

enum { NV = 512, BS = 16 };

static char model_path[512];
static char dir[128];
static int32_t prompt[70];
static const int32_t N_PROMPT = 70; /* 4 full blocks may be cached (the last token is always computed) */

static void rm_dir(const char *d)
{
    DIR *dp = opendir(d);
    if (!dp)
        return;
    char p[512];
    for (struct dirent *de; (de = readdir(dp));) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%.200s/%.255s", d, de->d_name);
        unlink(p);
    }
    closedir(dp);
    rmdir(d);
}

/* The cache files in dir, sorted names into names[][32]; returns how many. */
static int list_files(char (*names)[32], int cap)
{
    DIR *dp = opendir(dir);
    int n = 0;
    if (!dp)
        return 0;
    for (struct dirent *de; (de = readdir(dp));)
        if (strstr(de->d_name, ".kvb") && n < cap)
            snprintf(names[n++], 32, "%.31s", de->d_name);
    closedir(dp);
    qsort(names, (size_t)n, 32, (int (*)(const void *, const void *))strcmp);
    return n;
}

typedef struct run_result {
    float logits[NV];
    kvrt_session_stats st;
    char warning[512];
} run_result;

/* One "process": a session on ctx with the prompt cache in `d`, evaluating the prompt. */
static void run(kvrt_context *ctx, const char *model, const char *d, kvrt_dtype kv, uint64_t max_bytes,
                const int32_t *ids, int32_t n, int fail_write, run_result *out)
{
    kvrt_model_params mp = kvrt_model_default_params();
    mp.path = model;
    kvrt_model *m = NULL;
    kvrt_error err;
    if (kvrt_model_load(ctx, &mp, &m, &err) != KVRT_OK)
        fail_msg("model: %s", err.message);
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = 128;
    sp.kv_type = kv;
    sp.prompt_cache_dir = d;
    sp.prompt_cache_max_bytes = max_bytes;
    kvrt_session *s = NULL;
    if (kvrt_session_create(m, &sp, &s, &err) != KVRT_OK)
        fail_msg("session: %s", err.message);
    if (fail_write) /* the test hook behind the session: the disk is full */
        kvrt_prompt_cache_debug_fail_write(kvrt_session_debug_prompt_cache(s), fail_write);
    if (kvrt_session_eval(s, ids, n, out->logits, NULL) != KVRT_OK)
        fail_msg("eval: %s", kvrt_session_message(s));
    kvrt_session_get_stats(s, &out->st);
    snprintf(out->warning, sizeof(out->warning), "%s", kvrt_session_warning(s));
    kvrt_session_destroy(s);
    kvrt_model_destroy(m);
}

static int setup(void **state)
{
    kvrt_test_model_path("stories260K.gguf", model_path, sizeof(model_path));
    snprintf(dir, sizeof(dir), "/tmp/kvrt_test_pcache_%d", (int)getpid());
    for (int32_t i = 0; i < N_PROMPT; i++)
        prompt[i] = i == 0 ? 1 : 3 + (i * 37) % 500;
    return kvrt_test_passes_setup(state);
}

static int teardown(void **state)
{
    rm_dir(dir);
    return kvrt_test_passes_teardown(state);
}

/* Cold (computed, files written) then warm (loaded): the same logits, bit for bit. */
static void test_cold_vs_disk_every_backend(void **state)
{
    (void)state;
    static run_result cold, warm;
    for (int p = 0; p < kvrt_test_n_passes; p++) {
        const kvrt_dtype kvs[] = {KVRT_DTYPE_F32, KVRT_DTYPE_F16};
        for (int k = 0; k < 2; k++) {
            rm_dir(dir);
            kvrt_context *ctx = kvrt_test_pass_list[p].ctx;
            run(ctx, model_path, dir, kvs[k], 0, prompt, N_PROMPT, 0, &cold);
            run(ctx, model_path, dir, kvs[k], 0, prompt, N_PROMPT, 0, &warm);
            assert_int_equal(cold.st.prompt_cache_hit_tokens, 0);
            assert_int_equal(cold.st.prompt_cache_written_blocks, 4);
            assert_int_equal(warm.st.prompt_cache_hit_tokens, 64);
            assert_int_equal(warm.st.prompt_cache_written_blocks, 0);
            assert_string_equal(warm.warning, "");
            double d = 0;
            for (int i = 0; i < NV; i++)
                d = fmax(d, fabs((double)cold.logits[i] - warm.logits[i]));
            if (memcmp(cold.logits, warm.logits, sizeof(cold.logits)) != 0)
                fail_msg("%s %s: logits from disk differ from the cold run by %.3g", kvrt_test_pass_list[p].name,
                         kvrt_dtype_name(kvs[k]), d);
            fprintf(stderr, "%-12s %s: 64 of 70 prompt tokens from disk, logits identical\n",
                    kvrt_test_pass_list[p].name, kvrt_dtype_name(kvs[k]));
        }
    }
}

/* Overwrites bytes of file i (in name order) at `at` (negative: from the end), or truncates it. */
static void damage(int i, long at, const char *bytes, long truncate_to)
{
    char names[16][32], path[512];
    assert_true(list_files(names, 16) > i);
    snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    if (truncate_to >= 0) {
        assert_int_equal(ftruncate(fd, truncate_to), 0);
    } else {
        off_t end = lseek(fd, 0, SEEK_END);
        assert_int_equal(pwrite(fd, bytes, strlen(bytes), at < 0 ? end + at : at), (ssize_t)strlen(bytes));
    }
    close(fd);
}

static void test_bad_files_ignored_and_replaced(void **state)
{
    (void)state;
    kvrt_context *ctx = kvrt_test_pass_list[0].ctx;
    static run_result ref, r;
    rm_dir(dir);
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0, &ref); /* writes 4 files */
    const struct {
        const char *what;
        long at;
        const char *bytes;
        long truncate_to;
    } cases[] = {
        {"payload byte flipped", -100, "\x7f\x7f", -1},
        {"header byte flipped", 30, "\x01", -1},
        {"token changed", 60, "\x05", -1},
        {"truncated", 0, NULL, 1000},
        {"empty", 0, NULL, 0},
        {"foreign bytes", 0, "not a kvrt prompt cache file at all, just text", -1},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        /* every file is one link of the chain: damage each in turn, in a shuffled order */
        int victim = (int)((c * 3) % 4);
        damage(victim, cases[c].at, cases[c].bytes, cases[c].truncate_to);
        run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0, &r);
        /* the files are named by key, not in chain order: the run stops at the damaged link, wherever it is */
        if (r.st.prompt_cache_hit_tokens >= 64)
            fail_msg("%s: a damaged file was trusted", cases[c].what);
        assert_true(r.st.prompt_cache_written_blocks >= 1); /* the damaged file was replaced */
        assert_memory_equal(r.logits, ref.logits, sizeof(ref.logits));
        run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0, &r);
        if (r.st.prompt_cache_hit_tokens != 64)
            fail_msg("%s: not replaced (%lld tokens loaded after)", cases[c].what,
                     (long long)r.st.prompt_cache_hit_tokens);
        assert_memory_equal(r.logits, ref.logits, sizeof(ref.logits));
        fprintf(stderr, "%-22s ignored, replaced\n", cases[c].what);
    }
}

static void test_other_model_or_kv_type_shares_nothing(void **state)
{
    (void)state;
    kvrt_context *ctx = kvrt_test_pass_list[0].ctx;
    static run_result r;
    rm_dir(dir);
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0, &r);
    run(ctx, model_path, dir, KVRT_DTYPE_F16, 0, prompt, N_PROMPT, 0, &r); /* other KV type */
    assert_int_equal(r.st.prompt_cache_hit_tokens, 0);
    /* other models: a synthetic one, then one of the same shape with other weights */
    char other[128];
    snprintf(other, sizeof(other), "/tmp/kvrt_test_pcache_model_%d.gguf", (int)getpid());
    kvrt_synth_params sp;
    kvrt_synth_preset("tiny", &sp);
    sp.hp.n_vocab = NV;
    sp.hp.n_ctx_train = 128;
    sp.seed = 1;
    assert_int_equal(kvrt_synth_write_file(&sp, NULL, other, NULL, NULL), KVRT_OK);
    run(ctx, other, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0, &r);
    assert_int_equal(r.st.prompt_cache_hit_tokens, 0);
    sp.seed = 2;
    assert_int_equal(kvrt_synth_write_file(&sp, NULL, other, NULL, NULL), KVRT_OK);
    run(ctx, other, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0, &r);
    assert_int_equal(r.st.prompt_cache_hit_tokens, 0);
    run(ctx, other, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0, &r); /* its own files, it finds */
    assert_int_equal(r.st.prompt_cache_hit_tokens, 64);
    unlink(other);
}

static void set_mtime(const char name[32], time_t t)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%.31s", dir, name);
    struct timespec ts[2] = {{t, 0}, {t, 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

/* The cap keeps the folder's cache files under it, deleting the least recently used first. */
static void test_size_cap_evicts_least_recently_used(void **state)
{
    (void)state;
    kvrt_context *ctx = kvrt_test_pass_list[0].ctx;
    static run_result r;
    int32_t a[35], b[35], c[35];
    for (int i = 0; i < 35; i++) {
        a[i] = i ? 3 + i : 1;
        b[i] = i ? 100 + i : 1;
        c[i] = i ? 200 + i : 1;
    }
    rm_dir(dir);
    char names[16][32], a_names[2][32];
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, a, 35, 0, &r); /* A: 2 files */
    assert_int_equal(list_files(names, 16), 2);
    memcpy(a_names, names, sizeof(a_names));
    set_mtime(a_names[0], 1000);
    set_mtime(a_names[1], 1000);
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, b, 35, 0, &r); /* B: 2 more */
    assert_int_equal(list_files(names, 16), 4);
    for (int i = 0; i < 4; i++)
        if (strcmp(names[i], a_names[0]) && strcmp(names[i], a_names[1]))
            set_mtime(names[i], 2000); /* B used after A */
    struct stat st;
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, names[0]);
    assert_int_equal(stat(path, &st), 0);
    uint64_t file = (uint64_t)st.st_size;
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, a, 35, 0, &r); /* A used again: now the newest */
    assert_int_equal(r.st.prompt_cache_hit_tokens, 32);
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 4 * file + file / 2, c, 35, 0, &r); /* C: 6 files > 4.5 */
    int n = list_files(names, 16);
    assert_int_equal(n, 4);
    int kept_a = 0;
    for (int i = 0; i < n; i++)
        kept_a += !strcmp(names[i], a_names[0]) || !strcmp(names[i], a_names[1]);
    assert_int_equal(kept_a, 2); /* B went, not A */
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, b, 35, 0, &r);
    assert_int_equal(r.st.prompt_cache_hit_tokens, 0);
}

/* A folder that is a file, or a disk that fills up: a warning, and the run goes on. */
static void test_unusable_folder_warns(void **state)
{
    (void)state;
    kvrt_context *ctx = kvrt_test_pass_list[0].ctx;
    static run_result ref, r;
    rm_dir(dir);
    run(ctx, model_path, "/nonexistent-parent-kvrt/x", KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0,
        &ref);
    assert_non_null(strstr(ref.warning, "cannot be created"));
    FILE *f = fopen(dir, "w"); /* the folder's path is a file */
    assert_non_null(f);
    fclose(f);
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, 0, &r);
    assert_non_null(strstr(r.warning, "is not a folder"));
    assert_int_equal(r.st.n_warnings, 1);
    assert_memory_equal(r.logits, ref.logits, sizeof(ref.logits));
    unlink(dir);
    run(ctx, model_path, dir, KVRT_DTYPE_F32, 0, prompt, N_PROMPT, ENOSPC, &r); /* full at the first write */
    assert_non_null(strstr(r.warning, strerror(ENOSPC)));
    assert_int_equal(r.st.prompt_cache_written_blocks, 0); /* and no more writes after it */
    assert_memory_equal(r.logits, ref.logits, sizeof(ref.logits));
    char names[4][32];
    assert_int_equal(list_files(names, 4), 0); /* nothing half-written left */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cold_vs_disk_every_backend),
        cmocka_unit_test(test_bad_files_ignored_and_replaced),
        cmocka_unit_test(test_other_model_or_kv_type_shares_nothing),
        cmocka_unit_test(test_size_cap_evicts_least_recently_used),
        cmocka_unit_test(test_unusable_folder_warns),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
