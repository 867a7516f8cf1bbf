/* countdown.c - the `countdown` environment: reach the target from the given
 * numbers with + - * / and parentheses (docs/environments.md "countdown").
 *
 * The completion's expression (the last <answer>...</answer>, else the last
 * line with a digit) is parsed by a recursive-descent parser of our own - no
 * eval - and evaluated with exact int64 rationals, so 6 / 4 * 2 = 3 reaches 3
 * exactly; overflow and division by zero make the expression unvalued, never
 * undefined. The parser is total on any bytes: depth, literal count and
 * integer sizes are bounded (the fuzz target tests/fuzz/fuzz_countdown.c).
 */
#include "envs/builtin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- exact rationals ---- */

typedef struct rat {
    int64_t n, d; /* d > 0, lowest terms, n != INT64_MIN */
    bool ok;      /* false after a division by zero or an overflow */
} rat;

static const rat BAD = {0, 1, false};

static uint64_t mag(int64_t v) { return v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v; }

static int64_t gcd64(int64_t a, int64_t b)
{
    uint64_t x = mag(a), y = mag(b);
    while (y) {
        uint64_t t = x % y;
        x = y;
        y = t;
    }
    return (int64_t)x; /* both operands are > INT64_MIN, so this fits */
}

typedef struct parser {
    const char *s;
    size_t len, pos;
    int depth;
    bool syntax_error;
    countdown_expr *out;
} parser;

static void syntax(parser *p, const char *what)
{
    if (p->syntax_error) return;
    p->syntax_error = true;
    p->out->error = what; /* a syntax error outranks an earlier arithmetic one */
    p->out->error_at = p->pos;
}

static rat math_error(parser *p, const char *what)
{
    if (!p->out->error) {
        p->out->error = what;
        p->out->error_at = p->pos;
    }
    return BAD;
}

/* n/d reduced, or an overflow. */
static rat make(parser *p, int64_t n, int64_t d)
{
    if (n == INT64_MIN || d == INT64_MIN) return math_error(p, "overflow");
    if (d < 0) n = -n, d = -d;
    int64_t g = gcd64(n, d);
    if (g > 1) n /= g, d /= g;
    return (rat){n, d, true};
}

static rat add(parser *p, rat a, rat b, bool subtract)
{
    if (!a.ok || !b.ok) return BAD;
    int64_t g = gcd64(a.d, b.d);
    int64_t fa = b.d / g, fb = a.d / g, x, y, n, d;
    if (__builtin_mul_overflow(a.n, fa, &x) || __builtin_mul_overflow(b.n, fb, &y) ||
        (subtract ? __builtin_sub_overflow(x, y, &n) : __builtin_add_overflow(x, y, &n)) ||
        __builtin_mul_overflow(a.d, fa, &d))
        return math_error(p, "overflow");
    return make(p, n, d);
}

static rat mul(parser *p, rat a, rat b)
{
    if (!a.ok || !b.ok) return BAD;
    int64_t g1 = gcd64(a.n, b.d), g2 = gcd64(b.n, a.d), n, d;
    if (g1 == 0) g1 = 1;
    if (g2 == 0) g2 = 1;
    if (__builtin_mul_overflow(a.n / g1, b.n / g2, &n) || __builtin_mul_overflow(a.d / g2, b.d / g1, &d))
        return math_error(p, "overflow");
    return make(p, n, d);
}

static rat divide(parser *p, rat a, rat b)
{
    if (!a.ok || !b.ok) return BAD;
    if (b.n == 0) return math_error(p, "division by zero");
    rat inv = b.n < 0 ? (rat){-b.d, -b.n, true} : (rat){b.d, b.n, true};
    return mul(p, a, inv);
}

/* ---- the parser ---- */

static void skip_ws(parser *p)
{
    while (p->pos < p->len && env_is_space(p->s[p->pos])) p->pos++;
}

static rat parse_expr(parser *p);

