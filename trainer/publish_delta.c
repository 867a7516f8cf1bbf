/* publish_delta.c - the trainer's delta chain (see publish_delta.h). */
#include "trainer/publish_delta.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/digest.h"

static bool push(uint64_t **a, size_t *n, size_t *cap, uint64_t v)
{
    if (*n == *cap) {
        size_t nc = *cap ? 2 * *cap : 16;
        uint64_t *p = realloc(*a, nc * sizeof *p);
        if (!p) return false;
        *a = p, *cap = nc;
    }
    (*a)[(*n)++] = v;
    return true;
}

tidal_status delta_chain_prepare(delta_chain *c, uint64_t v, const void *image, size_t len, int value_bytes,
                                 delta_wire *out)
{
    *out = (delta_wire){.data = image, .len = len};
    digest_compute(image, len, out->image_digest);
    if (!c->base || c->base_len != len || c->n_chain == 0 || c->n_chain >= (size_t)c->full_every) return TIDAL_OK;
    void *d = NULL;
    size_t dlen = 0;
    delta_stats ds;
    if (delta_encode(c->base, image, len, value_bytes, 1, &d, &dlen, &ds) != TIDAL_OK) {
        tidal_log(TIDAL_LOG_WARN, "weights v%" PRIu64 ": sent whole: %s", v, tidal_errmsg());
        return TIDAL_OK;
    }
    if (c->delta_bytes + dlen > len) { /* a fresh worker would fetch more than one image */
        free(d);
        return TIDAL_OK;
    }
    out->data = d, out->len = dlen, out->owned = d;
    out->delta = true, out->base = c->base_version, out->stats = ds;
    return TIDAL_OK;
}

void delta_chain_commit(delta_chain *c, bus_blob_store *store, uint64_t v, void **image, size_t len,
                        const delta_wire *w)
{
    free(c->base);
    c->base = *image;
    *image = NULL;
    c->base_len = len;
    c->base_version = v;
    if (!w->delta) c->n_chain = 0, c->delta_bytes = 0;
    else c->delta_bytes += w->len;
    if (!push(&c->chain, &c->n_chain, &c->cap_chain, v)) { /* no memory: the next version goes whole */
        c->n_chain = 0;
        free(c->base);
        c->base = NULL;
    }
    /* a version published again (a restarted trainer) is stored once */
    if (!(c->n_stored && c->stored[c->n_stored - 1] == v)) push(&c->stored, &c->n_stored, &c->cap_stored, v);
    /* keep the chain a fresh worker needs, and the newest `keep` */
    const uint64_t from = c->n_chain ? c->chain[0] : v;
    const size_t keep = c->keep > 0 ? (size_t)c->keep : 1;
    size_t drop = 0;
    while (drop < c->n_stored && c->stored[drop] < from && c->n_stored - drop > keep) {
        char name[24];
        snprintf(name, sizeof name, "%" PRIu64, c->stored[drop]);
        if (bus_blob_delete(store, name) != TIDAL_OK)
            tidal_log(TIDAL_LOG_WARN, "weights: delete blob %s: %s", name, tidal_errmsg());
        drop++;
    }
    memmove(c->stored, c->stored + drop, (c->n_stored - drop) * sizeof *c->stored);
    c->n_stored -= drop;
}

void delta_wire_clear(delta_wire *w)
{
    free(w->owned);
    *w = (delta_wire){0};
}

void delta_chain_free(delta_chain *c)
{
    free(c->base);
    free(c->chain);
    free(c->stored);
    *c = (delta_chain){0};
}
