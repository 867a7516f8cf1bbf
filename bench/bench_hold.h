/* bench_hold.h - the benchmarks' hold of rollout groups: a rollout worker
 * that behaves like slower or other hardware, installed through the
 * worker's bench hook (rollout/worker.h) by `tidal rollout --slowdown F
 * --tail A --token-ms T`, which `tidal bench async` and the e2e tests start.
 * A production worker has no hook; the knobs live here so its loop does not
 * carry them.
 */
#ifndef TIDAL_BENCH_HOLD_H
#define TIDAL_BENCH_HOLD_H

#include "rollout/worker.h"

/* Each group is held before it is published:
 *   token_ms > 0: for token_ms x (tokens generated) x factor - a GPU worker
 *                 whose generation time is proportional to the completion's length;
 *   else:         for (factor - 1) x the group's own time here (its generation,
 *                 and the previous group's publication);
 * factor = slowdown (>= 1; below: 1) x, with tail > 0, a Pareto(x_m = 1,
 * alpha = tail) draw per group (a function of the group id, capped at 50):
 * long-tailed completion times. */
typedef struct bench_hold_knobs {
    double slowdown, tail, token_ms;
    double part_gap_ms; /* between two parts of a group sent in parts (rollout_bench_hook) */
} bench_hold_knobs;

/* The hook holding groups as knobs says, filled into *hook and returned; NULL
 * when the knobs hold nothing (slowdown <= 1, no tail, no token_ms, no part
 * gap): then the
 * worker runs as in production. knobs must outlive the worker. */
const rollout_bench_hook *bench_hold_hook(const bench_hold_knobs *knobs, rollout_bench_hook *hook);

/* The hold of group g under knobs, in ms (the hook's function, for tests). */
double bench_hold_ms(const bench_hold_knobs *knobs, const rollout_group_info *g);

#endif
