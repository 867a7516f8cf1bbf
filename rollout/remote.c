/* remote.c - inference servers over HTTP as a generator (remote.h). */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/json.h"
#include "rollout/remote.h"

#define MAX_ENDPOINTS 64
#define REPLY_CAP (64u << 20) /* a response larger than this is refused */

tidal_status remote_dialect_parse(const char *name, remote_dialect *out)
{
    if (!strcmp(name, "vllm")) *out = REMOTE_VLLM;
    else if (!strcmp(name, "sglang")) *out = REMOTE_SGLANG;
    else return tidal_fail(TIDAL_ERR_INVALID, "dialect %s: want vllm or sglang", name);
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- the client */

typedef struct call {
    uint64_t id;
    engine_request rq;    /* prompt and stop ids point into owned copies below */
    int32_t *prompt;
    int32_t *stop_ids;
    void *user;
    char *body;           /* the request's JSON */
    int attempt;
    double not_before_ms; /* backoff: not sent again before this */
    CURL *h;              /* on the wire when non-NULL */
    char *reply;
    size_t reply_len;
    bool reply_too_big;
    uint64_t version;     /* the version the servers held when it was sent */
    struct call *next;
} call;

struct remote {
    remote_opts o;
    char *endpoint_buf;
    const char *endpoints[MAX_ENDPOINTS];
    int n_endpoints;
    char model[256];
    char auth[600];
    CURLM *multi;
    struct curl_slist *headers;
    call *waiting; /* not on the wire: new, or backing off */
    call *wire;    /* on the wire */
    int on_wire;
    engine_result **done; /* results, FIFO: done[done_at .. n_done) */
    int n_done, cap_done, done_at;
    uint64_t next_id, rr;
    uint64_t version;
    remote_stats stats;
    tidal_status failure; /* a request that failed for good: the next step reports it */
    char failure_msg[2400];
};

static double now_ms(void) { return tidal_clock_ms(); }

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_ALL); }

tidal_status remote_create(const remote_opts *o, remote **out)
{
    *out = NULL;
    pthread_once(&curl_once, curl_init_once);
    remote *r = calloc(1, sizeof *r);
    if (!r) return tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
    r->o = *o;
    if (r->o.connect_timeout_ms <= 0) r->o.connect_timeout_ms = 5000;
    if (r->o.request_timeout_ms <= 0) r->o.request_timeout_ms = 600000;
    if (r->o.retries < 0) r->o.retries = 3;
    if (r->o.in_flight <= 0) r->o.in_flight = 64;
    tidal_status st = TIDAL_OK;
    r->endpoint_buf = strdup(o->endpoints ? o->endpoints : "");
    if (!r->endpoint_buf) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
        goto cleanup;
    }
    for (char *save = NULL, *p = strtok_r(r->endpoint_buf, ", ", &save); p; p = strtok_r(NULL, ", ", &save)) {
        size_t n = strlen(p);
        while (n > 0 && p[n - 1] == '/') p[--n] = '\0';
        if (strncmp(p, "http://", 7) != 0 && strncmp(p, "https://", 8) != 0) {
            st = tidal_fail(TIDAL_ERR_INVALID, "remote: endpoint %s: want an http:// or https:// URL", p);
            goto cleanup;
        }
        if (r->n_endpoints == MAX_ENDPOINTS) {
            st = tidal_fail(TIDAL_ERR_INVALID, "remote: more than %d endpoints", MAX_ENDPOINTS);
            goto cleanup;
        }
        r->endpoints[r->n_endpoints++] = p;
    }
    if (r->n_endpoints == 0) {
        st = tidal_fail(TIDAL_ERR_INVALID, "remote: no endpoint: give the servers' URLs (rollout.endpoints)");
        goto cleanup;
    }
    snprintf(r->model, sizeof r->model, "%s", o->model ? o->model : "");
    r->o.endpoints = NULL, r->o.model = NULL, r->o.token = NULL; /* copied; do not keep the caller's */
    r->headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (o->token && *o->token) {
        snprintf(r->auth, sizeof r->auth, "Authorization: Bearer %s", o->token);
        r->headers = curl_slist_append(r->headers, r->auth);
    }
    r->multi = curl_multi_init();
    if (!r->multi || !r->headers) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "remote: cannot set up libcurl");
        goto cleanup;
    }
    curl_multi_setopt(r->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)r->o.in_flight);
    *out = r;
    return TIDAL_OK;
