/* test_gpu_parity.c - every CUDA kernel (kernels/cuda/ops_cuda.h) against the
 * CPU op it replaces (kernels/cpu/ops.h, trainer/optimizer.h), over a grid of
 * shapes, in fp32 and bf16; one summary table at the end.
 *
 *   test_gpu_parity [--quick] [--skip-gemm] [--only GROUP,...]
 *       --quick: a few small shapes per op (for compute-sanitizer, tests/gpu/check.sh)
 *       --skip-gemm: leave out the cuBLASLt wrapper and the LM head, which
 *       uses it (racecheck and initcheck would check cuBLASLt's own kernels)
 *       --only: these groups of checks (gemm head embedding rmsnorm rope
 *       swiglu attention adamw decoder kvstore decode_attention sampler
 *       decode),
 *       not all (the engine's three: gpu/engine_cases.h)
 * Exit 0 when every check passes, 1 when one fails, 77 (ctest's SKIP) when
 * there is no usable CUDA device - said on one line first.
 *
 * Error measure: ||gpu - cpu||_2 / ||cpu||_2 over a whole output, with the
 * CPU op run on the same inputs (in bf16 mode: the inputs rounded to bf16,
 * so the measure is the kernel's arithmetic and its output rounding).
 * Tolerances from /work/shared/CUDA.md: 1e-5 in fp32, 1e-2 in bf16. Outputs
 * that a kernel overwrites are poisoned with NaN first and any NaN fails, so
 * an element never written cannot pass. Ops whose results must not depend on
 * the run (the reductions, the GEMM) are run twice and compared bit for bit
 * ("rerun" rows). This binary links only the kernels, the CPU ops, libc/libm,
 * libgomp, cudart and cublasLt (tests/gpu/blas_ref.c stands in for OpenBLAS).
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "base/hash.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/index.h"
#include "kernels/cuda/ops_cuda.h"
#include "model/gpu_layout.h"
#include "model/model_cuda.h"
#include "trainer/optimizer.h"

#include "gpu/cpu_decoder.h"

#define TOL_F32 1e-5
#define TOL_BF16 1e-2

static cudaStream_t stream;
static cuda_blas *blas; /* NULL with --skip-gemm, or when it cannot be created */
static bool quick, skip_gemm;

/* ---- the summary table: one row per (op, dtype) ---- */

typedef struct result_row {
    char op[40];
    const char *dtype;
    int cases, failed;
    double worst, tol;
    char worst_shape[96];
    char first_failure[160];
} result_row;

static result_row rows[160];
static int nrows;

static void record(const char *op, cuda_dtype dt, const char *shape, double err, double tol)
{
    result_row *r = NULL;
    const char *dname = cuda_dtype_name(dt);
    for (int i = 0; i < nrows; i++)
        if (strcmp(rows[i].op, op) == 0 && strcmp(rows[i].dtype, dname) == 0) r = &rows[i];
    if (!r) {
        if (nrows == (int)(sizeof rows / sizeof rows[0])) return;
        r = &rows[nrows++];
        snprintf(r->op, sizeof r->op, "%s", op);
        r->dtype = dname;
        r->tol = tol;
    }
    r->cases++;
    bool ok = err <= tol; /* NaN fails */
    if (!ok) {
        if (!r->failed) snprintf(r->first_failure, sizeof r->first_failure, "%s: error %.3g", shape, err);
        r->failed++;
    }
    if (!(err <= r->worst)) { /* NaN or larger */
        r->worst = err;
        snprintf(r->worst_shape, sizeof r->worst_shape, "%s", shape);
    }
}

static int print_summary(void)
{
    int checks = 0, failed = 0;
    printf("\n%-28s %-5s %6s %11s %9s  %-6s %s\n", "op", "dtype", "cases", "worst err", "tolerance", "result",
           "worst at");
    for (int i = 0; i < nrows; i++) {
        result_row *r = &rows[i];
        printf("%-28s %-5s %6d %11.3g %9.0e  %-6s %s\n", r->op, r->dtype, r->cases, r->worst, r->tol,
               r->failed ? "FAIL" : "PASS", r->worst_shape);
        checks += r->cases;
        failed += r->failed;
    }
    for (int i = 0; i < nrows; i++)
        if (rows[i].failed) printf("FAIL %s %s: %s\n", rows[i].op, rows[i].dtype, rows[i].first_failure);
    printf("gpu parity: %d checks in %d rows, %d failed\n", checks, nrows, failed);
    return failed ? 1 : 0;
}

/* Infrastructure failure (allocation, copy, an earlier kernel's fault): the
 * context is unusable; print what ran and stop. */
static void fatal(const char *where)
{
    fprintf(stderr, "gpu parity: fatal in %s: %s\n", where, tidal_errmsg());
    print_summary();
    exit(1);
}

/* Wait for the stream; a fault is fatal, named by the op that ran last. */
static void sync_or_die(const char *op)
{
    if (cuda_check(cudaStreamSynchronize(stream), op) != TIDAL_OK) fatal(op);
}

/* ---- host data ---- */

static uint64_t rng_state = 0x5eed;
static float frand(void)
{ /* splitmix64 -> uniform [-1, 1) */
    const uint64_t z = splitmix64_next(&rng_state);
    return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "gpu parity: out of host memory\n");
        exit(1);
    }
    return p;
}

/* n values uniform in [offset - scale, offset + scale), already representable in dt. */
static float *hrand(size_t n, float scale, float offset, cuda_dtype dt)
{
    float *x = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        x[i] = offset + scale * frand();
        if (dt == CUDA_BF16) x[i] = cuda_float_from_bf16(cuda_bf16_from_float(x[i]));
    }
    return x;
}

static float *hcopy(const float *x, size_t n)
{
    float *y = xmalloc(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

/* ---- device data ---- */

/* A device copy of x[n] as dt. */
static void *dput(const float *x, size_t n, cuda_dtype dt)
{
    void *d = NULL;
    if (cuda_alloc(&d, n * cuda_dtype_size(dt) + 16, "test buffer") != TIDAL_OK) fatal("alloc");
    if (dt == CUDA_F32) {
        if (cuda_check(cudaMemcpy(d, x, n * sizeof(float), cudaMemcpyHostToDevice), "upload") != TIDAL_OK)
            fatal("upload");
        return d;
    }
    uint16_t *h = xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) h[i] = cuda_bf16_from_float(x[i]);
    if (cuda_check(cudaMemcpy(d, h, n * sizeof(uint16_t), cudaMemcpyHostToDevice), "upload") != TIDAL_OK)
        fatal("upload");
    free(h);
    return d;
}

/* A device buffer of n dt elements, every one NaN. */
static void *dnan(size_t n, cuda_dtype dt)
{
    float *x = xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    void *d = dput(x, n, dt);
    free(x);
    return d;
}

static void *dput_i32(const int32_t *x, size_t n)
{
    void *d = NULL;
    if (cuda_alloc(&d, n * sizeof(int32_t) + 16, "test index buffer") != TIDAL_OK) fatal("alloc");
    if (cuda_check(cudaMemcpy(d, x, n * sizeof(int32_t), cudaMemcpyHostToDevice), "upload") != TIDAL_OK)
        fatal("upload");
    return d;
}

/* x[n] (host floats) = the device buffer d of n dt elements. */
static void dget(float *x, const void *d, size_t n, cuda_dtype dt)
{
    sync_or_die("download");
    if (dt == CUDA_F32) {
        if (cuda_check(cudaMemcpy(x, d, n * sizeof(float), cudaMemcpyDeviceToHost), "download") != TIDAL_OK)
            fatal("download");
        return;
    }
    uint16_t *h = xmalloc(n * sizeof(uint16_t));
    if (cuda_check(cudaMemcpy(h, d, n * sizeof(uint16_t), cudaMemcpyDeviceToHost), "download") != TIDAL_OK)
        fatal("download");
    for (size_t i = 0; i < n; i++) x[i] = cuda_float_from_bf16(h[i]);
    free(h);
}

/* The device buffer's n dt elements, as a new host array. */
static float *dfetch(const void *d, size_t n, cuda_dtype dt)
{
    float *x = xmalloc(n * sizeof(float));
    dget(x, d, n, dt);
    return x;
}

/* ||got - ref|| / ||ref|| (2-norms, double); infinity when got holds a NaN
 * or an infinity the reference lacks. ref == 0 everywhere: ||got - ref||. */
static double rel_err(const float *got, const float *ref, size_t n)
{
    double dd = 0.0, rr = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) && !(got[i] == ref[i])) return INFINITY;
        double d = (double)got[i] - ref[i];
        dd += d * d;
        rr += (double)ref[i] * ref[i];
    }
    return rr > 0.0 ? sqrt(dd / rr) : sqrt(dd);
}

