/* prom.c - gauges for Prometheus behind /metrics (prom.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/prom.h"

#define NAME_CAP 128
#define LABELS_CAP 256

typedef struct sample {
    char labels[LABELS_CAP];
    double v;
} sample;

typedef struct family {
    char name[NAME_CAP];
    char help[256];
    sample *s;
    int n, cap;
} family;

struct prom {
    pthread_mutex_t mu;
    struct MHD_Daemon *d;
    char base_labels[LABELS_CAP];
    family *f;
    int n, cap;
};

void prom_name(const char *name, char *out, size_t cap)
{
    size_t i = 0;
    for (; name[i] && i + 1 < cap; i++) {
        const char c = name[i];
        const int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                       (i > 0 && c >= '0' && c <= '9');
        out[i] = ok ? c : '_';
    }
    if (cap) out[i < cap ? i : cap - 1] = '\0';
    if (cap > 1 && i == 0) snprintf(out, cap, "_");
}

static family *family_of(prom *p, const char *name)
{
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->f[i].name, name)) return &p->f[i];
    if (p->n == p->cap) {
        int cap = p->cap ? 2 * p->cap : 32;
        family *f = realloc(p->f, (size_t)cap * sizeof *f);
        if (!f) return NULL;
        p->f = f, p->cap = cap;
    }
    family *f = &p->f[p->n++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    return f;
}

void prom_set(prom *p, const char *name, const char *labels, const char *help, double v)
{
    if (!p) return;
    char n[NAME_CAP];
    prom_name(name, n, sizeof n);
    pthread_mutex_lock(&p->mu);
    family *f = family_of(p, n);
    if (f && help && !f->help[0]) snprintf(f->help, sizeof f->help, "%s", help);
    const char *l = labels ? labels : "";
    int i = 0;
    while (f && i < f->n && strcmp(f->s[i].labels, l) != 0) i++;
    if (f && i == f->n && f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 4;
        sample *s = realloc(f->s, (size_t)cap * sizeof *s);
        if (s) f->s = s, f->cap = cap;
    }
    if (f && i < f->cap) {
        if (i == f->n) {
            snprintf(f->s[i].labels, sizeof f->s[i].labels, "%s", l);
            f->n++;
        }
        f->s[i].v = v;
    }
    pthread_mutex_unlock(&p->mu);
}

/* Append printf text to the growing buffer (b, len, cap); false when out of memory. */
static bool put(char **b, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static bool put(char **b, size_t *len, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(*b + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (n < 0) return false;
        if (*len + (size_t)n < *cap) {
            *len += (size_t)n;
            return true;
        }
        size_t c = 2 * (*cap + (size_t)n);
        char *nb = realloc(*b, c);
        if (!nb) return false;
        *b = nb, *cap = c;
    }
}

char *prom_text(prom *p)
{
    size_t len = 0, cap = 4096;
    char *b = malloc(cap);
    if (!b) return NULL;
    b[0] = '\0';
    bool ok = true;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; ok && i < p->n; i++) {
        const family *f = &p->f[i];
        if (f->help[0]) ok = put(&b, &len, &cap, "# HELP %s %s\n", f->name, f->help);
        ok = ok && put(&b, &len, &cap, "# TYPE %s gauge\n", f->name);
        for (int k = 0; ok && k < f->n; k++) {
            if (!isfinite(f->s[k].v)) continue;
            const char *base = p->base_labels, *own = f->s[k].labels;
            const bool any = base[0] || own[0];
            ok = put(&b, &len, &cap, "%s%s%s%s%s%s %.17g\n", f->name, any ? "{" : "", base,
                     base[0] && own[0] ? "," : "", own, any ? "}" : "", f->s[k].v);
        }
    }
    pthread_mutex_unlock(&p->mu);
    if (!ok) {
        free(b);
        return NULL;
    }
    return b;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version, (void)upload, (void)upload_size, (void)con_cls;
    prom *p = cls;
    const bool found = !strcmp(url, "/metrics") && !strcmp(method, "GET");
    char *body = found ? prom_text(p) : strdup("not found: GET /metrics\n");
    if (!body) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain");
    enum MHD_Result ret = MHD_queue_response(c, found ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, r);
    MHD_destroy_response(r);
    return ret;
}

tidal_status prom_start(const char *bind, int port, const char *labels, prom **out)
{
    *out = NULL;
    prom *p = calloc(1, sizeof *p);
    if (!p) return tidal_fail(TIDAL_ERR_NOMEM, "metrics: out of memory");
    pthread_mutex_init(&p->mu, NULL);
    snprintf(p->base_labels, sizeof p->base_labels, "%s", labels ? labels : "");
    const char *host = bind && *bind ? bind : "127.0.0.1";
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (port < 0 || port > 65535 || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        prom_stop(p);
        return tidal_fail(TIDAL_ERR_INVALID, "metrics: %s:%d is not an IPv4 address and port", host, port);
    }
    p->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL, on_request, p,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_TIMEOUT,
                            (unsigned)30, MHD_OPTION_END);
    if (!p->d) {
        const int e = errno;
        prom_stop(p);
        return tidal_fail(TIDAL_ERR_IO, "metrics: cannot listen on %s:%d: %s", host, port, strerror(e));
    }
    *out = p;
    return TIDAL_OK;
}

int prom_port(const prom *p)
{
    const union MHD_DaemonInfo *i = p && p->d ? MHD_get_daemon_info(p->d, MHD_DAEMON_INFO_BIND_PORT) : NULL;
    return i ? (int)i->port : -1;
}

void prom_stop(prom *p)
{
    if (!p) return;
    if (p->d) MHD_stop_daemon(p->d);
    for (int i = 0; i < p->n; i++) free(p->f[i].s);
    free(p->f);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
