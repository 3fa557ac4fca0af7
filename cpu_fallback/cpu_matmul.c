/* y[t][o] = sum_i W[o][i] * x[t][i] on the CPU.
 *
 *  - One token (decode), any type: own GEMV kernels on slices of output rows
 *    that read the stored rows once (bandwidth-bound: the point is to stream
 *    W at memory speed).
 *  - F32 weights, several tokens: kvrt's own GEMM (cpu_gemm.c) on slices of
 *    output rows.
 *  - F32, F16 and BF16 weights with at least KVRT_BLAS_MIN_TOKENS tokens:
 *    OpenBLAS, where it measured faster (cpu_blas.c), called from this thread
 *    only; it threads inside itself. Never from pool tasks: Debian's serial
 *    OpenBLAS was not reentrant (measured: concurrent calls corrupted each
 *    other's results), so one caller is the rule whatever build is linked.
 *  - F16/BF16/Q8_0/Q4_0, several tokens: each task dequantizes a tile of W rows
 *    into per-thread F32 scratch (sized to stay in L2) and multiplies all
 *    tokens with it through the same GEMM, so W is read once per call, never
 *    expanded whole.
 *
 * The split into tasks depends on the shapes only, never on the thread count,
 * and each output element is computed by one task with a fixed summation
 * order (the GEMM's order does not even depend on the split): results are
 * bitwise identical for any number of threads. OpenBLAS's are deterministic
 * for a fixed thread count (cpu_blas.h). */
#include "cpu_ops_internal.h"

#include "cpu_blas.h"
#include "cpu_gemm.h"
#include "cpu_quant.h"

#include "common/quant.h"

#include <limits.h>

#define MM_GEMV_MAX_TASKS 64           /* enough to balance 2..16 threads */
#define MM_GEMV_MIN_TASK_BYTES 32768   /* below this the task overhead shows */
#define MM_GEMM_MAX_TASKS 16           /* each task packs all of x again: few, large tasks */
#define MM_GEMM_MIN_ROWS 64            /* W rows per GEMM task: 128 flops per packed x value */
#define MM_TILE_BYTES (512u * 1024u)   /* F32 tile of W per thread, inside L2 */
#define MM_TILE_MIN_ROWS 16
#define MM_TILE_MAX_ROWS 256

typedef struct mm_job {
    const char *w;      /* [n_out] rows of row_bytes */
    size_t row_bytes;
    int64_t n_out, n_in;
    const float *x;     /* [n_tokens][x_stride] */
    int64_t x_stride;
    float *y;           /* [n_tokens][y_stride] */
    int64_t y_stride;
    int32_t n_tokens;
    int64_t rows_per_task;
    kvrt_cpu_isa isa;
    kvrt_cpu_dot_fn dot;
    kvrt_cpu_qdot_fn qdot;   /* the types of cpu_quant.h (dot is NULL): with xsum16 */
    kvrt_cpu_xprep_fn xprep; /* qdot's order of x, or NULL */
    const float *xsum16;     /* [n_in / 16] group sums of x for qdot (xprep's sums with xprep) */
    const float *xq;         /* [n_in] x as qdot reads it (x itself without xprep) */
    kvrt_cpu_q8dot_fn q8dot; /* int8 activations (opt-in): used instead of qdot when set */
    const kvrt_cpu_q8k *x8;  /* [n_in / 256] x rounded to int8, for q8dot */
    kvrt_cpu_dequant_fn dequant;
    float *scratch;          /* [n_threads][scratch_floats]: W tile (tiled path), then GEMM packing */
    size_t scratch_floats;   /* per thread, a multiple of 16 (64-byte aligned slices) */
    size_t tile_floats;      /* [rows_per_task][n_in] for the tiled path, else 0 */
} mm_job;

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

static int64_t task_rows(const mm_job *j, int64_t task)
{
    return KVRT_MIN(j->rows_per_task, j->n_out - task * j->rows_per_task);
}

/* ---- F32 ------------------------------------------------------------------------------ */

static float *thread_scratch(const mm_job *j, int thread)
{
    return j->scratch + (size_t)thread * j->scratch_floats;
}

static void mm_f32_task(void *arg, int64_t task, int thread)
{
    const mm_job *j = arg;
    const int64_t o0 = task * j->rows_per_task, rows = task_rows(j, task);
    const float *w = (const float *)j->w + o0 * j->n_in;
    /* Y[t][o0 + r] = sum_i X[t][i] * W[o0 + r][i] */
    kvrt_cpu_gemm(j->isa, j->n_tokens, rows, j->n_in, j->x, j->x_stride, w, j->n_in, j->y + o0, j->y_stride,
                  thread_scratch(j, thread));
}

/* ---- quantized / half weights, one token ----------------------------------------- */

