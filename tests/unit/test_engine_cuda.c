/* The GPU generation engine (rollout/engine_cuda.h) and its device choice.
 *
 * Everywhere: rollout.device's resolution (cpu, auto -> the CPU without a
 * GPU, cuda refused without one naming why, another name invalid), the GPU
 * engine's creation refused without a GPU, and the engine self-check on the
 * CPU (the CPU engine against itself agrees; a planted token is refused
 * naming the request and token: its comparison is the one the GPU gets).
 * The GPU engine's logic on the CPU references of its kernels (cpu-ref:
 * rollout/engine_paged.c's paged cache, forks and tail copies, the Philox
 * sampler) passes the checks below that the GPU gets: greedy self-check,
 * alone vs a batch of 64, logprobs vs the trainer (fp32), and the request
 * contract against the CPU engine (12 requests on 3 slots: stop ids, stop
 * strings, length, abort, a weight swap). The host's rows (cpu-ref under a
 * device that checks them): a step of decodes, prompts of two lengths, a
 * forked duplicate and a prompt over max_prefill lays out the prompts as
 * prefill runs first (positions 0 .. n-1), then the decodes, then the long
 * prompt (the paged path), with each segment's logits row where it went;
 * its results equal the CPU engine's.
 *
 * Where a GPU answers (tests/gpu/check.sh runs this binary there): the
 * self-check on the GPU agrees with the CPU engine; a sampled sequence alone
 * equals itself in a batch of 64 (prompts shared in groups of 8: forked on
 * the GPU, prefilled alone) token for token, logprobs within 1e-5; sampled
 * logprobs against the trainer's recompute (model_forward at the sampling
 * temperature on the CPU) within 1e-4 in fp32 and bf16's tolerance in bf16.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "model/model.h"
#include "rollout/engine.h"
#include "rollout/engine_cuda.h"
#include "rollout/engine_paged.h"
#include "rollout/engine_ref.h"
#include "rollout/engine_selfcheck.h"

#define V 1003
#define MAX_T 256

static model *tiny_model(uint64_t seed)
{
    const model_config c = {.type = MODEL_QWEN2, .vocab_size = V, .hidden_size = 128, .num_layers = 2,
                            .num_heads = 4, .num_kv_heads = 2, .head_dim = 64, .intermediate_size = 256,
                            .max_position_embeddings = 4096, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                            .tie_word_embeddings = false, .qkv_bias = true, .o_bias = false, .bos_token_id = -1,
                            .eos_token_id = -1};
    model *m = NULL;
    if (model_create(&c, &m) != TIDAL_OK) return NULL;
    model_init_random(m, seed, 0.1f, true);
    return m;
}

static void prompt_of(int group, int32_t *p, int *len)
{
    *len = 5 + 11 * group; /* 5 .. 82: within, on and across 16-slot blocks */
    uint64_t s = 0x9e37 + (uint64_t)group;
    for (int t = 0; t < *len; t++) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        p[t] = (int32_t)((s >> 33) % V);
    }
}

