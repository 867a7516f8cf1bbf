/* client.c - reaching an environment in-process or over the bus (see
 * client.h for the contract and the outcomes). */
#include "envs/client.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envs/service.h"
#include "proto/codec.h"

struct env_client {
    env *local;        /* in-process, or */
    tidal_bus *bus;    /* over the bus */
    char name[CODEC_MAX_NAME_BYTES + 1];
    char subject[CODEC_MAX_NAME_BYTES + 16];
    env_client_opts o;
    pthread_mutex_t mu;
    uint64_t calls, retries;
    env_client_health health; /* under mu */
};

static env_client *client_new(void)
{
    env_client *c = calloc(1, sizeof *c);
    if (c) pthread_mutex_init(&c->mu, NULL);
    return c;
}

tidal_status env_client_local(const char *name, const char *config_json, env_client **out)
{
    *out = NULL;
    env_client *c = client_new();
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "env client: out of memory");
    tidal_status st = TIDAL_OK;
    TRY_GOTO(env_create(name, config_json, &c->local));
    snprintf(c->name, sizeof c->name, "%s", name);
    *out = c;
cleanup:
    if (st != TIDAL_OK) env_client_free(c);
    return st;
}

tidal_status env_client_remote(tidal_bus *b, const char *name, const env_client_opts *opts, env_client **out)
{
    *out = NULL;
    env_client *c = client_new();
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "env client: out of memory");
    tidal_status st = TIDAL_OK;
    TRY_GOTO(env_subject(name, c->subject, sizeof c->subject));
    snprintf(c->name, sizeof c->name, "%s", name);
    c->bus = b;
    c->o = opts ? *opts : (env_client_opts){.retries = -1};
    if (c->o.timeout_ms <= 0) c->o.timeout_ms = 10000;
    if (c->o.retries < 0) c->o.retries = 2;
    if (c->o.backoff_ms <= 0) c->o.backoff_ms = 50;
    *out = c;
cleanup:
    if (st != TIDAL_OK) {
        env_client_free(c);
        return tidal_wrap(st, "env client");
    }
    return TIDAL_OK;
}

