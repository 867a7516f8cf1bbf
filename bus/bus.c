/* bus.c - NATS connection, core messaging, JetStream and KV over nats.c 3.4.
 *
 * A thin layer with three jobs: turn nats.c statuses into tidal_status with
 * context (operation + subject/stream/key), apply tidal's policy everywhere
 * (reconnect forever, pending limits lifted, idempotent ensure-* calls), and
 * give the layers above a small surface. Chunked blobs live in blob.c.
 */
#include <errno.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "bus/bus_internal.h"
#include "bus/nkey.h"

#define NS_PER_MS 1000000LL
#define DEFAULT_JS_TIMEOUT_MS 5000
#define JS_ATTEMPT_MAX_WAIT_MS 2000 /* one attempt of bus_js_publish waits for its ack at most this */
#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define AUTH_TRIES 3 /* connects with credentials the server refuses before bus_connect gives up (see there) */
#define DEFAULT_RECONNECT_BUF (64 << 20)
/* A server cut off by the network (no TCP reset, only silence) is noticed
 * only by the client's pings: 2 unanswered pings 3 s apart (6-9 s) end the
 * connection and the client reconnects to another cluster node. nats.c's
 * default, 2 minutes, left roles talking to a cut-off node for minutes. */
#define PING_INTERVAL_MS 3000
#define MAX_PINGS_OUT 2
#define DEFAULT_ASYNC_MAX_PENDING 4096
#define DEFAULT_ACK_WAIT_MS 30000
#define IO_BUF_BYTES (1 << 20)
#define SERVER_DEFAULT_DUP_WINDOW_NS (120LL * 1000 * NS_PER_MS)


struct bus_sub {
    tidal_bus *b;
    natsSubscription *sub;
    bus_handler handler;
    void *closure;
    char what[192]; /* "subject" or "stream/consumer", for error messages */
    /* pull subscriptions: what to bind again after the consumer's leader changed (a cluster) */
    char stream[128], durable[128];
    int64_t quiet_since_ms;  /* fetches have brought nothing since then (0: the last one did) */
    /* subscriptions replaced by a rebind: unsubscribed but not destroyed, since a message fetched
     * through one is acked through it (nats.c's ack reads msg->sub); destroyed with s */
    natsSubscription **retired;
    int n_retired;
    /* callback subscriptions: nats.c reports (on_sub_done) when the subscription is closed and
     * its handler has returned; only then may s (the handler's closure) be freed */
    pthread_mutex_t done_mu;
    pthread_cond_t done_cv;
    bool done, done_cb;
};

struct bus_kv {
    tidal_bus *b;
    kvStore *kv;
    char bucket[128];
};

struct bus_kv_watcher {
    kvWatcher *w;
    char what[192];
};

int64_t bus_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

tidal_status bus_nats_fail(natsStatus s, jsErrCode jerr, const char *fmt, ...)
{
    tidal_status code;
    switch (s) {
    case NATS_OK: code = TIDAL_OK; break;
    case NATS_TIMEOUT: code = TIDAL_ERR_TIMEOUT; break;
    case NATS_NOT_FOUND: code = TIDAL_ERR_NOT_FOUND; break;
    case NATS_NO_RESPONDERS: code = TIDAL_ERR_NOT_FOUND; break;
    case NATS_NOT_PERMITTED: code = TIDAL_ERR_PERMISSION; break;
    case NATS_NO_MEMORY: code = TIDAL_ERR_NOMEM; break;
    case NATS_INVALID_ARG: code = TIDAL_ERR_INVALID; break;
    default: code = TIDAL_ERR_BUS; break;
    }
    if (jerr == JSStreamNotFoundErr || jerr == JSConsumerNotFoundErr) code = TIDAL_ERR_NOT_FOUND;
    if (jerr == JSStreamWrongLastSequenceErr) code = TIDAL_ERR_CONFLICT;

    char ctx[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    natsStatus ls;
    const char *detail = nats_GetLastError(&ls);
    const char *text = natsStatus_GetText(s);
    if (s == NATS_NO_RESPONDERS) text = "no responders (nothing listens on that subject)";
    if (detail && *detail && strcmp(detail, text) != 0 && ls == s)
        return tidal_fail(code, "%s: %s (%s)", ctx, text, detail);
    if (jerr) return tidal_fail(code, "%s: %s (JetStream error %d)", ctx, text, jerr);
    return tidal_fail(code, "%s: %s", ctx, text);
}

/* ------------------------------------------------------------ connection */

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)closure;
    if (natsConnection_IsClosed(nc)) return; /* our own bus_close */
    char url[256] = "";
    natsConnection_GetConnectedUrl(nc, url, sizeof url);
    tidal_log(TIDAL_LOG_WARN, "bus: disconnected from %s, reconnecting", url[0] ? url : "server");
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    (void)closure;
    char url[256] = "";
    natsConnection_GetConnectedUrl(nc, url, sizeof url);
    tidal_log(TIDAL_LOG_INFO, "bus: reconnected to %s", url);
}

static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    (void)closure;
    tidal_log(TIDAL_LOG_DEBUG, "bus: connection closed");
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    tidal_bus *b = closure;
    const char *text = NULL;
    natsConnection_GetLastError(nc, &text);
    if (err == NATS_NOT_PERMITTED) {
        pthread_mutex_lock(&b->lock);
        snprintf(b->perm_err, sizeof b->perm_err, "%s", text && *text ? text : "permissions violation");
        pthread_mutex_unlock(&b->lock);
    }
    if (err == NATS_SLOW_CONSUMER && sub) {
        tidal_log(TIDAL_LOG_ERROR, "bus: slow consumer on %s: messages dropped by the client",
                  natsSubscription_GetSubject(sub));
        return;
    }
    tidal_log(TIDAL_LOG_ERROR, "bus: async error: %s%s%s", natsStatus_GetText(err),
              text && *text ? ": " : "", text ? text : "");
}

/* Capped exponential backoff with jitter: 100 ms, 200 ms, ... 5 s. */
static int64_t reconnect_delay(natsConnection *nc, int attempts, void *closure)
{
    (void)nc;
    (void)closure;
    int shift = attempts < 6 ? attempts : 6;
    int64_t base = 100LL << shift;
    if (base > 5000) base = 5000;
    return base + rand() % (base / 5 + 1);
}

static void on_async_pub_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    tidal_bus *b = closure;
    pthread_mutex_lock(&b->lock);
    if (b->async_failed++ == 0)
        snprintf(b->async_first_err, sizeof b->async_first_err, "%s: %s%s%s",
                 pae->Msg ? natsMsg_GetSubject(pae->Msg) : "?", natsStatus_GetText(pae->Err),
                 pae->ErrText ? ": " : "", pae->ErrText ? pae->ErrText : "");
    pthread_mutex_unlock(&b->lock);
}

/* Split a comma-separated URL list into a malloc'd array of pointers into `buf`. */
static int split_urls(char *buf, const char **out, int cap)
{
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok && n < cap;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        if (*tok) out[n++] = tok;
    }
    return n;
}

/* What a credentials file holds: a user JWT with its seed (a NATS .creds,
 * decentralized auth), or a user nkey seed alone (`tidal creds`, `nk -gen
 * user`), whose public key *public_key then gets. */
