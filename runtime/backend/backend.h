/*
 * The backend interface (DESIGN.md "Backend interface"): one versioned table
 * of function pointers per backend, in the style of a device driver. The KV
 * manager, the model and the engine talk to devices only through it.
 *
 * Rules every backend keeps:
 *  - Ops are recorded between begin() and submit(); submit() runs the recorded
 *    work (one command buffer / one queue flush) and waits for it. The CPU
 *    backend executes ops immediately; begin/submit only bracket them.
 *  - An entry a backend does not implement is NULL; callers report
 *    KVRT_ERR_UNSUPPORTED through kvrt_backend_unsupported(). A backend never
 *    silently falls back to something slower.
 *  - Tensors are addressed by views (buffer + byte offset) plus explicit
 *    element counts and row strides (in elements), so a view into a fused
 *    output (Q inside QKV) needs no copy.
 *  - The KV pools keep the block layout of DESIGN.md on every backend:
 *    per layer one K and one V pool, [num_blocks][n_kv_heads][block_size][head_dim].
 *  - Batch arrays (positions, slot mapping, seq_lens, query_start_loc, block
 *    tables, token ids, logits indices) are int32 buffers on the device.
 *  - Failures set be->err (per-object message) and return its status.
 */
#ifndef KVRT_BACKEND_H
#define KVRT_BACKEND_H

#include "backend/profile.h"
#include "common/kvrt_internal.h"

#define KVRT_BACKEND_INTERFACE_VERSION 1

typedef struct kvrt_backend kvrt_backend;
typedef struct kvrt_backend_ops kvrt_backend_ops;
typedef struct kvrt_buffer kvrt_buffer;   /* backend-defined */
typedef struct kvrt_kv_pool kvrt_kv_pool; /* backend-defined: all layers' K and V pools */

/* Common header of every backend object; backends embed it first. */
struct kvrt_backend {
    const kvrt_backend_ops *ops;
    kvrt_backend_kind kind;
    const kvrt_allocator *alloc;
    kvrt_error err;        /* message of the last failed call */
    char description[256]; /* "cpu: 2 threads, OpenBLAS SkylakeX" */
    bool profiling;        /* per-op timing on (kvrt_context_set_profiling) */
    kvrt_profile profile;  /* what it accumulated */
};

/* A byte offset into a buffer. */
typedef struct kvrt_view {
    kvrt_buffer *buf;
    size_t offset;
} kvrt_view;

static inline kvrt_view kvrt_view_at(kvrt_view v, size_t byte_offset)
{
    v.offset += byte_offset;
    return v;
}

enum {
    KVRT_BUFFER_DEVICE = 0,      /* device-local; reached by upload/download */
    KVRT_BUFFER_HOST_VISIBLE = 1 /* mappable (staging, readback) */
};

typedef struct kvrt_kv_pool_desc {
    int32_t n_layers;
    int32_t n_kv_heads;
    int32_t head_dim;
    int32_t block_size; /* 8, 16 or 32 */
    int32_t num_blocks;
    kvrt_dtype dtype;   /* F32 or F16 */
} kvrt_kv_pool_desc;

/* Bytes of one block of one pool (one layer, K or V), scales included. */
size_t kvrt_kv_block_bytes(const kvrt_kv_pool_desc *desc);

typedef enum kvrt_kv_which { KVRT_KV_K = 0, KVRT_KV_V = 1 } kvrt_kv_which;

/* Shape and options of one attention call. */
typedef struct kvrt_attn_desc {
    int32_t num_seqs;
    int32_t n_heads;            /* query heads; a multiple of the pool's n_kv_heads */
    int32_t max_blocks_per_seq; /* row length of the block table */
    float scale;                /* softmax scale, usually 1/sqrt(head_dim) */
    int32_t window;             /* sliding window W; 0 = none */
    int32_t sinks;              /* first S positions always visible */
    int64_t q_stride;           /* elements between consecutive tokens of q */
    int64_t o_stride;           /* elements between consecutive tokens of out */
} kvrt_attn_desc;

