/* model_cuda.c - the decoder on a CUDA GPU (see model_cuda.h).
 *
 * The structure is model.c's, line for line: the same activations kept per
 * layer, the same residual updates, the same order of gradient accumulation;
 * each cpu_* op is its cuda_* twin. Linear layers are cuda_gemm calls:
 *   forward   y = x W^T + b          (M T, N OC, K C, transB, bias epilogue)
 *   residual  y = r + x W^T          (y first holds r, beta 1)
 *   backward  dx += dy W (beta 1), dW += dy^T x (transA, beta 1, fp32), db += colsum(dy).
 * Device buffers are one cudaMalloc each (compute-sanitizer sees each
 * tensor's bounds); activations are regrown when a batch has more tokens.
 */
#include "model/model_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/index.h"
#include "kernels/cuda/ops_cuda.h"

/* Activations of one layer (dt unless said), as model.c's layer_acts. */
typedef struct layer_acts {
    void *x, *a, *q, *k, *v, *att, *xm, *b, *gate, *up, *h;
    float *rstd1, *rstd2, *lse;
} layer_acts;

struct model_cuda {
    model_gpu_dims d;
    cuda_dtype dt;
    cudaStream_t stream;
    cuda_blas *blas;
    size_t n_params;
    float *master, *grads, *m1, *m2; /* fp32 [n_params] */
    void *wbf16;                      /* bf16 [n_params] in bf16 mode */
    long step;
    float *norm;                      /* [2]: norm, clip factor */
    double *partials;                 /* [CUDA_NORM_BLOCKS] */

    /* per-batch buffers for up to cap_T tokens */
    int cap_T;
    layer_acts *la;
    void *xf, *f;
    float *rstdf;
    void *dx, *dn, *dq, *dk, *dv, *datt, *dh, *dgate, *dup;
    float *colsum, *logprob, *entropy, *dlogprob, *dentropy;
    int32_t *ids, *targets, *pos, *order, *uniq, *seg;
    void *head_scratch;
    void *att_scratch;
    size_t att_bytes;
    int32_t *h_order, *h_uniq, *h_seg, *h_count, *h_pos; /* host scratch of the batch's index */
    int n_uniq;
    bool have_forward;
};

/* ---- buffers ---- */

static size_t es(const model_cuda *m) { return cuda_dtype_size(m->dt); }

/* Weight tensor at offset off (floats) as the kernels read it. */
static const void *W(const model_cuda *m, size_t off)
{
    if (off == MODEL_GPU_ABSENT) return NULL;
    return m->dt == CUDA_BF16 ? (const void *)((const char *)m->wbf16 + off * 2) : (const void *)(m->master + off);
}

static float *G(const model_cuda *m, size_t off) { return off == MODEL_GPU_ABSENT ? NULL : m->grads + off; }

static void free_batch_buffers(model_cuda *m)
{
    if (m->la)
        for (int l = 0; l < m->d.layers; l++) {
            layer_acts *a = &m->la[l];
            void *ps[] = {a->x, a->a, a->q, a->k, a->v, a->att, a->xm, a->b, a->gate, a->up, a->h, a->rstd1,
                          a->rstd2, a->lse};
            for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cuda_free(ps[i]);
            memset(a, 0, sizeof *a);
        }
    void *ps[] = {m->xf, m->f, m->rstdf, m->dx, m->dn, m->dq, m->dk, m->dv, m->datt, m->dh, m->dgate,
                  m->dup, m->colsum, m->logprob, m->entropy, m->dlogprob, m->dentropy, m->ids, m->targets,
                  m->pos, m->order, m->uniq, m->seg, m->head_scratch};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) cuda_free(ps[i]);
    m->xf = m->f = m->rstdf = NULL;
    m->dx = m->dn = m->dq = m->dk = m->dv = m->datt = m->dh = m->dgate = m->dup = NULL;
    m->colsum = m->logprob = m->entropy = m->dlogprob = m->dentropy = NULL;
    m->ids = m->targets = m->pos = m->order = m->uniq = m->seg = NULL;
    m->head_scratch = NULL;
    free(m->h_order), free(m->h_uniq), free(m->h_seg), free(m->h_count), free(m->h_pos);
    m->h_order = m->h_uniq = m->h_seg = m->h_count = m->h_pos = NULL;
    m->cap_T = 0;
}

