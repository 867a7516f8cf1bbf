/* test_trainer_device.c - trainer/device.h, the seam between the trainer step
 * and where the model computes.
 *
 * On the CPU the device must be exactly the code the step ran before it
 * existed: forward, backward, clip_grad_norm + adamw_step, bit for bit against
 * the same calls on a twin model. trainer.device's resolution (auto, cpu,
 * cuda, anything else) and trainer.precision's (auto, bf16 refused on the
 * CPU, fp32), the CUDA device's refusal where no GPU answers (the
 * path `make test` takes: CUDA compiled in, no driver; or no CUDA in the
 * build) and, on a GPU host, the CUDA device against the CPU within the
 * self-check's tolerance. The peak-FLOPs table MFU uses.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model/model.h"
#include "trainer/device.h"
#include "trainer/optimizer.h"
#include "trainer/selfcheck.h"

static const model_config tiny = {.type = MODEL_QWEN2, .vocab_size = 97, .hidden_size = 32, .num_layers = 2,
                                  .num_heads = 4, .num_kv_heads = 2, .head_dim = 8, .intermediate_size = 48,
                                  .max_position_embeddings = 256, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                                  .tie_word_embeddings = true, .qkv_bias = true, .o_bias = false,
                                  .bos_token_id = -1, .eos_token_id = -1};

#define NT 23
static int32_t ids[NT], targets[NT], cu[4] = {0, 5, 6, NT};
static float dlogprob[NT];

static model_batch batch(void)
{
    for (int t = 0; t < NT; t++) {
        ids[t] = (int32_t)((t * 37 + 11) % tiny.vocab_size);
        targets[t] = (int32_t)((t * 53 + 3) % tiny.vocab_size);
        dlogprob[t] = (t % 4 == 1 ? 0.3f : -1.0f) / (float)NT;
    }
    return (model_batch){.T = NT, .S = 3, .ids = ids, .targets = targets, .cu_seqlens = cu, .inv_temp = 1.25f};
}

static bool same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

/* Two updates through the CPU device equal the step's old calls on a twin. */
static void test_cpu_device_is_the_cpu_path(void)
{
    model *a = NULL, *b = NULL;
    adamw *oa = NULL, *ob = NULL;
    trainer_device *d = NULL;
    CHECK_OK(model_create(&tiny, &a));
    CHECK_OK(model_create(&tiny, &b));
    if (!a || !b) goto cleanup;
    model_init_random(a, 7, 0.05f, true);
    model_init_random(b, 7, 0.05f, true);
    size_t n = 0;
    model_params(a, &n);
    adamw_cfg ac = adamw_defaults();
    CHECK_OK(adamw_create(n, &ac, &oa));
    CHECK_OK(adamw_create(n, &ac, &ob));
    CHECK_OK(trainer_device_create(TRAINER_DEVICE_CPU, a, oa, &d));
    if (!oa || !ob || !d) goto cleanup;
    CHECK(trainer_device_kind_of(d) == TRAINER_DEVICE_CPU);
    CHECK(trainer_device_model(d) == a && trainer_device_optimizer(d) == oa);
    const model_batch mb = batch();
    float lpa[NT], lpb[NT], ea[NT], eb[NT];
    for (int u = 0; u < 2; u++) {
        const double bound = u == 0 ? 1e-3 : 0.0; /* the first update clipped, the second not */
        CHECK_OK(trainer_device_zero_grads(d));
        CHECK_OK(trainer_device_forward(d, &mb, lpa, ea));
        CHECK_OK(trainer_device_backward(d, &mb, dlogprob, NULL));
        double na = 0;
        CHECK_OK(trainer_device_update(d, bound, 1e-3f, &na));
        CHECK_OK(trainer_device_sync_params(d)); /* no-ops on the CPU */
        CHECK_OK(trainer_device_sync_grads(d));
        CHECK_OK(trainer_device_sync_optimizer(d));

        model_zero_grads(b);
        CHECK_OK(model_forward(b, &mb, lpb, eb, NULL));
        CHECK_OK(model_backward(b, &mb, dlogprob, NULL));
        const double nb = clip_grad_norm(model_grads(b, NULL), n, bound);
        adamw_step(ob, model_params(b, NULL), model_grads(b, NULL), NULL, 1e-3f);

        CHECK_MSG(na == nb && na > 0, "update %d: norm %.17g vs %.17g", u, na, nb);
        CHECK(same_bits(lpa, lpb, NT) && same_bits(ea, eb, NT));
        CHECK_MSG(same_bits(model_params(a, NULL), model_params(b, NULL), n), "update %d: parameters differ", u);
        CHECK(same_bits(oa->m, ob->m, n) && same_bits(oa->v, ob->v, n) && oa->step == ob->step);
    }
    CHECK(oa->step == 2);
    /* a device over a model without an optimizer forwards but does not update */
    trainer_device *ro = NULL;
    CHECK_OK(trainer_device_create(TRAINER_DEVICE_CPU, b, NULL, &ro));
    if (ro) {
        double nn = 0;
        CHECK_OK(trainer_device_forward(ro, &mb, lpb, eb));
        CHECK_STATUS(trainer_device_update(ro, 0.0, 1e-3f, &nn), TIDAL_ERR_INVALID);
        CHECK(strstr(tidal_errmsg(), "without an optimizer") != NULL);
    }
    trainer_device_free(ro);
    /* a bad batch is refused through the device as by the model */
    model_batch bad = mb;
    int32_t bad_ids[NT];
    memcpy(bad_ids, ids, sizeof bad_ids);
    bad_ids[4] = tiny.vocab_size;
    bad.ids = bad_ids;
    CHECK_STATUS(trainer_device_forward(d, &bad, lpa, ea), TIDAL_ERR_INVALID);
cleanup:
    trainer_device_free(d);
    adamw_free(oa);
    adamw_free(ob);
    model_free(a);
    model_free(b);
}

