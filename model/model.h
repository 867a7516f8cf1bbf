/* model.h - the Qwen2 / Llama decoder on the CPU: parameters, forward, backward.
 *
 * The reference implementation every other path is tested against (llm.c's
 * train_gpt2.c, for today's Hugging Face decoders). Parameters, gradients and
 * activations each live in one contiguous allocation; each tensor is a named
 * view (its Hugging Face name) into them.
 *
 * A batch is packed: S sequences of different lengths concatenated into T
 * tokens with offsets cu_seqlens[S+1]; positions restart at 0 per sequence and
 * attention never crosses sequences; there is no padding. The output is, per
 * token, the log-probability of a target token and the entropy of the
 * next-token distribution; the full [T x V] logits are never held at once.
 * The backward takes d(loss)/d(logprob) per token (and optionally
 * d(loss)/d(entropy)), so the model does not know which RL loss is in use.
 */
#ifndef TIDAL_MODEL_MODEL_H
#define TIDAL_MODEL_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/config.h"
#include "model/safetensors.h"
#include "base/status.h"

typedef struct model model;

/* One parameter tensor: a view into the contiguous parameter and gradient buffers. */
typedef struct model_tensor {
    char name[96];             /* Hugging Face name, e.g. model.layers.3.self_attn.q_proj.weight */
    int ndim;                  /* 1 or 2 */
    int64_t shape[2];
    size_t offset;             /* into the parameter (and gradient) buffer, in floats */
    size_t numel;
} model_tensor;

typedef struct model_batch {
    int T;                     /* tokens */
    int S;                     /* sequences */
    const int32_t *ids;        /* [T] input token ids */
    const int32_t *targets;    /* [T] the token whose log-probability is wanted at each position */
    const int32_t *cu_seqlens; /* [S+1]: 0 = c0 < c1 < ... < cS = T */
    float inv_temp;            /* logits are multiplied by this (1 / sampling temperature); 0 means 1 */
} model_batch;

/* A model with zeroed parameters for config c (validated first). */
tidal_status model_create(const model_config *c, model **out);
void model_free(model *m);

/* Deterministic random initialisation (Hugging Face's: weights ~ N(0, std),
 * norms 1, biases 0; with random_biases, biases ~ N(0, std) too - for tests). */
void model_init_random(model *m, uint64_t seed, float std, bool random_biases);

/* Load DIR/config.json and DIR's safetensors (single file or shards). Every
 * parameter must be present with its shape (F32, BF16 or F16); unexpected
 * tensors are refused by name. */
tidal_status model_load(const char *dir, model **out);

/* Write DIR/config.json and DIR/model.safetensors (parameters as `dtype`,
 * F32 or BF16): a Hugging Face directory transformers and vLLM load. */
tidal_status model_save(const model *m, const char *dir, st_dtype dtype);

const model_config *model_cfg(const model *m);
int model_num_tensors(const model *m);
const model_tensor *model_tensor_at(const model *m, int i);
const model_tensor *model_find_tensor(const model *m, const char *name);
float *model_params(model *m, size_t *n);  /* the contiguous parameter buffer */
float *model_grads(model *m, size_t *n);   /* the gradient buffer (same layout) */
void model_zero_grads(model *m);

/* Check a batch against the model (ids and targets in range, offsets that
 * cover T, at least one token per sequence): TIDAL_ERR_INVALID naming the
 * first bad field and index. */
tidal_status model_batch_check(const model *m, const model_batch *b);

/* Forward over a packed batch. Writes logprob[T] and entropy[T]; logits_out
 * (NULL, or [T, V]) receives the scaled logits. Keeps the activations the
 * backward needs (grown to T as needed). */
tidal_status model_forward(model *m, const model_batch *b, float *logprob, float *entropy,
                           float *logits_out);

/* Backward of the last forward: accumulates into the gradients the gradient
 * of L = sum_t dlogprob[t] * logprob[t] + dentropy[t] * entropy[t]
 * (dentropy may be NULL). The batch must be the forward's. */
tidal_status model_backward(model *m, const model_batch *b, const float *dlogprob, const float *dentropy);

/* Global L2 norm of the gradients (accumulated in double). */
double model_grad_norm(const model *m);

/* Recompute the MLP's gate, up and SiLU(gate)*up in the backward instead of
 * keeping them for every layer (saves 3 * FFN floats per token per layer but
 * one; costs two more GEMMs per layer in the backward). Off by default. */
void model_set_recompute_mlp(model *m, bool on);

/* Activation floats kept per token by the forward (the formula of docs/memory.md). */
size_t model_activation_floats_per_token(const model_config *c, bool recompute_mlp);

/* ---------------------------------------------------------------- inference
 *
 * Generation keeps a KV cache: for each of `slots` sequences and every layer,
 * the keys (after RoPE) and values of up to max_len positions. model_infer
 * appends tokens to any set of slots in one call - a new sequence's whole
 * prompt (prefill), one token per running sequence (decode), or both mixed
 * (continuous batching) - and returns the logits of the last token of each.
 * No activations are kept for a backward. The cache belongs to the caller and
 * holds no reference to the weights: a model of the same shape may be swapped
 * in between calls (the in-flight weight update), the cached entries of the
 * earlier weights are kept. */
typedef struct model_kv model_kv;

tidal_status model_kv_create(const model_config *c, int slots, int max_len, model_kv **out);
void model_kv_free(model_kv *kv);
/* Empty a slot (its next token is at position 0). */
void model_kv_reset(model_kv *kv, int slot);
/* Tokens cached in a slot. */
int model_kv_len(const model_kv *kv, int slot);
int model_kv_slots(const model_kv *kv);
int model_kv_max_len(const model_kv *kv);

/* Append tokens to S slots: segment i (tokens[cu[i] .. cu[i+1]-1], at least
 * one) goes to slot slots[i] at positions kv_len .. kv_len + n - 1; the slots
 * are distinct. logits_last[S, V] receives the (unscaled) logits of each
 * segment's last token. TIDAL_ERR_INVALID (nothing changed) for an id out of
 * range, a repeated slot, or a segment that would pass max_len. */
tidal_status model_infer(model *m, model_kv *kv, int S, const int32_t *slots, const int32_t *cu,
                         const int32_t *tokens, float *logits_last);

#endif
