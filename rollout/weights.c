/* weights.c - a rollout worker's weight sync client (see weights.h).
 *
 * One background thread owns the KV handle, the watcher on `weights.latest`
 * and the blob store. It drains the watcher before it fetches, so after a
 * long fetch it goes straight to the newest manifest that came in meanwhile
 * (the ones between are never fetched). For a manifest newer than anything it
 * has tried it:
 *   1. checks the blob manifest embedded in the (signed) WeightsManifest: its
 *      size and chunk count are the manifest's, and the digest over its chunk
 *      hashes is the manifest's sha256 - so the signature covers every chunk;
 *   2. reads blob "<version>" laid out as that embedded manifest says into
 *      the image buffer the client keeps from version to version: chunks the
 *      tap caught while the trainer broadcast them (a core subscription on
 *      the live chunk subjects, armed with that buffer while the thread is
 *      idle) are in place already and kept when their hash is the manifest's; the
 *      rest come by bus_blob_fetch (several direct gets at once, each chunk
 *      hashed where it lands, one failing its hash fetched again). No byte is
 *      hashed twice and no fresh image memory is faulted in;
 *   3. parses the manifest's config.json (or takes the creation config),
 *      takes a model the worker handed back (weights_client_recycle) when it
 *      has that config, else creates one, and fills every tensor by name from
 *      the image (st_open_memory), checking dtype and shape, refusing strays;
 *   4. replaces the ready model (an untaken older one is freed) and wakes
 *      weights_client_wait.
 * Any failure is logged with the version, counted in stats.failed, and that
 * version is not tried again; the next manifest is tried as usual.
 * A live manifest (protocol.md "Live weights": broadcast, not stored yet) is
 * taken only when the tap holds every chunk of its blob (waiting while chunks
 * still arrive); otherwise, or when a caught chunk fails its hash, the worker
 * waits for the same version's stored manifest, which it then tries as any.
 * A live manifest the tap caught nothing of is passed over at once (a fresh
 * worker has no buffer to catch into), and a live candidate keeps the newest
 * stored one before it as a fallback: versions that come faster than the
 * worker could wait on their broadcasts never starve it.
 * Before all that, when the manifest is read off the watcher, its signature
 * is checked (consider): a refused manifest is dropped there, so it neither
 * becomes the candidate (a rogue's v1000000 would otherwise hide the
 * trainer's next real version) nor moves `tried` or `latest_seen`.
 */
#include "rollout/weights.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/digest.h"
#include "job/weights_token.h"
#include "proto/codec.h"
#include "proto/manifest_sign.h"
#include "rollout/fetch_http.h"
#include "rollout/weights_fetch.h"

#define POLL_MS 100 /* how long the thread waits for a change before looking at `stop` */
#define LIVE_STALL_MS 200 /* a live manifest: how long the tap may catch nothing new before it is given up */
#define BUS_COPY_WAIT_MS 120000 /* transport http: how long a fallback waits for the bus copy to be stored */

struct weights_client {
    tidal_bus *bus;
    job_names names;
    model_config cfg;
    bool have_cfg;
    bus_kv *kv;              /* the thread's */
    bus_kv_watcher *watch;   /* the thread's */
    bus_blob_store *store;   /* the thread's */
    bus_blob_tap *tap;       /* catches chunks as the trainer publishes them (armed while idle) */
    weights_base base;       /* the last image built, kept when versions may come as deltas (the thread's) */
    uint64_t tried;          /* newest version fetched or failed; UINT64_MAX none (the thread's) */
    uint8_t tried_digest[32];   /* its image's digest (a re-published version differs) */
    uint8_t pub[TIDAL_SIGN_PUB_BYTES]; /* the job's key, once known (have_pub); the thread's after creation */
    bool have_pub;
    uint8_t *image;          /* the image buffer, kept from version to version (the thread's) */
    size_t image_cap;
    int http_timeout_ms, http_parallel; /* transport http */
    char *http_token;                   /* NULL: none */
    void *spare_image;                  /* the last HTTP image's buffer, written into by the next fetch */
    uint64_t spare_cap;                 /* (the thread's) */

    pthread_mutex_t mu;
    pthread_cond_t ready_cv; /* a model became ready */
    model *ready;            /* newest built, not taken (NULL: none) */
    model *spare;            /* handed back by the worker, reused for the next build (NULL: none) */
    uint64_t ready_version;
    uint64_t good_version;   /* the newest version built; UINT64_MAX none (for the refusal's log line) */
    char good_dir[4096];     /* its directory when it came by transport dir, else "" */
    weights_stats stats;
    bool stop;

    pthread_t thread;
    bool thread_started;
};

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static bool stopping(weights_client *c)
{
    pthread_mutex_lock(&c->mu);
    bool s = c->stop;
    pthread_mutex_unlock(&c->mu);
    return s;
}

static void count_failure(weights_client *c)
{
    pthread_mutex_lock(&c->mu);
    c->stats.failed++;
    pthread_mutex_unlock(&c->mu);
}

/* ---------------------------------------------------------------- building */

static st_dtype manifest_dtype(const char *d)
{
    if (!strcmp(d, "fp32")) return ST_F32;
    if (!strcmp(d, "bf16")) return ST_BF16;
    return ST_F16; /* the validator allows only fp32, bf16 and fp16 */
}

