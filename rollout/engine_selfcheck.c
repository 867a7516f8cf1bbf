/* engine_selfcheck.c - greedy generation of a tiny model on a device and on
 * the CPU engine, compared (see engine_selfcheck.h). */
#include "rollout/engine_selfcheck.h"

#include "model/model.h"
#include "rollout/engine.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_REQ 5
#define MAX_NEW 24
#define SWAP_AFTER 6
#define V_TINY 1003

static model_config tiny_config(void)
{
    return (model_config){.type = MODEL_QWEN2, .vocab_size = V_TINY, .hidden_size = 128, .num_layers = 2,
                          .num_heads = 4, .num_kv_heads = 2, .head_dim = 64, .intermediate_size = 256,
                          .max_position_embeddings = 4096, .rope_theta = 1e6, .rms_norm_eps = 1e-6,
                          .tie_word_embeddings = true, .qkv_bias = true, .o_bias = false, .bos_token_id = -1,
                          .eos_token_id = -1};
}

/* Request 3 repeats request 2's prompt (a fork on the GPU: admitted in the same step) and stops
 * early, so request 5 is admitted into its slot while the others decode (continuous batching). */
static const int prompt_lens[N_REQ] = {1, 17, 17, 70, 33};
static const int max_new[N_REQ] = {MAX_NEW, MAX_NEW, 12, MAX_NEW, MAX_NEW};

/* What one engine generated. */
typedef struct run {
    engine_result *r[N_REQ];        /* by request, 0-based */
    float (*logits)[MAX_NEW][V_TINY]; /* [N_REQ]: the CPU's logits of each token (CPU run only) */
} run;

static void run_free(run *x)
{
    for (int i = 0; i < N_REQ; i++) engine_result_free(x->r[i]);
    free(x->logits);
}

static void keep_logits(void *ctx, const engine_token_event *ev)
{
    run *x = ctx;
    const int i = (int)(intptr_t)ev->user;
    if (x->logits && ev->logits && ev->index < MAX_NEW) memcpy(x->logits[i][ev->index], ev->logits, sizeof x->logits[i][0]);
}

static tidal_status generate(engine_device d, model *m1, model *m2, run *x)
{
    engine *e = NULL;
    tidal_status st = TIDAL_OK;
    const engine_options o = {.slots = 4, .max_len = 128, .on_token = x->logits ? keep_logits : NULL,
                              .on_token_ctx = x};
    TRY_GOTO(engine_create_on(d, m1, 1, &o, NULL, &e));
    int32_t prompt[128];
    uint64_t rs = 0x5eed;
    for (int i = 0; i < N_REQ; i++) {
        const int base = i == 2 ? 1 : i; /* the third repeats the second's prompt */
        rs = 0x5eed + (uint64_t)base;
        for (int t = 0; t < prompt_lens[i]; t++) {
            rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
            prompt[t] = (int32_t)((rs >> 33) % V_TINY);
        }
        const engine_request rq = {.prompt = prompt, .prompt_len = prompt_lens[i], .max_new_tokens = max_new[i],
                                   .user = (void *)(intptr_t)i};
        TRY_GOTO(engine_submit(e, &rq, NULL));
    }
    for (int step = 0; engine_busy(e); step++) {
        if (step == SWAP_AFTER) TRY_GOTO(engine_set_model(e, m2, 2));
        TRY_GOTO(engine_step(e));
        if (step > 4 * N_REQ * MAX_NEW) {
            st = tidal_fail(TIDAL_ERR_TIMEOUT, "the engine did not finish in %d steps", step);
            goto cleanup;
        }
    }
    for (engine_result *r; (r = engine_next_result(e));) {
        const int i = (int)(intptr_t)r->user;
        if (i >= 0 && i < N_REQ && !x->r[i]) x->r[i] = r;
        else engine_result_free(r);
    }
    for (int i = 0; i < N_REQ; i++)
        if (!x->r[i]) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "request %d gave no result", i + 1);
            goto cleanup;
        }
cleanup:
    engine_free(e);
    return st;
}

/* The planted difference: token INDEX of request REQ becomes the CPU's last-ranked token. */
static tidal_status plant(run *got, const run *want, const char *what)
{
    int req = 0, idx = -1;
    char tail = 0;
    if (sscanf(what, "%d:%d%c", &req, &idx, &tail) != 2 || req < 1 || req > N_REQ || idx < 0 ||
        idx >= got->r[req - 1]->n || idx >= want->r[req - 1]->n)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: '%s' is not REQ:INDEX (request 1 .. %d, a generated token's index)",
                          ENGINE_SELFCHECK_PLANT_ENV, what, N_REQ);
    const float *lg = want->logits[req - 1][idx];
    int lo = 0;
    for (int j = 1; j < V_TINY; j++)
        if (lg[j] < lg[lo]) lo = j;
    got->r[req - 1]->ids[idx] = lo;
    return TIDAL_OK;
}