static void test_device_resolution(void)
{
    engine_device d = ENGINE_DEVICE_CUDA;
    char why[300];
    CHECK_OK(engine_device_resolve("cpu", &d, why, sizeof why));
    CHECK(d == ENGINE_DEVICE_CPU && strstr(why, "cpu"));
    CHECK_OK(engine_device_resolve(NULL, &d, why, sizeof why));
    CHECK(d == ENGINE_DEVICE_CPU);
    CHECK_STATUS(engine_device_resolve("tpu", &d, why, sizeof why), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "rollout.device: 'tpu' is not one of auto, cpu, cuda"));
    const bool gpu = engine_cuda_available() == TIDAL_OK;
    tidal_clear();
    CHECK_OK(engine_device_resolve("auto", &d, why, sizeof why));
    CHECK(d == (gpu ? ENGINE_DEVICE_CUDA : ENGINE_DEVICE_CPU));
    if (!gpu) {
        CHECK_MSG(strstr(why, "rollout.device auto: the CPU engine (no CUDA: "), "why: %s", why);
        CHECK_STATUS(engine_device_resolve("cuda", &d, why, sizeof why), TIDAL_ERR_UNAVAILABLE);
        CHECK_MSG(strstr(tidal_errmsg(), "rollout.device cuda: "), "%s", tidal_errmsg());
        model *m = tiny_model(1);
        CHECK(m);
        engine *e = (engine *)1;
        const engine_options o = {.slots = 2, .max_len = 64};
        CHECK_STATUS(engine_cuda_create(m, 0, &o, NULL, &e), TIDAL_ERR_UNAVAILABLE);
        CHECK(e == NULL);
        CHECK_MSG(strstr(tidal_errmsg(), "engine (cuda): ") &&
                      (strstr(tidal_errmsg(), "no usable device") || strstr(tidal_errmsg(), "no CUDA path")),
                  "%s", tidal_errmsg());
        double bw = 1.0;
        CHECK_STATUS(engine_cuda_copy_bandwidth(1 << 20, &bw, NULL, 0), TIDAL_ERR_UNAVAILABLE);
        CHECK(bw == 0.0);
        model_free(m);
    }
}

static void test_selfcheck_on_the_cpu(void)
{
    unsetenv(ENGINE_SELFCHECK_PLANT_ENV);
    CHECK_OK(engine_selfcheck(ENGINE_DEVICE_CPU));
    setenv(ENGINE_SELFCHECK_PLANT_ENV, "4:0", 1);
    CHECK_STATUS(engine_selfcheck(ENGINE_DEVICE_CPU), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "engine self-check (cpu): request 4 (prompt of 70 tokens): token 0: the device gave "),
              "%s", tidal_errmsg());
    setenv(ENGINE_SELFCHECK_PLANT_ENV, "3:11", 1); /* the forked prompt's last token */
    CHECK_STATUS(engine_selfcheck(ENGINE_DEVICE_CPU), TIDAL_ERR_UNAVAILABLE);
    CHECK_MSG(strstr(tidal_errmsg(), "request 3 (prompt of 17 tokens): token 11: "), "%s", tidal_errmsg());
    setenv(ENGINE_SELFCHECK_PLANT_ENV, "3:12", 1); /* past its last token */
    CHECK_STATUS(engine_selfcheck(ENGINE_DEVICE_CPU), TIDAL_ERR_INVALID);
    setenv(ENGINE_SELFCHECK_PLANT_ENV, "1:x", 1);
    CHECK_STATUS(engine_selfcheck(ENGINE_DEVICE_CPU), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "'1:x' is not REQ:INDEX"), "%s", tidal_errmsg());
    unsetenv(ENGINE_SELFCHECK_PLANT_ENV);
}

/* Requests `first` .. first+n-1 of the batch (sampled, temperature 0.9,
 * prompts shared in groups of 8) on a GPU engine of `slots`; requests before
 * `first` are submitted and aborted so that ids (the sampler's key) match
 * the full batch's. Results by request index into res. */
static tidal_status run_batch(engine_device dev, model *m, bool bf16, int slots, int first, int n, float temp,
                              engine_result **res)
{
    engine *e = NULL;
    tidal_status st = TIDAL_OK;
    const engine_options o = {.slots = slots, .max_len = 128};
    const engine_cuda_options co = {.bf16 = bf16};
    TRY_GOTO(engine_create_on(dev, m, 3, &o, &co, &e));
    int32_t p[128];
    int len = 0;
    for (int i = 0; i < first + n; i++) {
        prompt_of(i / 8, p, &len);
        const engine_request rq = {.prompt = p, .prompt_len = len, .max_new_tokens = 16,
                                   .sampling = {.temperature = temp, .seed = 1000 + (uint64_t)i},
                                   .user = (void *)(intptr_t)i};
        uint64_t id = 0;
        TRY_GOTO(engine_submit(e, &rq, &id));
        if (i < first) TRY_GOTO(engine_abort(e, id));
    }
    for (int k = 0; engine_busy(e) && k < 10000; k++) TRY_GOTO(engine_step(e));
    for (engine_result *r; (r = engine_next_result(e));) {
        const int i = (int)(intptr_t)r->user;
        if (i >= first && !res[i]) res[i] = r;
        else engine_result_free(r);
    }
cleanup:
    engine_free(e);
    return st;
}

