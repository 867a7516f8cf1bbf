/* ops.c - the CPU reference ops (see ops.h for the contracts).
 *
 * fp32, row-major. GEMMs: kernels/cpu/gemm's AVX-512 kernels where the CPU has
 * them and OpenBLAS has not its own AVX-512 kernels, and for the products
 * OpenBLAS does badly even then (few rows: a decode step; a short sum: the
 * head's weight gradient per chunk); OpenBLAS cblas_sgemm otherwise (see
 * gemm.h for the figures). Everything else is a plain
 * loop, threaded with OpenMP where there is parallel work. Every OpenMP loop
 * that reduces across tokens does so in a fixed order inside one thread, so
 * its results are the same bits whatever the thread count. (OpenBLAS's sgemm
 * is not: its results move by an ulp or so with the number of threads.)
 * BLAS is only ever called from serial code, never inside a parallel region.
 *
 * `#pragma omp simd` marks the contiguous inner loops (over HD or C) so they
 * vectorise at -O2 too; a reduction under it is summed lane-wise, in a fixed
 * order for a given build.
 */
#include "kernels/cpu/ops.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/softmax.h"

#include <assert.h>
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* Channels per task in the loops that reduce over tokens (dbias, dw of
 * RMSNorm, embedding backward): each task owns a slice of channels and walks
 * the tokens in order. */
#define COL_BLOCK 64

/* ---- linear ---- */

void cpu_matmul_forward(float *out, const float *inp, const float *w, const float *bias, int T, int C, int OC)
{
    if (T <= 0 || OC <= 0)
        return;
    if (C > 0 && cpu_avx512() && (T < CPU_GEMM_BLAS_MIN_ROWS || !cpu_blas_avx512())) {
        cpu_gemm_nt(out, inp, w, bias, T, C, OC);
        return;
    }
    /* out = bias, then out += inp @ w^T (beta = 1). */
    if (bias) {
#pragma omp parallel for
        for (int t = 0; t < T; t++)
            memcpy(out + (size_t)t * OC, bias, (size_t)OC * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, OC, C, 1.0f, inp, C, w, C, bias ? 1.0f : 0.0f,
                out, OC);
}

void cpu_matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                         const float *w, int T, int C, int OC)
{
    if (T <= 0 || OC <= 0)
        return;
    if (C > 0 && cpu_avx512() && !cpu_blas_avx512()) {
        if (dinp) cpu_gemm_nn_acc(dinp, (size_t)C, dout, (size_t)OC, 1, w, (size_t)C, T, OC, C);
        cpu_gemm_nn_acc(dw, (size_t)C, dout, 1, (size_t)OC, inp, (size_t)C, OC, T, C);
    } else {
        /* dinp[T,C] += dout[T,OC] @ w[OC,C] */
        if (dinp)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, C, OC, 1.0f, dout, OC, w, C, 1.0f, dinp, C);
        /* dw[OC,C] += dout^T[OC,T] @ inp[T,C] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, T, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
    }
    /* dbias[OC] += sum_t dout[t,:], per slice of channels, tokens in order, in double. */
    if (dbias) {
        int nblk = (OC + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
        for (int b = 0; b < nblk; b++) {
            int o0 = b * COL_BLOCK, n = OC - o0 < COL_BLOCK ? OC - o0 : COL_BLOCK;
            double acc[COL_BLOCK] = {0};
            for (int t = 0; t < T; t++) {
                const float *d = dout + (size_t)t * OC + o0;
                for (int i = 0; i < n; i++)
                    acc[i] += d[i];
            }
            for (int i = 0; i < n; i++)
                dbias[o0 + i] += (float)acc[i];
        }
    }
}

/* ---- embedding ---- */

void cpu_embedding_forward(float *out, const int32_t *ids, const float *wte, int T, int C)
{
#pragma omp parallel for
    for (int t = 0; t < T; t++)
        memcpy(out + (size_t)t * C, wte + (size_t)ids[t] * C, (size_t)C * sizeof(float));
}

void cpu_embedding_backward(float *dwte, const float *dout, const int32_t *ids, int T, int C)
{
    /* Each task owns a slice of channels and adds the tokens in order: no
     * races on repeated ids, and the same sums whatever the thread count. */
    int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < nblk; b++) {
        int c0 = b * COL_BLOCK, n = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        for (int t = 0; t < T; t++) {
            float *dst = dwte + (size_t)ids[t] * C + c0;
            const float *src = dout + (size_t)t * C + c0;
#pragma omp simd
            for (int i = 0; i < n; i++)
                dst[i] += src[i];
        }
    }
}

