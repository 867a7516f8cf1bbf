/* kvpages.c - the paged KV cache's block allocator (see kvpages.h). */
#include "rollout/kvpages.h"

#include <stdlib.h>

#include "kernels/cuda/engine_index.h"

struct kvpages {
    int n_blocks, block_size, max_seqs, max_blocks;
    int32_t *table;   /* [max_seqs][max_blocks] */
    int *length;      /* [max_seqs] positions held */
    int *nmapped;     /* [max_seqs] blocks mapped */
    int *refs;        /* [n_blocks] */
    int32_t *free_;   /* stack of free blocks, top at free_[nfree - 1] */
    int nfree;
};

tidal_status kvpages_create(int n_blocks, int block_size, int max_seqs, int max_blocks, kvpages **out)
{
    *out = NULL;
    if (n_blocks < 1) return tidal_fail(TIDAL_ERR_INVALID, "kvpages: n_blocks = %d (need >= 1)", n_blocks);
    if (block_size < 1) return tidal_fail(TIDAL_ERR_INVALID, "kvpages: block_size = %d (need >= 1)", block_size);
    if (max_seqs < 1) return tidal_fail(TIDAL_ERR_INVALID, "kvpages: max_seqs = %d (need >= 1)", max_seqs);
    if (max_blocks < 1) return tidal_fail(TIDAL_ERR_INVALID, "kvpages: max_blocks = %d (need >= 1)", max_blocks);
    if ((int64_t)n_blocks * block_size > INT32_MAX || (int64_t)max_blocks * block_size > INT32_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "kvpages: %d blocks of %d slots: more than 2^31 slots", n_blocks,
                          block_size);
    kvpages *p = calloc(1, sizeof *p);
    if (!p) return tidal_fail(TIDAL_ERR_NOMEM, "kvpages: out of memory");
    p->n_blocks = n_blocks;
    p->block_size = block_size;
    p->max_seqs = max_seqs;
    p->max_blocks = max_blocks;
    p->table = malloc((size_t)max_seqs * max_blocks * sizeof *p->table);
    p->length = calloc((size_t)max_seqs, sizeof *p->length);
    p->nmapped = calloc((size_t)max_seqs, sizeof *p->nmapped);
    p->refs = calloc((size_t)n_blocks, sizeof *p->refs);
    p->free_ = malloc((size_t)n_blocks * sizeof *p->free_);
    if (!p->table || !p->length || !p->nmapped || !p->refs || !p->free_) {
        kvpages_free(p);
        return tidal_fail(TIDAL_ERR_NOMEM, "kvpages: out of memory for %d blocks, %d sequences", n_blocks, max_seqs);
    }
    for (size_t i = 0; i < (size_t)max_seqs * max_blocks; i++) p->table[i] = -1;
    for (int b = 0; b < n_blocks; b++) p->free_[b] = n_blocks - 1 - b; /* pops 0 first */
    p->nfree = n_blocks;
    *out = p;
    return TIDAL_OK;
}

void kvpages_free(kvpages *p)
{
    if (!p) return;
    free(p->table);
    free(p->length);
    free(p->nmapped);
    free(p->refs);
    free(p->free_);
    free(p);
}

static bool seq_ok(const kvpages *p, int seq) { return seq >= 0 && seq < p->max_seqs; }

static int blocks_for(const kvpages *p, int n) { return (n + p->block_size - 1) / p->block_size; }

static tidal_status out_of_blocks(const kvpages *p, int seq, int asked, int n)
{
    return tidal_fail(TIDAL_ERR_NOMEM,
                      "kvpages: sequence %d: %d block(s) asked for %d tokens, %d free of %d (blocks of %d tokens): "
                      "the KV cache is full - give it more memory or run fewer sequences",
                      seq, asked, n, p->nfree, p->n_blocks, p->block_size);
}

static int32_t pop_block(kvpages *p)
{
    int32_t b = p->free_[--p->nfree];
    p->refs[b] = 1;
    return b;
}

tidal_status kvpages_reserve(kvpages *p, int seq, int n)
{
    if (!seq_ok(p, seq))
        return tidal_fail(TIDAL_ERR_INVALID, "kvpages: sequence %d (need 0 .. %d)", seq, p->max_seqs - 1);
    if (n < 0 || n > p->max_blocks * p->block_size)
        return tidal_fail(TIDAL_ERR_INVALID,
                          "kvpages: sequence %d: %d tokens (a sequence holds at most %d: %d blocks of %d)",
                          seq, n, p->max_blocks * p->block_size, p->max_blocks, p->block_size);
    int need = blocks_for(p, n) - p->nmapped[seq];
    if (need > p->nfree) return out_of_blocks(p, seq, need, n);
    int32_t *row = p->table + (size_t)seq * p->max_blocks;
    for (int i = 0; i < need; i++) row[p->nmapped[seq]++] = pop_block(p);
    if (n > p->length[seq]) p->length[seq] = n;
    return TIDAL_OK;
}

