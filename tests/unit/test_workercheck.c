/* test_workercheck.c - the trainer's per-worker check (trainer/workercheck.h):
 * - the score: k3 against 0 at d = 0, against the median of the workers'
 *   means at d > 0 (honest staleness is the same for every honest worker; the
 *   mean of the middle two for an even count), only where a worker has
 *   min_tokens tokens;
 * - the decision: quarantined after `window` counted steps in a row above the
 *   threshold, not before; a step at or below breaks the row, a step without
 *   enough tokens neither counts nor breaks it; once only; never when off;
 * - a quarantined worker leaves the baselines; restore marks one;
 * - bad configurations are refused naming the key. */
#include <math.h>
#include <string.h>

#include "check.h"
#include "trainer/workercheck.h"

static worker_check *make(bool enabled, double threshold, int window, int min_tokens)
{
    worker_check *wc = NULL;
    const worker_check_cfg c = {.enabled = enabled, .threshold = threshold, .window = window, .min_tokens = min_tokens};
    if (worker_check_create(&c, &wc) != TIDAL_OK) abort();
    return wc;
}

/* One sample of `tokens` tokens d versions behind, each with k3 = k3. */
static tidal_status add(worker_check *wc, const char *who, int d, int tokens, double k3)
{
    trainer_sample_check c;
    memset(&c, 0, sizeof c);
    c.tokens[d] = tokens, c.k3_sum[d] = k3 * tokens;
    return worker_check_add(wc, who, &c);
}

static const worker_check_row *row(const worker_check *wc, const char *who)
{
    int n = 0;
    const worker_check_row *r = worker_check_rows(wc, &n);
    for (int i = 0; i < n; i++)
        if (!strcmp(r[i].id, who)) return &r[i];
    return NULL;
}

static void test_bad_config(void)
{
    worker_check *wc = NULL;
    worker_check_cfg c = {.enabled = true, .threshold = 0, .window = 3, .min_tokens = 1};
    CHECK_STATUS(worker_check_create(&c, &wc), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "trainer.worker_check.threshold") && !wc);
    c.threshold = NAN;
    CHECK_STATUS(worker_check_create(&c, &wc), TIDAL_ERR_INVALID);
    c.threshold = 0.03, c.window = 0;
    CHECK_STATUS(worker_check_create(&c, &wc), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "trainer.worker_check.window"));
    c.window = 1, c.min_tokens = 0;
    CHECK_STATUS(worker_check_create(&c, &wc), TIDAL_ERR_INVALID);
    CHECK(strstr(tidal_errmsg(), "trainer.worker_check.min_tokens"));
}

/* At d > 0 the baseline is the workers' median: honest staleness costs nothing. */
static void test_score_against_baseline(void)
{
    worker_check *wc = make(true, 0.03, 1, 10);
    CHECK_OK(add(wc, "a", 2, 100, 0.20)); /* honest, but the policy moved a lot since */
    CHECK_OK(add(wc, "b", 2, 50, 0.21));
    CHECK_OK(add(wc, "liar", 2, 50, 0.40));
    CHECK_OK(add(wc, "liar", 0, 20, 0.10)); /* at its own version the baseline is 0 */
    int newly[4];
    const int n = worker_check_end_step(wc, 1, newly, 4);
    const worker_check_row *a = row(wc, "a"), *b = row(wc, "b"), *l = row(wc, "liar");
    CHECK(a && b && l);
    CHECK_MSG(fabs(a->step_score + 0.01) < 1e-9 && fabs(b->step_score) < 1e-12, "a %g b %g", a->step_score,
              b->step_score);
    const double want = (50 * 0.19 + 20 * 0.10) / 70; /* (0.40 - 0.21) on 50, 0.10 on 20 */
    CHECK_MSG(fabs(l->step_score - want) < 1e-9, "liar %g, want %g", l->step_score, want);
    CHECK_MSG(fabs(l->step_raw - (50 * 0.40 + 20 * 0.10) / 70) < 1e-9 && l->step_n == 70, "raw %g n %llu",
              l->step_raw, (unsigned long long)l->step_n);
    CHECK_MSG(n == 1 && newly[0] == 2 && l->quarantined && !a->quarantined && !b->quarantined, "newly %d", n);
    CHECK(strstr(l->reason, "mismatch") && l->quarantined_at == 1);
    CHECK(worker_check_is_quarantined(wc, "liar") && !worker_check_is_quarantined(wc, "a") &&
          !worker_check_is_quarantined(wc, "nobody"));
    worker_check_free(wc);
}

/* Alone at d > 0 a worker is its own baseline; too few tokens there do not count. */
static void test_alone_and_few(void)
{
    worker_check *wc = make(true, 0.03, 1, 10);
    CHECK_OK(add(wc, "solo", 1, 100, 5.0));
    CHECK_OK(add(wc, "few", 0, 9, 5.0)); /* below min_tokens */
    int newly[4];
    CHECK(worker_check_end_step(wc, 1, newly, 4) == 0);
    const worker_check_row *s = row(wc, "solo"), *f = row(wc, "few");
    CHECK(s && f && s->counted && s->step_score == 0 && !f->counted && f->steps == 0 && f->tokens == 9);
    CHECK_OK(add(wc, "", 0, 100, 5.0)); /* no id: nothing to add */
    int n = 0;
    worker_check_rows(wc, &n);
    CHECK(n == 2);
    worker_check_free(wc);
}

