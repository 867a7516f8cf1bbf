/* engine.h - the built-in generation engine on the CPU: continuous batching
 * over a KV cache, sampling with exact per-token log-probabilities. The GPU
 * engine (rollout/engine_cuda.h) is this engine with its steps computed on a
 * GPU: the same contract, all of the below but the sampler's RNG.
 *
 * Requests (a prompt's token ids and sampling parameters) wait in a FIFO
 * queue. Each engine_step() makes exactly one model_infer() call: every
 * running sequence decodes one token, and every free cache slot is refilled
 * from the queue in the same call, the new prompts prefilled whole (batched
 * prefill). A sequence that finishes frees its slot at once; its result waits
 * in a FIFO of results until engine_next_result() takes it.
 *
 * What is reported per generated token:
 *   - the token id;
 *   - its log-probability under the distribution it was sampled from AFTER
 *     temperature and BEFORE truncation: with z = logits / T (fp32, z_j =
 *     logit_j * (float)(1/T), as the trainer scales), logprob = z_tok -
 *     logsumexp(z), max-shifted, exp and sums in double - the trainer's own
 *     formula (kernels/cpu head) at the same temperature (model_batch.inv_temp
 *     = 1/T; docs/training.md: lbeh): equal to ~1e-6 with the same weights on the
 *     CPU (the KV-cache GEMMs round differently from the training forward);
 *   - a flag `truncated`: top-k / top-p / min-p removed at least one token
 *     of the vocabulary from the distribution the token was drawn from, so
 *     the true sampling probability (renormalised over the kept set) is larger
 *     than exp(logprob). The trainer can then mask, correct, or accept;
 *   - the policy version of the weights that computed the logits it was drawn
 *     from (engine_set_model changes it from the next step on).
 * Greedy decoding (temperature 0) takes the argmax (ties: the lowest id) and
 * reports its temperature-1 log-probability, z = logits; its `truncated` flag
 * is set (a point mass is the extreme truncation: greedy tokens are not
 * samples of the softmax).
 *
 * Sampling order for temperature > 0 (Hugging Face's warper order): top-k on
 * z, then top-p on the distribution renormalised over the top-k survivors
 * (the smallest most-probable prefix whose mass reaches top_p; ties in
 * probability broken by the lower id), then min-p (keep p_j >= min_p * p_max);
 * one uniform u in [0, 1) per sampled token from the request's own RNG
 * (xoshiro256** seeded by splitmix64(seed)) is inverted through the
 * renormalised cumulative distribution. The same seed and prompt give the same
 * tokens whatever else is in the batch (the logits of a row do not depend on
 * its neighbours up to fp32 summation order of the GEMM, which can flip a
 * token only when u lands within ~1e-7 of a bin edge).
 *
 * Finishing (engine_finish):
 *   STOP   a stop token id was sampled (it is the last token, kept), or the
 *          decoded bytes of the generated tokens now contain a stop string
 *          (matched on the byte stream, so a string may straddle any number
 *          of tokens; the token that completes it is the last token, kept in
 *          ids - as Hugging Face and vLLM do - and the result's stop_offset
 *          says where the text is to be cut). The engine adds no stop id of
 *          its own: pass the model's eos_token_id (and a chat template's
 *          end-of-turn id) in stop_ids. Only generated text is matched, never
 *          the prompt.
 *   LENGTH max_new_tokens generated, or the sequence is full (prompt +
 *          generated = the engine's max_len).
 *   ABORT  engine_abort(): the tokens generated so far are returned.
 *
 * Weights: the engine borrows a model; engine_set_model() swaps in another of
 * the same shape between steps without dropping sequences. The KV cache
 * keeps the entries the older weights computed (the in-flight update
 * semantics of PipelineRL / AReaL); tokens sampled after the swap carry the
 * new version.
 *
 * Threads: single-threaded. One thread (the rollout worker's) owns the engine
 * and makes every call; engine_step() itself uses OpenMP inside (the model's
 * ops, and sampling of the batch's rows in parallel). Callbacks run on the
 * calling thread inside engine_step() and must not call back into the engine.
 */
#ifndef TIDAL_ROLLOUT_ENGINE_H
#define TIDAL_ROLLOUT_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/model.h"
#include "base/status.h"

typedef struct engine engine;

typedef enum engine_finish {
    ENGINE_FINISH_STOP = 1,
    ENGINE_FINISH_LENGTH = 2,
    ENGINE_FINISH_ABORT = 3,
} engine_finish;

/* "stop", "length", "abort" (as OpenAI / vLLM name them); never NULL. */
const char *engine_finish_name(engine_finish f);

/* A token's bytes in the decoded text (the tokenizer's decode of one id, bytes
 * not necessarily valid UTF-8 on their own). *len receives the length; the
 * bytes stay valid until the next call. Used only for stop strings. */
typedef const char *(*engine_token_bytes_fn)(void *ctx, int32_t id, size_t *len);

