/* publish.c - the trainer's weight publisher (see publish.h for the contract).
 *
 * Two threads share three snapshot slots under one mutex:
 *   pending  handed over by weights_publish, not started; a newer handover
 *            overwrites it in place (the older version is never sent);
 *   spare    a buffer kept for the next handover, so a steady trainer does not
 *            allocate (and fault in) hundreds of MB per step;
 *   the one the background thread is publishing, which it owns outside the
 *   lock and gives back as the spare once that version is on the bus (or
 *   given up): the image is serialised from it (fp32 tensors read in place).
 * Transport bus: the background thread broadcasts the safetensors image as
 * live blob "<version>" while it serialises it (st_writer_emit into a live
 * bus_blob_writer: each 4 MiB chunk hashed and sent to the workers' taps as
 * it fills, the image kept in one reused buffer), puts the WeightsManifest
 * (with the blob's manifest, live set) in `weights.latest` and the version in
 * `trainer.version`, then stores the blob in the stream from the kept image
 * and puts the manifest again with live clear (protocol.md "Live weights").
 * The blob store and KV handles belong to that thread.
 *
 * A failure in the background is logged, kept (the first since the last
 * flush, with the thread's message) and reported by weights_publisher_flush;
 * the thread goes on with the next handover.
 */
#include "trainer/publish.h"

#include <assert.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/digest.h"
#include "base/fs.h"
#include "proto/codec.h"
#include "proto/manifest_sign.h"
#include "trainer/publish_delta.h"
#include "trainer/publish_dir.h"

#define DEFAULT_KEEP 3 /* docs/protocol.md: the trainer's keep, default 3 */
#define RETRY_MS 500        /* a version that failed on a bus outage is tried again this often */
#define RETRY_FOR_MS 120000 /* and given up (a failure for the next flush) after this long */
#define HTTP_CHUNK_BYTES (4u << 20) /* transport http: the hashed ranges (docs/protocol.md) */

/* One handed-over version: the config, the tensor table and a copy of the
 * parameters (capacities kept so the buffers can be reused). */
typedef struct snapshot {
    uint64_t version;
    model_config cfg;
    model_tensor *tensors;
    int n_tensors, cap_tensors;
    float *params;
    size_t n_params, cap_params;
} snapshot;

struct weights_publisher {
    tidal_bus *bus;
    job_names names;
    int keep;
    st_dtype dtype;
    const tidal_sign_key *key; /* signs every manifest */
    tidal_sign_key *own_key;   /* the key made for this publisher when none was given */
    bus_blob_store *store; /* the background thread's */
    bus_kv *kv;            /* the background thread's */
    weights_http *http;    /* transport http: the server (NULL: bus only) */
    char dir[4096];        /* transport dir: the root of step_<v>/ ("" for the bus) */
    const hf_files *hf;    /* transport dir: borrowed */
    bool delta;
    delta_chain chain;     /* delta: the background thread's */
    void *live;            /* transport bus: the last image broadcast, kept for its stored copy (the thread's) */
    size_t live_cap;

    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* a handover or stop, for the thread */
    pthread_cond_t idle_cv; /* the thread finished a version, for flush */
    snapshot *pending;      /* handed over, not started (NULL: none) */
    snapshot *spare;        /* a free buffer (NULL: none) */
    bool working;           /* the thread is publishing working_version */
    uint64_t working_version;
    bool stop;
    bool handed_any;
    uint64_t last_handed;   /* the newest version handed over (when handed_any) */
    uint64_t published;     /* newest manifest on the bus; UINT64_MAX none */
    uint64_t replaced;      /* handovers overwritten before they started */
    tidal_status failed;    /* first background failure since the last flush */
    char failed_msg[512];

    pthread_t thread;
    bool thread_started;
};

static void snapshot_free(snapshot *s)
{
    if (!s) return;
    free(s->tensors);
    free(s->params);
    free(s);
}

