/* device.cuh - device-side helpers shared by the kernels (nvcc only):
 * element loads and stores for fp32 and bf16 (math always in fp32), warp
 * and block sums in a fixed order, grid sizes.
 */
#ifndef TIDAL_KERNELS_CUDA_DEVICE_CUH
#define TIDAL_KERNELS_CUDA_DEVICE_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda/common.h"

typedef __nv_bfloat16 bf16;

/* Element loads and stores: fp32 math on either storage type; stores round
 * to nearest even (__float2bfloat16_rn). */
__device__ __forceinline__ float load_f(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load_f(const bf16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store_f(float *p, size_t i, float x) { p[i] = x; }
__device__ __forceinline__ void store_f(bf16 *p, size_t i, float x) { p[i] = __float2bfloat16_rn(x); }

/* Sum over the 32 lanes of a warp (butterfly; every lane gets the same
 * result, in a fixed order). All 32 lanes must call it. */
__device__ __forceinline__ float warp_sum(float x)
{
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ __forceinline__ double warp_sum_d(double x)
{
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* Sum over a block (blockDim.x a multiple of 32, at most 1024): each warp's
 * sum to shared memory, then warp 0 sums those. Every thread gets the result.
 * Every thread of the block must call it (it has __syncthreads). */
__device__ __forceinline__ double block_sum_d(double x)
{
    __shared__ double partial[32];
    __shared__ double total;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    x = warp_sum_d(x);
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    if (warp == 0) {
        double y = lane < nwarps ? partial[lane] : 0.0;
        y = warp_sum_d(y);
        if (lane == 0) total = y;
    }
    __syncthreads();
    double r = total;
    __syncthreads(); /* the shared slots may be reused by a next call */
    return r;
}

/* Max over the block (blockDim.x a multiple of 32); every thread calls it. */
__device__ __forceinline__ float block_max(float x)
{
    __shared__ float partial[32];
    __shared__ float total;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    if (lane == 0) partial[warp] = x;
    __syncthreads();
    if (warp == 0) {
        float y = lane < nwarps ? partial[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, o));
        if (lane == 0) total = y;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

/* Blocks for n items at `per_block` a block, at most max_blocks (grid-stride
 * loops cover the rest), at least 1. */
static inline unsigned grid_for(size_t n, unsigned per_block, unsigned max_blocks)
{
    size_t b = (n + per_block - 1) / per_block;
    if (b > max_blocks) b = max_blocks;
    return b ? (unsigned)b : 1u;
}

#endif
