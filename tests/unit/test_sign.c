/* Ed25519 signing (base/sign.h) and signed weight manifests
 * (proto/manifest_sign.h): a signature verifies under its key only; another
 * key, a flipped bit of the signature or the message, a truncated or an
 * over-long signature do not. Keys survive a PEM round trip (mode 0600);
 * another algorithm's key, garbage and a missing file are refused. The text
 * form of a public key round-trips and refuses wrong lengths and digits. A
 * manifest's signature survives the wire, and changing any signed field - of
 * the manifest or its blob manifest, or the job - makes it fail; an unsigned
 * manifest is refused by name, and the codec refuses a signature that is not
 * 64 bytes. */
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "base/sign.h"
#include "proto/codec.h"
#include "proto/manifest_sign.h"

static char tmpdir[64];

static void test_sign_verify(void)
{
    tidal_sign_key *k = NULL, *other = NULL;
    CHECK_OK(tidal_sign_keygen(&k));
    CHECK_OK(tidal_sign_keygen(&other));
    uint8_t pub[TIDAL_SIGN_PUB_BYTES], opub[TIDAL_SIGN_PUB_BYTES];
    tidal_sign_key_public(k, pub);
    tidal_sign_key_public(other, opub);
    CHECK(memcmp(pub, opub, sizeof pub) != 0);

    uint8_t msg[100];
    for (int i = 0; i < 100; i++) msg[i] = (uint8_t)(i * 7);
    uint8_t sig[TIDAL_SIGN_SIG_BYTES], again[TIDAL_SIGN_SIG_BYTES];
    CHECK_OK(tidal_sign(k, msg, sizeof msg, sig));
    CHECK_OK(tidal_sign(k, msg, sizeof msg, again));
    CHECK(memcmp(sig, again, sizeof sig) == 0); /* Ed25519 is deterministic */
    CHECK(tidal_sign_verify(pub, msg, sizeof msg, sig, sizeof sig));
    CHECK(!tidal_sign_verify(opub, msg, sizeof msg, sig, sizeof sig)); /* another key */
    for (int i = 0; i < TIDAL_SIGN_SIG_BYTES; i++) {                     /* any bit of the signature */
        sig[i] ^= (uint8_t)(1u << (i % 8));
        CHECK_MSG(!tidal_sign_verify(pub, msg, sizeof msg, sig, sizeof sig), "signature byte %d flipped verifies", i);
        sig[i] ^= (uint8_t)(1u << (i % 8));
    }
    for (int i = 0; i < (int)sizeof msg; i++) { /* any byte of the message */
        msg[i] ^= 1;
        CHECK_MSG(!tidal_sign_verify(pub, msg, sizeof msg, sig, sizeof sig), "message byte %d flipped verifies", i);
        msg[i] ^= 1;
    }
    CHECK(!tidal_sign_verify(pub, msg, sizeof msg - 1, sig, sizeof sig)); /* a shorter message */
    CHECK(!tidal_sign_verify(pub, msg, sizeof msg, sig, sizeof sig - 1)); /* truncated */
    CHECK(!tidal_sign_verify(pub, msg, sizeof msg, sig, 0));
    CHECK(!tidal_sign_verify(pub, msg, sizeof msg, NULL, 64));
    uint8_t longer[TIDAL_SIGN_SIG_BYTES + 1];
    memcpy(longer, sig, sizeof sig);
    longer[64] = 0;
    CHECK(!tidal_sign_verify(pub, msg, sizeof msg, longer, sizeof longer));
    uint8_t zero[TIDAL_SIGN_PUB_BYTES] = {0};
    CHECK(!tidal_sign_verify(zero, msg, sizeof msg, sig, sizeof sig));
    CHECK(tidal_sign_verify(pub, msg, sizeof msg, sig, sizeof sig)); /* still, after all that */
    /* an empty message is a message */
    CHECK_OK(tidal_sign(k, "", 0, sig));
    CHECK(tidal_sign_verify(pub, "", 0, sig, sizeof sig));
    tidal_sign_key_free(k);
    tidal_sign_key_free(other);
    tidal_sign_key_free(NULL);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void test_key_files(void)
{
    char path[128], ec[128], junk[128], missing[128];
    snprintf(path, sizeof path, "%s/key.pem", tmpdir);
    snprintf(ec, sizeof ec, "%s/ec.pem", tmpdir);
    snprintf(junk, sizeof junk, "%s/junk.pem", tmpdir);
    snprintf(missing, sizeof missing, "%s/none.pem", tmpdir);
    tidal_sign_key *k = NULL, *back = NULL;
    CHECK_OK(tidal_sign_keygen(&k));
    CHECK_OK(tidal_sign_key_save(k, path));
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK_OK(tidal_sign_key_load(path, &back));
    uint8_t a[TIDAL_SIGN_PUB_BYTES], b[TIDAL_SIGN_PUB_BYTES], sig[TIDAL_SIGN_SIG_BYTES];
    tidal_sign_key_public(k, a);
    tidal_sign_key_public(back, b);
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK_OK(tidal_sign(back, "m", 1, sig));
    CHECK(tidal_sign_verify(a, "m", 1, sig, sizeof sig));
    /* saving again replaces the file, still owner-only */
    chmod(path, 0644);
    CHECK_OK(tidal_sign_key_save(back, path));
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    tidal_sign_key_free(k);
    tidal_sign_key_free(back);

    back = (tidal_sign_key *)1;
    CHECK_STATUS(tidal_sign_key_load(missing, &back), TIDAL_ERR_NOT_FOUND);
    CHECK(back == NULL && strstr(tidal_errmsg(), missing));
    write_text(junk, "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
    CHECK_STATUS(tidal_sign_key_load(junk, &back), TIDAL_ERR_INVALID);
    CHECK(back == NULL && strstr(tidal_errmsg(), junk));
    write_text(junk, "");
    CHECK_STATUS(tidal_sign_key_load(junk, &back), TIDAL_ERR_INVALID);

    /* a P-256 key is a private key, but not an ed25519 one */
    EVP_PKEY *p256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    CHECK(p256 != NULL);
    FILE *f = fopen(ec, "w");
    CHECK(f && PEM_write_PrivateKey(f, p256, NULL, NULL, 0, NULL, NULL));
    fclose(f);
    EVP_PKEY_free(p256);
    CHECK_STATUS(tidal_sign_key_load(ec, &back), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "not an ed25519 key"), "%s", tidal_errmsg());
}

static void test_public_key_text(void)
{
    tidal_sign_key *k = NULL;
    CHECK_OK(tidal_sign_keygen(&k));
    uint8_t pub[TIDAL_SIGN_PUB_BYTES], back[TIDAL_SIGN_PUB_BYTES];
    tidal_sign_key_public(k, pub);
    tidal_sign_key_free(k);
    char text[TIDAL_SIGN_PUB_TEXT];
    tidal_sign_pub_format(pub, text);
    CHECK(strlen(text) == 72 && !strncmp(text, "ed25519:", 8));
    CHECK_OK(tidal_sign_pub_parse(text, strlen(text), "t", back));
    CHECK(memcmp(pub, back, sizeof pub) == 0);
    memset(back, 0, sizeof back);
    CHECK_OK(tidal_sign_pub_parse(text + 8, 64, "t", back)); /* without the prefix */
    CHECK(memcmp(pub, back, sizeof pub) == 0);
    char upper[80];
    snprintf(upper, sizeof upper, "%s", text);
    for (char *c = upper + 8; *c; c++)
        if (*c >= 'a' && *c <= 'f') *c = (char)(*c - 'a' + 'A');
    CHECK_OK(tidal_sign_pub_parse(upper, strlen(upper), "t", back));
    CHECK(memcmp(pub, back, sizeof pub) == 0);
    CHECK_STATUS(tidal_sign_pub_parse(text, strlen(text) - 1, "weights.public_key", back), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "weights.public_key") && strstr(tidal_errmsg(), "63 digits"));
    upper[20] = 'g';
    CHECK_STATUS(tidal_sign_pub_parse(upper, strlen(upper), "t", back), TIDAL_ERR_INVALID);
    CHECK_STATUS(tidal_sign_pub_parse("", 0, "t", back), TIDAL_ERR_INVALID);
    CHECK_STATUS(tidal_sign_pub_parse("ed25519:", 8, "t", back), TIDAL_ERR_INVALID);
}

