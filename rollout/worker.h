/* worker.h - a rollout worker: `tidal rollout --bus URL --job NAME`.
 *
 * It joins a running job with nothing but the bus: the spec comes from KV
 * TIDAL_J `spec`, the weights from `weights.latest` (rollout/weights.h). Then,
 * one prompt at a time from the `rollout` pull consumer of TIDAL_J_PROMPTS:
 *   1. sync: never start a prompt with weights older than its min_version
 *      (wait for them), and take the newest weights there are;
 *   2. generate the group with the built-in engine and run the env episode
 *      (rollout/episode.h); between decode steps newer weights are swapped
 *      in (tokens carry the version that produced them), the prompt is kept
 *      alive (in-progress ack) and the heartbeat goes on;
 *   3. publish the trajectories on tidal.J.traj (tidal.J.traj.eval for
 *      evaluation prompts) with the trajectory id as Nats-Msg-Id, wait for
 *      the stream's acks, then ack the prompt. A worker that dies before the
 *      ack loses nothing: the prompt is redelivered and the republished
 *      trajectories are de-duplicated by id.
 * A prompt that does not decode or is invalid is terminated (never
 * redelivered), logged with its subject and counted. The heartbeat
 * (WorkerStatus in KV TIDAL_J_WORKERS, key = worker id) says what it does.
 * Control STOP or the stop flag (SIGTERM): the group in progress is
 * abandoned and its prompt returned (nak) for another worker; DRAIN: the
 * group is finished first. A job whose state is "done" ends the worker.
 */
#ifndef TIDAL_ROLLOUT_WORKER_H
#define TIDAL_ROLLOUT_WORKER_H

#include <signal.h>

#include "bus/bus.h"
#include "base/status.h"

typedef struct worker_opts {
    bus_opts bus;               /* how to reach the bus (urls required) */
    const char *job;            /* the job's name */
    const char *id;             /* worker id; NULL: HOST-PID */
    int join_timeout_ms;        /* wait this long for the job (spec, weights) to appear; <= 0: forever */
    /* Benchmarks simulate other hardware by holding each group before publishing it:
     *   token_ms > 0: for token_ms x (tokens generated) x factor - a GPU worker whose generation
     *                 time is proportional to the completion's length;
     *   else:         for (factor - 1) x the group's own time here (generation and publication);
     * factor = slowdown (>= 1; 0: 1) x, with tail > 0, a Pareto(x_m = 1, alpha = tail) draw per
     * group (a function of the group id, capped at 50): long-tailed completion times. */
    double slowdown, tail, token_ms;
    volatile sig_atomic_t *stop;/* set (by a signal handler) to leave: the group in progress is returned */
} worker_opts;

/* Run until the job is done, a STOP or DRAIN arrives, or *stop is set.
 * TIDAL_OK then; an error when the job cannot be joined (no spec, a spec
 * this build cannot honour) or the bus fails for good. */
tidal_status worker_run(const worker_opts *o);

#endif
