/*
 * The front door to the backends (DESIGN.md "Backend interface"): one call
 * per vtable entry, kvrt_op_<entry>, with the entry's own signature. Every
 * caller (model, KV cache, attention API, tests) goes through it; each call
 *  - checks what the host can see: counts, shapes, strides, 64-bit overflow,
 *    views inside their buffers, alignment, outputs that partly overlap an
 *    input, descriptors (layer, heads % kv_heads, window, sinks, rope dims);
 *  - reports KVRT_ERR_UNSUPPORTED for an entry the backend leaves NULL;
 *  - times the op on the host clock for a backend that runs ops at once
 *    (runs_at_once) while profiling is on;
 *  - then calls the entry, which trusts its arguments.
 * The contents of int32 device arrays (slots, tables, lengths, positions,
 * ids) are not visible here: whoever holds them on the host checks them once
 * per step before they go up (kvrt_batch_check, the attention API).
 * Failures set be->err and return its status.
 */
#ifndef KVRT_OPS_H
#define KVRT_OPS_H

#include "backend/backend.h"

/* ---- memory ---- */
kvrt_be_buffer_create_fn kvrt_op_buffer_create;
kvrt_be_buffer_destroy_fn kvrt_op_buffer_destroy; /* NULL buffer: no-op */
kvrt_be_buffer_wrap_host_fn kvrt_op_buffer_wrap_host;
kvrt_be_buffer_upload_fn kvrt_op_buffer_upload;
kvrt_be_buffer_download_fn kvrt_op_buffer_download;
kvrt_be_buffer_copy_fn kvrt_op_buffer_copy;

/* Whether the backend reads caller memory in place (buffer_wrap_host). */
bool kvrt_op_wraps_host(const kvrt_backend *be);
/* A buffer over `size` bytes of caller memory: wrapped in place where the
 * backend can, otherwise a device buffer (filled from `host` when upload). */
kvrt_status kvrt_op_buffer_for_host(kvrt_backend *be, void *host, size_t size, bool upload, kvrt_buffer **out);

/* ---- KV pools ---- */
kvrt_be_kv_pool_create_fn kvrt_op_kv_pool_create; /* kvrt_kv_check_pool_desc first */
kvrt_be_kv_pool_destroy_fn kvrt_op_kv_pool_destroy; /* NULL pool: no-op */
kvrt_be_kv_block_read_fn kvrt_op_kv_block_read;
kvrt_be_kv_block_write_fn kvrt_op_kv_block_write;
kvrt_be_kv_copy_blocks_fn kvrt_op_kv_copy_blocks;
/* Context shift (kv_shift.c): the block ids were checked by the caller. */
kvrt_be_kv_rope_shift_fn kvrt_op_kv_rope_shift;

/* ---- steps, kernels, caches, profiling ---- */
kvrt_be_step_fn kvrt_op_begin;
/* Runs the step; on failure the step is closed all the same. */
kvrt_be_step_fn kvrt_op_submit;
/* Closes an open step without running the rest (backend.h); no-op without one. */
kvrt_be_abort_fn kvrt_op_abort;
/* Ends the step a caller opened: submit when s is KVRT_OK, else abort and
 * keep s (and its message). Every error path after a begin goes through it. */
kvrt_status kvrt_op_end_step(kvrt_backend *be, kvrt_status s);
KVRT_BACKEND_KERNELS(KVRT_BACKEND_DECLARE, kvrt_op_)
/* Whether matmul and embed take weights of type t on this backend (ops->weight_types). */
bool kvrt_op_weight_type_ok(const kvrt_backend *be, kvrt_dtype t);
kvrt_be_step_fn kvrt_op_save_caches; /* NULL entry: nothing to save, KVRT_OK */
/* Turns per-op timing on or off (off always succeeds). */
kvrt_be_set_profiling_fn kvrt_op_set_profiling;

/* ---- memory and limits ---- */
/* The backend's kvrt_context_limits. */
kvrt_be_limits_fn kvrt_op_limits;
/* Refuses, before anything is allocated, `bytes` more than the memory
 * budget leaves, with the numbers; `what` names the request ("a KV pool"). */
kvrt_status kvrt_op_check_budget(kvrt_backend *be, uint64_t bytes, const char *what);

#endif /* KVRT_OPS_H */
