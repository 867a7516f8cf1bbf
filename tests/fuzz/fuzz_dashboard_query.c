/* fuzz_dashboard_query.c - libFuzzer target for the dashboard's request
 * parameters (dashboard/query.c): a query string is whatever a browser, a
 * script or a stranger on the port sends.
 *
 * The input is the query string (NUL-cut). Checked on every input:
 * dash_query_parse returns OK or TIDAL_ERR_INVALID, never a crash, a leak or
 * another status; an error's message starts "dashboard:"; on OK every field
 * is in its range (limit 1 .. 1000, last 1 .. 1000, since >= -1, version >= -1,
 * the bounds not NaN, the texts NUL-terminated within their size). The input
 * is also tried as a sample id: dash_query_valid_id accepts only
 * [A-Za-z0-9._:-]{1,255}.
 *
 * Seeds: tests/fuzz/seeds/fuzz_dashboard_query/ (the page's own requests, escapes, bad numbers).
 * Run by hand: fuzz_dashboard_query -max_total_time=60 CORPUS_DIR tests/fuzz/seeds/fuzz_dashboard_query
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dashboard/query.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) return 0;
    memcpy(s, data, size);
    s[size] = 0;
    dash_query q;
    const tidal_status st = dash_query_parse(s, &q);
    if (st == TIDAL_OK) {
        if (q.limit < 1 || q.limit > DASH_QUERY_LIMIT_MAX || q.last < 1 || q.last > 1000) abort();
        if (q.since < -1 || q.version < -1 || isnan(q.reward_min) || isnan(q.reward_max)) abort();
        if (!memchr(q.worker, 0, sizeof q.worker) || !memchr(q.token, 0, sizeof q.token)) abort();
    } else if (st != TIDAL_ERR_INVALID || strncmp(tidal_errmsg(), "dashboard:", 10) != 0) {
        abort();
    }
    const bool ok = dash_query_valid_id(s);
    const size_t n = strlen(s);
    if (ok != (n >= 1 && n <= 255 && strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-") == n))
        abort();
    free(s);
    return 0;
}
