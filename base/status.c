/* status.c - per-thread error context and one-line logging (see status.h). */
#include "status.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define ERRMSG_CAP 1024

static _Thread_local char errmsg[ERRMSG_CAP];

static const char *const status_names[TIDAL_ERR__COUNT] = {
    [TIDAL_OK] = "ok",
    [TIDAL_ERR_INVALID] = "invalid",
    [TIDAL_ERR_NOMEM] = "out of memory",
    [TIDAL_ERR_IO] = "i/o error",
    [TIDAL_ERR_TIMEOUT] = "timeout",
    [TIDAL_ERR_NOT_FOUND] = "not found",
    [TIDAL_ERR_CONFLICT] = "conflict",
    [TIDAL_ERR_DECODE] = "decode error",
    [TIDAL_ERR_CORRUPT] = "corrupt",
    [TIDAL_ERR_PERMISSION] = "permission denied",
    [TIDAL_ERR_BUS] = "bus error",
    [TIDAL_ERR_UNAVAILABLE] = "unavailable",
    [TIDAL_ERR_REMOTE] = "remote",
    [TIDAL_ERR_CANCELLED] = "cancelled",
};

const char *tidal_status_name(tidal_status s)
{
    if ((int)s < 0 || s >= TIDAL_ERR__COUNT) return "unknown status";
    return status_names[s];
}

tidal_status tidal_fail(tidal_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errmsg, sizeof errmsg, fmt, ap);
    va_end(ap);
    return code;
}

tidal_status tidal_wrap(tidal_status code, const char *fmt, ...)
{
    if (code == TIDAL_OK) return code;
    char prefix[ERRMSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    if (n < 0) return code;
    char old[ERRMSG_CAP];
    memcpy(old, errmsg, sizeof old);
    if (old[0] == '\0') snprintf(old, sizeof old, "%s", tidal_status_name(code));
    char joined[2 * ERRMSG_CAP + 2];
    snprintf(joined, sizeof joined, "%s: %s", prefix, old);
    memcpy(errmsg, joined, sizeof errmsg - 1);
    errmsg[sizeof errmsg - 1] = '\0';
    return code;
}

const char *tidal_errmsg(void) { return errmsg; }

void tidal_clear(void) { errmsg[0] = '\0'; }

/* ---- logging ---- */

static char log_role[64] = "tidal";
static int log_level = -1; /* -1: not yet read from the environment */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void tidal_log_set_role(const char *role)
{
    pthread_mutex_lock(&log_lock);
    snprintf(log_role, sizeof log_role, "%s", role ? role : "tidal");
    pthread_mutex_unlock(&log_lock);
}

void tidal_log_set_level(tidal_log_level level) { log_level = (int)level; }

static int level_from_env(void)
{
    const char *e = getenv("TIDAL_LOG");
    if (!e) return TIDAL_LOG_INFO;
    if (!strcasecmp(e, "debug")) return TIDAL_LOG_DEBUG;
    if (!strcasecmp(e, "warn")) return TIDAL_LOG_WARN;
    if (!strcasecmp(e, "error")) return TIDAL_LOG_ERROR;
    return TIDAL_LOG_INFO;
}

void tidal_log(tidal_log_level level, const char *fmt, ...)
{
    if (log_level < 0) log_level = level_from_env();
    if ((int)level < log_level) return;
    static const char *const names[] = {"debug", "info", "warn", "error"};
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    pthread_mutex_lock(&log_lock);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, log_role, names[level]);
    pthread_mutex_unlock(&log_lock);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && n < (int)sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    /* one fputs per line so concurrent threads never interleave within a line */
    size_t len = strlen(line);
    if (len + 1 < sizeof line) { line[len] = '\n'; line[len + 1] = '\0'; }
    fputs(line, stderr);
}

double tidal_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

uint64_t tidal_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