/* Model tensor t filled from its tensor in the image f: present, in the
 * manifest's dtype, with the model's shape. */
static tidal_status fill_tensor(const model_tensor *t, const st_file *f, st_dtype dtype, uint64_t v, float *params)
{
    const st_tensor *x = st_find(f, t->name);
    if (!x) return tidal_fail(TIDAL_ERR_INVALID, "weights v%" PRIu64 ": tensor %s is missing", v, t->name);
    if (x->dtype != dtype)
        return tidal_fail(TIDAL_ERR_INVALID, "weights v%" PRIu64 ": tensor %s is %s, the manifest says %s", v, t->name,
                          st_dtype_name(x->dtype), st_dtype_name(dtype));
    if (x->ndim != t->ndim || x->shape[0] != t->shape[0] || (t->ndim == 2 && x->shape[1] != t->shape[1]))
        return tidal_fail(TIDAL_ERR_INVALID,
                          "weights v%" PRIu64 ": tensor %s has shape [%lld%s%lld], config.json implies [%lld%s%lld]",
                          v, t->name, (long long)x->shape[0], x->ndim > 1 ? ", " : "",
                          x->ndim > 1 ? (long long)x->shape[1] : 0LL, (long long)t->shape[0],
                          t->ndim > 1 ? ", " : "", t->ndim > 1 ? (long long)t->shape[1] : 0LL);
    TRY_WRAP(st_read_f32(x, params + t->offset, (int64_t)t->numel), "weights v%" PRIu64, v);
    return TIDAL_OK;
}

/* Whether a and b describe the same model shape (a spare model fits). */
static bool same_config(const model_config *a, const model_config *b)
{
    return a->type == b->type && a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
           a->num_layers == b->num_layers && a->num_heads == b->num_heads && a->num_kv_heads == b->num_kv_heads &&
           a->head_dim == b->head_dim && a->intermediate_size == b->intermediate_size &&
           a->max_position_embeddings == b->max_position_embeddings && a->rope_theta == b->rope_theta &&
           a->rms_norm_eps == b->rms_norm_eps && a->tie_word_embeddings == b->tie_word_embeddings &&
           a->qkv_bias == b->qkv_bias && a->o_bias == b->o_bias && a->bos_token_id == b->bos_token_id &&
           a->eos_token_id == b->eos_token_id;
}

/* A model for cfg: the one the worker handed back when it has that config
 * (its memory is faulted in already and every parameter is overwritten),
 * else a new one. */
static tidal_status model_for(weights_client *c, const model_config *cfg, uint64_t v, model **out)
{
    pthread_mutex_lock(&c->mu);
    model *m = c->spare;
    c->spare = NULL;
    pthread_mutex_unlock(&c->mu);
    if (m && same_config(model_cfg(m), cfg)) {
        *out = m;
        return TIDAL_OK;
    }
    model_free(m);
    TRY_WRAP(model_create(cfg, out), "weights v%" PRIu64 ": config", v);
    return TIDAL_OK;
}

/* A model for cfg (model_for: the spare's memory when it fits) with every
 * tensor filled from the safetensors image f: each present, in the
 * manifest's dtype, with the model's shape; nothing else in the image
 * (lm_head.weight is tolerated with tied embeddings). */
static tidal_status build_model(weights_client *c, const model_config *cfg, const st_file *f, st_dtype dtype,
                                uint64_t v, model **out)
{
    *out = NULL;
    model *m = NULL;
    TRY(model_for(c, cfg, v, &m));
    tidal_status st = TIDAL_OK;
    float *params = model_params(m, NULL);
    for (int i = 0; i < model_num_tensors(m); i++) TRY_GOTO(fill_tensor(model_tensor_at(m, i), f, dtype, v, params));
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *x = st_at(f, i);
        if (!model_find_tensor(m, x->name) && !(cfg->tie_word_embeddings && !strcmp(x->name, "lm_head.weight"))) {
            st = tidal_fail(TIDAL_ERR_INVALID, "weights v%" PRIu64 ": unexpected tensor %s (not in a %s model with this config)",
                            v, x->name, cfg->type == MODEL_QWEN2 ? "qwen2" : "llama");
            goto cleanup;
        }
    }
    *out = m;
cleanup:
    if (st != TIDAL_OK) model_free(m);
    return st;
}

/* The blob manifest embedded in w (covered by w's signature) describes w's
 * image: its size, its chunk count, and chunk hashes whose digest is w's
 * digest. Its chunk hashes go to *hashes (malloc'd) as the layout to fetch. */
