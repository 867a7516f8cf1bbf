/* service.c - an environment on the bus (see service.h for the contract).
 *
 * The subscription's callback (nats.c's delivery thread) does only cheap
 * work: it answers what needs no handler - no reply subject (dropped and
 * counted: nobody could receive an answer), too large, queue full - and
 * queues the rest. `concurrency` threads take requests from the queue,
 * decode, call the handler, encode and reply. Stopping drains the
 * subscription (the server stops sending; what this client already holds is
 * still delivered to the callback), then lets the threads empty the queue.
 */
#include "envs/service.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/codec.h"

#define DEFAULT_CONCURRENCY 4
#define DEFAULT_MAX_REQUEST (4u << 20)

typedef struct queued {
    bus_msg *msg;
    struct queued *next;
} queued;

struct env_service {
    tidal_bus *bus;
    char name[CODEC_MAX_NAME_BYTES + 1];
    char subject[CODEC_MAX_NAME_BYTES + 16];
    env_service_fn fn;
    void *ctx;
    int concurrency, max_queue;
    size_t max_request;
    bus_sub *sub;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    queued *head, *tail;
    int queued_n;
    bool closing; /* the queue takes no more; threads exit when it is empty */

    pthread_t *threads;
    int n_threads;
    uint64_t served, failed, dropped; /* under mu */
};

tidal_status env_subject(const char *name, char *buf, size_t cap)
{
    tidal_status st = codec_check_name("env", name);
    if (st != TIDAL_OK) return st;
    snprintf(buf, cap, "tidal.env.%s", name);
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- replies */

static void count(env_service *s, bool failed)
{
    pthread_mutex_lock(&s->mu);
    s->served++;
    if (failed) s->failed++;
    pthread_mutex_unlock(&s->mu);
}

/* Encode and send r (or, when err is not NULL, an error reply with err). */
static void reply(env_service *s, bus_msg *m, const env_result *r, const char *err)
{
    Tidal__V1__EnvResponse rsp = TIDAL__V1__ENV_RESPONSE__INIT;
    Tidal__V1__EnvResponse__MetricsEntry entries[ENV_MAX_METRICS], *ptrs[ENV_MAX_METRICS];
    rsp.schema_version = 1;
    if (err) {
        rsp.error = (char *)(*err ? err : "error");
    } else {
        rsp.observation = r->observation ? r->observation : (char *)"";
        rsp.reward = r->reward;
        rsp.done = r->done;
        for (int i = 0; i < r->n_metrics && i < ENV_MAX_METRICS; i++) {
            entries[i] = (Tidal__V1__EnvResponse__MetricsEntry)TIDAL__V1__ENV_RESPONSE__METRICS_ENTRY__INIT;
            entries[i].key = (char *)r->metrics[i].name;
            entries[i].value = r->metrics[i].value;
            ptrs[i] = &entries[i];
        }
        rsp.n_metrics = (size_t)r->n_metrics;
        rsp.metrics = ptrs;
    }
    void *buf = NULL;
    size_t len = 0;
    tidal_status st = codec_encode(&rsp.base, &buf, &len);
    if (st == TIDAL_OK) st = bus_respond(s->bus, m, buf, (int)len);
    if (st != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "env %s: cannot answer %s: %s", s->name, bus_msg_reply(m), tidal_errmsg());
    free(buf);
    count(s, err != NULL);
}

static void reply_error(env_service *s, bus_msg *m, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void reply_error(env_service *s, bus_msg *m, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    reply(s, m, NULL, text);
}

/* ---------------------------------------------------------------- one request */

static void handle(env_service *s, bus_msg *m)
{
    Tidal__V1__EnvRequest *rq = NULL;
    tidal_status st = codec_decode_env_request(bus_msg_data(m), (size_t)bus_msg_len(m), &rq);
    if (st != TIDAL_OK) {
        reply_error(s, m, "env %s: the request does not decode: %s", s->name, tidal_errmsg());
        return;
    }
    if (rq->env[0] && strcmp(rq->env, s->name) != 0) {
        reply_error(s, m, "env %s: the request names env \"%.64s\"", s->name, rq->env);
    } else if (rq->op != TIDAL__V1__ENV_OP__ENV_OP_RESET && rq->op != TIDAL__V1__ENV_OP__ENV_OP_STEP) {
        reply_error(s, m, "env %s: op %d is neither ENV_OP_RESET nor ENV_OP_STEP", s->name, (int)rq->op);
    } else {
        env_call call = {.session = rq->session,
                         .op = rq->op == TIDAL__V1__ENV_OP__ENV_OP_RESET ? ENV_OP_RESET : ENV_OP_STEP,
                         .task_json = rq->task_json,
                         .action = rq->action_text,
                         .action_tokens = rq->action_tokens,
                         .n_action_tokens = rq->n_action_tokens,
                         .turn = rq->turn};
        env_result r = {0};
        tidal_clear();
        st = s->fn(s->ctx, &call, &r);
        if (st == TIDAL_OK && !isfinite(r.reward)) st = tidal_fail(TIDAL_ERR_INVALID, "reward is not finite");
        if (st != TIDAL_OK) {
            /* the answer names the env once: env_handle's messages already do */
            const char *msg = *tidal_errmsg() ? tidal_errmsg() : tidal_status_name(st);
            char own[CODEC_MAX_NAME_BYTES + 8];
            snprintf(own, sizeof own, "env %s: ", s->name);
            if (!strncmp(msg, own, strlen(own))) reply_error(s, m, "%s", msg);
            else reply_error(s, m, "%s%s", own, msg);
        } else
            reply(s, m, &r, NULL);
        env_result_clear(&r);
    }
    tidal__v1__env_request__free_unpacked(rq, NULL);
}

static void *worker(void *arg)
{
    env_service *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->head && !s->closing) pthread_cond_wait(&s->cv, &s->mu);
        queued *q = s->head;
        if (!q) { /* closing and empty */
            pthread_mutex_unlock(&s->mu);
            return NULL;
        }
        s->head = q->next;
        if (!s->head) s->tail = NULL;
        s->queued_n--;
        pthread_mutex_unlock(&s->mu);
        handle(s, q->msg);
        bus_msg_destroy(q->msg);
        free(q);
    }
}