void env_client_free(env_client *c)
{
    if (!c) return;
    env_free(c->local);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

int env_client_max_turns(const char *config_json)
{
    int turns = ENV_CLIENT_MAX_TURNS_DEFAULT;
    json_t *cfg = config_json ? json_loads(config_json, 0, NULL) : NULL;
    json_t *mt = cfg ? json_object_get(cfg, "max_turns") : NULL;
    if (json_is_integer(mt) && json_integer_value(mt) >= 1 && json_integer_value(mt) <= 1024)
        turns = (int)json_integer_value(mt);
    json_decref(cfg);
    return turns;
}

void env_client_stats(const env_client *c, uint64_t *calls, uint64_t *retries)
{
    env_client *m = (env_client *)c;
    pthread_mutex_lock(&m->mu);
    if (calls) *calls = m->calls;
    if (retries) *retries = m->retries;
    pthread_mutex_unlock(&m->mu);
}

void env_client_health_get(const env_client *c, env_client_health *out)
{
    env_client *m = (env_client *)c; /* the mutex, not the data, changes */
    pthread_mutex_lock(&m->mu);
    *out = m->health;
    pthread_mutex_unlock(&m->mu);
}

/* Record a call's final outcome st (its message, when it failed, is this
 * thread's error message). */
static void note_outcome(env_client *c, tidal_status st)
{
    env_client_health *h = &c->health;
    pthread_mutex_lock(&c->mu);
    if (st == TIDAL_OK) {
        h->answered++;
        h->failing = false;
        h->failing_since_unix_ms = 0, h->failed_in_run = 0;
    } else {
        h->failed++;
        if (!h->failing) h->failing_since_unix_ms = tidal_unix_ms();
        h->failing = true;
        h->failed_in_run++;
        snprintf(h->last_error, sizeof h->last_error, "%s", tidal_errmsg());
    }
    pthread_mutex_unlock(&c->mu);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The answer in rsp, checked, into out. */
static tidal_status take_response(const env_client *c, const Tidal__V1__EnvResponse *rsp, env_result *out)
{
    if (rsp->error[0]) /* tidal's services name the env in the text; a third party's may not */
        return strstr(rsp->error, c->name) ? tidal_fail(TIDAL_ERR_REMOTE, "%s", rsp->error)
                                           : tidal_fail(TIDAL_ERR_REMOTE, "env %s: %s", c->name, rsp->error);
    env_result_clear(out);
    out->reward = rsp->reward;
    out->done = rsp->done;
    tidal_status st = TIDAL_OK;
    if (rsp->observation[0]) TRY_GOTO(env_result_observe(out, "%s", rsp->observation));
    for (size_t i = 0; i < rsp->n_metrics; i++)
        TRY_GOTO(env_result_metric(out, rsp->metrics[i]->key, rsp->metrics[i]->value));
cleanup:
    if (st != TIDAL_OK) { /* what does not fit is the env's fault: a decode error of its answer */
        env_result_clear(out);
        return tidal_fail(TIDAL_ERR_DECODE, "env %s: the answer does not fit: %s", c->name, tidal_errmsg());
    }
    return TIDAL_OK;
}

/* The request sent once, its answer awaited. "No responders" and silence are
 * both timeouts for the caller (another attempt may find an instance). */
static tidal_status ask(const env_client *c, const void *buf, size_t len, bus_msg **reply)
{
    const tidal_status st = bus_request(c->bus, c->subject, buf, (int)len, c->o.timeout_ms, reply);
    if (st == TIDAL_ERR_NOT_FOUND) /* NATS's "no responders" */
        return tidal_fail(TIDAL_ERR_TIMEOUT, "env %s: no responders on %s (no instance of the env is running)",
                          c->name, c->subject);
    if (st == TIDAL_ERR_TIMEOUT)
        return tidal_fail(TIDAL_ERR_TIMEOUT, "env %s: no answer on %s in %d ms", c->name, c->subject, c->o.timeout_ms);
    return st;
}

/* One attempt over the bus. */
static tidal_status attempt(const env_client *c, const void *buf, size_t len, env_result *out)
{
    bus_msg *m = NULL;
    TRY(ask(c, buf, len, &m));
    Tidal__V1__EnvResponse *rsp = NULL;
    tidal_status st = codec_decode_env_response(bus_msg_data(m), (size_t)bus_msg_len(m), &rsp);
    bus_msg_destroy(m);
    /* an answer that decodes but is invalid is as unusable as one that does not decode */
    if (st != TIDAL_OK) return tidal_wrap(st == TIDAL_ERR_INVALID ? TIDAL_ERR_DECODE : st, "env %s: answer", c->name);
    st = take_response(c, rsp, out);
    tidal__v1__env_response__free_unpacked(rsp, NULL);
    return st;
}

/* One call, local or with its bounded retries over the bus. */
static tidal_status call_env(env_client *c, const env_call *call, env_result *out)
{
    pthread_mutex_lock(&c->mu);
    c->calls++;
    pthread_mutex_unlock(&c->mu);
    if (c->local) return env_handle(c->local, call, out);

    Tidal__V1__EnvRequest rq = TIDAL__V1__ENV_REQUEST__INIT;
    rq.schema_version = 1;
    rq.env = c->name;
    rq.session = (char *)(call->session ? call->session : "");
    rq.op = call->op == ENV_OP_RESET ? TIDAL__V1__ENV_OP__ENV_OP_RESET : TIDAL__V1__ENV_OP__ENV_OP_STEP;
    rq.task_json = (char *)(call->task_json ? call->task_json : "");
    rq.action_text = (char *)(call->action ? call->action : "");
    rq.action_tokens = (uint32_t *)call->action_tokens;
    rq.n_action_tokens = call->action_tokens ? call->n_action_tokens : 0;
    rq.turn = call->turn;
    void *buf = NULL;
    size_t len = 0;
    TRY(codec_encode(&rq.base, &buf, &len));
    tidal_status st = TIDAL_OK;
    /* bounded retries with backoff: a retry may reach another instance */
    for (int i = 0; i <= c->o.retries; i++) {
        if (i > 0) {
            int d = c->o.backoff_ms << (i - 1 < 6 ? i - 1 : 6);
            sleep_ms(d < 2000 ? d : 2000);
            pthread_mutex_lock(&c->mu);
            c->retries++;
            pthread_mutex_unlock(&c->mu);
        }
        st = attempt(c, buf, len, out);
        if (st == TIDAL_OK || st == TIDAL_ERR_PERMISSION) break;
    }
    free(buf);
    if (st != TIDAL_OK && c->o.retries > 0) tidal_wrap(st, "after %d attempts", c->o.retries + 1);
    return st;
}

tidal_status env_client_call(env_client *c, const env_call *call, env_result *out)
{
    env_result_clear(out);
    if (call->op != ENV_OP_RESET && call->op != ENV_OP_STEP) /* the caller's mistake: not the env's health */
        return tidal_fail(TIDAL_ERR_INVALID, "env %s: op %d is neither RESET nor STEP", c->name, (int)call->op);
    const tidal_status st = call_env(c, call, out);
    note_outcome(c, st);
    return st;
}