/* ---------------------------------------------------------------- manifests */

static const char JOB[] = "job-a";

/* A valid "bus" manifest of 2 chunks, built on caller storage. */
typedef struct fixture_manifest {
    Tidal__V1__WeightsManifest w;
    Tidal__V1__BlobManifest b;
    uint8_t digest[32], c0[32], c1[32];
    uint64_t chain[2];
    ProtobufCBinaryData chunks[2];
} fixture_manifest;

static void make_manifest(fixture_manifest *f)
{
    memset(f, 0, sizeof *f);
    Tidal__V1__WeightsManifest w = TIDAL__V1__WEIGHTS_MANIFEST__INIT;
    Tidal__V1__BlobManifest b = TIDAL__V1__BLOB_MANIFEST__INIT;
    f->w = w, f->b = b;
    for (int i = 0; i < 32; i++) f->digest[i] = (uint8_t)i, f->c0[i] = (uint8_t)(100 + i), f->c1[i] = (uint8_t)(200 + i);
    f->chunks[0] = (ProtobufCBinaryData){32, f->c0};
    f->chunks[1] = (ProtobufCBinaryData){32, f->c1};
    f->b.schema_version = 1;
    f->b.name = "7";
    f->b.subject_prefix = "tidal.job-a.weights";
    f->b.bytes = 5000000;
    f->b.chunk_bytes = 4194304;
    f->b.chunk_count = 2;
    f->b.digest = (ProtobufCBinaryData){32, f->digest};
    f->b.n_chunk_digest = 2;
    f->b.chunk_digest = f->chunks;
    f->b.created_unix_ms = 1700000000000;
    f->w.schema_version = 1;
    f->w.version = 7;
    f->w.dtype = "fp32";
    f->w.bytes = 5000000;
    f->w.chunk_count = 2;
    f->w.digest = (ProtobufCBinaryData){32, f->digest};
    f->w.transport = "bus";
    f->w.url = "";
    f->w.blob = &f->b;
    f->w.model_config_json = "{\"model_type\": \"qwen2\"}";
    f->w.created_unix_ms = 1700000000001;
    f->w.digest_algorithm = "blake3";
}

