/* manifest_sign.c - the canonical signed bytes of a WeightsManifest, and
 * Ed25519 over them (see manifest_sign.h; the layout is in docs/protocol.md
 * "Signed weights", and a change to it is a change of the domain tag).
 */
#include "proto/manifest_sign.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Versioned, and ending in a NUL, so no other tidal signature (there are
 * none yet) can be taken for a manifest's. */
/* v2: fields 20-26 (transport dir, delta versions) joined the signed bytes;
 * v3: the digests are BLAKE3, and field 30 (digest_algorithm) is signed;
 * v4: field 31 (live) is signed */
static const char DOMAIN_TAG[] = "tidal.v4.WeightsManifest"; /* sizeof includes the NUL */

/* A writer that only counts when buf is NULL: the same code sizes and fills. */
typedef struct canon {
    uint8_t *buf;
    size_t n;
} canon;

static void put_raw(canon *c, const void *p, size_t len)
{
    if (c->buf && len) memcpy(c->buf + c->n, p, len);
    c->n += len;
}

static void put_u64(canon *c, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (56 - 8 * i));
    put_raw(c, b, 8);
}

static void put_u32(canon *c, uint32_t v)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++) b[i] = (uint8_t)(v >> (24 - 8 * i));
    put_raw(c, b, 4);
}

static void put_u8(canon *c, uint8_t v) { put_raw(c, &v, 1); }

static void put_bytes(canon *c, const void *p, size_t len)
{
    put_u32(c, (uint32_t)len); /* decoded messages are far below 4 GiB (the bus's max payload) */
    put_raw(c, p, len);
}

static void put_str(canon *c, const char *s)
{
    /* protobuf-c leaves an absent string as "" (or NULL in a hand-built message) */
    put_bytes(c, s ? s : "", s ? strlen(s) : 0);
}

static void put_manifest(canon *c, const Tidal__V1__WeightsManifest *w, const char *job)
{
    put_raw(c, DOMAIN_TAG, sizeof DOMAIN_TAG);
    put_str(c, job);
    put_u32(c, w->schema_version);
    put_u64(c, w->version);
    put_str(c, w->dtype);
    put_u64(c, w->bytes);
    put_u32(c, w->chunk_count);
    put_bytes(c, w->digest.data, w->digest.len);
    put_str(c, w->transport);
    put_str(c, w->url);
    const Tidal__V1__BlobManifest *b = w->blob;
    put_u8(c, b ? 1 : 0);
    if (b) {
        put_u32(c, b->schema_version);
        put_str(c, b->name);
        put_str(c, b->subject_prefix);
        put_u64(c, b->bytes);
        put_u32(c, b->chunk_bytes);
        put_u32(c, b->chunk_count);
        put_bytes(c, b->digest.data, b->digest.len);
        put_u32(c, (uint32_t)b->n_chunk_digest);
        for (size_t i = 0; i < b->n_chunk_digest; i++) put_bytes(c, b->chunk_digest[i].data, b->chunk_digest[i].len);
        put_u64(c, b->created_unix_ms);
    }
    put_str(c, w->model_config_json);
    put_u64(c, w->created_unix_ms);
    /* transport http (fields 16-17): the ranges' hashes, so a verified
     * manifest vouches for every byte fetched from the trainer's server */
    put_u32(c, w->http_chunk_bytes);
    put_u32(c, (uint32_t)w->n_http_chunk_digest);
    for (size_t i = 0; i < w->n_http_chunk_digest; i++)
        put_bytes(c, w->http_chunk_digest[i].data, w->http_chunk_digest[i].len);
    /* 20-29: transport dir and delta versions */
    put_str(c, w->dir);
    put_u8(c, w->delta ? 1 : 0);
    put_u64(c, w->delta_base);
    put_u32(c, (uint32_t)w->n_chain);
    for (size_t i = 0; i < w->n_chain; i++) put_u64(c, w->chain[i]);
    put_u64(c, w->image_bytes);
    put_bytes(c, w->image_digest.data, w->image_digest.len);
    put_u32(c, w->full_every);
    put_str(c, w->digest_algorithm); /* 30 */
    put_u8(c, w->live ? 1 : 0);      /* 31 */
}

tidal_status codec_manifest_signed_bytes(const Tidal__V1__WeightsManifest *w, const char *job, uint8_t **out,
                                         size_t *len)
{
    *out = NULL;
    *len = 0;
    canon c = {0};
    put_manifest(&c, w, job);
    c.buf = malloc(c.n);
    if (!c.buf) return tidal_fail(TIDAL_ERR_NOMEM, "weights v%" PRIu64 ": out of memory for the signed bytes", w->version);
    const size_t n = c.n;
    c.n = 0;
    put_manifest(&c, w, job);
    *out = c.buf;
    *len = n;
    return TIDAL_OK;
}

tidal_status codec_manifest_sign(Tidal__V1__WeightsManifest *w, const char *job, const tidal_sign_key *k,
                                 uint8_t sig[TIDAL_SIGN_SIG_BYTES])
{
    w->signature.data = NULL;
    w->signature.len = 0;
    uint8_t *msg = NULL;
    size_t n = 0;
    TRY(codec_manifest_signed_bytes(w, job, &msg, &n));
    tidal_status st = tidal_sign(k, msg, n, sig);
    free(msg);
    if (st != TIDAL_OK) return tidal_wrap(st, "weights v%" PRIu64, w->version);
    w->signature.data = sig;
    w->signature.len = TIDAL_SIGN_SIG_BYTES;
    return TIDAL_OK;
}

tidal_status codec_manifest_verify(const Tidal__V1__WeightsManifest *w, const char *job,
                                   const uint8_t pub[TIDAL_SIGN_PUB_BYTES])
{
    char key[TIDAL_SIGN_PUB_TEXT];
    tidal_sign_pub_format(pub, key);
    if (w->signature.len == 0)
        return tidal_fail(TIDAL_ERR_PERMISSION, "weights v%" PRIu64 ": refused: the manifest is unsigned (job key %s)",
                          w->version, key);
    if (w->signature.len != TIDAL_SIGN_SIG_BYTES)
        return tidal_fail(TIDAL_ERR_PERMISSION, "weights v%" PRIu64 ": refused: the signature has %zu bytes, not %d",
                          w->version, w->signature.len, TIDAL_SIGN_SIG_BYTES);
    uint8_t *msg = NULL;
    size_t n = 0;
    TRY(codec_manifest_signed_bytes(w, job, &msg, &n));
    const bool ok = tidal_sign_verify(pub, msg, n, w->signature.data, w->signature.len);
    free(msg);
    if (!ok)
        return tidal_fail(TIDAL_ERR_PERMISSION,
                          "weights v%" PRIu64 ": refused: the signature does not verify with the job's key %s "
                          "(signed with another key, or altered after signing)", w->version, key);
    return TIDAL_OK;
}