static tidal_status check_blob(const Tidal__V1__WeightsManifest *w, const char *name, bus_blob_layout *L,
                               uint8_t **hashes)
{
    const uint64_t v = w->version;
    const Tidal__V1__BlobManifest *b = w->blob;
    *hashes = NULL;
    assert(w->digest.len == 32); /* codec_decode_weights_manifest checked it */
    if (!b) return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": a bus manifest without its blob manifest", v);
    if (!b->name || strcmp(b->name, name) != 0 || b->bytes != w->bytes || b->chunk_count != w->chunk_count ||
        b->n_chunk_digest != b->chunk_count)
        return tidal_fail(TIDAL_ERR_CORRUPT,
                          "weights v%" PRIu64 ": the blob manifest (%s, %" PRIu64 " bytes, %u chunks, %zu hashes) does "
                          "not match the weights manifest (blob %s, %" PRIu64 " bytes, %u chunks)",
                          v, b->name ? b->name : "", b->bytes, b->chunk_count, b->n_chunk_digest, name, w->bytes,
                          w->chunk_count);
    uint8_t *h = malloc((size_t)b->chunk_count * 32 + 1);
    if (!h) return tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": out of memory", v);
    for (size_t i = 0; i < b->n_chunk_digest; i++) {
        if (b->chunk_digest[i].len != 32) {
            free(h);
            return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": chunk %zu's hash is not 32 bytes", v, i);
        }
        memcpy(h + 32 * i, b->chunk_digest[i].data, 32);
    }
    uint8_t digest[DIGEST_BYTES];
    digest_compute(h, (size_t)b->chunk_count * 32, digest);
    if (!digest_equal(digest, w->digest.data)) {
        char got[17], want[17];
        digest_hex(digest, 8, got);
        digest_hex(w->digest.data, 8, want);
        free(h);
        return tidal_fail(TIDAL_ERR_CORRUPT,
                          "weights v%" PRIu64 ": the digest over the chunk hashes %s... does not match the manifest's %s...",
                          v, got, want);
    }
    *L = (bus_blob_layout){.bytes = b->bytes, .chunk_bytes = b->chunk_bytes, .chunk_count = b->chunk_count,
                           .chunk_digest = h};
    *hashes = h;
    return TIDAL_OK;
}

/* The client's image buffer, at least len bytes: the previous version's when
 * it is large enough (no fresh pages to fault in). */
static tidal_status image_buffer(weights_client *c, uint64_t len, uint64_t v)
{
    if (c->image && c->image_cap >= len) return TIDAL_OK;
    bus_blob_tap_arm(c->tap, NULL, 0); /* its records are of the old buffer (a new one may get its address) */
    free(c->image);
    c->image_cap = 0;
    c->image = malloc(len ? (size_t)len : 1);
    if (!c->image)
        return tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": cannot allocate %" PRIu64 " bytes for the image", v, len);
    c->image_cap = (size_t)len;
    return TIDAL_OK;
}

/* The model's shape for version w: the manifest's config.json, else the one
 * the client was given. */
static tidal_status version_config(const weights_client *c, const Tidal__V1__WeightsManifest *w, model_config *cfg)
{
    const uint64_t v = w->version;
    if (w->model_config_json && w->model_config_json[0]) {
        char label[64];
        snprintf(label, sizeof label, "weights v%" PRIu64 " config.json", v);
        return model_config_parse(w->model_config_json, strlen(w->model_config_json), label, cfg);
    }
    if (!c->have_cfg)
        return tidal_fail(TIDAL_ERR_INVALID, "weights v%" PRIu64 ": the manifest has no config.json and the client was given none", v);
    *cfg = c->cfg;
    return TIDAL_OK;
}

static bool cancelled(void *ctx) { return stopping(ctx); }

/* transport http: the image from the trainer's server (*verified: every
 * range's hash checked), else - the reason logged - the bus copy, blob
 * "<version>" (waited for: the trainer stores it after the manifest; its
 * digest in *info, for verify_image). */
static tidal_status fetch_http(weights_client *c, const Tidal__V1__WeightsManifest *w, void **image, uint64_t *len,
                               bus_blob_info *info, bool *verified)
{
    const uint64_t v = w->version;
    fetch_http_opts fo = {.token = c->http_token, .stall_ms = c->http_timeout_ms, .parallel = c->http_parallel,
                          .cancelled = cancelled, .cancelled_ctx = c, .reuse = &c->spare_image,
                          .reuse_cap = c->spare_cap};
    tidal_status st = fetch_http_image(w, &fo, image, len);
    if (st == TIDAL_OK) {
        *verified = true;
        pthread_mutex_lock(&c->mu);
        const bool first = c->stats.http_fetched++ == 0;
        pthread_mutex_unlock(&c->mu);
        if (first) /* once: the later ones are in the debug line of fetch_version */
            tidal_log(TIDAL_LOG_INFO, "weights v%" PRIu64 ": fetched over HTTP from %s (%" PRIu64 " bytes, every chunk "
                      "verified)", v, w->url, *len);
        return TIDAL_OK;
    }
    if (st == TIDAL_ERR_CANCELLED) return st;
    tidal_log(TIDAL_LOG_WARN, "weights v%" PRIu64 ": HTTP fetch failed (%s): %s; taking the bus copy", v,
              tidal_status_name(st), tidal_errmsg());
    pthread_mutex_lock(&c->mu);
    c->stats.http_fallbacks++;
    pthread_mutex_unlock(&c->mu);
    char name[24];
    snprintf(name, sizeof name, "%" PRIu64, v);
    const double t0 = now_ms();
    for (;;) {
        st = bus_blob_get(c->store, name, image, len, info);
        if (st != TIDAL_ERR_NOT_FOUND || now_ms() - t0 > BUS_COPY_WAIT_MS || stopping(c)) break;
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
    }
    TRY_WRAP(st, "weights v%" PRIu64 ": fetch the bus copy, blob %s from %s", v, name, c->names.weights_stream);
    tidal_log(TIDAL_LOG_INFO, "weights v%" PRIu64 ": took the bus copy (%" PRIu64 " bytes) after the HTTP fetch failed",
              v, *len);
    return TIDAL_OK;
}

