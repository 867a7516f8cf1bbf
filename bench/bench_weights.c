/* bench_weights.c - `tidal bench weights`: publishing a ~500 MB model from the
 * trainer to rollout workers over the bus, against raw core NATS moving the
 * same bytes on the same server in the same run.
 *
 * tidal path: weights_publish of a 127 M-parameter model (random weights):
 * the copy on the caller's thread, then in the background the safetensors
 * image broadcast as a live blob (protocol.md "Live weights": core messages
 * the workers' taps catch) and the live WeightsManifest in KV, then the blob
 * stored in the file-storage stream TIDAL_J_WEIGHTS (every chunk
 * acknowledged) and the manifest again; W workers (weights_client, each on
 * its own connection) see the manifest, verify what their taps caught (or
 * fetch the stored blob) and build the model. The clock runs from the
 * weights_publish call to each worker holding its model
 * (weights_client_wait returned); every worker's parameters are then checked
 * bit for bit against the source. The round (and its CPU count) ends when
 * the stored copy is on the bus too (weights_publisher_flush).
 * peer: the same image published as 4 MiB chunks with core-NATS publishes on
 * one subject to W subscribers (each on its own connection) that copy the
 * chunks into a buffer (allocated and touched before the clock starts); flow
 * control by window: every subscriber acks each window of chunks and the
 * publisher keeps at most two windows un-acked, so nothing is dropped by the
 * server's slow-consumer limit. No storage, no checksums, no model. The clock
 * runs from the first publish to each subscriber holding the last chunk;
 * every buffer is then compared with the image.
 * GB/s per worker = image bytes / that worker's seconds; ratio = tidal's
 * mean GB/s per worker / the peer's. Each path runs R rounds (interleaved,
 * default 4: the first pays for faulting in fresh memory); the best counts.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench/bench.h"
#include "model/model.h"
#include "bus/bus.h"
#include "job/names.h"
#include "bus/server.h"
#include "rollout/weights.h"
#include "trainer/publish.h"

#define BENCH_JOB "benchw"
#define RAW_DATA_SUBJECT "tidal.bench.weights.raw"
#define RAW_ACK_PREFIX "tidal.bench.weights.ack"
#define RAW_CHUNK (4u << 20)
#define RAW_WINDOW 4          /* chunks per ack: 16 MiB */
#define RAW_IN_FLIGHT 2       /* windows un-acked at once: 32 MiB < nats-server's 64 MB max_pending */
#define MAX_WORKERS BENCH_WEIGHTS_MAX_WORKERS
#define WAIT_MS 300000

/* 127.2 M parameters (509 MB as fp32): GPT-2-small-sized, Llama-shaped; the http bench's too. */
const model_config bench_weights_cfg = {
    .type = MODEL_LLAMA, .vocab_size = 32000, .hidden_size = 768, .num_layers = 12, .num_heads = 12,
    .num_kv_heads = 12, .head_dim = 64, .intermediate_size = 2688, .max_position_embeddings = 2048,
    .rope_theta = 10000.0, .rms_norm_eps = 1e-5, .tie_word_embeddings = true, .bos_token_id = 1,
    .eos_token_id = 2};

typedef struct {
    double secs[MAX_WORKERS]; /* per worker, from the start of the round */
    double gbps_mean;         /* mean over workers of bytes / secs */
    double publish_call_ms;   /* tidal: how long weights_publish held the caller */
    double stored_s;          /* tidal: until the stored copy's manifest was on the bus (flush returned) */
    double cpu_s;             /* CPU seconds of this process (publisher and workers) over the round */
    double server_cpu_s;      /* nats-server's CPU seconds over the round; < 0 when unknown (--bus) */
    int live;                 /* tidal: workers that built the version from the broadcast */
} round_result;

/* The private nats-server's pid, for its CPU time (-1 with --bus). */
static int server_pid = -1;

/* CPU clocks at the start of a round's clock, read again when its workers are done. */
static void cpu_start(round_result *r)
{
    r->cpu_s = bench_cpu_s();
    r->server_cpu_s = bench_proc_cpu_s(server_pid);
}

