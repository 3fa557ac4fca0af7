/* The Vulkan backend's internals, shared by its parts (one file per job:
 * device, memory, pipelines, dispatch, KV, attention). Not installed. */
#ifndef KVRT_VK_INTERNAL_H
#define KVRT_VK_INTERNAL_H

#include "backend/backend.h"
#include "backend/vulkan/vk_backend.h"
#include "kvrt_push.h"

#include "kvrt_volk_names.h" /* kvrt_-prefixed names for volk's globals */
#include <volk.h>

/* ---- device ---- */

typedef struct kvrt_vk_caps {
    uint32_t api_version;
    uint64_t max_storage_range;     /* maxStorageBufferRange */
    uint64_t max_alloc;             /* maxMemoryAllocationSize */
    uint64_t storage_align;         /* minStorageBufferOffsetAlignment */
    uint32_t shared_bytes;          /* maxComputeSharedMemorySize */
    uint32_t max_wg_count[3];
    uint32_t subgroup_size;
    uint32_t subgroup_ops;          /* VkSubgroupFeatureFlags in compute */
    uint32_t features;              /* KVRT_FEATURE_* present and not disabled */
    bool fp16_arith;
    bool storage16;
    bool storage8;
    bool int8_arith;
    bool bda;
} kvrt_vk_caps;

/* ---- memory ---- */

typedef struct kvrt_vk_segment {
    VkBuffer buf;
    VkDeviceMemory mem;
    VkDeviceSize size;  /* bytes kvrt addresses */
    VkDeviceSize alloc; /* bytes counted against the budget */
    VkDeviceAddress addr; /* buffer device address (0 without the feature) */
    void *map; /* host-visible buffers: persistently mapped */
} kvrt_vk_segment;

/* A logical buffer: segments of seg_bytes (the last may be shorter), each its
 * own VkBuffer + allocation, none larger than one binding or one allocation. */
struct kvrt_buffer {
    kvrt_buffer_head head; /* host: the mapping of a one-segment host-visible buffer */
    size_t seg_bytes;
    uint32_t n_segs;
    unsigned flags;
    kvrt_vk_segment *segs; /* [n_segs] */
    kvrt_buffer *addr_table; /* uvec2 [n_segs + 1] segment addresses (BDA; made on first need) */
};

struct kvrt_kv_pool {
    kvrt_kv_pool_desc desc;
    size_t block_bytes[2];   /* one block of the K [0] and the V [1] pool: their types may differ */
    uint32_t blocks_per_seg; /* the same for both, so a block id picks one segment index in each */
    uint32_t k_type, v_type; /* KVRT_KV_T_* of the K and the V pool (the shaders' k_type, v_type) */
    kvrt_buffer **k; /* [n_layers] */
    kvrt_buffer **v; /* [n_layers] */
    bool bda;        /* shaders reach segments through address tables: */
    kvrt_buffer **k_addr; /* [n_layers] -> uvec2 segment base addresses */
    kvrt_buffer **v_addr;
};

/* ---- pipelines ---- */

typedef enum kvrt_vk_pipe_id {
    KVRT_VK_PIPE_KV_WRITE = 0,
    KVRT_VK_PIPE_ATTN_DECODE,
    KVRT_VK_PIPE_ATTN_MERGE,
    KVRT_VK_PIPE_ATTN_PREFILL,
    KVRT_VK_PIPE_ATTN_PREFILL_MERGE,
    KVRT_VK_PIPE_MATMUL,
    KVRT_VK_PIPE_RMSNORM,
    KVRT_VK_PIPE_ADD,
    KVRT_VK_PIPE_SWIGLU,
    KVRT_VK_PIPE_ROPE,
    KVRT_VK_PIPE_EMBED,
    KVRT_VK_PIPE_GATHER,
    KVRT_VK_PIPE_KV_WRITE_BDA, /* pool shaders built with -DKVRT_BDA */
    KVRT_VK_PIPE_ATTN_DECODE_BDA,
    KVRT_VK_PIPE_ATTN_PREFILL_BDA,
    KVRT_VK_PIPE_MATMUL_BDA, /* weights spanning segments, through addresses */
    KVRT_VK_PIPE_EMBED_BDA,
    KVRT_VK_PIPE_GATHER_BDA,
    KVRT_VK_PIPE_MATMUL_TILED, /* prefill: row x token tiles */
    KVRT_VK_PIPE_MATMUL_TILED_BDA,
    KVRT_VK_PIPE_ADD_BIAS,
    KVRT_VK_PIPE_ROPE_SHIFT, /* context shift (vk_kv_shift.c) */
    KVRT_VK_PIPE_ROPE_SHIFT_BDA,
    KVRT_VK_PIPE_COUNT
} kvrt_vk_pipe_id;

