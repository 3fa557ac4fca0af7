/* Weight element types and their GGUF block layouts: F32, F16, BF16 (one
 * value per "block"), Q8_0 (32 values: f16 scale + 32 int8) and Q4_0
 * (32 values: f16 scale + 16 bytes of nibbles, low nibbles are values 0..15,
 * high nibbles 16..31, value = (nibble - 8) * scale). */
#ifndef KVRT_QUANT_H
#define KVRT_QUANT_H

#include "common/kvrt_internal.h"

#define KVRT_QK 32 /* values per Q8_0 / Q4_0 block */

typedef struct kvrt_block_q8_0 {
    uint16_t d;          /* f16 scale */
    int8_t qs[KVRT_QK];
} kvrt_block_q8_0;

typedef struct kvrt_block_q4_0 {
    uint16_t d;             /* f16 scale */
    uint8_t qs[KVRT_QK / 2];
} kvrt_block_q4_0;

_Static_assert(sizeof(kvrt_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(kvrt_block_q4_0) == 18, "Q4_0 block is 18 bytes");

/* True for the types kvrt runs. */
bool kvrt_dtype_supported(kvrt_dtype type);
/* Values per block (1 for F32/F16/BF16, 32 for Q8_0/Q4_0); 0 if unsupported. */
int32_t kvrt_dtype_block_values(kvrt_dtype type);
/* Bytes per block; 0 if unsupported. */
size_t kvrt_dtype_block_bytes(kvrt_dtype type);
/* Bytes of a row of n values; 0 when unsupported or n is not a multiple of the block. */
size_t kvrt_dtype_row_bytes(kvrt_dtype type, int64_t n);

/* Reference (scalar) conversions of one row of n values; n a multiple of the
 * block for quantized types. Quantizers round like GGUF's reference code. */
void kvrt_quantize_row(kvrt_dtype type, const float *src, void *dst, int64_t n);
void kvrt_dequantize_row(kvrt_dtype type, const void *src, float *dst, int64_t n);

#endif /* KVRT_QUANT_H */
