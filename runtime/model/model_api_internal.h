/* Internals of the public model/session objects, for tests and the engine. */
#ifndef KVRT_MODEL_API_INTERNAL_H
#define KVRT_MODEL_API_INTERNAL_H

#include "backend/backend.h"
#include "model/llama.h"
#include "model/model_file.h"
#include "model/tokenizer.h"

struct kvrt_model {
    kvrt_context *ctx;
    kvrt_model_file *mf;
    kvrt_tokenizer *tok; /* NULL when the file has no vocabulary */
    kvrt_llama *lm;
    int32_t max_context;
    kvrt_error err;
};

#endif /* KVRT_MODEL_API_INTERNAL_H */
