/* test_kvpages.c - the GPU engine's host-side pieces, on the CPU, no GPU:
 *
 * - Philox-4x32-10 (kernels/cuda/engine_index.h) against Random123's known
 *   answers (kat_vectors: zeros, all ones, the digits of pi);
 * - the sampler's uniforms: in (0, 1), a pure function of (seed, sequence,
 *   step, index) that changes with each; Gumbel-max over a small softmax
 *   draws each token with its probability (frequencies over 200k steps);
 * - the rank key: its order is the CPU engine's (z descending, id ascending)
 *   over values with ties, signed zeros and infinities;
 * - the slot maths: slot -1 for unmapped blocks and out-of-range positions;
 *   offsets of the [2][L][slots][NKV][HD] layout are a bijection;
 * - the block allocator (rollout/kvpages.h): reserve grows block by block,
 *   fork shares the full blocks of a prompt and copies its partial tail,
 *   release returns blocks only when the last holder goes, exhaustion is an
 *   error naming the sequence, the blocks asked and free, and changes
 *   nothing; a random mix of operations keeps every invariant (kvpages_check);
 * - the CPU references of the GPU engine's kernels (kernels/cpu/engine_ref.h):
 *   KV store into blocks a GRPO group shares (padding and unmapped slots
 *   skipped), paged decode attention against cpu_attention_forward on the
 *   same sequences laid out contiguously; the sampler against the CPU
 *   engine's definitions: greedy argmax (ties low) and its temperature-1
 *   logprob, logprob = z_tok - lse at the sampling temperature, the kept sets
 *   of top-k / top-p / min-p computed by brute force in double, and draw
 *   frequencies equal to the renormalised distribution;
 * - the GPU decode step's composition (model/decode_cuda.c) done with the
 *   CPU ops and these references: every row's K/V stored before any row
 *   attends over its paged keys 0 .. pos, so a prefill of two prompts in one
 *   step, a forked GRPO sample and decode steps give the logits of the full
 *   causal forward (tests/gpu/cpu_decoder.h's op order) and its greedy tokens.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/hash.h"
#include "check.h"
#include "gpu/cpu_decoder.h"
#include "kernels/cpu/engine_ref.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/softmax.h"
#include "kernels/cuda/engine_index.h"
#include "model/gpu_layout.h"
#include "rollout/kvpages.h"

static void test_philox_known_answers(void)
{
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6,
         0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
         0x24126ea1},
    };
    for (int i = 0; i < 3; i++) {
        cuda_philox4 c = {{kat[i][0], kat[i][1], kat[i][2], kat[i][3]}};
        cuda_philox4 r = cuda_philox4x32_10(c, kat[i][4], kat[i][5]);
        for (int w = 0; w < 4; w++)
            CHECK_MSG(r.v[w] == kat[i][6 + w], "vector %d word %d: %08x, want %08x", i, w, r.v[w], kat[i][6 + w]);
    }
}

static void test_sampler_uniform(void)
{
    double sum = 0.0;
    int n = 0;
    for (uint32_t j = 0; j < 100; j++)
        for (uint32_t step = 0; step < 100; step++) {
            double u = cuda_sampler_uniform(42, 7, step, j);
            CHECK(u > 0.0 && u < 1.0);
            CHECK(u == cuda_sampler_uniform(42, 7, step, j)); /* a pure function */
            CHECK(isfinite(cuda_sampler_gumbel(42, 7, step, j)));
            sum += u;
            n++;
        }
    CHECK_MSG(fabs(sum / n - 0.5) < 0.01, "mean %g", sum / n);
    /* each coordinate of the key and counter changes the draw */
    double u0 = cuda_sampler_uniform(1, 2, 3, 4);
    CHECK(u0 != cuda_sampler_uniform(2, 2, 3, 4));
    CHECK(u0 != cuda_sampler_uniform(1ull << 40 | 1, 2, 3, 4));
    CHECK(u0 != cuda_sampler_uniform(1, 3, 3, 4));
    CHECK(u0 != cuda_sampler_uniform(1, 2ull | 1ull << 33, 3, 4));
    CHECK(u0 != cuda_sampler_uniform(1, 2, 4, 4));
    CHECK(u0 != cuda_sampler_uniform(1, 2, 3, 5));
}

/* Gumbel-max over z = log p draws token j with probability p_j. */
static void test_gumbel_max_frequencies(void)
{
    const double p[5] = {0.5, 0.25, 0.125, 0.1, 0.025};
    int hits[5] = {0};
    const int N = 200000;
    for (int step = 0; step < N; step++) {
        int best = -1;
        double bv = -INFINITY;
        for (int j = 0; j < 5; j++) {
            double v = log(p[j]) + cuda_sampler_gumbel(99, 3, (uint32_t)step, (uint32_t)j);
            if (v > bv) bv = v, best = j;
        }
        hits[best]++;
    }
    for (int j = 0; j < 5; j++) {
        double f = (double)hits[j] / N, sd = sqrt(p[j] * (1 - p[j]) / N);
        CHECK_MSG(fabs(f - p[j]) < 5 * sd, "token %d: frequency %g, probability %g (sd %g)", j, f, p[j], sd);
    }
}

static void test_rank_key(void)
{
    const float z[] = {-INFINITY, -3.5f, -0.0f, 0.0f, 1e-30f, 1.0f, 1.0f, 2.0f, INFINITY, -1e-30f, 1.0f, -3.5f};
    const int n = (int)(sizeof z / sizeof z[0]);
    for (int a = 0; a < n; a++)
        for (int b = 0; b < n; b++) {
            if (a == b) continue;
            /* the CPU engine's order: z descending (as floats compare: -0 == +0), then id ascending */
            bool a_first = z[a] > z[b] || (z[a] == z[b] && a < b);
            uint64_t ka = cuda_rank_key(z[a], a), kb = cuda_rank_key(z[b], b);
            CHECK_MSG((ka > kb) == a_first, "z %g id %d vs z %g id %d", (double)z[a], a, (double)z[b], b);
        }
    CHECK(cuda_rank_key(1.0f, 3) > cuda_rank_key(1.0f, 4)); /* ties: the lower id first */
    CHECK(cuda_rank_key(-0.0f, 2) > cuda_rank_key(0.0f, 3)); /* -0 == +0: by id */
    CHECK(cuda_float_order(-1.0f) < cuda_float_order(-0.5f));
    CHECK(cuda_float_order(-INFINITY) < cuda_float_order(-3e38f));
    CHECK(cuda_mass_fixed(1.0) == CUDA_MASS_ONE && cuda_mass_fixed(-1.0) == 0 && cuda_mass_fixed(NAN) == 0);
    CHECK(cuda_mass_fixed(2.0) == CUDA_MASS_ONE && cuda_mass_fixed(0.5) == CUDA_MASS_ONE / 2);
}

