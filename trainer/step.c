/* step.c - one optimizer step (see step.h for the contract). */
#include "trainer/step.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto/codec.h"

typedef struct sample_ref {
    const Tidal__V1__Trajectory *t;
    double adv;
    double staleness;
    int positions; /* P + C - 1 */
} sample_ref;

typedef struct micro {
    int first, n; /* samples [first, first + n) */
    int T;
} micro;

/* The step's scratch, sized for its largest micro-batch. */
typedef struct scratch {
    int32_t *ids, *targets, *cu;
    float *logp, *ent, *lprox, *lbeh, *grad;
    uint8_t *mask;
    double *adv, *stale;
} scratch;

static void scratch_free(scratch *s)
{
    free(s->ids), free(s->targets), free(s->cu), free(s->logp), free(s->ent), free(s->lprox), free(s->lbeh);
    free(s->grad), free(s->mask), free(s->adv), free(s->stale);
}

static tidal_status scratch_alloc(scratch *s, int T, int S)
{
    const size_t t = (size_t)(T ? T : 1), n = (size_t)S + 1;
    s->ids = malloc(t * sizeof *s->ids), s->targets = malloc(t * sizeof *s->targets);
    s->cu = malloc(n * sizeof *s->cu);
    s->logp = malloc(t * sizeof *s->logp), s->ent = malloc(t * sizeof *s->ent), s->lprox = malloc(t * sizeof *s->lprox);
    s->lbeh = malloc(t * sizeof *s->lbeh), s->grad = malloc(t * sizeof *s->grad), s->mask = malloc(t);
    s->adv = malloc(n * sizeof *s->adv), s->stale = malloc(n * sizeof *s->stale);
    if (!s->ids || !s->targets || !s->cu || !s->logp || !s->ent || !s->lprox || !s->lbeh || !s->grad || !s->mask ||
        !s->adv || !s->stale)
        return tidal_fail(TIDAL_ERR_NOMEM, "trainer step: out of memory for %d positions", T);
    return TIDAL_OK;
}

