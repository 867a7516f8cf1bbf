/* workercheck.c - the per-worker statistic and the quarantine decision (workercheck.h).
 *
 * Workers are few (tens, rarely thousands): a plain array searched by id.
 */
#include "trainer/workercheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct worker_check {
    worker_check_cfg cfg;
    worker_check_row *rows;
    int n, cap;
};

tidal_status worker_check_create(const worker_check_cfg *cfg, worker_check **out)
{
    *out = NULL;
    if (!(cfg->threshold > 0 && isfinite(cfg->threshold)))
        return tidal_fail(TIDAL_ERR_INVALID, "trainer.worker_check.threshold must be > 0 and finite, got %g",
                          cfg->threshold);
    if (cfg->window < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer.worker_check.window must be >= 1, got %d", cfg->window);
    if (cfg->min_tokens < 1)
        return tidal_fail(TIDAL_ERR_INVALID, "trainer.worker_check.min_tokens must be >= 1, got %d", cfg->min_tokens);
    worker_check *wc = calloc(1, sizeof *wc);
    if (!wc) return tidal_fail(TIDAL_ERR_NOMEM, "worker check: out of memory");
    wc->cfg = *cfg;
    *out = wc;
    return TIDAL_OK;
}

void worker_check_free(worker_check *wc)
{
    if (!wc) return;
    free(wc->rows);
    free(wc);
}

static worker_check_row *find(const worker_check *wc, const char *worker)
{
    for (int i = 0; i < wc->n; i++)
        if (!strcmp(wc->rows[i].id, worker)) return &wc->rows[i];
    return NULL;
}

/* worker's row, a new one when it has none. */
static tidal_status row_of(worker_check *wc, const char *worker, worker_check_row **out)
{
    *out = find(wc, worker);
    if (*out) return TIDAL_OK;
    if (wc->n == wc->cap) {
        const int cap = wc->cap ? 2 * wc->cap : 16;
        worker_check_row *r = realloc(wc->rows, (size_t)cap * sizeof *r);
        if (!r) return tidal_fail(TIDAL_ERR_NOMEM, "worker check: out of memory for %d workers", cap);
        wc->rows = r, wc->cap = cap;
    }
    worker_check_row *r = &wc->rows[wc->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->id, sizeof r->id, "%s", worker);
    *out = r;
    return TIDAL_OK;
}

tidal_status worker_check_add(worker_check *wc, const char *worker, const trainer_sample_check *c)
{
    int n = 0;
    for (int d = 0; d < TRAINER_CHECK_VERSIONS; d++) n += c->tokens[d];
    if (n <= 0 || !worker || !*worker) return TIDAL_OK;
    worker_check_row *r = NULL;
    TRY(row_of(wc, worker, &r));
    for (int d = 0; d < TRAINER_CHECK_VERSIONS; d++) {
        r->acc_k3[d] += c->k3_sum[d];
        r->acc_n[d] += (uint64_t)(c->tokens[d] > 0 ? c->tokens[d] : 0);
    }
    return TIDAL_OK;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The baseline of each d for the step in progress: 0 at d = 0; at d > 0 the
 * median of the mean k3 of the workers not quarantined with >= min_tokens
 * there (the mean of the middle two for an even count; NAN: none, then
 * nothing at that d counts). While honest workers are the majority the
 * median is an honest one's. */
static tidal_status baselines(const worker_check *wc, double *base)
{
    double *m = malloc((size_t)(wc->n ? wc->n : 1) * sizeof *m);
    if (!m) return tidal_fail(TIDAL_ERR_NOMEM, "worker check: out of memory");
    base[0] = 0;
    for (int d = 1; d < TRAINER_CHECK_VERSIONS; d++) {
        int k = 0;
        for (int i = 0; i < wc->n; i++) {
            const worker_check_row *r = &wc->rows[i];
            if (!r->quarantined && r->acc_n[d] >= (uint64_t)wc->cfg.min_tokens)
                m[k++] = r->acc_k3[d] / (double)r->acc_n[d];
        }
        qsort(m, (size_t)k, sizeof *m, cmp_double);
        base[d] = !k ? NAN : k % 2 ? m[k / 2] : 0.5 * (m[k / 2 - 1] + m[k / 2]);
    }
    free(m);
    return TIDAL_OK;
}

int worker_check_end_step(worker_check *wc, uint64_t step, int *newly, int cap)
{
    double base[TRAINER_CHECK_VERSIONS];
    if (baselines(wc, base) != TIDAL_OK) { /* out of memory: this step judges nobody at d > 0 */
        tidal_log(TIDAL_LOG_WARN, "%s", tidal_errmsg());
        for (int d = 1; d < TRAINER_CHECK_VERSIONS; d++) base[d] = NAN;
    }
    int got = 0;
    for (int i = 0; i < wc->n; i++) {
        worker_check_row *r = &wc->rows[i];
        double raw = 0, excess = 0;
        uint64_t n = 0, counted = 0;
        for (int d = 0; d < TRAINER_CHECK_VERSIONS; d++) {
            raw += r->acc_k3[d], n += r->acc_n[d];
            if (r->acc_n[d] >= (uint64_t)wc->cfg.min_tokens && !isnan(base[d])) {
                excess += r->acc_k3[d] - base[d] * (double)r->acc_n[d];
                counted += r->acc_n[d];
            }
            r->acc_k3[d] = 0, r->acc_n[d] = 0;
        }
        r->k3_sum += raw, r->tokens += n;
        r->step_raw = n ? raw / (double)n : 0, r->step_n = n;
        r->counted = counted > 0;
        r->step_score = r->counted ? excess / (double)counted : 0;
        if (!r->counted) continue; /* too few to judge: neither counts nor breaks the row */
        r->excess_sum += excess, r->excess_tokens += counted;
        r->last = r->step_score;
        r->steps++;
        r->over = r->last > wc->cfg.threshold ? r->over + 1 : 0;
        if (!wc->cfg.enabled || r->quarantined || r->over < wc->cfg.window) continue;
        r->quarantined = true;
        r->quarantined_at = step;
        snprintf(r->reason, sizeof r->reason,
                 "mismatch: k3 %.3g per token above the honest baseline (threshold %.3g) on %d scored steps in a "
                 "row, at step %llu",
                 r->last, wc->cfg.threshold, r->over, (unsigned long long)step);
        if (got < cap) newly[got++] = i;
    }
    return got;
}

tidal_status worker_check_restore(worker_check *wc, const char *worker, uint64_t step, const char *reason)
{
    if (!worker || !*worker) return TIDAL_OK;
    worker_check_row *r = NULL;
    TRY(row_of(wc, worker, &r));
    r->quarantined = true;
    r->quarantined_at = step;
    snprintf(r->reason, sizeof r->reason, "%s", reason ? reason : "");
    return TIDAL_OK;
}

bool worker_check_is_quarantined(const worker_check *wc, const char *worker)
{
    const worker_check_row *r = worker ? find(wc, worker) : NULL;
    return r && r->quarantined;
}

const worker_check_row *worker_check_rows(const worker_check *wc, int *n)
{
    *n = wc->n;
    return wc->rows;
}

const worker_check_cfg *worker_check_config(const worker_check *wc) { return &wc->cfg; }
