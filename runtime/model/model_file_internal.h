/* Shared by the two loaders (GGUF and llama2.c): allocation of a model file
 * and the checks every loaded model passes, whatever its format. */
#ifndef KVRT_MODEL_FILE_INTERNAL_H
#define KVRT_MODEL_FILE_INTERNAL_H

#include "model/model_file.h"

/* A zeroed model file using `alloc`. */
kvrt_status kvrt_model_file_new(const kvrt_allocator *alloc, kvrt_model_file **out, kvrt_error *err);
/* Allocates w.layers for hp.n_layer layers. */
kvrt_status kvrt_model_file_alloc_layers(kvrt_model_file *mf, kvrt_error *err);
/* Hyper-parameters: positive, head counts consistent, derived fields filled
 * (head_dim; rope_dim when 0). BAD_MODEL naming the inconsistency. */
kvrt_status kvrt_llama_hparams_check(kvrt_llama_hparams *hp, kvrt_error *err);
/* Whether a layer tensor belongs to the architecture. */
typedef enum kvrt_tensor_need {
    KVRT_TENSOR_REQUIRED = 0,
    KVRT_TENSOR_OPTIONAL = 1, /* read when the file has it */
    KVRT_TENSOR_UNUSED = 2    /* not part of this architecture: an error if the file has it */
} kvrt_tensor_need;

/* One layer tensor: where it goes, its GGUF name after "blk.N.", its shape. */
typedef struct kvrt_tensor_slot {
    kvrt_tensor_ref *t;
    const char *name;
    int64_t ne0, ne1;
    kvrt_tensor_need need;
} kvrt_tensor_slot;

#define KVRT_LAYER_SLOTS 14
/* The tensors of one layer for hp's architecture (KVRT_LAYER_SLOTS of them). */
int32_t kvrt_llama_layer_slots(const kvrt_llama_hparams *hp, kvrt_llama_layer *l, kvrt_tensor_slot *out);
/* Every weight present, of a type kvrt runs, with the shape hp implies. */
kvrt_status kvrt_model_file_check_weights(const kvrt_model_file *mf, kvrt_error *err);
/* Sets a tensor reference from a 1-D or 2-D shape; nbytes from the type. */
kvrt_status kvrt_tensor_ref_set(kvrt_tensor_ref *t, const char *name, kvrt_dtype type, const void *data,
                                int64_t ne0, int64_t ne1, kvrt_error *err);

struct kvrt_gguf;
/* The tokenizer keys of a GGUF (tokenizer.ggml.*, tokenizer.chat_template)
 * into *v (initialised first; freed again on failure). BAD_TOKENIZER naming
 * the key, UNSUPPORTED for a tokenizer model other than llama and gpt2. */
kvrt_status kvrt_vocab_read_gguf(const struct kvrt_gguf *g, const kvrt_allocator *alloc, kvrt_vocab *v,
                                 kvrt_error *err);

#endif /* KVRT_MODEL_FILE_INTERNAL_H */
