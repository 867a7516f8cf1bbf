/* device.c - the trainer's model on the CPU or on a CUDA GPU (see device.h).
 *
 * One switch per operation, not a table of function pointers: two devices,
 * and the CPU branch is the code trainer/step.c ran before there was a
 * choice (model_forward, model_backward, clip_grad_norm, adamw_step), so the
 * CPU path's arithmetic and bits are unchanged.
 */
#include "trainer/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/device.h"

#ifdef TIDAL_HAVE_CUDA
#include "kernels/cuda/common.h"
#include "model/gpu_layout.h"
#include "model/model_cuda.h"
#endif

struct trainer_device {
    trainer_device_kind kind;
    trainer_precision prec;
    model *m;
    adamw *opt;
#ifdef TIDAL_HAVE_CUDA
    model_cuda *mc;
#endif
};

double trainer_device_peak_bf16_flops(const char *name)
{
    /* the first match wins: the variants before the family */
    static const struct {
        const char *part;
        double flops;
    } peaks[] = {{"H200 NVL", 835e12}, {"H200", 989e12}, {"H100 NVL", 835e12}, {"H100 PCIe", 756e12},
                 {"H100", 989e12},     {"A100", 312e12}};
    if (!name) return 0.0;
    for (size_t i = 0; i < sizeof peaks / sizeof peaks[0]; i++)
        if (strstr(name, peaks[i].part)) return peaks[i].flops;
    return 0.0;
}

const char *trainer_device_kind_name(trainer_device_kind k) { return k == TRAINER_DEVICE_CUDA ? "cuda" : "cpu"; }

bool trainer_device_cuda_built(void) { return device_cuda_built(); }

tidal_status trainer_device_cuda_available(void) { return device_cuda_available(); }

tidal_status trainer_device_resolve(const char *name, trainer_device_kind *out, char *why, size_t n)
{
    bool cuda = false;
    *out = TRAINER_DEVICE_CPU;
    TRY(device_resolve("trainer.device", name, "the CPU", "CUDA", &cuda, why, n));
    if (cuda) *out = TRAINER_DEVICE_CUDA;
    return TIDAL_OK;
}

const char *trainer_precision_name(trainer_precision p) { return p == TRAINER_PRECISION_BF16 ? "bf16" : "fp32"; }

tidal_status trainer_precision_resolve(const char *name, trainer_device_kind k, trainer_precision *out, char *why,
                                       size_t n)
{
    *out = TRAINER_PRECISION_FP32;
    if (why && n) why[0] = '\0';
    const bool is_auto = !name || !strcmp(name, "auto");
    if (!is_auto && strcmp(name, "bf16") != 0 && strcmp(name, "fp32") != 0)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer.precision: '%s' is not one of auto, bf16, fp32", name);
    if (k == TRAINER_DEVICE_CPU) {
        if (!is_auto && !strcmp(name, "bf16"))
            return tidal_fail(TIDAL_ERR_UNAVAILABLE, "trainer.precision bf16: the CPU trainer computes in fp32 only "
                              "(bf16 needs trainer.device cuda)");
        if (why && n) snprintf(why, n, "trainer.precision %s: fp32 (the CPU)", is_auto ? "auto" : name);
        return TIDAL_OK;
    }
    *out = is_auto || !strcmp(name, "bf16") ? TRAINER_PRECISION_BF16 : TRAINER_PRECISION_FP32;
    if (why && n)
        snprintf(why, n, "trainer.precision %s: %s on cuda%s", is_auto ? "auto" : name, trainer_precision_name(*out),
                 *out == TRAINER_PRECISION_BF16 ? " (bf16 weights copy and activations, fp32 master weights, "
                                                  "moments, statistics and log-softmax)"
                                                : " (TF32 off: the CPU's arithmetic)");
    return TIDAL_OK;
}

#ifdef TIDAL_HAVE_CUDA
/* The CUDA device's weights and AdamW state from the host model and optimizer. */
static tidal_status cuda_open(trainer_device *d)
{
    const model_gpu_dims dims = model_gpu_dims_of(model_cfg(d->m));
    size_t n = 0;
    const float *params = model_params(d->m, &n);
    if (n != model_gpu_params(&dims))
        return tidal_fail(TIDAL_ERR_INVALID, "trainer device cuda: the model has %zu parameters, the GPU layout %zu", n,
                          model_gpu_params(&dims));
    TRY(model_cuda_create(&dims, d->prec == TRAINER_PRECISION_BF16 ? CUDA_BF16 : CUDA_F32, &d->mc));
    TRY(model_cuda_set_params(d->mc, params));
    if (d->opt) {
        if (d->opt->n != n)
            return tidal_fail(TIDAL_ERR_INVALID, "trainer device cuda: the optimizer holds %zu parameters, the model %zu",
                              d->opt->n, n);
        TRY(model_cuda_set_moments(d->mc, d->opt->m, d->opt->v, d->opt->step));
    }
    return TIDAL_OK;
}

static model_cuda_batch cuda_batch(const model_batch *b)
{
    return (model_cuda_batch){.T = b->T, .S = b->S, .ids = b->ids, .targets = b->targets, .cu_seqlens = b->cu_seqlens,
                              .inv_temp = b->inv_temp};
}
#endif

tidal_status trainer_device_create(trainer_device_kind k, model *m, adamw *opt, trainer_device **out)
{
    return trainer_device_create_in(k, TRAINER_PRECISION_FP32, m, opt, out);
}

