/* model.c - the Qwen2 / Llama decoder on the CPU (see model.h).
 *
 * Forward, per layer l (x = residual stream [T, C]):
 *   a  = rmsnorm(x) * ln1            q = a Wq^T + bq, k = a Wk^T + bk, v = a Wv^T + bv
 *   q, k = rope(q, k; per-sequence positions)
 *   o  = attention(q, k, v) Wo^T + bo                x = x + o
 *   b  = rmsnorm(x) * ln2            h = silu(b Wg^T) * (b Wu^T)
 *   x  = x + h Wd^T
 * then f = rmsnorm(x) * norm and the LM head gives logprob / entropy per token.
 * The backward walks the same steps in reverse; every op lives in kernels/cpu.
 */
#include "model/model.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/cpu/ops.h"
#include "base/hash.h"
#include "model/modeldir.h"

/* Views of one layer's parameters (or gradients) into a buffer. */
typedef struct layer_view {
    float *ln1;            /* [C] */
    float *wq, *bq;        /* [NH*HD, C], [NH*HD] (bq NULL without qkv bias) */
    float *wk, *bk;        /* [NKV*HD, C], [NKV*HD] */
    float *wv, *bv;        /* [NKV*HD, C], [NKV*HD] */
    float *wo, *bo;        /* [C, NH*HD], [C] (bo NULL without o bias) */
    float *ln2;            /* [C] */
    float *wg, *wu;        /* [FFN, C] */
    float *wd;             /* [C, FFN] */
} layer_view;

typedef struct model_view {
    float *embed;          /* [V, C] */
    layer_view *layers;    /* [L] */
    float *norm;           /* [C] */
    float *head;           /* [V, C]: lm_head, or embed when tied */
} model_view;

/* Activations of one layer kept for the backward, per token counts in comments. */
typedef struct layer_acts {
    float *x;              /* [T, C]   residual stream entering the layer */
    float *a;              /* [T, C]   ln1 output */
    float *rstd1;          /* [T] */
    float *q;              /* [T, QD]  after rope */
    float *k, *v;          /* [T, KVD] (k after rope) */
    float *att;            /* [T, QD]  attention output before o_proj */
    float *lse;            /* [T, NH] */
    float *xm;             /* [T, C]   residual after attention */
    float *b;              /* [T, C]   ln2 output */
    float *rstd2;          /* [T] */
    float *gate, *up, *h;  /* [T, FFN]; with MLP recomputation, one buffer shared by all layers */
} layer_acts;

struct model {
    model_config cfg;
    int n_tensors;
    model_tensor *tensors;
    size_t n_params;
    float *params;
    float *grads;
    model_view p, g;       /* parameter and gradient views */

    /* activations, for up to cap_T tokens, laid out for recompute_mlp as it was then */
    bool recompute_mlp;
    bool acts_recompute;
    int cap_T;
    float *acts;           /* one allocation */
    layer_acts *la;        /* [L] */
    float *xf;             /* [T, C] final residual */
    float *f;              /* [T, C] final norm output */
    float *rstdf;          /* [T] */
    int32_t *pos;          /* [T] */
    /* backward scratch */
    float *scratch;        /* one allocation */
    float *dx, *dn, *dq, *dk, *dv, *datt, *dh, *dgate, *dup, *head_scratch;
    bool have_forward;
    /* inference scratch (model_infer), grown as needed */
    void *infer_block;
    int infer_T, infer_S;
};

static int qdim(const model_config *c) { return c->num_heads * c->head_dim; }
static int kvdim(const model_config *c) { return c->num_kv_heads * c->head_dim; }

/* ------------------------------------------------------------ parameter table */

static void add_tensor(model *m, const char *name, int64_t d0, int64_t d1, size_t *off)
{
    model_tensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->numel = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    t->offset = *off;
    *off += t->numel;
}

