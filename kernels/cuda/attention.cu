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

/* ==== attention through GEMMs: per sequence, head-major copies, cuBLASLt ====
 *
 * For each sequence of n tokens (host loop; g = NH / NKV query heads per kv
 * head), with scratch views (sub-buffers 256-byte aligned):
 *   Qh [NH, n, HD] = [NKV][g n][HD], Kh, Vh [NKV, n, HD]       permute kernels
 *   S  [NH, n, np] fp32 (np = n rounded up to 8: 16-byte rows and strides)
 *      = scale Qh Kh^T                                        batch NKV, M g n, N n, K HD
 *   P  [NH, n, np] dt: masked softmax rows, LSE saved         row kernel
 *   Oh = P Vh [NH, n, HD] -> out                              batch NKV, M g n, N HD, K n
 * Backward (P recomputed from S and the saved LSE):
 *   dVh = P^T dOh                                             M n, N HD, K g n (sums the group)
 *   dP  = dOh Vh^T (into S), D = rowsum(dO . O)
 *   dS  = P (dP - D) scale (into P, in place, zero above the diagonal)
 *   dQh = dS Kh, dKh = dS^T Qh                                no atomics anywhere
 * Elementwise kernels: grid-stride, 256 threads, at most 8,192 blocks; row
 * kernels: one block of 128 per row. */

#define ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))

static size_t round8(size_t n) { return ALIGN_UP(n, (size_t)8); }

/* The scratch views for sequences of up to N tokens. */
typedef struct att_views {
    float *S, *D;
    void *P, *Qh, *Kh, *Vh, *Oh, *dQh, *dKh, *dVh;
    size_t bytes;
} att_views;

static att_views att_layout(char *base, size_t N, int NH, int NKV, int HD, cuda_dtype dt)
{
    const size_t es = cuda_dtype_size(dt), np = round8(N);
    const size_t sizes[10] = {
        (size_t)NH * N * np * sizeof(float), (size_t)NH * N * sizeof(float), (size_t)NH * N * np * es,
        (size_t)NH * N * HD * es,            (size_t)NKV * N * HD * es,      (size_t)NKV * N * HD * es,
        (size_t)NH * N * HD * es,            (size_t)NH * N * HD * es,       (size_t)NKV * N * HD * es,
        (size_t)NKV * N * HD * es};
    char *p[10];
    size_t off = 0;
    for (int i = 0; i < 10; i++) {
        p[i] = base ? base + off : NULL;
        off += ALIGN_UP(sizes[i], (size_t)256);
    }
    att_views v = {(float *)p[0], (float *)p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], off};
    return v;
}

size_t cuda_attention_scratch_bytes(int max_seqlen, int NH, int NKV, int HD, cuda_dtype dt)
{
    if (max_seqlen <= 0 || NH <= 0 || NKV <= 0 || HD <= 0) return 0;
    return att_layout(NULL, (size_t)max_seqlen, NH, NKV, HD, dt).bytes;
}

/* dst [H, n, HD] (head-major) = src tokens c0 .. c0+n-1 of [T, H, HD]; reads coalesced. */
template <typename X>
__global__ void to_head_major(X *dst, const X *src, int c0, int n, int H, int HD)
{
    size_t total = (size_t)n * H * HD;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int d = (int)(i % HD), h = (int)(i / HD % H), tl = (int)(i / ((size_t)HD * H));
        dst[cuda_head_major_offset(tl, h, d, n, HD)] = src[cuda_token_major_offset(c0 + tl, h, d, H, HD)];
    }
}

/* The inverse: tokens c0 .. c0+n-1 of dst [T, H, HD] = src [H, n, HD]; writes coalesced. */
template <typename X>
__global__ void to_token_major(X *dst, const X *src, int c0, int n, int H, int HD)
{
    size_t total = (size_t)n * H * HD;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int d = (int)(i % HD), h = (int)(i / HD % H), tl = (int)(i / ((size_t)HD * H));
        dst[cuda_token_major_offset(c0 + tl, h, d, H, HD)] = src[cuda_head_major_offset(tl, h, d, n, HD)];
    }
}

/* Grid NH n (row r = h n + i), block 128: P[r, j] = exp(S - max) / sum for
 * j <= i, 0 for i < j < np; lse[(c0 + i) NH + h] = max + log sum. */
