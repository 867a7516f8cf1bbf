/* server.h - a private nats-server run as a child process.
 *
 * `tidal run` (the embedded default), `tidal bench` and the tests all need a real
 * NATS server with JetStream on loopback. This module starts one on a random port
 * (`-p -1 --ports_file_dir`), with its JetStream store in a directory it owns or
 * one the caller names, waits until it answers, and can kill -9 and restart it on
 * the same port and store (the failure tests). The child dies with its parent
 * (PR_SET_PDEATHSIG), so a crashed test never leaves a server behind.
 */
#ifndef TIDAL_SERVER_H
#define TIDAL_SERVER_H

#include "base/status.h"

typedef struct tidal_server tidal_server;

typedef struct tidal_server_opts {
    const char *binary;      /* NULL: $TIDAL_NATS_SERVER, else "nats-server" on PATH */
    const char *store_dir;   /* JetStream store; NULL: a temp dir removed by tidal_server_stop */
    const char *config_file; /* optional nats-server config (auth, TLS); NULL: tidal's default */
    const char *log_file;    /* NULL: <work dir>/nats-server.log */
    int port;                /* 0: a random free port */
    /* the IPv4 address it listens on, is probed at and its URL names; NULL: 127.0.0.1
     * (another: a node in its own network namespace, reached through a bridge) */
    const char *host;
    int start_timeout_ms;    /* 0: 10000 */
    /* more command-line options, NULL-terminated (at most 16; they override the config file's
     * settings, e.g. a cluster node's --server_name, --cluster and --routes); NULL: none */
    const char *const *args;
} tidal_server_opts;

/* Start a server and wait until it accepts a client and reports JetStream.
 * With config_file NULL the server gets tidal's defaults (max_payload 8 MiB so
 * 4 MiB blob chunks fit). On success *out owns the child; stop it with
 * tidal_server_stop. On failure the child is reaped and the error says why,
 * with the tail of the server's log. */
tidal_status tidal_server_start(tidal_server **out, const tidal_server_opts *opts);

/* "nats://HOST:PORT" (HOST: opts.host, 127.0.0.1 by default); valid until tidal_server_stop. */
const char *tidal_server_url(const tidal_server *s);
int tidal_server_port(const tidal_server *s);
/* The running child's pid (what `tidal bench bus` reads CPU time from), or -1. */
int tidal_server_pid(const tidal_server *s);
const char *tidal_server_store_dir(const tidal_server *s);

/* SIGKILL the server and reap it (no clean shutdown: the crash tests). */
tidal_status tidal_server_kill(tidal_server *s);

/* Start it again (after kill) on the same port and store, and wait until it answers. */
tidal_status tidal_server_restart(tidal_server *s);

/* Stop the server (SIGTERM, then SIGKILL after 5 s), remove the temp dirs it
 * owns and free s. NULL is a no-op. */
void tidal_server_stop(tidal_server *s);

#endif
