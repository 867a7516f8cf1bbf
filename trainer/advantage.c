/* advantage.c - group-relative advantages and DAPO's reward helpers (see advantage.h). */
#include "trainer/advantage.h"

#include <math.h>
#include <string.h>

static const char *const ADV_NAMES[ADV__COUNT] = {
    [ADV_GRPO] = "grpo", [ADV_DRGRPO] = "drgrpo", [ADV_RLOO] = "rloo", [ADV_REINFORCE_PP] = "reinforce_pp"};

const char *adv_kind_name(adv_kind k)
{
    return (unsigned)k < ADV__COUNT ? ADV_NAMES[k] : "?";
}

tidal_status adv_kind_parse(const char *s, adv_kind *out)
{
    for (int k = 0; s && k < ADV__COUNT; k++)
        if (!strcmp(s, ADV_NAMES[k])) {
            *out = (adv_kind)k;
            return TIDAL_OK;
        }
    return tidal_fail(TIDAL_ERR_INVALID, "advantage: unknown kind \"%s\" (want grpo, drgrpo, rloo or reinforce_pp)",
                      s ? s : "(null)");
}

/* The group mean, after checking every reward is finite. */
static tidal_status group_mean(const double *r, size_t g, const char *what, double *mean)
{
    double s = 0.0;
    for (size_t i = 0; i < g; i++) {
        if (!isfinite(r[i])) return tidal_fail(TIDAL_ERR_INVALID, "advantage: %s %zu is %g (not finite)", what, i, r[i]);
        s += r[i];
    }
    *mean = s / (double)g;
    return TIDAL_OK;
}

tidal_status adv_group(adv_kind kind, const double *rewards, size_t g, double *adv)
{
    if ((unsigned)kind >= ADV__COUNT) return tidal_fail(TIDAL_ERR_INVALID, "advantage: kind %d out of range", (int)kind);
    if (g == 0) return tidal_fail(TIDAL_ERR_INVALID, "advantage: empty group (%s)", adv_kind_name(kind));
    double mean = 0.0;
    TRY(group_mean(rewards, g, "reward of sample", &mean));
    if (g == 1) { /* no baseline but itself: R - mean = 0 for every kind */
        adv[0] = 0.0;
        return TIDAL_OK;
    }
    double scale = 1.0;
    if (kind == ADV_GRPO) {
        double ss = 0.0;
        for (size_t i = 0; i < g; i++) ss += (rewards[i] - mean) * (rewards[i] - mean);
        scale = 1.0 / (sqrt(ss / (double)(g - 1)) + 1e-6);
    } else if (kind == ADV_RLOO) {
        scale = (double)g / (double)(g - 1); /* R_i - mean of the others */
    }
    for (size_t i = 0; i < g; i++) adv[i] = (rewards[i] - mean) * scale;
    return TIDAL_OK;
}

tidal_status adv_whiten(double *adv, size_t n)
{
    if (n == 0) return tidal_fail(TIDAL_ERR_INVALID, "advantage: whiten an empty batch");
    double mean = 0.0;
    TRY(group_mean(adv, n, "advantage of sample", &mean));
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (adv[i] - mean) * (adv[i] - mean);
    double inv = 1.0 / sqrt(ss / (double)n + 1e-8);
    for (size_t i = 0; i < n; i++) adv[i] = (adv[i] - mean) * inv;
    return TIDAL_OK;
}

tidal_status adv_batch(adv_kind kind, const double *rewards, const int *off, int n_groups, double *adv)
{
    if (n_groups < 1 || off[0] != 0) return tidal_fail(TIDAL_ERR_INVALID, "advantage: a batch of %d groups", n_groups);
    for (int j = 0; j < n_groups; j++) {
        if (off[j + 1] <= off[j])
            return tidal_fail(TIDAL_ERR_INVALID, "advantage: group %d is empty (offsets %d, %d)", j, off[j], off[j + 1]);
        TRY_WRAP(adv_group(kind, rewards + off[j], (size_t)(off[j + 1] - off[j]), adv + off[j]), "group %d", j);
    }
    return kind == ADV_REINFORCE_PP ? adv_whiten(adv, (size_t)off[n_groups]) : TIDAL_OK;
}

bool adv_group_zero_variance(const double *rewards, size_t g)
{
    for (size_t i = 1; i < g; i++)
        if (rewards[i] != rewards[0]) return false;
    return true;
}

double adv_overlong_penalty(double len, double l_max, double l_buf, double factor)
{
    if (!(l_buf > 0.0)) return 0.0;
    double p = -(len - (l_max - l_buf)) / l_buf * factor;
    return p < 0.0 ? p : 0.0;
}