/* transport http: the image over HTTP (every chunk checked against the
 * signed manifest), or the bus copy when the server does not answer (then
 * checked here against the manifest's digest of the whole file), built. */
static tidal_status fetch_version_http(weights_client *c, const Tidal__V1__WeightsManifest *w, model **out,
                                       uint64_t *bytes)
{
    const uint64_t v = w->version;
    void *image = NULL;
    uint64_t len = 0;
    bus_blob_info info;
    bool verified = false;
    model_config cfg;
    st_file *f = NULL;
    const double t0 = now_ms();
    tidal_status st = TIDAL_OK;
    TRY_GOTO(fetch_http(c, w, &image, &len, &info, &verified));
    const double t_fetch = now_ms();
    *bytes = len;
    if (len != w->bytes || stopping(c)) {
        st = tidal_fail(len != w->bytes ? TIDAL_ERR_CORRUPT : TIDAL_ERR_UNAVAILABLE,
                        "weights v%" PRIu64 ": %" PRIu64 " bytes fetched, the manifest says %" PRIu64, v, len, w->bytes);
        goto cleanup;
    }
    if (!verified) { /* the bus copy: its blob digest is over chunk hashes, the manifest's over the file */
        uint8_t digest[DIGEST_BYTES];
        digest_compute(image, (size_t)len, digest);
        if (!digest_equal(digest, w->digest.data)) {
            char got[17], want[17];
            digest_hex(digest, 8, got);
            digest_hex(w->digest.data, 8, want);
            st = tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": the bus copy's digest %s... does not match the "
                            "manifest's %s...", v, got, want);
            goto cleanup;
        }
    }
    char label[64];
    snprintf(label, sizeof label, "weights v%" PRIu64, v);
    TRY_GOTO(version_config(c, w, &cfg));
    TRY_GOTO(st_open_memory(image, (size_t)len, label, &f));
    TRY_GOTO(build_model(c, &cfg, f, manifest_dtype(w->dtype), v, out));
    tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": %" PRIu64 " bytes fetched (%s) in %.0f ms, model built in %.0f ms",
              v, len, verified ? "http" : "bus copy", t_fetch - t0, now_ms() - t_fetch);
cleanup:
    st_close(f);
    if (verified && !c->spare_image) { /* its pages stay faulted in for the next HTTP fetch */
        c->spare_image = image;
        c->spare_cap = len;
    } else {
        free(image);
    }
    return st;
}

/* The blob's size and digest against the manifest's (transport bus; for a
 * delta, the delta's blob). */
static tidal_status verify_blob(weights_client *c, const Tidal__V1__WeightsManifest *w, uint64_t len,
                                const bus_blob_info *info)
{
    const uint64_t v = w->version;
    if (len != w->bytes)
        return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": the blob has %" PRIu64 " bytes, the manifest says %" PRIu64,
                          v, len, w->bytes);
    if (memcmp(info->digest, w->digest.data, 32) != 0) {
        char got[17], want[17];
        digest_hex(info->digest, 8, got);
        digest_hex(w->digest.data, 8, want);
        return tidal_fail(TIDAL_ERR_CORRUPT, "weights v%" PRIu64 ": the blob's digest %s... does not match the manifest's %s...",
                          v, got, want);
    }
    if (stopping(c)) return tidal_fail(TIDAL_ERR_UNAVAILABLE, "weights v%" PRIu64 ": client closing", v);
    return TIDAL_OK;
}

/* transport dir, or a delta version on the bus: the whole image in memory
 * (read from the trainer's directory, or rebuilt from the delta and the base
 * this client kept or the chain from the last full image; weights_fetch.h
 * checks the result against the signed manifest), then built. With deltas on,
 * the image is kept as the next version's base. */
static tidal_status fetch_version_whole(weights_client *c, const Tidal__V1__WeightsManifest *w, model **out,
                                        uint64_t *bytes)
{
    const uint64_t v = w->version;
    const bool dir = !strcmp(w->transport, "dir");
    char name[24];
    snprintf(name, sizeof name, "%" PRIu64, v);
    void *image = NULL;
    uint64_t len = 0;
    bus_blob_info info;
    const double t0 = now_ms();
    if (dir) { /* weights_fetch_dir checks the size and digest */
        size_t dlen = 0;
        TRY(weights_fetch_dir(w, &image, &dlen));
        len = dlen;
    } else {
        TRY_WRAP(bus_blob_get(c->store, name, &image, &len, &info), "weights v%" PRIu64 ": fetch blob %s from %s", v,
                 name, c->names.weights_stream);
    }
    *bytes = len;
    tidal_status st = TIDAL_OK;
    model_config cfg;
    st_file *f = NULL;
    char label[64];
    snprintf(label, sizeof label, "weights v%" PRIu64, v);
    if (!dir) TRY_GOTO(verify_blob(c, w, len, &info));
    if (w->delta) { /* the blob was a delta: the image it makes of the base (or of the chain) */
        void *rebuilt = NULL;
        size_t rlen = 0;
        uint64_t more = 0;
        st = weights_delta_rebuild(c->store, w, image, (size_t)len, &c->base, &rebuilt, &rlen, &more);
        *bytes += more;
        TRY_GOTO(st);
        free(image);
        image = rebuilt;
        len = rlen;
    }
    const double t_fetch = now_ms();
    TRY_GOTO(version_config(c, w, &cfg));
    TRY_GOTO(st_open_memory(image, (size_t)len, label, &f));
    TRY_GOTO(build_model(c, &cfg, f, manifest_dtype(w->dtype), v, out));
    tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": %" PRIu64 " bytes fetched in %.0f ms, model built in %.0f ms", v,
              *bytes, t_fetch - t0, now_ms() - t_fetch);
    if (w->full_every > 0) { /* the next version may be a delta against this one */
        st_close(f);
        f = NULL;
        free(c->base.image);
        c->base = (weights_base){.image = image, .len = (size_t)len, .version = v};
        image = NULL;
    }
