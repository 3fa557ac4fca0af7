# GLSL compute shaders -> SPIR-V (glslc, with depfiles) -> aligned uint32_t
# arrays in generated headers under the build tree (never the source tree).
# Included by CMakeLists.txt when KVRT_VULKAN is ON; defines kvrt_shaders.

set(KVRT_SHADER_OUT ${CMAKE_CURRENT_BINARY_DIR}/generated/shaders)
file(MAKE_DIRECTORY ${KVRT_SHADER_OUT})
file(GLOB KVRT_SHADER_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/shaders/*.comp)

# Shaders that touch KV pools or segment-spanning weights are built a second
# time with -DKVRT_BDA: the variant that reaches segments through buffer
# device addresses.
set(KVRT_BDA_SHADERS kv_write kv_rope_shift attn_decode attn_prefill matmul matmul_tiled rows)
# Feature variants of the same source (pipelines pick them at run time, see
# runtime/backend/vulkan/vk_pipelines.c), each also built in its BDA form:
#   _sg  -DKVRT_SUBGROUP: reductions with subgroup arithmetic;
#   _n   -DKVRT_NARROW: F16 KV (and weights) through 16-bit storage loads and
#        stores instead of packed 32-bit words.
set(KVRT_SUBGROUP_SHADERS rmsnorm matmul)
set(KVRT_NARROW_SHADERS kv_write attn_decode attn_prefill)

set(KVRT_SHADER_HEADERS)
function(kvrt_add_shader src name defines)
  set(spv ${KVRT_SHADER_OUT}/${name}.spv)
  set(hdr ${KVRT_SHADER_OUT}/${name}.spv.h)
  add_custom_command(
    OUTPUT ${spv}
    COMMAND ${KVRT_GLSLC} -O --target-env=vulkan1.2 -MD -MF ${spv}.d ${defines}
            -I ${CMAKE_CURRENT_SOURCE_DIR}/shaders -o ${spv} ${src}
    DEPENDS ${src}
    DEPFILE ${spv}.d
    COMMENT "glslc ${name}"
    VERBATIM)
  add_custom_command(
    OUTPUT ${hdr}
    COMMAND ${CMAKE_COMMAND} -DSPV=${spv} -DHDR=${hdr} -DNAME=${name}
            -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/embed_spirv.cmake
    DEPENDS ${spv} ${CMAKE_CURRENT_SOURCE_DIR}/cmake/embed_spirv.cmake
    COMMENT "embed ${name}.spv"
    VERBATIM)
  set(KVRT_SHADER_HEADERS ${KVRT_SHADER_HEADERS} ${hdr} PARENT_SCOPE)
endfunction()

# Builds name<suffix> with the given defines and its feature variants.
function(kvrt_add_shader_variants src name suffix defines)
  kvrt_add_shader(${src} ${name}${suffix} "${defines}")
  if(name IN_LIST KVRT_SUBGROUP_SHADERS)
    kvrt_add_shader(${src} ${name}${suffix}_sg "${defines};-DKVRT_SUBGROUP")
  endif()
  if(name IN_LIST KVRT_NARROW_SHADERS)
    kvrt_add_shader(${src} ${name}${suffix}_n "${defines};-DKVRT_NARROW")
  endif()
  set(KVRT_SHADER_HEADERS ${KVRT_SHADER_HEADERS} PARENT_SCOPE)
endfunction()

foreach(src ${KVRT_SHADER_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  kvrt_add_shader_variants(${src} ${name} "" "")
  if(name IN_LIST KVRT_BDA_SHADERS)
    kvrt_add_shader_variants(${src} ${name} _bda "-DKVRT_BDA")
  endif()
endforeach()
add_custom_target(kvrt_shaders DEPENDS ${KVRT_SHADER_HEADERS})

# The push-constant header is shared by GLSL and C: C code finds it next to the
# generated SPIR-V headers (configure_file re-copies it when it changes).
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/shaders/kvrt_push.h
  ${CMAKE_CURRENT_BINARY_DIR}/generated/kvrt_push.h COPYONLY)

# Private names for volk's globals (see volk_rename.cmake).
include(${CMAKE_CURRENT_LIST_DIR}/volk_rename.cmake)
