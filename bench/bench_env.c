/* bench_env.c - `tidal bench env`: environment requests per second over the
 * bus against the same environment called in-process, in the same run.
 *
 * The environment is the built-in `match` (an exact compare: next to no work,
 * so the bus path's cost is what is measured). In-process: one thread calling
 * env_handle. Over the bus: a private nats-server on loopback, an env service
 * (envs/service.h, --concurrency handler threads) and --callers threads, each
 * sending its requests one after the other with env_client_call (encode,
 * request/reply, decode, validate), all in this process. Every answer is
 * checked (reward 1). ratio = bus requests/s / in-process requests/s; the
 * bus path's latency percentiles are reported too.
 */
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench.h"
#include "envs/client.h"
#include "envs/service.h"
#include "bus/server.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: tidal bench env [--requests N] [--callers C] [--concurrency K] [--json]\n"
               "  Requests/s of the built-in `match` env over the bus (a private nats-server, an\n"
               "  env service with K handler threads, C calling threads; default N 20000, C 8, K 4)\n"
               "  against the same env called in-process. ratio = bus / in-process.\n");
}

static const env_call CALL = {.op = ENV_OP_STEP,
                              .task_json = "{\"answer\": \"Paris\"}",
                              .action = "Paris",
                              .turn = 1,
                              .session = "bench"};

static tidal_status serve(void *ctx, const env_call *c, env_result *out) { return env_handle(ctx, c, out); }

typedef struct caller {
    env_client *c;
    int n;
    double *lat_ms; /* [n] */
    tidal_status st;
} caller;

static void *run_caller(void *arg)
{
    caller *k = arg;
    tidal_status st = TIDAL_OK;
    env_result r = {0};
    for (int i = 0; i < k->n; i++) {
        double t0 = bench_now_s();
        TRY_GOTO(env_client_call(k->c, &CALL, &r));
        k->lat_ms[i] = (bench_now_s() - t0) * 1e3;
        if (r.reward != 1.0) {
            st = tidal_fail(TIDAL_ERR_INVALID, "bench env: reward %g, want 1", r.reward);
            goto cleanup;
        }
        env_result_clear(&r);
    }
cleanup:
    env_result_clear(&r);
    k->st = st;
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int bench_env_main(int argc, char **argv)
{
    int requests = 20000, callers = 8, concurrency = 4, as_json = 0;
    static const struct option opts[] = {{"requests", required_argument, 0, 'n'},
                                         {"callers", required_argument, 0, 'c'},
                                         {"concurrency", required_argument, 0, 'k'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int ch; (ch = getopt_long(argc, argv, "", opts, NULL)) != -1;) {
        switch (ch) {
        case 'n': requests = atoi(optarg); break;
        case 'c': callers = atoi(optarg); break;
        case 'k': concurrency = atoi(optarg); break;
        case 'j': as_json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || requests < callers || callers < 1 || callers > 256 || concurrency < 1 || concurrency > 256) {
        usage(stderr);
        return 2;
    }
    env *e = NULL;
    tidal_server *srv = NULL;
    tidal_bus *b = NULL;
    env_service *svc = NULL;
    env_client *cl = NULL;
    caller *ks = calloc((size_t)callers, sizeof *ks);
    double *lat = calloc((size_t)requests, sizeof *lat);
    pthread_t *th = calloc((size_t)callers, sizeof *th);
    env_result r = {0};
    tidal_status st = TIDAL_OK;
    if (!ks || !lat || !th) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bench env: out of memory");
        goto cleanup;
    }
    TRY_GOTO(env_create("match", NULL, &e));

    /* in-process: one thread, the same call */
    const int local_n = requests * 10;
    double t0 = bench_now_s();
    for (int i = 0; i < local_n; i++) {
        TRY_GOTO(env_handle(e, &CALL, &r));
        if (r.reward != 1.0) {
            st = tidal_fail(TIDAL_ERR_INVALID, "bench env: reward %g", r.reward);
            goto cleanup;
        }
        env_result_clear(&r);
    }
    const double local_rps = local_n / (bench_now_s() - t0);
    fprintf(stderr, "in-process: %.0f requests/s\n", local_rps);

    /* over the bus */
    TRY_GOTO(tidal_server_start(&srv, &(tidal_server_opts){0}));
    bus_opts bo = {.name = "bench-env", .urls = tidal_server_url(srv)};
    TRY_GOTO(bus_connect(&b, &bo));
    env_service_opts so = {.concurrency = concurrency};
    TRY_GOTO(env_service_start(b, "match", serve, e, &so, &svc));
    env_client_opts co = {.timeout_ms = 10000, .retries = 0};
    TRY_GOTO(env_client_remote(b, "match", &co, &cl));
    const int per = requests / callers;
    for (int i = 0; i < callers; i++) ks[i] = (caller){.c = cl, .n = per, .lat_ms = lat + (size_t)i * per};
    t0 = bench_now_s();
    for (int i = 0; i < callers; i++) pthread_create(&th[i], NULL, run_caller, &ks[i]);
    for (int i = 0; i < callers; i++) pthread_join(th[i], NULL);
    const double secs = bench_now_s() - t0, bus_rps = (double)per * callers / secs;
    for (int i = 0; i < callers; i++) TRY_GOTO(ks[i].st); /* the first caller's failure */
    const int total = per * callers;
    qsort(lat, (size_t)total, sizeof *lat, cmp_double);
    const double p50 = lat[total / 2], p99 = lat[(size_t)(total * 0.99)];
    const double ratio = bus_rps / local_rps;
    fprintf(stderr, "bus: %.0f requests/s, latency p50 %.3f ms, p99 %.3f ms\n", bus_rps, p50, p99);
    if (!as_json)
        printf("bench env: `match`, %d requests over the bus (%d callers, %d handler threads)\n"
               "  in-process   %10.0f requests/s\n"
               "  over the bus %10.0f requests/s   latency p50 %.3f ms  p99 %.3f ms\n"
               "  ratio bus / in-process %.5f\n",
               total, callers, concurrency, local_rps, bus_rps, p50, p99, ratio);
    bench_print_json(json_pack("{s:s, s:s, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f}", "bench", "env", "peer",
                               "the same env (match) called in-process", "requests", total, "callers", callers,
                               "concurrency", concurrency, "in_process_rps", local_rps, "bus_rps", bus_rps,
                               "bus_p50_ms", p50, "bus_p99_ms", p99, "ratio", ratio));
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench env: %s\n", tidal_errmsg());
    env_result_clear(&r);
    env_client_free(cl);
    env_service_stop(svc, 5000);
    bus_close(b);
    tidal_server_stop(srv);
    env_free(e);
    free(ks);
    free(lat);
    free(th);
    return st == TIDAL_OK ? 0 : 1;
}
