/* tidal_env.h - libtidal_env: serve a custom environment on tidal's bus.
 *
 * An environment is a function from a request - the task (a dataset row as
 * JSON text), the model's text for this turn, the turn number - to a reward,
 * whether the episode is done, and for a multi-turn environment the next
 * observation. This library connects to NATS, subscribes to tidal.env.<name>
 * in its queue group (so any number of copies share the load), decodes every
 * EnvRequest, calls your handler on one of `concurrency` threads, and
 * answers every request with exactly one EnvResponse - an `error` one when
 * the request does not decode, is too large, or your handler fails. Stopping
 * (tidal_env_stop, or SIGINT / SIGTERM in tidal_env_run) drains: requests
 * already received are answered before it returns.
 *
 * The wire contract is docs/protocol.md; this header needs nothing else of
 * tidal's. Python binds it with ctypes (envs/python/tidal_env.py).
 *
 * Ownership: everything in a tidal_env_request is the library's and valid
 * only during the handler call; the response is filled through the setters,
 * which copy what they are given. Functions returning int return 0 on
 * success and -1 on failure, with tidal_env_last_error() saying why.
 */
#ifndef TIDAL_ENV_SDK_H
#define TIDAL_ENV_SDK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIDAL_ENV_OP_RESET 1
#define TIDAL_ENV_OP_STEP 2

typedef struct tidal_env_request {
    const char *env;              /* the environment's name */
    const char *session;          /* opaque episode id */
    int op;                       /* TIDAL_ENV_OP_RESET or TIDAL_ENV_OP_STEP */
    const char *task_json;        /* the dataset row, a JSON object ("{}" when the caller sent none) */
    const char *action_text;      /* STEP: the model's text for this turn ("" for RESET) */
    const uint32_t *action_tokens; /* the same as token ids (may be empty) */
    size_t n_action_tokens;
    uint32_t turn;                /* 0 for RESET; 1, 2, ... for the steps of an episode */
} tidal_env_request;

typedef struct tidal_env_response tidal_env_response;

/* Fill the response (defaults: reward 0, not done, no observation). The
 * observation, metric names and error text are copied. A reward or metric
 * value must be finite; at most 16 metrics, names non-empty, shorter than 48
 * bytes and distinct. */
int tidal_env_set_reward(tidal_env_response *r, double reward);
int tidal_env_set_done(tidal_env_response *r, int done);
int tidal_env_set_observation(tidal_env_response *r, const char *text);
int tidal_env_add_metric(tidal_env_response *r, const char *name, double value);
/* Mark the request failed with this message (the caller retries, then
 * records the sample as an environment error). */
int tidal_env_set_error(tidal_env_response *r, const char *message);

/* The full handler: answer RESET and STEP. Return 0, or non-zero to fail
 * the request (with the message given to tidal_env_set_error, if any). Called
 * on the library's threads, up to `concurrency` at once. */
typedef int (*tidal_env_handler)(void *user, const tidal_env_request *rq, tidal_env_response *rsp);

/* The single-turn shortcut: the reward of `completion` for the task. RESET
 * is answered with an empty observation; STEP with done = true and *reward.
 * Return 0, or non-zero to fail the request (say why first with
 * tidal_env_score_error). */
typedef int (*tidal_env_score_fn)(void *user, const char *task_json, const char *completion, double *reward);

/* From inside a score function: the message of the failure it is about to
 * return (copied; for this request only). */
int tidal_env_score_error(const char *message);

typedef struct tidal_env_options {
    const char *url;        /* NATS URL(s), comma separated; NULL = nats://127.0.0.1:4222 */
    const char *name;       /* the environment's name: subject tidal.env.<name> (required) */
    int concurrency;        /* handler threads; 0 = 4 */
    size_t max_request_bytes; /* larger requests get an error reply; 0 = 4 MiB */
    const char *user, *password, *token, *creds_file; /* optional credentials */
    const char *tls_ca, *tls_cert, *tls_key;           /* optional TLS files */
} tidal_env_options;

typedef struct tidal_env_server tidal_env_server;

/* Connect and start serving with a full handler, or with a score function;
 * returns once the subscription is live. */
int tidal_env_start(const tidal_env_options *o, tidal_env_handler h, void *user, tidal_env_server **out);
int tidal_env_start_score(const tidal_env_options *o, tidal_env_score_fn f, void *user, tidal_env_server **out);

/* Stop taking requests, answer the ones received, disconnect and free. */
void tidal_env_stop(tidal_env_server *s);

/* Requests answered so far, and of those, answered with an error. */
uint64_t tidal_env_served(const tidal_env_server *s);
uint64_t tidal_env_failed(const tidal_env_server *s);

/* Serve until SIGINT or SIGTERM (or, when stop_after_ms > 0, that long),
 * then stop as above: the whole life of an environment process in one call. */
int tidal_env_run(const tidal_env_options *o, tidal_env_handler h, void *user, int64_t stop_after_ms);
int tidal_env_run_score(const tidal_env_options *o, tidal_env_score_fn f, void *user, int64_t stop_after_ms);

/* Why the last call on this thread failed ("" when none). */
const char *tidal_env_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
