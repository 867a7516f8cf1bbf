/* json.c - shared jansson helpers (see json.h). */
#include "base/json.h"

#include <stdarg.h>
#include <stdio.h>

json_t *jv_get(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

void jv_describe(const json_t *v, char *buf, size_t cap)
{
    if (!v) {
        snprintf(buf, cap, "missing");
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: snprintf(buf, cap, "an object"); break;
    case JSON_ARRAY: snprintf(buf, cap, "an array"); break;
    case JSON_STRING: snprintf(buf, cap, "a string (\"%.40s\")", json_string_value(v)); break;
    case JSON_INTEGER: snprintf(buf, cap, "an integer (%" JSON_INTEGER_FORMAT ")", json_integer_value(v)); break;
    case JSON_REAL: snprintf(buf, cap, "a real number (%g)", json_real_value(v)); break;
    case JSON_TRUE: snprintf(buf, cap, "true"); break;
    case JSON_FALSE: snprintf(buf, cap, "false"); break;
    case JSON_NULL: snprintf(buf, cap, "null"); break;
    }
}

tidal_status jv_bad(const char *name, const char *field, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    return tidal_fail(TIDAL_ERR_INVALID, "%s: %s: %s", name, field, text);
}
