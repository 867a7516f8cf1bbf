/* index.h - the index maths of the CUDA kernels, as inline functions that
 * compile for the host (plain C, gcc) and for the device (nvcc).
 *
 * Every mapping a kernel does from a thread to the data it touches - a token
 * of a packed batch to its sequence and position, a RoPE pair to its two
 * elements, a query head to its kv head, token-major to head-major offsets -
 * lives here, so tests/unit/test_cuda_index.c checks it on the CPU against
 * kernels/cpu/ops.c (the oracle) without a GPU. Also here: the host-side
 * index of the embedding backward (tokens grouped by id, in token order) and
 * bf16 <-> float conversions on bit patterns (round to nearest even), which
 * the host uses to prepare and read back bf16 tensors.
 *
 * Conventions are kernels/cpu/ops.h's: q [T, NH, HD], k and v [T, NKV, HD];
 * sequence s of a packed batch is tokens cu[s] .. cu[s+1]-1; RoPE pairs are
 * Hugging Face's rotate_half pairs (i, i + HD/2).
 */
#ifndef TIDAL_KERNELS_CUDA_INDEX_H
#define TIDAL_KERNELS_CUDA_INDEX_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define CUDA_HD static inline __host__ __device__
#else
#define CUDA_HD static inline
#endif

/* ---- packed sequences ---- */

/* The sequence that holds token t: the last s with cu[s] <= t (binary search
 * over cu[0..S]; empty sequences, cu[s] == cu[s+1], are never returned for a
 * token they do not hold). Requires 0 <= t < cu[S], S >= 1. */
CUDA_HD int cuda_seq_of_token(const int32_t *cu, int S, int t)
{
    int lo = 0, hi = S - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (cu[mid] <= t)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Token t's position inside its sequence (RoPE's position: restarts at 0). */
CUDA_HD int cuda_pos_of_token(const int32_t *cu, int S, int t) { return t - cu[cuda_seq_of_token(cu, S, t)]; }

/* The first key token t attends to (causal, within its sequence): keys
 * cuda_first_key(t) .. t, inclusive. */
CUDA_HD int cuda_first_key(const int32_t *cu, int S, int t) { return cu[cuda_seq_of_token(cu, S, t)]; }

/* ---- GQA ---- */

/* The kv head query head h reads: h / (NH / NKV) (NH a multiple of NKV). */
CUDA_HD int cuda_kv_head(int h, int NH, int NKV) { return h / (NH / NKV); }

/* Offset of element d of head h of token t in a token-major [T, NH, HD] tensor. */
CUDA_HD size_t cuda_token_major_offset(int t, int h, int d, int NH, int HD)
{
    return ((size_t)t * NH + h) * HD + d;
}

/* Offset of the same element in the head-major [NH, n, HD] copy of a
 * sequence of n tokens (token tl = t - cu[s] inside it). With GQA, query
 * head h = kvh * g + j, so [NH, n, HD] is [NKV][g * n][HD]: the g query heads
 * of one kv head are one block of g * n rows (one strided-batched GEMM with
 * batch NKV reads each K/V head once). */
CUDA_HD size_t cuda_head_major_offset(int tl, int h, int d, int n, int HD)
{
    return ((size_t)h * n + tl) * HD + d;
}

/* ---- RoPE (rotate_half) ---- */

/* Pair p of a [T, NH, HD] tensor (p < T * NH * HD/2) as its token t, its
 * frequency index i < HD/2 and the offsets of its two elements: (i, i + HD/2)
 * of head (p / (HD/2)) % NH of token t. */
CUDA_HD void cuda_rope_pair(size_t p, int NH, int HD, int *t, int *i, size_t *o1, size_t *o2)
{
    int half = HD / 2;
    size_t th = p / (size_t)half; /* token * NH + head */
    *i = (int)(p % (size_t)half);
    *t = (int)(th / (size_t)NH);
    *o1 = th * (size_t)HD + (size_t)*i;
    *o2 = *o1 + (size_t)half;
}

/* Frequency i of head dimension HD, as Hugging Face and kernels/cpu/ops.c
 * compute it: 1 / theta^(2i/HD) in double, rounded to float. The angle is then
 * (float)pos * inv_freq in float, and cosf/sinf of it. */
CUDA_HD float cuda_rope_inv_freq(int i, int HD, float theta)
{
    return (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)HD));
}

/* ---- bf16 on bit patterns ---- */

/* The bf16 nearest to f (round to nearest, ties to even); NaN stays a (quiet) NaN. */
CUDA_HD uint16_t cuda_bf16_from_float(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

CUDA_HD float cuda_float_from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- the embedding backward's index (host only) ---- */

/* Groups the T tokens of ids[] by id, each group in token order (a stable
 * counting sort over the vocabulary): order[T] lists token indices, uniq[U]
 * the distinct ids in increasing order, and group u is order[seg[u] ..
 * seg[u+1]-1] (seg has U+1 entries). count is scratch of V+1 ints. Returns U,
 * or -1 when an id is outside [0, V) (nothing else is written then but
 * count). One thread block per distinct id then sums its rows in token order:
 * the same additions, in the same order, as cpu_embedding_backward. */
static inline int cuda_embedding_index_build(const int32_t *ids, int T, int V, int32_t *order, int32_t *uniq,
                                             int32_t *seg, int32_t *count)
{
    for (int v = 0; v <= V; v++) count[v] = 0;
    for (int t = 0; t < T; t++) {
        if (ids[t] < 0 || ids[t] >= V) return -1;
        count[ids[t] + 1]++;
    }
    int U = 0;
    for (int v = 0; v < V; v++) {
        if (count[v + 1] > 0) {
            uniq[U] = v;
            seg[U] = count[v];
            U++;
        }
        count[v + 1] += count[v]; /* count[v] = first slot of id v */
    }
    seg[U] = T;
    for (int t = 0; t < T; t++) order[count[ids[t]]++] = t;
    return U;
}

#endif
