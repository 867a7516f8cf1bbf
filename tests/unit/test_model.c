/* The whole CPU model on a tiny config: gradients against central finite
 * differences, packing (a sequence's outputs do not depend on its neighbours),
 * save/load round trip, load errors; and the optimizer: AdamW against a hand
 * computation, clipping, learning-rate schedules. */
#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "kernels/cpu/ops.h"
#include "model/model.h"
#include "trainer/optimizer.h"

static model_config tiny(bool tied, model_type type)
{
    model_config c = {.type = type, .vocab_size = 13, .hidden_size = 12, .num_layers = 2, .num_heads = 3,
                      .num_kv_heads = 1, .head_dim = 4, .intermediate_size = 10, .max_position_embeddings = 64,
                      .rope_theta = 1e4, .rms_norm_eps = 1e-6, .tie_word_embeddings = tied,
                      .qkv_bias = type == MODEL_QWEN2, .o_bias = false, .bos_token_id = -1, .eos_token_id = -1};
    return c;
}

static const int32_t IDS[] = {1, 5, 7, 2, 12, 0, 3, 9, 4};
static const int32_t TGT[] = {5, 7, 2, 12, 0, 3, 9, 4, 8};
static const int32_t CU[] = {0, 4, 5, 9};
static const float LW[] = {0.5f, -1.0f, 0.25f, 1.0f, 2.0f, -0.5f, 1.0f, 0.75f, -0.25f};

/* loss = -sum w * logprob, in double */
static double loss_of(model *m, const model_batch *b)
{
    float lp[9], ent[9];
    if (model_forward(m, b, lp, ent, NULL) != TIDAL_OK) return NAN;
    double l = 0.0;
    for (int t = 0; t < b->T; t++) l -= (double)LW[t] * lp[t];
    return l;
}

static void gradcheck(bool tied, model_type type)
{
    model_config c = tiny(tied, type);
    model *m = NULL;
    CHECK_OK(model_create(&c, &m));
    model_init_random(m, 7, 0.3f, true);
    model_batch b = {.T = 9, .S = 3, .ids = IDS, .targets = TGT, .cu_seqlens = CU, .inv_temp = 1.0f};
    float lp[9], ent[9], dlp[9];
    for (int t = 0; t < 9; t++) dlp[t] = -LW[t];
    model_zero_grads(m);
    CHECK_OK(model_forward(m, &b, lp, ent, NULL));
    CHECK_OK(model_backward(m, &b, dlp, NULL));
    size_t n = 0;
    float *p = model_params(m, &n);
    float *g = model_grads(m, NULL);
    /* every parameter tensor: compare a few coordinates each */
    double worst = 0.0;
    for (int i = 0; i < model_num_tensors(m); i++) {
        const model_tensor *t = model_tensor_at(m, i);
        for (size_t j = 0; j < t->numel; j += 1 + t->numel / 5) {
            /* central differences at eps and eps/2, Richardson-extrapolated: the tiny
             * random model is curved enough that O(eps^2) matters; the fp32 forward
             * leaves ~1e-4 of noise in each difference, hence the absolute floor */
            float *x = p + t->offset + j;
            const float keep = *x;
            double fd[2];
            for (int k = 0; k < 2; k++) {
                const float eps = k ? 5e-3f : 1e-2f;
                *x = keep + eps;
                double lplus = loss_of(m, &b);
                *x = keep - eps;
                double lminus = loss_of(m, &b);
                *x = keep;
                fd[k] = (lplus - lminus) / (2.0 * eps);
            }
            double est = (4.0 * fd[1] - fd[0]) / 3.0;
            double an = g[t->offset + j];
            double err = fabs(est - an) / (fmax(fabs(est), fabs(an)) + 2.5e-2);
            if (err > worst) worst = err;
            CHECK_MSG(err < 2e-2, "%s[%zu]: finite differences %.6g, backward %.6g", t->name, j, est, an);
        }
    }
    printf("  %s %s: worst relative gradient error %.2e over %d tensors\n", type == MODEL_QWEN2 ? "qwen2" : "llama",
           tied ? "tied" : "untied", worst, model_num_tensors(m));
    model_free(m);
}

