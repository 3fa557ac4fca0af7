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

/* Every table's decode entries: n rows scored (accumulated) in one call equal
 * the same rows one call each, bitwise, for F16 and F32 rows, whatever the
 * head count and head_dim (tiles and their tails must do the same
 * arithmetic, or paged and contiguous layouts would disagree). */
static void test_decode_kernels_row_invariant(void **state)
{
    (void)state;
    const kvrt_cpu_attn_kernels *all[4];
    int n_ker = kvrt_cpu_attn_kernels_all(all, 4);
    const int32_t hds[] = {128, 64, 80, 20, 16};
    enum { N = 37, NQ = 7, HD = 128 };
    float *q = calloc(NQ * HD, sizeof(float)), *kf = calloc(N * HD, sizeof(float));
    float *tmp = calloc(N * HD, sizeof(float)), *s1 = calloc(NQ * N, sizeof(float)), *s2 = calloc(NQ * N, sizeof(float));
    float *a1 = calloc(NQ * HD, sizeof(float)), *a2 = calloc(NQ * HD, sizeof(float));
    uint16_t *kh = calloc(N * HD, sizeof(uint16_t));
    assert_true(q && kf && tmp && s1 && s2 && a1 && a2 && kh);
    uint32_t x = 12345;
    for (int i = 0; i < NQ * HD; i++, x = x * 1664525u + 1013904223u)
        q[i] = (float)(x >> 8) / 16777216.0f - 0.5f;
    for (int i = 0; i < N * HD; i++, x = x * 1664525u + 1013904223u) {
        kf[i] = (float)(x >> 8) / 8388608.0f - 1.0f;
        kh[i] = kvrt_f32_to_fp16(kf[i]);
    }
    for (int k = 0; k < n_ker; k++) {
        for (size_t h = 0; h < sizeof(hds) / sizeof(hds[0]); h++) {
            for (int32_t nq = 1; nq <= NQ; nq++) {
                for (int f16 = 0; f16 < 2; f16++) {
                    int32_t hd = hds[h];
                    size_t rb = (size_t)hd * (f16 ? 2 : 4);
                    const char *rows = f16 ? (const char *)kh : (const char *)kf;
                    all[k]->scores_kv(q, nq, rows, f16, N, hd, 0.125f, s1, N, tmp);
                    for (int32_t r = 0; r < N; r++)
                        all[k]->scores_kv(q, nq, rows + (size_t)r * rb, f16, 1, hd, 0.125f, s2 + r, N, tmp);
                    assert_memory_equal(s1, s2, (size_t)nq * N * sizeof(float));
                    memset(a1, 0, NQ * HD * sizeof(float));
                    memset(a2, 0, NQ * HD * sizeof(float));
                    all[k]->accum_kv(s1, N, nq, rows, f16, N, hd, a1, tmp);
                    for (int32_t r = 0; r < N; r++)
                        all[k]->accum_kv(s1 + r, N, nq, rows + (size_t)r * rb, f16, 1, hd, a2, tmp);
                    assert_memory_equal(a1, a2, (size_t)nq * (size_t)hd * sizeof(float));
                    /* and the scores are right: vs a double dot product */
                    for (int32_t g = 0; g < nq; g++) {
                        for (int32_t r = 0; r < N; r++) {
                            double ref = 0.0;
                            for (int32_t d = 0; d < hd; d++)
                                ref += (double)q[g * hd + d] *
                                       (double)(f16 ? kvrt_fp16_to_f32(kh[r * hd + d]) : kf[r * hd + d]);
                            assert_true(fabs(ref * 0.125 - (double)s1[g * N + r]) < 1e-5);
                        }
                    }
                }
            }
        }
        /* softmax: numerators, max and sum vs double */
        for (int32_t n = 1; n <= N; n += 4) {
            float row[N], m, l;
            double mx = -1e30, sum = 0.0;
            for (int32_t i = 0; i < n; i++) {
                row[i] = s1[i] * 40.0f;
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
    free(kf);
    free(tmp);
    free(s1);
    free(s2);
    free(a1);
    free(a2);
    free(kh);
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
