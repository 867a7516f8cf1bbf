/* str.c - heap-allocated printf (see str.h). */
#include "base/str.h"

#include <stdio.h>
#include <stdlib.h>

char *str_vprintf(const char *fmt, va_list ap)
{
    va_list sizing;
    va_copy(sizing, ap);
    int n = vsnprintf(NULL, 0, fmt, sizing);
    va_end(sizing);
    if (n < 0) return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s) return NULL;
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

char *str_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = str_vprintf(fmt, ap);
    va_end(ap);
    return s;
}