static void mm_gemv_task(void *arg, int64_t task, int thread)
{
    const mm_job *j = arg;
    const int64_t o0 = task * j->rows_per_task, rows = task_rows(j, task);
    const char *w = j->w + (size_t)o0 * j->row_bytes;
    if (j->q8dot) {
        for (int64_t r = 0; r < rows; r++, w += j->row_bytes)
            j->y[o0 + r] = j->q8dot(w, j->x8, j->n_in);
        return;
    }
    if (j->qdot) {
        for (int64_t r = 0; r < rows; r++, w += j->row_bytes)
            j->y[o0 + r] = j->qdot(w, j->xq, j->xsum16, j->n_in);
        return;
    }
    for (int64_t r = 0; r < rows; r++, w += j->row_bytes)
        j->y[o0 + r] = j->dot(w, j->x, j->n_in);
}

/* ---- quantized / half weights, several tokens ------------------------------------- */

static void mm_tiled_task(void *arg, int64_t task, int thread)
{
    const mm_job *j = arg;
    const int64_t o0 = task * j->rows_per_task, rows = task_rows(j, task);
    float *tile = thread_scratch(j, thread); /* [rows][n_in] */
    const char *w = j->w + (size_t)o0 * j->row_bytes;
    for (int64_t r = 0; r < rows; r++, w += j->row_bytes)
        j->dequant(w, tile + r * j->n_in, j->n_in);
    kvrt_cpu_gemm(j->isa, j->n_tokens, rows, j->n_in, j->x, j->x_stride, tile, j->n_in, j->y + o0, j->y_stride,
                  tile + j->tile_floats);
}

/* ---- dispatch ------------------------------------------------------------------------------ */

/* Allocates per-thread scratch: tile_floats of W tile (0 for F32), then the
 * GEMM's packing buffers; freed by the caller with kvrt_free. */
static kvrt_status mm_alloc_scratch(kvrt_backend *be, mm_job *j, size_t tile_floats)
{
    _Static_assert(KVRT_CPU_GEMM_SCRATCH_FLOATS % 16 == 0, "per-thread slices stay 64-byte aligned");
    const size_t n_threads = (size_t)kvrt_cpu(be)->n_threads;
    size_t tile, per_thread, floats, bytes;
    /* the tile rounded up to 16 floats: the GEMM wants its packing 32-byte aligned */
    if (!kvrt_add_size(tile_floats, 15, &tile) ||
        !kvrt_add_size(tile / 16 * 16, KVRT_CPU_GEMM_SCRATCH_FLOATS, &per_thread) ||
        !kvrt_mul_size(n_threads, per_thread, &floats) || !kvrt_mul_size(floats, sizeof(float), &bytes))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: scratch size overflows");
    j->tile_floats = tile / 16 * 16;
    j->scratch_floats = per_thread;
    j->scratch = kvrt_alloc(be->alloc, bytes, 64);
    if (!j->scratch)
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "matmul: cannot allocate %zu bytes of scratch",
                         bytes);
    return KVRT_OK;
}

/* n_tokens multiply-adds per W value: the pool is woken only when that is worth it. */
static int64_t mm_work(const mm_job *j)
{
    return j->n_out * j->n_in * j->n_tokens;
}

static kvrt_status mm_run_f32(kvrt_backend *be, mm_job *j)
{
    int64_t rows = KVRT_MAX(ceil_div(j->n_out, MM_GEMM_MAX_TASKS), MM_GEMM_MIN_ROWS);
    j->rows_per_task = ceil_div(rows, KVRT_CPU_GEMM_NR) * KVRT_CPU_GEMM_NR; /* whole register tiles */
    KVRT_TRY(mm_alloc_scratch(be, j, 0));
    kvrt_threadpool_run_sized(kvrt_cpu(be)->pool, ceil_div(j->n_out, j->rows_per_task), mm_work(j), mm_f32_task,
                              j);
    kvrt_free(be->alloc, j->scratch);
    return KVRT_OK;
}