static void alone_equals_batch_of_64(engine_device dev)
{
    model *m = tiny_model(2);
    CHECK(m);
    engine_result *batch[64] = {0};
    CHECK_OK(run_batch(dev, m, false, 64, 0, 64, 0.9f, batch));
    const int alone[] = {0, 37, 63};
    for (size_t a = 0; a < 3; a++) {
        const int i = alone[a];
        engine_result *one[64] = {0};
        CHECK_OK(run_batch(dev, m, false, 1, i, 1, 0.9f, one));
        CHECK(batch[i] && one[i]);
        if (!batch[i] || !one[i]) continue;
        CHECK_MSG(batch[i]->n == one[i]->n, "request %d: %d tokens in the batch, %d alone", i, batch[i]->n, one[i]->n);
        for (int t = 0; t < batch[i]->n && t < one[i]->n; t++) {
            CHECK_MSG(batch[i]->ids[t] == one[i]->ids[t], "request %d token %d: %d in the batch, %d alone", i, t,
                      batch[i]->ids[t], one[i]->ids[t]);
            CHECK(fabsf(batch[i]->logprobs[t] - one[i]->logprobs[t]) <= 1e-5f);
            CHECK(batch[i]->versions[t] == 3);
        }
        engine_result_free(one[i]);
    }
    for (int i = 0; i < 64; i++) engine_result_free(batch[i]);
    model_free(m);
}

/* The trainer's recompute of a result's logprobs: model_forward over prompt +
 * generated tokens at inv_temp, on the CPU in fp32. Worst |difference|. */
static double worst_vs_trainer(model *m, int group, const engine_result *r, float temp, double *mean)
{
    int32_t ids[MAX_T], tg[MAX_T], p[128];
    int P = 0;
    prompt_of(group, p, &P);
    const int T = P + r->n - 1;
    int32_t cu[2] = {0, T};
    float lp[MAX_T], ent[MAX_T];
    for (int t = 0; t < T; t++) ids[t] = t < P ? p[t] : r->ids[t - P];
    for (int t = 0; t < T; t++) tg[t] = t + 1 < P ? p[t + 1] : r->ids[t + 1 - P];
    const model_batch b = {.T = T, .S = 1, .ids = ids, .targets = tg, .cu_seqlens = cu, .inv_temp = 1.0f / temp};
    if (model_forward(m, &b, lp, ent, NULL) != TIDAL_OK) return INFINITY;
    double worst = 0.0, sum = 0.0;
    for (int i = 0; i < r->n; i++) {
        const double d = fabs((double)lp[P - 1 + i] - (double)r->logprobs[i]);
        worst = fmax(worst, d);
        sum += d;
    }
    *mean = sum / r->n;
    return worst;
}

static void logprobs_vs_trainer(engine_device dev)
{
    model *m = tiny_model(3);
    CHECK(m);
    for (int bf16 = 0; bf16 < (dev == ENGINE_DEVICE_CUDA ? 2 : 1); bf16++) {
        engine_result *res[64] = {0};
        CHECK_OK(run_batch(dev, m, bf16, 16, 0, 16, 0.7f, res));
        double worst = 0.0, mean = 0.0;
        for (int i = 0; i < 16; i++) {
            CHECK(res[i] != NULL);
            if (!res[i]) continue;
            double mn = 0.0;
            worst = fmax(worst, worst_vs_trainer(m, i / 8, res[i], 0.7f, &mn));
            mean += mn / 16;
            engine_result_free(res[i]);
        }
        printf("  %s %s: sampled logprobs against the trainer's recompute: worst %.3g, mean %.3g\n",
               engine_device_name(dev), bf16 ? "bf16" : "fp32", worst, mean);
        CHECK(bf16 ? (worst <= 0.1 && mean <= 2e-2) : worst <= 1e-4);
    }
    model_free(m);
}

