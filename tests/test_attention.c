/* What only the CPU's attention has: the portable kernels (what a CPU
 * without AVX2 runs) and row-invariant decode kernels, through the
 * contiguous decode; and the case grid's pairwise cover itself. The grid on
 * every backend is test_attention_cases. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_cases.h"
#include "backend/backend.h"
#include "backend/kv_layout.h"
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

/* The pairwise subset really covers every pair of factor values: check it
 * against the full product, pair by pair. */
static void test_grid_is_pairwise(void **state)
{
    (void)state;
    size_t n_pw = attn_case_grid(false, NULL, 0), n_full = attn_case_grid(true, NULL, 0);
    assert_true(n_pw < n_full / 20);
    assert_int_equal(n_full, 5 * 5 * 3 * 6 * 3 * 2 * 2);
    attn_case *pw = calloc(n_pw, sizeof(*pw));
    assert_non_null(pw);
    attn_case_grid(false, pw, n_pw);
    /* factors as integers: hd, heads, bs, length class, mask, dtype, mode */
    enum { NF = 7 };
    size_t at = 0;
    int32_t (*keys)[NF] = calloc(n_pw, sizeof(*keys));
    assert_non_null(keys);
    for (size_t i = 0; i < n_pw; i++) {
        const attn_case *c = &pw[i];
        int32_t k[NF] = {c->head_dim, c->n_heads * 100 + c->n_kv_heads, c->block_size,
                         c->num_seqs > 1 ? 0 : c->seq_lens[0], c->window * 10 + c->sinks, (int32_t)c->dtype,
                         (int32_t)c->mode};
        memcpy(keys[at++], k, sizeof(k));
    }
    const int32_t hd[] = {64, 80, 96, 128, 256}, heads[] = {404, 802, 801, 3208, 6408}, bs[] = {8, 16, 32},
                  len[] = {1, 17, 129, 463, 1328, 0}, mask[] = {0, 2560, 2564}, dt[] = {0, 1}, mode[] = {0, 1};
    const int32_t *vals[NF] = {hd, heads, bs, len, mask, dt, mode};
    const int nv[NF] = {5, 5, 3, 6, 3, 2, 2};
    for (int f = 0; f < NF; f++)
        for (int g = f + 1; g < NF; g++)
            for (int a = 0; a < nv[f]; a++)
                for (int b = 0; b < nv[g]; b++) {
                    bool found = false;
                    for (size_t i = 0; i < n_pw && !found; i++)
                        found = keys[i][f] == vals[f][a] && keys[i][g] == vals[g][b];
                    if (!found)
                        print_error("pair not covered: factor %d = %d, factor %d = %d\n", f, vals[f][a], g,
                                    vals[g][b]);
                    assert_true(found);
                }
    free(keys);
    free(pw);
}

/* The portable kernels (what a CPU without AVX2 runs) through the contiguous
 * decode, which shares the paged decode's loops. */
