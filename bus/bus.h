/* bus.h - tidal's NATS layer: connection, core pub/sub and request/reply,
 * JetStream streams and pull consumers, KV buckets, and chunked blobs.
 *
 * Everything above the wire talks to NATS through this header. Every call
 * returns a tidal_status; on failure the thread's message (tidal_errmsg) names
 * the operation and the subject, stream, consumer, bucket or key involved.
 *
 * Ownership: a bus_msg handed to the caller (bus_fetch, bus_request, bus_next)
 * belongs to the caller until bus_msg_destroy; buffers returned through `void **`
 * are malloc'd and belong to the caller (free). Strings passed in are copied
 * where they must outlive the call.
 *
 * Threading: a tidal_bus may be shared by threads (nats.c connections are
 * thread safe); a bus_sub, bus_kv_watcher or bus_blob_store is used by one
 * thread at a time.
 */
#ifndef TIDAL_BUS_H
#define TIDAL_BUS_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/status.h"

typedef struct tidal_bus tidal_bus;
typedef natsMsg bus_msg;
typedef struct bus_sub bus_sub;

/* ---------------------------------------------------------------- connect */

typedef struct bus_opts {
    const char *urls;          /* comma-separated nats:// or tls:// URLs (required) */
    const char *name;          /* connection name the server shows; NULL: "tidal" */
    const char *user;          /* user/password auth, or NULL */
    const char *password;
    const char *token;         /* token auth, or NULL */
    const char *creds_file;    /* NATS .creds (JWT + nkey seed), or a user nkey seed file
                                  (`tidal creds`: a line SU...), or NULL */
    const char *tls_ca;        /* PEM CA file; setting any tls_* turns TLS on */
    const char *tls_cert;      /* client certificate (mutual TLS), with tls_key */
    const char *tls_key;
    int connect_timeout_ms;    /* 0: 5000 */
    int reconnect_buf_bytes;   /* bytes buffered while reconnecting; 0: 64 MiB */
    int js_timeout_ms;         /* JetStream API / publish-ack wait; 0: 5000 */
    int async_max_pending;     /* bound on un-acked async publishes; 0: 4096 */
    int replicas;              /* copies of every stream and KV bucket it creates: 1, 3 or 5; 0: 3 when
                                  the cluster (the servers the connection knows, its URLs and the ones
                                  the server announces) has 3 or more nodes, else 1 */
} bus_opts;

/* Connect to the first reachable server of opts->urls. The connection then
 * reconnects forever with capped exponential backoff (100 ms .. 5 s, jittered),
 * buffering up to reconnect_buf_bytes of outgoing data meanwhile; disconnect,
 * reconnect and async errors are logged, one line each. */
tidal_status bus_connect(tidal_bus **out, const bus_opts *opts);

/* Flush pending data, drain nothing, close and free. NULL is a no-op. */
void bus_close(tidal_bus *b);

/* For a leaving process's teardown: flush what is pending (1 s at most) and
 * close the connection, keeping b. After it, unsubscribing and stopping
 * watchers are local and immediate, where they would otherwise wait seconds
 * on a server that is gone (the end of a job stops it); ephemeral consumers
 * are the server's to expire. bus_close still frees b. NULL is a no-op. */
void bus_detach(tidal_bus *b);

/* The server's max_payload for this connection (bytes). */
int64_t bus_max_payload(const tidal_bus *b);

/* True while the connection is up (not reconnecting or closed). */
bool bus_connected(const tidal_bus *b);

/* Round trip to the server: everything published before has been processed.
 * Returns TIDAL_ERR_PERMISSION when the server refused a publish since the
 * last check (the message names the subject). */
tidal_status bus_flush(tidal_bus *b, int timeout_ms);

/* ---------------------------------------------------------------- messages */

