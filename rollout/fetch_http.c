/* fetch_http.c - ranged, parallel, verified fetch of a weights image (see fetch_http.h).
 *
 * One thread (the weights client's): a libcurl multi handle with `parallel`
 * easy handles, each carrying one request at a time: first the image split
 * into `parallel` runs of whole chunks, then any chunk asked for again (the
 * multi handle's connection cache keeps the connections alive). The write
 * callback copies into the image and tells a hashing thread how far its
 * request has come; the hashing thread hashes each chunk while its bytes are
 * still in cache (BLAKE3, ~5 GB/s a core) and gives the verdict, and a wrong
 * hash sends the chunk back to the queue.
 */
#include "rollout/fetch_http.h"

#include <curl/curl.h>
#include <sys/mman.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/digest.h"

#define DEFAULT_STALL_MS 10000
#define DEFAULT_PARALLEL 4
#define MAX_PARALLEL 64
#define TRIES 2 /* a chunk whose hash is wrong is asked for once more */
#define MAX_HASHERS 8
#define HAND_OVER_BYTES (256u << 10) /* new bytes a hashing thread is told of at once (or a chunk's end) */

static atomic_int corrupt_chunk = -1; /* the test hook */

int fetch_http_test_corrupt_chunk(int chunk) { return atomic_exchange(&corrupt_chunk, chunk); }

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_ALL); }

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

typedef struct fetch fetch;

/* One request's bytes, [off, end) of the image (whole chunks), hashed in
 * order as they land. got is the receiving thread's word to the hashing
 * thread (under f->mu); hashed and ds are the hashing thread's alone. */
typedef struct stream {
    uint64_t off, end;
    uint64_t got;
    uint64_t hashed;
    digest_state ds; /* the chunk being hashed, so far */
} stream;

typedef struct xfer {
    fetch *f;
    CURL *h;
    stream *s;      /* NULL: idle */
    uint64_t got, told; /* bytes written; of them, told to the hashing thread */
    int64_t flip;   /* the test hook: image offset whose byte is flipped as it is written; -1: none */
} xfer;

/* Shared with the hashing threads under mu: the streams, the verdicts. */
struct fetch {
    const Tidal__V1__WeightsManifest *w;
    uint8_t *buf;
    double last_progress;
    uint64_t bytes_in;
    CURLM *multi;       /* woken (curl_multi_wakeup) when a verdict is in */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    stream **streams;   /* every request's, in the order made; stream i is hashing thread (i % n_hashers)'s */
    int n_streams, n_hashers;
    signed char *verdict; /* per chunk: 0 none yet, 1 good, -1 hash differs (2, 3: collected) */
    int verdicts_new;   /* verdicts not yet collected */
    bool quit;
};

typedef struct hasher {
    fetch *f;
    int index;
} hasher;

/* A hashing thread: takes the new bytes of its streams as they are told of,
 * chunk by chunk (a chunk's bytes are still in cache from the copy), and
 * gives each finished chunk's verdict. */
