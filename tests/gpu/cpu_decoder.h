/* cpu_decoder.h - model.c's decoder, forward and backward, composed from the
 * CPU ops on a flat parameter buffer in model/gpu_layout.h's layout: the
 * oracle of the GPU decoder in tests/gpu/test_gpu_parity.c, which cannot
 * link model.c itself (its loading code needs tidal's Debian libraries).
 * tests/unit/test_cuda_index.c checks that it equals model.c bit for bit.
 * Header only (static), for tests.
 */
#ifndef TIDAL_TESTS_GPU_CPU_DECODER_H
#define TIDAL_TESTS_GPU_CPU_DECODER_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/ops.h"
#include "model/gpu_layout.h"

/* model.c's forward and backward, op for op, on a flat parameter buffer laid
 * out as model/gpu_layout.h says (test_cuda_index checks that layout against
 * model.c's table); grads accumulate. model.c itself cannot be linked here
 * (its loading code needs tidal's Debian libraries). */
static inline void cpu_decoder(const model_gpu_dims *d, const float *P, float *G, int T, int S,
                               const int32_t *ids, const int32_t *targets, const int32_t *cu_seqlens,
                               float inv_temp_in, float *logprob, float *entropy, const float *dlogprob,
                               const float *dentropy)
{
    const int C = d->hidden, NH = d->heads, NKV = d->kv_heads, HD = d->head_dim, F = d->ffn, V = d->vocab;
    const int QD = NH * HD, KVD = NKV * HD, L = d->layers;
    const size_t t = (size_t)T;
    float *acts = calloc((size_t)L * t * (4 * C + 2 * QD + 2 * KVD + 3 * F + 2 + NH) + t * (2 * C + 1), sizeof(float));
    float *dx = calloc(t * C, 4), *dn = calloc(t * C, 4), *dq = calloc(t * QD, 4), *dk = calloc(t * KVD, 4);
    float *dv = calloc(t * KVD, 4), *datt = calloc(t * QD, 4), *dh = calloc(t * F, 4), *dgate = calloc(t * F, 4);
    float *dup = calloc(t * F, 4), *scratch = calloc((size_t)CPU_HEAD_CHUNK * V, 4);
    int32_t *pos = calloc(t, 4);
    if (L > 64) abort(); /* the per-layer pointer arrays below */
    float *p = acts;
    float *x[64], *a[64], *r1[64], *q[64], *k[64], *v[64], *att[64], *lse[64], *xm[64], *bb[64], *r2[64];
    float *gate[64], *up[64], *h[64];
    for (int l = 0; l < L; l++) {
        x[l] = p, p += t * C;
        a[l] = p, p += t * C;
        r1[l] = p, p += t;
        q[l] = p, p += t * QD;
        k[l] = p, p += t * KVD;
        v[l] = p, p += t * KVD;
        att[l] = p, p += t * QD;
        lse[l] = p, p += t * NH;
        xm[l] = p, p += t * C;
        bb[l] = p, p += t * C;
        r2[l] = p, p += t;
        gate[l] = p, p += t * F;
        up[l] = p, p += t * F;
        h[l] = p, p += t * F;
    }
    float *xf = p, *f = p + t * C, *rf = p + 2 * t * C;
    for (int s = 0; s < S; s++)
        for (int i = cu_seqlens[s]; i < cu_seqlens[s + 1]; i++) pos[i] = i - cu_seqlens[s];
#define PW(off) ((off) == MODEL_GPU_ABSENT ? NULL : P + (off))
#define GW(off) ((off) == MODEL_GPU_ABSENT ? NULL : G + (off))
    const float inv_temp = inv_temp_in > 0.0f ? inv_temp_in : 1.0f;
    cpu_embedding_forward(x[0], ids, P + model_gpu_embed(d), T, C);
    for (int l = 0; l < L; l++) {
        model_gpu_layer_offsets o = model_gpu_layer(d, l);
        float *xn = l + 1 < L ? x[l + 1] : xf;
        cpu_rmsnorm_forward(a[l], r1[l], x[l], PW(o.ln1), T, C, d->rms_eps);
        cpu_matmul_forward(q[l], a[l], PW(o.wq), PW(o.bq), T, C, QD);
        cpu_matmul_forward(k[l], a[l], PW(o.wk), PW(o.bk), T, C, KVD);
        cpu_matmul_forward(v[l], a[l], PW(o.wv), PW(o.bv), T, C, KVD);
        cpu_rope_forward(q[l], pos, T, NH, HD, d->rope_theta);
        cpu_rope_forward(k[l], pos, T, NKV, HD, d->rope_theta);
        cpu_attention_forward(att[l], lse[l], q[l], k[l], v[l], cu_seqlens, S, T, NH, NKV, HD);
        cpu_matmul_forward(xm[l], att[l], PW(o.wo), PW(o.bo), T, QD, C);
        for (size_t i = 0; i < t * C; i++) xm[l][i] += x[l][i];
        cpu_rmsnorm_forward(bb[l], r2[l], xm[l], PW(o.ln2), T, C, d->rms_eps);
        cpu_matmul_forward(gate[l], bb[l], PW(o.wg), NULL, T, C, F);
        cpu_matmul_forward(up[l], bb[l], PW(o.wu), NULL, T, C, F);
        cpu_swiglu_forward(h[l], gate[l], up[l], t * F);
        cpu_matmul_forward(xn, h[l], PW(o.wd), NULL, T, F, C);
        for (size_t i = 0; i < t * C; i++) xn[i] += xm[l][i];
    }
    cpu_rmsnorm_forward(f, rf, xf, P + model_gpu_norm(d), T, C, d->rms_eps);
    cpu_head_forward(logprob, entropy, NULL, f, P + model_gpu_head(d), targets, T, C, V, inv_temp, scratch);
    if (dlogprob) {
        cpu_head_backward(dn, G + model_gpu_head(d), dlogprob, dentropy, f, P + model_gpu_head(d), targets, T, C,
                          V, inv_temp, scratch);
        cpu_rmsnorm_backward(dx, G + model_gpu_norm(d), dn, xf, P + model_gpu_norm(d), rf, T, C);
        for (int l = L - 1; l >= 0; l--) {
            model_gpu_layer_offsets o = model_gpu_layer(d, l);
            memset(dh, 0, t * F * 4);
            cpu_matmul_backward(dh, GW(o.wd), NULL, dx, h[l], PW(o.wd), T, F, C);
            cpu_swiglu_backward(dgate, dup, dh, gate[l], up[l], t * F);
            memset(dn, 0, t * C * 4);
            cpu_matmul_backward(dn, GW(o.wg), NULL, dgate, bb[l], PW(o.wg), T, C, F);
            cpu_matmul_backward(dn, GW(o.wu), NULL, dup, bb[l], PW(o.wu), T, C, F);
            cpu_rmsnorm_backward(dx, GW(o.ln2), dn, xm[l], PW(o.ln2), r2[l], T, C);
            memset(datt, 0, t * QD * 4);
            cpu_matmul_backward(datt, GW(o.wo), GW(o.bo), dx, att[l], PW(o.wo), T, QD, C);
            cpu_attention_backward(dq, dk, dv, datt, att[l], lse[l], q[l], k[l], v[l], cu_seqlens, S, T, NH,
                                   NKV, HD);
            cpu_rope_backward(dq, pos, T, NH, HD, d->rope_theta);
            cpu_rope_backward(dk, pos, T, NKV, HD, d->rope_theta);
            memset(dn, 0, t * C * 4);
            cpu_matmul_backward(dn, GW(o.wq), GW(o.bq), dq, a[l], PW(o.wq), T, C, QD);
            cpu_matmul_backward(dn, GW(o.wk), GW(o.bk), dk, a[l], PW(o.wk), T, C, KVD);
            cpu_matmul_backward(dn, GW(o.wv), GW(o.bv), dv, a[l], PW(o.wv), T, C, KVD);
            cpu_rmsnorm_backward(dx, GW(o.ln1), dn, x[l], PW(o.ln1), r1[l], T, C);
        }
        cpu_embedding_backward(G + model_gpu_embed(d), dx, ids, T, C);
    }
#undef PW
#undef GW
    free(acts), free(dx), free(dn), free(dq), free(dk), free(dv), free(datt), free(dh), free(dgate), free(dup);
    free(scratch), free(pos);
}

