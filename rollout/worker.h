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
 * group is finished first. QUARANTINE (from the trainer, aimed at this
 * worker's id): the group is abandoned and returned, and the worker takes no
 * more prompts; it stays, idle, with heartbeat state QUARANTINED, so `tidal
 * status` shows it, until the job is done or it is stopped. A job whose
 * state is "done" ends the worker.
 */
#ifndef TIDAL_ROLLOUT_WORKER_H
#define TIDAL_ROLLOUT_WORKER_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "bus/bus.h"
#include "base/status.h"

/* What a benchmark's hook is told about a group that has been generated and
 * is about to be published. */
typedef struct rollout_group_info {
    const char *group_id;
    uint64_t tokens;            /* completion tokens of its samples, generated and env tokens */
    double generate_ms;         /* its generation (the episodes) here */
    double last_publish_ms;     /* the previous group's publication and ack; 0 before the first */
} rollout_group_info;

/* A benchmark's hook into the worker (worker_opts.bench; NULL in production).
 * Benchmarks simulate other hardware by holding each group between its
 * generation and its publication - the one point where they need the
 * worker; what to hold is theirs (bench/bench_hold.c). */
typedef struct rollout_bench_hook {
    /* How long to hold group g, in ms (<= 0: not at all). The worker holds
     * it keeping the prompt alive and stops early when it is leaving. */
    double (*hold_ms)(void *ctx, const rollout_group_info *g);
    /* Hold this long between two parts of a group sent in parts (a slow link;
     * tests kill a worker there). */
    double part_gap_ms;
    void *ctx;
} rollout_bench_hook;

/* Test-only lies (`tidal rollout --fault KIND`, hidden): what the trainer's
 * worker check (trainer/workercheck.h) must catch and quarantine. */
typedef enum {
    ROLLOUT_FAULT_NONE = 0,
    ROLLOUT_FAULT_LOGPROB_NOISE, /* "logprob-noise": each trained token's logprob moved by N(0, 0.5) (kept <= 0) */
    ROLLOUT_FAULT_TEMPERATURE,   /* "temperature": samples at 2 x the prompt's temperature, reports the prompt's */
    ROLLOUT_FAULT_STALE_WEIGHTS, /* "stale-weights": keeps its first weights, reports each newer version it receives */
} rollout_fault;

/* The fault named `name` into *out; false for an unknown name. */
bool rollout_fault_parse(const char *name, rollout_fault *out);
/* The name of fault f ("logprob-noise"; "unknown" outside the enum). */
const char *rollout_fault_name(rollout_fault f);

typedef struct worker_opts {
    bus_opts bus;               /* how to reach the bus (urls required) */
    const char *job;            /* the job's name */
    const char *id;             /* worker id; NULL: HOST-PID */
    int join_timeout_ms;        /* wait this long for the job (spec, weights) to appear; <= 0: forever */
    const rollout_bench_hook *bench; /* NULL in production; must outlive worker_run */
    rollout_fault fault;        /* ROLLOUT_FAULT_NONE in production */
    volatile sig_atomic_t *stop;/* set (by a signal handler) to leave: the group in progress is returned */
    /* rollout.backend openai, this worker's own (NULL: the spec's): the
     * servers it is the sidecar of, their dialect, where it writes versions */
    const char *backend, *endpoints, *dialect, *weights_dir;
    const char *endpoint_token; /* bearer token for the servers (NULL: none) */
    int metrics_port;           /* /metrics on the spec's metrics.bind (0: off; -1: any free port, logged) */
    const char *device;         /* where the built-in engine runs, auto | cpu | cuda (NULL: the spec's rollout.device);
                                   cpu-ref (tests): the GPU engine's logic on the CPU references */
} worker_opts;

/* Run until the job is done, a STOP or DRAIN arrives, or *stop is set.
 * TIDAL_OK then (also when *stop is set while it is still joining); an error
 * when the job cannot be joined (no spec, a spec this build cannot honour)
 * or the bus fails for good. */
tidal_status worker_run(const worker_opts *o);

#endif
