/* weights_fetch.c - images from a shared directory or from deltas (see weights_fetch.h). */
#include "rollout/weights_fetch.h"

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/digest.h"
#include "model/delta.h"

static bool digest_is(const void *data, size_t len, const uint8_t *want)
{
    uint8_t got[DIGEST_BYTES];
    digest_compute(data, len, got);
    return digest_equal(got, want);
}

tidal_status weights_fetch_dir(const Tidal__V1__WeightsManifest *w, void **image, size_t *len)
{
    *image = NULL;
    *len = 0;
    const uint64_t v = w->version;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", w->dir);
    FILE *f = fopen(path, "rb");
    if (!f) return tidal_fail(TIDAL_ERR_IO, "weights v%" PRIu64 ": cannot open %s: %s", v, path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || (uint64_t)sb.st_size != w->bytes) {
        fclose(f);
        return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": %s has %lld bytes, the manifest says %" PRIu64, v,
                          path, (long long)sb.st_size, w->bytes);
    }
    void *buf = malloc(w->bytes);
    if (!buf) {
        fclose(f);
        return tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": out of memory for %s", v, path);
    }
    const size_t got = fread(buf, 1, w->bytes, f);
    fclose(f);
    if (got != w->bytes) {
        free(buf);
        return tidal_fail(TIDAL_ERR_IO, "weights v%" PRIu64 ": %s: short read (%zu of %" PRIu64 " bytes)", v, path, got,
                          w->bytes);
    }
    if (!digest_is(buf, got, w->digest.data)) {
        free(buf);
        return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": %s does not have the manifest's digest", v, path);
    }
    *image = buf;
    *len = got;
    return TIDAL_OK;
}

/* Apply the deltas of chain[from..] (from blobs in store), then d, to the
 * image cur in place. */
static tidal_status apply_chain(bus_blob_store *store, const Tidal__V1__WeightsManifest *w, size_t from,
                                void *cur, size_t cur_len, const void *d, size_t dlen, uint64_t *fetched)
{
    char what[64], name[24];
    for (size_t i = from; i < w->n_chain; i++) {
        snprintf(name, sizeof name, "%" PRIu64, w->chain[i]);
        snprintf(what, sizeof what, "weights v%" PRIu64 " (delta v%" PRIu64 ")", w->version, w->chain[i]);
        void *blob = NULL;
        uint64_t blen = 0;
        TRY_WRAP(bus_blob_get(store, name, &blob, &blen, NULL), "%s: fetch blob %s", what, name);
        *fetched += blen;
        const tidal_status st = delta_apply_inplace(cur, cur_len, blob, (size_t)blen, what);
        free(blob);
        TRY(st);
    }
    snprintf(what, sizeof what, "weights v%" PRIu64 " (delta)", w->version);
    return delta_apply_inplace(cur, cur_len, d, dlen, what);
}

tidal_status weights_delta_rebuild(bus_blob_store *store, const Tidal__V1__WeightsManifest *w, const void *d,
                                   size_t dlen, weights_base *base, void **image, size_t *len,
                                   uint64_t *fetched)
{
    *image = NULL;
    *len = 0;
    *fetched = 0;
    const uint64_t v = w->version;
    void *cur = NULL;
    size_t cur_len = 0;
    tidal_status st;
    /* from the base this worker holds, when the chain passes through it: the
     * deltas go into that image in place (it becomes the result, or is freed) */
    if (base && base->image) {
        for (size_t k = 0; k < w->n_chain; k++) {
            if (w->chain[k] != base->version) continue;
            cur = base->image, cur_len = base->len;
            base->image = NULL, base->len = 0;
            st = apply_chain(store, w, k + 1, cur, cur_len, d, dlen, fetched);
            if (st == TIDAL_OK && cur_len == w->image_bytes && digest_is(cur, cur_len, w->image_digest.data)) {
                *image = cur, *len = cur_len;
                return TIDAL_OK;
            }
            tidal_log(TIDAL_LOG_WARN, "weights v%" PRIu64 ": the delta on the v%" PRIu64 " this worker holds %s; "
                      "rebuilding from the full image v%" PRIu64, v, w->chain[k],
                      st == TIDAL_OK ? "does not give the manifest's digest" : tidal_errmsg(), w->chain[0]);
            free(cur);
            cur = NULL;
            break;
        }
    }
    /* from the last full image */
    char name[24];
    snprintf(name, sizeof name, "%" PRIu64, w->chain[0]);
    uint64_t flen = 0;
    TRY_WRAP(bus_blob_get(store, name, &cur, &flen, NULL), "weights v%" PRIu64 ": the full image v%" PRIu64
             " (this worker holds %s): fetch blob %s", v, w->chain[0], base && base->image ? "another version" : "none",
             name);
    *fetched += flen;
    cur_len = (size_t)flen;
    if (delta_image_bytes(cur, cur_len) != 0) {
        free(cur);
        return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": blob %s is a delta, the chain says a full image",
                          v, name);
    }
    tidal_log(TIDAL_LOG_INFO, "weights v%" PRIu64 ": rebuilt from the full image v%" PRIu64 " and %zu deltas", v,
              w->chain[0], w->n_chain);
    st = apply_chain(store, w, 1, cur, cur_len, d, dlen, fetched);
    if (st == TIDAL_OK && (cur_len != w->image_bytes || !digest_is(cur, cur_len, w->image_digest.data)))
        st = tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": the image rebuilt from the full image v%" PRIu64
                        " and %zu deltas (%zu bytes) does not match the manifest's image_bytes %" PRIu64
                        " and image_digest", v, w->chain[0], w->n_chain, cur_len, w->image_bytes);
    if (st != TIDAL_OK) {
        free(cur);
        return st;
    }
    *image = cur, *len = cur_len;
    return TIDAL_OK;
}
