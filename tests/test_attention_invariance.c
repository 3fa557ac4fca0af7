/* Bitwise properties of the CPU attention: block order does not matter,
 * paged equals the contiguous layout, a sequence's output does not depend on
 * its batch, thread counts agree; and the bytes the kv write stores. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cases.h"
#include "backend/backend.h"
#include "common/fp16.h"
#include "cpu_attention.h"
#include "kvrt.h"

static kvrt_context *make_ctx(int n_threads)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = n_threads;
    kvrt_context *ctx = NULL;
    assert_int_equal(kvrt_context_create(&p, &ctx, NULL), KVRT_OK);
    return ctx;
}

/* Full-batch output of a case on ctx (checked against the reference too). */
static float *run_out(kvrt_context *ctx, const attn_case_data *d)
{
    float *out = malloc(attn_case_out_len(d) * sizeof(float));
    assert_non_null(out);
    attn_check r;
    char msg[512];
    bool ok = attn_case_run(ctx, d, out, &r, msg, sizeof(msg));
    if (!ok)
        print_error("%s\n", msg);
    assert_true(ok);
    return out;
}

static void assert_bitwise(const float *a, const float *b, size_t n)
{
    assert_memory_equal(a, b, n * sizeof(float));
}

/* Decode and prefill cases, F32 and F16, batches with multi-partition sequences. */
static void some_cases(attn_case c[4])
{
    attn_case_make(&c[0], 128, 32, 8, 16, KVRT_DTYPE_F32, 0, 0, ATTN_DECODE, 0, 101);
    c[0].seq_lens[2] = 1300; /* six partitions inside the batch */
    attn_case_make(&c[1], 64, 8, 1, 8, KVRT_DTYPE_F16, 256, 4, ATTN_DECODE, 0, 102);
    c[1].seq_lens[4] = 1100;
    attn_case_make(&c[2], 80, 8, 2, 32, KVRT_DTYPE_F16, 0, 0, ATTN_PREFILL, 0, 103);
    attn_case_make(&c[3], 96, 4, 4, 16, KVRT_DTYPE_F32, 100, 2, ATTN_PREFILL, 0, 104);
}

static void test_block_order_does_not_matter(void **state)
{
    (void)state;
    kvrt_context *ctx = make_ctx(2);
    attn_case cases[4];
    some_cases(cases);
    for (int i = 0; i < 4; i++) {
        attn_case_data shuffled, in_order;
        assert_true(attn_case_build(&cases[i], &shuffled));
        cases[i].in_order_blocks = true;
        assert_true(attn_case_build(&cases[i], &in_order));
        /* same values, different blocks */
        assert_memory_equal(shuffled.q, in_order.q, attn_case_out_len(&shuffled) * sizeof(float));
        assert_memory_not_equal(shuffled.block_tables, in_order.block_tables,
                                (size_t)shuffled.c.num_seqs * (size_t)shuffled.max_blocks * sizeof(int32_t));
        float *a = run_out(ctx, &shuffled), *b = run_out(ctx, &in_order);
        assert_bitwise(a, b, attn_case_out_len(&shuffled));
        free(a);
        free(b);
        attn_case_free(&shuffled);
        attn_case_free(&in_order);
    }
    kvrt_context_destroy(ctx);
}

static void test_batch_invariance(void **state)
{
    (void)state;
    kvrt_context *ctx = make_ctx(2);
    attn_case cases[4];
    some_cases(cases);
    for (int i = 0; i < 4; i++) {
        attn_case_data d;
        assert_true(attn_case_build(&cases[i], &d));
        size_t n = attn_case_out_len(&d);
        float *batch = malloc(n * sizeof(float)), *alone = malloc(n * sizeof(float)), *part = malloc(n * sizeof(float));
        assert_true(batch && alone && part);
        kvrt_kv_cache *cache = NULL;
        assert_int_equal(attn_case_upload(ctx, &d, 1, &cache, NULL), KVRT_OK);
        bool canaries;
        assert_int_equal(attn_case_attend(cache, &d, 0, 0, d.c.num_seqs, batch, &canaries), KVRT_OK);
        assert_true(canaries);
        for (int32_t s = 0; s < d.c.num_seqs; s++) {
            assert_int_equal(attn_case_attend(cache, &d, 0, s, 1, alone, &canaries), KVRT_OK);
            assert_true(canaries);
        }
        assert_bitwise(batch, alone, n);
        /* another batch composition: the middle three together */
        memcpy(part, batch, n * sizeof(float));
        assert_int_equal(attn_case_attend(cache, &d, 0, 2, 3, part, &canaries), KVRT_OK);
        assert_bitwise(batch, part, n);
        attn_check r = attn_case_check(&d, batch);
        assert_true(attn_check_ok(&r));
        kvrt_kv_cache_destroy(cache);
        free(batch);
        free(alone);
        free(part);
        attn_case_free(&d);
    }
    kvrt_context_destroy(ctx);
}

