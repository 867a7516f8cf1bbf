/* rope.cu - rotary position embedding (Hugging Face rotate_half), in place.
 *
 * Grid T (one block per token), block 128: the block first computes its
 * token's HD/2 angles into shared memory (cos, sin of (float)pos *
 * cuda_rope_inv_freq(i), as kernels/cpu/ops.c does), then its threads stride
 * over the NH * HD/2 pairs of the token (index.h: cuda_rope_pair), each
 * thread rotating one pair at a time: no two threads touch one element.
 * The backward is the transpose rotation (sign -1 on sin).
 */
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/index.h"
#include "kernels/cuda/ops_cuda.h"

#define ROPE_MAX_HALF 512

template <typename X>
__global__ void rope_kernel(X *x, const int32_t *pos, int NH, int HD, float theta, float sign)
{
    __shared__ float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
    int t = blockIdx.x, half = HD / 2;
    float p = (float)pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        float a = p * cuda_rope_inv_freq(i, HD, theta);
        cs[i] = cosf(a);
        sn[i] = sign * sinf(a);
    }
    __syncthreads();
    size_t per_token = (size_t)NH * half;
    for (size_t j = threadIdx.x; j < per_token; j += blockDim.x) {
        int tt, i;
        size_t o1, o2;
        cuda_rope_pair((size_t)t * per_token + j, NH, HD, &tt, &i, &o1, &o2);
        float a = load_f(x, o1), b = load_f(x, o2);
        store_f(x, o1, a * cs[i] - b * sn[i]);
        store_f(x, o2, b * cs[i] + a * sn[i]);
    }
}

static tidal_status rope(const char *who, void *x, const int32_t *pos, int T, int NH, int HD, float theta, float sign,
                         cuda_dtype dt, cudaStream_t stream)
{
    if (T < 0 || NH <= 0 || HD <= 0 || HD % 2 != 0 || HD / 2 > ROPE_MAX_HALF)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: %s: bad shape T %d, NH %d, HD %d (HD even, <= %d)", who, T, NH,
                          HD, 2 * ROPE_MAX_HALF);
    if (T == 0) return TIDAL_OK;
    if (dt == CUDA_BF16)
        rope_kernel<bf16><<<(unsigned)T, 128, 0, stream>>>((bf16 *)x, pos, NH, HD, theta, sign);
    else
        rope_kernel<float><<<(unsigned)T, 128, 0, stream>>>((float *)x, pos, NH, HD, theta, sign);
    return cuda_launch_check(stream, who);
}

tidal_status cuda_rope_forward(void *x, const int32_t *pos, int T, int NH, int HD, float theta, cuda_dtype dt,
                               cudaStream_t stream)
{
    return rope("rope_forward", x, pos, T, NH, HD, theta, 1.0f, dt, stream);
}

tidal_status cuda_rope_backward(void *dx, const int32_t *pos, int T, int NH, int HD, float theta, cuda_dtype dt,
                                cudaStream_t stream)
{
    return rope("rope_backward", dx, pos, T, NH, HD, theta, -1.0f, dt, stream);
}
