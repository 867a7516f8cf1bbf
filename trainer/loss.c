/* loss.c - the policy losses with behaviour correction, aggregation, gradients and metrics (see loss.h). */
#include "trainer/loss.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOGRATIO_CLAMP 20.0f /* |log-ratio| before exp */
#define K3_CLAMP 10.0        /* |k3| per token */

/* ---------------------------------------------------------------- names */

static const char *const KIND_NAMES[LOSS__COUNT] = {
    [LOSS_PPO] = "ppo", [LOSS_CISPO] = "cispo", [LOSS_GSPO] = "gspo", [LOSS_M2PO] = "m2po"};
static const char *const M2PO_NAMES[M2PO__COUNT] = {[M2PO_HARMFUL] = "harmful", [M2PO_ALL] = "all"};
static const char *const CORR_NAMES[CORR__COUNT] = {
    [CORR_NONE] = "none", [CORR_TIS] = "tis",         [CORR_TIS_SEQ] = "tis_seq",
    [CORR_MIS] = "mis",   [CORR_MIS_SEQ] = "mis_seq", [CORR_BYPASS] = "bypass"};
static const char *const AGG_NAMES[AGG__COUNT] = {[AGG_TOKEN_MEAN] = "token-mean",
                                                  [AGG_SEQ_MEAN_TOKEN_MEAN] = "seq-mean-token-mean",
                                                  [AGG_SEQ_MEAN_TOKEN_SUM_NORM] = "seq-mean-token-sum-norm"};
static const char *const STALE_NAMES[STALE__COUNT] = {[STALE_NONE] = "none", [STALE_POLY] = "poly",
                                                      [STALE_HINGE] = "hinge"};

const char *loss_kind_name(loss_kind k) { return (unsigned)k < LOSS__COUNT ? KIND_NAMES[k] : "?"; }
const char *loss_correction_name(loss_correction c) { return (unsigned)c < CORR__COUNT ? CORR_NAMES[c] : "?"; }
const char *loss_agg_name(loss_agg a) { return (unsigned)a < AGG__COUNT ? AGG_NAMES[a] : "?"; }
const char *loss_stale_name(loss_stale s) { return (unsigned)s < STALE__COUNT ? STALE_NAMES[s] : "?"; }
const char *loss_m2po_set_name(loss_m2po_set s) { return (unsigned)s < M2PO__COUNT ? M2PO_NAMES[s] : "?"; }

/* Index of s in names[n], or -1; on -1 a failure naming `what`, the value and
 * the accepted names is recorded. */