/* model.c's forward over one sequence ids[0..n), no backward: logits [n, V]
 * of every position (the GPU decode step's oracle, in cpu_decoder's op order). */
static inline void cpu_decoder_logits(const model_gpu_dims *d, const float *P, const int32_t *ids, int n, float *logits)
{
    const int C = d->hidden, NH = d->heads, NKV = d->kv_heads, HD = d->head_dim, F = d->ffn, V = d->vocab;
    const int QD = NH * HD, KVD = NKV * HD;
    const size_t t = (size_t)n;
    float *x = calloc(t * C, 4), *a = calloc(t * C, 4), *r = calloc(t, 4), *q = calloc(t * QD, 4);
    float *k = calloc(t * KVD, 4), *v = calloc(t * KVD, 4), *att = calloc(t * QD, 4), *lse = calloc(t * NH, 4);
    float *xm = calloc(t * C, 4), *gate = calloc(t * F, 4), *up = calloc(t * F, 4), *h = calloc(t * F, 4);
    int32_t *pos = calloc(t, 4), cu[2] = {0, n};
    for (int i = 0; i < n; i++) pos[i] = i;
#define PW(off) ((off) == MODEL_GPU_ABSENT ? NULL : P + (off))
    cpu_embedding_forward(x, ids, P + model_gpu_embed(d), n, C);
    for (int l = 0; l < d->layers; l++) {
        model_gpu_layer_offsets o = model_gpu_layer(d, l);
        cpu_rmsnorm_forward(a, r, x, PW(o.ln1), n, C, d->rms_eps);
        cpu_matmul_forward(q, a, PW(o.wq), PW(o.bq), n, C, QD);
        cpu_matmul_forward(k, a, PW(o.wk), PW(o.bk), n, C, KVD);
        cpu_matmul_forward(v, a, PW(o.wv), PW(o.bv), n, C, KVD);
        cpu_rope_forward(q, pos, n, NH, HD, d->rope_theta);
        cpu_rope_forward(k, pos, n, NKV, HD, d->rope_theta);
        cpu_attention_forward(att, lse, q, k, v, cu, 1, n, NH, NKV, HD);
        cpu_matmul_forward(xm, att, PW(o.wo), PW(o.bo), n, QD, C);
        for (size_t i = 0; i < t * C; i++) xm[i] += x[i];
        cpu_rmsnorm_forward(a, r, xm, PW(o.ln2), n, C, d->rms_eps);
        cpu_matmul_forward(gate, a, PW(o.wg), NULL, n, C, F);
        cpu_matmul_forward(up, a, PW(o.wu), NULL, n, C, F);
        cpu_swiglu_forward(h, gate, up, t * F);
        cpu_matmul_forward(x, h, PW(o.wd), NULL, n, F, C);
        for (size_t i = 0; i < t * C; i++) x[i] += xm[i];
    }
#undef PW
    cpu_rmsnorm_forward(a, r, x, P + model_gpu_norm(d), n, C, d->rms_eps);
    cpu_matmul_forward(logits, a, P + model_gpu_head(d), NULL, n, C, V);
    free(x), free(a), free(r), free(q), free(k), free(v), free(att), free(lse), free(xm), free(gate), free(up), free(h);
    free(pos);
}

#endif
