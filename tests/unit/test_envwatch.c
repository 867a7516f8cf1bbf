/* test_envwatch.c - the controller's watch on the job's env
 * (controller/envwatch.h), on a simulated clock: a failing env is reported
 * at once and then every ENV_WATCH_REPORT_MS (not on every update, nor on
 * every flip between failing and answering), its alert
 * names the env, the workers and the failure; a failure on some workers
 * never stops the job; one on every worker stops it after
 * env.missing_timeout_s with a message naming the env, the key and the
 * failure; a recovery clears the alert and restarts the clock; 0 = never
 * stop. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "controller/envwatch.h"

#define NR "env strings: no responders on tidal.env.strings (no instance of the env is running)"

static void test_failing_everywhere_stops_after_the_bound(void)
{
    env_watch w;
    env_watch_init(&w, "strings", 30);
    env_watch_worker rows[2] = {{.id = "w0", .active = true}, {.id = "w1", .active = true}};
    CHECK_OK(env_watch_update(&w, rows, 2, 1000));
    CHECK(w.alert[0] == '\0' && w.reports == 0 && !env_watch_all_failing(&w));
    /* both fail from t = 2 s */
    rows[0] = (env_watch_worker){.id = "w0", .active = true, .failing = true, .failed = 3, .error = NR};
    rows[1] = (env_watch_worker){.id = "w1", .active = true, .failing = true, .failed = 2, .error = NR};
    CHECK_OK(env_watch_update(&w, rows, 2, 2000));
    CHECK_MSG(w.reports == 1, "not reported at once: %llu reports", (unsigned long long)w.reports);
    CHECK_MSG(strstr(w.alert, "env strings failing on 2 of 2 workers") && strstr(w.alert, "tidal.env.strings") &&
              strstr(w.alert, "5 samples failed"), "alert: %s", w.alert);
    CHECK(env_watch_all_failing(&w));
    /* updates every 20 ms for 29.9 s: reports at 2, 12, 22 s only; no stop yet */
    tidal_status st = TIDAL_OK;
    for (double t = 2020; t < 31900 && st == TIDAL_OK; t += 20) st = env_watch_update(&w, rows, 2, t);
    CHECK_OK(st);
    CHECK_MSG(w.reports == 3, "%llu reports in 30 s, want 3 (at once, then every 10 s)", (unsigned long long)w.reports);
    st = env_watch_update(&w, rows, 2, 32000);
    CHECK_STATUS(st, TIDAL_ERR_TIMEOUT);
    CHECK_MSG(strstr(tidal_errmsg(), "env strings failed on every worker for 30 s") &&
              strstr(tidal_errmsg(), "env.missing_timeout_s") && strstr(tidal_errmsg(), "tidal.env.strings"),
              "stop reason: %s", tidal_errmsg());
}

static void test_some_workers_failing_never_stop(void)
{
    env_watch w;
    env_watch_init(&w, "strings", 5);
    env_watch_worker rows[2] = {{.id = "w0", .active = true, .failing = true, .failed = 1, .error = NR},
                                {.id = "w1", .active = true}};
    tidal_status st = TIDAL_OK;
    for (double t = 0; t < 60000 && st == TIDAL_OK; t += 100) st = env_watch_update(&w, rows, 2, t);
    CHECK_OK(st);
    CHECK(!env_watch_all_failing(&w) && strstr(w.alert, "failing on 1 of 2 workers"));
    /* a worker that never called the env does not count as answering */
    rows[1].active = false;
    CHECK_OK(env_watch_update(&w, rows, 2, 60000));
    CHECK(env_watch_all_failing(&w) && strstr(w.alert, "failing on 1 of 1 workers"));
}

static void test_recovery_clears_and_restarts_the_clock(void)
{
    env_watch w;
    env_watch_init(&w, "e", 10);
    env_watch_worker r = {.id = "w0", .active = true, .failing = true, .failed = 4, .error = "env e: broken"};
    CHECK_OK(env_watch_update(&w, &r, 1, 0));
    CHECK_OK(env_watch_update(&w, &r, 1, 9000));
    r.failing = false, r.error = "";
    CHECK_OK(env_watch_update(&w, &r, 1, 9500));
    CHECK(w.alert[0] == '\0' && !env_watch_all_failing(&w) && !w.reported);
    /* failing again 9.8 s after the last warning: the alert at once, the warning once 10 s are up */
    r.failing = true, r.failed = 6, r.error = "env e: broken";
    CHECK_OK(env_watch_update(&w, &r, 1, 9800));
    CHECK(w.reports == 1 && strstr(w.alert, "(2 samples failed)"));
    CHECK_OK(env_watch_update(&w, &r, 1, 10000));
    CHECK(w.reports == 2);
    CHECK_OK(env_watch_update(&w, &r, 1, 19700)); /* 9.9 s of this run: the clock restarted */
    CHECK_STATUS(env_watch_update(&w, &r, 1, 19800), TIDAL_ERR_TIMEOUT);
    /* the failing workers vanish (died, left): no "answers again", and the next failure is no news */
    CHECK_OK(env_watch_update(&w, NULL, 0, 20000));
    CHECK(w.reported && w.alert[0] == '\0' && !env_watch_all_failing(&w));
    /* no workers at all: nothing fails, nothing stops */
    env_watch_init(&w, "e", 1);
    CHECK_OK(env_watch_update(&w, NULL, 0, 0));
    CHECK_OK(env_watch_update(&w, NULL, 0, 100000));
}

static void test_zero_waits_forever(void)
{
    tidal_log_set_level(TIDAL_LOG_ERROR); /* 360 warnings: counted, not printed */
    env_watch w;
    env_watch_init(&w, "e", 0);
    env_watch_worker r = {.id = "w0", .active = true, .failing = true, .failed = 1, .error = NR};
    tidal_status st = TIDAL_OK;
    for (double t = 0; t < 3600e3 && st == TIDAL_OK; t += 1000) st = env_watch_update(&w, &r, 1, t);
    CHECK_OK(st);
    CHECK_MSG(w.reports == 360, "%llu reports in an hour, want 360", (unsigned long long)w.reports);
}

int main(void)
{
    RUN(test_failing_everywhere_stops_after_the_bound);
    RUN(test_some_workers_failing_never_stop);
    RUN(test_recovery_clears_and_restarts_the_clock);
    RUN(test_zero_waits_forever);
    return check_summary();
}
