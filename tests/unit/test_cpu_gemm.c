/* test_cpu_gemm.c - the AVX-512 linear forward (kernels/cpu/gemm) and the
 * logits row statistics and vectorised expf (kernels/cpu/softmax) against
 * double-precision references, on every edge of their tiling: M, N and K
 * not multiples of 4 / 16 / 64, K across the K blocks, M across
 * ROW_BLOCK. Plus the exact properties the engine relies on: a row's result
 * does not depend on M or on the thread count, and nothing outside `out` is
 * written. The portable paths (OpenBLAS, scalar loops) run through the same
 * checks with cpu_avx512_allow(false).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/softmax.h"

static uint64_t rng_state = 1;
static float frand(void) /* uniform in [-1, 1) (splitmix64) */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}
static float *frandom(size_t n, float scale)
{
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) exit(2);
    for (size_t i = 0; i < n; i++) p[i] = scale * frand();
    return p;
}

#define GUARD 37 /* floats past out that must stay untouched */
static const float SENTINEL = 12345.678f;

/* cpu_matmul_forward (which takes the AVX-512 kernel when allowed) for one
 * shape against double: |err| <= 4e-7 * sum_k |x w| + tiny, per element. */
static int gemm_case(int M, int N, int K, int with_bias, double *worst)
{
    float *x = frandom((size_t)M * K, 1.0f), *w = frandom((size_t)N * K, 0.5f), *b = frandom((size_t)N, 1.0f);
    float *out = malloc(((size_t)M * N + GUARD) * sizeof(float));
    if (!out) exit(2);
    for (size_t i = 0; i < (size_t)M * N + GUARD; i++) out[i] = SENTINEL;
    cpu_matmul_forward(out, x, w, with_bias ? b : NULL, M, K, N);
    int ok = 1;
    for (int i = 0; i < M && ok; i++)
        for (int j = 0; j < N; j++) {
            double ref = with_bias ? b[j] : 0.0, mag = fabs(ref);
            for (int k = 0; k < K; k++) {
                double p = (double)x[(size_t)i * K + k] * w[(size_t)j * K + k];
                ref += p;
                mag += fabs(p);
            }
            double err = fabs(out[(size_t)i * N + j] - ref) / (mag + 1e-30);
            if (err > *worst) *worst = err;
            if (!(err <= 4e-7 * sqrt((double)K + 1) + 1e-7)) {
                fprintf(stderr, "  M %d N %d K %d bias %d: out[%d,%d] = %.9g, want %.9g\n", M, N, K, with_bias, i,
                        j, out[(size_t)i * N + j], ref);
                ok = 0;
                break;
            }
        }
    for (int g = 0; g < GUARD && ok; g++)
        if (out[(size_t)M * N + g] != SENTINEL) {
            fprintf(stderr, "  M %d N %d K %d: wrote past out (+%d)\n", M, N, K, g);
            ok = 0;
        }
    free(x), free(w), free(b), free(out);
    return ok;
}

static const int SHAPES[][3] = {
    {1, 1, 1},     {1, 4, 16},     {2, 3, 5},      {3, 5, 15},     {4, 4, 17},    {5, 7, 33},
    {7, 9, 100},   {8, 8, 512},    {9, 13, 513},   {31, 17, 64},   {32, 128, 512}, {33, 129, 511},
    {1, 1000, 77}, {64, 6, 1024},  {65, 10, 1100}, {130, 11, 37},  {3, 2, 1537},  {200, 33, 260},
};

static void run_gemm_shapes(const char *label)
{
    double worst = 0.0;
    int n = 0;
    for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++)
        for (int bias = 0; bias < 2; bias++, n++)
            CHECK(gemm_case(SHAPES[s][0], SHAPES[s][1], SHAPES[s][2], bias, &worst));
    printf("  %s: %d shapes, worst error %.2e of sum |x w|\n", label, n, worst);
}

static void test_gemm_against_double(void)
{
    rng_state = 11;
    if (!cpu_avx512()) {
        printf("  no AVX-512 on this CPU: the linear forward is OpenBLAS's (checked below)\n");
        return;
    }
    run_gemm_shapes("AVX-512 kernel");
}

