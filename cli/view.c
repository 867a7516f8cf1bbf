/* view.c - `tidal view RUN_DIR [--port N] [--bind ADDR]`: the dashboard over a
 * run directory, no bus (docs/dashboard.md). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "dashboard/dashboard.h"
#include "dashboard/rundir.h"

const char view_usage[] =
    "usage: tidal view RUN_DIR [--port N] [--bind ADDR]\n"
    "\n"
    "Serve the dashboard of run directory RUN_DIR (a finished run, or one still being written) at\n"
    "http://ADDR:N/ until Ctrl-C: its charts from metrics.jsonl, its samples from samples.jsonl,\n"
    "its spec and summary. Needs no bus. $TIDAL_DASHBOARD_TOKEN, when set, is asked of every request.\n"
    "  --port N     the port (default: any free port; the URL is printed)\n"
    "  --bind ADDR  the IPv4 address to listen on (default 127.0.0.1: this machine only)\n";

static volatile sig_atomic_t g_view_stop;

static void on_view_signal(int sig)
{
    (void)sig;
    g_view_stop = 1;
}

int view_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"port", required_argument, 0, 'p'}, {"bind", required_argument, 0, 'b'}, {0, 0, 0, 0}};
    int port = 0;
    const char *bind = NULL;
    optind = 1;
    opterr = 0;
    for (int c; (c = getopt_long(argc, argv, "", longopts, NULL)) != -1;) {
        if (c == 'p') {
            char *end;
            const long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < 0 || v > 65535) {
                fprintf(stderr, "tidal view: --port %s: want a port 0 .. 65535 (0: any free port)\n", optarg);
                return 2;
            }
            port = (int)v;
        } else if (c == 'b') {
            bind = optarg;
        } else {
            fprintf(stderr, "tidal view: unknown option '%s'\n%s", argv[optind - 1], view_usage);
            return 2;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "tidal view: which run directory?\n%s", view_usage);
        return 2;
    }
    const char *run_dir = argv[optind];
    if (dash_run_dir_check(run_dir) != TIDAL_OK) {
        fprintf(stderr, "tidal view: %s\n", tidal_errmsg());
        return 2;
    }
    const char *token = getenv("TIDAL_DASHBOARD_TOKEN");
    const dashboard_opts o = {.run_dir = run_dir, .bind = bind, .port = port, .token = token};
    dashboard *d = NULL;
    if (dashboard_start(&o, &d) != TIDAL_OK) {
        fprintf(stderr, "tidal view: %s\n", tidal_errmsg());
        return 2;
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_view_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("tidal view: http://%s:%d/%s (%s; Ctrl-C stops)\n", bind ? bind : "127.0.0.1", dashboard_port(d),
           token && *token ? "?token=..." : "", run_dir);
    fflush(stdout);
    while (!g_view_stop) pause();
    dashboard_stop(d);
    return 0;
}
