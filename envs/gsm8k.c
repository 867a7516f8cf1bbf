/* gsm8k.c - the `gsm8k` environment: numeric answers of grade-school math
 * word problems (docs/environments.md "gsm8k").
 *
 * The reference is the task's `answer` (a GSM8K solution ending in
 * "#### <number>", or a bare number); the completion's answer is the number
 * after its last "####", else the last number inside its last \boxed{...},
 * else its last number. Both are compared as exact rationals ("72.00" == 72,
 * "3/4" == 0.75, "$1,000" == 1000, "25%" == 25; text.c reads the numbers).
 */
#include "envs/builtin.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- extraction ---- */

#define BOXED_STACK 64
#define FRAC_STACK 16

bool gsm8k_boxed(const char *t, size_t len, size_t *start, size_t *n)
{
    /* the open \boxed{ groups: the brace depth before each, and its content's start */
    struct {
        size_t depth, at;
    } stack[BOXED_STACK];
    size_t sp = 0, depth = 0, best_at = 0, best_n = 0;
    bool found = false;
    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        if (c == '\\') {
            if (len - i >= 7 && memcmp(t + i, "\\boxed{", 7) == 0) {
                if (sp < BOXED_STACK) {
                    stack[sp].depth = depth;
                    stack[sp].at = i + 7;
                    sp++;
                }
                depth++;
                i += 6;
            } else if (i + 1 < len && (t[i + 1] == '{' || t[i + 1] == '}' || t[i + 1] == '\\')) {
                i++; /* an escaped brace or backslash: not structure */
            }
        } else if (c == '{') {
            depth++;
        } else if (c == '}' && depth > 0) {
            depth--;
            if (sp > 0 && stack[sp - 1].depth == depth) {
                sp--;
                if (!found || stack[sp].at > best_at) {
                    best_at = stack[sp].at;
                    best_n = i - best_at;
                    found = true;
                }
            }
        }
    }
    *start = best_at;
    *n = best_n;
    return found;
}

/* Does t[i, len) start with `w` followed by a non-letter? */
static bool word_at(const char *t, size_t len, size_t i, const char *w)
{
    size_t n = strlen(w);
    if (len - i < n || memcmp(t + i, w, n) != 0) return false;
    char c = i + n < len ? t[i + n] : ' ';
    return !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'));
}

/* The content of a \boxed{} as plain text into out (at most n bytes):
 * \frac{a}{b} (and \dfrac, \tfrac) -> a/b, {,} -> ",", \$ \% \{ \} and
 * spacing commands dropped, \left \right dropped, other commands -> " ",
 * remaining braces dropped. Returns the length written. */
static size_t unlatex(const char *c, size_t n, char *out)
{
    size_t o = 0, depth = 0, fsp = 0;
    size_t frac[FRAC_STACK];
    for (size_t i = 0; i < n; i++) {
        char ch = c[i];
        if (ch == '\\') {
            if (i + 1 >= n) break;
            char nx = c[i + 1];
            bool letter = (nx >= 'a' && nx <= 'z') || (nx >= 'A' && nx <= 'Z');
            if (!letter) {
                i++; /* \! \, \; \: \  \$ \% \{ \} \\ ... */
                continue;
            }
            size_t k = i + 1;
            while (k < n && ((c[k] >= 'a' && c[k] <= 'z') || (c[k] >= 'A' && c[k] <= 'Z'))) k++;
            bool is_frac = word_at(c, n, i + 1, "frac") || word_at(c, n, i + 1, "dfrac") || word_at(c, n, i + 1, "tfrac");
            if (is_frac && k < n && c[k] == '{') {
                if (fsp < FRAC_STACK) frac[fsp++] = depth;
            } else if (!word_at(c, n, i + 1, "left") && !word_at(c, n, i + 1, "right")) {
                out[o++] = ' ';
            }
            i = k - 1;
        } else if (ch == '{') {
            if (i + 2 < n && c[i + 1] == ',' && c[i + 2] == '}') {
                out[o++] = ',';
                i += 2;
            } else {
                depth++;
            }
        } else if (ch == '}') {
            if (depth > 0) depth--;
            if (fsp > 0 && frac[fsp - 1] == depth && i + 1 < n && c[i + 1] == '{') {
                out[o++] = '/';
                fsp--;
            }
        } else {
            out[o++] = ch;
        }
    }
    return o;
}

