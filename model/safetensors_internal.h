/* safetensors_internal.h - what model/safetensors.c shares with
 * model/modeldir.c, and with no other file: the messages that name a file and
 * a tensor, and the size bound on JSON read from outside. Not a public header
 * (docs/architecture.md: nothing includes another folder's internals).
 */
#ifndef TIDAL_MODEL_SAFETENSORS_INTERNAL_H
#define TIDAL_MODEL_SAFETENSORS_INTERNAL_H

#include <stddef.h>

#include "base/status.h"

/* The reference implementation's bound on the header (a guard against
 * allocating gigabytes for a hostile length field); an index file is held to
 * it too. */
#define ST_MAX_HEADER 100000000ull

/* A name fit for a message, written into buf: at most 96 bytes of s (fewer
 * when cap is small; cap >= 5), control characters as '?', "..." when cut.
 * Returns buf. */
const char *st_safe_name(char *buf, size_t cap, const char *s);

/* Record TIDAL_ERR_INVALID "FILE: tensor \"NAME\": <printf text>", both names
 * made safe, and return it. */
__attribute__((format(printf, 3, 4)))
tidal_status st_bad_tensor(const char *file, const char *tensor, const char *fmt, ...);

#endif
