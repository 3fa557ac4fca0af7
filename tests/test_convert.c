/* kvrt-convert's output against the GGUF llama.cpp's converter wrote for the
 * same checkpoint: key by key and tensor by tensor, values byte-equal. Also
 * the quantized outputs and the command-line tool itself. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/fp16.h"
#include "model/gguf.h"
#include "model/model_file.h"
#include "model/synth.h"
#include "test_models.h"

static char *model_path(const char *name)
{
    static char bufs[4][4096];
    static int next;
    char *b = bufs[next++ % 4];
    if (*name)
        kvrt_test_require_model(name, b, 4096); /* a missing file fails naming its path */
    else
        kvrt_test_model_path(name, b, 4096);
    return b;
}

/* Keys llama.cpp's converter writes that kvrt-convert leaves out on purpose:
 * both say "no such token" (4294967295), which is also what their absence means. */
static const char *const llama_cpp_only[] = {"tokenizer.ggml.seperator_token_id", "tokenizer.ggml.padding_token_id"};

static bool llama_cpp_only_key(kvrt_gguf_str key)
{
    for (size_t i = 0; i < sizeof(llama_cpp_only) / sizeof(llama_cpp_only[0]); i++)
        if (kvrt_gguf_str_eq(key, llama_cpp_only[i]))
            return true;
    return false;
}

static kvrt_model_file *load_stories_bin(void)
{
    kvrt_model_file *mf;
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_llama2c(model_path("stories260K.bin"), model_path("tok512.bin"), NULL, NULL,
                                                  &mf, &err),
                     KVRT_OK);
    return mf;
}

static char *export_mem(const kvrt_model_file *mf, kvrt_gguf_export_params p, size_t *size)
{
    char *data = NULL;
    FILE *f = open_memstream(&data, size);
    kvrt_error err;
    kvrt_status s = kvrt_llama_export_gguf(mf, &p, f, NULL, &err);
    fclose(f);
    if (s != KVRT_OK)
        fail_msg("export: %s", err.message);
    return data;
}

static bool same_value(const kvrt_gguf_kv *a, const kvrt_gguf_kv *b)
{
    if (a->type != b->type || a->n != b->n || (a->type == KVRT_GGUF_ARRAY && a->arr_type != b->arr_type))
        return false;
    kvrt_gguf_type t = a->type == KVRT_GGUF_ARRAY ? a->arr_type : a->type;
    if (t != KVRT_GGUF_STRING)
        return memcmp(a->data, b->data, (size_t)a->n * kvrt_gguf_type_size(t)) == 0;
    for (uint64_t i = 0; i < a->n; i++)
        if (a->strs[i].len != b->strs[i].len || memcmp(a->strs[i].ptr, b->strs[i].ptr, (size_t)a->strs[i].len) != 0)
            return false;
    return true;
}

/* ours vs llama.cpp's: the only differences allowed are llama.context_length
 * (ours = ctx) and the llama.cpp-only keys. */
static void compare_with_reference(const char *ours, size_t size, uint32_t ctx)
{
    kvrt_gguf *a, *b;
    kvrt_error err;
    assert_int_equal(kvrt_gguf_open_memory(ours, size, NULL, &a, &err), KVRT_OK);
    assert_int_equal(kvrt_gguf_open(model_path("stories260K.gguf"), NULL, &b, &err), KVRT_OK);
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->alignment, b->alignment);
    size_t compared = 0;
    for (uint64_t i = 0; i < b->n_kv; i++) {
        const kvrt_gguf_kv *kb = &b->kv[i];
        char key[128];
        snprintf(key, sizeof(key), "%.*s", (int)kb->key.len, kb->key.ptr);
        const kvrt_gguf_kv *ka = kvrt_gguf_find_kv(a, key);
        if (llama_cpp_only_key(kb->key)) {
            assert_null(ka);
            continue;
        }
        if (!ka)
            fail_msg("key %s missing from kvrt-convert's file", key);
        if (!strcmp(key, "llama.context_length")) {
            assert_int_equal(ka->type, KVRT_GGUF_U32);
            assert_int_equal(kvrt_gguf_kv_uint(ka, 0), ctx);
            assert_int_equal(kvrt_gguf_kv_uint(kb, 0), 128);
            continue;
        }
        if (!same_value(ka, kb))
            fail_msg("key %s differs", key);
        compared++;
    }
    assert_int_equal(compared, 16);
    assert_int_equal(a->n_kv, compared + 1); /* nothing the reference lacks */
    assert_int_equal(a->n_tensors, b->n_tensors);
    for (uint64_t i = 0; i < b->n_tensors; i++) {
        const kvrt_gguf_tensor *ta = &a->tensors[i], *tb = &b->tensors[i]; /* same order, too */
        if (ta->name.len != tb->name.len || memcmp(ta->name.ptr, tb->name.ptr, (size_t)ta->name.len) != 0 ||
            ta->n_dims != tb->n_dims || memcmp(ta->ne, tb->ne, sizeof(ta->ne)) != 0 || ta->type != tb->type ||
            ta->offset != tb->offset || ta->nbytes != tb->nbytes || memcmp(ta->data, tb->data, ta->nbytes) != 0)
            fail_msg("tensor %.*s differs", (int)tb->name.len, tb->name.ptr);
    }
    kvrt_gguf_close(a);
    kvrt_gguf_close(b);
}

