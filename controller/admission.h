/* admission.h - which prompts the controller may dispatch, and with what
 * min_version (docs/design.md "Versions and staleness").
 *
 * Groups are numbered in dispatch order, n = 0, 1, 2, ...; with B groups per
 * training step, group n is expected to feed the step taken at trainer
 * version d = floor(n / B) (the step that produces version d + 1). The
 * trainer at version v trains tokens no older than v - K, so a group that
 * feeds version d is generated with weights of at least
 *     min_version = max(0, d - K),
 * and at trainer version v the controller keeps at most
 *     (K + v + 1) x B
 * groups dispatched and not dropped: K = 0 is synchronous on-policy training
 * (the next step's groups only), K > 0 lets generation run K steps ahead.
 * Dropped groups (stale, failed, ...) free their places, so the dispatcher
 * refills them with new groups (whose d is then later).
 */
#ifndef TIDAL_CONTROLLER_ADMISSION_H
#define TIDAL_CONTROLLER_ADMISSION_H

#include <stdint.h>

/* The trainer version group n feeds: floor(n / B). B >= 1. */
uint64_t admission_feeds(uint64_t n, uint32_t groups_per_step);

/* min_version for a group that feeds version d: max(0, d - K). */
uint64_t admission_min_version(uint64_t d, uint32_t max_staleness);

/* How many more groups may be dispatched now: (K + v + 1) x B minus those
 * dispatched and not dropped (never negative). */
uint64_t admission_room(uint64_t version, uint32_t max_staleness, uint32_t groups_per_step, uint64_t dispatched,
                        uint64_t dropped);

#endif
