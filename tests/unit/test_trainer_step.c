/* test_trainer_step.c - one trainer step (trainer/step.h) on completions the
 * engine really sampled from the same weights:
 * - the engine's behaviour logprobs and the trainer's recompute agree
 *   (mismatch k3 ~ 1e-7), so with one update per batch the ratio is 1 and
 *   nothing is clipped;
 * - the step moves the policy the way the advantages say: the sum over
 *   samples of A_i x (change of the sample's log-likelihood) is positive;
 * - micro-batching changes nothing but rounding (same parameters after the
 *   step with a budget of 40 positions as with one micro-batch);
 * - malformed samples are refused naming the trajectory, nothing updated;
 * - every path of the step (several updates, the recompute and log-linear
 *   proximal policies, M2PO's whole-update selection, the reference model for
 *   both KL terms, overlong shaping, cispo, gspo, bypass) runs, moves the
 *   parameters and is unchanged by micro-batching (so M2PO's selection sees
 *   the whole update whatever the token budget). The values themselves are
 *   checked against PyTorch by tests/parity/test_step_parity.py;
 * - the worker check's scores (trainer_step_checked): the engine's own
 *   logprobs at the step's version score k3 ~ 0 on every token, perturbed
 *   ones far above, tokens a version behind land at d = 1, tokens too far
 *   behind or of a later update without a recompute are not scored;
 * - on a GPU host, the same step on the CUDA device (trainer_step_on,
 *   trainer/device.h) against the CPU's: loss, gradient norm and the weights
 *   after it within the self-check's tolerance (skipped, said, without a GPU). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/cpu/gemm.h"
#include "rollout/engine.h"
#include "trainer/selfcheck.h"
#include "trainer/step.h"

enum { G = 8, GROUPS = 2, P = 4, NEW = 6 };

static const model_config CFG = {.type = MODEL_QWEN2, .vocab_size = 32, .hidden_size = 32, .num_layers = 2,
                                 .num_heads = 4, .num_kv_heads = 2, .head_dim = 8, .intermediate_size = 64,
                                 .max_position_embeddings = 64, .rope_theta = 10000.0, .rms_norm_eps = 1e-6,
                                 .tie_word_embeddings = true, .qkv_bias = true, .bos_token_id = -1,
                                 .eos_token_id = -1};

/* What a trajectory needs, owned here (the struct points into it). */
typedef struct sample {
    Tidal__V1__Trajectory t;
    uint32_t prompt[P], comp[NEW];
    float lp[NEW];
    protobuf_c_boolean mask[NEW];
    uint64_t vv[1];
    uint32_t runs[1];
    char id[32], gid[16];
} sample;

static sample S[GROUPS][G];
static Tidal__V1__Trajectory *PTR[GROUPS][G];

static model *make_model(void)
{
    model *m = NULL;
    if (model_create(&CFG, &m) != TIDAL_OK) exit(1);
    model_init_random(m, 42, 0.3f, true);
    return m;
}