template <typename X>
__global__ void masked_softmax_rows(X *P, float *lse, const float *S, int c0, int n, size_t np, int NH)
{
    int r = blockIdx.x, h = r / n, i = r % n;
    const float *s = S + (size_t)r * np;
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, s[j]);
    m = block_max(m);
    double l = 0.0;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) l += expf(s[j] - m);
    l = block_sum_d(l);
    float inv = (float)(1.0 / l);
    for (int j = threadIdx.x; j < (int)np; j += blockDim.x)
        store_f(P, (size_t)r * np + j, j <= i ? expf(s[j] - m) * inv : 0.0f);
    if (threadIdx.x == 0) lse[(size_t)(c0 + i) * NH + h] = (float)((double)m + log(l));
}

/* Elementwise over [NH, n, np]: P = exp(S - lse) on and below the diagonal, 0 above. */
template <typename X>
__global__ void probs_from_lse(X *P, const float *S, const float *lse, int c0, int n, size_t np, int NH)
{
    size_t total = (size_t)NH * n * np;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        size_t r = e / np;
        int j = (int)(e % np), h = (int)(r / n), i = (int)(r % n);
        float p = j <= i ? expf(S[e] - lse[(size_t)(c0 + i) * NH + h]) : 0.0f;
        store_f(P, e, p);
    }
}

/* One warp per (h, i), 8 per 256-thread block: D[h n + i] = sum_d dout . out
 * of token c0 + i, head h. */
template <typename X>
__global__ void rowdot_rows(float *D, const X *dout, const X *out, int c0, int n, int NH, int HD)
{
    int r = blockIdx.x * 8 + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= NH * n) return; /* whole warps */
    int h = r / n, i = r % n;
    size_t base = cuda_token_major_offset(c0 + i, h, 0, NH, HD);
    float s = 0.0f;
    for (int d = lane; d < HD; d += 32) s += load_f(dout, base + d) * load_f(out, base + d);
    s = warp_sum(s);
    if (lane == 0) D[r] = s;
}

/* Elementwise over [NH, n, np], in place on P: dS = P (dP - D) scale below and
 * on the diagonal, 0 above (each element read and written by one thread). */
template <typename X>
__global__ void softmax_grad(X *P, const float *dP, const float *D, int n, size_t np, int NH, float scale)
{
    size_t total = (size_t)NH * n * np;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        size_t r = e / np;
        int j = (int)(e % np), i = (int)(r % n);
        float ds = j <= i ? load_f(P, e) * (dP[e] - D[r]) * scale : 0.0f;
        store_f(P, e, ds);
    }
}

/* The product shapes of one sequence, batched over the NKV kv heads. */
static cuda_gemm_op att_op(int M, int N, int K, bool ta, bool tb, long long lda, long long ldb, long long ldd,
                           long long sA, long long sB, long long sD, int batch, float alpha, cuda_dtype in,
                           cuda_dtype out)
{
    cuda_gemm_op op = {};
    op.M = M, op.N = N, op.K = K, op.transA = ta, op.transB = tb, op.alpha = alpha, op.beta = 0.0f;
    op.lda = lda, op.ldb = ldb, op.ldd = ldd, op.batch = batch, op.strideA = sA, op.strideB = sB, op.strideD = sD;
    op.in = in, op.out = out;
    return op;
}

/* Checks the packed batch on the host and returns its longest sequence. */
static tidal_status check_packed(const char *who, const int32_t *cu, int S, int T, int NH, int NKV, int HD,
                                 int *max_len)
{
    *max_len = 0;
    if (S < 1 || T < 0 || NH <= 0 || NKV <= 0 || NH % NKV != 0 || HD <= 0)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: %s: bad shape S %d, T %d, NH %d, NKV %d, HD %d", who, S, T, NH,
                          NKV, HD);
    if (cu[0] != 0 || cu[S] != T)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: %s: cu_seqlens runs %d .. %d, want 0 .. T = %d", who, cu[0],
                          cu[S], T);
    for (int s = 0; s < S; s++) {
        if (cu[s + 1] < cu[s])
            return tidal_fail(TIDAL_ERR_INVALID, "cuda: %s: cu_seqlens[%d] = %d below cu_seqlens[%d] = %d", who,
                              s + 1, cu[s + 1], s, cu[s]);
        if (cu[s + 1] - cu[s] > *max_len) *max_len = cu[s + 1] - cu[s];
    }
    return TIDAL_OK;
}

static tidal_status check_scratch(const char *who, size_t have, int max_len, int NH, int NKV, int HD, cuda_dtype dt)
{
    size_t need = cuda_attention_scratch_bytes(max_len, NH, NKV, HD, dt);
    if (have < need)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "cuda: %s: scratch of %zu bytes, the longest sequence (%d tokens) needs %zu", who, have,
                          max_len, need);
    return TIDAL_OK;
}

template <typename X>
static tidal_status permute_in(X *dst, const void *src, int c0, int n, int H, int HD, cudaStream_t stream)
{
    to_head_major<X><<<grid_for((size_t)n * H * HD, 256, 8192), 256, 0, stream>>>(dst, (const X *)src, c0, n, H, HD);
    return cuda_launch_check(stream, "attention permute");
}

