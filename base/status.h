/* status.h - the one status type every tidal call returns, and one-line logging.
 *
 * Every function that can fail returns a tidal_status. A code alone says what kind
 * of failure it was; the context (what failed, on which subject, stream, file:line)
 * lives in a per-thread message set by tidal_fail() at the point of failure and
 * extended by tidal_wrap() on the way up the stack, so a caller several layers up
 * can print "bus: publish tidal.j.traj: no responders: stream not found" with no
 * allocation on the error path. The message belongs to the thread and stays valid
 * until the next tidal_fail()/tidal_wrap()/tidal_clear() on that thread.
 */
#ifndef TIDAL_STATUS_H
#define TIDAL_STATUS_H

#include <stdint.h>

#include <stdarg.h>
#include <stddef.h>

typedef enum tidal_status {
    TIDAL_OK = 0,
    TIDAL_ERR_INVALID,    /* bad argument or bad input (config, message, file) */
    TIDAL_ERR_NOMEM,      /* allocation failed */
    TIDAL_ERR_IO,         /* file system or process error */
    TIDAL_ERR_TIMEOUT,    /* nothing arrived or was acknowledged in time */
    TIDAL_ERR_NOT_FOUND,  /* key, stream, consumer, blob or subject not there */
    TIDAL_ERR_CONFLICT,   /* compare-and-set lost, key already exists */
    TIDAL_ERR_DECODE,     /* bytes are not a valid message */
    TIDAL_ERR_CORRUPT,    /* checksum mismatch or missing piece */
    TIDAL_ERR_PERMISSION, /* authorization refused */
    TIDAL_ERR_BUS,        /* any other NATS / JetStream failure */
    TIDAL_ERR_UNAVAILABLE,/* feature or subcommand not available in this build */
    TIDAL_ERR_REMOTE,     /* the other side (an environment, a service) answered with an error */
    TIDAL_ERR_CANCELLED,  /* the caller asked for the work to stop (shutdown) */
    TIDAL_ERR__COUNT
} tidal_status;

/* The one way a failure travels up the stack (docs/architecture.md, "Conventions"):
 *   TRY(call);                    on failure, return the call's status at once;
 *   TRY_WRAP(call, "fmt", ...);   the same, with context prefixed to the message (tidal_wrap);
 *   TRY_GOTO(call);               in a function that owns something to release: on failure,
 *                                 the status goes into the function's `st` and control to
 *                                 its `cleanup:` label, which releases and returns st.
 * `call` is evaluated once. A caller that handles a failure itself (retries, counts and
 * drops, falls back) tests the status explicitly; nothing else does. */
#define TRY(call)                                 \
    do {                                          \
        tidal_status try_st_ = (call);            \
        if (try_st_ != TIDAL_OK) return try_st_;  \
    } while (0)
#define TRY_WRAP(call, ...)                                                  \
    do {                                                                     \
        tidal_status try_st_ = (call);                                       \
        if (try_st_ != TIDAL_OK) return tidal_wrap(try_st_, __VA_ARGS__);    \
    } while (0)
#define TRY_GOTO(call)                  \
    do {                                \
        st = (call);                    \
        if (st != TIDAL_OK) goto cleanup; \
    } while (0)

/* Short stable name of a code ("timeout", "corrupt", ...). Never NULL. */
const char *tidal_status_name(tidal_status s);

/* Record a new failure on this thread: the message becomes the printf-formatted
 * text, replacing any earlier one. Returns `code` so callers can write
 * `return tidal_fail(TIDAL_ERR_INVALID, "%s:%d: bad key", file, line);`. */
tidal_status tidal_fail(tidal_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Prefix the current message with more context ("bus: ensure stream X: " + old).
 * Returns `code` unchanged; a no-op when code is TIDAL_OK. */
tidal_status tidal_wrap(tidal_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* This thread's last failure message ("" when none). */
const char *tidal_errmsg(void);

/* Forget this thread's failure message. */
void tidal_clear(void);

/* ---- logging: one line per event, to stderr, with time and role ---- */
typedef enum { TIDAL_LOG_DEBUG = 0, TIDAL_LOG_INFO, TIDAL_LOG_WARN, TIDAL_LOG_ERROR } tidal_log_level;

/* Name shown on every line (the process role: "controller", "rollout-3").
 * The string is copied. */
void tidal_log_set_role(const char *role);
/* Lines below `level` are dropped. Default INFO; TIDAL_LOG=debug|info|warn|error overrides. */
void tidal_log_set_level(tidal_log_level level);
void tidal_log(tidal_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Clocks: monotonic milliseconds (for durations; fractions kept) and Unix
 * wall-clock milliseconds (for timestamps in messages). */
double tidal_clock_ms(void);
uint64_t tidal_unix_ms(void);

#endif