/* Sample G completions of each prompt with the engine; reward = share of token 5. */
static void sample_batch(model *m, buffer_batch *b, buffer_group *groups)
{
    engine *e = NULL;
    engine_options o = {.slots = 8, .max_len = P + NEW + 1};
    if (engine_create(m, 0, &o, &e) != TIDAL_OK) exit(1);
    const int32_t prompts[GROUPS][P] = {{1, 2, 3, 4}, {7, 8, 9, 10}};
    for (int g = 0; g < GROUPS; g++)
        for (int i = 0; i < G; i++) {
            engine_request rq = {.prompt = prompts[g], .prompt_len = P, .max_new_tokens = NEW,
                                 .sampling = {.temperature = 1.0f, .seed = (uint64_t)(g * 100 + i + 1)},
                                 .user = &S[g][i]};
            if (engine_submit(e, &rq, NULL) != TIDAL_OK) exit(1);
        }
    while (engine_busy(e)) engine_step(e);
    for (engine_result *r; (r = engine_next_result(e)); engine_result_free(r)) {
        sample *s = r->user;
        const int g = (int)((s - &S[0][0]) / G), i = (int)((s - &S[0][0]) % G);
        Tidal__V1__Trajectory t = TIDAL__V1__TRAJECTORY__INIT;
        snprintf(s->id, sizeof s->id, "g%d-%d", g, i);
        snprintf(s->gid, sizeof s->gid, "g%d", g);
        int fives = 0;
        for (int k = 0; k < P; k++) s->prompt[k] = (uint32_t)prompts[g][k];
        for (int k = 0; k < r->n; k++) {
            s->comp[k] = (uint32_t)r->ids[k];
            s->lp[k] = r->logprobs[k];
            s->mask[k] = 1;
            fives += r->ids[k] == 5 || r->ids[k] == 6;
        }
        s->vv[0] = 0;
        s->runs[0] = (uint32_t)r->n;
        t.trajectory_id = s->id, t.group_id = s->gid, t.prompt_id = s->gid;
        t.sample_index = (uint32_t)i, t.group_size = G;
        t.n_prompt_token_ids = P, t.prompt_token_ids = s->prompt;
        t.n_completion_token_ids = (size_t)r->n, t.completion_token_ids = s->comp;
        t.n_logprobs = (size_t)r->n, t.logprobs = s->lp;
        t.n_loss_mask = (size_t)r->n, t.loss_mask = s->mask;
        t.n_version_values = 1, t.version_values = s->vv, t.n_version_runs = 1, t.version_runs = s->runs;
        t.reward = (double)fives / r->n;
        t.temperature = 1.0;
        t.status = TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
        s->t = t;
        PTR[g][i] = &s->t;
    }
    engine_free(e);
    for (int g = 0; g < GROUPS; g++) groups[g] = (buffer_group){.n = G, .samples = PTR[g]};
    *b = (buffer_batch){.n_groups = GROUPS, .groups = groups};
}

/* Sum of the completion's logprobs under m. */
static double seq_logprob(model *m, const sample *s)
{
    const int n = (int)s->t.n_completion_token_ids, T = P + n - 1;
    int32_t ids[P + NEW], tg[P + NEW], cu[2] = {0, T};
    float lp[P + NEW], ent[P + NEW];
    for (int q = 0; q < T; q++) {
        ids[q] = q < P ? (int32_t)s->prompt[q] : (int32_t)s->comp[q - P];
        tg[q] = q + 1 < P ? (int32_t)s->prompt[q + 1] : (int32_t)s->comp[q + 1 - P];
    }
    model_batch b = {.T = T, .S = 1, .ids = ids, .targets = tg, .cu_seqlens = cu, .inv_temp = 1.0f};
    if (model_forward(m, &b, lp, ent, NULL) != TIDAL_OK) exit(1);
    double sum = 0;
    for (int q = P - 1; q < T; q++) sum += lp[q];
    return sum;
}

static trainer_step_cfg step_cfg(int micro)
{
    trainer_step_cfg c = {.advantage = ADV_GRPO, .loss = loss_cfg_defaults(), .micro_batch_tokens = micro,
                          .lr = 0.02f, .grad_clip = 0};
    c.loss.correction = CORR_TIS;
    return c;
}

static void test_step_follows_advantages(void)
{
    model *m = make_model();
    buffer_batch b;
    buffer_group groups[GROUPS];
    sample_batch(m, &b, groups);
    double before[GROUPS][G], adv[GROUPS][G];
    for (int g = 0; g < GROUPS; g++) {
        double r[G];
        for (int i = 0; i < G; i++) r[i] = S[g][i].t.reward, before[g][i] = seq_logprob(m, &S[g][i]);
        CHECK_OK(adv_group(ADV_GRPO, r, G, adv[g]));
    }
    adamw *opt = NULL;
    size_t np;
    model_params(m, &np);
    adamw_cfg ac = adamw_defaults();
    ac.weight_decay = 0;
    CHECK_OK(adamw_create(np, &ac, &opt));
    trainer_step_cfg c = step_cfg(100000);
    trainer_step_result r;
    CHECK_OK(trainer_step(m, opt, &b, 0, &c, &r));
    printf("  reward %.3f +- %.3f, loss %.4g, mismatch k3 %.2e, clip %.3f, is mean %.6f, grad norm %.3g\n",
           r.reward_mean, r.reward_std, r.loss.loss, r.loss.mismatch_k3, r.loss.clip_frac, r.loss.is_mean,
           r.grad_norm);
    CHECK(r.samples == GROUPS * G && r.micro_batches == 1 && r.staleness_max == 0);
    CHECK_MSG(r.reward_std > 0, "no reward variance: the test needs some");
    CHECK_MSG(r.loss.mismatch_k3 < 1e-5, "engine and trainer logprobs disagree: k3 %.3g", r.loss.mismatch_k3);
    CHECK(r.loss.clip_frac == 0.0 && fabs(r.loss.is_mean - 1.0) < 1e-3 && r.grad_norm > 0);
    double progress = 0;
    for (int g = 0; g < GROUPS; g++)
        for (int i = 0; i < G; i++) progress += adv[g][i] * (seq_logprob(m, &S[g][i]) - before[g][i]);
    CHECK_MSG(progress > 0, "the step moved against the advantages: %.4g", progress);
    adamw_free(opt);
    model_free(m);
}

