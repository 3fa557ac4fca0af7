/* The model-shape preset table (shapes.h). */
#include "model/shapes.h"

#include <string.h>

static const kvrt_model_shape SHAPES[] = {
    /* name             alias   vocab   embd layers   ff heads kv  ctx */
    {"llama-2-7b", "7b", 32000, 4096, 32, 11008, 32, 32, 4096},
    {"llama-2-13b", NULL, 32000, 5120, 40, 13824, 40, 40, 4096},
    {"llama-2-70b", NULL, 32000, 8192, 80, 28672, 64, 8, 4096},
    {"llama-3-8b", NULL, 128256, 4096, 32, 14336, 32, 8, 8192},
    {"llama-3-70b", NULL, 128256, 8192, 80, 28672, 64, 8, 8192},
    {"mistral-7b", NULL, 32000, 4096, 32, 14336, 32, 8, 32768},
    {"tinyllama-1.1b", "1b", 32000, 2048, 22, 5632, 32, 4, 2048},
    {"stories260K", NULL, 512, 64, 5, 172, 8, 4, 512},
    {"stories15M", "15m", 32000, 288, 6, 768, 6, 6, 256},
    {"stories110M", "110m", 32000, 768, 12, 2048, 12, 12, 1024},
    /* small shapes for quick runs: a model of a few KB, attention without and with GQA */
    {"tiny", NULL, 262, 8, 1, 16, 2, 1, 64},
    {"tiny-mha", NULL, 262, 128, 1, 256, 4, 4, 512},
    {"tiny-gqa", NULL, 262, 512, 1, 1024, 8, 2, 512},
};

const kvrt_model_shape *kvrt_model_shapes(size_t *n)
{
    *n = KVRT_ARRAY_LEN(SHAPES);
    return SHAPES;
}

const kvrt_model_shape *kvrt_model_shape_find(const char *name)
{
    for (size_t i = 0; name && i < KVRT_ARRAY_LEN(SHAPES); i++) {
        if (strcmp(SHAPES[i].name, name) == 0 || (SHAPES[i].alias && strcmp(SHAPES[i].alias, name) == 0))
            return &SHAPES[i];
    }
    return NULL;
}
