/* Weight element types and their GGUF block layouts (the ggml type table of
 * the GGUF specification). Every quantized block starts at a 2-byte
 * boundary; f16 fields are IEEE half floats, multi-byte fields little-endian.
 *
 *  type    values bytes  layout (value of element j of the block)
 *  f32/f16/bf16   1      plain values
 *  q8_0      32   34     f16 d, int8 q[32]                 d * q[j]
 *  q4_0      32   18     f16 d, u8 qs[16]                  d * (nib(j) - 8)
 *  q4_1      32   20     f16 d, f16 m, u8 qs[16]           d * nib(j) + m
 *  q5_0      32   22     f16 d, u8 qh[4], u8 qs[16]        d * (nib(j) + 16 * bit_j(qh) - 16)
 *  q5_1      32   24     f16 d, f16 m, u8 qh[4], qs[16]    d * (nib(j) + 16 * bit_j(qh)) + m
 *  iq4_nl    32   18     f16 d, u8 qs[16]                  d * KVRT_IQ4_VALUES[nib(j)]
 *    nib(j): low nibble of qs[j] for j < 16, high nibble of qs[j - 16] after;
 *    bit_j(qh): bit j of qh read as a little-endian uint32.
 *  q2_K     256   84     u8 scales[16], u8 qs[64], f16 d, f16 dmin
 *  q3_K     256  110     u8 hmask[32], u8 qs[64], u8 scales[12], f16 d
 *  q4_K     256  144     f16 d, f16 dmin, u8 scales[12], u8 qs[128]
 *  q5_K     256  176     f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]
 *  q6_K     256  210     u8 ql[128], u8 qh[64], int8 scales[16], f16 d
 *  iq4_xs   256  136     f16 d, u16 scales_h, u8 scales_l[4], u8 qs[128]
 * The k-quant bit placements are spelled out in quant_dequant.c, which is
 * the reference every kernel is tested against. */
#ifndef KVRT_QUANT_H
#define KVRT_QUANT_H

#include "common/kvrt_internal.h"

#define KVRT_QK 32   /* values per block of the 32-value types */
#define KVRT_QK_K 256 /* values per super-block of the k-quants and iq4_xs */

typedef struct kvrt_block_q8_0 {
    uint16_t d; /* f16 scale */
    int8_t qs[KVRT_QK];
} kvrt_block_q8_0;

typedef struct kvrt_block_q4_0 {
    uint16_t d; /* f16 scale */
    uint8_t qs[KVRT_QK / 2];
} kvrt_block_q4_0;

typedef struct kvrt_block_q4_1 {
    uint16_t d, m; /* f16 scale and offset */
    uint8_t qs[KVRT_QK / 2];
} kvrt_block_q4_1;

typedef struct kvrt_block_q5_0 {
    uint16_t d;
    uint8_t qh[4]; /* fifth bits, bit j = element j */
    uint8_t qs[KVRT_QK / 2];
} kvrt_block_q5_0;

typedef struct kvrt_block_q5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[KVRT_QK / 2];
} kvrt_block_q5_1;

typedef struct kvrt_block_iq4_nl {
    uint16_t d;
    uint8_t qs[KVRT_QK / 2]; /* indices into KVRT_IQ4_VALUES */
} kvrt_block_iq4_nl;

typedef struct kvrt_block_q2_K {
    uint8_t scales[16]; /* per 16 values: low nibble scale, high nibble min */
    uint8_t qs[64];     /* 2-bit values */
    uint16_t d, dmin;   /* f16 super-block scales of the scales and of the mins */
} kvrt_block_q2_K;

typedef struct kvrt_block_q3_K {
    uint8_t hmask[32];  /* third bits */
    uint8_t qs[64];     /* low 2 bits */
    uint8_t scales[12]; /* 16 6-bit scales, offset by 32 */
    uint16_t d;
} kvrt_block_q3_K;

typedef struct kvrt_block_q4_K {
    uint16_t d, dmin;
    uint8_t scales[12]; /* 8 6-bit scales and 8 6-bit mins */
    uint8_t qs[128];
} kvrt_block_q4_K;

typedef struct kvrt_block_q5_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32]; /* fifth bits */
    uint8_t qs[128];
} kvrt_block_q5_K;

typedef struct kvrt_block_q6_K {
    uint8_t ql[128];   /* low 4 bits */
    uint8_t qh[64];    /* high 2 bits */
    int8_t scales[16]; /* per 16 values */
    uint16_t d;
} kvrt_block_q6_K;

typedef struct kvrt_block_iq4_xs {
    uint16_t d;
    uint16_t scales_h;  /* high 2 bits of the 8 6-bit scales */
    uint8_t scales_l[4]; /* low 4 bits, two per byte */
    uint8_t qs[128];     /* per 32 values, 16 bytes as in iq4_nl */
} kvrt_block_iq4_xs;