/* The largest |a - b| over two models' parameters; *scale gets the largest |a|. */
static double max_param_difference(model *a, model *b, double *scale)
{
    size_t np;
    const float *pa = model_params(a, &np), *pb = model_params(b, &np);
    double d = 0, s = 0;
    for (size_t i = 0; i < np; i++) d = fmax(d, fabs((double)pa[i] - pb[i])), s = fmax(s, fabs((double)pa[i]));
    *scale = s;
    return d;
}

static void test_micro_batches_change_nothing(void)
{
    model *m1 = make_model(), *m2 = make_model();
    buffer_batch b;
    buffer_group groups[GROUPS];
    sample_batch(m1, &b, groups);
    size_t np;
    model_params(m1, &np);
    adamw *o1 = NULL, *o2 = NULL;
    CHECK_OK(adamw_create(np, NULL, &o1));
    CHECK_OK(adamw_create(np, NULL, &o2));
    trainer_step_cfg c1 = step_cfg(100000), c2 = step_cfg(40);
    trainer_step_result r1, r2;
    CHECK_OK(trainer_step(m1, o1, &b, 1, &c1, &r1));
    CHECK_OK(trainer_step(m2, o2, &b, 1, &c2, &r2));
    double s, d = max_param_difference(m1, m2, &s);
    printf("  %d vs %d micro-batches: loss %.8g vs %.8g, max param difference %.2e\n", r1.micro_batches,
           r2.micro_batches, r1.loss.loss, r2.loss.loss, d);
    CHECK(r2.micro_batches > 1 && r1.staleness_max == 1);
    CHECK(fabs(r1.loss.loss - r2.loss.loss) <= 1e-6 * fmax(1.0, fabs(r1.loss.loss)));
    CHECK_MSG(d <= 1e-6 * s, "the parameters differ by %.3g (largest %.3g)", d, s);
    adamw_free(o1), adamw_free(o2);
    model_free(m1), model_free(m2);
}

static void test_bad_samples(void)
{
    model *m = make_model();
    buffer_batch b;
    buffer_group groups[GROUPS];
    sample_batch(m, &b, groups);
    size_t np;
    float *p = model_params(m, &np);
    float first = p[0];
    adamw *opt = NULL;
    CHECK_OK(adamw_create(np, NULL, &opt));
    trainer_step_cfg c = step_cfg(100000);
    trainer_step_result r;
    S[1][3].comp[0] = 99; /* outside the vocabulary */
    CHECK_STATUS(trainer_step(m, opt, &b, 0, &c, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "g1-3") && strstr(tidal_errmsg(), "completion_token_ids[0] = 99"));
    S[1][3].comp[0] = 1;
    S[0][2].t.temperature = 0.7;
    CHECK_STATUS(trainer_step(m, opt, &b, 0, &c, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "g0-2") && strstr(tidal_errmsg(), "temperature"));
    S[0][2].t.temperature = 1.0;
    S[0][1].t.n_logprobs = 2;
    CHECK_STATUS(trainer_step(m, opt, &b, 0, &c, &r), TIDAL_ERR_INVALID);
    CHECK(p[0] == first && opt->step == 0); /* nothing updated */
    adamw_free(opt);
    model_free(m);
}

/* Behaviour logprobs off the trainer's, as stale samples have them. */
static void make_stale(void)
{
    for (int g = 0; g < GROUPS; g++)
        for (int i = 0; i < G; i++)
            for (size_t k = 0; k < S[g][i].t.n_completion_token_ids; k++)
                S[g][i].lp[k] += 0.6f * sinf((float)(3 * k + 7 * i + g));
}