static void *hasher_main(void *arg)
{
    const hasher *me = arg;
    fetch *f = me->f;
    const Tidal__V1__WeightsManifest *w = f->w;
    const uint64_t cb = w->http_chunk_bytes;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        stream *s = NULL;
        while (!f->quit && !s) {
            for (int i = me->index; i < f->n_streams && !s; i += f->n_hashers)
                if (f->streams[i]->hashed < f->streams[i]->got) s = f->streams[i];
            if (!s) pthread_cond_wait(&f->cv, &f->mu);
        }
        if (f->quit) break;
        const uint64_t upto = s->off + s->got;
        pthread_mutex_unlock(&f->mu);
        while (s->off + s->hashed < upto) {
            const uint64_t pos = s->off + s->hashed, chunk = pos / cb;
            const uint64_t chunk_end = (chunk + 1) * cb < w->bytes ? (chunk + 1) * cb : w->bytes;
            const uint64_t n = (upto < chunk_end ? upto : chunk_end) - pos;
            if (pos == chunk * cb) digest_init(&s->ds);
            digest_update(&s->ds, f->buf + pos, (size_t)n);
            s->hashed += n;
            if (pos + n == chunk_end) {
                uint8_t d[DIGEST_BYTES];
                digest_final(&s->ds, d);
                const bool good = digest_equal(d, w->http_chunk_digest[chunk].data);
                pthread_mutex_lock(&f->mu);
                f->verdict[chunk] = good ? 1 : -1;
                f->verdicts_new++;
                curl_multi_wakeup(f->multi);
                pthread_mutex_unlock(&f->mu);
            }
        }
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* Tell the hashing threads how far x's stream has come. */
static void tell(xfer *x)
{
    fetch *f = x->f;
    pthread_mutex_lock(&f->mu);
    x->s->got = x->got;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    x->told = x->got;
}

static size_t on_data(char *data, size_t size, size_t nmemb, void *arg)
{
    xfer *x = arg;
    const size_t n = size * nmemb;
    const uint64_t len = x->s->end - x->s->off, at = x->s->off + x->got;
    if (n > len - x->got) return 0; /* more than the range: libcurl fails the transfer (CURLE_WRITE_ERROR) */
    uint8_t *dst = x->f->buf + at;
    memcpy(dst, data, n);
    if (x->flip >= 0 && (uint64_t)x->flip >= at && (uint64_t)x->flip < at + n) {
        dst[x->flip - (int64_t)at] ^= 0x01;
        x->flip = -1;
    }
    x->got += n;
    x->f->bytes_in += n;
    x->f->last_progress = now_ms();
    const uint64_t cb = x->f->w->http_chunk_bytes;
    if (x->got - x->told >= HAND_OVER_BYTES || x->got == len || (at + n) / cb != (x->s->off + x->told) / cb) tell(x);
    return n;
}

/* A request: chunks [c0, c1) of the image. */
typedef struct request {
    int c0, c1;
} request;

/* Put x on request q: a new stream for the hashing threads, its URL, its
 * Range, the token, the callbacks. */
static tidal_status start_request(xfer *x, CURLM *multi, request q, const struct curl_slist *headers, int stall_ms)
{
    fetch *f = x->f;
    const Tidal__V1__WeightsManifest *w = f->w;
    const uint64_t cb = w->http_chunk_bytes;
    stream *s = calloc(1, sizeof *s);
    if (!s) return tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": out of memory for a request", w->version);
    s->off = (uint64_t)q.c0 * cb;
    s->end = (uint64_t)q.c1 * cb < w->bytes ? (uint64_t)q.c1 * cb : w->bytes;
    pthread_mutex_lock(&f->mu);
    f->streams[f->n_streams++] = s; /* room: see fetch_http_image */
    pthread_mutex_unlock(&f->mu);
    x->s = s;
    x->got = x->told = 0;
    x->flip = -1;
    const int want = atomic_load(&corrupt_chunk);
    if (want >= q.c0 && want < q.c1) {
        int expect = want;
        if (atomic_compare_exchange_strong(&corrupt_chunk, &expect, -1)) x->flip = (int64_t)((uint64_t)want * cb);
    }
    char range[64];
    snprintf(range, sizeof range, "%" PRIu64 "-%" PRIu64, s->off, s->end - 1);
    CURL *h = x->h;
    curl_easy_setopt(h, CURLOPT_URL, w->url);
    curl_easy_setopt(h, CURLOPT_RANGE, range); /* copied by libcurl */
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_PRIVATE, x);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)stall_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 512L * 1024);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    if (curl_multi_add_handle(multi, h) != CURLM_OK)
        return tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": %s: cannot add a transfer", w->version, w->url);
    return TIDAL_OK;
}

/* A finished transfer: TIDAL_OK when its bytes are in whole (the hashing
 * threads give the verdicts); else why it failed. */
static tidal_status request_done(xfer *x, CURLcode res)
{
    const Tidal__V1__WeightsManifest *w = x->f->w;
    const uint64_t v = w->version, off = x->s->off, len = x->s->end - x->s->off;
    long code = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    if (res != CURLE_OK && !(res == CURLE_WRITE_ERROR && code >= 200 && code < 300))
        return tidal_fail(res == CURLE_OPERATION_TIMEDOUT ? TIDAL_ERR_TIMEOUT : TIDAL_ERR_REMOTE,
                          "weights v%" PRIu64 ": GET %s bytes %" PRIu64 "-%" PRIu64 ": %s", v, w->url, off,
                          off + len - 1, curl_easy_strerror(res));
    if (code == 401 || code == 403)
        return tidal_fail(TIDAL_ERR_PERMISSION, "weights v%" PRIu64 ": GET %s: HTTP %ld: the server refused this worker's "
                          "token (TIDAL_WEIGHTS_HTTP_TOKEN or TIDAL_WEIGHTS_HTTP_TOKEN_FILE)", v, w->url, code);
    if (code == 404)
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "weights v%" PRIu64 ": GET %s: HTTP 404: the version is no longer served",
                          v, w->url);
    const bool whole = off == 0 && len == w->bytes;
    if (code != 206 && !(code == 200 && whole))
        return tidal_fail(TIDAL_ERR_REMOTE, "weights v%" PRIu64 ": GET %s bytes %" PRIu64 "-%" PRIu64 ": HTTP %ld "
                          "(want 206)", v, w->url, off, off + len - 1, code);
    if (x->got != len)
        return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": GET %s bytes %" PRIu64 "-%" PRIu64 ": %" PRIu64
                          " bytes, want %" PRIu64, v, w->url, off, off + len - 1, x->got, len);
    return TIDAL_OK;
}