/* The rows of RoPE: x[t][h][d] for t < n_tokens, h < n_heads, d < head_dim,
 * rotated by angle position[t] * theta_i, with cos/sin read from a table the
 * host computed in double precision: cos_sin[pos][rot_dim/2][2]. */
typedef struct kvrt_rope_desc {
    int32_t n_tokens;
    int32_t n_heads;
    int32_t head_dim;
    int32_t rot_dim;   /* leading dims rotated (== head_dim for Llama) */
    int32_t neox;      /* 0: adjacent pairs (GGUF llama); 1: halves (NeoX) */
    int32_t max_pos;   /* rows in the cos/sin table; positions >= it are an error */
    int64_t stride;    /* elements between consecutive tokens of x */
} kvrt_rope_desc;

struct kvrt_backend_ops {
    uint32_t interface_version; /* KVRT_BACKEND_INTERFACE_VERSION */
    const char *name;

    void (*destroy)(kvrt_backend *be);

    /* ---- memory ---- */
    kvrt_status (*buffer_create)(kvrt_backend *be, size_t size, unsigned flags, kvrt_buffer **out);
    void (*buffer_destroy)(kvrt_backend *be, kvrt_buffer *buf);
    /* Optional: wrap caller memory without copying (CPU); the memory must outlive the buffer. */
    kvrt_status (*buffer_wrap_host)(kvrt_backend *be, void *ptr, size_t size, kvrt_buffer **out);
    /* Optional: host address of a buffer's bytes (CPU; mapped host-visible buffers). */
    void *(*buffer_host_ptr)(kvrt_backend *be, kvrt_buffer *buf);
    /* Between steps these run at once. Inside an open step (begin ...
     * submit) they take their place in the step's order: an upload is seen
     * by the ops recorded after it, not by those before it; a download reads
     * what the ops before it wrote, and its bytes are in dst when submit()
     * returns (dst must stay valid until then; GPU backends record both). */
    kvrt_status (*buffer_upload)(kvrt_backend *be, kvrt_buffer *dst, size_t offset, const void *src, size_t size);
    kvrt_status (*buffer_download)(kvrt_backend *be, kvrt_buffer *src, size_t offset, void *dst, size_t size);
    kvrt_status (*buffer_copy)(kvrt_backend *be, kvrt_buffer *src, size_t src_offset,
                               kvrt_buffer *dst, size_t dst_offset, size_t size);

    /* ---- KV pools ---- */
    kvrt_status (*kv_pool_create)(kvrt_backend *be, const kvrt_kv_pool_desc *desc, kvrt_kv_pool **out);
    void (*kv_pool_destroy)(kvrt_backend *be, kvrt_kv_pool *pool);
    /* Raw bytes of one block of one pool, kvrt_kv_block_bytes() long. Immediate (not recorded). */
    kvrt_status (*kv_block_read)(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                 int32_t block, void *dst);
    kvrt_status (*kv_block_write)(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_kv_which which,
                                  int32_t block, const void *src);
    /* Copies whole blocks (every layer, K and V): pairs[i] = {src, dst}. Recorded. */
    kvrt_status (*kv_copy_blocks)(kvrt_backend *be, kvrt_kv_pool *pool, const int32_t (*pairs)[2], int32_t n_pairs);

    /* ---- step recording ---- */
    kvrt_status (*begin)(kvrt_backend *be);
    kvrt_status (*submit)(kvrt_backend *be); /* runs what was recorded and waits */

    /* ---- attention ---- */
    /* Writes k[t], v[t] ([n_kv_heads][head_dim] each, F32) to slot_mapping[t] of `layer`.
     * Slots < 0 are skipped (padding). */
    kvrt_status (*kv_write)(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                            kvrt_view k, int64_t k_stride, kvrt_view v, int64_t v_stride,
                            kvrt_view slot_mapping, int32_t n_tokens);
    /* One query token per sequence: q, out [num_seqs][n_heads][head_dim] (with strides);
     * the query sits at position seq_lens[s] - 1. */
    kvrt_status (*attn_decode)(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                               kvrt_view q, kvrt_view out, kvrt_view seq_lens, kvrt_view block_tables);
    /* A chunk of queries per sequence: tokens [query_start_loc[s], query_start_loc[s+1]) are the
     * last tokens of sequence s, at positions seq_lens[s] - n_new .. seq_lens[s] - 1; their K/V are
     * already in the pool. Causal over cached prefix + chunk. */
    kvrt_status (*attn_prefill)(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, const kvrt_attn_desc *d,
                                kvrt_view q, kvrt_view out, kvrt_view query_start_loc,
                                kvrt_view seq_lens, kvrt_view block_tables);

