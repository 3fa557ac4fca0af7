/*
 * The backend interface (DESIGN.md "Backend interface"): one versioned table
 * of function pointers per backend, in the style of a device driver, behind
 * one front door (ops.h): callers reach every entry through kvrt_op_<entry>,
 * which checks the arguments, so a backend trusts them.
 *
 * Rules every backend keeps:
 *  - Ops are recorded between begin() and submit(); submit() runs the recorded
 *    work (one command buffer / one queue flush) and waits for it. A backend
 *    that runs ops at once (runs_at_once: the CPU) has begin/submit only
 *    bracket them, and the front door times its ops on the host.
 *  - An entry a backend does not implement is NULL; the front door reports
 *    KVRT_ERR_UNSUPPORTED. A backend never silently falls back to something
 *    slower.
 *  - Tensors are addressed by views (buffer + byte offset) plus explicit
 *    element counts and row strides (in elements), so a view into a fused
 *    output (Q inside QKV) needs no copy.
 *  - The KV pools keep the block layout of kv_layout.h on every backend.
 *  - Batch arrays (positions, slot mapping, seq_lens, query_start_loc, block
 *    tables, token ids, logits indices) are int32 buffers on the device,
 *    checked on the host once per step before they go up (kvrt_batch_check).
 *  - Failures set be->err (per-object message) and return its status.
 *  - A failure never poisons the backend: whoever opened a step closes it,
 *    with submit() when everything was recorded, else with abort(), which
 *    drops the step (kvrt_op_submit closes it too when it fails). The
 *    backend is then as it was before begin(), ready for the next step.
 */
#ifndef KVRT_BACKEND_H
#define KVRT_BACKEND_H

#include "backend/kv_layout.h"
#include "backend/profile.h"
#include "common/kvrt_internal.h"

#define KVRT_BACKEND_INTERFACE_VERSION 3

typedef struct kvrt_backend kvrt_backend;
typedef struct kvrt_backend_ops kvrt_backend_ops;
typedef struct kvrt_buffer kvrt_buffer;   /* backend-defined, starting with a kvrt_buffer_head */
typedef struct kvrt_kv_pool kvrt_kv_pool; /* backend-defined, starting with its kvrt_kv_pool_desc */

/* Common header of every backend object; backends embed it first. */
struct kvrt_backend {
    const kvrt_backend_ops *ops;
    kvrt_backend_kind kind;
    const kvrt_allocator *alloc;
    kvrt_error err;        /* message of the last failed call */
    char description[256]; /* "cpu: 2 threads, OpenBLAS SkylakeX" */
    bool profiling;        /* per-op timing on (kvrt_context_set_profiling) */
    kvrt_profile profile;  /* what it accumulated */
    /* Kept by the front door (ops.c), not by the backend: */
    bool step_open;        /* between a successful kvrt_op_begin and kvrt_op_submit / kvrt_op_abort */
    int64_t step_calls;    /* front-door calls that reached the backend since begin */
    /* Test hook (failure injection), per object, off when 0: the fail_at-th
     * front-door call after a begin() (submit included) fails with
     * KVRT_ERR_INTERNAL before it reaches the backend, and the hook disarms.
     * Tests arm it to prove every error path after begin() closes the step. */
    int64_t fail_at;
};

/* Common header of every backend's buffer (its struct kvrt_buffer starts
 * with it): what the front door checks views against. */
typedef struct kvrt_buffer_head {
    size_t size;
    void *host; /* the bytes' host address when they are host memory (CPU, mapped), else NULL */
} kvrt_buffer_head;

static inline const kvrt_buffer_head *kvrt_buffer_head_of(const kvrt_buffer *b)
{
    return (const kvrt_buffer_head *)(const void *)b;
}

/* A pool's shape: every backend's struct kvrt_kv_pool starts with it. */
static inline const kvrt_kv_pool_desc *kvrt_kv_pool_desc_of(const kvrt_kv_pool *pool)
{
    return (const kvrt_kv_pool_desc *)(const void *)pool;
}

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

typedef enum kvrt_kv_which { KVRT_KV_K = 0, KVRT_KV_V = 1 } kvrt_kv_which;

/* The rows of RoPE: x[t][h][d] for t < n_tokens, h < n_heads, d < head_dim,
 * rotated by angle position[t] * theta_i, with cos/sin read from a table the
 * host computed in double precision: cos_sin[pos][rot_dim/2][2]. */
typedef struct kvrt_rope_desc {
    int32_t n_tokens;
    int32_t n_heads;
    int32_t head_dim;
    int32_t rot_dim;   /* leading dims rotated (== head_dim for Llama) */
    int32_t neox;      /* 0: adjacent pairs (GGUF llama); 1: halves (NeoX) */
    int32_t max_pos;   /* rows in the cos/sin table; positions must lie below it */
    int64_t stride;    /* elements between consecutive tokens of x */
} kvrt_rope_desc;

