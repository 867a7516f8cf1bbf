/* Authorization with deploy/nats/auth.conf: wrong credentials are refused at
 * connect, and a user without publish permission on a subject gets an error
 * that says so and names the subject - for core and JetStream publishes. */
#include "check.h"
#include "harness/fixture.h"

static fixture F;
static char conf[1024];

static tidal_status connect_as(const char *user, const char *pass, tidal_bus **b)
{
    bus_opts o = {.urls = tidal_server_url(F.srv), .user = user, .password = pass,
                  .connect_timeout_ms = 2000, .js_timeout_ms = 1500};
    return bus_connect(b, &o);
}

static void test_wrong_password_refused(void)
{
    tidal_bus *b = NULL;
    CHECK_STATUS(connect_as("rollout", "wrong", &b), TIDAL_ERR_PERMISSION);
    CHECK(b == NULL);
    CHECK_MSG(strstr(tidal_errmsg(), "uthoriz") != NULL, "%s", tidal_errmsg());
    CHECK_STATUS(connect_as(NULL, NULL, &b), TIDAL_ERR_PERMISSION);
}

static void test_publish_permission_denied(void)
{
    tidal_bus *trainer = NULL, *rollout = NULL;
    CHECK_OK(connect_as("trainer", "trainer-secret", &trainer));
    CHECK_OK(connect_as("rollout", "rollout-secret", &rollout));

    /* the trainer may create the job's weights and trajectory streams */
    const char *wsubj[] = {"tidal.j.weights.>"};
    bus_stream_cfg ws = {.name = "TIDAL_j_WEIGHTS", .subjects = wsubj, .n_subjects = 1};
    CHECK_OK(bus_stream_ensure(trainer, &ws));
    const char *tsubj[] = {"tidal.j.traj"};
    bus_stream_cfg ts = {.name = "TIDAL_j_TRAJ", .subjects = tsubj, .n_subjects = 1};
    CHECK_OK(bus_stream_ensure(trainer, &ts));
    CHECK_OK(bus_js_publish(trainer, "tidal.j.weights.1.m", "m", 1, NULL, 0, NULL, NULL));

    /* a rollout worker may publish trajectories ... */
    CHECK_OK(bus_js_publish(rollout, "tidal.j.traj", "t", 1, "t-1", 0, NULL, NULL));
    /* ... but not weights: JetStream publish */
    tidal_status s = bus_js_publish(rollout, "tidal.j.weights.2.m", "evil", 4, NULL, 1500, NULL, NULL);
    CHECK_STATUS(s, TIDAL_ERR_PERMISSION);
    CHECK_MSG(strstr(tidal_errmsg(), "tidal.j.weights.2.m") && strstr(tidal_errmsg(), "ermission"), "%s", tidal_errmsg());
    /* ... nor prompts: core publish, reported by the next flush */
    CHECK_OK(bus_publish(rollout, "tidal.j.prompts", "p", 1));
    CHECK_STATUS(bus_flush(rollout, 2000), TIDAL_ERR_PERMISSION);
    CHECK_MSG(strstr(tidal_errmsg(), "tidal.j.prompts") != NULL, "%s", tidal_errmsg());
    /* reported once; the connection stays usable */
    CHECK_OK(bus_flush(rollout, 2000));
    CHECK_OK(bus_js_publish(rollout, "tidal.j.traj", "t", 1, "t-2", 0, NULL, NULL));
    uint64_t msgs = 0;
    CHECK_OK(bus_stream_state(trainer, "TIDAL_j_WEIGHTS", &msgs, NULL));
    CHECK_MSG(msgs == 1, "weights stream holds %llu messages", (unsigned long long)msgs);
    bus_close(rollout);
    bus_close(trainer);
}

int main(void)
{
    const char *src = getenv("TIDAL_SOURCE_DIR");
    snprintf(conf, sizeof conf, "%s/deploy/nats/auth.conf", src ? src : ".");
    fixture_start_cfg(&F, conf, 0);
    RUN(test_wrong_password_refused);
    RUN(test_publish_permission_denied);
    fixture_stop(&F);
    nats_Close();
    return check_summary();
}
