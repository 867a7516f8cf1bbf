/* envmetrics.c - an environment's own metrics averaged per step (envmetrics.h). */
#include "trainer/envmetrics.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* The slot of metric `name` in m, added when new; -1 when it cannot be kept. */
static int slot(env_metrics *m, const char *name)
{
    const size_t len = strlen(name);
    if (len == 0 || len + 5 > ENV_METRICS_KEY_MAX) return -1;
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->keys[i] + 4, name)) return i;
    if (m->n == ENV_METRICS_MAX) return -1;
    snprintf(m->keys[m->n], sizeof m->keys[m->n], "env.%s", name);
    m->sum[m->n] = 0, m->count[m->n] = 0;
    return m->n++;
}

void env_metrics_of_batch(const buffer_batch *b, env_metrics *m)
{
    m->n = 0, m->left_out = 0;
    for (int g = 0; g < b->n_groups; g++)
        for (int i = 0; i < b->groups[g].n; i++) {
            const Tidal__V1__Trajectory *t = b->groups[g].samples[i];
            for (size_t k = 0; t && k < t->n_reward_components; k++) {
                const Tidal__V1__Trajectory__RewardComponentsEntry *e = t->reward_components[k];
                const int s = e && e->key && isfinite(e->value) ? slot(m, e->key) : -1;
                if (s < 0) {
                    m->left_out++;
                    continue;
                }
                m->sum[s] += e->value, m->count[s]++;
            }
        }
}

int env_metrics_values(const env_metrics *m, job_metric_value *v)
{
    for (int i = 0; i < m->n; i++) v[i] = (job_metric_value){m->keys[i], m->sum[i] / (double)m->count[i]};
    return m->n;
}