static void test_portable_kernels(void **state)
{
    (void)state;
    const kvrt_cpu_attn_kernels *all[4];
    int n_ker = kvrt_cpu_attn_kernels_all(all, 4);
    assert_true(n_ker >= 1);
    assert_string_equal(all[n_ker - 1]->name, "portable");
    kvrt_context *ctx = make_ctx(2);
    const int32_t hd[] = {64, 80, 20};
    for (int k = 0; k < n_ker; k++) {
        for (size_t i = 0; i < 3; i++) {
            attn_case c;
            attn_case_make(&c, hd[i], 8, 2, 16, i == 1 ? KVRT_DTYPE_F32 : KVRT_DTYPE_F16, i == 2 ? 100 : 0,
                           i == 2 ? 3 : 0, ATTN_DECODE, 0, 40 + i);
            attn_case_data d;
            assert_true(attn_case_build(&c, &d));
            int32_t max_len = 0;
            for (int32_t s = 0; s < c.num_seqs; s++)
                max_len = c.seq_lens[s] > max_len ? c.seq_lens[s] : max_len;
            size_t kv_row = (size_t)c.n_kv_heads * (size_t)c.head_dim, hdz = (size_t)c.head_dim;
            size_t per_seq = (size_t)max_len * kv_row;
            float *kf = calloc((size_t)c.num_seqs * per_seq, sizeof(float));
            float *vf = calloc((size_t)c.num_seqs * per_seq, sizeof(float));
            uint16_t *kh = calloc((size_t)c.num_seqs * per_seq, sizeof(uint16_t));
            uint16_t *vh = calloc((size_t)c.num_seqs * per_seq, sizeof(uint16_t));
            float *out = calloc(attn_case_out_len(&d), sizeof(float));
            assert_true(kf && vf && kh && vh && out);
            for (int32_t s = 0; s < c.num_seqs; s++)
                for (int32_t h = 0; h < c.n_kv_heads; h++)
                    for (int32_t j = 0; j < c.seq_lens[s]; j++)
                        for (size_t e = 0; e < hdz; e++) {
                            size_t dst = (((size_t)s * (size_t)c.n_kv_heads + (size_t)h) * (size_t)max_len +
                                          (size_t)j) * hdz + e;
                            size_t src = d.seq_kv_offset[s] + (size_t)j * kv_row + (size_t)h * hdz + e;
                            kf[dst] = d.k_stored[src];
                            vf[dst] = d.v_stored[src];
                        }
            all[n_ker - 1]->f2h(kh, kf, (int64_t)((size_t)c.num_seqs * per_seq));
            all[n_ker - 1]->f2h(vh, vf, (int64_t)((size_t)c.num_seqs * per_seq));
            bool f16 = c.dtype == KVRT_DTYPE_F16;
            kvrt_cpu_contig_kv kv = {c.dtype, c.n_kv_heads, c.head_dim, max_len, f16 ? (void *)kh : (void *)kf,
                                     f16 ? (void *)vh : (void *)vf, all[k]};
            kvrt_attn_desc desc = {c.num_seqs, c.n_heads, 0, d.scale, c.window, c.sinks,
                                   (int64_t)c.n_heads * c.head_dim, (int64_t)c.n_heads * c.head_dim, 0, 0};
            assert_int_equal(kvrt_cpu_attn_decode_contiguous(((struct kvrt_context *)ctx)->be, &kv, &desc, d.q,
                                                             d.seq_lens, out), KVRT_OK);
            attn_check r = attn_case_check(&d, out);
            if (!attn_check_ok(&r))
                print_error("%s hd %d: max abs %g nmse %g\n", all[k]->name, (int)hd[i], r.max_abs, r.nmse);
            assert_true(attn_check_ok(&r));
            free(kf);
            free(vf);
            free(kh);
            free(vh);
            free(out);
            attn_case_free(&d);
        }
    }
    kvrt_context_destroy(ctx);
}

/* N random rows of one KV type in a run's layout (values row after row, then
 * the scales row after row), and the same rows dequantized (what the double
 * reference is fed). */
typedef struct kv_run_data {
    kvrt_cpu_kv_rows rows;
    size_t rb, sb;      /* bytes of one row's values, of its scales */
    float *deq;         /* [n][hd] */
    uint8_t *vals, *sc; /* owned */
} kv_run_data;

static void kv_run_make(kv_run_data *k, kvrt_dtype t, const float *x, int32_t n, int32_t hd)
{
    size_t bits = t == KVRT_DTYPE_F32 ? 32 : t == KVRT_DTYPE_F16 ? 16 : t == KVRT_DTYPE_Q4_0 ? 4 : 8;
    bool grouped = t == KVRT_DTYPE_Q8_0 || t == KVRT_DTYPE_Q4_0;
    k->rb = (size_t)hd * bits / 8;
    k->sb = grouped ? (size_t)hd / 16 : 0;
    k->vals = calloc((size_t)n, k->rb);
    k->sc = calloc((size_t)n * k->sb + 1, 1);
    k->deq = calloc((size_t)n * (size_t)hd, sizeof(float));
    assert_true(k->vals && k->sc && k->deq);
    for (int32_t r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * (size_t)hd;
        uint8_t *vr = k->vals + (size_t)r * k->rb, *sr = k->sc + (size_t)r * k->sb;
        float *dr = k->deq + (size_t)r * (size_t)hd;
        for (int32_t e = 0; e < hd && t == KVRT_DTYPE_F32; e++)
            memcpy(vr + 4 * (size_t)e, &xr[e], 4);
        for (int32_t e = 0; e < hd && t == KVRT_DTYPE_F16; e++) {
            uint16_t h = kvrt_f32_to_fp16(xr[e]);
            memcpy(vr + 2 * (size_t)e, &h, 2);
        }
        if (t == KVRT_DTYPE_F32 || t == KVRT_DTYPE_F16) {
            for (int32_t e = 0; e < hd; e++)
                dr[e] = t == KVRT_DTYPE_F32 ? xr[e] : kvrt_fp16_to_f32(kvrt_f32_to_fp16(xr[e]));
        } else {
            kvrt_kv_quantize_row(t, xr, hd, vr, grouped ? sr : NULL);
            kvrt_kv_dequantize_row(t, vr, grouped ? sr : NULL, hd, dr);
        }
    }
    k->rows = (kvrt_cpu_kv_rows){t, k->vals, grouped ? k->sc : NULL};
}

