/*
 * kvrt — portable LLM inference runtime with a paged KV cache.
 *
 * The public C API. Conventions (all headers of kvrt follow them):
 *  - Every fallible function returns a kvrt_status; KVRT_OK is 0.
 *  - Objects are opaque. kvrt_x_create(params, ..., &out, err) sets *out = NULL
 *    on failure and writes a message into the optional caller-owned `err`
 *    (may be NULL). kvrt_x_destroy(NULL) is a no-op.
 *  - After creation, each object keeps the message of its last failed call,
 *    readable with kvrt_x_message(obj). There is no process-global error.
 *  - An object may be used by one thread at a time; distinct objects may be
 *    used from distinct threads. The library has no mutable global state and
 *    reads no environment variables: every setting is a field of a params struct.
 *  - Sizes are size_t / int64_t; counts that index arrays are int32_t.
 */
#ifndef KVRT_H
#define KVRT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KVRT_BUILDING_LIBRARY) && defined(__GNUC__)
#define KVRT_API __attribute__((visibility("default")))
#else
#define KVRT_API
#endif

/* ---- version -------------------------------------------------------------- */

#define KVRT_VERSION_MAJOR 0
#define KVRT_VERSION_MINOR 1
#define KVRT_VERSION_PATCH 0
#define KVRT_VERSION_NUMBER \
    (KVRT_VERSION_MAJOR * 10000 + KVRT_VERSION_MINOR * 100 + KVRT_VERSION_PATCH)

/* "MAJOR.MINOR.PATCH" of the library linked at run time. */
KVRT_API const char *kvrt_version(void);
/* KVRT_VERSION_NUMBER of the library linked at run time. */
KVRT_API int kvrt_version_number(void);

/* ---- status codes, grouped by subsystem ----------------------------------- */

typedef enum kvrt_status {
    KVRT_OK = 0,

    /* general: 100..199 */
    KVRT_ERR_INVALID_ARGUMENT = 100,
    KVRT_ERR_UNSUPPORTED = 101,      /* valid request this build/backend cannot run */
    KVRT_ERR_OUT_OF_HOST_MEMORY = 102,
    KVRT_ERR_IO = 103,               /* a file could not be opened, read or written */
    KVRT_ERR_INTERNAL = 104,         /* a kvrt bug: please report it */

    /* KV cache and block manager: 200..299 */
    KVRT_ERR_OUT_OF_BLOCKS = 200,    /* the pool cannot serve the request; nothing changed */
    KVRT_ERR_CONTEXT_OVERFLOW = 201, /* sequence longer than its context / block table */
    KVRT_ERR_NO_SUCH_SEQUENCE = 202,

    /* models and tokenizers: 300..399 */
    KVRT_ERR_BAD_MODEL = 300,        /* malformed, truncated or inconsistent model file */
    KVRT_ERR_BAD_TOKENIZER = 301,
    KVRT_ERR_BAD_TOKEN = 302,        /* token id outside the vocabulary */

    /* backends and devices: 400..499 */
    KVRT_ERR_BACKEND_UNAVAILABLE = 400, /* no driver, no device, or not built in */
    KVRT_ERR_OUT_OF_DEVICE_MEMORY = 401,
    KVRT_ERR_KERNEL_BUILD = 402,        /* a driver rejected a shader or kernel */
    KVRT_ERR_DEVICE_LOST = 403,

    /* engine and requests: 500..599 */
    KVRT_ERR_REQUEST_REJECTED = 500,    /* can never run: longer than context or pool */
    KVRT_ERR_CANCELLED = 501
} kvrt_status;

/* A short, static, English description of a status ("out of blocks"). Never NULL. */
KVRT_API const char *kvrt_status_str(kvrt_status status);

/* Caller-owned error report, filled by create functions (which have no object
 * to hold a message yet) and by functions that take one explicitly. */
#define KVRT_ERROR_MESSAGE_MAX 512
typedef struct kvrt_error {
    kvrt_status status;
    char message[KVRT_ERROR_MESSAGE_MAX]; /* NUL-terminated, "" when status is KVRT_OK */
} kvrt_error;

/* ---- host allocator ------------------------------------------------------- */

/* Optional embedder-supplied host allocator (Lua style). NULL in a params
 * struct means the C library's malloc/free. `alloc` returns NULL on failure;
 * kvrt then reports KVRT_ERR_OUT_OF_HOST_MEMORY and leaves state unchanged.
 * Must be thread-safe if objects using it are used from several threads. */