static void test_slot_maths(void)
{
    const int32_t row[4] = {5, 2, -1, 7};
    CHECK(cuda_kv_slot(row, 4, 16, 0) == 80);
    CHECK(cuda_kv_slot(row, 4, 16, 15) == 95);
    CHECK(cuda_kv_slot(row, 4, 16, 16) == 32);
    CHECK(cuda_kv_slot(row, 4, 16, 33) == -1); /* unmapped block */
    CHECK(cuda_kv_slot(row, 4, 16, 48) == 112);
    CHECK(cuda_kv_slot(row, 4, 16, 64) == -1); /* past the row */
    CHECK(cuda_kv_slot(row, 4, 16, -1) == -1);
    /* [2][L][slots][NKV][HD]: every element once */
    const int L = 3, S = 10, NKV = 2, HD = 4;
    const size_t total = (size_t)2 * L * S * NKV * HD;
    unsigned char *seen = calloc(total, 1);
    CHECK(seen);
    for (int kv = 0; kv < 2; kv++)
        for (int l = 0; l < L; l++)
            for (int s = 0; s < S; s++)
                for (int h = 0; h < NKV; h++)
                    for (int d = 0; d < HD; d++) {
                        size_t o = cuda_kv_layer_offset(kv, l, L, S, NKV, HD) + cuda_kv_offset(s, h, d, NKV, HD);
                        if (o >= total || seen[o]) {
                            free(seen);
                            CHECK_MSG(0, "offset %zu out of range or twice", o);
                        }
                        seen[o] = 1;
                    }
    free(seen);
}

static void test_reserve_and_release(void)
{
    kvpages *p = NULL;
    CHECK_OK(kvpages_create(8, 4, 3, 4, &p));
    CHECK(kvpages_free_blocks(p) == 8);
    tidal_status st = kvpages_reserve(p, 0, 5); /* 2 blocks: 0 and 1 */
    if (st != TIDAL_OK) goto done;
    if (kvpages_slot(p, 0, 0) != 0 || kvpages_slot(p, 0, 4) != 4 || kvpages_slot(p, 0, 5) != -1 ||
        kvpages_free_blocks(p) != 6)
        st = TIDAL_ERR_CORRUPT;
    if (st == TIDAL_OK) st = kvpages_reserve(p, 0, 8); /* still 2 blocks */
    if (st == TIDAL_OK && kvpages_free_blocks(p) != 6) st = TIDAL_ERR_CORRUPT;
    if (st == TIDAL_OK) st = kvpages_reserve(p, 1, 1); /* block 2 */
    if (st == TIDAL_OK && kvpages_slot(p, 1, 0) != 8) st = TIDAL_ERR_CORRUPT;
    if (st == TIDAL_OK) st = kvpages_reserve(p, 0, 9); /* block 3 for sequence 0 */
    if (st == TIDAL_OK && kvpages_slot(p, 0, 8) != 12) st = TIDAL_ERR_CORRUPT;
    if (st == TIDAL_OK) st = kvpages_check(p);
    if (st == TIDAL_OK) {
        kvpages_release(p, 0);
        if (kvpages_free_blocks(p) != 7 || kvpages_length(p, 0) != 0 || kvpages_table(p)[0] != -1)
            st = TIDAL_ERR_CORRUPT;
    }
    if (st == TIDAL_OK) st = kvpages_check(p);
    /* out of range: refused with the range named */
    if (st == TIDAL_OK && kvpages_reserve(p, 3, 1) != TIDAL_ERR_INVALID) st = TIDAL_ERR_CORRUPT;
    if (st == TIDAL_OK && kvpages_reserve(p, 2, 17) != TIDAL_ERR_INVALID) st = TIDAL_ERR_CORRUPT;
    if (st == TIDAL_OK && !strstr(tidal_errmsg(), "at most 16")) st = TIDAL_ERR_CORRUPT;
done:
    kvpages_free(p);
    CHECK_OK(st);
    kvpages *bad = NULL;
    CHECK_STATUS(kvpages_create(0, 4, 1, 1, &bad), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "n_blocks") != NULL && bad == NULL);
    CHECK_STATUS(kvpages_create(4, 0, 1, 1, &bad), TIDAL_ERR_INVALID);
}

/* A GRPO group: one prompt of 10 tokens in blocks of 4 (two full blocks and
 * a tail of 2), forked into 3 more samples. */
