/* gpu_layout.h - the decoder's shape and where each parameter tensor lies in
 * the flat parameter buffer, as arithmetic: the GPU decoder (model/model_cuda)
 * and its tests use it without model.c (whose loading code links libraries
 * the GPU hosts lack).
 *
 * The order is model.c's build_table (Hugging Face names, HF order):
 * embed_tokens, then per layer input_layernorm, q_proj (weight, bias), k_proj,
 * v_proj, o_proj (weight, bias), post_attention_layernorm, gate_proj, up_proj,
 * down_proj; then norm and, untied, lm_head. tests/unit/test_cuda_index.c
 * checks these offsets against model_find_tensor. Plain C, header only.
 */
#ifndef TIDAL_MODEL_GPU_LAYOUT_H
#define TIDAL_MODEL_GPU_LAYOUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "model/config.h"

typedef struct model_gpu_dims {
    int layers, hidden, heads, kv_heads, head_dim, ffn, vocab;
    bool qkv_bias, o_bias, tied;
    float rms_eps, rope_theta;
} model_gpu_dims;

/* Offsets in floats into the flat parameter buffer; SIZE_MAX: no such tensor. */
typedef struct model_gpu_layer_offsets {
    size_t ln1, wq, bq, wk, bk, wv, bv, wo, bo, ln2, wg, wu, wd;
} model_gpu_layer_offsets;

#define MODEL_GPU_ABSENT ((size_t)-1)

static inline model_gpu_dims model_gpu_dims_of(const model_config *c)
{
    model_gpu_dims d = {c->num_layers, c->hidden_size, c->num_heads, c->num_kv_heads, c->head_dim,
                        c->intermediate_size, c->vocab_size, c->qkv_bias, c->o_bias, c->tie_word_embeddings,
                        (float)c->rms_norm_eps, (float)c->rope_theta};
    return d;
}

/* Floats of one layer's parameters. */
static inline size_t model_gpu_layer_floats(const model_gpu_dims *d)
{
    const size_t C = (size_t)d->hidden, QD = (size_t)d->heads * d->head_dim, KVD = (size_t)d->kv_heads * d->head_dim;
    const size_t F = (size_t)d->ffn;
    return C + QD * C + KVD * C * 2 + C * QD + C + 3 * F * C + (d->qkv_bias ? QD + 2 * KVD : 0) +
           (d->o_bias ? C : 0);
}

/* Layer l's tensors. */
static inline model_gpu_layer_offsets model_gpu_layer(const model_gpu_dims *d, int l)
{
    const size_t C = (size_t)d->hidden, QD = (size_t)d->heads * d->head_dim, KVD = (size_t)d->kv_heads * d->head_dim;
    const size_t F = (size_t)d->ffn;
    size_t off = (size_t)d->vocab * C + (size_t)l * model_gpu_layer_floats(d);
    model_gpu_layer_offsets o;
#define TAKE(field, n) (o.field = off, off += (n))
    TAKE(ln1, C);
    TAKE(wq, QD * C);
    if (d->qkv_bias) TAKE(bq, QD); else o.bq = MODEL_GPU_ABSENT;
    TAKE(wk, KVD * C);
    if (d->qkv_bias) TAKE(bk, KVD); else o.bk = MODEL_GPU_ABSENT;
    TAKE(wv, KVD * C);
    if (d->qkv_bias) TAKE(bv, KVD); else o.bv = MODEL_GPU_ABSENT;
    TAKE(wo, C * QD);
    if (d->o_bias) TAKE(bo, C); else o.bo = MODEL_GPU_ABSENT;
    TAKE(ln2, C);
    TAKE(wg, F * C);
    TAKE(wu, F * C);
    TAKE(wd, C * F);
#undef TAKE
    return o;
}

static inline size_t model_gpu_embed(const model_gpu_dims *d) { (void)d; return 0; }
static inline size_t model_gpu_norm(const model_gpu_dims *d)
{
    return (size_t)d->vocab * d->hidden + (size_t)d->layers * model_gpu_layer_floats(d);
}
/* lm_head, or embed_tokens when tied. */
static inline size_t model_gpu_head(const model_gpu_dims *d)
{
    return d->tied ? 0 : model_gpu_norm(d) + (size_t)d->hidden;
}
static inline size_t model_gpu_params(const model_gpu_dims *d)
{
    return model_gpu_norm(d) + (size_t)d->hidden + (d->tied ? 0 : (size_t)d->vocab * d->hidden);
}

#endif
