/* CPU kernels of the k-quants, the legacy 4/5-bit types and iq4 (cpu_quant.h)
 * in every flavour this CPU runs (portable, AVX2, AVX-512), each forced in
 * turn: the row kernels directly (dequantization bit-exact against the
 * reference, dot products against the double reference), then matmul
 * through the backend, GEMV (one token) and GEMM (several), with the
 * flavour capped, for row lengths of every whole number of blocks tried and
 * odd row counts, against the double reference over the dequantized
 * weights (DESIGN.md: NMSE <= 1e-6), and the embedding gather. Weights are
 * both quantized Gaussian rows and blocks of random bytes (every bit
 * pattern of the levels, finite scales). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/ops.h"
#include "common/fp16.h"
#include "common/quant.h"
#include "cpu_internal.h"
#include "cpu_quant.h"
#include "ref_ops.h"

#define NMSE_MAX 1e-6

static const kvrt_dtype types[] = {KVRT_DTYPE_Q4_1, KVRT_DTYPE_Q5_0,   KVRT_DTYPE_Q5_1, KVRT_DTYPE_IQ4_NL,
                                   KVRT_DTYPE_Q2_K, KVRT_DTYPE_Q3_K,   KVRT_DTYPE_Q4_K, KVRT_DTYPE_Q5_K,
                                   KVRT_DTYPE_Q6_K, KVRT_DTYPE_IQ4_XS};

/* f16 scale fields per type (byte offsets in the block), as the type table has them */
static int scale_fields(kvrt_dtype t, int off[2])
{
    switch (t) {
    case KVRT_DTYPE_Q4_1:
    case KVRT_DTYPE_Q5_1:
    case KVRT_DTYPE_Q4_K:
    case KVRT_DTYPE_Q5_K: off[0] = 0, off[1] = 2; return 2;
    case KVRT_DTYPE_Q2_K: off[0] = 80, off[1] = 82; return 2;
    case KVRT_DTYPE_Q3_K: off[0] = 108; return 1;
    case KVRT_DTYPE_Q6_K: off[0] = 208; return 1;
    default: off[0] = 0; return 1;
    }
}

static void *xmalloc(size_t n)
{
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    assert_non_null(p);
    return p;
}

/* n_out rows of n_in values: quantized U(-1, 1)/sqrt(n_in) rows, or random
 * bytes with scales in [-0.05, 0.05] (random_bytes). */
static void *make_weights(ref_rng *rng, kvrt_dtype t, int64_t n_out, int64_t n_in, bool random_bytes, size_t *bytes)
{
    const size_t rb = kvrt_dtype_row_bytes(t, n_in), bb = kvrt_dtype_block_bytes(t);
    *bytes = rb * (size_t)n_out;
    uint8_t *w = xmalloc(*bytes);
    if (random_bytes) {
        for (size_t i = 0; i < *bytes; i++)
            w[i] = (uint8_t)ref_rng_u32(rng);
        int off[2], nf = scale_fields(t, off);
        for (size_t b = 0; b < *bytes / bb; b++)
            for (int f = 0; f < nf; f++) {
                uint16_t h = kvrt_f32_to_fp16(ref_uniform(rng, -0.05f, 0.05f));
                memcpy(w + b * bb + off[f], &h, 2);
            }
        return w;
    }
    float *row = xmalloc((size_t)n_in * sizeof(float));
    const float a = 1.0f / sqrtf((float)n_in);
    for (int64_t o = 0; o < n_out; o++) {
        ref_fill(rng, row, n_in, -a, a);
        kvrt_quantize_row(t, row, w + (size_t)o * rb, n_in);
    }
    free(row);
    return w;
}

static int n_isas(kvrt_cpu_isa *isas)
{
    int n = 0;
    for (int i = KVRT_CPU_ISA_PORTABLE; i <= (int)kvrt_cpu_best_isa(); i++)
        isas[n++] = (kvrt_cpu_isa)i;
    return n;
}

