/* bench_bus.c - `tidal bench bus`: the trajectory path over JetStream against
 * raw core NATS on the same server in the same run.
 *
 * tidal path: trajectory-sized protobuf messages (a real Trajectory with 1,024
 * completion tokens and their logprobs, ~8 KB) published with Nats-Msg-Id to
 * the trajectory stream of job "tidal-bench-bus" (pipelined publishes, acks
 * awaited) while that job's trainer consumer fetches and acks them - what
 * rollout workers and the trainer do.
 * peer: the same bytes published on a core subject to one plain subscriber
 * (no storage, no acks). Both clocks run from the first publish to the last
 * message consumed. ratio = tidal msgs/s / peer msgs/s.
 * With a private server the bench also reads the CPU time each path costs
 * (this process's and nats-server's), per message: cpu_ratio = peer CPU per
 * message / tidal CPU per message is what the ratio is once every core is busy,
 * which tells a machine-bound result from a latency-bound one.
 */
#include <getopt.h>
#include <stdbool.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bus/bus.h"
#include "proto/codec.h"
#include "job/names.h"
#include "bus/server.h"

#define BENCH_JOB "tidal-bench-bus" /* a name no real job should have: its bus objects are removed after */
#define BENCH_SUBJECT_RAW "tidal.bench.raw"
#define FETCH_BATCH 256
#define BENCH_MAX_PUBLISHERS 16

typedef struct {
    double seconds;
    double msgs_per_s;
    double mb_per_s;
    long received;
    double client_cpu_s; /* this process, all threads, over the timed window */
    double server_cpu_s; /* the private nats-server over the same window; -1: not ours (--bus) */
} bench_result;

static int server_pid = -1;          /* the private server's, for its CPU time */
static job_names bench_names;        /* the bench job's streams and subjects (set once in main) */
static int traj_per_msg = 1;          /* --group */

typedef struct {
    tidal_bus *bus;
    bus_sub *sub;
    long want;
    long got;
    tidal_status status;
    char err[512];
} consumer_ctx;


/* A realistic trajectory: 256 prompt tokens, 1,024 completion tokens from a
 * 150k vocabulary, behaviour logprobs, one version run, a full loss mask. */
static tidal_status make_trajectory(int index, int group_size, void **buf, size_t *len)
{
    enum { PROMPT = 256, COMPLETION = 1024 };
    static uint32_t prompt_ids[PROMPT], completion_ids[COMPLETION];
    static float logprobs[COMPLETION];
    static protobuf_c_boolean mask[COMPLETION];
    uint64_t version = 7;
    uint32_t run = COMPLETION;
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < COMPLETION; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        completion_ids[i] = (uint32_t)(x % 151643);
        logprobs[i] = -(float)((x >> 20) % 10000) / 1000.0f;
        mask[i] = 1;
        if (i < PROMPT) prompt_ids[i] = (uint32_t)((x >> 32) % 151643);
    }
    Tidal__V1__Trajectory t = TIDAL__V1__TRAJECTORY__INIT;
    t.schema_version = CODEC_SCHEMA_VERSION;
    char id[64];
    snprintf(id, sizeof id, "bench-0000000000.s%d", index);
    t.trajectory_id = id;
    t.prompt_id = "bench-0000000000";
    t.group_id = "bench-0000000000";
    t.sample_index = (uint32_t)index;
    t.group_size = (uint32_t)group_size;
    t.worker_id = "bench-worker";
    t.n_prompt_token_ids = PROMPT;
    t.prompt_token_ids = prompt_ids;
    t.n_completion_token_ids = COMPLETION;
    t.completion_token_ids = completion_ids;
    t.n_logprobs = COMPLETION;
    t.logprobs = logprobs;
    t.n_version_values = 1;
    t.version_values = &version;
    t.n_version_runs = 1;
    t.version_runs = &run;
    t.n_loss_mask = COMPLETION;
    t.loss_mask = mask;
    t.reward = 1.0;
    t.turns = 1;
    t.min_version = 5;
    t.temperature = 1.0;
    t.finish_reason = TIDAL__V1__FINISH_REASON__FINISH_REASON_STOP;
    t.status = TIDAL__V1__TRAJECTORY_STATUS__TRAJECTORY_STATUS_OK;
    TRY(codec_encode(&t.base, buf, len));
    /* the payload must be what the trainer accepts */
    Tidal__V1__Trajectory *back = NULL;
    tidal_status st = codec_decode_trajectory(*buf, *len, &back);
    if (back) tidal__v1__trajectory__free_unpacked(back, NULL);
    return st;
}