static void test_gemm_blas_path(void)
{
    rng_state = 12;
    cpu_avx512_allow(false);
    run_gemm_shapes("OpenBLAS path");
    cpu_avx512_allow(true);
}

/* The engine decodes 1 or 64 sequences per step: a row must give the same
 * bits either way, and with 1 or 2 threads. */
static void test_gemm_row_and_thread_invariance(void)
{
    if (!cpu_avx512()) {
        printf("  skipped: no AVX-512\n");
        return;
    }
    rng_state = 13;
    const int M = 37, N = 70, K = 1100;
    float *x = frandom((size_t)M * K, 1.0f), *w = frandom((size_t)N * K, 0.5f), *b = frandom(N, 1.0f);
    float *all = malloc((size_t)M * N * sizeof(float)), *one = malloc((size_t)N * sizeof(float)),
          *t1 = malloc((size_t)M * N * sizeof(float));
    const int saved = cpu_threads();
    cpu_set_threads(2);
    cpu_gemm_nt(all, x, w, b, M, K, N);
    int rows_same = 1;
    for (int i = 0; i < M; i++) {
        cpu_gemm_nt(one, x + (size_t)i * K, w, b, 1, K, N);
        rows_same &= memcmp(one, all + (size_t)i * N, (size_t)N * sizeof(float)) == 0;
    }
    cpu_set_threads(1);
    cpu_gemm_nt(t1, x, w, b, M, K, N);
    cpu_set_threads(saved);
    const int threads_same = memcmp(t1, all, (size_t)M * N * sizeof(float)) == 0;
    free(x), free(w), free(b), free(all), free(one), free(t1);
    CHECK_MSG(rows_same, "a row computed alone differs from the same row in a batch of %d", M);
    CHECK_MSG(threads_same, "1 and 2 threads give different bits");
}

/* The serial, strided forms the attention uses: results against double, and
 * the padding between out's rows untouched. */
static void test_gemm_serial_strided(void)
{
    if (!cpu_avx512()) {
        printf("  skipped: no AVX-512 (the attention takes its portable loops)\n");
        return;
    }
    rng_state = 14;
    static const int SH[][3] = {{1, 1, 1}, {7, 22, 72}, {4, 64, 64}, {5, 65, 130}, {3, 3, 600}};
    for (size_t c = 0; c < sizeof SH / sizeof SH[0]; c++) {
        const int M = SH[c][0], N = SH[c][1], K = SH[c][2];
        const size_t ldx = (size_t)K + 3, ldw = (size_t)K + 5, ldo = (size_t)N + 7, ldv = (size_t)N + 2;
        float *x = frandom((size_t)M * ldx, 1), *w = frandom((size_t)N * ldw, 1), *v = frandom((size_t)K * ldv, 1);
        float *o1 = malloc((size_t)M * ldo * sizeof(float)), *o2 = frandom((size_t)M * ldo, 1);
        float *o2_before = malloc((size_t)M * ldo * sizeof(float));
        memcpy(o2_before, o2, (size_t)M * ldo * sizeof(float));
        for (size_t i = 0; i < (size_t)M * ldo; i++) o1[i] = SENTINEL;
        cpu_gemm_nt_serial(o1, ldo, x, ldx, w, ldw, M, K, N);
        /* p = x's first K columns as [M, K] weights over v's K rows */
        cpu_gemm_nn_acc_serial(o2, ldo, x, ldx, 1, v, ldv, M, K, N);
        int ok = 1;
        for (int i = 0; i < M; i++)
            for (size_t j = 0; j < ldo; j++) {
                const size_t at = (size_t)i * ldo + j;
                if (j >= (size_t)N) {
                    ok &= o1[at] == SENTINEL && o2[at] == o2_before[at];
                    continue;
                }
                double r1 = 0.0, m1 = 0.0, r2 = o2_before[at], m2 = fabs(r2);
                for (int k = 0; k < K; k++) {
                    double a = (double)x[(size_t)i * ldx + k] * w[j * ldw + k];
                    double b = (double)x[(size_t)i * ldx + k] * v[(size_t)k * ldv + j];
                    r1 += a, m1 += fabs(a), r2 += b, m2 += fabs(b);
                }
                ok &= fabs(o1[at] - r1) <= 1e-6 * m1 + 1e-30 && fabs(o2[at] - r2) <= 1e-6 * m2 + 1e-30;
            }
        free(x), free(w), free(v), free(o1), free(o2), free(o2_before);
        CHECK_MSG(ok, "M %d N %d K %d: a result is off, or the padding between rows was written", M, N, K);
    }
}

