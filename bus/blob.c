/* blob.c - chunked blobs on a JetStream stream (nats.c 3.4 has no Object Store).
 *
 * Layout, for store prefix P and blob N (docs/protocol.md):
 *   P.N.c.<i>   chunk i (i = 0 .. count-1), at most BUS_BLOB_MAX_CHUNK bytes, with
 *               headers Tidal-Blob: N, Tidal-Chunk: i, Tidal-Digest: <hex of the chunk>
 *   P.N.m       the BlobManifest (protobuf): size, chunk size and count, the
 *               digest of every chunk and the blob's digest (digest over the
 *               chunk digests, so no side hashes the bytes twice); written
 *               last, so a blob is visible only once all its chunks are stored.
 * The stream keeps one message per subject, so a chunk re-published under the
 * same index replaces the old one; readers trust only the manifest's hashes.
 * Writing streams: a writer fills one chunk at a time, hashes it and publishes
 * it asynchronously (a few in flight) on a JetStream context of the store's
 * own, so their acks and failures are never mixed with other async publishes;
 * the whole blob never needs to exist in one buffer. Reading runs
 * BLOB_GETS_IN_FLIGHT direct gets at once (one thread each), every chunk
 * copied to its place in the caller's buffer and hashed there in one pass; a
 * chunk that fails its hash is fetched again (BLOB_FETCH_TRIES in all).
 * Live blobs: a live writer broadcasts each chunk first as a core message on
 *   P_live.N.c.<i>.<chunk bytes>  (outside the stream: not stored, no acks, no headers)
 * to the taps listening, and keeps the bytes; bus_blob_put_live stores them
 * afterwards under the manifest the broadcast made. So readers that are up
 * get a blob at core NATS speed, and the stream's file store is off their
 * path; the stored copy serves the rest.
 */
#include <ctype.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "bus/bus_internal.h"
#include "proto/codec.h"
#include "base/digest.h"

#define BLOB_IN_FLIGHT 16            /* chunks un-acked at once: <= 64 MiB buffered */
#define BLOB_HEADER_ROOM (16 << 10)  /* max_payload headroom for headers */
#define BLOB_MIN_WAIT_MS 30000
#define BLOB_GETS_IN_FLIGHT 4        /* direct gets in flight per fetch (one thread each) */
#define BLOB_FETCH_TRIES 3           /* a chunk failing its digest is fetched this often at most */
#define BLOB_LIVE_WINDOW 4           /* live chunks between flushes: <= 16 MiB ahead of the server */

struct bus_blob_store {
    tidal_bus *b;
    jsCtx *js;                 /* this store's own context (async chunk publishes) */
    char stream[128];
    char prefix[128];
    int keep;
    pthread_mutex_t lock;
    uint64_t failed;           /* chunk publishes that failed during the current put */
    char first_err[256];
};

static void on_chunk_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    bus_blob_store *st = closure;
    pthread_mutex_lock(&st->lock);
    if (st->failed++ == 0)
        snprintf(st->first_err, sizeof st->first_err, "%s: %s%s%s",
                 pae->Msg ? natsMsg_GetSubject(pae->Msg) : "?", natsStatus_GetText(pae->Err),
                 pae->ErrText ? ": " : "", pae->ErrText ? pae->ErrText : "");
    pthread_mutex_unlock(&st->lock);
}

/* Blob names become one subject token: letters, digits, '-' and '_'. */
static bool blob_name_ok(const char *name)
{
    if (!name || !*name || strlen(name) > 100) return false;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_') return false;
    return true;
}

tidal_status bus_blob_store_open(tidal_bus *b, const char *stream, const char *prefix, int keep,
                                 bus_blob_store **out)
{
    *out = NULL;
    if (!stream || !*stream || !prefix || !*prefix || strchr(prefix, '*') || strchr(prefix, '>'))
        return tidal_fail(TIDAL_ERR_INVALID, "bus: blob store: a stream name and a literal subject prefix are required");
    char subj[160];
    snprintf(subj, sizeof subj, "%s.>", prefix);
    const char *subjects[] = {subj};
    bus_stream_cfg sc = {
        .name = stream,
        .subjects = subjects,
        .n_subjects = 1,
        .max_msgs_per_subject = 1,
        .allow_direct = true,
    };
    TRY_WRAP(bus_stream_ensure(b, &sc), "bus: blob store %s", stream);

    bus_blob_store *st = calloc(1, sizeof *st);
    if (!st) return tidal_fail(TIDAL_ERR_NOMEM, "bus: blob store %s: out of memory", stream);
    st->b = b;
    snprintf(st->stream, sizeof st->stream, "%s", stream);
    snprintf(st->prefix, sizeof st->prefix, "%s", prefix);
    st->keep = keep;
    pthread_mutex_init(&st->lock, NULL);
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = b->js_timeout_ms;
    jo.PublishAsync.MaxPending = BLOB_IN_FLIGHT;
    jo.PublishAsync.ErrHandler = on_chunk_error;
    jo.PublishAsync.ErrHandlerClosure = st;
    jo.PublishAsync.StallWait = b->js_timeout_ms;
    natsStatus ns = natsConnection_JetStream(&st->js, b->nc, &jo);
    if (ns != NATS_OK) {
        bus_blob_store_close(st);
        return bus_nats_fail(ns, 0, "bus: blob store %s: JetStream context", stream);
    }
    *out = st;
    return TIDAL_OK;
}

void bus_blob_store_close(bus_blob_store *st)
{
    if (!st) return;
    jsCtx_Destroy(st->js);
    pthread_mutex_destroy(&st->lock);
    free(st);
}

/* Chunk size for this connection: 4 MiB, or less to fit the server's max_payload. */
static uint32_t chunk_size(const bus_blob_store *st)
{
    int64_t mp = bus_max_payload(st->b) - BLOB_HEADER_ROOM;
    if (mp > (int64_t)BUS_BLOB_MAX_CHUNK) mp = BUS_BLOB_MAX_CHUNK;
    if (mp < 4096) mp = 4096;
    return (uint32_t)mp;
}

