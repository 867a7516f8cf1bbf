/* decode_cuda.h - the decoder's inference step on the GPU over a paged KV
 * cache: the building block of the GPU generation engine (docs/gpu.md).
 *
 * One call, decode_cuda_step, runs T rows: row i is token tokens[i] at
 * position pos[i] of sequence seq[i] (a row of the block table the caller
 * keeps with rollout/kvpages). The first rows may be prefill runs: whole
 * prompts, each a contiguous run of one sequence at positions 0 .. n-1
 * (host cu_prefill). Per layer: RMSNorm, Q/K/V GEMMs (+ bias), RoPE at the
 * rows' positions, cuda_kv_store of every row's K/V, then the attention:
 * the runs' rows through the trainer's packed causal attention
 * (cuda_attention_forward over the step's own q/k/v rows: a prompt's keys
 * are all in the step, no paged read), the other rows (decodes, and prompts
 * longer than max_prefill) through cuda_decode_attention over keys 0 ..
 * pos[i] of their sequence's blocks, in chunks of at most max_seqs rows;
 * then the O GEMM onto the residual, RMSNorm, the SwiGLU MLP onto the
 * residual; last the final norm and the LM head into fp32 logits on the
 * device - of the rows the caller names only (a prompt's last row, every
 * decode row): their normed hidden rows are gathered first, so a long
 * prefill never makes [T, V] logits.
 * All rows' K/V are stored before any row attends, so the rows of a prompt
 * on the paged path attend causally to each other exactly as a decode token
 * attends to its past: continuous batching is the caller's mix of rows.
 * GEMMs go through cuda_gemm (cuBLASLt) with M = T.
 * Scratch is bounded by the options, not by max_rows: the packed
 * attention's O(NH max_prefill^2) (cuda_attention_scratch_bytes) and the
 * paged attention's scores [max_seqs, NH, max_len] floats.
 *
 * Weights: decode_cuda_set_params uploads model.c's flat fp32 parameters
 * (model/gpu_layout.h), as fp32 or rounded to bf16, each tensor at a
 * 256-byte aligned offset. It may be called between steps (an in-flight
 * weight update): the cache keeps the entries older weights computed.
 *
 * Written and compiled without a GPU: never run (docs/gpu.md).
 */
#ifndef TIDAL_MODEL_DECODE_CUDA_H
#define TIDAL_MODEL_DECODE_CUDA_H

#include <stdint.h>

#include "base/status.h"
#include "kernels/cuda/common.h"
#include "model/gpu_layout.h"

typedef struct decode_cuda decode_cuda;

typedef struct decode_cuda_options {
    int max_rows;       /* rows per step (prefill tokens + decodes), >= 1 */
    int max_logit_rows; /* rows whose logits one step returns, 1 .. max_rows */
    int n_blocks;       /* KV cache blocks (all layers share the block ids) */
    int block_size;     /* slots per block */
    int max_seqs;       /* block-table rows */
    int max_blocks;     /* blocks per sequence: positions < max_blocks * block_size */
    int max_prefill;    /* the longest prefill run (0: none; the packed attention's scratch) */
    cuda_dtype dt;      /* weights and activations */
    cuda_dtype cache_dt;/* the KV cache */
} decode_cuda_options;

/* A decoder of shape d with the cache and step buffers of o (device memory,
 * the failure naming what did not fit); parameters unset (zero). */
tidal_status decode_cuda_create(const model_gpu_dims *d, const decode_cuda_options *o, decode_cuda **out);
void decode_cuda_free(decode_cuda *g);

/* Uploads params (host fp32 [model_gpu_params(d)]) in the decoder's dtype;
 * waits for the stream. */
tidal_status decode_cuda_set_params(decode_cuda *g, const float *params);

/* One step over T rows (host arrays, checked: ids in [0, V), seq in [0,
 * max_seqs), 0 <= pos < max_blocks * block_size) with the block table
 * tables[max_seqs][max_blocks] (host, as kvpages_table gives it; every row's
 * positions 0 .. pos must be mapped). Rows cu_prefill[j] .. cu_prefill[j+1]-1
 * (host [n_prefill + 1], cu_prefill[0] = 0, increasing, each run at most
 * max_prefill rows; may be NULL when n_prefill is 0) are prefill run j: one
 * sequence at positions 0, 1, ... (checked); the rows after cu_prefill
 * [n_prefill] take the paged path. *logits receives the device pointer of
 * the fp32 logits [n_out, V] of rows out_rows[0 .. n_out) (host, each in
 * [0, T); NULL: every row, n_out = T), valid until the next step.
 * Asynchronous on the decoder's stream. */
tidal_status decode_cuda_step(decode_cuda *g, const int32_t *tokens, const int32_t *seq, const int32_t *pos, int T,
                              const int32_t *cu_prefill, int n_prefill, const int32_t *tables, const int32_t *out_rows,
                              int n_out, const float **logits);

/* The forked tails kvpages_fork asked for: slots 0 .. count[i]-1 of block
 * src[i] into dst[i], in every layer's K and V (host arrays of n). */
tidal_status decode_cuda_copy_blocks(decode_cuda *g, const int32_t *src, const int32_t *dst, const int32_t *count,
                                     int n);

cudaStream_t decode_cuda_stream(const decode_cuda *g);

#endif