/* The subscription callback: answer or queue. */
static void on_request(tidal_bus *b, bus_msg *m, void *closure)
{
    (void)b;
    env_service *s = closure;
    if (!bus_msg_reply(m)) { /* nobody to answer: count it, say it once in a while */
        pthread_mutex_lock(&s->mu);
        uint64_t n = ++s->dropped;
        pthread_mutex_unlock(&s->mu);
        if ((n & (n - 1)) == 0)
            tidal_log(TIDAL_LOG_WARN, "env %s: %" PRIu64 " request(s) without a reply subject dropped", s->name, n);
        bus_msg_destroy(m);
        return;
    }
    const size_t len = (size_t)bus_msg_len(m);
    if (len > s->max_request) {
        reply_error(s, m, "env %s: the request has %zu bytes, more than this service takes (%zu)", s->name, len,
                    s->max_request);
        bus_msg_destroy(m);
        return;
    }
    queued *q = malloc(sizeof *q);
    pthread_mutex_lock(&s->mu);
    const bool full = !q || s->queued_n >= s->max_queue || s->closing;
    if (!full) {
        q->msg = m;
        q->next = NULL;
        if (s->tail) s->tail->next = q;
        else s->head = q;
        s->tail = q;
        s->queued_n++;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (full) {
        free(q);
        reply_error(s, m, "env %s: busy (%d requests waiting): retry", s->name, s->max_queue);
        bus_msg_destroy(m);
    }
}

/* ---------------------------------------------------------------- life */

static void stop_threads(env_service *s)
{
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_threads; i++) pthread_join(s->threads[i], NULL);
    s->n_threads = 0;
}

static void service_free(env_service *s)
{
    if (!s) return;
    free(s->threads);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

tidal_status env_service_start(tidal_bus *b, const char *name, env_service_fn fn, void *ctx,
                               const env_service_opts *opts, env_service **out)
{
    *out = NULL;
    env_service_opts o = opts ? *opts : (env_service_opts){0};
    if (!fn) return tidal_fail(TIDAL_ERR_INVALID, "env service: no handler");
    if (o.concurrency < 0 || o.concurrency > 1024)
        return tidal_fail(TIDAL_ERR_INVALID, "env service: concurrency %d (1 .. 1024)", o.concurrency);
    env_service *s = calloc(1, sizeof *s);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "env service: out of memory");
    tidal_status st = env_subject(name, s->subject, sizeof s->subject);
    if (st != TIDAL_OK) {
        free(s);
        return tidal_wrap(st, "env service");
    }
    snprintf(s->name, sizeof s->name, "%s", name);
    s->bus = b;
    s->fn = fn;
    s->ctx = ctx;
    s->concurrency = o.concurrency ? o.concurrency : DEFAULT_CONCURRENCY;
    s->max_request = o.max_request_bytes ? o.max_request_bytes : DEFAULT_MAX_REQUEST;
    s->max_queue = o.max_queue > 0 ? o.max_queue : 64 * s->concurrency;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->threads = calloc((size_t)s->concurrency, sizeof *s->threads);
    if (!s->threads) {
        service_free(s);
        return tidal_fail(TIDAL_ERR_NOMEM, "env service: out of memory");
    }
    for (int i = 0; i < s->concurrency; i++) {
        if (pthread_create(&s->threads[i], NULL, worker, s) != 0) {
            stop_threads(s);
            service_free(s);
            return tidal_fail(TIDAL_ERR_IO, "env %s: cannot start handler thread %d", name, i);
        }
        s->n_threads++;
    }
    /* the queue group has the subject's name: every instance of the env shares it */
    st = bus_subscribe(b, s->subject, s->subject, on_request, s, &s->sub);
    if (st == TIDAL_OK) st = bus_flush(b, 5000); /* the interest is registered at the server */
    if (st != TIDAL_OK) {
        bus_unsubscribe(s->sub);
        stop_threads(s);
        service_free(s);
        return tidal_wrap(st, "env %s: subscribe", name);
    }
    *out = s;
    return TIDAL_OK;
}

void env_service_stop(env_service *s, int drain_ms)
{
    if (!s) return;
    if (bus_sub_drain(s->sub, drain_ms > 0 ? drain_ms : 1) != TIDAL_OK)
        tidal_log(TIDAL_LOG_WARN, "env %s: %s", s->name, tidal_errmsg());
    stop_threads(s); /* the threads answer what is queued, then exit */
    bus_unsubscribe(s->sub);
    uint64_t served, failed;
    env_service_stats(s, &served, &failed);
    tidal_log(TIDAL_LOG_INFO, "env %s: stopped after %" PRIu64 " requests (%" PRIu64 " answered with an error)",
              s->name, served, failed);
    service_free(s);
}

void env_service_stats(const env_service *s, uint64_t *served, uint64_t *failed)
{
    env_service *m = (env_service *)s; /* the mutex, not the data, changes */
    pthread_mutex_lock(&m->mu);
    if (served) *served = m->served;
    if (failed) *failed = m->failed;
    pthread_mutex_unlock(&m->mu);
}
