/* selfcheck.c - the trainer's device self-check (see selfcheck.h). */
#include "trainer/selfcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SC_SEED 20261207
#define SC_LR 1e-3f
#define SC_CLIP 0.5
#define SC_TEMPERATURE 0.7f

static const int sc_lengths[] = {1, 17, 70}; /* CUDA.md's packed lengths */
#define SC_S ((int)(sizeof sc_lengths / sizeof sc_lengths[0]))

model_config selfcheck_model_config(void)
{
    return (model_config){.type = MODEL_QWEN2, .vocab_size = 1003, .hidden_size = 128, .num_layers = 2,
                          .num_heads = 4, .num_kv_heads = 2, .head_dim = 64, .intermediate_size = 256,
                          .max_position_embeddings = 4096, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                          .tie_word_embeddings = true, .qkv_bias = true, .o_bias = false, .bos_token_id = -1,
                          .eos_token_id = -1};
}

void selfcheck_result_free(selfcheck_result *r)
{
    if (!r) return;
    model_free(r->m);
    free(r->logprob);
    free(r->entropy);
    free(r->grads);
    memset(r, 0, sizeof *r);
}

/* The batch: ids from a fixed LCG, targets the next id, offsets from sc_lengths,
 * loss weights varying in size and sign (so no gradient is a plain mean). */
static void make_batch(int V, int32_t *ids, int32_t *targets, int32_t *cu, float *dlogprob, int T)
{
    uint64_t x = SC_SEED;
    for (int t = 0; t < T; t++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ids[t] = (int32_t)((x >> 33) % (uint64_t)V);
    }
    for (int t = 0; t < T; t++) targets[t] = ids[(t + 1) % T];
    cu[0] = 0;
    for (int i = 0; i < SC_S; i++) cu[i + 1] = cu[i] + sc_lengths[i];
    for (int t = 0; t < T; t++) dlogprob[t] = (t % 7 == 3 ? 0.5f : -1.0f) * (float)(1 + t % 3) / (float)T;
}

double selfcheck_tolerance(trainer_precision p) { return p == TRAINER_PRECISION_BF16 ? SELFCHECK_TOL_BF16 : SELFCHECK_TOL; }

/* The device as messages name it: "cuda", "cpu"; "cuda, bf16" in bf16. */
static const char *label(trainer_device_kind kind, trainer_precision prec, char *buf, size_t n)
{
    snprintf(buf, n, "%s%s", trainer_device_kind_name(kind), prec == TRAINER_PRECISION_BF16 ? ", bf16" : "");
    return buf;
}

tidal_status selfcheck_run(trainer_device_kind kind, trainer_precision prec, selfcheck_result *out)
{
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->prec = prec;
    const model_config c = selfcheck_model_config();
    int T = 0;
    for (int i = 0; i < SC_S; i++) T += sc_lengths[i];
    int32_t ids[128], targets[128], cu[SC_S + 1];
    float dlogprob[128];
    make_batch(c.vocab_size, ids, targets, cu, dlogprob, T);
    const model_batch b = {.T = T, .S = SC_S, .ids = ids, .targets = targets, .cu_seqlens = cu,
                           .inv_temp = 1.0f / SC_TEMPERATURE};

    adamw *opt = NULL;
    trainer_device *d = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(model_create(&c, &out->m));
    model_init_random(out->m, SC_SEED, 0.02f, true);
    size_t n = 0;
    model_params(out->m, &n);
    adamw_cfg ac = adamw_defaults(); /* weight decay 0.01: the decay path is checked too */
    ac.eps = SELFCHECK_ADAMW_EPS;
    TRY_GOTO(adamw_create(n, &ac, &opt));
    out->T = T, out->n = n;
    out->logprob = malloc((size_t)T * sizeof(float));
    out->entropy = malloc((size_t)T * sizeof(float));
    out->grads = malloc(n * sizeof(float));
    if (!out->logprob || !out->entropy || !out->grads) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "trainer self-check: out of memory");
        goto cleanup;
    }
    TRY_GOTO(trainer_device_create_in(kind, prec, out->m, opt, &d));
    TRY_GOTO(tidal_wrap(trainer_device_zero_grads(d), "forward"));
    TRY_GOTO(tidal_wrap(trainer_device_forward(d, &b, out->logprob, out->entropy), "forward"));
    TRY_GOTO(tidal_wrap(trainer_device_backward(d, &b, dlogprob, NULL), "backward"));
    TRY_GOTO(tidal_wrap(trainer_device_sync_grads(d), "backward"));
    memcpy(out->grads, model_grads(out->m, NULL), n * sizeof(float)); /* before the CPU's clipping scales them */
    TRY_GOTO(tidal_wrap(trainer_device_update(d, SC_CLIP, SC_LR, &out->grad_norm), "adamw"));
    TRY_GOTO(tidal_wrap(trainer_device_sync_params(d), "adamw"));