cleanup:
    st_close(f);
    free(image);
    return st;
}

/* Fetch, verify and build the version manifest w describes. */
static tidal_status fetch_version(weights_client *c, const Tidal__V1__WeightsManifest *w, model **out,
                                  uint64_t *bytes)
{
    *out = NULL;
    *bytes = 0;
    const uint64_t v = w->version;
    const bool http = !strcmp(w->transport, "http");
    if (!http && strcmp(w->transport, "bus") != 0 && strcmp(w->transport, "dir") != 0)
        return tidal_fail(TIDAL_ERR_UNAVAILABLE, "weights v%" PRIu64 ": transport %s is not supported by this worker",
                          v, w->transport);
    char name[24];
    snprintf(name, sizeof name, "%" PRIu64, v);
    if (http) return fetch_version_http(c, w, out, bytes);
    /* dir, and every version of a delta job (a full one too: it becomes the next delta's base) */
    if (!strcmp(w->transport, "dir") || w->delta || w->full_every > 0) return fetch_version_whole(c, w, out, bytes);
    bus_blob_layout L;
    uint8_t *hashes = NULL;
    tidal_status st = TIDAL_OK;
    model_config cfg;
    st_file *f = NULL;
    unsigned refetched = 0;
    const double t0 = now_ms();
    TRY_GOTO(check_blob(w, name, &L, &hashes));
    bus_blob_tap_disarm(c->tap); /* what it caught stays in the image buffer, checked below */
    TRY_GOTO(image_buffer(c, L.bytes, v));
    unsigned caught = 0;
    st = bus_blob_fetch(c->store, name, &L, c->image, c->tap, &refetched, &caught);
    pthread_mutex_lock(&c->mu);
    c->stats.refetched += refetched;
    c->stats.caught += caught;
    pthread_mutex_unlock(&c->mu);
    if (st != TIDAL_OK) {
        st = tidal_wrap(st, "weights v%" PRIu64 ": fetch blob %s from %s", v, name, c->names.weights_stream);
        goto cleanup;
    }
    const double t_fetch = now_ms();
    *bytes = L.bytes;
    if (stopping(c)) {
        st = tidal_fail(TIDAL_ERR_UNAVAILABLE, "weights v%" PRIu64 ": client closing", v);
        goto cleanup;
    }
    char label[64];
    snprintf(label, sizeof label, "weights v%" PRIu64, v);
    TRY_GOTO(version_config(c, w, &cfg));
    TRY_GOTO(st_open_memory(c->image, (size_t)L.bytes, label, &f));
    TRY_GOTO(build_model(c, &cfg, f, manifest_dtype(w->dtype), v, out));
    tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": %" PRIu64 " bytes in %u chunks (%u caught as published) "
              "fetched in %.0f ms, model built in %.0f ms", v, L.bytes, L.chunk_count, caught, t_fetch - t0,
              now_ms() - t_fetch);
cleanup:
    st_close(f);
    free(hashes);
    return st;
}

/* ---------------------------------------------------------------- the thread */

/* The job's public key from KV `trainer.pubkey` into c->pub, unless known. */
static tidal_status load_job_key(weights_client *c)
{
    if (c->have_pub) return TIDAL_OK;
    void *val = NULL;
    size_t len = 0;
    char what[256];
    snprintf(what, sizeof what, "kv %s key %s", c->names.kv_bucket, JOB_KEY_PUBKEY);
    tidal_status st = bus_kv_get(c->kv, JOB_KEY_PUBKEY, &val, &len, NULL);
    if (st == TIDAL_ERR_NOT_FOUND)
        return tidal_fail(st, "%s is not there: the job's trainer has not published its signing key", what);
    TRY_WRAP(st, "read %s", what);
    st = tidal_sign_pub_parse(val, len, what, c->pub);
    free(val);
    TRY(st);
    c->have_pub = true;
    char text[TIDAL_SIGN_PUB_TEXT];
    tidal_sign_pub_format(c->pub, text);
    tidal_log(TIDAL_LOG_INFO, "weights: job %s: weights must be signed with %s (%s)", c->names.job, text, what);
    return TIDAL_OK;
}

/* Whether manifest w (KV revision rev) is signed by the job's key. A refusal
 * is logged - the version, the revision, why, and the version the worker
 * keeps - and counted. */
