/* Compute pipelines, created from a table on first use and cached. SPIR-V
 * comes from the build (cmake/shaders.cmake) as aligned uint32_t arrays. */
#include "backend/vulkan/vk_internal.h"

#include <stddef.h>
#include <string.h>

#include "shaders/attn_decode.spv.h"
#include "shaders/attn_decode_bda.spv.h"
#include "shaders/attn_decode_bda_n.spv.h"
#include "shaders/attn_decode_n.spv.h"
#include "shaders/attn_merge.spv.h"
#include "shaders/attn_prefill.spv.h"
#include "shaders/attn_prefill_bda.spv.h"
#include "shaders/attn_prefill_bda_n.spv.h"
#include "shaders/attn_prefill_n.spv.h"
#include "shaders/attn_prefill_merge.spv.h"
#include "shaders/elementwise.spv.h"
#include "shaders/kv_rope_shift.spv.h"
#include "shaders/kv_rope_shift_bda.spv.h"
#include "shaders/kv_write.spv.h"
#include "shaders/kv_write_bda.spv.h"
#include "shaders/kv_write_bda_n.spv.h"
#include "shaders/kv_write_n.spv.h"
#include "shaders/matmul.spv.h"
#include "shaders/matmul_bda.spv.h"
#include "shaders/matmul_bda_sg.spv.h"
#include "shaders/matmul_sg.spv.h"
#include "shaders/matmul_tiled.spv.h"
#include "shaders/matmul_tiled_bda.spv.h"
#include "shaders/rmsnorm.spv.h"
#include "shaders/rmsnorm_sg.spv.h"
#include "shaders/rope.spv.h"
#include "shaders/rows.spv.h"
#include "shaders/rows_bda.spv.h"

/* Push-constant structs are the shaders' blocks, field for field. */
typedef struct kvrt_push_kv_write { KVRT_PUSH_KV_WRITE } kvrt_push_kv_write;
typedef struct kvrt_push_attn { KVRT_PUSH_ATTN } kvrt_push_attn;
typedef struct kvrt_push_ops { KVRT_PUSH_OPS } kvrt_push_ops;
typedef struct kvrt_push_rope_shift { KVRT_PUSH_ROPE_SHIFT } kvrt_push_rope_shift;
_Static_assert(sizeof(kvrt_push_rope_shift) == 12 * 4, "rope shift push constants: 12 words");
_Static_assert(sizeof(kvrt_push_kv_write) == 13 * 4, "kv_write push constants: 13 words");
_Static_assert(offsetof(kvrt_push_kv_write, slot_off) == 48, "std430 offset of slot_off");
_Static_assert(sizeof(kvrt_push_attn) == 26 * 4, "attention push constants: 26 words");
_Static_assert(offsetof(kvrt_push_attn, scale) == 44, "std430 offset of scale");
_Static_assert(offsetof(kvrt_push_attn, tile_base) == 100, "std430 offset of tile_base");
_Static_assert(sizeof(kvrt_push_ops) == 20 * 4, "op push constants: 20 words");
_Static_assert(offsetof(kvrt_push_ops, row_hi) == 76, "std430 offset of row_hi");
_Static_assert(offsetof(kvrt_push_ops, eps) == 40, "std430 offset of eps");
_Static_assert(sizeof(kvrt_push_attn) <= 128, "push constants fit the guaranteed 128 bytes");

/* A build of a shader that needs device features (KVRT_FEATURE_* bits). */
typedef struct vk_pipe_code {
    uint32_t features;
    const uint32_t *code;
    size_t bytes;
} vk_pipe_code;

#define VK_MAX_VARIANTS 2

typedef struct vk_pipe_desc {
    const char *name;
    const uint32_t *code; /* the portable build: needs no optional feature */
    size_t bytes;
    int spec;       /* constant_id 0: -1 none, -2 shared floats for the device, else this value */
    /* Builds of the same source that use optional features, most preferred
     * first: the first whose features the device has and the context did not
     * disable is chosen, else the portable one. */
    vk_pipe_code variants[VK_MAX_VARIANTS];
} vk_pipe_desc;

