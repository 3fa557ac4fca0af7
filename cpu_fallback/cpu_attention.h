/* Internal extras of the CPU attention family beyond the backend vtable:
 * the inner-loop kernels (chosen at run time: AVX-512, AVX2+FMA+F16C or
 * portable C; in cpu_attention_kernels.c),
 * the split-K partition rule, and a decode over a contiguous (non-paged) KV
 * layout that shares the paged decode's loops, so a benchmark can compare
 * "paged vs contiguous on the same data" and tests can check they agree
 * bitwise. */
#ifndef KVRT_CPU_ATTENTION_H
#define KVRT_CPU_ATTENTION_H

#include "cpu_internal.h"

/* Inner loops of the attention kernels, one table per instruction set. All
 * accumulate in F32, row by row in increasing key order, so the result of a
 * row does not depend on how the rows were grouped into runs. */
/* A run of n KV rows of one head as the decode reads them, in place: row r's
 * values at r * hd * bits / 8 bytes from vals; q8_0 / q4_0 (kv_layout.h)
 * also have row r's hd / 32 F16 scales at r * hd / 16 bytes from scales
 * (the block keeps a head's rows and their scales each in one run). */
typedef struct kvrt_cpu_kv_rows {
    kvrt_dtype dtype;      /* F32, F16, Q8_0, Q4_0, FP8_E4M3 or FP8_E5M2 */
    const void *vals;      /* [n][hd * bits / 8] */
    const uint8_t *scales; /* q8_0 / q4_0: [n][hd / 32] F16; NULL otherwise */
} kvrt_cpu_kv_rows;

typedef struct kvrt_cpu_attn_kernels {
    const char *name; /* "avx512", "avx2+fma+f16c" or "portable" */
    /* s[g * s_stride + r] = scale * dot(q[g], k[r]) for g < n_q, r < n. */
    void (*scores)(const float *restrict q /* [n_q][hd] */, int32_t n_q, const float *restrict k /* [n][hd] */,
                   int32_t n, int32_t hd, float scale, float *restrict s, int64_t s_stride);
    /* acc[g] += sum_r p[g * p_stride + r] * v[r] for g < n_q, in increasing r. */
    void (*accum)(const float *restrict p, int64_t p_stride, int32_t n_q, const float *restrict v /* [n][hd] */,
                  int32_t n, int32_t hd, float *restrict acc /* [n_q][hd] */);
    void (*h2f)(float *restrict dst, const uint16_t *restrict src, int64_t n);
    void (*f2h)(uint16_t *restrict dst, const float *restrict src, int64_t n); /* round to nearest even */
    /* The decode's entries: as scores/accum, but the n rows of k (v) are read
     * in place in any KV type and converted in registers (quantized values
     * times their scale, exact in F32: the same numbers as scores/accum over
     * the dequantized rows, bitwise); tmp ([n][hd] floats) is scratch for
     * tables that convert the rows before use. */
    void (*scores_kv)(const float *restrict q /* [n_q][hd] */, int32_t n_q, const kvrt_cpu_kv_rows *k, int32_t n,
                      int32_t hd, float scale, float *restrict s, int64_t s_stride, float *restrict tmp);
    void (*accum_kv)(const float *restrict p, int64_t p_stride, int32_t n_q, const kvrt_cpu_kv_rows *v, int32_t n,
                     int32_t hd, float *restrict acc /* [n_q][hd] */, float *restrict tmp);
    /* row[i] = exp(row[i] - m) for i < n (n >= 1), m = max of the row, l = sum
     * of the results, all in an order fixed by n alone. */
    void (*softmax)(float *restrict row, int32_t n, float *m, float *l);
    /* Quantized KV (kv_layout.h) to F32: n values (q8_0, q4_0: n / 32 groups
     * of 32 with their consecutive F16 scales); exact, so the same bits in
     * every table. */
    void (*dequant)(kvrt_dtype type, const uint8_t *restrict vals, const uint8_t *restrict scales, int64_t n,
                    float *restrict out /* [n] */);
} kvrt_cpu_attn_kernels;

/* The best table this CPU runs. */
const kvrt_cpu_attn_kernels *kvrt_cpu_attn_kernels_get(void);
/* Every table this CPU can run, best first (for tests of the portable path);
 * returns how many were stored (at most max). */
int kvrt_cpu_attn_kernels_all(const kvrt_cpu_attn_kernels **out, int max);

/* Positions per split-K partition of a decode over a context of seq_len
 * tokens. A function of seq_len alone (batch invariance) and a multiple of
 * every block size. */
int32_t kvrt_cpu_attn_partition_size(int32_t seq_len);

/* A contiguous KV layout: sequence s, KV head h, position j at
 * ((s * n_kv_heads + h) * max_len + j) * head_dim elements from k (and v). */
typedef struct kvrt_cpu_contig_kv {
    kvrt_dtype dtype;  /* F32 or F16 */
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t max_len;   /* positions reserved per (sequence, head) */
    const void *k;     /* [num_seqs][n_kv_heads][max_len][head_dim] */
    const void *v;     /* same */
    const kvrt_cpu_attn_kernels *kernels; /* NULL = kvrt_cpu_attn_kernels_get() */
} kvrt_cpu_contig_kv;

/* Decode attention over a contiguous layout with the paged decode's loops,
 * partitions and thread pool: for the same K/V values its output equals
 * kvrt_cpu_attn_decode's bitwise (with the same kernels). d->max_blocks_per_seq is ignored;
 * seq_lens[s] <= max_len. q, out: host F32 with d->q_stride / d->o_stride.
 * Errors on be->err. */
kvrt_status kvrt_cpu_attn_decode_contiguous(kvrt_backend *be, const kvrt_cpu_contig_kv *kv, const kvrt_attn_desc *d,
                                            const float *q, const int32_t *seq_lens, float *out);

#endif /* KVRT_CPU_ATTENTION_H */