static struct timespec deadline_after(int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------- background */

/* Hand a snapshot back once it is published (or given up): it becomes the
 * spare (or is freed when there is one already). */
static void release_snapshot(weights_publisher *p, snapshot *s)
{
    pthread_mutex_lock(&p->mu);
    if (!p->spare) {
        p->spare = s;
        s = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    snapshot_free(s);
}

/* A safetensors writer holding snapshot s in the publisher's dtype: every
 * parameter under its Hugging Face name, in the model's order; fp32 tensors
 * borrowed from the snapshot, bf16 ones converted (round to nearest even).
 * *out belongs to the caller (st_writer_free), also on failure. */
static tidal_status image_writer(weights_publisher *p, const snapshot *s, st_writer **out)
{
    TRY(st_writer_new(out));
    TRY(st_writer_metadata(*out, "format", "pt"));
    for (int i = 0; i < s->n_tensors; i++) {
        const model_tensor *t = &s->tensors[i];
        assert(t->offset + t->numel <= s->n_params);
        const float *data = s->params + t->offset;
        if (p->dtype == ST_F32)
            TRY(st_writer_add_ref(*out, t->name, ST_F32, t->ndim, t->shape, data, t->numel * sizeof *data));
        else
            TRY(st_writer_add_f32(*out, t->name, p->dtype, t->ndim, t->shape, data));
    }
    return TIDAL_OK;
}

static tidal_status sink_blob(void *ctx, const void *buf, size_t len)
{
    return bus_blob_writer_write(ctx, buf, len);
}

/* Broadcast the safetensors image of snapshot s in the publisher's dtype
 * (every parameter under its Hugging Face name, in the model's order) as
 * live blob `name` while it is serialised into p->live (kept for the stored
 * copy; grown when the model grew, else reused): each chunk hashed and sent
 * to the workers' taps as it fills. *manifest (malloc'd, the caller's) is the
 * blob's encoded BlobManifest, *len the image's bytes. */
static tidal_status broadcast_image(weights_publisher *p, const snapshot *s, const char *name, void **manifest,
                                    size_t *manifest_len, size_t *len)
{
    const uint64_t v = s->version;
    st_writer *w = NULL;
    bus_blob_writer *bw = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(image_writer(p, s, &w));
    TRY_GOTO(st_writer_size(w, len));
    if (*len > p->live_cap) {
        free(p->live);
        p->live_cap = 0;
        p->live = malloc(*len);
        if (!p->live) {
            st = tidal_fail(TIDAL_ERR_NOMEM, "out of memory for the %zu-byte image", *len);
            goto cleanup;
        }
        p->live_cap = *len;
    }
    TRY_GOTO(bus_blob_writer_open_live(p->store, name, p->live, *len, &bw));
    TRY_GOTO(st_writer_emit(w, sink_blob, bw));
    st = bus_blob_writer_close_live(bw, manifest, manifest_len, NULL);
    bw = NULL;
cleanup:
    if (bw) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tidal_errmsg());
        bus_blob_writer_abort(bw);
        tidal_fail(st, "%s", msg);
    }
    st_writer_free(w);
    if (st != TIDAL_OK) return tidal_wrap(st, "weights v%" PRIu64 ": broadcast blob %s", v, name);
    return TIDAL_OK;
}

/* The manifest bus_blob_put just wrote for blob `name` (the last message on
 * PREFIX.<name>.m, docs/protocol.md "Chunked blobs"), decoded. */
static tidal_status read_blob_manifest(weights_publisher *p, const char *name, Tidal__V1__BlobManifest **out)
{
    char subj[sizeof p->names.weights_prefix + 64];
    snprintf(subj, sizeof subj, "%s.%s.m", p->names.weights_prefix, name);
    bus_msg *msg = NULL;
    /* from the leader: a direct get may reach a replica that has not applied the put yet (a cluster) */
    tidal_status st = bus_stream_get_last_leader(p->bus, p->names.weights_stream, subj, &msg);
    if (st != TIDAL_OK) return st;
    st = codec_decode_blob_manifest(bus_msg_data(msg), (size_t)bus_msg_len(msg), out);
    bus_msg_destroy(msg);
    return st;
}

/* Sign, check and encode manifest wm (every field set: the signature covers
 * them), then put it in `weights.latest` and the version `name` in
 * `trainer.version`. Safe to repeat. */
static tidal_status put_manifest(weights_publisher *p, Tidal__V1__WeightsManifest *wm, const char *name)
{
    const uint64_t v = wm->version;
    void *buf = NULL;
    size_t blen = 0;
    uint8_t sig[TIDAL_SIGN_SIG_BYTES];
    wm->digest_algorithm = DIGEST_ALGORITHM; /* every digest the trainer writes is BLAKE3 (base/digest.h) */
    tidal_status st = codec_manifest_sign(wm, p->names.job, p->key, sig);
    if (st == TIDAL_OK) st = codec_validate(&wm->base); /* our own bug, caught before a worker sees it */
    if (st == TIDAL_OK) st = codec_encode(&wm->base, &buf, &blen);
    if (st != TIDAL_OK) return tidal_wrap(st, "weights v%" PRIu64 ": manifest", v);
    st = bus_kv_put(p->kv, JOB_KEY_WEIGHTS, buf, blen, NULL);
    free(buf);
    if (st != TIDAL_OK)
        return tidal_wrap(st, "weights v%" PRIu64 ": put %s in kv %s", v, JOB_KEY_WEIGHTS, p->names.kv_bucket);
    pthread_mutex_lock(&p->mu);
    p->published = v; /* the manifest is on the bus: workers can take it */
    pthread_mutex_unlock(&p->mu);
    st = bus_kv_put(p->kv, JOB_KEY_VERSION, name, strlen(name), NULL);
    if (st != TIDAL_OK)
        return tidal_wrap(st, "weights v%" PRIu64 ": put %s in kv %s", v, JOB_KEY_VERSION, p->names.kv_bucket);
    return TIDAL_OK;
}