static tidal_status publish_chunk(bus_blob_store *st, const char *name, uint32_t idx,
                                  const uint8_t *data, uint32_t n, const uint8_t digest[32])
{
    char subj[320], idxs[16], hex[65];
    snprintf(subj, sizeof subj, "%s.%s.c.%u", st->prefix, name, idx);
    snprintf(idxs, sizeof idxs, "%u", idx);
    digest_hex(digest, DIGEST_BYTES, hex);
    natsMsg *m = NULL;
    natsStatus ns = natsMsg_Create(&m, subj, NULL, (const char *)data, (int)n);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Tidal-Blob", name);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Tidal-Chunk", idxs);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Tidal-Digest", hex);
    char cbs[16];
    snprintf(cbs, sizeof cbs, "%u", chunk_size(st));
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Tidal-Chunk-Bytes", cbs);
    while (ns == NATS_OK) {
        ns = js_PublishMsgAsync(st->js, &m, NULL); /* takes m on success */
        if (ns == NATS_TIMEOUT && bus_connected(st->b)) { /* stalled: wait for acks */
            ns = NATS_OK;
            continue;
        }
        break;
    }
    natsMsg_Destroy(m);
    if (ns != NATS_OK) return bus_nats_fail(ns, 0, "bus: blob %s: publish %s", name, subj);
    return TIDAL_OK;
}

static tidal_status wait_chunks(bus_blob_store *st, const char *name, int timeout_ms)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = timeout_ms;
    natsStatus ns = js_PublishAsyncComplete(st->js, &po);
    pthread_mutex_lock(&st->lock);
    uint64_t failed = st->failed;
    char first[256];
    memcpy(first, st->first_err, sizeof first);
    st->failed = 0;
    st->first_err[0] = '\0';
    pthread_mutex_unlock(&st->lock);
    if (failed)
        return tidal_fail(TIDAL_ERR_BUS, "bus: blob %s: %llu chunks were not stored; first: %s", name,
                          (unsigned long long)failed, first);
    if (ns != NATS_OK) {
        /* Acks lost in a disconnect never come: take those chunks out of the
         * context's pending list, or every later put would wait for them too.
         * This put fails; putting the blob again replaces it whole. */
        natsMsgList lost = {0};
        if (js_PublishAsyncGetPendingList(&lost, st->js) == NATS_OK) natsMsgList_Destroy(&lost);
        return bus_nats_fail(ns, 0, "bus: blob %s: waiting for chunk acks", name);
    }
    return TIDAL_OK;
}

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void info_from_manifest(bus_blob_info *info, const Tidal__V1__BlobManifest *m)
{
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", m->name ? m->name : "");
    info->bytes = m->bytes;
    info->chunk_bytes = m->chunk_bytes;
    info->chunk_count = m->chunk_count;
    if (m->digest.len == 32) memcpy(info->digest, m->digest.data, 32);
}

/* Keep the newest st->keep blobs (by the stream sequence of their manifests). */
static tidal_status prune(bus_blob_store *st)
{
    if (st->keep <= 0) return TIDAL_OK;
    char filter[200];
    snprintf(filter, sizeof filter, "%s.*.m", st->prefix);
    jsOptions o;
    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = filter;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus ns = js_GetStreamInfo(&si, st->b->js, st->stream, &o, &jerr);
    if (ns != NATS_OK) return bus_nats_fail(ns, jerr, "bus: blob store %s: list manifests", st->stream);
    int n = si->State.Subjects ? si->State.Subjects->Count : 0;
    tidal_status s = TIDAL_OK;
    if (n > st->keep) {
        struct ent { uint64_t seq; char subj[256]; } *e = calloc((size_t)n, sizeof *e);
        if (!e) s = tidal_fail(TIDAL_ERR_NOMEM, "bus: blob store %s: prune: out of memory", st->stream);
        for (int i = 0; e && i < n; i++) {
            snprintf(e[i].subj, sizeof e[i].subj, "%s", si->State.Subjects->List[i].Subject);
            bus_msg *m = NULL;
            /* a manifest gone since the listing keeps sequence 0: pruned first. From the leader:
             * a replica behind it (a cluster) would say "no message" for the blob just written */
            const tidal_status gs = bus_stream_get_last_leader(st->b, st->stream, e[i].subj, &m);
            if (gs == TIDAL_OK) {
                e[i].seq = bus_msg_stream_seq(m);
                bus_msg_destroy(m);
            } else if (gs != TIDAL_ERR_NOT_FOUND) { /* unknown is not gone: prune after the next put instead */
                tidal_log(TIDAL_LOG_DEBUG, "bus: blob store %s: prune skipped: %s", st->stream, tidal_errmsg());
                free(e);
                e = NULL;
                break;
            }
        }
        /* selection by repeated max: n is small (a handful of versions) */
        for (int kept = 0; e && kept < n; kept++) {
            int best = -1;
            for (int i = 0; i < n; i++)
                if (e[i].subj[0] && (best < 0 || e[i].seq > e[best].seq)) best = i;
            if (best < 0) break;
            if (kept >= st->keep) {
                /* "P.N.m" -> purge "P.N.>" */
                char *dot = strrchr(e[best].subj, '.');
                if (dot) strcpy(dot, ".>");
                /* one failed purge does not stop the others; the first failure is returned */
                tidal_status ps = bus_stream_purge_subject(st->b, st->stream, e[best].subj);
                if (ps != TIDAL_OK && s == TIDAL_OK) s = ps;
            }
            e[best].subj[0] = '\0';
        }
        free(e);
    }
    jsStreamInfo_Destroy(si);
    return s;
}

/* ---------------------------------------------------------------- writing */

