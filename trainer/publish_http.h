/* publish_http.h - the trainer's weights server for `weights.transport: http`
 * (docs/protocol.md "Weights over HTTP").
 *
 * An HTTP/1.1 server (libmicrohttpd, a thread per connection, keep-alive)
 * that serves the safetensors image of each of the newest `keep` versions at
 * GET /weights/<version>, whole or one byte range (Range: bytes=a-b, a-,
 * -n; 206 with Content-Range), sent from an in-memory copy on huge pages.
 * With a token every request must carry "Authorization: Bearer
 * <token>" (401 otherwise). An image is freed when it is pruned and the last
 * response reading it is done.
 */
#ifndef TIDAL_TRAINER_PUBLISH_HTTP_H
#define TIDAL_TRAINER_PUBLISH_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct weights_http weights_http;

typedef struct weights_http_opts {
    const char *bind;     /* "IPv4:port" (port 0: a free one); NULL or "": 127.0.0.1:0 */
    const char *base_url; /* what workers fetch from, "http://host:port"; NULL or "": from the bind
                             (0.0.0.0: this host's name) with the bound port */
    const char *token;    /* bearer token every request must carry; NULL or "": none (loopback binds only) */
    int keep;             /* versions served, >= 1 */
} weights_http_opts;

/* Listen on o->bind. A bind beyond loopback without a token is refused
 * (TIDAL_ERR_INVALID naming weights.http_bind and the environment variables):
 * the weights would be open to anyone who can reach the port. */
tidal_status weights_http_start(const weights_http_opts *o, weights_http **out);

/* The base URL workers fetch from ("http://host:port", no trailing slash). */
const char *weights_http_base_url(const weights_http *h);

/* Serve a copy of image[len] (the caller keeps its own) as `version`,
 * replacing a version of that number, and stop serving versions beyond the
 * newest `keep`. */
tidal_status weights_http_add(weights_http *h, uint64_t version, const void *image, size_t len);

/* Test hook (tests/integration/test_weights_http.c): from now on every
 * response sends `after_bytes` bytes of its body and then stops sending
 * (the connection stays open and silent) until the server stops. */
void weights_http_test_stall(weights_http *h, uint64_t after_bytes);

/* Stop listening, end the connections (joined) and free every image. */
void weights_http_stop(weights_http *h);

#endif
