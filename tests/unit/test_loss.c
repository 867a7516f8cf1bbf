/* test_loss.c - advantages (trainer/advantage.h) and the policy loss (trainer/loss.h).
 *
 * Hand-computed cases for every advantage kind and every branch of the loss:
 * each side of the PPO clip, the dual clip, each behaviour correction, each
 * aggregation, the KL and staleness terms, masked positions holding -inf/NaN,
 * the errors; then a check of d loss / d lθ against central finite differences
 * of the scalar loss over random batches and many configurations, skipping
 * tokens near a clip kink.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "trainer/advantage.h"
#include "trainer/loss.h"

#define NEAR(a, b, tol) (fabs((double)(a) - (double)(b)) <= (tol) * (1.0 + fabs((double)(b))))
#define CHECK_NEAR(a, b, tol) CHECK_MSG(NEAR(a, b, tol), "%s = %.10g, want %.10g", #a, (double)(a), (double)(b))

/* ---------------------------------------------------------------- advantages */

static void test_adv_parse(void)
{
    static const char *names[] = {"grpo", "drgrpo", "rloo", "reinforce_pp"};
    for (int k = 0; k < ADV__COUNT; k++) {
        adv_kind got = ADV__COUNT;
        CHECK_OK(adv_kind_parse(names[k], &got));
        CHECK(got == (adv_kind)k);
        CHECK(!strcmp(adv_kind_name(got), names[k]));
    }
    adv_kind got = ADV_RLOO;
    CHECK_STATUS(adv_kind_parse("GRPO", &got), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "\"GRPO\"") != NULL);
    CHECK(got == ADV_RLOO);
    CHECK_STATUS(adv_kind_parse(NULL, &got), TIDAL_ERR_INVALID);
    CHECK(!strcmp(adv_kind_name((adv_kind)99), "?"));
}

static void test_adv_grpo(void)
{
    const double r[4] = {1, 0, 0, 1};
    double a[4];
    CHECK_OK(adv_group(ADV_GRPO, r, 4, a));
    const double sd = sqrt(1.0 / 3.0); /* unbiased: 4 * 0.25 / 3 */
    CHECK_NEAR(a[0], 0.5 / (sd + 1e-6), 1e-12);
    CHECK_NEAR(a[1], -0.5 / (sd + 1e-6), 1e-12);
    CHECK_NEAR(a[3], a[0], 0);
    CHECK_OK(adv_group(ADV_DRGRPO, r, 4, a));
    CHECK_NEAR(a[0], 0.5, 1e-15);
    CHECK_NEAR(a[2], -0.5, 1e-15);
    /* zero variance: 0 / (0 + 1e-6) */
    const double z[3] = {3, 3, 3};
    CHECK_OK(adv_group(ADV_GRPO, z, 3, a));
    CHECK(a[0] == 0.0 && a[1] == 0.0 && a[2] == 0.0);
    /* in place */
    double io[2] = {2, 0};
    CHECK_OK(adv_group(ADV_GRPO, io, 2, io));
    CHECK_NEAR(io[0], 1.0 / (sqrt(2.0) + 1e-6), 1e-12);
    CHECK_NEAR(io[1], -io[0], 0);
}

static void test_adv_rloo(void)
{
    const double r[4] = {1, 0, 0, 1};
    double a[4];
    CHECK_OK(adv_group(ADV_RLOO, r, 4, a));
    CHECK_NEAR(a[0], 1.0 - 1.0 / 3.0, 1e-15); /* R_0 - mean of the other three */
    CHECK_NEAR(a[1], 0.0 - 2.0 / 3.0, 1e-15);
    const double r3[3] = {2, 5, -1};
    CHECK_OK(adv_group(ADV_RLOO, r3, 3, a));
    CHECK_NEAR(a[0], 2.0 - 2.0, 1e-15);
    CHECK_NEAR(a[1], 5.0 - 0.5, 1e-15);
    CHECK_NEAR(a[2], -1.0 - 3.5, 1e-15);
}

static void test_adv_group_of_one(void)
{
    const double r = 7.5;
    for (int k = 0; k < ADV__COUNT; k++) {
        double a = 123;
        CHECK_OK(adv_group((adv_kind)k, &r, 1, &a));
        CHECK(a == 0.0);
    }
    double a;
    CHECK_STATUS(adv_group(ADV_GRPO, &r, 0, &a), TIDAL_ERR_INVALID);
    const double bad[3] = {1, NAN, 0};
    double out[3] = {9, 9, 9};
    CHECK_STATUS(adv_group(ADV_RLOO, bad, 3, out), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "sample 1") != NULL);
    CHECK(out[0] == 9 && out[2] == 9);
}