static double tol_of(cuda_dtype dt) { return dt == CUDA_BF16 ? TOL_BF16 : TOL_F32; }

/* A status that is not TIDAL_OK fails the case: recorded as an infinite error. */
static bool ran(tidal_status st, const char *op, cuda_dtype dt, const char *shape)
{
    if (st == TIDAL_OK) return true;
    fprintf(stderr, "gpu parity: %s %s %s: %s\n", op, cuda_dtype_name(dt), shape, tidal_errmsg());
    record(op, dt, shape, INFINITY, tol_of(dt));
    return false;
}

/* Bitwise comparison of two device results (a rerun), recorded as a row. */
static void record_rerun(const char *op, cuda_dtype dt, const char *shape, const void *a, const void *b, size_t bytes)
{
    sync_or_die(op);
    unsigned char *x = xmalloc(bytes), *y = xmalloc(bytes);
    if (cuda_check(cudaMemcpy(x, a, bytes, cudaMemcpyDeviceToHost), "download") != TIDAL_OK ||
        cuda_check(cudaMemcpy(y, b, bytes, cudaMemcpyDeviceToHost), "download") != TIDAL_OK)
        fatal("download");
    char name[48];
    snprintf(name, sizeof name, "%s (rerun, bits)", op);
    record(name, dt, shape, memcmp(x, y, bytes) == 0 ? 0.0 : INFINITY, 0.0);
    free(x);
    free(y);
}

/* ---- GEMM ---- */

/* D[b] = alpha op(A[b]) op(B[b]) + beta D0[b] + bias, in double on the host. */
static void gemm_ref(float *D, const float *A, const float *B, const float *D0, const float *bias,
                     const cuda_gemm_op *op)
{
    int batch = op->batch > 1 ? op->batch : 1;
    for (int b = 0; b < batch; b++)
        for (int i = 0; i < op->M; i++)
            for (int j = 0; j < op->N; j++) {
                const float *a = A + b * op->strideA, *bb = B + b * op->strideB;
                double s = 0.0;
                for (int k = 0; k < op->K; k++) {
                    float x = op->transA ? a[(size_t)k * op->M + i] : a[(size_t)i * op->K + k];
                    float y = op->transB ? bb[(size_t)j * op->K + k] : bb[(size_t)k * op->N + j];
                    s += (double)x * y;
                }
                size_t at = (size_t)b * op->strideD + (size_t)i * op->N + j;
                double d = op->alpha * s + (op->beta != 0.0f ? (double)op->beta * D0[at] : 0.0);
                D[at] = (float)(d + (bias ? bias[j] : 0.0));
            }
}

static void gemm_case(cuda_blas *blas, int M, int N, int K, bool ta, bool tb, int batch, bool with_bias, float beta,
                      cuda_dtype in, cuda_dtype out)
{
    char shape[96];
    snprintf(shape, sizeof shape, "M%d N%d K%d %c%c b%d%s beta%g %s->%s", M, N, K, ta ? 'T' : 'N', tb ? 'T' : 'N',
             batch, with_bias ? " bias" : "", beta, cuda_dtype_name(in), cuda_dtype_name(out));
    int nb = batch > 1 ? batch : 1;
    cuda_gemm_op op = {.M = M, .N = N, .K = K, .transA = ta, .transB = tb, .alpha = 1.0f, .beta = beta,
                       .batch = batch, .strideA = (long long)M * K, .strideB = (long long)K * N,
                       .strideD = (long long)M * N, .in = in, .out = out};
    size_t na = (size_t)nb * M * K, nbb = (size_t)nb * K * N, nd = (size_t)nb * M * N;
    float *A = hrand(na, 1.0f, 0.0f, in), *B = hrand(nbb, 1.0f, 0.0f, in), *D0 = hrand(nd, 1.0f, 0.0f, out);
    float *bias = with_bias ? hrand((size_t)N, 1.0f, 0.0f, out) : NULL, *ref = xmalloc(nd * sizeof(float));
    gemm_ref(ref, A, B, D0, bias, &op);
    void *dA = dput(A, na, in), *dB = dput(B, nbb, in), *dbias = bias ? dput(bias, (size_t)N, out) : NULL;
    void *dD = beta != 0.0f ? dput(D0, nd, out) : dnan(nd, out);
    void *dD2 = beta != 0.0f ? dput(D0, nd, out) : dnan(nd, out);
    const char *name = with_bias ? "gemm +bias" : beta != 0.0f ? "gemm beta=1" : batch > 1 ? "gemm batched" : "gemm";
    cuda_dtype dt = in == CUDA_BF16 ? CUDA_BF16 : out;
    if (ran(cuda_gemm(blas, dD, dA, dB, dbias, &op, stream), name, dt, shape) &&
        ran(cuda_gemm(blas, dD2, dA, dB, dbias, &op, stream), name, dt, shape)) {
        float *got = dfetch(dD, nd, out);
        record(name, dt, shape, rel_err(got, ref, nd), tol_of(dt));
        record_rerun("gemm", dt, shape, dD, dD2, nd * cuda_dtype_size(out));
        free(got);
    }
    free(A), free(B), free(D0), free(bias), free(ref);
    cuda_free(dA), cuda_free(dB), cuda_free(dbias), cuda_free(dD), cuda_free(dD2);
}

