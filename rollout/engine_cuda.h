/* engine_cuda.h - the generation engine on a CUDA GPU: rollout/engine.h's
 * engine (the same requests, queue, admission up to `slots` sequences,
 * finishing by stop id, stop string, length and abort, per-token versions,
 * engine_set_model between steps) whose steps run on the GPU: the paged KV
 * cache (rollout/kvpages), the decode step (model/decode_cuda) and the
 * sampler (kernels/cuda/engine.cu's cuda_sample: Philox counter RNG keyed on
 * (seed, request id, token index, vocabulary id), Gumbel-max). The host
 * logic is rollout/engine_paged.c, shared with rollout/engine_ref.c (the
 * same on the CPU references of the kernels), which tests it without a GPU.
 *
 * What differs from the CPU engine (docs/gpu.md):
 *   - sampled tokens (temperature > 0) are drawn from the same distribution
 *     by another RNG: not the CPU engine's tokens for the same seed; greedy
 *     tokens and every logprob definition are the same;
 *   - prefix fork: a prompt admitted in the same step as an identical
 *     prompt (the G samples of a GRPO group) is not prefilled again; it
 *     takes the first one's cache (full blocks shared, the partly filled
 *     last one copied) and samples from its logits;
 *   - engine_set_model uploads the new weights (a host -> device copy of
 *     model.c's parameters) before the next step; the cache keeps what
 *     older weights computed, as on the CPU;
 *   - the token events' logits are copied back only when on_token is set.
 * The cache holds n_blocks blocks of block_size tokens (default: every slot
 * its max_len); a step that needs more blocks than are free fails naming
 * them (kvpages), nothing admitted.
 *
 * Without CUDA in the build, or without a GPU that answers, creation fails
 * with TIDAL_ERR_UNAVAILABLE and the reason. Written and compiled without a
 * GPU: never run (docs/gpu.md).
 */
#ifndef TIDAL_ROLLOUT_ENGINE_CUDA_H
#define TIDAL_ROLLOUT_ENGINE_CUDA_H

#include <stdbool.h>
#include <stddef.h>

#include "base/status.h"
#include "model/model.h"
#include "rollout/engine.h"

typedef enum engine_device {
    ENGINE_DEVICE_CPU = 0,
    ENGINE_DEVICE_CUDA = 1,
    ENGINE_DEVICE_CPU_REF = 2, /* the GPU engine's logic on the CPU references (rollout/engine_ref.h):
                                  tests and the self-check's own test, not a rollout.device value */
} engine_device;

/* "cpu", "cuda" or "cpu-ref". */
const char *engine_device_name(engine_device d);

/* Whether this build has the CUDA path (nvcc found, TIDAL_CUDA not OFF). */
bool engine_cuda_built(void);
/* TIDAL_OK when the build has CUDA and a GPU answers, else
 * TIDAL_ERR_UNAVAILABLE saying why. */
tidal_status engine_cuda_available(void);

/* rollout.device (or --device) `name` - auto, cpu, cuda; NULL: cpu - to a
 * device: cuda refused (TIDAL_ERR_UNAVAILABLE) without a usable GPU, auto
 * the GPU when one answers, else the CPU. why (may be NULL) receives one
 * line saying which and why, for the log. TIDAL_ERR_INVALID for another name. */
tidal_status engine_device_resolve(const char *name, engine_device *out, char *why, size_t n);

typedef struct engine_cuda_options {
    int block_size;   /* KV cache slots per block; 0: 16 */
    int n_blocks;     /* 0: slots x ceil(max_len / block_size) (every slot its max_len) */
    int max_prefill;  /* prompts of at most this many tokens prefill through the trainer's packed
                         attention, longer ones through the paged decode attention; 0: min(max_len,
                         2048) (the packed attention's scratch is O(heads x max_prefill^2)) */
    bool bf16;        /* bf16 weights, activations and cache (fp32 otherwise) */
} engine_cuda_options;

/* A GPU engine over model m's weights (uploaded now; m is borrowed as by
 * engine_create) at `version`; co may be NULL (the defaults). Free it with
 * engine_free. */
tidal_status engine_cuda_create(model *m, uint64_t version, const engine_options *o, const engine_cuda_options *co,
                                engine **out);

/* The GPU's memory bandwidth as a device-to-device copy of `bytes` measures
 * it (the best of 5 timed copies; each byte read once and written once:
 * 2 x bytes moved), and the device's name into name[n] (may be NULL). For
 * the bench's bandwidth floor. TIDAL_ERR_UNAVAILABLE without a GPU. */
tidal_status engine_cuda_copy_bandwidth(size_t bytes, double *bytes_per_s, char *name, size_t n);

/* An engine on device d: engine_create, engine_cuda_create with co, or
 * engine_ref_create with co (its bf16 ignored: fp32). */
tidal_status engine_create_on(engine_device d, model *m, uint64_t version, const engine_options *o,
                              const engine_cuda_options *co, engine **out);

#endif