#define VK_SPV(name) kvrt_spv_##name, sizeof(kvrt_spv_##name)
#define VK_SG(name) {KVRT_FEATURE_SUBGROUPS, VK_SPV(name)}
#define VK_NARROW(name) {KVRT_FEATURE_FP16, VK_SPV(name)}
/* Designated, so entries without variants leave them zero without a warning. */
#define VK_PIPE(label, spv, spec_) \
    {.name = label, .code = kvrt_spv_##spv, .bytes = sizeof(kvrt_spv_##spv), .spec = spec_}
#define VK_PIPE_V(label, spv, spec_, ...)                                                       \
    {.name = label, .code = kvrt_spv_##spv, .bytes = sizeof(kvrt_spv_##spv), .spec = spec_, \
     .variants = {__VA_ARGS__}}

static const vk_pipe_desc vk_pipe_table[KVRT_VK_PIPE_COUNT] = {
    [KVRT_VK_PIPE_KV_WRITE] = VK_PIPE_V("kv_write", kv_write, -1, VK_NARROW(kv_write_n)),
    [KVRT_VK_PIPE_ATTN_DECODE] = VK_PIPE_V("attn_decode", attn_decode, -2, VK_NARROW(attn_decode_n)),
    [KVRT_VK_PIPE_ATTN_MERGE] = VK_PIPE("attn_merge", attn_merge, -1),
    [KVRT_VK_PIPE_ATTN_PREFILL] = VK_PIPE_V("attn_prefill", attn_prefill, -2, VK_NARROW(attn_prefill_n)),
    [KVRT_VK_PIPE_ATTN_PREFILL_MERGE] = VK_PIPE("attn_prefill_merge", attn_prefill_merge, -1),
    [KVRT_VK_PIPE_MATMUL] = VK_PIPE_V("matmul", matmul, -1, VK_SG(matmul_sg)),
    [KVRT_VK_PIPE_RMSNORM] = VK_PIPE_V("rmsnorm", rmsnorm, -1, VK_SG(rmsnorm_sg)),
    [KVRT_VK_PIPE_ADD] = VK_PIPE("add", elementwise, 0),
    [KVRT_VK_PIPE_SWIGLU] = VK_PIPE("swiglu", elementwise, 1),
    [KVRT_VK_PIPE_ADD_BIAS] = VK_PIPE("add_bias", elementwise, 2),
    [KVRT_VK_PIPE_ROPE] = VK_PIPE("rope", rope, -1),
    [KVRT_VK_PIPE_EMBED] = VK_PIPE("embed", rows, 0),
    [KVRT_VK_PIPE_GATHER] = VK_PIPE("gather_rows", rows, 1),
    [KVRT_VK_PIPE_KV_WRITE_BDA] = VK_PIPE_V("kv_write (bda)", kv_write_bda, -1, VK_NARROW(kv_write_bda_n)),
    [KVRT_VK_PIPE_ATTN_DECODE_BDA] =
        VK_PIPE_V("attn_decode (bda)", attn_decode_bda, -2, VK_NARROW(attn_decode_bda_n)),
    [KVRT_VK_PIPE_ATTN_PREFILL_BDA] =
        VK_PIPE_V("attn_prefill (bda)", attn_prefill_bda, -2, VK_NARROW(attn_prefill_bda_n)),
    [KVRT_VK_PIPE_MATMUL_BDA] = VK_PIPE_V("matmul (bda)", matmul_bda, -1, VK_SG(matmul_bda_sg)),
    [KVRT_VK_PIPE_EMBED_BDA] = VK_PIPE("embed (bda)", rows_bda, 0),
    [KVRT_VK_PIPE_GATHER_BDA] = VK_PIPE("gather_rows (bda)", rows_bda, 1),
    [KVRT_VK_PIPE_MATMUL_TILED] = VK_PIPE("matmul_tiled", matmul_tiled, -1),
    [KVRT_VK_PIPE_MATMUL_TILED_BDA] = VK_PIPE("matmul_tiled (bda)", matmul_tiled_bda, -1),
    [KVRT_VK_PIPE_ROPE_SHIFT] = VK_PIPE("kv_rope_shift", kv_rope_shift, -1),
    [KVRT_VK_PIPE_ROPE_SHIFT_BDA] = VK_PIPE("kv_rope_shift (bda)", kv_rope_shift_bda, -1),
};

uint32_t kvrt_vk_prefill_smem_floats(const kvrt_vk_backend *vk)
{
    /* all of the device's shared memory, capped where bigger tiles stop paying */
    uint32_t bytes = KVRT_MIN(vk->caps.shared_bytes, 48u * 1024u);
    if (vk->debug.max_shared_bytes)
        bytes = KVRT_MIN(bytes, vk->debug.max_shared_bytes);
    return bytes / 4;
}

kvrt_status kvrt_vk_pipelines_init(kvrt_vk_backend *vk)
{
    return kvrt_vk_pcache_init(vk); /* pipelines themselves are lazy */
}

void kvrt_vk_pipelines_finish(kvrt_vk_backend *vk)
{
    kvrt_vk_pcache_finish(vk);
    for (int i = 0; i < KVRT_VK_PIPE_COUNT; i++)
        if (vk->pipes[i])
            vk->vk.vkDestroyPipeline(vk->device, vk->pipes[i], NULL);
}

kvrt_status kvrt_vk_pipeline(kvrt_vk_backend *vk, kvrt_vk_pipe_id id, VkPipeline *out)
{
    if (vk->pipes[id]) {
        *out = vk->pipes[id];
        return KVRT_OK;
    }
    const vk_pipe_desc *d = &vk_pipe_table[id];
    /* caps.features already excludes what the context disabled */
    vk_pipe_code chosen = {0, d->code, d->bytes};
    for (int i = 0; i < VK_MAX_VARIANTS && d->variants[i].code; i++) {
        if ((vk->caps.features & d->variants[i].features) == d->variants[i].features) {
            chosen = d->variants[i];
            break;
        }
    }
    VkShaderModuleCreateInfo mci = {.sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
                                    .codeSize = chosen.bytes, .pCode = chosen.code};
    VkShaderModule mod;
    VkResult r = vk->vk.vkCreateShaderModule(vk->device, &mci, NULL, &mod);
    if (r != VK_SUCCESS)
        return kvrt_fail(&vk->base.err, KVRT_ERR_KERNEL_BUILD, "vulkan: shader %s rejected: %s", d->name,
                         kvrt_vk_result_name(r).s);
    uint32_t smem = d->spec == -2 ? kvrt_vk_prefill_smem_floats(vk) : (uint32_t)d->spec;
    VkSpecializationMapEntry me = {.constantID = 0, .offset = 0, .size = sizeof(uint32_t)};
    VkSpecializationInfo si = {.mapEntryCount = 1, .pMapEntries = &me, .dataSize = sizeof(smem), .pData = &smem};
    VkComputePipelineCreateInfo ci = {
        .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
        .stage = {.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO, .stage = VK_SHADER_STAGE_COMPUTE_BIT,
                  .module = mod, .pName = "main", .pSpecializationInfo = d->spec != -1 ? &si : NULL},
        .layout = vk->pipe_layout};
    r = vk->vk.vkCreateComputePipelines(vk->device, vk->pcache.cache, 1, &ci, NULL, &vk->pipes[id]);
    vk->vk.vkDestroyShaderModule(vk->device, mod, NULL);
    if (r != VK_SUCCESS) {
        vk->pipes[id] = VK_NULL_HANDLE;
        return kvrt_fail(&vk->base.err, KVRT_ERR_KERNEL_BUILD, "vulkan: pipeline %s failed: %s", d->name,
                         kvrt_vk_result_name(r).s);
    }
    vk->pipe_features[id] = chosen.features;
    vk->pcache.dirty = true;
    vk->pcache.stats.created++;
    *out = vk->pipes[id];
    return KVRT_OK;
}

bool kvrt_vk_pipeline_variant(kvrt_backend *be, const char *name, uint32_t *features)
{
    kvrt_vk_backend *vk = kvrt_vk(be);
    for (int i = 0; i < KVRT_VK_PIPE_COUNT; i++) {
        if (vk->pipes[i] && strcmp(vk_pipe_table[i].name, name) == 0) {
            *features = vk->pipe_features[i];
            return true;
        }
    }
    return false;
}
