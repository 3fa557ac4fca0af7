/* Recording: the work of one step goes into one command buffer between
 * begin() and submit(), with a barrier after every command (each op may read
 * what the previous one wrote); submit() runs it and waits on a fence.
 * Immediate transfers use a second command buffer. */
#include "backend/vulkan/vk_internal.h"

#include <string.h>

#define KVRT_VK_SETS_PER_POOL 64u
#define KVRT_VK_DESC_PER_SET (2u * KVRT_VK_MAX_POOL_SEGS + 5u)
#define KVRT_VK_PUSH_BYTES 128u

static kvrt_status vk_add_desc_pool(kvrt_vk_backend *vk)
{
    VkDescriptorPool *pools = kvrt_calloc(vk->base.alloc, vk->n_desc_pools + 1, sizeof(*pools));
    if (!pools)
        return kvrt_fail(&vk->base.err, KVRT_ERR_OUT_OF_HOST_MEMORY, "vulkan: out of host memory");
    VkDescriptorPoolSize size = {VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, KVRT_VK_SETS_PER_POOL * KVRT_VK_DESC_PER_SET};
    VkDescriptorPoolCreateInfo ci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO,
                                     .maxSets = KVRT_VK_SETS_PER_POOL, .poolSizeCount = 1, .pPoolSizes = &size};
    VkResult r = vk->vk.vkCreateDescriptorPool(vk->device, &ci, NULL, &pools[vk->n_desc_pools]);
    if (r != VK_SUCCESS) {
        kvrt_free(vk->base.alloc, pools);
        return kvrt_vk_result(vk, r, "vkCreateDescriptorPool");
    }
    if (vk->desc_pools)
        memcpy(pools, vk->desc_pools, vk->n_desc_pools * sizeof(*pools));
    kvrt_free(vk->base.alloc, vk->desc_pools);
    vk->desc_pools = pools;
    vk->n_desc_pools++;
    return KVRT_OK;
}

kvrt_status kvrt_vk_dispatch_init(kvrt_vk_backend *vk)
{
    VkCommandPoolCreateInfo pci = {.sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
                                   .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
                                   .queueFamilyIndex = vk->queue_family};
    VkResult r = vk->vk.vkCreateCommandPool(vk->device, &pci, NULL, &vk->cmd_pool);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkCreateCommandPool");
    VkCommandBuffer cbs[2];
    VkCommandBufferAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
                                      .commandPool = vk->cmd_pool, .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
                                      .commandBufferCount = 2};
    r = vk->vk.vkAllocateCommandBuffers(vk->device, &ai, cbs);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkAllocateCommandBuffers");
    vk->cmd = cbs[0];
    vk->xfer = cbs[1];
    VkFenceCreateInfo fci = {.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO};
    r = vk->vk.vkCreateFence(vk->device, &fci, NULL, &vk->fence);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkCreateFence");

    VkDescriptorSetLayoutBinding b[KVRT_VK_N_BINDINGS];
    for (uint32_t i = 0; i < KVRT_VK_N_BINDINGS; i++) {
        b[i] = (VkDescriptorSetLayoutBinding){.binding = i, .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER,
                                              .descriptorCount = i < 2 ? KVRT_VK_MAX_POOL_SEGS : 1,
                                              .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT};
    }
    VkDescriptorSetLayoutCreateInfo lci = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
                                           .bindingCount = KVRT_VK_N_BINDINGS, .pBindings = b};
    r = vk->vk.vkCreateDescriptorSetLayout(vk->device, &lci, NULL, &vk->set_layout);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkCreateDescriptorSetLayout");
    VkPushConstantRange pr = {.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT, .offset = 0, .size = KVRT_VK_PUSH_BYTES};
    VkPipelineLayoutCreateInfo plci = {.sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1,
                                       .pSetLayouts = &vk->set_layout, .pushConstantRangeCount = 1,
                                       .pPushConstantRanges = &pr};
    r = vk->vk.vkCreatePipelineLayout(vk->device, &plci, NULL, &vk->pipe_layout);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkCreatePipelineLayout");
    return vk_add_desc_pool(vk);
}

void kvrt_vk_dispatch_finish(kvrt_vk_backend *vk)
{
    kvrt_vk_profile_finish(vk);
    for (uint32_t i = 0; i < vk->n_desc_pools; i++)
        vk->vk.vkDestroyDescriptorPool(vk->device, vk->desc_pools[i], NULL);
    kvrt_free(vk->base.alloc, vk->desc_pools);
    if (vk->pipe_layout)
        vk->vk.vkDestroyPipelineLayout(vk->device, vk->pipe_layout, NULL);
    if (vk->set_layout)
        vk->vk.vkDestroyDescriptorSetLayout(vk->device, vk->set_layout, NULL);
    if (vk->fence)
        vk->vk.vkDestroyFence(vk->device, vk->fence, NULL);
    if (vk->cmd_pool)
        vk->vk.vkDestroyCommandPool(vk->device, vk->cmd_pool, NULL);
}