const char *bus_msg_subject(const bus_msg *m);
const void *bus_msg_data(const bus_msg *m);
int bus_msg_len(const bus_msg *m);
/* The reply subject of a request, or NULL when it has none. */
const char *bus_msg_reply(const bus_msg *m);
/* Header value, or NULL when absent. Valid while m lives. */
const char *bus_msg_header(bus_msg *m, const char *key);
/* JetStream delivery count (1 on first delivery; 0 for a core message). */
uint64_t bus_msg_delivered(bus_msg *m);
/* JetStream stream sequence (0 for a core message). */
uint64_t bus_msg_stream_seq(bus_msg *m);
void bus_msg_destroy(bus_msg *m);

/* ---------------------------------------------------------------- core NATS */

/* Fire-and-forget publish. A permission refusal arrives asynchronously and is
 * reported by the next bus_flush. */
tidal_status bus_publish(tidal_bus *b, const char *subject, const void *data, int len);

/* Request/reply: publish on `subject` and wait for one reply.
 * TIDAL_ERR_NOT_FOUND when no one listens, TIDAL_ERR_TIMEOUT when nobody answered
 * in time. *reply belongs to the caller. */
tidal_status bus_request(tidal_bus *b, const char *subject, const void *data, int len,
                         int timeout_ms, bus_msg **reply);

/* Answer a request message received by a subscription. */
tidal_status bus_respond(tidal_bus *b, bus_msg *request, const void *data, int len);

/* Callback for bus_subscribe. It owns `m` and must bus_msg_destroy it. */
typedef void (*bus_handler)(tidal_bus *b, bus_msg *m, void *closure);

/* Subscribe with a callback run on the client's delivery thread. `queue`
 * non-NULL joins a queue group (each message to one member). Pending limits
 * are lifted so large messages are never dropped for a slow handler. */
tidal_status bus_subscribe(tidal_bus *b, const char *subject, const char *queue,
                           bus_handler handler, void *closure, bus_sub **out);

/* Synchronous subscription: read with bus_next. */
tidal_status bus_subscribe_sync(tidal_bus *b, const char *subject, const char *queue,
                                bus_sub **out);
/* Next message of a synchronous subscription; TIDAL_ERR_TIMEOUT when none came. */
tidal_status bus_next(bus_sub *s, int timeout_ms, bus_msg **out);

/* Unsubscribe and free. NULL is a no-op. For a bus_subscribe subscription it
 * first waits (up to 5 s) until a handler call in progress has returned, so the
 * handler never runs on freed state: not to be called from that handler. */
void bus_unsubscribe(bus_sub *s);
/* For an async subscription (bus_subscribe): remove the interest at the
 * server, let the handler receive what was already delivered to this client,
 * and wait up to timeout_ms for that to finish. The subscription is then
 * closed; bus_unsubscribe still frees it. TIDAL_ERR_TIMEOUT when the handler
 * did not get through the backlog in time (the rest is dropped). */
tidal_status bus_sub_drain(bus_sub *s, int timeout_ms);
/* Unsubscribe by itself after max_msgs messages in all (the server stops
 * sending then; a one-shot subscription). */
tidal_status bus_sub_limit(bus_sub *s, int max_msgs);

/* ---------------------------------------------------------------- JetStream */

typedef struct bus_stream_cfg {
    const char *name;
    int replicas;              /* 0: the connection's (bus_opts.replicas) */
    const char *const *subjects;
    int n_subjects;
    bool work_queue;           /* retention: work queue (each message consumed once) */
    bool memory;               /* storage: memory (default: file) */
    int64_t max_msgs;          /* 0: unlimited */
    int64_t max_bytes;         /* 0: unlimited */
    int64_t max_age_ms;        /* 0: unlimited */
    int64_t max_msgs_per_subject; /* 0: unlimited */
    int32_t max_msg_size;      /* 0: server limit */
    int64_t duplicate_window_ms; /* Nats-Msg-Id de-duplication window; 0: 2 minutes */
    bool allow_direct;         /* direct get (bus_stream_get_last) */
    bool discard_new;          /* refuse new messages when full (default: drop oldest) */
} bus_stream_cfg;

