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

/* For moving a sequence between backends (tests, offload): a session hands
 * out its blocks in order 0, 1, 2, ..., so two sessions with the same
 * parameters address the same tokens through the same block ids. */
kvrt_kv_pool *kvrt_session_kv_pool(kvrt_session *s);
/* Declares positions [0, n_past) present in the cache, their blocks already
 * filled by the caller (e.g. copied byte for byte from another backend). */
kvrt_status kvrt_session_adopt(kvrt_session *s, int32_t n_past);
/* The session's prompt cache (NULL without one), for its test hooks. */
struct kvrt_prompt_cache *kvrt_session_debug_prompt_cache(kvrt_session *s);

/* After the tokenizer is built: the file's chat template, when kvrt
 * recognises it, adds its end marker to the end-of-generation tokens. */
void kvrt_model_chat_init(kvrt_model *m);

#endif /* KVRT_MODEL_API_INTERNAL_H */
