# cmake -DIN=file -DOUT=out.c -DNAME=ident -P embed_file.cmake
# Writes `const unsigned char NAME[]` (the bytes of IN plus a NUL) and
# `const size_t NAME_len` (without the NUL), so a tool carries a static file.
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "(..)" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n    " bytes "${bytes}")
file(WRITE ${OUT}.tmp "/* generated from ${IN} by cmake/embed_file.cmake: do not edit */\n"
  "#include <stddef.h>\n"
  "const unsigned char ${NAME}[] = {\n    ${bytes}0x00\n};\n"
  "const size_t ${NAME}_len = ${len};\n")
file(RENAME ${OUT}.tmp ${OUT})