/* ---- RMSNorm ---- */

void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int T, int C, float eps)
{
#pragma omp parallel for
    for (int t = 0; t < T; t++) {
        const float *x = inp + (size_t)t * C;
        float *y = out + (size_t)t * C;
        double ss = 0.0;
        for (int i = 0; i < C; i++)
            ss += (double)x[i] * x[i];
        float r = (float)(1.0 / sqrt(ss / C + (double)eps));
        rstd[t] = r;
        /* HF: weight * (x * rsqrt(var + eps)) */
#pragma omp simd
        for (int i = 0; i < C; i++)
            y[i] = (x[i] * r) * w[i];
    }
}

void cpu_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                          const float *rstd, int T, int C)
{
    /* y_i = x_i r w_i, r = (mean(x^2) + eps)^-1/2, dr/dx_i = -r^3 x_i / C:
     *   dx_i = r w_i dy_i - (r^3 / C) x_i sum_k dy_k w_k x_k
     *   dw_i = sum_t dy_i x_i r */
#pragma omp parallel for
    for (int t = 0; t < T; t++) {
        const float *x = inp + (size_t)t * C, *dy = dout + (size_t)t * C;
        float *dx = dinp + (size_t)t * C;
        double dot = 0.0;
        for (int i = 0; i < C; i++)
            dot += (double)dy[i] * w[i] * x[i];
        float r = rstd[t];
        float coef = (float)((double)r * r * r * dot / C);
#pragma omp simd
        for (int i = 0; i < C; i++)
            dx[i] += r * w[i] * dy[i] - coef * x[i];
    }
    int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < nblk; b++) {
        int c0 = b * COL_BLOCK, n = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        double acc[COL_BLOCK] = {0};
        for (int t = 0; t < T; t++) {
            const float *x = inp + (size_t)t * C + c0, *dy = dout + (size_t)t * C + c0;
            float r = rstd[t];
            for (int i = 0; i < n; i++)
                acc[i] += (double)dy[i] * (x[i] * r);
        }
        for (int i = 0; i < n; i++)
            dw[c0 + i] += (float)acc[i];
    }
}

/* ---- RoPE ---- */

/* The largest head dimension RoPE supports (the cos/sin of one token live on
 * the stack). */
#define ROPE_MAX_HALF 512

/* cos and sin of the HD/2 angles of position p, as Hugging Face computes them
 * in fp32: inv_freq[i] = 1 / theta^(2i/HD) rounded to float, angle = p *
 * inv_freq in float, then cos/sin in float. */
static void rope_angles(float *cs, float *sn, int32_t p, int half, int HD, float theta)
{
    for (int i = 0; i < half; i++) {
        float inv_freq = (float)(1.0 / pow((double)theta, (double)(2 * i) / (double)HD));
        float a = (float)p * inv_freq;
        cs[i] = cosf(a);
        sn[i] = sinf(a);
    }
}

