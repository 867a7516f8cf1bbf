/* engine_cuda.c - the GPU engine's backend (see engine_cuda.h): a step's
 * segments become decode_cuda rows over the paged cache, one logits row per
 * segment is sampled by cuda_sample, and the samples come back to
 * rollout/engine.c, which records and finishes as the CPU engine does.
 *
 * Slots are the kvpages sequence ids and block-table rows. A step:
 *   1. each segment reserves its positions (a prefill its prompt, a decode
 *      one more); a prefill whose prompt equals an earlier prefill of the
 *      same step forks it instead (no rows of its own, the parent's last row
 *      its logits row, the partly filled last block copied after the step);
 *   2. decode_cuda_step over the rows, logits of the segments' rows only;
 *   3. the forks' tail copies (same stream: before the next step writes);
 *   4. cuda_sample with each request's parameters, keyed on (seed, request
 *      id, token index); tokens, logprobs and flags downloaded.
 * A failure in 1 or 2 releases the step's prefills (their slots were empty).
 */
#include "rollout/engine_cuda.h"

#include "rollout/engine_backend.h"
#include "rollout/kvpages.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef TIDAL_HAVE_CUDA
#include "kernels/cuda/common.h"
#include "kernels/cuda/engine_cuda.h"
#include "model/decode_cuda.h"
#include "model/gpu_layout.h"
#endif

const char *engine_device_name(engine_device d) { return d == ENGINE_DEVICE_CUDA ? "cuda" : "cpu"; }

bool engine_cuda_built(void)
{
#ifdef TIDAL_HAVE_CUDA
    return true;
#else
    return false;
#endif
}

tidal_status engine_cuda_available(void)
{
#ifdef TIDAL_HAVE_CUDA
    int n = 0;
    return cuda_device_count(&n);
#else
    return tidal_fail(TIDAL_ERR_UNAVAILABLE, "this build has no CUDA path (built without nvcc or with TIDAL_CUDA=OFF)");
#endif
}

tidal_status engine_device_resolve(const char *name, engine_device *out, char *why, size_t n)
{
    *out = ENGINE_DEVICE_CPU;
    if (why && n) why[0] = '\0';
    if (!name || !strcmp(name, "cpu")) {
        if (why && n) snprintf(why, n, "rollout.device cpu: the CPU engine");
        return TIDAL_OK;
    }
    const bool is_auto = !strcmp(name, "auto");
    if (!is_auto && strcmp(name, "cuda") != 0)
        return tidal_fail(TIDAL_ERR_INVALID, "rollout.device: '%s' is not one of auto, cpu, cuda", name);
    if (engine_cuda_available() != TIDAL_OK) {
        if (!is_auto) return tidal_wrap(TIDAL_ERR_UNAVAILABLE, "rollout.device cuda");
        if (why && n) snprintf(why, n, "rollout.device auto: the CPU engine (no CUDA: %s)", tidal_errmsg());
        tidal_clear();
        return TIDAL_OK;
    }
    *out = ENGINE_DEVICE_CUDA;
    if (why && n) snprintf(why, n, "rollout.device %s: the GPU engine (CUDA)", name);
    return TIDAL_OK;
}

tidal_status engine_create_on(engine_device d, model *m, uint64_t version, const engine_options *o,
                              const engine_cuda_options *co, engine **out)
{
    if (d == ENGINE_DEVICE_CUDA) return engine_cuda_create(m, version, o, co, out);
    return engine_create(m, version, o, out);
}

#ifndef TIDAL_HAVE_CUDA

tidal_status engine_cuda_copy_bandwidth(size_t bytes, double *bytes_per_s, char *name, size_t n)
{
    (void)bytes, (void)name, (void)n;
    *bytes_per_s = 0.0;
    return engine_cuda_available();
}

tidal_status engine_cuda_create(model *m, uint64_t version, const engine_options *o, const engine_cuda_options *co,
                                engine **out)
{
    (void)m, (void)version, (void)o, (void)co;
    *out = NULL;
    return tidal_wrap(engine_cuda_available(), "engine (cuda)");
}

