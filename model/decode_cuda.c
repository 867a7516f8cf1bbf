/* decode_cuda.c - the decoder's inference step on the GPU (see decode_cuda.h). */
#include "model/decode_cuda.h"

#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/engine_cuda.h"
#include "kernels/cuda/index.h"
#include "kernels/cuda/ops_cuda.h"

typedef struct decode_layer {
    void *ln1, *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo, *ln2, *wg, *wu, *wd;
} decode_layer;

/* One tensor of the flat fp32 layout and where it goes in the device buffer. */
typedef struct decode_tensor {
    size_t src, n;   /* floats in the host layout */
    size_t dst;      /* bytes into the device buffer, 256-aligned */
    void **slot;     /* the pointer to set */
} decode_tensor;

struct decode_cuda {
    model_gpu_dims d;
    decode_cuda_options o;
    cudaStream_t stream;
    cuda_blas *blas;
    unsigned char *params;  /* device, every tensor in o.dt */
    size_t params_bytes;
    decode_tensor *tensors;
    int ntensors;
    void *embed, *norm, *head;
    decode_layer *layer;
    void *cache;            /* [2][L][n_slots][NKV * HD] in o.cache_dt */
    void **cache_ptrs;      /* device: the 2L caches, K of every layer then V */
    int64_t n_slots;
    int32_t *d_tables, *d_tokens, *d_seq, *d_pos, *d_len, *d_out, *d_copy; /* d_copy: 3 x max copies */
    int32_t *h_len;
    void *x, *h, *hout, *q, *k, *v, *att, *gate, *up, *act;
    float *rstd, *logits;
    float *scores;          /* the paged attention's [max_seqs, NH, max_len] */
    float *lse;             /* the packed attention's [max_rows, NH] */
    void *att_scratch;      /* the packed attention's, for runs of max_prefill */
    size_t att_scratch_bytes;
};

cudaStream_t decode_cuda_stream(const decode_cuda *g) { return g->stream; }

void decode_cuda_free(decode_cuda *g)
{
    if (!g) return;
    if (g->stream) cudaStreamSynchronize(g->stream);
    cuda_blas_free(g->blas);
    cuda_free(g->params);
    free(g->tensors);
    free(g->layer);
    cuda_free(g->cache);
    cuda_free(g->cache_ptrs);
    cuda_free(g->d_tables), cuda_free(g->d_tokens), cuda_free(g->d_seq), cuda_free(g->d_pos), cuda_free(g->d_len);
    cuda_free(g->d_out), cuda_free(g->hout);
    cuda_free(g->d_copy);
    free(g->h_len);
    cuda_free(g->x), cuda_free(g->h), cuda_free(g->q), cuda_free(g->k), cuda_free(g->v), cuda_free(g->att);
    cuda_free(g->gate), cuda_free(g->up), cuda_free(g->act);
    cuda_free(g->rstd), cuda_free(g->logits), cuda_free(g->scores), cuda_free(g->lse), cuda_free(g->att_scratch);
    if (g->stream) cudaStreamDestroy(g->stream);
    free(g);
}

static void add_tensor(decode_cuda *g, size_t src, size_t n, void **slot)
{
    if (src == MODEL_GPU_ABSENT) {
        *slot = NULL;
        return;
    }
    decode_tensor *t = &g->tensors[g->ntensors++];
    t->src = src, t->n = n, t->slot = slot;
    t->dst = (g->params_bytes + 255) & ~(size_t)255;
    g->params_bytes = t->dst + n * cuda_dtype_size(g->o.dt);
}

