/* envmetrics.h - an environment's own metrics in the trainer's step metrics.
 *
 * An environment may answer with named metrics beside its reward (gsm8k's
 * `correct` and `format`, a Python env's `exact`); the worker carries the
 * last answer's metrics with each sample as the trajectory's
 * reward_components. For every step, the mean of each one over the step's
 * samples that report it becomes the Metric value `env.<name>` (so
 * RUN/metrics.jsonl has a column per env metric; docs/environments.md).
 */
#ifndef TIDAL_TRAINER_ENVMETRICS_H
#define TIDAL_TRAINER_ENVMETRICS_H

#include "buffer/buffer.h"
#include "job/names.h"

#define ENV_METRICS_MAX 64          /* distinct env metrics per step; more are left out (counted) */
#define ENV_METRICS_KEY_MAX 72      /* "env." and the env's name for it (at most 63 bytes) */

typedef struct env_metrics {
    int n;                                  /* distinct metrics */
    char keys[ENV_METRICS_MAX][ENV_METRICS_KEY_MAX]; /* "env.<name>" */
    double sum[ENV_METRICS_MAX];
    uint64_t count[ENV_METRICS_MAX];        /* samples that reported it */
    uint64_t left_out;                      /* values not counted: a name too long or beyond ENV_METRICS_MAX */
} env_metrics;

/* Average the reward components of batch b's samples into *m (overwritten):
 * per distinct name, the mean over the samples that report it; non-finite
 * values and names that are empty or longer than 63 bytes are left out. */
void env_metrics_of_batch(const buffer_batch *b, env_metrics *m);

/* m's means as Metric values into v (room for ENV_METRICS_MAX; the keys stay
 * m's): returns how many. */
int env_metrics_values(const env_metrics *m, job_metric_value *v);

#endif