static void test_gradients_tied_qwen2(void) { gradcheck(true, MODEL_QWEN2); }
static void test_gradients_untied_llama(void) { gradcheck(false, MODEL_LLAMA); }
static void test_gradients_tied_llama(void) { gradcheck(true, MODEL_LLAMA); }
static void test_gradients_untied_qwen2(void) { gradcheck(false, MODEL_QWEN2); }

/* Packing: sequence 1 alone gives the same outputs as inside the batch. */
static void test_packing_isolates_sequences(void)
{
    model_config c = tiny(true, MODEL_QWEN2);
    model *m = NULL;
    CHECK_OK(model_create(&c, &m));
    model_init_random(m, 3, 0.3f, true);
    float lp[9], ent[9], lp2[4], ent2[4];
    model_batch b = {.T = 9, .S = 3, .ids = IDS, .targets = TGT, .cu_seqlens = CU};
    CHECK_OK(model_forward(m, &b, lp, ent, NULL));
    const int32_t cu2[] = {0, 4};
    model_batch one = {.T = 4, .S = 1, .ids = IDS + 5, .targets = TGT + 5, .cu_seqlens = cu2};
    CHECK_OK(model_forward(m, &one, lp2, ent2, NULL));
    for (int t = 0; t < 4; t++)
        CHECK_MSG(fabsf(lp[5 + t] - lp2[t]) < 1e-5f && fabsf(ent[5 + t] - ent2[t]) < 1e-5f, "token %d: %g vs %g", t,
                  lp[5 + t], lp2[t]);
    for (int t = 0; t < 9; t++) CHECK(lp[t] <= 0.0f && ent[t] >= 0.0f && ent[t] <= logf(13.0f) + 1e-4f);
    model_free(m);
}

/* MLP recomputation changes memory, not results: gradients bit-identical. */
static void test_recompute_mlp_same_gradients(void)
{
    model_config c = tiny(false, MODEL_QWEN2);
    model *m = NULL;
    CHECK_OK(model_create(&c, &m));
    model_init_random(m, 5, 0.3f, true);
    model_batch b = {.T = 9, .S = 3, .ids = IDS, .targets = TGT, .cu_seqlens = CU, .inv_temp = 1.0f};
    float lp[9], ent[9], lp2[9], ent2[9], dlp[9];
    for (int t = 0; t < 9; t++) dlp[t] = -LW[t];
    size_t n = 0;
    model_zero_grads(m);
    CHECK_OK(model_forward(m, &b, lp, ent, NULL));
    CHECK_OK(model_backward(m, &b, dlp, ent));
    float *g = model_grads(m, &n), *keep = malloc(n * sizeof(float));
    memcpy(keep, g, n * sizeof(float));
    model_set_recompute_mlp(m, true);
    model_zero_grads(m);
    CHECK_OK(model_forward(m, &b, lp2, ent2, NULL));
    CHECK_OK(model_backward(m, &b, dlp, ent));
    int same = !memcmp(lp, lp2, sizeof lp) && !memcmp(keep, g, n * sizeof(float));
    free(keep);
    model_free(m);
    CHECK_MSG(same, "recomputing the MLP changed the results");
    CHECK(model_activation_floats_per_token(&c, true) < model_activation_floats_per_token(&c, false));
}

/* Logits at position t of sequence ids[0..n) from the training forward. */
static void full_logits(model *m, const int32_t *ids, int n, float *logits)
{
    int32_t cu[2] = {0, n};
    float lp[64], ent[64];
    model_batch b = {.T = n, .S = 1, .ids = ids, .targets = ids, .cu_seqlens = cu, .inv_temp = 1.0f};
    tidal_status s = model_forward(m, &b, lp, ent, logits);
    assert(s == TIDAL_OK);
    (void)s;
}

static float max_diff(const float *a, const float *b, int n)
{
    float d = 0.0f;
    for (int i = 0; i < n; i++) d = fmaxf(d, fabsf(a[i] - b[i]));
    return d;
}

/* KV-cache inference (prefill, decode, both mixed in one call) gives the
 * training forward's logits. */