/* Row lengths of 1 to 17 blocks plus a long one. */
static int row_lengths(kvrt_dtype t, int64_t *ns)
{
    const int64_t bv = kvrt_dtype_block_values(t);
    static const int64_t blocks[] = {1, 2, 3, 5, 8, 11, 17};
    int n = 0;
    for (size_t i = 0; i < sizeof(blocks) / sizeof(blocks[0]); i++)
        ns[n++] = blocks[i] * bv;
    ns[n++] = bv == 32 ? 4096 + 32 : 4096 + 256;
    return n;
}

/* ---- row kernels ------------------------------------------------------------------------------ */

static void test_row_kernels(void **state)
{
    (void)state;
    kvrt_cpu_isa isas[3];
    const int ni = n_isas(isas);
    print_message("flavours on this CPU: %d (best %s)\n", ni, kvrt_cpu_isa_name(kvrt_cpu_best_isa()));
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const kvrt_dtype t = types[ti];
        int64_t ns[16];
        const int nn = row_lengths(t, ns);
        for (int k = 0; k < nn; k++) {
            const int64_t n = ns[k];
            for (int rb = 0; rb < 2; rb++) {
                ref_rng rng;
                ref_rng_seed(&rng, (uint64_t)(n * 31 + (int64_t)ti * 7 + rb));
                size_t bytes;
                void *w = make_weights(&rng, t, 1, n, rb != 0, &bytes);
                float *x = xmalloc((size_t)n * sizeof(float)), *want = xmalloc((size_t)n * sizeof(float));
                float *got = xmalloc((size_t)n * sizeof(float)), *xs = xmalloc((size_t)(n / 16) * sizeof(float));
                float *xp = xmalloc((size_t)n * sizeof(float)), *xps = xmalloc((size_t)(n / 16) * sizeof(float));
                ref_fill(&rng, x, n, -1.0f, 1.0f);
                kvrt_dequantize_row(t, w, want, n);
                double ref = 0.0, mag = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    ref += (double)want[i] * x[i];
                    mag += fabs((double)want[i] * x[i]);
                }
                kvrt_cpu_xsum16(x, n, xs);
                for (int ii = 0; ii < ni; ii++) {
                    const kvrt_cpu_quant_kernels *kk = kvrt_cpu_quant_kernels_get(isas[ii], t);
                    assert_non_null(kk);
                    kk->dequant(w, got, n);
                    for (int64_t i = 0; i < n; i++)
                        if (memcmp(&got[i], &want[i], sizeof(float)))
                            fail_msg("%s %s n %lld: dequantized value %lld is %.9g, reference %.9g",
                                     kvrt_dtype_name(t), kvrt_cpu_isa_name(isas[ii]), (long long)n, (long long)i,
                                     (double)got[i], (double)want[i]);
                    if (kk->xprep)
                        kk->xprep(x, n, xp, xps); /* the kernel's order of x and its sums */
                    double err = fabs((double)kk->qdot(w, kk->xprep ? xp : x, kk->xprep ? xps : xs, n) - ref);
                    /* F32 sums of n terms: a few ulps of sum |w x| per term group */
                    if (err > (double)(n / 16 + 16) * 0x1p-23 * mag)
                        fail_msg("%s %s n %lld: dot error %.3g vs sum |w x| %.3g", kvrt_dtype_name(t),
                                 kvrt_cpu_isa_name(isas[ii]), (long long)n, err, mag);
                }
                free(x);
                free(want);
                free(got);
                free(xs);
                free(xp);
                free(xps);
                free(w);
            }
        }
    }
}

/* ---- matmul and embed through the backend, each flavour forced ---------------------------------- */

static kvrt_backend *make_backend(int threads)
{
    kvrt_context_params p = kvrt_context_default_params();
    p.n_threads = threads;
    kvrt_backend *be = NULL;
    kvrt_error err;
    assert_int_equal(kvrt_cpu_backend_create(&p, &be, &err), KVRT_OK);
    return be;
}

