/* publish_http.c - the trainer's weights server (see publish_http.h).
 *
 * Each served image is copied into memory of its own, 2 MiB-aligned and
 * backed by transparent huge pages where the kernel allows, and a response
 * is sent from it with send(). An image is reference-counted: the served
 * list holds one reference and every response one more, so pruning a
 * version that a worker is still fetching frees it only when that response
 * is done. A thread per connection (as serve/ does): a slow worker holds
 * its own thread, never another's.
 *
 * Why not sendfile from a memfd, as nginx sends a cached file: measured on
 * a 2-core VM (docs/benchmarks.md), a memfd's pages are 4 KiB shmem pages
 * (shmem takes no large folios unless the administrator allows it), and
 * both ends pay per page: the sender to splice them (0.23-0.26 CPU-s per
 * 509 MB) and the receiver to copy out of them (0.21-0.29 CPU-s). send()
 * from huge pages copies once more on the sender's side but into large
 * contiguous buffers, and costs 0.15-0.18 and 0.13 CPU-s: 0.2 s against
 * 0.27 s for curl to take the image.
 */
#include "trainer/publish_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ROUTE "/weights/"
#define BLOCK_BYTES (1u << 20) /* the stall hook's reads */

typedef struct image {
    uint64_t version;
    uint8_t *data; /* len bytes, the server's own copy */
    size_t len;
    atomic_int refs; /* the served list's, plus one per response reading it */
} image;

struct weights_http {
    struct MHD_Daemon *d;
    char base_url[300];
    char *token;
    int keep;
    pthread_mutex_t mu;
    image **served; /* newest last; at most keep */
    int n_served;
    atomic_ullong stall_after; /* UINT64_MAX: no stall (test hook) */
    atomic_bool stopping;
};

/* Drop one reference; the last frees the image. Also MHD's free callback of a response. */
static void image_unref(void *cls)
{
    image *im = cls;
    if (!im || atomic_fetch_sub(&im->refs, 1) != 1) return;
    free(im->data);
    free(im);
}

/* ---------------------------------------------------------------- requests */

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "text/plain");
    if (status == 401) MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"tidal weights\"");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Constant time in the token's length: a wrong token says nothing about how much of it was right. */
static bool authorized(const weights_http *h, struct MHD_Connection *c)
{
    if (!h->token) return true;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!a || strncmp(a, "Bearer ", 7) != 0) return false;
    const char *given = a + 7, *want = h->token;
    size_t gl = strlen(given), wl = strlen(want);
    unsigned diff = (unsigned)(gl ^ wl);
    for (size_t i = 0; i < wl; i++) diff |= (unsigned char)want[i] ^ (unsigned char)(i < gl ? given[i] : 0);
    return diff == 0;
}

/* One "bytes=" range of a resource of len bytes: [*from, *to]. 1: a range;
 * 0: no Range header or one this server does not parse (several ranges):
 * the whole; -1: not satisfiable (416). */
static int parse_range(const char *hdr, uint64_t len, uint64_t *from, uint64_t *to)
{
    if (!hdr) return 0;
    if (strncmp(hdr, "bytes=", 6) != 0 || strchr(hdr, ',')) return 0;
    const char *p = hdr + 6;
    char *end = NULL;
    if (*p == '-') { /* the last n bytes */
        errno = 0;
        unsigned long long n = strtoull(p + 1, &end, 10);
        if (errno || end == p + 1 || *end || n == 0 || len == 0) return -1;
        *from = n >= len ? 0 : len - n;
        *to = len - 1;
        return 1;
    }
    if (*p < '0' || *p > '9') return -1;
    errno = 0;
    unsigned long long a = strtoull(p, &end, 10);
    if (errno || *end != '-') return -1;
    p = end + 1;
    unsigned long long b = len ? len - 1 : 0;
    if (*p) {
        if (*p < '0' || *p > '9') return -1;
        b = strtoull(p, &end, 10);
        if (errno || *end || b < a) return -1;
    }
    if (a >= len) return -1;
    if (b >= len) b = len - 1;
    *from = a;
    *to = b;
    return 1;
}

/* A response reading [from, from+n) of im; the stall hook's: sends
 * stall_after bytes, then nothing until the server stops. */
typedef struct reader {
    weights_http *h;
    image *im; /* a reference */
    uint64_t from;
} reader;

