/* engine_selfcheck.h - the rollout worker's start-up check of its engine's
 * device: a tiny model's greedy generation on the device and on the CPU
 * engine, compared token for token; a device that disagrees is refused
 * before it generates anything.
 *
 * The tiny model is CUDA.md's (Qwen2-shaped, 2 layers, hidden 128, 4 query
 * and 2 KV heads of 64, vocabulary 1003, tied embeddings, QKV biases; random
 * weights, std 0.1 so that greedy margins are wide). Five greedy requests
 * (prompts of 1, 17, 17 - the second's again: a forked GRPO sample on the
 * GPU, 12 tokens - 70 and 33 tokens), 24 tokens each but the fork, 4 slots
 * (so the fifth is admitted while the others decode: continuous batching),
 * new weights (version 2) swapped in after the 6th step (an in-flight
 * update). Both engines run the
 * same schedule; compared: every token, its version, its logprob (within
 * 1e-3), and the finish reasons.
 *
 * A first differing token where the CPU's own logits of the two tokens are
 * within ENGINE_SELFCHECK_TIE of each other is a near tie that fp32
 * rounding may break either way: that request is compared up to it, and
 * the log says so. Any other difference refuses, naming the request, the
 * step (the generated-token index) and both tokens:
 * "engine self-check (cuda): request 2 (prompt of 17 tokens): token 5: the
 * device gave 17, the CPU 933 (logits 1.2 vs 3.4)".
 *
 * Test hook: ENGINE_SELFCHECK_PLANT_ENV=REQ:INDEX in the environment
 * replaces the device's token INDEX of request REQ (1-based, as named in the
 * message) with the token the CPU ranks last, before the comparison - so the
 * refusal is seen without a faulty device; device cpu compares the CPU
 * engine with itself.
 */
#ifndef TIDAL_ROLLOUT_ENGINE_SELFCHECK_H
#define TIDAL_ROLLOUT_ENGINE_SELFCHECK_H

#include "base/status.h"
#include "rollout/engine_cuda.h"

#define ENGINE_SELFCHECK_PLANT_ENV "TIDAL_ENGINE_SELFCHECK_PLANT"
#define ENGINE_SELFCHECK_TIE 1e-4
#define ENGINE_SELFCHECK_LP_TOL 1e-3

/* The whole check for device d: the CPU engine's run, d's run (with the
 * planted difference applied), the comparison; one log line. TIDAL_OK, or
 * TIDAL_ERR_UNAVAILABLE naming the first difference (or why d could not be
 * opened: "engine self-check (cuda): engine (cuda): cuda: no usable device:
 * ..."); TIDAL_ERR_INVALID for a malformed plant. */
tidal_status engine_selfcheck(engine_device d);

#endif