static rat parse_factor(parser *p)
{
    skip_ws(p);
    if (p->syntax_error) return BAD;
    if (p->pos < p->len && p->s[p->pos] == '(') {
        if (p->depth >= COUNTDOWN_MAX_DEPTH) {
            syntax(p, "parentheses nested too deeply");
            return BAD;
        }
        p->depth++;
        p->pos++;
        rat v = parse_expr(p);
        if (p->syntax_error) return BAD;
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ')') {
            syntax(p, "expected ')'");
            return BAD;
        }
        p->pos++;
        p->depth--;
        return v;
    }
    if (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
        int64_t v = 0;
        size_t at = p->pos;
        while (p->pos < p->len && p->s[p->pos] >= '0' && p->s[p->pos] <= '9') {
            if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, p->s[p->pos] - '0', &v)) {
                p->pos = at;
                syntax(p, "number too large");
                return BAD;
            }
            p->pos++;
        }
        if (p->out->n_used >= COUNTDOWN_MAX_LITERALS) {
            p->pos = at;
            syntax(p, "too many numbers");
            return BAD;
        }
        p->out->used[p->out->n_used++] = v;
        return (rat){v, 1, true};
    }
    syntax(p, p->pos < p->len ? "expected a number or '('" : "expected a number or '(' at the end");
    return BAD;
}

static rat parse_term(parser *p)
{
    rat v = parse_factor(p);
    for (;;) {
        if (p->syntax_error) return BAD;
        skip_ws(p);
        if (p->pos >= p->len || (p->s[p->pos] != '*' && p->s[p->pos] != '/')) return v;
        char op = p->s[p->pos++];
        rat r = parse_factor(p);
        v = op == '*' ? mul(p, v, r) : divide(p, v, r);
    }
}

static rat parse_expr(parser *p)
{
    rat v = parse_term(p);
    for (;;) {
        if (p->syntax_error) return BAD;
        skip_ws(p);
        if (p->pos >= p->len || (p->s[p->pos] != '+' && p->s[p->pos] != '-')) return v;
        char op = p->s[p->pos++];
        rat r = parse_term(p);
        v = add(p, v, r, op == '-');
    }
}

void countdown_eval(const char *text, size_t len, countdown_expr *out)
{
    memset(out, 0, sizeof *out);
    out->den = 1;
    parser p = {.s = text, .len = len, .out = out};
    rat v = parse_expr(&p);
    skip_ws(&p);
    if (!p.syntax_error && p.pos != len) syntax(&p, "unexpected character");
    out->parsed = !p.syntax_error;
    out->valued = out->parsed && v.ok;
    if (out->valued) {
        out->num = v.n;
        out->den = v.d;
        out->error = NULL;
        out->error_at = 0;
    }
}

/* ---- extraction and the number check ---- */

static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_expr_char(char c)
{
    return is_digit(c) || c == '+' || c == '-' || c == '*' || c == '/' || c == '(' || c == ')' || c == ' ' ||
           c == '\t';
}

bool countdown_extract(const char *text, size_t len, const char **expr, size_t *expr_len)
{
    size_t open = SIZE_MAX, close = SIZE_MAX, open_before_close = SIZE_MAX;
    for (size_t i = 0; i < len; i++) {
        if (text[i] != '<') continue;
        if (len - i >= 8 && memcmp(text + i, "<answer>", 8) == 0) open = i;
        else if (len - i >= 9 && memcmp(text + i, "</answer>", 9) == 0 && open != SIZE_MAX) {
            close = i;
            open_before_close = open;
            open = SIZE_MAX; /* a later </answer> needs a later <answer> */
        }
    }
    size_t a, b;
    if (close != SIZE_MAX) {
        a = open_before_close + 8;
        b = close;
    } else {
        /* the last line with a digit */
        size_t end = len;
        bool found = false;
        a = b = 0;
        while (!found && end > 0) {
            size_t start = end;
            while (start > 0 && text[start - 1] != '\n') start--;
            for (size_t i = start; i < end && !found; i++) found = text[i] >= '0' && text[i] <= '9';
            if (found) a = start, b = end;
            end = start > 0 ? start - 1 : 0;
        }
        if (!found) {
            *expr = text;
            *expr_len = 0;
            return false;
        }
    }
    const char *eq = memchr(text + a, '=', b - a);
    if (eq) b = (size_t)(eq - text);
    if (close == SIZE_MAX) {
        /* free text: the last run of expression characters that has a digit
         * ("So: 44 + 19 + 35" -> "44 + 19 + 35") */
        size_t i = b, run_a = b, run_b = b;
        while (i > a) {
            while (i > a && !is_expr_char(text[i - 1])) i--;
            size_t end = i;
            bool digit = false;
            while (i > a && is_expr_char(text[i - 1])) {
                i--;
                if (is_digit(text[i])) digit = true;
            }
            if (digit) {
                run_a = i;
                run_b = end;
                break;
            }
        }
        a = run_a;
        b = run_b;
    }
    const char *s = text + a;
    size_t n = b - a;
    env_trim(&s, &n);
    *expr = s;
    *expr_len = n;
    return true;
}

