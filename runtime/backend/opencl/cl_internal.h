/* The OpenCL backend's internals, shared by its files (device, memory,
 * programs, ops). The ICD loader is opened at run time: every OpenCL entry
 * point goes through the per-backend table `fn`, never through the linker. */
#ifndef KVRT_CL_INTERNAL_H
#define KVRT_CL_INTERNAL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#include <CL/cl.h>

#include "backend/backend.h"
#include "backend/opencl/kernels/kvrt_cl_common.h"
#include "kvrt_opencl.h"

/* Every entry point kvrt uses, resolved with dlsym. */
#define KVRT_CL_FUNCS(X)                                                                          \
    X(clGetPlatformIDs) X(clGetPlatformInfo) X(clGetDeviceIDs) X(clGetDeviceInfo)                 \
    X(clCreateContext) X(clReleaseContext) X(clCreateCommandQueue) X(clReleaseCommandQueue)       \
    X(clCreateBuffer) X(clReleaseMemObject) X(clEnqueueWriteBuffer) X(clEnqueueReadBuffer)        \
    X(clEnqueueCopyBuffer) X(clEnqueueFillBuffer) X(clCreateProgramWithSource) X(clBuildProgram)  \
    X(clGetProgramBuildInfo) X(clReleaseProgram) X(clCreateKernel) X(clReleaseKernel)             \
    X(clSetKernelArg) X(clEnqueueNDRangeKernel) X(clGetKernelWorkGroupInfo) X(clFlush) X(clFinish)

typedef struct kvrt_cl_fns {
    void *lib; /* dlopen handle */
#define KVRT_CL_FN_FIELD(name) __typeof__(name) *name;
    KVRT_CL_FUNCS(KVRT_CL_FN_FIELD)
#undef KVRT_CL_FN_FIELD
} kvrt_cl_fns;

/* Opens libOpenCL.so.1 and resolves the table (KVRT_ERR_BACKEND_UNAVAILABLE otherwise). */
kvrt_status kvrt_cl_load(kvrt_cl_fns *fn, kvrt_error *err);
/* The same from another library name (tests: a missing loader, a library without the entry points). */
kvrt_status kvrt_cl_load_named(kvrt_cl_fns *fn, const char *lib, kvrt_error *err);
void kvrt_cl_unload(kvrt_cl_fns *fn);
/* "CL_OUT_OF_RESOURCES" etc. */
const char *kvrt_cl_error_name(cl_int code);

/* ---- programs (cl_program.c) ---- */

/* Programs are built on first use. A variant is a set of -D options: the KV
 * types of the K and the V pool (KVRT_CL_KV_*), K * KVRT_CL_KV_TYPES + V. */
typedef enum kvrt_cl_program_id {
    KVRT_CL_PROG_KV = 0,   /* kv.cl: kv_write, kv_rope_shift */
    KVRT_CL_PROG_ATTN = 1, /* attention.cl: decode, merge, prefill */
    KVRT_CL_PROG_OPS = 2,  /* ops.cl: model ops (one variant) */
    KVRT_CL_PROG_COUNT
} kvrt_cl_program_id;

enum { KVRT_CL_VARIANT_F32 = 0, KVRT_CL_VARIANT_COUNT = KVRT_CL_KV_TYPES * KVRT_CL_KV_TYPES };
#define KVRT_CL_KV_VARIANT(k_type, v_type) ((k_type) * KVRT_CL_KV_TYPES + (v_type))

#define KVRT_CL_MAX_KERNELS 20 /* per program */

typedef struct kvrt_cl_program {
    cl_program prog;
    cl_kernel kernels[KVRT_CL_MAX_KERNELS];
} kvrt_cl_program;

/* ---- memory (cl_memory.c) ---- */

/* A logical buffer: consecutive segments of seg_bytes (the last may be shorter).
 * A weight read row by row gets row-aligned segments on first use
 * (kvrt_cl_align_rows), so one row never straddles two cl_mem. */
struct kvrt_buffer {
    kvrt_buffer_head head; /* host: NULL (device memory) */
    size_t seg_bytes;
    int32_t n_segs;
    cl_mem *segs;       /* [n_segs] */
};

static inline size_t kvrt_cl_seg_len(const kvrt_buffer *b, int32_t i)
{
    size_t start = (size_t)i * b->seg_bytes;
    return b->head.size - start < b->seg_bytes ? b->head.size - start : b->seg_bytes;
}

/* One layer's K or V pool: whole blocks per segment. */
typedef struct kvrt_cl_pool_part {
    int32_t n_segs;
    cl_mem segs[KVRT_CL_MAX_KV_SEGS];
} kvrt_cl_pool_part;

struct kvrt_kv_pool {
    kvrt_kv_pool_desc desc;
    size_t block_bytes[2]; /* one block of the K [0] and the V [1] pool: their types may differ */
    int64_t blocks_per_seg; /* the same for both, so a block id picks one segment index in each */
    int k_type, v_type;   /* KVRT_CL_KV_* of the K and the V pool */
    kvrt_cl_pool_part *k; /* [n_layers] */
    kvrt_cl_pool_part *v; /* [n_layers] */
    size_t bytes;         /* charged to the budget */
};

