/* test_envmetrics.c - an env's own metrics into the trainer's step metrics
 * (trainer/envmetrics.h): decoded trajectories as the worker encodes them
 * (reward_components from the env's last answer), a batch of two groups:
 * each metric's mean over the samples that report it, named env.<name>;
 * non-finite values, empty and too long names left out and counted; at most
 * ENV_METRICS_MAX distinct names. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "proto/codec.h"
#include "trainer/envmetrics.h"

/* A trajectory with components names[i] = values[i] (n of them), through the
 * wire and back, as the trainer receives it. */
static Tidal__V1__Trajectory *traj(const char *const *names, const double *values, int n)
{
    Tidal__V1__Trajectory t = TIDAL__V1__TRAJECTORY__INIT;
    Tidal__V1__Trajectory__RewardComponentsEntry e[80], *ep[80];
    for (int i = 0; i < n; i++) {
        e[i] = (Tidal__V1__Trajectory__RewardComponentsEntry)TIDAL__V1__TRAJECTORY__REWARD_COMPONENTS_ENTRY__INIT;
        e[i].key = (char *)names[i], e[i].value = values[i], ep[i] = &e[i];
    }
    t.n_reward_components = (size_t)n, t.reward_components = ep;
    void *buf = NULL;
    size_t len = 0;
    Tidal__V1__Trajectory *out = NULL;
    if (codec_encode(&t.base, &buf, &len) == TIDAL_OK)
        out = tidal__v1__trajectory__unpack(NULL, len, buf); /* unvalidated: the module must cope with anything */
    free(buf);
    return out;
}

static double value_of(const job_metric_value *v, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(v[i].key, key)) return v[i].value;
    return NAN;
}

static void test_means_per_step(void)
{
    const char *ec[] = {"exact", "correct"}, *e[] = {"exact"}, *odd[] = {"exact", "", "format"};
    const double v1[] = {1, 1}, v0[] = {0, 1}, vx[] = {1}, vodd[] = {NAN, 5, 0.5};
    Tidal__V1__Trajectory *g1[3] = {traj(ec, v1, 2), traj(ec, v0, 2), traj(NULL, NULL, 0)};
    Tidal__V1__Trajectory *g2[2] = {traj(e, vx, 1), traj(odd, vodd, 3)};
    buffer_group groups[2] = {{.n = 3, .samples = g1}, {.n = 2, .samples = g2}};
    buffer_batch b = {.n_groups = 2, .groups = groups};
    env_metrics m;
    env_metrics_of_batch(&b, &m);
    job_metric_value v[ENV_METRICS_MAX];
    const int n = env_metrics_values(&m, v);
    CHECK_MSG(n == 3, "%d metrics, want exact, correct, format", n);
    /* exact: 1, 0, 1 reported (the NaN is left out): 2/3; correct: 1, 1; format: 0.5 once */
    CHECK_MSG(fabs(value_of(v, n, "env.exact") - 2.0 / 3) < 1e-12, "env.exact %g", value_of(v, n, "env.exact"));
    CHECK(value_of(v, n, "env.correct") == 1.0 && value_of(v, n, "env.format") == 0.5);
    CHECK_MSG(m.left_out == 2, "left out %llu, want 2 (a NaN and an empty name)", (unsigned long long)m.left_out);
    for (int g = 0; g < 2; g++)
        for (int i = 0; i < groups[g].n; i++) tidal__v1__trajectory__free_unpacked(groups[g].samples[i], NULL);
}

static void test_bounds(void)
{
    char names[80][80];
    const char *np[80];
    double vals[80];
    for (int i = 0; i < 80; i++) {
        snprintf(names[i], sizeof names[i], "m%02d", i);
        np[i] = names[i], vals[i] = i;
    }
    memset(names[79], 'x', 70), names[79][70] = '\0'; /* longer than 63 bytes */
    Tidal__V1__Trajectory *s[1] = {traj(np, vals, 80)};
    buffer_group g = {.n = 1, .samples = s};
    buffer_batch b = {.n_groups = 1, .groups = &g};
    env_metrics m;
    env_metrics_of_batch(&b, &m);
    CHECK(m.n == ENV_METRICS_MAX && m.left_out == 80 - ENV_METRICS_MAX);
    CHECK(!strcmp(m.keys[0], "env.m00") && m.sum[5] == 5 && m.count[5] == 1);
    /* an empty batch: nothing */
    buffer_batch none = {0};
    env_metrics_of_batch(&none, &m);
    CHECK(m.n == 0 && m.left_out == 0);
    tidal__v1__trajectory__free_unpacked(s[0], NULL);
}

int main(void)
{
    RUN(test_means_per_step);
    RUN(test_bounds);
    return check_summary();
}
