/* generator.h - what an episode generates with: the built-in engine, or an
 * inference server over HTTP (rollout/remote.h), behind one small interface.
 *
 * The interface is the engine's own (rollout/engine.h): requests are queued
 * with generator_submit, generator_step makes progress (one decode step of
 * the engine; for a server, waiting on the network until a response arrives
 * or a short time passes), finished requests come back from
 * generator_next_result as engine_result with per-token ids, log-probs and
 * versions. Exactly one thread uses a generator. */
#ifndef TIDAL_ROLLOUT_GENERATOR_H
#define TIDAL_ROLLOUT_GENERATOR_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"
#include "rollout/engine.h"

typedef struct generator_ops {
    tidal_status (*submit)(void *impl, const engine_request *r, uint64_t *id);
    tidal_status (*step)(void *impl);
    bool (*busy)(const void *impl);
    engine_result *(*next_result)(void *impl);
    tidal_status (*abort)(void *impl, uint64_t id);
    uint64_t (*version)(const void *impl);
} generator_ops;

typedef struct generator {
    const generator_ops *ops;
    void *impl;
} generator;

/* A generator over engine e (borrowed). */
generator generator_of_engine(engine *e);

static inline tidal_status generator_submit(generator *g, const engine_request *r, uint64_t *id)
{
    return g->ops->submit(g->impl, r, id);
}
static inline tidal_status generator_step(generator *g) { return g->ops->step(g->impl); }
static inline bool generator_busy(const generator *g) { return g->ops->busy(g->impl); }
static inline engine_result *generator_next_result(generator *g) { return g->ops->next_result(g->impl); }
static inline tidal_status generator_abort(generator *g, uint64_t id) { return g->ops->abort(g->impl, id); }
/* The version new tokens carry (env tokens appended between turns take it). */
static inline uint64_t generator_version(const generator *g) { return g->ops->version(g->impl); }

#endif
