/* common.h - the CUDA path's plumbing: errors as tidal_status, the launch
 * check every kernel wrapper ends with, device memory, element types.
 *
 * C and C++ (nvcc) both include it. Every CUDA runtime call's result becomes
 * a tidal_status whose message names the call's purpose and CUDA's error
 * string ("cuda: rmsnorm_forward: launch: invalid configuration argument").
 * With TIDAL_CUDA_SYNC=1 in the environment, every launch check also waits
 * for the stream and checks again, so an asynchronous fault (an illegal
 * address) is reported at the kernel that caused it, not at a later copy.
 */
#ifndef TIDAL_KERNELS_CUDA_COMMON_H
#define TIDAL_KERNELS_CUDA_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* base/status.h is plain C without linkage guards: its functions (tidal_fail)
 * are C functions for the .cu files too. */
#include "base/status.h"

/* The element type of activations and weights a kernel reads and writes.
 * Statistics (rstd, lse), master weights, gradients of parameters and
 * optimizer state are always fp32; reductions are always in fp32 or wider. */
typedef enum cuda_dtype {
    CUDA_F32 = 0,
    CUDA_BF16 = 1,
} cuda_dtype;

/* Bytes of one element of dt. */
size_t cuda_dtype_size(cuda_dtype dt);
/* "f32" / "bf16". */
const char *cuda_dtype_name(cuda_dtype dt);

/* TIDAL_OK when err is cudaSuccess, else TIDAL_ERR_UNAVAILABLE with
 * "cuda: WHAT: CUDA's error string". */
tidal_status cuda_check(cudaError_t err, const char *what);

/* After a kernel launch: cudaGetLastError, and with TIDAL_CUDA_SYNC=1 a
 * cudaStreamSynchronize(stream) and a second check. kernel names the launch. */
tidal_status cuda_launch_check(cudaStream_t stream, const char *kernel);

/* Whether TIDAL_CUDA_SYNC=1 is set (read once). */
bool cuda_sync_mode(void);

/* The number of CUDA devices, or a failure saying why there are none usable
 * (no driver, driver older than the runtime, no device). */
tidal_status cuda_device_count(int *out);

/* The current device's name (cudaGetDeviceProperties: "NVIDIA H100 80GB
 * HBM3"), into buf[n]. */
tidal_status cuda_device_name(char *buf, size_t n);

/* Whether cuda_alloc poisons what it allocates with NaN: always in a Debug
 * build (CMAKE_BUILD_TYPE=Debug defines TIDAL_CUDA_POISON), else when
 * TIDAL_CUDA_POISON=1 is in the environment (read once). A kernel that reads
 * scratch it never wrote then yields NaN, which every check refuses. */
bool cuda_poison_mode(void);

/* *out = bytes of device memory (NULL first; NULL for bytes == 0); what names
 * the buffer in the message when the allocation fails. In poison mode
 * (cuda_poison_mode) every byte is 0xff - NaN as fp32 and bf16 - before it
 * returns (synchronously: allocation time only). */
tidal_status cuda_alloc(void **out, size_t bytes, const char *what);
/* Releases p (a no-op on NULL). */
void cuda_free(void *p);
/* Asynchronous copies on stream (the host buffer must stay valid until the
 * stream reaches them; pinned memory makes them truly asynchronous). */
tidal_status cuda_upload(void *dst, const void *src, size_t bytes, cudaStream_t stream);
tidal_status cuda_download(void *dst, const void *src, size_t bytes, cudaStream_t stream);
/* n floats of value x at p (on stream): NaN poisoning of scratch, zeroing. */
tidal_status cuda_fill_f32(float *p, float x, size_t n, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