cleanup:
    remote_free(r);
    return st;
}

static void call_free(call *c)
{
    if (!c) return;
    free(c->prompt);
    free(c->stop_ids);
    free(c->body);
    free(c->reply);
    free(c);
}

void remote_free(remote *r)
{
    if (!r) return;
    for (call *c = r->wire, *n; c; c = n) {
        n = c->next;
        curl_multi_remove_handle(r->multi, c->h);
        curl_easy_cleanup(c->h);
        call_free(c);
    }
    for (call *c = r->waiting, *n; c; c = n) {
        n = c->next;
        call_free(c);
    }
    for (int i = r->done_at; i < r->n_done; i++) engine_result_free(r->done[i]);
    free(r->done);
    if (r->multi) curl_multi_cleanup(r->multi);
    curl_slist_free_all(r->headers);
    free(r->endpoint_buf);
    free(r);
}

static size_t on_reply(char *p, size_t size, size_t n, void *ctx)
{
    call *c = ctx;
    size_t k = size * n;
    if (c->reply_len + k > REPLY_CAP) {
        c->reply_too_big = true;
        return 0; /* curl fails the transfer: CURLE_WRITE_ERROR */
    }
    char *b = realloc(c->reply, c->reply_len + k + 1);
    if (!b) return 0;
    memcpy(b + c->reply_len, p, k);
    c->reply = b;
    c->reply_len += k;
    b[c->reply_len] = '\0';
    return k;
}

/* The JSON of c's request in r's dialect. */
static char *request_body(const remote *r, const call *c)
{
    const engine_request *q = &c->rq;
    json_t *ids = json_array(), *stops = json_array();
    for (int i = 0; i < q->prompt_len; i++) json_array_append_new(ids, json_integer(q->prompt[i]));
    for (int i = 0; i < q->n_stop_ids; i++) json_array_append_new(stops, json_integer(q->stop_ids[i]));
    const double top_p = q->sampling.top_p > 0 && q->sampling.top_p < 1 ? q->sampling.top_p : 1.0;
    const int top_k = q->sampling.top_k > 0 ? q->sampling.top_k : -1;
    json_t *v;
    if (r->o.dialect == REMOTE_VLLM) {
        v = json_pack("{sosisfsfsisfsIsosisbsbsbsbsi}", "prompt", ids, "max_tokens", q->max_new_tokens, "temperature",
                      (double)q->sampling.temperature, "top_p", top_p, "top_k", top_k, "min_p",
                      (double)q->sampling.min_p, "seed", (json_int_t)(q->sampling.seed & 0x7fffffffffffffffull),
                      "stop_token_ids", stops, "logprobs", 0, "return_token_ids", 1, "ignore_eos", 1,
                      "skip_special_tokens", 0, "include_stop_str_in_output", 1, "n", 1);
        if (v && r->model[0]) json_object_set_new(v, "model", json_string(r->model));
    } else {
        json_t *sp = json_pack("{sisfsfsisfsosbsbsbsI}", "max_new_tokens", q->max_new_tokens, "temperature",
                               (double)q->sampling.temperature, "top_p", top_p, "top_k", top_k, "min_p",
                               (double)q->sampling.min_p, "stop_token_ids", stops, "ignore_eos", 1,
                               "skip_special_tokens", 0, "no_stop_trim", 1, "sampling_seed",
                               (json_int_t)(q->sampling.seed & 0x7fffffffffffffffull));
        v = json_pack("{sosbsisiso}", "input_ids", ids, "return_logprob", 1, "logprob_start_len", -1,
                      "top_logprobs_num", 0, "sampling_params", sp);
    }
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return s;
}

static void push_waiting(remote *r, call *c)
{
    c->next = r->waiting;
    r->waiting = c;
}