/* trainer.device's values; cuda and auto as this machine allows. */
static void test_resolve(void)
{
    trainer_device_kind k = TRAINER_DEVICE_CUDA;
    char why[512];
    CHECK_OK(trainer_device_resolve("cpu", &k, why, sizeof why));
    CHECK(k == TRAINER_DEVICE_CPU && strstr(why, "cpu"));
    CHECK_STATUS(trainer_device_resolve("gpu", &k, why, sizeof why), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "trainer.device: 'gpu' is not one of auto, cpu, cuda") != NULL);
    const bool gpu = trainer_device_cuda_available() == TIDAL_OK;
    CHECK_OK(trainer_device_resolve("auto", &k, why, sizeof why));
    CHECK_MSG(k == (gpu ? TRAINER_DEVICE_CUDA : TRAINER_DEVICE_CPU), "auto chose %s (%s)", trainer_device_kind_name(k),
              why);
    if (!gpu) CHECK_MSG(strstr(why, "trainer.device auto: the CPU (no CUDA: ") != NULL, "why: %s", why);
    tidal_status st = trainer_device_resolve("cuda", &k, why, sizeof why);
    if (gpu) {
        CHECK(st == TIDAL_OK && k == TRAINER_DEVICE_CUDA);
    } else {
        CHECK(st == TIDAL_ERR_UNAVAILABLE);
        const char *msg = tidal_errmsg();
        CHECK_MSG(strstr(msg, "trainer.device cuda: ") == msg &&
                      (strstr(msg, trainer_device_cuda_built() ? "no usable device" : "no CUDA path") != NULL),
                  "message: %s", msg);
    }
}

/* trainer.precision's values: auto is bf16 on cuda and fp32 on the CPU; bf16
 * is refused on the CPU by name, in the resolution and in the device itself
 * (the decision only: no GPU needed); anything else is invalid. */
static void test_precision(void)
{
    trainer_precision p = TRAINER_PRECISION_BF16;
    char why[512];
    CHECK_OK(trainer_precision_resolve("auto", TRAINER_DEVICE_CPU, &p, why, sizeof why));
    CHECK_MSG(p == TRAINER_PRECISION_FP32 && !strcmp(why, "trainer.precision auto: fp32 (the CPU)"), "why: %s", why);
    CHECK_OK(trainer_precision_resolve(NULL, TRAINER_DEVICE_CPU, &p, NULL, 0));
    CHECK(p == TRAINER_PRECISION_FP32);
    CHECK_OK(trainer_precision_resolve("fp32", TRAINER_DEVICE_CPU, &p, why, sizeof why));
    CHECK(p == TRAINER_PRECISION_FP32);
    CHECK_STATUS(trainer_precision_resolve("bf16", TRAINER_DEVICE_CPU, &p, why, sizeof why), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "trainer.precision bf16: the CPU trainer computes in fp32 only") == tidal_errmsg(),
              "%s", tidal_errmsg());
    CHECK_OK(trainer_precision_resolve("auto", TRAINER_DEVICE_CUDA, &p, why, sizeof why));
    CHECK_MSG(p == TRAINER_PRECISION_BF16 && strstr(why, "trainer.precision auto: bf16 on cuda"), "why: %s", why);
    CHECK_OK(trainer_precision_resolve("bf16", TRAINER_DEVICE_CUDA, &p, why, sizeof why));
    CHECK(p == TRAINER_PRECISION_BF16);
    CHECK_OK(trainer_precision_resolve("fp32", TRAINER_DEVICE_CUDA, &p, why, sizeof why));
    CHECK_MSG(p == TRAINER_PRECISION_FP32 && strstr(why, "TF32 off"), "why: %s", why);
    CHECK_STATUS(trainer_precision_resolve("fp16", TRAINER_DEVICE_CUDA, &p, why, sizeof why), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "trainer.precision: 'fp16' is not one of auto, bf16, fp32") != NULL);
    CHECK(!strcmp(trainer_precision_name(TRAINER_PRECISION_BF16), "bf16") &&
          !strcmp(trainer_precision_name(TRAINER_PRECISION_FP32), "fp32"));
    /* the device refuses bf16 on the CPU too, and the fp32 CPU device is the old one */
    model *m = NULL;
    trainer_device *d = NULL;
    CHECK_OK(model_create(&tiny, &m));
    if (!m) return;
    CHECK_STATUS(trainer_device_create_in(TRAINER_DEVICE_CPU, TRAINER_PRECISION_BF16, m, NULL, &d), TIDAL_ERR_UNAVAILABLE);
    CHECK(d == NULL && strstr(tidal_errmsg(), "trainer device cpu: precision bf16: the CPU computes in fp32 only"));
    CHECK_OK(trainer_device_create_in(TRAINER_DEVICE_CPU, TRAINER_PRECISION_FP32, m, NULL, &d));
    CHECK(d && trainer_device_precision_of(d) == TRAINER_PRECISION_FP32 && trainer_device_kind_of(d) == TRAINER_DEVICE_CPU);
    trainer_device_free(d);
    d = NULL;
    CHECK_OK(trainer_device_create(TRAINER_DEVICE_CPU, m, NULL, &d));
    CHECK(d && trainer_device_precision_of(d) == TRAINER_PRECISION_FP32);
    trainer_device_free(d);
    model_free(m);
}

