/* head.cu - the LM head, chunked over tokens: per-token log-probability of
 * the target and entropy, and the backward, never holding [T, V] logits.
 *
 * Per chunk of CUDA_HEAD_CHUNK tokens (n rows):
 *   1. logits[n, V] (fp32, rows Vp = V rounded up to 8 apart) = h w^T * inv_temp:
 *      one cuda_gemm (dt inputs, fp32 out, alpha = inv_temp);
 *   2. a row kernel, grid n, block 256: block max of the row; then the sums
 *      S = sum_j e_j and Y = sum_j e_j y_j (e_j = expf(y_j), y_j = z_j - max) in
 *      double, block-reduced in a fixed order; lse = max + log S, H = log S - Y/S
 *      (kernels/cpu/softmax.c's definition). Forward: logprob, entropy.
 *      Backward: dz_j written over the row (fp32) or into a bf16 copy (bf16);
 *   3. backward only: dh[chunk] += dz w (M = n, N = C, K = V) and dw += dz^T h
 *      (M = V, N = C, K = n, transA), beta = 1, fp32 accumulation.
 */
#include <math.h>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/ops_cuda.h"

static long long padded_vocab(int V) { return ((long long)V + 7) / 8 * 8; }

size_t cuda_head_scratch_bytes(int V, cuda_dtype dt)
{
    if (V <= 0) return 0;
    size_t cells = (size_t)CUDA_HEAD_CHUNK * (size_t)padded_vocab(V);
    return cells * sizeof(float) + (dt == CUDA_BF16 ? cells * sizeof(bf16) : 0);
}

/* The row's max, log-sum-exp and entropy; every thread of the block calls it
 * and gets them. */
__device__ void row_stats(const float *z, int V, float *m_out, double *lse, double *H)
{
    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, z[j]);
    m = block_max(m);
    double se = 0.0, sy = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float y = z[j] - m, e = expf(y);
        se += e;
        sy += (double)(e * y);
    }
    se = block_sum_d(se);
    sy = block_sum_d(sy);
    double ls = log(se);
    *m_out = m;
    *lse = (double)m + ls;
    *H = ls - sy / se;
}

/* Grid n (rows of the chunk), block 256. */
__global__ void head_forward_rows(float *logprob, float *entropy, const float *logits, long long ldz,
                                  const int32_t *targets, int t0, int V)
{
    int r = blockIdx.x, t = t0 + r;
    const float *z = logits + (size_t)r * ldz;
    float m;
    double lse, H;
    row_stats(z, V, &m, &lse, &H);
    if (threadIdx.x == 0) {
        int tgt = targets[t];
        logprob[t] = tgt >= 0 && tgt < V ? (float)((double)z[tgt] - lse) : NAN;
        entropy[t] = (float)H;
    }
}

/* Grid n, block 256: dz over the row (X = float: in place over the logits,
 * each thread rewriting the elements it read after the block's reductions). */
template <typename X>
__global__ void head_backward_rows(X *dz, const float *logits, long long ldz, const float *dlogprob,
                                   const float *dentropy, const int32_t *targets, int t0, int V, float inv_temp)
{
    int r = blockIdx.x, t = t0 + r;
    const float *z = logits + (size_t)r * ldz;
    float m;
    double lse, H;
    row_stats(z, V, &m, &lse, &H);
    const double dl = dlogprob[t], de = dentropy ? dentropy[t] : 0.0;
    const int tgt = targets[t];
    const bool valid = tgt >= 0 && tgt < V;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        double logp = (double)z[j] - lse, p = exp(logp);
        double d = inv_temp * (dl * ((j == tgt ? 1.0 : 0.0) - p) - de * p * (logp + H));
        store_f(dz, (size_t)r * ldz + j, valid ? (float)d : NAN);
    }
}

static tidal_status check_head(const char *who, int T, int C, int V, const void *scratch)
{
    if (T < 0 || C <= 0 || V <= 0)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: %s: bad shape T %d, C %d, V %d", who, T, C, V);
    if (!scratch) return tidal_fail(TIDAL_ERR_INVALID, "cuda: %s: no scratch", who);
    return TIDAL_OK;
}