static void test_thread_counts_agree(void **state)
{
    (void)state;
    kvrt_context *one = make_ctx(1), *two = make_ctx(2), *three = make_ctx(3);
    attn_case cases[4];
    some_cases(cases);
    for (int i = 0; i < 4; i++) {
        attn_case_data d;
        assert_true(attn_case_build(&cases[i], &d));
        float *a = run_out(one, &d), *b = run_out(two, &d), *c = run_out(three, &d);
        assert_bitwise(a, b, attn_case_out_len(&d));
        assert_bitwise(a, c, attn_case_out_len(&d));
        free(a);
        free(b);
        free(c);
        attn_case_free(&d);
    }
    kvrt_context_destroy(one);
    kvrt_context_destroy(two);
    kvrt_context_destroy(three);
}

/* The contiguous-layout decode (for the benchmark) equals the paged decode
 * bitwise on the same values. */
static void test_paged_equals_contiguous(void **state)
{
    (void)state;
    kvrt_context *ctx = make_ctx(2);
    attn_case cases[4];
    some_cases(cases);
    for (int i = 0; i < 2; i++) { /* the decode cases */
        attn_case_data d;
        assert_true(attn_case_build(&cases[i], &d));
        const attn_case *c = &d.c;
        float *paged = run_out(ctx, &d);
        int32_t max_len = 0;
        for (int32_t s = 0; s < c->num_seqs; s++)
            max_len = c->seq_lens[s] > max_len ? c->seq_lens[s] : max_len;
        size_t kv_row = (size_t)c->n_kv_heads * (size_t)c->head_dim, hd = (size_t)c->head_dim;
        size_t total = (size_t)c->num_seqs * (size_t)max_len * kv_row;
        float *kf = calloc(total, sizeof(float)), *vf = calloc(total, sizeof(float));
        uint16_t *kh = calloc(total, sizeof(uint16_t)), *vh = calloc(total, sizeof(uint16_t));
        float *contig = calloc(attn_case_out_len(&d), sizeof(float));
        assert_true(kf && vf && kh && vh && contig);
        for (int32_t s = 0; s < c->num_seqs; s++)
            for (int32_t h = 0; h < c->n_kv_heads; h++)
                for (int32_t j = 0; j < c->seq_lens[s]; j++)
                    for (size_t e = 0; e < hd; e++) {
                        size_t dst = (((size_t)s * (size_t)c->n_kv_heads + (size_t)h) * (size_t)max_len + (size_t)j) * hd + e;
                        size_t src = d.seq_kv_offset[s] + (size_t)j * kv_row + (size_t)h * hd + e;
                        kf[dst] = d.k_stored[src];
                        vf[dst] = d.v_stored[src];
                        kh[dst] = kvrt_f32_to_fp16(kf[dst]);
                        vh[dst] = kvrt_f32_to_fp16(vf[dst]);
                    }
        bool f16 = c->dtype == KVRT_DTYPE_F16;
        kvrt_cpu_contig_kv kv = {c->dtype, c->n_kv_heads, c->head_dim, max_len, f16 ? (void *)kh : (void *)kf,
                                 f16 ? (void *)vh : (void *)vf, NULL};
        int64_t row = (int64_t)c->n_heads * c->head_dim;
        kvrt_attn_desc desc = {c->num_seqs, c->n_heads, 0, d.scale, c->window, c->sinks, row, row, 0, 0};
        kvrt_backend *be = ((struct kvrt_context *)ctx)->be;
        assert_int_equal(kvrt_cpu_attn_decode_contiguous(be, &kv, &desc, d.q, d.seq_lens, contig), KVRT_OK);
        assert_bitwise(paged, contig, attn_case_out_len(&d));
        /* its argument checks */
        int32_t bad_lens[ATTN_MAX_SEQS];
        memcpy(bad_lens, d.seq_lens, (size_t)c->num_seqs * sizeof(int32_t));
        bad_lens[0] = max_len + 1;
        assert_int_equal(kvrt_cpu_attn_decode_contiguous(be, &kv, &desc, d.q, bad_lens, contig),
                         KVRT_ERR_INVALID_ARGUMENT);
        assert_non_null(strstr(be->err.message, "seq_lens[0]"));
        free(kf);
        free(vf);
        free(kh);
        free(vh);
        free(contig);
        free(paged);
        attn_case_free(&d);
    }
    kvrt_context_destroy(ctx);
}

/* kv write: F32 bytes exact, F16 rounded to nearest even (ties, subnormals,
 * overflow), padding slots skipped, other layers untouched; block read/write
 * and copy move raw bytes. */