static void test_selfcheck_on_the_gpu(void) { CHECK_OK(engine_selfcheck(ENGINE_DEVICE_CUDA)); }
static void test_alone_equals_batch_of_64(void) { alone_equals_batch_of_64(ENGINE_DEVICE_CUDA); }
static void test_logprobs_vs_trainer(void) { logprobs_vs_trainer(ENGINE_DEVICE_CUDA); }

static const char *letter_bytes(void *ctx, int32_t id, size_t *len)
{
    (void)ctx;
    static const char letters[] = "abcdefgh";
    *len = 1;
    return letters + (id % 8);
}

/* The request contract through the paged backend, against the CPU engine:
 * 12 greedy requests on 3 slots with a 40-token step budget (admissions
 * spread over steps, slots released and reused), stop ids, a stop string
 * straddling tokens, max tokens, one running request aborted, a weight
 * swap: the same results (tokens, finish reasons, stop offsets, versions;
 * logprobs within 1e-4). */
static void run_contract(engine_device dev, model *m1, model *m2, engine_result **res)
{
    const engine_options o = {.slots = 3, .max_len = 128, .max_step_tokens = 40, .token_bytes = letter_bytes};
    engine *e = NULL;
    CHECK_OK(engine_create_on(dev, m1, 1, &o, NULL, &e));
    if (!e) return;
    int32_t stop_ids[50];
    for (int i = 0; i < 50; i++) stop_ids[i] = 7 + 20 * i;
    const char *stops[] = {"ha", "zz"};
    uint64_t ids[12];
    for (int i = 0; i < 12; i++) {
        int32_t p[128];
        int len = 0;
        prompt_of(i % 5, p, &len);
        const engine_request rq = {.prompt = p, .prompt_len = len, .max_new_tokens = 10 + 3 * i,
                                   .stop_ids = i % 3 ? stop_ids : NULL, .n_stop_ids = i % 3 ? 50 : 0,
                                   .stop_strings = i % 2 ? stops : NULL, .n_stop_strings = i % 2 ? 2 : 0,
                                   .user = (void *)(intptr_t)i};
        CHECK_OK(engine_submit(e, &rq, &ids[i]));
    }
    for (int k = 0; engine_busy(e) && k < 2000; k++) {
        if (k == 3) CHECK_OK(engine_abort(e, ids[1]));
        if (k == 9) CHECK_OK(engine_set_model(e, m2, 2));
        CHECK_OK(engine_step(e));
    }
    for (engine_result *r; (r = engine_next_result(e));) {
        const int i = (int)(intptr_t)r->user;
        if (!res[i]) res[i] = r;
        else engine_result_free(r);
    }
    engine_free(e);
}

