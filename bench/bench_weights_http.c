/* bench_weights_http.c - `tidal bench weights --transport http`: a 127 M-
 * parameter model's image from the trainer's HTTP server to W workers,
 * against Debian's nginx serving the same image file to W curl command lines,
 * both started here, on loopback, in the same run.
 *
 * Three clocks, each over R rounds (interleaved; the best counts):
 *   fetch   (the ratio's): W threads each run the worker's fetch,
 *           fetch_http_image (parallel Range requests on keep-alive
 *           connections, every chunk digest-checked against the signed
 *           manifest, into the worker's memory: the last round's buffer,
 *           as a worker reuses its last image's) from the trainer's
 *           server, a bearer token on every request; the bytes are then
 *           compared with the image;
 *   peer:   nginx (sendfile, keep-alive, access log off; as many worker
 *           processes as cores) serving the image as a file from a
 *           temporary directory, fetched by W `curl -o /dev/null` at once;
 *           each one's own time_total counts (its process start does not);
 *           no checksums, nothing kept;
 *   worker  (reported, not in the ratio): weights_publish of a new version
 *           to W weights_clients, from the publish call to each holding the
 *           verified model built from it (serialize, hashes, manifest, HTTP
 *           fetch, build; the trainer stores the bus copy meanwhile).
 * GB/s per worker = image bytes / seconds; ratio = tidal fetch's mean GB/s
 * per worker / the peer's, best against best; also the median over rounds
 * of each round's ratio (the two clocks of a round run back to back, so a
 * burst of load on a shared machine skews one round, not the median).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bus/bus.h"
#include "bus/server.h"
#include "job/names.h"
#include "proto/codec.h"
#include "rollout/fetch_http.h"
#include "rollout/weights.h"
#include "trainer/publish.h"

#define BENCH_JOB "benchwh"
#define MAX_WORKERS BENCH_WEIGHTS_MAX_WORKERS
#define WAIT_MS 300000
#define NGINX "/usr/sbin/nginx"
#define CURL_CLI "curl"
#define TOKEN "bench-weights-http-token"

typedef struct {
    double secs[MAX_WORKERS];
    double gbps_mean;
} round_result;

static void finish(round_result *r, int workers, uint64_t bytes)
{
    double sum = 0;
    for (int i = 0; i < workers; i++) sum += (double)bytes / r->secs[i] / 1e9;
    r->gbps_mean = sum / workers;
}

static json_t *secs_json(const round_result *r, int workers)
{
    json_t *a = json_array();
    for (int i = 0; i < workers; i++) json_array_append_new(a, json_real(r->secs[i]));
    return a;
}

/* ---------------------------------------------------------------- tidal fetch */

typedef struct {
    const Tidal__V1__WeightsManifest *w;
    const void *want;
    int parallel;
    void *spare; /* the last round's buffer, written into again (as a worker does) */
    double t0, secs;
    tidal_status st;
    char err[512];
} fetcher;

static void *fetcher_main(void *arg)
{
    fetcher *f = arg;
    fetch_http_opts o = {.token = TOKEN, .stall_ms = 30000, .parallel = f->parallel, .reuse = &f->spare,
                         .reuse_cap = f->w->bytes};
    void *img = NULL;
    uint64_t len = 0;
    f->st = fetch_http_image(f->w, &o, &img, &len);
    f->secs = bench_now_s() - f->t0;
    if (f->st == TIDAL_OK && (len != f->w->bytes || memcmp(img, f->want, len) != 0))
        f->st = tidal_fail(TIDAL_ERR_CORRUPT, "the fetched image differs from the published one");
    if (f->st != TIDAL_OK) snprintf(f->err, sizeof f->err, "%s", tidal_errmsg());
    free(f->spare);
    f->spare = img;
    return NULL;
}

