/* loss.h - the RL policy loss over a packed batch: value, d loss / d lθ per token, and metrics.
 *
 * The model (model/model.h) gives per-token logprobs lθ and takes d(loss)/d(logprob)
 * in its backward, so the whole RL objective lives here and works on per-token
 * arrays (docs/training.md "The losses"; docs/architecture.md "Losses and advantages").
 *
 * Per loss-masked token t of sample i (A_i the sample's advantage):
 *   r   = lθ - lprox  (fp32; non-finite -> 0; clamped to [-20, 20]),  u = exp(r)
 *   pg  = the policy term of the loss kind (loss_kind below), e.g. for ppo
 *         max(-A u, -A clip(u, 1 - eps_lo, 1 + eps_hi)), then min(ppo, -c A)
 *         when dual clip is on and A < 0
 *   w   = behaviour correction from lprox - lbeh (no gradient; see loss_correction)
 *   L   = f_i * w * pg  (+ kl_beta * k3(lθ - lref), neither weighted nor IS-masked)
 * with f_i the optional staleness weight of the sample (mean 1 over the batch),
 * then aggregated (loss_agg). lprox, lbeh, lref, w and f carry no gradient: the
 * gradient is d L / d lθ only, 0 on flat (clipped, dual-clipped, clamped) branches
 * and on masked-out tokens.
 *
 * Masked-out positions never reach a sum: they are skipped, so their logprobs
 * may be -inf or NaN (prompt tokens, padding). Denominators are counts of the
 * loss mask taken before any IS masking (MIS never inflates the other tokens).
 *
 * Everything is one serial pass per sample on the caller's buffers; nothing is
 * allocated. Per-token values are computed in double from fp32 log-ratios;
 * sums are in double.
 */
#ifndef TIDAL_TRAINER_LOSS_H
#define TIDAL_TRAINER_LOSS_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"

/* The per-token policy term pg; job-spec `trainer.loss`:
 *   ppo    max(-A u, -A clip(u, 1 - eps_lo, 1 + eps_hi)), dual clip optional
 *   cispo  -sg(clip(u, 1 - eps_lo, 1 + eps_hi)) A lθ: the clipped ratio is a
 *          weight, so every token keeps its gradient -clip(u) A (a non-finite
 *          lθ contributes 0 and counts as non-finite)
 *   gspo   the ppo form on the sequence ratio s_i = exp(ρ_i),
 *          ρ_i = Σ_t m r_t / n_i (n_i the sample's masked tokens), in its
 *          token form sg(s_i) exp(r_t - sg(r_t)): every token of sample i has
 *          the value of s_i, the clip is decided per sequence, and the gradient
 *          of token t is dpg/ds s_i (0 where r_t was clamped)
 *   m2po   -A u with no clip, on the tokens M2PO keeps (loss_m2po_select):
 *          the others are zeroed like masked IS; needs lbeh
 * loss_cfg_defaults_for() gives each kind its usual clip range and aggregation. */
typedef enum { LOSS_PPO = 0, LOSS_CISPO, LOSS_GSPO, LOSS_M2PO, LOSS__COUNT } loss_kind;

/* M2PO's candidate tokens for masking (`trainer.m2po_candidates`), with
 * d = lθ - lbeh: harmful  (A > 0 and d > 0) or (A < 0 and d < 0) (the paper);
 * all  every loss-masked token (AReaL). */
typedef enum { M2PO_HARMFUL = 0, M2PO_ALL, M2PO__COUNT } loss_m2po_set;

/* Behaviour correction; job-spec `trainer.correction`. With δ = lprox - lbeh
 * (non-finite -> 0, clamped to [-20, 20]):
 *   none     w = 1
 *   tis      w_t = min(exp(δ_t), tis_c)                              token TIS
 *   tis_seq  w_i = min(exp(clamp(Σ_t m δ_t)), tis_c), on every token  sequence TIS
 *   mis      w_t = exp(δ_t), and 0 where it is outside [mis_lo, mis_hi]  token masked IS
 *   mis_seq  w_i = exp(clamp(Σ_t m δ_t)), the whole sequence 0 where outside [mis_lo, mis_hi]
 *   bypass   lprox := lbeh (no recompute pass; the ratio is anchored on the
 *            behaviour policy), w = 1; batch.logp_prox is not read */
typedef enum { CORR_NONE = 0, CORR_TIS, CORR_TIS_SEQ, CORR_MIS, CORR_MIS_SEQ, CORR_BYPASS, CORR__COUNT } loss_correction;