static void test_f32_matches_llama_cpp(void **state)
{
    (void)state;
    kvrt_model_file *mf = load_stories_bin();
    size_t size;
    char *ours = export_mem(mf, (kvrt_gguf_export_params){KVRT_DTYPE_F32, NULL, 0, true}, &size);
    compare_with_reference(ours, size, 512);
    free(ours);
    /* with the context length llama.cpp wrote, every shared key is equal */
    ours = export_mem(mf, (kvrt_gguf_export_params){KVRT_DTYPE_F32, NULL, 128, true}, &size);
    compare_with_reference(ours, size, 128);
    free(ours);
    kvrt_model_file_free(mf);
}

/* The shipped models/stories260K.gguf is exactly what the converter writes. */
static void test_shipped_model_is_reproducible(void **state)
{
    (void)state;
    kvrt_model_file *mf = load_stories_bin();
    size_t size;
    char *ours = export_mem(mf, (kvrt_gguf_export_params){KVRT_DTYPE_F32, NULL, 0, true}, &size);
    FILE *f = fopen(KVRT_SOURCE_DIR "/models/stories260K.gguf", "rb");
    assert_non_null(f);
    char *shipped = malloc(size + 1);
    assert_int_equal(fread(shipped, 1, size + 1, f), size);
    fclose(f);
    assert_memory_equal(shipped, ours, size);
    free(shipped);
    free(ours);
    kvrt_model_file_free(mf);
}

static void test_tied_output_omitted_on_request(void **state)
{
    (void)state;
    kvrt_model_file *mf = load_stories_bin(), *back;
    size_t size;
    char *ours = export_mem(mf, (kvrt_gguf_export_params){KVRT_DTYPE_F32, "stories260K", 0, false}, &size);
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_gguf_memory(ours, size, NULL, false, &back, &err), KVRT_OK);
    assert_true(back->w.output.data == back->w.tok_embd.data);
    assert_int_equal(back->hp.n_ctx_train, 512);
    assert_memory_equal(back->w.output.data, mf->w.tok_embd.data, mf->w.tok_embd.nbytes);
    kvrt_model_file_free(back);
    free(ours);
    kvrt_model_file_free(mf);
}

/* Quantized files: the types the rules give, values within the type's rounding. */
static void check_quantized(kvrt_dtype type, double rel_bound)
{
    kvrt_model_file *src = load_stories_bin(), *q;
    size_t size;
    char *bytes = export_mem(src, (kvrt_gguf_export_params){type, NULL, 0, true}, &size);
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_gguf_memory(bytes, size, NULL, false, &q, &err), KVRT_OK);
    assert_int_equal(q->main_type, type);
    assert_int_equal(q->w.tok_embd.type, type);
    assert_int_equal(q->w.output_norm.type, KVRT_DTYPE_F32);
    int32_t n = kvrt_llama_tensor_count(src->hp.n_layer, true);
    float row_q[256];
    for (int32_t i = 0; i < n; i++) {
        const kvrt_tensor_ref *a = kvrt_llama_tensor_ref(src, true, i), *b = kvrt_llama_tensor_ref(q, true, i);
        kvrt_dtype want = a->ne[1] == 1 ? KVRT_DTYPE_F32 : a->ne[0] % 32 ? KVRT_DTYPE_F16 : type;
        assert_int_equal(b->type, want);
        if (a->ne[0] == 172)
            assert_int_equal(b->type, type == KVRT_DTYPE_F32 ? KVRT_DTYPE_F32 : KVRT_DTYPE_F16); /* ffn_down */
        size_t rb = kvrt_dtype_row_bytes(b->type, b->ne[0]);
        for (int64_t r = 0; r < a->ne[1]; r++) {
            const float *x = (const float *)a->data + r * a->ne[0];
            kvrt_dequantize_row(b->type, (const uint8_t *)b->data + r * rb, row_q, b->ne[0]);
            for (int64_t j0 = 0; j0 < a->ne[0]; j0 += 32) {
                int64_t j1 = KVRT_MIN(j0 + 32, a->ne[0]);
                double amax = 0;
                for (int64_t j = j0; j < j1; j++)
                    amax = fmax(amax, fabs(x[j]));
                double bound = want == KVRT_DTYPE_F32 ? 0.0 : want == KVRT_DTYPE_F16 ? amax / 1024.0 : amax * rel_bound;
                for (int64_t j = j0; j < j1; j++)
                    if (fabs((double)row_q[j] - x[j]) > bound)
                        fail_msg("tensor %d row %lld col %lld: %g vs %g (bound %g)", i, (long long)r, (long long)j,
                                 (double)row_q[j], (double)x[j], bound);
            }
        }
    }
    kvrt_model_file_free(q);
    kvrt_model_file_free(src);
    free(bytes);
}