static void test_adv_reinforce_pp(void)
{
    /* two groups: R - mean per group, then whitened over all four */
    double a[4];
    const double g0[2] = {1, 0}, g1[2] = {5, 3};
    CHECK_OK(adv_group(ADV_REINFORCE_PP, g0, 2, a));
    CHECK_OK(adv_group(ADV_REINFORCE_PP, g1, 2, a + 2));
    CHECK(a[0] == 0.5 && a[1] == -0.5 && a[2] == 1.0 && a[3] == -1.0);
    CHECK_OK(adv_whiten(a, 4));
    const double s = sqrt(0.625 + 1e-8); /* population variance (0.25 + 0.25 + 1 + 1) / 4 */
    CHECK_NEAR(a[0], 0.5 / s, 1e-12);
    CHECK_NEAR(a[3], -1.0 / s, 1e-12);
    double m = 0, v = 0;
    for (int i = 0; i < 4; i++) m += a[i] / 4;
    for (int i = 0; i < 4; i++) v += (a[i] - m) * (a[i] - m) / 4;
    CHECK(fabs(m) < 1e-15);
    CHECK_NEAR(v, 1.0, 1e-7);
    /* a constant batch whitens to 0, not NaN */
    double c[3] = {2, 2, 2};
    CHECK_OK(adv_whiten(c, 3));
    CHECK(c[0] == 0.0 && c[1] == 0.0 && c[2] == 0.0);
    CHECK_STATUS(adv_whiten(c, 0), TIDAL_ERR_INVALID);
    double inf[2] = {1, INFINITY};
    CHECK_STATUS(adv_whiten(inf, 2), TIDAL_ERR_INVALID);
}

static void test_adv_dapo_helpers(void)
{
    const double eq[3] = {1, 1, 1}, ne[3] = {1, 1, 0};
    CHECK(adv_group_zero_variance(eq, 3));
    CHECK(!adv_group_zero_variance(ne, 3));
    CHECK(adv_group_zero_variance(ne, 1));
    CHECK(adv_group_zero_variance(ne, 0));
    /* overlong: L_max 100, buffer 20, factor 1 */
    CHECK(adv_overlong_penalty(50, 100, 20, 1) == 0.0);
    CHECK(adv_overlong_penalty(80, 100, 20, 1) == 0.0);
    CHECK_NEAR(adv_overlong_penalty(90, 100, 20, 1), -0.5, 1e-15);
    CHECK_NEAR(adv_overlong_penalty(100, 100, 20, 2), -2.0, 1e-15);
    CHECK(adv_overlong_penalty(100, 100, 0, 1) == 0.0);
}

/* ---------------------------------------------------------------- loss helpers */

/* One sample of n tokens (all masked in), the same A. */
static tidal_status run1(const loss_cfg *c, int n, const float *lp, const float *lprox, const float *lbeh, double A,
                         float *g, loss_result *r)
{
    static uint8_t m[64];
    memset(m, 1, sizeof m);
    int32_t cu[2] = {0, n};
    loss_batch b = {.S = 1, .cu_seqlens = cu, .logp = lp, .logp_prox = lprox, .logp_beh = lbeh, .mask = m, .adv = &A};
    return loss_compute(c, &b, NULL, g, r);
}

/* One token with log-ratio lθ - lprox = x (lθ = -1 + x, lprox = -1), A. */
static tidal_status tok(const loss_cfg *c, double x, double A, float *g, loss_result *r)
{
    float lp = (float)(-1.0 + x), lprox = -1.0f;
    return run1(c, 1, &lp, &lprox, NULL, A, g, r);
}

static void test_names(void)
{
    loss_kind k = LOSS__COUNT;
    CHECK_OK(loss_kind_parse("ppo", &k));
    CHECK(k == LOSS_PPO);
    static const char *corr[] = {"none", "tis", "tis_seq", "mis", "mis_seq", "bypass"};
    for (int i = 0; i < CORR__COUNT; i++) {
        loss_correction v = CORR__COUNT;
        CHECK_OK(loss_correction_parse(corr[i], &v));
        CHECK(v == (loss_correction)i && !strcmp(loss_correction_name(v), corr[i]));
    }
    static const char *agg[] = {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"};
    for (int i = 0; i < AGG__COUNT; i++) {
        loss_agg v = AGG__COUNT;
        CHECK_OK(loss_agg_parse(agg[i], &v));
        CHECK(v == (loss_agg)i && !strcmp(loss_agg_name(v), agg[i]));
    }
    static const char *st[] = {"none", "poly", "hinge"};
    for (int i = 0; i < STALE__COUNT; i++) {
        loss_stale v = STALE__COUNT;
        CHECK_OK(loss_stale_parse(st[i], &v));
        CHECK(v == (loss_stale)i && !strcmp(loss_stale_name(v), st[i]));
    }
    loss_correction v = CORR_MIS;
    CHECK_STATUS(loss_correction_parse("is", &v), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "correction \"is\"") && strstr(tidal_errmsg(), "tis_seq"));
    CHECK(v == CORR_MIS);
    CHECK_STATUS(loss_kind_parse("grpo", &k), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "\"grpo\""));
    loss_agg a;
    CHECK_STATUS(loss_agg_parse("token_mean", &a), TIDAL_ERR_INVALID);
    CHECK(!strcmp(loss_correction_name((loss_correction)-1), "?"));
}