static kvrt_view wrap(kvrt_backend *be, void *p, size_t bytes)
{
    kvrt_buffer *b = NULL;
    assert_int_equal(be->ops->buffer_wrap_host(be, p, bytes, &b), KVRT_OK);
    return (kvrt_view){b, 0};
}

static void matmul_case(kvrt_backend *be, kvrt_dtype t, int64_t n_out, int64_t n_in, int32_t n_tok, bool rnd,
                        uint64_t seed)
{
    ref_rng rng;
    ref_rng_seed(&rng, seed);
    size_t wbytes;
    void *w = make_weights(&rng, t, n_out, n_in, rnd, &wbytes);
    const int64_t xs = n_in + 3; /* x rows inside wider rows */
    float *x = xmalloc((size_t)(n_tok * xs) * sizeof(float));
    ref_fill(&rng, x, n_tok * xs, -1.0f, 1.0f);
    double *want = xmalloc((size_t)(n_out * n_tok) * sizeof(double));
    ref_matmul(t, w, n_out, n_in, x, xs, n_tok, want);
    const int64_t ys = n_out + 1;
    const size_t ybytes = (size_t)(n_tok * ys + 1) * sizeof(float);
    float *y = xmalloc(ybytes);
    for (size_t i = 0; i < ybytes / sizeof(float); i++)
        y[i] = 12345.0f; /* canaries between rows and after */
    kvrt_view wv = wrap(be, w, wbytes), xv = wrap(be, x, (size_t)(n_tok * xs) * sizeof(float)),
              yv = wrap(be, y, ybytes);
    assert_int_equal(be->ops->matmul(be, t, wv, n_out, n_in, xv, xs, yv, ys, n_tok), KVRT_OK);
    ref_err e = ref_compare(y, ys, want, n_out, n_tok, n_out);
    if (e.nonfinite || !(e.nmse <= NMSE_MAX))
        fail_msg("matmul %s %s %lld x %lld, %d tokens%s: nmse %.3g, max abs %.3g, %lld non-finite",
                 kvrt_dtype_name(t), kvrt_cpu_isa_name(kvrt_cpu(be)->isa), (long long)n_out, (long long)n_in,
                 (int)n_tok, rnd ? " (random bytes)" : "", e.nmse, e.max_abs, (long long)e.nonfinite);
    for (int32_t tk = 0; tk < n_tok; tk++)
        assert_true(y[tk * ys + n_out] == 12345.0f);
    assert_true(y[n_tok * ys] == 12345.0f);
    be->ops->buffer_destroy(be, wv.buf);
    be->ops->buffer_destroy(be, xv.buf);
    be->ops->buffer_destroy(be, yv.buf);
    free(w);
    free(x);
    free(y);
    free(want);
}

static void test_matmul_each_flavour(void **state)
{
    (void)state;
    kvrt_backend *be = make_backend(2);
    kvrt_cpu_isa isas[3];
    const int ni = n_isas(isas);
    static const int64_t n_outs[] = {1, 3, 17, 257};
    static const int32_t n_toks[] = {1, 2, 7, 33};
    for (int ii = 0; ii < ni; ii++) {
        assert_int_equal(kvrt_cpu_backend_cap_isa(be, isas[ii]), isas[ii]);
        for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
            const kvrt_dtype t = types[ti];
            int64_t ns[16];
            const int nn = row_lengths(t, ns);
            /* a pairwise walk over (row length, rows, tokens) */
            for (int k = 0; k < nn; k++)
                matmul_case(be, t, n_outs[k % 4], ns[k], n_toks[(k + ti) % 4], k % 3 == 1,
                            (uint64_t)(1000 * ii + 100 * ti + k));
            /* GEMV over many tasks, and a GEMM over several row tiles */
            matmul_case(be, t, 1031, ns[3], 1, false, 77 + ti);
            matmul_case(be, t, 301, ns[4], 5, true, 78 + ti);
        }
    }
    be->ops->destroy(be);
}

