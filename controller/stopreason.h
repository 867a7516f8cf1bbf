/* stopreason.h - why a job ended short, in words a user can act on.
 *
 * When the data runs out before trainer.steps, "the data is exhausted" alone
 * hides the cause: with buffer.filter_zero_variance an untrained model's
 * groups (every sample scored the same) are all dropped, and the data is
 * used up without a step. So the reason names where every dispatched group
 * went - trained, dropped by each reason with the spec key behind it, failed,
 * still in flight - and when most went one way, what to change. The same
 * text is the controller's error (tidal run prints it) and summary.json's
 * stop_reason.
 */
#ifndef TIDAL_CONTROLLER_STOPREASON_H
#define TIDAL_CONTROLLER_STOPREASON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* The groups of a job so far, as the controller knows them (the trainer's
 * counts in KV trainer.groups and the controller's cursor). */
typedef struct stop_counts {
    uint64_t dispatched;   /* training groups published */
    uint64_t trained;      /* groups trained at least once */
    uint64_t failed;       /* groups with a failed sample (env errors, timeouts) */
    const json_t *dropped; /* reason -> groups (zero_variance, stale, capacity, ...); NULL: none */
    uint64_t version;      /* steps trained */
    int steps;             /* trainer.steps */
    int groups_per_step;   /* trainer.groups_per_step */
    int epochs;            /* data.epochs */
} stop_counts;

/* "the data is exhausted after N groups at vV of S steps: T trained, Z
 * dropped as zero-variance (buffer.filter_zero_variance), F failed[, ...]"
 * and, when one cause took most groups, "; CAUSE: what to change". Written
 * into out (n bytes, always NUL-terminated, cut when too long). */
void stop_reason_exhausted(const stop_counts *c, char *out, size_t n);

/* The groups dropped as `reason` ("zero_variance", ...) in c->dropped; 0
 * when absent. */
uint64_t stop_counts_dropped(const stop_counts *c, const char *reason);

#endif