/* transport bus: publish snapshot s live, then stored (docs/protocol.md
 * "Live weights"): its image broadcast to the workers' taps as blob
 * "<version>" while it is serialised, the WeightsManifest with live set in
 * `weights.latest` (a worker that caught every chunk builds the version
 * now), then the blob stored in the stream from the same bytes and the
 * manifest put again with live clear (for workers that missed chunks, or
 * join later), each put with `trainer.version`. Safe to repeat after a
 * failure: the blob is broadcast and replaced, the keys are put again. */
static tidal_status store_bus(weights_publisher *p, const snapshot *s)
{
    const uint64_t v = s->version;
    const model_config cfg = s->cfg;
    char name[24];
    snprintf(name, sizeof name, "%" PRIu64, v);
    const double t_image = mono_ms();
    const bool bf16 = p->dtype == ST_BF16;
    char *config_json = NULL;
    void *mbuf = NULL;
    size_t mlen = 0, len = 0;
    Tidal__V1__BlobManifest *blob = NULL;
    tidal_status st = TIDAL_OK;
    st = model_config_to_json(&cfg, bf16 ? "bfloat16" : "float32", "config.json", &config_json);
    if (st != TIDAL_OK) return tidal_wrap(st, "weights v%" PRIu64, v);
    TRY_GOTO(broadcast_image(p, s, name, &mbuf, &mlen, &len));
    const double t_live = mono_ms();
    TRY_GOTO(codec_decode_blob_manifest(mbuf, mlen, &blob));

    Tidal__V1__WeightsManifest wm = TIDAL__V1__WEIGHTS_MANIFEST__INIT;
    wm.schema_version = CODEC_SCHEMA_VERSION;
    wm.version = v;
    wm.dtype = bf16 ? "bf16" : "fp32";
    wm.bytes = blob->bytes;
    wm.chunk_count = blob->chunk_count;
    wm.digest = blob->digest;
    wm.transport = "bus";
    wm.blob = blob;
    wm.model_config_json = config_json;
    wm.created_unix_ms = (uint64_t)unix_ms();
    wm.live = true;
    TRY_GOTO(put_manifest(p, &wm, name));
    const double t_announced = mono_ms();

    st = bus_blob_put_live(p->store, name, p->live, len, mbuf, mlen, NULL);
    if (st != TIDAL_OK) {
        st = tidal_wrap(st, "weights v%" PRIu64 ": store blob %s in %s", v, name, p->names.weights_stream);
        goto cleanup;
    }
    const double t_stored = mono_ms();
    wm.live = false;
    wm.created_unix_ms = (uint64_t)unix_ms();
    TRY_GOTO(put_manifest(p, &wm, name));
    tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": published, %" PRIu64 " bytes in %" PRIu32 " chunks (%s): "
              "broadcast %.0f ms, live manifest %.0f ms, stored %.0f ms, manifest %.0f ms", v, wm.bytes,
              wm.chunk_count, wm.dtype, t_live - t_image, t_announced - t_live, t_stored - t_announced,
              mono_ms() - t_stored);
cleanup:
    if (blob) tidal__v1__blob_manifest__free_unpacked(blob, NULL);
    free(mbuf);
    free(config_json);
    return st;
}

/* Store one serialized version (image[len], not consumed): blob, then
 * WeightsManifest in `weights.latest`, then `trainer.version`. Safe to repeat
 * after a failure: the blob is replaced, the keys are put again. */
