/* test_selfcheck.c - the trainer's device self-check (trainer/selfcheck.h)
 * without a GPU: the comparison given two result sets - the CPU's and the
 * CPU's again, with an error planted through the test hook - finds the
 * planted tensor and names its stage and op; equal results pass, an error
 * below the tolerance passes, NaN fails; the hook refuses names that name
 * nothing; and the whole check for cuda refuses where no GPU answers (CUDA
 * compiled in, no driver: what `make test` runs here), or passes on a GPU host.
 * The precision's tolerance (fp32 1e-4, bf16 3e-2) and bf16's refusal on the
 * CPU; the loss track over five steps and the rerun, CPU against CPU, and
 * their comparisons failing on a planted difference.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "trainer/optimizer.h"
#include "trainer/selfcheck.h"

static selfcheck_result want, got;

/* Fresh CPU results in want and got. */
static bool two_cpu_runs(void)
{
    selfcheck_result_free(&want);
    selfcheck_result_free(&got);
    tidal_status a = selfcheck_run(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, &want),
                 b = selfcheck_run(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, &got);
    if (a == TIDAL_OK && b == TIDAL_OK) return true;
    fprintf(stderr, "%s:%d: selfcheck_run: %s\n", __FILE__, __LINE__, tidal_errmsg());
    check_cur_failed_ = 1; /* the caller returns */
    return false;
}

static void test_equal_results_pass(void)
{
    if (!two_cpu_runs()) return;
    CHECK(want.T == 88 && want.n > 0 && want.grad_norm > 0 && isfinite(want.grad_norm));
    selfcheck_errors e = {1, 1, 1};
    CHECK_OK(selfcheck_compare(&got, &want, SELFCHECK_TOL, &e));
    CHECK_MSG(e.forward == 0 && e.backward == 0 && e.adamw == 0, "errors %g %g %g: the CPU is deterministic", e.forward,
              e.backward, e.adamw);
    /* the update moved the weights: the adamw stage compares something */
    model *fresh = NULL;
    const model_config c = selfcheck_model_config();
    CHECK_OK(model_create(&c, &fresh));
    if (fresh) {
        model_init_random(fresh, 20261207, 0.02f, true);
        size_t n = 0;
        const float *p0 = model_params(fresh, &n), *p1 = model_params(want.m, NULL);
        size_t moved = 0;
        for (size_t i = 0; i < n; i++) moved += p0[i] != p1[i];
        CHECK_MSG(moved > n / 2, "only %zu of %zu parameters moved in the update", moved, n);
        model_free(fresh);
    }
}

/* Each stage's planted error is found and named. */
static void test_planted_errors_are_named(void)
{
    const struct {
        const char *plant, *want;
    } cases[] = {
        {"forward:logprob", "trainer self-check (cpu): forward: logprob: error "},
        {"forward:entropy", "trainer self-check (cpu): forward: entropy: error "},
        {"backward:model.layers.1.mlp.down_proj.weight",
         "trainer self-check (cpu): backward: gradient of model.layers.1.mlp.down_proj.weight: error "},
        {"backward:model.layers.0.self_attn.k_proj.bias",
         "trainer self-check (cpu): backward: gradient of model.layers.0.self_attn.k_proj.bias: error "},
        {"adamw:grad_norm", "trainer self-check (cpu): adamw: gradient norm: error "},
        {"adamw:model.embed_tokens.weight", "trainer self-check (cpu): adamw: model.embed_tokens.weight after the update"},
        {"adamw:model.norm.weight", "trainer self-check (cpu): adamw: model.norm.weight after the update"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (!two_cpu_runs()) return;
        CHECK_OK(selfcheck_plant(&got, cases[i].plant));
        selfcheck_errors e;
        tidal_status st = selfcheck_compare(&got, &want, SELFCHECK_TOL, &e);
        CHECK_MSG(st == TIDAL_ERR_UNAVAILABLE && strstr(tidal_errmsg(), cases[i].want) == tidal_errmsg(),
                  "plant %s: status %d, message '%s', want '%s'", cases[i].plant, st, tidal_errmsg(), cases[i].want);
        CHECK_MSG(strstr(tidal_errmsg(), "> 1e-04") != NULL, "plant %s: %s", cases[i].plant, tidal_errmsg());
    }
}

/* Below the tolerance passes; NaN anywhere fails. */
static void test_tolerance_and_nan(void)
{
    if (!two_cpu_runs()) return;
    const model_tensor *t = model_find_tensor(got.m, "model.layers.0.mlp.up_proj.weight");
    CHECK(t != NULL);
    if (!t) return;
    float *g = got.grads + t->offset;
    for (size_t i = 0; i < t->numel; i++) g[i] *= 1.0f + 1e-6f; /* relative error 1e-6: arithmetic, not a fault */
    selfcheck_errors e;
    CHECK_OK(selfcheck_compare(&got, &want, SELFCHECK_TOL, &e));
    CHECK_MSG(e.backward > 0 && e.backward < 1e-5, "backward error %g", e.backward);
    got.entropy[40] = NAN;
    CHECK_STATUS(selfcheck_compare(&got, &want, SELFCHECK_TOL, &e), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "forward: entropy: error inf") != NULL, "%s", tidal_errmsg());
}