static void test_validate(void)
{
    loss_cfg d = loss_cfg_defaults();
    CHECK_OK(loss_cfg_validate(&d));
    CHECK(d.eps_lo == 0.2 && d.eps_hi == 0.2 && d.dual_clip_c == 3.0 && d.tis_c == 2.0 && d.mis_hi == 5.0);
    struct { const char *field; loss_cfg c; } bad[] = {
        {"eps_lo", d}, {"eps_hi", d}, {"dual_clip_c", d}, {"tis_c", d}, {"mis_lo", d},
        {"sum_norm", d}, {"kl_beta", d}, {"stale_a", d}, {"correction", d}};
    bad[0].c.eps_lo = -0.1;
    bad[1].c.eps_hi = NAN;
    bad[2].c.dual_clip = true, bad[2].c.dual_clip_c = 1.0;
    bad[3].c.correction = CORR_TIS_SEQ, bad[3].c.tis_c = 0;
    bad[4].c.correction = CORR_MIS, bad[4].c.mis_lo = 6;
    bad[5].c.agg = AGG_SEQ_MEAN_TOKEN_SUM_NORM;
    bad[6].c.kl_beta = -1;
    bad[7].c.stale = STALE_POLY, bad[7].c.stale_a = -0.5;
    bad[8].c.correction = (loss_correction)42;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(loss_cfg_validate(&bad[i].c), TIDAL_ERR_INVALID);
        CHECK_MSG(strstr(tidal_errmsg(), bad[i].field) != NULL, "%s: %s", bad[i].field, tidal_errmsg());
    }
    /* a disabled option's parameter is not checked */
    loss_cfg off = d;
    off.dual_clip_c = 0.5;
    off.tis_c = -1;
    CHECK_OK(loss_cfg_validate(&off));
}

/* ---------------------------------------------------------------- PPO branches */

static void test_ppo_unclipped(void)
{
    loss_cfg c = loss_cfg_defaults();
    float g;
    loss_result r;
    CHECK_OK(tok(&c, 0.1, 1.0, &g, &r));
    const double u = exp((double)(float)(-0.9) - (-1.0)); /* the fp32 inputs' ratio */
    CHECK_NEAR(r.loss, -u, 1e-7);
    CHECK_NEAR(g, -u, 1e-6);
    CHECK(r.clip_frac == 0.0 && r.tokens == 1 && r.seqs == 1);
    CHECK_NEAR(r.approx_kl, -0.1, 1e-6);
    CHECK(r.is_mean == 1.0 && r.is_max == 1.0 && r.is_ess == 1.0 && r.adv_mean == 1.0);
    /* A > 0 below 1 - eps: the unclipped branch is the max, gradient flows */
    CHECK_OK(tok(&c, -0.3, 1.0, &g, &r));
    CHECK_NEAR(r.loss, -exp(-0.3), 1e-6);
    CHECK_NEAR(g, -exp(-0.3), 1e-6);
    CHECK(r.clip_frac == 0.0);
    /* A < 0 above 1 + eps: likewise */
    CHECK_OK(tok(&c, 0.3, -2.0, &g, &r));
    CHECK_NEAR(r.loss, 2.0 * exp(0.3), 1e-6);
    CHECK_NEAR(g, 2.0 * exp(0.3), 1e-6);
    CHECK(r.clip_frac == 0.0);
    /* A = 0: no loss, no gradient, not clipped */
    CHECK_OK(tok(&c, 0.5, 0.0, &g, &r));
    CHECK(r.loss == 0.0 && g == 0.0f && r.clip_frac == 0.0);
}

static void test_ppo_clipped(void)
{
    loss_cfg c = loss_cfg_defaults();
    float g = 1;
    loss_result r;
    /* A > 0, u = e^0.3 > 1.2: L = -A (1 + eps_hi), flat */
    CHECK_OK(tok(&c, 0.3, 1.5, &g, &r));
    CHECK_NEAR(r.loss, -1.5 * 1.2, 1e-12);
    CHECK(g == 0.0f && r.clip_frac == 1.0 && r.dual_clip_frac == 0.0);
    /* A < 0, u = e^-0.3 < 0.8: L = -A (1 - eps_lo), flat */
    CHECK_OK(tok(&c, -0.3, -1.0, &g, &r));
    CHECK_NEAR(r.loss, 0.8, 1e-12);
    CHECK(g == 0.0f && r.clip_frac == 1.0);
    /* asymmetric clip-higher: eps_lo 0.1, eps_hi 0.28 */
    c.eps_lo = 0.1;
    c.eps_hi = 0.28;
    CHECK_OK(tok(&c, 0.2, 1.0, &g, &r)); /* 1.2214 < 1.28: inside */
    CHECK_NEAR(g, -exp(0.2), 1e-6);
    CHECK(r.clip_frac == 0.0);
    CHECK_OK(tok(&c, 0.25, 1.0, &g, &r)); /* 1.284 > 1.28 */
    CHECK_NEAR(r.loss, -1.28, 1e-12);
    CHECK(g == 0.0f);
    CHECK_OK(tok(&c, -0.15, -1.0, &g, &r)); /* 0.8607 < 0.9 */
    CHECK_NEAR(r.loss, 0.9, 1e-12);
    CHECK(g == 0.0f && r.clip_frac == 1.0);
    CHECK_OK(tok(&c, -0.08, -1.0, &g, &r)); /* 0.923 > 0.9: inside */
    CHECK_NEAR(g, exp(-0.08), 1e-6);
}

