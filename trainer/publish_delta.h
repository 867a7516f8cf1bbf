/* publish_delta.h - the trainer's side of weights.delta (docs/protocol.md
 * "Delta versions"): which versions go as deltas, what each delta is
 * against, and which blobs the stream must keep.
 *
 * Version v goes as a delta (model/delta.h) against the previous version
 * published, unless: there is none (the first version, a restarted trainer),
 * the chain since the last full image already holds full_every versions, the
 * image's layout changed, or the deltas since the last full image would then
 * weigh more than one image (a worker without a base would fetch more than
 * an image: a full image is cheaper). The blobs from the last full image on,
 * and the newest `keep`, stay in the stream; older ones are deleted (and the
 * blob store, opened with a bound of full_every + keep, drops what an earlier
 * life of the trainer left).
 */
#ifndef TIDAL_TRAINER_PUBLISH_DELTA_H
#define TIDAL_TRAINER_PUBLISH_DELTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "bus/bus.h"
#include "model/delta.h"

typedef struct delta_chain {
    int full_every, keep;
    void *base;            /* the last image published (owned) */
    size_t base_len;
    uint64_t base_version;
    uint64_t *chain;       /* the last full image's version, then the deltas' since */
    size_t n_chain, cap_chain;
    uint64_t delta_bytes;  /* the deltas' bytes since the last full image */
    uint64_t *stored;      /* versions in the stream, oldest first */
    size_t n_stored, cap_stored;
} delta_chain;

/* What goes on the wire for one version. */
typedef struct delta_wire {
    const void *data;      /* the blob: the image, or `owned` */
    size_t len;
    void *owned;           /* the encoded delta (NULL for a full image) */
    bool delta;
    uint64_t base;         /* delta: its base version */
    uint8_t image_digest[32]; /* digest of the image */
    delta_stats stats;     /* delta: values changed since the base */
} delta_wire;

/* The wire form of version v's image (value_bytes wide values). The image
 * must stay valid until delta_chain_commit or delta_wire_clear. */
tidal_status delta_chain_prepare(delta_chain *c, uint64_t v, const void *image, size_t len, int value_bytes,
                                 delta_wire *out);

/* Version v is on the bus as w: it becomes the base (taking *image: set to
 * NULL), joins the chain, and blobs no longer needed are deleted from store. */
void delta_chain_commit(delta_chain *c, bus_blob_store *store, uint64_t v, void **image, size_t len,
                        const delta_wire *w);

void delta_wire_clear(delta_wire *w);
void delta_chain_free(delta_chain *c);

#endif
