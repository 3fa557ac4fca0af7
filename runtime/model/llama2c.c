/* llama2.c run.c checkpoint -> kvrt_model_file. The file is a 7 x int32
 * header followed by F32 weights in run.c order; it is memory-mapped and
 * the weights are read in place. */
#include "model/model_file_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct llama2c_config {
    int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
} llama2c_config;

/* Walks the weights in file order, bounds-checked against the file size. */
typedef struct walker {
    const float *base;
    int64_t n_floats; /* floats after the header */
    int64_t pos;
    kvrt_error *err;
} walker;

static kvrt_status take(walker *w, const char *what, int64_t count, const float **out)
{
    int64_t end;
    if (__builtin_add_overflow(w->pos, count, &end) || end > w->n_floats)
        return kvrt_fail(w->err, KVRT_ERR_BAD_MODEL,
                         "llama2.c checkpoint truncated: %s needs floats %lld..%lld, the file has %lld after the header",
                         what, (long long)w->pos, (long long)end, (long long)w->n_floats);
    *out = w->base + w->pos;
    w->pos = end;
    return KVRT_OK;
}

/* One [ne0] x ne1 matrix per layer, stored layer after layer. */
static kvrt_status take_layers(walker *w, kvrt_model_file *mf, const char *what, size_t field, int64_t ne0,
                               int64_t ne1)
{
    int64_t per, all;
    const float *p = NULL;
    if (!kvrt_mul_i64(ne0, ne1, &per) || !kvrt_mul_i64(per, mf->hp.n_layer, &all))
        return kvrt_fail(w->err, KVRT_ERR_BAD_MODEL, "llama2.c checkpoint: %s size overflows", what);
    KVRT_TRY(take(w, what, all, &p));
    for (int32_t i = 0; i < mf->hp.n_layer; i++) {
        kvrt_tensor_ref *t = (kvrt_tensor_ref *)(void *)((char *)&mf->w.layers[i] + field);
        KVRT_TRY(kvrt_tensor_ref_set(t, what, KVRT_DTYPE_F32, p + (int64_t)i * per, ne0, ne1, w->err));
    }
    return KVRT_OK;
}

static kvrt_status config_to_hparams(const llama2c_config *c, kvrt_llama_hparams *hp, kvrt_error *err)
{
    if (c->vocab_size == INT32_MIN || c->n_heads <= 0 || c->dim <= 0 || c->dim % c->n_heads != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL,
                         "llama2.c header (dim %d, n_heads %d, vocab_size %d) is inconsistent", c->dim, c->n_heads,
                         c->vocab_size);
    *hp = (kvrt_llama_hparams){
        .n_vocab = c->vocab_size < 0 ? -c->vocab_size : c->vocab_size,
        .n_embd = c->dim,
        .n_layer = c->n_layers,
        .n_ff = c->hidden_dim,
        .n_head = c->n_heads,
        .n_head_kv = c->n_kv_heads,
        .n_ctx_train = c->seq_len,
        .rope_dim = 0,
        .rope_neox = 0,
        .rope_freq_base = 10000.0f,
        .rms_eps = 1e-5f,
    };
    return kvrt_llama_hparams_check(hp, err);
}

static kvrt_status walk_weights(walker *w, kvrt_model_file *mf, bool shared)
{
    const kvrt_llama_hparams *hp = &mf->hp;
    int64_t d = hp->n_embd, q = (int64_t)hp->n_head * hp->head_dim, kv = (int64_t)hp->n_head_kv * hp->head_dim;
    const float *p = NULL;
    int64_t n;
    if (!kvrt_mul_i64(d, hp->n_vocab, &n))
        return kvrt_fail(w->err, KVRT_ERR_BAD_MODEL, "llama2.c checkpoint: embedding size overflows");
    KVRT_TRY(take(w, "token_embedding", n, &p));
    KVRT_TRY(kvrt_tensor_ref_set(&mf->w.tok_embd, "token_embedding", KVRT_DTYPE_F32, p, d, hp->n_vocab, w->err));
#define LAYERS(what, f, ne0, ne1) KVRT_TRY(take_layers(w, mf, what, offsetof(kvrt_llama_layer, f), ne0, ne1))
    LAYERS("rms_att_weight", attn_norm, d, 1);
    LAYERS("wq", wq, d, q);
    LAYERS("wk", wk, d, kv);
    LAYERS("wv", wv, d, kv);
    LAYERS("wo", wo, q, d);
    LAYERS("rms_ffn_weight", ffn_norm, d, 1);
    LAYERS("w1", ffn_gate, d, hp->n_ff);
    LAYERS("w2", ffn_down, hp->n_ff, d);
    LAYERS("w3", ffn_up, d, hp->n_ff);
#undef LAYERS
    KVRT_TRY(take(w, "rms_final_weight", d, &p));
    KVRT_TRY(kvrt_tensor_ref_set(&mf->w.output_norm, "rms_final_weight", KVRT_DTYPE_F32, p, d, 1, w->err));
    /* run.c's precomputed RoPE tables: kvrt computes its own. */
    int64_t freq = (int64_t)hp->n_ctx_train * (hp->head_dim / 2);
    KVRT_TRY(take(w, "freq_cis_real", freq, &p));
    KVRT_TRY(take(w, "freq_cis_imag", freq, &p));
    if (shared) {
        mf->w.output = mf->w.tok_embd;
    } else {
        KVRT_TRY(take(w, "wcls", n, &p));
        KVRT_TRY(kvrt_tensor_ref_set(&mf->w.output, "wcls", KVRT_DTYPE_F32, p, d, hp->n_vocab, w->err));
    }
    if (w->pos != w->n_floats)
        return kvrt_fail(w->err, KVRT_ERR_BAD_MODEL,
                         "llama2.c checkpoint has %lld floats after the header, its header implies %lld",
                         (long long)w->n_floats, (long long)w->pos);
    return KVRT_OK;
}

