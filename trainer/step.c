/* step.c - one trainer step (see step.h for the contract).
 *
 * The batch is laid out once: every sample's prompt + completion as one
 * packed sequence, all samples back to back, with per-position arrays (ids,
 * targets, loss mask, behaviour / proximal / live / reference logprobs,
 * gradient, M2PO's selection, behaviour version). A micro-batch is then a
 * contiguous range of samples and of positions, and each pass (reference,
 * recompute, selection, live) reads and writes its own slice.
 *
 * trainer_step is the stages of step.h in order, one call each, over a
 * `step` that holds the batch's layout, plan and running sums; everything it
 * allocates is released on one path (step_free).
 */
#include "trainer/step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/codec.h"

typedef struct sample_ref {
    const Tidal__V1__Trajectory *t;
    double reward;     /* shaped */
    double adv;
    double staleness;
    int pos;           /* first position in the layout */
    int positions;     /* P + C - 1 */
} sample_ref;

typedef struct micro {
    int first, n;      /* samples [first, first + n) */
    int pos, T;        /* positions [pos, pos + T) */
    int update;
} micro;

/* The layout of the whole batch ([P] per position, [n] per sample). */
typedef struct layout {
    int32_t *ids, *targets;
    uint8_t *mask, *keep;
    float *lbeh, *lprox, *logp, *ent, *grad, *lref;
    double *vbeh;      /* the behaviour version of each scored completion token (loglinear, the worker check) */
    double *adv, *stale;
    int32_t *cu;       /* [n + 1] scratch: offsets relative to a micro-batch or update */
} layout;

static void layout_free(layout *L)
{
    free(L->ids), free(L->targets), free(L->mask), free(L->keep), free(L->lbeh), free(L->lprox), free(L->logp);
    free(L->ent), free(L->grad), free(L->lref), free(L->vbeh), free(L->adv), free(L->stale), free(L->cu);
}

static tidal_status layout_alloc(layout *L, int P, int n, bool ref, bool m2po, bool versions)
{
    const size_t p = (size_t)(P ? P : 1), s = (size_t)n + 1;
    L->ids = malloc(p * sizeof *L->ids), L->targets = malloc(p * sizeof *L->targets);
    L->mask = malloc(p), L->keep = m2po ? malloc(p) : NULL;
    L->lbeh = malloc(p * sizeof(float)), L->lprox = malloc(p * sizeof(float)), L->logp = malloc(p * sizeof(float));
    L->ent = malloc(p * sizeof(float)), L->grad = malloc(p * sizeof(float));
    L->lref = ref ? malloc(p * sizeof(float)) : NULL;
    L->vbeh = versions ? malloc(p * sizeof(double)) : NULL;
    L->adv = malloc(s * sizeof(double)), L->stale = malloc(s * sizeof(double)), L->cu = malloc(s * sizeof(int32_t));
    if (!L->ids || !L->targets || !L->mask || (m2po && !L->keep) || !L->lbeh || !L->lprox || !L->logp || !L->ent ||
        !L->grad || (ref && !L->lref) || (versions && !L->vbeh) || !L->adv || !L->stale || !L->cu)
        return tidal_fail(TIDAL_ERR_NOMEM, "trainer step: out of memory for %d positions", P);
    return TIDAL_OK;
}

/* Trajectory t's per-token behaviour versions, run-length decoded into ver[C]. */
static tidal_status expand_versions(const Tidal__V1__Trajectory *t, uint64_t *ver, size_t C)
{
    size_t got = 0;
    TRY(codec_versions_expand(t->version_values, t->version_runs, t->n_version_values, ver, C, &got));
    if (got != C) return tidal_fail(TIDAL_ERR_INVALID, "versions cover %zu of %zu tokens", got, C);
    return TIDAL_OK;
}

/* Sample r's sequence into the layout at its position (and, when the layout
 * keeps them, each scored token's behaviour version). */