/* Row r alone. */
static kvrt_cpu_kv_rows kv_run_row(const kv_run_data *k, int32_t r)
{
    kvrt_cpu_kv_rows x = k->rows;
    x.vals = k->vals + (size_t)r * k->rb;
    x.scales = x.scales ? k->sc + (size_t)r * k->sb : NULL;
    return x;
}

static void kv_run_free(kv_run_data *k)
{
    free(k->vals);
    free(k->sc);
    free(k->deq);
}

static double nmse(const float *got, const double *want, size_t n)
{
    double err = 0.0, ref = 0.0;
    for (size_t i = 0; i < n; i++) {
        err += ((double)got[i] - want[i]) * ((double)got[i] - want[i]);
        ref += want[i] * want[i];
    }
    return ref > 0.0 ? err / ref : err;
}

/* One table's decode entries on one KV type: n rows in one call equal the
 * same rows one call each, bitwise (tiles and their tails must do the same
 * arithmetic, or paged and contiguous layouts would disagree); the rows read
 * in place equal the F32 entries over the dequantized rows, bitwise; and
 * both agree with a double reference fed the dequantized values (NMSE <= 1e-6). */
static void check_decode_kernels(const kvrt_cpu_attn_kernels *ker, kvrt_dtype t, int32_t hd, int32_t nq,
                                 const float *q, const float *x, int32_t n)
{
    kv_run_data k;
    kv_run_make(&k, t, x, n, hd);
    size_t ns = (size_t)nq * (size_t)n, na = (size_t)nq * (size_t)hd;
    float *tmp = calloc((size_t)n * (size_t)hd, sizeof(float)), *s1 = calloc(ns, sizeof(float));
    float *s2 = calloc(ns, sizeof(float)), *a1 = calloc(na, sizeof(float)), *a2 = calloc(na, sizeof(float));
    double *ref = calloc(ns + na, sizeof(double));
    assert_true(tmp && s1 && s2 && a1 && a2 && ref);
    ker->scores_kv(q, nq, &k.rows, n, hd, 0.125f, s1, n, tmp);
    for (int32_t r = 0; r < n; r++) {
        kvrt_cpu_kv_rows one = kv_run_row(&k, r);
        ker->scores_kv(q, nq, &one, 1, hd, 0.125f, s2 + r, n, tmp);
    }
    assert_memory_equal(s1, s2, ns * sizeof(float));
    kvrt_cpu_kv_rows deq = {KVRT_DTYPE_F32, k.deq, NULL};
    ker->scores_kv(q, nq, &deq, n, hd, 0.125f, s2, n, tmp);
    assert_memory_equal(s1, s2, ns * sizeof(float));
    ker->accum_kv(s1, n, nq, &k.rows, n, hd, a1, tmp);
    for (int32_t r = 0; r < n; r++) {
        kvrt_cpu_kv_rows one = kv_run_row(&k, r);
        ker->accum_kv(s1 + r, n, nq, &one, 1, hd, a2, tmp);
    }
    assert_memory_equal(a1, a2, na * sizeof(float));
    memset(a2, 0, na * sizeof(float));
    ker->accum_kv(s1, n, nq, &deq, n, hd, a2, tmp);
    assert_memory_equal(a1, a2, na * sizeof(float));
    for (int32_t g = 0; g < nq; g++) {
        for (int32_t r = 0; r < n; r++) {
            double dot = 0.0;
            for (int32_t d = 0; d < hd; d++)
                dot += (double)q[g * hd + d] * (double)k.deq[(size_t)r * (size_t)hd + (size_t)d];
            ref[(size_t)g * (size_t)n + (size_t)r] = dot * 0.125;
            for (int32_t d = 0; d < hd; d++)
                ref[ns + (size_t)g * (size_t)hd + (size_t)d] +=
                    (double)s1[g * n + r] * (double)k.deq[(size_t)r * (size_t)hd + (size_t)d];
        }
    }
    double e_s = nmse(s1, ref, ns), e_a = nmse(a1, ref + ns, na);
    if (e_s > 1e-6 || e_a > 1e-6)
        print_error("%s %s hd %d nq %d: nmse scores %g, values %g\n", ker->name, kvrt_dtype_name(t), (int)hd,
                    (int)nq, e_s, e_a);
    assert_true(e_s <= 1e-6 && e_a <= 1e-6);
    free(tmp);
    free(s1);
    free(s2);
    free(a1);
    free(a2);
    free(ref);
    kv_run_free(&k);
}

