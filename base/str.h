/* str.h - heap-allocated printf, the one every module shares.
 *
 * Paths, prompts and observations are built with it; the caller owns the
 * result and frees it with free(). NULL means out of memory (or a format
 * error), never a truncated string.
 */
#ifndef TIDAL_BASE_STR_H
#define TIDAL_BASE_STR_H

#include <stdarg.h>

char *str_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same with a va_list, which it consumes as vsnprintf does (the caller va_ends it). */
char *str_vprintf(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));

#endif