#define ALLOC(ptr, bytes) TRY(cuda_alloc((void **)&(ptr), (bytes), #ptr))

/* Buffers for batches of up to T tokens (kept when big enough). */
static tidal_status ensure_batch(model_cuda *m, int T)
{
    if (T <= m->cap_T) return TIDAL_OK;
    free_batch_buffers(m);
    const model_gpu_dims *d = &m->d;
    const size_t t = (size_t)T, C = (size_t)d->hidden, QD = (size_t)d->heads * d->head_dim;
    const size_t KVD = (size_t)d->kv_heads * d->head_dim, F = (size_t)d->ffn, V = (size_t)d->vocab, e = es(m);
    for (int l = 0; l < d->layers; l++) {
        layer_acts *a = &m->la[l];
        ALLOC(a->x, t * C * e);
        ALLOC(a->a, t * C * e);
        ALLOC(a->q, t * QD * e);
        ALLOC(a->k, t * KVD * e);
        ALLOC(a->v, t * KVD * e);
        ALLOC(a->att, t * QD * e);
        ALLOC(a->xm, t * C * e);
        ALLOC(a->b, t * C * e);
        ALLOC(a->gate, t * F * e);
        ALLOC(a->up, t * F * e);
        ALLOC(a->h, t * F * e);
        ALLOC(a->rstd1, t * 4);
        ALLOC(a->rstd2, t * 4);
        ALLOC(a->lse, t * (size_t)d->heads * 4);
    }
    ALLOC(m->xf, t * C * e);
    ALLOC(m->f, t * C * e);
    ALLOC(m->rstdf, t * 4);
    ALLOC(m->dx, t * C * e);
    ALLOC(m->dn, t * C * e);
    ALLOC(m->dq, t * QD * e);
    ALLOC(m->dk, t * KVD * e);
    ALLOC(m->dv, t * KVD * e);
    ALLOC(m->datt, t * QD * e);
    ALLOC(m->dh, t * F * e);
    ALLOC(m->dgate, t * F * e);
    ALLOC(m->dup, t * F * e);
    size_t widest = C > QD ? C : QD;
    ALLOC(m->colsum, cuda_colsum_scratch(T, (int)widest) * 4);
    ALLOC(m->logprob, t * 4);
    ALLOC(m->entropy, t * 4);
    ALLOC(m->dlogprob, t * 4);
    ALLOC(m->dentropy, t * 4);
    ALLOC(m->ids, t * 4);
    ALLOC(m->targets, t * 4);
    ALLOC(m->pos, t * 4);
    ALLOC(m->order, t * 4);
    ALLOC(m->uniq, t * 4);
    ALLOC(m->seg, (t + 1) * 4);
    ALLOC(m->head_scratch, cuda_head_scratch_bytes((int)V, m->dt));
    m->h_order = malloc(t * 4);
    m->h_uniq = malloc(t * 4);
    m->h_seg = malloc((t + 1) * 4);
    m->h_count = malloc((V + 1) * 4);
    m->h_pos = malloc(t * 4);
    if (!m->h_order || !m->h_uniq || !m->h_seg || !m->h_count || !m->h_pos)
        return tidal_fail(TIDAL_ERR_NOMEM, "model_cuda: host index for %d tokens: out of memory", T);
    m->cap_T = T;
    return TIDAL_OK;
}

/* Attention scratch for sequences of up to max_len tokens. */
static tidal_status ensure_attention(model_cuda *m, int max_len)
{
    size_t need = cuda_attention_scratch_bytes(max_len, m->d.heads, m->d.kv_heads, m->d.head_dim, m->dt);
    if (need <= m->att_bytes) return TIDAL_OK;
    cuda_free(m->att_scratch);
    m->att_scratch = NULL;
    m->att_bytes = 0;
    TRY(cuda_alloc(&m->att_scratch, need, "attention scratch"));
    m->att_bytes = need;
    return TIDAL_OK;
}