#else

typedef struct ecuda {
    decode_cuda *dc;
    kvpages *kv;
    model_gpu_dims dims;
    size_t n_params;
    int V, slots, max_rows;
    /* host step arrays */
    int32_t *tok, *seq, *pos;       /* [max_rows] */
    int32_t *out_rows;              /* [slots] */
    int32_t *c_src, *c_dst, *c_cnt; /* [slots]: this step's fork copies */
    int *fork_of;                   /* [slots]: segment k forks segment fork_of[k], or -1 */
    cuda_sample_params *hp;         /* [slots] */
    uint8_t *htr;                   /* [slots] */
    /* device */
    cuda_sample_params *dp;
    int32_t *dtok;
    float *dlp;
    uint8_t *dtr;
} ecuda;

static void ec_free(void *impl)
{
    ecuda *g = impl;
    if (!g) return;
    decode_cuda_free(g->dc);
    kvpages_free(g->kv);
    free(g->tok), free(g->seq), free(g->pos), free(g->out_rows);
    free(g->c_src), free(g->c_dst), free(g->c_cnt), free(g->fork_of);
    free(g->hp), free(g->htr);
    cuda_free(g->dp), cuda_free(g->dtok), cuda_free(g->dlp), cuda_free(g->dtr);
    free(g);
}

static void ec_release(void *impl, int slot) { kvpages_release(((ecuda *)impl)->kv, slot); }

static tidal_status ec_set_model(void *impl, model *m)
{
    ecuda *g = impl;
    size_t n = 0;
    const float *params = model_params(m, &n);
    if (n != g->n_params)
        return tidal_fail(TIDAL_ERR_INVALID, "engine (cuda): the model has %zu parameters, the GPU layout %zu", n,
                          g->n_params);
    return decode_cuda_set_params(g->dc, params);
}

/* The rows of segments 0 .. S: positions reserved, forks made. On failure the
 * prefills' slots are released. */
static tidal_status plan_rows(ecuda *g, const engine_segment *segs, int S, int *T_out, int *n_copy)
{
    int T = 0, nc = 0;
    tidal_status st = TIDAL_OK;
    for (int k = 0; k < S && st == TIDAL_OK; k++) {
        const engine_segment *sg = &segs[k];
        g->fork_of[k] = -1;
        if (sg->prefill)
            for (int j = 0; j < k; j++)
                if (segs[j].prefill && g->fork_of[j] < 0 && segs[j].n == sg->n &&
                    !memcmp(segs[j].tokens, sg->tokens, (size_t)sg->n * sizeof *sg->tokens)) {
                    g->fork_of[k] = j;
                    break;
                }
        if (g->fork_of[k] >= 0) {
            const int j = g->fork_of[k];
            kvpages_copy cp;
            st = kvpages_fork(g->kv, segs[j].slot, sg->slot, &cp);
            if (st == TIDAL_OK && cp.n > 0) {
                g->c_src[nc] = cp.src, g->c_dst[nc] = cp.dst, g->c_cnt[nc] = cp.n;
                nc++;
            }
            g->out_rows[k] = g->out_rows[j];
            continue;
        }
        if (T + sg->n > g->max_rows) {
            st = tidal_fail(TIDAL_ERR_INVALID, "engine (cuda): a step of more than %d rows", g->max_rows);
            break;
        }
        st = kvpages_reserve(g->kv, sg->slot, sg->start + sg->n);
        if (st != TIDAL_OK) break;
        for (int i = 0; i < sg->n; i++) {
            g->tok[T + i] = sg->tokens[i];
            g->seq[T + i] = sg->slot;
            g->pos[T + i] = sg->start + i;
        }
        T += sg->n;
        g->out_rows[k] = T - 1;
    }
    if (st != TIDAL_OK) {
        for (int k = 0; k < S; k++)
            if (segs[k].prefill) kvpages_release(g->kv, segs[k].slot);
        return st;
    }
    *T_out = T;
    *n_copy = nc;
    return TIDAL_OK;
}

