/* weights_fetch.h - a worker's ways to the image a WeightsManifest describes
 * besides reading one whole blob (rollout/weights.h): from the trainer's
 * shared directory (transport dir), and rebuilt from delta versions
 * (weights.delta; docs/protocol.md "Shared directory", "Delta versions").
 */
#ifndef TIDAL_ROLLOUT_WEIGHTS_FETCH_H
#define TIDAL_ROLLOUT_WEIGHTS_FETCH_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "bus/bus.h"
#include "proto/codec.h"

/* The image a worker built last, kept as the next delta's base. */
typedef struct weights_base {
    void *image; /* NULL: none */
    size_t len;
    uint64_t version;
} weights_base;

/* Transport dir: W->dir/model.safetensors read whole (*image malloc'd),
 * checked against the manifest's size and digest (TIDAL_ERR_CORRUPT naming
 * the file), TIDAL_ERR_IO when it cannot be read (pruned, not mounted). */
tidal_status weights_fetch_dir(const Tidal__V1__WeightsManifest *w, void **image, size_t *len);

/* The image delta version w rebuilds. d[dlen] is w's blob (already checked
 * against w's digest). Applied in place to base's image when base holds w's
 * delta_base (or a version of w's chain: the deltas after it first) - the
 * image is taken from base (base->image becomes NULL) and becomes the result
 * or is freed; otherwise, or when that does not give the manifest's
 * image_digest, the chain from its full image (chain[0]) is read from store
 * and applied. The result must have image_bytes and image_digest
 * (TIDAL_ERR_CORRUPT otherwise). *fetched gets the bytes of the other blobs
 * read. */
tidal_status weights_delta_rebuild(bus_blob_store *store, const Tidal__V1__WeightsManifest *w, const void *d,
                                   size_t dlen, weights_base *base, void **image, size_t *len,
                                   uint64_t *fetched);

#endif