static tidal_status creds_kind(const char *path, bool *nkey_only, char public_key[BUS_NKEY_PUBLIC_LEN + 1])
{
    char seed[BUS_NKEY_SEED_LEN + 1], line[256];
    bool jwt = false;
    FILE *f = fopen(path, "r");
    if (!f) return tidal_fail(TIDAL_ERR_INVALID, "bus: credentials %s: %s", path, strerror(errno));
    while (!jwt && fgets(line, sizeof line, f)) jwt = strstr(line, "BEGIN NATS USER JWT") != NULL;
    fclose(f);
    *nkey_only = !jwt;
    if (jwt) return TIDAL_OK; /* nats.c reads and checks it */
    tidal_status st = bus_nkey_seed_in_file(path, seed);
    if (st == TIDAL_OK) st = bus_nkey_public_of(seed, public_key);
    OPENSSL_cleanse(seed, sizeof seed);
    if (st != TIDAL_OK) { /* a file of the wrong kind is a configuration mistake */
        char why[512];
        snprintf(why, sizeof why, "%s", tidal_errmsg());
        return tidal_fail(TIDAL_ERR_INVALID, "bus: credentials %s: neither a user JWT nor a user nkey seed: %s", path, why);
    }
    return TIDAL_OK;
}

tidal_status bus_connect(tidal_bus **out, const bus_opts *o)
{
    *out = NULL;
    if (!o || !o->urls || !*o->urls) return tidal_fail(TIDAL_ERR_INVALID, "bus: connect: no server URL given");

    tidal_bus *b = calloc(1, sizeof *b);
    if (!b) return tidal_fail(TIDAL_ERR_NOMEM, "bus: connect: out of memory");
    pthread_mutex_init(&b->lock, NULL);
    b->js_timeout_ms = o->js_timeout_ms > 0 ? o->js_timeout_ms : DEFAULT_JS_TIMEOUT_MS;

    char *urlbuf = strdup(o->urls);
    const char *urls[32];
    natsOptions *no = NULL;
    natsStatus s = urlbuf ? natsOptions_Create(&no) : NATS_NO_MEMORY;
    int n = urlbuf ? split_urls(urlbuf, urls, 32) : 0;
    tidal_status st = TIDAL_OK;
    if (s == NATS_OK && n == 0) {
        st = tidal_fail(TIDAL_ERR_INVALID, "bus: connect: no server URL in '%s'", o->urls);
        goto cleanup;
    }
    if (s == NATS_OK) s = natsOptions_SetServers(no, urls, n);
    if (s == NATS_OK) s = natsOptions_SetName(no, o->name ? o->name : "tidal");
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(no, o->connect_timeout_ms > 0 ? o->connect_timeout_ms
                                                                 : DEFAULT_CONNECT_TIMEOUT_MS);
    /* trajectories are ~8 KB and blob chunks 4 MiB: the 32 KiB default costs
     * one syscall per few messages */
    if (s == NATS_OK) s = natsOptions_SetIOBufSize(no, IO_BUF_BYTES);
    if (s == NATS_OK) s = natsOptions_SetMaxReconnect(no, -1);
    if (s == NATS_OK) s = natsOptions_SetPingInterval(no, PING_INTERVAL_MS);
    if (s == NATS_OK) s = natsOptions_SetMaxPingsOut(no, MAX_PINGS_OUT);
    if (s == NATS_OK) s = natsOptions_SetCustomReconnectDelay(no, reconnect_delay, NULL);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(no, o->reconnect_buf_bytes > 0 ? o->reconnect_buf_bytes
                                                                          : DEFAULT_RECONNECT_BUF);
    if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(no, on_disconnected, b);
    if (s == NATS_OK) s = natsOptions_SetReconnectedCB(no, on_reconnected, b);
    if (s == NATS_OK) s = natsOptions_SetClosedCB(no, on_closed, b);
    if (s == NATS_OK) s = natsOptions_SetErrorHandler(no, on_error, b);
    if (s == NATS_OK && o->user) s = natsOptions_SetUserInfo(no, o->user, o->password ? o->password : "");
    if (s == NATS_OK && o->token) s = natsOptions_SetToken(no, o->token);
    if (s == NATS_OK && o->creds_file) {
        bool nkey_only = false;
        char public_key[BUS_NKEY_PUBLIC_LEN + 1];
        TRY_GOTO(creds_kind(o->creds_file, &nkey_only, public_key));
        s = nkey_only ? natsOptions_SetNKeyFromSeed(no, public_key, o->creds_file)
                      : natsOptions_SetUserCredentialsFromFiles(no, o->creds_file, NULL);
    }
    if (s == NATS_OK && (o->tls_ca || o->tls_cert)) s = natsOptions_SetSecure(no, true);
    if (s == NATS_OK && o->tls_ca) s = natsOptions_LoadCATrustedCertificates(no, o->tls_ca);
    if (s == NATS_OK && o->tls_cert)
        s = natsOptions_LoadCertificatesChain(no, o->tls_cert, o->tls_key ? o->tls_key : o->tls_cert);
    if (s != NATS_OK) {
        st = bus_nats_fail(s, 0, "bus: connect %s: bad connection options", o->urls);
        if (st == TIDAL_ERR_BUS) st = TIDAL_ERR_INVALID;
        goto cleanup;
    }
    s = natsConnection_Connect(&b->nc, no);
    /* With a user nkey, nats-server 2.9.10 refuses nats.c 3.4.1's CONNECT in
     * about 1 connect of 300 ("Signature missing" in the server's log: the
     * client sent the key but no signature of the nonce, which the server
     * did send). The same key gets in on the next try; a key the server does
     * not know is refused every time, so the error below still comes. */
    for (int tries = 1; s == NATS_CONNECTION_AUTH_FAILED && o->creds_file && tries < AUTH_TRIES; tries++) {
        tidal_log(TIDAL_LOG_DEBUG, "bus: connect %s: authorization refused (try %d of %d): trying again", o->urls,
                  tries, AUTH_TRIES);
        s = natsConnection_Connect(&b->nc, no);
    }
    if (s != NATS_OK) {
        st = bus_nats_fail(s, 0, "bus: connect %s", o->urls);
        /* nats.c's words for the two usual TLS set-up mistakes are cryptic */
        const char *hint = NULL;
        if (s == NATS_SSL_ERROR && !o->tls_ca)
            hint = "the server requires TLS and its certificate could not be verified: give the CA file (bus.tls.ca)";
        else if (s == NATS_PROTOCOL_ERROR && o->tls_ca && !o->tls_cert)
            hint = "the server closed the TLS connection: if it requires client certificates, give bus.tls.cert and bus.tls.key";
        if (hint) {
            char msg[768];
            snprintf(msg, sizeof msg, "%s", tidal_errmsg());
            tidal_fail(st, "%s; %s", msg, hint);
        }
        if (s == NATS_NO_SERVER || s == NATS_TIMEOUT) st = TIDAL_ERR_UNAVAILABLE;
        if (s == NATS_CONNECTION_AUTH_FAILED) st = TIDAL_ERR_PERMISSION;
        goto cleanup;
    }
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = b->js_timeout_ms;
    jo.PublishAsync.MaxPending = o->async_max_pending > 0 ? o->async_max_pending : DEFAULT_ASYNC_MAX_PENDING;
    jo.PublishAsync.ErrHandler = on_async_pub_error;
    jo.PublishAsync.ErrHandlerClosure = b;
    jo.PublishAsync.StallWait = b->js_timeout_ms;
    s = natsConnection_JetStream(&b->js, b->nc, &jo);
    if (s != NATS_OK) {
        st = bus_nats_fail(s, 0, "bus: connect %s: JetStream context", o->urls);
        goto cleanup;
    }
    b->replicas = o->replicas;
    if (b->replicas <= 0) { /* auto: a 3-node (or larger) cluster keeps 3 copies, one server 1 */
        char **servers = NULL;
        int n = 0;
        if (natsConnection_GetServers(b->nc, &servers, &n) == NATS_OK) {
            for (int i = 0; i < n; i++) free(servers[i]);
            free(servers);
        }
        b->replicas = n >= 3 ? 3 : 1;
    }
    tidal_log(TIDAL_LOG_DEBUG, "bus: streams and buckets this connection creates keep %d replica%s", b->replicas,
              b->replicas == 1 ? "" : "s");
    *out = b;
    b = NULL;
cleanup:
    natsOptions_Destroy(no);
    free(urlbuf);
    bus_close(b);
    return st;
}

