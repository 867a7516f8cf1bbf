/* codec.h - turning bus bytes into trusted tidal messages, and back.
 *
 * protoc-c generates the structs and the raw pack/unpack for proto/tidal.proto
 * ("tidal.pb-c.h", in the build directory). Raw unpack only proves that bytes
 * are well-formed protobuf; it happily yields a trajectory with 12 tokens and
 * 10 logprobs, a NaN reward, or a manifest for a newer schema. This module is
 * the one gate every received message passes: decode, then validate against
 * the rules docs/protocol.md states, so code above it can index arrays and do
 * arithmetic without re-checking.
 *
 *   TIDAL_ERR_DECODE   the bytes are not that message (not protobuf, truncated,
 *                      a field with the wrong wire type)
 *   TIDAL_ERR_INVALID  the message decodes but is nonsense; the thread's
 *                      message (tidal_errmsg) names the message and the field:
 *                      "trajectory t-7: logprob[17] = 0.3 > 0"
 *
 * Ownership: a decoded message belongs to the caller, who frees it with the
 * generated free_unpacked function (tidal__v1__trajectory__free_unpacked(t,
 * NULL)). On any error *out is NULL and nothing is left allocated. Encoded
 * buffers are malloc'd and belong to the caller (free). No function keeps a
 * pointer to its arguments; all are thread safe.
 *
 * Schema versions: every top-level message carries schema_version. Senders set
 * CODEC_SCHEMA_VERSION; receivers read 0 (absent, e.g. a minimal third-party
 * env) as 1 and reject anything newer than CODEC_SCHEMA_VERSION. Unknown
 * fields are ignored.
 */
#ifndef TIDAL_CODEC_H
#define TIDAL_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"
#include "tidal.pb-c.h"

/* The newest schema_version this build reads and the one it writes. */
#define CODEC_SCHEMA_VERSION 1u

/* Limits the validators enforce (docs/protocol.md lists them). */
#define CODEC_MAX_ID_BYTES 255u           /* ids: prompt, group, trajectory, worker */
#define CODEC_MAX_NAME_BYTES 127u         /* env, role and blob names */
#define CODEC_MAX_GROUP_SIZE 65536u
#define CODEC_MAX_TOKENS (1u << 20)       /* Prompt.max_tokens */
#define CODEC_MAX_CHUNK_BYTES (4u << 20)  /* blob chunk size */
#define CODEC_MAX_MAP_ENTRIES 1024u       /* reward components, env and metric values */

/* ---------------------------------------------------------------- generic */

/* Decode `len` bytes at `data` as a message of type `desc` (one of the
 * top-level messages of tidal.proto) and validate it. On success *out is the
 * caller's message; on failure *out is NULL and the status is
 * TIDAL_ERR_DECODE (not that message) or TIDAL_ERR_INVALID (nonsense, or a
 * descriptor this module does not know). `data` may be NULL when len is 0 (the
 * empty message, which most types then reject as invalid). */
tidal_status codec_decode(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                          ProtobufCMessage **out);

/* Check a message (decoded, or built by a producer before it sends) against
 * the rules of its type: TIDAL_OK or TIDAL_ERR_INVALID with the field named.
 * Producers call it in tests and debug paths to catch their own bugs at the
 * source. Nested messages are checked with their parent. */
tidal_status codec_validate(const ProtobufCMessage *m);

/* Pack any message into a malloc'd buffer: *buf (the caller frees it) and
 * *len. Does not validate (see codec_validate). Never returns a NULL buffer,
 * even for an empty message. TIDAL_ERR_NOMEM when allocation fails, with
 * *buf NULL. */
tidal_status codec_encode(const ProtobufCMessage *m, void **buf, size_t *len);

/* A name that becomes one subject token (an env's, a role's) or a blob name:
 * [A-Za-z0-9_-]{1,127}; TIDAL_ERR_INVALID "<what>: name ..." otherwise. */
tidal_status codec_check_name(const char *what, const char *s);

/* ---------------------------------------------------------------- per type */
/* Each is codec_decode with that type's descriptor and a typed result; the
 * caller frees *out with the type's generated free_unpacked(…, NULL). */

tidal_status codec_decode_prompt(const void *data, size_t len, Tidal__V1__Prompt **out);
tidal_status codec_decode_trajectory(const void *data, size_t len, Tidal__V1__Trajectory **out);
tidal_status codec_decode_trajectory_group(const void *data, size_t len, Tidal__V1__TrajectoryGroup **out);
tidal_status codec_decode_blob_manifest(const void *data, size_t len,
                                        Tidal__V1__BlobManifest **out);
