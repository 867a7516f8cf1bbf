/* manifest_sign.h - signing and verifying a WeightsManifest (docs/protocol.md
 * "Signed weights").
 *
 * What is signed is not the encoded message but an explicit canonical byte
 * string of it (codec_manifest_signed_bytes): a domain tag, the job's name,
 * then every field of the manifest and of its blob manifest except
 * `signature`, in field-number order, integers big-endian, strings and bytes
 * with a 4-byte length. The sender and the receiver build it from the
 * decoded fields, so it does not depend on how an encoder orders or packs
 * them, and a field a rogue adds that this build does not know is simply
 * not in it (an unknown field carries nothing a worker acts on).
 */
#ifndef TIDAL_PROTO_MANIFEST_SIGN_H
#define TIDAL_PROTO_MANIFEST_SIGN_H

#include <stddef.h>
#include <stdint.h>

#include "base/sign.h"
#include "base/status.h"
#include "tidal.pb-c.h"

/* The signed bytes of manifest w for job `job` (malloc'd, the caller frees). */
tidal_status codec_manifest_signed_bytes(const Tidal__V1__WeightsManifest *w, const char *job, uint8_t **out,
                                         size_t *len);

/* Sign w for job `job` with k: sig gets the 64 bytes and w->signature points
 * at sig (the caller keeps sig alive while w is used). */
tidal_status codec_manifest_sign(Tidal__V1__WeightsManifest *w, const char *job, const tidal_sign_key *k,
                                 uint8_t sig[TIDAL_SIGN_SIG_BYTES]);

/* Whether w carries a valid signature for job `job` under public key pub:
 * TIDAL_OK, or TIDAL_ERR_PERMISSION with a message that names the version and
 * says why ("unsigned", "does not verify with the job's key ed25519:..."). */
tidal_status codec_manifest_verify(const Tidal__V1__WeightsManifest *w, const char *job,
                                   const uint8_t pub[TIDAL_SIGN_PUB_BYTES]);

#endif