typedef struct kvrt_cl_backend {
    kvrt_backend base;
    kvrt_cl_fns fn;
    cl_platform_id platform;
    cl_device_id device;
    cl_context ctx;
    cl_command_queue queue;

    /* limits */
    uint64_t max_alloc;      /* CL_DEVICE_MAX_MEM_ALLOC_SIZE */
    uint64_t global_mem;
    uint64_t local_mem;
    size_t max_wg;
    bool has_fp16;           /* cl_khr_fp16 and not masked */
    uint32_t disabled_features;

    /* memory accounting */
    uint64_t budget;         /* bytes kvrt may allocate */
    uint64_t used;
    size_t seg_bytes;        /* segment size of new allocations (<= max_alloc) */
    uint64_t fail_alloc_at;  /* test hook: the Nth device allocation from now fails (0 = never) */

    /* recording */
    bool recording;

    /* programs, built lazily */
    kvrt_cl_program programs[KVRT_CL_PROG_COUNT][KVRT_CL_VARIANT_COUNT];
    const char *source_override[KVRT_CL_PROG_COUNT]; /* test hook */

    /* decode split-K scratch */
    kvrt_buffer *scratch;
    int32_t attn_head_dim_max[2]; /* decode, prefill; 0 until kvrt_cl_limits works them out */
} kvrt_cl_backend;

static inline kvrt_cl_backend *kvrt_cl(kvrt_backend *be)
{
    return (kvrt_cl_backend *)be;
}

/* Sets be->err from an OpenCL error code: out-of-memory codes become
 * KVRT_ERR_OUT_OF_DEVICE_MEMORY, others `fallback`. */
kvrt_status kvrt_cl_fail(kvrt_cl_backend *cl, cl_int code, kvrt_status fallback, const char *what);

/* The limits entry (cl_attention.c). */
kvrt_be_limits_fn kvrt_cl_limits;

/* Called after an op was enqueued: outside begin/submit the op runs at once. */
kvrt_status kvrt_cl_after_enqueue(kvrt_cl_backend *cl, const char *what);

/* The memory and pool entries (cl_memory.c). */
kvrt_be_buffer_create_fn kvrt_cl_buffer_create;
kvrt_be_buffer_destroy_fn kvrt_cl_buffer_destroy;
kvrt_be_buffer_upload_fn kvrt_cl_buffer_upload;
kvrt_be_buffer_download_fn kvrt_cl_buffer_download;
kvrt_be_buffer_copy_fn kvrt_cl_buffer_copy;
kvrt_be_kv_pool_create_fn kvrt_cl_kv_pool_create;
kvrt_be_kv_pool_destroy_fn kvrt_cl_kv_pool_destroy;
kvrt_be_kv_block_read_fn kvrt_cl_kv_block_read;
kvrt_be_kv_block_write_fn kvrt_cl_kv_block_write;
kvrt_be_kv_copy_blocks_fn kvrt_cl_kv_copy_blocks;

/* Resolves a view of `bytes` bytes to one segment and an offset in elements of
 * `elem` bytes. A view crossing a segment boundary is KVRT_ERR_UNSUPPORTED. */
kvrt_status kvrt_cl_resolve(kvrt_cl_backend *cl, kvrt_view v, size_t bytes, size_t elem, const char *what,
                            cl_mem *mem, int64_t *elem_off);
/* Makes n rows (`pitch` bytes apart, each `need` <= pitch bytes, the first at
 * byte `first`) lie inside single segments: a buffer whose segments cut a row
 * is re-segmented once (device copies) with segments a multiple of `pitch`. */
kvrt_status kvrt_cl_align_rows(kvrt_cl_backend *cl, kvrt_buffer *b, size_t first, int64_t n, size_t pitch,
                               size_t need, const char *what);
/* Grows the backend's scratch buffer to at least `bytes`. */
kvrt_status kvrt_cl_scratch(kvrt_cl_backend *cl, size_t bytes, kvrt_buffer **out);

/* ---- programs ---- */

/* The kernel `index` of a program (built on first use). */
kvrt_status kvrt_cl_kernel(kvrt_cl_backend *cl, kvrt_cl_program_id prog, int variant, int index, cl_kernel *out);
void kvrt_cl_programs_release(kvrt_cl_backend *cl);

/* Sets kernel arguments from (size, pointer) pairs; NULL pointer = local memory of that size. */
typedef struct kvrt_cl_arg {
    size_t size;
    const void *ptr;
} kvrt_cl_arg;
kvrt_status kvrt_cl_set_args(kvrt_cl_backend *cl, cl_kernel k, const kvrt_cl_arg *args, int n, const char *what);
kvrt_status kvrt_cl_enqueue(kvrt_cl_backend *cl, cl_kernel k, int dims, const size_t *global, const size_t *local,
                            const char *what);

/* ---- kernel entries: attention family (cl_attention.c), model ops (cl_ops.c) ---- */
KVRT_BACKEND_KERNELS(KVRT_BACKEND_DECLARE, kvrt_cl_)
kvrt_be_kv_rope_shift_fn kvrt_cl_kv_rope_shift; /* cl_kv_shift.c */

/* ---- test hooks (internal; tests reach them through this header) ---- */

/* Segment size of allocations made from now on (rounded down to 256 bytes, at most max_alloc). */
void kvrt_cl_test_set_segment_bytes(kvrt_backend *be, size_t bytes);
/* Replaces a program's source (NULL restores it); the program is rebuilt on next use. */
void kvrt_cl_test_override_source(kvrt_backend *be, kvrt_cl_program_id prog, const char *src);
/* Makes the nth device allocation from now fail as out of memory (0 = never). */
void kvrt_cl_test_fail_alloc(kvrt_backend *be, uint64_t nth);

#endif /* KVRT_CL_INTERNAL_H */