/* Results are bitwise the same for any thread count. */
static void test_matmul_threads(void **state)
{
    (void)state;
    kvrt_backend *one = make_backend(1), *two = make_backend(2);
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const kvrt_dtype t = types[ti];
        const int64_t n_out = 517, n_in = 4 * 256;
        for (int32_t n_tok = 1; n_tok <= 9; n_tok += 8) {
            ref_rng rng;
            ref_rng_seed(&rng, 5 + ti);
            size_t wbytes;
            void *w = make_weights(&rng, t, n_out, n_in, false, &wbytes);
            float *x = xmalloc((size_t)(n_tok * n_in) * sizeof(float));
            ref_fill(&rng, x, n_tok * n_in, -1.0f, 1.0f);
            float *y[2];
            kvrt_backend *be[2] = {one, two};
            for (int k = 0; k < 2; k++) {
                y[k] = xmalloc((size_t)(n_tok * n_out) * sizeof(float));
                kvrt_view wv = wrap(be[k], w, wbytes), xv = wrap(be[k], x, (size_t)(n_tok * n_in) * sizeof(float)),
                          yv = wrap(be[k], y[k], (size_t)(n_tok * n_out) * sizeof(float));
                assert_int_equal(be[k]->ops->matmul(be[k], t, wv, n_out, n_in, xv, n_in, yv, n_out, n_tok), KVRT_OK);
                be[k]->ops->buffer_destroy(be[k], wv.buf);
                be[k]->ops->buffer_destroy(be[k], xv.buf);
                be[k]->ops->buffer_destroy(be[k], yv.buf);
            }
            assert_memory_equal(y[0], y[1], (size_t)(n_tok * n_out) * sizeof(float));
            free(y[0]);
            free(y[1]);
            free(w);
            free(x);
        }
    }
    one->ops->destroy(one);
    two->ops->destroy(two);
}

/* The embedding gather gives the reference's dequantized rows, bit for bit. */
static void test_embed(void **state)
{
    (void)state;
    kvrt_backend *be = make_backend(2);
    kvrt_cpu_isa isas[3];
    const int ni = n_isas(isas);
    for (int ii = 0; ii < ni; ii++) {
        kvrt_cpu_backend_cap_isa(be, isas[ii]);
        for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
            const kvrt_dtype t = types[ti];
            const int64_t dim = 3 * kvrt_dtype_block_values(t), rows = 11;
            ref_rng rng;
            ref_rng_seed(&rng, 9 + ti);
            size_t bytes;
            void *table = make_weights(&rng, t, rows, dim, true, &bytes);
            int32_t ids[4] = {10, 0, 7, 10};
            float *out = xmalloc(4 * (size_t)dim * sizeof(float)), *want = xmalloc((size_t)dim * sizeof(float));
            kvrt_view tv = wrap(be, table, bytes), iv = wrap(be, ids, sizeof(ids)),
                      ov = wrap(be, out, 4 * (size_t)dim * sizeof(float));
            assert_int_equal(be->ops->embed(be, t, tv, dim, iv, 4, ov), KVRT_OK);
            for (int k = 0; k < 4; k++) {
                kvrt_dequantize_row(t, (const uint8_t *)table + (size_t)ids[k] * kvrt_dtype_row_bytes(t, dim), want, dim);
                assert_memory_equal(out + k * dim, want, (size_t)dim * sizeof(float));
            }
            be->ops->buffer_destroy(be, tv.buf);
            be->ops->buffer_destroy(be, iv.buf);
            be->ops->buffer_destroy(be, ov.buf);
            free(table);
            free(out);
            free(want);
        }
    }
    be->ops->destroy(be);
}

/* A row length the type cannot hold is an error, not a read past the row. */
static void test_bad_rows(void **state)
{
    (void)state;
    kvrt_backend *be = make_backend(1);
    static float buf[4096];
    kvrt_view v = wrap(be, buf, sizeof(buf));
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const int64_t bad = kvrt_dtype_block_values(types[ti]) + 16;
        assert_int_equal(kvrt_op_matmul(be, types[ti], v, 2, bad, v, bad, kvrt_view_at(v, 8192), 2, 1),
                         KVRT_ERR_INVALID_ARGUMENT); /* the front door's check: kernels trust their rows */
        assert_non_null(strstr(be->err.message, "not a multiple of the"));
    }
    be->ops->buffer_destroy(be, v.buf);
    be->ops->destroy(be);
}