static tidal_status remote_submit(void *impl, const engine_request *q, uint64_t *id)
{
    remote *r = impl;
    if (q->prompt_len < 1 || q->max_new_tokens < 1 || q->n_stop_strings > 0)
        return tidal_fail(TIDAL_ERR_INVALID, "remote: a request needs a prompt and max_new_tokens >= 1 (stop strings "
                          "are not sent to servers)");
    for (int i = 0; i < q->prompt_len; i++)
        if (q->prompt[i] < 0 || q->prompt[i] >= r->o.vocab)
            return tidal_fail(TIDAL_ERR_INVALID, "remote: prompt[%d] = %d is not a token id", i, q->prompt[i]);
    call *c = calloc(1, sizeof *c);
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
    c->rq = *q;
    c->prompt = malloc((size_t)q->prompt_len * sizeof *c->prompt);
    c->stop_ids = malloc((size_t)(q->n_stop_ids + 1) * sizeof *c->stop_ids);
    if (!c->prompt || !c->stop_ids) {
        call_free(c);
        return tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
    }
    memcpy(c->prompt, q->prompt, (size_t)q->prompt_len * sizeof *c->prompt);
    if (q->n_stop_ids) memcpy(c->stop_ids, q->stop_ids, (size_t)q->n_stop_ids * sizeof *c->stop_ids);
    c->rq.prompt = c->prompt, c->rq.stop_ids = c->stop_ids;
    c->user = q->user;
    c->id = ++r->next_id;
    if (!(c->body = request_body(r, c))) {
        call_free(c);
        return tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
    }
    push_waiting(r, c);
    if (id) *id = c->id;
    return TIDAL_OK;
}

/* Put c on the wire to its endpoint for this attempt. */
static tidal_status send_call(remote *r, call *c)
{
    const char *ep = r->endpoints[(c->id - 1 + (uint64_t)c->attempt) % (uint64_t)r->n_endpoints]; /* round robin from the first */
    char url[1200];
    snprintf(url, sizeof url, "%s%s", ep, r->o.dialect == REMOTE_VLLM ? "/v1/completions" : "/generate");
    CURL *h = curl_easy_init();
    if (!h) return tidal_fail(TIDAL_ERR_NOMEM, "remote: cannot make a request");
    free(c->reply);
    c->reply = NULL, c->reply_len = 0, c->reply_too_big = false;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_reply);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_PRIVATE, c);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)r->o.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)r->o.request_timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (curl_multi_add_handle(r->multi, h) != CURLM_OK) {
        curl_easy_cleanup(h);
        return tidal_fail(TIDAL_ERR_IO, "remote: cannot start a request to %s", ep);
    }
    c->h = h;
    c->version = r->version;
    c->next = r->wire;
    r->wire = c;
    r->on_wire++;
    r->stats.requests++;
    return TIDAL_OK;
}

static void unlink_wire(remote *r, call *c)
{
    for (call **l = &r->wire; *l; l = &(*l)->next)
        if (*l == c) {
            *l = c->next;
            break;
        }
    r->on_wire--;
}

static tidal_status result_push(remote *r, engine_result *res)
{
    if (r->n_done == r->cap_done) {
        if (r->done_at > 0) { /* compact what was taken */
            memmove(r->done, r->done + r->done_at, (size_t)(r->n_done - r->done_at) * sizeof *r->done);
            r->n_done -= r->done_at, r->done_at = 0;
        }
        if (r->n_done == r->cap_done) {
            int cap = r->cap_done ? 2 * r->cap_done : 64;
            engine_result **d = realloc(r->done, (size_t)cap * sizeof *d);
            if (!d) return tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
            r->done = d, r->cap_done = cap;
        }
    }
    r->done[r->n_done++] = res;
    return TIDAL_OK;
}

