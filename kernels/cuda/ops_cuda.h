/* ops_cuda.h - the transformer's ops on a CUDA GPU: the kernels that replace
 * kernels/cpu/ops.h, one for one, and the one GEMM wrapper (cuBLASLt).
 *
 * Same layouts and conventions as kernels/cpu/ops.h (read its top comment):
 * activations [T, C], Linear weights [OC, C], q [T, NH, HD], k/v [T, NKV, HD],
 * packed sequences by cu_seqlens, backward functions ACCUMULATE (+=) into
 * parameter gradients and dinp unless the comment says "overwrites". What
 * differs:
 *   - every pointer is device memory, every call is asynchronous on the
 *     stream it is given, and returns a tidal_status for the launch (with
 *     TIDAL_CUDA_SYNC=1, for the execution too: common.h);
 *   - activations and weights are `dt` (CUDA_F32 or CUDA_BF16, void
 *     pointers); statistics (rstd), parameter gradients (dw, dbias, dwte),
 *     master weights and optimizer state are always float; arithmetic is fp32;
 *   - reductions across tokens go through scratch from the caller (sizes
 *     below), in a fixed order: the same inputs give the same bits, with no
 *     float atomics anywhere.
 * Bad shapes (T < 0, HD odd, ...) are refused with TIDAL_ERR_INVALID naming
 * the op and the value; pointers are the caller's to get right.
 *
 * Written and compiled without a GPU: see docs/gpu.md for what has run where.
 */
#ifndef TIDAL_KERNELS_CUDA_OPS_CUDA_H
#define TIDAL_KERNELS_CUDA_OPS_CUDA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows per partial sum of the two-stage column sums (RMSNorm dw, bias
 * gradients): scratch holds cuda_colsum_scratch(T, C) floats. */
#define CUDA_COLSUM_ROWS 256
size_t cuda_colsum_scratch(int T, int C);

/* ---- embedding ---- */
/* out[T,C] = wte[ids[t], :] (both dt). Overwrites out. ids are checked by the caller. */
tidal_status cuda_embedding_forward(void *out, const int32_t *ids, const void *wte, int T, int C, cuda_dtype dt,
                                    cudaStream_t stream);
/* dwte[uniq[u], :] += dout[order[r], :] for r in seg[u] .. seg[u+1]-1, for
 * each of the U distinct ids: the index cuda_embedding_index_build (index.h)
 * makes on the host from ids, uploaded. One block per distinct id adds its
 * rows in token order - cpu_embedding_backward's additions, in its order.
 * dwte is float [V, C]; dout is dt [T, C]. */
tidal_status cuda_embedding_backward(float *dwte, const void *dout, const int32_t *order, const int32_t *uniq,
                                     const int32_t *seg, int U, int C, cuda_dtype dt, cudaStream_t stream);

/* ---- RMSNorm (fp32 statistics) ---- */
/* out[T,C] = inp * rstd[t] * w, rstd[t] = 1 / sqrt(mean(inp[t]^2) + eps).
 * Overwrites out and rstd[T] (float). */
tidal_status cuda_rmsnorm_forward(void *out, float *rstd, const void *inp, const void *w, int T, int C, float eps,
                                  cuda_dtype dt, cudaStream_t stream);
/* dinp[T,C] += ..., dw[C] (float) += ... from dout, the forward's inp, w and
 * rstd; scratch: cuda_colsum_scratch(T, C) floats. */
tidal_status cuda_rmsnorm_backward(void *dinp, float *dw, const void *dout, const void *inp, const void *w,
                                   const float *rstd, int T, int C, float *scratch, cuda_dtype dt,
                                   cudaStream_t stream);
/* dbias[OC] (float) += sum_t dout[t, :] (the QKV bias gradient), two-stage in
 * fixed order; scratch: cuda_colsum_scratch(T, OC) floats. */
tidal_status cuda_bias_backward(float *dbias, const void *dout, int T, int OC, float *scratch, cuda_dtype dt,
                                cudaStream_t stream);

/* ---- rotary position embedding, Hugging Face rotate_half layout ---- */
/* In place on x[T, NH, HD] (dt), positions pos[T]: cpu_rope_forward's
 * rotation and angles (index.h: cuda_rope_inv_freq). HD even, <= 1024. */
tidal_status cuda_rope_forward(void *x, const int32_t *pos, int T, int NH, int HD, float theta, cuda_dtype dt,
                               cudaStream_t stream);