bool countdown_numbers_ok(const int64_t *used, size_t n_used, const int64_t *numbers, size_t n, bool use_all)
{
    bool taken[COUNTDOWN_MAX_NUMBERS] = {false};
    if (n > COUNTDOWN_MAX_NUMBERS) return false;
    for (size_t i = 0; i < n_used; i++) {
        size_t k = 0;
        while (k < n && (taken[k] || numbers[k] != used[i])) k++;
        if (k == n) return false;
        taken[k] = true;
    }
    if (use_all)
        for (size_t k = 0; k < n; k++)
            if (!taken[k]) return false;
    return true;
}

/* ---- the environment ---- */

typedef struct countdown_cfg {
    double format_reward;
    bool use_all;
} countdown_cfg;

static const char *const countdown_keys[] = {"format_reward", "use_all", NULL};

static tidal_status countdown_create(const json_t *config, void **state)
{
    tidal_status st = env_cfg_keys(config, countdown_keys);
    if (st != TIDAL_OK) return st;
    countdown_cfg c;
    if ((st = env_cfg_double(config, "format_reward", 0.1, 0.0, 1.0, &c.format_reward)) != TIDAL_OK) return st;
    if ((st = env_cfg_bool(config, "use_all", false, &c.use_all)) != TIDAL_OK) return st;
    countdown_cfg *s = malloc(sizeof *s);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    *s = c;
    *state = s;
    return TIDAL_OK;
}

static void countdown_destroy(void *state) { free(state); }

/* task.numbers (or task.nums, as in TinyZero's Countdown-Tasks-3to4) and task.target. */
static tidal_status read_task(const json_t *task, int64_t *numbers, size_t *n, int64_t *target)
{
    const char *key = "numbers";
    json_t *a = json_object_get(task, key);
    if (!a || json_is_null(a)) {
        key = "nums";
        a = json_object_get(task, key);
    }
    if (!a || json_is_null(a)) return env_bad("task_json", "numbers", "missing (an array of 1 to 8 positive integers)");
    if (!json_is_array(a) || json_array_size(a) < 1 || json_array_size(a) > COUNTDOWN_MAX_NUMBERS)
        return env_bad("task_json", key, "must be an array of 1 to %d positive integers", COUNTDOWN_MAX_NUMBERS);
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return tidal_fail(TIDAL_ERR_INVALID, "task_json.%s[%zu]: must be a positive integer", key, i);
        numbers[i] = json_integer_value(v);
    }
    *n = json_array_size(a);
    return env_task_int(task, "target", true, 0, target);
}

static tidal_status countdown_handle(const void *state, const env_request *rq, env_result *out)
{
    const countdown_cfg *c = state;
    if (rq->call->op == ENV_OP_RESET) return TIDAL_OK;
    int64_t numbers[COUNTDOWN_MAX_NUMBERS], target = 0;
    size_t n = 0;
    tidal_status st = read_task(rq->task, numbers, &n, &target);
    if (st != TIDAL_OK) return st;
    const char *expr;
    size_t len;
    bool format = false, correct = false;
    if (countdown_extract(rq->action, strlen(rq->action), &expr, &len)) {
        countdown_expr e;
        countdown_eval(expr, len, &e);
        format = e.parsed && countdown_numbers_ok(e.used, e.n_used, numbers, n, c->use_all);
        correct = format && e.valued && e.den == 1 && e.num == target;
    }
    out->reward = correct ? 1.0 : format ? c->format_reward : 0.0;
    out->done = true;
    st = env_result_metric(out, "correct", correct ? 1.0 : 0.0);
    if (st == TIDAL_OK) st = env_result_metric(out, "format", format ? 1.0 : 0.0);
    return st;
}

const env_class env_countdown = {
    .name = "countdown",
    .summary = "countdown: reach the target with + - * / ( ) using each given number at most once",
    .create = countdown_create,
    .destroy = countdown_destroy,
    .handle = countdown_handle,
    .generate = NULL,
};
