/* An independent reference of quantized KV (q8_0, q4_0): the rule written in
 * runtime/backend/kv_layout.h, computed here in double precision (exact
 * products and a correctly rounded quotient) instead of the library's
 * midpoint comparisons, so a test compares two implementations. */
#ifndef KVRT_REF_KVQUANT_H
#define KVRT_REF_KVQUANT_H

#include <stdbool.h>
#include <stdint.h>

#include "kvrt.h"

/* True for the KV dtypes with in-block scales (q8_0, q4_0). */
bool ref_kv_quantized(kvrt_dtype dtype);

/* Quantizes one head_dim row (a multiple of 32): values as stored in the
 * block (q8_0: int8 bytes; q4_0: 16 bytes per group, value j low nibble,
 * j + 16 high), scales as F16 bits, one per group. */
void ref_kv_quantize_row(kvrt_dtype dtype, const float *x, int32_t head_dim, uint8_t *values, uint16_t *scales);

/* fp8 (E4M3) and fp8_e5m2 KV: one value by the rule in kv_layout.h, found
 * here by searching every code for the nearest (ties to the even code),
 * and a code's value from the format's definition, in double. */
bool ref_kv_fp8(kvrt_dtype dtype);
uint8_t ref_fp8_encode(kvrt_dtype dtype, float x);
double ref_fp8_decode(kvrt_dtype dtype, uint8_t b);

/* The values a row stores, back in F32 (what attention must read); also
 * for F32 and F16 (saturated to +-65504, NaN kept), so any KV type. */
void ref_kv_stored_row(kvrt_dtype dtype, const float *x, int32_t head_dim, float *out);

#endif /* KVRT_REF_KVQUANT_H */
