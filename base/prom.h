/* prom.h - a role's numbers for Prometheus: a small registry of gauges and an
 * HTTP endpoint (libmicrohttpd) that serves them at /metrics in the text
 * exposition format (version 0.0.4).
 *
 * A role sets values as it learns them (prom_set: any thread); a scrape
 * reads a consistent snapshot. Names are made valid Prometheus names
 * ("env.exact" -> "env_exact"); every sample carries the labels the role was
 * started with (tidal_job="NAME", and worker="ID" for a worker: not "job",
 * which Prometheus sets to the scrape job's name) plus its own.
 * Values that are not finite are left out of a scrape rather than sent as
 * NaN, so a missing reward reads as absent, not as a number.
 * docs/metrics.md lists what each role exports. */
#ifndef TIDAL_BASE_PROM_H
#define TIDAL_BASE_PROM_H

#include "base/status.h"

typedef struct prom prom;

/* A registry serving on bind:port (bind NULL: 127.0.0.1; port 0: any free
 * port, prom_port says which), every sample labelled with `labels` (e.g.
 * `tidal_job="q"`; NULL: none). TIDAL_ERR_IO naming the address when it cannot
 * listen. *out belongs to the caller (prom_stop). */
tidal_status prom_start(const char *bind, int port, const char *labels, prom **out);

/* The port it listens on. */
int prom_port(const prom *p);

/* Set gauge `name` (with extra labels `labels`, e.g. `fate="stale"`, or NULL)
 * to v. The first call for a name may give its help text (help NULL: none).
 * Never fails: out of memory drops the sample. NULL p is a no-op. */
void prom_set(prom *p, const char *name, const char *labels, const char *help, double v);

/* The exposition text of everything set so far (malloc'd; NULL when out of
 * memory). What /metrics answers. */
char *prom_text(prom *p);

/* Stop serving and free. NULL is a no-op. */
void prom_stop(prom *p);

/* name made a valid metric name into out (cap bytes): [a-zA-Z_:][a-zA-Z0-9_:]*,
 * anything else becomes '_'. */
void prom_name(const char *name, char *out, size_t cap);

#endif