/* ---- int8 activations (opt-in): against a reference that rounds x the same way ---------------- */

/* x as the int8 kernels see it: d * qs per value ([n]). */
static void q8k_values(const kvrt_cpu_q8k *a, int64_t n, float *x8)
{
    for (int64_t i = 0; i < n; i++)
        x8[i] = a[i / 256].d * (float)a[i / 256].qs[i % 256];
}

static void test_int8_quantize(void **state)
{
    (void)state;
    const int64_t n = 768;
    ref_rng rng;
    ref_rng_seed(&rng, 99);
    float *x = xmalloc((size_t)n * sizeof(float));
    ref_fill(&rng, x, n, -3.0f, 3.0f);
    memset(x + 256, 0, 256 * sizeof(float)); /* an all-zero block: d 0, levels 0 */
    kvrt_cpu_q8k a[3];
    kvrt_cpu_q8k_quantize(x, n, a);
    assert_true(a[1].d == 0.0f);
    for (int64_t i = 0; i < n; i++) {
        const kvrt_cpu_q8k *b = &a[i / 256];
        assert_true(b->qs[i % 256] >= -127);
        /* round to nearest: within half a step (and a rounding of x / d) */
        if (!(fabsf(x[i] - b->d * (float)b->qs[i % 256]) <= 0.5f * b->d * (1.0f + 1e-5f)))
            fail_msg("value %lld: %.9g rounds to %d steps of %.9g", (long long)i, (double)x[i],
                     (int)b->qs[i % 256], (double)b->d);
    }
    for (int k = 0; k < 3; k++)
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int i = 0; i < 16; i++)
                sum += a[k].qs[16 * g + i];
            assert_int_equal(a[k].bsums[g], sum);
        }
    free(x);
}

static void test_int8_row_kernels(void **state)
{
    (void)state;
    static const kvrt_dtype q8types[] = {KVRT_DTYPE_Q4_K, KVRT_DTYPE_Q6_K};
    kvrt_cpu_isa isas[3];
    const int ni = n_isas(isas);
    for (size_t ti = 0; ti < sizeof(q8types) / sizeof(q8types[0]); ti++) {
        const kvrt_dtype t = q8types[ti];
        int64_t ns[16];
        const int nn = row_lengths(t, ns);
        for (int k = 0; k < nn; k++)
            for (int rb = 0; rb < 2; rb++) {
                const int64_t n = ns[k];
                ref_rng rng;
                ref_rng_seed(&rng, (uint64_t)(n * 17 + (int64_t)ti * 5 + rb));
                size_t bytes;
                void *w = make_weights(&rng, t, 1, n, rb != 0, &bytes);
                float *x = xmalloc((size_t)n * sizeof(float)), *x8 = xmalloc((size_t)n * sizeof(float));
                float *deq = xmalloc((size_t)n * sizeof(float));
                kvrt_cpu_q8k *a = xmalloc((size_t)(n / 256) * sizeof(*a));
                ref_fill(&rng, x, n, -1.0f, 1.0f);
                kvrt_cpu_q8k_quantize(x, n, a);
                q8k_values(a, n, x8);
                kvrt_dequantize_row(t, w, deq, n);
                double ref = 0.0, mag = 0.0;
                for (int64_t i = 0; i < n; i++) {
                    ref += (double)deq[i] * x8[i];
                    mag += fabs((double)deq[i] * x8[i]);
                }
                for (int ii = 0; ii < ni; ii++) {
                    kvrt_cpu_q8dot_fn f = kvrt_cpu_q8dot_kernel(isas[ii], t);
                    if (isas[ii] == KVRT_CPU_ISA_PORTABLE)
                        assert_non_null(f);
                    if (!f) /* AVX2, or AVX-512 without VNNI: the F32 path (test_int8_matmul) */
                        continue;
                    /* integer sums exact; F32 scaling per block */
                    double err = fabs((double)f(w, a, n) - ref);
                    if (err > (double)(n / 16 + 16) * 0x1p-23 * mag)
                        fail_msg("int8 %s %s n %lld: dot error %.3g vs sum |w x| %.3g", kvrt_dtype_name(t),
                                 kvrt_cpu_isa_name(isas[ii]), (long long)n, err, mag);
                }
                free(w), free(x), free(x8), free(deq), free(a);
            }
    }
    assert_null(kvrt_cpu_q8dot_kernel(KVRT_CPU_ISA_PORTABLE, KVRT_DTYPE_Q5_K)); /* F32 path for the others */
}

