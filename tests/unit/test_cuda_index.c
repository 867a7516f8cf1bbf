/* test_cuda_index.c - the CUDA kernels' index maths (kernels/cuda/index.h),
 * checked on the CPU against the CPU ops they must agree with; no GPU, no nvcc.
 *
 * - sequence and position of each token of a packed batch (empty sequences
 *   included) against the positions model.c builds, by definition;
 * - a naive attention written only with the index functions (sequence, first
 *   key, kv head, token-major offsets) against cpu_attention_forward;
 * - token-major <-> head-major offsets are a bijection, GQA groups contiguous;
 * - RoPE through cuda_rope_pair and cuda_rope_inv_freq against
 *   cpu_rope_forward / cpu_rope_backward, bit for bit;
 * - the embedding backward's index: summing rows group by group in token
 *   order gives cpu_embedding_backward's bits, on a non-zero gradient too;
 *   out-of-range ids are refused;
 * - bf16 rounding: known values, ties to even, NaN and infinities;
 * - the GPU decoder's parameter layout (model/gpu_layout.h) against
 *   model.c's tensor table, with and without biases, tied and untied;
 * - the GPU decoder's CPU oracle (tests/gpu/cpu_decoder.h) against model.c:
 *   logprobs, entropies and gradients, bit for bit.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/hash.h"
#include "check.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/index.h"
#include "model/gpu_layout.h"
#include "model/model.h"

#include "gpu/cpu_decoder.h"

static uint64_t rng_state = 12345;
static float frand(void)
{ /* splitmix64 -> uniform [-1, 1) */
    const uint64_t z = splitmix64_next(&rng_state);
    return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float *frandom(size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

static void test_seq_and_pos(void)
{
    /* lengths 3, 0, 1, 5, 0, 2: empty sequences in the middle and at the end */
    const int32_t cu[] = {0, 3, 3, 4, 9, 9, 11, 11};
    const int S = 7, T = 11;
    for (int s = 0; s < S; s++) {
        for (int t = cu[s]; t < cu[s + 1]; t++) {
            CHECK_MSG(cuda_seq_of_token(cu, S, t) == s, "token %d: seq %d, want %d", t, cuda_seq_of_token(cu, S, t), s);
            CHECK(cuda_pos_of_token(cu, S, t) == t - cu[s]); /* model.c: pos[t] = t - cu[s] */
            CHECK(cuda_first_key(cu, S, t) == cu[s]);
        }
    }
    const int32_t one[] = {0, 1};
    CHECK(cuda_seq_of_token(one, 1, 0) == 0 && cuda_pos_of_token(one, 1, 0) == 0);
    CHECK(T == cu[S]);
}

/* Attention by the index functions only: for each token t and query head h,
 * the keys cuda_first_key(t) .. t of kv head cuda_kv_head(h), in double. */
static void naive_attention(float *out, const float *q, const float *k, const float *v, const int32_t *cu, int S,
                            int T, int NH, int NKV, int HD)
{
    double *p = malloc((size_t)T * sizeof(double));
    for (int t = 0; t < T; t++) {
        int j0 = cuda_first_key(cu, S, t);
        for (int h = 0; h < NH; h++) {
            int kh = cuda_kv_head(h, NH, NKV);
            double m = -INFINITY, sum = 0.0;
            for (int j = j0; j <= t; j++) {
                double s = 0.0;
                for (int d = 0; d < HD; d++)
                    s += (double)q[cuda_token_major_offset(t, h, d, NH, HD)] *
                         k[cuda_token_major_offset(j, kh, d, NKV, HD)];
                p[j] = s / sqrt((double)HD);
                if (p[j] > m) m = p[j];
            }
            for (int j = j0; j <= t; j++) sum += (p[j] = exp(p[j] - m));
            for (int d = 0; d < HD; d++) {
                double o = 0.0;
                for (int j = j0; j <= t; j++) o += p[j] * v[cuda_token_major_offset(j, kh, d, NKV, HD)];
                out[cuda_token_major_offset(t, h, d, NH, HD)] = (float)(o / sum);
            }
        }
    }
    free(p);
}

static void test_attention_indexing(void)
{
    const int32_t cu[] = {0, 1, 18, 18, 35};
    const int S = 4, T = 35, NH = 6, NKV = 2, HD = 16;
    float *q = frandom((size_t)T * NH * HD), *k = frandom((size_t)T * NKV * HD), *v = frandom((size_t)T * NKV * HD);
    float *ref = malloc((size_t)T * NH * HD * sizeof(float)), *got = malloc((size_t)T * NH * HD * sizeof(float));
    float *lse = malloc((size_t)T * NH * sizeof(float));
    cpu_attention_forward(ref, lse, q, k, v, cu, S, T, NH, NKV, HD);
    naive_attention(got, q, k, v, cu, S, T, NH, NKV, HD);
    double worst = 0.0;
    for (size_t i = 0; i < (size_t)T * NH * HD; i++) {
        double d = fabs((double)got[i] - ref[i]);
        if (d > worst) worst = d;
    }
    free(q), free(k), free(v), free(ref), free(got), free(lse);
    CHECK_MSG(worst < 1e-5, "index-built attention differs from cpu_attention_forward by %g", worst);
}

static void test_permutes(void)
{
    const int n = 5, NH = 6, NKV = 2, HD = 4, g = NH / NKV;
    int seen[5 * 6 * 4] = {0};
    for (int tl = 0; tl < n; tl++)
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < HD; d++) {
                size_t o = cuda_head_major_offset(tl, h, d, n, HD);
                CHECK(o < (size_t)n * NH * HD);
                seen[o]++;
                /* the g query heads of kv head kh are rows kh*g*n .. (kh+1)*g*n - 1 */
                int kh = cuda_kv_head(h, NH, NKV);
                CHECK(o / HD >= (size_t)kh * g * n && o / HD < (size_t)(kh + 1) * g * n);
                CHECK(cuda_token_major_offset(tl, h, d, NH, HD) == ((size_t)tl * NH + h) * HD + d);
            }
    for (int i = 0; i < n * NH * HD; i++) CHECK(seen[i] == 1);
    CHECK(cuda_kv_head(13, 14, 2) == 1 && cuda_kv_head(6, 14, 2) == 0 && cuda_kv_head(7, 14, 2) == 1);
    CHECK(cuda_kv_head(3, 4, 4) == 3 && cuda_kv_head(7, 8, 1) == 0);
}

