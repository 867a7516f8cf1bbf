/* dashboard.c - the run's dashboard over HTTP (dashboard.h). */
#include "dashboard/dashboard.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dashboard/query.h"
#include "dashboard/rundir.h"
#include "job/names.h"
#include "proto/codec.h"
#include "proto/enum_names.h"

#include "dashboard_page_html.h" /* generated from dashboard/page.html (cmake/embed.cmake) */

#define WORKERS_MAX 1024
#define WORKER_LIVE_MS 5000      /* a heartbeat older than this: the worker is lost (as the controller counts) */
#define BUS_RETRY_MS 5000        /* a bus that could not be reached is tried again this often at most */

typedef struct worker_seen {
    char id[128];
    json_t *last;                /* its last heartbeat as the API shows it */
    uint64_t updated_ms;
    bool present;                /* in the bucket at the last read */
} worker_seen;

struct dashboard {
    struct MHD_Daemon *d;
    char run_dir[4096];
    char token[256];
    bool live;
    bus_opts bus_o;
    char bus_urls[2048];
    job_names names;
    pthread_mutex_t mu;          /* the bus and the workers table: one request at a time reads them */
    tidal_bus *bus;
    bus_kv *wkv;
    uint64_t bus_tried_ms;
    char bus_error[512];
    worker_seen *workers;
    int n_workers;
};

/* ---------------------------------------------------------------- workers */

static uint64_t now_ms(void) { return tidal_unix_ms(); }

/* The bus and the heartbeat bucket, connected on first use and again after a failure. */
static bool bus_ready(dashboard *d)
{
    if (d->wkv) return true;
    const uint64_t t = now_ms();
    if (d->bus_tried_ms && t - d->bus_tried_ms < BUS_RETRY_MS) return false;
    d->bus_tried_ms = t;
    if (!d->bus && bus_connect(&d->bus, &d->bus_o) != TIDAL_OK) {
        snprintf(d->bus_error, sizeof d->bus_error, "%s", tidal_errmsg());
        return false;
    }
    if (bus_kv_open(d->bus, d->names.workers_bucket, &d->wkv) != TIDAL_OK) {
        snprintf(d->bus_error, sizeof d->bus_error, "%s", tidal_errmsg());
        return false;
    }
    d->bus_error[0] = 0;
    return true;
}

static worker_seen *seen(dashboard *d, const char *id)
{
    for (int i = 0; i < d->n_workers; i++)
        if (!strcmp(d->workers[i].id, id)) return &d->workers[i];
    if (d->n_workers == WORKERS_MAX) return NULL;
    worker_seen *w = &d->workers[d->n_workers++];
    memset(w, 0, sizeof *w);
    snprintf(w->id, sizeof w->id, "%s", id);
    return w;
}

/* Read the heartbeat bucket once (its current values) into the table. */
static void read_workers(dashboard *d)
{
    bus_kv_watcher *w = NULL;
    if (bus_kv_watch(d->wkv, NULL, &w) != TIDAL_OK) {
        snprintf(d->bus_error, sizeof d->bus_error, "%s", tidal_errmsg());
        return;
    }
    for (int i = 0; i < d->n_workers; i++) d->workers[i].present = false;
    bus_kv_event ev;
    while (bus_kv_watch_next(w, 1000, &ev) == TIDAL_OK && ev.kind != BUS_KV_INITIAL_DONE) {
        Tidal__V1__WorkerStatus *s = NULL;
        if (ev.kind == BUS_KV_PUT && codec_decode_worker_status(ev.value, ev.len, &s) == TIDAL_OK) {
            worker_seen *row = seen(d, s->worker_id);
            if (row) {
                json_decref(row->last);
                row->last = json_pack(
                    "{s:s, s:s, s:s, s:I, s:f, s:I, s:I, s:I, s:i, s:s, s:s, s:I}", "id", s->worker_id, "host", s->host,
                    "state", proto_worker_state_name(s->state), "weights_version", (json_int_t)s->weights_version,
                    "tokens_per_s", s->tokens_per_s, "trajectories", (json_int_t)s->trajectories, "errors",
                    (json_int_t)s->errors, "updated_unix_ms", (json_int_t)s->updated_unix_ms, "prompts_in_flight",
                    (int)s->prompts_in_flight, "backend", s->backend, "env_error", s->env_error, "started_unix_ms",
                    (json_int_t)s->started_unix_ms);
                row->updated_ms = s->updated_unix_ms;
                row->present = true;
            }
            tidal__v1__worker_status__free_unpacked(s, NULL);
        }
        bus_kv_event_clear(&ev);
    }
    bus_kv_watch_stop(w);
}