static tidal_status lay_out(const sample_ref *r, layout *L)
{
    const Tidal__V1__Trajectory *t = r->t;
    const int P = (int)t->n_prompt_token_ids, C = (int)t->n_completion_token_ids;
    uint64_t *ver = NULL;
    tidal_status st = TIDAL_OK;
    if (L->vbeh && C) {
        if (!(ver = malloc((size_t)C * sizeof *ver))) return tidal_fail(TIDAL_ERR_NOMEM, "trainer step: out of memory");
        TRY_GOTO(expand_versions(t, ver, (size_t)C));
    }
    for (int q = 0, at = r->pos; q < P + C - 1; q++, at++) {
        const uint32_t cur = q < P ? t->prompt_token_ids[q] : t->completion_token_ids[q - P];
        const uint32_t next = q + 1 < P ? t->prompt_token_ids[q + 1] : t->completion_token_ids[q + 1 - P];
        const int k = q + 1 - P; /* the completion token scored here, when >= 0 */
        L->ids[at] = (int32_t)cur;
        L->targets[at] = (int32_t)next;
        L->mask[at] = k >= 0 && t->loss_mask[k];
        L->lbeh[at] = k >= 0 ? t->logprobs[k] : 0.0f;
        if (L->vbeh) L->vbeh[at] = k >= 0 && ver ? (double)ver[k] : 0.0;
    }
cleanup:
    free(ver);
    if (st != TIDAL_OK) /* this text replaces the detail's (as it always has; a wrap would keep both) */
        return tidal_fail(st, "trainer step: trajectory %s: per-token versions", t->trajectory_id);
    return TIDAL_OK;
}

/* Offsets of samples [first, first + n) relative to the first one's position, into L->cu. */
static const int32_t *rel_cu(const sample_ref *sr, layout *L, int first, int n)
{
    for (int j = 0; j < n; j++) L->cu[j] = sr[first + j].pos - sr[first].pos;
    L->cu[n] = n ? sr[first + n - 1].pos + sr[first + n - 1].positions - sr[first].pos : 0;
    return L->cu;
}

/* The loss's view of positions [pos, pos + T) holding samples [first, first + n). */
static loss_batch view(const sample_ref *sr, layout *L, int first, int n, int pos)
{
    return (loss_batch){.S = n,
                        .cu_seqlens = rel_cu(sr, L, first, n),
                        .logp = L->logp + pos,
                        .logp_prox = L->lprox + pos,
                        .logp_beh = L->lbeh + pos,
                        .logp_ref = L->lref ? L->lref + pos : NULL,
                        .mask = L->mask + pos,
                        .adv = L->adv + first,
                        .staleness = L->stale + first,
                        .keep = L->keep ? L->keep + pos : NULL};
}

/* The model's view of micro-batch mb (its offsets in L->cu, until the next rel_cu). */
static model_batch micro_batch(const sample_ref *sr, layout *L, const micro *mb, float inv_temp)
{
    return (model_batch){.T = mb->T, .S = mb->n, .ids = L->ids + mb->pos, .targets = L->targets + mb->pos,
                         .cu_seqlens = rel_cu(sr, L, mb->first, mb->n), .inv_temp = inv_temp};
}

/* Forward device d over micro-batch mb: logprobs into out[pos...], entropies into L->ent. */
static tidal_status forward(trainer_device *d, const sample_ref *sr, layout *L, const micro *mb, float inv_temp,
                            float *out)
{
    model_batch b = micro_batch(sr, L, mb, inv_temp);
    return trainer_device_forward(d, &b, out + mb->pos, L->ent + mb->pos);
}

