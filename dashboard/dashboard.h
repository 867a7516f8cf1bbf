/* dashboard.h - the run's dashboard: one web page and its JSON API, served
 * over HTTP (libmicrohttpd) by `tidal controller --dashboard PORT` (and so
 * `tidal run --dashboard PORT`) while a job runs, and by `tidal view RUN`
 * over a finished run directory (docs/dashboard.md).
 *
 * The page (dashboard/page.html, embedded at build time: no build step, no
 * CDN, it works offline) polls the API: the step metrics, the staleness
 * histogram, the kept samples and the spec and summary come from the run
 * directory's files through dashboard/rundir.h - the same code for a live
 * run and a finished one; a live dashboard adds the workers, read from the
 * job's heartbeat bucket on the bus. Off unless asked; it listens on
 * 127.0.0.1 unless given another address, and with a token every request
 * must carry it (`Authorization: Bearer T`, or `?token=T`, which the page
 * passes on from its own URL) or is refused with 401.
 */
#ifndef TIDAL_DASHBOARD_DASHBOARD_H
#define TIDAL_DASHBOARD_DASHBOARD_H

#include "base/status.h"
#include "bus/bus.h"

typedef struct dashboard dashboard;

typedef struct dashboard_opts {
    const char *run_dir;  /* the run directory whose files it serves (required) */
    const char *bind;     /* IPv4 address to listen on; NULL or "": 127.0.0.1 */
    int port;             /* 0: any free port (dashboard_port says which) */
    const char *token;    /* NULL or "": no token asked */
    const bus_opts *bus;  /* live: the bus to read workers from (NULL: `tidal view`, no workers) */
    const char *job;      /* the job's name, with bus */
} dashboard_opts;

/* Start serving o->run_dir. TIDAL_ERR_INVALID for a bad address or port,
 * TIDAL_ERR_IO naming the address when it cannot listen; a bus that cannot be
 * reached is not a failure (the workers table says so). *out belongs to the
 * caller (dashboard_stop). */
tidal_status dashboard_start(const dashboard_opts *o, dashboard **out);

/* The port it listens on. */
int dashboard_port(const dashboard *d);

/* Stop serving and free; requests in progress finish first. NULL is a no-op. */
void dashboard_stop(dashboard *d);

#endif
