/* publish.h - the trainer's weight publisher (docs/design.md "The bus", docs/protocol.md "Weights").
 *
 * After a step the trainer hands the new parameters over and goes on with
 * the next step: the publisher copies them (the only work on the caller's
 * thread), and a background thread writes a safetensors image, stores it as
 * the chunked blob "<version>" in stream TIDAL_J_WEIGHTS (subjects
 * tidal.J.weights.<version>.*, the newest `keep` versions kept), then puts a
 * WeightsManifest (version, dtype, bytes, chunk count, digest of the image,
 * the model's config.json) in KV TIDAL_J key `weights.latest` and the version
 * in `trainer.version`. Workers watch that key (rollout/weights.h).
 *
 * Every manifest is signed (Ed25519, proto/manifest_sign.h) with the
 * publisher's key, whose public half the publisher puts in KV
 * `trainer.pubkey` when it is created - once: a key already there must be the
 * same (docs/protocol.md "Signed weights").
 *
 * With `http` the image is also served by the publisher's HTTP server
 * (trainer/publish_http.h) and the manifest, transport "http", names its URL
 * and the hashes of its 4 MiB ranges; it goes into `weights.latest` before the
 * bus copy is stored, which follows as the workers' fallback.
 * With `dir` the versions go to a shared directory instead (trainer/publish_dir.h:
 * ROOT/step_<version>/, the manifest's transport "dir" naming it); with
 * `delta` a version's blob is a compressed delta against the previous one
 * (trainer/publish_delta.h), the manifest carrying the rebuilt image's
 * digest (docs/protocol.md "Delta versions").
 *
 * Only the newest weights matter to a worker, so a version handed over while
 * an older one still waits to start replaces it (the older is never sent).
 */
#ifndef TIDAL_TRAINER_PUBLISH_H
#define TIDAL_TRAINER_PUBLISH_H

#include <stdbool.h>
#include <stdint.h>

#include "base/sign.h"
#include "model/hfdir.h"
#include "model/model.h"
#include "bus/bus.h"
#include "job/names.h"
#include "trainer/publish_http.h"
#include "base/status.h"

typedef struct weights_publisher weights_publisher;

typedef struct weights_publisher_opts {
    tidal_bus *bus;            /* shared; must outlive the publisher */
    const job_names *names;
    int keep;                  /* versions kept in the stream; 0: 3 (docs/protocol.md) */
    st_dtype dtype;            /* ST_F32 (also for 0) or ST_BF16 (round to nearest even) on the wire */
    const tidal_sign_key *signing_key; /* borrowed, must outlive the publisher; NULL: a key made for
                                          the publisher's lifetime (tests, benches) */
    bool http;                 /* weights.transport http: serve each image over HTTP too, the manifest
                                  names its URL (docs/protocol.md "Weights over HTTP") */
    const char *http_bind;     /* weights.http_bind ("" or NULL: 127.0.0.1:0) */
    const char *http_url;      /* weights.http_url ("" or NULL: from the bind) */
    const char *http_token;    /* the bearer token (weights_token_from_env); NULL: none */
    const char *dir;           /* weights.transport dir: write versions under this directory
                                  (trainer/publish_dir.h) instead of the bus; NULL or "": the bus */
    const hf_files *hf;        /* transport dir: the files each version's directory carries (borrowed) */
    bool delta;                /* bus: versions as deltas against the previous one (trainer/publish_delta.h) */
    int full_every;            /* delta: a full image at least this often; 0: 10 */
} weights_publisher_opts;

/* Open (create) the weights stream and the job's KV bucket, claim KV
 * `trainer.pubkey` for the signing key (created when absent; TIDAL_ERR_CONFLICT
 * when it holds another key, naming both) and start the background thread.
 * The stream and bucket handles belong to that thread. */
tidal_status weights_publisher_create(const weights_publisher_opts *o, weights_publisher **out);

/* Hand over m's parameters as `version` (copied before returning; m is not
 * used after). Versions must increase (TIDAL_ERR_INVALID otherwise, naming
 * both); UINT64_MAX is reserved. Called by one thread at a time (the
 * trainer's). The publisher keeps one buffer of the model's size for reuse. */
tidal_status weights_publish(weights_publisher *p, const model *m, uint64_t version);

/* Wait until everything handed over is on the bus (manifest put), at most
 * timeout_ms (< 0: as long as it takes). Returns the first background failure
 * since the last flush (the message names the version and the step that
 * failed), TIDAL_ERR_TIMEOUT when still busy (the failure is then kept for
 * the next flush). */
tidal_status weights_publisher_flush(weights_publisher *p, int timeout_ms);

/* The publisher's HTTP server (weights.transport http), NULL otherwise: for
 * its base URL and the tests' stall hook. */
weights_http *weights_publisher_http(weights_publisher *p);

/* The newest version whose manifest is on the bus; UINT64_MAX before the first. */
uint64_t weights_published_version(weights_publisher *p);

/* The trainer's signing key: the PEM file `path` when it is not empty (the
 * spec's weights.signing_key; it must exist), else RUN_DIR/weights_signing_key.pem,
 * made (random, mode 0600) when missing so that a resumed trainer signs with
 * the same key. When `pin` is not empty (the spec's weights.public_key) the
 * key's public half must be that one (TIDAL_ERR_INVALID naming both). */
tidal_status weights_signing_key_open(const char *path, const char *run_dir, const char *pin, tidal_sign_key **out);

/* Finish what is in progress (not what waits), stop the thread, free. NULL is a no-op. */
void weights_publisher_free(weights_publisher *p);

#endif
