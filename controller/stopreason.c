/* stopreason.c - why a job ended short (stopreason.h). */
#include "controller/stopreason.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* A drop reason of KV trainer.groups in words, with the key that governs it. */
static const struct {
    const char *reason, *words;
} DROPS[] = {
    {"zero_variance", "dropped as zero-variance (buffer.filter_zero_variance)"},
    {"stale", "dropped as stale (buffer.max_staleness)"},
    {"capacity", "dropped for room (buffer.capacity)"},
    {"incomplete", "dropped incomplete"},
    {"quarantined", "dropped from quarantined workers (trainer.worker_check)"},
};
#define N_DROPS (sizeof DROPS / sizeof DROPS[0])

uint64_t stop_counts_dropped(const stop_counts *c, const char *reason)
{
    const json_t *v = c->dropped ? json_object_get(c->dropped, reason) : NULL;
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

/* Append to out[*at, n) like snprintf; stops quietly at the end. */
static void add(char *out, size_t n, size_t *at, const char *fmt, ...)
{
    if (*at >= n) return;
    va_list ap;
    va_start(ap, fmt);
    const int w = vsnprintf(out + *at, n - *at, fmt, ap);
    va_end(ap);
    if (w > 0) *at = *at + (size_t)w < n ? *at + (size_t)w : n - 1;
}

void stop_reason_exhausted(const stop_counts *c, char *out, size_t n)
{
    if (!n) return;
    out[0] = '\0';
    size_t at = 0;
    add(out, n, &at, "the data is exhausted after %llu groups at v%llu of %d steps: %llu trained",
        (unsigned long long)c->dispatched, (unsigned long long)c->version, c->steps, (unsigned long long)c->trained);
    uint64_t accounted = c->trained + c->failed;
    const char *most = NULL; /* the drop reason (or "failed") that took the most groups */
    uint64_t most_n = 0;
    for (size_t i = 0; i < N_DROPS; i++) {
        const uint64_t d = stop_counts_dropped(c, DROPS[i].reason);
        accounted += d;
        if (d) add(out, n, &at, ", %llu %s", (unsigned long long)d, DROPS[i].words);
        if (d > most_n) most = DROPS[i].reason, most_n = d;
    }
    /* a reason this table does not know (a newer trainer) still counts */
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)c->dropped, k, v) {
        bool known = false;
        for (size_t i = 0; i < N_DROPS && !known; i++) known = !strcmp(k, DROPS[i].reason);
        const uint64_t d = stop_counts_dropped(c, k);
        if (known || !d) continue;
        accounted += d;
        add(out, n, &at, ", %llu dropped as %s", (unsigned long long)d, k);
    }
    add(out, n, &at, ", %llu failed", (unsigned long long)c->failed);
    if (c->failed > most_n) most = "failed", most_n = c->failed;
    if (c->dispatched > accounted)
        add(out, n, &at, ", %llu in flight", (unsigned long long)(c->dispatched - accounted));
    /* what to change, when one cause took most (more than half) of the groups */
    if (!most || 2 * most_n <= c->dispatched) most = 2 * c->trained > c->dispatched ? "trained" : NULL;
    if (!most) return;
    if (!strcmp(most, "zero_variance"))
        add(out, n, &at, "; most groups scored every sample the same (the model solves none or all of these tasks, "
                         "as an untrained one does): set buffer.filter_zero_variance: false, raise data.epochs (%d), "
                         "or start from a model that solves some of them", c->epochs);
    else if (!strcmp(most, "failed"))
        add(out, n, &at, "; most groups failed: the env errored or timed out (the workers' logs say why; env.timeout_ms)");
    else if (!strcmp(most, "stale"))
        add(out, n, &at, "; most groups were too old when trained: raise buffer.max_staleness or add trainer capacity");
    else if (!strcmp(most, "capacity"))
        add(out, n, &at, "; most groups found the buffer full: raise buffer.capacity");
    else if (!strcmp(most, "quarantined"))
        add(out, n, &at, "; most groups came from quarantined workers (trainer.worker_check; the trainer's log says why)");
    else if (!strcmp(most, "trained"))
        add(out, n, &at, "; the data holds fewer groups than trainer.steps x trainer.groups_per_step = %llu: raise "
                         "data.epochs (%d) or lower trainer.steps",
            (unsigned long long)c->steps * (unsigned long long)c->groups_per_step, c->epochs);
}