/* window steps in a row above the threshold; a low step breaks it; a step without tokens does not. */
static void test_window(void)
{
    worker_check *wc = make(true, 0.03, 3, 16);
    int newly[4];
    const double liar[] = {0.1, 0.1, 0.02, 0.1, 0.1, -1, 0.1}; /* -1: no tokens this step */
    int at = -1;
    for (int s = 0; s < 7; s++) {
        CHECK_OK(add(wc, "honest", 0, 100, 1e-6));
        if (liar[s] >= 0) CHECK_OK(add(wc, "liar", 0, 100, liar[s]));
        const int n = worker_check_end_step(wc, (uint64_t)s + 1, newly, 4);
        if (n) {
            CHECK_MSG(at < 0 && n == 1 && !strcmp(worker_check_rows(wc, &(int){0})[newly[0]].id, "liar"), "step %d", s);
            at = s;
        }
    }
    CHECK_MSG(at == 6, "quarantined after step index %d, want 6 (3 in a row: 3, 4, 6)", at);
    const worker_check_row *l = row(wc, "liar");
    CHECK(l->steps == 6 && l->over == 3 && l->quarantined_at == 7);
    /* it stays quarantined and is not announced twice */
    CHECK_OK(add(wc, "liar", 0, 100, 1.0));
    CHECK(worker_check_end_step(wc, 8, newly, 4) == 0 && row(wc, "liar")->quarantined);
    CHECK(!row(wc, "honest")->quarantined && row(wc, "honest")->over == 0);
    worker_check_free(wc);
}

/* At exactly the threshold a step does not count against a worker. */
static void test_threshold_is_strict(void)
{
    worker_check *wc = make(true, 0.5, 2, 1);
    int newly[2];
    for (int s = 0; s < 5; s++) {
        CHECK_OK(add(wc, "w", 0, 4, 0.5));
        CHECK(worker_check_end_step(wc, (uint64_t)s + 1, newly, 2) == 0);
    }
    CHECK(row(wc, "w")->over == 0);
    worker_check_free(wc);
}

/* Off: measured, nobody quarantined. */
static void test_disabled(void)
{
    worker_check *wc = make(false, 0.03, 1, 1);
    int newly[2];
    for (int s = 0; s < 4; s++) {
        CHECK_OK(add(wc, "liar", 0, 10, 3.0));
        CHECK(worker_check_end_step(wc, (uint64_t)s + 1, newly, 2) == 0);
    }
    const worker_check_row *l = row(wc, "liar");
    CHECK(l && !l->quarantined && l->over == 4 && fabs(l->k3_sum - 120.0) < 1e-9 && l->tokens == 40);
    worker_check_free(wc);
}

/* A quarantined worker's tokens no longer set the baseline; restore marks one. */
static void test_quarantined_leave_baseline(void)
{
    worker_check *wc = make(true, 0.03, 1, 1);
    CHECK_OK(worker_check_restore(wc, "old-liar", 40, "mismatch: earlier life"));
    CHECK(worker_check_is_quarantined(wc, "old-liar") && !strcmp(row(wc, "old-liar")->reason, "mismatch: earlier life"));
    CHECK_OK(add(wc, "old-liar", 1, 100, 0.0)); /* a (faked) perfect score would lower the baseline */
    CHECK_OK(add(wc, "a", 1, 100, 0.30));
    CHECK_OK(add(wc, "b", 1, 100, 0.31));
    int newly[2];
    CHECK(worker_check_end_step(wc, 41, newly, 2) == 0);
    CHECK_MSG(fabs(row(wc, "a")->step_score + 0.005) < 1e-9 && !row(wc, "b")->quarantined, "a %g",
              row(wc, "a")->step_score); /* the median of a and b alone: 0.305 */
    worker_check_free(wc);
}

/* Two workers at d > 0: the baseline is their mean, so a liar still scores half its lie. */
static void test_even_count(void)
{
    worker_check *wc = make(true, 0.03, 1, 1);
    CHECK_OK(add(wc, "honest", 1, 100, 0.05));
    CHECK_OK(add(wc, "liar", 1, 100, 0.25));
    int newly[2];
    CHECK(worker_check_end_step(wc, 1, newly, 2) == 1);
    CHECK_MSG(fabs(row(wc, "liar")->step_score - 0.10) < 1e-9 && fabs(row(wc, "honest")->step_score + 0.10) < 1e-9,
              "liar %g honest %g", row(wc, "liar")->step_score, row(wc, "honest")->step_score);
    CHECK(row(wc, "liar")->quarantined && !row(wc, "honest")->quarantined);
    worker_check_free(wc);
}

int main(void)
{
    RUN(test_bad_config);
    RUN(test_score_against_baseline);
    RUN(test_alone_and_few);
    RUN(test_window);
    RUN(test_threshold_is_strict);
    RUN(test_disabled);
    RUN(test_quarantined_leave_baseline);
    RUN(test_even_count);
    return check_summary();
}
