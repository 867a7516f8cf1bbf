/* json_value.h - two jansson helpers the JSON readers of model/ share
 * (config.json, tokenizer.json): reading a key with null as absent, and
 * describing a value for an error message ("a string (\"896\")"). */
#ifndef TIDAL_MODEL_JSON_VALUE_H
#define TIDAL_MODEL_JSON_VALUE_H

#include <jansson.h>
#include <stddef.h>

/* obj[key], with JSON null read as absent (NULL). */
json_t *jv_get(const json_t *obj, const char *key);

/* What v is, into buf: "missing", "an object", "a string (\"...\")", ... */
void jv_describe(const json_t *v, char *buf, size_t cap);

#endif
