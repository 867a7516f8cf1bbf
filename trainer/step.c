/* step.c - one trainer step (see step.h for the contract).
 *
 * The batch is laid out once: every sample's prompt + completion as one
 * packed sequence, all samples back to back, with per-position arrays (ids,
 * targets, loss mask, behaviour / proximal / live / reference logprobs,
 * gradient, M2PO's selection, behaviour version). A micro-batch is then a
 * contiguous range of samples and of positions, and each pass (reference,
 * recompute, selection, live) reads and writes its own slice.
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
    double *vbeh;      /* the behaviour version of each scored completion token (loglinear) */
    double *adv, *stale;
    int32_t *cu;       /* [n + 1] scratch: offsets relative to a micro-batch or update */
} layout;

static void layout_free(layout *L)
{
    free(L->ids), free(L->targets), free(L->mask), free(L->keep), free(L->lbeh), free(L->lprox), free(L->logp);
    free(L->ent), free(L->grad), free(L->lref), free(L->vbeh), free(L->adv), free(L->stale), free(L->cu);
}

static tidal_status layout_alloc(layout *L, int P, int n, bool ref, bool m2po, bool loglinear)
{
    const size_t p = (size_t)(P ? P : 1), s = (size_t)n + 1;
    L->ids = malloc(p * sizeof *L->ids), L->targets = malloc(p * sizeof *L->targets);
    L->mask = malloc(p), L->keep = m2po ? malloc(p) : NULL;
    L->lbeh = malloc(p * sizeof(float)), L->lprox = malloc(p * sizeof(float)), L->logp = malloc(p * sizeof(float));
    L->ent = malloc(p * sizeof(float)), L->grad = malloc(p * sizeof(float));
    L->lref = ref ? malloc(p * sizeof(float)) : NULL;
    L->vbeh = loglinear ? malloc(p * sizeof(double)) : NULL;
    L->adv = malloc(s * sizeof(double)), L->stale = malloc(s * sizeof(double)), L->cu = malloc(s * sizeof(int32_t));
    if (!L->ids || !L->targets || !L->mask || (m2po && !L->keep) || !L->lbeh || !L->lprox || !L->logp || !L->ent ||
        !L->grad || (ref && !L->lref) || (loglinear && !L->vbeh) || !L->adv || !L->stale || !L->cu)
        return tidal_fail(TIDAL_ERR_NOMEM, "trainer step: out of memory for %d positions", P);
    return TIDAL_OK;
}

