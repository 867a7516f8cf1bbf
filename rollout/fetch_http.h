/* fetch_http.h - a worker's fetch of a weights image from the trainer's HTTP
 * server (`weights.transport: http`, docs/protocol.md "Weights over HTTP").
 *
 * The image is fetched as `parallel` Range requests in flight at once on one
 * libcurl multi handle, each a contiguous run of the manifest's chunks
 * (http_chunk_bytes each), written straight into its place in the image and
 * hashed chunk by chunk as it arrives; a chunk whose digest is not the
 * manifest's is asked for once more on its own (keep-alive connections
 * reused), then the fetch fails. The manifest's
 * signature covers the range hashes, so a fetch that returns has every byte
 * vouched for by the trainer's key.
 */
#ifndef TIDAL_ROLLOUT_FETCH_HTTP_H
#define TIDAL_ROLLOUT_FETCH_HTTP_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"
#include "tidal.pb-c.h"

typedef struct fetch_http_opts {
    const char *token;  /* bearer token sent with every request; NULL: none */
    int stall_ms;       /* fail when no byte arrives (or no connection is made) for this long; <= 0: 10000 */
    int parallel;       /* Range requests (connections) in flight; <= 0: 4 */
    bool (*cancelled)(void *ctx); /* polled between transfers' progress; true: TIDAL_ERR_CANCELLED */
    void *cancelled_ctx;
    void **reuse;       /* optional: a buffer from an earlier fetch (*reuse, reuse_cap bytes, from this
                           function), written into instead of fresh memory when it is large enough - its
                           pages are faulted in already; taken (*reuse = NULL) when used */
    uint64_t reuse_cap;
} fetch_http_opts;

/* Fetch the image manifest w (transport "http", validated) names into a
 * buffer of w->bytes (*image, *len; free() it, or hand it back as reuse). Errors say why, with the URL:
 * TIDAL_ERR_TIMEOUT (no progress for stall_ms: the server stopped answering),
 * TIDAL_ERR_PERMISSION (401/403: the token), TIDAL_ERR_NOT_FOUND (404: the
 * version is no longer served), TIDAL_ERR_CORRUPT (a chunk's hash twice
 * wrong, or a short response), TIDAL_ERR_REMOTE (other statuses, connection
 * failures). */
tidal_status fetch_http_image(const Tidal__V1__WeightsManifest *w, const fetch_http_opts *o, void **image,
                              uint64_t *len);

/* Test hook (tests/integration/test_weights_http.c): the next fetch flips
 * the first byte of chunk `chunk` as it arrives, once (the second asking
 * must then verify). -1: off. Returns the chunk that was still waiting to be
 * flipped (-1: none, so the last one was). */
int fetch_http_test_corrupt_chunk(int chunk);

#endif