/* RoPE by pairs: forward (sign +1) or backward (-1), as a kernel thread would. */
static void pair_rope(float *x, const int32_t *pos, int T, int NH, int HD, float theta, float sign)
{
    size_t pairs = (size_t)T * NH * (HD / 2);
    for (size_t p = 0; p < pairs; p++) {
        int t, i;
        size_t o1, o2;
        cuda_rope_pair(p, NH, HD, &t, &i, &o1, &o2);
        float a = (float)pos[t] * cuda_rope_inv_freq(i, HD, theta);
        float c = cosf(a), s = sign * sinf(a);
        float x1 = x[o1], x2 = x[o2];
        x[o1] = x1 * c - x2 * s;
        x[o2] = x2 * c + x1 * s;
    }
}

static void test_rope_pairs(void)
{
    const int32_t cu[] = {0, 7, 8, 40};
    const int S = 3, T = 40, NH = 3, HD = 64;
    int32_t pos[40];
    for (int t = 0; t < T; t++) pos[t] = cuda_pos_of_token(cu, S, t) + (t % 3) * 1000; /* large angles too */
    size_t n = (size_t)T * NH * HD;
    float *a = frandom(n), *b = malloc(n * sizeof(float));
    memcpy(b, a, n * sizeof(float));
    cpu_rope_forward(a, pos, T, NH, HD, 1e6f);
    pair_rope(b, pos, T, NH, HD, 1e6f, 1.0f);
    int same = memcmp(a, b, n * sizeof(float)) == 0;
    cpu_rope_backward(a, pos, T, NH, HD, 10000.0f);
    pair_rope(b, pos, T, NH, HD, 10000.0f, -1.0f);
    same = same && memcmp(a, b, n * sizeof(float)) == 0;
    free(a), free(b);
    CHECK_MSG(same, "pairwise RoPE differs from cpu_rope_forward/backward");
}