template <typename X>
static tidal_status permute_out(void *dst, const X *src, int c0, int n, int H, int HD, cudaStream_t stream)
{
    to_token_major<X><<<grid_for((size_t)n * H * HD, 256, 8192), 256, 0, stream>>>((X *)dst, src, c0, n, H, HD);
    return cuda_launch_check(stream, "attention unpermute");
}

/* S = scale Qh Kh^T for one sequence (forward, and the backward's recompute). */
static tidal_status scores(cuda_blas *b, const att_views *w, int n, int g, int NKV, int HD, cuda_dtype dt,
                           cudaStream_t stream)
{
    const long long np = (long long)round8((size_t)n), gn = (long long)g * n;
    cuda_gemm_op op = att_op((int)gn, n, HD, false, true, HD, HD, np, gn * HD, (long long)n * HD, gn * np, NKV,
                             1.0f / sqrtf((float)HD), dt, CUDA_F32);
    return cuda_gemm(b, w->S, w->Qh, w->Kh, NULL, &op, stream);
}

template <typename X>
static tidal_status forward_t(cuda_blas *b, void *out, float *lse, const void *q, const void *k, const void *v,
                              const int32_t *cu, int S, int NH, int NKV, int HD, const att_views *w,
                              cudaStream_t stream)
{
    const cuda_dtype dt = sizeof(X) == 2 ? CUDA_BF16 : CUDA_F32;
    const int g = NH / NKV;
    for (int s = 0; s < S; s++) {
        const int c0 = cu[s], n = cu[s + 1] - cu[s];
        if (n == 0) continue;
        const long long np = (long long)round8((size_t)n), gn = (long long)g * n;
        TRY(permute_in<X>((X *)w->Qh, q, c0, n, NH, HD, stream));
        TRY(permute_in<X>((X *)w->Kh, k, c0, n, NKV, HD, stream));
        TRY(permute_in<X>((X *)w->Vh, v, c0, n, NKV, HD, stream));
        TRY_WRAP(scores(b, w, n, g, NKV, HD, dt, stream), "cuda: attention_forward: scores");
        masked_softmax_rows<X><<<(unsigned)(NH * n), 128, 0, stream>>>((X *)w->P, lse, w->S, c0, n, (size_t)np, NH);
        TRY(cuda_launch_check(stream, "attention_forward softmax"));
        cuda_gemm_op pv = att_op((int)gn, HD, n, false, false, np, HD, HD, gn * np, (long long)n * HD, gn * HD, NKV,
                                 1.0f, dt, dt);
        TRY_WRAP(cuda_gemm(b, w->Oh, w->P, w->Vh, NULL, &pv, stream), "cuda: attention_forward: P V");
        TRY(permute_out<X>(out, (const X *)w->Oh, c0, n, NH, HD, stream));
    }
    return TIDAL_OK;
}

