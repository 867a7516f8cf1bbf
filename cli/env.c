/* env.c - `tidal env`: built-in environments for people and processes.
 *
 *   tidal env list                       the built-in envs, one line each
 *   tidal env serve NAME --bus URL ...   host one on the bus until SIGINT / SIGTERM
 *                                        (then answer what was received, and exit 0)
 *   tidal env call NAME --bus URL ...    send one request and print the answer as JSON
 *                                        (a person's probe, and a client that knows only
 *                                        the protocol)
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "envs/client.h"
#include "envs/env.h"
#include "envs/service.h"
#include "bus/bus.h"

const char env_usage[] =
    "usage: tidal env list\n"
    "       tidal env serve NAME --bus URL [--concurrency N] [--config JSON] [--max-request-bytes N]\n"
    "                       [--dry-run]\n"
    "       tidal env call NAME --bus URL [--op reset|step] [--task JSON] [--action TEXT] [--turn N]\n"
    "                      [--timeout-ms N] [--retries N]\n"
    "\n"
    "list   the built-in environments, with a line on each\n"
    "serve  answer tidal.env.NAME requests (queue group tidal.env.NAME, so instances share the\n"
    "       load) with N handler threads (default 4); SIGINT or SIGTERM stops taking requests,\n"
    "       answers those received, and exits 0. --config is the env's JSON configuration.\n"
    "       --dry-run makes the env from NAME and --config, checks the flags, prints what it\n"
    "       would serve and exits 0, connecting to nothing.\n"
    "call   send one EnvRequest (default: --op step, --turn 1) and print the EnvResponse as one\n"
    "       JSON line; exit 1 when the env answers with an error or does not answer.\n"
    "--bus also takes $TIDAL_BUS. Credentials: --user/--password, --token, --creds FILE, TLS:\n"
    "--tls-ca/--tls-cert/--tls-key.\n";

static void usage(FILE *f) { fputs(env_usage, f); }

/* Connection flags shared by serve and call. */
typedef struct conn_flags {
    const char *url, *user, *password, *token, *creds, *tls_ca, *tls_cert, *tls_key;
} conn_flags;

static tidal_status connect_bus(const conn_flags *c, const char *conn_name, tidal_bus **out)
{
    const char *url = c->url ? c->url : getenv("TIDAL_BUS");
    if (!url || !*url) return tidal_fail(TIDAL_ERR_INVALID, "--bus URL (or $TIDAL_BUS) is required");
    bus_opts o = {.urls = url, .name = conn_name, .user = c->user, .password = c->password, .token = c->token,
                  .creds_file = c->creds, .tls_ca = c->tls_ca, .tls_cert = c->tls_cert, .tls_key = c->tls_key};
    return bus_connect(out, &o);
}

static int env_list(void)
{
    const env_class *const *all;
    size_t n = env_builtins(&all);
    for (size_t i = 0; i < n; i++) printf("%-10s %s\n", all[i]->name, all[i]->summary);
    return 0;
}

/* ---------------------------------------------------------------- serve */

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

static tidal_status serve_builtin(void *ctx, const env_call *c, env_result *out)
{
    return env_handle((const env *)ctx, c, out);
}

/* serve --dry-run, once the env was made: the bus URL must be known and each
 * file a flag names readable (their contents are the bus's to judge). */
static int env_serve_dry_run(const char *name, const conn_flags *cf, int concurrency)
{
    const char *url = cf->url ? cf->url : getenv("TIDAL_BUS");
    if (!url || !*url) {
        fprintf(stderr, "tidal env serve: --bus URL (or $TIDAL_BUS) is required\n");
        return 2;
    }
    const char *flag[] = {"creds", "tls-ca", "tls-cert", "tls-key"};
    const char *file[] = {cf->creds, cf->tls_ca, cf->tls_cert, cf->tls_key};
    for (int i = 0; i < 4; i++)
        if (file[i] && access(file[i], R_OK) != 0) {
            fprintf(stderr, "tidal env serve: --%s %s: %s\n", flag[i], file[i], strerror(errno));
            return 2;
        }
    printf("tidal env serve --dry-run: the arguments parse; it would start with\n");
    printf("  env: %s, serving tidal.env.%s with %d threads\n", name, name, concurrency > 0 ? concurrency : 4);
    printf("  bus: %s\n", url);
    printf("  credentials: %s\n", cf->creds ? cf->creds : cf->user ? "user and password" : cf->token ? "token" : "none");
    return 0;
}

