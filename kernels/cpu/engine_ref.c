/* engine_ref.c - CPU references of the GPU engine's kernels (see engine_ref.h). */
#include "kernels/cpu/engine_ref.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void cpu_ref_kv_store(float *k_cache, float *v_cache, const int32_t *tables, int max_blocks, int block_size,
                      const float *k, const float *v, const int32_t *seq, const int32_t *pos, int T, int NKV, int HD)
{
    const size_t n = (size_t)NKV * HD;
    for (int t = 0; t < T; t++) {
        if (seq[t] < 0) continue;
        int64_t slot = cuda_kv_slot(tables + (size_t)seq[t] * max_blocks, max_blocks, block_size, pos[t]);
        if (slot < 0) continue;
        memcpy(k_cache + cuda_kv_offset(slot, 0, 0, NKV, HD), k + (size_t)t * n, n * sizeof(float));
        memcpy(v_cache + cuda_kv_offset(slot, 0, 0, NKV, HD), v + (size_t)t * n, n * sizeof(float));
    }
}

void cpu_ref_decode_attention(float *out, float *lse, const float *q, const float *k_cache, const float *v_cache,
                              const int32_t *tables, int max_blocks, int block_size, const int32_t *seq,
                              const int32_t *len, int B, int NH, int NKV, int HD)
{
    const float scale = 1.0f / sqrtf((float)HD);
    int maxn = 1;
    for (int b = 0; b < B; b++) maxn = len[b] > maxn ? len[b] : maxn;
    float *sc = malloc((size_t)maxn * sizeof *sc);
    for (int b = 0; b < B; b++) {
        const int n = len[b];
        const int32_t *row = tables + (size_t)(seq[b] < 0 ? 0 : seq[b]) * max_blocks;
        for (int h = 0; h < NH; h++) {
            const int kh = h / (NH / NKV);
            const float *qv = q + ((size_t)b * NH + h) * HD;
            float *o = out + ((size_t)b * NH + h) * HD;
            bool bad = !sc || n < 1 || seq[b] < 0;
            float m = -INFINITY;
            for (int p = 0; p < n && !bad; p++) {
                int64_t slot = cuda_kv_slot(row, max_blocks, block_size, p);
                if (slot < 0) {
                    bad = true;
                    break;
                }
                float s = 0.0f;
                for (int d = 0; d < HD; d++) s += qv[d] * k_cache[cuda_kv_offset(slot, kh, d, NKV, HD)];
                sc[p] = s * scale;
                m = fmaxf(m, sc[p]);
            }
            if (bad) {
                for (int d = 0; d < HD; d++) o[d] = NAN;
                if (lse) lse[(size_t)b * NH + h] = NAN;
                continue;
            }
            double l = 0.0;
            for (int p = 0; p < n; p++) {
                sc[p] = expf(sc[p] - m);
                l += sc[p];
            }
            const float inv = (float)(1.0 / l);
            for (int d = 0; d < HD; d++) {
                float acc = 0.0f;
                for (int p = 0; p < n; p++)
                    acc += sc[p] *
                           v_cache[cuda_kv_offset(cuda_kv_slot(row, max_blocks, block_size, p), kh, d, NKV, HD)];
                o[d] = acc * inv;
            }
            if (lse) lse[(size_t)b * NH + h] = (float)((double)m + log(l));
        }
    }
    free(sc);
}

typedef struct ranked {
    uint64_t key;
    int32_t id;
} ranked;

static int ranked_desc(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    return (x->key < y->key) - (x->key > y->key);
}

int cpu_ref_sample(int32_t *token, float *logprob, uint8_t *truncated, const float *logits,
                   const cuda_sample_params *params, int B, int V)
{
    ranked *r = malloc((size_t)V * sizeof *r);
    if (!r) return -1;
    for (int b = 0; b < B; b++) {
        const float *row = logits + (size_t)b * V;
        const cuda_sample_params *P = &params[b];
        const int greedy = !(P->temperature > 0.0f);
        const float sc = greedy ? 1.0f : 1.0f / P->temperature;
        for (int j = 0; j < V; j++) r[j] = (ranked){cuda_rank_key(row[j] * sc, j), j};
        qsort(r, (size_t)V, sizeof *r, ranked_desc);
        const int amax = r[0].id;
        const float m = row[amax] * sc;
        double se = 0.0;
        for (int j = 0; j < V; j++) se += exp((double)(row[j] * sc) - (double)m);
        const double lse = (double)m + log(se);
        if (greedy) {
            token[b] = amax;
            logprob[b] = (float)((double)row[amax] - lse);
            truncated[b] = 1;
            continue;
        }
        int keep = V;
        if (P->top_k > 0 && P->top_k < V) keep = P->top_k;
        if (P->top_p > 0.0f && P->top_p < 1.0f) {
            uint64_t mk = CUDA_MASS_ONE;
            if (keep < V) {
                mk = 0;
                for (int i = 0; i < keep; i++) mk += cuda_mass_fixed(exp((double)(row[r[i].id] * sc) - lse));
            }
            const uint64_t thr = (uint64_t)((double)P->top_p * (double)mk);
            uint64_t cum = 0;
            for (int i = 0; i < keep; i++) {
                uint64_t mi = cuda_mass_fixed(exp((double)(row[r[i].id] * sc) - lse));
                cum += mi;
                if (mi > 0 && cum >= thr) { /* the shortest prefix reaching thr */
                    keep = i + 1;
                    break;
                }
            }
        }
        const double floor_p = P->min_p > 0.0f ? (double)P->min_p * exp((double)m - lse) : 0.0;
        int kept = 0, tok = -1;
        double best = -INFINITY;
        for (int i = 0; i < keep; i++) {
            const int j = r[i].id;
            const float z = row[j] * sc;
            if (P->min_p > 0.0f && !(exp((double)z - lse) >= floor_p)) continue;
            kept++;
            const double v = (double)z + cuda_sampler_gumbel(P->seed, P->sequence, P->step, (uint32_t)j);
            if (v > best || (v == best && j < tok)) best = v, tok = j;
        }
        if (tok < 0) tok = amax; /* unreachable: the best token is always kept */
        token[b] = tok;
        logprob[b] = (float)((double)(row[tok] * sc) - lse);
        truncated[b] = kept < V;
    }
    free(r);
    return 0;
}