/* sign = +1: forward rotation; sign = -1: its transpose (the backward). */
static void rope_apply(float *x, const int32_t *pos, int T, int NH, int HD, float theta, float sign)
{
    assert(HD % 2 == 0 && HD / 2 <= ROPE_MAX_HALF);
    int half = HD / 2;
#pragma omp parallel for
    for (int t = 0; t < T; t++) {
        float cs[ROPE_MAX_HALF], sn[ROPE_MAX_HALF];
        rope_angles(cs, sn, pos[t], half, HD, theta);
        for (int h = 0; h < NH; h++) {
            float *x1 = x + ((size_t)t * NH + h) * HD, *x2 = x1 + half;
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float a = x1[i], b = x2[i], s = sign * sn[i];
                x1[i] = a * cs[i] - b * s;
                x2[i] = b * cs[i] + a * s;
            }
        }
    }
}

void cpu_rope_forward(float *x, const int32_t *pos, int T, int NH, int HD, float theta)
{
    rope_apply(x, pos, T, NH, HD, theta, 1.0f);
}

void cpu_rope_backward(float *dx, const int32_t *pos, int T, int NH, int HD, float theta)
{
    /* x' = R x with R = [[c, -s], [s, c]] per pair, so dx = R^T dx' (the rotation by -a). */
    rope_apply(dx, pos, T, NH, HD, theta, -1.0f);
}

/* ---- attention ---- */

/* Query rows and keys per block of the attention backward (on the stack). */
#define ATT_BLOCK 64

static inline float dot_f(const float *a, const float *b, int n)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static inline void axpy_f(float *y, float a, const float *x, int n)
{
#pragma omp simd
    for (int i = 0; i < n; i++)
        y[i] += a * x[i];
}

static void check_seqlens(const int32_t *cu_seqlens, int S, int T, int NH, int NKV, int HD)
{
    (void)cu_seqlens; (void)S; (void)T; (void)NH; (void)NKV; (void)HD;
    assert(NKV > 0 && NH % NKV == 0);
    assert(HD > 0);
#ifndef NDEBUG
    assert(cu_seqlens[0] == 0 && cu_seqlens[S] == T);
    for (int s = 0; s < S; s++)
        assert(cu_seqlens[s] <= cu_seqlens[s + 1]);
#endif
}

