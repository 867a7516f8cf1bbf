/* engine.cu - the generation engine's kernels (engine_cuda.h): KV store and
 * block copy into the paged cache, decode attention over the block tables,
 * and the sampler. Each kernel's algorithm and launch shape is in its
 * comment in engine_cuda.h and, briefly, above it here. All index maths is
 * engine_index.h's (tested on the CPU: tests/unit/test_kvpages.c).
 */
#include <limits.h>
#include <math.h>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/engine_cuda.h"
#include "kernels/cuda/engine_index.h"

static tidal_status bad_pages(const char *op, const cuda_kv_pages *p)
{
    return tidal_fail(TIDAL_ERR_INVALID,
                      "cuda: %s: bad cache shape: max_blocks %d, block_size %d, slots %lld, NKV %d, HD %d",
                      op, p->max_blocks, p->block_size, (long long)p->n_slots, p->NKV, p->HD);
}

static bool pages_ok(const cuda_kv_pages *p)
{
    return p && p->tables && p->max_blocks > 0 && p->block_size > 0 && p->n_slots > 0 && p->NKV > 0 && p->HD > 0 &&
           (p->dt == CUDA_F32 || p->dt == CUDA_BF16);
}

/* ---- KV store: grid T, a block per token over its NKV * HD elements ---- */

template <typename I, typename C>
__global__ void kv_store_kernel(C *kc, C *vc, const I *k, const I *v, const int32_t *tables, int max_blocks,
                                int block_size, const int32_t *seq, const int32_t *pos, int NKV, int HD)
{
    const int t = blockIdx.x, s = seq[t];
    if (s < 0) return; /* padding: the whole block leaves */
    const int64_t slot = cuda_kv_slot(tables + (size_t)s * max_blocks, max_blocks, block_size, pos[t]);
    if (slot < 0) return;
    const size_t n = (size_t)NKV * HD, src = (size_t)t * n, dst = cuda_kv_offset(slot, 0, 0, NKV, HD);
    for (size_t e = threadIdx.x; e < n; e += blockDim.x) {
        store_f(kc, dst + e, load_f(k, src + e));
        store_f(vc, dst + e, load_f(v, src + e));
    }
}

template <typename I, typename C>
static void kv_store_launch(void *kc, void *vc, const cuda_kv_pages *p, const void *k, const void *v,
                            const int32_t *seq, const int32_t *pos, int T, cudaStream_t stream)
{
    unsigned threads = (unsigned)(p->NKV * p->HD < 256 ? ((p->NKV * p->HD + 31) / 32) * 32 : 256);
    kv_store_kernel<I, C><<<(unsigned)T, threads, 0, stream>>>((C *)kc, (C *)vc, (const I *)k, (const I *)v,
                                                               p->tables, p->max_blocks, p->block_size, seq, pos,
                                                               p->NKV, p->HD);
}

tidal_status cuda_kv_store(void *k_cache, void *v_cache, const cuda_kv_pages *pages, const void *k, const void *v,
                           const int32_t *seq, const int32_t *pos, int T, cuda_dtype in_dt, cudaStream_t stream)
{
    if (!pages_ok(pages)) return bad_pages("kv_store", pages);
    if (T < 0) return tidal_fail(TIDAL_ERR_INVALID, "cuda: kv_store: T = %d", T);
    if (T == 0) return TIDAL_OK;
    const bool ib = in_dt == CUDA_BF16, cb = pages->dt == CUDA_BF16;
    if (ib && cb)
        kv_store_launch<bf16, bf16>(k_cache, v_cache, pages, k, v, seq, pos, T, stream);
    else if (ib)
        kv_store_launch<bf16, float>(k_cache, v_cache, pages, k, v, seq, pos, T, stream);
    else if (cb)
        kv_store_launch<float, bf16>(k_cache, v_cache, pages, k, v, seq, pos, T, stream);
    else
        kv_store_launch<float, float>(k_cache, v_cache, pages, k, v, seq, pos, T, stream);
    return cuda_launch_check(stream, "kv_store");
}

/* ---- block copy: grid (copies, caches), elements copied as raw words ---- */