static void cpu_stop(round_result *r)
{
    r->cpu_s = bench_cpu_s() - r->cpu_s;
    const double srv = bench_proc_cpu_s(server_pid);
    r->server_cpu_s = srv >= 0 && r->server_cpu_s >= 0 ? srv - r->server_cpu_s : -1;
}

static void finish(round_result *r, int workers, uint64_t bytes)
{
    double sum = 0;
    for (int i = 0; i < workers; i++) sum += (double)bytes / r->secs[i] / 1e9;
    r->gbps_mean = sum / workers;
}

/* ---------------------------------------------------------------- tidal path */

typedef struct {
    weights_client *c;
    uint64_t version;
    double t0;
    const atomic_int *abort;   /* set by the publisher when the publish failed */
    double secs;
    model *m;
    tidal_status status;
    char err[512];
} tidal_worker;

static void *tidal_worker_main(void *arg)
{
    tidal_worker *w = arg;
    uint64_t got = 0;
    /* short waits, so a failed publish does not leave the workers waiting */
    for (int waited = 0; waited < WAIT_MS; waited += 200) {
        w->status = weights_client_wait(w->c, w->version, 200, &w->m, &got);
        if (w->status != TIDAL_ERR_TIMEOUT || atomic_load(w->abort)) break;
    }
    w->secs = bench_now_s() - w->t0;
    if (w->status == TIDAL_OK && got != w->version)
        w->status = tidal_fail(TIDAL_ERR_INVALID, "got v%" PRIu64 ", wanted v%" PRIu64, got, w->version);
    if (w->status != TIDAL_OK) snprintf(w->err, sizeof w->err, "%s", tidal_errmsg());
    return NULL;
}

/* Publish `version` and wait until it is on the bus; the publish call's time goes to r. */
static tidal_status publish_version(weights_publisher *p, model *src, uint64_t version, double t0, round_result *r)
{
    TRY(weights_publish(p, src, version));
    r->publish_call_ms = (bench_now_s() - t0) * 1e3;
    return weights_publisher_flush(p, WAIT_MS);
}

static tidal_status run_tidal(weights_publisher *p, weights_client **clients, int workers, model *src,
                              const float *want, uint64_t version, uint64_t bytes, round_result *r)
{
    tidal_worker tw[MAX_WORKERS];
    pthread_t th[MAX_WORKERS];
    atomic_int abort = 0;
    uint64_t live0[MAX_WORKERS];
    for (int i = 0; i < workers; i++) {
        weights_stats ws;
        weights_client_stats(clients[i], &ws);
        live0[i] = ws.live;
    }
    cpu_start(r);
    double t0 = bench_now_s();
    for (int i = 0; i < workers; i++) {
        tw[i] = (tidal_worker){.c = clients[i], .version = version, .t0 = t0, .abort = &abort};
        pthread_create(&th[i], NULL, tidal_worker_main, &tw[i]);
    }
    tidal_status st = publish_version(p, src, version, t0, r);
    r->stored_s = bench_now_s() - t0;
    char msg[512] = "";
    if (st != TIDAL_OK) { /* the workers stop waiting: they are joined either way */
        snprintf(msg, sizeof msg, "%s", tidal_errmsg());
        atomic_store(&abort, 1);
    }
    for (int i = 0; i < workers; i++) pthread_join(th[i], NULL);
    cpu_stop(r); /* before the checks below, which are the bench's, not the path's */
    if (st != TIDAL_OK) tidal_fail(st, "bench weights: publish v%" PRIu64 ": %s", version, msg);
    size_t n = 0;
    model_params(src, &n);
    /* every worker's model is freed; the first failure is the round's */
    r->live = 0;
    for (int i = 0; i < workers; i++) {
        weights_stats ws;
        weights_client_stats(clients[i], &ws);
        r->live += ws.live > live0[i];
        r->secs[i] = tw[i].secs;
        if (st == TIDAL_OK && tw[i].status != TIDAL_OK)
            st = tidal_fail(tw[i].status, "bench weights: worker %d: %s", i, tw[i].err);
        size_t got_n = 0;
        if (st == TIDAL_OK && (memcmp(model_params(tw[i].m, &got_n), want, n * sizeof *want) != 0 || got_n != n))
            st = tidal_fail(TIDAL_ERR_CORRUPT, "bench weights: worker %d: v%" PRIu64 " differs from the published parameters",
                            i, version);
        weights_client_recycle(clients[i], tw[i].m); /* as a rollout worker does: the next version reuses it */
    }
    finish(r, workers, bytes);
    return st;
}

