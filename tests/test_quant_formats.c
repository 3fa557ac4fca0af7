/* The weight block formats (common/quant.h) against an independent
 * implementation: tests/data/quant/ggml_<type>.bin hold blocks of random
 * bytes (finite random f16 scales) and what ggml's dequantizer makes of
 * them, plus Gaussian rows, ggml's reference quantization of them and its
 * dequantization (see tests/data/README.md, `quant/`). kvrt's dequantizer must
 * give ggml's values for every block; kvrt's quantizer must come close to
 * ggml's error on the same rows. Also: the type table agrees with the GGUF
 * reader's, non-finite scales are found, and degenerate rows round-trip. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/fp16.h"
#include "common/quant.h"
#include "model/gguf.h"
#include "ref_ops.h"

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

typedef struct ref_file {
    kvrt_dtype type;
    uint32_t n;         /* values per section */
    uint8_t *rand_blk;  /* random blocks */
    float *rand_deq;    /* [n] ggml's dequantization of them */
    float *x;           /* [n] Gaussian row (every 97th value x8) */
    uint8_t *ggml_blk;  /* ggml's reference quantization of x */
    float *ggml_deq;    /* [n] its dequantization */
    uint8_t *bytes;
} ref_file;

static void read_ref(kvrt_dtype type, ref_file *r)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/tests/data/quant/ggml_%s.bin", KVRT_SOURCE_DIR, kvrt_dtype_name(type));
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    r->bytes = xmalloc((size_t)size);
    assert_int_equal(fread(r->bytes, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    uint32_t hdr[4];
    memcpy(hdr, r->bytes, sizeof(hdr));
    assert_int_equal(hdr[0], 0x4652514b); /* "KQRF" */
    assert_int_equal(hdr[2], (uint32_t)type);
    r->type = type;
    r->n = hdr[3];
    size_t qb = kvrt_dtype_row_bytes(type, r->n);
    assert_int_equal((size_t)size, 16 + 2 * qb + 12 * (size_t)r->n);
    uint8_t *p = r->bytes + 16;
    r->rand_blk = p, p += qb;
    r->rand_deq = (float *)p, p += 4 * (size_t)r->n;
    r->x = (float *)p, p += 4 * (size_t)r->n;
    r->ggml_blk = p, p += qb;
    r->ggml_deq = (float *)p;
}

static const kvrt_dtype quant_types[] = {
    KVRT_DTYPE_Q4_0, KVRT_DTYPE_Q4_1, KVRT_DTYPE_Q5_0, KVRT_DTYPE_Q5_1, KVRT_DTYPE_Q8_0, KVRT_DTYPE_Q2_K,
    KVRT_DTYPE_Q3_K, KVRT_DTYPE_Q4_K, KVRT_DTYPE_Q5_K, KVRT_DTYPE_Q6_K, KVRT_DTYPE_IQ4_NL, KVRT_DTYPE_IQ4_XS,
};

/* got equals want but for a last-bit difference of a fused multiply-add
 * (ggml may be compiled with contraction): 2^-20 of the value's magnitude
 * plus 2^-20 of the block's products. */
static void assert_values(const char *what, kvrt_dtype type, const float *got, const float *want, uint32_t n)
{
    int64_t inexact = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (got[i] == want[i])
            continue;
        inexact++;
        double tol = 0x1p-20 * (fabs((double)want[i]) + 1e-3);
        if (!(fabs((double)got[i] - want[i]) <= tol))
            fail_msg("%s %s: value %u is %.9g, ggml %.9g", what, kvrt_dtype_name(type), i, (double)got[i],
                     (double)want[i]);
    }
    print_message("%-7s %s: %lld of %u values differ in the last bit\n", kvrt_dtype_name(type), what,
                  (long long)inexact, n);
}

static void test_dequant_matches_ggml(void **state)
{
    (void)state;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(quant_types); i++) {
        ref_file r;
        read_ref(quant_types[i], &r);
        float *got = xmalloc(4 * (size_t)r.n);
        kvrt_dequantize_row(r.type, r.rand_blk, got, r.n);
        assert_values("random blocks", r.type, got, r.rand_deq, r.n);
        kvrt_dequantize_row(r.type, r.ggml_blk, got, r.n);
        assert_values("ggml-quantized blocks", r.type, got, r.ggml_deq, r.n);
        free(got);
        free(r.bytes);
    }
}

static double rmse(const float *a, const float *b, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    return sqrt(s / (double)n);
}

/* kvrt's quantizer vs ggml's reference quantizer on the same row: at most
 * 10 % more RMSE (kvrt's least-squares scales usually do better). */
static void test_quantizer_vs_ggml(void **state)
{
    (void)state;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(quant_types); i++) {
        ref_file r;
        read_ref(quant_types[i], &r);
        uint8_t *q = xmalloc(kvrt_dtype_row_bytes(r.type, r.n));
        float *got = xmalloc(4 * (size_t)r.n);
        kvrt_quantize_row(r.type, r.x, q, r.n);
        kvrt_dequantize_row(r.type, q, got, r.n);
        double mine = rmse(got, r.x, r.n), ggml = rmse(r.ggml_deq, r.x, r.n);
        print_message("%-7s rmse kvrt %.3e ggml %.3e (%.3f)\n", kvrt_dtype_name(r.type), mine, ggml, mine / ggml);
        if (!(mine <= 1.10 * ggml))
            fail_msg("%s: kvrt's quantizer rmse %.3e is above 1.1 x ggml's %.3e", kvrt_dtype_name(r.type), mine,
                     ggml);
        int64_t bad;
        assert_true(kvrt_dtype_row_scales_finite(r.type, q, r.n, &bad));
        free(q);
        free(got);
        free(r.bytes);
    }
}

