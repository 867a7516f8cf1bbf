/* engine_paged.h - the host side of the paged engine (the GPU engine's
 * logic without the GPU): slots are rollout/kvpages sequences and block-table
 * rows; a step's segments (engine_backend.h) become rows (token, sequence,
 * position) - the prompts of at most max_prefill tokens first, each a run
 * for the packed attention, then the decodes and longer prompts for the
 * paged attention - a prefill identical to an earlier prefill of the same
 * step forks it (full blocks shared, the partly filled last block copied
 * after the step), and one logits row per segment is sampled with
 * cuda_sample's contract (Philox keyed on seed, request id, token index), in
 * the segments' order.
 *
 * What computes is a paged device: the GPU (rollout/engine_cuda.c:
 * model/decode_cuda and kernels/cuda/engine.cu) or the CPU references of
 * the same kernels (rollout/engine_ref.c: kernels/cpu/engine_ref and the
 * CPU ops), with which this host logic is tested on machines without a GPU.
 * Internal to the engines.
 */
#ifndef TIDAL_ROLLOUT_ENGINE_PAGED_H
#define TIDAL_ROLLOUT_ENGINE_PAGED_H

#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "kernels/cuda/engine_index.h"
#include "model/model.h"
#include "rollout/engine.h"
#include "rollout/engine_cuda.h"

/* The cache and step sizes of a paged engine. */
typedef struct paged_geometry {
    int block_size, n_blocks, max_blocks; /* max_blocks: blocks per sequence (max_len rounded up) */
    int max_seqs;                         /* = slots */
    int max_rows;                         /* rows per step: max_step_tokens + slots + max_len */
    int max_prefill;                      /* the longest prompt prefilled through the packed attention */
} paged_geometry;

/* The longest default prefill run: the packed attention's scratch grows as
 * NH x n^2 (docs/gpu.md), so longer prompts take the paged path. */
#define PAGED_MAX_PREFILL 2048

/* The geometry for engine options o and co's block_size (0: 16), n_blocks
 * (0: every slot its max_len) and max_prefill (0: min(max_len,
 * PAGED_MAX_PREFILL); at most max_len); co may be NULL (every default).
 * TIDAL_ERR_INVALID for bad values. */
tidal_status paged_geometry_of(const engine_options *o, const engine_cuda_options *co, paged_geometry *out);

/* Where a paged engine's steps compute (every pointer host memory). */
typedef struct paged_device {
    void *impl;
    /* rows: token tok[i] at position pos[i] of table row seq[i], i < T, with
     * the block table tables [max_seqs][max_blocks]; keeps the fp32 logits of
     * rows out_rows[0 .. n_out) (duplicates allowed) for sample(). The first
     * n_prefill runs are whole prompts: rows cu_prefill[j] .. cu_prefill[j+1]-1
     * are one sequence at positions 0, 1, ... (cu_prefill[0] = 0, each run
     * at most max_prefill rows), attending through the packed attention over
     * the step's own K/V; rows from cu_prefill[n_prefill] on attend through
     * the paged cache. cu_prefill may be NULL when n_prefill is 0. */
    tidal_status (*step)(void *impl, const int32_t *tok, const int32_t *seq, const int32_t *pos, int T,
                         const int32_t *cu_prefill, int n_prefill, const int32_t *tables, const int32_t *out_rows,
                         int n_out);
    /* slots 0 .. cnt[i]-1 of block src[i] into dst[i], every layer's K and V, after the step */
    tidal_status (*copy_blocks)(void *impl, const int32_t *src, const int32_t *dst, const int32_t *cnt, int n);
    /* samples the kept logits rows 0 .. n-1 with p[n]; logits (NULL or [n, V]) receives them */
    tidal_status (*sample)(void *impl, const cuda_sample_params *p, int n, int32_t *tok, float *lp, uint8_t *tr,
                           float *logits);
    /* model.c's flat fp32 parameters, n floats */
    tidal_status (*set_params)(void *impl, const float *params, size_t n);
    void (*free)(void *impl);
} paged_device;

/* An engine over model m whose steps compute on dev (taken over: freed with
 * the engine, or here when creation fails); g as paged_geometry_of gave it,
 * dev made for it. The weights are uploaded now. */
tidal_status engine_paged_create(model *m, uint64_t version, const engine_options *o, const paged_geometry *g,
                                 const paged_device *dev, engine **out);

#endif
