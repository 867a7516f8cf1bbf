/* rmsnorm.cu - RMSNorm forward and backward, and the column sums of the
 * parameter gradients (RMSNorm dw, Linear bias) in a fixed order.
 *
 * Forward and the backward's dinp: one warp per row (8 rows per 256-thread
 * block); the row's sum (of squares, or of dy.w.x) is the warp's, lanes
 * striding over C, then a butterfly: fixed order. dw and dbias: two stages,
 * no atomics: (1) block (c-slice, chunk) sums CUDA_COLSUM_ROWS rows of its
 * 256 columns, one thread per column walking the rows in order, into
 * scratch[chunk][C]; (2) one thread per column adds the chunks in order and
 * accumulates into the gradient.
 */
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/ops_cuda.h"

#define ROWS_PER_BLOCK 8 /* warps of a 256-thread block */

size_t cuda_colsum_scratch(int T, int C)
{
    if (T <= 0 || C <= 0) return 0;
    return (size_t)((T + CUDA_COLSUM_ROWS - 1) / CUDA_COLSUM_ROWS) * (size_t)C;
}

/* Grid ceil(T / 8), block 256: warp w of block b normalises row 8b + w. */
template <typename X>
__global__ void rmsnorm_forward_kernel(X *out, float *rstd, const X *inp, const X *w, int T, int C, float eps)
{
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= T) return; /* the whole warp leaves together; no block-wide sync below */
    size_t base = (size_t)row * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float x = load_f(inp, base + i);
        ss += x * x;
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    if (lane == 0) rstd[row] = r;
    for (int i = lane; i < C; i += 32) store_f(out, base + i, (load_f(inp, base + i) * r) * load_f(w, i));
}

/* Same shape as the forward: dx_i += r w_i dy_i - (r^3 / C) x_i sum_k dy_k w_k x_k. */
template <typename X>
__global__ void rmsnorm_backward_dx_kernel(X *dinp, const X *dout, const X *inp, const X *w, const float *rstd, int T,
                                           int C)
{
    int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= T) return;
    size_t base = (size_t)row * C;
    float dot = 0.0f;
    for (int i = lane; i < C; i += 32) dot += load_f(dout, base + i) * load_f(w, i) * load_f(inp, base + i);
    dot = warp_sum(dot);
    float r = rstd[row];
    float coef = r * r * r * dot / (float)C;
    for (int i = lane; i < C; i += 32) {
        float d = load_f(dinp, base + i) + (r * load_f(w, i) * load_f(dout, base + i) - coef * load_f(inp, base + i));
        store_f(dinp, base + i, d);
    }
}

/* Stage 1, grid (ceil(C / 256), chunks), block 256: scratch[chunk][c] = sum
 * over the chunk's rows, in order, of dy[t,c] (times inp[t,c] rstd[t] when
 * inp is given: RMSNorm's dw). */
template <typename X>
__global__ void colsum_partial_kernel(float *scratch, const X *dy, const X *inp, const float *rstd, int T, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int t0 = chunk * CUDA_COLSUM_ROWS, t1 = min(T, t0 + CUDA_COLSUM_ROWS);
    float acc = 0.0f;
    for (int t = t0; t < t1; t++) {
        size_t at = (size_t)t * C + c;
        float d = load_f(dy, at);
        acc += inp ? d * (load_f(inp, at) * rstd[t]) : d;
    }
    scratch[(size_t)chunk * C + c] = acc;
}

/* Stage 2, grid ceil(C / 256), block 256: out[c] += sum of the chunks, in order. */
__global__ void colsum_finish_kernel(float *out, const float *scratch, int chunks, int C)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int k = 0; k < chunks; k++) acc += scratch[(size_t)k * C + c];
    out[c] += acc;
}

