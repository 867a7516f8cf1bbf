/* Chunked blobs through bus/: a 256 MiB round trip with checksums,
 * corrupted and missing chunks detected, only the newest N kept. */
#include <openssl/evp.h>

#include "check.h"
#include "harness/fixture.h"

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
    uint8_t want[32];
    unsigned int wl = 32;
    EVP_Digest(data, n, want, &wl, EVP_sha256(), NULL);
    int sha_ok = !memcmp(info.sha256, want, 32);
    void *back = NULL;
    uint64_t blen = 0;
    s = bus_blob_get(st, "1", &back, &blen, &info);
    int same = s == TIDAL_OK && blen == n && !memcmp(back, data, n);
    free(back);
    free(data);
    bus_blob_store_close(st);
    CHECK(sha_ok);
    CHECK_OK(s);
    CHECK(same);
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
    CHECK_MSG(strstr(tidal_errmsg(), "chunk 1 of 4") && strstr(tidal_errmsg(), "SHA-256"), "%s", tidal_errmsg());

    /* remove chunk 3 */
    CHECK_OK(bus_stream_purge_subject(F.bus, "TIDAL_t_WEIGHTS", "tidal.t.weights.2.c.3"));
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
    RUN(test_corruption_detected);
    RUN(test_missing_chunk);
    RUN(test_keep_newest);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