/* {"live", "workers": [... each with "lost"], "lost": n, "error"?}. */
static json_t *workers_json(dashboard *d)
{
    json_t *o = json_object(), *a = json_array();
    json_object_set_new(o, "live", json_boolean(d->live));
    int lost = 0;
    if (d->live) {
        pthread_mutex_lock(&d->mu);
        if (bus_ready(d)) read_workers(d);
        const uint64_t t = now_ms();
        for (int i = 0; i < d->n_workers; i++) {
            worker_seen *w = &d->workers[i];
            if (!w->last) continue;
            const bool is_lost = !w->present || w->updated_ms + WORKER_LIVE_MS < t;
            json_t *row = json_deep_copy(w->last);
            json_object_set_new(row, "lost", json_boolean(is_lost));
            json_object_set_new(row, "heartbeat_age_ms", json_integer((json_int_t)(t > w->updated_ms ? t - w->updated_ms : 0)));
            json_array_append_new(a, row);
            lost += is_lost;
        }
        if (d->bus_error[0]) json_object_set_new(o, "error", json_string(d->bus_error));
        pthread_mutex_unlock(&d->mu);
    } else { /* a finished run: the workers tidal run saw lost, from summary.json */
        json_t *sum = NULL;
        if (dash_api_file(d->run_dir, "summary.json", &sum) == TIDAL_OK) {
            json_t *wl = json_object_get(sum, "workers_lost");
            if (wl) json_object_set(o, "workers_lost", wl);
        }
        json_decref(sum);
    }
    json_object_set_new(o, "workers", a);
    json_object_set_new(o, "lost", json_integer(lost));
    return o;
}

/* ---------------------------------------------------------------- HTTP */

static enum MHD_Result send_body(struct MHD_Connection *c, unsigned code, const char *type, char *body, size_t len,
                                 enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    const enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

/* o (stolen) as the answer. */
static enum MHD_Result send_json(struct MHD_Connection *c, unsigned code, json_t *o)
{
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(o);
    if (!text) return MHD_NO;
    return send_body(c, code, "application/json; charset=utf-8", text, strlen(text), MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned code, const char *msg)
{
    return send_json(c, code, json_pack("{s:s, s:i}", "error", msg, "status", (int)code));
}

typedef struct query_ctx {
    dash_query q;
    tidal_status st;
} query_ctx;

static enum MHD_Result on_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    query_ctx *x = cls;
    if (x->st == TIDAL_OK) x->st = dash_query_set(&x->q, key, value);
    return MHD_YES;
}

/* Constant-time: the comparison takes as long whatever the prefix in common. */
static bool same_token(const char *want, const char *got)
{
    const size_t n = strlen(want), m = got ? strlen(got) : 0;
    unsigned diff = n != m;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(i < m ? got[i] : 0);
    return diff == 0;
}

static bool authorized(dashboard *d, struct MHD_Connection *c, const dash_query *q)
{
    if (!d->token[0]) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (h && !strncmp(h, "Bearer ", 7) && same_token(d->token, h + 7)) return true;
    return q->token[0] && same_token(d->token, q->token);
}

/* One answer: st and o (stolen) from an API call. */
static enum MHD_Result answer(struct MHD_Connection *c, tidal_status st, json_t *o)
{
    if (st != TIDAL_OK) {
        json_decref(o);
        return send_error(c, (unsigned)dash_http_code(st), tidal_errmsg());
    }
    return send_json(c, MHD_HTTP_OK, o);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version, (void)upload, (void)con_cls;
    dashboard *d = cls;
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        if (*upload_size) *upload_size = 0; /* a body is read and dropped */
        return send_error(c, MHD_HTTP_METHOD_NOT_ALLOWED, "dashboard: only GET: the dashboard is read-only");
    }
    query_ctx x = {.st = TIDAL_OK};
    dash_query_init(&x.q);
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, on_arg, &x);
    if (!authorized(d, c, &x.q))
        return send_error(c, MHD_HTTP_UNAUTHORIZED,
                          "dashboard: a token is asked: open the page as /?token=T (T from TIDAL_DASHBOARD_TOKEN)");
    if (!strcmp(url, "/") || !strcmp(url, "/index.html"))
        return send_body(c, MHD_HTTP_OK, "text/html; charset=utf-8", (char *)dashboard_page_html,
                         sizeof dashboard_page_html - 1, MHD_RESPMEM_PERSISTENT);
    if (x.st != TIDAL_OK) return send_error(c, MHD_HTTP_BAD_REQUEST, tidal_errmsg());
    json_t *o = NULL;
    tidal_status st = TIDAL_OK;
    if (!strcmp(url, "/api/info")) {
        st = dash_api_info(d->run_dir, &o);
        if (o) json_object_set_new(o, "live", json_boolean(d->live));
    } else if (!strcmp(url, "/api/metrics")) {
        st = dash_api_metrics(d->run_dir, &x.q, &o);
    } else if (!strcmp(url, "/api/eval")) {
        st = dash_api_eval(d->run_dir, &o);
    } else if (!strcmp(url, "/api/samples")) {
        st = dash_api_samples(d->run_dir, &x.q, &o);
    } else if (!strncmp(url, "/api/sample/", 12)) {
        st = dash_api_sample(d->run_dir, url + 12, &o);
    } else if (!strcmp(url, "/api/staleness")) {
        st = dash_api_staleness(d->run_dir, &x.q, &o);
    } else if (!strcmp(url, "/api/spec")) {
        st = dash_api_file(d->run_dir, "spec.json", &o);
    } else if (!strcmp(url, "/api/summary")) {
        st = dash_api_file(d->run_dir, "summary.json", &o);
    } else if (!strcmp(url, "/api/workers")) {
        o = workers_json(d);
    } else {
        char msg[400];
        snprintf(msg, sizeof msg,
                 "dashboard: no such page: %.200s (/, /api/info, /api/metrics, /api/eval, /api/samples, "
                 "/api/sample/ID, /api/staleness, /api/spec, /api/summary, /api/workers)",
                 url);
        return send_error(c, MHD_HTTP_NOT_FOUND, msg);
    }
    return answer(c, st, o);
}

