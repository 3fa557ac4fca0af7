/* kvrt_context: a backend chosen at run time from the registry of this
 * build's backends, checked at registration (interface version, entries). */
#include "backend/ops.h"

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

/* The backends this build knows, by kind. */
typedef kvrt_status (*backend_factory)(const kvrt_context_params *params, kvrt_backend **out, kvrt_error *err);

static const struct {
    kvrt_backend_kind kind;
    backend_factory create;
} BACKENDS[] = {
    {KVRT_BACKEND_CPU, kvrt_cpu_backend_create},
    {KVRT_BACKEND_VULKAN, kvrt_vulkan_backend_create},
    {KVRT_BACKEND_OPENCL, kvrt_opencl_backend_create},
};

/* The entries every caller relies on (the front door calls them unchecked). */
static kvrt_status check_registration(const kvrt_backend *be, kvrt_error *err)
{
    const kvrt_backend_ops *o = be->ops;
    if (!o)
        return kvrt_fail(err, KVRT_ERR_INTERNAL, "backend without an ops table");
    if (o->interface_version != KVRT_BACKEND_INTERFACE_VERSION)
        return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE,
                         "%s backend implements interface version %u; this kvrt needs %u",
                         o->name ? o->name : "?", (unsigned)o->interface_version,
                         (unsigned)KVRT_BACKEND_INTERFACE_VERSION);
    const struct {
        bool present;
        const char *name;
    } needed[] = {
        {o->name != NULL, "name"},
        {o->destroy != NULL, "destroy"},
        {o->buffer_create != NULL, "buffer_create"},
        {o->buffer_destroy != NULL, "buffer_destroy"},
        {o->buffer_upload != NULL, "buffer_upload"},
        {o->buffer_download != NULL, "buffer_download"},
        {o->kv_pool_create == NULL || o->kv_pool_destroy != NULL, "kv_pool_destroy"},
        {o->begin != NULL, "begin"},
        {o->submit != NULL, "submit"},
        {o->abort != NULL, "abort"},
        {o->limits != NULL, "limits"},
    };
    for (size_t i = 0; i < KVRT_ARRAY_LEN(needed); i++) {
        if (!needed[i].present)
            return kvrt_fail(err, KVRT_ERR_BACKEND_UNAVAILABLE, "%s backend lacks the mandatory entry %s",
                             o->name ? o->name : "?", needed[i].name);
    }
    return KVRT_OK;
}

kvrt_status kvrt_context_adopt(kvrt_backend *be, const kvrt_context_params *params, kvrt_context **out,
                               kvrt_error *err)
{
    *out = NULL;
    kvrt_status s = check_registration(be, err);
    kvrt_context *ctx = s == KVRT_OK ? kvrt_calloc(params->allocator, 1, sizeof(*ctx)) : NULL;
    if (s == KVRT_OK && !ctx)
        s = kvrt_fail(err, KVRT_ERR_OUT_OF_HOST_MEMORY, "kvrt_context_create: out of host memory");
    if (s != KVRT_OK) {
        if (be->ops && be->ops->destroy)
            be->ops->destroy(be);
        return s;
    }
    ctx->be = be;
    ctx->alloc = params->allocator;
    ctx->memory_budget = params->memory_budget;
    *out = ctx;
    return KVRT_OK;
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
    for (size_t i = 0; i < KVRT_ARRAY_LEN(BACKENDS); i++) {
        if (BACKENDS[i].kind != p.backend)
            continue;
        kvrt_backend *be = NULL;
        KVRT_TRY(BACKENDS[i].create(&p, &be, err));
        return kvrt_context_adopt(be, &p, out, err);
    }
    return kvrt_fail(err, KVRT_ERR_INVALID_ARGUMENT, "unknown backend %d", (int)p.backend);
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
    return kvrt_op_save_caches(ctx->be);
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

kvrt_status kvrt_context_get_limits(kvrt_context *ctx, kvrt_context_limits *out)
{
    if (!ctx || !ctx->be || !out)
        return KVRT_ERR_INVALID_ARGUMENT;
    kvrt_op_limits(ctx->be, out);
    return KVRT_OK;
}
