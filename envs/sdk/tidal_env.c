/* tidal_env.c - libtidal_env (see tidal_env.h): the public SDK is a thin
 * layer over tidal's own env service (envs/service.h), so a custom
 * environment behaves exactly as `tidal env serve` does. */
#include "envs/sdk/tidal_env.h"

#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envs/service.h"
#include "bus/bus.h"

#define EXPORT __attribute__((visibility("default")))

static __thread char last_error[1024];

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return -1;
}

EXPORT const char *tidal_env_last_error(void) { return last_error; }

struct tidal_env_response {
    env_result r;
    bool failed;
    char error[1024];
};

struct tidal_env_server {
    tidal_bus *bus;
    env_service *svc;
    tidal_env_handler handler;
    tidal_env_score_fn score;
    void *user;
    char name[128];
};

/* ---------------------------------------------------------------- the response */

EXPORT int tidal_env_set_reward(tidal_env_response *r, double reward)
{
    if (!isfinite(reward)) return fail("reward %g is not finite", reward);
    r->r.reward = reward;
    return 0;
}

EXPORT int tidal_env_set_done(tidal_env_response *r, int done)
{
    r->r.done = done != 0;
    return 0;
}

EXPORT int tidal_env_set_observation(tidal_env_response *r, const char *text)
{
    if (env_result_observe(&r->r, "%s", text ? text : "") != TIDAL_OK) return fail("%s", tidal_errmsg());
    return 0;
}

EXPORT int tidal_env_add_metric(tidal_env_response *r, const char *name, double value)
{
    if (!name || !*name) return fail("a metric needs a name");
    if (!isfinite(value)) return fail("metric %s = %g is not finite", name, value);
    if (env_result_metric(&r->r, name, value) != TIDAL_OK) return fail("%s", tidal_errmsg());
    return 0;
}

/* a score function's own words for its failure (per thread, per request) */
static __thread char score_error[1024];

EXPORT int tidal_env_score_error(const char *message)
{
    snprintf(score_error, sizeof score_error, "%s", message ? message : "");
    return 0;
}

EXPORT int tidal_env_set_error(tidal_env_response *r, const char *message)
{
    r->failed = true;
    snprintf(r->error, sizeof r->error, "%s", message && *message ? message : "the handler failed");
    return 0;
}

/* ---------------------------------------------------------------- serving */

/* The env service's handler: the user's, through the public types. */
static tidal_status serve_one(void *ctx, const env_call *c, env_result *out)
{
    tidal_env_server *s = ctx;
    tidal_env_request rq = {.env = s->name,
                            .session = c->session ? c->session : "",
                            .op = c->op == ENV_OP_RESET ? TIDAL_ENV_OP_RESET : TIDAL_ENV_OP_STEP,
                            .task_json = c->task_json && *c->task_json ? c->task_json : "{}",
                            .action_text = c->action ? c->action : "",
                            .action_tokens = c->action_tokens,
                            .n_action_tokens = c->n_action_tokens,
                            .turn = c->turn};
    tidal_env_response rsp = {0};
    int rc = 0;
    if (s->handler) {
        rc = s->handler(s->user, &rq, &rsp);
    } else if (rq.op == TIDAL_ENV_OP_STEP) { /* a score function: RESET needs no call */
        double reward = 0.0;
        score_error[0] = '\0';
        rc = s->score(s->user, rq.task_json, rq.action_text, &reward);
        if (rc != 0) tidal_env_set_error(&rsp, score_error[0] ? score_error : NULL);
        else if (tidal_env_set_reward(&rsp, reward) != 0) tidal_env_set_error(&rsp, last_error);
        rsp.r.done = true;
    }
    if (rc != 0 || rsp.failed) {
        env_result_clear(&rsp.r);
        return tidal_fail(TIDAL_ERR_REMOTE, "%s", rsp.failed ? rsp.error : "the handler failed");
    }
    *out = rsp.r;
    return TIDAL_OK;
}