tidal_status dashboard_start(const dashboard_opts *o, dashboard **out)
{
    *out = NULL;
    if (!o->run_dir || !*o->run_dir) return tidal_fail(TIDAL_ERR_INVALID, "dashboard: no run directory");
    const char *host = o->bind && *o->bind ? o->bind : "127.0.0.1";
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o->port)};
    if (o->port < 0 || o->port > 65535 || inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return tidal_fail(TIDAL_ERR_INVALID, "dashboard: %s:%d is not an IPv4 address and port", host, o->port);
    if (o->token && strlen(o->token) >= 256)
        return tidal_fail(TIDAL_ERR_INVALID, "dashboard: the token is longer than 255 bytes");
    dashboard *d = calloc(1, sizeof *d);
    if (!d) return tidal_fail(TIDAL_ERR_NOMEM, "dashboard: out of memory");
    pthread_mutex_init(&d->mu, NULL);
    snprintf(d->run_dir, sizeof d->run_dir, "%s", o->run_dir);
    snprintf(d->token, sizeof d->token, "%s", o->token ? o->token : "");
    tidal_status st = TIDAL_OK;
    if (o->bus && o->job) {
        d->live = true;
        d->bus_o = *o->bus;
        snprintf(d->bus_urls, sizeof d->bus_urls, "%s", o->bus->urls ? o->bus->urls : "");
        d->bus_o.urls = d->bus_urls;
        d->bus_o.name = "dashboard";
        TRY_GOTO(job_names_init(&d->names, o->job));
        d->workers = calloc(WORKERS_MAX, sizeof *d->workers);
        if (!d->workers) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "dashboard: out of memory");
            goto cleanup;
        }
    }
    d->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL, on_request, d,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)64, MHD_OPTION_END);
    if (!d->d) {
        st = tidal_fail(TIDAL_ERR_IO, "dashboard: cannot listen on %s:%d: %s", host, o->port, strerror(errno));
        goto cleanup;
    }
    *out = d;
    return TIDAL_OK;
cleanup:
    dashboard_stop(d);
    return st;
}

int dashboard_port(const dashboard *d)
{
    const union MHD_DaemonInfo *i = d && d->d ? MHD_get_daemon_info(d->d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    return i ? (int)i->port : -1;
}

void dashboard_stop(dashboard *d)
{
    if (!d) return;
    if (d->d) MHD_stop_daemon(d->d);
    for (int i = 0; d->workers && i < d->n_workers; i++) json_decref(d->workers[i].last);
    free(d->workers);
    bus_kv_close(d->wkv);
    bus_close(d->bus);
    pthread_mutex_destroy(&d->mu);
    free(d);
}