typedef struct kvrt_allocator {
    void *(*alloc)(void *user, size_t size, size_t alignment);
    void (*free)(void *user, void *ptr);
    void *user;
} kvrt_allocator;

/* ---- element types -------------------------------------------------------- */

/* Values match the GGUF tensor type ids (ggml_type) where GGUF has them. */
typedef enum kvrt_dtype {
    KVRT_DTYPE_F32 = 0,
    KVRT_DTYPE_F16 = 1,
    KVRT_DTYPE_Q4_0 = 2,
    KVRT_DTYPE_Q4_1 = 3,
    KVRT_DTYPE_Q5_0 = 6,
    KVRT_DTYPE_Q5_1 = 7,
    KVRT_DTYPE_Q8_0 = 8,
    KVRT_DTYPE_Q2_K = 10,
    KVRT_DTYPE_Q3_K = 11,
    KVRT_DTYPE_Q4_K = 12,
    KVRT_DTYPE_Q5_K = 13,
    KVRT_DTYPE_Q6_K = 14,
    KVRT_DTYPE_IQ4_NL = 20,
    KVRT_DTYPE_IQ4_XS = 23,
    KVRT_DTYPE_BF16 = 30,
    /* KV storage types only (GGUF has no id for them; never a tensor type):
     * 8-bit floats, saturating (docs/architecture.md "FP8 KV") */
    KVRT_DTYPE_FP8_E4M3 = 64, /* "fp8": 4 exponent bits (bias 7), 3 mantissa bits, max 448 */
    KVRT_DTYPE_FP8_E5M2 = 65  /* "fp8_e5m2": 5 exponent bits (bias 15), 2 mantissa bits, max 57344 */
} kvrt_dtype;

/* The GGUF names: "f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0",
 * "q2_K" .. "q6_K", "iq4_nl", "iq4_xs", "bf16"; the KV types "fp8" and
 * "fp8_e5m2"; "?" for unknown values. */
KVRT_API const char *kvrt_dtype_name(kvrt_dtype dtype);

/* ---- compute context (one backend, one device) ----------------------------- */

typedef enum kvrt_backend_kind {
    KVRT_BACKEND_CPU = 0,
    KVRT_BACKEND_VULKAN = 1,
    KVRT_BACKEND_OPENCL = 2,
    /* Chosen when the context is created (kvrt_backend_choose_auto): the first
     * hardware Vulkan device, else the first hardware OpenCL device, else the
     * CPU. Software drivers (lavapipe/llvmpipe, SwiftShader, PoCL's CPU
     * device) are never chosen: name their backend to use them. */
    KVRT_BACKEND_AUTO = 3
} kvrt_backend_kind;

/* "cpu", "vulkan", "opencl", "auto". */
KVRT_API const char *kvrt_backend_name(kvrt_backend_kind kind);
/* Parses a backend name; KVRT_ERR_INVALID_ARGUMENT when unknown. */
KVRT_API kvrt_status kvrt_backend_parse(const char *name, kvrt_backend_kind *out);

/* What KVRT_BACKEND_AUTO resolves to on this machine. */
typedef struct kvrt_backend_choice {
    kvrt_backend_kind backend; /* CPU, VULKAN or OPENCL, never AUTO */
    int32_t device_index;      /* the kvrt_context_params.device_index that selects it; -1 for the CPU */
    char device[128];          /* the chosen device's name; "" for the CPU */
    char reason[512];          /* one line: why, and which software devices were passed over */
} kvrt_backend_choice;

/* Lists the Vulkan devices, then (when no hardware Vulkan device is found)
 * the OpenCL devices, and applies the KVRT_BACKEND_AUTO rule. A backend that
 * is not built in, has no loader or no device counts as having no hardware
 * device; the CPU is always available, so the only error is
 * KVRT_ERR_INVALID_ARGUMENT (out NULL). Takes as long as opening the drivers
 * (tenths of a second); kvrt_context_create with KVRT_BACKEND_AUTO calls it.
 * `err` may be NULL. Thread-safe. */
KVRT_API kvrt_status kvrt_backend_choose_auto(kvrt_backend_choice *out, kvrt_error *err);

/* Device features a context may be told not to use, so portable paths can be
 * exercised on devices that have everything (DESIGN.md). */
enum {
    KVRT_FEATURE_BUFFER_DEVICE_ADDRESS = 1u << 0,
    KVRT_FEATURE_FP16 = 1u << 1,
    KVRT_FEATURE_INT8 = 1u << 2,
    KVRT_FEATURE_SUBGROUPS = 1u << 3,
    /* CPU: OpenBLAS for F32/F16/BF16 products of many tokens (kvrt's own GEMM instead) */
    KVRT_FEATURE_BLAS = 1u << 4
};

