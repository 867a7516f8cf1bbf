# embed.cmake - turn a text file into a NUL-terminated C array at build time:
#   cmake -DIN=file -DOUT=header.h -DNAME=symbol -P cmake/embed.cmake
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," arr "${hex}")
file(WRITE ${OUT} "/* generated from ${IN} by cmake/embed.cmake */\nstatic const char ${NAME}[] = {${arr}0};\n")