static void test_gemm(void)
{
    static const int shapes[][3] = {{1, 1, 1},     {7, 33, 64},     {33, 96, 17},
                                    {257, 64, 96}, {1000, 896, 64}, {33, 1003, 896}};
    int nshapes = quick ? 2 : (int)(sizeof shapes / sizeof shapes[0]);
    const cuda_dtype ins[] = {CUDA_F32, CUDA_BF16, CUDA_BF16}, outs[] = {CUDA_F32, CUDA_F32, CUDA_BF16};
    for (int d = 0; d < 3; d++)
        for (int s = 0; s < nshapes; s++)
            for (int t = 0; t < 4; t++)
                gemm_case(blas, shapes[s][0], shapes[s][1], shapes[s][2], t & 1, t & 2, 1, false, 0.0f, ins[d],
                          outs[d]);
    for (int d = 0; d < 3; d++) {
        /* the linear layers' three products: forward with bias, dinp += (beta 1), dW += (transA, beta 1) */
        gemm_case(blas, 33, 96, 64, false, true, 1, true, 0.0f, ins[d], outs[d]);
        gemm_case(blas, 33, 64, 96, false, false, 1, false, 1.0f, ins[d], outs[d]);
        gemm_case(blas, 96, 64, 33, true, false, 1, false, 1.0f, ins[d], outs[d]);
        /* attention-shaped batched products (batch = kv heads, M = group x tokens) */
        gemm_case(blas, 7 * 16, 16, 64, false, true, 2, false, 0.0f, ins[d], outs[d]);
        if (!quick) gemm_case(blas, 6 * 128, 128, 128, false, false, 4, false, 0.0f, ins[d], outs[d]);
    }
}

/* ---- embedding ---- */

static void embedding_case(int T, int C, int V, cuda_dtype dt)
{
    char shape[64];
    snprintf(shape, sizeof shape, "T%d C%d V%d", T, C, V);
    int32_t *ids = xmalloc((size_t)T * sizeof(int32_t));
    for (int t = 0; t < T; t++) ids[t] = (int32_t)((frand() + 1.0f) * 0.5f * (t % 3 ? V : 5)) % V; /* repeats */
    float *wte = hrand((size_t)V * C, 1.0f, 0.0f, dt), *ref = xmalloc((size_t)T * C * sizeof(float));
    cpu_embedding_forward(ref, ids, wte, T, C);
    void *dwte = dput(wte, (size_t)V * C, dt), *dout = dnan((size_t)T * C, dt), *dids = dput_i32(ids, (size_t)T);
    if (ran(cuda_embedding_forward(dout, dids, dwte, T, C, dt, stream), "embedding_forward", dt, shape)) {
        float *got = dfetch(dout, (size_t)T * C, dt);
        record("embedding_forward", dt, shape, rel_err(got, ref, (size_t)T * C), tol_of(dt));
        free(got);
    }
    /* backward onto a non-zero fp32 gradient */
    float *dy = hrand((size_t)T * C, 1.0f, 0.0f, dt), *g0 = hrand((size_t)V * C, 1.0f, 0.0f, CUDA_F32);
    float *gref = hcopy(g0, (size_t)V * C);
    cpu_embedding_backward(gref, dy, ids, T, C);
    int32_t *order = xmalloc((size_t)T * 4), *uniq = xmalloc((size_t)V * 4), *seg = xmalloc((size_t)(V + 1) * 4);
    int32_t *count = xmalloc((size_t)(V + 1) * 4);
    int U = cuda_embedding_index_build(ids, T, V, order, uniq, seg, count);
    void *ddy = dput(dy, (size_t)T * C, dt), *dg = dput(g0, (size_t)V * C, CUDA_F32);
    void *dg2 = dput(g0, (size_t)V * C, CUDA_F32);
    void *dorder = dput_i32(order, (size_t)T), *duniq = dput_i32(uniq, (size_t)U), *dseg = dput_i32(seg, (size_t)U + 1);
    if (ran(cuda_embedding_backward(dg, ddy, dorder, duniq, dseg, U, C, dt, stream), "embedding_backward", dt, shape) &&
        ran(cuda_embedding_backward(dg2, ddy, dorder, duniq, dseg, U, C, dt, stream), "embedding_backward", dt,
            shape)) {
        float *got = dfetch(dg, (size_t)V * C, CUDA_F32);
        /* the same additions in the same order: exact in fp32 (bf16 dout converts exactly to float) */
        record("embedding_backward", dt, shape, rel_err(got, gref, (size_t)V * C), 0.0);
        record_rerun("embedding_backward", dt, shape, dg, dg2, (size_t)V * C * sizeof(float));
        free(got);
    }
    free(ids), free(wte), free(ref), free(dy), free(g0), free(gref), free(order), free(uniq), free(seg), free(count);
    cuda_free(dwte), cuda_free(dout), cuda_free(dids), cuda_free(ddy), cuda_free(dg), cuda_free(dg2);
    cuda_free(dorder), cuda_free(duniq), cuda_free(dseg);
}

/* ---- RMSNorm and the bias gradient ---- */

static void rmsnorm_case(int T, int C, cuda_dtype dt)
{
    char shape[64];
    snprintf(shape, sizeof shape, "T%d C%d", T, C);
    size_t n = (size_t)T * C;
    float *x = hrand(n, 2.0f, 0.0f, dt), *w = hrand((size_t)C, 0.2f, 1.0f, dt);
    float *ref = xmalloc(n * sizeof(float)), *rstd = xmalloc((size_t)T * sizeof(float));
    cpu_rmsnorm_forward(ref, rstd, x, w, T, C, 1e-6f);
    void *dx = dput(x, n, dt), *dw = dput(w, (size_t)C, dt), *dout = dnan(n, dt), *drstd = dnan((size_t)T, CUDA_F32);
    if (ran(cuda_rmsnorm_forward(dout, drstd, dx, dw, T, C, 1e-6f, dt, stream), "rmsnorm_forward", dt, shape)) {
        float *got = dfetch(dout, n, dt), *grstd = dfetch(drstd, (size_t)T, CUDA_F32);
        record("rmsnorm_forward", dt, shape, rel_err(got, ref, n), tol_of(dt));
        record("rmsnorm_forward rstd", dt, shape, rel_err(grstd, rstd, (size_t)T), TOL_F32);
        free(got), free(grstd);
    }
    /* backward: dinp and dw accumulate onto non-zero values; the CPU's rstd feeds both */
    float *dy = hrand(n, 1.0f, 0.0f, dt), *dx0 = hrand(n, 1.0f, 0.0f, dt);
    float *dw0 = hrand((size_t)C, 1.0f, 0.0f, CUDA_F32);
    float *dxref = hcopy(dx0, n), *dwref = hcopy(dw0, (size_t)C);
    cpu_rmsnorm_backward(dxref, dwref, dy, x, w, rstd, T, C);
    void *ddy = dput(dy, n, dt), *ddx = dput(dx0, n, dt), *ddw = dput(dw0, (size_t)C, CUDA_F32);
    void *ddw2 = dput(dw0, (size_t)C, CUDA_F32), *dr = dput(rstd, (size_t)T, CUDA_F32);
    size_t ns = cuda_colsum_scratch(T, C);
    void *scratch = dnan(ns ? ns : 1, CUDA_F32);
    if (ran(cuda_rmsnorm_backward(ddx, ddw, ddy, dx, dw, dr, T, C, scratch, dt, stream), "rmsnorm_backward", dt,
            shape)) {
        float *gx = dfetch(ddx, n, dt), *gw = dfetch(ddw, (size_t)C, CUDA_F32);
        record("rmsnorm_backward dinp", dt, shape, rel_err(gx, dxref, n), tol_of(dt));
        record("rmsnorm_backward dw", dt, shape, rel_err(gw, dwref, (size_t)C), tol_of(dt));
        free(gx), free(gw);
        /* rerun of the dw reduction into a second buffer (dinp accumulated again: not compared) */
        if (ran(cuda_rmsnorm_backward(ddx, ddw2, ddy, dx, dw, dr, T, C, scratch, dt, stream), "rmsnorm_backward", dt,
                shape))
            record_rerun("rmsnorm_backward dw", dt, shape, ddw, ddw2, (size_t)C * sizeof(float));
    }
    /* the bias gradient: cpu_matmul_backward's dbias (a Linear with one input channel), onto dw0 */
    float *bref = hcopy(dw0, (size_t)C), *ones = hrand((size_t)T, 0.0f, 1.0f, CUDA_F32);
    float *w1 = hrand((size_t)C, 1.0f, 0.0f, CUDA_F32), *dw1 = calloc((size_t)C, sizeof(float));
    cpu_matmul_backward(NULL, dw1, bref, dy, ones, w1, T, 1, C);
    free(ones), free(w1), free(dw1);
    void *db = dput(dw0, (size_t)C, CUDA_F32);
    if (ran(cuda_bias_backward(db, ddy, T, C, scratch, dt, stream), "bias_backward", dt, shape)) {
        float *gb = dfetch(db, (size_t)C, CUDA_F32);
        record("bias_backward", dt, shape, rel_err(gb, bref, (size_t)C), tol_of(dt));
        free(gb);
    }
    free(x), free(w), free(ref), free(rstd), free(dy), free(dx0), free(dw0), free(dxref), free(dwref), free(bref);
    cuda_free(dx), cuda_free(dw), cuda_free(dout), cuda_free(drstd), cuda_free(ddy), cuda_free(ddx), cuda_free(ddw);
    cuda_free(ddw2), cuda_free(dr), cuda_free(scratch), cuda_free(db);
}

