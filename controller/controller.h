/* controller.h - the controller role: `tidal controller JOB.yaml --out RUN`.
 *
 * It owns the job: it creates the bus objects (job/names.h), stores the
 * effective spec in KV `spec` (and RUN/spec.json), and dispatches prompts
 * under the admission rule (controller/admission.h): each training group n
 * is one Prompt (prompt_id p<n>, group_id g<n>, Nats-Msg-Id p<n>) with
 * min_version from the step it feeds; the cursor (next n) is in KV
 * `controller.cursor`, written before each publish, so a restarted
 * controller continues where it stopped and a republished prompt is
 * de-duplicated by its id. Every eval.every steps it dispatches the
 * held-out prompts (greedy, or pass@k) and records RUN/eval.jsonl. It writes
 * the trainer's step metrics to RUN/metrics.jsonl (with the live worker
 * count), publishes a progress Metric each second on
 * tidal.J.metrics.controller, and when the job is done (or on the stop
 * flag) writes RUN/summary.json and the reward curve RUN/reward.svg.
 *
 * summary.json balances: groups.dispatched = trained + sum(dropped) + failed
 * + in_flight, where trained / dropped / failed are the trainer's counts
 * (KV `trainer.groups`) and in_flight is what is left (prompts not yet
 * generated, groups in generation, in the trajectory stream or partly in the
 * buffer); a negative in_flight would mean a group counted twice, and is
 * reported as an error.
 */
#ifndef TIDAL_CONTROLLER_CONTROLLER_H
#define TIDAL_CONTROLLER_CONTROLLER_H

#include <signal.h>

#include "job/spec.h"
#include "bus/bus.h"
#include "base/status.h"

typedef struct controller_opts {
    const job_spec *spec;        /* validated */
    bus_opts bus;
    const char *run_dir;         /* created when missing */
    volatile sig_atomic_t *stop; /* set by a signal: write the summary and leave */
} controller_opts;

tidal_status controller_run(const controller_opts *o);

#endif