/* The sequence that holds token t: the s with cu[s] <= t < cu[s+1]. */
static int seq_of(const int32_t *cu, int S, int t)
{
    int lo = 0, hi = S - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (cu[mid] <= t)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

#define CACHED_MAX_HD 1024
#define CACHED_MAX_GROUP CPU_ATT_MAX_GROUP      /* query heads per kv head (Qwen2.5-0.5B: 7) */
#define CACHED_MAX_ACC CPU_ATT_MAX_GROUP_WIDTH  /* group x HD floats on the stack (32 KiB) */

/* Keys per block of the cached attention: their scores, for every query head
 * of the group, are computed, exponentiated (vectorised) and accumulated
 * together, and the online softmax rescales once per block, not per key. */
#define CACHED_BLOCK 64

/* The vectorisable inner loops are compiled for AVX-512 too and picked at
 * load time (GCC/clang function multi-versioning); the build's baseline is
 * plain x86-64 (SSE2). */
#if defined(__x86_64__) && !defined(__clang__)
#define HOT_LOOPS __attribute__((target_clones("avx512f", "default")))
#else
#define HOT_LOOPS
#endif

/* s[g * CACHED_BLOCK + jj] = scale * q_g . k_(j0 + jj) for jj < n; k rows ld apart. */
HOT_LOOPS static void cached_scores(float *s, const float *qg, const float *k, size_t ld, int n, int group,
                                    int HD, float scale)
{
    if (cpu_avx512()) { /* [group, HD] x [n, HD]^T: the GEMM kernel's 4 x 4 dot tiles */
        cpu_gemm_nt_serial(s, CACHED_BLOCK, qg, (size_t)HD, k, ld, group, HD, n);
        for (int g = 0; g < group; g++)
            for (int jj = 0; jj < n; jj++) s[g * CACHED_BLOCK + jj] *= scale;
        return;
    }
    for (int jj = 0; jj < n; jj++) {
        const float *kr = k + (size_t)jj * ld;
        for (int g = 0; g < group; g++) s[g * CACHED_BLOCK + jj] = dot_f(qg + (size_t)g * HD, kr, HD) * scale;
    }
}

/* acc_g[HD] += sum_jj p[g * CACHED_BLOCK + jj] * v_(j0 + jj) for each g; v rows ld apart. */
HOT_LOOPS static void cached_accumulate(float *acc, const float *p, const float *v, size_t ld, int n, int group,
                                        int HD)
{
    if (cpu_avx512()) { /* [group, n] x [n, HD] */
        cpu_gemm_nn_acc_serial(acc, (size_t)HD, p, CACHED_BLOCK, 1, v, ld, group, n, HD);
        return;
    }
    for (int jj = 0; jj < n; jj++) {
        const float *vr = v + (size_t)jj * ld;
        for (int g = 0; g < group; g++) axpy_f(acc + (size_t)g * HD, p[g * CACHED_BLOCK + jj], vr, HD);
    }
}

/* Attention of the `group` query heads qg[group, HD] (rows HD apart) that
 * share one kv head, over n keys and values (rows ld apart, in order):
 * o[g] = softmax(scale q_g K^T) V into o[group, HD] and, when lse is not NULL,
 * lse[g] = the log-sum-exp of the scaled scores. Online softmax over blocks
 * of CACHED_BLOCK keys: per block the scores of every head (one small GEMM),
 * one rescale of what was accumulated, the exps (vectorised), the weighted
 * sum of v (another small GEMM); each K/V row is read once per group. */
static void attend_group(float *o, float *lse, const float *qg, const float *k, const float *v, size_t ld, int n,
                         int group, int HD, float scale)
{
    float acc[CACHED_MAX_ACC];
    float m[CACHED_MAX_GROUP];
    double l[CACHED_MAX_GROUP];
    float s[CACHED_MAX_GROUP * CACHED_BLOCK]; /* [group, CACHED_BLOCK] scores, then weights */
    memset(acc, 0, (size_t)group * HD * sizeof(float));
    for (int g = 0; g < group; g++) m[g] = -INFINITY, l[g] = 0.0;
    for (int j0 = 0; j0 < n; j0 += CACHED_BLOCK) {
        const int nb = n - j0 < CACHED_BLOCK ? n - j0 : CACHED_BLOCK;
        cached_scores(s, qg, k + (size_t)j0 * ld, ld, nb, group, HD, scale);
        for (int g = 0; g < group; g++) {
            float *sg = s + g * CACHED_BLOCK, bm = sg[0];
            for (int jj = 1; jj < nb; jj++) bm = sg[jj] > bm ? sg[jj] : bm;
            if (bm > m[g]) { /* rescale what was accumulated under the old max */
                const float r = expf(m[g] - bm); /* 0 on the first block */
                l[g] *= r;
                for (int d = 0; d < HD; d++) acc[(size_t)g * HD + d] *= r;
                m[g] = bm;
            }
            for (int jj = 0; jj < nb; jj++) sg[jj] -= m[g];
            cpu_vexpf(sg, nb);
            float sum = 0.0f;
            for (int jj = 0; jj < nb; jj++) sum += sg[jj];
            l[g] += sum;
        }
        cached_accumulate(acc, s, v + (size_t)j0 * ld, ld, nb, group, HD);
    }
    for (int g = 0; g < group; g++) {
        const float inv = (float)(1.0 / l[g]);
        for (int d = 0; d < HD; d++) o[(size_t)g * HD + d] = acc[(size_t)g * HD + d] * inv;
        if (lse) lse[g] = (float)((double)m[g] + log(l[g]));
    }
}

void cpu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                           const int32_t *cu_seqlens, int S, int T, int NH, int NKV, int HD)
{
    check_seqlens(cu_seqlens, S, T, NH, NKV, HD);
    const int G = NH / NKV, KVD = NKV * HD;
    assert(G <= CACHED_MAX_GROUP && G * HD <= CACHED_MAX_ACC);
    const float scale = 1.0f / sqrtf((float)HD);
    /* One task per (token t, kv head): its group of query heads attends to
     * keys start..t of t's own sequence. Rows near the end of long sequences
     * cost more, hence the dynamic schedule. */
#pragma omp parallel for schedule(dynamic, 4)
    for (int tk = 0; tk < T * NKV; tk++) {
        const int t = tk / NKV, kvh = tk % NKV, start = cu_seqlens[seq_of(cu_seqlens, S, t)];
        const size_t row = (size_t)t * NH + (size_t)kvh * G; /* the group's first query row */
        const size_t kv0 = (size_t)start * KVD + (size_t)kvh * HD;
        attend_group(out + row * HD, lse + row, q + row * HD, k + kv0, v + kv0, (size_t)KVD, t - start + 1, G, HD,
                     scale);
    }
}