static bool signed_by_job(weights_client *c, const Tidal__V1__WeightsManifest *w, uint64_t rev)
{
    tidal_status st = load_job_key(c);
    if (st == TIDAL_OK) st = codec_manifest_verify(w, c->names.job, c->pub);
    if (st == TIDAL_OK) return true;
    pthread_mutex_lock(&c->mu);
    c->stats.refused++;
    const uint64_t good = c->good_version;
    pthread_mutex_unlock(&c->mu);
    char keep[40] = "no weights yet";
    if (good != UINT64_MAX) snprintf(keep, sizeof keep, "keeping v%" PRIu64, good);
    /* the message names the version and says why: "weights vN: refused: ..." */
    tidal_log(TIDAL_LOG_WARN, "weights: kv %s key %s revision %" PRIu64 ": %s; %s", c->names.kv_bucket,
              JOB_KEY_WEIGHTS, rev, tidal_errmsg(), keep);
    return false;
}

/* The blob a version is stored as: its number in decimal. */
typedef struct blob_name {
    char s[24];
} blob_name;

static blob_name live_name(const Tidal__V1__WeightsManifest *w)
{
    blob_name n;
    snprintf(n.s, sizeof n.s, "%" PRIu64, w->version);
    return n;
}

/* Whether the tap holds every chunk of live manifest w's blob, waiting while
 * chunks still come in (the manifest may overtake the last ones, which go on
 * another subscription); *got: how many it holds. */
static bool live_caught(weights_client *c, const Tidal__V1__WeightsManifest *w, unsigned *got)
{
    const blob_name name = live_name(w);
    unsigned last = 0;
    double t_last = now_ms();
    for (;;) {
        *got = bus_blob_tap_caught(c->tap, name.s);
        if (*got >= w->chunk_count) return true;
        if (*got != last) {
            last = *got;
            t_last = now_ms();
        } else if (now_ms() - t_last > LIVE_STALL_MS || stopping(c)) {
            return false;
        }
        struct timespec ts = {0, 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* What the thread will fetch next: the newest manifest worth trying, and,
 * while that one is live, the newest stored one before it (taken instead
 * when the live one turns out not to be whole in the tap), so a worker whose
 * tap keeps missing chunks still moves on. Both owned; NULL: none. */
typedef struct candidates {
    Tidal__V1__WeightsManifest *best, *stored;
} candidates;

static void candidates_clear(candidates *k)
{
    if (k->best) tidal__v1__weights_manifest__free_unpacked(k->best, NULL);
    if (k->stored) tidal__v1__weights_manifest__free_unpacked(k->stored, NULL);
    k->best = k->stored = NULL;
}

/* A watched value: a manifest to consider (kept in k when newer than the
 * candidate and than everything tried), or one that does not decode (counted). */
static void consider(weights_client *c, const bus_kv_event *ev, candidates *k, double *seen_ms)
{
    Tidal__V1__WeightsManifest *w = NULL;
    tidal_status st = codec_decode_weights_manifest(ev->value, ev->len, &w);
    if (st != TIDAL_OK) {
        tidal_log(TIDAL_LOG_WARN, "weights: kv %s key %s revision %" PRIu64 ": skipped: %s", c->names.kv_bucket,
                  JOB_KEY_WEIGHTS, ev->revision, tidal_errmsg());
        count_failure(c);
        return;
    }
    if (!signed_by_job(c, w, ev->revision)) {
        tidal__v1__weights_manifest__free_unpacked(w, NULL);
        return;
    }
    pthread_mutex_lock(&c->mu);
    if (c->stats.latest_seen == UINT64_MAX || w->version > c->stats.latest_seen) c->stats.latest_seen = w->version;
    pthread_mutex_unlock(&c->mu);
    if (w->live && bus_blob_tap_caught(c->tap, live_name(w).s) == 0) {
        /* nothing of it caught (the tap was not armed: a fresh worker, or one busy building): it cannot be
         * built before it is stored, so it must not displace a candidate this worker can fetch */
        tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": live, none of it caught: waiting for the stored copy",
                  w->version);
        tidal__v1__weights_manifest__free_unpacked(w, NULL);
        return;
    }
    /* newer than what was tried, or the same version published again with
     * other weights (a trainer restarted from a checkpoint) */
    bool newer = c->tried == UINT64_MAX || w->version > c->tried ||
                 (w->version == c->tried && memcmp(w->digest.data, c->tried_digest, 32) != 0);
    if (k->best && w->version < k->best->version) newer = false;
    if (!newer) {
        tidal_log(TIDAL_LOG_DEBUG, "weights: manifest v%" PRIu64 " is not newer than what this worker has; ignored",
                  w->version);
        tidal__v1__weights_manifest__free_unpacked(w, NULL);
        return;
    }
    if (w->live && k->best && !k->best->live) { /* the stored one stays as the fallback */
        if (k->stored) tidal__v1__weights_manifest__free_unpacked(k->stored, NULL);
        k->stored = k->best;
        k->best = NULL;
    }
    if (!w->live && k->stored) { /* a newer stored one: no fallback needed */
        tidal__v1__weights_manifest__free_unpacked(k->stored, NULL);
        k->stored = NULL;
    }
    if (k->best) tidal__v1__weights_manifest__free_unpacked(k->best, NULL);
    k->best = w;
    *seen_ms = now_ms();
}

/* Fetch, verify and build manifest w's version and make it the ready one.
 * Returns true when w was live and is left for its stored copy (the tap's
 * records of it are kept for that fetch). */
static bool process(weights_client *c, const Tidal__V1__WeightsManifest *w, double seen_ms)
{
    const uint64_t was_tried = c->tried;
    bool deferred = false;
    uint8_t was_digest[32];
    memcpy(was_digest, c->tried_digest, 32);
    c->tried = w->version;
    memcpy(c->tried_digest, w->digest.data, 32);
    model *m = NULL;
    uint64_t bytes = 0;
    tidal_status st = fetch_version(c, w, &m, &bytes);
    pthread_mutex_lock(&c->mu);
    c->stats.bytes += bytes;
    if (st == TIDAL_OK && c->stop) {
        st = TIDAL_ERR_UNAVAILABLE; /* built while closing: nobody will take it */
    } else if (st == TIDAL_OK) {
        model_free(c->ready);
        c->ready = m;
        m = NULL;
        c->ready_version = w->version;
        c->good_version = w->version;
        snprintf(c->good_dir, sizeof c->good_dir, "%s", !strcmp(w->transport, "dir") ? w->dir : "");
        c->stats.fetched++;
        if (w->live) c->stats.live++;
        c->stats.fetch_ms_last = now_ms() - seen_ms;
        pthread_cond_broadcast(&c->ready_cv);
    } else if (w->live && !c->stop) { /* not a failure yet: the stored copy is tried when it comes */
        c->tried = was_tried;
        memcpy(c->tried_digest, was_digest, 32);
        deferred = true;
    } else if (!c->stop) {
        c->stats.failed++;
    }
    bool closing = c->stop;
    pthread_mutex_unlock(&c->mu);
    model_free(m);
    if (deferred)
        tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": live copy not complete (%s): waiting for the stored copy",
                  w->version, tidal_errmsg());
    else if (st != TIDAL_OK && !closing)
        tidal_log(TIDAL_LOG_WARN, "weights: skipped: %s", tidal_errmsg());
    return deferred;
}

static void *client_main(void *arg)
{
    weights_client *c = arg;
    candidates k = {0};
    double seen_ms = 0;
    bool warned = false;
    while (!stopping(c)) {
        bus_kv_event ev;
        /* with a candidate, only drain what is queued already (then fetch) */
        tidal_status st = bus_kv_watch_next(c->watch, k.best ? 1 : POLL_MS, &ev);
        if (st == TIDAL_OK) {
            warned = false;
            if (ev.kind == BUS_KV_PUT) consider(c, &ev, &k, &seen_ms);
            bus_kv_event_clear(&ev);
            continue;
        }
        if (st != TIDAL_ERR_TIMEOUT) {
            if (!warned) tidal_log(TIDAL_LOG_WARN, "weights: watching %s: %s", JOB_KEY_WEIGHTS, tidal_errmsg());
            warned = true;
            struct timespec ts = {0, POLL_MS * 1000000L};
            nanosleep(&ts, NULL);
            continue;
        }
        if (!k.best) continue;
        unsigned got = 0;
        const Tidal__V1__WeightsManifest *w = k.best;
        if (w->live && !live_caught(c, w, &got)) { /* its stored copy is fetched when it comes */
            tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": live, the tap caught %u of %" PRIu32 " chunks: waiting "
                      "for the stored copy%s", w->version, got, w->chunk_count,
                      k.stored ? "; the stored version before it meanwhile" : "");
            w = k.stored;
        }
        /* idle again: the next version's chunks are caught into the image buffer as they are broadcast
         * (not after a live version left for its stored copy: what the tap caught of it is fetched no more) */
        if (w && !process(c, w, seen_ms) && c->image) bus_blob_tap_arm(c->tap, c->image, c->image_cap);
        candidates_clear(&k);
    }
    candidates_clear(&k);
    return NULL;
}