static tidal_status store_image(weights_publisher *p, uint64_t v, const model_config *cfgp, const void *image,
                                size_t len, const delta_wire *wire)
{
    const model_config cfg = *cfgp;
    char name[24];
    snprintf(name, sizeof name, "%" PRIu64, v);
    const double t_image = mono_ms();
    tidal_status st;

    const bool bf16 = p->dtype == ST_BF16;
    char *config_json = NULL;
    st = model_config_to_json(&cfg, bf16 ? "bfloat16" : "float32", "config.json", &config_json);
    if (st != TIDAL_OK) return tidal_wrap(st, "weights v%" PRIu64, v);

    Tidal__V1__WeightsManifest wm = TIDAL__V1__WEIGHTS_MANIFEST__INIT;
    bus_blob_info info = {0};
    Tidal__V1__BlobManifest *blob = NULL;
    char path[4096];
    if (p->dir[0]) { /* transport dir: the directory, no bus copy */
        st = publish_dir_write(p->dir, v, config_json, image, len, p->hf, p->keep, path, sizeof path);
        if (st != TIDAL_OK) {
            free(config_json);
            return st;
        }
        info.bytes = len;
        memcpy(info.digest, wire->image_digest, 32);
        wm.transport = "dir";
        wm.dir = path;
    } else {
        const void *data = wire ? wire->data : image; /* a delta, or the image */
        const size_t dlen = wire ? wire->len : len;
        st = bus_blob_put(p->store, name, data, dlen, &info);
        if (st != TIDAL_OK) {
            free(config_json);
            return tidal_wrap(st, "weights v%" PRIu64 ": store blob %s in %s", v, name, p->names.weights_stream);
        }
        assert(info.bytes == dlen);
        st = read_blob_manifest(p, name, &blob);
        if (st != TIDAL_OK) {
            free(config_json);
            return tidal_wrap(st, "weights v%" PRIu64 ": read back the manifest of blob %s", v, name);
        }
        wm.transport = "bus";
        wm.blob = blob;
        wm.chunk_count = info.chunk_count;
    }
    const double t_blob = mono_ms();

    wm.schema_version = CODEC_SCHEMA_VERSION;
    wm.version = v;
    wm.dtype = bf16 ? "bf16" : "fp32";
    wm.bytes = info.bytes;
    wm.digest.data = info.digest;
    wm.digest.len = sizeof info.digest;
    wm.model_config_json = config_json;
    wm.created_unix_ms = (uint64_t)unix_ms();
    if (p->delta) {
        wm.full_every = (uint32_t)p->chain.full_every;
        if (wire->delta) {
            wm.delta = true;
            wm.delta_base = wire->base;
            wm.chain = p->chain.chain;
            wm.n_chain = p->chain.n_chain;
            wm.image_bytes = len;
            wm.image_digest.data = (uint8_t *)wire->image_digest;
            wm.image_digest.len = 32;
        }
    }
    st = put_manifest(p, &wm, name);
    tidal__v1__blob_manifest__free_unpacked(blob, NULL);
    free(config_json);
    TRY(st);
    if (wire && wire->delta)
        tidal_log(TIDAL_LOG_INFO, "weights v%" PRIu64 ": published as a delta against v%" PRIu64 ": %" PRIu64
                  " bytes for a %zu-byte image (%.2f%%), %" PRIu64 " of %" PRIu64 " values changed (%.3f%%)", v,
                  wire->base, info.bytes, len, 100.0 * (double)info.bytes / (double)len, wire->stats.changed,
                  wire->stats.values, wire->stats.values ? 100.0 * (double)wire->stats.changed / (double)wire->stats.values : 0.0);
    tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": published, %" PRIu64 " bytes in %" PRIu32 " chunks (%s, %s): "
              "blob %.0f ms, manifest %.0f ms", v, info.bytes, info.chunk_count, wm.dtype, wm.transport,
              t_blob - t_image, mono_ms() - t_blob);
    return TIDAL_OK;
}

/* transport http: what is done of a version (store_version may run again after a bus outage). */
typedef struct http_progress {
    bool served;   /* the server holds the image */
    bool announced; /* its manifest is in weights.latest */
    uint8_t digest[32];
    uint8_t (*chunk_digests)[32];
    uint32_t n_chunks;
} http_progress;

typedef struct whole_hash {
    const void *data;
    size_t len;
    uint8_t out[32];
} whole_hash;

static void *whole_hash_main(void *arg)
{
    whole_hash *w = arg;
    digest_compute(w->data, w->len, w->out);
    return NULL;
}

/* The image's digest and its ranges' (two threads: the two hashes take as long as each other). */
static tidal_status hash_image(uint64_t v, const void *image, size_t len, http_progress *hp)
{
    hp->n_chunks = (uint32_t)((len + HTTP_CHUNK_BYTES - 1) / HTTP_CHUNK_BYTES);
    hp->chunk_digests = malloc((hp->n_chunks ? hp->n_chunks : 1) * sizeof *hp->chunk_digests);
    if (!hp->chunk_digests) return tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": range hashes", v);
    whole_hash wh = {.data = image, .len = len};
    pthread_t th;
    const bool threaded = pthread_create(&th, NULL, whole_hash_main, &wh) == 0;
    if (!threaded) whole_hash_main(&wh);
    for (uint32_t i = 0; i < hp->n_chunks; i++) {
        const size_t off = (size_t)i * HTTP_CHUNK_BYTES, n = len - off < HTTP_CHUNK_BYTES ? len - off : HTTP_CHUNK_BYTES;
        digest_compute((const uint8_t *)image + off, n, hp->chunk_digests[i]);
    }
    if (threaded) pthread_join(th, NULL);
    memcpy(hp->digest, wh.out, 32);
    return TIDAL_OK;
}

/* transport http: serve image[len] (the server copies it) and put its
 * manifest in weights.latest and the version in trainer.version. Steps done
 * already are skipped. */