/* The row-length rules of each type agree with the GGUF reader's type table. */
static void test_table_matches_gguf(void **state)
{
    (void)state;
    for (int i = 0; i < KVRT_N_WEIGHT_TYPES; i++) {
        kvrt_dtype t = KVRT_WEIGHT_TYPES[i];
        int64_t bv;
        size_t bb;
        assert_true(kvrt_ggml_type_layout((uint32_t)t, &bv, &bb));
        assert_int_equal(bv, kvrt_dtype_block_values(t));
        assert_int_equal(bb, kvrt_dtype_block_bytes(t));
        assert_string_equal(kvrt_ggml_type_name((uint32_t)t), kvrt_dtype_name(t));
        kvrt_dtype back;
        assert_true(kvrt_dtype_from_name(kvrt_dtype_name(t), &back));
        assert_int_equal(back, t);
        assert_int_equal(kvrt_dtype_row_bytes(t, bv * 3), 3 * bb);
        if (bv > 1)
            assert_int_equal(kvrt_dtype_row_bytes(t, bv * 3 + 16), 0); /* not a whole block */
    }
    kvrt_dtype t;
    assert_true(kvrt_dtype_from_name("Q4_K", &t));
    assert_int_equal(t, KVRT_DTYPE_Q4_K);
    assert_true(kvrt_dtype_from_name("IQ4_NL", &t));
    assert_int_equal(t, KVRT_DTYPE_IQ4_NL);
    assert_false(kvrt_dtype_from_name("q4_k_m", &t));
    assert_false(kvrt_dtype_from_name("iq2_xxs", &t));
    assert_false(kvrt_dtype_supported((kvrt_dtype)16)); /* iq2_xxs: a grid type */
    assert_false(kvrt_dtype_supported((kvrt_dtype)34)); /* tq1_0 */
}

/* Each f16 scale field of each type set to inf or NaN is found, in the right block. */
static void test_nonfinite_scales(void **state)
{
    (void)state;
    static const uint16_t bad_values[] = {0x7c00, 0xfc00, 0x7e00, 0x7c01};
    for (size_t i = 0; i < KVRT_ARRAY_LEN(quant_types); i++) {
        kvrt_dtype t = quant_types[i];
        const int64_t n = 3 * (int64_t)kvrt_dtype_block_values(t);
        const size_t bb = kvrt_dtype_block_bytes(t);
        uint8_t *q = xmalloc(kvrt_dtype_row_bytes(t, n));
        float *x = xmalloc((size_t)n * sizeof(float));
        ref_rng rng;
        ref_rng_seed(&rng, 7);
        ref_fill(&rng, x, n, -1.0f, 1.0f);
        int64_t bad = -1;
        int found = 0;
        for (size_t off = 0; off + 2 <= bb; off += 2) {
            for (size_t v = 0; v < KVRT_ARRAY_LEN(bad_values); v++) {
                kvrt_quantize_row(t, x, q, n);
                assert_true(kvrt_dtype_row_scales_finite(t, q, n, &bad));
                memcpy(q + bb + off, &bad_values[v], 2); /* in block 1 */
                float *deq = xmalloc((size_t)n * sizeof(float));
                kvrt_dequantize_row(t, q, deq, n);
                bool nonfinite = false;
                for (int64_t k = 0; k < n; k++)
                    nonfinite |= !isfinite(deq[k]);
                free(deq);
                /* a field that makes values non-finite is a scale: it must be caught */
                if (nonfinite) {
                    assert_false(kvrt_dtype_row_scales_finite(t, q, n, &bad));
                    assert_int_equal(bad, 1);
                    found++;
                }
            }
        }
        /* one or two f16 fields, each caught for all four values */
        assert_true(found == 4 || found == 8);
        free(q);
        free(x);
    }
}

/* Zero rows give zeros; a row of one repeated value is reproduced within
 * the f16 rounding of its scale. */
static void test_degenerate_rows(void **state)
{
    (void)state;
    const int64_t n = 512;
    float *x = xmalloc((size_t)n * sizeof(float)), *y = xmalloc((size_t)n * sizeof(float));
    for (size_t i = 0; i < KVRT_ARRAY_LEN(quant_types); i++) {
        kvrt_dtype t = quant_types[i];
        uint8_t *q = xmalloc(kvrt_dtype_row_bytes(t, n));
        memset(x, 0, (size_t)n * sizeof(float));
        kvrt_quantize_row(t, x, q, n);
        kvrt_dequantize_row(t, q, y, n);
        for (int64_t k = 0; k < n; k++)
            assert_true(y[k] == 0.0f);
        for (int64_t k = 0; k < n; k++)
            x[k] = -0.375f;
        kvrt_quantize_row(t, x, q, n);
        kvrt_dequantize_row(t, q, y, n);
        for (int64_t k = 0; k < n; k++)
            if (!(fabsf(y[k] - x[k]) <= 2e-3f * 0.375f))
                fail_msg("%s: constant row value %lld is %g, not -0.375", kvrt_dtype_name(t), (long long)k,
                         (double)y[k]);
        free(q);
    }
    free(x);
    free(y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequant_matches_ggml), cmocka_unit_test(test_quantizer_vs_ggml),
        cmocka_unit_test(test_table_matches_gguf),   cmocka_unit_test(test_nonfinite_scales),
        cmocka_unit_test(test_degenerate_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
