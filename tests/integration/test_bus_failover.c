/* The server is killed -9 and restarted (same port, same store) while a
 * publisher streams into JetStream: the client reconnects by itself, every
 * publish eventually succeeds, no acknowledged message is lost, and retries
 * never store a message twice. */
#include <pthread.h>
#include <stdatomic.h>

#include "check.h"
#include "harness/fixture.h"

#define N_MSGS 3000

static fixture F;
static unsigned char acked[N_MSGS];
static atomic_int n_acked;
static atomic_int n_failed;
static char first_failure[512];

static void *publisher(void *arg)
{
    (void)arg;
    for (int i = 0; i < N_MSGS; i++) {
        char id[32], body[64];
        snprintf(id, sizeof id, "traj-%d", i);
        int n = snprintf(body, sizeof body, "trajectory %d", i);
        /* the caller's retry loop on top of the bus's own: same id, so never twice */
        tidal_status s = TIDAL_ERR_TIMEOUT;
        for (int attempt = 0; attempt < 6 && s != TIDAL_OK; attempt++)
            s = bus_js_publish(F.bus, "tidal.f.traj", body, n, id, 5000, NULL, NULL);
        if (s == TIDAL_OK) {
            acked[i] = 1;
            atomic_fetch_add(&n_acked, 1);
        } else if (atomic_fetch_add(&n_failed, 1) == 0) {
            snprintf(first_failure, sizeof first_failure, "%s", tidal_errmsg());
        }
        if (i % 8 == 0) sleep_ms(1);
    }
    return NULL;
}

static void test_kill9_restart_mid_stream(void)
{
    const char *subjects[] = {"tidal.f.traj"};
    bus_stream_cfg sc = {.name = "TIDAL_f_TRAJ", .subjects = subjects, .n_subjects = 1};
    CHECK_OK(bus_stream_ensure(F.bus, &sc));
    bus_consumer_cfg cc = {.stream = "TIDAL_f_TRAJ", .durable = "trainer", .ack_wait_ms = 30000};
    CHECK_OK(bus_consumer_ensure(F.bus, &cc));

    pthread_t th;
    pthread_create(&th, NULL, publisher, NULL);
    while (atomic_load(&n_acked) < 500) sleep_ms(5);
    CHECK_OK(tidal_server_kill(F.srv));
    int at_kill = atomic_load(&n_acked);
    sleep_ms(700);
    CHECK_MSG(!bus_connected(F.bus), "client still thinks it is connected after kill -9");
    CHECK_OK(tidal_server_restart(F.srv));
    pthread_join(th, NULL);
    CHECK_MSG(atomic_load(&n_failed) == 0, "%d publishes failed through the restart; first: %s",
              atomic_load(&n_failed), first_failure);
    CHECK_MSG(at_kill < N_MSGS, "publisher finished before the kill (%d)", at_kill);
    CHECK(bus_connected(F.bus));

    /* every acknowledged message is in the stream exactly once, in order */
    uint64_t msgs = 0;
    CHECK_OK(bus_stream_state(F.bus, "TIDAL_f_TRAJ", &msgs, NULL));
    CHECK_MSG(msgs == N_MSGS, "stream holds %llu messages, %d were published",
              (unsigned long long)msgs, N_MSGS);
    bus_sub *sub = NULL;
    CHECK_OK(bus_pull_subscribe(F.bus, "TIDAL_f_TRAJ", "trainer", &sub));
    static unsigned char seen[N_MSGS];
    int got = 0, dup = 0, bad = 0;
    bus_msg *batch[256];
    int n = 0;
    while (bus_fetch(sub, 256, 1000, batch, &n) == TIDAL_OK) {
        for (int i = 0; i < n; i++) {
            int v = -1;
            char body[64] = {0};
            memcpy(body, bus_msg_data(batch[i]), (size_t)bus_msg_len(batch[i]) < 63 ? (size_t)bus_msg_len(batch[i]) : 63);
            if (sscanf(body, "trajectory %d", &v) != 1 || v < 0 || v >= N_MSGS) bad++;
            else if (seen[v]++) dup++;
            got++;
            bus_ack(batch[i]);
            bus_msg_destroy(batch[i]);
        }
    }
    bus_unsubscribe(sub);
    int lost = 0;
    for (int i = 0; i < N_MSGS; i++) lost += acked[i] && !seen[i];
    CHECK_MSG(lost == 0 && dup == 0 && bad == 0, "lost %d acknowledged, %d duplicates, %d garbled of %d read",
              lost, dup, bad, got);
}

int main(void)
{
    fixture_start(&F);
    RUN(test_kill9_restart_mid_stream);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
