/* fuzz_countdown.c - libFuzzer target for the countdown expression parser and
 * evaluator (envs/builtin.h countdown_eval, countdown_extract), which must be
 * total: no crash, no unbounded recursion, no signed overflow (UBSan traps
 * it), no loop, on any bytes.
 *
 * The input is a completion. Checked on every input: countdown_eval on the
 * whole input and on the extracted expression is deterministic, a value is a
 * reduced fraction with a positive denominator, an unvalued expression names
 * its problem at an offset inside the text, literals stay within
 * COUNTDOWN_MAX_LITERALS; the extract lies inside the input; the literals
 * pass the number check against themselves; env_handle on the countdown env
 * returns OK with a reward of 0, format_reward or 1 that agrees with the
 * metrics.
 *
 * Seeds: tests/fuzz/seeds/fuzz_countdown/ (written by hand: TinyZero-style
 * answers, deep nesting, fractions, overflow, garbage).
 * Run by hand: fuzz_countdown -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_countdown
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envs/builtin.h"
#include "envs/env.h"

static uint64_t mag(int64_t v) { return v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; }

static uint64_t gcd(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

static void check_eval(const char *t, size_t n)
{
    countdown_expr x, y;
    countdown_eval(t, n, &x);
    countdown_eval(t, n, &y);
    if (x.parsed != y.parsed || x.valued != y.valued || x.num != y.num || x.den != y.den || x.n_used != y.n_used)
        abort();
    if (x.n_used > COUNTDOWN_MAX_LITERALS) abort();
    if (x.valued) {
        if (!x.parsed || x.den <= 0 || x.error) abort();
        if (x.num == 0 ? x.den != 1 : gcd(mag(x.num), (uint64_t)x.den) != 1) abort();
    } else {
        if (!x.error || x.error_at > n) abort();
    }
    for (size_t i = 0; i < x.n_used; i++)
        if (x.used[i] < 0) abort();
    if (x.parsed && x.n_used <= COUNTDOWN_MAX_NUMBERS) {
        if (!countdown_numbers_ok(x.used, x.n_used, x.used, x.n_used, true)) abort();
    }
}

static env *countdown_env;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    check_eval(text, size);
    const char *ex;
    size_t n;
    if (countdown_extract(text, size, &ex, &n)) {
        if (ex < text || n > size || (size_t)(ex - text) > size - n) abort();
        check_eval(ex, n);
    }

    if (!countdown_env && env_create("countdown", NULL, &countdown_env) != TIDAL_OK) abort();
    char *action = malloc(size + 1);
    if (!action) abort();
    memcpy(action, data, size);
    action[size] = '\0';
    env_call c = {.op = ENV_OP_STEP, .task_json = "{\"numbers\":[1,2,3,4,5,6,7,25],\"target\":24}", .action = action,
                  .turn = 1};
    env_result r;
    if (env_handle(countdown_env, &c, &r) != TIDAL_OK) abort();
    if (!r.done || r.n_metrics != 2) abort();
    double correct = r.metrics[0].value, format = r.metrics[1].value;
    if (r.reward == 1 ? !(correct == 1 && format == 1)
                      : r.reward == 0.1 ? !(correct == 0 && format == 1) : !(r.reward == 0 && correct == 0 && format == 0))
        abort();
    env_result_clear(&r);
    free(action);
    return 0;
}
