/* workercheck.h - the trainer holds each rollout worker to account.
 *
 * Every step scores the trained tokens (trainer_step_checked): k3 between the
 * worker's log-probabilities and the trainer's, by d = how many versions the
 * token is behind the step. At d = 0 the trainer holds the very weights that
 * sampled the token: an honest worker differs only by arithmetic (and by the
 * KV cache of an in-flight weight swap), so its mean k3 is about 0. At d > 0
 * the trainer's weights moved on since, and honest staleness has a mismatch
 * of its own (large while the policy learns fast); the same for every honest
 * worker, though, so a worker's mean at d is compared with the median of the
 * workers' means at that d in the same step. A worker's score for a step is
 * its excess: over the tokens it had in each d that counts (>= min_tokens of
 * them there), the mean of k3 less the baseline of their d (0 at d = 0, the
 * workers' median at d > 0). A worker that perturbs its log-probabilities,
 * samples at another temperature than it reports, or generates with weights
 * of another version than it reports scores orders of magnitude above an
 * honest one (docs/training.md "Worker checks" has the measurements). Alone
 * at a d > 0 (one worker in the job) a worker is its own baseline there: only
 * its d = 0 tokens can convict it.
 *
 * A worker whose score is above `threshold` on `window` counted steps in a
 * row is quarantined (a step in which nothing of it counts neither counts nor
 * breaks the row; one at or below the threshold breaks it), for the rest of
 * the job. The caller (the trainer's loop) drops its groups, tells it over
 * the control subject and publishes the rows (KV trainer.workers). Pure
 * logic, no bus: unit-tested in tests/unit/test_workercheck.c.
 */
#ifndef TIDAL_TRAINER_WORKERCHECK_H
#define TIDAL_TRAINER_WORKERCHECK_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"
#include "trainer/step.h"

typedef struct worker_check_cfg {
    bool enabled;     /* off: the statistic is kept, nobody is quarantined */
    double threshold; /* mean k3 per scored token (> 0) */
    int window;       /* scored steps in a row above the threshold (>= 1) */
    int min_tokens;   /* scored tokens a step needs to count for a worker (>= 1) */
} worker_check_cfg;

typedef struct worker_check_row {
    char id[192];
    double k3_sum;          /* raw k3 over every scored token so far (all d) */
    uint64_t tokens;        /* scored tokens so far */
    double excess_sum;      /* score x counted tokens, summed over counted steps */
    uint64_t excess_tokens; /* counted tokens */
    double last;            /* the score of its latest counted step (when steps > 0; may be < 0) */
    bool counted;           /* the step just closed counted for it */
    double step_raw;        /* the step just closed: raw mean k3 (all d), its tokens, its score */
    uint64_t step_n;
    double step_score;
    double acc_k3[TRAINER_CHECK_VERSIONS]; /* the step in progress, by d */
    uint64_t acc_n[TRAINER_CHECK_VERSIONS];
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

/* Add one sample's scored tokens (trainer_sample_check: k3 sums and token
 * counts by d) to worker's step in progress. An empty id or no tokens:
 * nothing to add. */
tidal_status worker_check_add(worker_check *wc, const char *worker, const trainer_sample_check *c);

/* Close the step in progress (the trainer's new version `step`): the
 * baselines, each worker's score and row; the newly quarantined go into
 * newly[] (indices into worker_check_rows, at most cap of them; the count is
 * returned). */
int worker_check_end_step(worker_check *wc, uint64_t step, int *newly, int cap);

/* Mark worker quarantined (a trainer resumed: the decision stands). */
tidal_status worker_check_restore(worker_check *wc, const char *worker, uint64_t step, const char *reason);

bool worker_check_is_quarantined(const worker_check *wc, const char *worker);

/* The rows, in order of first appearance; valid until the next call that adds a worker. */
const worker_check_row *worker_check_rows(const worker_check *wc, int *n);

const worker_check_cfg *worker_check_config(const worker_check *wc);

#endif
