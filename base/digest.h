/* digest.h - the 32-byte content digest of weights (BLAKE3): each chunk of a
 * chunked blob, each HTTP range, a shared directory's file and a delta's
 * rebuilt image are named by it in the signed manifest (docs/protocol.md,
 * "Digests").
 *
 * Why BLAKE3 and not SHA-256: every byte of every version is hashed once by
 * the trainer and once by each worker, on the cores that also move the bytes.
 * SHA-256 (even with the x86 SHA extensions) runs at ~1.8 GB/s a core and
 * held a worker's verified fetch to half of curl's speed; BLAKE3 runs at
 * ~4 GB/s a core on the same machine with the same 256-bit security claim.
 * The implementation is the BLAKE3 team's C library (built from the sources
 * Debian ships in librust-blake3-dev), which picks SSE2..AVX-512 at run time.
 */
#ifndef TIDAL_BASE_DIGEST_H
#define TIDAL_BASE_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define DIGEST_BYTES 32
/* The name manifests carry for it (WeightsManifest.digest_algorithm). */
#define DIGEST_ALGORITHM "blake3"

/* An incremental digest: digest_init, any number of digest_update, then
 * digest_final. Room for the library's hasher (~1.9 KB: fine on a stack);
 * opaque so that including this header needs no BLAKE3 header. */
typedef struct {
    _Alignas(16) unsigned char opaque[1984];
} digest_state;

/* out = the BLAKE3-256 digest of len bytes at data (len may be 0). */
void digest_compute(const void *data, size_t len, uint8_t out[DIGEST_BYTES]);

void digest_init(digest_state *s);
void digest_update(digest_state *s, const void *data, size_t len);
/* The digest of everything given since digest_init; s may be updated further
 * (the library's finalize does not consume the state). */
void digest_final(const digest_state *s, uint8_t out[DIGEST_BYTES]);

/* true when a and b are the same digest. */
int digest_equal(const uint8_t a[DIGEST_BYTES], const uint8_t b[DIGEST_BYTES]);

/* The first n bytes of d as 2n lower-case hex digits, NUL-terminated (out
 * holds 2n + 1 bytes; n <= DIGEST_BYTES) - for messages. */
void digest_hex(const uint8_t *d, int n, char *out);

#endif