void bus_close(tidal_bus *b)
{
    if (!b) return;
    if (b->nc && natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED) natsConnection_FlushTimeout(b->nc, 1000);
    jsCtx_Destroy(b->js);
    natsConnection_Destroy(b->nc);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

void bus_detach(tidal_bus *b)
{
    if (!b || !b->nc) return;
    if (natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED) natsConnection_FlushTimeout(b->nc, 1000);
    natsConnection_Close(b->nc);
}

int64_t bus_max_payload(const tidal_bus *b) { return natsConnection_GetMaxPayload(b->nc); }

bool bus_connected(const tidal_bus *b) { return natsConnection_Status(b->nc) == NATS_CONN_STATUS_CONNECTED; }

/* Report (and forget) a permission violation the server sent since the last
 * report. With `subject` non-NULL only a violation naming that subject counts. */
static tidal_status take_permission_error(tidal_bus *b, const char *what, const char *subject)
{
    char msg[512] = "";
    pthread_mutex_lock(&b->lock);
    if (b->perm_err[0] && (!subject || strstr(b->perm_err, subject))) {
        memcpy(msg, b->perm_err, sizeof msg);
        b->perm_err[0] = '\0';
    }
    pthread_mutex_unlock(&b->lock);
    if (!msg[0]) return TIDAL_OK;
    return tidal_fail(TIDAL_ERR_PERMISSION, "bus: %s: permission denied by the server: %s", what, msg);
}

tidal_status bus_flush(tidal_bus *b, int timeout_ms)
{
    natsStatus s = natsConnection_FlushTimeout(b->nc, timeout_ms);
    if (s != NATS_OK) return bus_nats_fail(s, 0, "bus: flush");
    /* The server's -ERR for a refused publish precedes the PONG that ended the
     * flush, so the connection already holds it; its error callback (which
     * fills perm_err) runs on another thread: give it a moment. */
    const char *text = NULL;
    if (natsConnection_GetLastError(b->nc, &text) == NATS_NOT_PERMITTED) {
        for (int i = 0; i < 50; i++) {
            pthread_mutex_lock(&b->lock);
            bool have = b->perm_err[0] != '\0';
            pthread_mutex_unlock(&b->lock);
            if (have) break;
            struct timespec ts = {0, 5 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return take_permission_error(b, "flush", NULL);
}

/* ------------------------------------------------------------ messages */

const char *bus_msg_subject(const bus_msg *m) { return natsMsg_GetSubject(m); }
const void *bus_msg_data(const bus_msg *m) { return natsMsg_GetData(m); }
int bus_msg_len(const bus_msg *m) { return natsMsg_GetDataLength(m); }

const char *bus_msg_reply(const bus_msg *m)
{
    const char *r = natsMsg_GetReply((natsMsg *)m);
    return r && *r ? r : NULL;
}

const char *bus_msg_header(bus_msg *m, const char *key)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(m, key, &v) != NATS_OK) {
        return NULL;
    }
    return v;
}

uint64_t bus_msg_delivered(bus_msg *m)
{
    jsMsgMetaData *md = NULL;
    if (natsMsg_GetMetaData(&md, m) != NATS_OK) {
        return 0;
    }
    uint64_t n = md->NumDelivered;
    jsMsgMetaData_Destroy(md);
    return n;
}

uint64_t bus_msg_stream_seq(bus_msg *m)
{
    uint64_t seq = natsMsg_GetSequence(m); /* messages from a direct get */
    if (seq) return seq;
    jsMsgMetaData *md = NULL;
    if (natsMsg_GetMetaData(&md, m) != NATS_OK) {
        return 0;
    }
    seq = md->Sequence.Stream;
    jsMsgMetaData_Destroy(md);
    return seq;
}

void bus_msg_destroy(bus_msg *m) { natsMsg_Destroy(m); }

/* ------------------------------------------------------------ core NATS */

tidal_status bus_publish(tidal_bus *b, const char *subject, const void *data, int len)
{
    natsStatus s = natsConnection_Publish(b->nc, subject, data, len);
    if (s != NATS_OK) return bus_nats_fail(s, 0, "bus: publish %s", subject);
    return TIDAL_OK;
}

tidal_status bus_request(tidal_bus *b, const char *subject, const void *data, int len,
                         int timeout_ms, bus_msg **reply)
{
    *reply = NULL;
    natsStatus s = natsConnection_Request(reply, b->nc, subject, data, len, timeout_ms);
    if (s == NATS_OK) return TIDAL_OK;
    if (s == NATS_TIMEOUT && take_permission_error(b, "request", subject) == TIDAL_ERR_PERMISSION)
        return TIDAL_ERR_PERMISSION;
    return bus_nats_fail(s, 0, "bus: request %s (%d ms)", subject, timeout_ms);
}

tidal_status bus_respond(tidal_bus *b, bus_msg *request, const void *data, int len)
{
    const char *reply = natsMsg_GetReply(request);
    if (!reply || !*reply)
        return tidal_fail(TIDAL_ERR_INVALID, "bus: respond to %s: the message has no reply subject",
                          natsMsg_GetSubject(request));
    return bus_publish(b, reply, data, len);
}

static void on_sub_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    bus_sub *s = closure;
    s->handler(s->b, msg, s->closure);
}

bool bus_wait_done(pthread_mutex_t *mu, pthread_cond_t *cv, const bool *done, int timeout_s)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += timeout_s;
    pthread_mutex_lock(mu);
    while (!*done && pthread_cond_timedwait(cv, mu, &until) == 0) {}
    const bool yes = *done;
    pthread_mutex_unlock(mu);
    return yes;
}

/* A zeroed bus_sub of b, its done lock and condition made; NULL when out of memory. */
static bus_sub *sub_new(tidal_bus *b)
{
    bus_sub *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->b = b;
    pthread_mutex_init(&s->done_mu, NULL);
    pthread_cond_init(&s->done_cv, NULL);
    return s;
}

static void on_sub_done(void *closure)
{
    bus_sub *s = closure;
    pthread_mutex_lock(&s->done_mu);
    s->done = true;
    pthread_cond_signal(&s->done_cv);
    pthread_mutex_unlock(&s->done_mu);
}

/* Pending limits are lifted on every subscription: the client's defaults
 * (65536 messages / 64 MiB) drop messages silently for a slow reader. */
static tidal_status lift_pending_limits(bus_sub *s)
{
    natsStatus ns = natsSubscription_SetPendingLimits(s->sub, -1, -1);
    if (ns != NATS_OK) return bus_nats_fail(ns, 0, "bus: set pending limits on %s", s->what);
    return TIDAL_OK;
}