template <typename W>
__global__ void kv_copy_kernel(void *const *caches, const int32_t *src, const int32_t *dst, const int32_t *count,
                               int block_size, size_t per_slot)
{
    W *c = (W *)caches[blockIdx.y];
    const int i = blockIdx.x;
    const size_t n = (size_t)count[i] * per_slot, from = (size_t)src[i] * block_size * per_slot,
                 to = (size_t)dst[i] * block_size * per_slot;
    for (size_t e = threadIdx.x; e < n; e += blockDim.x) c[to + e] = c[from + e];
}

tidal_status cuda_kv_copy_blocks(void *const *caches, int n_caches, const cuda_kv_pages *pages, const int32_t *src,
                                 const int32_t *dst, const int32_t *count, int n, cudaStream_t stream)
{
    if (!pages_ok(pages)) return bad_pages("kv_copy_blocks", pages);
    if (n < 0 || n_caches < 0 || n_caches > 65535)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: kv_copy_blocks: %d copies in %d caches", n, n_caches);
    if (n == 0 || n_caches == 0) return TIDAL_OK;
    dim3 grid((unsigned)n, (unsigned)n_caches);
    const size_t per_slot = (size_t)pages->NKV * pages->HD;
    if (pages->dt == CUDA_BF16)
        kv_copy_kernel<uint16_t><<<grid, 256, 0, stream>>>(caches, src, dst, count, pages->block_size, per_slot);
    else
        kv_copy_kernel<float><<<grid, 256, 0, stream>>>(caches, src, dst, count, pages->block_size, per_slot);
    return cuda_launch_check(stream, "kv_copy_blocks");
}

/* ---- decode attention: grid (B, NKV), 128 threads (4 warps) ----
 * Dynamic shared memory: the group's g = NH / NKV query vectors (g * HD
 * floats), then g maxima and g reciprocal sums. */

#define DECODE_THREADS 128

template <typename Q, typename C>
__global__ void decode_attention_kernel(Q *out, float *lse, const Q *q, const C *kc, const C *vc,
                                        const int32_t *tables, int max_blocks, int block_size, const int32_t *seq,
                                        const int32_t *len, int NH, int NKV, int HD, int max_len, float *scratch)
{
    extern __shared__ float smem[];
    const int b = blockIdx.x, kh = blockIdx.y, g = NH / NKV, h0 = kh * g;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    float *qs = smem, *mx = smem + (size_t)g * HD, *inv = mx + g;
    const int n = len[b];
    const int32_t *row = tables + (size_t)(seq[b] < 0 ? 0 : seq[b]) * max_blocks;
    if (n < 1 || n > max_len || seq[b] < 0) { /* a caller's bug: NaN rows, nothing read out of bounds */
        for (int i = threadIdx.x; i < g * HD; i += blockDim.x)
            store_f(out, ((size_t)b * NH + h0 + i / HD) * HD + i % HD, NAN);
        if (lse && threadIdx.x < g) lse[(size_t)b * NH + h0 + threadIdx.x] = NAN;
        return;
    }
    const float scale = 1.0f / sqrtf((float)HD);
    for (int i = threadIdx.x; i < g * HD; i += blockDim.x) qs[i] = load_f(q, ((size_t)b * NH + h0) * HD + i);
    __syncthreads();
    float *sc = scratch + ((size_t)b * NH + h0) * max_len; /* [g][max_len] */
    /* scores: a warp per key, lanes over the channels, the group's g heads */
    for (int p = warp; p < n; p += nwarps) {
        const int64_t slot = cuda_kv_slot(row, max_blocks, block_size, p);
        for (int j = 0; j < g; j++) {
            float s = 0.0f;
            if (slot >= 0)
                for (int d = lane; d < HD; d += 32)
                    s += qs[j * HD + d] * load_f(kc, cuda_kv_offset(slot, kh, d, NKV, HD));
            s = warp_sum(s);
            if (lane == 0) sc[(size_t)j * max_len + p] = slot >= 0 ? s * scale : NAN;
        }
    }
    __syncthreads(); /* the scores (global memory) are visible to the block */
    /* per head: max, exp in place, sum in double */
    for (int j = 0; j < g; j++) {
        float m = -INFINITY;
        for (int p = threadIdx.x; p < n; p += blockDim.x) m = fmaxf(m, sc[(size_t)j * max_len + p]);
        /* a NaN score must poison the row: fmaxf drops NaN, so count them */
        float nan_seen = 0.0f;
        for (int p = threadIdx.x; p < n; p += blockDim.x) nan_seen += isnan(sc[(size_t)j * max_len + p]) ? 1.0f : 0.0f;
        m = block_max(m);
        double nans = block_sum_d(nan_seen);
        if (nans > 0.0) m = NAN;
        double l = 0.0;
        for (int p = threadIdx.x; p < n; p += blockDim.x) {
            float e = expf(sc[(size_t)j * max_len + p] - m);
            sc[(size_t)j * max_len + p] = e;
            l += e;
        }
        l = block_sum_d(l); /* its barriers order the exp writes before the reads below */
        if (threadIdx.x == 0) {
            mx[j] = (float)((double)m + log(l));
            inv[j] = (float)(1.0 / l);
        }
    }
    __syncthreads();
    /* out = sum_p e_p v_p / l: a thread per (head, channel), keys in order */
    for (int i = threadIdx.x; i < g * HD; i += blockDim.x) {
        const int j = i / HD, d = i % HD;
        float o = 0.0f;
        for (int p = 0; p < n; p++) {
            const int64_t slot = cuda_kv_slot(row, max_blocks, block_size, p);
            o += sc[(size_t)j * max_len + p] * (slot >= 0 ? load_f(vc, cuda_kv_offset(slot, kh, d, NKV, HD)) : NAN);
        }
        store_f(out, ((size_t)b * NH + h0 + j) * HD + d, o * inv[j]);
    }
    if (lse && threadIdx.x < g) lse[(size_t)b * NH + h0 + threadIdx.x] = mx[threadIdx.x];
}