static void contract_equals_cpu_engine(engine_device dev)
{
    model *m1 = tiny_model(5), *m2 = tiny_model(6);
    CHECK(m1 && m2);
    engine_result *want[12] = {0}, *got[12] = {0};
    run_contract(ENGINE_DEVICE_CPU, m1, m2, want);
    run_contract(dev, m1, m2, got);
    int n_stop = 0, n_string = 0, n_len = 0, n_abort = 0;
    for (int i = 0; i < 12; i++) {
        CHECK(want[i] && got[i]);
        if (!want[i] || !got[i]) continue;
        const engine_result *w = want[i], *g = got[i];
        CHECK_MSG(g->n == w->n && g->finish == w->finish && g->stop_string == w->stop_string &&
                      g->stop_offset == w->stop_offset,
                  "request %d: %d tokens (%s, string %d at %zu), the CPU engine %d (%s, string %d at %zu)", i, g->n,
                  engine_finish_name(g->finish), g->stop_string, g->stop_offset, w->n, engine_finish_name(w->finish),
                  w->stop_string, w->stop_offset);
        for (int t = 0; t < g->n && t < w->n; t++) {
            CHECK_MSG(g->ids[t] == w->ids[t], "request %d token %d: %d, the CPU engine %d", i, t, g->ids[t], w->ids[t]);
            CHECK(g->versions[t] == w->versions[t]);
            CHECK(fabsf(g->logprobs[t] - w->logprobs[t]) <= 1e-4f);
        }
        n_stop += w->finish == ENGINE_FINISH_STOP && w->stop_string < 0;
        n_string += w->stop_string >= 0;
        n_len += w->finish == ENGINE_FINISH_LENGTH;
        n_abort += w->finish == ENGINE_FINISH_ABORT;
        engine_result_free(want[i]);
        engine_result_free(got[i]);
    }
    printf("  %s: 12 requests on 3 slots: %d stop ids, %d stop strings, %d length, %d aborted\n", engine_device_name(dev), n_stop, n_string, n_len,
           n_abort);
    CHECK(n_abort == 1 && n_len > 0 && n_stop + n_string > 0);
    model_free(m1);
    model_free(m2);
}

/* ---- the prefill runs: the rows the host lays out ---- */

/* A paged device that checks each step's rows against engine_paged.h's
 * contract for prefill runs, keeps the last mixed step's layout, and
 * computes on the CPU references (engine_ref_device). */
typedef struct watch {
    paged_device ref;
    int max_prefill;
    int bad, runs, paged_prompts, mixed_steps;
    char why[200];
    int T, n_runs, n_out; /* the last step with runs and rows after them */
    int32_t cu[8], seq[256], pos[256], out_rows[8];
} watch;

static void watch_bad(watch *w, const char *what, int a, int b)
{
    if (!w->bad++) snprintf(w->why, sizeof w->why, "%s (%d, %d)", what, a, b);
}

/* Whether row r is the last of its segment: the next row is not its sequence's next position. */
static bool last_of_segment(const int32_t *seq, const int32_t *pos, int T, int r)
{
    return r + 1 == T || seq[r + 1] != seq[r] || pos[r + 1] != pos[r] + 1;
}

static tidal_status watch_step(void *impl, const int32_t *tok, const int32_t *seq, const int32_t *pos, int T,
                               const int32_t *cu, int n, const int32_t *tables, const int32_t *out_rows, int n_out)
{
    watch *w = impl;
    const int Tp = n > 0 ? cu[n] : 0;
    for (int j = 0; j < n; j++) {
        if (cu[j + 1] <= cu[j] || cu[j + 1] - cu[j] > w->max_prefill)
            watch_bad(w, "a prefill run's rows", cu[j], cu[j + 1]);
        for (int i = cu[j]; i < cu[j + 1]; i++)
            if (seq[i] != seq[cu[j]] || pos[i] != i - cu[j]) watch_bad(w, "a run not one prompt from 0: row", i, pos[i]);
    }
    if (n > 0 && cu[0] != 0) watch_bad(w, "runs from row", cu[0], 0);
    for (int i = Tp; i < T; i++) { /* after the runs, a prompt (from position 0) is one over max_prefill */
        if (pos[i] != 0) continue;
        int e = i;
        while (!last_of_segment(seq, pos, T, e)) e++;
        if (e - i + 1 <= w->max_prefill) watch_bad(w, "a prompt on the paged path: rows", i, e - i + 1);
        w->paged_prompts++;
    }
    for (int k = 0; k < n_out; k++)
        if (out_rows[k] < 0 || out_rows[k] >= T || !last_of_segment(seq, pos, T, out_rows[k]))
            watch_bad(w, "a logits row not a segment's last: segment", k, out_rows[k]);
    w->runs += n;
    if (n > 0 && Tp < T) {
        w->mixed_steps++;
        if (n < 8 && n_out <= 8 && T <= 256) {
            w->T = T, w->n_runs = n, w->n_out = n_out;
            memcpy(w->cu, cu, (size_t)(n + 1) * 4);
            memcpy(w->seq, seq, (size_t)T * 4), memcpy(w->pos, pos, (size_t)T * 4);
            memcpy(w->out_rows, out_rows, (size_t)n_out * 4);
        }
    }
    return w->ref.step(w->ref.impl, tok, seq, pos, T, cu, n, tables, out_rows, n_out);
}