/* ---- packed batches ---- */

/* cu[0..S] for sequences of the given lengths cycled until T tokens (the last cut short); returns S. */
static int pack(int32_t *cu, int T, const int *lens, int nlens)
{
    int S = 0;
    cu[0] = 0;
    for (int t = 0; t < T; S++) {
        int len = lens[S % nlens];
        if (len > T - t) len = T - t;
        t += len;
        cu[S + 1] = t;
    }
    return S;
}

/* ---- RoPE ---- */

static void rope_case(int T, int NH, int HD, cuda_dtype dt)
{
    char shape[64];
    snprintf(shape, sizeof shape, "T%d NH%d HD%d", T, NH, HD);
    static const int lens[] = {1, 2, 17, 129};
    int32_t *cu = xmalloc((size_t)(T + 1) * 4), *pos = xmalloc((size_t)T * 4);
    int S = pack(cu, T, lens, 4);
    for (int t = 0; t < T; t++) pos[t] = cuda_pos_of_token(cu, S, t) + (t % 5 == 4 ? 30000 : 0); /* long contexts */
    size_t n = (size_t)T * NH * HD;
    float *x = hrand(n, 1.0f, 0.0f, dt), *ref = hcopy(x, n), *bref = hcopy(x, n);
    cpu_rope_forward(ref, pos, T, NH, HD, 1e6f);
    cpu_rope_backward(bref, pos, T, NH, HD, 1e6f);
    void *dx = dput(x, n, dt), *db = dput(x, n, dt), *dpos = dput_i32(pos, (size_t)T);
    if (ran(cuda_rope_forward(dx, dpos, T, NH, HD, 1e6f, dt, stream), "rope_forward", dt, shape)) {
        float *got = dfetch(dx, n, dt);
        record("rope_forward", dt, shape, rel_err(got, ref, n), tol_of(dt));
        free(got);
    }
    if (ran(cuda_rope_backward(db, dpos, T, NH, HD, 1e6f, dt, stream), "rope_backward", dt, shape)) {
        float *got = dfetch(db, n, dt);
        record("rope_backward", dt, shape, rel_err(got, bref, n), tol_of(dt));
        free(got);
    }
    free(cu), free(pos), free(x), free(ref), free(bref);
    cuda_free(dx), cuda_free(db), cuda_free(dpos);
}

/* ---- SwiGLU ---- */

static void swiglu_case(size_t N, cuda_dtype dt)
{
    char shape[64];
    snprintf(shape, sizeof shape, "N%zu", N);
    float *g = hrand(N, 12.0f, 0.0f, dt), *u = hrand(N, 1.0f, 0.0f, dt), *dy = hrand(N, 1.0f, 0.0f, dt);
    float *ref = xmalloc(N * sizeof(float)), *dgref = xmalloc(N * sizeof(float)), *duref = xmalloc(N * sizeof(float));
    cpu_swiglu_forward(ref, g, u, N);
    cpu_swiglu_backward(dgref, duref, dy, g, u, N);
    void *dg = dput(g, N, dt), *du = dput(u, N, dt), *ddy = dput(dy, N, dt);
    void *dout = dnan(N, dt), *ddg = dnan(N, dt), *ddu = dnan(N, dt);
    if (ran(cuda_swiglu_forward(dout, dg, du, N, dt, stream), "swiglu_forward", dt, shape)) {
        float *got = dfetch(dout, N, dt);
        record("swiglu_forward", dt, shape, rel_err(got, ref, N), tol_of(dt));
        free(got);
    }
    if (ran(cuda_swiglu_backward(ddg, ddu, ddy, dg, du, N, dt, stream), "swiglu_backward", dt, shape)) {
        float *gg = dfetch(ddg, N, dt), *gu = dfetch(ddu, N, dt);
        record("swiglu_backward dgate", dt, shape, rel_err(gg, dgref, N), tol_of(dt));
        record("swiglu_backward dup", dt, shape, rel_err(gu, duref, N), tol_of(dt));
        free(gg), free(gu);
    }
    free(g), free(u), free(dy), free(ref), free(dgref), free(duref);
    cuda_free(dg), cuda_free(du), cuda_free(ddy), cuda_free(dout), cuda_free(ddg), cuda_free(ddu);
}

/* ---- attention (the naive reference kernel) ---- */

