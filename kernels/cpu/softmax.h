/* softmax.h - statistics of one row of logits (max, log-sum-exp, entropy) and
 * a vectorised expf.
 *
 * The trainer's LM head (kernels/cpu/ops) and the engine's sampler
 * (rollout/engine) both call these, so the same logits give the same
 * log-probability to the last bit on both sides - the behaviour logprob a
 * worker reports and the one the trainer recomputes differ only by the
 * weights' version, never by arithmetic.
 *
 * Definition (one row z[V], a scale s - the inverse temperature - applied in
 * fp32 first): y_j = z_j * s - m with m = max_j z_j * s (fp32), e_j =
 * expf(y_j) (fp32, within an ulp or two), and the sums over j in double. With
 * AVX-512 the terms come 16 at a time from glibc's libmvec (_ZGVeN16v_expf)
 * and are summed in a fixed lane order; elsewhere a scalar loop with expf.
 * Either way the result is a fixed function of the row for a given machine.
 */
#ifndef TIDAL_KERNELS_CPU_SOFTMAX_H
#define TIDAL_KERNELS_CPU_SOFTMAX_H

/* m = max_j z_j * scale; *argmax (if not NULL) = the first j reaching it. V >= 1. */
float cpu_row_max(const float *z, int V, float scale, int *argmax);

/* sum_j e_j with e_j = expf(z_j * scale - m), summed in double; terms (NULL,
 * or V floats) receives the e_j so a sampler can walk the CDF over exactly
 * the terms of the sum. m is cpu_row_max's. */
double cpu_row_sumexp(const float *z, int V, float scale, float m, float *terms);

/* For scale 1: *lse = m + log S and *H = log S - (sum_j e_j y_j) / S, with
 * S = sum_j e_j (both terms >= 0: no cancellation). */
void cpu_row_lse_entropy(const float *z, int V, double *lse, double *H);

/* x[i] = expf(x[i]) for i < n, in place (libmvec's 16 at a time with AVX-512,
 * else expf; within an ulp or two of the exact value either way). */
void cpu_vexpf(float *x, int n);

#endif