struct bus_blob_writer {
    bus_blob_store *bs;
    char name[128];
    uint32_t cb;               /* chunk size */
    uint8_t *chunk;            /* the chunk being filled (cb bytes) */
    uint32_t fill;             /* bytes in it */
    uint64_t len;              /* bytes written so far */
    uint32_t count;            /* chunks published */
    uint8_t (*digests)[32];    /* their digests */
    uint32_t cap_digests;
    const uint8_t *given;      /* put_live: the manifest's chunk digests (count x 32), not computed again */
    uint8_t *keep;             /* live: every byte written is kept here (keep_cap), chunks sent from it */
    size_t keep_cap;
    tidal_status failed;       /* the first failure (the writer then takes no more) */
    char failed_msg[512];
    double t_open, hash_ms, send_ms; /* where the time goes (the debug log at close) */
};

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void (*hook_chunk_put)(uint32_t index);
static void (*hook_chunk_got)(uint32_t index);
static atomic_uint hook_corrupt; /* chunks still to corrupt on arrival */

void bus_blob_test_hooks(void (*chunk_put)(uint32_t index), void (*chunk_got)(uint32_t index))
{
    hook_chunk_put = chunk_put;
    hook_chunk_got = chunk_got;
}

void bus_blob_test_corrupt(unsigned chunks) { atomic_store(&hook_corrupt, chunks); }

/* Whether the test hook wants this chunk corrupted (one of its count taken). */
static bool take_corrupt(void)
{
    unsigned left = atomic_load(&hook_corrupt);
    while (left > 0 && !atomic_compare_exchange_weak(&hook_corrupt, &left, left - 1)) {}
    return left > 0;
}

/* The blob's digest: digest over its chunks' digests, in order (protocol.md
 * "Chunked blobs"), so neither side hashes the bytes twice. */
static void list_digest(const uint8_t (*digests)[32], uint32_t count, uint8_t out[32])
{
    digest_compute(digests, (size_t)count * 32, out);
}

static void writer_fail(bus_blob_writer *w, tidal_status st)
{
    if (w->failed != TIDAL_OK) return;
    w->failed = st;
    snprintf(w->failed_msg, sizeof w->failed_msg, "%s", tidal_errmsg());
}

/* Live writer: chunk w->count (data[n]) as a core message on
 * PREFIX_live.<name>.c.<i>.<chunk bytes> - no headers, so nats.c sends the
 * bytes without first copying them into a message; a flush every
 * BLOB_LIVE_WINDOW chunks keeps the publisher within a few chunks of the
 * server (core NATS has no acks: a tap that falls behind loses chunks, and
 * fetches them from the stored copy). */
static tidal_status publish_live_chunk(bus_blob_writer *w, const uint8_t *data, uint32_t n)
{
    bus_blob_store *st = w->bs;
    char subj[320];
    snprintf(subj, sizeof subj, "%s_live.%s.c.%u.%u", st->prefix, w->name, w->count, w->cb);
    natsStatus ns = natsConnection_Publish(st->b->nc, subj, data, (int)n);
    if (ns == NATS_OK && (w->count + 1) % BLOB_LIVE_WINDOW == 0)
        ns = natsConnection_FlushTimeout(st->b->nc, st->b->js_timeout_ms);
    if (ns != NATS_OK) return bus_nats_fail(ns, 0, "bus: blob %s: broadcast %s", w->name, subj);
    return TIDAL_OK;
}

/* Hash (or take from w->given) and publish chunk bytes data[n]: stored
 * (asynchronously; its ack comes later), or broadcast by a live writer. */
static void send_chunk(bus_blob_writer *w, const uint8_t *data, uint32_t n)
{
    if (w->failed != TIDAL_OK) return;
    if (w->count == w->cap_digests) {
        uint32_t cap = w->cap_digests ? w->cap_digests * 2 : 64;
        void *d = realloc(w->digests, (size_t)cap * 32);
        if (!d) {
            writer_fail(w, tidal_fail(TIDAL_ERR_NOMEM, "bus: blob %s: out of memory", w->name));
            return;
        }
        w->digests = d;
        w->cap_digests = cap;
    }
    const double t0 = mono_ms();
    if (w->given)
        memcpy(w->digests[w->count], w->given + (size_t)w->count * 32, 32);
    else
        digest_compute(data, n, w->digests[w->count]);
    const double t1 = mono_ms();
    tidal_status st = w->keep ? publish_live_chunk(w, data, n) : publish_chunk(w->bs, w->name, w->count, data, n,
                                                                               w->digests[w->count]);
    w->hash_ms += t1 - t0;
    w->send_ms += mono_ms() - t1; /* with 16 chunks un-acked this includes waiting for acks */
    if (st != TIDAL_OK) {
        writer_fail(w, st);
        return;
    }
    if (hook_chunk_put) hook_chunk_put(w->count);
    w->count++;
}

/* The filled chunk buffer, sent. */
static void flush_chunk(bus_blob_writer *w)
{
    if (w->keep) { /* live: the bytes after the last full chunk */
        const uint64_t sent = (uint64_t)w->count * w->cb;
        if (w->len > sent) send_chunk(w, w->keep + sent, (uint32_t)(w->len - sent));
        return;
    }
    if (w->fill == 0) return;
    send_chunk(w, w->chunk, w->fill);
    w->fill = 0;
}

tidal_status bus_blob_writer_open(bus_blob_store *bs, const char *name, bus_blob_writer **out)
{
    *out = NULL;
    if (!blob_name_ok(name))
        return tidal_fail(TIDAL_ERR_INVALID, "bus: blob put: bad name '%s' (letters, digits, '-', '_'; at most 100)", name ? name : "(null)");
    /* replacing a blob: its old chunks and manifest go first */
    char subj[320];
    snprintf(subj, sizeof subj, "%s.%s.>", bs->prefix, name);
    TRY(bus_stream_purge_subject(bs->b, bs->stream, subj));
    bus_blob_writer *w = calloc(1, sizeof *w);
    if (w) w->cb = chunk_size(bs);
    if (w) w->chunk = malloc(w->cb);
    if (!w || !w->chunk) {
        if (w) free(w->chunk);
        free(w);
        return tidal_fail(TIDAL_ERR_NOMEM, "bus: blob %s: out of memory", name);
    }
    w->bs = bs;
    snprintf(w->name, sizeof w->name, "%s", name);
    w->t_open = mono_ms();
    *out = w;
    return TIDAL_OK;
}

