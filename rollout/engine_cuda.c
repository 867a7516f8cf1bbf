/* engine_cuda.c - the GPU engine (see engine_cuda.h): rollout/engine_paged.c's
 * host logic over the GPU as a paged device - model/decode_cuda's step over
 * the paged cache and block copies, kernels/cuda/engine.cu's sampler on its
 * logits rows (uploads, one synchronisation a step when the samples come
 * back). Also rollout.device's resolution and the bench's bandwidth probe.
 */
#include "rollout/engine_cuda.h"

#include "rollout/engine_paged.h"
#include "rollout/engine_ref.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/device.h"

#ifdef TIDAL_HAVE_CUDA
#include "kernels/cuda/common.h"
#include "kernels/cuda/engine_cuda.h"
#include "model/decode_cuda.h"
#include "model/gpu_layout.h"
#endif

const char *engine_device_name(engine_device d)
{
    return d == ENGINE_DEVICE_CUDA ? "cuda" : d == ENGINE_DEVICE_CPU_REF ? "cpu-ref" : "cpu";
}

bool engine_cuda_built(void) { return device_cuda_built(); }

tidal_status engine_cuda_available(void) { return device_cuda_available(); }

tidal_status engine_device_resolve(const char *name, engine_device *out, char *why, size_t n)
{
    bool cuda = false;
    *out = ENGINE_DEVICE_CPU;
    TRY(device_resolve("rollout.device", name, "the CPU engine", "the GPU engine (CUDA)", &cuda, why, n));
    if (cuda) *out = ENGINE_DEVICE_CUDA;
    return TIDAL_OK;
}

tidal_status engine_create_on(engine_device d, model *m, uint64_t version, const engine_options *o,
                              const engine_cuda_options *co, engine **out)
{
    if (d == ENGINE_DEVICE_CUDA) return engine_cuda_create(m, version, o, co, out);
    if (d == ENGINE_DEVICE_CPU_REF) return engine_ref_create(m, version, o, co, out);
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

/* The GPU as a paged device (engine_paged.h): decode_cuda's step and block
 * copies, cuda_sample on its logits. */
typedef struct cudev {
    decode_cuda *dc;
    const float *dlogits;   /* the last step's logits rows, on the device */
    int V, slots;
    cuda_sample_params *dp; /* device [slots] */
    int32_t *dtok;
    float *dlp;
    uint8_t *dtr;
} cudev;

static void cd_free(void *impl)
{
    cudev *c = impl;
    if (!c) return;
    decode_cuda_free(c->dc);
    cuda_free(c->dp), cuda_free(c->dtok), cuda_free(c->dlp), cuda_free(c->dtr);
    free(c);
}

static tidal_status cd_step(void *impl, const int32_t *tok, const int32_t *seq, const int32_t *pos, int T,
                            const int32_t *cu_prefill, int n_prefill, const int32_t *tables, const int32_t *out_rows,
                            int n_out)
{
    cudev *c = impl;
    return decode_cuda_step(c->dc, tok, seq, pos, T, cu_prefill, n_prefill, tables, out_rows, n_out, &c->dlogits);
}

static tidal_status cd_copy(void *impl, const int32_t *src, const int32_t *dst, const int32_t *cnt, int n)
{
    return decode_cuda_copy_blocks(((cudev *)impl)->dc, src, dst, cnt, n); /* same stream: before the next step */
}

static tidal_status cd_sample(void *impl, const cuda_sample_params *p, int n, int32_t *tok, float *lp, uint8_t *tr,
                              float *logits)
{
    cudev *c = impl;
    cudaStream_t s = decode_cuda_stream(c->dc);
    TRY(cuda_upload(c->dp, p, (size_t)n * sizeof *p, s));
    TRY(cuda_sample(c->dtok, c->dlp, c->dtr, c->dlogits, c->dp, n, c->V, s));
    TRY(cuda_download(tok, c->dtok, (size_t)n * sizeof *tok, s));
    TRY(cuda_download(lp, c->dlp, (size_t)n * sizeof *lp, s));
    TRY(cuda_download(tr, c->dtr, (size_t)n, s));
    if (logits) TRY(cuda_download(logits, c->dlogits, (size_t)n * (size_t)c->V * sizeof *logits, s));
    return cuda_check(cudaStreamSynchronize(s), "engine step");
}

static tidal_status cd_set_params(void *impl, const float *params, size_t n)
{
    (void)n; /* checked against the layout by engine_paged.c */
    return decode_cuda_set_params(((cudev *)impl)->dc, params);
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
    paged_geometry g;
    TRY_WRAP(paged_geometry_of(o, co, &g), "engine (cuda)");
    tidal_status st = TIDAL_OK;
    cudev *c = calloc(1, sizeof *c);
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "engine (cuda): out of memory");
    const model_config *mc = model_cfg(m);
    const model_gpu_dims dims = model_gpu_dims_of(mc);
    c->V = mc->vocab_size;
    c->slots = o->slots;
    const decode_cuda_options dco = {.max_rows = g.max_rows, .max_logit_rows = o->slots, .n_blocks = g.n_blocks,
                                     .block_size = g.block_size, .max_seqs = g.max_seqs, .max_blocks = g.max_blocks,
                                     .max_prefill = g.max_prefill,
                                     .dt = co->bf16 ? CUDA_BF16 : CUDA_F32, .cache_dt = co->bf16 ? CUDA_BF16 : CUDA_F32};
    const size_t Sl = (size_t)o->slots;
    TRY_GOTO(decode_cuda_create(&dims, &dco, &c->dc));
    TRY_GOTO(cuda_alloc((void **)&c->dp, Sl * sizeof *c->dp, "engine sampler parameters"));
    TRY_GOTO(cuda_alloc((void **)&c->dtok, Sl * 4, "engine sampled tokens"));
    TRY_GOTO(cuda_alloc((void **)&c->dlp, Sl * 4, "engine sampled logprobs"));
    TRY_GOTO(cuda_alloc((void **)&c->dtr, Sl, "engine sampled flags"));
    const paged_device dev = {.impl = c, .step = cd_step, .copy_blocks = cd_copy, .sample = cd_sample,
                              .set_params = cd_set_params, .free = cd_free};
    c = NULL; /* engine_paged_create owns it from here */
    st = engine_paged_create(m, version, o, &g, &dev, out);
cleanup:
    cd_free(c);
    if (st != TIDAL_OK) return tidal_wrap(st, "engine (cuda)");
    return TIDAL_OK;
}

#endif