/* Check one sample; its oldest token version into *oldest. */
static tidal_status check_sample(const Tidal__V1__Trajectory *t, int vocab, uint64_t *oldest)
{
    const size_t C = t->n_completion_token_ids;
    if (t->n_prompt_token_ids < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: trajectory %s: no prompt tokens", t->trajectory_id);
    if (t->n_logprobs != C || t->n_loss_mask != C)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: trajectory %s: %zu completion tokens, %zu logprobs, %zu "
                          "mask entries", t->trajectory_id, C, t->n_logprobs, t->n_loss_mask);
    for (size_t i = 0; i < t->n_prompt_token_ids; i++)
        if (t->prompt_token_ids[i] >= (uint32_t)vocab)
            return tidal_fail(TIDAL_ERR_INVALID, "trainer step: trajectory %s: prompt_token_ids[%zu] = %u, the "
                              "vocabulary has %d", t->trajectory_id, i, t->prompt_token_ids[i], vocab);
    for (size_t i = 0; i < C; i++)
        if (t->completion_token_ids[i] >= (uint32_t)vocab)
            return tidal_fail(TIDAL_ERR_INVALID, "trainer step: trajectory %s: completion_token_ids[%zu] = %u, the "
                              "vocabulary has %d", t->trajectory_id, i, t->completion_token_ids[i], vocab);
    *oldest = t->min_version;
    if (C) codec_trajectory_versions(t, oldest, NULL);
    return TIDAL_OK;
}

/* The configuration's own checks and those against model m (the reference's vocabulary). */
static tidal_status check_cfg(const trainer_step_cfg *cfg, const model *m)
{
    TRY(loss_cfg_validate(&cfg->loss));
    if (cfg->micro_batch_tokens < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: micro_batch_tokens %d", cfg->micro_batch_tokens);
    if (cfg->minibatches < 0) return tidal_fail(TIDAL_ERR_INVALID, "trainer step: minibatches %d", cfg->minibatches);
    if (!(cfg->kl_reward >= 0 && isfinite(cfg->kl_reward)))
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: kl_reward %g", cfg->kl_reward);
    if ((cfg->kl_reward > 0 || cfg->loss.kl_beta > 0) && !cfg->ref)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: a KL term is on but there is no reference model");
    if (cfg->ref && model_cfg(cfg->ref)->vocab_size != model_cfg(m)->vocab_size)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: the reference model's vocabulary (%d) is not the model's (%d)",
                          model_cfg(cfg->ref)->vocab_size, model_cfg(m)->vocab_size);
    if (cfg->overlong_buffer > 0 && !(cfg->max_tokens > cfg->overlong_buffer && isfinite(cfg->overlong_factor)))
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: overlong_buffer %g needs max_tokens (%d) above it",
                          cfg->overlong_buffer, cfg->max_tokens);
    return TIDAL_OK;
}

/* Add micro-batch result r to the running sums of *acc (token-weighted means);
 * *sw2 collects Σw² so the step's effective sample size is exact. */
static void accumulate(loss_result *acc, const loss_result *r, double *sw2)
{
    const double sw = r->is_mean * (double)r->tokens;
    if (r->is_ess > 0) *sw2 += sw * sw / r->is_ess;
    acc->loss += r->loss, acc->policy_loss += r->policy_loss, acc->kl_loss += r->kl_loss;
    acc->tokens += r->tokens, acc->seqs += r->seqs, acc->nonfinite += r->nonfinite;
    const double w = (double)r->tokens;
    acc->clip_frac += w * r->clip_frac, acc->dual_clip_frac += w * r->dual_clip_frac, acc->approx_kl += w * r->approx_kl;
    acc->mismatch_k1 += w * r->mismatch_k1, acc->mismatch_k3 += w * r->mismatch_k3, acc->is_mean += w * r->is_mean;
    acc->masked_frac += w * r->masked_frac, acc->adv_mean += w * r->adv_mean, acc->ref_kl += w * r->ref_kl;
    if (r->is_max > acc->is_max) acc->is_max = r->is_max;
}

static void finish_means(loss_result *acc, double sw2)
{
    if (acc->tokens <= 0) return;
    const double w = (double)acc->tokens;
    acc->is_ess = sw2 > 0 ? acc->is_mean * acc->is_mean / sw2 : 0.0; /* (Σw)² / Σw², is_mean still a sum here */
    acc->clip_frac /= w, acc->dual_clip_frac /= w, acc->approx_kl /= w, acc->mismatch_k1 /= w;
    acc->mismatch_k3 /= w, acc->is_mean /= w, acc->masked_frac /= w, acc->adv_mean /= w, acc->ref_kl /= w;
}