static void test_every_path(void)
{
    model *ref = make_model();
    model_init_random(ref, 43, 0.3f, true); /* a reference model unlike the policy */
    struct {
        const char *name;
        loss_kind kind;
        loss_correction corr;
        int minibatches;
        trainer_proximal prox;
        double kl, kl_reward, overlong;
    } cases[] = {
        {"ppo tis, 2 updates, recompute", LOSS_PPO, CORR_TIS, 2, PROX_RECOMPUTE, 0, 0, 0},
        {"ppo tis, 2 updates, loglinear", LOSS_PPO, CORR_TIS, 2, PROX_LOGLINEAR, 0, 0, 0},
        {"m2po bypass, 2 updates", LOSS_M2PO, CORR_BYPASS, 2, PROX_RECOMPUTE, 0, 0, 0},
        {"m2po tis, 1 update", LOSS_M2PO, CORR_TIS, 1, PROX_RECOMPUTE, 0, 0, 0},
        {"cispo mis, KL both ways", LOSS_CISPO, CORR_MIS, 1, PROX_RECOMPUTE, 0.05, 0.02, 0},
        {"gspo, 2 updates, overlong", LOSS_GSPO, CORR_NONE, 2, PROX_RECOMPUTE, 0, 0, 3},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        model *m1 = make_model(), *m2 = make_model();
        buffer_batch b;
        buffer_group groups[GROUPS];
        sample_batch(m1, &b, groups);
        make_stale();
        size_t np;
        const float before = model_params(m1, &np)[5];
        adamw *o1 = NULL, *o2 = NULL;
        CHECK_OK(adamw_create(np, NULL, &o1));
        CHECK_OK(adamw_create(np, NULL, &o2));
        trainer_step_cfg c1 = step_cfg(100000), c2 = step_cfg(12);
        for (trainer_step_cfg *c = &c1; c; c = c == &c1 ? &c2 : NULL) {
            const int micro = c->micro_batch_tokens;
            c->loss = loss_cfg_defaults_for(cases[k].kind);
            c->loss.correction = cases[k].corr, c->loss.kl_beta = cases[k].kl, c->loss.m2po_tau = 0.01;
            c->micro_batch_tokens = micro, c->minibatches = cases[k].minibatches, c->proximal = cases[k].prox;
            c->kl_reward = cases[k].kl_reward, c->overlong_buffer = cases[k].overlong, c->overlong_factor = 1;
            c->max_tokens = NEW;
            c->ref = cases[k].kl > 0 || cases[k].kl_reward > 0 ? ref : NULL;
        }
        trainer_step_result r1, r2;
        CHECK_OK(trainer_step(m1, o1, &b, 2, &c1, &r1));
        CHECK_OK(trainer_step(m2, o2, &b, 2, &c2, &r2));
        const float *p1 = model_params(m1, &np);
        double sc, d = max_param_difference(m1, m2, &sc);
        printf("  %s: %d update(s), %d vs %d micro-batches, loss %.6g, masked %.3f, clip %.3f, ref_kl %.3g, "
               "kl_reward %.3g, overlong %.3g, max param difference %.2e\n", cases[k].name, r1.updates,
               r1.micro_batches, r2.micro_batches, r1.loss.loss, r1.loss.masked_frac, r1.loss.clip_frac,
               r1.loss.ref_kl, r1.kl_reward_mean, r1.overlong_mean, d);
        CHECK(r1.updates == cases[k].minibatches && r2.micro_batches > r1.micro_batches);
        CHECK(isfinite(r1.loss.loss) && r1.grad_norm > 0 && p1[5] != before);
        /* Adam turns rounding in a near-zero gradient element into a full step of its own, so the
         * parameters are compared after one update only; the losses (and M2PO's selection, to a
         * token) after every update */
        const double one_token = 1.0 / (double)(r1.loss.tokens ? r1.loss.tokens : 1);
        CHECK_MSG(fabs(r1.loss.loss - r2.loss.loss) <= 1e-5 * fmax(1.0, fabs(r1.loss.loss)) &&
                      fabs(r1.loss.masked_frac - r2.loss.masked_frac) <= one_token + 1e-12 &&
                      (r1.updates > 1 || d <= 1e-6 * sc),
                  "%s: micro-batching changed the step (loss %.8g vs %.8g, masked %.4f vs %.4f, parameters by %.3g)",
                  cases[k].name, r1.loss.loss, r2.loss.loss, r1.loss.masked_frac, r2.loss.masked_frac, d);
        if (cases[k].kind == LOSS_M2PO) CHECK_MSG(r1.loss.masked_frac > 0, "%s: M2PO masked nothing", cases[k].name);
        if (cases[k].kl > 0) CHECK(r1.loss.ref_kl > 0 && r1.kl_reward_mean != 0);
        if (cases[k].overlong > 0) CHECK(r1.overlong_mean < 0);
        if (cases[k].minibatches > 1 && cases[k].corr != CORR_BYPASS && cases[k].kind == LOSS_PPO)
            CHECK_MSG(r1.loss.approx_kl != 0, "%s: the second update saw no change of policy", cases[k].name);
        adamw_free(o1), adamw_free(o2);
        model_free(m1), model_free(m2);
    }
    /* a KL term without a reference model is refused */
    model *m = make_model();
    buffer_batch b;
    buffer_group groups[GROUPS];
    sample_batch(m, &b, groups);
    size_t np;
    model_params(m, &np);
    adamw *o = NULL;
    CHECK_OK(adamw_create(np, NULL, &o));
    trainer_step_cfg c = step_cfg(1000);
    c.kl_reward = 0.1;
    trainer_step_result r;
    CHECK_STATUS(trainer_step(m, o, &b, 1, &c, &r), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "reference model"));
    adamw_free(o);
    model_free(m);
    model_free(ref);
}