/* The message a rollout worker publishes for a prompt of G samples: G
 * trajectories framed as one TrajectoryGroup (codec_frame_group_parts, as the
 * worker does), checked to be what the trainer accepts. With G = 1 and
 * --single, a bare Trajectory (the former contract) instead. */
static tidal_status make_payload(int g, bool single, void **buf, size_t *len)
{
    if (single) return make_trajectory(0, 1, buf, len);
    codec_encoded enc[64] = {{0}};
    void *data[64] = {0};
    codec_parts parts = {0};
    Tidal__V1__TrajectoryGroup *back = NULL;
    tidal_status st = TIDAL_OK;
    for (int i = 0; i < g; i++) {
        TRY_GOTO(make_trajectory(i, g, &data[i], &enc[i].len));
        enc[i].data = data[i];
    }
    Tidal__V1__TrajectoryGroup head = TIDAL__V1__TRAJECTORY_GROUP__INIT;
    head.schema_version = CODEC_SCHEMA_VERSION;
    head.group_id = "bench-0000000000", head.prompt_id = "bench-0000000000", head.worker_id = "bench-worker";
    head.attempt = 1, head.group_size = (uint32_t)g, head.sample_count = (uint32_t)g;
    TRY_GOTO(codec_frame_group_parts(&head, enc, (size_t)g, SIZE_MAX, &parts));
    TRY_GOTO(codec_decode_trajectory_group(parts.buf[0], parts.len[0], &back));
    *buf = parts.buf[0], *len = parts.len[0];
    parts.buf[0] = NULL;
cleanup:
    if (back) tidal__v1__trajectory_group__free_unpacked(back, NULL);
    codec_parts_free(&parts);
    for (int i = 0; i < g; i++) free(data[i]);
    return st;
}

static void *js_consume(void *arg)
{
    consumer_ctx *c = arg;
    bus_msg *msgs[FETCH_BATCH];
    int idle = 0;
    while (c->got < c->want) {
        int n = 0;
        tidal_status s = bus_fetch(c->sub, FETCH_BATCH, 1000, msgs, &n);
        if (s == TIDAL_ERR_TIMEOUT && ++idle < 10) continue; /* up to 10 s without a message */
        if (s != TIDAL_OK) {
            c->status = s;
            snprintf(c->err, sizeof c->err, "%s", tidal_errmsg());
            return NULL;
        }
        idle = 0;
        for (int i = 0; i < n; i++) { /* every message is destroyed; the first failed ack is kept */
            tidal_status as = bus_ack(msgs[i]);
            if (as != TIDAL_OK && c->status == TIDAL_OK) {
                c->status = as;
                snprintf(c->err, sizeof c->err, "%s", tidal_errmsg());
            }
            bus_msg_destroy(msgs[i]);
        }
        c->got += n;
    }
    return NULL;
}

static void *raw_consume(void *arg)
{
    consumer_ctx *c = arg;
    while (c->got < c->want) {
        bus_msg *m = NULL;
        tidal_status s = bus_next(c->sub, 5000, &m);
        if (s != TIDAL_OK) {
            c->status = s;
            snprintf(c->err, sizeof c->err, "%s", tidal_errmsg());
            return NULL;
        }
        bus_msg_destroy(m);
        c->got++;
    }
    return NULL;
}

static void finish(bench_result *r, double t0, double cpu0, double srv0, long n, size_t len)
{
    r->seconds = bench_now_s() - t0;
    r->client_cpu_s = bench_cpu_s() - cpu0;
    double srv1 = bench_proc_cpu_s(server_pid);
    r->server_cpu_s = srv0 >= 0 && srv1 >= 0 ? srv1 - srv0 : -1;
    r->received = n;
    r->msgs_per_s = (double)n / r->seconds;
    r->mb_per_s = r->msgs_per_s * (double)len / 1e6;
}

