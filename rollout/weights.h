/* weights.h - a rollout worker's weight sync client (docs/design.md "The bus", docs/protocol.md "Weights").
 *
 * A background thread watches KV TIDAL_J key `weights.latest`. For each
 * manifest newer than what it holds it fetches the blob "<version>" from
 * stream TIDAL_J_WEIGHTS as the manifest's embedded blob manifest lays it out
 * (several chunks in flight, each checked against its signed digest and
 * fetched again when it fails), and builds a model from it
 * (the manifest's config.json when it has one, else the config given at
 * creation; every tensor present with its shape). The worker takes the
 * newest ready model at a decode-step boundary (weights_client_take) or
 * blocks for a minimum version before starting a prompt (weights_client_wait).
 * Every manifest must be signed by the job's key (docs/protocol.md "Signed
 * weights"): the key given at creation (the spec's weights.public_key), else
 * the one in KV `trainer.pubkey`, read once and kept for the client's life.
 * A manifest that is unsigned or whose signature does not verify is refused
 * before anything is fetched: logged (version, why), counted in
 * stats.refused, and it never displaces a good manifest - the worker keeps
 * generating with the last good version.
 * A manifest that fails (does not decode, corrupt, wrong shapes) is logged,
 * counted and skipped; a later one is tried as usual. A version is tried
 * once, unless it is published again with other weights (another digest).
 * A manifest of transport "http" is fetched from the trainer's HTTP server
 * (rollout/fetch_http.h: parallel Range requests, each range's hash checked
 * against the signed manifest); when that fails (no answer, stalled, refused
 * token, a range twice corrupt) the reason is logged and the bus copy, blob
 * "<version>", is taken instead (checked against the manifest's digest),
 * counted in stats.http_fallbacks. A manifest of transport "dir" is read from
 * the trainer's directory instead of the bus, and a delta version
 * (weights.delta) is rebuilt from the image the client kept or from the last
 * full image and the deltas after it (rollout/weights_fetch.h); either way
 * the image is checked against the signed manifest before anything is built.
 * Memory: besides what the worker took, the client holds at most the ready
 * model, one model handed back for reuse (weights_client_recycle), the image
 * buffer (kept from version to version; with transport http too: its pages are
 * faulted in already, a fresh one costs a page fault per 4 KiB), the model
 * being built and, in a job with weights.delta, the image of the last version
 * built (the next delta's base, rebuilt in place).
 */
#ifndef TIDAL_ROLLOUT_WEIGHTS_H
#define TIDAL_ROLLOUT_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "bus/bus.h"
#include "job/names.h"
#include "base/status.h"

typedef struct weights_client weights_client;

typedef struct weights_stats {
    uint64_t fetched;          /* models built */
    uint64_t failed;           /* manifests skipped (fetch, verify or build failed) */
    uint64_t refused;          /* manifests refused: unsigned, or not signed by the job's key */
    uint64_t bytes;            /* image bytes fetched */
    uint64_t refetched;        /* chunks fetched again after failing their digest */
    uint64_t caught;           /* chunks caught as the trainer broadcast them (not fetched) */
    uint64_t live;             /* versions built from the broadcast, before they were stored */
    double fetch_ms_last;      /* manifest seen -> model ready, the last one */
    uint64_t latest_seen;      /* newest manifest version seen; UINT64_MAX none */
    uint64_t http_fetched;     /* transport http: versions fetched over HTTP */
    uint64_t http_fallbacks;   /* transport http: versions whose HTTP fetch failed, then tried on the bus */
} weights_stats;

/* transport http, for a worker (the spec's weights.http_*). */
typedef struct weights_client_http {
    int timeout_ms;     /* a fetch without a byte for this long falls back to the bus; <= 0: 10000 */
    int parallel;       /* Range requests in flight; <= 0: 4 */
    const char *token;  /* bearer token (copied); NULL: TIDAL_WEIGHTS_HTTP_TOKEN(_FILE) from the environment */
} weights_client_http;

/* Start watching (the job's KV bucket and weights stream are created when
 * missing). cfg (may be NULL when every manifest carries its config) is
 * validated and copied. public_key (32 bytes, may be NULL) pins the key the
 * manifests must be signed with; NULL: the job's KV `trainer.pubkey`, read
 * now or, when the trainer has not put it yet, with the first manifest. The
 * bus must outlive the client. */
tidal_status weights_client_create(tidal_bus *bus, const job_names *names, const model_config *cfg,
                                   const uint8_t *public_key, weights_client **out);

/* weights_client_create with the HTTP settings (NULL: the defaults above). */
tidal_status weights_client_create_http(tidal_bus *bus, const job_names *names, const model_config *cfg,
                                        const uint8_t *public_key, const weights_client_http *http,
                                        weights_client **out);

/* The newest ready model with a version greater than `have` (UINT64_MAX:
 * the caller holds none, any version will do), or NULL (never blocks). The
 * model belongs to the caller (model_free); *version (may be NULL) gets its
 * version. A model is handed out once. */
model *weights_client_take(weights_client *c, uint64_t have, uint64_t *version);

/* Block until a model of version >= min_version is ready and take it (as
 * weights_client_take with have = min_version - 1, so min_version 0 takes
 * any). TIDAL_ERR_TIMEOUT when none came in timeout_ms (< 0: wait forever;
 * 0: just look), the message naming the newest manifest seen. */
tidal_status weights_client_wait(weights_client *c, uint64_t min_version, int timeout_ms, model **out,
                                 uint64_t *version);

/* Hand back a model the worker no longer uses (one it took; NULL is a
 * no-op): the client builds the next version of the same config in its
 * memory rather than allocating and faulting in a new one. The client keeps
 * one such model (an older one is freed); the caller must not touch m again. */
void weights_client_recycle(weights_client *c, model *m);
/* Transport dir: when the newest model built is version v and came from the
 * trainer's shared directory, that directory (the manifest's, absolute) in
 * out[cap] and true; else false. An inference server can load it as it is
 * (rollout/worker.c's sidecar). */
bool weights_client_dir(weights_client *c, uint64_t v, char *out, size_t cap);

/* Counters so far (a consistent copy). */
void weights_client_stats(weights_client *c, weights_stats *s);

/* Stop the thread and free (an untaken model too). A fetch in progress ends
 * after its blob read and is discarded, so this can take as long as reading
 * one image. NULL is a no-op. */
void weights_client_free(weights_client *c);

#endif