static ssize_t stalling_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    reader *r = cls;
    const uint64_t limit = atomic_load(&r->h->stall_after);
    if (pos >= limit) {
        /* silent until the server stops (a thread per connection may block) */
        while (!atomic_load(&r->h->stopping)) {
            struct timespec ts = {0, 10 * 1000000L};
            nanosleep(&ts, NULL);
        }
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = max;
    if (n > limit - pos) n = (size_t)(limit - pos);
    if (n > r->im->len - r->from - pos) n = (size_t)(r->im->len - r->from - pos);
    if (n == 0) return MHD_CONTENT_READER_END_OF_STREAM;
    memcpy(buf, r->im->data + r->from + pos, n);
    return (ssize_t)n;
}

static void reader_free(void *cls)
{
    reader *r = cls;
    image_unref(r->im);
    free(r);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version, (void)upload, (void)upload_size, (void)con_cls;
    weights_http *h = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) return reply_text(c, 405, "GET or HEAD\n");
    if (!authorized(h, c)) return reply_text(c, 401, "a bearer token is required (TIDAL_WEIGHTS_HTTP_TOKEN)\n");
    if (strncmp(url, ROUTE, strlen(ROUTE)) != 0) return reply_text(c, 404, "no such route (GET /weights/<version>)\n");
    const char *vs = url + strlen(ROUTE);
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(vs, &end, 10);
    if (!*vs || *end || errno || *vs < '0' || *vs > '9') return reply_text(c, 404, "not a version\n");

    image *im = NULL;
    pthread_mutex_lock(&h->mu);
    for (int i = 0; i < h->n_served; i++)
        if (h->served[i]->version == v) {
            im = h->served[i];
            atomic_fetch_add(&im->refs, 1); /* the response's own: the image may be pruned meanwhile */
        }
    pthread_mutex_unlock(&h->mu);
    if (!im) return reply_text(c, 404, "this version is not served (pruned, or not published yet)\n");
    const size_t len = im->len;

    uint64_t from = 0, to = len - 1;
    const int ranged = parse_range(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Range"), len, &from, &to);
    if (ranged < 0) {
        char cr[64];
        snprintf(cr, sizeof cr, "bytes */%zu", len);
        image_unref(im);
        struct MHD_Response *r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
        if (!r) return MHD_NO;
        MHD_add_response_header(r, "Content-Range", cr);
        enum MHD_Result ret = MHD_queue_response(c, 416, r);
        MHD_destroy_response(r);
        return ret;
    }
    const uint64_t n = to - from + 1;
    struct MHD_Response *r = NULL;
    if (atomic_load(&h->stall_after) != UINT64_MAX) {
        reader *rd = malloc(sizeof *rd);
        if (!rd) {
            image_unref(im);
            return MHD_NO;
        }
        *rd = (reader){.h = h, .im = im, .from = from};
        r = MHD_create_response_from_callback(n, BLOCK_BYTES, stalling_read, rd, reader_free);
        if (!r) reader_free(rd);
    } else { /* sent from the image's memory; the reference goes with the response */
        r = MHD_create_response_from_buffer_with_free_callback_cls((size_t)n, im->data + from, image_unref, im);
        if (!r) image_unref(im);
    }
    if (!r) return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/octet-stream");
    MHD_add_response_header(r, "Accept-Ranges", "bytes");
    if (ranged) {
        char cr[96];
        snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%zu", from, to, len);
        MHD_add_response_header(r, "Content-Range", cr);
    }
    enum MHD_Result ret = MHD_queue_response(c, ranged ? 206 : 200, r);
    MHD_destroy_response(r);
    return ret;
}

/* ---------------------------------------------------------------- API */

static bool loopback(const struct in_addr *a) { return (ntohl(a->s_addr) >> 24) == 127; }

