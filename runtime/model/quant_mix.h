/* Which type each tensor of a llama model gets when a file is quantized to
 * a preset (kvrt-quantize, kvrt-synth --type). The presets follow the
 * published rules of llama.cpp's presets of the same names, so a kvrt file
 * and a llama.cpp file of one preset hold the same type mix:
 *
 *  - 1-D tensors (norms) stay F32; F32/F16/BF16 "presets" convert every
 *    matrix and change nothing else.
 *  - output.weight (token_embd.weight when the classifier is tied): Q6_K,
 *    or the preset's own type for Q8_0; Q8_0 when its rows are not a
 *    multiple of the preset type's block.
 *  - attn_v and ffn_down of layer i of n (the sensitive ones) get more bits:
 *      Q2_K     attn_v Q3_K (Q4_K when n_head / n_head_kv >= 4), ffn_down Q3_K,
 *               attn_output Q3_K
 *      Q3_K_M   attn_v Q5_K for i < 2, else Q4_K; ffn_down Q5_K for i < n/16,
 *               else Q4_K; attn_output Q4_K
 *      Q3_K_L   attn_v, ffn_down, attn_output Q5_K
 *      Q4_K_S   attn_v Q5_K for i < 4; ffn_down Q5_K for i < n/8
 *      Q4_K_M, Q5_K_M   attn_v and ffn_down Q6_K where "more bits" holds:
 *               i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2
 *      IQ4_NL, IQ4_XS   attn_v Q5_K when n_head / n_head_kv >= 4
 *  - A row whose length the chosen type's block does not divide falls back:
 *    Q2_K, Q3_K, IQ4_XS -> IQ4_NL; Q4_K -> Q5_0; Q5_K -> Q5_1; Q6_K -> Q8_0;
 *    and to F16 when even that block does not divide it.
 * "pure" mixes give every matrix the base type (fall-backs still apply). */
#ifndef KVRT_QUANT_MIX_H
#define KVRT_QUANT_MIX_H

#include "model/model_file.h"

typedef enum kvrt_mix_rule {
    KVRT_MIX_PURE = 0, /* every matrix in the base type */
    KVRT_MIX_PLAIN,    /* base type, output.weight Q6_K (Q4_0, Q5_K_S, Q6_K, ...) */
    KVRT_MIX_Q2_K,
    KVRT_MIX_Q3_K_S,
    KVRT_MIX_Q3_K_M,
    KVRT_MIX_Q3_K_L,
    KVRT_MIX_Q4_K_S,
    KVRT_MIX_Q4_K_M,
    KVRT_MIX_Q5_K_M,
    KVRT_MIX_IQ4
} kvrt_mix_rule;

typedef struct kvrt_quant_mix {
    char name[16];      /* as the caller spelled it ("Q4_K_M", "q8_0") */
    kvrt_dtype base;    /* type of most matrices */
    kvrt_mix_rule rule;
    uint32_t file_type; /* general.file_type (llama.cpp's ftype ids) */
} kvrt_quant_mix;

/* A preset ("Q4_K_M", "q6_k", case-insensitive) or a single type name; false
 * when unknown. pure: every matrix in the base type (no output / attn_v /
 * ffn_down rules). */
bool kvrt_quant_mix_find(const char *name, bool pure, kvrt_quant_mix *out);
/* The names kvrt_quant_mix_find knows, for help texts ("Q4_K_M, Q4_K_S, ..."). */
const char *kvrt_quant_mix_names(void);

/* The type tensor `name` ([ne0] x ne1 rows, GGUF llama naming) gets in a
 * file of this mix; tied: the file has no output.weight. */
kvrt_dtype kvrt_quant_mix_type(const kvrt_quant_mix *mix, const kvrt_llama_hparams *hp, const char *name,
                               int64_t ne0, int64_t ne1, bool tied);
/* The fall-back of `type` for a row of ne0 values it cannot hold (the type
 * itself when it can). */
kvrt_dtype kvrt_quant_fallback(kvrt_dtype type, int64_t ne0);

#endif /* KVRT_QUANT_MIX_H */