static void test_plant_refuses_nonsense(void)
{
    if (!two_cpu_runs()) return;
    const char *bad[] = {"", "logprob", "forward:logits", "backward:model.nosuch.weight", "sideways:model.norm.weight",
                         "adamw:"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(selfcheck_plant(&got, bad[i]), TIDAL_ERR_INVALID);
        CHECK(strstr(tidal_errmsg(), "TIDAL_SELFCHECK_PLANT") == tidal_errmsg());
    }
    CHECK_OK(selfcheck_compare(&got, &want, SELFCHECK_TOL, NULL)); /* nothing was perturbed */
}

/* The whole check: the environment's plant reaches the comparison; cuda
 * refuses without a GPU (the message says why) and passes with one. */
static void test_trainer_selfcheck(void)
{
    selfcheck_errors e;
    CHECK_OK(trainer_selfcheck(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, &e));
    setenv(SELFCHECK_PLANT_ENV, "backward:model.layers.0.input_layernorm.weight", 1);
    CHECK_STATUS(trainer_selfcheck(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, &e), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "backward: gradient of model.layers.0.input_layernorm.weight") != NULL, "%s",
              tidal_errmsg());
    unsetenv(SELFCHECK_PLANT_ENV);
    tidal_status st = trainer_selfcheck(TRAINER_DEVICE_CUDA, TRAINER_PRECISION_FP32, &e);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg()); /* before the availability probe replaces it */
    if (trainer_device_cuda_available() == TIDAL_OK) {
        CHECK_MSG(st == TIDAL_OK, "the GPU disagrees with the CPU: %s", msg);
    } else {
        CHECK(st == TIDAL_ERR_UNAVAILABLE);
        CHECK_MSG(strstr(msg, "trainer self-check (cuda): trainer device cuda: ") == msg &&
                      strstr(msg, trainer_device_cuda_built() ? "no usable device" : "no CUDA path") != NULL,
                  "message: %s", msg);
    }
}

/* The tolerance follows the precision: an error of 1e-3 fails fp32 and passes
 * bf16; the message names the precision's bound. */
static void test_tolerance_follows_precision(void)
{
    CHECK(selfcheck_tolerance(TRAINER_PRECISION_FP32) == 1e-4);
    CHECK(selfcheck_tolerance(TRAINER_PRECISION_BF16) == 3e-2);
    if (!two_cpu_runs()) return;
    const model_tensor *t = model_find_tensor(got.m, "model.layers.1.self_attn.v_proj.weight");
    CHECK(t != NULL);
    if (!t) return;
    float *g = got.grads + t->offset;
    for (size_t i = 0; i < t->numel; i++) g[i] *= 1.0f + 1e-3f; /* relative error 1e-3 */
    got.prec = TRAINER_PRECISION_BF16;                             /* as a bf16 device would report */
    selfcheck_errors e;
    CHECK_OK(selfcheck_compare(&got, &want, selfcheck_tolerance(TRAINER_PRECISION_BF16), &e));
    CHECK_MSG(e.backward > 5e-4 && e.backward < 2e-3, "backward error %g", e.backward);
    CHECK_STATUS(selfcheck_compare(&got, &want, selfcheck_tolerance(TRAINER_PRECISION_FP32), &e),
                 TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "trainer self-check (cpu, bf16): backward: gradient of "
                                     "model.layers.1.self_attn.v_proj.weight: error ") == tidal_errmsg() &&
                  strstr(tidal_errmsg(), "> 1e-04"),
              "%s", tidal_errmsg());
    for (size_t i = 0; i < t->numel; i++) g[i] *= 1.05f; /* now ~5e-2: over bf16's bound too */
    CHECK_STATUS(selfcheck_compare(&got, &want, selfcheck_tolerance(TRAINER_PRECISION_BF16), &e),
                 TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "> 3e-02") != NULL, "%s", tidal_errmsg());
}

/* bf16 is the GPU's: the CPU refuses it by name, in the run and the whole
 * check; on cuda it refuses without a GPU (or passes with one). */