tidal_status decode_cuda_create(const model_gpu_dims *d, const decode_cuda_options *o, decode_cuda **out)
{
    *out = NULL;
    if (d->layers < 1 || d->hidden < 1 || d->heads < 1 || d->kv_heads < 1 || d->heads % d->kv_heads != 0 ||
        d->head_dim < 2 || d->head_dim % 2 != 0 || d->ffn < 1 || d->vocab < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: bad model shape: layers %d, hidden %d, heads %d/%d, "
                                             "head_dim %d, ffn %d, vocab %d",
                          d->layers, d->hidden, d->heads, d->kv_heads, d->head_dim, d->ffn, d->vocab);
    if (o->max_rows < 1 || o->max_logit_rows < 1 || o->max_logit_rows > o->max_rows || o->n_blocks < 1 ||
        o->block_size < 1 || o->max_seqs < 1 || o->max_blocks < 1 || o->max_prefill < 0 ||
        o->max_prefill > o->max_blocks * o->block_size)
        return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: bad options: max_rows %d, max_logit_rows %d, n_blocks %d, "
                                             "block_size %d, max_seqs %d, max_blocks %d, max_prefill %d",
                          o->max_rows, o->max_logit_rows, o->n_blocks, o->block_size, o->max_seqs, o->max_blocks,
                          o->max_prefill);
    tidal_status st = TIDAL_OK;
    decode_cuda *g = calloc(1, sizeof *g);
    if (!g) return tidal_fail(TIDAL_ERR_NOMEM, "decode_cuda: out of memory");
    g->d = *d;
    g->o = *o;
    const int L = d->layers, C = d->hidden, NH = d->heads, NKV = d->kv_heads, HD = d->head_dim, F = d->ffn;
    const size_t QD = (size_t)NH * HD, KVD = (size_t)NKV * HD, V = (size_t)d->vocab, R = (size_t)o->max_rows;
    const size_t es = cuda_dtype_size(o->dt), ces = cuda_dtype_size(o->cache_dt);
    const int max_len = o->max_blocks * o->block_size;
    g->layer = calloc((size_t)L, sizeof *g->layer);
    g->tensors = calloc((size_t)L * 13 + 3, sizeof *g->tensors);
    g->h_len = calloc(R, sizeof *g->h_len);
    if (!g->layer || !g->tensors || !g->h_len) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "decode_cuda: out of memory");
        goto cleanup;
    }
    add_tensor(g, model_gpu_embed(d), V * C, &g->embed);
    for (int l = 0; l < L; l++) {
        model_gpu_layer_offsets lo = model_gpu_layer(d, l);
        decode_layer *y = &g->layer[l];
        add_tensor(g, lo.ln1, (size_t)C, &y->ln1);
        add_tensor(g, lo.wq, QD * C, &y->wq);
        add_tensor(g, lo.bq, QD, &y->bq);
        add_tensor(g, lo.wk, KVD * C, &y->wk);
        add_tensor(g, lo.bk, KVD, &y->bk);
        add_tensor(g, lo.wv, KVD * C, &y->wv);
        add_tensor(g, lo.bv, KVD, &y->bv);
        add_tensor(g, lo.wo, (size_t)C * QD, &y->wo);
        add_tensor(g, lo.bo, (size_t)C, &y->bo);
        add_tensor(g, lo.ln2, (size_t)C, &y->ln2);
        add_tensor(g, lo.wg, (size_t)F * C, &y->wg);
        add_tensor(g, lo.wu, (size_t)F * C, &y->wu);
        add_tensor(g, lo.wd, (size_t)C * F, &y->wd);
    }
    add_tensor(g, model_gpu_norm(d), (size_t)C, &g->norm);
    if (!d->tied) add_tensor(g, model_gpu_head(d), V * C, &g->head);
    TRY_GOTO(cuda_check(cudaStreamCreate(&g->stream), "decode_cuda: stream"));
    TRY_GOTO(cuda_blas_create(&g->blas));
    TRY_GOTO(cuda_alloc((void **)&g->params, g->params_bytes, "decode_cuda: parameters"));
    for (int i = 0; i < g->ntensors; i++) *g->tensors[i].slot = g->params + g->tensors[i].dst;
    if (d->tied) g->head = g->embed;
    g->n_slots = (int64_t)o->n_blocks * o->block_size;
    const size_t cache_one = (size_t)g->n_slots * KVD * ces;
    TRY_GOTO(cuda_alloc(&g->cache, 2 * (size_t)L * cache_one, "decode_cuda: KV cache"));
    {
        void **ptrs = malloc(2 * (size_t)L * sizeof *ptrs);
        if (!ptrs) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "decode_cuda: out of memory");
            goto cleanup;
        }
        for (int i = 0; i < 2 * L; i++) ptrs[i] = (unsigned char *)g->cache + (size_t)i * cache_one;
        st = cuda_alloc((void **)&g->cache_ptrs, 2 * (size_t)L * sizeof *ptrs, "decode_cuda: cache pointers");
        if (st == TIDAL_OK) st = cuda_upload(g->cache_ptrs, ptrs, 2 * (size_t)L * sizeof *ptrs, g->stream);
        if (st == TIDAL_OK) st = cuda_check(cudaStreamSynchronize(g->stream), "decode_cuda: upload");
        free(ptrs);
        if (st != TIDAL_OK) goto cleanup;
    }
    TRY_GOTO(cuda_alloc((void **)&g->d_tables, (size_t)o->max_seqs * o->max_blocks * 4, "decode_cuda: block tables"));
    TRY_GOTO(cuda_alloc((void **)&g->d_tokens, R * 4, "decode_cuda: tokens"));
    TRY_GOTO(cuda_alloc((void **)&g->d_seq, R * 4, "decode_cuda: rows"));
    TRY_GOTO(cuda_alloc((void **)&g->d_pos, R * 4, "decode_cuda: positions"));
    TRY_GOTO(cuda_alloc((void **)&g->d_len, R * 4, "decode_cuda: lengths"));
    TRY_GOTO(cuda_alloc((void **)&g->d_copy, 3 * (size_t)o->max_seqs * 4, "decode_cuda: block copies"));
    TRY_GOTO(cuda_alloc(&g->x, R * C * es, "decode_cuda: residual"));
    TRY_GOTO(cuda_alloc(&g->h, R * C * es, "decode_cuda: normed"));
    TRY_GOTO(cuda_alloc(&g->q, R * QD * es, "decode_cuda: q"));
    TRY_GOTO(cuda_alloc(&g->k, R * KVD * es, "decode_cuda: k"));
    TRY_GOTO(cuda_alloc(&g->v, R * KVD * es, "decode_cuda: v"));
    TRY_GOTO(cuda_alloc(&g->att, R * QD * es, "decode_cuda: attention"));
    TRY_GOTO(cuda_alloc(&g->gate, R * F * es, "decode_cuda: gate"));
    TRY_GOTO(cuda_alloc(&g->up, R * F * es, "decode_cuda: up"));
    TRY_GOTO(cuda_alloc(&g->act, R * F * es, "decode_cuda: swiglu"));
    TRY_GOTO(cuda_alloc((void **)&g->rstd, R * 4, "decode_cuda: rstd"));
    TRY_GOTO(cuda_alloc((void **)&g->d_out, (size_t)o->max_logit_rows * 4, "decode_cuda: logit rows"));
    TRY_GOTO(cuda_alloc(&g->hout, (size_t)o->max_logit_rows * C * es, "decode_cuda: head rows"));
    TRY_GOTO(cuda_alloc((void **)&g->logits, (size_t)o->max_logit_rows * V * 4, "decode_cuda: logits"));
    TRY_GOTO(cuda_alloc((void **)&g->scores, (size_t)o->max_seqs * NH * (size_t)max_len * 4,
                        "decode_cuda: attention scores"));
    TRY_GOTO(cuda_alloc((void **)&g->lse, R * NH * 4, "decode_cuda: prefill lse"));
    if (o->max_prefill > 0) {
        g->att_scratch_bytes = cuda_attention_scratch_bytes(o->max_prefill, NH, NKV, HD, o->dt);
        TRY_GOTO(cuda_alloc(&g->att_scratch, g->att_scratch_bytes, "decode_cuda: prefill attention scratch"));
    }
    *out = g;
    g = NULL;
