/* service.h - hosting an environment on the bus.
 *
 * An env service subscribes to tidal.env.<name> in queue group
 * tidal.env.<name> (so instances share the load) and answers every request
 * with exactly one EnvResponse (docs/protocol.md): the handler's answer, or
 * `error` set when the request does not decode, names another env, is
 * larger than max_request_bytes, finds the service's queue full, or the
 * handler fails. Requests are handled by `concurrency` threads taking from
 * one queue, so a slow request holds one thread, never the others.
 * `tidal env serve` and libtidal_env (envs/sdk) are both this.
 */
#ifndef TIDAL_ENVS_SERVICE_H
#define TIDAL_ENVS_SERVICE_H

#include <stdint.h>

#include "envs/env.h"
#include "bus/bus.h"

/* The service's handler: answer one call. Called on the service's threads,
 * up to `concurrency` at once. A non-OK return becomes an error reply with
 * tidal_errmsg() as its text. */
typedef tidal_status (*env_service_fn)(void *ctx, const env_call *call, env_result *out);

typedef struct env_service_opts {
    int concurrency;          /* handler threads; 0 = 4 */
    size_t max_request_bytes; /* larger requests get an error reply; 0 = 4 MiB */
    int max_queue;            /* requests waiting for a thread before "busy" replies; 0 = 64 x concurrency */
} env_service_opts;

typedef struct env_service env_service;

/* Subscribe and start the threads; returns once the subscription is live at
 * the server. The bus is borrowed and must outlive the service. */
tidal_status env_service_start(tidal_bus *b, const char *name, env_service_fn fn, void *ctx,
                               const env_service_opts *opts, env_service **out);

/* Stop taking requests, answer those already received (waiting up to
 * drain_ms for the backlog), join the threads and free the service. */
void env_service_stop(env_service *s, int drain_ms);

/* Requests answered, and of those answered with an error. */
void env_service_stats(const env_service *s, uint64_t *served, uint64_t *failed);

/* The subject of env `name` ("tidal.env.<name>") into buf; TIDAL_ERR_INVALID
 * for a name the protocol does not allow. */
tidal_status env_subject(const char *name, char *buf, size_t cap);

#endif
