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
 *   nothing; a random mix of operations keeps every invariant (kvpages_check).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels/cuda/engine_index.h"
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

int main(void)
{
    RUN(test_philox_known_answers);
    RUN(test_sampler_uniform);
    RUN(test_gumbel_max_frequencies);
    RUN(test_rank_key);
    RUN(test_slot_maths);
    RUN(test_reserve_and_release);
    RUN(test_fork_shares_prompt);
    RUN(test_exhaustion_is_an_error);
    RUN(test_random_operations);
    return check_summary();
}