cleanup:
    decode_cuda_free(g);
    return st;
}

tidal_status decode_cuda_set_params(decode_cuda *g, const float *params)
{
    tidal_status st = TIDAL_OK;
    unsigned char *host = calloc(1, g->params_bytes);
    if (!host) return tidal_fail(TIDAL_ERR_NOMEM, "decode_cuda: out of memory staging %zu bytes", g->params_bytes);
    for (int i = 0; i < g->ntensors; i++) {
        const decode_tensor *t = &g->tensors[i];
        if (g->o.dt == CUDA_BF16) {
            uint16_t *dst = (uint16_t *)(host + t->dst);
            for (size_t j = 0; j < t->n; j++) dst[j] = cuda_bf16_from_float(params[t->src + j]);
        } else {
            memcpy(host + t->dst, params + t->src, t->n * sizeof(float));
        }
    }
    TRY_GOTO(cuda_upload(g->params, host, g->params_bytes, g->stream));
    TRY_GOTO(cuda_check(cudaStreamSynchronize(g->stream), "decode_cuda: parameters upload"));
cleanup:
    free(host);
    return st;
}

/* out[T, N] = in[T, K] w[N, K]^T (+ bias) + beta out. */
static tidal_status linear(decode_cuda *g, void *out, const void *in, const void *w, const void *bias, int T, int K,
                           int N, float beta, cuda_dtype out_dt)
{
    cuda_gemm_op op = {.M = T, .N = N, .K = K, .transB = true, .alpha = 1.0f, .beta = beta, .in = g->o.dt,
                       .out = out_dt};
    return cuda_gemm(g->blas, out, in, w, bias, &op, g->stream);
}

/* Whether cu[0 .. n] are prefill runs of rows 0 .. T (decode_cuda_step's
 * contract), saying which is not. */