static void test_ppo_dual_clip(void)
{
    loss_cfg c = loss_cfg_defaults();
    float g;
    loss_result r;
    /* A < 0, u = 4: plain PPO follows u; the dual clip caps at -c A = 3 |A| */
    CHECK_OK(tok(&c, log(4.0), -1.0, &g, &r));
    CHECK_NEAR(r.loss, 4.0, 1e-6);
    CHECK_NEAR(g, 4.0, 1e-6);
    c.dual_clip = true;
    CHECK_OK(tok(&c, log(4.0), -1.0, &g, &r));
    CHECK_NEAR(r.loss, 3.0, 1e-12);
    CHECK(g == 0.0f && r.clip_frac == 1.0 && r.dual_clip_frac == 1.0);
    /* below c it does nothing */
    CHECK_OK(tok(&c, log(2.0), -0.5, &g, &r));
    CHECK_NEAR(r.loss, 1.0, 1e-6);
    CHECK_NEAR(g, 1.0, 1e-6);
    CHECK(r.dual_clip_frac == 0.0);
    /* nor for A > 0 */
    CHECK_OK(tok(&c, log(4.0), 1.0, &g, &r));
    CHECK_NEAR(r.loss, -1.2, 1e-12);
    CHECK(r.dual_clip_frac == 0.0 && r.clip_frac == 1.0);
    c.dual_clip_c = 5.0;
    CHECK_OK(tok(&c, log(4.0), -1.0, &g, &r));
    CHECK_NEAR(r.loss, 4.0, 1e-6);
}

static void test_logratio_clamp(void)
{
    loss_cfg c = loss_cfg_defaults();
    float g;
    loss_result r;
    /* r = 30 clamps to 20: value exp(20), no gradient through the clamp */
    CHECK_OK(tok(&c, 30.0, -1.0, &g, &r));
    CHECK_NEAR(r.loss, exp(20.0), 1e-7);
    CHECK(g == 0.0f);
    CHECK_NEAR(r.approx_kl, -20.0, 1e-12);
}

/* ---------------------------------------------------------------- corrections */

static void test_corr_tis(void)
{
    loss_cfg c = loss_cfg_defaults();
    c.correction = CORR_TIS;
    /* u = 1 (lθ = lprox), A = 1: L = -w per token; w = 3 truncates to 2, w = 1.5 stays */
    float lp[2] = {-1, -2}, lprox[2] = {-1, -2};
    float lbeh[2] = {(float)(-1 - log(3.0)), (float)(-2 - log(1.5))};
    float g[2];
    loss_result r;
    CHECK_OK(run1(&c, 2, lp, lprox, lbeh, 1.0, g, &r));
    CHECK_NEAR(r.loss, -(2.0 + 1.5) / 2, 1e-6);
    CHECK_NEAR(g[0], -2.0 / 2, 1e-6);
    CHECK_NEAR(g[1], -1.5 / 2, 1e-6);
    CHECK_NEAR(r.is_mean, 1.75, 1e-6);
    CHECK_NEAR(r.is_max, 2.0, 1e-12);
    CHECK_NEAR(r.is_ess, 3.5 * 3.5 / (4 + 2.25), 1e-6);
    /* mismatch KL of KL(beh || prox): k1 = mean(lbeh - lprox), k3 = mean(w - 1 - log w), untruncated w */
    CHECK_NEAR(r.mismatch_k1, -(log(3.0) + log(1.5)) / 2, 1e-6);
    CHECK_NEAR(r.mismatch_k3, ((3 - 1 - log(3.0)) + (1.5 - 1 - log(1.5))) / 2, 1e-6);
    /* correction none: same inputs, w = 1, the mismatch still measured */
    c.correction = CORR_NONE;
    CHECK_OK(run1(&c, 2, lp, lprox, lbeh, 1.0, g, &r));
    CHECK_NEAR(r.loss, -1.0, 1e-12);
    CHECK(r.is_mean == 1.0 && r.is_ess == 2.0);
    CHECK_NEAR(r.mismatch_k3, ((3 - 1 - log(3.0)) + (1.5 - 1 - log(1.5))) / 2, 1e-6);
    /* without lbeh the mismatch metrics are 0 */
    CHECK_OK(run1(&c, 2, lp, lprox, NULL, 1.0, g, &r));
    CHECK(r.mismatch_k1 == 0.0 && r.mismatch_k3 == 0.0);
}

static void test_corr_tis_seq(void)
{
    loss_cfg c = loss_cfg_defaults();
    c.correction = CORR_TIS_SEQ;
    float lp[2] = {-1, -2}, lprox[2] = {-1, -2};
    float lbeh[2] = {(float)(-1 - log(1.2)), (float)(-2 - log(1.5))};
    float g[2];
    loss_result r;
    CHECK_OK(run1(&c, 2, lp, lprox, lbeh, 1.0, g, &r)); /* w = 1.2 * 1.5 = 1.8 on both */
    CHECK_NEAR(r.loss, -1.8, 1e-6);
    CHECK_NEAR(g[0], -0.9, 1e-6);
    CHECK_NEAR(g[1], -0.9, 1e-6);
    CHECK_NEAR(r.is_max, 1.8, 1e-6);
    lbeh[0] = (float)(-1 - log(2.0));
    lbeh[1] = (float)(-2 - log(3.0)); /* 6, truncated to 2 */
    CHECK_OK(run1(&c, 2, lp, lprox, lbeh, 1.0, g, &r));
    CHECK_NEAR(r.loss, -2.0, 1e-12);
    CHECK_NEAR(g[1], -1.0, 1e-12);
}