static tidal_status subscribe(tidal_bus *b, const char *subject, const char *queue,
                              bus_handler handler, void *closure, bus_sub **out)
{
    *out = NULL;
    bus_sub *s = sub_new(b);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "bus: subscribe %s: out of memory", subject);
    s->handler = handler;
    s->closure = closure;
    snprintf(s->what, sizeof s->what, "%s", subject);
    tidal_status st = TIDAL_OK;
    natsStatus ns;
    if (handler) {
        ns = queue ? natsConnection_QueueSubscribe(&s->sub, b->nc, subject, queue, on_sub_msg, s)
                   : natsConnection_Subscribe(&s->sub, b->nc, subject, on_sub_msg, s);
        if (ns == NATS_OK) ns = natsSubscription_SetOnCompleteCB(s->sub, on_sub_done, s);
        s->done_cb = ns == NATS_OK;
    }
    else
        ns = queue ? natsConnection_QueueSubscribeSync(&s->sub, b->nc, subject, queue)
                   : natsConnection_SubscribeSync(&s->sub, b->nc, subject);
    if (ns != NATS_OK) {
        st = bus_nats_fail(ns, 0, "bus: subscribe %s", subject);
        goto cleanup;
    }
    TRY_GOTO(lift_pending_limits(s));
    *out = s;
    s = NULL;
cleanup:
    bus_unsubscribe(s); /* frees a bus_sub that has no subscription yet too */
    return st;
}

tidal_status bus_subscribe(tidal_bus *b, const char *subject, const char *queue,
                           bus_handler handler, void *closure, bus_sub **out)
{
    if (!handler) return tidal_fail(TIDAL_ERR_INVALID, "bus: subscribe %s: no handler", subject);
    return subscribe(b, subject, queue, handler, closure, out);
}

tidal_status bus_subscribe_sync(tidal_bus *b, const char *subject, const char *queue, bus_sub **out)
{
    return subscribe(b, subject, queue, NULL, NULL, out);
}

tidal_status bus_next(bus_sub *s, int timeout_ms, bus_msg **out)
{
    *out = NULL;
    natsStatus ns = natsSubscription_NextMsg(out, s->sub, timeout_ms);
    if (ns == NATS_TIMEOUT) return tidal_fail(TIDAL_ERR_TIMEOUT, "bus: next message on %s: none in %d ms", s->what, timeout_ms);
    if (ns != NATS_OK) return bus_nats_fail(ns, 0, "bus: next message on %s", s->what);
    return TIDAL_OK;
}

tidal_status bus_sub_drain(bus_sub *s, int timeout_ms)
{
    natsStatus ns = natsSubscription_DrainTimeout(s->sub, timeout_ms);
    if (ns != NATS_OK) return bus_nats_fail(ns, 0, "bus: drain %s", s->what);
    ns = natsSubscription_WaitForDrainCompletion(s->sub, timeout_ms);
    if (ns == NATS_TIMEOUT)
        return tidal_fail(TIDAL_ERR_TIMEOUT, "bus: drain %s: not done in %d ms", s->what, timeout_ms);
    if (ns != NATS_OK) return bus_nats_fail(ns, 0, "bus: drain %s", s->what);
    return TIDAL_OK;
}

tidal_status bus_sub_limit(bus_sub *s, int max_msgs)
{
    natsStatus ns = natsSubscription_AutoUnsubscribe(s->sub, max_msgs);
    if (ns != NATS_OK) return bus_nats_fail(ns, 0, "bus: limit %s to %d messages", s->what, max_msgs);
    return TIDAL_OK;
}

void bus_unsubscribe(bus_sub *s)
{
    if (!s) return;
    if (s->sub) {
        natsSubscription_Unsubscribe(s->sub);
        /* a handler still running uses s: wait for it (not from the handler itself) */
        const bool done = !s->done_cb || bus_wait_done(&s->done_mu, &s->done_cv, &s->done, 5);
        natsSubscription_Destroy(s->sub);
        if (!done) { /* kept, not freed: its handler may still run */
            tidal_log(TIDAL_LOG_WARN, "bus: unsubscribe %s: its handler did not return in 5 s", s->what);
            return;
        }
    }
    for (int i = 0; i < s->n_retired; i++) natsSubscription_Destroy(s->retired[i]);
    free(s->retired);
    pthread_cond_destroy(&s->done_cv);
    pthread_mutex_destroy(&s->done_mu);
    free(s);
}

/* ------------------------------------------------------------ JetStream streams */

static bool subjects_equal(const bus_stream_cfg *c, const jsStreamConfig *have)
{
    if (have->SubjectsLen != c->n_subjects) return false;
    for (int i = 0; i < c->n_subjects; i++) {
        bool found = false;
        for (int j = 0; j < have->SubjectsLen && !found; j++) found = !strcmp(c->subjects[i], have->Subjects[j]);
        if (!found) return false;
    }
    return true;
}

static void stream_cfg_fill(jsStreamConfig *sc, const bus_stream_cfg *c, int replicas)
{
    jsStreamConfig_Init(sc);
    sc->Name = c->name;
    sc->Replicas = c->replicas > 0 ? c->replicas : replicas;
    sc->Subjects = (const char **)c->subjects;
    sc->SubjectsLen = c->n_subjects;
    sc->Retention = c->work_queue ? js_WorkQueuePolicy : js_LimitsPolicy;
    sc->Storage = c->memory ? js_MemoryStorage : js_FileStorage;
    sc->MaxMsgs = c->max_msgs > 0 ? c->max_msgs : -1;
    sc->MaxBytes = c->max_bytes > 0 ? c->max_bytes : -1;
    sc->MaxAge = c->max_age_ms > 0 ? c->max_age_ms * NS_PER_MS : 0;
    sc->MaxMsgsPerSubject = c->max_msgs_per_subject > 0 ? c->max_msgs_per_subject : -1;
    sc->MaxMsgSize = c->max_msg_size > 0 ? c->max_msg_size : -1;
    sc->Duplicates = c->duplicate_window_ms > 0 ? c->duplicate_window_ms * NS_PER_MS
                                                : SERVER_DEFAULT_DUP_WINDOW_NS;
    sc->AllowDirect = c->allow_direct;
    sc->Discard = c->discard_new ? js_DiscardNew : js_DiscardOld;
}

/* Name of the first field where the stream's live config differs from want, or NULL. */
static const char *stream_cfg_diff(const jsStreamConfig *want, const jsStreamConfig *have,
                                   const bus_stream_cfg *c)
{
    if (!subjects_equal(c, have)) return "subjects";
    if (want->MaxMsgs != have->MaxMsgs) return "max_msgs";
    if (want->MaxBytes != have->MaxBytes) return "max_bytes";
    if (want->MaxAge != have->MaxAge) return "max_age";
    if (want->MaxMsgsPerSubject != have->MaxMsgsPerSubject) return "max_msgs_per_subject";
    if (want->MaxMsgSize != have->MaxMsgSize) return "max_msg_size";
    if (want->Duplicates != have->Duplicates) return "duplicate_window";
    if (want->AllowDirect != have->AllowDirect) return "allow_direct";
    if (want->Discard != have->Discard) return "discard";
    if (want->Replicas != have->Replicas) return "replicas";
    return NULL;
}

