/* sign.c - Ed25519 signatures through OpenSSL's EVP interface (see sign.h).
 *
 * Ed25519 signs the message itself (no separate digest): EVP_DigestSign /
 * EVP_DigestVerify one-shot with a NULL digest. OpenSSL's error queue is
 * cleared after every failure so that one refusal does not leak into the
 * next call's report.
 */
#include "base/sign.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

struct tidal_sign_key {
    EVP_PKEY *pkey;
};

/* OpenSSL's first queued error as text ("" when none), and the queue emptied. */
static const char *ossl_reason(char *buf, size_t n)
{
    unsigned long e = ERR_get_error();
    buf[0] = '\0';
    if (e) ERR_error_string_n(e, buf, n);
    ERR_clear_error();
    return buf[0] ? buf : "unknown OpenSSL error";
}

/* *out = a key owning pkey; pkey is freed if that fails. */
static tidal_status key_wrap(EVP_PKEY *pkey, tidal_sign_key **out)
{
    tidal_sign_key *k = calloc(1, sizeof *k);
    if (!k) {
        EVP_PKEY_free(pkey);
        return tidal_fail(TIDAL_ERR_NOMEM, "sign: out of memory");
    }
    k->pkey = pkey;
    *out = k;
    return TIDAL_OK;
}

tidal_status tidal_sign_keygen(tidal_sign_key **out)
{
    *out = NULL;
    char why[256];
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (!ctx || EVP_PKEY_keygen_init(ctx) <= 0 || EVP_PKEY_keygen(ctx, &pkey) <= 0) {
        EVP_PKEY_CTX_free(ctx);
        return tidal_fail(TIDAL_ERR_INVALID, "sign: cannot make an ed25519 key: %s", ossl_reason(why, sizeof why));
    }
    EVP_PKEY_CTX_free(ctx);
    return key_wrap(pkey, out);
}

tidal_status tidal_sign_key_load(const char *path, tidal_sign_key **out)
{
    *out = NULL;
    char why[256];
    FILE *f = fopen(path, "r");
    if (!f)
        return tidal_fail(errno == ENOENT ? TIDAL_ERR_NOT_FOUND : TIDAL_ERR_IO, "sign: key file %s: %s", path,
                          strerror(errno));
    EVP_PKEY *pkey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
    fclose(f);
    if (!pkey)
        return tidal_fail(TIDAL_ERR_INVALID, "sign: key file %s: not a PEM private key: %s", path,
                          ossl_reason(why, sizeof why));
    if (EVP_PKEY_get_id(pkey) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(pkey);
        return tidal_fail(TIDAL_ERR_INVALID, "sign: key file %s: not an ed25519 key (make one with "
                          "`openssl genpkey -algorithm ed25519`)", path);
    }
    return key_wrap(pkey, out);
}