static tidal_status run_fetch(const Tidal__V1__WeightsManifest *w, const void *image, int workers, int parallel,
                              void **spares, round_result *r)
{
    fetcher fs[MAX_WORKERS];
    pthread_t th[MAX_WORKERS];
    const double t0 = bench_now_s();
    for (int i = 0; i < workers; i++) {
        fs[i] = (fetcher){.w = w, .want = image, .parallel = parallel, .t0 = t0, .spare = spares[i]};
        pthread_create(&th[i], NULL, fetcher_main, &fs[i]);
    }
    for (int i = 0; i < workers; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < workers; i++) spares[i] = fs[i].spare;
    for (int i = 0; i < workers; i++) {
        if (fs[i].st != TIDAL_OK) return tidal_fail(fs[i].st, "tidal fetch %d: %s", i, fs[i].err);
        r->secs[i] = fs[i].secs;
    }
    finish(r, workers, w->bytes);
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- tidal worker */

typedef struct {
    weights_client *c;
    uint64_t version;
    double t0, secs;
    model *m;
    tidal_status st;
    char err[512];
} waiter;

static void *waiter_main(void *arg)
{
    waiter *w = arg;
    uint64_t got = 0;
    w->st = weights_client_wait(w->c, w->version, WAIT_MS, &w->m, &got);
    w->secs = bench_now_s() - w->t0;
    if (w->st == TIDAL_OK && got != w->version) w->st = tidal_fail(TIDAL_ERR_INVALID, "got v%" PRIu64, got);
    if (w->st != TIDAL_OK) snprintf(w->err, sizeof w->err, "%s", tidal_errmsg());
    return NULL;
}

static tidal_status run_worker(weights_publisher *p, weights_client **cs, int workers, model *src, uint64_t version,
                               uint64_t bytes, round_result *r)
{
    waiter ws[MAX_WORKERS];
    pthread_t th[MAX_WORKERS];
    const double t0 = bench_now_s();
    for (int i = 0; i < workers; i++) {
        ws[i] = (waiter){.c = cs[i], .version = version, .t0 = t0};
        pthread_create(&th[i], NULL, waiter_main, &ws[i]);
    }
    tidal_status st = weights_publish(p, src, version);
    if (st != TIDAL_OK) return st; /* the waiters give up after WAIT_MS: not joined (the bench exits) */
    for (int i = 0; i < workers; i++) pthread_join(th[i], NULL);
    size_t n = 0;
    const float *want = model_params(src, &n);
    for (int i = 0; i < workers; i++) {
        if (st == TIDAL_OK && ws[i].st != TIDAL_OK) st = tidal_fail(ws[i].st, "tidal worker %d: %s", i, ws[i].err);
        size_t got_n = 0;
        if (st == TIDAL_OK && (memcmp(model_params(ws[i].m, &got_n), want, n * sizeof *want) || got_n != n))
            st = tidal_fail(TIDAL_ERR_CORRUPT, "tidal worker %d: v%" PRIu64 " differs from the source", i, version);
        r->secs[i] = ws[i].secs;
        model_free(ws[i].m);
    }
    TRY(st);
    finish(r, workers, bytes);
    return weights_publisher_flush(p, WAIT_MS); /* the bus copy is stored before the next round */
}

/* ---------------------------------------------------------------- peer */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0) close(fd);
    return port;
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    return ok;
}

