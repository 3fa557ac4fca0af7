/* The model on every GPU backend built in (Vulkan on lavapipe, OpenCL on PoCL
 * in CI): golden greedy tokens exactly, teacher-forced logits within the
 * DESIGN.md bounds, a sequence prefilled on one backend and decoded on
 * another (KV blocks copied byte for byte) gives the golden tokens, and the
 * same bad batch is the same error everywhere. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvrt.h"
#include "model/model_api_internal.h"
#include "test_drivers.h"
#include "test_models.h"
#include "backend/ops.h"

#define N_POS 256
#define N_VOCAB 512

static int32_t IDS[N_POS + 1];
static float *REF_LOGITS;

typedef struct backend_run {
    kvrt_backend_kind kind;
    kvrt_context *ctx;
    kvrt_model *model;
} backend_run;

static backend_run RUNS[3];
static int N_RUNS;

static kvrt_model *load_on(kvrt_context *ctx)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/models/stories260K.gguf", KVRT_SOURCE_DIR);
    kvrt_model_params p = kvrt_model_default_params();
    p.path = path;
    p.max_context = 512;
    kvrt_model *m = NULL;
    kvrt_error err;
    if (kvrt_model_load(ctx, &p, &m, &err) != KVRT_OK)
        fail_msg("loading on %s: %s", kvrt_context_description(ctx), err.message);
    return m;
}

/* Every backend this build has must run: CI has lavapipe and PoCL, so a
 * backend that cannot start is a failure, not a skip. */
static void add_backend(kvrt_backend_kind kind)
{
    kvrt_context_params cp = kvrt_context_default_params();
    cp.backend = kind;
    cp.n_threads = 2;
    backend_run *r = &RUNS[N_RUNS];
    kvrt_error err;
    if (kvrt_context_create(&cp, &r->ctx, &err) != KVRT_OK)
        fail_msg("the %s backend is built in but cannot start: %s", kvrt_backend_name(kind), err.message);
    r->kind = kind;
    r->model = load_on(r->ctx);
    N_RUNS++;
}

static int setup(void **state)
{
    (void)state;
    if (kvrt_test_read_ids("golden/stories260K-once/all_ids.txt", IDS, N_POS + 1) != N_POS + 1)
        return -1;
    size_t n = 0;
    REF_LOGITS = kvrt_test_read_file("golden/stories260K-once/logits.f32", &n);
    if (!REF_LOGITS || n != (size_t)N_POS * N_VOCAB * sizeof(float))
        return -1;
    kvrt_test_pin_gpu_drivers();
    add_backend(KVRT_BACKEND_CPU);
#if defined(KVRT_HAVE_VULKAN_BACKEND)
    add_backend(KVRT_BACKEND_VULKAN);
#endif
#if defined(KVRT_HAVE_OPENCL_BACKEND)
    add_backend(KVRT_BACKEND_OPENCL);
#endif
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < N_RUNS; i++) {
        kvrt_model_destroy(RUNS[i].model);
        kvrt_context_destroy(RUNS[i].ctx);
    }
    free(REF_LOGITS);
    return 0;
}

static kvrt_session *session_on(kvrt_model *m, int32_t block_size, kvrt_dtype kv, int32_t n_batch)
{
    kvrt_session_params sp = kvrt_session_default_params();
    sp.n_ctx = 512;
    sp.block_size = block_size;
    sp.kv_type = kv;
    sp.n_batch = n_batch;
    kvrt_session *s = NULL;
    kvrt_error err;
    if (kvrt_session_create(m, &sp, &s, &err) != KVRT_OK)
        fail_msg("session: %s", err.message);
    return s;
}

static int32_t argmax(const float *x)
{
    int32_t best = 0;
    for (int32_t v = 1; v < N_VOCAB; v++)
        best = x[v] > x[best] ? v : best;
    return best;
}

/* Greedy decoding from position `from` (the cache holds [0, from)), checking
 * every token against the golden ids; `logits` are those after from-1. */
static void decode_golden(kvrt_session *s, float *logits, int32_t from, const char *what)
{
    for (int32_t p = from; p <= N_POS; p++) {
        int32_t tok = argmax(logits);
        if (tok != IDS[p])
            fail_msg("%s: token at position %d is %d, expected %d", what, p, tok, IDS[p]);
        if (p < N_POS)
            assert_int_equal(kvrt_session_eval(s, &tok, 1, logits, NULL), KVRT_OK);
    }
}

