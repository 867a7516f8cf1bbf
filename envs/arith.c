/* arith.c - the `arith` environment: synthetic integer arithmetic, the
 * quickstart's task (docs/environments.md "arith").
 *
 * generate(seed) draws `terms` operands of up to `digits` digits joined by
 * operators from `ops` ("37 + 5 * 12", answer 97 with the usual precedence);
 * STEP reads the last number of the completion and scores it against
 * task.answer: 1 / 0, or digit-wise partial credit with partial_credit.
 * All arithmetic is int64: with `*` allowed the configuration must keep
 * digits x terms <= 18, so no product of operands reaches 10^18.
 */
#include "envs/builtin.h"
#include "base/str.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_OPS 16

typedef struct arith_cfg {
    int digits, terms;
    char ops[MAX_OPS + 1];
    size_t n_ops;
    bool partial_credit;
} arith_cfg;

static const char *const arith_keys[] = {"digits", "terms", "ops", "partial_credit", NULL};

static tidal_status arith_create(const json_t *config, void **state)
{
    tidal_status st = env_cfg_keys(config, arith_keys);
    if (st != TIDAL_OK) return st;
    int64_t digits, terms;
    const char *ops;
    bool partial;
    if ((st = env_cfg_int(config, "digits", 2, 1, 9, &digits)) != TIDAL_OK) return st;
    if ((st = env_cfg_int(config, "terms", 2, 2, 6, &terms)) != TIDAL_OK) return st;
    if ((st = env_cfg_string(config, "ops", "+-*", &ops)) != TIDAL_OK) return st;
    if ((st = env_cfg_bool(config, "partial_credit", false, &partial)) != TIDAL_OK) return st;
    size_t n = strlen(ops);
    if (n == 0 || n > MAX_OPS || strspn(ops, "+-*") != n)
        return env_bad("config", "ops", "must be 1 to %d of the characters + - * (\"+-*\"), got \"%.40s\"", MAX_OPS,
                       ops);
    if (strchr(ops, '*') && digits * terms > 18)
        return env_bad("config", "terms",
                       "digits x terms must be at most 18 when ops has '*' (the answer must fit int64), got "
                       "%" PRId64 " x %" PRId64,
                       digits, terms);
    arith_cfg *c = calloc(1, sizeof *c);
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    c->digits = (int)digits;
    c->terms = (int)terms;
    memcpy(c->ops, ops, n + 1);
    c->n_ops = n;
    c->partial_credit = partial;
    *state = c;
    return TIDAL_OK;
}

static void arith_destroy(void *state) { free(state); }

static tidal_status arith_generate(const void *state, uint64_t seed, char **task_json, char **prompt)
{
    const arith_cfg *c = state;
    *task_json = *prompt = NULL;
    env_rng rng;
    env_rng_seed(&rng, seed);
    uint64_t bound = 1;
    for (int i = 0; i < c->digits; i++) bound *= 10;

    char q[6 * 12 + 5 * 3 + 1];
    size_t off = 0;
    int64_t total = 0, prod = 0, sign = 1;
    bool ovf = false;
    for (int i = 0; i < c->terms; i++) {
        int64_t a = (int64_t)env_rng_below(&rng, bound);
        char op = i ? c->ops[env_rng_below(&rng, c->n_ops)] : 0;
        if (i == 0) off += (size_t)snprintf(q + off, sizeof q - off, "%" PRId64, a);
        else off += (size_t)snprintf(q + off, sizeof q - off, " %c %" PRId64, op, a);
        if (i == 0) {
            prod = a;
        } else if (op == '*') {
            ovf |= __builtin_mul_overflow(prod, a, &prod);
        } else {
            int64_t t;
            ovf |= __builtin_mul_overflow(sign, prod, &t) || __builtin_add_overflow(total, t, &total);
            sign = op == '+' ? 1 : -1;
            prod = a;
        }
    }
    int64_t t;
    ovf |= __builtin_mul_overflow(sign, prod, &t) || __builtin_add_overflow(total, t, &total);
    if (ovf) return tidal_fail(TIDAL_ERR_INVALID, "arith: seed %" PRIu64 ": the answer overflows int64", seed);

    json_t *task = json_pack("{s:s, s:I}", "question", q, "answer", (json_int_t)total);
    char *tj = task ? json_dumps(task, JSON_COMPACT) : NULL;
    json_decref(task);
    char *p = str_printf("What is %s? Give only the number.", q);
    if (!tj || !p) {
        free(tj);
        free(p);
        return tidal_fail(TIDAL_ERR_NOMEM, "arith: out of memory");
    }
    *task_json = tj;
    *prompt = p;
    return TIDAL_OK;
}

/* The number of decimal digits of |v| into buf (most significant first). */
static size_t abs_digits(int64_t v, char *buf)
{
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    char tmp[24];
    size_t n = 0;
    do tmp[n++] = (char)('0' + u % 10), u /= 10;
    while (u);
    for (size_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    return n;
}

double arith_digit_credit(int64_t ref, int64_t pred)
{
    if (ref == pred) return 1.0;
    if ((ref < 0) != (pred < 0)) return 0.0;
    char r[24], p[24];
    size_t nr = abs_digits(ref, r), np = abs_digits(pred, p);
    size_t same = 0;
    for (size_t i = 0; i < nr && i < np; i++) same += r[nr - 1 - i] == p[np - 1 - i];
    size_t longer = nr > np ? nr : np;
    /* never 1 for unequal numbers (equal magnitudes with equal signs are equal) */
    return (double)same / (double)longer;
}

/* task.answer: an integer, or a string holding one. */
static tidal_status task_answer(const json_t *task, int64_t *out)
{
    json_t *v = json_object_get(task, "answer");
    if (v && json_is_integer(v)) {
        *out = json_integer_value(v);
        return TIDAL_OK;
    }
    env_number n;
    if (v && json_is_string(v) && env_number_parse(json_string_value(v), json_string_length(v), &n) &&
        env_number_int64(&n, out))
        return TIDAL_OK;
    if (!v || json_is_null(v)) return env_bad("task_json", "answer", "missing (the integer answer)");
    return env_bad("task_json", "answer", "must be an integer (or a string holding one)");
}

static tidal_status arith_handle(const void *state, const env_request *rq, env_result *out)
{
    const arith_cfg *c = state;
    if (rq->call->op == ENV_OP_RESET) return TIDAL_OK;
    int64_t ref;
    tidal_status st = task_answer(rq->task, &ref);
    if (st != TIDAL_OK) return st;
    env_numtok tok;
    int64_t pred = 0;
    bool have = env_last_number(rq->action, strlen(rq->action), &tok) && env_number_int64(&tok.value, &pred);
    bool correct = have && pred == ref;
    out->reward = correct ? 1.0 : have && c->partial_credit ? arith_digit_credit(ref, pred) : 0.0;
    out->done = true;
    return env_result_metric(out, "correct", correct ? 1.0 : 0.0);
}

const env_class env_arith = {
    .name = "arith",
    .summary = "synthetic integer arithmetic (quickstart): the last integer of the completion vs the answer",
    .create = arith_create,
    .destroy = arith_destroy,
    .handle = arith_handle,
    .generate = arith_generate,
};