static tidal_status announce_http(weights_publisher *p, uint64_t v, const model_config *cfg, const void *image,
                                  size_t len, http_progress *hp)
{
    const double t0 = mono_ms();
    if (!hp->served) {
        if (!hp->chunk_digests) TRY(hash_image(v, image, len, hp));
        TRY(weights_http_add(p->http, v, image, len));
        hp->served = true;
    }
    if (hp->announced) return TIDAL_OK;
    const double t_hash = mono_ms();
    const bool bf16 = p->dtype == ST_BF16;
    char *config_json = NULL;
    TRY_WRAP(model_config_to_json(cfg, bf16 ? "bfloat16" : "float32", "config.json", &config_json), "weights v%" PRIu64, v);
    char url[400], name[24];
    snprintf(name, sizeof name, "%" PRIu64, v);
    snprintf(url, sizeof url, "%s/weights/%s", weights_http_base_url(p->http), name);
    ProtobufCBinaryData *hs = malloc((hp->n_chunks ? hp->n_chunks : 1) * sizeof *hs);
    if (!hs) {
        free(config_json);
        return tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": manifest", v);
    }
    for (uint32_t i = 0; i < hp->n_chunks; i++) hs[i] = (ProtobufCBinaryData){32, hp->chunk_digests[i]};
    Tidal__V1__WeightsManifest wm = TIDAL__V1__WEIGHTS_MANIFEST__INIT;
    wm.schema_version = CODEC_SCHEMA_VERSION;
    wm.version = v;
    wm.dtype = bf16 ? "bf16" : "fp32";
    wm.bytes = len;
    wm.digest = (ProtobufCBinaryData){32, hp->digest};
    wm.transport = "http";
    wm.url = url;
    wm.http_chunk_bytes = HTTP_CHUNK_BYTES;
    wm.n_http_chunk_digest = hp->n_chunks;
    wm.http_chunk_digest = hs;
    wm.model_config_json = config_json;
    wm.created_unix_ms = (uint64_t)unix_ms();
    const tidal_status st = put_manifest(p, &wm, name);
    free(hs);
    free(config_json);
    TRY(st);
    hp->announced = true;
    tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": served at %s, %zu bytes in %" PRIu32 " ranges: hashes %.0f ms, "
              "manifest %.0f ms", v, url, len, hp->n_chunks, t_hash - t0, mono_ms() - t_hash);
    return TIDAL_OK;
}

/* transport http: snapshot s as one safetensors image in memory (the server
 * keeps a copy; the bus copy is stored from it). Gives s back. */
static tidal_status serialize(weights_publisher *p, snapshot *s, void **image, size_t *len)
{
    const uint64_t v = s->version;
    st_writer *w = NULL;
    tidal_status st = TIDAL_OK;
    TRY_GOTO(image_writer(p, s, &w));
    TRY_GOTO(st_writer_to_memory(w, image, len));
cleanup:
    st_writer_free(w);
    release_snapshot(p, s);
    if (st != TIDAL_OK) return tidal_wrap(st, "weights v%" PRIu64 ": serialize", v);
    return TIDAL_OK;
}

/* transport http: one version out: served and announced (steps done already
 * skipped), then its bus copy, blob "<version>", for workers that cannot
 * reach the server. Safe to repeat after a failure. */
static tidal_status store_http(weights_publisher *p, uint64_t v, const model_config *cfg, void *image, size_t len,
                               http_progress *hp)
{
    TRY(announce_http(p, v, cfg, image, len, hp));
    char name[24];
    snprintf(name, sizeof name, "%" PRIu64, v);
    const double t0 = mono_ms();
    bus_blob_info info;
    TRY_WRAP(bus_blob_put(p->store, name, image, len, &info), "weights v%" PRIu64 ": store blob %s in %s", v, name,
             p->names.weights_stream);
    tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": bus copy stored, %" PRIu64 " bytes in %.0f ms", v, info.bytes,
              mono_ms() - t0);
    return TIDAL_OK;
}