static tidal_status check_runs(const decode_cuda *g, const int32_t *seq, const int32_t *pos, int T, const int32_t *cu,
                               int n)
{
    if (n < 0 || n > T || (n > 0 && !cu))
        return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: %d prefill runs in a step of %d rows", n, T);
    if (n > 0 && cu[0] != 0)
        return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: prefill runs start at row %d, not 0", cu[0]);
    for (int j = 0; j < n; j++) {
        const int a = cu[j], b = cu[j + 1];
        if (b <= a || b > T || b - a > g->o.max_prefill)
            return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: prefill run %d is rows %d .. %d (of %d; at most %d "
                                                 "rows: max_prefill)",
                              j, a, b - 1, T, g->o.max_prefill);
        for (int i = a; i < b; i++)
            if (seq[i] != seq[a] || pos[i] != i - a)
                return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: prefill run %d: row %d is sequence %d position %d, "
                                                     "want sequence %d position %d (a whole prompt from 0)",
                                  j, i, seq[i], pos[i], seq[a], i - a);
    }
    return TIDAL_OK;
}

tidal_status decode_cuda_step(decode_cuda *g, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int T,
                              const int32_t *cu_prefill, int n_prefill, const int32_t *tables, const int32_t *out_rows,
                              int n_out, const float **logits)
{
    const model_gpu_dims *d = &g->d;
    const int C = d->hidden, NH = d->heads, NKV = d->kv_heads, HD = d->head_dim, F = d->ffn, V = d->vocab;
    const int QD = NH * HD, KVD = NKV * HD, max_len = g->o.max_blocks * g->o.block_size;
    const cuda_dtype dt = g->o.dt;
    *logits = NULL;
    if (T < 1 || T > g->o.max_rows)
        return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: step of %d rows (1 .. %d)", T, g->o.max_rows);
    for (int i = 0; i < T; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: row %d: token id %d (vocabulary %d)", i, tokens[i], V);
        if (seq[i] < 0 || seq[i] >= g->o.max_seqs)
            return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: row %d: sequence %d (0 .. %d)", i, seq[i],
                              g->o.max_seqs - 1);
        if (pos[i] < 0 || pos[i] >= max_len)
            return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: row %d: position %d (0 .. %d)", i, pos[i], max_len - 1);
        if (cuda_kv_slot(tables + (size_t)seq[i] * g->o.max_blocks, g->o.max_blocks, g->o.block_size, pos[i]) < 0)
            return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: row %d: position %d of sequence %d has no block", i,
                              pos[i], seq[i]);
        g->h_len[i] = pos[i] + 1;
    }
    TRY(check_runs(g, seq, pos, T, cu_prefill, n_prefill));
    const int Tp = n_prefill > 0 ? cu_prefill[n_prefill] : 0; /* rows 0 .. Tp-1: the runs */
    const size_t es = cuda_dtype_size(dt);
    if (!out_rows) n_out = T;
    if (n_out < 1 || n_out > g->o.max_logit_rows)
        return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: logits of %d rows asked (1 .. %d: max_logit_rows)", n_out,
                          g->o.max_logit_rows);
    for (int i = 0; out_rows && i < n_out; i++)
        if (out_rows[i] < 0 || out_rows[i] >= T)
            return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: logit row %d is %d (the step has %d rows)", i,
                              out_rows[i], T);
    cudaStream_t s = g->stream;
    TRY(cuda_upload(g->d_tables, tables, (size_t)g->o.max_seqs * g->o.max_blocks * 4, s));
    TRY(cuda_upload(g->d_tokens, tokens, (size_t)T * 4, s));
    TRY(cuda_upload(g->d_seq, seq, (size_t)T * 4, s));
    TRY(cuda_upload(g->d_pos, pos, (size_t)T * 4, s));
    TRY(cuda_upload(g->d_len, g->h_len, (size_t)T * 4, s));
    const size_t cache_one = (size_t)g->n_slots * KVD * cuda_dtype_size(g->o.cache_dt);
    cuda_kv_pages pages = {.tables = g->d_tables, .max_blocks = g->o.max_blocks, .block_size = g->o.block_size,
                           .n_slots = g->n_slots, .NKV = NKV, .HD = HD, .dt = g->o.cache_dt};
    TRY(cuda_embedding_forward(g->x, g->d_tokens, g->embed, T, C, dt, s));
    for (int l = 0; l < d->layers; l++) {
        const decode_layer *y = &g->layer[l];
        void *kc = (unsigned char *)g->cache + (size_t)l * cache_one;
        void *vc = (unsigned char *)g->cache + (size_t)(d->layers + l) * cache_one;
        TRY(cuda_rmsnorm_forward(g->h, g->rstd, g->x, y->ln1, T, C, d->rms_eps, dt, s));
        TRY(linear(g, g->q, g->h, y->wq, y->bq, T, C, QD, 0.0f, dt));
        TRY(linear(g, g->k, g->h, y->wk, y->bk, T, C, KVD, 0.0f, dt));
        TRY(linear(g, g->v, g->h, y->wv, y->bv, T, C, KVD, 0.0f, dt));
        TRY(cuda_rope_forward(g->q, g->d_pos, T, NH, HD, d->rope_theta, dt, s));
        TRY(cuda_rope_forward(g->k, g->d_pos, T, NKV, HD, d->rope_theta, dt, s));
        TRY(cuda_kv_store(kc, vc, &pages, g->k, g->v, g->d_seq, g->d_pos, T, dt, s));
        if (Tp > 0) /* the runs: the trainer's packed attention over the step's own K/V */
            TRY(cuda_attention_forward(g->blas, g->att, g->lse, g->q, g->k, g->v, cu_prefill, n_prefill, Tp, NH, NKV,
                                       HD, g->att_scratch, g->att_scratch_bytes, dt, s));
        for (int r0 = Tp; r0 < T; r0 += g->o.max_seqs) { /* the rest through the cache, scores bounded */
            const int B = T - r0 < g->o.max_seqs ? T - r0 : g->o.max_seqs;
            void *att = (unsigned char *)g->att + (size_t)r0 * QD * es;
            const void *q = (const unsigned char *)g->q + (size_t)r0 * QD * es;
            TRY(cuda_decode_attention(att, NULL, q, kc, vc, &pages, g->d_seq + r0, g->d_len + r0, B, NH, max_len,
                                      g->scores, dt, s));
        }
        TRY(linear(g, g->x, g->att, y->wo, y->bo, T, QD, C, 1.0f, dt)); /* residual: x += att Wo^T (+ bo) */
        TRY(cuda_rmsnorm_forward(g->h, g->rstd, g->x, y->ln2, T, C, d->rms_eps, dt, s));
        TRY(linear(g, g->gate, g->h, y->wg, NULL, T, C, F, 0.0f, dt));
        TRY(linear(g, g->up, g->h, y->wu, NULL, T, C, F, 0.0f, dt));
        TRY(cuda_swiglu_forward(g->act, g->gate, g->up, (size_t)T * F, dt, s));
        TRY(linear(g, g->x, g->act, y->wd, NULL, T, F, C, 1.0f, dt));
    }
    TRY(cuda_rmsnorm_forward(g->h, g->rstd, g->x, g->norm, T, C, d->rms_eps, dt, s));
    const void *hin = g->h;
    if (out_rows) { /* the wanted rows only: a gather is the embedding lookup with h as the table */
        TRY(cuda_upload(g->d_out, out_rows, (size_t)n_out * 4, s));
        TRY(cuda_embedding_forward(g->hout, g->d_out, g->h, n_out, C, dt, s));
        hin = g->hout;
    }
    TRY(linear(g, g->logits, hin, g->head, NULL, n_out, C, V, 0.0f, CUDA_F32));
    *logits = g->logits;
    return TIDAL_OK;
}