tidal_status bus_stream_ensure(tidal_bus *b, const bus_stream_cfg *c)
{
    if (!c || !c->name || !*c->name || c->n_subjects <= 0)
        return tidal_fail(TIDAL_ERR_INVALID, "bus: ensure stream: a name and at least one subject are required");
    jsStreamConfig want;
    stream_cfg_fill(&want, c, b->replicas);
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, b->js, c->name, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jerr = 0;
        s = js_AddStream(&si, b->js, &want, NULL, &jerr);
        jsStreamInfo_Destroy(si);
        si = NULL;
        if (s == NATS_OK) {
            tidal_log(TIDAL_LOG_DEBUG, "bus: created stream %s", c->name);
            return TIDAL_OK;
        }
        /* Another role may have created it between the two calls (the
         * controller and the trainer ensure the same streams at start-up);
         * then the server refuses ours ("subjects overlap", "name in use")
         * and the stream is there to compare with, as if it had been found. */
        tidal_status fail = bus_nats_fail(s, jerr, "bus: create stream %s", c->name);
        jsErrCode jerr2 = 0;
        if (js_GetStreamInfo(&si, b->js, c->name, NULL, &jerr2) != NATS_OK) {
            jsStreamInfo_Destroy(si);
            return fail;
        }
        tidal_clear();
        s = NATS_OK;
    }
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: stream info %s", c->name);

    tidal_status st = TIDAL_OK;
    if (si->Config->Retention != want.Retention)
        st = tidal_fail(TIDAL_ERR_CONFLICT, "bus: ensure stream %s: retention differs from the existing stream and cannot be changed (delete the stream first)", c->name);
    else if (si->Config->Storage != want.Storage)
        st = tidal_fail(TIDAL_ERR_CONFLICT, "bus: ensure stream %s: storage differs from the existing stream and cannot be changed (delete the stream first)", c->name);
    const char *field = st == TIDAL_OK ? stream_cfg_diff(&want, si->Config, c) : NULL;
    jsStreamInfo_Destroy(si);
    if (st != TIDAL_OK || !field) return st;

    si = NULL;
    jerr = 0;
    s = js_UpdateStream(&si, b->js, &want, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: update stream %s (%s changed)", c->name, field);
    tidal_log(TIDAL_LOG_INFO, "bus: updated stream %s (%s changed)", c->name, field);
    return TIDAL_OK;
}

tidal_status bus_stream_leader(tidal_bus *b, const char *stream, int *replicas, char *leader, size_t cap)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, b->js, stream, NULL, &jerr);
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: stream info %s", stream);
    if (replicas) *replicas = si->Config ? (int)si->Config->Replicas : 0;
    if (cap) snprintf(leader, cap, "%s", si->Cluster && si->Cluster->Leader ? si->Cluster->Leader : "");
    jsStreamInfo_Destroy(si);
    return TIDAL_OK;
}

tidal_status bus_stream_delete(tidal_bus *b, const char *stream)
{
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteStream(b->js, stream, NULL, &jerr);
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: delete stream %s", stream);
    return TIDAL_OK;
}

tidal_status bus_stream_state(tidal_bus *b, const char *stream, uint64_t *msgs, uint64_t *bytes)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetStreamInfo(&si, b->js, stream, NULL, &jerr);
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: stream info %s", stream);
    if (msgs) *msgs = si->State.Msgs;
    if (bytes) *bytes = si->State.Bytes;
    jsStreamInfo_Destroy(si);
    return TIDAL_OK;
}

tidal_status bus_stream_purge_subject(tidal_bus *b, const char *stream, const char *subject)
{
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Purge.Subject = subject;
    jsErrCode jerr = 0;
    natsStatus s = js_PurgeStream(b->js, stream, &o, &jerr);
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: purge %s from stream %s", subject, stream);
    return TIDAL_OK;
}

tidal_status bus_stream_get_last(tidal_bus *b, const char *stream, const char *subject, bus_msg **out)
{
    *out = NULL;
    jsDirectGetMsgOptions dg;
    jsDirectGetMsgOptions_Init(&dg);
    dg.LastBySubject = subject;
    natsStatus s = js_DirectGetMsg(out, b->js, stream, NULL, &dg);
    if (s == NATS_NOT_FOUND) {
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "bus: get last %s from stream %s: no message", subject, stream);
    }
    if (s != NATS_OK) return bus_nats_fail(s, 0, "bus: get last %s from stream %s", subject, stream);
    return TIDAL_OK;
}

tidal_status bus_stream_get_last_leader(tidal_bus *b, const char *stream, const char *subject, bus_msg **out)
{
    *out = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetLastMsg(out, b->js, stream, subject, NULL, &jerr);
    if (s != NATS_OK && take_permission_error(b, "get last message", NULL) == TIDAL_ERR_PERMISSION)
        return TIDAL_ERR_PERMISSION; /* refused, not slow: a timeout would be retried */
    if (s == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr)
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "bus: get last %s from stream %s's leader: no message", subject, stream);
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: get last %s from stream %s's leader", subject, stream);
    return TIDAL_OK;
}

/* ------------------------------------------------------------ JetStream consumers */

tidal_status bus_consumer_ensure(tidal_bus *b, const bus_consumer_cfg *c)
{
    if (!c || !c->stream || !c->durable)
        return tidal_fail(TIDAL_ERR_INVALID, "bus: ensure consumer: stream and durable name are required");
    jsConsumerConfig want;
    jsConsumerConfig_Init(&want);
    want.Durable = c->durable;
    want.AckPolicy = c->ack_all ? js_AckAll : js_AckExplicit;
    want.DeliverPolicy = js_DeliverAll;
    want.AckWait = (c->ack_wait_ms > 0 ? c->ack_wait_ms : DEFAULT_ACK_WAIT_MS) * NS_PER_MS;
    want.MaxDeliver = c->max_deliver > 0 ? c->max_deliver : -1;
    if (c->max_ack_pending > 0) want.MaxAckPending = c->max_ack_pending;
    want.FilterSubject = c->filter_subject;

    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, b->js, c->stream, c->durable, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        /* A stream another role has just created can answer "invalid stream" for a moment (its
         * assignment not yet applied on the server that takes the call): a few quick tries. */
        for (int attempt = 0; attempt < 4; attempt++) {
            if (attempt) usleep(50 * 1000 << attempt);
            jerr = 0;
            s = js_AddConsumer(&ci, b->js, c->stream, &want, NULL, &jerr);
            jsConsumerInfo_Destroy(ci);
            ci = NULL;
            if (s == NATS_OK || jerr == JSConsumerNameExistErr || jerr == JSConsumerExistingActiveErr) break;
        }
        if (s == NATS_OK) return TIDAL_OK;
        /* lost a creation race (see bus_stream_ensure): compare with the winner's */
        tidal_status fail = bus_nats_fail(s, jerr, "bus: create consumer %s on stream %s", c->durable, c->stream);
        jsErrCode jerr2 = 0;
        if (js_GetConsumerInfo(&ci, b->js, c->stream, c->durable, NULL, &jerr2) != NATS_OK) {
            jsConsumerInfo_Destroy(ci);
            return fail;
        }
        tidal_clear();
        s = NATS_OK;
    }
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: consumer info %s on stream %s", c->durable, c->stream);

    const jsConsumerConfig *have = ci->Config;
    const char *field = NULL;
    if (have->AckPolicy != want.AckPolicy) {
        jsConsumerInfo_Destroy(ci);
        return tidal_fail(TIDAL_ERR_CONFLICT, "bus: ensure consumer %s on stream %s: ack policy differs and cannot be changed (delete the consumer first)", c->durable, c->stream);
    }
    const char *hf = have->FilterSubject ? have->FilterSubject : "";
    const char *wf = want.FilterSubject ? want.FilterSubject : "";
    if (have->AckWait != want.AckWait) field = "ack_wait";
    else if (have->MaxDeliver != want.MaxDeliver) field = "max_deliver";
    else if (c->max_ack_pending > 0 && have->MaxAckPending != want.MaxAckPending) field = "max_ack_pending";
    else if (strcmp(hf, wf) != 0) field = "filter_subject";
    if (!want.MaxAckPending) want.MaxAckPending = have->MaxAckPending;
    jsConsumerInfo_Destroy(ci);
    if (!field) return TIDAL_OK;
    ci = NULL;
    jerr = 0;
    s = js_UpdateConsumer(&ci, b->js, c->stream, &want, NULL, &jerr);
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK)
        return bus_nats_fail(s, jerr, "bus: update consumer %s on stream %s (%s changed)", c->durable, c->stream, field);
    tidal_log(TIDAL_LOG_INFO, "bus: updated consumer %s on stream %s (%s changed)", c->durable, c->stream, field);
    return TIDAL_OK;
}