/* ---- one function type per entry (backends declare their entries with them) ---- */

typedef void kvrt_be_destroy_fn(kvrt_backend *be);
typedef kvrt_status kvrt_be_buffer_create_fn(kvrt_backend *be, size_t size, unsigned flags, kvrt_buffer **out);
typedef void kvrt_be_buffer_destroy_fn(kvrt_backend *be, kvrt_buffer *buf);
typedef kvrt_status kvrt_be_buffer_wrap_host_fn(kvrt_backend *be, void *ptr, size_t size, kvrt_buffer **out);
typedef kvrt_status kvrt_be_buffer_upload_fn(kvrt_backend *be, kvrt_buffer *dst, size_t offset, const void *src,
                                             size_t size);
typedef kvrt_status kvrt_be_buffer_download_fn(kvrt_backend *be, kvrt_buffer *src, size_t offset, void *dst,
                                               size_t size);
typedef kvrt_status kvrt_be_buffer_copy_fn(kvrt_backend *be, kvrt_buffer *src, size_t src_offset, kvrt_buffer *dst,
                                           size_t dst_offset, size_t size);
typedef kvrt_status kvrt_be_kv_pool_create_fn(kvrt_backend *be, const kvrt_kv_pool_desc *desc, kvrt_kv_pool **out);
typedef void kvrt_be_kv_pool_destroy_fn(kvrt_backend *be, kvrt_kv_pool *pool);
typedef kvrt_status kvrt_be_kv_block_read_fn(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                                             kvrt_kv_which which, int32_t block, void *dst);
typedef kvrt_status kvrt_be_kv_block_write_fn(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                                              kvrt_kv_which which, int32_t block, const void *src);
typedef kvrt_status kvrt_be_kv_copy_blocks_fn(kvrt_backend *be, kvrt_kv_pool *pool, const int32_t (*pairs)[2],
                                              int32_t n_pairs);
typedef kvrt_status kvrt_be_step_fn(kvrt_backend *be);
typedef void kvrt_be_abort_fn(kvrt_backend *be);
/* What the backend knows of its memory and limits (kvrt.h): it fills every
 * field of kvrt_context_limits. */
typedef void kvrt_be_limits_fn(kvrt_backend *be, kvrt_context_limits *out);
typedef kvrt_status kvrt_be_kv_write_fn(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view k,
                                        int64_t k_stride, kvrt_view v, int64_t v_stride, kvrt_view slot_mapping,
                                        int32_t n_tokens);
typedef kvrt_status kvrt_be_attn_decode_fn(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                                           const kvrt_attn_desc *d, kvrt_view q, kvrt_view out,
                                           kvrt_view seq_lens, kvrt_view block_tables);
typedef kvrt_status kvrt_be_attn_prefill_fn(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer,
                                            const kvrt_attn_desc *d, kvrt_view q, kvrt_view out,
                                            kvrt_view query_start_loc, kvrt_view seq_lens, kvrt_view block_tables);
typedef kvrt_status kvrt_be_matmul_fn(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in,
                                      kvrt_view x, int64_t x_stride, kvrt_view y, int64_t y_stride,
                                      int32_t n_tokens);
typedef kvrt_status kvrt_be_rmsnorm_fn(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view w, kvrt_view y,
                                       int64_t y_stride, int32_t n_tokens, int32_t dim, float eps);
typedef kvrt_status kvrt_be_rope_fn(kvrt_backend *be, kvrt_view x, kvrt_view positions, kvrt_view cos_sin,
                                    const kvrt_rope_desc *d);
typedef kvrt_status kvrt_be_swiglu_fn(kvrt_backend *be, kvrt_view gate, int64_t gate_stride, kvrt_view up,
                                      int64_t up_stride, kvrt_view out, int64_t out_stride, int32_t n_tokens,
                                      int32_t dim);
typedef kvrt_status kvrt_be_add_fn(kvrt_backend *be, kvrt_view a, kvrt_view b, kvrt_view out, int64_t n);
typedef kvrt_status kvrt_be_add_bias_fn(kvrt_backend *be, kvrt_view x, int64_t x_stride, kvrt_view b, kvrt_view y,
                                        int64_t y_stride, int32_t n_tokens, int64_t dim);
typedef kvrt_status kvrt_be_embed_fn(kvrt_backend *be, kvrt_dtype wtype, kvrt_view table, int64_t dim,
                                     kvrt_view ids, int32_t n_tokens, kvrt_view out);
typedef kvrt_status kvrt_be_gather_rows_fn(kvrt_backend *be, kvrt_view src, int64_t src_stride, kvrt_view idx,
                                           int32_t n, kvrt_view dst, int64_t dst_stride, int32_t dim);