tidal_status model_cuda_create(const model_gpu_dims *d, cuda_dtype dt, model_cuda **out)
{
    *out = NULL;
    tidal_status st = TIDAL_OK;
    if (d->layers <= 0 || d->hidden <= 0 || d->heads <= 0 || d->kv_heads <= 0 || d->heads % d->kv_heads ||
        d->head_dim <= 0 || d->head_dim % 2 || d->ffn <= 0 || d->vocab <= 0)
        return tidal_fail(TIDAL_ERR_INVALID, "model_cuda: bad shape (layers %d, hidden %d, heads %d/%d, head_dim %d, "
                          "ffn %d, vocab %d)", d->layers, d->hidden, d->heads, d->kv_heads, d->head_dim, d->ffn,
                          d->vocab);
    model_cuda *m = calloc(1, sizeof *m);
    if (!m) return tidal_fail(TIDAL_ERR_NOMEM, "model_cuda: out of memory");
    m->d = *d;
    m->dt = dt;
    m->n_params = model_gpu_params(d);
    m->la = calloc((size_t)d->layers, sizeof *m->la);
    if (!m->la) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "model_cuda: out of memory");
        goto cleanup;
    }
    TRY_GOTO(cuda_check(cudaStreamCreate(&m->stream), "model_cuda: stream"));
    TRY_GOTO(cuda_blas_create(&m->blas));
    const size_t bytes = m->n_params * sizeof(float);
    TRY_GOTO(cuda_alloc((void **)&m->master, bytes, "master weights"));
    TRY_GOTO(cuda_alloc((void **)&m->grads, bytes, "gradients"));
    TRY_GOTO(cuda_alloc((void **)&m->m1, bytes, "AdamW first moment"));
    TRY_GOTO(cuda_alloc((void **)&m->m2, bytes, "AdamW second moment"));
    if (dt == CUDA_BF16) TRY_GOTO(cuda_alloc(&m->wbf16, m->n_params * 2, "bf16 weights"));
    TRY_GOTO(cuda_alloc((void **)&m->norm, 2 * sizeof(float), "gradient norm"));
    TRY_GOTO(cuda_alloc((void **)&m->partials, CUDA_NORM_BLOCKS * sizeof(double), "gradient norm partials"));
    TRY_GOTO(cuda_check(cudaMemsetAsync(m->master, 0, bytes, m->stream), "model_cuda: zero"));
    TRY_GOTO(cuda_check(cudaMemsetAsync(m->grads, 0, bytes, m->stream), "model_cuda: zero"));
    TRY_GOTO(cuda_check(cudaMemsetAsync(m->m1, 0, bytes, m->stream), "model_cuda: zero"));
    TRY_GOTO(cuda_check(cudaMemsetAsync(m->m2, 0, bytes, m->stream), "model_cuda: zero"));
    if (m->wbf16) TRY_GOTO(cuda_check(cudaMemsetAsync(m->wbf16, 0, m->n_params * 2, m->stream), "model_cuda: zero"));
    *out = m;
    return TIDAL_OK;
cleanup:
    model_cuda_free(m);
    return st;
}

void model_cuda_free(model_cuda *m)
{
    if (!m) return;
    if (m->stream) cudaStreamSynchronize(m->stream);
    free_batch_buffers(m);
    free(m->la);
    cuda_free(m->att_scratch);
    cuda_free(m->master), cuda_free(m->grads), cuda_free(m->m1), cuda_free(m->m2), cuda_free(m->wbf16);
    cuda_free(m->norm), cuda_free(m->partials);
    cuda_blas_free(m->blas);
    if (m->stream) cudaStreamDestroy(m->stream);
    free(m);
}

static tidal_status sync(model_cuda *m, const char *what)
{
    return cuda_check(cudaStreamSynchronize(m->stream), what);
}