/* Change signed field number `which` of f (0 .. N_CHANGES - 1). */
#define N_CHANGES 32
static void change(fixture_manifest *f, int which)
{
    switch (which) {
    case 0: f->w.schema_version = 2; break;
    case 1: f->w.version = 8; break;
    case 2: f->w.dtype = "bf16"; break;
    case 3: f->w.bytes++; break;
    case 4: f->w.chunk_count = 3; break;
    case 5: f->digest[31] ^= 1; break; /* the manifest's and the blob's digest (shared storage) */
    case 6: f->w.transport = "http"; break;
    case 7: f->w.url = "file:///x"; break;
    case 8: f->b.name = "8"; break;
    case 9: f->b.subject_prefix = "tidal.job-b.weights"; break;
    case 10: f->b.bytes--; break;
    case 11: f->b.chunk_bytes = 1 << 20; break;
    case 12: f->b.chunk_count = 1; break;
    case 13: f->c1[0] ^= 0x80; break; /* the second chunk's hash */
    case 14: f->b.n_chunk_digest = 1; break;
    case 15: f->b.created_unix_ms++; break;
    case 16: f->b.schema_version = 0; break;
    case 17: f->w.model_config_json = "{\"model_type\": \"llama\"}"; break;
    case 18: f->w.created_unix_ms++; break;
    case 19: f->w.blob = NULL; break;
    case 20: f->w.digest.len = 31; break;
    case 21: f->w.http_chunk_bytes = 1 << 20; break;
    case 22: f->w.n_http_chunk_digest = 1, f->w.http_chunk_digest = &f->w.digest; break;
    /* 20-29: transport dir and delta versions */
    case 23: f->w.dir = "/shared/w/step_7"; break;
    case 24: f->w.delta = true; break;
    case 25: f->w.delta_base = 6; break;
    case 26: f->w.n_chain = 1, f->w.chain = f->chain; break;
    case 27: f->w.n_chain = 2, f->w.chain = f->chain, f->chain[1] = 99; break;
    case 28: f->w.image_bytes = 9; break;
    case 29: f->w.image_digest = (ProtobufCBinaryData){32, f->c0}; break;
    case 30: f->w.full_every = 10; break;
    case 31: f->w.digest_algorithm = "sha256"; break;
    }
}