tidal_status tidal_sign_key_save(const tidal_sign_key *k, const char *path)
{
    char why[256], tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return tidal_fail(TIDAL_ERR_IO, "sign: key file %s: path too long", path);
    BIO *mem = BIO_new(BIO_s_mem());
    if (!mem || !PEM_write_bio_PrivateKey(mem, k->pkey, NULL, NULL, 0, NULL, NULL)) {
        BIO_free(mem);
        return tidal_fail(TIDAL_ERR_INVALID, "sign: key file %s: cannot encode the key: %s", path,
                          ossl_reason(why, sizeof why));
    }
    char *pem = NULL;
    long len = BIO_get_mem_data(mem, &pem);
    tidal_status st = TIDAL_OK;
    /* 0600 from the start (and again, should the temp file exist with another mode) */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || fchmod(fd, 0600) != 0) {
        st = tidal_fail(TIDAL_ERR_IO, "sign: cannot write key file %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    for (long off = 0; off < len;) {
        ssize_t n = write(fd, pem + off, (size_t)(len - off));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            st = tidal_fail(TIDAL_ERR_IO, "sign: cannot write key file %s: %s", tmp, strerror(errno));
            goto cleanup;
        }
        off += n;
    }
    if (fsync(fd) != 0) {
        st = tidal_fail(TIDAL_ERR_IO, "sign: cannot write key file %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, path) != 0) st = tidal_fail(TIDAL_ERR_IO, "sign: cannot write key file %s: %s", path, strerror(errno));
cleanup:
    if (fd >= 0) close(fd);
    if (st != TIDAL_OK) unlink(tmp);
    OPENSSL_cleanse(pem, (size_t)len);
    BIO_free(mem);
    return st;
}

void tidal_sign_key_public(const tidal_sign_key *k, uint8_t pub[TIDAL_SIGN_PUB_BYTES])
{
    size_t n = TIDAL_SIGN_PUB_BYTES;
    if (EVP_PKEY_get_raw_public_key(k->pkey, pub, &n) <= 0 || n != TIDAL_SIGN_PUB_BYTES) {
        memset(pub, 0, TIDAL_SIGN_PUB_BYTES); /* cannot happen for an ed25519 key; an all-zero key verifies nothing */
        ERR_clear_error();
    }
}

void tidal_sign_key_free(tidal_sign_key *k)
{
    if (!k) return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

tidal_status tidal_sign(const tidal_sign_key *k, const void *msg, size_t len, uint8_t sig[TIDAL_SIGN_SIG_BYTES])
{
    char why[256];
    size_t n = TIDAL_SIGN_SIG_BYTES;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    const int ok = ctx && EVP_DigestSignInit(ctx, NULL, NULL, NULL, k->pkey) > 0 &&
                   EVP_DigestSign(ctx, sig, &n, msg, len) > 0 && n == TIDAL_SIGN_SIG_BYTES;
    EVP_MD_CTX_free(ctx);
    if (!ok) return tidal_fail(TIDAL_ERR_INVALID, "sign: cannot sign %zu bytes: %s", len, ossl_reason(why, sizeof why));
    return TIDAL_OK;
}

bool tidal_sign_verify(const uint8_t pub[TIDAL_SIGN_PUB_BYTES], const void *msg, size_t len, const uint8_t *sig,
                       size_t sig_len)
{
    if (!sig || sig_len != TIDAL_SIGN_SIG_BYTES) return false;
    EVP_PKEY *pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, TIDAL_SIGN_PUB_BYTES);
    EVP_MD_CTX *ctx = pkey ? EVP_MD_CTX_new() : NULL;
    const bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pkey) > 0 &&
                    EVP_DigestVerify(ctx, sig, sig_len, msg, len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    ERR_clear_error(); /* a refusal queues an error; it is answered by the result */
    return ok;
}

void tidal_sign_pub_format(const uint8_t pub[TIDAL_SIGN_PUB_BYTES], char out[TIDAL_SIGN_PUB_TEXT])
{
    static const char digits[] = "0123456789abcdef";
    memcpy(out, "ed25519:", 8);
    for (int i = 0; i < TIDAL_SIGN_PUB_BYTES; i++) {
        out[8 + 2 * i] = digits[pub[i] >> 4];
        out[8 + 2 * i + 1] = digits[pub[i] & 15];
    }
    out[TIDAL_SIGN_PUB_TEXT - 1] = '\0';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

tidal_status tidal_sign_pub_parse(const char *text, size_t len, const char *what, uint8_t pub[TIDAL_SIGN_PUB_BYTES])
{
    if (len >= 8 && !memcmp(text, "ed25519:", 8)) text += 8, len -= 8;
    if (len != 2 * TIDAL_SIGN_PUB_BYTES)
        return tidal_fail(TIDAL_ERR_INVALID, "%s: a public key is \"ed25519:\" and 64 hex digits, this has %zu digits",
                          what, len);
    for (int i = 0; i < TIDAL_SIGN_PUB_BYTES; i++) {
        int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return tidal_fail(TIDAL_ERR_INVALID, "%s: a public key is \"ed25519:\" and 64 hex digits; character %d is not one",
                              what, hi < 0 ? 2 * i + 1 : 2 * i + 2);
        pub[i] = (uint8_t)(hi << 4 | lo);
    }
    return TIDAL_OK;
}