/* The on-disk pipeline cache (vk_pipeline_cache.c). */
typedef struct kvrt_vk_pcache {
    const char *path_arg; /* params->pipeline_cache_path, valid only during creation */
    char *path;           /* our copy; NULL = no file */
    VkPipelineCache cache;
    bool dirty;           /* pipelines created since the file was loaded or saved */
    size_t file_bytes;    /* driver data in the file as last loaded/saved (0 = none) */
    uint64_t file_hash;   /* its checksum: a save that would write the same bytes is skipped */
    kvrt_vk_pcache_stats stats;
} kvrt_vk_pcache;

/* Loop trips one shader invocation may take: lavapipe stops every loop of an
 * invocation after 65,535 in total, silently; the host keeps each kernel
 * under this, with room (each shader's header gives its bound). */
#define KVRT_VK_TRIPS 40000u
#define KVRT_VK_N_BINDINGS 7 /* 0 K pool[8], 1 V pool[8], 2..6 plain */

typedef struct kvrt_vk_profile kvrt_vk_profile; /* vk_profile.c */
typedef struct kvrt_vk_step_io kvrt_vk_step_io; /* vk_step_io.c */

typedef struct kvrt_vk_backend {
    kvrt_backend base;
    kvrt_vk_debug_params debug;

    bool borrowed; /* instance, device and queue are the embedder's: never destroyed */
    VkInstance instance;
    VkDebugUtilsMessengerEXT messenger;
    PFN_vkDestroyDebugUtilsMessengerEXT destroy_messenger; /* this instance's, not volk's global */
    VkPhysicalDevice phys;
    VkDevice device;
    struct VolkDeviceTable vk; /* device-level entry points of this device only */
    VkQueue queue;
    uint32_t queue_family;
    kvrt_vk_caps caps;
    char device_name[VK_MAX_PHYSICAL_DEVICE_NAME_SIZE];

    uint32_t mem_type_device;
    uint32_t mem_type_host;
    uint64_t heap;   /* the largest device-local heap */
    uint64_t budget; /* the context's, or by default the heap minus what was in use (never 0 after creation) */
    uint64_t used;   /* bytes of device memory kvrt allocated */
    int32_t attn_head_dim_max[2]; /* decode, prefill; 0 until kvrt_vk_limits works them out */
    int64_t attn_max_seq_len;     /* keys per sequence the merge passes take at every head_dim (same) */

    VkCommandPool cmd_pool;
    VkCommandBuffer cmd;  /* the step being recorded */
    VkCommandBuffer xfer; /* immediate transfers (upload, download, fills) */
    VkFence fence;
    bool recording;
    uint64_t n_submits; /* queue submissions so far (steps and immediate transfers) */
    bool recorded_any;

    VkDescriptorSetLayout set_layout;
    VkPipelineLayout pipe_layout;
    VkDescriptorPool *desc_pools;
    uint32_t n_desc_pools;
    VkPipeline pipes[KVRT_VK_PIPE_COUNT];
    uint32_t pipe_features[KVRT_VK_PIPE_COUNT]; /* KVRT_FEATURE_* the chosen variant needs */
    kvrt_vk_pcache pcache;

    kvrt_buffer *staging; /* host-visible, for upload/download */
    kvrt_buffer *dummy;   /* bound to unused bindings */
    kvrt_buffer *scratch; /* split-K partials; grows */
    kvrt_buffer *retired[4]; /* old scratch still used by the open step */

    kvrt_vk_step_io *step_io; /* transfers recorded into the open step; made on first use */
    kvrt_vk_profile *prof; /* timestamp queries; made when profiling is first turned on */

    uint32_t validation_count;
    char validation_first[512];
} kvrt_vk_backend;

static inline kvrt_vk_backend *kvrt_vk(kvrt_backend *be)
{
    return (kvrt_vk_backend *)be;
}

/* VkResult -> kvrt_status with a message naming what failed. */
kvrt_status kvrt_vk_result(kvrt_vk_backend *vk, VkResult r, const char *what);