static void test_embedding_index(void)
{
    const int T = 50, V = 13, C = 7;
    int32_t ids[50], order[50], uniq[13], seg[14], count[14];
    for (int t = 0; t < T; t++) ids[t] = (t * 7 + t / 5) % V == 4 ? 4 : (t * 7 + t / 5) % (V - 3); /* repeats, gaps */
    int U = cuda_embedding_index_build(ids, T, V, order, uniq, seg, count);
    CHECK(U > 0 && U <= V && seg[0] == 0 && seg[U] == T);
    for (int u = 0; u < U; u++) {
        CHECK(u == 0 || uniq[u] > uniq[u - 1]);
        CHECK(seg[u + 1] > seg[u]);
        for (int r = seg[u]; r < seg[u + 1]; r++) {
            CHECK(ids[order[r]] == uniq[u]);
            CHECK(r == seg[u] || order[r] > order[r - 1]); /* token order inside a group */
        }
    }
    float *dout = frandom((size_t)T * C), *ref = frandom((size_t)V * C), *got = malloc((size_t)V * C * sizeof(float));
    memcpy(got, ref, (size_t)V * C * sizeof(float)); /* a non-zero gradient: the order of additions matters */
    cpu_embedding_backward(ref, dout, ids, T, C);
    for (int u = 0; u < U; u++) /* the kernel: one block per distinct id, one thread per channel */
        for (int c = 0; c < C; c++) {
            float acc = got[(size_t)uniq[u] * C + c];
            for (int r = seg[u]; r < seg[u + 1]; r++) acc += dout[(size_t)order[r] * C + c];
            got[(size_t)uniq[u] * C + c] = acc;
        }
    int same = memcmp(ref, got, (size_t)V * C * sizeof(float)) == 0;
    free(dout), free(ref), free(got);
    CHECK_MSG(same, "embedding backward by the index differs from cpu_embedding_backward");
    ids[17] = V;
    CHECK(cuda_embedding_index_build(ids, T, V, order, uniq, seg, count) == -1);
    ids[17] = -1;
    CHECK(cuda_embedding_index_build(ids, T, V, order, uniq, seg, count) == -1);
}