static void test_fork_shares_prompt(void)
{
    kvpages *p = NULL;
    CHECK_OK(kvpages_create(16, 4, 4, 8, &p));
    tidal_status st = kvpages_reserve(p, 0, 10);
    kvpages_copy cp[4] = {{0}};
    for (int g = 1; g < 4 && st == TIDAL_OK; g++) st = kvpages_fork(p, 0, g, &cp[g]);
    if (st != TIDAL_OK) goto done;
    const int32_t *t = kvpages_table(p);
    for (int g = 1; g < 4; g++) {
        if (t[g * 8 + 0] != t[0] || t[g * 8 + 1] != t[1] || t[g * 8 + 2] == t[2] || t[g * 8 + 3] != -1 ||
            cp[g].src != t[2] || cp[g].dst != t[g * 8 + 2] || cp[g].n != 2 || kvpages_length(p, g) != 10) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "test: sample %d: table %d %d %d %d, copy %d -> %d n %d", g,
                            t[g * 8], t[g * 8 + 1], t[g * 8 + 2], t[g * 8 + 3], cp[g].src, cp[g].dst, cp[g].n);
            goto done;
        }
    }
    if (kvpages_refcount(p, t[0]) != 4 || kvpages_refcount(p, t[1]) != 4 || kvpages_refcount(p, t[2]) != 1 ||
        kvpages_free_blocks(p) != 16 - 3 - 3) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: refcounts %d %d %d, %d free", kvpages_refcount(p, t[0]),
                        kvpages_refcount(p, t[1]), kvpages_refcount(p, t[2]), kvpages_free_blocks(p));
        goto done;
    }
    if ((st = kvpages_check(p)) != TIDAL_OK) goto done;
    /* samples grow on their own blocks; the shared prompt is never written */
    for (int g = 0; g < 4 && st == TIDAL_OK; g++) st = kvpages_reserve(p, g, 13);
    if (st != TIDAL_OK || (st = kvpages_check(p)) != TIDAL_OK) goto done;
    /* the prompt's blocks stay until the last sample goes */
    int32_t shared = t[0];
    kvpages_release(p, 0);
    kvpages_release(p, 1);
    kvpages_release(p, 2);
    if (kvpages_refcount(p, shared) != 1) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: shared block count %d after 3 releases", kvpages_refcount(p, shared));
        goto done;
    }
    kvpages_release(p, 3);
    if (kvpages_free_blocks(p) != 16 || kvpages_refcount(p, shared) != 0) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: %d free after every release", kvpages_free_blocks(p));
        goto done;
    }
    st = kvpages_check(p);
    /* an exact multiple of the block size: nothing to copy, copy may be NULL */
    if (st == TIDAL_OK) st = kvpages_reserve(p, 0, 8);
    if (st == TIDAL_OK) st = kvpages_fork(p, 0, 1, NULL);
    if (st == TIDAL_OK && (kvpages_free_blocks(p) != 14 || kvpages_slot(p, 1, 7) != kvpages_slot(p, 0, 7)))
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: aligned fork");
    if (st == TIDAL_OK && kvpages_fork(p, 0, 1, NULL) != TIDAL_ERR_INVALID) /* child not empty */
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: fork into a non-empty sequence accepted");
    if (st == TIDAL_OK && kvpages_fork(p, 2, 2, NULL) != TIDAL_ERR_INVALID)
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: fork into itself accepted");
    if (st == TIDAL_OK) st = kvpages_check(p);
done:
    kvpages_free(p);
    CHECK_OK(st);
}

static void test_exhaustion_is_an_error(void)
{
    kvpages *p = NULL;
    CHECK_OK(kvpages_create(5, 4, 3, 8, &p));
    tidal_status st = kvpages_reserve(p, 0, 12); /* 3 blocks, 2 left */
    if (st != TIDAL_OK) goto done;
    int32_t before[24];
    memcpy(before, kvpages_table(p), sizeof before);
    tidal_status got = kvpages_reserve(p, 1, 13); /* 4 blocks asked, 2 free */
    const char *msg = tidal_errmsg();
    if (got != TIDAL_ERR_NOMEM || !strstr(msg, "sequence 1") || !strstr(msg, "4 block(s) asked for 13 tokens") ||
        !strstr(msg, "2 free of 5")) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: exhaustion: status %d, message '%s'", (int)got, msg);
        goto done;
    }
    /* all or nothing: no block was taken */
    if (kvpages_free_blocks(p) != 2 || kvpages_length(p, 1) != 0 || memcmp(before, kvpages_table(p), sizeof before)) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: a refused reserve changed the tables");
        goto done;
    }
    /* a fork whose tail copy finds no block */
    if ((st = kvpages_reserve(p, 1, 8)) != TIDAL_OK) goto done; /* the last 2 blocks */
    if ((st = kvpages_reserve(p, 0, 10)) != TIDAL_OK) goto done; /* no growth: 3 blocks hold 12 */
    kvpages_release(p, 0);
    if ((st = kvpages_reserve(p, 0, 10)) != TIDAL_OK) goto done; /* 3 blocks again, tail of 2 */
    kvpages_copy cp;
    got = kvpages_fork(p, 0, 2, &cp);
    if (got != TIDAL_ERR_NOMEM || !strstr(tidal_errmsg(), "0 free of 5") || kvpages_length(p, 2) != 0) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: fork without a block: status %d, '%s'", (int)got, tidal_errmsg());
        goto done;
    }
    st = kvpages_check(p);
done:
    kvpages_free(p);
    CHECK_OK(st);
}

/* A random mix of reserve / fork / release; every invariant after each. */
static void test_random_operations(void)
{
    kvpages *p = NULL;
    CHECK_OK(kvpages_create(40, 3, 12, 10, &p));
    uint64_t r = 777;
    tidal_status st = TIDAL_OK;
    int refused = 0;
    for (int it = 0; it < 4000 && st == TIDAL_OK; it++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        int op = (int)(r >> 60) % 4, a = (int)(r >> 40) % 12, b = (int)(r >> 20) % 12;
        tidal_status o = TIDAL_OK;
        if (op == 0 || op == 1) {
            o = kvpages_reserve(p, a, kvpages_length(p, a) + (int)(r >> 8) % 7);
        } else if (op == 2) {
            kvpages_copy cp = {-1, -1, 0};
            if (kvpages_length(p, b) == 0 && a != b) o = kvpages_fork(p, a, b, &cp);
            if (o == TIDAL_OK && cp.n > 0 && (cp.src < 0 || cp.dst < 0 || cp.n >= 3)) {
                st = tidal_fail(TIDAL_ERR_CORRUPT, "test: copy %d -> %d n %d", cp.src, cp.dst, cp.n);
                break;
            }
        } else {
            kvpages_release(p, a);
        }
        if (o == TIDAL_ERR_NOMEM || o == TIDAL_ERR_INVALID) refused++;
        else if (o != TIDAL_OK) st = o;
        if (st == TIDAL_OK) st = kvpages_check(p);
    }
    kvpages_free(p);
    CHECK_OK(st);
    CHECK(refused > 0); /* the mix reached exhaustion (or a full row) */
}