/* Lay micro-batch mb out in s: tokens, targets, offsets, mask, behaviour logprobs, advantages. */
static void fill(const sample_ref *sr, const micro *mb, scratch *s, loss_batch *lb)
{
    int at = 0;
    for (int j = 0; j < mb->n; j++) {
        const Tidal__V1__Trajectory *t = sr[mb->first + j].t;
        const int P = (int)t->n_prompt_token_ids, C = (int)t->n_completion_token_ids;
        s->cu[j] = at;
        for (int q = 0; q < P + C - 1; q++, at++) {
            const uint32_t cur = q < P ? t->prompt_token_ids[q] : t->completion_token_ids[q - P];
            const uint32_t next = q + 1 < P ? t->prompt_token_ids[q + 1] : t->completion_token_ids[q + 1 - P];
            const int k = q + 1 - P; /* the completion token scored here, when >= 0 */
            s->ids[at] = (int32_t)cur;
            s->targets[at] = (int32_t)next;
            s->mask[at] = k >= 0 && t->loss_mask[k];
            s->lbeh[at] = k >= 0 ? t->logprobs[k] : 0.0f;
        }
        s->adv[j] = sr[mb->first + j].adv;
        s->stale[j] = sr[mb->first + j].staleness;
    }
    s->cu[mb->n] = at;
    *lb = (loss_batch){.S = mb->n,
                       .cu_seqlens = s->cu,
                       .logp = s->logp,
                       .logp_prox = s->lprox,
                       .logp_beh = s->lbeh,
                       .mask = s->mask,
                       .adv = s->adv,
                       .staleness = s->stale};
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

tidal_status trainer_step(model *m, adamw *opt, const buffer_batch *batch, uint64_t version,
                          const trainer_step_cfg *cfg, trainer_step_result *out)
{
    memset(out, 0, sizeof *out);
    tidal_status st = loss_cfg_validate(&cfg->loss);
    if (st != TIDAL_OK) return st;
    if (cfg->loss.kl_beta > 0)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: kl_beta > 0 needs a reference model (not yet here)");
    if (cfg->micro_batch_tokens < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer step: micro_batch_tokens %d", cfg->micro_batch_tokens);
    int n = 0;
    for (int g = 0; g < batch->n_groups; g++) n += batch->groups[g].n;
    if (n == 0) return tidal_fail(TIDAL_ERR_INVALID, "trainer step: an empty batch");
    sample_ref *sr = calloc((size_t)n, sizeof *sr);
    micro *mbs = calloc((size_t)n, sizeof *mbs);
    double *rw = calloc((size_t)n, sizeof *rw);
    scratch sc = {0};
    if (!sr || !mbs || !rw) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "trainer step: out of memory");
        goto out;
    }
    /* the samples, their advantages (per group) and staleness */
    const int vocab = model_cfg(m)->vocab_size;
    double temperature = -1, rsum = 0, rsq = 0;
    int k = 0;
    for (int g = 0; g < batch->n_groups && st == TIDAL_OK; g++) {
        const buffer_group *bg = &batch->groups[g];
        for (int i = 0; i < bg->n; i++) rw[i] = bg->samples[i]->reward;
        st = adv_group(cfg->advantage, rw, (size_t)bg->n, rw);
        for (int i = 0; i < bg->n && st == TIDAL_OK; i++, k++) {
            const Tidal__V1__Trajectory *t = bg->samples[i];
            uint64_t oldest = 0;
            st = check_sample(t, vocab, &oldest);
            if (st != TIDAL_OK) break;
            if (temperature < 0) temperature = t->temperature;
            else if (t->temperature != temperature)
                st = tidal_fail(TIDAL_ERR_INVALID, "trainer step: trajectory %s was sampled at temperature %g, the "
                                "others at %g", t->trajectory_id, t->temperature, temperature);
            sr[k] = (sample_ref){.t = t, .adv = rw[i], .staleness = version > oldest ? (double)(version - oldest) : 0,
                                 .positions = (int)(t->n_prompt_token_ids + t->n_completion_token_ids) - 1};
            rsum += t->reward;
            rsq += t->reward * t->reward;
            out->staleness_mean += sr[k].staleness / n;
            if (sr[k].staleness > (double)out->staleness_max) out->staleness_max = (uint64_t)sr[k].staleness;
        }
    }
    if (st != TIDAL_OK) goto out;
    if (cfg->advantage == ADV_REINFORCE_PP) { /* whitened over the whole batch */
        for (int i = 0; i < n; i++) rw[i] = sr[i].adv;
        if ((st = adv_whiten(rw, (size_t)n)) != TIDAL_OK) goto out;
        for (int i = 0; i < n; i++) sr[i].adv = rw[i];
    }
    out->samples = n;
    out->reward_mean = rsum / n;
    out->reward_std = n > 1 ? sqrt(fmax(0.0, (rsq - rsum * rsum / n) / (n - 1))) : 0.0;

    /* micro-batches: samples in order, up to micro_batch_tokens positions each */
    int nm = 0, maxT = 0, maxS = 0;
    for (int i = 0; i < n; i++) {
        micro *cur = nm ? &mbs[nm - 1] : NULL;
        if (!cur || cur->T + sr[i].positions > cfg->micro_batch_tokens) {
            cur = &mbs[nm++];
            *cur = (micro){.first = i};
        }
        cur->n++;
        cur->T += sr[i].positions;
        if (cur->T > maxT) maxT = cur->T;
        if (cur->n > maxS) maxS = cur->n;
    }
    if ((st = scratch_alloc(&sc, maxT, maxS)) != TIDAL_OK) goto out;

    /* the step's denominators first (masks only), then forward / loss / backward per micro-batch */
    loss_norm norm = {0};
    loss_batch lb;
    for (int j = 0; j < nm && st == TIDAL_OK; j++) {
        fill(sr, &mbs[j], &sc, &lb);
        memcpy(sc.logp, sc.lbeh, (size_t)mbs[j].T * sizeof *sc.logp); /* finite stand-ins: only counts are read */
        memcpy(sc.lprox, sc.lbeh, (size_t)mbs[j].T * sizeof *sc.lprox);
        st = loss_norm_add(&cfg->loss, &lb, &norm);
    }
    if (st == TIDAL_OK && norm.tokens == 0)
        st = tidal_fail(TIDAL_ERR_INVALID, "trainer step: no sample of the batch has a trainable (masked) token");
    if (st != TIDAL_OK) goto out;
    model_zero_grads(m);
    const float inv_temp = temperature > 0 ? (float)(1.0 / temperature) : 1.0f;
    double ent_sum = 0;
    int64_t ent_n = 0;
    loss_result acc = {0};
    acc.is_max = 0;
    for (int j = 0; j < nm; j++) {
        fill(sr, &mbs[j], &sc, &lb);
        model_batch mb = {.T = mbs[j].T, .S = mbs[j].n, .ids = sc.ids, .targets = sc.targets, .cu_seqlens = sc.cu,
                          .inv_temp = inv_temp};
        if ((st = model_forward(m, &mb, sc.logp, sc.ent, NULL)) != TIDAL_OK) goto out;
        out->positions += mbs[j].T;
        out->micro_batches++;
        int64_t here = 0;
        for (int q = 0; q < mbs[j].T; q++)
            if (sc.mask[q]) here++, ent_sum += sc.ent[q];
        ent_n += here;
        if (here == 0) continue; /* nothing to train in this one (loss_compute refuses it) */
        memcpy(sc.lprox, sc.logp, (size_t)mbs[j].T * sizeof *sc.lprox); /* one update per batch: prox = these */
        loss_result r;
        if ((st = loss_compute(&cfg->loss, &lb, &norm, sc.grad, &r)) != TIDAL_OK) goto out;
        if ((st = model_backward(m, &mb, sc.grad, NULL)) != TIDAL_OK) goto out;
        /* sums, and token-weighted means */
        acc.loss += r.loss, acc.policy_loss += r.policy_loss;
        acc.tokens += r.tokens, acc.seqs += r.seqs, acc.nonfinite += r.nonfinite;
        const double w = (double)r.tokens;
        acc.clip_frac += w * r.clip_frac, acc.dual_clip_frac += w * r.dual_clip_frac, acc.approx_kl += w * r.approx_kl;
        acc.mismatch_k1 += w * r.mismatch_k1, acc.mismatch_k3 += w * r.mismatch_k3, acc.is_mean += w * r.is_mean;
        acc.masked_frac += w * r.masked_frac, acc.adv_mean += w * r.adv_mean, acc.is_ess += r.is_ess;
        if (r.is_max > acc.is_max) acc.is_max = r.is_max;
    }
    if (acc.tokens > 0) {
        const double w = (double)acc.tokens;
        acc.clip_frac /= w, acc.dual_clip_frac /= w, acc.approx_kl /= w, acc.mismatch_k1 /= w;
        acc.mismatch_k3 /= w, acc.is_mean /= w, acc.masked_frac /= w, acc.adv_mean /= w;
    }
    out->loss = acc;
    out->entropy_mean = ent_n ? ent_sum / (double)ent_n : 0.0;
    size_t np = 0;
    float *params = model_params(m, &np);
    float *grads = model_grads(m, &np);
    out->grad_norm = clip_grad_norm(grads, np, cfg->grad_clip);
    adamw_step(opt, params, grads, NULL, cfg->lr);
out:
    scratch_free(&sc);
    free(sr);
    free(mbs);
    free(rw);
    return st;
}