static void test_bf16(void)
{
    CHECK(cuda_bf16_from_float(1.0f) == 0x3f80);
    CHECK(cuda_bf16_from_float(-2.0f) == 0xc000);
    /* 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties to even -> 1.0 */
    CHECK(cuda_bf16_from_float(1.0f + 0x1p-8f) == 0x3f80);
    /* 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even) -> up */
    CHECK(cuda_bf16_from_float(1.0f + 3 * 0x1p-8f) == 0x3f82);
    CHECK(cuda_bf16_from_float(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81); /* above halfway -> up */
    CHECK(cuda_bf16_from_float(INFINITY) == 0x7f80 && cuda_bf16_from_float(-INFINITY) == 0xff80);
    CHECK(isnan(cuda_float_from_bf16(cuda_bf16_from_float(NAN))));
    CHECK(cuda_bf16_from_float(3.4e38f) == 0x7f80); /* rounds past the largest bf16 to infinity */
    for (int i = 0; i < 1000; i++) {
        float x = frand() * 100.0f, y = cuda_float_from_bf16(cuda_bf16_from_float(x));
        CHECK_MSG(fabsf(x - y) <= fabsf(x) * 0x1p-8f, "%g -> %g", x, y);
    }
}

/* Every tensor's offset by model_gpu_* equals model.c's; absent ones absent. */
static void check_layout(const model_config *c)
{
    model *m = NULL;
    CHECK_OK(model_create(c, &m));
    model_gpu_dims d = model_gpu_dims_of(c);
    size_t n = 0;
    model_params(m, &n);
    int bad = n != model_gpu_params(&d);
    char name[96];
#define AT(nm) (model_find_tensor(m, nm) ? model_find_tensor(m, nm)->offset : MODEL_GPU_ABSENT)
    bad |= AT("model.embed_tokens.weight") != model_gpu_embed(&d);
    bad |= AT("model.norm.weight") != model_gpu_norm(&d);
    bad |= (c->tie_word_embeddings ? 0 : AT("lm_head.weight")) != model_gpu_head(&d);
    for (int l = 0; l < c->num_layers; l++) {
        model_gpu_layer_offsets o = model_gpu_layer(&d, l);
#define L(field, suffix) (snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix), bad |= AT(name) != o.field)
        L(ln1, "input_layernorm.weight");
        L(wq, "self_attn.q_proj.weight");
        L(bq, "self_attn.q_proj.bias");
        L(wk, "self_attn.k_proj.weight");
        L(bk, "self_attn.k_proj.bias");
        L(wv, "self_attn.v_proj.weight");
        L(bv, "self_attn.v_proj.bias");
        L(wo, "self_attn.o_proj.weight");
        L(bo, "self_attn.o_proj.bias");
        L(ln2, "post_attention_layernorm.weight");
        L(wg, "mlp.gate_proj.weight");
        L(wu, "mlp.up_proj.weight");
        L(wd, "mlp.down_proj.weight");
#undef L
    }
#undef AT
    model_free(m);
    CHECK_MSG(!bad, "model_gpu layout differs from model.c's (qkv_bias %d, o_bias %d, tied %d)", c->qkv_bias,
              c->o_bias, c->tie_word_embeddings);
}

static void test_gpu_layout(void)
{
    model_config c = {.type = MODEL_QWEN2, .vocab_size = 97, .hidden_size = 32, .num_layers = 3, .num_heads = 4,
                      .num_kv_heads = 2, .head_dim = 8, .intermediate_size = 48, .max_position_embeddings = 256,
                      .rope_theta = 1e6, .rms_norm_eps = 1e-6, .tie_word_embeddings = true, .qkv_bias = true,
                      .bos_token_id = -1, .eos_token_id = -1};
    check_layout(&c);
    c.type = MODEL_LLAMA, c.tie_word_embeddings = false, c.qkv_bias = true, c.o_bias = true; /* llama attention_bias */
    check_layout(&c);
    c.qkv_bias = false, c.o_bias = false;
    check_layout(&c);
}

/* cpu_decoder (the oracle of the GPU decoder's check) is model.c's forward and backward. */
static void check_oracle(const model_config *c)
{
    model *m = NULL;
    CHECK_OK(model_create(c, &m));
    model_init_random(m, 7, 0.1f, true);
    const int32_t cu[] = {0, 1, 18, 40};
    int32_t ids[40], targets[40];
    for (int t = 0; t < 40; t++) ids[t] = (t * 37 + 11) % c->vocab_size, targets[t] = (t * 53 + 5) % c->vocab_size;
    model_batch b = {.T = 40, .S = 3, .ids = ids, .targets = targets, .cu_seqlens = cu, .inv_temp = 1.0f / 0.9f};
    float lp[40], ent[40], lp2[40], ent2[40], dl[40], de[40];
    for (int t = 0; t < 40; t++) dl[t] = frand(), de[t] = 0.1f * frand();
    size_t n = 0;
    float *P = model_params(m, &n);
    model_zero_grads(m);
    tidal_status st = model_forward(m, &b, lp, ent, NULL);
    if (st == TIDAL_OK) st = model_backward(m, &b, dl, de);
    float *G = calloc(n, sizeof(float));
    model_gpu_dims d = model_gpu_dims_of(c);
    cpu_decoder(&d, P, G, b.T, b.S, ids, targets, cu, b.inv_temp, lp2, ent2, dl, de);
    int same = st == TIDAL_OK && memcmp(lp, lp2, sizeof lp) == 0 && memcmp(ent, ent2, sizeof ent) == 0 &&
               memcmp(G, model_grads(m, &n), n * sizeof(float)) == 0;
    free(G);
    model_free(m);
    CHECK_OK(st);
    CHECK_MSG(same, "cpu_decoder differs from model.c (qkv_bias %d, o_bias %d, tied %d)", c->qkv_bias, c->o_bias,
              c->tie_word_embeddings);
}

static void test_cpu_decoder_oracle(void)
{
    model_config c = {.type = MODEL_QWEN2, .vocab_size = 97, .hidden_size = 32, .num_layers = 2, .num_heads = 4,
                      .num_kv_heads = 2, .head_dim = 16, .intermediate_size = 48, .max_position_embeddings = 256,
                      .rope_theta = 1e6, .rms_norm_eps = 1e-6, .tie_word_embeddings = true, .qkv_bias = true,
                      .bos_token_id = -1, .eos_token_id = -1};
    check_oracle(&c);
    c.type = MODEL_LLAMA, c.tie_word_embeddings = false, c.o_bias = true;
    check_oracle(&c);
}

int main(void)
{
    RUN(test_seq_and_pos);
    RUN(test_attention_indexing);
    RUN(test_permutes);
    RUN(test_rope_pairs);
    RUN(test_embedding_index);
    RUN(test_bf16);
    RUN(test_gpu_layout);
    RUN(test_cpu_decoder_oracle);
    return check_summary();
}
