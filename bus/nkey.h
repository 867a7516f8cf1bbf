/* nkey.h - NATS user nkeys: an Ed25519 key pair written as NATS writes it.
 *
 * `tidal creds` gives each role its own user nkey: the server's configuration
 * holds only the public key ("U..."), the role's file only the seed ("SU..."),
 * so nothing secret sits in nats-server's configuration. A client proves its
 * identity by signing the server's nonce with the seed (nats.c does that,
 * bus_connect points it at the file).
 *
 * Encoding (the nkeys format): base32 (RFC 4648 alphabet, no padding) of
 * prefix byte(s) + 32 key bytes + CRC-16/XMODEM of those, little endian. A
 * public user key has the prefix byte 20 << 3 ('U'); a seed has the two bytes
 * (18 << 3) | (160 >> 5) and (160 & 31) << 3, so it reads "SU".
 */
#ifndef TIDAL_BUS_NKEY_H
#define TIDAL_BUS_NKEY_H

#include "base/status.h"

#define BUS_NKEY_PUBLIC_LEN 56 /* characters of a public key, without the NUL */
#define BUS_NKEY_SEED_LEN 58   /* characters of a seed */

/* A new user key pair from the system's random source (OpenSSL RAND_bytes).
 * public_key gets BUS_NKEY_PUBLIC_LEN + 1 bytes, seed BUS_NKEY_SEED_LEN + 1. */
tidal_status bus_nkey_generate(char public_key[BUS_NKEY_PUBLIC_LEN + 1], char seed[BUS_NKEY_SEED_LEN + 1]);

/* The public key of a user seed ("SU..."). TIDAL_ERR_INVALID when `seed` is
 * not one (wrong length, alphabet, prefix or checksum); the message never
 * quotes the seed. */
tidal_status bus_nkey_public_of(const char *seed, char public_key[BUS_NKEY_PUBLIC_LEN + 1]);

/* The first user seed in a text file: a line that starts with "SU" (after
 * blanks), as in nats' .creds and .nk files. TIDAL_ERR_NOT_FOUND when the
 * file has none, TIDAL_ERR_IO when it cannot be read. */
tidal_status bus_nkey_seed_in_file(const char *path, char seed[BUS_NKEY_SEED_LEN + 1]);

#endif
