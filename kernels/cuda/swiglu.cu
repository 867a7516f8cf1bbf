/* swiglu.cu - SwiGLU, elementwise: out = silu(g) u = g u / (1 + exp(-g)).
 *
 * Grid-stride loops, blocks of 256 threads, at most 8,192 blocks. Backward:
 * dg = dh u s(g) (1 + g (1 - s(g))), du = dh silu(g), with the numerically
 * stable sigmoid of kernels/cpu/ops.c.
 */
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/ops_cuda.h"

__device__ __forceinline__ float sigmoid_stable(float x)
{
    if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

template <typename X>
__global__ void swiglu_forward_kernel(X *out, const X *gate, const X *up, size_t N)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x) {
        float g = load_f(gate, i);
        store_f(out, i, g * load_f(up, i) / (1.0f + expf(-g)));
    }
}

template <typename X>
__global__ void swiglu_backward_kernel(X *dgate, X *dup, const X *dout, const X *gate, const X *up, size_t N)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < N; i += (size_t)gridDim.x * blockDim.x) {
        float g = load_f(gate, i), u = load_f(up, i), dh = load_f(dout, i), sg = sigmoid_stable(g);
        store_f(dgate, i, dh * u * sg * (1.0f + g * (1.0f - sg)));
        store_f(dup, i, dh * (g * sg));
    }
}

tidal_status cuda_swiglu_forward(void *out, const void *gate, const void *up, size_t N, cuda_dtype dt,
                                 cudaStream_t stream)
{
    if (N == 0) return TIDAL_OK;
    unsigned grid = grid_for(N, 256, 8192);
    if (dt == CUDA_BF16)
        swiglu_forward_kernel<bf16><<<grid, 256, 0, stream>>>((bf16 *)out, (const bf16 *)gate, (const bf16 *)up, N);
    else
        swiglu_forward_kernel<float><<<grid, 256, 0, stream>>>((float *)out, (const float *)gate, (const float *)up, N);
    return cuda_launch_check(stream, "swiglu_forward");
}

tidal_status cuda_swiglu_backward(void *dgate, void *dup, const void *dout, const void *gate, const void *up,
                                  size_t N, cuda_dtype dt, cudaStream_t stream)
{
    if (N == 0) return TIDAL_OK;
    unsigned grid = grid_for(N, 256, 8192);
    if (dt == CUDA_BF16)
        swiglu_backward_kernel<bf16><<<grid, 256, 0, stream>>>((bf16 *)dgate, (bf16 *)dup, (const bf16 *)dout,
                                                              (const bf16 *)gate, (const bf16 *)up, N);
    else
        swiglu_backward_kernel<float><<<grid, 256, 0, stream>>>((float *)dgate, (float *)dup, (const float *)dout,
                                                               (const float *)gate, (const float *)up, N);
    return cuda_launch_check(stream, "swiglu_backward");
}
