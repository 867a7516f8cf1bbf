/* KV buckets through bus/: get/put/create/CAS update/delete/watch/TTL. */
#include "check.h"
#include "harness/fixture.h"

static fixture F;

static void test_put_get_create_update(void)
{
    bus_kv *kv = NULL;
    bus_kv_cfg c = {.bucket = "TIDAL_job1", .history = 5};
    CHECK_OK(bus_kv_ensure(F.bus, &c, &kv));
    void *v = NULL;
    size_t n = 0;
    uint64_t rev = 0, r1 = 0, r2 = 0;
    CHECK_STATUS(bus_kv_get(kv, "spec", &v, &n, &rev), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "spec") && strstr(tidal_errmsg(), "TIDAL_job1"));
    CHECK_OK(bus_kv_put(kv, "spec", "job: a", 6, &r1));
    CHECK_OK(bus_kv_get(kv, "spec", &v, &n, &rev));
    CHECK(n == 6 && !memcmp(v, "job: a", 6) && ((char *)v)[6] == '\0' && rev == r1);
    free(v);

    /* create: only the first one wins */
    CHECK_OK(bus_kv_create(kv, "controller.cursor", "0", 1, &r2));
    CHECK_STATUS(bus_kv_create(kv, "controller.cursor", "1", 1, NULL), TIDAL_ERR_CONFLICT);
    CHECK(strstr(tidal_errmsg(), "controller.cursor") != NULL);

    /* compare-and-set: a writer with a stale revision loses */
    uint64_t r3 = 0;
    CHECK_OK(bus_kv_update(kv, "controller.cursor", "10", 2, r2, &r3));
    CHECK(r3 > r2);
    CHECK_STATUS(bus_kv_update(kv, "controller.cursor", "11", 2, r2, NULL), TIDAL_ERR_CONFLICT);
    CHECK_OK(bus_kv_get(kv, "controller.cursor", &v, &n, &rev));
    CHECK(n == 2 && !memcmp(v, "10", 2) && rev == r3);
    free(v);

    /* delete: gone, and create works again */
    CHECK_OK(bus_kv_delete(kv, "controller.cursor"));
    CHECK_STATUS(bus_kv_get(kv, "controller.cursor", NULL, NULL, NULL), TIDAL_ERR_NOT_FOUND);
    CHECK_OK(bus_kv_create(kv, "controller.cursor", "0", 1, NULL));

    /* binding to the bucket again sees the same data */
    bus_kv *kv2 = NULL;
    CHECK_OK(bus_kv_open(F.bus, "TIDAL_job1", &kv2));
    CHECK_OK(bus_kv_get(kv2, "spec", NULL, &n, NULL));
    CHECK(n == 6);
    bus_kv_close(kv2);
    CHECK_STATUS(bus_kv_open(F.bus, "NO_SUCH_BUCKET", &kv2), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "NO_SUCH_BUCKET") != NULL);
    bus_kv_close(kv);
}

/* A watch delivers current values, then the initial-done marker, then changes. */
static void test_watch(void)
{
    bus_kv *kv = NULL;
    bus_kv_cfg c = {.bucket = "TIDAL_watch"};
    CHECK_OK(bus_kv_ensure(F.bus, &c, &kv));
    CHECK_OK(bus_kv_put(kv, "weights.latest", "v1", 2, NULL));
    CHECK_OK(bus_kv_put(kv, "trainer.version", "1", 1, NULL));
    CHECK_OK(bus_kv_put(kv, "other", "x", 1, NULL));

    bus_kv_watcher *w = NULL;
    CHECK_OK(bus_kv_watch(kv, "weights.>", &w));
    bus_kv_event ev;
    CHECK_OK(bus_kv_watch_next(w, 2000, &ev));
    CHECK(ev.kind == BUS_KV_PUT && !strcmp(ev.key, "weights.latest") && ev.len == 2 && !memcmp(ev.value, "v1", 2));
    bus_kv_event_clear(&ev);
    CHECK_OK(bus_kv_watch_next(w, 2000, &ev));
    CHECK(ev.kind == BUS_KV_INITIAL_DONE && ev.key == NULL);
    bus_kv_event_clear(&ev);
    CHECK_STATUS(bus_kv_watch_next(w, 200, &ev), TIDAL_ERR_TIMEOUT);

    CHECK_OK(bus_kv_put(kv, "trainer.version", "2", 1, NULL)); /* not watched */
    CHECK_OK(bus_kv_put(kv, "weights.latest", "v2", 2, NULL));
    CHECK_OK(bus_kv_watch_next(w, 2000, &ev));
    CHECK(ev.kind == BUS_KV_PUT && !strcmp(ev.key, "weights.latest") && !memcmp(ev.value, "v2", 2));
    uint64_t r = ev.revision;
    bus_kv_event_clear(&ev);
    CHECK_OK(bus_kv_delete(kv, "weights.latest"));
    CHECK_OK(bus_kv_watch_next(w, 2000, &ev));
    CHECK(ev.kind == BUS_KV_DELETE && !strcmp(ev.key, "weights.latest") && ev.revision > r);
    bus_kv_event_clear(&ev);
    bus_kv_watch_stop(w);

    /* a watch on an empty key range says "initial done" at once */
    CHECK_OK(bus_kv_watch(kv, "nothing.>", &w));
    CHECK_OK(bus_kv_watch_next(w, 2000, &ev));
    CHECK(ev.kind == BUS_KV_INITIAL_DONE);
    bus_kv_event_clear(&ev);
    bus_kv_watch_stop(w);
    bus_kv_close(kv);
}

/* TTL buckets (worker heartbeats): an entry not refreshed expires. */
static void test_ttl(void)
{
    bus_kv *kv = NULL;
    bus_kv_cfg c = {.bucket = "TIDAL_job1_WORKERS", .ttl_ms = 2000}; /* 1.5 s margin per heartbeat */
    CHECK_OK(bus_kv_ensure(F.bus, &c, &kv));
    CHECK_OK(bus_kv_put(kv, "w-alive", "idle", 4, NULL));
    CHECK_OK(bus_kv_put(kv, "w-dead", "idle", 4, NULL));
    for (int i = 0; i < 8; i++) { /* 4 s: w-alive heartbeats, w-dead does not */
        sleep_ms(500);
        CHECK_OK(bus_kv_put(kv, "w-alive", "generating", 10, NULL));
    }
    CHECK_OK(bus_kv_get(kv, "w-alive", NULL, NULL, NULL));
    CHECK_STATUS(bus_kv_get(kv, "w-dead", NULL, NULL, NULL), TIDAL_ERR_NOT_FOUND);
    /* ensure on the existing bucket binds to it */
    bus_kv *again = NULL;
    CHECK_OK(bus_kv_ensure(F.bus, &c, &again));
    CHECK_OK(bus_kv_get(again, "w-alive", NULL, NULL, NULL));
    bus_kv_close(again);
    bus_kv_close(kv);
}

int main(void)
{
    fixture_start(&F);
    RUN(test_put_get_create_update);
    RUN(test_watch);
    RUN(test_ttl);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