static void test_kv_write_bytes(void **state)
{
    (void)state;
    kvrt_context *ctx = make_ctx(2);
    for (int f16 = 0; f16 < 2; f16++) {
        enum { KV = 2, HD = 12, BS = 8, NB = 4, NT = 5 };
        kvrt_kv_cache_params p = {2, KV, HD, BS, NB, .dtype = f16 ? KVRT_DTYPE_F16 : KVRT_DTYPE_F32};
        kvrt_kv_cache *cache = NULL;
        assert_int_equal(kvrt_kv_cache_create(ctx, &p, &cache, NULL), KVRT_OK);
        size_t bb = kvrt_kv_cache_block_bytes(cache), elem = f16 ? 2 : 4;
        assert_int_equal(bb, (size_t)KV * BS * HD * elem);
        float k[NT][KV][HD], v[NT][KV][HD];
        const float special[] = {1.0f + 1.0f / 2048.0f /* tie, rounds down to even */,
                                 1.0f + 3.0f / 2048.0f /* tie, rounds up */, 6.0e-8f /* subnormal */,
                                 70000.0f /* saturates to 65504 */, -2.5e-5f, 65504.0f};
        for (int t = 0; t < NT; t++)
            for (int h = 0; h < KV; h++)
                for (int e = 0; e < HD; e++) {
                    k[t][h][e] = e < 6 ? special[e] : 0.37f * (float)(t * 31 + h * 7 + e) - 5.0f;
                    v[t][h][e] = -k[t][h][e] * 0.5f + 0.001f * (float)t;
                }
        const int32_t slots[NT] = {17, -1, 3, 31, 8}; /* blocks 2, -, 0, 3, 1 */
        assert_int_equal(kvrt_kv_cache_write(cache, 1, &k[0][0][0], &v[0][0][0], slots, NT), KVRT_OK);
        unsigned char *blk = malloc(bb), *zero = calloc(1, bb);
        assert_true(blk && zero);
        for (int t = 0; t < NT; t++) {
            if (slots[t] < 0)
                continue;
            int32_t b = slots[t] / BS, off = slots[t] % BS;
            for (int which = 0; which < 2; which++) {
                assert_int_equal(kvrt_kv_cache_read_block(cache, 1, which, b, blk, bb), KVRT_OK);
                for (int h = 0; h < KV; h++)
                    for (int e = 0; e < HD; e++) {
                        float x = which ? v[t][h][e] : k[t][h][e];
                        size_t at = ((size_t)h * BS + (size_t)off) * HD + (size_t)e;
                        if (f16) {
                            uint16_t got;
                            memcpy(&got, blk + at * 2, 2);
                            assert_int_equal(got, kvrt_f32_to_fp16_kv(x));
                        } else {
                            assert_memory_equal(blk + at * 4, &x, 4);
                        }
                    }
                /* layer 0 was not written */
                assert_int_equal(kvrt_kv_cache_read_block(cache, 0, which, b, blk, bb), KVRT_OK);
                assert_memory_equal(blk, zero, bb);
            }
        }
        if (f16) { /* the RNE cases really differ from truncation, saturation from overflow */
            assert_int_equal(kvrt_f32_to_fp16(special[0]), 0x3c00);
            assert_int_equal(kvrt_f32_to_fp16(special[1]), 0x3c02);
            assert_int_equal(kvrt_f32_to_fp16_kv(special[3]), 0x7bff);
        }
        /* block write, copy, read back */
        unsigned char *pattern = malloc(bb), *back = malloc(bb);
        assert_true(pattern && back);
        for (size_t i = 0; i < bb; i++)
            pattern[i] = (unsigned char)(i * 7 + 3);
        assert_int_equal(kvrt_kv_cache_write_block(cache, 0, 1, 2, pattern, bb), KVRT_OK);
        const int32_t pairs[1][2] = {{2, 0}};
        assert_int_equal(kvrt_kv_cache_copy_blocks(cache, pairs, 1), KVRT_OK);
        assert_int_equal(kvrt_kv_cache_read_block(cache, 0, 1, 0, back, bb), KVRT_OK);
        assert_memory_equal(back, pattern, bb);
        /* the copy moved every layer, K too: layer 1 K of block 0 now holds block 2's */
        assert_int_equal(kvrt_kv_cache_read_block(cache, 1, 0, 2, pattern, bb), KVRT_OK);
        assert_int_equal(kvrt_kv_cache_read_block(cache, 1, 0, 0, back, bb), KVRT_OK);
        assert_memory_equal(back, pattern, bb);
        free(pattern);
        free(back);
        free(blk);
        free(zero);
        kvrt_kv_cache_destroy(cache);
    }
    kvrt_context_destroy(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_order_does_not_matter),
        cmocka_unit_test(test_batch_invariance),
        cmocka_unit_test(test_thread_counts_agree),
        cmocka_unit_test(test_paged_equals_contiguous),
        cmocka_unit_test(test_kv_write_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