static void test_bf16_refused_on_cpu(void)
{
    selfcheck_result r;
    CHECK_STATUS(selfcheck_run(TRAINER_DEVICE_CPU, TRAINER_PRECISION_BF16, &r), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "precision bf16: the CPU computes in fp32 only") != NULL, "%s", tidal_errmsg());
    selfcheck_result_free(&r);
    selfcheck_errors e;
    CHECK_STATUS(trainer_selfcheck(TRAINER_DEVICE_CPU, TRAINER_PRECISION_BF16, &e), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "trainer self-check (cpu, bf16): ") == tidal_errmsg(), "%s", tidal_errmsg());
    tidal_status st = trainer_selfcheck(TRAINER_DEVICE_CUDA, TRAINER_PRECISION_BF16, &e);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    if (trainer_device_cuda_available() == TIDAL_OK) {
        CHECK_MSG(st == TIDAL_OK, "the GPU in bf16 disagrees with the CPU: %s", msg);
    } else {
        CHECK(st == TIDAL_ERR_UNAVAILABLE);
        CHECK_MSG(strstr(msg, "trainer self-check (cuda, bf16): trainer device cuda: ") == msg, "message: %s", msg);
    }
}

/* Five steps: the CPU tracks itself exactly and its loss falls; a step off,
 * a NaN and a curve that does not fall are refused, naming the step. */
static void test_loss_track(void)
{
    static selfcheck_track_result r;
    CHECK_OK(selfcheck_track(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, 5, &r));
    CHECK(r.steps == 5 && r.worst == 0);
    CHECK_MSG(r.cpu_loss[5] < r.cpu_loss[0] - 1e-3 && r.cpu_loss[0] > 5 && r.cpu_loss[0] < 9,
              "loss %g -> %g (V 1003 at random: about ln 1003 = 6.9, then falling)", r.cpu_loss[0], r.cpu_loss[5]);
    for (int i = 0; i <= 5; i++) CHECK(r.dev_loss[i] == r.cpu_loss[i]);
    selfcheck_track_result p = r;
    p.dev_loss[3] *= 1.0 + 1e-3;
    CHECK_OK(selfcheck_track_compare(&p, "cuda, bf16", 3e-2));
    CHECK(p.worst > 5e-4 && p.worst < 2e-3);
    CHECK_STATUS(selfcheck_track_compare(&p, "cuda", 1e-4), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "trainer loss track (cuda): before update 4: loss ") == tidal_errmsg() &&
                  strstr(tidal_errmsg(), "> 1e-04"),
              "%s", tidal_errmsg());
    p = r;
    p.dev_loss[5] = NAN;
    CHECK_STATUS(selfcheck_track_compare(&p, "cuda", 1e-4), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "after update 5: loss nan") != NULL, "%s", tidal_errmsg());
    p = r;
    p.cpu_loss[5] = p.dev_loss[5] = p.cpu_loss[0];
    CHECK_STATUS(selfcheck_track_compare(&p, "cuda", 1e-4), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "the CPU's loss did not fall over 5 update(s)") != NULL, "%s", tidal_errmsg());
    CHECK_STATUS(selfcheck_track(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, 0, NULL), TIDAL_ERR_INVALID);
    CHECK_STATUS(selfcheck_track(TRAINER_DEVICE_CPU, TRAINER_PRECISION_BF16, 5, NULL), TIDAL_ERR_UNAVAILABLE);
}

/* The rerun: the CPU repeats its bits; one flipped bit is found and named. */
static void test_rerun(void)
{
    CHECK_OK(selfcheck_rerun(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32));
    if (!two_cpu_runs()) return;
    CHECK_OK(selfcheck_same_bits(&got, &want));
    const model_tensor *t = model_find_tensor(got.m, "model.layers.0.self_attn.q_proj.bias");
    CHECK(t != NULL);
    if (!t) return;
    uint32_t u;
    memcpy(&u, got.grads + t->offset + 5, sizeof u);
    u ^= 1; /* one ulp */
    memcpy(got.grads + t->offset + 5, &u, sizeof u);
    CHECK_STATUS(selfcheck_same_bits(&got, &want), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "trainer rerun (cpu): backward: gradient of model.layers.0.self_attn.q_proj.bias: "
                                     "1 of ") == tidal_errmsg(),
              "%s", tidal_errmsg());
    if (!two_cpu_runs()) return;
    got.grad_norm = nextafter(got.grad_norm, 0);
    CHECK_STATUS(selfcheck_same_bits(&got, &want), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "adamw: gradient norm: 1 of 1 element(s) differ") != NULL, "%s", tidal_errmsg());
}