/* ---------------------------------------------------------------- API */

tidal_status weights_client_create(tidal_bus *bus, const job_names *names, const model_config *cfg,
                                   const uint8_t *public_key, weights_client **out)
{
    return weights_client_create_http(bus, names, cfg, public_key, NULL, out);
}

tidal_status weights_client_create_http(tidal_bus *bus, const job_names *names, const model_config *cfg,
                                        const uint8_t *public_key, const weights_client_http *http,
                                        weights_client **out)
{
    *out = NULL;
    if (!bus || !names) return tidal_fail(TIDAL_ERR_INVALID, "weights client: a bus and the job's names are required");
    if (cfg) TRY(model_config_validate(cfg, "weights client config"));
    weights_client *c = calloc(1, sizeof *c);
    if (!c) return tidal_fail(TIDAL_ERR_NOMEM, "weights client: out of memory");
    c->bus = bus;
    c->names = *names;
    if (cfg) {
        c->cfg = *cfg;
        c->have_cfg = true;
    }
    c->tried = UINT64_MAX;
    c->good_version = UINT64_MAX;
    c->http_timeout_ms = http ? http->timeout_ms : 0;
    c->http_parallel = http ? http->parallel : 0;
    if (http && http->token) {
        if (!(c->http_token = strdup(http->token))) {
            free(c);
            return tidal_fail(TIDAL_ERR_NOMEM, "weights client: out of memory");
        }
    } else if (weights_token_from_env(&c->http_token) != TIDAL_OK) {
        /* a worker of a bus job does not need it: said now, refused by the server later */
        tidal_log(TIDAL_LOG_WARN, "weights client %s: %s; HTTP fetches go without a token", names->job, tidal_errmsg());
        tidal_clear();
    }
    c->stats.latest_seen = UINT64_MAX;
    if (public_key) {
        memcpy(c->pub, public_key, sizeof c->pub);
        c->have_pub = true;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->ready_cv, &ca);
    pthread_condattr_destroy(&ca);

    bus_kv_cfg kc = {.bucket = c->names.kv_bucket};
    tidal_status st = TIDAL_OK;
    TRY_GOTO(bus_kv_ensure(bus, &kc, &c->kv));
    /* the job's key now when it is there (else with the first manifest); a
     * pinned key that the job's state contradicts is worth a warning */
    if (public_key) {
        uint8_t job_pub[TIDAL_SIGN_PUB_BYTES];
        void *val = NULL;
        size_t len = 0;
        if (bus_kv_get(c->kv, JOB_KEY_PUBKEY, &val, &len, NULL) == TIDAL_OK &&
            tidal_sign_pub_parse(val, len, JOB_KEY_PUBKEY, job_pub) == TIDAL_OK && memcmp(job_pub, c->pub, 32) != 0)
            tidal_log(TIDAL_LOG_WARN, "weights: job %s: kv %s key %s is not weights.public_key; manifests are verified "
                      "with weights.public_key", c->names.job, c->names.kv_bucket, JOB_KEY_PUBKEY);
        free(val);
    } else if (load_job_key(c) != TIDAL_OK) {
        tidal_clear(); /* not yet: looked for again with the first manifest */
    }
    TRY_GOTO(bus_kv_watch(c->kv, JOB_KEY_WEIGHTS, &c->watch));
    /* keep 0: a reader never prunes */
    TRY_GOTO(bus_blob_store_open(bus, c->names.weights_stream, c->names.weights_prefix, 0, &c->store));
    TRY_GOTO(bus_blob_tap_open(c->store, &c->tap));
    if (pthread_create(&c->thread, NULL, client_main, c) != 0) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "cannot start the sync thread");
        goto cleanup;
    }
    c->thread_started = true;
    *out = c;
