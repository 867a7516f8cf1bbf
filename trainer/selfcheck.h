/* selfcheck.h - the trainer's start-up check of its device: a tiny model's
 * forward, backward and one AdamW update on the device and on the CPU,
 * compared tensor by tensor; a device that disagrees is refused before it
 * trains anything.
 *
 * The tiny model is CUDA.md's (Qwen2-shaped, 2 layers, hidden 128, 4 query
 * and 2 KV heads of 64, vocabulary 1003, tied embeddings, QKV biases, random
 * weights and biases) over a packed batch of sequences of 1, 17 and 70
 * tokens at temperature 0.7. Both devices run the same code path
 * (trainer/device.h) from the same weights: forward -> logprobs and
 * entropies, backward of sum_t w_t logprob_t -> every parameter's gradient,
 * one update (global-norm clipping to 0.5, AdamW at lr 1e-3, weight decay
 * 0.01) -> the gradient norm and every parameter after it.
 *
 * The error of a tensor is ||got - want|| / ||want|| (||got - want|| when
 * want is all zeros); NaN or infinity anywhere fails. The tolerance is
 * CUDA.md's for the whole decoder in fp32 (1e-4: one op is ~1e-5, the layers
 * compound it), the trainer's CUDA arithmetic.
 *
 * Test hook: TIDAL_SELFCHECK_PLANT=STAGE:NAME in the environment perturbs
 * one tensor of the device's results before the comparison (STAGE forward
 * with NAME logprob or entropy; backward or adamw with a parameter's Hugging
 * Face name; adamw:grad_norm), so the refusal can be seen without a faulty
 * device - `tidal debug selfcheck --device cpu` compares the CPU with itself.
 */
#ifndef TIDAL_TRAINER_SELFCHECK_H
#define TIDAL_TRAINER_SELFCHECK_H

#include <stddef.h>

#include "base/status.h"
#include "model/model.h"
#include "trainer/device.h"

#define SELFCHECK_TOL 1e-4
#define SELFCHECK_PLANT_ENV "TIDAL_SELFCHECK_PLANT"

/* What one device computed for the tiny model. */
typedef struct selfcheck_result {
    trainer_device_kind kind;
    model *m;          /* the host model: the tensor table; its parameters after the update */
    int T;
    float *logprob;    /* [T] */
    float *entropy;    /* [T] */
    float *grads;      /* [n] after the backward, before clipping */
    size_t n;
    double grad_norm;  /* the update's norm, before clipping */
} selfcheck_result;

/* The tiny model's configuration. */
model_config selfcheck_model_config(void);

/* Run the tiny model's forward, backward and one update on device kind into
 * *out (freed with selfcheck_result_free, also after a failure). */
tidal_status selfcheck_run(trainer_device_kind kind, selfcheck_result *out);
void selfcheck_result_free(selfcheck_result *r);

/* Perturb one tensor of r (the test hook): what is STAGE:NAME as above.
 * TIDAL_ERR_INVALID naming what for one that names nothing. */
tidal_status selfcheck_plant(selfcheck_result *r, const char *what);

/* Worst error per stage of a comparison. */
typedef struct selfcheck_errors {
    double forward, backward, adamw;
} selfcheck_errors;

/* Compare got (the device's) with want (the CPU's) within tol: TIDAL_OK, or
 * TIDAL_ERR_UNAVAILABLE naming the first tensor over it - stage and op,
 * "trainer self-check (cuda): backward: gradient of
 * model.layers.1.mlp.down_proj.weight: error 3.1e-02 > 1e-04". *errs (may be
 * NULL) receives the worst error of each stage compared. */
tidal_status selfcheck_compare(const selfcheck_result *got, const selfcheck_result *want, double tol,
                               selfcheck_errors *errs);

/* The whole check for device kind: the CPU's results, kind's results (with
 * TIDAL_SELFCHECK_PLANT applied to them), the comparison; one log line with
 * the worst errors. A device that cannot be opened fails as it fails to open
 * ("trainer self-check (cuda): trainer device cuda: cuda: no usable device: ...").
 * *errs may be NULL. */
tidal_status trainer_selfcheck(trainer_device_kind kind, selfcheck_errors *errs);

#endif
