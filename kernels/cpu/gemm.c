/* gemm.c - y = x W^T with AVX-512, no packing (see gemm.h for the contract).
 *
 * The micro-kernel computes a tile of 4 rows of x by 4 rows of W: 16
 * accumulators of 16 lanes, each the lane-wise partial sums of one dot product
 * along K (K's tail by masked loads). Per 16 values of K it loads 4 + 4
 * vectors for 16 FMAs, so the FMA units, not the loads, are the limit. At the
 * end the 16 accumulators are reduced across lanes together (three rounds of
 * shuffles and adds, ~3 instructions per output, under 10 % of the FMAs at
 * K = 512) into one vector that holds the tile's 16 outputs row by row.
 *
 * Loop order: each thread owns a contiguous range of W's 4-row tiles; x is
 * walked in blocks of ROW_BLOCK rows and K in blocks of K_BLOCK, and for each
 * W tile every 4-row tile of the block reuses it from L1 (8 KiB). A K longer
 * than K_BLOCK is summed block by block into out (at K = 1536 without blocks,
 * the 24 KiB tile and the x rows streaming past it thrashed L1: 240 against
 * 430 GFLOP/s at K = 512). The order of every sum depends on K alone, never
 * on M, N, the tile or the thread, so a row's result is the same bits in a
 * decode step of 1 or of 64 sequences. While it computes, the
 * kernel prefetches the thread's next W tile: at small M (decode) W streams
 * from memory once per call and this hides that stream behind the arithmetic
 * (the LM head's 64 MiB at M = 32 went from 4.6 to 3.7 ms).
 *
 * Edge tiles (M or N not a multiple of 4) run the same kernel with the
 * missing rows pointing at the last real one and only the real outputs
 * stored, so there is one code path for every shape.
 */
#include "kernels/cpu/gemm.h"

#include <assert.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define ROW_BLOCK 64 /* rows of x per block: 64 x K_BLOCK floats stay in L2 */
#define K_BLOCK 512  /* a 4-row W tile of 8 KiB and 4 rows of x stay in L1 together */
#define NN_K_BLOCK 128 /* NN: a 128-row x 64-column strip of v (32 KiB) stays in L1 */

#define AVX512 __attribute__((target("avx512f,avx512vl")))
#define AVX512_INLINE __attribute__((target("avx512f,avx512vl"), always_inline)) static inline

/* Lane-wise: for each 128-bit lane L, [part_L(a), part_L(b), part_L(c), part_L(d)]
 * where part_L(v) is the sum of v's 4 floats in lane L. */
AVX512_INLINE __m512 reduce4(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    return _mm512_add_ps(_mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(ab, cd, _MM_SHUFFLE(3, 2, 3, 2)));
}

/* From four reduce4 results: lane i of the answer holds the sum over the four
 * 128-bit lanes of v_i, i.e. [sums of v0 | sums of v1 | sums of v2 | sums of v3]. */
