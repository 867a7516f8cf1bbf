/* hash.h - the deterministic hashes and the seeded stream every module shares,
 * so that a seed means the same thing in the model's initialisation, the
 * engine's sampler, an environment's task generator and the data order, on
 * every machine.
 *
 * hash_string: FNV-1a's loop with an offset basis one digit short of FNV's
 * (1469598103934665603, not 14695981039346656037). It mixes well enough for
 * the buffer's group-id sets and a worker's per-group sampling seed; it is
 * kept as it is because the seeds of every recorded run (docs/experiments)
 * derive from it.
 *
 * splitmix64_next: Steele, Lea and Flood's SplitMix64, one 64-bit output per
 * call from a state that advances by the golden-ratio increment.
 * mix64(z): the output SplitMix64 gives from state z (a stateless 64-bit
 * mixer: seed ^ mix64(index) and the like).
 */
#ifndef TIDAL_BASE_HASH_H
#define TIDAL_BASE_HASH_H

#include <stdint.h>

static inline uint64_t hash_string(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static inline uint64_t splitmix64_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t mix64(uint64_t z) { return splitmix64_next(&z); }

#endif
