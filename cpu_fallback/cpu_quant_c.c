/* Portable row kernels of the types of cpu_quant.h: each block is expanded
 * by the reference dequantizer into a buffer on the stack and dotted with
 * eight partial sums; plain C for any CPU. */
#include "cpu_quant.h"

#include "common/quant.h"

/* Eight independent partial sums keep the FP adds pipelined. */
static float dot_block(const float *w, const float *x, int n)
{
    float acc[8] = {0};
    for (int i = 0; i < n; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += w[i + j] * x[i + j];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* sum_i W[i] x[i] for one row of a block type: blocks of bv values. */
static inline float dot_blocks(kvrt_dtype type, const void *w, const float *x, int64_t n)
{
    const int32_t bv = kvrt_dtype_block_values(type);
    const size_t bb = kvrt_dtype_block_bytes(type);
    const char *p = w;
    float buf[KVRT_QK_K], s = 0.0f;
    for (int64_t k = 0; k < n / bv; k++, p += bb, x += bv) {
        kvrt_dequantize_row(type, p, buf, bv);
        s += dot_block(buf, x, bv);
    }
    return s;
}

#define DOT_C(T, TYPE)                                                    \
    static float dot_##T##_c(const void *w, const float *x, int64_t n)    \
    {                                                                     \
        return dot_blocks(TYPE, w, x, n);                                 \
    }                                                                     \
    static void dequant_##T##_c(const void *w, float *y, int64_t n)       \
    {                                                                     \
        kvrt_dequantize_row(TYPE, w, y, n);                               \
    }

DOT_C(q4_1, KVRT_DTYPE_Q4_1)
DOT_C(q5_0, KVRT_DTYPE_Q5_0)
DOT_C(q5_1, KVRT_DTYPE_Q5_1)
DOT_C(iq4_nl, KVRT_DTYPE_IQ4_NL)
DOT_C(q2_K, KVRT_DTYPE_Q2_K)
DOT_C(q3_K, KVRT_DTYPE_Q3_K)
DOT_C(q4_K, KVRT_DTYPE_Q4_K)
DOT_C(q5_K, KVRT_DTYPE_Q5_K)
DOT_C(q6_K, KVRT_DTYPE_Q6_K)
DOT_C(iq4_xs, KVRT_DTYPE_IQ4_XS)

typedef struct kernels {
    kvrt_dtype type;
    kvrt_cpu_dot_fn dot;
    kvrt_cpu_dequant_fn dequant;
} kernels;

#define ROW(T, TYPE) {TYPE, dot_##T##_c, dequant_##T##_c}
static const kernels table[] = {
    ROW(q4_1, KVRT_DTYPE_Q4_1), ROW(q5_0, KVRT_DTYPE_Q5_0), ROW(q5_1, KVRT_DTYPE_Q5_1),
    ROW(iq4_nl, KVRT_DTYPE_IQ4_NL), ROW(q2_K, KVRT_DTYPE_Q2_K), ROW(q3_K, KVRT_DTYPE_Q3_K),
    ROW(q4_K, KVRT_DTYPE_Q4_K), ROW(q5_K, KVRT_DTYPE_Q5_K), ROW(q6_K, KVRT_DTYPE_Q6_K),
    ROW(iq4_xs, KVRT_DTYPE_IQ4_XS),
};

kvrt_cpu_dot_fn kvrt_cpu_quant_dot_c(kvrt_dtype type)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(table); i++)
        if (table[i].type == type)
            return table[i].dot;
    return NULL;
}

kvrt_cpu_dequant_fn kvrt_cpu_quant_dequant_c(kvrt_dtype type)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(table); i++)
        if (table[i].type == type)
            return table[i].dequant;
    return NULL;
}