/* How per-token losses become one number:
 *   token-mean               Σ_i Σ_t m L / N, N = masked tokens of the whole batch
 *   seq-mean-token-mean      mean over sequences with >= 1 masked token of Σ_t m L / n_i
 *   seq-mean-token-sum-norm  Σ_i Σ_t m L / sum_norm (Dr. GRPO; e.g. the max response length) */
typedef enum { AGG_TOKEN_MEAN = 0, AGG_SEQ_MEAN_TOKEN_MEAN, AGG_SEQ_MEAN_TOKEN_SUM_NORM, AGG__COUNT } loss_agg;

/* Optional staleness weighting of samples (s = staleness, >= 0):
 *   none   f = 1
 *   poly   f(s) = (1 + s)^-a                       (FedAsync; a = 0.5 is 1/sqrt(1+s))
 *   hinge  f(s) = 1 if s <= b else 1 / (a (s - b) + 1)
 * renormalised so the weights of the batch's sequences (those with >= 1 masked
 * token) have mean 1. */
typedef enum { STALE_NONE = 0, STALE_POLY, STALE_HINGE, STALE__COUNT } loss_stale;

typedef struct loss_cfg {
    loss_kind kind;             /* LOSS_PPO */
    double m2po_tau;            /* 0.04: > 0; M2PO's bound on the mean of d² over the kept candidates */
    loss_m2po_set m2po_set;     /* M2PO_HARMFUL */
    loss_correction correction; /* CORR_NONE */
    loss_agg agg;               /* AGG_TOKEN_MEAN */
    double eps_lo;              /* 0.2: lower clip 1 - eps_lo, in [0, 1] */
    double eps_hi;              /* 0.2: upper clip 1 + eps_hi, >= 0 (DAPO: 0.28) */
    bool dual_clip;             /* false */
    double dual_clip_c;         /* 3: > 1; caps the loss at -c A when A < 0 */
    double tis_c;               /* 2: > 0; TIS truncation */
    double mis_lo, mis_hi;      /* 0, 5: 0 <= lo < hi; MIS keeps w in [lo, hi] */
    double sum_norm;            /* 0: must be > 0 for seq-mean-token-sum-norm */
    double kl_beta;             /* 0 (off): >= 0; weight of k3(lθ - lref) in the loss */
    loss_stale stale;           /* STALE_NONE */
    double stale_a;             /* 0.5: >= 0 (poly exponent / hinge slope) */
    double stale_b;             /* 0: >= 0 (hinge knee) */
} loss_cfg;

/* The defaults above (the ppo ones). */
loss_cfg loss_cfg_defaults(void);
/* The defaults with kind k and its usual clip range and aggregation: ppo and
 * m2po as loss_cfg_defaults(); cispo eps_lo 1 (no lower bound), eps_hi 0.28;
 * gspo eps 3e-4 / 4e-4 and seq-mean-token-mean. */
loss_cfg loss_cfg_defaults_for(loss_kind k);

/* Check every field; TIDAL_ERR_INVALID naming the first bad one and its value. */
tidal_status loss_cfg_validate(const loss_cfg *c);

/* Job-spec names: "ppo", "cispo", "gspo", "m2po"; "harmful", "all"; "none", "tis", "tis_seq", "mis", "mis_seq",
 * "bypass"; "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm";
 * "none", "poly", "hinge". Parsing is exact; an unknown name is
 * TIDAL_ERR_INVALID naming it and the accepted ones (*out untouched). A name
 * of an out-of-range value is "?". */
const char *loss_kind_name(loss_kind k);
const char *loss_correction_name(loss_correction c);
const char *loss_agg_name(loss_agg a);
const char *loss_stale_name(loss_stale s);
const char *loss_m2po_set_name(loss_m2po_set s);
tidal_status loss_m2po_set_parse(const char *s, loss_m2po_set *out);
tidal_status loss_kind_parse(const char *s, loss_kind *out);
tidal_status loss_correction_parse(const char *s, loss_correction *out);
tidal_status loss_agg_parse(const char *s, loss_agg *out);
tidal_status loss_stale_parse(const char *s, loss_stale *out);

/* A packed batch of S samples over T = cu_seqlens[S] token positions (the
 * same layout as model_batch; the arrays are the caller's and only read). */