/* The backward's products: out += p v with p as given (dinp += dout w) and
 * transposed (dw += dout^T x), against double, across NN_K_BLOCK (128),
 * ROW_BLOCK (64) and the 64-column strips; bit-identical with 1 and 2 threads. */
static void test_gemm_nn_acc(void)
{
    if (!cpu_avx512()) {
        printf("  skipped: no AVX-512 (the backward is OpenBLAS's)\n");
        return;
    }
    rng_state = 15;
    static const int SH[][3] = {{1, 1, 1}, {3, 5, 7}, {4, 128, 64}, {5, 129, 65}, {70, 300, 130}, {130, 17, 200}};
    double worst = 0.0;
    for (size_t c = 0; c < sizeof SH / sizeof SH[0]; c++)
        for (int tr = 0; tr < 2; tr++) {
            const int M = SH[c][0], K = SH[c][1], N = SH[c][2];
            /* p is [M, K] (pi = K, pk = 1) or stored as [K, M] (pi = 1, pk = M) */
            const size_t pi = tr ? 1 : (size_t)K, pk = tr ? (size_t)M : 1;
            float *p = frandom((size_t)M * K, 1), *v = frandom((size_t)K * N, 1), *o = frandom((size_t)M * N, 1);
            float *o0 = malloc((size_t)M * N * sizeof(float)), *o1 = malloc((size_t)M * N * sizeof(float));
            memcpy(o0, o, (size_t)M * N * sizeof(float));
            memcpy(o1, o, (size_t)M * N * sizeof(float));
            const int saved = cpu_threads();
            cpu_set_threads(2);
            cpu_gemm_nn_acc(o, (size_t)N, p, pi, pk, v, (size_t)N, M, K, N);
            cpu_set_threads(1);
            cpu_gemm_nn_acc(o1, (size_t)N, p, pi, pk, v, (size_t)N, M, K, N);
            cpu_set_threads(saved);
            int ok = memcmp(o, o1, (size_t)M * N * sizeof(float)) == 0;
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double r = o0[(size_t)i * N + j], mag = fabs(r);
                    for (int k = 0; k < K; k++) {
                        double a = (double)p[i * pi + k * pk] * v[(size_t)k * N + j];
                        r += a, mag += fabs(a);
                    }
                    double e = fabs(o[(size_t)i * N + j] - r) / (mag + 1e-30);
                    worst = fmax(worst, e);
                    ok &= e <= 4e-7 * sqrt((double)K + 1) + 1e-7;
                }
            free(p), free(v), free(o), free(o0), free(o1);
            CHECK_MSG(ok, "M %d K %d N %d %s: off against double, or 1 and 2 threads differ", M, K, N,
                      tr ? "transposed" : "as given");
        }
    printf("  NN accumulate: worst error %.2e of sum |p v|, threads 1 = 2 bit for bit\n", worst);
}

/* ---- softmax row statistics ---- */

