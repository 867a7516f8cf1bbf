/* step.h - one trainer step (version v -> v + 1) over a batch of complete groups.
 *
 * The path of a step (docs/training.md):
 *  1. rewards: the env's reward, plus DAPO's overlong shaping, minus
 *     kl_reward * Σ_t k1 with k1 = lbeh - lref (the reference model's forward);
 *  2. group advantages (adv_batch);
 *  3. the batch laid out once as packed sequences, split into `minibatches`
 *     optimizer updates (by whole groups), each packed into micro-batches by
 *     token budget;
 *  4. the proximal logprobs lprox (the weights the step starts from): with one
 *     update they are the live forward itself; with several, a recompute pass
 *     first - unless correction is bypass (lprox := lbeh) or proximal is
 *     loglinear (lprox = lbeh + alpha (lθ - lbeh), alpha = clamp((v - v_beh)
 *     / (v_θ - v_beh), 0, 1) per token from the token's behaviour version, v_θ
 *     = v + u / minibatches for update u, so no pass is needed);
 *  5. per update: for m2po a forward over the update and the selection
 *     (loss_m2po_select sees the whole update); per micro-batch the live
 *     forward (lθ), the loss and d loss / d lθ with the update's denominators,
 *     the backward; then gradient clipping and one AdamW update.
 * The weights' version moves by one per step, whatever `minibatches` is.
 *
 * A sample's sequence is prompt + completion; the model predicts token t+1
 * at position t, so completion token k is scored at position P - 1 + k, with
 * the trajectory's loss mask and behaviour logprob there (prompt positions
 * are masked out). All samples of a step must share one sampling temperature
 * (the logits are divided by it, as the worker's were).
 */
#ifndef TIDAL_TRAINER_STEP_H
#define TIDAL_TRAINER_STEP_H

#include "buffer/buffer.h"
#include "model/model.h"
#include "trainer/advantage.h"
#include "trainer/device.h"
#include "trainer/loss.h"
#include "trainer/optimizer.h"

typedef enum { PROX_RECOMPUTE = 0, PROX_LOGLINEAR } trainer_proximal;

typedef struct trainer_step_cfg {
    adv_kind advantage;
    loss_cfg loss;
    int micro_batch_tokens; /* token positions per forward/backward; a longer sample gets one of its own */
    float lr;
    double grad_clip;       /* <= 0: off */
    double grad_spike;      /* spike clipping (optimizer.h): at most this x the recent norms; <= 0: off */
    int minibatches;        /* optimizer updates per step (0 is 1; at most one per group) */
    trainer_proximal proximal;
    double kl_reward;       /* >= 0: beta of k1 = lbeh - lref subtracted from each sample's reward */
    model *ref;             /* the frozen reference model; required when kl_reward > 0 or loss.kl_beta > 0 */
    trainer_device *ref_device; /* where ref computes (a device over ref); NULL: on the CPU */
    double overlong_buffer; /* DAPO L_buf in tokens (0: off); the penalty reaches -overlong_factor at max_tokens */
    double overlong_factor;
    int max_tokens;         /* L_max, the completion budget */
} trainer_step_cfg;

typedef struct trainer_step_result {
    loss_result loss;       /* the loss: each update's summed micro-batch shares, averaged over updates;
                             * metrics: token-weighted means over every micro-batch */
    double grad_norm;       /* before clipping; the mean over the step's updates */
    int grad_spikes;        /* updates whose gradient the spike bound (not grad_clip) cut down */
    double reward_mean, reward_std; /* the env's rewards, before shaping */
    double overlong_mean;   /* mean overlong penalty added (<= 0) */
    double kl_reward_mean;  /* mean of kl_reward * Σ_t k1 subtracted from the rewards */
    double entropy_mean;    /* over masked tokens */
    double staleness_mean, staleness_min;
    uint64_t staleness_max;
    int samples, micro_batches, updates;
    int64_t positions;      /* token positions forwarded (live, recompute, selection and reference passes) */
} trainer_step_result;

/* One step at trainer version `version` (the samples' staleness is measured
 * against it) on batch (read only). The model's gradients are zeroed first.
 * TIDAL_ERR_INVALID naming the sample for a malformed one (lengths that do not
 * match, tokens out of the vocabulary, temperatures that differ); nothing is
 * updated then. */
tidal_status trainer_step(model *m, adamw *opt, const buffer_batch *batch, uint64_t version,
                          const trainer_step_cfg *cfg, trainer_step_result *out);

/* Versions behind the step's that a sample's tokens are scored at (0 .. this - 1). */
#define TRAINER_CHECK_VERSIONS 8

/* How far one sample's behaviour log-probabilities are from the trainer's,
 * by how many versions d = v - v_token its tokens are behind the step's
 * version v: over its loss-masked completion tokens, the sum of
 * k3 = exp(x) - 1 - x with x = l_trainer - l_beh (each term at most 1, so a
 * few tokens where the policy moved a lot do not outweigh the rest; a
 * non-finite x counts 1), and how many tokens that is. At d = 0 the trainer
 * holds the very weights that sampled the token, so an honest worker differs
 * only by arithmetic; at d > 0 honest staleness adds its own mismatch, which
 * the worker check (trainer/workercheck.h) compares across workers at the
 * same d. Tokens TRAINER_CHECK_VERSIONS or more behind are not scored. With
 * minibatches > 1 and no recompute pass (loglinear, bypass) only the first
 * update's samples are scored (the later ones run on newer weights). */
typedef struct trainer_sample_check {
    double k3_sum[TRAINER_CHECK_VERSIONS];
    int tokens[TRAINER_CHECK_VERSIONS];
} trainer_sample_check;

/* trainer_step, and checks[i] (caller-owned, one per sample of the batch in
 * batch order: groups in order, samples in order) filled as above. */
tidal_status trainer_step_checked(model *m, adamw *opt, const buffer_batch *batch, uint64_t version,
                                  const trainer_step_cfg *cfg, trainer_step_result *out, trainer_sample_check *checks);

/* trainer_step_checked on a device (trainer/device.h): its host model and
 * optimizer are the step's; on CUDA the forwards, backwards and updates run
 * there and the host model's weights are not updated (trainer_device_sync_params).
 * checks may be NULL. */
tidal_status trainer_step_on(trainer_device *dev, const buffer_batch *batch, uint64_t version,
                             const trainer_step_cfg *cfg, trainer_step_result *out, trainer_sample_check *checks);

#endif