template <typename Q, typename C>
static void decode_attention_launch(void *out, float *lse, const void *q, const void *kc, const void *vc,
                                    const cuda_kv_pages *p, const int32_t *seq, const int32_t *len, int B, int NH,
                                    int max_len, float *scratch, size_t smem, cudaStream_t stream)
{
    dim3 grid((unsigned)B, (unsigned)p->NKV);
    decode_attention_kernel<Q, C><<<grid, DECODE_THREADS, smem, stream>>>(
        (Q *)out, lse, (const Q *)q, (const C *)kc, (const C *)vc, p->tables, p->max_blocks, p->block_size, seq, len,
        NH, p->NKV, p->HD, max_len, scratch);
}

tidal_status cuda_decode_attention(void *out, float *lse, const void *q, const void *k_cache, const void *v_cache,
                                   const cuda_kv_pages *pages, const int32_t *seq, const int32_t *len, int B, int NH,
                                   int max_len, float *scratch, cuda_dtype q_dt, cudaStream_t stream)
{
    if (!pages_ok(pages)) return bad_pages("decode_attention", pages);
    if (B < 0 || NH <= 0 || NH % pages->NKV != 0 || max_len < 1 || pages->NKV > 65535)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: decode_attention: bad shape B %d, NH %d, NKV %d, max_len %d", B, NH,
                          pages->NKV, max_len);
    const int g = NH / pages->NKV;
    const size_t smem = ((size_t)g * pages->HD + 2 * (size_t)g) * sizeof(float);
    if (smem > 48 * 1024 || g > DECODE_THREADS)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "cuda: decode_attention: a group of %d query heads of %d channels needs %zu bytes of shared "
                          "memory (48 KiB at most)",
                          g, pages->HD, smem);
    if (B == 0) return TIDAL_OK;
    const bool qb = q_dt == CUDA_BF16, cb = pages->dt == CUDA_BF16;
    if (qb && cb)
        decode_attention_launch<bf16, bf16>(out, lse, q, k_cache, v_cache, pages, seq, len, B, NH, max_len, scratch,
                                            smem, stream);
    else if (qb)
        decode_attention_launch<bf16, float>(out, lse, q, k_cache, v_cache, pages, seq, len, B, NH, max_len, scratch,
                                             smem, stream);
    else if (cb)
        decode_attention_launch<float, bf16>(out, lse, q, k_cache, v_cache, pages, seq, len, B, NH, max_len, scratch,
                                             smem, stream);
    else
        decode_attention_launch<float, float>(out, lse, q, k_cache, v_cache, pages, seq, len, B, NH, max_len, scratch,
                                              smem, stream);
    return cuda_launch_check(stream, "decode_attention");
}

/* ---- the sampler: one block of SAMPLER_THREADS per row ---- */