tidal_status bus_consumer_state(tidal_bus *b, const char *stream, const char *durable,
                                uint64_t *pending, uint64_t *ack_pending)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, b->js, stream, durable, NULL, &jerr);
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: consumer info %s on stream %s", durable, stream);
    if (pending) *pending = ci->NumPending;
    if (ack_pending) *ack_pending = (uint64_t)ci->NumAckPending;
    jsConsumerInfo_Destroy(ci);
    return TIDAL_OK;
}

tidal_status bus_consumer_delete(tidal_bus *b, const char *stream, const char *durable)
{
    jsErrCode jerr = 0;
    natsStatus s = js_DeleteConsumer(b->js, stream, durable, NULL, &jerr);
    if (s != NATS_OK) return bus_nats_fail(s, jerr, "bus: delete consumer %s on stream %s", durable, stream);
    return TIDAL_OK;
}

/* ------------------------------------------------------------ JetStream publish */

static bool publish_retryable(natsStatus s)
{
    return s == NATS_TIMEOUT || s == NATS_NO_RESPONDERS || s == NATS_CONNECTION_DISCONNECTED ||
           s == NATS_NOT_YET_CONNECTED;
}

tidal_status bus_js_publish(tidal_bus *b, const char *subject, const void *data, int len,
                            const char *msg_id, int timeout_ms, uint64_t *seq, bool *duplicate)
{
    if (timeout_ms <= 0) timeout_ms = b->js_timeout_ms;
    int64_t deadline = bus_now_ms() + timeout_ms;
    int attempt = 0;
    for (;;) {
        int64_t left = deadline - bus_now_ms();
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MsgId = msg_id;
        /* Several attempts fit in the deadline: a request sent while the connection was down (or
         * as the server restarted) gets no answer, and only a new attempt after the reconnect can
         * get one. The message id keeps retries from storing twice. */
        int64_t wait = b->js_timeout_ms < JS_ATTEMPT_MAX_WAIT_MS ? b->js_timeout_ms : JS_ATTEMPT_MAX_WAIT_MS;
        po.MaxWait = left < wait ? (left > 1 ? left : 1) : wait;
        jsPubAck *pa = NULL;
        jsErrCode jerr = 0;
        natsStatus s = js_Publish(&pa, b->js, subject, data, len, &po, &jerr);
        attempt++;
        if (s == NATS_OK) {
            if (seq) *seq = pa->Sequence;
            if (duplicate) *duplicate = pa->Duplicate;
            jsPubAck_Destroy(pa);
            return TIDAL_OK;
        }
        if (take_permission_error(b, "publish", subject) == TIDAL_ERR_PERMISSION) return TIDAL_ERR_PERMISSION;
        /* on a cluster "no responders" is also what a stream electing a new leader answers (nats.c
         * sets a JetStream error code with it): retried until the deadline. On one server it means
         * no stream takes the subject, a mistake to report at once. */
        const bool electing = s == NATS_NO_RESPONDERS && b->replicas > 1;
        if ((jerr && !electing) || !publish_retryable(s) || bus_now_ms() + 50 >= deadline) {
            if (s == NATS_NO_RESPONDERS)
                return tidal_fail(TIDAL_ERR_NOT_FOUND, "bus: publish %s: no JetStream stream took it (no stream for that subject, or JetStream unavailable) after %d attempts", subject, attempt);
            return bus_nats_fail(s, jerr, "bus: publish %s (after %d attempts)", subject, attempt);
        }
        struct timespec ts = {0, (long)(attempt < 5 ? 20 * attempt : 100) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

tidal_status bus_js_publish_async(tidal_bus *b, const char *subject, const void *data, int len,
                                  const char *msg_id)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    for (;;) {
        natsStatus s = js_PublishAsync(b->js, subject, data, len, &po);
        if (s == NATS_OK) return TIDAL_OK;
        /* stalled at MaxPending: keep waiting while acks flow */
        if (s == NATS_TIMEOUT && bus_connected(b)) {
            continue;
        }
        return bus_nats_fail(s, 0, "bus: async publish %s", subject);
    }
}

tidal_status bus_js_publish_wait(tidal_bus *b, int timeout_ms)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms;
    natsStatus s = js_PublishAsyncComplete(b->js, &po);
    uint64_t failed;
    char first[256];
    pthread_mutex_lock(&b->lock);
    failed = b->async_failed;
    memcpy(first, b->async_first_err, sizeof first);
    b->async_failed = 0;
    b->async_first_err[0] = '\0';
    pthread_mutex_unlock(&b->lock);
    if (failed)
        return tidal_fail(TIDAL_ERR_BUS, "bus: %llu async publishes failed; first: %s",
                          (unsigned long long)failed, first);
    if (s == NATS_TIMEOUT) {
        return tidal_fail(TIDAL_ERR_TIMEOUT, "bus: async publishes still unacknowledged after %d ms", timeout_ms);
    }
    if (s != NATS_OK) return bus_nats_fail(s, 0, "bus: wait for async publishes");
    return TIDAL_OK;
}

/* ------------------------------------------------------------ pull consumers */

tidal_status bus_pull_subscribe(tidal_bus *b, const char *stream, const char *durable, bus_sub **out)
{
    *out = NULL;
    bus_sub *s = sub_new(b);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "bus: pull subscribe %s/%s: out of memory", stream, durable);
    snprintf(s->what, sizeof s->what, "stream %s consumer %s", stream, durable);
    snprintf(s->stream, sizeof s->stream, "%s", stream);
    snprintf(s->durable, sizeof s->durable, "%s", durable);

    /* bind to the durable as it is: its filter is the subject */
    tidal_status st = TIDAL_OK;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus ns = js_GetConsumerInfo(&ci, b->js, stream, durable, NULL, &jerr);
    if (ns != NATS_OK) {
        st = bus_nats_fail(ns, jerr, "bus: pull subscribe: consumer %s on stream %s", durable, stream);
        goto cleanup;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Consumer = durable;
    so.ManualAck = true;
    const char *filter = ci->Config->FilterSubject;
    ns = js_PullSubscribe(&s->sub, b->js, filter && *filter ? filter : NULL, durable, NULL, &so, &jerr);
    if (ns != NATS_OK) {
        st = bus_nats_fail(ns, jerr, "bus: pull subscribe to consumer %s on stream %s", durable, stream);
        goto cleanup;
    }
    TRY_GOTO(lift_pending_limits(s));
    *out = s;
    s = NULL;
cleanup:
    jsConsumerInfo_Destroy(ci);
    bus_unsubscribe(s); /* frees a bus_sub that has no subscription yet too */
    return st;
}

/* Bind pull subscription s to its durable again (its consumer's leader moved,
 * or heartbeats were missed: the old subscription may never deliver again).
 * After a quiet spell (quiet) only when the consumer holds messages not yet
 * delivered: those should have come. */
static void pull_rebind(bus_sub *s, bool quiet)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js_GetConsumerInfo(&ci, s->b->js, s->stream, s->durable, NULL, &jerr) != NATS_OK) {
        jsConsumerInfo_Destroy(ci);
        return; /* not answering yet: the next fetch tries again */
    }
    if (quiet && ci->NumPending == 0) { /* nothing to fetch: quiet is just quiet */
        jsConsumerInfo_Destroy(ci);
        return;
    }
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = s->stream;
    so.Consumer = s->durable;
    so.ManualAck = true;
    const char *filter = ci->Config->FilterSubject;
    natsSubscription *fresh = NULL;
    natsStatus ns = js_PullSubscribe(&fresh, s->b->js, filter && *filter ? filter : NULL, s->durable, NULL, &so, &jerr);
    jsConsumerInfo_Destroy(ci);
    if (ns != NATS_OK) return;
    natsSubscription **r = realloc(s->retired, (size_t)(s->n_retired + 1) * sizeof *r);
    if (!r) { /* no room to keep the old one for the acks of what it fetched: stay on it */
        natsSubscription_Unsubscribe(fresh);
        natsSubscription_Destroy(fresh);
        return;
    }
    s->retired = r;
    /* unsubscribed (a bound durable consumer stays: nats.c deletes only those it made), kept */
    natsSubscription_Unsubscribe(s->sub);
    s->retired[s->n_retired++] = s->sub;
    s->sub = fresh;
    lift_pending_limits(s);
    tidal_log(TIDAL_LOG_INFO, "bus: bound to %s again", s->what);
}