/* The attention backward in blocks of ATT_BLOCK query rows x ATT_BLOCK keys,
 * every product on the GEMM kernels (kernels/cpu/gemm): per block
 *   S = Q K^T (scaled), P = exp(S - lse) (0 above the diagonal),
 *   dP = dO V^T, dS = P (dP - D), dQ += dS K, dK += dS^T Q, dV += P^T dO.
 * The same tasks as the scalar loop below (one per sequence and kv head,
 * owning its dk, dv and the dq of its query heads), so no races and sums in a
 * fixed order. Rows are ld = NH * HD (q, dout, out, dq) or NKV * HD (k, v)
 * apart. */
static void attention_backward_blocked(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                       const float *lse, const float *q, const float *k, const float *v,
                                       const int32_t *cu_seqlens, int S, int NH, int NKV, int HD, float scale)
{
    const int G = NH / NKV;
    const size_t ldq = (size_t)NH * HD, ldk = (size_t)NKV * HD;
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int s = 0; s < S; s++) {
        for (int kvh = 0; kvh < NKV; kvh++) {
            const int start = cu_seqlens[s], end = cu_seqlens[s + 1];
            float P[ATT_BLOCK * ATT_BLOCK], dS[ATT_BLOCK * ATT_BLOCK], D[ATT_BLOCK];
            for (int j = start; j < end; j++) {
                memset(dk + (size_t)j * ldk + (size_t)kvh * HD, 0, (size_t)HD * sizeof(float));
                memset(dv + (size_t)j * ldk + (size_t)kvh * HD, 0, (size_t)HD * sizeof(float));
            }
            for (int h = kvh * G; h < (kvh + 1) * G; h++) {
                for (int i0 = start; i0 < end; i0 += ATT_BLOCK) {
                    const int ni = end - i0 < ATT_BLOCK ? end - i0 : ATT_BLOCK;
                    const float *qb = q + (size_t)i0 * ldq + (size_t)h * HD;
                    const float *dob = dout + (size_t)i0 * ldq + (size_t)h * HD;
                    float *dqb = dq + (size_t)i0 * ldq + (size_t)h * HD;
                    for (int ii = 0; ii < ni; ii++) {
                        D[ii] = dot_f(dob + (size_t)ii * ldq, out + (size_t)(i0 + ii) * ldq + (size_t)h * HD, HD);
                        memset(dqb + (size_t)ii * ldq, 0, (size_t)HD * sizeof(float));
                    }
                    for (int j0 = start; j0 < i0 + ni; j0 += ATT_BLOCK) {
                        const int nj = i0 + ni - j0 < ATT_BLOCK ? i0 + ni - j0 : ATT_BLOCK;
                        const float *kb = k + (size_t)j0 * ldk + (size_t)kvh * HD;
                        const float *vb = v + (size_t)j0 * ldk + (size_t)kvh * HD;
                        cpu_gemm_nt_serial(P, ATT_BLOCK, qb, ldq, kb, ldk, ni, HD, nj);
                        cpu_gemm_nt_serial(dS, ATT_BLOCK, dob, ldq, vb, ldk, ni, HD, nj);
                        for (int ii = 0; ii < ni; ii++) {
                            float *pr = P + ii * ATT_BLOCK, *dr = dS + ii * ATT_BLOCK;
                            const float l = lse[(size_t)(i0 + ii) * NH + h];
                            const int last = i0 + ii - j0; /* keys j0 .. j0 + last are visible */
                            for (int jj = 0; jj < nj; jj++) pr[jj] = jj <= last ? pr[jj] * scale - l : -INFINITY;
                            cpu_vexpf(pr, nj);
                            for (int jj = 0; jj < nj; jj++) dr[jj] = pr[jj] * (dr[jj] - D[ii]);
                        }
                        float *dkb = dk + (size_t)j0 * ldk + (size_t)kvh * HD;
                        float *dvb = dv + (size_t)j0 * ldk + (size_t)kvh * HD;
                        cpu_gemm_nn_acc_serial(dqb, ldq, dS, ATT_BLOCK, 1, kb, ldk, ni, nj, HD);
                        cpu_gemm_nn_acc_serial(dkb, ldk, dS, 1, ATT_BLOCK, qb, ldq, nj, ni, HD);
                        cpu_gemm_nn_acc_serial(dvb, ldk, P, 1, ATT_BLOCK, dob, ldq, nj, ni, HD);
                    }
                    for (int ii = 0; ii < ni; ii++)
                        for (int d = 0; d < HD; d++) dqb[(size_t)ii * ldq + d] *= scale;
                }
            }
            for (int j = start; j < end; j++)
                for (int d = 0; d < HD; d++) dk[(size_t)j * ldk + (size_t)kvh * HD + d] *= scale;
        }
    }
}