_Static_assert(sizeof(kvrt_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(kvrt_block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(kvrt_block_q4_1) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(kvrt_block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(kvrt_block_q5_1) == 24, "Q5_1 block is 24 bytes");
_Static_assert(sizeof(kvrt_block_iq4_nl) == 18, "IQ4_NL block is 18 bytes");
_Static_assert(sizeof(kvrt_block_q2_K) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(kvrt_block_q3_K) == 110, "Q3_K block is 110 bytes");
_Static_assert(sizeof(kvrt_block_q4_K) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(kvrt_block_q5_K) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(kvrt_block_q6_K) == 210, "Q6_K block is 210 bytes");
_Static_assert(sizeof(kvrt_block_iq4_xs) == 136, "IQ4_XS block is 136 bytes");

/* The 16 values of the iq4 non-linear code book (iq4_nl, iq4_xs). */
extern const int8_t KVRT_IQ4_VALUES[16];

/* Every weight type kvrt runs, in kvrt_dtype order (for tables and tests). */
extern const kvrt_dtype KVRT_WEIGHT_TYPES[];
extern const int KVRT_N_WEIGHT_TYPES;

/* True for the types kvrt runs. */
bool kvrt_dtype_supported(kvrt_dtype type);
/* Values per block (1 for F32/F16/BF16, 32 or 256 otherwise); 0 if unsupported. */
int32_t kvrt_dtype_block_values(kvrt_dtype type);
/* Bytes per block; 0 if unsupported. */
size_t kvrt_dtype_block_bytes(kvrt_dtype type);
/* Bytes of a row of n values; 0 when unsupported or n is not a multiple of the block. */
size_t kvrt_dtype_row_bytes(kvrt_dtype type, int64_t n);
/* The type named like ggml names it ("q4_K", "iq4_nl"), case-insensitive; false if none. */
bool kvrt_dtype_from_name(const char *name, kvrt_dtype *out);

/* Reference (scalar) conversions of one row of n values; n a multiple of the
 * block for quantized types. The dequantizers define the formats; the
 * quantizers are kvrt's own (least-squares scales), not bit-identical to
 * other tools but readable by any of them. */
void kvrt_quantize_row(kvrt_dtype type, const float *src, void *dst, int64_t n);
void kvrt_dequantize_row(kvrt_dtype type, const void *src, float *dst, int64_t n);

/* Checks the f16 scales of a row of n values (n a multiple of the block):
 * false when one is NaN or infinite, with the index of the first such block
 * in *bad_block. Plain F32/F16/BF16 rows have no scales and always pass. */
bool kvrt_dtype_row_scales_finite(kvrt_dtype type, const void *row, int64_t n, int64_t *bad_block);

/* ---- per-family helpers (quant_dequant.c, quant_make.c) ----------------------- */

/* Unpacks the 6-bit scale and min of sub-block j (0..7) of a q4_K / q5_K block. */
static inline void kvrt_q4k_scale_min(const uint8_t s[12], int j, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* The 16 signed scales (-32..31) of a q3_K block. */
static inline void kvrt_q3k_scales(const uint8_t s[12], int8_t out[16])
{
    for (int i = 0; i < 16; i++) {
        int lo = i < 8 ? s[i] & 0x0f : s[i - 8] >> 4;
        int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        out[i] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* Dequantizers per type (n a multiple of the block). */
void kvrt_dequant_q4_1(const void *src, float *dst, int64_t n);
void kvrt_dequant_q5_0(const void *src, float *dst, int64_t n);
void kvrt_dequant_q5_1(const void *src, float *dst, int64_t n);
void kvrt_dequant_iq4_nl(const void *src, float *dst, int64_t n);
void kvrt_dequant_q2_K(const void *src, float *dst, int64_t n);
void kvrt_dequant_q3_K(const void *src, float *dst, int64_t n);
void kvrt_dequant_q4_K(const void *src, float *dst, int64_t n);
void kvrt_dequant_q5_K(const void *src, float *dst, int64_t n);
void kvrt_dequant_q6_K(const void *src, float *dst, int64_t n);
void kvrt_dequant_iq4_xs(const void *src, float *dst, int64_t n);

/* Quantizers per type (n a multiple of the block). */
void kvrt_quant_q4_1(const float *src, void *dst, int64_t n);
void kvrt_quant_q5_0(const float *src, void *dst, int64_t n);
void kvrt_quant_q5_1(const float *src, void *dst, int64_t n);
void kvrt_quant_iq4_nl(const float *src, void *dst, int64_t n);
void kvrt_quant_q2_K(const float *src, void *dst, int64_t n);
void kvrt_quant_q3_K(const float *src, void *dst, int64_t n);
void kvrt_quant_q4_K(const float *src, void *dst, int64_t n);
void kvrt_quant_q5_K(const float *src, void *dst, int64_t n);
void kvrt_quant_q6_K(const float *src, void *dst, int64_t n);
void kvrt_quant_iq4_xs(const float *src, void *dst, int64_t n);

#endif /* KVRT_QUANT_H */
