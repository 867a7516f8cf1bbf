/* blob.c - chunked blobs on a JetStream stream (nats.c 3.4 has no Object Store).
 *
 * Layout, for store prefix P and blob N (docs/protocol.md):
 *   P.N.c.<i>   chunk i (i = 0 .. count-1), at most BUS_BLOB_MAX_CHUNK bytes, with
 *               headers Tidal-Blob: N, Tidal-Chunk: i, Tidal-Sha256: <hex of the chunk>
 *   P.N.m       the BlobManifest (protobuf): size, chunk size and count, SHA-256
 *               of the whole blob and of every chunk; written last, so a blob is
 *               visible only once all its chunks are stored.
 * The stream keeps one message per subject, so a chunk re-published under the
 * same index replaces the old one; readers trust only the manifest's hashes.
 * Chunks are pipelined (a few in flight) on a JetStream context of the store's
 * own, so their acks and failures are never mixed with other async publishes.
 */
#include <ctype.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bus/bus_internal.h"
#include "proto/codec.h"

#define BLOB_IN_FLIGHT 8             /* chunks un-acked at once: <= 32 MiB buffered */
#define BLOB_HEADER_ROOM (16 << 10)  /* max_payload headroom for headers */
#define BLOB_MIN_WAIT_MS 30000

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

static void hex32(const uint8_t *d, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[64] = '\0';
}