/* Create the stream, or update it when its configuration differs from cfg.
 * Idempotent. A change the server cannot make (storage, retention) is an
 * error naming the stream and the field. */
tidal_status bus_stream_ensure(tidal_bus *b, const bus_stream_cfg *cfg);

/* The stream's replicas and the name of the server that leads it now
 * (jsStreamInfo's cluster leader; "" on a single server) into leader (cap
 * bytes). For operations and the cluster tests. */
tidal_status bus_stream_leader(tidal_bus *b, const char *stream, int *replicas, char *leader, size_t cap);
tidal_status bus_stream_delete(tidal_bus *b, const char *stream);
/* Message and byte counts of a stream. Either pointer may be NULL. */
tidal_status bus_stream_state(tidal_bus *b, const char *stream, uint64_t *msgs, uint64_t *bytes);
/* Remove every message on `subject` (wildcards allowed) from the stream. */
tidal_status bus_stream_purge_subject(tidal_bus *b, const char *stream, const char *subject);
/* The last message stored on `subject` (direct get; the stream needs
 * allow_direct). TIDAL_ERR_NOT_FOUND when there is none. */
tidal_status bus_stream_get_last(tidal_bus *b, const char *stream, const char *subject,
                                 bus_msg **out);
/* The same read from the stream's leader (not a direct get, which any replica
 * may answer before it has applied a write just acked): for a writer reading
 * back what it wrote. Slower; one request through the JetStream API. */
tidal_status bus_stream_get_last_leader(tidal_bus *b, const char *stream, const char *subject, bus_msg **out);

typedef struct bus_consumer_cfg {
    const char *stream;
    const char *durable;       /* the consumer's name (durable, pull) */
    const char *filter_subject;/* NULL: every subject of the stream */
    int64_t ack_wait_ms;       /* redelivery after this long un-acked; 0: 30 s */
    int64_t max_deliver;       /* 0: unlimited */
    int64_t max_ack_pending;   /* 0: server default */
    bool ack_all;              /* an ack acknowledges every earlier message too */
} bus_consumer_cfg;

/* Create the durable pull consumer, or update it when cfg differs. Idempotent. */
tidal_status bus_consumer_ensure(tidal_bus *b, const bus_consumer_cfg *cfg);
/* Messages waiting for delivery and delivered-but-unacked. Either may be NULL. */
tidal_status bus_consumer_state(tidal_bus *b, const char *stream, const char *durable,
                                uint64_t *pending, uint64_t *ack_pending);

/* Delete a consumer (its un-acked messages become deliverable to the next
 * consumer). TIDAL_ERR_NOT_FOUND when there is none. */
tidal_status bus_consumer_delete(tidal_bus *b, const char *stream, const char *durable);

/* Publish to a stream and wait for its acknowledgement, retrying through
 * disconnects until timeout_ms (0: the connection's js_timeout_ms). msg_id
 * (NULL: none) goes in Nats-Msg-Id so a retry is never stored twice;
 * *duplicate (may be NULL) says the server had it already. *seq may be NULL. */
tidal_status bus_js_publish(tidal_bus *b, const char *subject, const void *data, int len,
                            const char *msg_id, int timeout_ms, uint64_t *seq,
                            bool *duplicate);

/* Pipelined publish: returns once the message is sent; at most
 * async_max_pending are un-acked at once (the call waits for room).
 * Failures are counted and reported by bus_js_publish_wait. */
tidal_status bus_js_publish_async(tidal_bus *b, const char *subject, const void *data,
                                  int len, const char *msg_id);
/* Wait until every async publish is acknowledged. TIDAL_ERR_BUS when some
 * failed since the last wait (the message counts them and quotes the first),
 * TIDAL_ERR_TIMEOUT when acks are still missing. */
tidal_status bus_js_publish_wait(tidal_bus *b, int timeout_ms);

/* Bind to an existing durable pull consumer. */
tidal_status bus_pull_subscribe(tidal_bus *b, const char *stream, const char *durable,
                                bus_sub **out);