template <typename X>
static tidal_status colsum(float *out, const X *dy, const X *inp, const float *rstd, int T, int C, float *scratch,
                           cudaStream_t stream, const char *who)
{
    int chunks = (T + CUDA_COLSUM_ROWS - 1) / CUDA_COLSUM_ROWS;
    dim3 grid1((unsigned)((C + 255) / 256), (unsigned)chunks);
    colsum_partial_kernel<X><<<grid1, 256, 0, stream>>>(scratch, dy, inp, rstd, T, C);
    TRY(cuda_launch_check(stream, who));
    colsum_finish_kernel<<<(unsigned)((C + 255) / 256), 256, 0, stream>>>(out, scratch, chunks, C);
    return cuda_launch_check(stream, who);
}

static tidal_status check_rows(const char *who, int T, int C)
{
    if (T < 0 || C <= 0) return tidal_fail(TIDAL_ERR_INVALID, "cuda: %s: bad shape T %d, C %d", who, T, C);
    if (T > 65535 * CUDA_COLSUM_ROWS) /* grid.y of the column sums */
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: %s: T %d above %d tokens", who, T, 65535 * CUDA_COLSUM_ROWS);
    return TIDAL_OK;
}

tidal_status cuda_rmsnorm_forward(void *out, float *rstd, const void *inp, const void *w, int T, int C, float eps,
                                  cuda_dtype dt, cudaStream_t stream)
{
    TRY(check_rows("rmsnorm_forward", T, C));
    if (T == 0) return TIDAL_OK;
    unsigned grid = (unsigned)((T + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    if (dt == CUDA_BF16)
        rmsnorm_forward_kernel<bf16><<<grid, 256, 0, stream>>>((bf16 *)out, rstd, (const bf16 *)inp, (const bf16 *)w,
                                                              T, C, eps);
    else
        rmsnorm_forward_kernel<float><<<grid, 256, 0, stream>>>((float *)out, rstd, (const float *)inp,
                                                               (const float *)w, T, C, eps);
    return cuda_launch_check(stream, "rmsnorm_forward");
}

tidal_status cuda_rmsnorm_backward(void *dinp, float *dw, const void *dout, const void *inp, const void *w,
                                   const float *rstd, int T, int C, float *scratch, cuda_dtype dt,
                                   cudaStream_t stream)
{
    TRY(check_rows("rmsnorm_backward", T, C));
    if (T == 0) return TIDAL_OK;
    unsigned grid = (unsigned)((T + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
    if (dt == CUDA_BF16) {
        rmsnorm_backward_dx_kernel<bf16><<<grid, 256, 0, stream>>>((bf16 *)dinp, (const bf16 *)dout,
                                                                  (const bf16 *)inp, (const bf16 *)w, rstd, T, C);
        TRY(cuda_launch_check(stream, "rmsnorm_backward"));
        return colsum<bf16>(dw, (const bf16 *)dout, (const bf16 *)inp, rstd, T, C, scratch, stream,
                            "rmsnorm_backward dw");
    }
    rmsnorm_backward_dx_kernel<float><<<grid, 256, 0, stream>>>((float *)dinp, (const float *)dout,
                                                               (const float *)inp, (const float *)w, rstd, T, C);
    TRY(cuda_launch_check(stream, "rmsnorm_backward"));
    return colsum<float>(dw, (const float *)dout, (const float *)inp, rstd, T, C, scratch, stream,
                         "rmsnorm_backward dw");
}

tidal_status cuda_bias_backward(float *dbias, const void *dout, int T, int OC, float *scratch, cuda_dtype dt,
                                cudaStream_t stream)
{
    TRY(check_rows("bias_backward", T, OC));
    if (T == 0) return TIDAL_OK;
    if (dt == CUDA_BF16)
        return colsum<bf16>(dbias, (const bf16 *)dout, (const bf16 *)NULL, NULL, T, OC, scratch, stream,
                            "bias_backward");
    return colsum<float>(dbias, (const float *)dout, (const float *)NULL, NULL, T, OC, scratch, stream,
                         "bias_backward");
}
