/* Chunked blobs through bus/: a 256 MiB round trip with checksums,
 * corrupted and missing chunks detected, only the newest N kept. */

#include "base/digest.h"
#include "check.h"
#include "harness/fixture.h"
#include "proto/codec.h"

static fixture F;

static void fill(uint8_t *p, uint64_t n, uint32_t seed)
{
    uint64_t x = 0x9E3779B97F4A7C15ull ^ seed;
    for (uint64_t i = 0; i < n; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memcpy(p + i, &x, n - i < 8 ? n - i : 8);
    }
}

static void test_round_trip_256mib(void)
{
    bus_blob_store *st = NULL;
    CHECK_OK(bus_blob_store_open(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights", 2, &st));
    const uint64_t n = (256ull << 20) + 12345; /* not a multiple of the chunk size */
    uint8_t *data = malloc(n);
    fill(data, n, 1);
    bus_blob_info info;
    tidal_status s = bus_blob_put(st, "1", data, n, &info);
    if (s != TIDAL_OK) { free(data); bus_blob_store_close(st); }
    CHECK_OK(s);
    CHECK(info.bytes == n && info.chunk_bytes == BUS_BLOB_MAX_CHUNK && info.chunk_count == 65);
    /* the blob's digest: digest over the chunks' digests (protocol.md) */
    uint8_t want[32], hashes[65 * 32];
    for (uint64_t i = 0; i < 65; i++) {
        uint64_t off = i * BUS_BLOB_MAX_CHUNK, len = n - off < BUS_BLOB_MAX_CHUNK ? n - off : BUS_BLOB_MAX_CHUNK;
        digest_compute(data + off, len, hashes + 32 * i);
    }
    digest_compute(hashes, sizeof hashes, want);
    int digest_ok = !memcmp(info.digest, want, 32);
    void *back = NULL;
    uint64_t blen = 0;
    s = bus_blob_get(st, "1", &back, &blen, &info);
    int same = s == TIDAL_OK && blen == n && !memcmp(back, data, n);
    free(back);
    free(data);
    bus_blob_store_close(st);
    CHECK(digest_ok);
    CHECK_OK(s);
    CHECK(same);
}

/* A writer fed in uneven pieces stores the same blob; a chunk corrupted in
 * transit (the test hook flips a bit after it arrives) is detected by its
 * hash and fetched again, and the blob read is intact. */
static void test_streamed_and_refetched(void)
{
    bus_blob_store *st = NULL;
    CHECK_OK(bus_blob_store_open(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights", 2, &st));
    const uint64_t n = (10ull << 20) + 3;
    uint8_t *data = malloc(n), *back = malloc(n);
    fill(data, n, 3);
    bus_blob_writer *w = NULL;
    CHECK_OK(bus_blob_writer_open(st, "s", &w));
    for (uint64_t off = 0, piece = 1; off < n; off += piece, piece = piece * 3 + 1) {
        if (piece > n - off) piece = n - off;
        CHECK_OK(bus_blob_writer_write(w, data + off, piece));
    }
    bus_blob_info info;
    CHECK_OK(bus_blob_writer_close(w, &info));
    CHECK(info.bytes == n && info.chunk_count == 3);
    void *whole = NULL;
    uint64_t wlen = 0;
    CHECK_OK(bus_blob_get(st, "s", &whole, &wlen, NULL));
    CHECK(wlen == n && !memcmp(whole, data, n));
    free(whole);

    /* the layout from the manifest, as a worker has it from the signed one */
    Tidal__V1__BlobManifest *m = NULL;
    bus_msg *mm = NULL;
    CHECK_OK(bus_stream_get_last(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights.s.m", &mm));
    CHECK_OK(codec_decode_blob_manifest(bus_msg_data(mm), (size_t)bus_msg_len(mm), &m));
    bus_msg_destroy(mm);
    uint8_t hashes[3 * 32];
    for (int i = 0; i < 3; i++) memcpy(hashes + 32 * i, m->chunk_digest[i].data, 32);
    bus_blob_layout L = {.bytes = m->bytes, .chunk_bytes = m->chunk_bytes, .chunk_count = m->chunk_count,
                         .chunk_digest = hashes};
    tidal__v1__blob_manifest__free_unpacked(m, NULL);
    unsigned refetched = 99;
    bus_blob_test_corrupt(1);
    tidal_status s = bus_blob_fetch(st, "s", &L, back, NULL, &refetched, NULL);
    bus_blob_test_corrupt(0);
    CHECK_OK(s);
    CHECK(refetched == 1);
    CHECK(!memcmp(back, data, n));
    /* corrupted on every try: given up, the chunk named */
    bus_blob_test_corrupt(100);
    s = bus_blob_fetch(st, "s", &L, back, NULL, &refetched, NULL);
    bus_blob_test_corrupt(0);
    CHECK(s == TIDAL_ERR_CORRUPT && strstr(tidal_errmsg(), "fails its digest check 3 times"));
    free(data);
    free(back);
    bus_blob_store_close(st);
}

/* A tap catches the chunks a live writer broadcasts, in place in its buffer,
 * before anything is stored; the blob is then stored under the broadcast's
 * manifest (the same bytes), and the fetch gets none of the caught chunks.
 * A caught chunk whose bytes differ from what the trusted layout names (the
 * test hook) is fetched instead, and a layout the tap's blob does not match
 * (other hashes) makes it fetch all. */
static void test_tap_catches_chunks(void)
{
    bus_blob_store *st = NULL;
    CHECK_OK(bus_blob_store_open(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights", 2, &st));
    tidal_bus *rb = NULL;
    bus_opts bo = {.urls = tidal_server_url(F.srv), .name = "test-tap", .js_timeout_ms = 5000};
    CHECK_OK(bus_connect(&rb, &bo));
    bus_blob_store *rs = NULL;
    CHECK_OK(bus_blob_store_open(rb, "TIDAL_t_WEIGHTS", "tidal.t.weights", 0, &rs));
    bus_blob_tap *tap = NULL;
    CHECK_OK(bus_blob_tap_open(rs, &tap));
    CHECK_OK(bus_flush(rb, 5000)); /* the subscription is at the server */
    const uint64_t n = (9ull << 20) + 11;
    uint8_t *data = malloc(n), *buf = malloc(n), *kept = malloc(n);
    fill(data, n, 4);
    memset(buf, 0, n);
    for (int round = 0; round < 2; round++) {
        bus_blob_tap_arm(tap, buf, n);
        if (round == 1) bus_blob_test_corrupt(1); /* the first chunk the tap sees */
        bus_blob_writer *w = NULL;
        CHECK_OK(bus_blob_writer_open_live(st, "t", kept, n, &w));
        CHECK_OK(bus_blob_writer_write(w, data, 5)); /* pieces across chunk boundaries */
        CHECK_OK(bus_blob_writer_write(w, data + 5, n - 5));
        void *mb = NULL;
        size_t ml = 0;
        bus_blob_info info;
        CHECK_OK(bus_blob_writer_close_live(w, &mb, &ml, &info));
        CHECK(info.chunk_count == 3 && info.bytes == n && !memcmp(kept, data, n));
        for (int i = 0; i < 200 && bus_blob_tap_caught(tap, "t") < 3; i++) usleep(10000);
        bus_blob_test_corrupt(0);
        bus_blob_tap_disarm(tap);
        CHECK(bus_blob_tap_caught(tap, "t") == 3);
        if (round == 0) { /* broadcast only: nothing of blob t is in the stream */
            bus_msg *none = NULL;
            CHECK_STATUS(bus_stream_get_last(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights.t.c.0", &none), TIDAL_ERR_NOT_FOUND);
            CHECK_STATUS(bus_blob_put_live(st, "t", kept, n - 1, mb, ml, NULL), TIDAL_ERR_INVALID); /* not its bytes */
            CHECK_MSG(strstr(tidal_errmsg(), "does not describe"), "%s", tidal_errmsg());
        }
        bus_blob_info stored;
        CHECK_OK(bus_blob_put_live(st, "t", kept, n, mb, ml, &stored));
        CHECK(!memcmp(stored.digest, info.digest, 32));
        bus_msg *mm = NULL;
        CHECK_OK(bus_stream_get_last(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights.t.m", &mm));
        CHECK((size_t)bus_msg_len(mm) == ml && !memcmp(bus_msg_data(mm), mb, ml)); /* the broadcast's manifest */
        Tidal__V1__BlobManifest *m = NULL;
        CHECK_OK(codec_decode_blob_manifest(bus_msg_data(mm), (size_t)bus_msg_len(mm), &m));
        bus_msg_destroy(mm);
        free(mb);
        uint8_t hashes[3 * 32];
        for (int i = 0; i < 3; i++) memcpy(hashes + 32 * i, m->chunk_digest[i].data, 32);
        bus_blob_layout L = {.bytes = m->bytes, .chunk_bytes = m->chunk_bytes, .chunk_count = 3, .chunk_digest = hashes};
        tidal__v1__blob_manifest__free_unpacked(m, NULL);
        void *whole = NULL;
        uint64_t whole_len = 0;
        CHECK_OK(bus_blob_get(st, "t", &whole, &whole_len, NULL)); /* the stored copy verifies on its own */
        CHECK(whole_len == n && !memcmp(whole, data, n));
        free(whole);
        unsigned caught = 99, refetched = 99;
        CHECK_OK(bus_blob_fetch(rs, "t", &L, buf, tap, &refetched, &caught));
        CHECK_MSG(caught == (round == 0 ? 3u : 2u) && refetched == 0, "round %d: caught %u", round, caught);
        CHECK(!memcmp(buf, data, n));
        if (round == 1) { /* hashes the tap's chunks do not have: every chunk fetched */
            hashes[0] ^= 1, hashes[32] ^= 1, hashes[64] ^= 1;
            CHECK_STATUS(bus_blob_fetch(rs, "t", &L, buf, tap, &refetched, &caught), TIDAL_ERR_CORRUPT);
            CHECK(caught == 0 && refetched >= 2); /* a chunk tried 3 times (the others in parallel), and named */
            CHECK_MSG(strstr(tidal_errmsg(), "fails its digest check 3 times"), "%s", tidal_errmsg());
        }
    }
    free(kept);
    bus_blob_tap_close(tap);
    bus_blob_store_close(rs);
    bus_close(rb);
    bus_blob_store_close(st);
    free(data);
    free(buf);
}

/* A chunk replaced by other bytes, and a chunk gone, are both caught and named. */
static void test_corruption_detected(void)
{
    bus_blob_store *st = NULL;
    CHECK_OK(bus_blob_store_open(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights", 2, &st));
    const uint64_t n = (12ull << 20) + 7;
    uint8_t *data = malloc(n);
    fill(data, n, 2);
    tidal_status s = bus_blob_put(st, "2", data, n, NULL);
    if (s != TIDAL_OK) { free(data); bus_blob_store_close(st); }
    CHECK_OK(s);

    /* flip one byte of chunk 1 and store it in the chunk's place */
    uint8_t *bad = malloc(BUS_BLOB_MAX_CHUNK);
    memcpy(bad, data + BUS_BLOB_MAX_CHUNK, BUS_BLOB_MAX_CHUNK);
    bad[4242] ^= 0x40;
    free(data);
    s = bus_js_publish(F.bus, "tidal.t.weights.2.c.1", bad, BUS_BLOB_MAX_CHUNK, NULL, 0, NULL, NULL);
    free(bad);
    if (s != TIDAL_OK) bus_blob_store_close(st);
    CHECK_OK(s);
    void *back = NULL;
    uint64_t blen = 0;
    s = bus_blob_get(st, "2", &back, &blen, NULL);
    if (s != TIDAL_ERR_CORRUPT) bus_blob_store_close(st);
    CHECK_STATUS(s, TIDAL_ERR_CORRUPT);
    CHECK(back == NULL && blen == 0);
    CHECK_MSG(strstr(tidal_errmsg(), "chunk 1 of 4") && strstr(tidal_errmsg(), "digest"), "%s", tidal_errmsg());

    /* a chunk of the wrong size (a missing one: test_missing_chunk; one failure
     * per blob, since the chunks are fetched in parallel and any may come first) */
    CHECK_OK(bus_js_publish(F.bus, "tidal.t.weights.2.c.1", "short", 5, NULL, 0, NULL, NULL));
    s = bus_blob_get(st, "2", &back, &blen, NULL);
    if (s != TIDAL_ERR_CORRUPT) bus_blob_store_close(st);
    CHECK_STATUS(s, TIDAL_ERR_CORRUPT);
    CHECK_MSG(strstr(tidal_errmsg(), "chunk 1 of 4 has 5 bytes"), "%s", tidal_errmsg());
    CHECK_OK(bus_blob_delete(st, "2"));
    CHECK_STATUS(bus_blob_get(st, "2", &back, &blen, NULL), TIDAL_ERR_NOT_FOUND);

    /* a manifest that is not a manifest */
    CHECK_OK(bus_js_publish(F.bus, "tidal.t.weights.9.m", "garbage!", 8, NULL, 0, NULL, NULL));
    CHECK_STATUS(bus_blob_get(st, "9", &back, &blen, NULL), TIDAL_ERR_CORRUPT);
    CHECK(strstr(tidal_errmsg(), "manifest") != NULL);
    CHECK_OK(bus_blob_delete(st, "9"));
    CHECK_STATUS(bus_blob_put(st, "bad.name", "x", 1, NULL), TIDAL_ERR_INVALID);
    bus_blob_store_close(st);
}

static void test_missing_chunk(void)
{
    bus_blob_store *st = NULL;
    CHECK_OK(bus_blob_store_open(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights", 2, &st));
    uint8_t *data = malloc(9 << 20);
    fill(data, 9 << 20, 3);
    tidal_status s = bus_blob_put(st, "3", data, 9 << 20, NULL);
    free(data);
    if (s != TIDAL_OK) bus_blob_store_close(st);
    CHECK_OK(s);
    CHECK_OK(bus_stream_purge_subject(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights.3.c.2"));
    void *back = NULL;
    uint64_t blen = 0;
    s = bus_blob_get(st, "3", &back, &blen, NULL);
    bus_blob_store_close(st);
    CHECK_STATUS(s, TIDAL_ERR_CORRUPT);
    CHECK_MSG(strstr(tidal_errmsg(), "chunk 2 of 3 missing"), "%s", tidal_errmsg());
}

/* Only the newest `keep` blobs survive; an empty blob round-trips. */
static void test_keep_newest(void)
{
    bus_blob_store *st = NULL;
    CHECK_OK(bus_blob_store_open(F.bus, "TIDAL_keep", "tidal.keep.weights", 3, &st));
    uint8_t buf[5000];
    for (int v = 1; v <= 6; v++) {
        fill(buf, sizeof buf, (uint32_t)v);
        char name[16];
        snprintf(name, sizeof name, "%d", v);
        CHECK_OK(bus_blob_put(st, name, buf, sizeof buf, NULL));
    }
    bus_blob_info info;
    for (int v = 1; v <= 6; v++) {
        char name[16];
        snprintf(name, sizeof name, "%d", v);
        tidal_status s = bus_blob_stat(st, name, &info);
        CHECK_MSG(v <= 3 ? s == TIDAL_ERR_NOT_FOUND : s == TIDAL_OK, "version %d: %s", v, tidal_status_name(s));
    }
    void *back = NULL;
    uint64_t n = 0;
    CHECK_OK(bus_blob_get(st, "6", &back, &n, NULL));
    fill(buf, sizeof buf, 6);
    CHECK(n == sizeof buf && !memcmp(back, buf, n));
    free(back);
    CHECK_OK(bus_blob_put(st, "empty", "", 0, &info));
    CHECK(info.chunk_count == 0 && info.bytes == 0);
    CHECK_OK(bus_blob_get(st, "empty", &back, &n, NULL));
    CHECK(n == 0);
    free(back);
    bus_blob_store_close(st);
}

int main(void)
{
    fixture_start(&F);
    RUN(test_round_trip_256mib);
    RUN(test_streamed_and_refetched);
    RUN(test_tap_catches_chunks);
    RUN(test_corruption_detected);
    RUN(test_missing_chunk);
    RUN(test_keep_newest);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
