# Writes OUT, a C file defining f2_header_text() as the bytes of IN (hex, so nothing needs escaping).
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE ${OUT} "/* generated from runtime/f2.h by cmake/embed_header.cmake */\n"
     "static const char text[] = {${bytes}0};\nconst char *f2_header_text(void) { return text; }\n")
