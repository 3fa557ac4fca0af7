/* kvrt_context: a backend chosen at run time. */
#include "backend/backend.h"

#include <stdio.h>
#include <string.h>

const char *kvrt_backend_name(kvrt_backend_kind kind)
{
    switch (kind) {
    case KVRT_BACKEND_CPU: return "cpu";
    case KVRT_BACKEND_VULKAN: return "vulkan";
    case KVRT_BACKEND_OPENCL: return "opencl";
    case KVRT_BACKEND_AUTO: return "auto";
    }
    return "?";
}

kvrt_status kvrt_backend_parse(const char *name, kvrt_backend_kind *out)
{
    static const kvrt_backend_kind kinds[] = {KVRT_BACKEND_CPU, KVRT_BACKEND_VULKAN, KVRT_BACKEND_OPENCL,
                                              KVRT_BACKEND_AUTO};
    if (!name || !out)
        return KVRT_ERR_INVALID_ARGUMENT;
    for (size_t i = 0; i < KVRT_ARRAY_LEN(kinds); i++) {
        if (strcmp(name, kvrt_backend_name(kinds[i])) == 0) {
            *out = kinds[i];
            return KVRT_OK;
        }
    }
    return KVRT_ERR_INVALID_ARGUMENT;
}

kvrt_context_params kvrt_context_default_params(void)
{
    kvrt_context_params p;
    memset(&p, 0, sizeof(p));
    p.backend = KVRT_BACKEND_CPU;
    p.device_index = -1;
    return p;
}

size_t kvrt_kv_block_bytes(const kvrt_kv_pool_desc *d)
{
    size_t elem = d->dtype == KVRT_DTYPE_F16 ? 2 : 4;
    return (size_t)d->n_kv_heads * (size_t)d->block_size * (size_t)d->head_dim * elem;
}

kvrt_status kvrt_backend_unsupported(kvrt_backend *be, const char *entry)
{
    return kvrt_fail(&be->err, KVRT_ERR_UNSUPPORTED, "%s backend does not implement %s",
                     be->ops->name, entry);
}

/* Replaces AUTO by the backend and device kvrt_backend_choose_auto picks. */
static kvrt_status resolve_auto(kvrt_context_params *p, kvrt_error *err)
{
    if (p->device_index >= 0 || (p->device_name && p->device_name[0]))
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT,
                         "a device index or name needs a named backend (vulkan or opencl), not auto");
    kvrt_backend_choice c;
    KVRT_TRY(kvrt_backend_choose_auto(&c, err));
    p->backend = c.backend;
    p->device_index = c.device_index;
    return KVRT_OK;
}

kvrt_status kvrt_context_create(const kvrt_context_params *params, kvrt_context **out, kvrt_error *err)
{
    kvrt_error_clear(err);
    if (!out)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "kvrt_context_create: out is NULL");
    *out = NULL;
    kvrt_context_params p = params ? *params : kvrt_context_default_params();
    if (p.n_threads < 0)
        return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "n_threads %d < 0", (int)p.n_threads);
    if (p.backend == KVRT_BACKEND_AUTO)
        KVRT_TRY(resolve_auto(&p, err));
    kvrt_context *ctx = kvrt_calloc(p.allocator, 1, sizeof(*ctx));
    if (!ctx)
        return kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "kvrt_context_create: out of host memory");
    ctx->alloc = p.allocator;
    ctx->memory_budget = p.memory_budget;
    kvrt_status s;
    switch (p.backend) {
    case KVRT_BACKEND_CPU: s = kvrt_cpu_backend_create(&p, &ctx->be, err); break;
    case KVRT_BACKEND_VULKAN: s = kvrt_vulkan_backend_create(&p, &ctx->be, err); break;
    case KVRT_BACKEND_OPENCL: s = kvrt_opencl_backend_create(&p, &ctx->be, err); break;
    default: s = kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "unknown backend %d", (int)p.backend); break;
    }
    if (s != KVRT_OK) {
        kvrt_free(p.allocator, ctx);
        return s;
    }
    *out = ctx;
    return KVRT_OK;
}

void kvrt_context_destroy(kvrt_context *ctx)
{
    if (!ctx)
        return;
    if (ctx->be)
        ctx->be->ops->destroy(ctx->be);
    kvrt_free(ctx->alloc, ctx);
}

kvrt_status kvrt_context_save_caches(kvrt_context *ctx)
{
    if (!ctx || !ctx->be)
        return KVRT_ERR_INVALID_ARGUMENT;
    if (!ctx->be->ops->save_caches)
        return KVRT_OK;
    return ctx->be->ops->save_caches(ctx->be);
}

const char *kvrt_context_message(const kvrt_context *ctx)
{
    return ctx && ctx->be ? ctx->be->err.message : "";
}

const char *kvrt_context_description(const kvrt_context *ctx)
{
    return ctx && ctx->be ? ctx->be->description : "";
}

kvrt_backend_kind kvrt_context_backend(const kvrt_context *ctx)
{
    return ctx && ctx->be ? ctx->be->kind : KVRT_BACKEND_CPU;
}
