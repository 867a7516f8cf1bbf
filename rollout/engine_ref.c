/* engine_ref.c - the CPU references as a paged device (see engine_ref.h):
 * decode_cuda's step op for op (model/decode_cuda.h) on kernels/cpu/ops and
 * kernels/cpu/engine_ref - the prefill runs through cpu_attention_forward
 * (the trainer's packed attention), the other rows through the paged
 * reference in chunks of max_seqs rows as on the GPU - the parameters in
 * model.c's flat layout (model/gpu_layout.h), the cache [2][L][n_slots][NKV]
 * [HD] in fp32. */
#include "rollout/engine_ref.h"

#include "kernels/cpu/engine_ref.h"
#include "kernels/cpu/ops.h"
#include "model/gpu_layout.h"
#include "rollout/engine_paged.h"

#include <stdlib.h>
#include <string.h>

typedef struct refdev {
    model_gpu_dims d;
    paged_geometry g;
    size_t n_params, n_slots;
    float *params;
    float *cache;                                       /* K of every layer, then V of every layer */
    float *x, *h, *rstd, *q, *k, *v, *att, *lse, *tmp, *gate, *up, *act; /* [max_rows, ...] */
    int32_t *len;                                       /* [max_rows] */
    float *hout, *logits;                               /* [slots, C], [slots, V] */
    int n_logits;
} refdev;

static void rd_free(void *impl)
{
    refdev *r = impl;
    if (!r) return;
    free(r->params), free(r->cache);
    free(r->x), free(r->h), free(r->rstd), free(r->q), free(r->k), free(r->v), free(r->att), free(r->lse);
    free(r->tmp);
    free(r->gate), free(r->up), free(r->act), free(r->len), free(r->hout), free(r->logits);
    free(r);
}

static float *layer_cache(refdev *r, int kv, int l)
{
    const size_t one = r->n_slots * (size_t)r->d.kv_heads * r->d.head_dim;
    return r->cache + ((size_t)kv * r->d.layers + (size_t)l) * one;
}

static const float *P(const refdev *r, size_t off) { return off == MODEL_GPU_ABSENT ? NULL : r->params + off; }

/* decode_cuda_step's check of the prefill runs: whole prompts from row 0. */
static tidal_status check_runs(const refdev *r, const int32_t *seq, const int32_t *pos, int T, const int32_t *cu,
                               int n)
{
    if (n < 0 || n > T || (n > 0 && (!cu || cu[0] != 0)))
        return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): %d prefill runs in a step of %d rows", n, T);
    for (int j = 0; j < n; j++) {
        if (cu[j + 1] <= cu[j] || cu[j + 1] > T || cu[j + 1] - cu[j] > r->g.max_prefill)
            return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): prefill run %d is rows %d .. %d (of %d; at most "
                                                 "%d rows)",
                              j, cu[j], cu[j + 1] - 1, T, r->g.max_prefill);
        for (int i = cu[j]; i < cu[j + 1]; i++)
            if (seq[i] != seq[cu[j]] || pos[i] != i - cu[j])
                return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): prefill run %d: row %d is sequence %d "
                                                     "position %d, want sequence %d position %d",
                                  j, i, seq[i], pos[i], seq[cu[j]], i - cu[j]);
    }
    return TIDAL_OK;
}

