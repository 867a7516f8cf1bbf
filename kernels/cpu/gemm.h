/* gemm.h - y = x W^T on the CPU with the weight in its Hugging Face layout.
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

/* Whether the AVX-512 kernels (this GEMM, kernels/cpu/softmax) run here: an
 * x86-64 CPU with AVX-512F and VL (checked once), unless turned off. */
bool cpu_avx512(void);
/* Turn the AVX-512 kernels off (false) or back on: tests use it to check the
 * portable paths (OpenBLAS, scalar loops) on the same machine. Call it from
 * serial code, between ops. */
void cpu_avx512_allow(bool on);

/* out[M,N] = x[M,K] @ w[N,K]^T + bias[N] (bias may be NULL); all row-major and
 * dense (leading dimensions K, K and N). Overwrites out, which must not alias
 * x or w. Threads over N with OpenMP; call it from serial code. Requires
 * cpu_avx512(); M, N, K >= 1. */
void cpu_gemm_nt(float *out, const float *x, const float *w, const float *bias, int M, int K, int N);

#endif
