/* json.h - the jansson helpers the JSON readers share (config.json,
 * tokenizer.json): reading a key with null as absent, describing a value for
 * an error message ("a string (\"896\")"), and the error naming file and field. */
#ifndef TIDAL_BASE_JSON_H
#define TIDAL_BASE_JSON_H

#include <jansson.h>
#include <stddef.h>

#include "base/status.h"

/* obj[key], with JSON null read as absent (NULL). */
json_t *jv_get(const json_t *obj, const char *key);

/* Record TIDAL_ERR_INVALID "<name>: <field>: <printf text>" and return it
 * (name: the file, field: the JSON path). */
tidal_status jv_bad(const char *name, const char *field, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* What v is, into buf: "missing", "an object", "a string (\"...\")", ... */
void jv_describe(const json_t *v, char *buf, size_t cap);

#endif
