/* step.h - one optimizer step of the trainer over a batch of complete groups.
 *
 * The path of a step (ALGORITHMS.md): group advantages from the samples'
 * rewards, the batch packed into micro-batches by token budget, per
 * micro-batch the live forward (lθ; with one update per batch the proximal
 * logprobs are these same values, recomputed under the weights the step
 * starts from), the loss and d loss / d lθ (trainer/loss.h, with step-wide
 * denominators), the model's backward; then gradient clipping and one AdamW
 * update - the version goes from v to v + 1.
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
#include "trainer/loss.h"
#include "trainer/optimizer.h"

typedef struct trainer_step_cfg {
    adv_kind advantage;
    loss_cfg loss;
    int micro_batch_tokens; /* token positions per forward/backward; a longer sample gets one of its own */
    float lr;
    double grad_clip;       /* <= 0: off */
} trainer_step_cfg;

typedef struct trainer_step_result {
    loss_result loss;       /* summed shares (loss) and token-weighted means (metrics) over micro-batches */
    double grad_norm;       /* before clipping */
    double reward_mean, reward_std;
    double entropy_mean;    /* over masked tokens */
    double staleness_mean;
    uint64_t staleness_max;
    int samples, micro_batches;
    int64_t positions;      /* token positions forwarded */
} trainer_step_result;

/* One step at trainer version `version` (the samples' staleness is measured
 * against it) on batch (read only). The model's gradients are zeroed first.
 * TIDAL_ERR_INVALID naming the sample for a malformed one (lengths that do not
 * match, tokens out of the vocabulary, temperatures that differ); nothing is
 * updated then. */
tidal_status trainer_step(model *m, adamw *opt, const buffer_batch *batch, uint64_t version,
                          const trainer_step_cfg *cfg, trainer_step_result *out);

#endif
