/* engine_index.h - the generation engine's index maths and counter-based RNG,
 * as inline functions that compile for the host (plain C, gcc) and for the
 * device (nvcc), so the CPU tests (tests/unit/test_kvpages.c) check exactly
 * what the GPU kernels (kernels/cuda/engine.cu) run.
 *
 * The paged KV cache (/work/shared/CUDA.md, "Kernels (engine)"): the cache of
 * one layer's K (or V) is [n_blocks][block_size][NKV][HD], a flat array of
 * n_blocks * block_size "slots" of [NKV][HD] each; the whole cache is
 * [2][L][n_blocks][block_size][NKV][HD] (K of every layer, then V). Sequence
 * s owns the blocks listed in row s of a block table [max_seqs][max_blocks]
 * (int32, -1 where no block is mapped); position pos of s lives in slot
 *     table[s][pos / block_size] * block_size + pos % block_size,
 * and a position whose block is -1 (or beyond the row) has slot -1, which the
 * kernels skip (a padding token writes nothing). rollout/kvpages.{h,c} is the
 * host allocator that fills the tables.
 *
 * The sampler's RNG is Philox-4x32-10 (Salmon et al., "Parallel random
 * numbers: as easy as 1, 2, 3", SC 2011; the Random123 known answers are in
 * the unit test): a pure function of (key, counter), so the uniform a token
 * gets depends on (seed, sequence, step, vocabulary index) only - never on
 * the batch it was decoded in, the thread that drew it or the order of draws.
 */
#ifndef TIDAL_KERNELS_CUDA_ENGINE_INDEX_H
#define TIDAL_KERNELS_CUDA_ENGINE_INDEX_H

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define CUDA_EHD static inline __host__ __device__
#else
#define CUDA_EHD static inline
#endif

/* ---- the paged KV cache ---- */

/* The slot of position pos of a sequence whose block-table row is
 * row[max_blocks]: row[pos / bs] * bs + pos % bs, or -1 when pos < 0, pos is
 * past the row, or its block is -1 (unmapped: skipped by the kernels). */
CUDA_EHD int64_t cuda_kv_slot(const int32_t *row, int max_blocks, int block_size, int pos)
{
    if (pos < 0 || block_size <= 0) return -1;
    int b = pos / block_size;
    if (b >= max_blocks) return -1;
    int32_t blk = row[b];
    if (blk < 0) return -1;
    return (int64_t)blk * block_size + pos % block_size;
}

/* Offset of element d of kv head h of slot `slot` in one layer's K (or V)
 * cache [n_slots][NKV][HD]. */
CUDA_EHD size_t cuda_kv_offset(int64_t slot, int h, int d, int NKV, int HD)
{
    return ((size_t)slot * (size_t)NKV + (size_t)h) * (size_t)HD + (size_t)d;
}

/* Offset of the cache of layer `layer`, K (kv = 0) or V (kv = 1), in the whole
 * cache [2][L][n_blocks * block_size][NKV][HD]. */
CUDA_EHD size_t cuda_kv_layer_offset(int kv, int layer, int L, int64_t n_slots, int NKV, int HD)
{
    return ((size_t)kv * (size_t)L + (size_t)layer) * (size_t)n_slots * (size_t)NKV * (size_t)HD;
}

/* ---- Philox-4x32-10 ---- */

typedef struct cuda_philox4 {
    uint32_t v[4];
} cuda_philox4;

CUDA_EHD void cuda_mulhilo32(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo)
{
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

/* Philox-4x32 with 10 rounds of counter ctr under key (k0, k1), Random123's
 * philox4x32_R(10, ctr, key): multipliers 0xD2511F53 / 0xCD9E8D57, Weyl key
 * increments 0x9E3779B9 / 0xBB67AE85 between rounds. */
CUDA_EHD cuda_philox4 cuda_philox4x32_10(cuda_philox4 ctr, uint32_t k0, uint32_t k1)
{
    for (int r = 0; r < 10; r++) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint32_t hi0, lo0, hi1, lo1;
        cuda_mulhilo32(0xD2511F53u, ctr.v[0], &hi0, &lo0);
        cuda_mulhilo32(0xCD9E8D57u, ctr.v[2], &hi1, &lo1);
        cuda_philox4 o;
        o.v[0] = hi1 ^ ctr.v[1] ^ k0;
        o.v[1] = lo1;
        o.v[2] = hi0 ^ ctr.v[3] ^ k1;
        o.v[3] = lo0;
        ctr = o;
    }
    return ctr;
}

/* The sampler's uniform for vocabulary index j of the token a sequence
 * samples at `step` (its 0-based generated-token index): Philox keyed by the
 * request's 64-bit seed, counter (j, step, sequence low, sequence high), 53
 * bits of words 0 and 1, in the open interval (0, 1) ((bits + 0.5) / 2^53:
 * never 0 or 1, so -log(-log u) is finite). `sequence` is the caller's
 * identity of the sample (e.g. the GRPO sample index within its group), not a
 * batch row: the draw does not depend on batch composition. */
