/* delta.h - a weights image as a compressed difference from the previous one
 * (weights.delta, docs/protocol.md "Delta versions").
 *
 * Consecutive versions of a model's safetensors image have the same layout
 * and differ in few values, so version v goes as the XOR of its bytes with
 * those of its base (v's predecessor on the wire): unchanged values become
 * zeros. The XOR's tensor data is split into byte planes (every value's first
 * byte, then every second byte, ...: a bf16 value's sign and exponent byte
 * barely changes, its low mantissa byte does), and the whole compressed with
 * zstd. Applying it to the base gives the new image bit for bit; the caller
 * checks that against the digest its manifest carries.
 *
 * Layout of an encoded delta (little-endian): "TDLT", u8 format 1, u8 value
 * bytes, u16 0, u64 image bytes, u64 data offset (where the byte planes start:
 * the safetensors header is XORed as it is), then one zstd frame of the image
 * bytes' XOR, transformed.
 */
#ifndef TIDAL_MODEL_DELTA_H
#define TIDAL_MODEL_DELTA_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

#define DELTA_HEADER_BYTES 24

/* What changed between the two images. */
typedef struct delta_stats {
    uint64_t values;  /* values in the tensor data */
    uint64_t changed; /* of which differ in any bit */
} delta_stats;

/* The delta that turns base into next (both `len` bytes, a safetensors image
 * whose values are value_bytes wide: 2 for bf16, 4 for fp32), compressed at
 * zstd level `level` (1 is fast; 0 means 1). *out is malloc'd; *stats (may be
 * NULL) counts the values that changed. TIDAL_ERR_INVALID for a value size
 * other than 1, 2 or 4 or an image that is not safetensors. */
tidal_status delta_encode(const void *base, const void *next, size_t len, int value_bytes, int level, void **out,
                          size_t *out_len, delta_stats *stats);

/* The image delta d (d_len bytes, from delta_encode) makes of base
 * (base_len bytes): *out malloc'd, *out_len bytes. TIDAL_ERR_CORRUPT, naming
 * `what`, for a delta that is not one, is cut short, does not decompress, or
 * is for an image of another size than base. */
tidal_status delta_apply(const void *base, size_t base_len, const void *d, size_t d_len, const char *what,
                         void **out, size_t *out_len);

/* The same, in place: image (len bytes, the base) becomes the new image.
 * The delta is decompressed a window at a time (no image-sized buffer), so a
 * worker rebuilds a version without allocating or faulting in fresh memory.
 * On an error (as delta_apply's) the image is left part-way: discard it. */
tidal_status delta_apply_inplace(void *image, size_t len, const void *d, size_t d_len, const char *what);

/* The image bytes a delta rebuilds (from its header), or 0 when d is not a delta. */
uint64_t delta_image_bytes(const void *d, size_t d_len);

#endif