static tidal_status rd_step(void *impl, const int32_t *tok, const int32_t *seq, const int32_t *pos, int T,
                            const int32_t *cu, int n_runs, const int32_t *tables, const int32_t *out_rows, int n_out)
{
    refdev *r = impl;
    const model_gpu_dims *d = &r->d;
    const int C = d->hidden, NH = d->heads, NKV = d->kv_heads, HD = d->head_dim, F = d->ffn, V = d->vocab;
    const int QD = NH * HD, KVD = NKV * HD, mb = r->g.max_blocks, bs = r->g.block_size;
    if (T < 1 || T > r->g.max_rows || n_out < 1 || n_out > r->g.max_seqs)
        return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): a step of %d rows, %d logits rows", T, n_out);
    for (int i = 0; i < T; i++) {
        if (tok[i] < 0 || tok[i] >= V || seq[i] < 0 || seq[i] >= r->g.max_seqs ||
            cuda_kv_slot(tables + (size_t)seq[i] * mb, mb, bs, pos[i]) < 0)
            return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): row %d: token %d, sequence %d, position %d", i,
                              tok[i], seq[i], pos[i]);
        r->len[i] = pos[i] + 1;
    }
    TRY(check_runs(r, seq, pos, T, cu, n_runs));
    const int Tp = n_runs > 0 ? cu[n_runs] : 0, chunk = r->g.max_seqs;
    cpu_embedding_forward(r->x, tok, P(r, model_gpu_embed(d)), T, C);
    for (int l = 0; l < d->layers; l++) {
        const model_gpu_layer_offsets lo = model_gpu_layer(d, l);
        float *kc = layer_cache(r, 0, l), *vc = layer_cache(r, 1, l);
        cpu_rmsnorm_forward(r->h, r->rstd, r->x, P(r, lo.ln1), T, C, d->rms_eps);
        cpu_matmul_forward(r->q, r->h, P(r, lo.wq), P(r, lo.bq), T, C, QD);
        cpu_matmul_forward(r->k, r->h, P(r, lo.wk), P(r, lo.bk), T, C, KVD);
        cpu_matmul_forward(r->v, r->h, P(r, lo.wv), P(r, lo.bv), T, C, KVD);
        cpu_rope_forward(r->q, pos, T, NH, HD, d->rope_theta);
        cpu_rope_forward(r->k, pos, T, NKV, HD, d->rope_theta);
        cpu_ref_kv_store(kc, vc, tables, mb, bs, r->k, r->v, seq, pos, T, NKV, HD);
        if (Tp > 0) cpu_attention_forward(r->att, r->lse, r->q, r->k, r->v, cu, n_runs, Tp, NH, NKV, HD);
        for (int r0 = Tp; r0 < T; r0 += chunk)
            cpu_ref_decode_attention(r->att + (size_t)r0 * QD, NULL, r->q + (size_t)r0 * QD, kc, vc, tables, mb, bs,
                                     seq + r0, r->len + r0, T - r0 < chunk ? T - r0 : chunk, NH, NKV, HD);
        cpu_matmul_forward(r->tmp, r->att, P(r, lo.wo), P(r, lo.bo), T, QD, C);
        for (size_t i = 0; i < (size_t)T * C; i++) r->x[i] += r->tmp[i];
        cpu_rmsnorm_forward(r->h, r->rstd, r->x, P(r, lo.ln2), T, C, d->rms_eps);
        cpu_matmul_forward(r->gate, r->h, P(r, lo.wg), NULL, T, C, F);
        cpu_matmul_forward(r->up, r->h, P(r, lo.wu), NULL, T, C, F);
        cpu_swiglu_forward(r->act, r->gate, r->up, (size_t)T * F);
        cpu_matmul_forward(r->tmp, r->act, P(r, lo.wd), NULL, T, F, C);
        for (size_t i = 0; i < (size_t)T * C; i++) r->x[i] += r->tmp[i];
    }
    cpu_rmsnorm_forward(r->h, r->rstd, r->x, P(r, model_gpu_norm(d)), T, C, d->rms_eps);
    for (int i = 0; i < n_out; i++) {
        if (out_rows[i] < 0 || out_rows[i] >= T)
            return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): logits row %d of %d rows", out_rows[i], T);
        memcpy(r->hout + (size_t)i * C, r->h + (size_t)out_rows[i] * C, (size_t)C * sizeof *r->hout);
    }
    cpu_matmul_forward(r->logits, r->hout, P(r, model_gpu_head(d)), NULL, n_out, C, V);
    r->n_logits = n_out;
    return TIDAL_OK;
}

static tidal_status rd_copy(void *impl, const int32_t *src, const int32_t *dst, const int32_t *cnt, int n)
{
    refdev *r = impl;
    const size_t KVD = (size_t)r->d.kv_heads * r->d.head_dim, bs = (size_t)r->g.block_size;
    for (int i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= r->g.n_blocks || dst[i] < 0 || dst[i] >= r->g.n_blocks || cnt[i] < 0 ||
            cnt[i] > r->g.block_size)
            return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): block copy %d -> %d of %d slots", src[i], dst[i],
                              cnt[i]);
        for (int kv = 0; kv < 2; kv++)
            for (int l = 0; l < r->d.layers; l++) {
                float *c = layer_cache(r, kv, l);
                memcpy(c + (size_t)dst[i] * bs * KVD, c + (size_t)src[i] * bs * KVD, (size_t)cnt[i] * KVD * sizeof *c);
            }
    }
    return TIDAL_OK;
}