static kvrt_status mm_run_gemv(kvrt_backend *be, mm_job *j)
{
    int64_t min_rows = ceil_div(MM_GEMV_MIN_TASK_BYTES, (int64_t)j->row_bytes);
    j->rows_per_task = KVRT_MAX(ceil_div(j->n_out, MM_GEMV_MAX_TASKS), min_rows);
    /* x rounded to int8, or the group sums of x and qdot's order of x, once for all rows (rows of up
     * to 6k values on the stack) */
    float stack_buf[6656], *buf = NULL;
    if (j->q8dot) {
        const size_t bytes = (size_t)(j->n_in / 256) * sizeof(kvrt_cpu_q8k);
        buf = bytes <= sizeof(stack_buf) ? stack_buf : kvrt_alloc(be->alloc, bytes, 64);
        if (!buf)
            return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "matmul: no memory for %zu bytes of int8 x",
                             bytes);
        kvrt_cpu_q8k_quantize(j->x, j->n_in, (kvrt_cpu_q8k *)(void *)buf);
        j->x8 = (const kvrt_cpu_q8k *)(void *)buf;
    } else if (j->qdot) {
        const size_t floats = (size_t)(j->n_in / 16) + (j->xprep ? (size_t)j->n_in : 0);
        buf = floats <= KVRT_ARRAY_LEN(stack_buf) ? stack_buf : kvrt_alloc(be->alloc, floats * sizeof(float), 64);
        if (!buf)
            return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "matmul: no memory for %zu floats of x sums",
                             floats);
        j->xsum16 = buf;
        j->xq = j->x;
        if (j->xprep) {
            j->xprep(j->x, j->n_in, buf + j->n_in / 16, buf);
            j->xq = buf + j->n_in / 16;
        } else {
            kvrt_cpu_xsum16(j->x, j->n_in, buf);
        }
    }
    /* a matrix too small to split is one plain loop on the caller: no worker woken */
    kvrt_threadpool_run_sized(kvrt_cpu(be)->pool, ceil_div(j->n_out, j->rows_per_task), mm_work(j), mm_gemv_task,
                              j);
    if (buf && buf != stack_buf)
        kvrt_free(be->alloc, buf);
    return KVRT_OK;
}

static kvrt_status mm_run_tiled(kvrt_backend *be, mm_job *j)
{
    int64_t rows = (int64_t)(MM_TILE_BYTES / sizeof(float)) / j->n_in;
    rows = KVRT_MIN(KVRT_MAX(rows / 16 * 16, MM_TILE_MIN_ROWS), MM_TILE_MAX_ROWS);
    j->rows_per_task = KVRT_MIN(rows, j->n_out);
    size_t tile_floats;
    if (!kvrt_mul_size((size_t)j->rows_per_task, (size_t)j->n_in, &tile_floats))
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "matmul: scratch size overflows");
    KVRT_TRY(mm_alloc_scratch(be, j, tile_floats));
    kvrt_threadpool_run_sized(kvrt_cpu(be)->pool, ceil_div(j->n_out, j->rows_per_task), mm_work(j), mm_tiled_task,
                              j);
    kvrt_free(be->alloc, j->scratch);
    return KVRT_OK;
}

kvrt_status kvrt_cpu_matmul(kvrt_backend *be, kvrt_dtype wtype, kvrt_view w, int64_t n_out, int64_t n_in,
                            kvrt_view x, int64_t x_stride, kvrt_view y, int64_t y_stride, int32_t n_tokens)
{
    /* the kernels index rows and strides with 32-bit-safe arithmetic only up to here */
    if (n_out > INT_MAX || n_in > INT_MAX || x_stride > INT_MAX || y_stride > INT_MAX)
        return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "matmul: dimensions or strides above %d", INT_MAX);
    const kvrt_cpu_isa isa = kvrt_cpu(be)->isa;
    const kvrt_cpu_quant_kernels *qk = kvrt_cpu_quant_kernels_get(isa, wtype);
    mm_job j = {
        .w = kvrt_cpu_ptr(w),
        .row_bytes = kvrt_dtype_row_bytes(wtype, n_in),
        .n_out = n_out,
        .n_in = n_in,
        .x = kvrt_cpu_ptr(x),
        .x_stride = x_stride,
        .y = kvrt_cpu_ptr(y),
        .y_stride = y_stride,
        .n_tokens = n_tokens,
        .isa = isa,
        .dot = kvrt_cpu_dot_kernel(isa, wtype),
        .qdot = qk ? qk->qdot : NULL,
        .xprep = qk ? qk->xprep : NULL,
        .q8dot = n_tokens == 1 && kvrt_cpu(be)->int8_act ? kvrt_cpu_q8dot_kernel(isa, wtype) : NULL,
        .dequant = kvrt_cpu_dequant_kernel(isa, wtype),
    };
    if (kvrt_cpu_blas_wanted(kvrt_cpu(be)->use_blas, wtype, n_tokens)) {
        const kvrt_cpu_blas_product p = {wtype, j.w, j.row_bytes, n_out, n_in, j.x, x_stride, j.y, y_stride,
                                         n_tokens, j.dequant};
        return kvrt_cpu_blas_matmul(be, &p);
    }
    if (wtype == KVRT_DTYPE_F32)
        return n_tokens == 1 ? mm_run_gemv(be, &j) : mm_run_f32(be, &j);
    if (n_tokens == 1)
        return mm_run_gemv(be, &j);
    return mm_run_tiled(be, &j);
}
