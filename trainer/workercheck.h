/* workercheck.h - the trainer holds each rollout worker to account.
 *
 * Every step scores the tokens whose behaviour version is the step's own
 * (trainer_step_checked: k3 between the worker's log-probabilities and the
 * trainer's at the very weights that sampled them). An honest worker differs
 * from the trainer only by arithmetic (another kernel order, the published
 * dtype), so its mean k3 per token is tiny; a worker that perturbs its
 * log-probabilities, samples at another temperature than it reports, or
 * generates with weights of another version than it reports stands out by
 * orders of magnitude (docs/training.md "Worker checks" has the numbers).
 *
 * Per worker this module keeps the statistic and decides: a worker whose mean
 * k3 is above `threshold` on `window` scored steps in a row is quarantined
 * (a step in which it scored fewer than `min_tokens` tokens neither counts
 * nor breaks the row; a step at or below the threshold breaks it). A
 * quarantined worker stays so for the rest of the job. The caller (the
 * trainer's loop) drops its groups, tells it over the control subject and
 * publishes the rows (KV trainer.workers). Pure logic, no bus: unit-tested
 * in tests/unit/test_workercheck.c.
 */
#ifndef TIDAL_TRAINER_WORKERCHECK_H
#define TIDAL_TRAINER_WORKERCHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"

typedef struct worker_check_cfg {
    bool enabled;     /* off: the statistic is kept, nobody is quarantined */
    double threshold; /* mean k3 per scored token (> 0) */
    int window;       /* scored steps in a row above the threshold (>= 1) */
    int min_tokens;   /* scored tokens a step needs to count for a worker (>= 1) */
} worker_check_cfg;

typedef struct worker_check_row {
    char id[192];
    double k3_sum;          /* over every scored token so far */
    uint64_t tokens;        /* scored tokens so far */
    double last;            /* mean k3 of its latest counted step (-1: none yet) */
    double step_k3;         /* this step's sums, until worker_check_end_step */
    uint64_t step_tokens;
    uint64_t steps;         /* counted steps */
    int over;               /* counted steps above the threshold in a row, now */
    bool quarantined;
    uint64_t quarantined_at; /* the step that decided it */
    char reason[192];       /* why, for logs, status and the summary */
} worker_check_row;

typedef struct worker_check worker_check;

/* TIDAL_ERR_INVALID naming trainer.worker_check.* unless threshold > 0 and
 * finite, window >= 1, min_tokens >= 1. */
tidal_status worker_check_create(const worker_check_cfg *cfg, worker_check **out);
void worker_check_free(worker_check *wc);

/* Add one sample's scored tokens (k3_sum over `tokens` tokens) to worker's
 * current step. tokens <= 0 or an empty id: nothing to add. */
tidal_status worker_check_add(worker_check *wc, const char *worker, double k3_sum, int tokens);

/* Close the current step (the trainer's new version `step`): each worker
 * with >= min_tokens scored tokens counts the step's mean k3; the ones that
 * are newly quarantined go into newly[] (indices into worker_check_rows, at
 * most cap of them; the count is returned). */
int worker_check_end_step(worker_check *wc, uint64_t step, int *newly, int cap);

/* Mark worker quarantined (a trainer resumed: the decision stands). */
tidal_status worker_check_restore(worker_check *wc, const char *worker, uint64_t step, const char *reason);

bool worker_check_is_quarantined(const worker_check *wc, const char *worker);

/* The rows, in order of first appearance; valid until the next call that adds a worker. */
const worker_check_row *worker_check_rows(const worker_check *wc, int *n);

const worker_check_cfg *worker_check_config(const worker_check *wc);

#endif
