/* advantage.h - per-sample advantages from a group's scalar rewards (docs/training.md "Rewards and advantages").
 *
 * A group is the G samples of one prompt. Every estimator here is group-relative
 * (no critic): the sample's reward against a baseline made of its group's
 * rewards. Statistics are in double. The advantage is one number per sample;
 * the loss (trainer/loss.h) broadcasts it to the sample's loss-masked tokens.
 *
 *   grpo          A_i = (R_i - mean) / (std + 1e-6), std unbiased (G - 1); G = 1 gives 0
 *   drgrpo        A_i = R_i - mean                     (GRPO with std_norm: false)
 *   rloo          A_i = R_i - mean_{j != i} R_j = G/(G-1) (R_i - mean); G = 1 gives 0
 *   reinforce_pp  A_i = R_i - mean per group, then adv_whiten() over the whole batch
 *
 * Also the DAPO helpers: whether a group has zero reward variance (dynamic
 * sampling drops those) and the overlong reward shaping term.
 */
#ifndef TIDAL_TRAINER_ADVANTAGE_H
#define TIDAL_TRAINER_ADVANTAGE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/status.h"

typedef enum { ADV_GRPO = 0, ADV_DRGRPO, ADV_RLOO, ADV_REINFORCE_PP, ADV__COUNT } adv_kind;

/* The job-spec name of a kind ("grpo", "drgrpo", "rloo", "reinforce_pp");
 * "?" for a value out of range. */
const char *adv_kind_name(adv_kind k);

/* Parse a job-spec name (exact, lower case) into *out. TIDAL_ERR_INVALID
 * naming the value and the accepted names otherwise; *out untouched then. */
tidal_status adv_kind_parse(const char *s, adv_kind *out);

/* Advantages of one group: rewards[g] -> adv[g] (may alias rewards). g >= 1;
 * every reward must be finite (TIDAL_ERR_INVALID naming the sample
 * otherwise, adv untouched). For ADV_REINFORCE_PP this is only the group step
 * (R - mean): whiten the whole batch with adv_whiten() once every group of the
 * step is in. */
tidal_status adv_group(adv_kind kind, const double *rewards, size_t g, double *adv);

/* Whiten adv[n] in place over the whole batch: (a - mean) / sqrt(var + 1e-8)
 * with the population variance (divide by n), so the result has mean 0 and
 * variance 1 (0 everywhere when all are equal). n >= 1; non-finite values are
 * TIDAL_ERR_INVALID naming the index. REINFORCE++-baseline's batch step. */
tidal_status adv_whiten(double *adv, size_t n);

/* Advantages of a whole batch: n_groups groups laid out back to back,
 * group j = rewards[off[j] .. off[j+1]) (off[0] = 0, non-decreasing, each
 * group non-empty), into adv[off[n_groups]] (may alias rewards). Per group
 * adv_group(); for ADV_REINFORCE_PP then adv_whiten() over the batch. Errors
 * as those two, naming the group. */
tidal_status adv_batch(adv_kind kind, const double *rewards, const int *off, int n_groups, double *adv);

/* True when the group's rewards are all exactly equal (std = 0), so every
 * group-relative advantage is 0 and the group carries no signal: DAPO's
 * dynamic sampling drops it. A group of 0 or 1 is zero-variance too. */
bool adv_group_zero_variance(const double *rewards, size_t g);

/* DAPO's overlong shaping term, to add to the reward of a completion of `len`
 * tokens: min(-(len - (l_max - l_buf)) / l_buf * factor, 0) - 0 up to
 * l_max - l_buf tokens, falling linearly to -factor at l_max (and below past
 * it). l_buf <= 0 means no shaping (returns 0). */
double adv_overlong_penalty(double len, double l_max, double l_buf, double factor);

#endif