tidal_status decode_cuda_copy_blocks(decode_cuda *g, const int32_t *src, const int32_t *dst, const int32_t *count,
                                     int n)
{
    if (n < 0 || n > g->o.max_seqs)
        return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: %d block copies (at most %d a call)", n, g->o.max_seqs);
    if (n == 0) return TIDAL_OK;
    for (int i = 0; i < n; i++)
        if (src[i] < 0 || src[i] >= g->o.n_blocks || dst[i] < 0 || dst[i] >= g->o.n_blocks || count[i] < 0 ||
            count[i] > g->o.block_size)
            return tidal_fail(TIDAL_ERR_INVALID, "decode_cuda: block copy %d: %d -> %d, %d slots", i, src[i], dst[i],
                              count[i]);
    int32_t *d = g->d_copy;
    const size_t m = (size_t)g->o.max_seqs;
    TRY(cuda_upload(d, src, (size_t)n * 4, g->stream));
    TRY(cuda_upload(d + m, dst, (size_t)n * 4, g->stream));
    TRY(cuda_upload(d + 2 * m, count, (size_t)n * 4, g->stream));
    cuda_kv_pages pages = {.tables = g->d_tables, .max_blocks = g->o.max_blocks, .block_size = g->o.block_size,
                           .n_slots = g->n_slots, .NKV = g->d.kv_heads, .HD = g->d.head_dim, .dt = g->o.cache_dt};
    return cuda_kv_copy_blocks(g->cache_ptrs, 2 * g->d.layers, &pages, d, d + m, d + 2 * m, n, g->stream);
}