static void test_corr_mis(void)
{
    loss_cfg c = loss_cfg_defaults();
    c.correction = CORR_MIS;
    /* w = 0.5 kept (and weighted), w = 6 > 5 zeroed; the denominator stays 2 */
    float lp[2] = {-1, -2}, lprox[2] = {-1, -2};
    float lbeh[2] = {(float)(-1 - log(0.5)), (float)(-2 - log(6.0))};
    float g[2];
    loss_result r;
    CHECK_OK(run1(&c, 2, lp, lprox, lbeh, 1.0, g, &r));
    CHECK_NEAR(r.loss, -0.5 / 2, 1e-6);
    CHECK_NEAR(g[0], -0.25, 1e-6);
    CHECK(g[1] == 0.0f);
    CHECK_NEAR(r.masked_frac, 0.5, 1e-15);
    CHECK_NEAR(r.is_max, 0.5, 1e-6);
    CHECK(r.tokens == 2);
    /* a lower bound: 0.5 < 0.6 is zeroed as well */
    c.mis_lo = 0.6;
    CHECK_OK(run1(&c, 2, lp, lprox, lbeh, 1.0, g, &r));
    CHECK(r.loss == 0.0 && g[0] == 0.0f && r.masked_frac == 1.0 && r.is_ess == 0.0);
}

static void test_corr_mis_seq(void)
{
    loss_cfg c = loss_cfg_defaults();
    c.correction = CORR_MIS_SEQ;
    /* sample 0: w = 2 * 3 = 6 > 5, the whole sequence zeroed; sample 1: w = 2 * 0.5 = 1 kept */
    float lp[4] = {-1, -1, -1, -1}, lprox[4] = {-1, -1, -1, -1};
    float lbeh[4] = {(float)(-1 - log(2.0)), (float)(-1 - log(3.0)), (float)(-1 - log(2.0)), (float)(-1 - log(0.5))};
    uint8_t m[4] = {1, 1, 1, 1};
    int32_t cu[3] = {0, 2, 4};
    double adv[2] = {1.0, 1.0};
    loss_batch b = {.S = 2, .cu_seqlens = cu, .logp = lp, .logp_prox = lprox, .logp_beh = lbeh, .mask = m, .adv = adv};
    float g[4];
    loss_result r;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    CHECK_NEAR(r.loss, -2.0 / 4, 1e-6);
    CHECK(g[0] == 0.0f && g[1] == 0.0f);
    CHECK_NEAR(g[2], -0.25, 1e-6);
    CHECK_NEAR(g[3], -0.25, 1e-6);
    CHECK_NEAR(r.masked_frac, 0.5, 1e-15);
}

static void test_corr_bypass(void)
{
    loss_cfg c = loss_cfg_defaults();
    c.correction = CORR_BYPASS;
    /* the ratio is lθ - lbeh; logp_prox is never read (NULL) */
    float lp[1] = {-1.0f}, lbeh[1] = {-1.1f};
    float g;
    loss_result r;
    CHECK_OK(run1(&c, 1, lp, NULL, lbeh, 1.0, &g, &r));
    const double u = exp((double)(-1.0f - -1.1f));
    CHECK_NEAR(r.loss, -u, 1e-7);
    CHECK_NEAR(g, -u, 1e-6);
    CHECK(r.mismatch_k1 == 0.0 && r.mismatch_k3 == 0.0 && r.is_mean == 1.0);
    /* bypass needs lbeh */
    CHECK_STATUS(run1(&c, 1, lp, NULL, NULL, 1.0, &g, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "logp_beh"));
}

/* ---------------------------------------------------------------- aggregations */

/* Samples: 0 with 1 masked token (A = 1), 1 with none, 2 with 3 masked of 4 (A = 2); u = 1. */
static void agg_batch(loss_batch *b, float *lp, uint8_t *m, int32_t *cu, double *adv)
{
    for (int t = 0; t < 8; t++) lp[t] = -0.5f;
    const uint8_t mm[8] = {1, 0, 0, 0, 1, 1, 0, 1};
    memcpy(m, mm, 8);
    cu[0] = 0, cu[1] = 1, cu[2] = 3, cu[3] = 8; /* sample 2 is tokens 3..7, masked 4, 5, 7 */
    adv[0] = 1.0, adv[1] = -7.0, adv[2] = 2.0;
    *b = (loss_batch){.S = 3, .cu_seqlens = cu, .logp = lp, .logp_prox = lp, .mask = m, .adv = adv};
}

static void test_aggregations(void)
{
    float lp[8], g[8];
    uint8_t m[8];
    int32_t cu[4];
    double adv[3];
    loss_batch b;
    agg_batch(&b, lp, m, cu, adv);
    loss_cfg c = loss_cfg_defaults();
    loss_result r;

    CHECK_OK(loss_compute(&c, &b, NULL, g, &r)); /* token-mean: (-1 - 6) / 4 */
    CHECK_NEAR(r.loss, -7.0 / 4, 1e-12);
    CHECK_NEAR(g[0], -0.25, 1e-7);
    CHECK_NEAR(g[4], -0.5, 1e-7);
    CHECK(g[1] == 0.0f && g[2] == 0.0f && g[3] == 0.0f && g[6] == 0.0f);
    CHECK(r.tokens == 4 && r.seqs == 2);
    CHECK_NEAR(r.adv_mean, 7.0 / 4, 1e-12);

    c.agg = AGG_SEQ_MEAN_TOKEN_MEAN; /* (-1/1 - 6/3) / 2 sequences (the empty one excluded) */
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    CHECK_NEAR(r.loss, -1.5, 1e-12);
    CHECK_NEAR(g[0], -0.5, 1e-7);
    CHECK_NEAR(g[5], -1.0 / 3, 1e-7);

    c.agg = AGG_SEQ_MEAN_TOKEN_SUM_NORM;
    c.sum_norm = 10;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    CHECK_NEAR(r.loss, -0.7, 1e-12);
    CHECK_NEAR(g[0], -0.1, 1e-7);
    CHECK_NEAR(g[7], -0.2, 1e-7);
}

