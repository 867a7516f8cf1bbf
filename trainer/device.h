/* device.h - where the trainer's model computes: the CPU (model/model.c and
 * trainer/optimizer.c) or a CUDA GPU (model/model_cuda), behind the few
 * operations a trainer step needs.
 *
 * trainer/step.c drives a trainer_device and nothing else: forward (per-token
 * logprobs and entropies to the host), backward (d loss / d logprob from the
 * host), zeroing the gradients, and the update (the gradients' global norm,
 * clipping to a bound the step chose - grad_clip and spike clipping stay on
 * the host, in trainer/optimizer.c - and one AdamW update). The loss, the
 * advantages and every per-token array stay on the host, the same code for
 * both devices.
 *
 * A device is made over a host model and its optimizer, which it borrows. On
 * the CPU they are the computation itself. On CUDA the device holds its own
 * fp32 master weights, gradients and AdamW moments (computing in fp32 - the
 * CPU path's arithmetic, TF32 off - or bf16, below) and the host copies fall
 * behind until synced:
 * trainer_device_sync_params before the weights are published or saved,
 * trainer_device_sync_optimizer before a checkpoint. The host adamw keeps the
 * update count and the spike-clipping statistics on both devices.
 *
 * trainer.device is auto | cpu | cuda (docs/configuration.md): auto is cuda
 * when this build has the CUDA path and a device answers, else cpu.
 * trainer.precision is auto | bf16 | fp32: on CUDA, bf16 keeps a bf16 copy of
 * the weights that the kernels read and bf16 activations, with fp32 master
 * weights, gradients, AdamW moments, norm statistics and log-softmax; fp32
 * is the CPU path's arithmetic (TF32 off), for parity. The CPU computes in
 * fp32 only. auto is bf16 on cuda, fp32 on the CPU.
 */
#ifndef TIDAL_TRAINER_DEVICE_H
#define TIDAL_TRAINER_DEVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/status.h"
#include "model/model.h"
#include "trainer/optimizer.h"

typedef enum { TRAINER_DEVICE_CPU = 0, TRAINER_DEVICE_CUDA } trainer_device_kind;

typedef struct trainer_device trainer_device;

typedef enum { TRAINER_PRECISION_FP32 = 0, TRAINER_PRECISION_BF16 } trainer_precision;

/* The dense bf16 peak of a GPU, in FLOP/s, by its CUDA device name
 * (cudaDeviceProp.name), for MFU: A100 312e12; H100 SXM 989e12, PCIe 756e12,
 * NVL 835e12; H200 989e12, H200 NVL 835e12 (NVIDIA's data sheets, without
 * sparsity). 0 for a card not in the table. */
double trainer_device_peak_bf16_flops(const char *name);

/* "cpu" / "cuda". */
const char *trainer_device_kind_name(trainer_device_kind k);

/* Whether this build has the CUDA path (TIDAL_HAVE_CUDA). */
bool trainer_device_cuda_built(void);

/* Whether a CUDA device is usable now: TIDAL_OK, or TIDAL_ERR_UNAVAILABLE
 * saying why not (a build without CUDA, no driver, no device). */
tidal_status trainer_device_cuda_available(void);

/* trainer.device's value (auto | cpu | cuda) to the device it means here:
 * auto is cuda when trainer_device_cuda_available, else cpu; cuda when CUDA
 * is not available is TIDAL_ERR_UNAVAILABLE naming the key and the reason.
 * why[n] (may be NULL) receives one line for the log: what was chosen and why. */
tidal_status trainer_device_resolve(const char *name, trainer_device_kind *out, char *why, size_t n);

/* "fp32" / "bf16". */
const char *trainer_precision_name(trainer_precision p);

/* trainer.precision's value (auto | bf16 | fp32; NULL means auto) for a
 * trainer on device k: auto is bf16 on cuda and fp32 on the CPU; bf16 on the
 * CPU is TIDAL_ERR_UNAVAILABLE naming the key (the CPU computes in fp32
 * only); another value is TIDAL_ERR_INVALID. why[n] (may be NULL) receives
 * one line for the log. */
tidal_status trainer_precision_resolve(const char *name, trainer_device_kind k, trainer_precision *out, char *why,
                                       size_t n);

/* A device of kind k over host model m and optimizer opt (borrowed, both
 * must outlive the device; opt may be NULL for a forward-only device such as
 * the reference model's). CUDA: the device's weights and AdamW state are
 * uploaded from m and opt. */
tidal_status trainer_device_create(trainer_device_kind k, model *m, adamw *opt, trainer_device **out);
/* trainer_device_create computing in precision p (trainer_device_create is
 * fp32): bf16 on the CPU is refused (TIDAL_ERR_UNAVAILABLE). */
tidal_status trainer_device_create_in(trainer_device_kind k, trainer_precision p, model *m, adamw *opt,
                                      trainer_device **out);
void trainer_device_free(trainer_device *d);

trainer_device_kind trainer_device_kind_of(const trainer_device *d);
trainer_precision trainer_device_precision_of(const trainer_device *d);
/* The host model (its configuration, tensor table and - once synced - weights). */
model *trainer_device_model(const trainer_device *d);
/* The host optimizer (NULL for a forward-only device). */
adamw *trainer_device_optimizer(const trainer_device *d);

/* model_forward on the device: logprob[T] and entropy[T] on the host. The
 * batch is checked first (model_batch_check). */
tidal_status trainer_device_forward(trainer_device *d, const model_batch *b, float *logprob, float *entropy);
/* model_backward of the last forward (b must be its batch): accumulates into
 * the device's gradients. dentropy may be NULL. */
tidal_status trainer_device_backward(trainer_device *d, const model_batch *b, const float *dlogprob,
                                     const float *dentropy);
tidal_status trainer_device_zero_grads(trainer_device *d);

/* One optimizer update: the gradients' global L2 norm (*norm, before
 * clipping), the gradients scaled to at most `bound` (<= 0: no clipping;
 * clip_grad_norm's factor), then AdamW at learning rate lr with the host
 * optimizer's betas, eps and weight decay (every element decays, as
 * trainer/step.c always did); the host optimizer's update count advances. */
tidal_status trainer_device_update(trainer_device *d, double bound, float lr, double *norm);

/* The device's weights into the host model's parameters (no-op on the CPU). */
tidal_status trainer_device_sync_params(trainer_device *d);
/* The device's gradients into the host model's gradients (no-op on the CPU). */
tidal_status trainer_device_sync_grads(trainer_device *d);
/* The device's AdamW moments into the host optimizer's (no-op on the CPU). */
tidal_status trainer_device_sync_optimizer(trainer_device *d);

#endif