/* Lay out every tensor (Hugging Face names, HF order) and return the total. */
static size_t build_table(model *m)
{
    const model_config *c = &m->cfg;
    const int C = c->hidden_size, V = c->vocab_size, F = c->intermediate_size;
    const int QD = qdim(c), KVD = kvdim(c);
    size_t off = 0;
    char n[96];
    m->n_tensors = 0;
    add_tensor(m, "model.embed_tokens.weight", V, C, &off);
    for (int l = 0; l < c->num_layers; l++) {
#define T2(suffix, a, b)                                                   \
    do {                                                                   \
        snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix);            \
        add_tensor(m, n, a, b, &off);                                      \
    } while (0)
        T2("input_layernorm.weight", C, 0);
        T2("self_attn.q_proj.weight", QD, C);
        if (c->qkv_bias) T2("self_attn.q_proj.bias", QD, 0);
        T2("self_attn.k_proj.weight", KVD, C);
        if (c->qkv_bias) T2("self_attn.k_proj.bias", KVD, 0);
        T2("self_attn.v_proj.weight", KVD, C);
        if (c->qkv_bias) T2("self_attn.v_proj.bias", KVD, 0);
        T2("self_attn.o_proj.weight", C, QD);
        if (c->o_bias) T2("self_attn.o_proj.bias", C, 0);
        T2("post_attention_layernorm.weight", C, 0);
        T2("mlp.gate_proj.weight", F, C);
        T2("mlp.up_proj.weight", F, C);
        T2("mlp.down_proj.weight", C, F);
#undef T2
    }
    add_tensor(m, "model.norm.weight", C, 0, &off);
    if (!c->tie_word_embeddings) add_tensor(m, "lm_head.weight", V, C, &off);
    return off;
}

static float *view_of(const model *m, float *buf, const char *name)
{
    const model_tensor *t = model_find_tensor(m, name);
    return t ? buf + t->offset : NULL;
}

static void build_view(const model *m, float *buf, model_view *v)
{
    const model_config *c = &m->cfg;
    char n[96];
    v->embed = view_of(m, buf, "model.embed_tokens.weight");
    for (int l = 0; l < c->num_layers; l++) {
        layer_view *lv = &v->layers[l];
#define V1(field, suffix)                                           \
    do {                                                            \
        snprintf(n, sizeof n, "model.layers.%d.%s", l, suffix);     \
        lv->field = view_of(m, buf, n);                             \
    } while (0)
        V1(ln1, "input_layernorm.weight");
        V1(wq, "self_attn.q_proj.weight");
        V1(bq, "self_attn.q_proj.bias");
        V1(wk, "self_attn.k_proj.weight");
        V1(bk, "self_attn.k_proj.bias");
        V1(wv, "self_attn.v_proj.weight");
        V1(bv, "self_attn.v_proj.bias");
        V1(wo, "self_attn.o_proj.weight");
        V1(bo, "self_attn.o_proj.bias");
        V1(ln2, "post_attention_layernorm.weight");
        V1(wg, "mlp.gate_proj.weight");
        V1(wu, "mlp.up_proj.weight");
        V1(wd, "mlp.down_proj.weight");
#undef V1
    }
    v->norm = view_of(m, buf, "model.norm.weight");
    v->head = c->tie_word_embeddings ? v->embed : view_of(m, buf, "lm_head.weight");
}

tidal_status model_create(const model_config *c, model **out)
{
    *out = NULL;
    tidal_status s = model_config_validate(c, "model");
    if (s != TIDAL_OK) return s;
    model *m = calloc(1, sizeof *m);
    if (!m) return tidal_fail(TIDAL_ERR_NOMEM, "model: out of memory");
    m->cfg = *c;
    int max_tensors = 2 + 13 * c->num_layers + 2;
    m->tensors = calloc((size_t)max_tensors, sizeof *m->tensors);
    m->p.layers = calloc((size_t)c->num_layers, sizeof(layer_view));
    m->g.layers = calloc((size_t)c->num_layers, sizeof(layer_view));
    m->la = calloc((size_t)c->num_layers, sizeof(layer_acts));
    if (!m->tensors || !m->p.layers || !m->g.layers || !m->la) {
        model_free(m);
        return tidal_fail(TIDAL_ERR_NOMEM, "model: out of memory");
    }
    m->n_params = build_table(m);
    assert(m->n_tensors <= max_tensors);
    assert(m->n_params == model_config_num_params(c));
    m->params = calloc(m->n_params, sizeof(float));
    m->grads = calloc(m->n_params, sizeof(float));
    if (!m->params || !m->grads) {
        size_t n = m->n_params;
        model_free(m);
        return tidal_fail(TIDAL_ERR_NOMEM, "model: cannot allocate %zu parameters (%.1f MiB x 2)", n,
                          (double)n * 4 / (1 << 20));
    }
    build_view(m, m->params, &m->p);
    build_view(m, m->grads, &m->g);
    *out = m;
    return TIDAL_OK;
}

void model_free(model *m)
{
    if (!m) return;
    free(m->tensors);
    free(m->params);
    free(m->grads);
    free(m->p.layers);
    free(m->g.layers);
    free(m->la);
    free(m->acts);
    free(m->pos);
    free(m->scratch);
    free(m->infer_block);
    free(m);
}

const model_config *model_cfg(const model *m) { return &m->cfg; }
int model_num_tensors(const model *m) { return m->n_tensors; }
const model_tensor *model_tensor_at(const model *m, int i) { return &m->tensors[i]; }