static void attention_case(int T, const int *lens, int nlens, int NH, int NKV, int HD, cuda_dtype dt)
{
    char shape[96];
    snprintf(shape, sizeof shape, "T%d lens%d.. NH%d NKV%d HD%d", T, lens[0], NH, NKV, HD);
    int32_t *cu = xmalloc((size_t)(T + 1) * 4);
    int S = pack(cu, T, lens, nlens), maxlen = 0;
    for (int s = 0; s < S; s++)
        if (cu[s + 1] - cu[s] > maxlen) maxlen = cu[s + 1] - cu[s];
    size_t nq = (size_t)T * NH * HD, nk = (size_t)T * NKV * HD;
    float *q = hrand(nq, 1.0f, 0.0f, dt), *k = hrand(nk, 1.0f, 0.0f, dt), *v = hrand(nk, 1.0f, 0.0f, dt);
    float *ref = xmalloc(nq * sizeof(float)), *lse = xmalloc((size_t)T * NH * sizeof(float));
    cpu_attention_forward(ref, lse, q, k, v, cu, S, T, NH, NKV, HD);
    void *dq = dput(q, nq, dt), *dk = dput(k, nk, dt), *dv = dput(v, nk, dt), *dcu = dput_i32(cu, (size_t)S + 1);
    void *dout = dnan(nq, dt), *dlse = dnan((size_t)T * NH, CUDA_F32), *dout2 = dnan(nq, dt);
    void *dlse2 = dnan((size_t)T * NH, CUDA_F32);
    if (ran(cuda_attention_forward_naive(dout, dlse, dq, dk, dv, dcu, S, T, NH, NKV, HD, maxlen, dt, stream),
            "attention_forward_naive", dt, shape) &&
        ran(cuda_attention_forward_naive(dout2, dlse2, dq, dk, dv, dcu, S, T, NH, NKV, HD, maxlen, dt, stream),
            "attention_forward_naive", dt, shape)) {
        float *got = dfetch(dout, nq, dt), *glse = dfetch(dlse, (size_t)T * NH, CUDA_F32);
        record("attention_forward_naive", dt, shape, rel_err(got, ref, nq), tol_of(dt));
        record("attention_forward_naive lse", dt, shape, rel_err(glse, lse, (size_t)T * NH), tol_of(dt));
        record_rerun("attention_forward_naive", dt, shape, dout, dout2, nq * cuda_dtype_size(dt));
        free(got), free(glse);
    }
    if (blas) { /* the cuBLASLt attention, forward and backward */
        size_t sb = cuda_attention_scratch_bytes(maxlen, NH, NKV, HD, dt);
        void *scratch = NULL, *gout = dnan(nq, dt), *glse = dnan((size_t)T * NH, CUDA_F32);
        if (cuda_alloc(&scratch, sb, "attention scratch") != TIDAL_OK) fatal("alloc");
        if (ran(cuda_attention_forward(blas, gout, glse, dq, dk, dv, cu, S, T, NH, NKV, HD, scratch, sb, dt, stream),
                "attention_forward", dt, shape)) {
            float *got = dfetch(gout, nq, dt), *gl = dfetch(glse, (size_t)T * NH, CUDA_F32);
            record("attention_forward", dt, shape, rel_err(got, ref, nq), tol_of(dt));
            record("attention_forward lse", dt, shape, rel_err(gl, lse, (size_t)T * NH), tol_of(dt));
            free(got), free(gl);
        }
        float *dy = hrand(nq, 1.0f, 0.0f, dt), *dqr = xmalloc(nq * 4), *dkr = xmalloc(nk * 4), *dvr = xmalloc(nk * 4);
        float *o = hcopy(ref, nq); /* the forward's output as the GPU gets it (rounded to dt) */
        if (dt == CUDA_BF16)
            for (size_t i = 0; i < nq; i++) o[i] = cuda_float_from_bf16(cuda_bf16_from_float(o[i]));
        cpu_attention_backward(dqr, dkr, dvr, dy, o, lse, q, k, v, cu, S, T, NH, NKV, HD);
        void *ddy = dput(dy, nq, dt), *dref = dput(o, nq, dt), *dl = dput(lse, (size_t)T * NH, CUDA_F32);
        void *gdq = dnan(nq, dt), *gdk = dnan(nk, dt), *gdv = dnan(nk, dt);
        if (ran(cuda_attention_backward(blas, gdq, gdk, gdv, ddy, dref, dl, dq, dk, dv, cu, S, T, NH, NKV, HD,
                                        scratch, sb, dt, stream),
                "attention_backward", dt, shape)) {
            float *a = dfetch(gdq, nq, dt), *b = dfetch(gdk, nk, dt), *c = dfetch(gdv, nk, dt);
            record("attention_backward dq", dt, shape, rel_err(a, dqr, nq), tol_of(dt));
            record("attention_backward dk", dt, shape, rel_err(b, dkr, nk), tol_of(dt));
            record("attention_backward dv", dt, shape, rel_err(c, dvr, nk), tol_of(dt));
            free(a), free(b), free(c);
        }
        free(dy), free(dqr), free(dkr), free(dvr), free(o);
        cuda_free(scratch), cuda_free(gout), cuda_free(glse), cuda_free(ddy), cuda_free(dref), cuda_free(dl);
        cuda_free(gdq), cuda_free(gdk), cuda_free(gdv);
    }
    free(cu), free(q), free(k), free(v), free(ref), free(lse);
    cuda_free(dq), cuda_free(dk), cuda_free(dv), cuda_free(dcu), cuda_free(dout), cuda_free(dlse);
    cuda_free(dout2), cuda_free(dlse2);
}

/* ---- LM head ---- */

static void head_case(cuda_blas *blas, int T, int C, int V, bool with_dentropy, cuda_dtype dt)
{
    char shape[64];
    snprintf(shape, sizeof shape, "T%d C%d V%d%s", T, C, V, with_dentropy ? " +dentropy" : "");
    const float inv_temp = 1.0f / 0.7f;
    float *h = hrand((size_t)T * C, 1.0f, 0.0f, dt), *w = hrand((size_t)V * C, 0.5f, 0.0f, dt);
    int32_t *tg = xmalloc((size_t)T * 4);
    for (int t = 0; t < T; t++) tg[t] = (int32_t)((frand() + 1.0f) * 0.5f * V) % V;
    float *lp = xmalloc((size_t)T * 4), *ent = xmalloc((size_t)T * 4);
    float *scratch = xmalloc((size_t)CPU_HEAD_CHUNK * V * sizeof(float));
    cpu_head_forward(lp, ent, NULL, h, w, tg, T, C, V, inv_temp, scratch);
    float *dl = hrand((size_t)T, 1.0f, 0.0f, CUDA_F32);
    float *de = with_dentropy ? hrand((size_t)T, 0.5f, 0.0f, CUDA_F32) : NULL;
    float *dh0 = hrand((size_t)T * C, 1.0f, 0.0f, dt), *dw0 = hrand((size_t)V * C, 1.0f, 0.0f, CUDA_F32);
    float *dhref = hcopy(dh0, (size_t)T * C), *dwref = hcopy(dw0, (size_t)V * C);
    cpu_head_backward(dhref, dwref, dl, de, h, w, tg, T, C, V, inv_temp, scratch);
    void *dh = dput(h, (size_t)T * C, dt), *dwt = dput(w, (size_t)V * C, dt), *dtg = dput_i32(tg, (size_t)T);
    void *dlp = dnan((size_t)T, CUDA_F32), *dent = dnan((size_t)T, CUDA_F32);
    void *ddl = dput(dl, (size_t)T, CUDA_F32), *dde = de ? dput(de, (size_t)T, CUDA_F32) : NULL;
    void *ddh = dput(dh0, (size_t)T * C, dt), *ddw = dput(dw0, (size_t)V * C, CUDA_F32), *dscratch = NULL;
    if (cuda_alloc(&dscratch, cuda_head_scratch_bytes(V, dt), "head scratch") != TIDAL_OK) fatal("alloc");
    if (ran(cuda_head_forward(blas, dlp, dent, dh, dwt, dtg, T, C, V, inv_temp, dscratch, dt, stream), "head_forward",
            dt, shape)) {
        float *glp = dfetch(dlp, (size_t)T, CUDA_F32), *gent = dfetch(dent, (size_t)T, CUDA_F32);
        record("head_forward logprob", dt, shape, rel_err(glp, lp, (size_t)T), tol_of(dt));
        record("head_forward entropy", dt, shape, rel_err(gent, ent, (size_t)T), tol_of(dt));
        free(glp), free(gent);
    }
    if (ran(cuda_head_backward(blas, ddh, ddw, ddl, dde, dh, dwt, dtg, T, C, V, inv_temp, dscratch, dt, stream),
            "head_backward", dt, shape)) {
        float *gdh = dfetch(ddh, (size_t)T * C, dt), *gdw = dfetch(ddw, (size_t)V * C, CUDA_F32);
        /* compare the increments: the accumulated-onto values would hide them */
        for (size_t i = 0; i < (size_t)T * C; i++) gdh[i] -= dh0[i], dhref[i] -= dh0[i];
        for (size_t i = 0; i < (size_t)V * C; i++) gdw[i] -= dw0[i], dwref[i] -= dw0[i];
        record("head_backward dh", dt, shape, rel_err(gdh, dhref, (size_t)T * C), tol_of(dt));
        record("head_backward dw", dt, shape, rel_err(gdw, dwref, (size_t)V * C), tol_of(dt));
        free(gdh), free(gdw);
    }
    free(h), free(w), free(tg), free(lp), free(ent), free(scratch), free(dl), free(de), free(dh0), free(dw0);
    free(dhref), free(dwref);
    cuda_free(dh), cuda_free(dwt), cuda_free(dtg), cuda_free(dlp), cuda_free(dent), cuda_free(ddl), cuda_free(dde);
    cuda_free(ddh), cuda_free(ddw), cuda_free(dscratch);
}