/* Layer count checked against the file before anything is sized by it. */
static kvrt_status check_layers_fit(const kvrt_llama_hparams *hp, int64_t n_floats, kvrt_error *err)
{
    int64_t d = hp->n_embd, q = (int64_t)hp->n_head * hp->head_dim, kv = (int64_t)hp->n_head_kv * hp->head_dim;
    int64_t per = 2 * d, t, all;
    bool ok = kvrt_mul_i64(d, 2 * q + 2 * kv, &t) && !__builtin_add_overflow(per, t, &per) &&
              kvrt_mul_i64(d, 3 * (int64_t)hp->n_ff, &t) && !__builtin_add_overflow(per, t, &per) &&
              kvrt_mul_i64(per, hp->n_layer, &all);
    if (!ok || all > n_floats)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL,
                         "llama2.c checkpoint truncated: %d layers of dim %d need more than the %lld floats in the file",
                         hp->n_layer, hp->n_embd, (long long)n_floats);
    return KVRT_OK;
}

static kvrt_status map_checkpoint(const uint8_t *bytes, size_t size, kvrt_model_file *mf, kvrt_error *err)
{
    llama2c_config c;
    if (size < sizeof(c))
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "llama2.c checkpoint too small (%zu bytes) for its header", size);
    memcpy(&c, bytes, sizeof(c));
    if ((size - sizeof(c)) % sizeof(float) != 0)
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "llama2.c checkpoint size %zu is not a whole number of floats", size);
    KVRT_TRY(config_to_hparams(&c, &mf->hp, err));
    snprintf(mf->arch, sizeof(mf->arch), "llama");
    mf->main_type = KVRT_DTYPE_F32;
    walker w = {(const float *)(const void *)(bytes + sizeof(c)), (int64_t)((size - sizeof(c)) / sizeof(float)), 0,
                err};
    KVRT_TRY(check_layers_fit(&mf->hp, w.n_floats, err));
    KVRT_TRY(kvrt_model_file_alloc_layers(mf, err));
    KVRT_TRY(walk_weights(&w, mf, c.vocab_size > 0));
    return kvrt_model_file_check_weights(mf, err);
}

static kvrt_status map_file(const char *path, void **map, size_t *size, kvrt_error *err)
{
    int fd;
    uint64_t file_size;
    *map = NULL;
    KVRT_TRY(kvrt_open_regular_file(path, "llama2.c checkpoint", &fd, &file_size, err));
    if (file_size > SIZE_MAX) {
        close(fd);
        return kvrt_fail(err, KVRT_ERR_IO, "'%s' is too large to map", path);
    }
    *size = (size_t)file_size;
    if (*size == 0) {
        close(fd);
        return kvrt_fail(err, KVRT_ERR_BAD_MODEL, "llama2.c checkpoint '%s' is empty", path);
    }
    *map = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (*map == MAP_FAILED) {
        *map = NULL;
        return kvrt_fail(err, KVRT_ERR_IO, "cannot map '%s': %s", path, strerror(e));
    }
    return KVRT_OK;
}

static void report(const kvrt_load_progress *progress, double fraction)
{
    if (progress && progress->fn)
        progress->fn(progress->user, fraction);
}

kvrt_status kvrt_model_file_load_llama2c(const char *checkpoint_path, const char *tokenizer_path,
                                         const kvrt_allocator *alloc, const kvrt_load_progress *progress,
                                         kvrt_model_file **out, kvrt_error *err)
{
    *out = NULL;
    kvrt_model_file *mf = NULL;
    KVRT_TRY(kvrt_model_file_new(alloc, &mf, err));
    kvrt_status s = map_file(checkpoint_path, &mf->mapping, &mf->mapping_size, err);
    if (s == KVRT_OK) {
        report(progress, 0.1);
        s = map_checkpoint(mf->mapping, mf->mapping_size, mf, err);
    }
    if (s == KVRT_OK && tokenizer_path) {
        report(progress, 0.5);
        s = kvrt_vocab_load_llama2c(tokenizer_path, mf->hp.n_vocab, alloc, &mf->vocab, err);
    }
    if (s != KVRT_OK) {
        kvrt_model_file_free(mf);
        return s;
    }
    report(progress, 1.0);
    *out = mf;
    return KVRT_OK;
}