void cpu_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                            const float *lse, const float *q, const float *k, const float *v,
                            const int32_t *cu_seqlens, int S, int T, int NH, int NKV, int HD)
{
    check_seqlens(cu_seqlens, S, T, NH, NKV, HD);
    const int G = NH / NKV;
    const float scale = 1.0f / sqrtf((float)HD);
    /* One task per (sequence, kv head): it owns dk and dv of that kv head over
     * the sequence, and dq of the G query heads that share it, so there are no
     * races and every sum runs in a fixed order. For each query row i and key
     * j <= i (flash-attention backward, probabilities recomputed from lse):
     *   P_ij = exp(s_ij - lse_i), dP_ij = dout_i . v_j, D_i = dout_i . out_i,
     *   dS_ij = P_ij (dP_ij - D_i),
     *   dq_i += scale dS_ij k_j, dk_j += scale dS_ij q_i, dv_j += P_ij dout_i. */
    if (cpu_avx512()) {
        attention_backward_blocked(dq, dk, dv, dout, out, lse, q, k, v, cu_seqlens, S, NH, NKV, HD, scale);
        return;
    }
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int s = 0; s < S; s++) {
        for (int kvh = 0; kvh < NKV; kvh++) {
            const int start = cu_seqlens[s], end = cu_seqlens[s + 1];
            for (int j = start; j < end; j++) {
                memset(dk + ((size_t)j * NKV + kvh) * HD, 0, (size_t)HD * sizeof(float));
                memset(dv + ((size_t)j * NKV + kvh) * HD, 0, (size_t)HD * sizeof(float));
            }
            for (int h = kvh * G; h < (kvh + 1) * G; h++) {
                for (int i = start; i < end; i++) {
                    const size_t row = (size_t)i * NH + h;
                    const float *qr = q + row * HD, *dor = dout + row * HD;
                    float *dqr = dq + row * HD;
                    memset(dqr, 0, (size_t)HD * sizeof(float));
                    const float Di = dot_f(dor, out + row * HD, HD);
                    const float lse_i = lse[row];
                    for (int j = start; j <= i; j++) {
                        const size_t krow = ((size_t)j * NKV + kvh) * HD;
                        /* the same expression as the forward's score */
                        float sc = dot_f(qr, k + krow, HD) * scale;
                        float p = expf(sc - lse_i);
                        float dp = dot_f(dor, v + krow, HD);
                        float ds = p * (dp - Di);
                        axpy_f(dqr, ds, k + krow, HD);
                        axpy_f(dk + krow, ds, qr, HD);
                        axpy_f(dv + krow, p, dor, HD);
                    }
#pragma omp simd
                    for (int d = 0; d < HD; d++)
                        dqr[d] *= scale;
                }
            }
            for (int j = start; j < end; j++) {
                float *dkr = dk + ((size_t)j * NKV + kvh) * HD;
#pragma omp simd
                for (int d = 0; d < HD; d++)
                    dkr[d] *= scale;
            }
        }
    }
}