static int start(const tidal_env_options *o, tidal_env_handler h, tidal_env_score_fn f, void *user,
                 tidal_env_server **out)
{
    *out = NULL;
    if (!o || !o->name || !*o->name) return fail("tidal_env: options.name (the environment's name) is required");
    tidal_env_server *s = calloc(1, sizeof *s);
    if (!s) return fail("tidal_env: out of memory");
    snprintf(s->name, sizeof s->name, "%s", o->name);
    s->handler = h;
    s->score = f;
    s->user = user;
    char conn_name[160];
    snprintf(conn_name, sizeof conn_name, "env-%s", o->name);
    bus_opts bo = {.urls = o->url && *o->url ? o->url : "nats://127.0.0.1:4222",
                   .name = conn_name,
                   .user = o->user,
                   .password = o->password,
                   .token = o->token,
                   .creds_file = o->creds_file,
                   .tls_ca = o->tls_ca,
                   .tls_cert = o->tls_cert,
                   .tls_key = o->tls_key};
    tidal_status st = bus_connect(&s->bus, &bo);
    env_service_opts so = {.concurrency = o->concurrency, .max_request_bytes = o->max_request_bytes};
    if (st == TIDAL_OK) st = env_service_start(s->bus, o->name, serve_one, s, &so, &s->svc);
    if (st != TIDAL_OK) {
        fail("tidal_env: %s", tidal_errmsg());
        bus_close(s->bus);
        free(s);
        return -1;
    }
    *out = s;
    return 0;
}

EXPORT int tidal_env_start(const tidal_env_options *o, tidal_env_handler h, void *user, tidal_env_server **out)
{
    if (!h) return fail("tidal_env_start: no handler");
    return start(o, h, NULL, user, out);
}

EXPORT int tidal_env_start_score(const tidal_env_options *o, tidal_env_score_fn f, void *user,
                                 tidal_env_server **out)
{
    if (!f) return fail("tidal_env_start_score: no score function");
    return start(o, NULL, f, user, out);
}

EXPORT void tidal_env_stop(tidal_env_server *s)
{
    if (!s) return;
    env_service_stop(s->svc, 10000);
    bus_close(s->bus);
    free(s);
}

EXPORT uint64_t tidal_env_served(const tidal_env_server *s)
{
    uint64_t n = 0;
    env_service_stats(s->svc, &n, NULL);
    return n;
}

EXPORT uint64_t tidal_env_failed(const tidal_env_server *s)
{
    uint64_t n = 0;
    env_service_stats(s->svc, NULL, &n);
    return n;
}

/* ---------------------------------------------------------------- run */

static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

static int run(const tidal_env_options *o, tidal_env_handler h, tidal_env_score_fn f, void *user,
               int64_t stop_after_ms)
{
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    stop_signal = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    tidal_env_server *s = NULL;
    int rc = start(o, h, f, user, &s);
    if (rc == 0) {
        tidal_log(TIDAL_LOG_INFO, "env %s: serving on tidal.env.%s with %d threads", o->name, o->name,
                  o->concurrency > 0 ? o->concurrency : 4);
        for (int64_t waited = 0; !stop_signal && (stop_after_ms <= 0 || waited < stop_after_ms); waited += 50) {
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
        }
        if (stop_signal) tidal_log(TIDAL_LOG_INFO, "env %s: signal %d: draining", o->name, (int)stop_signal);
        tidal_env_stop(s);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return rc;
}

EXPORT int tidal_env_run(const tidal_env_options *o, tidal_env_handler h, void *user, int64_t stop_after_ms)
{
    if (!h) return fail("tidal_env_run: no handler");
    return run(o, h, NULL, user, stop_after_ms);
}

EXPORT int tidal_env_run_score(const tidal_env_options *o, tidal_env_score_fn f, void *user, int64_t stop_after_ms)
{
    if (!f) return fail("tidal_env_run_score: no score function");
    return run(o, NULL, f, user, stop_after_ms);
}
