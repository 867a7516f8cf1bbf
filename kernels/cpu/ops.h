/* ops.h - the CPU reference ops of the transformer: forward and backward.
 *
 * fp32, row-major, one readable implementation per op (llm.c style): GEMMs go
 * to the AVX-512 tiles of kernels/cpu/gemm.c where the CPU has AVX-512, and to
 * OpenBLAS for large products (where OpenBLAS has AVX-512 kernels of its own)
 * and on CPUs without AVX-512 (docs/architecture.md "CPU GEMMs of our own");
 * everything else is a plain loop threaded with OpenMP. These are the oracle
 * the GPU path (designed, not built yet) is to be tested against, so clarity
 * beats cleverness.
 *
 * Layout conventions (T tokens of a packed batch, C channels):
 *   activations [T, C]; a Linear weight is [OC, C] (Hugging Face layout) and
 *   y = x W^T + b; q is [T, NH, HD], k and v are [T, NKV, HD] (GQA: query head h
 *   reads kv head h / (NH / NKV)). A packed batch holds S sequences; sequence s
 *   is tokens cu_seqlens[s] .. cu_seqlens[s+1]-1; attention never crosses them.
 *
 * Gradient convention: backward functions ACCUMULATE (+=) into parameter
 * gradients (dw, dbias) and into dinp, unless the comment says "overwrites".
 * Callers zero gradients before a step. No function allocates, except where
 * the comment says so; scratch comes from the caller.
 */
#ifndef TIDAL_KERNELS_CPU_OPS_H
#define TIDAL_KERNELS_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

/* Tokens per chunk of the LM head: the [T, V] logits are never held at once,
 * only [CPU_HEAD_CHUNK, V] (the caller's scratch). */
#define CPU_HEAD_CHUNK 256

/* Limits of the attention ops (their per-task accumulators live on the
 * stack): query heads per kv head, and that times head_dim. model/config
 * refuses models beyond them by name. */
#define CPU_ATT_MAX_GROUP 64
#define CPU_ATT_MAX_GROUP_WIDTH 8192

/* ---- linear ---- */
/* out[T,OC] = inp[T,C] @ w[OC,C]^T + bias[OC] (bias may be NULL). Overwrites out. */
void cpu_matmul_forward(float *out, const float *inp, const float *w, const float *bias, int T, int C, int OC);
/* dinp[T,C] += dout[T,OC] @ w;  dw[OC,C] += dout^T @ inp;  dbias[OC] += sum_t dout.
 * dinp and dbias may be NULL (not needed). */
void cpu_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int T, int C, int OC);

/* ---- embedding ---- */
/* out[T,C] = wte[ids[t], :]. Overwrites out. ids are checked by the caller. */
void cpu_embedding_forward(float *out, const int32_t *ids, const float *wte, int T, int C);
/* dwte[ids[t], :] += dout[t, :] (deterministic: in token order). */
void cpu_embedding_backward(float *dwte, const float *dout, const int32_t *ids, int T, int C);

/* ---- RMSNorm (fp32 statistics) ---- */
/* out[T,C] = inp * rstd[t] * w, rstd[t] = 1 / sqrt(mean(inp[t]^2) + eps). Overwrites out and rstd[T]. */
void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int T, int C, float eps);
/* dinp[T,C] += ..., dw[C] += ... from dout, the forward's inp, w and rstd. */
void cpu_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                          const float *rstd, int T, int C);

/* ---- rotary position embedding, Hugging Face rotate_half layout ---- */
/* In place on x[T, NH, HD]: for i < HD/2, with a = pos[t] * theta^(-2i/HD),
 *   x'[i] = x[i] cos a - x[i+HD/2] sin a;  x'[i+HD/2] = x[i+HD/2] cos a + x[i] sin a.
 * As Hugging Face does in fp32: inv_freq = theta^(-2i/HD) computed in double and
 * rounded to float, a = (float)pos * inv_freq in float, then cosf/sinf. */
void cpu_rope_forward(float *x, const int32_t *pos, int T, int NH, int HD, float theta);
/* In place on dx[T, NH, HD]: the transpose rotation (gradient of the above). */
void cpu_rope_backward(float *dx, const int32_t *pos, int T, int NH, int HD, float theta);

/* ---- causal attention over a packed batch, GQA ---- */
/* out[T,NH,HD] = softmax(q k^T / sqrt(HD), causal within each sequence) v.
 * lse[T,NH] receives each row's log-sum-exp (of the scaled scores) for the
 * backward, which recomputes the probabilities instead of storing [T x T].
 * Overwrites out and lse. */
void cpu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                           const int32_t *cu_seqlens, int S, int T, int NH, int NKV, int HD);
/* Overwrites dq[T,NH,HD], dk[T,NKV,HD], dv[T,NKV,HD] from dout and the forward's
 * out, lse, q, k, v. */
void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                            const float *lse, const float *q, const float *k, const float *v,
                            const int32_t *cu_seqlens, int S, int T, int NH, int NKV, int HD);

/* ---- attention against a KV cache (generation) ---- */
/* Token t (slot slot[t], position pos[t]) attends to positions 0 .. pos[t] of
 * its slot's cache: kcache/vcache are [slots, max_len, NKV, HD] and already
 * hold this token's own k and v. out[T,NH,HD] is overwritten. */
void cpu_attention_cached(float *out, const float *q, const float *kcache, const float *vcache,
                          const int32_t *slot, const int32_t *pos, int T, int NH, int NKV, int HD, int max_len);

/* ---- SwiGLU ---- */
/* out[i] = silu(gate[i]) * up[i] for N elements. Overwrites out. */
void cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t N);
/* Overwrites dgate[N] and dup[N]. */
void cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                         size_t N);

/* ---- LM head with log-probabilities and entropy, chunked over tokens ---- */
/* For each token t, z = (h[t,:] @ w^T) * inv_temp over the vocabulary V
 * (w is [V, C]): logprob[t] = z[target[t]] - logsumexp(z), entropy[t] =
 * -sum_j p_j log p_j, both computed in fp32 with a max-shifted log-sum-exp (and
 * double accumulation of the sums). logits_out[T,V] (may be NULL) receives z.
 * scratch holds CPU_HEAD_CHUNK * V floats. Overwrites logprob[T], entropy[T]. */
void cpu_head_forward(float *logprob, float *entropy, float *logits_out, const float *h, const float *w,
                      const int32_t *targets, int T, int C, int V, float inv_temp, float *scratch);
/* Backward of L = sum_t dlogprob[t] * logprob[t] + dentropy[t] * entropy[t]
 * (dentropy may be NULL): recomputes each chunk's logits, then
 * dh[T,C] += dz @ w * inv_temp... (the chain rule through the scaling),
 * dw[V,C] += ... . Uses dz_j = dlogprob (1[j = target] - p_j) - dentropy p_j (log p_j + H). */
void cpu_head_backward(float *dh, float *dw, const float *dlogprob, const float *dentropy, const float *h,
                       const float *w, const int32_t *targets, int T, int C, int V, float inv_temp,
                       float *scratch);

/* ---- threads ---- */
/* Use n threads for OpenMP loops and OpenBLAS (0: all cores). */
void cpu_set_threads(int n);
int cpu_threads(void);

#endif
