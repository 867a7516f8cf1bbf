/* sign.h - Ed25519 signatures (OpenSSL libcrypto): the trainer signs each
 * weights manifest, workers verify it against the job's public key
 * (docs/protocol.md "Signed weights").
 *
 * A private key lives in a PEM file (PKCS#8, "-----BEGIN PRIVATE KEY-----",
 * what `openssl genpkey -algorithm ed25519` writes), or is made here and
 * saved the same way (mode 0600). A public key travels as its 32 raw bytes,
 * written as text "ed25519:" followed by 64 lower-case hex digits
 * (tidal_sign_pub_format / tidal_sign_pub_parse). A signature is 64 bytes.
 */
#ifndef TIDAL_BASE_SIGN_H
#define TIDAL_BASE_SIGN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

#define TIDAL_SIGN_PUB_BYTES 32
#define TIDAL_SIGN_SIG_BYTES 64
/* "ed25519:" + 64 hex digits + NUL */
#define TIDAL_SIGN_PUB_TEXT (8 + 2 * TIDAL_SIGN_PUB_BYTES + 1)

typedef struct tidal_sign_key tidal_sign_key; /* a private key (and its public half) */

/* A new random key. */
tidal_status tidal_sign_keygen(tidal_sign_key **out);

/* The Ed25519 private key in PEM file `path`. TIDAL_ERR_NOT_FOUND when the
 * file is missing, TIDAL_ERR_INVALID when it holds no key or another
 * algorithm's, naming the file. */
tidal_status tidal_sign_key_load(const char *path, tidal_sign_key **out);

/* Write k's private key to `path` as PEM, readable by its owner only
 * (created with mode 0600, written whole: temp + rename). */
tidal_status tidal_sign_key_save(const tidal_sign_key *k, const char *path);

/* k's public key, 32 raw bytes. */
void tidal_sign_key_public(const tidal_sign_key *k, uint8_t pub[TIDAL_SIGN_PUB_BYTES]);

void tidal_sign_key_free(tidal_sign_key *k);

/* sig = the Ed25519 signature of msg[len] under k (deterministic: the same
 * key and message give the same 64 bytes). */
tidal_status tidal_sign(const tidal_sign_key *k, const void *msg, size_t len, uint8_t sig[TIDAL_SIGN_SIG_BYTES]);

/* Whether sig[sig_len] is a valid signature of msg[len] under public key
 * pub. A signature that is not 64 bytes, or a public key OpenSSL refuses,
 * verifies as false. */
bool tidal_sign_verify(const uint8_t pub[TIDAL_SIGN_PUB_BYTES], const void *msg, size_t len, const uint8_t *sig,
                       size_t sig_len);

/* The text form of pub: "ed25519:" + 64 lower-case hex digits. */
void tidal_sign_pub_format(const uint8_t pub[TIDAL_SIGN_PUB_BYTES], char out[TIDAL_SIGN_PUB_TEXT]);

/* Parse text[len] (not NUL-terminated necessarily) in the text form; the
 * "ed25519:" prefix may be left out, hex digits may be upper case.
 * TIDAL_ERR_INVALID naming `what` (a spec key, a KV key) otherwise. */
tidal_status tidal_sign_pub_parse(const char *text, size_t len, const char *what, uint8_t pub[TIDAL_SIGN_PUB_BYTES]);

#endif
