/* names.h - the names of a job's bus objects (docs/design.md "The bus", docs/protocol.md).
 *
 * Every role derives the subjects, streams, consumers and buckets of job J
 * from J alone, here, so the names are written once: a rollout worker needs
 * only the bus URL and the job name.
 */
#ifndef TIDAL_JOB_NAMES_H
#define TIDAL_JOB_NAMES_H

#include <stdint.h>

#include "bus/bus.h"
#include "base/prom.h"
#include "base/status.h"

#define JOB_NAME_MAX 128

typedef struct job_names {
    char job[JOB_NAME_MAX];
    char prompts_stream[JOB_NAME_MAX + 16];   /* TIDAL_J_PROMPTS */
    char prompts_subject[JOB_NAME_MAX + 16];  /* tidal.J.prompts */
    char traj_stream[JOB_NAME_MAX + 16];      /* TIDAL_J_TRAJ */
    char traj_subject[JOB_NAME_MAX + 16];     /* tidal.J.traj */
    char eval_subject[JOB_NAME_MAX + 16];     /* tidal.J.traj.eval: evaluation samples (never trained) */
    char weights_stream[JOB_NAME_MAX + 16];   /* TIDAL_J_WEIGHTS */
    char weights_prefix[JOB_NAME_MAX + 16];   /* tidal.J.weights (blob subjects below it) */
    char kv_bucket[JOB_NAME_MAX + 16];        /* TIDAL_J: spec, weights.latest, trainer.version, controller.cursor, state */
    char workers_bucket[JOB_NAME_MAX + 16];   /* TIDAL_J_WORKERS: heartbeats (TTL) */
    char ctl_subject[JOB_NAME_MAX + 16];      /* tidal.J.ctl */
    char metrics_prefix[JOB_NAME_MAX + 16];   /* tidal.J.metrics (tidal.J.metrics.<role>) */
} job_names;

#define JOB_CONSUMER_ROLLOUT "rollout" /* durable pull consumer on the prompts stream */
#define JOB_CONSUMER_TRAINER "trainer" /* durable pull consumer on the trajectory stream */
#define JOB_CONSUMER_EVAL "eval"       /* the controller's, on tidal.J.traj.eval */

/* KV keys of TIDAL_J */
#define JOB_KEY_SPEC "spec"
#define JOB_KEY_WEIGHTS "weights.latest"
#define JOB_KEY_VERSION "trainer.version"
#define JOB_KEY_CURSOR "controller.cursor"
#define JOB_KEY_STATE "state"           /* "running"; "trained" after the last step (the trainer);
                                          "done" once the controller has finished (last evaluation, summary) */
#define JOB_KEY_GROUPS "trainer.groups" /* the trainer's group counts (JSON): trained, dropped by reason, failed */
#define JOB_KEY_PUBKEY "trainer.pubkey" /* the public key the job's weights are signed with, "ed25519:<64 hex>":
                                           created once by the trainer, never replaced (docs/protocol.md
                                           "Signed weights"); outside weights.* so a grant on those does not cover it */
#define JOB_KEY_WORKER_CHECK "trainer.workers" /* the trainer's check of each worker (JSON): mismatch, quarantine */

/* Fill *n for job `job` ([A-Za-z0-9_-]{1,127}: one subject token);
 * TIDAL_ERR_INVALID naming the job otherwise. */
tidal_status job_names_init(job_names *n, const char *job);

/* How the job's streams and consumers are made (the controller and the
 * trainer both ensure them, with the same values, so whichever starts first
 * creates them and the other finds them as they are). */
typedef struct job_bus_cfg {
    int64_t prompt_ack_wait_ms;  /* a worker's prompt comes back after this long without an ack or in-progress */
    int64_t prompt_max_deliver;  /* deliveries of one prompt at most */
} job_bus_cfg;

/* Create (or update) the prompt and trajectory streams with their
 * consumers, and the two KV buckets. *kv (may be NULL) gets the job's bucket. */
tidal_status job_bus_ensure(tidal_bus *b, const job_names *n, const job_bus_cfg *c, bus_kv **kv);

/* Delete what job_bus_ensure made for the job (its two streams and two KV
 * buckets, with every message in them) and the weights stream. What is not
 * there is skipped; the first other failure is returned after trying all. */
tidal_status job_bus_remove(tidal_bus *b, const job_names *n);

/* One Metric (role, step, time, named values) on tidal.J.metrics.<role>:
 * core NATS, fire and forget (the controller writes what it hears). */
typedef struct job_metric_value {
    const char *key;
    double value;
} job_metric_value;
tidal_status job_metric_publish(tidal_bus *b, const job_names *n, const char *role, uint64_t step, double time_s,
                                const job_metric_value *v, int nv);
/* The same with the Metric's alert: a problem the job has now, in words
 * (NULL or "" = none), which `tidal run`'s progress line shows. */
tidal_status job_metric_publish_alert(tidal_bus *b, const job_names *n, const char *role, uint64_t step,
                                      double time_s, const job_metric_value *v, int nv, const char *alert);

/* Recreate the trainer's consumer, so every trajectory not yet acknowledged
 * is delivered again at once (the trajectory stream keeps only those: work
 * queue retention) rather than after its ack wait: a resumed trainer. */
tidal_status job_trainer_consumer_reset(tidal_bus *b, const job_names *n);

/* Export one Metric value on a role's /metrics (NULL p: no-op) as
 * PREFIX_KEY: a per-worker key "NAME.WORKER" (k3.w0, k3_score.w0, ...)
 * becomes PREFIX_NAME{worker="WORKER"}, an env's "env.NAME" becomes
 * PREFIX_env_NAME, characters a metric name cannot hold become '_'
 * (docs/metrics.md). */
void job_metric_export(prom *p, const char *prefix, const char *key, double v);

#endif