static void sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
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
    hex32(digest, hex);
    natsMsg *m = NULL;
    natsStatus ns = natsMsg_Create(&m, subj, NULL, (const char *)data, (int)n);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Tidal-Blob", name);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Tidal-Chunk", idxs);
    if (ns == NATS_OK) ns = natsMsgHeader_Set(m, "Tidal-Sha256", hex);
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
    if (m->sha256.len == 32) memcpy(info->sha256, m->sha256.data, 32);
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
            /* a manifest gone since the listing keeps sequence 0: pruned first */
            if (bus_stream_get_last(st->b, st->stream, e[i].subj, &m) == TIDAL_OK) {
                e[i].seq = bus_msg_stream_seq(m);
                bus_msg_destroy(m);
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

tidal_status bus_blob_put(bus_blob_store *bs, const char *name, const void *data, uint64_t len,
                          bus_blob_info *info)
{
    if (!blob_name_ok(name))
        return tidal_fail(TIDAL_ERR_INVALID, "bus: blob put: bad name '%s' (letters, digits, '-', '_'; at most 100)", name ? name : "(null)");
    const uint32_t cb = chunk_size(bs);
    const uint64_t count64 = (len + cb - 1) / cb;
    if (count64 > UINT32_MAX) return tidal_fail(TIDAL_ERR_INVALID, "bus: blob %s: too large", name);
    const uint32_t count = (uint32_t)count64;

    /* replacing a blob: its old chunks and manifest go first */
    char subj[320];
    snprintf(subj, sizeof subj, "%s.%s.>", bs->prefix, name);
    TRY(bus_stream_purge_subject(bs->b, bs->stream, subj));

    tidal_status st = TIDAL_OK;
    void *buf = NULL;
    uint8_t (*digests)[32] = calloc(count ? count : 1, 32);
    ProtobufCBinaryData *chunk_sha = calloc(count ? count : 1, sizeof *chunk_sha);
    EVP_MD_CTX *whole = EVP_MD_CTX_new();
    if (!digests || !chunk_sha || !whole || !EVP_DigestInit_ex(whole, EVP_sha256(), NULL)) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bus: blob %s: out of memory", name);
        goto cleanup;
    }
    const uint8_t *p = data;
    for (uint32_t i = 0; i < count && st == TIDAL_OK; i++) {
        uint64_t off = (uint64_t)i * cb;
        uint32_t n = (uint32_t)(len - off < cb ? len - off : cb);
        sha256(p + off, n, digests[i]);
        EVP_DigestUpdate(whole, p + off, n);
        chunk_sha[i].data = digests[i];
        chunk_sha[i].len = 32;
        st = publish_chunk(bs, name, i, p + off, n, digests[i]);
    }
    /* Chunks already sent are waited for even after a failed publish (their acks
     * would otherwise stay pending on the context); the first failure is returned. */
    int wait_ms = bs->b->js_timeout_ms * 4 > BLOB_MIN_WAIT_MS ? bs->b->js_timeout_ms * 4 : BLOB_MIN_WAIT_MS;
    tidal_status ws = wait_chunks(bs, name, wait_ms);
    if (st == TIDAL_OK) st = ws;
    if (st != TIDAL_OK) goto cleanup;

    uint8_t total[32];
    unsigned int tn = 32;
    EVP_DigestFinal_ex(whole, total, &tn);

    Tidal__V1__BlobManifest m = TIDAL__V1__BLOB_MANIFEST__INIT;
    m.schema_version = CODEC_SCHEMA_VERSION;
    m.name = (char *)name;
    m.subject_prefix = bs->prefix;
    m.bytes = len;
    m.chunk_bytes = cb;
    m.chunk_count = count;
    m.sha256.data = total;
    m.sha256.len = 32;
    m.n_chunk_sha256 = count;
    m.chunk_sha256 = chunk_sha;
    m.created_unix_ms = unix_ms();
    size_t blen = 0;
    TRY_GOTO(codec_encode(&m.base, &buf, &blen));
    snprintf(subj, sizeof subj, "%s.%s.m", bs->prefix, name);
    TRY_GOTO(tidal_wrap(bus_js_publish(bs->b, subj, buf, (int)blen, NULL, 0, NULL, NULL),
                        "bus: blob %s: manifest", name));
    if (info) info_from_manifest(info, &m);
    st = prune(bs);
cleanup:
    free(buf);
    EVP_MD_CTX_free(whole);
    free(chunk_sha);
    free(digests);
    return st;
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

tidal_status bus_blob_get(bus_blob_store *bs, const char *name, void **data, uint64_t *len,
                          bus_blob_info *info)
{
    *data = NULL;
    *len = 0;
    Tidal__V1__BlobManifest *m = NULL;
    TRY(read_manifest(bs, name, &m));
    tidal_status st = TIDAL_OK;
    uint8_t *buf = malloc(m->bytes ? m->bytes : 1);
    EVP_MD_CTX *whole = EVP_MD_CTX_new();
    if (!buf || !whole || !EVP_DigestInit_ex(whole, EVP_sha256(), NULL)) {
        st = tidal_fail(TIDAL_ERR_NOMEM, "bus: blob %s: cannot allocate %llu bytes", name, (unsigned long long)m->bytes);
        goto cleanup;
    }
    for (uint32_t i = 0; i < m->chunk_count; i++) {
        uint64_t off = (uint64_t)i * m->chunk_bytes;
        uint64_t want = m->bytes - off < m->chunk_bytes ? m->bytes - off : m->chunk_bytes;
        char subj[320];
        snprintf(subj, sizeof subj, "%s.%s.c.%u", bs->prefix, name, i);
        bus_msg *c = NULL;
        st = bus_stream_get_last(bs->b, bs->stream, subj, &c);
        if (st == TIDAL_ERR_NOT_FOUND) /* a missing chunk is a corrupt blob */
            st = tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: chunk %u of %u missing (%s)", name, i, m->chunk_count, subj);
        if (st != TIDAL_OK) goto cleanup;
        uint8_t d[32];
        sha256(bus_msg_data(c), (size_t)bus_msg_len(c), d);
        if ((uint64_t)bus_msg_len(c) != want)
            st = tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: chunk %u of %u has %d bytes, manifest says %llu", name, i,
                            m->chunk_count, bus_msg_len(c), (unsigned long long)want);
        else if (memcmp(d, m->chunk_sha256[i].data, 32) != 0)
            st = tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: chunk %u of %u fails its SHA-256 check (%s)", name, i,
                            m->chunk_count, subj);
        else {
            memcpy(buf + off, bus_msg_data(c), want);
            EVP_DigestUpdate(whole, buf + off, want);
        }
        bus_msg_destroy(c);
        if (st != TIDAL_OK) goto cleanup;
    }
    uint8_t total[32];
    unsigned int tn = 32;
    EVP_DigestFinal_ex(whole, total, &tn);
    if (memcmp(total, m->sha256.data, 32) != 0) {
        st = tidal_fail(TIDAL_ERR_CORRUPT, "bus: blob %s: SHA-256 of the whole does not match the manifest", name);
        goto cleanup;
    }
    if (info) info_from_manifest(info, m);
    *data = buf;
    *len = m->bytes;
    buf = NULL;
cleanup:
    EVP_MD_CTX_free(whole);
    free(buf);
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