tidal_status bus_fetch(bus_sub *s, int max, int timeout_ms, bus_msg **msgs, int *n)
{
    *n = 0;
    natsMsgList list = {0};
    jsErrCode jerr = 0;
    natsStatus ns = natsSubscription_Fetch(&list, s->sub, max, timeout_ms, &jerr);
    const int64_t now = bus_now_ms();
    if (ns == NATS_TIMEOUT && list.Count == 0) {
        if (!s->quiet_since_ms) s->quiet_since_ms = now;
        else if (s->durable[0] && now - s->quiet_since_ms > 15000) { /* long quiet: cheap to bind again, in case */
            pull_rebind(s, true);
            s->quiet_since_ms = now;
        }
        return tidal_fail(TIDAL_ERR_TIMEOUT, "bus: fetch from %s: nothing in %d ms", s->what, timeout_ms);
    }
    if (ns != NATS_OK && list.Count == 0) {
        tidal_status st = bus_nats_fail(ns, jerr, "bus: fetch from %s", s->what);
        if (s->durable[0]) { /* a leader change, missed heartbeats: bind again, keep the failure's message */
            char why[512];
            snprintf(why, sizeof why, "%s", tidal_errmsg());
            pull_rebind(s, false);
            tidal_fail(st, "%s", why);
        }
        return st;
    }
    s->quiet_since_ms = 0;
    for (int i = 0; i < list.Count && i < max; i++) {
        msgs[i] = list.Msgs[i];
        list.Msgs[i] = NULL; /* ownership moves to the caller */
    }
    *n = list.Count < max ? list.Count : max;
    natsMsgList_Destroy(&list);
    return TIDAL_OK;
}

static tidal_status ack_result(natsStatus s, bus_msg *m, const char *what)
{
    if (s == NATS_OK) return TIDAL_OK;
    return bus_nats_fail(s, 0, "bus: %s message on %s", what, natsMsg_GetSubject(m));
}

tidal_status bus_ack(bus_msg *m) { return ack_result(natsMsg_Ack(m, NULL), m, "ack"); }

tidal_status bus_ack_sync(bus_msg *m, int timeout_ms)
{
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = timeout_ms;
    jsErrCode jerr = 0;
    return ack_result(natsMsg_AckSync(m, &o, &jerr), m, "ack (sync)");
}

tidal_status bus_nak(bus_msg *m, int64_t delay_ms)
{
    natsStatus s = delay_ms > 0 ? natsMsg_NakWithDelay(m, delay_ms, NULL) : natsMsg_Nak(m, NULL);
    return ack_result(s, m, "nak");
}

tidal_status bus_in_progress(bus_msg *m) { return ack_result(natsMsg_InProgress(m, NULL), m, "in-progress ack"); }

tidal_status bus_term(bus_msg *m) { return ack_result(natsMsg_Term(m, NULL), m, "term"); }

/* ------------------------------------------------------------ KV */

static tidal_status kv_wrap(tidal_bus *b, kvStore *kv, const char *bucket, bus_kv **out)
{
    bus_kv *k = calloc(1, sizeof *k);
    if (!k) {
        kvStore_Destroy(kv);
        return tidal_fail(TIDAL_ERR_NOMEM, "bus: kv %s: out of memory", bucket);
    }
    k->b = b;
    k->kv = kv;
    snprintf(k->bucket, sizeof k->bucket, "%s", bucket);
    *out = k;
    return TIDAL_OK;
}

tidal_status bus_kv_open(tidal_bus *b, const char *bucket, bus_kv **out)
{
    *out = NULL;
    kvStore *kv = NULL;
    natsStatus s = js_KeyValue(&kv, b->js, bucket);
    if (s != NATS_OK) return bus_nats_fail(s, 0, "bus: open kv bucket %s", bucket);
    return kv_wrap(b, kv, bucket, out);
}

tidal_status bus_kv_ensure(tidal_bus *b, const bus_kv_cfg *c, bus_kv **out)
{
    *out = NULL;
    if (!c || !c->bucket || !*c->bucket) return tidal_fail(TIDAL_ERR_INVALID, "bus: ensure kv: no bucket name");
    kvStore *kv = NULL;
    natsStatus s = js_KeyValue(&kv, b->js, c->bucket);
    if (s == NATS_OK) {
        kvStatus *ks = NULL;
        if (kvStore_Status(&ks, kv) == NATS_OK) {
            int64_t ttl = kvStatus_TTL(ks);
            if (ttl != c->ttl_ms * NS_PER_MS)
                tidal_log(TIDAL_LOG_WARN, "bus: kv bucket %s exists with TTL %lld ms, not %lld ms; using it as it is",
                          c->bucket, (long long)(ttl / NS_PER_MS), (long long)c->ttl_ms);
            kvStatus_Destroy(ks);
        }
        return kv_wrap(b, kv, c->bucket, out);
    }
    if (s != NATS_NOT_FOUND) return bus_nats_fail(s, 0, "bus: open kv bucket %s", c->bucket);
    kvConfig kc;
    kvConfig_Init(&kc);
    kc.Bucket = c->bucket;
    kc.History = (uint8_t)(c->history > 0 ? (c->history > 64 ? 64 : c->history) : 1);
    kc.TTL = c->ttl_ms * NS_PER_MS;
    kc.StorageType = c->memory ? js_MemoryStorage : js_FileStorage;
    kc.Replicas = b->replicas;
    if (c->max_value_bytes > 0) kc.MaxValueSize = c->max_value_bytes;
    s = js_CreateKeyValue(&kv, b->js, &kc);
    if (s != NATS_OK) {
        /* lost a creation race (see bus_stream_ensure): use the winner's bucket */
        tidal_status fail = bus_nats_fail(s, 0, "bus: create kv bucket %s", c->bucket);
        kv = NULL;
        if (js_KeyValue(&kv, b->js, c->bucket) != NATS_OK) return fail;
        tidal_clear();
    }
    return kv_wrap(b, kv, c->bucket, out);
}

void bus_kv_close(bus_kv *kv)
{
    if (!kv) return;
    kvStore_Destroy(kv->kv);
    free(kv);
}