    /* ---- model ops (F32 activations) ---- */
    /* y[t][o] = sum_i W[o][i] * x[t][i]; W row-major [n_out][n_in] in wtype (GGUF block layouts). */
    kvrt_status (*matmul)(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in,
                          kvrt_view x, int64_t x_stride, kvrt_view y, int64_t y_stride, int32_t n_tokens);
    /* y[t] = x[t] / rms(x[t]) * w; may run in place. */
    kvrt_status (*rmsnorm)(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w,
                           kvrt_view y, int64_t y_stride, int32_t n_tokens, int32_t dim, float eps);
    /* Rotates x in place. positions: int32 [n_tokens]; cos_sin: F32 [max_pos][rot_dim/2][2]. */
    kvrt_status (*rope)(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                        const kvrt_rope_desc *d);
    /* out[t][i] = silu(gate[t][i]) * up[t][i]. */
    kvrt_status (*swiglu)(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up, int64_t up_stride,
                          kvrt_view out, int64_t out_stride, int32_t n_tokens, int32_t dim);
    /* out[i] = a[i] + b[i], i < n (contiguous); out may alias a or b. */
    kvrt_status (*add)(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n);
    /* y[t][i] = x[t][i] + b[i] for t < n_tokens, i < dim (a bias row on every token; F32); y may be x
     * (same stride). Optional: models with biases need it. */
    kvrt_status (*add_bias)(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view b, kvrt_view y,
                            int64_t y_stride, int32_t n_tokens, int64_t dim);
    /* out[t] = table[ids[t]] as F32; table [n_rows][dim] in wtype. ids checked by the caller. */
    kvrt_status (*embed)(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim,
                         kvrt_view ids, int32_t n_tokens, kvrt_view out);
    /* dst[i] = src[idx[i]] (rows of dim F32). */
    kvrt_status (*gather_rows)(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx,
                               int32_t n, kvrt_view dst, int64_t dst_stride, int32_t dim);
    /* out[r] = argmax of row r (lowest index on ties), int32. */
    kvrt_status (*argmax)(kvrt_backend *be, kvrt_view x, int64_t stride, int32_t n_rows, int32_t n_cols,
                          kvrt_view out);

    /* Optional: writes on-disk caches (compiled pipelines) now; NULL = none to save. */
    kvrt_status (*save_caches)(kvrt_backend *be);

    /* ---- profiling (optional) ---- */
    /* Prepares (on) or stops per-op timing; called between steps, before
     * be->profiling changes. Ops then add their times to be->profile
     * (kvrt_profile_add, op names as in kvrt_profile_entry). */
    kvrt_status (*set_profiling)(kvrt_backend *be, bool on);
};

/* Sets be->err for a NULL entry and returns KVRT_ERR_UNSUPPORTED. */
kvrt_status kvrt_backend_unsupported(kvrt_backend *be, const char *entry);

/* Backend factories. Each returns KVRT_ERR_BACKEND_UNAVAILABLE with a message
 * when it is not built in or finds no driver/device. */
kvrt_status kvrt_cpu_backend_create(const kvrt_context_params *params, kvrt_backend **out, kvrt_error *err);
kvrt_status kvrt_vulkan_backend_create(const kvrt_context_params *params, kvrt_backend **out, kvrt_error *err);
kvrt_status kvrt_opencl_backend_create(const kvrt_context_params *params, kvrt_backend **out, kvrt_error *err);

/* The public context: a backend and the settings everything created from it shares. */
struct kvrt_context {
    kvrt_backend *be;
    const kvrt_allocator *alloc;
    uint64_t memory_budget; /* bytes for weights + activations + KV; 0 = none given */
};

#endif /* KVRT_BACKEND_H */
