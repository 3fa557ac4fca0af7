/* OpenCL programs: sources embedded at build time (cmake/opencl_kernels.cmake),
 * built on first use per (program, KV-type variant) and cached for the life
 * of the backend. A driver that rejects a program gives KVRT_ERR_KERNEL_BUILD
 * with its build log in the message. */
#include "backend/opencl/cl_internal.h"

#include <stdio.h>
#include <string.h>

#include "opencl/attention_src.h"
#include "opencl/kv_src.h"
#include "opencl/kvrt_cl_common_src.h"
#include "opencl/ops_src.h"

typedef struct cl_program_desc {
    const char *file; /* for messages */
    const char *source;
    const char *kernels[KVRT_CL_MAX_KERNELS]; /* NULL-terminated */
} cl_program_desc;

static const cl_program_desc cl_programs[KVRT_CL_PROG_COUNT] = {
    [KVRT_CL_PROG_KV] = {"kv.cl", kvrt_cl_src_kv, {"kv_write", "kv_rope_shift", NULL}},
    [KVRT_CL_PROG_ATTN] = {"attention.cl", kvrt_cl_src_attention,
                           {"attn_decode", "attn_decode_merge", "attn_prefill", NULL}},
    [KVRT_CL_PROG_OPS] = {"ops.cl", kvrt_cl_src_ops,
                          {"rmsnorm", "rope", "swiglu", "add", "gather_rows", "embed_f32", "embed_f16", "embed_bf16",
                           "embed_q8_0", "embed_q4_0", "matmul_f32", "matmul_f16", "matmul_bf16", "matmul_q8_0",
                           "matmul_q4_0", "add_bias", "embed_q", "matmul_q", NULL}},
};

static const char *const cl_kv_type_names[KVRT_CL_KV_TYPES] = {"f32", "f16", "q8_0", "q4_0", "fp8", "fp8_e5m2"};

static void cl_program_release(kvrt_cl_backend *cl, kvrt_cl_program *p)
{
    for (int i = 0; i < KVRT_CL_MAX_KERNELS; i++) {
        if (p->kernels[i])
            cl->fn.clReleaseKernel(p->kernels[i]);
    }
    if (p->prog)
        cl->fn.clReleaseProgram(p->prog);
    memset(p, 0, sizeof(*p));
}

void kvrt_cl_programs_release(kvrt_cl_backend *cl)
{
    for (int i = 0; i < KVRT_CL_PROG_COUNT; i++) {
        for (int v = 0; v < KVRT_CL_VARIANT_COUNT; v++)
            cl_program_release(cl, &cl->programs[i][v]);
    }
}

/* Puts the build log into be->err, starting near its first error so the cause fits the message. */
static kvrt_status cl_build_failed(kvrt_cl_backend *cl, cl_program prog, cl_int rc, const char *file, int variant)
{
    size_t len = 0;
    char *log = NULL;
    if (cl->fn.clGetProgramBuildInfo(prog, cl->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &len) == CL_SUCCESS && len)
        log = kvrt_alloc(cl->base.alloc, len + 1, 0);
    if (log && cl->fn.clGetProgramBuildInfo(prog, cl->device, CL_PROGRAM_BUILD_LOG, len, log, NULL) != CL_SUCCESS)
        len = 0;
    if (log)
        log[len] = '\0';
    const char *start = log ? log : "(no build log)";
    const char *first_error = log ? strstr(log, "error") : NULL;
    if (first_error && first_error - start > 120)
        start = first_error - 120;
    kvrt_fail(&cl->base.err, KVRT_ERR_KERNEL_BUILD, "opencl: building %s (%s K, %s V) failed: %s; build log: %s",
              file, cl_kv_type_names[variant / KVRT_CL_KV_TYPES], cl_kv_type_names[variant % KVRT_CL_KV_TYPES],
              kvrt_cl_error_name(rc), start);
    kvrt_free(cl->base.alloc, log);
    return KVRT_ERR_KERNEL_BUILD;
}