tidal_status model_cuda_set_params(model_cuda *m, const float *params)
{
    TRY(cuda_upload(m->master, params, m->n_params * sizeof(float), m->stream));
    if (m->wbf16) {
        uint16_t *h = malloc(m->n_params * 2);
        if (!h) return tidal_fail(TIDAL_ERR_NOMEM, "model_cuda: bf16 copy of %zu parameters", m->n_params);
        for (size_t i = 0; i < m->n_params; i++) h[i] = cuda_bf16_from_float(params[i]);
        tidal_status st = cuda_upload(m->wbf16, h, m->n_params * 2, m->stream);
        if (st == TIDAL_OK) st = sync(m, "model_cuda: set params"); /* h must outlive the copy */
        free(h);
        return st;
    }
    return sync(m, "model_cuda: set params");
}

tidal_status model_cuda_get_params(model_cuda *m, float *params)
{
    TRY(cuda_download(params, m->master, m->n_params * sizeof(float), m->stream));
    return sync(m, "model_cuda: get params");
}

tidal_status model_cuda_get_grads(model_cuda *m, float *grads)
{
    TRY(cuda_download(grads, m->grads, m->n_params * sizeof(float), m->stream));
    return sync(m, "model_cuda: get grads");
}

tidal_status model_cuda_get_moments(model_cuda *m, float *m1, float *m2, long *step)
{
    TRY(cuda_download(m1, m->m1, m->n_params * sizeof(float), m->stream));
    TRY(cuda_download(m2, m->m2, m->n_params * sizeof(float), m->stream));
    TRY(sync(m, "model_cuda: get moments"));
    *step = m->step;
    return TIDAL_OK;
}

tidal_status model_cuda_set_moments(model_cuda *m, const float *m1, const float *m2, long step)
{
    if (step < 0) return tidal_fail(TIDAL_ERR_INVALID, "model_cuda: AdamW step count %ld", step);
    TRY(cuda_upload(m->m1, m1, m->n_params * sizeof(float), m->stream));
    TRY(cuda_upload(m->m2, m2, m->n_params * sizeof(float), m->stream));
    TRY(sync(m, "model_cuda: set moments")); /* the host arrays must outlive the copies */
    m->step = step;
    return TIDAL_OK;
}

tidal_status model_cuda_zero_grads(model_cuda *m)
{
    return cuda_check(cudaMemsetAsync(m->grads, 0, m->n_params * sizeof(float), m->stream), "model_cuda: zero grads");
}

/* ---- linear layers ---- */

/* y[T,OC] = beta y + x[T,C] w[OC,C]^T (+ b) */
static tidal_status linear(model_cuda *m, void *y, const void *x, const void *w, const void *b, int T, int C, int OC,
                           float beta)
{
    cuda_gemm_op op = {.M = T, .N = OC, .K = C, .transB = true, .alpha = 1.0f, .beta = beta, .in = m->dt,
                       .out = m->dt};
    return cuda_gemm(m->blas, y, x, w, b, &op, m->stream);
}

/* dx[T,C] += dy[T,OC] w (dx may be NULL); dw[OC,C] += dy^T x; db[OC] += colsum(dy) (db may be NULL). */
static tidal_status linear_backward(model_cuda *m, void *dx, float *dw, float *db, const void *dy, const void *x,
                                    const void *w, int T, int C, int OC)
{
    if (dx) {
        cuda_gemm_op op = {.M = T, .N = C, .K = OC, .alpha = 1.0f, .beta = 1.0f, .in = m->dt, .out = m->dt};
        TRY(cuda_gemm(m->blas, dx, dy, w, NULL, &op, m->stream));
    }
    cuda_gemm_op opw = {.M = OC, .N = C, .K = T, .transA = true, .alpha = 1.0f, .beta = 1.0f, .in = m->dt,
                        .out = CUDA_F32};
    TRY(cuda_gemm(m->blas, dw, dy, x, NULL, &opw, m->stream));
    if (db) TRY(cuda_bias_backward(db, dy, T, OC, m->colsum, m->dt, m->stream));
    return TIDAL_OK;
}