static int parse_name(const char *s, const char *const *names, int n, const char *what)
{
    for (int i = 0; s && i < n; i++)
        if (!strcmp(s, names[i])) return i;
    char list[256];
    size_t off = 0;
    list[0] = '\0';
    for (int i = 0; i < n && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", i ? ", " : "", names[i]);
    tidal_fail(TIDAL_ERR_INVALID, "loss: unknown %s \"%s\" (want one of: %s)", what, s ? s : "(null)", list);
    return -1;
}

#define PARSE_FN(fn, type, names, count, what)                 \
    tidal_status fn(const char *s, type *out)                  \
    {                                                          \
        int i = parse_name(s, names, count, what);             \
        if (i < 0) return TIDAL_ERR_INVALID;                   \
        *out = (type)i;                                        \
        return TIDAL_OK;                                       \
    }
PARSE_FN(loss_kind_parse, loss_kind, KIND_NAMES, LOSS__COUNT, "loss")
PARSE_FN(loss_correction_parse, loss_correction, CORR_NAMES, CORR__COUNT, "correction")
PARSE_FN(loss_agg_parse, loss_agg, AGG_NAMES, AGG__COUNT, "aggregation")
PARSE_FN(loss_stale_parse, loss_stale, STALE_NAMES, STALE__COUNT, "staleness weighting")
PARSE_FN(loss_m2po_set_parse, loss_m2po_set, M2PO_NAMES, M2PO__COUNT, "m2po candidate set")

/* ---------------------------------------------------------------- config */

loss_cfg loss_cfg_defaults(void)
{
    return (loss_cfg){.kind = LOSS_PPO,
                      .m2po_tau = 0.04,
                      .m2po_set = M2PO_HARMFUL,
                      .correction = CORR_NONE,
                      .agg = AGG_TOKEN_MEAN,
                      .eps_lo = 0.2,
                      .eps_hi = 0.2,
                      .dual_clip = false,
                      .dual_clip_c = 3.0,
                      .tis_c = 2.0,
                      .mis_lo = 0.0,
                      .mis_hi = 5.0,
                      .sum_norm = 0.0,
                      .kl_beta = 0.0,
                      .stale = STALE_NONE,
                      .stale_a = 0.5,
                      .stale_b = 0.0};
}

loss_cfg loss_cfg_defaults_for(loss_kind k)
{
    loss_cfg c = loss_cfg_defaults();
    c.kind = k;
    if (k == LOSS_CISPO) c.eps_lo = 1.0, c.eps_hi = 0.28;         /* MiniMax-M1: no lower bound */
    if (k == LOSS_GSPO) c.eps_lo = 3e-4, c.eps_hi = 4e-4, c.agg = AGG_SEQ_MEAN_TOKEN_MEAN; /* GSPO paper */
    return c;
}

tidal_status loss_cfg_validate(const loss_cfg *c)
{
    if (!c) return tidal_fail(TIDAL_ERR_INVALID, "loss: no config");
    if ((unsigned)c->kind >= LOSS__COUNT) return tidal_fail(TIDAL_ERR_INVALID, "loss: kind %d out of range", (int)c->kind);
    if ((unsigned)c->m2po_set >= M2PO__COUNT)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: m2po_set %d out of range", (int)c->m2po_set);
    if (c->kind == LOSS_M2PO && !(c->m2po_tau > 0.0 && isfinite(c->m2po_tau)))
        return tidal_fail(TIDAL_ERR_INVALID, "loss: m2po_tau = %g must be finite and > 0", c->m2po_tau);
    if ((unsigned)c->correction >= CORR__COUNT)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: correction %d out of range", (int)c->correction);
    if ((unsigned)c->agg >= AGG__COUNT) return tidal_fail(TIDAL_ERR_INVALID, "loss: agg %d out of range", (int)c->agg);
    if ((unsigned)c->stale >= STALE__COUNT)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: stale %d out of range", (int)c->stale);
    if (!(c->eps_lo >= 0.0 && c->eps_lo <= 1.0))
        return tidal_fail(TIDAL_ERR_INVALID, "loss: eps_lo = %g must be in [0, 1]", c->eps_lo);
    if (!(c->eps_hi >= 0.0 && isfinite(c->eps_hi)))
        return tidal_fail(TIDAL_ERR_INVALID, "loss: eps_hi = %g must be finite and >= 0", c->eps_hi);
    if (c->dual_clip && !(c->dual_clip_c > 1.0 && isfinite(c->dual_clip_c)))
        return tidal_fail(TIDAL_ERR_INVALID, "loss: dual_clip_c = %g must be finite and > 1", c->dual_clip_c);
    if ((c->correction == CORR_TIS || c->correction == CORR_TIS_SEQ) && !(c->tis_c > 0.0 && isfinite(c->tis_c)))
        return tidal_fail(TIDAL_ERR_INVALID, "loss: tis_c = %g must be finite and > 0", c->tis_c);
    if ((c->correction == CORR_MIS || c->correction == CORR_MIS_SEQ) &&
        !(c->mis_lo >= 0.0 && c->mis_hi > c->mis_lo && isfinite(c->mis_hi)))
        return tidal_fail(TIDAL_ERR_INVALID, "loss: mis_lo = %g, mis_hi = %g: want 0 <= mis_lo < mis_hi, finite",
                          c->mis_lo, c->mis_hi);
    if (c->agg == AGG_SEQ_MEAN_TOKEN_SUM_NORM && !(c->sum_norm > 0.0 && isfinite(c->sum_norm)))
        return tidal_fail(TIDAL_ERR_INVALID,
                          "loss: sum_norm = %g must be > 0 for seq-mean-token-sum-norm (e.g. the max response length)",
                          c->sum_norm);
    if (!(c->kl_beta >= 0.0 && isfinite(c->kl_beta)))
        return tidal_fail(TIDAL_ERR_INVALID, "loss: kl_beta = %g must be finite and >= 0", c->kl_beta);
    if (c->stale != STALE_NONE) {
        if (!(c->stale_a >= 0.0 && isfinite(c->stale_a)))
            return tidal_fail(TIDAL_ERR_INVALID, "loss: stale_a = %g must be finite and >= 0", c->stale_a);
        if (!(c->stale_b >= 0.0 && isfinite(c->stale_b)))
            return tidal_fail(TIDAL_ERR_INVALID, "loss: stale_b = %g must be finite and >= 0", c->stale_b);
    }
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- batch checks */

/* The layout, the arrays config c needs, and the per-sample inputs. */
static tidal_status check_batch(const loss_cfg *c, const loss_batch *b)
{
    if (!b) return tidal_fail(TIDAL_ERR_INVALID, "loss: no batch");
    if (b->S < 1) return tidal_fail(TIDAL_ERR_INVALID, "loss: batch has %d samples", b->S);
    if (!b->cu_seqlens || !b->logp || !b->mask || !b->adv)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: batch lacks %s", !b->cu_seqlens ? "cu_seqlens"
                                                                     : !b->logp     ? "logp"
                                                                     : !b->mask     ? "mask"
                                                                                    : "adv");
    if (c->correction != CORR_BYPASS && !b->logp_prox)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: batch lacks logp_prox (needed unless correction is bypass)");
    if ((c->correction != CORR_NONE || c->kind == LOSS_M2PO) && !b->logp_beh)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: batch lacks logp_beh (needed by %s %s)",
                          c->kind == LOSS_M2PO ? "loss" : "correction",
                          c->kind == LOSS_M2PO ? "m2po" : loss_correction_name(c->correction));
    if (c->kl_beta > 0.0 && !b->logp_ref)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: batch lacks logp_ref (needed by kl_beta = %g)", c->kl_beta);
    if (c->stale != STALE_NONE && !b->staleness)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: batch lacks staleness (needed by stale %s)",
                          loss_stale_name(c->stale));
    if (b->cu_seqlens[0] != 0)
        return tidal_fail(TIDAL_ERR_INVALID, "loss: cu_seqlens[0] = %d, want 0", (int)b->cu_seqlens[0]);
    for (int i = 0; i < b->S; i++) {
        if (b->cu_seqlens[i + 1] < b->cu_seqlens[i])
            return tidal_fail(TIDAL_ERR_INVALID, "loss: cu_seqlens decreases at sample %d (%d after %d)", i,
                              (int)b->cu_seqlens[i + 1], (int)b->cu_seqlens[i]);
        if (!isfinite(b->adv[i]))
            return tidal_fail(TIDAL_ERR_INVALID, "loss: advantage of sample %d is %g (not finite)", i, b->adv[i]);
        if (c->stale != STALE_NONE && !(b->staleness[i] >= 0.0 && isfinite(b->staleness[i])))
            return tidal_fail(TIDAL_ERR_INVALID, "loss: staleness of sample %d is %g (want finite, >= 0)", i,
                              b->staleness[i]);
    }
    return TIDAL_OK;
}

