/* model_cuda.h - the decoder of model/model.c on a CUDA GPU: the same
 * forward and backward, step by step, on the kernels of kernels/cuda, and
 * the optimizer step (global-norm clipping + AdamW) on the device.
 *
 * Parameters live on the device in model/gpu_layout.h's flat layout (the
 * layout of model.c's buffers, so a model's model_params() uploads as is):
 * fp32 master weights, fp32 gradients, fp32 AdamW moments, and in bf16 mode a
 * bf16 copy of the weights that the kernels read (activations bf16 too); in
 * fp32 mode the kernels read the master weights. One stream, one cuBLASLt
 * handle per model. Batches come from the host (ids, targets, cu_seqlens),
 * as model_batch does; logprobs and entropies go back to the host.
 *
 * Compiled, never run on a GPU yet (docs/gpu.md); the trainer drives it
 * through trainer/device.h when trainer.device is cuda.
 */
#ifndef TIDAL_MODEL_MODEL_CUDA_H
#define TIDAL_MODEL_MODEL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "kernels/cuda/common.h"
#include "model/gpu_layout.h"

typedef struct model_cuda model_cuda;

/* A packed batch, host memory (model_batch's fields; checked by the caller
 * with model_batch_check; ids out of range are refused here too). */
typedef struct model_cuda_batch {
    int T, S;
    const int32_t *ids, *targets, *cu_seqlens;
    float inv_temp; /* 0 means 1 */
} model_cuda_batch;

/* A decoder of shape d with zeroed parameters, computing in dt. */
tidal_status model_cuda_create(const model_gpu_dims *d, cuda_dtype dt, model_cuda **out);
void model_cuda_free(model_cuda *m);
/* Parameters to the device (fp32 host [model_gpu_params(d)]; the bf16 copy
 * is made from them) and back; the gradients back. These wait for the stream. */
tidal_status model_cuda_set_params(model_cuda *m, const float *params);
tidal_status model_cuda_get_params(model_cuda *m, float *params);
tidal_status model_cuda_get_grads(model_cuda *m, float *grads);
tidal_status model_cuda_zero_grads(model_cuda *m);
/* AdamW's state to and from the host (checkpoints, resume): the two moments
 * (fp32 [model_gpu_params(d)] each) and the updates applied so far (the bias
 * correction's t). These wait for the stream. */
tidal_status model_cuda_get_moments(model_cuda *m, float *m1, float *m2, long *step);
tidal_status model_cuda_set_moments(model_cuda *m, const float *m1, const float *m2, long step);

/* model_forward on the GPU: logprob[T] and entropy[T] (host) for batch b;
 * keeps the activations for the backward. Waits for the stream. */
tidal_status model_cuda_forward(model_cuda *m, const model_cuda_batch *b, float *logprob, float *entropy);
/* model_backward: accumulates the gradient of sum_t dlogprob[t] logprob[t] +
 * dentropy[t] entropy[t] (host arrays; dentropy may be NULL) into the
 * gradients. b must be the last forward's batch. */
tidal_status model_cuda_backward(model_cuda *m, const model_cuda_batch *b, const float *dlogprob,
                                 const float *dentropy);

typedef struct model_cuda_adamw {
    float lr, beta1, beta2, eps, weight_decay;
    float max_norm; /* <= 0: no clipping */
} model_cuda_adamw;
/* One update: the gradients' global norm (returned in *norm, before
 * clipping), clip_grad_norm's factor, then AdamW on every parameter (every
 * element decays, as trainer/step.c does), the bf16 copy rewritten. */
tidal_status model_cuda_step(model_cuda *m, const model_cuda_adamw *a, double *norm);

#endif
