/* Core NATS through bus/: pub/sub, queue groups, request/reply, large messages. */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "check.h"
#include "harness/fixture.h"

static fixture F;

static void test_pub_sub(void)
{
    bus_sub *sub = NULL;
    CHECK_OK(bus_subscribe_sync(F.bus, "t.core.a", NULL, &sub));
    for (int i = 0; i < 100; i++) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "msg-%d", i);
        CHECK_OK(bus_publish(F.bus, "t.core.a", buf, n));
    }
    CHECK_OK(bus_flush(F.bus, 2000));
    for (int i = 0; i < 100; i++) {
        bus_msg *m = NULL;
        CHECK_OK(bus_next(sub, 2000, &m));
        char want[32];
        int n = snprintf(want, sizeof want, "msg-%d", i);
        int ok = bus_msg_len(m) == n && !memcmp(bus_msg_data(m), want, (size_t)n) &&
                 !strcmp(bus_msg_subject(m), "t.core.a");
        bus_msg_destroy(m);
        CHECK_MSG(ok, "message %d out of order or altered", i);
    }
    bus_msg *m = NULL;
    CHECK_STATUS(bus_next(sub, 100, &m), TIDAL_ERR_TIMEOUT);
    CHECK(strstr(tidal_errmsg(), "t.core.a") != NULL);
    bus_unsubscribe(sub);
}

/* Each message of a queue group goes to exactly one member. */
static void test_queue_group_splits(void)
{
    bus_sub *a = NULL, *b = NULL;
    CHECK_OK(bus_subscribe_sync(F.bus, "t.core.q", "workers", &a));
    CHECK_OK(bus_subscribe_sync(F.bus, "t.core.q", "workers", &b));
    const int N = 400;
    for (int i = 0; i < N; i++) CHECK_OK(bus_publish(F.bus, "t.core.q", &i, sizeof i));
    CHECK_OK(bus_flush(F.bus, 2000));
    int got_a = 0, got_b = 0;
    char *seen = calloc(N, 1);
    for (bus_sub *s = a; s; s = (s == a ? b : NULL)) {
        bus_msg *m = NULL;
        while (bus_next(s, 200, &m) == TIDAL_OK) {
            int v;
            memcpy(&v, bus_msg_data(m), sizeof v);
            if (v >= 0 && v < N) seen[v]++;
            if (s == a) got_a++; else got_b++;
            bus_msg_destroy(m);
        }
    }
    int dup = 0, missing = 0;
    for (int i = 0; i < N; i++) { dup += seen[i] > 1; missing += seen[i] == 0; }
    free(seen);
    bus_unsubscribe(a);
    bus_unsubscribe(b);
    CHECK_MSG(got_a + got_b == N && dup == 0 && missing == 0, "a=%d b=%d dup=%d missing=%d", got_a, got_b, dup, missing);
    CHECK_MSG(got_a > 0 && got_b > 0, "queue group did not split: a=%d b=%d", got_a, got_b);
}

static atomic_int responder_calls;

static void echo_upper(tidal_bus *b, bus_msg *m, void *closure)
{
    (void)closure;
    int n = bus_msg_len(m);
    char *out = malloc((size_t)n + 1);
    for (int i = 0; i < n; i++) {
        char c = ((const char *)bus_msg_data(m))[i];
        out[i] = (c >= 'a' && c <= 'z') ? (char)(c - 32) : c;
    }
    bus_respond(b, m, out, n);
    free(out);
    atomic_fetch_add(&responder_calls, 1);
    bus_msg_destroy(m);
}

static void test_request_reply(void)
{
    bus_sub *r1 = NULL, *r2 = NULL;
    CHECK_OK(bus_subscribe(F.bus, "tidal.env.upper", "env.upper", echo_upper, NULL, &r1));
    CHECK_OK(bus_subscribe(F.bus, "tidal.env.upper", "env.upper", echo_upper, NULL, &r2));
    CHECK_OK(bus_flush(F.bus, 2000));
    for (int i = 0; i < 50; i++) {
        bus_msg *reply = NULL;
        CHECK_OK(bus_request(F.bus, "tidal.env.upper", "hello tidal", 11, 2000, &reply));
        int ok = bus_msg_len(reply) == 11 && !memcmp(bus_msg_data(reply), "HELLO TIDAL", 11);
        bus_msg_destroy(reply);
        CHECK(ok);
    }
    CHECK(atomic_load(&responder_calls) == 50);
    bus_unsubscribe(r1);
    bus_unsubscribe(r2);

    /* nobody listening: a clear, immediate "no responders" naming the subject */
    bus_msg *reply = NULL;
    CHECK_STATUS(bus_request(F.bus, "tidal.env.nobody", "x", 1, 2000, &reply), TIDAL_ERR_NOT_FOUND);
    CHECK(strstr(tidal_errmsg(), "tidal.env.nobody") != NULL);
    CHECK(strstr(tidal_errmsg(), "no responders") != NULL);

    /* responding to a message without a reply subject is an error, not a crash */
    bus_sub *s = NULL;
    CHECK_OK(bus_subscribe_sync(F.bus, "t.core.noreply", NULL, &s));
    CHECK_OK(bus_publish(F.bus, "t.core.noreply", "x", 1));
    bus_msg *m = NULL;
    CHECK_OK(bus_next(s, 2000, &m));
    tidal_status st = bus_respond(F.bus, m, "y", 1);
    bus_msg_destroy(m);
    bus_unsubscribe(s);
    CHECK(st == TIDAL_ERR_INVALID);
}