/* One publisher: its own connection (a rollout worker), messages [first, first + count). */
typedef struct {
    tidal_bus *bus;
    const void *payload;
    size_t len;
    long first, count;
    bool jetstream;
    tidal_status status;
    char err[512];
} publisher_ctx;

static void *publish(void *arg)
{
    publisher_ctx *p = arg;
    tidal_status st = TIDAL_OK;
    for (long i = p->first; i < p->first + p->count; i++) {
        if (p->jetstream) {
            char id[32];
            snprintf(id, sizeof id, "traj-%ld", i);
            TRY_GOTO(bus_js_publish_async(p->bus, bench_names.traj_subject, p->payload, (int)p->len, id));
        } else {
            TRY_GOTO(bus_publish(p->bus, BENCH_SUBJECT_RAW, p->payload, (int)p->len));
        }
    }
    TRY_GOTO(p->jetstream ? bus_js_publish_wait(p->bus, 60000) : bus_flush(p->bus, 30000));
cleanup:
    p->status = st;
    if (st != TIDAL_OK) snprintf(p->err, sizeof p->err, "%s", tidal_errmsg());
    return NULL;
}

/* Run the publishers and one consumer thread; time from the first publish to
 * the last message consumed. */
static tidal_status run_path(bool jetstream, tidal_bus **pubs, int n_pubs, consumer_ctx *c, const void *payload,
                             size_t len, long n, bench_result *r)
{
    pthread_t cth, pth[BENCH_MAX_PUBLISHERS];
    publisher_ctx pc[BENCH_MAX_PUBLISHERS];
    double t0 = bench_now_s(), cpu0 = bench_cpu_s(), srv0 = bench_proc_cpu_s(server_pid);
    pthread_create(&cth, NULL, jetstream ? js_consume : raw_consume, c);
    for (int i = 0; i < n_pubs; i++) {
        long first = n * i / n_pubs, last = n * (i + 1) / n_pubs;
        pc[i] = (publisher_ctx){.bus = pubs[i], .payload = payload, .len = len, .first = first,
                                .count = last - first, .jetstream = jetstream};
        pthread_create(&pth[i], NULL, publish, &pc[i]);
    }
    /* every thread is joined; the first failure is the run's */
    tidal_status s = TIDAL_OK;
    for (int i = 0; i < n_pubs; i++) {
        pthread_join(pth[i], NULL);
        if (pc[i].status != TIDAL_OK && s == TIDAL_OK) s = tidal_fail(pc[i].status, "bench: publisher %d: %s", i, pc[i].err);
    }
    if (s != TIDAL_OK) c->want = 0; /* let the consumer stop */
    pthread_join(cth, NULL);
    finish(r, t0, cpu0, srv0, c->got, len);
    if (s == TIDAL_OK && c->status != TIDAL_OK) s = tidal_fail(c->status, "bench: consumer: %s", c->err);
    if (s == TIDAL_OK && c->got != n)
        s = tidal_fail(TIDAL_ERR_BUS, "bench: the consumer got %ld of %ld messages", c->got, n);
    return s;
}

/* The JetStream path runs on a job's own trajectory stream and trainer
 * consumer (job_bus_ensure: work-queue retention, the 10-minute Nats-Msg-Id
 * window, the trainer's ack wait and pending bound), so the bench measures
 * what a job pays, not a cheaper stream of its own. */
static tidal_status run_jetstream(tidal_bus **pubs, int n_pubs, tidal_bus *subconn, const void *payload, size_t len,
                                  long n, bench_result *r)
{
    const job_names *names = &bench_names;
    bus_stream_delete(subconn, names->traj_stream); /* a clean stream each run */
    tidal_clear();
    job_bus_cfg jc = {.prompt_ack_wait_ms = 60000, .prompt_max_deliver = 5}; /* the prompts stream is unused here */
    TRY(job_bus_ensure(subconn, names, &jc, NULL));
    consumer_ctx c = {.bus = subconn, .want = n};
    TRY(bus_pull_subscribe(subconn, names->traj_stream, JOB_CONSUMER_TRAINER, &c.sub));
    tidal_status st = run_path(true, pubs, n_pubs, &c, payload, len, n, r);
    bus_unsubscribe(c.sub);
    bus_stream_delete(subconn, names->traj_stream);
    return st;
}