/* Collect the hashing threads' verdicts: a good chunk is done, a wrong one
 * is asked for again on its own (at most TRIES askings in all), else the
 * fetch fails. */
static tidal_status collect(fetch *f, const int *tries, request *queue, int *q_tail, int *done)
{
    const Tidal__V1__WeightsManifest *w = f->w;
    tidal_status st = TIDAL_OK;
    pthread_mutex_lock(&f->mu);
    if (f->verdicts_new) {
        f->verdicts_new = 0;
        for (int c = 0; c < (int)w->n_http_chunk_digest && st == TIDAL_OK; c++) {
            const int vd = f->verdict[c];
            if (vd == 1) {
                (*done)++;
                f->verdict[c] = 2; /* counted */
                f->last_progress = now_ms();
            } else if (vd == -1 && tries[c] < TRIES) {
                tidal_log(TIDAL_LOG_WARN, "weights v%" PRIu64 ": GET %s chunk %d: digest differs from the manifest's; "
                          "asking again", w->version, w->url, c);
                f->verdict[c] = 3; /* asked again */
                queue[(*q_tail)++] = (request){c, c + 1};
            } else if (vd == -1) {
                st = tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": GET %s chunk %d: digest differs from the "
                                "manifest's %d times", w->version, w->url, c, tries[c]);
            }
        }
    }
    pthread_mutex_unlock(&f->mu);
    return st;
}

