/* hash.h - one 64-bit string hash for the places that need a cheap,
 * deterministic one: the buffer's group-id sets and a worker's per-group
 * sampling seed (so every run and every worker derives the same seed from a
 * group id).
 *
 * It is FNV-1a's loop with an offset basis one digit short of FNV's
 * (1469598103934665603, not 14695981039346656037). It still mixes well enough
 * for both uses; it is kept as it is because the seeds of every recorded run
 * (docs/experiments) derive from it.
 */
#ifndef TIDAL_PROTO_HASH_H
#define TIDAL_PROTO_HASH_H

#include <stdint.h>

static inline uint64_t hash_string(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

#endif