tidal_status bus_blob_writer_write(bus_blob_writer *w, const void *data, size_t len)
{
    const uint8_t *p = data;
    if (w->keep && w->failed == TIDAL_OK) { /* live: kept whole, each full chunk sent from the kept bytes */
        if (len > w->keep_cap - w->len)
            writer_fail(w, tidal_fail(TIDAL_ERR_INVALID, "bus: blob %s: more than the %zu bytes of its image",
                                      w->name, w->keep_cap));
        else if (len) {
            memcpy(w->keep + w->len, p, len);
            w->len += len;
            while (w->failed == TIDAL_OK && w->len - (uint64_t)w->count * w->cb >= w->cb)
                send_chunk(w, w->keep + (size_t)w->count * w->cb, w->cb);
        }
        len = 0;
    }
    while (len > 0 && w->failed == TIDAL_OK) {
        if (w->fill == 0 && len >= w->cb) { /* a whole chunk in the caller's bytes: sent from there, no copy */
            send_chunk(w, p, w->cb);
            w->len += w->cb;
            p += w->cb;
            len -= w->cb;
            continue;
        }
        size_t n = w->cb - w->fill < len ? w->cb - w->fill : len;
        memcpy(w->chunk + w->fill, p, n);
        w->fill += (uint32_t)n;
        w->len += n;
        p += n;
        len -= n;
        if (w->fill == w->cb) flush_chunk(w);
    }
    if (w->failed != TIDAL_OK) return tidal_fail(w->failed, "%s", w->failed_msg);
    return TIDAL_OK;
}

static void writer_free(bus_blob_writer *w)
{
    free(w->chunk);
    free(w->digests);
    free(w);
}

void bus_blob_writer_abort(bus_blob_writer *w)
{
    if (!w) return;
    /* chunks sent are waited for: their acks would stay pending on the context */
    if (w->count && !w->keep) (void)wait_chunks(w->bs, w->name, BLOB_MIN_WAIT_MS);
    tidal_clear();
    writer_free(w);
}

/* Manifest m's chunk digests as one array (*out, chunk_count x 32 bytes,
 * malloc'd, the caller's), after checking there is one of 32 bytes per
 * chunk; a manifest that breaks that fails with status `bad`, naming it. */
static tidal_status manifest_hashes(const Tidal__V1__BlobManifest *m, const char *name, tidal_status bad,
                                    uint8_t **out)
{
    *out = NULL;
    if (m->n_chunk_digest != m->chunk_count)
        return tidal_fail(bad, "bus: blob %s: the manifest has %zu chunk hashes for %u chunks", name,
                          m->n_chunk_digest, m->chunk_count);
    uint8_t *h = malloc((size_t)m->chunk_count * 32 + 1);
    if (!h) return tidal_fail(TIDAL_ERR_NOMEM, "bus: blob %s: out of memory", name);
    for (size_t i = 0; i < m->n_chunk_digest; i++) {
        if (m->chunk_digest[i].len != 32) {
            free(h);
            return tidal_fail(bad, "bus: blob %s: chunk %zu's hash is not 32 bytes", name, i);
        }
        memcpy(h + 32 * i, m->chunk_digest[i].data, 32);
    }
    *out = h;
    return TIDAL_OK;
}

/* The manifest of what writer w sent (every chunk's digest, the blob's
 * digest over them), encoded into *buf (malloc'd, the caller's). */
static tidal_status writer_manifest(bus_blob_writer *w, void **buf, size_t *blen, bus_blob_info *info)
{
    ProtobufCBinaryData *chunk_digests = calloc(w->count ? w->count : 1, sizeof *chunk_digests);
    if (!chunk_digests) return tidal_fail(TIDAL_ERR_NOMEM, "bus: blob %s: out of memory", w->name);
    for (uint32_t i = 0; i < w->count; i++) {
        chunk_digests[i].data = w->digests[i];
        chunk_digests[i].len = 32;
    }
    uint8_t total[32];
    list_digest((const uint8_t(*)[32])w->digests, w->count, total);
    Tidal__V1__BlobManifest m = TIDAL__V1__BLOB_MANIFEST__INIT;
    m.schema_version = CODEC_SCHEMA_VERSION;
    m.name = w->name;
    m.subject_prefix = w->bs->prefix;
    m.bytes = w->len;
    m.chunk_bytes = w->cb;
    m.chunk_count = w->count;
    m.digest.data = total;
    m.digest.len = 32;
    m.n_chunk_digest = w->count;
    m.chunk_digest = chunk_digests;
    m.created_unix_ms = unix_ms();
    tidal_status st = codec_encode(&m.base, buf, blen);
    if (st == TIDAL_OK && info) info_from_manifest(info, &m);
    free(chunk_digests);
    return st;
}

/* Close a storing writer: the last chunk, every ack, then the manifest - its
 * own, or `given` (put_live: the bytes the broadcast announced) - and pruning. */
