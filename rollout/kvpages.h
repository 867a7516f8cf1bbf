/* kvpages.h - the block allocator and block tables of the GPU engine's paged
 * KV cache (plain C, host side; no CUDA needed, tested on the CPU).
 *
 * The cache is n_blocks blocks of block_size token slots
 * (kernels/cuda/engine_index.h has the layout and the slot maths). Each of
 * max_seqs sequence ids owns a row of the block table, max_blocks entries of
 * int32, -1 where nothing is mapped; the table is one dense host array
 * [max_seqs][max_blocks] the engine uploads as is. Blocks carry reference
 * counts:
 *   - kvpages_reserve grows a sequence to hold n positions, all or nothing:
 *     when the free blocks do not suffice, nothing changes and the error
 *     names the sequence, how many blocks were asked and how many are free
 *     (never a silent truncation);
 *   - kvpages_fork gives a new sequence the prefix of another (the G samples
 *     of a GRPO group share their prompt): every FULL block is shared (its
 *     reference count goes up), and a partly filled last block is not - the
 *     child gets a fresh block and the caller copies the first `n` slots of
 *     it (kvpages_copy). So a block that is written to (only ever a
 *     sequence's last, partly filled block) always has one owner, and shared
 *     blocks are read-only: no copy-on-write is needed later;
 *   - kvpages_release drops a sequence; a block returns to the free list
 *     when its last reference goes.
 * Free blocks are a LIFO stack, handed out 0, 1, 2, ... at first: the same
 * calls give the same tables.
 * Single-threaded: the engine's thread owns it.
 */
#ifndef TIDAL_ROLLOUT_KVPAGES_H
#define TIDAL_ROLLOUT_KVPAGES_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"

typedef struct kvpages kvpages;

/* The copy kvpages_fork asks for: slots 0 .. n-1 of block src into block dst
 * (every layer, K and V); n == 0: nothing to copy. */
typedef struct kvpages_copy {
    int32_t src, dst;
    int n;
} kvpages_copy;

/* An allocator of n_blocks blocks of block_size slots for max_seqs sequences
 * of at most max_blocks blocks each (all >= 1, else TIDAL_ERR_INVALID naming
 * the argument). Every sequence starts empty (length 0, its row all -1). */
tidal_status kvpages_create(int n_blocks, int block_size, int max_seqs, int max_blocks, kvpages **out);
/* Frees it; NULL is a no-op. */
void kvpages_free(kvpages *p);

/* Sequence seq holds positions 0 .. n-1 afterwards (its length becomes
 * max(length, n)), new blocks mapped at the end of its row. All or nothing:
 * TIDAL_ERR_NOMEM "kvpages: sequence S: N blocks asked for n tokens, F free of
 * TOTAL ..." when the free blocks do not suffice, TIDAL_ERR_INVALID when n
 * exceeds max_blocks * block_size or seq is out of range. */
tidal_status kvpages_reserve(kvpages *p, int seq, int n);

/* Sequence child (empty) takes parent's positions 0 .. length-1: the full
 * blocks shared, a partly filled last block copied into a fresh block
 * (*copy says which; copy->n == 0 when there is none). TIDAL_ERR_NOMEM as
 * kvpages_reserve when no block is free for the copy, TIDAL_ERR_INVALID when
 * child is not empty or equals parent. copy may be NULL only when the parent's
 * length is a multiple of block_size. */
tidal_status kvpages_fork(kvpages *p, int parent, int child, kvpages_copy *copy);

/* Drops every block of seq (to the free list when no other sequence holds
 * it) and empties it. An empty or out-of-range seq is a no-op. */
void kvpages_release(kvpages *p, int seq);

/* Positions held by seq (0 when empty or out of range). */
int kvpages_length(const kvpages *p, int seq);
/* The slot of position pos of seq, or -1 (unmapped, or out of range). */
int64_t kvpages_slot(const kvpages *p, int seq, int pos);
/* The block table [max_seqs][max_blocks], -1 where unmapped (valid until the
 * next call that changes p). */
const int32_t *kvpages_table(const kvpages *p);
int kvpages_free_blocks(const kvpages *p);
int kvpages_total_blocks(const kvpages *p);
int kvpages_block_size(const kvpages *p);
int kvpages_max_blocks(const kvpages *p);
/* References to block b (0 when free). */
int kvpages_refcount(const kvpages *p, int b);

/* Checks every invariant (each block's count equals the table entries naming
 * it; free blocks are exactly those with count 0, each listed once; a row
 * maps exactly ceil(length / block_size) blocks, then -1s; a partly filled
 * last block has one owner). TIDAL_ERR_CORRUPT naming the first broken one. */
tidal_status kvpages_check(const kvpages *p);

#endif
