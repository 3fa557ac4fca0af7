/* IEEE half and bfloat16 <-> float conversions, round-to-nearest-even, no
 * dependence on compiler half types. Hardware F16C is used when compiled in. */
#ifndef KVRT_FP16_H
#define KVRT_FP16_H

#include <stdint.h>
#include <string.h>

#if defined(__F16C__)
#include <immintrin.h>
#endif

static inline uint32_t kvrt_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float kvrt_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

static inline float kvrt_fp16_to_f32(uint16_t h)
{
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) /* inf / nan */
        return kvrt_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        if (man == 0)
            return kvrt_bits_f32(sign);
        /* subnormal: value = man * 2^-24 */
        float v = (float)man * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    return kvrt_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
#endif
}

static inline uint16_t kvrt_f32_to_fp16(float f)
{
#if defined(__F16C__)
    return _cvtss_sh(f, 0); /* 0 = round to nearest even */
#else
    uint32_t u = kvrt_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu >= 0x7f800000u) /* inf or nan (keep nan quiet) */
        return (uint16_t)(sign | 0x7c00u | (absu > 0x7f800000u ? 0x200u | ((absu >> 13) & 0x3ffu) : 0));
    if (absu >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (absu < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        /* add 0.5 in float to shift the mantissa into place with RNE rounding */
        float a = kvrt_bits_f32(absu) + 0.5f;
        return (uint16_t)(sign | (kvrt_f32_bits(a) - 0x3f000000u));
    }
    uint32_t mant_odd = (absu >> 13) & 1u;
    absu += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round to nearest even */
    return (uint16_t)(sign | (absu >> 13));
#endif
}

/* F16 KV's conversion (DESIGN.md "The block layout"): round to nearest even,
 * then a value beyond +-65504 (inf included) saturates to +-65504; NaN stays
 * NaN. What every backend's kv_write stores. */
static inline uint16_t kvrt_f32_to_fp16_kv(float f)
{
    uint16_t h = kvrt_f32_to_fp16(f);
    return (h & 0x7fffu) == 0x7c00u ? (uint16_t)((h & 0x8000u) | 0x7bffu) : h;
}

static inline float kvrt_bf16_to_f32(uint16_t h)
{
    return kvrt_bits_f32((uint32_t)h << 16);
}

static inline uint16_t kvrt_f32_to_bf16(float f)
{
    uint32_t u = kvrt_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* nan: keep it a (quiet) nan */
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

#endif /* KVRT_FP16_H */
