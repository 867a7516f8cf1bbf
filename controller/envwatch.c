/* envwatch.c - the controller's watch on the job's environment (envwatch.h). */
#include "controller/envwatch.h"

#include <stdio.h>
#include <string.h>

void env_watch_init(env_watch *w, const char *env, int missing_timeout_s)
{
    memset(w, 0, sizeof *w);
    snprintf(w->env, sizeof w->env, "%s", env ? env : "");
    w->missing_timeout_s = missing_timeout_s > 0 ? missing_timeout_s : 0;
}

bool env_watch_all_failing(const env_watch *w) { return w->all_since_ms > 0; }

/* The counts of the rows into w. */
static void tally(env_watch *w, const env_watch_worker *rows, int n)
{
    w->failing_workers = w->active_workers = 0;
    w->failed = 0;
    w->error[0] = '\0';
    for (int i = 0; i < n; i++) {
        const env_watch_worker *r = &rows[i];
        w->failed += r->failed;
        w->active_workers += r->active || r->failing;
        if (!r->failing) continue;
        if (!w->failing_workers && r->error) snprintf(w->error, sizeof w->error, "%s", r->error);
        w->failing_workers++;
    }
}

tidal_status env_watch_update(env_watch *w, const env_watch_worker *rows, int n, double now_ms)
{
    tally(w, rows, n);
    if (w->active_workers == 0) { /* nobody calls the env (no live worker): nothing to tell, nothing to stop */
        w->all_since_ms = 0;
        w->alert[0] = '\0';
        return TIDAL_OK;
    }
    if (w->failing_workers == 0) {
        if (w->reported)
            tidal_log(TIDAL_LOG_INFO, "controller: env %s answers again on every worker (it failed for %.0f s: %llu "
                      "samples failed)", w->env, (now_ms - w->failing_since_ms) / 1e3,
                      (unsigned long long)(w->failed > w->failed_at_start ? w->failed - w->failed_at_start : 0));
        w->reported = false;
        w->failed_before = w->failed;
        w->failing_since_ms = w->all_since_ms = 0;
        w->alert[0] = '\0';
        return TIDAL_OK;
    }
    if (w->failing_since_ms == 0) w->failing_since_ms = now_ms, w->failed_at_start = w->failed_before;
    const bool all = w->failing_workers == w->active_workers;
    if (!all) w->all_since_ms = 0;
    else if (w->all_since_ms == 0) w->all_since_ms = now_ms;
    const double for_s = (now_ms - w->failing_since_ms) / 1e3;
    /* a worker gone takes its count along: never below 0 */
    const unsigned long long lost =
        (unsigned long long)(w->failed > w->failed_at_start ? w->failed - w->failed_at_start : 0);
    snprintf(w->alert, sizeof w->alert, "env %s failing on %d of %d workers for %.0f s (%llu samples failed): %s",
             w->env, w->failing_workers, w->active_workers, for_s, lost, w->error[0] ? w->error : "(no message)");
    /* at once, then every ENV_WATCH_REPORT_MS while it lasts; never more often */
    if (!w->ever_reported || now_ms - w->last_report_ms >= ENV_WATCH_REPORT_MS) {
        char bound[160] = "the job waits for it (env.missing_timeout_s: 0)";
        if (w->missing_timeout_s > 0)
            snprintf(bound, sizeof bound, "the job stops if it fails on every worker for %d s (env.missing_timeout_s)",
                     w->missing_timeout_s);
        tidal_log(TIDAL_LOG_WARN, "controller: %s; those samples are not trained or scored, %s", w->alert, bound);
        w->reported = w->ever_reported = true;
        w->last_report_ms = now_ms;
        w->reports++;
    }
    if (all && w->missing_timeout_s > 0 && now_ms - w->all_since_ms >= 1e3 * w->missing_timeout_s)
        return tidal_fail(TIDAL_ERR_TIMEOUT,
                          "controller: env %s failed on every worker for %d s (env.missing_timeout_s; %llu samples "
                          "failed): %s; stopping the job", w->env, w->missing_timeout_s, lost,
                          w->error[0] ? w->error : "(no message)");
    return TIDAL_OK;
}