static void *publisher_main(void *arg)
{
    weights_publisher *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->pending) pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->stop) break; /* what waits is dropped (publish.h) */
        snapshot *s = p->pending;
        p->pending = NULL;
        p->working = true;
        p->working_version = s->version;
        pthread_mutex_unlock(&p->mu);

        const uint64_t v = s->version;
        const model_config cfg = s->cfg;
        void *image = NULL;
        size_t len = 0;
        /* three ways out: streamed to the bus (plain bus); whole in memory, then served over HTTP with
         * a bus copy (http); whole in memory, then as a directory or a delta (dir, weights.delta) */
        const bool in_memory = p->http || p->delta || p->dir[0];
        http_progress hp = {0};
        delta_wire wire = {0}, *wp = NULL;
        tidal_status st = in_memory ? serialize(p, s, &image, &len) /* gives s back */ : store_bus(p, s);
        if (in_memory) s = NULL;
        if (st == TIDAL_OK && !p->http && (p->delta || p->dir[0])) { /* the image's digest, the delta when it pays */
            st = delta_chain_prepare(&p->chain, v, image, len, p->dtype == ST_BF16 ? 2 : 4, &wire);
            wp = &wire;
        }
        if (st == TIDAL_OK && in_memory)
            st = p->http ? store_http(p, v, &cfg, image, len, &hp) : store_image(p, v, &cfg, image, len, wp);
        /* A bus outage (the client reconnects by itself) is waited out: the same
         * image again every RETRY_MS, until it goes through, a newer version is
         * handed over (only the newest matters), the publisher stops, or
         * RETRY_FOR_MS have passed. */
        const double t_fail = mono_ms();
        while ((st == TIDAL_ERR_TIMEOUT || st == TIDAL_ERR_BUS) && mono_ms() - t_fail < RETRY_FOR_MS) {
            tidal_log(TIDAL_LOG_WARN, "weights publisher: %s; retrying", tidal_errmsg());
            usleep(RETRY_MS * 1000);
            pthread_mutex_lock(&p->mu);
            const bool give_up = p->stop || p->pending;
            pthread_mutex_unlock(&p->mu);
            if (give_up) {
                st = TIDAL_OK; /* superseded (or stopping): not a failure */
                break;
            }
            st = p->http ? store_http(p, v, &cfg, image, len, &hp)
                 : in_memory ? store_image(p, v, &cfg, image, len, wp)
                             : store_bus(p, s);
        }
        if (s) release_snapshot(p, s);
        if (st == TIDAL_OK && p->delta) delta_chain_commit(&p->chain, p->store, v, &image, len, &wire);
        delta_wire_clear(&wire);
        free(image);
        free(hp.chunk_digests);
        if (st != TIDAL_OK) tidal_log(TIDAL_LOG_WARN, "weights publisher: %s", tidal_errmsg());

        pthread_mutex_lock(&p->mu);
        if (st != TIDAL_OK && p->failed == TIDAL_OK) {
            p->failed = st;
            snprintf(p->failed_msg, sizeof p->failed_msg, "%s", tidal_errmsg());
        }
        p->working = false;
        pthread_cond_broadcast(&p->idle_cv);
    }
    p->working = false;
    pthread_cond_broadcast(&p->idle_cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* ---------------------------------------------------------------- the key */

/* Put the public half of the publisher's key in KV `trainer.pubkey`, or find
 * it there already: create-only, so a job's key is set once (by its first
 * trainer) and a trainer with another key is refused rather than replacing it. */
static tidal_status claim_public_key(weights_publisher *p)
{
    uint8_t pub[TIDAL_SIGN_PUB_BYTES], have[TIDAL_SIGN_PUB_BYTES];
    char text[TIDAL_SIGN_PUB_TEXT];
    tidal_sign_key_public(p->key, pub);
    tidal_sign_pub_format(pub, text);
    tidal_status st = bus_kv_create(p->kv, JOB_KEY_PUBKEY, text, strlen(text), NULL);
    if (st == TIDAL_OK) {
        tidal_log(TIDAL_LOG_INFO, "weights publisher %s: weights signed with %s", p->names.job, text);
        return TIDAL_OK;
    }
    if (st != TIDAL_ERR_CONFLICT)
        return tidal_wrap(st, "put %s in kv %s", JOB_KEY_PUBKEY, p->names.kv_bucket);
    void *val = NULL;
    size_t len = 0;
    char what[256];
    snprintf(what, sizeof what, "kv %s key %s", p->names.kv_bucket, JOB_KEY_PUBKEY);
    TRY_WRAP(bus_kv_get(p->kv, JOB_KEY_PUBKEY, &val, &len, NULL), "read %s", what);
    st = tidal_sign_pub_parse(val, len, what, have);
    free(val);
    TRY(st);
    if (memcmp(have, pub, sizeof pub) != 0) {
        char other[TIDAL_SIGN_PUB_TEXT];
        tidal_sign_pub_format(have, other);
        return tidal_fail(TIDAL_ERR_CONFLICT,
                          "%s holds %s, but this trainer signs with %s: the job's weights were signed with another "
                          "key (give that key in weights.signing_key, or remove the job's bus objects to start it anew)",
                          what, other, text);
    }
    return TIDAL_OK;
}

tidal_status weights_signing_key_open(const char *path, const char *run_dir, const char *pin, tidal_sign_key **out)
{
    *out = NULL;
    tidal_sign_key *k = NULL;
    tidal_status st = TIDAL_OK;
    char file[4200];
    if (path && path[0]) {
        TRY_WRAP(tidal_sign_key_load(path, &k), "weights.signing_key");
    } else {
        snprintf(file, sizeof file, "%s/weights_signing_key.pem", run_dir);
        st = tidal_sign_key_load(file, &k);
        if (st == TIDAL_ERR_NOT_FOUND) { /* a new job: a key of its own, kept for a resumed trainer */
            TRY_GOTO(tidal_sign_keygen(&k));
            TRY_GOTO(fs_mkdirs(run_dir));
            TRY_GOTO(tidal_sign_key_save(k, file));
            tidal_log(TIDAL_LOG_INFO, "trainer: made the weights signing key %s", file);
        }
        TRY_GOTO(st);
    }
    if (pin && pin[0]) {
        uint8_t want[TIDAL_SIGN_PUB_BYTES], pub[TIDAL_SIGN_PUB_BYTES];
        TRY_GOTO(tidal_sign_pub_parse(pin, strlen(pin), "weights.public_key", want));
        tidal_sign_key_public(k, pub);
        if (memcmp(want, pub, sizeof pub) != 0) {
            char text[TIDAL_SIGN_PUB_TEXT];
            tidal_sign_pub_format(pub, text);
            st = tidal_fail(TIDAL_ERR_INVALID, "weights.public_key %s is not the public half of the signing key %s (%s)",
                            pin, path && path[0] ? path : file, text);
            goto cleanup;
        }
    }
    *out = k;
    k = NULL;
cleanup:
    tidal_sign_key_free(k);
    return st;
}

/* ---------------------------------------------------------------- API */

tidal_status weights_publisher_create(const weights_publisher_opts *o, weights_publisher **out)
{
    *out = NULL;
    if (!o || !o->bus || !o->names)
        return tidal_fail(TIDAL_ERR_INVALID, "weights publisher: a bus and the job's names are required");
    if (o->keep < 0) return tidal_fail(TIDAL_ERR_INVALID, "weights publisher: keep %d is negative", o->keep);
    st_dtype dtype = o->dtype ? o->dtype : ST_F32;
    if (dtype != ST_F32 && dtype != ST_BF16)
        return tidal_fail(TIDAL_ERR_INVALID, "weights publisher: dtype %s is not F32 or BF16",
                          st_dtype_name(dtype) ? st_dtype_name(dtype) : "(invalid)");

    weights_publisher *p = calloc(1, sizeof *p);
    if (!p) return tidal_fail(TIDAL_ERR_NOMEM, "weights publisher: out of memory");
    p->bus = o->bus;
    p->names = *o->names;
    p->keep = o->keep ? o->keep : DEFAULT_KEEP;
    p->dtype = dtype;
    p->published = UINT64_MAX;
    p->key = o->signing_key;
    if (o->dir && o->dir[0]) {
        if (o->delta) {
            free(p);
            return tidal_fail(TIDAL_ERR_INVALID, "weights publisher: weights.delta needs weights.transport bus, not dir");
        }
        if (strlen(o->dir) >= sizeof p->dir - 64) {
            free(p);
            return tidal_fail(TIDAL_ERR_INVALID, "weights publisher: weights.dir is too long");
        }
        snprintf(p->dir, sizeof p->dir, "%s", o->dir);
        p->hf = o->hf;
    }
    p->delta = o->delta;
    p->chain.full_every = o->full_every > 0 ? o->full_every : 10;
    p->chain.keep = p->keep;
    pthread_mutex_init(&p->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->work_cv, &ca);
    pthread_cond_init(&p->idle_cv, &ca);
    pthread_condattr_destroy(&ca);

    tidal_status st = TIDAL_OK;
    if (!p->key) {
        TRY_GOTO(tidal_sign_keygen(&p->own_key));
        p->key = p->own_key;
    }
    /* With deltas the chain decides what goes (publish_delta.h deletes what no
     * worker needs); the store's own bound, full_every + keep blobs, always
     * covers a chain and clears what a trainer's earlier life left. With dir
     * nothing is on the bus. */
    if (!p->dir[0])
        TRY_GOTO(bus_blob_store_open(p->bus, p->names.weights_stream, p->names.weights_prefix,
                                     p->delta ? p->chain.full_every + p->keep : p->keep, &p->store));
    bus_kv_cfg kc = {.bucket = p->names.kv_bucket};
    TRY_GOTO(bus_kv_ensure(p->bus, &kc, &p->kv));
    TRY_GOTO(claim_public_key(p));
    if (o->http) {
        weights_http_opts ho = {.bind = o->http_bind, .base_url = o->http_url, .token = o->http_token, .keep = p->keep};
        TRY_GOTO(weights_http_start(&ho, &p->http));
    }
    if (pthread_create(&p->thread, NULL, publisher_main, p) != 0) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "cannot start the publishing thread");
        goto cleanup;
    }
    p->thread_started = true;
    *out = p;
