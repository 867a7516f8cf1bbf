/* common.cu - errors, launch checks, device memory (see common.h). */
#include "kernels/cuda/common.h"
#include "kernels/cuda/device.cuh"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t cuda_dtype_size(cuda_dtype dt) { return dt == CUDA_BF16 ? 2 : 4; }

const char *cuda_dtype_name(cuda_dtype dt) { return dt == CUDA_BF16 ? "bf16" : "f32"; }

tidal_status cuda_check(cudaError_t err, const char *what)
{
    if (err == cudaSuccess) return TIDAL_OK;
    return tidal_fail(TIDAL_ERR_UNAVAILABLE, "cuda: %s: %s", what, cudaGetErrorString(err));
}

bool cuda_sync_mode(void)
{
    /* Read once; a data race on first use writes the same value. */
    static int mode = -1;
    if (mode < 0) {
        const char *e = getenv("TIDAL_CUDA_SYNC");
        mode = e && strcmp(e, "1") == 0;
    }
    return mode == 1;
}

tidal_status cuda_launch_check(cudaStream_t stream, const char *kernel)
{
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "cuda: %s: launch: %s", kernel, cudaGetErrorString(err));
    if (cuda_sync_mode()) {
        err = cudaStreamSynchronize(stream);
        if (err != cudaSuccess)
            return tidal_fail(TIDAL_ERR_UNAVAILABLE, "cuda: %s: execution (TIDAL_CUDA_SYNC=1): %s", kernel,
                              cudaGetErrorString(err));
    }
    return TIDAL_OK;
}

tidal_status cuda_device_count(int *out)
{
    *out = 0;
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cudaGetLastError(); /* clear the sticky-free error so later calls start clean */
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "cuda: no usable device: %s", cudaGetErrorString(err));
    }
    if (n == 0) return tidal_fail(TIDAL_ERR_UNAVAILABLE, "cuda: no usable device: none found");
    *out = n;
    return TIDAL_OK;
}

tidal_status cuda_device_name(char *buf, size_t n)
{
    if (n) buf[0] = '\0';
    int dev = 0;
    TRY(cuda_check(cudaGetDevice(&dev), "device name: cudaGetDevice"));
    cudaDeviceProp p;
    TRY(cuda_check(cudaGetDeviceProperties(&p, dev), "device name: cudaGetDeviceProperties"));
    if (n) snprintf(buf, n, "%s", p.name);
    return TIDAL_OK;
}

bool cuda_poison_mode(void)
{
#ifdef TIDAL_CUDA_POISON
    return true;
#else
    static int mode = -1; /* read once, as cuda_sync_mode */
    if (mode < 0) {
        const char *e = getenv("TIDAL_CUDA_POISON");
        mode = e && strcmp(e, "1") == 0;
    }
    return mode == 1;
#endif
}

tidal_status cuda_alloc(void **out, size_t bytes, const char *what)
{
    *out = NULL;
    if (bytes == 0) return TIDAL_OK;
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess)
        return tidal_fail(TIDAL_ERR_NOMEM, "cuda: allocate %s (%zu bytes): %s", what, bytes, cudaGetErrorString(err));
    if (cuda_poison_mode()) {
        /* all-ones bytes: a NaN as fp32 (0xffffffff) and as bf16 (0xffff), whatever the buffer holds; waited
         * for here, so no stream of the caller's can run ahead of it */
        err = cudaMemset(p, 0xff, bytes);
        if (err == cudaSuccess) err = cudaDeviceSynchronize();
        if (err != cudaSuccess) {
            cudaFree(p);
            return tidal_fail(TIDAL_ERR_UNAVAILABLE, "cuda: poison %s (%zu bytes): %s", what, bytes,
                              cudaGetErrorString(err));
        }
    }
    *out = p;
    return TIDAL_OK;
}

void cuda_free(void *p)
{
    if (p) cudaFree(p);
}

tidal_status cuda_upload(void *dst, const void *src, size_t bytes, cudaStream_t stream)
{
    if (bytes == 0) return TIDAL_OK;
    return cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), "upload");
}

tidal_status cuda_download(void *dst, const void *src, size_t bytes, cudaStream_t stream)
{
    if (bytes == 0) return TIDAL_OK;
    return cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream), "download");
}

/* Grid-stride fill; 256 threads a block, at most 1024 blocks. */
__global__ void fill_f32_kernel(float *p, float x, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = x;
}

tidal_status cuda_fill_f32(float *p, float x, size_t n, cudaStream_t stream)
{
    if (n == 0) return TIDAL_OK;
    fill_f32_kernel<<<grid_for(n, 256, 1024), 256, 0, stream>>>(p, x, n);
    return cuda_launch_check(stream, "fill_f32");
}