/* One generated token, as it is sampled (streaming; tests). */
typedef struct engine_token_event {
    uint64_t request;      /* the id engine_submit gave */
    void *user;            /* the request's user pointer */
    int index;             /* 0 for the first generated token */
    int32_t token;
    float logprob;         /* as in the top comment */
    bool truncated;
    uint64_t version;
    const float *logits;   /* [V]: the unscaled logits it was drawn from; valid during the call */
    bool last;             /* the request finishes with this token */
} engine_token_event;
typedef void (*engine_token_fn)(void *ctx, const engine_token_event *ev);

typedef struct engine_options {
    int slots;                   /* sequences decoded together (the batch); >= 1 */
    int max_len;                 /* tokens per sequence, prompt + generated (the cache holds
                                    max_len positions per slot); <= max_position_embeddings */
    int max_step_tokens;         /* tokens per model call (decodes + prefills); 0: 4096. One
                                    prompt is always admitted when a slot is free, even if longer */
    engine_token_bytes_fn token_bytes; /* NULL: requests with stop strings are refused */
    void *token_bytes_ctx;
    engine_token_fn on_token;    /* NULL, or called for every sampled token in the step */
    void *on_token_ctx;
} engine_options;

typedef struct engine_sampling {
    float temperature;           /* 0: greedy (top_k, top_p, min_p, seed unused); otherwise > 0 */
    int top_k;                   /* 0 (or >= vocab): off */
    float top_p;                 /* 0 or 1: off; otherwise in (0, 1) */
    float min_p;                 /* 0: off; otherwise in [0, 1] */
    uint64_t seed;               /* the request's RNG */
} engine_sampling;

typedef struct engine_request {
    const int32_t *prompt;       /* [prompt_len] ids, 1 <= prompt_len < max_len */
    int prompt_len;
    engine_sampling sampling;
    int max_new_tokens;          /* >= 1 */
    const int32_t *stop_ids;     /* [n_stop_ids] */
    int n_stop_ids;
    const char *const *stop_strings; /* [n_stop_strings], NUL-terminated, non-empty */
    int n_stop_strings;
    void *user;                  /* opaque, handed back in events and the result */
} engine_request;

/* A finished request. Owned by the caller after engine_next_result(); free
 * it with engine_result_free(). The arrays have n entries. */
typedef struct engine_result {
    uint64_t id;
    void *user;
    engine_finish finish;
    int n;                       /* generated tokens */
    int32_t *ids;
    float *logprobs;
    uint64_t *versions;
    bool *truncated;
    int stop_string;             /* index of the stop string matched, else -1 */
    size_t stop_offset;          /* with a stop string: the bytes of the decoded generated text
                                    before it (the text to keep); else the bytes decoded so
                                    far (0 without a token_bytes callback) */
    int prompt_len;
} engine_result;

/* An engine over model m (borrowed: it must outlive the engine or be replaced
 * with engine_set_model first) at policy version `version`. Allocates the KV
 * cache (slots x max_len positions) and the step buffers. */
tidal_status engine_create(model *m, uint64_t version, const engine_options *o, engine **out);
/* Frees the engine, its queue and undelivered results. NULL is a no-op. */
void engine_free(engine *e);

/* Queue a request (everything is copied; the caller's arrays may go after
 * the call). *id (may be NULL) receives its id, unique per engine, from 1.
 * TIDAL_ERR_INVALID naming the field for a bad request (ids out of range,
 * prompt longer than max_len, sampling parameters out of range, stop strings
 * without a token_bytes callback). */
tidal_status engine_submit(engine *e, const engine_request *r, uint64_t *id);

/* One model call: decode one token for every running sequence, prefill the
 * prompts admitted into free slots, sample, finish what is done. With nothing
 * queued or running it does nothing. On an error from the model nothing is
 * admitted or sampled (the engine is unchanged and the step may be retried). */
tidal_status engine_step(engine *e);

/* Swap the weights between steps: m must have the engine's shape (vocab,
 * hidden, layers, heads, head_dim, FFN, tying, biases, RoPE theta, norm eps),
 * else TIDAL_ERR_INVALID naming the first difference. Tokens sampled from the
 * next step on carry `version`. The previous model is no longer used. */
tidal_status engine_set_model(engine *e, model *m, uint64_t version);
uint64_t engine_version(const engine *e);

/* Finish request `id` now with ABORT (queued: no tokens; running: the tokens
 * so far; its slot is freed). TIDAL_ERR_NOT_FOUND if it is not queued or
 * running (unknown, or finished already). */
tidal_status engine_abort(engine *e, uint64_t id);

/* The oldest finished request not yet taken, or NULL. */
engine_result *engine_next_result(engine *e);
void engine_result_free(engine_result *r);

int engine_num_running(const engine *e);
int engine_num_queued(const engine *e);
/* Requests queued or running (results waiting do not count). */
static inline bool engine_busy(const engine *e) { return engine_num_running(e) + engine_num_queued(e) > 0; }

/* Counters since creation. */
typedef struct engine_stats {
    uint64_t steps;              /* model calls */
    uint64_t prefill_tokens;
    uint64_t decode_tokens;      /* tokens fed back for decoding */
    uint64_t sampled_tokens;
    uint64_t finished;
} engine_stats;
engine_stats engine_get_stats(const engine *e);

#endif