/* Orders what cb recorded so far before what it records next. The first
 * scope of a pipeline barrier also holds every command submitted earlier to
 * the queue, so at the start of a command buffer it makes earlier steps' and
 * immediate transfers' writes (uploads, fills, address tables) visible. */
static void vk_barrier_cb(kvrt_vk_backend *vk, VkCommandBuffer cb)
{
    VkMemoryBarrier mb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT |
                                           VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT};
    VkPipelineStageFlags st = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    vk->vk.vkCmdPipelineBarrier(cb, st, st, 0, 1, &mb, 0, NULL, 0, NULL);
}

static kvrt_status vk_run(kvrt_vk_backend *vk, VkCommandBuffer cb)
{
    /* a fence wait alone does not make device writes visible to the host
     * (downloads read the mapped staging buffer) */
    VkMemoryBarrier hb = {.sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
                          .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
                          .dstAccessMask = VK_ACCESS_HOST_READ_BIT};
    vk->vk.vkCmdPipelineBarrier(cb, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
                                VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &hb, 0, NULL, 0, NULL);
    VkResult r = vk->vk.vkEndCommandBuffer(cb);
    if (r != VK_SUCCESS)
        return kvrt_vk_result(vk, r, "vkEndCommandBuffer");
    VkSubmitInfo si = {.sType = VK_STRUCTURE_TYPE_SUBMIT_INFO, .commandBufferCount = 1, .pCommandBuffers = &cb};
    r = vk->vk.vkQueueSubmit(vk->queue, 1, &si, vk->fence);
    vk->n_submits++;
    if (r == VK_SUCCESS)
        r = vk->vk.vkWaitForFences(vk->device, 1, &vk->fence, VK_TRUE, UINT64_MAX);
    vk->vk.vkResetFences(vk->device, 1, &vk->fence);
    return kvrt_vk_result(vk, r, "vkQueueSubmit");
}

static kvrt_status vk_begin_cb(kvrt_vk_backend *vk, VkCommandBuffer cb)
{
    VkCommandBufferBeginInfo bi = {.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
                                   .flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT};
    KVRT_TRY(kvrt_vk_result(vk, vk->vk.vkBeginCommandBuffer(cb, &bi), "vkBeginCommandBuffer"));
    vk_barrier_cb(vk, cb); /* after earlier submissions: reads see their writes, writes wait for their reads */
    return KVRT_OK;
}

kvrt_status kvrt_vk_oneshot_begin(kvrt_vk_backend *vk, VkCommandBuffer *cb)
{
    *cb = vk->xfer;
    return vk_begin_cb(vk, vk->xfer);
}

kvrt_status kvrt_vk_oneshot_run(kvrt_vk_backend *vk)
{
    return vk_run(vk, vk->xfer);
}

kvrt_status kvrt_vk_begin(kvrt_backend *be)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (vk->recording)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "vulkan: begin() while a step is already open");
    for (uint32_t i = 0; i < vk->n_desc_pools; i++)
        vk->vk.vkResetDescriptorPool(vk->device, vk->desc_pools[i], 0);
    KVRT_TRY(vk_begin_cb(vk, vk->cmd));
    vk->recording = true;
    if (be->profiling)
        kvrt_vk_prof_step_begin(vk);
    return KVRT_OK;
}

static void vk_free_retired(kvrt_vk_backend *vk)
{
    for (size_t i = 0; i < KVRT_ARRAY_LEN(vk->retired); i++) {
        kvrt_vk_buffer_free(vk, vk->retired[i]);
        vk->retired[i] = NULL;
    }
}

kvrt_status kvrt_vk_submit(kvrt_backend *be)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (!vk->recording)
        return kvrt_fail(&be->err, KVRT_ERR_INVALID_ARGUMENT, "vulkan: submit() without begin()");
    vk->recording = false;
    kvrt_status s = vk_run(vk, vk->cmd);
    vk_free_retired(vk);
    kvrt_vk_step_io_end(vk, s == KVRT_OK);
    if (be->profiling) {
        /* the step ran: a profiling failure (no query pool, say) drops its
         * times, it does not turn the step's result into an error */
        if (s != KVRT_OK || kvrt_vk_prof_collect(vk) != KVRT_OK)
            kvrt_vk_prof_discard(vk);
    }
    return s;
}

uint64_t kvrt_vk_submit_count(kvrt_backend *be)
{
    return kvrt_vk(be)->n_submits;
}

kvrt_status kvrt_vk_acquire(kvrt_vk_backend *vk, bool *implicit)
{
    *implicit = !vk->recording;
    if (*implicit)
        KVRT_TRY(kvrt_vk_begin(&vk->base));
    if (vk->base.profiling)
        kvrt_vk_prof_call(vk);
    return KVRT_OK;
}

kvrt_status kvrt_vk_end_implicit(kvrt_vk_backend *vk, bool implicit, kvrt_status s)
{
    if (!implicit)
        return s;
    if (s == KVRT_OK)
        return kvrt_vk_submit(&vk->base);
    kvrt_vk_abort(&vk->base); /* keeps the first error's message */
    return s;
}

