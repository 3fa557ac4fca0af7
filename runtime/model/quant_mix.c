/* Per-tensor types of the quantization presets (rules in quant_mix.h). */
#include "model/quant_mix.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    kvrt_dtype base;
    kvrt_mix_rule rule;
    uint32_t file_type;
} presets[] = {
    {"F32", KVRT_DTYPE_F32, KVRT_MIX_PURE, 0},       {"F16", KVRT_DTYPE_F16, KVRT_MIX_PURE, 1},
    {"BF16", KVRT_DTYPE_BF16, KVRT_MIX_PURE, 32},    {"Q4_0", KVRT_DTYPE_Q4_0, KVRT_MIX_PLAIN, 2},
    {"Q4_1", KVRT_DTYPE_Q4_1, KVRT_MIX_PLAIN, 3},    {"Q5_0", KVRT_DTYPE_Q5_0, KVRT_MIX_PLAIN, 8},
    {"Q5_1", KVRT_DTYPE_Q5_1, KVRT_MIX_PLAIN, 9},    {"Q8_0", KVRT_DTYPE_Q8_0, KVRT_MIX_PLAIN, 7},
    {"Q2_K", KVRT_DTYPE_Q2_K, KVRT_MIX_Q2_K, 10},    {"Q3_K_S", KVRT_DTYPE_Q3_K, KVRT_MIX_Q3_K_S, 11},
    {"Q3_K_M", KVRT_DTYPE_Q3_K, KVRT_MIX_Q3_K_M, 12}, {"Q3_K_L", KVRT_DTYPE_Q3_K, KVRT_MIX_Q3_K_L, 13},
    {"Q4_K_S", KVRT_DTYPE_Q4_K, KVRT_MIX_Q4_K_S, 14}, {"Q4_K_M", KVRT_DTYPE_Q4_K, KVRT_MIX_Q4_K_M, 15},
    {"Q5_K_S", KVRT_DTYPE_Q5_K, KVRT_MIX_PLAIN, 16}, {"Q5_K_M", KVRT_DTYPE_Q5_K, KVRT_MIX_Q5_K_M, 17},
    {"Q6_K", KVRT_DTYPE_Q6_K, KVRT_MIX_PLAIN, 18},   {"IQ4_NL", KVRT_DTYPE_IQ4_NL, KVRT_MIX_IQ4, 25},
    {"IQ4_XS", KVRT_DTYPE_IQ4_XS, KVRT_MIX_IQ4, 30},
    /* single types that are no llama.cpp preset: every matrix in that type */
    {"Q3_K", KVRT_DTYPE_Q3_K, KVRT_MIX_PURE, 11},    {"Q4_K", KVRT_DTYPE_Q4_K, KVRT_MIX_PURE, 14},
    {"Q5_K", KVRT_DTYPE_Q5_K, KVRT_MIX_PURE, 16},
};

const char *kvrt_quant_mix_names(void)
{
    return "Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q6_K, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q3_K_S, Q3_K_M, Q3_K_L, Q2_K, "
           "IQ4_NL, IQ4_XS, Q3_K, Q4_K, Q5_K, F16, BF16, F32";
}

bool kvrt_quant_mix_find(const char *name, bool pure, kvrt_quant_mix *out)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(presets); i++) {
        const char *p = presets[i].name;
        size_t k = 0;
        while (p[k] && name[k] && p[k] == toupper((unsigned char)name[k]))
            k++;
        if (p[k] || name[k])
            continue;
        memset(out, 0, sizeof(*out));
        snprintf(out->name, sizeof(out->name), "%s", name);
        out->base = presets[i].base;
        out->rule = pure ? KVRT_MIX_PURE : presets[i].rule;
        out->file_type = presets[i].file_type;
        return true;
    }
    return false;
}

kvrt_dtype kvrt_quant_fallback(kvrt_dtype type, int64_t ne0)
{
    if (ne0 % kvrt_dtype_block_values(type) == 0)
        return type;
    kvrt_dtype f = KVRT_DTYPE_F16;
    switch (type) {
    case KVRT_DTYPE_Q2_K:
    case KVRT_DTYPE_Q3_K:
    case KVRT_DTYPE_IQ4_XS: f = KVRT_DTYPE_IQ4_NL; break;
    case KVRT_DTYPE_Q4_K: f = KVRT_DTYPE_Q5_0; break;
    case KVRT_DTYPE_Q5_K: f = KVRT_DTYPE_Q5_1; break;
    case KVRT_DTYPE_Q6_K: f = KVRT_DTYPE_Q8_0; break;
    default: break;
    }
    return ne0 % kvrt_dtype_block_values(f) == 0 ? f : KVRT_DTYPE_F16;
}