static tidal_status copy_dev(model_cuda *m, void *dst, const void *src, size_t bytes)
{
    return cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, m->stream), "model_cuda: copy");
}

static tidal_status zero_dev(model_cuda *m, void *p, size_t bytes)
{
    return cuda_check(cudaMemsetAsync(p, 0, bytes, m->stream), "model_cuda: zero");
}

/* ---- forward / backward ---- */

static float inv_temp_of(const model_cuda_batch *b) { return b->inv_temp > 0.0f ? b->inv_temp : 1.0f; }

tidal_status model_cuda_forward(model_cuda *m, const model_cuda_batch *b, float *logprob, float *entropy)
{
    const model_gpu_dims *d = &m->d;
    const int T = b->T, C = d->hidden, NH = d->heads, NKV = d->kv_heads, HD = d->head_dim;
    const int QD = NH * HD, KVD = NKV * HD, F = d->ffn;
    if (T <= 0 || b->S <= 0)
        return tidal_fail(TIDAL_ERR_INVALID, "model_cuda: batch of %d tokens, %d sequences", T, b->S);
    if (b->cu_seqlens[0] != 0 || b->cu_seqlens[b->S] != T)
        return tidal_fail(TIDAL_ERR_INVALID, "model_cuda: cu_seqlens runs %d .. %d, want 0 .. %d", b->cu_seqlens[0],
                          b->cu_seqlens[b->S], T);
    for (int s = 0; s < b->S; s++)
        if (b->cu_seqlens[s + 1] < b->cu_seqlens[s])
            return tidal_fail(TIDAL_ERR_INVALID, "model_cuda: cu_seqlens[%d] = %d below cu_seqlens[%d] = %d", s + 1,
                              b->cu_seqlens[s + 1], s, b->cu_seqlens[s]);
    m->have_forward = false;
    TRY(ensure_batch(m, T));
    int max_len = 0;
    for (int s = 0; s < b->S; s++) {
        int n = b->cu_seqlens[s + 1] - b->cu_seqlens[s];
        if (n > max_len) max_len = n;
        for (int t = b->cu_seqlens[s]; t < b->cu_seqlens[s + 1]; t++) m->h_pos[t] = t - b->cu_seqlens[s];
    }
    TRY(ensure_attention(m, max_len));
    m->n_uniq = cuda_embedding_index_build(b->ids, T, d->vocab, m->h_order, m->h_uniq, m->h_seg, m->h_count);
    if (m->n_uniq < 0) return tidal_fail(TIDAL_ERR_INVALID, "model_cuda: an input id is outside [0, %d)", d->vocab);
    TRY(cuda_upload(m->ids, b->ids, (size_t)T * 4, m->stream));
    TRY(cuda_upload(m->targets, b->targets, (size_t)T * 4, m->stream));
    TRY(cuda_upload(m->pos, m->h_pos, (size_t)T * 4, m->stream));
    TRY(cuda_upload(m->order, m->h_order, (size_t)T * 4, m->stream));
    TRY(cuda_upload(m->uniq, m->h_uniq, (size_t)m->n_uniq * 4, m->stream));
    TRY(cuda_upload(m->seg, m->h_seg, (size_t)(m->n_uniq + 1) * 4, m->stream));

    const cuda_dtype dt = m->dt;
    TRY(cuda_embedding_forward(m->la[0].x, m->ids, W(m, model_gpu_embed(d)), T, C, dt, m->stream));
    for (int l = 0; l < d->layers; l++) {
        layer_acts *a = &m->la[l];
        const model_gpu_layer_offsets o = model_gpu_layer(d, l);
        void *x_next = l + 1 < d->layers ? m->la[l + 1].x : m->xf;
        TRY(cuda_rmsnorm_forward(a->a, a->rstd1, a->x, W(m, o.ln1), T, C, d->rms_eps, dt, m->stream));
        TRY(linear(m, a->q, a->a, W(m, o.wq), W(m, o.bq), T, C, QD, 0.0f));
        TRY(linear(m, a->k, a->a, W(m, o.wk), W(m, o.bk), T, C, KVD, 0.0f));
        TRY(linear(m, a->v, a->a, W(m, o.wv), W(m, o.bv), T, C, KVD, 0.0f));
        TRY(cuda_rope_forward(a->q, m->pos, T, NH, HD, d->rope_theta, dt, m->stream));
        TRY(cuda_rope_forward(a->k, m->pos, T, NKV, HD, d->rope_theta, dt, m->stream));
        TRY(cuda_attention_forward(m->blas, a->att, a->lse, a->q, a->k, a->v, b->cu_seqlens, b->S, T, NH, NKV, HD,
                                   m->att_scratch, m->att_bytes, dt, m->stream));
        TRY(copy_dev(m, a->xm, a->x, (size_t)T * C * es(m))); /* xm = x + o_proj(att) */
        TRY(linear(m, a->xm, a->att, W(m, o.wo), W(m, o.bo), T, QD, C, 1.0f));
        TRY(cuda_rmsnorm_forward(a->b, a->rstd2, a->xm, W(m, o.ln2), T, C, d->rms_eps, dt, m->stream));
        TRY(linear(m, a->gate, a->b, W(m, o.wg), NULL, T, C, F, 0.0f));
        TRY(linear(m, a->up, a->b, W(m, o.wu), NULL, T, C, F, 0.0f));
        TRY(cuda_swiglu_forward(a->h, a->gate, a->up, (size_t)T * F, dt, m->stream));
        TRY(copy_dev(m, x_next, a->xm, (size_t)T * C * es(m))); /* x_next = xm + down(h) */
        TRY(linear(m, x_next, a->h, W(m, o.wd), NULL, T, F, C, 1.0f));
    }
    TRY(cuda_rmsnorm_forward(m->f, m->rstdf, m->xf, W(m, model_gpu_norm(d)), T, C, d->rms_eps, dt, m->stream));
    TRY(cuda_head_forward(m->blas, m->logprob, m->entropy, m->f, W(m, model_gpu_head(d)), m->targets, T, C, d->vocab,
                          inv_temp_of(b), m->head_scratch, dt, m->stream));
    TRY(cuda_download(logprob, m->logprob, (size_t)T * 4, m->stream));
    TRY(cuda_download(entropy, m->entropy, (size_t)T * 4, m->stream));
    TRY(sync(m, "model_cuda: forward"));
    m->have_forward = true;
    return TIDAL_OK;
}