/* MIS-masked tokens keep their place in the denominator under every aggregation. */
static void test_agg_mis_denominator(void)
{
    float lp[3] = {-1, -1, -1}, lbeh[3] = {-1, (float)(-1 - log(10.0)), -1}, g[3];
    uint8_t m[3] = {1, 1, 1};
    int32_t cu[3] = {0, 2, 3};
    double adv[2] = {1, 1};
    loss_batch b = {.S = 2, .cu_seqlens = cu, .logp = lp, .logp_prox = lp, .logp_beh = lbeh, .mask = m, .adv = adv};
    loss_cfg c = loss_cfg_defaults();
    c.correction = CORR_MIS;
    loss_result r;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    CHECK_NEAR(r.loss, -2.0 / 3, 1e-12);
    c.agg = AGG_SEQ_MEAN_TOKEN_MEAN;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    CHECK_NEAR(r.loss, -(0.5 + 1.0) / 2, 1e-12);
    CHECK_NEAR(g[0], -0.25, 1e-7);
}

/* ---------------------------------------------------------------- masks and numerics */

static void test_masked_poison(void)
{
    /* -inf and NaN on masked-out positions change nothing and get gradient 0 */
    float lp[8], g[8];
    uint8_t m[8];
    int32_t cu[4];
    double adv[3];
    loss_batch b;
    agg_batch(&b, lp, m, cu, adv);
    float lprox[8], lbeh[8], lref[8];
    for (int t = 0; t < 8; t++) lprox[t] = lbeh[t] = lref[t] = lp[t] - 0.05f;
    b.logp_prox = lprox;
    b.logp_beh = lbeh;
    b.logp_ref = lref;
    loss_cfg c = loss_cfg_defaults();
    c.correction = CORR_TIS_SEQ;
    c.kl_beta = 0.1;
    c.dual_clip = true;
    loss_result clean, dirty;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &clean));
    for (int t = 0; t < 8; t++)
        if (!m[t]) {
            lp[t] = -INFINITY;
            lprox[t] = t % 2 ? NAN : -INFINITY;
            lbeh[t] = NAN;
            lref[t] = INFINITY;
        }
    for (int t = 0; t < 8; t++) g[t] = NAN;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &dirty));
    CHECK(isfinite(dirty.loss) && dirty.loss == clean.loss);
    CHECK(dirty.approx_kl == clean.approx_kl && dirty.mismatch_k3 == clean.mismatch_k3 && dirty.nonfinite == 0);
    for (int t = 0; t < 8; t++) CHECK(isfinite(g[t]) && (m[t] || g[t] == 0.0f));
}

static void test_nonfinite_masked_in(void)
{
    /* a masked-in -inf (bad data): its log-ratio is replaced by 0 (u = 1, no gradient) and counted */
    loss_cfg c = loss_cfg_defaults();
    float lp[2] = {-INFINITY, -1.0f}, lprox[2] = {-INFINITY, -1.0f}, g[2];
    loss_result r;
    CHECK_OK(run1(&c, 2, lp, lprox, NULL, 1.0, g, &r));
    CHECK_NEAR(r.loss, -1.0, 1e-12);
    CHECK(g[0] == 0.0f);
    CHECK_NEAR(g[1], -0.5, 1e-7);
    CHECK(r.nonfinite == 1);
}

static void test_errors(void)
{
    loss_cfg c = loss_cfg_defaults();
    float lp[3] = {-1, -1, -1}, g[3];
    uint8_t m[3] = {0, 0, 0};
    int32_t cu[3] = {0, 1, 3};
    double adv[2] = {1, 1};
    loss_batch b = {.S = 2, .cu_seqlens = cu, .logp = lp, .logp_prox = lp, .mask = m, .adv = adv};
    loss_result r;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "entirely empty") != NULL, "%s", tidal_errmsg());
    m[2] = 1;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    adv[1] = NAN;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "advantage of sample 1"));
    adv[1] = 1;
    cu[1] = 4;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "cu_seqlens decreases at sample 1"));
    cu[1] = 1;
    b.logp_prox = NULL;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "logp_prox"));
    b.logp_prox = lp;
    c.kl_beta = 0.01;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "logp_ref"));
    c.kl_beta = 0;
    c.stale = STALE_POLY;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "staleness"));
    double st[2] = {0, -1};
    b.staleness = st;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "staleness of sample 1"));
    c.stale = STALE_NONE;
    c.eps_hi = -1;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "eps_hi"));
    c.eps_hi = 0.2;
    b.S = 0;
    CHECK_STATUS(loss_compute(&c, &b, NULL, g, &r), TIDAL_ERR_INVALID);
    /* grad NULL: value only */
    b.S = 2;
    CHECK_OK(loss_compute(&c, &b, NULL, NULL, &r));
    CHECK_NEAR(r.loss, -1.0, 1e-12);
}