/* Fetch up to `max` messages, waiting at most timeout_ms for the first.
 * msgs[0..*n) belong to the caller. TIDAL_ERR_TIMEOUT with *n = 0 when none. */
tidal_status bus_fetch(bus_sub *s, int max, int timeout_ms, bus_msg **msgs, int *n);

tidal_status bus_ack(bus_msg *m);
/* Ack and wait for the server to confirm it (the message will not come back). */
tidal_status bus_ack_sync(bus_msg *m, int timeout_ms);
/* Negative ack: redeliver after delay_ms (0: at once). */
tidal_status bus_nak(bus_msg *m, int64_t delay_ms);
/* Still working on it: restart the AckWait timer. */
tidal_status bus_in_progress(bus_msg *m);
/* Never redeliver this message. */
tidal_status bus_term(bus_msg *m);

/* ---------------------------------------------------------------- KV */

typedef struct bus_kv bus_kv;

typedef struct bus_kv_cfg {
    const char *bucket;
    int64_t ttl_ms;            /* entries expire after this long un-updated; 0: never */
    int history;               /* revisions kept per key; 0: 1 */
    bool memory;               /* memory storage (default: file) */
    int32_t max_value_bytes;   /* 0: server limit */
} bus_kv_cfg;

/* Create the bucket, or bind to it when it exists. */
tidal_status bus_kv_ensure(tidal_bus *b, const bus_kv_cfg *cfg, bus_kv **out);
/* Bind to an existing bucket (TIDAL_ERR_NOT_FOUND when there is none). */
tidal_status bus_kv_open(tidal_bus *b, const char *bucket, bus_kv **out);
void bus_kv_close(bus_kv *kv);

/* Get a key's value (malloc'd copy, NUL-terminated past *len for convenience)
 * and revision. TIDAL_ERR_NOT_FOUND when absent or deleted. val/len/rev may be NULL. */
tidal_status bus_kv_get(bus_kv *kv, const char *key, void **val, size_t *len, uint64_t *rev);
/* Put a value. A put is idempotent, so one that times out or finds no
 * JetStream responder (the server restarting, the client reconnecting) is
 * tried again for up to BUS_KV_PUT_RETRY_MS before it fails. */
#define BUS_KV_PUT_RETRY_MS 20000
tidal_status bus_kv_put(bus_kv *kv, const char *key, const void *val, size_t len, uint64_t *rev);
/* Put only if the key does not exist: TIDAL_ERR_CONFLICT when it does. On a
 * cluster (replicas > 1) it and bus_kv_update are tried again while no
 * JetStream responder answers (a bucket electing its leader), for up to
 * BUS_KV_PUT_RETRY_MS: nothing took the request, so it cannot have landed. */
tidal_status bus_kv_create(bus_kv *kv, const char *key, const void *val, size_t len,
                           uint64_t *rev);
/* Compare-and-set: put only if the key's revision is still `last`:
 * TIDAL_ERR_CONFLICT otherwise. */
tidal_status bus_kv_update(bus_kv *kv, const char *key, const void *val, size_t len,
                           uint64_t last, uint64_t *rev);
tidal_status bus_kv_delete(bus_kv *kv, const char *key);

typedef struct bus_kv_watcher bus_kv_watcher;

typedef enum { BUS_KV_PUT = 1, BUS_KV_DELETE, BUS_KV_INITIAL_DONE } bus_kv_event_kind;

typedef struct bus_kv_event {
    bus_kv_event_kind kind;
    const char *key;           /* NULL for BUS_KV_INITIAL_DONE */
    const void *value;
    size_t len;
    uint64_t revision;
    void *entry_;              /* owned by the event; free with bus_kv_event_clear */
} bus_kv_event;

/* Watch keys matching `keys` (wildcards allowed; NULL: all). The current
 * values come first, then one BUS_KV_INITIAL_DONE event, then live changes. */