typedef kvrt_status kvrt_be_set_profiling_fn(kvrt_backend *be, bool on);
typedef kvrt_status kvrt_be_kv_rope_shift_fn(kvrt_backend *be, kvrt_kv_pool *pool, int32_t layer, kvrt_view blocks,
                                             int32_t n_blocks, kvrt_view cos_sin, int32_t rot_dim, int32_t neox);

/* The kernel entries every backend of this tree implements, for declaring
 * them (KVRT_BACKEND_KERNELS(KVRT_BACKEND_DECLARE, kvrt_cpu_) declares
 * kvrt_cpu_kv_write, ...) and filling a table (KVRT_BACKEND_ENTRY). */
#define KVRT_BACKEND_KERNELS(X, prefix)                                                                    \
    X(prefix, kv_write) X(prefix, attn_decode) X(prefix, attn_prefill) X(prefix, matmul) X(prefix, rmsnorm) \
    X(prefix, rope) X(prefix, swiglu) X(prefix, add) X(prefix, add_bias) X(prefix, embed) X(prefix, gather_rows)
#define KVRT_BACKEND_DECLARE(prefix, entry) kvrt_be_##entry##_fn prefix##entry;
#define KVRT_BACKEND_ENTRY(prefix, entry) .entry = prefix##entry,

/* Weight types as a set (kvrt_backend_ops.weight_types): bit 1 << type. */
#define KVRT_WEIGHT_BIT(t) (UINT64_C(1) << (unsigned)(t))
/* The types every backend ran before the k-quants (issue #14). */
#define KVRT_WEIGHT_TYPES_BASE                                                                          \
    (KVRT_WEIGHT_BIT(KVRT_DTYPE_F32) | KVRT_WEIGHT_BIT(KVRT_DTYPE_F16) | KVRT_WEIGHT_BIT(KVRT_DTYPE_BF16) | \
     KVRT_WEIGHT_BIT(KVRT_DTYPE_Q8_0) | KVRT_WEIGHT_BIT(KVRT_DTYPE_Q4_0))
/* The legacy 4/5-bit types, IQ4 and the k-quants (issue #14). */
#define KVRT_WEIGHT_TYPES_LEGACY                                                                          \
    (KVRT_WEIGHT_BIT(KVRT_DTYPE_Q4_1) | KVRT_WEIGHT_BIT(KVRT_DTYPE_Q5_0) | KVRT_WEIGHT_BIT(KVRT_DTYPE_Q5_1) | \
     KVRT_WEIGHT_BIT(KVRT_DTYPE_IQ4_NL))
#define KVRT_WEIGHT_TYPES_K                                                                              \
    (KVRT_WEIGHT_BIT(KVRT_DTYPE_Q2_K) | KVRT_WEIGHT_BIT(KVRT_DTYPE_Q3_K) | KVRT_WEIGHT_BIT(KVRT_DTYPE_Q4_K) | \
     KVRT_WEIGHT_BIT(KVRT_DTYPE_Q5_K) | KVRT_WEIGHT_BIT(KVRT_DTYPE_Q6_K) | KVRT_WEIGHT_BIT(KVRT_DTYPE_IQ4_XS))
#define KVRT_WEIGHT_TYPES_ALL (KVRT_WEIGHT_TYPES_BASE | KVRT_WEIGHT_TYPES_LEGACY | KVRT_WEIGHT_TYPES_K)

struct kvrt_backend_ops {
    uint32_t interface_version; /* KVRT_BACKEND_INTERFACE_VERSION, checked at registration */
    const char *name;
    bool runs_at_once;          /* ops execute inside their call (no recording): timed by the front door */
    /* The weight types its matmul and embed take (KVRT_WEIGHT_BIT set); 0 =
     * KVRT_WEIGHT_TYPES_BASE. The front door refuses the others, and a model
     * whose tensors need one is refused at load, naming type and tensor. */
    uint64_t weight_types;

    kvrt_be_destroy_fn *destroy;

    /* ---- memory ---- */
    kvrt_be_buffer_create_fn *buffer_create;
    kvrt_be_buffer_destroy_fn *buffer_destroy;
    /* Optional: wrap caller memory without copying (CPU); the memory must outlive the buffer. */
    kvrt_be_buffer_wrap_host_fn *buffer_wrap_host;
    /* Between steps these run at once. Inside an open step (begin ...
     * submit) they take their place in the step's order: an upload is seen
     * by the ops recorded after it, not by those before it; a download reads
     * what the ops before it wrote, and its bytes are in dst when submit()
     * returns (dst must stay valid until then; GPU backends record both). */
    kvrt_be_buffer_upload_fn *buffer_upload;
    kvrt_be_buffer_download_fn *buffer_download;
    kvrt_be_buffer_copy_fn *buffer_copy;

