/* loop.h - the trainer role: `tidal trainer JOB.yaml [--resume]`.
 *
 * Consumes the trajectory stream (pull consumer `trainer`) into the replay
 * buffer, and whenever B complete groups are ready takes one optimizer step
 * (trainer/step.h): version v -> v + 1. After each step the new weights are
 * handed to the publisher (trainer/publish.h, in the background while the
 * next step runs), and the trainer's KV keys (`trainer.version`,
 * `trainer.groups`) and a Metric on tidal.J.metrics.trainer say what
 * happened. Every trainer.checkpoint_every steps, and at the end, a
 * checkpoint is written (trainer/checkpoint.h) and only then are the
 * trajectories it trained acknowledged, so a trainer killed at any point
 * loses nothing: --resume loads the newest checkpoint, keeps its version
 * numbering, and the trajectories not yet acknowledged come again (the ones
 * the checkpoint trained are dropped as duplicates).
 *
 * A message that does not decode or validate is terminated, logged with its
 * subject and counted (`rejected`). At trainer.steps the job's state becomes
 * "done".
 */
#ifndef TIDAL_TRAINER_LOOP_H
#define TIDAL_TRAINER_LOOP_H

#include <signal.h>
#include <stdbool.h>

#include "job/spec.h"
#include "bus/bus.h"
#include "base/status.h"

typedef struct trainer_opts {
    const job_spec *spec;        /* validated */
    bus_opts bus;                /* urls from the spec or the command line */
    const char *run_dir;         /* checkpoints go to RUN/checkpoints */
    bool resume;                 /* continue from the newest checkpoint (none: start fresh) */
    volatile sig_atomic_t *stop; /* set by a signal: stop after the step in progress (no checkpoint) */
} trainer_opts;

/* Run the trainer role until trainer.steps (the job's state becomes "trained";
 * the controller makes it "done") or until *o->stop; the last steps are
 * checkpointed either way. Errors carry the failing stage's context. */
tidal_status trainer_run(const trainer_opts *o);

#endif