static uint64_t frand_state = 4242;
static float frand(void)
{ /* splitmix64 -> uniform [-1, 1) */
    const uint64_t z = splitmix64_next(&frand_state);
    return (float)((double)(z >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Five sequences (lengths 1, 5, 17, 33 and a GRPO sample forked from the
 * 17-token one after its prompt of 10 and grown to 17 with tokens of its
 * own) in a paged cache of blocks of 4, allocated interleaved; each
 * sequence's last query attends over its paged keys. Reference:
 * cpu_attention_forward over the same sequences laid out contiguously. */
static void test_paged_attention_reference(void)
{
    enum { NH = 4, NKV = 2, HD = 16, BS = 4, NSEQ = 5 };
    const int lens[NSEQ] = {1, 5, 17, 33, 17}, prompt = 10, parent = 2, child = 4;
    const size_t kvn = (size_t)NKV * HD;
    kvpages *p = NULL;
    CHECK_OK(kvpages_create(64, BS, NSEQ, 16, &p));
    tidal_status st = TIDAL_OK;
    int total = 0, cu[NSEQ + 1] = {0};
    for (int s = 0; s < NSEQ; s++) cu[s + 1] = cu[s] + lens[s], total += lens[s];
    float *q = malloc((size_t)total * NH * HD * sizeof(float)), *k = malloc((size_t)total * kvn * sizeof(float));
    float *v = malloc((size_t)total * kvn * sizeof(float)), *out = malloc((size_t)total * NH * HD * sizeof(float));
    float *lse = malloc((size_t)total * NH * sizeof(float)), *kc = malloc((size_t)64 * BS * kvn * sizeof(float));
    float *vc = malloc((size_t)64 * BS * kvn * sizeof(float)), *dq = malloc((size_t)NSEQ * NH * HD * sizeof(float));
    float *dout = malloc((size_t)NSEQ * NH * HD * sizeof(float)), *dlse = malloc((size_t)NSEQ * NH * sizeof(float));
    int32_t *seq = malloc((size_t)(total + 2) * sizeof(int32_t)), *pos = malloc((size_t)(total + 2) * sizeof(int32_t));
    if (!q || !k || !v || !out || !lse || !kc || !vc || !dq || !dout || !dlse || !seq || !pos) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "test: out of memory");
        goto done;
    }
    for (int i = 0; i < total * NH * HD; i++) q[i] = frand();
    for (size_t i = 0; i < (size_t)total * kvn; i++) k[i] = frand(), v[i] = frand();
    /* the child's prompt is the parent's: the same K/V for positions < prompt */
    memcpy(k + (size_t)cu[child] * kvn, k + (size_t)cu[parent] * kvn, (size_t)prompt * kvn * sizeof(float));
    memcpy(v + (size_t)cu[child] * kvn, v + (size_t)cu[parent] * kvn, (size_t)prompt * kvn * sizeof(float));
    for (size_t i = 0; i < (size_t)64 * BS * kvn; i++) kc[i] = vc[i] = 1e30f; /* poison: a wrong slot shows */
    /* blocks interleaved: every sequence grows 3 positions at a time */
    for (int upto = 3; upto < 36 && st == TIDAL_OK; upto += 3)
        for (int s = 0; s < 4 && st == TIDAL_OK; s++) {
            int want = upto < lens[s] ? upto : lens[s];
            if (s == parent && kvpages_length(p, child) == 0 && want >= prompt) {
                if ((st = kvpages_reserve(p, parent, prompt)) != TIDAL_OK) break;
                kvpages_copy cp;
                if ((st = kvpages_fork(p, parent, child, &cp)) != TIDAL_OK) break;
                /* store the prompt once (the parent's rows), then the tail copy */
                int n = 0;
                for (int t = 0; t < prompt; t++) seq[n] = parent, pos[n] = t, n++;
                cpu_ref_kv_store(kc, vc, kvpages_table(p), 16, BS, k + (size_t)cu[parent] * kvn,
                                 v + (size_t)cu[parent] * kvn, seq, pos, n, NKV, HD);
                memcpy(kc + (size_t)cp.dst * BS * kvn, kc + (size_t)cp.src * BS * kvn, (size_t)cp.n * kvn * sizeof(float));
                memcpy(vc + (size_t)cp.dst * BS * kvn, vc + (size_t)cp.src * BS * kvn, (size_t)cp.n * kvn * sizeof(float));
                if (cp.n != prompt % BS) st = tidal_fail(TIDAL_ERR_CORRUPT, "test: tail copy of %d slots", cp.n);
            }
            if (st == TIDAL_OK) st = kvpages_reserve(p, s, want);
        }
    if (st == TIDAL_OK) st = kvpages_reserve(p, child, lens[child]);
    if (st != TIDAL_OK || (st = kvpages_check(p)) != TIDAL_OK) goto done;
    /* store every token not stored yet in one call, a padding token and an unmapped position among them */
    int n = 0;
    for (int s = 0; s < NSEQ; s++)
        for (int t = (s == parent || s == child) ? prompt : 0; t < lens[s]; t++) seq[n] = s, pos[n] = t, n++;
    seq[n] = -1, pos[n] = 0, n++; /* padding */
    seq[n] = 0, pos[n] = 40, n++; /* beyond the sequence's blocks: slot -1 */
    float *kall = malloc((size_t)n * kvn * sizeof(float)), *vall = malloc((size_t)n * kvn * sizeof(float));
    if (!kall || !vall) {
        free(kall), free(vall);
        st = tidal_fail(TIDAL_ERR_NOMEM, "test: out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const float *ks = seq[i] >= 0 && pos[i] < lens[seq[i]] ? k + ((size_t)cu[seq[i]] + pos[i]) * kvn : NULL;
        const float *vs = seq[i] >= 0 && pos[i] < lens[seq[i]] ? v + ((size_t)cu[seq[i]] + pos[i]) * kvn : NULL;
        for (size_t e = 0; e < kvn; e++) kall[i * kvn + e] = ks ? ks[e] : 7.0f, vall[i * kvn + e] = vs ? vs[e] : 7.0f;
    }
    cpu_ref_kv_store(kc, vc, kvpages_table(p), 16, BS, kall, vall, seq, pos, n, NKV, HD);
    free(kall), free(vall);
    /* every position's slot holds its K/V: the shared prompt's too */
    for (int s = 0; s < NSEQ && st == TIDAL_OK; s++)
        for (int t = 0; t < lens[s]; t++) {
            int64_t slot = kvpages_slot(p, s, t);
            if (slot < 0 || memcmp(kc + (size_t)slot * kvn, k + ((size_t)cu[s] + t) * kvn, kvn * sizeof(float)) ||
                memcmp(vc + (size_t)slot * kvn, v + ((size_t)cu[s] + t) * kvn, kvn * sizeof(float))) {
                st = tidal_fail(TIDAL_ERR_CORRUPT, "test: sequence %d position %d: slot %lld holds other K/V", s, t,
                                (long long)slot);
                break;
            }
        }
    if (st == TIDAL_OK && kvpages_slot(p, child, 3) != kvpages_slot(p, parent, 3))
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: the forked sample does not share the prompt's first block");
    if (st != TIDAL_OK) goto done;
    /* the reference: contiguous causal attention; the last token of each sequence */
    cpu_attention_forward(out, lse, q, k, v, cu, NSEQ, total, NH, NKV, HD);
    int32_t bseq[NSEQ], blen[NSEQ];
    for (int s = 0; s < NSEQ; s++) {
        bseq[s] = s, blen[s] = lens[s];
        memcpy(dq + (size_t)s * NH * HD, q + (size_t)(cu[s + 1] - 1) * NH * HD, (size_t)NH * HD * sizeof(float));
    }
    cpu_ref_decode_attention(dout, dlse, dq, kc, vc, kvpages_table(p), 16, BS, bseq, blen, NSEQ, NH, NKV, HD);
    for (int s = 0; s < NSEQ && st == TIDAL_OK; s++) {
        const float *ref = out + (size_t)(cu[s + 1] - 1) * NH * HD, *got = dout + (size_t)s * NH * HD;
        double dd = 0, rr = 0;
        for (int i = 0; i < NH * HD; i++) dd += ((double)got[i] - ref[i]) * (got[i] - ref[i]), rr += (double)ref[i] * ref[i];
        for (int h = 0; h < NH; h++) dd += ((double)dlse[s * NH + h] - lse[(size_t)(cu[s + 1] - 1) * NH + h]) *
                                           ((double)dlse[s * NH + h] - lse[(size_t)(cu[s + 1] - 1) * NH + h]);
        if (!(sqrt(dd / rr) < 1e-5))
            st = tidal_fail(TIDAL_ERR_CORRUPT, "test: sequence %d: paged decode differs from cpu_attention_forward by %g",
                            s, sqrt(dd / rr));
    }
    /* an unmapped key makes the row NaN, not a read elsewhere */
    if (st == TIDAL_OK) {
        int32_t s0 = 0, l40 = 40;
        cpu_ref_decode_attention(dout, dlse, dq, kc, vc, kvpages_table(p), 16, BS, &s0, &l40, 1, NH, NKV, HD);
        if (!isnan(dout[0]) || !isnan(dlse[0])) st = tidal_fail(TIDAL_ERR_CORRUPT, "test: unmapped key not NaN");
    }
done:
    kvpages_free(p);
    free(q), free(k), free(v), free(out), free(lse), free(kc), free(vc), free(dq), free(dout), free(dlse);
    free(seq), free(pos);
    CHECK_OK(st);
}

/* Sampling from one row many times (steps 0 .. N-1): the kept set must be
 * exactly `kept` (brute force) and frequencies the renormalised softmax. */
static tidal_status sample_stats(const float *row, int V, cuda_sample_params P, const bool *kept, int N,
                                 const char *what)
{
    double lse, pk = 0.0, *pz = malloc((size_t)V * sizeof(double));
    int *hits = calloc((size_t)V, sizeof(int)), nkept = 0;
    float *rows = malloc((size_t)V * sizeof(float));
    tidal_status st = TIDAL_OK;
    if (!pz || !hits || !rows) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "test: out of memory");
        goto cleanup;
    }
    const float sc = 1.0f / P.temperature;
    double m = -INFINITY, se = 0.0;
    for (int j = 0; j < V; j++) m = fmax(m, (double)(row[j] * sc));
    for (int j = 0; j < V; j++) se += exp((double)(row[j] * sc) - m);
    lse = m + log(se);
    for (int j = 0; j < V; j++) pz[j] = exp((double)(row[j] * sc) - lse), pk += kept[j] ? pz[j] : 0.0, nkept += kept[j];
    for (int i = 0; i < N; i++) {
        P.step = (uint32_t)i;
        int32_t tok;
        float lp;
        uint8_t tr;
        if (cpu_ref_sample(&tok, &lp, &tr, row, &P, 1, V) != 0) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "test: out of memory");
            goto cleanup;
        }
        if (tok < 0 || tok >= V || !kept[tok] || tr != (nkept < V) ||
            fabs((double)lp - ((double)(row[tok] * sc) - lse)) > 1e-6) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "test: %s: step %d: token %d (kept %d), logprob %g want %g, flag %d",
                            what, i, tok, tok >= 0 && tok < V ? kept[tok] : -1, (double)lp,
                            tok >= 0 && tok < V ? (double)(row[tok] * sc) - lse : 0.0, tr);
            goto cleanup;
        }
        hits[tok]++;
    }
    for (int j = 0; j < V; j++) {
        if (!kept[j]) continue;
        double want = pz[j] / pk, f = (double)hits[j] / N, sd = sqrt(want * (1 - want) / N);
        if (fabs(f - want) > 5 * sd + 1e-9) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "test: %s: token %d drawn %g of the time, probability %g", what, j, f, want);
            goto cleanup;
        }
    }