static tidal_status run_raw(tidal_bus **pubs, int n_pubs, tidal_bus *subconn, const void *payload, size_t len, long n,
                            bench_result *r)
{
    consumer_ctx c = {.bus = subconn, .want = n};
    tidal_status st = TIDAL_OK;
    TRY_GOTO(bus_subscribe_sync(subconn, BENCH_SUBJECT_RAW, NULL, &c.sub));
    TRY_GOTO(bus_flush(subconn, 5000));
    TRY_GOTO(run_path(false, pubs, n_pubs, &c, payload, len, n, r));
cleanup:
    bus_unsubscribe(c.sub);
    return st;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tidal bench bus [--bus URL] [--publishers P] [--messages N] [--rounds R] [--group G] [--json]\n"
            "  JetStream trajectory path (publish with Nats-Msg-Id to the trajectory stream\n"
            "  of job tidal-bench-bus, its trainer pull consumer with acks) against raw core\n"
            "  NATS pub/sub of the same bytes, on the same server: the messages a job sends,\n"
            "  one TrajectoryGroup of G trajectories (1,024 completion tokens each) per prompt.\n"
            "  Without --bus a private nats-server is started, and the CPU each path costs\n"
            "  per message (this process and nats-server) is reported too. P publishers\n"
            "  (default 1), each on its own connection like rollout workers, share the N\n"
            "  messages (default 160,000 / G); one consumer. Each path runs R rounds\n"
            "  (default 3); the best counts. --group G: the group size (default 8);\n"
            "  --single: one bare Trajectory per message, the former contract, for comparison.\n");
}

/* CPU microseconds per message, client + server (client only with --bus). */
static double cpu_us_per_msg(const bench_result *r)
{
    double cpu = r->client_cpu_s + (r->server_cpu_s > 0 ? r->server_cpu_s : 0);
    return r->received > 0 ? cpu * 1e6 / (double)r->received : 0;
}

static json_t *result_json(const bench_result *r)
{
    json_t *o = json_pack("{s:f, s:f, s:f, s:f, s:I, s:f, s:f}", "seconds", r->seconds, "msgs_per_s", r->msgs_per_s,
                          "trajectories_per_s", r->msgs_per_s * traj_per_msg, "mb_per_s", r->mb_per_s, "messages", (json_int_t)r->received, "client_cpu_us_per_msg",
                          r->client_cpu_s * 1e6 / (double)r->received, "cores_used",
                          (r->client_cpu_s + (r->server_cpu_s > 0 ? r->server_cpu_s : 0)) / r->seconds);
    json_object_set_new(o, "server_cpu_us_per_msg",
                        r->server_cpu_s >= 0 ? json_real(r->server_cpu_s * 1e6 / (double)r->received) : json_null());
    return o;
}