/* Every table's decode entries on every KV type the decode reads in place,
 * whatever the head count and head_dim (q8_0 / q4_0: multiples of 32). */
static void test_decode_kernels_row_invariant(void **state)
{
    (void)state;
    const kvrt_cpu_attn_kernels *all[4];
    int n_ker = kvrt_cpu_attn_kernels_all(all, 4);
    const int32_t hds[] = {128, 64, 80, 20, 16};
    const kvrt_dtype types[] = {KVRT_DTYPE_F32,  KVRT_DTYPE_F16,      KVRT_DTYPE_Q8_0,
                                KVRT_DTYPE_Q4_0, KVRT_DTYPE_FP8_E4M3, KVRT_DTYPE_FP8_E5M2};
    enum { N = 37, NQ = 7, HD = 128 };
    float *q = calloc(NQ * HD, sizeof(float)), *x = calloc(N * HD, sizeof(float));
    assert_true(q && x);
    uint32_t u = 12345;
    for (int i = 0; i < NQ * HD; i++, u = u * 1664525u + 1013904223u)
        q[i] = (float)(u >> 8) / 16777216.0f - 0.5f;
    for (int i = 0; i < N * HD; i++, u = u * 1664525u + 1013904223u)
        x[i] = (float)(u >> 8) / 8388608.0f - 1.0f;
    for (int k = 0; k < n_ker; k++)
        for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++)
            for (size_t h = 0; h < sizeof(hds) / sizeof(hds[0]); h++)
                for (int32_t nq = 1; nq <= NQ; nq++)
                    if (hds[h] % 32 == 0 || (types[t] != KVRT_DTYPE_Q8_0 && types[t] != KVRT_DTYPE_Q4_0))
                        check_decode_kernels(all[k], types[t], hds[h], nq, q, x, N);
    /* an E4M3 NaN code reads as NaN in every table (0x7f: what kv_write stores for NaN) */
    for (int k = 0; k < n_ker; k++) {
        uint8_t nan_rows[2 * 32];
        memset(nan_rows, 0x38, sizeof(nan_rows)); /* 1.0 */
        nan_rows[32 + 5] = 0x7f;
        float s[2], one = 1.0f, acc[32];
        float qv[32];
        for (int i = 0; i < 32; i++)
            qv[i] = 1.0f;
        kvrt_cpu_kv_rows rows = {KVRT_DTYPE_FP8_E4M3, nan_rows, NULL};
        float tmp[64];
        all[k]->scores_kv(qv, 1, &rows, 2, 32, 1.0f, s, 2, tmp);
        assert_true(s[0] == 32.0f && isnan(s[1]));
        memset(acc, 0, sizeof(acc));
        kvrt_cpu_kv_rows second = {KVRT_DTYPE_FP8_E4M3, nan_rows + 32, NULL};
        all[k]->accum_kv(&one, 1, 1, &second, 1, 32, acc, tmp);
        assert_true(acc[0] == 1.0f && isnan(acc[5]));
    }
    /* softmax: numerators, max and sum vs double */
    for (int k = 0; k < n_ker; k++) {
        for (int32_t n = 1; n <= N; n += 4) {
            float row[N], m, l;
            double mx = -1e30, sum = 0.0;
            for (int32_t i = 0; i < n; i++) {
                row[i] = q[i] * 8.0f; /* scores of a few units, as a decode sees */
                mx = row[i] > mx ? row[i] : mx;
            }
            float in[N];
            memcpy(in, row, sizeof(in));
            all[k]->softmax(row, n, &m, &l);
            assert_true((double)m == mx);
            for (int32_t i = 0; i < n; i++) {
                double e = exp((double)in[i] - mx);
                sum += e;
                assert_true(fabs((double)row[i] - e) <= 1e-6 * e + 1e-30);
            }
            assert_true(fabs((double)l - sum) <= 1e-6 * sum);
        }
    }
    free(q);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grid_is_pairwise),
        cmocka_unit_test(test_portable_kernels),
        cmocka_unit_test(test_decode_kernels_row_invariant),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
