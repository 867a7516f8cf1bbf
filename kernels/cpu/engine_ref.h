/* engine_ref.h - CPU references of the GPU engine's kernels
 * (kernels/cuda/engine_cuda.h), in the paged form the CPU engine does not
 * have: the KV store into a paged cache, decode attention over block tables,
 * and the counter-based sampler. Plain loops in fp32 / double, written for
 * clarity, not speed: the GPU parity groups (tests/gpu: kvstore,
 * decode_attention, sampler) compare the kernels with them, and
 * tests/unit/test_kvpages.c checks them on the CPU against
 * cpu_attention_forward and against the CPU engine's sampling definitions.
 *
 * Layouts are kernels/cuda/engine_index.h's (one layer's cache [n_slots][NKV]
 * [HD], block tables [rows][max_blocks], slot -1 skipped). All arrays are
 * host memory, fp32.
 */
#ifndef TIDAL_KERNELS_CPU_ENGINE_REF_H
#define TIDAL_KERNELS_CPU_ENGINE_REF_H

#include <stdint.h>

#include "kernels/cuda/engine_index.h"

/* cuda_kv_store's contract: token t's k[t], v[t] ([T, NKV, HD]) into slot
 * cuda_kv_slot(tables row seq[t], pos[t]) of k_cache / v_cache; tokens with
 * seq[t] < 0 or slot -1 are skipped. */
void cpu_ref_kv_store(float *k_cache, float *v_cache, const int32_t *tables, int max_blocks, int block_size,
                      const float *k, const float *v, const int32_t *seq, const int32_t *pos, int T, int NKV, int HD);

/* cuda_decode_attention's contract: out[b] ([B, NH, HD], overwritten) is
 * the attention of query q[b] over keys 0 .. len[b]-1 of table row seq[b];
 * lse [B, NH] (may be NULL). Scores in fp32 (q.k summed in channel order,
 * times 1/sqrt(HD)), max-shifted expf, sums in double. A key with slot -1
 * makes the row NaN. */
void cpu_ref_decode_attention(float *out, float *lse, const float *q, const float *k_cache, const float *v_cache,
                              const int32_t *tables, int max_blocks, int block_size, const int32_t *seq,
                              const int32_t *len, int B, int NH, int NKV, int HD);

/* cuda_sample's contract (engine_cuda.h) by a different route: the row's
 * tokens sorted by rank key, top-k as the first k, top-p as the shortest
 * prefix whose 2^-60 fixed-point mass reaches top_p of the (top-k) mass,
 * min-p per token, then the Gumbel-max argmax over the kept set with
 * cuda_sampler_gumbel. token[b], logprob[b], truncated[b] for each of B
 * rows of logits [B, V]. Returns 0, or -1 when out of memory (nothing
 * written then). */
int cpu_ref_sample(int32_t *token, float *logprob, uint8_t *truncated, const float *logits,
                   const cuda_sample_params *params, int B, int V);

#endif
