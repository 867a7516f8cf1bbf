/* bench_hold.c - holding rollout groups for benchmarks (bench_hold.h). */
#include "bench/bench_hold.h"

#include <math.h>
#include <stddef.h>

#include "base/hash.h"

double bench_hold_ms(const bench_hold_knobs *k, const rollout_group_info *g)
{
    double factor = k->slowdown > 1 ? k->slowdown : 1;
    if (k->tail > 0) {
        /* (0, 1], a function of the group id: every worker and every rerun draws the same tail */
        const double u = (double)((hash_string(g->group_id) >> 11) + 1) / 9007199254740993.0;
        const double x = pow(u, -1.0 / k->tail);
        factor *= x < 50 ? x : 50;
    }
    return k->token_ms > 0 ? k->token_ms * (double)g->tokens * factor
                           : (g->generate_ms + g->last_publish_ms) * (factor - 1);
}

static double hold_ms(void *ctx, const rollout_group_info *g) { return bench_hold_ms(ctx, g); }

const rollout_bench_hook *bench_hold_hook(const bench_hold_knobs *knobs, rollout_bench_hook *hook)
{
    if (!(knobs->slowdown > 1) && !(knobs->tail > 0) && !(knobs->token_ms > 0) && !(knobs->part_gap_ms > 0))
        return NULL;
    *hook = (rollout_bench_hook){.hold_ms = hold_ms, .part_gap_ms = knobs->part_gap_ms, .ctx = (void *)knobs};
    return hook;
}
