/* client.h - the one API a rollout worker uses to reach an environment,
 * in-process or over the bus.
 *
 * A local client calls a built-in env (envs/env.h) in the calling thread. A
 * remote client sends EnvRequest on tidal.env.<name> (core request/reply:
 * the env's queue group picks one instance) and waits for the EnvResponse,
 * with a timeout per attempt and a bounded number of retries with backoff;
 * a retry may reach another instance, so a crashed or hung one costs a
 * timeout, not the sample. Environments are stateless (env.h), which is what
 * makes retrying safe.
 *
 * Outcomes of env_client_call:
 *   TIDAL_OK              *out holds the answer
 *   TIDAL_ERR_REMOTE      the env answered with `error` on every attempt (message: the last one)
 *   TIDAL_ERR_TIMEOUT     no answer on any attempt (or nobody serves the env: "no responders on
 *                         tidal.env.<name>", the message naming the subject)
 *   TIDAL_ERR_PERMISSION  this connection may not publish on tidal.env.<name> (not retried)
 *   TIDAL_ERR_DECODE      the answers did not decode, or were invalid (NaN reward, ...)
 *   TIDAL_ERR_INVALID     a bad call (op, task_json not an object), or a local env's error
 * The clients are thread-safe: one may serve every generation thread.
 */
#ifndef TIDAL_ENVS_CLIENT_H
#define TIDAL_ENVS_CLIENT_H

#include "envs/env.h"
#include "bus/bus.h"

typedef struct env_client env_client;

typedef struct env_client_opts {
    int timeout_ms; /* per attempt; 0 = 10,000 */
    int retries;    /* further attempts after the first; 0 = none (-1 = the default, 2) */
    int backoff_ms; /* before retry i: backoff_ms * 2^i, capped at 2 s; 0 = 50 */
} env_client_opts;

/* A built-in environment in this process (config as env_create). */
tidal_status env_client_local(const char *name, const char *config_json, env_client **out);

/* An environment on the bus (any instance serving tidal.env.<name>). The bus
 * is borrowed: it must outlive the client. */
tidal_status env_client_remote(tidal_bus *b, const char *name, const env_client_opts *opts, env_client **out);

void env_client_free(env_client *c);

/* Send one request and wait for its answer (see the outcomes above). On any
 * error *out is cleared. */
tidal_status env_client_call(env_client *c, const env_call *call, env_result *out);

/* The most model turns an episode of this environment may take, as the job
 * configures it: config_json's "max_turns" when it is an integer in 1..1024,
 * else ENV_CLIENT_MAX_TURNS_DEFAULT (also for NULL, non-JSON or non-object
 * text). Local and remote envs alike: the worker, not the env, ends an
 * episode at this count, so it is read from the job's config, never asked
 * of an env instance. */
#define ENV_CLIENT_MAX_TURNS_DEFAULT 16
int env_client_max_turns(const char *config_json);

/* Attempts made and retries needed so far (for metrics and tests). */
void env_client_stats(const env_client *c, uint64_t *calls, uint64_t *retries);

/* How the client's calls have gone, for the loud reports of a failing env
 * (the worker's log and heartbeat): a run of failures begins with a call
 * that fails for good (after its retries; any outcome but TIDAL_OK) and ends
 * with the next call that is answered. */
#define ENV_CLIENT_ERROR_MAX 512
typedef struct env_client_health {
    uint64_t answered, failed;          /* calls, in all */
    bool failing;                       /* the last call failed */
    uint64_t failing_since_unix_ms;     /* when the current run of failures began; 0 when not failing */
    uint64_t failed_in_run;             /* calls failed in the current run (0 when not failing) */
    char last_error[ENV_CLIENT_ERROR_MAX]; /* the last failure's message ("" before any) */
} env_client_health;

/* A consistent copy of c's health into *out. Thread-safe. */
void env_client_health_get(const env_client *c, env_client_health *out);

#endif