static tidal_status writer_finish(bus_blob_writer *w, bus_blob_info *info, const void *given, size_t given_len)
{
    bus_blob_store *bs = w->bs;
    const char *name = w->name;
    flush_chunk(w);
    /* Chunks already sent are waited for even after a failed publish (their acks
     * would otherwise stay pending on the context); the first failure is returned. */
    int wait_ms = bs->b->js_timeout_ms * 4 > BLOB_MIN_WAIT_MS ? bs->b->js_timeout_ms * 4 : BLOB_MIN_WAIT_MS;
    const double t_wait = mono_ms();
    tidal_status st = wait_chunks(bs, name, wait_ms);
    tidal_log(TIDAL_LOG_DEBUG, "bus: blob %s: %u chunks, %llu bytes in %.0f ms: hashing %.0f ms, publishing %.0f ms "
              "(with waits for acks), last acks %.0f ms, the rest (serialising, copies) %.0f ms", name, w->count,
              (unsigned long long)w->len, mono_ms() - w->t_open, w->hash_ms, w->send_ms, mono_ms() - t_wait,
              t_wait - w->t_open - w->hash_ms - w->send_ms);
    if (w->failed != TIDAL_OK) st = tidal_fail(w->failed, "%s", w->failed_msg);
    void *own = NULL;
    size_t blen = given_len;
    if (st == TIDAL_OK && !given) st = writer_manifest(w, &own, &blen, info);
    if (st == TIDAL_OK) {
        char subj[320];
        snprintf(subj, sizeof subj, "%s.%s.m", bs->prefix, name);
        st = tidal_wrap(bus_js_publish(bs->b, subj, given ? given : own, (int)blen, NULL, 0, NULL, NULL),
                        "bus: blob %s: manifest", name);
    }
    if (st == TIDAL_OK) st = prune(bs);
    free(own);
    writer_free(w);
    return st;
}

tidal_status bus_blob_writer_close(bus_blob_writer *w, bus_blob_info *info)
{
    return writer_finish(w, info, NULL, 0);
}

tidal_status bus_blob_writer_open_live(bus_blob_store *bs, const char *name, void *image, size_t cap,
                                       bus_blob_writer **out)
{
    *out = NULL;
    if (!blob_name_ok(name))
        return tidal_fail(TIDAL_ERR_INVALID, "bus: blob broadcast: bad name '%s' (letters, digits, '-', '_'; at most "
                                             "100)", name ? name : "(null)");
    if (!image || cap == 0) return tidal_fail(TIDAL_ERR_INVALID, "bus: blob %s: a live writer needs an image buffer", name);
    bus_blob_writer *w = calloc(1, sizeof *w);
    if (!w) return tidal_fail(TIDAL_ERR_NOMEM, "bus: blob %s: out of memory", name);
    w->bs = bs;
    w->cb = chunk_size(bs);
    w->keep = image;
    w->keep_cap = cap;
    snprintf(w->name, sizeof w->name, "%s", name);
    w->t_open = mono_ms();
    *out = w;
    return TIDAL_OK;
}

tidal_status bus_blob_writer_close_live(bus_blob_writer *w, void **manifest, size_t *manifest_len, bus_blob_info *info)
{
    *manifest = NULL;
    *manifest_len = 0;
    flush_chunk(w);
    tidal_status st = w->failed;
    if (st != TIDAL_OK) st = tidal_fail(st, "%s", w->failed_msg);
    if (st == TIDAL_OK) st = writer_manifest(w, manifest, manifest_len, info);
    tidal_log(TIDAL_LOG_DEBUG, "bus: blob %s: broadcast %u chunks, %llu bytes in %.0f ms: hashing %.0f ms, "
              "publishing %.0f ms", w->name, w->count, (unsigned long long)w->len, mono_ms() - w->t_open, w->hash_ms,
              w->send_ms);
    writer_free(w);
    return st;
}

tidal_status bus_blob_put_live(bus_blob_store *bs, const char *name, const void *data, uint64_t len,
                               const void *manifest, size_t manifest_len, bus_blob_info *info)
{
    Tidal__V1__BlobManifest *m = NULL;
    TRY_WRAP(codec_decode_blob_manifest(manifest, manifest_len, &m), "bus: blob %s: the broadcast's manifest", name);
    tidal_status st = TIDAL_OK;
    uint8_t *flat = NULL;
    bus_blob_writer *w = NULL;
    const uint32_t cb = chunk_size(bs);
    if (!m->name || strcmp(m->name, name) != 0 || m->bytes != len || m->chunk_bytes != cb || cb == 0 ||
        m->chunk_count != (len + cb - 1) / cb) {
        st = tidal_fail(TIDAL_ERR_INVALID, "bus: blob %s: the manifest (blob '%s', %llu bytes, %u chunks of %u) does "
                                           "not describe %llu bytes in chunks of %u",
                        name, m->name ? m->name : "", (unsigned long long)m->bytes, m->chunk_count, m->chunk_bytes,
                        (unsigned long long)len, cb);
        goto cleanup;
    }
    TRY_GOTO(manifest_hashes(m, name, TIDAL_ERR_INVALID, &flat));
    TRY_GOTO(bus_blob_writer_open(bs, name, &w));
    w->given = flat;
    st = bus_blob_writer_write(w, data, (size_t)len);
    if (st != TIDAL_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tidal_errmsg());
        bus_blob_writer_abort(w);
        st = tidal_fail(st, "%s", msg);
        goto cleanup;
    }
    st = writer_finish(w, NULL, manifest, manifest_len);
    if (st == TIDAL_OK && info) info_from_manifest(info, m);
cleanup:
    free(flat);
    tidal__v1__blob_manifest__free_unpacked(m, NULL);
    return st;
}

tidal_status bus_blob_put(bus_blob_store *bs, const char *name, const void *data, uint64_t len,
                          bus_blob_info *info)
{
    if (len > (uint64_t)BUS_BLOB_MAX_CHUNK * UINT32_MAX)
        return tidal_fail(TIDAL_ERR_INVALID, "bus: blob %s: too large", name ? name : "(null)");
    bus_blob_writer *w = NULL;
    TRY(bus_blob_writer_open(bs, name, &w));
    tidal_status st = bus_blob_writer_write(w, data, (size_t)len);
    if (st != TIDAL_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tidal_errmsg());
        bus_blob_writer_abort(w);
        return tidal_fail(st, "%s", msg);
    }
    return bus_blob_writer_close(w, info);
}