static void test_quantized_outputs(void **state)
{
    (void)state;
    check_quantized(KVRT_DTYPE_F16, 0.0);
    /* Q8_0: step amax/127, half a step of rounding plus the F16 scale's rounding. */
    check_quantized(KVRT_DTYPE_Q8_0, 0.5 / 127.0 + 127.0 / 2048.0 / 127.0);
    /* Q4_0: step amax/8; the value opposite the extreme may clamp at 7 steps (an eighth). */
    check_quantized(KVRT_DTYPE_Q4_0, 1.0 / 8.0 + 8.0 / 2048.0);
}

static void test_gguf_source_round_trip(void **state)
{
    (void)state;
    kvrt_model_file *ref, *back;
    kvrt_error err;
    assert_int_equal(kvrt_model_file_load_gguf(model_path("stories260K.gguf"), NULL, false, NULL, &ref, &err),
                     KVRT_OK);
    size_t size;
    char *bytes = export_mem(ref, (kvrt_gguf_export_params){KVRT_DTYPE_F32, NULL, 0, true}, &size);
    compare_with_reference(bytes, size, 128);
    assert_int_equal(kvrt_model_file_load_gguf_memory(bytes, size, NULL, false, &back, &err), KVRT_OK);
    assert_int_equal(back->hp.n_ctx_train, 128);
    kvrt_model_file_free(back);
    kvrt_model_file_free(ref);
    free(bytes);
}

/* ---- the command-line tool ---------------------------------------------------------------------- */

static const char *tool(void)
{
    static char path[4096];
    const char *b = getenv("KVRT_BUILD_DIR");
    snprintf(path, sizeof(path), "%s/kvrt-convert", b && *b ? b : ".");
    if (access(path, X_OK) != 0)
        fail_msg("kvrt-convert not found at %s (set KVRT_BUILD_DIR)", path);
    return path;
}

static int run(const char *args)
{
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "%s %s >/dev/null 2>/tmp/kvrt_test_convert.err", tool(), args);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_tool(void **state)
{
    (void)state;
    char out[] = "/tmp/kvrt_test_convert_XXXXXX";
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    char args[8192];
    snprintf(args, sizeof(args), "-q %s %s %s", model_path("stories260K.bin"), model_path("tok512.bin"), out);
    assert_int_equal(run(args), 0);
    FILE *f = fopen(out, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    size_t size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *bytes = malloc(size);
    assert_int_equal(fread(bytes, 1, size, f), size);
    fclose(f);
    compare_with_reference(bytes, size, 512);
    free(bytes);
    assert_int_equal(run("--help"), 0);
    assert_int_not_equal(run("--type q4_K a b c"), 0);
    unlink(out);
    snprintf(args, sizeof(args), "%s/nope.bin %s %s", model_path(""), model_path("tok512.bin"), out);
    assert_int_not_equal(run(args), 0);
    snprintf(args, sizeof(args), "%s %s %s", model_path("stories260K.bin"), model_path("tokenizer.bin"), out);
    assert_int_not_equal(run(args), 0); /* a 32000-token vocabulary for a 512-token model */
    assert_int_not_equal(access(out, F_OK), 0); /* a failed conversion leaves no file */
    unlink(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32_matches_llama_cpp),
        cmocka_unit_test(test_shipped_model_is_reproducible),
        cmocka_unit_test(test_tied_output_omitted_on_request),
        cmocka_unit_test(test_quantized_outputs),
        cmocka_unit_test(test_gguf_source_round_trip),
        cmocka_unit_test(test_tool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
