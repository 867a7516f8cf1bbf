/* query.h - the dashboard's request parameters (docs/dashboard.md, "API").
 *
 * Every parameter an API request may carry, parsed and checked in one place
 * so the HTTP side never sees a half-read value: a number that does not
 * parse, a value out of range or an unknown name is refused with
 * TIDAL_ERR_INVALID naming the parameter (the dashboard answers 400 with
 * that message). Parameters a request does not use are parsed and ignored.
 */
#ifndef TIDAL_DASHBOARD_QUERY_H
#define TIDAL_DASHBOARD_QUERY_H

#include <stdbool.h>
#include <stdint.h>

#include "base/status.h"

#define DASH_QUERY_TEXT_MAX 128
#define DASH_QUERY_LIMIT_MAX 1000

typedef struct dash_query {
    int64_t since;          /* metrics: rows with step > since (-1: all) */
    int limit;              /* samples: groups at most (1 .. DASH_QUERY_LIMIT_MAX; default 20) */
    int last;               /* staleness: the last `last` steps' histograms summed (1 .. 1000; default 20) */
    double reward_min, reward_max; /* samples: only samples whose reward is in [min, max] (default: all) */
    char worker[DASH_QUERY_TEXT_MAX]; /* samples: only this worker's ("" = any) */
    int64_t version;        /* samples: only samples holding tokens of this policy version (-1: any) */
    bool eval;              /* samples: the evaluation samples instead of the trained ones */
    char token[DASH_QUERY_TEXT_MAX]; /* the access token, when given as ?token= */
} dash_query;

/* q to its defaults. */
void dash_query_init(dash_query *q);

/* Set parameter `key` to `value` (already URL-decoded; NULL: no value, as in
 * "?eval"). TIDAL_ERR_INVALID naming the parameter when the name is unknown
 * or the value is not what it must be. */
tidal_status dash_query_set(dash_query *q, const char *key, const char *value);

/* Parse a whole query string ("a=1&b=x%20y", without the '?'; NULL or ""
 * is none) into q (from its defaults): split at '&', '+' and %XX decoded,
 * each pair through dash_query_set. TIDAL_ERR_INVALID on the first bad pair
 * or a bad %-escape. */
tidal_status dash_query_parse(const char *query, dash_query *q);

/* A sample id as the URL carries it (/api/sample/ID): 1 .. 255 bytes of
 * [A-Za-z0-9._:-]. What trajectory ids are made of; anything else cannot
 * name one. */
bool dash_query_valid_id(const char *id);

#endif