typedef struct kvrt_context_params {
    kvrt_backend_kind backend;
    int32_t n_threads;        /* CPU worker threads; 0 = the cores the process may run on (its
                               * affinity mask, one per core, not per hyper-thread). A job never
                               * runs on more threads than that at once: above it, threads sleep */
    int32_t device_index;     /* GPU backends: -1 = pick (discrete preferred); must be -1 with AUTO */
    const char *device_name;  /* GPU backends: substring match, overrides index; may be NULL; NULL with AUTO */
    uint64_t memory_budget;   /* bytes of device memory kvrt may use; 0 = the default: the device's
                                 heap minus what is in use (kvrt_context_get_limits) */
    uint32_t disabled_features; /* KVRT_FEATURE_* bits the backend must not use */
    const kvrt_allocator *allocator; /* host allocations; NULL = malloc. Must outlive the context. */
    /* GPU backends: file kvrt loads compiled pipelines from and saves them to
     * (Vulkan: the driver's VkPipelineCache data plus a kvrt checksum); NULL =
     * none. A missing, unreadable, corrupt or other-device file is ignored.
     * Saving replaces only a missing file or a kvrt cache: any other file at
     * the path (a model named by mistake) is left as it is and not saved over. */
    const char *pipeline_cache_path;
    /* CPU, opt-in (default 0): decode (one-token) products of q4_K and q6_K weights
     * round the activation vector to int8 once per product (per 256 values, an F32
     * scale, as llama.cpp's Q8_K) and use integer dot products (AVX-512 VNNI; a CPU
     * without it keeps the F32 kernels). Faster decode, but outside DESIGN.md's F32
     * contract: logits move by the rounding of the activations (README "int8
     * activations" gives the measured bound). Other types, prefill and the GPU
     * backends are unaffected. */
    int32_t int8_activations; /* 0 or 1 */
} kvrt_context_params;

/* Defaults: CPU backend, all cores, automatic device, the default budget, all features,
 * no pipeline cache file. */
KVRT_API kvrt_context_params kvrt_context_default_params(void);

typedef struct kvrt_context kvrt_context;

/* Creates a compute context. KVRT_ERR_BACKEND_UNAVAILABLE (with a message
 * naming what is missing) when the backend is not built in or has no driver
 * or device. With KVRT_BACKEND_AUTO the backend and device are those of
 * kvrt_backend_choose_auto (kvrt_context_backend tells which);
 * KVRT_ERR_INVALID_ARGUMENT when a device index or name is given with it.
 * `err` may be NULL. */
KVRT_API kvrt_status kvrt_context_create(const kvrt_context_params *params,
                                         kvrt_context **out, kvrt_error *err);
/* Destroys a context. Every object created from it must be destroyed first. NULL is a no-op. */
KVRT_API void kvrt_context_destroy(kvrt_context *ctx);
/* Message of the last failed call on this context ("" if none). */
KVRT_API const char *kvrt_context_message(const kvrt_context *ctx);
/* A one-line description of the device and backend ("cpu: 2 threads, OpenBLAS Haswell"). */
KVRT_API const char *kvrt_context_description(const kvrt_context *ctx);
/* The backend a context runs on (never KVRT_BACKEND_AUTO); KVRT_BACKEND_CPU for NULL. */
KVRT_API kvrt_backend_kind kvrt_context_backend(const kvrt_context *ctx);
/* Writes the context's compiled-pipeline cache to params.pipeline_cache_path
 * now (atomically: a temporary file renamed over it), if pipelines were
 * created since it was loaded or last saved. kvrt_context_destroy also saves,
 * silently. KVRT_OK without doing anything on contexts without a cache file
 * (no path, CPU backend, OpenCL). KVRT_ERR_IO when the file cannot be written
 * or the path holds something that is not a kvrt cache (never replaced); the
 * cache stays in memory and a later call may retry. */
KVRT_API kvrt_status kvrt_context_save_caches(kvrt_context *ctx);

/* ---- limits ------------------------------------------------------------------ */

/* What a context can take, so a caller can size its requests instead of
 * learning them from refusals; every refusal of a limit below names it
 * ("... exceeds the memory budget ...", "... the largest attention scratch
 * per call ..."). Values are for this context's backend and device. */