static tidal_status read_manifest(bus_blob_store *st, const char *name, Tidal__V1__BlobManifest **out)
{
    *out = NULL;
    if (!blob_name_ok(name))
        return tidal_fail(TIDAL_ERR_INVALID, "bus: blob get: bad name '%s'", name ? name : "(null)");
    char subj[320];
    snprintf(subj, sizeof subj, "%s.%s.m", st->prefix, name);
    bus_msg *msg = NULL;
    tidal_status s = bus_stream_get_last(st->b, st->stream, subj, &msg);
    if (s == TIDAL_ERR_NOT_FOUND)
        return tidal_fail(TIDAL_ERR_NOT_FOUND, "bus: blob %s: no manifest on %s in stream %s", name, subj, st->stream);
    if (s != TIDAL_OK) return s;
    s = codec_decode_blob_manifest(bus_msg_data(msg), (size_t)bus_msg_len(msg), out);
    bus_msg_destroy(msg);
    if (s != TIDAL_OK) return tidal_wrap(TIDAL_ERR_CORRUPT, "bus: blob %s: manifest on %s", name, subj);
    return TIDAL_OK;
}

tidal_status bus_blob_stat(bus_blob_store *st, const char *name, bus_blob_info *info)
{
    Tidal__V1__BlobManifest *m = NULL;
    TRY(read_manifest(st, name, &m));
    info_from_manifest(info, m);
    tidal__v1__blob_manifest__free_unpacked(m, NULL);
    return TIDAL_OK;
}

/* ---------------------------------------------------------------- the tap */

/* What the tap caught of one chunk. */
typedef struct tap_rec {
    bool have;
    uint32_t len;
    uint8_t digest[32];
} tap_rec;

struct bus_blob_tap {
    bus_blob_store *bs;
    natsSubscription *sub;
    pthread_mutex_t lock;      /* guards everything below; held while a chunk is copied */
    uint8_t *buf;              /* armed: chunks go here (NULL: disarmed) */
    uint8_t *last_buf;         /* the buffer it was last armed with (its records are in it) */
    size_t cap;
    char name[128];            /* the blob the records are of ("" none) */
    uint32_t cb;               /* its chunk size */
    tap_rec *recs;
    uint32_t n_recs;
    uint64_t caught;           /* chunks caught (for the log) */
    pthread_cond_t done_cv;    /* signalled with done */
    bool done;                 /* the subscription is closed and its handler has returned */
    bool done_cb;              /* nats.c will report done (natsSubscription_SetOnCompleteCB) */
};

/* A chunk a live writer broadcast: copied to its place in the armed buffer
 * and hashed there. A chunk of another blob than the one recorded
 * starts a new record (the trainer moved on). */
static void on_tap_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    bus_blob_tap *t = closure;
    const char *subj = natsMsg_GetSubject(msg);
    const size_t pl = strlen(t->bs->prefix);
    if (strncmp(subj, t->bs->prefix, pl) != 0 || strncmp(subj + pl, "_live.", 6) != 0) goto done;
    /* <name>.c.<index>.<chunk bytes> */
    const char *name = subj + pl + 6, *c = strstr(name, ".c.");
    if (!c || (size_t)(c - name) >= sizeof t->name || !isdigit((unsigned char)c[3])) goto done;
    char *end = NULL;
    unsigned long idx = strtoul(c + 3, &end, 10), cb = 0;
    if (end && *end == '.' && isdigit((unsigned char)end[1])) cb = strtoul(end + 1, &end, 10);
    const int len = natsMsg_GetDataLength(msg);
    if (!end || *end || cb == 0 || cb > BUS_BLOB_MAX_CHUNK || (unsigned long)len > cb) goto done;
    pthread_mutex_lock(&t->lock);
    if (t->buf) {
        const size_t nl = (size_t)(c - name);
        if (strlen(t->name) != nl || strncmp(t->name, name, nl) != 0 || t->cb != cb) { /* a new blob */
            memcpy(t->name, name, nl);
            t->name[nl] = '\0';
            t->cb = (uint32_t)cb;
            memset(t->recs, 0, (size_t)t->n_recs * sizeof *t->recs);
        }
        const uint64_t off = (uint64_t)idx * cb;
        if (idx < t->n_recs && off + (uint64_t)len <= t->cap) {
            memcpy(t->buf + off, natsMsg_GetData(msg), (size_t)len);
            if (take_corrupt() && len > 0) t->buf[off + (size_t)len / 2] ^= 0x01; /* the test hook */
            digest_compute(t->buf + off, (size_t)len, t->recs[idx].digest);
            t->recs[idx].len = (uint32_t)len;
            t->recs[idx].have = true;
            t->caught++;
        }
    }
    pthread_mutex_unlock(&t->lock);
done:
    natsMsg_Destroy(msg);
}

/* nats.c: the tap's subscription is closed and on_tap_msg will not run again. */
static void on_tap_done(void *closure)
{
    bus_blob_tap *t = closure;
    pthread_mutex_lock(&t->lock);
    t->done = true;
    pthread_cond_signal(&t->done_cv);
    pthread_mutex_unlock(&t->lock);
}

tidal_status bus_blob_tap_open(bus_blob_store *bs, bus_blob_tap **out)
{
    *out = NULL;
    bus_blob_tap *t = calloc(1, sizeof *t);
    if (!t) return tidal_fail(TIDAL_ERR_NOMEM, "bus: blob tap %s: out of memory", bs->prefix);
    t->bs = bs;
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->done_cv, NULL);
    char subj[200];
    snprintf(subj, sizeof subj, "%s_live.*.c.*.*", bs->prefix);
    natsStatus ns = natsConnection_Subscribe(&t->sub, bs->b->nc, subj, on_tap_msg, t);
    /* a backlog beyond this is dropped by the client (a direct get fills the gap) */
    if (ns == NATS_OK) ns = natsSubscription_SetPendingLimits(t->sub, 64, 64 * (int)BUS_BLOB_MAX_CHUNK);
    if (ns == NATS_OK) ns = natsSubscription_SetOnCompleteCB(t->sub, on_tap_done, t);
    t->done_cb = ns == NATS_OK;
    if (ns != NATS_OK) {
        bus_blob_tap_close(t);
        return bus_nats_fail(ns, 0, "bus: blob tap: subscribe %s", subj);
    }
    *out = t;
    return TIDAL_OK;
}