/* f(s) before renormalisation. */
static double stale_weight(const loss_cfg *c, double s)
{
    switch (c->stale) {
    case STALE_POLY: return pow(1.0 + s, -c->stale_a);
    case STALE_HINGE: return s <= c->stale_b ? 1.0 : 1.0 / (c->stale_a * (s - c->stale_b) + 1.0);
    default: return 1.0;
    }
}

/* Masked tokens of sample i. */
static int64_t sample_tokens(const loss_batch *b, int i)
{
    int64_t n = 0;
    for (int32_t t = b->cu_seqlens[i]; t < b->cu_seqlens[i + 1]; t++) n += b->mask[t] != 0;
    return n;
}

/* This batch's counts (added to *n). */
static void count_batch(const loss_cfg *c, const loss_batch *b, loss_norm *n)
{
    for (int i = 0; i < b->S; i++) {
        int64_t k = sample_tokens(b, i);
        if (!k) continue;
        n->tokens += (double)k;
        n->seqs += 1.0;
        n->stale_sum += c->stale == STALE_NONE ? 1.0 : stale_weight(c, b->staleness[i]);
    }
}

tidal_status loss_norm_add(const loss_cfg *c, const loss_batch *b, loss_norm *n)
{
    TRY(loss_cfg_validate(c));
    TRY(check_batch(c, b));
    count_batch(c, b, n);
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- the loss */

/* a - b in fp32 as a log-ratio: non-finite -> 0 (and *bad set), then clamped
 * to ±LOGRATIO_CLAMP. *live is 1 when the result moves with a (not replaced,
 * not clamped; torch.clamp's convention, bounds inclusive), else 0. */
static inline float log_ratio(float a, float b, int *live, int *bad)
{
    float d = a - b;
    if (!isfinite(d)) {
        *bad = 1;
        *live = 0;
        return 0.0f;
    }
    *live = 1;
    if (d > LOGRATIO_CLAMP) {
        *live = 0;
        return LOGRATIO_CLAMP;
    }
    if (d < -LOGRATIO_CLAMP) {
        *live = 0;
        return -LOGRATIO_CLAMP;
    }
    return d;
}

static inline double clamp_k3(double k) { return k > K3_CLAMP ? K3_CLAMP : k < -K3_CLAMP ? -K3_CLAMP : k; }

/* M2PO's candidate test for a token with advantage A and d = lθ - lbeh. */
static inline bool m2po_candidate(const loss_cfg *c, double A, double d)
{
    return c->m2po_set == M2PO_ALL || (A > 0.0 && d > 0.0) || (A < 0.0 && d < 0.0);
}

typedef struct m2po_item {
    double d2;
    int32_t t;
} m2po_item;

static int by_d2_desc(const void *a, const void *b)
{
    const m2po_item *x = a, *y = b;
    if (x->d2 != y->d2) return x->d2 < y->d2 ? 1 : -1;
    return x->t < y->t ? -1 : x->t > y->t; /* ties: a total order, so the selection is deterministic */
}

tidal_status loss_m2po_select(const loss_cfg *c, const loss_batch *b, uint8_t *keep, int64_t *n_kept)
{
    TRY(loss_cfg_validate(c));
    TRY(check_batch(c, b));
    if (!b->logp_beh) return tidal_fail(TIDAL_ERR_INVALID, "loss: m2po selection needs logp_beh");
    const int32_t T = b->cu_seqlens[b->S];
    m2po_item *cand = malloc((size_t)(T ? T : 1) * sizeof *cand);
    if (!cand) return tidal_fail(TIDAL_ERR_NOMEM, "loss: out of memory for the m2po selection of %d tokens", (int)T);
    size_t n = 0;
    double sum = 0.0;
    int64_t kept = 0;
    for (int i = 0; i < b->S; i++)
        for (int32_t t = b->cu_seqlens[i]; t < b->cu_seqlens[i + 1]; t++) {
            keep[t] = b->mask[t] != 0;
            if (!keep[t]) continue;
            kept++;
            int live, bad = 0;
            const double d = log_ratio(b->logp[t], b->logp_beh[t], &live, &bad);
            if (!m2po_candidate(c, b->adv[i], d)) continue;
            cand[n++] = (m2po_item){.d2 = d * d, .t = t};
            sum += d * d;
        }
    qsort(cand, n, sizeof *cand, by_d2_desc);
    /* drop the largest d² while the remaining candidates' mean exceeds tau; at least one stays */
    size_t left = n;
    for (size_t k = 0; left > 1 && sum > c->m2po_tau * (double)left; k++, left--) {
        sum -= cand[k].d2;
        keep[cand[k].t] = 0;
        kept--;
    }
    free(cand);
    if (n_kept) *n_kept = kept;
    return TIDAL_OK;
}

/* The policy term of one token: its value *L and dL/du (u = exp(r), per token;
 * gspo passes its sequence ratio as u); *flat / *dual say which clip branch
 * took it. cispo is handled by the caller (its gradient is not through u). */
static inline void pg_clip(const loss_cfg *c, double A, double u, double lo, double hi, double *L, double *dLdu,
                           int *flat, int *dual)
{
    const double cu = u < lo ? lo : u > hi ? hi : u;
    const double L1 = -A * u, L2 = -A * cu;
    *L = L1, *dLdu = -A, *flat = 0, *dual = 0;
    if (L2 > L1) {
        *L = L2, *dLdu = 0.0, *flat = 1;
    } else if (c->dual_clip && A < 0.0 && L1 > -c->dual_clip_c * A) {
        *L = -c->dual_clip_c * A, *dLdu = 0.0, *flat = 1, *dual = 1;
    }
}

/* ---------------------------------------------------------------- loss_compute's parts
 *
 * loss_compute is one serial pass: per sample (sample_loss) the terms its
 * tokens share, then per token (token_loss) the ratio, the policy term of the
 * loss kind, the behaviour-correction weight, M2PO's drop and the KL term.
 * Every sum is added in that one order - token by token within a sample, a
 * sample's partial sums scaled into the batch's - which is what fixes the
 * result's bits.
 */

/* What one call works with: the config, the batch, the denominators in use
 * and what follows from the config. */
typedef struct loss_run {
    const loss_cfg *c;
    const loss_batch *b;
    const loss_norm *nrm;
    const uint8_t *keep;  /* M2PO's selection (NULL: every masked token is kept) */
    const float *lprox;   /* the proximal logprobs: lbeh in bypass mode */
    bool seq_w;           /* a sequence-level IS weight (tis_seq, mis_seq) */
    bool mismatch;        /* lbeh given and not bypass: correction weights and mismatch metrics */
    bool kl;              /* the KL-to-reference term */
    double lo, hi;        /* the ratio's clip range */
} loss_run;

/* The running sums a result's fields come from. */
typedef struct loss_sums {
    double pol_sum, kl_sum; /* aggregated (scaled) sums */
    double s_negr, s_mk1, s_mk3, s_w, s_w2, w_max, s_adv, s_k3;
    int64_t n_clip, n_dual, n_mis, n_bad, n_tok, n_seq;
} loss_sums;

/* What the tokens of one sample share. */
typedef struct seq_terms {
    double A;              /* the advantage */
    double f;              /* the staleness weight, renormalised */
    double scale;          /* d aggregate / d (per-token loss) */
    double w_seq;          /* the sequence-level IS weight (1 without) */
    bool seq_masked;       /* mis_seq zeroed the sequence */
    double s_seq, gL, gdLds; /* gspo: the sequence ratio, its clipped term and d term / d ratio */
    int gflat, gdual;      /* gspo: which clip branch took the sequence */
} seq_terms;

/* The denominators to use (*nrm: norm, or the batch's own counts in *local
 * when norm is NULL), refusing a batch with nothing masked in and a step norm
 * smaller than the batch. */
static tidal_status loss_denominators(const loss_cfg *c, const loss_batch *b, const loss_norm *norm, loss_norm *local,
                                      const loss_norm **nrm)
{
    count_batch(c, b, local);
    if (local->tokens == 0.0)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "loss: the batch's loss mask is entirely empty (%d samples, %d tokens, none masked in)",
                          b->S, (int)b->cu_seqlens[b->S]);
    if (norm && !(norm->tokens >= local->tokens && norm->seqs >= local->seqs && norm->stale_sum > 0.0))
        return tidal_fail(TIDAL_ERR_INVALID,
                          "loss: step norm (tokens %g, seqs %g, stale_sum %g) smaller than this batch's (%g, %g)",
                          norm->tokens, norm->seqs, norm->stale_sum, local->tokens, local->seqs);
    *nrm = norm ? norm : local;
    if (!((*nrm)->stale_sum > 0.0 && isfinite((*nrm)->stale_sum)))
        return tidal_fail(TIDAL_ERR_INVALID, "loss: staleness weights sum to %g", (*nrm)->stale_sum);
    return TIDAL_OK;
}