static void row_stats_cases(const char *label)
{
    static const int VS[] = {1, 2, 15, 16, 17, 100, 1000, 32771};
    double worst_se = 0.0, worst_h = 0.0;
    for (size_t c = 0; c < sizeof VS / sizeof VS[0]; c++) {
        const int V = VS[c];
        float *z = frandom((size_t)V, 8.0f), *terms = malloc((size_t)V * sizeof(float));
        if (V > 3) z[V / 3] = z[V - 1] = 9.5f; /* a tie for the maximum: the first wins */
        for (int si = 0; si < 2; si++) {
            const float scale = si ? 1.0f / 0.7f : 1.0f;
            int am = -1;
            const float m = cpu_row_max(z, V, scale, &am);
            float mref = z[0] * scale;
            int aref = 0;
            for (int j = 1; j < V; j++)
                if (z[j] * scale > mref) mref = z[j] * scale, aref = j;
            CHECK_MSG(m == mref && am == aref, "%s V %d: max %g at %d, want %g at %d", label, V, m, am, mref, aref);
            const double se = cpu_row_sumexp(z, V, scale, m, terms);
            double ref = 0.0, tsum = 0.0;
            for (int j = 0; j < V; j++) {
                ref += exp((double)(z[j] * scale) - (double)m);
                tsum += (double)terms[j];
            }
            worst_se = fmax(worst_se, fabs(se - ref) / ref);
            CHECK_MSG(fabs(se - ref) <= 1e-6 * ref, "%s V %d: sumexp %.12g, want %.12g", label, V, se, ref);
            CHECK_MSG(tsum == se || fabs(tsum - se) <= 1e-12 * se, "%s V %d: the terms do not add up to the sum",
                      label, V);
        }
        double lse, H, lref, href, se = 0.0, sy = 0.0, mx = z[0];
        cpu_row_lse_entropy(z, V, &lse, &H);
        for (int j = 1; j < V; j++) mx = fmax(mx, z[j]);
        for (int j = 0; j < V; j++) {
            double y = z[j] - mx, e = exp(y);
            se += e, sy += e * y;
        }
        lref = mx + log(se), href = log(se) - sy / se;
        worst_h = fmax(worst_h, fabs(H - href));
        CHECK_MSG(fabs(lse - lref) <= 1e-6 && fabs(H - href) <= 1e-6 * fmax(1.0, href),
                  "%s V %d: lse %.9g H %.9g, want %.9g %.9g", label, V, lse, H, lref, href);
        free(z), free(terms);
    }
    printf("  %s: sumexp within %.1e relative, entropy within %.1e\n", label, worst_se, worst_h);
}

static void vexpf_cases(const char *label)
{
    enum { N = 1000 };
    float x[N + 3];
    for (int i = 0; i < N; i++) x[i] = -100.0f + 188.0f * (float)i / (N - 1); /* [-100, 88] */
    x[N] = -INFINITY, x[N + 1] = 100.0f, x[N + 2] = 0.0f;
    float y[N + 3];
    memcpy(y, x, sizeof x);
    cpu_vexpf(y, N + 3);
    double worst = 0.0;
    for (int i = 0; i < N; i++) {
        double ref = exp((double)x[i]), rel = fabs(y[i] - ref) / ref;
        if (ref >= 1.2e-38) worst = fmax(worst, rel); /* normal results; subnormals by the absolute bound */
        CHECK_MSG(rel < 4e-7 || (ref < 1.2e-38 && fabs(y[i] - ref) < 1e-44), "%s: expf(%.9g) = %.9g, want %.9g",
                  label, x[i], y[i], ref);
    }
    CHECK(y[N] == 0.0f && isinf(y[N + 1]) && y[N + 2] == 1.0f);
    printf("  %s: expf within %.1e relative on [-87, 88] (normal results)\n", label, worst);
}

static void test_row_stats(void)
{
    rng_state = 21;
    if (cpu_avx512()) {
        row_stats_cases("AVX-512");
        vexpf_cases("AVX-512");
    } else {
        printf("  no AVX-512 on this CPU: the scalar path only\n");
    }
    cpu_avx512_allow(false);
    row_stats_cases("scalar");
    vexpf_cases("scalar");
    cpu_avx512_allow(true);
}

int main(void)
{
    RUN(test_gemm_against_double);
    RUN(test_gemm_blas_path);
    RUN(test_gemm_row_and_thread_invariance);
    RUN(test_gemm_serial_strided);
    RUN(test_gemm_nn_acc);
    RUN(test_row_stats);
    return check_summary();
}
