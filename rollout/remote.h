/* remote.h - generation on inference servers over HTTP: vLLM's
 * /v1/completions or SGLang's /generate, driven with libcurl's multi
 * interface, as a generator (rollout/generator.h) episodes use like the
 * built-in engine; and the sidecar's weight reload into those servers.
 *
 * Requests. One HTTP request per sample, token ids in and token ids out
 * (text is never re-tokenised): vLLM gets {"prompt": [ids], "n": 1,
 * "logprobs": 0, "return_token_ids": true, ...}, SGLang {"input_ids": [ids],
 * "return_logprob": true, "sampling_params": {...}}; both with ignore_eos
 * and the request's stop_token_ids, so a sample ends exactly where the
 * built-in engine's would. Requests go round-robin over the endpoints, at
 * most `in_flight` at once over kept-alive connections. A connection error,
 * a timeout or a 5xx is retried (on the next endpoint, after a backoff of
 * 100 ms x 2^attempt) up to `retries` times, and so is a sample the server
 * aborted; a 4xx or an answer that cannot be read fails the step, naming the
 * endpoint and the field (the worker then gives the prompt back).
 *
 * Versions: every token of a sample carries one version, that of the
 * weights the server held for the whole request: SGLang's
 * meta_info.weight_version when it is a number, else the version the last
 * reload installed (remote_reload runs only while no request is in flight,
 * so a request never spans two versions).
 *
 * Log-probabilities are the server's for the sampled token; they match the
 * trainer's definition only when the server reports them after temperature
 * (vLLM: --logprobs-mode processed_logprobs; SGLang and `tidal serve` do).
 * Tokens are flagged truncated when top-k or top-p was on.
 */
#ifndef TIDAL_ROLLOUT_REMOTE_H
#define TIDAL_ROLLOUT_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "rollout/engine.h"
#include "rollout/generator.h"

typedef enum remote_dialect { REMOTE_VLLM = 0, REMOTE_SGLANG = 1 } remote_dialect;

/* "vllm" or "sglang" -> *out; TIDAL_ERR_INVALID otherwise. */
tidal_status remote_dialect_parse(const char *name, remote_dialect *out);

typedef struct remote_opts {
    remote_dialect dialect;
    const char *endpoints;   /* base URLs separated by commas: "http://10.0.0.5:8000,http://10.0.0.6:8000" */
    const char *token;       /* bearer token, or NULL / "" */
    const char *model;       /* vLLM's "model" field; NULL or "": the first name /v1/models gives */
    int vocab;               /* ids the server returns must be below this */
    int connect_timeout_ms;  /* 0: 5000 */
    int request_timeout_ms;  /* 0: 600000 */
    int retries;             /* per request; negative: 3 */
    int in_flight;           /* requests on the wire at once; 0: 64 */
} remote_opts;

typedef struct remote remote;

/* A client for o's endpoints (no connection is made yet). Strings are
 * copied. TIDAL_ERR_INVALID naming the endpoint for a URL that is not
 * http:// or https://. */
tidal_status remote_create(const remote_opts *o, remote **out);
void remote_free(remote *r);

/* Ask every endpoint whether it answers (vLLM: GET /v1/models, which also
 * names the model when opts.model was empty; SGLang: GET /get_model_info).
 * TIDAL_ERR_UNAVAILABLE naming the endpoint and why otherwise. */
tidal_status remote_check(remote *r);

/* The generator over r (borrowed: r outlives it). */
generator remote_generator(remote *r);

/* Reload every endpoint from the Hugging Face directory `dir` (an absolute
 * path the servers can read) as version v: SGLang POST
 * /update_weights_from_disk {model_path, weight_version}; vLLM POST
 * /pause?mode=wait, /collective_rpc reload_weights {weights_path},
 * /update_weight_version, /reset_prefix_cache, /resume. Needs no request in
 * flight (TIDAL_ERR_INVALID otherwise). On success tokens from now on carry v;
 * on failure the version stays, and TIDAL_ERR_REMOTE names the endpoint and
 * the server's message (an endpoint already reloaded is not rolled back:
 * SGLang's version then differs per endpoint, which its responses say). */
tidal_status remote_reload(remote *r, const char *dir, uint64_t v);
uint64_t remote_version(const remote *r);
/* The version the servers hold without a reload (at start: what they were launched with). */
void remote_set_version(remote *r, uint64_t v);

/* Counters for heartbeats and logs. */
typedef struct remote_stats {
    uint64_t requests, retries, failed, aborted;
} remote_stats;
remote_stats remote_get_stats(const remote *r);

/* ---- the response readers (pure; fuzzed) ---- */

/* One sample as a server returned it. */
typedef struct remote_reply {
    int32_t *ids;        /* heap, n */
    float *logprobs;     /* heap, n */
    int n;
    engine_finish finish;
    bool has_version;    /* SGLang's meta_info.weight_version was a number */
    uint64_t version;
} remote_reply;
void remote_reply_clear(remote_reply *r);

/* Read a vLLM /v1/completions body (the first choice) or an SGLang /generate
 * body into *out: token ids in [0, vocab), one finite log-probability <= 0
 * per id (vLLM's -9999 floor is kept), finish stop | length | abort.
 * TIDAL_ERR_INVALID "FIELD: ..." otherwise - a vLLM answer without
 * token_ids says which flag or version provides them. */
tidal_status remote_parse_vllm(const char *body, size_t len, int vocab, remote_reply *out);
tidal_status remote_parse_sglang(const char *body, size_t len, int vocab, remote_reply *out);

#endif