tidal_status codec_decode_weights_manifest(const void *data, size_t len,
                                           Tidal__V1__WeightsManifest **out);
tidal_status codec_decode_env_request(const void *data, size_t len, Tidal__V1__EnvRequest **out);
tidal_status codec_decode_env_response(const void *data, size_t len,
                                       Tidal__V1__EnvResponse **out);
tidal_status codec_decode_worker_status(const void *data, size_t len,
                                        Tidal__V1__WorkerStatus **out);
tidal_status codec_decode_control(const void *data, size_t len, Tidal__V1__Control **out);
tidal_status codec_decode_metric(const void *data, size_t len, Tidal__V1__Metric **out);

/* ---------------------------------------------------------------- trajectory groups */

/* The samples a validated group answers (sample_count, 0 read as group_size)
 * and the parts it comes in (part_count, 0 read as 1). */
uint32_t codec_group_sample_count(const Tidal__V1__TrajectoryGroup *g);
uint32_t codec_group_part_count(const Tidal__V1__TrajectoryGroup *g);

/* Encoded parts of one group: n malloc'd buffers buf[i] of len[i] bytes, in
 * part order. Owned by the holder; codec_parts_free releases them and zeroes
 * the struct (safe on a zeroed or freed one). */
typedef struct codec_parts {
    size_t n;
    void **buf;
    size_t *len;
} codec_parts;
void codec_parts_free(codec_parts *p);

/* One trajectory already encoded (what a rollout episode produces): its
 * bytes and, for messages, its id. Borrowed. */
typedef struct codec_encoded {
    const void *data;
    size_t len;
    const char *trajectory_id;
} codec_encoded;

/* Frame n encoded trajectories under head (its group fields; its trajectories
 * and part fields are ignored) as the fewest parts in trajectory order whose
 * encodings are each at most max_bytes: one message with part_count 0 when
 * all fit, else parts 0..k-1 with part_count k. No trajectory is decoded or
 * re-encoded (a repeated field is the concatenation of its framed elements),
 * and none is cut: one that cannot fit with the header is TIDAL_ERR_INVALID
 * naming it, its size and max_bytes. The caller passes the server's
 * max_payload less what the headers take. On failure *out is empty. */
tidal_status codec_frame_group_parts(const Tidal__V1__TrajectoryGroup *head, const codec_encoded *t, size_t n,
                                     size_t max_bytes, codec_parts *out);

/* The same from g's decoded trajectories (each is encoded first). */
tidal_status codec_encode_group_parts(const Tidal__V1__TrajectoryGroup *g, size_t max_bytes, codec_parts *out);

/* The Nats-Msg-Id of a part, written like snprintf (returns the length it
 * needs): the prompt_id for a one-part answer, so the stream keeps one answer
 * to a redelivered prompt; "<prompt_id>:<attempt>:<part>" for a part of
 * several, since two attempts may cut at different trajectories and a part of
 * one is not the same message as the same-numbered part of the other (the
 * buffer takes each sample once, by trajectory id, whichever attempt brings
 * it). */
int codec_group_msg_id(const Tidal__V1__TrajectoryGroup *g, char *buf, size_t cap);

/* ---------------------------------------------------------------- per-token versions */

/* Run-length encode n per-token policy versions into the Trajectory form:
 * parallel arrays values[r] (the version) and runs[r] (how many consecutive
 * tokens have it). Both arrays are the caller's, with room for n entries (a
 * run covers at least one token, so there are never more than n runs).
 * Returns the number of runs written (0 when n is 0). A run longer than
 * UINT32_MAX tokens is split in two. */
size_t codec_versions_rle(const uint64_t *versions, size_t n, uint64_t *values, uint32_t *runs);

/* Expand n_runs (value, run) pairs into one version per token in the caller's
 * `out`, which has room for `cap` entries; *n is the number of tokens
 * covered. TIDAL_ERR_INVALID when a run has length 0 or the runs cover more
 * than `cap` tokens (the message says how many); `out` is then unspecified. */
tidal_status codec_versions_expand(const uint64_t *values, const uint32_t *runs, size_t n_runs,
                                   uint64_t *out, size_t cap, size_t *n);

/* The oldest and newest policy version among a validated trajectory's
 * completion tokens. False (and the outputs untouched) when it has no
 * completion tokens. Either pointer may be NULL. */
bool codec_trajectory_versions(const Tidal__V1__Trajectory *t, uint64_t *oldest, uint64_t *newest);

#endif
