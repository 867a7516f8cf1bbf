/* engine_cuda.h - the generation engine's own kernels on a CUDA GPU: the
 * paged KV cache's store and block copy, decode attention over the block
 * tables, and the sampler. The rest of a decode step is the trainer's:
 * prefill attention is cuda_attention_forward (ops_cuda.h) followed by
 * cuda_kv_store; the decode GEMMs are cuda_gemm with M = batch.
 *
 * Layouts are kernels/cuda/engine_index.h's: one layer's K (or V) cache is
 * [n_slots][NKV][HD], n_slots = n_blocks * block_size; sequence r of the
 * block table `tables` [max_seqs][max_blocks] (int32, -1 unmapped) has
 * position pos at slot cuda_kv_slot(tables + r * max_blocks, ...). Slot -1
 * is skipped (never read or written). q / k / v of the tokens are as in
 * ops_cuda.h ([T, NH, HD], [T, NKV, HD]); activations and the cache each have
 * their own dtype (CUDA_F32 or CUDA_BF16), arithmetic is fp32. Every pointer
 * is device memory; calls are asynchronous on `stream` and return the launch
 * status. The CPU references are kernels/cpu/engine_ref.h; the GPU parity
 * groups kvstore, decode_attention and sampler (tests/gpu) compare them.
 *
 * Written and compiled without a GPU: see docs/gpu.md for what has run.
 */
#ifndef TIDAL_KERNELS_CUDA_ENGINE_CUDA_H
#define TIDAL_KERNELS_CUDA_ENGINE_CUDA_H

#include <stdint.h>

#include "kernels/cuda/common.h"
#include "kernels/cuda/engine_index.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The paged cache of one layer's K or V, and the table that maps it. */
typedef struct cuda_kv_pages {
    const int32_t *tables; /* [max_seqs][max_blocks], device */
    int max_blocks, block_size;
    int64_t n_slots;       /* n_blocks * block_size */
    int NKV, HD;
    cuda_dtype dt;         /* the cache's element type */
} cuda_kv_pages;

/* Writes token t's k[t] / v[t] ([T, NKV, HD], dtype in_dt) into slot
 * cuda_kv_slot(row seq[t], position pos[t]) of k_cache / v_cache (pages.dt);
 * a token with seq[t] < 0 or an unmapped slot is skipped (padding). Grid T,
 * one block of up to 256 threads a token striding over its NKV * HD
 * elements (the same index for K and V). */
tidal_status cuda_kv_store(void *k_cache, void *v_cache, const cuda_kv_pages *pages, const void *k, const void *v,
                           const int32_t *seq, const int32_t *pos, int T, cuda_dtype in_dt, cudaStream_t stream);

/* The copies rollout/kvpages.c's fork asks for (the partly filled last
 * block of a forked prompt): for each i < n, slots 0 .. count[i]-1 of block
 * src[i] into block dst[i], in each of the n_caches caches at caches[c]
 * (device array of n_caches device pointers: K and V of every layer, all of
 * pages' shape and dtype). Grid (n, n_caches), 256 threads. */
tidal_status cuda_kv_copy_blocks(void *const *caches, int n_caches, const cuda_kv_pages *pages, const int32_t *src,
                                 const int32_t *dst, const int32_t *count, int n, cudaStream_t stream);

/* Attention of one new query token per batch row over its paged keys:
 * row b (of B) is table row seq[b] with keys at positions 0 .. len[b]-1 (its
 * own K/V stored first), q [B, NH, HD] (dtype q_dt), out [B, NH, HD] (q_dt,
 * overwritten), lse [B, NH] (float, may be NULL). Scores q.k / sqrt(HD) in
 * fp32; softmax with the max subtracted and the sum in double, as
 * cpu_attention_forward. Grid (B, NKV), 128 threads: the block of kv head g
 * holds the NH/NKV query vectors of its group in shared memory, each warp
 * takes keys in turn (slot through the block table, the group's dot products
 * by lane-strided sums and a warp butterfly) into fp32 scores in scratch
 * [B, NH, max_len] (floats), then per query head a block max and a double
 * sum, and last the weighted sum of V (thread per (head, channel), keys in
 * order: no atomics, the same bits every run). len[b] > max_len, or a key
 * with slot -1, gives NaN in that row (a caller's bug, never a stray read). */
tidal_status cuda_decode_attention(void *out, float *lse, const void *q, const void *k_cache, const void *v_cache,
                                   const cuda_kv_pages *pages, const int32_t *seq, const int32_t *len, int B, int NH,
                                   int max_len, float *scratch, cuda_dtype q_dt, cudaStream_t stream);

/* cuda_sample_params (one row's sampling parameters) is in engine_index.h,
 * shared with the CPU reference. */

/* Samples one token from each of the B rows of fp32 logits [B, V]:
 * token[b], logprob[b] and truncated[b] (1 when top-k / top-p / min-p left
 * out a token, and always for greedy), the CPU engine's definitions
 * (rollout/engine.h): z = logits * (float)(1/T), m = max z, lse = m +
 * log(sum exp(z - m)) (exp and sum in double: the CPU engine sums float
 * expf terms in double, so the two agree to ~1e-7, and the GPU and its CPU
 * reference to ~1e-15), logprob = (double)z_tok - lse,
 * i.e. at the sampling temperature before truncation; greedy takes the
 * argmax (ties: lowest id) and reports the temperature-1 logprob.
 * The kept set is {j : rank_key(z_j, j) >= K} (engine_index.h: ranks z
 * descending, then id ascending), K found by MSB-first radix select over the
 * 64-bit keys in 8 passes of 8 bits with 256-bin histograms in shared memory
 * (integer atomics: counts for top-k, 2^-60 fixed-point mass for top-p, so
 * exact and order-free), then min-p per token. The token is the Gumbel-max
 * argmax over the kept set of (double)z_j - log(-log u_j), u_j =
 * cuda_sampler_uniform(seed, sequence, step, j) (ties: lowest id): an exact
 * draw from softmax(z) renormalised over the kept set, and independent of
 * the batch. One block of 512 threads per row, every pass a strided loop
 * over V. Rows are independent; the same inputs give the same outputs. */
tidal_status cuda_sample(int32_t *token, float *logprob, uint8_t *truncated, const float *logits,
                         const cuda_sample_params *params, int B, int V, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