    /* ---- KV pools (kv_layout.h) ---- */
    kvrt_be_kv_pool_create_fn *kv_pool_create; /* zero-filled */
    kvrt_be_kv_pool_destroy_fn *kv_pool_destroy;
    /* Raw bytes of one block of one pool, kvrt_kv_block_bytes() long. Immediate (not recorded). */
    kvrt_be_kv_block_read_fn *kv_block_read;
    kvrt_be_kv_block_write_fn *kv_block_write;
    /* Copies whole blocks (every layer, K and V): pairs[i] = {src, dst}, in order. Recorded. */
    kvrt_be_kv_copy_blocks_fn *kv_copy_blocks;

    /* ---- step recording ---- */
    kvrt_be_step_fn *begin;
    kvrt_be_step_fn *submit; /* runs what was recorded and waits; closes the step even when it fails */
    /* Closes an open step without running what is left of it (GPU backends
     * drop the recording; work already handed to a device finishes before it
     * returns, so no caller memory is written afterwards); nothing when no
     * step is open. Mandatory. */
    kvrt_be_abort_fn *abort;
    /* Memory (heap, budget, in use) and per-call limits. Mandatory. */
    kvrt_be_limits_fn *limits;

    /* ---- attention ---- */
    /* Writes k[t], v[t] ([n_kv_heads][head_dim] each, F32) to slot_mapping[t] of `layer`.
     * Slots < 0 are skipped (padding). */
    kvrt_be_kv_write_fn *kv_write;
    /* One query token per sequence: q, out [num_seqs][n_heads][head_dim] (with strides);
     * the query sits at position seq_lens[s] - 1. */
    kvrt_be_attn_decode_fn *attn_decode;
    /* A chunk of queries per sequence: tokens [query_start_loc[s], query_start_loc[s+1]) are the
     * last tokens of sequence s, at positions seq_lens[s] - n_new .. seq_lens[s] - 1; their K/V are
     * already in the pool. Causal over cached prefix + chunk. */
    kvrt_be_attn_prefill_fn *attn_prefill;

    /* ---- model ops (F32 activations) ---- */
    /* y[t][o] = sum_i W[o][i] * x[t][i]; W row-major [n_out][n_in] in wtype (GGUF block layouts). */
    kvrt_be_matmul_fn *matmul;
    /* y[t] = x[t] / rms(x[t]) * w; may run in place. */
    kvrt_be_rmsnorm_fn *rmsnorm;
    /* Rotates x in place. positions: int32 [n_tokens]; cos_sin: F32 [max_pos][rot_dim/2][2]. */
    kvrt_be_rope_fn *rope;
    /* out[t][i] = silu(gate[t][i]) * up[t][i]. */
    kvrt_be_swiglu_fn *swiglu;
    /* out[i] = a[i] + b[i], i < n (contiguous); out may alias a or b. */
    kvrt_be_add_fn *add;
    /* y[t][i] = x[t][i] + b[i], i < dim (one bias row for every token: Q/K/V biases); y may be x. */
    kvrt_be_add_bias_fn *add_bias;
    /* out[t] = table[ids[t]] as F32; table [n_rows][dim] in wtype. */
    kvrt_be_embed_fn *embed;
    /* dst[i] = src[idx[i]] (rows of dim F32). */
    kvrt_be_gather_rows_fn *gather_rows;

    /* Optional: writes on-disk caches (compiled pipelines) now; NULL = none to save. */
    kvrt_be_step_fn *save_caches;

    /* ---- profiling (optional) ---- */
    /* Prepares (on) or stops per-op timing of a recording backend; called
     * between steps, before be->profiling changes. Ops then add their times
     * to be->profile (kvrt_profile_add, op names as in kvrt_profile_entry). */
    kvrt_be_set_profiling_fn *set_profiling;

    /* ---- context shift (optional; kv_shift.c) ---- */
    /* Rotates the keys of `layer` in blocks[n_blocks] (int32, distinct, in
     * range: checked by the caller on the host), every KV head and every
     * position of each block, by the pair angles of cos_sin (F32
     * [rot_dim/2][2], cos and sin of the angle to add), the way rope rotates
     * (neox: halves, else adjacent pairs). Keys are stored after RoPE, so a
     * block that moves by -d positions is turned by -d * theta_i. Quantized
     * KV is dequantized, rotated in F32 and quantized again by the layout
     * module's rule. Recorded. */
    kvrt_be_kv_rope_shift_fn *kv_rope_shift;
};

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

/* Registers a backend made by a factory (or a test): checks its interface
 * version and mandatory entries, then wraps it in a context that owns it.
 * On failure the backend is destroyed and *out is NULL. */
kvrt_status kvrt_context_adopt(kvrt_backend *be, const kvrt_context_params *params, kvrt_context **out,
                               kvrt_error *err);

#endif /* KVRT_BACKEND_H */
