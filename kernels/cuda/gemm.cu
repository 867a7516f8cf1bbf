/* gemm.cu - the one GEMM wrapper: row-major products through cuBLASLt.
 *
 * cuBLASLt is column-major. A row-major [R, C] matrix is the column-major
 * [C, R] matrix with the same bytes, so D = op(A) op(B) (row-major) is
 * D^T = op(B)^T op(A)^T (column-major): cuBLASLt's first operand is our B
 * (transposed when transB), its second our A (transposed when transA), with
 * m = N, n = M, k = K, and D is column-major [N, M] with leading dimension N.
 * A bias[N] is then a per-row vector of that column-major D: EPILOGUE_BIAS.
 *
 * Compute type CUBLAS_COMPUTE_32F (fp32 accumulation; never TF32, which
 * only CUBLAS_COMPUTE_32F_FAST_TF32 would allow), scale type fp32. The
 * descriptors are made per call (a few microseconds; caching them per shape
 * is a later optimisation), the algorithm is cuBLASLt's first heuristic.
 */
#include <cublasLt.h>
#include <stdlib.h>

#include "kernels/cuda/device.cuh"
#include "kernels/cuda/ops_cuda.h"

#define WORKSPACE_BYTES ((size_t)32 << 20)

struct cuda_blas {
    cublasLtHandle_t handle;
    void *workspace;
};

static tidal_status blas_check(cublasStatus_t s, const char *what)
{
    if (s == CUBLAS_STATUS_SUCCESS) return TIDAL_OK;
    return tidal_fail(TIDAL_ERR_UNAVAILABLE, "cuda: gemm: %s: %s", what, cublasLtGetStatusString(s));
}

tidal_status cuda_blas_create(cuda_blas **out)
{
    *out = NULL;
    tidal_status st = TIDAL_OK;
    cuda_blas *b = (cuda_blas *)calloc(1, sizeof *b);
    if (!b) return tidal_fail(TIDAL_ERR_NOMEM, "cuda: gemm: out of memory");
    TRY_GOTO(blas_check(cublasLtCreate(&b->handle), "cublasLtCreate"));
    TRY_GOTO(cuda_alloc(&b->workspace, WORKSPACE_BYTES, "cuBLASLt workspace"));
    *out = b;
    return TIDAL_OK;
cleanup:
    cuda_blas_free(b);
    return st;
}

void cuda_blas_free(cuda_blas *b)
{
    if (!b) return;
    if (b->handle) cublasLtDestroy(b->handle);
    cuda_free(b->workspace);
    free(b);
}

static cudaDataType_t cuda_type(cuda_dtype dt) { return dt == CUDA_BF16 ? CUDA_R_16BF : CUDA_R_32F; }

/* The column-major layout of a stored row-major [rows, cols] operand whose
 * rows are ld elements apart (0: cols), batched. */
static tidal_status make_layout(cublasLtMatrixLayout_t *l, cuda_dtype dt, int rows, int cols, long long ld, int batch,
                                long long stride)
{
    /* column-major view: cols x rows, leading dimension ld */
    TRY(blas_check(cublasLtMatrixLayoutCreate(l, cuda_type(dt), (uint64_t)cols, (uint64_t)rows,
                                              (int64_t)(ld > 0 ? ld : cols)),
                   "layout"));
    if (batch > 1) {
        int32_t count = batch;
        int64_t offset = stride;
        TRY(blas_check(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof count),
                       "batch count"));
        TRY(blas_check(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &offset,
                                                        sizeof offset),
                       "batch stride"));
    }
    return TIDAL_OK;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

tidal_status cuda_gemm(cuda_blas *b, void *D, const void *A, const void *B, const void *bias, const cuda_gemm_op *op,
                       cudaStream_t stream)
{
    tidal_status st = TIDAL_OK;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    int batch = op->batch > 1 ? op->batch : 1;
    if (op->M <= 0 || op->N <= 0 || op->K <= 0)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: gemm: bad shape M %d, N %d, K %d", op->M, op->N, op->K);
    long long cols_a = op->transA ? op->M : op->K, cols_b = op->transB ? op->K : op->N;
    if ((op->lda && op->lda < cols_a) || (op->ldb && op->ldb < cols_b) || (op->ldd && op->ldd < op->N))
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: gemm: M %d, N %d, K %d: a leading dimension below its row length",
                          op->M, op->N, op->K);
    if (op->in == CUDA_F32 && op->out == CUDA_BF16)
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: gemm: f32 inputs with a bf16 output are not supported");
    if (!aligned16(A) || !aligned16(B) || !aligned16(D) || (bias && !aligned16(bias)))
        return tidal_fail(TIDAL_ERR_INVALID, "cuda: gemm: M %d, N %d, K %d: an operand is not 16-byte aligned", op->M,
                          op->N, op->K);

    cublasOperation_t ta = op->transB ? CUBLAS_OP_T : CUBLAS_OP_N; /* cuBLASLt's A is our B */
    cublasOperation_t tb = op->transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    TRY_GOTO(blas_check(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc"));
    TRY_GOTO(blas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "transa"));
    TRY_GOTO(blas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "transb"));
    if (bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        TRY_GOTO(blas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi),
                            "epilogue"));
        TRY_GOTO(blas_check(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias),
                            "bias pointer"));
    }
    /* stored row-major shapes: B is [K,N] or (transB) [N,K]; A is [M,K] or (transA) [K,M]; D is [M,N] */
    TRY_GOTO(make_layout(&la, op->in, op->transB ? op->N : op->K, op->transB ? op->K : op->N, op->ldb, batch,
                         op->strideB));
    TRY_GOTO(make_layout(&lb, op->in, op->transA ? op->K : op->M, op->transA ? op->M : op->K, op->lda, batch,
                         op->strideA));
    TRY_GOTO(make_layout(&ld, op->out, op->M, op->N, op->ldd, batch, op->strideD));

    TRY_GOTO(blas_check(cublasLtMatmulPreferenceCreate(&pref), "preference"));
    {
        uint64_t ws = WORKSPACE_BYTES;
        TRY_GOTO(blas_check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                                                 sizeof ws),
                            "workspace preference"));
        cublasLtMatmulHeuristicResult_t heur;
        int found = 0;
        cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(b->handle, desc, la, lb, ld, ld, pref, 1, &heur, &found);
        if (hs != CUBLAS_STATUS_SUCCESS || found == 0) {
            st = tidal_fail(TIDAL_ERR_UNAVAILABLE,
                            "cuda: gemm: no cuBLASLt algorithm for M %d, N %d, K %d, transA %d, transB %d, batch %d, "
                            "%s -> %s%s: %s",
                            op->M, op->N, op->K, (int)op->transA, (int)op->transB, batch, cuda_dtype_name(op->in),
                            cuda_dtype_name(op->out), bias ? ", bias" : "",
                            hs != CUBLAS_STATUS_SUCCESS ? cublasLtGetStatusString(hs) : "none returned");
            goto cleanup;
        }
        float alpha = op->alpha, beta = op->beta;
        /* cuBLASLt's A = our B, its B = our A: D^T = op(B)^T op(A)^T */
        TRY_GOTO(blas_check(cublasLtMatmul(b->handle, desc, &alpha, B, la, A, lb, &beta, D, ld, D, ld, &heur.algo,
                                           b->workspace, WORKSPACE_BYTES, stream),
                            "cublasLtMatmul"));
    }
    TRY_GOTO(cuda_launch_check(stream, "gemm"));
cleanup:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return st;
}