/* A step in progress: its inputs, what the configuration implies, the
 * batch's layout and plan, and the running sums its metrics come from. */
typedef struct step {
    trainer_device *dev;   /* where the policy computes */
    trainer_device *ref;   /* where the reference computes (when need_ref) */
    model *m;              /* dev's host model: the configuration */
    adamw *opt;
    const buffer_batch *batch;
    uint64_t version;
    const trainer_step_cfg *cfg;
    trainer_step_result *out;
    const loss_cfg *lc;
    bool bypass, m2po, need_ref, loglinear;
    bool scored;       /* the worker check wants each token's version (trainer_step_checked) */
    bool recompute;    /* a pass for lprox before the first update */
    int n, G, U;       /* samples, groups, updates */
    int P;             /* positions in the layout */
    double temperature;
    float inv_temp;
    sample_ref *sr;    /* [n] */
    micro *mbs;        /* [n]: every update's micro-batches, in order */
    int nm;            /* micro-batches */
    double *rw;        /* [n] shaped rewards for adv_batch */
    int *goff, *uoff;  /* [G + 1] first sample of each group, [U + 1] first micro-batch of each update */
    layout L;
    /* running sums, added in the order the micro-batches run (that order is part of the metrics' bits) */
    double ent_sum, gn_sum, sw2;
    int64_t ent_n;
    loss_result acc;
} step;

/* What cfg implies for a batch of n samples in G groups (no allocation). */
static void step_init(step *s, trainer_device *dev, trainer_device *ref, adamw *opt, const buffer_batch *batch,
                      uint64_t version, const trainer_step_cfg *cfg, trainer_step_result *out, int n)
{
    const loss_cfg *lc = &cfg->loss;
    const int G = batch->n_groups;
    *s = (step){.dev = dev, .ref = ref, .m = trainer_device_model(dev), .opt = opt, .batch = batch, .version = version,
                .cfg = cfg, .out = out, .lc = lc, .n = n, .G = G, .temperature = -1};
    s->bypass = lc->correction == CORR_BYPASS, s->m2po = lc->kind == LOSS_M2PO;
    s->need_ref = cfg->kl_reward > 0 || lc->kl_beta > 0;
    s->loglinear = cfg->proximal == PROX_LOGLINEAR && !s->bypass;
    s->U = cfg->minibatches < 1 ? 1 : cfg->minibatches < G ? cfg->minibatches : G; /* each has >= 1 group */
    s->recompute = s->U > 1 && !s->bypass && !s->loglinear;
}

static void step_free(step *s)
{
    layout_free(&s->L);
    free(s->sr);
    free(s->mbs);
    free(s->rw);
    free(s->goff);
    free(s->uoff);
}

/* The per-sample and per-group arrays (the layout comes once the positions are known). */
static tidal_status step_alloc(step *s)
{
    s->sr = calloc((size_t)s->n, sizeof *s->sr);
    s->mbs = calloc((size_t)s->n, sizeof *s->mbs);
    s->rw = calloc((size_t)s->n, sizeof *s->rw);
    s->goff = calloc((size_t)s->G + 1, sizeof *s->goff), s->uoff = calloc((size_t)s->U + 1, sizeof *s->uoff);
    if (!s->sr || !s->mbs || !s->rw || !s->goff || !s->uoff)
        return tidal_fail(TIDAL_ERR_NOMEM, "trainer step: out of memory");
    return TIDAL_OK;
}

/* Stage 1 (without the reference's k1): every sample checked, its staleness,
 * its place in the layout and its reward with the overlong shaping; the
 * reward and staleness metrics. All samples must share one temperature. */