static void test_head(void)
{
    const cuda_dtype dts[] = {CUDA_F32, CUDA_BF16};
    for (int d = 0; d < 2; d++) {
        head_case(blas, 7, 64, 1003, false, dts[d]);
        head_case(blas, 33, 96, 1003, true, dts[d]);
        if (!quick) {
            head_case(blas, 257, 64, 1003, true, dts[d]); /* two chunks, the second of one token */
            head_case(blas, 300, 96, 32007, true, dts[d]);
        }
    }
}

/* ---- gradient norm and AdamW ---- */

static void grad_norm_case(size_t n, float max_norm)
{
    char shape[64];
    snprintf(shape, sizeof shape, "n%zu max%g", n, max_norm);
    float *g = hrand(n, 1.0f, 0.0f, CUDA_F32), *gc = hcopy(g, n);
    double norm = clip_grad_norm(gc, n, max_norm);
    float want_scale = max_norm > 0.0f && norm > max_norm ? (float)(max_norm / (norm + 1e-6)) : 1.0f;
    void *dg = dput(g, n, CUDA_F32), *out = dnan(2, CUDA_F32), *out2 = dnan(2, CUDA_F32);
    void *partials = NULL;
    if (cuda_alloc(&partials, CUDA_NORM_BLOCKS * sizeof(double), "partials") != TIDAL_OK) fatal("alloc");
    if (ran(cuda_grad_norm(out, dg, n, max_norm, partials, stream), "grad_norm", CUDA_F32, shape) &&
        ran(cuda_grad_norm(out2, dg, n, max_norm, partials, stream), "grad_norm", CUDA_F32, shape)) {
        float got[2], want[2] = {(float)norm, want_scale};
        dget(got, out, 2, CUDA_F32);
        record("grad_norm", CUDA_F32, shape, rel_err(got, want, 1), 1e-6);
        record("grad_norm clip factor", CUDA_F32, shape, rel_err(got + 1, want + 1, 1), 1e-6);
        record_rerun("grad_norm", CUDA_F32, shape, out, out2, 2 * sizeof(float));
    }
    free(g), free(gc);
    cuda_free(dg), cuda_free(out), cuda_free(out2), cuda_free(partials);
}

/* Five AdamW steps with global-norm clipping, on the CPU (clip_grad_norm +
 * adamw_step) and on the GPU (cuda_grad_norm + cuda_adamw_step reading the
 * clipping factor), from the same parameters and gradients. */
static void adamw_case(size_t n)
{
    char shape[64];
    snprintf(shape, sizeof shape, "n%zu 5 steps", n);
    adamw_cfg cfg = adamw_defaults();
    cfg.weight_decay = 0.1f;
    adamw *cpu = NULL;
    if (adamw_create(n, &cfg, &cpu) != TIDAL_OK) fatal("adamw_create");
    float *p = hrand(n, 1.0f, 0.0f, CUDA_F32);
    uint8_t *mask = xmalloc(n);
    for (size_t i = 0; i < n; i++) mask[i] = (i / 97) % 2; /* tensors that decay and tensors that do not */
    float *zeros = calloc(n, sizeof(float));
    void *dp = dput(p, n, CUDA_F32), *dm = dput(zeros, n, CUDA_F32), *dv = dput(zeros, n, CUDA_F32);
    void *dpb = dnan(n, CUDA_BF16), *dgrad = dnan(n, CUDA_F32), *dnorm = dnan(2, CUDA_F32), *dmask = NULL;
    void *partials = NULL;
    if (cuda_alloc(&dmask, n, "mask") != TIDAL_OK ||
        cuda_alloc(&partials, CUDA_NORM_BLOCKS * sizeof(double), "partials") != TIDAL_OK ||
        cuda_check(cudaMemcpy(dmask, mask, n, cudaMemcpyHostToDevice), "upload") != TIDAL_OK)
        fatal("alloc");
    bool ok = true;
    double norm_err = 0.0;
    for (int step = 1; step <= 5 && ok; step++) {
        float *g = hrand(n, step == 3 ? 10.0f : 0.01f, 0.0f, CUDA_F32); /* step 3 is clipped */
        if (cuda_check(cudaMemcpy(dgrad, g, n * sizeof(float), cudaMemcpyHostToDevice), "upload") != TIDAL_OK)
            fatal("upload");
        float max_norm = 1.0f;
        double norm = clip_grad_norm(g, n, max_norm);
        float lr = 1e-3f * (float)step;
        adamw_step(cpu, p, g, mask, lr);
        cuda_adamw_args a = {.lr = lr, .beta1 = cfg.beta1, .beta2 = cfg.beta2, .eps = cfg.eps,
                             .weight_decay = cfg.weight_decay, .step = step};
        ok = ran(cuda_grad_norm(dnorm, dgrad, n, max_norm, partials, stream), "adamw_step", CUDA_F32, shape) &&
             ran(cuda_adamw_step(dp, dpb, dgrad, dm, dv, dmask, n, &a, (const float *)dnorm + 1, stream),
                 "adamw_step", CUDA_F32, shape);
        if (ok) {
            float got[2];
            dget(got, dnorm, 2, CUDA_F32);
            double e = fabs(got[0] - norm) / norm;
            if (!(e <= norm_err)) norm_err = e;
        }
        free(g);
    }
    if (ok) {
        float *gp = dfetch(dp, n, CUDA_F32), *gm = dfetch(dm, n, CUDA_F32), *gv = dfetch(dv, n, CUDA_F32);
        float *gpb = dfetch(dpb, n, CUDA_BF16);
        record("adamw_step params", CUDA_F32, shape, rel_err(gp, p, n), TOL_F32);
        record("adamw_step m", CUDA_F32, shape, rel_err(gm, cpu->m, n), TOL_F32);
        record("adamw_step v", CUDA_F32, shape, rel_err(gv, cpu->v, n), TOL_F32);
        record("adamw_step grad norms", CUDA_F32, shape, norm_err, 1e-6);
        size_t bad = 0; /* the bf16 copy is exactly the fp32 master rounded to nearest even */
        for (size_t i = 0; i < n; i++)
            if (gpb[i] != cuda_float_from_bf16(cuda_bf16_from_float(gp[i]))) bad++;
        record("adamw_step bf16 copy (bits)", CUDA_BF16, shape, bad ? INFINITY : 0.0, 0.0);
        free(gp), free(gm), free(gv), free(gpb);
    }
    adamw_free(cpu);
    free(p), free(mask), free(zeros);
    cuda_free(dp), cuda_free(dm), cuda_free(dv), cuda_free(dpb), cuda_free(dgrad), cuda_free(dnorm);
    cuda_free(dmask), cuda_free(partials);
}