cleanup:
    trainer_device_free(d);
    adamw_free(opt);
    return st;
}

/* ---- the test hook ---- */

/* Shift x[n] by 10% of its RMS (1e-2 when it is all zeros): an error of about
 * 1e-1, over both precisions' tolerances (1e-4, 3e-2). */
static void perturb(float *x, size_t n)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const double rms = n ? sqrt(ss / (double)n) : 0.0;
    const float delta = (float)(rms > 0 ? 1e-1 * rms : 1e-2);
    for (size_t i = 0; i < n; i++) x[i] += (i % 2 ? -delta : delta);
}

tidal_status selfcheck_plant(selfcheck_result *r, const char *what)
{
    const char *colon = what ? strchr(what, ':') : NULL;
    if (!colon || !r->m)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: '%s' is not STAGE:NAME", SELFCHECK_PLANT_ENV, what ? what : "");
    const size_t sl = (size_t)(colon - what);
    const char *name = colon + 1;
    if (sl == 7 && !strncmp(what, "forward", sl) && !strcmp(name, "logprob")) {
        perturb(r->logprob, (size_t)r->T);
    } else if (sl == 7 && !strncmp(what, "forward", sl) && !strcmp(name, "entropy")) {
        perturb(r->entropy, (size_t)r->T);
    } else if (sl == 5 && !strncmp(what, "adamw", sl) && !strcmp(name, "grad_norm")) {
        r->grad_norm *= 1.1;
    } else if ((sl == 8 && !strncmp(what, "backward", sl)) || (sl == 5 && !strncmp(what, "adamw", sl))) {
        const model_tensor *t = model_find_tensor(r->m, name);
        if (!t) return tidal_fail(TIDAL_ERR_INVALID, "%s: the tiny model has no tensor '%s'", SELFCHECK_PLANT_ENV, name);
        perturb((sl == 8 ? r->grads : model_params(r->m, NULL)) + t->offset, t->numel);
    } else {
        return tidal_fail(TIDAL_ERR_INVALID, "%s: '%s' names nothing (forward:logprob, forward:entropy, "
                          "backward:TENSOR, adamw:TENSOR, adamw:grad_norm)", SELFCHECK_PLANT_ENV, what);
    }
    tidal_log(TIDAL_LOG_WARN, "trainer self-check: %s planted an error in %s's %s", SELFCHECK_PLANT_ENV,
              trainer_device_kind_name(r->kind), what);
    return TIDAL_OK;
}

/* ---- the comparison ---- */

/* ||got - want|| / ||want|| (||got - want|| when want is zero); infinity when
 * either holds a NaN or an infinity. */
static double rel_err(const float *got, const float *want, size_t n)
{
    double dd = 0, ww = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(want[i])) return INFINITY;
        const double d = (double)got[i] - (double)want[i];
        dd += d * d;
        ww += (double)want[i] * want[i];
    }
    return ww > 0 ? sqrt(dd / ww) : sqrt(dd);
}

