/* match.c - the `match` environment: the completion against a reference
 * field of the task, exactly or by a PCRE2 regex (docs/environments.md
 * "match").
 *
 * exact: the whole completion equals the reference (both trimmed with
 * `strip`; Unicode case folding with `ignore_case`). regex: the reference is
 * a PCRE2 pattern (UTF) searched anywhere in the completion; anchor it with
 * ^...$ for a full match. Patterns are compiled per request (environments
 * are stateless and every row brings its own), with a match limit so a
 * pathological pattern costs a bounded time.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "envs/builtin.h"

#include <inttypes.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define MATCH_LIMIT 1000000 /* backtracking steps per request (PCRE2's default is 10^7) */

typedef enum { MODE_EXACT, MODE_REGEX } match_mode;

typedef struct match_cfg {
    char *field;
    match_mode mode;
    bool ignore_case, strip;
} match_cfg;

static const char *const match_keys[] = {"field", "mode", "ignore_case", "strip", NULL};

static bool parse_mode(const char *s, match_mode *out)
{
    if (strcmp(s, "exact") == 0) *out = MODE_EXACT;
    else if (strcmp(s, "regex") == 0) *out = MODE_REGEX;
    else return false;
    return true;
}

static tidal_status match_create(const json_t *config, void **state)
{
    tidal_status st = env_cfg_keys(config, match_keys);
    if (st != TIDAL_OK) return st;
    const char *field, *mode;
    match_cfg c = {0};
    if ((st = env_cfg_string(config, "field", "answer", &field)) != TIDAL_OK) return st;
    if ((st = env_cfg_string(config, "mode", "exact", &mode)) != TIDAL_OK) return st;
    if ((st = env_cfg_bool(config, "ignore_case", false, &c.ignore_case)) != TIDAL_OK) return st;
    if ((st = env_cfg_bool(config, "strip", true, &c.strip)) != TIDAL_OK) return st;
    if (!*field) return env_bad("config", "field", "must not be empty");
    if (!parse_mode(mode, &c.mode))
        return env_bad("config", "mode", "must be \"exact\" or \"regex\", got \"%.40s\"", mode);
    match_cfg *s = malloc(sizeof *s);
    if (!s || !(c.field = strdup(field))) {
        free(s);
        return tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
    }
    *s = c;
    *state = s;
    return TIDAL_OK;
}

static void match_destroy(void *state)
{
    match_cfg *c = state;
    if (c) free(c->field);
    free(c);
}

/* s[0, n) case-folded (NFC + Unicode case folding) into a malloc'd *out;
 * ASCII folding when s is not valid UTF-8. NULL on no memory. */
static size_t fold(const char *s, size_t n, char **out)
{
    utf8proc_uint8_t *d = NULL;
    utf8proc_ssize_t m = n ? utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &d,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_CASEFOLD)
                           : 0;
    if (n && m >= 0) {
        *out = (char *)d;
        return (size_t)m;
    }
    free(d);
    char *a = malloc(n + 1);
    if (a) {
        for (size_t i = 0; i < n; i++) a[i] = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] - 'A' + 'a') : s[i];
        a[n] = '\0';
    }
    *out = a;
    return n;
}

static tidal_status exact_match(const match_cfg *c, const char *ref, size_t nr, const char *pred, size_t np,
                                bool *hit)
{
    if (c->strip) {
        env_trim(&ref, &nr);
        env_trim(&pred, &np);
    }
    if (!c->ignore_case) {
        *hit = nr == np && memcmp(ref, pred, nr) == 0;
        return TIDAL_OK;
    }
    char *fr, *fp;
    size_t mr = fold(ref, nr, &fr), mp = fold(pred, np, &fp);
    if (!fr || !fp) {
        free(fr);
        free(fp);
        return tidal_fail(TIDAL_ERR_NOMEM, "match: out of memory");
    }
    *hit = mr == mp && memcmp(fr, fp, mr) == 0;
    free(fr);
    free(fp);
    return TIDAL_OK;
}

static tidal_status regex_match(const match_cfg *c, const char *pat, size_t npat, const char *subj, size_t ns,
                                bool *hit)
{
    int err;
    PCRE2_SIZE off;
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (c->ignore_case ? PCRE2_CASELESS : 0);
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, npat, opts, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return env_bad("task_json", c->field, "bad regex at offset %zu: %s", (size_t)off, (const char *)msg);
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    pcre2_match_context *mc = pcre2_match_context_create(NULL);
    if (!md || !mc) {
        pcre2_match_data_free(md);
        pcre2_match_context_free(mc);
        pcre2_code_free(re);
        return tidal_fail(TIDAL_ERR_NOMEM, "match: out of memory");
    }
    pcre2_set_match_limit(mc, MATCH_LIMIT);
    int rc = pcre2_match(re, (PCRE2_SPTR)subj, ns, 0, 0, md, mc);
    pcre2_match_data_free(md);
    pcre2_match_context_free(mc);
    pcre2_code_free(re);
    if (rc >= 0) {
        *hit = true;
        return TIDAL_OK;
    }
    if (rc == PCRE2_ERROR_NOMATCH) {
        *hit = false;
        return TIDAL_OK;
    }
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    return env_bad("task_json", c->field, "regex could not be matched: %s", (const char *)msg);
}

static tidal_status match_handle(const void *state, const env_request *rq, env_result *out)
{
    const match_cfg *c = state;
    if (rq->call->op == ENV_OP_RESET) return TIDAL_OK;
    match_mode mode = c->mode;
    json_t *m = json_object_get(rq->task, "mode");
    if (m && !json_is_null(m) && (!json_is_string(m) || !parse_mode(json_string_value(m), &mode)))
        return env_bad("task_json", "mode", "must be \"exact\" or \"regex\"");
    json_t *v = env_task_field(rq->task, c->field);
    char num[32];
    const char *ref;
    size_t nr;
    if (!v) return env_bad("task_json", c->field, "missing (the reference to match)");
    if (json_is_string(v)) {
        ref = json_string_value(v);
        nr = json_string_length(v);
    } else if (json_is_integer(v)) {
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        ref = num;
        nr = strlen(num);
    } else {
        return env_bad("task_json", c->field, "must be a string (or an integer)");
    }
    bool hit = false;
    tidal_status st = mode == MODE_REGEX ? regex_match(c, ref, nr, rq->action, strlen(rq->action), &hit)
                                         : exact_match(c, ref, nr, rq->action, strlen(rq->action), &hit);
    if (st != TIDAL_OK) return st;
    out->reward = hit ? 1.0 : 0.0;
    out->done = true;
    return env_result_metric(out, "correct", hit ? 1.0 : 0.0);
}

const env_class env_match = {
    .name = "match",
    .summary = "exact or PCRE2 regex match of the completion against a field of the task",
    .create = match_create,
    .destroy = match_destroy,
    .handle = match_handle,
    .generate = NULL,
};