cleanup:
    free(pz), free(hits), free(rows);
    return st;
}

static void test_sampler_reference(void)
{
    enum { V = 40 };
    float row[V];
    for (int j = 0; j < V; j++) row[j] = 2.5f * frand();
    row[3] = row[7] = 3.0f; /* a tie at the top: greedy takes 3 */
    /* greedy: the CPU engine's argmax and temperature-1 logprob */
    cuda_sample_params g = {.temperature = 0.0f};
    int32_t tok;
    float lp;
    uint8_t tr;
    CHECK(cpu_ref_sample(&tok, &lp, &tr, row, &g, 1, V) == 0);
    int a;
    float m = cpu_row_max(row, V, 1.0f, &a);
    double want = (double)row[a] - ((double)m + log(cpu_row_sumexp(row, V, 1.0f, m, NULL)));
    CHECK_MSG(tok == 3 && a == 3 && tr == 1 && fabs(lp - want) < 1e-6, "greedy %d (cpu %d) lp %g want %g", tok, a,
              (double)lp, want);
    /* the brute-force kept sets, in double */
    const float T = 0.7f, sc = 1.0f / T;
    double p[V], se = 0.0, mx = -INFINITY;
    for (int j = 0; j < V; j++) mx = fmax(mx, (double)(row[j] * sc));
    for (int j = 0; j < V; j++) se += exp((double)(row[j] * sc) - mx);
    for (int j = 0; j < V; j++) p[j] = exp((double)(row[j] * sc) - mx) / se;
    int order[V];
    for (int j = 0; j < V; j++) order[j] = j;
    for (int i = 0; i < V; i++) /* selection sort by p descending, id ascending */
        for (int j = i + 1; j < V; j++)
            if (p[order[j]] > p[order[i]] || (p[order[j]] == p[order[i]] && order[j] < order[i])) {
                int t = order[i];
                order[i] = order[j];
                order[j] = t;
            }
    bool all[V], topk[V], topp[V], minp[V], both[V];
    double cum = 0.0, cumk = 0.0, massk = 0.0;
    for (int i = 0; i < 6; i++) massk += p[order[i]];
    bool done_p = false, done_b = false;
    for (int i = 0; i < V; i++) {
        int j = order[i];
        all[j] = true;
        topk[j] = i < 6;
        topp[j] = !done_p;
        cum += p[j];
        if (cum >= 0.8) done_p = true;
        both[j] = i < 6 && !done_b;
        if (i < 6) {
            cumk += p[j];
            if (cumk >= 0.5 * massk) done_b = true;
        }
        minp[j] = p[j] >= 0.2 * p[order[0]];
    }
    const int N = 20000;
    cuda_sample_params P = {.temperature = T, .seed = 11, .sequence = 5};
    CHECK_OK(sample_stats(row, V, P, all, N, "temperature only"));
    P.top_k = 6;
    CHECK_OK(sample_stats(row, V, P, topk, N, "top-k 6"));
    P.top_k = 0, P.top_p = 0.8f;
    CHECK_OK(sample_stats(row, V, P, topp, N, "top-p 0.8"));
    P.top_k = 6, P.top_p = 0.5f;
    CHECK_OK(sample_stats(row, V, P, both, N, "top-k 6 then top-p 0.5"));
    P.top_k = 0, P.top_p = 0.0f, P.min_p = 0.2f;
    CHECK_OK(sample_stats(row, V, P, minp, N, "min-p 0.2"));
    /* a row's draw does not depend on its neighbours in the batch */
    float batch[3 * V];
    cuda_sample_params bp[3] = {{.temperature = 1.3f, .top_k = 9, .seed = 1, .sequence = 1, .step = 4},
                                {.temperature = T, .top_p = 0.9f, .seed = 2, .sequence = 8, .step = 17},
                                {.temperature = 0.0f}};
    for (int i = 0; i < 3 * V; i++) batch[i] = 2.0f * frand();
    int32_t bt[3], one;
    float bl[3], onel;
    uint8_t btr[3], onetr;
    CHECK(cpu_ref_sample(bt, bl, btr, batch, bp, 3, V) == 0);
    for (int b = 0; b < 3; b++) {
        CHECK(cpu_ref_sample(&one, &onel, &onetr, batch + b * V, &bp[b], 1, V) == 0);
        CHECK(one == bt[b] && onel == bl[b] && onetr == btr[b]);
    }
}

