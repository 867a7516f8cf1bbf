/* engine_backend.h - where the engine's model call and sampling run: the seam
 * between rollout/engine.c (requests, admission, finishing, stop ids and
 * strings, versions, abort: the contract of rollout/engine.h) and a device
 * that computes a step (rollout/engine_cuda.c: the GPU's paged cache,
 * decode step and sampler). An engine without a backend is the CPU engine
 * (model_infer over model_kv, sampling in engine.c).
 *
 * Internal to the engines: the worker and the rest of the tree use only
 * engine.h (and engine_cuda.h to create a GPU engine).
 */
#ifndef TIDAL_ROLLOUT_ENGINE_BACKEND_H
#define TIDAL_ROLLOUT_ENGINE_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"
#include "model/model.h"
#include "rollout/engine.h"

/* One sequence's part of a step: a prompt to prefill whole (prefill, start
 * 0) or the last sampled token to decode (n 1, at position start). One token
 * is sampled from the logits of its last row. */
typedef struct engine_segment {
    int slot;                 /* the sequence's slot, 0 .. slots-1; held until release() */
    const int32_t *tokens;    /* [n] */
    int n;
    int start;                /* the position of tokens[0] */
    bool prefill;             /* a new sequence: the slot was empty */
    uint64_t request;         /* the request's id (the sampler's per-sequence key) */
    int index;                /* the generated index of the token sampled here */
    const engine_sampling *sp;
} engine_segment;

typedef struct engine_backend {
    void *impl;
    /* Run segs[0 .. S) as one step and sample each: token[k], logprob[k],
     * truncated[k] with engine.h's definitions; logits (when not NULL) receives
     * the unscaled logits [S, V] on the host. On failure nothing may have
     * changed for the caller: the slots of the step's prefills are empty
     * again (a decode's slot keeps its sequence), and the step may be retried. */
    tidal_status (*step)(void *impl, const engine_segment *segs, int S, int32_t *token, float *logprob,
                         bool *truncated, float *logits);
    /* Empty slot (its sequence finished or was aborted). */
    void (*release)(void *impl, int slot);
    /* New weights of the engine's shape (checked by the engine), from the next step on. */
    tidal_status (*set_model)(void *impl, model *m);
    void (*free)(void *impl);
} engine_backend;

/* engine_create with the steps computed by backend b (taken over: freed with
 * the engine, or here when creation fails). */
tidal_status engine_create_backend(model *m, uint64_t version, const engine_options *o, const engine_backend *b,
                                   engine **out);

#endif