/* M2PO's selection for this call: the caller's (b->keep), or one made over
 * this batch into *own (freed by the caller; NULL when not needed). */
static tidal_status m2po_keep(const loss_cfg *c, const loss_batch *b, uint8_t **own, const uint8_t **keep)
{
    *own = NULL;
    *keep = c->kind == LOSS_M2PO ? b->keep : NULL;
    if (c->kind != LOSS_M2PO || *keep) return TIDAL_OK;
    const int32_t T = b->cu_seqlens[b->S];
    if (!(*own = malloc((size_t)(T ? T : 1))))
        return tidal_fail(TIDAL_ERR_NOMEM, "loss: out of memory for %d tokens", (int)T);
    tidal_status st = TIDAL_OK;
    TRY_GOTO(loss_m2po_select(c, b, *own, NULL));
    *keep = *own;
    return TIDAL_OK;
cleanup:
    free(*own);
    *own = NULL;
    return st;
}

/* The aggregation: d aggregate / d (per-token loss) for a sample of ni masked tokens. */
static double agg_scale(const loss_cfg *c, const loss_norm *nrm, int64_t ni)
{
    switch (c->agg) {
    case AGG_SEQ_MEAN_TOKEN_MEAN: return 1.0 / (fmax(nrm->seqs, 1.0) * (double)ni);
    case AGG_SEQ_MEAN_TOKEN_SUM_NORM: return 1.0 / c->sum_norm;
    default: return 1.0 / fmax(nrm->tokens, 1.0);
    }
}