tidal_status kvpages_fork(kvpages *p, int parent, int child, kvpages_copy *copy)
{
    if (copy) *copy = (kvpages_copy){-1, -1, 0};
    if (!seq_ok(p, parent) || !seq_ok(p, child))
        return tidal_fail(TIDAL_ERR_INVALID, "kvpages: fork %d -> %d: sequences are 0 .. %d", parent, child,
                          p->max_seqs - 1);
    if (parent == child) return tidal_fail(TIDAL_ERR_INVALID, "kvpages: fork %d -> itself", parent);
    if (p->nmapped[child] > 0 || p->length[child] > 0)
        return tidal_fail(TIDAL_ERR_INVALID, "kvpages: fork %d -> %d: sequence %d is not empty (%d tokens)", parent,
                          child, child, p->length[child]);
    const int len = p->length[parent], full = len / p->block_size, tail = len % p->block_size;
    if (tail && !copy)
        return tidal_fail(TIDAL_ERR_INVALID, "kvpages: fork %d -> %d: a partly filled block needs a copy", parent,
                          child);
    if (tail && p->nfree < 1) return out_of_blocks(p, child, 1, len);
    const int32_t *prow = p->table + (size_t)parent * p->max_blocks;
    int32_t *crow = p->table + (size_t)child * p->max_blocks;
    for (int i = 0; i < full; i++) {
        crow[i] = prow[i];
        p->refs[prow[i]]++;
    }
    p->nmapped[child] = full;
    if (tail) {
        int32_t b = pop_block(p);
        crow[full] = b;
        p->nmapped[child] = full + 1;
        *copy = (kvpages_copy){prow[full], b, tail};
    }
    p->length[child] = len;
    return TIDAL_OK;
}

void kvpages_release(kvpages *p, int seq)
{
    if (!seq_ok(p, seq)) return;
    int32_t *row = p->table + (size_t)seq * p->max_blocks;
    for (int i = p->nmapped[seq] - 1; i >= 0; i--) { /* pushed last first: the next reserve reuses them in order */
        int32_t b = row[i];
        if (--p->refs[b] == 0) p->free_[p->nfree++] = b;
        row[i] = -1;
    }
    p->nmapped[seq] = 0;
    p->length[seq] = 0;
}

int kvpages_length(const kvpages *p, int seq) { return seq_ok(p, seq) ? p->length[seq] : 0; }

int64_t kvpages_slot(const kvpages *p, int seq, int pos)
{
    if (!seq_ok(p, seq) || pos >= p->length[seq]) return -1;
    return cuda_kv_slot(p->table + (size_t)seq * p->max_blocks, p->max_blocks, p->block_size, pos);
}

const int32_t *kvpages_table(const kvpages *p) { return p->table; }
int kvpages_free_blocks(const kvpages *p) { return p->nfree; }
int kvpages_total_blocks(const kvpages *p) { return p->n_blocks; }
int kvpages_block_size(const kvpages *p) { return p->block_size; }
int kvpages_max_blocks(const kvpages *p) { return p->max_blocks; }
int kvpages_refcount(const kvpages *p, int b) { return b >= 0 && b < p->n_blocks ? p->refs[b] : 0; }

tidal_status kvpages_check(const kvpages *p)
{
    tidal_status st = TIDAL_OK;
    int *count = calloc((size_t)p->n_blocks, sizeof *count);
    char *listed = calloc((size_t)p->n_blocks, 1);
    if (!count || !listed) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "kvpages: check: out of memory");
        goto cleanup;
    }
    for (int s = 0; s < p->max_seqs; s++) {
        const int32_t *row = p->table + (size_t)s * p->max_blocks;
        if (p->nmapped[s] != blocks_for(p, p->length[s])) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "kvpages: sequence %d maps %d blocks for %d tokens", s, p->nmapped[s],
                            p->length[s]);
            goto cleanup;
        }
        for (int i = 0; i < p->max_blocks; i++) {
            bool mapped = i < p->nmapped[s];
            if (mapped != (row[i] >= 0) || row[i] >= p->n_blocks) {
                st = tidal_fail(TIDAL_ERR_CORRUPT, "kvpages: sequence %d: entry %d is %d (%d blocks mapped)", s, i,
                                row[i], p->nmapped[s]);
                goto cleanup;
            }
            if (mapped) count[row[i]]++;
        }
    }
    for (int s = 0; s < p->max_seqs; s++) { /* a partly filled last block has one owner */
        if (p->length[s] % p->block_size == 0) continue;
        int32_t b = p->table[(size_t)s * p->max_blocks + p->nmapped[s] - 1];
        if (count[b] != 1) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "kvpages: sequence %d writes block %d, which %d sequences hold", s, b,
                            count[b]);
            goto cleanup;
        }
    }
    for (int i = 0; i < p->nfree; i++) {
        int32_t b = p->free_[i];
        if (b < 0 || b >= p->n_blocks || listed[b]) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "kvpages: free list entry %d is block %d (out of range or twice)", i, b);
            goto cleanup;
        }
        listed[b] = 1;
    }
    for (int b = 0; b < p->n_blocks; b++) {
        if (count[b] != p->refs[b] || (p->refs[b] == 0) != (listed[b] != 0)) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "kvpages: block %d: count %d, %d table entries, %s the free list", b,
                            p->refs[b], count[b], listed[b] ? "on" : "not on");
            goto cleanup;
        }
    }
cleanup:
    free(count);
    free(listed);
    return st;
}
