/* attention.cu - causal GQA attention over a packed batch: the naive
 * reference kernel (the GEMM-based attention of docs/gpu.md is to be tested
 * against it and against kernels/cpu/ops.c).
 *
 * Grid (T, NH), block 128: block (t, h) computes the output row of token t,
 * query head h. Its sequence s and first key j0 come from index.h; its keys
 * j0 .. t of kv head h / (NH / NKV). Dynamic shared memory holds q (HD
 * floats) and the scores (up to max_seqlen floats): (1) scores = q.k *
 * 1/sqrt(HD), strided over the threads, with each thread's max; (2) block
 * max; (3) scores replaced by exp(score - max), each thread's sum, block sum
 * in double; lse = max + log(sum); (4) threads stride over HD, each summing
 * its channel of p_j v_j over the keys in order, divided by the sum.
 */
#include <math.h>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/index.h"
#include "kernels/cuda/ops_cuda.h"

template <typename X>
__global__ void attention_naive_kernel(X *out, float *lse, const X *q, const X *k, const X *v, const int32_t *cu,
                                       int S, int NH, int NKV, int HD, int max_seqlen)
{
    extern __shared__ float smem[];
    float *qs = smem, *sc = smem + HD;
    int t = blockIdx.x, h = blockIdx.y, kh = cuda_kv_head(h, NH, NKV);
    int j0 = cuda_first_key(cu, S, t), n = t - j0 + 1;
    if (n > max_seqlen) { /* the caller's bound is wrong: NaN, never a write past shared memory */
        for (int d = threadIdx.x; d < HD; d += blockDim.x) store_f(out, cuda_token_major_offset(t, h, d, NH, HD), NAN);
        if (threadIdx.x == 0) lse[(size_t)t * NH + h] = NAN;
        return; /* the whole block: n is the same for all its threads */
    }
    const float scale = 1.0f / sqrtf((float)HD);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) qs[d] = load_f(q, cuda_token_major_offset(t, h, d, NH, HD));
    __syncthreads();
    float m = -INFINITY;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float s = 0.0f;
        for (int d = 0; d < HD; d++) s += qs[d] * load_f(k, cuda_token_major_offset(j0 + j, kh, d, NKV, HD));
        sc[j] = s * scale;
        m = fmaxf(m, sc[j]);
    }
    m = block_max(m);
    double l = 0.0;
    for (int j = threadIdx.x; j < n; j += blockDim.x) {
        float e = expf(sc[j] - m);
        sc[j] = e;
        l += e;
    }
    l = block_sum_d(l); /* its __syncthreads also orders the sc[] writes before the reads below */
    if (threadIdx.x == 0) lse[(size_t)t * NH + h] = (float)((double)m + log(l));
    float inv = (float)(1.0 / l);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float o = 0.0f;
        for (int j = 0; j < n; j++) o += sc[j] * load_f(v, cuda_token_major_offset(j0 + j, kh, d, NKV, HD));
        store_f(out, cuda_token_major_offset(t, h, d, NH, HD), o * inv);
    }
}

tidal_status cuda_attention_forward_naive(void *out, float *lse, const void *q, const void *k, const void *v,
                                          const int32_t *cu_seqlens, int S, int T, int NH, int NKV, int HD,
                                          int max_seqlen, cuda_dtype dt, cudaStream_t stream)
{
    size_t smem = (size_t)(HD + max_seqlen) * sizeof(float);
    if (T < 0 || S < 1 || NH <= 0 || NKV <= 0 || NH % NKV != 0 || HD <= 0 || max_seqlen < 0 || NH > 65535)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "cuda: attention_forward_naive: bad shape S %d, T %d, NH %d, NKV %d, HD %d", S, T, NH, NKV,
                          HD);
    if (smem > 48 * 1024)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "cuda: attention_forward_naive: max_seqlen %d with HD %d needs %zu bytes of shared memory "
                          "(48 KiB at most)",
                          max_seqlen, HD, smem);
    if (T == 0) return TIDAL_OK;
    dim3 grid((unsigned)T, (unsigned)NH);
    if (dt == CUDA_BF16)
        attention_naive_kernel<bf16><<<grid, 128, smem, stream>>>((bf16 *)out, lse, (const bf16 *)q, (const bf16 *)k,
                                                                 (const bf16 *)v, cu_seqlens, S, NH, NKV, HD,
                                                                 max_seqlen);
    else
        attention_naive_kernel<float><<<grid, 128, smem, stream>>>((float *)out, lse, (const float *)q,
                                                                  (const float *)k, (const float *)v, cu_seqlens, S,
                                                                  NH, NKV, HD, max_seqlen);
    return cuda_launch_check(stream, "attention_forward_naive");
}