/* The sampler's radix select (cuda_radix_candidate / cuda_radix_step, the
 * kernel's per-pass logic) run on the CPU with serial histograms, against
 * sorting: the k-th largest key, and the shortest prefix of the ranked keys
 * at or above a floor whose fixed-point mass reaches a target. */
static unsigned long long radix_select_host(const uint64_t *keys, const uint64_t *mass, int V, uint64_t floor_key,
                                            bool by_mass, uint64_t target, bool *reached)
{
    unsigned long long prefix = 0ull, tg = target, hist[256];
    for (int pass = 0; pass < 8; pass++) {
        memset(hist, 0, sizeof hist);
        for (int j = 0; j < V; j++) {
            int d;
            if (cuda_radix_candidate(keys[j], pass, prefix, floor_key, &d)) hist[d] += by_mass ? mass[j] : 1ull;
        }
        if (!cuda_radix_step(hist, pass, &prefix, &tg)) {
            *reached = false;
            return floor_key;
        }
    }
    *reached = true;
    return prefix;
}

static int u64_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x < y) - (x > y);
}

static void test_radix_select(void)
{
    enum { V = 3001 };
    static uint64_t keys[V], sorted[V], mass[V], mass_of_sorted[V];
    for (int trial = 0; trial < 20; trial++) {
        double se = 0.0;
        float z[V];
        for (int j = 0; j < V; j++) { /* coarse values: many ties, split by id */
            z[j] = trial % 2 ? (float)(int)(8.0f * frand()) : 6.0f * frand();
            se += exp((double)z[j]);
        }
        for (int j = 0; j < V; j++) keys[j] = cuda_rank_key(z[j], j), mass[j] = cuda_mass_fixed(exp((double)z[j]) / se);
        memcpy(sorted, keys, sizeof keys);
        qsort(sorted, V, sizeof sorted[0], u64_desc);
        for (int i = 0; i < V; i++) mass_of_sorted[i] = mass[0xFFFFFFFFu - (uint32_t)sorted[i]];
        const int ks[] = {1, 2, 17, 1000, V - 1};
        for (int t = 0; t < 5; t++) {
            bool ok;
            unsigned long long got = radix_select_host(keys, mass, V, 0, false, (uint64_t)ks[t], &ok);
            CHECK_MSG(ok && got == sorted[ks[t] - 1], "trial %d: top-%d key %llx, want %llx", trial, ks[t], got,
                      (unsigned long long)sorted[ks[t] - 1]);
        }
        /* top-p within the top-k set (floor = the k-th key), as the sampler does */
        const double ps[] = {0.0, 1e-9, 0.3, 0.9, 0.999999};
        const int floors[] = {V, 40};
        for (int f = 0; f < 2; f++) {
            uint64_t floor_key = f ? sorted[floors[f] - 1] : 0, mk = 0;
            for (int i = 0; i < floors[f]; i++) mk += mass_of_sorted[i];
            for (int t = 0; t < 5; t++) {
                uint64_t thr = (uint64_t)(ps[t] * (double)mk), cum = 0, want = floor_key;
                bool want_ok = false;
                for (int i = 0; i < floors[f]; i++) {
                    cum += mass_of_sorted[i];
                    if (mass_of_sorted[i] > 0 && cum >= thr) {
                        want = sorted[i], want_ok = true;
                        break;
                    }
                }
                bool ok;
                unsigned long long got = radix_select_host(keys, mass, V, floor_key, true, thr, &ok);
                CHECK_MSG(ok == want_ok && got == want, "trial %d floor %d top-p %g: key %llx (%d), want %llx (%d)", trial,
                          floors[f], ps[t], got, ok, (unsigned long long)want, want_ok);
            }
            /* more mass than the set holds: not reached, keep the whole set */
            bool ok;
            unsigned long long got = radix_select_host(keys, mass, V, floor_key, true, mk + 1, &ok);
            CHECK(!ok && got == floor_key);
        }
    }
}