/* ---------------------------------------------------------------- KL and staleness */

static void test_kl_ref(void)
{
    loss_cfg c = loss_cfg_defaults();
    c.kl_beta = 0.1;
    /* A = 0: only the KL term; δ = lθ - lref = 0.5 */
    float lp[1] = {-1.0f}, lref[1] = {-1.5f}, g;
    uint8_t m[1] = {1};
    int32_t cu[2] = {0, 1};
    double adv = 0.0;
    loss_batch b = {.S = 1, .cu_seqlens = cu, .logp = lp, .logp_prox = lp, .logp_ref = lref, .mask = m, .adv = &adv};
    loss_result r;
    CHECK_OK(loss_compute(&c, &b, NULL, &g, &r));
    const double k3 = exp(-0.5) - 1 + 0.5;
    CHECK_NEAR(r.ref_kl, k3, 1e-7);
    CHECK_NEAR(r.kl_loss, 0.1 * k3, 1e-7);
    CHECK_NEAR(r.loss, 0.1 * k3, 1e-7);
    CHECK(r.policy_loss == 0.0);
    CHECK_NEAR(g, 0.1 * (1 - exp(-0.5)), 1e-6);
    /* k3 clamps at 10 (δ = -12: e^12 - 13), no gradient there */
    lref[0] = 11.0f;
    CHECK_OK(loss_compute(&c, &b, NULL, &g, &r));
    CHECK_NEAR(r.ref_kl, 10.0, 1e-12);
    CHECK(g == 0.0f);
}

static void test_staleness_weight(void)
{
    /* two one-token samples, u = 1, A = 1; staleness 0 and 3 */
    float lp[2] = {-1, -1}, g[2];
    uint8_t m[2] = {1, 1};
    int32_t cu[3] = {0, 1, 2};
    double adv[2] = {1, 1}, st[2] = {0, 3};
    loss_batch b = {.S = 2, .cu_seqlens = cu, .logp = lp, .logp_prox = lp, .mask = m, .adv = adv, .staleness = st};
    loss_cfg c = loss_cfg_defaults();
    c.stale = STALE_POLY; /* f = 1, 1/2 -> renormalised 4/3, 2/3 */
    loss_result r;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    CHECK_NEAR(r.loss, -1.0, 1e-12);
    CHECK_NEAR(g[0], -2.0 / 3, 1e-7);
    CHECK_NEAR(g[1], -1.0 / 3, 1e-7);
    c.stale = STALE_HINGE; /* a = 1, b = 1: f = 1, 1/3 -> 1.5, 0.5 */
    c.stale_a = 1;
    c.stale_b = 1;
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    CHECK_NEAR(g[0], -0.75, 1e-7);
    CHECK_NEAR(g[1], -0.25, 1e-7);
    st[1] = 1; /* at the knee: 1 */
    CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
    CHECK_NEAR(g[1], -0.5, 1e-7);
}

/* A batch split into micro-batches with the step's loss_norm adds up to the whole. */
static void test_micro_batches(void)
{
    float lp[8], lprox[8], g_all[8], g_mb[8];
    uint8_t m[8];
    int32_t cu[4];
    double adv[3], st[3] = {0, 2, 5};
    loss_batch b;
    agg_batch(&b, lp, m, cu, adv);
    for (int t = 0; t < 8; t++) lprox[t] = lp[t] + 0.03f * (float)(t - 4);
    b.logp_prox = lprox;
    b.staleness = st;
    for (int agg = 0; agg < AGG__COUNT; agg++) {
        loss_cfg c = loss_cfg_defaults();
        c.agg = (loss_agg)agg;
        c.sum_norm = 7;
        c.stale = STALE_POLY;
        loss_result all, r0, r1;
        CHECK_OK(loss_compute(&c, &b, NULL, g_all, &all));
        /* micro-batch 0: samples 0..1 (tokens 0..2); micro-batch 1: sample 2 (tokens 3..7) */
        int32_t cu0[3] = {0, 1, 3}, cu1[2] = {0, 5};
        loss_batch b0 = b, b1 = b;
        b0.S = 2, b0.cu_seqlens = cu0;
        b1.S = 1, b1.cu_seqlens = cu1, b1.logp = lp + 3, b1.logp_prox = lprox + 3, b1.mask = m + 3;
        b1.adv = adv + 2, b1.staleness = st + 2;
        loss_norm n = {0};
        CHECK_OK(loss_norm_add(&c, &b0, &n));
        CHECK_OK(loss_norm_add(&c, &b1, &n));
        CHECK(n.tokens == 4 && n.seqs == 2);
        CHECK_OK(loss_compute(&c, &b0, &n, g_mb, &r0));
        CHECK_OK(loss_compute(&c, &b1, &n, g_mb + 3, &r1));
        CHECK_NEAR(r0.loss + r1.loss, all.loss, 1e-12);
        for (int t = 0; t < 8; t++) CHECK_NEAR(g_mb[t], g_all[t], 1e-7);
        /* a norm smaller than the micro-batch is refused */
        loss_norm small = {1, 1, 1};
        CHECK_STATUS(loss_compute(&c, &b1, &small, g_mb, &r1), TIDAL_ERR_INVALID);
    }
}

/* ---------------------------------------------------------------- finite differences */