static tidal_status read_samples(step *s)
{
    const trainer_step_cfg *cfg = s->cfg;
    trainer_step_result *out = s->out;
    const int vocab = model_cfg(s->m)->vocab_size, n = s->n;
    double rsum = 0, rsq = 0;
    int k = 0;
    out->staleness_min = INFINITY;
    for (int g = 0; g < s->G; g++) {
        s->goff[g] = k;
        for (int i = 0; i < s->batch->groups[g].n; i++, k++) {
            const Tidal__V1__Trajectory *t = s->batch->groups[g].samples[i];
            uint64_t oldest = 0;
            TRY(check_sample(t, vocab, &oldest));
            if (s->temperature < 0) s->temperature = t->temperature;
            else if (t->temperature != s->temperature)
                return tidal_fail(TIDAL_ERR_INVALID, "trainer step: trajectory %s was sampled at temperature %g, the "
                                  "others at %g", t->trajectory_id, t->temperature, s->temperature);
            const double pen = adv_overlong_penalty((double)t->n_completion_token_ids, cfg->max_tokens,
                                                    cfg->overlong_buffer, cfg->overlong_factor);
            sample_ref *r = &s->sr[k];
            *r = (sample_ref){.t = t, .reward = t->reward + pen,
                              .staleness = s->version > oldest ? (double)(s->version - oldest) : 0, .pos = s->P,
                              .positions = (int)(t->n_prompt_token_ids + t->n_completion_token_ids) - 1};
            s->P += r->positions;
            rsum += t->reward;
            rsq += t->reward * t->reward;
            out->overlong_mean += pen / n;
            out->staleness_mean += r->staleness / n;
            if (r->staleness > (double)out->staleness_max) out->staleness_max = (uint64_t)r->staleness;
            if (r->staleness < out->staleness_min) out->staleness_min = r->staleness;
        }
    }
    s->goff[s->G] = n;
    out->samples = n;
    out->reward_mean = rsum / n;
    out->reward_std = n > 1 ? sqrt(fmax(0.0, (rsq - rsum * rsum / n) / (n - 1))) : 0.0;
    return TIDAL_OK;
}

/* Stage 3: the layout, once, for every sample. */
static tidal_status lay_out_batch(step *s)
{
    TRY(layout_alloc(&s->L, s->P, s->n, s->need_ref, s->m2po, s->loglinear || s->scored));
    for (int i = 0; i < s->n; i++) TRY(lay_out(&s->sr[i], &s->L));
    for (int i = 0; i < s->n; i++) s->L.stale[i] = s->sr[i].staleness;
    return TIDAL_OK;
}

/* Stage 3: the updates (whole groups, as even as they go) and their
 * micro-batches by token budget (a sample longer than the budget gets one of
 * its own). */
static void plan_updates(step *s)
{
    const int G = s->G, U = s->U;
    int nm = 0;
    for (int u = 0; u < U; u++) {
        s->uoff[u] = nm;
        const int s0 = s->goff[(int)((int64_t)u * G / U)], s1 = s->goff[(int)((int64_t)(u + 1) * G / U)];
        for (int i = s0; i < s1; i++) {
            micro *cur = nm > s->uoff[u] ? &s->mbs[nm - 1] : NULL;
            if (!cur || cur->T + s->sr[i].positions > s->cfg->micro_batch_tokens) {
                cur = &s->mbs[nm++];
                *cur = (micro){.first = i, .pos = s->sr[i].pos, .update = u};
            }
            cur->n++;
            cur->T += s->sr[i].positions;
        }
    }
    s->uoff[U] = nm;
    s->nm = nm;
    s->inv_temp = s->temperature > 0 ? (float)(1.0 / s->temperature) : 1.0f;
}

/* Forward device d over micro-batches [j0, j1) into dst (a per-position array),
 * counting the positions. */
static tidal_status forward_range(step *s, trainer_device *d, int j0, int j1, float *dst)
{
    for (int j = j0; j < j1; j++) {
        s->out->positions += s->mbs[j].T;
        TRY(forward(d, s->sr, &s->L, &s->mbs[j], s->inv_temp, dst));
    }
    return TIDAL_OK;
}

/* Stage 1, the KL part: the reference model's logprobs (for the loss's KL term
 * too), and kl_reward * Σ_t k1 subtracted from each sample's reward. */