/* ---- the decode step's composition, on the CPU ---- */

typedef struct paged_model {
    model_gpu_dims d;
    const float *P;
    float *kc, *vc; /* [L][n_slots][KVD] each */
    int64_t n_slots;
    int max_blocks, block_size;
} paged_model;

/* decode_cuda_step's op order with the CPU ops, every row on the paged path (no
 * prefill runs): logits [T, V]. */
static void paged_step(const paged_model *m, const int32_t *tables, const int32_t *tok, const int32_t *seq,
                       const int32_t *pos, int T, float *logits)
{
    const model_gpu_dims *d = &m->d;
    const int C = d->hidden, NH = d->heads, NKV = d->kv_heads, HD = d->head_dim, F = d->ffn, V = d->vocab;
    const int QD = NH * HD, KVD = NKV * HD;
    const size_t t = (size_t)T;
    float *x = calloc(t * C, 4), *h = calloc(t * C, 4), *r = calloc(t, 4), *q = calloc(t * QD, 4);
    float *k = calloc(t * KVD, 4), *v = calloc(t * KVD, 4), *att = calloc(t * QD, 4), *tmp = calloc(t * C, 4);
    float *gate = calloc(t * F, 4), *up = calloc(t * F, 4), *act = calloc(t * F, 4);
    int32_t *len = calloc(t, 4);
    for (int i = 0; i < T; i++) len[i] = pos[i] + 1;
    const float *P = m->P;
#define PW(off) ((off) == MODEL_GPU_ABSENT ? NULL : P + (off))
    cpu_embedding_forward(x, tok, P + model_gpu_embed(d), T, C);
    for (int l = 0; l < d->layers; l++) {
        model_gpu_layer_offsets o = model_gpu_layer(d, l);
        float *kc = m->kc + (size_t)l * m->n_slots * KVD, *vc = m->vc + (size_t)l * m->n_slots * KVD;
        cpu_rmsnorm_forward(h, r, x, PW(o.ln1), T, C, d->rms_eps);
        cpu_matmul_forward(q, h, PW(o.wq), PW(o.bq), T, C, QD);
        cpu_matmul_forward(k, h, PW(o.wk), PW(o.bk), T, C, KVD);
        cpu_matmul_forward(v, h, PW(o.wv), PW(o.bv), T, C, KVD);
        cpu_rope_forward(q, pos, T, NH, HD, d->rope_theta);
        cpu_rope_forward(k, pos, T, NKV, HD, d->rope_theta);
        cpu_ref_kv_store(kc, vc, tables, m->max_blocks, m->block_size, k, v, seq, pos, T, NKV, HD);
        cpu_ref_decode_attention(att, NULL, q, kc, vc, tables, m->max_blocks, m->block_size, seq, len, T, NH, NKV, HD);
        cpu_matmul_forward(tmp, att, PW(o.wo), PW(o.bo), T, QD, C);
        for (size_t i = 0; i < t * C; i++) x[i] += tmp[i];
        cpu_rmsnorm_forward(h, r, x, PW(o.ln2), T, C, d->rms_eps);
        cpu_matmul_forward(gate, h, PW(o.wg), NULL, T, C, F);
        cpu_matmul_forward(up, h, PW(o.wu), NULL, T, C, F);
        cpu_swiglu_forward(act, gate, up, t * F);
        cpu_matmul_forward(tmp, act, PW(o.wd), NULL, T, F, C);
        for (size_t i = 0; i < t * C; i++) x[i] += tmp[i];
    }
    cpu_rmsnorm_forward(h, r, x, P + model_gpu_norm(d), T, C, d->rms_eps);
    cpu_matmul_forward(logits, h, P + model_gpu_head(d), NULL, T, C, V);
#undef PW
    free(x), free(h), free(r), free(q), free(k), free(v), free(att), free(tmp), free(gate), free(up), free(act);
    free(len);
}

static double rel_diff(const float *a, const float *b, size_t n)
{
    double dd = 0.0, rr = 0.0;
    for (size_t i = 0; i < n; i++) dd += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), rr += (double)b[i] * b[i];
    return rr > 0.0 ? sqrt(dd / rr) : sqrt(dd);
}

static int argmax_of(const float *z, int V)
{
    int a = 0;
    for (int j = 1; j < V; j++)
        if (z[j] > z[a]) a = j;
    return a;
}

/* Two prompts (7 and 20 tokens) prefilled in one step, a third sequence
 * forked from the second (blocks of 8: two shared, a tail of 4 copied), then
 * 6 greedy decode steps of the three together: every step's logits equal the
 * full forward of each sequence so far, and the tokens its greedy tokens. */