static int env_serve(const char *name, const conn_flags *cf, int concurrency, const char *config,
                     size_t max_request, bool dry_run)
{
    env *e = NULL;
    tidal_bus *b = NULL;
    env_service *svc = NULL;
    tidal_status st = env_create(name, config, &e);
    if (st != TIDAL_OK) { /* an env that cannot be made from this name and config: a usage error */
        fprintf(stderr, "tidal env serve: %s\n", tidal_errmsg());
        return 2;
    }
    if (dry_run) {
        env_free(e);
        return env_serve_dry_run(name, cf, concurrency);
    }
    char conn_name[160];
    snprintf(conn_name, sizeof conn_name, "env-%s", name);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    TRY_GOTO(connect_bus(cf, conn_name, &b));
    env_service_opts so = {.concurrency = concurrency, .max_request_bytes = max_request};
    TRY_GOTO(env_service_start(b, name, serve_builtin, e, &so, &svc));
    tidal_log(TIDAL_LOG_INFO, "env %s: serving tidal.env.%s with %d threads", name, name,
              concurrency > 0 ? concurrency : 4);
    while (!stop_signal) {
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    tidal_log(TIDAL_LOG_INFO, "env %s: signal %d: draining", name, (int)stop_signal);
    env_service_stop(svc, 10000);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal env serve: %s\n", tidal_errmsg());
    bus_close(b);
    env_free(e);
    return st == TIDAL_OK ? 0 : st == TIDAL_ERR_INVALID ? 2 : 1;
}

/* ---------------------------------------------------------------- call */

static int env_call_once(const char *name, const conn_flags *cf, const env_call *c, const env_client_opts *co)
{
    tidal_bus *b = NULL;
    env_client *cl = NULL;
    tidal_status st = TIDAL_OK;
    env_result r = {0};
    TRY_GOTO(connect_bus(cf, "tidal-env-call", &b));
    TRY_GOTO(env_client_remote(b, name, co, &cl));
    TRY_GOTO(env_client_call(cl, c, &r));
    json_t *metrics = json_object();
    for (int i = 0; i < r.n_metrics; i++) json_object_set_new(metrics, r.metrics[i].name, json_real(r.metrics[i].value));
    json_t *o = json_pack("{s:s, s:f, s:b, s:o}", "observation", r.observation ? r.observation : "", "reward",
                          r.reward, "done", r.done, "metrics", metrics);
    char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
    if (line) printf("%s\n", line);
    free(line);
    json_decref(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal env call: %s\n", tidal_errmsg());
    env_result_clear(&r);
    env_client_free(cl);
    bus_close(b);
    return st == TIDAL_OK ? 0 : st == TIDAL_ERR_INVALID ? 2 : 1;
}

/* ---------------------------------------------------------------- main */

int env_main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "list")) return argc == 2 ? env_list() : (usage(stderr), 2);
    if (strcmp(sub, "serve") != 0 && strcmp(sub, "call") != 0) {
        fprintf(stderr, "tidal env: unknown subcommand '%s'\n", sub);
        usage(stderr);
        return 2;
    }
    if (argc < 3 || argv[2][0] == '-') {
        fprintf(stderr, "tidal env %s: the environment's NAME comes first\n", sub);
        usage(stderr);
        return 2;
    }
    const char *name = argv[2];
    conn_flags cf = {0};
    int concurrency = 0, turn = -1;
    long long max_request = 0;
    const char *config = NULL, *task = NULL, *action = NULL, *op = "step";
    bool dry_run = false;
    env_client_opts co = {.retries = -1};
    static const struct option opts[] = {
        {"bus", required_argument, 0, 'b'},         {"user", required_argument, 0, 'u'},
        {"password", required_argument, 0, 'p'},    {"token", required_argument, 0, 'k'},
        {"creds", required_argument, 0, 'c'},       {"tls-ca", required_argument, 0, 'A'},
        {"tls-cert", required_argument, 0, 'C'},    {"tls-key", required_argument, 0, 'K'},
        {"concurrency", required_argument, 0, 'n'}, {"config", required_argument, 0, 'g'},
        {"max-request-bytes", required_argument, 0, 'm'},
        {"op", required_argument, 0, 'o'},          {"task", required_argument, 0, 't'},
        {"action", required_argument, 0, 'a'},      {"turn", required_argument, 0, 'T'},
        {"timeout-ms", required_argument, 0, 'w'},  {"retries", required_argument, 0, 'r'},
        {"dry-run", no_argument, 0, 'D'},           {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 3;
    for (int ch; (ch = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (ch) {
        case 'b': cf.url = optarg; break;
        case 'u': cf.user = optarg; break;
        case 'p': cf.password = optarg; break;
        case 'k': cf.token = optarg; break;
        case 'c': cf.creds = optarg; break;
        case 'A': cf.tls_ca = optarg; break;
        case 'C': cf.tls_cert = optarg; break;
        case 'K': cf.tls_key = optarg; break;
        case 'n': concurrency = atoi(optarg); break;
        case 'g': config = optarg; break;
        case 'm': max_request = atoll(optarg); break;
        case 'o': op = optarg; break;
        case 't': task = optarg; break;
        case 'a': action = optarg; break;
        case 'T': turn = atoi(optarg); break;
        case 'w': co.timeout_ms = atoi(optarg); break;
        case 'r': co.retries = atoi(optarg); break;
        case 'D': dry_run = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || concurrency < 0 || concurrency > 1024 || max_request < 0 || co.timeout_ms < 0) {
        fprintf(stderr, "tidal env %s: bad arguments\n", sub);
        usage(stderr);
        return 2;
    }
    if (!strcmp(sub, "serve")) return env_serve(name, &cf, concurrency, config, (size_t)max_request, dry_run);
    if (dry_run) {
        fprintf(stderr, "tidal env call: --dry-run is for tidal env serve\n");
        return 2;
    }
    const bool reset = !strcmp(op, "reset");
    if (!reset && strcmp(op, "step") != 0) {
        fprintf(stderr, "tidal env call: --op %s (reset or step)\n", op);
        return 2;
    }
    env_call c = {.op = reset ? ENV_OP_RESET : ENV_OP_STEP,
                  .task_json = task,
                  .action = action,
                  .turn = turn >= 0 ? (uint32_t)turn : reset ? 0 : 1,
                  .session = "tidal-env-call"};
    return env_call_once(name, &cf, &c, &co);
}