void bus_blob_tap_arm(bus_blob_tap *t, void *buf, size_t cap)
{
    pthread_mutex_lock(&t->lock);
    const uint32_t n = (uint32_t)(cap / 4096 + 1); /* enough records for the smallest chunk size */
    if (buf && n > t->n_recs) {
        tap_rec *r = realloc(t->recs, (size_t)n * sizeof *r);
        if (r) {
            t->recs = r;
            t->n_recs = n;
        }
    }
    if (t->recs) memset(t->recs, 0, (size_t)t->n_recs * sizeof *t->recs);
    t->name[0] = '\0';
    t->buf = t->recs ? buf : NULL;
    t->last_buf = t->buf;
    t->cap = t->recs ? cap : 0;
    pthread_mutex_unlock(&t->lock);
}

unsigned bus_blob_tap_caught(bus_blob_tap *t, const char *name)
{
    unsigned n = 0;
    pthread_mutex_lock(&t->lock);
    if (name && !strcmp(t->name, name))
        for (uint32_t i = 0; i < t->n_recs; i++) n += t->recs[i].have;
    pthread_mutex_unlock(&t->lock);
    return n;
}

void bus_blob_tap_disarm(bus_blob_tap *t)
{
    pthread_mutex_lock(&t->lock);
    t->buf = NULL;
    pthread_mutex_unlock(&t->lock);
}

void bus_blob_tap_close(bus_blob_tap *t)
{
    if (!t) return;
    if (t->sub) {
        bus_blob_tap_disarm(t); /* what is still queued is dropped quickly */
        /* Not a drain: that waits for the server, which may be gone (a job's end
         * stops it). Unsubscribing closes the subscription locally and nats.c
         * reports done once its handler has returned: only then may t go. */
        natsSubscription_Unsubscribe(t->sub);
        const bool done = !t->done_cb || bus_wait_done(&t->lock, &t->done_cv, &t->done, 5);
        natsSubscription_Destroy(t->sub);
        if (!done) { /* its handler may still run on t: kept, not freed */
            tidal_log(TIDAL_LOG_WARN, "bus: blob tap %s: its handler did not return in 5 s", t->bs->prefix);
            return;
        }
    }
    pthread_cond_destroy(&t->done_cv);
    pthread_mutex_destroy(&t->lock);
    free(t->recs);
    free(t);
}

/* ---------------------------------------------------------------- reading */

typedef struct fetch_job {
    bus_blob_store *bs;
    const char *name;
    const bus_blob_layout *want;
    uint8_t *dest;
    const tap_rec *caught;     /* what the tap caught of this blob in dest (NULL: nothing) */
    uint32_t n_caught;
    atomic_uint next;          /* the next chunk index to take */
    atomic_uint refetched;
    atomic_bool stop;          /* a chunk failed: the others stop taking work */
    pthread_mutex_t lock;
    tidal_status failed;       /* the first failure, with its message */
    char failed_msg[512];
} fetch_job;

static void fetch_fail(fetch_job *j, tidal_status st)
{
    pthread_mutex_lock(&j->lock);
    if (j->failed == TIDAL_OK) {
        j->failed = st;
        snprintf(j->failed_msg, sizeof j->failed_msg, "%s", tidal_errmsg());
    }
    pthread_mutex_unlock(&j->lock);
    atomic_store(&j->stop, true);
}

/* Chunk i into its place in dest, checked against its digest in the same
 * pass (the bytes are hashed where they land); a chunk that fails its check
 * is fetched again, up to BLOB_FETCH_TRIES times. */
static tidal_status fetch_chunk(fetch_job *j, uint32_t i)
{
    const bus_blob_layout *L = j->want;
    const uint64_t off = (uint64_t)i * L->chunk_bytes;
    const uint64_t want = L->bytes - off < L->chunk_bytes ? L->bytes - off : L->chunk_bytes;
    char subj[320];
    snprintf(subj, sizeof subj, "%s.%s.c.%u", j->bs->prefix, j->name, i);
    for (int attempt = 1;; attempt++) {
        bus_msg *c = NULL;
        tidal_status st = bus_stream_get_last(j->bs->b, j->bs->stream, subj, &c);
        if (st == TIDAL_ERR_NOT_FOUND && attempt < 2 * BLOB_FETCH_TRIES) {
            /* a replica that has not applied it yet may answer a direct get (a JetStream cluster) */
            usleep(100 * 1000 * (useconds_t)attempt);
            continue;
        }
        if (st == TIDAL_ERR_NOT_FOUND) /* still missing: a corrupt blob */
            return tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: chunk %u of %u missing (%s)", j->name, i,
                              L->chunk_count, subj);
        if (st != TIDAL_OK) return st;
        if ((uint64_t)bus_msg_len(c) != want) {
            int got = bus_msg_len(c);
            bus_msg_destroy(c);
            return tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: chunk %u of %u has %d bytes, the manifest says %llu",
                              j->name, i, L->chunk_count, got, (unsigned long long)want);
        }
        memcpy(j->dest + off, bus_msg_data(c), want);
        bus_msg_destroy(c);
        if (take_corrupt()) j->dest[off + want / 2] ^= 0x01; /* the test hook: a bit flipped in transit */
        uint8_t d[32];
        digest_compute(j->dest + off, want, d);
        if (memcmp(d, L->chunk_digest + 32 * (size_t)i, 32) == 0) break;
        if (attempt >= BLOB_FETCH_TRIES)
            return tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: chunk %u of %u fails its digest check %d times (%s)",
                              j->name, i, L->chunk_count, attempt, subj);
        atomic_fetch_add(&j->refetched, 1);
        tidal_log(TIDAL_LOG_WARN, "bus: blob %s: chunk %u of %u fails its digest check (%s); fetching it again",
                  j->name, i, L->chunk_count, subj);
    }
    if (hook_chunk_got) hook_chunk_got(i);
    return TIDAL_OK;
}