static void test_paged_decode_composition(void)
{
    enum { BS = 8, MB = 8, NB = 32, STEPS = 6 };
    paged_model m = {.d = {.layers = 2, .hidden = 32, .heads = 4, .kv_heads = 2, .head_dim = 8, .ffn = 48, .vocab = 97,
                           .qkv_bias = true, .o_bias = true, .tied = false, .rms_eps = 1e-6f, .rope_theta = 1e4f},
                     .max_blocks = MB, .block_size = BS, .n_slots = NB * BS};
    const model_gpu_dims *d = &m.d;
    const int V = d->vocab, KVD = d->kv_heads * d->head_dim;
    const size_t np = model_gpu_params(d);
    float *P = malloc(np * 4), *logits = malloc((size_t)40 * V * 4), *ref = malloc((size_t)40 * V * 4);
    m.kc = calloc((size_t)d->layers * m.n_slots * KVD, 4);
    m.vc = calloc((size_t)d->layers * m.n_slots * KVD, 4);
    kvpages *p = NULL;
    tidal_status st = kvpages_create(NB, BS, 3, MB, &p);
    if (st != TIDAL_OK || !P || !logits || !ref || !m.kc || !m.vc) {
        if (st == TIDAL_OK) st = tidal_fail(TIDAL_ERR_NOMEM, "test: out of memory");
        goto done;
    }
    for (size_t i = 0; i < np; i++) P[i] = 0.3f * frand();
    for (int l = 0; l < d->layers; l++) {
        model_gpu_layer_offsets o = model_gpu_layer(d, l);
        for (int c = 0; c < d->hidden; c++) P[o.ln1 + c] += 1.0f, P[o.ln2 + c] += 1.0f;
    }
    for (int c = 0; c < d->hidden; c++) P[model_gpu_norm(d) + c] += 1.0f;
    m.P = P;
    int32_t ids[3][40], len[3] = {7, 20, 20};
    for (int i = 0; i < 7; i++) ids[0][i] = (i * 13 + 5) % V;
    for (int i = 0; i < 20; i++) ids[1][i] = ids[2][i] = (i * 29 + 3) % V;
    /* the prefill: both prompts in one step */
    int32_t tok[40], seq[40], pos[40];
    int T = 0;
    if ((st = kvpages_reserve(p, 0, 7)) != TIDAL_OK || (st = kvpages_reserve(p, 1, 20)) != TIDAL_OK) goto done;
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < len[s]; i++) tok[T] = ids[s][i], seq[T] = s, pos[T] = i, T++;
    paged_step(&m, kvpages_table(p), tok, seq, pos, T, logits);
    cpu_decoder_logits(&m.d, m.P, ids[0], 7, ref);
    cpu_decoder_logits(&m.d, m.P, ids[1], 20, ref + (size_t)7 * V);
    double e = rel_diff(logits, ref, (size_t)T * V);
    if (!(e < 1e-5)) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: prefill logits differ from the full forward by %g", e);
        goto done;
    }
    int32_t next[3] = {argmax_of(logits + (size_t)6 * V, V), argmax_of(logits + (size_t)26 * V, V), 0};
    next[2] = next[1];
    /* the GRPO sample: the prompt's full blocks shared, its tail copied in every layer */
    kvpages_copy cp;
    if ((st = kvpages_fork(p, 1, 2, &cp)) != TIDAL_OK) goto done;
    if (cp.n != 20 % BS) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: fork copies %d slots", cp.n);
        goto done;
    }
    for (int l = 0; l < d->layers; l++) {
        float *kc = m.kc + (size_t)l * m.n_slots * KVD, *vc = m.vc + (size_t)l * m.n_slots * KVD;
        memcpy(kc + (size_t)cp.dst * BS * KVD, kc + (size_t)cp.src * BS * KVD, (size_t)cp.n * KVD * 4);
        memcpy(vc + (size_t)cp.dst * BS * KVD, vc + (size_t)cp.src * BS * KVD, (size_t)cp.n * KVD * 4);
    }
    for (int step = 0; step < STEPS; step++) {
        for (int s = 0; s < 3; s++) {
            ids[s][len[s]] = next[s];
            if ((st = kvpages_reserve(p, s, len[s] + 1)) != TIDAL_OK) goto done;
            tok[s] = next[s], seq[s] = s, pos[s] = len[s];
            len[s]++;
        }
        paged_step(&m, kvpages_table(p), tok, seq, pos, 3, logits);
        for (int s = 0; s < 3; s++) {
            cpu_decoder_logits(&m.d, m.P, ids[s], len[s], ref);
            const float *want = ref + (size_t)(len[s] - 1) * V, *got = logits + (size_t)s * V;
            e = rel_diff(got, want, (size_t)V);
            if (!(e < 1e-5) || argmax_of(got, V) != argmax_of(want, V)) {
                st = tidal_fail(TIDAL_ERR_CORRUPT, "test: step %d sequence %d: logits differ by %g, tokens %d / %d",
                                step, s, e, argmax_of(got, V), argmax_of(want, V));
                goto done;
            }
            next[s] = argmax_of(got, V);
        }
    }
    if (len[1] != len[2] || memcmp(ids[1], ids[2], (size_t)len[1] * 4) != 0)
        st = tidal_fail(TIDAL_ERR_CORRUPT, "test: fork and parent diverged");
    if (st == TIDAL_OK) st = kvpages_check(p);
done:
    kvpages_free(p);
    free(P), free(logits), free(ref), free(m.kc), free(m.vc);
    CHECK_OK(st);
}

int main(void)
{
    RUN(test_philox_known_answers);
    RUN(test_sampler_uniform);
    RUN(test_gumbel_max_frequencies);
    RUN(test_rank_key);
    RUN(test_radix_select);
    RUN(test_slot_maths);
    RUN(test_reserve_and_release);
    RUN(test_fork_shares_prompt);
    RUN(test_exhaustion_is_an_error);
    RUN(test_random_operations);
    RUN(test_paged_attention_reference);
    RUN(test_sampler_reference);
    RUN(test_paged_decode_composition);
    return check_summary();
}
