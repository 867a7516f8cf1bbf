/* adamw.cu - AdamW over one flat fp32 range, and the global gradient norm.
 *
 * AdamW: grid-stride over n (256 threads, at most 8,192 blocks), each
 * element updated by one thread with trainer/optimizer.c's arithmetic: the
 * bias corrections are computed once on the host in double, the clipping
 * factor is read from device memory (cuda_grad_norm wrote it: no host
 * round trip), and the bf16 copy of the weights is written in the same pass.
 *
 * Gradient norm, two stages, fixed order: (1) CUDA_NORM_BLOCKS blocks of 256
 * threads, each thread summing squares in double over a grid-stride range,
 * then a block sum (warp butterflies, then warp 0) into partials[block];
 * (2) one block of CUDA_NORM_BLOCKS threads sums the partials the same way
 * and writes the norm and the clipping factor. The grid does not depend on
 * the device, so the bits do not either.
 */
#include <math.h>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/ops_cuda.h"

__global__ void adamw_kernel(float *params, bf16 *params_bf16, const float *grads, float *m, float *v,
                             const uint8_t *decay_mask, size_t n, float lr, float beta1, float beta2, float eps,
                             float wd, float step_size, float inv_sqrt_bc2, const float *grad_scale)
{
    float scale = grad_scale ? *grad_scale : 1.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float g = grads[i] * scale;
        float p = params[i];
        if (!decay_mask || decay_mask[i]) p -= lr * wd * p;
        float mi = m[i] = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = v[i] = beta2 * v[i] + (1.0f - beta2) * g * g;
        p -= step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        params[i] = p;
        if (params_bf16) params_bf16[i] = __float2bfloat16_rn(p);
    }
}

tidal_status cuda_adamw_step(float *params, void *params_bf16, const float *grads, float *m, float *v,
                             const uint8_t *decay_mask, size_t n, const cuda_adamw_args *a, const float *grad_scale,
                             cudaStream_t stream)
{
    if (a->step < 1) return tidal_fail(TIDAL_ERR_INVALID, "cuda: adamw_step: step %ld (the first is 1)", a->step);
    if (n == 0) return TIDAL_OK;
    const double bc1 = 1.0 - pow((double)a->beta1, (double)a->step);
    const double bc2 = 1.0 - pow((double)a->beta2, (double)a->step);
    const float step_size = (float)(a->lr / bc1);
    const float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    adamw_kernel<<<grid_for(n, 256, 8192), 256, 0, stream>>>(params, (bf16 *)params_bf16, grads, m, v, decay_mask, n,
                                                             a->lr, a->beta1, a->beta2, a->eps, a->weight_decay,
                                                             step_size, inv_sqrt_bc2, grad_scale);
    return cuda_launch_check(stream, "adamw_step");
}

/* Stage 1: grid CUDA_NORM_BLOCKS, block 256. */
__global__ void norm_partial_kernel(double *partials, const float *g, size_t n)
{
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double x = g[i];
        s += x * x;
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

/* Stage 2: one block of CUDA_NORM_BLOCKS threads. */
__global__ void norm_finish_kernel(float *out, const double *partials, float max_norm)
{
    double s = block_sum_d(partials[threadIdx.x]);
    if (threadIdx.x == 0) {
        double norm = sqrt(s);
        out[0] = (float)norm;
        out[1] = max_norm > 0.0f && norm > (double)max_norm ? (float)((double)max_norm / (norm + 1e-6)) : 1.0f;
    }
}

tidal_status cuda_grad_norm(float *out, const float *grads, size_t n, float max_norm, double *partials,
                            cudaStream_t stream)
{
    norm_partial_kernel<<<CUDA_NORM_BLOCKS, 256, 0, stream>>>(partials, grads, n);
    TRY(cuda_launch_check(stream, "grad_norm"));
    norm_finish_kernel<<<1, CUDA_NORM_BLOCKS, 0, stream>>>(out, partials, max_norm);
    return cuda_launch_check(stream, "grad_norm finish");
}
