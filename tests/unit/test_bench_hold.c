/* test_bench_hold.c - the benchmarks' hold of rollout groups (bench/bench_hold.h):
 * no knob, no hook (a production worker); --slowdown F holds (F - 1) x the
 * group's own time; --token-ms T holds T per token; --tail draws a per-group
 * factor >= 1, the same for the same group id, capped at 50. */
#include <math.h>
#include <stdio.h>

#include "bench/bench_hold.h"
#include "check.h"

static void test_no_knob_no_hook(void)
{
    rollout_bench_hook hook;
    const bench_hold_knobs none = {0}, one = {.slowdown = 1};
    CHECK(bench_hold_hook(&none, &hook) == NULL);
    CHECK(bench_hold_hook(&one, &hook) == NULL);
    const bench_hold_knobs slow = {.slowdown = 3};
    const rollout_bench_hook *h = bench_hold_hook(&slow, &hook);
    CHECK(h == &hook && h->hold_ms && h->ctx == &slow);
}

static void test_hold_arithmetic(void)
{
    const rollout_group_info g = {.group_id = "g7", .tokens = 40, .generate_ms = 100, .last_publish_ms = 20};
    const bench_hold_knobs slow = {.slowdown = 3}, per_token = {.token_ms = 0.5, .slowdown = 2};
    CHECK(fabs(bench_hold_ms(&slow, &g) - 240) < 1e-9);     /* (100 + 20) x (3 - 1) */
    CHECK(fabs(bench_hold_ms(&per_token, &g) - 40) < 1e-9); /* 0.5 x 40 x 2 */
    const bench_hold_knobs tail = {.tail = 1.5, .token_ms = 1};
    double lo = INFINITY, hi = 0;
    for (int i = 0; i < 200; i++) {
        char id[16];
        snprintf(id, sizeof id, "g%d", i);
        const rollout_group_info gi = {.group_id = id, .tokens = 1};
        const double f = bench_hold_ms(&tail, &gi);
        CHECK(f >= 1 && f <= 50 && f == bench_hold_ms(&tail, &gi));
        lo = f < lo ? f : lo, hi = f > hi ? f : hi;
    }
    CHECK_MSG(hi > 2 * lo, "a Pareto tail: factors %g .. %g", lo, hi);
}

int main(void)
{
    RUN(test_no_knob_no_hook);
    RUN(test_hold_arithmetic);
    return check_summary();
}