tidal_status fetch_http_image(const Tidal__V1__WeightsManifest *w, const fetch_http_opts *o, void **image,
                              uint64_t *len)
{
    *image = NULL;
    *len = 0;
    pthread_once(&curl_once, curl_init_once);
    const uint64_t v = w->version;
    if (!w->http_chunk_bytes || !w->url || strncmp(w->url, "http://", 7) != 0 || !w->n_http_chunk_digest)
        return tidal_fail(TIDAL_ERR_INVALID, "weights v%" PRIu64 ": not an http manifest", v);
    const int n_chunks = (int)w->n_http_chunk_digest;
    const int stall_ms = o && o->stall_ms > 0 ? o->stall_ms : DEFAULT_STALL_MS;
    int parallel = o && o->parallel > 0 ? o->parallel : DEFAULT_PARALLEL;
    if (parallel > MAX_PARALLEL) parallel = MAX_PARALLEL;
    if (parallel > n_chunks) parallel = n_chunks;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n_hashers = cores > 2 ? (int)(cores - 1) : 1;
    if (n_hashers > parallel) n_hashers = parallel;
    if (n_hashers > MAX_HASHERS) n_hashers = MAX_HASHERS;

    fetch f = {.w = w, .last_progress = now_ms(), .n_hashers = n_hashers};
    pthread_mutex_init(&f.mu, NULL);
    pthread_cond_init(&f.cv, NULL);
    xfer xs[MAX_PARALLEL];
    memset(xs, 0, sizeof xs);
    pthread_t threads[MAX_HASHERS];
    hasher hs[MAX_HASHERS];
    int n_started = 0;
    /* requests: the first `parallel` cover the image; then each chunk asked for again at most TRIES - 1 times */
    const int max_requests = parallel + n_chunks * (TRIES - 1);
    int *tries = calloc((size_t)n_chunks, sizeof *tries);
    request *queue = malloc((size_t)max_requests * sizeof *queue);
    f.streams = calloc((size_t)max_requests, sizeof *f.streams);
    f.verdict = calloc((size_t)n_chunks, 1);
    /* 2 MiB-aligned and backed by huge pages where the kernel allows: a fresh
     * 500 MB image otherwise costs ~125,000 page faults as the bytes land */
    if (o && o->reuse && *o->reuse && o->reuse_cap >= w->bytes) {
        f.buf = *o->reuse;
        *o->reuse = NULL;
    } else {
        if (posix_memalign((void **)&f.buf, 2u << 20, w->bytes) != 0) f.buf = NULL;
        if (f.buf) madvise(f.buf, w->bytes, MADV_HUGEPAGE);
    }
    f.multi = curl_multi_init();
    CURLM *multi = f.multi;
    struct curl_slist *headers = NULL;
    tidal_status st = TIDAL_OK;
    if (!tries || !queue || !f.streams || !f.verdict || !f.buf || !multi) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": cannot fetch %" PRIu64 " bytes (out of memory)", v, w->bytes);
        goto cleanup;
    }
    if (o && o->token) {
        char auth[1200];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->token);
        headers = curl_slist_append(headers, auth);
    }
    headers = curl_slist_append(headers, "Accept-Encoding: identity");
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)parallel);
    for (int i = 0; i < parallel; i++) {
        xs[i] = (xfer){.f = &f, .h = curl_easy_init()};
        if (!xs[i].h) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": out of memory for transfers", v);
            goto cleanup;
        }
    }
    for (; n_started < n_hashers; n_started++) {
        hs[n_started] = (hasher){.f = &f, .index = n_started};
        if (pthread_create(&threads[n_started], NULL, hasher_main, &hs[n_started]) != 0) break;
    }
    if (n_started < n_hashers) { /* streams are dealt to n_hashers threads: each must run */
        st = tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": cannot start a hashing thread", v);
        goto cleanup;
    }
    /* one request per connection, each a contiguous run of whole chunks: a
     * request per chunk drains the connection's pipe between chunks (on
     * loopback 122 of them cost a 509 MB fetch 0.06 s) */
    int q_head = 0, q_tail = 0, done = 0;
    for (int i = 0; i < parallel; i++)
        queue[q_tail++] = (request){(int)((int64_t)n_chunks * i / parallel), (int)((int64_t)n_chunks * (i + 1) / parallel)};
    while (done < n_chunks) {
        for (int i = 0; i < parallel && q_head < q_tail; i++) /* idle handles take the next requests */
            if (!xs[i].s) {
                const request q = queue[q_head++];
                for (int c = q.c0; c < q.c1; c++) tries[c]++;
                TRY_GOTO(start_request(&xs[i], multi, q, headers, stall_ms));
            }
        int running = 0;
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left = 0;
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE) continue;
            xfer *x = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            const CURLcode res = m->data.result;
            curl_multi_remove_handle(multi, x->h);
            const tidal_status rs = request_done(x, res);
            x->s = NULL;
            TRY_GOTO(rs);
            f.last_progress = now_ms();
        }
        TRY_GOTO(collect(&f, tries, queue, &q_tail, &done));
        if (done == n_chunks) break;
        if (o && o->cancelled && o->cancelled(o->cancelled_ctx)) {
            st = tidal_fail(TIDAL_ERR_CANCELLED, "weights v%" PRIu64 ": fetch from %s cancelled", v, w->url);
            goto cleanup;
        }
        pthread_mutex_lock(&f.mu);
        const double idle = now_ms() - f.last_progress;
        pthread_mutex_unlock(&f.mu);
        if (idle > stall_ms) {
            st = tidal_fail(TIDAL_ERR_TIMEOUT, "weights v%" PRIu64 ": %s: no byte for %d ms (weights.http_timeout_ms; "
                            "%" PRIu64 " of %" PRIu64 " bytes in): the server stopped answering", v, w->url, stall_ms,
                            f.bytes_in, w->bytes);
            goto cleanup;
        }
        curl_multi_poll(multi, NULL, 0, 50, NULL); /* a hashing thread's verdict wakes it too */
    }
    *image = f.buf;
    *len = w->bytes;
    f.buf = NULL;
cleanup:
    pthread_mutex_lock(&f.mu);
    f.quit = true;
    pthread_cond_broadcast(&f.cv);
    pthread_mutex_unlock(&f.mu);
    for (int i = 0; i < n_started; i++) pthread_join(threads[i], NULL); /* before the buffer and streams go */
    for (int i = 0; i < parallel; i++) {
        if (xs[i].h) {
            if (xs[i].s) curl_multi_remove_handle(multi, xs[i].h);
            curl_easy_cleanup(xs[i].h);
        }
    }
    if (multi) curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
    free(f.buf);
    for (int i = 0; i < f.n_streams; i++) free(f.streams[i]);
    free(f.streams);
    free(tries);
    free(queue);
    free(f.verdict);
    pthread_cond_destroy(&f.cv);
    pthread_mutex_destroy(&f.mu);
    return st;
}