/* One tensor's comparison: err into *worst, a failure naming it over tol. */
static tidal_status judge(const char *dev, const char *stage, const char *what, double err, double tol, double *worst)
{
    if (err > *worst || isnan(err)) *worst = err;
    if (err <= tol) return TIDAL_OK; /* NaN fails */
    return tidal_fail(TIDAL_ERR_UNAVAILABLE, "trainer self-check (%s): %s: %s: error %.3g > %.0e (||%s - cpu|| / ||cpu||)",
                      dev, stage, what, err, tol, dev);
}

tidal_status selfcheck_compare(const selfcheck_result *got, const selfcheck_result *want, double tol,
                               selfcheck_errors *errs)
{
    selfcheck_errors e = {0};
    if (errs) *errs = e;
    char devbuf[32];
    const char *dev = label(got->kind, got->prec, devbuf, sizeof devbuf);
    if (!got->m || !want->m || got->T != want->T || got->n != want->n)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer self-check (%s): the two result sets are not of one model and batch",
                          dev);
    const size_t T = (size_t)want->T;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(judge(dev, "forward", "logprob", rel_err(got->logprob, want->logprob, T), tol, &e.forward));
    TRY_GOTO(judge(dev, "forward", "entropy", rel_err(got->entropy, want->entropy, T), tol, &e.forward));
    char what[160];
    const int nt = model_num_tensors(want->m);
    for (int i = 0; i < nt; i++) {
        const model_tensor *t = model_tensor_at(want->m, i);
        snprintf(what, sizeof what, "gradient of %s", t->name);
        TRY_GOTO(judge(dev, "backward", what, rel_err(got->grads + t->offset, want->grads + t->offset, t->numel), tol,
                       &e.backward));
    }
    const double gn = isfinite(got->grad_norm) && isfinite(want->grad_norm)
                          ? fabs(got->grad_norm - want->grad_norm) / (want->grad_norm > 0 ? want->grad_norm : 1.0)
                          : INFINITY;
    TRY_GOTO(judge(dev, "adamw", "gradient norm", gn, tol, &e.adamw));
    const float *pg = model_params(got->m, NULL), *pw = model_params(want->m, NULL);
    for (int i = 0; i < nt; i++) {
        const model_tensor *t = model_tensor_at(want->m, i);
        snprintf(what, sizeof what, "%s after the update", t->name);
        TRY_GOTO(judge(dev, "adamw", what, rel_err(pg + t->offset, pw + t->offset, t->numel), tol, &e.adamw));
    }
cleanup:
    if (errs) *errs = e;
    return st;
}

tidal_status trainer_selfcheck(trainer_device_kind kind, trainer_precision prec, selfcheck_errors *errs)
{
    if (errs) *errs = (selfcheck_errors){0};
    char devbuf[32];
    const char *dev = label(kind, prec, devbuf, sizeof devbuf);
    const double tol = selfcheck_tolerance(prec);
    selfcheck_result want = {0}, got = {0};
    selfcheck_errors e = {0};
    tidal_status st = TIDAL_OK;
    st = selfcheck_run(kind, prec, &got); /* the device first: one that is not there fails before the CPU works */
    if (st != TIDAL_OK) {
        tidal_wrap(st, "trainer self-check (%s)", dev);
        goto cleanup;
    }
    st = selfcheck_run(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, &want);
    if (st != TIDAL_OK) {
        tidal_wrap(st, "trainer self-check (cpu)");
        goto cleanup;
    }
    const char *plant = getenv(SELFCHECK_PLANT_ENV);
    if (plant && *plant) TRY_GOTO(selfcheck_plant(&got, plant));
    TRY_GOTO(selfcheck_compare(&got, &want, tol, &e));
    tidal_log(TIDAL_LOG_INFO, "trainer self-check (%s): the tiny model agrees with the CPU: worst error forward %.2g, "
              "backward %.2g, adamw %.2g (tolerance %.0e)", dev, e.forward, e.backward, e.adamw, tol);
cleanup:
    if (errs) *errs = e;
    selfcheck_result_free(&got);
    selfcheck_result_free(&want);
    return st;
}