static tidal_status reference_kl(step *s)
{
    if (!s->need_ref) return TIDAL_OK;
    TRY(forward_range(s, s->ref, 0, s->nm, s->L.lref));
    const layout *L = &s->L;
    for (int i = 0; i < s->n && s->cfg->kl_reward > 0; i++) {
        sample_ref *r = &s->sr[i];
        double k1 = 0;
        for (int q = r->pos; q < r->pos + r->positions; q++) {
            if (!L->mask[q]) continue;
            const double d = (double)L->lbeh[q] - (double)L->lref[q];
            if (isfinite(d)) k1 += fmin(fmax(d, -20.0), 20.0);
        }
        r->reward -= s->cfg->kl_reward * k1;
        s->out->kl_reward_mean += s->cfg->kl_reward * k1 / s->n;
    }
    return TIDAL_OK;
}

/* Stage 2: the group advantages over the shaped rewards. */
static tidal_status advantages(step *s)
{
    for (int i = 0; i < s->n; i++) s->rw[i] = s->sr[i].reward;
    return adv_batch(s->cfg->advantage, s->rw, s->goff, s->G, s->L.adv);
}

/* Stage 4, before any update: the proximal logprobs under the weights the
 * step starts from when they need a pass of their own, lbeh in bypass mode.
 * (With one update the live forward is lprox, and loglinear interpolates per
 * micro-batch: set_proximal.) */
static tidal_status proximal_logprobs(step *s)
{
    if (s->recompute) return forward_range(s, s->dev, 0, s->nm, s->L.lprox);
    if (s->bypass) memcpy(s->L.lprox, s->L.lbeh, (size_t)(s->P ? s->P : 1) * sizeof *s->L.lprox);
    return TIDAL_OK;
}

/* Stage 4 for micro-batch mb, after its live forward: lprox interpolated
 * log-linearly at the live weights' version v_theta, or the live forward itself
 * when the step has one update. */
static void set_proximal(step *s, const micro *mb, double v_theta)
{
    layout *L = &s->L;
    if (s->loglinear) {
        for (int q = mb->pos; q < mb->pos + mb->T; q++) {
            const double den = v_theta - L->vbeh[q];
            const double a = den > 0 ? fmin(fmax(((double)s->version - L->vbeh[q]) / den, 0.0), 1.0) : 1.0;
            L->lprox[q] = (float)((double)L->lbeh[q] + a * ((double)L->logp[q] - (double)L->lbeh[q]));
        }
    } else if (!s->recompute && !s->bypass) {
        memcpy(L->lprox + mb->pos, L->logp + mb->pos, (size_t)mb->T * sizeof *L->lprox);
    }
}

/* Update u's loss denominators (masks and staleness only) into *norm. */
static tidal_status update_norm(step *s, int u, loss_norm *norm)
{
    for (int j = s->uoff[u]; j < s->uoff[u + 1]; j++) {
        loss_batch v = view(s->sr, &s->L, s->mbs[j].first, s->mbs[j].n, s->mbs[j].pos);
        TRY(loss_norm_add(s->lc, &v, norm));
    }
    return TIDAL_OK;
}

/* Stage 5, M2PO: the selection over the whole of update u, from lθ before it
 * (the recompute pass already holds it for the first update). */
static tidal_status m2po_select(step *s, int u)
{
    const micro *m0 = &s->mbs[s->uoff[u]], *m1 = &s->mbs[s->uoff[u + 1] - 1];
    layout *L = &s->L;
    if (u == 0 && s->recompute)
        memcpy(L->logp + m0->pos, L->lprox + m0->pos, (size_t)(m1->pos + m1->T - m0->pos) * sizeof *L->logp);
    else
        TRY(forward_range(s, s->dev, s->uoff[u], s->uoff[u + 1], L->logp));
    loss_batch v = view(s->sr, L, m0->first, m1->first + m1->n - m0->first, m0->pos);
    v.keep = NULL;
    return loss_m2po_select(s->lc, &v, L->keep + m0->pos, NULL);
}

/* Stage 5, one micro-batch: the live forward (lθ, entropies), the proximal
 * policy where it comes from the live weights, the loss and d loss / d lθ
 * with the update's denominators, and the backward (gradients add up over
 * the update's micro-batches). One without a masked token only counts. */