/* In place on dx[T, NH, HD]: the transpose rotation. */
tidal_status cuda_rope_backward(void *dx, const int32_t *pos, int T, int NH, int HD, float theta, cuda_dtype dt,
                                cudaStream_t stream);

/* ---- SwiGLU ---- */
/* out[i] = silu(gate[i]) * up[i] for N elements. Overwrites out. */
tidal_status cuda_swiglu_forward(void *out, const void *gate, const void *up, size_t N, cuda_dtype dt,
                                 cudaStream_t stream);
/* Overwrites dgate[N] and dup[N]. */
tidal_status cuda_swiglu_backward(void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                                  size_t N, cuda_dtype dt, cudaStream_t stream);

/* ---- causal attention over a packed batch, GQA: the naive reference ---- */
/* cpu_attention_forward's contract (out [T,NH,HD] dt, lse [T,NH] float,
 * overwritten) with one thread block per (token, query head): the scores of
 * its keys in shared memory (max_seqlen floats: the longest sequence, which
 * must fit in 48 KiB, 12,288 tokens), max, sum of exps, weighted sum of v.
 * Slow and simple: the GPU-side reference for the GEMM-based attention. */
tidal_status cuda_attention_forward_naive(void *out, float *lse, const void *q, const void *k, const void *v,
                                          const int32_t *cu_seqlens, int S, int T, int NH, int NKV, int HD,
                                          int max_seqlen, cuda_dtype dt, cudaStream_t stream);

/* ---- causal attention over a packed batch, GQA, through cuBLASLt ---- */
struct cuda_blas;
/* Bytes of scratch the GEMM attention needs when the longest sequence has
 * max_seqlen tokens: fp32 scores and dt probabilities [NH, n, n rounded up
 * to 8], head-major copies of q, k, v, out and the gradients. */
size_t cuda_attention_scratch_bytes(int max_seqlen, int NH, int NKV, int HD, cuda_dtype dt);
/* cpu_attention_forward's contract (out [T,NH,HD] dt, lse [T,NH] float,
 * overwritten); cu_seqlens_host[S+1] is host memory (the per-sequence loop
 * runs on the host), checked: 0 .. T, non-decreasing. Per sequence: head-major
 * copies, S = scale Q K^T as one strided-batched GEMM over the kv heads
 * (M = group x n: no K/V copies per query head), a masked-softmax row kernel
 * (LSE saved), O = P V. scratch_bytes below cuda_attention_scratch_bytes is
 * refused, naming both. */
tidal_status cuda_attention_forward(struct cuda_blas *b, void *out, float *lse, const void *q, const void *k,
                                    const void *v, const int32_t *cu_seqlens_host, int S, int T, int NH, int NKV,
                                    int HD, void *scratch, size_t scratch_bytes, cuda_dtype dt, cudaStream_t stream);
/* cpu_attention_backward's contract: overwrites dq, dk, dv from dout and the
 * forward's out, lse, q, k, v. P is recomputed from the scores and lse;
 * dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO . O)) scale, dQ = dS K,
 * dK = dS^T Q; the GEMMs over the group's rows sum the query heads of a kv
 * head (no atomics). */
tidal_status cuda_attention_backward(struct cuda_blas *b, void *dq, void *dk, void *dv, const void *dout,
                                     const void *out, const float *lse, const void *q, const void *k, const void *v,
                                     const int32_t *cu_seqlens_host, int S, int T, int NH, int NKV, int HD,
                                     void *scratch, size_t scratch_bytes, cuda_dtype dt, cudaStream_t stream);

/* ---- LM head with log-probabilities and entropy, chunked over tokens ---- */
/* Tokens per chunk: the [T, V] logits are never held at once, only
 * [CUDA_HEAD_CHUNK, V] fp32 in the caller's scratch. */
#define CUDA_HEAD_CHUNK 256
/* Bytes of scratch the head needs: one chunk's fp32 logits (rows padded to a
 * multiple of 8), and in bf16 the chunk's logit gradients as bf16. */
size_t cuda_head_scratch_bytes(int V, cuda_dtype dt);
/* cpu_head_forward's contract without logits_out: per token t, z = (h[t,:]
 * w^T) inv_temp over V (w [V, C], h [T, C], both dt), logprob[t] =
 * z[target] - logsumexp(z), entropy[t] = -sum p log p (floats, overwritten).
 * Per chunk: one GEMM into fp32 logits (alpha = inv_temp), then one block per
 * row computes max, sum of exps and sum of e (z - max) in double. A target
 * outside [0, V) gives NaN (the CPU op asserts instead). */
