/* softmax.c - row statistics of logits (see softmax.h for the contract).
 *
 * The vocabulary is the long axis (32 k .. 150 k): a sampler or LM head spends
 * its time in V exponentials per row. glibc's scalar exp costs ~3.6 ns, so a
 * 32-row decode step spent ~2 ms there on 2 cores; libmvec's AVX-512 expf
 * does 16 per call at a small fraction of that.
 */
#include "kernels/cpu/softmax.h"

#include <assert.h>
#include <math.h>
#include <stddef.h>

#include "kernels/cpu/gemm.h" /* cpu_avx512: the same AVX-512F + VL test */

/* ---- scalar: the definition, and the path without AVX-512 ---- */

static float row_max_scalar(const float *z, int V, float scale, int *argmax)
{
    float m = z[0] * scale;
    int a = 0;
    for (int j = 1; j < V; j++) {
        const float x = z[j] * scale;
        if (x > m) {
            m = x;
            a = j;
        }
    }
    if (argmax) *argmax = a;
    return m;
}

/* se = sum e_j, sy = sum e_j y_j (sy only when want_sy). */
static void row_sums_scalar(const float *z, int V, float scale, float m, float *terms, double *se, double *sy,
                            int want_sy)
{
    double s = 0.0, t = 0.0;
    for (int j = 0; j < V; j++) {
        const float y = z[j] * scale - m, e = expf(y);
        if (terms) terms[j] = e;
        s += (double)e;
        if (want_sy) t += (double)e * (double)y;
    }
    *se = s;
    *sy = t;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512vl")))

/* glibc libmvec, x86-64 vector function ABI: expf on 16 lanes (AVX-512).
 * Declared with the AVX-512 target of its callers: its __m512 argument and
 * result travel in a zmm register, which clang otherwise reports (-Wpsabi)
 * as an ABI change at every call. */
AVX512 extern __m512 _ZGVeN16v_expf(__m512 x);

AVX512 static float row_max_avx512(const float *z, int V, float scale, int *argmax)
{
    const __m512 sc = _mm512_set1_ps(scale), ninf = _mm512_set1_ps(-INFINITY);
    __m512 mv = ninf;
    int j = 0;
    for (; j + 16 <= V; j += 16) mv = _mm512_max_ps(mv, _mm512_mul_ps(_mm512_loadu_ps(z + j), sc));
    if (j < V) {
        const __mmask16 k = (__mmask16)((1u << (V - j)) - 1);
        mv = _mm512_mask_max_ps(mv, k, mv, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, z + j), sc));
    }
    const float m = _mm512_reduce_max_ps(mv);
    if (argmax) { /* the first j whose z_j * scale equals m (as the scalar loop finds it) */
        *argmax = 0;
        const __m512 mb = _mm512_set1_ps(m);
        for (j = 0; j < V; j += 16) {
            const __mmask16 k = V - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (V - j)) - 1);
            const __mmask16 hit =
                _mm512_mask_cmp_ps_mask(k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, z + j), sc), mb, _CMP_EQ_OQ);
            if (hit) {
                *argmax = j + __builtin_ctz(hit);
                break;
            }
        }
    }
    return m;
}

/* Add the 16 floats of v to two double accumulators (lanes 0-7, 8-15). */
#define ACC_PD(lo, hi, v)                                                                          \
    do {                                                                                           \
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));                         \
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))); \
    } while (0)

AVX512 static void row_sums_avx512(const float *z, int V, float scale, float m, float *terms, double *se,
                                   double *sy, int want_sy)
{
    const __m512 sc = _mm512_set1_ps(scale), mv = _mm512_set1_ps(m);
    __m512d s_lo = _mm512_setzero_pd(), s_hi = s_lo, t_lo = s_lo, t_hi = s_lo;
    for (int j = 0; j < V; j += 16) {
        const __mmask16 k = V - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (V - j)) - 1);
        /* lanes past V: y = 0, e forced to 0, so e y = 0 too */
        const __m512 y = _mm512_maskz_sub_ps(k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, z + j), sc), mv);
        const __m512 e = _mm512_maskz_mov_ps(k, _ZGVeN16v_expf(y));
        if (terms) _mm512_mask_storeu_ps(terms + j, k, e);
        ACC_PD(s_lo, s_hi, e);
        if (want_sy) {
            const __m512 ey = _mm512_mul_ps(e, y); /* exact enough: each product rounds once, the sum is in double */
            ACC_PD(t_lo, t_hi, ey);
        }
    }
    *se = _mm512_reduce_add_pd(_mm512_add_pd(s_lo, s_hi));
    *sy = _mm512_reduce_add_pd(_mm512_add_pd(t_lo, t_hi));
}

AVX512 static void vexpf_avx512(float *x, int n)
{
    for (int j = 0; j < n; j += 16) {
        const __mmask16 k = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
        _mm512_mask_storeu_ps(x + j, k, _ZGVeN16v_expf(_mm512_maskz_loadu_ps(k, x + j)));
    }
}

#define HAVE_AVX512() cpu_avx512()
#else
static void vexpf_avx512(float *x, int n) { (void)x, (void)n; }
#define HAVE_AVX512() 0
#define row_max_avx512 row_max_scalar
#define row_sums_avx512 row_sums_scalar
#endif

float cpu_row_max(const float *z, int V, float scale, int *argmax)
{
    assert(V >= 1);
    return HAVE_AVX512() ? row_max_avx512(z, V, scale, argmax) : row_max_scalar(z, V, scale, argmax);
}

double cpu_row_sumexp(const float *z, int V, float scale, float m, float *terms)
{
    double se, sy;
    if (HAVE_AVX512())
        row_sums_avx512(z, V, scale, m, terms, &se, &sy, 0);
    else
        row_sums_scalar(z, V, scale, m, terms, &se, &sy, 0);
    return se;
}

void cpu_row_lse_entropy(const float *z, int V, double *lse, double *H)
{
    const float m = cpu_row_max(z, V, 1.0f, NULL);
    double se, sy;
    if (HAVE_AVX512())
        row_sums_avx512(z, V, 1.0f, m, NULL, &se, &sy, 1);
    else
        row_sums_scalar(z, V, 1.0f, m, NULL, &se, &sy, 1);
    const double ls = log(se);
    *lse = (double)m + ls;
    *H = ls - sy / se;
}

void cpu_vexpf(float *x, int n)
{
    if (HAVE_AVX512()) {
        vexpf_avx512(x, n);
        return;
    }
    for (int i = 0; i < n; i++) x[i] = expf(x[i]);
}