AVX512_INLINE __m512 reduce_lanes(__m512 v0, __m512 v1, __m512 v2, __m512 v3)
{
    __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(v0, v1, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_f32x4(v2, v3, _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(s01, s23, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* acc_ij += x_i * w_j for the 4 x 4 tile (x_i, w_j: this step's 16 values of K). */
#define TILE_FMA(i)                                  \
    a##i##0 = _mm512_fmadd_ps(x##i##v, w0v, a##i##0); \
    a##i##1 = _mm512_fmadd_ps(x##i##v, w1v, a##i##1); \
    a##i##2 = _mm512_fmadd_ps(x##i##v, w2v, a##i##2); \
    a##i##3 = _mm512_fmadd_ps(x##i##v, w3v, a##i##3);

/* For i < mr, j < nr (1..4 each), with d_ij = dot(x[i, 0:K], w[j, 0:K]):
 * out[i, j] = d_ij + bias[j] when bias is not NULL, else out[i, j] += d_ij.
 * x rows ldx apart, w rows ldw apart, out rows ldo apart. pf, when not NULL,
 * is the next W tile to prefetch (4 rows, ldw apart, of K). */
/* The "bias" of a first K block without one: the tile then writes, not adds. */
static const float zeros[4] = {0};

AVX512 static void tile_4x4(float *out, size_t ldo, const float *x, size_t ldx, const float *w, size_t ldw,
                            int K, const float *bias, int mr, int nr, const float *pf)
{
    const float *x0 = x, *x1 = x + (size_t)(mr > 1 ? 1 : 0) * ldx, *x2 = x + (size_t)(mr > 2 ? 2 : mr - 1) * ldx,
                *x3 = x + (size_t)(mr > 3 ? 3 : mr - 1) * ldx;
    const size_t k1 = (size_t)(nr > 1 ? 1 : 0) * ldw, k2 = (size_t)(nr > 2 ? 2 : nr - 1) * ldw,
                 k3 = (size_t)(nr > 3 ? 3 : nr - 1) * ldw;
    const float *w0 = w, *w1 = w + k1, *w2 = w + k2, *w3 = w + k3;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00,
           a13 = a00, a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    /* whether to prefetch is decided once, outside the loop */
#define TILE_STEP(prefetch)                                                                                      \
    do {                                                                                                        \
        __m512 w0v = _mm512_loadu_ps(w0 + k), w1v = _mm512_loadu_ps(w1 + k), w2v = _mm512_loadu_ps(w2 + k),     \
               w3v = _mm512_loadu_ps(w3 + k);                                                                   \
        __m512 x0v = _mm512_loadu_ps(x0 + k), x1v = _mm512_loadu_ps(x1 + k), x2v = _mm512_loadu_ps(x2 + k),     \
               x3v = _mm512_loadu_ps(x3 + k);                                                                   \
        if (prefetch) {                                                                                         \
            _mm_prefetch((const char *)(pf + k), _MM_HINT_T0);                                                  \
            _mm_prefetch((const char *)(pf + ldw + k), _MM_HINT_T0);                                            \
            _mm_prefetch((const char *)(pf + 2 * ldw + k), _MM_HINT_T0);                                        \
            _mm_prefetch((const char *)(pf + 3 * ldw + k), _MM_HINT_T0);                                        \
        }                                                                                                       \
        TILE_FMA(0) TILE_FMA(1) TILE_FMA(2) TILE_FMA(3)                                                         \
    } while (0)
    int k = 0;
    if (pf)
        for (; k + 16 <= K; k += 16) TILE_STEP(1);
    else
        for (; k + 16 <= K; k += 16) TILE_STEP(0);
#undef TILE_STEP
    if (k < K) {
        const __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
        __m512 w0v = _mm512_maskz_loadu_ps(m, w0 + k), w1v = _mm512_maskz_loadu_ps(m, w1 + k),
               w2v = _mm512_maskz_loadu_ps(m, w2 + k), w3v = _mm512_maskz_loadu_ps(m, w3 + k);
        __m512 x0v = _mm512_maskz_loadu_ps(m, x0 + k), x1v = _mm512_maskz_loadu_ps(m, x1 + k),
               x2v = _mm512_maskz_loadu_ps(m, x2 + k), x3v = _mm512_maskz_loadu_ps(m, x3 + k);
        TILE_FMA(0) TILE_FMA(1) TILE_FMA(2) TILE_FMA(3)
    }
    /* r = [out row 0 (4) | row 1 | row 2 | row 3] */
    __m512 r = reduce_lanes(reduce4(a00, a01, a02, a03), reduce4(a10, a11, a12, a13),
                            reduce4(a20, a21, a22, a23), reduce4(a30, a31, a32, a33));
    const __mmask8 cols = (__mmask8)((1u << nr) - 1);
    const __m128 b = bias ? _mm_maskz_loadu_ps(cols, bias) : _mm_setzero_ps();
#define TILE_STORE(i)                                                                            \
    do {                                                                                         \
        float *o_ = out + (size_t)(i) * ldo;                                                     \
        const __m128 base_ = bias ? b : _mm_maskz_loadu_ps(cols, o_);                            \
        _mm_mask_storeu_ps(o_, cols, _mm_add_ps(base_, _mm512_extractf32x4_ps(r, i)));           \
    } while (0)
    TILE_STORE(0);
    if (mr > 1) TILE_STORE(1);
    if (mr > 2) TILE_STORE(2);
    if (mr > 3) TILE_STORE(3);
#undef TILE_STORE
}

static bool avx512_allowed = true;

bool cpu_avx512(void)
{
    static int have = -1; /* a benign race: every thread computes the same answer */
    if (have < 0) {
        __builtin_cpu_init();
        const char *off = getenv("TIDAL_NO_AVX512"); /* for comparisons: the portable paths */
        have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") && !(off && *off) ? 1 : 0;
    }
    return have == 1 && avx512_allowed;
}

void cpu_avx512_allow(bool on) { avx512_allowed = on; }

char *openblas_get_corename(void); /* OpenBLAS, not in its cblas.h */

static bool blas_allowed = true;

void cpu_blas_allow(bool on) { blas_allowed = on; }

bool cpu_blas_avx512(void)
{
    static int have = -1;
    if (have < 0) {
        const char *core = openblas_get_corename();
        have = core && (!strcasecmp(core, "skylakex") || !strcasecmp(core, "cooperlake") ||
                        !strcasecmp(core, "sapphirerapids"));
    }
    return have == 1 && blas_allowed && cpu_avx512();
}

void cpu_gemm_nt(float *out, const float *x, const float *w, const float *bias, int M, int K, int N)
{
    assert(M >= 1 && N >= 1 && K >= 1 && cpu_avx512());
    const int tiles = (N + 3) / 4;
#pragma omp parallel
    {
        const int nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int j0 = (int)((long)tiles * id / nt), j1 = (int)((long)tiles * (id + 1) / nt);
        for (int m0 = 0; m0 < M; m0 += ROW_BLOCK) {
            const int m1 = M - m0 < ROW_BLOCK ? M : m0 + ROW_BLOCK;
            for (int k0 = 0; k0 < K; k0 += K_BLOCK) {
                const int kb = K - k0 < K_BLOCK ? K - k0 : K_BLOCK;
                for (int j = j0; j < j1; j++) {
                    const int n0 = 4 * j, nr = N - n0 < 4 ? N - n0 : 4;
                    const float *wj = w + (size_t)n0 * K + k0;
                    const float *pf = j + 1 < j1 && n0 + 8 <= N ? wj + 4 * (size_t)K : NULL; /* a whole next tile */
                    /* the first K block writes bias + its part, the later ones add theirs */
                    const float *b = k0 > 0 ? NULL : bias ? bias + n0 : zeros;
                    for (int i = m0; i < m1; i += 4)
                        tile_4x4(out + (size_t)i * N + n0, (size_t)N, x + (size_t)i * K + k0, (size_t)K, wj,
                                 (size_t)K, kb, b, m1 - i < 4 ? m1 - i : 4, nr, pf);
                }
            }
        }
    }
}

void cpu_gemm_nt_serial(float *out, size_t ldo, const float *x, size_t ldx, const float *w, size_t ldw, int M,
                        int K, int N)
{
    assert(M >= 1 && N >= 1 && K >= 1 && cpu_avx512());
    for (int k0 = 0; k0 < K; k0 += K_BLOCK) {
        const int kb = K - k0 < K_BLOCK ? K - k0 : K_BLOCK;
        for (int n0 = 0; n0 < N; n0 += 4)
            for (int i = 0; i < M; i += 4)
                tile_4x4(out + (size_t)i * ldo + n0, ldo, x + (size_t)i * ldx + k0, ldx, w + (size_t)n0 * ldw + k0,
                         ldw, kb, k0 > 0 ? NULL : zeros, M - i < 4 ? M - i : 4, N - n0 < 4 ? N - n0 : 4, NULL);
    }
}

/* A 4-row x 64-column tile of out += p v: 16 accumulators, per k 4 loads of
 * v's row and 4 broadcasts of p for 16 FMAs. p(i, k) is p[i pi + k pk], so the
 * same tile serves p and p^T. Rows past mr repeat row mr - 1 (computed, not
 * stored); columns past nc are masked. */
#define NN_FMA(i)                                                    \
    do {                                                             \
        const __m512 b_ = _mm512_set1_ps(*p##i);                     \
        c##i##0 = _mm512_fmadd_ps(b_, v0, c##i##0);                  \
        c##i##1 = _mm512_fmadd_ps(b_, v1, c##i##1);                  \
        c##i##2 = _mm512_fmadd_ps(b_, v2, c##i##2);                  \
        c##i##3 = _mm512_fmadd_ps(b_, v3, c##i##3);                  \
    } while (0)
#define NN_LOAD(i)                                                   \
    __m512 c##i##0 = _mm512_maskz_loadu_ps(k0m, o##i),               \
           c##i##1 = _mm512_maskz_loadu_ps(k1m, o##i + 16),          \
           c##i##2 = _mm512_maskz_loadu_ps(k2m, o##i + 32),          \
           c##i##3 = _mm512_maskz_loadu_ps(k3m, o##i + 48)
#define NN_STORE(i)                                                  \
    do {                                                             \
        _mm512_mask_storeu_ps(o##i, k0m, c##i##0);                   \
        _mm512_mask_storeu_ps(o##i + 16, k1m, c##i##1);              \
        _mm512_mask_storeu_ps(o##i + 32, k2m, c##i##2);              \
        _mm512_mask_storeu_ps(o##i + 48, k3m, c##i##3);              \
    } while (0)

AVX512 static void nn_tile_4x64(float *out, size_t ldo, const float *p, size_t pi, size_t pk, const float *v,
                                size_t ldv, int K, int mr, int nc)
{
    const __mmask16 k0m = (__mmask16)(nc >= 16 ? 0xffff : (1u << nc) - 1),
                    k1m = (__mmask16)(nc >= 32 ? 0xffff : nc <= 16 ? 0 : (1u << (nc - 16)) - 1),
                    k2m = (__mmask16)(nc >= 48 ? 0xffff : nc <= 32 ? 0 : (1u << (nc - 32)) - 1),
                    k3m = (__mmask16)(nc >= 64 ? 0xffff : nc <= 48 ? 0 : (1u << (nc - 48)) - 1);
    const size_t r1 = (size_t)(mr > 1 ? 1 : 0), r2 = (size_t)(mr > 2 ? 2 : mr - 1), r3 = (size_t)(mr > 3 ? 3 : mr - 1);
    float *o0 = out, *o1 = out + r1 * ldo, *o2 = out + r2 * ldo, *o3 = out + r3 * ldo;
    const float *p0 = p, *p1 = p + r1 * pi, *p2 = p + r2 * pi, *p3 = p + r3 * pi;
    NN_LOAD(0);
    NN_LOAD(1);
    NN_LOAD(2);
    NN_LOAD(3);
    for (int k = 0; k < K; k++) {
        const float *vr = v + (size_t)k * ldv;
        const __m512 v0 = _mm512_maskz_loadu_ps(k0m, vr), v1 = _mm512_maskz_loadu_ps(k1m, vr + 16),
                     v2 = _mm512_maskz_loadu_ps(k2m, vr + 32), v3 = _mm512_maskz_loadu_ps(k3m, vr + 48);
        NN_FMA(0);
        NN_FMA(1);
        NN_FMA(2);
        NN_FMA(3);
        p0 += pk, p1 += pk, p2 += pk, p3 += pk;
    }
    /* the repeated rows alias real ones: store the real rows last */
    if (mr > 3) NN_STORE(3);
    if (mr > 2) NN_STORE(2);
    if (mr > 1) NN_STORE(1);
    NN_STORE(0);
}

/* One unit of cpu_gemm_nn_acc: rows m0 .. m1-1, columns j0 .. j1-1 in strips
 * of 64, all of K in blocks of NN_K_BLOCK, k in order for every output. The
 * K block is the outer loop so that a block of p (the unit's rows) and of v
 * serve every strip while they are in cache: with a long K (the LM head's
 * dh = dz w, K = vocabulary) strips outermost re-read p from memory once per
 * strip (224 against 360 GFLOP/s). */
AVX512 static void nn_unit(float *out, size_t ldo, const float *p, size_t pi, size_t pk, const float *v,
                           size_t ldv, int m0, int m1, int K, int j0, int j1)
{
    for (int k0 = 0; k0 < K; k0 += NN_K_BLOCK) {
        const int kb = K - k0 < NN_K_BLOCK ? K - k0 : NN_K_BLOCK;
        for (int js = j0; js < j1; js += 64) {
            const int nc = j1 - js < 64 ? j1 - js : 64;
            for (int i = m0; i < m1; i += 4)
                nn_tile_4x64(out + (size_t)i * ldo + js, ldo, p + (size_t)i * pi + (size_t)k0 * pk, pi, pk,
                             v + (size_t)k0 * ldv + js, ldv, kb, m1 - i < 4 ? m1 - i : 4, nc);
        }
    }
}

void cpu_gemm_nn_acc_serial(float *out, size_t ldo, const float *p, size_t pi, size_t pk, const float *v, size_t ldv,
                            int M, int K, int N)
{
    assert(M >= 1 && N >= 1 && K >= 1 && cpu_avx512());
    nn_unit(out, ldo, p, pi, pk, v, ldv, 0, M, K, 0, N);
}

void cpu_gemm_nn_acc(float *out, size_t ldo, const float *p, size_t pi, size_t pk, const float *v, size_t ldv,
                     int M, int K, int N)
{
    assert(M >= 1 && N >= 1 && K >= 1 && cpu_avx512());
    /* units of ROW_BLOCK rows x a group of 64-column strips (all of them
     * unless there are too few row blocks to keep the threads busy); each
     * output belongs to one unit, whose thread sums k in order, so the result
     * does not depend on the threads */
    const int row_blocks = (M + ROW_BLOCK - 1) / ROW_BLOCK, strips = (N + 63) / 64;
    const int want = 2 * omp_get_max_threads();
    int groups = row_blocks >= want ? 1 : (want + row_blocks - 1) / row_blocks;
    if (groups > strips) groups = strips;
    const int per = (strips + groups - 1) / groups;
    groups = (strips + per - 1) / per;
#pragma omp parallel for schedule(static)
    for (int u = 0; u < row_blocks * groups; u++) {
        const int m0 = (u / groups) * ROW_BLOCK, j0 = (u % groups) * per * 64;
        const int j1 = j0 + per * 64 < N ? j0 + per * 64 : N;
        nn_unit(out, ldo, p, pi, pk, v, ldv, m0, M - m0 < ROW_BLOCK ? M : m0 + ROW_BLOCK, K, j0, j1);
    }
}

#else /* not x86-64: the callers use BLAS */

bool cpu_avx512(void) { return false; }
void cpu_avx512_allow(bool on) { (void)on; }
bool cpu_blas_avx512(void) { return false; }
void cpu_blas_allow(bool on) { (void)on; }

void cpu_gemm_nt(float *out, const float *x, const float *w, const float *bias, int M, int K, int N)
{
    (void)out, (void)x, (void)w, (void)bias, (void)M, (void)K, (void)N;
    assert(!"cpu_gemm_nt needs AVX-512");
}

void cpu_gemm_nt_serial(float *out, size_t ldo, const float *x, size_t ldx, const float *w, size_t ldw, int M,
                        int K, int N)
{
    (void)out, (void)ldo, (void)x, (void)ldx, (void)w, (void)ldw, (void)M, (void)K, (void)N;
    assert(!"cpu_gemm_nt_serial needs AVX-512");
}

void cpu_gemm_nn_acc_serial(float *out, size_t ldo, const float *p, size_t pi, size_t pk, const float *v, size_t ldv,
                            int M, int K, int N)
{
    (void)out, (void)ldo, (void)p, (void)pi, (void)pk, (void)v, (void)ldv, (void)M, (void)K, (void)N;
    assert(!"cpu_gemm_nn_acc_serial needs AVX-512");
}

void cpu_gemm_nn_acc(float *out, size_t ldo, const float *p, size_t pi, size_t pk, const float *v, size_t ldv,
                     int M, int K, int N)
{
    (void)out, (void)ldo, (void)p, (void)pi, (void)pk, (void)v, (void)ldv, (void)M, (void)K, (void)N;
    assert(!"cpu_gemm_nn_acc needs AVX-512");
}

#endif