#define SAMPLER_THREADS 512

/* Block-wide max of 64-bit keys (every thread gets it; all must call). */
__device__ __forceinline__ unsigned long long block_max_u64(unsigned long long x)
{
    __shared__ unsigned long long partial[32];
    __shared__ unsigned long long total;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) {
        unsigned long long y = __shfl_xor_sync(0xffffffffu, x, o);
        x = y > x ? y : x;
    }
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    if (warp == 0) {
        unsigned long long y = lane < nwarps ? partial[lane] : 0ull;
        for (int o = 16; o > 0; o >>= 1) {
            unsigned long long w = __shfl_xor_sync(0xffffffffu, y, o);
            y = w > y ? w : y;
        }
        if (lane == 0) total = y;
    }
    __syncthreads();
    unsigned long long r = total;
    __syncthreads();
    return r;
}

/* Block-wide sum of 64-bit integers (exact, order-free). */
__device__ __forceinline__ unsigned long long block_sum_u64(unsigned long long x)
{
    __shared__ unsigned long long partial[32];
    __shared__ unsigned long long total;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    if (warp == 0) {
        unsigned long long y = lane < nwarps ? partial[lane] : 0ull;
        for (int o = 16; o > 0; o >>= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
        if (lane == 0) total = y;
    }
    __syncthreads();
    unsigned long long r = total;
    __syncthreads();
    return r;
}

/* (v, id) better than (w, jd): larger v, then lower id; NaN never better. */
__device__ __forceinline__ bool pair_better(double v, int id, double w, int jd)
{
    return v > w || (v == w && id < jd);
}

/* Block-wide argmax of (v, id) pairs; every thread gets the winner's id. */
__device__ __forceinline__ int block_argmax(double v, int id)
{
    __shared__ double pv[32];
    __shared__ int pid[32];
    __shared__ int total;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) {
        double w = __shfl_xor_sync(0xffffffffu, v, o);
        int jd = __shfl_xor_sync(0xffffffffu, id, o);
        if (pair_better(w, jd, v, id)) v = w, id = jd;
    }
    if (lane == 0) pv[warp] = v, pid[warp] = id;
    __syncthreads();
    if (warp == 0) {
        double y = lane < nwarps ? pv[lane] : -INFINITY;
        int yd = lane < nwarps ? pid[lane] : INT_MAX;
        for (int o = 16; o > 0; o >>= 1) {
            double w = __shfl_xor_sync(0xffffffffu, y, o);
            int jd = __shfl_xor_sync(0xffffffffu, yd, o);
            if (pair_better(w, jd, y, yd)) y = w, yd = jd;
        }
        if (lane == 0) total = yd;
    }
    __syncthreads();
    int r = total;
    __syncthreads();
    return r;
}

/* The threshold key of the kept set among keys >= floor_key: the key at
 * which the count (by_mass false) or the fixed-point mass (true) of the keys
 * at or above it first reaches target, ranking from the top. MSB-first radix
 * select, 8 passes of 8 bits: each pass a 256-bin histogram (64-bit integer
 * atomics in shared memory: exact and order-free) of the candidate keys
 * (cuda_radix_candidate), then thread 0 takes the pass's digit
 * (cuda_radix_step; both in engine_index.h, tested on the CPU). *reached is
 * false when the whole set holds less than target (then the result is
 * floor_key: keep all). */
__device__ unsigned long long radix_select(const float *row, int V, float sc, double lse,
                                          unsigned long long floor_key, bool by_mass, unsigned long long target,
                                          bool *reached)
{
    __shared__ unsigned long long hist[256];
    __shared__ unsigned long long s_prefix, s_target;
    __shared__ int s_ok;
    if (threadIdx.x == 0) s_prefix = 0ull, s_target = target, s_ok = 1;
    for (int pass = 0; pass < 8; pass++) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0ull;
        __syncthreads(); /* also publishes thread 0's s_prefix of the last pass */
        const unsigned long long prefix = s_prefix;
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            const float z = row[j] * sc;
            int dgt;
            if (!cuda_radix_candidate(cuda_rank_key(z, j), pass, prefix, floor_key, &dgt)) continue;
            atomicAdd(&hist[dgt], by_mass ? (unsigned long long)cuda_mass_fixed(exp((double)z - lse)) : 1ull);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            unsigned long long pr = prefix, tg = s_target;
            if (cuda_radix_step(hist, pass, &pr, &tg))
                s_prefix = pr, s_target = tg;
            else
                s_ok = 0;
        }
        __syncthreads();
        if (!s_ok) break; /* uniform: every thread reads it after the barrier */
    }
    const bool ok = s_ok != 0;
    const unsigned long long r = ok ? s_prefix : floor_key;
    __syncthreads(); /* a next call's thread 0 must not reset s_* before every thread read them */
    *reached = ok;
    return r;
}

