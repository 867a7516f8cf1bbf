/* bench_gemm.c - `tidal bench gemm`: the CPU GEMM kernels (kernels/cpu/gemm)
 * against OpenBLAS's cblas_sgemm on the same operands, in the same run.
 *
 * The shapes are the ones the CPU paths run on the `bench train` /
 * `bench generate` model (hidden 512, MLP 1,536, vocabulary 32,768): a decode
 * step (M = 32 rows: the attention and MLP projections and the LM head), a
 * prefill or training forward (M = 2,048), and the backward's two products
 * (dx += dy W and dW += dy^T x). For each shape both sides run the same number
 * of calls after one untimed call; the better of --rounds rounds counts, each
 * round running both sides back to back (the machine's speed drifts). The
 * results are checked against each other (relative 1e-4 of the largest).
 *
 * ratio = geometric mean over the shapes of tidal GFLOP/s / OpenBLAS GFLOP/s.
 * OpenBLAS runs with the kernels it picks for this CPU (OPENBLAS_CORETYPE
 * overrides that, for a comparison against its AVX-512 kernels on AMD).
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "bench/bench.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/ops.h"

char *openblas_get_corename(void); /* OpenBLAS, not in its cblas.h */

typedef enum { FWD, BWD_DX, BWD_DW } gemm_kind;

typedef struct shape {
    const char *name;
    gemm_kind kind;
    int M, K, N; /* out[M, N] over K */
} shape;

static const shape SHAPES[] = {
    {"decode q_proj", FWD, 32, 512, 512},        {"decode gate_proj", FWD, 32, 512, 1536},
    {"decode down_proj", FWD, 32, 1536, 512},    {"decode lm_head", FWD, 32, 512, 32768},
    {"forward gate_proj", FWD, 2048, 512, 1536}, {"forward down_proj", FWD, 2048, 1536, 512},
    {"backward dx (gate)", BWD_DX, 2048, 1536, 512}, {"backward dW (gate)", BWD_DW, 1536, 2048, 512},
};
#define N_SHAPES (int)(sizeof SHAPES / sizeof SHAPES[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: tidal bench gemm [--threads N] [--rounds R] [--json]\n"
               "  The CPU GEMM kernels (AVX-512) against OpenBLAS's sgemm on the shapes of the\n"
               "  bench model: decode (M = 32), forward (M = 2,048) and backward products.\n"
               "  ratio = geometric mean of tidal / OpenBLAS GFLOP/s. Needs AVX-512.\n");
}

/* Operands of one shape: for FWD out = a b^T with a [M,K], b [N,K]; for
 * BWD_DX out += a b with a [M,K], b [K,N]; for BWD_DW out += a^T b with a
 * [K,M], b [K,N]. */
static void run_tidal(const shape *s, float *out, const float *a, const float *b)
{
    switch (s->kind) {
    case FWD: cpu_gemm_nt(out, a, b, NULL, s->M, s->K, s->N); break;
    case BWD_DX: cpu_gemm_nn_acc(out, (size_t)s->N, a, (size_t)s->K, 1, b, (size_t)s->N, s->M, s->K, s->N); break;
    case BWD_DW: cpu_gemm_nn_acc(out, (size_t)s->N, a, 1, (size_t)s->M, b, (size_t)s->N, s->M, s->K, s->N); break;
    }
}

static void run_blas(const shape *s, float *out, const float *a, const float *b)
{
    switch (s->kind) {
    case FWD:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->M, s->N, s->K, 1.0f, a, s->K, b, s->K, 0.0f, out,
                    s->N);
        break;
    case BWD_DX:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s->M, s->N, s->K, 1.0f, a, s->K, b, s->N, 1.0f, out,
                    s->N);
        break;
    case BWD_DW:
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, s->M, s->N, s->K, 1.0f, a, s->M, b, s->N, 1.0f, out,
                    s->N);
        break;
    }
}

/* Seconds per call over `calls` calls. */
static double time_calls(int tidal, const shape *s, float *out, const float *a, const float *b, int calls)
{
    double t0 = bench_now_s();
    for (int i = 0; i < calls; i++) tidal ? run_tidal(s, out, a, b) : run_blas(s, out, a, b);
    return (bench_now_s() - t0) / calls;
}