tidal_status bus_kv_watch(bus_kv *kv, const char *keys, bus_kv_watcher **out);
/* Next event; TIDAL_ERR_TIMEOUT when none came in timeout_ms. */
tidal_status bus_kv_watch_next(bus_kv_watcher *w, int timeout_ms, bus_kv_event *ev);
void bus_kv_event_clear(bus_kv_event *ev);
void bus_kv_watch_stop(bus_kv_watcher *w);

/* ---------------------------------------------------------------- blobs */

/* Chunked blobs (nats.c 3.4 has no Object Store): a named blob of any size is
 * stored in stream `stream` as chunks of at most 4 MiB (less when the server's
 * max_payload is smaller) on subjects PREFIX.<name>.c.<index>, followed by a
 * BlobManifest (proto/tidal.proto) on PREFIX.<name>.m holding the digest of
 * every chunk and the blob's digest, the digest over those chunk hashes.
 * Only the newest `keep` blobs are kept. */
typedef struct bus_blob_store bus_blob_store;

#define BUS_BLOB_MAX_CHUNK (4u << 20)

typedef struct bus_blob_info {
    char name[128];
    uint64_t bytes;
    uint32_t chunk_bytes;
    uint32_t chunk_count;
    uint8_t digest[32];
} bus_blob_info;

/* Create (or bind to) the blob stream `stream` holding subjects `prefix`.>,
 * file storage, keeping the newest `keep` blobs (0: all). */
tidal_status bus_blob_store_open(tidal_bus *b, const char *stream, const char *prefix,
                                 int keep, bus_blob_store **out);
void bus_blob_store_close(bus_blob_store *st);

/* Store `len` bytes under `name` (letters, digits, '-', '_'; replaces a blob of
 * the same name), then drop blobs beyond the newest `keep`. *info may be NULL. */
tidal_status bus_blob_put(bus_blob_store *st, const char *name, const void *data,
                          uint64_t len, bus_blob_info *info);

/* Stream a blob in: open (an existing blob of that name is removed), write
 * its bytes in any pieces (every full chunk is hashed and published as it
 * fills; nothing else is buffered), then close (the last chunk, every chunk's
 * ack, the manifest, pruning; *info may be NULL) or abort (no manifest: the
 * chunks sent stay invisible). Close and abort free the writer; after a
 * failed write only they may be called. */
typedef struct bus_blob_writer bus_blob_writer;
tidal_status bus_blob_writer_open(bus_blob_store *st, const char *name, bus_blob_writer **out);
tidal_status bus_blob_writer_write(bus_blob_writer *w, const void *data, size_t len);
tidal_status bus_blob_writer_close(bus_blob_writer *w, bus_blob_info *info);
void bus_blob_writer_abort(bus_blob_writer *w);

/* A live blob: broadcast to the taps first, stored after (docs/protocol.md
 * "Live weights"). The live writer keeps every byte written in the caller's
 * image[cap] and, as each chunk fills, hashes it and publishes it as a core
 * message on PREFIX_live.<name>.c.<i>.<chunk bytes> - outside the stream, so nothing is
 * stored and no ack is waited for: only taps listening now receive it (the
 * publisher flushes every few chunks, so it never runs far ahead of the
 * server). close_live sends the last chunk and gives the blob's encoded
 * BlobManifest (*manifest malloc'd, the caller's) - the bytes bus_blob_put_live
 * stores with the same chunks later, so nothing is hashed twice. Abort
 * (bus_blob_writer_abort) frees a live writer too; a broadcast leaves nothing
 * on the bus to clean up. */
tidal_status bus_blob_writer_open_live(bus_blob_store *st, const char *name, void *image, size_t cap,
                                       bus_blob_writer **out);
tidal_status bus_blob_writer_close_live(bus_blob_writer *w, void **manifest, size_t *manifest_len,
                                        bus_blob_info *info);
