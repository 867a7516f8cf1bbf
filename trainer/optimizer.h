/* optimizer.h - AdamW, global-norm gradient clipping and learning-rate schedules.
 *
 * AdamW as in Loshchilov & Hutter and torch.optim.AdamW: decoupled weight decay
 * (p -= lr * wd * p, before the Adam update), bias-corrected moments. The
 * state (first and second moments) is two contiguous buffers the size of the
 * parameters. Which tensors decay is the caller's choice (segments).
 */
#ifndef TIDAL_TRAINER_OPTIMIZER_H
#define TIDAL_TRAINER_OPTIMIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct adamw_cfg {
    float beta1;               /* 0.9 */
    float beta2;               /* 0.999 */
    float eps;                 /* 1e-8 */
    float weight_decay;        /* 0.01; applied where decay_mask says so */
} adamw_cfg;

typedef struct adamw {
    adamw_cfg cfg;
    size_t n;
    long step;                 /* updates applied */
    float *m;                  /* [n] first moment */
    float *v;                  /* [n] second moment */
    double norm_mean;          /* running mean of the gradient norms applied (spike clipping) */
    long norms_seen;           /* updates that fed norm_mean */
} adamw;

/* Default configuration (torch's: 0.9, 0.999, 1e-8, 0.01). */
adamw_cfg adamw_defaults(void);
tidal_status adamw_create(size_t n, const adamw_cfg *cfg, adamw **out);
void adamw_free(adamw *o);

/* One update of params[n] from grads[n] at learning rate lr. decay_mask[n]
 * (NULL: every element decays) marks the elements that get weight decay. */
void adamw_step(adamw *o, float *params, const float *grads, const uint8_t *decay_mask, float lr);

/* Scale grads so that their global L2 norm is at most max_norm (<= 0: no
 * clipping). Returns the norm before clipping. */
double clip_grad_norm(float *grads, size_t n, double max_norm);

/* Spike clipping. AdamW's second moment follows the gradient scale of the
 * recent updates; once a policy has learned its task most updates are small,
 * and one gradient far above them becomes a full-size step of every parameter
 * (and, through the first moment, of the next ten). The bound for an update
 * is the lower of max_norm (<= 0: none) and `spike` times the running mean of
 * the norms applied so far (spike <= 0: off; not before GRAD_SPIKE_WARMUP
 * updates). <= 0 means no clipping. */
#define GRAD_SPIKE_WARMUP 10
#define GRAD_SPIKE_DECAY 0.9 /* the running mean's weight on the past: about 10 updates */
double grad_clip_bound(const adamw *o, double max_norm, double spike);

/* Record the norm an update applied (after clipping) in o's running mean. */
void grad_norm_observe(adamw *o, double applied);

typedef enum { LR_CONSTANT = 0, LR_COSINE } lr_kind;

typedef struct lr_schedule {
    lr_kind kind;
    float base;                /* peak learning rate */
    long warmup;               /* linear warmup steps from base/warmup to base */
    long total;                /* cosine: steps until min_ratio * base */
    float min_ratio;           /* cosine floor as a fraction of base */
} lr_schedule;

/* Learning rate for update number `step` (0-based). */
float lr_at(const lr_schedule *s, long step);

#endif