/* The CUDA device: refused without a GPU, naming it; on a GPU host, the
 * forward and backward within the self-check's tolerance of the CPU's. */
static void test_cuda_device(void)
{
    model *m = NULL, *c = NULL;
    adamw *o = NULL;
    trainer_device *d = NULL;
    CHECK_OK(model_create(&tiny, &m));
    CHECK_OK(model_create(&tiny, &c));
    if (!m || !c) goto cleanup;
    model_init_random(m, 3, 0.05f, true);
    model_init_random(c, 3, 0.05f, true);
    size_t n = 0;
    model_params(m, &n);
    CHECK_OK(adamw_create(n, NULL, &o));
    tidal_status st = trainer_device_create(TRAINER_DEVICE_CUDA, m, o, &d);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", tidal_errmsg());
    if (trainer_device_cuda_available() != TIDAL_OK) {
        CHECK(st == TIDAL_ERR_UNAVAILABLE && d == NULL);
        CHECK_MSG(strstr(msg, "trainer device cuda: ") == msg &&
                      strstr(msg, trainer_device_cuda_built() ? "no usable device" : "no CUDA path") != NULL,
                  "message: %s", msg);
        goto cleanup;
    }
    CHECK_OK(st);
    if (!d) goto cleanup;
    const model_batch mb = batch();
    float lg[NT], eg[NT], lc[NT], ec[NT];
    CHECK_OK(trainer_device_zero_grads(d));
    CHECK_OK(trainer_device_forward(d, &mb, lg, eg));
    CHECK_OK(trainer_device_backward(d, &mb, dlogprob, NULL));
    CHECK_OK(trainer_device_sync_grads(d));
    model_zero_grads(c);
    CHECK_OK(model_forward(c, &mb, lc, ec, NULL));
    CHECK_OK(model_backward(c, &mb, dlogprob, NULL));
    double dd = 0, rr = 0;
    for (int t = 0; t < NT; t++) dd += (lg[t] - lc[t]) * (double)(lg[t] - lc[t]), rr += (double)lc[t] * lc[t];
    CHECK_MSG(sqrt(dd / rr) <= SELFCHECK_TOL, "logprob error %g", sqrt(dd / rr));
    const float *gg = model_grads(m, NULL), *gc = model_grads(c, NULL);
    dd = rr = 0;
    for (size_t i = 0; i < n; i++) dd += (gg[i] - gc[i]) * (double)(gg[i] - gc[i]), rr += (double)gc[i] * gc[i];
    CHECK_MSG(sqrt(dd / rr) <= SELFCHECK_TOL, "gradient error %g", sqrt(dd / rr));
    double norm = 0;
    CHECK_OK(trainer_device_update(d, 0.0, 1e-3f, &norm));
    CHECK_OK(trainer_device_sync_optimizer(d));
    CHECK(o->step == 1);
cleanup:
    trainer_device_free(d);
    adamw_free(o);
    model_free(m);
    model_free(c);
}

static void test_peak_flops(void)
{
    CHECK(trainer_device_peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12);
    CHECK(trainer_device_peak_bf16_flops("NVIDIA H100 PCIe") == 756e12);
    CHECK(trainer_device_peak_bf16_flops("NVIDIA H100 NVL") == 835e12);
    CHECK(trainer_device_peak_bf16_flops("NVIDIA H200") == 989e12);
    CHECK(trainer_device_peak_bf16_flops("NVIDIA H200 NVL") == 835e12);
    CHECK(trainer_device_peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12);
    CHECK(trainer_device_peak_bf16_flops("NVIDIA A100 80GB PCIe") == 312e12);
    CHECK(trainer_device_peak_bf16_flops("NVIDIA GeForce RTX 4090") == 0.0);
    CHECK(trainer_device_peak_bf16_flops(NULL) == 0.0);
}

int main(void)
{
    RUN(test_cpu_device_is_the_cpu_path);
    RUN(test_resolve);
    RUN(test_precision);
    RUN(test_cuda_device);
    RUN(test_peak_flops);
    return check_summary();
}
