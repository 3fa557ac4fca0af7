# cmake -DSPV=in.spv -DHDR=out.h -DNAME=ident -P embed_spirv.cmake
# Writes `static const uint32_t kvrt_spv_NAME[]` (SPIR-V words are 4-byte
# little-endian, so the array is naturally aligned for vkCreateShaderModule).
file(READ ${SPV} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR rem "${n} % 8")
if(n EQUAL 0 OR NOT rem EQUAL 0)
  message(FATAL_ERROR "${SPV}: not a whole number of SPIR-V words")
endif()
string(REGEX REPLACE "(..)(..)(..)(..)" "0x\\4\\3\\2\\1u," words "${hex}")
string(REGEX REPLACE "((0x........u,){8})" "\\1\n    " words "${words}")
file(WRITE ${HDR}.tmp "/* generated (${NAME}) by cmake/embed_spirv.cmake: do not edit */\n"
  "#include <stdint.h>\n"
  "static const uint32_t kvrt_spv_${NAME}[] = {\n    ${words}\n};\n")
file(RENAME ${HDR}.tmp ${HDR})