/* ---- memory (vk_memory.c) ---- */
kvrt_status kvrt_vk_memory_init(kvrt_vk_backend *vk);
void kvrt_vk_memory_finish(kvrt_vk_backend *vk);
/* seg_bytes 0 = largest one binding allows (and the debug limit); pools pass
 * their own, at most kvrt_vk_max_pool_segment(). Device
 * buffers count against the memory budget; host-visible ones (staging,
 * readback: system memory on a discrete GPU) do not. */
kvrt_status kvrt_vk_buffer_create_seg(kvrt_vk_backend *vk, size_t size, size_t seg_bytes, unsigned flags,
                                      kvrt_buffer **out);
void kvrt_vk_buffer_free(kvrt_vk_backend *vk, kvrt_buffer *b);
/* Largest segment a buffer may use on this device (multiple of 256). */
size_t kvrt_vk_max_segment(const kvrt_vk_backend *vk);
/* Largest segment of a KV pool layer: one allocation with buffer device
 * addresses, one storage binding without. */
size_t kvrt_vk_max_pool_segment(const kvrt_vk_backend *vk);
/* Segment holding [offset, offset + bytes) of a view, and the word offset
 * inside it; fails when the range crosses a segment or is not 4-byte aligned. */
kvrt_status kvrt_vk_view_seg(kvrt_vk_backend *vk, kvrt_view v, size_t bytes, const char *what,
                             uint32_t *seg, uint32_t *word_off);
/* The largest attention scratch one call may take (kvrt_vk_scratch_reserve). */
size_t kvrt_vk_max_scratch(const kvrt_vk_backend *vk);
/* Grows vk->scratch to at least `bytes`. Only between submits. */
kvrt_status kvrt_vk_scratch_reserve(kvrt_vk_backend *vk, size_t bytes);
/* The buffer's segment address table (BDA), made and uploaded on first use. */
kvrt_status kvrt_vk_addr_table(kvrt_vk_backend *vk, kvrt_buffer *b, kvrt_buffer **out);
/* Immediate (like kv_block_read/write): they run at once, through their own
 * command buffer, not in the open step; data a recorded op writes is
 * readable after submit(). */
kvrt_status kvrt_vk_upload(kvrt_vk_backend *vk, kvrt_buffer *dst, size_t offset, const void *src, size_t size);
kvrt_status kvrt_vk_download(kvrt_vk_backend *vk, kvrt_buffer *src, size_t offset, void *dst, size_t size);
/* KVRT_ERR_INVALID_ARGUMENT unless [off, off + size) lies in b. */
kvrt_status kvrt_vk_check_range(kvrt_vk_backend *vk, const kvrt_buffer *b, size_t off, size_t size,
                                const char *what);
/* The buffer_upload / buffer_download entries while a step is open
 * (vk_step_io.c): recorded into the step; a download's bytes arrive when
 * submit() returns. kvrt_vk_step_io_end runs after the step (ran: it
 * completed, so pending downloads are copied out; else they are dropped). */
kvrt_status kvrt_vk_step_upload(kvrt_vk_backend *vk, kvrt_buffer *dst, size_t off, const void *src, size_t size);
kvrt_status kvrt_vk_step_download(kvrt_vk_backend *vk, kvrt_buffer *src, size_t off, void *dst, size_t size);
void kvrt_vk_step_io_end(kvrt_vk_backend *vk, bool ran);
void kvrt_vk_step_io_free(kvrt_vk_backend *vk);
/* The buffer_copy entry: recorded (its own step when none is open). */
kvrt_be_buffer_copy_fn kvrt_vk_buffer_copy;

/* ---- pipelines (vk_pipelines.c) ---- */
kvrt_status kvrt_vk_pipelines_init(kvrt_vk_backend *vk);
void kvrt_vk_pipelines_finish(kvrt_vk_backend *vk);
/* Creates the pipeline on first use and caches it. */
kvrt_status kvrt_vk_pipeline(kvrt_vk_backend *vk, kvrt_vk_pipe_id id, VkPipeline *out);
/* Floats of shared memory the prefill shader is built with. */
uint32_t kvrt_vk_prefill_smem_floats(const kvrt_vk_backend *vk);

/* ---- pipeline cache file (vk_pipeline_cache.c) ---- */
/* Loads the file (anything wrong with it: start empty) and creates the VkPipelineCache. */
kvrt_status kvrt_vk_pcache_init(kvrt_vk_backend *vk);
/* Saves (best effort) and destroys the cache. */
void kvrt_vk_pcache_finish(kvrt_vk_backend *vk);
/* The save_caches entry. */
kvrt_be_step_fn kvrt_vk_save_caches;

