/* builtin.h - internal to envs/: the built-in environment classes, the helpers
 * they share (configuration and task fields, numbers and lines in model text,
 * a seeded generator), and the pure scoring functions the unit tests and the
 * fuzz targets call directly (docs/environments.md "Built-in environments").
 *
 * Nothing here touches the bus: env.c, text.c and the six env files link with
 * jansson, PCRE2, utf8proc and base/status.c alone.
 */
#ifndef TIDAL_ENVS_BUILTIN_H
#define TIDAL_ENVS_BUILTIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envs/env.h"
#include "base/status.h"

/* The classes, in the order env_builtins lists them. */
extern const env_class env_arith, env_strings, env_gsm8k, env_countdown, env_match, env_guess;

/* The checks env_handle makes on what a class returned: a finite reward, at
 * most ENV_MAX_METRICS metrics with finite values and names non-empty,
 * NUL-terminated and distinct. TIDAL_ERR_INVALID "result: ..." otherwise. */
tidal_status env_result_check(const env_result *r);

/* ---- configuration and task fields (env.c) ----
 * JSON null counts as absent. Every error is TIDAL_ERR_INVALID naming the
 * field: "config.digits: must be an integer in 1..9, got a string (\"2\")",
 * "task_json.answer: missing". */

/* Every key of config must be in `known` (NULL-terminated); the error names
 * the first unknown key and lists the known ones. */
tidal_status env_cfg_keys(const json_t *config, const char *const *known);
/* config[key]: an integer in [lo, hi]; `def` when absent. */
tidal_status env_cfg_int(const json_t *config, const char *key, int64_t def, int64_t lo, int64_t hi, int64_t *out);
/* config[key]: a number (integer or real) in [lo, hi]; `def` when absent. */
tidal_status env_cfg_double(const json_t *config, const char *key, double def, double lo, double hi, double *out);
/* config[key]: true or false; `def` when absent. */
tidal_status env_cfg_bool(const json_t *config, const char *key, bool def, bool *out);
/* config[key]: a string (*out points into config: copy it before config is
 * freed); `def` when absent. */
tidal_status env_cfg_string(const json_t *config, const char *key, const char *def, const char **out);
/* task[key]: an integer; `def` when absent unless `required`. */
tidal_status env_task_int(const json_t *task, const char *key, bool required, int64_t def, int64_t *out);
/* task[path]: the key `path` itself, else (when it contains dots) the path
 * through nested objects ("reward_model.ground_truth"); NULL when absent or
 * null. */