void cpu_attention_cached(float *out, const float *q, const float *kcache, const float *vcache,
                          const int32_t *slot, const int32_t *pos, int T, int NH, int NKV, int HD, int max_len)
{
    assert(NH % NKV == 0 && HD <= CACHED_MAX_HD);
    const int group = NH / NKV, KVD = NKV * HD;
    assert(group <= CACHED_MAX_GROUP && group * HD <= CACHED_MAX_ACC);
    const float scale = 1.0f / sqrtf((float)HD);
    /* one (token, kv head) per task, as the forward: nothing of length pos is
     * stored, each cached row is read once per GQA group */
#pragma omp parallel for schedule(dynamic, 2)
    for (int tk = 0; tk < T * NKV; tk++) {
        const int t = tk / NKV, kvh = tk % NKV;
        assert(pos[t] >= 0 && pos[t] < max_len);
        const size_t row = (size_t)t * NH + (size_t)kvh * group;
        const size_t base = (size_t)slot[t] * max_len * KVD + (size_t)kvh * HD;
        attend_group(out + row * HD, NULL, q + row * HD, kcache + base, vcache + base, (size_t)KVD, pos[t] + 1,
                     group, HD, scale);
    }
}


/* ---- attention against a KV cache ---- */

/* ---- SwiGLU ---- */

/* 1 / (1 + exp(-x)) without overflow for large |x|. */
static inline float sigmoidf_stable(float x)
{
    if (x >= 0.0f)
        return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

/* Elements per task of the SwiGLU forward: exp(-g) for a chunk comes from
 * one vectorised call. */
#define SWIGLU_CHUNK 4096

/* out[i] = g up / (1 + out[i]) where out[i] holds exp(-g) (inf for g < -88:
 * the quotient is then the limit, 0). */
HOT_LOOPS static void swiglu_finish(float *out, const float *gate, const float *up, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++)
        out[i] = gate[i] * up[i] / (1.0f + out[i]);
}

void cpu_swiglu_forward(float *out, const float *gate, const float *up, size_t N)
{
    const size_t chunks = (N + SWIGLU_CHUNK - 1) / SWIGLU_CHUNK;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        const size_t i0 = c * SWIGLU_CHUNK, n = N - i0 < SWIGLU_CHUNK ? N - i0 : SWIGLU_CHUNK;
        for (size_t i = 0; i < n; i++) out[i0 + i] = -gate[i0 + i];
        cpu_vexpf(out + i0, (int)n);
        swiglu_finish(out + i0, gate + i0, up + i0, n);
    }
}

void cpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                         size_t N)
{
    /* d silu(g) / dg = sig(g) (1 + g (1 - sig(g))) */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < N; i++) {
        float g = gate[i], sg = sigmoidf_stable(g);
        float silu = g * sg;
        dgate[i] = dout[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
        dup[i] = dout[i] * silu;
    }
}

/* ---- LM head ---- */

/* z[n,V] = (h[n,C] @ w[V,C]^T) * inv_temp, the product first and the scaling
 * in fp32 after it: the engine scales its logits the same way, so equal
 * hidden states give it and the trainer equal logits. */