gsm8k_how gsm8k_extract(const char *text, size_t len, bool require_format, env_number *out)
{
    /* 1: the first number after the last "####" */
    size_t hashes = SIZE_MAX;
    for (size_t i = 0; i + 4 <= len; i++)
        if (text[i] == '#' && memcmp(text + i, "####", 4) == 0) hashes = i;
    env_numtok tok;
    if (hashes != SIZE_MAX) {
        size_t pos = hashes + 4;
        if (env_next_number(text, len, &pos, &tok)) {
            *out = tok.value;
            return GSM8K_HASHES;
        }
    }
    /* 2: the last number in the last \boxed{...} */
    size_t bs, bn;
    if (gsm8k_boxed(text, len, &bs, &bn)) {
        char *plain = malloc(bn + 1);
        if (plain) {
            size_t pn = unlatex(text + bs, bn, plain);
            bool ok = env_last_number(plain, pn, &tok);
            free(plain);
            if (ok) {
                *out = tok.value;
                return GSM8K_BOXED;
            }
        }
    }
    /* 3: the last number of the text */
    if (!require_format && env_last_number(text, len, &tok)) {
        *out = tok.value;
        return GSM8K_LAST;
    }
    memset(out, 0, sizeof *out);
    out->den = 1;
    return GSM8K_NONE;
}

/* ---- the reference ---- */

tidal_status gsm8k_reference(const json_t *answer, const char *field, env_number *out)
{
    memset(out, 0, sizeof *out);
    out->den = 1;
    if (!answer || json_is_null(answer))
        return env_bad("task_json", field, "missing (the reference: a GSM8K solution ending in \"#### <number>\", "
                                           "or a number)");
    if (json_is_integer(answer)) {
        json_int_t v = json_integer_value(answer);
        out->exact = true;
        out->neg = v < 0;
        out->num = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
        out->approx = (double)v;
        return TIDAL_OK;
    }
    if (json_is_real(answer)) {
        double v = json_real_value(answer);
        char buf[64];
        snprintf(buf, sizeof buf, "%.15g", v);
        if (!env_number_parse(buf, strlen(buf), out)) { /* an exponent: 1e+20 */
            memset(out, 0, sizeof *out);
            out->den = 1;
            out->approx = v;
            out->neg = v < 0;
        }
        return TIDAL_OK;
    }
    if (!json_is_string(answer)) return env_bad("task_json", field, "must be a string or a number");
    const char *s = json_string_value(answer);
    size_t n = json_string_length(answer);
    size_t hashes = SIZE_MAX;
    for (size_t i = 0; i + 4 <= n; i++)
        if (s[i] == '#' && memcmp(s + i, "####", 4) == 0) hashes = i;
    if (hashes != SIZE_MAX) {
        size_t pos = hashes + 4;
        env_numtok tok;
        if (!env_next_number(s, n, &pos, &tok))
            return env_bad("task_json", field, "no number after the last \"####\"");
        *out = tok.value;
        return TIDAL_OK;
    }
    if (!env_number_parse(s, n, out))
        return env_bad("task_json", field, "\"%.40s\" is neither a number nor a solution ending in \"#### <number>\"",
                       s);
    return TIDAL_OK;
}

/* ---- the environment ---- */

typedef struct gsm8k_cfg {
    char *field;
    bool require_format;
} gsm8k_cfg;

static const char *const gsm8k_keys[] = {"field", "require_format", NULL};

static tidal_status gsm8k_create(const json_t *config, void **state)
{
    tidal_status st = env_cfg_keys(config, gsm8k_keys);
    if (st != TIDAL_OK) return st;
    const char *field;
    bool require_format;
    if ((st = env_cfg_string(config, "field", "answer", &field)) != TIDAL_OK) return st;
    if ((st = env_cfg_bool(config, "require_format", false, &require_format)) != TIDAL_OK) return st;
    if (!*field) return env_bad("config", "field", "must not be empty");
    gsm8k_cfg *c = calloc(1, sizeof *c);
    if (!c || !(c->field = strdup(field))) {
        free(c);
        return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    }
    c->require_format = require_format;
    *state = c;
    return TIDAL_OK;
}

static void gsm8k_destroy(void *state)
{
    gsm8k_cfg *c = state;
    if (c) free(c->field);
    free(c);
}

static tidal_status gsm8k_handle(const void *state, const env_request *rq, env_result *out)
{
    const gsm8k_cfg *c = state;
    if (rq->call->op == ENV_OP_RESET) return TIDAL_OK;
    env_number ref, pred;
    tidal_status st = gsm8k_reference(env_task_field(rq->task, c->field), c->field, &ref);
    if (st != TIDAL_OK) return st;
    gsm8k_how how = gsm8k_extract(rq->action, strlen(rq->action), c->require_format, &pred);
    bool correct = how != GSM8K_NONE && env_number_equal(&ref, &pred);
    out->reward = correct ? 1.0 : 0.0;
    out->done = true;
    st = env_result_metric(out, "correct", correct ? 1.0 : 0.0);
    if (st == TIDAL_OK)
        st = env_result_metric(out, "format", how == GSM8K_HASHES || how == GSM8K_BOXED ? 1.0 : 0.0);
    return st;
}

const env_class env_gsm8k = {
    .name = "gsm8k",
    .summary = "GSM8K-style numeric answers (#### / \\boxed{} / last number) vs the row's answer, compared exactly",
    .create = gsm8k_create,
    .destroy = gsm8k_destroy,
    .handle = gsm8k_handle,
    .generate = NULL,
};