int bench_gemm_main(int argc, char **argv)
{
    int threads = 0, rounds = 3, as_json = 0;
    static const struct option opts[] = {{"threads", required_argument, 0, 't'},
                                         {"rounds", required_argument, 0, 'r'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (c) {
        case 't': threads = atoi(optarg); break;
        case 'r': rounds = atoi(optarg); break;
        case 'j': as_json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || threads < 0 || rounds < 1 || rounds > 100) {
        usage(stderr);
        return 2;
    }
    if (!cpu_avx512()) {
        fprintf(stderr, "tidal bench gemm: this CPU has no AVX-512 (or TIDAL_NO_AVX512 is set): the CPU paths use "
                        "OpenBLAS itself, there is nothing to compare\n");
        return 1;
    }
    cpu_set_threads(threads);
    threads = cpu_threads();
    const char *core = openblas_get_corename();
    fprintf(stderr, "tidal bench gemm: %d threads, OpenBLAS kernels: %s\n", threads, core ? core : "?");

    json_t *rows = json_array();
    double log_sum = 0.0;
    int rc = 1;
    float *a = NULL, *b = NULL, *o1 = NULL, *o2 = NULL; /* one shape's operands */
    for (int si = 0; si < N_SHAPES; si++) {
        const shape *s = &SHAPES[si];
        const size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, no = (size_t)s->M * s->N;
        a = malloc(na * sizeof(float)), b = malloc(nb * sizeof(float));
        o1 = calloc(no, sizeof(float)), o2 = calloc(no, sizeof(float));
        if (!a || !b || !o1 || !o2) {
            fprintf(stderr, "tidal bench gemm: out of memory\n");
            goto cleanup;
        }
        uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)(si + 1);
        for (size_t i = 0; i < na; i++) a[i] = (float)((x = x * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
        for (size_t i = 0; i < nb; i++) b[i] = (float)((x = x * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
        /* one untimed call each (from zero outputs), and the check */
        run_tidal(s, o1, a, b);
        run_blas(s, o2, a, b);
        double worst = 0.0, big = 0.0;
        for (size_t i = 0; i < no; i++) {
            worst = fmax(worst, fabs((double)o1[i] - o2[i]));
            big = fmax(big, fabs((double)o2[i]));
        }
        if (!(worst <= 1e-4 * big)) {
            fprintf(stderr, "tidal bench gemm: %s: tidal and OpenBLAS differ by %.3g (largest %.3g)\n", s->name, worst,
                    big);
            goto cleanup;
        }
        const double flop = 2.0 * s->M * s->K * s->N;
        const int calls = (int)(2e10 / flop) + 1; /* ~50 ms a side at 400 GFLOP/s */
        double best_t = INFINITY, best_b = INFINITY;
        for (int r = 0; r < rounds; r++) {
            best_t = fmin(best_t, time_calls(1, s, o1, a, b, calls));
            best_b = fmin(best_b, time_calls(0, s, o2, a, b, calls));
        }
        const double gt = flop / best_t / 1e9, gb = flop / best_b / 1e9;
        log_sum += log(gt / gb);
        if (!as_json)
            printf("  %-20s M %5d K %5d N %5d   tidal %6.1f GFLOP/s   OpenBLAS %6.1f GFLOP/s   %.2fx\n", s->name,
                   s->M, s->K, s->N, gt, gb, gt / gb);
        fprintf(stderr, "\rgemm: %d/%d shapes", si + 1, N_SHAPES);
        json_array_append_new(rows, json_pack("{s:s, s:i, s:i, s:i, s:f, s:f}", "shape", s->name, "M", s->M, "K",
                                              s->K, "N", s->N, "tidal_gflops", gt, "openblas_gflops", gb));
        free(a), free(b), free(o1), free(o2);
        a = b = o1 = o2 = NULL;
    }
    fputc('\n', stderr);
    const double ratio = exp(log_sum / N_SHAPES);
    if (!as_json) printf("bench gemm: geometric-mean ratio tidal / OpenBLAS %.3f\n", ratio);
    bench_print_json(json_pack("{s:s, s:s++, s:i, s:o, s:f}", "bench", "gemm", "peer", "OpenBLAS cblas_sgemm, ",
                               core ? core : "?", " kernels", "threads", threads, "shapes", rows, "ratio", ratio));
    rows = NULL;
    rc = 0;
cleanup:
    free(a), free(b), free(o1), free(o2);
    json_decref(rows);
    return rc;
}
