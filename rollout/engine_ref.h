/* engine_ref.h - the GPU engine's host logic (rollout/engine_paged.h: paged
 * KV cache, same-step prefix fork, tail copies, Philox sampler keyed on
 * request and token) computing on the CPU references of its kernels
 * (kernels/cpu/engine_ref: paged KV store, paged decode attention, the
 * sampler by sorting) and the CPU ops: what the GPU engine computes, on a
 * machine without a GPU, so that everything of it but the CUDA code is
 * tested there (test_engine_cuda; `tidal debug engine-selfcheck --device
 * cpu-ref`). fp32; plain loops, not fast; not a rollout.device choice.
 */
#ifndef TIDAL_ROLLOUT_ENGINE_REF_H
#define TIDAL_ROLLOUT_ENGINE_REF_H

#include "base/status.h"
#include "model/model.h"
#include "rollout/engine.h"
#include "rollout/engine_cuda.h"
#include "rollout/engine_paged.h"

/* A paged engine on the CPU references over model m (its weights copied now;
 * m is borrowed as by engine_create) at `version`, with co's block_size,
 * n_blocks and max_prefill (engine_cuda_options; bf16 ignored: fp32; co may
 * be NULL: the defaults). Free it with engine_free. */
tidal_status engine_ref_create(model *m, uint64_t version, const engine_options *o, const engine_cuda_options *co,
                               engine **out);

/* The CPU references as a paged device (rollout/engine_paged.h) for model
 * shape c and geometry g, its parameters unset: what engine_ref_create
 * computes on. Exposed so that tests can watch the rows the host lays out
 * (engine_paged_create over a device that checks, then calls this one). */
tidal_status engine_ref_device(const model_config *c, const paged_geometry *g, paged_device *out);

#endif
