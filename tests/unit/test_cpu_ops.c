/* test_cpu_ops.c - the CPU reference ops against central finite differences,
 * plus the exact properties (sequence isolation, causality, normalisation,
 * thread-count independence).
 *
 * Each gradient check uses a scalar loss L = sum(out * R) with a fixed random R
 * (so dout = R), evaluated in double over the fp32 forward outputs, and compares
 * the analytic gradient with (L(x+eps) - L(x-eps)) / (2 eps) element by element.
 * The error reported is the relative error of the whole gradient vector,
 * |analytic - numeric| / |numeric| (2-norms).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"

/* ---- helpers ---- */

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t rng_next(void)
{ /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* uniform in [-1, 1) */
static float frand(void) { return (float)((double)(rng_next() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }
static void fill(float *x, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        x[i] = scale * frand();
}
static float *falloc(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}
static float *frandom(size_t n, float scale)
{
    float *p = falloc(n);
    fill(p, n, scale);
    return p;
}
static double *dalloc(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}
static double dot_d(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

typedef double (*loss_fn)(void *ctx);

/* Relative error of the analytic gradient `an` against central differences of
 * f with respect to x[n] (x is perturbed in place and restored). */
static double fd_err(loss_fn f, void *ctx, float *x, size_t n, double eps, const double *an)
{
    double num2 = 0.0, diff2 = 0.0;
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i];
        float xp = (float)(x0 + eps), xm = (float)(x0 - eps);
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = x0;
        double g = (lp - lm) / ((double)xp - (double)xm);
        num2 += g * g;
        diff2 += (an[i] - g) * (an[i] - g);
    }
    return sqrt(diff2) / (num2 > 0.0 ? sqrt(num2) : 1.0);
}

/* analytic gradient = after - before (the ops accumulate) */
static double *grad_delta(const float *after, const float *before, size_t n)
{
    double *d = dalloc(n);
    for (size_t i = 0; i < n; i++)
        d[i] = (double)after[i] - (before ? (double)before[i] : 0.0);
    return d;
}

static float *fcopy(const float *x, size_t n)
{
    float *p = falloc(n);
    memcpy(p, x, n * sizeof(float));
    return p;
}

#define GRAD_TOL 1e-2

/* ---- linear ---- */

typedef struct {
    int T, C, OC;
    float *inp, *w, *bias, *out, *R;
} mm_ctx;

static double mm_loss(void *p)
{
    mm_ctx *c = p;
    cpu_matmul_forward(c->out, c->inp, c->w, c->bias, c->T, c->C, c->OC);
    return dot_d(c->out, c->R, (size_t)c->T * c->OC);
}

static void test_matmul_grad(void)
{
    rng_seed(1);
    int T = 5, C = 8, OC = 6;
    mm_ctx c = {T, C, OC, frandom((size_t)T * C, 1), frandom((size_t)OC * C, 1), frandom(OC, 1),
                falloc((size_t)T * OC), frandom((size_t)T * OC, 1)};
    /* random starting gradients: the backward must add to them */
    float *dinp0 = frandom((size_t)T * C, 1), *dw0 = frandom((size_t)OC * C, 1), *db0 = frandom(OC, 1);
    float *dinp = fcopy(dinp0, (size_t)T * C), *dw = fcopy(dw0, (size_t)OC * C), *db = fcopy(db0, OC);
    mm_loss(&c);
    /* forward against a double reference */
    double maxe = 0.0;
    for (int t = 0; t < T; t++)
        for (int o = 0; o < OC; o++) {
            double ref = c.bias[o] + dot_d(c.inp + (size_t)t * C, c.w + (size_t)o * C, C);
            maxe = fmax(maxe, fabs(ref - c.out[t * OC + o]));
        }
    CHECK_MSG(maxe < 1e-5, "forward error %.3g", maxe);
    cpu_matmul_backward(dinp, dw, db, c.R, c.inp, c.w, T, C, OC);
    double *a1 = grad_delta(dinp, dinp0, (size_t)T * C), *a2 = grad_delta(dw, dw0, (size_t)OC * C),
           *a3 = grad_delta(db, db0, OC);
    double e1 = fd_err(mm_loss, &c, c.inp, (size_t)T * C, 1e-2, a1);
    double e2 = fd_err(mm_loss, &c, c.w, (size_t)OC * C, 1e-2, a2);
    double e3 = fd_err(mm_loss, &c, c.bias, OC, 1e-2, a3);
    printf("  matmul  rel err: dinp %.2e  dw %.2e  dbias %.2e\n", e1, e2, e3);
    CHECK(e1 < GRAD_TOL && e2 < GRAD_TOL && e3 < GRAD_TOL);

    /* no bias, dinp and dbias NULL */
    float *dw2 = falloc((size_t)OC * C);
    free(c.bias);
    c.bias = NULL;
    mm_loss(&c);
    cpu_matmul_backward(NULL, dw2, NULL, c.R, c.inp, c.w, T, C, OC);
    double *a4 = grad_delta(dw2, NULL, (size_t)OC * C);
    double e4 = fd_err(mm_loss, &c, c.w, (size_t)OC * C, 1e-2, a4);
    printf("  matmul  (no bias, NULL dinp/dbias) dw %.2e\n", e4);
    CHECK(e4 < GRAD_TOL);
    free(a1), free(a2), free(a3), free(a4), free(dw2);
    free(dinp0), free(dw0), free(db0), free(dinp), free(dw), free(db);
    free(c.inp), free(c.w), free(c.out), free(c.R);
}

/* ---- embedding ---- */

typedef struct {
    int T, C;
    const int32_t *ids;
    float *wte, *out, *R;
} emb_ctx;

static double emb_loss(void *p)
{
    emb_ctx *c = p;
    cpu_embedding_forward(c->out, c->ids, c->wte, c->T, c->C);
    return dot_d(c->out, c->R, (size_t)c->T * c->C);
}

static void test_embedding_grad(void)
{
    rng_seed(2);
    int T = 9, C = 70, Vv = 6; /* C > 64: two channel slices */
    int32_t ids[9] = {3, 0, 3, 5, 1, 3, 0, 2, 5};
    emb_ctx c = {T, C, ids, frandom((size_t)Vv * C, 1), falloc((size_t)T * C), frandom((size_t)T * C, 1)};
    emb_loss(&c);
    for (int t = 0; t < T; t++)
        CHECK(memcmp(c.out + (size_t)t * C, c.wte + (size_t)ids[t] * C, (size_t)C * sizeof(float)) == 0);
    float *d0 = frandom((size_t)Vv * C, 1), *d = fcopy(d0, (size_t)Vv * C);
    cpu_embedding_backward(d, c.R, ids, T, C);
    double *a = grad_delta(d, d0, (size_t)Vv * C);
    double e = fd_err(emb_loss, &c, c.wte, (size_t)Vv * C, 1e-2, a);
    printf("  embedding rel err: dwte %.2e\n", e);
    CHECK(e < GRAD_TOL);
    free(a), free(d0), free(d), free(c.wte), free(c.out), free(c.R);
}

/* ---- RMSNorm ---- */

typedef struct {
    int T, C;
    float eps;
    float *inp, *w, *out, *rstd, *R;
} rms_ctx;

static double rms_loss(void *p)
{
    rms_ctx *c = p;
    cpu_rmsnorm_forward(c->out, c->rstd, c->inp, c->w, c->T, c->C, c->eps);
    return dot_d(c->out, c->R, (size_t)c->T * c->C);
}

static void test_rmsnorm_grad(void)
{
    rng_seed(3);
    int T = 5, C = 8;
    rms_ctx c = {T, C, 1e-5f, frandom((size_t)T * C, 1), frandom(C, 1), falloc((size_t)T * C), falloc(T),
                 frandom((size_t)T * C, 1)};
    for (int i = 0; i < C; i++)
        c.w[i] += 1.0f;
    rms_loss(&c);
    double maxe = 0.0;
    for (int t = 0; t < T; t++) {
        const float *x = c.inp + (size_t)t * C;
        double r = 1.0 / sqrt(dot_d(x, x, C) / C + 1e-5);
        maxe = fmax(maxe, fabs(r - c.rstd[t]) / r);
        for (int i = 0; i < C; i++)
            maxe = fmax(maxe, fabs(x[i] * r * c.w[i] - c.out[t * C + i]));
    }
    CHECK_MSG(maxe < 1e-5, "forward error %.3g", maxe);
    float *dx0 = frandom((size_t)T * C, 1), *dw0 = frandom(C, 1);
    float *dx = fcopy(dx0, (size_t)T * C), *dw = fcopy(dw0, C);
    cpu_rmsnorm_backward(dx, dw, c.R, c.inp, c.w, c.rstd, T, C);
    double *a1 = grad_delta(dx, dx0, (size_t)T * C), *a2 = grad_delta(dw, dw0, C);
    double e1 = fd_err(rms_loss, &c, c.inp, (size_t)T * C, 1e-3, a1);
    double e2 = fd_err(rms_loss, &c, c.w, C, 1e-2, a2);
    printf("  rmsnorm rel err: dinp %.2e  dw %.2e\n", e1, e2);
    CHECK(e1 < GRAD_TOL && e2 < GRAD_TOL);
    free(a1), free(a2), free(dx0), free(dw0), free(dx), free(dw);
    free(c.inp), free(c.w), free(c.out), free(c.rstd), free(c.R);
}

/* ---- RoPE ---- */

typedef struct {
    int T, NH, HD;
    float theta;
    const int32_t *pos;
    float *x, *buf, *R;
} rope_ctx;

static double rope_loss(void *p)
{
    rope_ctx *c = p;
    size_t n = (size_t)c->T * c->NH * c->HD;
    memcpy(c->buf, c->x, n * sizeof(float));
    cpu_rope_forward(c->buf, c->pos, c->T, c->NH, c->HD, c->theta);
    return dot_d(c->buf, c->R, n);
}

static void test_rope(void)
{
    rng_seed(4);
    const float thetas[2] = {1e4f, 1e6f};
    const int hds[3] = {8, 2, 64};
    for (int ti = 0; ti < 2; ti++)
        for (int hi = 0; hi < 3; hi++) {
            int T = 6, NH = 3, HD = hds[hi];
            int32_t pos[6] = {0, 1, 2, 7, 0, 45};
            size_t n = (size_t)T * NH * HD;
            rope_ctx c = {T, NH, HD, thetas[ti], pos, frandom(n, 1), falloc(n), frandom(n, 1)};
            rope_loss(&c);
            /* layout and values against a double reference (pairs i, i + HD/2) */
            double maxe = 0.0;
            for (int t = 0; t < T; t++)
                for (int h = 0; h < NH; h++)
                    for (int i = 0; i < HD / 2; i++) {
                        const float *x = c.x + ((size_t)t * NH + h) * HD;
                        const float *y = c.buf + ((size_t)t * NH + h) * HD;
                        double a = pos[t] * pow(thetas[ti], -2.0 * i / HD);
                        double y1 = x[i] * cos(a) - x[i + HD / 2] * sin(a);
                        double y2 = x[i + HD / 2] * cos(a) + x[i] * sin(a);
                        maxe = fmax(maxe, fmax(fabs(y1 - y[i]), fabs(y2 - y[i + HD / 2])));
                    }
            CHECK_MSG(maxe < 1e-5, "rope forward error %.3g (theta %g HD %d)", maxe, thetas[ti], HD);
            /* position 0 is the identity, bit for bit */
            CHECK(memcmp(c.buf, c.x, (size_t)NH * HD * sizeof(float)) == 0);
            /* backward of the forward is the identity */
            cpu_rope_backward(c.buf, pos, T, NH, HD, thetas[ti]);
            double maxi = 0.0;
            for (size_t i = 0; i < n; i++)
                maxi = fmax(maxi, fabs((double)c.buf[i] - c.x[i]));
            CHECK_MSG(maxi <= 1e-6, "rope bwd(fwd(x)) - x = %.3g", maxi);
            /* gradient: dx = backward(R) */
            float *g = fcopy(c.R, n);
            cpu_rope_backward(g, pos, T, NH, HD, thetas[ti]);
            double *a = grad_delta(g, NULL, n);
            double e = fd_err(rope_loss, &c, c.x, n, 1e-2, a);
            printf("  rope    theta %-7g HD %-2d rel err: dx %.2e  fwd err %.1e  bwd(fwd)-id %.1e\n",
                   thetas[ti], HD, e, maxe, maxi);
            CHECK(e < GRAD_TOL);
            free(a), free(g), free(c.x), free(c.buf), free(c.R);
        }
}

/* ---- attention ---- */

typedef struct {
    int S, T, NH, NKV, HD;
    const int32_t *cu;
    float *q, *k, *v, *out, *lse, *R;
} att_ctx;

static double att_loss(void *p)
{
    att_ctx *c = p;
    cpu_attention_forward(c->out, c->lse, c->q, c->k, c->v, c->cu, c->S, c->T, c->NH, c->NKV, c->HD);
    return dot_d(c->out, c->R, (size_t)c->T * c->NH * c->HD);
}

static att_ctx att_make(int S, const int32_t *cu, int NH, int NKV, int HD)
{
    int T = cu[S];
    size_t nq = (size_t)T * NH * HD, nk = (size_t)T * NKV * HD;
    att_ctx c = {S, T, NH, NKV, HD, cu, frandom(nq, 1.5f), frandom(nk, 1.5f), frandom(nk, 1), falloc(nq),
                 falloc((size_t)T * NH), frandom(nq, 1)};
    return c;
}
static void att_free(att_ctx *c) { free(c->q), free(c->k), free(c->v), free(c->out), free(c->lse), free(c->R); }

/* max error of out and lse against a double reference */
static double att_ref_err(const att_ctx *c)
{
    int G = c->NH / c->NKV, HD = c->HD;
    double maxe = 0.0;
    for (int s = 0; s < c->S; s++)
        for (int t = c->cu[s]; t < c->cu[s + 1]; t++)
            for (int h = 0; h < c->NH; h++) {
                const float *q = c->q + ((size_t)t * c->NH + h) * HD;
                double m = -INFINITY, sc[256]; /* sequences up to 256 tokens */
                for (int j = c->cu[s]; j <= t; j++) {
                    sc[j - c->cu[s]] = dot_d(q, c->k + ((size_t)j * c->NKV + h / G) * HD, HD) / sqrt(HD);
                    m = fmax(m, sc[j - c->cu[s]]);
                }
                double l = 0.0;
                for (int j = c->cu[s]; j <= t; j++)
                    l += exp(sc[j - c->cu[s]] - m);
                maxe = fmax(maxe, fabs(m + log(l) - c->lse[(size_t)t * c->NH + h]));
                for (int d = 0; d < HD; d++) {
                    double o = 0.0;
                    for (int j = c->cu[s]; j <= t; j++)
                        o += exp(sc[j - c->cu[s]] - m) / l * c->v[((size_t)j * c->NKV + h / G) * HD + d];
                    maxe = fmax(maxe, fabs(o - c->out[((size_t)t * c->NH + h) * HD + d]));
                }
            }
    return maxe;
}

static int att_grad_case(int S, const int32_t *cu, int NH, int NKV, int HD, uint64_t seed)
{
    rng_seed(seed);
    att_ctx c = att_make(S, cu, NH, NKV, HD);
    int T = c.T;
    size_t nq = (size_t)T * NH * HD, nk = (size_t)T * NKV * HD;
    att_loss(&c);
    double fe = att_ref_err(&c);
    float *dq = falloc(nq), *dk = falloc(nk), *dv = falloc(nk);
    /* the backward overwrites: start from garbage */
    for (size_t i = 0; i < nq; i++)
        dq[i] = NAN;
    for (size_t i = 0; i < nk; i++)
        dk[i] = dv[i] = NAN;
    cpu_attention_backward(dq, dk, dv, c.R, c.out, c.lse, c.q, c.k, c.v, cu, S, T, NH, NKV, HD);
    double *a1 = grad_delta(dq, NULL, nq), *a2 = grad_delta(dk, NULL, nk), *a3 = grad_delta(dv, NULL, nk);
    double e1 = fd_err(att_loss, &c, c.q, nq, 1e-2, a1);
    double e2 = fd_err(att_loss, &c, c.k, nk, 1e-2, a2);
    double e3 = fd_err(att_loss, &c, c.v, nk, 1e-2, a3);
    printf("  attention S %d T %d NH %d NKV %d HD %d rel err: dq %.2e  dk %.2e  dv %.2e  (fwd err %.1e)\n", S,
           T, NH, NKV, HD, e1, e2, e3, fe);
    int ok = e1 < GRAD_TOL && e2 < GRAD_TOL && e3 < GRAD_TOL && fe < 1e-5;
    free(a1), free(a2), free(a3), free(dq), free(dk), free(dv);
    att_free(&c);
    return ok;
}

static void attention_grad_cases(void)
{
    const int32_t cu1[4] = {0, 3, 4, 7};
    CHECK(att_grad_case(3, cu1, 4, 2, 4, 5));
    const int32_t cu2[4] = {0, 2, 3, 7};
    CHECK(att_grad_case(3, cu2, 7, 1, 4, 6));
    const int32_t cu3[3] = {0, 1, 9};
    CHECK(att_grad_case(2, cu3, 4, 4, 16, 7));
    const int32_t cu4[2] = {0, 12};
    CHECK(att_grad_case(1, cu4, 2, 1, 8, 8));
    /* longer than one block of keys of the forward's online softmax */
    const int32_t cu5[3] = {0, 140, 150};
    CHECK(att_grad_case(2, cu5, 2, 1, 4, 14));
}

/* both paths: the blocked backward on the GEMM kernels (AVX-512) and the
 * portable loops */
static void test_attention_grad(void)
{
    if (cpu_avx512()) {
        printf("  AVX-512 path:\n");
        attention_grad_cases();
    }
    printf("  portable path:\n");
    cpu_avx512_allow(false);
    attention_grad_cases();
    cpu_avx512_allow(true);
}

static void test_attention_isolation(void)
{
    rng_seed(9);
    const int32_t cu[4] = {0, 3, 4, 7};
    int NH = 4, NKV = 2, HD = 4, T = 7;
    att_ctx c = att_make(3, cu, NH, NKV, HD);
    size_t nq = (size_t)T * NH * HD, rowq = (size_t)NH * HD, rowk = (size_t)NKV * HD;
    att_loss(&c);
    float *out0 = fcopy(c.out, nq), *lse0 = fcopy(c.lse, (size_t)T * NH);

    /* a length-1 sequence (token 3) attends only to itself: out = v, lse = score */
    for (int h = 0; h < NH; h++) {
        const float *o = c.out + 3 * rowq + (size_t)h * HD, *v = c.v + 3 * rowk + (size_t)(h / 2) * HD;
        CHECK(memcmp(o, v, (size_t)HD * sizeof(float)) == 0);
        double s = dot_d(c.q + 3 * rowq + (size_t)h * HD, c.k + 3 * rowk + (size_t)(h / 2) * HD, HD) / 2.0;
        CHECK(fabs(s - c.lse[3 * NH + h]) < 1e-6);
    }

    /* perturb q, k, v of token 1 (sequence 0): sequences 1 and 2 (tokens 3..6)
     * are bit-identical, and so is token 0 (causality); token 1 changes. */
    c.q[1 * rowq] += 0.5f;
    c.k[1 * rowk + 1] -= 0.7f;
    c.v[1 * rowk + 2] += 0.3f;
    att_loss(&c);
    CHECK(memcmp(c.out + 3 * rowq, out0 + 3 * rowq, 4 * rowq * sizeof(float)) == 0);
    CHECK(memcmp(c.lse + 3 * NH, lse0 + 3 * NH, (size_t)4 * NH * sizeof(float)) == 0);
    CHECK(memcmp(c.out, out0, rowq * sizeof(float)) == 0);
    CHECK(memcmp(c.out + rowq, out0 + rowq, rowq * sizeof(float)) != 0);

    /* backward: dout on sequence 2 only gives gradients on sequence 2 only */
    float *dq = falloc(nq), *dk = falloc((size_t)T * rowk), *dv = falloc((size_t)T * rowk);
    memset(c.R, 0, 4 * rowq * sizeof(float));
    cpu_attention_backward(dq, dk, dv, c.R, c.out, c.lse, c.q, c.k, c.v, cu, 3, T, NH, NKV, HD);
    for (size_t i = 0; i < 4 * rowq; i++)
        CHECK(dq[i] == 0.0f);
    for (size_t i = 0; i < 4 * rowk; i++)
        CHECK(dk[i] == 0.0f && dv[i] == 0.0f);
    int nonzero = 0;
    for (size_t i = 4 * rowk; i < 7 * rowk; i++)
        nonzero += dk[i] != 0.0f;
    CHECK(nonzero > 0);
    free(dq), free(dk), free(dv), free(out0), free(lse0);
    att_free(&c);
}

/* The KV-cache attention (blocks of keys, online softmax across blocks)
 * against causal attention computed here in double, for every query position
 * across block boundaries, with a GQA group and head size that are not
 * multiples of the kernels' tiles; and equal to the packed forward (which
 * shares its core); on the AVX-512 path and the portable one. */
static void cached_vs_full(const char *label, double *worst)
{
    const int L = 150, NH = 14, NKV = 2, HD = 72, slots = 2, max_len = 160, slot = 1;
    const size_t rowq = (size_t)NH * HD, rowk = (size_t)NKV * HD;
    float *q = frandom((size_t)L * rowq, 1.5f), *k = frandom((size_t)L * rowk, 1.5f), *v = frandom((size_t)L * rowk, 1);
    float *full = falloc((size_t)L * rowq), *lse = falloc((size_t)L * NH), *cached = falloc((size_t)L * rowq);
    float *kc = falloc((size_t)slots * max_len * rowk), *vc = falloc((size_t)slots * max_len * rowk);
    const int32_t cu[2] = {0, L};
    cpu_attention_forward(full, lse, q, k, v, cu, 1, L, NH, NKV, HD);
    memcpy(kc + (size_t)slot * max_len * rowk, k, (size_t)L * rowk * sizeof(float));
    memcpy(vc + (size_t)slot * max_len * rowk, v, (size_t)L * rowk * sizeof(float));
    int32_t *sl = malloc((size_t)L * sizeof(int32_t)), *pos = malloc((size_t)L * sizeof(int32_t));
    for (int t = 0; t < L; t++) sl[t] = slot, pos[t] = t; /* every position as its own decode token */
    cpu_attention_cached(cached, q, kc, vc, sl, pos, L, NH, NKV, HD, max_len);
    double w = 0.0, wf = 0.0, *sc = malloc((size_t)L * sizeof(double));
    for (int t = 0; t < L; t++)
        for (int h = 0; h < NH; h++) {
            const float *qr = q + (size_t)t * rowq + (size_t)h * HD;
            const size_t kvo = (size_t)(h / (NH / NKV)) * HD;
            double mx = -INFINITY, sum = 0.0;
            for (int j = 0; j <= t; j++) {
                sc[j] = dot_d(qr, k + (size_t)j * rowk + kvo, HD) / sqrt((double)HD);
                mx = fmax(mx, sc[j]);
            }
            for (int j = 0; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
            for (int d = 0; d < HD; d++) {
                double o = 0.0;
                for (int j = 0; j <= t; j++) o += sc[j] * v[(size_t)j * rowk + kvo + d];
                const size_t at = (size_t)t * rowq + (size_t)h * HD + d;
                w = fmax(w, fabs(o / sum - cached[at]));
                wf = fmax(wf, fabs((double)full[at] - cached[at]));
            }
        }
    free(sc);
    *worst = fmax(w, wf);
    printf("  cached attention (%s, %d positions, group 7, HD 72): max |diff| %.2e against double, %.2e against "
           "the packed forward\n", label, L, w, wf);
    free(q), free(k), free(v), free(full), free(lse), free(cached), free(kc), free(vc), free(sl), free(pos);
}

static void test_attention_cached(void)
{
    rng_seed(12);
    double w1 = 0.0, w2 = 0.0;
    if (cpu_avx512()) cached_vs_full("AVX-512", &w1);
    cpu_avx512_allow(false);
    cached_vs_full("portable", &w2);
    cpu_avx512_allow(true);
    CHECK(w1 < 2e-6 && w2 < 2e-6);
}

/* ---- SwiGLU ---- */

typedef struct {
    size_t N;
    float *gate, *up, *out, *R;
} swi_ctx;

static double swi_loss(void *p)
{
    swi_ctx *c = p;
    cpu_swiglu_forward(c->out, c->gate, c->up, c->N);
    return dot_d(c->out, c->R, c->N);
}

static void test_swiglu(void)
{
    rng_seed(10);
    size_t N = 40;
    swi_ctx c = {N, frandom(N, 4), frandom(N, 2), falloc(N), frandom(N, 1)};
    swi_loss(&c);
    double maxe = 0.0;
    for (size_t i = 0; i < N; i++) {
        double g = c.gate[i];
        maxe = fmax(maxe, fabs(g / (1.0 + exp(-g)) * c.up[i] - c.out[i]));
    }
    CHECK_MSG(maxe < 1e-5, "forward error %.3g", maxe);
    float *dg = falloc(N), *du = falloc(N);
    for (size_t i = 0; i < N; i++)
        dg[i] = du[i] = NAN;
    cpu_swiglu_backward(dg, du, c.R, c.gate, c.up, N);
    double *a1 = grad_delta(dg, NULL, N), *a2 = grad_delta(du, NULL, N);
    double e1 = fd_err(swi_loss, &c, c.gate, N, 1e-3, a1);
    double e2 = fd_err(swi_loss, &c, c.up, N, 1e-2, a2);
    printf("  swiglu  rel err: dgate %.2e  dup %.2e\n", e1, e2);
    CHECK(e1 < GRAD_TOL && e2 < GRAD_TOL);

    /* large |gate|: finite, silu(g) -> g or -> 0 */
    float big[8] = {30.f, -30.f, 100.f, -100.f, 1e4f, -1e4f, 88.8f, -88.8f};
    float one[8] = {1, 1, 1, 1, 1, 1, 1, 1}, o[8], g8[8], u8[8];
    cpu_swiglu_forward(o, big, one, 8);
    cpu_swiglu_backward(g8, u8, one, big, one, 8);
    for (int i = 0; i < 8; i++) {
        CHECK(isfinite(o[i]) && isfinite(g8[i]) && isfinite(u8[i]));
        if (big[i] > 0)
            CHECK(fabsf(o[i] - big[i]) <= 1e-6f * big[i] && fabsf(g8[i] - 1.0f) < 1e-6f);
        else
            CHECK(fabsf(o[i]) < 1e-9f && fabsf(g8[i]) < 1e-9f);
    }
    free(a1), free(a2), free(dg), free(du), free(c.gate), free(c.up), free(c.out), free(c.R);
}

/* ---- LM head ---- */

typedef struct {
    int T, C, V;
    float inv_temp;
    const int32_t *targets;
    float *h, *w, *lp, *ent, *scratch, *R1, *R2;
} head_ctx;

static double head_loss(void *p)
{
    head_ctx *c = p;
    cpu_head_forward(c->lp, c->ent, NULL, c->h, c->w, c->targets, c->T, c->C, c->V, c->inv_temp, c->scratch);
    double L = dot_d(c->lp, c->R1, c->T);
    if (c->R2)
        L += dot_d(c->ent, c->R2, c->T);
    return L;
}

static void test_head_grad(void)
{
    rng_seed(11);
    int T = CPU_HEAD_CHUNK + 6, C = 5, V = 11; /* two chunks: a full one + 6 */
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++)
        tg[t] = (int32_t)(rng_next() % (uint64_t)V);
    head_ctx c = {T, C, V, 1.0f / 0.7f, tg, frandom((size_t)T * C, 1), frandom((size_t)V * C, 1),
                  falloc(T), falloc(T), falloc((size_t)CPU_HEAD_CHUNK * V), frandom(T, 1), frandom(T, 1)};
    head_loss(&c);
    /* forward against a double reference */
    double maxe = 0.0;
    for (int t = 0; t < T; t++) {
        double z[11], m = -INFINITY, se = 0.0, H = 0.0;
        for (int j = 0; j < V; j++) {
            z[j] = dot_d(c.h + (size_t)t * C, c.w + (size_t)j * C, C) * c.inv_temp;
            m = fmax(m, z[j]);
        }
        for (int j = 0; j < V; j++)
            se += exp(z[j] - m);
        double lse = m + log(se);
        for (int j = 0; j < V; j++)
            H -= exp(z[j] - lse) * (z[j] - lse);
        maxe = fmax(maxe, fmax(fabs(z[tg[t]] - lse - c.lp[t]), fabs(H - c.ent[t])));
    }
    CHECK_MSG(maxe < 1e-5, "forward error %.3g", maxe);

    float *dh0 = frandom((size_t)T * C, 1), *dw0 = frandom((size_t)V * C, 1);
    float *dh = fcopy(dh0, (size_t)T * C), *dw = fcopy(dw0, (size_t)V * C);
    cpu_head_backward(dh, dw, c.R1, c.R2, c.h, c.w, tg, T, C, V, c.inv_temp, c.scratch);
    double *a1 = grad_delta(dh, dh0, (size_t)T * C), *a2 = grad_delta(dw, dw0, (size_t)V * C);
    double e1 = fd_err(head_loss, &c, c.h, (size_t)T * C, 1e-2, a1);
    double e2 = fd_err(head_loss, &c, c.w, (size_t)V * C, 1e-2, a2);
    printf("  head    T %d V %d rel err (logprob + entropy): dh %.2e  dw %.2e  (fwd err %.1e)\n", T, V, e1, e2,
           maxe);
    CHECK(e1 < GRAD_TOL && e2 < GRAD_TOL);

    /* dentropy NULL: the logprob term only */
    free(a1), free(a2);
    memset(dh, 0, sizeof(float) * (size_t)T * C);
    memset(dw, 0, sizeof(float) * (size_t)V * C);
    float *R2 = c.R2;
    c.R2 = NULL;
    cpu_head_backward(dh, dw, c.R1, NULL, c.h, c.w, tg, T, C, V, c.inv_temp, c.scratch);
    a1 = grad_delta(dh, NULL, (size_t)T * C), a2 = grad_delta(dw, NULL, (size_t)V * C);
    e1 = fd_err(head_loss, &c, c.h, (size_t)T * C, 1e-2, a1);
    e2 = fd_err(head_loss, &c, c.w, (size_t)V * C, 1e-2, a2);
    printf("  head    T %d V %d rel err (logprob only):      dh %.2e  dw %.2e\n", T, V, e1, e2);
    CHECK(e1 < GRAD_TOL && e2 < GRAD_TOL);
    c.R2 = R2;
    free(a1), free(a2), free(dh0), free(dw0), free(dh), free(dw);
    free(tg), free(c.h), free(c.w), free(c.lp), free(c.ent), free(c.scratch), free(c.R1), free(c.R2);
}

static void test_head_properties(void)
{
    rng_seed(12);
    int T = CPU_HEAD_CHUNK + 3, C = 6, V = 13; /* two chunks */
    float *h = frandom((size_t)T * C, 2), *w = frandom((size_t)V * C, 2), *scratch = falloc((size_t)CPU_HEAD_CHUNK * V);
    float *lp = falloc(T), *ent = falloc(T), *lp2 = falloc(T), *ent2 = falloc(T), *logits = falloc((size_t)T * V);
    int32_t *tg = malloc(sizeof(int32_t) * (size_t)T);
    double *psum = dalloc(T);
    /* sum over every target of exp(logprob) = 1, logprob <= 0, entropy >= 0 */
    for (int j = 0; j < V; j++) {
        for (int t = 0; t < T; t++)
            tg[t] = j;
        cpu_head_forward(lp, ent, NULL, h, w, tg, T, C, V, 1.0f, scratch);
        for (int t = 0; t < T; t++) {
            CHECK(lp[t] <= 0.0f && ent[t] >= 0.0f);
            psum[t] += exp((double)lp[t]);
        }
    }
    double maxd = 0.0;
    for (int t = 0; t < T; t++)
        maxd = fmax(maxd, fabs(psum[t] - 1.0));
    printf("  head    |sum_j exp(logprob_j) - 1| <= %.1e\n", maxd);
    CHECK(maxd < 1e-5);

    /* logits_out NULL or not: identical results; logits_out = z */
    for (int t = 0; t < T; t++)
        tg[t] = (int32_t)(rng_next() % (uint64_t)V);
    cpu_head_forward(lp, ent, NULL, h, w, tg, T, C, V, 1.3f, scratch);
    cpu_head_forward(lp2, ent2, logits, h, w, tg, T, C, V, 1.3f, scratch);
    CHECK(memcmp(lp, lp2, sizeof(float) * (size_t)T) == 0);
    CHECK(memcmp(ent, ent2, sizeof(float) * (size_t)T) == 0);
    double maxz = 0.0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < V; j++)
            maxz = fmax(maxz, fabs(dot_d(h + (size_t)t * C, w + (size_t)j * C, C) * 1.3f - logits[t * V + j]));
    CHECK_MSG(maxz < 1e-5, "logits error %.3g", maxz);

    /* huge logits: still finite, logprob <= 0, entropy >= 0 */
    for (size_t i = 0; i < (size_t)T * C; i++)
        h[i] *= 1000.0f;
    cpu_head_forward(lp, ent, NULL, h, w, tg, T, C, V, 1.0f, scratch);
    float *dh = falloc((size_t)T * C), *dw = falloc((size_t)V * C);
    cpu_head_backward(dh, dw, lp2, ent2, h, w, tg, T, C, V, 1.0f, scratch);
    for (int t = 0; t < T; t++)
        CHECK(isfinite(lp[t]) && lp[t] <= 0.0f && isfinite(ent[t]) && ent[t] >= 0.0f);
    for (size_t i = 0; i < (size_t)T * C; i++)
        CHECK(isfinite(dh[i]));
    for (size_t i = 0; i < (size_t)V * C; i++)
        CHECK(isfinite(dw[i]));
    free(dh), free(dw), free(h), free(w), free(scratch), free(lp), free(ent), free(lp2), free(ent2), free(logits),
        free(tg), free(psum);
}

/* ---- thread-count independence ---- */

/* Every op run with 1 and with 2 threads: the OpenMP loops never reduce
 * across threads, so their outputs must be the same bits. OpenBLAS's sgemm is
 * not bit-reproducible across thread counts (its kernels and blocking depend on
 * the split), so outputs that went through a GEMM are compared within 1e-6
 * relative (|difference| / |value|, 2-norms over the output). */
typedef struct {
    float *buf[24];
    size_t n[24];
    int gemm[24];
    int count;
} outputs;

static void outputs_add_(outputs *o, const float *x, size_t n, int gemm)
{
    if (o->count == 24) {
        fprintf(stderr, "outputs: too many\n");
        exit(2);
    }
    o->buf[o->count] = fcopy(x, n);
    o->n[o->count] = n;
    o->gemm[o->count++] = gemm;
}
#define outputs_add(o, x, n) outputs_add_(o, x, n, 0)
#define outputs_add_gemm(o, x, n) outputs_add_(o, x, n, 1)

static void run_all_ops(outputs *o)
{
    rng_seed(13);
    /* sizes large enough for OpenBLAS and OpenMP to split the work */
    int T = 200, C = 96, OC = 160, NH = 6, NKV = 2, HD = 16, V = 300;
    const int32_t cu[5] = {0, 50, 51, 130, 200};
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T), *pos = malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) {
        ids[t] = (int32_t)(rng_next() % (uint64_t)V);
        pos[t] = t % 37;
    }
    float *x = frandom((size_t)T * C, 1), *w = frandom((size_t)OC * C, 1), *b = frandom(OC, 1);
    float *y = falloc((size_t)T * OC), *dy = frandom((size_t)T * OC, 1);
    float *dx = falloc((size_t)T * C), *dw = falloc((size_t)OC * C), *db = falloc(OC);
    cpu_matmul_forward(y, x, w, b, T, C, OC);
    cpu_matmul_backward(dx, dw, db, dy, x, w, T, C, OC);
    outputs_add_gemm(o, y, (size_t)T * OC), outputs_add_gemm(o, dx, (size_t)T * C);
    outputs_add_gemm(o, dw, (size_t)OC * C), outputs_add(o, db, OC);

    float *rs = falloc(T), *nw = frandom(C, 1), *dnw = falloc(C), *xn = falloc((size_t)T * C);
    memset(dx, 0, sizeof(float) * (size_t)T * C);
    cpu_rmsnorm_forward(xn, rs, x, nw, T, C, 1e-6f);
    cpu_rmsnorm_backward(dx, dnw, xn, x, nw, rs, T, C); /* any dout will do */
    outputs_add(o, xn, (size_t)T * C), outputs_add(o, dx, (size_t)T * C), outputs_add(o, dnw, C);

    float *wte = frandom((size_t)V * C, 1), *dwte = falloc((size_t)V * C);
    cpu_embedding_forward(xn, ids, wte, T, C);
    outputs_add(o, xn, (size_t)T * C);
    cpu_embedding_backward(dwte, x, ids, T, C);
    outputs_add(o, dwte, (size_t)V * C);

    size_t nq = (size_t)T * NH * HD, nk = (size_t)T * NKV * HD;
    float *q = frandom(nq, 1), *k = frandom(nk, 1), *v = frandom(nk, 1), *ao = falloc(nq), *lse = falloc((size_t)T * NH);
    float *dao = frandom(nq, 1), *dq = falloc(nq), *dk = falloc(nk), *dv = falloc(nk);
    cpu_rope_forward(q, pos, T, NH, HD, 1e6f);
    cpu_rope_forward(k, pos, T, NKV, HD, 1e6f);
    cpu_attention_forward(ao, lse, q, k, v, cu, 4, T, NH, NKV, HD);
    cpu_attention_backward(dq, dk, dv, dao, ao, lse, q, k, v, cu, 4, T, NH, NKV, HD);
    cpu_rope_backward(dq, pos, T, NH, HD, 1e6f);
    float *sw = falloc(nq);
    cpu_swiglu_forward(sw, q, dao, nq);
    cpu_swiglu_backward(dao, q, sw, ao, dq, nq); /* overwrites dao and q */
    outputs_add(o, ao, nq), outputs_add(o, lse, (size_t)T * NH), outputs_add(o, dq, nq);
    outputs_add(o, dk, nk), outputs_add(o, dv, nk), outputs_add(o, dao, nq), outputs_add(o, q, nq);

    float *hw = frandom((size_t)V * C, 1), *scratch = falloc((size_t)CPU_HEAD_CHUNK * V);
    float *lp = falloc(T), *ent = falloc(T), *dlp = frandom(T, 1), *dent = frandom(T, 1), *dhw = falloc((size_t)V * C);
    memset(dx, 0, sizeof(float) * (size_t)T * C);
    cpu_head_forward(lp, ent, NULL, x, hw, ids, T, C, V, 1.0f, scratch);
    cpu_head_backward(dx, dhw, dlp, dent, x, hw, ids, T, C, V, 1.0f, scratch);
    outputs_add_gemm(o, lp, T), outputs_add_gemm(o, ent, T);
    outputs_add_gemm(o, dx, (size_t)T * C), outputs_add_gemm(o, dhw, (size_t)V * C);
    free(ids), free(pos), free(x), free(w), free(b), free(y), free(dy), free(dx), free(dw), free(db);
    free(rs), free(nw), free(dnw), free(xn), free(wte), free(dwte);
    free(q), free(k), free(v), free(ao), free(lse), free(dao), free(dq), free(dk), free(dv), free(sw);
    free(hw), free(scratch), free(lp), free(ent), free(dlp), free(dent), free(dhw);
}