static tidal_status compare(engine_device d, const run *got, const run *want)
{
    const char *dn = engine_device_name(d);
    for (int i = 0; i < N_REQ; i++) {
        const engine_result *g = got->r[i], *w = want->r[i];
        const int n = g->n < w->n ? g->n : w->n;
        for (int t = 0; t < n; t++) {
            if (g->ids[t] != w->ids[t]) {
                const float *lg = want->logits[i][t];
                const double margin = (double)lg[w->ids[t]] - (double)lg[g->ids[t]];
                if (margin <= ENGINE_SELFCHECK_TIE) {
                    tidal_log(TIDAL_LOG_WARN,
                              "engine self-check (%s): request %d: token %d: a near tie (logits %.7g vs %.7g), "
                              "compared up to it",
                              dn, i + 1, t, (double)lg[w->ids[t]], (double)lg[g->ids[t]]);
                    goto next_request;
                }
                return tidal_fail(TIDAL_ERR_UNAVAILABLE,
                                  "engine self-check (%s): request %d (prompt of %d tokens): token %d: the device gave "
                                  "%d, the CPU %d (logits %.6g vs %.6g)",
                                  dn, i + 1, prompt_lens[i], t, g->ids[t], w->ids[t], (double)lg[g->ids[t]],
                                  (double)lg[w->ids[t]]);
            }
            if (g->versions[t] != w->versions[t])
                return tidal_fail(TIDAL_ERR_UNAVAILABLE,
                                  "engine self-check (%s): request %d: token %d: version %llu, the CPU's %llu", dn,
                                  i + 1, t, (unsigned long long)g->versions[t], (unsigned long long)w->versions[t]);
            if (!(fabs((double)g->logprobs[t] - (double)w->logprobs[t]) <= ENGINE_SELFCHECK_LP_TOL))
                return tidal_fail(TIDAL_ERR_UNAVAILABLE,
                                  "engine self-check (%s): request %d: token %d: logprob %.7g, the CPU's %.7g "
                                  "(tolerance %.0e)",
                                  dn, i + 1, t, (double)g->logprobs[t], (double)w->logprobs[t],
                                  ENGINE_SELFCHECK_LP_TOL);
        }
        if (g->n != w->n || g->finish != w->finish)
            return tidal_fail(TIDAL_ERR_UNAVAILABLE,
                              "engine self-check (%s): request %d: %d tokens (%s), the CPU %d (%s)", dn, i + 1, g->n,
                              engine_finish_name(g->finish), w->n, engine_finish_name(w->finish));
    next_request:;
    }
    return TIDAL_OK;
}

tidal_status engine_selfcheck(engine_device d)
{
    const model_config c = tiny_config();
    model *m1 = NULL, *m2 = NULL;
    run want = {0}, got = {0};
    tidal_status st = TIDAL_OK;
    TRY_GOTO(model_create(&c, &m1));
    TRY_GOTO(model_create(&c, &m2));
    model_init_random(m1, 0x7e57, 0.1f, true);
    model_init_random(m2, 0x7e58, 0.1f, true);
    want.logits = calloc(N_REQ, sizeof *want.logits);
    if (!want.logits) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
        goto cleanup;
    }
    TRY_GOTO(generate(ENGINE_DEVICE_CPU, m1, m2, &want));
    TRY_GOTO(generate(d, m1, m2, &got));
    const char *pl = getenv(ENGINE_SELFCHECK_PLANT_ENV);
    if (pl && *pl) TRY_GOTO(plant(&got, &want, pl));
    TRY_GOTO(compare(d, &got, &want));
    int n = 0;
    for (int i = 0; i < N_REQ; i++) n += got.r[i]->n;
    tidal_log(TIDAL_LOG_INFO, "engine self-check (%s): %d greedy tokens of %d requests equal to the CPU engine's",
              engine_device_name(d), n, N_REQ);
cleanup:
    run_free(&want);
    run_free(&got);
    model_free(m1);
    model_free(m2);
    if (st != TIDAL_OK && strncmp(tidal_errmsg(), "engine self-check", 17) != 0)
        return tidal_wrap(st, "engine self-check (%s)", engine_device_name(d));
    return st;
}
