/* envwatch.h - the controller's watch on the job's environment.
 *
 * Each rollout worker's heartbeat says whether its env calls fail (the last
 * one failed for good, after its retries), since when, with which message -
 * "env NAME: no responders on tidal.env.NAME ..." when no instance of a
 * remote env runs - and how many of its samples failed. From the live
 * workers' rows the watch keeps the job's view:
 *   - the env fails on some worker: a warning in the controller's log at
 *     once, then every ENV_WATCH_REPORT_MS while it lasts (with the count of
 *     failed samples), and a line when it answers again on every worker; at
 *     most one warning per ENV_WATCH_REPORT_MS even when it flips between
 *     failing and answering (a few bad rows): a failure within that time of
 *     the last warning is told when it is up, if it still lasts;
 *   - an alert in words for the progress line (`tidal run`) while it fails;
 *   - the env fails on every live worker that calls it for
 *     env.missing_timeout_s (> 0): the job must stop (docs/environments.md).
 * With no live worker calling the env there is nothing to tell: the alert
 * and the stop clock are cleared, and no "answers again" is said.
 * Pure bookkeeping on the caller's clock: no bus, no threads.
 */
#ifndef TIDAL_CONTROLLER_ENVWATCH_H
#define TIDAL_CONTROLLER_ENVWATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"

#define ENV_WATCH_REPORT_MS 10000

/* One live worker, from its heartbeat. */
typedef struct env_watch_worker {
    const char *id;
    bool active;        /* it has called the env (published trajectories, or env failures) */
    bool failing;       /* its last env call failed */
    uint64_t failed;    /* its samples whose env call failed, in all */
    const char *error;  /* its last failure's message while failing (else "" or NULL) */
} env_watch_worker;

typedef struct env_watch {
    char env[128];
    int missing_timeout_s;    /* 0: never stop (keep reporting) */
    bool reported;            /* a failing line was written and no recovery line since */
    bool ever_reported;       /* a failing line was ever written */
    double last_report_ms;    /* when the last failing line was written */
    double failing_since_ms;  /* when some worker was first seen failing (0 = none fails) */
    double all_since_ms;      /* when every active worker was first seen failing (0 = not so) */
    int failing_workers, active_workers;
    uint64_t failed;          /* samples failed in all, over the live workers */
    uint64_t failed_at_start; /* `failed` when the current failing run began */
    uint64_t failed_before;   /* `failed` at the last update that found no worker failing */
    uint64_t reports;         /* failing lines written (for tests) */
    char error[512];          /* a failing worker's message (the first found) */
    char alert[768];          /* "" when the env answers everywhere */
} env_watch;

/* Start watching env `env` (the job's env.name) with env.missing_timeout_s. */
void env_watch_init(env_watch *w, const char *env, int missing_timeout_s);

/* Take the live workers' rows at time now_ms (the caller's monotonic clock):
 * logs what the module comment says and updates the alert. Returns
 * TIDAL_ERR_TIMEOUT, its message the job's stop reason naming the env,
 * env.missing_timeout_s and the failure, when the env has failed on every
 * active live worker for missing_timeout_s; else TIDAL_OK. */
tidal_status env_watch_update(env_watch *w, const env_watch_worker *rows, int n, double now_ms);

/* The env fails on every active live worker now. */
bool env_watch_all_failing(const env_watch *w);

#endif