/* A reply that parsed: an engine_result for the episode. */
static tidal_status deliver(remote *r, call *c, remote_reply *rep)
{
    engine_result *res = calloc(1, sizeof *res);
    const int n = rep->n;
    if (!res) return tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
    res->id = c->id, res->user = c->user, res->finish = rep->finish, res->n = n;
    res->ids = rep->ids, res->logprobs = rep->logprobs;
    rep->ids = NULL, rep->logprobs = NULL;
    res->versions = malloc((size_t)(n ? n : 1) * sizeof *res->versions);
    res->truncated = malloc((size_t)(n ? n : 1) * sizeof *res->truncated);
    if (!res->versions || !res->truncated) {
        engine_result_free(res);
        return tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
    }
    const uint64_t v = rep->has_version ? rep->version : c->version;
    const bool trunc = (c->rq.sampling.top_k > 0) || (c->rq.sampling.top_p > 0 && c->rq.sampling.top_p < 1) ||
                       c->rq.sampling.min_p > 0 || c->rq.sampling.temperature == 0;
    for (int i = 0; i < n; i++) res->versions[i] = v, res->truncated[i] = trunc;
    res->stop_string = -1;
    res->prompt_len = c->rq.prompt_len;
    tidal_status st = result_push(r, res);
    if (st != TIDAL_OK) engine_result_free(res);
    return st;
}

/* One transfer ended: deliver, retry, or record the failure. */
static void transfer_done(remote *r, CURL *h, CURLcode code)
{
    call *c = NULL;
    curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&c);
    long http = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &http);
    char *url = NULL;
    curl_easy_getinfo(h, CURLINFO_EFFECTIVE_URL, &url);
    char where[1200];
    snprintf(where, sizeof where, "%s", url ? url : "?");
    curl_multi_remove_handle(r->multi, h);
    curl_easy_cleanup(h);
    unlink_wire(r, c);
    c->h = NULL;
    char why[1024] = "";
    bool retry = false;
    if (code != CURLE_OK) {
        snprintf(why, sizeof why, "%s", c->reply_too_big ? "a response over 64 MiB" : curl_easy_strerror(code));
        retry = !c->reply_too_big;
    } else if (http >= 500 || http == 429) {
        snprintf(why, sizeof why, "HTTP %ld: %.300s", http, c->reply ? c->reply : "");
        retry = true;
    } else if (http != 200) {
        snprintf(why, sizeof why, "HTTP %ld: %.300s", http, c->reply ? c->reply : "");
    } else {
        remote_reply rep;
        tidal_status st = r->o.dialect == REMOTE_VLLM
                              ? remote_parse_vllm(c->reply, c->reply_len, r->o.vocab, &rep)
                              : remote_parse_sglang(c->reply, c->reply_len, r->o.vocab, &rep);
        if (st == TIDAL_OK && rep.finish == ENGINE_FINISH_ABORT) { /* the server dropped it: ask again */
            r->stats.aborted++;
            remote_reply_clear(&rep);
            snprintf(why, sizeof why, "the server aborted the request");
            retry = true;
        } else if (st == TIDAL_OK) {
            st = deliver(r, c, &rep);
            remote_reply_clear(&rep);
            if (st == TIDAL_OK) {
                call_free(c);
                return;
            }
        }
        if (!retry) snprintf(why, sizeof why, "%s", tidal_errmsg());
    }
    if (retry && c->attempt < r->o.retries) {
        c->attempt++;
        r->stats.retries++;
        c->not_before_ms = now_ms() + 100.0 * (double)(1u << (c->attempt < 10 ? c->attempt : 10));
        tidal_log(TIDAL_LOG_WARN, "remote: %s: %s; retrying (attempt %d of %d)", where, why, c->attempt + 1,
                  r->o.retries + 1);
        push_waiting(r, c);
        return;
    }
    r->stats.failed++;
    if (r->failure == TIDAL_OK) {
        r->failure = retry ? TIDAL_ERR_UNAVAILABLE : TIDAL_ERR_REMOTE;
        snprintf(r->failure_msg, sizeof r->failure_msg, "remote: %.1100s: %.1100s%s", where, why,
                 retry ? " (retries exhausted)" : "");
    }
    call_free(c);
}