CUDA_EHD double cuda_sampler_uniform(uint64_t seed, uint64_t sequence, uint32_t step, uint32_t j)
{
    cuda_philox4 c;
    c.v[0] = j;
    c.v[1] = step;
    c.v[2] = (uint32_t)sequence;
    c.v[3] = (uint32_t)(sequence >> 32);
    cuda_philox4 r = cuda_philox4x32_10(c, (uint32_t)seed, (uint32_t)(seed >> 32));
    uint64_t bits = ((uint64_t)r.v[0] << 21) ^ (uint64_t)(r.v[1] >> 11); /* 53 bits */
    bits &= (1ull << 53) - 1;
    return ((double)bits + 0.5) * (1.0 / 9007199254740992.0);
}

/* The Gumbel noise -log(-log u) of that uniform: argmax_j (z_j + g_j) over a
 * set of tokens is an exact sample of softmax(z) restricted to the set. */
CUDA_EHD double cuda_sampler_gumbel(uint64_t seed, uint64_t sequence, uint32_t step, uint32_t j)
{
    return -log(-log(cuda_sampler_uniform(seed, sequence, step, j)));
}

/* ---- the sampler ---- */

/* One row's sampling parameters (a device array of them, one per row,
 * for cuda_sample; a host array for the CPU reference). temperature
 * <= 0: greedy. top_k 0 (or >= V): off; top_p 0 or >= 1: off; min_p 0: off.
 * The RNG is keyed by (seed, sequence, step): cuda_sampler_uniform. */
typedef struct cuda_sample_params {
    float temperature, top_p, min_p;
    int32_t top_k;
    uint64_t seed;
    uint64_t sequence; /* the sample's identity (not its batch row) */
    uint32_t step;     /* its generated-token index */
    uint32_t pad_;
} cuda_sample_params;



/* A float as an unsigned integer with the same order (-inf lowest, +inf
 * highest; -0 is +0, as they compare equal). NaN logits are the caller's to
 * avoid. */
CUDA_EHD uint32_t cuda_float_order(float z)
{
    if (z == 0.0f) z = 0.0f;
    uint32_t u;
    memcpy(&u, &z, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* The rank key of token id with scaled logit z: larger key = ranked first.
 * Ranks by z descending, then id ascending - the CPU engine's total order
 * (rollout/engine.c cand_cmp) - and keys of distinct ids never tie, so a
 * top-k or top-p set is exactly {j : key_j >= threshold}. */
CUDA_EHD uint64_t cuda_rank_key(float z, int32_t id)
{
    return ((uint64_t)cuda_float_order(z) << 32) | (uint64_t)(0xFFFFFFFFu - (uint32_t)id);
}

/* One pass of the sampler's MSB-first radix select over 64-bit rank keys
 * (8 passes of 8 bits, pass p deciding bits 63-8p .. 56-8p). hist[256] is
 * the total (a count, or fixed-point mass) of the candidate keys whose
 * decided bits equal *prefix, per value of this pass's digit. Walking from
 * the top digit, the first non-empty bin at which the running total reaches
 * *target holds the wanted key: its digit goes into *prefix and *target
 * drops by the totals of the bins above it. false when all bins together
 * hold less than *target (nothing changed). After 8 passes *prefix is the
 * key at which the total of the keys at or above it first reaches the
 * original target: the k-th largest key for counts, the top-p cut for mass.
 * The kernel builds hist in parallel; the unit test on the CPU. */
CUDA_EHD bool cuda_radix_step(const unsigned long long *hist, int pass, unsigned long long *prefix,
                              unsigned long long *target)
{
    unsigned long long acc = 0ull;
    for (int d = 255; d >= 0; d--) {
        const unsigned long long h = hist[d];
        if (h > 0ull && acc + h >= *target) {
            *prefix |= (unsigned long long)d << (56 - 8 * pass);
            *target -= acc;
            return true;
        }
        acc += h;
    }
    return false;
}

/* Whether key is a candidate in pass p of the select: at or above floor_key
 * and equal to prefix in the bits decided before pass p; *digit gets its
 * digit of pass p. */
CUDA_EHD bool cuda_radix_candidate(unsigned long long key, int pass, unsigned long long prefix,
                                   unsigned long long floor_key, int *digit)
{
    const unsigned long long decided = pass == 0 ? 0ull : ~0ull << (64 - 8 * pass);
    *digit = (int)((key >> (56 - 8 * pass)) & 255u);
    return key >= floor_key && (key & decided) == prefix;
}

/* Probability mass as a 2^-60 fixed-point integer (p clamped to [0, 1]):
 * sums of these are exact and order-free (integer additions, atomics
 * included), so the GPU's top-p cut and its CPU reference's agree; the
 * truncation costs <= 2^-60 a token (1e-13 over 150k tokens). */
#define CUDA_MASS_ONE (1ull << 60)
CUDA_EHD uint64_t cuda_mass_fixed(double p)
{
    if (!(p > 0.0)) return 0;
    if (p > 1.0) p = 1.0;
    return (uint64_t)(p * (double)CUDA_MASS_ONE);
}

#endif