static void test_infer_matches_forward(void)
{
    model_config c = tiny(false, MODEL_QWEN2);
    const int V = c.vocab_size;
    model *m = NULL;
    model_kv *kv = NULL;
    CHECK_OK(model_create(&c, &m));
    model_init_random(m, 21, 0.3f, true);
    CHECK_OK(model_kv_create(&c, 3, 16, &kv));
    /* three sequences: slot 2 gets 5 prompt tokens, slot 0 gets 1; then both decode
     * while slot 1 prefills 3 tokens in the same call */
    const int32_t seq[3][12] = {{4, 9, 1, 1, 7, 3}, {2, 8, 5, 11, 6}, {12, 0, 3, 3, 10, 4, 7, 2}};
    float want[16 * 13];
    int32_t slots1[2] = {2, 0}, cu1[3] = {0, 5, 6}, tok1[6] = {12, 0, 3, 3, 10, 4};
    float logits[3 * 13];
    CHECK_OK(model_infer(m, kv, 2, slots1, cu1, tok1, logits));
    CHECK(model_kv_len(kv, 2) == 5 && model_kv_len(kv, 0) == 1 && model_kv_len(kv, 1) == 0);
    full_logits(m, seq[2], 5, want);
    CHECK_MSG(max_diff(logits, want + 4 * V, V) < 1e-4f, "prefill slot 2: %g", max_diff(logits, want + 4 * V, V));
    full_logits(m, seq[0], 1, want);
    CHECK(max_diff(logits + V, want, V) < 1e-4f);
    /* mixed: slot 2 decodes token 5, slot 0 decodes token 1, slot 1 prefills 3 */
    int32_t slots2[3] = {2, 0, 1}, cu2[4] = {0, 1, 2, 5}, tok2[5] = {4, 9, 2, 8, 5};
    CHECK_OK(model_infer(m, kv, 3, slots2, cu2, tok2, logits));
    full_logits(m, seq[2], 6, want);
    CHECK_MSG(max_diff(logits, want + 5 * V, V) < 1e-4f, "decode slot 2: %g", max_diff(logits, want + 5 * V, V));
    full_logits(m, seq[0], 2, want);
    CHECK(max_diff(logits + V, want + V, V) < 1e-4f);
    full_logits(m, seq[1], 3, want);
    CHECK(max_diff(logits + 2 * V, want + 2 * V, V) < 1e-4f);
    /* errors change nothing */
    int32_t dup[2] = {1, 1}, cud[3] = {0, 1, 2}, tokd[2] = {1, 2};
    CHECK_STATUS(model_infer(m, kv, 2, dup, cud, tokd, logits), TIDAL_ERR_INVALID);
    int32_t one[1] = {0}, cuo[2] = {0, 15}, toko[15] = {0};
    CHECK_STATUS(model_infer(m, kv, 1, one, cuo, toko, logits), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "slot 0 would hold 17 tokens") != NULL);
    CHECK(model_kv_len(kv, 0) == 2 && model_kv_len(kv, 1) == 3);
    model_kv_reset(kv, 0);
    CHECK(model_kv_len(kv, 0) == 0);
    model_kv_free(kv);
    model_free(m);
}

static void test_batch_errors(void)
{
    model_config c = tiny(true, MODEL_QWEN2);
    model *m = NULL;
    CHECK_OK(model_create(&c, &m));
    float lp[9], ent[9];
    int32_t bad_ids[9];
    memcpy(bad_ids, IDS, sizeof bad_ids);
    bad_ids[3] = 13;
    model_batch b = {.T = 9, .S = 3, .ids = bad_ids, .targets = TGT, .cu_seqlens = CU};
    CHECK_STATUS(model_forward(m, &b, lp, ent, NULL), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "input_ids[3] = 13") != NULL);
    const int32_t cu_bad[] = {0, 4, 4, 9};
    model_batch b2 = {.T = 9, .S = 3, .ids = IDS, .targets = TGT, .cu_seqlens = cu_bad};
    CHECK_STATUS(model_forward(m, &b2, lp, ent, NULL), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "sequence 1 has length 0") != NULL);
    float dlp[9] = {0};
    model *fresh = NULL;
    CHECK_OK(model_create(&c, &fresh));
    CHECK_STATUS(model_backward(fresh, &b, dlp, NULL), TIDAL_ERR_INVALID);
    model_free(fresh);
    model_free(m);
}

