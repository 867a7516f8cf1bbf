/* blas_ref.c - the three OpenBLAS symbols kernels/cpu calls, as plain loops,
 * so the GPU test binaries link the CPU ops without OpenBLAS: the GPU hosts
 * have the CUDA toolkit but none of tidal's Debian libraries.
 *
 * openblas_get_corename answers "reference", so kernels/cpu/gemm.c never
 * takes the OpenBLAS route for large products (cpu_blas_avx512() is false);
 * cblas_sgemm is still called where the CPU has no AVX-512. The loops sum in
 * double: as an oracle they are at least as accurate as OpenBLAS.
 */
#include <cblas.h>
#include <stddef.h>

void openblas_set_num_threads(int num_threads) { (void)num_threads; }

char *openblas_get_corename(void)
{
    static char name[] = "reference";
    return name;
}

/* C = alpha op(A) op(B) + beta C, row-major (column-major by the transpose identity). */
void cblas_sgemm(OPENBLAS_CONST enum CBLAS_ORDER Order, OPENBLAS_CONST enum CBLAS_TRANSPOSE TransA,
                 OPENBLAS_CONST enum CBLAS_TRANSPOSE TransB, OPENBLAS_CONST blasint M, OPENBLAS_CONST blasint N,
                 OPENBLAS_CONST blasint K, OPENBLAS_CONST float alpha, OPENBLAS_CONST float *A,
                 OPENBLAS_CONST blasint lda, OPENBLAS_CONST float *B, OPENBLAS_CONST blasint ldb,
                 OPENBLAS_CONST float beta, float *C, OPENBLAS_CONST blasint ldc)
{
    if (Order == CblasColMajor) { /* C^T = op(B)^T op(A)^T, row-major */
        cblas_sgemm(CblasRowMajor, TransB, TransA, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
        return;
    }
    int ta = TransA != CblasNoTrans, tb = TransB != CblasNoTrans;
#pragma omp parallel for schedule(static)
    for (blasint i = 0; i < M; i++)
        for (blasint j = 0; j < N; j++) {
            double s = 0.0;
            for (blasint k = 0; k < K; k++) {
                float a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += (double)a * b;
            }
            float *c = C + (size_t)i * ldc + j;
            *c = (float)(alpha * s + (beta != 0.0f ? (double)beta * *c : 0.0));
        }
}
