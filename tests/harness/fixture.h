/* fixture.h - a real nats-server and a connected bus for an integration test.
 *
 * fixture_start() starts a private server (bus/server.h) and connects to it;
 * fixture_stop() closes and removes everything. Header-only: each test binary
 * includes it once.
 */
#ifndef TIDAL_TESTS_FIXTURE_H
#define TIDAL_TESTS_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bus/bus.h"
#include "bus/server.h"

typedef struct fixture {
    tidal_server *srv;
    tidal_bus *bus;
} fixture;

/* Start a server (config_file may be NULL) and, when `connect` is set, connect
 * to it. Exits the test binary with a message when that fails: nothing else
 * in the file can run without it. */
static inline void fixture_start_cfg(fixture *f, const char *config_file, int connect)
{
    tidal_server_opts so = {.config_file = config_file};
    f->bus = NULL;
    if (tidal_server_start(&f->srv, &so) != TIDAL_OK) {
        fprintf(stderr, "fixture: cannot start nats-server: %s\n", tidal_errmsg());
        exit(1);
    }
    if (!connect) return;
    bus_opts bo = {.urls = tidal_server_url(f->srv), .name = "test", .js_timeout_ms = 5000};
    if (bus_connect(&f->bus, &bo) != TIDAL_OK) {
        fprintf(stderr, "fixture: cannot connect to %s: %s\n", tidal_server_url(f->srv), tidal_errmsg());
        tidal_server_stop(f->srv);
        exit(1);
    }
}

static inline void fixture_start(fixture *f) { fixture_start_cfg(f, NULL, 1); }

static inline void fixture_stop(fixture *f)
{
    bus_close(f->bus);
    tidal_server_stop(f->srv);
    f->bus = NULL;
    f->srv = NULL;
}

static inline void sleep_ms(int ms) { usleep((useconds_t)ms * 1000); }

#endif