/* ---------------------------------------------------------------- raw peer */

typedef struct {
    tidal_bus *bus;
    bus_sub *sub;
    int index;
    uint8_t *buf;
    uint64_t bytes;
    uint32_t chunks;
    double t0;   /* set by the publisher before its first publish (read after the first chunk) */
    double secs;
    tidal_status status;
    char err[512];
} raw_sub;

static void *raw_sub_main(void *arg)
{
    raw_sub *r = arg;
    char ack_subject[64];
    snprintf(ack_subject, sizeof ack_subject, "%s.%d", RAW_ACK_PREFIX, r->index);
    uint64_t off = 0;
    tidal_status st = TIDAL_OK;
    for (uint32_t i = 0; i < r->chunks; i++) {
        bus_msg *m = NULL;
        TRY_GOTO(bus_next(r->sub, 30000, &m));
        uint64_t len = (uint64_t)bus_msg_len(m);
        if (len > r->bytes - off) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "raw subscriber %d: chunk %u overflows the image", r->index, i);
            bus_msg_destroy(m);
            goto cleanup;
        }
        memcpy(r->buf + off, bus_msg_data(m), len);
        off += len;
        bus_msg_destroy(m);
        if ((i + 1) % RAW_WINDOW == 0 || i + 1 == r->chunks) {
            char w[16];
            int wl = snprintf(w, sizeof w, "%u", i / RAW_WINDOW);
            TRY_GOTO(bus_publish(r->bus, ack_subject, w, wl));
        }
    }
    if (off != r->bytes)
        st = tidal_fail(TIDAL_ERR_CORRUPT, "raw subscriber %d: %" PRIu64 " of %" PRIu64 " bytes", r->index, off, r->bytes);
cleanup:
    r->secs = bench_now_s() - r->t0;
    r->status = st;
    if (st != TIDAL_OK) snprintf(r->err, sizeof r->err, "%s", tidal_errmsg());
    return NULL;
}

/* Wait until every subscriber has acked window `w` (acks of one subscriber
 * come in order). */
static tidal_status wait_acks(bus_sub *acks, int workers, int64_t *acked, int64_t w)
{
    for (;;) {
        bool all = true;
        for (int i = 0; i < workers; i++) all = all && acked[i] >= w;
        if (all) return TIDAL_OK;
        bus_msg *m = NULL;
        TRY_WRAP(bus_next(acks, 30000, &m), "raw publisher: waiting for acks of window %lld", (long long)w);
        const char *subj = bus_msg_subject(m);
        const char *dot = strrchr(subj, '.');
        int who = dot ? atoi(dot + 1) : -1;
        char num[16] = {0};
        int nl = bus_msg_len(m) < 15 ? bus_msg_len(m) : 15;
        memcpy(num, bus_msg_data(m), (size_t)nl);
        if (who >= 0 && who < workers) acked[who] = strtoll(num, NULL, 10);
        bus_msg_destroy(m);
    }
}