static kvrt_status cl_program_build(kvrt_cl_backend *cl, kvrt_cl_program_id id, int variant)
{
    const cl_program_desc *desc = &cl_programs[id];
    kvrt_cl_program *p = &cl->programs[id][variant];
    /* The shared header goes first, so kernels and host see one set of layouts. */
    const char *sources[3] = {kvrt_cl_src_kvrt_cl_common, "\n#line 1\n",
                              cl->source_override[id] ? cl->source_override[id] : desc->source};
    cl_int rc;
    p->prog = cl->fn.clCreateProgramWithSource(cl->ctx, 3, sources, NULL, &rc);
    if (!p->prog)
        return kvrt_cl_fail(cl, rc, KVRT_ERR_KERNEL_BUILD, "clCreateProgramWithSource");
    char options[96];
    snprintf(options, sizeof(options), "-cl-std=CL1.2 -DKVRT_KV_K=%d -DKVRT_KV_V=%d", variant / KVRT_CL_KV_TYPES,
             variant % KVRT_CL_KV_TYPES);
    rc = cl->fn.clBuildProgram(p->prog, 1, &cl->device, options, NULL, NULL);
    if (rc != CL_SUCCESS) {
        kvrt_status s = cl_build_failed(cl, p->prog, rc, desc->file, variant);
        cl_program_release(cl, p);
        return s;
    }
    for (int i = 0; i < KVRT_CL_MAX_KERNELS && desc->kernels[i]; i++) {
        p->kernels[i] = cl->fn.clCreateKernel(p->prog, desc->kernels[i], &rc);
        if (!p->kernels[i]) {
            kvrt_fail(&cl->base.err, KVRT_ERR_KERNEL_BUILD, "opencl: %s has no kernel %s: %s", desc->file,
                      desc->kernels[i], kvrt_cl_error_name(rc));
            cl_program_release(cl, p);
            return KVRT_ERR_KERNEL_BUILD;
        }
    }
    return KVRT_OK;
}

kvrt_status kvrt_cl_kernel(kvrt_cl_backend *cl, kvrt_cl_program_id prog, int variant, int index, cl_kernel *out)
{
    *out = NULL;
    kvrt_cl_program *p = &cl->programs[prog][variant];
    if (!p->prog)
        KVRT_TRY(cl_program_build(cl, prog, variant));
    if (index < 0 || index >= KVRT_CL_MAX_KERNELS || !p->kernels[index])
        return kvrt_fail(&cl->base.err, KVRT_ERR_INTERNAL, "opencl: no kernel %d in %s", index,
                         cl_programs[prog].file);
    *out = p->kernels[index];
    return KVRT_OK;
}

kvrt_status kvrt_cl_set_args(kvrt_cl_backend *cl, cl_kernel k, const kvrt_cl_arg *args, int n, const char *what)
{
    for (int i = 0; i < n; i++) {
        cl_int rc = cl->fn.clSetKernelArg(k, (cl_uint)i, args[i].size, args[i].ptr);
        if (rc != CL_SUCCESS) {
            char buf[96];
            snprintf(buf, sizeof(buf), "%s: argument %d", what, i);
            return kvrt_cl_fail(cl, rc, KVRT_ERR_INTERNAL, buf);
        }
    }
    return KVRT_OK;
}

kvrt_status kvrt_cl_enqueue(kvrt_cl_backend *cl, cl_kernel k, int dims, const size_t *global, const size_t *local,
                            const char *what)
{
    for (int i = 0; i < dims; i++) {
        if (global[i] == 0)
            return KVRT_OK; /* nothing to do */
    }
    cl_int rc = cl->fn.clEnqueueNDRangeKernel(cl->queue, k, (cl_uint)dims, NULL, global, local, 0, NULL, NULL);
    if (rc != CL_SUCCESS)
        return kvrt_cl_fail(cl, rc, KVRT_ERR_INTERNAL, what);
    return kvrt_cl_after_enqueue(cl, what);
}

void kvrt_cl_test_override_source(kvrt_backend *be, kvrt_cl_program_id prog, const char *src)
{
    kvrt_cl_backend *cl = kvrt_cl(be);
    cl->source_override[prog] = src;
    for (int v = 0; v < KVRT_CL_VARIANT_COUNT; v++)
        cl_program_release(cl, &cl->programs[prog][v]);
}