static tidal_status watch_copy(void *impl, const int32_t *src, const int32_t *dst, const int32_t *cnt, int n)
{
    const watch *w = impl;
    return w->ref.copy_blocks(w->ref.impl, src, dst, cnt, n);
}

static tidal_status watch_sample(void *impl, const cuda_sample_params *p, int n, int32_t *tok, float *lp, uint8_t *tr,
                                 float *logits)
{
    const watch *w = impl;
    return w->ref.sample(w->ref.impl, p, n, tok, lp, tr, logits);
}

static tidal_status watch_set_params(void *impl, const float *params, size_t n)
{
    const watch *w = impl;
    return w->ref.set_params(w->ref.impl, params, n);
}

static void watch_free(void *impl)
{
    watch *w = impl;
    w->ref.free(w->ref.impl); /* the watch itself is the test's */
}

/* Two prompts (5, 27 tokens) decoding, then four admitted in one step: 16
 * and 38 tokens (runs under max_prefill 40), the 16 again (forked) and 60
 * (over it: the paged path); 12 greedy tokens each. */
static void run_mixed(engine *e, engine_result **res)
{
    const int groups[6] = {0, 2, 1, 3, 1, 5}; /* prompt_of: 5, 27, 16, 38, 16, 60 tokens */
    for (int i = 0; i < 6; i++) {
        if (i == 2)
            for (int k = 0; k < 2; k++) CHECK_OK(engine_step(e));
        int32_t p[128];
        int len = 0;
        prompt_of(groups[i], p, &len);
        const engine_request rq = {.prompt = p, .prompt_len = len, .max_new_tokens = 12, .user = (void *)(intptr_t)i};
        uint64_t id = 0;
        CHECK_OK(engine_submit(e, &rq, &id));
    }
    for (int k = 0; engine_busy(e) && k < 1000; k++) CHECK_OK(engine_step(e));
    for (engine_result *r; (r = engine_next_result(e));) {
        const int i = (int)(intptr_t)r->user;
        if (!res[i]) res[i] = r;
        else engine_result_free(r);
    }
}