/* ---- the loss over several steps ---- */

/* steps updates of the tiny model on kind minimising the batch's mean token
 * NLL: loss[i] before update i, loss[steps] after the last. */
static tidal_status track_run(trainer_device_kind kind, trainer_precision prec, int steps, double *loss)
{
    const model_config c = selfcheck_model_config();
    int T = 0;
    for (int i = 0; i < SC_S; i++) T += sc_lengths[i];
    int32_t ids[128], targets[128], cu[SC_S + 1];
    float dlogprob[128], logprob[128], entropy[128];
    make_batch(c.vocab_size, ids, targets, cu, dlogprob, T);
    for (int t = 0; t < T; t++) dlogprob[t] = -1.0f / (float)T; /* d(mean NLL) / d logprob */
    const model_batch b = {.T = T, .S = SC_S, .ids = ids, .targets = targets, .cu_seqlens = cu,
                           .inv_temp = 1.0f / SC_TEMPERATURE};
    model *m = NULL;
    adamw *opt = NULL;
    trainer_device *d = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(model_create(&c, &m));
    model_init_random(m, SC_SEED, 0.02f, true);
    size_t n = 0;
    model_params(m, &n);
    adamw_cfg ac = adamw_defaults();
    ac.eps = SELFCHECK_ADAMW_EPS;
    TRY_GOTO(adamw_create(n, &ac, &opt));
    TRY_GOTO(trainer_device_create_in(kind, prec, m, opt, &d));
    for (int i = 0; i <= steps; i++) {
        TRY_GOTO(trainer_device_zero_grads(d));
        TRY_GOTO(tidal_wrap(trainer_device_forward(d, &b, logprob, entropy), "step %d: forward", i));
        double sum = 0;
        for (int t = 0; t < T; t++) sum += logprob[t];
        loss[i] = -sum / T;
        if (i == steps) break;
        TRY_GOTO(tidal_wrap(trainer_device_backward(d, &b, dlogprob, NULL), "step %d: backward", i));
        double norm = 0;
        TRY_GOTO(tidal_wrap(trainer_device_update(d, SC_CLIP, SC_LR, &norm), "step %d: adamw", i));
    }
cleanup:
    trainer_device_free(d);
    adamw_free(opt);
    model_free(m);
    return st;
}

tidal_status selfcheck_track_compare(selfcheck_track_result *r, const char *dev, double tol)
{
    r->worst = 0;
    for (int i = 0; i <= r->steps; i++) {
        const double dl = r->dev_loss[i], cl = r->cpu_loss[i];
        const double err = isfinite(dl) && isfinite(cl) ? fabs(dl - cl) / (fabs(cl) > 0 ? fabs(cl) : 1.0) : INFINITY;
        if (err > r->worst || isnan(err)) r->worst = err;
        if (!(err <= tol))
            return tidal_fail(TIDAL_ERR_UNAVAILABLE, "trainer loss track (%s): %s %d: loss %.7g against the CPU's %.7g: "
                              "error %.3g > %.0e", dev, i < r->steps ? "before update" : "after update",
                              i < r->steps ? i + 1 : r->steps, dl, cl, err, tol);
    }
    if (!(r->cpu_loss[r->steps] < r->cpu_loss[0]))
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "trainer loss track (%s): the CPU's loss did not fall over %d update(s) "
                          "(%.7g -> %.7g): the steps trained nothing, the comparison would be empty", dev, r->steps,
                          r->cpu_loss[0], r->cpu_loss[r->steps]);
    return TIDAL_OK;
}