static uint64_t rng_state;
static uint64_t rng_next(void)
{ /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double urand(void) { return (double)(rng_next() >> 11) / 9007199254740992.0; } /* [0, 1) */

#define FD_S 6
#define FD_T 60

/* Is log-ratio x within `margin` of a kink of the config (clip, dual clip)? */
static int near_kink(const loss_cfg *c, double x, double A, double margin)
{
    double k[3] = {log(1.0 - c->eps_lo), log(1.0 + c->eps_hi), c->dual_clip && A < 0 ? log(c->dual_clip_c) : 1e9};
    for (int i = 0; i < 3; i++)
        if (fabs(x - k[i]) < margin) return 1;
    return 0;
}

static void test_finite_differences(void)
{
    rng_state = 12345;
    const double h = 2e-3;
    int configs = 0, checked = 0;
    double worst = 0.0;
    for (int corr = 0; corr < CORR__COUNT; corr++)
        for (int agg = 0; agg < AGG__COUNT; agg++)
            for (int variant = 0; variant < 2; variant++) {
                loss_cfg c = loss_cfg_defaults();
                c.correction = (loss_correction)corr;
                c.agg = (loss_agg)agg;
                c.sum_norm = 13;
                c.eps_lo = variant ? 0.15 : 0.2;
                c.eps_hi = variant ? 0.28 : 0.2;
                c.dual_clip = variant;
                c.kl_beta = variant ? 0.05 : 0.0;
                c.stale = variant ? STALE_POLY : STALE_NONE;
                float lp[FD_T], lprox[FD_T], lbeh[FD_T], lref[FD_T], g[FD_T];
                uint8_t m[FD_T];
                int32_t cu[FD_S + 1] = {0, 5, 17, 18, 30, 44, FD_T};
                double adv[FD_S], st[FD_S];
                for (int i = 0; i < FD_S; i++) {
                    adv[i] = 4.0 * urand() - 2.0;
                    st[i] = (double)(rng_next() % 5);
                }
                for (int t = 0; t < FD_T; t++) {
                    lprox[t] = (float)(-3.0 * urand() - 0.1);
                    lp[t] = lprox[t] + (float)(1.6 * urand() - 0.8); /* ratios both sides of the clips */
                    lbeh[t] = lprox[t] + (float)(0.6 * urand() - 0.3);
                    lref[t] = lp[t] + (float)(1.0 * urand() - 0.5);
                    m[t] = urand() < 0.8;
                }
                loss_batch b = {.S = FD_S, .cu_seqlens = cu, .logp = lp, .logp_prox = lprox, .logp_beh = lbeh,
                                .logp_ref = lref, .mask = m, .adv = adv, .staleness = st};
                loss_result r;
                CHECK_OK(loss_compute(&c, &b, NULL, g, &r));
                configs++;
                double gmax = 0.0;
                for (int t = 0; t < FD_T; t++) gmax = fmax(gmax, fabs(g[t]));
                for (int i = 0; i < FD_S; i++)
                    for (int t = cu[i]; t < cu[i + 1]; t++) {
                        const float lpc = lp[t];
                        const double base = c.correction == CORR_BYPASS ? lbeh[t] : lprox[t];
                        if (m[t] && near_kink(&c, (double)lpc - base, adv[i], 3 * h)) continue;
                        const float up = (float)(lpc + h), dn = (float)(lpc - h);
                        loss_result rp, rm;
                        lp[t] = up;
                        CHECK_OK(loss_compute(&c, &b, NULL, NULL, &rp));
                        lp[t] = dn;
                        CHECK_OK(loss_compute(&c, &b, NULL, NULL, &rm));
                        lp[t] = lpc;
                        const double fd = (rp.loss - rm.loss) / ((double)up - (double)dn);
                        const double err = fabs(fd - g[t]) / (gmax + 1e-12);
                        if (err > worst) worst = err;
                        CHECK_MSG(err < 1e-4, "%s/%s/%d token %d (mask %d): analytic %.8g, numeric %.8g",
                                  loss_correction_name(c.correction), loss_agg_name(c.agg), variant, t, m[t],
                                  (double)g[t], fd);
                        checked++;
                    }
            }
    printf("     finite differences: %d configs, %d tokens, worst error %.2e (of the largest gradient)\n", configs,
           checked, worst);
}

int main(void)
{
    RUN(test_adv_parse);
    RUN(test_adv_grpo);
    RUN(test_adv_rloo);
    RUN(test_adv_group_of_one);
    RUN(test_adv_reinforce_pp);
    RUN(test_adv_dapo_helpers);
    RUN(test_names);
    RUN(test_validate);
    RUN(test_ppo_unclipped);
    RUN(test_ppo_clipped);
    RUN(test_ppo_dual_clip);
    RUN(test_logratio_clamp);
    RUN(test_corr_tis);
    RUN(test_corr_tis_seq);
    RUN(test_corr_mis);
    RUN(test_corr_mis_seq);
    RUN(test_corr_bypass);
    RUN(test_aggregations);
    RUN(test_agg_mis_denominator);
    RUN(test_masked_poison);
    RUN(test_nonfinite_masked_in);
    RUN(test_errors);
    RUN(test_kl_ref);
    RUN(test_staleness_weight);
    RUN(test_micro_batches);
    RUN(test_finite_differences);
    return check_summary();
}