/* Messages near the server's max payload (6 MiB of 8 MiB) flow, and a burst of
 * them (> the client's default 64 MiB pending limit) is not dropped. */
static void test_large_messages_not_dropped(void)
{
    CHECK(bus_max_payload(F.bus) >= (8 << 20) - 1024);
    bus_sub *sub = NULL;
    CHECK_OK(bus_subscribe_sync(F.bus, "t.core.big", NULL, &sub));
    const int n = 6 << 20, count = 16; /* 96 MiB queued before anyone reads */
    unsigned char *buf = malloc((size_t)n);
    for (int i = 0; i < n; i++) buf[i] = (unsigned char)(i * 31 + 7);
    for (int i = 0; i < count; i++) {
        buf[0] = (unsigned char)i;
        CHECK_OK(bus_publish(F.bus, "t.core.big", buf, n));
    }
    CHECK_OK(bus_flush(F.bus, 10000));
    sleep_ms(300);
    for (int i = 0; i < count; i++) {
        bus_msg *m = NULL;
        tidal_status st = bus_next(sub, 5000, &m);
        if (st != TIDAL_OK) { free(buf); bus_unsubscribe(sub); }
        CHECK_MSG(st == TIDAL_OK, "message %d of %d lost: %s", i, count, tidal_errmsg());
        const unsigned char *d = bus_msg_data(m);
        int ok = bus_msg_len(m) == n && d[0] == (unsigned char)i && !memcmp(d + 1, buf + 1, (size_t)n - 1);
        bus_msg_destroy(m);
        if (!ok) { free(buf); bus_unsubscribe(sub); }
        CHECK_MSG(ok, "message %d altered", i);
    }
    free(buf);
    bus_unsubscribe(sub);
}

static void test_connect_errors(void)
{
    tidal_bus *b = NULL;
    bus_opts o = {.urls = "nats://127.0.0.1:1", .connect_timeout_ms = 500};
    CHECK_STATUS(bus_connect(&b, &o), TIDAL_ERR_UNAVAILABLE);
    CHECK(b == NULL);
    CHECK(strstr(tidal_errmsg(), "127.0.0.1:1") != NULL);
    bus_opts empty = {.urls = ""};
    CHECK_STATUS(bus_connect(&b, &empty), TIDAL_ERR_INVALID);
    /* a list with one dead and one live server connects to the live one */
    char urls[256];
    snprintf(urls, sizeof urls, "nats://127.0.0.1:1, %s", tidal_server_url(F.srv));
    bus_opts two = {.urls = urls, .connect_timeout_ms = 500};
    CHECK_OK(bus_connect(&b, &two));
    CHECK(bus_connected(b));
    bus_close(b);
}

/* A handler still running when its subscription goes: bus_unsubscribe returns
 * only after it has returned (its closure may be freed right after). */
typedef struct {
    atomic_int started, finished;
} slow_handler;

static void on_slow(tidal_bus *b, bus_msg *m, void *closure)
{
    (void)b;
    slow_handler *h = closure;
    atomic_store(&h->started, 1);
    usleep(300 * 1000);
    atomic_store(&h->finished, 1);
    bus_msg_destroy(m);
}

static void test_unsubscribe_waits_for_handler(void)
{
    slow_handler h = {0};
    bus_sub *sub = NULL;
    CHECK_OK(bus_subscribe(F.bus, "t.core.slow", NULL, on_slow, &h, &sub));
    CHECK_OK(bus_publish(F.bus, "t.core.slow", "x", 1));
    CHECK_OK(bus_flush(F.bus, 2000));
    for (int i = 0; i < 200 && !atomic_load(&h.started); i++) usleep(10 * 1000);
    CHECK_MSG(atomic_load(&h.started), "the handler never ran");
    bus_unsubscribe(sub);
    CHECK_MSG(atomic_load(&h.finished), "bus_unsubscribe returned while its handler was still running");
}

int main(void)
{
    fixture_start(&F);
    RUN(test_pub_sub);
    RUN(test_queue_group_splits);
    RUN(test_request_reply);
    RUN(test_large_messages_not_dropped);
    RUN(test_connect_errors);
    RUN(test_unsubscribe_waits_for_handler);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