static void test_manifest_signature(void)
{
    tidal_sign_key *k = NULL, *other = NULL;
    CHECK_OK(tidal_sign_keygen(&k));
    CHECK_OK(tidal_sign_keygen(&other));
    uint8_t pub[TIDAL_SIGN_PUB_BYTES], opub[TIDAL_SIGN_PUB_BYTES];
    tidal_sign_key_public(k, pub);
    tidal_sign_key_public(other, opub);

    fixture_manifest f;
    make_manifest(&f);
    CHECK_STATUS(codec_manifest_verify(&f.w, JOB, pub), TIDAL_ERR_PERMISSION); /* unsigned */
    CHECK_MSG(strstr(tidal_errmsg(), "v7") && strstr(tidal_errmsg(), "unsigned"), "%s", tidal_errmsg());
    uint8_t sig[TIDAL_SIGN_SIG_BYTES];
    CHECK_OK(codec_manifest_sign(&f.w, JOB, k, sig));
    CHECK(f.w.signature.data == sig && f.w.signature.len == 64);
    CHECK_OK(codec_validate(&f.w.base));
    CHECK_OK(codec_manifest_verify(&f.w, JOB, pub));
    CHECK_STATUS(codec_manifest_verify(&f.w, JOB, opub), TIDAL_ERR_PERMISSION);
    CHECK_MSG(strstr(tidal_errmsg(), "does not verify"), "%s", tidal_errmsg());
    CHECK_STATUS(codec_manifest_verify(&f.w, "job-b", pub), TIDAL_ERR_PERMISSION); /* another job */

    /* over the wire and back: still verifies (the signed bytes come from the fields) */
    void *buf = NULL;
    size_t len = 0;
    CHECK_OK(codec_encode(&f.w.base, &buf, &len));
    Tidal__V1__WeightsManifest *d = NULL;
    tidal_status st = codec_decode_weights_manifest(buf, len, &d);
    free(buf);
    CHECK_OK(st);
    st = codec_manifest_verify(d, JOB, pub);
    tidal__v1__weights_manifest__free_unpacked(d, NULL);
    CHECK_OK(st);

    /* the signature: truncated, one bit, another key's */
    f.w.signature.len = 63;
    CHECK_STATUS(codec_manifest_verify(&f.w, JOB, pub), TIDAL_ERR_PERMISSION);
    CHECK_STATUS(codec_validate(&f.w.base), TIDAL_ERR_INVALID);
    CHECK_MSG(strstr(tidal_errmsg(), "signature has 63 bytes"), "%s", tidal_errmsg());
    f.w.signature.len = 64;
    sig[10] ^= 4;
    CHECK_STATUS(codec_manifest_verify(&f.w, JOB, pub), TIDAL_ERR_PERMISSION);
    sig[10] ^= 4;
    uint8_t osig[TIDAL_SIGN_SIG_BYTES];
    fixture_manifest g;
    make_manifest(&g);
    CHECK_OK(codec_manifest_sign(&g.w, JOB, other, osig));
    f.w.signature.data = osig;
    CHECK_STATUS(codec_manifest_verify(&f.w, JOB, pub), TIDAL_ERR_PERMISSION);
    f.w.signature.data = sig;
    CHECK_OK(codec_manifest_verify(&f.w, JOB, pub));

    /* every signed field */
    for (int i = 0; i < N_CHANGES; i++) {
        make_manifest(&g);
        change(&g, i);
        g.w.signature = (ProtobufCBinaryData){64, sig};
        CHECK_MSG(codec_manifest_verify(&g.w, JOB, pub) == TIDAL_ERR_PERMISSION, "change %d still verifies", i);
    }
    make_manifest(&g); /* and the unchanged fixture does (the loop's failures are the changes') */
    g.w.signature = (ProtobufCBinaryData){64, sig};
    CHECK_OK(codec_manifest_verify(&g.w, JOB, pub));

    /* lengths are in the signed bytes: moving a byte from one string to the next changes them */
    uint8_t *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    make_manifest(&g);
    g.w.url = "";
    g.w.model_config_json = "ab";
    CHECK_OK(codec_manifest_signed_bytes(&g.w, JOB, &a, &na));
    g.w.url = "a";
    g.w.model_config_json = "b";
    CHECK_OK(codec_manifest_signed_bytes(&g.w, JOB, &b, &nb));
    const bool differ = na != nb || memcmp(a, b, na) != 0;
    free(a);
    free(b);
    CHECK(differ);
    tidal_sign_key_free(k);
    tidal_sign_key_free(other);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/tidal-test-sign-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_sign_verify);
    RUN(test_key_files);
    RUN(test_public_key_text);
    RUN(test_manifest_signature);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", tmpdir);
    return check_summary();
}