/* A standard normal from an LCG state (Box-Muller). */
static double normal(uint64_t *x)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        *x = *x * 6364136223846793005ull + 1442695040888963407ull;
        u[i] = ((double)(*x >> 11) + 0.5) / 9007199254740992.0;
    }
    return sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

/* The worst per-tensor error of the self-check's update (clip 0.5, AdamW lr
 * 1e-3 with eps) from grads with noise of `noise` x each tensor's RMS added,
 * against the same update from the clean grads. */
static double update_error(const selfcheck_result *r, double noise, float eps)
{
    const model_config c = selfcheck_model_config();
    const size_t n = r->n;
    model *m[2] = {NULL, NULL};
    adamw *o[2] = {NULL, NULL};
    float *g[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    adamw_cfg ac = adamw_defaults();
    ac.eps = eps;
    double worst = INFINITY;
    uint64_t x = 99;
    for (int k = 0; k < 2; k++) {
        if (model_create(&c, &m[k]) != TIDAL_OK || adamw_create(n, &ac, &o[k]) != TIDAL_OK || !g[k]) goto cleanup;
        model_init_random(m[k], 20261207, 0.02f, true);
        memcpy(g[k], r->grads, n * sizeof(float));
    }
    const int nt = model_num_tensors(r->m);
    for (int i = 0; i < nt; i++) {
        const model_tensor *t = model_tensor_at(r->m, i);
        double ss = 0;
        for (size_t j = 0; j < t->numel; j++) ss += (double)g[1][t->offset + j] * g[1][t->offset + j];
        const double rms = sqrt(ss / (double)t->numel);
        for (size_t j = 0; j < t->numel; j++) g[1][t->offset + j] += (float)(noise * rms * normal(&x));
    }
    for (int k = 0; k < 2; k++) {
        clip_grad_norm(g[k], n, 0.5);
        adamw_step(o[k], model_params(m[k], NULL), g[k], NULL, 1e-3f);
    }
    worst = 0;
    for (int i = 0; i < nt; i++) {
        const model_tensor *t = model_tensor_at(r->m, i);
        const float *a = model_params(m[1], NULL) + t->offset, *b = model_params(m[0], NULL) + t->offset;
        double dd = 0, ww = 0;
        for (size_t j = 0; j < t->numel; j++) dd += ((double)a[j] - b[j]) * ((double)a[j] - b[j]), ww += (double)b[j] * b[j];
        if (sqrt(dd / ww) > worst) worst = sqrt(dd / ww);
    }
cleanup:
    for (int k = 0; k < 2; k++) model_free(m[k]), adamw_free(o[k]), free(g[k]);
    return worst;
}

/* The self-check's update does not amplify the gradients' arithmetic error
 * (SELFCHECK_ADAMW_EPS): with fp32-like (1e-5 x RMS) and bf16-like (1e-2)
 * noise in the gradients, every tensor after the update stays within the
 * precision's tolerance; with the trainer's eps 1e-8 the fp32 case does not -
 * a correct GPU would be refused (why the self-check sets its own eps). */
static void test_update_is_continuous(void)
{
    if (!two_cpu_runs()) return;
    const double e32 = update_error(&want, 1e-5, SELFCHECK_ADAMW_EPS);
    const double e16 = update_error(&want, 1e-2, SELFCHECK_ADAMW_EPS);
    const double e32_sign = update_error(&want, 1e-5, 1e-8f);
    fprintf(stderr, "  update error from gradient noise: fp32-like %.3g, bf16-like %.3g; with eps 1e-8 %.3g\n", e32, e16,
            e32_sign);
    CHECK_MSG(e32 < 1e-5 && e32 <= SELFCHECK_TOL / 4, "fp32-like noise: error %g after the update", e32);
    CHECK_MSG(e16 < 1e-2 && e16 <= SELFCHECK_TOL_BF16 / 2, "bf16-like noise: error %g after the update", e16);
    CHECK_MSG(e32_sign > SELFCHECK_TOL, "eps 1e-8: error %g (the sign-like update's, expected over 1e-4)", e32_sign);
}

int main(void)
{
    unsetenv(SELFCHECK_PLANT_ENV);
    RUN(test_equal_results_pass);
    RUN(test_planted_errors_are_named);
    RUN(test_tolerance_and_nan);
    RUN(test_plant_refuses_nonsense);
    RUN(test_tolerance_follows_precision);
    RUN(test_bf16_refused_on_cpu);
    RUN(test_loss_track);
    RUN(test_rerun);
    RUN(test_update_is_continuous);
    RUN(test_trainer_selfcheck);
    selfcheck_result_free(&want);
    selfcheck_result_free(&got);
    return check_summary();
}
