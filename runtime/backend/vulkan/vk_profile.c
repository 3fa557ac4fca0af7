/* Per-op device times (kvrt_context_set_profiling) from timestamp queries.
 *
 * While profiling, the step's command buffer gets one timestamp at its start
 * and one after every barrier that ends an op's command (each dispatch, each
 * group of copies). The barriers already serialise consecutive commands, so
 * the difference of two neighbouring stamps is the time of the command
 * between them. Each stamp remembers its op and whether it ends the first
 * command of a call (an op may record several: attention's merge pass, a
 * matmul over weight segments), so calls count once. After the step's fence
 * the stamps are read back and added to be->profile. With profiling off
 * nothing here runs and no query is written. */
#include "backend/vulkan/vk_internal.h"

#include <string.h>

#define VK_PROF_CHUNK 256u /* queries per pool; pools are added as a step needs them */

struct kvrt_vk_profile {
    VkQueryPool *pools; /* [n_pools], VK_PROF_CHUNK queries each */
    uint32_t n_pools;
    const char **op;    /* [cap] op of the command that ends at stamp i (i >= 1) */
    uint8_t *first;     /* [cap] 1 when that command is its call's first */
    uint32_t cap;
    uint32_t n_stamps;  /* written in the open step */
    const char *cur_op; /* op of the commands since the last kvrt_vk_prof_call */
    bool new_call;
    kvrt_status status; /* first failure of the open step's profiling */
    uint64_t valid_mask;
    double period_ns;   /* nanoseconds per timestamp tick */
    uint64_t *ticks;    /* [VK_PROF_CHUNK] readback */
};

/* Base op names: variants (bda) and second passes (merge) fold into the op
 * the caller called. */
static const char *vk_prof_op_name(kvrt_vk_pipe_id id)
{
    switch (id) {
    case KVRT_VK_PIPE_KV_WRITE:
    case KVRT_VK_PIPE_KV_WRITE_BDA: return "kv_write";
    case KVRT_VK_PIPE_ATTN_DECODE:
    case KVRT_VK_PIPE_ATTN_DECODE_BDA:
    case KVRT_VK_PIPE_ATTN_MERGE: return "attn_decode";
    case KVRT_VK_PIPE_ATTN_PREFILL:
    case KVRT_VK_PIPE_ATTN_PREFILL_BDA:
    case KVRT_VK_PIPE_ATTN_PREFILL_MERGE: return "attn_prefill";
    case KVRT_VK_PIPE_MATMUL:
    case KVRT_VK_PIPE_MATMUL_BDA:
    case KVRT_VK_PIPE_MATMUL_TILED:
    case KVRT_VK_PIPE_MATMUL_TILED_BDA: return "matmul";
    case KVRT_VK_PIPE_RMSNORM: return "rmsnorm";
    case KVRT_VK_PIPE_ADD: return "add";
    case KVRT_VK_PIPE_ADD_BIAS: return "add_bias";
    case KVRT_VK_PIPE_SWIGLU: return "swiglu";
    case KVRT_VK_PIPE_ROPE: return "rope";
    case KVRT_VK_PIPE_ROPE_SHIFT:
    case KVRT_VK_PIPE_ROPE_SHIFT_BDA: return "rope_shift";
    case KVRT_VK_PIPE_EMBED:
    case KVRT_VK_PIPE_EMBED_BDA: return "embed";
    case KVRT_VK_PIPE_GATHER:
    case KVRT_VK_PIPE_GATHER_BDA: return "gather_rows";
    case KVRT_VK_PIPE_COUNT: break;
    }
    return "other";
}

/* Timestamp support of kvrt's queue: valid bits and tick length. */
static kvrt_status vk_prof_probe(kvrt_vk_backend *vk, uint64_t *mask, double *period_ns)
{
    uint32_t nq = 0;
    vkGetPhysicalDeviceQueueFamilyProperties(vk->phys, &nq, NULL);
    VkQueueFamilyProperties qf[32];
    nq = KVRT_MIN(nq, (uint32_t)KVRT_ARRAY_LEN(qf));
    vkGetPhysicalDeviceQueueFamilyProperties(vk->phys, &nq, qf);
    VkPhysicalDeviceProperties props;
    vkGetPhysicalDeviceProperties(vk->phys, &props);
    uint32_t bits = vk->queue_family < nq ? qf[vk->queue_family].timestampValidBits : 0;
    if (bits == 0 || props.limits.timestampPeriod <= 0.0f)
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED,
                         "vulkan: %s has no timestamps on queue family %u (timestampValidBits 0): per-op profiling "
                         "is unavailable", vk->device_name, vk->queue_family);
    *mask = bits >= 64 ? UINT64_MAX : (1ull << bits) - 1;
    *period_ns = props.limits.timestampPeriod;
    return KVRT_OK;
}

kvrt_status kvrt_vk_set_profiling(kvrt_backend *be, bool on)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (vk->recording)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "vulkan: profiling cannot change while a step is open");
    if (!on || vk->prof)
        return KVRT_OK; /* off: query pools stay for the next time */
    uint64_t mask;
    double period;
    KVRT_TRY(vk_prof_probe(vk, &mask, &period));
    kvrt_vk_profile *p = kvrt_calloc(be->alloc, 1, sizeof(*p));
    uint64_t *ticks = kvrt_calloc(be->alloc, VK_PROF_CHUNK, sizeof(uint64_t));
    if (!p || !ticks) {
        kvrt_free(be->alloc, p);
        kvrt_free(be->alloc, ticks);
        return kvrt_fail(&be->err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory for profiling");
    }
    p->valid_mask = mask;
    p->period_ns = period;
    p->ticks = ticks;
    vk->prof = p;
    return KVRT_OK;
}

