/* test_envs.c - the in-process environment interface (envs/env.h) and the six
 * built-in environments (envs/builtin.h, docs/environments.md "Built-in
 * environments"): scoring tables for each env through env_handle, the pure
 * extractors and evaluators directly, generate() round trips and
 * determinism, a full multi-turn guess session, and every error path of
 * env_create / env_handle with messages naming the field.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "envs/builtin.h"
#include "envs/env.h"

/* ---- helpers ---- */

static double metric(const env_result *r, const char *name)
{
    for (int i = 0; i < r->n_metrics; i++)
        if (strcmp(r->metrics[i].name, name) == 0) return r->metrics[i].value;
    return NAN;
}

static const char *obs(const env_result *r) { return r->observation ? r->observation : ""; }

/* One STEP (or RESET when turn == 0 and reset) through env_handle. */
static tidal_status call(const env *e, env_op op, const char *task, const char *action, uint32_t turn,
                         env_result *r)
{
    env_call c = {.session = "s-1", .op = op, .task_json = task, .action = action, .turn = turn};
    return env_handle(e, &c, r);
}

static tidal_status step(const env *e, const char *task, const char *action, env_result *r)
{
    return call(e, ENV_OP_STEP, task, action, 1, r);
}

static bool contains(const char *hay, const char *needle) { return strstr(hay, needle) != NULL; }

/* ---- results and the registry ---- */

static void test_result_helpers(void)
{
    env_result r = {0};
    CHECK_OK(env_result_observe(&r, "turn %d", 3));
    CHECK(strcmp(r.observation, "turn 3") == 0);
    CHECK_OK(env_result_observe(&r, "%s", "again"));
    CHECK(strcmp(r.observation, "again") == 0);
    CHECK_OK(env_result_metric(&r, "a", 1.5));
    CHECK_STATUS(env_result_metric(&r, "a", 2), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "metric a"));
    CHECK_STATUS(env_result_metric(&r, "", 2), TIDAL_ERR_INVALID);
    char longname[ENV_METRIC_NAME_MAX + 1];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    CHECK_STATUS(env_result_metric(&r, longname, 2), TIDAL_ERR_INVALID);
    longname[ENV_METRIC_NAME_MAX - 1] = '\0'; /* 47 bytes: the longest allowed */
    CHECK_OK(env_result_metric(&r, longname, 2));
    for (int i = 2; i < ENV_MAX_METRICS; i++) {
        char n[8];
        snprintf(n, sizeof n, "m%d", i);
        CHECK_OK(env_result_metric(&r, n, i));
    }
    CHECK(r.n_metrics == ENV_MAX_METRICS);
    CHECK_STATUS(env_result_metric(&r, "one_more", 1), TIDAL_ERR_INVALID);
    CHECK(metric(&r, "a") == 1.5);
    env_result_clear(&r);
    CHECK(r.observation == NULL && r.n_metrics == 0 && r.reward == 0);
    env_result_clear(&r); /* twice is fine */
}

static void test_result_check(void)
{
    env_result r = {0};
    CHECK_OK(env_result_check(&r));
    r.reward = NAN;
    CHECK_STATUS(env_result_check(&r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "reward"));
    r.reward = INFINITY;
    CHECK_STATUS(env_result_check(&r), TIDAL_ERR_INVALID);
    r.reward = 0.5;
    CHECK_OK(env_result_metric(&r, "x", 1));
    CHECK_OK(env_result_check(&r));
    r.metrics[0].value = -INFINITY;
    CHECK_STATUS(env_result_check(&r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "metric x"));
    r.metrics[0].value = 1;
    r.metrics[1] = r.metrics[0]; /* a duplicate written past env_result_metric */
    r.n_metrics = 2;
    CHECK_STATUS(env_result_check(&r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "twice"));
    r.metrics[1].name[0] = '\0';
    CHECK_STATUS(env_result_check(&r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "empty"));
    memset(r.metrics[1].name, 'y', sizeof r.metrics[1].name); /* not terminated */
    CHECK_STATUS(env_result_check(&r), TIDAL_ERR_INVALID);
    r.n_metrics = ENV_MAX_METRICS + 1;
    CHECK_STATUS(env_result_check(&r), TIDAL_ERR_INVALID);
    r.n_metrics = -1;
    CHECK_STATUS(env_result_check(&r), TIDAL_ERR_INVALID);
}

static void test_registry(void)
{
    const env_class *const *all;
    size_t n = env_builtins(&all);
    CHECK(n == 6);
    const char *want[] = {"arith", "strings", "gsm8k", "countdown", "match", "guess"};
    for (size_t i = 0; i < n; i++) {
        CHECK(strcmp(all[i]->name, want[i]) == 0);
        CHECK(all[i]->summary && all[i]->summary[0]);
        CHECK(all[i]->handle != NULL);
        CHECK(env_builtin(want[i]) == all[i]);
    }
    CHECK(env_builtin("nope") == NULL);
    CHECK(env_builtin(NULL) == NULL);
    /* the synthetic ones generate, the dataset ones do not */
    CHECK(env_arith.generate && env_strings.generate && env_guess.generate);
    CHECK(!env_gsm8k.generate && !env_countdown.generate && !env_match.generate);
}

