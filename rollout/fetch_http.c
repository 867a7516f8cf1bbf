/* fetch_http.c - ranged, parallel, verified fetch of a weights image (see fetch_http.h).
 *
 * One thread (the weights client's): a libcurl multi handle with `parallel`
 * easy handles, each carrying one range at a time and given the next range
 * when it is done (the multi handle's connection cache keeps the connections
 * alive between them). The write callback copies into the image; a range
 * that is in is hashed by a small pool of hashing threads while the transfers
 * go on (BLAKE3, ~4 GB/s a core: on the receiving thread it would still
 * cost a quarter of the fetch), and a wrong hash sends the range back to the
 * queue.
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
#define TRIES 2 /* a range whose hash is wrong is asked for once more */
#define MAX_HASHERS 8

static atomic_int corrupt_range = -1; /* the test hook */

void fetch_http_test_corrupt_range(int range) { atomic_store(&corrupt_range, range); }

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_ALL); }

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

typedef struct fetch fetch;

typedef struct xfer {
    fetch *f;
    CURL *h;
    int range;     /* -1: idle */
    uint64_t off, len, got;
    bool flip;     /* the test hook: flip the first byte written */
} xfer;

/* Ranges waiting to be hashed, and the verdicts, shared with the hashing threads under mu. */
struct fetch {
    const Tidal__V1__WeightsManifest *w;
    uint8_t *buf;
    double last_progress;
    uint64_t bytes_in;
    CURLM *multi;       /* woken (curl_multi_wakeup) when a verdict is in */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int *to_hash;       /* ring of n_ranges */
    int th_head, th_count;
    signed char *verdict; /* per range: 0 none yet, 1 good, -1 hash differs */
    int verdicts_new;   /* verdicts not yet collected */
    bool quit;
};

