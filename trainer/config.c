/* config.c - the trainer's configuration built from a job spec (config.h).
 *
 * It lives in trainer/ rather than job/ because what it builds - the step's,
 * the loss's and the optimizer's types - belongs to trainer/, a floor above
 * job/ (docs/architecture.md, "Decisions").
 */
#include "trainer/config.h"

#include <string.h>

/* The loss of kind `kind`: its defaults for that kind, then the spec's choices
 * and overrides (-1 and "auto" keep the default). Not validated here. */
static tidal_status loss_cfg_from_spec(const job_spec *s, loss_kind kind, loss_cfg *c)
{
    *c = loss_cfg_defaults_for(kind);
    TRY(loss_correction_parse(s->trainer.correction, &c->correction));
    if (strcmp(s->trainer.loss_agg, "auto")) TRY(loss_agg_parse(s->trainer.loss_agg, &c->agg));
    TRY(loss_m2po_set_parse(s->trainer.m2po_candidates, &c->m2po_set));
    TRY(loss_stale_parse(s->trainer.stale_weight, &c->stale));
    if (s->trainer.eps_lo >= 0) c->eps_lo = s->trainer.eps_lo;
    if (s->trainer.eps_hi >= 0) c->eps_hi = s->trainer.eps_hi;
    c->dual_clip = s->trainer.dual_clip > 1, c->dual_clip_c = c->dual_clip ? s->trainer.dual_clip : 3.0;
    c->tis_c = s->trainer.tis_c, c->mis_lo = s->trainer.mis_lo, c->mis_hi = s->trainer.mis_hi;
    c->m2po_tau = s->trainer.m2po_tau;
    c->sum_norm = s->trainer.loss_agg_norm > 0 ? s->trainer.loss_agg_norm : (double)s->rollout.max_tokens;
    c->kl_beta = s->trainer.kl;
    c->stale_a = s->trainer.stale_a, c->stale_b = s->trainer.stale_b;
    return TIDAL_OK;
}

tidal_status trainer_step_cfg_from_spec(const job_spec *s, trainer_step_cfg *cfg, lr_schedule *lr)
{
    const trainer_step_cfg z = {0};
    *cfg = z;
    loss_kind kind = LOSS_PPO; /* first: a spec wrong in both the loss and the advantage names the loss */
    TRY(loss_kind_parse(s->trainer.loss, &kind));
    TRY(adv_kind_parse(s->trainer.advantage, &cfg->advantage));
    TRY(loss_cfg_from_spec(s, kind, &cfg->loss));
    cfg->micro_batch_tokens = s->trainer.micro_batch_tokens;
    cfg->grad_clip = s->trainer.grad_clip;
    cfg->grad_spike = s->trainer.grad_spike;
    cfg->minibatches = s->trainer.minibatches;
    cfg->proximal = !strcmp(s->trainer.proximal, "loglinear") ? PROX_LOGLINEAR : PROX_RECOMPUTE;
    cfg->kl_reward = s->trainer.kl_reward;
    cfg->overlong_buffer = s->trainer.overlong_buffer, cfg->overlong_factor = s->trainer.overlong_factor;
    cfg->max_tokens = s->rollout.max_tokens;
    *lr = (lr_schedule){.kind = !strcmp(s->trainer.lr_schedule, "cosine") ? LR_COSINE : LR_CONSTANT,
                        .base = (float)s->trainer.lr, .warmup = s->trainer.warmup_steps, .total = s->trainer.steps,
                        .min_ratio = (float)s->trainer.lr_min_ratio};
    TRY_WRAP(loss_cfg_validate(&cfg->loss), "trainer: the spec's loss settings");
    return TIDAL_OK;
}

adamw_cfg trainer_adamw_cfg_from_spec(const job_spec *s)
{
    adamw_cfg ac = adamw_defaults();
    ac.beta1 = (float)s->trainer.beta1, ac.beta2 = (float)s->trainer.beta2;
    ac.weight_decay = (float)s->trainer.weight_decay;
    return ac;
}