static tidal_status remote_step(void *impl)
{
    remote *r = impl;
    /* start what may go: new requests and retries whose backoff passed */
    const double t = now_ms();
    double next_wake = t + 50;
    for (call **l = &r->waiting; *l && r->on_wire < r->o.in_flight;) {
        call *c = *l;
        if (c->not_before_ms > t) {
            if (c->not_before_ms < next_wake) next_wake = c->not_before_ms;
            l = &c->next;
            continue;
        }
        *l = c->next;
        tidal_status st = send_call(r, c);
        if (st != TIDAL_OK) {
            push_waiting(r, c);
            return st;
        }
    }
    int running = 0;
    curl_multi_perform(r->multi, &running);
    if (r->on_wire > 0) {
        int ms = (int)(next_wake - now_ms());
        curl_multi_poll(r->multi, NULL, 0, ms > 0 ? ms : 1, NULL);
        curl_multi_perform(r->multi, &running);
    } else if (r->waiting) { /* only backing-off retries: wait for the first */
        struct timespec ts = {0, 1000000L * (long)(next_wake > t ? (next_wake - t < 50 ? next_wake - t : 50) : 1)};
        nanosleep(&ts, NULL);
    }
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(r->multi, &left)))
        if (m->msg == CURLMSG_DONE) transfer_done(r, m->easy_handle, m->data.result);
    if (r->failure != TIDAL_OK) {
        tidal_status st = r->failure;
        r->failure = TIDAL_OK;
        return tidal_fail(st, "%s", r->failure_msg);
    }
    return TIDAL_OK;
}

static bool remote_busy(const void *impl)
{
    const remote *r = impl;
    return r->wire != NULL || r->waiting != NULL;
}

static engine_result *remote_next(void *impl)
{
    remote *r = impl;
    if (r->done_at == r->n_done) return NULL;
    return r->done[r->done_at++];
}

static tidal_status remote_abort(void *impl, uint64_t id)
{
    remote *r = impl;
    for (call **l = &r->waiting; *l; l = &(*l)->next)
        if ((*l)->id == id) {
            call *c = *l;
            *l = c->next;
            call_free(c);
            return TIDAL_OK;
        }
    for (call *c = r->wire; c; c = c->next)
        if (c->id == id) {
            curl_multi_remove_handle(r->multi, c->h);
            curl_easy_cleanup(c->h);
            unlink_wire(r, c);
            call_free(c);
            return TIDAL_OK;
        }
    return tidal_fail(TIDAL_ERR_NOT_FOUND, "remote: request %llu is not in flight", (unsigned long long)id);
}

static uint64_t remote_gen_version(const void *impl) { return ((const remote *)impl)->version; }

static const generator_ops remote_ops = {remote_submit, remote_step, remote_busy, remote_next, remote_abort,
                                         remote_gen_version};

generator remote_generator(remote *r) { return (generator){.ops = &remote_ops, .impl = r}; }

uint64_t remote_version(const remote *r) { return r->version; }
void remote_set_version(remote *r, uint64_t v) { r->version = v; }
remote_stats remote_get_stats(const remote *r) { return r->stats; }

/* ---------------------------------------------------------------- blocking calls */

typedef struct sync_reply {
    char *body;
    size_t len;
} sync_reply;

static size_t on_sync(char *p, size_t size, size_t n, void *ctx)
{
    sync_reply *s = ctx;
    size_t k = size * n;
    if (s->len + k > REPLY_CAP) return 0;
    char *b = realloc(s->body, s->len + k + 1);
    if (!b) return 0;
    memcpy(b + s->len, p, k);
    s->body = b, s->len += k, b[s->len] = '\0';
    return k;
}

/* GET (body NULL) or POST `body` to endpoint + path; the status and the
 * answer's body (malloc'd) come back. TIDAL_ERR_UNAVAILABLE naming the URL
 * when there is no HTTP answer. */
static tidal_status http_sync(const remote *r, const char *ep, const char *path, const char *body, long timeout_ms,
                              long *status, char **reply)
{
    *reply = NULL;
    char url[1200];
    snprintf(url, sizeof url, "%s%s", ep, path);
    CURL *h = curl_easy_init();
    if (!h) return tidal_fail(TIDAL_ERR_NOMEM, "remote: cannot make a request");
    sync_reply s = {0};
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, r->headers);
    if (body) curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_sync);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)r->o.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    CURLcode code = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(h);
    if (code != CURLE_OK) {
        free(s.body);
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "remote: %s: %s", url, curl_easy_strerror(code));
    }
    *reply = s.body ? s.body : strdup("");
    return TIDAL_OK;
}

