/* api.h - the HTTP dialects `tidal serve` speaks, as pure functions: a JSON
 * request body in, a parsed request out; finished samples in, a JSON response
 * body out. No sockets and no engine here, so every parser is unit-tested and
 * fuzzed on its own (tests/unit/test_serve_api.c, tests/fuzz/fuzz_serve.c).
 *
 * Three request shapes (docs/inference.md lists every field and default):
 *   SERVE_COMPLETIONS  OpenAI / vLLM POST /v1/completions: prompt as a
 *                      string, a list of ids, or a list of either (a batch);
 *                      n, max_tokens (16), temperature (1), top_p, top_k
 *                      (-1 or 0: off), min_p, seed (sample j of a prompt
 *                      gets seed + j), stop, stop_token_ids, ignore_eos,
 *                      logprobs (null or 0), echo (false only),
 *                      return_token_ids, return_tokens_as_token_ids,
 *                      skip_special_tokens (true), include_stop_str_in_output,
 *                      stream.
 *   SERVE_CHAT         POST /v1/chat/completions: messages (role, content as
 *                      a string or a list of {type: text, text} parts),
 *                      max_tokens or max_completion_tokens, logprobs (bool),
 *                      top_logprobs (0 only), the same sampling fields.
 *   SERVE_GENERATE     SGLang POST /generate: text or input_ids (one or a
 *                      batch), sampling_params {max_new_tokens (128),
 *                      temperature, top_p, top_k, min_p, n, stop,
 *                      stop_token_ids, ignore_eos, skip_special_tokens,
 *                      no_stop_trim, sampling_seed}, return_logprob,
 *                      top_logprobs_num (0 only), stream, rid.
 * Unknown fields are ignored (clients send many); a known field with a wrong
 * type or range is refused, naming it. top logprobs are not computed: asking
 * for more than the sampled token's log-probability is refused.
 */
#ifndef TIDAL_SERVE_API_H
#define TIDAL_SERVE_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef enum serve_dialect { SERVE_COMPLETIONS = 0, SERVE_CHAT = 1, SERVE_GENERATE = 2 } serve_dialect;

/* One prompt: token ids, or text still to tokenize (exactly one is set). */
typedef struct serve_prompt {
    int32_t *ids; /* heap, n of them, or NULL */
    int n;
    char *text;   /* heap, NUL-terminated, or NULL */
} serve_prompt;

typedef struct serve_message {
    char *role;    /* heap: system | user | assistant */
    char *content; /* heap: the text, parts joined */
} serve_message;

/* A parsed request. Everything it points to is heap memory it owns
 * (serve_request_clear frees it). */
typedef struct serve_request {
    serve_dialect dialect;
    serve_prompt *prompts; /* completions, generate: n_prompts of them */
    int n_prompts;
    bool batched;          /* the prompt field was a list of prompts (generate answers with a list) */
    serve_message *messages; /* chat: n_messages */
    int n_messages;
    int n;                 /* samples per prompt, >= 1 */
    int max_tokens;        /* >= 1 */
    float temperature;     /* 0: greedy */
    float top_p;           /* 1: off */
    int top_k;             /* 0: off */
    float min_p;
    bool has_seed;
    uint64_t seed;
    char **stop;           /* stop strings, n_stop of them, non-empty */
    int n_stop;
    int32_t *stop_ids;     /* stop_token_ids */
    int n_stop_ids;
    bool ignore_eos;
    bool logprobs;         /* report the sampled token's log-probability */
    bool stream;
    bool return_token_ids;
    bool tokens_as_ids;    /* logprobs.tokens as "token_id:N" */
    bool skip_special;     /* leave special tokens out of the text */
    bool keep_stop_str;    /* the matched stop string stays in the text */
    char model[128];       /* as sent ("" when absent) */
    char rid[128];         /* generate's rid ("" when absent) */
} serve_request;

/* Limits a request is checked against. */
typedef struct serve_limits {
    int vocab;          /* token ids must be in [0, vocab) */
    int max_n;          /* samples per prompt at most */
    int max_sequences;  /* n_prompts x n at most */
    int max_tokens;     /* max_tokens at most */
} serve_limits;

/* Parse `len` bytes of a JSON body for `dialect` into *out (cleared first).
 * TIDAL_ERR_INVALID "FIELD: what is wrong" with the field's name copied into
 * param (cap bytes; "" when the body itself is wrong). On error *out holds
 * nothing. */
tidal_status serve_parse(serve_dialect dialect, const char *body, size_t len, const serve_limits *lim,
                         serve_request *out, char *param, size_t param_cap);

void serve_request_clear(serve_request *r);

/* One finished sample, as the response builders read it. */
typedef struct serve_sample {
    int prompt_index, sample_index;
    const int32_t *ids;     /* generated ids, n of them */
    const float *logprobs;  /* n */
    int n;
    int prompt_tokens;
    const char *text;       /* the generated text to report (stop string cut, specials skipped) */
    size_t text_len;
    const char *const *token_texts; /* n: each token's text for logprobs (may hold invalid UTF-8 bytes) */
    const size_t *token_text_lens;
    const char *finish;     /* "stop", "length", "abort" */
    const char *matched_stop; /* the stop string matched, or NULL */
    int32_t matched_id;       /* the stop token sampled, or -1 */
    const char *weight_version;
} serve_sample;

/* The response bodies (malloc'd NUL-terminated JSON; NULL when out of
 * memory). samples are in choice order: prompt-major, then sample. `id`
 * names the response ("cmpl-...", "chatcmpl-..."), `created` is Unix time. */
char *serve_completions_body(const serve_request *r, const serve_sample *s, int n_samples, const char *id,
                             long long created, const char *model);
char *serve_chat_body(const serve_request *r, const serve_sample *s, int n_samples, const char *id,
                      long long created, const char *model);
char *serve_generate_body(const serve_request *r, const serve_sample *s, int n_samples, const char *id);

/* One server-sent event's JSON for a stream: the delta of sample s since the
 * previous chunk (text bytes text_from.., tokens tok_from..); finish set on
 * the last. For generate the chunk is cumulative (text and output_ids so
 * far), as SGLang streams. */
char *serve_chunk(const serve_request *r, const serve_sample *s, size_t text_from, int tok_from, bool first,
                  bool last, const char *id, long long created, const char *model);

/* An OpenAI-style error body: {"error": {"message", "type", "param", "code"}}. */
char *serve_error_body(int http_status, const char *message, const char *param);

#endif