/* tis_seq / mis_seq: the sequence's weight, exp of the clamped sum of its
 * token log-ratios lprox - lbeh, truncated (tis_seq) or zeroing the sequence
 * outside [mis_lo, mis_hi] (mis_seq, *masked set). */
static void seq_is_weight(const loss_cfg *c, const loss_batch *b, int32_t t0, int32_t t1, double *w_seq, bool *masked)
{
    double sd = 0.0;
    for (int32_t t = t0; t < t1; t++) {
        if (!b->mask[t]) continue;
        int live, bad = 0;
        sd += log_ratio(b->logp_prox[t], b->logp_beh[t], &live, &bad);
    }
    sd = fmin(fmax(sd, -(double)LOGRATIO_CLAMP), (double)LOGRATIO_CLAMP);
    *w_seq = exp(sd);
    if (c->correction == CORR_TIS_SEQ) {
        *w_seq = fmin(*w_seq, c->tis_c);
    } else if (*w_seq < c->mis_lo || *w_seq > c->mis_hi) {
        *masked = true;
        *w_seq = 0.0;
    }
}

/* gspo: the sequence ratio exp(mean of the clamped token log-ratios over its
 * ni masked tokens), clipped per sequence, into q. */
static void gspo_seq_ratio(const loss_run *R, int32_t t0, int32_t t1, int64_t ni, seq_terms *q)
{
    double rho = 0.0;
    for (int32_t t = t0; t < t1; t++) {
        if (!R->b->mask[t]) continue;
        int live, bad = 0;
        rho += log_ratio(R->b->logp[t], R->lprox[t], &live, &bad);
    }
    q->s_seq = exp(rho / (double)ni);
    pg_clip(R->c, q->A, q->s_seq, R->lo, R->hi, &q->gL, &q->gdLds, &q->gflat, &q->gdual);
}