static tidal_status train_micro_batch(step *s, const micro *mb, const loss_norm *norm, double v_theta)
{
    layout *L = &s->L;
    const model_batch b = micro_batch(s->sr, L, mb, s->inv_temp); /* for the forward and the backward */
    TRY(trainer_device_forward(s->dev, &b, L->logp + mb->pos, L->ent + mb->pos));
    s->out->positions += mb->T;
    s->out->micro_batches++;
    int64_t here = 0;
    for (int q = mb->pos; q < mb->pos + mb->T; q++)
        if (L->mask[q]) here++, s->ent_sum += L->ent[q];
    s->ent_n += here;
    if (here == 0) return TIDAL_OK; /* nothing to train in this one (loss_compute refuses it) */
    set_proximal(s, mb, v_theta);
    loss_batch v = view(s->sr, L, mb->first, mb->n, mb->pos);
    loss_result r;
    TRY(loss_compute(s->lc, &v, norm, L->grad + mb->pos, &r));
    TRY(trainer_device_backward(s->dev, &b, L->grad + mb->pos, NULL));
    accumulate(&s->acc, &r, &s->sw2);
    return TIDAL_OK;
}

/* Stage 5, update u: its denominators, M2PO's selection, every micro-batch's
 * forward, loss and backward, then gradient clipping and one AdamW update.
 * An update without a trainable token is skipped, unless it is the only one. */
static tidal_status train_update(step *s, int u)
{
    loss_norm norm = {0};
    TRY(update_norm(s, u, &norm));
    if (norm.tokens == 0) {
        if (s->U == 1)
            return tidal_fail(TIDAL_ERR_INVALID, "trainer step: no sample of the batch has a trainable (masked) token");
        return TIDAL_OK; /* nothing to train in this update */
    }
    if (s->m2po) TRY(m2po_select(s, u));
    TRY(trainer_device_zero_grads(s->dev));
    const double v_theta = (double)s->version + (double)u / (double)s->U; /* the live weights' version */
    for (int j = s->uoff[u]; j < s->uoff[u + 1]; j++) TRY(train_micro_batch(s, &s->mbs[j], &norm, v_theta));
    const double bound = grad_clip_bound(s->opt, s->cfg->grad_clip, s->cfg->grad_spike);
    double gn = 0.0;
    TRY(trainer_device_update(s->dev, bound, s->cfg->lr, &gn)); /* clip_grad_norm to bound, then AdamW */
    const bool clipped = bound > 0.0 && gn > bound;
    if (clipped && !(s->cfg->grad_clip > 0.0 && bound >= s->cfg->grad_clip)) s->out->grad_spikes++;
    grad_norm_observe(s->opt, clipped ? bound : gn);
    s->gn_sum += gn;
    s->out->updates++;
    return TIDAL_OK;
}

/* The step's metrics from the running sums: token-weighted means, each
 * update's loss averaged over the updates, entropy and gradient norm means. */
static void finish_metrics(step *s)
{
    trainer_step_result *out = s->out;
    loss_result *acc = &s->acc;
    finish_means(acc, s->sw2);
    if (out->updates > 1) { /* each update's loss is a whole (its own denominators): report their mean */
        acc->loss /= out->updates, acc->policy_loss /= out->updates, acc->kl_loss /= out->updates;
    }
    out->loss = *acc;
    out->entropy_mean = s->ent_n ? s->ent_sum / (double)s->ent_n : 0.0;
    out->grad_norm = out->updates ? s->gn_sum / out->updates : 0.0;
}

/* Each token's k3 counts at most this much in the worker check: an honest
 * worker's rare tokens where the policy moved a lot since must not outweigh
 * the rest (a liar's are many, each well below it). */
#define CHECK_K3_CAP 1.0

/* Each sample's agreement with the weights the step started from (step.h,
 * trainer_sample_check), after the updates: the recompute pass holds those
 * logprobs for every sample; otherwise the live forward of the first update
 * does, for that update's samples (each update forwards its own positions). */