typedef struct loss_batch {
    int S;                      /* samples, >= 1 */
    const int32_t *cu_seqlens;  /* [S+1]: 0 = c0 <= c1 <= ... <= cS = T */
    const float *logp;          /* [T] lθ, the live forward's logprobs */
    const float *logp_prox;     /* [T] proximal (old) logprobs; not read (may be NULL) in bypass mode */
    const float *logp_beh;      /* [T] the rollout worker's logprobs; may be NULL only with correction none
                                 * and a loss other than m2po (the mismatch metrics are 0 then) */
    const float *logp_ref;      /* [T] reference model's logprobs; required when kl_beta > 0, else not read */
    const uint8_t *mask;        /* [T] loss mask: nonzero on tokens the policy generated */
    const double *adv;          /* [S] one advantage per sample, finite */
    const double *staleness;    /* [S] per-sample staleness (>= 0); required when stale != none, else not read */
    const uint8_t *keep;        /* [T] m2po only: the tokens M2PO keeps, from loss_m2po_select() over the
                                 * whole update; NULL: selected over this batch alone */
} loss_batch;

/* M2PO's token selection over batch b (docs/training.md "The losses"): with
 * d = lθ - lbeh (fp32; non-finite -> 0; clamped to ±20), candidates (cfg
 * m2po_set) are dropped greedily, largest d² first, until the mean of d² over
 * the remaining candidates is <= m2po_tau; at least one candidate always
 * stays. keep[T] gets 1 on every loss-masked token kept, 0 elsewhere; *n_kept
 * (may be NULL) the kept tokens. The selection must see a whole optimizer
 * update at once, so a step split into micro-batches selects over the update
 * and passes keep to each loss_compute(). Allocates its sort scratch. */
tidal_status loss_m2po_select(const loss_cfg *c, const loss_batch *b, uint8_t *keep, int64_t *n_kept);

/* The step-wide denominators, for a batch split into micro-batches: token-mean
 * and the staleness renormalisation must use the whole batch's counts. Zero it,
 * loss_norm_add() every micro-batch, then pass it to each loss_compute(). */
typedef struct loss_norm {
    double tokens;              /* masked tokens */
    double seqs;                /* sequences with >= 1 masked token */
    double stale_sum;           /* Σ f(s_i) over those sequences (= seqs without weighting) */
} loss_norm;

/* Add batch b's counts to *n. Checks the config and the batch's layout (as
 * loss_compute does). A micro-batch with nothing masked in adds nothing here,
 * and loss_compute refuses it: skip it. */
tidal_status loss_norm_add(const loss_cfg *c, const loss_batch *b, loss_norm *n);

/* What a step reports (docs/training.md "Metrics"). Means are over this call's
 * masked tokens (m = 1) unless said otherwise. */
typedef struct loss_result {
    double loss;                /* policy_loss + kl_loss */
    double policy_loss;         /* the aggregated f w ppo */
    double kl_loss;             /* kl_beta * agg(k3(lθ - lref)); 0 when off */
    int64_t tokens;             /* masked tokens */
    int64_t seqs;               /* sequences with >= 1 masked token */
    double clip_frac;           /* tokens on a flat clip branch (eps or dual clip), gradient 0; cispo: tokens
                                 * whose weight was clipped (they keep a gradient) */
    double dual_clip_frac;      /* of which the dual clip */
    double approx_kl;           /* mean of -r = lprox - lθ (k1 of the update) */
    double mismatch_k1;         /* mean of lbeh - lprox: k1 of KL(beh || prox) on tokens sampled from beh */
    double mismatch_k3;         /* mean of exp(δ) - 1 - δ, δ = lprox - lbeh clamped to ±20, each term to ≤ 10 */
    double is_mean, is_max;     /* of the applied weight w (after TIS / MIS); 1, 1 without correction */
    double is_ess;              /* (Σw)² / Σw², a token count in [0, tokens] */
    double masked_frac;         /* tokens zeroed by MIS or by M2PO */
    double adv_mean;            /* token mean of the broadcast advantage */
    double ref_kl;              /* mean k3(lθ - lref) when kl_beta > 0, else 0 */
    int64_t nonfinite;          /* masked tokens with a non-finite log-ratio (replaced by 0) */
} loss_result;

/* The loss of batch b under config c (validated here), d loss / d lθ into
 * grad[T] (0 on masked-out tokens; NULL: value only) and the metrics into *out.
 * norm: the step-wide denominators from loss_norm_add() when b is one
 * micro-batch of a step (then out->loss is this micro-batch's share, and the
 * shares add up to the step's loss); NULL: b is the whole step.
 * Errors (TIDAL_ERR_INVALID, naming what is wrong; grad and *out then
 * unspecified): a bad config, a bad layout (cu_seqlens not starting at 0 or
 * decreasing), a missing array the config needs, a non-finite advantage or
 * negative staleness (naming the sample), and a batch whose mask is entirely
 * empty. */
tidal_status loss_compute(const loss_cfg *c, const loss_batch *b, const loss_norm *norm, float *grad,
                          loss_result *out);

#endif
