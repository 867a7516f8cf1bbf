/* test_admission.c - the dispatch rule (controller/admission.h), and the
 * property it exists for: simulated with a trainer that takes B groups per
 * step, every group it trains at version v was generated with weights of at
 * least v - K, for K = 0 (exactly on-policy) and K > 0; and the generation
 * ahead of training never exceeds K + 1 steps. */
#include <stdio.h>

#include "check.h"
#include "controller/admission.h"

static void test_rule(void)
{
    CHECK(admission_feeds(0, 4) == 0 && admission_feeds(3, 4) == 0 && admission_feeds(4, 4) == 1);
    CHECK(admission_min_version(0, 2) == 0 && admission_min_version(2, 2) == 0 && admission_min_version(7, 2) == 5);
    CHECK(admission_min_version(7, 0) == 7);
    CHECK(admission_room(0, 0, 4, 0, 0) == 4);  /* K = 0: the first step's groups only */
    CHECK(admission_room(0, 0, 4, 4, 0) == 0);
    CHECK(admission_room(0, 0, 4, 4, 1) == 1);  /* a dropped group frees its place */
    CHECK(admission_room(3, 2, 8, 10, 0) == (2 + 3 + 1) * 8 - 10);
    CHECK(admission_room(0, 2, 8, 100, 0) == 0);
}

/* Workers generate with the newest weights whenever a group is dispatched
 * (the trainer's version then, never below min_version); the trainer trains
 * the oldest B complete groups per step. */
static void simulate(uint32_t K, uint32_t B, int steps, int *ok)
{
    uint64_t v = 0, dispatched = 0;
    uint64_t gen_version[4096];
    uint64_t trained = 0;
    *ok = 1;
    while ((int)v < steps) {
        for (uint64_t room = admission_room(v, K, B, dispatched, 0); room > 0; room--, dispatched++) {
            uint64_t d = admission_feeds(dispatched, B), minv = admission_min_version(d, K);
            /* a worker syncs to min_version first: here the weights exist only up to v */
            if (minv > v) { *ok = 0; return; }      /* admission must never ask for weights from the future */
            gen_version[dispatched] = v;
        }
        for (uint32_t i = 0; i < B; i++, trained++)
            if (v - gen_version[trained] > K) { *ok = 0; return; }
        v++;
    }
}

static void test_staleness_bound_holds(void)
{
    for (uint32_t K = 0; K <= 4; K++)
        for (uint32_t B = 1; B <= 5; B++) {
            int ok;
            simulate(K, B, 60, &ok);
            CHECK_MSG(ok, "K %u B %u: a group was trained staler than K", K, B);
        }
}

int main(void)
{
    RUN(test_rule);
    RUN(test_staleness_bound_holds);
    return check_summary();
}