static void score_samples(const step *s, trainer_sample_check *checks)
{
    const layout *L = &s->L;
    for (int i = 0; i < s->n; i++) checks[i] = (trainer_sample_check){0};
    const float *at_v = s->recompute ? L->lprox : L->logp;
    for (int j = 0; j < s->nm; j++) {
        const micro *mb = &s->mbs[j];
        if (!s->recompute && mb->update != 0) break; /* later updates ran on newer weights */
        for (int i = mb->first; i < mb->first + mb->n; i++) {
            const sample_ref *r = &s->sr[i];
            for (int q = r->pos; q < r->pos + r->positions; q++) {
                const double v = L->vbeh[q]; /* the layout's versions, decoded once by lay_out */
                if (!L->mask[q] || v > (double)s->version || (double)s->version - v >= TRAINER_CHECK_VERSIONS) continue;
                const int behind = (int)((double)s->version - v);
                const double x = (double)at_v[q] - (double)L->lbeh[q];
                const double k3 = isfinite(x) ? exp(fmin(x, 20.0)) - 1.0 - x : CHECK_K3_CAP;
                checks[i].k3_sum[behind] += fmin(k3, CHECK_K3_CAP);
                checks[i].tokens[behind]++;
            }
        }
    }
}

tidal_status trainer_step(model *m, adamw *opt, const buffer_batch *batch, uint64_t version,
                          const trainer_step_cfg *cfg, trainer_step_result *out)
{
    return trainer_step_checked(m, opt, batch, version, cfg, out, NULL);
}

tidal_status trainer_step_checked(model *m, adamw *opt, const buffer_batch *batch, uint64_t version,
                                  const trainer_step_cfg *cfg, trainer_step_result *out, trainer_sample_check *checks)
{
    memset(out, 0, sizeof *out);
    trainer_device *dev = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(trainer_device_create(TRAINER_DEVICE_CPU, m, opt, &dev));
    st = trainer_step_on(dev, batch, version, cfg, out, checks);
cleanup:
    trainer_device_free(dev);
    return st;
}

tidal_status trainer_step_on(trainer_device *dev, const buffer_batch *batch, uint64_t version,
                             const trainer_step_cfg *cfg, trainer_step_result *out, trainer_sample_check *checks)
{
    memset(out, 0, sizeof *out);
    model *m = trainer_device_model(dev);
    TRY(check_cfg(cfg, m));
    int n = 0;
    for (int g = 0; g < batch->n_groups; g++) n += batch->groups[g].n;
    if (n == 0) return tidal_fail(TIDAL_ERR_INVALID, "trainer step: an empty batch");

    trainer_device *ref_cpu = NULL; /* the reference on the CPU when the caller gave no device for it */
    step s;
    step_init(&s, dev, cfg->ref_device, trainer_device_optimizer(dev), batch, version, cfg, out, n);
    s.scored = checks != NULL;
    tidal_status st = TIDAL_OK;
    if (s.need_ref && !s.ref) {
        TRY_GOTO(trainer_device_create(TRAINER_DEVICE_CPU, cfg->ref, NULL, &ref_cpu));
        s.ref = ref_cpu;
    }
    TRY_GOTO(step_alloc(&s));
    TRY_GOTO(read_samples(&s));      /* 1. checks, staleness, rewards with overlong shaping */
    TRY_GOTO(lay_out_batch(&s));     /* 3. the packed layout */
    plan_updates(&s);                /* 3. updates and their micro-batches */
    TRY_GOTO(reference_kl(&s));      /* 1. the reference's logprobs, k1 in the reward */
    TRY_GOTO(advantages(&s));        /* 2. group advantages */
    TRY_GOTO(proximal_logprobs(&s)); /* 4. lprox before the first update */
    for (int u = 0; u < s.U; u++) TRY_GOTO(train_update(&s, u)); /* 5. */
    finish_metrics(&s);
    if (checks) score_samples(&s, checks);
cleanup:
    step_free(&s);
    trainer_device_free(ref_cpu);
    return st;
}