int bench_bus_main(int argc, char **argv)
{
    const char *url = NULL;
    long n = 0;
    int rounds = 3, as_json = 0, n_pubs = 1, group = 8, single = 0;
    static const struct option opts[] = {{"bus", required_argument, 0, 'b'},
                                         {"publishers", required_argument, 0, 'p'},
                                         {"group", required_argument, 0, 'g'},
                                         {"single", no_argument, 0, 's'},
                                         {"messages", required_argument, 0, 'n'},
                                         {"rounds", required_argument, 0, 'r'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "b:p:n:r:g:sjh", opts, NULL)) != -1;) {
        switch (c) {
        case 'b': url = optarg; break;
        case 'n': n = strtol(optarg, NULL, 10); break;
        case 'p': n_pubs = atoi(optarg); break;
        case 'g': group = atoi(optarg); break;
        case 's': single = 1; break;
        case 'r': rounds = atoi(optarg); break;
        case 'j': as_json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (single) group = 1;
    if (n == 0 && group >= 1) n = 160000 / group;
    if (optind < argc || n <= 0 || rounds <= 0 || n_pubs < 1 || n_pubs > BENCH_MAX_PUBLISHERS || group < 1 ||
        group > 64) {
        usage(stderr);
        return 2;
    }

    void *payload = NULL;
    size_t len = 0;
    tidal_server *srv = NULL;
    tidal_bus *pubs[BENCH_MAX_PUBLISHERS] = {0}, *subconn = NULL;
    tidal_status st = TIDAL_OK;
    traj_per_msg = group;
    TRY_GOTO(job_names_init(&bench_names, BENCH_JOB));
    TRY_GOTO(make_payload(group, single, &payload, &len));
    if (!url) {
        tidal_server_opts so = {0};
        TRY_GOTO(tidal_server_start(&srv, &so));
        url = tidal_server_url(srv);
        server_pid = tidal_server_pid(srv);
    }
    bus_opts bo = {.urls = url, .name = "tidal-bench", .async_max_pending = 8192, .js_timeout_ms = 10000};
    for (int i = 0; i < n_pubs; i++) TRY_GOTO(bus_connect(&pubs[i], &bo));
    TRY_GOTO(bus_connect(&subconn, &bo));

    bench_result js_best = {0}, raw_best = {0};
    for (int i = 0; i < rounds; i++) {
        bench_result js = {0}, raw = {0};
        TRY_GOTO(run_raw(pubs, n_pubs, subconn, payload, len, n, &raw));
        TRY_GOTO(run_jetstream(pubs, n_pubs, subconn, payload, len, n, &js));
        fprintf(stderr,
                "round %d: jetstream %.0f msgs/s (%.1f MB/s, %.1f CPU us/msg), raw %.0f msgs/s (%.1f MB/s, %.1f CPU us/msg)\n",
                i + 1, js.msgs_per_s, js.mb_per_s, cpu_us_per_msg(&js), raw.msgs_per_s, raw.mb_per_s,
                cpu_us_per_msg(&raw));
        if (js.msgs_per_s > js_best.msgs_per_s) js_best = js;
        if (raw.msgs_per_s > raw_best.msgs_per_s) raw_best = raw;
    }
    double ratio = js_best.msgs_per_s / raw_best.msgs_per_s;
    /* Both paths keep every core of a small machine partly busy; the CPU
     * each spends per message is the bound: with all cores saturated the
     * ratio would be raw's CPU per message over JetStream's. */
    bool cpu_known = js_best.server_cpu_s >= 0 && raw_best.server_cpu_s >= 0;
    double cpu_ratio = cpu_known ? cpu_us_per_msg(&raw_best) / cpu_us_per_msg(&js_best) : 0;
    if (!as_json) {
        printf("bench bus: %ld messages of %zu bytes (%d trajector%s each) from %d publisher%s\n"
               "  tidal (JetStream file stream, Nats-Msg-Id, pull consumer + acks): %10.0f msgs/s %8.1f MB/s\n"
               "  peer  (core NATS pub/sub, no storage, no acks):                  %10.0f msgs/s %8.1f MB/s\n"
               "  ratio %.3f\n",
               n, len, group, group > 1 ? "ies" : "y", n_pubs, n_pubs > 1 ? "s" : "", js_best.msgs_per_s, js_best.mb_per_s, raw_best.msgs_per_s,
               raw_best.mb_per_s, ratio);
        if (cpu_known)
            printf("  CPU per message (client + nats-server): tidal %.1f us, peer %.1f us; "
                   "ratio at full CPU %.3f (%ld cores)\n",
                   cpu_us_per_msg(&js_best), cpu_us_per_msg(&raw_best), cpu_ratio, sysconf(_SC_NPROCESSORS_ONLN));
    }
    json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:i, s:i, s:i, s:I, s:o, s:o, s:f}", "bench", "bus", "peer",
                          "core NATS publish/subscribe of the same bytes on the same server",
                          "messages", (json_int_t)n, "message_bytes", (json_int_t)len,
                          "trajectories_per_message", group, "publishers", n_pubs,
                          "rounds", rounds, "cores", (json_int_t)sysconf(_SC_NPROCESSORS_ONLN),
                          "tidal", result_json(&js_best), "raw", result_json(&raw_best), "ratio", ratio);
    json_object_set_new(o, "cpu_ratio", cpu_known ? json_real(cpu_ratio) : json_null());
    json_object_set_new(o, "message", json_string(single ? "Trajectory" : "TrajectoryGroup"));
    bench_print_json(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench bus: %s\n", tidal_errmsg());
    if (subconn) job_bus_remove(subconn, &bench_names);
    bus_close(subconn);
    for (int i = 0; i < n_pubs; i++) bus_close(pubs[i]);
    tidal_server_stop(srv);
    free(payload);
    return st == TIDAL_OK ? 0 : 1;
}