static void test_save_load_round_trip(void)
{
    model_config c = tiny(false, MODEL_LLAMA);
    model *m = NULL, *back = NULL;
    CHECK_OK(model_create(&c, &m));
    model_init_random(m, 11, 0.02f, false);
    char dir[] = "/tmp/tidal-model-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char sub[64];
    snprintf(sub, sizeof sub, "%s/m", dir);
    CHECK_OK(model_save(m, sub, ST_F32));
    CHECK_OK(model_load(sub, &back));
    size_t n1 = 0, n2 = 0;
    float *p1 = model_params(m, &n1), *p2 = model_params(back, &n2);
    CHECK(n1 == n2 && memcmp(p1, p2, n1 * sizeof(float)) == 0);
    model_free(back);
    /* bf16: every value within bf16 rounding */
    CHECK_OK(model_save(m, sub, ST_BF16));
    CHECK_OK(model_load(sub, &back));
    p2 = model_params(back, NULL);
    for (size_t i = 0; i < n1; i++) CHECK(fabsf(p1[i] - p2[i]) <= fabsf(p1[i]) * (1.0f / 256.0f) + 1e-30f);
    model_free(back);
    /* a config that does not match the tensors is refused, naming the tensor */
    model_config c2 = c;
    c2.intermediate_size = 11;
    model *other = NULL;
    CHECK_OK(model_create(&c2, &other));
    char sub2[64];
    snprintf(sub2, sizeof sub2, "%s/wrong", dir);
    CHECK_OK(model_save(other, sub2, ST_F32));
    char cfg_from[128], cfg_to[128];
    snprintf(cfg_from, sizeof cfg_from, "%s/config.json", sub);
    snprintf(cfg_to, sizeof cfg_to, "%s/config.json", sub2);
    CHECK(rename(cfg_from, cfg_to) == 0);
    CHECK_STATUS(model_load(sub2, &back), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "mlp.gate_proj.weight") != NULL, "%s", tidal_errmsg());
    model_free(other);
    model_free(m);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
}

static void test_adamw_matches_hand_computation(void)
{
    adamw *o = NULL;
    adamw_cfg cfg = {.beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f};
    CHECK_OK(adamw_create(2, &cfg, &o));
    float p[2] = {1.0f, -2.0f};
    const float g[2] = {0.5f, -0.25f};
    const uint8_t mask[2] = {1, 0};
    double pd[2] = {1.0, -2.0}, md[2] = {0, 0}, vd[2] = {0, 0};
    for (int step = 1; step <= 3; step++) {
        adamw_step(o, p, g, mask, 0.01f);
        for (int i = 0; i < 2; i++) {
            if (mask[i]) pd[i] -= 0.01 * 0.1 * pd[i];
            md[i] = 0.9 * md[i] + 0.1 * g[i];
            vd[i] = 0.999 * vd[i] + 0.001 * g[i] * g[i];
            double mh = md[i] / (1 - pow(0.9, step)), vh = vd[i] / (1 - pow(0.999, step));
            pd[i] -= 0.01 * mh / (sqrt(vh) + 1e-8);
        }
    }
    for (int i = 0; i < 2; i++) CHECK_MSG(fabs(p[i] - pd[i]) < 1e-6, "p[%d] = %.8f, want %.8f", i, p[i], pd[i]);
    CHECK(o->step == 3);
    adamw_free(o);
}