static tidal_status ec_step(void *impl, const engine_segment *segs, int S, int32_t *token, float *logprob,
                           bool *truncated, float *logits)
{
    ecuda *g = impl;
    int T = 0, nc = 0;
    TRY(plan_rows(g, segs, S, &T, &nc));
    const float *dlogits = NULL;
    tidal_status st = decode_cuda_step(g->dc, g->tok, g->seq, g->pos, T, kvpages_table(g->kv), g->out_rows, S, &dlogits);
    if (st == TIDAL_OK) st = decode_cuda_copy_blocks(g->dc, g->c_src, g->c_dst, g->c_cnt, nc);
    if (st != TIDAL_OK) {
        for (int k = 0; k < S; k++)
            if (segs[k].prefill) kvpages_release(g->kv, segs[k].slot);
        return st;
    }
    /* From here the cache holds the step: a failure is the device's, not undone. */
    cudaStream_t s = decode_cuda_stream(g->dc);
    for (int k = 0; k < S; k++) {
        const engine_sampling *sp = segs[k].sp;
        g->hp[k] = (cuda_sample_params){.temperature = sp->temperature, .top_p = sp->top_p, .min_p = sp->min_p,
                                        .top_k = sp->top_k, .seed = sp->seed, .sequence = segs[k].request,
                                        .step = (uint32_t)segs[k].index};
    }
    TRY(cuda_upload(g->dp, g->hp, (size_t)S * sizeof *g->hp, s));
    TRY(cuda_sample(g->dtok, g->dlp, g->dtr, dlogits, g->dp, S, g->V, s));
    TRY(cuda_download(token, g->dtok, (size_t)S * sizeof *token, s));
    TRY(cuda_download(logprob, g->dlp, (size_t)S * sizeof *logprob, s));
    TRY(cuda_download(g->htr, g->dtr, (size_t)S, s));
    if (logits) TRY(cuda_download(logits, dlogits, (size_t)S * (size_t)g->V * sizeof *logits, s));
    TRY(cuda_check(cudaStreamSynchronize(s), "engine step"));
    for (int k = 0; k < S; k++) truncated[k] = g->htr[k] != 0;
    return TIDAL_OK;
}

tidal_status engine_cuda_copy_bandwidth(size_t bytes, double *bytes_per_s, char *name, size_t n)
{
    *bytes_per_s = 0.0;
    TRY(engine_cuda_available());
    if (name && n) TRY(cuda_device_name(name, n));
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(cuda_alloc(&a, bytes, "bandwidth source"));
    TRY_GOTO(cuda_alloc(&b, bytes, "bandwidth destination"));
    TRY_GOTO(cuda_check(cudaMemset(a, 1, bytes), "bandwidth fill"));
    TRY_GOTO(cuda_check(cudaEventCreate(&e0), "event"));
    TRY_GOTO(cuda_check(cudaEventCreate(&e1), "event"));
    TRY_GOTO(cuda_check(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice), "bandwidth warm-up copy"));
    float best = 0.0f;
    for (int i = 0; i < 5; i++) {
        TRY_GOTO(cuda_check(cudaEventRecord(e0, 0), "event"));
        TRY_GOTO(cuda_check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0), "bandwidth copy"));
        TRY_GOTO(cuda_check(cudaEventRecord(e1, 0), "event"));
        TRY_GOTO(cuda_check(cudaEventSynchronize(e1), "event"));
        float ms = 0.0f;
        TRY_GOTO(cuda_check(cudaEventElapsedTime(&ms, e0, e1), "event time"));
        if (ms > 0.0f && (best == 0.0f || ms < best)) best = ms;
    }
    if (best > 0.0f) *bytes_per_s = 2.0 * (double)bytes / (best * 1e-3);
cleanup:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cuda_free(a);
    cuda_free(b);
    return st;
}

