/* serve.h - `tidal serve`: the built-in engine behind an HTTP server that
 * speaks the routes a rollout worker drives on vLLM and SGLang.
 *
 * One engine thread owns the engine (rollout/engine.h: continuous batching
 * over `slots` sequences) and steps it while anything runs; libmicrohttpd
 * answers each connection on its own thread, parses the body (serve/api.h),
 * queues one sequence per sample and waits for them (or streams their tokens
 * as server-sent events). Routes (docs/inference.md has the fields):
 *   GET  /health, /v1/models, /get_model_info, /get_weight_version, /is_paused
 *   POST /v1/completions, /v1/chat/completions     (OpenAI / vLLM)
 *   POST /generate                                  (SGLang)
 *   POST /update_weights_from_disk {model_path, weight_version, abort_all_requests}
 *   POST /pause_generation {mode: abort|in_place|retract}, /continue_generation   (SGLang)
 *   POST /pause?mode=abort|keep|wait, /resume, /collective_rpc {method: reload_weights,
 *        kwargs: {weights_path}}, /update_weight_version, /reset_prefix_cache   (vLLM dev mode)
 * Weight updates: a new directory of the same shape is loaded on the
 * request's thread, then swapped in by the engine thread once no sequence
 * runs (new ones wait meanwhile), so every sample's tokens come from one
 * version - the one its response names (meta_info.weight_version). While
 * paused in place the swap happens at once and running sequences continue on
 * the new weights. A failed load leaves the old weights and answers 400.
 * Errors are OpenAI-style bodies with a 4xx status; no input crashes it.
 */
#ifndef TIDAL_SERVE_SERVE_H
#define TIDAL_SERVE_SERVE_H

#include "base/status.h"

typedef struct serve_opts {
    const char *model_dir;      /* a Hugging Face directory; without tokenizer.json only token-id prompts work */
    const char *host;           /* address to bind; NULL: 127.0.0.1 */
    int port;                   /* 0: any free port (serve_port says which) */
    const char *token;          /* bearer token every request must carry; NULL or "": none */
    const char *served_name;    /* the model's name in responses; NULL: the directory's last component */
    const char *weight_version; /* the version of model_dir's weights; NULL: "0" */
    int slots;                  /* sequences decoded together; 0: 16 */
    int max_len;                /* tokens per sequence; 0: the model's limit, at most 2048 */
} serve_opts;

typedef struct serve_server serve_server;

/* Load the model (and its tokenizer when the directory has one), start the
 * engine thread and the HTTP server. *out belongs to the caller
 * (serve_stop). Errors name the directory's file or the address. */
tidal_status serve_start(const serve_opts *o, serve_server **out);

/* The port it listens on. */
int serve_port(const serve_server *s);

/* Stop taking connections, end running requests (abort), join the threads
 * and free everything. NULL is a no-op. */
void serve_stop(serve_server *s);

#endif