/* ---- recording (vk_dispatch.c) ---- */
kvrt_status kvrt_vk_dispatch_init(kvrt_vk_backend *vk);
void kvrt_vk_dispatch_finish(kvrt_vk_backend *vk);
kvrt_be_step_fn kvrt_vk_begin;
kvrt_be_step_fn kvrt_vk_submit;
kvrt_be_abort_fn kvrt_vk_abort;
/* The limits entry (vk_attention.c: the attention kernels' limits, cached in
 * attn_head_dim_max and attn_max_seq_len; vk_memory.c's budget). */
kvrt_be_limits_fn kvrt_vk_limits;
/* Starts recording when no step is open; *implicit tells kvrt_vk_end_implicit to submit. */
kvrt_status kvrt_vk_acquire(kvrt_vk_backend *vk, bool *implicit);
kvrt_status kvrt_vk_end_implicit(kvrt_vk_backend *vk, bool implicit, kvrt_status s);
/* Orders everything recorded so far before what comes next (compute and transfer). */
void kvrt_vk_barrier(kvrt_vk_backend *vk);
/* Immediate work on the transfer command buffer: begin, record, then run and wait. */
kvrt_status kvrt_vk_oneshot_begin(kvrt_vk_backend *vk, VkCommandBuffer *cb);
kvrt_status kvrt_vk_oneshot_run(kvrt_vk_backend *vk);

/* What one dispatch binds: pool segments (may be NULL) and plain buffers
 * (segment index chosen by kvrt_vk_view_seg; NULL = dummy). */
typedef struct kvrt_vk_bind {
    const kvrt_buffer *kpool;
    const kvrt_buffer *vpool;
    const kvrt_buffer *buf[5]; /* bindings 2..6 */
    uint32_t seg[5];
} kvrt_vk_bind;

kvrt_status kvrt_vk_dispatch(kvrt_vk_backend *vk, kvrt_vk_pipe_id id, const kvrt_vk_bind *bind,
                             const void *push, uint32_t push_size, uint32_t gx, uint32_t gy, uint32_t gz);

/* ---- per-op profiling (vk_profile.c); the hooks run only while be->profiling ---- */
kvrt_be_set_profiling_fn kvrt_vk_set_profiling;
void kvrt_vk_profile_finish(kvrt_vk_backend *vk);
void kvrt_vk_prof_step_begin(kvrt_vk_backend *vk);          /* after begin's first barrier */
void kvrt_vk_prof_call(kvrt_vk_backend *vk);                /* an op entry starts recording */
void kvrt_vk_prof_call_named(kvrt_vk_backend *vk, const char *op); /* a call without a pipeline */
void kvrt_vk_prof_op(kvrt_vk_backend *vk, kvrt_vk_pipe_id id); /* it dispatches this pipeline */
void kvrt_vk_prof_stamp(kvrt_vk_backend *vk);               /* after each op barrier */
void kvrt_vk_prof_discard(kvrt_vk_backend *vk);             /* the step was dropped */
kvrt_status kvrt_vk_prof_collect(kvrt_vk_backend *vk);      /* after the step's fence */

/* ---- KV pools (vk_kv.c) ---- */
kvrt_be_kv_pool_create_fn kvrt_vk_kv_pool_create;
kvrt_be_kv_pool_destroy_fn kvrt_vk_kv_pool_destroy;
kvrt_be_kv_block_read_fn kvrt_vk_kv_block_read;
kvrt_be_kv_block_write_fn kvrt_vk_kv_block_write;
kvrt_be_kv_copy_blocks_fn kvrt_vk_kv_copy_blocks;
kvrt_be_kv_rope_shift_fn kvrt_vk_kv_rope_shift; /* vk_kv_shift.c */
/* Binds a pool layer (segments or address tables) and picks the pipeline
 * variant that matches how the pool is addressed. */
kvrt_vk_pipe_id kvrt_vk_pool_bind(const kvrt_kv_pool *pool, int32_t layer, kvrt_vk_pipe_id id, kvrt_vk_bind *bind);

/* ---- kernel entries: kv_write (vk_kv.c), attention (vk_attention.c), model ops (vk_ops.c) ---- */
KVRT_BACKEND_KERNELS(KVRT_BACKEND_DECLARE, kvrt_vk_)

#endif /* KVRT_VK_INTERNAL_H */