static void *hasher_main(void *arg)
{
    fetch *f = arg;
    const Tidal__V1__WeightsManifest *w = f->w;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (!f->quit && f->th_count == 0) pthread_cond_wait(&f->cv, &f->mu);
        if (f->quit) break;
        const int r = f->to_hash[f->th_head];
        f->th_head = (f->th_head + 1) % (int)w->n_http_chunk_digest;
        f->th_count--;
        pthread_mutex_unlock(&f->mu);
        const uint64_t off = (uint64_t)r * w->http_chunk_bytes;
        const uint64_t n = w->bytes - off < w->http_chunk_bytes ? w->bytes - off : w->http_chunk_bytes;
        uint8_t d[DIGEST_BYTES];
        digest_compute(f->buf + off, (size_t)n, d);
        pthread_mutex_lock(&f->mu);
        f->verdict[r] = digest_equal(d, w->http_chunk_digest[r].data) ? 1 : -1;
        f->verdicts_new++;
        curl_multi_wakeup(f->multi);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static void hash_later(fetch *f, int r)
{
    pthread_mutex_lock(&f->mu);
    const int n = (int)f->w->n_http_chunk_digest;
    f->to_hash[(f->th_head + f->th_count) % n] = r;
    f->th_count++;
    f->verdict[r] = 0;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

static size_t on_data(char *data, size_t size, size_t nmemb, void *arg)
{
    xfer *x = arg;
    const size_t n = size * nmemb;
    if (n > x->len - x->got) return 0; /* more than the range: libcurl fails the transfer (CURLE_WRITE_ERROR) */
    uint8_t *dst = x->f->buf + x->off + x->got;
    memcpy(dst, data, n);
    if (x->flip && n) {
        dst[0] ^= 0x01;
        x->flip = false;
    }
    x->got += n;
    x->f->bytes_in += n;
    x->f->last_progress = now_ms();
    return n;
}

/* Put x on range r: its URL, its Range, the token, the callbacks. */
static tidal_status start_range(xfer *x, CURLM *multi, int r, const struct curl_slist *headers, int stall_ms)
{
    const Tidal__V1__WeightsManifest *w = x->f->w;
    x->range = r;
    x->off = (uint64_t)r * w->http_chunk_bytes;
    x->len = w->bytes - x->off < w->http_chunk_bytes ? w->bytes - x->off : w->http_chunk_bytes;
    x->got = 0;
    int want = r;
    x->flip = atomic_compare_exchange_strong(&corrupt_range, &want, -1);
    char range[64];
    snprintf(range, sizeof range, "%" PRIu64 "-%" PRIu64, x->off, x->off + x->len - 1);
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

/* A finished transfer: TIDAL_OK when its range is in whole (to be hashed);
 * else why it failed. */
static tidal_status range_done(xfer *x, CURLcode res)
{
    const Tidal__V1__WeightsManifest *w = x->f->w;
    const uint64_t v = w->version;
    long code = 0;
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    if (res != CURLE_OK && !(res == CURLE_WRITE_ERROR && code >= 200 && code < 300))
        return tidal_fail(res == CURLE_OPERATION_TIMEDOUT ? TIDAL_ERR_TIMEOUT : TIDAL_ERR_REMOTE,
                          "weights v%" PRIu64 ": GET %s range %d: %s", v, w->url, x->range, curl_easy_strerror(res));
    if (code == 401 || code == 403)
        return tidal_fail(TIDAL_ERR_PERMISSION, "weights v%" PRIu64 ": GET %s: HTTP %ld: the server refused this worker's "
                          "token (TIDAL_WEIGHTS_HTTP_TOKEN or TIDAL_WEIGHTS_HTTP_TOKEN_FILE)", v, w->url, code);
    if (code == 404)
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "weights v%" PRIu64 ": GET %s: HTTP 404: the version is no longer served",
                          v, w->url);
    const bool whole = x->off == 0 && x->len == w->bytes;
    if (code != 206 && !(code == 200 && whole))
        return tidal_fail(TIDAL_ERR_REMOTE, "weights v%" PRIu64 ": GET %s range %d: HTTP %ld (want 206)", v, w->url,
                          x->range, code);
    if (x->got != x->len)
        return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": GET %s range %d: %" PRIu64 " bytes, want %" PRIu64,
                          v, w->url, x->range, x->got, x->len);
    return TIDAL_OK;
}

/* Collect the hashing threads' verdicts: a good range is done, a wrong
 * one goes back to the queue (at most TRIES askings), else the fetch fails. */
static tidal_status collect(fetch *f, const int *tries, int *queue, int *q_tail, int *done)
{
    const Tidal__V1__WeightsManifest *w = f->w;
    tidal_status st = TIDAL_OK;
    pthread_mutex_lock(&f->mu);
    if (f->verdicts_new) {
        f->verdicts_new = 0;
        for (int r = 0; r < (int)w->n_http_chunk_digest && st == TIDAL_OK; r++) {
            const int vd = f->verdict[r];
            if (vd == 1) {
                (*done)++;
                f->verdict[r] = 2; /* counted */
                f->last_progress = now_ms();
            } else if (vd == -1 && tries[r] < TRIES) {
                tidal_log(TIDAL_LOG_WARN, "weights v%" PRIu64 ": GET %s range %d: digest differs from the manifest's; "
                          "asking again", w->version, w->url, r);
                f->verdict[r] = 3; /* asked again */
                queue[(*q_tail)++] = r;
            } else if (vd == -1) {
                st = tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": GET %s range %d: digest differs from the "
                                "manifest's %d times", w->version, w->url, r, tries[r]);
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
    const int n_ranges = (int)w->n_http_chunk_digest;
    const int stall_ms = o && o->stall_ms > 0 ? o->stall_ms : DEFAULT_STALL_MS;
    int parallel = o && o->parallel > 0 ? o->parallel : DEFAULT_PARALLEL;
    if (parallel > MAX_PARALLEL) parallel = MAX_PARALLEL;
    if (parallel > n_ranges) parallel = n_ranges;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n_hashers = cores > 2 ? (int)(cores - 1) : 1;
    if (n_hashers > parallel) n_hashers = parallel;
    if (n_hashers > MAX_HASHERS) n_hashers = MAX_HASHERS;

    fetch f = {.w = w, .last_progress = now_ms()};
    pthread_mutex_init(&f.mu, NULL);
    pthread_cond_init(&f.cv, NULL);
    xfer xs[MAX_PARALLEL];
    memset(xs, 0, sizeof xs);
    pthread_t hashers[MAX_HASHERS];
    int n_started = 0;
    int *tries = calloc((size_t)n_ranges, sizeof *tries);
    int *queue = malloc((size_t)n_ranges * TRIES * sizeof *queue); /* ranges to ask for: each at most TRIES times */
    f.to_hash = malloc((size_t)n_ranges * sizeof *f.to_hash);
    f.verdict = calloc((size_t)n_ranges, 1);
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
    if (!tries || !queue || !f.to_hash || !f.verdict || !f.buf || !multi) {
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
        xs[i] = (xfer){.f = &f, .range = -1, .h = curl_easy_init()};
        if (!xs[i].h) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": out of memory for transfers", v);
            goto cleanup;
        }
    }
    for (; n_started < n_hashers; n_started++)
        if (pthread_create(&hashers[n_started], NULL, hasher_main, &f) != 0) break;
    if (n_started == 0) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": cannot start a hashing thread", v);
        goto cleanup;
    }
    int q_head = 0, q_tail = 0, done = 0;
    for (int r = 0; r < n_ranges; r++) queue[q_tail++] = r;
    for (int i = 0; i < parallel && q_head < q_tail; i++) {
        tries[queue[q_head]]++;
        TRY_GOTO(start_range(&xs[i], multi, queue[q_head++], headers, stall_ms));
    }
    while (done < n_ranges) {
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
            TRY_GOTO(range_done(x, res));
            hash_later(&f, x->range);
            x->range = -1;
            f.last_progress = now_ms();
        }
        TRY_GOTO(collect(&f, tries, queue, &q_tail, &done));
        for (int i = 0; i < parallel && q_head < q_tail; i++) /* idle handles take the next ranges */
            if (xs[i].range < 0) {
                tries[queue[q_head]]++;
                TRY_GOTO(start_range(&xs[i], multi, queue[q_head++], headers, stall_ms));
            }
        if (done == n_ranges) break;
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
    for (int i = 0; i < n_started; i++) pthread_join(hashers[i], NULL); /* before the buffer goes */
    for (int i = 0; i < parallel; i++) {
        if (xs[i].h) {
            if (xs[i].range >= 0) curl_multi_remove_handle(multi, xs[i].h);
            curl_easy_cleanup(xs[i].h);
        }
    }
    if (multi) curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
    free(f.buf);
    free(tries);
    free(queue);
    free(f.to_hash);
    free(f.verdict);
    pthread_cond_destroy(&f.cv);
    pthread_mutex_destroy(&f.mu);
    return st;
}
