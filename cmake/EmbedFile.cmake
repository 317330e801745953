# cmake -DINPUT=<file> -DOUTPUT=<file.cc> -DNAME=<function> -DNAMESPACE=<ns> -P EmbedFile.cmake
#
# Writes a C++ source defining `std::string_view NAMESPACE::NAME()` that returns INPUT's bytes, so
# that a static file (the playground page) is compiled into a binary without a build step of its
# own. Run by a custom command, so the source is rewritten whenever INPUT changes.
file(READ "${INPUT}" _hex HEX)
string(LENGTH "${_hex}" _length)
math(EXPR _size "${_length} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," _bytes "${_hex}")
get_filename_component(_input_name "${INPUT}" NAME)
file(WRITE "${OUTPUT}.tmp"
"// Generated from ${_input_name} by cmake/EmbedFile.cmake; do not edit.\n"
"#include <string_view>\n\n"
"namespace ${NAMESPACE} {\n"
"namespace {\n"
"constexpr char kBytes[] = {\n    ${_bytes}'\\0'};\n"
"}  // namespace\n\n"
"std::string_view ${NAME}() { return std::string_view(kBytes, ${_size}); }\n\n"
"}  // namespace ${NAMESPACE}\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")
