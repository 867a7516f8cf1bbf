/* bus_internal.h - what bus.c and blob.c share; not part of the public API. */
#ifndef TIDAL_BUS_INTERNAL_H
#define TIDAL_BUS_INTERNAL_H

#include <pthread.h>

#include "bus/bus.h"

struct tidal_bus {
    natsConnection *nc;
    jsCtx *js;
    int js_timeout_ms;
    int replicas;              /* of every stream and bucket this connection creates (bus_opts.replicas) */
    pthread_mutex_t lock;      /* guards the fields below */
    uint64_t async_failed;     /* async publishes that failed since the last wait */
    char async_first_err[256];
    char perm_err[512];        /* last permission violation not yet reported */
};

/* Map a nats.c failure to a tidal status, recording "<context>: <nats text>".
 * `jerr` is the JetStream error code when there is one (0 otherwise). */
tidal_status bus_nats_fail(natsStatus s, jsErrCode jerr, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Milliseconds on the monotonic clock. */
int64_t bus_now_ms(void);

/* Wait until *done is set (under mu, signalled on cv: a subscription's
 * on-complete callback), at most timeout_s seconds; returns *done. */
bool bus_wait_done(pthread_mutex_t *mu, pthread_cond_t *cv, const bool *done, int timeout_s);

#endif
