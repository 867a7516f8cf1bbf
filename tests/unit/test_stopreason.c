/* test_stopreason.c - the stop reason of a job whose data ran out names
 * where every group went, with the spec key behind each drop, and what to
 * change when one cause took most of them (controller/stopreason.h). */
#include <jansson.h>
#include <string.h>

#include "check.h"
#include "controller/stopreason.h"

static void reason(const char *dropped_json, uint64_t dispatched, uint64_t trained, uint64_t failed, char *out,
                   size_t n)
{
    json_t *d = dropped_json ? json_loads(dropped_json, 0, NULL) : NULL;
    stop_counts c = {.dispatched = dispatched, .trained = trained, .failed = failed, .dropped = d, .version = 0,
                     .steps = 50, .groups_per_step = 8, .epochs = 1};
    stop_reason_exhausted(&c, out, n);
    json_decref(d);
}

/* The case a user met: an untrained model, filter_zero_variance on, every group dropped. */
static void test_all_zero_variance(void)
{
    char r[1024];
    reason("{\"zero_variance\": 192, \"stale\": 0, \"capacity\": 0}", 192, 0, 0, r, sizeof r);
    CHECK_MSG(strstr(r, "the data is exhausted after 192 groups at v0 of 50 steps: 0 trained, 192 dropped as "
                        "zero-variance (buffer.filter_zero_variance), 0 failed;"), "%s", r);
    CHECK_MSG(strstr(r, "set buffer.filter_zero_variance: false"), "%s", r);
    CHECK_MSG(!strstr(r, "stale") && !strstr(r, "in flight"), "zero counts are not listed: %s", r);
}

static void test_mostly_failed(void)
{
    char r[1024];
    reason("{\"zero_variance\": 3, \"stale\": 2}", 40, 5, 29, r, sizeof r);
    CHECK_MSG(strstr(r, "5 trained, 3 dropped as zero-variance (buffer.filter_zero_variance), 2 dropped as stale "
                        "(buffer.max_staleness), 29 failed, 1 in flight"), "%s", r);
    CHECK_MSG(strstr(r, "most groups failed") && !strstr(r, "filter_zero_variance: false"), "%s", r);
}

static void test_mostly_trained(void)
{
    char r[1024];
    reason("{}", 100, 96, 4, r, sizeof r);
    CHECK_MSG(strstr(r, "96 trained, 4 failed; the data holds fewer groups than trainer.steps x "
                        "trainer.groups_per_step = 400: raise data.epochs (1)"), "%s", r);
}

/* No single cause above half: the counts, no advice; a reason the table does not know still counts. */
static void test_mixed_and_unknown(void)
{
    char r[1024];
    reason("{\"zero_variance\": 30, \"novel\": 5}", 100, 40, 25, r, sizeof r);
    CHECK_MSG(strstr(r, "40 trained, 30 dropped as zero-variance (buffer.filter_zero_variance), 5 dropped as novel, "
                        "25 failed") && !strchr(r, ';'), "%s", r);
    reason(NULL, 0, 0, 0, r, sizeof r); /* no counts at all */
    CHECK_MSG(strstr(r, "after 0 groups at v0 of 50 steps: 0 trained, 0 failed") && !strchr(r, ';'), "%s", r);
}

/* A short buffer gets a cut, terminated text. */
static void test_short_buffer(void)
{
    char r[24];
    memset(r, 'x', sizeof r);
    reason("{\"zero_variance\": 192}", 192, 0, 0, r, sizeof r);
    CHECK(strlen(r) == sizeof r - 1 && !strncmp(r, "the data is exhausted", 21));
    char one[1] = {'x'};
    reason(NULL, 1, 1, 0, one, sizeof one);
    CHECK(one[0] == '\0');
}

int main(void)
{
    RUN(test_all_zero_variance);
    RUN(test_mostly_failed);
    RUN(test_mostly_trained);
    RUN(test_mixed_and_unknown);
    RUN(test_short_buffer);
    return check_summary();
}