tidal_status remote_check(remote *r)
{
    for (int i = 0; i < r->n_endpoints; i++) {
        long status = 0;
        char *body = NULL;
        const char *path = r->o.dialect == REMOTE_VLLM ? "/v1/models" : "/get_model_info";
        TRY(http_sync(r, r->endpoints[i], path, NULL, 30000, &status, &body));
        if (status != 200) {
            tidal_status st = tidal_fail(TIDAL_ERR_UNAVAILABLE, "remote: %s%s: HTTP %ld: %.300s", r->endpoints[i],
                                         path, status, body);
            free(body);
            return st;
        }
        if (r->o.dialect == REMOTE_VLLM && !r->model[0]) {
            json_t *v = json_loads(body, 0, NULL);
            const char *name = json_string_value(jv_get(json_array_get(jv_get(v, "data"), 0), "id"));
            if (name) snprintf(r->model, sizeof r->model, "%s", name);
            json_decref(v);
        }
        free(body);
    }
    if (r->o.dialect == REMOTE_VLLM && !r->model[0])
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "remote: %s/v1/models names no model", r->endpoints[0]);
    return TIDAL_OK;
}

/* POST body to ep + path; HTTP 200 (and, when the answer says, success) or
 * TIDAL_ERR_REMOTE naming the URL and the server's message. */
static tidal_status post_ok(const remote *r, const char *ep, const char *path, const char *body)
{
    long status = 0;
    char *reply = NULL;
    TRY(http_sync(r, ep, path, body, 600000, &status, &reply));
    json_t *v = json_loads(reply, 0, NULL);
    json_t *ok = jv_get(v, "success");
    tidal_status st = TIDAL_OK;
    if (status != 200 || json_is_false(ok)) {
        const char *m = json_string_value(jv_get(v, "message"));
        json_t *e = jv_get(v, "error");
        if (!m) m = json_string_value(json_is_object(e) ? jv_get(e, "message") : e);
        st = tidal_fail(TIDAL_ERR_REMOTE, "remote: %s%s: HTTP %ld: %.400s", ep, path, status, m ? m : reply);
    }
    json_decref(v);
    free(reply);
    return st;
}

tidal_status remote_reload(remote *r, const char *dir, uint64_t v)
{
    if (remote_busy(r)) return tidal_fail(TIDAL_ERR_INVALID, "remote: reload with requests in flight");
    char body[5000];
    for (int i = 0; i < r->n_endpoints; i++) {
        const char *ep = r->endpoints[i];
        if (r->o.dialect == REMOTE_SGLANG) {
            json_t *b = json_pack("{sssssbsb}", "model_path", dir, "weight_version", "", "abort_all_requests", 0,
                                  "flush_cache", 1);
            char ver[32];
            snprintf(ver, sizeof ver, "%llu", (unsigned long long)v);
            json_object_set_new(b, "weight_version", json_string(ver));
            char *s = json_dumps(b, JSON_COMPACT);
            json_decref(b);
            tidal_status st = s ? post_ok(r, ep, "/update_weights_from_disk", s)
                                : tidal_fail(TIDAL_ERR_NOMEM, "remote: out of memory");
            free(s);
            TRY(st);
        } else {
            TRY(post_ok(r, ep, "/pause?mode=wait", "{}"));
            json_t *b = json_pack("{sss{ss}}", "method", "reload_weights", "kwargs", "weights_path", dir);
            char *s = b ? json_dumps(b, JSON_COMPACT) : NULL;
            json_decref(b);
            tidal_status st = s ? post_ok(r, ep, "/collective_rpc", s) : tidal_fail(TIDAL_ERR_NOMEM, "out of memory");
            free(s);
            if (st == TIDAL_OK) {
                snprintf(body, sizeof body, "{\"version\": \"%llu\"}", (unsigned long long)v);
                st = post_ok(r, ep, "/update_weight_version", body);
            }
            if (st == TIDAL_OK) st = post_ok(r, ep, "/reset_prefix_cache", "{}");
            /* resume whatever happened: a paused server serves no one */
            char keep[1024];
            snprintf(keep, sizeof keep, "%s", tidal_errmsg());
            tidal_status rs = post_ok(r, ep, "/resume", "{}");
            if (st != TIDAL_OK) return tidal_fail(st, "%s", keep);
            TRY(rs);
        }
    }
    r->version = v;
    return TIDAL_OK;
}
