/* CPU row kernels of the types beyond F32/F16/BF16/Q8_0/Q4_0 (q4_1, q5_0,
 * q5_1, iq4_nl, the k-quants, iq4_xs): one file per instruction set
 * (cpu_quant_c.c, cpu_quant_avx2.c, cpu_quant_avx512.c), reached through
 * the dispatch in cpu_kernels.c. */
#ifndef KVRT_CPU_QUANT_H
#define KVRT_CPU_QUANT_H

#include "cpu_ops_internal.h"

/* Kernels of one flavour; NULL when the type has none in that flavour. */
kvrt_cpu_dot_fn kvrt_cpu_quant_dot_c(kvrt_dtype type);
kvrt_cpu_dequant_fn kvrt_cpu_quant_dequant_c(kvrt_dtype type);

#endif /* KVRT_CPU_QUANT_H */