cleanup:
    if (st != TIDAL_OK) {
        weights_publisher_free(p);
        return tidal_wrap(st, "weights publisher %s", o->names->job);
    }
    return TIDAL_OK;
}

/* Make s fit n_tensors tensors and n_params floats (contents not kept). */
static tidal_status snapshot_reserve(snapshot *s, int n_tensors, size_t n_params)
{
    if (s->cap_tensors < n_tensors) {
        free(s->tensors);
        s->cap_tensors = 0;
        s->tensors = malloc((size_t)n_tensors * sizeof *s->tensors);
        if (!s->tensors) return TIDAL_ERR_NOMEM;
        s->cap_tensors = n_tensors;
    }
    if (s->cap_params < n_params) {
        free(s->params);
        s->cap_params = 0;
        s->params = malloc((n_params ? n_params : 1) * sizeof *s->params);
        if (!s->params) return TIDAL_ERR_NOMEM;
        s->cap_params = n_params;
    }
    return TIDAL_OK;
}

tidal_status weights_publish(weights_publisher *p, const model *m, uint64_t version)
{
    assert(p && m);
    if (version == UINT64_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "weights publish: version %" PRIu64 " is reserved (none)", version);
    pthread_mutex_lock(&p->mu);
    if (p->handed_any && version <= p->last_handed) {
        uint64_t last = p->last_handed;
        pthread_mutex_unlock(&p->mu);
        return tidal_fail(TIDAL_ERR_INVALID, "weights publish v%" PRIu64 ": versions must increase (v%" PRIu64
                          " was handed over already)", version, last);
    }
    /* a version still waiting is overwritten in place; else reuse the spare */
    snapshot *s = p->pending ? p->pending : p->spare;
    if (p->pending) {
        p->replaced++;
        tidal_log(TIDAL_LOG_DEBUG, "weights v%" PRIu64 ": replaced by v%" PRIu64 " before it was sent",
                  p->pending->version, version);
        p->pending = NULL;
    } else {
        p->spare = NULL;
    }
    p->handed_any = true;
    p->last_handed = version;
    pthread_mutex_unlock(&p->mu);

    /* the copy, outside the lock: the thread never touches a slot it has not taken */
    const int nt = model_num_tensors(m);
    size_t n = 0;
    const float *params = model_params((model *)m, &n); /* read only: model_params has no const form */
    if (!s) s = calloc(1, sizeof *s);
    if (!s || snapshot_reserve(s, nt, n) != TIDAL_OK) {
        snapshot_free(s);
        return tidal_fail(TIDAL_ERR_NOMEM, "weights publish v%" PRIu64 ": cannot copy %zu parameters (%.1f MiB)",
                          version, n, (double)n * 4 / (1 << 20));
    }
    s->version = version;
    s->cfg = *model_cfg(m);
    s->n_tensors = nt;
    for (int i = 0; i < nt; i++) s->tensors[i] = *model_tensor_at(m, i);
    s->n_params = n;
    memcpy(s->params, params, n * sizeof *params);

    pthread_mutex_lock(&p->mu);
    /* weights_publish is called by one thread at a time: nothing came in meanwhile */
    assert(!p->pending);
    p->pending = s;
    pthread_cond_signal(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    return TIDAL_OK;
}

tidal_status weights_publisher_flush(weights_publisher *p, int timeout_ms)
{
    assert(p);
    struct timespec dl = deadline_after(timeout_ms > 0 ? timeout_ms : 0);
    pthread_mutex_lock(&p->mu);
    while (p->pending || p->working) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&p->idle_cv, &p->mu);
        } else if (pthread_cond_timedwait(&p->idle_cv, &p->mu, &dl) != 0) {
            break;
        }
    }
    if (p->pending || p->working) {
        uint64_t v = p->pending ? p->pending->version : p->working_version;
        pthread_mutex_unlock(&p->mu);
        return tidal_fail(TIDAL_ERR_TIMEOUT, "weights publisher %s: v%" PRIu64 " still being published after %d ms",
                          p->names.job, v, timeout_ms);
    }
    tidal_status st = p->failed;
    char msg[sizeof p->failed_msg];
    memcpy(msg, p->failed_msg, sizeof msg);
    p->failed = TIDAL_OK;
    p->failed_msg[0] = '\0';
    pthread_mutex_unlock(&p->mu);
    if (st != TIDAL_OK) return tidal_fail(st, "%s", msg);
    return TIDAL_OK;
}

weights_http *weights_publisher_http(weights_publisher *p) { return p->http; }

uint64_t weights_published_version(weights_publisher *p)
{
    assert(p);
    pthread_mutex_lock(&p->mu);
    uint64_t v = p->published;
    pthread_mutex_unlock(&p->mu);
    return v;
}

void weights_publisher_free(weights_publisher *p)
{
    if (!p) return;
    if (p->thread_started) {
        pthread_mutex_lock(&p->mu);
        p->stop = true;
        pthread_cond_signal(&p->work_cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
    }
    if (p->pending)
        tidal_log(TIDAL_LOG_DEBUG, "weights publisher %s: v%" PRIu64 " dropped unsent at close", p->names.job,
                  p->pending->version);
    snapshot_free(p->pending);
    snapshot_free(p->spare);
    weights_http_stop(p->http);
    bus_kv_close(p->kv);
    bus_blob_store_close(p->store);
    delta_chain_free(&p->chain);
    tidal_sign_key_free(p->own_key);
    free(p->live);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->idle_cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}