tidal_status cuda_head_forward(struct cuda_blas *b, float *logprob, float *entropy, const void *h, const void *w,
                               const int32_t *targets, int T, int C, int V, float inv_temp, void *scratch,
                               cuda_dtype dt, cudaStream_t stream);
/* cpu_head_backward's contract: recomputes each chunk's logits, dz_j =
 * inv_temp (dlogprob (1[j = target] - p_j) - dentropy p_j (log p_j + H))
 * (dentropy may be NULL), then dh[T,C] (dt) += dz w and dw[V,C] (float) +=
 * dz^T h, both GEMMs with beta = 1. */
tidal_status cuda_head_backward(struct cuda_blas *b, void *dh, float *dw, const float *dlogprob,
                                const float *dentropy, const void *h, const void *w, const int32_t *targets, int T,
                                int C, int V, float inv_temp, void *scratch, cuda_dtype dt, cudaStream_t stream);

/* ---- AdamW and the global gradient norm ---- */
typedef struct cuda_adamw_args {
    float lr, beta1, beta2, eps, weight_decay;
    long step; /* this update's number, 1 for the first (the bias corrections') */
} cuda_adamw_args;
/* trainer/optimizer.c's adamw_step over one flat fp32 range of n: decoupled
 * weight decay where decay_mask[i] (NULL: everywhere), moments m and v, the
 * gradient read as grads[i] * *grad_scale (grad_scale: device float, NULL
 * for 1 - the clipping factor of cuda_grad_norm). params_bf16 (may be NULL)
 * receives the updated parameters rounded to nearest even. */
tidal_status cuda_adamw_step(float *params, void *params_bf16, const float *grads, float *m, float *v,
                             const uint8_t *decay_mask, size_t n, const cuda_adamw_args *a, const float *grad_scale,
                             cudaStream_t stream);

/* Blocks of the gradient norm's first stage: partials holds this many doubles. */
#define CUDA_NORM_BLOCKS 512
/* The global L2 norm of grads[n] (sums of squares in double, a fixed order)
 * and the clipping factor of trainer/optimizer.c's clip_grad_norm: out[0] =
 * the norm, out[1] = max_norm / (norm + 1e-6) when max_norm > 0 and norm >
 * max_norm, else 1 (device floats; nothing is scaled here: AdamW reads the
 * factor). partials: CUDA_NORM_BLOCKS doubles of scratch. */
tidal_status cuda_grad_norm(float *out, const float *grads, size_t n, float max_norm, double *partials,
                            cudaStream_t stream);

/* ---- GEMM: one cuBLASLt wrapper ---- */
typedef struct cuda_blas cuda_blas;
/* One cuBLASLt handle and its 32 MiB workspace. */
tidal_status cuda_blas_create(cuda_blas **out);
void cuda_blas_free(cuda_blas *b);

/* A product in row-major terms: D[M,N] = alpha op(A) op(B) + beta D (+ bias[N]
 * on every row), op(A) [M,K] is A [M,K] or, transposed, A stored [K,M]; op(B)
 * [K,N] is B [K,N] or, transposed, B stored [N,K]. So the linear layers are
 *   forward  out = in W^T:  M = T, N = OC, K = C, transB (bias: EPILOGUE_BIAS)
 *   dinp    += dout W:      M = T, N = C, K = OC, beta 1
 *   dW      += dout^T in:   M = OC, N = C, K = T, transA, beta 1.
 * Rows of a stored operand are lda / ldb / ldd elements apart (0: dense, the
 * row length). batch > 1: `batch` products, the i-th at A + i strideA
 * (elements), etc. */
typedef struct cuda_gemm_op {
    int M, N, K;
    bool transA, transB;
    float alpha, beta;
    long long lda, ldb, ldd;              /* row strides of the stored A, B, D; 0: dense */
    int batch;                            /* <= 1: one product */
    long long strideA, strideB, strideD;  /* elements between batched products */
    cuda_dtype in;                        /* A and B */
    cuda_dtype out;                       /* D and bias; in f32 with out bf16 is refused */
} cuda_gemm_op;
/* D = op as above, fp32 accumulation (CUBLAS_COMPUTE_32F: no TF32 in fp32
 * mode), on stream. Pointers must be 16-byte aligned; a shape cuBLASLt has
 * no algorithm for is an error naming it. bias may be NULL. */
tidal_status cuda_gemm(cuda_blas *b, void *D, const void *A, const void *B, const void *bias, const cuda_gemm_op *op,
                       cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