static void *fetch_main(void *arg)
{
    fetch_job *j = arg;
    while (!atomic_load(&j->stop)) {
        unsigned i = atomic_fetch_add(&j->next, 1);
        if (i >= j->want->chunk_count) break;
        if (i < j->n_caught && j->caught[i].have && memcmp(j->caught[i].digest, j->want->chunk_digest + 32 * (size_t)i, 32) == 0)
            continue; /* caught on its way in, in place, and it is the one the manifest names */
        tidal_status st = fetch_chunk(j, i);
        if (st != TIDAL_OK) fetch_fail(j, st);
    }
    return NULL;
}

tidal_status bus_blob_fetch(bus_blob_store *bs, const char *name, const bus_blob_layout *want, void *dest,
                            bus_blob_tap *tap, unsigned *refetched, unsigned *caught)
{
    if (refetched) *refetched = 0;
    if (caught) *caught = 0;
    if (!blob_name_ok(name))
        return tidal_fail(TIDAL_ERR_INVALID, "bus: blob get: bad name '%s'", name ? name : "(null)");
    const uint64_t cb = want->chunk_bytes;
    if (cb == 0 || cb > BUS_BLOB_MAX_CHUNK || (want->bytes + cb - 1) / cb != want->chunk_count || !want->chunk_digest)
        return tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: the manifest's layout is inconsistent (%llu bytes, %u chunks of %llu)",
                          name, (unsigned long long)want->bytes, want->chunk_count, (unsigned long long)cb);
    fetch_job j = {.bs = bs, .name = name, .want = want, .dest = dest};
    tap_rec *recs = NULL;
    if (tap) { /* the tap's records, when they are of this blob in this buffer (it is disarmed: they stay) */
        pthread_mutex_lock(&tap->lock);
        if (!tap->buf && tap->recs && !strcmp(tap->name, name) && tap->cb == want->chunk_bytes &&
            tap->cap >= want->bytes && (recs = malloc((size_t)tap->n_recs * sizeof *recs)) != NULL) {
            memcpy(recs, tap->recs, (size_t)tap->n_recs * sizeof *recs);
            j.n_caught = tap->n_recs;
        }
        const bool same_buf = tap->last_buf == dest;
        pthread_mutex_unlock(&tap->lock);
        if (!same_buf) j.n_caught = 0;
        j.caught = recs;
        for (uint32_t i = 0; i < j.n_caught && i < want->chunk_count; i++)
            if (recs[i].have && !memcmp(recs[i].digest, want->chunk_digest + 32 * (size_t)i, 32) && caught) (*caught)++;
    }
    pthread_mutex_init(&j.lock, NULL);
    pthread_t th[BLOB_GETS_IN_FLIGHT];
    int started = 0;
    const int n = want->chunk_count < BLOB_GETS_IN_FLIGHT ? (int)want->chunk_count : BLOB_GETS_IN_FLIGHT;
    /* the caller's thread is one of the fetchers */
    for (int t = 1; t < n; t++)
        if (pthread_create(&th[started], NULL, fetch_main, &j) == 0) started++;
    fetch_main(&j);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&j.lock);
    free(recs);
    if (refetched) *refetched = atomic_load(&j.refetched);
    if (j.failed != TIDAL_OK) return tidal_fail(j.failed, "%s", j.failed_msg);
    return TIDAL_OK;
}

tidal_status bus_blob_get(bus_blob_store *bs, const char *name, void **data, uint64_t *len,
                          bus_blob_info *info)
{
    *data = NULL;
    *len = 0;
    Tidal__V1__BlobManifest *m = NULL;
    TRY(read_manifest(bs, name, &m));
    tidal_status st = TIDAL_OK;
    uint8_t *hashes = NULL;
    uint8_t *buf = malloc(m->bytes ? m->bytes : 1);
    if (!buf) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bus: blob %s: cannot allocate %llu bytes", name, (unsigned long long)m->bytes);
        goto cleanup;
    }
    TRY_GOTO(manifest_hashes(m, name, TIDAL_ERR_CORRUPT, &hashes));
    uint8_t total[32];
    list_digest((const uint8_t(*)[32])hashes, m->chunk_count, total);
    if (m->digest.len != 32 || memcmp(total, m->digest.data, 32) != 0) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: the manifest's digest is not that of its chunk hashes", name);
        goto cleanup;
    }
    bus_blob_layout L = {.bytes = m->bytes, .chunk_bytes = m->chunk_bytes, .chunk_count = m->chunk_count,
                         .chunk_digest = hashes};
    TRY_GOTO(bus_blob_fetch(bs, name, &L, buf, NULL, NULL, NULL));
    if (info) info_from_manifest(info, m);
    *data = buf;
    *len = m->bytes;
    buf = NULL;
cleanup:
    free(buf);
    free(hashes);
    tidal__v1__blob_manifest__free_unpacked(m, NULL);
    return st;
}

tidal_status bus_blob_delete(bus_blob_store *st, const char *name)
{
    if (!blob_name_ok(name)) return tidal_fail(TIDAL_ERR_INVALID, "bus: blob delete: bad name '%s'", name ? name : "(null)");
    char subj[320];
    snprintf(subj, sizeof subj, "%s.%s.>", st->prefix, name);
    return bus_stream_purge_subject(st->b, st->stream, subj);
}