/* The image as chunks, at most RAW_IN_FLIGHT windows ahead of the slowest subscriber's ack. */
static tidal_status raw_publish(tidal_bus *pub, bus_sub *acks, int workers, int64_t *acked, const uint8_t *image,
                                uint64_t bytes, uint32_t chunks)
{
    for (uint32_t c = 0; c < chunks; c++) {
        int64_t w = c / RAW_WINDOW;
        if (c % RAW_WINDOW == 0 && w >= RAW_IN_FLIGHT) TRY(wait_acks(acks, workers, acked, w - RAW_IN_FLIGHT));
        uint64_t off = (uint64_t)c * RAW_CHUNK;
        uint32_t n = (uint32_t)(bytes - off < RAW_CHUNK ? bytes - off : RAW_CHUNK);
        TRY(bus_publish(pub, RAW_DATA_SUBJECT, image + off, (int)n));
    }
    TRY(bus_flush(pub, 30000));
    return wait_acks(acks, workers, acked, (int64_t)(chunks - 1) / RAW_WINDOW);
}

static tidal_status run_raw(tidal_bus *pub, tidal_bus **subs_bus, int workers, const uint8_t *image, uint64_t bytes,
                            uint8_t **bufs, round_result *r)
{
    const uint32_t chunks = (uint32_t)((bytes + RAW_CHUNK - 1) / RAW_CHUNK);
    raw_sub rs[MAX_WORKERS] = {0};
    pthread_t th[MAX_WORKERS];
    bus_sub *acks = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(bus_subscribe_sync(pub, RAW_ACK_PREFIX ".*", NULL, &acks));
    for (int i = 0; i < workers; i++) {
        rs[i] = (raw_sub){.bus = subs_bus[i], .index = i, .buf = bufs[i], .bytes = bytes, .chunks = chunks};
        TRY_GOTO(bus_subscribe_sync(subs_bus[i], RAW_DATA_SUBJECT, NULL, &rs[i].sub));
        TRY_GOTO(bus_flush(subs_bus[i], 5000)); /* the interest is at the server */
    }
    TRY_GOTO(bus_flush(pub, 5000));
    cpu_start(r);
    double t0 = bench_now_s();
    for (int i = 0; i < workers; i++) {
        rs[i].t0 = t0;
        pthread_create(&th[i], NULL, raw_sub_main, &rs[i]);
    }
    int64_t acked[MAX_WORKERS];
    for (int i = 0; i < workers; i++) acked[i] = -1;
    st = raw_publish(pub, acks, workers, acked, image, bytes, chunks);
    /* joined even after a failed publish (they give up after 30 s without a chunk) */
    for (int i = 0; i < workers; i++) pthread_join(th[i], NULL);
    cpu_stop(r);
    for (int i = 0; i < workers; i++) r->secs[i] = rs[i].secs;
    if (st != TIDAL_OK) goto cleanup;
    for (int i = 0; i < workers; i++) {
        if (rs[i].status != TIDAL_OK) {
            st = tidal_fail(rs[i].status, "%s", rs[i].err);
            goto cleanup;
        }
        if (memcmp(bufs[i], image, bytes) != 0) {
            st = tidal_fail(TIDAL_ERR_CORRUPT, "raw subscriber %d: the bytes differ from the image", i);
            goto cleanup;
        }
    }
cleanup:
    for (int i = 0; i < workers; i++) bus_unsubscribe(rs[i].sub);
    bus_unsubscribe(acks);
    finish(r, workers, bytes);
    return st;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tidal bench weights [--transport bus|http] [--bus URL] [--workers W] [--rounds R] [--parallel P]\n"
            "                           [--bf16] [--json]\n"
            "  Publish a 127 M-parameter model (509 MB as fp32) with weights_publish to W\n"
            "  rollout workers (weights_client, each on its own connection; default 2),\n"
            "  timed from the publish call to each worker holding the verified model,\n"
            "  against raw core NATS moving the same bytes as 4 MiB chunks to W\n"
            "  subscribers (windowed acks). Without --bus a private nats-server is started.\n"
            "  Each path runs R rounds (default 4; the first pays for faulting in fresh\n"
            "  memory), interleaved; the best counts. --bf16: bf16 on the wire (the peer\n"
            "  then moves the bf16 image). --transport http: the trainer's HTTP server against\n"
            "  nginx + curl, P Range requests in flight per worker (default 4).\n");
}