/* Sample i's sequence into the layout at its position. */
static tidal_status lay_out(const sample_ref *r, layout *L)
{
    const Tidal__V1__Trajectory *t = r->t;
    const int P = (int)t->n_prompt_token_ids, C = (int)t->n_completion_token_ids;
    uint64_t *ver = NULL;
    if (L->vbeh && C) {
        size_t got = 0;
        if (!(ver = malloc((size_t)C * sizeof *ver))) return tidal_fail(TIDAL_ERR_NOMEM, "trainer step: out of memory");
        tidal_status st = codec_versions_expand(t->version_values, t->version_runs, t->n_version_values, ver, (size_t)C, &got);
        if (st == TIDAL_OK && got != (size_t)C)
            st = tidal_fail(TIDAL_ERR_INVALID, "versions cover %zu of %d tokens", got, C);
        if (st != TIDAL_OK) {
            free(ver);
            return tidal_fail(st, "trainer step: trajectory %s: per-token versions", t->trajectory_id);
        }
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
    free(ver);
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

/* Forward m over micro-batch mb: logprobs into out[pos...], entropies into L->ent. */
static tidal_status forward(model *m, const sample_ref *sr, layout *L, const micro *mb, float inv_temp, float *out)
{
    model_batch b = micro_batch(sr, L, mb, inv_temp);
    return model_forward(m, &b, out + mb->pos, L->ent + mb->pos, NULL);
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

static tidal_status check_cfg(const trainer_step_cfg *cfg, const model *m)
{
    tidal_status st = loss_cfg_validate(&cfg->loss);
    if (st != TIDAL_OK) return st;
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

tidal_status trainer_step(model *m, adamw *opt, const buffer_batch *batch, uint64_t version,
                          const trainer_step_cfg *cfg, trainer_step_result *out)
{
    memset(out, 0, sizeof *out);
    tidal_status st = check_cfg(cfg, m);
    if (st != TIDAL_OK) return st;
    const int G = batch->n_groups;
    int n = 0;
    for (int g = 0; g < G; g++) n += batch->groups[g].n;
    if (n == 0) return tidal_fail(TIDAL_ERR_INVALID, "trainer step: an empty batch");
    const loss_cfg *lc = &cfg->loss;
    const bool bypass = lc->correction == CORR_BYPASS, m2po = lc->kind == LOSS_M2PO;
    const bool need_ref = cfg->kl_reward > 0 || lc->kl_beta > 0;
    const bool loglinear = cfg->proximal == PROX_LOGLINEAR && !bypass;
    const int U = cfg->minibatches < 1 ? 1 : cfg->minibatches < G ? cfg->minibatches : G; /* each has >= 1 group */
    const bool recompute = U > 1 && !bypass && !loglinear;      /* a pass for lprox before the first update */

    sample_ref *sr = calloc((size_t)n, sizeof *sr);
    micro *mbs = calloc((size_t)n, sizeof *mbs);
    double *rw = calloc((size_t)n, sizeof *rw);
    int *goff = calloc((size_t)G + 1, sizeof *goff), *uoff = calloc((size_t)U + 1, sizeof *uoff);
    layout L = {0};
    if (!sr || !mbs || !rw || !goff || !uoff) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "trainer step: out of memory");
        goto out;
    }

    /* the samples: checks, staleness, positions, rewards (shaped) */
    const int vocab = model_cfg(m)->vocab_size;
    double temperature = -1, rsum = 0, rsq = 0;
    int k = 0, P = 0;
    out->staleness_min = INFINITY;
    for (int g = 0; g < G && st == TIDAL_OK; g++) {
        goff[g] = k;
        for (int i = 0; i < batch->groups[g].n; i++, k++) {
            const Tidal__V1__Trajectory *t = batch->groups[g].samples[i];
            uint64_t oldest = 0;
            if ((st = check_sample(t, vocab, &oldest)) != TIDAL_OK) break;
            if (temperature < 0) temperature = t->temperature;
            else if (t->temperature != temperature) {
                st = tidal_fail(TIDAL_ERR_INVALID, "trainer step: trajectory %s was sampled at temperature %g, the "
                                "others at %g", t->trajectory_id, t->temperature, temperature);
                break;
            }
            const double pen = adv_overlong_penalty((double)t->n_completion_token_ids, cfg->max_tokens,
                                                    cfg->overlong_buffer, cfg->overlong_factor);
            sr[k] = (sample_ref){.t = t, .reward = t->reward + pen,
                                 .staleness = version > oldest ? (double)(version - oldest) : 0, .pos = P,
                                 .positions = (int)(t->n_prompt_token_ids + t->n_completion_token_ids) - 1};
            P += sr[k].positions;
            rsum += t->reward;
            rsq += t->reward * t->reward;
            out->overlong_mean += pen / n;
            out->staleness_mean += sr[k].staleness / n;
            if (sr[k].staleness > (double)out->staleness_max) out->staleness_max = (uint64_t)sr[k].staleness;
            if (sr[k].staleness < out->staleness_min) out->staleness_min = sr[k].staleness;
        }
    }
    goff[G] = n;
    if (st != TIDAL_OK) goto out;
    out->samples = n;
    out->reward_mean = rsum / n;
    out->reward_std = n > 1 ? sqrt(fmax(0.0, (rsq - rsum * rsum / n) / (n - 1))) : 0.0;

    /* the layout, once */
    if ((st = layout_alloc(&L, P, n, need_ref, m2po, loglinear)) != TIDAL_OK) goto out;
    for (int i = 0; i < n && st == TIDAL_OK; i++) st = lay_out(&sr[i], &L);
    if (st != TIDAL_OK) goto out;
    for (int i = 0; i < n; i++) L.stale[i] = sr[i].staleness;

    /* updates (whole groups, as even as they go) and their micro-batches by token budget */
    int nm = 0;
    for (int u = 0; u < U; u++) {
        uoff[u] = nm;
        const int s0 = goff[(int)((int64_t)u * G / U)], s1 = goff[(int)((int64_t)(u + 1) * G / U)];
        for (int i = s0; i < s1; i++) {
            micro *cur = nm > uoff[u] ? &mbs[nm - 1] : NULL;
            if (!cur || cur->T + sr[i].positions > cfg->micro_batch_tokens) {
                cur = &mbs[nm++];
                *cur = (micro){.first = i, .pos = sr[i].pos, .update = u};
            }
            cur->n++;
            cur->T += sr[i].positions;
        }
    }
    uoff[U] = nm;
    const float inv_temp = temperature > 0 ? (float)(1.0 / temperature) : 1.0f;

    /* the reference model's logprobs, and k1 in the reward */
    if (need_ref) {
        for (int j = 0; j < nm && st == TIDAL_OK; j++) {
            st = forward(cfg->ref, sr, &L, &mbs[j], inv_temp, L.lref);
            out->positions += mbs[j].T;
        }
        if (st != TIDAL_OK) goto out;
        for (int i = 0; i < n && cfg->kl_reward > 0; i++) {
            double k1 = 0;
            for (int q = sr[i].pos; q < sr[i].pos + sr[i].positions; q++) {
                if (!L.mask[q]) continue;
                const double d = (double)L.lbeh[q] - (double)L.lref[q];
                if (isfinite(d)) k1 += fmin(fmax(d, -20.0), 20.0);
            }
            sr[i].reward -= cfg->kl_reward * k1;
            out->kl_reward_mean += cfg->kl_reward * k1 / n;
        }
    }

    /* advantages over the shaped rewards */
    for (int i = 0; i < n; i++) rw[i] = sr[i].reward;
    if ((st = adv_batch(cfg->advantage, rw, goff, G, L.adv)) != TIDAL_OK) goto out;

    /* the proximal logprobs under the weights the step starts from */
    if (recompute) {
        for (int j = 0; j < nm && st == TIDAL_OK; j++) {
            st = forward(m, sr, &L, &mbs[j], inv_temp, L.lprox);
            out->positions += mbs[j].T;
        }
        if (st != TIDAL_OK) goto out;
    } else if (bypass) {
        memcpy(L.lprox, L.lbeh, (size_t)(P ? P : 1) * sizeof *L.lprox);
    }

    double ent_sum = 0, gn_sum = 0, sw2 = 0;
    int64_t ent_n = 0;
    loss_result acc = {0};
    size_t np = 0;
    float *params = model_params(m, &np);
    float *grads = model_grads(m, &np);
    for (int u = 0; u < U; u++) {
        const micro *m0 = &mbs[uoff[u]], *m1 = &mbs[uoff[u + 1] - 1];
        const int first = m0->first, ns = m1->first + m1->n - first;
        /* the update's denominators (masks and staleness only) */
        loss_norm norm = {0};
        for (int j = uoff[u]; j < uoff[u + 1] && st == TIDAL_OK; j++) {
            loss_batch v = view(sr, &L, mbs[j].first, mbs[j].n, mbs[j].pos);
            st = loss_norm_add(lc, &v, &norm);
        }
        if (st != TIDAL_OK) goto out;
        if (norm.tokens == 0) {
            if (U == 1) {
                st = tidal_fail(TIDAL_ERR_INVALID, "trainer step: no sample of the batch has a trainable (masked) token");
                goto out;
            }
            continue; /* nothing to train in this update */
        }
        /* M2PO selects over the whole update, from lθ before it */
        if (m2po) {
            if (u == 0 && recompute) {
                memcpy(L.logp + m0->pos, L.lprox + m0->pos, (size_t)(m1->pos + m1->T - m0->pos) * sizeof *L.logp);
            } else {
                for (int j = uoff[u]; j < uoff[u + 1] && st == TIDAL_OK; j++) {
                    st = forward(m, sr, &L, &mbs[j], inv_temp, L.logp);
                    out->positions += mbs[j].T;
                }
            }
            loss_batch v = view(sr, &L, first, ns, m0->pos);
            v.keep = NULL;
            if (st == TIDAL_OK) st = loss_m2po_select(lc, &v, L.keep + m0->pos, NULL);
            if (st != TIDAL_OK) goto out;
        }
        model_zero_grads(m);
        const double v_theta = (double)version + (double)u / (double)U; /* the live weights' version */
        for (int j = uoff[u]; j < uoff[u + 1]; j++) {
            const micro *mb = &mbs[j];
            const model_batch b = micro_batch(sr, &L, mb, inv_temp); /* for the forward and the backward */
            if ((st = model_forward(m, &b, L.logp + mb->pos, L.ent + mb->pos, NULL)) != TIDAL_OK) goto out;
            out->positions += mb->T;
            out->micro_batches++;
            int64_t here = 0;
            for (int q = mb->pos; q < mb->pos + mb->T; q++)
                if (L.mask[q]) here++, ent_sum += L.ent[q];
            ent_n += here;
            if (here == 0) continue; /* nothing to train in this one (loss_compute refuses it) */
            if (loglinear) {
                for (int q = mb->pos; q < mb->pos + mb->T; q++) {
                    const double den = v_theta - L.vbeh[q];
                    const double a = den > 0 ? fmin(fmax(((double)version - L.vbeh[q]) / den, 0.0), 1.0) : 1.0;
                    L.lprox[q] = (float)((double)L.lbeh[q] + a * ((double)L.logp[q] - (double)L.lbeh[q]));
                }
            } else if (!recompute && !bypass) { /* one update: the live forward is the proximal policy */
                memcpy(L.lprox + mb->pos, L.logp + mb->pos, (size_t)mb->T * sizeof *L.lprox);
            }
            loss_batch v = view(sr, &L, mb->first, mb->n, mb->pos);
            loss_result r;
            if ((st = loss_compute(lc, &v, &norm, L.grad + mb->pos, &r)) != TIDAL_OK) goto out;
            if ((st = model_backward(m, &b, L.grad + mb->pos, NULL)) != TIDAL_OK) goto out;
            accumulate(&acc, &r, &sw2);
        }
        gn_sum += clip_grad_norm(grads, np, cfg->grad_clip);
        adamw_step(opt, params, grads, NULL, cfg->lr);
        out->updates++;
    }
    finish_means(&acc, sw2);
    if (out->updates > 1) { /* each update's loss is a whole (its own denominators): report their mean */
        acc.loss /= out->updates, acc.policy_loss /= out->updates, acc.kl_loss /= out->updates;
    }
    out->loss = acc;
    out->entropy_mean = ent_n ? ent_sum / (double)ent_n : 0.0;
    out->grad_norm = out->updates ? gn_sum / out->updates : 0.0;
out:
    layout_free(&L);
    free(sr);
    free(mbs);
    free(rw);
    free(goff);
    free(uoff);
    return st;
}