/* GEMV through the backend with int8_act on, each flavour forced: against the double reference
 * over the int8-rounded x where the flavour has an int8 kernel, over x where it keeps the F32
 * path (NMSE <= 1e-6); off by default. */
static void test_int8_matmul(void **state)
{
    (void)state;
    kvrt_cpu_isa isas[3];
    const int ni = n_isas(isas);
    kvrt_backend *be = make_backend(2);
    assert_false(kvrt_cpu(be)->int8_act);
    kvrt_cpu(be)->int8_act = true;
    static const kvrt_dtype q8types[] = {KVRT_DTYPE_Q4_K, KVRT_DTYPE_Q6_K};
    for (int ii = 0; ii < ni; ii++) {
        kvrt_cpu_backend_cap_isa(be, isas[ii]);
        for (size_t ti = 0; ti < 2; ti++) {
            const kvrt_dtype t = q8types[ti];
            const int64_t n_out = 37, n_in = 768;
            ref_rng rng;
            ref_rng_seed(&rng, 1234 + ti);
            size_t wbytes;
            void *w = make_weights(&rng, t, n_out, n_in, false, &wbytes);
            float *x = xmalloc((size_t)n_in * sizeof(float)), *x8 = xmalloc((size_t)n_in * sizeof(float));
            float *y = xmalloc((size_t)n_out * sizeof(float));
            kvrt_cpu_q8k a[3];
            ref_fill(&rng, x, n_in, -1.0f, 1.0f);
            kvrt_cpu_q8k_quantize(x, n_in, a);
            q8k_values(a, n_in, x8);
            double *want = xmalloc((size_t)n_out * sizeof(double));
            /* flavours without an int8 kernel keep the F32 path: then x as it is */
            const bool int8 = kvrt_cpu_q8dot_kernel(kvrt_cpu(be)->isa, t) != NULL;
            ref_matmul(t, w, n_out, n_in, int8 ? x8 : x, n_in, 1, want);
            kvrt_view wv = wrap(be, w, wbytes), xv = wrap(be, x, (size_t)n_in * sizeof(float)),
                      yv = wrap(be, y, (size_t)n_out * sizeof(float));
            assert_int_equal(be->ops->matmul(be, t, wv, n_out, n_in, xv, n_in, yv, n_out, 1), KVRT_OK);
            ref_err e = ref_compare(y, n_out, want, n_out, 1, n_out);
            if (e.nonfinite || !(e.nmse <= NMSE_MAX))
                fail_msg("int8 matmul %s %s: nmse %.3g against the int8-rounded reference", kvrt_dtype_name(t),
                         kvrt_cpu_isa_name(isas[ii]), e.nmse);
            be->ops->buffer_destroy(be, wv.buf);
            be->ops->buffer_destroy(be, xv.buf);
            be->ops->buffer_destroy(be, yv.buf);
            free(w), free(x), free(x8), free(y), free(want);
        }
    }
    be->ops->destroy(be);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_kernels), cmocka_unit_test(test_matmul_each_flavour),
        cmocka_unit_test(test_matmul_threads), cmocka_unit_test(test_embed), cmocka_unit_test(test_bad_rows),
        cmocka_unit_test(test_int8_quantize), cmocka_unit_test(test_int8_row_kernels),
        cmocka_unit_test(test_int8_matmul),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
