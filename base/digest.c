/* digest.c - BLAKE3-256 digests of weights (see digest.h). */
#include "base/digest.h"

#include <string.h>

#include <blake3.h> /* a library (librust-blake3-dev's C sources, built by CMakeLists.txt) */

_Static_assert(sizeof(blake3_hasher) <= sizeof(digest_state), "digest_state: too small for blake3_hasher");
_Static_assert(_Alignof(blake3_hasher) <= 16, "digest_state: blake3_hasher needs more alignment");

static blake3_hasher *hasher(digest_state *s) { return (blake3_hasher *)(void *)s->opaque; }

void digest_init(digest_state *s) { blake3_hasher_init(hasher(s)); }

void digest_update(digest_state *s, const void *data, size_t len)
{
    if (len) blake3_hasher_update(hasher(s), data, len);
}

void digest_final(const digest_state *s, uint8_t out[DIGEST_BYTES])
{
    blake3_hasher_finalize((const blake3_hasher *)(const void *)s->opaque, out, DIGEST_BYTES);
}

void digest_compute(const void *data, size_t len, uint8_t out[DIGEST_BYTES])
{
    digest_state s;
    digest_init(&s);
    digest_update(&s, data, len);
    digest_final(&s, out);
}

int digest_equal(const uint8_t a[DIGEST_BYTES], const uint8_t b[DIGEST_BYTES])
{
    return memcmp(a, b, DIGEST_BYTES) == 0;
}

void digest_hex(const uint8_t *d, int n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    if (n > DIGEST_BYTES) n = DIGEST_BYTES;
    for (int i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * (n < 0 ? 0 : n)] = '\0';
}