tidal_status model_cuda_backward(model_cuda *m, const model_cuda_batch *b, const float *dlogprob,
                                 const float *dentropy)
{
    if (!m->have_forward || b->T > m->cap_T)
        return tidal_fail(TIDAL_ERR_INVALID, "model_cuda backward: no forward of this batch to go back through");
    const model_gpu_dims *d = &m->d;
    const int T = b->T, C = d->hidden, NH = d->heads, NKV = d->kv_heads, HD = d->head_dim;
    const int QD = NH * HD, KVD = NKV * HD, F = d->ffn;
    const cuda_dtype dt = m->dt;
    const size_t TC = (size_t)T * C * es(m);
    TRY(cuda_upload(m->dlogprob, dlogprob, (size_t)T * 4, m->stream));
    if (dentropy) TRY(cuda_upload(m->dentropy, dentropy, (size_t)T * 4, m->stream));

    TRY(zero_dev(m, m->dn, TC));
    TRY(cuda_head_backward(m->blas, m->dn, G(m, model_gpu_head(d)), m->dlogprob, dentropy ? m->dentropy : NULL, m->f,
                           W(m, model_gpu_head(d)), m->targets, T, C, d->vocab, inv_temp_of(b), m->head_scratch, dt,
                           m->stream));
    TRY(zero_dev(m, m->dx, TC));
    TRY(cuda_rmsnorm_backward(m->dx, G(m, model_gpu_norm(d)), m->dn, m->xf, W(m, model_gpu_norm(d)), m->rstdf, T, C,
                              m->colsum, dt, m->stream));
    for (int l = d->layers - 1; l >= 0; l--) {
        layer_acts *a = &m->la[l];
        const model_gpu_layer_offsets o = model_gpu_layer(d, l);
        /* MLP: dx is d x_next and becomes d xm */
        TRY(zero_dev(m, m->dh, (size_t)T * F * es(m)));
        TRY(linear_backward(m, m->dh, G(m, o.wd), NULL, m->dx, a->h, W(m, o.wd), T, F, C));
        TRY(cuda_swiglu_backward(m->dgate, m->dup, m->dh, a->gate, a->up, (size_t)T * F, dt, m->stream));
        TRY(zero_dev(m, m->dn, TC));
        TRY(linear_backward(m, m->dn, G(m, o.wg), NULL, m->dgate, a->b, W(m, o.wg), T, C, F));
        TRY(linear_backward(m, m->dn, G(m, o.wu), NULL, m->dup, a->b, W(m, o.wu), T, C, F));
        TRY(cuda_rmsnorm_backward(m->dx, G(m, o.ln2), m->dn, a->xm, W(m, o.ln2), a->rstd2, T, C, m->colsum, dt,
                                  m->stream));
        /* attention: dx is d xm and becomes d x */
        TRY(zero_dev(m, m->datt, (size_t)T * QD * es(m)));
        TRY(linear_backward(m, m->datt, G(m, o.wo), G(m, o.bo), m->dx, a->att, W(m, o.wo), T, QD, C));
        TRY(cuda_attention_backward(m->blas, m->dq, m->dk, m->dv, m->datt, a->att, a->lse, a->q, a->k, a->v,
                                    b->cu_seqlens, b->S, T, NH, NKV, HD, m->att_scratch, m->att_bytes, dt, m->stream));
        TRY(cuda_rope_backward(m->dq, m->pos, T, NH, HD, d->rope_theta, dt, m->stream));
        TRY(cuda_rope_backward(m->dk, m->pos, T, NKV, HD, d->rope_theta, dt, m->stream));
        TRY(zero_dev(m, m->dn, TC));
        TRY(linear_backward(m, m->dn, G(m, o.wq), G(m, o.bq), m->dq, a->a, W(m, o.wq), T, C, QD));
        TRY(linear_backward(m, m->dn, G(m, o.wk), G(m, o.bk), m->dk, a->a, W(m, o.wk), T, C, KVD));
        TRY(linear_backward(m, m->dn, G(m, o.wv), G(m, o.bv), m->dv, a->a, W(m, o.wv), T, C, KVD));
        TRY(cuda_rmsnorm_backward(m->dx, G(m, o.ln1), m->dn, a->x, W(m, o.ln1), a->rstd1, T, C, m->colsum, dt,
                                  m->stream));
    }
    TRY(cuda_embedding_backward(G(m, model_gpu_embed(d)), m->dx, m->order, m->uniq, m->seg, m->n_uniq, C, dt,
                                m->stream));
    return sync(m, "model_cuda: backward");
}

tidal_status model_cuda_step(model_cuda *m, const model_cuda_adamw *a, double *norm)
{
    *norm = NAN;
    TRY(cuda_grad_norm(m->norm, m->grads, m->n_params, a->max_norm, m->partials, m->stream));
    cuda_adamw_args args = {.lr = a->lr, .beta1 = a->beta1, .beta2 = a->beta2, .eps = a->eps,
                            .weight_decay = a->weight_decay, .step = m->step + 1};
    TRY(cuda_adamw_step(m->master, m->wbf16, m->grads, m->m1, m->m2, NULL, m->n_params, &args, m->norm + 1,
                        m->stream));
    float host[2];
    TRY(cuda_download(host, m->norm, sizeof host, m->stream));
    TRY(sync(m, "model_cuda: step"));
    m->step++;
    *norm = host[0];
    return TIDAL_OK;
}