/* nginx with a config of its own under dir, serving dir/www on a loopback port. */
static tidal_status start_nginx(const char *dir, int *port, pid_t *pid)
{
    if (access(NGINX, X_OK) != 0)
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "bench weights --transport http: %s: %s (Debian's package nginx; "
                          "`make deps` installs it)", NGINX, strerror(errno));
    *port = free_port();
    if (*port < 0) return tidal_fail(TIDAL_ERR_IO, "bench weights: no free loopback port");
    char conf[4200];
    snprintf(conf, sizeof conf, "%s/nginx.conf", dir);
    FILE *f = fopen(conf, "w");
    if (!f) return tidal_fail(TIDAL_ERR_IO, "bench weights: %s: %s", conf, strerror(errno));
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    fprintf(f,
            "daemon off;\nmaster_process on;\nworker_processes %ld;\n%s"
            "pid %s/nginx.pid;\nerror_log %s/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_timeout 65;\n"
            "  client_body_temp_path %s/tmp_body;\n  proxy_temp_path %s/tmp_proxy;\n"
            "  fastcgi_temp_path %s/tmp_fcgi;\n  uwsgi_temp_path %s/tmp_uwsgi;\n  scgi_temp_path %s/tmp_scgi;\n"
            "  types { application/octet-stream safetensors; }\n"
            "  server {\n    listen 127.0.0.1:%d;\n    root %s/www;\n  }\n}\n",
            cores > 0 ? cores : 2, geteuid() == 0 ? "user root;\n" : "", dir, dir, dir, dir, dir, dir, dir, *port, dir);
    fclose(f);
    char prefix[4200];
    snprintf(prefix, sizeof prefix, "%s/", dir);
    *pid = fork();
    if (*pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 1), dup2(devnull, 2);
        execl(NGINX, NGINX, "-p", prefix, "-c", conf, (char *)NULL);
        _exit(127);
    }
    if (*pid < 0) return tidal_fail(TIDAL_ERR_IO, "bench weights: fork: %s", strerror(errno));
    for (int i = 0; i < 500; i++) {
        if (port_open(*port)) return TIDAL_OK;
        int status;
        if (waitpid(*pid, &status, WNOHANG) == *pid) {
            *pid = -1;
            return tidal_fail(TIDAL_ERR_IO, "bench weights: nginx exited (status %d; %s/error.log)", status, dir);
        }
        usleep(10000);
    }
    return tidal_fail(TIDAL_ERR_TIMEOUT, "bench weights: nginx not listening on 127.0.0.1:%d after 5 s", *port);
}

static void stop_nginx(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGQUIT);
    waitpid(pid, NULL, 0);
}

/* W curl command lines at once; each one's time_total. */
static tidal_status run_peer(const char *dir, int port, int workers, uint64_t bytes, round_result *r)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/weights.safetensors", port);
    pid_t pids[MAX_WORKERS];
    char outs[MAX_WORKERS][4300];
    for (int i = 0; i < workers; i++) {
        snprintf(outs[i], sizeof outs[i], "%s/curl-%d.out", dir, i);
        pids[i] = fork();
        if (pids[i] == 0) {
            int fd = open(outs[i], O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
            execlp(CURL_CLI, CURL_CLI, "-s", "-S", "-f", "-o", "/dev/null", "-w", "%{time_total} %{size_download}\n",
                   url, (char *)NULL);
            _exit(127);
        }
    }
    tidal_status st = TIDAL_OK;
    for (int i = 0; i < workers; i++) {
        int status = 0;
        waitpid(pids[i], &status, 0);
        FILE *f = fopen(outs[i], "r");
        double t = 0;
        unsigned long long got = 0;
        const int n = f ? fscanf(f, "%lf %llu", &t, &got) : 0;
        if (f) fclose(f);
        if (st == TIDAL_OK && (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || n != 2 || got != bytes || t <= 0))
            st = tidal_fail(TIDAL_ERR_REMOTE, "curl %s: exit %d, %llu of %" PRIu64 " bytes (%s)", url,
                            WIFEXITED(status) ? WEXITSTATUS(status) : -1, got, bytes, outs[i]);
        r->secs[i] = t;
    }
    TRY(st);
    finish(r, workers, bytes);
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- main */

static tidal_status write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) return tidal_fail(TIDAL_ERR_IO, "bench weights: %s: %s", path, strerror(errno));
    const bool ok = fwrite(data, 1, len, f) == len;
    if (fclose(f) != 0 || !ok) return tidal_fail(TIDAL_ERR_IO, "bench weights: write %s", path);
    return TIDAL_OK;
}