static void test_ref_prefill_runs(void)
{
    model *m = tiny_model(7);
    CHECK(m);
    if (!m) return;
    const engine_options o = {.slots = 6, .max_len = 128, .max_step_tokens = 512};
    const engine_cuda_options co = {.max_prefill = 40};
    engine_result *want[6] = {0}, *got[6] = {0};
    engine *e = NULL;
    CHECK_OK(engine_create(m, 1, &o, &e));
    if (e) run_mixed(e, want);
    engine_free(e);
    e = NULL;
    paged_geometry g;
    watch w = {.max_prefill = 40};
    CHECK_OK(paged_geometry_of(&o, &co, &g));
    CHECK(g.max_prefill == 40);
    CHECK_OK(engine_ref_device(model_cfg(m), &g, &w.ref));
    const paged_device dev = {.impl = &w, .step = watch_step, .copy_blocks = watch_copy, .sample = watch_sample,
                              .set_params = watch_set_params, .free = watch_free};
    CHECK_OK(engine_paged_create(m, 1, &o, &g, &dev, &e));
    if (e) run_mixed(e, got);
    engine_free(e);
    CHECK_MSG(w.bad == 0, "%d bad steps, the first: %s", w.bad, w.why);
    /* runs: the first step's two prompts, then the 16 and the 38 (the fork and the 60 not) */
    CHECK_MSG(w.runs == 4 && w.paged_prompts == 1 && w.mixed_steps == 1, "%d runs, %d paged prompts, %d mixed steps",
              w.runs, w.paged_prompts, w.mixed_steps);
    /* the mixed step: segments (slot order) r0, r1 decoding, then r2 .. r5 admitted into slots 2 .. 5 */
    CHECK(w.T == 16 + 38 + 2 + 60 && w.n_runs == 2 && w.cu[0] == 0 && w.cu[1] == 16 && w.cu[2] == 54);
    CHECK(w.seq[0] == 2 && w.seq[16] == 3 && w.seq[54] == 0 && w.seq[55] == 1 && w.seq[56] == 5 && w.pos[56] == 0);
    const int32_t want_out[6] = {54, 55, 15, 53, 15, 115};
    CHECK_MSG(w.n_out == 6 && !memcmp(w.out_rows, want_out, sizeof want_out),
              "logits rows %d %d %d %d %d %d, want 54 55 15 53 15 115", w.out_rows[0], w.out_rows[1], w.out_rows[2],
              w.out_rows[3], w.out_rows[4], w.out_rows[5]);
    for (int i = 0; i < 6; i++) {
        CHECK(want[i] && got[i]);
        if (!want[i] || !got[i]) continue;
        CHECK_MSG(got[i]->n == want[i]->n, "request %d: %d tokens, the CPU engine %d", i, got[i]->n, want[i]->n);
        for (int t = 0; t < got[i]->n && t < want[i]->n; t++) {
            CHECK_MSG(got[i]->ids[t] == want[i]->ids[t], "request %d token %d: %d, the CPU engine %d", i, t,
                      got[i]->ids[t], want[i]->ids[t]);
            CHECK_MSG(fabsf(got[i]->logprobs[t] - want[i]->logprobs[t]) <= 1e-4f, "request %d token %d: logprob %g, "
                      "the CPU engine %g", i, t, got[i]->logprobs[t], want[i]->logprobs[t]);
        }
        engine_result_free(want[i]);
        engine_result_free(got[i]);
    }
    model_free(m);
}

/* The GPU engine's logic on the CPU references of its kernels: the same
 * checks, on every machine. Also: its greedy self-check passes, and the
 * Philox sampler makes the same tokens whatever the slot count. */
static void test_ref_contract_equals_cpu_engine(void) { contract_equals_cpu_engine(ENGINE_DEVICE_CPU_REF); }
static void test_contract_equals_cpu_engine(void) { contract_equals_cpu_engine(ENGINE_DEVICE_CUDA); }
static void test_ref_selfcheck(void) { CHECK_OK(engine_selfcheck(ENGINE_DEVICE_CPU_REF)); }
static void test_ref_alone_equals_batch_of_64(void) { alone_equals_batch_of_64(ENGINE_DEVICE_CPU_REF); }
static void test_ref_logprobs_vs_trainer(void) { logprobs_vs_trainer(ENGINE_DEVICE_CPU_REF); }

int main(void)
{
    RUN(test_device_resolution);
    RUN(test_selfcheck_on_the_cpu);
    RUN(test_ref_selfcheck);
    RUN(test_ref_alone_equals_batch_of_64);
    RUN(test_ref_logprobs_vs_trainer);
    RUN(test_ref_contract_equals_cpu_engine);
    RUN(test_ref_prefill_runs);
    if (engine_cuda_available() == TIDAL_OK) {
        RUN(test_selfcheck_on_the_gpu);
        RUN(test_alone_equals_batch_of_64);
        RUN(test_logprobs_vs_trainer);
        RUN(test_contract_equals_cpu_engine);
    } else {
        tidal_clear();
        printf("  no GPU answers here: the GPU engine's parity cases are not run (tests/gpu/check.sh runs them)\n");
    }
    return check_summary();
}