cleanup:
    if (st != TIDAL_OK) {
        weights_client_free(c);
        return tidal_wrap(st, "weights client %s", names->job);
    }
    return TIDAL_OK;
}

/* The ready model when it is newer than `have` (UINT64_MAX: none held); under mu. */
static model *take_locked(weights_client *c, uint64_t have, uint64_t *version)
{
    if (!c->ready || (have != UINT64_MAX && c->ready_version <= have)) return NULL;
    model *m = c->ready;
    c->ready = NULL;
    if (version) *version = c->ready_version;
    return m;
}

model *weights_client_take(weights_client *c, uint64_t have, uint64_t *version)
{
    assert(c);
    pthread_mutex_lock(&c->mu);
    model *m = take_locked(c, have, version);
    pthread_mutex_unlock(&c->mu);
    return m;
}

tidal_status weights_client_wait(weights_client *c, uint64_t min_version, int timeout_ms, model **out,
                                 uint64_t *version)
{
    assert(c && out);
    *out = NULL;
    const uint64_t have = min_version - 1; /* 0 - 1 = UINT64_MAX: any version */
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    if (timeout_ms > 0) {
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&c->mu);
    model *m;
    while (!(m = take_locked(c, have, version))) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&c->ready_cv, &c->mu);
        } else if (pthread_cond_timedwait(&c->ready_cv, &c->mu, &dl) != 0) {
            m = take_locked(c, have, version);
            break;
        }
    }
    uint64_t seen = c->stats.latest_seen;
    pthread_mutex_unlock(&c->mu);
    if (!m) {
        char newest[32] = "none";
        if (seen != UINT64_MAX) snprintf(newest, sizeof newest, "v%" PRIu64, seen);
        return tidal_fail(TIDAL_ERR_TIMEOUT, "weights %s: no model of version >= %" PRIu64 " within %d ms (newest manifest seen: %s)",
                          c->names.job, min_version, timeout_ms, newest);
    }
    *out = m;
    return TIDAL_OK;
}

void weights_client_recycle(weights_client *c, model *m)
{
    assert(c);
    if (!m) return;
    pthread_mutex_lock(&c->mu);
    model *old = c->spare;
    c->spare = m;
    pthread_mutex_unlock(&c->mu);
    model_free(old);
}

bool weights_client_dir(weights_client *c, uint64_t v, char *out, size_t cap)
{
    assert(c && out && cap);
    pthread_mutex_lock(&c->mu);
    const bool ok = c->good_version == v && c->good_dir[0] && strlen(c->good_dir) < cap;
    if (ok) snprintf(out, cap, "%s", c->good_dir);
    pthread_mutex_unlock(&c->mu);
    return ok;
}

void weights_client_stats(weights_client *c, weights_stats *s)
{
    assert(c && s);
    pthread_mutex_lock(&c->mu);
    *s = c->stats;
    pthread_mutex_unlock(&c->mu);
}

void weights_client_free(weights_client *c)
{
    if (!c) return;
    if (c->thread_started) {
        pthread_mutex_lock(&c->mu);
        c->stop = true;
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->thread, NULL);
    }
    bus_blob_tap_close(c->tap); /* before the store: its callback reads the store's prefix */
    bus_blob_store_close(c->store);
    bus_kv_watch_stop(c->watch);
    bus_kv_close(c->kv);
    model_free(c->ready);
    model_free(c->spare);
    free(c->image);
    free(c->http_token);
    free(c->spare_image);
    free(c->base.image);
    pthread_cond_destroy(&c->ready_cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