/* ---- the whole decoder: model/model_cuda against model.c's steps on the CPU ops ---- */

/* Per tensor of layout d: the relative error of got against ref, one case each. */
static void record_tensors(const char *op, cuda_dtype dt, const model_gpu_dims *d, const float *got, const float *ref,
                           double tol)
{
    static const char *names[13] = {"ln1", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo", "ln2", "wg", "wu", "wd"};
    const size_t C = (size_t)d->hidden, QD = (size_t)d->heads * d->head_dim, KVD = (size_t)d->kv_heads * d->head_dim;
    const size_t F = (size_t)d->ffn, sizes[13] = {C, QD * C, QD, KVD * C, KVD, KVD * C, KVD, C * QD, C, C, F * C, F * C,
                                                  C * F};
    char shape[64];
    record(op, dt, "embed", rel_err(got, ref, (size_t)d->vocab * C), tol);
    for (int l = 0; l < d->layers; l++) {
        model_gpu_layer_offsets o = model_gpu_layer(d, l);
        const size_t offs[13] = {o.ln1, o.wq, o.bq, o.wk, o.bk, o.wv, o.bv, o.wo, o.bo, o.ln2, o.wg, o.wu, o.wd};
        for (int i = 0; i < 13; i++) {
            if (offs[i] == MODEL_GPU_ABSENT) continue;
            snprintf(shape, sizeof shape, "layer %d %s", l, names[i]);
            record(op, dt, shape, rel_err(got + offs[i], ref + offs[i], sizes[i]), tol);
        }
    }
    record(op, dt, "norm", rel_err(got + model_gpu_norm(d), ref + model_gpu_norm(d), C), tol);
    if (!d->tied)
        record(op, dt, "lm_head", rel_err(got + model_gpu_head(d), ref + model_gpu_head(d), (size_t)d->vocab * C), tol);
}

/* The tiny model of /work/shared/CUDA.md: 2 layers, C 128, H 4, Hkv 2, hd 64, V 1003, packed lengths 1/17/70:
 * logprobs, entropies and every gradient against the CPU; a rerun bit for bit; 5 AdamW steps tracking the
 * CPU's. Tolerances for the whole model (errors compound over layers): 1e-4 fp32, 3e-2 bf16. */
static void decoder_case(cuda_dtype dt)
{
    const model_gpu_dims d = {.layers = 2, .hidden = 128, .heads = 4, .kv_heads = 2, .head_dim = 64, .ffn = 352,
                              .vocab = 1003, .qkv_bias = true, .o_bias = false, .tied = true, .rms_eps = 1e-6f,
                              .rope_theta = 1e6f};
    const double tol = dt == CUDA_BF16 ? 3e-2 : 1e-4;
    const int32_t cu[] = {0, 1, 18, 88};
    const int T = 88, S = 3;
    int32_t ids[88], targets[88];
    for (int t = 0; t < T; t++) ids[t] = (t * 37 + 11) % d.vocab, targets[t] = (t * 53 + 5) % d.vocab;
    model_cuda_batch b = {.T = T, .S = S, .ids = ids, .targets = targets, .cu_seqlens = cu, .inv_temp = 1.0f / 0.9f};
    const size_t n = model_gpu_params(&d);
    float *P = hrand(n, 0.1f, 0.0f, dt);
    for (int l = 0; l < d.layers; l++) { /* norms near 1 */
        model_gpu_layer_offsets o = model_gpu_layer(&d, l);
        for (int c = 0; c < d.hidden; c++) P[o.ln1 + c] += 1.0f, P[o.ln2 + c] += 1.0f;
    }
    for (int c = 0; c < d.hidden; c++) P[model_gpu_norm(&d) + c] += 1.0f;
    if (dt == CUDA_BF16) /* the CPU computes with the weights the GPU reads */
        for (size_t i = 0; i < n; i++) P[i] = cuda_float_from_bf16(cuda_bf16_from_float(P[i]));
    float *G = calloc(n, 4), *gg = xmalloc(n * 4), *gg2 = xmalloc(n * 4);
    float lp[88], ent[88], glp[88], gent[88], glp2[88], gent2[88], dl[88], de[88];
    for (int t = 0; t < T; t++) dl[t] = -1.0f / T, de[t] = 0.01f * frand();
    cpu_decoder(&d, P, G, T, S, ids, targets, cu, b.inv_temp, lp, ent, dl, de);

    const char *shape = "2 layers C128 H4/2 hd64 V1003 T88";
    model_cuda *m = NULL;
    if (!ran(model_cuda_create(&d, dt, &m), "model forward", dt, shape)) goto cleanup;
    if (!ran(model_cuda_set_params(m, P), "model forward", dt, shape)) goto cleanup;
    if (!ran(model_cuda_forward(m, &b, glp, gent), "model forward", dt, shape)) goto cleanup;
    record("model forward logprob", dt, shape, rel_err(glp, lp, (size_t)T), tol);
    record("model forward entropy", dt, shape, rel_err(gent, ent, (size_t)T), tol);
    if (!ran(model_cuda_backward(m, &b, dl, de), "model backward", dt, shape)) goto cleanup;
    if (!ran(model_cuda_get_grads(m, gg), "model backward", dt, shape)) goto cleanup;
    record("model backward (all grads)", dt, shape, rel_err(gg, G, n), tol);
    record_tensors("model backward (per tensor)", dt, &d, gg, G, tol);
    /* the same batch again: the same bits */
    if (!ran(model_cuda_zero_grads(m), "model rerun", dt, shape) ||
        !ran(model_cuda_forward(m, &b, glp2, gent2), "model rerun", dt, shape) ||
        !ran(model_cuda_backward(m, &b, dl, de), "model rerun", dt, shape) ||
        !ran(model_cuda_get_grads(m, gg2), "model rerun", dt, shape))
        goto cleanup;
    bool same = memcmp(glp, glp2, sizeof glp) == 0 && memcmp(gent, gent2, sizeof gent) == 0 &&
                memcmp(gg, gg2, n * 4) == 0;
    record("model rerun (bits)", dt, shape, same ? 0.0 : INFINITY, 0.0);
    /* 5 AdamW steps with clipping, CPU and GPU from the same start */
    {
        adamw_cfg cfg = adamw_defaults();
        adamw *o = NULL;
        if (adamw_create(n, &cfg, &o) != TIDAL_OK) fatal("adamw_create");
        float *Pc = hcopy(P, n), *Pg = xmalloc(n * 4);
        model_cuda_adamw ga = {.lr = 1e-3f, .beta1 = cfg.beta1, .beta2 = cfg.beta2, .eps = cfg.eps,
                               .weight_decay = cfg.weight_decay, .max_norm = 0.5f};
        double worst_lp = 0.0;
        bool ok = true;
        for (int step = 0; step < 5 && ok; step++) {
            memset(G, 0, n * 4);
            cpu_decoder(&d, Pc, G, T, S, ids, targets, cu, b.inv_temp, lp, ent, dl, NULL);
            clip_grad_norm(G, n, ga.max_norm);
            adamw_step(o, Pc, G, NULL, ga.lr);
            double norm;
            ok = ran(model_cuda_zero_grads(m), "model 5 AdamW steps", dt, shape) &&
                 ran(model_cuda_forward(m, &b, glp, gent), "model 5 AdamW steps", dt, shape) &&
                 ran(model_cuda_backward(m, &b, dl, NULL), "model 5 AdamW steps", dt, shape) &&
                 ran(model_cuda_step(m, &ga, &norm), "model 5 AdamW steps", dt, shape);
            double e = rel_err(glp, lp, (size_t)T);
            if (!(e <= worst_lp)) worst_lp = e;
        }
        if (ok && ran(model_cuda_get_params(m, Pg), "model 5 AdamW steps", dt, shape)) {
            record("model 5 steps: logprobs", dt, shape, worst_lp, tol);
            record("model 5 steps: params", dt, shape, rel_err(Pg, Pc, n), tol);
        }
        adamw_free(o);
        free(Pc), free(Pg);
    }
cleanup:
    model_cuda_free(m);
    free(P), free(G), free(gg), free(gg2);
}

/* ---- the generation engine's kernels ---- */

#include "gpu/engine_cases.h"

/* ---- the grid ---- */

/* The groups of checks, run all or by --only (check.sh runs each in its own
 * process, so a device fault in one leaves the others' results standing). */
static const char *const groups[] = {"gemm", "head", "embedding", "rmsnorm", "rope", "swiglu", "attention", "adamw",
                                     "decoder", "kvstore", "decode_attention", "sampler", "decode"};
#define NGROUPS (int)(sizeof groups / sizeof groups[0])
static bool selected[NGROUPS];

static bool want(const char *group)
{
    for (int i = 0; i < NGROUPS; i++)
        if (strcmp(groups[i], group) == 0) return selected[i];
    return false;
}

/* Select the comma-separated groups of list; false naming an unknown one. */
static bool select_groups(const char *list)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *g = strtok_r(buf, ",", &save); g; g = strtok_r(NULL, ",", &save)) {
        int i = 0;
        while (i < NGROUPS && strcmp(groups[i], g) != 0) i++;
        if (i == NGROUPS) {
            fprintf(stderr, "test_gpu_parity: --only: no group '%s' (groups: gemm head embedding rmsnorm rope swiglu "
                            "attention adamw decoder kvstore decode_attention sampler decode)\n", g);
            return false;
        }
        selected[i] = true;
    }
    return true;
}