static void test_greedy_golden_every_backend(void **state)
{
    (void)state;
    const struct { int32_t block; kvrt_dtype kv; int32_t chunk; } cfg[] = {
        {16, KVRT_DTYPE_F32, 512}, {8, KVRT_DTYPE_F16, 7}, {32, KVRT_DTYPE_F32, 1},
    };
    float logits[N_VOCAB];
    for (int r = 1; r < N_RUNS; r++) { /* the CPU runs the full grid in test_model_golden */
        for (size_t c = 0; c < sizeof(cfg) / sizeof(cfg[0]); c++) {
            char what[128];
            snprintf(what, sizeof(what), "%s, KV %s, block %d, chunk %d", kvrt_backend_name(RUNS[r].kind),
                     kvrt_dtype_name(cfg[c].kv), cfg[c].block, cfg[c].chunk);
            kvrt_session *s = session_on(RUNS[r].model, cfg[c].block, cfg[c].kv, cfg[c].chunk);
            assert_int_equal(kvrt_session_eval(s, IDS, 5, logits, NULL), KVRT_OK);
            decode_golden(s, logits, 5, what);
            kvrt_session_destroy(s);
        }
    }
}

static void test_teacher_forced_every_backend(void **state)
{
    (void)state;
    float *logits = malloc((size_t)N_POS * N_VOCAB * sizeof(float));
    for (int r = 1; r < N_RUNS; r++) {
        for (int kv = 0; kv < 2; kv++) {
            kvrt_dtype t = kv ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32;
            kvrt_session *s = session_on(RUNS[r].model, 16, t, 64);
            assert_int_equal(kvrt_session_eval(s, IDS, N_POS, NULL, logits), KVRT_OK);
            double mx = 0, sum = 0;
            for (size_t i = 0; i < (size_t)N_POS * N_VOCAB; i++) {
                double d = isfinite(logits[i]) ? fabs((double)logits[i] - REF_LOGITS[i]) : INFINITY;
                mx = d > mx ? d : mx;
                sum += d;
            }
            double mean = sum / ((double)N_POS * N_VOCAB);
            print_message("%s, KV %s: teacher-forced max abs %.3g, mean abs %.3g\n", kvrt_backend_name(RUNS[r].kind),
                          kvrt_dtype_name(t), mx, mean);
            if (t == KVRT_DTYPE_F32)
                assert_true(mx <= 1e-3);
            else
                assert_true(mx <= 0.1 && mean <= 5e-3);
            kvrt_session_destroy(s);
        }
    }
    free(logits);
}

/* Copies the blocks holding [0, n_past) of every layer, K and V, byte for byte. */
static void move_blocks(backend_run *from, kvrt_session *src, backend_run *to, kvrt_session *dst, int32_t n_past,
                        int32_t block_size)
{
    kvrt_backend *bs = from->ctx->be, *bd = to->ctx->be;
    kvrt_kv_pool *ps = kvrt_session_kv_pool(src), *pd = kvrt_session_kv_pool(dst);
    kvrt_model_info info;
    kvrt_model_get_info(from->model, &info);
    kvrt_kv_pool_desc desc = {.n_layers = info.n_layer, .n_kv_heads = info.n_head_kv, .head_dim = info.head_dim,
                              .block_size = block_size, .num_blocks = 1, .dtype = KVRT_DTYPE_F32};
    size_t bytes = kvrt_kv_block_bytes(&desc);
    void *buf = malloc(bytes);
    int32_t n_blocks = (n_past + block_size - 1) / block_size;
    assert_int_equal(kvrt_session_adopt(dst, n_past), KVRT_OK);
    for (int32_t l = 0; l < info.n_layer; l++) {
        for (int w = 0; w < 2; w++) {
            for (int32_t b = 0; b < n_blocks; b++) {
                assert_int_equal(kvrt_op_kv_block_read(bs, ps, l, (kvrt_kv_which)w, b, buf), KVRT_OK);
                assert_int_equal(kvrt_op_kv_block_write(bd, pd, l, (kvrt_kv_which)w, b, buf), KVRT_OK);
            }
        }
    }
    free(buf);
}

/* Prefill (prompt plus a teacher-forced stretch) on one backend, then greedy
 * decoding on another from the copied blocks: the golden tokens, F32 KV. */