/* Drops the open step: nothing recorded reaches the queue, so no caller
 * memory is written later (recorded downloads are forgotten). */
void kvrt_vk_abort(kvrt_backend *be)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    if (!vk->recording)
        return;
    vk->recording = false;
    vk->vk.vkEndCommandBuffer(vk->cmd);
    vk->vk.vkResetCommandBuffer(vk->cmd, 0);
    vk_free_retired(vk);
    kvrt_vk_step_io_end(vk, false);
    if (vk->base.profiling)
        kvrt_vk_prof_discard(vk);
}

void kvrt_vk_barrier(kvrt_vk_backend *vk)
{
    vk_barrier_cb(vk, vk->cmd);
    if (vk->base.profiling)
        kvrt_vk_prof_stamp(vk); /* ends the command before the barrier */
}

static kvrt_status vk_alloc_set(kvrt_vk_backend *vk, VkDescriptorSet *set)
{
    VkDescriptorSetAllocateInfo ai = {.sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO,
                                      .descriptorSetCount = 1, .pSetLayouts = &vk->set_layout};
    ai.descriptorPool = vk->desc_pools[vk->n_desc_pools - 1];
    VkResult r = vk->vk.vkAllocateDescriptorSets(vk->device, &ai, set);
    if (r == VK_ERROR_OUT_OF_POOL_MEMORY || r == VK_ERROR_FRAGMENTED_POOL) {
        KVRT_TRY(vk_add_desc_pool(vk));
        ai.descriptorPool = vk->desc_pools[vk->n_desc_pools - 1];
        r = vk->vk.vkAllocateDescriptorSets(vk->device, &ai, set);
    }
    return kvrt_vk_result(vk, r, "vkAllocateDescriptorSets");
}

static void vk_pool_infos(const kvrt_vk_backend *vk, const kvrt_buffer *pool, VkDescriptorBufferInfo *out)
{
    for (uint32_t i = 0; i < KVRT_VK_MAX_POOL_SEGS; i++) {
        /* unused slots repeat a valid segment: every descriptor stays valid */
        const kvrt_vk_segment *s = pool ? &pool->segs[i < pool->n_segs ? i : 0] : &vk->dummy->segs[0];
        out[i] = (VkDescriptorBufferInfo){s->buf, 0, VK_WHOLE_SIZE};
    }
}

kvrt_status kvrt_vk_dispatch(kvrt_vk_backend *vk, kvrt_vk_pipe_id id, const kvrt_vk_bind *bind, const void *push,
                             uint32_t push_size, uint32_t gx, uint32_t gy, uint32_t gz)
{
    const uint32_t *mx = vk->caps.max_wg_count;
    if (gx > mx[0] || gy > mx[1] || gz > mx[2])
        return kvrt_fail(&vk->base.err, KVRT_ERR_UNSUPPORTED, "vulkan: dispatch %ux%ux%u exceeds the device's %ux%ux%u",
                         gx, gy, gz, mx[0], mx[1], mx[2]);
    VkPipeline pipe;
    KVRT_TRY(kvrt_vk_pipeline(vk, id, &pipe));
    VkDescriptorSet set;
    KVRT_TRY(vk_alloc_set(vk, &set));
    VkDescriptorBufferInfo kinfo[KVRT_VK_MAX_POOL_SEGS], vinfo[KVRT_VK_MAX_POOL_SEGS], info[5];
    vk_pool_infos(vk, bind->kpool, kinfo);
    vk_pool_infos(vk, bind->vpool, vinfo);
    VkWriteDescriptorSet w[KVRT_VK_N_BINDINGS];
    for (uint32_t i = 0; i < KVRT_VK_N_BINDINGS; i++) {
        w[i] = (VkWriteDescriptorSet){.sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET, .dstSet = set, .dstBinding = i,
                                      .descriptorCount = i < 2 ? KVRT_VK_MAX_POOL_SEGS : 1,
                                      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER};
        if (i == 0) {
            w[i].pBufferInfo = kinfo;
        } else if (i == 1) {
            w[i].pBufferInfo = vinfo;
        } else {
            const kvrt_buffer *b = bind->buf[i - 2];
            const kvrt_vk_segment *s = b ? &b->segs[bind->seg[i - 2]] : &vk->dummy->segs[0];
            info[i - 2] = (VkDescriptorBufferInfo){s->buf, 0, VK_WHOLE_SIZE};
            w[i].pBufferInfo = &info[i - 2];
        }
    }
    vk->vk.vkUpdateDescriptorSets(vk->device, KVRT_VK_N_BINDINGS, w, 0, NULL);
    vk->vk.vkCmdBindPipeline(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
    vk->vk.vkCmdBindDescriptorSets(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, vk->pipe_layout, 0, 1, &set, 0, NULL);
    vk->vk.vkCmdPushConstants(vk->cmd, vk->pipe_layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_size, push);
    vk->vk.vkCmdDispatch(vk->cmd, gx, gy, gz);
    if (vk->base.profiling)
        kvrt_vk_prof_op(vk, id);
    kvrt_vk_barrier(vk);
    return KVRT_OK;
}