tidal_status selfcheck_track(trainer_device_kind kind, trainer_precision prec, int steps, selfcheck_track_result *out)
{
    char devbuf[32];
    const char *dev = label(kind, prec, devbuf, sizeof devbuf);
    if (steps < 1 || steps > SELFCHECK_TRACK_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer loss track (%s): steps %d is not in 1 .. %d", dev, steps,
                          SELFCHECK_TRACK_MAX);
    selfcheck_track_result *r = calloc(1, sizeof *r);
    if (!r) return tidal_fail(TIDAL_ERR_NOMEM, "trainer loss track: out of memory");
    r->steps = steps;
    tidal_status st = TIDAL_OK;
    st = track_run(kind, prec, steps, r->dev_loss); /* the device first: one that is not there fails first */
    if (st != TIDAL_OK) {
        tidal_wrap(st, "trainer loss track (%s)", dev);
        goto cleanup;
    }
    st = track_run(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, steps, r->cpu_loss);
    if (st != TIDAL_OK) {
        tidal_wrap(st, "trainer loss track (cpu)");
        goto cleanup;
    }
    st = selfcheck_track_compare(r, dev, selfcheck_tolerance(prec));
cleanup:
    if (out) *out = *r;
    free(r);
    return st;
}

/* ---- the rerun ---- */

/* How many of n elements of es bytes differ in their bits. */
static size_t bits_differ(const void *a, const void *b, size_t n, size_t es)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += memcmp((const char *)a + i * es, (const char *)b + i * es, es) != 0;
    return k;
}

static tidal_status same(const char *dev, const char *stage, const char *what, size_t k, size_t n)
{
    if (k == 0) return TIDAL_OK;
    return tidal_fail(TIDAL_ERR_UNAVAILABLE, "trainer rerun (%s): %s: %s: %zu of %zu element(s) differ between two runs",
                      dev, stage, what, k, n);
}

tidal_status selfcheck_same_bits(const selfcheck_result *a, const selfcheck_result *b)
{
    char devbuf[32];
    const char *dev = label(a->kind, a->prec, devbuf, sizeof devbuf);
    if (!a->m || !b->m || a->T != b->T || a->n != b->n)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer rerun (%s): the two result sets are not of one model and batch", dev);
    const size_t T = (size_t)a->T;
    TRY(same(dev, "forward", "logprob", bits_differ(a->logprob, b->logprob, T, sizeof(float)), T));
    TRY(same(dev, "forward", "entropy", bits_differ(a->entropy, b->entropy, T, sizeof(float)), T));
    char what[160];
    const int nt = model_num_tensors(a->m);
    for (int i = 0; i < nt; i++) {
        const model_tensor *t = model_tensor_at(a->m, i);
        snprintf(what, sizeof what, "gradient of %s", t->name);
        TRY(same(dev, "backward", what, bits_differ(a->grads + t->offset, b->grads + t->offset, t->numel, sizeof(float)),
                 t->numel));
    }
    TRY(same(dev, "adamw", "gradient norm", bits_differ(&a->grad_norm, &b->grad_norm, 1, sizeof(double)), 1));
    const float *pa = model_params(a->m, NULL), *pb = model_params(b->m, NULL);
    for (int i = 0; i < nt; i++) {
        const model_tensor *t = model_tensor_at(a->m, i);
        snprintf(what, sizeof what, "%s after the update", t->name);
        TRY(same(dev, "adamw", what, bits_differ(pa + t->offset, pb + t->offset, t->numel, sizeof(float)), t->numel));
    }
    return TIDAL_OK;
}

tidal_status selfcheck_rerun(trainer_device_kind kind, trainer_precision prec)
{
    char devbuf[32];
    const char *dev = label(kind, prec, devbuf, sizeof devbuf);
    selfcheck_result first = {0}, second = {0};
    tidal_status st = selfcheck_run(kind, prec, &first);
    if (st == TIDAL_OK) st = selfcheck_run(kind, prec, &second);
    if (st != TIDAL_OK) tidal_wrap(st, "trainer rerun (%s)", dev);
    else st = selfcheck_same_bits(&first, &second);
    selfcheck_result_free(&first);
    selfcheck_result_free(&second);
    return st;
}