static void head_logits(float *z, const float *h, const float *w, int n, int C, int V, float inv_temp)
{
    cpu_matmul_forward(z, h, w, NULL, n, C, V);
    if (inv_temp != 1.0f) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < n; r++)
            for (size_t j = 0; j < (size_t)V; j++)
                z[(size_t)r * V + j] *= inv_temp;
    }
}

void cpu_head_forward(float *logprob, float *entropy, float *logits_out, const float *h, const float *w,
                      const int32_t *targets, int T, int C, int V, float inv_temp, float *scratch)
{
    for (int t0 = 0; t0 < T; t0 += CPU_HEAD_CHUNK) {
        const int n = T - t0 < CPU_HEAD_CHUNK ? T - t0 : CPU_HEAD_CHUNK;
        head_logits(scratch, h + (size_t)t0 * C, w, n, C, V, inv_temp);
#pragma omp parallel for schedule(static)
        for (int r = 0; r < n; r++) {
            const int t = t0 + r;
            const float *z = scratch + (size_t)r * V;
            assert(targets[t] >= 0 && targets[t] < V);
            double lse, H;
            cpu_row_lse_entropy(z, V, &lse, &H);
            logprob[t] = (float)((double)z[targets[t]] - lse);
            entropy[t] = (float)H;
            if (logits_out)
                memcpy(logits_out + (size_t)t * V, z, (size_t)V * sizeof(float));
        }
    }
}

void cpu_head_backward(float *dh, float *dw, const float *dlogprob, const float *dentropy, const float *h,
                       const float *w, const int32_t *targets, int T, int C, int V, float inv_temp,
                       float *scratch)
{
    for (int t0 = 0; t0 < T; t0 += CPU_HEAD_CHUNK) {
        const int n = T - t0 < CPU_HEAD_CHUNK ? T - t0 : CPU_HEAD_CHUNK;
        const float *hc = h + (size_t)t0 * C;
        head_logits(scratch, hc, w, n, C, V, inv_temp);
        /* z -> dz in place: with log p_j = z_j - lse,
         *   dz_j = dlogprob (1[j = target] - p_j) - dentropy p_j (log p_j + H) */
#pragma omp parallel for schedule(static)
        for (int r = 0; r < n; r++) {
            const int t = t0 + r;
            float *z = scratch + (size_t)r * V;
            assert(targets[t] >= 0 && targets[t] < V);
            double lse, H;
            cpu_row_lse_entropy(z, V, &lse, &H);
            const double dl = dlogprob[t], de = dentropy ? dentropy[t] : 0.0;
            const int tgt = targets[t];
            /* z = inv_temp * a with a = h w^T, so d/da = inv_temp dz */
            for (int j = 0; j < V; j++) {
                double logp = (double)z[j] - lse, p = exp(logp);
                z[j] = (float)(inv_temp * (dl * ((j == tgt ? 1.0 : 0.0) - p) - de * p * (logp + H)));
            }
        }
        /* dh[n,C] += da[n,V] @ w[V,C];  dw[V,C] += da^T[V,n] @ h[n,C]. The
         * second sums over only n <= CPU_HEAD_CHUNK tokens, where OpenBLAS's
         * packing is not amortised: the NN kernel whenever it can run. */
        if (cpu_avx512() && !cpu_blas_avx512())
            cpu_gemm_nn_acc(dh + (size_t)t0 * C, (size_t)C, scratch, (size_t)V, 1, w, (size_t)C, n, V, C);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, C, V, 1.0f, scratch, V, w, C, 1.0f,
                        dh + (size_t)t0 * C, C);
        if (cpu_avx512())
            cpu_gemm_nn_acc(dw, (size_t)C, scratch, 1, (size_t)V, hc, (size_t)C, V, n, C);
        else
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, V, C, n, 1.0f, scratch, V, hc, C, 1.0f, dw, C);
    }
}

/* ---- threads ---- */

void cpu_set_threads(int n)
{
    if (n <= 0)
        n = omp_get_num_procs();
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
}

int cpu_threads(void)
{
    return omp_get_max_threads();
}
