/* env.h - environments: the interface built-in envs implement, and the one
 * call through which a rollout worker reaches an environment, in-process or
 * over the bus (docs/design.md "Environments", docs/protocol.md).
 *
 * An environment answers requests: RESET (start an episode: its first
 * observation) and STEP (the model's turn: a reward, done, and for a
 * multi-turn env the next observation). Environments are stateless: all a
 * request needs is in it (the task - the dataset row as a JSON object -, the
 * action text and tokens, the turn number); the session id is opaque. So an
 * env instance can be restarted, and a retry can reach another instance.
 *
 * Ownership: an env_result owns its observation (heap, NULL = ""); clear it
 * with env_result_clear. Everything in an env_call belongs to the caller.
 */
#ifndef TIDAL_ENVS_ENV_H
#define TIDAL_ENVS_ENV_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

/* The ops, with the values of tidal.v1.EnvOp. */
typedef enum { ENV_OP_RESET = 1, ENV_OP_STEP = 2 } env_op;

#define ENV_MAX_METRICS 16
#define ENV_METRIC_NAME_MAX 48

typedef struct env_metric {
    char name[ENV_METRIC_NAME_MAX];
    double value;
} env_metric;

/* The answer to one request. */
typedef struct env_result {
    char *observation; /* heap, NULL = "" */
    double reward;
    bool done;
    int n_metrics;
    env_metric metrics[ENV_MAX_METRICS];
} env_result;

/* Free the observation and zero the result (safe on a zeroed result). */
void env_result_clear(env_result *r);
/* Set the observation to the printf-formatted text (replacing any). */
tidal_status env_result_observe(env_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Add metric name = v (name shorter than ENV_METRIC_NAME_MAX, not already
 * there, at most ENV_MAX_METRICS). */
tidal_status env_result_metric(env_result *r, const char *name, double v);

/* One request, as a caller sends it. */
typedef struct env_call {
    const char *session;          /* opaque episode id (may be NULL) */
    env_op op;
    const char *task_json;        /* the dataset row, a JSON object; NULL or "" = {} */
    const char *action;           /* STEP: the model's text; NULL = "" */
    const uint32_t *action_tokens; /* STEP: the same as ids (may be NULL) */
    size_t n_action_tokens;
    uint32_t turn;                /* 0 for RESET; 1, 2, ... for the STEPs of an episode */
} env_call;

/* One request, as an environment sees it: the call with its task parsed. */
typedef struct env_request {
    const env_call *call;
    const json_t *task; /* the parsed task_json: an object, never NULL */
    const char *action; /* never NULL */
} env_request;

/* A built-in environment. */
typedef struct env_class {
    const char *name;
    const char *summary; /* one line, for `tidal env list` */
    /* Parse the env's configuration (a JSON object, never NULL; {} = the
     * defaults) into *state; unknown keys and bad values are
     * TIDAL_ERR_INVALID naming the key. The state is read-only afterwards and
     * shared by concurrent requests. May be NULL (no configuration). */
    tidal_status (*create)(const json_t *config, void **state);
    void (*destroy)(void *state);
    /* Answer one request; thread-safe. A bad task or action is not an error
     * (the model's text can be anything: it scores 0); a task the env cannot
     * use - a missing or malformed field - is TIDAL_ERR_INVALID naming the
     * field, which becomes the response's `error`. */
    tidal_status (*handle)(const void *state, const env_request *rq, env_result *out);
    /* Optional (synthetic envs): the task for `seed` as JSON text and its
     * prompt, both malloc'd for the caller. The same seed gives the same task. */
    tidal_status (*generate)(const void *state, uint64_t seed, char **task_json, char **prompt);
} env_class;

/* The built-in classes, in a fixed order; NULL / 0 for an unknown name. */
size_t env_builtins(const env_class *const **out);
const env_class *env_builtin(const char *name);

/* ---- an environment in-process ---- */

typedef struct env env;

/* Instantiate built-in `name` with config_json (NULL or "" = {}):
 * TIDAL_ERR_NOT_FOUND for an unknown name (the message lists the built-in
 * ones), TIDAL_ERR_INVALID for a bad config. */
tidal_status env_create(const char *name, const char *config_json, env **out);
void env_free(env *e);
const env_class *env_class_of(const env *e);

/* From a synthetic env (one whose class has `generate`): the task for `seed`
 * as JSON text and its prompt, both malloc'd for the caller, under this
 * instance's configuration; the same seed gives the same task.
 * TIDAL_ERR_INVALID for an env without a generator (it scores dataset rows). */
tidal_status env_generate(const env *e, uint64_t seed, char **task_json, char **prompt);

/* Answer one call in-process: the op must be RESET or STEP, task_json an
 * object (else TIDAL_ERR_INVALID, naming it); the result is checked (finite
 * reward and metrics, metric names non-empty and distinct) before it is
 * returned. *out is overwritten first (it need not be initialized; clear a
 * previous result before reusing it); on error it is cleared. Thread-safe. */
tidal_status env_handle(const env *e, const env_call *c, env_result *out);

#endif
