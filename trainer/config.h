/* config.h - the trainer's configuration built from a job spec.
 *
 * The job spec (job/spec.h) holds what the user wrote: names, and -1 or
 * "auto" where the loss's own default applies. This module turns its
 * trainer.* (and rollout.max_tokens) keys into the typed configuration of
 * the step (trainer/step.h), the learning-rate schedule and AdamW
 * (trainer/optimizer.h). The trainer role (trainer/loop.c) and `tidal debug
 * step` (cli/debug_step.c) both build theirs here, so the parity hook runs
 * exactly the configuration a job would.
 */
#ifndef TIDAL_TRAINER_CONFIG_H
#define TIDAL_TRAINER_CONFIG_H

#include "base/status.h"
#include "job/spec.h"
#include "trainer/optimizer.h"
#include "trainer/step.h"

/* The step configuration spec s asks for (advantage, loss and its knobs,
 * minibatches, proximal, KL betas, overlong shaping), with the loss's own
 * defaults where the spec says -1 or auto, and the learning-rate schedule.
 * cfg->ref is left NULL: the caller holds the reference model; cfg->lr is 0:
 * the caller takes each step's rate from *lr (lr_at). Errors name the spec
 * key. */
tidal_status trainer_step_cfg_from_spec(const job_spec *s, trainer_step_cfg *cfg, lr_schedule *lr);

/* AdamW's configuration for spec s: torch's defaults (adamw_defaults) with
 * the spec's beta1, beta2 and weight_decay. The spec was validated, so this
 * cannot fail. */
adamw_cfg trainer_adamw_cfg_from_spec(const job_spec *s);

#endif
