// Sum of one float over the 64 invocations of a workgroup, returned to every
// invocation. Include after the push constants; the shader enables
// GL_KHR_shader_subgroup_arithmetic when built with -DKVRT_SUBGROUP.
// Portable: a tree through shared memory (seven barriers). KVRT_SUBGROUP:
// each subgroup sums its lanes with subgroupAdd and only the per-subgroup
// partials meet in shared memory (one barrier). Callers that reduce again
// must put a barrier between two calls (the partials are reused).
shared float s_sum[64]; // portable: one per invocation; subgroup: one per subgroup

float wg_sum(float acc, uint tid)
{
#ifdef KVRT_SUBGROUP
    float part = subgroupAdd(acc);
    if (subgroupElect())
        s_sum[gl_SubgroupID] = part;
    barrier();
    // every invocation adds the few partials itself: no second barrier
    float total = 0.0;
    for (uint s = 0u; s < gl_NumSubgroups; s++)
        total += s_sum[s];
    return total;
#else
    s_sum[tid] = acc;
    barrier();
    for (uint s = 32u; s > 0u; s >>= 1) {
        if (tid < s)
            s_sum[tid] += s_sum[tid + s];
        barrier();
    }
    return s_sum[0];
#endif
}