json_t *env_task_field(const json_t *task, const char *path);
/* Record TIDAL_ERR_INVALID "<prefix>.<key>: <text>" and return it. */
tidal_status env_bad(const char *prefix, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- a seeded generator (env.c): splitmix64, the same sequence on every
 * platform, so generate(seed) is reproducible anywhere ---- */
typedef struct env_rng {
    uint64_t s;
} env_rng;
void env_rng_seed(env_rng *r, uint64_t seed);
uint64_t env_rng_next(env_rng *r);
/* Uniform in [0, n) without modulo bias; n > 0. */
uint64_t env_rng_below(env_rng *r, uint64_t n);

/* ---- numbers in text (text.c) ---- */

/* A number read from text. Exact when the value fits num/den (each at most
 * 19 significant digits, fraction reduced); otherwise only approx holds it. */
typedef struct env_number {
    bool neg;       /* never set for zero */
    bool exact;
    uint64_t num;   /* exact: the value is (neg ? -1 : 1) * num / den, in lowest terms */
    uint64_t den;   /* exact: > 0 */
    double approx;  /* always: the value as a double (inf when out of range) */
} env_number;

/* One number token: text[start, end) (its sign, `$` and `%` included). */
typedef struct env_numtok {
    size_t start, end;
    env_number value;
} env_numtok;

/* The first number token starting at or after *pos in text[0, len). A token
 * is: an optional sign (`-`, `+` or U+2212, directly before the digits or the
 * `$`, and not after a letter, digit or closing bracket: "5-3" is 5 and 3), an
 * optional `$`, digits with optional comma groups ("1,234,567": groups of
 * exactly three after a first group of one to three), an optional decimal part
 * (".5", "72.00"), or a fraction of two integers ("3/4"; a zero denominator
 * ends the token before the slash), and an optional `%` (ignored). A lone
 * ".5" not after a letter or digit is 0.5. On success *pos is the token's end.
 * Never reads outside text[0, len). */
bool env_next_number(const char *text, size_t len, size_t *pos, env_numtok *tok);
/* The last number token of text[0, len). */
bool env_last_number(const char *text, size_t len, env_numtok *tok);
/* text[0, len), trimmed of whitespace, is exactly one number token. */
bool env_number_parse(const char *text, size_t len, env_number *out);
/* a == b: exactly when both are exact, else within a relative 1e-9 of the
 * larger magnitude (both finite). */
bool env_number_equal(const env_number *a, const env_number *b);
/* The number is an integer that fits int64. */
bool env_number_int64(const env_number *a, int64_t *out);

/* Trim ASCII whitespace from both ends of [*s, *s + *len). */
void env_trim(const char **s, size_t *len);
/* Is c ASCII whitespace (space, \t, \n, \v, \f, \r)? */
bool env_is_space(char c);

/* ---- arith (arith.c) ---- */

/* The reward for predicting `pred` when the answer is `ref`, digit by digit:
 * the count of decimal digit positions (aligned from the right) where the two
 * agree, over the longer length; 0 when the signs differ; 1 iff equal. */
double arith_digit_credit(int64_t ref, int64_t pred);

/* ---- strings (strings.c) ---- */

/* The answer in a completion: its last line that is not empty once trimmed of
 * whitespace and of surrounding quotes and backticks ("'`), so trimmed.
 * Returns false (and an empty span) when there is none. */
bool strings_extract(const char *text, size_t len, const char **ans, size_t *ans_len);
/* Positions where pred[i] == ref[i], over max(len(ref), len(pred)); 1 when
 * both are empty. */
double strings_score(const char *ref, size_t ref_len, const char *pred, size_t pred_len);

/* ---- gsm8k (gsm8k.c) ---- */

typedef enum {
    GSM8K_NONE = 0, /* no number found */
    GSM8K_HASHES,   /* the first number after the last "####" */
    GSM8K_BOXED,    /* the last number in the last complete \boxed{...} */
    GSM8K_LAST,     /* the last number in the text */
} gsm8k_how;

/* The completion's answer, tried in this order: the first number after the
 * last "####"; else the last number in the content of the last \boxed{...}
 * whose braces balance, with LaTeX \frac{a}{b} read as a/b, {,} as a comma
 * and \$, \%, \text{...} dropped; else (unless require_format) the last
 * number of the text. Never reads outside text[0, len); linear time. */
gsm8k_how gsm8k_extract(const char *text, size_t len, bool require_format, env_number *out);
/* The content of the last \boxed{...} of text whose braces balance (escaped
 * \{ \} do not count): text[*start, *start + *n). */
bool gsm8k_boxed(const char *text, size_t len, size_t *start, size_t *n);
/* The reference: a string - a GSM8K solution whose number follows its last
 * "####", or a bare number ("72", "$1,000", "3/4", "-2.5") - or a JSON number.
 * Anything else is TIDAL_ERR_INVALID naming task_json.<field>. */
tidal_status gsm8k_reference(const json_t *answer, const char *field, env_number *out);

/* ---- countdown (countdown.c) ---- */

#define COUNTDOWN_MAX_NUMBERS 8   /* per task */
#define COUNTDOWN_MAX_LITERALS 64 /* per expression */
#define COUNTDOWN_MAX_DEPTH 64    /* nested parentheses */

/* An expression, parsed and evaluated. */
typedef struct countdown_expr {
    bool parsed;       /* the text is an expression of the grammar */
    bool valued;       /* ... and evaluates: no division by zero, no int64 overflow */
    int64_t num, den;  /* valued: the value num/den in lowest terms, den > 0 */
    size_t n_used;     /* the integer literals, in order of appearance */
    int64_t used[COUNTDOWN_MAX_LITERALS];
    const char *error; /* NULL when valued, else a static description of the first problem */
    size_t error_at;   /* its byte offset */
} countdown_expr;

/* Parse and evaluate text[0, len) with exact rational arithmetic (no eval):
 *   expr   := term (("+" | "-") term)*
 *   term   := factor (("*" | "/") factor)*
 *   factor := integer | "(" expr ")"
 * with whitespace anywhere between tokens. No unary minus or plus, no
 * decimals. Integer literals must fit int64; at most COUNTDOWN_MAX_LITERALS
 * literals and COUNTDOWN_MAX_DEPTH nested parentheses. A division by zero or
 * an overflow leaves the expression parsed but not valued. Total: never
 * crashes, linear time, recursion bounded by the depth limit. */
void countdown_eval(const char *text, size_t len, countdown_expr *out);
/* The expression in a completion: the content of the last <answer>...</answer>
 * if there is one, else the last line that contains a digit; cut before its
 * first "=" ("44 + 19 + 35 = 98" -> "44 + 19 + 35"); from a line (not from
 * <answer>) only its last run of expression characters (digits, + - * / ( )
 * spaces, tabs) that has a digit ("So: 44 + 19 + 35" -> "44 + 19 + 35");
 * trimmed. False when there is neither tag pair nor a line with a digit. */
bool countdown_extract(const char *text, size_t len, const char **expr, size_t *expr_len);
/* The literals use each of numbers[0, n) at most once (a multiset check), and
 * with use_all every one exactly once. */
bool countdown_numbers_ok(const int64_t *used, size_t n_used, const int64_t *numbers, size_t n, bool use_all);

#endif