/* The policy term of one token for the loss kind: its value *L and dL/dlθ
 * (before the weights f w and the aggregation), from the ratio u = exp(r), lθ
 * itself (cispo) and whether r moves with lθ (live); *flat / *dual say which
 * clip branch took it, *bad is set for a non-finite lθ (cispo). */
static void policy_term(const loss_run *R, const seq_terms *q, double lt, double u, int live, double *L, double *dL,
                        int *flat, int *dual, int *bad)
{
    const loss_cfg *c = R->c;
    const double A = q->A, lo = R->lo, hi = R->hi;
    switch (c->kind) {
    case LOSS_CISPO: { /* -sg(clip(u)) A lθ: the gradient flows through lθ itself */
        const double cu = u < lo ? lo : u > hi ? hi : u;
        *flat = cu != u;
        if (isfinite(lt)) {
            *L = -cu * A * lt, *dL = -cu * A;
        } else {
            *L = 0.0, *dL = 0.0, *bad = 1;
        }
        break;
    }
    case LOSS_GSPO: /* token form sg(s) exp(r - sg(r)): value s, d/dlθ_t = s where r is live */
        *L = q->gL, *dL = q->gdLds * q->s_seq * (double)live, *flat = q->gflat, *dual = q->gdual;
        break;
    case LOSS_M2PO: /* -A u unclipped, on the kept tokens only */
        *L = -A * u, *dL = -A * u * (double)live;
        break;
    default: {
        double dLdu;
        pg_clip(c, A, u, lo, hi, L, &dLdu, flat, dual);
        *dL = dLdu * u * (double)live;
        break;
    }
    }
}