void kvrt_vk_profile_finish(kvrt_vk_backend *vk)
{
    kvrt_vk_profile *p = vk->prof;
    if (!p)
        return;
    for (uint32_t i = 0; i < p->n_pools; i++)
        vk->vk.vkDestroyQueryPool(vk->device, p->pools[i], NULL);
    kvrt_free(vk->base.alloc, p->pools);
    kvrt_free(vk->base.alloc, p->op);
    kvrt_free(vk->base.alloc, p->first);
    kvrt_free(vk->base.alloc, p->ticks);
    kvrt_free(vk->base.alloc, p);
    vk->prof = NULL;
}

/* Room for one more stamp: a new query pool every VK_PROF_CHUNK stamps and
 * longer label arrays. Both may happen while recording. */
static kvrt_status vk_prof_grow(kvrt_vk_backend *vk, kvrt_vk_profile *p)
{
    const kvrt_allocator *a = vk->base.alloc;
    if (p->n_stamps == p->cap) {
        uint32_t cap = p->cap ? p->cap * 2 : VK_PROF_CHUNK;
        /* the label arrays grow together: p->cap stays the size of both */
        if (cap < p->cap || !kvrt_grow_array(a, (void **)&p->op, p->cap, cap, sizeof(*p->op)) ||
            !kvrt_grow_array(a, (void **)&p->first, p->cap, cap, sizeof(*p->first)))
            return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory for profiling");
        p->cap = cap;
    }
    if (p->n_stamps / VK_PROF_CHUNK < p->n_pools)
        return KVRT_OK;
    VkQueryPoolCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
                                .queryType = VK_QUERY_TYPE_TIMESTAMP, .queryCount = VK_PROF_CHUNK};
    VkQueryPool pool;
    VkResult r = vk->vk.vkCreateQueryPool(vk->device, &ci, NULL, &pool);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkCreateQueryPool");
    if (!kvrt_grow_array(a, (void **)&p->pools, p->n_pools, p->n_pools + 1, sizeof(*p->pools))) {
        vk->vk.vkDestroyQueryPool(vk->device, pool, NULL);
        return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory for profiling");
    }
    p->pools[p->n_pools++] = pool;
    return KVRT_OK;
}

/* Writes the next stamp after everything recorded so far. A failure stops
 * this step's stamps and is reported by kvrt_vk_prof_collect. */
static void vk_prof_write(kvrt_vk_backend *vk, kvrt_vk_profile *p)
{
    if (p->status != KVRT_OK)
        return;
    p->status = vk_prof_grow(vk, p);
    if (p->status != KVRT_OK)
        return;
    VkQueryPool pool = p->pools[p->n_stamps / VK_PROF_CHUNK];
    uint32_t q = p->n_stamps % VK_PROF_CHUNK;
    if (q == 0) /* query commands run in submission order: the reset precedes this step's writes */
        vk->vk.vkCmdResetQueryPool(vk->cmd, pool, 0, VK_PROF_CHUNK);
    vk->vk.vkCmdWriteTimestamp(vk->cmd, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, pool, q);
    p->op[p->n_stamps] = p->cur_op ? p->cur_op : "copy"; /* no dispatch in this call: a copy */
    p->first[p->n_stamps] = p->new_call;
    p->new_call = false;
    p->n_stamps++;
}

void kvrt_vk_prof_step_begin(kvrt_vk_backend *vk)
{
    kvrt_vk_profile *p = vk->prof;
    p->n_stamps = 0;
    p->status = KVRT_OK;
    p->cur_op = NULL;
    p->new_call = false;
    vk_prof_write(vk, p); /* the start of the first command */
}

void kvrt_vk_prof_call(kvrt_vk_backend *vk)
{
    vk->prof->cur_op = NULL;
    vk->prof->new_call = true;
}

void kvrt_vk_prof_call_named(kvrt_vk_backend *vk, const char *op)
{
    kvrt_vk_prof_call(vk);
    vk->prof->cur_op = op;
}

void kvrt_vk_prof_op(kvrt_vk_backend *vk, kvrt_vk_pipe_id id)
{
    vk->prof->cur_op = vk_prof_op_name(id);
}

void kvrt_vk_prof_stamp(kvrt_vk_backend *vk)
{
    vk_prof_write(vk, vk->prof);
}

void kvrt_vk_prof_discard(kvrt_vk_backend *vk)
{
    vk->prof->n_stamps = 0;
}

kvrt_status kvrt_vk_prof_collect(kvrt_vk_backend *vk)
{
    kvrt_vk_profile *p = vk->prof;
    uint32_t n = p->n_stamps;
    p->n_stamps = 0;
    if (p->status != KVRT_OK)
        return p->status; /* its message is in be->err */
    uint64_t prev = 0;
    for (uint32_t base = 0; base < n; base += VK_PROF_CHUNK) {
        uint32_t count = KVRT_MIN(n - base, VK_PROF_CHUNK);
        VkResult r = vk->vk.vkGetQueryPoolResults(vk->device, p->pools[base / VK_PROF_CHUNK], 0, count,
                                                  count * sizeof(uint64_t), p->ticks, sizeof(uint64_t),
                                                  VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT);
        if (r != VK_SUCCESS)
            return kvrt_vk_result(vk, r, "vkGetQueryPoolResults");
        for (uint32_t i = 0; i < count; i++) {
            uint64_t t = p->ticks[i] & p->valid_mask;
            if (base + i > 0) {
                uint64_t ticks = (t - prev) & p->valid_mask; /* wraps within the valid bits */
                kvrt_profile_add(&vk->base.profile, p->op[base + i], p->first[base + i],
                                 (uint64_t)((double)ticks * p->period_ns + 0.5));
            }
            prev = t;
        }
    }
    return KVRT_OK;
}
