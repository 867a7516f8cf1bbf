/* device.h - where a role computes: the spec's "auto", "cpu" or "cuda"
 * (trainer.device, rollout.device) resolved against what this build and this
 * machine have. One rule for the trainer and the rollout engine, so both say
 * the same thing about the same machine. */
#ifndef TIDAL_KERNELS_DEVICE_H
#define TIDAL_KERNELS_DEVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/status.h"

/* true when this build has the CUDA path (nvcc was found, TIDAL_CUDA not OFF). */
bool device_cuda_built(void);

/* TIDAL_OK when a CUDA device answers; otherwise the reason (no CUDA path in
 * this build, no driver, no device), as the error message. */
tidal_status device_cuda_available(void);

/* Resolve `name` (NULL or "cpu", "auto", "cuda") given for spec key `key`:
 * *use_cuda is true for "cuda", and for "auto" when device_cuda_available.
 * "cuda" without a device fails TIDAL_ERR_UNAVAILABLE naming the key and the
 * reason; another name fails TIDAL_ERR_INVALID naming the key. `why` (n
 * bytes, may be NULL) gets one line for the log: "KEY NAME: ON_CPU" or
 * "KEY NAME: ON_CUDA", and for auto without a device the reason. */
tidal_status device_resolve(const char *key, const char *name, const char *on_cpu, const char *on_cuda,
                            bool *use_cuda, char *why, size_t n);

#endif
