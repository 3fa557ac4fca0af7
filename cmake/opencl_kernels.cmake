# OpenCL C kernels embedded in the library (DESIGN.md: built at run time,
# lazily). Each runtime/backend/opencl/kernels/*.cl and *.h becomes a generated
# header in the build tree, generated/opencl/<name>_src.h, defining
#   static const char kvrt_cl_src_<name>[] = {..., 0};
# The conversion is this same file run in script mode, so no Python is needed.

if(CMAKE_SCRIPT_MODE_FILE)
  # cmake -DKVRT_IN=file -DKVRT_OUT=header -DKVRT_NAME=ident -P opencl_kernels.cmake
  file(READ "${KVRT_IN}" hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
  file(WRITE "${KVRT_OUT}.tmp"
    "/* Generated from ${KVRT_IN}; do not edit. */\n"
    "static const char kvrt_cl_src_${KVRT_NAME}[] = {\n${bytes}0x00};\n")
  file(RENAME "${KVRT_OUT}.tmp" "${KVRT_OUT}")
  return()
endif()

file(GLOB KVRT_CL_KERNEL_FILES CONFIGURE_DEPENDS
  ${CMAKE_CURRENT_SOURCE_DIR}/runtime/backend/opencl/kernels/*.cl
  ${CMAKE_CURRENT_SOURCE_DIR}/runtime/backend/opencl/kernels/*.h)
set(KVRT_CL_GENERATED)
foreach(src ${KVRT_CL_KERNEL_FILES})
  get_filename_component(name ${src} NAME_WE)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/generated/opencl/${name}_src.h)
  add_custom_command(OUTPUT ${out}
    COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_CURRENT_BINARY_DIR}/generated/opencl
    COMMAND ${CMAKE_COMMAND} -DKVRT_IN=${src} -DKVRT_OUT=${out} -DKVRT_NAME=${name}
            -P ${CMAKE_CURRENT_SOURCE_DIR}/cmake/opencl_kernels.cmake
    DEPENDS ${src} ${CMAKE_CURRENT_SOURCE_DIR}/cmake/opencl_kernels.cmake
    COMMENT "Embedding OpenCL source ${name}"
    VERBATIM)
  list(APPEND KVRT_CL_GENERATED ${out})
endforeach()
add_custom_target(kvrt_opencl_kernels DEPENDS ${KVRT_CL_GENERATED})