/* Store blob `name` = data[len] (an existing blob of that name is removed)
 * under `manifest`, the bytes close_live gave for it: the chunks with the
 * manifest's digests, then the manifest itself, then pruning as bus_blob_put.
 * TIDAL_ERR_INVALID when the manifest does not describe len bytes in this
 * store's chunk size. */
tidal_status bus_blob_put_live(bus_blob_store *st, const char *name, const void *data, uint64_t len,
                               const void *manifest, size_t manifest_len, bus_blob_info *info);

/* What a reader expects of a blob, from a manifest it trusts (e.g. one
 * embedded in a signed WeightsManifest): size, chunk size and count, and the
 * chunk_count digests (32 bytes each, contiguous). */
typedef struct bus_blob_layout {
    uint64_t bytes;
    uint32_t chunk_bytes;
    uint32_t chunk_count;
    const uint8_t *chunk_digest;
} bus_blob_layout;

/* A tap: a core subscription on the store's live chunk subjects
 * (PREFIX_live.*.c.*.*) that catches the chunks a live writer broadcasts, so a
 * reader can have a whole blob before it is stored.
 * While armed with a buffer, each chunk caught is copied to its place in it
 * and hashed there; the records are of the newest blob seen (a chunk of
 * another blob starts over). Nothing is trusted: bus_blob_fetch uses a caught
 * chunk only when its hash is the one the trusted layout names, and fetches
 * the rest (chunks dropped, missed or altered). Disarm before reading the
 * buffer; the tap is used by one thread (its callback runs on the client's). */
typedef struct bus_blob_tap bus_blob_tap;
tidal_status bus_blob_tap_open(bus_blob_store *st, bus_blob_tap **out);
void bus_blob_tap_arm(bus_blob_tap *t, void *buf, size_t cap); /* buf NULL: disarmed, records forgotten */
void bus_blob_tap_disarm(bus_blob_tap *t);
/* Chunks of blob `name` the tap holds (verified or not). */
unsigned bus_blob_tap_caught(bus_blob_tap *t, const char *name);
void bus_blob_tap_close(bus_blob_tap *t);

/* Read blob `name` laid out as `want` into dest (want->bytes, the caller's,
 * e.g. reused from the previous version), several direct gets in flight, each
 * chunk hashed where it lands and fetched again when its digest does not
 * match (at most 3 tries); *refetched (may be NULL) counts those retries.
 * tap (may be NULL; disarmed, last armed with dest): chunks it caught of this
 * blob whose hashes match are already in place and not fetched; *caught (may
 * be NULL) counts them.
 * TIDAL_ERR_CORRUPT for a missing chunk, one of the wrong size, or one that
 * keeps failing its check (the message names it). */
tidal_status bus_blob_fetch(bus_blob_store *st, const char *name, const bus_blob_layout *want, void *dest,
                            bus_blob_tap *tap, unsigned *refetched, unsigned *caught);

/* Test hooks (process-wide; NULL clears): chunk_put is called after each
 * chunk a writer published, chunk_got after each chunk a fetch verified;
 * bus_blob_test_corrupt flips one bit in each of the next `chunks` chunks
 * fetched or caught by a tap, after they arrive and before their check. */
void bus_blob_test_hooks(void (*chunk_put)(uint32_t index), void (*chunk_got)(uint32_t index));
void bus_blob_test_corrupt(unsigned chunks);

/* Read blob `name` into a malloc'd buffer, verifying every chunk and the
 * digest against the blob's own manifest (as bus_blob_fetch):
 * TIDAL_ERR_NOT_FOUND without a manifest, TIDAL_ERR_CORRUPT for a missing or
 * altered chunk (the message names it). */
tidal_status bus_blob_get(bus_blob_store *st, const char *name, void **data, uint64_t *len,
                          bus_blob_info *info);

/* Manifest of blob `name` without reading the chunks. */
tidal_status bus_blob_stat(bus_blob_store *st, const char *name, bus_blob_info *info);

/* Remove a blob's chunks and manifest. */
tidal_status bus_blob_delete(bus_blob_store *st, const char *name);

#endif
