/* query.c - the dashboard's request parameters (query.h). */
#include "dashboard/query.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void dash_query_init(dash_query *q)
{
    memset(q, 0, sizeof *q);
    q->since = -1, q->limit = 20, q->last = 20;
    q->reward_min = -INFINITY, q->reward_max = INFINITY;
    q->version = -1;
}

static tidal_status int_in(const char *key, const char *v, int64_t lo, int64_t hi, int64_t *out)
{
    if (!v || !*v) return tidal_fail(TIDAL_ERR_INVALID, "dashboard: parameter %s: wants a number", key);
    errno = 0;
    char *end = NULL;
    const long long x = strtoll(v, &end, 10);
    if (errno || *end || x < lo || x > hi)
        return tidal_fail(TIDAL_ERR_INVALID, "dashboard: parameter %s: '%.64s' is not a whole number in %lld .. %lld",
                          key, v, (long long)lo, (long long)hi);
    *out = x;
    return TIDAL_OK;
}

static tidal_status real(const char *key, const char *v, double *out)
{
    if (!v || !*v) return tidal_fail(TIDAL_ERR_INVALID, "dashboard: parameter %s: wants a number", key);
    errno = 0;
    char *end = NULL;
    const double x = strtod(v, &end);
    if (errno || *end || !isfinite(x))
        return tidal_fail(TIDAL_ERR_INVALID, "dashboard: parameter %s: '%.64s' is not a finite number", key, v);
    *out = x;
    return TIDAL_OK;
}

static tidal_status text(const char *key, const char *v, char *out)
{
    const size_t n = v ? strlen(v) : 0;
    if (n >= DASH_QUERY_TEXT_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "dashboard: parameter %s: longer than %d bytes", key, DASH_QUERY_TEXT_MAX - 1);
    memcpy(out, v ? v : "", n + 1);
    return TIDAL_OK;
}

tidal_status dash_query_set(dash_query *q, const char *key, const char *value)
{
    int64_t x = 0;
    if (!key) return tidal_fail(TIDAL_ERR_INVALID, "dashboard: a parameter without a name");
    if (!strcmp(key, "since")) {
        TRY(int_in(key, value, -1, INT64_MAX, &x));
        q->since = x;
    } else if (!strcmp(key, "limit")) {
        TRY(int_in(key, value, 1, DASH_QUERY_LIMIT_MAX, &x));
        q->limit = (int)x;
    } else if (!strcmp(key, "last")) {
        TRY(int_in(key, value, 1, 1000, &x));
        q->last = (int)x;
    } else if (!strcmp(key, "reward_min")) {
        if (value && *value) TRY(real(key, value, &q->reward_min)); /* an empty filter field: no bound */
    } else if (!strcmp(key, "reward_max")) {
        if (value && *value) TRY(real(key, value, &q->reward_max));
    } else if (!strcmp(key, "worker")) {
        TRY(text(key, value, q->worker));
    } else if (!strcmp(key, "version")) {
        if (value && *value) {
            TRY(int_in(key, value, 0, INT64_MAX, &x));
            q->version = x;
        }
    } else if (!strcmp(key, "eval")) {
        if (!value || !*value || !strcmp(value, "1") || !strcmp(value, "true")) q->eval = true;
        else if (!strcmp(value, "0") || !strcmp(value, "false")) q->eval = false;
        else return tidal_fail(TIDAL_ERR_INVALID, "dashboard: parameter eval: '%.64s' is not 1, 0, true or false", value);
    } else if (!strcmp(key, "token")) {
        TRY(text(key, value, q->token));
    } else if (!strcmp(key, "_")) { /* a cache-buster some clients add */
    } else {
        return tidal_fail(TIDAL_ERR_INVALID,
                          "dashboard: unknown parameter '%.64s' (since, limit, last, reward_min, reward_max, worker, "
                          "version, eval, token)",
                          key);
    }
    return TIDAL_OK;
}

static int hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* s[0..n) URL-decoded into out (room for n + 1), NUL-terminated. */
static tidal_status url_decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') out[o++] = ' ';
        else if (s[i] == '%') {
            const int a = i + 2 < n ? hex(s[i + 1]) : -1, b = i + 2 < n ? hex(s[i + 2]) : -1;
            if (a < 0 || b < 0 || (a == 0 && b == 0)) /* %00 would cut the value short */
                return tidal_fail(TIDAL_ERR_INVALID, "dashboard: query: a bad %%-escape at byte %zu", i);
            out[o++] = (char)(a << 4 | b);
            i += 2;
        } else out[o++] = s[i];
    }
    out[o] = 0;
    return TIDAL_OK;
}

tidal_status dash_query_parse(const char *query, dash_query *q)
{
    dash_query_init(q);
    if (!query) return TIDAL_OK;
    const size_t len = strlen(query);
    char *buf = malloc(2 * len + 2);
    if (!buf) return tidal_fail(TIDAL_ERR_NOMEM, "dashboard: out of memory");
    tidal_status st = TIDAL_OK;
    const char *p = query;
    while (*p) {
        const char *amp = strchr(p, '&');
        const size_t n = amp ? (size_t)(amp - p) : strlen(p);
        if (n) {
            const char *eq = memchr(p, '=', n);
            const size_t kn = eq ? (size_t)(eq - p) : n;
            char *key = buf, *val = buf + kn + 1;
            TRY_GOTO(url_decode(p, kn, key));
            if (eq) TRY_GOTO(url_decode(eq + 1, n - kn - 1, val));
            TRY_GOTO(dash_query_set(q, key, eq ? val : NULL));
        }
        p += n + (amp ? 1 : 0);
    }
cleanup:
    free(buf);
    return st;
}

bool dash_query_valid_id(const char *id)
{
    const size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 255) return false;
    for (size_t i = 0; i < n; i++) {
        const char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '-'))
            return false;
    }
    return true;
}