/* Token-weighted mean k3 of checks[i0, i1) at d, and their tokens. */
static double check_mean(const trainer_sample_check *c, int i0, int i1, int d, int *tokens)
{
    double s = 0;
    *tokens = 0;
    for (int i = i0; i < i1; i++) s += c[i].k3_sum[d], *tokens += c[i].tokens[d];
    return *tokens ? s / *tokens : 0;
}

static void test_worker_check_scores(void)
{
    model *m = make_model();
    buffer_batch b;
    buffer_group groups[GROUPS];
    sample_batch(m, &b, groups);
    int all = 0;
    for (int g = 0; g < GROUPS; g++)
        for (int i = 0; i < G; i++) all += (int)S[g][i].t.n_completion_token_ids;
    adamw *o = NULL;
    size_t np;
    model_params(m, &np);
    CHECK_OK(adamw_create(np, NULL, &o));
    trainer_step_cfg c = step_cfg(1000);
    c.lr = 0; /* the weights stay those that sampled: each step sees the same policy */
    trainer_step_result r;
    trainer_sample_check chk[GROUPS * G];
    int n = 0;
    /* honest, at the step's own version: every trained token scored at d = 0, k3 ~ 0 */
    CHECK_OK(trainer_step_checked(m, o, &b, 0, &c, &r, chk));
    double k3 = check_mean(chk, 0, GROUPS * G, 0, &n);
    CHECK_MSG(n == all && k3 < 1e-5, "d = 0: %d of %d tokens scored, mean k3 %g", n, all, k3);
    /* the same samples a version behind: scored at d = 1 (the same weights here, so still ~ 0) */
    CHECK_OK(trainer_step_checked(m, o, &b, 1, &c, &r, chk));
    k3 = check_mean(chk, 0, GROUPS * G, 1, &n);
    CHECK_MSG(n == all && k3 < 1e-5 && check_mean(chk, 0, GROUPS * G, 0, &n) == 0 && n == 0, "d = 1: %d tokens", n);
    /* too far behind: not scored at all */
    CHECK_OK(trainer_step_checked(m, o, &b, TRAINER_CHECK_VERSIONS, &c, &r, chk));
    int scored = 0;
    for (int d = 0; d < TRAINER_CHECK_VERSIONS; d++) scored += (check_mean(chk, 0, GROUPS * G, d, &n), n);
    CHECK_MSG(scored == 0, "%d tokens scored %d versions behind", scored, TRAINER_CHECK_VERSIONS);
    /* a lying group (its logprobs moved): far above, the honest group still ~ 0 */
    for (int i = 0; i < G; i++)
        for (size_t k = 0; k < S[1][i].t.n_completion_token_ids; k++)
            S[1][i].lp[k] = fminf(0.0f, S[1][i].lp[k] + 0.5f * ((k + i) % 2 ? 1.0f : -1.0f));
    CHECK_OK(trainer_step_checked(m, o, &b, 0, &c, &r, chk));
    const double honest = check_mean(chk, 0, G, 0, &n), liar = check_mean(chk, G, 2 * G, 0, &n);
    CHECK_MSG(honest < 1e-5 && liar > 0.05, "honest group k3 %g, lying group %g", honest, liar);
    /* two updates without a recompute pass: only the first update's samples are scored */
    c.minibatches = 2, c.proximal = PROX_LOGLINEAR;
    CHECK_OK(trainer_step_checked(m, o, &b, 0, &c, &r, chk));
    int first = 0, second = 0;
    check_mean(chk, 0, G, 0, &first);
    check_mean(chk, G, 2 * G, 0, &second);
    CHECK_MSG(first > 0 && second == 0, "loglinear, 2 updates: %d tokens scored in the first, %d in the second", first,
              second);
    /* with the recompute pass every sample is */
    c.proximal = PROX_RECOMPUTE;
    CHECK_OK(trainer_step_checked(m, o, &b, 0, &c, &r, chk));
    check_mean(chk, G, 2 * G, 0, &second);
    CHECK_MSG(second > 0 && check_mean(chk, 0, G, 0, &n) < 1e-5, "recompute, 2 updates: %d tokens in the second", second);
    adamw_free(o);
    model_free(m);
}