tidal_status bus_kv_get(bus_kv *kv, const char *key, void **val, size_t *len, uint64_t *rev)
{
    if (val) *val = NULL;
    kvEntry *e = NULL;
    natsStatus s = kvStore_Get(&e, kv->kv, key);
    if (s == NATS_NOT_FOUND) {
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "bus: kv %s: key %s not found", kv->bucket, key);
    }
    if (s != NATS_OK) return bus_nats_fail(s, 0, "bus: kv %s: get %s", kv->bucket, key);
    int n = kvEntry_ValueLen(e);
    if (val) {
        char *copy = malloc((size_t)n + 1);
        if (!copy) {
            kvEntry_Destroy(e);
            return tidal_fail(TIDAL_ERR_NOMEM, "bus: kv %s: get %s: out of memory", kv->bucket, key);
        }
        if (n) memcpy(copy, kvEntry_Value(e), (size_t)n);
        copy[n] = '\0';
        *val = copy;
    }
    if (len) *len = (size_t)n;
    if (rev) *rev = kvEntry_Revision(e);
    kvEntry_Destroy(e);
    return TIDAL_OK;
}

/* kv create/update report a lost race as a plain error whose text names the
 * wrong last sequence; give it its own code. */
static tidal_status kv_fail(bus_kv *kv, natsStatus s, const char *op, const char *key)
{
    natsStatus ls;
    const char *text = nats_GetLastError(&ls);
    if (text && (strstr(text, "wrong last sequence") || strstr(text, "key exists")))
        return tidal_fail(TIDAL_ERR_CONFLICT, "bus: kv %s: %s %s: revision conflict (%s)", kv->bucket, op, key, text);
    return bus_nats_fail(s, 0, "bus: kv %s: %s %s", kv->bucket, op, key);
}

typedef enum { KV_PUT, KV_CREATE, KV_UPDATE } kv_write_kind;

/* One path for put, create (only if absent) and update (only at revision `last`). */
static tidal_status kv_write(bus_kv *kv, kv_write_kind kind, const char *key, const void *val, size_t len,
                             uint64_t last, uint64_t *rev)
{
    static const char *const op[] = {"put", "create", "update"};
    if (len > (size_t)INT32_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "bus: kv %s: %s %s: value of %zu bytes is too large", kv->bucket,
                          op[kind], key, len);
    uint64_t r = 0;
    natsStatus s = kind == KV_PUT      ? kvStore_Put(&r, kv->kv, key, val, (int)len)
                   : kind == KV_CREATE ? kvStore_Create(&r, kv->kv, key, val, (int)len)
                                       : kvStore_Update(&r, kv->kv, key, val, (int)len, last);
    /* a write the server refused (no permission on $KV.<bucket>.<key>) times out
     * here; the refusal itself arrived asynchronously and says why */
    char subject[sizeof kv->bucket + 512];
    snprintf(subject, sizeof subject, "$KV.%s.%s", kv->bucket, key);
    if (s == NATS_TIMEOUT && take_permission_error(kv->b, op[kind], subject) == TIDAL_ERR_PERMISSION)
        return TIDAL_ERR_PERMISSION;
    /* only a put is safe to repeat after a timeout: a create or update that timed out may have
     * landed. "No responders" means nobody took it: on a cluster (a bucket electing its leader,
     * as right after it is made) every kind is repeated */
    const double t0 = tidal_clock_ms();
    while (((kind == KV_PUT && s == NATS_TIMEOUT) ||
            (s == NATS_NO_RESPONDERS && (kind == KV_PUT || kv->b->replicas > 1))) &&
           tidal_clock_ms() - t0 < BUS_KV_PUT_RETRY_MS) {
        nats_Sleep(250);
        s = kind == KV_PUT      ? kvStore_Put(&r, kv->kv, key, val, (int)len)
            : kind == KV_CREATE ? kvStore_Create(&r, kv->kv, key, val, (int)len)
                                : kvStore_Update(&r, kv->kv, key, val, (int)len, last);
        if (s == NATS_TIMEOUT && take_permission_error(kv->b, op[kind], subject) == TIDAL_ERR_PERMISSION)
            return TIDAL_ERR_PERMISSION;
    }
    if (s != NATS_OK) return kv_fail(kv, s, op[kind], key);
    if (rev) *rev = r;
    return TIDAL_OK;
}

tidal_status bus_kv_put(bus_kv *kv, const char *key, const void *val, size_t len, uint64_t *rev)
{
    return kv_write(kv, KV_PUT, key, val, len, 0, rev);
}

tidal_status bus_kv_create(bus_kv *kv, const char *key, const void *val, size_t len, uint64_t *rev)
{
    return kv_write(kv, KV_CREATE, key, val, len, 0, rev);
}

tidal_status bus_kv_update(bus_kv *kv, const char *key, const void *val, size_t len, uint64_t last,
                           uint64_t *rev)
{
    return kv_write(kv, KV_UPDATE, key, val, len, last, rev);
}

tidal_status bus_kv_delete(bus_kv *kv, const char *key)
{
    natsStatus s = kvStore_Delete(kv->kv, key);
    if (s != NATS_OK) return bus_nats_fail(s, 0, "bus: kv %s: delete %s", kv->bucket, key);
    return TIDAL_OK;
}

tidal_status bus_kv_watch(bus_kv *kv, const char *keys, bus_kv_watcher **out)
{
    *out = NULL;
    bus_kv_watcher *w = calloc(1, sizeof *w);
    if (!w) return tidal_fail(TIDAL_ERR_NOMEM, "bus: kv %s: watch: out of memory", kv->bucket);
    snprintf(w->what, sizeof w->what, "kv %s keys %s", kv->bucket, keys ? keys : ">");
    natsStatus s = keys ? kvStore_Watch(&w->w, kv->kv, keys, NULL) : kvStore_WatchAll(&w->w, kv->kv, NULL);
    if (s != NATS_OK) {
        free(w);
        return bus_nats_fail(s, 0, "bus: kv %s: watch %s", kv->bucket, keys ? keys : ">");
    }
    *out = w;
    return TIDAL_OK;
}

tidal_status bus_kv_watch_next(bus_kv_watcher *w, int timeout_ms, bus_kv_event *ev)
{
    memset(ev, 0, sizeof *ev);
    kvEntry *e = NULL;
    natsStatus s = kvWatcher_Next(&e, w->w, timeout_ms);
    if (s == NATS_TIMEOUT) {
        return tidal_fail(TIDAL_ERR_TIMEOUT, "bus: watch %s: no change in %d ms", w->what, timeout_ms);
    }
    if (s != NATS_OK) return bus_nats_fail(s, 0, "bus: watch %s", w->what);
    if (!e) {
        ev->kind = BUS_KV_INITIAL_DONE;
        return TIDAL_OK;
    }
    ev->kind = kvEntry_Operation(e) == kvOp_Put ? BUS_KV_PUT : BUS_KV_DELETE;
    ev->key = kvEntry_Key(e);
    ev->value = kvEntry_Value(e);
    ev->len = (size_t)kvEntry_ValueLen(e);
    ev->revision = kvEntry_Revision(e);
    ev->entry_ = e;
    return TIDAL_OK;
}

void bus_kv_event_clear(bus_kv_event *ev)
{
    if (ev->entry_) kvEntry_Destroy(ev->entry_);
    memset(ev, 0, sizeof *ev);
}

void bus_kv_watch_stop(bus_kv_watcher *w)
{
    if (!w) return;
    kvWatcher_Stop(w->w);
    kvWatcher_Destroy(w->w);
    free(w);
}