static void test_prefill_here_decode_there(void **state)
{
    (void)state;
    const int32_t split = 100; /* positions computed on the first backend */
    float logits[N_VOCAB];
    for (int a = 0; a < N_RUNS; a++) {
        for (int b = 0; b < N_RUNS; b++) {
            if (a == b)
                continue;
            char what[96];
            snprintf(what, sizeof(what), "prefill on %s, decode on %s", kvrt_backend_name(RUNS[a].kind),
                     kvrt_backend_name(RUNS[b].kind));
            kvrt_session *src = session_on(RUNS[a].model, 16, KVRT_DTYPE_F32, 512);
            kvrt_session *dst = session_on(RUNS[b].model, 16, KVRT_DTYPE_F32, 512);
            assert_int_equal(kvrt_session_eval(src, IDS, split - 1, NULL, NULL), KVRT_OK);
            move_blocks(&RUNS[a], src, &RUNS[b], dst, split - 1, 16);
            /* the last prefilled token runs on the second backend: its logits start the decode */
            assert_int_equal(kvrt_session_eval(dst, IDS + split - 1, 1, logits, NULL), KVRT_OK);
            decode_golden(dst, logits, split, what);
            kvrt_session_destroy(src);
            kvrt_session_destroy(dst);
        }
    }
}

/* The same bad batch is the same error on every backend, found on the host
 * before anything goes to a device (kvrt_batch_check and the model's ids and
 * positions), and the KV pool is left as it was. */
static void test_same_bad_batch_same_error(void **state)
{
    (void)state;
    enum { CASES = 6 };
    char first[CASES][KVRT_ERROR_MESSAGE_MAX];
    kvrt_status first_st[CASES];
    for (int r = 0; r < N_RUNS; r++) {
        kvrt_session *sess = session_on(RUNS[r].model, 16, KVRT_DTYPE_F32, 512);
        kvrt_kv_pool *pool = kvrt_session_kv_pool(sess);
        kvrt_backend *be = RUNS[r].ctx->be;
        const kvrt_kv_pool_desc *pd = kvrt_kv_pool_desc_of(pool);
        size_t bb = kvrt_kv_block_bytes(pd);
        unsigned char *blk = calloc(1, bb), *zero = calloc(1, bb);
        for (int c = 0; c < CASES; c++) {
            int32_t tokens[2] = {1, 2}, pos[2] = {0, 1}, slots[2] = {0, 1}, qsl[2] = {0, 2}, lens[1] = {2};
            int32_t table[32], logits_idx[1] = {1};
            for (int32_t i = 0; i < 32; i++)
                table[i] = i;
            kvrt_batch b = {.num_seqs = 1, .num_tokens = 2, .tokens = tokens, .positions = pos,
                            .slot_mapping = slots, .query_start_loc = qsl, .seq_lens = lens, .block_tables = table,
                            .max_blocks_per_seq = 32, .logits_indices = logits_idx, .num_logits = 1};
            switch (c) {
            case 0: pos[1] = 600; break;                 /* beyond the RoPE table (max_context 512) */
            case 1: tokens[0] = 9999; break;             /* outside the vocabulary */
            case 2: slots[1] = pd->num_blocks * 16; break; /* past the pool */
            case 3: table[0] = pd->num_blocks; break;    /* a block the pool does not have */
            case 4: logits_idx[0] = 2; break;            /* a row the batch does not have */
            default: lens[0] = 32 * 16 + 1; break;       /* longer than its table */
            }
            float logits[N_VOCAB];
            kvrt_error err;
            kvrt_status st = kvrt_llama_forward(RUNS[r].model->lm, pool, &b, logits, &err);
            assert_int_not_equal(st, KVRT_OK);
            if (r == 0) {
                first_st[c] = st;
                snprintf(first[c], sizeof(first[c]), "%s", err.message);
            } else {
                assert_int_equal(st, first_st[c]);
                assert_string_equal(err.message, first[c]);
            }
            for (int32_t l = 0; l < pd->n_layers; l++) { /* nothing was written */
                assert_int_equal(kvrt_op_kv_block_read(be, pool, l, KVRT_KV_K, 0, blk), KVRT_OK);
                assert_memory_equal(blk, zero, bb);
            }
        }
        free(blk);
        free(zero);
        kvrt_session_destroy(sess);
    }
    assert_non_null(strstr(first[0], "position 600 at batch row 1 is outside [0, 512)"));
    assert_int_equal(first_st[0], KVRT_ERR_CONTEXT_OVERFLOW);
    assert_int_equal(first_st[1], KVRT_ERR_BAD_TOKEN);
    assert_non_null(strstr(first[2], "slot_mapping[1]"));
    assert_non_null(strstr(first[3], "block_tables[0][0]"));
    assert_non_null(strstr(first[4], "logits index 2"));
    assert_int_equal(first_st[5], KVRT_ERR_CONTEXT_OVERFLOW);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_golden_every_backend),
        cmocka_unit_test(test_teacher_forced_every_backend),
        cmocka_unit_test(test_prefill_here_decode_there),
        cmocka_unit_test(test_same_bad_batch_same_error),
    };
    return cmocka_run_group_tests_name("model_backends", tests, setup, teardown);
}