__global__ void sample_kernel(int32_t *token, float *logprob, uint8_t *truncated, const float *logits,
                              const cuda_sample_params *params, int V)
{
    const int b = blockIdx.x;
    const float *row = logits + (size_t)b * V;
    const cuda_sample_params P = params[b];
    const bool greedy = !(P.temperature > 0.0f);
    const float sc = greedy ? 1.0f : 1.0f / P.temperature; /* the CPU engine's (float)(1 / T) */
    /* the row's best key: max z, ties to the lowest id */
    unsigned long long best = 0ull;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        unsigned long long key = cuda_rank_key(row[j] * sc, j);
        best = key > best ? key : best;
    }
    best = block_max_u64(best);
    const int amax = (int)(0xFFFFFFFFu - (uint32_t)best);
    const float m = row[amax] * sc;
    double se = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) se += exp((double)(row[j] * sc) - (double)m);
    se = block_sum_d(se);
    const double lse = (double)m + log(se);
    if (greedy) {
        if (threadIdx.x == 0) {
            token[b] = amax;
            logprob[b] = (float)((double)row[amax] - lse);
            truncated[b] = 1;
        }
        return;
    }
    const bool top_k = P.top_k > 0 && P.top_k < V, top_p = P.top_p > 0.0f && P.top_p < 1.0f, min_p = P.min_p > 0.0f;
    unsigned long long K = 0ull;
    bool reached = true;
    if (top_k) K = radix_select(row, V, sc, lse, 0ull, false, (unsigned long long)P.top_k, &reached);
    if (top_p) {
        unsigned long long mk = CUDA_MASS_ONE; /* the CPU engine's: the whole mass, or the top-k set's */
        if (top_k) {
            unsigned long long part = 0ull;
            for (int j = threadIdx.x; j < V; j += blockDim.x) {
                const float z = row[j] * sc;
                if (cuda_rank_key(z, j) >= K) part += cuda_mass_fixed(exp((double)z - lse));
            }
            mk = block_sum_u64(part);
        }
        const unsigned long long thr = (unsigned long long)((double)P.top_p * (double)mk);
        const unsigned long long K2 = radix_select(row, V, sc, lse, K, true, thr, &reached);
        if (reached) K = K2;
    }
    const double floor_p = min_p ? (double)P.min_p * exp((double)m - lse) : 0.0;
    double bv = -INFINITY;
    int bid = INT_MAX;
    double kept = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float z = row[j] * sc;
        if (cuda_rank_key(z, j) < K) continue;
        if (min_p && !(exp((double)z - lse) >= floor_p)) continue;
        kept += 1.0;
        const double v = (double)z + cuda_sampler_gumbel(P.seed, P.sequence, P.step, (uint32_t)j);
        if (pair_better(v, j, bv, bid)) bv = v, bid = j;
    }
    kept = block_sum_d(kept);
    const int tok = block_argmax(bv, bid);
    if (threadIdx.x == 0) {
        const int t = tok == INT_MAX ? amax : tok; /* unreachable: the row's best is always kept */
        token[b] = t;
        logprob[b] = (float)((double)(row[t] * sc) - lse);
        truncated[b] = kept < (double)V ? 1 : 0;
    }
}

tidal_status cuda_sample(int32_t *token, float *logprob, uint8_t *truncated, const float *logits,
                         const cuda_sample_params *params, int B, int V, cudaStream_t stream)
{
    if (B < 0 || V < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: sample: bad shape B %d, V %d", B, V);
    if (B == 0) return TIDAL_OK;
    sample_kernel<<<(unsigned)B, SAMPLER_THREADS, 0, stream>>>(token, logprob, truncated, logits, params, V);
    return cuda_launch_check(stream, "sample");
}