/* The behaviour correction's weight of token t (no gradient), with the
 * mismatch metrics added to S; *zeroed is set when MIS zeroes the token. */
static double correction_weight(const loss_run *R, const seq_terms *q, int32_t t, loss_sums *S, int *bad, int *zeroed)
{
    const loss_cfg *c = R->c;
    const loss_batch *b = R->b;
    double w = 1.0;
    int dlive;
    const double d = log_ratio(b->logp_prox[t], b->logp_beh[t], &dlive, bad);
    const double ed = exp(d);
    S->s_mk1 += -d;
    S->s_mk3 += clamp_k3(ed - 1.0 - d);
    switch (c->correction) {
    case CORR_TIS: w = fmin(ed, c->tis_c); break;
    case CORR_MIS:
        w = ed;
        if (ed < c->mis_lo || ed > c->mis_hi) {
            w = 0.0;
            *zeroed = 1;
        }
        break;
    case CORR_TIS_SEQ:
    case CORR_MIS_SEQ: w = q->w_seq; break;
    default: break;
    }
    return w;
}

/* The KL-to-reference term of token t: k3 added to *kl_i and S, and its
 * d/dlθ (before the aggregation) returned; no gradient where k3 was clamped. */
static double kl_term(const loss_run *R, int32_t t, loss_sums *S, double *kl_i, int *bad)
{
    int klive;
    const double dr = log_ratio(R->b->logp[t], R->b->logp_ref[t], &klive, bad);
    const double e = exp(-dr);
    const double k3raw = e - 1.0 + dr, k3 = clamp_k3(k3raw);
    const int kin = klive && k3raw <= K3_CLAMP && k3raw >= -K3_CLAMP;
    *kl_i += k3;
    S->s_k3 += k3;
    return R->c->kl_beta * (1.0 - e) * (double)kin;
}

/* One masked token t: its weighted policy term added to *pol_i, its KL term
 * to *kl_i, the metrics to S; returns d loss / d lθ before the aggregation. */
static double token_loss(const loss_run *R, const seq_terms *q, int32_t t, loss_sums *S, double *pol_i, double *kl_i)
{
    const loss_batch *b = R->b;
    int bad = 0, live;
    const double r = log_ratio(b->logp[t], R->lprox[t], &live, &bad);
    const double u = exp(r);
    double L, dL;
    int flat = 0, dual = 0;
    policy_term(R, q, b->logp[t], u, live, &L, &dL, &flat, &dual, &bad);
    S->n_clip += flat;
    S->n_dual += dual;

    int zeroed = q->seq_masked; /* by masked IS or by M2PO */
    const double w = R->mismatch ? correction_weight(R, q, t, S, &bad, &zeroed) : 1.0;
    const int dropped = R->keep && !R->keep[t]; /* by M2PO: no loss, no gradient, like masked IS */
    zeroed |= dropped;
    S->n_mis += zeroed;

    const double fw = dropped ? 0.0 : q->f * w;
    *pol_i += fw * L;
    double g = fw * dL;
    if (R->kl) g += kl_term(R, t, S, kl_i, &bad);

    S->s_negr += -r;
    S->s_w += w;
    S->s_w2 += w * w;
    if (w > S->w_max) S->w_max = w;
    S->s_adv += q->A;
    S->n_bad += bad;
    return g;
}

/* Sample i with ni > 0 masked tokens: its shared terms, then every token
 * (grad[t] = d loss / d lθ_t, 0 where masked out); its policy and KL sums,
 * scaled by the aggregation, added to S. */