/* ||a - b|| / ||b|| over n floats (infinity on a non-finite value). */
static double rel_err(const float *a, const float *b, size_t n)
{
    double dd = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        dd += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        bb += (double)b[i] * b[i];
    }
    return bb > 0 ? sqrt(dd / bb) : sqrt(dd);
}

static void test_step_on_cuda(void)
{
    if (trainer_device_cuda_available() != TIDAL_OK) {
        fprintf(stderr, "  no GPU here (%s): the CUDA step is not compared\n", tidal_errmsg());
        return;
    }
    model *mc = make_model(), *mg = make_model();
    buffer_batch b;
    buffer_group groups[GROUPS];
    sample_batch(mc, &b, groups);
    size_t np = 0;
    model_params(mc, &np);
    adamw *oc = NULL, *og = NULL;
    adamw_cfg ac = adamw_defaults();
    CHECK_OK(adamw_create(np, &ac, &oc));
    CHECK_OK(adamw_create(np, &ac, &og));
    trainer_device *d = NULL;
    CHECK_OK(trainer_device_create(TRAINER_DEVICE_CUDA, mg, og, &d));
    /* two updates with the recompute pass, clipping on; a small lr: AdamW's first update is
     * ~lr sign(g), so a near-zero gradient's rounding would otherwise flip whole steps */
    trainer_step_cfg c = step_cfg(24);
    c.lr = 1e-5f, c.minibatches = 2, c.grad_clip = 0.5;
    trainer_step_result rc, rg;
    CHECK_OK(trainer_step(mc, oc, &b, 0, &c, &rc));
    CHECK_OK(trainer_step_on(d, &b, 0, &c, &rg, NULL));
    CHECK_OK(trainer_device_sync_params(d));
    CHECK_OK(trainer_device_sync_optimizer(d));
    CHECK(rg.updates == rc.updates && rg.micro_batches == rc.micro_batches && og->step == oc->step);
    CHECK_MSG(fabs(rg.loss.loss - rc.loss.loss) <= SELFCHECK_TOL * (fabs(rc.loss.loss) + 1e-3), "loss %.9g vs %.9g",
              rg.loss.loss, rc.loss.loss);
    CHECK_MSG(fabs(rg.grad_norm - rc.grad_norm) <= SELFCHECK_TOL * rc.grad_norm, "grad norm %.9g vs %.9g", rg.grad_norm,
              rc.grad_norm);
    const double pe = rel_err(model_params(mg, NULL), model_params(mc, NULL), np);
    CHECK_MSG(pe <= SELFCHECK_TOL, "weights after the step: error %g", pe);
    CHECK_MSG(rel_err(og->v, oc->v, np) <= 1e-3, "AdamW second moment: error %g", rel_err(og->v, oc->v, np));
    trainer_device_free(d);
    adamw_free(oc);
    adamw_free(og);
    model_free(mc);
    model_free(mg);
}

int main(void)
{
    /* Micro-batching may change a step only by rounding, and AdamW's first update
     * (g / (|g| + eps)) turns the rounding of a near-zero gradient into a whole
     * step: so compare on kernels whose sums do not depend on the batch's rows.
     * Where OpenBLAS runs AVX-512 kernels (AMD without a core-type pin) it takes
     * the large products and its order of summation follows the row count. */
    cpu_blas_allow(false);
    RUN(test_step_follows_advantages);
    RUN(test_micro_batches_change_nothing);
    RUN(test_bad_samples);
    RUN(test_every_path);
    RUN(test_worker_check_scores);
    RUN(test_step_on_cuda);
    return check_summary();
}