static void test_clip_and_schedules(void)
{
    float g[4] = {3, 0, 4, 0};
    double norm = clip_grad_norm(g, 4, 1.0);
    CHECK(fabs(norm - 5.0) < 1e-9);
    CHECK(fabsf(g[0] - 0.6f) < 1e-5f && fabsf(g[2] - 0.8f) < 1e-5f);
    norm = clip_grad_norm(g, 4, 0.0); /* no clipping */
    CHECK(fabs(norm - 1.0) < 1e-5);
    lr_schedule c = {.kind = LR_CONSTANT, .base = 1e-3f, .warmup = 0};
    CHECK(lr_at(&c, 0) == 1e-3f && lr_at(&c, 1000) == 1e-3f);
    lr_schedule cos = {.kind = LR_COSINE, .base = 1.0f, .warmup = 10, .total = 110, .min_ratio = 0.1f};
    CHECK(fabsf(lr_at(&cos, 0) - 0.1f) < 1e-6f);   /* warmup: 1/10 */
    CHECK(fabsf(lr_at(&cos, 9) - 1.0f) < 1e-6f);   /* end of warmup */
    CHECK(fabsf(lr_at(&cos, 10) - 1.0f) < 1e-6f);  /* cosine starts at the peak */
    CHECK(fabsf(lr_at(&cos, 60) - 0.55f) < 1e-5f); /* half way: (1 + 0.1) / 2 */
    CHECK(fabsf(lr_at(&cos, 110) - 0.1f) < 1e-6f); /* floor */
    CHECK(fabsf(lr_at(&cos, 500) - 0.1f) < 1e-6f);
}

/* Spike clipping: no bound of its own before GRAD_SPIKE_WARMUP norms, then
 * spike x the running mean of the applied norms, never above grad_clip; a
 * spike is recorded at its clipped size, so it does not raise the bound. */
static void test_spike_clipping(void)
{
    adamw *o = NULL;
    CHECK_OK(adamw_create(4, NULL, &o));
    CHECK(grad_clip_bound(o, 1.0, 3.0) == 1.0);  /* nothing seen: grad_clip */
    CHECK(grad_clip_bound(o, 0.0, 3.0) == 0.0);  /* nothing seen, no grad_clip: no clipping */
    for (int i = 0; i < GRAD_SPIKE_WARMUP - 1; i++) grad_norm_observe(o, 0.1);
    CHECK(grad_clip_bound(o, 1.0, 3.0) == 1.0);  /* still warming up */
    grad_norm_observe(o, 0.1);
    CHECK_MSG(fabs(grad_clip_bound(o, 1.0, 3.0) - 0.3) < 1e-12, "bound %g", grad_clip_bound(o, 1.0, 3.0));
    CHECK(fabs(grad_clip_bound(o, 0.0, 3.0) - 0.3) < 1e-12); /* spike clipping alone */
    CHECK(grad_clip_bound(o, 0.2, 3.0) == 0.2);              /* grad_clip lower: it wins */
    CHECK(grad_clip_bound(o, 1.0, 0.0) == 1.0);              /* off */
    /* a spike of 2.9 is cut to 0.3 and observed as 0.3: the mean moves by 0.02, not by 0.28 */
    float g[4] = {2.9f, 0, 0, 0};
    const double bound = grad_clip_bound(o, 1.0, 3.0);
    const double norm = clip_grad_norm(g, 4, bound);
    CHECK(fabs(norm - 2.9) < 1e-6 && fabsf(g[0] - 0.3f) < 1e-5f);
    grad_norm_observe(o, norm > bound ? bound : norm);
    CHECK(fabs(o->norm_mean - 0.12) < 1e-12);
    grad_norm_observe(o, NAN); /* a non-finite norm leaves the scale alone */
    CHECK(fabs(o->norm_mean - 0.12) < 1e-12 && o->norms_seen == GRAD_SPIKE_WARMUP + 1);
    adamw_free(o);
}

int main(void)
{
    cpu_set_threads(2);
    RUN(test_gradients_tied_qwen2);
    RUN(test_gradients_untied_llama);
    RUN(test_gradients_tied_llama);
    RUN(test_gradients_untied_qwen2);
    RUN(test_packing_isolates_sequences);
    RUN(test_recompute_mlp_same_gradients);
    RUN(test_infer_matches_forward);
    RUN(test_batch_errors);
    RUN(test_save_load_round_trip);
    RUN(test_adamw_matches_hand_computation);
    RUN(test_clip_and_schedules);
    RUN(test_spike_clipping);
    return check_summary();
}
