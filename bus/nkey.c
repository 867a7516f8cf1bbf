/* nkey.c - NATS user nkeys (nkey.h). */
#include "bus/nkey.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define PREFIX_SEED (18 << 3) /* 'S' */
#define PREFIX_USER (20 << 3) /* 'U' */
#define KEY_BYTES 32

static const char B32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/* CRC-16/XMODEM (polynomial 0x1021, initial 0), the nkeys checksum. */
static uint16_t crc16(const uint8_t *p, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++) crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

/* base32 of n bytes, no padding, into out (room for ceil(8n/5) + 1). */
static void b32_encode(const uint8_t *p, size_t n, char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | p[i], bits += 8;
        while (bits >= 5) out[o++] = B32[(acc >> (bits - 5)) & 31], bits -= 5;
    }
    if (bits > 0) out[o++] = B32[(acc << (5 - bits)) & 31];
    out[o] = '\0';
}

/* base32 text -> bytes; -1 on a character outside the alphabet, else the byte count. */
static int b32_decode(const char *s, size_t len, uint8_t *out, size_t cap)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        const char *c = memchr(B32, s[i], 32);
        if (!c || !s[i]) return -1;
        acc = (acc << 5) | (uint32_t)(c - B32), bits += 5;
        if (bits >= 8) {
            if (o == cap) return -1;
            out[o++] = (uint8_t)(acc >> (bits - 8)), bits -= 8;
        }
    }
    return (int)o;
}

/* prefix bytes + key + crc16 (little endian), base32'd into out. */
static void encode_key(const uint8_t *prefix, size_t np, const uint8_t key[KEY_BYTES], char *out)
{
    uint8_t raw[2 + KEY_BYTES + 2];
    memcpy(raw, prefix, np);
    memcpy(raw + np, key, KEY_BYTES);
    const uint16_t c = crc16(raw, np + KEY_BYTES);
    raw[np + KEY_BYTES] = (uint8_t)(c & 0xff), raw[np + KEY_BYTES + 1] = (uint8_t)(c >> 8);
    b32_encode(raw, np + KEY_BYTES + 2, out);
    OPENSSL_cleanse(raw, sizeof raw);
}

/* The Ed25519 public key of a 32-byte private seed. */
static tidal_status ed25519_public(const uint8_t seed[KEY_BYTES], uint8_t pub[KEY_BYTES])
{
    EVP_PKEY *k = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, KEY_BYTES);
    size_t n = KEY_BYTES;
    const int ok = k && EVP_PKEY_get_raw_public_key(k, pub, &n) == 1 && n == KEY_BYTES;
    EVP_PKEY_free(k);
    return ok ? TIDAL_OK : tidal_fail(TIDAL_ERR_UNAVAILABLE, "nkey: this OpenSSL cannot make Ed25519 keys");
}

static tidal_status encode_pair(const uint8_t seed[KEY_BYTES], char *public_key, char *seed_text)
{
    uint8_t pub[KEY_BYTES];
    TRY(ed25519_public(seed, pub));
    const uint8_t up[1] = {PREFIX_USER};
    encode_key(up, 1, pub, public_key);
    if (seed_text) {
        const uint8_t sp[2] = {PREFIX_SEED | (PREFIX_USER >> 5), (PREFIX_USER & 31) << 3};
        encode_key(sp, 2, seed, seed_text);
    }
    return TIDAL_OK;
}

tidal_status bus_nkey_generate(char public_key[BUS_NKEY_PUBLIC_LEN + 1], char seed[BUS_NKEY_SEED_LEN + 1])
{
    uint8_t raw[KEY_BYTES];
    if (RAND_bytes(raw, KEY_BYTES) != 1) return tidal_fail(TIDAL_ERR_IO, "nkey: no random bytes from OpenSSL (RAND_bytes)");
    tidal_status st = encode_pair(raw, public_key, seed);
    OPENSSL_cleanse(raw, sizeof raw);
    return st;
}

tidal_status bus_nkey_public_of(const char *seed, char public_key[BUS_NKEY_PUBLIC_LEN + 1])
{
    uint8_t raw[2 + KEY_BYTES + 2 + 1];
    tidal_status st = TIDAL_OK;
    const size_t len = strnlen(seed, BUS_NKEY_SEED_LEN + 1);
    const int n = len == BUS_NKEY_SEED_LEN ? b32_decode(seed, len, raw, sizeof raw) : -1;
    if (n != 2 + KEY_BYTES + 2) {
        st = tidal_fail(TIDAL_ERR_INVALID, "nkey: not a user seed (want %d base32 characters starting SU)",
                        BUS_NKEY_SEED_LEN);
        goto cleanup;
    }
    const uint16_t want = (uint16_t)(raw[2 + KEY_BYTES] | raw[2 + KEY_BYTES + 1] << 8);
    if (crc16(raw, 2 + KEY_BYTES) != want) {
        st = tidal_fail(TIDAL_ERR_INVALID, "nkey: the seed's checksum does not match (a damaged or mistyped seed)");
        goto cleanup;
    }
    if ((raw[0] & 0xf8) != PREFIX_SEED || (uint8_t)(((raw[0] & 7) << 5) | (raw[1] >> 3)) != PREFIX_USER) {
        st = tidal_fail(TIDAL_ERR_INVALID, "nkey: the seed is not a user seed (SU...)");
        goto cleanup;
    }
    st = encode_pair(raw + 2, public_key, NULL);
cleanup:
    OPENSSL_cleanse(raw, sizeof raw);
    return st;
}

tidal_status bus_nkey_seed_in_file(const char *path, char seed[BUS_NKEY_SEED_LEN + 1])
{
    seed[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return tidal_fail(TIDAL_ERR_IO, "nkey: %s: cannot read it", path);
    char line[512];
    while (!seed[0] && fgets(line, sizeof line, f)) {
        const char *p = line + strspn(line, " \t");
        const size_t n = strcspn(p, " \t\r\n");
        if (p[0] != 'S' || p[1] != 'U' || n != BUS_NKEY_SEED_LEN) continue;
        memcpy(seed, p, n);
        seed[n] = '\0';
    }
    OPENSSL_cleanse(line, sizeof line);
    fclose(f);
    if (!seed[0]) return tidal_fail(TIDAL_ERR_NOT_FOUND, "nkey: %s: no user seed (a line starting SU)", path);
    return TIDAL_OK;
}
