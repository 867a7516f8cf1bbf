/* embedding.cu - token embedding: gather forward, deterministic backward.
 *
 * Forward: grid-stride over T * C elements (256 threads, at most 8,192
 * blocks), out[t, c] = wte[ids[t], c].
 * Backward: no float atomics. The host groups the tokens by id
 * (index.h: cuda_embedding_index_build); grid (U distinct ids, ceil(C / 256)),
 * block 256: block (u, cb) owns row uniq[u], channels cb*256 .. +255, and
 * each thread adds its channel of the group's dout rows in token order onto
 * the gradient's value - the additions of cpu_embedding_backward, in its
 * order, so fp32 results match it bit for bit.
 */
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/ops_cuda.h"

template <typename X>
__global__ void embedding_forward_kernel(X *out, const int32_t *ids, const X *wte, int T, int C)
{
    size_t n = (size_t)T * C;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)C, c = i % (size_t)C;
        out[i] = wte[(size_t)ids[t] * C + c];
    }
}

template <typename X>
__global__ void embedding_backward_kernel(float *dwte, const X *dout, const int32_t *order, const int32_t *uniq,
                                          const int32_t *seg, int C)
{
    int u = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float *row = dwte + (size_t)uniq[u] * C;
    float acc = row[c];
    for (int r = seg[u]; r < seg[u + 1]; r++) acc += load_f(dout, (size_t)order[r] * C + c);
    row[c] = acc;
}

tidal_status cuda_embedding_forward(void *out, const int32_t *ids, const void *wte, int T, int C, cuda_dtype dt,
                                    cudaStream_t stream)
{
    if (T < 0 || C <= 0) return tidal_fail(TIDAL_ERR_INVALID, "cuda: embedding_forward: bad shape T %d, C %d", T, C);
    if (T == 0) return TIDAL_OK;
    unsigned grid = grid_for((size_t)T * C, 256, 8192);
    if (dt == CUDA_BF16)
        embedding_forward_kernel<bf16><<<grid, 256, 0, stream>>>((bf16 *)out, ids, (const bf16 *)wte, T, C);
    else
        embedding_forward_kernel<float><<<grid, 256, 0, stream>>>((float *)out, ids, (const float *)wte, T, C);
    return cuda_launch_check(stream, "embedding_forward");
}

tidal_status cuda_embedding_backward(float *dwte, const void *dout, const int32_t *order, const int32_t *uniq,
                                     const int32_t *seg, int U, int C, cuda_dtype dt, cudaStream_t stream)
{
    if (U < 0 || C <= 0 || (C + 255) / 256 > 65535)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: embedding_backward: bad shape U %d, C %d", U, C);
    if (U == 0) return TIDAL_OK;
    dim3 grid((unsigned)U, (unsigned)((C + 255) / 256));
    if (dt == CUDA_BF16)
        embedding_backward_kernel<bf16><<<grid, 256, 0, stream>>>(dwte, (const bf16 *)dout, order, uniq, seg, C);
    else
        embedding_backward_kernel<float><<<grid, 256, 0, stream>>>(dwte, (const float *)dout, order, uniq, seg, C);
    return cuda_launch_check(stream, "embedding_backward");
}
