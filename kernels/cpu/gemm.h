/* gemm.h - the CPU GEMMs of the linear layers, with weights in their Hugging
 * Face layout: y = x W^T (forward), and the backward's dx += dy W, dW += dy^T x.
 *
 * The linear layers' forward GEMM, for every M: one decode step (M = the
 * running sequences, often 1..64), a prefill, a training batch. OpenBLAS
 * 0.3.21 (Debian 12) runs its AVX2 (Haswell) kernels on AMD Zen 4/5 and
 * repacks the weight on every call, which at small M costs as much as the
 * arithmetic; this kernel needs no packing at all: the weight's rows are
 * already contiguous along K, so each output is a dot product, computed for a
 * 4 x 4 tile of outputs at a time in 16 AVX-512 accumulators and reduced
 * across lanes once at the end (see gemm.c).
 *
 * Every output is computed by one thread in a fixed order, so the results are
 * the same bits whatever the thread count (OpenBLAS's move by an ulp).
 */
#ifndef TIDAL_KERNELS_CPU_GEMM_H
#define TIDAL_KERNELS_CPU_GEMM_H

#include <stdbool.h>
#include <stddef.h>

/* Whether the AVX-512 kernels (this GEMM, kernels/cpu/softmax) run here: an
 * x86-64 CPU with AVX-512F and VL (checked once), unless turned off here or
 * by a non-empty TIDAL_NO_AVX512 in the environment (to compare the paths). */
bool cpu_avx512(void);
/* Whether OpenBLAS runs its own AVX-512 kernels here (SkylakeX, Cooperlake or
 * SapphireRapids): then its packed GEMMs beat cpu_gemm_nt from M of about 64
 * up (520 against 350 GFLOP/s at M = 2,048 on Zen 5), and the ops take them
 * for large products. Where OpenBLAS runs AVX2 kernels - as with
 * OPENBLAS_CORETYPE=Haswell, which some machines set because older OpenBLAS
 * builds miscompute on new CPUs - every product is tidal's. */
bool cpu_blas_avx512(void);
/* Turn that OpenBLAS route off (false) or back on. OpenBLAS sums in an order
 * that depends on the number of rows, so with it a product's bits depend on the
 * batch: tests that check that micro-batching or batch composition changes
 * nothing turn it off. Call it from serial code, between ops. */
void cpu_blas_allow(bool on);
/* The rows from which the forward takes OpenBLAS when cpu_blas_avx512(). */
#define CPU_GEMM_BLAS_MIN_ROWS 64

/* Turn the AVX-512 kernels off (false) or back on: tests use it to check the
 * portable paths (OpenBLAS, scalar loops) on the same machine. Call it from
 * serial code, between ops. */
void cpu_avx512_allow(bool on);

/* out[M,N] = x[M,K] @ w[N,K]^T + bias[N] (bias may be NULL); all row-major and
 * dense (leading dimensions K, K and N). Overwrites out, which must not alias
 * x or w. Threads over N with OpenMP; call it from serial code. Requires
 * cpu_avx512(); M, N, K >= 1. */
void cpu_gemm_nt(float *out, const float *x, const float *w, const float *bias, int M, int K, int N);

/* The same dot products on strided operands, in the calling thread (for a
 * kernel's inner block, e.g. attention scores): out[i * ldo + j] =
 * dot(x[i * ldx .. + K], w[j * ldw .. + K]) for i < M, j < N. Same
 * requirements as cpu_gemm_nt; the sums are ordered as there. */
void cpu_gemm_nt_serial(float *out, size_t ldo, const float *x, size_t ldx, const float *w, size_t ldw, int M,
                        int K, int N);

/* out[i * ldo + j] += sum_k p[i * pi + k * pk] * v[k * ldv + j] for i < M,
 * j < N (a small NN product, e.g. attention weights times values; pi = 1
 * reads p transposed), in the calling thread; k runs in order. Requires
 * cpu_avx512(); M, N, K >= 1. */
void cpu_gemm_nn_acc_serial(float *out, size_t ldo, const float *p, size_t pi, size_t pk, const float *v, size_t ldv,
                            int M, int K, int N);

/* out[i * ldo + j] += sum_k p[i * pi + k * pk] * v[k * ldv + j] for i < M,
 * j < N: the linear backward's products, dinp += dout w (pi = row length,
 * pk = 1) and dw += dout^T x (pi = 1, pk = row length), with no transposed
 * copies. Threads over blocks of rows x 64 columns; each output's sum over k
 * runs in order in one thread, so the bits do not depend on the thread count.
 * Requires cpu_avx512(); M, N, K >= 1; out must not alias p or v. */
void cpu_gemm_nn_acc(float *out, size_t ldo, const float *p, size_t pi, size_t pk, const float *v, size_t ldv,
                     int M, int K, int N);

#endif