int bench_weights_http_run(const bench_weights_opts *opt)
{
    const int rounds = opt->rounds, workers = opt->workers, parallel = opt->parallel, as_json = opt->json,
              bf16 = opt->bf16;
    const st_dtype dtype = bf16 ? ST_BF16 : ST_F32;
    tidal_server *srv = NULL;
    tidal_bus *pub = NULL, *wbus[MAX_WORKERS] = {0};
    weights_publisher *p = NULL;
    weights_client *clients[MAX_WORKERS] = {0};
    model *src = NULL;
    void *image = NULL;
    size_t bytes = 0;
    job_names names;
    char dir[4096] = "";
    pid_t nginx = -1;
    int port = 0;
    Tidal__V1__WeightsManifest *man = NULL;
    bus_kv *kv = NULL;
    uint64_t version = 0;
    void *spares[MAX_WORKERS] = {0};
    double *round_ratio = NULL;

    tidal_status st = TIDAL_OK;
    TRY_GOTO(model_create(&bench_weights_cfg, &src));
    model_init_random(src, 1234, 0.02f, true);
    if (bf16) { /* the source holds what bf16 keeps, so the workers' models are compared bit for bit */
        size_t n = 0;
        float *pp = model_params(src, &n);
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &pp[i], 4);
            u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
            memcpy(&pp[i], &u, 4);
        }
    }
    TRY_GOTO(bench_weights_image(src, dtype, &image, &bytes));
    TRY_GOTO(bench_temp_dir("bench weights", "tidal-bench-wh", dir, sizeof dir));
    chmod(dir, 0755);
    char path[4300];
    snprintf(path, sizeof path, "%s/www", dir);
    mkdir(path, 0755);
    snprintf(path, sizeof path, "%s/www/weights.safetensors", dir);
    TRY_GOTO(write_file(path, image, bytes));
    TRY_GOTO(start_nginx(dir, &port, &nginx));

    tidal_server_opts so = {0};
    TRY_GOTO(tidal_server_start(&srv, &so));
    bus_opts bo = {.urls = tidal_server_url(srv), .name = "tidal-bench-weights-http", .js_timeout_ms = 30000};
    TRY_GOTO(bus_connect(&pub, &bo));
    for (int i = 0; i < workers; i++) TRY_GOTO(bus_connect(&wbus[i], &bo));
    TRY_GOTO(job_names_init(&names, BENCH_JOB));
    weights_publisher_opts po = {.bus = pub, .names = &names, .dtype = dtype, .http = true, .http_token = TOKEN};
    TRY_GOTO(weights_publisher_create(&po, &p));
    const weights_client_http wh = {.timeout_ms = 30000, .parallel = parallel, .token = TOKEN};
    for (int i = 0; i < workers; i++)
        TRY_GOTO(weights_client_create_http(wbus[i], &names, NULL, NULL, &wh, &clients[i]));
    bus_kv_cfg kc = {.bucket = names.kv_bucket};
    TRY_GOTO(bus_kv_ensure(pub, &kc, &kv));
    fprintf(stderr, "bench weights --transport http: image %.1f MB (%s), nginx on 127.0.0.1:%d, tidal at %s\n",
            (double)bytes / 1e6, bf16 ? "bf16" : "fp32", port, weights_http_base_url(weights_publisher_http(p)));

    round_result best_f = {0}, best_p = {0}, best_w = {0};
    round_ratio = calloc((size_t)rounds, sizeof *round_ratio);
    if (!round_ratio) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bench weights: out of memory");
        goto cleanup;
    }
    for (int r = 0; r < rounds; r++) {
        round_result fr = {0}, pr = {0}, wr = {0};
        TRY_GOTO(run_worker(p, clients, workers, src, version++, bytes, &wr));
        void *val = NULL;
        size_t len = 0;
        TRY_GOTO(bus_kv_get(kv, JOB_KEY_WEIGHTS, &val, &len, NULL));
        tidal__v1__weights_manifest__free_unpacked(man, NULL);
        man = NULL;
        st = codec_decode_weights_manifest(val, len, &man);
        free(val);
        TRY_GOTO(st);
        TRY_GOTO(run_peer(dir, port, workers, bytes, &pr));
        TRY_GOTO(run_fetch(man, image, workers, parallel, spares, &fr));
        fprintf(stderr, "round %d: tidal fetch %.2f GB/s per worker (", r + 1, fr.gbps_mean);
        for (int i = 0; i < workers; i++) fprintf(stderr, "%s%.3f s", i ? " " : "", fr.secs[i]);
        fprintf(stderr, "); nginx+curl %.2f GB/s per worker (", pr.gbps_mean);
        for (int i = 0; i < workers; i++) fprintf(stderr, "%s%.3f s", i ? " " : "", pr.secs[i]);
        fprintf(stderr, "); publish -> worker's model %.2f GB/s per worker (", wr.gbps_mean);
        for (int i = 0; i < workers; i++) fprintf(stderr, "%s%.3f s", i ? " " : "", wr.secs[i]);
        fprintf(stderr, ")\n");
        round_ratio[r] = fr.gbps_mean / pr.gbps_mean;
        if (fr.gbps_mean > best_f.gbps_mean) best_f = fr;
        if (pr.gbps_mean > best_p.gbps_mean) best_p = pr;
        if (wr.gbps_mean > best_w.gbps_mean) best_w = wr;
    }
    const double ratio = best_f.gbps_mean / best_p.gbps_mean;
    const double median = bench_median(round_ratio, rounds);
    if (!as_json)
        printf("bench weights --transport http: %zu parameters, %zu-byte %s image, %d workers, %d ranges in flight "
               "each, best of %d rounds\n"
               "  tidal fetch (trainer's libmicrohttpd server -> fetch_http_image, token, every chunk digest-checked):\n"
               "        %6.2f GB/s per worker\n"
               "  peer  (nginx sendfile -> curl -o /dev/null, no checks):\n"
               "        %6.2f GB/s per worker\n"
               "  ratio %.3f (best against best), median of the rounds' ratios %.3f\n"
               "  publish call -> each worker's verified model (serialize, hash, manifest, fetch, build): %.2f GB/s "
               "per worker\n",
               model_config_num_params(&bench_weights_cfg), bytes, bf16 ? "bf16" : "fp32", workers, parallel, rounds,
               best_f.gbps_mean, best_p.gbps_mean, ratio, median, best_w.gbps_mean);
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:i, s:i, s:i, s:{s:f, s:o}, s:{s:f, s:o}, s:{s:f, s:o}, "
                          "s:f, s:f, s:f}",
                          "bench", "weights", "transport", "http", "peer",
                          "nginx (Debian) serving the same image file to curl -o /dev/null, loopback", "params",
                          (json_int_t)model_config_num_params(&bench_weights_cfg), "image_bytes", (json_int_t)bytes, "dtype",
                          bf16 ? "bf16" : "fp32", "workers", workers, "parallel", parallel, "rounds", rounds,
                          "tidal_fetch", "gb_per_s_per_worker", best_f.gbps_mean, "seconds_per_worker",
                          secs_json(&best_f, workers), "nginx_curl", "gb_per_s_per_worker", best_p.gbps_mean,
                          "seconds_per_worker", secs_json(&best_p, workers), "publish_to_model",
                          "gb_per_s_per_worker", best_w.gbps_mean, "seconds_per_worker", secs_json(&best_w, workers),
                          "peak_rss_mb", bench_peak_rss_mb(), "ratio", ratio, "ratio_median_of_rounds", median);
    bench_print_json(o);
cleanup:
    if (st != TIDAL_OK) fprintf(stderr, "tidal bench weights --transport http: %s\n", tidal_errmsg());
    stop_nginx(nginx);
    tidal__v1__weights_manifest__free_unpacked(man, NULL);
    bus_kv_close(kv);
    for (int i = 0; i < workers; i++) weights_client_free(clients[i]);
    weights_publisher_free(p);
    for (int i = 0; i < workers; i++) bus_close(wbus[i]);
    bus_close(pub);
    tidal_server_stop(srv);
    if (dir[0]) bench_remove_dir("bench weights", dir);
    free(image);
    for (int i = 0; i < workers; i++) free(spares[i]);
    free(round_ratio);
    model_free(src);
    return st == TIDAL_OK ? 0 : 1;
}