typedef struct kvrt_context_limits {
    /* Device memory. kvrt refuses, up front and with these numbers, any KV
     * cache or buffer that would take memory_in_use past memory_budget
     * (KVRT_ERR_OUT_OF_DEVICE_MEMORY; the CPU: OUT_OF_HOST_MEMORY). */
    uint64_t memory_heap;    /* what the device reports (Vulkan: its largest device-local heap;
                                OpenCL: CL_DEVICE_GLOBAL_MEM_SIZE; the CPU: physical memory) */
    uint64_t memory_budget;  /* kvrt_context_params.memory_budget, or by default the heap minus what
                                was in use when the context was created (Vulkan: the driver's
                                VK_EXT_memory_budget figure where it has one; the CPU: the memory
                                the kernel reports available) */
    uint64_t memory_in_use;  /* what kvrt holds now: KV caches, weights, activations, scratch */
    uint64_t max_buffer_bytes; /* the largest buffer one allocation may hold (bigger ones are split
                                  into segments): q and out of one attention call must each fit
                                  one (kvrt_kv_cache_write splits K/V into pieces that do) */
    /* Attention (include/kvrt_attention.h). A call outside them is refused
     * with KVRT_ERR_UNSUPPORTED and a message naming the limit. */
    int32_t decode_head_dim_max;  /* head_dim of paged decode attention: 1 .. this */
    int32_t prefill_head_dim_max; /* head_dim of prefill attention: 1 .. this */
    int64_t max_table_entries;    /* widest block table one call takes: num_seqs * max_blocks_per_seq */
    int64_t max_seq_len;          /* longest sequence (keys) one call takes at any head_dim above */
    /* The largest prefill per call: split-K partial results of one call, in
     * bytes, at most max_scratch_bytes. GPU backends need about
     * num_tokens * n_heads * ceil(longest seq_len / 256) * (head_dim + 2) * 4
     * for a prefill and num_seqs * n_heads * ceil(longest seq_len / 512) *
     * (head_dim + 2) * 4 for a decode; the CPU works in fixed tiles per
     * thread. Sizes follow seq_lens, never the width of the block table. */
    uint64_t max_scratch_bytes;
    uint64_t scratch_bytes;       /* attention scratch held now (GPU: kept between calls, grown on need;
                                     the CPU: what the last call took) */
} kvrt_context_limits;

/* Fills *out. Errors: INVALID_ARGUMENT (ctx or out NULL). */
KVRT_API kvrt_status kvrt_context_get_limits(kvrt_context *ctx, kvrt_context_limits *out);

/* ---- per-op profiling ------------------------------------------------------ */

/* Time spent in one kind of op ("matmul", "attn_decode", "rmsnorm", "rope",
 * "swiglu", "add", "embed", "gather_rows", "argmax", "kv_write",
 * "attn_prefill", "copy", and on Vulkan "upload" and "download": transfers
 * recorded into a step, such as a forward's batch arrays and logits), summed
 * over the calls since the last reset. Names are the same on every backend; `op` is a static
 * string. GPU backends time
 * the device's work (Vulkan: timestamp queries around each recorded op, read
 * after the step ends), the CPU backend the host's wall clock. */
typedef struct kvrt_profile_entry {
    const char *op;
    uint64_t calls;
    uint64_t total_ns;
} kvrt_profile_entry;

/* Turns per-op timing on (on != 0) or off; off costs nothing. Not while a
 * step is being recorded. KVRT_ERR_UNSUPPORTED with a message when the
 * backend or device cannot time ops (OpenCL; a Vulkan queue without
 * timestamps). Turning it off keeps what was accumulated. */
KVRT_API kvrt_status kvrt_context_set_profiling(kvrt_context *ctx, int on);
/* Copies up to `cap` entries, largest total first, into `out` (may be NULL
 * when cap is 0) and returns how many there are (possibly more than cap),
 * or -1 with a message when ctx is NULL, cap < 0 or out is NULL with cap > 0. */
KVRT_API int32_t kvrt_context_profile(kvrt_context *ctx, kvrt_profile_entry *out, int32_t cap);
/* Forgets every accumulated entry. NULL is a no-op. */
KVRT_API void kvrt_context_profile_reset(kvrt_context *ctx);

#ifdef __cplusplus
}
#endif

#include "kvrt_kv.h"        /* KV block manager: pool, block tables, prefix cache, CoW, swap */
#include "kvrt_attention.h" /* standalone paged KV cache + attention, usable without a model */
#include "kvrt_model.h"     /* models, tokenization, sessions, sampling */
#include "kvrt_engine.h"    /* serving engine: continuous batching, preemption, metrics */

#endif /* KVRT_H */