const model_tensor *model_find_tensor(const model *m, const char *name)
{
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}

float *model_params(model *m, size_t *n)
{
    if (n) *n = m->n_params;
    return m->params;
}

float *model_grads(model *m, size_t *n)
{
    if (n) *n = m->n_params;
    return m->grads;
}

void model_zero_grads(model *m) { memset(m->grads, 0, m->n_params * sizeof(float)); }

/* ------------------------------------------------------------ initialisation */

static double next_normal(uint64_t *s)
{
    double u1 = ((double)(splitmix64_next(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((double)(splitmix64_next(s) >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void model_init_random(model *m, uint64_t seed, float std, bool random_biases)
{
    uint64_t s = seed;
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        float *p = m->params + t->offset;
        bool is_norm = strstr(t->name, "norm.weight") != NULL;
        bool is_bias = strstr(t->name, ".bias") != NULL;
        for (size_t j = 0; j < t->numel; j++) {
            if (is_norm) p[j] = 1.0f;
            else if (is_bias && !random_biases) p[j] = 0.0f;
            else p[j] = (float)(std * next_normal(&s));
        }
    }
}

/* ------------------------------------------------------------ load / save */

tidal_status model_load(const char *dir, model **out)
{
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    model_config c;
    tidal_status s = model_config_load(path, &c);
    if (s != TIDAL_OK) return s;
    model *m = NULL;
    s = model_create(&c, &m);
    if (s != TIDAL_OK) return tidal_wrap(s, "model %s", dir);
    st_model *st = NULL;
    s = st_model_open(dir, &st);
    for (int i = 0; s == TIDAL_OK && i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        const st_tensor *x = st_model_find(st, t->name);
        if (!x) {
            s = tidal_fail(TIDAL_ERR_INVALID, "model %s: tensor %s is missing", dir, t->name);
            break;
        }
        if (x->ndim != t->ndim || x->shape[0] != t->shape[0] || (t->ndim == 2 && x->shape[1] != t->shape[1])) {
            s = tidal_fail(TIDAL_ERR_INVALID, "model %s: tensor %s has shape [%lld%s%lld], config.json implies [%lld%s%lld]",
                           dir, t->name, (long long)x->shape[0], x->ndim > 1 ? ", " : "",
                           x->ndim > 1 ? (long long)x->shape[1] : 0LL, (long long)t->shape[0],
                           t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL);
            break;
        }
        s = st_read_f32(x, m->params + t->offset, (int64_t)t->numel);
        if (s != TIDAL_OK) tidal_wrap(s, "model %s", dir);
    }
    /* a tensor the model does not have is a sign of the wrong config */
    for (int i = 0; s == TIDAL_OK && i < st_model_count(st); i++) {
        const st_tensor *x = st_model_at(st, i);
        if (!model_find_tensor(m, x->name) &&
            !(c.tie_word_embeddings && !strcmp(x->name, "lm_head.weight")))
            s = tidal_fail(TIDAL_ERR_INVALID, "model %s: unexpected tensor %s (not in a %s model with this config)",
                           dir, x->name, c.type == MODEL_QWEN2 ? "qwen2" : "llama");
    }
    st_model_close(st);
    if (s != TIDAL_OK) {
        model_free(m);
        return s;
    }
    *out = m;
    return TIDAL_OK;
}

tidal_status model_save(const model *m, const char *dir, st_dtype dtype)
{
    if (dtype != ST_F32 && dtype != ST_BF16)
        return tidal_fail(TIDAL_ERR_INVALID, "model save %s: dtype must be F32 or BF16", dir);
    if (mkdir(dir, 0755) != 0) {
        struct stat sb;
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
            return tidal_fail(TIDAL_ERR_IO, "model save: cannot create directory %s", dir);
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    tidal_status s = model_config_save(&m->cfg, path, dtype == ST_BF16 ? "bfloat16" : "float32");
    if (s != TIDAL_OK) return s;
    st_writer *w = NULL;
    s = st_writer_new(&w);
    if (s == TIDAL_OK) s = st_writer_metadata(w, "format", "pt");
    for (int i = 0; s == TIDAL_OK && i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        s = st_writer_add_f32(w, t->name, dtype, t->ndim, t->shape, m->params + t->offset);
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (s == TIDAL_OK) s = st_writer_save(w, path);
    st_writer_free(w);
    return s;
}

/* ------------------------------------------------------------ activations */

size_t model_activation_floats_per_token(const model_config *c, bool recompute_mlp)
{
    size_t C = (size_t)c->hidden_size, QD = (size_t)qdim(c), KVD = (size_t)kvdim(c);
    size_t F = (size_t)c->intermediate_size, NH = (size_t)c->num_heads;
    size_t per_layer = 4 * C + 2 + 2 * QD + 2 * KVD + NH + (recompute_mlp ? 0 : 3 * F);
    return (size_t)c->num_layers * per_layer + 2 * C + 1 + (recompute_mlp ? 3 * F : 0);
}

void model_set_recompute_mlp(model *m, bool on) { m->recompute_mlp = on; }

/* Grow the activation and scratch buffers to hold T tokens. */
static tidal_status ensure_acts(model *m, int T)
{
    if (T <= m->cap_T && m->acts_recompute == m->recompute_mlp) return TIDAL_OK;
    const model_config *c = &m->cfg;
    const size_t C = (size_t)c->hidden_size, QD = (size_t)qdim(c), KVD = (size_t)kvdim(c);
    const size_t F = (size_t)c->intermediate_size, NH = (size_t)c->num_heads, V = (size_t)c->vocab_size;
    const size_t t = (size_t)T;
    const bool rec = m->recompute_mlp;
    size_t n_acts = model_activation_floats_per_token(c, rec) * t;
    size_t n_scratch = 2 * C * t + QD * t * 2 + KVD * t * 2 + 3 * F * t + (size_t)CPU_HEAD_CHUNK * V;
    float *acts = malloc(n_acts * sizeof(float));
    float *scratch = malloc(n_scratch * sizeof(float));
    int32_t *pos = malloc(t * sizeof(int32_t));
    if (!acts || !scratch || !pos) {
        free(acts);
        free(scratch);
        free(pos);
        return tidal_fail(TIDAL_ERR_NOMEM, "model: cannot allocate activations for %d tokens (%.1f MiB)", T,
                          (double)(n_acts + n_scratch) * 4 / (1 << 20));
    }
    free(m->acts);
    free(m->scratch);
    free(m->pos);
    m->acts = acts;
    m->scratch = scratch;
    m->pos = pos;
    m->cap_T = T;
    m->acts_recompute = rec;

    float *p = acts;
#define TAKE(ptr, n) do { (ptr) = p; p += (n); } while (0)
    for (int l = 0; l < c->num_layers; l++) {
        layer_acts *a = &m->la[l];
        TAKE(a->x, C * t);
        TAKE(a->a, C * t);
        TAKE(a->rstd1, t);
        TAKE(a->q, QD * t);
        TAKE(a->k, KVD * t);
        TAKE(a->v, KVD * t);
        TAKE(a->att, QD * t);
        TAKE(a->lse, NH * t);
        TAKE(a->xm, C * t);
        TAKE(a->b, C * t);
        TAKE(a->rstd2, t);
        if (!rec) {
            TAKE(a->gate, F * t);
            TAKE(a->up, F * t);
            TAKE(a->h, F * t);
        }
    }
    if (rec) { /* one [3, T, F] buffer serves every layer */
        float *gate, *up, *h;
        TAKE(gate, F * t);
        TAKE(up, F * t);
        TAKE(h, F * t);
        for (int l = 0; l < c->num_layers; l++) {
            m->la[l].gate = gate;
            m->la[l].up = up;
            m->la[l].h = h;
        }
    }
    TAKE(m->xf, C * t);
    TAKE(m->f, C * t);
    TAKE(m->rstdf, t);
    assert((size_t)(p - acts) == n_acts);
    p = scratch;
    TAKE(m->dx, C * t);
    TAKE(m->dn, C * t);
    TAKE(m->dq, QD * t);
    TAKE(m->datt, QD * t);
    TAKE(m->dk, KVD * t);
    TAKE(m->dv, KVD * t);
    TAKE(m->dh, F * t);
    TAKE(m->dgate, F * t);
    TAKE(m->dup, F * t);
    TAKE(m->head_scratch, (size_t)CPU_HEAD_CHUNK * V);
#undef TAKE
    assert((size_t)(p - scratch) == n_scratch);
    return TIDAL_OK;
}

/* ------------------------------------------------------------ forward / backward */

tidal_status model_batch_check(const model *m, const model_batch *b)
{
    const int V = m->cfg.vocab_size;
    if (b->T <= 0) return tidal_fail(TIDAL_ERR_INVALID, "batch: %d tokens (need at least 1)", b->T);
    if (b->S <= 0) return tidal_fail(TIDAL_ERR_INVALID, "batch: %d sequences (need at least 1)", b->S);
    if (b->cu_seqlens[0] != 0) return tidal_fail(TIDAL_ERR_INVALID, "batch: cu_seqlens[0] = %d, must be 0", b->cu_seqlens[0]);
    for (int s = 0; s < b->S; s++) {
        int len = b->cu_seqlens[s + 1] - b->cu_seqlens[s];
        if (len <= 0) return tidal_fail(TIDAL_ERR_INVALID, "batch: sequence %d has length %d (cu_seqlens[%d] = %d, cu_seqlens[%d] = %d)",
                                        s, len, s, b->cu_seqlens[s], s + 1, b->cu_seqlens[s + 1]);
        if (len > m->cfg.max_position_embeddings)
            return tidal_fail(TIDAL_ERR_INVALID, "batch: sequence %d has %d tokens, more than max_position_embeddings = %d",
                              s, len, m->cfg.max_position_embeddings);
    }
    if (b->cu_seqlens[b->S] != b->T)
        return tidal_fail(TIDAL_ERR_INVALID, "batch: cu_seqlens[%d] = %d does not cover the %d tokens", b->S,
                          b->cu_seqlens[b->S], b->T);
    for (int t = 0; t < b->T; t++) {
        if (b->ids[t] < 0 || b->ids[t] >= V)
            return tidal_fail(TIDAL_ERR_INVALID, "batch: input_ids[%d] = %d out of range [0, %d)", t, b->ids[t], V);
        if (b->targets[t] < 0 || b->targets[t] >= V)
            return tidal_fail(TIDAL_ERR_INVALID, "batch: target_ids[%d] = %d out of range [0, %d)", t, b->targets[t], V);
    }
    if (!(b->inv_temp >= 0.0f) || !isfinite(b->inv_temp))
        return tidal_fail(TIDAL_ERR_INVALID, "batch: inverse temperature %g", (double)b->inv_temp);
    return TIDAL_OK;
}

static float inv_temp_of(const model_batch *b) { return b->inv_temp > 0.0f ? b->inv_temp : 1.0f; }

tidal_status model_forward(model *m, const model_batch *b, float *logprob, float *entropy, float *logits_out)
{
    tidal_status s = model_batch_check(m, b);
    if (s == TIDAL_OK) s = ensure_acts(m, b->T);
    if (s != TIDAL_OK) return s;
    const model_config *c = &m->cfg;
    const int T = b->T, C = c->hidden_size, NH = c->num_heads, NKV = c->num_kv_heads, HD = c->head_dim;
    const int QD = qdim(c), KVD = kvdim(c), F = c->intermediate_size;
    const float eps = (float)c->rms_norm_eps, theta = (float)c->rope_theta;

    for (int sq = 0; sq < b->S; sq++)
        for (int t = b->cu_seqlens[sq]; t < b->cu_seqlens[sq + 1]; t++) m->pos[t] = t - b->cu_seqlens[sq];

    cpu_embedding_forward(m->la[0].x, b->ids, m->p.embed, T, C);
    for (int l = 0; l < c->num_layers; l++) {
        layer_acts *a = &m->la[l];
        const layer_view *w = &m->p.layers[l];
        float *x_next = l + 1 < c->num_layers ? m->la[l + 1].x : m->xf;
        cpu_rmsnorm_forward(a->a, a->rstd1, a->x, w->ln1, T, C, eps);
        cpu_matmul_forward(a->q, a->a, w->wq, w->bq, T, C, QD);
        cpu_matmul_forward(a->k, a->a, w->wk, w->bk, T, C, KVD);
        cpu_matmul_forward(a->v, a->a, w->wv, w->bv, T, C, KVD);
        cpu_rope_forward(a->q, m->pos, T, NH, HD, theta);
        cpu_rope_forward(a->k, m->pos, T, NKV, HD, theta);
        cpu_attention_forward(a->att, a->lse, a->q, a->k, a->v, b->cu_seqlens, b->S, T, NH, NKV, HD);
        cpu_matmul_forward(a->xm, a->att, w->wo, w->bo, T, QD, C); /* xm = o ... */
        for (size_t i = 0; i < (size_t)T * C; i++) a->xm[i] += a->x[i]; /* ... + x */
        cpu_rmsnorm_forward(a->b, a->rstd2, a->xm, w->ln2, T, C, eps);
        cpu_matmul_forward(a->gate, a->b, w->wg, NULL, T, C, F);
        cpu_matmul_forward(a->up, a->b, w->wu, NULL, T, C, F);
        cpu_swiglu_forward(a->h, a->gate, a->up, (size_t)T * F);
        cpu_matmul_forward(x_next, a->h, w->wd, NULL, T, F, C);
        for (size_t i = 0; i < (size_t)T * C; i++) x_next[i] += a->xm[i];
    }
    cpu_rmsnorm_forward(m->f, m->rstdf, m->xf, m->p.norm, T, C, eps);
    cpu_head_forward(logprob, entropy, logits_out, m->f, m->p.head, b->targets, T, C, c->vocab_size,
                     inv_temp_of(b), m->head_scratch);
    m->have_forward = true;
    return TIDAL_OK;
}

tidal_status model_backward(model *m, const model_batch *b, const float *dlogprob, const float *dentropy)
{
    if (!m->have_forward || b->T > m->cap_T)
        return tidal_fail(TIDAL_ERR_INVALID, "model backward: no forward of this batch to go back through");
    const model_config *c = &m->cfg;
    const int T = b->T, C = c->hidden_size, NH = c->num_heads, NKV = c->num_kv_heads, HD = c->head_dim;
    const int QD = qdim(c), KVD = kvdim(c), F = c->intermediate_size;
    const float theta = (float)c->rope_theta;
    const size_t TC = (size_t)T * C;

    /* dx: gradient of the residual stream, walking down from the head */
    memset(m->dn, 0, TC * sizeof(float));
    cpu_head_backward(m->dn, m->g.head, dlogprob, dentropy, m->f, m->p.head, b->targets, T, C,
                      c->vocab_size, inv_temp_of(b), m->head_scratch);
    memset(m->dx, 0, TC * sizeof(float));
    cpu_rmsnorm_backward(m->dx, m->g.norm, m->dn, m->xf, m->p.norm, m->rstdf, T, C);

    for (int l = c->num_layers - 1; l >= 0; l--) {
        layer_acts *a = &m->la[l];
        const layer_view *w = &m->p.layers[l];
        layer_view *g = &m->g.layers[l];
        /* MLP: x_next = xm + down(h); dx is d x_next and becomes d xm */
        if (m->acts_recompute) { /* this layer's gate, up and h were overwritten: redo them */
            cpu_matmul_forward(a->gate, a->b, w->wg, NULL, T, C, F);
            cpu_matmul_forward(a->up, a->b, w->wu, NULL, T, C, F);
            cpu_swiglu_forward(a->h, a->gate, a->up, (size_t)T * F);
        }
        memset(m->dh, 0, (size_t)T * F * sizeof(float));
        cpu_matmul_backward(m->dh, g->wd, NULL, m->dx, a->h, w->wd, T, F, C);
        cpu_swiglu_backward(m->dgate, m->dup, m->dh, a->gate, a->up, (size_t)T * F);
        memset(m->dn, 0, TC * sizeof(float));
        cpu_matmul_backward(m->dn, g->wg, NULL, m->dgate, a->b, w->wg, T, C, F);
        cpu_matmul_backward(m->dn, g->wu, NULL, m->dup, a->b, w->wu, T, C, F);
        cpu_rmsnorm_backward(m->dx, g->ln2, m->dn, a->xm, w->ln2, a->rstd2, T, C);
        /* attention: xm = x + o_proj(att); dx is d xm and becomes d x */
        memset(m->datt, 0, (size_t)T * QD * sizeof(float));
        cpu_matmul_backward(m->datt, g->wo, g->bo, m->dx, a->att, w->wo, T, QD, C);
        cpu_attention_backward(m->dq, m->dk, m->dv, m->datt, a->att, a->lse, a->q, a->k, a->v, b->cu_seqlens,
                               b->S, T, NH, NKV, HD);
        cpu_rope_backward(m->dq, m->pos, T, NH, HD, theta);
        cpu_rope_backward(m->dk, m->pos, T, NKV, HD, theta);
        memset(m->dn, 0, TC * sizeof(float));
        cpu_matmul_backward(m->dn, g->wq, g->bq, m->dq, a->a, w->wq, T, C, QD);
        cpu_matmul_backward(m->dn, g->wk, g->bk, m->dk, a->a, w->wk, T, C, KVD);
        cpu_matmul_backward(m->dn, g->wv, g->bv, m->dv, a->a, w->wv, T, C, KVD);
        cpu_rmsnorm_backward(m->dx, g->ln1, m->dn, a->x, w->ln1, a->rstd1, T, C);
    }
    cpu_embedding_backward(m->g.embed, m->dx, b->ids, T, C);
    return TIDAL_OK;
}

double model_grad_norm(const model *m)
{
    double s = 0.0;
    for (size_t i = 0; i < m->n_params; i++) s += (double)m->grads[i] * m->grads[i];
    return sqrt(s);
}

/* ------------------------------------------------------------ inference */

struct model_kv {
    model_config cfg;      /* the shape the cache was made for */
    int slots, max_len;
    int *len;              /* [slots] tokens cached */
    float *k, *v;          /* [L, slots, max_len, NKV*HD] each */
};

tidal_status model_kv_create(const model_config *c, int slots, int max_len, model_kv **out)
{
    *out = NULL;
    if (slots <= 0 || max_len <= 0 || max_len > c->max_position_embeddings)
        return tidal_fail(TIDAL_ERR_INVALID, "kv cache: %d slots of %d positions (max_position_embeddings %d)", slots,
                          max_len, c->max_position_embeddings);
    model_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return tidal_fail(TIDAL_ERR_NOMEM, "kv cache: out of memory");
    kv->cfg = *c;
    kv->slots = slots;
    kv->max_len = max_len;
    size_t n = (size_t)c->num_layers * slots * max_len * kvdim(c);
    kv->len = calloc((size_t)slots, sizeof(int));
    kv->k = malloc(n * sizeof(float));
    kv->v = malloc(n * sizeof(float));
    if (!kv->len || !kv->k || !kv->v) {
        model_kv_free(kv);
        return tidal_fail(TIDAL_ERR_NOMEM, "kv cache: cannot allocate %.1f MiB", (double)n * 8 / (1 << 20));
    }
    *out = kv;
    return TIDAL_OK;
}

void model_kv_free(model_kv *kv)
{
    if (!kv) return;
    free(kv->len);
    free(kv->k);
    free(kv->v);
    free(kv);
}

void model_kv_reset(model_kv *kv, int slot)
{
    assert(slot >= 0 && slot < kv->slots);
    kv->len[slot] = 0;
}

int model_kv_len(const model_kv *kv, int slot) { return kv->len[slot]; }
int model_kv_slots(const model_kv *kv) { return kv->slots; }
int model_kv_max_len(const model_kv *kv) { return kv->max_len; }

/* Inference scratch for T tokens and S segments, grown as needed. */
typedef struct infer_bufs {
    float *x, *a, *q, *k, *v, *att, *tmp, *gate, *up, *h, *rstd, *last, *lastn;
    int32_t *slot, *pos;
} infer_bufs;

/* Point b at m's inference scratch, grown to T tokens and S segments. */
static tidal_status infer_bufs_get(model *m, int T, int S, infer_bufs *b)
{
    const model_config *c = &m->cfg;
    const size_t C = (size_t)c->hidden_size, QD = (size_t)qdim(c), KVD = (size_t)kvdim(c);
    const size_t F = (size_t)c->intermediate_size;
    if (T > m->infer_T || S > m->infer_S) {
        int nT = T > m->infer_T ? T : m->infer_T, nS = S > m->infer_S ? S : m->infer_S;
        size_t n = (size_t)nT * (4 * C + 2 * QD + 2 * KVD + 3 * F + 1) + 2 * (size_t)nS * C;
        void *blk = malloc(n * sizeof(float) + 2 * (size_t)nT * sizeof(int32_t));
        if (!blk) return tidal_fail(TIDAL_ERR_NOMEM, "model infer: out of memory for %d tokens", T);
        free(m->infer_block);
        m->infer_block = blk;
        m->infer_T = nT;
        m->infer_S = nS;
    }
    const size_t t = (size_t)m->infer_T;
    float *p = m->infer_block;
#define TAKE(ptr, cnt) do { (ptr) = p; p += (cnt); } while (0)
    TAKE(b->x, t * C);
    TAKE(b->a, t * C);
    TAKE(b->tmp, t * C);
    TAKE(b->q, t * QD);
    TAKE(b->att, t * QD);
    TAKE(b->k, t * KVD);
    TAKE(b->v, t * KVD);
    TAKE(b->gate, t * F);
    TAKE(b->up, t * F);
    TAKE(b->h, t * F);
    TAKE(b->rstd, t);
    TAKE(b->last, (size_t)m->infer_S * C);
    TAKE(b->lastn, (size_t)m->infer_S * C);
#undef TAKE
    b->slot = (int32_t *)p;
    b->pos = b->slot + t;
    return TIDAL_OK;
}

tidal_status model_infer(model *m, model_kv *kv, int S, const int32_t *slots, const int32_t *cu,
                         const int32_t *tokens, float *logits_last)
{
    const model_config *c = &m->cfg;
    if (kv->cfg.num_layers != c->num_layers || kv->cfg.num_kv_heads != c->num_kv_heads ||
        kv->cfg.head_dim != c->head_dim)
        return tidal_fail(TIDAL_ERR_INVALID, "model infer: the KV cache was made for another model shape");
    if (S <= 0 || cu[0] != 0) return tidal_fail(TIDAL_ERR_INVALID, "model infer: %d segments, cu[0] = %d", S, cu[0]);
    for (int i = 0; i < S; i++) {
        int n = cu[i + 1] - cu[i];
        if (slots[i] < 0 || slots[i] >= kv->slots)
            return tidal_fail(TIDAL_ERR_INVALID, "model infer: slot %d out of range [0, %d)", slots[i], kv->slots);
        for (int j = 0; j < i; j++)
            if (slots[j] == slots[i]) return tidal_fail(TIDAL_ERR_INVALID, "model infer: slot %d given twice", slots[i]);
        if (n <= 0) return tidal_fail(TIDAL_ERR_INVALID, "model infer: segment %d has %d tokens", i, n);
        if (kv->len[slots[i]] + n > kv->max_len)
            return tidal_fail(TIDAL_ERR_INVALID, "model infer: slot %d would hold %d tokens, the cache holds %d",
                              slots[i], kv->len[slots[i]] + n, kv->max_len);
    }
    const int T = cu[S], V = c->vocab_size;
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= V)
            return tidal_fail(TIDAL_ERR_INVALID, "model infer: token[%d] = %d out of range [0, %d)", t, tokens[t], V);

    infer_bufs b = {0};
    tidal_status st = infer_bufs_get(m, T, S, &b);
    if (st != TIDAL_OK) return st;
    const int C = c->hidden_size, NH = c->num_heads, NKV = c->num_kv_heads, HD = c->head_dim;
    const int QD = qdim(c), KVD = kvdim(c), F = c->intermediate_size, L = c->num_layers;
    const float eps = (float)c->rms_norm_eps, theta = (float)c->rope_theta;
    for (int i = 0; i < S; i++)
        for (int t = cu[i]; t < cu[i + 1]; t++) {
            b.slot[t] = slots[i];
            b.pos[t] = kv->len[slots[i]] + (t - cu[i]);
        }
    const size_t layer_stride = (size_t)kv->slots * kv->max_len * KVD;

    cpu_embedding_forward(b.x, tokens, m->p.embed, T, C);
    for (int l = 0; l < L; l++) {
        const layer_view *w = &m->p.layers[l];
        float *kc = kv->k + (size_t)l * layer_stride, *vc = kv->v + (size_t)l * layer_stride;
        cpu_rmsnorm_forward(b.a, b.rstd, b.x, w->ln1, T, C, eps);
        cpu_matmul_forward(b.q, b.a, w->wq, w->bq, T, C, QD);
        cpu_matmul_forward(b.k, b.a, w->wk, w->bk, T, C, KVD);
        cpu_matmul_forward(b.v, b.a, w->wv, w->bv, T, C, KVD);
        cpu_rope_forward(b.q, b.pos, T, NH, HD, theta);
        cpu_rope_forward(b.k, b.pos, T, NKV, HD, theta);
        for (int t = 0; t < T; t++) { /* this step's keys and values join the cache */
            size_t at = ((size_t)b.slot[t] * kv->max_len + (size_t)b.pos[t]) * KVD;
            memcpy(kc + at, b.k + (size_t)t * KVD, (size_t)KVD * sizeof(float));
            memcpy(vc + at, b.v + (size_t)t * KVD, (size_t)KVD * sizeof(float));
        }
        cpu_attention_cached(b.att, b.q, kc, vc, b.slot, b.pos, T, NH, NKV, HD, kv->max_len);
        cpu_matmul_forward(b.tmp, b.att, w->wo, w->bo, T, QD, C);
        for (size_t i = 0; i < (size_t)T * C; i++) b.x[i] += b.tmp[i];
        cpu_rmsnorm_forward(b.a, b.rstd, b.x, w->ln2, T, C, eps);
        cpu_matmul_forward(b.gate, b.a, w->wg, NULL, T, C, F);
        cpu_matmul_forward(b.up, b.a, w->wu, NULL, T, C, F);
        cpu_swiglu_forward(b.h, b.gate, b.up, (size_t)T * F);
        cpu_matmul_forward(b.tmp, b.h, w->wd, NULL, T, F, C);
        for (size_t i = 0; i < (size_t)T * C; i++) b.x[i] += b.tmp[i];
    }
    for (int i = 0; i < S; i++)
        memcpy(b.last + (size_t)i * C, b.x + (size_t)(cu[i + 1] - 1) * C, (size_t)C * sizeof(float));
    cpu_rmsnorm_forward(b.lastn, b.rstd, b.last, m->p.norm, S, C, eps);
    cpu_matmul_forward(logits_last, b.lastn, m->p.head, NULL, S, C, V);
    for (int i = 0; i < S; i++) kv->len[slots[i]] += cu[i + 1] - cu[i];
    return TIDAL_OK;
}