static json_t *secs_json(const round_result *r, int workers)
{
    json_t *a = json_array();
    for (int i = 0; i < workers; i++) json_array_append_new(a, json_real(r->secs[i]));
    return a;
}

/* The parameters a worker must end up with: the image's, read back (for
 * bf16 the rounded values; *out is malloc'd). */
static tidal_status expected_params(model *m, const void *image, size_t len, float **out)
{
    size_t n = 0;
    model_params(m, &n);
    *out = malloc(n * sizeof **out);
    if (!*out) return tidal_fail(TIDAL_ERR_NOMEM, "bench weights: %zu parameters", n);
    st_file *f = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(st_open_memory(image, len, "bench image", &f));
    for (int i = 0; i < model_num_tensors(m); i++) {
        const model_tensor *t = model_tensor_at(m, i);
        TRY_GOTO(st_read_f32(st_find(f, t->name), *out + t->offset, (int64_t)t->numel));
    }
cleanup:
    st_close(f);
    return st;
}

/* The image weights_publish sends, made here for the peers (same writer, same bytes). */
tidal_status bench_weights_image(model *m, st_dtype dtype, void **image, size_t *len)
{
    st_writer *w = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(st_writer_new(&w));
    TRY_GOTO(st_writer_metadata(w, "format", "pt"));
    float *params = model_params(m, NULL);
    for (int i = 0; i < model_num_tensors(m); i++) {
        const model_tensor *t = model_tensor_at(m, i);
        TRY_GOTO(st_writer_add_f32(w, t->name, dtype, t->ndim, t->shape, params + t->offset));
    }
    TRY_GOTO(st_writer_to_memory(w, image, len));
cleanup:
    st_writer_free(w);
    return st;
}