tidal_status engine_cuda_create(model *m, uint64_t version, const engine_options *o, const engine_cuda_options *co,
                                engine **out)
{
    *out = NULL;
    TRY_WRAP(engine_cuda_available(), "engine (cuda)");
    const engine_cuda_options dflt = {0};
    if (!co) co = &dflt;
    const model_config *c = model_cfg(m);
    if (o->slots < 1 || o->max_len < 2 || o->max_step_tokens < 0)
        return tidal_fail(TIDAL_ERR_INVALID, "engine (cuda): slots %d, max_len %d, max_step_tokens %d", o->slots,
                          o->max_len, o->max_step_tokens);
    const int bs = co->block_size ? co->block_size : 16;
    if (bs < 1 || co->n_blocks < 0)
        return tidal_fail(TIDAL_ERR_INVALID, "engine (cuda): block_size %d, n_blocks %d", bs, co->n_blocks);
    const int max_blocks = (o->max_len + bs - 1) / bs;
    const int n_blocks = co->n_blocks ? co->n_blocks : o->slots * max_blocks;
    const int step_tokens = o->max_step_tokens ? o->max_step_tokens : 4096;
    ecuda *g = calloc(1, sizeof *g);
    if (!g) return tidal_fail(TIDAL_ERR_NOMEM, "engine (cuda): out of memory");
    g->dims = model_gpu_dims_of(c);
    g->n_params = model_gpu_params(&g->dims);
    g->V = c->vocab_size;
    g->slots = o->slots;
    /* the CPU engine's bound on a step: the budget, every decode, one prompt over it */
    g->max_rows = step_tokens + o->slots + o->max_len;
    const size_t R = (size_t)g->max_rows, Sl = (size_t)o->slots;
    tidal_status st = TIDAL_OK;
    g->tok = malloc(R * 4), g->seq = malloc(R * 4), g->pos = malloc(R * 4), g->out_rows = malloc(Sl * 4);
    g->c_src = malloc(Sl * 4), g->c_dst = malloc(Sl * 4), g->c_cnt = malloc(Sl * 4);
    g->fork_of = malloc(Sl * sizeof *g->fork_of);
    g->hp = malloc(Sl * sizeof *g->hp), g->htr = malloc(Sl);
    if (!g->tok || !g->seq || !g->pos || !g->out_rows || !g->c_src || !g->c_dst || !g->c_cnt || !g->fork_of ||
        !g->hp || !g->htr) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "engine (cuda): out of memory for step arrays of %zu rows", R);
        goto cleanup;
    }
    TRY_GOTO(kvpages_create(n_blocks, bs, o->slots, max_blocks, &g->kv));
    const decode_cuda_options dco = {.max_rows = g->max_rows, .max_logit_rows = o->slots, .n_blocks = n_blocks,
                                     .block_size = bs, .max_seqs = o->slots, .max_blocks = max_blocks,
                                     .dt = co->bf16 ? CUDA_BF16 : CUDA_F32, .cache_dt = co->bf16 ? CUDA_BF16 : CUDA_F32};
    TRY_GOTO(decode_cuda_create(&g->dims, &dco, &g->dc));
    TRY_GOTO(ec_set_model(g, m));
    TRY_GOTO(cuda_alloc((void **)&g->dp, Sl * sizeof *g->dp, "engine sampler parameters"));
    TRY_GOTO(cuda_alloc((void **)&g->dtok, Sl * 4, "engine sampled tokens"));
    TRY_GOTO(cuda_alloc((void **)&g->dlp, Sl * 4, "engine sampled logprobs"));
    TRY_GOTO(cuda_alloc((void **)&g->dtr, Sl, "engine sampled flags"));
    const engine_backend be = {.impl = g, .step = ec_step, .release = ec_release, .set_model = ec_set_model,
                               .free = ec_free};
    g = NULL; /* the engine owns it from here, also when creation fails */
    st = engine_create_backend(m, version, o, &be, out);
cleanup:
    if (st != TIDAL_OK) {
        ec_free(g);
        return tidal_wrap(st, "engine (cuda)");
    }
    return TIDAL_OK;
}

#endif