int main(int argc, char **argv)
{
    bool only = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else if (strcmp(argv[i], "--skip-gemm") == 0) {
            skip_gemm = true;
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            if (!select_groups(argv[++i])) return 2;
            only = true;
        } else {
            fprintf(stderr, "usage: test_gpu_parity [--quick] [--skip-gemm] [--only GROUP,...]\n");
            return 2;
        }
    }
    if (!only)
        for (int i = 0; i < NGROUPS; i++) selected[i] = true;
    int ndev = 0;
    if (cuda_device_count(&ndev) != TIDAL_OK) {
        printf("SKIP: test_gpu_parity: %s\n", tidal_errmsg());
        return 77;
    }
    struct cudaDeviceProp prop;
    if (cuda_check(cudaGetDeviceProperties(&prop, 0), "device properties") != TIDAL_OK ||
        cuda_check(cudaStreamCreate(&stream), "stream") != TIDAL_OK) {
        printf("SKIP: test_gpu_parity: %s\n", tidal_errmsg());
        return 77;
    }
    printf("gpu parity on %s (sm_%d%d, %d devices)%s%s\n", prop.name, prop.major, prop.minor, ndev,
           quick ? ", quick grid" : "", cuda_sync_mode() ? ", TIDAL_CUDA_SYNC=1" : "");
    cpu_set_threads(0);

    static const int Ts[] = {1, 7, 33, 257, 1000};
    static const int Cs[] = {64, 96, 896};
    static const int heads[][3] = {{14, 2, 64}, {12, 2, 128}, {8, 1, 64}, {4, 4, 128}};
    int nT = quick ? 2 : 5, nC = quick ? 1 : 3, nH = quick ? 1 : 4;
    const cuda_dtype dts[] = {CUDA_F32, CUDA_BF16};

    /* everything on cuBLASLt: the GEMM, the head, the GEMM attention, the decoder */
    if (!skip_gemm && (want("gemm") || want("head") || want("attention") || want("decoder")) &&
        cuda_blas_create(&blas) != TIDAL_OK) {
        fprintf(stderr, "gpu parity: %s\n", tidal_errmsg());
        record("gemm (cuBLASLt handle)", CUDA_F32, "", INFINITY, 0.0);
    }
    if (blas && want("gemm")) test_gemm();
    if (blas && want("head")) test_head();
    sync_or_die("gemm");
    for (int d = 0; d < 2; d++) {
        cuda_dtype dt = dts[d];
        for (int i = 0; i < nT; i++)
            for (int j = 0; j < nC; j++) {
                if (want("embedding")) embedding_case(Ts[i], Cs[j], 1003, dt);
                if (want("rmsnorm")) rmsnorm_case(Ts[i], Cs[j], dt);
            }
        if (!quick && want("embedding")) embedding_case(257, 64, 32007, dt);
        for (int i = 0; i < nT && want("rope"); i++)
            for (int h = 0; h < nH; h++) rope_case(Ts[i], heads[h][0], heads[h][2], dt);
        static const size_t Ns[] = {1, 7, 1000, 257 * 4864 + 3};
        for (int i = 0; i < (quick ? 2 : 4) && want("swiglu"); i++) swiglu_case(Ns[i], dt);
        static const int lens_mixed[] = {1, 2, 17, 129}, lens_one[] = {1}, lens_17[] = {17}, lens_129[] = {129};
        for (int h = 0; h < nH && want("attention"); h++) {
            attention_case(quick ? 7 : 33, lens_one, 1, heads[h][0], heads[h][1], heads[h][2], dt);
            attention_case(quick ? 20 : 257, lens_mixed, 4, heads[h][0], heads[h][1], heads[h][2], dt);
            if (!quick) {
                attention_case(257, lens_17, 1, heads[h][0], heads[h][1], heads[h][2], dt);
                attention_case(1000, lens_129, 1, heads[h][0], heads[h][1], heads[h][2], dt);
            }
        }
        sync_or_die("kernels");
    }
    if (want("kvstore") || want("decode_attention") || want("sampler"))
        test_engine_kernels(want("kvstore"), want("decode_attention"), want("sampler"));
    if (want("adamw")) {
        grad_norm_case(1, 0.0f);
        grad_norm_case(1000, 1.0f);
        if (!quick) grad_norm_case((size_t)3 << 20 | 7, 1e9f);
        adamw_case(quick ? 1001 : (size_t)1 << 20 | 13);
    }
    if (!skip_gemm && want("decode")) { /* its own cuBLASLt handle */
        decode_case(CUDA_F32);
        decode_case(CUDA_BF16);
    }
    if (blas && want("decoder")) {
        decoder_case(CUDA_F32);
        decoder_case(CUDA_BF16);
    }
    sync_or_die("end");
    cuda_blas_free(blas);
    cudaStreamDestroy(stream);
    return print_summary();
}