static void test_thread_independence(void)
{
    outputs o1 = {0}, o2 = {0};
    int saved = cpu_threads();
    cpu_set_threads(1);
    CHECK(cpu_threads() == 1);
    run_all_ops(&o1);
    cpu_set_threads(2);
    CHECK(cpu_threads() == 2);
    run_all_ops(&o2);
    cpu_set_threads(saved);
    CHECK(o1.count == o2.count);
    int ok = 1, exact = 0;
    double worst = 0.0;
    for (int i = 0; i < o1.count; i++) {
        double d2 = 0.0, v2 = 0.0;
        for (size_t j = 0; j < o1.n[i]; j++) {
            double d = (double)o1.buf[i][j] - o2.buf[i][j];
            d2 += d * d;
            v2 += (double)o1.buf[i][j] * o1.buf[i][j];
        }
        double rel = sqrt(d2) / (v2 > 0.0 ? sqrt(v2) : 1.0);
        if (o1.gemm[i]) {
            worst = fmax(worst, rel);
            if (rel > 1e-6) {
                fprintf(stderr, "  output %d (GEMM) differs between 1 and 2 threads: rel %.3g\n", i, rel);
                ok = 0;
            }
        } else if (memcmp(o1.buf[i], o2.buf[i], o1.n[i] * sizeof(float)) != 0) {
            fprintf(stderr, "  output %d differs between 1 and 2 threads: rel %.3g\n", i, rel);
            ok = 0;
        } else {
            exact++;
        }
        free(o1.buf[i]), free(o2.buf[i]);
    }
    printf("  threads 1 vs 2: %d outputs bit-identical, GEMM outputs within %.1e relative\n", exact, worst);
    CHECK(ok);
}

int main(void)
{
    RUN(test_matmul_grad);
    RUN(test_embedding_grad);
    RUN(test_rmsnorm_grad);
    RUN(test_rope);
    RUN(test_attention_grad);
    RUN(test_attention_isolation);
    RUN(test_attention_cached);
    RUN(test_swiglu);
    RUN(test_head_grad);
    RUN(test_head_properties);
    RUN(test_thread_independence);
    return check_summary();
}