/* llama.cpp's "use more bits" layers: the first and last eighth, and every
 * third layer in between. */
static bool more_bits(int i, int n)
{
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

/* Layer index of "blk.N.<what>.weight" when <what> is `what`, else -1. */
static int layer_of(const char *name, const char *what)
{
    if (strncmp(name, "blk.", 4) != 0)
        return -1;
    char *end;
    long i = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || strncmp(end + 1, what, strlen(what)) != 0 ||
        strcmp(end + 1 + strlen(what), ".weight") != 0)
        return -1;
    return (int)i;
}

static kvrt_dtype attn_v_type(const kvrt_quant_mix *mix, const kvrt_llama_hparams *hp, int i)
{
    const int gqa = hp->n_head_kv > 0 ? hp->n_head / hp->n_head_kv : 1;
    switch (mix->rule) {
    case KVRT_MIX_Q2_K: return gqa >= 4 ? KVRT_DTYPE_Q4_K : KVRT_DTYPE_Q3_K;
    case KVRT_MIX_Q3_K_M: return i < 2 ? KVRT_DTYPE_Q5_K : KVRT_DTYPE_Q4_K;
    case KVRT_MIX_Q3_K_L: return KVRT_DTYPE_Q5_K;
    case KVRT_MIX_Q4_K_S: return i < 4 ? KVRT_DTYPE_Q5_K : mix->base;
    case KVRT_MIX_Q4_K_M:
    case KVRT_MIX_Q5_K_M: return more_bits(i, hp->n_layer) ? KVRT_DTYPE_Q6_K : mix->base;
    case KVRT_MIX_IQ4: return gqa >= 4 ? KVRT_DTYPE_Q5_K : mix->base;
    default: return mix->base;
    }
}

static kvrt_dtype ffn_down_type(const kvrt_quant_mix *mix, const kvrt_llama_hparams *hp, int i)
{
    const int n = hp->n_layer;
    switch (mix->rule) {
    case KVRT_MIX_Q2_K: return KVRT_DTYPE_Q3_K;
    case KVRT_MIX_Q3_K_M: return i < n / 16 ? KVRT_DTYPE_Q5_K : KVRT_DTYPE_Q4_K;
    case KVRT_MIX_Q3_K_L: return KVRT_DTYPE_Q5_K;
    case KVRT_MIX_Q4_K_S: return i < n / 8 ? KVRT_DTYPE_Q5_K : mix->base;
    case KVRT_MIX_Q4_K_M:
    case KVRT_MIX_Q5_K_M: return more_bits(i, n) ? KVRT_DTYPE_Q6_K : mix->base;
    default: return mix->base;
    }
}

static kvrt_dtype attn_output_type(const kvrt_quant_mix *mix)
{
    switch (mix->rule) {
    case KVRT_MIX_Q2_K: return KVRT_DTYPE_Q3_K;
    case KVRT_MIX_Q3_K_M: return KVRT_DTYPE_Q4_K;
    case KVRT_MIX_Q3_K_L: return KVRT_DTYPE_Q5_K;
    default: return mix->base;
    }
}

kvrt_dtype kvrt_quant_mix_type(const kvrt_quant_mix *mix, const kvrt_llama_hparams *hp, const char *name,
                               int64_t ne0, int64_t ne1, bool tied)
{
    if (ne1 == 1)
        return KVRT_DTYPE_F32;
    kvrt_dtype t = mix->base;
    if (mix->rule != KVRT_MIX_PURE) {
        int i;
        bool classifier = !strcmp(name, "output.weight") || (tied && !strcmp(name, "token_embd.weight"));
        if (classifier)
            t = ne0 % kvrt_dtype_block_values(mix->base) != 0 ? KVRT_DTYPE_Q8_0
                : mix->base == KVRT_DTYPE_Q8_0                 ? KVRT_DTYPE_Q8_0
                                                               : KVRT_DTYPE_Q6_K;
        else if ((i = layer_of(name, "attn_v")) >= 0)
            t = attn_v_type(mix, hp, i);
        else if ((i = layer_of(name, "ffn_down")) >= 0)
            t = ffn_down_type(mix, hp, i);
        else if (layer_of(name, "attn_output") >= 0)
            t = attn_output_type(mix);
    }
    return kvrt_quant_fallback(t, ne0);
}