int bench_weights_main(int argc, char **argv)
{
    bench_weights_opts opt = {.workers = 2, .rounds = 4, .parallel = 4};
    const char *transport = "bus";
    static const struct option opts[] = {{"bus", required_argument, 0, 'b'},
                                         {"transport", required_argument, 0, 't'},
                                         {"workers", required_argument, 0, 'w'},
                                         {"rounds", required_argument, 0, 'r'},
                                         {"parallel", required_argument, 0, 'p'},
                                         {"bf16", no_argument, 0, 'f'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "b:t:w:r:p:fjh", opts, NULL)) != -1;) {
        switch (c) {
        case 'b': opt.url = optarg; break;
        case 't': transport = optarg; break;
        case 'w': opt.workers = atoi(optarg); break;
        case 'r': opt.rounds = atoi(optarg); break;
        case 'p': opt.parallel = atoi(optarg); break;
        case 'f': opt.bf16 = true; break;
        case 'j': opt.json = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    const bool http = !strcmp(transport, "http");
    if (!http && strcmp(transport, "bus") != 0) {
        fprintf(stderr, "tidal bench weights: --transport %s: want bus or http\n", transport);
        return 2;
    }
    if (optind < argc || opt.rounds <= 0 || opt.workers < 1 || opt.workers > MAX_WORKERS || opt.parallel < 1 ||
        opt.parallel > 64) {
        usage(stderr);
        return 2;
    }
    if (http && opt.url) {
        fprintf(stderr, "tidal bench weights: --bus is for --transport bus (http starts its own servers)\n");
        return 2;
    }
    if (http) return bench_weights_http_run(&opt); /* bench_weights_http.c */
    const char *url = opt.url;
    const int rounds = opt.rounds, workers = opt.workers, as_json = opt.json, bf16 = opt.bf16;
    const st_dtype dtype = bf16 ? ST_BF16 : ST_F32;

    tidal_server *srv = NULL;
    tidal_bus *pub = NULL, *wbus[MAX_WORKERS] = {0};
    weights_publisher *p = NULL;
    weights_client *clients[MAX_WORKERS] = {0};
    uint8_t *bufs[MAX_WORKERS] = {0};
    model *src = NULL;
    float *expect = NULL; /* bf16: the rounded parameters (fp32: src's own) */
    void *image = NULL;
    size_t bytes = 0;
    job_names names;

    double t_init = bench_now_s();
    tidal_status st = TIDAL_OK;
    TRY_GOTO(model_create(&bench_weights_cfg, &src));
    model_init_random(src, 1234, 0.02f, true);
    TRY_GOTO(bench_weights_image(src, dtype, &image, &bytes));
    if (bf16) TRY_GOTO(expected_params(src, image, bytes, &expect));
    for (int i = 0; i < workers; i++) {
        bufs[i] = malloc(bytes);
        if (!bufs[i]) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "bench weights: %zu bytes for subscriber %d", bytes, i);
            goto cleanup;
        }
        memset(bufs[i], 0, bytes); /* faulted in before any clock runs */
    }
    fprintf(stderr, "bench weights: model of %zu parameters, image %.1f MB (%s), made in %.1f s\n",
            model_config_num_params(&bench_weights_cfg), (double)bytes / 1e6, bf16 ? "bf16" : "fp32",
            bench_now_s() - t_init);
    if (!url) {
        tidal_server_opts so = {0};
        TRY_GOTO(tidal_server_start(&srv, &so));
        url = tidal_server_url(srv);
        server_pid = tidal_server_pid(srv);
    }
    bus_opts bo = {.urls = url, .name = "tidal-bench-weights", .js_timeout_ms = 30000};
    TRY_GOTO(bus_connect(&pub, &bo));
    for (int i = 0; i < workers; i++) TRY_GOTO(bus_connect(&wbus[i], &bo));
    TRY_GOTO(job_names_init(&names, BENCH_JOB));
    /* a clean job each run (a --bus server may hold an earlier one, and its
     * public key: this run's publisher signs with a key of its own) */
    bus_stream_delete(pub, names.weights_stream);
    bus_kv *kv = NULL;
    if (bus_kv_open(pub, names.kv_bucket, &kv) == TIDAL_OK) bus_kv_delete(kv, JOB_KEY_PUBKEY);
    bus_kv_close(kv);
    tidal_clear();
    weights_publisher_opts po = {.bus = pub, .names = &names, .dtype = dtype};
    TRY_GOTO(weights_publisher_create(&po, &p));
    for (int i = 0; i < workers; i++) TRY_GOTO(weights_client_create(wbus[i], &names, NULL, NULL, &clients[i]));

    round_result best_t = {0}, best_r = {0};
    double round_ratio[64], cpu_tidal[64], cpu_raw[64];
    int n_ratios = 0;
    for (int r = 0; r < rounds; r++) {
        round_result tr = {0}, rr = {0};
        TRY_GOTO(run_raw(pub, wbus, workers, image, bytes, bufs, &rr));
        TRY_GOTO(run_tidal(p, clients, workers, src, bf16 ? expect : model_params(src, NULL), (uint64_t)r, bytes, &tr));
        fprintf(stderr, "round %d: tidal %.2f GB/s per worker (publish call %.0f ms, %d of %d workers live, stored after "
                "%.2f s, workers", r + 1, tr.gbps_mean, tr.publish_call_ms, tr.live, workers, tr.stored_s);
        for (int i = 0; i < workers; i++) fprintf(stderr, " %.2f s", tr.secs[i]);
        fprintf(stderr, "); raw %.2f GB/s per worker (", rr.gbps_mean);
        for (int i = 0; i < workers; i++) fprintf(stderr, "%s%.2f s", i ? " " : "", rr.secs[i]);
        fprintf(stderr, "); CPU s tidal %.2f + server %.2f, raw %.2f + server %.2f\n", tr.cpu_s, tr.server_cpu_s,
                rr.cpu_s, rr.server_cpu_s);
        /* the first round is a warm-up: fresh memory, and no image for the tap yet */
        if (r > 0 && n_ratios < 64) {
            cpu_tidal[n_ratios] = tr.cpu_s + (tr.server_cpu_s > 0 ? tr.server_cpu_s : 0);
            cpu_raw[n_ratios] = rr.cpu_s + (rr.server_cpu_s > 0 ? rr.server_cpu_s : 0);
            round_ratio[n_ratios++] = tr.gbps_mean / rr.gbps_mean;
        }
        if (tr.gbps_mean > best_t.gbps_mean) best_t = tr;
        if (rr.gbps_mean > best_r.gbps_mean) best_r = rr;
    }

    const double ratio = best_t.gbps_mean / best_r.gbps_mean;
    const double median = n_ratios ? bench_median(round_ratio, n_ratios) : ratio;
    /* CPU seconds per round (this process + nats-server, median after the
     * first): the ratio the paths would have if every core were busy, the
     * bound on a machine with fewer cores than the paths have threads */
    const double cpu_t = n_ratios ? bench_median(cpu_tidal, n_ratios) : 0,
                 cpu_r = n_ratios ? bench_median(cpu_raw, n_ratios) : 0;
    const double cpu_ratio = cpu_t > 0 ? cpu_r / cpu_t : 0;
    if (!as_json)
        printf("bench weights: %zu parameters, %zu-byte %s image, %d workers, best of %d rounds\n"
               "  tidal (weights_publish -> live broadcast + KV manifest -> weights_client, verified; then stored):\n"
               "        %6.2f GB/s per worker (publish call %.0f ms, %d of %d workers live, stored after %.2f s)\n"
               "  peer  (core NATS, 4 MiB chunks, windowed acks, no storage, no checksums):\n"
               "        %6.2f GB/s per worker\n"
               "  ratio %.3f (best against best), median of the rounds' ratios after the first %.3f\n"
               "  CPU s per round (process + nats-server, median): tidal %.2f, raw %.2f: cpu_ratio %.3f on %ld cores\n",
               model_config_num_params(&bench_weights_cfg), bytes, bf16 ? "bf16" : "fp32", workers, rounds,
               best_t.gbps_mean, best_t.publish_call_ms, best_t.live, workers, best_t.stored_s, best_r.gbps_mean, ratio, median, cpu_t, cpu_r,
               cpu_ratio, sysconf(_SC_NPROCESSORS_ONLN));
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:I, s:I, s:s, s:i, s:i, s:{s:f, s:o, s:f, s:f, s:i, s:f}, s:{s:f, s:o, s:f}, s:f, s:f, s:f, s:f, s:i}", "bench", "weights", "transport", transport,
        "peer", "core NATS publish/subscribe of the same image as 4 MiB chunks with windowed acks, same server",
        "params", (json_int_t)model_config_num_params(&bench_weights_cfg), "image_bytes", (json_int_t)bytes, "dtype",
        bf16 ? "bf16" : "fp32", "workers", workers, "rounds", rounds, "tidal", "gb_per_s_per_worker",
        best_t.gbps_mean, "seconds_per_worker", secs_json(&best_t, workers), "publish_call_ms",
        best_t.publish_call_ms, "stored_s", best_t.stored_s, "live_workers", best_t.live, "cpu_s_per_round", cpu_t, "raw", "gb_per_s_per_worker",
        best_r.gbps_mean, "seconds_per_worker", secs_json(&best_r, workers), "cpu_s_per_round", cpu_r, "peak_rss_mb",
        bench_peak_rss_mb(), "ratio", ratio, "ratio_median_of_rounds", median, "cpu_ratio", cpu_ratio, "cores",
        (int)sysconf(_SC_NPROCESSORS_ONLN));
    bench_print_json(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench weights: %s\n", tidal_errmsg());
    for (int i = 0; i < workers; i++) weights_client_free(clients[i]);
    weights_publisher_free(p);
    if (pub && st == TIDAL_OK) bus_stream_delete(pub, names.weights_stream);
    for (int i = 0; i < workers; i++) bus_close(wbus[i]);
    bus_close(pub);
    tidal_server_stop(srv);
    for (int i = 0; i < workers; i++) free(bufs[i]);
    free(image);
    free(expect);
    model_free(src);
    return st == TIDAL_OK ? 0 : 1;
}
