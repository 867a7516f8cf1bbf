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
 * 0.01, eps 1e-5 so the update is continuous in the gradient - selfcheck.c)
 * -> the gradient norm and every parameter after it.
 *
 * The device computes in the precision the trainer will train in
 * (trainer.precision, trainer/device.h); the CPU always in fp32. The error of
 * a tensor is ||got - want|| / ||want|| (||got - want|| when want is all
 * zeros); NaN or infinity anywhere fails. The tolerance is per tensor and
 * depends on the precision (selfcheck_tolerance): fp32 1e-4 (CUDA.md's ~1e-5
 * for one op, compounded over the layers), bf16 3e-2 (CUDA.md's 1e-2 for one
 * op in bf16, compounded likewise; the whole-decoder bound of
 * tests/gpu/test_gpu_parity.c).
 *
 * Two more checks of a device, for tests/gpu/check.sh (`tidal debug
 * selfcheck --steps N`, `--rerun`): N AdamW steps of the tiny model on the
 * device tracking the CPU's loss step by step (selfcheck_track), and the
 * self-check's run twice on the device, equal bit for bit (selfcheck_rerun).
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

#define SELFCHECK_TOL 1e-4      /* fp32 */
#define SELFCHECK_TOL_BF16 3e-2 /* bf16 */
#define SELFCHECK_PLANT_ENV "TIDAL_SELFCHECK_PLANT"
/* AdamW's eps in the self-check, not the trainer's 1e-8: the first update is
 * lr g / (|g| + eps), sign(g) for |g| >> eps, so with 1e-8 a gradient error
 * of 1e-5 (fp32 arithmetic) flips near-zero elements and leaves a
 * 128-element bias 4.9e-4 off after the update - a correct GPU refused
 * (measured on the CPU with noise of 1e-5 x each tensor's RMS injected into
 * the gradients). With 1e-5 the update is continuous in g and its error stays
 * below the gradient's (7.6e-6 for 1e-5, 7.2e-3 for bf16-like 1e-2 noise):
 * test_selfcheck keeps it so. */
#define SELFCHECK_ADAMW_EPS 1e-5f

/* What one device computed for the tiny model. */
typedef struct selfcheck_result {
    trainer_device_kind kind;
    trainer_precision prec;
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

/* The per-tensor tolerance of a device computing in precision p: 1e-4 for
 * fp32, 3e-2 for bf16 (above). */
double selfcheck_tolerance(trainer_precision p);

/* Run the tiny model's forward, backward and one update on device kind in
 * precision prec into *out (freed with selfcheck_result_free, also after a
 * failure). bf16 on the CPU is refused (trainer_device_create_in). */
tidal_status selfcheck_run(trainer_device_kind kind, trainer_precision prec, selfcheck_result *out);
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

/* The whole check for device kind in precision prec: the CPU's results,
 * kind's results (with TIDAL_SELFCHECK_PLANT applied to them), the
 * comparison within selfcheck_tolerance(prec); one log line with the worst
 * errors. A device that cannot be opened fails as it fails to open
 * ("trainer self-check (cuda): trainer device cuda: cuda: no usable device: ...").
 * Messages name the device, and the precision when it is bf16
 * ("trainer self-check (cuda, bf16): ..."). *errs may be NULL. */
tidal_status trainer_selfcheck(trainer_device_kind kind, trainer_precision prec, selfcheck_errors *errs);

/* ---- the loss over several steps, and the rerun ---- */

#define SELFCHECK_TRACK_MAX 64

/* What selfcheck_track measured: loss[i] is the tiny batch's mean token NLL
 * (temperature 0.7) before update i, loss[steps] after the last one. */
typedef struct selfcheck_track_result {
    int steps;
    double dev_loss[SELFCHECK_TRACK_MAX + 1], cpu_loss[SELFCHECK_TRACK_MAX + 1];
    double worst; /* the worst |dev - cpu| / |cpu| over the steps */
} selfcheck_track_result;

/* Compare the two loss curves of r within tol: TIDAL_OK, or
 * TIDAL_ERR_UNAVAILABLE naming the first step over it ("... step 3: loss
 * 6.91 against the CPU's 6.89: error 2.9e-03 > 1e-04"), or a CPU curve that
 * did not fall (the steps trained nothing: the check would be empty).
 * r->worst is set. dev names the device in messages. */
tidal_status selfcheck_track_compare(selfcheck_track_result *r, const char *dev, double tol);

/* steps (1 .. SELFCHECK_TRACK_MAX) AdamW steps (clipping to 0.5, lr 1e-3,
 * weight decay 0.01) of the tiny model on the same batch, minimising its mean
 * token NLL, on device kind in precision prec and on the CPU from the same
 * weights; the losses compared with selfcheck_track_compare within
 * selfcheck_tolerance(prec). *out (may be NULL) receives both curves. */
tidal_status selfcheck_track(trainer_device_kind kind, trainer_precision prec, int steps, selfcheck_track_result *out);

/* Whether two results of one device are equal bit for bit: TIDAL_OK, or
 * TIDAL_ERR_UNAVAILABLE naming the first tensor that differs and how many
 * of its elements do. */
tidal_status selfcheck_same_bits(const selfcheck_result *a, const selfcheck_result *b);

/* The self-check's run (forward, backward, one update) twice on device kind
 * in precision prec, each on a fresh device, compared with
 * selfcheck_same_bits: a deterministic device gives the same bits. */
tidal_status selfcheck_rerun(trainer_device_kind kind, trainer_precision prec);

#endif