tidal_status weights_http_start(const weights_http_opts *o, weights_http **out)
{
    *out = NULL;
    const char *bind = o->bind && o->bind[0] ? o->bind : "127.0.0.1:0";
    const char *colon = strrchr(bind, ':');
    char host[64];
    struct sockaddr_in addr = {.sin_family = AF_INET};
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || (size_t)(colon - bind) >= sizeof host || !end || *end || port < 0 || port > 65535)
        return tidal_fail(TIDAL_ERR_INVALID, "weights.http_bind: \"%s\" is not an IPv4 address and a port", bind);
    memcpy(host, bind, (size_t)(colon - bind));
    host[colon - bind] = '\0';
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1)
        return tidal_fail(TIDAL_ERR_INVALID, "weights.http_bind: \"%s\" is not an IPv4 address", host);
    addr.sin_port = htons((uint16_t)port);
    if (!loopback(&addr.sin_addr) && !(o->token && o->token[0]))
        return tidal_fail(TIDAL_ERR_INVALID,
                          "weights.http_bind %s serves the weights beyond this machine without a token: set "
                          "TIDAL_WEIGHTS_HTTP_TOKEN (or TIDAL_WEIGHTS_HTTP_TOKEN_FILE) for the trainer and the "
                          "workers, or bind 127.0.0.1", bind);
    if (o->keep < 1) return tidal_fail(TIDAL_ERR_INVALID, "weights http: keep %d is below 1", o->keep);

    weights_http *h = calloc(1, sizeof *h);
    if (!h) return tidal_fail(TIDAL_ERR_NOMEM, "weights http: out of memory");
    h->keep = o->keep;
    atomic_init(&h->stall_after, UINT64_MAX);
    atomic_init(&h->stopping, false);
    pthread_mutex_init(&h->mu, NULL);
    tidal_status st = TIDAL_OK;
    h->served = calloc((size_t)o->keep, sizeof *h->served);
    if (!h->served || (o->token && o->token[0] && !(h->token = strdup(o->token)))) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "weights http: out of memory");
        goto cleanup;
    }
    h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL,
                            NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_LISTEN_BACKLOG_SIZE,
                            (unsigned)256, MHD_OPTION_END);
    if (!h->d) {
        st = tidal_fail(TIDAL_ERR_IO, "weights.http_bind: cannot listen on %s: %s", bind, strerror(errno));
        goto cleanup;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    const unsigned bound = di ? di->port : (unsigned)port;
    if (o->base_url && o->base_url[0]) {
        snprintf(h->base_url, sizeof h->base_url, "%s", o->base_url);
        size_t n = strlen(h->base_url);
        while (n && h->base_url[n - 1] == '/') h->base_url[--n] = '\0';
    } else {
        char name[256] = "";
        if (addr.sin_addr.s_addr == htonl(INADDR_ANY) && gethostname(name, sizeof name - 1) == 0 && name[0])
            snprintf(h->base_url, sizeof h->base_url, "http://%s:%u", name, bound);
        else
            snprintf(h->base_url, sizeof h->base_url, "http://%s:%u", host, bound);
    }
    tidal_log(TIDAL_LOG_INFO, "weights http: serving the newest %d versions at %s%s<version> (listening on %s:%u%s)",
              h->keep, h->base_url, ROUTE, host, bound, h->token ? ", bearer token required" : "");
    *out = h;
    return TIDAL_OK;
cleanup:
    weights_http_stop(h);
    return st;
}

const char *weights_http_base_url(const weights_http *h) { return h->base_url; }

tidal_status weights_http_add(weights_http *h, uint64_t version, const void *data, size_t len)
{
    image *im = calloc(1, sizeof *im);
    /* 2 MiB-aligned for huge pages: see the top of this file */
    if (!im || posix_memalign((void **)&im->data, 2u << 20, len ? len : 1) != 0) {
        free(im);
        return tidal_fail(TIDAL_ERR_NOMEM, "weights http: v%" PRIu64 ": %zu bytes in memory: out of memory", version,
                          len);
    }
    madvise(im->data, len, MADV_HUGEPAGE); /* advice: without it the image is served from small pages */
    memcpy(im->data, data, len);
    im->version = version;
    im->len = len;
    atomic_init(&im->refs, 1);
    image *drop[2] = {NULL, NULL};
    pthread_mutex_lock(&h->mu);
    for (int i = 0; i < h->n_served; i++)
        if (h->served[i]->version == version) { /* re-published: the new image replaces it */
            drop[0] = h->served[i];
            memmove(&h->served[i], &h->served[i + 1], (size_t)(h->n_served - i - 1) * sizeof *h->served);
            h->n_served--;
            break;
        }
    if (h->n_served == h->keep) {
        drop[1] = h->served[0];
        memmove(&h->served[0], &h->served[1], (size_t)(h->n_served - 1) * sizeof *h->served);
        h->n_served--;
    }
    h->served[h->n_served++] = im;
    pthread_mutex_unlock(&h->mu);
    image_unref(drop[0]);
    image_unref(drop[1]);
    return TIDAL_OK;
}

void weights_http_test_stall(weights_http *h, uint64_t after_bytes) { atomic_store(&h->stall_after, after_bytes); }

void weights_http_stop(weights_http *h)
{
    if (!h) return;
    atomic_store(&h->stopping, true);
    if (h->d) MHD_stop_daemon(h->d); /* joins the connection threads: no response reads an image after */
    for (int i = 0; i < h->n_served; i++) image_unref(h->served[i]);
    free(h->served);
    free(h->token);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