template <typename X>
static tidal_status backward_t(cuda_blas *b, void *dq, void *dk, void *dv, const void *dout, const void *out,
                               const float *lse, const void *q, const void *k, const void *v, const int32_t *cu,
                               int S, int NH, int NKV, int HD, const att_views *w, cudaStream_t stream)
{
    const cuda_dtype dt = sizeof(X) == 2 ? CUDA_BF16 : CUDA_F32;
    const int g = NH / NKV;
    const float scale = 1.0f / sqrtf((float)HD);
    for (int s = 0; s < S; s++) {
        const int c0 = cu[s], n = cu[s + 1] - cu[s];
        if (n == 0) continue;
        const long long np = (long long)round8((size_t)n), gn = (long long)g * n, nhd = (long long)n * HD;
        const size_t cells = (size_t)NH * n * np;
        TRY(permute_in<X>((X *)w->Qh, q, c0, n, NH, HD, stream));
        TRY(permute_in<X>((X *)w->Kh, k, c0, n, NKV, HD, stream));
        TRY(permute_in<X>((X *)w->Vh, v, c0, n, NKV, HD, stream));
        TRY(permute_in<X>((X *)w->Oh, dout, c0, n, NH, HD, stream)); /* Oh holds dOh here */
        TRY_WRAP(scores(b, w, n, g, NKV, HD, dt, stream), "cuda: attention_backward: scores");
        probs_from_lse<X><<<grid_for(cells, 256, 8192), 256, 0, stream>>>((X *)w->P, w->S, lse, c0, n, (size_t)np,
                                                                         NH);
        TRY(cuda_launch_check(stream, "attention_backward probs"));
        /* dVh = P^T dOh: [n, HD] per kv head, the sum running over its g n rows */
        cuda_gemm_op dvop = att_op(n, HD, (int)gn, true, false, np, HD, HD, gn * np, gn * HD, nhd, NKV, 1.0f, dt, dt);
        TRY_WRAP(cuda_gemm(b, w->dVh, w->P, w->Oh, NULL, &dvop, stream), "cuda: attention_backward: dV");
        /* dP = dOh Vh^T into S */
        cuda_gemm_op dpop = att_op((int)gn, n, HD, false, true, HD, HD, np, gn * HD, nhd, gn * np, NKV, 1.0f, dt,
                                   CUDA_F32);
        TRY_WRAP(cuda_gemm(b, w->S, w->Oh, w->Vh, NULL, &dpop, stream), "cuda: attention_backward: dP");
        rowdot_rows<X><<<(unsigned)((NH * n + 7) / 8), 256, 0, stream>>>(w->D, (const X *)dout, (const X *)out, c0, n,
                                                                        NH, HD);
        TRY(cuda_launch_check(stream, "attention_backward rowdot"));
        softmax_grad<X><<<grid_for(cells, 256, 8192), 256, 0, stream>>>((X *)w->P, w->S, w->D, n, (size_t)np, NH,
                                                                       scale);
        TRY(cuda_launch_check(stream, "attention_backward softmax grad"));
        /* dQh = dS Kh; dKh = dS^T Qh */
        cuda_gemm_op dqop = att_op((int)gn, HD, n, false, false, np, HD, HD, gn * np, nhd, gn * HD, NKV, 1.0f, dt, dt);
        TRY_WRAP(cuda_gemm(b, w->dQh, w->P, w->Kh, NULL, &dqop, stream), "cuda: attention_backward: dQ");
        cuda_gemm_op dkop = att_op(n, HD, (int)gn, true, false, np, HD, HD, gn * np, gn * HD, nhd, NKV, 1.0f, dt, dt);
        TRY_WRAP(cuda_gemm(b, w->dKh, w->P, w->Qh, NULL, &dkop, stream), "cuda: attention_backward: dK");
        TRY(permute_out<X>(dq, (const X *)w->dQh, c0, n, NH, HD, stream));
        TRY(permute_out<X>(dk, (const X *)w->dKh, c0, n, NKV, HD, stream));
        TRY(permute_out<X>(dv, (const X *)w->dVh, c0, n, NKV, HD, stream));
    }
    return TIDAL_OK;
}

tidal_status cuda_attention_forward(cuda_blas *b, void *out, float *lse, const void *q, const void *k, const void *v,
                                    const int32_t *cu_seqlens_host, int S, int T, int NH, int NKV, int HD,
                                    void *scratch, size_t scratch_bytes, cuda_dtype dt, cudaStream_t stream)
{
    int max_len;
    TRY(check_packed("attention_forward", cu_seqlens_host, S, T, NH, NKV, HD, &max_len));
    if (max_len == 0) return TIDAL_OK;
    TRY(check_scratch("attention_forward", scratch_bytes, max_len, NH, NKV, HD, dt));
    att_views w = att_layout((char *)scratch, (size_t)max_len, NH, NKV, HD, dt);
    if (dt == CUDA_BF16) return forward_t<bf16>(b, out, lse, q, k, v, cu_seqlens_host, S, NH, NKV, HD, &w, stream);
    return forward_t<float>(b, out, lse, q, k, v, cu_seqlens_host, S, NH, NKV, HD, &w, stream);
}

tidal_status cuda_attention_backward(cuda_blas *b, void *dq, void *dk, void *dv, const void *dout, const void *out,
                                     const float *lse, const void *q, const void *k, const void *v,
                                     const int32_t *cu_seqlens_host, int S, int T, int NH, int NKV, int HD,
                                     void *scratch, size_t scratch_bytes, cuda_dtype dt, cudaStream_t stream)
{
    int max_len;
    TRY(check_packed("attention_backward", cu_seqlens_host, S, T, NH, NKV, HD, &max_len));
    if (max_len == 0) return TIDAL_OK;
    TRY(check_scratch("attention_backward", scratch_bytes, max_len, NH, NKV, HD, dt));
    att_views w = att_layout((char *)scratch, (size_t)max_len, NH, NKV, HD, dt);
    if (dt == CUDA_BF16)
        return backward_t<bf16>(b, dq, dk, dv, dout, out, lse, q, k, v, cu_seqlens_host, S, NH, NKV, HD, &w, stream);
    return backward_t<float>(b, dq, dk, dv, dout, out, lse, q, k, v, cu_seqlens_host, S, NH, NKV, HD, &w, stream);
}