static tidal_status rd_sample(void *impl, const cuda_sample_params *p, int n, int32_t *tok, float *lp, uint8_t *tr,
                              float *logits)
{
    refdev *r = impl;
    if (n != r->n_logits)
        return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): %d rows to sample, %d logits rows", n, r->n_logits);
    if (cpu_ref_sample(tok, lp, tr, r->logits, p, n, r->d.vocab) != 0)
        return tidal_fail(TIDAL_ERR_NOMEM, "engine (cpu-ref): out of memory sampling");
    if (logits) memcpy(logits, r->logits, (size_t)n * r->d.vocab * sizeof *logits);
    return TIDAL_OK;
}

static tidal_status rd_set_params(void *impl, const float *params, size_t n)
{
    refdev *r = impl;
    if (n != r->n_params)
        return tidal_fail(TIDAL_ERR_INVALID, "engine (cpu-ref): %zu parameters, the layout %zu", n, r->n_params);
    memcpy(r->params, params, n * sizeof *params);
    return TIDAL_OK;
}

tidal_status engine_ref_device(const model_config *c, const paged_geometry *g, paged_device *out)
{
    memset(out, 0, sizeof *out);
    refdev *r = calloc(1, sizeof *r);
    if (!r) return tidal_fail(TIDAL_ERR_NOMEM, "engine (cpu-ref): out of memory");
    r->d = model_gpu_dims_of(c);
    r->g = *g;
    r->n_params = model_gpu_params(&r->d);
    r->n_slots = (size_t)g->n_blocks * g->block_size;
    const model_gpu_dims *d = &r->d;
    const size_t R = (size_t)g->max_rows, C = (size_t)d->hidden, QD = (size_t)d->heads * d->head_dim,
                 KVD = (size_t)d->kv_heads * d->head_dim, F = (size_t)d->ffn, Sl = (size_t)g->max_seqs;
    r->params = malloc(r->n_params * sizeof *r->params);
    r->cache = calloc(2 * (size_t)d->layers * r->n_slots * KVD, sizeof *r->cache);
    r->x = malloc(R * C * 4), r->h = malloc(R * C * 4), r->rstd = malloc(R * 4), r->tmp = malloc(R * C * 4);
    r->q = malloc(R * QD * 4), r->att = malloc(R * QD * 4), r->k = malloc(R * KVD * 4), r->v = malloc(R * KVD * 4);
    r->lse = malloc(R * (size_t)d->heads * 4);
    r->gate = malloc(R * F * 4), r->up = malloc(R * F * 4), r->act = malloc(R * F * 4), r->len = malloc(R * 4);
    r->hout = malloc(Sl * C * 4), r->logits = malloc(Sl * (size_t)d->vocab * 4);
    if (!r->params || !r->cache || !r->x || !r->h || !r->rstd || !r->tmp || !r->q || !r->att || !r->lse || !r->k ||
        !r->v || !r->gate || !r->up || !r->act || !r->len || !r->hout || !r->logits) {
        rd_free(r);
        return tidal_fail(TIDAL_ERR_NOMEM, "engine (cpu-ref): out of memory for %zu rows", R);
    }
    *out = (paged_device){.impl = r, .step = rd_step, .copy_blocks = rd_copy, .sample = rd_sample,
                          .set_params = rd_set_params, .free = rd_free};
    return TIDAL_OK;
}

tidal_status engine_ref_create(model *m, uint64_t version, const engine_options *o, const engine_cuda_options *co,
                               engine **out)
{
    *out = NULL;
    paged_geometry g;
    paged_device dev;
    TRY_WRAP(paged_geometry_of(o, co, &g), "engine (cpu-ref)");
    TRY(engine_ref_device(model_cfg(m), &g, &dev));
    TRY_WRAP(engine_paged_create(m, version, o, &g, &dev, out), "engine (cpu-ref)");
    return TIDAL_OK;
}