/* logits[n, V] (ld Vp) = inv_temp * h[t0 .. t0+n) w^T */
static tidal_status chunk_logits(cuda_blas *b, float *logits, const void *h, const void *w, int t0, int n, int C,
                                 int V, float inv_temp, cuda_dtype dt, cudaStream_t stream)
{
    cuda_gemm_op op = {}; /* C++: fields assigned one by one */
    op.M = n, op.N = V, op.K = C, op.transB = true, op.alpha = inv_temp, op.ldd = padded_vocab(V);
    op.in = dt, op.out = CUDA_F32;
    const char *hc = (const char *)h + (size_t)t0 * C * cuda_dtype_size(dt);
    return cuda_gemm(b, logits, hc, w, NULL, &op, stream);
}

tidal_status cuda_head_forward(cuda_blas *b, float *logprob, float *entropy, const void *h, const void *w,
                               const int32_t *targets, int T, int C, int V, float inv_temp, void *scratch,
                               cuda_dtype dt, cudaStream_t stream)
{
    TRY(check_head("head_forward", T, C, V, scratch));
    float *logits = (float *)scratch;
    for (int t0 = 0; t0 < T; t0 += CUDA_HEAD_CHUNK) {
        int n = T - t0 < CUDA_HEAD_CHUNK ? T - t0 : CUDA_HEAD_CHUNK;
        TRY_WRAP(chunk_logits(b, logits, h, w, t0, n, C, V, inv_temp, dt, stream), "cuda: head_forward");
        head_forward_rows<<<(unsigned)n, 256, 0, stream>>>(logprob, entropy, logits, padded_vocab(V), targets, t0, V);
        TRY(cuda_launch_check(stream, "head_forward rows"));
    }
    return TIDAL_OK;
}

tidal_status cuda_head_backward(cuda_blas *b, void *dh, float *dw, const float *dlogprob, const float *dentropy,
                                const void *h, const void *w, const int32_t *targets, int T, int C, int V,
                                float inv_temp, void *scratch, cuda_dtype dt, cudaStream_t stream)
{
    TRY(check_head("head_backward", T, C, V, scratch));
    const long long Vp = padded_vocab(V);
    float *logits = (float *)scratch;
    void *dz = dt == CUDA_BF16 ? (void *)((char *)scratch + (size_t)CUDA_HEAD_CHUNK * Vp * sizeof(float)) : scratch;
    const size_t es = cuda_dtype_size(dt);
    for (int t0 = 0; t0 < T; t0 += CUDA_HEAD_CHUNK) {
        int n = T - t0 < CUDA_HEAD_CHUNK ? T - t0 : CUDA_HEAD_CHUNK;
        TRY_WRAP(chunk_logits(b, logits, h, w, t0, n, C, V, inv_temp, dt, stream), "cuda: head_backward");
        if (dt == CUDA_BF16)
            head_backward_rows<bf16><<<(unsigned)n, 256, 0, stream>>>((bf16 *)dz, logits, Vp, dlogprob, dentropy,
                                                                     targets, t0, V, inv_temp);
        else
            head_backward_rows<float><<<(unsigned)n, 256, 0, stream>>>((float *)dz, logits, Vp, dlogprob, dentropy,
                                                                      targets, t0, V, inv_temp);
        TRY(cuda_launch_check(stream, "head_backward rows"));
        /* dh[t0 .. t0+n) += dz[n, V] w[V, C] */
        cuda_gemm_op dinp = {};
        dinp.M = n, dinp.N = C, dinp.K = V, dinp.alpha = 1.0f, dinp.beta = 1.0f, dinp.lda = Vp;
        dinp.in = dt, dinp.out = dt;
        TRY_WRAP(cuda_gemm(b, (char *)dh + (size_t)t0 * C * es, dz, w, NULL, &dinp, stream), "cuda: head_backward dh");
        /* dw[V, C] += dz^T h[t0 .. t0+n) */
        cuda_gemm_op dweight = {};
        dweight.M = V, dweight.N = C, dweight.K = n, dweight.transA = true, dweight.alpha = 1.0f, dweight.beta = 1.0f;
        dweight.lda = Vp, dweight.in = dt, dweight.out = CUDA_F32;
        TRY_WRAP(cuda_gemm(b, dw, dz, (const char *)h + (size_t)t0 * C * es, NULL, &dweight, stream),
                 "cuda: head_backward dw");
    }
    return TIDAL_OK;
}