tidal_status trainer_device_create_in(trainer_device_kind k, trainer_precision p, model *m, adamw *opt,
                                      trainer_device **out)
{
    *out = NULL;
    if (k == TRAINER_DEVICE_CPU && p != TRAINER_PRECISION_FP32)
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "trainer device cpu: precision %s: the CPU computes in fp32 only",
                          trainer_precision_name(p));
    trainer_device *d = calloc(1, sizeof *d);
    if (!d) return tidal_fail(TIDAL_ERR_NOMEM, "trainer device: out of memory");
    *d = (trainer_device){.kind = k, .prec = p, .m = m, .opt = opt};
    if (k == TRAINER_DEVICE_CUDA) {
#ifdef TIDAL_HAVE_CUDA
        tidal_status st = trainer_device_cuda_available();
        if (st == TIDAL_OK) st = cuda_open(d);
        if (st != TIDAL_OK) {
            trainer_device_free(d);
            return tidal_wrap(st, "trainer device cuda");
        }
#else
        free(d);
        return tidal_wrap(trainer_device_cuda_available(), "trainer device cuda");
#endif
    }
    *out = d;
    return TIDAL_OK;
}

void trainer_device_free(trainer_device *d)
{
    if (!d) return;
#ifdef TIDAL_HAVE_CUDA
    model_cuda_free(d->mc);
#endif
    free(d);
}

trainer_device_kind trainer_device_kind_of(const trainer_device *d) { return d->kind; }

trainer_precision trainer_device_precision_of(const trainer_device *d) { return d->prec; }

model *trainer_device_model(const trainer_device *d) { return d->m; }

adamw *trainer_device_optimizer(const trainer_device *d) { return d->opt; }

tidal_status trainer_device_forward(trainer_device *d, const model_batch *b, float *logprob, float *entropy)
{
#ifdef TIDAL_HAVE_CUDA
    if (d->kind == TRAINER_DEVICE_CUDA) {
        TRY(model_batch_check(d->m, b));
        const model_cuda_batch cb = cuda_batch(b);
        return model_cuda_forward(d->mc, &cb, logprob, entropy);
    }
#endif
    return model_forward(d->m, b, logprob, entropy, NULL);
}

tidal_status trainer_device_backward(trainer_device *d, const model_batch *b, const float *dlogprob,
                                     const float *dentropy)
{
#ifdef TIDAL_HAVE_CUDA
    if (d->kind == TRAINER_DEVICE_CUDA) {
        const model_cuda_batch cb = cuda_batch(b);
        return model_cuda_backward(d->mc, &cb, dlogprob, dentropy);
    }
#endif
    return model_backward(d->m, b, dlogprob, dentropy);
}

tidal_status trainer_device_zero_grads(trainer_device *d)
{
#ifdef TIDAL_HAVE_CUDA
    if (d->kind == TRAINER_DEVICE_CUDA) return model_cuda_zero_grads(d->mc);
#endif
    model_zero_grads(d->m);
    return TIDAL_OK;
}

tidal_status trainer_device_update(trainer_device *d, double bound, float lr, double *norm)
{
    *norm = 0.0;
    if (!d->opt) return tidal_fail(TIDAL_ERR_INVALID, "trainer device %s: an update without an optimizer",
                                   trainer_device_kind_name(d->kind));
#ifdef TIDAL_HAVE_CUDA
    if (d->kind == TRAINER_DEVICE_CUDA) {
        const adamw_cfg *c = &d->opt->cfg;
        const model_cuda_adamw a = {.lr = lr, .beta1 = c->beta1, .beta2 = c->beta2, .eps = c->eps,
                                    .weight_decay = c->weight_decay, .max_norm = (float)bound};
        TRY(model_cuda_step(d->mc, &a, norm));
        d->opt->step++; /* the device counts its own; the host's is the one checkpoints save */
        return TIDAL_OK;
    }
#endif
    size_t np = 0;
    float *params = model_params(d->m, &np);
    float *grads = model_grads(d->m, &np);
    *norm = clip_grad_norm(grads, np, bound);
    adamw_step(d->opt, params, grads, NULL, lr);
    return TIDAL_OK;
}

tidal_status trainer_device_sync_params(trainer_device *d)
{
#ifdef TIDAL_HAVE_CUDA
    if (d->kind == TRAINER_DEVICE_CUDA) return model_cuda_get_params(d->mc, model_params(d->m, NULL));
#endif
    (void)d;
    return TIDAL_OK;
}

tidal_status trainer_device_sync_grads(trainer_device *d)
{
#ifdef TIDAL_HAVE_CUDA
    if (d->kind == TRAINER_DEVICE_CUDA) return model_cuda_get_grads(d->mc, model_grads(d->m, NULL));
#endif
    (void)d;
    return TIDAL_OK;
}

tidal_status trainer_device_sync_optimizer(trainer_device *d)
{
#ifdef TIDAL_HAVE_CUDA
    if (d->kind == TRAINER_DEVICE_CUDA && d->opt) {
        long step = 0;
        TRY(model_cuda_get_moments(d->mc, d->opt->m, d->opt->v, &step));
        if (step != d->opt->step)
            return tidal_fail(TIDAL_ERR_CORRUPT, "trainer device cuda: the device applied %ld updates, the host counted %ld",
                              step, d->opt->step);
        return TIDAL_OK;
    }
#endif
    (void)d;
    return TIDAL_OK;
}