static void test_create_errors(void)
{
    env *e = (env *)1;
    CHECK_STATUS(env_create("nope", NULL, &e), TIDAL_ERR_NOT_FOUND);
    CHECK(e == NULL);
    CHECK(contains(tidal_errmsg(), "nope") && contains(tidal_errmsg(), "arith, strings, gsm8k, countdown, match, guess"));
    CHECK_STATUS(env_create("arith", "{not json", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config") && contains(tidal_errmsg(), "JSON"));
    CHECK_STATUS(env_create("arith", "[1, 2]", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config: must be a JSON object, got an array"));
    CHECK_STATUS(env_create("arith", "{\"digit\": 3}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "env arith: config.digit: unknown key") && contains(tidal_errmsg(), "digits"));
    CHECK_STATUS(env_create("arith", "{\"digits\": 10}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.digits") && contains(tidal_errmsg(), "1..9"));
    CHECK_STATUS(env_create("arith", "{\"digits\": \"2\"}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.digits") && contains(tidal_errmsg(), "a string"));
    CHECK_STATUS(env_create("arith", "{\"terms\": 1}", &e), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_create("arith", "{\"ops\": \"+/\"}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.ops"));
    CHECK_STATUS(env_create("arith", "{\"ops\": \"\"}", &e), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_create("arith", "{\"digits\": 9, \"terms\": 3}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.terms") && contains(tidal_errmsg(), "18"));
    CHECK_STATUS(env_create("arith", "{\"partial_credit\": 1}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.partial_credit"));
    CHECK_STATUS(env_create("strings", "{\"length\": 65}", &e), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_create("strings", "{\"alphabet\": \"hex\"}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.alphabet"));
    CHECK_STATUS(env_create("strings", "{\"ops\": [\"reverse\", \"rot13\"]}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.ops[1]") && contains(tidal_errmsg(), "rot13"));
    CHECK_STATUS(env_create("strings", "{\"ops\": []}", &e), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_create("strings", "{\"ops\": \"reverse\"}", &e), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_create("strings", "{\"alphabet\": \"digits\", \"ops\": [\"upper\"]}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.ops[0]: upper"));
    CHECK_STATUS(env_create("gsm8k", "{\"require_format\": \"yes\"}", &e), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_create("gsm8k", "{\"field\": \"\"}", &e), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_create("countdown", "{\"format_reward\": 2}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.format_reward"));
    CHECK_STATUS(env_create("countdown", "{\"format_reward\": -0.1}", &e), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_create("match", "{\"mode\": \"glob\"}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.mode") && contains(tidal_errmsg(), "glob"));
    CHECK_STATUS(env_create("match", "{\"strip\": null, \"ignore_case\": 0}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.ignore_case"));
    CHECK_STATUS(env_create("guess", "{\"low\": 10, \"high\": 5}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "config.high"));
    CHECK_STATUS(env_create("guess", "{\"max_turns\": 0}", &e), TIDAL_ERR_INVALID);
    CHECK(e == NULL);

    /* the accepted forms: NULL, "", {}, null values as absent, every key */
    const char *ok[][2] = {
        {"arith", NULL},
        {"arith", ""},
        {"arith", "{}"},
        {"arith", "{\"digits\": null}"},
        {"arith", "{\"digits\": 9, \"terms\": 2, \"ops\": \"*\", \"partial_credit\": true}"},
        {"arith", "{\"digits\": 9, \"terms\": 6, \"ops\": \"+-\"}"},
        {"strings", "{\"length\": 64, \"alphabet\": \"digits\", \"ops\": [\"sort\", \"shift\"]}"},
        {"gsm8k", "{\"field\": \"reward_model.ground_truth\", \"require_format\": true}"},
        {"countdown", "{\"format_reward\": 0, \"use_all\": true}"},
        {"match", "{\"field\": \"label\", \"mode\": \"regex\", \"ignore_case\": true, \"strip\": false}"},
        {"guess", "{\"low\": -5, \"high\": 5, \"max_turns\": 3}"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        CHECK_OK(env_create(ok[i][0], ok[i][1], &e));
        CHECK(strcmp(env_class_of(e)->name, ok[i][0]) == 0);
        env_free(e);
    }
    env_free(NULL);
    CHECK(env_class_of(NULL) == NULL);
}

static void test_handle_errors(void)
{
    env *e;
    CHECK_OK(env_create("arith", NULL, &e));
    env_result r;
    env_call c = {.op = (env_op)0, .task_json = "{\"answer\": 1}", .action = "1"};
    CHECK_STATUS(env_handle(e, &c, &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "op: 0"));
    c.op = (env_op)3;
    CHECK_STATUS(env_handle(e, &c, &r), TIDAL_ERR_INVALID);
    CHECK(r.observation == NULL && r.n_metrics == 0);
    CHECK_STATUS(env_handle(e, NULL, &r), TIDAL_ERR_INVALID);
    CHECK_STATUS(env_handle(NULL, &c, &r), TIDAL_ERR_INVALID);

    CHECK_STATUS(step(e, "[1]", "1", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json: must be a JSON object, got an array"));
    CHECK_STATUS(step(e, "42", "1", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json: must be a JSON object, got an integer"));
    CHECK_STATUS(step(e, "{\"answer\": 1", "1", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json: not valid JSON"));
    CHECK_STATUS(step(e, "", "1", &r), TIDAL_ERR_INVALID); /* {}: no answer */
    CHECK(contains(tidal_errmsg(), "env arith: task_json.answer: missing"));
    CHECK_STATUS(step(e, NULL, "1", &r), TIDAL_ERR_INVALID);
    CHECK_STATUS(step(e, "{\"answer\": 1.5}", "1", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.answer"));
    CHECK_STATUS(step(e, "{\"answer\": \"ten\"}", "1", &r), TIDAL_ERR_INVALID);

    /* RESET of a single-turn env: empty, reward 0, not done, whatever the task */
    CHECK_OK(call(e, ENV_OP_RESET, NULL, NULL, 0, &r));
    CHECK(r.observation == NULL && r.reward == 0 && !r.done && r.n_metrics == 0);
    /* a NULL action is "" */
    CHECK_OK(step(e, "{\"answer\": 1}", NULL, &r));
    CHECK(r.reward == 0 && r.done && metric(&r, "correct") == 0);
    env_result_clear(&r);
    env_free(e);
}

/* ---- numbers in text ---- */

static void test_number_scanner(void)
{
    struct {
        const char *text;
        const char *last; /* the last token's text, NULL = none */
        double value;
    } cases[] = {
        {"72", "72", 72},
        {"it is 1,234,567 dollars", "1,234,567", 1234567},
        {"1,2,3", "3", 3},
        {"1234,567", "567", 567},
        {"12,34", "34", 34},
        {"pay -$5", "-$5", -5},
        {"pay $-5.50", "$-5.50", -5.5},
        {"5-3", "3", 3},
        {"x=-3", "-3", -3},
        {"10 - 3", "3", 3},
        {"(-4)", "-4", -4},
        {"a-4", "4", 4},
        {"+7", "+7", 7},
        {"\xe2\x88\x92" "8", "\xe2\x88\x92" "8", -8},
        {"72.", "72", 72},
        {"72.00", "72.00", 72},
        {"0.050", "0.050", 0.05},
        {"is .5 now", ".5", 0.5},
        {"3/4 cup", "3/4", 0.75},
        {"3/0", "0", 0},
        {"25% off", "25%", 25},
        {"-0", "-0", 0},
        {"no digits", NULL, 0},
        {"", NULL, 0},
        {"version 1.2.3", "3", 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        env_numtok t;
        size_t n = strlen(cases[i].text);
        bool found = env_last_number(cases[i].text, n, &t);
        CHECK_MSG(found == (cases[i].last != NULL), "case %zu (%s)", i, cases[i].text);
        if (!found) continue;
        CHECK_MSG(t.end - t.start == strlen(cases[i].last) &&
                      memcmp(cases[i].text + t.start, cases[i].last, t.end - t.start) == 0,
                  "case %zu (%s): token %.*s", i, cases[i].text, (int)(t.end - t.start), cases[i].text + t.start);
        CHECK_MSG(t.value.approx == cases[i].value, "case %zu: %g", i, t.value.approx);
        CHECK(t.value.exact);
    }

    env_number a, b;
    CHECK(env_number_parse(" 72.00 ", 7, &a) && env_number_parse("72", 2, &b) && env_number_equal(&a, &b));
    CHECK(a.num == 72 && a.den == 1 && !a.neg);
    CHECK(env_number_parse("3/4", 3, &a) && a.num == 3 && a.den == 4);
    CHECK(env_number_parse("6/8", 3, &b) && env_number_equal(&a, &b));
    CHECK(env_number_parse("0.75", 4, &b) && env_number_equal(&a, &b));
    CHECK(env_number_parse("-0", 2, &a) && env_number_parse("0", 1, &b) && env_number_equal(&a, &b) && !a.neg);
    CHECK(!env_number_parse("72 apples", 9, &a));
    CHECK(!env_number_parse("", 0, &a));
    CHECK(!env_number_parse("   ", 3, &a));
    /* exact: no tolerance between distinct integers, however large */
    CHECK(env_number_parse("1234567", 7, &a) && env_number_parse("1234568", 7, &b) && !env_number_equal(&a, &b));
    CHECK(env_number_parse("999999999999999999", 18, &a) && env_number_parse("999999999999999998", 18, &b) &&
          !env_number_equal(&a, &b));
    /* beyond 19 significant digits: a double with a relative 1e-9 tolerance */
    const char *big = "123456789012345678901234";
    CHECK(env_number_parse(big, strlen(big), &a) && !a.exact && env_number_equal(&a, &a));
    CHECK(env_number_parse("1.23456789012345678901234e0", 26, &b) == false);
    int64_t v;
    CHECK(env_number_parse("-9", 2, &a) && env_number_int64(&a, &v) && v == -9);
    CHECK(env_number_parse("9.5", 3, &a) && !env_number_int64(&a, &v));
    CHECK(env_number_parse("9.0", 3, &a) && env_number_int64(&a, &v) && v == 9);
    CHECK(env_number_parse(big, strlen(big), &a) && !env_number_int64(&a, &v));

    const char *s = "  a b \n";
    size_t n = strlen(s);
    env_trim(&s, &n);
    CHECK(n == 3 && memcmp(s, "a b", 3) == 0);
}

/* ---- arith ---- */

static void test_arith_generate(void)
{
    const char *cfgs[] = {NULL, "{\"digits\": 1, \"terms\": 6}", "{\"digits\": 9, \"terms\": 2, \"ops\": \"*\"}",
                          "{\"digits\": 3, \"terms\": 6, \"ops\": \"*\"}", "{\"digits\": 9, \"terms\": 6, \"ops\": \"+-\"}"};
    for (size_t k = 0; k < sizeof cfgs / sizeof cfgs[0]; k++) {
        env *e;
        CHECK_OK(env_create("arith", cfgs[k], &e));
        int distinct = 0;
        char first[256] = "";
        for (uint64_t seed = 0; seed < 200; seed++) {
            char *tj, *prompt, *tj2, *prompt2;
            CHECK_OK(env_generate(e, seed, &tj, &prompt));
            CHECK_OK(env_generate(e, seed, &tj2, &prompt2));
            CHECK(strcmp(tj, tj2) == 0 && strcmp(prompt, prompt2) == 0); /* deterministic */
            if (seed == 0) snprintf(first, sizeof first, "%s", tj);
            else distinct += strcmp(first, tj) != 0;
            json_t *task = json_loads(tj, 0, NULL);
            CHECK(task && json_is_integer(json_object_get(task, "answer")));
            const char *q = json_string_value(json_object_get(task, "question"));
            CHECK(q);
            json_int_t ans = json_integer_value(json_object_get(task, "answer"));
            /* the answer is the question's value with precedence (an independent evaluator) */
            countdown_expr x;
            countdown_eval(q, strlen(q), &x);
            CHECK_MSG(x.valued && x.den == 1 && x.num == ans, "%s = %lld", q, (long long)ans);
            char want_prompt[300];
            snprintf(want_prompt, sizeof want_prompt, "What is %s? Give only the number.", q);
            CHECK(strcmp(prompt, want_prompt) == 0);
            char action[64];
            env_result r;
            snprintf(action, sizeof action, "The answer is %lld.", (long long)ans);
            CHECK_OK(step(e, tj, action, &r));
            CHECK(r.reward == 1 && r.done && metric(&r, "correct") == 1);
            snprintf(action, sizeof action, "%lld", (long long)ans + 1);
            CHECK_OK(step(e, tj, action, &r));
            CHECK(r.reward < 1 && r.done && metric(&r, "correct") == 0);
            json_decref(task);
            free(tj), free(prompt), free(tj2), free(prompt2);
        }
        CHECK(distinct > 150);
        env_free(e);
    }
}

static void test_arith_scoring(void)
{
    env *e, *p;
    CHECK_OK(env_create("arith", NULL, &e));
    CHECK_OK(env_create("arith", "{\"partial_credit\": true}", &p));
    struct {
        const char *task, *action;
        double exact, partial;
    } cases[] = {
        {"{\"question\":\"37 + 5 * 12\",\"answer\":97}", "97", 1, 1},
        {"{\"answer\":97}", "Let me think: 37 + 60 = 97", 1, 1},
        {"{\"answer\":97}", "97 is close, but the answer is 87", 0, 0.5},
        {"{\"answer\":97}", "197", 0, 2.0 / 3},
        {"{\"answer\":97}", "7", 0, 0.5},
        {"{\"answer\":97}", "-97", 0, 0},
        {"{\"answer\":97}", "97.0", 1, 1},
        {"{\"answer\":97}", "97.5", 0, 0},
        {"{\"answer\":97}", "no idea", 0, 0},
        {"{\"answer\":-23}", "37 - 5 * 12 = -23", 1, 1},
        {"{\"answer\":-23}", "-24", 0, 0.5},
        {"{\"answer\":-23}", "23", 0, 0},
        {"{\"answer\":1234}", "1,234", 1, 1},
        {"{\"answer\":1234}", "1243", 0, 0.5},
        {"{\"answer\":1234}", "99999999999999999999999", 0, 0},
        {"{\"answer\":0}", "0", 1, 1},
        {"{\"answer\":0}", "10", 0, 0.5},
        {"{\"answer\":\"42\"}", "42", 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        env_result r;
        CHECK_OK(step(e, cases[i].task, cases[i].action, &r));
        CHECK_MSG(r.reward == cases[i].exact && r.done, "case %zu: %g", i, r.reward);
        CHECK(metric(&r, "correct") == cases[i].exact);
        CHECK_OK(step(p, cases[i].task, cases[i].action, &r));
        CHECK_MSG(fabs(r.reward - cases[i].partial) < 1e-12, "case %zu partial: %g", i, r.reward);
        CHECK(metric(&r, "correct") == cases[i].exact);
    }
    CHECK(arith_digit_credit(5, 5) == 1);
    CHECK(arith_digit_credit(5, 15) == 0.5);
    CHECK(arith_digit_credit(-12, -13) == 0.5);
    CHECK(arith_digit_credit(-12, 12) == 0);
    CHECK(arith_digit_credit(100, 0) == 1.0 / 3);
    CHECK(arith_digit_credit(INT64_MIN, INT64_MIN + 1) == 18.0 / 19);
    CHECK(arith_digit_credit(INT64_MAX, 0) == 0);
    env_free(e);
    env_free(p);
}

/* ---- strings ---- */

static int cmp_c(const void *a, const void *b) { return *(const char *)a - *(const char *)b; }

static void test_strings_generate(void)
{
    const char *ops[] = {"reverse", "sort", "copy", "shift", "upper"};
    for (size_t k = 0; k < 5; k++) {
        for (int digits = 0; digits < 2; digits++) {
            if (digits && k == 4) continue; /* upper needs letters */
            char cfg[128];
            snprintf(cfg, sizeof cfg, "{\"ops\": [\"%s\"], \"length\": 20, \"alphabet\": \"%s\"}", ops[k],
                     digits ? "digits" : "letters");
            env *e;
            CHECK_OK(env_create("strings", cfg, &e));
            bool wrapped = false;
            for (uint64_t seed = 0; seed < 60; seed++) {
                char *tj, *prompt, *tj2, *prompt2;
                CHECK_OK(env_generate(e, seed, &tj, &prompt));
                CHECK_OK(env_generate(e, seed, &tj2, &prompt2));
                CHECK(strcmp(tj, tj2) == 0 && strcmp(prompt, prompt2) == 0);
                json_t *t = json_loads(tj, 0, NULL);
                CHECK(t);
                const char *in = json_string_value(json_object_get(t, "input"));
                const char *ans = json_string_value(json_object_get(t, "answer"));
                CHECK(in && ans && strlen(in) == 20 && strlen(ans) == 20);
                CHECK(strcmp(json_string_value(json_object_get(t, "op")), ops[k]) == 0);
                CHECK(contains(prompt, in) && contains(prompt, "Give only the resulting string"));
                char want[21];
                memcpy(want, in, 21);
                for (size_t i = 0; i < 20; i++) {
                    CHECK(digits ? (in[i] >= '0' && in[i] <= '9') : (in[i] >= 'a' && in[i] <= 'z'));
                    if (k == 0) want[i] = in[19 - i];
                    if (k == 3) {
                        want[i] = in[i] == 'z' ? 'a' : in[i] == '9' ? '0' : (char)(in[i] + 1);
                        wrapped = wrapped || in[i] == 'z' || in[i] == '9';
                    }
                    if (k == 4) want[i] = (char)(in[i] - 'a' + 'A');
                }
                if (k == 1) qsort(want, 20, 1, cmp_c);
                CHECK_MSG(strcmp(want, ans) == 0, "%s(%s) = %s, want %s", ops[k], in, ans, want);
                env_result r;
                char action[64];
                snprintf(action, sizeof action, "Here you go:\n`%s`\n", ans);
                CHECK_OK(step(e, tj, action, &r));
                CHECK(r.reward == 1 && r.done && metric(&r, "exact") == 1);
                snprintf(action, sizeof action, "%.19s", ans);
                CHECK_OK(step(e, tj, action, &r));
                CHECK(r.reward == 19.0 / 20 && metric(&r, "exact") == 0);
                json_decref(t);
                free(tj), free(prompt), free(tj2), free(prompt2);
            }
            if (k == 3) CHECK(wrapped);
            env_free(e);
        }
    }
    /* the default ops: several drawn */
    env *e;
    CHECK_OK(env_create("strings", NULL, &e));
    int seen[4] = {0};
    for (uint64_t seed = 0; seed < 100; seed++) {
        char *tj, *prompt;
        CHECK_OK(env_generate(e, seed, &tj, &prompt));
        json_t *t = json_loads(tj, 0, NULL);
        const char *op = json_string_value(json_object_get(t, "op"));
        for (int k = 0; k < 4; k++) seen[k] += strcmp(op, ops[k]) == 0;
        CHECK(strcmp(op, "upper") != 0);
        CHECK(strlen(json_string_value(json_object_get(t, "input"))) == 8);
        json_decref(t);
        free(tj), free(prompt);
    }
    CHECK(seen[0] && seen[1] && seen[2] && seen[3]);
    env_free(e);
    /* prompt "terse": "OP INPUT", the same task as the instruction prompt's */
    env *te, *ie;
    CHECK_OK(env_create("strings", "{\"length\": 3, \"alphabet\": \"digits\", \"ops\": [\"reverse\"], \"prompt\": \"terse\"}", &te));
    CHECK_OK(env_create("strings", "{\"length\": 3, \"alphabet\": \"digits\", \"ops\": [\"reverse\"], \"prompt\": \"instruction\"}", &ie));
    for (uint64_t seed = 0; seed < 20; seed++) {
        char *tj, *prompt, *tj2, *prompt2, want[32];
        CHECK_OK(env_generate(te, seed, &tj, &prompt));
        CHECK_OK(env_generate(ie, seed, &tj2, &prompt2));
        CHECK(strcmp(tj, tj2) == 0 && contains(prompt2, "Give only the resulting string"));
        json_t *t = json_loads(tj, 0, NULL);
        snprintf(want, sizeof want, "reverse %s", json_string_value(json_object_get(t, "input")));
        CHECK_MSG(strcmp(prompt, want) == 0, "terse prompt \"%s\", want \"%s\"", prompt, want);
        json_decref(t);
        free(tj), free(prompt), free(tj2), free(prompt2);
    }
    env_free(te), env_free(ie);
    CHECK_STATUS(env_create("strings", "{\"prompt\": \"short\"}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "prompt"));
    /* prompt "bare": the input alone, for a single op only */
    CHECK_OK(env_create("strings", "{\"length\": 3, \"alphabet\": \"digits\", \"ops\": [\"reverse\"], \"prompt\": \"bare\"}", &te));
    char *tj, *prompt;
    CHECK_OK(env_generate(te, 7, &tj, &prompt));
    json_t *bt = json_loads(tj, 0, NULL);
    CHECK(!strcmp(prompt, json_string_value(json_object_get(bt, "input"))) && strlen(prompt) == 3);
    json_decref(bt);
    free(tj), free(prompt);
    env_free(te);
    CHECK_STATUS(env_create("strings", "{\"ops\": [\"reverse\", \"copy\"], \"prompt\": \"bare\"}", &e), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "single"));
    CHECK_STATUS(env_create("strings", "{\"prompt\": \"bare\"}", &e), TIDAL_ERR_INVALID);
}

static void test_strings_scoring(void)
{
    env *e;
    CHECK_OK(env_create("strings", NULL, &e));
    const char *task = "{\"op\":\"reverse\",\"input\":\"abcd\",\"answer\":\"dcba\"}";
    struct {
        const char *action;
        double reward;
    } cases[] = {
        {"dcba", 1},
        {"  dcba  \n\n", 1},
        {"The reversed string is:\n\"dcba\"", 1},
        {"'dcba'", 1},
        {"```\ndcba\n```\n", 1},
        {"abcd\ndcba", 1},
        {"dcba\nabcd", 0},
        {"dcbx", 0.75},
        {"dcb", 0.75},
        {"dcbaa", 0.8},
        {"xdcba", 0},
        {"DCBA", 0},
        {"", 0},
        {"\n  \n``\n", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        env_result r;
        CHECK_OK(step(e, task, cases[i].action, &r));
        CHECK_MSG(fabs(r.reward - cases[i].reward) < 1e-12 && r.done, "case %zu: %g", i, r.reward);
        CHECK(metric(&r, "exact") == (cases[i].reward == 1 ? 1 : 0));
    }
    const char *a;
    size_t n;
    CHECK(!strings_extract("", 0, &a, &n) && n == 0);
    CHECK(strings_extract("x\n\"y z\"\n", 8, &a, &n) && n == 3 && memcmp(a, "y z", 3) == 0);
    CHECK(strings_score("", 0, "", 0) == 1);
    CHECK(strings_score("ab", 2, "", 0) == 0);

    env_result r;
    CHECK_STATUS(step(e, "{\"op\":\"reverse\"}", "x", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.answer: missing"));
    CHECK_STATUS(step(e, "{\"answer\": 5}", "5", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.answer: must be a string"));
    env_free(e);
}

/* ---- gsm8k ---- */

static void test_gsm8k_scoring(void)
{
    env *e;
    CHECK_OK(env_create("gsm8k", NULL, &e));
    const char *natalia =
        "{\"question\":\"Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
        "May. How many clips did Natalia sell altogether in April and May?\",\"answer\":\"Natalia sold 48/2 = "
        "<<48/2=24>>24 clips in May.\\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in April and "
        "May.\\n#### 72\"}";
    struct {
        const char *task, *action;
        int correct, format;
    } cases[] = {
        {natalia, "48 / 2 = 24 in May, 48 + 24 = 72 in all.\n#### 72", 1, 1},
        {natalia, "She sold 72 clips.", 1, 0},
        {natalia, "She sold 24 in May and 72 in total, so 73 minus 1", 0, 0},
        {natalia, "#### 72.00", 1, 1},
        {natalia, "####72", 1, 1},
        {natalia, "#### 72 clips. In May she sold 24.", 1, 1},
        {natalia, "I first thought 70.\n#### 72", 1, 1},
        {natalia, "#### 70\nWait, no: 72", 0, 1},
        {natalia, "The answer is \\boxed{72}.", 1, 1},
        {natalia, "The answer is \\boxed{72", 1, 0}, /* unclosed: the last number */
        {natalia, "I got 72 ####", 1, 0},           /* nothing after ####: the last number */
        {natalia, "no number at all", 0, 0},
        {natalia, "", 0, 0},
        {"{\"answer\":\"1000\"}", "#### 1,000", 1, 1},
        {"{\"answer\":\"1000\"}", "The total is $1,000.", 1, 0},
        {"{\"answer\":\"1000\"}", "\\boxed{1{,}000}", 1, 1},
        {"{\"answer\":\"1000\"}", "\\boxed{\\$1,000}", 1, 1},
        {"{\"answer\":\"1234.5\"}", "#### $1,234.50", 1, 1},
        {"{\"answer\":\"-5\"}", "#### -5", 1, 1},
        {"{\"answer\":\"-5\"}", "#### 5", 0, 1},
        {"{\"answer\":\"-4\"}", "#### \xe2\x88\x92" "4", 1, 1},
        {"{\"answer\":\"-3\"}", "so x = -3", 1, 0},
        {"{\"answer\":\"3\"}", "5-3", 1, 0},
        {"{\"answer\":\"0.75\"}", "\\boxed{\\frac{3}{4}}", 1, 1},
        {"{\"answer\":\"0.75\"}", "\\boxed{\\dfrac{3}{4}}", 1, 1},
        {"{\"answer\":\"0.75\"}", "\\boxed{3/4}", 1, 1},
        {"{\"answer\":\"3/4\"}", "#### 0.75", 1, 1},
        {"{\"answer\":\"-0.5\"}", "\\boxed{-\\frac{1}{2}}", 1, 1},
        {"{\"answer\":\"5\"}", "\\boxed{\\frac{10}{2}}", 1, 1},
        {"{\"answer\":\"0.1\"}", "#### 1/10", 1, 1},
        {"{\"answer\":\"0.1\"}", "#### 0.10", 1, 1},
        {"{\"answer\":72}", "\\boxed{72}", 1, 1},
        {"{\"answer\":2.5}", "#### 2.50", 1, 1},
        {"{\"answer\":2.5}", "#### 5/2", 1, 1},
        {"{\"answer\":\"18\"}", "\\boxed{\\text{18 dollars}}", 1, 1},
        {"{\"answer\":\"18\"}", "\\boxed{{18}}", 1, 1},
        {"{\"answer\":\"18\"}", "\\boxed{18 \\text{ dollars}}", 1, 1},
        {"{\"answer\":\"6\"}", "2 \\times 3 = \\boxed{6}", 1, 1},
        {"{\"answer\":\"6\"}", "\\boxed{x = 2 \\times 3 = 6}", 1, 1},
        {"{\"answer\":\"12\"}", "\\boxed{10} and later \\boxed{12}", 1, 1},
        {"{\"answer\":\"10\"}", "\\boxed{10} and later \\boxed{12}", 0, 1},
        {"{\"answer\":\"12\"}", "\\boxed{\\boxed{12}} then \\boxed{7", 1, 1},
        {"{\"answer\":\"25\"}", "The answer is 25%.", 1, 0},
        {"{\"answer\":\"25\"}", "\\boxed{25\\%}", 1, 1},
        {"{\"answer\":\"7\"}", "First 3, then 5, finally 7", 1, 0},
        {"{\"answer\":\"7\"}", "7 apples, then 3 more", 0, 0},
        {"{\"answer\":\"1234567\"}", "#### 1234568", 0, 1},
        {"{\"answer\":\"12\"}", "#### 12.5", 0, 1},
        {"{\"answer\":\"3\"}", "the list 1,2,3", 1, 0},
        {"{\"answer\":\"1234\"}", "1,234", 1, 0},
        {"{\"answer\":\"$18\"}", "18", 1, 0},
        {"{\"answer\":\"#### 18\"}", "\\boxed{18}", 1, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        env_result r;
        CHECK_OK(step(e, cases[i].task, cases[i].action, &r));
        CHECK_MSG(r.reward == cases[i].correct && r.done, "case %zu (%s): reward %g", i, cases[i].action, r.reward);
        CHECK(metric(&r, "correct") == cases[i].correct);
        CHECK_MSG(metric(&r, "format") == cases[i].format, "case %zu (%s): format %g", i, cases[i].action,
                  metric(&r, "format"));
        CHECK(r.observation == NULL);
    }

    env_result r;
    const char *bad[][2] = {
        {"{}", "missing"},
        {"{\"answer\": null}", "missing"},
        {"{\"answer\": [72]}", "must be a string or a number"},
        {"{\"answer\": \"seventy-two\"}", "neither a number"},
        {"{\"answer\": \"the answer is 72\"}", "neither a number"},
        {"{\"answer\": \"#### \"}", "no number after"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(step(e, bad[i][0], "72", &r), TIDAL_ERR_INVALID);
        CHECK_MSG(contains(tidal_errmsg(), "env gsm8k: task_json.answer: ") && contains(tidal_errmsg(), bad[i][1]),
                  "%s: %s", bad[i][0], tidal_errmsg());
        CHECK(r.n_metrics == 0);
    }
    CHECK_OK(call(e, ENV_OP_RESET, natalia, NULL, 0, &r));
    CHECK(!r.done && r.reward == 0 && r.observation == NULL);
    env_free(e);

    /* require_format: only #### and \boxed answers count */
    CHECK_OK(env_create("gsm8k", "{\"require_format\": true}", &e));
    CHECK_OK(step(e, "{\"answer\":\"72\"}", "The answer is 72", &r));
    CHECK(r.reward == 0 && metric(&r, "format") == 0);
    CHECK_OK(step(e, "{\"answer\":\"72\"}", "#### 72", &r));
    CHECK(r.reward == 1);
    env_free(e);

    /* verl's layout: the reference under reward_model.ground_truth */
    CHECK_OK(env_create("gsm8k", "{\"field\": \"reward_model.ground_truth\"}", &e));
    CHECK_OK(step(e, "{\"reward_model\":{\"style\":\"rule\",\"ground_truth\":\"72\"}}", "#### 72", &r));
    CHECK(r.reward == 1);
    CHECK_STATUS(step(e, "{\"reward_model\":{}}", "#### 72", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.reward_model.ground_truth: missing"));
    env_free(e);
}

static void test_gsm8k_extract(void)
{
    size_t s, n;
    const char *t = "a \\boxed{x{y}z} b \\boxed{q";
    CHECK(gsm8k_boxed(t, strlen(t), &s, &n) && n == 5 && memcmp(t + s, "x{y}z", 5) == 0);
    t = "\\boxed{\\{1\\}}";
    CHECK(gsm8k_boxed(t, strlen(t), &s, &n) && n == 5);
    t = "}}} \\boxed{";
    CHECK(!gsm8k_boxed(t, strlen(t), &s, &n));
    env_number v;
    t = "\\boxed{}";
    CHECK(gsm8k_extract(t, strlen(t), false, &v) == GSM8K_NONE);
    t = "7 \\boxed{}";
    CHECK(gsm8k_extract(t, strlen(t), false, &v) == GSM8K_LAST && v.num == 7);
    CHECK(gsm8k_extract(t, strlen(t), true, &v) == GSM8K_NONE);
    t = "#### 3 \\boxed{4}";
    CHECK(gsm8k_extract(t, strlen(t), false, &v) == GSM8K_HASHES && v.num == 3);
    /* a long run of unclosed \boxed{ stays linear and finds nothing */
    size_t big = 200000;
    char *buf = malloc(big + 1);
    CHECK(buf);
    for (size_t i = 0; i < big; i++) buf[i] = "\\boxed{"[i % 7];
    buf[big] = '\0';
    CHECK(gsm8k_extract(buf, big, false, &v) == GSM8K_NONE);
    free(buf);
}

/* ---- countdown ---- */

static void test_countdown_eval(void)
{
    struct {
        const char *text;
        bool parsed, valued;
        int64_t num, den;
        size_t n_used;
    } cases[] = {
        {"1 + 2 * 3", true, true, 7, 1, 3},
        {"(1 + 2) * 3", true, true, 9, 1, 3},
        {"7 / 2", true, true, 7, 2, 2},
        {"2 - 5", true, true, -3, 1, 2},
        {"1/3 + 1/6", true, true, 1, 2, 4},
        {"6 / 4 * 2", true, true, 3, 1, 3},
        {"10 - 2 - 3", true, true, 5, 1, 3},
        {"((((5))))", true, true, 5, 1, 1},
        {" 8\t/\n( 3 - 8 / 3 ) ", true, true, 24, 1, 4},
        {"1 / 0", true, false, 0, 1, 2},
        {"(2 - 2) / (3 - 3)", true, false, 0, 1, 4},
        {"5 / (2 - 2) + 1", true, false, 0, 1, 4},
        {"9223372036854775807 + 1", true, false, 0, 1, 2},
        {"3037000500 * 3037000500", true, false, 0, 1, 2},
        {"9223372036854775807 * 1", true, true, INT64_MAX, 1, 2},
        {"9223372036854775808", false, false, 0, 1, 0},
        {"", false, false, 0, 1, 0},
        {"1 +", false, false, 0, 1, 1},
        {"-1 + 2", false, false, 0, 1, 0},
        {"+1", false, false, 0, 1, 0},
        {"1 2", false, false, 0, 1, 2},
        {"(1 + 2", false, false, 0, 1, 2},
        {"1 + 2)", false, false, 0, 1, 2},
        {"2.5 * 2", false, false, 0, 1, 1},
        {"2 ** 3", false, false, 0, 1, 1},
        {"2 x 3", false, false, 0, 1, 1},
        {"banana", false, false, 0, 1, 0},
        {"()", false, false, 0, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        countdown_expr x;
        countdown_eval(cases[i].text, strlen(cases[i].text), &x);
        CHECK_MSG(x.parsed == cases[i].parsed && x.valued == cases[i].valued, "case %zu (%s): %d %d %s", i,
                  cases[i].text, x.parsed, x.valued, x.error ? x.error : "");
        if (x.valued) CHECK_MSG(x.num == cases[i].num && x.den == cases[i].den, "case %zu", i);
        else CHECK(x.error != NULL && x.error_at <= strlen(cases[i].text));
        if (x.parsed) CHECK_MSG(x.n_used == cases[i].n_used, "case %zu: %zu literals", i, x.n_used);
    }
    countdown_expr x;
    countdown_eval("1/0", 3, &x);
    CHECK(strcmp(x.error, "division by zero") == 0);
    /* a syntax error outranks an earlier division by zero */
    countdown_eval("1/0 +", 5, &x);
    CHECK(!x.parsed && strcmp(x.error, "division by zero") != 0);

    /* nesting: COUNTDOWN_MAX_DEPTH parentheses parse, one more does not */
    char deep[2 * (COUNTDOWN_MAX_DEPTH + 1) + 2];
    for (int d = COUNTDOWN_MAX_DEPTH; d <= COUNTDOWN_MAX_DEPTH + 1; d++) {
        size_t o = 0;
        for (int i = 0; i < d; i++) deep[o++] = '(';
        deep[o++] = '7';
        for (int i = 0; i < d; i++) deep[o++] = ')';
        countdown_eval(deep, o, &x);
        CHECK_MSG(x.parsed == (d == COUNTDOWN_MAX_DEPTH), "depth %d", d);
        if (x.parsed) CHECK(x.valued && x.num == 7);
        else CHECK(contains(x.error, "deeply"));
    }
    /* a million open parentheses: refused at the depth limit, no stack overflow */
    size_t big = 1000000;
    char *buf = malloc(big);
    CHECK(buf);
    memset(buf, '(', big);
    countdown_eval(buf, big, &x);
    CHECK(!x.parsed);
    /* literals: COUNTDOWN_MAX_LITERALS parse, one more does not */
    for (int k = COUNTDOWN_MAX_LITERALS; k <= COUNTDOWN_MAX_LITERALS + 1; k++) {
        size_t o = 0;
        for (int i = 0; i < k; i++) buf[o++] = i ? '+' : ' ', buf[o++] = '1';
        countdown_eval(buf, o, &x);
        CHECK_MSG(x.parsed == (k == COUNTDOWN_MAX_LITERALS), "%d literals", k);
        if (x.parsed) CHECK(x.num == k);
    }
    free(buf);

    const int64_t nums[] = {44, 19, 35, 19};
    const int64_t u1[] = {19, 44, 19}, u2[] = {19, 19, 19}, u3[] = {7}, u4[] = {44, 19, 35, 19};
    CHECK(countdown_numbers_ok(u1, 3, nums, 4, false));
    CHECK(!countdown_numbers_ok(u1, 3, nums, 4, true));
    CHECK(countdown_numbers_ok(u4, 4, nums, 4, true));
    CHECK(!countdown_numbers_ok(u2, 3, nums, 4, false));
    CHECK(!countdown_numbers_ok(u3, 1, nums, 4, false));
    CHECK(countdown_numbers_ok(NULL, 0, nums, 4, false));

    const char *ex;
    size_t n;
    const char *t = "think <answer>1+2</answer> more <answer> 3 * 4 = 12 </answer> tail 9";
    CHECK(countdown_extract(t, strlen(t), &ex, &n) && n == 5 && memcmp(ex, "3 * 4", 5) == 0);
    t = "step 1\nstep two: (3 + 4)\nno digits here\n";
    CHECK(countdown_extract(t, strlen(t), &ex, &n) && n == 7 && memcmp(ex, "(3 + 4)", 7) == 0);
    t = "so 3 + 4 is it";
    CHECK(countdown_extract(t, strlen(t), &ex, &n) && n == 5 && memcmp(ex, "3 + 4", 5) == 0);
    t = "x = 5";
    CHECK(countdown_extract(t, strlen(t), &ex, &n) && n == 0);
    t = "<answer>Answer: 1 + 2</answer>"; /* inside the tags: no trimming to the run */
    CHECK(countdown_extract(t, strlen(t), &ex, &n) && n == 13);
    t = "<answer>5</answer> junk </answer>";
    CHECK(countdown_extract(t, strlen(t), &ex, &n) && n == 1 && ex[0] == '5');
    t = "<answer>5";
    CHECK(countdown_extract(t, strlen(t), &ex, &n) && n == 1 && ex[0] == '5'); /* unclosed: the last line */
    CHECK(!countdown_extract("none", 4, &ex, &n));
}

static void test_countdown_scoring(void)
{
    env *e;
    CHECK_OK(env_create("countdown", NULL, &e));
    const char *t98 = "{\"numbers\":[44,19,35],\"target\":98}";
    const char *t3 = "{\"numbers\":[6,4,2],\"target\":3}";
    const char *t24 = "{\"nums\":[8,3,8,3],\"target\":24}";
    struct {
        const char *task, *action;
        double reward;
        int format;
    } cases[] = {
        {t98, "<think>44 + 19 = 63, 63 + 35 = 98</think>\n<answer>44 + 19 + 35</answer>", 1, 1},
        {t98, "<answer>(44 + 19) + 35</answer>", 1, 1},
        {t98, "<answer>35 + (19 + 44)</answer>", 1, 1},
        {t98, "So: 44 + 19 + 35 = 98", 1, 1},
        {t98, "<answer> 44 + 19 + 35 = 98 </answer>", 1, 1},
        {t98, "<answer>44 + 19</answer>", 0.1, 1},
        {t98, "<answer>44 + 44 + 10</answer>", 0, 0},  /* 44 twice, 10 not given */
        {t98, "<answer>44 + 19 + 35 + 0</answer>", 0, 0}, /* 0 not given */
        {t98, "<answer>44 + 54</answer>", 0, 0},
        {t98, "<answer>98</answer>", 0, 0},
        {t98, "<answer>-44 + 19 + 35</answer>", 0, 0}, /* no unary minus */
        {t98, "<answer>44 + 19 +</answer>", 0, 0},
        {t98, "<answer>banana</answer>", 0, 0},
        {t98, "<answer></answer>", 0, 0},
        {t98, "", 0, 0},
        {t98, "I give up.", 0, 0},
        {t98, "<answer>1+1</answer> ... <answer>44+19+35</answer>", 1, 1},
        {t98, "<answer>44+19+35</answer> ... <answer>1+1</answer>", 0, 0},
        {t98, "<answer>44 / (35 - 35)</answer>", 0, 0},
        {t98, "<answer>44 / (19 - 19)</answer>", 0, 0}, /* 19 twice */
        {t3, "<answer>6 / 4 * 2</answer>", 1, 1},      /* 3/2 on the way, 3 exactly */
        {t3, "<answer>(6 / 4) * 2</answer>", 1, 1},
        {t3, "<answer>6 / 4</answer>", 0.1, 1},
        {t3, "<answer>6 / (4 - 4)</answer>", 0, 0},
        {t3, "<answer>4 / (6 - 6)</answer>", 0, 0},
        {t3, "<answer>2 / (6 - 4) * 6</answer>", 0, 0}, /* 6 twice */
        {t3, "<answer>6 / 2 + 4 - 4</answer>", 0, 0},
        {t3, "<answer>4 / (2 - 2 * 1)</answer>", 0, 0},
        {t24, "<answer>8 / (3 - 8 / 3)</answer>", 1, 1}, /* 1/3 on the way */
        {t24, "<answer>8 * 3</answer>", 1, 1},
        {t24, "<answer>(8 - 8) / (3 - 3)</answer>", 0.1, 1}, /* division by zero: parses, numbers fine */
        {t24, "<answer>(3 - 3) * 8 * 8</answer>", 0.1, 1},
        {t24, "<answer>3 * 8 * (3 - 3)</answer>", 0, 0}, /* 3 three times */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        env_result r;
        CHECK_OK(step(e, cases[i].task, cases[i].action, &r));
        CHECK_MSG(fabs(r.reward - cases[i].reward) < 1e-12 && r.done, "case %zu (%s): reward %g", i, cases[i].action,
                  r.reward);
        CHECK(metric(&r, "correct") == (cases[i].reward == 1));
        CHECK_MSG(metric(&r, "format") == cases[i].format, "case %zu: format", i);
    }
    /* deep nesting in the answer */
    char deep[400] = "<answer>";
    for (int i = 0; i < 60; i++) strcat(deep, "(");
    strcat(deep, "44 + 19 + 35");
    for (int i = 0; i < 60; i++) strcat(deep, ")");
    strcat(deep, "</answer>");
    env_result r;
    CHECK_OK(step(e, t98, deep, &r));
    CHECK(r.reward == 1);
    memmove(deep + 8 + 10, deep + 8, strlen(deep + 8) + 1);
    memset(deep + 8, '(', 10); /* 70 deep, with 10 unbalanced: garbage */
    CHECK_OK(step(e, t98, deep, &r));
    CHECK(r.reward == 0);
    /* overflowing products: parsed, allowed, unvalued */
    CHECK_OK(step(e, "{\"numbers\":[4000000000,4000000000,3],\"target\":3}", "4000000000 * 4000000000 * 3", &r));
    CHECK(fabs(r.reward - 0.1) < 1e-12);

    const char *bad[][2] = {
        {"{\"target\": 3}", "task_json.numbers: missing"},
        {"{\"numbers\": 3, \"target\": 3}", "task_json.numbers: must be an array"},
        {"{\"numbers\": [], \"target\": 3}", "task_json.numbers: must be an array of 1 to 8"},
        {"{\"numbers\": [1,2,3,4,5,6,7,8,9], \"target\": 3}", "task_json.numbers: must be an array of 1 to 8"},
        {"{\"numbers\": [1, 0], \"target\": 3}", "task_json.numbers[1]: must be a positive integer"},
        {"{\"numbers\": [1, \"2\"], \"target\": 3}", "task_json.numbers[1]"},
        {"{\"nums\": [1, -2], \"target\": 3}", "task_json.nums[1]"},
        {"{\"numbers\": [1, 2]}", "task_json.target: missing"},
        {"{\"numbers\": [1, 2], \"target\": \"3\"}", "task_json.target: must be an integer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(step(e, bad[i][0], "1 + 2", &r), TIDAL_ERR_INVALID);
        CHECK_MSG(contains(tidal_errmsg(), bad[i][1]), "%s: %s", bad[i][0], tidal_errmsg());
    }
    env_free(e);

    /* use_all (TinyZero's rule) and format_reward */
    CHECK_OK(env_create("countdown", "{\"use_all\": true, \"format_reward\": 0.25}", &e));
    CHECK_OK(step(e, t98, "<answer>44 + 19</answer>", &r));
    CHECK(r.reward == 0 && metric(&r, "format") == 0);
    CHECK_OK(step(e, t98, "<answer>44 + 19 - 35</answer>", &r));
    CHECK(r.reward == 0.25 && metric(&r, "format") == 1);
    CHECK_OK(step(e, t98, "<answer>44 + 19 + 35</answer>", &r));
    CHECK(r.reward == 1);
    env_free(e);
}

/* ---- match ---- */

static void test_match(void)
{
    env *ex, *ci, *ns, *re, *rei, *lab;
    CHECK_OK(env_create("match", NULL, &ex));
    CHECK_OK(env_create("match", "{\"ignore_case\": true}", &ci));
    CHECK_OK(env_create("match", "{\"strip\": false}", &ns));
    CHECK_OK(env_create("match", "{\"mode\": \"regex\"}", &re));
    CHECK_OK(env_create("match", "{\"mode\": \"regex\", \"ignore_case\": true}", &rei));
    CHECK_OK(env_create("match", "{\"field\": \"label\"}", &lab));
    struct {
        const env *e;
        const char *task, *action;
        int hit;
    } cases[] = {
        {ex, "{\"answer\":\"Paris\"}", "Paris", 1},
        {ex, "{\"answer\":\"Paris\"}", "  Paris \n", 1},
        {ex, "{\"answer\":\" Paris\"}", "Paris", 1},
        {ex, "{\"answer\":\"Paris\"}", "paris", 0},
        {ex, "{\"answer\":\"Paris\"}", "Paris.", 0},
        {ex, "{\"answer\":\"Paris\"}", "It is Paris", 0},
        {ex, "{\"answer\":\"\"}", "  ", 1},
        {ex, "{\"answer\":42}", " 42 ", 1},
        {ns, "{\"answer\":\"Paris\"}", "Paris\n", 0},
        {ns, "{\"answer\":\"Paris\"}", "Paris", 1},
        {ci, "{\"answer\":\"Paris\"}", "PARIS", 1},
        {ci, "{\"answer\":\"\xc3\x89" "cole\"}", "\xc3\xa9" "COLE", 1}, /* Unicode folding: É / é */
        {ci, "{\"answer\":\"Stra\xc3\x9f" "e\"}", "STRASSE", 1},        /* ß folds to ss */
        {ci, "{\"answer\":\"Paris\"}", "Pari", 0},
        {ci, "{\"answer\":\"abc\"}", "ABC\xff", 0}, /* not UTF-8: ASCII folding */
        {re, "{\"answer\":\"^\\\\d{3}-\\\\d{4}$\"}", "555-1234", 1},
        {re, "{\"answer\":\"^\\\\d{3}-\\\\d{4}$\"}", "call 555-1234", 0},
        {re, "{\"answer\":\"\\\\d{3}-\\\\d{4}\"}", "call 555-1234 now", 1},
        {re, "{\"answer\":\"paris\"}", "PARIS", 0},
        {re, "{\"answer\":\"(?i)paris\"}", "PARIS", 1},
        {rei, "{\"answer\":\"paris\"}", "PARIS", 1},
        {re, "{\"answer\":\"^caf\xc3\xa9$\"}", "caf\xc3\xa9", 1},
        {re, "{\"answer\":\"^caf.$\"}", "caf\xc3\xa9", 1}, /* UTF: . is one character */
        {re, "{\"answer\":\"abc\"}", "\xff\xfe abc", 1},   /* invalid UTF-8 in the completion is fine */
        {ex, "{\"answer\":\"a.c\",\"mode\":\"regex\"}", "abc", 1},
        {ex, "{\"answer\":\"a.c\"}", "abc", 0},
        {re, "{\"answer\":\"a.c\",\"mode\":\"exact\"}", "abc", 0},
        {re, "{\"answer\":\"a.c\",\"mode\":\"exact\"}", "a.c", 1},
        {lab, "{\"label\":\"yes\",\"answer\":\"no\"}", "yes", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        env_result r;
        CHECK_OK(step(cases[i].e, cases[i].task, cases[i].action, &r));
        CHECK_MSG(r.reward == cases[i].hit && r.done, "case %zu (%s): %g", i, cases[i].action, r.reward);
        CHECK(metric(&r, "correct") == cases[i].hit);
    }
    env_result r;
    CHECK_STATUS(step(re, "{\"answer\":\"(abc\"}", "abc", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "env match: task_json.answer: bad regex at offset 4") &&
          contains(tidal_errmsg(), "missing closing parenthesis"));
    CHECK_STATUS(step(ex, "{\"answer\":\"[z-a]\",\"mode\":\"regex\"}", "abc", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.answer: bad regex at offset"));
    CHECK_STATUS(step(lab, "{\"label\":\"(\",\"mode\":\"regex\"}", "x", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.label: bad regex"));
    CHECK_STATUS(step(ex, "{\"answer\":\"a\",\"mode\":\"glob\"}", "a", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.mode"));
    CHECK_STATUS(step(ex, "{\"answer\":\"a\",\"mode\":1}", "a", &r), TIDAL_ERR_INVALID);
    CHECK_STATUS(step(lab, "{\"answer\":\"a\"}", "a", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.label: missing"));
    CHECK_STATUS(step(ex, "{\"answer\":[1]}", "a", &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "task_json.answer: must be a string"));
    /* catastrophic backtracking stops at the match limit, as an error */
    char subj[64];
    memset(subj, 'a', 40);
    strcpy(subj + 40, "!");
    CHECK_STATUS(step(re, "{\"answer\":\"^(a+)+$\"}", subj, &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "limit"));
    env_free(ex), env_free(ci), env_free(ns), env_free(re), env_free(rei), env_free(lab);
}

/* ---- guess ---- */

static void test_guess_session(void)
{
    env *e;
    CHECK_OK(env_create("guess", NULL, &e));
    const char *task = "{\"secret\":42,\"low\":1,\"high\":100,\"max_turns\":7}";
    env_result r;
    CHECK_OK(call(e, ENV_OP_RESET, task, NULL, 0, &r));
    CHECK(contains(obs(&r), "I am thinking of a number between 1 and 100. Guess it: answer with a number."));
    CHECK(r.reward == 0 && !r.done);
    env_result_clear(&r);
    struct {
        const char *action, *observation;
        bool done;
        double reward;
    } turns[] = {
        {"Let me start in the middle: 50", "Lower.", false, 0},
        {"25", "Higher.", false, 0},
        {"hmm, not sure", "Please answer with a whole number between 1 and 100.", false, 0},
        {"I said 25 before, now 37.", "Higher.", false, 0},
        {"42", "Correct!", true, 1},
    };
    double total = 0;
    for (uint32_t t = 1; t <= 5; t++) {
        CHECK_OK(call(e, ENV_OP_STEP, task, turns[t - 1].action, t, &r));
        CHECK_MSG(strcmp(obs(&r), turns[t - 1].observation) == 0, "turn %u: %s", t, obs(&r));
        CHECK(r.done == turns[t - 1].done && r.reward == turns[t - 1].reward);
        CHECK(metric(&r, "turns") == t && metric(&r, "correct") == (t == 5));
        total += r.reward;
        env_result_clear(&r);
    }
    CHECK(total == 1);

    /* out of turns: the last wrong guess ends the episode, revealing the number */
    const char *short_task = "{\"secret\":42,\"max_turns\":3}";
    const char *guesses[] = {"10", "90", "41"};
    for (uint32_t t = 1; t <= 3; t++) {
        CHECK_OK(call(e, ENV_OP_STEP, short_task, guesses[t - 1], t, &r));
        CHECK(r.reward == 0 && r.done == (t == 3));
        if (t == 3) CHECK_MSG(contains(obs(&r), "the number was 42") && contains(obs(&r), "Higher."), "%s", obs(&r));
        env_result_clear(&r);
    }
    CHECK_OK(call(e, ENV_OP_STEP, short_task, "no number", 3, &r));
    CHECK(r.done && r.reward == 0 && contains(obs(&r), "the number was 42"));
    env_result_clear(&r);
    CHECK_OK(call(e, ENV_OP_STEP, short_task, "42", 3, &r)); /* right on the last turn */
    CHECK(r.done && r.reward == 1);
    env_result_clear(&r);
    CHECK_STATUS(call(e, ENV_OP_STEP, short_task, "42", 4, &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "turn: 4 is past max_turns 3") && r.observation == NULL);
    CHECK_STATUS(call(e, ENV_OP_STEP, short_task, "42", 0, &r), TIDAL_ERR_INVALID);
    CHECK(contains(tidal_errmsg(), "turn: 0"));

    const char *bad[][2] = {
        {"{}", "task_json.secret: missing"},
        {"{\"secret\":\"42\"}", "task_json.secret: must be an integer"},
        {"{\"secret\":150}", "task_json.secret: 150 is outside [1, 100]"},
        {"{\"secret\":5,\"low\":10,\"high\":1}", "task_json.high"},
        {"{\"secret\":5,\"max_turns\":0}", "task_json.max_turns"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_STATUS(call(e, ENV_OP_RESET, bad[i][0], NULL, 0, &r), TIDAL_ERR_INVALID);
        CHECK_MSG(contains(tidal_errmsg(), bad[i][1]), "%s: %s", bad[i][0], tidal_errmsg());
    }
    env_free(e);

    /* defaults from the config; generate draws secrets in range, reproducibly */
    CHECK_OK(env_create("guess", "{\"low\":0,\"high\":9,\"max_turns\":2}", &e));
    CHECK_OK(call(e, ENV_OP_RESET, "{\"secret\":5}", NULL, 0, &r));
    CHECK(contains(obs(&r), "between 0 and 9") && contains(obs(&r), "2 guesses"));
    env_result_clear(&r);
    CHECK_OK(call(e, ENV_OP_STEP, "{\"secret\":5}", "4", 2, &r));
    CHECK(r.done && r.reward == 0);
    env_result_clear(&r);
    int hist[10] = {0};
    for (uint64_t seed = 0; seed < 200; seed++) {
        char *tj, *prompt, *tj2, *prompt2;
        CHECK_OK(env_generate(e, seed, &tj, &prompt));
        CHECK_OK(env_generate(e, seed, &tj2, &prompt2));
        CHECK(strcmp(tj, tj2) == 0 && strcmp(prompt, prompt2) == 0);
        json_t *t = json_loads(tj, 0, NULL);
        json_int_t s = json_integer_value(json_object_get(t, "secret"));
        CHECK(s >= 0 && s <= 9);
        hist[s]++;
        CHECK_OK(call(e, ENV_OP_RESET, tj, NULL, 0, &r));
        CHECK(strcmp(obs(&r), prompt) == 0);
        env_result_clear(&r);
        char g[16];
        snprintf(g, sizeof g, "%lld", (long long)s);
        CHECK_OK(call(e, ENV_OP_STEP, tj, g, 1, &r));
        CHECK(r.reward == 1 && r.done);
        env_result_clear(&r);
        json_decref(t);
        free(tj), free(prompt), free(tj2), free(prompt2);
    }
    for (int i = 0; i < 10; i++) CHECK(hist[i] > 0);
    env_free(e);

    /* no generator: a clear error */
    char *tj, *prompt;
    CHECK_OK(env_create("gsm8k", NULL, &e));
    CHECK_STATUS(env_generate(e, 1, &tj, &prompt), TIDAL_ERR_INVALID);
    CHECK(tj == NULL && prompt == NULL && contains(tidal_errmsg(), "gsm8k"));
    env_free(e);
}

/* ---- concurrency: one instance, several threads ---- */

typedef struct worker {
    const env *e;
    const char *task, *good, *badans;
    int failures;
} worker;

static void *hammer(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < 300; i++) {
        env_result r;
        if (step(w->e, w->task, i % 2 ? w->good : w->badans, &r) != TIDAL_OK || r.reward != (i % 2 ? 1 : 0))
            w->failures++;
        env_result_clear(&r);
    }
    return NULL;
}

static void test_concurrent(void)
{
    env *g, *m;
    CHECK_OK(env_create("gsm8k", NULL, &g));
    CHECK_OK(env_create("match", "{\"mode\": \"regex\"}", &m));
    worker w[4] = {
        {g, "{\"answer\":\"#### 1,000\"}", "\\boxed{1000}", "#### 999", 0},
        {g, "{\"answer\":\"0.5\"}", "#### 1/2", "#### 1/3", 0},
        {m, "{\"answer\":\"^ok\\\\b\"}", "ok then", "not ok", 0},
        {m, "{\"answer\":\"[0-9]+$\"}", "abc 123", "123 abc", 0},
    };
    pthread_t th[4];
    for (int i = 0; i < 4; i++) CHECK(pthread_create(&th[i], NULL, hammer, &w[i]) == 0);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 4; i++) CHECK_MSG(w[i].failures == 0, "worker %d: %d failures", i, w[i].failures);
    env_free(g);
    env_free(m);
}

int main(void)
{
    RUN(test_result_helpers);
    RUN(test_result_check);
    RUN(test_registry);
    RUN(test_create_errors);
    RUN(test_handle_errors);
    RUN(test_number_scanner);
    RUN(test_arith_generate);
    RUN(test_arith_scoring);
    RUN(test_strings_generate);
    RUN(test_strings_scoring);
    RUN(test_gsm8k_scoring);
    RUN(test_gsm8k_extract);
    RUN(test_countdown_eval);
    RUN(test_countdown_scoring);
    RUN(test_match);
    RUN(test_guess_session);
    RUN(test_concurrent);
    return check_summary();
}