static void sample_loss(const loss_run *R, int i, int64_t ni, loss_sums *S, float *grad)
{
    const loss_cfg *c = R->c;
    const loss_batch *b = R->b;
    const int32_t t0 = b->cu_seqlens[i], t1 = b->cu_seqlens[i + 1];
    seq_terms q = {.A = b->adv[i], .w_seq = 1.0, .s_seq = 1.0};
    q.f = c->stale == STALE_NONE ? 1.0 : stale_weight(c, b->staleness[i]) * R->nrm->seqs / R->nrm->stale_sum;
    q.scale = agg_scale(c, R->nrm, ni);
    if (R->seq_w) seq_is_weight(c, b, t0, t1, &q.w_seq, &q.seq_masked);
    if (c->kind == LOSS_GSPO) gspo_seq_ratio(R, t0, t1, ni, &q);

    double pol_i = 0.0, kl_i = 0.0;
    for (int32_t t = t0; t < t1; t++) {
        if (!b->mask[t]) {
            if (grad) grad[t] = 0.0f;
            continue;
        }
        const double g = token_loss(R, &q, t, S, &pol_i, &kl_i);
        if (grad) grad[t] = (float)(g * q.scale);
    }
    S->pol_sum += pol_i * q.scale;
    S->kl_sum += kl_i * q.scale;
}

/* The result from the sums: the losses, and the metrics as means over the masked tokens. */
static void fill_result(const loss_cfg *c, const loss_sums *S, loss_result *out)
{
    const double N = (double)S->n_tok;
    memset(out, 0, sizeof *out);
    out->policy_loss = S->pol_sum;
    out->kl_loss = c->kl_beta * S->kl_sum;
    out->loss = out->policy_loss + out->kl_loss;
    out->tokens = S->n_tok;
    out->seqs = S->n_seq;
    out->clip_frac = (double)S->n_clip / N;
    out->dual_clip_frac = (double)S->n_dual / N;
    out->approx_kl = S->s_negr / N;
    out->mismatch_k1 = S->s_mk1 / N;
    out->mismatch_k3 = S->s_mk3 / N;
    out->is_mean = S->s_w / N;
    out->is_max = S->w_max;
    out->is_ess = S->s_w2 > 0.0 ? S->s_w * S->s_w / S->s_w2 : 0.0;
    out->masked_frac = (double)S->n_mis / N;
    out->adv_mean = S->s_adv / N;
    out->ref_kl = c->kl_beta > 0.0 ? S->s_k3 / N : 0.0;
    out->nonfinite = S->n_bad;
}

tidal_status loss_compute(const loss_cfg *c, const loss_batch *b, const loss_norm *norm, float *grad,
                          loss_result *out)
{
    TRY(loss_cfg_validate(c));
    TRY(check_batch(c, b));
    if (!out) return tidal_fail(TIDAL_ERR_INVALID, "loss: no result struct");
    loss_norm local = {0};
    const loss_norm *nrm = NULL;
    TRY(loss_denominators(c, b, norm, &local, &nrm));
    const bool bypass = c->correction == CORR_BYPASS;
    loss_run R = {.c = c,
                  .b = b,
                  .nrm = nrm,
                  .lprox = bypass ? b->logp_beh : b->logp_prox,
                  .seq_w = c->correction == CORR_TIS_SEQ || c->correction == CORR_MIS_SEQ,
                  .mismatch = b->logp_beh && !bypass,
                  .kl = c->kl_beta > 0.0,
                  .lo = 1.0 - c->eps_lo,
                  .hi = 1.0 + c->eps_hi};
    uint8_t *own_keep = NULL; /* m2po without a caller's selection: select over this batch */
    TRY(m2po_keep(c, b, &own_keep, &R.keep));

    loss_sums S = {0};
    for (int i = 0; i < b->S; i++) {
        const int32_t t0 = b->cu_seqlens[i], t1 = b->cu_seqlens[i + 1];
        const int64_t ni = sample_tokens(b, i);
        if (!ni) {
            if (grad) memset(grad + t0, 0, (size_t)(t1 - t0) * sizeof *grad);
            continue;
        }
        S.n_seq++;
        S.n_tok += ni;
        sample_loss(&R, i, ni, &S, grad);
    }
    fill_result(c, &S, out);
    free(own_keep);
    return TIDAL_OK;
}
